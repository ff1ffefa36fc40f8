//! Byte relaying between two streams, and dialling local workloads, shared
//! by the outbound listener and the tunnel server. One access-log line and
//! one set of metric updates per finished connection.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::{
    io::{copy_bidirectional_with_sizes, AsyncRead, AsyncWrite},
    net::{TcpSocket, TcpStream},
    time::timeout,
};

use crate::{
    authz::{Lease, RequestGate},
    http,
    identity::SpiffeId,
    metrics::Metrics,
    tunnel::pool,
    workloads::Workload,
};

/// How long to wait for a destination to accept.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Relay buffer per direction: large enough that bulk transfers are not
/// syscall-bound.
pub const RELAY_BUF: usize = 64 * 1024;

/// How a relayed connection got here, for logs and metric labels.
pub enum Route {
    /// A local pod's connection, captured by the kernel.
    Outbound {
        source: Arc<Workload>,
        peer: SocketAddr,
        path: Path,
    },
    /// A stream from another node's proxy, authenticated by mTLS.
    Inbound {
        principal: SpiffeId,
        source_node: String,
        /// The calling workload, when the client named it (`Forwarded`).
        source: Option<Arc<Workload>>,
        peer: SocketAddr,
    },
}

/// Which way an outbound connection went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// To a pod on this node, straight from the proxy.
    Local,
    /// Through the mTLS tunnel to another node's proxy.
    Tunnel,
    /// To a mesh address that is no known workload: plaintext, as addressed.
    Passthrough,
}

impl Path {
    /// Label for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Tunnel => "tunnel",
            Self::Passthrough => "passthrough",
        }
    }
}

/// A stream that can be torn down with a reset instead of a clean close,
/// so a broken relay never looks like a complete exchange.
pub trait Abort {
    fn abort(&self);
}

impl Abort for TcpStream {
    fn abort(&self) {
        let _ = self.set_zero_linger();
    }
}

impl Abort for TokioIo<Upgraded> {
    /// Dropping an HTTP/2 stream before its end resets it.
    fn abort(&self) {}
}

impl Abort for pool::Stream {
    fn abort(&self) {}
}

/// Dials local workloads from the proxy's own address, so the strict
/// inbound filter can tell proxy traffic from direct dials.
#[derive(Debug, Clone)]
pub struct Dialer {
    pub ipv4: Ipv4Addr,
    pub ipv6: Option<Ipv6Addr>,
}

impl Dialer {
    /// Connects to `dst` with a deadline.
    pub async fn dial(&self, dst: SocketAddr) -> std::io::Result<TcpStream> {
        let (socket, local) = match dst.ip() {
            IpAddr::V4(_) => (TcpSocket::new_v4()?, IpAddr::V4(self.ipv4)),
            IpAddr::V6(_) => (
                TcpSocket::new_v6()?,
                IpAddr::V6(self.ipv6.unwrap_or(Ipv6Addr::UNSPECIFIED)),
            ),
        };
        socket.bind(SocketAddr::new(local, 0))?;
        let stream = timeout(CONNECT_TIMEOUT, socket.connect(dst))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

/// Relays until both directions are done, then logs and counts. With a
/// `lease`, a revocation (a reloaded policy denies the connection) resets
/// both sides.
pub async fn run<A, B>(
    mut a: A,
    mut b: B,
    route: Route,
    dst: SocketAddr,
    dest: Option<Arc<Workload>>,
    metrics: &Metrics,
    lease: Option<&Lease>,
) where
    A: AsyncRead + AsyncWrite + Unpin + Abort,
    B: AsyncRead + AsyncWrite + Unpin + Abort,
{
    let pump = async {
        let result = {
            let copy = copy_bidirectional_with_sizes(&mut a, &mut b, RELAY_BUF, RELAY_BUF);
            match lease {
                Some(lease) => tokio::select! {
                    r = copy => r,
                    _ = lease.revoked() => Err(revoked()),
                },
                None => copy.await,
            }
        };
        match result {
            Ok((sent, received)) => Outcome {
                sent,
                received,
                error: None,
            },
            Err(e) => {
                a.abort();
                b.abort();
                Outcome {
                    sent: 0,
                    received: 0,
                    error: Some(e.to_string()),
                }
            }
        }
    };
    account(route, dst, dest, metrics, pump).await;
}

/// Serves an HTTP connection whose requests `gate` judges one by one, then
/// logs and counts like [`run`]. A revocation closes both sides.
#[expect(
    clippy::too_many_arguments,
    reason = "the same flow description as `run`, plus the gate"
)]
pub async fn run_http<A>(
    client: A,
    upstream: TcpStream,
    gate: RequestGate,
    route: Route,
    dst: SocketAddr,
    dest: Option<Arc<Workload>>,
    metrics: &Metrics,
    lease: &Lease,
) where
    A: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let pump = async {
        tokio::select! {
            s = http::serve(client, upstream, Arc::new(gate)) => Outcome {
                sent: s.bytes_in,
                received: s.bytes_out,
                error: s.error,
            },
            _ = lease.revoked() => Outcome {
                sent: 0,
                received: 0,
                error: Some(revoked().to_string()),
            },
        }
    };
    account(route, dst, dest, metrics, pump).await;
}

fn revoked() -> std::io::Error {
    std::io::Error::other("closed: a reloaded policy denies this connection")
}

/// What a relay moved, and how it ended.
struct Outcome {
    sent: u64,
    received: u64,
    error: Option<String>,
}

/// Counts the connection while `pump` moves its bytes, then logs it.
async fn account(
    route: Route,
    dst: SocketAddr,
    dest: Option<Arc<Workload>>,
    metrics: &Metrics,
    pump: impl std::future::Future<Output = Outcome>,
) {
    let start = Instant::now();
    let labels = labels(&route, dest.as_deref());
    let labels = [
        labels[0].as_str(),
        labels[1].as_str(),
        labels[2].as_str(),
        labels[3].as_str(),
        labels[4].as_str(),
    ];
    metrics.connections_opened.with_label_values(&labels).inc();
    metrics.active_connections.inc();
    let Outcome {
        sent,
        received,
        error,
    } = pump.await;
    metrics.active_connections.dec();
    metrics.connections_closed.with_label_values(&labels).inc();
    metrics.bytes_sent.with_label_values(&labels).inc_by(sent);
    metrics
        .bytes_received
        .with_label_values(&labels)
        .inc_by(received);
    let done = Done {
        dst,
        dest: dest.as_deref(),
        sent,
        received,
        millis: start.elapsed().as_millis() as u64,
        error: error.as_deref().unwrap_or(""),
    };
    log(&route, &done);
}

struct Done<'a> {
    dst: SocketAddr,
    dest: Option<&'a Workload>,
    sent: u64,
    received: u64,
    millis: u64,
    error: &'a str,
}

fn labels(route: &Route, dest: Option<&Workload>) -> [String; 5] {
    let (direction, src_ns, src_name) = match route {
        Route::Outbound { source, .. } => {
            ("outbound", source.namespace.clone(), source.name.clone())
        }
        Route::Inbound {
            principal, source, ..
        } => (
            "inbound",
            principal
                .namespace_and_sa()
                .map_or("unknown", |(ns, _)| ns)
                .to_owned(),
            source
                .as_ref()
                .map_or("unknown".to_owned(), |w| w.name.clone()),
        ),
    };
    [
        direction.to_owned(),
        src_ns,
        src_name,
        dest.map_or("unknown".to_owned(), |w| w.namespace.clone()),
        dest.map_or("unknown".to_owned(), |w| w.name.clone()),
    ]
}

fn log(route: &Route, d: &Done<'_>) {
    let destination = d
        .dest
        .map_or_else(|| "unknown".to_owned(), |w| w.to_string());
    match route {
        Route::Outbound { source, peer, path } => tracing::info!(
            target: "nodeward::access",
            event = "connection",
            path = path.as_str(),
            source = %source,
            source_service_account = %source.service_account,
            peer = %peer,
            orig_dst = %d.dst,
            destination,
            bytes_sent = d.sent,
            bytes_received = d.received,
            duration_ms = d.millis,
            error = d.error,
            "outbound connection closed"
        ),
        Route::Inbound {
            principal,
            source_node,
            source,
            peer,
        } => tracing::info!(
            target: "nodeward::access",
            event = "inbound",
            source_principal = %principal,
            source_node = %source_node,
            source = %source.as_ref().map_or_else(|| "unknown".to_owned(), |w| w.to_string()),
            peer = %peer,
            orig_dst = %d.dst,
            destination,
            bytes_sent = d.sent,
            bytes_received = d.received,
            duration_ms = d.millis,
            error = d.error,
            "inbound connection closed"
        ),
    }
}
