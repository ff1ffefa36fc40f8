//! `nodeward probe`: which of the kernel features nodeward uses this node
//! has, as a table for people or JSON for tools (`cargo xtask vm-test`
//! builds its kernel matrix from it).

use std::path::{Path, PathBuf};

use nodeward_bpf::probe::{Feature, Need};
use serde::Serialize;

/// One feature as `--format json` prints it.
#[derive(Debug, Serialize)]
pub struct Row {
    pub feature: &'static str,
    pub what: &'static str,
    /// Upstream Linux release that brought it.
    pub since: &'static str,
    pub required: bool,
    /// What the proxy loses without it (optional features).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub without_it: Option<&'static str>,
    pub available: bool,
    /// The kernel's answer when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct Report {
    /// `uname -r`.
    pub kernel: String,
    /// The cgroup v2 mount the probe used.
    pub cgroup2: Option<PathBuf>,
    /// Whether every required feature is there (nodeward can run).
    pub supported: bool,
    pub features: Vec<Row>,
}

/// Probes this kernel. `bpffs` is where pinning is tried (default
/// `/sys/fs/bpf`).
pub fn run(bpffs: Option<&Path>) -> Report {
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let bpffs = bpffs.unwrap_or(Path::new("/sys/fs/bpf"));
    let (cgroup2, features) = match nodeward_workloads::cgroup::cgroup2_mount() {
        Ok(mount) => {
            let features = nodeward_bpf::probe::probe(&mount, Some(bpffs));
            (Some(mount), features)
        }
        Err(e) => (None, without_cgroup2(&e.to_string())),
    };
    let features: Vec<Row> = features.into_iter().map(row).collect();
    Report {
        kernel,
        cgroup2,
        supported: features.iter().all(|f| f.available || !f.required),
        features,
    }
}

/// With no cgroup2 mount nothing can attach: the probe still lists the
/// features, each failed for that reason.
fn without_cgroup2(why: &str) -> Vec<Feature> {
    let missing = Path::new("/nonexistent-cgroup2-mount");
    nodeward_bpf::probe::probe(missing, None)
        .into_iter()
        .map(|mut f| {
            if f.result.is_err() {
                f.result = Err(why.to_owned());
            }
            f
        })
        .collect()
}

fn row(f: Feature) -> Row {
    let (required, without_it) = match f.need {
        Need::Required => (true, None),
        Need::Optional(lost) => (false, Some(lost)),
    };
    Row {
        feature: f.name,
        what: f.what,
        since: f.since,
        required,
        without_it,
        available: f.result.is_ok(),
        error: f.result.err(),
    }
}

/// A plain-text table, one feature a line.
pub fn table(report: &Report) -> String {
    use std::fmt::Write;
    let mut out = format!("kernel {}", report.kernel);
    match &report.cgroup2 {
        Some(m) => {
            let _ = writeln!(out, ", cgroup2 at {}", m.display());
        }
        None => out.push_str(", no cgroup2 mount\n"),
    }
    for f in &report.features {
        let need = if f.required { "required" } else { "optional" };
        let state = if f.available { "yes" } else { "NO" };
        let _ = writeln!(
            out,
            "{:<16} {:<8} {:<4} since {:<5} {}",
            f.feature, need, state, f.since, f.what
        );
        if let Some(e) = &f.error {
            let _ = writeln!(out, "{:<16} {}", "", e);
        }
        if let (false, Some(lost)) = (f.available, f.without_it) {
            let _ = writeln!(out, "{:<16} without it: {}", "", lost);
        }
    }
    out.push_str(if report.supported {
        "nodeward can run on this kernel\n"
    } else {
        "nodeward cannot run on this kernel: a required feature is missing (Linux 5.10 or newer is supported)\n"
    });
    out
}
