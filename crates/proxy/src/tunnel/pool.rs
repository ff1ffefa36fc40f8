//! Tunnel client: pooled mTLS + HTTP/2 connections to other node proxies.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Instant,
};

use bytes::Bytes;
use h2::{
    client::{ResponseFuture, SendRequest},
    Reason, SendStream,
};
use hyper::{Method, Request, StatusCode};
use tokio::{net::TcpStream, time::timeout};
use tokio_rustls::TlsConnector;

use super::{
    stream::{Stream, StreamSlot},
    CONNECTION_WINDOW, EARLY_DATA, HANDSHAKE_TIMEOUT, IDLE_TIMEOUT, MAX_CONNECTIONS_PER_KEY,
    MAX_FRAME, MAX_STREAMS_PER_CONNECTION, SEND_BUFFER, SPREAD_STREAMS, STREAM_WINDOW,
};
use nodeward_identity::{
    tls::TrustBundle,
    tls_config::{self, server_name},
    Issued, SpiffeId,
};

use crate::{
    telemetry::{Observer, Side},
    trace::TraceParent,
};

/// Why a tunnel stream could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TunnelError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to {0}: timed out")]
    Timeout(SocketAddr),
    #[error("TLS handshake with {addr} failed ({reason}): {source}")]
    Handshake {
        addr: SocketAddr,
        reason: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("building the TLS config: {0}")]
    Config(#[from] rustls::Error),
    #[error("HTTP/2: {0}")]
    Http(#[from] h2::Error),
    #[error("the caller's connection failed while its stream was opened: {0}")]
    Caller(#[source] std::io::Error),
    #[error("tunnel refused the stream: {status} {message}")]
    Status { status: StatusCode, message: String },
}

impl TunnelError {
    /// Stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Connect { .. } => "connect",
            Self::Timeout(_) => "timeout",
            Self::Handshake { reason, .. } => reason,
            Self::Config(_) => "config",
            Self::Http(_) => "http2",
            Self::Caller(_) => "caller_reset",
            // The destination's policy said no: not a failure of the path.
            Self::Status { status, .. } if *status == StatusCode::FORBIDDEN => "denied",
            Self::Status { status, .. } if *status == StatusCode::TOO_MANY_REQUESTS => {
                "rate_limited"
            }
            Self::Status { .. } => "refused",
        }
    }
}

/// Where a stream goes and as whom.
pub struct Target<'a> {
    /// The calling workload's current certificate.
    pub source: &'a Arc<Issued>,
    /// The identity the destination must present.
    pub destination: &'a SpiffeId,
    /// The node running the destination, and its proxy's tunnel address.
    pub node: &'a str,
    pub node_addr: SocketAddr,
    /// The original destination (the CONNECT authority).
    pub authority: SocketAddr,
    /// The calling pod's address, sent as `Forwarded: for=`.
    pub client_ip: IpAddr,
    /// The source proxy's span of this hop, sent as `traceparent` when the
    /// connection is traced.
    pub trace: Option<TraceParent>,
    /// The calling pod's socket: what it sends before the destination
    /// proxy answers goes along with the CONNECT (optimistic CONNECT).
    pub caller: Option<&'a TcpStream>,
}

/// Shards of the key map: checkouts for different keys mostly take
/// different locks, so no lock is shared by every new connection.
const SHARDS: usize = 16;

/// Client-side connection pool.
pub struct Pool {
    /// Each shard maps a key's hash to the keys with that hash (almost
    /// always one), so a checkout finds its slot without building a key.
    shards: [Mutex<Shard>; SHARDS],
    hasher: RandomState,
    bundle: Arc<TrustBundle>,
    observer: Arc<Observer>,
}

/// A shard: key hash → the keys with that hash and their slots.
type Shard = HashMap<u64, Vec<(Key, Arc<Slot>)>>;

struct Key {
    source: SpiffeId,
    destination: SpiffeId,
    node: String,
    addr: SocketAddr,
}

impl Key {
    fn of(target: &Target<'_>) -> Self {
        Self {
            source: target.source.svid.id.clone(),
            destination: target.destination.clone(),
            node: target.node.to_owned(),
            addr: target.node_addr,
        }
    }

    fn is(&self, target: &Target<'_>) -> bool {
        self.addr == target.node_addr
            && self.node == target.node
            && &self.destination == target.destination
            && self.source == target.source.svid.id
    }
}

/// One key's connections. The async lock is held while a handshake runs,
/// so a burst of streams for the same key waits for one handshake instead of
/// starting many; other keys are not affected.
#[derive(Default)]
struct Slot {
    conns: tokio::sync::Mutex<Vec<Pooled>>,
}

struct Pooled {
    send: SendRequest<Bytes>,
    /// The connection's task ended (closed by either side, or its PINGs
    /// went unanswered).
    closed: Arc<AtomicBool>,
    streams: Arc<AtomicUsize>,
    generation: u64,
    last_used: Instant,
    /// A stream was refused on it: take no more.
    broken: Arc<AtomicBool>,
}

impl Pool {
    /// An empty pool verifying servers against `bundle`.
    pub fn new(bundle: Arc<TrustBundle>, observer: Arc<Observer>) -> Self {
        Self {
            shards: Default::default(),
            hasher: RandomState::new(),
            bundle,
            observer,
        }
    }

    /// Opens a CONNECT stream to `target` on a pooled connection that uses
    /// the source's current certificate, spreading streams over a few
    /// connections (see `choose`). Bytes the caller sends before the
    /// destination proxy answers go with the CONNECT (see [`Early`]).
    pub async fn connect(&self, target: Target<'_>) -> Result<Stream, TunnelError> {
        let (send, slot, broken) = self.checkout(&target, false).await?;
        let mut early = Early::new(target.caller);
        match open_stream(send, &target, &mut early).await {
            Ok((send, response)) => return Self::accepted(send, response, early, slot),
            Err(e) if !early.may_retry(&e) => return Err(e.into()),
            // A pooled connection the peer is closing (GOAWAY: its proxy is
            // stopping or handing over, or the connection reached its
            // maximum age) refuses new streams: retire it and try once more
            // on a fresh connection.
            Err(_) => {
                broken.store(true, Ordering::Relaxed);
                drop(slot);
            }
        }
        // On a connection opened for this stream: the key's other pooled
        // connections may have had the same GOAWAY (a server closes
        // connections of the same age together), and we cannot tell until
        // a stream fails on them.
        let (send, slot, _) = self.checkout(&target, true).await?;
        let (send, response) = open_stream(send, &target, &mut early).await?;
        Self::accepted(send, response, early, slot)
    }

    /// The stream, if the destination proxy answered `200`.
    fn accepted(
        send: SendStream<Bytes>,
        response: hyper::Response<h2::RecvStream>,
        early: Early,
        slot: StreamSlot,
    ) -> Result<Stream, TunnelError> {
        if response.status() != StatusCode::OK {
            let message = response
                .headers()
                .get(super::ERROR_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            return Err(TunnelError::Status {
                status: response.status(),
                message,
            });
        }
        let recv = response.into_body();
        Ok(Stream::opened(send, recv, early.sent(), slot))
    }

    /// Closes idle pooled connections and forgets empty keys.
    pub fn prune(&self) {
        let now = Instant::now();
        for shard in &self.shards {
            let mut keys = shard.lock().unwrap_or_else(|p| p.into_inner());
            keys.retain(|_, same_hash| {
                same_hash.retain(|(_, slot)| worth_keeping(slot, now));
                !same_hash.is_empty()
            });
        }
    }

    /// A connection for the next stream to `target`: a pooled one (see
    /// `choose`), or with `fresh` one opened for it.
    async fn checkout(
        &self,
        target: &Target<'_>,
        fresh: bool,
    ) -> Result<(SendRequest<Bytes>, StreamSlot, Arc<AtomicBool>), TunnelError> {
        let slot = self.slot(target);
        let mut conns = slot.conns.lock().await;
        let now = Instant::now();
        let generation = target.source.generation;
        conns.retain(|c| usable(c, now) && c.generation == generation);
        let loads = conns.iter().map(|c| c.streams.load(Ordering::Relaxed));
        let choice = if fresh { Choice::Open } else { choose(loads) };
        let index = match choice {
            Choice::Reuse(index) => index,
            Choice::Open => {
                conns.push(Box::pin(self.open(target)).await?);
                conns.len() - 1
            }
            // A connection opened only to spread load must not fail a
            // stream that fits on an existing one.
            Choice::Spread(fallback) => match Box::pin(self.open(target)).await {
                Ok(fresh) => {
                    conns.push(fresh);
                    conns.len() - 1
                }
                Err(e) => {
                    tracing::debug!(error = %e, "extra tunnel connection failed; sharing one");
                    fallback
                }
            },
        };
        let pooled = &mut conns[index];
        pooled.last_used = now;
        pooled.streams.fetch_add(1, Ordering::Relaxed);
        Ok((
            pooled.send.clone(),
            StreamSlot(pooled.streams.clone()),
            pooled.broken.clone(),
        ))
    }

    /// The key's slot, made on first use. Only a new key allocates.
    fn slot(&self, target: &Target<'_>) -> Arc<Slot> {
        let hash = self.hasher.hash_one((
            target.source.svid.id.as_str(),
            target.destination.as_str(),
            target.node,
            target.node_addr,
        ));
        let shard = &self.shards[hash as usize % SHARDS];
        let mut keys = shard.lock().unwrap_or_else(|p| p.into_inner());
        let same_hash = keys.entry(hash).or_insert_with(|| Vec::with_capacity(1));
        if let Some((_, slot)) = same_hash.iter().find(|(key, _)| key.is(target)) {
            return slot.clone();
        }
        let slot = Arc::new(Slot::default());
        same_hash.push((Key::of(target), slot.clone()));
        slot
    }

    /// How many keys hold pooled connections (for tests).
    #[cfg(test)]
    fn keys(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .expect("shard")
                    .values()
                    .map(Vec::len)
                    .sum::<usize>()
            })
            .sum()
    }

    /// TCP connect, TLS handshake as the source identity, HTTP/2 handshake.
    ///
    /// Its future is about 5 KiB (the TLS and HTTP/2 handshakes, by
    /// `-Zprint-type-sizes` in a release build); callers
    /// box it, so that it is not inlined into every relayed connection's
    /// task, which would keep that size for the connection's whole life
    /// although a new tunnel connection is rare.
    async fn open(&self, target: &Target<'_>) -> Result<Pooled, TunnelError> {
        let addr = target.node_addr;
        let started = Instant::now();
        let tcp = match timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(TunnelError::Connect { addr, source }),
            Err(_) => return Err(TunnelError::Timeout(addr)),
        };
        let _ = tcp.set_nodelay(true);
        let config = tls_config::client_config(
            target.source,
            self.bundle.clone(),
            target.destination.clone(),
            target.node.to_owned(),
        )?;
        let name = server_name(target.destination);
        let handshake = TlsConnector::from(config).connect(name, tcp);
        let tls = match timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => {
                let reason = tls_config::io_error_reason(&source);
                return Err(TunnelError::Handshake {
                    addr,
                    reason,
                    source,
                });
            }
            Err(_) => return Err(TunnelError::Timeout(addr)),
        };
        self.observer
            .tunnel_handshake(Side::Client, started.elapsed().as_secs_f64());
        let (send, mut conn) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .max_send_buffer_size(SEND_BUFFER)
            .max_header_list_size(MAX_HEADER_LIST)
            .enable_push(false)
            .handshake::<_, Bytes>(tls)
            .await?;
        let closed = Arc::new(AtomicBool::new(false));
        let ping = conn.ping_pong();
        let ended = closed.clone();
        tokio::spawn(async move {
            tokio::select! {
                served = &mut conn => if let Err(e) = served {
                    tracing::debug!(error = %e, "tunnel connection ended");
                },
                why = super::keepalive(ping) => tracing::debug!(why, "tunnel connection closed"),
            }
            ended.store(true, Ordering::Relaxed);
        });
        Ok(Pooled {
            send,
            closed,
            streams: Arc::new(AtomicUsize::new(0)),
            generation: target.source.generation,
            last_used: started,
            broken: Arc::new(AtomicBool::new(false)),
        })
    }
}

/// Largest header block accepted from a tunnel server (its responses carry
/// a status and at most an error header).
const MAX_HEADER_LIST: u32 = 16 * 1024;

/// Sends the CONNECT on `send`'s connection, then the caller's first bytes
/// without waiting for the answer (see [`Early`]); returns the stream's
/// sending half and the answer.
async fn open_stream(
    send: SendRequest<Bytes>,
    target: &Target<'_>,
    early: &mut Early<'_>,
) -> Result<(SendStream<Bytes>, hyper::Response<h2::RecvStream>), StreamError> {
    let mut send = send.ready().await.map_err(StreamError::NotSent)?;
    let (response, mut stream) = send
        .send_request(connect_request(target), false)
        .map_err(StreamError::NotSent)?;
    let response = early.send_awaiting(&mut stream, response).await?;
    Ok((stream, response))
}

/// How opening a stream failed.
#[derive(Debug)]
enum StreamError {
    /// Before the CONNECT was sent: the connection takes no new streams.
    NotSent(h2::Error),
    /// After it: refused, reset or lost with its connection.
    Sent(h2::Error),
    /// Reading the caller's first bytes failed (it reset its connection).
    Caller(std::io::Error),
}

impl From<StreamError> for TunnelError {
    fn from(e: StreamError) -> Self {
        match e {
            StreamError::NotSent(e) | StreamError::Sent(e) => Self::Http(e),
            StreamError::Caller(source) => Self::Caller(source),
        }
    }
}

/// Optimistic CONNECT: the caller's first bytes (one read, up to
/// [`EARLY_DATA`]) go in a DATA frame right behind the CONNECT, so a new
/// connection's first request reaches the destination one round trip
/// sooner. The destination proxy reads nothing of a stream before it
/// answers `200` (`h2` holds the frame in the stream's window), so on a
/// refusal the bytes are dropped with the stream: none reaches a pod that
/// policy denies, and the caller's connection is reset as before.
///
/// A caller that speaks second (the server talks first) sends nothing, and
/// waits for nothing here: the CONNECT's answer is awaited alongside.
struct Early<'a> {
    caller: Option<&'a TcpStream>,
    /// The bytes read, kept to send again if the stream has to be retried.
    data: Option<Bytes>,
    /// They were queued on the current stream (`h2` took them): they may
    /// have reached the destination proxy.
    on_wire: bool,
}

impl<'a> Early<'a> {
    fn new(caller: Option<&'a TcpStream>) -> Self {
        Self {
            caller,
            data: None,
            on_wire: false,
        }
    }

    /// Bytes sent ahead of the answer.
    fn sent(&self) -> u64 {
        match &self.data {
            Some(d) if self.on_wire => d.len() as u64,
            _ => 0,
        }
    }

    /// Queues the bytes read on `stream`. A stream that closed meanwhile
    /// (refused, reset) refuses them: they did not leave, and its answer
    /// says what happened.
    fn send(&mut self, stream: &mut SendStream<Bytes>) {
        if let Some(data) = &self.data {
            self.on_wire = stream.send_data(data.clone(), false).is_ok();
        }
    }

    /// Whether a stream that failed with `e` may be opened again elsewhere:
    /// always if the CONNECT never left, or if nothing was sent with it
    /// (the destination forwards nothing before its answer); with early
    /// bytes sent, only if the peer proves it never processed the stream
    /// (REFUSED_STREAM, or a graceful GOAWAY below its id): otherwise they
    /// might have reached the destination and would be sent twice.
    fn may_retry(&self, e: &StreamError) -> bool {
        match e {
            StreamError::NotSent(_) => true,
            StreamError::Caller(_) => false,
            StreamError::Sent(_) if !self.on_wire => true,
            StreamError::Sent(e) => {
                (e.reason() == Some(Reason::REFUSED_STREAM) && e.is_remote())
                    || (e.is_go_away() && e.is_remote() && e.reason() == Some(Reason::NO_ERROR))
            }
        }
    }

    /// Sends what the caller has sent or sends before `response` arrives
    /// (bytes read before, on a retried stream), and returns the response.
    async fn send_awaiting(
        &mut self,
        stream: &mut SendStream<Bytes>,
        response: ResponseFuture,
    ) -> Result<hyper::Response<h2::RecvStream>, StreamError> {
        if self.data.is_some() {
            self.send(stream);
            return response.await.map_err(StreamError::Sent);
        }
        let Some(caller) = self.caller else {
            return response.await.map_err(StreamError::Sent);
        };
        tokio::pin!(response);
        loop {
            tokio::select! {
                biased;
                answer = &mut response => return answer.map_err(StreamError::Sent),
                readable = caller.readable() => {
                    readable.map_err(StreamError::Caller)?;
                    match read_now(caller) {
                        Ok(None) => continue,
                        // The caller ended its side at once: the relay passes that on.
                        Ok(Some(data)) if data.is_empty() => {}
                        // Kept before it is sent: a stream that refuses it
                        // is retried with it.
                        Ok(Some(data)) => {
                            self.data = Some(data);
                            self.send(stream);
                        }
                        Err(e) => return Err(StreamError::Caller(e)),
                    }
                    // One read only: the rest waits for the answer.
                    return response.await.map_err(StreamError::Sent);
                }
            }
        }
    }
}

/// One read of what the caller has sent: `None` if nothing yet (a spurious
/// readiness); an empty chunk at its end of stream, which stays readable
/// for the relay (a TCP end of stream is read again).
fn read_now(caller: &TcpStream) -> std::io::Result<Option<Bytes>> {
    // On the stack, not held across an await: the connection's task does
    // not grow by it.
    let mut buf = [0u8; EARLY_DATA];
    match caller.try_read(&mut buf) {
        Ok(0) => Ok(Some(Bytes::new())),
        Ok(n) => Ok(Some(Bytes::copy_from_slice(&buf[..n]))),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}

/// Where `checkout` puts the next stream of a key.
#[derive(Debug, PartialEq, Eq)]
enum Choice {
    /// On the pooled connection at this index.
    Reuse(usize),
    /// On a connection opened for it.
    Open,
    /// On a new connection, to spread load; on the one at this index (which
    /// has room) if opening fails.
    Spread(usize),
}

/// Picks a connection given each usable connection's active streams.
/// The least-loaded one is used, unless it already carries
/// [`SPREAD_STREAMS`] and the key may open more: one connection's crypto
/// runs on one core, so bulk streams go faster spread. At
/// [`MAX_CONNECTIONS_PER_KEY`] streams pack up to
/// [`MAX_STREAMS_PER_CONNECTION`]; past that a connection is opened anyway,
/// because the pool never refuses a stream.
fn choose(loads: impl ExactSizeIterator<Item = usize>) -> Choice {
    let count = loads.len();
    // `min_by_key` keeps the first of equals: older connections fill first.
    let Some((index, load)) = loads.enumerate().min_by_key(|&(_, l)| l) else {
        return Choice::Open;
    };
    if load >= MAX_STREAMS_PER_CONNECTION {
        Choice::Open
    } else if load >= SPREAD_STREAMS && count < MAX_CONNECTIONS_PER_KEY {
        Choice::Spread(index)
    } else {
        Choice::Reuse(index)
    }
}

/// Whether `prune` keeps a key's slot: it has usable connections, or a
/// checkout holds it between finding and locking it (slots are handed out
/// only under the shard lock `prune` holds; forgetting one would leave that
/// checkout's new connection in a slot nobody finds), or it is in use.
fn worth_keeping(slot: &Arc<Slot>, now: Instant) -> bool {
    if Arc::strong_count(slot) > 1 {
        return true;
    }
    match slot.conns.try_lock() {
        Ok(mut conns) => {
            conns.retain(|c| usable(c, now));
            !conns.is_empty()
        }
        Err(_) => true,
    }
}

fn usable(c: &Pooled, now: Instant) -> bool {
    !c.closed.load(Ordering::Relaxed)
        && !c.broken.load(Ordering::Relaxed)
        && (c.streams.load(Ordering::Relaxed) > 0 || now.duration_since(c.last_used) < IDLE_TIMEOUT)
}

fn connect_request(target: &Target<'_>) -> Request<()> {
    let forwarded = match target.client_ip {
        IpAddr::V4(ip) => format!("for={ip}"),
        IpAddr::V6(ip) => format!("for=\"[{ip}]\""),
    };
    let mut request = Request::new(());
    *request.method_mut() = Method::CONNECT;
    *request.uri_mut() = hyper::Uri::from(
        hyper::http::uri::Authority::try_from(target.authority.to_string())
            .unwrap_or_else(|_| unreachable!("a socket address is a valid authority")),
    );
    if let Ok(v) = hyper::http::HeaderValue::try_from(forwarded) {
        request.headers_mut().insert(hyper::header::FORWARDED, v);
    }
    if let Some(trace) = &target.trace {
        let headers = request.headers_mut();
        headers.insert(crate::trace::context::TRACEPARENT, trace.to_header());
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::{collections::BTreeSet, time::Duration, time::SystemTime};

    use nodeward_identity::{ca, CertStore, NodeCa};

    use crate::telemetry::Discard;

    fn id(sa: &str) -> SpiffeId {
        SpiffeId::parse(&format!("spiffe://cluster.local/ns/shop/sa/{sa}")).expect("id")
    }

    /// Current certificates of `accounts`, minted by a fresh node CA, and
    /// its trust bundle.
    fn issued(accounts: &[&str]) -> (Vec<Arc<Issued>>, Arc<TrustBundle>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("ca");
        ca::init("cluster.local", &root, false).expect("ca init");
        let out = dir.path().join("node-a");
        let hour = Duration::from_secs(3600);
        ca::issue_node(&root, "node-a", &out, 24 * hour, false).expect("issue node");
        let node = NodeCa::load(&out).expect("load node");
        let bundle = node.trust_bundle();
        let store = CertStore::new(node, 24 * hour);
        let wanted: BTreeSet<SpiffeId> = accounts.iter().map(|a| id(a)).collect();
        store.sync(&wanted, SystemTime::now()).expect("mint");
        let certs = accounts
            .iter()
            .map(|a| store.get(&id(a)).expect("issued"))
            .collect();
        (certs, bundle)
    }

    fn target<'a>(
        source: &'a Arc<Issued>,
        destination: &'a SpiffeId,
        node: &'a str,
        port: u16,
    ) -> Target<'a> {
        Target {
            source,
            destination,
            node,
            node_addr: SocketAddr::from(([10, 99, 0, 2], port)),
            authority: SocketAddr::from(([10, 20, 2, 10], 9000)),
            client_ip: IpAddr::from([10, 20, 1, 10]),
            trace: None,
            caller: None,
        }
    }

    #[test]
    fn one_slot_per_key_whatever_the_shard() {
        let (certs, bundle) = issued(&["frontend", "cache"]);
        let pool = Pool::new(bundle, Arc::new(Observer::new(Arc::new(Discard))));
        let (backend, db) = (id("backend"), id("db"));
        let first = pool.slot(&target(&certs[0], &backend, "node-b", 15008));
        let again = pool.slot(&target(&certs[0], &backend, "node-b", 15008));
        assert!(Arc::ptr_eq(&first, &again), "the same key, the same slot");
        // Each part of the key makes another one.
        let others = [
            pool.slot(&target(&certs[1], &backend, "node-b", 15008)),
            pool.slot(&target(&certs[0], &db, "node-b", 15008)),
            pool.slot(&target(&certs[0], &backend, "node-c", 15008)),
            pool.slot(&target(&certs[0], &backend, "node-b", 15009)),
        ];
        for other in &others {
            assert!(!Arc::ptr_eq(&first, other));
        }
        assert_eq!(pool.keys(), 5);
        // One still held by a checkout that has not locked it yet: kept.
        drop((again, others));
        pool.prune();
        assert_eq!(pool.keys(), 1);
        // No connection in any and nobody holding them: all forgotten.
        drop(first);
        pool.prune();
        assert_eq!(pool.keys(), 0);
    }

    #[test]
    fn a_stream_is_retried_only_if_no_early_byte_can_have_reached_its_destination() {
        let failed = |reason| StreamError::Sent(h2::Error::from(reason));
        let mut early = Early::new(None);
        assert!(early.may_retry(&StreamError::NotSent(h2::Error::from(Reason::NO_ERROR))));
        // Nothing sent with the CONNECT: the destination forwarded nothing.
        assert!(early.may_retry(&failed(Reason::CANCEL)));
        early.data = Some(Bytes::from_static(b"GET / HTTP/1.1"));
        // Read but refused by a stream that had closed: never left.
        assert!(early.may_retry(&failed(Reason::CANCEL)));
        early.on_wire = true;
        // A REFUSED_STREAM made up on this side proves nothing of the peer
        // (`h2::Error::from` is local; the peer's own is retried, see
        // inbound::tests::retry).
        assert!(!early.may_retry(&failed(Reason::REFUSED_STREAM)));
        assert!(!early.may_retry(&failed(Reason::CANCEL)));
        assert!(!early.may_retry(&failed(Reason::INTERNAL_ERROR)));
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(!early.may_retry(&StreamError::Caller(reset)));
    }

    #[test]
    fn no_connection_opens_one() {
        assert_eq!(choose([].into_iter()), Choice::Open);
    }

    #[test]
    fn lightly_loaded_connection_is_reused() {
        assert_eq!(choose([1].into_iter()), Choice::Reuse(0));
    }

    #[test]
    fn least_loaded_connection_is_picked() {
        assert_eq!(choose([2, 0, 1].into_iter()), Choice::Reuse(1));
    }

    #[test]
    fn equal_loads_fill_the_oldest_first() {
        assert_eq!(choose([1, 1].into_iter()), Choice::Reuse(0));
    }

    #[test]
    fn spread_loads_open_another_below_the_connection_cap() {
        let mut loads = [SPREAD_STREAMS + 1; MAX_CONNECTIONS_PER_KEY - 1];
        loads[1] = SPREAD_STREAMS;
        // With the least-loaded one to fall back on if opening fails.
        assert_eq!(choose(loads.iter().copied()), Choice::Spread(1));
    }

    #[test]
    fn at_the_connection_cap_the_least_loaded_is_reused() {
        let mut loads = [SPREAD_STREAMS + 2; MAX_CONNECTIONS_PER_KEY];
        loads[1] = SPREAD_STREAMS;
        assert_eq!(choose(loads.iter().copied()), Choice::Reuse(1));
    }

    #[test]
    fn full_connections_open_another_past_the_cap() {
        let loads = [MAX_STREAMS_PER_CONNECTION; MAX_CONNECTIONS_PER_KEY];
        assert_eq!(choose(loads.iter().copied()), Choice::Open);
    }
}
