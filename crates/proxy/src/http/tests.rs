//! Scenarios for `serve` over real sockets on 127.0.0.1: a hyper upstream
//! (both versions) that echoes what it saw, the proxy serving one accepted
//! connection, and hyper or raw-byte clients.

use std::{
    convert::Infallible,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use ::http::{header, request::Parts, HeaderMap, Method, Request, Response, StatusCode, Version};
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::{
    body::Incoming,
    client::conn::{http1 as client1, http2 as client2},
    service::service_fn,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::oneshot,
    task::JoinHandle,
    time::timeout,
};

use super::{refusal, serve, Authorizer, Limits, Summary, Verdict};
use crate::drain::{Drain, DrainControl};

/// Upper bound for anything that should happen promptly.
const WAIT: Duration = Duration::from_secs(10);
const HOST: &str = "app.test";

// ---- upstream ----

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    host: Option<String>,
    version: Version,
    headers: HeaderMap,
}

/// Everything an upstream received: parsed requests and raw bytes.
#[derive(Clone, Default)]
struct Log {
    seen: Arc<Mutex<Vec<Seen>>>,
    raw: Arc<Mutex<Vec<u8>>>,
}

impl Log {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("log lock").clone()
    }

    fn paths(&self) -> Vec<String> {
        self.seen().into_iter().map(|s| s.path).collect()
    }

    fn raw(&self) -> Vec<u8> {
        self.raw.lock().expect("log lock").clone()
    }
}

struct Upstream {
    addr: SocketAddr,
    log: Log,
}

impl Upstream {
    /// A hyper server for both versions. `/echo` streams the request body
    /// back, `/slow` answers after 200 ms, `/hop` answers with hop-by-hop
    /// headers, `/trailers` answers "trailers=NAMES" (or "trailers=none")
    /// with the request trailers it got; anything else answers
    /// "METHOD PATH host=HOST len=N".
    async fn http() -> Self {
        let (listener, addr) = bind().await;
        let log = Log::default();
        let served = log.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = served.clone();
                let io = TokioIo::new(Recording {
                    inner: stream,
                    raw: log.raw.clone(),
                });
                let service = service_fn(move |req| echo(req, log.clone()));
                tokio::spawn(async move {
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let _ = builder.serve_connection(io, service).await;
                });
            }
        });
        Self { addr, log }
    }

    /// Accepts and closes at once: a pod that died.
    async fn closing() -> Self {
        let (listener, addr) = bind().await;
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                drop(stream);
            }
        });
        Self {
            addr,
            log: Log::default(),
        }
    }

    /// Records bytes and never answers; the receiver fires when the proxy
    /// closes the socket.
    async fn silent() -> (Self, oneshot::Receiver<()>) {
        let (listener, addr) = bind().await;
        let log = Log::default();
        let raw = log.raw.clone();
        let (eof_tx, eof_rx) = oneshot::channel();
        tokio::spawn(async move {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = stream.read(&mut buf).await {
                raw.lock().expect("raw lock").extend_from_slice(&buf[..n]);
            }
            let _ = eof_tx.send(());
        });
        (Self { addr, log }, eof_rx)
    }
}

type EchoBody = BoxBody<Bytes, hyper::Error>;

async fn echo(req: Request<Incoming>, log: Log) -> Result<Response<EchoBody>, Infallible> {
    let seen = Seen {
        method: req.method().clone(),
        path: req
            .uri()
            .path_and_query()
            .map_or("", |p| p.as_str())
            .to_owned(),
        host: req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
            .or_else(|| req.uri().authority().map(|a| a.to_string())),
        version: req.version(),
        headers: req.headers().clone(),
    };
    log.seen.lock().expect("log lock").push(seen.clone());
    match req.uri().path() {
        "/echo" => return Ok(Response::new(req.into_body().boxed())),
        "/trailers" => return Ok(trailer_names(req).await),
        "/slow" => tokio::time::sleep(Duration::from_millis(200)).await,
        _ => {}
    }
    let len = match req.into_body().collect().await {
        Ok(body) => body.to_bytes().len().to_string(),
        Err(e) => format!("error {e}"),
    };
    let host = seen.host.unwrap_or_default();
    let text = format!("{} {} host={host} len={len}", seen.method, seen.path);
    let mut response = Response::new(full(text).map_err(|never| match never {}).boxed());
    let headers = response.headers_mut();
    headers.insert("x-upstream", "yes".parse().expect("header value"));
    if seen.path == "/close" {
        headers.insert(header::CONNECTION, "close".parse().expect("header value"));
    }
    if seen.path == "/hop" {
        headers.insert("x-hop", "1".parse().expect("header value"));
        headers.insert(header::CONNECTION, "x-hop".parse().expect("header value"));
    }
    Ok(response)
}

/// "trailers=a,b" for the request trailers received, "trailers=none" if none.
async fn trailer_names(req: Request<Incoming>) -> Response<EchoBody> {
    let text = match req.into_body().collect().await {
        Ok(body) => match body.trailers() {
            Some(t) => {
                let names: Vec<&str> = t.keys().map(|n| n.as_str()).collect();
                format!("trailers={}", names.join(","))
            }
            None => "trailers=none".to_owned(),
        },
        Err(e) => format!("error {e}"),
    };
    Response::new(full(text).map_err(|never| match never {}).boxed())
}

/// Copies every byte read into `raw`, so tests can prove what reached the pod.
struct Recording {
    inner: TcpStream,
    raw: Arc<Mutex<Vec<u8>>>,
}

impl AsyncRead for Recording {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let new = &buf.filled()[before..];
        self.raw.lock().expect("raw lock").extend_from_slice(new);
        polled
    }
}

impl AsyncWrite for Recording {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// ---- proxy ----

/// `serve` on the first connection accepted on its own port.
struct Proxy {
    addr: SocketAddr,
    task: JoinHandle<Summary>,
}

impl Proxy {
    async fn start(upstream: &Upstream, authorizer: impl Authorizer) -> Self {
        Self::start_arc(upstream, Arc::new(authorizer)).await
    }

    async fn start_arc<A: Authorizer + ?Sized>(upstream: &Upstream, authorizer: Arc<A>) -> Self {
        Self::start_with_drain(upstream, authorizer, Drain::never()).await
    }

    async fn start_with_drain<A: Authorizer + ?Sized>(
        upstream: &Upstream,
        authorizer: Arc<A>,
        drain: Drain,
    ) -> Self {
        Self::spawn(upstream, authorizer, Limits::default(), drain).await
    }

    /// With these timers instead of the defaults.
    async fn start_with_limits(upstream: &Upstream, limits: Limits) -> Self {
        Self::spawn(upstream, Arc::new(rbac), limits, Drain::never()).await
    }

    async fn spawn<A: Authorizer + ?Sized>(
        upstream: &Upstream,
        authorizer: Arc<A>,
        limits: Limits,
        drain: Drain,
    ) -> Self {
        let (listener, addr) = bind().await;
        let upstream = upstream.addr;
        let task = tokio::spawn(async move {
            let (client, _) = listener.accept().await.expect("accept");
            let upstream = TcpStream::connect(upstream)
                .await
                .expect("connect upstream");
            serve(client, upstream, authorizer, &limits, &drain).await
        });
        Self { addr, task }
    }

    /// Waits for `serve` to end (the client must have gone).
    async fn summary(self) -> Summary {
        timeout(WAIT, self.task)
            .await
            .expect("serve should end")
            .expect("serve should not panic")
    }
}

/// Refuses `/denied*` with the usual RBAC answer, forwards the rest.
fn rbac(parts: &mut Parts) -> Verdict {
    if parts.uri.path().starts_with("/denied") {
        Verdict::Respond(refusal(StatusCode::FORBIDDEN, "RBAC: access denied\n"))
    } else {
        Verdict::Forward
    }
}

async fn setup() -> (Upstream, Proxy) {
    let upstream = Upstream::http().await;
    let proxy = Proxy::start(&upstream, rbac).await;
    (upstream, proxy)
}

// ---- clients ----

/// A hyper client connection, speaking HTTP/1.1 or HTTP/2 prior knowledge.
enum Client {
    H1(client1::SendRequest<Full<Bytes>>),
    H2(client2::SendRequest<Full<Bytes>>),
}

#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Client {
    async fn h1(addr: SocketAddr) -> Self {
        let io = TokioIo::new(TcpStream::connect(addr).await.expect("connect proxy"));
        let (tx, conn) = client1::handshake(io).await.expect("h1 handshake");
        tokio::spawn(conn);
        Self::H1(tx)
    }

    async fn h2(addr: SocketAddr) -> Self {
        let io = TokioIo::new(TcpStream::connect(addr).await.expect("connect proxy"));
        let (tx, conn) = client2::handshake(TokioExecutor::new(), io)
            .await
            .expect("h2 handshake");
        tokio::spawn(conn);
        Self::H2(tx)
    }

    /// A request for `path` on [`HOST`], in this client's form.
    fn request(&self, method: Method, path: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
        let builder = match self {
            Self::H1(_) => Request::builder().uri(path).header(header::HOST, HOST),
            Self::H2(_) => Request::builder().uri(format!("http://{HOST}{path}")),
        };
        builder
            .method(method)
            .body(Full::new(body.into()))
            .expect("request")
    }

    async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<Reply, hyper::Error> {
        let response = match self {
            Self::H1(tx) => {
                tx.ready().await?;
                tx.send_request(req).await?
            }
            Self::H2(tx) => tx.send_request(req).await?,
        };
        reply(response).await
    }

    async fn get(&mut self, path: &str) -> Reply {
        let req = self.request(Method::GET, path, Bytes::new());
        timeout(WAIT, self.send(req))
            .await
            .expect("reply in time")
            .expect("reply")
    }
}

async fn reply(response: Response<Incoming>) -> Result<Reply, hyper::Error> {
    let (parts, body) = response.into_parts();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await?.to_bytes(),
    })
}

/// Writes `bytes` on a fresh connection and reads until the proxy closes it.
async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect proxy");
    stream.write_all(bytes).await.expect("write");
    read_to_close(&mut stream).await
}

async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let read = timeout(WAIT, stream.read_to_end(&mut out)).await;
    let _ = read.expect("the proxy should close the connection");
    String::from_utf8_lossy(&out).into_owned()
}

async fn bind() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    (listener, addr)
}

fn full(text: impl Into<Bytes>) -> Full<Bytes> {
    Full::new(text.into())
}

/// Bytes that differ from position to position, so reordering shows.
fn pattern(len: usize) -> Bytes {
    (0..len).map(|i| (i % 251) as u8).collect()
}

// ---- scenarios ----

/// A drain that started before the client's first request (the connection
/// was accepted late, or was still being set up) must not cost that request:
/// it is served, and told to close.
#[tokio::test]
async fn a_drain_never_loses_the_first_request_and_closes_http1_after_it() {
    for delay in [Duration::ZERO, Duration::from_millis(30)] {
        let upstream = Upstream::http().await;
        let (control, drain) = DrainControl::new();
        control.start();
        let proxy = Proxy::start_with_drain(&upstream, Arc::new(rbac), drain).await;
        let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
        tokio::time::sleep(delay).await;
        let request = b"GET /a HTTP/1.1\r\nhost: app.test\r\n\r\n";
        stream.write_all(request).await.expect("write");
        let reply = read_to_close(&mut stream).await;
        assert!(
            reply.starts_with("HTTP/1.1 200"),
            "delay {delay:?}: {reply}"
        );
        assert!(
            reply.to_ascii_lowercase().contains("connection: close"),
            "{reply}"
        );
        assert_eq!(proxy.summary().await.requests, 1);
    }
}

/// Once the drain starts, a keep-alive HTTP/1 connection gets its next
/// response with `Connection: close` and then ends; HTTP/2 gets a GOAWAY
/// and ends once its streams are done.
#[tokio::test]
async fn a_drain_winds_down_keep_alive_connections_of_both_versions() {
    for h2 in [false, true] {
        let upstream = Upstream::http().await;
        let (control, drain) = DrainControl::new();
        let proxy = Proxy::start_with_drain(&upstream, Arc::new(rbac), drain).await;
        let mut client = if h2 {
            Client::h2(proxy.addr).await
        } else {
            Client::h1(proxy.addr).await
        };
        let first = client.get("/one").await;
        assert_eq!(first.status, StatusCode::OK);
        assert!(!first.headers.contains_key("connection"));
        control.start();
        if !h2 {
            let second = client.get("/two").await;
            assert_eq!(second.status, StatusCode::OK);
            assert_eq!(second.headers["connection"], "close");
        }
        // The proxy ends the connection by itself, the client still open.
        let summary = proxy.summary().await;
        assert_eq!(summary.requests, if h2 { 1 } else { 2 }, "h2: {h2}");
        drop(client);
    }
}

#[tokio::test]
async fn http1_get_forwarded_intact() {
    let (upstream, proxy) = setup().await;
    let mut client = Client::h1(proxy.addr).await;
    let reply = client.get("/hello?x=1").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "GET /hello?x=1 host=app.test len=0");
    assert_eq!(reply.headers["x-upstream"], "yes");
    let seen = upstream.log.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].version, Version::HTTP_11);
    drop(client);
    let summary = proxy.summary().await;
    assert_eq!((summary.requests, summary.refused), (1, 0));
    assert_eq!(summary.bytes_out, reply.body.len() as u64);
    assert_eq!(summary.error, None);
}

#[tokio::test]
async fn authorizer_sees_request_and_its_rewrite_reaches_upstream() {
    let upstream = Upstream::http().await;
    let asked = Arc::new(Mutex::new(Vec::new()));
    let record = asked.clone();
    let proxy = Proxy::start(&upstream, move |parts: &mut Parts| {
        let host = parts.headers.get(header::HOST).cloned();
        let entry = (parts.method.clone(), parts.uri.to_string(), host);
        record.lock().expect("lock").push(entry);
        parts.uri = "/after?q=1".parse().expect("uri");
        Verdict::Forward
    })
    .await;
    let mut client = Client::h1(proxy.addr).await;
    let req = client.request(Method::POST, "/before/../x", "abc");
    let reply = client.send(req).await.expect("reply");
    assert_eq!(reply.text(), "POST /after?q=1 host=app.test len=3");
    let asked = asked.lock().expect("lock").clone();
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].0, Method::POST);
    assert_eq!(asked[0].1, "/before/../x");
    assert_eq!(
        asked[0].2.as_ref().map(|h| h.as_bytes()),
        Some(&b"app.test"[..])
    );
    assert_eq!(upstream.log.paths(), ["/after?q=1"]);
}

#[tokio::test]
async fn refused_request_then_next_passes_on_same_connection() {
    let (upstream, proxy) = setup().await;
    let mut client = Client::h1(proxy.addr).await;
    let denied = client.get("/denied").await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert_eq!(denied.text(), "RBAC: access denied\n");
    assert_eq!(denied.headers[header::CONTENT_TYPE], "text/plain");
    let allowed = client.get("/ok").await;
    assert_eq!(allowed.status, StatusCode::OK);
    assert_eq!(upstream.log.paths(), ["/ok"]);
    drop(client);
    let summary = proxy.summary().await;
    assert_eq!((summary.requests, summary.refused), (2, 1));
}

#[tokio::test]
async fn refused_post_with_body_then_get_works() {
    let (upstream, proxy) = setup().await;
    let mut client = Client::h1(proxy.addr).await;
    let post = client.request(Method::POST, "/denied", pattern(64 * 1024));
    let denied = timeout(WAIT, client.send(post)).await.expect("in time");
    assert_eq!(denied.expect("reply").status, StatusCode::FORBIDDEN);
    let allowed = client.get("/next").await;
    assert_eq!(allowed.text(), "GET /next host=app.test len=0");
    assert_eq!(upstream.log.paths(), ["/next"]);
}

/// A body too large to discard: the client is told the connection closes,
/// and nothing of it reaches the pod.
#[tokio::test]
async fn refused_large_body_closes_the_connection() {
    let (upstream, proxy) = setup().await;
    let wire = "POST /denied HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100000000\r\n\r\nabc";
    let answer = raw_exchange(proxy.addr, wire.as_bytes())
        .await
        .to_lowercase();
    assert!(answer.starts_with("http/1.1 403"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert!(upstream.log.raw().is_empty());
}

/// A refused request's body that looks like a request must be skipped as
/// body, never parsed as the next request.
#[tokio::test]
async fn refused_body_is_never_read_as_a_request() {
    let (upstream, proxy) = setup().await;
    let hidden = "GET /hidden HTTP/1.1\r\nHost: app.test\r\n\r\n";
    let wire = format!(
        "POST /denied HTTP/1.1\r\nHost: app.test\r\nContent-Length: {}\r\n\r\n{hidden}\
         GET /next HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
        hidden.len()
    );
    let answer = raw_exchange(proxy.addr, wire.as_bytes()).await;
    let statuses: Vec<&str> = answer.matches("HTTP/1.1 ").collect();
    assert_eq!(statuses.len(), 2, "{answer}");
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("GET /next host=app.test len=0"), "{answer}");
    assert_eq!(upstream.log.paths(), ["/next"]);
}

#[tokio::test]
async fn http2_streams_refused_and_forwarded_side_by_side() {
    let (upstream, proxy) = setup().await;
    let mut client = Client::h2(proxy.addr).await;
    let Client::H2(tx) = &client else {
        unreachable!("h2 client")
    };
    let (mut a, mut b) = (tx.clone(), tx.clone());
    let denied = client.request(Method::GET, "/denied", Bytes::new());
    let allowed = client.request(Method::GET, "/ok", Bytes::new());
    let (denied, allowed) = tokio::join!(a.send_request(denied), b.send_request(allowed));
    let denied = reply(denied.expect("denied response")).await.expect("body");
    let allowed = reply(allowed.expect("allowed response"))
        .await
        .expect("body");
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert_eq!(denied.text(), "RBAC: access denied\n");
    assert_eq!(allowed.text(), "GET /ok host=app.test len=0");
    assert_eq!(client.get("/again").await.status, StatusCode::OK);
    let seen = upstream.log.seen();
    assert_eq!(upstream.log.paths(), ["/ok", "/again"]);
    assert!(seen.iter().all(|s| s.version == Version::HTTP_2));
    drop((client, a, b));
    let summary = proxy.summary().await;
    assert_eq!((summary.requests, summary.refused), (3, 1));
}

#[tokio::test]
async fn http2_rewrite_to_bare_path_keeps_authority() {
    let upstream = Upstream::http().await;
    let proxy = Proxy::start(&upstream, |parts: &mut Parts| {
        parts.uri = "/rewritten".parse().expect("uri");
        Verdict::Forward
    })
    .await;
    let mut client = Client::h2(proxy.addr).await;
    let reply = client.get("/original").await;
    assert_eq!(reply.text(), "GET /rewritten host=app.test len=0");
}

#[tokio::test]
async fn large_bodies_stream_both_ways_http1() {
    large_bodies_stream_both_ways(Client::h1).await;
}

#[tokio::test]
async fn large_bodies_stream_both_ways_http2() {
    large_bodies_stream_both_ways(Client::h2).await;
}

async fn large_bodies_stream_both_ways<F, Fut>(connect: F)
where
    F: FnOnce(SocketAddr) -> Fut,
    Fut: std::future::Future<Output = Client>,
{
    let (_upstream, proxy) = setup().await;
    let mut client = connect(proxy.addr).await;
    let body = pattern(4 * 1024 * 1024 + 7);
    let req = client.request(Method::POST, "/echo", body.clone());
    let reply = timeout(WAIT, client.send(req))
        .await
        .expect("in time")
        .expect("reply");
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body == body, "echoed body differs");
    drop(client);
    let summary = proxy.summary().await;
    assert_eq!(summary.bytes_in, body.len() as u64);
    assert_eq!(summary.bytes_out, body.len() as u64);
}

#[tokio::test]
async fn non_http_bytes_close_the_connection_and_reach_nothing() {
    // Each input, and how the proxy may answer before closing: an HTTP/1
    // 400, or HTTP/2 frames (its SETTINGS and a GOAWAY).
    let inputs: [(&[u8], &str); 4] = [
        // A TLS ClientHello's first bytes.
        (
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x00\x01\x02\x03",
            "HTTP/1.1 400",
        ),
        (b"SSH-2.0-OpenSSH_9.6\r\n", "HTTP/1.1 400"),
        (b"\x00\x00\x00\x00\r\n\r\n", "HTTP/1.1 400"),
        (
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nnot a frame at all, just junk bytes here",
            "\0\0",
        ),
    ];
    for (input, answer_start) in inputs {
        let upstream = Upstream::http().await;
        let proxy = Proxy::start(&upstream, rbac).await;
        let answer = raw_exchange(proxy.addr, input).await;
        assert!(
            answer.is_empty() || answer.starts_with(answer_start),
            "{input:?} got {answer:?}"
        );
        let summary = proxy.summary().await;
        assert_eq!(summary.requests, 0);
        assert!(summary.error.is_some(), "{input:?}");
        assert!(upstream.log.raw().is_empty(), "{input:?} reached upstream");
    }
}

/// CL.TE and TE.CL: the smuggled request must never reach the pod, and the
/// client connection must not stay open for more.
#[tokio::test]
async fn content_length_with_transfer_encoding_never_smuggles() {
    let hidden = "0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: app.test\r\n\r\n";
    let cl_te = format!(
        "POST /a HTTP/1.1\r\nHost: app.test\r\nContent-Length: {}\r\n\
         Transfer-Encoding: chunked\r\n\r\n{hidden}",
        hidden.len()
    );
    let te_cl = format!(
        "POST /a HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\
         Content-Length: {}\r\n\r\n{hidden}",
        hidden.len()
    );
    for wire in [cl_te, te_cl] {
        let (upstream, proxy) = setup().await;
        let answer = raw_exchange(proxy.addr, wire.as_bytes()).await;
        assert!(answer.matches("HTTP/1.1 ").count() <= 1, "{answer}");
        let raw = String::from_utf8_lossy(&upstream.log.raw()).to_lowercase();
        assert!(!raw.contains("smuggled"), "{raw}");
        for seen in upstream.log.seen() {
            assert!(
                !seen.headers.contains_key(header::CONTENT_LENGTH),
                "{seen:?}"
            );
            assert_eq!(seen.path, "/a");
        }
        proxy.summary().await;
    }
}

#[tokio::test]
async fn malformed_framing_and_header_bytes_get_400() {
    let heads = [
        "Content-Length: 3\r\nContent-Length: 4\r\n",
        "Content-Length: 3, 4\r\n",
        "Content-Length: +3\r\n",
        "Transfer-Encoding: gzip\r\n",
        "Transfer-Encoding: xchunked\r\n",
        "Transfer-Encoding: chunked, identity\r\n",
        "Bad Name: x\r\n",
        "X-Nul: a\0b\r\n",
        "X-Folded: a\r\n b\r\n",
        "X-Ctl: a\x01b\r\n",
    ];
    for head in heads {
        let (upstream, proxy) = setup().await;
        let wire = format!("POST /x HTTP/1.1\r\nHost: app.test\r\n{head}\r\nabcd");
        let answer = raw_exchange(proxy.addr, wire.as_bytes()).await;
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
            "{head:?} got {answer:?}"
        );
        assert!(upstream.log.raw().is_empty(), "{head:?} reached upstream");
    }
}

#[tokio::test]
async fn upgrades_and_connect_get_501() {
    let (upstream, proxy) = setup().await;
    let mut client = Client::h1(proxy.addr).await;
    let mut ws = client.request(Method::GET, "/ws", Bytes::new());
    let headers = ws.headers_mut();
    headers.insert(header::CONNECTION, "Upgrade".parse().expect("value"));
    headers.insert(header::UPGRADE, "websocket".parse().expect("value"));
    let reply = client.send(ws).await.expect("reply");
    assert_eq!(reply.status, StatusCode::NOT_IMPLEMENTED);
    let connect = Request::connect("app.test:443")
        .header(header::HOST, "app.test:443")
        .body(Full::default())
        .expect("request");
    let reply = client.send(connect).await.expect("reply");
    assert_eq!(reply.status, StatusCode::NOT_IMPLEMENTED);
    assert_eq!(client.get("/ok").await.status, StatusCode::OK);
    assert_eq!(upstream.log.paths(), ["/ok"]);
}

/// `Upgrade: h2c` may be ignored: the request is served as HTTP/1.1.
#[tokio::test]
async fn h2c_upgrade_is_served_as_http1() {
    let (upstream, proxy) = setup().await;
    let mut client = Client::h1(proxy.addr).await;
    let mut req = client.request(Method::GET, "/plain", Bytes::new());
    let headers = req.headers_mut();
    headers.insert(
        header::CONNECTION,
        "Upgrade, HTTP2-Settings".parse().expect("value"),
    );
    headers.insert(header::UPGRADE, "h2c".parse().expect("value"));
    headers.insert("http2-settings", "AAMAAABkAAQAAP__".parse().expect("value"));
    let reply = client.send(req).await.expect("reply");
    assert_eq!(reply.status, StatusCode::OK);
    let seen = &upstream.log.seen()[0];
    for name in ["upgrade", "http2-settings", "connection"] {
        assert!(!seen.headers.contains_key(name), "{name} forwarded");
    }
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_both_ways() {
    let (upstream, proxy) = setup().await;
    let mut client = Client::h1(proxy.addr).await;
    let mut req = client.request(Method::GET, "/hop", Bytes::new());
    let headers = req.headers_mut();
    for (name, value) in [
        ("connection", "keep-alive, X-Secret, TE"),
        ("x-secret", "1"),
        ("keep-alive", "timeout=5"),
        ("proxy-connection", "keep-alive"),
        ("te", "trailers, deflate"),
        ("x-kept", "1"),
    ] {
        headers.insert(name, value.parse().expect("value"));
    }
    let reply = client.send(req).await.expect("reply");
    let seen = &upstream.log.seen()[0];
    for name in ["connection", "x-secret", "keep-alive", "proxy-connection"] {
        assert!(!seen.headers.contains_key(name), "{name} forwarded");
    }
    assert_eq!(seen.headers["te"], "trailers");
    assert_eq!(seen.headers["x-kept"], "1");
    assert!(!reply.headers.contains_key("x-hop"), "{:?}", reply.headers);
    assert!(
        !reply.headers.contains_key("connection"),
        "{:?}",
        reply.headers
    );
}

/// A pod that closes after its response makes the proxy tell the client,
/// rather than let its next request fail with a 502.
#[tokio::test]
async fn upstream_close_is_passed_on_to_http1_client() {
    let (_upstream, proxy) = setup().await;
    let wire = b"GET /close HTTP/1.1\r\nHost: app.test\r\n\r\n";
    let answer = raw_exchange(proxy.addr, wire).await.to_lowercase();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert_eq!(proxy.summary().await.error, None);
}

#[tokio::test]
async fn half_closed_client_still_gets_its_response() {
    let (_upstream, proxy) = setup().await;
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let request = b"GET /slow HTTP/1.1\r\nHost: app.test\r\n\r\n";
    stream.write_all(request).await.expect("write");
    stream.shutdown().await.expect("half close");
    let answer = read_to_close(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.ends_with("GET /slow host=app.test len=0"),
        "{answer}"
    );
}

#[tokio::test]
async fn upstream_gone_gives_502_and_ends_connection_http1() {
    upstream_gone_gives_502(Client::h1).await;
}

#[tokio::test]
async fn upstream_gone_gives_502_and_ends_connection_http2() {
    upstream_gone_gives_502(Client::h2).await;
}

async fn upstream_gone_gives_502<F, Fut>(connect: F)
where
    F: FnOnce(SocketAddr) -> Fut,
    Fut: std::future::Future<Output = Client>,
{
    let upstream = Upstream::closing().await;
    let proxy = Proxy::start(&upstream, rbac).await;
    let mut client = connect(proxy.addr).await;
    let reply = client.get("/ok").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    // The proxy ends the connection without waiting for the client.
    let summary = proxy.summary().await;
    assert!(summary.error.is_some());
    let req = client.request(Method::GET, "/again", Bytes::new());
    assert!(client.send(req).await.is_err());
}

#[tokio::test]
async fn dropping_serve_closes_both_sockets_http1() {
    dropping_serve_closes_both_sockets(Client::h1).await;
}

#[tokio::test]
async fn dropping_serve_closes_both_sockets_http2() {
    dropping_serve_closes_both_sockets(Client::h2).await;
}

/// The caller cancels `serve` to close a connection on a policy change:
/// nothing may keep either socket open, not even hyper's spawned tasks.
async fn dropping_serve_closes_both_sockets<F, Fut>(connect: F)
where
    F: FnOnce(SocketAddr) -> Fut,
    Fut: std::future::Future<Output = Client>,
{
    let (upstream, upstream_eof) = Upstream::silent().await;
    let proxy = Proxy::start(&upstream, rbac).await;
    let mut client = connect(proxy.addr).await;
    let req = client.request(Method::GET, "/hang", Bytes::new());
    let pending = tokio::spawn(async move { client.send(req).await.map(|r| r.status) });
    let arrived = async {
        while !carries_request(&upstream.log.raw()) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    timeout(WAIT, arrived)
        .await
        .expect("request reaches upstream");
    proxy.task.abort();
    let answer = timeout(WAIT, pending).await.expect("client sees the close");
    assert!(answer.expect("client task").is_err());
    timeout(WAIT, upstream_eof)
        .await
        .expect("upstream sees the close")
        .expect("eof reported");
}

/// Whether `raw` holds an HTTP/1 request head or an HTTP/2 HEADERS frame.
fn carries_request(raw: &[u8]) -> bool {
    let Some(mut frames) = raw.strip_prefix(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".as_slice()) else {
        return raw.windows(4).any(|w| w == b"\r\n\r\n");
    };
    while let [a, b, c, kind, _, _, _, _, _, rest @ ..] = frames {
        if *kind == 0x1 {
            return true;
        }
        let len = usize::from(*a) << 16 | usize::from(*b) << 8 | usize::from(*c);
        frames = rest.get(len..).unwrap_or_default();
    }
    false
}

#[tokio::test]
async fn authorizer_can_be_a_trait_object() {
    let upstream = Upstream::http().await;
    let authorizer: Arc<dyn Authorizer> = Arc::new(rbac);
    let proxy = Proxy::start_arc(&upstream, authorizer).await;
    let mut client = Client::h1(proxy.addr).await;
    assert_eq!(client.get("/denied").await.status, StatusCode::FORBIDDEN);
}

#[test]
fn refusal_is_short_plain_text() {
    let response = refusal(StatusCode::FORBIDDEN, "RBAC: access denied\n");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "text/plain");
    assert_eq!(response.headers()[header::CONTENT_LENGTH], "20");
    assert_eq!(response.body().as_ref(), b"RBAC: access denied\n");
}

/// Request trailers arrive after the request was judged, so no header
/// policy sees them: they are dropped, never forwarded (HTTP/2, and HTTP/1
/// chunked with a `Trailer` header, which hyper would otherwise forward).
#[tokio::test]
async fn request_trailers_are_never_forwarded() {
    let (_upstream, proxy) = setup().await;
    let io = TokioIo::new(TcpStream::connect(proxy.addr).await.expect("connect"));
    let (mut tx, conn) = client2::handshake(TokioExecutor::new(), io)
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    let mut trailers = HeaderMap::new();
    trailers.insert("x-debug", "1".parse().expect("value"));
    let body = full("abc").with_trailers(std::future::ready(Some(Ok(trailers))));
    let req = Request::post(format!("http://{HOST}/trailers"))
        .body(body)
        .expect("request");
    let response = timeout(WAIT, tx.send_request(req))
        .await
        .expect("reply in time")
        .expect("reply");
    let reply = reply(response).await.expect("body");
    assert_eq!(reply.text(), "trailers=none", "HTTP/2");

    let (_upstream, proxy) = setup().await;
    let chunked = b"POST /trailers HTTP/1.1\r\nhost: app.test\r\nconnection: close\r\n\
        transfer-encoding: chunked\r\ntrailer: x-debug\r\n\r\n\
        3\r\nabc\r\n0\r\nx-debug: 1\r\n\r\n";
    let answer = raw_exchange(proxy.addr, chunked).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("trailers=none"), "HTTP/1: {answer}");
}

// ---- slow clients ----

/// Timers short enough for a test; the idle timeout is longer than the
/// header read timeout, so each scenario shows which of the two ended it.
const SHORT: Limits = Limits {
    header_read_timeout: Duration::from_millis(500),
    idle_timeout: Duration::from_millis(1500),
};

/// Writes `first`, then `drip` every 100 ms (at most 50 times) until a
/// write fails, then reads until the proxy closes.
async fn dribble(addr: SocketAddr, first: &[u8], drip: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect proxy");
    stream.write_all(first).await.expect("write");
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if stream.write_all(drip).await.is_err() {
            break;
        }
    }
    read_to_close(&mut stream).await
}

#[tokio::test]
async fn a_connection_that_never_sends_a_request_is_closed_after_the_header_read_timeout() {
    let upstream = Upstream::http().await;
    let proxy = Proxy::start_with_limits(&upstream, SHORT).await;
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    read_to_close(&mut stream).await;
    let summary = proxy.summary().await;
    assert_eq!(summary.requests, 0);
    let error = summary.error.expect("an error");
    assert!(error.contains("header read timeout"), "{error}");
    assert!(upstream.log.raw().is_empty());
}

#[tokio::test]
async fn slowloris_headers_are_cut_at_the_header_read_timeout() {
    let upstream = Upstream::http().await;
    let proxy = Proxy::start_with_limits(&upstream, SHORT).await;
    let head = b"GET /a HTTP/1.1\r\nHost: app.test\r\n";
    // Each drip is a complete header line, so bytes keep moving.
    let answer = dribble(proxy.addr, head, b"X-Drip: 1\r\n").await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer:?}"
    );
    let summary = proxy.summary().await;
    assert_eq!(summary.requests, 0, "{summary:?}");
    assert!(
        upstream.log.raw().is_empty(),
        "a partial head reached the pod"
    );
}

#[tokio::test]
async fn an_idle_http1_keep_alive_connection_is_closed_after_the_header_read_timeout() {
    let upstream = Upstream::http().await;
    let proxy = Proxy::start_with_limits(&upstream, SHORT).await;
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let request = b"GET /a HTTP/1.1\r\nHost: app.test\r\n\r\n";
    stream.write_all(request).await.expect("write");
    let answer = read_to_close(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    let summary = proxy.summary().await;
    assert_eq!(summary.requests, 1, "{summary:?}");
    // hyper's header read timer closed it, not the (longer) idle timeout.
    let error = summary.error.expect("an error");
    assert!(error.contains("read header"), "{error}");
}

#[tokio::test]
async fn a_stalled_request_body_is_cut_at_the_idle_timeout() {
    let upstream = Upstream::http().await;
    let proxy = Proxy::start_with_limits(&upstream, SHORT).await;
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let head = b"POST /echo HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100\r\n\r\n0123456789";
    stream.write_all(head).await.expect("write");
    read_to_close(&mut stream).await;
    let error = proxy.summary().await.error.expect("an error");
    assert!(error.contains("idle"), "{error}");
}

#[tokio::test]
async fn a_slow_body_that_keeps_moving_is_not_cut() {
    let upstream = Upstream::http().await;
    let proxy = Proxy::start_with_limits(&upstream, SHORT).await;
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let head =
        b"POST /echo HTTP/1.1\r\nHost: app.test\r\nContent-Length: 20\r\nConnection: close\r\n\r\n";
    stream.write_all(head).await.expect("write");
    // 2 s in all, longer than the idle timeout, one byte every 100 ms.
    for byte in b"abcdefghijklmnopqrst" {
        tokio::time::sleep(Duration::from_millis(100)).await;
        stream.write_all(&[*byte]).await.expect("write");
    }
    let answer = read_to_close(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(answer.ends_with("abcdefghijklmnopqrst"), "{answer:?}");
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_at_the_idle_timeout() {
    let upstream = Upstream::http().await;
    let proxy = Proxy::start_with_limits(&upstream, SHORT).await;
    let mut client = Client::h2(proxy.addr).await;
    assert_eq!(client.get("/a").await.status, StatusCode::OK);
    let summary = proxy.summary().await;
    assert_eq!(summary.requests, 1);
    let error = summary.error.expect("an error");
    assert!(error.contains("idle"), "{error}");
}

// ---- HTTP/1 smuggling ----

/// Request-line tricks, bare LF, obfuscated framing and a 1 MiB head: each
/// gets a 4xx (or is forwarded as parsed, re-framed; or, for a body that
/// breaks off, a 502), the connection closes after one answer, and
/// `/smuggled` never reaches the pod.
#[tokio::test]
async fn request_line_tricks_bare_lf_and_huge_heads_never_smuggle() {
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: app.test\r\n\r\n";
    let huge = format!("X-Big: {}\r\n", "a".repeat(1024 * 1024));
    let cases: Vec<(String, &str)> = vec![
        // Request line.
        (format!("GET /a HTTP/1.1 extra\r\nHost: app.test\r\n\r\n{smuggled}"), "400"),
        (format!("GET  /a HTTP/1.1\r\nHost: app.test\r\n\r\n{smuggled}"), "400"),
        (format!("GET /a\tHTTP/1.1\r\nHost: app.test\r\n\r\n{smuggled}"), "400"),
        (format!("GET /a HTTP/1.1\rHost: app.test\r\n\r\n{smuggled}"), "400"),
        (format!("GET /a?x=\x7f HTTP/1.1\r\nHost: app.test\r\n\r\n{smuggled}"), "400"),
        (format!("GET /a HTTP/2.0\r\nHost: app.test\r\n\r\n{smuggled}"), "400"),
        (format!("G\x00T /a HTTP/1.1\r\nHost: app.test\r\n\r\n{smuggled}"), "400"),
        // Bare LF: read as a line end (RFC 9112 §2.2 allows it), so the
        // head is parsed once and forwarded re-framed with CRLF.
        ("GET /a HTTP/1.1\nHost: app.test\nConnection: close\n\n".to_owned(), "200"),
        // A CR without LF inside a value, to hide a header.
        (format!("POST /a HTTP/1.1\r\nHost: app.test\r\nX-A: 1\rTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n{smuggled}"), "400"),
        // Obfuscated Transfer-Encoding spellings.
        (format!("POST /a HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding : chunked\r\nContent-Length: 0\r\n\r\n{smuggled}"), "400"),
        (format!("POST /a HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\nContent-Length: 0\r\n\r\n{smuggled}"), "400"),
        (format!("POST /a HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding:\x0bchunked\r\nContent-Length: 0\r\n\r\n{smuggled}"), "400"),
        (format!("POST /a HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: \"chunked\"\r\nContent-Length: 0\r\n\r\n{smuggled}"), "400"),
        // A chunk size that overflows, or carries junk: the head was
        // already forwarded (bodies stream), so the pod sees `/a` with a
        // body that breaks off, and the client a 502 and a close.
        (format!("POST /a HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFF1\r\n{smuggled}"), "502"),
        (format!("POST /a HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\n{smuggled}"), "502"),
        // Duplicate Content-Length that agree is still one length; that
        // disagree is refused (and in one field, too).
        (format!("POST /a HTTP/1.1\r\nHost: app.test\r\nContent-Length: 0\r\nContent-Length: {}\r\n\r\n{smuggled}", smuggled.len()), "400"),
        // 1 MiB header block.
        (format!("GET /a HTTP/1.1\r\nHost: app.test\r\n{huge}\r\n{smuggled}"), "431"),
    ];
    for (wire, status) in cases {
        let (upstream, proxy) = setup().await;
        let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
        // The proxy may close before taking all of a 1 MiB head.
        let _ = stream.write_all(wire.as_bytes()).await;
        let answer = read_to_close(&mut stream).await;
        let label = wire.get(..120).unwrap_or(&wire).escape_debug().to_string();
        let first = answer.get(9..12).unwrap_or("");
        assert!(
            answer.is_empty() && status != "200" || first == status,
            "{label}: expected {status}, got {answer:?}"
        );
        assert!(
            answer.matches("HTTP/1.1 ").count() <= 1,
            "{label}: {answer}"
        );
        let paths = upstream.log.paths();
        assert!(
            !paths.iter().any(|p| p.contains("smuggled")),
            "{label}: {paths:?}"
        );
        if status == "200" {
            assert_eq!(paths, ["/a"], "{label}");
        } else if status == "502" {
            assert!(paths.iter().all(|p| p == "/a"), "{label}: {paths:?}");
        } else {
            assert!(upstream.log.raw().is_empty(), "{label} reached upstream");
        }
        proxy.summary().await;
    }
}
#[path = "trace_tests.rs"]
mod trace_tests;

// ---- HTTP/2 held at a zero window ----

/// One HTTP/2 frame (RFC 9113 §4.1).
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("small payload");
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// HPACK literals without indexing, new name (RFC 7541 §6.2.2); short strings.
fn h2_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        for s in [name, value] {
            out.push(u8::try_from(s.len()).expect("short string"));
            out.extend_from_slice(s.as_bytes());
        }
    }
    out
}

/// A client that opens every stream window at zero, sends one request whose
/// response it never reads, then a PING every 200 ms: PINGs and their ACKs
/// move bytes but make no progress, so the idle timeout still ends it.
#[tokio::test]
async fn pings_do_not_keep_a_zero_window_connection_past_the_idle_timeout() {
    const SETTINGS: u8 = 0x4;
    const INITIAL_WINDOW_SIZE: u16 = 0x4;
    let upstream = Upstream::http().await;
    let proxy = Proxy::start_with_limits(&upstream, SHORT).await;
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let mut start = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    let zero_window = [
        INITIAL_WINDOW_SIZE.to_be_bytes().as_slice(),
        &0u32.to_be_bytes(),
    ]
    .concat();
    start.extend(h2_frame(SETTINGS, 0, 0, &zero_window));
    start.extend(h2_frame(SETTINGS, 0x1, 0, &[]));
    let head = h2_block(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", HOST),
        (":path", "/echo"),
    ]);
    start.extend(h2_frame(0x1, 0x4, 1, &head));
    start.extend(h2_frame(0x0, 0x1, 1, b"never read"));
    stream.write_all(&start).await.expect("write");
    let (mut reader, mut writer) = stream.into_split();
    let closed = tokio::spawn(async move {
        let mut sink = Vec::new();
        let _ = reader.read_to_end(&mut sink).await;
    });
    // 4 s of PINGs, well past the 1.5 s idle timeout.
    for n in 0..20u64 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if closed.is_finished()
            || writer
                .write_all(&h2_frame(0x6, 0, 0, &n.to_be_bytes()))
                .await
                .is_err()
        {
            break;
        }
    }
    assert!(closed.is_finished(), "PINGs kept the connection open");
    let summary = proxy.summary().await;
    assert_eq!(summary.requests, 1, "{summary:?}");
    let error = summary.error.expect("an error");
    assert!(error.contains("idle"), "{error}");
}
