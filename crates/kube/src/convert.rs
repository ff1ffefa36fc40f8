//! From API objects to the workloads registry's input.
//!
//! The API server's view becomes the same [`WorkloadsFile`] a user would
//! write, so both sources go through one validation and one registry
//! build. Unlike a hand-written file, one odd object must not reject the
//! whole cluster: objects the registry would refuse (a pod on a node with
//! no address, an IP claimed twice, a headless Service) are left out here,
//! each with a note saying why.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::strip::PodInfo;
use k8s_openapi::{
    api::{
        core::v1::{Namespace, Node, Service, ServicePort},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use nodeward_workloads::{
    check_dns_label, services::ServicePortFile, NodeFile, ServiceFile, Workload, WorkloadFile,
    WorkloadsFile,
};

/// The label that enrols a namespace (`enabled`) or opts a pod out
/// (`disabled`).
pub const MESH_LABEL: &str = "nodeward.io/mesh";
/// The label that ties an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Every object of the watched kinds, as the reflectors hold them.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub pods: Vec<Arc<PodInfo>>,
    pub namespaces: Vec<Arc<Namespace>>,
    pub services: Vec<Arc<Service>>,
    pub endpoint_slices: Vec<Arc<EndpointSlice>>,
    pub nodes: Vec<Arc<Node>>,
}

/// The registry's input, and the objects left out of it.
#[derive(Debug)]
pub struct Converted {
    pub file: WorkloadsFile,
    /// One line per object left out, naming it and why.
    pub skipped: Vec<String>,
    /// Enrolled local pods left out because their cgroup does not exist
    /// yet (containers starting): worth looking again soon.
    pub waiting_for_cgroup: usize,
}

/// What became of one pod.
enum PodOutcome {
    Workload(WorkloadFile),
    /// Never a workload (hostNetwork, no IP yet, terminating, finished).
    Not,
    /// An enrolled local pod whose cgroup is not there yet.
    WaitingForCgroup,
}

/// Converts `snapshot`. `node` is this node's name; `pod_cgroup` finds a
/// local pod's cgroup directory from its UID.
pub fn convert(
    snapshot: &Snapshot,
    node: &str,
    pod_cgroup: &dyn Fn(&str) -> Option<PathBuf>,
) -> Converted {
    let mut skipped = Vec::new();
    let nodes = nodes(&snapshot.nodes, &mut skipped);
    let known: HashSet<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    let enrolled: HashSet<&str> = snapshot
        .namespaces
        .iter()
        .filter(|ns| label(&ns.metadata.labels, MESH_LABEL) == Some("enabled"))
        .filter_map(|ns| ns.metadata.name.as_deref())
        .collect();
    let mut claimed = HashSet::new();
    let mut workloads = Vec::new();
    let mut waiting_for_cgroup = 0;
    for pod in &snapshot.pods {
        match workload(pod, node, &known, &enrolled, pod_cgroup) {
            Ok(PodOutcome::Workload(w)) if w.ips.iter().any(|ip| claimed.contains(ip)) => {
                skipped.push(format!("pod {}: its IP is claimed by another pod", id(pod)));
            }
            Ok(PodOutcome::Workload(w)) => {
                claimed.extend(w.ips.iter().copied());
                workloads.push(w);
            }
            Ok(PodOutcome::Not) => {}
            Ok(PodOutcome::WaitingForCgroup) => waiting_for_cgroup += 1,
            Err(why) => skipped.push(format!("pod {}: {why}", id(pod))),
        }
    }
    let slices = slices_by_service(&snapshot.endpoint_slices);
    let mut vips = claimed;
    let mut services = Vec::new();
    for svc in &snapshot.services {
        let key = (
            svc.metadata.namespace.as_deref().unwrap_or_default(),
            svc.metadata.name.as_deref().unwrap_or_default(),
        );
        let own = slices.get(&key).map_or(&[][..], Vec::as_slice);
        match service(svc, own) {
            Ok(Some(s)) if s.vips.iter().any(|v| vips.contains(v)) => skipped.push(format!(
                "service {}/{}: its cluster IP is claimed twice",
                key.0, key.1
            )),
            Ok(Some(s)) => {
                vips.extend(s.vips.iter().copied());
                services.push(s);
            }
            Ok(None) => {}
            Err(why) => skipped.push(format!("service {}/{}: {why}", key.0, key.1)),
        }
    }
    Converted {
        file: WorkloadsFile {
            workloads,
            nodes,
            services,
        },
        skipped,
        waiting_for_cgroup,
    }
}

/// Nodes with an InternalIP: where their proxies' tunnels listen.
fn nodes(nodes: &[Arc<Node>], skipped: &mut Vec<String>) -> Vec<NodeFile> {
    let mut out = Vec::new();
    for n in nodes {
        let Some(name) = n.metadata.name.clone().filter(|n| !n.is_empty()) else {
            continue;
        };
        let address = n
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
            .filter(|a| a.type_ == "InternalIP")
            .find_map(|a| a.address.parse::<IpAddr>().ok());
        match address {
            Some(address) => out.push(NodeFile { name, address }),
            None => skipped.push(format!("node {name}: no InternalIP")),
        }
    }
    out
}

/// What `pod` is for the registry; `Err` for pods that should be a
/// workload but cannot.
fn workload(
    pod: &PodInfo,
    local_node: &str,
    known_nodes: &HashSet<&str>,
    enrolled_namespaces: &HashSet<&str>,
    pod_cgroup: &dyn Fn(&str) -> Option<PathBuf>,
) -> Result<PodOutcome, String> {
    if pod.host_network || pod.terminating || pod.finished || pod.ips.is_empty() {
        return Ok(PodOutcome::Not);
    }
    let Some(node) = pod.node.clone() else {
        return Ok(PodOutcome::Not);
    };
    if node != local_node && !known_nodes.contains(node.as_str()) {
        return Err(format!("node {node:?} has no InternalIP known"));
    }
    let enrolled = enrolled_namespaces.contains(pod.namespace.as_str())
        && pod.labels.get(MESH_LABEL).map(String::as_str) != Some("disabled");
    let local_enrolled = node == local_node && enrolled;
    let cgroup = local_enrolled.then(|| pod_cgroup(&pod.uid)).flatten();
    if local_enrolled && cgroup.is_none() {
        // Its containers are not started yet: enrolled once they are.
        return Ok(PodOutcome::WaitingForCgroup);
    }
    let file = WorkloadFile {
        name: pod.name.clone(),
        namespace: pod.namespace.clone(),
        service_account: pod.service_account.clone(),
        node,
        ips: pod.ips.clone(),
        labels: pod.labels.clone(),
        cgroup,
        mesh: Some(enrolled),
    };
    // The registry checks every entry and refuses the whole snapshot for
    // one bad entry, which would freeze discovery on the last registry:
    // leave out here, with its reason, what it would refuse.
    Workload::try_from(file.clone()).map_err(|(field, why)| format!("{field}: {why}"))?;
    Ok(PodOutcome::Workload(file))
}

/// A Service with its ready endpoints; `Ok(None)` for Services the proxy
/// has nothing to resolve for (headless, ExternalName, no TCP port).
fn service(svc: &Service, slices: &[&EndpointSlice]) -> Result<Option<ServiceFile>, String> {
    let Some(spec) = &svc.spec else {
        return Ok(None);
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return Ok(None);
    }
    let vips: Vec<IpAddr> = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|ip| ip.parse().ok())
        .collect();
    let vips = dedup(vips);
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| port(p, slices).transpose())
        .collect::<Result<Vec<_>, _>>()?;
    if vips.is_empty() || ports.is_empty() {
        return Ok(None);
    }
    let name = svc.metadata.name.clone().unwrap_or_default();
    let namespace = svc.metadata.namespace.clone().unwrap_or_default();
    // As for pods: the registry refuses a whole snapshot for one bad name,
    // which would freeze discovery on the last registry.
    for (field, value) in [("name", &name), ("namespace", &namespace)] {
        check_dns_label(field, value).map_err(|(f, why)| format!("{f}: {why}"))?;
    }
    Ok(Some(ServiceFile {
        name,
        namespace,
        vips,
        ports,
        selector: None,
        endpoints: Some(ready_endpoints(slices)),
    }))
}

/// A Service port and its target: a number as written, or a named
/// container port as the EndpointSlices resolved it (they name their ports
/// after the Service port). `None` while no endpoint resolves the name:
/// there is nothing to dial on it yet.
fn port(p: &ServicePort, slices: &[&EndpointSlice]) -> Result<Option<ServicePortFile>, String> {
    let number = |n: i32, what: &str| {
        u16::try_from(n)
            .ok()
            .filter(|n| *n != 0)
            .ok_or_else(|| format!("{what} {n} is out of range"))
    };
    let port = number(p.port, "port")?;
    let target = match &p.target_port {
        None => port,
        Some(IntOrString::Int(n)) => number(*n, "targetPort")?,
        Some(IntOrString::String(_)) => {
            let resolved = slices
                .iter()
                .flat_map(|s| s.ports.iter().flatten())
                .find(|sp| sp.name == p.name && sp.port.is_some())
                .and_then(|sp| sp.port);
            match resolved {
                Some(n) => number(n, "targetPort")?,
                None => return Ok(None),
            }
        }
    };
    Ok(Some(ServicePortFile {
        port,
        target_port: u32::from(target),
    }))
}

/// The addresses of ready endpoints (an unset `ready` means ready, as the
/// API documents).
fn ready_endpoints(slices: &[&EndpointSlice]) -> Vec<IpAddr> {
    let ips = slices
        .iter()
        .flat_map(|s| &s.endpoints)
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        .flat_map(|e| &e.addresses)
        .filter_map(|a| a.parse().ok())
        .collect();
    dedup(ips)
}

/// EndpointSlices by (namespace, Service name).
fn slices_by_service(slices: &[Arc<EndpointSlice>]) -> HashMap<(&str, &str), Vec<&EndpointSlice>> {
    let mut out: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    for s in slices {
        let (Some(ns), Some(svc)) = (
            s.metadata.namespace.as_deref(),
            label(&s.metadata.labels, SERVICE_NAME_LABEL),
        ) else {
            continue;
        };
        out.entry((ns, svc)).or_default().push(s);
    }
    for list in out.values_mut() {
        // Stable endpoint order whatever order the watch delivered.
        list.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    }
    out
}

fn label<'a>(labels: &'a Option<BTreeMap<String, String>>, key: &str) -> Option<&'a str> {
    labels.as_ref()?.get(key).map(String::as_str)
}

fn dedup(ips: Vec<IpAddr>) -> Vec<IpAddr> {
    let mut seen = HashSet::new();
    ips.into_iter()
        .map(|ip| ip.to_canonical())
        .filter(|ip| seen.insert(*ip))
        .collect()
}

fn id(pod: &PodInfo) -> String {
    format!("{}/{}", pod.namespace, pod.name)
}

/// A pod cgroup finder for `convert` that looks under `root`.
pub fn cgroup_finder(root: &Path) -> impl Fn(&str) -> Option<PathBuf> + '_ {
    move |uid| crate::cgroup::find_pod_cgroup(root, uid)
}

#[cfg(test)]
mod tests;
