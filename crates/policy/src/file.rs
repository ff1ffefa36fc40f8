//! The policy files as written: Istio's `security.istio.io` resources and
//! nodeward's own `RateLimitPolicy`.
//!
//! Every struct rejects unknown fields. Scalars that carry meaning (ports,
//! CIDRs, match patterns, condition keys, actions, modes) are parsed while
//! decoding, so an error points at the offending line. Rules that span
//! several fields live in `model`, which turns these into domain types.

use std::{collections::BTreeMap, fmt, net::IpAddr, num::NonZeroU32, time::Duration};

use http::HeaderName;
use ipnet::{IpNet, Ipv4Net};
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use serde::{
    de::{self, IgnoredAny, MapAccess, Visitor},
    Deserialize, Deserializer,
};

use super::{
    host::normalize_host, path, pattern::Pattern, LimitKind, LimitMode, LimitPer, TokenBucket,
};

/// The API versions nodeward reads (both describe the same schema).
pub(super) const API_VERSIONS: [&str; 2] = ["security.istio.io/v1", "security.istio.io/v1beta1"];

/// The API version of nodeward's own resources (`RateLimitPolicy`).
pub(super) const NODEWARD_API_VERSION: &str = "nodeward.io/v1alpha1";

/// Just enough of a document to choose its format and name it in errors.
#[derive(Debug, Deserialize)]
#[serde(
    rename_all = "camelCase",
    expecting = "a resource (a mapping with apiVersion and kind)"
)]
pub(super) struct Header {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    pub metadata: Option<HeaderMetadata>,
}

#[derive(Debug, Deserialize)]
pub(super) struct HeaderMetadata {
    pub name: Option<String>,
    pub namespace: Option<String>,
}

/// `kind: AuthorizationPolicy`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct AuthorizationPolicyFile {
    #[expect(
        dead_code,
        reason = "required by the schema; already checked from the header"
    )]
    pub api_version: String,
    #[expect(
        dead_code,
        reason = "required by the schema; already checked from the header"
    )]
    pub kind: String,
    pub metadata: MetadataFile,
    /// Absent or empty: ALLOW with no rules, Istio's "allow nothing".
    pub spec: Option<AuthorizationPolicySpecFile>,
}

/// `metadata`: only what a policy needs; `labels` and `annotations` are
/// accepted and ignored, anything else is refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct MetadataFile {
    pub name: String,
    /// Required (checked in `model`): we refuse to guess.
    pub namespace: Option<String>,
    #[expect(
        dead_code,
        reason = "accepted so real manifests load; policy ignores them"
    )]
    pub labels: Option<IgnoredAny>,
    #[expect(
        dead_code,
        reason = "accepted so real manifests load; policy ignores them"
    )]
    pub annotations: Option<IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct AuthorizationPolicySpecFile {
    pub selector: Option<WorkloadSelectorFile>,
    pub action: Option<ActionFile>,
    pub rules: Option<Vec<RuleFile>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct WorkloadSelectorFile {
    pub match_labels: Option<Labels>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RuleFile {
    pub from: Option<Vec<FromFile>>,
    pub to: Option<Vec<ToFile>>,
    pub when: Option<Vec<ConditionFile>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct FromFile {
    pub source: Option<SourceFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct ToFile {
    pub operation: Option<OperationFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct SourceFile {
    pub principals: Option<Vec<PrincipalPattern>>,
    pub not_principals: Option<Vec<PrincipalPattern>>,
    pub request_principals: Option<Vec<RequestPrincipalPattern>>,
    pub not_request_principals: Option<Vec<RequestPrincipalPattern>>,
    pub namespaces: Option<Vec<NamespacePattern>>,
    pub not_namespaces: Option<Vec<NamespacePattern>>,
    pub ip_blocks: Option<Vec<IpBlock>>,
    pub not_ip_blocks: Option<Vec<IpBlock>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct OperationFile {
    pub hosts: Option<Vec<HostPattern>>,
    pub not_hosts: Option<Vec<HostPattern>>,
    pub ports: Option<Vec<Port>>,
    pub not_ports: Option<Vec<Port>>,
    pub methods: Option<Vec<MethodPattern>>,
    pub not_methods: Option<Vec<MethodPattern>>,
    pub paths: Option<Vec<PathPattern>>,
    pub not_paths: Option<Vec<PathPattern>>,
}

/// One `when` condition. Values are parsed in `model`, by key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct ConditionFile {
    pub key: ConditionKey,
    pub values: Option<Vec<String>>,
    pub not_values: Option<Vec<String>>,
}

/// `kind: PeerAuthentication`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct PeerAuthenticationFile {
    #[expect(
        dead_code,
        reason = "required by the schema; already checked from the header"
    )]
    pub api_version: String,
    #[expect(
        dead_code,
        reason = "required by the schema; already checked from the header"
    )]
    pub kind: String,
    pub metadata: MetadataFile,
    pub spec: Option<PeerAuthenticationSpecFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct PeerAuthenticationSpecFile {
    pub selector: Option<WorkloadSelectorFile>,
    pub mtls: Option<PeerMtlsFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct PeerMtlsFile {
    pub mode: Option<MtlsModeFile>,
}

/// `kind: RequestAuthentication`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RequestAuthenticationFile {
    #[expect(
        dead_code,
        reason = "required by the schema; already checked from the header"
    )]
    pub api_version: String,
    #[expect(
        dead_code,
        reason = "required by the schema; already checked from the header"
    )]
    pub kind: String,
    pub metadata: MetadataFile,
    pub spec: Option<RequestAuthenticationSpecFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RequestAuthenticationSpecFile {
    pub selector: Option<WorkloadSelectorFile>,
    pub jwt_rules: Option<Vec<JwtRuleFile>>,
}

/// One `jwtRules` entry. Required fields are options so `jwt::rule` can
/// name them in its own words.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct JwtRuleFile {
    pub issuer: Option<String>,
    pub audiences: Option<Vec<String>>,
    pub jwks: Option<InlineJwks>,
    pub jwks_uri: Option<JwksUri>,
    pub from_headers: Option<Vec<JwtHeaderFile>>,
    pub from_params: Option<Vec<String>>,
    pub forward_original_token: Option<bool>,
    pub output_claim_to_headers: Option<Vec<ClaimToHeaderFile>>,
}

/// `fromHeaders` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct JwtHeaderFile {
    pub name: TokenHeaderName,
    pub prefix: Option<String>,
}

/// `outputClaimToHeaders` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct ClaimToHeaderFile {
    pub header: ClaimHeaderName,
    pub claim: ClaimPath,
}

/// `kind: RateLimitPolicy`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RateLimitPolicyFile {
    #[expect(
        dead_code,
        reason = "required by the schema; already checked from the header"
    )]
    pub api_version: String,
    #[expect(
        dead_code,
        reason = "required by the schema; already checked from the header"
    )]
    pub kind: String,
    pub metadata: MetadataFile,
    /// Required (checked in `model`): a limit needs numbers.
    pub spec: Option<RateLimitSpecFile>,
}

/// Required fields are options here so that `model` can name them in its
/// own words.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RateLimitSpecFile {
    pub selector: Option<WorkloadSelectorFile>,
    #[serde(rename = "match")]
    pub matches: Option<RateLimitMatchFile>,
    pub limit: Option<LimitKind>,
    pub bucket: Option<BucketFile>,
    pub per: Option<LimitPer>,
    pub mode: Option<LimitMode>,
}

/// `spec.match`: every field given must match (AND), any value of a field
/// (OR), as in an Istio `source`/`operation`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RateLimitMatchFile {
    pub principals: Option<Vec<PrincipalPattern>>,
    pub namespaces: Option<Vec<NamespacePattern>>,
    pub ports: Option<Vec<Port>>,
    pub methods: Option<Vec<MethodPattern>>,
    pub paths: Option<Vec<PathPattern>>,
}

/// `spec.bucket`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct BucketFile {
    pub max_tokens: Option<TokenCount>,
    pub tokens_per_fill: Option<TokenCount>,
    pub fill_interval: Option<FillInterval>,
}

/// A token count: a whole number from 1, written as a YAML integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TokenCount(pub NonZeroU32);

/// `spec.action`; `CUSTOM` is refused while decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ActionFile {
    Allow,
    Deny,
    Audit,
}

/// `spec.mtls.mode`; `DISABLE` is refused while decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MtlsModeFile {
    Strict,
    Permissive,
    Unset,
}

/// A `when` key nodeward can enforce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ConditionKey {
    /// `request.headers[<name>]`.
    Header(HeaderName),
    SourceIp,
    SourceNamespace,
    SourcePrincipal,
    DestinationPort,
    /// `request.auth.principal`: `<iss>/<sub>`.
    RequestPrincipal,
    /// `request.auth.audiences`.
    RequestAudiences,
    /// `request.auth.presenter` (`azp`).
    RequestPresenter,
    /// `request.auth.claims[a][b]...`: the path of object keys.
    RequestClaim(Box<[String]>),
}

/// A host pattern and the port it requires, if it names one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct HostMatch {
    /// Lowercase, without a trailing dot.
    pub host: Pattern,
    pub port: Option<u16>,
}

/// `matchLabels`; a repeated key is an error rather than last-one-wins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Labels(pub BTreeMap<String, String>);

/// A port, written `8080` or `"8080"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Port(pub u16);

/// Declares a newtype decoded from a YAML string by `$parse`, so a bad value
/// is reported at its own line.
macro_rules! parsed_str {
    ($(#[$doc:meta])* $name:ident($inner:ty), $expecting:literal, $parse:path) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub(super) struct $name(pub $inner);

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_str(StrVisitor($expecting, $parse)).map($name)
            }
        }
    };
}

parsed_str!(
    /// `principals` entry: a SPIFFE ID without `spiffe://`.
    PrincipalPattern(Pattern), "a principal like cluster.local/ns/<ns>/sa/<sa>", parse_principal
);
parsed_str!(
    /// `requestPrincipals` entry: `<iss>/<sub>` or a pattern of one.
    RequestPrincipalPattern(Pattern), "a request principal like <issuer>/<subject>", parse_request_principal
);
parsed_str!(
    /// `jwks`: an inline JSON Web Key Set, checked while decoding.
    InlineJwks(std::sync::Arc<JwkSet>), "a JSON Web Key Set (JSON text)", parse_jwks
);
parsed_str!(
    /// `jwksUri`: https, or http to a loopback address.
    JwksUri(String), "an https URL", parse_jwks_uri
);
parsed_str!(
    /// `fromHeaders[].name`.
    TokenHeaderName(HeaderName), "a header name", parse_header_name
);
parsed_str!(
    /// `outputClaimToHeaders[].header`: a header the proxy may set.
    ClaimHeaderName(HeaderName), "a header name", parse_claim_header
);
parsed_str!(
    /// `outputClaimToHeaders[].claim`: `name`, or `a.b` for nested claims.
    ClaimPath(Box<[String]>), "a claim name", parse_claim_path
);
parsed_str!(
    /// `namespaces` entry.
    NamespacePattern(Pattern), "a namespace", parse_namespace
);
parsed_str!(
    /// `methods` entry.
    MethodPattern(Pattern), "an HTTP method", parse_method
);
parsed_str!(
    /// `paths` entry, in normal form.
    PathPattern(Pattern), "a path", parse_path
);
parsed_str!(
    /// `hosts` entry.
    HostPattern(HostMatch), "a host", parse_host
);
parsed_str!(
    /// `ipBlocks` entry: a CIDR or a single address.
    IpBlock(IpNet), "a CIDR or IP address", parse_ip_block
);
parsed_str!(
    /// `fillInterval`: `<n>ms`, `<n>s` or `<n>m`, within the bucket limits.
    FillInterval(Duration), "a duration like 500ms, 1s or 1m", parse_fill_interval
);

/// Principals are workload SPIFFE IDs without the scheme,
/// `<trust-domain>/ns/<namespace>/sa/<service-account>` (callers carry no
/// other kind), or an Istio pattern of one. Anything else would never
/// match, which in a DENY policy is a silent hole.
///
/// A trust domain other than the mesh's cannot match either, but the mesh's
/// is not known here.
pub(super) fn parse_principal(s: &str) -> Result<Pattern, String> {
    let pattern = Pattern::parse(s)?;
    if pattern.text().contains("spiffe://") {
        return Err(format!("{s:?}: write principals without `spiffe://`"));
    }
    let segments: Vec<&str> = pattern.text().split('/').collect();
    let fits = match &pattern {
        Pattern::Presence => true,
        Pattern::Exact(_) => principal_fits(&segments, false),
        Pattern::Prefix(_) => principal_fits(&segments, true),
        Pattern::Suffix(_) => principal_fits_from_end(&segments),
    };
    if !fits {
        return Err(format!(
            "{s:?} is not a principal: expected \
             <trust-domain>/ns/<namespace>/sa/<service-account> (lowercase), \
             or a `prefix*`/`*suffix` of one"
        ));
    }
    Ok(pattern)
}

/// The segments of a workload principal, in order.
#[derive(Clone, Copy)]
enum PrincipalPart {
    TrustDomain,
    Literal(&'static str),
    /// A namespace or service account: a Kubernetes name, as the workloads
    /// file admits them.
    Name,
}

/// How much of a principal's segment a piece of a pattern holds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Span {
    Whole,
    /// Its start: the piece before the `*` of `prefix*`.
    Start,
    /// Its end: the piece after the `*` of `*suffix`.
    End,
}

const PRINCIPAL_PARTS: [PrincipalPart; 5] = [
    PrincipalPart::TrustDomain,
    PrincipalPart::Literal("ns"),
    PrincipalPart::Name,
    PrincipalPart::Literal("sa"),
    PrincipalPart::Name,
];

impl PrincipalPart {
    /// Whether `piece` can be `span` of a valid segment of this part.
    fn fits(self, piece: &str, span: Span) -> bool {
        let chars = |ok: fn(u8) -> bool| piece.bytes().all(ok);
        let non_empty = span != Span::Whole || !piece.is_empty();
        match (self, span) {
            (Self::Literal(lit), Span::Whole) => piece == lit,
            (Self::Literal(lit), Span::Start) => lit.starts_with(piece),
            (Self::Literal(lit), Span::End) => lit.ends_with(piece),
            (Self::TrustDomain, _) => non_empty && chars(is_trust_domain_byte),
            (Self::Name, _) => {
                let dots = span == Span::Whole && matches!(piece, "." | "..");
                non_empty && !dots && chars(is_name_byte)
            }
        }
    }
}

/// `segments` (never empty) from the start of a principal; with `prefix`,
/// the last may stop short (a `prefix*` pattern).
fn principal_fits(segments: &[&str], prefix: bool) -> bool {
    let last = segments.len() - 1;
    let count_ok = segments.len() == PRINCIPAL_PARTS.len()
        || (prefix && segments.len() < PRINCIPAL_PARTS.len());
    let fits = |(i, (piece, part)): (usize, (&&str, PrincipalPart))| {
        let span = if prefix && i == last {
            Span::Start
        } else {
            Span::Whole
        };
        part.fits(piece, span)
    };
    count_ok && segments.iter().zip(PRINCIPAL_PARTS).enumerate().all(fits)
}

/// `segments` (never empty) of a `*suffix` pattern, matched from the end of
/// a principal: the first may start late.
fn principal_fits_from_end(segments: &[&str]) -> bool {
    let first = segments.len() - 1;
    let fits = |(i, (piece, part)): (usize, (&&str, PrincipalPart))| {
        let span = if i == first { Span::End } else { Span::Whole };
        part.fits(piece, span)
    };
    let parts = PRINCIPAL_PARTS.into_iter().rev();
    segments.len() <= PRINCIPAL_PARTS.len()
        && segments.iter().rev().zip(parts).enumerate().all(fits)
}

fn is_trust_domain_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-')
}

/// Request principals are `<iss>/<sub>`: an exact one without a `/` could
/// never match.
pub(super) fn parse_request_principal(s: &str) -> Result<Pattern, String> {
    let pattern = Pattern::parse(s)?;
    if matches!(pattern, Pattern::Exact(_)) && !s.contains('/') {
        return Err(format!(
            "{s:?} is not a request principal: expected <issuer>/<subject>"
        ));
    }
    Ok(pattern)
}

/// Parses the key set and refuses symmetric (`oct`) keys: nodeward accepts
/// only asymmetric signatures, and a shared secret in a policy file is a
/// secret in a ConfigMap.
fn parse_jwks(s: &str) -> Result<std::sync::Arc<JwkSet>, String> {
    let set: JwkSet =
        serde_json::from_str(s).map_err(|e| format!("jwks is not a JSON Web Key Set: {e}"))?;
    if set.keys.is_empty() {
        return Err("jwks has no keys".to_owned());
    }
    for (i, key) in set.keys.iter().enumerate() {
        if matches!(key.algorithm, AlgorithmParameters::OctetKey(_)) {
            return Err(format!(
                "jwks key {i} is a symmetric (oct) key; only RSA, EC and OKP keys are accepted"
            ));
        }
    }
    Ok(std::sync::Arc::new(set))
}

/// Keys fetched in the clear could be swapped on the way; plain http is
/// allowed only to the node itself (a local key server, tests).
fn parse_jwks_uri(s: &str) -> Result<String, String> {
    let uri: http::Uri = s.parse().map_err(|_| format!("{s:?} is not a URL"))?;
    let host = uri.host().unwrap_or("");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match uri.scheme_str() {
        Some("https") if !host.is_empty() => Ok(s.to_owned()),
        Some("http") if is_loopback(host) => Ok(s.to_owned()),
        Some("http") => Err(format!(
            "{s:?}: jwksUri must be https (plain http only to a loopback address)"
        )),
        _ => Err(format!("{s:?} is not an https URL")),
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn parse_header_name(s: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(s.as_bytes()).map_err(|_| format!("{s:?} is not a valid header name"))
}

/// Headers that frame or route the request, say who forwarded it, or carry
/// the caller's credentials, are not the proxy's to set from a claim.
const RESERVED_CLAIM_HEADERS: [&str; 17] = [
    "host",
    "content-length",
    "content-type",
    "content-encoding",
    "transfer-encoding",
    "connection",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "keep-alive",
    "authorization",
    "proxy-authorization",
    "cookie",
    "forwarded",
    "traceparent",
];

fn parse_claim_header(s: &str) -> Result<HeaderName, String> {
    let name = parse_header_name(s)?;
    let forwarding = name.as_str().starts_with("x-forwarded-");
    if forwarding || RESERVED_CLAIM_HEADERS.contains(&name.as_str()) {
        return Err(format!("{s:?} cannot be set from a claim"));
    }
    Ok(name)
}

/// `a.b.c` → `[a, b, c]` (Istio's nested claim syntax here).
fn parse_claim_path(s: &str) -> Result<Box<[String]>, String> {
    let parts: Vec<String> = s.split('.').map(str::to_owned).collect();
    if parts.iter().any(String::is_empty) {
        return Err(format!("{s:?} is not a claim name"));
    }
    Ok(parts.into())
}

pub(super) fn parse_namespace(s: &str) -> Result<Pattern, String> {
    let pattern = Pattern::parse(s)?;
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    check_chars(s, &pattern, ok, "a namespace")?;
    Ok(pattern)
}

fn parse_method(s: &str) -> Result<Pattern, String> {
    let pattern = Pattern::parse(s)?;
    let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'+-.^_`|~".contains(c);
    check_chars(s, &pattern, tchar, "an HTTP method")?;
    Ok(pattern)
}

/// Paths must be in the normal form requests are matched in, else the rule
/// could never match.
fn parse_path(s: &str) -> Result<Pattern, String> {
    if s.contains("{*}") || s.contains("{**}") {
        return Err(format!(
            "{s:?}: path templates ({{*}}, {{**}}) are not supported"
        ));
    }
    let pattern = Pattern::parse(s)?;
    path::check_pattern(&pattern).map_err(|why| format!("{s:?}: {why}"))?;
    Ok(pattern)
}

/// Hosts match case-insensitively, without a trailing dot; a `:port`
/// suffix makes the port part of the match. An exact host is kept in the
/// normal form requests are matched in ([`normalize_host`]), and one that
/// has none is an error: it could never match.
fn parse_host(s: &str) -> Result<HostMatch, String> {
    let bad =
        |c: char| c.is_ascii_whitespace() || c.is_ascii_control() || c == '/' || !c.is_ascii();
    if s.contains(bad) {
        return Err(format!("{s:?} is not a valid host"));
    }
    let (host, port) = match split_port(s) {
        Some((host, port)) => {
            let port = parse_port(port).map_err(|why| format!("{s:?}: {why}"))?;
            (host, Some(port))
        }
        None => (s, None),
    };
    let lower = host.to_ascii_lowercase();
    let host = match Pattern::parse(lower.strip_suffix('.').unwrap_or(&lower))? {
        Pattern::Exact(_) => Pattern::Exact(
            normalize_host(host)
                .map_err(|why| format!("{s:?}: {why}, so it would never match"))?
                .name,
        ),
        wildcard => wildcard,
    };
    Ok(HostMatch { host, port })
}

/// A single address becomes a /32 (/128); host bits are cleared as Istio
/// does; IPv4-mapped IPv6 blocks become IPv4, like source addresses.
pub(super) fn parse_ip_block(s: &str) -> Result<IpNet, String> {
    let net = match (s.parse::<IpNet>(), s.parse::<IpAddr>()) {
        (Ok(net), _) => net,
        (_, Ok(ip)) => IpNet::from(ip),
        _ => return Err(format!("{s:?} is not a CIDR or IP address")),
    };
    Ok(unmap_v4(net).trunc())
}

/// `1` to `65535`, digits only.
pub(super) fn parse_port(s: &str) -> Result<u16, String> {
    let digits = !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit());
    match s.parse::<u16>() {
        Ok(port) if digits && port != 0 => Ok(port),
        _ => Err(format!("{s:?} is not a port between 1 and 65535")),
    }
}

/// `host:port` → `(host, port)` when the text ends in a port; a colon
/// inside `[...]` is an IPv6 address, not a port.
fn split_port(s: &str) -> Option<(&str, &str)> {
    let (host, port) = s.rsplit_once(':')?;
    let bracketed = host.starts_with('[') && host.ends_with(']');
    (bracketed || !host.contains(':')).then_some((host, port))
}

/// Checked here rather than in `model` so the error points at its line.
fn parse_fill_interval(s: &str) -> Result<Duration, String> {
    let interval = parse_duration(s)?;
    if interval < TokenBucket::MIN_FILL_INTERVAL {
        return Err(format!("{s:?} is shorter than the minimum of 50ms"));
    }
    if interval > TokenBucket::MAX_FILL_INTERVAL {
        return Err(format!("{s:?} is longer than the maximum of 24h"));
    }
    Ok(interval)
}

/// A whole number and a unit (`ms`, `s`, `m`), nothing else: no signs,
/// fractions or spaces, so there is one way to read every value.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad =
        || format!("{s:?} is not a duration; write a whole number and ms, s or m (500ms, 1s, 2m)");
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().map_err(|_| bad())?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs).ok_or_else(bad),
        _ => Err(bad()),
    }
}

fn unmap_v4(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, IpNet::V4),
            None => net,
        },
        _ => net,
    }
}

fn check_chars(
    s: &str,
    pattern: &Pattern,
    ok: impl Fn(char) -> bool,
    what: &str,
) -> Result<(), String> {
    if pattern.text().chars().all(ok) {
        Ok(())
    } else {
        Err(format!("{s:?} is not {what}"))
    }
}

fn parse_action(s: &str) -> Result<ActionFile, String> {
    match s {
        "ALLOW" => Ok(ActionFile::Allow),
        "DENY" => Ok(ActionFile::Deny),
        "AUDIT" => Ok(ActionFile::Audit),
        "CUSTOM" => Err("action CUSTOM (external authorization) is not supported".to_owned()),
        _ => Err(format!(
            "unknown action {s:?}; expected ALLOW, DENY or AUDIT"
        )),
    }
}

fn parse_mtls_mode(s: &str) -> Result<MtlsModeFile, String> {
    match s {
        "STRICT" => Ok(MtlsModeFile::Strict),
        "PERMISSIVE" => Ok(MtlsModeFile::Permissive),
        "UNSET" => Ok(MtlsModeFile::Unset),
        "DISABLE" => {
            Err("mode DISABLE is not supported: nodeward never turns mutual TLS off".to_owned())
        }
        _ => Err(format!(
            "unknown mode {s:?}; expected STRICT, PERMISSIVE or UNSET"
        )),
    }
}

/// Any key we cannot enforce is an error: ignoring a condition widens an
/// ALLOW rule and narrows a DENY rule.
fn parse_condition_key(s: &str) -> Result<ConditionKey, String> {
    match s {
        "source.ip" => return Ok(ConditionKey::SourceIp),
        "source.namespace" => return Ok(ConditionKey::SourceNamespace),
        "source.principal" => return Ok(ConditionKey::SourcePrincipal),
        "destination.port" => return Ok(ConditionKey::DestinationPort),
        "request.auth.principal" => return Ok(ConditionKey::RequestPrincipal),
        "request.auth.audiences" => return Ok(ConditionKey::RequestAudiences),
        "request.auth.presenter" => return Ok(ConditionKey::RequestPresenter),
        _ => {}
    }
    if let Some(path) = s.strip_prefix("request.auth.claims") {
        return parse_claim_key(s, path).map(ConditionKey::RequestClaim);
    }
    let Some(name) = s
        .strip_prefix("request.headers[")
        .and_then(|r| r.strip_suffix(']'))
    else {
        return Err(format!(
            "condition key {s:?} is not supported by nodeward; \
             refusing the policy rather than ignoring the condition"
        ));
    };
    let name = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("{name:?} is not a valid header name"))?;
    if name == http::header::HOST {
        return Err(format!(
            "{s:?} never sees the host of HTTP/2 or absolute-form requests \
             (it is `:authority` or the request target there); \
             use `to.operation.hosts` instead"
        ));
    }
    Ok(ConditionKey::Header(name))
}

/// `[a][b]...` after `request.auth.claims`: one or more non-empty names.
fn parse_claim_key(key: &str, mut rest: &str) -> Result<Box<[String]>, String> {
    let bad = || format!("{key:?}: expected request.auth.claims[<name>], nested as [a][b]");
    let mut path = Vec::new();
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[').ok_or_else(bad)?;
        let (name, after) = inner.split_once(']').ok_or_else(bad)?;
        if name.is_empty() || name.contains('[') {
            return Err(bad());
        }
        path.push(name.to_owned());
        rest = after;
    }
    if path.is_empty() {
        return Err(bad());
    }
    Ok(path.into())
}

impl<'de> Deserialize<'de> for ActionFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(StrVisitor("ALLOW, DENY or AUDIT", parse_action))
    }
}

impl<'de> Deserialize<'de> for MtlsModeFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(StrVisitor("STRICT, PERMISSIVE or UNSET", parse_mtls_mode))
    }
}

impl<'de> Deserialize<'de> for ConditionKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(StrVisitor("a condition key", parse_condition_key))
    }
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(PortVisitor).map(Port)
    }
}

impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(LabelsVisitor)
    }
}

/// Calls a parse function on a string scalar, inside the deserializer so
/// the error carries the scalar's position.
struct StrVisitor<T>(&'static str, fn(&str) -> Result<T, String>);

impl<T> Visitor<'_> for StrVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.1)(v).map_err(E::custom)
    }
}

struct PortVisitor;

impl Visitor<'_> for PortVisitor {
    type Value = u16;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a port between 1 and 65535")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u16, E> {
        match u16::try_from(v) {
            Ok(port) if port != 0 => Ok(port),
            _ => Err(E::custom(format!("{v} is not a port between 1 and 65535"))),
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u16, E> {
        u64::try_from(v).map_or_else(
            |_| Err(E::custom(format!("{v} is not a port between 1 and 65535"))),
            |v| self.visit_u64(v),
        )
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<u16, E> {
        parse_port(v).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for TokenCount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TokenCountVisitor).map(TokenCount)
    }
}

struct TokenCountVisitor;

impl Visitor<'_> for TokenCountVisitor {
    type Value = NonZeroU32;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a whole number from 1 to 4294967295")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<NonZeroU32, E> {
        u32::try_from(v)
            .ok()
            .and_then(NonZeroU32::new)
            .ok_or_else(|| E::custom(format!("{v} is not a whole number from 1 to 4294967295")))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<NonZeroU32, E> {
        u64::try_from(v).map_or_else(
            |_| {
                Err(E::custom(format!(
                    "{v} is not a whole number from 1 to 4294967295"
                )))
            },
            |v| self.visit_u64(v),
        )
    }
}

struct LabelsVisitor;

impl<'de> Visitor<'de> for LabelsVisitor {
    type Value = Labels;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map of label names to values")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Labels, A::Error> {
        let mut labels = BTreeMap::new();
        while let Some((key, value)) = map.next_entry::<String, String>()? {
            if labels.contains_key(&key) {
                return Err(de::Error::custom(format!("label {key:?} is given twice")));
            }
            labels.insert(key, value);
        }
        Ok(Labels(labels))
    }
}
