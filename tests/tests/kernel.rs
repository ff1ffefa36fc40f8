//! End-to-end: `nodeward probe` on this kernel. Every program nodeward uses
//! is loaded and attached for real to a throwaway cgroup, and the probe
//! leaves nothing behind. The netns-cookie fallback for kernels without
//! `SO_NETNS_COOKIE` (the BPF learner) is checked against the socket
//! option, in the root network namespace and in a fresh one. `cargo xtask
//! vm-test` runs the same probe on other kernels.

use std::process::{Command, Output};

use nodeward_tests::{cgroup2_mount, require_root, Binaries};
use serde_json::Value;

/// Runs `nodeward probe --format json`, through `prefix` (e.g. `unshare
/// --net`); returns the child's pid, the parsed report and the output.
fn probe(prefix: &[&str]) -> (u32, Value, Output) {
    let bins = Binaries::locate().expect("binaries built");
    let mut cmd = match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(&bins.nodeward);
            c
        }
        None => Command::new(&bins.nodeward),
    };
    let child = cmd
        .args(["probe", "--format", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn nodeward probe");
    let pid = child.id();
    let out = child.wait_with_output().expect("nodeward probe");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "probe printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (pid, report, out)
}

fn feature<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["features"]
        .as_array()
        .and_then(|fs| fs.iter().find(|f| f["feature"] == name))
        .unwrap_or_else(|| panic!("no feature {name} in {report:#}"))
}

fn assert_available(report: &Value, names: &[&str]) {
    for name in names {
        let f = feature(report, name);
        assert_eq!(f["available"], true, "{name}: {f:#}");
    }
}

/// Every feature the probe knows, required and optional.
const ALL: &[&str] = &[
    "connect4",
    "connect6",
    "sock_ops",
    "cgroup_skb",
    "netns_cookie",
    "so_netns_cookie",
    "link_pinning",
    "sockmap",
    "tcp_migrate_req",
];

/// `major.minor` of a release such as `5.10.0-32-amd64`.
fn version(release: &str) -> (u32, u32) {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let mut next = || parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (next(), next())
}

/// The features this kernel must have: every one upstream Linux had by
/// its release (`cargo xtask vm-test` runs this on older kernels too).
fn expected(report: &Value) -> Vec<&'static str> {
    let running = version(report["kernel"].as_str().unwrap_or_default());
    ALL.iter()
        .copied()
        .filter(|name| version(feature(report, name)["since"].as_str().unwrap_or("99")) <= running)
        .collect()
}

#[test]
fn probe_finds_every_feature_on_this_kernel_and_leaves_nothing_behind() {
    if !require_root("probe_finds_every_feature_on_this_kernel_and_leaves_nothing_behind") {
        return;
    }
    let (pid, report, out) = probe(&[]);
    assert!(out.status.success(), "{report:#}");
    assert_eq!(report["supported"], true, "{report:#}");
    assert_available(&report, &expected(&report));
    let required: Vec<_> = report["features"]
        .as_array()
        .expect("features")
        .iter()
        .filter(|f| f["required"] == true)
        .map(|f| f["feature"].as_str().unwrap_or_default().to_owned())
        .collect();
    for name in [
        "connect4",
        "connect6",
        "sock_ops",
        "cgroup_skb",
        "netns_cookie",
    ] {
        assert!(
            required.iter().any(|r| r == name),
            "{name} required: {required:?}"
        );
    }
    let mount = cgroup2_mount().expect("cgroup2 mount");
    let scratch = mount.join(format!("nodeward-probe-{pid}"));
    assert!(!scratch.exists(), "{} left behind", scratch.display());
    let pin = std::path::Path::new("/sys/fs/bpf").join(format!("nodeward-probe-{pid}"));
    assert!(!pin.exists(), "{} left behind", pin.display());
}

#[test]
fn learned_netns_cookie_matches_so_netns_cookie_in_a_fresh_namespace() {
    if !require_root("learned_netns_cookie_matches_so_netns_cookie_in_a_fresh_namespace") {
        return;
    }
    // A new network namespace of its own (gone when the probe exits): the
    // learner must report that namespace's cookie, not the host's.
    let (_, report, out) = probe(&["unshare", "--net"]);
    assert!(out.status.success(), "{report:#}");
    // Where the kernel has SO_NETNS_COOKIE the probe checks the learned
    // cookie against it (elsewhere redirect.rs's proxy-namespace test
    // checks it by behaviour).
    let mut wanted = vec!["netns_cookie"];
    if version(report["kernel"].as_str().unwrap_or_default()) >= (5, 14) {
        wanted.push("so_netns_cookie");
    }
    assert_available(&report, &wanted);
}

#[test]
fn versions_are_read_from_distribution_releases() {
    assert_eq!(version("5.10.0-32-amd64"), (5, 10));
    assert_eq!(version("6.12.117+deb13-amd64"), (6, 12));
    assert_eq!(version("6.18.44-fc-v1272"), (6, 18));
    assert_eq!(version("5.7"), (5, 7));
}

#[test]
fn table_names_every_feature_and_the_verdict() {
    if !require_root("table_names_every_feature_and_the_verdict") {
        return;
    }
    let bins = Binaries::locate().expect("binaries built");
    let out = Command::new(&bins.nodeward)
        .arg("probe")
        .output()
        .expect("nodeward probe");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let (_, report, _) = probe(&[]);
    for name in expected(&report) {
        assert!(
            text.lines()
                .any(|l| l.starts_with(name) && l.contains(" yes ")),
            "{name} not reported available:\n{text}"
        );
    }
    assert!(text.contains("nodeward can run on this kernel"), "{text}");
}
