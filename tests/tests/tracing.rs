//! End-to-end: spans from the node proxies reach a real OTLP receiver
//! (HTTP/protobuf and gRPC): request spans on an HTTP-judged port as
//! children of the caller's `traceparent`, the pod getting the proxy's span
//! as parent, sampled-out and denied requests, the tunnel hop of a plain
//! TCP connection, and a dead collector costing the traffic nothing.

use std::{net::SocketAddr, time::Duration};

use nodeward_tests::{
    otlp::{collector_addr, tracing_config, Received},
    require_root, Cluster, Options, ALLOW_ALL,
};
use serde_json::Value;

const TCP_PORT: u16 = 9000;
const HTTP_PORT: u16 = 8080;
/// Spans are exported at least every second; room for a slow machine.
const WAIT: Duration = Duration::from_secs(15);

/// `/admin` is denied, which also makes port 8080 an HTTP port.
const NO_ADMIN: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: shop}
spec:
  selector: {matchLabels: {app: backend}}
  action: DENY
  rules:
  - to: [{operation: {ports: [\"8080\"], paths: [/admin, /admin/*]}}]
";

const SAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const SAMPLED_OUT: &str = "00-5bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
const DENIED: &str = "00-6bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn traced_cluster(protocol: &str, endpoint: SocketAddr) -> Cluster {
    let mut c = Cluster::start_with(Options {
        tracing: tracing_config(endpoint, protocol, 1.0),
        ..Options::with_policies(&[("allow.yaml", ALLOW_ALL), ("no-admin.yaml", NO_ADMIN)])
    });
    c.serve_http("backend", HTTP_PORT);
    c.serve_echo("backend", TCP_PORT);
    c
}

fn trace_of(traceparent: &str) -> &str {
    &traceparent[3..35]
}

fn span_of(traceparent: &str) -> &str {
    &traceparent[36..52]
}

/// The server span of the request for `path`.
fn request_span<'a>(spans: &'a [Received], path: &str) -> Option<&'a Received> {
    spans
        .iter()
        .find(|s| s.span.kind == 2 && s.str("url.path").as_deref() == Some(path))
}

/// What the pod logged for `path`.
fn seen<'a>(logged: &'a [Value], path: &str) -> &'a Value {
    logged
        .iter()
        .find(|v| v["request"] == format!("GET {path}"))
        .unwrap_or_else(|| panic!("the pod saw no GET {path}: {logged:?}"))
}

/// One scenario for both protocols: HTTP requests with, without, and with
/// a sampled-out `traceparent`, a denied one, and a plain TCP call.
fn spans_arrive_with_the_callers_trace(protocol: &str) {
    let c = traced_cluster(protocol, collector_addr());
    let collector = c.start_collector();
    let to = SocketAddr::new(c.ip4("backend"), HTTP_PORT);
    let r = c.http_calls(
        "frontend",
        to,
        &[
            &format!("GET /api/a|traceparent: {SAMPLED}|tracestate: congo=t61rcWkgMzE"),
            "GET /api/b",
            &format!("GET /api/c|traceparent: {SAMPLED_OUT}"),
            &format!("GET /admin|traceparent: {DENIED}"),
        ],
    );
    assert_eq!(
        r["statuses"],
        serde_json::json!([200, 200, 200, 403]),
        "{r}"
    );
    let spans = collector.wait_for(WAIT, |s| request_span(s, "/admin").is_some());
    assert!(spans.iter().all(|s| s.protocol == protocol), "{spans:?}");
    assert!(spans.iter().all(|s| s.service == "nodeward-test"));
    let logged = c.http_requests_logged("backend", HTTP_PORT);

    // With a parent: the caller's trace, the caller's span as parent, and
    // the pod gets the proxy's span as its parent.
    let a = request_span(&spans, "/api/a").expect("a span for /api/a");
    assert_eq!(
        (a.trace_id(), a.parent()),
        (trace_of(SAMPLED).into(), span_of(SAMPLED).into())
    );
    assert_eq!(a.str("http.request.method").as_deref(), Some("GET"));
    assert_eq!(a.int("http.response.status_code"), Some(200));
    assert_eq!(a.int("server.port"), Some(i64::from(HTTP_PORT)));
    assert_eq!(a.str("nodeward.authz.decision").as_deref(), Some("allow"));
    assert_eq!(
        a.str("nodeward.authz.policy").as_deref(),
        Some("istio-system/allow-all")
    );
    assert_eq!(
        a.str("nodeward.source.principal").as_deref(),
        Some("spiffe://cluster.local/ns/shop/sa/frontend")
    );
    assert_eq!(
        a.str("nodeward.destination.workload").as_deref(),
        Some("shop/backend")
    );
    let got = seen(&logged, "/api/a")["traceparent"]
        .as_str()
        .expect("traceparent");
    assert_eq!(
        (trace_of(got), span_of(got)),
        (trace_of(SAMPLED), a.span_id().as_str())
    );
    assert!(got.ends_with("-01"), "{got}");
    assert_eq!(seen(&logged, "/api/a")["tracestate"], "congo=t61rcWkgMzE");

    // Without one: a new trace, which the pod continues.
    let b = request_span(&spans, "/api/b").expect("a span for /api/b");
    assert_eq!(b.parent(), "");
    let got = seen(&logged, "/api/b")["traceparent"]
        .as_str()
        .expect("traceparent");
    assert_eq!(
        (trace_of(got), span_of(got)),
        (b.trace_id().as_str(), b.span_id().as_str())
    );

    // Sampled out: no span, and the pod is told so.
    assert!(request_span(&spans, "/api/c").is_none(), "{spans:?}");
    assert!(!spans.iter().any(|s| s.trace_id() == trace_of(SAMPLED_OUT)));
    let got = seen(&logged, "/api/c")["traceparent"]
        .as_str()
        .expect("traceparent");
    assert_eq!(trace_of(got), trace_of(SAMPLED_OUT));
    assert!(got.ends_with("-00"), "{got}");

    // Denied: traced too, with the decision and the deciding policy.
    let d = request_span(&spans, "/admin").expect("a span for the 403");
    assert_eq!(d.trace_id(), trace_of(DENIED));
    assert_eq!(d.int("http.response.status_code"), Some(403));
    assert_eq!(d.str("nodeward.authz.decision").as_deref(), Some("deny"));
    assert_eq!(
        d.str("nodeward.authz.policy").as_deref(),
        Some("shop/no-admin")
    );

    // A plain TCP connection: the tunnel hop, client span on node-a,
    // server span on node-b as its child.
    let tcp = SocketAddr::new(c.ip4("backend"), TCP_PORT);
    assert_eq!(c.call("frontend", tcp, 1000)["intact"], true);
    let port = |s: &Received| s.int("server.port") == Some(i64::from(TCP_PORT));
    let spans = collector.wait_for(WAIT, |s| s.iter().filter(|s| port(s)).count() >= 2);
    let client = spans
        .iter()
        .find(|s| port(s) && s.span.kind == 3)
        .expect("the source proxy's client span");
    let server = spans
        .iter()
        .find(|s| port(s) && s.span.kind == 2)
        .expect("the destination proxy's server span");
    assert_eq!(client.parent(), "");
    assert_eq!(server.trace_id(), client.trace_id());
    assert_eq!(server.parent(), client.span_id());
    assert_eq!(server.int("nodeward.bytes_sent"), Some(1000));
    assert_eq!(
        server.str("nodeward.source.principal").as_deref(),
        Some("spiffe://cluster.local/ns/shop/sa/frontend")
    );
    assert_eq!(
        client.str("nodeward.source.workload").as_deref(),
        Some("shop/frontend")
    );
    assert_eq!(
        c.metric("node-b", "nodeward_trace_spans_dropped_total", &[]),
        0.0
    );
}

#[test]
fn spans_arrive_with_the_callers_trace_over_http_protobuf() {
    if !require_root("spans_arrive_with_the_callers_trace_over_http_protobuf") {
        return;
    }
    spans_arrive_with_the_callers_trace("http/protobuf");
}

#[test]
fn spans_arrive_with_the_callers_trace_over_grpc() {
    if !require_root("spans_arrive_with_the_callers_trace_over_grpc") {
        return;
    }
    spans_arrive_with_the_callers_trace("grpc");
}

#[test]
fn a_dead_collector_costs_the_traffic_nothing_and_drops_are_counted() {
    if !require_root("a_dead_collector_costs_the_traffic_nothing_and_drops_are_counted") {
        return;
    }
    // Nothing listens there: every export is refused.
    let c = traced_cluster("http/protobuf", collector_addr());
    let to = SocketAddr::new(c.ip4("backend"), HTTP_PORT);
    let requests: Vec<String> = (0..20).map(|i| format!("GET /api/{i}")).collect();
    let requests: Vec<&str> = requests.iter().map(String::as_str).collect();
    let r = c.http_calls("frontend", to, &requests);
    assert_eq!(r["statuses"], serde_json::json!(vec![200; 20]), "{r}");
    let name = "nodeward_trace_spans_dropped_total";
    let failed = [("reason", "export_failed")];
    let dropped = c.wait_metric("node-b", name, &failed, 20.0, WAIT);
    assert!(dropped >= 20.0, "node-b dropped {dropped}");
    assert_eq!(
        c.metric("node-b", "nodeward_trace_spans_exported_total", &[]),
        0.0
    );
    // The source proxy's tunnel spans are dropped the same way.
    assert!(c.wait_metric("node-a", name, &failed, 1.0, WAIT) >= 1.0);
}
