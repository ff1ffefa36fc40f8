//! The admin endpoint: `/metrics`, `/healthz`, `/ready`, `/config_dump`,
//! `/logging`, `/flows` and `/flows.json`.
//!
//! It binds to the configured admin address (loopback by default) so pods
//! cannot reach it. Bound to the node network (for `flows.peers`), it
//! still answers a caller that is not loopback only `GET /flows.json` (not
//! the cluster view), and only from a configured peer's IP: everything
//! else is 403, and other callers are closed before they take a connection
//! slot. A `Host` that is neither an IP literal nor `localhost` is 403
//! too, so a DNS-rebound page cannot read or drive it from a browser on
//! the node. Input is still treated as hostile: only `GET`, small
//! request heads, a deadline for each head, a cap on connections and on
//! each connection's lifetime. Every JSON body is built by `serde_json`.
//!
//! | path           | answer                                                    |
//! |----------------|-----------------------------------------------------------|
//! | `/metrics`     | Prometheus text                                           |
//! | `/healthz`     | 200 `ok` while the process runs                           |
//! | `/ready`       | 200 `ready`, or 503 with the unmet conditions as JSON     |
//! | `/config_dump` | JSON: node, workloads, policies, identities (no keys)     |
//! | `/logging`     | the log filter; `?level=<EnvFilter directives>` sets it   |
//! | `/flows.json`  | the flow map (docs/flows.md); `?since=`, `?cluster=1`     |
//! | `/flows`       | the flow map as a page (HTML, script inline, no CDN)      |

use std::{
    convert::Infallible,
    net::IpAddr,
    pin::pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use http_body_util::Full;
use hyper::{
    body::Bytes,
    header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE, HOST},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{watch, Semaphore},
};

use nodeward_identity::CertStore;
use nodeward_policy::MtlsMode;
use nodeward_proxy::{
    authz::Authz,
    flows::{now_millis, FlowMap},
};
use nodeward_workloads::{local_identities, Registry};

use crate::{
    flows::{self, FlowsReport, Query},
    metrics::Metrics,
};

mod dump;
mod logging;
#[cfg(test)]
mod tests;

pub use logging::{LogControl, LogError};

/// Admin connections served at once; more are closed on accept.
pub const MAX_CONNECTIONS: usize = 32;
/// Time a client has to send a request head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Read buffer cap, which bounds a request head (hyper's minimum is 8 KiB).
pub const MAX_REQUEST_HEAD: usize = 16 * 1024;
/// Request header fields accepted.
pub const MAX_HEADERS: usize = 32;
/// After this long a connection is closed once its current request is
/// answered, so no client holds a slot for ever.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Everything the admin endpoint reports on.
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    pub registry: Arc<ArcSwap<Registry>>,
    pub certs: Arc<CertStore>,
    pub authz: Arc<Authz>,
    /// This node's name, as in the workloads file.
    pub node: String,
    /// The configured default inbound mTLS mode.
    pub mtls: MtlsMode,
    /// Run-time control of the log filter; `None` when the process did not
    /// install a reloadable filter (then `/logging` answers 501).
    pub log: Option<LogControl>,
    /// The flow map; `None` when switched off (`/flows.json` is then 404).
    pub flows: Option<Arc<FlowMap>>,
    /// Other nodes' admin addresses, merged by `/flows.json?cluster=1`.
    pub flow_peers: Vec<std::net::SocketAddr>,
}

/// Readiness the rest of the proxy reports. The other conditions of
/// `/ready` are read from the state itself when asked: a certificate for
/// every local identity (from the registry and the certificate store), and
/// a valid policy set in force (from the enforcement point).
#[derive(Debug, Default)]
pub struct Readiness {
    bpf_attached: AtomicBool,
    draining: AtomicBool,
    /// Kubernetes watch health, with `discovery: kubernetes`.
    discovery: std::sync::OnceLock<Arc<nodeward_kube::Status>>,
}

/// The conditions of `/ready`, as its 503 body lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadyReport {
    pub ready: bool,
    /// The kernel programs are attached (pods' connections reach the proxy).
    pub bpf_attached: bool,
    /// Every local workload identity holds an unexpired certificate.
    pub certificates: bool,
    /// A valid policy set is in force (not the fail-closed deny-all).
    pub policy_loaded: bool,
    /// The proxy is stopping (or handing over): never ready again.
    pub draining: bool,
    /// With `discovery: kubernetes`: every watched kind has been listed
    /// completely once (absent with the workloads file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discovery_synced: Option<bool>,
}

impl Readiness {
    /// Nothing attached yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records whether the BPF programs are attached: true once attached,
    /// false again when they are detached at stop.
    pub fn set_bpf_attached(&self, attached: bool) {
        self.bpf_attached.store(attached, Ordering::Release);
    }

    /// Whether the BPF programs are attached.
    pub fn bpf_attached(&self) -> bool {
        self.bpf_attached.load(Ordering::Acquire)
    }

    /// Records that the proxy is stopping: `/ready` fails from now on.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether the proxy is stopping.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Makes `/ready` wait for the Kubernetes watches' first complete list
    /// and report when they go stale.
    pub fn set_discovery(&self, status: Arc<nodeward_kube::Status>) {
        let _ = self.discovery.set(status);
    }

    /// The Kubernetes watch health, with `discovery: kubernetes`.
    pub fn discovery(&self) -> Option<&nodeward_kube::Status> {
        self.discovery.get().map(Arc::as_ref)
    }
}

impl AdminState {
    /// Evaluates every readiness condition now.
    pub fn ready(&self) -> ReadyReport {
        let bpf_attached = self.readiness.bpf_attached();
        let certificates = self.certificates_ready(SystemTime::now());
        let policy_loaded = !self.authz.policies().summary().fail_closed;
        let draining = self.readiness.draining();
        let discovery_synced = self.readiness.discovery().map(|d| d.synced());
        ReadyReport {
            ready: bpf_attached
                && certificates
                && policy_loaded
                && !draining
                && discovery_synced != Some(false),
            bpf_attached,
            certificates,
            policy_loaded,
            draining,
            discovery_synced,
        }
    }

    /// Whether every identity of the local workloads holds a certificate
    /// that has not expired at `now`.
    fn certificates_ready(&self, now: SystemTime) -> bool {
        let trust_domain = self.certs.ca().trust_domain();
        local_identities(&self.registry.load(), &self.node, trust_domain)
            .iter()
            .all(|id| self.certs.get(id).is_some_and(|c| c.svid.not_after > now))
    }
}

/// Serves admin requests until `shutdown` flips to true.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, caller) = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, a)) => (s, a.ip().to_canonical()),
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let remote = !caller.is_loopback();
        if remote && !state.is_peer(caller) {
            // Not ours to answer: closed before it can take a slot.
            tracing::debug!(%caller, "admin connection from a caller not in flows.peers; closing");
            continue;
        }
        // Over the cap the connection is dropped (closed) unanswered.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!("admin connection limit reached; closing a new connection");
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            connection(stream, state, remote).await;
            drop(slot);
        });
    }
}

/// Serves one connection until the client closes it, a limit is hit, or
/// [`CONNECTION_LIFETIME`] passes (then after the request in flight).
/// A `remote` (not loopback) caller gets [`remote_allowed`] requests only.
async fn connection(stream: TcpStream, state: Arc<AdminState>, remote: bool) {
    let svc = service_fn(move |req| {
        let state = state.clone();
        async move {
            if !host_allowed(&req) || (remote && !remote_allowed(&req)) {
                return Ok(text(StatusCode::FORBIDDEN, "forbidden\n"));
            }
            let resp = match cluster_query(&state, &req) {
                Some(q) => cluster_flows(&state, q).await,
                None => handle(&state, &req),
            };
            Ok::<_, Infallible>(resp)
        }
    });
    let mut conn = pin!(http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_REQUEST_HEAD)
        .max_headers(MAX_HEADERS)
        .serve_connection(TokioIo::new(stream), svc));
    let served = tokio::select! {
        r = conn.as_mut() => r,
        _ = tokio::time::sleep(CONNECTION_LIFETIME) => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(HEADER_READ_TIMEOUT, conn.as_mut()).await {
                Ok(r) => r,
                Err(_) => Ok(()),
            }
        }
    };
    if let Err(e) = served {
        tracing::debug!(error = %e, "admin connection ended");
    }
}

impl AdminState {
    /// Whether `ip` is the address of a node in `flows.peers`.
    fn is_peer(&self, ip: IpAddr) -> bool {
        self.flow_peers.iter().any(|p| p.ip().to_canonical() == ip)
    }
}

/// What a peer (a caller that is not loopback) may ask: its own node's
/// `GET /flows.json`, never the cluster view (no fan-out on its behalf).
fn remote_allowed<B>(req: &Request<B>) -> bool {
    req.method() == Method::GET
        && req.uri().path() == "/flows.json"
        && Query::parse(req.uri().query()).is_ok_and(|q| !q.cluster)
}

/// A `Host` header, if any, names an IP literal or `localhost` (with or
/// without a port): a DNS name would be a rebound browser page.
fn host_allowed<B>(req: &Request<B>) -> bool {
    let Some(host) = req.headers().get(HOST) else {
        return true;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split_once(']').map_or("", |(ip, _)| ip),
        None => host.split_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok()
}

/// Routes one request. Unknown paths are 404 whatever the method; known
/// ones answer only `GET`.
fn handle<B>(state: &AdminState, req: &Request<B>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if !matches!(
        path,
        "/metrics" | "/healthz" | "/ready" | "/config_dump" | "/logging" | "/flows" | "/flows.json"
    ) {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    // Changing the log level is a POST, so a GET (a browser on the node,
    // a DNS-rebound page) can only read.
    let logging = path == "/logging";
    let allowed = req.method() == Method::GET || (logging && req.method() == Method::POST);
    if !allowed {
        let allow = if logging { "GET, POST" } else { "GET" };
        let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, format!("only {allow}\n"));
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static(allow));
        return resp;
    }
    if logging && req.method() == Method::GET && req.uri().query().is_some() {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "use POST /logging?level=... to change the log level\n",
        );
    }
    match path {
        "/metrics" => with_type(
            StatusCode::OK,
            state.metrics.render(),
            prometheus::TEXT_FORMAT,
        ),
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/flows" => page(),
        "/flows.json" => flows_json(state, req.uri().query()),
        "/ready" => ready(state),
        "/config_dump" => json(
            StatusCode::OK,
            &dump::ConfigDump::of(state, SystemTime::now()),
        ),
        _ => logging::handle(state.log.as_ref(), req.uri().query()),
    }
}

/// The `/flows` page. Its script and style are inline and it fetches only
/// `flows.json` from this origin, so the policy forbids everything else.
fn page() -> Response<Full<Bytes>> {
    let mut resp = with_type(
        StatusCode::OK,
        flows::PAGE.to_owned(),
        "text/html; charset=utf-8",
    );
    resp.headers_mut().insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'",
        ),
    );
    resp
}

/// This node's flow report for `query`, or the error status and text.
fn own_flows(
    state: &AdminState,
    query: Option<&str>,
) -> Result<(FlowsReport, Query), (StatusCode, String)> {
    let q = Query::parse(query).map_err(|e| (StatusCode::BAD_REQUEST, format!("{e}\n")))?;
    let Some(map) = &state.flows else {
        let off = "the flow map is off (flows.enabled: false)\n";
        return Err((StatusCode::NOT_FOUND, off.to_owned()));
    };
    let report = FlowsReport::of(&state.node, q.window, map.snapshot(q.window), now_millis());
    Ok((report, q))
}

fn flows_json(state: &AdminState, query: Option<&str>) -> Response<Full<Bytes>> {
    match own_flows(state, query) {
        Ok((report, _)) => json(StatusCode::OK, &report),
        Err((status, why)) => text(status, why),
    }
}

/// `GET /flows.json?cluster=1…`: the one admin request that waits on the
/// network (the configured peers), so it is routed before [`handle`].
fn cluster_query<B>(state: &AdminState, req: &Request<B>) -> Option<Option<String>> {
    let wanted = req.method() == Method::GET
        && req.uri().path() == "/flows.json"
        && Query::parse(req.uri().query()).is_ok_and(|q| q.cluster);
    (wanted && !state.flow_peers.is_empty()).then(|| req.uri().query().map(str::to_owned))
}

async fn cluster_flows(state: &AdminState, query: Option<String>) -> Response<Full<Bytes>> {
    match own_flows(state, query.as_deref()) {
        Ok((own, q)) => json(
            StatusCode::OK,
            &flows::cluster(own, &state.flow_peers, q.window).await,
        ),
        Err((status, why)) => text(status, why),
    }
}

fn ready(state: &AdminState) -> Response<Full<Bytes>> {
    let report = state.ready();
    let stale = state.readiness.discovery().and_then(|d| d.stale());
    if let (true, Some((since, kinds))) = (report.ready, stale) {
        // Still serving on the last known state: ready, but say so.
        let kinds: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
        text(
            StatusCode::OK,
            format!(
                "ready\ndiscovery stale since {} (failing: {})\n",
                rfc3339(since),
                kinds.join(", ")
            ),
        )
    } else if report.ready {
        text(StatusCode::OK, "ready\n")
    } else {
        json(StatusCode::SERVICE_UNAVAILABLE, &report)
    }
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "an unknown time".into())
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    with_type(status, body.into(), "text/plain; charset=utf-8")
}

fn json(status: StatusCode, value: &impl Serialize) -> Response<Full<Bytes>> {
    match serde_json::to_string_pretty(value) {
        Ok(mut body) => {
            body.push('\n');
            with_type(status, body, "application/json")
        }
        Err(e) => {
            tracing::warn!(error = %e, "encoding an admin response");
            text(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n")
        }
    }
}

fn with_type(
    status: StatusCode,
    body: String,
    content_type: &'static str,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    resp
}
