use super::*;

fn key(source: &str, destination: &str, port: u16) -> EdgeKey {
    EdgeKey {
        source: End::new(EndKind::Workload, "shop", source),
        destination: End::new(EndKind::Service, "shop", destination),
        port,
    }
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
fn a_full_table_evicts_the_edge_idle_longest_and_counts_it() {
    let table = FlowMap::new(2).expect("cap");
    let old = table.edge(key("old", "api", 80));
    old.opened();
    old.closed(1, 1);
    std::thread::sleep(Duration::from_millis(5));
    let newer = table.edge(key("newer", "api", 80));
    newer.opened();
    newer.closed(1, 1);
    table.edge(key("third", "api", 80)).opened();
    let snap = table.snapshot(Duration::from_secs(300));
    let sources: Vec<&str> = snap
        .edges
        .iter()
        .map(|e| e.key.source.name.as_str())
        .collect();
    assert_eq!(snap.edges.len(), 2);
    assert!(
        sources.contains(&"newer") && sources.contains(&"third"),
        "{sources:?}"
    );
    assert_eq!((snap.held, snap.evicted, snap.dropped), (2, 1, 0));
}

#[test]
fn busy_edges_are_never_evicted_and_the_new_edge_is_dropped() {
    let table = FlowMap::new(2).expect("cap");
    table.edge(key("a", "api", 80)).opened();
    table.edge(key("b", "api", 80)).opened();
    let dropped = table.edge(key("c", "api", 80));
    assert!(!dropped.is_counting());
    dropped.opened();
    let snap = table.snapshot(Duration::from_secs(300));
    assert_eq!(snap.edges.len(), 2);
    assert_eq!((snap.held, snap.evicted, snap.dropped), (2, 0, 1));
    assert!(snap.edges.iter().all(|e| e.key.source.name != "c"));
}

#[test]
fn the_cap_holds_under_many_new_edges() {
    let table = FlowMap::new(100).expect("cap");
    for i in 0..1_000 {
        let flow = table.edge(key(&format!("w{i}"), "api", 80));
        flow.opened();
        flow.closed(0, 0);
    }
    let snap = table.snapshot(Duration::from_secs(300));
    assert_eq!(snap.edges.len(), 100);
    assert_eq!((snap.held, snap.evicted, snap.dropped), (100, 900, 0));
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
    table.edge(key("open", "api", 80)).opened();
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
