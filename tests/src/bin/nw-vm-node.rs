//! `nw-vm-node`: runs the other node of the harness's clusters in a second
//! machine (`cargo xtask vm-test --nodes 2` starts it in the second VM);
//! `nw-vm-node done` tells it, from the first machine, that no cluster is
//! coming. See [`nodeward_tests::agent`] and [`nodeward_tests::remote`].

use std::time::Duration;

use anyhow::Context;
use nodeward_tests::remote::{Request, Split};

fn main() -> anyhow::Result<()> {
    match std::env::args().nth(1).as_deref() {
        None => nodeward_tests::agent::run(),
        Some("done") => {
            let split = Split::from_env().context("NW_SPLIT_DIR is not set")?;
            split.ask(&Request::Done, Duration::from_secs(60)).map(drop)
        }
        Some(other) => anyhow::bail!("usage: nw-vm-node [done] (not {other:?})"),
    }
}
