//! Decisions: three-valued matching, then DENY > ALLOW > default.
//!
//! An attribute is in one of three states: known; *pending* (HTTP
//! attributes at connection time), which makes a check `Unknown` so that
//! the caller looks at the requests; or *unknowable* (no source IP, a
//! malformed principal or Host, a header repeated with disagreeing values),
//! which never becomes known and so is settled at once on the safe side: a
//! check in a DENY or AUDIT policy holds, one in an ALLOW policy does not.
//! Negations sit only on single checks, so a policy is a monotone function
//! of its checks, and settling a check's value on the safe side settles the
//! whole policy on the safe side.
//!
//! A `RateLimitPolicy`'s `match` is judged on the side of counting: an
//! unknowable attribute holds and methods and paths ignore case, as in a
//! DENY policy, so a caller cannot slip out of a limit by writing `/API`.

use std::{collections::BTreeMap, net::IpAddr};

use http::HeaderMap;

use super::{
    file::HostMatch,
    host::{normalize_host, NormalizedHost},
    jwt::{claim_strings, RequestAuth},
    model::{AuthzPolicy, Check, Checks, Rule, StrSet, Test},
    pattern::Pattern,
    Action, Connection, Decision, DefaultPolicy, Destination, LimitKind, PolicyRef, PolicySet,
    RateLimit, Request,
};
use crate::MtlsMode;

/// Kleene truth value; `Unknown` means "depends on pending attributes".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tri {
    False,
    Unknown,
    True,
}

/// The outcome of [`PolicySet::decide`].
#[derive(Debug)]
pub(super) enum Verdict {
    Decided(Decision),
    /// Depends on HTTP attributes.
    Pending,
}

/// Request attributes, prepared once per evaluation.
#[derive(Debug)]
pub(super) struct Attrs<'a> {
    peer: Peer<'a>,
    /// Canonical (an IPv4-mapped IPv6 address is IPv4); `None`: unknowable.
    ip: Option<IpAddr>,
    port: u16,
    /// `None`: pending (connection time).
    http: Option<Http<'a>>,
}

#[derive(Debug)]
enum Peer<'a> {
    Unauthenticated,
    Id {
        /// Without `spiffe://`, as Istio writes principals.
        principal: &'a str,
        /// From `/ns/<ns>/sa/<sa>`; `None` for other SPIFFE paths.
        namespace: Option<&'a str>,
    },
    /// Not a SPIFFE ID: a caller bug; unknowable rather than guessed.
    Malformed,
}

#[derive(Debug)]
struct Http<'a> {
    method: &'a str,
    path: &'a str,
    /// `None`: unknowable (no Host at all, or one that is not a valid host).
    host: Option<NormalizedHost>,
    headers: &'a HeaderMap,
    /// `None`: the request carried no token.
    auth: Option<&'a RequestAuth>,
}

/// What a test saw, before negation.
enum Seen {
    Known(bool),
    Unknowable,
    Pending,
}

/// Which policy (if any) of one action matched.
enum Found<'p> {
    Match(&'p PolicyRef),
    /// None matched for sure, but one might once HTTP is seen.
    Maybe,
    /// Some selected the workload; none matched.
    NoMatch,
    NoneSelected,
}

enum Outcome<'p> {
    Policy(Action, &'p PolicyRef),
    NoAllowMatched,
    Default(DefaultPolicy),
}

impl<'a> Attrs<'a> {
    /// Connection time: HTTP attributes pending.
    pub fn connection(conn: &Connection<'a>) -> Self {
        Self {
            peer: Peer::new(conn.source.principal),
            ip: conn.source.ip.map(|ip| ip.to_canonical()),
            port: conn.destination.port,
            http: None,
        }
    }

    /// One request: everything known that can be.
    pub fn request(conn: &Connection<'a>, req: &Request<'a>) -> Self {
        let http = Http {
            method: req.method,
            path: req.path,
            host: normalize_host(req.host).ok(),
            headers: req.headers,
            auth: req.auth,
        };
        Self {
            http: Some(http),
            ..Self::connection(conn)
        }
    }
}

impl PolicySet {
    /// DENY first, then ALLOW, then the default; AUDIT alongside.
    pub(super) fn decide(&self, dest: &Destination<'_>, attrs: &Attrs<'_>) -> Verdict {
        if self.fail_closed {
            return Verdict::Decided(Decision::fail_closed());
        }
        let deny = self.first_match(dest, Action::Deny, attrs);
        if let Found::Match(id) = deny {
            return self.finish(Outcome::Policy(Action::Deny, id), dest, attrs);
        }
        let outcome = match self.first_match(dest, Action::Allow, attrs) {
            Found::Match(id) => Outcome::Policy(Action::Allow, id),
            Found::Maybe => return Verdict::Pending,
            Found::NoMatch => Outcome::NoAllowMatched,
            Found::NoneSelected => Outcome::Default(self.settings.default_policy),
        };
        if outcome.allows() && matches!(deny, Found::Maybe) {
            return Verdict::Pending;
        }
        self.finish(outcome, dest, attrs)
    }

    /// Rate limits of `kind` whose selector picks the destination and whose
    /// `match` holds (or might: HTTP attributes not given count as matching).
    pub(super) fn rate_limits_matching(
        &self,
        conn: &Connection<'_>,
        req: Option<&Request<'_>>,
        kind: LimitKind,
    ) -> Vec<&RateLimit> {
        let attrs = match req {
            Some(req) => Attrs::request(conn, req),
            None => Attrs::connection(conn),
        };
        let dest = &conn.destination;
        let own = self.rate_index.non_root(dest.namespace);
        let own = own.map_or(&[][..], Vec::as_slice);
        let policies = self.rate_index.root().iter().chain(own);
        policies
            .map(|&i| &self.rate[i].policy)
            .filter(|p| p.limit.kind == kind && p.selector.matches(dest.labels))
            .filter(|p| p.matcher.eval(&attrs, true) != Tri::False)
            .map(|p| &p.limit)
            .collect()
    }

    /// Resolution order for `PeerAuthentication`: the workload's own, its
    /// namespace's, the mesh's; at each level the strictest mode wins (Istio
    /// takes the oldest policy; we have no timestamps, so we take the safer).
    pub(super) fn peer_mode(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Option<MtlsMode> {
        let own = self.peer_index.get(namespace);
        let strictest = |ids: &[usize], check_labels: bool| {
            let policies = ids.iter().map(|&i| &self.peer[i].policy);
            let modes = policies
                .filter(|p| !check_labels || p.selector.matches(labels))
                .map(|p| p.mode);
            modes.max_by_key(|mode| strictness(*mode)).flatten()
        };
        own.and_then(|l| strictest(&l.workload, true))
            .or_else(|| own.and_then(|l| strictest(&l.namespace_wide, false)))
            .or_else(|| strictest(&self.peer_index.root().namespace_wide, false))
    }

    /// Adds the AUDIT policies that certainly match. One that depends on
    /// HTTP attributes is left out rather than waited for: waiting would make
    /// the proxy speak HTTP on the connection and close a client that does
    /// not, and AUDIT must never change what happens to traffic.
    fn finish(&self, outcome: Outcome<'_>, dest: &Destination<'_>, attrs: &Attrs<'_>) -> Verdict {
        let audit = self
            .selecting(dest, Action::Audit)
            .filter(|policy| policy.matches(attrs) == Tri::True)
            .map(|policy| policy.id.clone())
            .collect();
        Verdict::Decided(outcome.decision(dest, audit))
    }

    fn first_match(&self, dest: &Destination<'_>, action: Action, attrs: &Attrs<'_>) -> Found<'_> {
        let mut found = Found::NoneSelected;
        for policy in self.selecting(dest, action) {
            match policy.matches(attrs) {
                Tri::True => return Found::Match(&policy.id),
                Tri::Unknown => found = Found::Maybe,
                Tri::False if matches!(found, Found::NoneSelected) => found = Found::NoMatch,
                Tri::False => {}
            }
        }
        found
    }

    /// Policies of `action` that select the destination: the root
    /// namespace's (mesh-wide, or by labels in every namespace), then its own
    /// namespace's.
    fn selecting<'s, 'd>(
        &'s self,
        dest: &Destination<'d>,
        action: Action,
    ) -> impl Iterator<Item = &'s AuthzPolicy> + use<'s, 'd> {
        let labels = dest.labels;
        let own = self
            .authz_index
            .non_root(dest.namespace)
            .map_or(&[][..], |l| l.list(action));
        let root = self.authz_index.root().list(action);
        root.iter()
            .chain(own)
            .map(|&i| &self.authz[i].policy)
            .filter(move |p| p.selector.matches(labels))
    }
}

impl AuthzPolicy {
    /// Rules OR; a policy without rules matches nothing.
    fn matches(&self, attrs: &Attrs<'_>) -> Tri {
        let deny_side = self.action != Action::Allow;
        Tri::any(self.rules.iter().map(|rule| rule.eval(attrs, deny_side)))
    }
}

impl Rule {
    fn eval(&self, attrs: &Attrs<'_>, deny_side: bool) -> Tri {
        let any_of = |alternatives: &[Checks]| match alternatives {
            [] => Tri::True,
            _ => Tri::any(alternatives.iter().map(|c| c.eval(attrs, deny_side))),
        };
        let from = any_of(&self.from);
        if from == Tri::False {
            return Tri::False;
        }
        let to = any_of(&self.to);
        if to == Tri::False {
            return Tri::False;
        }
        from.and(to).and(self.when.eval(attrs, deny_side))
    }
}

impl Checks {
    fn eval(&self, attrs: &Attrs<'_>, deny_side: bool) -> Tri {
        Tri::all(self.0.iter().map(|check| check.eval(attrs, deny_side)))
    }
}

impl Check {
    /// Paths and methods fold case where that makes the check hold more
    /// often in DENY/AUDIT policies and less often in ALLOW policies:
    /// positive checks fold in DENY, negated ones fold in ALLOW.
    fn eval(&self, attrs: &Attrs<'_>, deny_side: bool) -> Tri {
        let fold = deny_side != self.negate;
        match self.test.seen(attrs, fold) {
            Seen::Known(hit) => Tri::from(hit != self.negate),
            Seen::Unknowable => Tri::from(deny_side),
            Seen::Pending => Tri::Unknown,
        }
    }
}

impl Test {
    fn seen(&self, attrs: &Attrs<'_>, fold: bool) -> Seen {
        match self {
            Self::Principal(set) => attrs.peer.seen(|p, _| set.matches(p.as_bytes(), false)),
            Self::Namespace(set) => attrs
                .peer
                .seen(|_, ns| ns.is_some_and(|ns| set.matches(ns.as_bytes(), false))),
            Self::SourceIp(nets) => match attrs.ip {
                Some(ip) => Seen::Known(nets.iter().any(|net| net.contains(&ip))),
                None => Seen::Unknowable,
            },
            Self::DestinationPort(ports) => Seen::Known(ports.contains(&attrs.port)),
            Self::Method(set) => {
                attrs.with_http(|h| Seen::Known(set.matches(h.method.as_bytes(), fold)))
            }
            Self::Path(set) => {
                attrs.with_http(|h| Seen::Known(set.matches(h.path.as_bytes(), fold)))
            }
            Self::Host(hosts) => attrs.with_http(|h| host_seen(h.host.as_ref(), hosts, attrs.port)),
            Self::Header(name, set) => attrs.with_http(|h| header_seen(h.headers, name, set)),
            Self::RequestPrincipal(set) => attrs.with_auth(|a| {
                a.principal
                    .as_deref()
                    .is_some_and(|p| set.matches(p.as_bytes(), false))
            }),
            Self::RequestAudience(set) => attrs.with_auth(|a| {
                a.audiences
                    .iter()
                    .any(|aud| set.matches(aud.as_bytes(), false))
            }),
            Self::RequestPresenter(set) => attrs.with_auth(|a| {
                a.presenter
                    .as_deref()
                    .is_some_and(|p| set.matches(p.as_bytes(), false))
            }),
            Self::RequestClaim(path, set) => attrs.with_auth(|a| {
                claim_strings(&a.claims, path)
                    .iter()
                    .any(|v| set.matches(v.as_bytes(), false))
            }),
        }
    }
}

impl Attrs<'_> {
    fn with_http(&self, f: impl FnOnce(&Http<'_>) -> Seen) -> Seen {
        self.http.as_ref().map_or(Seen::Pending, f)
    }

    /// End-user identity is an HTTP attribute: pending at connection time.
    /// A request without a token has no principal, audience, presenter or
    /// claim, so a positive check fails and a negated one holds.
    fn with_auth(&self, f: impl FnOnce(&RequestAuth) -> bool) -> Seen {
        self.with_http(|h| Seen::Known(h.auth.is_some_and(f)))
    }
}

impl<'a> Peer<'a> {
    /// Accepts `spiffe://<td>/<path>`; anything else is malformed.
    fn new(principal: Option<&'a str>) -> Self {
        let Some(principal) = principal else {
            return Self::Unauthenticated;
        };
        match principal.strip_prefix("spiffe://") {
            Some(id) if id.contains('/') => Self::Id {
                principal: id,
                namespace: namespace_of(id),
            },
            _ => Self::Malformed,
        }
    }

    /// An unauthenticated caller has no principal and no namespace, so a
    /// positive check fails and a negated one (`notPrincipals: ["*"]`) holds.
    fn seen(&self, test: impl FnOnce(&str, Option<&str>) -> bool) -> Seen {
        match self {
            Self::Unauthenticated => Seen::Known(false),
            Self::Id {
                principal,
                namespace,
            } => Seen::Known(test(principal, *namespace)),
            Self::Malformed => Seen::Unknowable,
        }
    }
}

/// A pattern's port is compared with the Host's, or, when the Host has
/// none, with the port the connection reached (`destination_port`):
/// otherwise `Host: admin.example` would slip past a DENY on
/// `admin.example:8080`. A request without a usable host (HTTP/1.0 without
/// `Host`, or a malformed one) is unknowable: a DENY on hosts holds, an
/// ALLOW on hosts (or on `notHosts`) does not.
fn host_seen(host: Option<&NormalizedHost>, hosts: &[HostMatch], destination_port: u16) -> Seen {
    let Some(host) = host else {
        return Seen::Unknowable;
    };
    let port = host.port.unwrap_or(destination_port);
    Seen::Known(
        hosts.iter().any(|h| {
            h.host.matches(host.name.as_bytes(), true) && h.port.is_none_or(|p| p == port)
        }),
    )
}

/// A header repeated with values that disagree (one matches, one does
/// not) is unknowable: the application may read either. `-` and `_` in
/// names are one character here: CGI-style servers read `x-debug` and
/// `x_debug` both as `HTTP_X_DEBUG`, so every spelling is a repeat of the
/// one header. (The proxy refuses `_` in header names unless configured to
/// allow them.)
fn header_seen(headers: &HeaderMap, name: &http::HeaderName, set: &StrSet) -> Seen {
    let (mut any, mut all, mut present) = (false, true, false);
    let spellings = headers
        .iter()
        .filter(|(n, _)| same_cgi_name(n.as_str(), name.as_str()));
    for (_, value) in spellings {
        let hit = set.matches(value.as_bytes(), false);
        present = true;
        any |= hit;
        all &= hit;
    }
    match (present, any, all) {
        (false, _, _) => Seen::Known(false),
        (true, true, true) => Seen::Known(true),
        (true, false, _) => Seen::Known(false),
        (true, true, false) => Seen::Unknowable,
    }
}

/// Equal names once `-` and `_` are taken as one character (names are
/// lowercase already).
fn same_cgi_name(a: &str, b: &str) -> bool {
    let dash = |c: u8| if c == b'_' { b'-' } else { c };
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| dash(x) == dash(y))
}

impl StrSet {
    fn matches(&self, value: &[u8], fold: bool) -> bool {
        self.0.iter().any(|p| p.matches(value, fold))
    }
}

impl Pattern {
    /// `fold`: ASCII case-insensitive. `*` (presence) needs a non-empty value.
    pub(super) fn matches(&self, value: &[u8], fold: bool) -> bool {
        let eq = |a: &[u8], b: &[u8]| {
            if fold {
                a.eq_ignore_ascii_case(b)
            } else {
                a == b
            }
        };
        match self {
            Self::Exact(t) => eq(value, t.as_bytes()),
            Self::Prefix(t) => value.len() >= t.len() && eq(&value[..t.len()], t.as_bytes()),
            Self::Suffix(t) => {
                value.len() >= t.len() && eq(&value[value.len() - t.len()..], t.as_bytes())
            }
            Self::Presence => !value.is_empty(),
        }
    }
}

impl Outcome<'_> {
    fn allows(&self) -> bool {
        matches!(
            self,
            Self::Policy(Action::Allow, _) | Self::Default(DefaultPolicy::Allow)
        )
    }

    fn decision(&self, dest: &Destination<'_>, audit: Vec<PolicyRef>) -> Decision {
        let (policy, action, reason) = match *self {
            Self::Policy(action, id) => (
                Some(id.clone()),
                Some(action),
                format!("{action} policy {id} matched"),
            ),
            Self::NoAllowMatched => (None, None, format!("no ALLOW policy for {dest} matched")),
            Self::Default(default) => (
                None,
                None,
                format!("no ALLOW policy selects {dest}; defaultPolicy {default}"),
            ),
        };
        Decision {
            allow: self.allows(),
            policy,
            action,
            reason,
            audit,
        }
    }
}

impl Tri {
    fn and(self, other: Self) -> Self {
        Self::all([self, other])
    }

    /// Kleene AND: false wins, then unknown.
    fn all(values: impl IntoIterator<Item = Self>) -> Self {
        let mut result = Self::True;
        for value in values {
            match value {
                Self::False => return Self::False,
                Self::Unknown => result = Self::Unknown,
                Self::True => {}
            }
        }
        result
    }

    /// Kleene OR: true wins, then unknown; empty is false.
    fn any(values: impl IntoIterator<Item = Self>) -> Self {
        let mut result = Self::False;
        for value in values {
            match value {
                Self::True => return Self::True,
                Self::Unknown => result = Self::Unknown,
                Self::False => {}
            }
        }
        result
    }
}

impl From<bool> for Tri {
    fn from(b: bool) -> Self {
        if b {
            Self::True
        } else {
            Self::False
        }
    }
}

/// `<td>/ns/<ns>/sa/<sa>` → `<ns>`.
fn namespace_of(principal: &str) -> Option<&str> {
    let mut parts = principal.split('/');
    match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        (Some(_), Some("ns"), Some(ns), Some("sa"), Some(sa), None)
            if !ns.is_empty() && !sa.is_empty() =>
        {
            Some(ns)
        }
        _ => None,
    }
}

fn strictness(mode: Option<MtlsMode>) -> u8 {
    match mode {
        None => 0,
        Some(MtlsMode::Permissive) => 1,
        Some(MtlsMode::Strict) => 2,
    }
}
