//! Authorization policy: which callers may reach which workloads.
//!
//! nodeward reads Istio's own `AuthorizationPolicy` and `PeerAuthentication`
//! resources (`security.istio.io/v1` and `v1beta1`), so a mesh can move
//! between Istio and nodeward without rewriting its policies. It adds one
//! resource of its own, `RateLimitPolicy` (`nodeward.io/v1alpha1`): which
//! callers' connections or requests a workload counts, with Istio's selector
//! and match syntax; the proxy (`nodeward-proxy`) keeps the token buckets.
//! `RequestAuthentication` (JWT) is validated here too ([`jwt`]); a
//! `jwksUri`'s keys are fetched by the proxy and handed in. One layer
//! per file:
//!
//! - `file`: the YAML as written. Strict: an unknown or unsupported field is
//!   an error, because a field we ignored would be a rule we silently do not
//!   enforce (Istio CVE-2022-21679).
//! - `model`: compiled policies (matchers, parsed CIDRs, selectors), grouped
//!   by namespace at load time.
//! - `eval`: decisions. They come in two stages: at connect time only the
//!   caller's identity and IP and the destination port are known, so a rule
//!   that needs HTTP attributes is *unknown* (three-valued Kleene logic) and
//!   [`PolicySet::evaluate_connection`] answers [`L4Decision::NeedsHttp`] when
//!   the outcome depends on them.
//! - `load`: directories, `---` documents, and every error with file:line.
//! - `path`, `host`: request path and host normalisation.
//!
//! - `pattern`: Istio's match syntax, shared by the layers above.
//! - `tool`: `nodeward policy check|explain`, evaluation only.
//!
//! Whenever something cannot be known the decision falls to deny: a DENY rule
//! that might match denies, an ALLOW rule that might match does not allow,
//! and paths are normalised ([`normalize_path`]) before matching and before
//! forwarding, so the application sees exactly what was authorised.
//!
//! Owns: the policy language, its decisions and rate-limit definitions.
//! Must not know: sockets, async runtimes, HTTP servers, metrics, the
//! kernel, how workloads are discovered or how identities are proven (a
//! caller is a principal string, a callee a namespace, name and labels).
//! No I/O beyond reading a policy directory.
#![forbid(unsafe_code)]

use std::{
    collections::BTreeMap,
    fmt,
    net::IpAddr,
    num::NonZeroU32,
    path::{Path, PathBuf},
    str::FromStr,
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize, Serializer};

mod eval;
mod file;
mod host;
pub mod jwt;
mod load;
mod model;
mod path;
mod pattern;
pub mod tool;

pub use host::{normalize_host, HostRejected, NormalizedHost};
pub use load::{LoadErrors, PolicyError, MAX_ERRORS_PER_DOCUMENT, MAX_FILE_BYTES};
pub use path::{normalize_path, NormalizedPath, PathRejected};

/// Whether a meshed pod accepts connections that bypass its node proxy
/// (PeerAuthentication's `mtls.mode`, and the node's default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum MtlsMode {
    /// Only through the node proxy (and so only over mTLS from other nodes).
    #[serde(rename = "STRICT")]
    Strict,
    /// Plaintext connections straight to the pod are let in (and counted).
    #[serde(rename = "PERMISSIVE")]
    Permissive,
}

impl MtlsMode {
    /// Label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Strict => "STRICT",
            Self::Permissive => "PERMISSIVE",
        }
    }
}

/// Istio's default root namespace: policies there apply mesh-wide.
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";

/// What happens to traffic for a workload that no ALLOW policy selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultPolicy {
    /// Istio's behaviour: a workload without ALLOW policies accepts anyone
    /// DENY policies do not stop. Weaker; choose it knowingly.
    Allow,
    /// Zero trust: nothing is reachable unless an ALLOW policy says so.
    #[default]
    Deny,
}

/// An unrecognised `defaultPolicy` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown default policy {0:?}; expected \"allow\" or \"deny\"")]
pub struct UnknownDefaultPolicy(String);

/// How a [`PolicySet`] is built and what it does when no policy decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub default_policy: DefaultPolicy,
    /// Policies in this namespace apply to every namespace (Istio's
    /// `rootNamespace`).
    pub root_namespace: String,
}

/// An `AuthorizationPolicy` action. `CUSTOM` is rejected at load time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    Allow,
    Deny,
    /// Never decides; matching policies are reported in [`Decision::audit`].
    Audit,
}

/// The kinds of resource a policy directory may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum PolicyKind {
    AuthorizationPolicy,
    PeerAuthentication,
    RateLimitPolicy,
    RequestAuthentication,
}

/// A policy's `namespace/name`, cheap to clone into every decision.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyRef {
    full: Arc<str>,
    slash: usize,
}

/// The validated set of policies; immutable, so share it in an `Arc` and
/// swap the whole set on reload.
#[derive(Debug)]
pub struct PolicySet {
    settings: Settings,
    /// Set only by [`PolicySet::deny_all`]: nothing valid was ever loaded.
    fail_closed: bool,
    files: usize,
    authz: Vec<model::Loaded<model::AuthzPolicy>>,
    authz_index: model::ByNamespace<model::ActionLists>,
    peer: Vec<model::Loaded<model::PeerPolicy>>,
    peer_index: model::ByNamespace<model::PeerLists>,
    rate: Vec<model::Loaded<model::RateLimitPolicy>>,
    rate_index: model::ByNamespace<Vec<usize>>,
    authn: Vec<model::Loaded<jwt::rule::RequestAuthnPolicy>>,
    authn_index: model::ByNamespace<Vec<usize>>,
}

/// Counts for logs and the admin endpoint. Displayed as one line; a valid
/// set from a directory without policy files reads `no policy files`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub files: usize,
    pub allow: usize,
    pub deny: usize,
    pub audit: usize,
    pub peer_authentications: usize,
    pub rate_limits: usize,
    pub request_authentications: usize,
    /// No valid policy set was ever loaded; everything is denied.
    pub fail_closed: bool,
}

/// One loaded policy, as listed by [`PolicySet::policies`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyInfo<'a> {
    pub kind: PolicyKind,
    pub namespace: &'a str,
    pub name: &'a str,
    /// The action of an `AuthorizationPolicy`.
    pub action: Option<Action>,
    /// The mode of a `PeerAuthentication`; `None` for `UNSET`.
    #[serde(serialize_with = "serialize_mtls_mode")]
    pub mtls_mode: Option<MtlsMode>,
    pub file: &'a Path,
    /// The line its document starts on.
    pub line: usize,
}

/// What is known about a connection when it is accepted.
#[derive(Debug, Clone, Copy)]
pub struct Connection<'a> {
    pub source: Source<'a>,
    pub destination: Destination<'a>,
}

/// The caller.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// The verified SPIFFE ID (`spiffe://<td>/ns/<ns>/sa/<sa>`), or `None`
    /// for an unauthenticated caller. The source namespace is derived from it,
    /// as in Istio.
    pub principal: Option<&'a str>,
    /// `None` when the address is not known (it then never will be).
    pub ip: Option<IpAddr>,
}

/// The workload being called. Displayed `namespace/name`, or
/// `namespace/{k=v,...}` when no name is known (`policy explain` by labels).
#[derive(Debug, Clone, Copy)]
pub struct Destination<'a> {
    pub namespace: &'a str,
    /// Empty when the workload need not exist yet (`policy explain`).
    pub name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub port: u16,
}

/// One HTTP request on an accepted connection.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The normalised path ([`NormalizedPath::path`]), without the query. A
    /// path that is not in normal form is denied.
    pub path: &'a str,
    /// The `Host`/`:authority` value, best in normal form
    /// ([`normalize_host`]; it is normalised again here). Empty when the
    /// request has none; then, as when it is not a valid host, the host is
    /// unknowable: a DENY on hosts holds, an ALLOW on hosts does not.
    pub host: &'a str,
    pub headers: &'a http::HeaderMap,
    /// The end-user identity from a valid token ([`PolicySet::authenticate`]);
    /// `None` when the request carried none.
    pub auth: Option<&'a jwt::RequestAuth>,
}

/// The outcome at connection time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum L4Decision {
    /// Certain whatever the HTTP requests on the connection look like.
    Decided(Decision),
    /// Depends on HTTP attributes: speak HTTP and call
    /// [`PolicySet::evaluate_request`] for every request.
    NeedsHttp,
}

/// An authorization decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub allow: bool,
    /// The policy that decided; `None` when a default decided.
    pub policy: Option<PolicyRef>,
    /// The deciding policy's action (`ALLOW` or `DENY`); `None` for defaults.
    pub action: Option<Action>,
    /// Short and human-readable; never contains request data.
    pub reason: String,
    /// Every AUDIT policy that matched.
    pub audit: Vec<PolicyRef>,
}

/// What a `RateLimitPolicy` counts (`spec.limit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitKind {
    /// L4: each new connection takes a token.
    Connections,
    /// HTTP: each request takes a token.
    Requests,
}

/// Whose traffic shares a bucket (`spec.per`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitPer {
    /// One bucket per caller principal; all unauthenticated callers share
    /// one, since nothing tells them apart that they cannot forge.
    #[default]
    Source,
    /// One bucket for every caller together.
    Shared,
}

/// Whether an empty bucket blocks (`spec.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitMode {
    #[default]
    Enforce,
    /// Counts and reports, never blocks: for trying a limit out.
    Shadow,
}

/// Token bucket parameters (`spec.bucket`). Every value is valid: both
/// counts are at least 1 and the interval is within
/// [`TokenBucket::MIN_FILL_INTERVAL`]..=[`TokenBucket::MAX_FILL_INTERVAL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenBucket {
    max_tokens: NonZeroU32,
    tokens_per_fill: NonZeroU32,
    fill_interval: Duration,
}

/// A fill interval outside the allowed range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("fill interval {0:?} is outside 50ms..=24h")]
pub struct BadFillInterval(Duration);

/// One `RateLimitPolicy` as the limiter applies it. Equal values mean the
/// same buckets: a reload that keeps a policy's numbers keeps its buckets.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RateLimit {
    id: PolicyRef,
    kind: LimitKind,
    bucket: TokenBucket,
    per: LimitPer,
    mode: LimitMode,
}

/// A rate limit that applies to a call, for `nodeward policy explain`: the
/// policy's parameters, not its buckets' state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitInfo {
    /// `namespace/name`.
    pub policy: PolicyRef,
    pub limit: LimitKind,
    pub max_tokens: u32,
    pub tokens_per_fill: u32,
    pub fill_interval_ms: u64,
    pub per: LimitPer,
    pub mode: LimitMode,
}

impl DefaultPolicy {
    /// `"allow"` or `"deny"`, as written in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }
}

impl fmt::Display for DefaultPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DefaultPolicy {
    type Err = UnknownDefaultPolicy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "allow" => Ok(Self::Allow),
            "deny" => Ok(Self::Deny),
            _ => Err(UnknownDefaultPolicy(s.to_owned())),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            default_policy: DefaultPolicy::Deny,
            root_namespace: DEFAULT_ROOT_NAMESPACE.to_owned(),
        }
    }
}

impl Action {
    /// `"ALLOW"`, `"DENY"` or `"AUDIT"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "ALLOW",
            Self::Deny => "DENY",
            Self::Audit => "AUDIT",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PolicyKind {
    /// The Kubernetes `kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AuthorizationPolicy => "AuthorizationPolicy",
            Self::PeerAuthentication => "PeerAuthentication",
            Self::RateLimitPolicy => "RateLimitPolicy",
            Self::RequestAuthentication => "RequestAuthentication",
        }
    }
}

impl LimitKind {
    /// `"connections"` or `"requests"`, as written in policies.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connections => "connections",
            Self::Requests => "requests",
        }
    }
}

impl LimitMode {
    /// `"enforce"` or `"shadow"`, as written in policies.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Shadow => "shadow",
        }
    }
}

impl TokenBucket {
    /// Shorter intervals would make refills a busy loop in disguise and
    /// the arithmetic meaningless (Envoy's minimum too).
    pub const MIN_FILL_INTERVAL: Duration = Duration::from_millis(50);
    /// Longer ones are almost certainly a unit mistake.
    pub const MAX_FILL_INTERVAL: Duration = Duration::from_secs(24 * 60 * 60);

    /// Checks the interval; the counts are non-zero by type.
    pub fn new(
        max_tokens: NonZeroU32,
        tokens_per_fill: NonZeroU32,
        fill_interval: Duration,
    ) -> Result<Self, BadFillInterval> {
        if !(Self::MIN_FILL_INTERVAL..=Self::MAX_FILL_INTERVAL).contains(&fill_interval) {
            return Err(BadFillInterval(fill_interval));
        }
        Ok(Self {
            max_tokens,
            tokens_per_fill,
            fill_interval,
        })
    }

    /// Capacity, and the fill of a new bucket.
    pub fn max_tokens(&self) -> u32 {
        self.max_tokens.get()
    }

    /// Tokens added per whole [`TokenBucket::fill_interval`].
    pub fn tokens_per_fill(&self) -> u32 {
        self.tokens_per_fill.get()
    }

    pub fn fill_interval(&self) -> Duration {
        self.fill_interval
    }
}

impl RateLimit {
    /// The policy's `namespace/name`.
    pub fn id(&self) -> &PolicyRef {
        &self.id
    }

    pub fn kind(&self) -> LimitKind {
        self.kind
    }

    pub fn bucket(&self) -> &TokenBucket {
        &self.bucket
    }

    pub fn per(&self) -> LimitPer {
        self.per
    }

    pub fn mode(&self) -> LimitMode {
        self.mode
    }
}

impl From<&RateLimit> for RateLimitInfo {
    fn from(limit: &RateLimit) -> Self {
        let interval = limit.bucket.fill_interval.as_millis();
        Self {
            policy: limit.id.clone(),
            limit: limit.kind,
            max_tokens: limit.bucket.max_tokens(),
            tokens_per_fill: limit.bucket.tokens_per_fill(),
            fill_interval_ms: u64::try_from(interval).unwrap_or(u64::MAX),
            per: limit.per,
            mode: limit.mode,
        }
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PolicyRef {
    /// Names are validated at load time, so neither part contains `/`.
    fn new(namespace: &str, name: &str) -> Self {
        Self {
            full: format!("{namespace}/{name}").into(),
            slash: namespace.len(),
        }
    }

    /// The policy's namespace.
    pub fn namespace(&self) -> &str {
        &self.full[..self.slash]
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.full[self.slash + 1..]
    }

    /// `namespace/name`.
    pub fn as_str(&self) -> &str {
        &self.full
    }
}

impl fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl fmt::Debug for PolicyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PolicyRef({:?})", self.full)
    }
}

impl Serialize for PolicyRef {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.full)
    }
}

impl PolicySet {
    /// Reads every `*.yaml`/`*.yml` file directly in `dir` (following
    /// symlinks, skipping hidden entries); a ConfigMap volume is read as one
    /// snapshot of its `..data` directory, so a swap mid-read cannot mix
    /// old and new files.
    pub fn load_dir(dir: &Path, settings: Settings) -> Result<Self, LoadErrors> {
        load::load_dir(dir, settings)
    }

    /// The policy files of `dir` as `(path, contents)` in name order, read
    /// as [`PolicySet::load_dir`] reads them: for callers that compare
    /// contents before building (hot reload).
    pub fn read_sources(dir: &Path) -> Result<Vec<(PathBuf, String)>, LoadErrors> {
        load::read_sources(dir)
    }

    /// Builds a set from `(file name, contents)` pairs, as if read from disk.
    pub fn from_sources(
        sources: &[(PathBuf, String)],
        settings: Settings,
    ) -> Result<Self, LoadErrors> {
        load::from_sources(sources, settings)
    }

    /// Fail closed: the set used when no valid policy was ever loaded; every
    /// decision is deny and every workload is STRICT.
    pub fn deny_all(settings: Settings) -> Self {
        let mut set = Self::new(settings, 0, load::Policies::default());
        set.fail_closed = true;
        set
    }

    /// The settings this set was built with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Counts of files and policies.
    pub fn summary(&self) -> Summary {
        let count = |action| {
            self.authz
                .iter()
                .filter(|p| p.policy.action == action)
                .count()
        };
        Summary {
            files: self.files,
            allow: count(Action::Allow),
            deny: count(Action::Deny),
            audit: count(Action::Audit),
            peer_authentications: self.peer.len(),
            rate_limits: self.rate.len(),
            request_authentications: self.authn.len(),
            fail_closed: self.fail_closed,
        }
    }

    /// Every policy, in load order (files by name, then documents).
    pub fn policies(&self) -> impl Iterator<Item = PolicyInfo<'_>> {
        let authz = self
            .authz
            .iter()
            .map(model::Loaded::<model::AuthzPolicy>::info);
        let peer = self
            .peer
            .iter()
            .map(model::Loaded::<model::PeerPolicy>::info);
        let rate = self
            .rate
            .iter()
            .map(model::Loaded::<model::RateLimitPolicy>::info);
        let authn = self
            .authn
            .iter()
            .map(model::Loaded::<jwt::rule::RequestAuthnPolicy>::info);
        authz.chain(peer).chain(rate).chain(authn)
    }

    /// Decides what can be decided when a connection is accepted.
    ///
    /// A connection allowed to a workload a `RequestAuthentication`
    /// selects still needs HTTP: each request's token must be checked and
    /// the client's copies of claim headers removed, which a raw relay
    /// would skip.
    pub fn evaluate_connection(&self, conn: &Connection<'_>) -> L4Decision {
        let attrs = eval::Attrs::connection(conn);
        match self.decide(&conn.destination, &attrs) {
            eval::Verdict::Decided(d) if d.allow && self.authenticates(&conn.destination) => {
                L4Decision::NeedsHttp
            }
            eval::Verdict::Decided(decision) => L4Decision::Decided(decision),
            eval::Verdict::Pending => L4Decision::NeedsHttp,
        }
    }

    /// Decides one HTTP request; `req.path` must be normalised.
    pub fn evaluate_request(&self, conn: &Connection<'_>, req: &Request<'_>) -> Decision {
        if self.fail_closed {
            return Decision::fail_closed();
        }
        if !path::is_normalized(req.path) {
            return Decision::refused("request path is not normalised; failing closed");
        }
        let attrs = eval::Attrs::request(conn, req);
        match self.decide(&conn.destination, &attrs) {
            eval::Verdict::Decided(decision) => decision,
            // Cannot happen once every attribute is known; deny regardless.
            eval::Verdict::Pending => Decision::refused("policy left undecided; failing closed"),
        }
    }

    /// The mutual TLS mode `PeerAuthentication` sets for a workload: its own
    /// workload policy, else its namespace's, else the mesh's; `None` when
    /// none applies (`UNSET` falls through). Always `STRICT` for
    /// [`PolicySet::deny_all`].
    pub fn mtls_mode(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Option<MtlsMode> {
        if self.fail_closed {
            return Some(MtlsMode::Strict);
        }
        self.peer_mode(namespace, labels)
    }

    /// The rate limits that would take a token for this call: those on
    /// connections, and, when `req` is given, those on requests. Selector
    /// and `match` are judged as `nodeward_proxy::ratelimit::RateLimiter::check`
    /// judges them; the buckets' state is not consulted.
    pub fn rate_limits_for(
        &self,
        conn: &Connection<'_>,
        req: Option<&Request<'_>>,
    ) -> Vec<RateLimitInfo> {
        let mut limits = self.rate_limits_matching(conn, None, LimitKind::Connections);
        if let Some(req) = req {
            limits.extend(self.rate_limits_matching(conn, Some(req), LimitKind::Requests));
        }
        limits.into_iter().map(RateLimitInfo::from).collect()
    }

    /// The rate limits of `kind` that apply to this call, root namespace's
    /// first. For [`LimitKind::Requests`] pass the request: without it a
    /// `match` on methods or paths is taken to hold (counting too much is
    /// the safe side).
    pub fn applicable_rate_limits(
        &self,
        conn: &Connection<'_>,
        req: Option<&Request<'_>>,
        kind: LimitKind,
    ) -> Vec<&RateLimit> {
        self.rate_limits_matching(conn, req, kind)
    }

    /// Every rate limit in the set, for dropping buckets of removed ones.
    pub fn rate_limits(&self) -> impl Iterator<Item = &RateLimit> {
        self.rate.iter().map(|loaded| &loaded.policy.limit)
    }

    /// Indexes policies by namespace (and action).
    fn new(settings: Settings, files: usize, policies: load::Policies) -> Self {
        let load::Policies {
            authz,
            peer,
            rate,
            authn,
        } = policies;
        let authz_index = model::index_authz(&settings.root_namespace, &authz);
        let peer_index = model::index_peer(&settings.root_namespace, &peer);
        let rate_index = model::index_rate(&settings.root_namespace, &rate);
        let namespaces = authn.iter().map(|l| l.policy.id.namespace());
        let authn_index = model::index_namespaces(&settings.root_namespace, namespaces);
        Self {
            settings,
            fail_closed: false,
            files,
            authz,
            authz_index,
            peer,
            peer_index,
            rate,
            rate_index,
            authn,
            authn_index,
        }
    }
}

impl fmt::Display for Destination<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.name.is_empty() {
            return write!(f, "{}/{}", self.namespace, self.name);
        }
        // The labels are all there is to tell the workload by.
        let labels: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        write!(f, "{}/{{{}}}", self.namespace, labels.join(","))
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.fail_closed {
            return f.write_str("no valid policy set loaded: denying everything");
        }
        // Valid, but easy to get by mounting the wrong directory, and then
        // `defaultPolicy` decides everything: say so plainly in the log.
        if self.files == 0 {
            return f.write_str("no policy files");
        }
        let plural =
            |n: usize, one: &'static str, many: &'static str| if n == 1 { one } else { many };
        let authz = self.allow + self.deny + self.audit;
        let rate = self.rate_limits;
        write!(
            f,
            "{} {}, {authz} {} ({} ALLOW, {} DENY, {} AUDIT), {} {}",
            self.files,
            plural(self.files, "file", "files"),
            plural(authz, "AuthorizationPolicy", "AuthorizationPolicies"),
            self.allow,
            self.deny,
            self.audit,
            self.peer_authentications,
            plural(
                self.peer_authentications,
                "PeerAuthentication",
                "PeerAuthentications"
            ),
        )?;
        // Only when present, so summaries of Istio-only directories read
        // exactly as before.
        if rate > 0 {
            let kind = plural(rate, "RateLimitPolicy", "RateLimitPolicies");
            write!(f, ", {rate} {kind}")?;
        }
        let authn = self.request_authentications;
        if authn > 0 {
            let kind = plural(authn, "RequestAuthentication", "RequestAuthentications");
            write!(f, ", {authn} {kind}")?;
        }
        Ok(())
    }
}

impl Decision {
    /// The JSON shape of access logs and the admin API:
    /// `{"decision","policy","action","reason","audit"}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "decision": if self.allow { "allow" } else { "deny" },
            "policy": self.policy.as_ref().map(PolicyRef::as_str),
            "action": self.action.map(Action::as_str),
            "reason": self.reason,
            "audit": self.audit.iter().map(PolicyRef::as_str).collect::<Vec<_>>(),
        })
    }

    fn fail_closed() -> Self {
        Self::refused("no valid policy set has been loaded")
    }

    /// A deny no policy decided.
    fn refused(reason: &str) -> Self {
        Self {
            allow: false,
            policy: None,
            action: None,
            reason: reason.to_owned(),
            audit: Vec::new(),
        }
    }
}

fn serialize_mtls_mode<S: Serializer>(mode: &Option<MtlsMode>, s: S) -> Result<S::Ok, S::Error> {
    match mode {
        Some(mode) => s.serialize_str(mode.as_str()),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests;
