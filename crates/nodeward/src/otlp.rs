//! Span export: the data path's spans ([`nodeward_proxy::trace`]) batched
//! and sent to an OpenTelemetry collector over OTLP, HTTP/protobuf or gRPC,
//! with the `opentelemetry-otlp` exporter.
//!
//! Bounded and never in the way: the data path hands a span over with a
//! non-blocking `try_send` into a queue of [`MAX_QUEUE`] spans; when that is
//! full the span is dropped and counted (`queue_full`). One task sends
//! batches of up to [`MAX_BATCH`] spans, at least every [`FLUSH_INTERVAL`],
//! one export at a time, each cut off after [`EXPORT_TIMEOUT`], without
//! retries: a failed or late batch is dropped and counted
//! (`export_failed`). A collector that is down thus costs a connection
//! attempt per batch and never slows a request.

use std::{sync::Arc, time::Duration};

use opentelemetry::{
    trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState},
    InstrumentationScope, KeyValue, Value,
};
use opentelemetry_otlp::{
    RetryPolicy, SpanExporter, WithExportConfig, WithHttpConfig, WithTonicConfig,
};
use opentelemetry_sdk::{
    trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks},
    Resource,
};
use prometheus::IntCounter;
use tokio::sync::mpsc;

use nodeward_proxy::{
    escape::clean,
    trace::{self, SpanRecord, SpanSink, Tracer},
};

use crate::{
    config::{OtlpProtocol, TracingSettings},
    metrics::Metrics,
};

/// Spans waiting for export; past this they are dropped.
pub const MAX_QUEUE: usize = 2048;
/// Most spans in one export request.
pub const MAX_BATCH: usize = 512;
/// Longest a span waits for its batch to fill.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Longest one export may take before its batch counts as dropped.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The exporter could not be built (a bad endpoint in the environment).
#[derive(Debug, thiserror::Error)]
#[error("OTLP span exporter: {0}")]
pub struct ExporterError(String);

/// The data path's end of the export queue.
struct Queue {
    tx: mpsc::Sender<SpanRecord>,
    dropped: IntCounter,
}

impl SpanSink for Queue {
    fn record(&self, span: SpanRecord) {
        if self.tx.try_send(span).is_err() {
            self.dropped.inc();
        }
    }
}

/// Builds the exporter and starts the export task (within a tokio
/// runtime); the tracer to give the data path's `Observer`.
pub fn start(
    settings: &TracingSettings,
    node: &str,
    metrics: &Metrics,
) -> Result<Arc<Tracer>, ExporterError> {
    let mut exporter = exporter(settings)?;
    let resource = Resource::builder_empty()
        .with_service_name(settings.service_name.clone())
        .with_attribute(KeyValue::new("k8s.node.name", node.to_owned()))
        .build();
    exporter.set_resource(&resource);
    let (tx, rx) = mpsc::channel(MAX_QUEUE);
    let queue = Queue {
        tx,
        dropped: metrics
            .trace_spans_dropped
            .with_label_values(&["queue_full"]),
    };
    let counters = Counters {
        exported: metrics.trace_spans_exported.clone(),
        failed: metrics
            .trace_spans_dropped
            .with_label_values(&["export_failed"]),
    };
    tokio::spawn(export_loop(rx, exporter, counters));
    Ok(Arc::new(Tracer::new(Arc::new(queue), settings.sampling)))
}

/// The OTLP exporter for `settings`: no retries (a failed batch is
/// dropped, see the module doc), [`EXPORT_TIMEOUT`] per request.
fn exporter(settings: &TracingSettings) -> Result<SpanExporter, ExporterError> {
    let failed = |e: opentelemetry_otlp::ExporterBuildError| ExporterError(e.to_string());
    let base = settings
        .endpoint
        .as_deref()
        .map(|e| e.trim_end_matches('/').to_owned());
    match settings.protocol {
        OtlpProtocol::HttpProtobuf => {
            let mut builder = SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_timeout(EXPORT_TIMEOUT)
                .with_retry_policy(RetryPolicy::disabled());
            // As for OTEL_EXPORTER_OTLP_ENDPOINT, the signal's path is appended.
            if let Some(base) = base {
                builder = builder.with_endpoint(format!("{base}/v1/traces"));
            }
            builder.build().map_err(failed)
        }
        OtlpProtocol::Grpc => {
            let mut builder = SpanExporter::builder()
                .with_tonic()
                .with_timeout(EXPORT_TIMEOUT)
                .with_retry_policy(RetryPolicy::disabled());
            if let Some(base) = base {
                builder = builder.with_endpoint(base);
            }
            builder.build().map_err(failed)
        }
    }
}

struct Counters {
    exported: IntCounter,
    failed: IntCounter,
}

/// Sends batches until every sender is gone (the proxy stopped).
async fn export_loop(mut rx: mpsc::Receiver<SpanRecord>, exporter: SpanExporter, c: Counters) {
    let scope = InstrumentationScope::builder("nodeward")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut failing = false;
    while fill(&mut rx, &mut batch).await {
        let n = batch.len() as u64;
        let spans = batch.drain(..).map(|r| span_data(r, &scope)).collect();
        let result = tokio::time::timeout(EXPORT_TIMEOUT, exporter.export(spans)).await;
        match result {
            Ok(Ok(())) => {
                c.exported.inc_by(n);
                if std::mem::take(&mut failing) {
                    tracing::info!("span export works again");
                }
            }
            Ok(Err(e)) => {
                c.failed.inc_by(n);
                if !std::mem::replace(&mut failing, true) {
                    let error = clean(&e.to_string()).into_owned();
                    tracing::warn!(%error, "span export failed; dropping spans until it works");
                }
            }
            Err(_) => {
                c.failed.inc_by(n);
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!("span export timed out; dropping spans until it works");
                }
            }
        }
    }
}

/// Waits for a first span, then up to [`FLUSH_INTERVAL`] for a full batch.
/// False once the queue is closed and empty.
async fn fill(rx: &mut mpsc::Receiver<SpanRecord>, batch: &mut Vec<SpanRecord>) -> bool {
    if rx.recv_many(batch, MAX_BATCH).await == 0 {
        return false;
    }
    let flush = tokio::time::sleep(FLUSH_INTERVAL);
    tokio::pin!(flush);
    while batch.len() < MAX_BATCH {
        let room = MAX_BATCH - batch.len();
        tokio::select! {
            n = rx.recv_many(batch, room) => if n == 0 { break },
            () = &mut flush => break,
        }
    }
    true
}

/// The SDK's form of a span record.
fn span_data(r: SpanRecord, scope: &InstrumentationScope) -> SpanData {
    let state = r
        .trace_state
        .as_deref()
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    let context = SpanContext::new(
        TraceId::from_bytes(r.trace_id),
        SpanId::from_bytes(r.span_id),
        TraceFlags::SAMPLED,
        false,
        state,
    );
    SpanData {
        span_context: context,
        parent_span_id: r
            .parent
            .map_or(SpanId::INVALID, |(id, _)| SpanId::from_bytes(id)),
        parent_span_is_remote: r.parent.is_some_and(|(_, remote)| remote),
        span_kind: match r.kind {
            trace::SpanKind::Server => SpanKind::Server,
            trace::SpanKind::Client => SpanKind::Client,
        },
        name: r.name,
        start_time: r.start,
        end_time: r.end,
        attributes: r.attributes.into_iter().map(attribute).collect(),
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: r.error.map_or(Status::Unset, Status::error),
        instrumentation_scope: scope.clone(),
    }
}

fn attribute((key, value): (&'static str, trace::Value)) -> KeyValue {
    let value = match value {
        trace::Value::Str(s) => Value::from(s.into_owned()),
        trace::Value::Int(i) => Value::I64(i),
    };
    KeyValue::new(key, value)
}

#[cfg(test)]
mod tests;
