//! Identity-aware rate limits: the token buckets behind `RateLimitPolicy`.
//!
//! [`RateLimiter::check`] asks the policy set which limits apply to a new
//! connection or an HTTP request, and takes one token from the bucket of
//! each; the call is limited when any enforce-mode bucket was empty. Buckets
//! refill lazily from elapsed time (no timer task), and time is a parameter,
//! so tests are deterministic.
//!
//! # Which bucket
//!
//! A bucket belongs to one [`RateLimit`], that is a policy's name *and* its
//! parameters (kind, bucket numbers, `per`, `mode`), and for `per: source`
//! to one caller principal; every unauthenticated caller shares the bucket
//! of "no principal". A reload that keeps a policy unchanged therefore keeps
//! its buckets, and one that changes its numbers starts fresh, full ones.
//!
//! # Bounded memory
//!
//! At most `max_buckets` buckets live, split evenly over independently
//! locked shards (a bucket's shard comes from a randomly seeded hash, so
//! callers cannot choose theirs). When a shard is full, a new bucket evicts
//! buckets ranked by how soon they would be full again if left alone, least
//! recently used first among equals:
//!
//! - A bucket that has refilled completely (idle) ranks first. It is
//!   indistinguishable from a new one, so forgetting it changes nothing.
//! - Plain LRU would let a flood of new identities push out a caller that
//!   is being limited and backing off, handing it a full bucket: exactly
//!   what the flood is for. Ranked by time-to-full, a flood of fresh callers
//!   (each one token short) evicts its own kind first. To reset a caller
//!   `k` tokens short, an attacker must hold about 15/16 of that caller's
//!   shard with buckets each at least as far from full; it cannot pick the
//!   shard, so that means about `max_buckets` identities each spending `k`
//!   tokens inside the refill window, and the reset returns at most
//!   `maxTokens` tokens to the victim.
//!
//! A full shard evicts every idle bucket and at least 1/16 of its capacity
//! in one pass, so a flood costs one scan per many new callers rather than
//! one per call; those extra evictions are the buckets closest to full.

use std::{
    collections::{HashMap, HashSet},
    hash::{BuildHasher, RandomState},
    sync::{Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use bucket::{BucketState, Take};
use nodeward_policy::{self as policy, PolicyRef, PolicySet, RateLimit};
pub use nodeward_policy::{LimitKind, LimitMode, LimitPer, RateLimitInfo};

mod bucket;

/// What a rate limiter decided (a label value too, see
/// [`crate::telemetry`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitOutcome {
    Allowed,
    Limited,
    /// Over the limit, but the limit is in shadow (dry-run) mode: let through.
    ShadowLimited,
}

impl RateLimitOutcome {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Limited => "limited",
            Self::ShadowLimited => "shadow_limited",
        }
    }
}

/// The bucket bound [`RateLimiter::default`] uses: about 25 MiB when
/// full, and far more callers than one node serves.
pub const DEFAULT_MAX_BUCKETS: usize = 100_000;

/// Independently locked parts of the bucket map, so calls to different
/// workloads or from different callers rarely wait for each other.
const SHARDS: usize = 32;

/// Fewer shards for a small bound: a shard of a handful of buckets would
/// evict on chance collisions long before the limiter is full.
const MIN_PER_SHARD: usize = 64;

/// A full shard evicts at least `capacity / EVICT_DIVISOR` buckets at once.
const EVICT_DIVISOR: usize = 16;

/// Token buckets for every applicable `RateLimitPolicy`, shared by all
/// connections of the node (`Send + Sync`).
pub struct RateLimiter {
    shards: Box<[Mutex<Shard>]>,
    /// Capacity of each shard; all of them together hold at most the
    /// `max_buckets` asked for (at least one bucket per shard).
    per_shard: usize,
    hasher: RandomState,
}

/// The verdict on one connection or request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateOutcome {
    /// An enforce-mode bucket was empty: refuse the call.
    pub limited: bool,
    /// The enforce policy that limited (of several, the one that refills
    /// last, so `Retry-After` is honest), else the tightest applicable one.
    pub policy: Option<PolicyRef>,
    /// Shadow-mode policies whose bucket was empty; they never block.
    pub shadow_limited: Vec<PolicyRef>,
    /// Every policy that applied and took a token, in evaluation order.
    pub applied: Vec<PolicyRef>,
    /// `maxTokens` of [`RateOutcome::policy`]'s bucket. That bucket is a
    /// shadow one only when no enforce policy applied; sending
    /// `x-ratelimit-*` headers then would show callers a trial limit.
    pub limit: u32,
    /// Tokens left in that bucket after this call.
    pub remaining: u32,
    /// Time until that bucket's next fill.
    pub reset: Duration,
}

/// One shard: buckets by key.
type Shard = HashMap<Key, BucketState>;

/// A bucket's identity: its limit and, for `per: source`, the caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    limit: RateLimit,
    /// The caller's principal (`spiffe://...`); `None` for unauthenticated
    /// callers and for `per: shared`.
    caller: Option<Box<str>>,
}

/// Orders candidates for [`RateOutcome::policy`]; the greatest wins: an
/// empty enforce bucket, then any enforce bucket, then the fewest tokens
/// left, then the longest wait for a fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    blocks: bool,
    enforce: bool,
    scarcity: std::cmp::Reverse<u32>,
    reset: Duration,
}

impl RateLimiter {
    /// A limiter that keeps at most `max_buckets` buckets (see the module
    /// docs for which are forgotten first).
    pub fn new(max_buckets: usize) -> Self {
        Self::with_shards(max_buckets, max_buckets / MIN_PER_SHARD)
    }

    /// Takes a token from every applicable bucket. For
    /// [`LimitKind::Requests`] pass the request; without it a `match` on
    /// methods or paths is taken to hold.
    pub fn check(
        &self,
        set: &PolicySet,
        conn: &policy::Connection<'_>,
        req: Option<&policy::Request<'_>>,
        kind: LimitKind,
        now: Instant,
    ) -> RateOutcome {
        let mut outcome = RateOutcome::default();
        let mut best = None;
        let mut taken = Vec::new();
        for limit in set.applicable_rate_limits(conn, req, kind) {
            let take = self.take(limit, conn.source.principal, now);
            if take.allowed {
                taken.push(limit);
            }
            outcome.add(limit, &take, &mut best);
        }
        // A refused call costs nothing: otherwise a caller over its own
        // limit would keep draining a shared bucket and starve everyone.
        if outcome.limited {
            for limit in taken {
                self.refund(limit, conn.source.principal);
            }
        }
        outcome
    }

    /// Live buckets, for a metric.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|shard| lock(shard).len()).sum()
    }

    /// Whether no bucket is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets the buckets of limits `set` does not have (removed policies,
    /// changed numbers). Optional after a reload: such buckets are never
    /// used again and go first once refilled; this keeps [`Self::len`] true.
    pub fn retain_policies(&self, set: &PolicySet) {
        let current: HashSet<&RateLimit> = set.rate_limits().collect();
        for shard in self.shards.iter() {
            lock(shard).retain(|key, _| current.contains(&key.limit));
        }
    }

    /// `shards` is kept within 1..=[`SHARDS`] and at most one per bucket.
    fn with_shards(max_buckets: usize, shards: usize) -> Self {
        let shards = shards.clamp(1, SHARDS).min(max_buckets.max(1));
        Self {
            shards: (0..shards).map(|_| Mutex::default()).collect(),
            per_shard: (max_buckets / shards).max(1),
            hasher: RandomState::new(),
        }
    }

    fn take(&self, limit: &RateLimit, principal: Option<&str>, now: Instant) -> Take {
        let key = Key::new(limit, principal);
        let spec = limit.bucket();
        let mut shard = self.shard(&key);
        if let Some(bucket) = shard.get_mut(&key) {
            return bucket.take(spec, now);
        }
        make_room(&mut shard, self.per_shard, now);
        let mut bucket = BucketState::full(spec, now);
        let take = bucket.take(spec, now);
        shard.insert(key, bucket);
        take
    }

    fn refund(&self, limit: &RateLimit, principal: Option<&str>) {
        let key = Key::new(limit, principal);
        if let Some(bucket) = self.shard(&key).get_mut(&key) {
            bucket.refund(limit.bucket());
        }
    }

    fn shard(&self, key: &Key) -> MutexGuard<'_, Shard> {
        // The remainder is below the shard count, so it fits a usize.
        let index = self.hasher.hash_one(key) % self.shards.len() as u64;
        lock(&self.shards[index as usize])
    }
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_BUCKETS)
    }
}

impl RateOutcome {
    /// Whether any policy applied (and so the numbers mean something).
    pub fn applies(&self) -> bool {
        !self.applied.is_empty()
    }

    fn add(&mut self, limit: &RateLimit, take: &Take, best: &mut Option<Rank>) {
        let id = limit.id();
        let enforce = limit.mode() == LimitMode::Enforce;
        match (take.allowed, enforce) {
            (true, _) => {}
            (false, true) => self.limited = true,
            (false, false) => self.shadow_limited.push(id.clone()),
        }
        self.applied.push(id.clone());
        let rank = Rank {
            blocks: enforce && !take.allowed,
            enforce,
            scarcity: std::cmp::Reverse(take.remaining),
            reset: take.reset,
        };
        // Strictly greater: among equals the first keeps its place.
        if best.is_none_or(|best| rank > best) {
            *best = Some(rank);
            self.policy = Some(id.clone());
            self.limit = limit.bucket().max_tokens();
            self.remaining = take.remaining;
            self.reset = take.reset;
        }
    }
}

impl Key {
    fn new(limit: &RateLimit, principal: Option<&str>) -> Self {
        let caller = match limit.per() {
            LimitPer::Source => principal.map(Box::from),
            LimitPer::Shared => None,
        };
        Self {
            limit: limit.clone(),
            caller,
        }
    }
}

/// A bucket map holds only counters, so one left behind by a panicking
/// thread is still sound to use.
fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Makes room for one more bucket in a full shard: evicts every idle
/// bucket and at least `capacity / EVICT_DIVISOR`, soonest full first (see
/// the module docs).
fn make_room(shard: &mut Shard, capacity: usize, now: Instant) {
    if shard.len() < capacity {
        return;
    }
    let mut ranked: Vec<(Duration, Instant, &Key)> = shard
        .iter()
        .map(|(key, b)| (b.time_to_full(key.limit.bucket(), now), b.last_used(), key))
        .collect();
    let idle = ranked
        .iter()
        .filter(|(to_full, ..)| to_full.is_zero())
        .count();
    let count = idle.max(capacity / EVICT_DIVISOR).max(1);
    if count < ranked.len() {
        ranked.select_nth_unstable_by(count, |a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        ranked.truncate(count);
    }
    let evicted: Vec<Key> = ranked.into_iter().map(|(.., key)| key.clone()).collect();
    for key in evicted {
        shard.remove(&key);
    }
}

#[cfg(test)]
mod tests;
