//! Tunnel server: accepts mTLS connections from other node proxies on the
//! tunnel port and serves their CONNECT streams to local workloads.

use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
    time::timeout,
};
use tokio_rustls::{server::TlsStream, TlsAcceptor};

use nodeward_identity::{tls::VerifiedPeer, tls_config, CertStore, SpiffeId};
use nodeward_workloads::{Registry, Workload};

use crate::{
    authz::{Admission, Authz, Subject},
    drain::Drain,
    relay::{self, Route},
    telemetry::{Observer, Pending, Side},
    tunnel::{
        CONNECTION_WINDOW, ERROR_HEADER, HANDSHAKE_TIMEOUT, MAX_FRAME, SERVER_MAX_STREAMS,
        STREAM_WINDOW,
    },
};

/// First byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;
/// HTTP/2 header block limit: CONNECT requests are tiny.
const MAX_HEADER_LIST: u32 = 16 * 1024;

/// What the tunnel server needs.
pub struct Inbound {
    pub node: String,
    pub registry: Arc<ArcSwap<Registry>>,
    pub acceptor: TlsAcceptor,
    /// Local certificates; the SNI a client used names the one it got.
    pub certs: Arc<CertStore>,
    pub observer: Arc<Observer>,
    pub dialer: relay::Dialer,
    /// Authorization for every stream (and every request on HTTP ports).
    pub authz: Arc<Authz>,
    /// Ends the relays when the proxy stops.
    pub drain: Drain,
}

/// One authenticated tunnel connection.
struct Peer {
    verified: VerifiedPeer,
    /// The local identity this connection authenticated as (picked by SNI).
    served: SpiffeId,
    addr: SocketAddr,
}

/// Accepts tunnel connections until `shutdown` flips.
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
        tokio::spawn(connection(stream, addr, inbound.clone(), shutdown.clone()));
    }
}

async fn connection(
    stream: TcpStream,
    addr: SocketAddr,
    inbound: Arc<Inbound>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let (tls, peer) = match handshake(stream, addr, &inbound).await {
        Ok(ok) => ok,
        Err(reason) => {
            inbound.observer.tunnel_rejected(reason);
            tracing::info!(target: "nodeward::access", event = "tunnel_rejected", reason,
                peer = %addr, "tunnel connection rejected");
            return;
        }
    };
    let peer = Arc::new(peer);
    let service = service_fn(move |req| {
        let (inbound, peer) = (inbound.clone(), peer.clone());
        async move { Ok::<_, Infallible>(stream_request(req, &inbound, &peer).await) }
    });
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_concurrent_streams(SERVER_MAX_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST)
        .serve_connection(TokioIo::new(tls), service);
    tokio::pin!(conn);
    // When this proxy stops, GOAWAY tells the peer's pool to open new
    // streams elsewhere (a successor on the same port) while the streams
    // already open finish: otherwise the drain would never converge.
    let served = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = served {
        tracing::debug!(error = %e, peer = %addr, "tunnel connection ended");
    }
}

/// Refuses plaintext early, then runs the TLS handshake; the verifier does
/// the SPIFFE checks. Returns the rejection label on failure.
async fn handshake(
    stream: TcpStream,
    addr: SocketAddr,
    inbound: &Inbound,
) -> Result<(TlsStream<TcpStream>, Peer), &'static str> {
    let started = Instant::now();
    let mut first = [0u8; 1];
    match timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == TLS_HANDSHAKE => {}
        Ok(Ok(1)) => {
            let _ = stream.set_zero_linger();
            return Err("plaintext");
        }
        Ok(_) => return Err("eof"),
        Err(_) => return Err("timeout"),
    }
    let tls = match timeout(HANDSHAKE_TIMEOUT, inbound.acceptor.accept(stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(tls_config::io_error_reason(&e)),
        Err(_) => return Err("timeout"),
    };
    let (_, conn) = tls.get_ref();
    let verified =
        nodeward_identity::tls::peer_from_chain(conn.peer_certificates().unwrap_or_default())
            .map_err(|r| r.as_str())?;
    let served = conn
        .server_name()
        .and_then(|sni| inbound.certs.by_sni(sni))
        .map(|issued| issued.svid.id.clone())
        .ok_or("unknown_server_name")?;
    inbound
        .observer
        .tunnel_handshake(Side::Server, started.elapsed().as_secs_f64());
    let peer = Peer {
        verified,
        served,
        addr,
    };
    Ok((tls, peer))
}

/// Handles one CONNECT stream: checks, dials the workload, answers 200 and
/// relays once the stream is upgraded. Nothing is forwarded before the 200.
async fn stream_request(
    mut req: Request<Incoming>,
    inbound: &Arc<Inbound>,
    peer: &Arc<Peer>,
) -> Response<Full<Bytes>> {
    let pending = Pending::start(&inbound.observer);
    let checked = check_request(&req, inbound, peer);
    let Checked {
        dst,
        dest,
        source,
        source_ip,
    } = match checked {
        Ok(ok) => ok,
        Err((status, why)) => return refuse(inbound, status, why),
    };
    let subject = Subject {
        principal: Some(peer.verified.id.clone()),
        source_ip,
        destination: dest.clone(),
        dst,
    };
    let admission = inbound.authz.admit(subject);
    match admission {
        Admission::Denied(_) => {
            return refuse(
                inbound,
                StatusCode::FORBIDDEN,
                "denied by authorization policy",
            )
        }
        Admission::Limited(_) => {
            return refuse(
                inbound,
                StatusCode::TOO_MANY_REQUESTS,
                "connection rate limited",
            )
        }
        Admission::Relay(_) | Admission::Http(_) => {}
    }
    let upstream = match inbound.dialer.dial(dst).await {
        Ok(s) => s,
        Err(e) => {
            let status = match e.kind() {
                std::io::ErrorKind::TimedOut => StatusCode::GATEWAY_TIMEOUT,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            return refuse(inbound, status, "destination unreachable");
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    inbound.observer.tunnel_stream(Side::Server, "200");
    let (inbound, peer) = (inbound.clone(), peer.clone());
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let route = Route::Inbound {
                    principal: peer.verified.id.clone(),
                    source_node: peer.verified.node.clone(),
                    source,
                    peer: peer.addr,
                };
                drop(pending);
                let io = TokioIo::new(upgraded);
                let (authz, observer) = (&inbound.authz, &inbound.observer);
                relay::admitted(
                    admission,
                    authz,
                    io,
                    upstream,
                    route,
                    dst,
                    dest,
                    observer,
                    &inbound.drain,
                )
                .await;
            }
            Err(e) => tracing::debug!(error = %e, "CONNECT stream never upgraded"),
        }
    });
    Response::new(Full::new(Bytes::new()))
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
    req: &Request<Incoming>,
    inbound: &Inbound,
    peer: &Peer,
) -> Result<Checked, (StatusCode, &'static str)> {
    if req.method() != Method::CONNECT {
        return Err((StatusCode::METHOD_NOT_ALLOWED, "only CONNECT is served"));
    }
    let dst: SocketAddr = req
        .uri()
        .authority()
        .and_then(|a| a.as_str().parse().ok())
        .ok_or((StatusCode::BAD_REQUEST, "authority must be ip:port"))?;
    let registry = inbound.registry.load();
    let dest = registry
        .by_ip(dst.ip())
        .filter(|w| w.node == inbound.node)
        .filter(|w| same_identity(w, &peer.served))
        .cloned()
        .ok_or((
            StatusCode::MISDIRECTED_REQUEST,
            "destination is not a local workload with the identity this connection authenticated",
        ))?;
    let source_ip =
        forwarded_for(req).map_err(|()| (StatusCode::BAD_REQUEST, "malformed Forwarded header"))?;
    let source = match source_ip {
        None => None,
        Some(ip) => Some(
            registry
                .by_ip(ip)
                .filter(|w| w.node == peer.verified.node && same_identity(w, &peer.verified.id))
                .cloned()
                .ok_or((
                    StatusCode::BAD_REQUEST,
                    "forwarded client is not a workload of the authenticated identity",
                ))?,
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

/// `Forwarded: for=1.2.3.4` or `for="[fd00::1]"` (RFC 7239, first element).
fn forwarded_for(req: &Request<Incoming>) -> Result<Option<IpAddr>, ()> {
    let Some(value) = req.headers().get(hyper::header::FORWARDED) else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| ())?;
    let first = text.split(',').next().unwrap_or("");
    let node = first
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| k.eq_ignore_ascii_case("for"))
        .map(|(_, v)| {
            v.trim_matches('"')
                .trim_start_matches('[')
                .trim_end_matches(']')
        })
        .ok_or(())?;
    node.parse::<IpAddr>()
        .map(|ip| Some(ip.to_canonical()))
        .map_err(|_| ())
}

fn refuse(inbound: &Inbound, status: StatusCode, why: &'static str) -> Response<Full<Bytes>> {
    inbound
        .observer
        .tunnel_stream(Side::Server, status.as_str());
    tracing::info!(target: "nodeward::access", event = "stream_refused", status = status.as_u16(),
        reason = why, "tunnel stream refused");
    let mut response = Response::new(Full::new(Bytes::from_static(why.as_bytes())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(ERROR_HEADER, hyper::header::HeaderValue::from_static(why));
    response
}
