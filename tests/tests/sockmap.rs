//! End-to-end: the sockmap fast path. The pod ⇄ proxy hop on the same node
//! is spliced through a sockhash (sock_ops + sk_msg), and every byte still
//! arrives, in order, with half-close honoured, whether the destination is
//! on this node or behind the tunnel; a client dying mid-stream wedges
//! nothing; the switch turns it off; and a stopped proxy leaves nothing.

use std::{
    fs,
    net::SocketAddr,
    time::{Duration, Instant},
};

use nodeward_tests::{require_root, Cluster, Options};

const PORT: u16 = 9000;
const SPLICED: &str = "nodeward_bpf_sockmap_spliced_sockets_total";
const FALLBACKS: &str = "nodeward_bpf_sockmap_fallbacks_total";
const ENABLED: &str = "nodeward_bpf_sockmap_enabled";
const KERNEL_FEATURE: &str = "nodeward_kernel_feature";
const ENTRIES: &str = "nodeward_bpf_map_entries";
const ACTIVE: &str = "nodeward_active_connections";
/// `BPF_MAP_TYPE_SOCKHASH` as `/proc/<pid>/fdinfo` shows it.
const SOCKHASH_TYPE: &str = "18";

/// The fast path switched on (it is off by default).
fn on() -> Options {
    Options {
        sockmap: true,
        ..Options::default()
    }
}

fn echo_cluster(options: Options) -> (Cluster, SocketAddr, SocketAddr) {
    let mut c = Cluster::start_with(options);
    c.serve_echo("cache", PORT);
    c.serve_echo("backend", PORT);
    let same = SocketAddr::new(c.ip4("cache"), PORT);
    let cross = SocketAddr::new(c.ip4("backend"), PORT);
    (c, same, cross)
}

/// Bytes a `call` of `size` gets back: the echo, then the server's
/// `#eof:<size>` trailer, written only after it read EOF.
fn echoed(size: usize) -> u64 {
    (size + format!("#eof:{size}").len()) as u64
}

fn assert_intact(r: &serde_json::Value, what: &str, size: usize) {
    assert_eq!(r["intact"], true, "{what}, {size} B: {r}");
    assert_eq!(r["received"].as_u64(), Some(echoed(size)), "{what}: {r}");
}

/// Waits until `node`'s metric is exactly `want`; returns the last value.
fn wait_metric_eq(c: &Cluster, node: &str, name: &str, labels: &[(&str, &str)], want: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = c.metric(node, name, labels);
        if v == want || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn spliced_calls_arrive_intact_same_node_and_cross_node() {
    if !require_root("spliced_calls_arrive_intact_same_node_and_cross_node") {
        return;
    }
    let (c, same, cross) = echo_cluster(on());
    assert_eq!(c.metric("node-a", ENABLED, &[]), 1.0);
    // The kernel has every optional feature the config uses.
    for feature in ["sockmap", "so_netns_cookie"] {
        let labels = [("feature", feature)];
        assert_eq!(
            c.metric("node-a", KERNEL_FEATURE, &labels),
            1.0,
            "{feature}"
        );
    }
    let mut calls = 0.0;
    for (what, to) in [("same-node", same), ("cross-node", cross)] {
        for size in [1usize, 1 << 20, 16 << 20] {
            assert_intact(&c.call("frontend", to, size), what, size);
            calls += 1.0;
        }
        // Many small paced writes: the writer half-closes only after the
        // last one, and the `#eof` trailer proves the server saw EOF after
        // every byte (no FIN overtook spliced data).
        let r = c.call_with(
            "frontend",
            to,
            1 << 20,
            &["--chunks", "64", "--pace-ms", "5"],
        );
        assert_intact(&r, what, 1 << 20);
        calls += 1.0;
    }
    // Both ends of every connection went into the sockhash...
    let spliced = c.metric("node-a", SPLICED, &[]);
    assert!(
        spliced >= 2.0 * calls,
        "spliced {spliced} for {calls} calls"
    );
    // ...and none of them had to fall back to TCP for lack of a peer,
    // except a pod sending before the proxy's end was in (rare, correct).
    let fallbacks = c.metric("node-a", FALLBACKS, &[]);
    assert!(fallbacks <= 2.0, "fallbacks {fallbacks}");
    // Closed sockets leave the sockhash on their own.
    assert_eq!(
        wait_metric_eq(&c, "node-a", ENTRIES, &[("map", "splice")], 0.0),
        0.0
    );
    assert_eq!(wait_metric_eq(&c, "node-a", ACTIVE, &[], 0.0), 0.0);
    // The destination node dials its pod itself: nothing pod-side to splice there.
    assert_eq!(c.metric("node-b", SPLICED, &[]), 0.0);
}

#[test]
fn a_client_reset_mid_stream_wedges_nothing() {
    if !require_root("a_client_reset_mid_stream_wedges_nothing") {
        return;
    }
    let (c, same, cross) = echo_cluster(on());
    let before = c.metric("node-a", SPLICED, &[]);
    for to in [same, cross] {
        for _ in 0..3 {
            let to = to.to_string();
            let args = [
                "call",
                "--to",
                &to,
                "--send",
                "4194304",
                "--abort-after",
                "524288",
            ];
            let out = std::process::Command::new(&c.bins.nw_pod)
                .arg("--netns")
                .arg(c.ns("frontend"))
                .arg("--cgroup")
                .arg(c.node_cgroup("node-a").join("frontend"))
                .args(args)
                .output()
                .expect("nw-pod");
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("\"connected\":true"), "{text}");
        }
    }
    assert!(c.metric("node-a", SPLICED, &[]) >= before + 12.0);
    // The proxy let go of every one of them...
    assert_eq!(wait_metric_eq(&c, "node-a", ACTIVE, &[], 0.0), 0.0);
    assert_eq!(wait_metric_eq(&c, "node-b", ACTIVE, &[], 0.0), 0.0);
    assert_eq!(
        wait_metric_eq(&c, "node-a", ENTRIES, &[("map", "splice")], 0.0),
        0.0
    );
    // ...and the next calls go through, spliced.
    for (what, to) in [("same-node", same), ("cross-node", cross)] {
        assert_intact(&c.call("frontend", to, 1 << 20), what, 1 << 20);
    }
}

#[test]
fn switched_off_nothing_is_spliced_and_traffic_flows() {
    if !require_root("switched_off_nothing_is_spliced_and_traffic_flows") {
        return;
    }
    let (c, same, cross) = echo_cluster(Options::default());
    for (what, to) in [("same-node", same), ("cross-node", cross)] {
        for size in [1usize, 1 << 20] {
            assert_intact(&c.call("frontend", to, size), what, size);
        }
    }
    for node in ["node-a", "node-b"] {
        assert_eq!(c.metric(node, ENABLED, &[]), 0.0, "{node}");
        assert_eq!(c.metric(node, SPLICED, &[]), 0.0, "{node}");
    }
    assert!(!c.bpffs().join("node-a/maps/NW_SPLICE").exists());
}

#[test]
fn a_stopped_proxy_leaves_no_sockhash_behind() {
    if !require_root("a_stopped_proxy_leaves_no_sockhash_behind") {
        return;
    }
    let (mut c, same, _) = echo_cluster(on());
    assert_intact(&c.call("frontend", same, 1 << 20), "same-node", 1 << 20);
    assert!(c.bpffs().join("node-a/maps/NW_SPLICE").exists());
    assert!(c.bpffs().join("node-a/links/nw_splice_ops").exists());
    let ids = sockhash_ids(c.proxy_pid("node-a"));
    assert_eq!(ids.len(), 1, "one sockhash open in the proxy: {ids:?}");
    assert!(c.stop_proxy("node-a").success());
    assert!(
        !c.bpffs().join("node-a").exists(),
        "pins removed: {:?}",
        fs::read_dir(c.bpffs()).map(|d| d.count())
    );
    // Unpinned and with no process holding it, the kernel frees the map
    // (and with it any entry) once the last program using it is gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    while map_exists(ids[0]) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!map_exists(ids[0]), "sockhash {} still exists", ids[0]);
}

#[test]
fn takeover_keeps_the_fast_path_and_tolerates_a_predecessor_without_it() {
    if !require_root("takeover_keeps_the_fast_path_and_tolerates_a_predecessor_without_it") {
        return;
    }
    // Predecessor with the fast path: the successor adopts the sockhash.
    let (mut c, same, _) = echo_cluster(on());
    c.start_proxy_with("node-a", &["--takeover"])
        .unwrap_or_else(|e| panic!("takeover: {e:#}"));
    let old = c.wait_proxy_exit("node-a", 0, Duration::from_secs(20));
    assert!(old.is_some_and(|s| s.success()), "{old:?}");
    let before = c.metric("node-a", SPLICED, &[]);
    assert_intact(
        &c.call("frontend", same, 1 << 20),
        "after takeover",
        1 << 20,
    );
    assert!(c.metric("node-a", SPLICED, &[]) >= before + 2.0);
    assert_eq!(c.metric("node-a", ENABLED, &[]), 1.0);

    // Predecessor without it: the successor (configured on) adopts the
    // rest and runs without the fast path until a fresh start.
    let (mut c, same, _) = echo_cluster(Options::default());
    let cfg = c.config_path("node-a");
    let text = fs::read_to_string(&cfg).expect("config");
    fs::write(&cfg, text.replace("enabled: false", "enabled: true")).expect("config");
    c.start_proxy_with("node-a", &["--takeover"])
        .unwrap_or_else(|e| panic!("takeover: {e:#}"));
    let old = c.wait_proxy_exit("node-a", 0, Duration::from_secs(20));
    assert!(old.is_some_and(|s| s.success()), "{old:?}");
    assert_intact(
        &c.call("frontend", same, 1 << 20),
        "after takeover",
        1 << 20,
    );
    assert_eq!(c.metric("node-a", ENABLED, &[]), 0.0);
    assert_eq!(c.metric("node-a", SPLICED, &[]), 0.0);
    assert!(c
        .proxy_log("node-a")
        .contains("sockmap fast path off: the nodeward taken over ran without it"));
}

/// Ids of the sockhash maps process `pid` holds open.
fn sockhash_ids(pid: u32) -> Vec<u32> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut ids = Vec::new();
    for e in fs::read_dir(&dir).expect("fdinfo").flatten() {
        let Ok(text) = fs::read_to_string(e.path()) else {
            continue;
        };
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
        };
        if field("map_type:").as_deref() == Some(SOCKHASH_TYPE) {
            if let Some(id) = field("map_id:").and_then(|v| v.parse().ok()) {
                ids.push(id);
            }
        }
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Whether a BPF map with this id still exists (`BPF_MAP_GET_FD_BY_ID`).
fn map_exists(id: u32) -> bool {
    const BPF_MAP_GET_FD_BY_ID: nix::libc::c_long = 14;
    // bpf_attr for this command: map_id, next_id, open_flags (all u32),
    // padded as the kernel's union is.
    let mut attr = [0u32; 32];
    attr[0] = id;
    // SAFETY: `attr` is a zeroed buffer larger than the kernel reads for
    // this command and lives for the whole call; the result is an fd we
    // own (closed at once) or -1.
    #[expect(unsafe_code, reason = "no bpf(2) wrapper in the test crate")]
    let (fd, err) = unsafe {
        let fd = nix::libc::syscall(
            nix::libc::SYS_bpf,
            BPF_MAP_GET_FD_BY_ID,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        );
        let err = std::io::Error::last_os_error();
        if fd >= 0 {
            nix::libc::close(fd as i32);
        }
        (fd, err)
    };
    fd >= 0 || err.raw_os_error() != Some(nix::libc::ENOENT)
}
