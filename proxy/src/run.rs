//! `nodeward run`: validate everything, bind, attach, serve, and detach on signal.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use tokio::{net::TcpListener, sync::watch};
use tokio_rustls::TlsAcceptor;

use crate::{
    admin,
    authz::{audit::Auditor, reload, Authz},
    cgroup,
    config::{Config, ConfigError},
    control::Control,
    identity::{CertStore, NodeCa, SpiffeId},
    metrics::Metrics,
    outbound,
    redirect::{self, RedirectError, Redirector},
    relay::Dialer,
    tls::{self, ClientVerifier, TrustBundle},
    tunnel::{self, Pool},
    workloads::Registry,
};

/// How long open connections may finish after a stop signal.
const DRAIN: Duration = Duration::from_secs(5);

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

/// Runs the node proxy described by the config file at `path` until SIGINT/SIGTERM.
pub async fn run(path: &Path) -> Result<(), RunError> {
    let cfg = Config::load(path)?;
    let mount = cgroup::cgroup2_mount()?;
    let pod_cgroup = cgroup::resolve(&mount, &cfg.pod_cgroup);
    cgroup::cgroup_id(&pod_cgroup)
        .map_err(|e| ConfigError::invalid(&cfg.source, "podCgroup", e))?;
    let registry = Registry::load(&cfg.workloads_file, &cfg.node, &mount)?;
    let registry = Arc::new(ArcSwap::from_pointee(registry));
    let ca = NodeCa::load(&cfg.identity_dir)
        .map_err(|e| ConfigError::invalid(&cfg.source, "identity.dir", e))?;
    let bundle = Arc::new(
        TrustBundle::from_der(ca.bundle().to_vec(), ca.trust_domain())
            .map_err(|e| ConfigError::invalid(&cfg.source, "identity.dir", e))?,
    );
    let metrics = Arc::new(Metrics::new());
    let auditor = Auditor::open(&cfg.audit_sink, metrics.audit_dropped.clone())
        .map_err(|e| ConfigError::invalid(&cfg.source, "audit.sink", e))?;
    let (policies, sources) = reload::initial(&cfg.policy_dir, cfg.policy.clone(), &metrics);
    let authz = Arc::new(Authz::new(policies, auditor, metrics.clone()));
    let certs = Arc::new(CertStore::new(ca, cfg.cert_lifetime));
    let pool = Arc::new(Pool::new(bundle.clone(), metrics.clone()));
    let control = Control {
        node: cfg.node.clone(),
        workloads_file: cfg.workloads_file.clone(),
        cgroup_mount: mount.clone(),
        registry: registry.clone(),
        certs: certs.clone(),
        pool: pool.clone(),
        metrics: metrics.clone(),
    };
    control.sync_certs();

    let listeners = bind_outbound(&cfg).await?;
    let tunnel_listener = bind_tunnel(cfg.tunnel_port).await?;
    let admin_listener = bind(cfg.admin_addr).await?;
    let (redirector, flows, kernel, inbound_modes) =
        Redirector::attach(&redirect::Settings::new(&pod_cgroup, &cfg))?;
    metrics.register_kernel(kernel);
    metrics
        .mtls_mode
        .with_label_values(&[cfg.mtls.as_str()])
        .set(1);
    tracing::info!(node = %cfg.node, cgroup = %pod_cgroup.display(), workloads = registry.load().all().len(),
        outbound = ?listeners.iter().filter_map(|l| l.local_addr().ok()).collect::<Vec<_>>(),
        tunnel = cfg.tunnel_port, mtls = cfg.mtls.as_str(), trust_domain = certs.ca().trust_domain(),
        admin = %cfg.admin_addr, "nodeward ready");

    let (stop_tx, stop_rx) = watch::channel(false);
    let dialer = Dialer {
        ipv4: cfg.proxy_ipv4,
        ipv6: cfg.proxy_ipv6,
    };
    let verifier = client_verifier(bundle, registry.clone());
    let server_config = tls::server_config(certs.clone(), verifier)
        .map_err(|e| ConfigError::invalid(&cfg.source, "identity.dir", e))?;
    let inbound = Arc::new(tunnel::server::Inbound {
        node: cfg.node.clone(),
        registry: registry.clone(),
        acceptor: TlsAcceptor::from(server_config),
        certs: certs.clone(),
        metrics: metrics.clone(),
        dialer: dialer.clone(),
        authz: authz.clone(),
    });
    let shared = Arc::new(outbound::Shared {
        node: cfg.node.clone(),
        registry: registry.clone(),
        metrics: metrics.clone(),
        certs,
        pool,
        dialer,
        tunnel_port: cfg.tunnel_port,
        authz: authz.clone(),
    });
    let accept = tokio::spawn(outbound::serve(listeners, flows, shared, stop_rx.clone()));
    let tunnel_task = tokio::spawn(tunnel::server::serve(
        tunnel_listener,
        inbound,
        stop_rx.clone(),
    ));
    let control_task = tokio::spawn(control.run(stop_rx.clone()));
    let modes_task = tokio::spawn(reload::sync_inbound_modes(
        authz.clone(),
        registry.clone(),
        cfg.node.clone(),
        inbound_modes,
        stop_rx.clone(),
    ));
    let policy_task = tokio::spawn(reload::watch(
        authz,
        cfg.policy_dir.clone(),
        sources,
        metrics.clone(),
        stop_rx.clone(),
    ));
    let admin_task = tokio::spawn(admin::serve(admin_listener, metrics.clone(), stop_rx));

    wait_for_signal().await?;
    tracing::info!("stopping: detaching BPF programs and draining connections");
    // Detach first: from now on pods connect directly instead of to a proxy
    // that no longer accepts.
    drop(redirector);
    let _ = stop_tx.send(true);
    let _ = accept.await;
    let _ = tunnel_task.await;
    let _ = control_task.await;
    let _ = policy_task.await;
    let _ = modes_task.await;
    drain(&metrics).await;
    let _ = admin_task.await;
    tracing::info!("stopped");
    Ok(())
}

/// The tunnel server's client check: a valid SVID whose identity runs on
/// the node that signed it (per the workloads file).
fn client_verifier(
    bundle: Arc<TrustBundle>,
    registry: Arc<ArcSwap<Registry>>,
) -> Arc<ClientVerifier> {
    let authorize = move |id: &SpiffeId, node: &str| {
        id.namespace_and_sa()
            .is_some_and(|(ns, sa)| registry.load().hosts(node, ns, sa))
    };
    Arc::new(ClientVerifier::new(bundle, Arc::new(authorize)))
}

/// Binds the tunnel port on every address (dual-stack where IPv6 exists).
async fn bind_tunnel(port: u16) -> Result<TcpListener, RunError> {
    let any6 = SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), port);
    match TcpListener::bind(any6).await {
        Ok(l) => Ok(l),
        Err(_) => {
            bind(SocketAddr::new(
                std::net::Ipv4Addr::UNSPECIFIED.into(),
                port,
            ))
            .await
        }
    }
}

async fn bind_outbound(cfg: &Config) -> Result<Vec<TcpListener>, RunError> {
    let mut listeners =
        vec![bind(SocketAddr::new(cfg.proxy_ipv4.into(), cfg.outbound_port)).await?];
    if let Some(v6) = cfg.proxy_ipv6 {
        listeners.push(bind(SocketAddr::new(v6.into(), cfg.outbound_port)).await?);
    }
    Ok(listeners)
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, RunError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Bind { addr, source })
}

async fn wait_for_signal() -> Result<(), RunError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(RunError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(RunError::Signal)?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

async fn drain(metrics: &Metrics) {
    let deadline = tokio::time::Instant::now() + DRAIN;
    while metrics.active_connections.get() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
