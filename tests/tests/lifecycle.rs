//! End-to-end: the proxy's lifecycle. An upgrade takes over without
//! refusing a connection, a second instance never starts by accident, and
//! SIGTERM drains open connections up to the deadline.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use nodeward_tests::{finish_tool, require_root, wait_for, Cluster, Options};

const PORT: u16 = 9000;

#[test]
fn a_takeover_under_a_steady_stream_of_new_connections_refuses_none() {
    if !require_root("a_takeover_under_a_steady_stream_of_new_connections_refuses_none") {
        return;
    }
    let mut c = Cluster::start();
    c.serve_echo("backend", PORT);
    c.serve_echo("cache", PORT);
    let count = 400;
    // Cross-node (tunnel) and same-node streams, 10 ms apart: several
    // seconds of new connections spanning the whole takeover.
    let remote = c.spawn_call_stream(
        "frontend",
        SocketAddr::new(c.ip4("backend"), PORT),
        count,
        10,
    );
    let local = c.spawn_call_stream("frontend", SocketAddr::new(c.ip4("cache"), PORT), count, 10);
    std::thread::sleep(Duration::from_millis(500));
    c.start_proxy_with("node-a", &["--takeover"])
        .unwrap_or_else(|e| panic!("takeover: {e:#}"));
    let old = c.wait_proxy_exit("node-a", 0, Duration::from_secs(20));
    assert!(
        old.is_some_and(|s| s.success()),
        "the old proxy drains and exits: {old:?}"
    );
    for (what, child) in [("cross-node", remote), ("same-node", local)] {
        let r = finish_tool(child);
        if r["intact"] != count as u64 {
            // Both instances log to the same file: what did they refuse or fail?
            let log = c.proxy_log("node-a");
            let noted: Vec<&str> = log
                .lines()
                .filter(|l| {
                    ["WARN", "ERROR", "refused", "failed", "reset"]
                        .iter()
                        .any(|w| l.contains(w))
                })
                .collect();
            panic!(
                "{what}: {r}\nnode-a log, warnings and refusals:\n{}",
                noted.join("\n")
            );
        }
    }
    let log = c.proxy_log("node-a");
    assert!(log.contains("adopting the pinned BPF programs"), "{log}");
    assert!(log.contains("handed over to a new nodeward"), "{log}");
    // The successor owns the redirect now.
    assert_eq!(
        c.call("frontend", SocketAddr::new(c.ip4("backend"), PORT), 1000)["intact"],
        true
    );
    assert!(
        c.bpffs().join("node-a/links/nw_connect4").exists(),
        "programs stay pinned"
    );
}

/// A takeover on the destination's node: the old proxy's tunnel
/// connections end with GOAWAY, the source proxy's pool opens new streams
/// on connections to the successor, and no cross-node call is refused.
/// Also run with each node in its own VM (`cargo xtask vm-test --nodes 2`).
#[test]
fn a_takeover_on_the_destination_node_refuses_no_tunnelled_connection() {
    if !require_root("a_takeover_on_the_destination_node_refuses_no_tunnelled_connection") {
        return;
    }
    let mut c = Cluster::start();
    c.serve_echo("backend", PORT);
    let count = 300;
    let calls = c.spawn_call_stream(
        "frontend",
        SocketAddr::new(c.ip4("backend"), PORT),
        count,
        10,
    );
    std::thread::sleep(Duration::from_millis(500));
    c.start_proxy_with("node-b", &["--takeover"])
        .unwrap_or_else(|e| panic!("takeover: {e:#}"));
    let old = c.wait_proxy_exit("node-b", 0, Duration::from_secs(30));
    let r = finish_tool(calls);
    assert_eq!(
        r["intact"],
        count as u64,
        "{r}\nnode-a log:\n{}\nnode-b log:\n{}",
        c.proxy_log("node-a"),
        c.proxy_log("node-b")
    );
    assert!(
        old.is_some_and(|s| s.success()),
        "the old proxy drains and exits: {old:?}"
    );
    let log = c.proxy_log("node-b");
    assert!(log.contains("handed over to a new nodeward"), "{log}");
}

/// The window a takeover must not lose anything in: connections the old
/// proxy's listeners have completed but not yet accepted when it closes
/// them. The old proxy is frozen (SIGSTOP) while pods connect, so every
/// connection waits in its accept queue; it resumes only once the successor
/// is bound and asking, with the queue still full. None may be reset: the
/// old proxy takes what is queued before it closes its listeners (on Linux
/// before 5.14, which has no `tcp_migrate_req`, a close resets them), and
/// with `tcp_migrate_req` the kernel moves any it left to the successor.
#[test]
fn connections_queued_on_the_old_proxy_at_a_takeover_move_to_the_new_one() {
    if !require_root("connections_queued_on_the_old_proxy_at_a_takeover_move_to_the_new_one") {
        return;
    }
    let mut c = Cluster::start_with(Options {
        drain_deadline: "15s",
        ..Options::default()
    });
    c.serve_echo("backend", PORT);
    c.serve_echo("cache", PORT);
    let (old, callers) = queue_calls_on_a_frozen_proxy(&c, &["backend", "cache"], 40);
    let resumed = std::thread::spawn(move || {
        // Time for the successor to bind, adopt and ask (it waits up to
        // 15 s for the answer).
        std::thread::sleep(Duration::from_secs(4));
        nix::sys::signal::kill(old, nix::sys::signal::Signal::SIGCONT).expect("SIGCONT");
    });
    let started = c.start_proxy_with("node-a", &["--takeover"]);
    resumed.join().expect("resume");
    started.unwrap_or_else(|e| panic!("takeover: {e:#}"));
    none_lost_and_the_old_proxy_exits(&mut c, callers);
    let log = c.proxy_log("node-a");
    assert!(log.contains("handed over to a new nodeward"), "{log}");
}

/// A plain stop (SIGTERM, no successor to migrate to) relays the
/// connections already waiting in the proxy's accept queue instead of
/// resetting them when its listener closes. The proxy is frozen while pods
/// connect, so the kernel queues them; the stop is delivered while it is
/// frozen and acts as soon as it resumes.
#[test]
fn a_stop_relays_the_connections_already_queued() {
    if !require_root("a_stop_relays_the_connections_already_queued") {
        return;
    }
    let mut c = Cluster::start_with(Options {
        drain_deadline: "15s",
        ..Options::default()
    });
    c.serve_echo("cache", PORT);
    let (old, callers) = queue_calls_on_a_frozen_proxy(&c, &["cache"], 20);
    c.signal_proxy("node-a", 0);
    nix::sys::signal::kill(old, nix::sys::signal::Signal::SIGCONT).expect("SIGCONT");
    none_lost_and_the_old_proxy_exits(&mut c, callers);
}

/// Freezes node-a's first proxy (SIGSTOP) and starts `per_target` calls
/// from frontend to each of `targets`; returns once the kernel has
/// completed their handshakes, so they wait in the frozen proxy's accept
/// queue. The proxy's pid and the calls.
fn queue_calls_on_a_frozen_proxy(
    c: &Cluster,
    targets: &[&str],
    per_target: usize,
) -> (nix::unistd::Pid, Vec<std::process::Child>) {
    let old = nix::unistd::Pid::from_raw(c.proxy_pid("node-a") as i32);
    nix::sys::signal::kill(old, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
    let callers = targets
        .iter()
        .flat_map(|pod| std::iter::repeat_n(*pod, per_target))
        .map(|pod| c.spawn_call_stream("frontend", SocketAddr::new(c.ip4(pod), PORT), 1, 0))
        .collect();
    // Connected (the kernel completes the handshakes), none accepted.
    std::thread::sleep(Duration::from_secs(2));
    (old, callers)
}

/// Every one of `callers` (one call each) came back intact, and node-a's
/// first proxy exited cleanly.
fn none_lost_and_the_old_proxy_exits(c: &mut Cluster, callers: Vec<std::process::Child>) {
    let count = callers.len();
    let lost: Vec<String> = callers
        .into_iter()
        .map(finish_tool)
        .filter(|r| r["intact"] != true)
        .map(|r| r.to_string())
        .collect();
    let exited = c.wait_proxy_exit("node-a", 0, Duration::from_secs(30));
    assert!(
        lost.is_empty(),
        "{} of {count} queued connections lost: {lost:?}\nnode-a log:\n{}",
        lost.len(),
        c.proxy_log("node-a")
    );
    assert!(exited.is_some_and(|s| s.success()), "{exited:?}");
}

/// From the moment a successor binds, every new connection goes to it: the
/// old proxy's listener gets none that could race its close (a handshake
/// completing just as a listener closes is reset, whatever
/// `tcp_migrate_req` says). Checked with the old proxy frozen (SIGSTOP):
/// calls made once the successor has bound complete while the old one
/// still cannot accept anything.
#[test]
fn a_successor_takes_every_new_connection_from_the_moment_it_binds() {
    if !require_root("a_successor_takes_every_new_connection_from_the_moment_it_binds") {
        return;
    }
    let mut c = Cluster::start_with(Options {
        drain_deadline: "15s",
        ..Options::default()
    });
    c.serve_echo("backend", PORT);
    c.serve_echo("cache", PORT);
    let old = nix::unistd::Pid::from_raw(c.proxy_pid("node-a") as i32);
    let log = c.ca_dir().parent().expect("cluster dir").join("node-a.log");
    let call = |pod: &str| {
        let mut cmd = std::process::Command::new(&c.bins.nw_pod);
        cmd.arg("--netns")
            .arg(c.ns("frontend"))
            .arg("--cgroup")
            .arg(c.cgroup_of("frontend"))
            .args([
                "call",
                "--to",
                &format!("{}:{PORT}", c.ip4(pod)),
                "--send",
                "200",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        cmd
    };
    let calls: Vec<_> = ["backend", "cache"]
        .iter()
        .flat_map(|pod| std::iter::repeat_n(*pod, 20))
        .map(call)
        .collect();
    nix::sys::signal::kill(old, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
    let frozen = std::thread::spawn(move || {
        // The successor logs this once its listeners are bound.
        let bound = wait_for(
            &log,
            "adopting the pinned BPF programs",
            Duration::from_secs(30),
        );
        let outcome = bound.map(|()| calls_while_frozen(calls));
        nix::sys::signal::kill(old, nix::sys::signal::Signal::SIGCONT).expect("SIGCONT");
        outcome
    });
    let started = c.start_proxy_with("node-a", &["--takeover"]);
    let outcome = frozen.join().expect("calls");
    started.unwrap_or_else(|e| panic!("takeover: {e:#}"));
    let (done, unfinished) = outcome.unwrap_or_else(|e| panic!("successor: {e:#}"));
    assert_eq!(
        unfinished, 0,
        "calls left to the frozen old proxy (done: {done:?})"
    );
    assert!(done.iter().all(|r| r["intact"] == true), "{done:?}");
    let exited = c.wait_proxy_exit("node-a", 0, Duration::from_secs(30));
    assert!(exited.is_some_and(|s| s.success()), "{exited:?}");
}

/// Runs `calls` together, gives them 10 s, kills what is left; the reports
/// of those that finished and how many did not.
fn calls_while_frozen(calls: Vec<std::process::Command>) -> (Vec<serde_json::Value>, usize) {
    let mut running: Vec<_> = calls
        .into_iter()
        .map(|mut cmd| cmd.spawn().expect("spawn nw-pod"))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline
        && running
            .iter_mut()
            .any(|child| child.try_wait().ok().flatten().is_none())
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut done = Vec::new();
    let mut unfinished = 0;
    for mut child in running {
        if child.try_wait().ok().flatten().is_none() {
            unfinished += 1;
            let _ = child.kill();
            let _ = child.wait();
            continue;
        }
        done.push(finish_tool(child));
    }
    (done, unfinished)
}

#[test]
fn a_second_instance_refuses_to_start_unless_asked_to_take_over() {
    if !require_root("a_second_instance_refuses_to_start_unless_asked_to_take_over") {
        return;
    }
    let c = Cluster::start();
    let (code, out) = c.run_proxy_to_exit("node-a", &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("--takeover"), "{out}");
    // The running one is unaffected.
    let mut c = c;
    c.serve_echo("cache", PORT);
    assert_eq!(
        c.call("frontend", SocketAddr::new(c.ip4("cache"), PORT), 100)["intact"],
        true
    );
}

#[test]
fn sigterm_drains_open_connections_until_the_deadline() {
    if !require_root("sigterm_drains_open_connections_until_the_deadline") {
        return;
    }
    let mut c = Cluster::start_with(Options {
        drain_deadline: "3s",
        ..Options::default()
    });
    c.serve_echo("backend", PORT);
    let to = SocketAddr::new(c.ip4("backend"), PORT);
    // The pooled tunnel first: in a 5.10 guest under TCG without an
    // entropy device the first tunnel took ~13 s to open, longer than the
    // short call lasts.
    assert_eq!(c.call("frontend", to, 100)["intact"], true, "warm-up call");
    let opened = |c: &Cluster| c.metric("node-a", "nodeward_connections_opened_total", &[]);
    let before = opened(&c);
    let (short, long) = std::thread::scope(|s| {
        // 1.5 s of writes: finishes inside the deadline.
        let short =
            s.spawn(|| c.call_with("frontend", to, 3000, &["--chunks", "3", "--pace-ms", "500"]));
        // 8 s of writes: still open at the deadline.
        let long = s.spawn(|| {
            c.call_with(
                "frontend",
                to,
                8000,
                &["--chunks", "16", "--pace-ms", "500"],
            )
        });
        // Both relayed before the stop (a fixed pause was too short for a
        // slow guest: a call still connecting then met a stopped proxy).
        // A counter, not the active gauge: the short call may be over by
        // the time it is read.
        let relayed = c.wait_metric(
            "node-a",
            "nodeward_connections_opened_total",
            &[],
            before + 2.0,
            Duration::from_secs(60),
        );
        assert!(
            relayed >= before + 2.0,
            "calls relayed before the stop\nnode-a log:\n{}\nnode-b log:\n{}",
            c.proxy_log("node-a"),
            c.proxy_log("node-b")
        );
        c.signal_proxy("node-a", 0);
        (short.join().expect("short"), long.join().expect("long"))
    });
    assert_eq!(short["intact"], true, "finished while draining: {short}");
    assert_eq!(long["intact"], false, "cut at the deadline: {long}");
    // Reset, not closed: a FIN would make the cut transfer look complete
    // to a client that reads until end of stream.
    assert!(
        long["read_error"]
            .as_str()
            .is_some_and(|e| e.contains("reset")),
        "the cut connection ended without a reset: {long}"
    );
    let exited = c.wait_proxy_exit("node-a", 0, Duration::from_secs(10));
    assert!(exited.is_some_and(|s| s.success()), "{exited:?}");
    let log = c.proxy_log("node-a");
    assert!(log.contains("drain deadline reached"), "{log}");
}

/// Port 8080 of the cache is judged per request, so its connections are
/// served as HTTP by the proxy.
const CACHE_HTTP: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: cache-http, namespace: shop}
spec:
  selector: {matchLabels: {app: cache}}
  action: ALLOW
  rules:
  - to: [{operation: {ports: ['8080'], paths: ['/*']}}]
";

/// A drain winds HTTP keep-alive connections down without losing a
/// request: the next response says `Connection: close`, then the proxy
/// closes the connection, long before the deadline.
#[test]
fn a_drain_tells_http_keep_alive_clients_to_close() {
    if !require_root("a_drain_tells_http_keep_alive_clients_to_close") {
        return;
    }
    let mut c = Cluster::start_with(Options {
        drain_deadline: "8s",
        ..Options::with_policies(&[("cache-http.yaml", CACHE_HTTP)])
    });
    c.serve_http("cache", 8080);
    let to = SocketAddr::new(c.ip4("cache"), 8080);
    let requests = ["GET /a", "GET /b", "GET /c"];
    let calls = std::thread::scope(|s| {
        let calls = s.spawn(|| c.http_calls_paced("frontend", to, &requests, 1500));
        // Stop once the first request went through the proxy.
        let deadline = Instant::now() + Duration::from_secs(5);
        while c.metric("node-a", "nodeward_http_requests_total", &[]) < 1.0
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        c.signal_proxy("node-a", 0);
        calls.join().expect("calls")
    });
    assert_eq!(calls["statuses"][0], 200, "{calls}");
    assert!(calls["headers"][0]["connection"].is_null(), "{calls}");
    assert_eq!(
        calls["statuses"][1], 200,
        "a request during the drain: {calls}"
    );
    assert_eq!(calls["headers"][1]["connection"], "close", "{calls}");
    assert_ne!(
        calls["statuses"][2], 200,
        "kept alive through the drain: {calls}"
    );
    let exited = c.wait_proxy_exit("node-a", 0, Duration::from_secs(10));
    assert!(exited.is_some_and(|s| s.success()), "{exited:?}");
}

#[test]
fn a_takeover_applies_the_new_configs_mesh_cidrs() {
    if !require_root("a_takeover_applies_the_new_configs_mesh_cidrs") {
        return;
    }
    let mut c = Cluster::start();
    c.serve_echo_on_node("node-b", PORT);
    // node-b's bridge address is inside the IPv6 mesh CIDR: captured, and
    // refused by the proxy, since it is no workload or Service (fail closed).
    let node_b6 = SocketAddr::new("fd00:20:2::1".parse().expect("ip"), PORT);
    let v6 = [("family", "ipv6")];
    assert_ne!(c.call("frontend", node_b6, 100)["intact"], true);
    let before = c.metric("node-a", "nodeward_bpf_redirects_total", &v6);
    assert!(before >= 1.0, "captured before the takeover");
    let unknown = [("reason", "unknown_destination")];
    assert_eq!(
        c.metric("node-a", "nodeward_outbound_refused_total", &unknown),
        1.0
    );
    // The successor's config drops the IPv6 mesh CIDR.
    let path = c.config_path("node-a");
    let cfg = std::fs::read_to_string(&path).expect("config");
    let dropped = cfg.replace(", 'fd00:20::/32'", "");
    assert_ne!(cfg, dropped, "the config lists the IPv6 CIDR");
    std::fs::write(&path, dropped).expect("write config");
    c.start_proxy_with("node-a", &["--takeover"])
        .unwrap_or_else(|e| panic!("takeover: {e:#}"));
    // Not captured any more: straight to node-b.
    assert_eq!(c.call("frontend", node_b6, 100)["intact"], true);
    let after = c.metric("node-a", "nodeward_bpf_redirects_total", &v6);
    assert_eq!(after, before, "no longer captured after the takeover");
}
