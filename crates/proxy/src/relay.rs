//! Byte relaying between two streams, and dialling local workloads, shared
//! by the outbound listener and the tunnel server. One set of metric updates
//! and (unless sampled out) one access-log line per finished connection, and
//! the same per HTTP request through [`crate::access::log_request`].
//!
//! Access records are `tracing` events with target `nodeward::access`.
//! [`crate::telemetry::AccessLog`] samples the records of *successful*
//! connections and requests; errors, refusals, denials and rate-limited
//! requests are always logged, and telemetry always counts everything.

use std::{
    borrow::Cow,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpSocket, TcpStream},
    time::timeout,
};

mod copy;

use nodeward_identity::SpiffeId;
use nodeward_workloads::{Service, Workload};

use crate::{
    access::millis,
    authz::{Admission, Authz, Lease, RequestGate},
    drain::Drain,
    flows::Flow,
    http,
    telemetry::{ConnLabels, ConnectionSeries, Observer, Reporter, UNKNOWN},
    trace::{ConnSpan, TraceParent},
    tunnel,
};

/// How long to wait for a destination to accept.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Relay buffer of a direction in bulk mode (see `relay::copy`): large enough that
/// bulk transfers are not syscall-bound.
pub const RELAY_BUF: usize = 64 * 1024;

/// How a relayed connection got here, for logs and metric labels.
///
/// The relay's layers take it by `&mut`: an async fn keeps its arguments in
/// its state for as long as it runs, so passed by value a `Route` (about
/// 270 bytes) would be stored again at every layer of every connection's
/// task.
pub enum Route {
    /// A local pod's connection, captured by the kernel.
    Outbound {
        source: Arc<Workload>,
        peer: SocketAddr,
        path: Path,
        /// The Service whose VIP the caller dialled, when it did.
        service: Option<ServiceCall>,
        /// The tunnel hop's client span, when traced.
        trace: Option<ConnSpan>,
        /// The connection's edge in the flow map.
        flow: Flow,
    },
    /// A stream from another node's proxy, authenticated by mTLS.
    Inbound {
        principal: SpiffeId,
        source_node: String,
        /// The calling workload, when the client named it (`Forwarded`).
        source: Option<Arc<Workload>>,
        peer: SocketAddr,
        /// The tunnel hop's server span, when traced.
        trace: Option<ConnSpan>,
        /// The connection's edge in the flow map.
        flow: Flow,
    },
}

impl Route {
    /// The context of the connection's span, when it is traced and sampled
    /// or not (a sampled-out one still tells the next hop so).
    pub fn trace_context(&self) -> Option<TraceParent> {
        match self {
            Self::Outbound { trace, .. } | Self::Inbound { trace, .. } => {
                trace.as_ref().map(ConnSpan::context)
            }
        }
    }

    /// Takes the connection's span out, to finish it.
    pub fn take_trace(&mut self) -> Option<ConnSpan> {
        match self {
            Self::Outbound { trace, .. } | Self::Inbound { trace, .. } => trace.take(),
        }
    }

    /// The connection's edge in the flow map.
    pub fn flow(&self) -> &Flow {
        match self {
            Self::Outbound { flow, .. } | Self::Inbound { flow, .. } => flow,
        }
    }
}

/// A call to a Service: which one, and the VIP and port the caller
/// dialled (the connection goes to one of its endpoints).
#[derive(Debug, Clone)]
pub struct ServiceCall {
    pub service: Arc<Service>,
    pub vip: SocketAddr,
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
    fn abort(&mut self);

    /// Bytes already sent to this end on the other end's behalf before the
    /// relay began (a tunnel stream's early data), counted as relayed.
    fn sent_early(&self) -> u64 {
        0
    }
}

impl Abort for TcpStream {
    fn abort(&mut self) {
        let _ = self.set_zero_linger();
    }
}

impl Abort for tunnel::Stream {
    fn abort(&mut self) {
        self.reset();
    }

    fn sent_early(&self) -> u64 {
        tunnel::Stream::sent_early(self)
    }
}

impl Abort for tokio::io::DuplexStream {
    /// An in-memory pipe (tests, tools) has no reset to send.
    fn abort(&mut self) {}
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
        defer_port_choice(&socket);
        socket.bind(SocketAddr::new(local, 0))?;
        let stream = timeout(CONNECT_TIMEOUT, socket.connect(dst))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

/// Binding to a port-0 address makes the kernel pick a port that is free
/// for *every* destination, a search through the bind hash that dominated
/// the proxy's profile under a stream of new connections; with
/// `IP_BIND_ADDRESS_NO_PORT` the port is chosen at connect time per 4-tuple
/// (Linux ≥ 4.2, as Envoy and HAProxy do). Best effort: without it the bind
/// still works, only slower.
fn defer_port_choice(socket: &TcpSocket) {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: the descriptor belongs to `socket`, open for the whole call;
    // the option value is a valid c_int whose size is passed alongside.
    #[expect(
        unsafe_code,
        reason = "no safe wrapper exposes IP_BIND_ADDRESS_NO_PORT"
    )]
    let _ = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            std::ptr::from_ref(&on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

/// Relays until both directions are done, then logs and counts. With a
/// `lease`, a revocation (a reloaded policy denies the connection) resets
/// both sides; so does the drain deadline (`drain`).
#[expect(
    clippy::too_many_arguments,
    reason = "one flow's description, its counters and what may end it early"
)]
pub async fn run<A, B>(
    mut a: A,
    mut b: B,
    route: &mut Route,
    dst: SocketAddr,
    dest: Option<Arc<Workload>>,
    observer: &Observer,
    lease: Option<&Lease>,
    drain: &Drain,
) where
    A: AsyncRead + AsyncWrite + Unpin + Abort,
    B: AsyncRead + AsyncWrite + Unpin + Abort,
{
    let early = b.sent_early();
    let pump = async {
        let result = {
            let revocation = async {
                match lease {
                    Some(lease) => lease.revoked().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = copy::bidirectional(&mut a, &mut b) => r,
                () = revocation => Err(revoked()),
                () = drain.cut() => Err(cut(drain)),
            }
        };
        match result {
            Ok((sent, received)) => Outcome {
                sent: early + sent,
                received,
                refused: 0,
                error: None,
            },
            Err(e) => {
                a.abort();
                b.abort();
                Outcome {
                    sent: 0,
                    received: 0,
                    refused: 0,
                    error: Some(e.to_string()),
                }
            }
        }
    };
    account(route, dst, dest, observer, pump).await;
}

/// Relays a connection `authz` admitted: as bytes, or as HTTP judged request
/// by request. A refused one was answered where it was refused.
#[expect(
    clippy::too_many_arguments,
    reason = "the flow description of `run`, plus the admission and its judge"
)]
pub async fn admitted<A>(
    admission: Admission,
    authz: &Authz,
    client: A,
    upstream: TcpStream,
    route: &mut Route,
    dst: SocketAddr,
    dest: Arc<Workload>,
    observer: &Observer,
    drain: &Drain,
) where
    A: AsyncRead + AsyncWrite + Unpin + Abort + Send + 'static,
{
    match admission {
        Admission::Relay(lease) => {
            let lease = Some(&lease);
            run(
                client,
                upstream,
                route,
                dst,
                Some(dest),
                observer,
                lease,
                drain,
            )
            .await;
        }
        Admission::Http(lease) => {
            let gate = authz.gate(&lease);
            // Boxed: the HTTP server and client futures are about 5 KiB, and
            // inlined they would size every relayed connection's task, byte
            // relays too, for as long as it lives.
            Box::pin(run_http(
                client,
                upstream,
                gate,
                authz.http_limits(),
                route,
                dst,
                Some(dest),
                observer,
                &lease,
                drain,
            ))
            .await;
        }
        Admission::Denied(_) | Admission::Limited(_) => {}
    }
}

/// Serves an HTTP connection whose requests `gate` judges one by one (with
/// `limits`' timers), then logs and counts like [`run`]. A revocation closes both sides.
#[expect(
    clippy::too_many_arguments,
    reason = "the same flow description as `run`, plus the gate and its timers"
)]
pub async fn run_http<A>(
    client: A,
    upstream: TcpStream,
    gate: RequestGate,
    limits: &http::Limits,
    route: &mut Route,
    dst: SocketAddr,
    dest: Option<Arc<Workload>>,
    observer: &Observer,
    lease: &Lease,
    drain: &Drain,
) where
    A: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let pump = async {
        tokio::select! {
            s = http::serve(client, upstream, Arc::new(gate), limits, drain) => Outcome {
                sent: s.bytes_in,
                received: s.bytes_out,
                refused: s.refused,
                error: s.error,
            },
            _ = lease.revoked() => Outcome {
                sent: 0,
                received: 0,
                refused: 0,
                error: Some(revoked().to_string()),
            },
            () = drain.cut() => Outcome {
                sent: 0,
                received: 0,
                refused: 0,
                error: Some(drain.why().to_owned()),
            },
        }
    };
    account(route, dst, dest, observer, pump).await;
}

fn cut(drain: &Drain) -> std::io::Error {
    std::io::Error::other(drain.why())
}

fn revoked() -> std::io::Error {
    std::io::Error::other("closed: a reloaded policy denies this connection")
}

/// What a relay moved, and how it ended.
struct Outcome {
    sent: u64,
    received: u64,
    /// HTTP requests the proxy answered itself (denials and the like).
    refused: u64,
    error: Option<String>,
}

/// Counts the connection while `pump` moves its bytes, then logs it. The
/// connection's span stays in `route` until then.
async fn account(
    route: &mut Route,
    dst: SocketAddr,
    dest: Option<Arc<Workload>>,
    observer: &Observer,
    pump: impl std::future::Future<Output = Outcome>,
) {
    let start = Instant::now();
    let series = series(route, dest.as_deref(), observer);
    for s in &series {
        s.opened();
    }
    route.flow().opened();
    observer.active(1);
    let Outcome {
        sent,
        received,
        refused,
        error,
    } = pump.await;
    observer.active(-1);
    for s in &series {
        s.closed(sent, received);
    }
    if let Some(span) = route.take_trace() {
        finish_span(
            span,
            route,
            dest.as_deref(),
            dst,
            (sent, received),
            error.is_some(),
        );
    }
    let flow = route.flow();
    flow.closed(sent, received);
    if let Some(e) = &error {
        flow.error(e);
    }
    let success = error.is_none() && refused == 0;
    if !observer.access_log().should_log(success) {
        return;
    }
    let done = Done {
        dst,
        dest: dest.as_deref(),
        sent,
        received,
        millis: millis(start.elapsed()),
        error: error.as_deref().unwrap_or(""),
    };
    log(route, &done);
}

struct Done<'a> {
    dst: SocketAddr,
    dest: Option<&'a Workload>,
    sent: u64,
    received: u64,
    millis: u64,
    error: &'a str,
}

/// The caller as metric labels: only bounded values.
struct Caller<'a> {
    principal: Cow<'a, str>,
    workload: &'a str,
    namespace: &'a str,
}

/// The connection's series: one per reporting role this proxy plays (see
/// [`crate::telemetry`]). Looked up once, when the connection opens.
fn series(route: &Route, dest: Option<&Workload>, observer: &Observer) -> Vec<ConnectionSeries> {
    let caller = caller(route, observer.trust_domain());
    reporters(route, dest)
        .iter()
        .map(|&reporter| {
            observer.connection(&labels(reporter, &caller, dest, service_label(route)))
        })
        .collect()
}

fn reporters(route: &Route, dest: Option<&Workload>) -> &'static [Reporter] {
    match (route, dest) {
        (
            Route::Outbound {
                path: Path::Local, ..
            },
            Some(_),
        ) => &[Reporter::Source, Reporter::Destination],
        (Route::Outbound { .. }, _) => &[Reporter::Source],
        (Route::Inbound { .. }, _) => &[Reporter::Destination],
    }
}

fn labels<'a>(
    reporter: Reporter,
    caller: &'a Caller<'_>,
    dest: Option<&'a Workload>,
    service: &'a str,
) -> ConnLabels<'a> {
    ConnLabels {
        reporter,
        source_principal: &caller.principal,
        source_workload: caller.workload,
        source_namespace: caller.namespace,
        destination_workload: dest.map_or(UNKNOWN, |w| &w.name),
        destination_namespace: dest.map_or(UNKNOWN, |w| &w.namespace),
        destination_service: service,
    }
}

/// `<name>.<namespace>` of the Service an outbound caller dialled.
fn service_label(route: &Route) -> &str {
    match route {
        Route::Outbound {
            service: Some(call),
            ..
        } => &call.service.id,
        _ => UNKNOWN,
    }
}

/// An outbound caller is a local workload the kernel record and source IP
/// vouched for. An inbound caller's ID was verified by mTLS, and the tunnel
/// verifier accepts only (namespace, service account) pairs the workloads
/// file places on the signing node, so it is bounded too; the workload it
/// names in `Forwarded` was checked against that identity.
fn caller<'a>(route: &'a Route, trust_domain: Option<&str>) -> Caller<'a> {
    match route {
        Route::Outbound { source, .. } => Caller {
            principal: trust_domain.map_or(Cow::Borrowed(UNKNOWN), |td| {
                Cow::Owned(format!(
                    "spiffe://{td}/ns/{}/sa/{}",
                    source.namespace, source.service_account
                ))
            }),
            workload: &source.name,
            namespace: &source.namespace,
        },
        Route::Inbound {
            principal, source, ..
        } => {
            let namespace = principal.namespace_and_sa().map(|(ns, _)| ns);
            Caller {
                principal: Cow::Borrowed(namespace.map_or(UNKNOWN, |_| principal.as_str())),
                workload: source.as_ref().map_or(UNKNOWN, |w| &w.name),
                namespace: namespace.unwrap_or(UNKNOWN),
            }
        }
    }
}

/// Records the tunnel hop's span: who called whom, and what moved. Only
/// values the proxy vouches for (workloads, verified identities, addresses).
fn finish_span(
    mut span: ConnSpan,
    route: &Route,
    dest: Option<&Workload>,
    dst: SocketAddr,
    (sent, received): (u64, u64),
    failed: bool,
) {
    if !span.is_recording() {
        return;
    }
    match route {
        Route::Outbound { source, .. } => {
            span.set_str("nodeward.source.workload", &source.to_string());
        }
        Route::Inbound {
            principal,
            source_node,
            source,
            peer,
            ..
        } => {
            span.set_str("nodeward.source.principal", principal.as_str());
            span.set_str("nodeward.source.node", source_node);
            if let Some(w) = source {
                span.set_str("nodeward.source.workload", &w.to_string());
            }
            span.set_str("network.peer.address", &peer.ip().to_string());
        }
    }
    if let Some(w) = dest {
        span.set_str("nodeward.destination.workload", &w.to_string());
    }
    span.set_str("server.address", &dst.ip().to_string());
    span.set_int("server.port", i64::from(dst.port()));
    span.set_int(
        "nodeward.bytes_sent",
        i64::try_from(sent).unwrap_or(i64::MAX),
    );
    span.set_int(
        "nodeward.bytes_received",
        i64::try_from(received).unwrap_or(i64::MAX),
    );
    span.finish(failed.then_some("relay_error"));
}

fn log(route: &Route, d: &Done<'_>) {
    let destination = d
        .dest
        .map_or_else(|| "unknown".to_owned(), |w| w.to_string());
    match route {
        Route::Outbound {
            source,
            peer,
            path,
            service,
            ..
        } => tracing::info!(
            target: "nodeward::access",
            event = "connection",
            path = path.as_str(),
            destination_service = service.as_ref().map_or(UNKNOWN, |c| c.service.id.as_str()),
            service_vip = %service.as_ref().map_or_else(|| UNKNOWN.to_owned(), |c| c.vip.to_string()),
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
            ..
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
