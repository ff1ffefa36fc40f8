//! HTTP-aware serving of one accepted client connection to one upstream pod,
//! for ports whose authorization policy uses HTTP attributes.
//!
//! [`serve`] parses the client's requests (HTTP/1.1, or HTTP/2 with prior
//! knowledge, told apart by the first bytes), asks an [`Authorizer`] about
//! each one before any of it is forwarded, and sends the allowed ones over a
//! single upstream connection of the same HTTP version: HTTP/1 requests one
//! after another, HTTP/2 streams multiplexed. Bodies stream both ways.
//!
//! It fails closed: bytes that are not HTTP end the connection and are never
//! relayed raw. What hyper's parsers reject (invalid header bytes, differing
//! `Content-Length`s, a `Transfer-Encoding` other than `chunked`, folded
//! headers) gets a 400 or a closed connection. A request with both
//! `Content-Length` and `Transfer-Encoding` is read as chunked and its
//! `Content-Length` dropped (RFC 9112 §6.3), then the connection is closed
//! after the response, so bytes hidden behind it never become a request.
//! Every forwarded request is re-framed by hyper, so the pod sees the request
//! exactly as parsed and authorized.
//!
//! Hop-by-hop headers (`Connection` and the names it lists, `Keep-Alive`,
//! `Proxy-Connection`, `Transfer-Encoding`, `Upgrade`, and `TE` other than
//! `trailers`) are removed from requests before the authorizer sees them and
//! from responses, as RFC 9110 §7.6.1 requires of proxies. Request trailers
//! (HTTP/2, and HTTP/1 chunked) come after the authorizer decided, so they
//! are dropped, never forwarded; response trailers (gRPC status) pass.
//!
//! Not supported, answered with 501: `CONNECT`, HTTP/1 protocol upgrades
//! (WebSocket and the like), and HTTP/2 extended CONNECT (never enabled, so
//! the HTTP/2 layer refuses it). The one exception is `Upgrade: h2c`, which
//! RFC 9113 lets a server ignore: the request is served as plain HTTP/1.1.
//!
//! A refused request's answer comes from the proxy and the connection stays
//! usable. On HTTP/1 the refused request's body must still be read to keep
//! the connection in step: up to [`MAX_DISCARD`] bytes are read and thrown
//! away; a larger body (or one behind `Expect: 100-continue`) gets
//! `connection: close` instead. On HTTP/2 the unread stream is reset.
//!
//! Limits against hostile clients: [`Limits::header_read_timeout`] for a
//! request head (and for the first request at all, and between HTTP/1
//! keep-alive requests), [`Limits::idle_timeout`] for a connection that
//! makes no progress: no request head and no body byte either way (a stalled
//! body, an HTTP/2 connection left open or kept up with PINGs, a client that
//! stops reading), [`MAX_H1_BUF`] for an HTTP/1 head, and for
//! HTTP/2 [`MAX_HEADER_LIST`], [`MAX_CONCURRENT_STREAMS`], [`MAX_SEND_BUF`]
//! and the reset-stream caps ([`MAX_PENDING_ACCEPT_RESETS`],
//! [`MAX_LOCAL_ERROR_RESETS`]) against rapid reset.
//!
//! Dropping the future returned by [`serve`] closes both sockets: every task
//! hyper spawns for the connection belongs to it and is aborted with it.

use std::{
    convert::Infallible,
    future::Future,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::Duration,
};

use ::http::{
    header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, EXPECT},
    request::Parts,
    uri::{Authority, PathAndQuery, Scheme},
    HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use hyper::{
    body::{Body, Incoming},
    client::conn::{http1 as client1, http2 as client2},
    service::service_fn,
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
    sync::oneshot,
};

use self::{
    body::{Counted, NoTrailers},
    tasks::Tasks,
};
use crate::{
    drain::Drain,
    trace::{RequestSpan, Tracer},
};

mod body;
mod headers;
mod idle;
mod tasks;
#[cfg(test)]
mod tests;

/// Default [`Limits::header_read_timeout`].
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default [`Limits::idle_timeout`] (Envoy's stream idle timeout, and our
/// pool's idle timeout).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// HTTP/1 read buffer cap, which bounds the size of a request head.
pub const MAX_H1_BUF: usize = 64 * 1024;
/// HTTP/2 header list cap (decoded), per request.
pub const MAX_HEADER_LIST: u32 = 64 * 1024;
/// HTTP/2 streams a client may have open at once.
pub const MAX_CONCURRENT_STREAMS: u32 = 256;
/// HTTP/2 streams a client may open and reset before the proxy accepted
/// them; more is rapid reset (CVE-2023-44487) and ends the connection.
/// hyper's default, set here so it is not lost to a default change.
pub const MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// HTTP/2 streams the proxy may have to reset for a client's protocol
/// errors before the connection ends (the "MadeYouReset" class).
pub const MAX_LOCAL_ERROR_RESETS: usize = 1024;
/// HTTP/2 response bytes buffered per stream for a client that reads
/// slowly: at most [`MAX_CONCURRENT_STREAMS`] × 64 KiB = 16 MiB per
/// connection until the idle timeout ends it.
pub const MAX_SEND_BUF: usize = 64 * 1024;
/// Body bytes of a refused HTTP/1 request read and thrown away so the
/// connection stays usable; a larger body closes the connection instead.
pub const MAX_DISCARD: u64 = 256 * 1024;

/// The timers of one HTTP connection (config `http.headerReadTimeout` and
/// `http.idleTimeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Time a client has to send a complete request head; also the time it
    /// has to start its first request (which covers the version sniff), and
    /// the time an HTTP/1 connection may sit between requests.
    pub header_read_timeout: Duration,
    /// A connection that made no progress for this long (no request head
    /// arrived, no body byte moved either way) is closed, whatever it was
    /// doing: a stalled request body, an HTTP/2 connection with nothing to
    /// say but PINGs, a client that stopped reading.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: HEADER_READ_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
        }
    }
}

/// What to do with a request whose header names contain `_`. CGI, WSGI,
/// Rack and the servers built on them read `X_Debug` and `X-Debug` both as
/// `HTTP_X_DEBUG`, so an underscore spelling could pass a header policy
/// written for the dash one (Envoy's `headers_with_underscores_action`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HeadersWithUnderscores {
    /// Refuse the request with 400 (the default).
    #[default]
    Reject,
    /// Forward it; header policies then match either spelling (see the
    /// policy docs).
    Allow,
}

/// What the authorizer says about one request.
#[derive(Debug)]
pub enum Verdict {
    /// Forward the (possibly rewritten) request upstream.
    Forward,
    /// Answer the client with this response instead; the connection stays usable.
    Respond(Response<Bytes>),
}

/// Decides about every request before anything of it is forwarded.
pub trait Authorizer: Send + Sync + 'static {
    /// Called once per request, with hop-by-hop headers already removed. It
    /// may rewrite `parts` (the caller normalises the path and rewrites the
    /// URI, so the app sees exactly what was authorised).
    ///
    /// The URI is as the client sent it. HTTP/2 URIs carry scheme and
    /// authority (kept if a rewrite drops them). HTTP/1 URIs are usually a
    /// bare path with the target in `Host`, forwarded as received, but the
    /// absolute form (`http://other/path`) is legal too and reaches the pod
    /// as such: decide on both, or rewrite to a bare path.
    fn authorize(&self, parts: &mut Parts) -> Verdict;

    /// Called when the pod's response to a forwarded request arrives (or the
    /// proxy answers 502), with the request as forwarded and the time since
    /// it arrived: for per-request access logs. Default: nothing.
    fn responded(&self, _method: &Method, _path: &str, _status: StatusCode, _elapsed: Duration) {}

    /// The tracer that records a span per request (see [`crate::trace`]);
    /// `None` (the default) traces nothing and leaves `traceparent` alone.
    fn tracer(&self) -> Option<&Arc<Tracer>> {
        None
    }
}

impl<F> Authorizer for F
where
    F: Fn(&mut Parts) -> Verdict + Send + Sync + 'static,
{
    fn authorize(&self, parts: &mut Parts) -> Verdict {
        self(parts)
    }
}

/// Per-connection outcome, for the access log and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Requests read from the client.
    pub requests: u64,
    /// Requests answered by the proxy instead of the pod: the authorizer's
    /// refusals, 501s for unsupported requests, and 400s for an HTTP/2
    /// target the rewrite left unusable. (502s are not refusals.)
    pub refused: u64,
    /// Request body bytes passed client → pod (best effort).
    pub bytes_in: u64,
    /// Response body bytes passed pod → client (best effort).
    pub bytes_out: u64,
    /// The first thing that went wrong on either side, if anything did.
    pub error: Option<String>,
}

/// Serves `client` until it closes (or the upstream dies). HTTP/1.1 and
/// HTTP/2 (prior knowledge, h2c) are both detected from the client's first
/// bytes; the upstream connection speaks the same version as the client.
/// Bytes that are not HTTP end the connection (fail closed: never fall back
/// to raw relaying). Once `drain` starts, the connection winds down without
/// losing a request: HTTP/1 responses say `Connection: close` (the client
/// opens a new connection for its next request), HTTP/2 gets a GOAWAY
/// (streams in flight finish). A connection that has not sent its first
/// request yet, or stays idle, is left to the drain deadline: closing it
/// could lose a request already on the wire. `limits` holds its timers.
pub async fn serve<C, A>(
    client: C,
    upstream: TcpStream,
    authorizer: Arc<A>,
    limits: &Limits,
    drain: &Drain,
) -> Summary
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    A: Authorizer + ?Sized,
{
    // Owns every spawned task; dropped last, when this future ends or is dropped.
    let tasks = Tasks::new();
    let (closed_tx, closed_rx) = oneshot::channel();
    let shared = Arc::new(Shared {
        authorizer,
        upstream: tokio::sync::Mutex::new(Upstream::Idle(upstream, closed_tx)),
        counters: Arc::default(),
        exec: tasks.executor(),
        drain: drain.clone(),
        h2: AtomicBool::new(false),
        limits: *limits,
    });
    let client_error = drive(TokioIo::new(client), &shared, closed_rx).await;
    if let Some(e) = client_error {
        shared.counters.fail(e);
    }
    let summary = shared.counters.summary();
    drop(tasks);
    summary
}

/// Short plain-text response for refusals (e.g. 403 "RBAC: access denied\n",
/// 400 for a rejected path), with `content-type: text/plain` and
/// `content-length`.
pub fn refusal(status: StatusCode, body: &'static str) -> Response<Bytes> {
    let mut response = Response::new(Bytes::from_static(body.as_bytes()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    response
}

/// State shared by the requests of one connection.
struct Shared<A: ?Sized> {
    authorizer: Arc<A>,
    upstream: tokio::sync::Mutex<Upstream>,
    counters: Arc<Counters>,
    exec: tasks::Exec,
    drain: Drain,
    /// The client spoke HTTP/2 (known from its first request).
    h2: AtomicBool,
    limits: Limits,
}

/// The upstream connection: handshaken on the first request, because only
/// then is the client's HTTP version known.
enum Upstream {
    /// Not yet used; the sender will report when the connection ends.
    Idle(TcpStream, oneshot::Sender<Option<String>>),
    Http1(client1::SendRequest<ReqBody>),
    Http2(client2::SendRequest<ReqBody>),
    /// The handshake failed.
    Gone,
}

/// Counts for the [`Summary`], updated from every task of the connection.
#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    refused: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    error: Mutex<Option<String>>,
    /// Progress, for the idle timeout.
    activity: idle::Activity,
}

type ReqBody = NoTrailers<Counted<Incoming>>;
type ResBody = Either<Full<Bytes>, Counted<Incoming>>;

impl Counters {
    /// Keeps the first error: later ones are usually its consequences.
    fn fail(&self, error: String) {
        let mut slot = self.error.lock().unwrap_or_else(PoisonError::into_inner);
        slot.get_or_insert(error);
    }

    fn summary(&self) -> Summary {
        Summary {
            requests: self.requests.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            error: self
                .error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }
}

impl<A: Authorizer + ?Sized> Shared<A> {
    /// Sends `req` on the upstream connection, handshaking it first if this
    /// is the connection's first request.
    async fn send(&self, req: Request<ReqBody>) -> Result<Response<Incoming>, String> {
        let mut upstream = self.upstream.lock().await;
        // Stays `Gone` if the handshake fails, so later requests fail fast.
        *upstream = match std::mem::replace(&mut *upstream, Upstream::Gone) {
            Upstream::Idle(stream, closed) => self.handshake(stream, closed, req.version()).await?,
            ready => ready,
        };
        match &mut *upstream {
            // One request at a time: `ready` waits out the previous response.
            Upstream::Http1(tx) if req.version() != Version::HTTP_2 => {
                tx.ready().await.map_err(|e| e.to_string())?;
                let response = tx.send_request(req);
                drop(upstream);
                response.await.map_err(|e| e.to_string())
            }
            Upstream::Http2(tx) if req.version() == Version::HTTP_2 => {
                let mut tx = tx.clone();
                drop(upstream);
                tx.ready().await.map_err(|e| e.to_string())?;
                tx.send_request(req).await.map_err(|e| e.to_string())
            }
            _ => Err("upstream connection is gone".to_owned()),
        }
    }

    /// Starts the upstream connection in `version`; its driver task reports
    /// the end of the connection to [`drive`].
    async fn handshake(
        &self,
        stream: TcpStream,
        closed: oneshot::Sender<Option<String>>,
        version: Version,
    ) -> Result<Upstream, String> {
        let io = TokioIo::new(stream);
        let failed = |e: hyper::Error| format!("upstream handshake: {e}");
        if version == Version::HTTP_2 {
            let (tx, conn) = client2::Builder::new(self.exec.clone())
                .timer(TokioTimer::new())
                .handshake(io)
                .await
                .map_err(failed)?;
            self.exec.spawn(report_end(conn, closed));
            Ok(Upstream::Http2(tx))
        } else {
            let (tx, conn) = client1::handshake(io).await.map_err(failed)?;
            self.exec.spawn(report_end(conn, closed));
            Ok(Upstream::Http1(tx))
        }
    }
}

/// Runs the client connection until it ends; returns its error, if any.
/// Shuts it down gracefully (in-flight responses finish) when the upstream
/// connection ends or no request arrives in time; ends it at once when it
/// made no progress (see [`idle`]) for the idle timeout.
async fn drive<I, A>(
    io: TokioIo<I>,
    shared: &Arc<Shared<A>>,
    mut upstream_closed: oneshot::Receiver<Option<String>>,
) -> Option<String>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    A: Authorizer + ?Sized,
{
    let limits = shared.limits;
    let activity = &shared.counters.activity;
    let builder = server_builder(shared.exec.clone(), &limits);
    let service = {
        let shared = shared.clone();
        service_fn(move |req| handle(shared.clone(), req))
    };
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let first_request = tokio::time::sleep(limits.header_read_timeout);
    tokio::pin!(first_request);
    let idle = tokio::time::sleep_until(activity.deadline(limits.idle_timeout));
    tokio::pin!(idle);
    let (mut upstream_open, mut waiting_first, mut running) = (true, true, true);
    loop {
        tokio::select! {
            done = conn.as_mut() => return done.err().map(|e| format!("client: {e}")),
            // Only a connection known to be HTTP/2 is shut down here: an
            // undetected one would be cancelled with its first request, and
            // HTTP/1 ones close after a `Connection: close` response.
            () = shared.drain.draining(), if running => {
                running = false;
                if shared.h2.load(Ordering::Relaxed) {
                    conn.as_mut().graceful_shutdown();
                }
            }
            closed = &mut upstream_closed, if upstream_open => {
                upstream_open = false;
                if let Ok(Some(e)) = closed {
                    shared.counters.fail(format!("upstream: {e}"));
                }
                conn.as_mut().graceful_shutdown();
            }
            () = &mut first_request, if waiting_first => {
                waiting_first = false;
                if shared.counters.requests.load(Ordering::Relaxed) == 0 {
                    shared.counters.fail("client: no request before the header read timeout".to_owned());
                    conn.as_mut().graceful_shutdown();
                }
            }
            () = &mut idle => {
                let deadline = activity.deadline(limits.idle_timeout);
                if deadline <= tokio::time::Instant::now() {
                    // Not graceful: a graceful end waits for the very
                    // streams that stalled.
                    return Some(format!("client: idle for {:?}", limits.idle_timeout));
                }
                idle.as_mut().reset(deadline);
            }
        }
    }
}

/// The client side: both versions, with the limits from the module docs.
fn server_builder(exec: tasks::Exec, limits: &Limits) -> auto::Builder<tasks::Exec> {
    let mut builder = auto::Builder::new(exec);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_H1_BUF)
        // A client that shuts its write side after the last request still
        // gets the responses to it.
        .half_close(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESETS)
        .max_send_buf_size(MAX_SEND_BUF);
    builder
}

/// Drives an upstream connection and reports how it ended.
async fn report_end<F, E>(conn: F, closed: oneshot::Sender<Option<String>>)
where
    F: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let error = conn.await.err().map(|e| e.to_string());
    let _ = closed.send(error);
}

/// One request: refuse it here, or forward it and relay the response.
async fn handle<A: Authorizer + ?Sized>(
    shared: Arc<Shared<A>>,
    req: Request<Incoming>,
) -> Result<Response<ResBody>, Infallible> {
    shared.counters.requests.fetch_add(1, Ordering::Relaxed);
    shared.counters.activity.touch();
    let (mut parts, body) = req.into_parts();
    let h1 = parts.version != Version::HTTP_2;
    if !h1 {
        shared.h2.store(true, Ordering::Relaxed);
    }
    let discardable = can_discard(&parts, &body);
    // The span rides in the extensions while the authorizer judges, so it
    // can note its decision there.
    if let Some(tracer) = shared.authorizer.tracer() {
        let span = RequestSpan::start(tracer, &parts);
        parts.extensions.insert(span);
    }
    let verdict = admit(&shared, &mut parts);
    let span = parts.extensions.remove::<RequestSpan>();
    if let Verdict::Respond(response) = verdict {
        shared.counters.refused.fetch_add(1, Ordering::Relaxed);
        if let Some(s) = span {
            s.finish(response.status());
        }
        let response = answer_here(&shared, response, body, h1, discardable);
        return Ok(close_if_draining(&shared.drain, response, h1));
    }
    if let Some(s) = &span {
        s.inject(&mut parts.headers);
    }
    let started = std::time::Instant::now();
    let (method, path) = (parts.method.clone(), parts.uri.path().to_owned());
    let body = NoTrailers(Counted::new(body, shared.counters.clone(), |c| &c.bytes_in));
    let sent = shared.send(Request::from_parts(parts, body)).await;
    shared.counters.activity.touch();
    let response = match sent {
        Ok(response) => relay_response(response, &shared.counters, h1),
        Err(e) => bad_gateway(&shared.counters, e, h1),
    };
    shared
        .authorizer
        .responded(&method, &path, response.status(), started.elapsed());
    if let Some(s) = span {
        s.finish(response.status());
    }
    Ok(close_if_draining(&shared.drain, response, h1))
}

/// While the proxy drains, an HTTP/1 response tells the client to take its
/// next request elsewhere (hyper then closes after writing it).
fn close_if_draining(
    drain: &Drain,
    mut response: Response<ResBody>,
    h1: bool,
) -> Response<ResBody> {
    if h1 && drain.is_draining() {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Whether a refused HTTP/1 request's body is worth reading and discarding
/// to keep the connection: not if it is large, nor if the client waits for
/// `100 Continue` (reading the body would invite it to send it).
fn can_discard(parts: &Parts, body: &Incoming) -> bool {
    let expects_continue = parts.headers.contains_key(EXPECT);
    !expects_continue && body.size_hint().lower() <= MAX_DISCARD
}

/// A response made here instead of forwarding. An HTTP/1 request body left
/// unread makes hyper close the connection, often with a reset that loses
/// the response: small bodies are read and thrown away instead, so the
/// client can go on; for the rest the client is told the connection closes.
fn answer_here<A: ?Sized>(
    shared: &Shared<A>,
    response: Response<Bytes>,
    body: Incoming,
    h1: bool,
    discardable: bool,
) -> Response<ResBody> {
    let mut response = response.map(|b| Either::Left(Full::new(b)));
    // HTTP/2 resets the unread request stream by itself, harmlessly.
    if !h1 || body.is_end_stream() {
        return response;
    }
    if discardable {
        let within = shared.limits.header_read_timeout;
        shared.exec.spawn(discard(body, within));
    } else {
        let close = HeaderValue::from_static("close");
        response.headers_mut().insert(CONNECTION, close);
    }
    response
}

/// Reads up to [`MAX_DISCARD`] body bytes, for at most `within` (the header
/// read timeout); dropping the body early makes hyper close.
async fn discard(mut body: Incoming, within: Duration) {
    let mut left = MAX_DISCARD;
    let reading = async {
        while let Some(Ok(frame)) = body.frame().await {
            let len = frame.data_ref().map_or(0, |d| d.len() as u64);
            match left.checked_sub(len) {
                Some(rest) => left = rest,
                None => return,
            }
        }
    };
    let _ = tokio::time::timeout(within, reading).await;
}

/// Protocol checks, hop-by-hop removal and the authorizer, in that order.
fn admit<A: Authorizer + ?Sized>(shared: &Shared<A>, parts: &mut Parts) -> Verdict {
    if let Some(why) = headers::unsupported(parts) {
        return Verdict::Respond(refusal(StatusCode::NOT_IMPLEMENTED, why));
    }
    headers::strip_hop_by_hop(&mut parts.headers);
    let origin = (parts.uri.scheme().cloned(), parts.uri.authority().cloned());
    if let Verdict::Respond(response) = shared.authorizer.authorize(parts) {
        return Verdict::Respond(response);
    }
    if parts.version != Version::HTTP_2 {
        // A proxy sends its own version (RFC 9110 §6.2).
        parts.version = Version::HTTP_11;
    } else if !keep_authority(&mut parts.uri, origin) {
        return Verdict::Respond(refusal(StatusCode::BAD_REQUEST, "invalid request target\n"));
    }
    Verdict::Forward
}

/// HTTP/2 requests carry their target's authority in the URI: put it back if
/// the authorizer rewrote the URI to a bare path. False if that fails.
fn keep_authority(uri: &mut Uri, origin: (Option<Scheme>, Option<Authority>)) -> bool {
    let (scheme, Some(authority)) = origin else {
        return true;
    };
    if uri.authority().is_some() {
        return true;
    }
    let mut parts = std::mem::take(uri).into_parts();
    parts.scheme = Some(scheme.unwrap_or(Scheme::HTTP));
    parts.authority = Some(authority);
    parts
        .path_and_query
        .get_or_insert(PathAndQuery::from_static("/"));
    Uri::from_parts(parts).map(|rebuilt| *uri = rebuilt).is_ok()
}

/// The pod's response, minus hop-by-hop headers. An HTTP/1 pod that closes
/// after this response makes the client close too, rather than have its
/// next request fail.
fn relay_response(
    response: Response<Incoming>,
    counters: &Arc<Counters>,
    h1: bool,
) -> Response<ResBody> {
    // Upgrades were never requested, so a 101 is a broken upstream.
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        return bad_gateway(counters, "upstream switched protocols".to_owned(), h1);
    }
    let (mut parts, body) = response.into_parts();
    let close = h1 && headers::asks_to_close(&parts.headers);
    headers::strip_hop_by_hop(&mut parts.headers);
    if close {
        parts
            .headers
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    if h1 {
        parts.version = Version::HTTP_11;
    }
    let body = Counted::new(body, counters.clone(), |c| &c.bytes_out);
    Response::from_parts(parts, Either::Right(body))
}

/// 502 for a request the upstream connection could not carry. HTTP/1
/// clients are told to close; HTTP/2 clients get a GOAWAY once [`drive`]
/// hears the upstream connection ended.
fn bad_gateway(counters: &Counters, error: String, h1: bool) -> Response<ResBody> {
    counters.fail(format!("upstream: {error}"));
    let mut response = refusal(StatusCode::BAD_GATEWAY, "upstream connection failed\n");
    if h1 {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response.map(|b| Either::Left(Full::new(b)))
}
