use super::*;

fn key(source: &str, destination: &str, port: u16) -> EdgeKey {
    EdgeKey {
        source: End::new(EndKind::Workload, "shop", source),
        destination: End::new(EndKind::Service, "shop", destination),
        port,
    }
}

/// `n` distinct keys that fall in one shard.
fn same_shard(n: usize) -> Vec<EdgeKey> {
    let first = shard_of(&key("w0", "api", 80));
    (0..)
        .map(|i| key(&format!("w{i}"), "api", 80))
        .filter(|k| shard_of(k) == first)
        .take(n)
        .collect()
}

/// A key in another shard than `k`'s.
fn other_shard(k: &EdgeKey) -> EdgeKey {
    (0..)
        .map(|i| key(&format!("x{i}"), "api", 80))
        .find(|o| shard_of(o) != shard_of(k))
        .expect("another shard")
}

fn only(table: &FlowMap) -> EdgeSnapshot {
    let snap = table.snapshot(Duration::from_secs(300));
    assert_eq!(snap.edges.len(), 1, "{snap:?}");
    snap.edges[0].clone()
}

#[test]
fn one_edge_counts_connections_bytes_requests_and_decisions() {
    let table = FlowMap::new(10).expect("cap");
    let flow = table.edge(key("web", "api", 80));
    flow.opened();
    flow.opened();
    flow.closed(10, 20);
    for status in [200, 204, 302, 403, 429, 503, 99, 600] {
        flow.request(status);
    }
    flow.authz(Verdict::Allow, "shop/allow-web");
    flow.authz(Verdict::Allow, "shop/allow-web");
    flow.authz(Verdict::Deny, "default");
    flow.authz(Verdict::Audit, "shop/audit");
    flow.ratelimit(RateLimitOutcome::Allowed);
    flow.ratelimit(RateLimitOutcome::Limited);
    flow.ratelimit(RateLimitOutcome::ShadowLimited);
    flow.error(&"x".repeat(1000));
    let e = only(&table);
    assert_eq!((e.opened, e.active), (2, 1));
    assert_eq!((e.bytes_sent, e.bytes_received), (10, 20));
    assert_eq!(e.http, [0, 2, 1, 2, 1]);
    assert_eq!(e.authz, [2, 1, 1]);
    assert_eq!(e.ratelimit, [1, 1, 1]);
    assert_eq!(
        e.policies,
        vec![
            ("shop/allow-web".to_owned(), [2, 0, 0]),
            ("default".to_owned(), [0, 1, 0]),
            ("shop/audit".to_owned(), [0, 0, 1]),
        ]
    );
    let (_, error) = e.last_error.expect("error kept");
    assert_eq!(error.len(), MAX_ERROR);
    assert!(e.first_seen <= e.last_seen);
}

#[test]
fn the_same_key_is_the_same_edge() {
    let table = FlowMap::new(10).expect("cap");
    table.edge(key("web", "api", 80)).opened();
    table.edge(key("web", "api", 80)).opened();
    table.edge(key("web", "api", 81)).opened();
    let snap = table.snapshot(Duration::from_secs(300));
    assert_eq!(snap.edges.len(), 2);
    assert_eq!(snap.held, 2);
    let api80 = snap.edges.iter().find(|e| e.key.port == 80).expect("80");
    assert_eq!(api80.opened, 2);
}

#[test]
fn a_full_shard_evicts_its_edge_idle_longest_and_counts_it() {
    // 32 edges: two a shard.
    let table = FlowMap::new(32).expect("cap");
    let keys = same_shard(3);
    let old = table.edge(keys[0].clone());
    old.opened();
    old.closed(1, 1);
    drop(old);
    std::thread::sleep(Duration::from_millis(5));
    let newer = table.edge(keys[1].clone());
    newer.opened();
    newer.closed(1, 1);
    drop(newer);
    let _third = table.edge(keys[2].clone());
    let snap = table.snapshot(Duration::from_secs(300));
    let held: Vec<&EdgeKey> = snap.edges.iter().map(|e| &e.key).collect();
    assert!(held.len() == 2 && !held.contains(&&keys[0]), "{held:?}");
    assert_eq!((snap.held, snap.evicted, snap.dropped), (2, 1, 0));
}

#[test]
fn a_new_edge_never_evicts_from_another_shard() {
    // One edge a shard: an idle edge elsewhere is not this shard's to take.
    let table = FlowMap::new(16).expect("cap");
    let busy = table.edge(key("busy", "api", 80));
    let elsewhere = other_shard(&busy_key());
    drop(table.edge(elsewhere.clone()));
    let mut same = (0..)
        .map(|i| key(&format!("n{i}"), "api", 80))
        .filter(|k| shard_of(k) == shard_of(&busy_key()) && *k != busy_key());
    let new = table.edge(same.next().expect("a key"));
    assert!(!new.is_counting());
    let snap = table.snapshot(Duration::from_secs(300));
    assert_eq!((snap.held, snap.evicted, snap.dropped), (2, 0, 1));
    assert!(snap.edges.iter().any(|e| e.key == elsewhere));
    drop(busy);
}

fn busy_key() -> EdgeKey {
    key("busy", "api", 80)
}

#[test]
fn an_edge_is_busy_from_its_lookup_while_the_connection_dials() {
    let table = FlowMap::new(16).expect("cap");
    let keys = same_shard(2);
    // Looked up, not yet relaying (dialling): must not be evicted.
    let dialling = table.edge(keys[0].clone());
    assert_eq!(only(&table).active, 1);
    assert!(!table.edge(keys[1].clone()).is_counting());
    dialling.opened();
    let also = dialling.clone();
    drop(dialling);
    assert_eq!(only(&table).active, 1);
    drop(also);
    assert_eq!(only(&table).active, 0);
    assert!(table.edge(keys[1].clone()).is_counting());
    let snap = table.snapshot(Duration::from_secs(300));
    assert_eq!((snap.held, snap.evicted, snap.dropped), (1, 1, 1));
}

#[test]
fn a_port_scan_of_unknown_destinations_makes_one_edge() {
    let table = FlowMap::new(MAX_EDGES).expect("cap");
    let source = End::new(EndKind::Workload, "shop", "web");
    for port in 1..=u16::MAX {
        table.edge(EdgeKey::new(source.clone(), End::unknown(), port));
    }
    let e = only(&table);
    assert_eq!(e.key.port, 0);
    // Known destinations keep their port.
    let api = End::new(EndKind::Service, "shop", "api");
    assert_eq!(EdgeKey::new(source, api, 8080).port, 8080);
}

#[test]
fn busy_edges_are_never_evicted_and_the_new_edge_is_dropped() {
    let table = FlowMap::new(32).expect("cap");
    let keys = same_shard(3);
    let _a = table.edge(keys[0].clone());
    let _b = table.edge(keys[1].clone());
    let dropped = table.edge(keys[2].clone());
    assert!(!dropped.is_counting());
    dropped.opened();
    let snap = table.snapshot(Duration::from_secs(300));
    assert_eq!(snap.edges.len(), 2);
    assert_eq!((snap.held, snap.evicted, snap.dropped), (2, 0, 1));
    assert!(snap.edges.iter().all(|e| e.key != keys[2]));
}

#[test]
fn the_cap_holds_under_many_new_edges() {
    // 7 edges a shard (100 / 16 rounded up): at most 112.
    let table = FlowMap::new(100).expect("cap");
    for i in 0..1_000 {
        let flow = table.edge(key(&format!("w{i}"), "api", 80));
        flow.opened();
        flow.closed(0, 0);
    }
    let snap = table.snapshot(Duration::from_secs(300));
    assert!(
        (100..=112).contains(&snap.edges.len()),
        "{}",
        snap.edges.len()
    );
    assert_eq!(snap.held, snap.edges.len() as u64);
    assert_eq!((snap.held + snap.evicted, snap.dropped), (1_000, 0));
    for shard in &table.shards {
        assert!(lock(shard).len() <= 7);
    }
}

#[test]
fn the_cap_is_checked() {
    assert_eq!(FlowMap::new(0).err(), Some(InvalidMaxEdges(0)));
    assert_eq!(
        FlowMap::new(MAX_EDGES + 1).err(),
        Some(InvalidMaxEdges(MAX_EDGES + 1))
    );
    assert!(FlowMap::new(MAX_EDGES).is_ok());
}

#[test]
fn the_window_leaves_out_idle_edges_but_keeps_open_ones() {
    let table = FlowMap::new(10).expect("cap");
    let idle = table.edge(key("idle", "api", 80));
    idle.opened();
    idle.closed(0, 0);
    drop(idle);
    let open = table.edge(key("open", "api", 80));
    open.opened();
    std::thread::sleep(Duration::from_millis(20));
    let snap = table.snapshot(Duration::from_millis(1));
    let names: Vec<&str> = snap
        .edges
        .iter()
        .map(|e| e.key.source.name.as_str())
        .collect();
    assert_eq!(names, ["open"]);
    assert_eq!(snap.held, 2);
}

#[test]
fn policies_past_the_cap_are_counted_together() {
    let table = FlowMap::new(10).expect("cap");
    let flow = table.edge(key("web", "api", 80));
    for i in 0..MAX_POLICIES + 5 {
        flow.authz(Verdict::Deny, &format!("shop/p{i}"));
    }
    let e = only(&table);
    assert_eq!(e.policies.len(), MAX_POLICIES + 1);
    assert_eq!(
        e.policies.last(),
        Some(&(OTHER_POLICIES.to_owned(), [0, 5, 0]))
    );
    assert_eq!(e.authz, [0, MAX_POLICIES as u64 + 5, 0]);
}

#[test]
fn counts_add_up_under_concurrent_connections() {
    const THREADS: u64 = 8;
    const ROUNDS: u64 = 2_000;
    let table = Arc::new(FlowMap::new(4).expect("cap"));
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let table = table.clone();
            std::thread::spawn(move || {
                for i in 0..ROUNDS {
                    // Every connection opens its own handle, as the proxy does.
                    let flow = table.edge(key("web", "api", 80));
                    flow.opened();
                    flow.request(200);
                    flow.authz(Verdict::Allow, if i % 2 == 0 { "shop/a" } else { "shop/b" });
                    flow.ratelimit(RateLimitOutcome::Allowed);
                    flow.closed(t, 1);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    let e = only(&table);
    let n = THREADS * ROUNDS;
    assert_eq!((e.opened, e.active), (n, 0));
    assert_eq!(e.bytes_sent, ROUNDS * (0..THREADS).sum::<u64>());
    assert_eq!(e.bytes_received, n);
    assert_eq!(e.http[1], n);
    assert_eq!(e.authz, [n, 0, 0]);
    assert_eq!(e.ratelimit, [n, 0, 0]);
    let mut policies = e.policies.clone();
    policies.sort();
    assert_eq!(
        policies,
        vec![
            ("shop/a".to_owned(), [n / 2, 0, 0]),
            ("shop/b".to_owned(), [n / 2, 0, 0])
        ]
    );
}

#[test]
fn the_empty_handle_counts_nothing() {
    let flow = Flow::none();
    flow.opened();
    flow.closed(1, 1);
    flow.request(200);
    flow.authz(Verdict::Deny, "default");
    flow.error("boom");
    assert!(!flow.is_counting());
}
