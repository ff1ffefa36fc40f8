//! Authorization policy: which callers may reach which workloads.
//!
//! nodeward reads Istio's own `AuthorizationPolicy` and `PeerAuthentication`
//! resources (`security.istio.io/v1` and `v1beta1`), so a mesh can move
//! between Istio and nodeward without rewriting its policies. One layer per
//! file:
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
//! - `path`: request path normalisation.
//!
//! Whenever something cannot be known the decision falls to deny: a DENY rule
//! that might match denies, an ALLOW rule that might match does not allow,
//! and paths are normalised ([`normalize_path`]) before matching and before
//! forwarding, so the application sees exactly what was authorised.

use std::{
    collections::BTreeMap,
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    str::FromStr,
    sync::Arc,
};

use serde::{Deserialize, Serialize, Serializer};

use crate::config::MtlsMode;

mod eval;
mod file;
mod load;
mod model;
mod path;

pub use load::{LoadErrors, PolicyError, MAX_FILE_BYTES};
pub use path::{normalize_path, NormalizedPath, PathRejected};

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
}

/// Counts for logs and the admin endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub files: usize,
    pub allow: usize,
    pub deny: usize,
    pub audit: usize,
    pub peer_authentications: usize,
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

/// The workload being called.
#[derive(Debug, Clone, Copy)]
pub struct Destination<'a> {
    pub namespace: &'a str,
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
    /// The `Host`/`:authority` value; empty when the request has none.
    pub host: &'a str,
    pub headers: &'a http::HeaderMap,
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
    /// symlinks, skipping hidden entries, so ConfigMap mounts work).
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
        let mut set = Self::new(settings, 0, Vec::new(), Vec::new());
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
        authz.chain(peer)
    }

    /// Decides what can be decided when a connection is accepted.
    pub fn evaluate_connection(&self, conn: &Connection<'_>) -> L4Decision {
        let attrs = eval::Attrs::connection(conn);
        match self.decide(&conn.destination, &attrs) {
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

    /// Indexes policies by namespace and action.
    fn new(
        settings: Settings,
        files: usize,
        authz: Vec<model::Loaded<model::AuthzPolicy>>,
        peer: Vec<model::Loaded<model::PeerPolicy>>,
    ) -> Self {
        let authz_index = model::index_authz(&settings.root_namespace, &authz);
        let peer_index = model::index_peer(&settings.root_namespace, &peer);
        Self {
            settings,
            fail_closed: false,
            files,
            authz,
            authz_index,
            peer,
            peer_index,
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.fail_closed {
            return f.write_str("no valid policy set loaded: denying everything");
        }
        let plural =
            |n: usize, one: &'static str, many: &'static str| if n == 1 { one } else { many };
        let authz = self.allow + self.deny + self.audit;
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
        )
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
