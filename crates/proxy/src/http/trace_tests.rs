//! Tracing through `serve`: the span each request gets, and the
//! `traceparent` the pod receives.

use std::sync::{Arc, Mutex};

use ::http::{request::Parts, HeaderValue, Method, StatusCode};

use super::{rbac, Client, Proxy, Upstream, Verdict};
use crate::{
    http::Authorizer,
    trace::{context::hex, SpanRecord, SpanSink, TraceParent, Tracer},
};

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[derive(Default)]
struct Recorded(Mutex<Vec<SpanRecord>>);

impl SpanSink for Recorded {
    fn record(&self, span: SpanRecord) {
        self.0.lock().expect("lock").push(span);
    }
}

impl Recorded {
    fn spans(&self) -> Vec<SpanRecord> {
        self.0.lock().expect("lock").clone()
    }
}

/// [`rbac`], traced.
struct Traced(Arc<Tracer>);

impl Authorizer for Traced {
    fn authorize(&self, parts: &mut Parts) -> Verdict {
        rbac(parts)
    }
    fn tracer(&self) -> Option<&Arc<Tracer>> {
        Some(&self.0)
    }
}

async fn traced(ratio: f64) -> (Upstream, Proxy, Arc<Recorded>) {
    let sink = Arc::new(Recorded::default());
    let upstream = Upstream::http().await;
    let tracer = Arc::new(Tracer::new(sink.clone(), ratio));
    let proxy = Proxy::start(&upstream, Traced(tracer)).await;
    (upstream, proxy, sink)
}

/// GET `path` with these extra headers; the status.
async fn get(client: &mut Client, path: &str, headers: &[(&str, &str)]) -> StatusCode {
    let mut req = client.request(Method::GET, path, bytes::Bytes::new());
    for (k, v) in headers {
        let name = ::http::HeaderName::from_bytes(k.as_bytes()).expect("name");
        let value = HeaderValue::from_str(v).expect("value");
        req.headers_mut().append(name, value);
    }
    client.send(req).await.expect("reply").status
}

fn parent() -> TraceParent {
    TraceParent::parse(PARENT.as_bytes()).expect("valid")
}

#[tokio::test]
async fn request_span_is_the_callers_child_and_the_pods_parent() {
    for h2 in [false, true] {
        let (upstream, proxy, sink) = traced(1.0).await;
        let mut client = if h2 {
            Client::h2(proxy.addr).await
        } else {
            Client::h1(proxy.addr).await
        };
        let headers = [("traceparent", PARENT), ("tracestate", "congo=t61rcWkgMzE")];
        assert_eq!(get(&mut client, "/a", &headers).await, StatusCode::OK);
        let spans = sink.spans();
        let [span] = spans.as_slice() else {
            panic!("one span: {spans:?}")
        };
        assert_eq!(span.trace_id, parent().trace_id);
        assert_eq!(span.parent, Some((parent().span_id, true)));
        let seen = &upstream.log.seen()[0];
        let forwarded = TraceParent::from_headers(&seen.headers).expect("pod gets traceparent");
        assert_eq!(forwarded.trace_id, parent().trace_id, "h2: {h2}");
        assert_eq!(
            forwarded.span_id, span.span_id,
            "the proxy's span is the parent"
        );
        assert!(forwarded.sampled());
        assert_eq!(seen.headers["tracestate"], "congo=t61rcWkgMzE");
        drop(client);
        proxy.summary().await;
    }
}

#[tokio::test]
async fn request_without_traceparent_starts_a_trace() {
    let (upstream, proxy, sink) = traced(1.0).await;
    let mut client = Client::h1(proxy.addr).await;
    assert_eq!(get(&mut client, "/a", &[]).await, StatusCode::OK);
    let span = sink.spans().pop().expect("a span");
    assert_eq!(span.parent, None);
    let forwarded = TraceParent::from_headers(&upstream.log.seen()[0].headers).expect("sent");
    assert_eq!(
        (forwarded.trace_id, forwarded.span_id),
        (span.trace_id, span.span_id)
    );
}

#[tokio::test]
async fn sampled_out_parent_records_nothing_and_forwards_the_flag_off() {
    let (upstream, proxy, sink) = traced(1.0).await;
    let mut client = Client::h1(proxy.addr).await;
    let off = PARENT.replace("-01", "-00");
    assert_eq!(
        get(&mut client, "/a", &[("traceparent", &off)]).await,
        StatusCode::OK
    );
    assert!(sink.spans().is_empty());
    let forwarded = TraceParent::from_headers(&upstream.log.seen()[0].headers).expect("sent");
    assert_eq!(forwarded.trace_id, parent().trace_id);
    assert!(!forwarded.sampled());
}

#[tokio::test]
async fn malformed_traceparent_starts_a_new_trace_and_drops_tracestate() {
    let (upstream, proxy, sink) = traced(1.0).await;
    let mut client = Client::h1(proxy.addr).await;
    let bad = PARENT.to_uppercase();
    let headers = [("traceparent", bad.as_str()), ("tracestate", "a=b")];
    assert_eq!(get(&mut client, "/a", &headers).await, StatusCode::OK);
    let span = sink.spans().pop().expect("a span");
    assert_eq!(span.parent, None);
    assert_ne!(span.trace_id, parent().trace_id);
    let seen = &upstream.log.seen()[0].headers;
    assert_eq!(seen.get_all("traceparent").iter().count(), 1);
    assert_eq!(
        TraceParent::from_headers(seen).map(|p| p.span_id),
        Some(span.span_id)
    );
    assert!(!seen.contains_key("tracestate"));
}

#[tokio::test]
async fn refused_and_unsupported_requests_are_traced() {
    let (upstream, proxy, sink) = traced(1.0).await;
    let mut client = Client::h1(proxy.addr).await;
    let status = get(&mut client, "/denied", &[("traceparent", PARENT)]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let span = sink.spans().pop().expect("a span for the 403");
    assert_eq!(span.trace_id, parent().trace_id);
    assert_eq!(
        span.attribute("http.response.status_code"),
        Some(&crate::trace::Value::Int(403))
    );
    assert!(upstream.log.seen().is_empty());
    // A 501 never reaches the authorizer, and is traced all the same.
    let upgrade = [("upgrade", "websocket"), ("connection", "upgrade")];
    let status = get(&mut client, "/up", &upgrade).await;
    assert_eq!(status, StatusCode::NOT_IMPLEMENTED);
    let span = sink.spans().pop().expect("a span for the 501");
    assert_eq!(
        span.attribute("http.response.status_code"),
        Some(&crate::trace::Value::Int(501))
    );
}

#[tokio::test]
async fn tracing_off_leaves_traceparent_alone() {
    let upstream = Upstream::http().await;
    let proxy = Proxy::start(&upstream, rbac).await;
    let mut client = Client::h1(proxy.addr).await;
    let headers = [("traceparent", PARENT), ("tracestate", "a=b")];
    assert_eq!(get(&mut client, "/a", &headers).await, StatusCode::OK);
    let seen = &upstream.log.seen()[0].headers;
    assert_eq!(seen["traceparent"], PARENT);
    assert_eq!(seen["tracestate"], "a=b");
    assert_eq!(hex(&parent().span_id), "00f067aa0ba902b7");
}
