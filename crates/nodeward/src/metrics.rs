//! Prometheus metrics. Every label value is bounded: workloads and SPIFFE
//! IDs come from the workloads file (inbound IDs are verified and must be
//! hosted by the node that signed them), policies from the policy
//! directory, and anything else is `unknown` or one of a fixed set of words.
//! No value from an unverified peer or a request header ever becomes a label.
//!
//! Connection metrics carry `reporter`: `source` when this proxy relays a
//! local pod's outbound connection, `destination` when it delivers one to a
//! local pod. A same-node hop is reported under both, as two proxies would
//! report it, so per-reporter sums stay complete (sum over one reporter,
//! never over both). A passthrough connection (no known destination
//! workload) is reported by the source only.

use std::{
    collections::{hash_map::RandomState, HashMap},
    hash::BuildHasher,
    sync::{Arc, Mutex, PoisonError, RwLock},
};

use prometheus::{
    core::{Collector, Desc},
    proto::MetricFamily,
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use nodeward_bpf::KernelStats;
use nodeward_proxy::telemetry::{
    ConnLabels, ConnectionCounters, ConnectionSeries, LimitKind, RateLimitOutcome, Reporter, Side,
    Telemetry, UNKNOWN,
};

/// Labels of per-connection metrics, in [`ConnLabels`] order.
const CONN_LABELS: [&str; 7] = [
    "reporter",
    "source_principal",
    "source_workload",
    "source_namespace",
    "destination_workload",
    "destination_namespace",
    "destination_service",
];
/// Per-connection counters, in [`ConnectionSeries`] index order.
const CONN_COUNTERS: [(&str, &str); 4] = [
    ("connections_opened_total", "Connections the proxy relayed"),
    ("connections_closed_total", "Relayed connections that ended"),
    (
        "sent_bytes_total",
        "Bytes from the source workload to the destination",
    ),
    (
        "received_bytes_total",
        "Bytes from the destination back to the source workload",
    ),
];
const OPENED: usize = 0;
const CLOSED: usize = 1;
const SENT: usize = 2;
const RECEIVED: usize = 3;

/// Labels of `http_requests_total`.
const REQUEST_LABELS: [&str; 4] = [
    "reporter",
    "destination_workload",
    "destination_namespace",
    "code",
];

/// The proxy's metrics. The data path counts into them through
/// [`Telemetry`]; the control loops and the admin endpoint use the fields.
pub struct Metrics {
    pub registry: Registry,
    /// `connections_opened_total`, `connections_closed_total`,
    /// `sent_bytes_total`, `received_bytes_total`: see [`Metrics::connection`].
    connections: CounterFamily<7, 4>,
    /// `http_requests_total`: see [`Metrics::count_http_request`].
    http_requests: CounterFamily<4, 1>,
    pub refused: IntCounterVec,
    /// Outbound connections that could not reach their destination, by reason.
    pub connect_failures: IntCounterVec,
    pub active_connections: IntGauge,
    /// Connections accepted whose relay has not started yet (being
    /// authorized, dialled, tunnelled): a drain waits for these too.
    pub pending_connections: IntGauge,
    /// Connections still open at the drain deadline, closed by the stop.
    pub drain_closed: IntCounter,
    /// Completed tunnel TLS handshakes, `side` = client|server.
    pub tunnel_handshakes: IntCounterVec,
    /// Handshake duration, `side` = client|server.
    pub tunnel_handshake_seconds: HistogramVec,
    /// Tunnel connections the server side rejected, by reason.
    pub tunnel_rejected: IntCounterVec,
    /// CONNECT streams, by side and response status.
    pub tunnel_streams: IntCounterVec,
    /// CONNECT streams the tunnel server refused, by reason.
    pub tunnel_streams_refused: IntCounterVec,
    /// Tunnel connections the server closed on its own, by reason.
    pub tunnel_closed: IntCounterVec,
    /// How long CONNECT streams over the per-node dial cap waited for a
    /// slot.
    pub tunnel_dial_queue_seconds: Histogram,
    /// Workload certificates minted, by cause (new|renewal).
    pub certificates_issued: IntCounterVec,
    /// Expiry (Unix seconds) of the current certificate of each local identity.
    pub certificate_expiry: IntGaugeVec,
    /// Workloads file reloads, by result (ok|error).
    pub workloads_reloads: IntCounterVec,
    /// Kubernetes watch failures (each is followed by a restart after a
    /// backoff), by kind (pod|namespace|service|endpointslice|node).
    pub discovery_watch_errors: IntCounterVec,
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
    /// Rate-limit decisions by policy, outcome and limit: see
    /// [`Metrics::count_ratelimit`].
    pub ratelimit_decisions: IntCounterVec,
    /// Token buckets held now.
    pub ratelimit_buckets: IntGauge,
    /// Spans sent to the OTLP collector.
    pub trace_spans_exported: IntCounter,
    /// Spans lost, by reason (`queue_full`, `export_failed`).
    pub trace_spans_dropped: IntCounterVec,
    /// JWT checks for `RequestAuthentication`, by result (`ok` or why not).
    pub jwt_validations: IntCounterVec,
}

/// Counters that share one label set: `K` metric names over `N` labels.
///
/// Unlike prometheus' `IntCounterVec`, series are told apart by their exact
/// label values. The vec keys its children by a hash of the values
/// concatenated without separators and never compares them, so workload
/// `webs` in namespace `hop` and `web` in `shop` would share a series. A
/// lookup returns a handle the caller keeps: a connection looks its series
/// up once and afterwards only increments atomics.
pub struct CounterFamily<const N: usize, const K: usize> {
    inner: Arc<FamilyInner<N, K>>,
}

/// One label set's counters in a [`CounterFamily`].
pub struct Series<const N: usize, const K: usize> {
    values: [String; N],
    counters: [IntCounter; K],
}

struct FamilyInner<const N: usize, const K: usize> {
    names: [(&'static str, &'static str); K],
    labels: [&'static str; N],
    descs: Vec<Desc>,
    hasher: RandomState,
    series: RwLock<HashMap<u64, Vec<Arc<Series<N, K>>>>>,
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
        let tunnel_dial_queue_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "tunnel_dial_queue_seconds",
                "Time CONNECT streams over the per-node dial cap waited for a slot",
            )
            .buckets(vec![0.000_1, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0]),
        )
        .unwrap_or_else(|e| unreachable!("static metric: {e}"));
        let _ = registry.register(Box::new(tunnel_dial_queue_seconds.clone()));
        let connections = CounterFamily::new(CONN_COUNTERS, CONN_LABELS);
        let _ = registry.register(Box::new(connections.clone()));
        let http_requests = CounterFamily::new(
            [(
                "http_requests_total",
                "HTTP requests, by response code class",
            )],
            REQUEST_LABELS,
        );
        let _ = registry.register(Box::new(http_requests.clone()));
        gauges(
            "build_info",
            "1, labelled with the proxy's version",
            &["version"],
        )
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
        Self {
            connections,
            http_requests,
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
            pending_connections: int_gauge(
                &registry,
                "pending_connections",
                "Accepted connections still being set up (authorized, dialled, tunnelled)",
            ),
            drain_closed: int_counter(
                &registry,
                "drain_closed_connections_total",
                "Connections still open at the drain deadline, closed by the stop",
            ),
            tunnel_handshakes: counters(
                "tunnel_handshakes_total",
                "Completed mTLS handshakes of tunnel connections",
                &["side"],
            ),
            tunnel_handshake_seconds,
            tunnel_dial_queue_seconds,
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
            tunnel_streams_refused: counters(
                "tunnel_streams_refused_total",
                "CONNECT streams the tunnel server refused",
                &["reason"],
            ),
            tunnel_closed: counters(
                "tunnel_closed_total",
                "Tunnel connections the server closed on its own",
                &["reason"],
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
            discovery_watch_errors: counters(
                "discovery_watch_errors_total",
                "Kubernetes watch failures (list, watch, cut, 410 Gone), each retried after a backoff",
                &["kind"],
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
            trace_spans_exported: int_counter(
                &registry,
                "trace_spans_exported_total",
                "Spans the OTLP collector accepted",
            ),
            trace_spans_dropped: counters(
                "trace_spans_dropped_total",
                "Spans lost: the export queue was full, or the collector failed or timed out",
                &["reason"],
            ),
            jwt_validations: counters(
                "jwt_validations_total",
                "Tokens checked for RequestAuthentication, by result (ok, expired, bad_signature, unknown_issuer, ...)",
                &["result"],
            ),
            ratelimit_decisions: counters(
                "ratelimit_decisions_total",
                "Rate-limit decisions, by policy, outcome and what is limited",
                &["policy", "outcome", "limit"],
            ),
            ratelimit_buckets: int_gauge(
                &registry,
                "ratelimit_buckets",
                "Rate-limit token buckets held now",
            ),
            registry,
        }
    }

    /// Drops the connection and HTTP-request series of workloads that
    /// `exists(namespace, name)` no longer knows, and the connection series
    /// of principals `principal_exists` no longer knows (a caller from
    /// another node whose workload is unknown is labelled by principal
    /// only); a connection series an open connection still counts on stays
    /// (request series are looked up per request, so a departed workload's
    /// next request starts a fresh one). With pod churn, label sets would
    /// otherwise grow for the life of the proxy. Returns how many series went.
    pub fn prune_workloads(
        &self,
        exists: impl Fn(&str, &str) -> bool,
        principal_exists: impl Fn(&str) -> bool,
        service_exists: impl Fn(&str) -> bool,
    ) -> usize {
        let known = |name: &str, namespace: &str| name == UNKNOWN || exists(namespace, name);
        let known_principal = |p: &str| p == UNKNOWN || principal_exists(p);
        let known_service = |s: &str| s == UNKNOWN || service_exists(s);
        // [reporter, principal, source wl, source ns, destination wl,
        //  destination ns, destination service]
        let connections = self.connections.retain(|v| {
            known_principal(&v[1])
                && known(&v[2], &v[3])
                && known(&v[4], &v[5])
                && known_service(&v[6])
        });
        // [reporter, destination wl, destination ns, code]
        let requests = self.http_requests.retain(|v| known(&v[1], &v[2]));
        connections + requests
    }

    /// The counters of one connection series (created on first use).
    pub fn connection(&self, labels: &ConnLabels<'_>) -> Arc<Series<7, 4>> {
        let ConnLabels {
            reporter,
            source_principal,
            source_workload,
            source_namespace,
            destination_workload,
            destination_namespace,
            destination_service,
        } = *labels;
        self.connections.series([
            reporter.as_str(),
            source_principal,
            source_workload,
            source_namespace,
            destination_workload,
            destination_namespace,
            destination_service,
        ])
    }

    /// Counts one HTTP request under its status class (`2xx`, ...).
    pub fn count_http_request(
        &self,
        reporter: Reporter,
        destination_workload: &str,
        destination_namespace: &str,
        status: u16,
    ) {
        self.http_requests
            .series([
                reporter.as_str(),
                destination_workload,
                destination_namespace,
                status_class(status),
            ])
            .inc(0);
    }

    /// Counts one rate-limit decision; `policy` is the deciding policy's
    /// `namespace/name` (bounded by the policy directory).
    pub fn count_ratelimit(&self, policy: &str, outcome: RateLimitOutcome, limit: LimitKind) {
        self.ratelimit_decisions
            .with_label_values(&[policy, outcome.as_str(), limit.as_str()])
            .inc();
    }

    /// Adds the kernel programs' counters, read at scrape time.
    pub fn register_kernel(&self, stats: KernelStats) {
        let _ = self
            .registry
            .register(Box::new(KernelCollector::new(stats)));
    }

    /// Adds `nodeward_kernel_feature{feature}`: 1 for each optional kernel
    /// feature the configuration uses that this kernel has, 0 for one it
    /// lacks (the proxy runs without it; `nodeward probe` says what is lost).
    pub fn register_kernel_features(&self, features: &[(&str, bool)]) {
        let gauge = IntGaugeVec::new(
            Opts::new(
                "kernel_feature",
                "Optional kernel features in use: 1 available, 0 missing (the proxy runs without it)",
            ),
            &["feature"],
        )
        .unwrap_or_else(|e| unreachable!("static metric: {e}"));
        for (name, available) in features {
            gauge.with_label_values(&[name]).set(i64::from(*available));
        }
        let _ = self.registry.register(Box::new(gauge));
    }

    /// Adds `nodeward_log_dropped_lines_total`, read from `dropped` at
    /// scrape time: log lines the non-blocking writer discarded because its
    /// queue was full (the proxy never waits for its log output).
    pub fn register_log_drops(&self, dropped: Arc<dyn Fn() -> u64 + Send + Sync>) {
        let counter = unregistered_counter(
            "log_dropped_lines_total",
            "Log lines (access records included) dropped because the log writer fell behind",
        );
        let _ = self.registry.register(Box::new(ReadAtScrape {
            counter,
            dropped,
            catching_up: Mutex::new(()),
        }));
    }

    /// Adds `nodeward_runtime_alive_tasks`, read from the tokio runtime of
    /// `handle` at scrape time: a task that never ends (a leak) shows as a
    /// count that only grows (the soak watches it).
    pub fn register_runtime(&self, handle: tokio::runtime::Handle) {
        let gauge = IntGauge::with_opts(Opts::new(
            "runtime_alive_tasks",
            "Tasks alive in the proxy's async runtime",
        ))
        .unwrap_or_else(|e| unreachable!("static metric: {e}"));
        let _ = self
            .registry
            .register(Box::new(RuntimeTasks { gauge, handle }));
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

impl<const N: usize, const K: usize> CounterFamily<N, K> {
    /// A family of the counters `names` (`(name, help)`) over `labels`.
    pub fn new(names: [(&'static str, &'static str); K], labels: [&'static str; N]) -> Self {
        let descs = names
            .iter()
            .map(|(name, help)| {
                let labels = labels.iter().map(|l| (*l).to_owned()).collect();
                Desc::new(
                    (*name).to_owned(),
                    (*help).to_owned(),
                    labels,
                    HashMap::new(),
                )
                .unwrap_or_else(|e| unreachable!("static metric {name}: {e}"))
            })
            .collect();
        Self {
            inner: Arc::new(FamilyInner {
                names,
                labels,
                descs,
                hasher: RandomState::new(),
                series: RwLock::new(HashMap::new()),
            }),
        }
    }

    /// Forgets the series no open connection holds and `keep` rejects;
    /// returns how many went. A forgotten series that is used again starts
    /// from zero, which Prometheus reads as a counter reset.
    pub fn retain(&self, keep: impl Fn(&[String; N]) -> bool) -> usize {
        let mut map = self
            .inner
            .series
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let before: usize = map.values().map(Vec::len).sum();
        map.retain(|_, bucket| {
            bucket.retain(|s| Arc::strong_count(s) > 1 || keep(&s.values));
            !bucket.is_empty()
        });
        before - map.values().map(Vec::len).sum::<usize>()
    }

    /// The series with exactly these label `values`, created on first use.
    pub fn series(&self, values: [&str; N]) -> Arc<Series<N, K>> {
        let inner = &self.inner;
        let hash = inner.hasher.hash_one(values);
        let found = |map: &HashMap<u64, Vec<Arc<Series<N, K>>>>| {
            map.get(&hash)?
                .iter()
                .find(|s| s.values.iter().zip(values).all(|(a, b)| a == b))
                .cloned()
        };
        if let Some(s) = found(&inner.series.read().unwrap_or_else(PoisonError::into_inner)) {
            return s;
        }
        let mut map = inner.series.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = found(&map) {
            return s;
        }
        let series = Arc::new(inner.create(values));
        map.entry(hash).or_default().push(series.clone());
        series
    }
}

impl<const N: usize, const K: usize> Clone for CounterFamily<N, K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<const N: usize, const K: usize> FamilyInner<N, K> {
    fn create(&self, values: [&str; N]) -> Series<N, K> {
        let labels: HashMap<String, String> = self
            .labels
            .iter()
            .zip(values)
            .map(|(l, v)| ((*l).to_owned(), v.to_owned()))
            .collect();
        let counters = self.names.map(|(name, help)| {
            IntCounter::with_opts(Opts::new(name, help).const_labels(labels.clone()))
                .unwrap_or_else(|e| unreachable!("static metric {name}: {e}"))
        });
        Series {
            values: values.map(str::to_owned),
            counters,
        }
    }
}

impl<const N: usize, const K: usize> Collector for CounterFamily<N, K> {
    fn desc(&self) -> Vec<&Desc> {
        self.inner.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        // Read under the lock rather than from clones: a clone held while
        // encoding would look like an open connection to `retain`, and a
        // prune running meanwhile would keep every series.
        let map = self
            .inner
            .series
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let all: Vec<&Arc<Series<N, K>>> = map.values().flatten().collect();
        (0..K)
            .filter_map(|k| {
                let mut family: Option<MetricFamily> = None;
                for mut mf in all.iter().flat_map(|s| s.counters[k].collect()) {
                    match &mut family {
                        None => family = Some(mf),
                        Some(f) => {
                            for m in mf.take_metric() {
                                f.mut_metric().push(m);
                            }
                        }
                    }
                }
                family
            })
            .collect()
    }
}

impl<const N: usize, const K: usize> Series<N, K> {
    /// Adds one to counter `k` (the index in the family's names).
    pub fn inc(&self, k: usize) {
        self.inc_by(k, 1);
    }

    /// Adds `v` to counter `k`.
    pub fn inc_by(&self, k: usize, v: u64) {
        if let Some(c) = self.counters.get(k) {
            c.inc_by(v);
        }
    }

    /// Counter `k`'s value.
    pub fn get(&self, k: usize) -> u64 {
        self.counters.get(k).map_or(0, IntCounter::get)
    }
}

/// `2xx`-style class of an HTTP status; `other` outside 100..=599.
fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

impl ConnectionCounters for Series<7, 4> {
    fn opened(&self) {
        self.inc(OPENED);
    }

    fn closed(&self, sent: u64, received: u64) {
        self.inc(CLOSED);
        self.inc_by(SENT, sent);
        self.inc_by(RECEIVED, received);
    }
}

/// The data path's counting, into prometheus.
impl Telemetry for Metrics {
    fn connection(&self, labels: &ConnLabels<'_>) -> ConnectionSeries {
        Metrics::connection(self, labels)
    }

    fn http_request(&self, reporter: Reporter, workload: &str, namespace: &str, status: u16) {
        self.count_http_request(reporter, workload, namespace, status);
    }

    fn refused(&self, reason: &str) {
        self.refused.with_label_values(&[reason]).inc();
    }

    fn connect_failed(&self, reason: &str) {
        self.connect_failures.with_label_values(&[reason]).inc();
    }

    fn active(&self, delta: i64) {
        self.active_connections.add(delta);
    }

    fn pending(&self, delta: i64) {
        self.pending_connections.add(delta);
    }

    fn tunnel_handshake(&self, side: Side, seconds: f64) {
        let side = [side.as_str()];
        self.tunnel_handshake_seconds
            .with_label_values(&side)
            .observe(seconds);
        self.tunnel_handshakes.with_label_values(&side).inc();
    }

    fn tunnel_rejected(&self, reason: &str) {
        self.tunnel_rejected.with_label_values(&[reason]).inc();
    }

    fn tunnel_stream(&self, side: Side, status: &str) {
        self.tunnel_streams
            .with_label_values(&[side.as_str(), status])
            .inc();
    }

    fn tunnel_stream_refused(&self, reason: &str) {
        self.tunnel_streams_refused
            .with_label_values(&[reason])
            .inc();
    }

    fn tunnel_closed(&self, reason: &str) {
        self.tunnel_closed.with_label_values(&[reason]).inc();
    }

    fn tunnel_dial_queued(&self, seconds: f64) {
        self.tunnel_dial_queue_seconds.observe(seconds);
    }

    fn authz_decision(&self, decision: &str, policy: &str, layer: &str) {
        self.authz_decisions
            .with_label_values(&[decision, policy, layer])
            .inc();
    }

    fn ratelimit(&self, policy: &str, outcome: RateLimitOutcome, limit: LimitKind) {
        self.count_ratelimit(policy, outcome, limit);
    }

    fn ratelimit_buckets(&self, held: usize) {
        self.ratelimit_buckets
            .set(i64::try_from(held).unwrap_or(i64::MAX));
    }

    fn policy_revoked(&self) {
        self.policy_revoked.inc();
    }

    fn jwt_validation(&self, result: &str) {
        self.jwt_validations.with_label_values(&[result]).inc();
    }

    fn audit_dropped(&self, records: u64) {
        self.audit_dropped.inc_by(records);
    }
}

fn int_gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).unwrap_or_else(|e| unreachable!("static metric: {e}"));
    let _ = registry.register(Box::new(g.clone()));
    g
}

/// A counter registered by hand (by a collector that reads it at scrape
/// time).
fn unregistered_counter(name: &str, help: &str) -> IntCounter {
    IntCounter::with_opts(Opts::new(name, help))
        .unwrap_or_else(|e| unreachable!("static metric {name}: {e}"))
}

fn int_counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).unwrap_or_else(|e| unreachable!("static metric: {e}"));
    let _ = registry.register(Box::new(c.clone()));
    c
}

/// Brings `counter` up to `value`, read elsewhere: counters only go up, so
/// add the difference since the last scrape (callers hold their
/// `catching_up` lock, or two scrapes would add it twice).
fn catch_up(counter: &IntCounter, value: u64) {
    counter.inc_by(value.saturating_sub(counter.get()));
}

/// A counter whose value lives elsewhere and is read at scrape time.
struct ReadAtScrape {
    counter: IntCounter,
    dropped: Arc<dyn Fn() -> u64 + Send + Sync>,
    /// Scrapes run concurrently (the registry only read-locks): without
    /// this, two would both add the same difference.
    catching_up: Mutex<()>,
}

impl Collector for ReadAtScrape {
    fn desc(&self) -> Vec<&Desc> {
        self.counter.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _one_at_a_time = self
            .catching_up
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = (self.dropped)();
        self.counter.inc_by(now.saturating_sub(self.counter.get()));
        self.counter.collect()
    }
}

/// The runtime's live task count, read whenever Prometheus scrapes.
struct RuntimeTasks {
    gauge: IntGauge,
    handle: tokio::runtime::Handle,
}

impl Collector for RuntimeTasks {
    fn desc(&self) -> Vec<&Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let alive = self.handle.metrics().num_alive_tasks();
        self.gauge.set(i64::try_from(alive).unwrap_or(i64::MAX));
        self.gauge.collect()
    }
}

/// Reads the BPF counters and map sizes whenever Prometheus scrapes.
struct KernelCollector {
    stats: KernelStats,
    redirects: IntCounterVec,
    skipped: IntCounter,
    unenrolled: IntCounter,
    record_failures: IntCounter,
    map_entries: IntGaugeVec,
    inbound: IntCounterVec,
    sockmap_enabled: IntGauge,
    spliced: IntCounter,
    splice_fallbacks: IntCounter,
    descs: Vec<Desc>,
    /// As in [`ReadAtScrape`]: concurrent scrapes must not add twice.
    catching_up: Mutex<()>,
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
        let skipped = unregistered_counter(
            "bpf_proxy_sockets_skipped_total",
            "Connects from the proxy's namespace left alone",
        );
        let unenrolled = unregistered_counter(
            "bpf_unenrolled_skipped_total",
            "Mesh-bound connects from pods not enrolled in the mesh, left alone",
        );
        let record_failures = unregistered_counter(
            "bpf_record_failures_total",
            "Original-destination records the kernel could not store",
        );
        let map_entries = IntGaugeVec::new(
            Opts::new("bpf_map_entries", "Live entries in the redirect maps"),
            &["map"],
        )
        .unwrap_or_else(|e| unreachable!("static metric: {e}"));
        let inbound = IntCounterVec::new(
            Opts::new(
                "bpf_inbound_direct_total",
                "Connection attempts (not SYN retransmits) that reached a pod without its node proxy",
            ),
            &["verdict"],
        )
        .unwrap_or_else(|e| unreachable!("static metric: {e}"));
        let sockmap_enabled = IntGauge::with_opts(Opts::new(
            "bpf_sockmap_enabled",
            "1 when the sockmap fast path for the pod-proxy hop is attached",
        ))
        .unwrap_or_else(|e| unreachable!("static metric: {e}"));
        let spliced = unregistered_counter(
            "bpf_sockmap_spliced_sockets_total",
            "Sockets of the pod-proxy hop put into the sockhash (both ends count)",
        );
        let splice_fallbacks = unregistered_counter("bpf_sockmap_fallbacks_total", "Spliced sockets whose sends fell back to TCP because their peer was not in the sockhash");
        let descs = [
            sockmap_enabled.desc(),
            spliced.desc(),
            splice_fallbacks.desc(),
            inbound.desc(),
            redirects.desc(),
            skipped.desc(),
            unenrolled.desc(),
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
            unenrolled,
            record_failures,
            map_entries,
            inbound,
            sockmap_enabled,
            spliced,
            splice_fallbacks,
            descs,
            catching_up: Mutex::new(()),
        }
    }
}

impl Collector for KernelCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _one_at_a_time = self
            .catching_up
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let k = self.stats.read();
        catch_up(&self.redirects.with_label_values(&["ipv4"]), k.redirected4);
        catch_up(&self.redirects.with_label_values(&["ipv6"]), k.redirected6);
        catch_up(&self.skipped, k.skipped_proxy);
        catch_up(&self.unenrolled, k.skipped_unenrolled);
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
        gauge("splice", k.splice_entries);
        self.sockmap_enabled.set(i64::from(k.sockmap_enabled));
        catch_up(&self.spliced, k.spliced);
        catch_up(&self.splice_fallbacks, k.splice_fallbacks);
        let mut out = self.redirects.collect();
        out.extend(self.skipped.collect());
        out.extend(self.unenrolled.collect());
        out.extend(self.record_failures.collect());
        out.extend(self.map_entries.collect());
        out.extend(self.inbound.collect());
        out.extend(self.sockmap_enabled.collect());
        out.extend(self.spliced.collect());
        out.extend(self.splice_fallbacks.collect());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn<'a>(workload: &'a str, namespace: &'a str) -> ConnLabels<'a> {
        ConnLabels {
            reporter: Reporter::Destination,
            source_principal: UNKNOWN,
            source_workload: UNKNOWN,
            source_namespace: UNKNOWN,
            destination_workload: workload,
            destination_namespace: namespace,
            destination_service: UNKNOWN,
        }
    }

    /// Every [`Telemetry`] call lands in its metric with its labels in
    /// order, so what the data path reports is what a scrape shows.
    #[test]
    fn telemetry_calls_land_in_their_metrics() {
        let m = Metrics::new();
        let t: &dyn Telemetry = &m;
        t.refused("unknown_cgroup");
        t.connect_failed("connect");
        t.active(2);
        t.active(-1);
        t.pending(1);
        t.tunnel_handshake(Side::Client, 0.25);
        t.tunnel_rejected("identity_not_on_node");
        t.tunnel_stream(Side::Server, "403");
        t.tunnel_stream_refused("identity_left_node");
        t.tunnel_closed("max_age");
        t.tunnel_dial_queued(0.02);
        t.authz_decision("deny", "shop/deny-admin", "request");
        t.ratelimit("shop/api", RateLimitOutcome::Limited, LimitKind::Requests);
        t.ratelimit_buckets(7);
        t.policy_revoked();
        t.audit_dropped(3);
        t.jwt_validation("expired");
        t.http_request(Reporter::Destination, "backend", "shop", 503);
        let text = m.render();
        for line in [
            r#"nodeward_outbound_refused_total{reason="unknown_cgroup"} 1"#,
            r#"nodeward_outbound_connect_failures_total{reason="connect"} 1"#,
            "nodeward_active_connections 1",
            "nodeward_pending_connections 1",
            r#"nodeward_tunnel_handshakes_total{side="client"} 1"#,
            r#"nodeward_tunnel_handshake_seconds_count{side="client"} 1"#,
            r#"nodeward_tunnel_rejected_total{reason="identity_not_on_node"} 1"#,
            r#"nodeward_tunnel_streams_total{side="server",status="403"} 1"#,
            r#"nodeward_tunnel_streams_refused_total{reason="identity_left_node"} 1"#,
            r#"nodeward_tunnel_closed_total{reason="max_age"} 1"#,
            "nodeward_tunnel_dial_queue_seconds_count 1",
            r#"nodeward_tunnel_dial_queue_seconds_bucket{le="0.05"} 1"#,
            r#"nodeward_authz_decisions_total{decision="deny",layer="request",policy="shop/deny-admin"} 1"#,
            r#"nodeward_ratelimit_decisions_total{limit="requests",outcome="limited",policy="shop/api"} 1"#,
            "nodeward_ratelimit_buckets 7",
            "nodeward_policy_revoked_connections_total 1",
            "nodeward_audit_dropped_total 3",
            r#"nodeward_jwt_validations_total{result="expired"} 1"#,
            r#"nodeward_http_requests_total{code="5xx",destination_namespace="shop",destination_workload="backend",reporter="destination"} 1"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn series_are_told_apart_by_exact_label_values() {
        let m = Metrics::new();
        // Concatenated, both read "webshop": prometheus' vecs would merge them.
        m.connection(&conn("webs", "hop")).opened();
        m.connection(&conn("web", "shop")).opened();
        m.connection(&conn("web", "shop")).closed(10, 20);
        let text = m.render();
        for line in [
            "destination_namespace=\"hop\",destination_service=\"unknown\",destination_workload=\"webs\"",
            "destination_namespace=\"shop\",destination_service=\"unknown\",destination_workload=\"web\"",
        ] {
            let opened = text
                .lines()
                .filter(|l| l.starts_with("nodeward_connections_opened_total{") && l.contains(line))
                .count();
            assert_eq!(opened, 1, "{line}\n{text}");
        }
        assert!(
            text.contains("# TYPE nodeward_sent_bytes_total counter"),
            "{text}"
        );
    }

    /// Series of workloads gone from the registry go, unless a connection
    /// still holds them; unknown peers and current workloads stay.
    #[test]
    fn departed_workloads_lose_their_series_once_idle() {
        let m = Metrics::new();
        m.connection(&conn("gone", "shop")).opened();
        m.connection(&conn("stays", "shop")).opened();
        m.connection(&conn(UNKNOWN, UNKNOWN)).opened();
        let held = m.connection(&conn("leaving", "shop"));
        held.opened();
        m.count_http_request(Reporter::Destination, "gone", "shop", 200);
        m.count_http_request(Reporter::Destination, "stays", "shop", 200);
        let exists = |ns: &str, name: &str| ns == "shop" && name == "stays";
        let any = |_: &str| true;
        assert_eq!(
            m.prune_workloads(exists, any, |_| true),
            2,
            "gone's connection and request series"
        );
        let text = m.render();
        let has = |wl: &str| text.contains(&format!("destination_workload=\"{wl}\""));
        assert!(!has("gone"), "{text}");
        assert!(has("stays") && has(UNKNOWN) && has("leaving"), "{text}");
        // Once its last connection ends, the held series goes too.
        held.closed(1, 1);
        drop(held);
        assert_eq!(m.prune_workloads(exists, any, |_| true), 1);
        assert!(!m.render().contains("destination_workload=\"leaving\""));
    }

    /// A scrape running at the same moment must not make a prune keep what
    /// it should drop (scrapes used to hold clones of every series).
    /// An inbound caller labelled only by principal goes once no workload
    /// runs as that principal any more.
    #[test]
    fn departed_principals_lose_their_series() {
        let m = Metrics::new();
        let gone = "spiffe://cluster.local/ns/old/sa/batch";
        let stays = "spiffe://cluster.local/ns/shop/sa/frontend";
        for principal in [gone, stays] {
            m.connection(&ConnLabels {
                source_principal: principal,
                ..conn("stays", "shop")
            })
            .opened();
        }
        let exists = |ns: &str, name: &str| ns == "shop" && name == "stays";
        assert_eq!(m.prune_workloads(exists, |p| p == stays, |_| true), 1);
        let text = m.render();
        assert!(!text.contains(gone) && text.contains(stays), "{text}");
    }

    #[test]
    fn prunes_are_not_undone_by_concurrent_scrapes() {
        let m = Arc::new(Metrics::new());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let scraper = {
            let (m, stop) = (m.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = m.render();
                }
            })
        };
        let missed = (0..300)
            .filter(|_| {
                m.connection(&conn("gone", "shop")).opened();
                m.prune_workloads(|_, _| false, |_| true, |_| true) != 1
            })
            .count();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        scraper.join().expect("scraper");
        assert_eq!(missed, 0, "prunes that kept a departed series");
    }

    #[test]
    fn a_series_is_created_once_and_shared() {
        let family = CounterFamily::<2, 1>::new([("x_total", "x")], ["a", "b"]);
        let one = family.series(["1", "2"]);
        let again = family.series(["1", "2"]);
        assert!(Arc::ptr_eq(&one, &again));
        one.inc(0);
        again.inc_by(0, 2);
        assert_eq!(one.get(0), 3);
        assert!(!Arc::ptr_eq(&one, &family.series(["12", ""])));
    }

    #[test]
    fn new_metrics_are_exposed() {
        let m = Metrics::new();
        m.count_ratelimit(
            "shop/per-client",
            RateLimitOutcome::ShadowLimited,
            LimitKind::Requests,
        );
        m.ratelimit_buckets.set(3);
        m.drain_closed.inc_by(2);
        m.count_http_request(Reporter::Destination, "backend", "shop", 204);
        m.count_http_request(Reporter::Destination, "backend", "shop", 999);
        let text = m.render();
        for expected in [
            "nodeward_ratelimit_decisions_total{limit=\"requests\",outcome=\"shadow_limited\",policy=\"shop/per-client\"} 1",
            "nodeward_ratelimit_buckets 3",
            "nodeward_drain_closed_connections_total 2",
            &format!("nodeward_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION")),
            "code=\"2xx\"",
            "code=\"other\"",
        ] {
            assert!(text.contains(expected), "{expected} missing:\n{text}");
        }
    }

    #[test]
    fn status_classes() {
        let classes: Vec<_> = [100, 200, 302, 404, 503, 0, 600].map(status_class).into();
        assert_eq!(
            classes,
            ["1xx", "2xx", "3xx", "4xx", "5xx", "other", "other"]
        );
    }
}

#[cfg(test)]
mod relay_tests;

impl nodeward_kube::WatchTelemetry for Metrics {
    fn watch_error(&self, kind: nodeward_kube::Kind) {
        self.discovery_watch_errors
            .with_label_values(&[kind.as_str()])
            .inc();
    }
}
