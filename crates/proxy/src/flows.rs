//! The flow map: what this node's proxy saw, per edge (who called whom on
//! which port), for the admin page `/flows` and `/flows.json`.
//!
//! An edge is looked up once per connection, when it opens, in a table of
//! independently locked shards; the connection then keeps the edge's
//! [`Flow`] handle (an `Arc` of atomics) and counts bytes, requests and
//! decisions on it without any lock shared by other connections (a known
//! policy's count is found through an `ArcSwap`, which readers load
//! without locking). Only the rare paths take a lock of the edge's own: a
//! new deciding policy (once per policy and edge) and an error.
//!
//! Memory is bounded: each of the 16 shards holds at most
//! [`FlowMap::max_edges`] / 16 edges (rounded up). A new edge over its
//! shard's cap evicts the shard's edge idle longest (no connection holds
//! it), under the lock it already holds, so opening an edge never touches
//! another shard; when every edge of the shard is busy the new one is not
//! recorded. Both are counted. A connection holds its edge from the
//! lookup on (while it dials too), so its edge is never evicted under it.
//!
//! Names in a key come from the registry (workloads, Services, verified
//! SPIFFE IDs), never from request bytes, so the table cannot be filled by
//! a peer's choice of strings; and an unknown destination is keyed without
//! its port ([`EdgeKey::new`]), so a port scan makes one edge, not 65,535.

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash, Hasher},
    sync::{
        atomic::{AtomicI64, AtomicU64, Ordering::Relaxed},
        Arc, Mutex, PoisonError,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwap;

use crate::ratelimit::RateLimitOutcome;

#[cfg(test)]
mod tests;

/// The most edges a table may be configured to hold.
pub const MAX_EDGES: usize = 10_000;
/// Independently locked shards of the edge table.
const SHARDS: usize = 16;
/// The most characters of an error kept per edge.
const MAX_ERROR: usize = 256;
/// The most deciding policies kept per edge; more are counted under
/// [`OTHER_POLICIES`].
const MAX_POLICIES: usize = 32;
/// Where the decisions of policies past [`MAX_POLICIES`] are counted.
pub const OTHER_POLICIES: &str = "(other)";

/// What one end of an edge is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EndKind {
    /// A workload (pod) from the registry.
    Workload,
    /// A Service, when the caller dialled its virtual IP.
    Service,
    /// A verified caller identity whose workload is not known here.
    Principal,
    /// Not attributable (an unknown destination).
    Unknown,
}

impl EndKind {
    /// Stable name, as in `/flows.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Workload => "workload",
            Self::Service => "service",
            Self::Principal => "principal",
            Self::Unknown => "unknown",
        }
    }
}

/// One end of an edge.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct End {
    pub kind: EndKind,
    /// Namespace, or empty when unknown.
    pub namespace: String,
    /// Workload or Service name, or the SPIFFE ID of a principal.
    pub name: String,
}

impl End {
    /// A workload or Service end.
    pub fn new(kind: EndKind, namespace: &str, name: &str) -> Self {
        Self {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    /// The unknown end.
    pub fn unknown() -> Self {
        Self::new(EndKind::Unknown, "", "unknown")
    }
}

/// Who called whom on which destination port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EdgeKey {
    pub source: End,
    pub destination: End,
    pub port: u16,
}

impl EdgeKey {
    /// The key of a call from `source` to `destination` on `port`. An
    /// unknown destination is keyed on port 0: the port is the caller's
    /// choice, and a scan of every port must not make an edge per port.
    pub fn new(source: End, destination: End, port: u16) -> Self {
        let port = if destination.kind == EndKind::Unknown {
            0
        } else {
            port
        };
        Self {
            source,
            destination,
            port,
        }
    }
}

/// An authorization decision, as counted per edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny,
    Audit,
}

impl Verdict {
    /// Stable name, as in `/flows.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Audit => "audit",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Allow => 0,
            Self::Deny => 1,
            Self::Audit => 2,
        }
    }
}

/// One edge's counters.
#[derive(Debug, Default)]
struct Edge {
    opened: AtomicU64,
    /// Connections holding this edge (from the lookup until the handle is
    /// dropped); eviction skips edges with any.
    active: AtomicI64,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    /// HTTP responses by status class, 1xx to 5xx.
    status: [AtomicU64; 5],
    /// allow, deny, audit
    authz: [AtomicU64; 3],
    /// allowed, limited, shadow-limited
    ratelimit: [AtomicU64; 3],
    first_seen: u64,
    last_seen: AtomicU64,
    /// Per deciding policy: allow, deny, audit. Read without a lock;
    /// replaced (copy, push, store) under `adding` for a new policy.
    policies: ArcSwap<Vec<Arc<PolicyCounts>>>,
    adding: Mutex<()>,
    last_error: Mutex<Option<(u64, String)>>,
}

/// One deciding policy's allow, deny and audit counts on an edge.
#[derive(Debug)]
struct PolicyCounts {
    policy: String,
    counts: [AtomicU64; 3],
}

impl Edge {
    fn new(now: u64) -> Self {
        Self {
            first_seen: now,
            last_seen: AtomicU64::new(now),
            ..Self::default()
        }
    }

    fn touch(&self) {
        self.last_seen.fetch_max(now_millis(), Relaxed);
    }

    fn count_policy(&self, policy: &str, verdict: Verdict) {
        let i = verdict.index();
        if let Some(p) = self.policies.load().iter().find(|p| p.policy == policy) {
            p.counts[i].fetch_add(1, Relaxed);
            return;
        }
        // A new policy on this edge: rare (at most MAX_POLICIES + 1 times).
        let _adding = lock(&self.adding);
        let held = self.policies.load_full();
        let name = if held.len() < MAX_POLICIES {
            policy
        } else {
            OTHER_POLICIES
        };
        if let Some(p) = held.iter().find(|p| p.policy == name) {
            p.counts[i].fetch_add(1, Relaxed);
            return;
        }
        let added = PolicyCounts {
            policy: name.to_owned(),
            counts: Default::default(),
        };
        added.counts[i].store(1, Relaxed);
        let mut grown = Vec::with_capacity(held.len() + 1);
        grown.extend(held.iter().cloned());
        grown.push(Arc::new(added));
        self.policies.store(Arc::new(grown));
    }
}

/// A connection's handle on its edge: counts without looking anything up.
/// The empty handle (flow map off, or the table full) counts nothing.
/// While any clone of it lives the edge counts one more active connection
/// and is not evicted.
#[derive(Debug, Clone, Default)]
pub struct Flow(Option<Arc<Held>>);

/// An edge held by one connection: active until dropped.
#[derive(Debug)]
struct Held(Arc<Edge>);

impl Held {
    /// Counts a connection on `edge` as active. Called under the edge's
    /// shard lock, so eviction (under the same lock) sees it.
    fn new(edge: &Arc<Edge>) -> Self {
        edge.active.fetch_add(1, Relaxed);
        Self(edge.clone())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}

impl std::ops::Deref for Held {
    type Target = Edge;
    fn deref(&self) -> &Edge {
        &self.0
    }
}

impl Flow {
    /// A handle that counts nothing.
    pub fn none() -> Self {
        Self(None)
    }

    /// Whether this handle counts.
    pub fn is_counting(&self) -> bool {
        self.0.is_some()
    }

    /// A connection on this edge started relaying. (It counts as active
    /// from the lookup on, until its handle is dropped.)
    pub fn opened(&self) {
        if let Some(e) = &self.0 {
            e.opened.fetch_add(1, Relaxed);
            e.touch();
        }
    }

    /// A connection ended after `sent` bytes to the destination and
    /// `received` back.
    pub fn closed(&self, sent: u64, received: u64) {
        if let Some(e) = &self.0 {
            e.bytes_sent.fetch_add(sent, Relaxed);
            e.bytes_received.fetch_add(received, Relaxed);
            e.touch();
        }
    }

    /// An HTTP request answered with `status`.
    pub fn request(&self, status: u16) {
        if let Some(e) = &self.0 {
            if let Some(c) = (status / 100)
                .checked_sub(1)
                .and_then(|i| e.status.get(usize::from(i)))
            {
                c.fetch_add(1, Relaxed);
            }
            e.touch();
        }
    }

    /// An authorization decision and the policy that made it (`ns/name`,
    /// or `default`).
    pub fn authz(&self, verdict: Verdict, policy: &str) {
        if let Some(e) = &self.0 {
            e.authz[verdict.index()].fetch_add(1, Relaxed);
            e.count_policy(policy, verdict);
            e.touch();
        }
    }

    /// A rate limiter's decision.
    pub fn ratelimit(&self, outcome: RateLimitOutcome) {
        if let Some(e) = &self.0 {
            let i = match outcome {
                RateLimitOutcome::Allowed => 0,
                RateLimitOutcome::Limited => 1,
                RateLimitOutcome::ShadowLimited => 2,
            };
            e.ratelimit[i].fetch_add(1, Relaxed);
            e.touch();
        }
    }

    /// What went wrong last on this edge (kept cut to a bounded length).
    pub fn error(&self, error: &str) {
        if let Some(e) = &self.0 {
            let now = now_millis();
            let kept: String = error.chars().take(MAX_ERROR).collect();
            *e.last_error.lock().unwrap_or_else(PoisonError::into_inner) = Some((now, kept));
            e.touch();
        }
    }
}

/// The flow map of one proxy: its edges.
#[derive(Debug)]
pub struct FlowMap {
    shards: [Mutex<HashMap<EdgeKey, Arc<Edge>>>; SHARDS],
    max_edges: usize,
    /// The cap of each shard: `max_edges` / [`SHARDS`], rounded up.
    shard_cap: usize,
    held: AtomicU64,
    evicted: AtomicU64,
    dropped: AtomicU64,
}

/// A copy of one edge's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeSnapshot {
    pub key: EdgeKey,
    pub opened: u64,
    pub active: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// HTTP responses by class: 1xx, 2xx, 3xx, 4xx, 5xx.
    pub http: [u64; 5],
    /// allow, deny, audit.
    pub authz: [u64; 3],
    /// allowed, limited, shadow-limited.
    pub ratelimit: [u64; 3],
    /// Deciding policies with their allow, deny and audit counts.
    pub policies: Vec<(String, [u64; 3])>,
    /// The last error, with its time (Unix milliseconds).
    pub last_error: Option<(u64, String)>,
    /// Unix milliseconds.
    pub first_seen: u64,
    pub last_seen: u64,
}

/// A copy of the table, with what the cap cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub edges: Vec<EdgeSnapshot>,
    /// The configured cap.
    pub max_edges: usize,
    /// Edges in the table now (also those outside the window).
    pub held: u64,
    /// Idle edges forgotten to make room, since start.
    pub evicted: u64,
    /// New edges not recorded because every edge held was busy.
    pub dropped: u64,
}

/// A cap outside 1..=[`MAX_EDGES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the flow map holds 1 to {MAX_EDGES} edges, got {0}")]
pub struct InvalidMaxEdges(pub usize);

impl FlowMap {
    /// An empty table holding at most `max_edges` edges.
    pub fn new(max_edges: usize) -> Result<Self, InvalidMaxEdges> {
        if !(1..=MAX_EDGES).contains(&max_edges) {
            return Err(InvalidMaxEdges(max_edges));
        }
        Ok(Self {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            max_edges,
            shard_cap: max_edges.div_ceil(SHARDS),
            held: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        })
    }

    /// The cap on edges, as configured (each shard holds a sixteenth of
    /// it, rounded up).
    pub fn max_edges(&self) -> usize {
        self.max_edges
    }

    /// The handle of `key`'s edge, created if new. Called once per
    /// connection, when it opens; takes one shard's lock, no other.
    pub fn edge(&self, key: EdgeKey) -> Flow {
        let mut map = lock(&self.shards[shard_of(&key)]);
        if let Some(e) = map.get(&key) {
            return Flow(Some(Arc::new(Held::new(e))));
        }
        if map.len() >= self.shard_cap && !self.evict_one(&mut map) {
            self.dropped.fetch_add(1, Relaxed);
            return Flow::none();
        }
        let edge = Arc::new(Edge::new(now_millis()));
        let flow = Flow(Some(Arc::new(Held::new(&edge))));
        map.insert(key, edge);
        self.held.fetch_add(1, Relaxed);
        flow
    }

    /// Forgets the edge of `map` (one locked shard) idle longest; false
    /// when every edge of it is busy. Scans the shard: this runs only when
    /// a new edge meets a full shard.
    fn evict_one(&self, map: &mut HashMap<EdgeKey, Arc<Edge>>) -> bool {
        let oldest = map
            .iter()
            .filter(|(_, e)| e.active.load(Relaxed) <= 0)
            .min_by_key(|(_, e)| e.last_seen.load(Relaxed))
            .map(|(k, _)| k.clone());
        let Some(key) = oldest else {
            return false;
        };
        map.remove(&key);
        self.held.fetch_sub(1, Relaxed);
        self.evicted.fetch_add(1, Relaxed);
        true
    }

    /// The edges seen within `window` (or with a connection open), most
    /// recently seen first.
    pub fn snapshot(&self, window: Duration) -> Snapshot {
        let window = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        let since = now_millis().saturating_sub(window);
        let mut edges = Vec::new();
        for shard in &self.shards {
            let pairs: Vec<(EdgeKey, Arc<Edge>)> = lock(shard)
                .iter()
                .map(|(k, e)| (k.clone(), e.clone()))
                .collect();
            edges.extend(
                pairs
                    .into_iter()
                    .filter(|(_, e)| {
                        e.last_seen.load(Relaxed) >= since || e.active.load(Relaxed) > 0
                    })
                    .map(|(k, e)| copy(k, &e)),
            );
        }
        edges.sort_by(|a, b| {
            b.last_seen
                .cmp(&a.last_seen)
                .then_with(|| a.key.cmp(&b.key))
        });
        Snapshot {
            edges,
            max_edges: self.max_edges,
            held: self.held.load(Relaxed),
            evicted: self.evicted.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
        }
    }
}

fn copy(key: EdgeKey, e: &Edge) -> EdgeSnapshot {
    let load = |a: &[AtomicU64]| -> Vec<u64> { a.iter().map(|c| c.load(Relaxed)).collect() };
    let policies = e
        .policies
        .load()
        .iter()
        .map(|p| (p.policy.clone(), array3(&load(&p.counts))))
        .collect();
    let status = load(&e.status);
    EdgeSnapshot {
        key,
        opened: e.opened.load(Relaxed),
        active: u64::try_from(e.active.load(Relaxed)).unwrap_or(0),
        bytes_sent: e.bytes_sent.load(Relaxed),
        bytes_received: e.bytes_received.load(Relaxed),
        http: [status[0], status[1], status[2], status[3], status[4]],
        authz: array3(&load(&e.authz)),
        ratelimit: array3(&load(&e.ratelimit)),
        policies,
        last_error: e
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone(),
        first_seen: e.first_seen,
        last_seen: e.last_seen.load(Relaxed),
    }
}

fn array3(v: &[u64]) -> [u64; 3] {
    [v[0], v[1], v[2]]
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn shard_of(key: &EdgeKey) -> usize {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() as usize) % SHARDS
}

/// Now, in Unix milliseconds.
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
