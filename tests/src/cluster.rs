//! The cluster itself: its topology (nodes, pods, the standard four pods),
//! the [`Cluster`] value with its settings, names (per-cluster prefix,
//! namespaces, cgroups, files) and addresses, and the removal of what a
//! cluster built: on drop, or by [`sweep`] for clusters whose creating
//! process is gone.
//!
//! The methods of [`Cluster`] are spread over the modules by concern; this
//! one holds what every other module needs. Starting a cluster and tearing
//! it down on drop are in `lifecycle`.

use std::{
    collections::BTreeSet,
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{bail, Context, Result};

use crate::{cgroups, cgroups::cgroup2_mount, netns, remote::Split};

/// The mesh CIDRs every cluster configures.
pub const MESH_CIDRS: [&str; 2] = ["10.20.0.0/16", "fd00:20::/32"];
/// The outbound capture port.
pub const OUTBOUND_PORT: u16 = 15001;
/// The admin port (loopback inside each node netns).
pub const ADMIN_PORT: u16 = 15020;

/// A node of the test cluster.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub name: &'static str,
    /// Third octet of its pod CIDR and link address index.
    pub index: u8,
}

/// A pod of the test cluster.
#[derive(Debug, Clone)]
pub struct PodSpec {
    pub name: &'static str,
    pub namespace: &'static str,
    pub service_account: &'static str,
    pub node: &'static str,
    /// Last octet of its addresses.
    pub host: u8,
}

/// The standard topology: two nodes, two pods on each.
pub fn standard_pods() -> Vec<PodSpec> {
    let pod = |name, namespace, service_account, node, host| PodSpec {
        name,
        namespace,
        service_account,
        node,
        host,
    };
    vec![
        pod("frontend", "shop", "frontend", "node-a", 10),
        pod("cache", "shop", "cache", "node-a", 11),
        pod("backend", "shop", "backend", "node-b", 10),
        pod("db", "data", "db", "node-b", 11),
    ]
}

/// The pod's UID, as the in-test API server lists it.
pub fn pod_uid(pod: &PodSpec) -> String {
    format!(
        "{:08x}-0000-4000-8000-{:012x}",
        node_index(pod.node),
        pod.host
    )
}

/// The cluster's nodes.
pub(crate) const NODES: [NodeSpec; 2] = [
    NodeSpec {
        name: "node-a",
        index: 1,
    },
    NodeSpec {
        name: "node-b",
        index: 2,
    },
];

/// Paths of the binaries the cluster runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub nodeward: PathBuf,
    pub nw_pod: PathBuf,
}

impl Binaries {
    /// `NODEWARD_BIN`/`NW_POD_BIN`, else siblings in the running executable's target dir.
    pub fn locate() -> Result<Self> {
        let exe = std::env::current_exe()?;
        let mut dir = exe.parent().context("exe dir")?.to_owned();
        if dir.ends_with("deps") {
            dir.pop();
        }
        let pick = |var: &str, name: &str| -> Result<PathBuf> {
            let p = std::env::var_os(var).map_or_else(|| dir.join(name), PathBuf::from);
            if !p.exists() {
                bail!(
                    "{} not found: build it first (`cargo xtask test` does) or set {var}",
                    p.display()
                );
            }
            Ok(p)
        };
        Ok(Self {
            nodeward: pick("NODEWARD_BIN", "nodeward")?,
            nw_pod: pick("NW_POD_BIN", "nw-pod")?,
        })
    }
}

/// A running test cluster; dropping it tears everything down.
///
/// Started by [`Cluster::start`] and its variants; its methods live with
/// their concern: network building, proxy config and workloads file, logs,
/// processes (proxies and pod servers), traffic (pod clients), the admin
/// port and metrics, policies.
pub struct Cluster {
    pub prefix: String,
    pub bins: Binaries,
    pub pods: Vec<PodSpec>,
    pub(crate) dir: PathBuf,
    pub(crate) cgroup_root: PathBuf,
    pub(crate) netns: Vec<String>,
    pub(crate) proxies: Vec<(String, Child)>,
    pub(crate) others: Vec<Child>,
    pub(crate) options: Options,
    /// `app` label overrides (pod name → label), see [`Cluster::relabel`].
    pub(crate) app_labels: std::sync::Mutex<std::collections::BTreeMap<String, String>>,
    /// Pods left out of the workloads file, see [`Cluster::unlist`].
    pub(crate) unlisted: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// Pods listed with `mesh: false`, see [`Cluster::unenroll`].
    pub(crate) unenrolled: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// The workloads file's `services:` items, see [`Cluster::set_services`].
    pub(crate) services: std::sync::Mutex<String>,
    /// With `Options::kubernetes`: the API server in node-a's netns.
    pub(crate) api: Option<crate::apiserver::BlockingApiServer>,
    /// When the other node runs in another machine (see `remote`).
    pub(crate) split: Option<Split>,
    /// This cluster made its directory (false for an agent's half, whose
    /// directory belongs to the driver in the other machine).
    pub(crate) owns_dir: bool,
}

/// Proxy settings a test can change.
#[derive(Debug, Clone)]
pub struct Options {
    /// `STRICT` or `PERMISSIVE`.
    pub mtls: &'static str,
    /// Workload certificate lifetime (`identity.certLifetime`).
    pub cert_lifetime: &'static str,
    /// `policy.defaultPolicy`: `deny` or `allow`.
    pub default_policy: &'static str,
    /// Files written to the shared policy directory before the proxies
    /// start, as (file name, YAML).
    pub policies: Vec<(String, String)>,
    /// Instead of writing `policies`, make the policy directory a symlink
    /// to this one, so its files are used (and reloaded) where they are.
    pub policy_link: Option<PathBuf>,
    /// `lifecycle.drainDeadline`.
    pub drain_deadline: &'static str,
    /// `sockmap.enabled` (off by default, as in the product).
    pub sockmap: bool,
    /// `flows.enabled` (on by default, as in the product).
    pub flows: bool,
    /// `tunnel:` as a YAML flow mapping (`{idleTimeout: 2s}`); empty for
    /// the product's defaults.
    pub tunnel: &'static str,
    /// `http:` as a YAML flow mapping (`{idleTimeout: 2s}`); empty for
    /// the product's defaults.
    pub http: &'static str,
    /// `discovery: kubernetes` against an in-test API server in node-a's
    /// netns (instead of the workloads file); pods' cgroups are laid out as
    /// kubelet's systemd driver lays them out.
    pub kubernetes: bool,
    /// `tracing:` as a YAML flow mapping (see `otlp::tracing_config`);
    /// empty: tracing off, as in the product.
    pub tracing: String,
    /// `runtime.workerThreads`; `None`: the product's default.
    pub worker_threads: Option<usize>,
}

/// A mesh-wide policy that allows every connection: the default for tests
/// that are not about authorization.
pub const ALLOW_ALL: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: istio-system}
spec:
  action: ALLOW
  rules: [{}]
";

impl Options {
    /// The defaults, with exactly these policy files (no allow-all).
    pub fn with_policies(policies: &[(&'static str, &str)]) -> Self {
        Self {
            policies: policies
                .iter()
                .map(|(name, text)| ((*name).to_owned(), (*text).to_owned()))
                .collect(),
            ..Self::default()
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            mtls: "STRICT",
            cert_lifetime: "24h",
            default_policy: "deny",
            policies: vec![("allow-all.yaml".to_owned(), ALLOW_ALL.to_owned())],
            policy_link: None,
            drain_deadline: "2s",
            sockmap: false,
            flows: true,
            tunnel: "",
            http: "",
            kubernetes: false,
            tracing: String::new(),
            worker_threads: None,
        }
    }
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl Cluster {
    /// A unique prefix for a test cluster: `nwt<pid>x<seq>`.
    pub fn unique_prefix() -> String {
        format!(
            "nwt{}x{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// The cluster's directory (emptied) and cgroup root under `prefix`,
    /// marked with this process's pid: the first step of
    /// [`Cluster::start_with_prefix`]. Nothing runs yet.
    pub(crate) fn new(prefix: &str, pods: Vec<PodSpec>, options: Options) -> Result<Self> {
        let mount = cgroup2_mount()?;
        let dir = std::env::temp_dir().join(prefix);
        release_mounts(&dir);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        let mut c = Self::blank(prefix, dir, pods, options, mount.join(prefix))?;
        c.split = Split::from_env();
        fs::write(c.cgroup_root_marker(), std::process::id().to_string())?;
        Ok(c)
    }

    /// This machine's half of the cluster `prefix` that the driver in the
    /// other machine made in `dir` (shared): nothing built yet, the
    /// directory left as it is.
    pub(crate) fn joining(prefix: &str, dir: &Path, split: Split) -> Result<Self> {
        let mount = cgroup2_mount()?;
        let options = Options::default();
        let mut c = Self::blank(
            prefix,
            dir.to_owned(),
            standard_pods(),
            options,
            mount.join(prefix),
        )?;
        c.split = Some(split);
        c.owns_dir = false;
        Ok(c)
    }

    fn blank(
        prefix: &str,
        dir: PathBuf,
        pods: Vec<PodSpec>,
        options: Options,
        cgroup_root: PathBuf,
    ) -> Result<Self> {
        Ok(Self {
            prefix: prefix.to_owned(),
            bins: Binaries::locate()?,
            pods,
            dir,
            cgroup_root,
            netns: Vec::new(),
            proxies: Vec::new(),
            others: Vec::new(),
            options,
            app_labels: std::sync::Mutex::default(),
            unlisted: std::sync::Mutex::default(),
            unenrolled: std::sync::Mutex::default(),
            services: std::sync::Mutex::default(),
            api: None,
            split: None,
            owns_dir: true,
        })
    }

    /// Whether `node` runs in this machine (always, unless split).
    pub fn is_local(&self, node: &str) -> bool {
        self.split.as_ref().is_none_or(|s| s.local == node)
    }

    /// The agent to ask about `node` when it runs in the other machine.
    pub(crate) fn remote(&self, node: &str) -> Option<&Split> {
        self.split.as_ref().filter(|s| s.local != node)
    }

    /// The nodes this machine runs.
    pub(crate) fn local_nodes(&self) -> Vec<NodeSpec> {
        NODES
            .into_iter()
            .filter(|n| self.is_local(n.name))
            .collect()
    }

    fn cgroup_root_marker(&self) -> PathBuf {
        self.dir.join("owner")
    }

    /// Network namespace name of a node or pod.
    pub fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// cgroup directory of a node's pods.
    pub fn node_cgroup(&self, node: &str) -> PathBuf {
        self.cgroup_root.join(node)
    }

    /// The spec of pod `name`.
    pub fn pod(&self, name: &str) -> &PodSpec {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// The cgroup of pod `name` (its containers' cgroups go below it).
    pub fn cgroup_of(&self, name: &str) -> PathBuf {
        self.pod_cgroup(self.pod(name))
    }

    pub(crate) fn pod_cgroup(&self, pod: &PodSpec) -> PathBuf {
        if self.options.kubernetes {
            return self
                .node_cgroup(pod.node)
                .join("kubepods.slice/kubepods-besteffort.slice")
                .join(format!(
                    "kubepods-besteffort-pod{}.slice",
                    pod_uid(pod).replace('-', "_")
                ));
        }
        self.node_cgroup(pod.node).join(pod.name)
    }

    /// A pod's IPv4 address.
    pub fn ip4(&self, pod: &str) -> IpAddr {
        let p = self.pod(pod);
        format!("10.20.{}.{}", node_index(p.node), p.host)
            .parse()
            .expect("static address")
    }

    /// A pod's IPv6 address.
    pub fn ip6(&self, pod: &str) -> IpAddr {
        let p = self.pod(pod);
        format!("fd00:20:{}::{}", node_index(p.node), p.host)
            .parse()
            .expect("static address")
    }

    /// A node's address on the inter-node link (outside the mesh CIDRs).
    pub fn node_ip(&self, node: &str) -> IpAddr {
        format!("10.99.0.{}", node_index(node))
            .parse()
            .expect("static address")
    }

    /// The proxy address pods of `node` are redirected to.
    pub fn gateway4(&self, node: &str) -> IpAddr {
        format!("10.20.{}.1", node_index(node))
            .parse()
            .expect("static address")
    }

    /// Root CA directory (`ca init`); node CAs are in `<ca_dir>/<node>`.
    pub fn ca_dir(&self) -> PathBuf {
        self.dir.join("ca")
    }

    /// The config file of a node's proxy.
    pub fn config_path(&self, node: &str) -> PathBuf {
        self.dir.join(format!("{node}.yaml"))
    }

    /// The cluster's own BPF filesystem (pins of both proxies live here).
    pub fn bpffs(&self) -> PathBuf {
        self.dir.join("bpffs")
    }

    /// A private bpffs instance per cluster: pins never collide with other
    /// tests, and unmounting it releases whatever a killed proxy left pinned.
    pub(crate) fn mount_bpffs(&self) -> Result<()> {
        fs::create_dir_all(self.bpffs())?;
        let status = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(self.bpffs())
            .status()
            .context("mount -t bpf")?;
        if !status.success() {
            bail!("mounting bpffs at {} failed", self.bpffs().display());
        }
        Ok(())
    }

    /// Removes what the cluster built, once its processes are stopped:
    /// cgroups (killing what is left in them), namespaces and bpffs; its
    /// directory too, if it made it (not an agent's half), unless
    /// `NW_KEEP_LOGS` is set or the thread panics (its logs then say what
    /// went wrong).
    pub(crate) fn remove(&self) {
        if let Some(split) = &self.split {
            // The NIC on the wire goes back to the machine's own namespace
            // now, whatever still holds the node's netns (the next cluster
            // needs it).
            let ns = self.ns(&split.local);
            let back = ["-n", &ns, "link", "set", "dev", "link0", "netns", "1"];
            let _ = Command::new("ip").args(back).status();
        }
        teardown(&self.cgroup_root, &self.netns);
        release_mounts(&self.dir);
        if self.owns_dir && std::env::var_os("NW_KEEP_LOGS").is_none() && !std::thread::panicking()
        {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Removes clusters whose creating process is gone (killed test runs).
pub fn sweep() {
    let Ok(names) = netns::list() else {
        return;
    };
    for prefix in dead_prefixes(&names) {
        sweep_prefix(&prefix);
    }
}

/// Removes everything a cluster under `prefix` built, whoever built it and
/// whether or not it still runs: kills every process in its cgroup tree
/// (proxies, pod servers, commands run in pods; their BPF links go with
/// them), deletes its namespaces and cgroups, releases its bpffs (and so
/// its pins) and removes its directory. What `nw-demo down` and a new demo
/// do to a demo whose owner died.
pub fn sweep_prefix(prefix: &str) {
    let netns: Vec<String> = netns::list()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .collect();
    if let Ok(mount) = cgroup2_mount() {
        teardown(&mount.join(prefix), &netns);
    }
    release_mounts(&std::env::temp_dir().join(prefix));
    let _ = fs::remove_dir_all(std::env::temp_dir().join(prefix));
}

/// Cluster prefixes ([`Cluster::unique_prefix`]) among the namespace
/// `names` whose creating process is gone.
fn dead_prefixes(names: &[String]) -> BTreeSet<String> {
    let mut dead_prefixes = BTreeSet::new();
    for name in names {
        if let Some(prefix) = name.split('-').next().filter(|p| p.starts_with("nwt")) {
            let pid = prefix
                .trim_start_matches("nwt")
                .split('x')
                .next()
                .unwrap_or("");
            if !Path::new(&format!("/proc/{pid}")).exists() {
                dead_prefixes.insert(prefix.to_owned());
            }
        }
    }
    dead_prefixes
}

/// Unmounts every filesystem mounted below `dir` (the cluster's bpffs),
/// which also releases whatever was still pinned there.
pub fn release_mounts(dir: &Path) {
    let Ok(mounts) = fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    let prefix = format!("{}/", dir.display());
    for target in mounts.lines().filter_map(|l| l.split(' ').nth(1)) {
        if target.starts_with(&prefix) {
            let _ = Command::new("umount").args(["-l", target]).status();
        }
    }
}

/// Kills every process in the cgroup tree, then removes namespaces and cgroups.
pub fn teardown(cgroup_root: &Path, netns: &[String]) {
    cgroups::kill_and_remove(cgroup_root);
    for ns in netns {
        netns::delete(ns);
    }
}

/// The index of node `node` (see [`NodeSpec::index`]).
pub(crate) fn node_index(node: &str) -> u8 {
    NODES
        .iter()
        .find(|n| n.name == node)
        .map_or_else(|| panic!("no node {node}"), |n| n.index)
}
