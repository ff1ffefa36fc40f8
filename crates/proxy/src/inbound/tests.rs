//! Scenarios for the tunnel server over real sockets on 127.0.0.1: a root
//! CA with node-a (the caller, `shop/frontend`) and node-b (this server,
//! serving `shop/backend` at 127.0.0.1), node-b's view of the workloads
//! file, an upstream for backend, and callers that are either the real pool
//! or a raw HTTP/2 client holding one connection.

use std::{
    collections::BTreeSet,
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{Empty, Full};
use hyper::{
    client::conn::http2::SendRequest, service::service_fn, Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tempfile::TempDir;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream},
    sync::watch,
    task::JoinHandle,
    time::{sleep, timeout},
};
use tokio_rustls::TlsConnector;

use nodeward_identity::{ca, tls::TrustBundle, tls_config, CertStore, Issued, NodeCa, SpiffeId};
use nodeward_policy::{PolicySet, Settings as PolicySettings};
use nodeward_workloads::Registry;

use super::{client_verifier, limits::Settings, serve, Inbound, Limits};
use crate::{
    authz::{
        audit::{AuditSink, Auditor},
        Authz,
    },
    drain::DrainControl,
    http,
    relay::Dialer,
    telemetry::{
        ConnLabels, ConnectionSeries, Discard, LimitKind, Observer, RateLimitOutcome, Reporter,
        Side, Telemetry,
    },
    tunnel::{Pool, Target, ERROR_HEADER},
};

/// Upper bound for anything that should happen promptly.
const WAIT: Duration = Duration::from_secs(10);
const HOUR: Duration = Duration::from_secs(3600);
/// frontend's pod address on node-a (never dialled).
const FRONTEND_IP: &str = "10.0.1.10";

const ALLOW_ALL: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: istio-system}
spec:
  action: ALLOW
  rules: [{}]
";

/// Allows every path: enough to make the port HTTP-judged.
const HTTP_ALLOW: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: http-allow, namespace: shop}
spec:
  selector: {matchLabels: {app: backend}}
  rules:
  - to: [{operation: {paths: [\"*\"]}}]
";

fn id(sa: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://cluster.local/ns/shop/sa/{sa}")).expect("id")
}

// ---- what the server reports ----

/// Every server-side report, as `kind:label`, and the pending gauge.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<String>>,
    pending: Mutex<i64>,
}

impl Recorder {
    fn push(&self, event: String) {
        self.events.lock().expect("lock").push(event);
    }

    fn count(&self, event: &str) -> usize {
        let events = self.events.lock().expect("lock");
        events.iter().filter(|e| *e == event).count()
    }

    fn pending(&self) -> i64 {
        *self.pending.lock().expect("lock")
    }

    /// Waits (up to [`WAIT`]) until `event` was reported `n` times.
    async fn wait_for(&self, event: &str, n: usize) {
        let waited = timeout(WAIT, async {
            while self.count(event) < n {
                sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        let events = self.events.lock().expect("lock").clone();
        assert!(
            waited.is_ok(),
            "{event} never reported {n} times: {events:?}"
        );
    }
}

impl Telemetry for Recorder {
    fn connection(&self, _: &ConnLabels<'_>) -> ConnectionSeries {
        Arc::new(Discard)
    }
    fn http_request(&self, _: Reporter, _: &str, _: &str, _: u16) {}
    fn refused(&self, _: &str) {}
    fn connect_failed(&self, _: &str) {}
    fn active(&self, _: i64) {}
    fn pending(&self, delta: i64) {
        *self.pending.lock().expect("lock") += delta;
    }
    fn tunnel_handshake(&self, side: Side, _: f64) {
        self.push(format!("handshake:{}", side.as_str()));
    }
    fn tunnel_rejected(&self, reason: &str) {
        self.push(format!("rejected:{reason}"));
    }
    fn tunnel_stream(&self, side: Side, status: &str) {
        self.push(format!("stream:{}:{status}", side.as_str()));
    }
    fn tunnel_stream_refused(&self, reason: &str) {
        self.push(format!("refused:{reason}"));
    }
    fn tunnel_closed(&self, reason: &str) {
        self.push(format!("closed:{reason}"));
    }
    fn tunnel_dial_queued(&self, _: f64) {
        self.push("dial_queued".to_owned());
    }
    fn authz_decision(&self, _: &str, _: &str, _: &str) {}
    fn ratelimit(&self, _: &str, _: RateLimitOutcome, _: LimitKind) {}
    fn ratelimit_buckets(&self, _: usize) {}
    fn policy_revoked(&self) {}
    fn audit_dropped(&self, _: u64) {}
    fn jwt_validation(&self, _: &str) {}
}

// ---- the two nodes ----

/// What backend's upstream on 127.0.0.1 does.
enum Upstream {
    /// Echoes every byte.
    Echo,
    /// Answers every HTTP/1.1 request with `200 ok`.
    Http,
    /// Listens but never accepts, with its accept queue full: dials to it
    /// hang until their timeout.
    Blackhole,
}

/// node-b's tunnel server, and what node-a needs to call it.
struct Mesh {
    dir: TempDir,
    bundle: Arc<TrustBundle>,
    frontend: Arc<Issued>,
    backend_id: SpiffeId,
    backend: SocketAddr,
    registry: Arc<ArcSwap<Registry>>,
    reloaded: watch::Sender<()>,
    recorder: Arc<Recorder>,
    pool: Pool,
    addr: SocketAddr,
    /// The server's TLS set-up (node-b's certificates, its client check),
    /// for stand-in servers.
    tls: Arc<rustls::ServerConfig>,
    _stop: watch::Sender<bool>,
    _drain: DrainControl,
    /// A blackhole upstream, and the connections that fill its queue.
    _held: Option<(TcpListener, Vec<TcpStream>)>,
    /// The server's state, once started.
    server: Option<Arc<Inbound>>,
}

/// One raw HTTP/2 connection to the tunnel server, as node-a's frontend.
struct Raw {
    send: SendRequest<Empty<Bytes>>,
    /// Ends when the connection does.
    ended: JoinHandle<()>,
}

impl Mesh {
    async fn start(settings: Settings, policy: &str, upstream: Upstream) -> Self {
        Self::start_with_http_limits(settings, policy, upstream, http::Limits::default()).await
    }

    /// As [`Mesh::start`], with the timers of the connections whose HTTP
    /// the server judges.
    async fn start_with_http_limits(
        settings: Settings,
        policy: &str,
        upstream: Upstream,
        http_limits: http::Limits,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("ca");
        ca::init("cluster.local", &root, false).expect("ca init");
        let node_ca = |node: &str| {
            let out = dir.path().join(node);
            ca::issue_node(&root, node, &out, 24 * HOUR, false).expect("issue node");
            NodeCa::load(&out).expect("load node")
        };
        let (node_a, node_b) = (node_ca("node-a"), node_ca("node-b"));
        let bundle = node_b.trust_bundle();
        let client_certs = certs(node_a, "frontend");
        let server_certs = Arc::new(certs(node_b, "backend"));
        let (backend, held) = start_upstream(upstream).await;
        let recorder = Arc::new(Recorder::default());
        let observer = Arc::new(Observer::new(recorder.clone()));
        let registry = Arc::new(ArcSwap::from_pointee(Registry::default()));
        let verifier = client_verifier(bundle.clone(), registry.clone());
        let tls = tls_config::server_config(server_certs.clone(), verifier).expect("config");
        let mut mesh = Self {
            frontend: client_certs.get(&id("frontend")).expect("frontend cert"),
            backend_id: id("backend"),
            backend,
            registry,
            tls,
            reloaded: watch::Sender::new(()),
            pool: Pool::new(bundle.clone(), observer.clone()),
            bundle,
            recorder,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            _stop: watch::Sender::new(false),
            _drain: DrainControl::new().0,
            _held: held,
            server: None,
            dir,
        };
        mesh.write_workloads(true);
        let (control, drain) = DrainControl::new();
        mesh._drain = control;
        let inbound = Inbound {
            node: "node-b".into(),
            registry: mesh.registry.clone(),
            workloads: mesh.reloaded.subscribe(),
            tls: mesh.tls.clone(),
            certs: server_certs,
            authz: Arc::new(
                authz(&mesh.dir, policy, observer.clone()).with_http_limits(http_limits),
            ),
            observer,
            dialer: Dialer {
                ipv4: [127, 0, 0, 1].into(),
                ipv6: None,
            },
            drain,
            limits: Limits::new(settings),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        mesh.addr = listener.local_addr().expect("addr");
        let inbound = Arc::new(inbound);
        mesh.server = Some(inbound.clone());
        tokio::spawn(serve(listener, inbound, mesh._stop.subscribe()));
        mesh
    }

    /// Whether a dial slot for node-a is free right now (none is kept).
    async fn dial_slot_free(&self) -> bool {
        let server = self.server.as_ref().expect("started");
        let now = tokio::time::Instant::now();
        server.limits.start_dial("node-a", now).await.is_some()
    }

    /// node-b's workloads file, with or without frontend on node-a; loaded
    /// into the registry (as a reload does, without telling anyone).
    fn write_workloads(&self, with_frontend: bool) {
        let mut text = String::from("nodes:\n  - {name: node-a, address: 127.0.0.2}\nworkloads:\n");
        if with_frontend {
            text += &format!("  - {{name: frontend, namespace: shop, serviceAccount: frontend, node: node-a, ips: [{FRONTEND_IP}], labels: {{app: frontend}}}}\n");
        }
        text += "  - {name: backend, namespace: shop, serviceAccount: backend, node: node-b, ips: [127.0.0.1], labels: {app: backend}}\n";
        let path: PathBuf = self.dir.path().join("workloads.yaml");
        std::fs::write(&path, text).expect("write workloads");
        let registry = Registry::load(&path, "node-b", std::path::Path::new("/")).expect("load");
        self.registry.store(Arc::new(registry));
    }

    /// Takes frontend off node-a, and tells the server, as control.rs does.
    fn remove_frontend_and_reload(&self) {
        self.write_workloads(false);
        self.reloaded.send_replace(());
    }

    fn target(&self) -> Target<'_> {
        Target {
            source: &self.frontend,
            destination: &self.backend_id,
            node: "node-b",
            node_addr: self.addr,
            authority: self.backend,
            client_ip: FRONTEND_IP.parse().expect("ip"),
            trace: None,
            caller: None,
        }
    }

    /// A TLS connection to the server as frontend, asking for `sni`'s
    /// certificate; the handshake's outcome.
    async fn tls(
        &self,
        sni: &SpiffeId,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let config = tls_config::client_config(
            &self.frontend,
            self.bundle.clone(),
            self.backend_id.clone(),
            "node-b".into(),
        )
        .expect("client config");
        let tcp = TcpStream::connect(self.addr).await?;
        let connecting = TlsConnector::from(config).connect(tls_config::server_name(sni), tcp);
        timeout(WAIT, connecting).await.expect("handshake ended")
    }

    /// One HTTP/2 connection of our own, so tests choose its streams.
    async fn raw(&self) -> Raw {
        let tls = self.tls(&self.backend_id).await.expect("handshake");
        let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(tls))
            .await
            .expect("h2 handshake");
        let ended = tokio::spawn(async move {
            let _ = conn.await;
        });
        Raw { send, ended }
    }

    /// A stream through the pool, as the outbound path opens one.
    async fn pooled(&self) -> crate::tunnel::Stream {
        timeout(WAIT, self.pool.connect(self.target()))
            .await
            .expect("pool answered")
            .expect("pooled stream")
    }
}

impl Raw {
    /// Another handle on this connection, for streams sent concurrently
    /// (its `ended` does not follow the connection).
    fn another(&self) -> Raw {
        Raw {
            send: self.send.clone(),
            ended: tokio::spawn(async {}),
        }
    }

    /// A CONNECT to backend on this connection; the response.
    async fn connect(&mut self, to: SocketAddr) -> hyper::Result<Response<hyper::body::Incoming>> {
        let mut req = Request::new(Empty::new());
        *req.method_mut() = Method::CONNECT;
        *req.uri_mut() = hyper::Uri::builder()
            .authority(to.to_string())
            .build()
            .expect("uri");
        timeout(WAIT, self.send.send_request(req))
            .await
            .expect("answered")
    }

    /// A CONNECT that must get `200`, upgraded to its byte stream.
    async fn open(&mut self, to: SocketAddr) -> TokioIo<hyper::upgrade::Upgraded> {
        let response = self.connect(to).await.expect("response");
        assert_eq!(response.status(), StatusCode::OK, "{response:?}");
        TokioIo::new(hyper::upgrade::on(response).await.expect("upgrade"))
    }

    /// Waits (up to [`WAIT`]) until the server closed this connection.
    async fn wait_closed(self) {
        timeout(WAIT, self.ended)
            .await
            .expect("the server closed the connection")
            .expect("connection task");
    }
}

/// A store holding the certificate of `shop/<sa>`, minted by `ca`.
fn certs(ca: NodeCa, sa: &str) -> CertStore {
    let store = CertStore::new(ca, 24 * HOUR);
    let wanted = BTreeSet::from([id(sa)]);
    store.sync(&wanted, SystemTime::now()).expect("mint");
    store
}

fn authz(dir: &TempDir, policy: &str, observer: Arc<Observer>) -> Authz {
    let sources = [(dir.path().join("policy.yaml"), policy.to_owned())];
    let set = PolicySet::from_sources(&sources, PolicySettings::default()).expect("policy");
    let sink = AuditSink::File(dir.path().join("audit.log"));
    let auditor = Auditor::open(&sink, observer.sink()).expect("auditor");
    Authz::new(set, auditor, observer)
}

/// Starts backend's upstream; its address, and what must stay open.
async fn start_upstream(kind: Upstream) -> (SocketAddr, Option<(TcpListener, Vec<TcpStream>)>) {
    if let Upstream::Blackhole = kind {
        let (addr, held) = blackhole().await;
        return (addr, Some(held));
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            match kind {
                Upstream::Echo => tokio::spawn(echo(stream)),
                _ => tokio::spawn(http_ok(stream)),
            };
        }
    });
    (addr, None)
}

async fn echo(mut stream: TcpStream) {
    let (mut r, mut w) = stream.split();
    let _ = tokio::io::copy(&mut r, &mut w).await;
}

async fn http_ok(stream: TcpStream) {
    let service = service_fn(|_req| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// A listener whose accept queue is full (backlog 0 holds one connection,
/// and nobody accepts): further SYNs are dropped, so a dial hangs.
async fn blackhole() -> (SocketAddr, (TcpListener, Vec<TcpStream>)) {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let addr = socket.local_addr().expect("addr");
    let listener = socket.listen(0).expect("listen");
    let mut held = Vec::new();
    // Fill the queue: connects succeed until it is full, then hang.
    while let Ok(Ok(s)) = timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
        held.push(s);
    }
    (addr, (listener, held))
}

/// Sends `bytes` and reads them back.
async fn echoes(
    io: &mut (impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin),
    bytes: &[u8],
) {
    timeout(WAIT, io.write_all(bytes))
        .await
        .expect("written in time")
        .expect("write");
    let mut back = vec![0u8; bytes.len()];
    timeout(WAIT, io.read_exact(&mut back))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(back, bytes);
}

/// Waits (up to [`WAIT`]) until reading `io` ends or fails: it was cut.
async fn wait_cut(io: &mut (impl tokio::io::AsyncRead + Unpin)) {
    let mut buf = [0u8; 64];
    let read = timeout(WAIT, io.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0) | Err(_))),
        "the stream is still open: {read:?}"
    );
}

/// One HTTP/1.1 request on a relayed stream; the status line's code, or
/// `None` when the stream ended or failed instead.
async fn http_status(
    io: &mut (impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin),
    path: &str,
) -> Option<u16> {
    let request = format!("GET {path} HTTP/1.1\r\nhost: backend\r\n\r\n");
    io.write_all(request.as_bytes()).await.ok()?;
    let mut buf = vec![0u8; 1024];
    let n = timeout(WAIT, io.read(&mut buf)).await.ok()?.ok()?;
    let head = String::from_utf8_lossy(&buf[..n]);
    head.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

fn short(idle: u64, age: u64, grace: u64) -> Settings {
    Settings {
        idle_timeout: Duration::from_millis(idle),
        max_connection_age: Duration::from_millis(age),
        max_connection_age_grace: Duration::from_millis(grace),
        ..Settings::default()
    }
}

// ---- item 1: an identity that left its node ----

#[tokio::test]
async fn a_stream_for_an_identity_that_left_its_node_is_refused_and_its_connection_closed() {
    let mesh = Mesh::start(Settings::default(), ALLOW_ALL, Upstream::Echo).await;
    let mut raw = mesh.raw().await;
    let mut first = raw.open(mesh.backend).await;
    echoes(&mut first, b"before").await;
    // Not announced: the stream's own check must see it.
    mesh.write_workloads(false);
    let refused = raw.connect(mesh.backend).await.expect("a response");
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let why = refused.headers().get(ERROR_HEADER).expect("error header");
    assert!(why
        .to_str()
        .expect("text")
        .contains("no longer on the node"));
    assert_eq!(mesh.recorder.count("refused:identity_left_node"), 1);
    assert_eq!(mesh.recorder.count("stream:server:403"), 1);
    // The connection goes, with the stream it still carried.
    wait_cut(&mut first).await;
    raw.wait_closed().await;
    assert_eq!(mesh.recorder.count("closed:identity_left_node"), 1);
}

#[tokio::test]
async fn a_reload_that_takes_the_identity_off_its_node_cuts_open_http_paths() {
    let mesh = Mesh::start(Settings::default(), HTTP_ALLOW, Upstream::Http).await;
    let mut raw = mesh.raw().await;
    let mut path = raw.open(mesh.backend).await;
    assert_eq!(http_status(&mut path, "/one").await, Some(200));
    // A reload that keeps frontend on node-a changes nothing.
    mesh.reloaded.send_replace(());
    assert_eq!(http_status(&mut path, "/two").await, Some(200));
    mesh.remove_frontend_and_reload();
    mesh.recorder.wait_for("closed:identity_left_node", 1).await;
    assert_eq!(http_status(&mut path, "/three").await, None);
    raw.wait_closed().await;
    assert_eq!(
        mesh.recorder.count("refused:identity_left_node"),
        0,
        "closed by the reload, not by a stream"
    );
}

// ---- item 1: idle timeout and maximum age ----

#[tokio::test]
async fn an_idle_connection_is_closed_but_one_with_a_stream_is_not() {
    let mesh = Mesh::start(short(300, 3_600_000, 1000), ALLOW_ALL, Upstream::Echo).await;
    let mut raw = mesh.raw().await;
    let mut stream = raw.open(mesh.backend).await;
    sleep(Duration::from_millis(900)).await;
    echoes(&mut stream, b"still here").await;
    assert_eq!(mesh.recorder.count("closed:idle"), 0);
    drop(stream);
    raw.wait_closed().await;
    assert_eq!(mesh.recorder.count("closed:idle"), 1);
}

#[tokio::test]
async fn at_its_maximum_age_a_connection_takes_no_new_streams_and_cuts_old_ones_after_the_grace() {
    let mesh = Mesh::start(short(3_600_000, 500, 5000), ALLOW_ALL, Upstream::Echo).await;
    let mut old = mesh.pooled().await;
    echoes(&mut old, b"young").await;
    sleep(Duration::from_millis(800)).await;
    mesh.recorder.wait_for("closed:max_age", 1).await;
    // The pool moves the next stream to a new connection without failing it.
    let mut new = mesh.pooled().await;
    echoes(&mut new, b"new connection").await;
    assert_eq!(mesh.recorder.count("handshake:server"), 2);
    // Within the grace the old stream still works; after it, it is cut.
    echoes(&mut old, b"in the grace").await;
    wait_cut(&mut old).await;
}

#[tokio::test]
async fn the_pool_opens_a_new_connection_when_every_pooled_one_had_a_goaway() {
    let mesh = Mesh::start(short(3_600_000, 600, 5000), ALLOW_ALL, Upstream::Echo).await;
    // Four streams fill the first connection; the fifth spreads to a second.
    let mut streams = Vec::new();
    for _ in 0..5 {
        streams.push(mesh.pooled().await);
    }
    assert_eq!(mesh.recorder.count("handshake:server"), 2);
    // One stream left on each, so neither is closed for being empty.
    streams.drain(1..4);
    sleep(Duration::from_millis(900)).await;
    mesh.recorder.wait_for("closed:max_age", 2).await;
    let mut fresh = mesh.pooled().await;
    echoes(&mut fresh, b"third connection").await;
    assert_eq!(mesh.recorder.count("handshake:server"), 3);
}

// ---- item 6: unknown SNI ----

#[tokio::test]
async fn an_sni_naming_no_local_identity_is_counted_as_unknown_server_name() {
    let mesh = Mesh::start(Settings::default(), ALLOW_ALL, Upstream::Echo).await;
    assert!(mesh.tls(&id("nobody")).await.is_err());
    mesh.recorder
        .wait_for("rejected:unknown_server_name", 1)
        .await;
    assert_eq!(mesh.recorder.count("rejected:handshake_error"), 0);
    // Control: the right SNI gets through.
    assert!(mesh.tls(&mesh.backend_id).await.is_ok());
}

// ---- suspected: tunnel port exhaustion ----

#[tokio::test]
async fn a_handshake_beyond_the_cap_is_refused_and_counted() {
    let settings = Settings {
        max_handshakes: 1,
        ..Settings::default()
    };
    let mesh = Mesh::start(settings, ALLOW_ALL, Upstream::Echo).await;
    // Holds the only slot: connected, silent.
    let silent = TcpStream::connect(mesh.addr).await.expect("connect");
    sleep(Duration::from_millis(100)).await;
    assert!(mesh.tls(&mesh.backend_id).await.is_err());
    mesh.recorder.wait_for("rejected:handshake_limit", 1).await;
    drop(silent);
    mesh.recorder.wait_for("rejected:eof", 1).await;
    assert!(
        mesh.tls(&mesh.backend_id).await.is_ok(),
        "the slot is free again"
    );
}

#[tokio::test]
async fn a_stream_over_the_dial_cap_waits_for_a_slot_instead_of_being_refused() {
    let (mesh, mut second, hanging) = one_dial_pending(WAIT).await;
    // To a destination that answers at once: only the cap can hold it.
    let (echo, _) = start_upstream(Upstream::Echo).await;
    let waiting = tokio::spawn(async move { second.connect(echo).await.map(|r| r.status()) });
    sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "in line for the slot, not dialled");
    // The client resets the hanging stream: its dial and slot go, and the
    // waiting stream takes the slot.
    hanging.abort();
    let status = timeout(WAIT, waiting)
        .await
        .expect("served once the slot is free")
        .expect("task")
        .expect("response");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(mesh.recorder.count("refused:dial_limit"), 0);
    assert_eq!(mesh.recorder.count("dial_queued"), 1);
}

#[tokio::test]
async fn a_stream_that_waits_too_long_for_a_dial_slot_gets_503() {
    let queue = Duration::from_millis(300);
    let (mesh, mut second, hanging) = one_dial_pending(queue).await;
    let (echo, _) = start_upstream(Upstream::Echo).await;
    let started = std::time::Instant::now();
    let refused = second.connect(echo).await.expect("a response");
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() >= queue, "it waited first");
    assert_eq!(mesh.recorder.count("refused:dial_limit"), 1);
    assert_eq!(mesh.recorder.count("dial_queued"), 1, "its wait is counted");
    hanging.abort();
}

#[tokio::test]
async fn a_burst_of_streams_beyond_the_dial_cap_all_get_through() {
    let settings = Settings {
        max_pending_dials_per_node: 2,
        ..Settings::default()
    };
    let mesh = Mesh::start(settings, ALLOW_ALL, Upstream::Echo).await;
    let raw = mesh.raw().await;
    let backend = mesh.backend;
    // Sent together on one connection, so their dials overlap far beyond
    // the two slots, though each takes microseconds.
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let mut each = raw.another();
        burst.spawn(async move { each.connect(backend).await.map(|r| r.status()) });
    }
    let statuses: Vec<StatusCode> = burst
        .join_all()
        .await
        .into_iter()
        .map(|r| r.expect("response"))
        .collect();
    let served = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    assert_eq!(served, 64, "{statuses:?}");
    assert_eq!(mesh.recorder.count("refused:dial_limit"), 0);
    // They did overlap past the cap, and waited rather than dialling.
    assert!(mesh.recorder.count("dial_queued") > 0);
}

/// A server that lets the calling node have one dial pending and a
/// stream over it wait `queue` for it, the dial of a CONNECT to a
/// blackhole hanging in it, and a second handle on that CONNECT's
/// connection.
async fn one_dial_pending(queue: Duration) -> (Mesh, Raw, JoinHandle<hyper::Result<StatusCode>>) {
    let settings = Settings {
        max_pending_dials_per_node: 1,
        dial_queue_timeout: queue,
        ..Settings::default()
    };
    let mesh = Mesh::start(settings, ALLOW_ALL, Upstream::Blackhole).await;
    let mut raw = mesh.raw().await;
    let second = raw.another();
    let backend = mesh.backend;
    let hanging = tokio::spawn(async move { raw.connect(backend).await.map(|r| r.status()) });
    timeout(WAIT, async {
        while mesh.recorder.pending() < 1 {
            sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the first dial started");
    (mesh, second, hanging)
}

// ---- hostile CONNECT requests ----

impl Raw {
    /// A request with this method, authority and `Forwarded` header; its
    /// status and refusal label (`nodeward-error`).
    async fn ask(
        &mut self,
        method: Method,
        authority: &str,
        forwarded: Option<&str>,
    ) -> StatusCode {
        let mut req = Request::new(Empty::new());
        *req.method_mut() = method.clone();
        let uri = hyper::Uri::builder().authority(authority);
        let uri = if method == Method::CONNECT {
            uri
        } else {
            uri.scheme("http").path_and_query("/")
        };
        *req.uri_mut() = uri.build().expect("uri");
        if let Some(f) = forwarded {
            req.headers_mut()
                .insert(hyper::header::FORWARDED, f.parse().expect("value"));
        }
        let response = timeout(WAIT, self.send.send_request(req))
            .await
            .expect("answered")
            .expect("response");
        response.status()
    }
}

/// Each CONNECT the server must refuse, the status it answers and the
/// reason it counts; the connection stays up for the next.
#[tokio::test]
async fn connects_with_a_bad_authority_or_a_spoofed_forwarded_are_refused() {
    let mesh = Mesh::start(Settings::default(), ALLOW_ALL, Upstream::Echo).await;
    let mut raw = mesh.raw().await;
    let backend = mesh.backend.to_string();
    let port = mesh.backend.port();
    let cases: [(Method, String, Option<&str>, StatusCode, &str); 9] = [
        (
            Method::CONNECT,
            format!("backend.shop:{port}"),
            None,
            StatusCode::BAD_REQUEST,
            "bad_authority",
        ),
        (
            Method::CONNECT,
            format!("0x7f.1:{port}"),
            None,
            StatusCode::BAD_REQUEST,
            "bad_authority",
        ),
        (
            Method::CONNECT,
            "127.0.0.1".into(),
            None,
            StatusCode::BAD_REQUEST,
            "bad_authority",
        ),
        (
            Method::CONNECT,
            format!("127.0.0.9:{port}"),
            None,
            StatusCode::MISDIRECTED_REQUEST,
            "misdirected",
        ),
        (
            Method::GET,
            backend.clone(),
            None,
            StatusCode::METHOD_NOT_ALLOWED,
            "method",
        ),
        // Forwarded naming a workload that is not the caller's: another
        // identity's pod, and an address no workload has.
        (
            Method::CONNECT,
            backend.clone(),
            Some("for=127.0.0.1"),
            StatusCode::BAD_REQUEST,
            "forwarded_client",
        ),
        (
            Method::CONNECT,
            backend.clone(),
            Some("for=10.0.9.9"),
            StatusCode::BAD_REQUEST,
            "forwarded_client",
        ),
        (
            Method::CONNECT,
            backend.clone(),
            Some("for=frontend"),
            StatusCode::BAD_REQUEST,
            "bad_forwarded",
        ),
        (
            Method::CONNECT,
            backend.clone(),
            Some("by=10.0.1.10"),
            StatusCode::BAD_REQUEST,
            "bad_forwarded",
        ),
    ];
    for (method, authority, forwarded, status, reason) in cases {
        let got = raw.ask(method.clone(), &authority, forwarded).await;
        assert_eq!(got, status, "{method} {authority} {forwarded:?}");
        assert!(
            mesh.recorder.count(&format!("refused:{reason}")) >= 1,
            "{authority} {forwarded:?}: {reason} not counted"
        );
    }
    // The caller's own address in Forwarded is believed, and served.
    let own = format!("for=\"{FRONTEND_IP}\"");
    let got = raw.ask(Method::CONNECT, &backend, Some(&own)).await;
    assert_eq!(got, StatusCode::OK);
}

/// A client that opens a stream, writes and never reads what comes back:
/// HTTP/2 flow control stops the echo long before memory grows, and the
/// connection's other streams go on.
#[tokio::test]
async fn a_stream_that_never_reads_is_held_back_by_flow_control_and_others_go_on() {
    let mesh = Mesh::start(Settings::default(), ALLOW_ALL, Upstream::Echo).await;
    let mut raw = mesh.raw().await;
    let mut stuck = raw.open(mesh.backend).await;
    let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = written.clone();
    let writer = tokio::spawn(async move {
        let chunk = vec![7u8; 64 * 1024];
        for _ in 0..1024 {
            if stuck.write_all(&chunk).await.is_err() {
                return;
            }
            counter.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
    });
    // Wait until the writer is held back: nothing taken for 300 ms.
    let mut taken = 0;
    for _ in 0..100 {
        sleep(Duration::from_millis(300)).await;
        let now = written.load(std::sync::atomic::Ordering::Relaxed);
        if now == taken {
            break;
        }
        taken = now;
    }
    // 64 MiB offered. Held: the request stream's 4 MiB window, the
    // response stream's 4 MiB window, 400 KiB of send buffer and the
    // loopback socket buffers of the echo (about 15 MiB seen in all).
    assert!(
        taken < 24 * 1024 * 1024,
        "{taken} bytes taken from a reader that never reads"
    );
    let mut other = raw.open(mesh.backend).await;
    echoes(&mut other, b"still served").await;
    writer.abort();
}

mod early;
mod reset;
mod retry;
