//! Byte relaying between two streams, and dialling local workloads, shared
//! by the outbound listener and the tunnel server. One set of metric updates
//! and (unless sampled out) one access-log line per finished connection, and
//! the same per HTTP request through [`log_request`].
//!
//! Access records are `tracing` events with target `nodeward::access`.
//! [`AccessLog`] samples the records of *successful* connections and
//! requests; errors, refusals, denials and rate-limited requests are always
//! logged, and metrics always count everything.

use std::{
    borrow::Cow,
    cell::Cell,
    collections::hash_map::RandomState,
    hash::BuildHasher,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpSocket, TcpStream},
    time::timeout,
};

mod copy;
mod drain;

pub use drain::{Drain, DrainControl};

use crate::{
    authz::{audit::clean, Admission, Authz, Lease, RequestGate},
    http,
    identity::SpiffeId,
    metrics::{ConnLabels, ConnectionSeries, Metrics, RateLimitOutcome, Reporter, UNKNOWN},
    tunnel::pool,
    workloads::Workload,
};

/// How long to wait for a destination to accept.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Relay buffer of a direction in bulk mode (see `relay::copy`): large enough that
/// bulk transfers are not syscall-bound.
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

/// Which successful connections and requests get an access record.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AccessLog {
    /// Fraction logged, 0.0 to 1.0.
    sample: f64,
}

/// An access-log sampling fraction outside 0.0–1.0 (or not a number).
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("access-log sampling must be a fraction from 0.0 to 1.0, got {0}")]
pub struct InvalidSampling(pub f64);

/// One HTTP request, as [`log_request`] records it.
#[derive(Debug, Clone, Copy)]
pub struct RequestRecord<'a> {
    /// Which proxy saw the request (the destination's, where HTTP is judged).
    pub reporter: Reporter,
    /// The connection's id, as in audit records ([`Lease::id`]).
    pub connection_id: u64,
    /// The caller's verified identity; `None` for an unauthenticated caller.
    pub source_principal: Option<&'a SpiffeId>,
    pub source_ip: Option<IpAddr>,
    pub destination: &'a Workload,
    /// The original destination (pod IP and port).
    pub dst: SocketAddr,
    /// Method, path (as authorised, after normalisation) and host, as the
    /// client sent them: cleaned before they are logged, never used as labels.
    pub method: &'a str,
    pub path: &'a str,
    pub host: &'a str,
    /// The status the client got (from the pod, or the proxy's refusal).
    pub status: u16,
    pub duration: Duration,
    /// Request body bytes passed to the pod.
    pub request_bytes: u64,
    /// Response body bytes passed to the client.
    pub response_bytes: u64,
    /// Whether authorization allowed the request.
    pub allowed: bool,
    /// The deciding policy, `namespace/name`; `None` for the default.
    pub policy: Option<&'a str>,
    /// The rate limiter's outcome; `None` when no limit applies.
    pub rate_limit: Option<RateLimitOutcome>,
    /// What went wrong, if the exchange failed (e.g. the pod reset).
    pub error: Option<&'a str>,
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
        defer_port_choice(&socket);
        socket.bind(SocketAddr::new(local, 0))?;
        let stream = timeout(CONNECT_TIMEOUT, socket.connect(dst))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

impl AccessLog {
    /// Logs every connection and request (the default).
    pub const ALL: Self = Self { sample: 1.0 };

    /// Logs `sample` (0.0–1.0) of successful connections and requests.
    pub fn new(sample: f64) -> Result<Self, InvalidSampling> {
        if (0.0..=1.0).contains(&sample) {
            Ok(Self { sample })
        } else {
            Err(InvalidSampling(sample))
        }
    }

    /// The fraction of successful connections and requests logged.
    pub fn sample(&self) -> f64 {
        self.sample
    }

    /// Whether to log this record: always for a failure, otherwise with
    /// probability `sample`.
    pub fn should_log(&self, success: bool) -> bool {
        !success || self.sample >= 1.0 || (self.sample > 0.0 && unit_random() < self.sample)
    }
}

impl Default for AccessLog {
    fn default() -> Self {
        Self::ALL
    }
}

/// Counts one HTTP request in `http_requests_total` and logs it (a
/// successful one subject to sampling; denied, rate-limited, failed and
/// 5xx requests always).
pub fn log_request(metrics: &Metrics, r: &RequestRecord<'_>) {
    metrics.count_http_request(
        r.reporter,
        &r.destination.name,
        &r.destination.namespace,
        r.status,
    );
    let limited = matches!(
        r.rate_limit,
        Some(RateLimitOutcome::Limited | RateLimitOutcome::ShadowLimited)
    );
    let success = r.allowed && !limited && r.error.is_none() && r.status < 500;
    if !metrics.access_log().should_log(success) {
        return;
    }
    tracing::info!(
        target: "nodeward::access",
        event = "request",
        reporter = r.reporter.as_str(),
        connection_id = r.connection_id,
        source_principal = r.source_principal.map_or(UNKNOWN, SpiffeId::as_str),
        source_ip = %r.source_ip.map_or_else(|| UNKNOWN.to_owned(), |ip| ip.to_string()),
        destination = %r.destination,
        orig_dst = %r.dst,
        method = %clean(r.method),
        path = %clean(r.path),
        host = %clean(r.host),
        status = r.status,
        duration_ms = millis(r.duration),
        request_bytes = r.request_bytes,
        response_bytes = r.response_bytes,
        decision = if r.allowed { "allow" } else { "deny" },
        policy = r.policy.unwrap_or("default"),
        rate_limit = r.rate_limit.map_or("none", RateLimitOutcome::as_str),
        error = r.error.unwrap_or(""),
        "http request"
    );
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
    route: Route,
    dst: SocketAddr,
    dest: Option<Arc<Workload>>,
    metrics: &Metrics,
    lease: Option<&Lease>,
    drain: &Drain,
) where
    A: AsyncRead + AsyncWrite + Unpin + Abort,
    B: AsyncRead + AsyncWrite + Unpin + Abort,
{
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
                () = drain.cut() => Err(cut()),
            }
        };
        match result {
            Ok((sent, received)) => Outcome {
                sent,
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
    account(route, dst, dest, metrics, pump).await;
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
    route: Route,
    dst: SocketAddr,
    dest: Arc<Workload>,
    metrics: &Metrics,
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
                metrics,
                lease,
                drain,
            )
            .await;
        }
        Admission::Http(lease) => {
            let gate = authz.gate(&lease);
            run_http(
                client,
                upstream,
                gate,
                route,
                dst,
                Some(dest),
                metrics,
                &lease,
                drain,
            )
            .await;
        }
        Admission::Denied(_) | Admission::Limited(_) => {}
    }
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
    drain: &Drain,
) where
    A: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let pump = async {
        tokio::select! {
            s = http::serve(client, upstream, Arc::new(gate), drain) => Outcome {
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
                error: Some(cut().to_string()),
            },
        }
    };
    account(route, dst, dest, metrics, pump).await;
}

fn cut() -> std::io::Error {
    std::io::Error::other("cut at the drain deadline")
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

/// Counts the connection while `pump` moves its bytes, then logs it.
async fn account(
    route: Route,
    dst: SocketAddr,
    dest: Option<Arc<Workload>>,
    metrics: &Metrics,
    pump: impl std::future::Future<Output = Outcome>,
) {
    let start = Instant::now();
    let series = series(&route, dest.as_deref(), metrics);
    for s in &series {
        s.opened();
    }
    metrics.active_connections.inc();
    let Outcome {
        sent,
        received,
        refused,
        error,
    } = pump.await;
    metrics.active_connections.dec();
    for s in &series {
        s.closed(sent, received);
    }
    let success = error.is_none() && refused == 0;
    if !metrics.access_log().should_log(success) {
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

/// The caller as metric labels: only bounded values.
struct Caller<'a> {
    principal: Cow<'a, str>,
    workload: &'a str,
    namespace: &'a str,
}

/// The connection's series: one per reporting role this proxy plays (see
/// [`crate::metrics`]). Looked up once, when the connection opens.
fn series(route: &Route, dest: Option<&Workload>, metrics: &Metrics) -> Vec<ConnectionSeries> {
    let caller = caller(route, metrics.trust_domain());
    reporters(route, dest)
        .iter()
        .map(|&reporter| metrics.connection(&labels(reporter, &caller, dest)))
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
) -> ConnLabels<'a> {
    ConnLabels {
        reporter,
        source_principal: &caller.principal,
        source_workload: caller.workload,
        source_namespace: caller.namespace,
        destination_workload: dest.map_or(UNKNOWN, |w| &w.name),
        destination_namespace: dest.map_or(UNKNOWN, |w| &w.namespace),
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

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A uniform draw from [0, 1): xorshift64* per thread, seeded randomly, so
/// sampling takes no lock and shares no cache line between threads.
fn unit_random() -> f64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(RandomState::new().hash_one(std::thread::current().id()) | 1);
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        // The top 53 bits, scaled: exactly representable, strictly below 1.
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tracing::{field::Field, Event, Subscriber};
    use tracing_subscriber::{layer::Context, prelude::*, Layer};

    use super::*;

    const TD: &str = "cluster.local";

    impl Abort for DuplexStream {
        fn abort(&self) {}
    }

    /// Collects the `event` field of every access record.
    #[derive(Clone, Default)]
    struct Records(Arc<Mutex<Vec<String>>>);

    struct EventField(String);

    impl tracing::field::Visit for EventField {
        fn record_str(&mut self, field: &Field, value: &str) {
            if field.name() == "event" {
                self.0 = value.to_owned();
            }
        }

        fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
    }

    impl<S: Subscriber> Layer<S> for Records {
        fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
            if event.metadata().target() == "nodeward::access" {
                let mut field = EventField(String::new());
                event.record(&mut field);
                self.0.lock().expect("records").push(field.0);
            }
        }
    }

    impl Records {
        fn install(&self) -> tracing::subscriber::DefaultGuard {
            tracing::subscriber::set_default(tracing_subscriber::registry().with(self.clone()))
        }

        fn take(&self) -> Vec<String> {
            std::mem::take(&mut *self.0.lock().expect("records"))
        }
    }

    fn workload(name: &str, namespace: &str, node: &str) -> Arc<Workload> {
        Arc::new(Workload {
            name: name.into(),
            namespace: namespace.into(),
            service_account: format!("{name}-sa"),
            node: node.into(),
            ips: vec!["10.0.0.1".parse().expect("ip")],
            labels: Default::default(),
            cgroup: None,
        })
    }

    fn outbound(path: Path) -> Route {
        Route::Outbound {
            source: workload("frontend", "shop", "node-a"),
            peer: "10.0.0.1:40000".parse().expect("addr"),
            path,
        }
    }

    fn inbound(principal: &str, source: Option<Arc<Workload>>) -> Route {
        Route::Inbound {
            principal: SpiffeId::parse(principal).expect("id"),
            source_node: "node-evil\n".into(),
            source,
            peer: "192.0.2.66:5555".parse().expect("addr"),
        }
    }

    fn dst() -> SocketAddr {
        "10.0.0.2:8080".parse().expect("addr")
    }

    /// Relays one small exchange through [`run`].
    async fn relay_once(route: Route, dest: Option<Arc<Workload>>, metrics: &Metrics) {
        let (mut client, a) = tokio::io::duplex(1024);
        let (b, mut server) = tokio::io::duplex(1024);
        let peers = async {
            client.write_all(b"hello").await.expect("write");
            client.shutdown().await.expect("shutdown");
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.expect("read");
            server.write_all(b"hi").await.expect("write");
            server.shutdown().await.expect("shutdown");
            client.read_to_end(&mut got).await.expect("read");
            got
        };
        let drain = Drain::never();
        let (got, ()) = tokio::join!(peers, run(a, b, route, dst(), dest, metrics, None, &drain));
        assert_eq!(got, b"hellohi");
    }

    /// The samples of `name` in `text`, as (labels, value).
    fn samples(text: &str, name: &str) -> Vec<(String, f64)> {
        text.lines()
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                let (n, labels) = series.split_once('{')?;
                (n == name).then_some(())?;
                Some((labels.trim_end_matches('}').to_owned(), value.parse().ok()?))
            })
            .collect()
    }

    fn has(labels: &str, pairs: &[(&str, &str)]) -> bool {
        pairs
            .iter()
            .all(|(k, v)| labels.contains(&format!("{k}=\"{v}\"")))
    }

    #[tokio::test]
    async fn outbound_connection_is_labelled_with_the_callers_spiffe_id() {
        let metrics = Metrics::new().with_trust_domain(TD);
        let dest = workload("backend", "shop", "node-b");
        relay_once(outbound(Path::Tunnel), Some(dest), &metrics).await;
        let text = metrics.render();
        let opened = samples(&text, "nodeward_connections_opened_total");
        assert_eq!(opened.len(), 1, "{text}");
        assert!(
            has(
                &opened[0].0,
                &[
                    ("reporter", "source"),
                    (
                        "source_principal",
                        "spiffe://cluster.local/ns/shop/sa/frontend-sa"
                    ),
                    ("source_workload", "frontend"),
                    ("source_namespace", "shop"),
                    ("destination_workload", "backend"),
                    ("destination_namespace", "shop"),
                ]
            ),
            "{}",
            opened[0].0
        );
        let sent = samples(&text, "nodeward_sent_bytes_total");
        let received = samples(&text, "nodeward_received_bytes_total");
        assert_eq!((sent[0].1, received[0].1), (5.0, 2.0));
        assert_eq!(
            samples(&text, "nodeward_connections_closed_total")[0].1,
            1.0
        );
        assert_eq!(metrics.active_connections.get(), 0);
    }

    #[tokio::test]
    async fn same_node_hop_is_reported_by_both_roles_and_passthrough_by_the_source() {
        let metrics = Metrics::new().with_trust_domain(TD);
        let dest = workload("cache", "shop", "node-a");
        relay_once(outbound(Path::Local), Some(dest), &metrics).await;
        relay_once(outbound(Path::Passthrough), None, &metrics).await;
        let opened = samples(&metrics.render(), "nodeward_connections_opened_total");
        let count = |pairs: &[(&str, &str)]| {
            opened
                .iter()
                .filter(|(l, _)| has(l, pairs))
                .map(|(_, v)| v)
                .sum::<f64>()
        };
        let to_cache = ("destination_workload", "cache");
        assert_eq!(count(&[("reporter", "source"), to_cache]), 1.0);
        assert_eq!(count(&[("reporter", "destination"), to_cache]), 1.0);
        let unknown = ("destination_workload", "unknown");
        assert_eq!(count(&[("reporter", "source"), unknown]), 1.0);
        assert_eq!(count(&[("reporter", "destination"), unknown]), 0.0);
    }

    #[tokio::test]
    async fn inbound_labels_never_carry_unverified_values() {
        let metrics = Metrics::new().with_trust_domain(TD);
        let dest = Some(workload("backend", "shop", "node-b"));
        // Verified workload ID, no Forwarded workload.
        relay_once(
            inbound("spiffe://cluster.local/ns/shop/sa/frontend", None),
            dest.clone(),
            &metrics,
        )
        .await;
        // A verified ID that is no workload ID.
        relay_once(
            inbound("spiffe://cluster.local/custom/thing", None),
            dest,
            &metrics,
        )
        .await;
        let text = metrics.render();
        let opened = samples(&text, "nodeward_connections_opened_total");
        assert_eq!(opened.len(), 2, "{text}");
        assert!(opened
            .iter()
            .all(|(l, _)| has(l, &[("reporter", "destination")])));
        assert!(opened.iter().any(|(l, _)| has(
            l,
            &[
                (
                    "source_principal",
                    "spiffe://cluster.local/ns/shop/sa/frontend"
                ),
                ("source_namespace", "shop"),
                ("source_workload", "unknown"),
            ]
        )));
        assert!(opened.iter().any(|(l, _)| has(
            l,
            &[
                ("source_principal", "unknown"),
                ("source_namespace", "unknown"),
                ("source_workload", "unknown"),
            ]
        )));
        for unverified in ["node-evil", "192.0.2.66", "custom/thing"] {
            assert!(
                !text.contains(unverified),
                "{unverified} became a label:\n{text}"
            );
        }
    }

    #[tokio::test]
    async fn without_a_trust_domain_local_callers_are_unknown_principals() {
        let metrics = Metrics::new();
        relay_once(outbound(Path::Passthrough), None, &metrics).await;
        let opened = samples(&metrics.render(), "nodeward_connections_opened_total");
        assert!(has(
            &opened[0].0,
            &[
                ("source_principal", "unknown"),
                ("source_workload", "frontend")
            ]
        ));
    }

    #[test]
    fn sampling_bounds_are_checked() {
        assert!(AccessLog::new(0.0).is_ok());
        assert!(AccessLog::new(1.0).is_ok());
        for bad in [-0.1, 1.01, f64::NAN, f64::INFINITY] {
            assert!(AccessLog::new(bad).is_err(), "{bad}");
        }
        assert_eq!(AccessLog::default(), AccessLog::ALL);
    }

    #[test]
    fn sampling_keeps_failures_and_roughly_the_fraction_of_successes() {
        let none = AccessLog::new(0.0).expect("valid");
        let all = AccessLog::ALL;
        let tenth = AccessLog::new(0.1).expect("valid");
        let (mut n, mut a, mut t) = (0, 0, 0);
        for _ in 0..20_000 {
            n += usize::from(none.should_log(true));
            a += usize::from(all.should_log(true));
            t += usize::from(tenth.should_log(true));
            assert!(none.should_log(false) && tenth.should_log(false));
        }
        assert_eq!((n, a), (0, 20_000));
        // Mean 2000, standard deviation ~42: ten of them either way.
        assert!((1_580..=2_420).contains(&t), "{t}");
    }

    #[tokio::test]
    async fn sampling_zero_drops_successful_connection_records_only() {
        let records = Records::default();
        let _guard = records.install();
        let metrics = Metrics::new().with_access_log(AccessLog::new(0.0).expect("valid"));
        relay_once(outbound(Path::Passthrough), None, &metrics).await;
        assert!(records.take().is_empty());
        // A relay that fails (the destination resets) is logged anyway.
        let (client, a) = tokio::io::duplex(64);
        let b = Failing;
        drop(client);
        run(
            a,
            b,
            outbound(Path::Passthrough),
            dst(),
            None,
            &metrics,
            None,
            &Drain::never(),
        )
        .await;
        assert_eq!(records.take(), ["connection"]);
        // Sampling does not touch the counters.
        let opened = samples(&metrics.render(), "nodeward_connections_opened_total");
        assert_eq!(opened.iter().map(|(_, v)| v).sum::<f64>(), 2.0);
    }

    #[tokio::test]
    async fn sampling_one_logs_every_connection() {
        let records = Records::default();
        let _guard = records.install();
        let metrics = Metrics::new();
        for _ in 0..3 {
            relay_once(outbound(Path::Passthrough), None, &metrics).await;
        }
        relay_once(
            inbound("spiffe://cluster.local/ns/shop/sa/frontend", None),
            Some(workload("backend", "shop", "node-b")),
            &metrics,
        )
        .await;
        assert_eq!(
            records.take(),
            ["connection", "connection", "connection", "inbound"]
        );
    }

    #[test]
    fn request_records_are_counted_by_class_and_failures_always_logged() {
        let records = Records::default();
        let _guard = records.install();
        let metrics = Metrics::new().with_access_log(AccessLog::new(0.0).expect("valid"));
        let backend = workload("backend", "shop", "node-b");
        let principal = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/frontend").expect("id");
        let ok = RequestRecord {
            reporter: Reporter::Destination,
            connection_id: 7,
            source_principal: Some(&principal),
            source_ip: Some("10.0.0.1".parse().expect("ip")),
            destination: &backend,
            dst: dst(),
            method: "GET",
            path: "/api/\u{202e}items",
            host: "backend",
            status: 200,
            duration: Duration::from_millis(3),
            request_bytes: 0,
            response_bytes: 12,
            allowed: true,
            policy: Some("shop/allow-frontend"),
            rate_limit: Some(RateLimitOutcome::Allowed),
            error: None,
        };
        log_request(&metrics, &ok);
        assert!(records.take().is_empty(), "sampled out");
        let denied = RequestRecord {
            status: 403,
            allowed: false,
            ..ok
        };
        let limited = RequestRecord {
            status: 429,
            rate_limit: Some(RateLimitOutcome::Limited),
            ..ok
        };
        let shadow = RequestRecord {
            rate_limit: Some(RateLimitOutcome::ShadowLimited),
            ..ok
        };
        let failed = RequestRecord { status: 502, ..ok };
        for r in [denied, limited, shadow, failed] {
            log_request(&metrics, &r);
        }
        assert_eq!(records.take().len(), 4);
        let text = metrics.render();
        let requests = samples(&text, "nodeward_http_requests_total");
        let code = |c: &str| {
            requests
                .iter()
                .filter(|(l, _)| {
                    has(
                        l,
                        &[
                            ("code", c),
                            ("reporter", "destination"),
                            ("destination_workload", "backend"),
                        ],
                    )
                })
                .map(|(_, v)| v)
                .sum::<f64>()
        };
        assert_eq!((code("2xx"), code("4xx"), code("5xx")), (2.0, 2.0, 1.0));
        assert!(!text.contains("/api"), "paths are never labels");
    }

    /// A stream whose reads and writes fail, like a reset destination.
    struct Failing;

    impl AsyncRead for Failing {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Err(std::io::ErrorKind::ConnectionReset.into()))
        }
    }

    impl AsyncWrite for Failing {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::task::Poll::Ready(Err(std::io::ErrorKind::ConnectionReset.into()))
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    impl Abort for Failing {
        fn abort(&self) {}
    }
}
