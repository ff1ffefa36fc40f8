//! Kubernetes objects to the registry's input: a JSON snapshot of pods,
//! namespaces, Services, EndpointSlices and nodes, as the API server (or
//! whoever can write those objects) sends them, converted for `node-a`.
//! Every conversion must give a workloads file the registry accepts.
#![no_main]

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    sync::Arc,
};

use k8s_openapi::{
    api::{
        core::v1::{Namespace, Node, Pod, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
    Metadata,
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

/// One object per namespace and name, as in a reflector's store (the API
/// server never holds two).
fn unique<T: Metadata<Ty = ObjectMeta>>(items: Vec<T>) -> Vec<Arc<T>> {
    let mut seen = HashSet::new();
    items
        .into_iter()
        .filter(|o| seen.insert((o.metadata().namespace.clone(), o.metadata().name.clone())))
        .map(Arc::new)
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Ok(objects) = serde_json::from_slice::<Objects>(data) else {
        return;
    };
    let snapshot = Snapshot {
        pods: unique(objects.pods)
            .into_iter()
            .map(|p| Arc::new(PodInfo::from(Pod::clone(&p))))
            .collect(),
        namespaces: unique(objects.namespaces),
        services: unique(objects.services),
        endpoint_slices: unique(objects.endpoint_slices),
        nodes: unique(objects.nodes),
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
