//! The workloads file: decoding and building the registry, for node
//! `node-a` with a cgroup mount that does not exist (local workloads then
//! fail their cgroup check, as on a node where the pod is gone).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use nodeward_workloads::{Registry, WorkloadsFile};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/etc/nodeward/workloads.yaml");
    let Ok(file) = nodeward_yaml::decode::<WorkloadsFile>(path, text) else {
        return;
    };
    let mount = Path::new("/nonexistent/nodeward-fuzz/cgroup");
    if let Ok(registry) = Registry::build(path, file, "node-a", mount) {
        for w in registry.all() {
            for ip in &w.ips {
                assert!(registry.by_ip(*ip).is_some());
            }
        }
    }
});
