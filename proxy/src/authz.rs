//! Enforcement at the destination node proxy: applies the policy set in
//! force to every connection (L4) and, where policies look at HTTP, to every
//! request; remembers open connections so a reloaded policy can close those
//! it now denies; and writes an audit record for each decision.
//!
//! The policy set lives behind an [`ArcSwap`]: a reload swaps it atomically
//! and every decision reads one consistent snapshot without taking a lock.
//! When no valid set was ever loaded, the set in force denies everything.

pub mod audit;
pub mod explain;
pub mod reload;

use std::{
    borrow::Cow,
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use arc_swap::ArcSwap;
use http::{request::Parts, StatusCode, Uri};
use tokio::sync::Notify;

use crate::{
    http::{self as proxy_http, Verdict},
    identity::SpiffeId,
    metrics::Metrics,
    policy::{self, Decision, L4Decision, PolicySet},
    workloads::Workload,
};
use audit::{clean, Auditor, Record};

/// Open connections are tracked in this many independently locked shards,
/// so connection setup and teardown do not all contend on one mutex.
const SHARDS: usize = 16;

/// The enforcement point shared by the outbound and tunnel paths.
pub struct Authz {
    policies: ArcSwap<PolicySet>,
    live: [Mutex<HashMap<u64, Tracked>>; SHARDS],
    next_id: AtomicU64,
    auditor: Auditor,
    metrics: Arc<Metrics>,
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
}

/// What a new connection may do.
pub enum Admission {
    /// Relay bytes as they are.
    Relay(Lease),
    /// Speak HTTP and decide per request (policies look at HTTP attributes).
    Http(Lease),
    /// Refuse the connection.
    Denied(Decision),
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
struct Tracked {
    subject: Arc<Subject>,
    http: bool,
    revoked: Arc<Notify>,
}

impl Authz {
    /// The enforcement point, starting with `policies` in force.
    pub fn new(policies: PolicySet, auditor: Auditor, metrics: Arc<Metrics>) -> Self {
        Self {
            policies: ArcSwap::from_pointee(policies),
            live: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            next_id: AtomicU64::new(1),
            auditor,
            metrics,
        }
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
                    self.record(id, &subject, None, "connection", d, None);
                    return Admission::Denied(d.clone());
                }
                L4Decision::Decided(_) => false,
                L4Decision::NeedsHttp => true,
            };
            let lease = self.lease(id, subject.clone(), http);
            // A reload between the decision and the registration would have
            // re-checked every connection but this one: decide again.
            if !Arc::ptr_eq(&set, &self.policies.load()) {
                continue;
            }
            if let L4Decision::Decided(d) = &verdict {
                self.record(id, &subject, None, "connection", d, None);
            }
            return if http {
                Admission::Http(lease)
            } else {
                Admission::Relay(lease)
            };
        }
    }

    /// Puts `policies` in force and closes open connections it denies.
    pub fn replace(&self, policies: PolicySet) {
        self.policies.store(Arc::new(policies));
        self.recheck();
    }

    /// Re-judges every open connection against the set in force. A relayed
    /// connection must still be allowed outright; an HTTP one must not be
    /// denied outright (its requests are judged one by one anyway).
    pub fn recheck(&self) {
        let set = self.policies.load();
        for shard in &self.live {
            let Ok(mut live) = shard.lock() else { continue };
            live.retain(|id, t| {
                let denial = match set.evaluate_connection(&connection(&t.subject)) {
                    L4Decision::Decided(d) if !d.allow => Some(d),
                    L4Decision::Decided(_) => None,
                    L4Decision::NeedsHttp if t.http => None,
                    // A raw relay whose fate now hangs on HTTP attributes it
                    // never exposed cannot be judged: fail closed.
                    L4Decision::NeedsHttp => Some(Decision {
                        allow: false,
                        policy: None,
                        action: None,
                        reason: "the policy now looks at HTTP attributes this raw connection never exposed".into(),
                        audit: Vec::new(),
                    }),
                };
                // Forgotten once revoked, so a later reload cannot revoke it twice.
                denial.map(|d| self.revoke(*id, t, &d)).is_none()
            });
        }
    }

    fn revoke(&self, id: u64, t: &Tracked, d: &Decision) {
        t.revoked.notify_one();
        self.metrics.policy_revoked.inc();
        self.record(
            id,
            &t.subject,
            None,
            "connection",
            d,
            Some("policy reloaded: "),
        );
    }

    /// The per-request gate for an HTTP connection.
    pub fn gate(&self, lease: &Lease) -> RequestGate {
        RequestGate {
            authz: lease.authz.clone(),
            id: lease.id,
            subject: lease.subject.clone(),
        }
    }

    fn lease(self: &Arc<Self>, id: u64, subject: Arc<Subject>, http: bool) -> Lease {
        let revoked = Arc::new(Notify::new());
        let tracked = Tracked {
            subject: subject.clone(),
            http,
            revoked: revoked.clone(),
        };
        if let Ok(mut shard) = self.shard(id).lock() {
            shard.insert(id, tracked);
        }
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

    /// Counts and audits a decision, plus one `audit` record per AUDIT
    /// policy that matched.
    fn record(
        &self,
        id: u64,
        subject: &Subject,
        request: Option<&RequestView<'_>>,
        layer: &'static str,
        d: &Decision,
        reason_prefix: Option<&str>,
    ) {
        let decision = if d.allow { "allow" } else { "deny" };
        let policy = d.policy.as_ref().map(ToString::to_string);
        self.metrics
            .authz_decisions
            .with_label_values(&[decision, policy.as_deref().unwrap_or("default"), layer])
            .inc();
        let reason = match reason_prefix {
            Some(p) => Cow::Owned(format!("{p}{}", d.reason)),
            None => Cow::Borrowed(d.reason.as_str()),
        };
        let mut rec = record(id, subject, request, layer);
        rec.decision = decision;
        rec.policy = policy;
        rec.action = d.action.map(|a| a.as_str());
        rec.reason = reason;
        self.auditor.write(&rec);
        for p in &d.audit {
            self.metrics
                .authz_decisions
                .with_label_values(&["audit", &p.to_string(), layer])
                .inc();
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
        if let Ok(mut shard) = self.authz.shard(self.id).lock() {
            shard.remove(&self.id);
        }
    }
}

/// Judges each HTTP request of one admitted connection against the policy
/// set in force at that moment.
pub struct RequestGate {
    authz: Arc<Authz>,
    id: u64,
    subject: Arc<Subject>,
}

/// The request attributes an audit record shows.
struct RequestView<'a> {
    method: &'a str,
    path: &'a str,
    host: &'a str,
}

impl proxy_http::Authorizer for RequestGate {
    fn authorize(&self, parts: &mut Parts) -> Verdict {
        let raw = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let normalized = match policy::normalize_path(raw) {
            Ok(n) => n,
            Err(e) => return self.refuse_path(parts, raw, &e.to_string()),
        };
        if let Some(uri) = rewrite_uri(&parts.uri, &normalized.request_target()) {
            parts.uri = uri;
        }
        let host = request_host(parts).to_owned();
        let request = policy::Request {
            method: parts.method.as_str(),
            path: &normalized.path,
            host: &host,
            headers: &parts.headers,
        };
        let set = self.authz.policies.load();
        let d = set.evaluate_request(&connection(&self.subject), &request);
        let view = RequestView {
            method: request.method,
            path: request.path,
            host: &host,
        };
        self.authz
            .record(self.id, &self.subject, Some(&view), "request", &d, None);
        if d.allow {
            Verdict::Forward
        } else {
            Verdict::Respond(proxy_http::refusal(
                StatusCode::FORBIDDEN,
                "RBAC: access denied\n",
            ))
        }
    }
}

impl RequestGate {
    /// A path that cannot be normalised safely is refused outright (400),
    /// never matched in some other form.
    fn refuse_path(&self, parts: &Parts, raw: &str, why: &str) -> Verdict {
        let d = Decision {
            allow: false,
            policy: None,
            action: None,
            reason: format!("request path rejected: {why}"),
            audit: Vec::new(),
        };
        let view = RequestView {
            method: parts.method.as_str(),
            path: raw,
            host: request_host(parts),
        };
        self.authz
            .record(self.id, &self.subject, Some(&view), "request", &d, None);
        Verdict::Respond(proxy_http::refusal(
            StatusCode::BAD_REQUEST,
            "bad request path\n",
        ))
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

/// `:authority` (HTTP/2, absolute-form) or the Host header (HTTP/1).
fn request_host(parts: &Parts) -> &str {
    parts
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            parts
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .unwrap_or("")
}

/// `uri` with its path and query replaced by `path_and_query`.
fn rewrite_uri(uri: &Uri, path_and_query: &str) -> Option<Uri> {
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().ok()?);
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
        decision: "deny",
        source_principal: s.principal.as_ref().map(|p| clean(p.as_str())),
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
