//! Running a short helper command (`ip`, `sysctl`, `nodeward ca`) to
//! completion: a failure is an error that names the command and carries its
//! stderr. The bottom layer: knows nothing of clusters.

use std::process::Command;

use anyhow::{bail, Context, Result};

/// Runs `cmd` with its output captured; fails unless it exits with success.
pub(crate) fn run_cmd(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}
