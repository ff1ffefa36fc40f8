//! Evidence of audit records lost to a full queue. The queue drops rather
//! than stall traffic, so a pod flooding denials could push other records
//! (its own earlier ones among them) out of the log. Every dropped record
//! is counted here by source, and the writer, once it has caught up, writes
//! one summary record: how many were dropped since when, and from whom.
//! Nothing is lost silently, and the flooder is named.
//!
//! Bounded whatever the flood: at most [`TRACKED_SOURCES`] sources are
//! counted one by one between two summaries (later ones are summed), and a
//! summary names the [`SUMMARY_SOURCES`] that lost the most.

use std::collections::HashMap;

use serde::Serialize;

use super::{now, Record};

/// Sources a summary names, most dropped first; the rest are summed.
pub const SUMMARY_SOURCES: usize = 10;
/// Distinct sources counted between two summaries; records from sources
/// beyond these are summed without a name.
pub const TRACKED_SOURCES: usize = 256;

/// Records dropped since the last summary.
#[derive(Debug, Default)]
pub(super) struct Dropped {
    total: u64,
    /// When the first of them was dropped.
    since: Option<String>,
    /// Per source, for the first [`TRACKED_SOURCES`] sources; the rest
    /// count only in `total`.
    by_source: HashMap<String, u64>,
}

/// The summary record, one JSON line in the audit log.
#[derive(Debug, Serialize)]
struct Summary<'a> {
    log: &'static str,
    time: String,
    /// Always `"dropped"`: not a decision, a count of lost ones.
    kind: &'static str,
    dropped: u64,
    since: &'a str,
    /// The sources that lost the most records, most first.
    sources: Vec<SourceCount<'a>>,
    /// Dropped records from sources not listed in `sources`.
    other_sources: u64,
    reason: String,
}

#[derive(Debug, Serialize)]
struct SourceCount<'a> {
    source: &'a str,
    dropped: u64,
}

impl Dropped {
    /// Counts one dropped record.
    pub(super) fn add(&mut self, record: &Record<'_>) {
        self.total += 1;
        self.since.get_or_insert_with(now);
        let source = source_of(record);
        if let Some(n) = self.by_source.get_mut(source) {
            *n += 1;
        } else if self.by_source.len() < TRACKED_SOURCES {
            self.by_source.insert(source.to_owned(), 1);
        }
    }

    /// The summary line (with its newline) of what was dropped, if anything
    /// was, and a fresh count from here on.
    pub(super) fn take_summary(&mut self) -> Option<String> {
        if self.total == 0 {
            return None;
        }
        let Self {
            total,
            since,
            by_source,
        } = std::mem::take(self);
        let since = since.unwrap_or_default();
        let mut sources: Vec<SourceCount<'_>> = by_source
            .iter()
            .map(|(source, &dropped)| SourceCount { source, dropped })
            .collect();
        // Ties by name, so the same drops always give the same line.
        sources.sort_unstable_by(|a, b| b.dropped.cmp(&a.dropped).then(a.source.cmp(b.source)));
        sources.truncate(SUMMARY_SOURCES);
        let listed: u64 = sources.iter().map(|s| s.dropped).sum();
        let summary = Summary {
            log: "audit",
            time: now(),
            kind: "dropped",
            dropped: total,
            since: &since,
            sources,
            other_sources: total - listed,
            reason: format!(
                "audit queue full: {total} records dropped since {since} (also counted in \
                 nodeward_audit_dropped_total)"
            ),
        };
        let mut line = serde_json::to_string(&summary).ok()?;
        line.push('\n');
        Some(line)
    }
}

/// Who the record is about: the caller's principal, else its IP. Both are
/// already cleaned for logging.
fn source_of<'r>(record: &'r Record<'_>) -> &'r str {
    match (&record.source_principal, &record.source_ip) {
        (Some(principal), _) => principal,
        (None, Some(ip)) => ip,
        (None, None) => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use std::{
        borrow::Cow,
        io::Write,
        sync::{mpsc, Arc, Mutex},
    };

    use super::*;
    use crate::{authz::audit::Auditor, telemetry::Discard};

    fn record(source: &str) -> Record<'static> {
        Record {
            request_principal: None,
            log: "audit",
            time: now(),
            connection_id: 1,
            layer: "request",
            kind: "authz",
            decision: "deny",
            source_principal: Some(Cow::Owned(source.to_owned())),
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
        }
    }

    /// A sink that blocks in its first write until released, so a test
    /// knows exactly which records the queue holds.
    struct Gated {
        entered: Option<mpsc::Sender<()>>,
        gate: Option<mpsc::Receiver<()>>,
        out: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gated {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Some(entered) = self.entered.take() {
                let _ = entered.send(());
            }
            if let Some(gate) = self.gate.take() {
                let _ = gate.recv();
            }
            self.out.lock().expect("out").extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines(out: &Mutex<Vec<u8>>) -> Vec<serde_json::Value> {
        let text = String::from_utf8(out.lock().expect("out").clone()).expect("utf-8");
        text.lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect()
    }

    /// A queue of 4 and a stuck sink: a flooder's records and a victim's
    /// later ones are dropped, and once the sink moves the log says how
    /// many, since when, and the flooder first.
    #[test]
    fn records_dropped_on_a_full_queue_are_summarised_by_source() {
        let (entered_tx, entered_rx) = mpsc::channel();
        let (release, gate) = mpsc::channel();
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = Gated {
            entered: Some(entered_tx),
            gate: Some(gate),
            out: out.clone(),
        };
        let auditor = Auditor::start(Box::new(sink), Arc::new(Discard), 4).expect("start");
        auditor.write(&record("victim"));
        // The writer holds the first record and is stuck in the sink.
        entered_rx.recv().expect("writer reached the sink");
        for _ in 0..3 {
            auditor.write(&record("victim"));
        }
        for _ in 0..100 {
            auditor.write(&record("flooder"));
        }
        for _ in 0..2 {
            auditor.write(&record("victim"));
        }
        release.send(()).expect("release");
        drop(auditor);

        let lines = lines(&out);
        let decisions = lines.iter().filter(|l| l["decision"] == "deny").count();
        assert_eq!(decisions, 5, "the first record and the 4 queued");
        let summaries: Vec<_> = lines.iter().filter(|l| l["kind"] == "dropped").collect();
        assert_eq!(summaries.len(), 1, "{lines:?}");
        let s = summaries[0];
        assert_eq!(s["log"], "audit");
        assert_eq!(s["dropped"], 101);
        assert!(s["since"].as_str().is_some_and(|t| !t.is_empty()), "{s}");
        let sources = s["sources"].as_array().expect("sources");
        assert_eq!(sources.len(), 2, "{s}");
        assert_eq!(
            (&sources[0]["source"], &sources[0]["dropped"]),
            (&"flooder".into(), &99.into())
        );
        assert_eq!(
            (&sources[1]["source"], &sources[1]["dropped"]),
            (&"victim".into(), &2.into())
        );
        assert_eq!(s["other_sources"], 0);
    }

    /// However many sources drop records, the ledger and the summary stay
    /// bounded and the total stays exact.
    #[test]
    fn a_drop_summary_stays_bounded_whatever_the_number_of_sources() {
        let mut dropped = Dropped::default();
        for i in 0..10_000 {
            dropped.add(&record(&format!("spiffe://td/ns/x/sa/s{i}")));
        }
        for _ in 0..50 {
            dropped.add(&record("spiffe://td/ns/x/sa/s9999"));
            dropped.add(&record("spiffe://td/ns/x/sa/s3"));
        }
        assert!(dropped.by_source.len() <= TRACKED_SOURCES);
        let line = dropped.take_summary().expect("summary");
        let s: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(s["dropped"], 10_100);
        let sources = s["sources"].as_array().expect("sources");
        assert_eq!(sources.len(), SUMMARY_SOURCES);
        assert_eq!(sources[0]["source"], "spiffe://td/ns/x/sa/s3");
        assert_eq!(sources[0]["dropped"], 51);
        let listed: u64 = sources.iter().filter_map(|s| s["dropped"].as_u64()).sum();
        assert_eq!(s["other_sources"], 10_100 - listed);
        assert!(line.len() < 4096, "{}", line.len());
        assert!(
            dropped.take_summary().is_none(),
            "a summary starts a new count"
        );
    }
}
