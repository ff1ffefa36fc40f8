//! What the harness's own programs share (`nw-pod`, `nw-bench` and
//! `nw-demo`, in `src/bin`): entering a pod before doing anything else
//! ([`JoinArgs`], [`join`]), the test payload, and flushed output.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::Result;

use crate::{cgroups, netns::enter_netns};

/// Pseudo-random bytes (xorshift), so corruption or reordering is detected.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// `--netns NAME --cgroup DIR`, the pod tools' common arguments.
#[derive(Debug, clap::Args)]
pub struct JoinArgs {
    /// Network namespace (a name under /run/netns) to enter.
    #[arg(long)]
    pub netns: Option<String>,
    /// cgroup v2 directory to join.
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
}

impl JoinArgs {
    /// Joins both (see [`join`]).
    pub fn join(&self) -> Result<()> {
        join(self.netns.as_deref(), self.cgroup.as_deref())
    }
}

/// Joins the cgroup, then the network namespace (a name under /run/netns):
/// what the pod tools do first, before any thread exists, so every later
/// thread inherits both.
pub fn join(netns: Option<&str>, cgroup: Option<&Path>) -> Result<()> {
    if let Some(dir) = cgroup {
        cgroups::enter(dir)?;
    }
    if let Some(ns) = netns {
        enter_netns(ns)?;
    }
    Ok(())
}

/// Writes `text` to stdout and flushes (for the demo's table).
pub fn print_flush(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}
