//! The outbound listener: pods' meshed connections arrive here (redirected by
//! the kernel), are attributed to a workload, and are relayed to where the pod
//! meant to go.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use nodeward_common::OrigDst;
use tokio::{
    io::copy_bidirectional_with_sizes,
    net::{TcpListener, TcpStream},
    sync::watch,
    time::timeout,
};

use crate::{
    metrics::Metrics,
    redirect::{orig_dst_addr, FlowTable},
    workloads::{Registry, Workload},
};

/// How long to wait for the destination to accept.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Relay buffer per direction: large enough that bulk transfers are not
/// syscall-bound.
const RELAY_BUF: usize = 64 * 1024;

/// Why a connection was refused before being relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No kernel record: someone dialled the outbound port directly.
    NoKernelRecord,
    UnknownCgroup,
    SourceIpMismatch,
    /// The original destination is the proxy's own listener.
    Loop,
}

impl Refusal {
    /// Stable label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoKernelRecord => "no_kernel_record",
            Self::UnknownCgroup => "unknown_cgroup",
            Self::SourceIpMismatch => "source_ip_mismatch",
            Self::Loop => "loop",
        }
    }
}

/// Everything connection tasks share (read-only).
pub struct Shared {
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
}

/// A connection that passed the checks, ready to relay.
struct Accepted {
    stream: TcpStream,
    peer: SocketAddr,
    dst: SocketAddr,
    source: Arc<Workload>,
}

/// Accepts on `listeners` until `shutdown` flips, spawning a relay per connection.
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
    loop {
        let accepted = tokio::select! {
            r = accept_on(first.as_ref()) => r,
            r = accept_on(second.as_ref()) => r,
            _ = shutdown.changed() => return,
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
        match classify(stream, peer, &mut flows, &shared.registry, &own) {
            Ok(conn) => {
                tokio::spawn(relay(conn, shared.clone()));
            }
            Err(reason) => refuse(reason, peer, &shared.metrics),
        }
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
            crate::workloads::Unknown::Cgroup => Refusal::UnknownCgroup,
            crate::workloads::Unknown::SourceIp => Refusal::SourceIpMismatch,
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

fn refuse(reason: Refusal, peer: SocketAddr, metrics: &Metrics) {
    metrics.refused.with_label_values(&[reason.as_str()]).inc();
    tracing::info!(
        target: "nodeward::access",
        event = "refused",
        reason = reason.as_str(),
        peer = %peer,
        "outbound connection refused"
    );
}

async fn relay(conn: Accepted, shared: Arc<Shared>) {
    let Accepted {
        mut stream,
        peer,
        dst,
        source,
    } = conn;
    let start = Instant::now();
    let metrics = &shared.metrics;
    let dest = shared.registry.by_ip(dst.ip());
    let labels = [
        "outbound",
        source.namespace.as_str(),
        source.name.as_str(),
        dest.map_or("unknown", |w| w.namespace.as_str()),
        dest.map_or("unknown", |w| w.name.as_str()),
    ];
    let _ = stream.set_nodelay(true);
    let mut upstream = match timeout(CONNECT_TIMEOUT, TcpStream::connect(dst)).await {
        Ok(Ok(s)) => s,
        failed => {
            let error = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => "timed out".to_owned(),
            };
            metrics.connect_failures.inc();
            // Reset rather than close: the pod sees a failed connection, not an empty reply.
            let _ = stream.set_zero_linger();
            tracing::info!(target: "nodeward::access", event = "connect_failed", source = %source,
                peer = %peer, orig_dst = %dst, error, "outbound connect failed");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    metrics.connections_opened.with_label_values(&labels).inc();
    metrics.active_connections.inc();
    let result =
        copy_bidirectional_with_sizes(&mut stream, &mut upstream, RELAY_BUF, RELAY_BUF).await;
    metrics.active_connections.dec();
    metrics.connections_closed.with_label_values(&labels).inc();
    let (sent, received, error) = match result {
        Ok((s, r)) => (s, r, None),
        Err(e) => {
            // A broken relay must not look like a complete exchange: reset
            // both sides instead of closing them cleanly.
            let _ = stream.set_zero_linger();
            let _ = upstream.set_zero_linger();
            (0, 0, Some(e.to_string()))
        }
    };
    metrics.bytes_sent.with_label_values(&labels).inc_by(sent);
    metrics
        .bytes_received
        .with_label_values(&labels)
        .inc_by(received);
    tracing::info!(
        target: "nodeward::access",
        event = "connection",
        source = %source,
        source_service_account = %source.service_account,
        peer = %peer,
        orig_dst = %dst,
        destination = %dest.map_or_else(|| "unknown".to_owned(), |w| w.to_string()),
        bytes_sent = sent,
        bytes_received = received,
        duration_ms = start.elapsed().as_millis() as u64,
        error = error.as_deref().unwrap_or(""),
        "outbound connection closed"
    );
}
