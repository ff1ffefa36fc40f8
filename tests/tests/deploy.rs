//! End-to-end: the capabilities the DaemonSet grants
//! (`deploy/30-daemonset.yaml`) are enough. Every nodeward of the cluster
//! runs with exactly those in its bounding set (as root, like the
//! container) and still attaches, pins, redirects and hands over.
//!
//! One test in this binary: it points `NODEWARD_BIN` at a wrapper, which
//! other tests in the same process would pick up.

use std::{net::SocketAddr, os::unix::fs::PermissionsExt, path::Path, time::Duration};

use nodeward_tests::{require_root, Cluster};

const PORT: u16 = 9000;
const DAEMONSET: &str = "deploy/30-daemonset.yaml";

#[test]
fn the_daemonsets_capabilities_are_enough_to_redirect_and_take_over() {
    if !require_root("the_daemonsets_capabilities_are_enough_to_redirect_and_take_over") {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let caps = daemonset_capabilities(&root.join(DAEMONSET));
    assert!(!caps.is_empty(), "{DAEMONSET}: no capabilities added");
    let dir = std::env::temp_dir().join(format!("nw-deploy-caps-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let log = dir.join("capeff.log");
    let wrapper = confined_wrapper(&dir, &caps, &log);
    std::env::set_var("NODEWARD_BIN", &wrapper);

    let mut c = Cluster::start();
    c.serve_echo("backend", PORT);
    let to = SocketAddr::new(c.ip4("backend"), PORT);
    let r = c.call("frontend", to, 4096);
    assert_eq!(r["intact"], true, "through both proxies: {r}");
    c.start_proxy_with("node-a", &["--takeover"])
        .unwrap_or_else(|e| panic!("takeover with the DaemonSet's capabilities: {e:#}"));
    let old = c.wait_proxy_exit("node-a", 0, Duration::from_secs(20));
    assert!(old.is_some_and(|s| s.success()), "handed over: {old:?}");
    let r = c.call("frontend", to, 4096);
    assert_eq!(r["intact"], true, "after the takeover: {r}");

    // The proxies really ran with those capabilities and no others (less
    // any this machine withholds from the test itself: some sandboxes have
    // no CAP_SYS_RESOURCE, and nodeward then only warns).
    let want = format!("CapEff:\t{:016x}", mask(&caps) & own_bounding_set());
    let seen = std::fs::read_to_string(&log).expect("capability log");
    assert!(seen.lines().count() >= 3, "{seen}");
    assert!(seen.lines().all(|l| l == want), "want {want}, saw:\n{seen}");
    drop(c);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The names under `capabilities: add:` in the DaemonSet (e.g. `BPF`).
fn daemonset_capabilities(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).expect("the DaemonSet manifest");
    let mut lines = text.lines().skip_while(|l| l.trim() != "add:").skip(1);
    let mut caps = Vec::new();
    for line in lines.by_ref() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        match line.strip_prefix("- ") {
            Some(cap) => caps.push(cap.to_owned()),
            None => break,
        }
    }
    caps
}

/// A script that runs the real nodeward with only `caps` in its bounding
/// set (root keeps no others), logging its effective set to `log` first.
fn confined_wrapper(dir: &Path, caps: &[String], log: &Path) -> std::path::PathBuf {
    let real = nodeward_tests::Binaries::locate()
        .expect("nodeward binary")
        .nodeward;
    let bounding: Vec<String> = caps
        .iter()
        .map(|c| format!("+{}", c.to_lowercase()))
        .collect();
    let script = format!(
        "#!/bin/sh\nexec setpriv --bounding-set=-all,{} --inh-caps=-all -- \
         sh -c 'grep CapEff /proc/self/status >> {}; exec {} \"$@\"' nodeward \"$@\"\n",
        bounding.join(","),
        log.display(),
        real.display()
    );
    let path = dir.join("nodeward");
    std::fs::write(&path, script).expect("wrapper");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// This process's capability bounding set.
fn own_bounding_set() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .expect("CapBnd")
}

/// The capability bits of `caps` (linux/capability.h).
fn mask(caps: &[String]) -> u64 {
    caps.iter()
        .map(|c| match c.as_str() {
            "NET_ADMIN" => 12,
            "SYS_RESOURCE" => 24,
            "PERFMON" => 38,
            "BPF" => 39,
            other => panic!("add {other}'s bit to this table"),
        })
        .fold(0, |m, bit: u32| m | (1 << bit))
}
