//! A throwaway Kubernetes-like cluster built from network namespaces.
//!
//! Two nodes (`node-a`, `node-b`), each a netns with a bridge for its pods and
//! a veth link to the other node; four pods, each a netns with a veth on its
//! node's bridge and its own cgroup v2 directory below its node's cgroup. A
//! real `nodeward` runs in each node netns with its BPF programs attached to
//! the node cgroup. Every name starts with a per-cluster prefix that embeds the
//! creating pid, so clusters run in parallel and [`sweep`] can remove what a
//! killed run left behind. Nothing is added to the root network namespace.

use std::{
    fs,
    io::Write,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

pub mod bench;

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

const NODES: [NodeSpec; 2] = [
    NodeSpec {
        name: "node-a",
        index: 1,
    },
    NodeSpec {
        name: "node-b",
        index: 2,
    },
];

/// Pseudo-random bytes (xorshift), so corruption or reordering is detected.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

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

/// True when the process may create namespaces, cgroups and BPF links.
/// Without root: in CI this panics (a skipped e2e suite must not pass), locally it says so.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "{test}: end-to-end tests need root (netns, cgroups, eBPF); CI must run them as root"
        );
    }
    eprintln!("SKIPPED {test}: needs root (netns, cgroups, eBPF)");
    false
}

/// A running test cluster; dropping it tears everything down.
pub struct Cluster {
    pub prefix: String,
    pub bins: Binaries,
    pub pods: Vec<PodSpec>,
    dir: PathBuf,
    cgroup_root: PathBuf,
    netns: Vec<String>,
    proxies: Vec<(String, Child)>,
    others: Vec<Child>,
    options: Options,
    /// `app` label overrides (pod name → label), see [`Cluster::relabel`].
    app_labels: std::sync::Mutex<std::collections::BTreeMap<String, String>>,
    /// Pods left out of the workloads file, see [`Cluster::unlist`].
    unlisted: std::sync::Mutex<std::collections::BTreeSet<String>>,
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
    pub policies: Vec<(&'static str, String)>,
    /// Instead of writing `policies`, make the policy directory a symlink
    /// to this one, so its files are used (and reloaded) where they are.
    pub policy_link: Option<PathBuf>,
    /// `lifecycle.drainDeadline`.
    pub drain_deadline: &'static str,
    /// `sockmap.enabled` (off by default, as in the product).
    pub sockmap: bool,
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
                .map(|(name, text)| (*name, (*text).to_owned()))
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
            policies: vec![("allow-all.yaml", ALLOW_ALL.to_owned())],
            policy_link: None,
            drain_deadline: "2s",
            sockmap: false,
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

    /// Builds the topology and starts both node proxies.
    pub fn start() -> Self {
        Self::start_with(Options::default())
    }

    /// Like [`Cluster::start`], with non-default proxy settings.
    pub fn start_with(options: Options) -> Self {
        Self::start_with_prefix(&Self::unique_prefix(), standard_pods(), options)
            .unwrap_or_else(|e| panic!("starting the test cluster: {e:#}"))
    }

    /// Builds the topology under `prefix` and starts both node proxies.
    pub fn start_with_prefix(prefix: &str, pods: Vec<PodSpec>, options: Options) -> Result<Self> {
        sweep();
        let mount = cgroup2_mount()?;
        let dir = std::env::temp_dir().join(prefix);
        release_mounts(&dir);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        let mut c = Self {
            prefix: prefix.to_owned(),
            bins: Binaries::locate()?,
            pods,
            dir,
            cgroup_root: mount.join(prefix),
            netns: Vec::new(),
            proxies: Vec::new(),
            others: Vec::new(),
            options,
            app_labels: std::sync::Mutex::default(),
            unlisted: std::sync::Mutex::default(),
        };
        fs::write(c.cgroup_root_marker(), std::process::id().to_string())?;
        c.mount_bpffs()?;
        c.build_network()?;
        c.write_files()?;
        for node in NODES {
            c.start_proxy(node.name)?;
        }
        Ok(c)
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

    fn pod_cgroup(&self, pod: &PodSpec) -> PathBuf {
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

    fn build_network(&mut self) -> Result<()> {
        for node in NODES {
            let ns = self.ns(node.name);
            self.add_netns(&ns)?;
            let i = node.index;
            ip(&ns, &["link", "add", "br0", "type", "bridge"])?;
            ip(
                &ns,
                &["addr", "add", &format!("10.20.{i}.1/24"), "dev", "br0"],
            )?;
            ip(
                &ns,
                &[
                    "addr",
                    "add",
                    &format!("fd00:20:{i}::1/64"),
                    "dev",
                    "br0",
                    "nodad",
                ],
            )?;
            ip(&ns, &["link", "set", "br0", "up"])?;
            for (k, v) in [
                ("net.ipv4.ip_forward", "1"),
                ("net.ipv6.conf.all.forwarding", "1"),
            ] {
                run_cmd(Command::new("ip").args([
                    "netns",
                    "exec",
                    &ns,
                    "sysctl",
                    "-qw",
                    &format!("{k}={v}"),
                ]))?;
            }
        }
        let (a, b) = (self.ns("node-a"), self.ns("node-b"));
        ip(
            &a,
            &[
                "link", "add", "link0", "type", "veth", "peer", "name", "link0", "netns", &b,
            ],
        )?;
        for (ns, i, other) in [(&a, 1, 2), (&b, 2, 1)] {
            ip(
                ns,
                &["addr", "add", &format!("10.99.0.{i}/24"), "dev", "link0"],
            )?;
            ip(
                ns,
                &[
                    "addr",
                    "add",
                    &format!("fd00:99::{i}/64"),
                    "dev",
                    "link0",
                    "nodad",
                ],
            )?;
            ip(ns, &["link", "set", "link0", "up"])?;
            ip(
                ns,
                &[
                    "route",
                    "add",
                    &format!("10.20.{other}.0/24"),
                    "via",
                    &format!("10.99.0.{other}"),
                ],
            )?;
            ip(
                ns,
                &[
                    "-6",
                    "route",
                    "add",
                    &format!("fd00:20:{other}::/64"),
                    "via",
                    &format!("fd00:99::{other}"),
                ],
            )?;
        }
        for node in NODES {
            fs::create_dir_all(self.node_cgroup(node.name))?;
        }
        for pod in self.pods.clone() {
            self.add_pod(&pod)?;
        }
        Ok(())
    }

    fn add_netns(&mut self, ns: &str) -> Result<()> {
        run_cmd(Command::new("ip").args(["netns", "add", ns]))?;
        self.netns.push(ns.to_owned());
        ip(ns, &["link", "set", "lo", "up"])
    }

    fn add_pod(&mut self, pod: &PodSpec) -> Result<()> {
        let ns = self.ns(pod.name);
        self.add_netns(&ns)?;
        let node_ns = self.ns(pod.node);
        let host_if = format!("v-{}", pod.name.chars().take(12).collect::<String>());
        ip(
            &node_ns,
            &[
                "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
        )?;
        ip(&node_ns, &["link", "set", &host_if, "master", "br0", "up"])?;
        let (i, h) = (node_index(pod.node), pod.host);
        ip(
            &ns,
            &["addr", "add", &format!("10.20.{i}.{h}/24"), "dev", "eth0"],
        )?;
        ip(
            &ns,
            &[
                "addr",
                "add",
                &format!("fd00:20:{i}::{h}/64"),
                "dev",
                "eth0",
                "nodad",
            ],
        )?;
        ip(&ns, &["link", "set", "eth0", "up"])?;
        ip(
            &ns,
            &["route", "add", "default", "via", &format!("10.20.{i}.1")],
        )?;
        ip(
            &ns,
            &[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &format!("fd00:20:{i}::1"),
            ],
        )?;
        fs::create_dir_all(self.pod_cgroup(pod))?;
        Ok(())
    }

    /// Root CA directory (`ca init`); node CAs are in `<ca_dir>/<node>`.
    pub fn ca_dir(&self) -> PathBuf {
        self.dir.join("ca")
    }

    /// Creates the root CA and one intermediate per node with the real CLI.
    fn make_ca(&self) -> Result<()> {
        let ca = self.ca_dir();
        run_cmd(
            Command::new(&self.bins.nodeward)
                .args(["ca", "init", "--out"])
                .arg(&ca),
        )?;
        for node in NODES {
            run_cmd(
                Command::new(&self.bins.nodeward)
                    .args(["ca", "issue-node", "--ca"])
                    .arg(&ca)
                    .args(["--node", node.name, "--out"])
                    .arg(ca.join(node.name)),
            )?;
        }
        Ok(())
    }

    /// Rewrites the workloads file from `self.pods` (proxies reload it).
    pub fn write_workloads(&self) -> Result<()> {
        let mut w = String::from("nodes:\n");
        for node in NODES {
            w += &format!(
                "  - {{name: {}, address: {}}}\n",
                node.name,
                self.node_ip(node.name)
            );
        }
        w += "workloads:\n";
        let labels = self
            .app_labels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let unlisted = self
            .unlisted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for p in self.pods.iter().filter(|p| !unlisted.contains(p.name)) {
            w += &format!(
                "  - name: {}\n    namespace: {}\n    serviceAccount: {}\n    node: {}\n    ips: [{}, '{}']\n    labels: {{app: {}}}\n    cgroup: {}\n",
                p.name, p.namespace, p.service_account, p.node, self.ip4(p.name), self.ip6(p.name),
                labels.get(p.name).map_or(p.name, String::as_str),
                self.pod_cgroup(p).display()
            );
        }
        // Write then rename, so a proxy never reads half a file.
        let tmp = self.dir.join("workloads.yaml.tmp");
        fs::write(&tmp, w)?;
        fs::rename(tmp, self.dir.join("workloads.yaml"))?;
        Ok(())
    }

    fn write_files(&self) -> Result<()> {
        self.make_ca()?;
        self.write_workloads()?;
        if let Some(target) = &self.options.policy_link {
            std::os::unix::fs::symlink(target, self.policy_dir())?;
            return self.write_configs();
        }
        fs::create_dir_all(self.policy_dir())?;
        for (name, text) in &self.options.policies {
            self.write_policy(name, text);
        }
        self.write_configs()
    }

    /// Rewrites both nodes' configs with `sockmap.enabled: on`; takes
    /// effect when a proxy next starts.
    pub fn set_sockmap(&mut self, on: bool) -> Result<()> {
        self.options.sockmap = on;
        self.write_configs()
    }

    fn write_configs(&self) -> Result<()> {
        for node in NODES {
            let i = node.index;
            let cfg = format!(
                "node: {}\npodCgroup: {}\nmeshCidrs: ['{}', '{}']\nproxyAddresses:\n  ipv4: 10.20.{i}.1\n  ipv6: 'fd00:20:{i}::1'\nports:\n  outbound: {OUTBOUND_PORT}\nadmin:\n  address: 127.0.0.1:{ADMIN_PORT}\nworkloadsFile: workloads.yaml\nidentity:\n  dir: ca/{}\n  certLifetime: {}\nmtls: {}\npolicy:\n  dir: policies\n  defaultPolicy: {}\nbpf:\n  pinDir: {}\nlifecycle:\n  drainDeadline: {}\nsockmap:\n  enabled: {}\n",
                node.name,
                self.node_cgroup(node.name).display(),
                MESH_CIDRS[0],
                MESH_CIDRS[1],
                node.name,
                self.options.cert_lifetime,
                self.options.mtls,
                self.options.default_policy,
                self.bpffs().join(node.name).display(),
                self.options.drain_deadline,
                self.options.sockmap,
            );
            fs::write(self.config_path(node.name), cfg)?;
        }
        Ok(())
    }

    /// The policy directory both proxies watch (like a ConfigMap mounted on every node).
    pub fn policy_dir(&self) -> PathBuf {
        self.dir.join("policies")
    }

    /// Writes (or replaces) one policy file, atomically as a rename.
    pub fn write_policy(&self, name: &str, text: &str) {
        let tmp = self.policy_dir().join(format!(".{name}.tmp"));
        fs::write(&tmp, text).expect("write policy");
        fs::rename(&tmp, self.policy_dir().join(name)).expect("rename policy");
    }

    /// Removes one policy file.
    pub fn remove_policy(&self, name: &str) {
        fs::remove_file(self.policy_dir().join(name)).expect("remove policy");
    }

    /// Runs `change`, then waits until both proxies count one more policy
    /// reload with `result` (`ok` or `error`).
    pub fn change_policies(&self, result: &str, change: impl FnOnce(&Self)) {
        let name = "nodeward_policy_reloads_total";
        let before: Vec<f64> = NODES
            .iter()
            .map(|n| self.metric(n.name, name, &[("result", result)]))
            .collect();
        change(self);
        for (node, was) in NODES.iter().zip(before) {
            let now = self.wait_metric(
                node.name,
                name,
                &[("result", result)],
                was + 1.0,
                Duration::from_secs(10),
            );
            assert!(
                now > was,
                "{}: no policy reload with result {result}:\n{}",
                node.name,
                self.proxy_log(node.name)
            );
        }
    }

    /// A node proxy's audit records (one per authorization decision).
    pub fn audit_log(&self, node: &str) -> Vec<Value> {
        json_lines(&self.log_path(node))
            .into_iter()
            .filter(|v| v["log"] == "audit")
            .collect()
    }

    /// The config file of a node's proxy.
    pub fn config_path(&self, node: &str) -> PathBuf {
        self.dir.join(format!("{node}.yaml"))
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    /// The cluster's own BPF filesystem (pins of both proxies live here).
    pub fn bpffs(&self) -> PathBuf {
        self.dir.join("bpffs")
    }

    /// A private bpffs instance per cluster: pins never collide with other
    /// tests, and unmounting it releases whatever a killed proxy left pinned.
    fn mount_bpffs(&self) -> Result<()> {
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

    /// Starts the node proxy of `node` and waits until it is ready.
    pub fn start_proxy(&mut self, node: &str) -> Result<()> {
        self.start_proxy_with(node, &[])
    }

    /// Starts another proxy on `node` with extra `nodeward run` flags (such
    /// as `--takeover`) and waits until it is ready; earlier ones keep running.
    pub fn start_proxy_with(&mut self, node: &str, extra: &[&str]) -> Result<()> {
        let log = self.log_path(node);
        let start = fs::metadata(&log).map_or(0, |m| m.len() as usize);
        let cg = self.cgroup_root.join(format!("proxy-{node}"));
        fs::create_dir_all(&cg)?;
        let child = self
            .nodeward_run(node, &cg, &["--log-format", "json"], extra)
            .env("NODEWARD_LOG", "info")
            .stdout(append(&log)?)
            .stderr(append(&log)?)
            .stdin(Stdio::null())
            .spawn()
            .context("spawning nodeward")?;
        self.proxies.push((node.to_owned(), child));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // Only this run's lines count: a restarted proxy appends to the same log.
            let text = fs::read_to_string(&log).unwrap_or_default();
            if text
                .get(start..)
                .is_some_and(|t| t.contains("nodeward ready"))
            {
                return Ok(());
            }
            let exited = self
                .proxies
                .last_mut()
                .and_then(|(_, c)| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                bail!(
                    "proxy {node} did not become ready ({exited:?}):\n{}",
                    self.proxy_log(node)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `nodeward <global> run --config <node's config> <extra>` in `node`'s
    /// netns and cgroup `cg`.
    fn nodeward_run(&self, node: &str, cg: &Path, global: &[&str], extra: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bins.nw_pod);
        cmd.arg("--netns")
            .arg(self.ns(node))
            .arg("--cgroup")
            .arg(cg)
            .args(["exec", "--"])
            .arg(&self.bins.nodeward)
            .args(global)
            .args(["run", "--config"])
            .arg(self.config_path(node))
            .args(extra);
        cmd
    }

    /// Runs one more `nodeward run` on `node` to completion (for instances
    /// expected to refuse to start); (exit code, output). Bounded: killed
    /// after 20 s.
    pub fn run_proxy_to_exit(&self, node: &str, extra: &[&str]) -> (Option<i32>, String) {
        let cg = self.cgroup_root.join(format!("proxy-{node}-extra"));
        fs::create_dir_all(&cg).expect("cgroup");
        let mut child = self
            .nodeward_run(node, &cg, &[], extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn nodeward");
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let out = child.wait_with_output().expect("output");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    }

    /// Waits (up to `timeout`) for the `index`-th proxy started on `node`
    /// to exit by itself; its exit status, or `None` if it still runs.
    pub fn wait_proxy_exit(
        &mut self,
        node: &str,
        index: usize,
        timeout: Duration,
    ) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self
                .proxies
                .iter_mut()
                .filter(|(n, _)| n == node)
                .nth(index)
                .map(|(_, c)| c)?;
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM to the `index`-th proxy started on `node` without
    /// waiting for it.
    pub fn signal_proxy(&self, node: &str, index: usize) {
        let (_, child) = self
            .proxies
            .iter()
            .filter(|(n, _)| n == node)
            .nth(index)
            .expect("proxy");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }

    /// The pid of the first running proxy of `node`.
    pub fn proxy_pid(&self, node: &str) -> u32 {
        self.proxies
            .iter()
            .find(|(n, _)| n == node)
            .map(|(_, c)| c.id())
            .expect("proxy running")
    }

    /// Stops the node proxy of `node` with SIGTERM and waits for it to exit.
    pub fn stop_proxy(&mut self, node: &str) -> std::process::ExitStatus {
        let i = self
            .proxies
            .iter()
            .position(|(n, _)| n == node)
            .expect("proxy running");
        let (_, mut child) = self.proxies.remove(i);
        terminate(&mut child)
    }

    /// Runs an echo server in `pod` on `port` (all addresses, both families).
    pub fn serve_echo(&mut self, pod: &str, port: u16) {
        let p = self.pod(pod).clone();
        let (ns, cg) = (self.ns(pod), self.pod_cgroup(&p));
        self.serve_echo_in(&ns, Some(&cg), &format!("echo-{pod}-{port}"), port);
    }

    /// Runs a small HTTP/1.1 server in `pod` on `port` that answers every
    /// request with 200 and logs it (`{"request": "GET /path"}`).
    pub fn serve_http(&mut self, pod: &str, port: u16) {
        let p = self.pod(pod).clone();
        let (ns, cg) = (self.ns(pod), self.pod_cgroup(&p));
        self.serve_in(
            &ns,
            Some(&cg),
            &format!("http-{pod}-{port}"),
            "http-serve",
            port,
        );
    }

    /// Requests (`"METHOD /path"`) an HTTP server in `pod` received, in order.
    pub fn http_requests_seen(&self, pod: &str, port: u16) -> Vec<String> {
        json_lines(&self.log_path(&format!("http-{pod}-{port}")))
            .iter()
            .filter_map(|v| v["request"].as_str().map(str::to_owned))
            .collect()
    }

    /// From `pod`: sends `requests` (`"METHOD /path"`) one after another on
    /// one HTTP/1.1 connection to `to`; returns the tool's report, with
    /// `statuses` (0 where no response came).
    pub fn http_calls(&self, pod: &str, to: SocketAddr, requests: &[&str]) -> Value {
        self.http_calls_paced(pod, to, requests, 0)
    }

    /// As [`Cluster::http_calls`], pausing `gap_ms` between requests.
    pub fn http_calls_paced(
        &self,
        pod: &str,
        to: SocketAddr,
        requests: &[&str],
        gap_ms: u64,
    ) -> Value {
        let mut args = vec![
            "http-requests".to_owned(),
            "--to".to_owned(),
            to.to_string(),
            "--gap-ms".to_owned(),
            gap_ms.to_string(),
        ];
        for r in requests {
            args.push("--request".to_owned());
            args.push((*r).to_owned());
        }
        self.pod_tool(pod, &args)
    }

    /// `GET path` on a node proxy's admin port, from inside its netns:
    /// (status, headers, body).
    pub fn admin(&self, node: &str, path: &str) -> (u64, Value, String) {
        self.admin_call(node, &format!("GET {path}"))
    }

    /// `request` ("METHOD /path") on a node proxy's admin port.
    pub fn admin_call(&self, node: &str, request: &str) -> (u64, Value, String) {
        let cg = self.cgroup_root.join(format!("admin-probe-{node}"));
        fs::create_dir_all(&cg).expect("probe cgroup");
        let to = format!("127.0.0.1:{ADMIN_PORT}");
        let args = ["http-requests", "--to", &to, "--request", request];
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let r = self.tool_in(&self.ns(node), &cg, &args);
        (
            r["statuses"][0].as_u64().unwrap_or(0),
            r["headers"][0].clone(),
            r["bodies"][0].as_str().unwrap_or("").to_owned(),
        )
    }

    /// Runs an echo server in a node's netns (outside the mesh, for bypass tests).
    pub fn serve_echo_on_node(&mut self, node: &str, port: u16) {
        let ns = self.ns(node);
        self.serve_echo_in(&ns, None, &format!("echo-{node}-{port}"), port);
    }

    fn serve_echo_in(&mut self, ns: &str, cgroup: Option<&Path>, name: &str, port: u16) {
        self.serve_in(ns, cgroup, name, "echo", port);
    }

    /// Runs the `nw-pod` server `tool` on `port` (all addresses, both
    /// families) and waits until it listens; its log is `name`.
    fn serve_in(&mut self, ns: &str, cgroup: Option<&Path>, name: &str, tool: &str, port: u16) {
        let log = self.log_path(name);
        let mut cmd = Command::new(&self.bins.nw_pod);
        cmd.arg("--netns").arg(ns);
        if let Some(cg) = cgroup {
            cmd.arg("--cgroup").arg(cg);
        }
        let child = cmd
            .args([tool, "--listen", &format!("[::]:{port}")])
            .stdout(append(&log).expect("log file"))
            .stderr(append(&log).expect("log file"))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {tool}: {e}"));
        self.others.push(child);
        wait_for(&log, "listening", Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{tool} listening: {e}"));
    }

    /// Peers an echo server accepted, in order.
    pub fn accepted(&self, server: &str, port: u16) -> Vec<String> {
        json_lines(&self.log_path(&format!("echo-{server}-{port}")))
            .iter()
            .filter_map(|v| v["accepted"].as_str().map(str::to_owned))
            .collect()
    }

    /// From `pod`: connect to `to`, send `bytes`, half-close, read the echo.
    pub fn call(&self, pod: &str, to: SocketAddr, bytes: usize) -> Value {
        self.pod_tool(pod, &call_args(to, bytes, 1))
    }

    /// From `pod`: `count` sequential short calls; returns how many were intact.
    pub fn call_many(&self, pod: &str, to: SocketAddr, bytes: usize, count: usize) -> u64 {
        let v = self.pod_tool(pod, &call_args(to, bytes, count));
        v["intact"].as_u64().expect("intact count")
    }

    /// From `pod`: one call with extra `nw-pod call` flags (`--chunks`,
    /// `--pace-ms`, `--marker`).
    pub fn call_with(&self, pod: &str, to: SocketAddr, bytes: usize, extra: &[&str]) -> Value {
        let mut args = call_args(to, bytes, 1);
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        self.pod_tool(pod, &args)
    }

    /// From `pod`'s network namespace but outside the mesh cgroup, so the
    /// connection is not redirected: a pod bypassing its proxy.
    pub fn call_bypassing_proxy(&self, pod: &str, to: SocketAddr, bytes: usize) -> Value {
        let cg = self.cgroup_root.join(format!("bypass-{pod}"));
        fs::create_dir_all(&cg).expect("bypass cgroup");
        self.tool_in(&self.ns(pod), &cg, &call_args(to, bytes, 1))
    }

    /// Starts `count` short calls from `pod` to `to`, `gap_ms` apart, in
    /// the background; [`finish_tool`] collects the report.
    pub fn spawn_call_stream(&self, pod: &str, to: SocketAddr, count: usize, gap_ms: u64) -> Child {
        let p = self.pod(pod);
        let mut args = call_args(to, 200, count);
        args.extend(["--gap-ms".to_owned(), gap_ms.to_string()]);
        Command::new(&self.bins.nw_pod)
            .arg("--netns")
            .arg(self.ns(pod))
            .arg("--cgroup")
            .arg(self.pod_cgroup(p))
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nw-pod")
    }

    fn pod_tool(&self, pod: &str, args: &[String]) -> Value {
        let p = self.pod(pod);
        self.tool_in(&self.ns(pod), &self.pod_cgroup(p), args)
    }

    fn tool_in(&self, ns: &str, cgroup: &Path, args: &[String]) -> Value {
        let out = Command::new(&self.bins.nw_pod)
            .arg("--netns")
            .arg(ns)
            .arg("--cgroup")
            .arg(cgroup)
            .args(args)
            .output()
            .expect("run nw-pod");
        assert!(
            out.status.success(),
            "nw-pod {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "nw-pod output {e}: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// A node proxy's access-log records (`target = nodeward::access`).
    pub fn access_log(&self, node: &str) -> Vec<Value> {
        json_lines(&self.log_path(node))
            .into_iter()
            .filter(|v| v["target"] == "nodeward::access")
            .collect()
    }

    /// Waits (up to 10 s) for `node`'s access log to hold `n` records
    /// matching `pred`, and returns the matching ones.
    pub fn access_records(
        &self,
        node: &str,
        n: usize,
        pred: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found: Vec<_> = self
                .access_log(node)
                .into_iter()
                .filter(|r| pred(r))
                .collect();
            if found.len() >= n || Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (up to `timeout`) until `node`'s metric reaches `at_least`;
    /// returns the last value read.
    pub fn wait_metric(
        &self,
        node: &str,
        name: &str,
        labels: &[(&str, &str)],
        at_least: f64,
        timeout: Duration,
    ) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.metric(node, name, labels);
            if v >= at_least || Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Gives `pod` the label `app: <app>` instead of its name and rewrites
    /// the workloads file (the proxies reload it within a second).
    pub fn relabel(&self, pod: &str, app: &str) {
        self.app_labels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pod.to_owned(), app.to_owned());
        self.write_workloads().expect("write workloads");
    }

    /// Takes a pod out of the workloads file (as when it is deleted), while
    /// its netns and cgroup stay until teardown.
    pub fn unlist(&self, pod: &str) {
        self.unlisted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pod.to_owned());
        self.write_workloads().expect("write workloads");
    }

    /// Adds a pod to a running cluster and to the workloads file (the
    /// proxies pick it up on their next reload).
    pub fn add_pod_live(&mut self, pod: PodSpec) -> Result<()> {
        self.add_pod(&pod)?;
        self.pods.push(pod);
        self.write_workloads()
    }

    /// The raw log of a node proxy.
    pub fn proxy_log(&self, node: &str) -> String {
        fs::read_to_string(self.log_path(node)).unwrap_or_default()
    }

    /// A node proxy's Prometheus text, fetched from inside its netns.
    pub fn metrics(&self, node: &str) -> String {
        let out = Command::new(&self.bins.nw_pod)
            .arg("--netns")
            .arg(self.ns(node))
            .args([
                "http-get",
                "--addr",
                &format!("127.0.0.1:{ADMIN_PORT}"),
                "--path",
                "/metrics",
            ])
            .output()
            .expect("run nw-pod http-get");
        assert!(
            out.status.success(),
            "metrics: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Sum of the samples of `name` whose labels include every `k="v"` in `labels`.
    pub fn metric(&self, node: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.metrics(node), name, labels)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.proxies {
            terminate(child);
        }
        for child in &mut self.others {
            let _ = child.kill();
            let _ = child.wait();
        }
        teardown(&self.cgroup_root, &self.netns);
        release_mounts(&self.dir);
        if std::env::var_os("NW_KEEP_LOGS").is_none() && !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Opens a TCP connection from inside network namespace `ns` (a socket
/// keeps the namespace it was created in, whichever thread uses it later).
pub fn connect_from(ns: &str, to: SocketAddr) -> Result<std::net::TcpStream> {
    let ns = ns.to_owned();
    std::thread::spawn(move || -> Result<std::net::TcpStream> {
        enter_netns(&ns)?;
        Ok(std::net::TcpStream::connect_timeout(
            &to,
            Duration::from_secs(5),
        )?)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("connect thread panicked"))?
}

/// Moves the calling thread into network namespace `ns`.
fn enter_netns(ns: &str) -> Result<()> {
    let f = fs::File::open(format!("/run/netns/{ns}")).with_context(|| format!("netns {ns}"))?;
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
    Ok(())
}

/// A packet capture on one interface of a network namespace (AF_PACKET,
/// both directions), collecting raw frames until [`Capture::finish`].
pub struct Capture {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Result<Captured>>,
}

/// What a capture saw.
#[derive(Debug, Default)]
pub struct Captured {
    pub frames: usize,
    /// Every captured frame, concatenated.
    pub bytes: Vec<u8>,
}

impl Captured {
    /// Whether `needle` occurs anywhere in the captured bytes.
    pub fn contains(&self, needle: &[u8]) -> bool {
        self.bytes.windows(needle.len()).any(|w| w == needle)
    }
}

/// Upper bound on captured bytes, so a runaway test cannot eat memory.
const CAPTURE_LIMIT: usize = 512 << 20;

impl Capture {
    /// Starts capturing on `iface` inside `ns`; returns once the socket is open.
    pub fn start(ns: &str, iface: &str) -> Result<Self> {
        use std::sync::{atomic::AtomicBool, mpsc, Arc};
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let (ns, name, flag) = (ns.to_owned(), iface.to_owned(), stop.clone());
        let thread = std::thread::spawn(move || {
            let opened = open_capture(&ns, &name);
            let (fd, ifindex) = match opened {
                Ok(v) => {
                    let _ = ready_tx.send(Ok(()));
                    v
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return Err(e);
                }
            };
            capture_loop(&fd, ifindex, &flag)
        });
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => Ok(Self { stop, thread }),
            Ok(Err(e)) => bail!("capture on {iface}: {e}"),
            Err(_) => bail!("capture on {iface} did not start"),
        }
    }

    /// Stops and returns what was captured.
    pub fn finish(self) -> Result<Captured> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("capture thread panicked"))?
    }
}

fn open_capture(ns: &str, iface: &str) -> Result<(std::os::fd::OwnedFd, u32)> {
    use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockProtocol, SockType};
    enter_netns(ns)?;
    let ifindex = nix::net::if_::if_nametoindex(iface).with_context(|| format!("no {iface}"))?;
    let fd = socket::socket(
        AddressFamily::Packet,
        SockType::Raw,
        SockFlag::empty(),
        SockProtocol::EthAll,
    )
    .context("AF_PACKET socket")?;
    let tick = nix::sys::time::TimeVal::new(0, 100_000);
    socket::setsockopt(&fd, sockopt::ReceiveTimeout, &tick).context("SO_RCVTIMEO")?;
    Ok((fd, ifindex))
}

fn capture_loop(
    fd: &std::os::fd::OwnedFd,
    ifindex: u32,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<Captured> {
    use std::os::fd::AsRawFd;
    let mut out = Captured::default();
    let mut buf = vec![0u8; 256 * 1024];
    while !stop.load(Ordering::Relaxed) && out.bytes.len() < CAPTURE_LIMIT {
        match nix::sys::socket::recvfrom::<nix::sys::socket::LinkAddr>(fd.as_raw_fd(), &mut buf) {
            Ok((n, Some(addr))) if addr.ifindex() == ifindex as usize => {
                out.frames += 1;
                out.bytes.extend_from_slice(&buf[..n]);
            }
            Ok(_) => {}
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
            Err(e) => bail!("capture: {e}"),
        }
    }
    Ok(out)
}

/// Arguments of `nw-pod call`.
fn call_args(to: SocketAddr, bytes: usize, count: usize) -> Vec<String> {
    [
        "call",
        "--to",
        &to.to_string(),
        "--send",
        &bytes.to_string(),
        "--count",
        &count.to_string(),
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Parses Prometheus text and sums the matching samples.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            (n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// Removes clusters whose creating process is gone (killed test runs).
pub fn sweep() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    let mut dead_prefixes = std::collections::BTreeSet::new();
    for name in &names {
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
    let Ok(mount) = cgroup2_mount() else { return };
    for prefix in dead_prefixes {
        let netns: Vec<String> = names
            .iter()
            .filter(|n| n.starts_with(&format!("{prefix}-")))
            .cloned()
            .collect();
        teardown(&mount.join(&prefix), &netns);
        release_mounts(&std::env::temp_dir().join(&prefix));
        let _ = fs::remove_dir_all(std::env::temp_dir().join(&prefix));
    }
}

/// `--netns NAME --cgroup DIR`, the pod tools' common arguments.
#[derive(Debug, clap::Args)]
pub struct JoinArgs {
    /// Network namespace (a name under /run/netns) to enter.
    #[arg(long)]
    pub netns: Option<String>,
    /// cgroup v2 directory to join.
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
}

impl JoinArgs {
    /// Joins both (see [`join`]).
    pub fn join(&self) -> Result<()> {
        join(self.netns.as_deref(), self.cgroup.as_deref())
    }
}

/// Joins the cgroup, then the network namespace (a name under /run/netns):
/// what the pod tools do first, before any thread exists, so every later
/// thread inherits both.
pub fn join(netns: Option<&str>, cgroup: Option<&Path>) -> Result<()> {
    if let Some(dir) = cgroup {
        fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
            .with_context(|| format!("joining cgroup {}", dir.display()))?;
    }
    if let Some(ns) = netns {
        let f =
            fs::File::open(format!("/run/netns/{ns}")).with_context(|| format!("netns {ns}"))?;
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
    }
    Ok(())
}

/// Waits for a background `nw-pod` tool and parses its JSON report.
pub fn finish_tool(child: Child) -> Value {
    let out = child.wait_with_output().expect("wait for nw-pod");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "nw-pod output {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
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
    if cgroup_root.exists() {
        let _ = fs::write(cgroup_root.join("cgroup.kill"), "1");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && !cgroup_empty(cgroup_root) {
            std::thread::sleep(Duration::from_millis(20));
        }
        remove_cgroup_tree(cgroup_root);
    }
    for ns in netns {
        let _ = Command::new("ip").args(["netns", "del", ns]).status();
    }
}

fn cgroup_empty(dir: &Path) -> bool {
    fs::read_to_string(dir.join("cgroup.events")).map_or(true, |e| e.contains("populated 0"))
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

/// The cgroup2 mount point (hybrid hosts mount it at `/sys/fs/cgroup/unified`).
pub fn cgroup2_mount() -> Result<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    info.lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mount_point = pre.split_whitespace().nth(4)?;
            (post.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .context("no cgroup2 mount")
}

fn node_index(node: &str) -> u8 {
    NODES
        .iter()
        .find(|n| n.name == node)
        .map_or_else(|| panic!("no node {node}"), |n| n.index)
}

fn ip(ns: &str, args: &[&str]) -> Result<()> {
    run_cmd(Command::new("ip").arg("-n").arg(ns).args(args))
}

fn run_cmd(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn append(path: &Path) -> Result<fs::File> {
    Ok(fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?)
}

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return child.wait().expect("wait for killed child");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `path` contains `needle`.
pub fn wait_for(path: &Path, needle: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{} never contained {needle:?}; it says:\n{text}",
                path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn json_lines(path: &Path) -> Vec<Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Writes `text` to stdout and flushes (for the demo's table).
pub fn print_flush(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}
