//! End-to-end: pods as kubelet lays them out (containers in cgroups below
//! the pod's), opt-in enrolment, and Services resolved by the proxy.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use nodeward_tests::{finish_tool, require_root, Capture, Cluster, Options};
use serde_json::Value;

const PORT: u16 = 9300;
/// A VIP inside the mesh CIDRs, so the kernel hands its connections over.
const VIP: &str = "10.20.200.10";
const VIP_PORT: u16 = 80;

fn addr(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

fn spiffe(ns: &str, sa: &str) -> String {
    format!("spiffe://cluster.local/ns/{ns}/sa/{sa}")
}

/// Runs `change` (a workloads-file edit) and waits until both proxies
/// reloaded it and had time to apply it to the kernel (the kernel sync
/// runs every 500 ms).
fn reload(c: &Cluster, change: impl FnOnce(&Cluster)) {
    assert!(
        c.reload_workloads(change),
        "the workloads file was not reloaded"
    );
    std::thread::sleep(Duration::from_millis(1200));
}

/// How many audit records on `node` have `principal` as the caller, once
/// at least `n` do (the audit writer batches; waits up to 10 s).
fn audited_from(c: &Cluster, node: &str, principal: &str, n: usize) -> usize {
    c.audit_records(node, n, |r| r["source_principal"] == principal)
        .len()
}

#[test]
fn containers_and_nested_cgroups_are_attributed_to_their_pod() {
    if !require_root("containers_and_nested_cgroups_are_attributed_to_their_pod") {
        return;
    }
    let mut c = Cluster::start();
    c.serve_echo("backend", PORT);
    c.serve_echo("cache", PORT);
    // node-a's frontend calls node-b's backend; node-b's db calls node-a's cache.
    let cases = [
        ("frontend", "node-b", "backend", spiffe("shop", "frontend")),
        ("db", "node-a", "cache", spiffe("data", "db")),
    ];
    for (pod, dest_node, dest, principal) in &cases {
        let container = c.cgroup_of(pod).join("container-1");
        // Created after the proxy started, one level deeper: a cgroup a
        // container made inside itself.
        let nested = container.join("worker");
        for cgroup in [&container, &nested] {
            let before = audited_from(&c, dest_node, principal, 0);
            let r = c.call_in_cgroup(pod, cgroup, addr(c.ip4(dest), PORT), 200);
            assert_eq!(r["intact"], true, "{pod} from {}: {r}", cgroup.display());
            assert!(
                audited_from(&c, dest_node, principal, before + 1) > before,
                "{dest_node} did not see {principal} for the call from {}",
                cgroup.display()
            );
        }
        std::fs::remove_dir(&nested).expect("rmdir nested");
        std::fs::remove_dir(&container).expect("rmdir container");
    }
    // Nothing per container is kept: once the calls closed, the flow maps
    // are empty on both nodes.
    let deadline = Instant::now() + Duration::from_secs(10);
    for node in ["node-a", "node-b"] {
        for map in ["flows", "by_cookie"] {
            let entries = |c: &Cluster| c.metric(node, "nodeward_bpf_map_entries", &[("map", map)]);
            while entries(&c) > 0.0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            assert_eq!(entries(&c), 0.0, "{node} {map}");
        }
    }
}

#[test]
fn unenrolled_pods_are_left_alone_and_refused_by_strict_pods() {
    if !require_root("unenrolled_pods_are_left_alone_and_refused_by_strict_pods") {
        return;
    }
    let mut c = Cluster::start();
    c.serve_echo("backend", PORT);
    c.serve_echo("cache", PORT);
    reload(&c, |c| c.unenroll("cache"));
    let skipped = c.metric("node-a", "nodeward_bpf_unenrolled_skipped_total", &[]);
    // cache is not redirected: under STRICT, backend refuses it.
    let r = c.call("cache", addr(c.ip4("backend"), PORT), 100);
    assert_eq!(r["connected"], false, "{r}");
    assert!(c.metric("node-a", "nodeward_bpf_unenrolled_skipped_total", &[]) > skipped);
    // An enrolled pod still reaches the unenrolled one (passthrough), and
    // the unenrolled pod's own listener is not strict.
    let r = c.call("frontend", addr(c.ip4("cache"), PORT), 100);
    assert_eq!(r["intact"], true, "{r}");
    let direct = c.call_bypassing_proxy("frontend", addr(c.ip4("cache"), PORT), 100);
    assert_eq!(direct["intact"], true, "{direct}");
}

#[test]
fn an_unenrolled_pod_reaches_a_permissive_pod_directly() {
    if !require_root("an_unenrolled_pod_reaches_a_permissive_pod_directly") {
        return;
    }
    let mut c = Cluster::start_with(Options {
        mtls: "PERMISSIVE",
        ..Options::default()
    });
    c.serve_echo("backend", PORT);
    reload(&c, |c| c.unenroll("cache"));
    let r = c.call("cache", addr(c.ip4("backend"), PORT), 100);
    assert_eq!(r["intact"], true, "{r}");
    // Not redirected: the destination saw the pod's own address, not a
    // proxy's.
    let peers = c.accepted("backend", PORT);
    let cache = c.ip4("cache").to_string();
    assert!(
        peers.iter().any(|p| p.starts_with(&format!("{cache}:"))),
        "{peers:?}"
    );
}

/// The Service `backend.shop` in front of the workloads labelled
/// `app: backend`.
fn backend_service() -> String {
    format!(
        "  - {{name: backend, namespace: shop, vips: ['{VIP}'], ports: [{{port: {VIP_PORT}, targetPort: {PORT}}}], selector: {{app: backend}}}}\n"
    )
}

#[test]
fn a_service_vip_spreads_connections_over_local_and_remote_endpoints() {
    if !require_root("a_service_vip_spreads_connections_over_local_and_remote_endpoints") {
        return;
    }
    let mut c = Cluster::start();
    c.serve_echo("backend", PORT);
    c.serve_echo("cache", PORT);
    reload(&c, |c| {
        c.relabel("cache", "backend");
        c.set_services(&backend_service());
    });
    let vip = addr(VIP.parse().expect("vip"), VIP_PORT);
    let marker = "NODEWARD-SERVICE-MARKER-51c2";
    let capture = Capture::start(&c.ns("node-a"), "link0").expect("capture");
    let calls = 200;
    let mut intact = 0;
    for _ in 0..calls / 20 {
        intact += c.call_many_with("frontend", vip, 100, 20, &["--marker", marker]);
    }
    assert_eq!(intact, calls, "every call through the VIP arrived intact");
    let seen = capture.finish().expect("capture");
    assert!(
        !seen.contains(marker.as_bytes()),
        "the remote endpoint's calls crossed the link in the clear"
    );
    let remote = c.accepted("backend", PORT).len();
    let local = c.accepted("cache", PORT).len();
    assert_eq!(remote + local, calls as usize);
    assert!(
        remote >= 40 && local >= 40,
        "remote {remote}, local {local}"
    );
    // The remote ones came through the tunnel, as calls to the workload.
    let inbound = c.access_records("node-b", 1, |r| {
        r["event"] == "inbound" && r["destination"] == "shop/backend"
    });
    assert!(!inbound.is_empty());
    // Metrics and access records name the Service.
    let by_service = c.metric(
        "node-a",
        "nodeward_connections_opened_total",
        &[
            ("reporter", "source"),
            ("destination_service", "backend.shop"),
        ],
    );
    assert!(by_service >= calls as f64, "{by_service}");
    let records = c.access_records("node-a", 1, |r| {
        r["event"] == "connection" && r["destination_service"] == "backend.shop"
    });
    assert!(!records.is_empty());
}

#[test]
fn policy_applies_per_destination_workload_behind_a_service() {
    if !require_root("policy_applies_per_destination_workload_behind_a_service") {
        return;
    }
    // Only backend lets frontend in; cache, the Service's other endpoint,
    // has no ALLOW and the default is deny.
    let mut c = Cluster::start_with(Options::with_policies(&[(
        "backend.yaml",
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: backend-from-frontend, namespace: shop}
spec:
  selector: {matchLabels: {app: backend}}
  action: ALLOW
  rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/frontend]}}]}]
",
    )]));
    c.serve_echo("backend", PORT);
    c.serve_echo("cache", PORT);
    reload(&c, |c| {
        c.set_services(&format!(
            "  - {{name: mixed, namespace: shop, vips: ['{VIP}'], ports: [{{port: {VIP_PORT}, targetPort: {PORT}}}], endpoints: ['{}', '{}']}}\n",
            c.ip4("backend"),
            c.ip4("cache")
        ));
    });
    let vip = addr(VIP.parse().expect("vip"), VIP_PORT);
    let intact = c.call_many_with("frontend", vip, 100, 40, &[]);
    let remote = c.accepted("backend", PORT).len() as u64;
    let local = c.accepted("cache", PORT).len();
    // The local endpoint refused every call sent there; the remote one
    // took the rest.
    assert_eq!(local, 0, "cache accepted calls its policy denies");
    assert_eq!(intact, remote);
    assert!(
        remote > 0 && remote < 40,
        "remote {remote}: both endpoints were chosen"
    );
    let expected = usize::try_from(40 - remote).expect("small");
    let denied = c.audit_records("node-a", expected, |r| {
        r["decision"] == "deny" && r["destination"] == "shop/cache"
    });
    assert_eq!(denied.len(), expected);
}

#[test]
fn a_service_without_endpoints_resets_and_a_removed_endpoint_keeps_its_connection() {
    if !require_root(
        "a_service_without_endpoints_resets_and_a_removed_endpoint_keeps_its_connection",
    ) {
        return;
    }
    let mut c = Cluster::start();
    c.serve_echo("backend", PORT);
    c.serve_echo("cache", PORT);
    let vip = addr(VIP.parse().expect("vip"), VIP_PORT);
    // Scaled to zero: the selector matches nothing.
    reload(&c, |c| {
        c.set_services(&backend_service().replace("app: backend", "app: nothing"));
    });
    let refused = |c: &Cluster| {
        c.metric(
            "node-a",
            "nodeward_outbound_refused_total",
            &[("reason", "no_endpoints")],
        )
    };
    let r = c.call("frontend", vip, 100);
    assert_ne!(r["intact"], true, "{r}");
    assert_eq!(refused(&c), 1.0);
    // One endpoint (backend, remote): a slow call stays open on it while
    // the endpoint is removed and another (cache) added.
    reload(&c, |c| c.set_services(&backend_service()));
    // Eight chunks 500 ms apart: open for about 4 s.
    let slow = c.spawn_call_with(
        "frontend",
        vip,
        8 * 1024,
        &["--chunks", "8", "--pace-ms", "500"],
    );
    std::thread::sleep(Duration::from_millis(500));
    reload(&c, |c| {
        c.relabel("backend", "old");
        c.relabel("cache", "backend");
    });
    let after = c.call_many_with("frontend", vip, 100, 10, &[]);
    assert_eq!(after, 10);
    assert_eq!(
        c.accepted("cache", PORT).len(),
        10,
        "new calls go to the new endpoint"
    );
    let kept: Value = finish_tool(slow);
    assert_eq!(
        kept["intact"], true,
        "the removed endpoint's open call was cut: {kept}"
    );
    assert_eq!(
        c.accepted("backend", PORT).len(),
        1,
        "the slow call went to backend"
    );
}

/// Hostile destinations a pod may dial through its proxy: an address of
/// the node itself, and a VIP on a port its Service does not expose. Both
/// are refused (reset) and counted, never dialled from the node.
#[test]
fn node_addresses_and_unexposed_service_ports_are_refused() {
    if !require_root("node_addresses_and_unexposed_service_ports_are_refused") {
        return;
    }
    let mut c = Cluster::start();
    c.serve_echo("backend", PORT);
    // A listener on node-a itself, behind its bridge address (inside the
    // mesh CIDRs, so the kernel hands the connection to the proxy).
    c.serve_echo_on_node("node-a", PORT);
    reload(&c, |c| c.set_services(&backend_service()));
    let refused = |c: &Cluster, reason| {
        c.metric(
            "node-a",
            "nodeward_outbound_refused_total",
            &[("reason", reason)],
        )
    };
    let r = c.call("frontend", addr(c.gateway4("node-a"), PORT), 100);
    assert_ne!(r["intact"], true, "the proxy dialled its own node: {r}");
    assert_eq!(refused(&c, "node_local"), 1.0);
    let r = c.call(
        "frontend",
        addr(VIP.parse().expect("vip"), VIP_PORT + 1),
        100,
    );
    assert_ne!(r["intact"], true, "{r}");
    assert_eq!(refused(&c, "unknown_service_port"), 1.0);
    // The exposed port still works.
    let r = c.call("frontend", addr(VIP.parse().expect("vip"), VIP_PORT), 100);
    assert_eq!(r["intact"], true, "{r}");
}
