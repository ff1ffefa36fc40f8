//! The outbound listener: pods' meshed connections arrive here (redirected by
//! the kernel), are attributed to a workload, and are relayed to where the pod
//! meant to go: straight to a pod on this node, through the mTLS tunnel to a
//! pod on another node, or as addressed for mesh addresses that are no
//! known workload.

use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use arc_swap::ArcSwap;
use nodeward_common::OrigDst;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};

use nodeward_bpf::{orig_dst_addr, FlowTable};
use nodeward_identity::{CertStore, SpiffeId};
use nodeward_workloads::{EndpointGuard, Registry, Workload};

use crate::{
    authz::{Admission, Authz, Subject},
    balance,
    drain::Drain,
    flows::{EdgeKey, End, EndKind},
    relay::{self, Dialer, Path, Route, ServiceCall},
    telemetry::{Observer, Pending},
    trace::{ConnSpan, TraceParent},
    tunnel::{self, Pool, Target, TunnelError},
};

/// Why a connection was refused before being relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No kernel record: someone dialled the outbound port directly.
    NoKernelRecord,
    UnknownCgroup,
    SourceIpMismatch,
    /// The original destination is the proxy's own listener.
    Loop,
    /// The destination is an address of this node (a node IP, the bridge
    /// gateway): never dialled from the node as passthrough.
    NodeLocal,
    /// An address in the mesh that is no workload, Service or listed
    /// endpoint: failing closed, since the proxy dialling it from its own
    /// address would get past a strict pod's inbound filter.
    UnknownDestination,
    /// A Service VIP with no ready endpoint.
    NoEndpoints,
    /// A Service VIP on a port the Service does not expose.
    UnknownServicePort,
}

impl Refusal {
    /// Stable label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoKernelRecord => "no_kernel_record",
            Self::UnknownCgroup => "unknown_cgroup",
            Self::SourceIpMismatch => "source_ip_mismatch",
            Self::Loop => "loop",
            Self::NodeLocal => "node_local",
            Self::UnknownDestination => "unknown_destination",
            Self::NoEndpoints => "no_endpoints",
            Self::UnknownServicePort => "unknown_service_port",
        }
    }
}

/// Everything connection tasks share.
pub struct Shared {
    pub node: String,
    pub registry: Arc<ArcSwap<Registry>>,
    pub observer: Arc<Observer>,
    pub certs: Arc<CertStore>,
    pub pool: Arc<Pool>,
    pub dialer: Dialer,
    /// Port of other nodes' tunnel listeners.
    pub tunnel_port: u16,
    /// This node's own addresses (every interface of the node's network
    /// namespace): pods may not reach them through the proxy.
    pub node_local: HashSet<IpAddr>,
    /// Authorization for same-node hops (remote ones are judged by the
    /// destination's proxy).
    pub authz: Arc<Authz>,
    /// Ends the relays when the proxy stops.
    pub drain: Drain,
}

/// Where a connection goes once Services are resolved.
struct Resolved {
    /// The address to dial: the original destination, or the endpoint a
    /// Service VIP resolved to.
    dst: SocketAddr,
    dest: Option<Arc<Workload>>,
    service: Option<ServiceCall>,
    /// Counts the connection against its endpoint while it is open.
    _load: Option<EndpointGuard>,
}

/// A connection that passed the checks, ready to relay.
struct Accepted {
    stream: TcpStream,
    peer: SocketAddr,
    dst: SocketAddr,
    source: Arc<Workload>,
}

/// Accepts on `listeners` until `shutdown` flips, spawning a relay per
/// connection; then takes what is already queued (see [`take_queued`]).
pub async fn serve(
    listeners: Vec<TcpListener>,
    mut flows: FlowTable,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let own: Vec<SocketAddr> = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect();
    let (first, second) = split(listeners);
    // Set by the stop: until when queued connections are still taken.
    let mut stop_by = None;
    loop {
        let accepted = if let Some(deadline) = stop_by {
            match take_queued(first.as_ref(), second.as_ref(), deadline).await {
                Some(r) => r,
                None => return,
            }
        } else {
            tokio::select! {
                r = accept_on(first.as_ref()) => r,
                r = accept_on(second.as_ref()) => r,
                _ = shutdown.changed() => {
                    stop_by = Some(tokio::time::Instant::now() + QUEUE_TAKE_MAX);
                    continue;
                }
            }
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "outbound accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        match classify(stream, peer, &mut flows, &shared.registry.load(), &own) {
            Ok(conn) => {
                // Counted from accept, so a drain does not end while it is
                // still being authorized or dialled.
                let pending = Pending::start(&shared.observer);
                tokio::spawn(relay(conn, shared.clone(), pending));
            }
            Err(reason) => refuse(reason, peer, &shared.observer),
        }
    }
}

/// Once the queues have been empty this long, none is coming: from the
/// stop on the kernel sends no new connection here (the programs are
/// detached, or a successor's listener takes every new one), so this only
/// covers handshakes that were completing as the stop came.
const QUEUE_QUIET: Duration = Duration::from_millis(50);
/// Bound on taking queued connections at a stop, however many there are.
const QUEUE_TAKE_MAX: Duration = Duration::from_secs(2);

/// After the stop, the connections the kernel has already queued on our
/// listeners: taken and relayed like any other instead of being reset by
/// the close. Linux before 5.14 has no `tcp_migrate_req` to move them to a
/// successor, and a plain stop has no successor at all. `None` once the
/// queues stay empty for [`QUEUE_QUIET`] or at `deadline`.
async fn take_queued(
    first: Option<&TcpListener>,
    second: Option<&TcpListener>,
    deadline: tokio::time::Instant,
) -> Option<std::io::Result<(TcpStream, SocketAddr)>> {
    let now = tokio::time::Instant::now();
    if now >= deadline {
        return None;
    }
    let quiet = deadline.min(now + QUEUE_QUIET);
    tokio::select! {
        r = accept_on(first) => Some(r),
        r = accept_on(second) => Some(r),
        _ = tokio::time::sleep_until(quiet) => None,
    }
}

fn split(listeners: Vec<TcpListener>) -> (Option<TcpListener>, Option<TcpListener>) {
    let mut it = listeners.into_iter();
    (it.next(), it.next())
}

async fn accept_on(l: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match l {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Looks up the kernel record and the source workload. Runs in the accept
/// loop, which alone owns the flow table: no lock on the hot path.
fn classify(
    stream: TcpStream,
    peer: SocketAddr,
    flows: &mut FlowTable,
    registry: &Registry,
    own: &[SocketAddr],
) -> Result<Accepted, Refusal> {
    let local = stream.local_addr().map_err(|_| Refusal::NoKernelRecord)?;
    let record: OrigDst = flows.take(peer, local).ok_or(Refusal::NoKernelRecord)?;
    let source = registry
        .identify(record.cgroup_id, peer.ip())
        .map_err(|u| match u {
            nodeward_workloads::Unknown::Cgroup => Refusal::UnknownCgroup,
            nodeward_workloads::Unknown::SourceIp => Refusal::SourceIpMismatch,
        })?;
    let dst = orig_dst_addr(&record);
    if own
        .iter()
        .any(|o| o.port() == dst.port() && (o.ip() == dst.ip() || o.ip().is_unspecified()))
    {
        return Err(Refusal::Loop);
    }
    Ok(Accepted {
        stream,
        peer: SocketAddr::new(peer.ip().to_canonical(), peer.port()),
        dst,
        source: source.clone(),
    })
}

fn refuse(reason: Refusal, peer: SocketAddr, observer: &Observer) {
    observer.refused(reason.as_str());
    tracing::info!(
        target: "nodeward::access",
        event = "refused",
        reason = reason.as_str(),
        peer = %peer,
        "outbound connection refused"
    );
}

/// Resolves a Service VIP to one endpoint and says which workload, if
/// any, the connection is for; refuses what must not be dialled.
fn resolve(shared: &Shared, dst: SocketAddr) -> Result<Resolved, Refusal> {
    if shared.node_local.contains(&dst.ip().to_canonical()) {
        return Err(Refusal::NodeLocal);
    }
    let registry = shared.registry.load();
    let Some((service, target)) = registry.services().resolve(dst.ip(), dst.port()) else {
        if registry.services().is_vip(dst.ip()) {
            return Err(Refusal::UnknownServicePort);
        }
        let dest = registry.by_ip(dst.ip()).cloned();
        if dest.is_none() {
            return Err(Refusal::UnknownDestination);
        }
        return Ok(Resolved {
            dst,
            dest,
            service: None,
            _load: None,
        });
    };
    let endpoint = balance::pick(&service.endpoints).ok_or(Refusal::NoEndpoints)?;
    let ip = endpoint.ip_for(dst.ip());
    if shared.node_local.contains(&ip) {
        return Err(Refusal::NodeLocal);
    }
    Ok(Resolved {
        dst: SocketAddr::new(ip, target),
        dest: endpoint.workload.clone(),
        service: Some(ServiceCall {
            service: service.clone(),
            vip: dst,
        }),
        _load: Some(EndpointGuard::open(endpoint)),
    })
}

/// Refuses a connection already handed to its task: a reset, counted.
fn refuse_reset(stream: &TcpStream, reason: Refusal, peer: SocketAddr, observer: &Observer) {
    let _ = stream.set_zero_linger();
    refuse(reason, peer, observer);
}

async fn relay(conn: Accepted, shared: Arc<Shared>, pending: Pending) {
    let Accepted {
        stream,
        peer,
        dst: orig_dst,
        source,
    } = conn;
    let _ = stream.set_nodelay(true);
    let resolved = match resolve(&shared, orig_dst) {
        Ok(r) => r,
        Err(reason) => {
            let flow = shared.observer.flow(|| edge(&source, None, orig_dst));
            flow.error(&format!("refused: {}", reason.as_str()));
            return refuse_reset(&stream, reason, peer, &shared.observer);
        }
    };
    let (dst, dest) = (resolved.dst, resolved.dest.clone());
    let path = match &dest {
        Some(w) if !w.enrolled => Path::Passthrough,
        Some(w) if w.node == shared.node => Path::Local,
        Some(_) => Path::Tunnel,
        None => Path::Passthrough,
    };
    let trace = match (path, shared.observer.tracer()) {
        (Path::Tunnel, Some(tracer)) => Some(ConnSpan::client(tracer)),
        _ => None,
    };
    let flow = shared
        .observer
        .flow(|| edge(&source, Some(&resolved), orig_dst));
    let mut route = Route::Outbound {
        source: source.clone(),
        peer,
        path,
        service: resolved.service.clone(),
        trace,
        flow: flow.clone(),
    };
    let observer = &shared.observer;
    let hop = (peer, dst, route.trace_context());
    match (path, dest) {
        (Path::Tunnel, Some(w)) => match tunnel(&shared, &source, &w, hop, &stream).await {
            Ok(up) => {
                drop(pending);
                relay::run(
                    stream,
                    up,
                    &mut route,
                    dst,
                    Some(w),
                    observer,
                    None,
                    &shared.drain,
                )
                .await
            }
            Err(e) => {
                if let Some(span) = route.take_trace() {
                    span.finish(Some(e.reason()));
                }
                flow.error(&format!("{}: {e}", e.reason()));
                connect_failed(stream, &source, peer, dst, e.reason(), &e, observer)
            }
        },
        (Path::Local, Some(w)) => local(&shared, stream, &mut route, w, peer, dst, pending).await,
        (_, dest) => match shared.dialer.dial(dst).await {
            Ok(up) => {
                drop(pending);
                let drain = &shared.drain;
                relay::run(stream, up, &mut route, dst, dest, observer, None, drain).await
            }
            Err(e) => {
                flow.error(&format!("connect: {e}"));
                connect_failed(stream, &source, peer, dst, "connect", &e, observer)
            }
        },
    }
}

/// A same-node hop: this proxy is also the destination's proxy, so it
/// authorizes here, with the identity the kernel record vouched for.
async fn local(
    shared: &Shared,
    stream: TcpStream,
    route: &mut Route,
    dest: Arc<Workload>,
    peer: SocketAddr,
    dst: SocketAddr,
    pending: Pending,
) {
    let Route::Outbound { source, .. } = &*route else {
        return;
    };
    let source = source.clone();
    let td = shared.certs.ca().trust_domain();
    let Ok(principal) = SpiffeId::workload(td, &source.namespace, &source.service_account) else {
        // A caller we cannot name is refused, never judged as anonymous.
        let _ = stream.set_zero_linger();
        return;
    };
    let subject = Subject {
        principal: Some(principal),
        source_ip: Some(peer.ip()),
        destination: dest.clone(),
        dst,
        flow: route.flow().clone(),
    };
    let admission = shared.authz.admit(subject);
    if let Admission::Denied(d) | Admission::Limited(d) = &admission {
        // Reset: the caller sees a refused connection, as with a remote denial.
        let _ = stream.set_zero_linger();
        tracing::info!(target: "nodeward::access", event = "denied", source = %source,
            peer = %peer, orig_dst = %dst, destination = %dest, reason = %d.reason,
            "outbound connection denied by policy");
        return;
    }
    let up = match shared.dialer.dial(dst).await {
        Ok(up) => up,
        Err(e) => {
            route.flow().error(&format!("connect: {e}"));
            let m = &shared.observer;
            return connect_failed(stream, &source, peer, dst, "connect", &e, m);
        }
    };
    drop(pending);
    let (authz, observer, drain) = (&shared.authz, &shared.observer, &shared.drain);
    relay::admitted(
        admission, authz, stream, up, route, dst, dest, observer, drain,
    )
    .await;
}

/// The flow-map edge of an outbound connection: from its workload to the
/// Service it dialled, else the workload it reached, else unknown; on the
/// port it dialled (port 0 for unknown).
fn edge(source: &Workload, resolved: Option<&Resolved>, orig_dst: SocketAddr) -> EdgeKey {
    let destination = match resolved {
        Some(Resolved {
            service: Some(call),
            ..
        }) => End::new(
            EndKind::Service,
            &call.service.namespace,
            &call.service.name,
        ),
        Some(Resolved { dest: Some(w), .. }) => End::new(EndKind::Workload, &w.namespace, &w.name),
        _ => End::unknown(),
    };
    // An unknown destination is keyed without its port (EdgeKey::new):
    // refused connections make edges too, and a port scan must not make
    // one per port.
    let source = End::new(EndKind::Workload, &source.namespace, &source.name);
    EdgeKey::new(source, destination, orig_dst.port())
}

/// Opens a tunnel stream to `dest`'s node as `source`, for the caller at
/// `peer` dialling `dst`, with the hop's span context when traced; what
/// `caller` sends meanwhile goes with the CONNECT.
async fn tunnel(
    shared: &Shared,
    source: &Workload,
    dest: &Workload,
    (peer, dst, trace): (SocketAddr, SocketAddr, Option<TraceParent>),
    caller: &TcpStream,
) -> Result<tunnel::Stream, TunnelFailure> {
    let td = shared.certs.ca().trust_domain().to_owned();
    let src_id = SpiffeId::workload(&td, &source.namespace, &source.service_account)
        .map_err(|_| TunnelFailure::NoCertificate)?;
    let dst_id = SpiffeId::workload(&td, &dest.namespace, &dest.service_account)
        .map_err(|_| TunnelFailure::NoCertificate)?;
    let issued = shared
        .certs
        .get(&src_id)
        .ok_or(TunnelFailure::NoCertificate)?;
    let node_ip = shared
        .registry
        .load()
        .node_address(&dest.node)
        .ok_or(TunnelFailure::UnknownNode)?;
    let target = Target {
        source: &issued,
        destination: &dst_id,
        node: &dest.node,
        node_addr: SocketAddr::new(node_ip, shared.tunnel_port),
        authority: dst,
        client_ip: peer.ip(),
        trace,
        caller: Some(caller),
    };
    Ok(shared.pool.connect(target).await?)
}

/// Why an outbound connection could not get a tunnel stream.
#[derive(Debug, thiserror::Error)]
enum TunnelFailure {
    #[error("no certificate for the source identity yet")]
    NoCertificate,
    #[error("the destination's node has no address in the workloads file")]
    UnknownNode,
    #[error(transparent)]
    Tunnel(#[from] TunnelError),
}

impl TunnelFailure {
    fn reason(&self) -> &'static str {
        match self {
            Self::NoCertificate => "no_certificate",
            Self::UnknownNode => "unknown_node",
            Self::Tunnel(e) => e.reason(),
        }
    }
}

fn connect_failed(
    stream: TcpStream,
    source: &Workload,
    peer: SocketAddr,
    dst: SocketAddr,
    reason: &'static str,
    error: &dyn std::fmt::Display,
    observer: &Observer,
) {
    observer.connect_failed(reason);
    // Reset rather than close: the pod sees a failed connection, not an empty reply.
    let _ = stream.set_zero_linger();
    tracing::info!(target: "nodeward::access", event = "connect_failed", source = %source,
        peer = %peer, orig_dst = %dst, reason, error = %error, "outbound connect failed");
}
