//! Enforcement at the destination node proxy: applies the policy set in
//! force to every connection (L4) and, where policies look at HTTP, to every
//! request; remembers open connections so a reloaded policy can close those
//! it now denies; and writes an audit record for each decision.
//!
//! The policy set lives behind an [`ArcSwap`]: a reload swaps it atomically
//! and every decision reads one consistent snapshot without taking a lock.
//! When no valid set was ever loaded, the set in force denies everything.

pub mod audit;
mod authn;
#[cfg(test)]
mod request_tests;

use std::{
    borrow::Cow,
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use http::{request::Parts, StatusCode, Uri};
use tokio::sync::Notify;

use nodeward_identity::SpiffeId;
use nodeward_policy::{
    self as policy,
    jwt::{KeySource, NoKeys},
    Decision, L4Decision, LimitKind, NormalizedHost, PolicySet,
};
use nodeward_workloads::{Registry, Workload};

use crate::{
    access,
    escape::clean,
    flows::{Flow, Verdict as FlowVerdict},
    http::{self as proxy_http, HeadersWithUnderscores, Verdict},
    jwks::JwksFetcher,
    ratelimit::{self, RateLimiter, RateOutcome},
    telemetry::{LimitKind as MetricLimit, Observer, RateLimitOutcome, Reporter},
    trace::{RequestSpan, Tracer},
};
use audit::{Auditor, Kind, Record};

/// Open connections are tracked in this many independently locked shards,
/// so connection setup and teardown do not all contend on one mutex.
const SHARDS: usize = 16;

/// The enforcement point shared by the outbound and tunnel paths.
pub struct Authz {
    policies: ArcSwap<PolicySet>,
    underscores: HeadersWithUnderscores,
    http_limits: proxy_http::Limits,
    live: [Mutex<HashMap<u64, Tracked>>; SHARDS],
    next_id: AtomicU64,
    auditor: Auditor,
    observer: Arc<Observer>,
    limiter: RateLimiter,
    /// Keys of `jwksUri` rules: the fetcher's, or none (see [`Authz::with_jwks`]).
    keys: Arc<dyn KeySource>,
    jwks: Option<Arc<JwksFetcher>>,
}

/// Who is calling whom: the attributes a connection is judged by, kept for
/// re-checks when the policy changes.
#[derive(Debug)]
pub struct Subject {
    /// The caller's verified identity; `None` for an unauthenticated caller.
    pub principal: Option<SpiffeId>,
    /// The calling workload's IP, when known.
    pub source_ip: Option<IpAddr>,
    pub destination: Arc<Workload>,
    /// The original destination (pod IP and port).
    pub dst: SocketAddr,
    /// The connection's edge in the flow map, where its decisions count.
    pub flow: Flow,
}

/// What a new connection may do.
pub enum Admission {
    /// Relay bytes as they are.
    Relay(Lease),
    /// Speak HTTP and decide per request (policies look at HTTP attributes).
    Http(Lease),
    /// Refuse the connection.
    Denied(Decision),
    /// Refuse the connection: over a connection rate limit.
    Limited(Decision),
}

/// An admitted connection's registration; dropping it forgets the
/// connection. [`Lease::revoked`] completes when a reloaded policy denies it.
pub struct Lease {
    authz: Arc<Authz>,
    id: u64,
    subject: Arc<Subject>,
    revoked: Arc<Notify>,
}

/// A live connection as the reload re-check sees it.
#[derive(Clone)]
struct Tracked {
    subject: Arc<Subject>,
    http: bool,
    revoked: Arc<Notify>,
}

impl Authz {
    /// The enforcement point, starting with `policies` in force.
    pub fn new(policies: PolicySet, auditor: Auditor, observer: Arc<Observer>) -> Self {
        Self {
            policies: ArcSwap::from_pointee(policies),
            underscores: HeadersWithUnderscores::default(),
            http_limits: proxy_http::Limits::default(),
            live: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            next_id: AtomicU64::new(1),
            auditor,
            observer,
            limiter: RateLimiter::new(ratelimit::DEFAULT_MAX_BUCKETS),
            keys: Arc::new(NoKeys),
            jwks: None,
        }
    }

    /// Fetches the keys of every `jwksUri` in the policies in force (and of
    /// every set that replaces them). Without it, tokens for such rules are
    /// refused. Must run inside a tokio runtime.
    pub fn with_jwks(mut self, fetcher: Arc<JwksFetcher>) -> Self {
        fetcher.track(&self.policies.load().jwks_uris());
        self.keys = fetcher.clone();
        self.jwks = Some(fetcher);
        self
    }

    /// Whether requests with `_` in a header name are refused (the
    /// default) or judged and forwarded.
    pub fn with_headers_with_underscores(mut self, action: HeadersWithUnderscores) -> Self {
        self.underscores = action;
        self
    }

    /// The timers of connections on HTTP ports.
    pub fn with_http_limits(mut self, limits: proxy_http::Limits) -> Self {
        self.http_limits = limits;
        self
    }

    /// The timers of connections on HTTP ports.
    pub fn http_limits(&self) -> &proxy_http::Limits {
        &self.http_limits
    }

    /// The policy set in force.
    pub fn policies(&self) -> arc_swap::Guard<Arc<PolicySet>> {
        self.policies.load()
    }

    /// Decides on a new connection and, if admitted, starts tracking it.
    pub fn admit(self: &Arc<Self>, subject: Subject) -> Admission {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let subject = Arc::new(subject);
        loop {
            let set = self.policies.load_full();
            let verdict = set.evaluate_connection(&connection(&subject));
            let http = match &verdict {
                L4Decision::Decided(d) if !d.allow => {
                    self.record(id, &subject, None, "connection", d, Kind::Authz, None);
                    return Admission::Denied(d.clone());
                }
                L4Decision::Decided(_) => false,
                L4Decision::NeedsHttp => true,
            };
            // Request limits need the requests, so such ports speak HTTP.
            let conn = connection(&subject);
            let http = http
                || !set
                    .applicable_rate_limits(&conn, None, LimitKind::Requests)
                    .is_empty();
            let lease = self.lease(id, subject.clone(), http);
            // A reload between the decision and the registration would have
            // re-checked every connection but this one: decide again.
            if !Arc::ptr_eq(&set, &self.policies.load()) {
                continue;
            }
            // Authorization allowed it; the rate limit is a decision of its own.
            if let L4Decision::Decided(d) = &verdict {
                self.record(id, &subject, None, "connection", d, Kind::Authz, None);
            }
            if let Some(limited) = self.limit_connection(id, &subject, &set) {
                return Admission::Limited(limited);
            }
            return if http {
                Admission::Http(lease)
            } else {
                Admission::Relay(lease)
            };
        }
    }

    /// Takes a token from every connection limit that applies; the denial
    /// when an enforced one is empty.
    fn limit_connection(&self, id: u64, subject: &Subject, set: &PolicySet) -> Option<Decision> {
        let conn = connection(subject);
        let outcome = self
            .limiter
            .check(set, &conn, None, LimitKind::Connections, Instant::now());
        self.count_limits(&outcome, MetricLimit::Connections, &subject.flow);
        let d = limited_decision(&outcome, "connections")?;
        self.record(id, subject, None, "connection", &d, Kind::RateLimit, None);
        Some(d)
    }

    fn count_limits(&self, outcome: &RateOutcome, kind: MetricLimit, flow: &Flow) {
        if !outcome.applies() {
            return;
        }
        for p in &outcome.applied {
            let result = if outcome.limited && outcome.policy.as_ref() == Some(p) {
                RateLimitOutcome::Limited
            } else if outcome.shadow_limited.contains(p) {
                RateLimitOutcome::ShadowLimited
            } else {
                RateLimitOutcome::Allowed
            };
            self.observer.ratelimit(p.as_str(), result, kind);
        }
        flow.ratelimit(rate_outcome(outcome));
    }

    /// Refreshes gauges that would cost a lock per shard to keep exact on
    /// every call (the policy watcher calls this twice a second).
    pub fn refresh_gauges(&self) {
        self.observer.ratelimit_buckets(self.limiter.len());
    }

    /// Puts `policies` in force and closes open connections it denies.
    pub fn replace(&self, policies: PolicySet) {
        if let Some(fetcher) = &self.jwks {
            fetcher.track(&policies.jwks_uris());
        }
        self.policies.store(Arc::new(policies));
        self.limiter.retain_policies(&self.policies.load());
        self.recheck();
    }

    /// Re-judges every open connection against the set in force. A relayed
    /// connection must still be allowed outright; an HTTP one must not be
    /// denied outright (its requests are judged one by one anyway).
    pub fn recheck(&self) {
        self.recheck_against(None);
    }

    /// Re-judges every open connection after the workloads file changed:
    /// a destination whose labels (or namespace) changed may now be
    /// selected by other policies. A destination that left the file keeps
    /// the attributes it was admitted with.
    pub fn workloads_changed(&self, registry: &Registry) {
        self.recheck_against(Some(registry));
    }

    fn recheck_against(&self, registry: Option<&Registry>) {
        let set = self.policies.load();
        for shard in &self.live {
            // Judge a copy, so connections opening and closing on this shard
            // never wait for a whole reload's worth of evaluation.
            let open: Vec<(u64, Tracked)> = shard
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .map(|(id, t)| (*id, t.clone()))
                .collect();
            let revoked: Vec<u64> = open
                .iter()
                .filter_map(|(id, t)| {
                    let current = registry.and_then(|r| r.by_ip(t.subject.dst.ip()));
                    let d = denial(&set, t, current.map(|w| &**w))?;
                    self.revoke(*id, t, &d);
                    Some(*id)
                })
                .collect();
            if revoked.is_empty() {
                continue;
            }
            // Forgotten once revoked, so a later reload cannot revoke it twice.
            let mut live = shard.lock().unwrap_or_else(PoisonError::into_inner);
            for id in revoked {
                live.remove(&id);
            }
        }
    }

    fn revoke(&self, id: u64, t: &Tracked, d: &Decision) {
        t.revoked.notify_one();
        self.observer.policy_revoked();
        self.record(
            id,
            &t.subject,
            None,
            "connection",
            d,
            Kind::Authz,
            Some("policy reloaded: "),
        );
    }

    /// The per-request gate for an HTTP connection.
    pub fn gate(&self, lease: &Lease) -> RequestGate {
        RequestGate {
            authz: lease.authz.clone(),
            id: lease.id,
            subject: lease.subject.clone(),
            last_rate: Mutex::new(None),
            last_principal: Mutex::new(None),
        }
    }

    fn lease(self: &Arc<Self>, id: u64, subject: Arc<Subject>, http: bool) -> Lease {
        let revoked = Arc::new(Notify::new());
        let tracked = Tracked {
            subject: subject.clone(),
            http,
            revoked: revoked.clone(),
        };
        self.shard(id)
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, tracked);
        Lease {
            authz: self.clone(),
            id,
            subject,
            revoked,
        }
    }

    fn shard(&self, id: u64) -> &Mutex<HashMap<u64, Tracked>> {
        &self.live[(id as usize) % SHARDS]
    }

    /// Audits a decision, plus one `audit` record per AUDIT policy that
    /// matched; counts an authorization decision (a rate limit's was
    /// counted by [`Authz::count_limits`]).
    #[expect(
        clippy::too_many_arguments,
        reason = "one call site per kind of decision; a struct would only rename them"
    )]
    fn record(
        &self,
        id: u64,
        subject: &Subject,
        request: Option<&RequestView<'_>>,
        layer: &'static str,
        d: &Decision,
        kind: Kind,
        reason_prefix: Option<&str>,
    ) {
        let decision = if d.allow { "allow" } else { "deny" };
        let policy = d.policy.as_ref().map(ToString::to_string);
        if kind == Kind::Authz {
            let counted = policy.as_deref().unwrap_or("default");
            self.observer.authz_decision(decision, counted, layer);
            let verdict = if d.allow {
                FlowVerdict::Allow
            } else {
                FlowVerdict::Deny
            };
            subject.flow.authz(verdict, counted);
        }
        let reason = match reason_prefix {
            Some(p) => Cow::Owned(format!("{p}{}", d.reason)),
            None => Cow::Borrowed(d.reason.as_str()),
        };
        let mut rec = record(id, subject, request, layer);
        rec.kind = kind.as_str();
        rec.decision = decision;
        rec.policy = policy;
        rec.action = d.action.map(|a| a.as_str());
        rec.reason = reason;
        self.auditor.write(&rec);
        for p in &d.audit {
            let name = p.to_string();
            self.observer.authz_decision("audit", &name, layer);
            subject.flow.authz(FlowVerdict::Audit, &name);
            rec.kind = Kind::Authz.as_str();
            rec.decision = "audit";
            rec.policy = Some(p.to_string());
            rec.action = Some("AUDIT");
            rec.reason = Cow::Borrowed("AUDIT policy matched");
            self.auditor.write(&rec);
        }
    }
}

impl Lease {
    /// This connection's id, as in audit records.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Completes when a reloaded policy denies this connection.
    pub async fn revoked(&self) {
        self.revoked.notified().await;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.authz
            .shard(self.id)
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

/// Judges each HTTP request of one admitted connection against the policy
/// set in force at that moment.
pub struct RequestGate {
    authz: Arc<Authz>,
    id: u64,
    subject: Arc<Subject>,
    /// The rate-limit outcome of the request last forwarded, for its
    /// access record (HTTP/1 requests on a connection come one at a time;
    /// on HTTP/2 this is best effort).
    last_rate: Mutex<Option<RateLimitOutcome>>,
    /// The request principal of the request last forwarded, likewise.
    last_principal: Mutex<Option<String>>,
}

/// The request attributes an audit record shows.
struct RequestView<'a> {
    method: &'a str,
    path: &'a str,
    host: &'a str,
    /// `<iss>/<sub>` of a valid JWT; never the token.
    request_principal: Option<&'a str>,
}

impl proxy_http::Authorizer for RequestGate {
    fn authorize(&self, parts: &mut Parts) -> Verdict {
        if self.authz.underscores == HeadersWithUnderscores::Reject {
            if let Some(name) = parts.headers.keys().find(|n| n.as_str().contains('_')) {
                let why = format!("header name with an underscore: {}", clean(name.as_str()));
                let raw = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                let raw = raw.to_owned();
                return self.refuse(parts, &raw, &why);
            }
        }
        let set = self.authz.policies.load();
        let authn = match self.authenticate(&set, parts) {
            Ok(authn) => authn,
            Err(refused) => return *refused,
        };
        let host = match effective_host(parts) {
            Ok(h) => h.map(|h| h.to_string()).unwrap_or_default(),
            Err(why) => return self.refuse(parts, "-", &why),
        };
        let raw = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let normalized = match policy::normalize_path(raw) {
            Ok(n) => n,
            Err(e) => {
                let raw = raw.to_owned();
                return self.refuse(parts, &raw, &format!("request path rejected: {e}"));
            }
        };
        // The pod gets origin-form with the Host that was judged (RFC 9112
        // §3.2.2: a proxy replaces Host with an absolute-form authority),
        // and an HTTP/1.0 request without one gets the address it reached,
        // as HTTP/1.1 requires a Host.
        let forwarded = match host.as_str() {
            "" => Cow::Owned(self.subject.dst.to_string()),
            judged => Cow::Borrowed(judged),
        };
        if origin_form(&normalized.request_target(), &forwarded, parts).is_none() {
            return self.refuse(parts, &normalized.path, "request target cannot be rebuilt");
        }
        let request = policy::Request {
            method: parts.method.as_str(),
            path: &normalized.path,
            host: &host,
            headers: &parts.headers,
            auth: authn.identity(),
        };
        let conn = connection(&self.subject);
        let d = set.evaluate_request(&conn, &request);
        let view = RequestView {
            method: request.method,
            path: request.path,
            host: &host,
            request_principal: authn.principal(),
        };
        self.traced(&mut parts.extensions, &host, &d);
        // Authorization first, recorded whatever the rate limit says next.
        self.authz.record(
            self.id,
            &self.subject,
            Some(&view),
            "request",
            &d,
            Kind::Authz,
            None,
        );
        if !d.allow {
            let refusal = proxy_http::refusal(StatusCode::FORBIDDEN, "RBAC: access denied\n");
            self.log(&view, refusal.status(), Some(&d), None);
            return Verdict::Respond(refusal);
        }
        let outcome = self.authz.limiter.check(
            &set,
            &conn,
            Some(&request),
            LimitKind::Requests,
            Instant::now(),
        );
        self.authz
            .count_limits(&outcome, MetricLimit::Requests, &self.subject.flow);
        let rate = outcome.applies().then(|| rate_outcome(&outcome));
        if let (Some(r), Some(span)) = (rate, parts.extensions.get_mut::<RequestSpan>()) {
            span.rate_limited(r.as_str(), outcome.policy.as_ref().map(ToString::to_string));
        }
        if let Some(limited) = limited_decision(&outcome, "requests") {
            self.authz.record(
                self.id,
                &self.subject,
                Some(&view),
                "request",
                &limited,
                Kind::RateLimit,
                None,
            );
            let response = too_many_requests(&outcome);
            self.log(&view, response.status(), Some(&limited), rate);
            return Verdict::Respond(response);
        }
        *self
            .last_rate
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = rate;
        *self
            .last_principal
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = authn.principal().map(str::to_owned);
        Verdict::Forward
    }

    fn responded(&self, method: &http::Method, path: &str, status: StatusCode, elapsed: Duration) {
        let rate = *self
            .last_rate
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let principal = self
            .last_principal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let view = RequestView {
            method: method.as_str(),
            path,
            host: "",
            request_principal: principal.as_deref(),
        };
        self.log_with(&view, status, None, rate, elapsed);
    }

    fn tracer(&self) -> Option<&Arc<Tracer>> {
        self.authz.observer.tracer()
    }
}

impl RequestGate {
    /// One access record (and `http_requests_total` sample) per request.
    fn log(
        &self,
        view: &RequestView<'_>,
        status: StatusCode,
        d: Option<&Decision>,
        rate: Option<RateLimitOutcome>,
    ) {
        self.log_with(view, status, d, rate, Duration::ZERO);
    }

    fn log_with(
        &self,
        view: &RequestView<'_>,
        status: StatusCode,
        d: Option<&Decision>,
        rate: Option<RateLimitOutcome>,
        elapsed: Duration,
    ) {
        let policy = d.and_then(|d| d.policy.as_ref()).map(|p| p.to_string());
        self.subject.flow.request(status.as_u16());
        let record = access::RequestRecord {
            reporter: Reporter::Destination,
            connection_id: self.id,
            source_principal: self.subject.principal.as_ref(),
            request_principal: view.request_principal,
            source_ip: self.subject.source_ip,
            destination: &self.subject.destination,
            dst: self.subject.dst,
            method: view.method,
            path: view.path,
            host: view.host,
            status: status.as_u16(),
            duration: elapsed,
            request_bytes: 0,
            response_bytes: 0,
            allowed: d.is_none_or(|d| d.allow),
            policy: policy.as_deref(),
            rate_limit: rate,
            error: None,
        };
        access::log_request(&self.authz.observer, &record);
    }
}

impl RequestGate {
    /// Tells the request's span, when it is traced, who called whom and
    /// how the request was judged.
    fn traced(&self, extensions: &mut http::Extensions, host: &str, d: &Decision) {
        let Some(span) = extensions.get_mut::<RequestSpan>() else {
            return;
        };
        if !span.is_recording() {
            return;
        }
        let principal = self.subject.principal.as_ref().map(SpiffeId::as_str);
        let destination = self.subject.destination.to_string();
        let policy = d.policy.as_ref().map(ToString::to_string);
        span.authorized(
            principal,
            &destination,
            self.subject.dst.port(),
            d.allow,
            policy,
        );
        span.host(without_port(host));
    }
}

/// `host[:port]` without the port (`[v6]:port` keeps its brackets).
fn without_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.ends_with(':') => {
            name
        }
        _ => host,
    }
}

/// The denial for a rate-limited call, if an enforced limit was empty.
fn limited_decision(outcome: &RateOutcome, what: &str) -> Option<Decision> {
    if !outcome.limited {
        return None;
    }
    let policy = outcome.policy.clone();
    let name = policy
        .as_ref()
        .map_or_else(|| "?".to_owned(), ToString::to_string);
    Some(Decision {
        allow: false,
        reason: format!("rate limited ({what}) by {name}"),
        policy,
        action: None,
        audit: Vec::new(),
    })
}

fn rate_outcome(outcome: &RateOutcome) -> RateLimitOutcome {
    if outcome.limited {
        RateLimitOutcome::Limited
    } else if !outcome.shadow_limited.is_empty() {
        RateLimitOutcome::ShadowLimited
    } else {
        RateLimitOutcome::Allowed
    }
}

/// 429 with `Retry-After` (whole seconds, rounded up) and the
/// `x-ratelimit-*` headers of the bucket that ran dry.
fn too_many_requests(outcome: &RateOutcome) -> http::Response<bytes::Bytes> {
    let mut response = proxy_http::refusal(StatusCode::TOO_MANY_REQUESTS, "rate limited\n");
    let reset = outcome.reset.as_millis().div_ceil(1000).max(1);
    let headers = response.headers_mut();
    for (name, value) in [
        ("retry-after", reset.to_string()),
        ("x-ratelimit-limit", outcome.limit.to_string()),
        ("x-ratelimit-remaining", outcome.remaining.to_string()),
        ("x-ratelimit-reset", reset.to_string()),
    ] {
        if let Ok(v) = http::HeaderValue::from_str(&value) {
            headers.insert(http::HeaderName::from_static(name), v);
        }
    }
    response
}

impl RequestGate {
    /// A request whose target or host cannot be judged safely is refused
    /// outright (400), never matched in some other form.
    fn refuse(&self, parts: &mut Parts, raw_path: &str, why: &str) -> Verdict {
        // Records carry the path, never the query: it may hold a token or
        // an API key (and a refusal may come before the token is removed).
        let raw_path = raw_path.split_once('?').map_or(raw_path, |(path, _)| path);
        let d = Decision {
            allow: false,
            policy: None,
            action: None,
            reason: why.to_owned(),
            audit: Vec::new(),
        };
        self.traced(&mut parts.extensions, "", &d);
        let host = parts
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let view = RequestView {
            method: parts.method.as_str(),
            path: raw_path,
            host,
            request_principal: None,
        };
        self.authz.record(
            self.id,
            &self.subject,
            Some(&view),
            "request",
            &d,
            Kind::Authz,
            None,
        );
        let response = proxy_http::refusal(StatusCode::BAD_REQUEST, "bad request\n");
        self.log(&view, response.status(), Some(&d), None);
        Verdict::Respond(response)
    }
}

/// The one host a request is for, normalised ([`policy::normalize_host`]):
/// what is judged and what the pod gets. HTTP/2: the `:authority`, and a
/// `host` header that disagrees is refused. HTTP/1: an absolute-form
/// authority wins over Host (RFC 9112 §3.2.2); otherwise exactly one Host
/// header, never empty. `None` only for HTTP/1.0 without any.
fn effective_host(parts: &Parts) -> Result<Option<NormalizedHost>, String> {
    let headers: Vec<&http::HeaderValue> =
        parts.headers.get_all(http::header::HOST).iter().collect();
    let from_header = match headers.as_slice() {
        [] => None,
        [one] => Some(one.to_str().map_err(|_| "Host header is not text")?),
        _ => return Err("more than one Host header".into()),
    };
    let chosen = match (parts.uri.authority(), from_header) {
        (Some(a), Some(h))
            if parts.version == http::Version::HTTP_2 && !a.as_str().eq_ignore_ascii_case(h) =>
        {
            return Err("host header differs from :authority".into())
        }
        (Some(a), _) => a.as_str(),
        (None, Some("")) => return Err("empty Host header".into()),
        (None, Some(h)) => h,
        (None, None) if parts.version == http::Version::HTTP_10 => return Ok(None),
        (None, None) => return Err("missing Host header".into()),
    };
    if chosen.contains('@') {
        return Err("userinfo in host".into());
    }
    match policy::normalize_host(chosen) {
        Ok(host) => Ok(Some(host)),
        Err(e) => Err(format!("request host rejected: {e}")),
    }
}

/// Rewrites the request target to the normalised path and the host to the
/// judged one: for HTTP/2 in the `:authority` (and `host`, if sent), for
/// HTTP/1 origin-form with `Host`.
fn origin_form(path_and_query: &str, host: &str, parts: &mut Parts) -> Option<()> {
    let value = http::HeaderValue::from_str(host).ok()?;
    if parts.version == http::Version::HTTP_2 {
        parts.uri = rewrite_uri(&parts.uri, path_and_query, host)?;
        if parts.headers.contains_key(http::header::HOST) {
            parts.headers.insert(http::header::HOST, value);
        }
        return Some(());
    }
    parts.uri = path_and_query.parse().ok()?;
    parts.headers.insert(http::header::HOST, value);
    Some(())
}

/// Why `set` no longer allows a tracked connection, if it does not. A raw
/// relay must still be allowed outright; an HTTP one must not be denied
/// outright (its requests are judged one by one anyway).
fn denial(set: &PolicySet, t: &Tracked, current: Option<&Workload>) -> Option<Decision> {
    let mut conn = connection(&t.subject);
    if let Some(w) = current {
        conn.destination = policy::Destination {
            namespace: &w.namespace,
            name: &w.name,
            labels: &w.labels,
            port: t.subject.dst.port(),
        };
    }
    match set.evaluate_connection(&conn) {
        L4Decision::Decided(d) if !d.allow => Some(d),
        L4Decision::Decided(_) => None,
        L4Decision::NeedsHttp if t.http => None,
        // A raw relay whose fate now hangs on HTTP attributes it never
        // exposed cannot be judged: fail closed.
        L4Decision::NeedsHttp => Some(Decision {
            allow: false,
            policy: None,
            action: None,
            reason: "the policy now looks at HTTP attributes this raw connection never exposed"
                .into(),
            audit: Vec::new(),
        }),
    }
}

fn connection(s: &Subject) -> policy::Connection<'_> {
    policy::Connection {
        source: policy::Source {
            principal: s.principal.as_ref().map(SpiffeId::as_str),
            ip: s.source_ip,
        },
        destination: policy::Destination {
            namespace: &s.destination.namespace,
            name: &s.destination.name,
            labels: &s.destination.labels,
            port: s.dst.port(),
        },
    }
}

/// `uri` with its path and query replaced by `path_and_query`, and its
/// authority (if it has one) by `host`.
fn rewrite_uri(uri: &Uri, path_and_query: &str, host: &str) -> Option<Uri> {
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().ok()?);
    if parts.authority.is_some() {
        parts.authority = Some(host.parse().ok()?);
    }
    Uri::from_parts(parts).ok()
}

fn record<'a>(
    id: u64,
    s: &'a Subject,
    request: Option<&RequestView<'a>>,
    layer: &'static str,
) -> Record<'a> {
    Record {
        log: "audit",
        time: audit::now(),
        connection_id: id,
        layer,
        kind: Kind::Authz.as_str(),
        decision: "deny",
        source_principal: s.principal.as_ref().map(|p| clean(p.as_str())),
        request_principal: request.and_then(|r| r.request_principal).map(clean),
        source_ip: s.source_ip.map(|ip| ip.to_string()),
        destination: Cow::Owned(s.destination.to_string()),
        destination_ip: s.dst.ip().to_string(),
        port: s.dst.port(),
        method: request.map(|r| clean(r.method)),
        path: request.map(|r| clean(r.path)),
        host: request.map(|r| clean(r.host)),
        policy: None,
        action: None,
        reason: Cow::Borrowed(""),
    }
}
