//! End-to-end: identity-aware rate limits, and what operators read: metrics
//! with bounded labels, the admin endpoints, readiness.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use nodeward_tests::{metric_value, require_root, Cluster, Options, ALLOW_ALL};
use serde_json::Value;

const TCP_PORT: u16 = 9000;
const HTTP_PORT: u16 = 8080;

/// Five connections per caller to backend's TCP port, no refill in the test.
const CONN_LIMIT: &str = "\
apiVersion: nodeward.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: backend-conns, namespace: shop}
spec:
  selector: {matchLabels: {app: backend}}
  match: {ports: [\"9000\"]}
  limit: connections
  bucket: {maxTokens: 5, tokensPerFill: 5, fillInterval: 10m}
";

/// Three requests per caller, refilled every 2 s.
const REQUEST_LIMIT: &str = "\
apiVersion: nodeward.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: backend-requests, namespace: shop}
spec:
  selector: {matchLabels: {app: backend}}
  match: {ports: [\"8080\"]}
  limit: requests
  bucket: {maxTokens: 3, tokensPerFill: 3, fillInterval: 2s}
";

#[test]
fn a_caller_over_its_connection_budget_is_cut_off_while_another_is_not() {
    if !require_root("a_caller_over_its_connection_budget_is_cut_off_while_another_is_not") {
        return;
    }
    let mut c = Cluster::start_with(Options::with_policies(&[
        ("allow.yaml", ALLOW_ALL),
        ("limit.yaml", CONN_LIMIT),
    ]));
    c.serve_echo("backend", TCP_PORT);
    let to = SocketAddr::new(c.ip4("backend"), TCP_PORT);
    assert_eq!(
        c.call_many("frontend", to, 100, 8),
        5,
        "frontend gets its 5"
    );
    assert_eq!(
        c.call_many("cache", to, 100, 3),
        3,
        "cache has its own bucket"
    );
    assert_eq!(
        c.accepted("backend", TCP_PORT).len(),
        8,
        "refused ones never reach the pod"
    );
    let limited = c.metric(
        "node-b",
        "nodeward_ratelimit_decisions_total",
        &[
            ("policy", "shop/backend-conns"),
            ("outcome", "limited"),
            ("limit", "connections"),
        ],
    );
    assert_eq!(limited, 3.0);
    let failures = c.metric(
        "node-a",
        "nodeward_outbound_connect_failures_total",
        &[("reason", "rate_limited")],
    );
    assert_eq!(failures, 3.0, "the source proxy learns why");
    assert_refusals_counted_apart(&c, "shop/backend-conns", "connection", 3);
}

/// Rate-limit refusals are not authorization denies: they are counted in
/// `nodeward_ratelimit_decisions_total` only, while authorization counts
/// every call as the allow it was; their audit records say `ratelimit`.
fn assert_refusals_counted_apart(c: &Cluster, policy: &str, layer: &str, limited: usize) {
    let deny = [("decision", "deny")];
    assert_eq!(
        c.metric("node-b", "nodeward_authz_decisions_total", &deny),
        0.0,
        "{policy} refused as a rate limit, not by authorization"
    );
    let allowed = [("decision", "allow"), ("policy", "istio-system/allow-all")];
    let allows = c.metric("node-b", "nodeward_authz_decisions_total", &allowed) as usize;
    // One record per decision: every call's authorization, then the refusals.
    let audit = c.audit_records("node-b", allows + limited, |_| true);
    assert_eq!(audit.len(), allows + limited, "{audit:?}");
    let refused: Vec<&Value> = audit.iter().filter(|r| r["decision"] == "deny").collect();
    assert_eq!(refused.len(), limited, "{audit:?}");
    for r in refused {
        assert_eq!(r["kind"], "ratelimit", "{r}");
        assert_eq!(r["policy"], policy, "{r}");
        assert_eq!(r["layer"], layer, "{r}");
    }
    let authz = audit.iter().filter(|r| r["kind"] == "authz").count();
    assert_eq!(authz, allows, "{audit:?}");
}

#[test]
fn an_http_client_gets_429_with_headers_and_recovers_after_refill() {
    if !require_root("an_http_client_gets_429_with_headers_and_recovers_after_refill") {
        return;
    }
    let mut c = Cluster::start_with(Options::with_policies(&[
        ("allow.yaml", ALLOW_ALL),
        ("limit.yaml", REQUEST_LIMIT),
    ]));
    c.serve_http("backend", HTTP_PORT);
    let to = SocketAddr::new(c.ip4("backend"), HTTP_PORT);
    let r = c.http_calls(
        "frontend",
        to,
        &["GET /a", "GET /b", "GET /c", "GET /d", "GET /e"],
    );
    let statuses: Vec<u64> = r["statuses"]
        .as_array()
        .expect("statuses")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    // Over the limit the connection stays open: every request is answered.
    assert_eq!(statuses, [200, 200, 200, 429, 429], "{r}");
    let h = &r["headers"][3];
    assert_eq!(h["x-ratelimit-limit"], "3", "{h}");
    assert_eq!(h["x-ratelimit-remaining"], "0", "{h}");
    let retry: u64 = h["retry-after"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=2).contains(&retry), "{h}");
    assert!(h["x-ratelimit-reset"].is_string(), "{h}");
    assert_eq!(c.http_requests_seen("backend", HTTP_PORT).len(), 3);
    // Another identity has its own bucket.
    assert_eq!(c.http_calls("cache", to, &["GET /x"])["statuses"][0], 200);
    std::thread::sleep(Duration::from_millis(2300));
    assert_eq!(
        c.http_calls("frontend", to, &["GET /again"])["statuses"][0],
        200
    );
    let log = c.access_log("node-b");
    let limited = log
        .iter()
        .find(|r| r["event"] == "request" && r["status"] == 429)
        .expect("an access record of the 429");
    assert_eq!(limited["rate_limit"], "limited", "{limited}");
    assert_refusals_counted_apart(&c, "shop/backend-requests", "request", 2);
}

#[test]
fn metrics_carry_bounded_identity_labels_and_move_with_traffic() {
    if !require_root("metrics_carry_bounded_identity_labels_and_move_with_traffic") {
        return;
    }
    let mut c = Cluster::start();
    c.serve_echo("backend", TCP_PORT);
    let to = SocketAddr::new(c.ip4("backend"), TCP_PORT);
    assert_eq!(c.call_many("frontend", to, 1000, 3), 3);
    let text = c.metrics("node-b");
    let frontend = "spiffe://cluster.local/ns/shop/sa/frontend";
    let labels = [
        ("reporter", "destination"),
        ("source_principal", frontend),
        ("destination_workload", "backend"),
        ("destination_namespace", "shop"),
    ];
    assert_eq!(
        metric_value(&text, "nodeward_connections_opened_total", &labels),
        3.0
    );
    assert!(metric_value(&text, "nodeward_sent_bytes_total", &labels) >= 3000.0);
    let source_side = c.metric(
        "node-a",
        "nodeward_connections_opened_total",
        &[("reporter", "source"), ("source_principal", frontend)],
    );
    assert_eq!(source_side, 3.0);
    assert!(
        metric_value(
            &text,
            "nodeward_tunnel_handshakes_total",
            &[("side", "server")]
        ) >= 1.0
    );
    assert_eq!(metric_value(&text, "nodeward_policy_loaded", &[]), 1.0);
    assert!(metric_value(&text, "nodeward_policy_reloads_total", &[("result", "ok")]) >= 1.0);
    let decisions = metric_value(
        &text,
        "nodeward_authz_decisions_total",
        &[("decision", "allow"), ("policy", "istio-system/allow-all")],
    );
    assert_eq!(decisions, 3.0);
    let expiry = metric_value(
        &text,
        "nodeward_certificate_expiry_timestamp_seconds",
        &[("identity", "spiffe://cluster.local/ns/shop/sa/backend")],
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!(expiry > now, "{expiry}");
    assert!(c.metric("node-a", "nodeward_bpf_redirects_total", &[]) >= 3.0);
    // The log writer reports what it drops (nothing, at this rate).
    assert!(
        text.lines()
            .any(|l| l == "nodeward_log_dropped_lines_total 0"),
        "no log-drop counter in\n{text}"
    );
    // Every principal label value is a known identity or `unknown`.
    for line in text.lines().filter(|l| l.contains("source_principal=")) {
        let v = line
            .split("source_principal=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("");
        assert!(
            v == "unknown" || v.starts_with("spiffe://cluster.local/ns/"),
            "{line}"
        );
    }
}

/// Pod churn must not grow the label sets for ever: once a workload leaves
/// the workloads file, its series go at the next reload.
#[test]
fn metric_series_of_a_departed_workload_are_dropped() {
    if !require_root("metric_series_of_a_departed_workload_are_dropped") {
        return;
    }
    let mut c = Cluster::start();
    c.serve_echo("backend", TCP_PORT);
    let to = SocketAddr::new(c.ip4("backend"), TCP_PORT);
    assert_eq!(c.call_many("frontend", to, 100, 2), 2);
    let series = |c: &Cluster| {
        c.metrics("node-b")
            .lines()
            .filter(|l| {
                l.starts_with("nodeward_connections_opened_total{")
                    && l.contains("destination_workload=\"backend\"")
            })
            .count()
    };
    assert_eq!(series(&c), 1, "the backend's series exists");
    let reloads = |c: &Cluster| {
        c.metric(
            "node-b",
            "nodeward_workloads_reloads_total",
            &[("result", "ok")],
        )
    };
    let before = reloads(&c);
    c.unlist("backend");
    let deadline = Instant::now() + Duration::from_secs(10);
    while reloads(&c) <= before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(reloads(&c) > before, "the workloads file was not reloaded");
    assert_eq!(
        series(&c),
        0,
        "the departed backend's series is still exported"
    );
}

#[test]
fn admin_endpoints_report_readiness_config_and_change_the_log_level() {
    if !require_root("admin_endpoints_report_readiness_config_and_change_the_log_level") {
        return;
    }
    let broken = "apiVersion: security.istio.io/v1\nkind: Nope\n";
    let c = Cluster::start_with(Options::with_policies(&[("broken.yaml", broken)]));
    // No valid policy yet: alive, but not ready, and it says why.
    assert_eq!(c.admin("node-a", "/healthz").0, 200);
    let (status, _, body) = c.admin("node-a", "/ready");
    assert_eq!(status, 503, "{body}");
    let report: Value = serde_json::from_str(&body).expect("ready report");
    assert_eq!(report["policyLoaded"], false, "{report}");
    assert_eq!(report["bpfAttached"], true, "{report}");
    assert_eq!(report["certificates"], true, "{report}");
    c.change_policies("ok", |c| {
        c.remove_policy("broken.yaml");
        c.write_policy("allow.yaml", ALLOW_ALL);
    });
    assert_eq!(c.admin("node-a", "/ready").0, 200);

    let (status, _, body) = c.admin("node-a", "/config_dump");
    assert_eq!(status, 200);
    assert!(!body.contains("PRIVATE KEY"), "no keys in the dump");
    let dump: Value = serde_json::from_str(&body).expect("dump");
    assert_eq!(dump["node"], "node-a");
    assert!(
        dump["workloads"].as_array().is_some_and(|w| w.len() == 4),
        "{dump}"
    );
    let policies = dump["policies"].as_array().expect("policies");
    assert!(
        policies.iter().any(|p| p["name"] == "allow-all"
            && p["file"]
                .as_str()
                .is_some_and(|f| f.ends_with("allow.yaml"))),
        "{dump}"
    );
    assert!(
        dump["identities"].as_array().is_some_and(|ids| ids
            .iter()
            .any(|i| i["spiffeId"] == "spiffe://cluster.local/ns/shop/sa/frontend")),
        "{dump}"
    );

    assert_eq!(c.admin_call("node-a", "POST /logging?level=debug").0, 200);
    let (_, _, current) = c.admin("node-a", "/logging");
    assert!(current.contains("debug"), "{current}");
    assert_eq!(c.admin_call("node-a", "POST /logging?level=loud").0, 400);
    assert_eq!(
        c.admin("node-a", "/logging?level=info").0,
        405,
        "GET only reads"
    );
    assert_eq!(c.admin("node-a", "/nope").0, 404);
}
