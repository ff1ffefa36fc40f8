use std::path::Path;

use serde_json::json;

use super::*;

const UID_A: &str = "11111111-2222-3333-4444-555555555555";

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Arc<T> {
    Arc::new(serde_json::from_value(v).expect("a valid object"))
}

/// A running pod as `kubectl get pod -o json` shows it.
fn pod(name: &str, node: &str, ip: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": "shop", "uid": UID_A,
            "resourceVersion": "4711", "labels": {"app": name},
        },
        "spec": {
            "nodeName": node, "serviceAccountName": name,
            "containers": [{"name": "app", "image": "app:1"}],
        },
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    })
}

fn namespace(name: &str, mesh: Option<&str>) -> Arc<Namespace> {
    let labels = mesh.map(|m| json!({ MESH_LABEL: m })).unwrap_or(json!({}));
    obj(json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": labels}}))
}

fn node(name: &str, ip: &str) -> Arc<Node> {
    obj(
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
        "status": {"addresses": [
            {"type": "Hostname", "address": name},
            {"type": "InternalIP", "address": ip},
        ]}}),
    )
}

fn service(name: &str, vip: &str, target: serde_json::Value) -> Arc<Service> {
    obj(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"type": "ClusterIP", "clusterIP": vip, "clusterIPs": [vip],
            "selector": {"app": name},
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": target}]}}))
}

fn slice(service: &str, port: i32, endpoints: serde_json::Value) -> Arc<EndpointSlice> {
    obj(
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-abcde"), "namespace": "shop",
            "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": endpoints}),
    )
}

fn pod_info(v: serde_json::Value) -> Arc<PodInfo> {
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(v).expect("a valid pod");
    Arc::new(PodInfo::from(pod))
}

fn cluster(pods: Vec<serde_json::Value>) -> Snapshot {
    Snapshot {
        pods: pods.into_iter().map(pod_info).collect(),
        namespaces: vec![namespace("shop", Some("enabled"))],
        nodes: vec![node("node-a", "192.168.1.1"), node("node-b", "192.168.1.2")],
        ..Snapshot::default()
    }
}

fn cgroups(uid: &str) -> Option<PathBuf> {
    (uid == UID_A).then(|| PathBuf::from("/cg/kubepods/besteffort/pod1"))
}

fn run(snap: &Snapshot) -> Converted {
    convert(snap, "node-a", &cgroups)
}

#[test]
fn a_running_pod_becomes_an_enrolled_workload_with_its_cgroup() {
    let out = run(&cluster(vec![pod("cart", "node-a", "10.0.0.5")]));
    let w = &out.file.workloads[0];
    assert_eq!((w.name.as_str(), w.namespace.as_str()), ("cart", "shop"));
    assert_eq!(w.service_account, "cart");
    assert_eq!(w.ips, vec!["10.0.0.5".parse::<IpAddr>().expect("ip")]);
    assert_eq!(w.labels.get("app").map(String::as_str), Some("cart"));
    assert_eq!(w.mesh, Some(true));
    assert_eq!(
        w.cgroup.as_deref(),
        Some(Path::new("/cg/kubepods/besteffort/pod1"))
    );
    assert_eq!(out.file.nodes.len(), 2);
}

/// Found by the `kube_objects` fuzz target: a pod name the registry
/// refuses (`wEb-58f7d6c9b4-p9z7m`) made it refuse the whole snapshot,
/// freezing discovery on the last registry.
#[test]
fn a_pod_the_registry_would_refuse_is_left_out_with_its_reason() {
    let snap = cluster(vec![
        pod("cart", "node-b", "10.0.1.5"),
        pod("wEb-58f7d6c9b4-p9z7m", "node-b", "10.0.1.6"),
    ]);
    let out = run(&snap);
    let names: Vec<&str> = out.file.workloads.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["cart"]);
    assert_eq!(out.skipped.len(), 1, "{:?}", out.skipped);
    assert!(
        out.skipped[0].contains("shop/wEb-58f7d6c9b4-p9z7m") && out.skipped[0].contains("name"),
        "{:?}",
        out.skipped
    );
    let registry = nodeward_workloads::Registry::build(
        Path::new("kubernetes"),
        out.file,
        "node-a",
        Path::new("/x"),
    );
    assert!(registry.is_ok(), "{registry:?}");
}

#[test]
fn a_remote_pod_has_no_cgroup() {
    let out = run(&cluster(vec![pod("cart", "node-b", "10.0.1.5")]));
    assert_eq!(out.file.workloads[0].cgroup, None);
    assert_eq!(out.file.workloads[0].node, "node-b");
}

#[test]
fn pods_that_are_no_workloads_are_left_out() {
    let mut host = pod("host", "node-a", "192.168.1.1");
    host["spec"]["hostNetwork"] = json!(true);
    let mut done = pod("done", "node-a", "10.0.0.6");
    done["status"]["phase"] = json!("Succeeded");
    let mut failed = pod("failed", "node-a", "10.0.0.7");
    failed["status"]["phase"] = json!("Failed");
    let mut leaving = pod("leaving", "node-a", "10.0.0.8");
    leaving["metadata"]["deletionTimestamp"] = json!("2026-12-06T03:00:00Z");
    let mut pending = pod("pending", "node-a", "10.0.0.9");
    pending["status"] = json!({"phase": "Pending"});
    let out = run(&cluster(vec![host, done, failed, leaving, pending]));
    assert!(out.file.workloads.is_empty(), "{:?}", out.file.workloads);
}

#[test]
fn enrolment_follows_the_namespace_label_and_the_pod_opt_out() {
    let mut snap = cluster(vec![pod("cart", "node-b", "10.0.1.5")]);
    snap.namespaces = vec![namespace("shop", None)];
    assert_eq!(run(&snap).file.workloads[0].mesh, Some(false));
    snap.namespaces = vec![namespace("shop", Some("enabled"))];
    assert_eq!(run(&snap).file.workloads[0].mesh, Some(true));
    let mut opted_out = pod("cart", "node-b", "10.0.1.5");
    opted_out["metadata"]["labels"][MESH_LABEL] = json!("disabled");
    snap.pods = vec![pod_info(opted_out)];
    assert_eq!(run(&snap).file.workloads[0].mesh, Some(false));
}

#[test]
fn an_unenrolled_local_pod_is_listed_without_a_cgroup() {
    let mut snap = cluster(vec![pod("cart", "node-a", "10.0.0.5")]);
    snap.namespaces = vec![namespace("shop", Some("disabled"))];
    let out = run(&snap);
    assert_eq!(out.file.workloads[0].cgroup, None);
    assert_eq!(out.file.workloads[0].mesh, Some(false));
}

#[test]
fn an_enrolled_local_pod_waits_for_its_cgroup() {
    let mut p = pod("cart", "node-a", "10.0.0.5");
    p["metadata"]["uid"] = json!("99999999-2222-3333-4444-555555555555");
    assert!(run(&cluster(vec![p])).file.workloads.is_empty());
}

#[test]
fn a_pod_on_a_node_without_address_is_skipped_with_a_note() {
    let out = run(&cluster(vec![pod("cart", "node-z", "10.0.9.5")]));
    assert!(out.file.workloads.is_empty());
    assert!(out.skipped[0].contains("shop/cart"), "{:?}", out.skipped);
}

#[test]
fn an_ip_claimed_twice_keeps_the_first_pod() {
    let out = run(&cluster(vec![
        pod("cart", "node-b", "10.0.1.5"),
        pod("ghost", "node-b", "10.0.1.5"),
    ]));
    assert_eq!(out.file.workloads.len(), 1);
    assert!(out.skipped[0].contains("shop/ghost"), "{:?}", out.skipped);
}

/// Found by the `kube_objects` fuzz target (in `cargo xtask test`): a
/// Service without a name made the registry refuse the whole snapshot.
#[test]
fn a_service_the_registry_would_refuse_is_left_out_with_its_reason() {
    let mut snap = cluster(vec![]);
    snap.services = vec![
        service("cart", "10.96.0.10", json!(8080)),
        service("", "10.96.0.11", json!(8080)),
        service("Web", "10.96.0.12", json!(8080)),
    ];
    let out = run(&snap);
    let names: Vec<&str> = out.file.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["cart"]);
    assert_eq!(out.skipped.len(), 2, "{:?}", out.skipped);
    assert!(
        out.skipped.iter().all(|s| s.contains("name")),
        "{:?}",
        out.skipped
    );
    let registry = nodeward_workloads::Registry::build(
        Path::new("kubernetes"),
        out.file,
        "node-a",
        Path::new("/x"),
    );
    assert!(registry.is_ok(), "{registry:?}");
}

#[test]
fn a_service_takes_its_ready_endpoints_from_its_slices() {
    let mut snap = cluster(vec![]);
    snap.services = vec![service("cart", "10.96.0.10", json!(8080))];
    snap.endpoint_slices = vec![slice(
        "cart",
        8080,
        json!([
            {"addresses": ["10.0.0.5"], "conditions": {"ready": true}},
            {"addresses": ["10.0.0.6"], "conditions": {"ready": false}},
            {"addresses": ["10.0.0.7"]},
        ]),
    )];
    let out = run(&snap);
    let s = &out.file.services[0];
    assert_eq!(s.vips, vec!["10.96.0.10".parse::<IpAddr>().expect("ip")]);
    assert_eq!((s.ports[0].port, s.ports[0].target_port), (80, 8080));
    let ready: Vec<IpAddr> = ["10.0.0.5", "10.0.0.7"]
        .iter()
        .map(|ip| ip.parse().expect("ip"))
        .collect();
    assert_eq!(s.endpoints.as_deref(), Some(&ready[..]));
}

#[test]
fn a_named_target_port_is_resolved_from_the_slices() {
    let mut snap = cluster(vec![]);
    snap.services = vec![service("cart", "10.96.0.10", json!("web"))];
    snap.endpoint_slices = vec![slice("cart", 9090, json!([{"addresses": ["10.0.0.5"]}]))];
    let s = &run(&snap).file.services[0];
    assert_eq!((s.ports[0].port, s.ports[0].target_port), (80, 9090));
}

#[test]
fn headless_and_external_name_services_are_no_vips() {
    let mut snap = cluster(vec![]);
    let mut headless = service("db", "None", json!(5432));
    Arc::make_mut(&mut headless)
        .spec
        .as_mut()
        .expect("spec")
        .cluster_ips = Some(vec!["None".into()]);
    let external: Arc<Service> = obj(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "ext", "namespace": "shop"},
        "spec": {"type": "ExternalName", "externalName": "example.com"}}));
    snap.services = vec![headless, external];
    let out = run(&snap);
    assert!(out.file.services.is_empty());
}

#[test]
fn the_converted_file_builds_a_registry() {
    let mut snap = cluster(vec![pod("cart", "node-b", "10.0.1.5")]);
    snap.services = vec![service("cart", "10.96.0.10", json!(8080))];
    snap.endpoint_slices = vec![slice("cart", 8080, json!([{"addresses": ["10.0.1.5"]}]))];
    let out = run(&snap);
    let registry = nodeward_workloads::Registry::build(
        Path::new("kubernetes"),
        out.file,
        "node-a",
        Path::new("/nonexistent"),
    )
    .expect("builds");
    let (svc, port) = registry
        .services()
        .resolve("10.96.0.10".parse().expect("ip"), 80)
        .expect("service");
    assert_eq!(port, 8080);
    assert_eq!(
        svc.endpoints[0].workload.as_ref().map(|w| w.name.as_str()),
        Some("cart")
    );
    assert_eq!(
        registry.node_address("node-b"),
        Some("192.168.1.2".parse().expect("ip"))
    );
}
