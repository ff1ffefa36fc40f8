//! A Kubernetes API server for tests: the list/watch protocol for Pods,
//! Namespaces, Services, EndpointSlices and Nodes, as the real one speaks
//! it, over HTTPS with a self-signed CA and a bearer token.
//!
//! - objects are JSON with `metadata.resourceVersion` from one cluster-wide
//!   counter (etcd's revision);
//! - lists honour `limit` and `continue` (chunked lists) and carry the
//!   list's `resourceVersion`;
//! - `?watch=true&resourceVersion=N&allowWatchBookmarks=true` replays the
//!   events after N, then streams new ones, with BOOKMARK events;
//! - a watch from a revision older than the last compaction gets an ERROR
//!   event with a `410 Gone` Status, as after etcd compacts.
//!
//! The state lives in [`ApiState`] and outlives [`ApiServer::stop`], so a
//! test can kill the server and start a new one on the same port, as an
//! API server restart looks to its clients.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::Path,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    body::{Body, Frame, Incoming},
    Request, Response, StatusCode,
};
use serde_json::{json, Value};
use tokio::{
    net::TcpListener,
    sync::{broadcast, mpsc},
    task::JoinHandle,
};

/// The token clients must present.
pub const TOKEN: &str = "nodeward-test-token";
/// Interval between BOOKMARK events on an idle watch.
const BOOKMARK_EVERY: Duration = Duration::from_millis(500);

/// The resource kinds served, by URL path.
const KINDS: [(&str, &str, &str); 5] = [
    ("/api/v1/pods", "Pod", "v1"),
    ("/api/v1/namespaces", "Namespace", "v1"),
    ("/api/v1/services", "Service", "v1"),
    ("/api/v1/nodes", "Node", "v1"),
    (
        "/apis/discovery.k8s.io/v1/endpointslices",
        "EndpointSlice",
        "discovery.k8s.io/v1",
    ),
];

/// One change, as a watch reports it.
#[derive(Debug, Clone)]
struct Change {
    revision: u64,
    kind: String,
    kind_event: &'static str,
    object: Value,
}

/// The cluster's objects and history.
#[derive(Default)]
struct Store {
    revision: u64,
    /// Events at or below this revision are gone (compacted): older watches get 410.
    compacted: u64,
    /// (kind, namespace, name) -> object.
    objects: BTreeMap<(String, String, String), Value>,
    history: Vec<Change>,
}

/// The API server's state, shared by every incarnation of the server.
#[derive(Clone)]
pub struct ApiState {
    store: Arc<Mutex<Store>>,
    changes: broadcast::Sender<Change>,
    /// Watches end when this fires (a forced cut).
    cut: broadcast::Sender<()>,
    /// `410 Gone` ERROR events sent.
    gone: Arc<std::sync::atomic::AtomicUsize>,
    /// (kind, verb) pairs refused with `403 Forbidden`, as RBAC refuses a
    /// service account a verb on a resource.
    forbidden: Arc<Mutex<BTreeSet<(String, &'static str)>>>,
    /// Kinds whose lists and watches are answered `200` with a body that
    /// is not JSON (a broken proxy in front of the server, a cut response).
    garbled: Arc<Mutex<BTreeSet<String>>>,
}

impl Default for ApiState {
    fn default() -> Self {
        Self {
            store: Arc::default(),
            changes: broadcast::channel(4096).0,
            cut: broadcast::channel(16).0,
            gone: Arc::default(),
            forbidden: Arc::default(),
            garbled: Arc::default(),
        }
    }
}

impl ApiState {
    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Refuses `verbs` (`list`, `watch`) on `kind` (`Pod`,
    /// `EndpointSlice`, ...) from now on, and serves its other verbs
    /// again. Watches already open are not cut.
    pub fn forbid(&self, kind: &str, verbs: &[&'static str]) {
        let mut set = self.forbidden.lock().unwrap_or_else(|e| e.into_inner());
        set.retain(|(k, _)| k != kind);
        set.extend(verbs.iter().map(|&v| (kind.to_owned(), v)));
    }

    /// Answers (or stops answering) every list and watch of `kind` with
    /// bytes that are not JSON.
    pub fn garble(&self, kind: &str, garbled: bool) {
        let mut set = self.garbled.lock().unwrap_or_else(|e| e.into_inner());
        if garbled {
            set.insert(kind.to_owned());
        } else {
            set.remove(kind);
        }
    }

    fn is_garbled(&self, kind: &str) -> bool {
        let set = self.garbled.lock().unwrap_or_else(|e| e.into_inner());
        set.contains(kind)
    }

    fn is_forbidden(&self, kind: &str, verb: &str) -> bool {
        let set = self.forbidden.lock().unwrap_or_else(|e| e.into_inner());
        set.iter().any(|(k, v)| k == kind && *v == verb)
    }

    /// Creates or replaces `object` (it names its kind, namespace and name).
    pub fn apply(&self, mut object: Value) {
        let key = key(&object);
        let mut store = self.store();
        store.revision += 1;
        let revision = store.revision;
        object["metadata"]["resourceVersion"] = json!(revision.to_string());
        let existed = store.objects.insert(key.clone(), object.clone()).is_some();
        let change = Change {
            revision,
            kind: key.0,
            kind_event: if existed { "MODIFIED" } else { "ADDED" },
            object,
        };
        store.history.push(change.clone());
        let _ = self.changes.send(change);
    }

    /// Every object of a YAML file shaped like `kubectl get -o yaml` (a
    /// `List` or a single object).
    pub fn apply_yaml_file(&self, path: &Path) -> Result<()> {
        let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
        let value: Value =
            serde_norway::from_str(&text).with_context(|| path.display().to_string())?;
        match value["items"].as_array() {
            Some(items) => items.iter().cloned().for_each(|o| self.apply(o)),
            None => self.apply(value),
        }
        Ok(())
    }

    /// The stored object, to change and apply again.
    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let k = (kind.to_owned(), namespace.to_owned(), name.to_owned());
        self.store().objects.get(&k).cloned()
    }

    /// Deletes an object (a DELETED event with its last state).
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) {
        let k = (kind.to_owned(), namespace.to_owned(), name.to_owned());
        let mut store = self.store();
        let Some(mut object) = store.objects.remove(&k) else {
            return;
        };
        store.revision += 1;
        let revision = store.revision;
        object["metadata"]["resourceVersion"] = json!(revision.to_string());
        let change = Change {
            revision,
            kind: k.0,
            kind_event: "DELETED",
            object,
        };
        store.history.push(change.clone());
        let _ = self.changes.send(change);
    }

    /// How many watches were answered `410 Gone`.
    pub fn gone_sent(&self) -> usize {
        self.gone.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stores `object` without telling any watch, moves the revision on
    /// and compacts the history up to it (as etcd does), then cuts every
    /// watch: every client's last revision is now too old, so its resume
    /// gets `410 Gone`, and only a new list shows it `object`.
    pub fn compact_and_cut_with(&self, mut object: Value) {
        {
            let mut store = self.store();
            store.revision += 1;
            object["metadata"]["resourceVersion"] = json!(store.revision.to_string());
            store.objects.insert(key(&object), object);
            store.revision += 1;
            store.compacted = store.revision;
            store.history.clear();
        }
        let _ = self.cut.send(());
    }
}

/// A running API server; dropping it (or [`ApiServer::stop`]) kills it.
pub struct ApiServer {
    pub addr: SocketAddr,
    pub state: ApiState,
    ca_pem: String,
    task: JoinHandle<()>,
}

/// The server's certificate authority and its serving certificate.
struct Tls {
    ca_pem: String,
    config: Arc<rustls::ServerConfig>,
}

impl ApiServer {
    /// Starts a server for `state` on `addr` (port 0: any free port).
    pub async fn start(addr: SocketAddr, state: ApiState) -> Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .context("binding the API server")?;
        Self::serve(listener, state)
    }

    /// Serves `state` on a bound listener (one bound in another network
    /// namespace keeps living there). Needs a tokio runtime.
    pub fn serve(listener: TcpListener, state: ApiState) -> Result<Self> {
        let addr = listener.local_addr()?;
        let tls = tls(addr)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.config);
        let serving = state.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let state = serving.clone();
                conns.spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, std::convert::Infallible>(handle(&state, req)) }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            state,
            ca_pem: tls.ca_pem,
            task,
        })
    }

    /// A kubeconfig for this server (with its CA and the bearer token).
    pub fn kubeconfig(&self) -> String {
        use base64_lite::encode;
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: https://{}\n    certificate-authority-data: {}\nusers:\n- name: nodeward\n  user:\n    token: {TOKEN}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: nodeward\ncurrent-context: test\n",
            self.addr,
            encode(self.ca_pem.as_bytes()),
        )
    }

    /// Kills the server: every connection, watches included, is cut, and
    /// the port is free again.
    pub async fn stop(mut self) -> ApiState {
        self.task.abort();
        let _ = (&mut self.task).await;
        self.state.clone()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A serving certificate for `addr`'s IP, signed by one self-signed CA per
/// process, so a restarted server is trusted by the kubeconfig of the
/// first.
fn tls(addr: SocketAddr) -> Result<Tls> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
    static CA: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
    let (ca_pem, ca_key_pem) = CA.get_or_init(|| {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("CA cert");
        (cert.pem(), key.serialize_pem())
    });
    let ca_key = KeyPair::from_pem(ca_key_pem)?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(ca_pem, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names = vec![SanType::IpAddress(addr.ip())];
    let cert = params.signed_by(&key, &issuer)?;
    let chain = vec![rustls::pki_types::CertificateDer::from(cert.der().to_vec())];
    let key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der())
        .map_err(|e| anyhow::anyhow!("server key: {e}"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Tls {
        ca_pem: ca_pem.clone(),
        config: Arc::new(config),
    })
}

type Resp = Response<ApiBody>;

fn handle(state: &ApiState, req: Request<Incoming>) -> Resp {
    let authorized = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == format!("Bearer {TOKEN}").as_bytes());
    if !authorized {
        return status(StatusCode::UNAUTHORIZED, "Unauthorized", "no valid token");
    }
    let path = req.uri().path();
    if path == "/version" {
        return json_response(
            StatusCode::OK,
            &json!({"major": "1", "minor": "35", "gitVersion": "v1.35.0-nodeward-test"}),
        );
    }
    let Some((_, kind, api_version)) = KINDS.iter().find(|(p, _, _)| *p == path) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        );
    };
    let query = parse_query(req.uri().query().unwrap_or(""));
    let watching = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    let verb = if watching { "watch" } else { "list" };
    if state.is_forbidden(kind, verb) {
        return forbidden(path, verb);
    }
    if state.is_garbled(kind) {
        let garbage = Bytes::from_static(b"{\"kind\": \x00\xff<html>");
        let mut resp = Response::new(ApiBody::Full(Full::new(garbage)));
        resp.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        return resp;
    }
    if watching {
        watch(state, kind, &query)
    } else {
        list(state, kind, api_version, &query)
    }
}

/// A list, in chunks of `limit` with a `continue` token (the revision the
/// list was taken at and the next index), as the API server pages lists.
fn list(state: &ApiState, kind: &str, api_version: &str, query: &BTreeMap<String, String>) -> Resp {
    let store = state.store();
    let (revision, start) = match query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => match token
            .split_once(':')
            .and_then(|(r, i)| Some((r.parse().ok()?, i.parse().ok()?)))
        {
            Some(t) => t,
            None => {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "invalid continue token",
                )
            }
        },
        None => (store.revision, 0usize),
    };
    // Taken at the current state; a real server serves the snapshot at
    // `revision`, which the tests never page across a change.
    let items: Vec<&Value> = store
        .objects
        .iter()
        .filter(|((k, _, _), _)| k == kind)
        .map(|(_, v)| v)
        .collect();
    let limit = query
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let end = start.saturating_add(limit).min(items.len());
    let page: Vec<&Value> = items.get(start..end).unwrap_or_default().to_vec();
    let mut metadata = json!({"resourceVersion": revision.to_string()});
    if end < items.len() {
        metadata["continue"] = json!(format!("{revision}:{end}"));
        metadata["remainingItemCount"] = json!(items.len() - end);
    }
    json_response(
        StatusCode::OK,
        &json!({"kind": format!("{kind}List"), "apiVersion": api_version, "metadata": metadata, "items": page}),
    )
}

/// A watch: replays the history after `resourceVersion`, then streams
/// changes and bookmarks until `timeoutSeconds` or a cut.
fn watch(state: &ApiState, kind: &str, query: &BTreeMap<String, String>) -> Resp {
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|b| b == "true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map_or(Duration::from_secs(290), Duration::from_secs);
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let mut changes = state.changes.subscribe();
    let mut cut = state.cut.subscribe();
    let (replay, gone, mut revision) = {
        let store = state.store();
        let gone = from != 0 && from < store.compacted;
        let replay: Vec<Change> = store
            .history
            .iter()
            .filter(|c| c.kind == kind && c.revision > from)
            .cloned()
            .collect();
        (replay, gone, from.max(store.compacted))
    };
    let kind = kind.to_owned();
    let counter = state.gone.clone();
    tokio::spawn(async move {
        if gone {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let status = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
                "metadata": {}, "status": "Failure", "reason": "Expired", "code": 410,
                "message": format!("too old resource version: {from}")}});
            let _ = tx.send(line(&status)).await;
            return;
        }
        for c in replay {
            revision = c.revision;
            if tx.send(event(&c)).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut tick = tokio::time::interval(BOOKMARK_EVERY);
        loop {
            let sent = tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                _ = cut.recv() => return,
                c = changes.recv() => match c {
                    Ok(c) if c.kind == kind && c.revision > revision => {
                        revision = c.revision;
                        tx.send(event(&c)).await
                    }
                    Ok(_) => Ok(()),
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tick.tick(), if bookmarks => {
                    let mark = json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": "v1",
                        "metadata": {"resourceVersion": revision.to_string()}}});
                    tx.send(line(&mark)).await
                }
            };
            if sent.is_err() {
                return;
            }
        }
    });
    let mut resp = Response::new(ApiBody::Stream(rx));
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn event(c: &Change) -> Bytes {
    line(&json!({"type": c.kind_event, "object": c.object}))
}

fn line(v: &Value) -> Bytes {
    let mut text = v.to_string();
    text.push('\n');
    Bytes::from(text)
}

/// RBAC's refusal of `verb` on the resource at `path`
/// (`/api/v1/<resource>` or `/apis/<group>/<version>/<resource>`), as the
/// API server words it for the proxy's service account.
fn forbidden(path: &str, verb: &str) -> Resp {
    let resource = path.rsplit('/').next().unwrap_or(path);
    let group = path
        .strip_prefix("/apis/")
        .and_then(|p| p.split('/').next())
        .unwrap_or("");
    let qualified = if group.is_empty() {
        resource.to_owned()
    } else {
        format!("{resource}.{group}")
    };
    let message = format!(
        "{qualified} is forbidden: User \"system:serviceaccount:nodeward-system:nodeward\" \
         cannot {verb} resource \"{resource}\" in API group \"{group}\" at the cluster scope"
    );
    let code = StatusCode::FORBIDDEN;
    json_response(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": "Forbidden",
            "details": {"group": group, "kind": resource}, "code": code.as_u16()}),
    )
}

fn status(code: StatusCode, reason: &str, message: &str) -> Resp {
    json_response(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "reason": reason, "message": message, "code": code.as_u16()}),
    )
}

fn json_response(code: StatusCode, v: &Value) -> Resp {
    let mut resp = Response::new(ApiBody::Full(Full::new(Bytes::from(v.to_string()))));
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn parse_query(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.replace("%3A", ":").replace("%2C", ",")))
        .collect()
}

fn key(object: &Value) -> (String, String, String) {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    (
        s(&object["kind"]),
        s(&object["metadata"]["namespace"]),
        s(&object["metadata"]["name"]),
    )
}

/// A whole response body, or a watch's stream of event lines.
pub enum ApiBody {
    Full(Full<Bytes>),
    Stream(mpsc::Receiver<Bytes>),
}

impl Body for ApiBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            Self::Full(full) => Pin::new(full).poll_frame(cx),
            Self::Stream(rx) => rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b)))),
        }
    }
}

/// Base64 (standard alphabet, padded) for the kubeconfig's CA data.
mod base64_lite {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn encode(input: &[u8]) -> String {
        let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
        for chunk in input.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

/// An API server with a runtime of its own, for the synchronous cluster
/// harness: it listens inside a node's network namespace.
pub struct BlockingApiServer {
    runtime: tokio::runtime::Runtime,
    server: Option<ApiServer>,
    /// What was served, kept across [`BlockingApiServer::stop`].
    state: ApiState,
    addr: SocketAddr,
    enter: Arc<dyn Fn() -> Result<()> + Send + Sync>,
}

impl BlockingApiServer {
    /// Binds `addr` after `enter` moved a fresh thread into the wanted
    /// network namespace, and serves `state` there.
    pub fn start_in(
        enter: impl Fn() -> Result<()> + Send + Sync + 'static,
        addr: SocketAddr,
        state: ApiState,
    ) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let mut server = Self {
            runtime,
            server: None,
            state,
            addr,
            enter: Arc::new(enter),
        };
        server.restart()?;
        Ok(server)
    }

    /// Starts the server again (after [`BlockingApiServer::stop`]) on the
    /// same address with the same objects.
    pub fn restart(&mut self) -> Result<()> {
        let (enter, addr) = (self.enter.clone(), self.addr);
        let listener = std::thread::spawn(move || -> Result<std::net::TcpListener> {
            enter()?;
            let l = std::net::TcpListener::bind(addr).context("binding the API server")?;
            l.set_nonblocking(true)?;
            Ok(l)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the binding thread panicked"))??;
        let state = self.state.clone();
        let server = self
            .runtime
            .block_on(async { ApiServer::serve(TcpListener::from_std(listener)?, state) })?;
        self.server = Some(server);
        Ok(())
    }

    /// Kills the server (every connection cut); the objects stay.
    pub fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            let _ = self.runtime.block_on(server.stop());
        }
    }

    /// The objects served.
    pub fn state(&self) -> ApiState {
        self.state.clone()
    }

    /// A kubeconfig for the server.
    pub fn kubeconfig(&self) -> String {
        self.server
            .as_ref()
            .map(ApiServer::kubeconfig)
            .unwrap_or_default()
    }
}

impl Drop for BlockingApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}
