//! `cargo xtask demo`: the two-node netns cluster with real node proxies,
//! some traffic between pods, and a table of what went through each proxy.

use std::{net::SocketAddr, path::Path};

use anyhow::{bail, Result};
use nix::sys::signal::{SigSet, Signal};
use nodeward_tests::{print_flush, standard_pods, teardown, Cluster, Options};
use serde_json::Value;

const PREFIX: &str = "nw-demo";
const PORT: u16 = 9000;

fn main() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the demo needs root: it creates network namespaces, cgroups and BPF links");
    }
    // Block the stop signals before any thread starts, then wait for them below.
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGINT);
    stop.add(Signal::SIGTERM);
    stop.thread_block()?;
    clean_stale_demo()?;
    let mut c = Cluster::start_with_prefix(PREFIX, standard_pods(), Options::default())?;
    for pod in ["backend", "cache", "db"] {
        c.serve_echo(pod, PORT);
    }
    let calls: [(&str, SocketAddr, usize); 4] = [
        ("frontend", SocketAddr::new(c.ip4("backend"), PORT), 1 << 20),
        ("frontend", SocketAddr::new(c.ip4("cache"), PORT), 4096),
        ("cache", SocketAddr::new(c.ip6("db"), PORT), 65536),
        ("backend", SocketAddr::new(c.ip4("cache"), PORT), 100),
    ];
    for (from, to, bytes) in calls {
        let r = c.call(from, to, bytes);
        println!(
            "{from:>9} -> {to:<22} {bytes:>8} bytes  intact={}",
            r["intact"]
        );
    }
    let direct = SocketAddr::new(c.gateway4("node-a"), nodeward_tests::OUTBOUND_PORT);
    let r = c.call("frontend", direct, 10);
    println!(
        "{:>9} -> {direct:<22} direct dial of the proxy port: received {} bytes (refused)",
        "frontend", r["received"]
    );
    let bypass = c.call_bypassing_proxy("frontend", SocketAddr::new(c.ip4("backend"), PORT), 10);
    println!(
        "{:>9} -> {:<22} bypassing the proxies: connected={} (STRICT drops it)",
        "frontend",
        SocketAddr::new(c.ip4("backend"), PORT).to_string(),
        bypass["connected"]
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    for node in ["node-a", "node-b"] {
        print_flush(&table(node, &c.access_log(node)));
    }
    println!(
        "\nnetns: {0}-node-a {0}-node-b {0}-<pod>; logs in /tmp/{0}",
        PREFIX
    );
    print_flush("demo ready\n");
    let sig = stop.wait()?;
    println!("{sig:?}: tearing down");
    drop(c);
    Ok(())
}

fn table(node: &str, records: &[Value]) -> String {
    let mut out = format!("\nnode proxy {node}\n");
    out += &format!(
        "{:<44} {:<22} {:<14} {:>9} {:>9}  {}\n",
        "CALLER", "ORIGINAL DST", "DESTINATION", "SENT", "RECEIVED", "RESULT"
    );
    for r in records {
        let s = |k: &str| r[k].as_str().unwrap_or("-").to_owned();
        let n = |k: &str| r[k].as_u64().map_or("-".to_owned(), |v| v.to_string());
        let (caller, result) = match s("event").as_str() {
            "connection" => (s("source"), format!("relayed ({})", s("path"))),
            "inbound" => (
                s("source_principal"),
                format!("from tunnel ({})", s("source_node")),
            ),
            "refused" => (s("peer"), format!("refused ({})", s("reason"))),
            other => (s("source"), other.to_owned()),
        };
        out += &format!(
            "{caller:<44} {:<22} {:<14} {:>9} {:>9}  {result}\n",
            s("orig_dst"),
            s("destination"),
            n("bytes_sent"),
            n("bytes_received")
        );
    }
    out
}

/// Removes what an earlier demo left, unless that demo is still running.
fn clean_stale_demo() -> Result<()> {
    let owner = std::env::temp_dir().join(PREFIX).join("owner");
    if let Ok(pid) = std::fs::read_to_string(&owner) {
        if Path::new(&format!("/proc/{}", pid.trim())).exists()
            && pid.trim() != std::process::id().to_string()
        {
            bail!("another demo (pid {}) is running", pid.trim());
        }
    }
    let netns = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()?;
    let names: Vec<String> = String::from_utf8_lossy(&netns.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("{PREFIX}-")))
        .map(str::to_owned)
        .collect();
    teardown(&nodeward_tests::cgroup2_mount()?.join(PREFIX), &names);
    Ok(())
}
