//! `cargo xtask check`: the workspace's structural checks, which need no build.

use anyhow::{bail, Result};

use crate::metadata::Metadata;
use crate::{layout, links, modcycles};

/// Runs every check, printing one line per check, and fails if any failed
/// (after running the rest, so one run shows every problem).
pub fn all() -> Result<()> {
    let meta = Metadata::load()?;
    let results = [
        ("layout", layout::check(&meta)),
        ("modcycles", modcycles::check(&meta)),
        ("links", links::check(&meta.workspace_root)),
    ];
    let mut failed = Vec::new();
    for (name, result) in results {
        match result {
            Ok(summary) => eprintln!("{summary}"),
            Err(e) => {
                eprintln!("{name}: FAILED\n{e:#}");
                failed.push(name);
            }
        }
    }
    if !failed.is_empty() {
        bail!("checks failed: {}", failed.join(", "));
    }
    Ok(())
}
