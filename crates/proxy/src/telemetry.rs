//! What the data path counts, and the settings it logs by.
//!
//! The data path never names a metrics library: it reports through the
//! [`Telemetry`] trait, which the binary implements with prometheus. Label
//! values handed to it are bounded (workloads and SPIFFE IDs from the
//! registry, policies from the policy directory, or [`UNKNOWN`] and fixed
//! words); no value from an unverified peer or a request header is ever
//! passed as a label.
//!
//! A connection looks its series up once ([`Telemetry::connection`]) and
//! afterwards only touches the counters behind the returned handle, so the
//! per-connection cost is one lookup and a few atomic increments.

use std::{ops::Deref, sync::Arc};

pub use crate::ratelimit::RateLimitOutcome;
use crate::{
    flows::{EdgeKey, Flow, FlowMap},
    random::unit_random,
    trace::Tracer,
};

/// The label value for anything not attributable to a known workload.
pub const UNKNOWN: &str = "unknown";

/// Which proxy reports a connection or request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reporter {
    /// The proxy on the caller's node.
    Source,
    /// The proxy on the destination's node.
    Destination,
}

impl Reporter {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Destination => "destination",
        }
    }
}

/// The label values of one connection series. Build them only from bounded
/// values (see the module documentation) or [`UNKNOWN`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLabels<'a> {
    pub reporter: Reporter,
    /// The caller's SPIFFE ID, when the caller is a known workload.
    pub source_principal: &'a str,
    pub source_workload: &'a str,
    pub source_namespace: &'a str,
    pub destination_workload: &'a str,
    pub destination_namespace: &'a str,
    /// `<name>.<namespace>` of the Service the caller dialled (ztunnel's
    /// `destination_service`), or [`UNKNOWN`].
    pub destination_service: &'a str,
}

/// What a rate limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Connections,
    Requests,
}

impl LimitKind {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connections => "connections",
            Self::Requests => "requests",
        }
    }
}

/// Which end of a tunnel connection counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

impl Side {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Server => "server",
        }
    }
}

/// One connection series' counters.
pub trait ConnectionCounters: Send + Sync {
    /// A connection started.
    fn opened(&self);
    /// A connection ended after moving `sent` bytes to the destination and
    /// `received` bytes back.
    fn closed(&self, sent: u64, received: u64);
}

/// A connection series, looked up once per connection and kept.
pub type ConnectionSeries = Arc<dyn ConnectionCounters>;

/// Everything the data path counts. Implementations must be cheap and never
/// block: they run on the connection path.
pub trait Telemetry: Send + Sync {
    /// The counters of one connection series (created on first use).
    fn connection(&self, labels: &ConnLabels<'_>) -> ConnectionSeries;
    /// One HTTP request answered with `status`.
    fn http_request(&self, reporter: Reporter, workload: &str, namespace: &str, status: u16);
    /// An outbound connection refused before any relay, by reason.
    fn refused(&self, reason: &str);
    /// An outbound connection whose destination could not be reached.
    fn connect_failed(&self, reason: &str);
    /// Connections being relayed: `+1` when one starts, `-1` when it ends.
    fn active(&self, delta: i64);
    /// Connections accepted whose relay has not started yet (being
    /// authorized, dialled, tunnelled): a drain waits for these too.
    fn pending(&self, delta: i64);
    /// A completed tunnel TLS handshake and how long it took.
    fn tunnel_handshake(&self, side: Side, seconds: f64);
    /// A tunnel connection the server side rejected, by reason.
    fn tunnel_rejected(&self, reason: &str);
    /// A CONNECT stream and the status it got.
    fn tunnel_stream(&self, side: Side, status: &str);
    /// A CONNECT stream the tunnel server refused, by reason (the same
    /// stream is also counted by [`Telemetry::tunnel_stream`] with its status).
    fn tunnel_stream_refused(&self, reason: &str);
    /// A tunnel connection the server closed on its own, by reason
    /// (`identity_left_node`, `max_age`, `idle`).
    fn tunnel_closed(&self, reason: &str);
    /// A CONNECT stream that found its calling node's dial slots all taken
    /// and waited `seconds` in line (served or, past the queue timeout,
    /// refused).
    fn tunnel_dial_queued(&self, seconds: f64);
    /// An authorization decision (`allow`, `deny`, `audit`) by the deciding
    /// policy (`ns/name` or `default`) at `layer` (connection|request).
    fn authz_decision(&self, decision: &str, policy: &str, layer: &str);
    /// A rate-limit decision of `policy` (`ns/name`).
    fn ratelimit(&self, policy: &str, outcome: RateLimitOutcome, limit: LimitKind);
    /// Token buckets held now.
    fn ratelimit_buckets(&self, held: usize);
    /// An open connection closed because a reloaded policy denies it.
    fn policy_revoked(&self);
    /// Audit records lost because the sink could not keep up.
    fn audit_dropped(&self, records: u64);
    /// One token checked for a `RequestAuthentication`: `ok`, or the
    /// refusal's label (`nodeward_policy::jwt::JwtError::as_str`).
    fn jwt_validation(&self, result: &str);
}

/// A [`Telemetry`] that counts nothing: for tools and tests that relay
/// without exporting metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct Discard;

impl ConnectionCounters for Discard {
    fn opened(&self) {}
    fn closed(&self, _: u64, _: u64) {}
}

impl Telemetry for Discard {
    fn connection(&self, _: &ConnLabels<'_>) -> ConnectionSeries {
        Arc::new(Discard)
    }
    fn http_request(&self, _: Reporter, _: &str, _: &str, _: u16) {}
    fn refused(&self, _: &str) {}
    fn connect_failed(&self, _: &str) {}
    fn active(&self, _: i64) {}
    fn pending(&self, _: i64) {}
    fn tunnel_handshake(&self, _: Side, _: f64) {}
    fn tunnel_rejected(&self, _: &str) {}
    fn tunnel_stream(&self, _: Side, _: &str) {}
    fn tunnel_stream_refused(&self, _: &str) {}
    fn tunnel_closed(&self, _: &str) {}
    fn tunnel_dial_queued(&self, _: f64) {}
    fn authz_decision(&self, _: &str, _: &str, _: &str) {}
    fn ratelimit(&self, _: &str, _: RateLimitOutcome, _: LimitKind) {}
    fn ratelimit_buckets(&self, _: usize) {}
    fn policy_revoked(&self) {}
    fn audit_dropped(&self, _: u64) {}
    fn jwt_validation(&self, _: &str) {}
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

/// What the data path holds to count and log: the [`Telemetry`] sink plus
/// the two settings the relay needs to label and log what it counts.
/// Dereferences to the sink.
pub struct Observer {
    telemetry: Arc<dyn Telemetry>,
    /// Mesh trust domain, to name local callers' SPIFFE IDs.
    trust_domain: Option<String>,
    access_log: AccessLog,
    /// Starts spans; `None` (the default) traces nothing, at no cost.
    tracer: Option<Arc<Tracer>>,
    /// The flow map, when switched on.
    flows: Option<Arc<FlowMap>>,
}

impl Observer {
    /// Counts into `telemetry`; logs everything, names no local principal.
    pub fn new(telemetry: Arc<dyn Telemetry>) -> Self {
        Self {
            telemetry,
            trust_domain: None,
            access_log: AccessLog::ALL,
            tracer: None,
            flows: None,
        }
    }

    /// Counts nothing (tests and tools).
    pub fn discard() -> Self {
        Self::new(Arc::new(Discard))
    }

    /// Names local callers `spiffe://<trust_domain>/ns/<ns>/sa/<sa>` in the
    /// `source_principal` label; without it they are `unknown`.
    pub fn with_trust_domain(mut self, trust_domain: &str) -> Self {
        self.trust_domain = Some(trust_domain.to_owned());
        self
    }

    /// Samples the access log of successful connections and requests.
    pub fn with_access_log(mut self, access_log: AccessLog) -> Self {
        self.access_log = access_log;
        self
    }

    /// Records spans through `tracer` (see [`crate::trace`]).
    pub fn with_tracer(mut self, tracer: Arc<Tracer>) -> Self {
        self.tracer = Some(tracer);
        self
    }

    /// The tracer, when tracing is on.
    pub fn tracer(&self) -> Option<&Arc<Tracer>> {
        self.tracer.as_ref()
    }

    /// Keeps the flow map in `flows` (see [`crate::flows`]); without it
    /// connections count no flows.
    pub fn with_flows(mut self, flows: Arc<FlowMap>) -> Self {
        self.flows = Some(flows);
        self
    }

    /// The handle of one connection's edge in the flow map (empty when the
    /// map is off). Called once per connection.
    pub fn flow(&self, key: impl FnOnce() -> EdgeKey) -> Flow {
        self.flows
            .as_ref()
            .map_or_else(Flow::none, |t| t.edge(key()))
    }

    /// The mesh trust domain, if known.
    pub fn trust_domain(&self) -> Option<&str> {
        self.trust_domain.as_deref()
    }

    /// The access-log setting the relay follows.
    pub fn access_log(&self) -> &AccessLog {
        &self.access_log
    }

    /// The sink itself, to share with threads that outlive a borrow.
    pub fn sink(&self) -> Arc<dyn Telemetry> {
        self.telemetry.clone()
    }
}

impl Deref for Observer {
    type Target = dyn Telemetry;

    fn deref(&self) -> &Self::Target {
        &*self.telemetry
    }
}

/// Counts one connection as pending (see [`Telemetry::pending`]) until
/// dropped.
pub struct Pending(Arc<Observer>);

impl Pending {
    /// Starts counting.
    pub fn start(observer: &Arc<Observer>) -> Self {
        observer.pending(1);
        Self(observer.clone())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.pending(-1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
