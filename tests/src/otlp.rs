//! A real OTLP receiver for the tracing tests and the bench: one port
//! serving both OTLP/HTTP (`POST /v1/traces`, protobuf) and OTLP/gRPC
//! (`TraceService/Export` over HTTP/2 without TLS), decoding every export
//! with the OpenTelemetry project's protobuf types.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::{body::Incoming, service::service_fn, Request, Response, StatusCode};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{any_value, AnyValue},
    trace::v1::Span,
};
use prost::Message;
use tokio::net::TcpListener;

use crate::{
    cluster::{node_index, Cluster},
    netns,
};

/// Where the test cluster's receiver listens: node-a's link address.
pub const COLLECTOR_NODE: &str = "node-a";
/// The receiver's port (OTLP/HTTP's standard one; gRPC is served there too).
pub const COLLECTOR_PORT: u16 = 4318;

const GRPC_EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// One span as received.
#[derive(Debug, Clone)]
pub struct Received {
    /// `http/protobuf` or `grpc`.
    pub protocol: &'static str,
    /// The resource's `service.name`.
    pub service: String,
    pub span: Span,
}

impl Received {
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    /// The parent span id, empty for a root.
    pub fn parent(&self) -> String {
        hex(&self.span.parent_span_id)
    }

    /// A string attribute.
    pub fn str(&self, key: &str) -> Option<String> {
        match self.value(key)? {
            any_value::Value::StringValue(s) => Some(s.clone()),
            _ => None,
        }
    }

    /// An integer attribute.
    pub fn int(&self, key: &str) -> Option<i64> {
        match self.value(key)? {
            any_value::Value::IntValue(i) => Some(*i),
            _ => None,
        }
    }

    fn value(&self, key: &str) -> Option<&any_value::Value> {
        self.span
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.as_ref())
    }
}

/// Lower-case hex, as in `traceparent`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

type Store = Arc<Mutex<Vec<Received>>>;

/// A running receiver with a runtime of its own (the cluster harness is
/// synchronous); dropping it (its runtime) stops it.
pub struct Collector {
    /// Owns the server task: dropped with the collector, it stops it.
    _runtime: tokio::runtime::Runtime,
    addr: SocketAddr,
    spans: Store,
    requests: Arc<Mutex<u64>>,
}

impl Collector {
    /// Serves on `addr` after `enter` moved the binding thread into the
    /// wanted network namespace.
    pub fn start_in(
        enter: impl FnOnce() -> Result<()> + Send + 'static,
        addr: SocketAddr,
    ) -> Result<Self> {
        let listener = std::thread::spawn(move || -> Result<std::net::TcpListener> {
            enter()?;
            let l = std::net::TcpListener::bind(addr).context("binding the OTLP receiver")?;
            l.set_nonblocking(true)?;
            Ok(l)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the binding thread panicked"))??;
        Self::serve(listener)
    }

    /// Serves on a free port of 127.0.0.1 in this thread's namespace.
    pub fn start_local() -> Result<Self> {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.set_nonblocking(true)?;
        Self::serve(l)
    }

    fn serve(listener: std::net::TcpListener) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let addr = listener.local_addr()?;
        let spans = Store::default();
        let requests = Arc::new(Mutex::new(0));
        let (store, count) = (spans.clone(), requests.clone());
        runtime.spawn(async move {
            let Ok(listener) = TcpListener::from_std(listener) else {
                return;
            };
            while let Ok((stream, _)) = listener.accept().await {
                let (store, count) = (store.clone(), count.clone());
                let service = service_fn(move |req| receive(req, store.clone(), count.clone()));
                tokio::spawn(async move {
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self {
            _runtime: runtime,
            addr,
            spans,
            requests,
        })
    }

    /// Where it listens: the base URL is `http://{addr}`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Received> {
        self.spans.lock().expect("spans").clone()
    }

    /// Export requests received so far.
    pub fn requests(&self) -> u64 {
        *self.requests.lock().expect("requests")
    }

    /// Waits up to `limit` until `done` holds for the spans received; the
    /// spans either way.
    pub fn wait_for(&self, limit: Duration, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + limit;
        loop {
            let spans = self.spans();
            if done(&spans) || Instant::now() > deadline {
                return spans;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

type Body = BoxBody<Bytes, Infallible>;

async fn receive(
    req: Request<Incoming>,
    store: Store,
    count: Arc<Mutex<u64>>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let Ok(body) = req.into_body().collect().await.map(|b| b.to_bytes()) else {
        return Ok(status(StatusCode::BAD_REQUEST));
    };
    let (protocol, message) = match path.as_str() {
        "/v1/traces" => ("http/protobuf", body),
        GRPC_EXPORT if body.len() >= 5 && body[0] == 0 => ("grpc", body.slice(5..)),
        _ => return Ok(status(StatusCode::NOT_FOUND)),
    };
    let Ok(request) = ExportTraceServiceRequest::decode(message) else {
        return Ok(status(StatusCode::BAD_REQUEST));
    };
    *count.lock().expect("count") += 1;
    store
        .lock()
        .expect("spans")
        .extend(spans(protocol, request));
    Ok(if protocol == "grpc" {
        grpc_ok()
    } else {
        let mut ok = Response::new(Full::new(Bytes::new()).boxed());
        ok.headers_mut().insert(
            "content-type",
            hyper::header::HeaderValue::from_static("application/x-protobuf"),
        );
        ok
    })
}

fn spans(protocol: &'static str, request: ExportTraceServiceRequest) -> Vec<Received> {
    let mut out = Vec::new();
    for rs in request.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| match kv.value.as_ref() {
                Some(AnyValue {
                    value: Some(any_value::Value::StringValue(s)),
                }) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
            out.push(Received {
                protocol,
                service: service.clone(),
                span,
            });
        }
    }
    out
}

/// An empty `ExportTraceServiceResponse`, gRPC-framed, with `grpc-status: 0`.
fn grpc_ok() -> Response<Body> {
    let mut trailers = hyper::HeaderMap::new();
    trailers.insert("grpc-status", hyper::header::HeaderValue::from_static("0"));
    let body = Full::new(Bytes::from_static(&[0, 0, 0, 0, 0]))
        .with_trailers(async move { Some(Ok(trailers)) })
        .boxed();
    let mut response = Response::new(body);
    response.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/grpc"),
    );
    response
}

fn status(code: StatusCode) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::new()).boxed());
    *r.status_mut() = code;
    r
}

/// The receiver's address in a test cluster: every proxy reaches it.
pub fn collector_addr() -> SocketAddr {
    let ip = std::net::Ipv4Addr::new(10, 99, 0, node_index(COLLECTOR_NODE));
    SocketAddr::new(ip.into(), COLLECTOR_PORT)
}

/// The `tracing:` section (YAML flow mapping) of a cluster whose proxies
/// export to `endpoint` over `protocol`, sampling `ratio` of new traces.
pub fn tracing_config(endpoint: SocketAddr, protocol: &str, ratio: f64) -> String {
    format!("{{otlp: {{endpoint: 'http://{endpoint}', protocol: {protocol}}}, sampling: {ratio}, serviceName: nodeward-test}}")
}

impl Cluster {
    /// Starts the receiver at [`collector_addr`], in node-a's netns.
    pub fn start_collector(&self) -> Collector {
        let ns = self.ns(COLLECTOR_NODE);
        Collector::start_in(move || netns::enter_netns(&ns), collector_addr())
            .unwrap_or_else(|e| panic!("starting the OTLP receiver: {e:#}"))
    }
}
