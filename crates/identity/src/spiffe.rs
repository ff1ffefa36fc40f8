//! SPIFFE IDs, parsed strictly as the SPIFFE ID standard requires.
//!
//! Strictness matters because the ID in a peer's certificate is what policy
//! matches on: any leniency here (case folding, percent-decoding, empty
//! segments) becomes a way to look like someone else.

use std::fmt;

use thiserror::Error;

/// Trust domain used when none is configured (the Kubernetes default).
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

const SCHEME: &str = "spiffe://";
const MAX_ID_LEN: usize = 2048;
const MAX_TRUST_DOMAIN_LEN: usize = 255;
const MAX_NODE_NAME_LEN: usize = 253;
const NODE_PREFIX: &str = "/nodeward/node/";

/// A validated SPIFFE ID naming a workload (never a bare trust domain).
///
/// Stored as the full URI so `Display` and comparisons are cheap; `td_end`
/// marks where the trust domain stops and the path begins.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    uri: String,
    td_end: usize,
}

/// Why a string is not a valid SPIFFE ID, trust domain or node name.
///
/// Offending characters are printed with `{:?}` so a hostile value cannot
/// inject control characters into logs.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SpiffeIdError {
    #[error("SPIFFE ID is {0} bytes long, the limit is 2048")]
    TooLong(usize),
    #[error("SPIFFE ID must start with \"spiffe://\"")]
    Scheme,
    #[error("trust domain is empty")]
    EmptyTrustDomain,
    #[error("trust domain is {0} bytes long, the limit is 255")]
    TrustDomainTooLong(usize),
    #[error("trust domain contains {0:?}; only a-z, 0-9, '.', '-' and '_' are allowed")]
    TrustDomainChar(char),
    #[error("SPIFFE ID has no path; a bare trust domain does not name a workload")]
    NoPath,
    #[error("SPIFFE ID path has an empty segment")]
    EmptySegment,
    #[error("SPIFFE ID path has a '.' or '..' segment")]
    DotSegment,
    #[error("SPIFFE ID path contains {0:?}; only a-z, A-Z, 0-9, '.', '-' and '_' are allowed")]
    PathChar(char),
    #[error("SPIFFE ID must not have a query ('?')")]
    Query,
    #[error("SPIFFE ID must not have a fragment ('#')")]
    Fragment,
    #[error("SPIFFE ID must not have userinfo ('@')")]
    Userinfo,
    #[error("SPIFFE ID must not have a port (':')")]
    Port,
    #[error("SPIFFE ID must not be percent-encoded ('%')")]
    PercentEncoded,
    #[error("{0:?} is not a valid node name (lowercase DNS subdomain)")]
    NodeName(String),
}

impl SpiffeId {
    /// Parses `s`, enforcing every rule of the SPIFFE ID standard.
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        if s.len() > MAX_ID_LEN {
            return Err(SpiffeIdError::TooLong(s.len()));
        }
        let rest = s.strip_prefix(SCHEME).ok_or(SpiffeIdError::Scheme)?;
        check_reserved(rest)?;
        let (td, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        validate_trust_domain(td)?;
        validate_path(path)?;
        Ok(Self {
            uri: s.to_owned(),
            td_end: SCHEME.len() + td.len(),
        })
    }

    /// The ID of a Kubernetes service account: `spiffe://<td>/ns/<ns>/sa/<sa>`.
    pub fn workload(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        validate_segment(namespace)?;
        validate_segment(service_account)?;
        Self::parse(&format!(
            "{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}"
        ))
    }

    /// The ID carried by a node's intermediate CA:
    /// `spiffe://<td>/nodeward/node/<node>`.
    pub fn node(trust_domain: &str, node_name: &str) -> Result<Self, SpiffeIdError> {
        validate_node_name(node_name)?;
        Self::parse(&format!("{SCHEME}{trust_domain}{NODE_PREFIX}{node_name}"))
    }

    /// The trust domain, e.g. `cluster.local`.
    pub fn trust_domain(&self) -> &str {
        &self.uri[SCHEME.len()..self.td_end]
    }

    /// The path, always starting with `/`.
    pub fn path(&self) -> &str {
        &self.uri[self.td_end..]
    }

    /// The full URI, e.g. `spiffe://cluster.local/ns/default/sa/web`.
    pub fn as_str(&self) -> &str {
        &self.uri
    }

    /// `(namespace, service account)` if the path is exactly `/ns/<ns>/sa/<sa>`.
    pub fn namespace_and_sa(&self) -> Option<(&str, &str)> {
        let mut segments = self.path().strip_prefix('/')?.split('/');
        match (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }

    /// The node name if this is a node CA's ID (`/nodeward/node/<node>`).
    pub fn node_name(&self) -> Option<&str> {
        let name = self.path().strip_prefix(NODE_PREFIX)?;
        validate_node_name(name).ok().map(|()| name)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({:?})", self.uri)
    }
}

/// Checks a trust domain: non-empty, at most 255 bytes, only `[a-z0-9._-]`.
///
/// Uppercase is rejected rather than folded: two spellings of one trust
/// domain would make bundle selection and policy matching disagree.
pub fn validate_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    if td.is_empty() {
        return Err(SpiffeIdError::EmptyTrustDomain);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong(td.len()));
    }
    check_reserved(td)?;
    match td.chars().find(|c| !is_trust_domain_char(*c)) {
        Some(c) => Err(SpiffeIdError::TrustDomainChar(c)),
        None => Ok(()),
    }
}

/// The trust domain named by a CA's URI SAN `spiffe://<td>` (no path).
pub fn trust_domain_from_uri(uri: &str) -> Result<&str, SpiffeIdError> {
    let td = uri.strip_prefix(SCHEME).ok_or(SpiffeIdError::Scheme)?;
    validate_trust_domain(td)?;
    Ok(td)
}

/// The URI SAN a root CA carries for its trust domain: `spiffe://<td>`.
pub fn trust_domain_uri(td: &str) -> Result<String, SpiffeIdError> {
    validate_trust_domain(td)?;
    Ok(format!("{SCHEME}{td}"))
}

/// Checks a Kubernetes node name: a lowercase RFC 1123 DNS subdomain.
pub fn validate_node_name(name: &str) -> Result<(), SpiffeIdError> {
    let bad = || SpiffeIdError::NodeName(name.to_owned());
    if name.is_empty() || name.len() > MAX_NODE_NAME_LEN {
        return Err(bad());
    }
    if name.split('.').all(is_dns_label) {
        Ok(())
    } else {
        Err(bad())
    }
}

/// Gives URI delimiters their own errors: they signal someone trying URI
/// tricks, which deserves a clearer message than "bad character".
fn check_reserved(s: &str) -> Result<(), SpiffeIdError> {
    for c in s.chars() {
        match c {
            '?' => return Err(SpiffeIdError::Query),
            '#' => return Err(SpiffeIdError::Fragment),
            '@' => return Err(SpiffeIdError::Userinfo),
            ':' => return Err(SpiffeIdError::Port),
            '%' => return Err(SpiffeIdError::PercentEncoded),
            _ => {}
        }
    }
    Ok(())
}

fn validate_path(path: &str) -> Result<(), SpiffeIdError> {
    let segments = path.strip_prefix('/').ok_or(SpiffeIdError::NoPath)?;
    segments.split('/').try_for_each(validate_segment)
}

fn validate_segment(segment: &str) -> Result<(), SpiffeIdError> {
    match segment {
        "" => Err(SpiffeIdError::EmptySegment),
        "." | ".." => Err(SpiffeIdError::DotSegment),
        _ => match segment.chars().find(|c| !is_path_char(*c)) {
            Some(c) => Err(SpiffeIdError::PathChar(c)),
            None => Ok(()),
        },
    }
}

fn is_trust_domain_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

fn is_dns_label(label: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    label.starts_with(alnum)
        && label.ends_with(alnum)
        && label.chars().all(|c| alnum(c) || c == '-')
}
