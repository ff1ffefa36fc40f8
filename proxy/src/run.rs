//! `nodeward run`: validate everything, bind, attach, serve, and detach on signal.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::watch};

use crate::{
    admin, cgroup,
    config::{Config, ConfigError},
    metrics::Metrics,
    outbound,
    redirect::{self, RedirectError, Redirector},
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
    let registry = Arc::new(Registry::load(&cfg.workloads_file, &cfg.node, &mount)?);

    let listeners = bind_outbound(&cfg).await?;
    let admin_listener = bind(cfg.admin_addr).await?;
    let (redirector, flows, kernel) =
        Redirector::attach(&redirect::Settings::new(&pod_cgroup, &cfg))?;
    let metrics = Arc::new(Metrics::new());
    metrics.register_kernel(kernel);
    tracing::info!(node = %cfg.node, cgroup = %pod_cgroup.display(), workloads = registry.all().len(),
        outbound = ?listeners.iter().filter_map(|l| l.local_addr().ok()).collect::<Vec<_>>(),
        admin = %cfg.admin_addr, "nodeward ready");

    let (stop_tx, stop_rx) = watch::channel(false);
    let shared = Arc::new(outbound::Shared {
        registry,
        metrics: metrics.clone(),
    });
    let accept = tokio::spawn(outbound::serve(listeners, flows, shared, stop_rx.clone()));
    let admin_task = tokio::spawn(admin::serve(admin_listener, metrics.clone(), stop_rx));

    wait_for_signal().await?;
    tracing::info!("stopping: detaching BPF programs and draining connections");
    // Detach first: from now on pods connect directly instead of to a proxy
    // that no longer accepts.
    drop(redirector);
    let _ = stop_tx.send(true);
    let _ = accept.await;
    drain(&metrics).await;
    let _ = admin_task.await;
    tracing::info!("stopped");
    Ok(())
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
