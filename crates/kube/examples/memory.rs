//! How much memory Kubernetes discovery costs for a large cluster: 10 000
//! pods and 2 000 Services (with one EndpointSlice each), 100 nodes and 50
//! namespaces, generated as the API server would send them (managed
//! fields, annotations, container specs and statuses included), stripped
//! as the watches strip them, kept as the stores keep them, and built into
//! a registry. Prints the RSS before and after.
//!
//! `cargo run -p nodeward-kube --example memory`

use std::{path::Path, sync::Arc};

use k8s_openapi::api::{
    core::v1::{Namespace, Node, Pod, Service},
    discovery::v1::EndpointSlice,
};
use serde_json::{json, Value};

use nodeward_kube::{convert, strip, PodInfo, Snapshot};
use nodeward_workloads::Registry;

const PODS: usize = 10_000;
const SERVICES: usize = 2_000;
const NODES: usize = 100;
const NAMESPACES: usize = 50;

fn main() {
    let before = rss_kib();
    let snapshot = generate();
    let stored = rss_kib();
    let converted = convert(&snapshot, "bench-node", &|_| None);
    let registry = Registry::build(
        Path::new("kubernetes"),
        converted.file,
        "bench-node",
        Path::new("/nonexistent"),
    )
    .unwrap_or_else(|e| panic!("registry: {e}"));
    let built = rss_kib();
    println!(
        "pods {} services {}: stores {:.1} MiB, stores + registry {:.1} MiB of extra RSS ({} workloads, {} services)",
        snapshot.pods.len(),
        snapshot.services.len(),
        mib(stored - before),
        mib(built - before),
        registry.all().len(),
        registry.services().all().len(),
    );
}

fn mib(kib: i64) -> f64 {
    kib as f64 / 1024.0
}

/// The process's resident set, in KiB.
fn rss_kib() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The stores' contents: each object decoded in full, then reduced as the
/// watches reduce it.
fn generate() -> Snapshot {
    fn keep<T: serde::de::DeserializeOwned>(v: Value, f: fn(&mut T)) -> Arc<T> {
        let mut obj: T = serde_json::from_value(v).unwrap_or_else(|e| panic!("object: {e}"));
        f(&mut obj);
        Arc::new(obj)
    }
    Snapshot {
        pods: (0..PODS)
            .map(|i| {
                let pod: Pod =
                    serde_json::from_value(pod(i)).unwrap_or_else(|e| panic!("pod: {e}"));
                Arc::new(PodInfo::from(pod))
            })
            .collect(),
        namespaces: (0..NAMESPACES)
            .map(|i| keep::<Namespace>(namespace(i), strip::namespace))
            .collect(),
        services: (0..SERVICES)
            .map(|i| keep::<Service>(service(i), strip::service))
            .collect(),
        endpoint_slices: (0..SERVICES)
            .map(|i| keep::<EndpointSlice>(slice(i), strip::endpoint_slice))
            .collect(),
        nodes: (0..NODES)
            .map(|i| keep::<Node>(node(i), strip::node))
            .collect(),
    }
}

fn pod_ip(i: usize) -> String {
    format!("10.{}.{}.{}", 64 + i / 65536, (i / 256) % 256, i % 256)
}

/// A pod of Deployment `app-<i/5>`, five replicas each.
fn pod(i: usize) -> Value {
    let app = format!("app-{}", i / 5);
    let ns = format!("ns-{}", (i / 5) % NAMESPACES);
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": format!("{app}-7d9f8b6c5d-{i:05}"), "namespace": ns,
            "uid": format!("{:08x}-0000-4000-8000-{:012x}", i, i),
            "resourceVersion": format!("{}", 100000 + i),
            "generateName": format!("{app}-7d9f8b6c5d-"),
            "creationTimestamp": "2026-12-01T10:00:00Z",
            "labels": {"app": app, "pod-template-hash": "7d9f8b6c5d", "version": "v1"},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-12-01T10:00:00Z",
                "prometheus.io/scrape": "true", "prometheus.io/port": "9090"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": format!("{app}-7d9f8b6c5d"), "uid": "aaaaaaaa-0000-4000-8000-000000000000",
                "controller": true, "blockOwnerDeletion": true}],
            "managedFields": [{"manager": "kube-controller-manager", "operation": "Update",
                "apiVersion": "v1", "time": "2026-12-01T10:00:00Z", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:metadata": {"f:generateName": {}, "f:labels": {".": {}, "f:app": {}}},
                    "f:spec": {"f:containers": {"k:{\"name\":\"app\"}": {".": {}, "f:image": {}}}}}},
                {"manager": "kubelet", "operation": "Update", "apiVersion": "v1",
                "time": "2026-12-01T10:00:05Z", "fieldsType": "FieldsV1", "subresource": "status",
                "fieldsV1": {"f:status": {"f:conditions": {}, "f:containerStatuses": {}, "f:podIP": {}}}}],
        },
        "spec": {
            "nodeName": format!("node-{}", i % NODES), "serviceAccountName": app,
            "containers": [{"name": "app", "image": format!("registry.example.com/{app}:1.4.2"),
                "ports": [{"containerPort": 8080, "name": "http", "protocol": "TCP"}],
                "env": [{"name": "LOG_LEVEL", "value": "info"}, {"name": "POD_NAME",
                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
                "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 10},
                "volumeMounts": [{"name": "kube-api-access-abcde", "readOnly": true,
                    "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
                "terminationMessagePath": "/dev/termination-log", "imagePullPolicy": "IfNotPresent"}],
            "volumes": [{"name": "kube-api-access-abcde", "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}]}}],
            "restartPolicy": "Always", "dnsPolicy": "ClusterFirst", "schedulerName": "default-scheduler",
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                "effect": "NoExecute", "tolerationSeconds": 300}],
        },
        "status": {
            "phase": "Running", "podIP": pod_ip(i), "podIPs": [{"ip": pod_ip(i)}],
            "hostIP": format!("192.168.{}.{}", i % NODES / 256, i % NODES), "qosClass": "Burstable",
            "startTime": "2026-12-01T10:00:00Z",
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-12-01T10:00:05Z"},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": "2026-12-01T10:00:05Z"},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-12-01T10:00:00Z"}],
            "containerStatuses": [{"name": "app", "ready": true, "restartCount": 0, "started": true,
                "image": format!("registry.example.com/{app}:1.4.2"),
                "imageID": "registry.example.com/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "containerID": format!("containerd://{:064x}", i),
                "state": {"running": {"startedAt": "2026-12-01T10:00:04Z"}}}],
        },
    })
}

fn namespace(i: usize) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": format!("ns-{i}"), "resourceVersion": "1",
            "labels": {"kubernetes.io/metadata.name": format!("ns-{i}"), "nodeward.io/mesh": "enabled"}},
        "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})
}

fn service(i: usize) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("app-{i}"), "namespace": format!("ns-{}", i % NAMESPACES),
            "resourceVersion": "2", "labels": {"app": format!("app-{i}")}},
        "spec": {"type": "ClusterIP", "clusterIP": format!("10.96.{}.{}", i / 256, i % 256),
            "clusterIPs": [format!("10.96.{}.{}", i / 256, i % 256)], "ipFamilies": ["IPv4"],
            "selector": {"app": format!("app-{i}")}, "sessionAffinity": "None",
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}]},
        "status": {"loadBalancer": {}}})
}

fn slice(i: usize) -> Value {
    let endpoints: Vec<Value> = (0..5)
        .map(|r| {
            let p = i * 5 + r;
            json!({"addresses": [pod_ip(p)], "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": format!("node-{}", p % NODES),
                "targetRef": {"kind": "Pod", "namespace": format!("ns-{}", i % NAMESPACES),
                    "name": format!("app-{i}-7d9f8b6c5d-{p:05}"), "uid": format!("{:08x}-0000-4000-8000-{:012x}", p, p)}})
        })
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": {"name": format!("app-{i}-x7k2p"), "namespace": format!("ns-{}", i % NAMESPACES),
            "resourceVersion": "3",
            "labels": {"kubernetes.io/service-name": format!("app-{i}"),
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}], "endpoints": endpoints})
}

fn node(i: usize) -> Value {
    let images: Vec<Value> = (0..40)
        .map(|k| {
            json!({"names": [format!("registry.example.com/image-{k}@sha256:{:064x}", k),
            format!("registry.example.com/image-{k}:1.0")], "sizeBytes": 123456789})
        })
        .collect();
    json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": format!("node-{i}"), "resourceVersion": "4",
            "labels": {"kubernetes.io/hostname": format!("node-{i}"), "kubernetes.io/os": "linux"}},
        "spec": {"podCIDR": format!("10.244.{i}.0/24")},
        "status": {"addresses": [{"type": "InternalIP", "address": format!("192.168.{}.{}", i / 256, i)},
            {"type": "Hostname", "address": format!("node-{i}")}],
            "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"},
            "images": images}})
}
