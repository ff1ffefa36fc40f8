//! The node proxy's configuration file.
//!
//! [`ConfigFile`] is the YAML format (unknown fields rejected); [`Config`] is
//! what the rest of the proxy uses, produced only by validation.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::IpNet;
use serde::Deserialize;

pub use nodeward_policy::MtlsMode;
use nodeward_policy::{self as policy, DefaultPolicy};
pub use nodeward_proxy::{
    authz::audit::AuditSink,
    flows,
    http::{HeadersWithUnderscores, Limits as HttpLimits},
    inbound::limits::Settings as TunnelSettings,
    telemetry::AccessLog,
};
use nodeward_yaml as yaml;
pub use nodeward_yaml::FileError as ConfigError;

/// Default outbound capture port (Istio's and ztunnel's).
pub const DEFAULT_OUTBOUND_PORT: u16 = 15001;
/// Default tunnel (HBONE) port, as in ztunnel.
pub const DEFAULT_TUNNEL_PORT: u16 = 15008;
/// Default workload certificate lifetime.
pub const DEFAULT_CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Shortest certificate lifetime accepted (tests use a few seconds).
pub const MIN_CERT_LIFETIME: Duration = Duration::from_secs(2);
/// Default time open connections get to finish when the proxy stops.
pub const DEFAULT_DRAIN_DEADLINE: Duration = Duration::from_secs(10);
/// Default root namespace: its selector-less policies apply mesh-wide (Istio's default).
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";
/// Default time to wait for the Kubernetes API server's first complete
/// list before attaching with an empty registry (and `/ready` 503).
pub const DEFAULT_KUBERNETES_SYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// Quiet time after a Kubernetes change before the registry is rebuilt.
pub const KUBERNETES_DEBOUNCE: Duration = Duration::from_millis(200);
/// Default admin (metrics, health) address: loopback, so pods cannot reach it.
pub const DEFAULT_ADMIN_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 15020);

/// The YAML configuration as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConfigFile {
    /// This node's name, as used in the workloads file (and the Node's
    /// name in Kubernetes); unset: the `NODE_NAME` environment variable
    /// (the downward API's `spec.nodeName`).
    #[serde(default)]
    pub node: Option<String>,
    /// cgroup v2 directory the node's pods live below; relative paths are
    /// taken from the cgroup2 mount point.
    pub pod_cgroup: PathBuf,
    /// Destinations whose connections are meshed (captured).
    pub mesh_cidrs: Vec<IpNet>,
    /// Where redirected connections land.
    pub proxy_addresses: ProxyAddressesFile,
    #[serde(default)]
    pub ports: PortsFile,
    #[serde(default)]
    pub admin: AdminFile,
    /// Where workloads, nodes and Services come from: `file` (default, the
    /// `workloadsFile`) or `kubernetes` (the API server).
    #[serde(default)]
    pub discovery: Option<DiscoveryFile>,
    /// Workloads file (with `discovery: file`); relative paths are taken
    /// from the config file's directory.
    #[serde(default)]
    pub workloads_file: Option<PathBuf>,
    /// Settings of `discovery: kubernetes`.
    #[serde(default)]
    pub kubernetes: KubernetesFile,
    /// Where this node's certificate authority material lives.
    pub identity: IdentityFile,
    /// Inbound mTLS mode for the node's pods (default `STRICT`);
    /// PeerAuthentication policies override it per namespace or workload.
    #[serde(default)]
    pub mtls: Option<MtlsMode>,
    /// Where authorization policies come from and what applies without one.
    pub policy: PolicyFile,
    /// Where audit records (one JSON line per decision) go.
    #[serde(default)]
    pub audit: AuditFile,
    /// Where the kernel programs are pinned (takeover on upgrade).
    #[serde(default)]
    pub bpf: BpfFile,
    /// Stopping and handing over.
    #[serde(default)]
    pub lifecycle: LifecycleFile,
    /// Access-log sampling.
    #[serde(default)]
    pub access_log: AccessLogFile,
    /// How requests on HTTP ports are read.
    #[serde(default)]
    pub http: HttpFile,
    /// The sockmap fast path for the pod ⇄ proxy hop.
    #[serde(default)]
    pub sockmap: SockmapFile,
    /// The async runtime's threads.
    #[serde(default)]
    pub runtime: RuntimeFile,
    /// The tunnel server's connection timers and caps.
    #[serde(default)]
    pub tunnel: TunnelFile,
    /// Span export over OTLP (off when absent).
    #[serde(default)]
    pub tracing: Option<TracingFile>,
    /// The flow map behind the admin `/flows` page.
    #[serde(default)]
    pub flows: FlowsFile,
}

/// `tracing`: spans for HTTP requests and tunnel hops, exported over OTLP.
/// Present (even empty) turns tracing on; absent, nothing is traced.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TracingFile {
    #[serde(default)]
    pub otlp: OtlpFile,
    /// Fraction (0.0–1.0) of new traces sampled; a caller's sampled flag is
    /// always followed (parent-based). Default 1.0.
    #[serde(default)]
    pub sampling: Option<f64>,
    /// The `service.name` resource attribute (default `nodeward`).
    #[serde(default)]
    pub service_name: Option<String>,
}

/// `tracing.otlp`: where spans go.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OtlpFile {
    /// Base URL of the collector, `http://host:port`; unset:
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`, else the protocol's default port on
    /// localhost.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// `http/protobuf` (default) or `grpc`.
    #[serde(default)]
    pub protocol: Option<String>,
}

/// `flows`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FlowsFile {
    /// Keep the flow map (default true). Off, connections count no flows
    /// and `/flows.json` answers 404.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Most edges held, 1 to 10000 (default 10000).
    #[serde(default)]
    pub max_edges: Option<usize>,
    /// Admin addresses of the other nodes, merged by `/flows.json?cluster=1`
    /// and the page's cluster view.
    #[serde(default)]
    pub peers: Vec<SocketAddr>,
}

/// The flow map's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowsSettings {
    /// `None`: the flow map is off.
    pub max_edges: Option<usize>,
    /// Other nodes' admin addresses, for the cluster view.
    pub peers: Vec<SocketAddr>,
}

/// `discovery`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DiscoveryFile {
    File,
    Kubernetes,
}

/// `kubernetes`: how the API server is watched.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KubernetesFile {
    /// Directory holding kubelet's `kubepods` (systemd driver:
    /// `kubepods.slice`) hierarchy; relative paths are taken from the
    /// cgroup2 mount. Default: the cgroup2 mount itself.
    #[serde(default)]
    pub cgroup_root: Option<PathBuf>,
    /// How long to wait at start for the first complete list of every
    /// watched kind (default `30s`).
    #[serde(default)]
    pub sync_timeout: Option<String>,
}

/// `tunnel`: how long tunnel connections live and what one peer may hold.
/// Defaults are in `nodeward_proxy::inbound::limits`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TunnelFile {
    /// Close a connection with no stream open this long (default `10m`).
    #[serde(default)]
    pub idle_timeout: Option<String>,
    /// GOAWAY a connection this old (default `1h`).
    #[serde(default)]
    pub max_connection_age: Option<String>,
    /// Cut the streams still open this long after the GOAWAY (default `10m`).
    #[serde(default)]
    pub max_connection_age_grace: Option<String>,
    /// TLS handshakes in progress at once (default 1024).
    #[serde(default)]
    pub max_handshakes: Option<usize>,
    /// TLS handshakes in progress at once from one address (default 128).
    #[serde(default)]
    pub max_handshakes_per_address: Option<usize>,
    /// Pod dials in progress at once for one calling node (default 256).
    #[serde(default)]
    pub max_pending_dials_per_node: Option<usize>,
    /// How long a stream over the dial cap waits for a slot (default `1s`).
    #[serde(default)]
    pub dial_queue_timeout: Option<String>,
}

/// `sockmap`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SockmapFile {
    /// Splice the pod ⇄ proxy hop through a sockhash (default `false`: on
    /// the kernels measured it makes blocking `recv()` in pods return
    /// spurious `EAGAIN` and buffers without backpressure; see
    /// docs/architecture.md, "Sockmap fast path").
    /// Where the kernel cannot load it, it turns itself off with one log line.
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// `runtime`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuntimeFile {
    /// Threads that run connections (default: see [`default_worker_threads`]).
    #[serde(default)]
    pub worker_threads: Option<WorkerThreads>,
}

/// A worker-thread count from 1 to [`MAX_WORKER_THREADS`], checked while
/// decoding, so a bad value is an error at its own line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerThreads(pub usize);

impl<'de> Deserialize<'de> for WorkerThreads {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = usize::deserialize(d)?;
        if (1..=MAX_WORKER_THREADS).contains(&n) {
            Ok(Self(n))
        } else {
            Err(serde::de::Error::custom(format!(
                "must be from 1 to {MAX_WORKER_THREADS}"
            )))
        }
    }
}

/// Most worker threads `runtime.workerThreads` takes.
pub const MAX_WORKER_THREADS: usize = 256;

/// Worker threads when `runtime.workerThreads` is unset: half the cores
/// the process may run on (its affinity and cgroup CPU quota), at least 1,
/// at most 8. A cross-node byte crosses two tasks in each proxy (the
/// connection's and its tunnel connection's); on another thread each
/// hand-off is a cross-thread wake-up. On two cores shared with the pods,
/// one thread cut the added cross-node p50 from about +110 µs to +45-80 µs
/// (near HAProxy's) with throughput within noise (docs/benchmarks.md,
/// "Worker threads"); a node proxy shares its node with the pods it
/// serves, so it takes half of a larger node at most, and 8 at most.
pub fn default_worker_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    (cores / 2).clamp(1, 8)
}

/// `accessLog`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AccessLogFile {
    /// Fraction (0.0–1.0) of successful connections and requests logged;
    /// errors, refusals and denials are always logged. Default 1.0.
    #[serde(default)]
    pub sampling: Option<f64>,
}

/// `http`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpFile {
    /// Requests with `_` in a header name: `reject` (400, default) or
    /// `allow` (forwarded; header policies match `_` and `-` alike).
    #[serde(default)]
    pub headers_with_underscores: Option<HeadersWithUnderscoresFile>,
    /// Time a client has for a request head, for its first request, and
    /// between HTTP/1 keep-alive requests. Default `30s`.
    #[serde(default)]
    pub header_read_timeout: Option<PositiveDuration>,
    /// A connection on which no byte moves either way for this long is
    /// closed. Default `5m`.
    #[serde(default)]
    pub idle_timeout: Option<PositiveDuration>,
}

/// `http.headersWithUnderscores`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum HeadersWithUnderscoresFile {
    Reject,
    Allow,
}

/// `bpf`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BpfFile {
    /// Directory on a BPF filesystem (e.g. `/sys/fs/bpf/nodeward`) to pin
    /// links and maps under, so a new nodeward can take over without
    /// redirection stopping. Unset: the programs live and die with the process.
    #[serde(default)]
    pub pin_dir: Option<PathBuf>,
}

/// `lifecycle`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LifecycleFile {
    /// How long open connections may finish after SIGTERM (or a takeover)
    /// before the rest are closed; default `10s`.
    #[serde(default)]
    pub drain_deadline: Option<String>,
}

/// `policy`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyFile {
    /// Directory of policy files (a hostPath in production); relative paths
    /// are taken from the config file's directory.
    pub dir: PathBuf,
    /// What applies to a workload no ALLOW policy selects: `deny` (default,
    /// zero trust) or `allow` (Istio's behaviour).
    #[serde(default)]
    pub default_policy: Option<DefaultPolicy>,
    /// Namespace whose selector-less policies apply to the whole mesh.
    #[serde(default)]
    pub root_namespace: Option<String>,
}

/// `audit`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuditFile {
    /// `stdout` (default), `stderr`, or a file path (appended to; relative
    /// paths are taken from the config file's directory).
    #[serde(default)]
    pub sink: Option<String>,
}

/// `identity`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IdentityFile {
    /// Directory written by `nodeward ca issue-node` (node.pem, node.key, bundle.pem);
    /// relative paths are taken from the config file's directory.
    pub dir: PathBuf,
    /// Workload certificate lifetime, e.g. `24h`, `30m`, `10s`.
    #[serde(default)]
    pub cert_lifetime: Option<String>,
}

/// `proxyAddresses`: the node proxy's addresses as pods reach them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProxyAddressesFile {
    /// An IPv4 address, or `${NAME}` for one read from the environment
    /// variable NAME (a DaemonSet passes the node's address, which differs
    /// per node, as `status.hostIP`).
    pub ipv4: AddrOrEnv,
    #[serde(default)]
    pub ipv6: Option<Ipv6Addr>,
}

/// `ports`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortsFile {
    #[serde(default)]
    pub outbound: Option<u16>,
    #[serde(default)]
    pub tunnel: Option<u16>,
}

/// `admin`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AdminFile {
    #[serde(default)]
    pub address: Option<SocketAddr>,
}

/// Where workloads, nodes and Services come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    /// The workloads file, reloaded when it changes.
    File(PathBuf),
    /// The Kubernetes API server.
    Kubernetes(KubernetesSettings),
}

/// How spans are exported (`tracing`).
#[derive(Debug, Clone, PartialEq)]
pub struct TracingSettings {
    /// The collector's base URL; `None`: the standard environment
    /// variables, then the protocol's default.
    pub endpoint: Option<String>,
    /// `tracing.otlp.protocol`: how spans travel to the collector.
    pub protocol: OtlpProtocol,
    /// Fraction of new traces sampled.
    pub sampling: f64,
    /// `service.name` on every exported span (`tracing.serviceName`).
    pub service_name: String,
}

/// `tracing.otlp.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// `http/protobuf` (the default): protobuf POSTed over HTTP.
    HttpProtobuf,
    /// `grpc`: OTLP's gRPC service.
    Grpc,
}

/// A validated `kubernetes` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesSettings {
    /// Where kubelet's pod cgroups are looked for (relative: under the
    /// cgroup2 mount; `None`: the mount itself).
    pub cgroup_root: Option<PathBuf>,
    /// How long start-up waits for the first complete list.
    pub sync_timeout: Duration,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub node: String,
    pub pod_cgroup: PathBuf,
    pub mesh_cidrs: Vec<IpNet>,
    pub proxy_ipv4: Ipv4Addr,
    pub proxy_ipv6: Option<Ipv6Addr>,
    pub outbound_port: u16,
    pub tunnel_port: u16,
    pub admin_addr: SocketAddr,
    pub discovery: Discovery,
    pub identity_dir: PathBuf,
    pub cert_lifetime: Duration,
    pub mtls: MtlsMode,
    pub policy_dir: PathBuf,
    pub policy: policy::Settings,
    pub audit_sink: AuditSink,
    pub bpf_pin_dir: Option<PathBuf>,
    pub drain_deadline: Duration,
    pub access_log: AccessLog,
    /// What to do with `_` in request header names on HTTP ports.
    pub headers_with_underscores: HeadersWithUnderscores,
    /// Timers of connections on HTTP ports.
    pub http_limits: HttpLimits,
    /// Whether to try the sockmap fast path.
    pub sockmap: bool,
    /// Threads of the async runtime that runs connections.
    pub worker_threads: usize,
    /// The tunnel server's timers and caps.
    pub tunnel: TunnelSettings,
    /// Span export; `None`: tracing off.
    pub tracing: Option<TracingSettings>,
    /// The flow map.
    pub flows: FlowsSettings,
    /// The file this came from, for error messages.
    pub source: PathBuf,
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file: ConfigFile = yaml::read(path)?;
        Self::from_file(path, file)
    }

    /// Validates a decoded file; `path` anchors relative paths and errors.
    /// An unset `node` is taken from `NODE_NAME`.
    pub fn from_file(path: &Path, file: ConfigFile) -> Result<Self, ConfigError> {
        Self::from_file_with_env(path, file, std::env::var("NODE_NAME").ok())
    }

    /// [`Config::from_file`] with `NODE_NAME` given.
    pub fn from_file_with_env(
        path: &Path,
        file: ConfigFile,
        node_name_env: Option<String>,
    ) -> Result<Self, ConfigError> {
        let ConfigFile {
            node,
            pod_cgroup,
            mesh_cidrs,
            proxy_addresses: ProxyAddressesFile { ipv4, ipv6 },
            ports: PortsFile { outbound, tunnel },
            admin: AdminFile { address },
            discovery,
            workloads_file,
            kubernetes,
            identity: IdentityFile { dir, cert_lifetime },
            mtls,
            policy:
                PolicyFile {
                    dir: policy_dir,
                    default_policy,
                    root_namespace,
                },
            audit: AuditFile { sink },
            bpf: BpfFile { pin_dir },
            lifecycle: LifecycleFile { drain_deadline },
            access_log: AccessLogFile { sampling },
            http:
                HttpFile {
                    headers_with_underscores,
                    header_read_timeout,
                    idle_timeout,
                },
            sockmap: SockmapFile { enabled: sockmap },
            runtime: RuntimeFile { worker_threads },
            tunnel: tunnel_file,
            tracing,
            flows:
                FlowsFile {
                    enabled: flows_enabled,
                    max_edges,
                    peers,
                },
        } = file;
        let bad = |field: &str, msg: &str| ConfigError::invalid(path, field, msg);
        let node = node.or(node_name_env).unwrap_or_default();
        if node.trim().is_empty() {
            return Err(bad(
                "node",
                "must be set (here or in NODE_NAME) and not be empty",
            ));
        }
        if mesh_cidrs.is_empty() {
            return Err(bad("meshCidrs", "must list at least one CIDR"));
        }
        let ipv4 = ipv4
            .resolve()
            .map_err(|msg| bad("proxyAddresses.ipv4", &msg))?;
        if ipv4.is_unspecified() || ipv4.is_broadcast() {
            return Err(bad("proxyAddresses.ipv4", "must be a unicast address"));
        }
        if ipv6.is_some_and(|a| a.is_unspecified() || a.is_multicast()) {
            return Err(bad("proxyAddresses.ipv6", "must be a unicast address"));
        }
        let outbound_port = outbound.unwrap_or(DEFAULT_OUTBOUND_PORT);
        if outbound_port == 0 {
            return Err(bad("ports.outbound", "must be between 1 and 65535"));
        }
        let tunnel_port = tunnel.unwrap_or(DEFAULT_TUNNEL_PORT);
        if tunnel_port == 0 || tunnel_port == outbound_port {
            return Err(bad(
                "ports.tunnel",
                "must be between 1 and 65535 and differ from ports.outbound",
            ));
        }
        let cert_lifetime = match cert_lifetime {
            None => DEFAULT_CERT_LIFETIME,
            Some(text) => parse_duration(&text)
                .filter(|d| *d >= MIN_CERT_LIFETIME)
                .ok_or_else(|| {
                    bad(
                        "identity.certLifetime",
                        "must be a duration of at least 2s, like `24h`, `30m` or `10s`",
                    )
                })?,
        };
        let root_namespace = root_namespace.unwrap_or_else(|| DEFAULT_ROOT_NAMESPACE.to_owned());
        if !is_dns_label(&root_namespace) {
            return Err(bad(
                "policy.rootNamespace",
                "must be a namespace name (RFC 1123 label)",
            ));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let audit_sink = match sink.as_deref() {
            None | Some("stdout") => AuditSink::Stdout,
            Some("stderr") => AuditSink::Stderr,
            Some("") => return Err(bad("audit.sink", "must be stdout, stderr or a file path")),
            Some(file) => AuditSink::File(base.join(file)),
        };
        if pin_dir
            .as_ref()
            .is_some_and(|d| !d.is_absolute() || d.as_os_str().as_encoded_bytes().contains(&0))
        {
            return Err(bad(
                "bpf.pinDir",
                "must be an absolute path on a BPF filesystem",
            ));
        }
        let drain_deadline = match drain_deadline {
            None => DEFAULT_DRAIN_DEADLINE,
            Some(text) => parse_duration(&text).ok_or_else(|| {
                bad(
                    "lifecycle.drainDeadline",
                    "must be a duration like `30s` or `500ms`",
                )
            })?,
        };
        let access_log = match sampling {
            None => AccessLog::ALL,
            Some(f) => AccessLog::new(f).map_err(|e| bad("accessLog.sampling", &e.to_string()))?,
        };
        let max_edges = max_edges.unwrap_or(flows::MAX_EDGES);
        if !(1..=flows::MAX_EDGES).contains(&max_edges) {
            return Err(bad(
                "flows.maxEdges",
                &format!("must be from 1 to {}", flows::MAX_EDGES),
            ));
        }
        let flows = FlowsSettings {
            max_edges: flows_enabled.unwrap_or(true).then_some(max_edges),
            peers,
        };
        let worker_threads = worker_threads.map_or_else(default_worker_threads, |w| w.0);
        let tunnel = tunnel_settings(path, tunnel_file)?;
        let http_limits = http_limits(header_read_timeout, idle_timeout);
        let tracing = tracing.map(|t| tracing_settings(path, t)).transpose()?;
        let discovery = discovery_settings(path, discovery, workloads_file, kubernetes)?;
        Ok(Self {
            node,
            pod_cgroup,
            mesh_cidrs: mesh_cidrs.into_iter().map(|c| c.trunc()).collect(),
            proxy_ipv4: ipv4,
            proxy_ipv6: ipv6,
            outbound_port,
            tunnel_port,
            admin_addr: address.unwrap_or(DEFAULT_ADMIN_ADDR),
            discovery,
            identity_dir: base.join(dir),
            cert_lifetime,
            mtls: mtls.unwrap_or(MtlsMode::Strict),
            policy_dir: base.join(policy_dir),
            policy: policy::Settings {
                default_policy: default_policy.unwrap_or(DefaultPolicy::Deny),
                root_namespace,
            },
            audit_sink,
            bpf_pin_dir: pin_dir,
            drain_deadline,
            access_log,
            headers_with_underscores: match headers_with_underscores {
                None | Some(HeadersWithUnderscoresFile::Reject) => HeadersWithUnderscores::Reject,
                Some(HeadersWithUnderscoresFile::Allow) => HeadersWithUnderscores::Allow,
            },
            http_limits,
            sockmap: sockmap.unwrap_or(false),
            worker_threads,
            tunnel,
            tracing,
            flows,
            source: path.to_owned(),
        })
    }
}

/// Validates `discovery`, `workloadsFile` and `kubernetes` together: each
/// source needs its own settings and rejects the other's.
fn discovery_settings(
    path: &Path,
    mode: Option<DiscoveryFile>,
    workloads_file: Option<PathBuf>,
    kubernetes: KubernetesFile,
) -> Result<Discovery, ConfigError> {
    let base = path.parent().unwrap_or(Path::new("."));
    let KubernetesFile {
        cgroup_root,
        sync_timeout,
    } = kubernetes;
    let kubernetes_set = cgroup_root.is_some() || sync_timeout.is_some();
    match mode.unwrap_or(DiscoveryFile::File) {
        DiscoveryFile::File => {
            if kubernetes_set {
                let msg = "only applies with `discovery: kubernetes`";
                return Err(ConfigError::invalid(path, "kubernetes", msg));
            }
            let file = workloads_file.ok_or_else(|| {
                let msg = "must be set with `discovery: file` (the default)";
                ConfigError::invalid(path, "workloadsFile", msg)
            })?;
            Ok(Discovery::File(base.join(file)))
        }
        DiscoveryFile::Kubernetes => {
            if workloads_file.is_some() {
                let msg =
                    "must not be set with `discovery: kubernetes` (the API server is the source)";
                return Err(ConfigError::invalid(path, "workloadsFile", msg));
            }
            let sync_timeout = match sync_timeout {
                None => DEFAULT_KUBERNETES_SYNC_TIMEOUT,
                Some(text) => parse_duration(&text)
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| {
                        let msg = "must be a duration above zero, like `30s` or `2m`";
                        ConfigError::invalid(path, "kubernetes.syncTimeout", msg)
                    })?,
            };
            Ok(Discovery::Kubernetes(KubernetesSettings {
                cgroup_root,
                sync_timeout,
            }))
        }
    }
}

/// `http.headerReadTimeout` and `http.idleTimeout`, or their defaults.
fn http_limits(
    header_read_timeout: Option<PositiveDuration>,
    idle_timeout: Option<PositiveDuration>,
) -> HttpLimits {
    let defaults = HttpLimits::default();
    HttpLimits {
        header_read_timeout: header_read_timeout.map_or(defaults.header_read_timeout, |d| d.0),
        idle_timeout: idle_timeout.map_or(defaults.idle_timeout, |d| d.0),
    }
}

/// Largest cap a `tunnel` count takes: far above any real node's need,
/// and far below what a semaphore holds.
const MAX_TUNNEL_COUNT: usize = 1_000_000;
/// Longest wait in line for a dial slot. Waiting streams hold their h2
/// stream and task, so the wait is bounded even when configured.
const MAX_DIAL_QUEUE_TIMEOUT: Duration = Duration::from_secs(60);

/// Validates `tunnel:`; unset fields take their defaults.
fn tunnel_settings(path: &Path, file: TunnelFile) -> Result<TunnelSettings, ConfigError> {
    let TunnelFile {
        idle_timeout,
        max_connection_age,
        max_connection_age_grace,
        max_handshakes,
        max_handshakes_per_address,
        max_pending_dials_per_node,
        dial_queue_timeout,
    } = file;
    let defaults = TunnelSettings::default();
    let duration = |field: &str, text: Option<String>, default: Duration| match text {
        None => Ok(default),
        Some(text) => parse_duration(&text)
            // A zero grace cuts at the maximum age; a zero timer would
            // close every connection at once.
            .filter(|d| !d.is_zero() || field == "maxConnectionAgeGrace")
            .ok_or_else(|| {
                let msg = "must be a duration above zero, like `10m`, `1h` or `30s`";
                ConfigError::invalid(path, format!("tunnel.{field}"), msg)
            }),
    };
    let count = |field: &str, n: Option<usize>, default: usize| match n {
        None => Ok(default),
        Some(n) if (1..=MAX_TUNNEL_COUNT).contains(&n) => Ok(n),
        Some(_) => Err(ConfigError::invalid(
            path,
            format!("tunnel.{field}"),
            format!("must be from 1 to {MAX_TUNNEL_COUNT}"),
        )),
    };
    let queue = match dial_queue_timeout {
        None => defaults.dial_queue_timeout,
        Some(text) => parse_duration(&text)
            .filter(|d| *d <= MAX_DIAL_QUEUE_TIMEOUT)
            .ok_or_else(|| {
                let msg = "must be a duration from `0s` (refuse at once) to `60s`";
                ConfigError::invalid(path, "tunnel.dialQueueTimeout", msg)
            })?,
    };
    Ok(TunnelSettings {
        idle_timeout: duration("idleTimeout", idle_timeout, defaults.idle_timeout)?,
        max_connection_age: duration(
            "maxConnectionAge",
            max_connection_age,
            defaults.max_connection_age,
        )?,
        max_connection_age_grace: duration(
            "maxConnectionAgeGrace",
            max_connection_age_grace,
            defaults.max_connection_age_grace,
        )?,
        max_handshakes: count("maxHandshakes", max_handshakes, defaults.max_handshakes)?,
        max_handshakes_per_address: count(
            "maxHandshakesPerAddress",
            max_handshakes_per_address,
            defaults.max_handshakes_per_address,
        )?,
        max_pending_dials_per_node: count(
            "maxPendingDialsPerNode",
            max_pending_dials_per_node,
            defaults.max_pending_dials_per_node,
        )?,
        dial_queue_timeout: queue,
    })
}

/// Checks and defaults the `tracing` section.
fn tracing_settings(path: &Path, file: TracingFile) -> Result<TracingSettings, ConfigError> {
    let TracingFile {
        otlp: OtlpFile { endpoint, protocol },
        sampling,
        service_name,
    } = file;
    let bad = |field: &str, msg: &str| ConfigError::invalid(path, format!("tracing.{field}"), msg);
    let protocol = match protocol.as_deref() {
        None | Some("http/protobuf") => OtlpProtocol::HttpProtobuf,
        Some("grpc") => OtlpProtocol::Grpc,
        Some(_) => return Err(bad("otlp.protocol", "must be `http/protobuf` or `grpc`")),
    };
    if let Some(e) = &endpoint {
        check_endpoint(e).map_err(|msg| bad("otlp.endpoint", msg))?;
    }
    let sampling = sampling.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sampling) {
        return Err(bad("sampling", "must be a fraction from 0.0 to 1.0"));
    }
    let service_name = service_name.unwrap_or_else(|| "nodeward".to_owned());
    if service_name.is_empty() || service_name.chars().any(char::is_control) {
        return Err(bad(
            "serviceName",
            "must be a non-empty name without control characters",
        ));
    }
    Ok(TracingSettings {
        endpoint,
        protocol,
        sampling,
        service_name,
    })
}

/// A collector base URL: `http://host[:port][/path]`. No TLS: the exporter
/// is built without a TLS stack (see docs/tracing.md).
pub fn check_endpoint(endpoint: &str) -> Result<(), &'static str> {
    const FORM: &str = "must be a URL like `http://collector:4318`";
    let uri: http::Uri = endpoint.parse().map_err(|_| FORM)?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http"), Some(h)) if !h.is_empty() => Ok(()),
        (Some("https"), _) => Err(
            "must be `http://`: TLS to the collector is not supported (run the collector on the node or its network)",
        ),
        _ => Err(FORM),
    }
}

/// True for an RFC 1123 label: what Kubernetes accepts as a namespace name.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Parses `500ms`, `10s`, `30m`, `24h` or `7d` (one number, one unit).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = text.split_at(split);
    let n: u64 = n.parse().ok()?;
    let secs = |mult: u64| n.checked_mul(mult).map(Duration::from_secs);
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86400),
        _ => None,
    }
}

#[cfg(test)]
mod tests;

/// A duration above zero as written (`30s`, `5m`), parsed while decoding,
/// so a bad value is an error at its own line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PositiveDuration(pub Duration);

impl<'de> Deserialize<'de> for PositiveDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text)
            .filter(|d| !d.is_zero())
            .map(Self)
            .ok_or_else(|| {
                serde::de::Error::custom("must be a duration above zero, like `30s` or `5m`")
            })
    }
}

/// An IPv4 address as written, or `${NAME}`: the one in the environment
/// variable NAME when the config is validated. A malformed literal is a
/// decode error at its own line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddrOrEnv {
    Literal(Ipv4Addr),
    Env(String),
}

impl<'de> Deserialize<'de> for AddrOrEnv {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if let Some(name) = text.strip_prefix("${").and_then(|t| t.strip_suffix('}')) {
            return Ok(Self::Env(name.to_owned()));
        }
        text.parse().map(Self::Literal).map_err(|_| {
            serde::de::Error::custom(format!("{text:?} is neither an IPv4 address nor ${{NAME}}"))
        })
    }
}

impl AddrOrEnv {
    /// The address, reading the environment for `${NAME}`.
    fn resolve(&self) -> Result<Ipv4Addr, String> {
        match self {
            Self::Literal(addr) => Ok(*addr),
            Self::Env(name) => {
                let value = std::env::var(name)
                    .map_err(|_| format!("environment variable {name} is not set"))?;
                value
                    .parse()
                    .map_err(|_| format!("{name}={value:?} is not an IPv4 address"))
            }
        }
    }
}
