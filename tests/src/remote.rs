//! Two machines as two nodes: the wire protocol between the harness in one
//! machine and the agent (`nw-vm-node`, see `agent`) running the other
//! node in another.
//!
//! `cargo xtask vm-test --nodes 2` boots two VMs joined by a virtual wire
//! (a virtio NIC each, qemu's `dgram` netdev between them). Three
//! variables tell the harness: `NW_SPLIT_DIR`, a directory both machines
//! share (9p); `NW_SPLIT_NODE`, the node this machine runs; `NW_SPLIT_LINK`,
//! the MAC address of this machine's NIC on the wire, which becomes the
//! node's `link0` instead of a veth. What a test asks of the other node
//! (serve, metrics, start or stop its proxy) is a request file in the
//! shared directory, answered by a reply file. Files rather than a socket:
//! the share exists before either node's network does, and a test that
//! cuts the link does not cut its own control channel.
//!
//! Knows nothing of clusters: the agent supplies the handler.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// How often either side looks for the other's file.
const POLL: Duration = Duration::from_millis(20);

/// One operation on the other machine's node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Build this node's half of the cluster `prefix` (files in `dir`,
    /// written by the driver) and start its proxy.
    Join { prefix: String, dir: PathBuf },
    /// An echo server in a pod of this node.
    ServeEcho { pod: String, port: u16 },
    /// An echo server in the node's own netns.
    ServeEchoOnNode { node: String, port: u16 },
    /// The proxy's Prometheus text.
    Metrics { node: String },
    /// Another proxy with extra `nodeward run` flags, once ready.
    StartProxy { node: String, extra: Vec<String> },
    /// SIGTERM to the `index`-th proxy started.
    SignalProxy { node: String, index: usize },
    /// That proxy's exit code once it exits by itself (`None`: still runs).
    WaitProxyExit {
        node: String,
        index: usize,
        timeout_ms: u64,
    },
    /// Tear this node's half down (the cluster is being dropped).
    Leave,
    /// No more clusters: the agent exits.
    Done,
}

impl Request {
    /// The node the request is about, if it names one.
    pub fn node(&self) -> Option<&str> {
        match self {
            Self::ServeEchoOnNode { node, .. }
            | Self::Metrics { node }
            | Self::StartProxy { node, .. }
            | Self::SignalProxy { node, .. }
            | Self::WaitProxyExit { node, .. } => Some(node),
            Self::Join { .. } | Self::ServeEcho { .. } | Self::Leave | Self::Done => None,
        }
    }
}

/// The agent's answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Reply {
    /// The operation failed: `text` says why.
    pub error: Option<String>,
    /// What the operation returns (metrics text).
    pub text: String,
    /// A raw wait status (`WaitProxyExit`): an exit code or a signal.
    pub code: Option<i32>,
}

impl Reply {
    /// A failure, with its reason.
    pub fn failed(why: String) -> Self {
        Self {
            error: Some(why),
            ..Self::default()
        }
    }
}

/// This machine's part in a two-machine cluster.
#[derive(Debug, Clone)]
pub struct Split {
    /// The directory both machines share; requests and replies live in it.
    pub dir: PathBuf,
    /// The node this machine runs.
    pub local: String,
    /// MAC address of this machine's NIC on the wire between the nodes.
    pub link_mac: String,
}

/// Requests from one process go one at a time (their numbers come from
/// the files already there).
static SENDING: Mutex<()> = Mutex::new(());

impl Split {
    /// From `NW_SPLIT_DIR`, `NW_SPLIT_NODE` and `NW_SPLIT_LINK`; `None`
    /// when the first is unset (one machine runs every node).
    ///
    /// # Panics
    /// When the node is not `node-a` or `node-b`, or the MAC is missing:
    /// a harness told it is split must not guess.
    pub fn from_env() -> Option<Self> {
        let dir = std::env::var_os("NW_SPLIT_DIR")?;
        let local = std::env::var("NW_SPLIT_NODE").unwrap_or_else(|_| "node-a".to_owned());
        let link_mac = std::env::var("NW_SPLIT_LINK").unwrap_or_default();
        assert!(
            ["node-a", "node-b"].contains(&local.as_str()),
            "NW_SPLIT_NODE={local}: node-a or node-b"
        );
        assert!(
            link_mac.split(':').count() == 6,
            "NW_SPLIT_LINK={link_mac:?}: the MAC address of the NIC on the wire"
        );
        Some(Self {
            dir: PathBuf::from(dir),
            local,
            link_mac,
        })
    }

    fn requests(&self) -> PathBuf {
        self.dir.join("requests")
    }

    /// Sends `request` to the agent and waits up to `timeout` for its
    /// reply; a reply with an error is an error.
    pub fn ask(&self, request: &Request, timeout: Duration) -> Result<Reply> {
        let _one = SENDING.lock().unwrap_or_else(|e| e.into_inner());
        let dir = self.requests();
        fs::create_dir_all(&dir)?;
        let n = claim_number(&dir)?;
        write_atomically(
            &dir.join(format!("req-{n}.json")),
            &serde_json::to_vec(request)?,
        )?;
        let reply_path = dir.join(format!("rep-{n}.json"));
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(bytes) = fs::read(&reply_path) {
                let reply: Reply = serde_json::from_slice(&bytes)
                    .with_context(|| format!("reply {}", reply_path.display()))?;
                if let Some(e) = &reply.error {
                    bail!("the other node's agent: {request:?}: {e}");
                }
                return Ok(reply);
            }
            if Instant::now() > deadline {
                bail!("no reply from the other node's agent to {request:?} within {timeout:?}");
            }
            std::thread::sleep(POLL);
        }
    }

    /// The agent's loop: answers each request in order with `handle` until
    /// [`Request::Done`].
    pub fn serve(&self, mut handle: impl FnMut(Request) -> Reply) -> Result<()> {
        let dir = self.requests();
        fs::create_dir_all(&dir)?;
        // Past what was answered before (an agent started again), not past
        // what was asked: a request may come before the agent looks.
        let mut n = last(&dir, "rep-")? + 1;
        loop {
            let path = dir.join(format!("req-{n}.json"));
            let Ok(bytes) = fs::read(&path) else {
                std::thread::sleep(POLL);
                continue;
            };
            let reply = match serde_json::from_slice::<Request>(&bytes) {
                Ok(Request::Done) => {
                    write_atomically(&dir.join(format!("rep-{n}.json")), b"{}")?;
                    return Ok(());
                }
                Ok(request) => handle(request),
                Err(e) => Reply::failed(format!("unreadable request: {e}")),
            };
            write_atomically(
                &dir.join(format!("rep-{n}.json")),
                &serde_json::to_vec(&reply)?,
            )?;
            n += 1;
        }
    }
}

/// The next request number, claimed with an exclusive create of
/// `claim-N`: two processes asking at once get two numbers instead of
/// overwriting each other's request.
fn claim_number(dir: &Path) -> Result<u64> {
    let mut n = last(dir, "claim-")? + 1;
    loop {
        let claim = dir.join(format!("claim-{n}.json"));
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&claim)
        {
            Ok(_) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => n += 1,
            Err(e) => return Err(e).with_context(|| format!("claiming {}", claim.display())),
        }
    }
}

/// The highest number of a `<kind>N.json` file in `dir` (0 for none).
fn last(dir: &Path, kind: &str) -> Result<u64> {
    let mut last = 0;
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let n = name
            .to_str()
            .and_then(|n| n.strip_prefix(kind))
            .and_then(|n| n.strip_suffix(".json"))
            .and_then(|n| n.parse().ok());
        last = last.max(n.unwrap_or(0));
    }
    Ok(last)
}

/// Write then rename: the other side never reads half a file.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_answered_in_order_and_errors_come_back_as_errors() {
        let dir = std::env::temp_dir().join(format!("nw-remote-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let split = Split {
            dir: dir.clone(),
            local: "node-a".to_owned(),
            link_mac: String::new(),
        };
        let agent = split.clone();
        let served = std::thread::spawn(move || {
            let mut seen = Vec::new();
            agent
                .serve(|r| {
                    seen.push(format!("{r:?}"));
                    match r {
                        Request::Metrics { node } => Reply {
                            text: format!("metrics of {node}"),
                            ..Reply::default()
                        },
                        _ => Reply::failed("not here".to_owned()),
                    }
                })
                .map(|()| seen)
        });
        let wait = Duration::from_secs(10);
        let metrics = Request::Metrics {
            node: "node-b".to_owned(),
        };
        assert_eq!(
            split.ask(&metrics, wait).expect("reply").text,
            "metrics of node-b"
        );
        let err = split.ask(&Request::Leave, wait).expect_err("failed reply");
        assert!(err.to_string().contains("not here"), "{err}");
        split.ask(&Request::Done, wait).expect("done");
        let seen = served.join().expect("agent").expect("served");
        assert_eq!(seen.len(), 2, "{seen:?}");
        let _ = fs::remove_dir_all(&dir);
    }
}
