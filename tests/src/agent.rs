//! `nw-vm-node`: the agent that runs the other node of each cluster a
//! harness starts in another machine (see `remote`). It builds its half
//! of a cluster when asked to join (its node's netns with the machine's
//! NIC as the link, the node's pods, the node's proxy, all from the files
//! the driver wrote in the shared directory), does what the driver's
//! tests ask of that node, and tears its half down when the driver drops
//! the cluster.

use std::{
    panic::{catch_unwind, AssertUnwindSafe},
    time::Duration,
};

use anyhow::{Context, Result};

use crate::{
    cluster::Cluster,
    remote::{Reply, Request, Split},
};

/// Serves requests until the driver says it is done. Needs root.
pub fn run() -> Result<()> {
    let split = Split::from_env().context("NW_SPLIT_DIR is not set: nothing to serve")?;
    eprintln!(
        "nw-vm-node: serving node {} from {}",
        split.local,
        split.dir.display()
    );
    let mut cluster: Option<Cluster> = None;
    split.serve(|request| {
        eprintln!("nw-vm-node: {request:?}");
        // A failed step panics in the harness; the driver gets it as an
        // error reply, and the agent stays up for the next cluster.
        let reply = catch_unwind(AssertUnwindSafe(|| handle(&split, &mut cluster, request)));
        match reply {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => Reply::failed(format!("{e:#}")),
            Err(panic) => Reply::failed(panic_text(panic.as_ref())),
        }
    })
}

fn handle(split: &Split, cluster: &mut Option<Cluster>, request: Request) -> Result<Reply> {
    if let Request::Join { prefix, dir } = &request {
        // A cluster the driver never dropped (it crashed) goes first.
        drop(cluster.take());
        *cluster = Some(Cluster::join(prefix, dir, split.clone())?);
        return Ok(Reply::default());
    }
    if let Request::Leave = request {
        drop(cluster.take());
        return Ok(Reply::default());
    }
    if let Some(node) = request.node().filter(|n| *n != split.local) {
        anyhow::bail!("{node} does not run here (this is {})", split.local);
    }
    let c = cluster.as_mut().context("no cluster joined")?;
    let mut reply = Reply::default();
    match request {
        Request::ServeEcho { pod, port } => c.serve_echo(&pod, port),
        Request::ServeEchoOnNode { node, port } => c.serve_echo_on_node(&node, port),
        Request::Metrics { node } => reply.text = c.metrics(&node),
        Request::StartProxy { node, extra } => {
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            c.start_proxy_with(&node, &extra)?;
        }
        Request::SignalProxy { node, index } => c.signal_proxy(&node, index),
        Request::WaitProxyExit {
            node,
            index,
            timeout_ms,
        } => {
            let status = c.wait_proxy_exit(&node, index, Duration::from_millis(timeout_ms));
            reply.code = status.map(std::os::unix::process::ExitStatusExt::into_raw);
        }
        Request::Join { .. } | Request::Leave | Request::Done => {}
    }
    Ok(reply)
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "panicked".to_owned())
}
