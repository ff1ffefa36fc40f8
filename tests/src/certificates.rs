//! The cluster's certificate authorities, made with the real `nodeward ca`
//! CLI: a root CA and one intermediate per node below it. Knows nothing of
//! clusters beyond a directory and node names.

use std::{path::Path, process::Command};

use anyhow::Result;

use crate::command::run_cmd;

/// Creates the root CA in `ca` (`ca init`) and one intermediate per node in
/// `<ca>/<node>` (`ca issue-node`), with the `nodeward` binary at `nodeward`.
pub(crate) fn make_ca(nodeward: &Path, ca: &Path, nodes: &[&str]) -> Result<()> {
    run_cmd(Command::new(nodeward).args(["ca", "init", "--out"]).arg(ca))?;
    for node in nodes {
        run_cmd(
            Command::new(nodeward)
                .args(["ca", "issue-node", "--ca"])
                .arg(ca)
                .args(["--node", node, "--out"])
                .arg(ca.join(node)),
        )?;
    }
    Ok(())
}
