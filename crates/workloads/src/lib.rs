//! Who is who: the workloads file and the lookups built from it.
//!
//! A connection is attributed to a workload only when the kernel-recorded
//! cgroup id names a local workload *and* the connection's source IP is one
//! of that workload's IPs. Anything else is unknown and refused, never guessed.
//!
//! Owns: the registry of workloads and nodes, where each workload lives in
//! the cgroup tree ([`cgroup`]), and which identities run on a node.
//! Must not know: sockets, the kernel programs, policies, metrics; how an
//! identity is proven (it only names them).
#![forbid(unsafe_code)]

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::Deserialize;

use nodeward_identity::SpiffeId;
use nodeward_yaml::{self as yaml, FileError};

pub mod cgroup;
pub mod services;

pub use services::{Endpoint, EndpointGuard, Service, ServiceFile, Services};

/// The workloads file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadsFile {
    pub workloads: Vec<WorkloadFile>,
    /// Node proxies and the address their tunnel listens on.
    #[serde(default)]
    pub nodes: Vec<NodeFile>,
    /// Services: VIPs in front of workloads.
    #[serde(default)]
    pub services: Vec<ServiceFile>,
}

/// One entry of `nodes`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeFile {
    pub name: String,
    /// The node proxy's address for tunnels from other nodes.
    pub address: IpAddr,
}

/// One entry of the workloads file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadFile {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub node: String,
    pub ips: Vec<IpAddr>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// cgroup v2 directory of a pod on this node (relative to the cgroup2 mount, or absolute).
    #[serde(default)]
    pub cgroup: Option<PathBuf>,
    /// `false`: listed (so it has a name and labels) but not enrolled in
    /// the mesh. Default `true`.
    #[serde(default)]
    pub mesh: Option<bool>,
}

/// A workload: a pod with its identity-bearing attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub node: String,
    pub ips: Vec<IpAddr>,
    pub labels: BTreeMap<String, String>,
    pub cgroup: Option<PathBuf>,
    /// Enrolled in the mesh: redirected, strict inbound, an identity. An
    /// unenrolled pod works as it would without nodeward.
    pub enrolled: bool,
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Why a connection could not be attributed to a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unknown {
    #[error("cgroup is not a known local workload")]
    Cgroup,
    #[error("source IP does not belong to the workload of its cgroup")]
    SourceIp,
}

impl Unknown {
    /// Stable label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cgroup => "unknown_cgroup",
            Self::SourceIp => "source_ip_mismatch",
        }
    }
}

/// All workloads, indexed for the hot path.
#[derive(Debug, Default)]
pub struct Registry {
    by_ip: HashMap<IpAddr, Arc<Workload>>,
    by_cgroup: HashMap<u64, Arc<Workload>>,
    all: Vec<Arc<Workload>>,
    nodes: HashMap<String, IpAddr>,
    /// node -> namespace -> service accounts of its enrolled workloads:
    /// which identities each node's proxy may speak for. Nested so a
    /// lookup borrows its keys (the tunnel checks it on every stream).
    hosted: HashMap<String, HashMap<String, HashSet<String>>>,
    services: Services,
    /// Problems that do not reject the file (a selector matching nothing).
    warnings: Vec<String>,
}

impl Registry {
    /// Reads `path`, keeping the local workloads (`node`) addressable by
    /// cgroup id; relative cgroup paths hang off `cgroup_mount`.
    pub fn load(path: &Path, node: &str, cgroup_mount: &Path) -> Result<Self, FileError> {
        let file: WorkloadsFile = yaml::read(path)?;
        Self::build(path, file, node, cgroup_mount)
    }

    /// Reads `path` as a tool off the node sees it (`policy explain`): no
    /// workload is local, so neither node entries nor cgroups are checked.
    pub fn load_detached(path: &Path) -> Result<Self, FileError> {
        let file: WorkloadsFile = yaml::read(path)?;
        Self::build_with(path, file, None)
    }

    /// Validates a decoded file and builds the indexes.
    pub fn build(
        path: &Path,
        file: WorkloadsFile,
        node: &str,
        cgroup_mount: &Path,
    ) -> Result<Self, FileError> {
        Self::build_with(path, file, Some((node, cgroup_mount)))
    }

    /// `local` is this node's name and cgroup2 mount, when the registry
    /// serves a running proxy.
    fn build_with(
        path: &Path,
        file: WorkloadsFile,
        local: Option<(&str, &Path)>,
    ) -> Result<Self, FileError> {
        let mut reg = Self::default();
        let WorkloadsFile {
            workloads,
            nodes,
            services,
        } = file;
        for (i, n) in nodes.into_iter().enumerate() {
            if n.name.is_empty() || reg.nodes.insert(n.name.clone(), n.address).is_some() {
                let msg = format!("node {:?} is empty or listed twice", n.name);
                return Err(FileError::invalid(path, format!("nodes[{i}].name"), msg));
            }
        }
        let mut names = HashSet::new();
        for (i, entry) in workloads.into_iter().enumerate() {
            let field = |f: &str| format!("workloads[{i}].{f}");
            let w = Arc::new(
                Workload::try_from(entry)
                    .map_err(|(f, m)| FileError::invalid(path, field(f), m))?,
            );
            if !names.insert((w.namespace.clone(), w.name.clone())) {
                return Err(FileError::invalid(
                    path,
                    field("name"),
                    format!("{w} is listed twice"),
                ));
            }
            for ip in &w.ips {
                if let Some(other) = reg.by_ip.insert(*ip, w.clone()) {
                    let msg = format!("{ip} is also claimed by {other}");
                    return Err(FileError::invalid(path, field("ips"), msg));
                }
            }
            let Some((node, cgroup_mount)) = local else {
                reg.all.push(w);
                continue;
            };
            if w.node != node && !reg.nodes.contains_key(&w.node) {
                let msg = format!("node {:?} has no entry under `nodes`", w.node);
                return Err(FileError::invalid(path, field("node"), msg));
            }
            if w.enrolled {
                reg.hosted
                    .entry(w.node.clone())
                    .or_default()
                    .entry(w.namespace.clone())
                    .or_default()
                    .insert(w.service_account.clone());
            }
            if w.node == node && w.enrolled {
                if let Some(dir) = &w.cgroup {
                    let id = cgroup::cgroup_id(&cgroup::resolve(cgroup_mount, dir))
                        .map_err(|e| FileError::invalid(path, field("cgroup"), e))?;
                    reg.by_cgroup.insert(id, w.clone());
                }
            }
            reg.all.push(w);
        }
        reg.services = Services::build(services, &reg.all, &reg.by_ip, &mut reg.warnings)
            .map_err(|(i, (f, m))| FileError::invalid(path, format!("services[{i}].{f}"), m))?;
        Ok(reg)
    }

    /// The services, by VIP.
    pub fn services(&self) -> &Services {
        &self.services
    }

    /// Keeps the load-balancing state of `old` (see
    /// [`Services::inherit_loads`]); call on a freshly built registry.
    pub fn inherit_loads(&mut self, old: &Registry) {
        self.services.inherit_loads(&old.services);
    }

    /// Problems in the file that did not reject it, to log.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Cgroup ids of the enrolled pods on this node: the kernel redirects
    /// connections from these cgroups and their descendants.
    pub fn enrolled_cgroups(&self) -> impl Iterator<Item = u64> + '_ {
        self.by_cgroup.keys().copied()
    }

    /// Attributes a connection from `cgroup_id` with source `ip`.
    pub fn identify(&self, cgroup_id: u64, ip: IpAddr) -> Result<&Arc<Workload>, Unknown> {
        let w = self.by_cgroup.get(&cgroup_id).ok_or(Unknown::Cgroup)?;
        if w.ips.contains(&ip.to_canonical()) {
            Ok(w)
        } else {
            Err(Unknown::SourceIp)
        }
    }

    /// The workload that owns `ip`, on any node.
    pub fn by_ip(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.by_ip.get(&ip.to_canonical())
    }

    /// Every workload, in file order.
    pub fn all(&self) -> &[Arc<Workload>] {
        &self.all
    }

    /// The tunnel address of `node`'s proxy.
    pub fn node_address(&self, node: &str) -> Option<IpAddr> {
        self.nodes.get(node).copied()
    }

    /// Whether `node` runs a workload with this namespace and service account.
    pub fn hosts(&self, node: &str, namespace: &str, service_account: &str) -> bool {
        self.hosted
            .get(node)
            .and_then(|namespaces| namespaces.get(namespace))
            .is_some_and(|accounts| accounts.contains(service_account))
    }

    /// (namespace, service account) of every enrolled workload on `node`.
    pub fn identities_on(&self, node: &str) -> BTreeSet<(String, String)> {
        self.all
            .iter()
            .filter(|w| w.node == node && w.enrolled)
            .map(|w| (w.namespace.clone(), w.service_account.clone()))
            .collect()
    }
}

impl TryFrom<WorkloadFile> for Workload {
    /// (field, message)
    type Error = (&'static str, String);

    fn try_from(file: WorkloadFile) -> Result<Self, Self::Error> {
        let WorkloadFile {
            name,
            namespace,
            service_account,
            node,
            ips,
            labels,
            cgroup,
            mesh,
        } = file;
        check_dns_label("name", &name)?;
        check_dns_label("namespace", &namespace)?;
        check_dns_label("serviceAccount", &service_account)?;
        if node.is_empty() {
            return Err(("node", "must not be empty".into()));
        }
        if ips.is_empty() {
            return Err(("ips", "must list at least one IP".into()));
        }
        let ips = ips.into_iter().map(|ip| ip.to_canonical()).collect();
        Ok(Self {
            name,
            namespace,
            service_account,
            node,
            ips,
            labels,
            cgroup,
            enrolled: mesh.unwrap_or(true),
        })
    }
}

/// Kubernetes names used in SPIFFE IDs: lowercase RFC 1123 labels (service
/// accounts may contain dots, which SPIFFE path segments also allow).
/// Discovery uses it to leave out one object the registry would refuse.
pub fn check_dns_label(field: &'static str, value: &str) -> Result<(), (&'static str, String)> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !value.starts_with(['-', '.'])
        && !value.ends_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err((field, format!("{value:?} is not a valid Kubernetes name")))
    }
}

/// The SPIFFE IDs of the workloads on `node`.
pub fn local_identities(registry: &Registry, node: &str, trust_domain: &str) -> BTreeSet<SpiffeId> {
    registry
        .identities_on(node)
        .into_iter()
        .filter_map(|(ns, sa)| SpiffeId::workload(trust_domain, &ns, &sa).ok())
        .collect()
}

#[cfg(test)]
mod services_tests;
#[cfg(test)]
mod tests;
