//! Kubernetes objects to the registry's input: a JSON snapshot of pods,
//! namespaces, Services, EndpointSlices and nodes, as the API server (or
//! whoever can write those objects) sends them, converted for `node-a`.
//! Every conversion must give a workloads file the registry accepts.
#![no_main]

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use k8s_openapi::api::{
    core::v1::{Namespace, Node, Pod, Service},
    discovery::v1::EndpointSlice,
};
use libfuzzer_sys::fuzz_target;
use nodeward_kube::{convert, PodInfo, Snapshot};
use nodeward_workloads::Registry;
use serde::Deserialize;

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Objects {
    pods: Vec<Pod>,
    namespaces: Vec<Namespace>,
    services: Vec<Service>,
    endpoint_slices: Vec<EndpointSlice>,
    nodes: Vec<Node>,
}

fn arcs<T>(items: Vec<T>) -> Vec<Arc<T>> {
    items.into_iter().map(Arc::new).collect()
}

fuzz_target!(|data: &[u8]| {
    let Ok(objects) = serde_json::from_slice::<Objects>(data) else {
        return;
    };
    let snapshot = Snapshot {
        pods: objects
            .pods
            .into_iter()
            .map(|p| Arc::new(PodInfo::from(p)))
            .collect(),
        namespaces: arcs(objects.namespaces),
        services: arcs(objects.services),
        endpoint_slices: arcs(objects.endpoint_slices),
        nodes: arcs(objects.nodes),
    };
    // No local pod's cgroup is found, so only other nodes' pods become
    // workloads: the registry can check them without a cgroup tree.
    let no_cgroup = |_: &str| None::<PathBuf>;
    let converted = convert(&snapshot, "node-a", &no_cgroup);
    let (path, mount) = (Path::new("kubernetes"), Path::new("/nonexistent"));
    // One object the registry refuses would freeze discovery on the last
    // registry (`rebuild` keeps it): conversion must leave such objects out.
    if let Err(e) = Registry::build(path, converted.file, "node-a", mount) {
        panic!("the registry refuses a converted snapshot: {e}");
    }
});
