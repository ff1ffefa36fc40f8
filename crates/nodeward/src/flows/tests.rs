use super::*;

fn end(kind: &str, name: &str) -> EndReport {
    EndReport {
        kind: kind.into(),
        namespace: "shop".into(),
        name: name.into(),
    }
}

fn edge_on(node: &str, source: &str, opened: u64, deny: u64) -> EdgeReport {
    let mut e = EdgeReport {
        source: end("workload", source),
        destination: end("workload", "backend"),
        port: 8080,
        outcome: String::new(),
        connections: Connections { opened, active: 0 },
        bytes: Bytes2 {
            sent: opened * 10,
            received: opened * 100,
        },
        http: Http::default(),
        authz: Authz {
            allow: 0,
            deny,
            audit: 0,
        },
        rate_limit: RateLimit::default(),
        policies: vec![PolicyCount {
            policy: "default".into(),
            allow: 0,
            deny,
            audit: 0,
        }],
        last_error: None,
        first_seen: 10,
        last_seen: 20,
        nodes: vec![node.into()],
    };
    e.outcome = outcome(&e).into();
    e
}

fn report(node: &str, edges: Vec<EdgeReport>) -> FlowsReport {
    FlowsReport {
        node: node.into(),
        nodes: vec![node.into()],
        unreachable: Vec::new(),
        window_seconds: 300,
        generated_at: 1,
        max_edges: 10,
        held: edges.len() as u64,
        evicted: 1,
        dropped: 2,
        edges,
    }
}

#[test]
fn merging_counts_a_connection_seen_by_both_proxies_once_and_adds_decisions() {
    let a = report("node-a", vec![edge_on("node-a", "web", 5, 0)]);
    let b = report(
        "node-b",
        vec![
            edge_on("node-b", "web", 5, 3),
            edge_on("node-b", "cli", 1, 0),
        ],
    );
    let m = merge("node-a", vec![a, b]);
    assert_eq!(m.nodes, ["node-a", "node-b"]);
    assert_eq!((m.held, m.evicted, m.dropped), (3, 2, 4));
    assert_eq!(m.edges.len(), 2);
    let web = m
        .edges
        .iter()
        .find(|e| e.source.name == "web")
        .expect("web");
    assert_eq!(web.connections.opened, 5);
    assert_eq!(web.bytes.received, 500);
    assert_eq!(web.authz.deny, 3);
    assert_eq!(web.policies[0].deny, 3);
    assert_eq!(web.outcome, "denied");
    assert_eq!(web.nodes, ["node-a", "node-b"]);
}

#[test]
fn outcome_ranks_full_denial_then_limits_then_partial_denial_then_errors() {
    let mut e = edge_on("n", "web", 1, 0);
    assert_eq!(outcome(&e), "allowed");
    e.http.c5 = 1;
    assert_eq!(outcome(&e), "error");
    e.authz.allow = 1;
    e.authz.deny = 1;
    assert_eq!(outcome(&e), "denied");
    e.rate_limit.limited = 1;
    assert_eq!(outcome(&e), "limited");
    e.authz.allow = 0;
    assert_eq!(outcome(&e), "denied");
}

#[test]
fn query_defaults_and_bounds() {
    assert_eq!(
        Query::parse(None),
        Ok(Query {
            window: DEFAULT_WINDOW,
            cluster: false
        })
    );
    let q = Query::parse(Some("since=60&cluster=1")).expect("valid");
    assert_eq!((q.window, q.cluster), (Duration::from_secs(60), true));
    assert_eq!(Query::parse(Some("since=-1")), Err(QueryError::Since));
    assert_eq!(
        Query::parse(Some("cluster=maybe")),
        Err(QueryError::Unknown)
    );
}

#[test]
fn dot_and_table_escape_names_from_the_network() {
    let mut e = edge_on("n", "web\"; evil [x]\\", 1, 1);
    e.destination.name = "back\u{1b}[2Jend".into();
    let r = report("n", vec![e]);
    let dot = dot(&r);
    assert!(dot.contains(r#"label="web\"; evil [x]\\u{005c}""#), "{dot}");
    assert!(!dot.contains('\u{1b}'));
    assert!(dot.contains("color=red"));
    let table = table(&r);
    assert!(!table.contains('\u{1b}'), "{table}");
    assert!(table.contains("denied"));
}

#[test]
fn dot_drops_bidi_overrides_in_names() {
    let mut e = edge_on("n", "web\u{202e}gnp.exe", 1, 0);
    e.destination.namespace = "sh\u{2066}op".into();
    let dot = dot(&report("n", vec![e]));
    assert!(
        !dot.contains('\u{202e}') && !dot.contains('\u{2066}'),
        "{dot}"
    );
    assert!(dot.contains(r"web\\u{202e}gnp.exe"), "{dot}");
}

#[test]
fn counts_at_u64_max_from_a_peer_saturate() {
    let mut big = edge_on("b", "web", 1, u64::MAX);
    big.connections.opened = u64::MAX;
    big.http.c5 = u64::MAX;
    big.rate_limit.limited = u64::MAX;
    big.bytes.sent = u64::MAX;
    let mut a = report("a", vec![edge_on("a", "web", 5, 7)]);
    a.edges[0].http.c5 = 1;
    a.edges[0].rate_limit.limited = 1;
    let mut b = report("b", vec![big]);
    b.held = u64::MAX;
    b.evicted = u64::MAX;
    b.dropped = u64::MAX;
    let m = merge("a", vec![a, b]);
    assert_eq!(
        (m.held, m.evicted, m.dropped),
        (u64::MAX, u64::MAX, u64::MAX)
    );
    let e = &m.edges[0];
    assert_eq!(e.authz.deny, u64::MAX);
    assert_eq!(e.http.c5, u64::MAX);
    assert_eq!(e.rate_limit.limited, u64::MAX);
    assert_eq!(e.policies[0].deny, u64::MAX);
    // The table's sort key adds bytes and connections too.
    assert!(table(&m).contains("denied"));
}

#[test]
fn a_newer_peers_extra_fields_still_parse() {
    let mut v = serde_json::to_value(report("b", vec![edge_on("b", "web", 1, 0)])).expect("json");
    v["futureField"] = serde_json::json!(1);
    v["edges"][0]["futureField"] = serde_json::json!({"x": 1});
    v["edges"][0]["connections"]["futureField"] = serde_json::json!(2);
    let r: FlowsReport = serde_json::from_value(v).expect("parses");
    assert_eq!(r.edges.len(), 1);
}
