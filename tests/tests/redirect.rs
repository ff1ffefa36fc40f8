//! End-to-end: transparent redirection of pod connections into the node proxy,
//! with real BPF programs in the kernel and real network namespaces.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use nodeward_tests::{require_root, Cluster};

const PORT: u16 = 9000;

fn addr(ip: std::net::IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

/// Waits for a proxy's access log to hold `n` records matching `pred`.
fn access_records(
    c: &Cluster,
    node: &str,
    n: usize,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> Vec<serde_json::Value> {
    c.access_records(node, n, pred)
}

#[test]
fn cross_node_bytes_arrive_intact_through_the_proxy() {
    if !require_root("cross_node_bytes_arrive_intact_through_the_proxy") {
        return;
    }
    let mut c = Cluster::start();
    c.serve_echo("backend", PORT);
    let to = addr(c.ip4("backend"), PORT);
    for (i, size) in [1usize, 1 << 20].into_iter().enumerate() {
        let r = c.call("frontend", to, size);
        assert_eq!(r["intact"], true, "size {size}: {r}");
        assert_eq!(
            r["received"].as_u64(),
            Some(size as u64 + format!("#eof:{size}").len() as u64)
        );
        // The server saw its own node proxy's address, not the pod: the
        // connection went through both proxies.
        let peers = c.accepted("backend", PORT);
        assert_eq!(peers.len(), i + 1);
        assert!(
            peers[i].starts_with(&format!("{}:", c.gateway4("node-b"))),
            "peer {}",
            peers[i]
        );
    }
    let recs = access_records(&c, "node-a", 2, |r| r["event"] == "connection");
    assert_eq!(recs.len(), 2, "{recs:?}");
    for r in &recs {
        assert_eq!(r["source"], "shop/frontend");
        assert_eq!(r["orig_dst"], to.to_string());
        assert_eq!(r["destination"], "shop/backend");
        assert_eq!(
            r["peer"].as_str().map(|p| p.starts_with("10.20.1.10:")),
            Some(true),
            "{r}"
        );
    }
    assert_eq!(recs[1]["bytes_sent"], 1 << 20);
    assert_eq!(
        recs[1]["bytes_received"].as_u64(),
        Some((1 << 20) + "#eof:1048576".len() as u64)
    );
    let opened = c.metric(
        "node-a",
        "nodeward_connections_opened_total",
        &[
            ("source_workload", "frontend"),
            ("destination_workload", "backend"),
        ],
    );
    assert_eq!(opened, 2.0);
    assert!(
        c.metric(
            "node-a",
            "nodeward_bpf_redirects_total",
            &[("family", "ipv4")]
        ) >= 2.0
    );
}

#[test]
fn ipv6_and_v4_mapped_destinations_are_redirected() {
    if !require_root("ipv6_and_v4_mapped_destinations_are_redirected") {
        return;
    }
    let mut c = Cluster::start();
    c.serve_echo("db", PORT);
    let v6 = addr(c.ip6("db"), PORT);
    let r = c.call("cache", v6, 4096);
    assert_eq!(r["intact"], true, "{r}");
    let mapped: SocketAddr = format!("[::ffff:{}]:{PORT}", c.ip4("db"))
        .parse()
        .expect("addr");
    let r = c.call("cache", mapped, 4096);
    assert_eq!(r["intact"], true, "{r}");
    let recs = access_records(&c, "node-a", 2, |r| r["event"] == "connection");
    let dsts: Vec<_> = recs
        .iter()
        .map(|r| r["orig_dst"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(dsts, [v6.to_string(), addr(c.ip4("db"), PORT).to_string()]);
    assert!(recs.iter().all(|r| r["source"] == "shop/cache"));
    assert_eq!(
        c.metric(
            "node-a",
            "nodeward_bpf_redirects_total",
            &[("family", "ipv6")]
        ),
        2.0
    );
}

#[test]
fn same_node_pod_to_pod_goes_through_the_proxy() {
    if !require_root("same_node_pod_to_pod_goes_through_the_proxy") {
        return;
    }
    let mut c = Cluster::start();
    c.serve_echo("cache", PORT);
    let to = addr(c.ip4("cache"), PORT);
    let r = c.call("frontend", to, 10_000);
    assert_eq!(r["intact"], true, "{r}");
    let peers = c.accepted("cache", PORT);
    assert!(
        peers[0].starts_with(&format!("{}:", c.gateway4("node-a"))),
        "{peers:?}"
    );
    let recs = access_records(&c, "node-a", 1, |r| r["event"] == "connection");
    assert_eq!(recs[0]["source"], "shop/frontend");
    assert_eq!(recs[0]["destination"], "shop/cache");
    assert!(c
        .access_log("node-b")
        .iter()
        .all(|r| r["event"] != "connection"));
}

#[test]
fn destinations_outside_the_mesh_are_not_redirected() {
    if !require_root("destinations_outside_the_mesh_are_not_redirected") {
        return;
    }
    let mut c = Cluster::start();
    c.serve_echo_on_node("node-b", PORT);
    let to = addr(c.node_ip("node-b"), PORT);
    let r = c.call("frontend", to, 100);
    assert_eq!(r["intact"], true, "{r}");
    // The server sees the pod itself: no proxy in between.
    let peers = c.accepted("node-b", PORT);
    assert!(
        peers[0].starts_with(&format!("{}:", c.ip4("frontend"))),
        "{peers:?}"
    );
    assert_eq!(c.metric("node-a", "nodeward_bpf_redirects_total", &[]), 0.0);
    assert!(c.access_log("node-a").is_empty());
}

#[test]
fn connects_from_the_proxys_own_namespace_are_never_redirected() {
    if !require_root("connects_from_the_proxys_own_namespace_are_never_redirected") {
        return;
    }
    // A process in node-a's network namespace (the proxy's) but in an
    // enrolled pod's cgroup, where the programs run: as a node proxy
    // deployed below the pods' cgroup is. Only the netns cookie tells it
    // from a pod, so this checks the cookie the proxy found (learned by a
    // BPF program on kernels without SO_NETNS_COOKIE).
    let mut c = Cluster::start();
    c.serve_echo_on_node("node-a", PORT);
    let to = addr(c.gateway4("node-a"), PORT);
    let r = c.call_in(&c.ns("node-a"), &c.cgroup_of("frontend"), to, 100);
    assert_eq!(r["intact"], true, "{r}");
    assert_eq!(c.accepted("node-a", PORT).len(), 1);
    let skipped = "nodeward_bpf_proxy_sockets_skipped_total";
    assert!(
        c.metric("node-a", skipped, &[]) >= 1.0,
        "not counted as the proxy's own"
    );
    assert_eq!(c.metric("node-a", "nodeward_bpf_redirects_total", &[]), 0.0);
    assert!(c.access_log("node-a").is_empty());
}

#[test]
fn direct_dial_of_the_outbound_port_is_refused_and_counted() {
    if !require_root("direct_dial_of_the_outbound_port_is_refused_and_counted") {
        return;
    }
    let c = Cluster::start();
    let to = addr(c.gateway4("node-a"), nodeward_tests::OUTBOUND_PORT);
    let r = c.call("frontend", to, 10);
    assert_eq!(r["intact"], false, "{r}");
    assert_eq!(r["received"], 0, "{r}");
    let refused = access_records(&c, "node-a", 1, |r| r["event"] == "refused");
    assert_eq!(refused[0]["reason"], "no_kernel_record");
    assert_eq!(
        c.metric(
            "node-a",
            "nodeward_outbound_refused_total",
            &[("reason", "no_kernel_record")]
        ),
        1.0
    );
    assert_eq!(
        c.metric("node-a", "nodeward_connections_opened_total", &[]),
        0.0
    );
}

#[test]
fn after_the_proxy_stops_connections_go_direct() {
    if !require_root("after_the_proxy_stops_connections_go_direct") {
        return;
    }
    let mut c = Cluster::start();
    c.serve_echo("cache", PORT);
    c.serve_echo("backend", PORT);
    let to_cache = addr(c.ip4("cache"), PORT);
    assert_eq!(c.call("frontend", to_cache, 100)["intact"], true);
    let status = c.stop_proxy("node-a");
    assert!(
        status.success(),
        "proxy exit {status:?}: {}",
        c.proxy_log("node-a")
    );
    assert!(c.proxy_log("node-a").contains("stopped"));
    // Same node: nothing is attached any more, the pod reaches its neighbour itself.
    let r = c.call("frontend", to_cache, 100);
    assert_eq!(r["intact"], true, "{r}");
    let peers = c.accepted("cache", PORT);
    assert!(
        peers[0].starts_with(&format!("{}:", c.gateway4("node-a"))),
        "{peers:?}"
    );
    assert!(
        peers[1].starts_with(&format!("{}:", c.ip4("frontend"))),
        "{peers:?}"
    );
    // Another node still enforces STRICT: plaintext from the proxy-less node fails closed.
    let r = c.call("frontend", addr(c.ip4("backend"), PORT), 100);
    assert_eq!(r["connected"], false, "{r}");
    assert!(c.accepted("backend", PORT).is_empty());
    assert!(
        peers[1].starts_with(&format!("{}:", c.ip4("frontend"))),
        "{peers:?}"
    );
}

#[test]
fn short_connections_leave_the_kernel_maps_empty() {
    if !require_root("short_connections_leave_the_kernel_maps_empty") {
        return;
    }
    let mut c = Cluster::start();
    c.serve_echo("backend", PORT);
    c.serve_echo("cache", PORT);
    assert_eq!(
        c.call_many("frontend", addr(c.ip4("backend"), PORT), 64, 100),
        100
    );
    assert_eq!(
        c.call_many("frontend", addr(c.ip4("cache"), PORT), 64, 100),
        100
    );
    // A connection to a closed port fails after its SYN: the record must still go.
    let r = c.call("frontend", addr(c.ip4("backend"), PORT + 1), 1);
    assert_eq!(r["intact"], false);
    let deadline = Instant::now() + Duration::from_secs(10);
    let entries = loop {
        let text = c.metrics("node-a");
        let flows =
            nodeward_tests::metric_value(&text, "nodeward_bpf_map_entries", &[("map", "flows")]);
        let cookies = nodeward_tests::metric_value(
            &text,
            "nodeward_bpf_map_entries",
            &[("map", "by_cookie")],
        );
        if (flows, cookies) == (0.0, 0.0) || Instant::now() > deadline {
            break (flows, cookies);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(entries, (0.0, 0.0));
    assert!(
        c.metric(
            "node-a",
            "nodeward_bpf_redirects_total",
            &[("family", "ipv4")]
        ) >= 201.0
    );
    assert_eq!(
        c.metric(
            "node-a",
            "nodeward_connections_opened_total",
            &[("reporter", "source")]
        ),
        200.0
    );
}

#[test]
fn a_restarted_proxy_captures_again() {
    if !require_root("a_restarted_proxy_captures_again") {
        return;
    }
    let mut c = Cluster::start();
    c.serve_echo("backend", PORT);
    let to = addr(c.ip4("backend"), PORT);
    assert!(c.stop_proxy("node-a").success());
    c.start_proxy("node-a").expect("restart");
    let r = c.call("frontend", to, 1000);
    assert_eq!(r["intact"], true, "{r}");
    let peers = c.accepted("backend", PORT);
    assert!(
        peers[0].starts_with(&format!("{}:", c.gateway4("node-b"))),
        "{peers:?}"
    );
    let tunnelled = access_records(&c, "node-a", 1, |r| r["path"] == "tunnel");
    assert_eq!(
        tunnelled.len(),
        1,
        "the restarted proxy captured and tunnelled"
    );
}
