//! The log files of the cluster's processes, one per proxy or server in
//! the cluster directory: opening one for a child's output, waiting for a
//! line, and reading the JSON records tests look at (proxy, audit and
//! access logs, what echo and HTTP servers saw).

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use serde_json::Value;

use crate::cluster::Cluster;

impl Cluster {
    /// The log file of proxy or server `name`.
    pub(crate) fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    /// The raw log of a node proxy.
    pub fn proxy_log(&self, node: &str) -> String {
        fs::read_to_string(self.log_path(node)).unwrap_or_default()
    }

    /// A node proxy's audit records (one per authorization decision).
    pub fn audit_log(&self, node: &str) -> Vec<Value> {
        json_lines(&self.log_path(node))
            .into_iter()
            .filter(|v| v["log"] == "audit")
            .collect()
    }

    /// A node proxy's access-log records (`target = nodeward::access`).
    pub fn access_log(&self, node: &str) -> Vec<Value> {
        json_lines(&self.log_path(node))
            .into_iter()
            .filter(|v| v["target"] == "nodeward::access")
            .collect()
    }

    /// Waits (up to 10 s) for `node`'s access log to hold `n` records
    /// matching `pred`, and returns the matching ones.
    pub fn access_records(
        &self,
        node: &str,
        n: usize,
        pred: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        wait_records(|| self.access_log(node), n, pred)
    }

    /// Waits (up to 10 s) for `node`'s audit log to hold `n` records
    /// matching `pred` (the writer thread batches them), and returns the
    /// matching ones.
    pub fn audit_records(&self, node: &str, n: usize, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        wait_records(|| self.audit_log(node), n, pred)
    }

    /// Peers an echo server accepted, in order.
    pub fn accepted(&self, server: &str, port: u16) -> Vec<String> {
        json_lines(&self.log_path(&format!("echo-{server}-{port}")))
            .iter()
            .filter_map(|v| v["accepted"].as_str().map(str::to_owned))
            .collect()
    }

    /// How the echo server's connections ended, in order: `ended` (the
    /// peer), `received` (bytes), `eof` (the peer's FIN came) and `error`
    /// (an `io::ErrorKind` name, or null).
    pub fn echo_endings(&self, server: &str, port: u16) -> Vec<Value> {
        json_lines(&self.log_path(&format!("echo-{server}-{port}")))
            .into_iter()
            .filter(|v| v["ended"].is_string())
            .collect()
    }

    /// Requests (`"METHOD /path"`) an HTTP server in `pod` received, in order.
    pub fn http_requests_seen(&self, pod: &str, port: u16) -> Vec<String> {
        json_lines(&self.log_path(&format!("http-{pod}-{port}")))
            .iter()
            .filter_map(|v| v["request"].as_str().map(str::to_owned))
            .collect()
    }

    /// What [`Cluster::serve_http`]'s server logged per request: `request`
    /// plus the `traceparent` and `tracestate` it got (null when none).
    pub fn http_requests_logged(&self, pod: &str, port: u16) -> Vec<Value> {
        json_lines(&self.log_path(&format!("http-{pod}-{port}")))
            .into_iter()
            .filter(|v| v["request"].is_string())
            .collect()
    }
}

/// Opens `path` for appending (created if missing): a child's stdout or stderr.
pub(crate) fn append(path: &Path) -> Result<fs::File> {
    Ok(fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?)
}

/// Waits until `path` contains `needle`.
pub fn wait_for(path: &Path, needle: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{} never contained {needle:?}; it says:\n{text}",
                path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The lines of `path` that parse as JSON (others, and a missing file, are skipped).
pub(crate) fn json_lines(path: &Path) -> Vec<Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Re-reads `records` until `n` of them match `pred`, for up to 10 s.
fn wait_records(
    records: impl Fn() -> Vec<Value>,
    n: usize,
    pred: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found: Vec<_> = records().into_iter().filter(|r| pred(r)).collect();
        if found.len() >= n || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
