//! cgroup v2 directories: finding the cgroup2 mount, creating a cgroup,
//! moving this process into one, and killing every process of a tree before
//! removing it. Knows nothing of clusters.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

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

/// Creates the cgroup `dir` (and its parents): in cgroup v2 a cgroup is a
/// directory of the cgroup2 tree.
pub(crate) fn create(dir: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dir)
}

/// Moves the calling process into the cgroup `dir`.
pub(crate) fn enter(dir: &Path) -> Result<()> {
    fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
        .with_context(|| format!("joining cgroup {}", dir.display()))
}

/// Kills every process in the cgroup tree at `root`, waits (up to 5 s)
/// until it is empty, then removes the tree. Does nothing if `root` is gone.
pub(crate) fn kill_and_remove(root: &Path) {
    if !root.exists() {
        return;
    }
    let _ = fs::write(root.join("cgroup.kill"), "1");
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !cgroup_empty(root) {
        std::thread::sleep(Duration::from_millis(20));
    }
    remove_cgroup_tree(root);
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
