//! Access records of HTTP requests: one `tracing` event with target
//! `nodeward::access` per request (successful ones subject to sampling),
//! and the request counted in telemetry. Connection records are the
//! relay's.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use nodeward_identity::SpiffeId;
use nodeward_workloads::Workload;

use crate::{
    escape::clean,
    telemetry::{Observer, RateLimitOutcome, Reporter, UNKNOWN},
};

/// One HTTP request, as [`log_request`] records it.
#[derive(Debug, Clone, Copy)]
pub struct RequestRecord<'a> {
    /// Which proxy saw the request (the destination's, where HTTP is judged).
    pub reporter: Reporter,
    /// The connection's id, as in audit records (`authz::Lease::id`).
    pub connection_id: u64,
    /// The caller's verified identity; `None` for an unauthenticated caller.
    pub source_principal: Option<&'a SpiffeId>,
    /// `<iss>/<sub>` of the request's valid JWT (never the token itself).
    pub request_principal: Option<&'a str>,
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

/// Counts one HTTP request in `http_requests_total` and logs it (a
/// successful one subject to sampling; denied, rate-limited, failed and
/// 5xx requests always).
pub fn log_request(observer: &Observer, r: &RequestRecord<'_>) {
    observer.http_request(
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
    if !observer.access_log().should_log(success) {
        return;
    }
    tracing::info!(
        target: "nodeward::access",
        event = "request",
        reporter = r.reporter.as_str(),
        connection_id = r.connection_id,
        source_principal = r.source_principal.map_or(UNKNOWN, SpiffeId::as_str),
        request_principal = %clean(r.request_principal.unwrap_or("")),
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

/// A duration in whole milliseconds, for records.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
