//! Prometheus metrics. Every label value is bounded: workloads come from the
//! workloads file and anything else is `unknown`.

use prometheus::{
    core::{Collector, Desc},
    proto::MetricFamily,
    IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::redirect::KernelStats;

/// Labels of per-connection metrics.
const CONN_LABELS: &[&str] = &[
    "direction",
    "source_namespace",
    "source_workload",
    "destination_namespace",
    "destination_workload",
];

/// The proxy's metrics.
pub struct Metrics {
    pub registry: Registry,
    pub connections_opened: IntCounterVec,
    pub connections_closed: IntCounterVec,
    pub bytes_sent: IntCounterVec,
    pub bytes_received: IntCounterVec,
    pub refused: IntCounterVec,
    pub connect_failures: IntCounter,
    pub active_connections: IntGauge,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry =
            Registry::new_custom(Some("nodeward".into()), None).unwrap_or_else(|_| Registry::new());
        let vec = |name: &str, help: &str| {
            let v = IntCounterVec::new(Opts::new(name, help), CONN_LABELS)
                .unwrap_or_else(|e| unreachable!("static metric {name}: {e}"));
            let _ = registry.register(Box::new(v.clone()));
            v
        };
        let connections_opened = vec("connections_opened_total", "Connections the proxy relayed");
        let connections_closed = vec("connections_closed_total", "Relayed connections that ended");
        let bytes_sent = vec(
            "sent_bytes_total",
            "Bytes from the source workload to the destination",
        );
        let bytes_received = vec(
            "received_bytes_total",
            "Bytes from the destination back to the source workload",
        );
        let refused = IntCounterVec::new(
            Opts::new(
                "outbound_refused_total",
                "Connections refused at the outbound listener",
            ),
            &["reason"],
        )
        .unwrap_or_else(|e| unreachable!("static metric: {e}"));
        let _ = registry.register(Box::new(refused.clone()));
        let connect_failures = IntCounter::new(
            "outbound_connect_failures_total",
            "Outbound connections whose destination could not be reached",
        )
        .unwrap_or_else(|e| unreachable!("static metric: {e}"));
        let _ = registry.register(Box::new(connect_failures.clone()));
        let active_connections =
            IntGauge::new("active_connections", "Connections being relayed now")
                .unwrap_or_else(|e| unreachable!("static metric: {e}"));
        let _ = registry.register(Box::new(active_connections.clone()));
        Self {
            registry,
            connections_opened,
            connections_closed,
            bytes_sent,
            bytes_received,
            refused,
            connect_failures,
            active_connections,
        }
    }

    /// Adds the kernel programs' counters, read at scrape time.
    pub fn register_kernel(&self, stats: KernelStats) {
        let _ = self
            .registry
            .register(Box::new(KernelCollector::new(stats)));
    }

    /// Renders the text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let encoder = prometheus::TextEncoder::new();
        if let Err(e) = encoder.encode_utf8(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Reads the BPF counters and map sizes whenever Prometheus scrapes.
struct KernelCollector {
    stats: KernelStats,
    redirects: IntCounterVec,
    skipped: IntCounter,
    record_failures: IntCounter,
    map_entries: IntGaugeVec,
    descs: Vec<Desc>,
}

impl KernelCollector {
    fn new(stats: KernelStats) -> Self {
        let redirects = IntCounterVec::new(
            Opts::new(
                "bpf_redirects_total",
                "Pod connections the kernel redirected to the proxy",
            ),
            &["family"],
        )
        .unwrap_or_else(|e| unreachable!("static metric: {e}"));
        let skipped = IntCounter::with_opts(Opts::new(
            "bpf_proxy_sockets_skipped_total",
            "Connects from the proxy's namespace left alone",
        ))
        .unwrap_or_else(|e| unreachable!("static metric: {e}"));
        let record_failures = IntCounter::with_opts(Opts::new(
            "bpf_record_failures_total",
            "Original-destination records the kernel could not store",
        ))
        .unwrap_or_else(|e| unreachable!("static metric: {e}"));
        let map_entries = IntGaugeVec::new(
            Opts::new("bpf_map_entries", "Live entries in the redirect maps"),
            &["map"],
        )
        .unwrap_or_else(|e| unreachable!("static metric: {e}"));
        let descs = [
            redirects.desc(),
            skipped.desc(),
            record_failures.desc(),
            map_entries.desc(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        Self {
            stats,
            redirects,
            skipped,
            record_failures,
            map_entries,
            descs,
        }
    }
}

impl Collector for KernelCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let k = self.stats.read();
        // Counters only go up: add the difference since the last scrape.
        let catch_up = |c: &IntCounter, v: u64| c.inc_by(v.saturating_sub(c.get()));
        catch_up(&self.redirects.with_label_values(&["ipv4"]), k.redirected4);
        catch_up(&self.redirects.with_label_values(&["ipv6"]), k.redirected6);
        catch_up(&self.skipped, k.skipped_proxy);
        catch_up(&self.record_failures, k.record_failed);
        let gauge = |map: &str, v: u64| {
            self.map_entries
                .with_label_values(&[map])
                .set(i64::try_from(v).unwrap_or(i64::MAX));
        };
        gauge("flows", k.flow_entries);
        gauge("by_cookie", k.cookie_entries);
        let mut out = self.redirects.collect();
        out.extend(self.skipped.collect());
        out.extend(self.record_failures.collect());
        out.extend(self.map_entries.collect());
        out
    }
}
