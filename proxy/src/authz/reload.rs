//! Hot reload of the policy directory.
//!
//! The directory is polled rather than watched with inotify: a Kubernetes
//! ConfigMap volume changes by swapping the `..data` symlink, which inotify
//! on the directory reports unreliably, and polling twice a second is well
//! inside the 2 s promise. Contents are compared, not timestamps, so a
//! rewrite within the same second is still seen.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use super::Authz;

use crate::{
    config::MtlsMode,
    metrics::Metrics,
    policy::{LoadErrors, PolicySet, Settings},
    redirect::InboundModes,
    workloads::Registry,
};

/// How often the directory is looked at.
pub const POLL: Duration = Duration::from_millis(500);

/// The policy files of a directory: `(path, text)` sorted by name.
pub type Sources = Vec<(PathBuf, String)>;

/// Why the directory itself could not be read.
#[derive(Debug, thiserror::Error)]
#[error("policy directory {dir}: {source}")]
pub struct DirError {
    dir: String,
    #[source]
    source: std::io::Error,
}

/// Loads the directory at start: the set to put in force, or, when the
/// directory is unreadable or invalid, the deny-everything set (fail
/// closed), with the problem reported.
pub fn initial(dir: &Path, settings: Settings, metrics: &Metrics) -> (PolicySet, Option<Sources>) {
    match read_sources(dir)
        .map_err(|e| e.to_string())
        .and_then(|sources| {
            PolicySet::from_sources(&sources, settings.clone())
                .map(|set| (set, sources))
                .map_err(|e| e.to_string())
        }) {
        Ok((set, sources)) => {
            report_ok(&set, metrics);
            (set, Some(sources))
        }
        Err(e) => {
            report_error(
                &e,
                metrics,
                "no valid policy set was ever loaded: denying everything",
            );
            metrics.policy_loaded.set(0);
            (PolicySet::deny_all(settings), None)
        }
    }
}

/// Polls `dir` until `shutdown` flips, putting each new valid set in force;
/// an invalid one is reported and the last good set stays.
pub async fn watch(
    authz: Arc<Authz>,
    dir: PathBuf,
    mut last: Option<Sources>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let settings = authz.policies().settings().clone();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = shutdown.changed() => return,
        }
        let dir2 = dir.clone();
        let Ok(read) = tokio::task::spawn_blocking(move || read_sources(&dir2)).await else {
            continue;
        };
        let sources = match read {
            Ok(s) => s,
            Err(e) => {
                if last.is_some() {
                    report_error(&e.to_string(), &metrics, "keeping the last good policy set");
                    last = None;
                }
                continue;
            }
        };
        if last.as_ref() == Some(&sources) {
            continue;
        }
        match PolicySet::from_sources(&sources, settings.clone()) {
            Ok(set) => {
                report_ok(&set, &metrics);
                authz.replace(set);
            }
            Err(e) => report_invalid(&e, &metrics, metrics.policy_loaded.get() == 1),
        }
        last = Some(sources);
    }
}

/// Reads every `*.yaml`/`*.yml` entry of `dir` (following symlinks, as in a
/// ConfigMap volume; hidden entries such as `..data` are skipped).
pub fn read_sources(dir: &Path) -> Result<Sources, DirError> {
    let err = |source| DirError {
        dir: dir.display().to_string(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let path = entry.map_err(err)?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let yaml = name.ends_with(".yaml") || name.ends_with(".yml");
        if name.starts_with('.') || !yaml || !path.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(err)?;
        out.push((path, text));
    }
    out.sort();
    Ok(out)
}

fn report_ok(set: &PolicySet, metrics: &Metrics) {
    tracing::info!(summary = %set.summary(), "policy set loaded");
    metrics.policy_reloads.with_label_values(&["ok"]).inc();
    metrics.policy_loaded.set(1);
}

fn report_invalid(e: &LoadErrors, metrics: &Metrics, had_good: bool) {
    let consequence = if had_good {
        "keeping the last good policy set"
    } else {
        "no valid policy set was ever loaded: denying everything"
    };
    report_error(&e.to_string(), metrics, consequence);
}

fn report_error(errors: &str, metrics: &Metrics, consequence: &str) {
    tracing::error!(errors, "policy set rejected; {consequence}");
    metrics.policy_reloads.with_label_values(&["error"]).inc();
}

/// Keeps the kernel's per-pod inbound modes in line with the
/// PeerAuthentication policies in force and the local workloads, until
/// `shutdown` flips. Pods no PeerAuthentication covers use the config's mode.
pub async fn sync_inbound_modes(
    authz: Arc<Authz>,
    registry: Arc<ArcSwap<Registry>>,
    node: String,
    mut modes: InboundModes,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let set = authz.policies();
        let wanted: BTreeMap<IpAddr, MtlsMode> = registry
            .load()
            .all()
            .iter()
            .filter(|w| w.node == node)
            .filter_map(|w| set.mtls_mode(&w.namespace, &w.labels).map(|m| (w, m)))
            .flat_map(|(w, m)| w.ips.iter().map(move |ip| (*ip, m)))
            .collect();
        let permissive = wanted
            .values()
            .filter(|m| **m == MtlsMode::Permissive)
            .count();
        if modes.set(wanted) {
            tracing::info!(
                permissive_pod_ips = permissive,
                "per-workload inbound mTLS modes applied"
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = shutdown.changed() => return,
        }
    }
}
