use std::{borrow::Cow, time::SystemTime};

use nodeward_proxy::trace::{SpanKind as Kind, Value as V};

use super::*;

fn record() -> SpanRecord {
    SpanRecord {
        trace_id: [1; 16],
        span_id: [2; 8],
        parent: Some(([3; 8], true)),
        trace_state: Some("vendor=x".into()),
        kind: Kind::Server,
        name: Cow::Borrowed("GET"),
        start: SystemTime::UNIX_EPOCH,
        end: SystemTime::UNIX_EPOCH + Duration::from_millis(5),
        attributes: vec![
            ("url.path", V::Str("/a".into())),
            ("http.response.status_code", V::Int(503)),
        ],
        error: Some("503".into()),
    }
}

#[test]
fn span_records_become_sdk_spans_with_their_ids_and_parent() {
    let scope = InstrumentationScope::builder("nodeward").build();
    let data = span_data(record(), &scope);
    assert_eq!(data.span_context.trace_id(), TraceId::from_bytes([1; 16]));
    assert_eq!(data.span_context.span_id(), SpanId::from_bytes([2; 8]));
    assert!(data.span_context.is_sampled());
    assert_eq!(data.span_context.trace_state().header(), "vendor=x");
    assert_eq!(data.parent_span_id, SpanId::from_bytes([3; 8]));
    assert!(data.parent_span_is_remote);
    assert_eq!(data.span_kind, SpanKind::Server);
    assert_eq!(data.status, Status::error("503"));
    assert!(data
        .attributes
        .contains(&KeyValue::new("http.response.status_code", 503_i64)));
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_without_waiting() {
    let metrics = Metrics::new();
    let (tx, _rx) = mpsc::channel(1);
    let dropped = metrics
        .trace_spans_dropped
        .with_label_values(&["queue_full"]);
    let queue = Queue {
        tx,
        dropped: dropped.clone(),
    };
    for _ in 0..5 {
        queue.record(record());
    }
    assert_eq!(dropped.get(), 4);
}
