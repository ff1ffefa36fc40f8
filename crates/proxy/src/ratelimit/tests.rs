use std::{
    collections::BTreeMap,
    num::NonZeroU32,
    path::PathBuf,
    time::{Duration, Instant},
};

use ::http::HeaderMap;

use super::{bucket::BucketState, *};
use nodeward_policy::{Connection, Destination, Request, Settings, Source, TokenBucket};

const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
const OPS_TOOL: &str = "spiffe://cluster.local/ns/ops/sa/ops-tool";

/// frontend → shop/backend:8080 `GET /api/items` unless a case changes it.
#[derive(Debug, Clone, Copy)]
struct Call<'a> {
    principal: Option<&'a str>,
    namespace: &'a str,
    app: &'a str,
    port: u16,
    method: &'a str,
    path: &'a str,
}

const GET: Call<'static> = Call {
    principal: Some(FRONTEND),
    namespace: "shop",
    app: "backend",
    port: 8080,
    method: "GET",
    path: "/api/items",
};

/// Calls in the order a test makes them, at times relative to `start`.
struct Clock {
    start: Instant,
}

impl<'a> Call<'a> {
    fn from(self, principal: &'a str) -> Self {
        Self {
            principal: Some(principal),
            ..self
        }
    }

    fn check(
        &self,
        limiter: &RateLimiter,
        set: &PolicySet,
        kind: LimitKind,
        now: Instant,
    ) -> RateOutcome {
        let labels = BTreeMap::from([("app".to_owned(), self.app.to_owned())]);
        let headers = HeaderMap::new();
        let conn = Connection {
            source: Source {
                principal: self.principal,
                ip: Some("10.1.0.5".parse().expect("ip")),
            },
            destination: Destination {
                namespace: self.namespace,
                name: self.app,
                labels: &labels,
                port: self.port,
            },
        };
        let req = Request {
            auth: None,
            method: self.method,
            path: self.path,
            host: "backend.shop.svc",
            headers: &headers,
        };
        let req = (kind == LimitKind::Requests).then_some(&req);
        limiter.check(set, &conn, req, kind, now)
    }

    fn request(&self, limiter: &RateLimiter, set: &PolicySet, now: Instant) -> RateOutcome {
        self.check(limiter, set, LimitKind::Requests, now)
    }

    fn connection(&self, limiter: &RateLimiter, set: &PolicySet, now: Instant) -> RateOutcome {
        self.check(limiter, set, LimitKind::Connections, now)
    }
}

impl Clock {
    fn new() -> Self {
        Self {
            start: Instant::now(),
        }
    }

    fn at(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms)
    }
}

fn set(yaml: &str) -> PolicySet {
    let sources = [(PathBuf::from("policies/limits.yaml"), yaml.to_owned())];
    PolicySet::from_sources(&sources, Settings::default())
        .unwrap_or_else(|e| panic!("policy rejected:\n{e}\n{yaml}"))
}

/// A `RateLimitPolicy` in `shop` selecting `app: backend`; `fields` are
/// more `spec` fields in flow style.
fn limit(name: &str, fields: &str) -> String {
    limit_in("shop", "{matchLabels: {app: backend}}", name, fields)
}

fn limit_in(namespace: &str, selector: &str, name: &str, fields: &str) -> String {
    format!(
        "apiVersion: nodeward.io/v1alpha1\nkind: RateLimitPolicy\n\
         metadata: {{name: {name}, namespace: {namespace}}}\n\
         spec: {{selector: {selector}, {fields}}}\n---\n"
    )
}

/// `limit: <kind>` with a bucket of `max` tokens, one per `interval_ms`.
fn bucket(kind: &str, max: u32, interval_ms: u64) -> String {
    format!(
        "limit: {kind}, bucket: {{maxTokens: {max}, tokensPerFill: 1, fillInterval: {interval_ms}ms}}"
    )
}

fn spec(max: u32, per_fill: u32, interval_ms: u64) -> TokenBucket {
    let count = |n| NonZeroU32::new(n).expect("non-zero");
    TokenBucket::new(
        count(max),
        count(per_fill),
        Duration::from_millis(interval_ms),
    )
    .expect("valid bucket")
}

/// Whether each of `n` calls passed.
fn passes(n: usize, mut call: impl FnMut() -> RateOutcome) -> Vec<bool> {
    (0..n).map(|_| !call().limited).collect()
}

// ---- token bucket ---------------------------------------------------------

#[test]
fn bucket_bursts_max_tokens_then_limits() {
    let clock = Clock::new();
    let spec = spec(3, 1, 1000);
    let mut bucket = BucketState::full(&spec, clock.at(0));
    let takes: Vec<_> = (0..4).map(|_| bucket.take(&spec, clock.at(0))).collect();
    let seen: Vec<_> = takes.iter().map(|t| (t.allowed, t.remaining)).collect();
    assert_eq!(seen, [(true, 2), (true, 1), (true, 0), (false, 0)]);
    // The first token taken from a full bucket comes back one interval later.
    assert!(takes.iter().all(|t| t.reset == Duration::from_secs(1)));
    let later = bucket.take(&spec, clock.at(400));
    assert_eq!(
        (later.allowed, later.reset),
        (false, Duration::from_millis(600))
    );
}

#[test]
fn bucket_refills_tokens_per_fill_per_whole_interval() {
    let clock = Clock::new();
    let spec = spec(5, 2, 1000);
    let mut bucket = BucketState::full(&spec, clock.at(0));
    for _ in 0..5 {
        assert!(bucket.take(&spec, clock.at(0)).allowed);
    }
    let take = bucket.take(&spec, clock.at(999));
    assert_eq!(
        (take.allowed, take.reset),
        (false, Duration::from_millis(1))
    );
    // One whole interval: two tokens, one taken now.
    let take = bucket.take(&spec, clock.at(1000));
    assert_eq!((take.allowed, take.remaining), (true, 1));
    // 2.5 intervals in: one more fill; the half interval is not lost.
    let take = bucket.take(&spec, clock.at(2500));
    assert_eq!((take.allowed, take.remaining), (true, 2));
    assert_eq!(take.reset, Duration::from_millis(500));
}

#[test]
fn bucket_never_exceeds_max_tokens() {
    let clock = Clock::new();
    let spec = spec(4, 3, 50);
    let mut bucket = BucketState::full(&spec, clock.at(0));
    bucket.take(&spec, clock.at(0));
    assert_eq!(
        bucket.time_to_full(&spec, clock.at(0)),
        Duration::from_millis(50)
    );
    assert_eq!(bucket.time_to_full(&spec, clock.at(50)), Duration::ZERO);
    // Years idle: full, not overflowed.
    let years = 10 * 365 * 24 * 3600 * 1000;
    let take = bucket.take(&spec, clock.at(years));
    assert_eq!((take.allowed, take.remaining), (true, 3));
}

#[test]
fn bucket_time_to_full_counts_whole_fills() {
    let clock = Clock::new();
    let spec = spec(5, 2, 1000);
    let mut bucket = BucketState::full(&spec, clock.at(0));
    for _ in 0..3 {
        bucket.take(&spec, clock.at(0));
    }
    // Three short, two per fill: two fills.
    assert_eq!(
        bucket.time_to_full(&spec, clock.at(0)),
        Duration::from_secs(2)
    );
    assert_eq!(
        bucket.time_to_full(&spec, clock.at(1500)),
        Duration::from_millis(500)
    );
    assert_eq!(bucket.last_used(), clock.at(0));
}

#[test]
fn bucket_tolerates_time_running_backwards() {
    let clock = Clock::new();
    let spec = spec(2, 1, 1000);
    let mut bucket = BucketState::full(&spec, clock.at(5000));
    bucket.take(&spec, clock.at(5000));
    let take = bucket.take(&spec, clock.at(0));
    assert_eq!((take.allowed, take.remaining), (true, 0));
    assert!(!bucket.take(&spec, clock.at(0)).allowed);
    assert!(bucket.take(&spec, clock.at(6000)).allowed);
}

// ---- limiter --------------------------------------------------------------

#[test]
fn no_applicable_policy_allows_and_counts_nothing() {
    let clock = Clock::new();
    let limiter = RateLimiter::default();
    let set = set(&limit(
        "other",
        &format!("{}, per: shared", bucket("requests", 1, 1000)),
    )
    .replace("app: backend", "app: cache"));
    let outcome = GET.request(&limiter, &set, clock.at(0));
    assert_eq!(outcome, RateOutcome::default());
    assert!(!outcome.applies());
    assert!(limiter.is_empty());
}

#[test]
fn outcome_reports_limit_remaining_and_reset() {
    let clock = Clock::new();
    let limiter = RateLimiter::default();
    let set = set(&limit("api", &bucket("requests", 2, 1000)));
    let first = GET.request(&limiter, &set, clock.at(0));
    assert!(first.applies() && !first.limited);
    assert_eq!(
        first.policy.as_ref().map(PolicyRef::as_str),
        Some("shop/api")
    );
    assert_eq!(
        (first.limit, first.remaining, first.reset),
        (2, 1, Duration::from_secs(1))
    );
    assert_eq!(
        first.applied,
        first.policy.iter().cloned().collect::<Vec<_>>()
    );
    GET.request(&limiter, &set, clock.at(100));
    let third = GET.request(&limiter, &set, clock.at(300));
    assert!(third.limited);
    assert_eq!(
        (third.limit, third.remaining, third.reset),
        (2, 0, Duration::from_millis(700))
    );
    assert!(third.shadow_limited.is_empty());
}

#[test]
fn per_source_buckets_are_independent() {
    let clock = Clock::new();
    let limiter = RateLimiter::default();
    let set = set(&limit("api", &bucket("requests", 2, 1000)));
    let now = clock.at(0);
    assert_eq!(
        passes(3, || GET.request(&limiter, &set, now)),
        [true, true, false]
    );
    let ops = GET.from(OPS_TOOL);
    assert_eq!(
        passes(3, || ops.request(&limiter, &set, now)),
        [true, true, false]
    );
    assert_eq!(limiter.len(), 2);
    // A fill later, each has one again.
    let later = clock.at(1000);
    assert_eq!(
        passes(2, || GET.request(&limiter, &set, later)),
        [true, false]
    );
}

#[test]
fn unauthenticated_callers_share_one_bucket() {
    let clock = Clock::new();
    let limiter = RateLimiter::default();
    let set = set(&limit("api", &bucket("requests", 2, 1000)));
    let now = clock.at(0);
    let anonymous = Call {
        principal: None,
        ..GET
    };
    assert_eq!(
        passes(3, || anonymous.request(&limiter, &set, now)),
        [true, true, false]
    );
    // Still limited: every unauthenticated caller is the same caller.
    assert!(anonymous.request(&limiter, &set, now).limited);
    // Authenticated callers are untouched.
    assert!(!GET.request(&limiter, &set, now).limited);
}

#[test]
fn shared_limits_everyone_together() {
    let clock = Clock::new();
    let limiter = RateLimiter::default();
    let set = set(&limit(
        "api",
        &format!("{}, per: shared", bucket("requests", 3, 1000)),
    ));
    let now = clock.at(0);
    let callers = [
        GET,
        GET.from(OPS_TOOL),
        Call {
            principal: None,
            ..GET
        },
    ];
    let passed: Vec<bool> = callers
        .iter()
        .chain(&callers)
        .map(|call| !call.request(&limiter, &set, now).limited)
        .collect();
    assert_eq!(passed, [true, true, true, false, false, false]);
    assert_eq!(limiter.len(), 1);
}

#[test]
fn shadow_counts_but_never_limits() {
    let clock = Clock::new();
    let limiter = RateLimiter::default();
    let set = set(&limit(
        "trial",
        &format!("{}, mode: shadow", bucket("requests", 1, 1000)),
    ));
    let now = clock.at(0);
    let first = GET.request(&limiter, &set, now);
    assert!(first.applies() && !first.limited && first.shadow_limited.is_empty());
    for _ in 0..3 {
        let outcome = GET.request(&limiter, &set, now);
        assert!(!outcome.limited);
        let shadow: Vec<&str> = outcome
            .shadow_limited
            .iter()
            .map(PolicyRef::as_str)
            .collect();
        assert_eq!(shadow, ["shop/trial"]);
        assert_eq!(outcome.remaining, 0);
    }
}

#[test]
fn every_applicable_policy_takes_a_token_and_the_tightest_decides() {
    let clock = Clock::new();
    let limiter = RateLimiter::default();
    let wide = limit("wide", &bucket("requests", 5, 10_000));
    let tight = limit("tight", &bucket("requests", 2, 1000));
    let trial = limit(
        "trial",
        &format!("{}, mode: shadow", bucket("requests", 1, 1000)),
    );
    let set = set(&(wide + &tight + &trial));
    let now = clock.at(0);
    let name = |o: &RateOutcome| o.policy.as_ref().map(|p| p.name().to_owned());
    let first = GET.request(&limiter, &set, now);
    assert_eq!(first.applied.len(), 3);
    // The tightest enforce bucket speaks, not the emptier shadow one.
    assert_eq!((name(&first), first.remaining), (Some("tight".into()), 1));
    GET.request(&limiter, &set, now);
    let third = GET.request(&limiter, &set, now);
    assert!(third.limited);
    assert_eq!((name(&third), third.remaining), (Some("tight".into()), 0));
    // Limited calls are refunded: `wide` kept its three tokens, so `tight`
    // is still the one named, and after one `tight` fill a call passes.
    GET.request(&limiter, &set, now);
    GET.request(&limiter, &set, now);
    let sixth = GET.request(&limiter, &set, now);
    assert_eq!(
        (name(&sixth), sixth.reset),
        (Some("tight".into()), Duration::from_secs(1))
    );
    let later = GET.request(&limiter, &set, clock.at(1000));
    assert!(!later.limited);
    assert_eq!((name(&later), later.remaining), (Some("tight".into()), 0));
}

#[test]
fn connections_and_requests_are_counted_apart() {
    let clock = Clock::new();
    let limiter = RateLimiter::default();
    let conns = limit("conns", &bucket("connections", 1, 1000));
    let reqs = limit("reqs", &bucket("requests", 2, 1000));
    let set = set(&(conns + &reqs));
    let now = clock.at(0);
    let conn = GET.connection(&limiter, &set, now);
    let names: Vec<&str> = conn.applied.iter().map(PolicyRef::name).collect();
    assert_eq!(names, ["conns"]);
    assert!(GET.connection(&limiter, &set, now).limited);
    // Requests have their own bucket, untouched by the connections.
    assert_eq!(
        passes(3, || GET.request(&limiter, &set, now)),
        [true, true, false]
    );
    assert_eq!(limiter.len(), 2);
}

#[test]
fn match_fields_choose_which_calls_count() {
    let clock = Clock::new();
    let now = clock.at(0);
    let cases: &[(&str, Call<'_>, bool)] = &[
        ("principals: [cluster.local/ns/shop/sa/frontend]", GET, true),
        (
            "principals: [cluster.local/ns/shop/sa/frontend]",
            GET.from(OPS_TOOL),
            false,
        ),
        ("principals: ['*/sa/frontend']", GET, true),
        (
            "principals: ['*']",
            Call {
                principal: None,
                ..GET
            },
            false,
        ),
        ("namespaces: [ops]", GET.from(OPS_TOOL), true),
        ("namespaces: [ops]", GET, false),
        ("namespaces: [sh*]", GET, true),
        ("ports: ['8080']", GET, true),
        ("ports: [9000]", GET, false),
        ("methods: [GET, HEAD]", GET, true),
        ("methods: [POST]", GET, false),
        // Case folds towards counting: `get` cannot dodge a GET limit.
        (
            "methods: [GET]",
            Call {
                method: "get",
                ..GET
            },
            true,
        ),
        ("paths: [/api/*]", GET, true),
        (
            "paths: [/api/*]",
            Call {
                path: "/API/items",
                ..GET
            },
            true,
        ),
        ("paths: [/admin]", GET, false),
        ("paths: ['*/items']", GET, true),
        // Fields AND together.
        ("namespaces: [shop], methods: [POST]", GET, false),
        (
            "namespaces: [shop], ports: [8080], paths: [/api/items]",
            GET,
            true,
        ),
    ];
    for (fields, call, applies) in cases {
        let limiter = RateLimiter::default();
        let fields = format!("{}, match: {{{fields}}}", bucket("requests", 5, 1000));
        let set = set(&limit("m", &fields));
        let outcome = call.request(&limiter, &set, now);
        assert_eq!(outcome.applies(), *applies, "{fields} for {call:?}");
    }
}

#[test]
fn selectors_and_namespaces_scope_policies() {
    let clock = Clock::new();
    let now = clock.at(0);
    let rule = bucket("connections", 5, 1000);
    let cases = [
        (limit_in("shop", "{}", "ns", &rule), true),
        (limit_in("istio-system", "{}", "mesh", &rule), true),
        (
            limit_in(
                "istio-system",
                "{matchLabels: {app: backend}}",
                "root",
                &rule,
            ),
            true,
        ),
        (limit_in("data", "{}", "elsewhere", &rule), false),
        (
            limit_in("shop", "{matchLabels: {app: cache}}", "cache", &rule),
            false,
        ),
    ];
    for (yaml, applies) in cases {
        let limiter = RateLimiter::default();
        let outcome = GET.connection(&limiter, &set(&yaml), now);
        assert_eq!(outcome.applies(), applies, "{yaml}");
    }
}

#[test]
fn request_limits_without_the_request_count_by_default() {
    let clock = Clock::new();
    let limiter = RateLimiter::default();
    let set = set(&limit(
        "m",
        &format!(
            "{}, match: {{methods: [POST]}}",
            bucket("requests", 5, 1000)
        ),
    ));
    let labels = BTreeMap::from([("app".to_owned(), "backend".to_owned())]);
    let conn = Connection {
        source: Source {
            principal: Some(FRONTEND),
            ip: None,
        },
        destination: Destination {
            namespace: "shop",
            name: "backend",
            labels: &labels,
            port: 8080,
        },
    };
    let outcome = limiter.check(&set, &conn, None, LimitKind::Requests, clock.at(0));
    assert!(outcome.applies());
}

// ---- bounded memory -------------------------------------------------------

/// `n` distinct callers, as a flood would bring.
fn principals(prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("spiffe://cluster.local/ns/{prefix}/sa/{i}"))
        .collect()
}

#[test]
fn a_flood_of_identities_keeps_the_bucket_count_bounded() {
    let clock = Clock::new();
    // 32 shards of 64.
    let limiter = RateLimiter::new(2048);
    let set = set(&limit("api", &bucket("requests", 5, 10_000)));
    for (i, principal) in principals("flood", 20_480).iter().enumerate() {
        let now = clock.at(i as u64 / 8);
        let outcome = GET.from(principal).request(&limiter, &set, now);
        assert!(!outcome.limited, "a new caller starts with a full bucket");
        assert!(limiter.len() <= 2048, "{} buckets", limiter.len());
    }
    let len = limiter.len();
    assert!(len >= 1024, "shards hold their share: {len}");
}

/// A million callers with distinct identities (buckets are kept per
/// identity; callers without one share a bucket), at the default cap: the
/// bucket count never passes it.
#[test]
fn a_million_distinct_sources_stay_within_the_default_bucket_cap() {
    let clock = Clock::new();
    let limiter = RateLimiter::default();
    let set = set(&limit("api", &bucket("requests", 5, 10_000)));
    for i in 0..1_000_000u64 {
        let principal = format!("spiffe://cluster.local/ns/flood/sa/{i}");
        GET.from(&principal)
            .request(&limiter, &set, clock.at(i / 64));
        if i % 50_000 == 0 {
            assert!(
                limiter.len() <= DEFAULT_MAX_BUCKETS,
                "{} buckets",
                limiter.len()
            );
        }
    }
    assert!(
        limiter.len() <= DEFAULT_MAX_BUCKETS,
        "{} buckets",
        limiter.len()
    );
}

#[test]
fn idle_buckets_are_evicted_before_recently_used_ones() {
    let clock = Clock::new();
    let limiter = RateLimiter::with_shards(3, 1);
    let set = set(&limit("api", &bucket("requests", 5, 1000)));
    let callers = principals("idle", 4);
    let [a, b, c, d] = [0, 1, 2, 3].map(|i| callers[i].as_str());
    // a drains at 0; c takes one token at 500 (refilled at 1500); b drains at 1900.
    passes(5, || GET.from(a).request(&limiter, &set, clock.at(0)));
    GET.from(c).request(&limiter, &set, clock.at(500));
    passes(5, || GET.from(b).request(&limiter, &set, clock.at(1900)));
    // d needs room at 2000: c is full again, though a was used longer ago.
    GET.from(d).request(&limiter, &set, clock.at(2000));
    assert_eq!(limiter.len(), 3);
    let now = clock.at(2000);
    // a kept its state (2 of 5 back), b too (0 back); c starts afresh.
    assert_eq!(GET.from(a).request(&limiter, &set, now).remaining, 1);
    assert!(GET.from(b).request(&limiter, &set, now).limited);
}

#[test]
fn a_flood_does_not_reset_a_depleted_caller() {
    let clock = Clock::new();
    let limiter = RateLimiter::new(64);
    let set = set(&limit("api", &bucket("requests", 5, 10_000)));
    let victim = GET.from(OPS_TOOL);
    let drained = passes(6, || victim.request(&limiter, &set, clock.at(0)));
    assert_eq!(drained, [true, true, true, true, true, false]);
    // Ten times the capacity of fresh identities, one call each, while the
    // victim backs off and so is the least recently used bucket.
    for (i, principal) in principals("flood", 640).iter().enumerate() {
        GET.from(principal)
            .request(&limiter, &set, clock.at(1 + i as u64));
    }
    assert!(victim.request(&limiter, &set, clock.at(1000)).limited);
}

/// The documented price of a reset: buckets at least as far from full as
/// the victim's. Then the victim's goes first, and starts full.
#[test]
fn a_flood_as_depleted_as_the_victim_can_reset_it() {
    let clock = Clock::new();
    let limiter = RateLimiter::with_shards(4, 1);
    let set = set(&limit("api", &bucket("requests", 5, 10_000)));
    let victim = GET.from(OPS_TOOL);
    passes(6, || victim.request(&limiter, &set, clock.at(0)));
    for (i, principal) in principals("deep", 3).iter().enumerate() {
        passes(5, || {
            GET.from(principal)
                .request(&limiter, &set, clock.at(10 + i as u64))
        });
    }
    GET.from(FRONTEND).request(&limiter, &set, clock.at(20));
    assert_eq!(victim.request(&limiter, &set, clock.at(30)).remaining, 4);
}

// ---- reloads --------------------------------------------------------------

#[test]
fn a_reload_keeps_buckets_of_unchanged_policies_only() {
    let clock = Clock::new();
    let limiter = RateLimiter::default();
    let api = limit("api", &bucket("requests", 2, 1000));
    let v1 = set(&api);
    let now = clock.at(0);
    passes(2, || GET.request(&limiter, &v1, now));
    // Same policy, another added: the bucket is still empty.
    let v2 = set(&(api.clone() + &limit("other", &bucket("connections", 1, 1000))));
    assert!(GET.request(&limiter, &v2, now).limited);
    // New numbers: a fresh bucket.
    let v3 = set(&limit("api", &bucket("requests", 3, 1000)));
    let outcome = GET.request(&limiter, &v3, now);
    assert_eq!((outcome.limited, outcome.remaining), (false, 2));
    // A mode change is a new limit too.
    let v4 = set(&limit(
        "api",
        &format!("{}, mode: shadow", bucket("requests", 3, 1000)),
    ));
    assert_eq!(GET.request(&limiter, &v4, now).remaining, 2);
    assert_eq!(limiter.len(), 3);
    limiter.retain_policies(&v3);
    assert_eq!(limiter.len(), 1);
    assert_eq!(GET.request(&limiter, &v3, now).remaining, 1);
}

#[test]
fn concurrent_callers_never_get_more_than_the_bucket_holds() {
    let clock = Clock::new();
    let limiter = RateLimiter::default();
    let fields = format!("{}, per: shared", bucket("requests", 100, 1000));
    let set = set(&limit("api", &fields));
    let now = clock.at(0);
    let passed: usize = std::thread::scope(|s| {
        let workers: Vec<_> = (0..4)
            .map(|_| s.spawn(|| passes(100, || GET.request(&limiter, &set, now))))
            .collect();
        let joined = workers.into_iter().map(|w| w.join().expect("worker"));
        joined.map(|p| p.into_iter().filter(|&ok| ok).count()).sum()
    });
    assert_eq!(passed, 100);
}

#[test]
fn limiter_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<RateLimiter>();
    assert_send_sync::<RateOutcome>();
}

#[test]
fn a_caller_over_its_own_limit_does_not_drain_a_shared_bucket() {
    let clock = Clock::new();
    let limiter = RateLimiter::default();
    let yaml = limit("per-caller", &bucket("requests", 1, 60_000))
        + &limit(
            "shared",
            &format!("{}, per: shared", bucket("requests", 3, 60_000)),
        );
    let set = set(&yaml);
    let now = clock.at(0);
    // GET's caller spends its one token, then is refused five times.
    assert_eq!(
        passes(6, || GET.request(&limiter, &set, now)),
        [true, false, false, false, false, false]
    );
    // The refusals cost the shared bucket nothing: two more callers pass.
    assert!(!GET.from(OPS_TOOL).request(&limiter, &set, now).limited);
    let anonymous = Call {
        principal: None,
        ..GET
    };
    assert!(!anonymous.request(&limiter, &set, now).limited);
}
