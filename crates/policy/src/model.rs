//! Compiled policies: what the file formats turn into, ready to evaluate,
//! and the namespace index built once per load.

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    sync::Arc,
};

use http::HeaderName;
use ipnet::IpNet;

use super::{
    file::{
        self, ActionFile, AuthorizationPolicyFile, AuthorizationPolicySpecFile, BucketFile,
        ConditionFile, ConditionKey, FromFile, HostMatch, MetadataFile, MtlsModeFile,
        OperationFile, PeerAuthenticationFile, PeerAuthenticationSpecFile, PeerMtlsFile,
        RateLimitMatchFile, RateLimitPolicyFile, RateLimitSpecFile, RuleFile, SourceFile, ToFile,
        WorkloadSelectorFile,
    },
    pattern::Pattern,
    Action, LimitKind, MtlsMode, PolicyInfo, PolicyKind, PolicyRef, RateLimit, TokenBucket,
};

/// A policy and where it was read from.
#[derive(Debug)]
pub(super) struct Loaded<T> {
    pub policy: T,
    pub origin: Origin,
}

/// A document's file and first line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Origin {
    pub file: Arc<Path>,
    pub line: usize,
}

#[derive(Debug)]
pub(super) struct AuthzPolicy {
    pub id: PolicyRef,
    pub action: Action,
    pub selector: Selector,
    /// Empty: the policy matches nothing.
    pub rules: Box<[Rule]>,
}

#[derive(Debug)]
pub(super) struct PeerPolicy {
    pub id: PolicyRef,
    pub selector: Selector,
    /// `None` for `UNSET`: inherit.
    pub mode: Option<MtlsMode>,
}

/// A `RateLimitPolicy`: its limit, and whom it applies to.
#[derive(Debug)]
pub(super) struct RateLimitPolicy {
    pub limit: RateLimit,
    pub selector: Selector,
    /// All must hold; empty for a policy without `match`.
    pub matcher: Checks,
}

/// `matchLabels`; `None` selects every workload in scope.
#[derive(Debug, Default)]
pub(super) struct Selector(Option<Box<[(String, String)]>>);

/// `from` entries OR, `to` entries OR, `when` conditions AND, and the three
/// AND together; an empty `from` or `to` does not constrain.
#[derive(Debug)]
pub(super) struct Rule {
    pub from: Box<[Checks]>,
    pub to: Box<[Checks]>,
    pub when: Checks,
}

/// Checks that must all hold: one source, one operation, or the conditions.
#[derive(Debug, Default)]
pub(super) struct Checks(pub Box<[Check]>);

/// One field: holds when any value matches (`negate`: when none does).
#[derive(Debug)]
pub(super) struct Check {
    pub negate: bool,
    pub test: Test,
}

#[derive(Debug)]
pub(super) enum Test {
    /// Against the principal without `spiffe://`.
    Principal(StrSet),
    /// Against the namespace in the principal.
    Namespace(StrSet),
    SourceIp(Box<[IpNet]>),
    DestinationPort(Box<[u16]>),
    /// Case-sensitivity depends on the policy's action (see `eval`).
    Method(StrSet),
    Path(StrSet),
    Host(Box<[HostMatch]>),
    Header(HeaderName, StrSet),
    /// Against `<iss>/<sub>` of a valid token.
    RequestPrincipal(StrSet),
    /// Against any of the token's `aud`.
    RequestAudience(StrSet),
    /// Against `azp`.
    RequestPresenter(StrSet),
    /// Against a claim (a string, or any string of a list).
    RequestClaim(Box<[String]>, StrSet),
}

/// Patterns of which any may match.
#[derive(Debug)]
pub(super) struct StrSet(pub Box<[Pattern]>);

/// A conversion error: the field (relative to what was converted) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FieldError {
    pub field: String,
    pub message: String,
}

/// Policy indices (into the load-order list) for one namespace, by action.
#[derive(Debug, Default)]
pub(super) struct ActionLists {
    deny: Vec<usize>,
    allow: Vec<usize>,
    audit: Vec<usize>,
}

/// `PeerAuthentication` indices for one namespace.
#[derive(Debug, Default)]
pub(super) struct PeerLists {
    pub workload: Vec<usize>,
    pub namespace_wide: Vec<usize>,
}

/// Per-namespace lists, with the root namespace's kept apart because they
/// apply everywhere.
#[derive(Debug, Default)]
pub(super) struct ByNamespace<L> {
    root_name: String,
    root: L,
    others: HashMap<Box<str>, L>,
}

impl TryFrom<AuthorizationPolicyFile> for AuthzPolicy {
    type Error = FieldError;

    fn try_from(file: AuthorizationPolicyFile) -> Result<Self, FieldError> {
        let AuthorizationPolicyFile {
            api_version: _,
            kind: _,
            metadata,
            spec,
        } = file;
        let id = policy_ref(metadata)?;
        let AuthorizationPolicySpecFile {
            selector,
            action,
            rules,
        } = spec.unwrap_or_default();
        Ok(Self {
            id,
            action: action.map_or(Action::Allow, Action::from),
            selector: Selector::from(selector),
            rules: convert_all(rules.unwrap_or_default(), "spec.rules")?,
        })
    }
}

impl TryFrom<PeerAuthenticationFile> for PeerPolicy {
    type Error = FieldError;

    fn try_from(file: PeerAuthenticationFile) -> Result<Self, FieldError> {
        let PeerAuthenticationFile {
            api_version: _,
            kind: _,
            metadata,
            spec,
        } = file;
        let id = policy_ref(metadata)?;
        let PeerAuthenticationSpecFile { selector, mtls } = spec.unwrap_or_default();
        let mode = mtls.and_then(|PeerMtlsFile { mode }| mode);
        Ok(Self {
            id,
            selector: Selector::from(selector),
            mode: match mode {
                Some(MtlsModeFile::Strict) => Some(MtlsMode::Strict),
                Some(MtlsModeFile::Permissive) => Some(MtlsMode::Permissive),
                Some(MtlsModeFile::Unset) | None => None,
            },
        })
    }
}

impl TryFrom<RateLimitPolicyFile> for RateLimitPolicy {
    type Error = FieldError;

    fn try_from(file: RateLimitPolicyFile) -> Result<Self, FieldError> {
        let RateLimitPolicyFile {
            api_version: _,
            kind: _,
            metadata,
            spec,
        } = file;
        let id = policy_ref(metadata)?;
        let spec = spec.ok_or_else(|| {
            FieldError::new(
                "spec",
                "is required: a RateLimitPolicy needs `limit` and `bucket`",
            )
        })?;
        let RateLimitSpecFile {
            selector,
            matches,
            limit,
            bucket,
            per,
            mode,
        } = spec;
        let kind = limit.ok_or_else(|| {
            FieldError::new("spec.limit", "is required: `connections` or `requests`")
        })?;
        let bucket = bucket.ok_or_else(|| FieldError::new("spec.bucket", "is required"))?;
        let matcher = matches.map_or(Ok(Checks::default()), |m| rate_match(m, kind));
        Ok(Self {
            limit: RateLimit {
                id,
                kind,
                bucket: TokenBucket::try_from(bucket).map_err(|e| e.within("spec.bucket"))?,
                per: per.unwrap_or_default(),
                mode: mode.unwrap_or_default(),
            },
            selector: Selector::from(selector),
            matcher: matcher.map_err(|e| e.within("spec.match"))?,
        })
    }
}

impl TryFrom<BucketFile> for TokenBucket {
    type Error = FieldError;

    fn try_from(file: BucketFile) -> Result<Self, FieldError> {
        let BucketFile {
            max_tokens,
            tokens_per_fill,
            fill_interval,
        } = file;
        let required = |field: &str| FieldError::new(field, "is required");
        let max_tokens = max_tokens.ok_or_else(|| required("maxTokens"))?;
        let tokens_per_fill = tokens_per_fill.ok_or_else(|| required("tokensPerFill"))?;
        let fill_interval = fill_interval.ok_or_else(|| required("fillInterval"))?;
        // The range was checked while decoding; this only restates it.
        Self::new(max_tokens.0, tokens_per_fill.0, fill_interval.0)
            .map_err(|e| FieldError::new("fillInterval", e.to_string()))
    }
}

impl TryFrom<RuleFile> for Rule {
    type Error = FieldError;

    fn try_from(file: RuleFile) -> Result<Self, FieldError> {
        let RuleFile { from, to, when } = file;
        let mut conditions = Vec::new();
        for (i, condition) in when.unwrap_or_default().into_iter().enumerate() {
            let checks =
                condition_checks(condition).map_err(|e| e.within(&format!("when[{i}]")))?;
            conditions.extend(checks);
        }
        Ok(Self {
            from: convert_all(from.unwrap_or_default(), "from")?,
            to: convert_all(to.unwrap_or_default(), "to")?,
            when: Checks(conditions.into()),
        })
    }
}

impl TryFrom<FromFile> for Checks {
    type Error = FieldError;

    /// Istio refuses a missing or empty `source`; so do we, rather than
    /// guess whether it meant "anyone" or "no one".
    fn try_from(file: FromFile) -> Result<Self, FieldError> {
        let FromFile { source } = file;
        let source = source.ok_or_else(|| FieldError::new("source", "is required"))?;
        let SourceFile {
            principals,
            not_principals,
            request_principals,
            not_request_principals,
            namespaces,
            not_namespaces,
            ip_blocks,
            not_ip_blocks,
        } = source;
        let mut checks = Vec::new();
        let unwrap = |v: Vec<file::PrincipalPattern>| StrSet(v.into_iter().map(|p| p.0).collect());
        add(&mut checks, principals, false, |v| {
            Test::Principal(unwrap(v))
        });
        add(&mut checks, not_principals, true, |v| {
            Test::Principal(unwrap(v))
        });
        let unwrap =
            |v: Vec<file::RequestPrincipalPattern>| StrSet(v.into_iter().map(|p| p.0).collect());
        add(&mut checks, request_principals, false, |v| {
            Test::RequestPrincipal(unwrap(v))
        });
        add(&mut checks, not_request_principals, true, |v| {
            Test::RequestPrincipal(unwrap(v))
        });
        let unwrap = |v: Vec<file::NamespacePattern>| StrSet(v.into_iter().map(|p| p.0).collect());
        add(&mut checks, namespaces, false, |v| {
            Test::Namespace(unwrap(v))
        });
        add(&mut checks, not_namespaces, true, |v| {
            Test::Namespace(unwrap(v))
        });
        let unwrap = |v: Vec<file::IpBlock>| v.into_iter().map(|b| b.0).collect();
        add(&mut checks, ip_blocks, false, |v| Test::SourceIp(unwrap(v)));
        add(&mut checks, not_ip_blocks, true, |v| {
            Test::SourceIp(unwrap(v))
        });
        non_empty(checks, "source")
    }
}

impl TryFrom<ToFile> for Checks {
    type Error = FieldError;

    fn try_from(file: ToFile) -> Result<Self, FieldError> {
        let ToFile { operation } = file;
        let operation = operation.ok_or_else(|| FieldError::new("operation", "is required"))?;
        let OperationFile {
            hosts,
            not_hosts,
            ports,
            not_ports,
            methods,
            not_methods,
            paths,
            not_paths,
        } = operation;
        let mut checks = Vec::new();
        let unwrap = |v: Vec<file::HostPattern>| v.into_iter().map(|h| h.0).collect();
        add(&mut checks, hosts, false, |v| Test::Host(unwrap(v)));
        add(&mut checks, not_hosts, true, |v| Test::Host(unwrap(v)));
        let unwrap = |v: Vec<file::Port>| v.into_iter().map(|p| p.0).collect();
        add(&mut checks, ports, false, |v| {
            Test::DestinationPort(unwrap(v))
        });
        add(&mut checks, not_ports, true, |v| {
            Test::DestinationPort(unwrap(v))
        });
        let unwrap = |v: Vec<file::MethodPattern>| StrSet(v.into_iter().map(|p| p.0).collect());
        add(&mut checks, methods, false, |v| Test::Method(unwrap(v)));
        add(&mut checks, not_methods, true, |v| Test::Method(unwrap(v)));
        let unwrap = |v: Vec<file::PathPattern>| StrSet(v.into_iter().map(|p| p.0).collect());
        add(&mut checks, paths, false, |v| Test::Path(unwrap(v)));
        add(&mut checks, not_paths, true, |v| Test::Path(unwrap(v)));
        non_empty(checks, "operation")
    }
}

impl From<ActionFile> for Action {
    fn from(action: ActionFile) -> Self {
        match action {
            ActionFile::Allow => Self::Allow,
            ActionFile::Deny => Self::Deny,
            ActionFile::Audit => Self::Audit,
        }
    }
}

/// An empty `matchLabels` selects everything, like no selector (Istio).
impl From<Option<WorkloadSelectorFile>> for Selector {
    fn from(file: Option<WorkloadSelectorFile>) -> Self {
        let labels = file.and_then(|WorkloadSelectorFile { match_labels }| match_labels);
        let labels = labels.map(|l| l.0).filter(|l| !l.is_empty());
        Self(labels.map(|l| l.into_iter().collect()))
    }
}

impl Selector {
    /// Every selector label is present with the same value.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0
            .iter()
            .flatten()
            .all(|(k, v)| labels.get(k) == Some(v))
    }

    /// Whether it names labels (a workload policy) rather than everything.
    pub fn is_workload(&self) -> bool {
        self.0.is_some()
    }
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Prefixes the field with its parent's path.
    pub fn within(self, parent: &str) -> Self {
        let field = match self.field.as_str() {
            "" => parent.to_owned(),
            f if f.starts_with('[') => format!("{parent}{f}"),
            f => format!("{parent}.{f}"),
        };
        Self { field, ..self }
    }
}

impl ActionLists {
    /// Indices of this namespace's policies with `action`.
    pub fn list(&self, action: Action) -> &[usize] {
        match action {
            Action::Deny => &self.deny,
            Action::Allow => &self.allow,
            Action::Audit => &self.audit,
        }
    }
}

impl<L: Default> ByNamespace<L> {
    fn new(root_name: &str) -> Self {
        Self {
            root_name: root_name.to_owned(),
            root: L::default(),
            others: HashMap::new(),
        }
    }

    fn entry(&mut self, namespace: &str) -> &mut L {
        if namespace == self.root_name {
            &mut self.root
        } else {
            self.others.entry(namespace.into()).or_default()
        }
    }

    /// The root namespace's lists, which apply to every namespace.
    pub fn root(&self) -> &L {
        &self.root
    }

    /// `namespace`'s own lists (the root's, for the root namespace).
    pub fn get(&self, namespace: &str) -> Option<&L> {
        if namespace == self.root_name {
            Some(&self.root)
        } else {
            self.others.get(namespace)
        }
    }

    /// `namespace`'s lists unless it is the root (already in [`Self::root`]).
    pub fn non_root(&self, namespace: &str) -> Option<&L> {
        self.others
            .get(namespace)
            .filter(|_| namespace != self.root_name)
    }
}

impl Loaded<AuthzPolicy> {
    /// The listing entry for [`super::PolicySet::policies`].
    pub fn info(&self) -> PolicyInfo<'_> {
        PolicyInfo {
            kind: PolicyKind::AuthorizationPolicy,
            namespace: self.policy.id.namespace(),
            name: self.policy.id.name(),
            action: Some(self.policy.action),
            mtls_mode: None,
            file: &self.origin.file,
            line: self.origin.line,
        }
    }
}

impl Loaded<RateLimitPolicy> {
    /// The listing entry for [`super::PolicySet::policies`].
    pub fn info(&self) -> PolicyInfo<'_> {
        PolicyInfo {
            kind: PolicyKind::RateLimitPolicy,
            namespace: self.policy.limit.id.namespace(),
            name: self.policy.limit.id.name(),
            action: None,
            mtls_mode: None,
            file: &self.origin.file,
            line: self.origin.line,
        }
    }
}

impl Loaded<PeerPolicy> {
    /// The listing entry for [`super::PolicySet::policies`].
    pub fn info(&self) -> PolicyInfo<'_> {
        PolicyInfo {
            kind: PolicyKind::PeerAuthentication,
            namespace: self.policy.id.namespace(),
            name: self.policy.id.name(),
            action: None,
            mtls_mode: self.policy.mode,
            file: &self.origin.file,
            line: self.origin.line,
        }
    }
}

/// Groups `AuthorizationPolicy` indices by namespace and action.
pub(super) fn index_authz(
    root: &str,
    policies: &[Loaded<AuthzPolicy>],
) -> ByNamespace<ActionLists> {
    let mut index = ByNamespace::new(root);
    for (i, Loaded { policy, .. }) in policies.iter().enumerate() {
        let lists: &mut ActionLists = index.entry(policy.id.namespace());
        match policy.action {
            Action::Deny => lists.deny.push(i),
            Action::Allow => lists.allow.push(i),
            Action::Audit => lists.audit.push(i),
        }
    }
    index
}

/// Groups `PeerAuthentication` indices by namespace and scope.
pub(super) fn index_peer(root: &str, policies: &[Loaded<PeerPolicy>]) -> ByNamespace<PeerLists> {
    let mut index = ByNamespace::new(root);
    for (i, Loaded { policy, .. }) in policies.iter().enumerate() {
        let lists: &mut PeerLists = index.entry(policy.id.namespace());
        if policy.selector.is_workload() {
            lists.workload.push(i);
        } else {
            lists.namespace_wide.push(i);
        }
    }
    index
}

/// Groups `RateLimitPolicy` indices by namespace.
pub(super) fn index_rate(
    root: &str,
    policies: &[Loaded<RateLimitPolicy>],
) -> ByNamespace<Vec<usize>> {
    let mut index = ByNamespace::<Vec<usize>>::new(root);
    for (i, Loaded { policy, .. }) in policies.iter().enumerate() {
        index.entry(policy.limit.id.namespace()).push(i);
    }
    index
}

/// Groups indices by namespace, given each policy's namespace in order.
pub(super) fn index_namespaces<'a>(
    root: &str,
    namespaces: impl Iterator<Item = &'a str>,
) -> ByNamespace<Vec<usize>> {
    let mut index = ByNamespace::<Vec<usize>>::new(root);
    for (i, namespace) in namespaces.enumerate() {
        index.entry(namespace).push(i);
    }
    index
}

/// `spec.match` as checks.
fn rate_match(file: RateLimitMatchFile, kind: LimitKind) -> Result<Checks, FieldError> {
    let RateLimitMatchFile {
        principals,
        namespaces,
        ports,
        methods,
        paths,
    } = file;
    if kind == LimitKind::Connections {
        refuse_http_field("methods", methods.is_some())?;
        refuse_http_field("paths", paths.is_some())?;
    }
    let mut checks = Vec::new();
    let unwrap = |v: Vec<file::PrincipalPattern>| StrSet(v.into_iter().map(|p| p.0).collect());
    add(&mut checks, principals, false, |v| {
        Test::Principal(unwrap(v))
    });
    let unwrap = |v: Vec<file::NamespacePattern>| StrSet(v.into_iter().map(|p| p.0).collect());
    add(&mut checks, namespaces, false, |v| {
        Test::Namespace(unwrap(v))
    });
    let unwrap = |v: Vec<file::Port>| v.into_iter().map(|p| p.0).collect();
    add(&mut checks, ports, false, |v| {
        Test::DestinationPort(unwrap(v))
    });
    let unwrap = |v: Vec<file::MethodPattern>| StrSet(v.into_iter().map(|p| p.0).collect());
    add(&mut checks, methods, false, |v| Test::Method(unwrap(v)));
    let unwrap = |v: Vec<file::PathPattern>| StrSet(v.into_iter().map(|p| p.0).collect());
    add(&mut checks, paths, false, |v| Test::Path(unwrap(v)));
    if checks.is_empty() {
        let why = "sets no field (an empty list counts as unset); omit `match` to count every call";
        return Err(FieldError::new("", why));
    }
    Ok(Checks(checks.into()))
}

/// A connection limit takes its token before any HTTP is seen, so a
/// `match` on HTTP attributes could never be judged.
fn refuse_http_field(field: &str, given: bool) -> Result<(), FieldError> {
    if given {
        let why = "only allowed with `limit: requests`: a connection has no HTTP method or path";
        return Err(FieldError::new(field, why));
    }
    Ok(())
}

/// Values of a condition are parsed by its key: a port list for
/// `destination.port`, CIDRs for `source.ip`, patterns otherwise.
fn condition_checks(file: ConditionFile) -> Result<Vec<Check>, FieldError> {
    let ConditionFile {
        key,
        values,
        not_values,
    } = file;
    let values = values.unwrap_or_default();
    let not_values = not_values.unwrap_or_default();
    if values.is_empty() && not_values.is_empty() {
        return Err(FieldError::new("", "needs `values` or `notValues`"));
    }
    let mut checks = Vec::new();
    for (list, negate, field) in [(values, false, "values"), (not_values, true, "notValues")] {
        if !list.is_empty() {
            let test = condition_test(&key, list).map_err(|e| e.within(field))?;
            checks.push(Check { negate, test });
        }
    }
    Ok(checks)
}

fn condition_test(key: &ConditionKey, values: Vec<String>) -> Result<Test, FieldError> {
    Ok(match key {
        ConditionKey::Header(name) => {
            Test::Header(name.clone(), StrSet(parse_each(values, Pattern::parse)?))
        }
        ConditionKey::SourceIp => Test::SourceIp(parse_each(values, file::parse_ip_block)?),
        ConditionKey::SourceNamespace => {
            Test::Namespace(StrSet(parse_each(values, file::parse_namespace)?))
        }
        ConditionKey::SourcePrincipal => {
            Test::Principal(StrSet(parse_each(values, file::parse_principal)?))
        }
        ConditionKey::DestinationPort => {
            Test::DestinationPort(parse_each(values, file::parse_port)?)
        }
        ConditionKey::RequestPrincipal => {
            Test::RequestPrincipal(StrSet(parse_each(values, file::parse_request_principal)?))
        }
        ConditionKey::RequestAudiences => {
            Test::RequestAudience(StrSet(parse_each(values, Pattern::parse)?))
        }
        ConditionKey::RequestPresenter => {
            Test::RequestPresenter(StrSet(parse_each(values, Pattern::parse)?))
        }
        ConditionKey::RequestClaim(path) => {
            Test::RequestClaim(path.clone(), StrSet(parse_each(values, Pattern::parse)?))
        }
    })
}

fn parse_each<T>(
    values: Vec<String>,
    parse: fn(&str) -> Result<T, String>,
) -> Result<Box<[T]>, FieldError> {
    let parse_one =
        |(i, v): (usize, String)| parse(&v).map_err(|m| FieldError::new(format!("[{i}]"), m));
    values.into_iter().enumerate().map(parse_one).collect()
}

/// Adds a check for a field unless it is unset; an empty list is unset, as
/// in Istio.
fn add<T>(
    checks: &mut Vec<Check>,
    values: Option<Vec<T>>,
    negate: bool,
    test: impl FnOnce(Vec<T>) -> Test,
) {
    match values {
        Some(values) if !values.is_empty() => checks.push(Check {
            negate,
            test: test(values),
        }),
        _ => {}
    }
}

fn non_empty(checks: Vec<Check>, what: &str) -> Result<Checks, FieldError> {
    if checks.is_empty() {
        let message = "sets no field (an empty list counts as unset); Istio refuses this too";
        return Err(FieldError::new(what, message));
    }
    Ok(Checks(checks.into()))
}

fn convert_all<F, T: TryFrom<F, Error = FieldError>>(
    items: Vec<F>,
    field: &str,
) -> Result<Box<[T]>, FieldError> {
    let convert =
        |(i, item): (usize, F)| T::try_from(item).map_err(|e| e.within(&format!("{field}[{i}]")));
    items.into_iter().enumerate().map(convert).collect()
}

/// Validates `metadata`; names go into `namespace/name` references and logs,
/// so they must be Kubernetes names.
pub(super) fn policy_ref(metadata: MetadataFile) -> Result<PolicyRef, FieldError> {
    let MetadataFile {
        name,
        namespace,
        labels: _,
        annotations: _,
    } = metadata;
    let namespace = namespace.ok_or_else(|| {
        FieldError::new(
            "metadata.namespace",
            "is required: nodeward does not guess a policy's namespace",
        )
    })?;
    check_name("metadata.name", &name, 253, true)?;
    check_name("metadata.namespace", &namespace, 63, false)?;
    Ok(PolicyRef::new(&namespace, &name))
}

/// RFC 1123: lowercase alphanumerics and `-` (and `.` in subdomains),
/// starting and ending alphanumeric.
fn check_name(field: &str, value: &str, max: usize, dots: bool) -> Result<(), FieldError> {
    let char_ok =
        |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || (dots && b == b'.');
    let edge_ok = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let bytes = value.as_bytes();
    let ok = bytes.len() <= max
        && bytes.iter().all(|&b| char_ok(b))
        && edge_ok(bytes.first())
        && edge_ok(bytes.last());
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!("{value:?} is not a valid Kubernetes name"),
        ))
    }
}
