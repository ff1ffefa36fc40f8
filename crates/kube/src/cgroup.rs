//! Where kubelet puts a pod's cgroup, found from the pod UID.
//!
//! kubelet names pod cgroups after the UID, under a QoS-class parent that
//! depends on its cgroup driver:
//!
//! - systemd: `kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid>.slice`
//!   with the UID's `-` written `_` (systemd reserves `-` for nesting);
//!   Guaranteed pods sit directly at `kubepods.slice/kubepods-pod<uid>.slice`;
//! - cgroupfs: `kubepods/<qos>/pod<uid>`, Guaranteed at `kubepods/pod<uid>`.
//!
//! The containers' cgroups (and the pause container's) are children of the
//! pod cgroup; the kernel programs attribute every descendant to the pod,
//! so the pod directory is what the registry needs.

use std::path::{Path, PathBuf};

/// The QoS classes that get a parent cgroup of their own (Guaranteed pods
/// hang off `kubepods` itself).
const QOS_PARENTS: [&str; 2] = ["burstable", "besteffort"];

/// The pod cgroup of the pod with `uid` under `root` (the cgroup2 mount, or
/// wherever kubelet's `kubepods` hierarchy lives), for either kubelet
/// cgroup driver and any QoS class; `None` while it does not exist (the
/// pod is not started yet, or runs on another node).
pub fn find_pod_cgroup(root: &Path, uid: &str) -> Option<PathBuf> {
    if !is_uid(uid) {
        return None;
    }
    candidates(root, uid).into_iter().find(|p| p.is_dir())
}

/// Every place kubelet may have put the pod's cgroup.
fn candidates(root: &Path, uid: &str) -> Vec<PathBuf> {
    let systemd_uid = uid.replace('-', "_");
    let slice = root.join("kubepods.slice");
    let cgroupfs = root.join("kubepods");
    let mut out = vec![slice.join(format!("kubepods-pod{systemd_uid}.slice"))];
    out.extend(QOS_PARENTS.iter().map(|qos| {
        slice
            .join(format!("kubepods-{qos}.slice"))
            .join(format!("kubepods-{qos}-pod{systemd_uid}.slice"))
    }));
    out.push(cgroupfs.join(format!("pod{uid}")));
    out.extend(
        QOS_PARENTS
            .iter()
            .map(|qos| cgroupfs.join(qos).join(format!("pod{uid}"))),
    );
    out
}

/// A pod UID is a UUID: hex digits and dashes. Anything else (a `/` or
/// `..` from a forged object) must never become part of a path.
fn is_uid(uid: &str) -> bool {
    !uid.is_empty() && uid.len() <= 64 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "6b1f0a52-3c2d-4e8f-9a7b-0c1d2e3f4a5b";
    const SYSTEMD_UID: &str = "6b1f0a52_3c2d_4e8f_9a7b_0c1d2e3f4a5b";

    /// Lays out `pod_dir` with a container and a pause cgroup below it, as
    /// kubelet and containerd do, plus a neighbour pod.
    fn kubelet_tree(pod_dir: &str) -> (tempfile::TempDir, PathBuf) {
        let root = tempfile::tempdir().expect("tempdir");
        let pod = root.path().join(pod_dir);
        std::fs::create_dir_all(pod.join("cri-containerd-0123abcd.scope")).expect("mkdir");
        std::fs::create_dir_all(pod.join("cri-containerd-pause.scope")).expect("mkdir");
        let neighbour = pod_dir.replace("6b1f0a52", "ffffffff");
        std::fs::create_dir_all(root.path().join(neighbour)).expect("mkdir");
        (root, pod)
    }

    fn finds(pod_dir: &str) {
        let (root, pod) = kubelet_tree(pod_dir);
        assert_eq!(find_pod_cgroup(root.path(), UID), Some(pod), "{pod_dir}");
    }

    #[test]
    fn systemd_driver_besteffort_and_burstable() {
        finds(&format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{SYSTEMD_UID}.slice"
        ));
        finds(&format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{SYSTEMD_UID}.slice"
        ));
    }

    #[test]
    fn systemd_driver_guaranteed() {
        finds(&format!("kubepods.slice/kubepods-pod{SYSTEMD_UID}.slice"));
    }

    #[test]
    fn cgroupfs_driver_every_qos_class() {
        finds(&format!("kubepods/besteffort/pod{UID}"));
        finds(&format!("kubepods/burstable/pod{UID}"));
        finds(&format!("kubepods/pod{UID}"));
    }

    #[test]
    fn a_pod_not_started_has_no_cgroup() {
        let (root, _) = kubelet_tree(&format!("kubepods/besteffort/pod{UID}"));
        assert_eq!(
            find_pod_cgroup(root.path(), "0000aaaa-0000-0000-0000-000000000000"),
            None
        );
    }

    #[test]
    fn a_uid_that_is_not_a_uuid_is_never_a_path() {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(root.path().join("kubepods/x")).expect("mkdir");
        assert_eq!(find_pod_cgroup(root.path(), "/../x"), None);
        assert_eq!(find_pod_cgroup(root.path(), ""), None);
    }
}
