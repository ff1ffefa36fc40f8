//! One token bucket's state. Its parameters travel in its key, so the state
//! is a count and two instants; refills are computed from elapsed time when
//! the bucket is next touched, so no timer task is needed.

use std::time::{Duration, Instant};

use nodeward_policy::TokenBucket;

/// Tokens left and the fill clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BucketState {
    tokens: u32,
    /// When the last fill happened; while full, when it was last seen full.
    last_fill: Instant,
    /// For eviction's tie-break.
    last_used: Instant,
}

/// What one take saw, for `x-ratelimit-*` headers and `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Take {
    /// A token was taken.
    pub allowed: bool,
    /// Tokens left after this take.
    pub remaining: u32,
    /// Time until the next fill.
    pub reset: Duration,
}

impl BucketState {
    /// A new bucket starts full (Envoy, Linkerd), so a caller's first burst
    /// of up to `maxTokens` passes.
    pub fn full(spec: &TokenBucket, now: Instant) -> Self {
        Self {
            tokens: spec.max_tokens(),
            last_fill: now,
            last_used: now,
        }
    }

    /// Refills, then takes one token if there is one.
    pub fn take(&mut self, spec: &TokenBucket, now: Instant) -> Take {
        self.refill(spec, now);
        self.last_used = self.last_used.max(now);
        let allowed = self.tokens > 0;
        if allowed {
            self.tokens -= 1;
        }
        Take {
            allowed,
            remaining: self.tokens,
            reset: self.next_fill(spec, now),
        }
    }

    /// Gives back a token taken for a call that another bucket refused, so
    /// a caller over one limit does not drain the others.
    pub fn refund(&mut self, spec: &TokenBucket) {
        self.tokens = (self.tokens + 1).min(spec.max_tokens());
    }

    /// How long until the bucket is full if nobody takes from it; zero for
    /// a full bucket, which is then indistinguishable from a new one.
    pub fn time_to_full(&self, spec: &TokenBucket, now: Instant) -> Duration {
        let mut probe = *self;
        probe.refill(spec, now);
        let missing = spec.max_tokens() - probe.tokens;
        if missing == 0 {
            return Duration::ZERO;
        }
        let fills = missing.div_ceil(spec.tokens_per_fill());
        let full_at = spec
            .fill_interval()
            .checked_mul(fills)
            .and_then(|d| probe.last_fill.checked_add(d));
        full_at.map_or(Duration::MAX, |at| at.saturating_duration_since(now))
    }

    pub fn last_used(&self) -> Instant {
        self.last_used
    }

    /// Adds `tokensPerFill` per whole interval since the last fill, up to
    /// `maxTokens`. A full bucket's clock stands still, so the first token
    /// taken from it is replaced one whole interval later. Time running
    /// backwards (instants from elsewhere) adds nothing rather than panics.
    fn refill(&mut self, spec: &TokenBucket, now: Instant) {
        let interval = spec.fill_interval();
        let elapsed = now.saturating_duration_since(self.last_fill);
        let fills = elapsed.as_nanos() / interval.as_nanos();
        let fills = u32::try_from(fills).unwrap_or(u32::MAX);
        let added = fills.saturating_mul(spec.tokens_per_fill());
        let missing = spec.max_tokens() - self.tokens;
        if added >= missing {
            self.tokens = spec.max_tokens();
            self.last_fill = self.last_fill.max(now);
            return;
        }
        // Not saturated: `added < missing`, so `fills` is exact, and
        // `fills` intervals fit in `elapsed`.
        self.tokens += added;
        let advanced = interval.checked_mul(fills);
        self.last_fill = advanced
            .and_then(|d| self.last_fill.checked_add(d))
            .unwrap_or(now);
    }

    fn next_fill(&self, spec: &TokenBucket, now: Instant) -> Duration {
        let at = self.last_fill.checked_add(spec.fill_interval());
        at.map_or(spec.fill_interval(), |at| at.saturating_duration_since(now))
    }
}
