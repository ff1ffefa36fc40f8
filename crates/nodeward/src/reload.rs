//! Hot reload of the policy directory.
//!
//! The directory is polled rather than watched with inotify: a Kubernetes
//! ConfigMap volume changes by swapping the `..data` symlink, which inotify
//! on the directory reports unreliably. Polling every 500 ms keeps the
//! documented promise that changes apply within a second. Contents are
//! compared, not timestamps, so a rewrite within the same second is still
//! seen.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use nodeward_bpf::{InboundMode, InboundModes, PodCgroups};
use nodeward_policy::{LoadErrors, MtlsMode, PolicySet, Settings};
use nodeward_proxy::authz::Authz;
use nodeward_workloads::Registry;

use crate::metrics::Metrics;

/// How often the directory is looked at.
pub const POLL: Duration = Duration::from_millis(500);

/// The policy files of a directory: `(path, text)` sorted by name.
pub type Sources = Vec<(PathBuf, String)>;

/// Loads the directory at start: the set to put in force, or, when the
/// directory is unreadable or invalid, the deny-everything set (fail
/// closed), with the problem reported.
pub fn initial(dir: &Path, settings: Settings, metrics: &Metrics) -> (PolicySet, Option<Sources>) {
    match PolicySet::read_sources(dir)
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
        authz.refresh_gauges();
        let at = dir.clone();
        let Ok(read) = tokio::task::spawn_blocking(move || PolicySet::read_sources(&at)).await
        else {
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

/// What the kernel must know about this node's pods.
pub struct KernelPods {
    pub node: String,
    /// The inbound mode of an enrolled pod no PeerAuthentication covers.
    pub default_mode: MtlsMode,
    pub modes: InboundModes,
    pub pods: PodCgroups,
}

/// Keeps the kernel's enrolled pods (their cgroups, which the connect
/// programs redirect for) and their inbound modes in line with the local
/// workloads and the PeerAuthentication policies in force, until
/// `shutdown` flips. Enrolled pods no PeerAuthentication covers get the
/// config's mode; pods that are not enrolled get no entry at all.
pub async fn sync_kernel_pods(
    authz: Arc<Authz>,
    registry: Arc<ArcSwap<Registry>>,
    mut kernel: KernelPods,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let registry_now = registry.load();
        if kernel.pods.set(registry_now.enrolled_cgroups().collect()) {
            tracing::info!(pods = kernel.pods.current().len(), "enrolled pods applied");
        }
        let set = authz.policies().clone();
        let wanted: BTreeMap<IpAddr, InboundMode> = registry_now
            .all()
            .iter()
            .filter(|w| w.node == kernel.node && w.enrolled)
            .map(|w| {
                (
                    w,
                    set.mtls_mode(&w.namespace, &w.labels)
                        .unwrap_or(kernel.default_mode),
                )
            })
            .flat_map(|(w, m)| w.ips.iter().map(move |ip| (*ip, inbound_mode(m))))
            .collect();
        let permissive = wanted
            .values()
            .filter(|m| **m == InboundMode::Permissive)
            .count();
        if kernel.modes.set(wanted) {
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

/// What the kernel's inbound filter does for a pod in `mode`.
pub fn inbound_mode(mode: MtlsMode) -> InboundMode {
    match mode {
        MtlsMode::Strict => InboundMode::Strict,
        MtlsMode::Permissive => InboundMode::Permissive,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// A ConfigMap volume: files are symlinks through `..data`, which the
    /// kubelet swaps to a new timestamped directory in one rename.
    #[test]
    fn configmap_symlink_swaps_are_seen_and_hidden_entries_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let version = |name: &str, text: &str| {
            std::fs::create_dir(d.join(name)).expect("version dir");
            std::fs::write(d.join(name).join("authz.yaml"), text).expect("write");
        };
        version("..2026_11_25_01", "first\n");
        symlink("..2026_11_25_01", d.join("..data")).expect("..data");
        symlink("..data/authz.yaml", d.join("authz.yaml")).expect("file link");
        std::fs::write(d.join("notes.txt"), "not yaml").expect("write");
        std::fs::create_dir(d.join("nested.yaml")).expect("a directory named like a file");
        let first = PolicySet::read_sources(d).expect("read");
        assert_eq!(first.len(), 1, "{first:?}");
        assert_eq!(first[0].1, "first\n");

        version("..2026_11_25_02", "second\n");
        symlink("..2026_11_25_02", d.join("..data_tmp")).expect("tmp link");
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).expect("swap");
        let second = PolicySet::read_sources(d).expect("read");
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].1, "second\n");
        assert_ne!(first, second, "the swap is a change the watcher acts on");
    }

    #[test]
    fn a_missing_directory_is_an_error_not_an_empty_set() {
        let err = PolicySet::read_sources(Path::new("/nonexistent/nodeward-policies"))
            .expect_err("missing");
        assert!(
            err.to_string().contains("/nonexistent/nodeward-policies"),
            "{err}"
        );
    }
}
