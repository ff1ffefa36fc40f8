//! Keeps the node's state current while it runs: reloads the workloads file
//! when it changes (a bad file is reported and the last good one stays),
//! mints certificates for new local identities, renews them at half life,
//! and closes idle pooled tunnels.
//!
//! A new registry, from the file or from the Kubernetes API server, goes
//! in force through one path: [`RegistrySwap::apply`].

use std::{
    collections::HashSet,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use nodeward_identity::{CertStore, SpiffeId};
use nodeward_proxy::{authz::Authz, tunnel::Pool};
use nodeward_workloads::{local_identities, Registry};

use crate::metrics::Metrics;

/// How often the workloads file is checked for changes.
const POLL: Duration = Duration::from_secs(1);
/// How often idle pooled tunnels are looked for.
const PRUNE_EVERY: Duration = Duration::from_secs(30);

/// The state the loop maintains and where it comes from.
pub struct Control {
    pub node: String,
    /// The workloads file to poll; `None` when the registry comes from
    /// the Kubernetes API server (through [`Control::swap`]).
    pub workloads_file: Option<PathBuf>,
    pub cgroup_mount: PathBuf,
    pub registry: Arc<ArcSwap<Registry>>,
    pub certs: Arc<CertStore>,
    pub pool: Arc<Pool>,
    pub metrics: Arc<Metrics>,
    pub swap: Arc<RegistrySwap>,
}

/// Puts a new registry in force and tells everything that depends on it.
pub struct RegistrySwap {
    pub registry: Arc<ArcSwap<Registry>>,
    pub metrics: Arc<Metrics>,
    /// Open connections are re-judged when workloads (labels) change.
    pub authz: Arc<Authz>,
    /// Told after each reload that replaced the registry: open tunnel
    /// connections re-check the identity they speak for.
    pub reloaded: watch::Sender<()>,
}

impl Control {
    /// Mints certificates for the current registry (at start, before serving).
    pub fn sync_certs(&self) {
        let wanted = local_identities(&self.registry.load(), &self.node, self.trust_domain());
        match self.certs.sync(&wanted, SystemTime::now()) {
            Ok(report) => {
                let count = |c: &str, n: usize| {
                    self.metrics
                        .certificates_issued
                        .with_label_values(&[c])
                        .inc_by(n as u64)
                };
                count("new", report.minted.len());
                count("renewal", report.renewed.len());
                for id in report.minted.iter().chain(&report.renewed) {
                    tracing::info!(identity = %id, "workload certificate issued");
                }
                for id in &report.dropped {
                    let _ = self
                        .metrics
                        .certificate_expiry
                        .remove_label_values(&[&id.to_string()]);
                }
            }
            Err(e) => tracing::error!(error = %e, "issuing workload certificates"),
        }
        for (id, not_after) in self.certs.expiries() {
            let secs = not_after
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            self.metrics
                .certificate_expiry
                .with_label_values(&[&id.to_string()])
                .set(i64::try_from(secs).unwrap_or(i64::MAX));
        }
    }

    /// Runs until `shutdown` flips.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let read = |f: &Option<PathBuf>| f.as_ref().and_then(|f| std::fs::read(f).ok());
        let mut last = read(&self.workloads_file);
        let mut pruned = Instant::now();
        loop {
            let wait = self.until_next_renewal().min(POLL);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
            let current = read(&self.workloads_file);
            if current.is_some() && current != last {
                last = current;
                self.reload();
            }
            self.sync_certs();
            if pruned.elapsed() >= PRUNE_EVERY {
                self.pool.prune();
                pruned = Instant::now();
            }
        }
    }

    fn trust_domain(&self) -> &str {
        self.certs.ca().trust_domain()
    }

    fn until_next_renewal(&self) -> Duration {
        self.certs
            .next_renewal()
            .and_then(|t| t.duration_since(SystemTime::now()).ok())
            .unwrap_or(POLL)
    }

    fn reload(&self) {
        let Some(file) = &self.workloads_file else {
            return;
        };
        match Registry::load(file, &self.node, &self.cgroup_mount) {
            Ok(registry) => self.swap.apply(registry, "workloads file"),
            Err(e) => {
                tracing::error!(error = %e, "workloads file rejected; keeping the last good one");
                self.metrics
                    .workloads_reloads
                    .with_label_values(&["error"])
                    .inc();
            }
        }
    }
}

impl RegistrySwap {
    /// Swaps `registry` in (keeping the Services' load state), re-judges
    /// open connections, tells the tunnel server, and drops the metric
    /// series of departed workloads. `source` names where it came from.
    pub fn apply(&self, mut registry: Registry, source: &str) {
        registry.inherit_loads(&self.registry.load());
        log_warnings(&registry);
        tracing::info!(
            workloads = registry.all().len(),
            services = registry.services().all().len(),
            source,
            "workloads reloaded"
        );
        self.registry.store(Arc::new(registry));
        let registry = self.registry.load();
        self.authz.workloads_changed(&registry);
        self.reloaded.send_replace(());
        self.prune_metrics(&registry);
        self.metrics
            .workloads_reloads
            .with_label_values(&["ok"])
            .inc();
    }

    fn prune_metrics(&self, registry: &Registry) {
        let workloads: HashSet<(&str, &str)> = registry
            .all()
            .iter()
            .map(|w| (w.namespace.as_str(), w.name.as_str()))
            .collect();
        let accounts: HashSet<(&str, &str)> = registry
            .all()
            .iter()
            .map(|w| (w.namespace.as_str(), w.service_account.as_str()))
            .collect();
        let principal_exists = |p: &str| {
            SpiffeId::parse(p)
                .ok()
                .and_then(|id| id.namespace_and_sa().map(|k| accounts.contains(&k)))
                .unwrap_or(false)
        };
        let services: HashSet<&str> = registry
            .services()
            .all()
            .iter()
            .map(|s| s.id.as_str())
            .collect();
        let pruned = self.metrics.prune_workloads(
            |ns, name| workloads.contains(&(ns, name)),
            principal_exists,
            |s| services.contains(s),
        );
        if pruned > 0 {
            tracing::debug!(
                series = pruned,
                "dropped the metric series of departed workloads"
            );
        }
    }
}

/// Logs what the workloads file got wrong without being rejected.
pub fn log_warnings(registry: &Registry) {
    for warning in registry.warnings() {
        tracing::warn!(warning = %warning, "workloads file");
    }
}
