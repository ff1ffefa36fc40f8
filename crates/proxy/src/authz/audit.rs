//! Audit records: one JSON line per authorization decision, written by a
//! dedicated thread so a slow sink never stalls a connection.
//!
//! Every string that came from a certificate or the network is cleaned
//! ([`crate::escape::clean`]: Unicode categories Cc, Cf, Zl, Zp) before it
//! is serialised, so a hostile SAN, header or path cannot forge or hide log
//! lines (Envoy CVE-2023-27493, CVE-2024-45808). JSON escaping alone leaves
//! DEL, C1 controls, bidi overrides and U+2028 intact.

use std::{
    borrow::Cow,
    fs::OpenOptions,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::PathBuf,
    sync::{
        mpsc::{sync_channel, Receiver, SyncSender, TrySendError},
        Arc, Mutex, PoisonError,
    },
};

use serde::Serialize;

use crate::{sink::BatchingWriter, telemetry::Telemetry};
use dropped::Dropped;

mod dropped;

/// Where audit records are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditSink {
    Stdout,
    Stderr,
    File(PathBuf),
}

/// Records buffered between connections and the writer thread. When full,
/// records are dropped and counted rather than blocking the data path, and
/// a summary record of the dropped ones follows once the writer catches up
/// (see `dropped`).
const QUEUE: usize = 16 * 1024;

/// Where audit records go; cheap to share. Dropping it writes out the
/// records still queued (waiting at most [`EXIT_WAIT`] for the sink).
pub struct Auditor {
    /// `None` only while dropping.
    tx: Option<SyncSender<String>>,
    writer: Option<std::thread::JoinHandle<()>>,
    dropped: Arc<dyn Telemetry>,
    /// Records dropped on a full queue, until the writer summarises them.
    ledger: Arc<Mutex<Dropped>>,
}

/// How long dropping an [`Auditor`] waits for its queue to be written: a
/// sink that blocks (a full pipe) must not stop the process from exiting.
pub const EXIT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl Drop for Auditor {
    fn drop(&mut self) {
        // The writer ends once the queue is drained and the sender is gone.
        drop(self.tx.take());
        let Some(writer) = self.writer.take() else {
            return;
        };
        let deadline = std::time::Instant::now() + EXIT_WAIT;
        while !writer.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        if writer.is_finished() {
            let _ = writer.join();
        }
    }
}

/// Which decision a record is: authorization (policies) or a rate limit.
/// They are counted apart too (`nodeward_authz_decisions_total`,
/// `nodeward_ratelimit_decisions_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Authz,
    RateLimit,
}

impl Kind {
    /// The `kind` field's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Authz => "authz",
            Self::RateLimit => "ratelimit",
        }
    }
}

/// One decision, as logged.
#[derive(Debug, Serialize)]
pub struct Record<'a> {
    /// Always `"audit"`, so records can be told apart on a shared stdout.
    pub log: &'static str,
    pub time: String,
    pub connection_id: u64,
    /// `connection` (L4, or a reload re-check) or `request` (HTTP).
    pub layer: &'static str,
    /// [`Kind::as_str`]: `authz` (a policy decision, or a request refused
    /// as malformed) or `ratelimit` (an empty bucket refused the call). A
    /// summary of dropped records says `dropped` (see `dropped.rs`).
    pub kind: &'static str,
    /// `allow`, `deny` or `audit` (an AUDIT policy matched); a `ratelimit`
    /// record is always `deny`.
    pub decision: &'static str,
    pub source_principal: Option<Cow<'a, str>>,
    /// `<iss>/<sub>` of the request's valid JWT (never the token itself).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_principal: Option<Cow<'a, str>>,
    pub source_ip: Option<String>,
    pub destination: Cow<'a, str>,
    pub destination_ip: String,
    pub port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<Cow<'a, str>>,
    pub policy: Option<String>,
    pub action: Option<&'static str>,
    pub reason: Cow<'a, str>,
}

/// Why the audit sink could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("opening audit sink {path}: {source}")]
pub struct SinkError {
    path: String,
    #[source]
    source: std::io::Error,
}

impl Auditor {
    /// Opens `sink` and starts the writer thread.
    pub fn open(sink: &AuditSink, dropped: Arc<dyn Telemetry>) -> Result<Self, SinkError> {
        let out: Box<dyn Write + Send> = match sink {
            AuditSink::Stdout => Box::new(std::io::stdout()),
            AuditSink::Stderr => Box::new(std::io::stderr()),
            AuditSink::File(path) => Box::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o640)
                    .open(path)
                    .map_err(|source| SinkError {
                        path: path.display().to_string(),
                        source,
                    })?,
            ),
        };
        Self::start(out, dropped, QUEUE)
    }

    /// Starts the writer thread on `out` with a queue of `queue` records.
    fn start(
        out: Box<dyn Write + Send>,
        dropped: Arc<dyn Telemetry>,
        queue: usize,
    ) -> Result<Self, SinkError> {
        let (tx, rx) = sync_channel(queue);
        let ledger = Arc::new(Mutex::new(Dropped::default()));
        let writer = std::thread::Builder::new()
            .name("nodeward-audit".into())
            .spawn({
                let (dropped, ledger) = (dropped.clone(), ledger.clone());
                move || write_loop(rx, BatchingWriter::new(out), &*dropped, &ledger)
            })
            .map_err(|source| SinkError {
                path: "(writer thread)".into(),
                source,
            })?;
        Ok(Self {
            tx: Some(tx),
            writer: Some(writer),
            dropped,
            ledger,
        })
    }

    /// Queues `record`; never blocks. On a full queue the record is dropped,
    /// counted, and reported in a summary record later.
    pub fn write(&self, record: &Record<'_>) {
        let Ok(mut line) = serde_json::to_string(record) else {
            return;
        };
        line.push('\n');
        let Some(tx) = &self.tx else {
            self.dropped.audit_dropped(1);
            return;
        };
        match tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.audit_dropped(1);
                let mut ledger = self.ledger.lock().unwrap_or_else(PoisonError::into_inner);
                ledger.add(record);
            }
            Err(TrySendError::Disconnected(_)) => self.dropped.audit_dropped(1),
        }
    }
}

/// Writes whole lines (one `write_all` each, so they never interleave with
/// the tracing output on a shared stdout) and flushes when the queue is
/// empty; the [`BatchingWriter`]'s flush then lingers, so records queue up
/// meanwhile without waking this thread one by one. Once the queue is
/// empty, a summary of the records dropped meanwhile follows. Records are
/// only dropped while the queue is full, so the writer always has more to
/// read after a drop and comes back here.
fn write_loop<W: Write>(
    rx: Receiver<String>,
    mut out: BatchingWriter<W>,
    lost: &dyn Telemetry,
    ledger: &Mutex<Dropped>,
) {
    while let Ok(line) = rx.recv() {
        let _ = out.write_all(line.as_bytes());
        while let Ok(more) = rx.try_recv() {
            let _ = out.write_all(more.as_bytes());
        }
        write_summary(&mut out, ledger);
        let _ = out.flush();
        // Whole batches a broken sink refused, counted line by line.
        lost.audit_dropped(out.take_lost_lines());
    }
    write_summary(&mut out, ledger);
    let _ = out.flush();
}

fn write_summary<W: Write>(out: &mut BatchingWriter<W>, ledger: &Mutex<Dropped>) {
    let summary = ledger
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take_summary();
    if let Some(line) = summary {
        let _ = out.write_all(line.as_bytes());
    }
}

/// The current time, RFC 3339 in UTC.
pub fn now() -> String {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::escape::clean;

    #[test]
    fn records_reach_a_file_sink_as_json_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let dropped = Arc::new(crate::telemetry::Discard);
        let auditor = Auditor::open(&AuditSink::File(path.clone()), dropped).expect("open");
        let record = Record {
            request_principal: None,
            log: "audit",
            time: now(),
            connection_id: 7,
            layer: "request",
            kind: Kind::RateLimit.as_str(),
            decision: "deny",
            source_principal: Some(clean("spiffe://td/ns/a/sa/b\n{\"forged\":1}")),
            source_ip: None,
            destination: "shop/backend".into(),
            destination_ip: "10.0.0.1".into(),
            port: 8080,
            method: Some("GET".into()),
            path: Some("/admin".into()),
            host: None,
            policy: Some("shop/deny-admin".into()),
            action: Some("DENY"),
            reason: "matched".into(),
        };
        auditor.write(&record);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let text = loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.ends_with('\n') || std::time::Instant::now() > deadline {
                break text;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        assert_eq!(text.lines().count(), 1, "{text}");
        let v: serde_json::Value = serde_json::from_str(text.trim()).expect("json");
        assert_eq!(v["decision"], "deny");
        assert_eq!(v["kind"], "ratelimit");
        assert_eq!(v["connection_id"], 7);
        assert_eq!(v["policy"], "shop/deny-admin");
        assert!(v["source_principal"]
            .as_str()
            .is_some_and(|p| !p.contains('\n')));
        assert!(v.get("host").is_none());
    }
}
