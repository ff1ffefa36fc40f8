//! `cargo xtask bench`: every scenario on every path, in one run, on one
//! two-node cluster of network namespaces.
//!
//! Paths, all from pod `frontend` on `node-a`:
//!
//! * `direct`: straight to the pod, from a cgroup outside the mesh (so no
//!   BPF program sees the connection) to a server that is outside it too.
//! * `nodeward`: from the pod's own cgroup, so the kernel hands the
//!   connection to the node proxy; cross-node through the mTLS tunnel,
//!   same-node straight from the proxy. The server sits in the destination
//!   pod's cgroup, so the strict inbound filter runs on its packets.
//! * `haproxy-mtls`: the hand-built alternative, one HAProxy per node netns.
//!   The pod dials its node's HAProxy in plaintext; that one originates
//!   TLS 1.3 with a client certificate to the destination node's HAProxy,
//!   which requires and verifies it and forwards plaintext to the pod. The
//!   same-node row loops through the node's own HAProxy (a sidecar chain).
//!   Session resumption is off on both ends, as it is in nodeward.
//!
//! The load generator is `nw-bench` run in the client pod's netns and cgroup;
//! proxy CPU is utime+stime from `/proc/<pid>/stat` before and after each
//! scenario, proxy memory is VmRSS, both summed over the proxies that carry
//! the path (both nodes cross-node, `node-a` same-node).

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader, Write},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::{json, Value};

use crate::{
    connect_from,
    jwt::{unix_now, JwtSigner, DEMO_ISSUER},
    standard_pods, Cluster, Options,
};

mod traced;

/// What `nw-bench run` was asked for.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where `bench.md` and `bench.json` go.
    pub out_dir: PathBuf,
    /// Duration of each timed scenario.
    pub seconds: f64,
    /// Idle connections for the memory scenario.
    pub idle: usize,
    /// The `nw-bench` binary (the load generator and pod server).
    pub bench_bin: PathBuf,
    /// Scenario names to run; empty runs them all.
    pub only: Vec<String>,
    /// The proxies' `runtime.workerThreads`; `None`: their default.
    pub worker_threads: Option<usize>,
}

/// Server in the destination pod's cgroup: what nodeward dials.
const PORT_MESH: u16 = 9000;
/// The same server outside the mesh cgroup: for `direct` and HAProxy.
const PORT_PLAIN: u16 = 9001;
/// HAProxy, plaintext from pods, to the other node.
const HAPROXY_CROSS: u16 = 17000;
/// HAProxy, plaintext from pods, looping through this node's TLS side.
const HAPROXY_LOCAL: u16 = 17001;
/// HAProxy TLS listener on the node link.
const HAPROXY_TLS: u16 = 17443;
/// The client pod, and the destination pod on each node.
/// The HTTP echo (`nw-pod http-serve`) without and with a JWT check.
const PORT_HTTP: u16 = 8080;
const PORT_HTTP_JWT: u16 = 8081;
const CLIENT: &str = "frontend";
const REMOTE_POD: &str = "backend";
const LOCAL_POD: &str = "cache";
/// Service VIPs (inside the mesh CIDRs) in front of the remote and the
/// local pod, one endpoint each, so the VIP path ends where the pod path does.
const VIP_REMOTE: &str = "10.20.250.1";
const VIP_LOCAL: &str = "10.20.250.2";
const VIP_PORT: u16 = 80;
/// `/proc/<pid>/stat` counts CPU time in USER_HZ, 100 on Linux.
const USER_HZ: f64 = 100.0;

/// The proxy under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Direct,
    Nodeward,
    /// nodeward, the client dialling a Service VIP that the proxy resolves
    /// to the same pod (the cost of Service resolution).
    NodewardVip,
    Haproxy,
    /// nodeward with `sockmap.enabled: true` (the same proxies, restarted).
    NodewardSockmap,
    /// nodeward with `flows.enabled: false` (the same proxies, restarted):
    /// what the flow map costs, measured in the same run.
    NodewardNoFlows,
}

impl Kind {
    /// Table order (the sockmap path runs after all the others, see `run`).
    const ALL: [Self; 6] = [
        Self::Direct,
        Self::Nodeward,
        Self::NodewardVip,
        Self::Haproxy,
        Self::NodewardSockmap,
        Self::NodewardNoFlows,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Nodeward => "nodeward",
            Self::NodewardVip => "nodeward-vip",
            Self::Haproxy => "haproxy-mtls",
            Self::NodewardSockmap => "nodeward-sockmap",
            Self::NodewardNoFlows => "nodeward-noflows",
        }
    }

    fn is_nodeward(self) -> bool {
        matches!(
            self,
            Self::Nodeward | Self::NodewardVip | Self::NodewardSockmap | Self::NodewardNoFlows
        )
    }
}

/// Where the destination pod is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Locality {
    Cross,
    Same,
}

impl Locality {
    const ALL: [Self; 2] = [Self::Cross, Self::Same];

    fn name(self) -> &'static str {
        match self {
            Self::Cross => "cross-node",
            Self::Same => "same-node",
        }
    }
}

/// One path: where the client runs, what it dials, which proxies carry it.
struct PathSpec {
    kind: Kind,
    locality: Locality,
    client_ns: String,
    client_cgroup: PathBuf,
    to: SocketAddr,
    /// cgroups whose processes are the proxies of this path.
    proxies: Vec<PathBuf>,
}

/// A reported number.
struct Metric {
    key: &'static str,
    label: &'static str,
    higher_is_better: bool,
}

const fn metric(key: &'static str, label: &'static str, higher_is_better: bool) -> Metric {
    Metric {
        key,
        label,
        higher_is_better,
    }
}

const METRICS: &[Metric] = &[
    metric("bulk1_gbps", "bulk, 1 stream (Gbit/s)", true),
    metric("bulk8_gbps", "bulk, 8 streams (Gbit/s)", true),
    metric("rr1_p50_us", "1 KiB echo, 1 conn: p50 (µs)", false),
    metric("rr1_p99_us", "1 KiB echo, 1 conn: p99 (µs)", false),
    metric("rr1_p999_us", "1 KiB echo, 1 conn: p99.9 (µs)", false),
    metric("rr64_rps", "1 KiB echo, 64 conns: requests/s", true),
    metric("rr64_p99_us", "1 KiB echo, 64 conns: p99 (µs)", false),
    metric(
        "conn_per_s",
        "new connections/s (8 clients, 64 B echo)",
        true,
    ),
    metric("conn_p99_us", "new connection + echo: p99 (µs)", false),
    metric("http_p50_us", "HTTP echo, 1 conn: p50 (µs)", false),
    metric(
        "http_jwt_p50_us",
        "HTTP echo + JWT check, 1 conn: p50 (µs)",
        false,
    ),
    metric("http_rps", "HTTP echo, 1 conn: requests/s", true),
    metric(
        "http_jwt_rps",
        "HTTP echo + JWT check, 1 conn: requests/s",
        true,
    ),
    metric(
        "jwt_us_per_req",
        "JWT check: added time per request (µs, from requests/s)",
        false,
    ),
    metric("cpu_s_per_gb", "proxy CPU s per GB (bulk)", false),
    metric(
        "cpu_s_per_10k_req",
        "proxy CPU s per 10k requests (echo)",
        false,
    ),
    metric(
        "cpu_s_per_10k_conn",
        "proxy CPU s per 10k new connections",
        false,
    ),
    metric(
        "rss_mb_1",
        "proxy RSS, restarted, 1 idle connection (MB)",
        false,
    ),
    metric("rss_mb_idle", "proxy RSS, N idle connections (MB)", false),
    metric(
        "kb_per_idle_conn",
        "proxy RSS per idle connection (KB)",
        false,
    ),
];

/// The results of one path. `values` also holds `rss_mb_0`, the proxies'
/// RSS after the load scenarios (JSON only: it depends on the path order).
struct Row {
    kind: Kind,
    locality: Locality,
    values: BTreeMap<&'static str, f64>,
    raw: serde_json::Map<String, Value>,
    notes: Vec<String>,
}

/// The cluster, its servers and HAProxies; dropping it stops them and
/// tears the cluster down.
struct Bench {
    children: Vec<Child>,
    /// HAProxy per node, restarted before the idle scenario.
    haproxies: BTreeMap<&'static str, Child>,
    cluster: Cluster,
    settings: Settings,
    /// Whether the running proxies have `sockmap.enabled`.
    sockmap: bool,
    /// Whether the running proxies have `flows.enabled`.
    flows: bool,
}

/// Builds everything, runs every scenario on every path and writes the
/// reports. SIGINT/SIGTERM tear the cluster down before exiting.
pub fn run(settings: &Settings) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the benchmark needs root: it creates network namespaces, cgroups and BPF links");
    }
    let prefix = Cluster::unique_prefix();
    cleanup_on_signal(&prefix)?;
    let (http_tracing, only) = traced::split_only(&settings.only);
    let scenarios = if only.is_empty() && !settings.only.is_empty() {
        Vec::new()
    } else {
        Scenario::selected(&only)?
    };
    let machine = machine_info();
    eprintln!("bench: {machine}");
    let mut bench = Bench::start(&prefix, settings.clone())?;
    let paths = bench.paths()?;
    let mut rows: Vec<Row> = paths
        .iter()
        .map(|p| Row {
            kind: p.kind,
            locality: p.locality,
            values: BTreeMap::new(),
            raw: serde_json::Map::new(),
            notes: Vec::new(),
        })
        .collect();
    // The sockmap path runs after everything else: its bulk runs can
    // exhaust the kernel's TCP memory, which would skew whatever ran next.
    for sockmap in [false, true] {
        for &scenario in &scenarios {
            // A RequestAuthentication makes every port of the workloads
            // it selects HTTP-judged, the raw echo ports too: it is in
            // force only while the JWT scenario runs.
            let jwt = scenario == Scenario::HttpJwt;
            if jwt {
                bench.cluster.change_policies("ok", |c| {
                    c.write_policy(JWT_POLICY_FILE, &jwt_policy());
                });
            }
            for (path, row) in paths.iter().zip(rows.iter_mut()) {
                if (path.kind == Kind::NodewardSockmap) != sockmap {
                    continue;
                }
                eprintln!(
                    "bench: {} {} {}",
                    scenario.name(),
                    path.kind.name(),
                    path.locality.name()
                );
                bench.scenario(scenario, path, row)?;
            }
            if jwt {
                bench
                    .cluster
                    .change_policies("ok", |c| c.remove_policy(JWT_POLICY_FILE));
            }
        }
    }
    let mut machine = machine;
    if http_tracing {
        machine["http_tracing"] = bench.http_tracing()?;
    }
    machine["loadavg_end"] = json!(loadavg());
    machine["nodeward_config"] = json!(fs::read_to_string(bench.cluster.config_path("node-a"))?);
    drop(bench);
    for row in &mut rows {
        derive(row);
    }
    write_reports(settings, &machine, &rows)
}

/// The scenarios, in the order they run (idle last: it leaves the most
/// state behind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Bulk1,
    Bulk8,
    Rr1,
    Rr64,
    Connrate,
    /// HTTP echo on a port the proxy judges as HTTP (nodeward paths only).
    Http,
    /// The same with a JWT on every request, checked by the proxy.
    HttpJwt,
    Idle,
}

impl Scenario {
    const ALL: [Self; 8] = [
        Self::Bulk1,
        Self::Bulk8,
        Self::Rr1,
        Self::Rr64,
        Self::Connrate,
        Self::Http,
        Self::HttpJwt,
        Self::Idle,
    ];

    /// The scenarios named in `only` (all of them when it is empty), in
    /// their usual order.
    fn selected(only: &[String]) -> Result<Vec<Self>> {
        if let Some(bad) = only
            .iter()
            .find(|n| !Self::ALL.iter().any(|s| s.name() == n.as_str()))
        {
            bail!("unknown scenario {bad:?}: pick from bulk1, bulk8, rr1, rr64, connrate, http, httpjwt, idle");
        }
        Ok(Self::ALL
            .into_iter()
            .filter(|s| only.is_empty() || only.iter().any(|n| n == s.name()))
            .collect())
    }

    fn name(self) -> &'static str {
        match self {
            Self::Bulk1 => "bulk1",
            Self::Bulk8 => "bulk8",
            Self::Rr1 => "rr1",
            Self::Rr64 => "rr64",
            Self::Connrate => "connrate",
            Self::Http => "http",
            Self::HttpJwt => "httpjwt",
            Self::Idle => "idle",
        }
    }
}

impl Bench {
    fn start(prefix: &str, settings: Settings) -> Result<Self> {
        let mut options = Options {
            drain_deadline: "1s",
            sockmap: false,
            worker_threads: settings.worker_threads,
            ..Options::default()
        };
        options
            .policies
            .push(("http-bench.yaml".to_owned(), http_policies()));
        let cluster = Cluster::start_with_prefix(prefix, standard_pods(), options)?;
        let mut b = Self {
            children: Vec::new(),
            haproxies: BTreeMap::new(),
            cluster,
            settings,
            sockmap: false,
            flows: true,
        };
        b.tune_sysctls()?;
        for pod in [REMOTE_POD, LOCAL_POD] {
            let mesh = b.pod_cgroup(pod);
            b.serve(pod, &mesh, PORT_MESH)?;
            let plain = b.outside_cgroup(&format!("bench-plain-{pod}"))?;
            b.serve(pod, &plain, PORT_PLAIN)?;
        }
        for pod in [REMOTE_POD, LOCAL_POD] {
            b.cluster.serve_http(pod, PORT_HTTP);
            b.cluster.serve_http(pod, PORT_HTTP_JWT);
        }
        b.define_services();
        b.write_certs()?;
        for node in ["node-a", "node-b"] {
            b.start_haproxy(node)?;
        }
        Ok(b)
    }

    /// One Service per pod under test, its only endpoint that pod; returns
    /// once both proxies reloaded the workloads file.
    fn define_services(&self) {
        let c = &self.cluster;
        let service = |name: &str, vip: &str, pod: &str| {
            format!(
                "  - {{name: {name}, namespace: shop, vips: ['{vip}'], ports: [{{port: {VIP_PORT}, targetPort: {PORT_MESH}}}], endpoints: ['{}']}}\n",
                c.ip4(pod)
            )
        };
        c.reload_workloads(|c| {
            c.set_services(
                &(service("bench-remote", VIP_REMOTE, REMOTE_POD)
                    + &service("bench-local", VIP_LOCAL, LOCAL_POD)),
            );
        });
    }

    fn cgroup_root(&self) -> Result<PathBuf> {
        let node = self.cluster.node_cgroup("node-a");
        Ok(node.parent().context("cluster cgroup root")?.to_owned())
    }

    fn pod_cgroup(&self, pod: &str) -> PathBuf {
        let spec = self.cluster.pod(pod);
        self.cluster.node_cgroup(spec.node).join(spec.name)
    }

    /// A cgroup below the cluster's root but outside every node's pod
    /// cgroup: no BPF program is attached there (torn down with the cluster).
    fn outside_cgroup(&self, name: &str) -> Result<PathBuf> {
        let cg = self.cgroup_root()?.join(name);
        fs::create_dir_all(&cg).with_context(|| format!("cgroup {}", cg.display()))?;
        Ok(cg)
    }

    /// The cluster's scratch directory (CA, configs, logs).
    fn dir(&self) -> Result<PathBuf> {
        let ca = self.cluster.ca_dir();
        Ok(ca.parent().context("cluster dir")?.to_owned())
    }

    /// TIME_WAIT sockets from the connection-rate scenario must not run a
    /// namespace out of ports.
    fn tune_sysctls(&self) -> Result<()> {
        reuse_time_wait(&self.cluster)
    }

    /// Starts `nw-bench server` in `pod`'s netns and `cgroup` on `port`.
    fn serve(&mut self, pod: &str, cgroup: &Path, port: u16) -> Result<()> {
        let log = self.dir()?.join(format!("bench-server-{pod}-{port}.log"));
        let ns = self.cluster.ns(pod);
        let child = spawn_server(&self.settings.bench_bin, &ns, cgroup, port, &log)?;
        self.children.push(child);
        Ok(())
    }

    /// A CA and one certificate (serverAuth + clientAuth) per node, as
    /// HAProxy wants them: `ca.pem`, `<node>.pem` with the key appended.
    fn write_certs(&self) -> Result<()> {
        let dir = self.dir()?.join("haproxy");
        fs::create_dir_all(&dir)?;
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca.distinguished_name
            .push(DnType::CommonName, "nw-bench haproxy CA");
        let ca_cert = ca.self_signed(&ca_key)?;
        fs::write(dir.join("ca.pem"), ca_cert.pem())?;
        let issuer = Issuer::new(ca, ca_key);
        for node in ["node-a", "node-b"] {
            let key = KeyPair::generate()?;
            let mut p = CertificateParams::new(vec![node.to_owned()])?;
            p.distinguished_name.push(DnType::CommonName, node);
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            p.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let cert = p.signed_by(&key, &issuer)?;
            fs::write(
                dir.join(format!("{node}.pem")),
                cert.pem() + &key.serialize_pem(),
            )?;
        }
        Ok(())
    }

    fn haproxy_config(&self, node: &str) -> Result<String> {
        let dir = self.dir()?.join("haproxy");
        let dir = dir.display();
        let other = if node == "node-a" { "node-b" } else { "node-a" };
        let target = if node == "node-a" {
            LOCAL_POD
        } else {
            REMOTE_POD
        };
        let c = &self.cluster;
        let (gw, me, peer) = (c.gateway4(node), c.node_ip(node), c.node_ip(other));
        let pod = c.ip4(target);
        // Each relayed connection holds two descriptors, and root cannot
        // raise the hard limit everywhere (containers without
        // CAP_SYS_RESOURCE): stay under it rather than fail to start.
        let maxconn = nofile_hard().saturating_sub(500) / 2;
        let client =
            format!("ssl crt {dir}/{node}.pem ca-file {dir}/ca.pem verify required no-ssl-reuse");
        Ok(format!(
            "global
    maxconn {maxconn}
    tune.ssl.cachesize 0
    ssl-default-bind-options ssl-min-ver TLSv1.3 no-tls-tickets
    ssl-default-server-options ssl-min-ver TLSv1.3 no-tls-tickets

defaults
    mode tcp
    maxconn {maxconn}
    timeout connect 10s
    timeout client 1h
    timeout server 1h

# Pods dial these in plaintext (the sidecar's outbound hop).
frontend out_cross
    bind {gw}:{HAPROXY_CROSS}
    default_backend tls_to_{other}
backend tls_to_{other}
    server {other} {peer}:{HAPROXY_TLS} {client} verifyhost {other} sni str({other})
frontend out_local
    bind {gw}:{HAPROXY_LOCAL}
    default_backend tls_to_self
backend tls_to_self
    server {node} {me}:{HAPROXY_TLS} {client} verifyhost {node} sni str({node})

# The other side: TLS 1.3 with a required, verified client certificate.
frontend in_tls
    bind {me}:{HAPROXY_TLS} ssl crt {dir}/{node}.pem ca-file {dir}/ca.pem verify required
    default_backend local_pod
backend local_pod
    server {target} {pod}:{PORT_PLAIN}
"
        ))
    }

    fn start_haproxy(&mut self, node: &'static str) -> Result<()> {
        let dir = self.dir()?;
        let cfg = dir.join(format!("haproxy-{node}.cfg"));
        fs::write(&cfg, self.haproxy_config(node)?)?;
        let cg = self.outside_cgroup(&format!("haproxy-{node}"))?;
        let log = fs::File::create(dir.join(format!("haproxy-{node}.log")))?;
        let haproxy = ["/usr/sbin/haproxy", "/usr/local/sbin/haproxy"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("haproxy");
        let child = Command::new(&self.cluster.bins.nw_pod)
            .arg("--netns")
            .arg(self.cluster.ns(node))
            .arg("--cgroup")
            .arg(&cg)
            .args(["exec", "--", haproxy, "-db", "-f"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning haproxy (`cargo xtask setup` installs it)")?;
        self.haproxies.insert(node, child);
        let addr = SocketAddr::new(self.cluster.node_ip(node), HAPROXY_TLS);
        let deadline = Instant::now() + Duration::from_secs(10);
        while connect_from(&self.cluster.ns(node), addr).is_err() {
            if Instant::now() > deadline {
                let text = fs::read_to_string(dir.join(format!("haproxy-{node}.log")));
                bail!(
                    "haproxy on {node} did not start: {}",
                    text.unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn paths(&self) -> Result<Vec<PathSpec>> {
        let c = &self.cluster;
        let client_ns = c.ns(CLIENT);
        let bypass = self.outside_cgroup(&format!("bench-bypass-{CLIENT}"))?;
        let root = self.cgroup_root()?;
        let nodeward = |n: &str| root.join(format!("proxy-{n}"));
        let haproxy = |n: &str| root.join(format!("haproxy-{n}"));
        let mut out = Vec::new();
        for kind in Kind::ALL {
            for locality in Locality::ALL {
                let pod = match locality {
                    Locality::Cross => REMOTE_POD,
                    Locality::Same => LOCAL_POD,
                };
                let carriers = match locality {
                    Locality::Cross => vec!["node-a", "node-b"],
                    Locality::Same => vec!["node-a"],
                };
                let gw = c.gateway4("node-a");
                let (cgroup, to, proxies) = match kind {
                    Kind::Direct => (bypass.clone(), sock(c.ip4(pod), PORT_PLAIN), vec![]),
                    Kind::Nodeward | Kind::NodewardSockmap | Kind::NodewardNoFlows => (
                        self.pod_cgroup(CLIENT),
                        sock(c.ip4(pod), PORT_MESH),
                        carriers.iter().map(|n| nodeward(n)).collect(),
                    ),
                    Kind::NodewardVip => {
                        let vip = match locality {
                            Locality::Cross => VIP_REMOTE,
                            Locality::Same => VIP_LOCAL,
                        };
                        (
                            self.pod_cgroup(CLIENT),
                            sock(vip.parse().context("vip")?, VIP_PORT),
                            carriers.iter().map(|n| nodeward(n)).collect(),
                        )
                    }
                    Kind::Haproxy => {
                        let port = match locality {
                            Locality::Cross => HAPROXY_CROSS,
                            Locality::Same => HAPROXY_LOCAL,
                        };
                        (
                            bypass.clone(),
                            sock(gw, port),
                            carriers.iter().map(|n| haproxy(n)).collect(),
                        )
                    }
                };
                out.push(PathSpec {
                    kind,
                    locality,
                    client_ns: client_ns.clone(),
                    client_cgroup: cgroup,
                    to,
                    proxies,
                });
            }
        }
        Ok(out)
    }

    fn scenario(&mut self, scenario: Scenario, path: &PathSpec, row: &mut Row) -> Result<()> {
        if path.kind.is_nodeward() {
            self.switch_proxies(
                path.kind == Kind::NodewardSockmap,
                path.kind != Kind::NodewardNoFlows,
            )?;
        }
        let secs = self.settings.seconds.to_string();
        let to = path.to.to_string();
        let args: Vec<&str> = match scenario {
            Scenario::Bulk1 => vec!["bulk", "--to", &to, "--streams", "1", "--seconds", &secs],
            Scenario::Bulk8 => vec!["bulk", "--to", &to, "--streams", "8", "--seconds", &secs],
            Scenario::Rr1 => vec![
                "rr",
                "--to",
                &to,
                "--conns",
                "1",
                "--requests",
                "20000",
                "--seconds",
                "10",
            ],
            Scenario::Rr64 => vec![
                "rr",
                "--to",
                &to,
                "--conns",
                "64",
                "--requests",
                "20000",
                "--seconds",
                &secs,
            ],
            Scenario::Connrate => vec![
                "connrate",
                "--to",
                &to,
                "--threads",
                "8",
                "--max",
                "50000",
                "--seconds",
                &secs,
            ],
            Scenario::Http | Scenario::HttpJwt => return self.http(scenario, path, row),
            Scenario::Idle => {
                return match path.kind {
                    Kind::Direct => Ok(()),
                    _ => self.idle(path, row),
                };
            }
        };
        let (mut v, cpu) = self.tool(path, &args)?;
        if let Some(cpu) = cpu {
            v["proxy_cpu_s"] = json!(cpu);
        }
        if v["errors"].as_u64().unwrap_or(0) > 0 {
            row.notes.push(format!(
                "{}: {} errors (first: {})",
                scenario.name(),
                v["errors"],
                v["first_error"]
            ));
        }
        row.raw.insert(scenario.name().to_owned(), v);
        Ok(())
    }

    /// Runs one `nw-bench` client on `path`; its report and the CPU seconds
    /// the path's proxies used meanwhile (`None` for `direct`).
    fn tool(&self, path: &PathSpec, args: &[&str]) -> Result<(Value, Option<f64>)> {
        let before = cpu_seconds(&path.proxies)?;
        let mut child = self
            .client_command(path)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .context("spawning nw-bench")?;
        let deadline = Instant::now() + Duration::from_secs_f64(self.settings.seconds + 60.0);
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("nw-bench {args:?} did not finish in time");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let after = cpu_seconds(&path.proxies)?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "nw-bench {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let v: Value = serde_json::from_slice(&out.stdout).with_context(|| {
            format!("nw-bench output: {}", String::from_utf8_lossy(&out.stdout))
        })?;
        let cpu = (!path.proxies.is_empty()).then_some(after - before);
        Ok((v, cpu))
    }

    /// The HTTP echo, with and without a JWT, on the plain nodeward paths:
    /// both ports are HTTP-judged, only one checks a token.
    fn http(&mut self, scenario: Scenario, path: &PathSpec, row: &mut Row) -> Result<()> {
        if path.kind != Kind::Nodeward {
            return Ok(());
        }
        let jwt = matches!(scenario, Scenario::HttpJwt);
        let port = if jwt { PORT_HTTP_JWT } else { PORT_HTTP };
        let to = SocketAddr::new(path.to.ip(), port).to_string();
        let claims = json!({"iss": DEMO_ISSUER, "sub": "bench", "exp": unix_now() + 3600});
        let token = JwtSigner::demo().sign(&claims);
        let secs = self.settings.seconds.to_string();
        let mut args = vec![
            "http-rr",
            "--to",
            &to,
            "--requests",
            "20000",
            "--seconds",
            &secs,
        ];
        if jwt {
            args.extend(["--bearer", &token]);
        }
        let (mut v, cpu) = self.tool(path, &args)?;
        if let Some(cpu) = cpu {
            v["proxy_cpu_s"] = json!(cpu);
        }
        if v["errors"].as_u64().unwrap_or(0) > 0 {
            let first = &v["first_error"];
            row.notes.push(format!(
                "{}: {} errors (first: {first})",
                scenario.name(),
                v["errors"]
            ));
        }
        row.raw.insert(scenario.name().to_owned(), v);
        Ok(())
    }

    fn client_command(&self, path: &PathSpec) -> Command {
        let mut cmd = Command::new(&self.settings.bench_bin);
        cmd.arg("--netns")
            .arg(&path.client_ns)
            .arg("--cgroup")
            .arg(&path.client_cgroup);
        cmd
    }

    /// Proxy RSS with 1 and then `settings.idle` idle connections open,
    /// from freshly started proxies (so earlier scenarios' heap does not
    /// count, nor does the order of the paths).
    fn idle(&mut self, path: &PathSpec, row: &mut Row) -> Result<()> {
        row.values.insert("rss_mb_0", rss_mb(&path.proxies)?);
        self.restart_proxies(path)?;
        let stages = format!("1,{}", self.settings.idle);
        let mut child = self
            .client_command(path)
            .args(["idle", "--to", &path.to.to_string(), "--stages", &stages])
            .args(["--seconds", "90"])
            .stdout(Stdio::piped())
            .stdin(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawning nw-bench idle")?;
        let result = self.idle_stages(path, row, &mut child);
        drop(child.stdin.take());
        let _ = child.wait();
        result
    }

    /// Restarts both nodes' proxies with `sockmap.enabled: sockmap` and
    /// `flows.enabled: flows` unless they already run that way.
    fn switch_proxies(&mut self, sockmap: bool, flows: bool) -> Result<()> {
        if (self.sockmap, self.flows) == (sockmap, flows) {
            return Ok(());
        }
        let word = |on| if on { "on" } else { "off" };
        eprintln!(
            "bench: restarting the proxies with sockmap {}, flow map {}",
            word(sockmap),
            word(flows)
        );
        self.cluster.set_sockmap(sockmap)?;
        self.cluster.set_flows(flows)?;
        for node in ["node-a", "node-b"] {
            self.cluster.stop_proxy(node);
            self.cluster.start_proxy(node)?;
        }
        (self.sockmap, self.flows) = (sockmap, flows);
        std::thread::sleep(Duration::from_secs(1));
        Ok(())
    }

    /// Restarts the proxies that carry `path`.
    fn restart_proxies(&mut self, path: &PathSpec) -> Result<()> {
        let nodes: &[&'static str] = match path.locality {
            Locality::Cross => &["node-a", "node-b"],
            Locality::Same => &["node-a"],
        };
        for &node in nodes {
            match path.kind {
                Kind::Direct => {}
                Kind::Nodeward
                | Kind::NodewardVip
                | Kind::NodewardSockmap
                | Kind::NodewardNoFlows => {
                    self.cluster.stop_proxy(node);
                    self.cluster.start_proxy(node)?;
                }
                Kind::Haproxy => {
                    if let Some(mut old) = self.haproxies.remove(node) {
                        let _ = old.kill();
                        let _ = old.wait();
                    }
                    self.start_haproxy(node)?;
                }
            }
        }
        std::thread::sleep(Duration::from_secs(1));
        Ok(())
    }

    fn idle_stages(&self, path: &PathSpec, row: &mut Row, child: &mut Child) -> Result<()> {
        let mut stdin = child.stdin.take().context("idle stdin")?;
        let mut lines = BufReader::new(child.stdout.take().context("idle stdout")?).lines();
        let mut stages = Vec::new();
        for key in ["rss_mb_1", "rss_mb_idle"] {
            let line = lines.next().context("idle tool ended early")??;
            let mut v: Value = serde_json::from_str(&line)?;
            // Let the proxies finish their side of the last connections.
            std::thread::sleep(Duration::from_secs(1));
            let rss = rss_mb(&path.proxies)?;
            row.values.insert(key, rss);
            v["proxy_rss_mb"] = json!(rss);
            if v["open"] != v["target"] {
                row.notes.push(format!(
                    "idle: reached {} of {} connections ({})",
                    v["open"],
                    v["target"],
                    if v["error"].is_null() {
                        "time bound".to_owned()
                    } else {
                        v["error"].to_string()
                    }
                ));
            }
            stages.push(v);
            writeln!(stdin, "next")?;
        }
        row.raw.insert("idle".to_owned(), Value::Array(stages));
        Ok(())
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        for child in self.children.iter_mut().chain(self.haproxies.values_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sets `net.ipv4.tcp_tw_reuse` in every namespace of the cluster (its
/// own namespaces only), so TIME_WAIT sockets of churning clients do not
/// run a namespace out of ports.
pub(crate) fn reuse_time_wait(cluster: &Cluster) -> Result<()> {
    let names = ["node-a", "node-b"]
        .into_iter()
        .chain(cluster.pods.iter().map(|p| p.name));
    for name in names {
        let ns = cluster.ns(name);
        let status = Command::new("ip")
            .args(["netns", "exec", &ns, "sysctl", "-qw"])
            .arg("net.ipv4.tcp_tw_reuse=1")
            .status()?;
        if !status.success() {
            bail!("sysctl in {ns} failed");
        }
    }
    Ok(())
}

/// Starts `nw-bench server` (`bench_bin`) in netns `ns` and `cgroup` on
/// `port`, logging to `log`; returns once it listens.
pub(crate) fn spawn_server(
    bench_bin: &Path,
    ns: &str,
    cgroup: &Path,
    port: u16,
    log: &Path,
) -> Result<Child> {
    let mut child = Command::new(bench_bin)
        .arg("--netns")
        .arg(ns)
        .arg("--cgroup")
        .arg(cgroup)
        .args(["server", "--listen", &format!("0.0.0.0:{port}")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(fs::File::create(log)?)
        .spawn()
        .context("spawning nw-bench server")?;
    let stdout = child.stdout.take().context("server stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    if !line.contains("listening") {
        let _ = child.kill();
        let _ = child.wait();
        bail!("server in {ns} on {port} did not start: {line:?}");
    }
    Ok(child)
}

/// The hard `RLIMIT_NOFILE` children inherit.
fn nofile_hard() -> u64 {
    use nix::sys::resource::{getrlimit, Resource};
    getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(_, hard)| hard.min(1 << 20))
}

fn sock(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

/// Derives the table's numbers from the raw scenario reports.
fn derive(row: &mut Row) {
    let raw = &row.raw;
    let f = |scenario: &str, field: &str| raw.get(scenario).and_then(|v| v[field].as_f64());
    let mut put = |key: &'static str, v: Option<f64>| {
        if let Some(v) = v.filter(|v| v.is_finite()) {
            row.values.insert(key, v);
        }
    };
    put("bulk1_gbps", f("bulk1", "gbit_per_s"));
    put("bulk8_gbps", f("bulk8", "gbit_per_s"));
    put("rr1_p50_us", f("rr1", "p50_us"));
    put("rr1_p99_us", f("rr1", "p99_us"));
    put("rr1_p999_us", f("rr1", "p999_us"));
    put("rr64_rps", f("rr64", "requests_per_s"));
    put("rr64_p99_us", f("rr64", "p99_us"));
    put("conn_per_s", f("connrate", "connections_per_s"));
    put("conn_p99_us", f("connrate", "p99_us"));
    put("http_p50_us", f("http", "p50_us"));
    put("http_jwt_p50_us", f("httpjwt", "p50_us"));
    put("http_rps", f("http", "requests_per_s"));
    put("http_jwt_rps", f("httpjwt", "requests_per_s"));
    let per_req = |rps: Option<f64>| rps.filter(|r| *r > 0.0).map(|r| 1e6 / r);
    let added = per_req(f("httpjwt", "requests_per_s"))
        .zip(per_req(f("http", "requests_per_s")))
        .map(|(jwt, plain)| jwt - plain);
    put("jwt_us_per_req", added);
    let sum = |pairs: &[(&str, &str)]| -> Option<f64> {
        pairs.iter().map(|(s, k)| f(s, k)).sum::<Option<f64>>()
    };
    let cpu_bulk = sum(&[("bulk1", "proxy_cpu_s"), ("bulk8", "proxy_cpu_s")]);
    let bytes = sum(&[("bulk1", "bytes"), ("bulk8", "bytes")]);
    put("cpu_s_per_gb", ratio(cpu_bulk, bytes.map(|b| b / 1e9)));
    let cpu_rr = sum(&[("rr1", "proxy_cpu_s"), ("rr64", "proxy_cpu_s")]);
    let reqs = sum(&[("rr1", "total"), ("rr64", "total")]);
    put("cpu_s_per_10k_req", ratio(cpu_rr, reqs.map(|r| r / 1e4)));
    let conns = f("connrate", "total").map(|c| c / 1e4);
    put(
        "cpu_s_per_10k_conn",
        ratio(f("connrate", "proxy_cpu_s"), conns),
    );
    let idle = row.raw.get("idle").and_then(|v| v.get(1)).cloned();
    if let (Some(idle), Some(rss1)) = (idle, row.values.get("rss_mb_1").copied()) {
        let open = idle["open"].as_f64().unwrap_or(0.0);
        let rss = idle["proxy_rss_mb"].as_f64().unwrap_or(0.0);
        if open > 1.0 {
            row.values
                .insert("kb_per_idle_conn", (rss - rss1) * 1000.0 / (open - 1.0));
        }
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// utime + stime of every process in `cgroups`, in seconds.
fn cpu_seconds(cgroups: &[PathBuf]) -> Result<f64> {
    let mut total = 0.0;
    for pid in pids(cgroups)? {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
        match (ticks(11), ticks(12)) {
            (Some(u), Some(s)) => total += (u + s) / USER_HZ,
            _ => bail!("unreadable /proc/{pid}/stat"),
        }
    }
    Ok(total)
}

/// Sum of VmRSS of every process in `cgroups`, in MB (10^6 bytes).
fn rss_mb(cgroups: &[PathBuf]) -> Result<f64> {
    let mut kib = 0.0;
    for pid in pids(cgroups)? {
        let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
        let line = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .context("no VmRSS")?;
        kib += line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<f64>().ok())
            .context("VmRSS value")?;
    }
    Ok(kib * 1024.0 / 1e6)
}

fn pids(cgroups: &[PathBuf]) -> Result<Vec<u32>> {
    let mut out = Vec::new();
    for cg in cgroups {
        let text = fs::read_to_string(cg.join("cgroup.procs"))
            .with_context(|| format!("{}/cgroup.procs", cg.display()))?;
        out.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    if out.is_empty() && !cgroups.is_empty() {
        bail!("no proxy process in {cgroups:?}");
    }
    Ok(out)
}

/// Blocks SIGINT/SIGTERM in this thread (every thread and child started
/// later inherits that) and tears the cluster `prefix` down when one comes.
pub(crate) fn cleanup_on_signal(prefix: &str) -> Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGINT);
    stop.add(Signal::SIGTERM);
    stop.thread_block()?;
    let prefix = prefix.to_owned();
    std::thread::spawn(move || {
        let sig = stop.wait();
        eprintln!("nw-bench: {sig:?}: tearing down {prefix}");
        remove_cluster(&prefix);
        std::process::exit(130);
    });
    Ok(())
}

/// What `sweep` does for a dead run, for ours.
fn remove_cluster(prefix: &str) {
    let names = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let netns: Vec<String> = names
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .map(str::to_owned)
        .collect();
    if let Ok(mount) = crate::cgroup2_mount() {
        crate::teardown(&mount.join(prefix), &netns);
    }
    let dir = std::env::temp_dir().join(prefix);
    crate::release_mounts(&dir);
    let _ = fs::remove_dir_all(dir);
}

/// Kernel, CPU, cores, memory, date, versions.
fn machine_info() -> Value {
    let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let mem_gb = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib * 1024.0 / 1e9);
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let first_line = |cmd: &mut Command| {
        cmd.output()
            .ok()
            .map(|o| {
                let text = String::from_utf8_lossy(&o.stdout).into_owned();
                text.lines().next().unwrap_or("").trim().to_owned()
            })
            .unwrap_or_default()
    };
    // A binary built elsewhere (NODEWARD_BIN) says which commit it is.
    let commit = std::env::var("NW_BENCH_NODEWARD_REV").unwrap_or_else(|_| {
        first_line(Command::new("git").args(["describe", "--always", "--dirty"]))
    });
    json!({
        "date": date,
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "memory_gb": (mem_gb * 10.0).round() / 10.0,
        "loadavg_start": loadavg(),
        "haproxy": first_line(Command::new("haproxy").arg("-v")),
        "nodeward_commit": commit,
        "nodeward_bin": std::env::var("NODEWARD_BIN").unwrap_or_else(|_| "target/release/nodeward".into()),
    })
}

/// The 1-minute load average: other work on the box skews every number.
fn loadavg() -> String {
    let text = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().next().unwrap_or("").to_owned()
}

/// `bench.json` and `bench.md` in `settings.out_dir`.
fn write_reports(settings: &Settings, machine: &Value, rows: &[Row]) -> Result<()> {
    fs::create_dir_all(&settings.out_dir)?;
    let ratios = ratios(rows);
    let json = json!({
        "machine": machine,
        "settings": {
            "seconds": settings.seconds,
            "idle_target": settings.idle,
            "worker_threads": settings.worker_threads,
        },
        "rows": rows.iter().map(|r| json!({
            "path": r.kind.name(),
            "locality": r.locality.name(),
            "metrics": r.values,
            "raw": r.raw,
            "notes": r.notes,
        })).collect::<Vec<_>>(),
        "ratios": ratios,
    });
    let md = markdown(settings, machine, rows);
    fs::write(
        settings.out_dir.join("bench.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    fs::write(settings.out_dir.join("bench.md"), &md)?;
    crate::print_flush(&md);
    eprintln!(
        "bench: wrote {0}/bench.md and {0}/bench.json",
        settings.out_dir.display()
    );
    Ok(())
}

fn value(rows: &[Row], kind: Kind, locality: Locality, key: &str) -> Option<f64> {
    rows.iter()
        .find(|r| r.kind == kind && r.locality == locality)
        .and_then(|r| r.values.get(key).copied())
}

/// The comparisons the table shows, per locality and metric.
const COMPARISONS: [(Kind, Kind); 6] = [
    (Kind::Nodeward, Kind::Direct),
    (Kind::Haproxy, Kind::Direct),
    (Kind::Nodeward, Kind::Haproxy),
    (Kind::NodewardSockmap, Kind::Nodeward),
    (Kind::NodewardVip, Kind::Nodeward),
    (Kind::Nodeward, Kind::NodewardNoFlows),
];

fn ratios(rows: &[Row]) -> Value {
    let mut out = serde_json::Map::new();
    for locality in Locality::ALL {
        let mut per = serde_json::Map::new();
        for m in METRICS {
            let mut r = serde_json::Map::new();
            for (a, b) in COMPARISONS {
                let v = ratio(
                    value(rows, a, locality, m.key),
                    value(rows, b, locality, m.key),
                );
                r.insert(format!("{}/{}", a.name(), b.name()), json!(v));
            }
            per.insert(m.key.to_owned(), Value::Object(r));
        }
        out.insert(locality.name().to_owned(), Value::Object(per));
    }
    Value::Object(out)
}

fn markdown(settings: &Settings, m: &Value, rows: &[Row]) -> String {
    let s = |k: &str| m[k].as_str().unwrap_or("").to_owned();
    let mut md = format!(
        "Run {} on Linux {}, {} ({} cores), {} GB RAM; nodeward {}, {}. \
         Each timed scenario ran {} s; idle target {} connections; nodeward worker threads: {}. \
         1-min load average {} at the start, {} at the end.\n",
        s("date"),
        s("kernel"),
        s("cpu"),
        m["cores"],
        m["memory_gb"],
        s("nodeward_commit"),
        s("haproxy"),
        settings.seconds,
        settings.idle,
        settings
            .worker_threads
            .map_or_else(|| "default".to_owned(), |n| n.to_string()),
        s("loadavg_start"),
        s("loadavg_end"),
    );
    for locality in Locality::ALL {
        md += &format!(
            "\n{} (pod `{CLIENT}` on node-a to pod `{}`):\n\n",
            locality.name(),
            match locality {
                Locality::Cross => REMOTE_POD,
                Locality::Same => LOCAL_POD,
            }
        );
        md += "| metric | better | direct | nodeward | nodeward-vip | haproxy-mtls | nodeward-sockmap | nodeward-noflows | nodeward ÷ direct | haproxy-mtls ÷ direct | nodeward ÷ haproxy-mtls | sockmap on ÷ off | vip ÷ pod IP | flow map on ÷ off |\n";
        md += "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n";
        for metric in METRICS {
            let cell = |k: Kind| fmt_value(value(rows, k, locality, metric.key));
            let comp = |(a, b): (Kind, Kind)| {
                fmt_ratio(ratio(
                    value(rows, a, locality, metric.key),
                    value(rows, b, locality, metric.key),
                ))
            };
            md += &format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                metric.label,
                if metric.higher_is_better {
                    "higher"
                } else {
                    "lower"
                },
                cell(Kind::Direct),
                cell(Kind::Nodeward),
                cell(Kind::NodewardVip),
                cell(Kind::Haproxy),
                cell(Kind::NodewardSockmap),
                cell(Kind::NodewardNoFlows),
                comp(COMPARISONS[0]),
                comp(COMPARISONS[1]),
                comp(COMPARISONS[2]),
                comp(COMPARISONS[3]),
                comp(COMPARISONS[4]),
                comp(COMPARISONS[5]),
            );
        }
    }
    let notes: Vec<String> = rows
        .iter()
        .flat_map(|r| {
            r.notes
                .iter()
                .map(move |n| format!("- {} {}: {n}", r.kind.name(), r.locality.name()))
        })
        .collect();
    if !notes.is_empty() {
        md += "\nNotes:\n\n";
        md += &notes.join("\n");
        md += "\n";
    }
    md += &traced::markdown(m);
    md
}

fn fmt_value(v: Option<f64>) -> String {
    match v {
        None => "—".to_owned(),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

fn fmt_ratio(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_owned(), |v| format!("{v:.2}×"))
}

/// The policy file of the JWT scenario (see [`jwt_policy`]).
const JWT_POLICY_FILE: &str = "bench-jwt.yaml";

/// Tokens from the demo issuer are checked on the `shop` workloads: in
/// force only during the JWT scenario, since it makes all their ports
/// HTTP-judged.
fn jwt_policy() -> String {
    let jwks = JwtSigner::demo().jwks();
    format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: bench-jwt, namespace: shop}}
spec:
  jwtRules: [{{issuer: '{DEMO_ISSUER}', jwks: '{jwks}'}}]
"
    )
}

/// Makes both HTTP ports HTTP-judged (a DENY on a path nobody asks for)
/// and, with [`jwt_policy`] in force, requires a valid demo-issuer token
/// on [`PORT_HTTP_JWT`].
fn http_policies() -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: bench-http, namespace: shop}}
spec:
  action: DENY
  rules:
  - to: [{{operation: {{ports: ['{PORT_HTTP}', '{PORT_HTTP_JWT}'], paths: [/never]}}}}]
  - from: [{{source: {{notRequestPrincipals: ['*']}}}}]
    to: [{{operation: {{ports: ['{PORT_HTTP_JWT}']}}}}]
"
    )
}
