//! `cargo xtask demo`: runs `nw-demo` (in `tests/src/bin`) and stays its
//! parent until it has torn the demo down.
//!
//! SIGINT, SIGTERM and SIGHUP sent to xtask are forwarded to `nw-demo`,
//! which tears everything down, and xtask waits for it: `kill` on xtask,
//! Ctrl-C, or a closing terminal all leave nothing behind. `--down` and
//! `exec` use the binaries a demo was started with and build nothing.

use std::{
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Child, Command},
};

use anyhow::{bail, Context, Result};
use nix::{
    sys::signal::{kill, SigSet, Signal},
    unistd::Pid,
};

/// What `cargo xtask demo` was asked to do.
pub enum Action {
    /// Start the demo: under a copy of `policies/`, or the user's directory.
    Up { policies: Option<PathBuf> },
    /// Stop the running demo or remove a dead one's leftovers.
    Down,
    /// Run a command as a pod.
    Exec { pod: String, argv: Vec<String> },
}

/// Runs `action`; `Up` builds the release binaries first unless
/// `NW_DEMO_BIN_DIR` names a directory of built ones (tests use debug).
pub fn run(action: Action) -> Result<()> {
    let prebuilt = std::env::var_os("NW_DEMO_BIN_DIR").map(PathBuf::from);
    if matches!(action, Action::Up { .. }) && prebuilt.is_none() {
        crate::build()?;
    }
    let bins = prebuilt.unwrap_or_else(|| crate::target_dir().join("release"));
    let nw_demo = bins.join("nw-demo");
    if !nw_demo.exists() {
        bail!(
            "{} not found: start the demo first with `cargo xtask demo`",
            nw_demo.display()
        );
    }
    let mut cmd = Command::new(&nw_demo);
    cmd.env("NODEWARD_BIN", bins.join("nodeward"))
        .env("NW_POD_BIN", bins.join("nw-pod"));
    match action {
        Action::Up { policies } => up(cmd, policies),
        Action::Down => crate::run(cmd.arg("down")),
        Action::Exec { pod, argv } => {
            let err = cmd.args(["exec", &pod, "--"]).args(&argv).exec();
            Err(err).context("running nw-demo exec")
        }
    }
}

fn up(mut cmd: Command, policies: Option<PathBuf>) -> Result<()> {
    cmd.arg("up");
    match policies {
        Some(dir) => cmd.arg("--policies").arg(dir),
        None => cmd
            .arg("--examples")
            .arg(std::fs::canonicalize("policies").context("the example policies")?),
    };
    let status = run_forwarding(&mut cmd)?;
    if !status.success() {
        bail!("demo failed: {status}");
    }
    Ok(())
}

/// Spawns `cmd` and waits for it, forwarding SIGINT, SIGTERM and SIGHUP.
fn run_forwarding(cmd: &mut Command) -> Result<std::process::ExitStatus> {
    let mut stop = SigSet::empty();
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        stop.add(sig);
    }
    // Blocked here (and so in the forwarding thread) rather than handled:
    // a signal that arrives before the child exists waits for it. The child
    // starts with an empty mask (std resets it).
    stop.thread_block().context("blocking signals")?;
    let mut child: Child = cmd.spawn().with_context(|| format!("running {cmd:?}"))?;
    let pid = Pid::from_raw(i32::try_from(child.id()).context("child pid")?);
    std::thread::spawn(move || forward(&stop, pid));
    Ok(child.wait()?)
}

/// Sends every stop signal this process gets on to `pid`, for as long as
/// the process lives.
fn forward(stop: &SigSet, pid: Pid) {
    while let Ok(sig) = stop.wait() {
        let _ = kill(pid, sig);
    }
}
