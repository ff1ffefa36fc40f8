//! `nodeward policy check|explain`: policy tooling for CI/CD pipelines.
//!
//! `explain` runs the same evaluation the proxy runs, so what a pipeline
//! tests is what the mesh enforces. It is handed a resolved caller and
//! callee: the binary validates the SPIFFE ID and looks a workload up in a
//! workloads file, so this crate needs neither identity nor workloads.

use std::{collections::BTreeMap, net::IpAddr, path::Path, time::SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::{
    self as policy, jwt, Decision, DefaultPolicy, L4Decision, PolicySet, RateLimitInfo, Settings,
};

/// Why `check` or `explain` could not give an answer (exit 1).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ToolError {
    /// The policy directory is unreadable or holds invalid policies; one
    /// `file:line: message` per line.
    #[error("{0}")]
    Policies(String),
    /// An argument is malformed or inconsistent.
    #[error("{0}")]
    Argument(String),
}

/// Who calls whom, and how, for `explain`.
pub struct ExplainArgs {
    /// The caller's SPIFFE ID, already validated; `None` for an
    /// unauthenticated caller.
    pub principal: Option<String>,
    pub source_ip: Option<IpAddr>,
    pub to: Callee,
    pub method: Option<String>,
    pub path: Option<String>,
    pub host: Option<String>,
    /// `K=V` pairs.
    pub headers: Vec<String>,
}

/// Which workload is being called: its namespace, name (empty when it need
/// not exist yet), labels and port.
pub struct Callee {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub port: u16,
}

/// What `check` found in a valid directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// The one-line summary (stdout).
    pub summary: String,
    /// Valid, but probably not what was meant (stderr; exit stays 0).
    pub warnings: Vec<String>,
}

/// Validates `dir`: the summary, and a warning when the set leaves every
/// call to `policy.defaultPolicy`.
pub fn check(dir: &Path) -> Result<CheckReport, ToolError> {
    let set = load(dir, Settings::default())?;
    let summary = set.summary();
    Ok(CheckReport {
        summary: format!("{}: ok: {summary}", dir.display()),
        warnings: default_warning(dir, summary).into_iter().collect(),
    })
}

/// Loads the policy set `explain` evaluates against, with the proxy's
/// settings.
pub fn load_set(
    dir: &Path,
    default_policy: DefaultPolicy,
    root_namespace: String,
) -> Result<PolicySet, ToolError> {
    let settings = Settings {
        default_policy,
        root_namespace,
    };
    load(dir, settings)
}

/// Evaluates one connection (and request, when HTTP attributes are given)
/// the way the destination's proxy would under `set`; the JSON object to
/// print.
pub fn explain(set: &PolicySet, args: &ExplainArgs) -> Result<serde_json::Value, ToolError> {
    let to = &args.to;
    let conn = policy::Connection {
        source: policy::Source {
            principal: args.principal.as_deref(),
            ip: args.source_ip.map(|ip| ip.to_canonical()),
        },
        destination: policy::Destination {
            namespace: &to.namespace,
            name: &to.name,
            labels: &to.labels,
            port: to.port,
        },
    };
    let (decision, limits) = if has_http(args) {
        request_decision(set, &conn, args)?
    } else {
        let d = match set.evaluate_connection(&conn) {
            L4Decision::Decided(d) => d,
            L4Decision::NeedsHttp => needs_http(),
        };
        (d, set.rate_limits_for(&conn, None))
    };
    let mut out = decision.to_json();
    // Which rate limits would take a token (connection limits, plus request
    // limits when HTTP attributes are given); the buckets' state is not known here.
    out["rateLimits"] = serde_json::to_value(limits).unwrap_or_default();
    Ok(out)
}

/// A set without ALLOW policies lets `policy.defaultPolicy` decide every
/// call: with the default, deny, the proxy refuses everything. Easy to get
/// by pointing at the wrong directory, so `check` says so.
fn default_warning(dir: &Path, summary: policy::Summary) -> Option<String> {
    let what = if summary.files == 0 {
        "no policy files"
    } else if summary.allow == 0 {
        "no ALLOW AuthorizationPolicy"
    } else {
        return None;
    };
    Some(format!(
        "warning: {}: {what}: `policy.defaultPolicy` decides every call, so the \
         proxy denies every connection (with `defaultPolicy: allow`, it allows \
         every one no DENY policy refuses)",
        dir.display()
    ))
}

fn load(dir: &Path, settings: Settings) -> Result<PolicySet, ToolError> {
    PolicySet::load_dir(dir, settings).map_err(|e| ToolError::Policies(e.to_string()))
}

/// `k=v,k2=v2` (empty for none).
pub fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, ToolError> {
    text.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .ok_or_else(|| ToolError::Argument(format!("--to-labels: {pair:?} is not k=v")))
        })
        .collect()
}

fn has_http(args: &ExplainArgs) -> bool {
    args.method.is_some() || args.path.is_some() || args.host.is_some() || !args.headers.is_empty()
}

fn request_decision(
    set: &PolicySet,
    conn: &policy::Connection<'_>,
    args: &ExplainArgs,
) -> Result<(Decision, Vec<RateLimitInfo>), ToolError> {
    let raw = args.path.as_deref().unwrap_or("/");
    // The proxy answers such requests 400 before any policy: a deny.
    let path = match policy::normalize_path(raw) {
        Ok(p) => p,
        Err(e) => {
            return Ok((
                bad_request(format!("request path rejected: {e}")),
                Vec::new(),
            ))
        }
    };
    // No `--host` is a request without one (HTTP/1.0), as the proxy judges it.
    let host = match args.host.as_deref().map(policy::normalize_host) {
        None => String::new(),
        Some(Ok(h)) => h.to_string(),
        Some(Err(e)) => {
            return Ok((
                bad_request(format!("request host rejected: {e}")),
                Vec::new(),
            ))
        }
    };
    let mut headers = headers(&args.headers)?;
    // As the proxy does: the token is checked before any policy, and a bad
    // one is a 401. A `jwksUri`'s keys are not fetched here (no I/O): such a
    // token is reported as `keys_unavailable`.
    let authn = set.authenticate(
        &conn.destination,
        &headers,
        path.query.as_deref(),
        &jwt::NoKeys,
        SystemTime::now(),
    );
    authn.rewrite(&mut headers, None);
    let auth = match &authn.result {
        Ok(auth) => auth.as_ref(),
        Err(e) => return Ok((unauthenticated(*e), Vec::new())),
    };
    let request = policy::Request {
        method: args.method.as_deref().unwrap_or("GET"),
        path: &path.path,
        host: &host,
        headers: &headers,
        auth,
    };
    Ok((
        set.evaluate_request(conn, &request),
        set.rate_limits_for(conn, Some(&request)),
    ))
}

fn headers(pairs: &[String]) -> Result<HeaderMap, ToolError> {
    let mut map = HeaderMap::new();
    for pair in pairs {
        let bad = || ToolError::Argument(format!("--header {pair:?}: expected NAME=VALUE"));
        let (k, v) = pair.split_once('=').ok_or_else(bad)?;
        let name = HeaderName::from_bytes(k.trim().as_bytes()).map_err(|_| bad())?;
        let value = HeaderValue::from_str(v).map_err(|_| bad())?;
        map.append(name, value);
    }
    Ok(map)
}

/// A request whose token the proxy refuses with 401 before asking any policy.
fn unauthenticated(why: jwt::JwtError) -> Decision {
    Decision {
        allow: false,
        policy: None,
        action: None,
        reason: format!("JWT {}: {why} (the proxy answers 401)", why.as_str()),
        audit: Vec::new(),
    }
}

/// A request the proxy refuses with 400 before asking any policy.
fn bad_request(why: String) -> Decision {
    Decision {
        allow: false,
        policy: None,
        action: None,
        reason: format!("{why} (the proxy answers 400)"),
        audit: Vec::new(),
    }
}

/// What a non-HTTP client gets on a port whose policies look at HTTP: the
/// proxy speaks HTTP there, so anything else fails closed.
fn needs_http() -> Decision {
    Decision {
        allow: false,
        policy: None,
        action: None,
        reason: "the decision depends on HTTP attributes: pass --method/--path/--host/--header \
                 (a client that does not speak HTTP is denied)"
            .into(),
        audit: Vec::new(),
    }
}
