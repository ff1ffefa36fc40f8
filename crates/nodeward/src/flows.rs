//! The flow map as people see it: `/flows.json` (one node, or the cluster
//! merged from the configured peers), the `/flows` page, and
//! `nodeward flows`, which merges several nodes' maps in a terminal.
//!
//! The counting itself is `nodeward_proxy::flows`; this module owns the
//! documented JSON shape (docs/flows.md), the merge and the renderings.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    time::Duration,
};

use http_body_util::{BodyExt, Empty, Limited};
use hyper::{body::Bytes, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};

use nodeward_proxy::flows::{EdgeSnapshot, End, Snapshot};

mod render;
#[cfg(test)]
mod tests;

pub use render::{dot, table};

/// The page, with its script and style inline: no asset leaves the binary.
pub const PAGE: &str = include_str!("flows/page.html");
/// Window of `/flows.json` without `?since=`.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(300);
/// The longest window asked for: a day.
pub const MAX_WINDOW: Duration = Duration::from_secs(86_400);
/// How long a peer (or an `--admin` address) has to answer.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(3);
/// The largest `/flows.json` body read from a peer.
pub const MAX_BODY: usize = 32 * 1024 * 1024;

/// `/flows.json`: one node's edges, or several nodes' merged.
///
/// The wire types here accept fields they do not know (unlike the config
/// file's): a newer peer in a rolling upgrade still merges.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowsReport {
    /// The node that answered.
    pub node: String,
    /// Every node whose edges are included (one, unless merged).
    pub nodes: Vec<String>,
    /// Peers that could not be read, with why (cluster view only).
    #[serde(default)]
    pub unreachable: Vec<Unreachable>,
    /// Edges seen within this many seconds (or with a connection open).
    pub window_seconds: u64,
    /// When the report was made, Unix milliseconds.
    pub generated_at: u64,
    /// The cap on edges (per node).
    pub max_edges: u64,
    /// Edges held now (summed over nodes), also those outside the window.
    pub held: u64,
    /// Idle edges forgotten to make room, since start (summed).
    pub evicted: u64,
    /// New edges not recorded because the map was full of busy ones (summed).
    pub dropped: u64,
    pub edges: Vec<EdgeReport>,
}

/// A peer the cluster view could not read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Unreachable {
    pub address: String,
    pub error: String,
}

/// One end of an edge.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndReport {
    /// `workload`, `service`, `principal` or `unknown`.
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

/// One edge: who called whom on which port, and what happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EdgeReport {
    pub source: EndReport,
    pub destination: EndReport,
    pub port: u16,
    /// `denied`, `limited`, `error` or `allowed`: the colour of the edge.
    pub outcome: String,
    pub connections: Connections,
    pub bytes: Bytes2,
    /// HTTP responses by status class.
    pub http: Http,
    pub authz: Authz,
    pub rate_limit: RateLimit,
    /// Deciding policies, with their counts.
    pub policies: Vec<PolicyCount>,
    pub last_error: Option<LastError>,
    /// Unix milliseconds.
    pub first_seen: u64,
    pub last_seen: u64,
    /// The nodes that reported this edge.
    pub nodes: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Connections {
    pub opened: u64,
    pub active: u64,
}

/// Bytes each way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bytes2 {
    /// To the destination.
    pub sent: u64,
    /// Back to the source.
    pub received: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Http {
    #[serde(rename = "1xx")]
    pub c1: u64,
    #[serde(rename = "2xx")]
    pub c2: u64,
    #[serde(rename = "3xx")]
    pub c3: u64,
    #[serde(rename = "4xx")]
    pub c4: u64,
    #[serde(rename = "5xx")]
    pub c5: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authz {
    pub allow: u64,
    pub deny: u64,
    pub audit: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    pub allowed: u64,
    pub limited: u64,
    pub shadow_limited: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyCount {
    /// `namespace/name`, or `default`.
    pub policy: String,
    pub allow: u64,
    pub deny: u64,
    pub audit: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastError {
    /// Unix milliseconds.
    pub at: u64,
    pub message: String,
}

/// A bad `/flows.json` query.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("since must be a whole number of seconds from 1 to 86400")]
    Since,
    #[error("unknown query parameter (known: since, cluster)")]
    Unknown,
}

/// What `/flows.json` was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Query {
    pub window: Duration,
    /// Merge the configured peers' maps too.
    pub cluster: bool,
}

impl Query {
    /// Parses `since=<seconds>&cluster=1`; either may be left out.
    pub fn parse(query: Option<&str>) -> Result<Self, QueryError> {
        let mut q = Self {
            window: DEFAULT_WINDOW,
            cluster: false,
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=').unwrap_or((pair, "")) {
                ("since", v) => {
                    let secs: u64 = v.parse().map_err(|_| QueryError::Since)?;
                    if secs == 0 || secs > MAX_WINDOW.as_secs() {
                        return Err(QueryError::Since);
                    }
                    q.window = Duration::from_secs(secs);
                }
                ("cluster", "1" | "true" | "") => q.cluster = true,
                ("cluster", "0" | "false") => q.cluster = false,
                _ => return Err(QueryError::Unknown),
            }
        }
        Ok(q)
    }
}

impl FlowsReport {
    /// One node's report from its map.
    pub fn of(node: &str, window: Duration, snap: Snapshot, now: u64) -> Self {
        Self {
            node: node.to_owned(),
            nodes: vec![node.to_owned()],
            unreachable: Vec::new(),
            window_seconds: window.as_secs(),
            generated_at: now,
            max_edges: snap.max_edges as u64,
            held: snap.held,
            evicted: snap.evicted,
            dropped: snap.dropped,
            edges: snap.edges.into_iter().map(|e| edge(node, e)).collect(),
        }
    }
}

fn end(e: End) -> EndReport {
    EndReport {
        kind: e.kind.as_str().to_owned(),
        namespace: e.namespace,
        name: e.name,
    }
}

fn edge(node: &str, e: EdgeSnapshot) -> EdgeReport {
    let [c1, c2, c3, c4, c5] = e.http;
    let mut report = EdgeReport {
        source: end(e.key.source),
        destination: end(e.key.destination),
        port: e.key.port,
        outcome: String::new(),
        connections: Connections {
            opened: e.opened,
            active: e.active,
        },
        bytes: Bytes2 {
            sent: e.bytes_sent,
            received: e.bytes_received,
        },
        http: Http { c1, c2, c3, c4, c5 },
        authz: Authz {
            allow: e.authz[0],
            deny: e.authz[1],
            audit: e.authz[2],
        },
        rate_limit: RateLimit {
            allowed: e.ratelimit[0],
            limited: e.ratelimit[1],
            shadow_limited: e.ratelimit[2],
        },
        policies: e
            .policies
            .into_iter()
            .map(|(policy, [allow, deny, audit])| PolicyCount {
                policy,
                allow,
                deny,
                audit,
            })
            .collect(),
        last_error: e.last_error.map(|(at, message)| LastError { at, message }),
        first_seen: e.first_seen,
        last_seen: e.last_seen,
        nodes: vec![node.to_owned()],
    };
    report.outcome = outcome(&report).to_owned();
    report
}

/// The edge's colour: red when every decision was a denial, amber when a
/// rate limit refused calls, red again for a partial denial, amber for a
/// 5xx or an error, else green. (A rate limit outranks a partial denial
/// so that an edge with both shows the rarer finding.)
pub fn outcome(e: &EdgeReport) -> &'static str {
    let denied = e.authz.deny > 0;
    if denied && e.authz.allow == 0 {
        "denied"
    } else if e.rate_limit.limited > 0 {
        "limited"
    } else if denied {
        "denied"
    } else if e.http.c5 > 0 || e.last_error.is_some() {
        "error"
    } else {
        "allowed"
    }
}

type Key = (EndReport, EndReport, u16);

/// Merges several nodes' reports into one, answered by `node`.
///
/// The same edge reported by two nodes (a direct pod-to-pod call across
/// nodes: both proxies see it) is one connection seen twice, so
/// connections and bytes take the larger count; decisions and requests
/// are counted only by the destination's proxy, so they add up.
pub fn merge(node: &str, reports: Vec<FlowsReport>) -> FlowsReport {
    let mut edges: BTreeMap<Key, EdgeReport> = BTreeMap::new();
    let mut nodes = BTreeSet::new();
    let mut out = FlowsReport {
        node: node.to_owned(),
        nodes: Vec::new(),
        unreachable: Vec::new(),
        window_seconds: 0,
        generated_at: 0,
        max_edges: 0,
        held: 0,
        evicted: 0,
        dropped: 0,
        edges: Vec::new(),
    };
    for r in reports {
        nodes.extend(r.nodes);
        out.unreachable.extend(r.unreachable);
        out.window_seconds = out.window_seconds.max(r.window_seconds);
        out.generated_at = out.generated_at.max(r.generated_at);
        out.max_edges = out.max_edges.max(r.max_edges);
        // Counts come from peers: a hostile or broken one must not make
        // the sum panic (debug) or wrap (release).
        out.held = out.held.saturating_add(r.held);
        out.evicted = out.evicted.saturating_add(r.evicted);
        out.dropped = out.dropped.saturating_add(r.dropped);
        for e in r.edges {
            let key = (e.source.clone(), e.destination.clone(), e.port);
            match edges.get_mut(&key) {
                Some(held) => add(held, e),
                None => {
                    edges.insert(key, e);
                }
            }
        }
    }
    out.nodes = nodes.into_iter().collect();
    out.edges = edges.into_values().collect();
    for e in &mut out.edges {
        e.outcome = outcome(e).to_owned();
    }
    out.edges.sort_by_key(|e| std::cmp::Reverse(e.last_seen));
    out
}

fn add(into: &mut EdgeReport, e: EdgeReport) {
    let c = &mut into.connections;
    c.opened = c.opened.max(e.connections.opened);
    c.active = c.active.max(e.connections.active);
    into.bytes.sent = into.bytes.sent.max(e.bytes.sent);
    into.bytes.received = into.bytes.received.max(e.bytes.received);
    let h = &mut into.http;
    // Saturating: the counts came from peers (see `merge`).
    let sum = |a: &mut u64, b: u64| *a = a.saturating_add(b);
    sum(&mut h.c1, e.http.c1);
    sum(&mut h.c2, e.http.c2);
    sum(&mut h.c3, e.http.c3);
    sum(&mut h.c4, e.http.c4);
    sum(&mut h.c5, e.http.c5);
    sum(&mut into.authz.allow, e.authz.allow);
    sum(&mut into.authz.deny, e.authz.deny);
    sum(&mut into.authz.audit, e.authz.audit);
    let r = &mut into.rate_limit;
    sum(&mut r.allowed, e.rate_limit.allowed);
    sum(&mut r.limited, e.rate_limit.limited);
    sum(&mut r.shadow_limited, e.rate_limit.shadow_limited);
    for p in e.policies {
        match into.policies.iter_mut().find(|q| q.policy == p.policy) {
            Some(q) => {
                sum(&mut q.allow, p.allow);
                sum(&mut q.deny, p.deny);
                sum(&mut q.audit, p.audit);
            }
            None => into.policies.push(p),
        }
    }
    if e.last_error.as_ref().map(|l| l.at) > into.last_error.as_ref().map(|l| l.at) {
        into.last_error = e.last_error;
    }
    into.first_seen = into.first_seen.min(e.first_seen);
    into.last_seen = into.last_seen.max(e.last_seen);
    for n in e.nodes {
        if !into.nodes.contains(&n) {
            into.nodes.push(n);
        }
    }
}

/// Why a node's `/flows.json` could not be had.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("no answer within {FETCH_TIMEOUT:?}")]
    Timeout,
    #[error("connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("http: {0}")]
    Http(#[source] hyper::Error),
    #[error("answered {0}")]
    Status(StatusCode),
    #[error("body: {0}")]
    Body(String),
    #[error("not a flows report: {0}")]
    Json(#[source] serde_json::Error),
}

/// GETs `http://<addr>/flows.json?since=<window>` (never the cluster
/// view: a peer answers for itself, so peers cannot loop).
pub async fn fetch(addr: SocketAddr, window: Duration) -> Result<FlowsReport, FetchError> {
    tokio::time::timeout(FETCH_TIMEOUT, fetch_now(addr, window))
        .await
        .map_err(|_| FetchError::Timeout)?
}

async fn fetch_now(addr: SocketAddr, window: Duration) -> Result<FlowsReport, FetchError> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(FetchError::Connect)?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(FetchError::Http)?;
    tokio::spawn(conn);
    let req = Request::get(format!("/flows.json?since={}", window.as_secs()))
        .header(hyper::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| FetchError::Body(e.to_string()))?;
    let resp = send.send_request(req).await.map_err(FetchError::Http)?;
    if resp.status() != StatusCode::OK {
        return Err(FetchError::Status(resp.status()));
    }
    let body = Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| FetchError::Body(e.to_string()))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(FetchError::Json)
}

/// This node's report merged with every peer's; unreachable peers are
/// listed, not fatal.
pub async fn cluster(own: FlowsReport, peers: &[SocketAddr], window: Duration) -> FlowsReport {
    let node = own.node.clone();
    let fetches = peers
        .iter()
        .map(|&p| async move { (p, fetch(p, window).await) });
    let mut reports = vec![own];
    let mut unreachable = Vec::new();
    for (peer, result) in futures_join(fetches).await {
        match result {
            Ok(r) => reports.push(r),
            Err(e) => unreachable.push(Unreachable {
                address: peer.to_string(),
                error: e.to_string(),
            }),
        }
    }
    let mut merged = merge(&node, reports);
    merged.unreachable.extend(unreachable);
    merged
}

/// Runs the fetches at once (spawned), in order.
async fn futures_join<F, T>(futures: impl Iterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}
