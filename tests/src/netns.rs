//! Named network namespaces (`/run/netns/<name>`), through `ip` and
//! `setns`: creating, configuring, listing and deleting them, and entering
//! one from a thread. Knows nothing of clusters.

use std::{fs, net::SocketAddr, process::Command, time::Duration};

use anyhow::{Context, Result};

use crate::command::run_cmd;

/// `ip netns add <ns>`.
pub(crate) fn create(ns: &str) -> Result<()> {
    run_cmd(Command::new("ip").args(["netns", "add", ns]))
}

/// `ip netns del <ns>`, ignoring failures (teardown is best effort).
pub(crate) fn delete(ns: &str) {
    let _ = Command::new("ip").args(["netns", "del", ns]).status();
}

/// The names `ip netns list` shows.
pub(crate) fn list() -> std::io::Result<Vec<String>> {
    let out = Command::new("ip").args(["netns", "list"]).output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect())
}

/// `ip -n <ns> <args>`.
pub(crate) fn ip(ns: &str, args: &[&str]) -> Result<()> {
    run_cmd(Command::new("ip").arg("-n").arg(ns).args(args))
}

/// Sets sysctl `key` to `value` inside `ns`.
pub(crate) fn sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    run_cmd(Command::new("ip").args([
        "netns",
        "exec",
        ns,
        "sysctl",
        "-qw",
        &format!("{key}={value}"),
    ]))
}

/// Opens a TCP connection from inside network namespace `ns` (a socket
/// keeps the namespace it was created in, whichever thread uses it later).
pub fn connect_from(ns: &str, to: SocketAddr) -> Result<std::net::TcpStream> {
    let ns = ns.to_owned();
    std::thread::spawn(move || -> Result<std::net::TcpStream> {
        enter_netns(&ns)?;
        Ok(std::net::TcpStream::connect_timeout(
            &to,
            Duration::from_secs(5),
        )?)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("connect thread panicked"))?
}

/// Moves the calling thread into network namespace `ns`.
pub(crate) fn enter_netns(ns: &str) -> Result<()> {
    let f = fs::File::open(format!("/run/netns/{ns}")).with_context(|| format!("netns {ns}"))?;
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
    Ok(())
}
