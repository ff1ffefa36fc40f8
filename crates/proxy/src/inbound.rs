//! Tunnel server: accepts mTLS connections from other node proxies on the
//! tunnel port and serves their CONNECT streams to local workloads.
//!
//! A caller speaks for the identity in its client certificate, and only
//! while the workloads file puts that identity on the node that signed the
//! certificate: checked in the handshake (the verifier), again on every
//! stream, and on every workloads reload for the open connections
//! (`lifetime`, which also ends idle and old connections). [`limits`]
//! bounds the handshakes and pod dials a peer can hold at once; [`connect`]
//! reads a stream's destination and calling workload.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use h2::{server::SendResponse, RecvStream};
use hyper::{header::HeaderValue, Method, Request, Response, StatusCode};
use rustls::{server::Acceptor, ServerConfig};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
    time::{timeout, timeout_at, Instant},
};
use tokio_rustls::{server::TlsStream, LazyConfigAcceptor};

use nodeward_identity::{
    tls::{ClientVerifier, TrustBundle, VerifiedPeer},
    tls_config, CertStore, SpiffeId,
};
use nodeward_workloads::{Registry, Workload};

pub mod connect;
mod lifetime;
pub mod limits;
mod served;

use crate::{
    authz::{Admission, Authz, Subject},
    drain::Drain,
    flows::{EdgeKey, End, EndKind, Flow},
    http,
    relay::{self, Route},
    telemetry::{Observer, Pending, Side},
    trace::ConnSpan,
    tunnel::{
        self, CONNECTION_WINDOW, ERROR_HEADER, HANDSHAKE_TIMEOUT, MAX_FRAME, SERVER_MAX_STREAMS,
        STREAM_WINDOW,
    },
};
use connect::{connect_destination, forwarded_for, BadForwarded};
use lifetime::{Open, Tracker, Watched};
use limits::{HandshakeSlot, Limits};
use served::Served;

/// First byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;
/// HTTP/2 header block limit: CONNECT requests are tiny.
const MAX_HEADER_LIST: u32 = 16 * 1024;
/// Bytes buffered per tunnel stream for a peer node that reads slowly.
/// Larger than the client-facing [`http::MAX_SEND_BUF`]: peers are
/// authenticated nodes, and a stream carries bulk traffic.
const SEND_BUF: usize = 400 * 1024;

/// What the tunnel server needs.
pub struct Inbound {
    pub node: String,
    pub registry: Arc<ArcSwap<Registry>>,
    /// Changes on every workloads reload, after `registry` was replaced:
    /// open connections re-check the identity they speak for.
    pub workloads: watch::Receiver<()>,
    /// The server TLS config ([`tls_config::server_config`], with
    /// [`client_verifier`]).
    pub tls: Arc<ServerConfig>,
    /// Local certificates; the SNI a client used names the one it got.
    pub certs: Arc<CertStore>,
    pub observer: Arc<Observer>,
    pub dialer: relay::Dialer,
    /// Authorization for every stream (and every request on HTTP ports).
    pub authz: Arc<Authz>,
    /// Ends the relays when the proxy stops.
    pub drain: Drain,
    /// Connection timers and the caps on handshakes and dials.
    pub limits: Limits,
}

/// One authenticated tunnel connection.
struct Peer {
    verified: VerifiedPeer,
    /// The local identity this connection authenticated as (picked by SNI).
    served: SpiffeId,
    addr: SocketAddr,
    tracker: Arc<Tracker>,
}

/// Why a CONNECT stream was refused. [`Refusal::as_str`] labels the metric
/// and the log; [`Refusal::message`] goes to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// The caller's identity is no longer on the node that signed it.
    IdentityLeftNode,
    Method,
    Authority,
    Misdirected,
    Forwarded,
    ForwardedClient,
    Denied,
    RateLimited,
    /// No dial slot for the calling node freed within the queue timeout.
    DialLimit,
    Unreachable,
    DialTimeout,
}

/// The tunnel server's client check: a valid SVID whose identity runs on
/// the node that signed it, per the workloads file in force.
pub fn client_verifier(
    bundle: Arc<TrustBundle>,
    registry: Arc<ArcSwap<Registry>>,
) -> Arc<ClientVerifier> {
    let authorize = move |id: &SpiffeId, node: &str| hosts(&registry.load(), id, node);
    Arc::new(ClientVerifier::new(bundle, Arc::new(authorize)))
}

/// Whether the workloads file puts identity `id` on `node`: the one rule
/// the verifier, every stream and every reload apply.
fn hosts(registry: &Registry, id: &SpiffeId, node: &str) -> bool {
    id.namespace_and_sa()
        .is_some_and(|(ns, sa)| registry.hosts(node, ns, sa))
}

/// Accepts tunnel connections until `shutdown` flips. A connection over the
/// handshake caps is refused at once (reset), before any TLS.
pub async fn serve(
    listener: TcpListener,
    inbound: Arc<Inbound>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "tunnel accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        match inbound.limits.start_handshake(addr.ip()) {
            Ok(slot) => {
                tokio::spawn(connection(
                    stream,
                    addr,
                    slot,
                    inbound.clone(),
                    shutdown.clone(),
                ));
            }
            Err(over) => {
                let _ = stream.set_zero_linger();
                inbound.observer.tunnel_rejected(over.as_str());
                // Debug only: a flood must not become a log flood.
                tracing::debug!(reason = over.as_str(), peer = %addr, "tunnel connection refused");
            }
        }
    }
}

async fn connection(
    stream: TcpStream,
    addr: SocketAddr,
    slot: HandshakeSlot,
    inbound: Arc<Inbound>,
    shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let handshake = handshake(stream, &inbound).await;
    drop(slot);
    let (tls, verified, served) = match handshake {
        Ok(ok) => ok,
        Err(reason) => {
            inbound.observer.tunnel_rejected(reason);
            tracing::info!(target: "nodeward::access", event = "tunnel_rejected", reason,
                peer = %addr, "tunnel connection rejected");
            return;
        }
    };
    let (tracker, control) = Tracker::new();
    let peer = Arc::new(Peer {
        verified,
        served,
        addr,
        tracker,
    });
    let handshake = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_concurrent_streams(SERVER_MAX_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST)
        // Rapid reset (CVE-2023-44487) and its kin end the connection.
        .max_pending_accept_reset_streams(http::MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(Some(http::MAX_LOCAL_ERROR_RESETS))
        // A refused stream's early DATA may arrive after the refusal reset
        // it: remembered, the stream's late frames are dropped quietly; a
        // forgotten one would draw a STREAM_CLOSED error, and those count
        // towards ending the connection (`max_local_error_reset_streams`).
        .max_concurrent_reset_streams(2 * SERVER_MAX_STREAMS as usize)
        .max_send_buffer_size(SEND_BUF)
        .handshake::<_, Bytes>(tls);
    // A peer that finished TLS but never sends the HTTP/2 preface holds
    // nothing past the handshake deadline.
    let conn = match timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, peer = %addr, "tunnel connection ended before HTTP/2");
            return;
        }
        Err(_) => {
            tracing::debug!(peer = %addr, "no HTTP/2 preface in time");
            return;
        }
    };
    // A peer that stops answering PINGs (gone, or not reading at all) is
    // closed even while it holds streams open.
    let conn = Served::new(conn, inbound.clone(), peer.clone());
    tokio::pin!(conn);
    let still_hosted = || {
        hosts(
            &inbound.registry.load(),
            &peer.verified.id,
            &peer.verified.node,
        )
    };
    let watched = Watched {
        tracker: &peer.tracker,
        control,
        still_hosted: &still_hosted,
        workloads: inbound.workloads.clone(),
        shutdown,
        proxy: &inbound.drain,
        settings: inbound.limits.settings(),
        observer: &inbound.observer,
        peer: addr,
    };
    // GOAWAY (graceful shutdown) tells the peer's pool to open new streams
    // elsewhere (a new connection, or a successor on the same port) while
    // the streams already open finish.
    let served = lifetime::supervise(conn.as_mut(), Served::graceful_shutdown, watched).await;
    if let Some(Err(e)) = served {
        tracing::debug!(error = %e, peer = %addr, "tunnel connection ended");
    }
}

/// Refuses plaintext early, reads the ClientHello and refuses an SNI that
/// names no local identity, then completes the TLS handshake; the verifier
/// does the SPIFFE checks. One deadline covers it all. Returns the peer and
/// the local identity it reached, or the rejection label.
async fn handshake(
    stream: TcpStream,
    inbound: &Inbound,
) -> Result<(TlsStream<TcpStream>, VerifiedPeer, SpiffeId), &'static str> {
    let started = std::time::Instant::now();
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let mut first = [0u8; 1];
    match timeout_at(deadline, stream.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == TLS_HANDSHAKE => {}
        Ok(Ok(1)) => {
            let _ = stream.set_zero_linger();
            return Err("plaintext");
        }
        Ok(_) => return Err("eof"),
        Err(_) => return Err("timeout"),
    }
    let hello = LazyConfigAcceptor::new(Acceptor::default(), stream);
    let start = match timeout_at(deadline, hello).await {
        Ok(Ok(start)) => start,
        Ok(Err(e)) => return Err(tls_config::io_error_reason(&e)),
        Err(_) => return Err("timeout"),
    };
    // Checked here rather than left to the certificate resolver: rustls
    // reports a resolver's refusal as a generic error.
    let served = start
        .client_hello()
        .server_name()
        .and_then(|sni| inbound.certs.by_sni(sni))
        .map(|issued| issued.svid.id.clone())
        .ok_or("unknown_server_name")?;
    let tls = match timeout_at(deadline, start.into_stream(inbound.tls.clone())).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(tls_config::io_error_reason(&e)),
        Err(_) => return Err("timeout"),
    };
    let (_, conn) = tls.get_ref();
    let verified =
        nodeward_identity::tls::peer_from_chain(conn.peer_certificates().unwrap_or_default())
            .map_err(|r| r.as_str())?;
    inbound
        .observer
        .tunnel_handshake(Side::Server, started.elapsed().as_secs_f64());
    Ok((tls, verified, served))
}

/// Handles one CONNECT stream on its own task: checks, dials the workload,
/// answers `200` and relays. Nothing is read from the stream before the
/// `200`: early DATA (optimistic CONNECT) waits in the stream's window, and
/// is dropped unread with a refused stream.
async fn stream(
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    inbound: &Arc<Inbound>,
    peer: &Arc<Peer>,
) {
    let tracer = inbound.observer.tracer();
    let mut span = tracer.map(|t| ConnSpan::server(t, req.headers()));
    // A stream the client resets while it is checked or dialled is
    // dropped with its dial, which frees the calling node's dial slot.
    let admitted = tokio::select! {
        admitted = admit_stream(&req, inbound, peer, &mut span) => admitted,
        _ = std::future::poll_fn(|cx| respond.poll_reset(cx)) => {
            if let Some(span) = span {
                span.finish(Some("reset by the client"));
            }
            return;
        }
    };
    let relayed = match admitted {
        Ok(relayed) => relayed,
        Err(refusal) => {
            answer_refusal(&mut respond, refusal);
            if let Some(span) = span {
                span.finish(Some(refusal.message()));
            }
            return;
        }
    };
    let send = match respond.send_response(Response::new(()), false) {
        Ok(send) => send,
        Err(e) => {
            // Reset by the client while it was dialled.
            tracing::debug!(error = %e, "CONNECT stream gone before its answer");
            if let Some(span) = relayed.trace {
                span.finish(Some("upgrade_failed"));
            }
            return;
        }
    };
    let stream = tunnel::Stream::accepted(send, req.into_body());
    relay_stream(stream, relayed, inbound, peer).await;
}

/// Checks, authorizes and dials a stream; the admitted stream's relay
/// takes `span` along.
async fn admit_stream(
    req: &Request<RecvStream>,
    inbound: &Arc<Inbound>,
    peer: &Arc<Peer>,
    span: &mut Option<ConnSpan>,
) -> Result<Relayed, Refusal> {
    let open = peer.tracker.open();
    let pending = Pending::start(&inbound.observer);
    let checked = match check_request(req, inbound, peer) {
        Ok(ok) => ok,
        Err(refusal) => return Err(refuse(inbound, peer, refusal)),
    };
    let Checked {
        dst,
        dest,
        source,
        source_ip,
    } = checked;
    // Before authorization: a stream refused here costs no policy work,
    // rate-limit token or audit record.
    let Some(dialing) = dial_slot(inbound, &peer.verified.node).await else {
        return Err(refuse(inbound, peer, Refusal::DialLimit));
    };
    let flow = inbound
        .observer
        .flow(|| edge(&peer.verified.id, source.as_deref(), &dest, dst));
    let subject = Subject {
        principal: Some(peer.verified.id.clone()),
        source_ip,
        destination: dest.clone(),
        dst,
        flow: flow.clone(),
    };
    let admission = inbound.authz.admit(subject);
    match admission {
        Admission::Denied(_) => return Err(refuse(inbound, peer, Refusal::Denied)),
        Admission::Limited(_) => return Err(refuse(inbound, peer, Refusal::RateLimited)),
        Admission::Relay(_) | Admission::Http(_) => {}
    }
    let dialled = inbound.dialer.dial(dst).await;
    drop(dialing);
    let upstream = match dialled {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            flow.error(&format!("dial: {e}"));
            return Err(refuse(inbound, peer, Refusal::DialTimeout));
        }
        Err(e) => {
            flow.error(&format!("dial: {e}"));
            return Err(refuse(inbound, peer, Refusal::Unreachable));
        }
    };
    inbound.observer.tunnel_stream(Side::Server, "200");
    Ok(Relayed {
        admission,
        upstream,
        dst,
        dest,
        source,
        flow,
        pending,
        open,
        trace: span.take(),
    })
}

/// A dial slot for a stream of `node`'s: free now, or the first freed
/// within the queue timeout (the wait is counted, served or not).
async fn dial_slot(inbound: &Inbound, node: &str) -> Option<limits::Held<String>> {
    if let Some(slot) = inbound.limits.try_start_dial(node) {
        return Some(slot);
    }
    let queued = tokio::time::Instant::now();
    let deadline = queued + inbound.limits.settings().dial_queue_timeout;
    let slot = inbound.limits.start_dial(node, deadline).await;
    inbound
        .observer
        .tunnel_dial_queued(queued.elapsed().as_secs_f64());
    slot
}

/// Answers a refused stream: its status, the reason in `nodeward-error`
/// and as the body. The client may have reset it already.
fn answer_refusal(respond: &mut SendResponse<Bytes>, refusal: Refusal) {
    let why = refusal.message();
    let mut response = Response::new(());
    *response.status_mut() = refusal.status();
    response
        .headers_mut()
        .insert(ERROR_HEADER, HeaderValue::from_static(why));
    if let Ok(mut body) = respond.send_response(response, false) {
        let _ = body.send_data(Bytes::from_static(why.as_bytes()), true);
    }
}

/// An admitted stream, dialled, waiting for its upgrade.
struct Relayed {
    admission: Admission,
    upstream: TcpStream,
    dst: SocketAddr,
    dest: Arc<Workload>,
    source: Option<Arc<Workload>>,
    flow: Flow,
    /// Counted as pending until the relay starts...
    pending: Pending,
    /// ...and open on its connection until the relay ends.
    open: Open,
    trace: Option<ConnSpan>,
}

/// Relays an accepted stream until it ends, its admission is revoked, or
/// its connection's drain cuts it.
async fn relay_stream(
    stream: tunnel::Stream,
    relayed: Relayed,
    inbound: &Arc<Inbound>,
    peer: &Arc<Peer>,
) {
    let Relayed {
        admission,
        upstream,
        dst,
        dest,
        source,
        flow,
        pending,
        open,
        trace,
    } = relayed;
    let mut route = Route::Inbound {
        principal: peer.verified.id.clone(),
        source_node: peer.verified.node.clone(),
        source,
        peer: peer.addr,
        trace,
        flow,
    };
    drop(pending);
    let (authz, observer) = (&inbound.authz, &inbound.observer);
    let drain = peer.tracker.relays();
    relay::admitted(
        admission, authz, stream, upstream, &mut route, dst, dest, observer, drain,
    )
    .await;
    // The flow-map edge (in the route) closes with the stream, not after it.
    drop(route);
    drop(open);
}

/// The flow-map edge of a tunnelled stream: from the calling workload it
/// named (checked against its identity), else its verified identity; to
/// the local workload, on the port it dialled.
fn edge(
    principal: &SpiffeId,
    source: Option<&Workload>,
    dest: &Workload,
    dst: SocketAddr,
) -> EdgeKey {
    let source = match source {
        Some(w) => End::new(EndKind::Workload, &w.namespace, &w.name),
        None => {
            let namespace = principal.namespace_and_sa().map_or("", |(ns, _)| ns);
            End::new(EndKind::Principal, namespace, principal.as_str())
        }
    };
    EdgeKey {
        source,
        destination: End::new(EndKind::Workload, &dest.namespace, &dest.name),
        port: dst.port(),
    }
}

/// A CONNECT request that passed the protocol checks.
struct Checked {
    /// The original destination (a local workload's IP and port).
    dst: SocketAddr,
    dest: Arc<Workload>,
    /// The calling workload and its IP, when the client named it (`Forwarded`).
    source: Option<Arc<Workload>>,
    source_ip: Option<IpAddr>,
}

/// The stream's destination (a local workload whose identity this
/// connection authenticated as) and, from `Forwarded`, the calling workload.
fn check_request(
    req: &Request<RecvStream>,
    inbound: &Inbound,
    peer: &Peer,
) -> Result<Checked, Refusal> {
    let registry = inbound.registry.load();
    // First: a departed identity learns nothing more about this node.
    if !hosts(&registry, &peer.verified.id, &peer.verified.node) {
        return Err(Refusal::IdentityLeftNode);
    }
    if req.method() != Method::CONNECT {
        return Err(Refusal::Method);
    }
    let dst = connect_destination(req.uri()).ok_or(Refusal::Authority)?;
    let dest = registry
        .by_ip(dst.ip())
        .filter(|w| w.node == inbound.node)
        .filter(|w| same_identity(w, &peer.served))
        .cloned()
        .ok_or(Refusal::Misdirected)?;
    let source_ip = forwarded_for(req.headers()).map_err(|BadForwarded| Refusal::Forwarded)?;
    let source = match source_ip {
        None => None,
        Some(ip) => Some(
            registry
                .by_ip(ip)
                .filter(|w| w.node == peer.verified.node && same_identity(w, &peer.verified.id))
                .cloned()
                .ok_or(Refusal::ForwardedClient)?,
        ),
    };
    Ok(Checked {
        dst: SocketAddr::new(dst.ip().to_canonical(), dst.port()),
        dest,
        source,
        source_ip,
    })
}

fn same_identity(w: &Workload, id: &SpiffeId) -> bool {
    id.namespace_and_sa() == Some((w.namespace.as_str(), w.service_account.as_str()))
}

/// Counts and logs a refusal; the caller answers it.
fn refuse(inbound: &Inbound, peer: &Peer, refusal: Refusal) -> Refusal {
    let status = refusal.status();
    inbound
        .observer
        .tunnel_stream(Side::Server, status.as_str());
    inbound.observer.tunnel_stream_refused(refusal.as_str());
    tracing::info!(target: "nodeward::access", event = "stream_refused", status = status.as_u16(),
        reason = refusal.as_str(), source_principal = %peer.verified.id,
        source_node = %peer.verified.node, peer = %peer.addr, "tunnel stream refused");
    if refusal == Refusal::IdentityLeftNode {
        peer.tracker.identity_left();
    }
    refusal
}

impl Refusal {
    fn status(self) -> StatusCode {
        match self {
            Self::IdentityLeftNode | Self::Denied => StatusCode::FORBIDDEN,
            Self::Method => StatusCode::METHOD_NOT_ALLOWED,
            Self::Authority | Self::Forwarded | Self::ForwardedClient => StatusCode::BAD_REQUEST,
            Self::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::DialLimit | Self::Unreachable => StatusCode::SERVICE_UNAVAILABLE,
            Self::DialTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Label value in `nodeward_tunnel_streams_refused_total` and the log.
    fn as_str(self) -> &'static str {
        match self {
            Self::IdentityLeftNode => "identity_left_node",
            Self::Method => "method",
            Self::Authority => "bad_authority",
            Self::Misdirected => "misdirected",
            Self::Forwarded => "bad_forwarded",
            Self::ForwardedClient => "forwarded_client",
            Self::Denied => "denied",
            Self::RateLimited => "rate_limited",
            Self::DialLimit => "dial_limit",
            Self::Unreachable => "unreachable",
            Self::DialTimeout => "dial_timeout",
        }
    }

    /// The `nodeward-error` header and body.
    fn message(self) -> &'static str {
        match self {
            Self::IdentityLeftNode => {
                "the caller's identity is no longer on the node that signed its certificate"
            }
            Self::Method => "only CONNECT is served",
            Self::Authority => "authority must be ip:port",
            Self::Misdirected => {
                "destination is not a local workload with the identity this connection authenticated"
            }
            Self::Forwarded => "malformed Forwarded header",
            Self::ForwardedClient => {
                "forwarded client is not a workload of the authenticated identity"
            }
            Self::Denied => "denied by authorization policy",
            Self::RateLimited => "connection rate limited",
            Self::DialLimit => "too many dials from the calling node are pending",
            Self::Unreachable | Self::DialTimeout => "destination unreachable",
        }
    }
}

#[cfg(test)]
mod tests;
