//! Distributed tracing on the data path: the spans the proxy records and
//! the W3C trace context it reads and forwards.
//!
//! The data path never names an OpenTelemetry crate: it fills in
//! [`SpanRecord`]s and hands them to a [`SpanSink`], which the binary
//! implements (batching, OTLP export, the drop counter). With tracing off
//! the [`crate::telemetry::Observer`] holds no [`Tracer`], no span is
//! started, and `traceparent` passes through untouched.
//!
//! Two kinds of span:
//! - [`RequestSpan`]: a server span per request on an HTTP-judged port, at
//!   the destination proxy, child of the caller's `traceparent`. The pod
//!   gets a `traceparent` naming this span as its parent. Refused requests
//!   (400, 403, 429, 501) are recorded too.
//! - [`ConnSpan`]: the tunnel hop of a connection. The source proxy's client
//!   span sends its context on the CONNECT request (`traceparent`, see
//!   docs/identity.md "Tunnel protocol"); the destination proxy's server
//!   span is its child. They show the mesh hop on plain TCP ports too.
//!
//! Sampling is parent-based (OpenTelemetry's `ParentBased(TraceIdRatioBased)`):
//! a caller's sampled flag is followed both ways, and a new trace is sampled
//! when the low 63 bits of its id fall below `ratio` × 2^63. A span sampled
//! out still forwards its context, with the flag off, so later hops agree.

pub mod context;
#[cfg(test)]
mod tests;

use std::{borrow::Cow, sync::Arc, time::SystemTime};

use http::{request::Parts, HeaderMap, Method, StatusCode};

pub use self::context::TraceParent;
use crate::random::random_u64;

/// Longest attribute value taken from a request (its path or host).
pub const MAX_ATTRIBUTE: usize = 1024;

/// Where finished spans go. Implementations must not block: they run on
/// the request path (the binary's queues a span or counts it dropped).
pub trait SpanSink: Send + Sync {
    /// Takes one finished, sampled span.
    fn record(&self, span: SpanRecord);
}

/// OpenTelemetry span kinds the proxy records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// The proxy served a request or accepted a tunnel stream.
    Server,
    /// The proxy opened a tunnel stream to another node.
    Client,
}

/// An attribute value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A string value.
    Str(Cow<'static, str>),
    /// An integer value.
    Int(i64),
}

/// A finished span, as the sink gets it.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRecord {
    /// The trace the span belongs to.
    pub trace_id: [u8; 16],
    /// This span's id.
    pub span_id: [u8; 8],
    /// The parent span, if any, and whether it lives in another process.
    pub parent: Option<([u8; 8], bool)>,
    /// The caller's `tracestate`, as received.
    pub trace_state: Option<String>,
    /// Server or client.
    pub kind: SpanKind,
    /// The span name (the HTTP method, or `tunnel connect|accept`).
    pub name: Cow<'static, str>,
    /// When the span started.
    pub start: SystemTime,
    /// When it was finished.
    pub end: SystemTime,
    /// Attributes, each key at most once.
    pub attributes: Vec<(&'static str, Value)>,
    /// The span failed (OpenTelemetry status `Error`), and why.
    pub error: Option<String>,
}

impl SpanRecord {
    /// The attribute named `key`, if set.
    pub fn attribute(&self, key: &str) -> Option<&Value> {
        self.attributes
            .iter()
            .find_map(|(k, v)| (*k == key).then_some(v))
    }
}

/// Starts spans and decides which are sampled.
pub struct Tracer {
    sink: Arc<dyn SpanSink>,
    /// Fraction of new (root) traces sampled, 0.0–1.0.
    ratio: f64,
}

impl Tracer {
    /// Spans go to `sink`; `ratio` (clamped to 0.0–1.0) of new traces are
    /// sampled, and traces with a parent follow its sampled flag.
    pub fn new(sink: Arc<dyn SpanSink>, ratio: f64) -> Self {
        let ratio = if ratio.is_nan() {
            0.0
        } else {
            ratio.clamp(0.0, 1.0)
        };
        Self { sink, ratio }
    }

    /// A new span's context: a child of `parent`, or the root of a new
    /// trace sampled by ratio.
    fn child_of(&self, parent: Option<&TraceParent>) -> TraceParent {
        let span_id = random_u64().to_be_bytes();
        match parent {
            Some(p) => TraceParent {
                trace_id: p.trace_id,
                span_id,
                flags: 0,
            }
            .with_sampled(p.sampled()),
            None => {
                let mut trace_id = [0u8; 16];
                trace_id[..8].copy_from_slice(&random_u64().to_be_bytes());
                trace_id[8..].copy_from_slice(&random_u64().to_be_bytes());
                let sampled = self.sample_root(&trace_id);
                TraceParent {
                    trace_id,
                    span_id,
                    flags: 0,
                }
                .with_sampled(sampled)
            }
        }
    }

    /// OpenTelemetry's `TraceIdRatioBased`: the low 8 bytes of the id,
    /// shifted to 63 bits, below `ratio` × 2^63.
    fn sample_root(&self, trace_id: &[u8; 16]) -> bool {
        let mut low = [0u8; 8];
        low.copy_from_slice(&trace_id[8..]);
        let bound = (self.ratio * (1u64 << 63) as f64) as u64;
        (u64::from_be_bytes(low) >> 1) < bound
    }
}

/// A span being recorded; what [`RequestSpan`] and [`ConnSpan`] share.
#[derive(Clone)]
struct Open {
    tracer: Arc<Tracer>,
    context: TraceParent,
    parent: Option<TraceParent>,
    trace_state: Option<http::HeaderValue>,
    kind: SpanKind,
    name: Cow<'static, str>,
    start: SystemTime,
    attributes: Vec<(&'static str, Value)>,
    /// Recorded already (or a copy that must never record).
    finished: bool,
}

impl Open {
    fn start(
        tracer: &Arc<Tracer>,
        parent: Option<TraceParent>,
        kind: SpanKind,
        name: Cow<'static, str>,
    ) -> Self {
        Self {
            tracer: tracer.clone(),
            context: tracer.child_of(parent.as_ref()),
            parent,
            trace_state: None,
            kind,
            name,
            start: SystemTime::now(),
            attributes: Vec::new(),
            finished: false,
        }
    }

    /// Sampled and not finished: attributes set now will be exported.
    fn is_recording(&self) -> bool {
        self.context.sampled() && !self.finished
    }

    fn set(&mut self, key: &'static str, value: Value) {
        if !self.is_recording() {
            return;
        }
        match self.attributes.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.attributes.push((key, value)),
        }
    }

    /// Records the span, once.
    fn finish(&mut self, error: Option<String>) {
        if !self.is_recording() {
            return;
        }
        self.finished = true;
        let trace_state = self
            .trace_state
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        self.tracer.sink.record(SpanRecord {
            trace_id: self.context.trace_id,
            span_id: self.context.span_id,
            parent: self.parent.map(|p| (p.span_id, true)),
            trace_state,
            kind: self.kind,
            name: std::mem::take(&mut self.name),
            start: self.start,
            end: SystemTime::now(),
            attributes: std::mem::take(&mut self.attributes),
            error,
        });
    }
}

/// The server span of one HTTP request at the destination proxy. While the
/// request is judged it rides in the request's extensions, so the
/// authorizer can add its decision ([`RequestSpan::authorized`]). Dropped
/// unfinished (an HTTP/2 stream reset mid-request cancels the handler), it
/// records itself with error `cancelled`.
pub struct RequestSpan(Open);

impl Clone for RequestSpan {
    /// A copy carries the context but never records: only the original
    /// ends the span.
    fn clone(&self) -> Self {
        let mut open = self.0.clone();
        open.finished = true;
        Self(open)
    }
}

impl Drop for RequestSpan {
    fn drop(&mut self) {
        self.0.finish(Some("cancelled".to_owned()));
    }
}

impl RequestSpan {
    /// Starts the span of the request in `parts`, as a child of its valid
    /// `traceparent` or as a new trace (a malformed one is ignored, and
    /// its `tracestate` with it, as the spec asks).
    pub fn start(tracer: &Arc<Tracer>, parts: &Parts) -> Self {
        let parent = TraceParent::from_headers(&parts.headers);
        let method = method_label(&parts.method);
        let name = match method {
            "_OTHER" => Cow::Borrowed("HTTP"),
            m => Cow::Owned(m.to_owned()),
        };
        let mut open = Open::start(tracer, parent, SpanKind::Server, name);
        if parent.is_some() {
            open.trace_state = context::tracestate(&parts.headers);
        }
        open.set("http.request.method", Value::Str(Cow::Owned(method.into())));
        open.set("url.path", bounded(parts.uri.path()));
        open.set("url.scheme", Value::Str(Cow::Borrowed("http")));
        let version = match parts.version {
            http::Version::HTTP_2 => "2",
            http::Version::HTTP_10 => "1.0",
            _ => "1.1",
        };
        open.set(
            "network.protocol.version",
            Value::Str(Cow::Borrowed(version)),
        );
        Self(open)
    }

    /// The context the pod gets: this span as parent.
    pub fn context(&self) -> TraceParent {
        self.0.context
    }

    /// Whether the span will be exported: callers skip building
    /// attributes for one that will not.
    pub fn is_recording(&self) -> bool {
        self.0.is_recording()
    }

    /// Replaces the request's `traceparent` with this span's, and its
    /// `tracestate` with the one received (dropped if it was malformed or
    /// came without a valid `traceparent`).
    pub fn inject(&self, headers: &mut HeaderMap) {
        headers.insert(context::TRACEPARENT, self.0.context.to_header());
        match &self.0.trace_state {
            Some(state) => {
                headers.insert(context::TRACESTATE, state.clone());
            }
            None => {
                headers.remove(context::TRACESTATE);
            }
        }
    }

    /// How the request was judged: the caller, the destination, and the
    /// authorization decision with its deciding policy (`default` when
    /// none matched).
    pub fn authorized(
        &mut self,
        principal: Option<&str>,
        destination: &str,
        port: u16,
        allow: bool,
        policy: Option<String>,
    ) {
        let o = &mut self.0;
        let owned = |s: &str| Value::Str(Cow::Owned(s.to_owned()));
        if let Some(p) = principal {
            o.set("nodeward.source.principal", owned(p));
        }
        o.set("nodeward.destination.workload", owned(destination));
        o.set("server.port", Value::Int(i64::from(port)));
        let decision = if allow { "allow" } else { "deny" };
        o.set(
            "nodeward.authz.decision",
            Value::Str(Cow::Borrowed(decision)),
        );
        let policy = policy.map_or(Cow::Borrowed("default"), Cow::Owned);
        o.set("nodeward.authz.policy", Value::Str(policy));
    }

    /// The judged host (`server.address`).
    pub fn host(&mut self, host: &str) {
        if !host.is_empty() {
            self.0.set("server.address", bounded(host));
        }
    }

    /// The request's token was refused (`401`): why, as the
    /// `nodeward_jwt_validations_total` result says it (`expired`, …).
    pub fn jwt_refused(&mut self, result: &'static str) {
        self.0
            .set("nodeward.jwt.result", Value::Str(Cow::Borrowed(result)));
    }

    /// A rate limit applied: its outcome and, when one limited, the policy.
    pub fn rate_limited(&mut self, outcome: &'static str, policy: Option<String>) {
        self.0.set(
            "nodeward.ratelimit.outcome",
            Value::Str(Cow::Borrowed(outcome)),
        );
        if let Some(p) = policy {
            self.0
                .set("nodeward.ratelimit.policy", Value::Str(Cow::Owned(p)));
        }
    }

    /// Records the span with the response status; 5xx is an error (the
    /// semantic conventions for server spans).
    pub fn finish(mut self, status: StatusCode) {
        let code = i64::from(status.as_u16());
        self.0.set("http.response.status_code", Value::Int(code));
        let error = status
            .is_server_error()
            .then(|| status.as_u16().to_string());
        if let Some(e) = &error {
            self.0.set("error.type", Value::Str(Cow::Owned(e.clone())));
        }
        self.0.finish(error);
    }
}

/// One side of a connection's tunnel hop.
pub struct ConnSpan(Open);

impl ConnSpan {
    /// The source proxy's client span: a new trace, sampled by ratio.
    pub fn client(tracer: &Arc<Tracer>) -> Self {
        Self(Open::start(
            tracer,
            None,
            SpanKind::Client,
            Cow::Borrowed("tunnel connect"),
        ))
    }

    /// The destination proxy's server span, a child of the CONNECT
    /// request's `traceparent` (a new trace without a valid one).
    pub fn server(tracer: &Arc<Tracer>, connect: &HeaderMap) -> Self {
        let parent = TraceParent::from_headers(connect);
        Self(Open::start(
            tracer,
            parent,
            SpanKind::Server,
            Cow::Borrowed("tunnel accept"),
        ))
    }

    /// The context the next hop gets.
    pub fn context(&self) -> TraceParent {
        self.0.context
    }

    /// Whether the span will be exported: callers skip building
    /// attributes for one that will not.
    pub fn is_recording(&self) -> bool {
        self.0.is_recording()
    }

    /// Sets a string attribute (only values the proxy vouches for: see the
    /// telemetry module's rule on label values).
    pub fn set_str(&mut self, key: &'static str, value: &str) {
        self.0.set(key, Value::Str(Cow::Owned(value.to_owned())));
    }

    /// Sets an integer attribute.
    pub fn set_int(&mut self, key: &'static str, value: i64) {
        self.0.set(key, Value::Int(value));
    }

    /// Records the span; `error` (already free of peer bytes) marks it failed.
    pub fn finish(mut self, error: Option<&str>) {
        self.0.finish(error.map(str::to_owned));
    }
}

/// The method as the semantic conventions want it: one of the known
/// methods, or `_OTHER` (an arbitrary token would be unbounded).
fn method_label(method: &Method) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    KNOWN
        .into_iter()
        .find(|m| *m == method.as_str())
        .unwrap_or("_OTHER")
}

/// A request-supplied string, cut to [`MAX_ATTRIBUTE`] bytes on a
/// character boundary.
fn bounded(s: &str) -> Value {
    let mut end = s.len().min(MAX_ATTRIBUTE);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Value::Str(Cow::Owned(s[..end].to_owned()))
}
