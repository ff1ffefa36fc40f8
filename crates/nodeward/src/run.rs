//! `nodeward run`: validate everything, bind, attach, serve, and detach on signal.

use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::Arc,
    time::Duration,
};

use arc_swap::ArcSwap;
use tokio::{net::TcpListener, sync::watch};

use nodeward_bpf::{self as redirect, RedirectError, Redirector};
use nodeward_identity::{tls::TrustBundle, tls_config, CertStore, NodeCa};
use nodeward_proxy::{
    authz::{audit::Auditor, Authz},
    drain::DrainControl,
    flows::FlowMap,
    inbound,
    jwks::{FetchSettings, JwksFetcher},
    outbound,
    relay::Dialer,
    telemetry::Observer,
    tunnel::Pool,
};
use nodeward_workloads::{cgroup, Registry};

use crate::{
    admin::{self, AdminState, LogControl, Readiness},
    config::{Config, ConfigError, Discovery, KubernetesSettings, KUBERNETES_DEBOUNCE},
    control::{Control, RegistrySwap},
    lifecycle,
    metrics::Metrics,
    reload,
};

/// Why `run` stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// Bad configuration (exit 64): nothing was bound or attached.
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Redirect(#[from] RedirectError),
    #[error("installing signal handlers: {0}")]
    Signal(#[source] std::io::Error),
    #[error("another nodeward is running with its programs pinned at {}; start with --takeover to replace it", .0.display())]
    AlreadyRunning(std::path::PathBuf),
    #[error("looking for a running nodeward: {0}")]
    Handover(#[source] std::io::Error),
    /// Taking over on an empty registry would drop every pod the running
    /// instance serves: it keeps serving instead.
    #[error("no complete list from the Kubernetes API server within {0:?}: not taking over from the running nodeward")]
    DiscoveryTimeout(Duration),
}

impl RunError {
    /// The process exit code: 64 (EX_USAGE) for configuration errors.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Config(_) => 64,
            _ => 1,
        }
    }
}

/// How `nodeward run` was asked to start.
#[derive(Debug, Default)]
pub struct RunOptions {
    /// Take over from a nodeward already running on this node (upgrade).
    pub takeover: bool,
    /// The process's reloadable log filter, for the admin endpoint's `/logging`.
    pub log: Option<LogControl>,
}

/// What ended the serving phase.
enum Stop {
    Signal,
    /// A successor asked to take over.
    Handover(lifecycle::Request),
}

/// Runs the node proxy described by `cfg` (read by the caller, which
/// sizes the runtime from it) until SIGINT/SIGTERM, or until a successor
/// takes over.
pub async fn run(cfg: Config, opts: RunOptions) -> Result<(), RunError> {
    // First, so a stop signal during a long start-up is handled, not fatal.
    let mut signals = Signals::install()?;
    let predecessor = find_predecessor(&cfg, opts.takeover)?;
    match lifecycle::raise_nofile_limit() {
        Some(c) if c.after < lifecycle::WANTED_NOFILE / 16 => tracing::warn!(
            limit = c.after,
            "open-file limit is low: each connection needs two descriptors; \
             run with CAP_SYS_RESOURCE or raise the hard limit"
        ),
        Some(c) => tracing::debug!(before = ?c.before, after = c.after, "open-file limit"),
        None => tracing::warn!("cannot read the open-file limit"),
    }
    let mount = cgroup::cgroup2_mount()?;
    let pod_cgroup = cgroup::resolve(&mount, &cfg.pod_cgroup);
    cgroup::cgroup_id(&pod_cgroup)
        .map_err(|e| ConfigError::invalid(&cfg.source, "podCgroup", e))?;
    let (registry, kubernetes) = match &cfg.discovery {
        Discovery::File(file) => (Registry::load(file, &cfg.node, &mount)?, None),
        Discovery::Kubernetes(settings) => {
            let client = nodeward_kube::connect()
                .await
                .map_err(|e| ConfigError::invalid(&cfg.source, "discovery", e))?;
            // Empty until the API server's first complete list arrives.
            (Registry::default(), Some((client, settings.clone())))
        }
    };
    crate::control::log_warnings(&registry);
    let registry = Arc::new(ArcSwap::from_pointee(registry));
    let ca = NodeCa::load(&cfg.identity_dir)
        .map_err(|e| ConfigError::invalid(&cfg.source, "identity.dir", e))?;
    let bundle = Arc::new(
        TrustBundle::from_der(ca.bundle().to_vec(), ca.trust_domain())
            .map_err(|e| ConfigError::invalid(&cfg.source, "identity.dir", e))?,
    );
    let metrics = Arc::new(Metrics::new());
    let flow_map = cfg
        .flows
        .max_edges
        .map(|max| FlowMap::new(max).map(Arc::new))
        .transpose()
        .map_err(|e| ConfigError::invalid(&cfg.source, "flows.maxEdges", e))?;
    let mut observer = Observer::new(metrics.clone())
        .with_trust_domain(ca.trust_domain())
        .with_access_log(cfg.access_log);
    if let Some(settings) = &cfg.tracing {
        let tracer = crate::otlp::start(settings, &cfg.node, &metrics)
            .map_err(|e| ConfigError::invalid(&cfg.source, "tracing.otlp", e))?;
        observer = observer.with_tracer(tracer);
    }
    if let Some(map) = &flow_map {
        observer = observer.with_flows(map.clone());
    }
    let observer = Arc::new(observer);
    let auditor = Auditor::open(&cfg.audit_sink, metrics.clone())
        .map_err(|e| ConfigError::invalid(&cfg.source, "audit.sink", e))?;
    let (policies, sources) = reload::initial(&cfg.policy_dir, cfg.policy.clone(), &metrics);
    let authz = Authz::new(policies, auditor, observer.clone())
        .with_headers_with_underscores(cfg.headers_with_underscores)
        .with_http_limits(cfg.http_limits)
        .with_jwks(JwksFetcher::new(FetchSettings::default()));
    let authz = Arc::new(authz);
    let certs = Arc::new(CertStore::new(ca, cfg.cert_lifetime));
    let pool = Arc::new(Pool::new(bundle.clone(), observer.clone()));
    let (reloaded, workloads_rx) = watch::channel(());
    let swap = Arc::new(RegistrySwap {
        registry: registry.clone(),
        metrics: metrics.clone(),
        authz: authz.clone(),
        reloaded,
    });
    let control = Control {
        node: cfg.node.clone(),
        workloads_file: match &cfg.discovery {
            Discovery::File(file) => Some(file.clone()),
            Discovery::Kubernetes(_) => None,
        },
        cgroup_mount: mount.clone(),
        registry: registry.clone(),
        certs: certs.clone(),
        pool: pool.clone(),
        metrics: metrics.clone(),
        swap: swap.clone(),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let discovery = match kubernetes {
        Some((client, settings)) => {
            let started =
                start_discovery(&cfg, &mount, client, &settings, swap, &metrics, &stop_rx);
            let (status, task) = started.wait(settings.sync_timeout, predecessor).await?;
            Some((status, task))
        }
        None => None,
    };
    control.sync_certs();

    let migration = cfg
        .bpf_pin_dir
        .is_some()
        .then(lifecycle::enable_listener_migration);
    // Shared (SO_REUSEPORT) only when a successor can take over: without
    // pins, a second instance must fail to bind rather than attach a
    // second set of programs beside this one.
    let shared = cfg.bpf_pin_dir.is_some();
    let listeners = bind_outbound(&cfg, shared).await?;
    let tunnel_listener = bind_tunnel(cfg.tunnel_port, shared).await?;
    let admin_listener = bind(cfg.admin_addr, shared).await?;
    let settings = redirect_settings(&cfg, &pod_cgroup, &mount);
    let redirect::Attached {
        redirector,
        flows,
        stats: kernel,
        netns_cookie,
        modes: inbound_modes,
        pods: pod_cgroups,
    } = attach_or_adopt(&settings, opts.takeover || predecessor)?;
    let mut features = vec![(
        "so_netns_cookie",
        netns_cookie == redirect::CookieSource::Sockopt,
    )];
    features.extend(migration.map(|on| ("tcp_migrate_req", on)));
    if cfg.sockmap {
        features.push(("sockmap", kernel.read().sockmap_enabled));
    }
    metrics.register_kernel_features(&features);
    metrics.register_kernel(kernel);
    metrics.register_runtime(tokio::runtime::Handle::current());
    let readiness = Arc::new(Readiness::new());
    readiness.set_bpf_attached(true);
    let discovery_task = discovery.map(|(status, task)| {
        readiness.set_discovery(status);
        task
    });
    metrics
        .mtls_mode
        .with_label_values(&[cfg.mtls.as_str()])
        .set(1);
    let outbound_addrs: Vec<SocketAddr> = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect();

    let dialer = Dialer {
        ipv4: cfg.proxy_ipv4,
        ipv6: cfg.proxy_ipv6,
    };
    let verifier = inbound::client_verifier(bundle, registry.clone());
    let server_config = tls_config::server_config(certs.clone(), verifier)
        .map_err(|e| ConfigError::invalid(&cfg.source, "identity.dir", e))?;
    let (drain_control, relays_drain) = DrainControl::new();
    let inbound = Arc::new(inbound::Inbound {
        node: cfg.node.clone(),
        registry: registry.clone(),
        workloads: workloads_rx,
        tls: server_config,
        certs: certs.clone(),
        observer: observer.clone(),
        dialer: dialer.clone(),
        authz: authz.clone(),
        drain: relays_drain.clone(),
        limits: inbound::limits::Limits::new(cfg.tunnel.clone()),
    });
    let shared = Arc::new(outbound::Shared {
        node: cfg.node.clone(),
        registry: registry.clone(),
        observer,
        certs: certs.clone(),
        pool,
        dialer,
        tunnel_port: cfg.tunnel_port,
        node_local: node_addresses(),
        authz: authz.clone(),
        drain: relays_drain,
    });
    let accept = tokio::spawn(outbound::serve(listeners, flows, shared, stop_rx.clone()));
    let tunnel_task = tokio::spawn(inbound::serve(tunnel_listener, inbound, stop_rx.clone()));
    let control_task = tokio::spawn(control.run(stop_rx.clone()));
    let kernel_pods = reload::KernelPods {
        node: cfg.node.clone(),
        default_mode: cfg.mtls,
        modes: inbound_modes,
        pods: pod_cgroups,
    };
    let modes_task = tokio::spawn(reload::sync_kernel_pods(
        authz.clone(),
        registry.clone(),
        kernel_pods,
        stop_rx.clone(),
    ));
    let policy_task = tokio::spawn(reload::watch(
        authz.clone(),
        cfg.policy_dir.clone(),
        sources,
        metrics.clone(),
        stop_rx.clone(),
    ));
    if let Some(dropped) = opts.log.as_ref().and_then(LogControl::dropped_lines) {
        metrics.register_log_drops(dropped);
    }
    let admin_state = Arc::new(AdminState {
        metrics: metrics.clone(),
        readiness: readiness.clone(),
        registry: registry.clone(),
        certs: certs.clone(),
        authz: authz.clone(),
        node: cfg.node.clone(),
        mtls: cfg.mtls,
        log: opts.log,
        flows: flow_map,
        flow_peers: cfg.flows.peers.clone(),
    });
    // Admin keeps serving through the drain (its port is shared with a
    // successor), so the drain can be watched.
    let (admin_stop, admin_rx) = watch::channel(false);
    let admin_task = tokio::spawn(admin::serve(admin_listener, admin_state, admin_rx));

    let handover = claim_handover(&cfg, predecessor).await?;
    tracing::info!(node = %cfg.node, cgroup = %pod_cgroup.display(), workloads = registry.load().all().len(),
        outbound = ?outbound_addrs, tunnel = cfg.tunnel_port, mtls = cfg.mtls.as_str(),
        trust_domain = certs.ca().trust_domain(), admin = %cfg.admin_addr,
        takeover = opts.takeover, "nodeward ready");

    let stop = wait_for_stop(&mut signals, handover.as_ref()).await;
    readiness.set_draining();
    drain_control.start();
    let mut redirector = Some(redirector);
    let mut handover = handover;
    if let Stop::Signal = stop {
        // A later instance may start at once; nothing is left to hand over.
        drop(handover.take());
        tracing::info!("stopping: detaching BPF programs and draining connections");
        // Detach first: from now on pods connect directly instead of to a
        // proxy that no longer accepts.
        drop(redirector.take());
        readiness.set_bpf_attached(false);
    }
    let _ = stop_tx.send(true);
    let _ = accept.await;
    let _ = tunnel_task.await;
    if let Stop::Handover(request) = stop {
        // Listeners are closed: the successor accepts everything now.
        drop(handover.take());
        match request.done().await {
            Ok(()) => {
                if let Some(r) = redirector.take() {
                    r.hand_over();
                }
                tracing::info!("handed over to a new nodeward; draining connections");
            }
            // The successor is gone: leaving it the programs would leave
            // the node with no listener behind them. Detach instead.
            Err(e) => {
                tracing::error!(error = %e, "the new nodeward vanished during the handover; detaching");
                drop(redirector.take());
            }
        }
    }
    let _ = control_task.await;
    if let Some(task) = discovery_task {
        let _ = task.await;
    }
    let _ = policy_task.await;
    let _ = modes_task.await;
    drain(&metrics, cfg.drain_deadline, &drain_control).await;
    let _ = admin_stop.send(true);
    let _ = admin_task.await;
    tracing::info!("stopped");
    Ok(())
}

/// The Kubernetes watches, started; [`StartedDiscovery::wait`] waits for
/// their first complete list.
struct StartedDiscovery {
    status: Arc<nodeward_kube::Status>,
    task: tokio::task::JoinHandle<()>,
    first: watch::Receiver<bool>,
}

/// Starts watching the API server; every registry it builds goes in force
/// through `swap`, as a file reload does.
fn start_discovery(
    cfg: &Config,
    mount: &Path,
    client: nodeward_kube::Client,
    settings: &KubernetesSettings,
    swap: Arc<RegistrySwap>,
    metrics: &Arc<Metrics>,
    stop: &watch::Receiver<bool>,
) -> StartedDiscovery {
    let status = Arc::new(nodeward_kube::Status::default());
    let discovery = nodeward_kube::Discovery {
        node: cfg.node.clone(),
        cgroup_mount: mount.to_owned(),
        cgroup_root: settings
            .cgroup_root
            .as_deref()
            .map_or_else(|| mount.to_owned(), |r| cgroup::resolve(mount, r)),
        debounce: KUBERNETES_DEBOUNCE,
        status: status.clone(),
        telemetry: metrics.clone(),
    };
    let (first_tx, first) = watch::channel(false);
    let apply = move |registry| {
        swap.apply(registry, nodeward_kube::SOURCE);
        first_tx.send_replace(true);
    };
    let task = tokio::spawn(discovery.run(client, apply, stop.clone()));
    StartedDiscovery {
        status,
        task,
        first,
    }
}

impl StartedDiscovery {
    /// Waits up to `timeout` for the first registry from the API server, so
    /// that no pod is refused for being unknown once the programs attach.
    /// Past it, start-up goes on with the empty registry (which enrols no
    /// pod) and `/ready` stays 503 until the list arrives, unless a running
    /// instance would be replaced: that one keeps serving instead.
    async fn wait(
        mut self,
        timeout: Duration,
        predecessor: bool,
    ) -> Result<(Arc<nodeward_kube::Status>, tokio::task::JoinHandle<()>), RunError> {
        let first = tokio::time::timeout(timeout, self.first.wait_for(|done| *done)).await;
        if first.is_err() {
            if predecessor {
                self.task.abort();
                return Err(RunError::DiscoveryTimeout(timeout));
            }
            tracing::error!(
                timeout = ?timeout,
                "no complete list from the Kubernetes API server yet: serving with no workloads \
                 (no pod is redirected) and not ready until it arrives"
            );
        }
        Ok((self.status, self.task))
    }
}

/// Every address of this network namespace's interfaces (node IPs, bridge
/// gateways, the proxy's own): a pod must not reach them through the proxy.
fn node_addresses() -> HashSet<IpAddr> {
    let addrs: HashSet<IpAddr> = nix::ifaddrs::getifaddrs()
        .map(|it| {
            it.filter_map(|a| a.address)
                .filter_map(|a| {
                    a.as_sockaddr_in()
                        .map(|v4| IpAddr::V4(v4.ip()))
                        .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
                })
                .collect()
        })
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot list the node's addresses");
            HashSet::new()
        });
    tracing::debug!(addresses = ?addrs, "node-local addresses");
    addrs
}

/// The redirect part of a validated config; `pod_cgroup` is the config's
/// `podCgroup` already resolved against the cgroup2 `mount`.
fn redirect_settings(cfg: &Config, pod_cgroup: &Path, mount: &Path) -> redirect::Settings {
    redirect::Settings {
        pod_cgroup: pod_cgroup.to_owned(),
        cgroup_mount: mount.to_owned(),
        mesh_cidrs: cfg.mesh_cidrs.clone(),
        proxy_ipv4: cfg.proxy_ipv4,
        proxy_ipv6: cfg.proxy_ipv6,
        outbound_port: cfg.outbound_port,
        mtls: reload::inbound_mode(cfg.mtls),
        pin_dir: cfg.bpf_pin_dir.clone(),
        sockmap: cfg.sockmap,
    }
}

/// With a pin directory, looks for a running instance: refuses to start
/// beside one unless asked to take over. True when one runs.
fn find_predecessor(cfg: &Config, takeover: bool) -> Result<bool, RunError> {
    let Some(dir) = &cfg.bpf_pin_dir else {
        if takeover {
            let why = "--takeover needs bpf.pinDir: without pinned programs there is nothing to take over";
            return Err(ConfigError::invalid(&cfg.source, "bpf.pinDir", why).into());
        }
        return Ok(false);
    };
    redirect::check_bpffs(dir).map_err(|e| ConfigError::invalid(&cfg.source, "bpf.pinDir", e))?;
    let running = lifecycle::is_running(dir).map_err(RunError::Handover)?;
    if running && !takeover {
        return Err(RunError::AlreadyRunning(dir.clone()));
    }
    Ok(running)
}

/// Adopts pinned programs when taking over, otherwise attaches fresh ones
/// (removing pins a crashed instance left behind).
fn attach_or_adopt(
    settings: &redirect::Settings,
    takeover: bool,
) -> Result<redirect::Attached, RunError> {
    let Some(dir) = &settings.pin_dir else {
        return Ok(Redirector::attach(settings)?);
    };
    if !Redirector::pinned_at(dir) {
        return Ok(Redirector::attach(settings)?);
    }
    // Adopting also covers pins a crashed instance left: detaching them
    // first would let pods connect around the mesh for a moment.
    if !takeover {
        tracing::warn!(dir = %dir.display(), "adopting BPF pins a stopped nodeward left behind");
    } else {
        tracing::info!(dir = %dir.display(), "adopting the pinned BPF programs");
    }
    match Redirector::adopt(settings) {
        Ok(attached) => Ok(attached),
        Err(e) => {
            tracing::warn!(error = %e, "cannot adopt the pinned programs; removing them and attaching afresh");
            Redirector::remove_stale(dir)?;
            Ok(Redirector::attach(settings)?)
        }
    }
}

/// Asks the running instance (if any) to stop accepting, then claims the
/// handover channel for this instance. Without a pin directory there is
/// no channel. A takeover that is not confirmed is an error: two instances
/// would otherwise serve with nobody draining.
async fn claim_handover(
    cfg: &Config,
    predecessor: bool,
) -> Result<Option<lifecycle::Handover>, RunError> {
    let Some(dir) = cfg.bpf_pin_dir.as_ref() else {
        return Ok(None);
    };
    if predecessor {
        lifecycle::request_handover(dir)
            .await
            .map_err(RunError::Handover)?;
        tracing::info!("the previous nodeward stopped accepting; taking over");
    }
    match lifecycle::Handover::bind_when_free(dir).await {
        Ok(h) => Ok(Some(h)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot claim the handover channel: a later takeover will not find this instance");
            Ok(None)
        }
    }
}

/// Binds the tunnel port on every address (dual-stack where IPv6 exists).
async fn bind_tunnel(port: u16, shared: bool) -> Result<TcpListener, RunError> {
    let any6 = SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), port);
    match bind(any6, shared).await {
        Ok(l) => Ok(l),
        Err(_) => {
            bind(
                SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), port),
                shared,
            )
            .await
        }
    }
}

async fn bind_outbound(cfg: &Config, shared: bool) -> Result<Vec<TcpListener>, RunError> {
    let mut listeners = vec![
        bind(
            SocketAddr::new(cfg.proxy_ipv4.into(), cfg.outbound_port),
            shared,
        )
        .await?,
    ];
    if let Some(v6) = cfg.proxy_ipv6 {
        listeners.push(bind(SocketAddr::new(v6.into(), cfg.outbound_port), shared).await?);
    }
    Ok(listeners)
}

/// A listener a successor can share (`SO_REUSEPORT`) during a takeover, or
/// an exclusive one.
async fn bind(addr: SocketAddr, shared: bool) -> Result<TcpListener, RunError> {
    let bound = if shared {
        lifecycle::shared_listener(addr)
    } else {
        TcpListener::bind(addr).await
    };
    bound.map_err(|source| RunError::Bind { addr, source })
}

/// SIGTERM and SIGINT, installed before anything slow happens.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Self, RunError> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate()).map_err(RunError::Signal)?,
            int: signal(SignalKind::interrupt()).map_err(RunError::Signal)?,
        })
    }
}

/// Waits for a stop signal or a successor's request. A signal that arrives
/// while a successor is mid-request finishes the handover instead: the
/// successor already runs on the pinned programs, and detaching them would
/// pull them from under it.
async fn wait_for_stop(signals: &mut Signals, handover: Option<&lifecycle::Handover>) -> Stop {
    let request = async {
        match handover {
            Some(h) => h.next_request().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(request);
    tokio::select! {
        _ = signals.term.recv() => {}
        _ = signals.int.recv() => {}
        r = &mut request => return Stop::Handover(r),
    }
    if handover.is_some_and(lifecycle::Handover::pending) {
        return Stop::Handover(request.await);
    }
    Stop::Signal
}

/// Waits for open connections to finish, up to `deadline`; what is still
/// open then is counted and cut (reset, see [`nodeward_proxy::drain::Drain`]), and the cut
/// relays get a moment to finish their resets and records.
async fn drain(metrics: &Metrics, deadline: Duration, control: &DrainControl) {
    let open = || metrics.active_connections.get() + metrics.pending_connections.get();
    let until = tokio::time::Instant::now() + deadline;
    while open() > 0 && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = open();
    if left > 0 {
        metrics
            .drain_closed
            .inc_by(u64::try_from(left).unwrap_or(0));
        tracing::info!(
            connections = left,
            "drain deadline reached: resetting the remaining connections"
        );
        control.cut();
        let settle = tokio::time::Instant::now() + CUT_SETTLE;
        while metrics.active_connections.get() > 0 && tokio::time::Instant::now() < settle {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// How long cut relays get to reset their sockets and write their records
/// before the process exits anyway.
const CUT_SETTLE: Duration = Duration::from_secs(1);
