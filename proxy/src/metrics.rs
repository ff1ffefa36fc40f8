//! Prometheus metrics. Every label value is bounded: workloads come from the
//! workloads file and anything else is `unknown`.

use prometheus::{
    core::{Collector, Desc},
    proto::MetricFamily,
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
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
    /// Outbound connections that could not reach their destination, by reason.
    pub connect_failures: IntCounterVec,
    pub active_connections: IntGauge,
    /// Completed tunnel TLS handshakes, `side` = client|server.
    pub tunnel_handshakes: IntCounterVec,
    /// Handshake duration, `side` = client|server.
    pub tunnel_handshake_seconds: HistogramVec,
    /// Tunnel connections the server side rejected, by reason.
    pub tunnel_rejected: IntCounterVec,
    /// CONNECT streams, by side and response status.
    pub tunnel_streams: IntCounterVec,
    /// Workload certificates minted, by cause (new|renewal).
    pub certificates_issued: IntCounterVec,
    /// Expiry (Unix seconds) of the current certificate of each local identity.
    pub certificate_expiry: IntGaugeVec,
    /// Workloads file reloads, by result (ok|error).
    pub workloads_reloads: IntCounterVec,
    /// 1 for the configured inbound mTLS mode.
    pub mtls_mode: IntGaugeVec,
    /// Policy directory reloads, by result (ok|error).
    pub policy_reloads: IntCounterVec,
    /// 1 while a valid policy set is in force, 0 while failing closed.
    pub policy_loaded: IntGauge,
    /// Authorization decisions, by decision (allow|deny|audit), deciding
    /// policy (`ns/name`, or `default`) and layer (connection|request).
    pub authz_decisions: IntCounterVec,
    /// Open connections closed because a reloaded policy denies them.
    pub policy_revoked: IntCounter,
    /// Audit records lost because the sink could not keep up.
    pub audit_dropped: IntCounter,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry =
            Registry::new_custom(Some("nodeward".into()), None).unwrap_or_else(|_| Registry::new());
        let counters = |name: &str, help: &str, labels: &[&str]| {
            let v = IntCounterVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|e| unreachable!("static metric {name}: {e}"));
            let _ = registry.register(Box::new(v.clone()));
            v
        };
        let gauges = |name: &str, help: &str, labels: &[&str]| {
            let v = IntGaugeVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|e| unreachable!("static metric {name}: {e}"));
            let _ = registry.register(Box::new(v.clone()));
            v
        };
        let active_connections = int_gauge(
            &registry,
            "active_connections",
            "Connections being relayed now",
        );
        let tunnel_handshake_seconds = HistogramVec::new(
            HistogramOpts::new(
                "tunnel_handshake_seconds",
                "Time to complete a tunnel TLS handshake",
            )
            .buckets(vec![
                0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0,
            ]),
            &["side"],
        )
        .unwrap_or_else(|e| unreachable!("static metric: {e}"));
        let _ = registry.register(Box::new(tunnel_handshake_seconds.clone()));
        Self {
            connections_opened: counters(
                "connections_opened_total",
                "Connections the proxy relayed",
                CONN_LABELS,
            ),
            connections_closed: counters(
                "connections_closed_total",
                "Relayed connections that ended",
                CONN_LABELS,
            ),
            bytes_sent: counters(
                "sent_bytes_total",
                "Bytes from the source workload to the destination",
                CONN_LABELS,
            ),
            bytes_received: counters(
                "received_bytes_total",
                "Bytes from the destination back to the source workload",
                CONN_LABELS,
            ),
            refused: counters(
                "outbound_refused_total",
                "Connections refused at the outbound listener",
                &["reason"],
            ),
            connect_failures: counters(
                "outbound_connect_failures_total",
                "Outbound connections whose destination could not be reached",
                &["reason"],
            ),
            active_connections,
            tunnel_handshakes: counters(
                "tunnel_handshakes_total",
                "Completed mTLS handshakes of tunnel connections",
                &["side"],
            ),
            tunnel_handshake_seconds,
            tunnel_rejected: counters(
                "tunnel_rejected_total",
                "Connections to the tunnel port rejected before any stream",
                &["reason"],
            ),
            tunnel_streams: counters(
                "tunnel_streams_total",
                "HTTP/2 CONNECT streams through tunnels",
                &["side", "status"],
            ),
            certificates_issued: counters(
                "certificates_issued_total",
                "Workload certificates minted by this node",
                &["cause"],
            ),
            certificate_expiry: gauges(
                "certificate_expiry_timestamp_seconds",
                "When each local identity's current certificate expires",
                &["identity"],
            ),
            workloads_reloads: counters(
                "workloads_reloads_total",
                "Workloads file reloads",
                &["result"],
            ),
            mtls_mode: gauges(
                "mtls_mode",
                "1 for the inbound mTLS mode in force (PERMISSIVE lets plaintext in)",
                &["mode"],
            ),
            policy_reloads: counters(
                "policy_reloads_total",
                "Policy directory reloads",
                &["result"],
            ),
            policy_loaded: int_gauge(
                &registry,
                "policy_loaded",
                "1 while a valid policy set is in force, 0 while everything is denied because none ever loaded",
            ),
            authz_decisions: counters(
                "authz_decisions_total",
                "Authorization decisions",
                &["decision", "policy", "layer"],
            ),
            policy_revoked: int_counter(
                &registry,
                "policy_revoked_connections_total",
                "Open connections closed because a reloaded policy denies them",
            ),
            audit_dropped: int_counter(
                &registry,
                "audit_dropped_total",
                "Audit records lost because the audit sink could not keep up",
            ),
            registry,
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

fn int_gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).unwrap_or_else(|e| unreachable!("static metric: {e}"));
    let _ = registry.register(Box::new(g.clone()));
    g
}

fn int_counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).unwrap_or_else(|e| unreachable!("static metric: {e}"));
    let _ = registry.register(Box::new(c.clone()));
    c
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
    inbound: IntCounterVec,
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
        let inbound = IntCounterVec::new(
            Opts::new(
                "bpf_inbound_direct_total",
                "Connection attempts that reached a pod without its node proxy",
            ),
            &["verdict"],
        )
        .unwrap_or_else(|e| unreachable!("static metric: {e}"));
        let descs = [
            inbound.desc(),
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
            inbound,
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
        catch_up(
            &self.inbound.with_label_values(&["dropped"]),
            k.inbound_dropped,
        );
        catch_up(
            &self.inbound.with_label_values(&["allowed"]),
            k.inbound_allowed,
        );
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
        out.extend(self.inbound.collect());
        out
    }
}
