//! `traceparent` and `tracestate` parsing, hostile inputs included, and
//! the sampling rules.

use std::sync::{Arc, Mutex};

use http::{HeaderMap, HeaderValue, Request, StatusCode};

use super::{context::tracestate, *};

const VALID: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

#[derive(Default)]
struct Recorded(Mutex<Vec<SpanRecord>>);

impl SpanSink for Recorded {
    fn record(&self, span: SpanRecord) {
        self.0.lock().expect("lock").push(span);
    }
}

fn tracer(ratio: f64) -> (Arc<Tracer>, Arc<Recorded>) {
    let sink = Arc::new(Recorded::default());
    (Arc::new(Tracer::new(sink.clone(), ratio)), sink)
}

#[test]
fn valid_traceparent_parses_and_round_trips() {
    let p = TraceParent::parse(VALID.as_bytes()).expect("valid");
    assert_eq!(
        context::hex(&p.trace_id),
        "0af7651916cd43dd8448eb211c80319c"
    );
    assert_eq!(context::hex(&p.span_id), "b7ad6b7169203331");
    assert!(p.sampled());
    assert_eq!(p.to_header(), VALID);
    let off = TraceParent::parse(VALID.replace("-01", "-00").as_bytes()).expect("valid");
    assert!(!off.sampled());
}

#[test]
fn later_versions_are_read_by_their_first_four_fields() {
    let v1 = VALID.replacen("00", "01", 1);
    assert!(TraceParent::parse(v1.as_bytes()).is_some());
    let extended = format!("{v1}-what-comes-next");
    assert!(TraceParent::parse(extended.as_bytes()).is_some());
    // Version 00 has exactly four fields.
    assert!(TraceParent::parse(format!("{VALID}-x").as_bytes()).is_none());
    // A later version must separate what it appends.
    assert!(TraceParent::parse(format!("{v1}x").as_bytes()).is_none());
}

#[test]
fn hostile_traceparents_are_ignored() {
    let bad: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"00".to_vec(),
        VALID.as_bytes()[..54].to_vec(),
        VALID.to_uppercase().into_bytes(),
        VALID.replacen("00", "ff", 1).into_bytes(),
        VALID.replacen("00", "0g", 1).into_bytes(),
        "00-00000000000000000000000000000000-b7ad6b7169203331-01".into(),
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01".into(),
        "00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
        "00-0af7651916cd43dd8448eb211c80319cb-7ad6b7169203331-01".into(),
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0x".into(),
        "00-+af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
        " 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01 ".into(),
        "é0-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0".into(),
        vec![0xff; 55],
        vec![b'-'; 4096],
        [VALID.as_bytes(), &[0u8]].concat(),
    ];
    for value in bad {
        assert_eq!(
            TraceParent::parse(&value),
            None,
            "{:?}",
            String::from_utf8_lossy(&value)
        );
    }
}

#[test]
fn every_single_byte_change_either_parses_or_is_ignored() {
    // Not a fuzzer, but every position and byte value: never a panic.
    let base = VALID.as_bytes();
    for i in 0..base.len() {
        for b in 0..=255u8 {
            let mut v = base.to_vec();
            v[i] = b;
            let _ = TraceParent::parse(&v);
            let _ = TraceParent::parse(&v[..i]);
        }
    }
}

#[test]
fn two_traceparent_headers_are_no_parent() {
    let mut headers = HeaderMap::new();
    headers.append("traceparent", HeaderValue::from_static(VALID));
    assert!(TraceParent::from_headers(&headers).is_some());
    headers.append("traceparent", HeaderValue::from_static(VALID));
    assert_eq!(TraceParent::from_headers(&headers), None);
}

#[test]
fn tracestate_is_joined_bounded_and_printable() {
    let mut headers = HeaderMap::new();
    assert_eq!(tracestate(&headers), None);
    headers.append("tracestate", HeaderValue::from_static("a=1"));
    headers.append("tracestate", HeaderValue::from_static("b=2"));
    assert_eq!(tracestate(&headers).expect("state"), "a=1,b=2");
    headers.append(
        "tracestate",
        HeaderValue::from_bytes(b"c=\xe9\t").expect("obs-text"),
    );
    assert_eq!(tracestate(&headers), None, "obs-text and tabs");
    let mut long = HeaderMap::new();
    let value = format!("k={}", "v".repeat(context::MAX_TRACESTATE));
    long.insert("tracestate", HeaderValue::from_str(&value).expect("value"));
    assert_eq!(tracestate(&long), None, "too long");
}

#[test]
fn root_sampling_follows_the_ratio_and_parents_their_flag() {
    let (all, _) = tracer(1.0);
    let (none, _) = tracer(0.0);
    let (half, _) = tracer(0.5);
    let mut sampled = 0;
    for _ in 0..10_000 {
        assert!(all.child_of(None).sampled());
        assert!(!none.child_of(None).sampled());
        sampled += usize::from(half.child_of(None).sampled());
    }
    // Mean 5000, standard deviation 50.
    assert!((4_700..=5_300).contains(&sampled), "{sampled}");
    let on = TraceParent::parse(VALID.as_bytes()).expect("valid");
    let off = on.with_sampled(false);
    assert!(none.child_of(Some(&on)).sampled());
    assert!(!all.child_of(Some(&off)).sampled());
    let child = all.child_of(Some(&on));
    assert_eq!(child.trace_id, on.trace_id);
    assert_ne!(child.span_id, on.span_id);
    // NaN and out-of-range ratios are clamped, never a panic.
    assert!(!tracer(f64::NAN).0.child_of(None).sampled());
    assert!(tracer(7.0).0.child_of(None).sampled());
}

#[test]
fn request_span_records_the_semantic_attributes_and_the_decision() {
    let (tracer, sink) = tracer(1.0);
    let req = Request::get("/api/items?q=1")
        .header("traceparent", VALID)
        .header("tracestate", "vendor=x")
        .body(())
        .expect("request");
    let (mut parts, ()) = req.into_parts();
    let mut span = RequestSpan::start(&tracer, &parts);
    span.authorized(
        Some("spiffe://td/ns/a/sa/b"),
        "shop/backend",
        8080,
        false,
        None,
    );
    span.host("backend.shop");
    span.rate_limited("allowed", None);
    span.inject(&mut parts.headers);
    let ours = span.context();
    span.finish(StatusCode::FORBIDDEN);
    let spans = sink.0.lock().expect("lock");
    let [s] = spans.as_slice() else {
        panic!("one span: {spans:?}")
    };
    let parent = TraceParent::parse(VALID.as_bytes()).expect("valid");
    assert_eq!((s.trace_id, s.span_id), (parent.trace_id, ours.span_id));
    assert_eq!(s.parent, Some((parent.span_id, true)));
    assert_eq!(s.trace_state.as_deref(), Some("vendor=x"));
    assert_eq!((s.kind, s.name.as_ref()), (SpanKind::Server, "GET"));
    let str_attr = |k| match s.attribute(k) {
        Some(Value::Str(v)) => v.to_string(),
        other => panic!("{k}: {other:?}"),
    };
    assert_eq!(str_attr("http.request.method"), "GET");
    assert_eq!(str_attr("url.path"), "/api/items");
    assert_eq!(str_attr("server.address"), "backend.shop");
    assert_eq!(str_attr("nodeward.authz.decision"), "deny");
    assert_eq!(str_attr("nodeward.authz.policy"), "default");
    assert_eq!(
        str_attr("nodeward.source.principal"),
        "spiffe://td/ns/a/sa/b"
    );
    assert_eq!(str_attr("nodeward.destination.workload"), "shop/backend");
    assert_eq!(str_attr("nodeward.ratelimit.outcome"), "allowed");
    assert_eq!(
        s.attribute("http.response.status_code"),
        Some(&Value::Int(403))
    );
    assert_eq!(s.attribute("server.port"), Some(&Value::Int(8080)));
    assert_eq!(s.error, None, "a 403 is no server error");
    assert_eq!(parts.headers["traceparent"], ours.to_header());
    assert_eq!(parts.headers["tracestate"], "vendor=x");
}

#[test]
fn unknown_methods_and_long_paths_stay_bounded() {
    let (tracer, sink) = tracer(1.0);
    let path = format!("/{}", "a".repeat(10_000));
    let req = Request::builder()
        .method("BREW")
        .uri(path.as_str())
        .body(())
        .expect("request");
    let (parts, ()) = req.into_parts();
    RequestSpan::start(&tracer, &parts).finish(StatusCode::BAD_GATEWAY);
    let spans = sink.0.lock().expect("lock");
    let s = &spans[0];
    assert_eq!(s.name, "HTTP");
    assert_eq!(
        s.attribute("http.request.method"),
        Some(&Value::Str("_OTHER".into()))
    );
    let Some(Value::Str(p)) = s.attribute("url.path") else {
        panic!("path")
    };
    assert_eq!(p.len(), MAX_ATTRIBUTE);
    assert_eq!(s.error.as_deref(), Some("502"));
}

/// A request span dropped before it finished (the handler was cancelled by
/// an HTTP/2 reset) is recorded once, as `cancelled`; a clone never records.
#[test]
fn a_request_span_dropped_unfinished_records_cancelled_once() {
    let (tracer, sink) = tracer(1.0);
    let (parts, ()) = Request::get("/a").body(()).expect("request").into_parts();
    let span = RequestSpan::start(&tracer, &parts);
    drop(span.clone());
    assert!(sink.0.lock().expect("lock").is_empty(), "a clone recorded");
    drop(span);
    let spans = sink.0.lock().expect("lock").clone();
    assert_eq!(spans.len(), 1, "{spans:?}");
    assert_eq!(spans[0].error.as_deref(), Some("cancelled"));
    let finished = RequestSpan::start(&tracer, &parts);
    finished.finish(StatusCode::OK);
    let spans = sink.0.lock().expect("lock").clone();
    assert_eq!(spans.len(), 2, "a finished span recorded again: {spans:?}");
    assert_eq!(spans[1].error, None);
}
