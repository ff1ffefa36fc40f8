//! `cargo xtask demo`: the two-node netns cluster with real node proxies,
//! some traffic between pods, and a table of what went through each proxy.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::{bail, Result};
use nix::sys::signal::{SigSet, Signal};
use nodeward_tests::{print_flush, standard_pods, teardown, Cluster, Options, PodSpec, ADMIN_PORT};
use serde_json::Value;

const PREFIX: &str = "nw-demo";
const PORT: u16 = 9000;
const HTTP_PORT: u16 = 8080;

fn main() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the demo needs root: it creates network namespaces, cgroups and BPF links");
    }
    // Block the stop signals before any thread starts, then wait for them below.
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGINT);
    stop.add(Signal::SIGTERM);
    stop.thread_block()?;
    clean_stale_demo()?;
    let policies = std::env::var_os("NW_DEMO_POLICIES").map(PathBuf::from);
    let options = Options {
        policy_link: policies.clone(),
        ..Options::default()
    };
    let mut pods = standard_pods();
    pods.push(PodSpec {
        name: "ops-tool",
        namespace: "ops",
        service_account: "ops-tool",
        node: "node-a",
        host: 12,
    });
    let mut c = Cluster::start_with_prefix(PREFIX, pods, options)?;
    for pod in ["backend", "cache", "db"] {
        c.serve_echo(pod, PORT);
    }
    c.serve_http("backend", HTTP_PORT);
    tcp_calls(&c);
    http_calls(&c);
    rate_limited_calls(&c);
    std::thread::sleep(std::time::Duration::from_millis(300));
    for node in ["node-a", "node-b"] {
        print_flush(&table(node, &c.access_log(node)));
        print_flush(&decisions(node, &c.audit_log(node)));
    }
    println!(
        "\nnetns: {0}-node-a {0}-node-b {0}-<pod>; logs in /tmp/{0}",
        PREFIX
    );
    if let Some(dir) = &policies {
        println!(
            "policies: {} (edit it: changes apply within 2 s; `nodeward policy check` it first)",
            dir.display()
        );
    }
    println!(
        "metrics: target/release/nw-pod --netns {PREFIX}-node-b http-get --addr 127.0.0.1:{ADMIN_PORT} --path /metrics | grep nodeward_ratelimit \
         (also /ready, /config_dump, /logging?level=debug)"
    );
    println!(
        "try a call: target/release/nw-pod --netns {PREFIX}-frontend --cgroup {} http-requests --to {}:{HTTP_PORT} --request 'GET /api/items'",
        c.node_cgroup("node-a").join("frontend").display(),
        c.ip4("backend"),
    );
    print_flush("demo ready\n");
    let sig = stop.wait()?;
    println!("{sig:?}: tearing down");
    drop(c);
    Ok(())
}

/// Plain TCP calls: allowed and denied by the example policies.
fn tcp_calls(c: &Cluster) {
    let calls: [(&str, SocketAddr, usize); 5] = [
        ("backend", SocketAddr::new(c.ip4("db"), PORT), 65536),
        ("frontend", SocketAddr::new(c.ip4("cache"), PORT), 4096),
        ("backend", SocketAddr::new(c.ip4("cache"), PORT), 100),
        ("frontend", SocketAddr::new(c.ip4("db"), PORT), 100),
        ("cache", SocketAddr::new(c.ip6("db"), PORT), 100),
    ];
    for (from, to, bytes) in calls {
        let r = c.call(from, to, bytes);
        let outcome = if r["intact"] == true {
            "allowed, intact"
        } else {
            "refused"
        };
        println!("{from:>9} -> {to:<24} {bytes:>8} bytes  {outcome}");
    }
    let bypass = c.call_bypassing_proxy("frontend", SocketAddr::new(c.ip4("backend"), PORT), 10);
    println!(
        "{:>9} -> {:<24} bypassing the proxies: connected={} (STRICT drops it)",
        "frontend",
        SocketAddr::new(c.ip4("backend"), PORT).to_string(),
        bypass["connected"]
    );
}

/// HTTP requests on backend's API port, judged one by one.
fn http_calls(c: &Cluster) {
    let to = SocketAddr::new(c.ip4("backend"), HTTP_PORT);
    for (from, requests) in [
        (
            "frontend",
            &[
                "GET /api/items",
                "POST /api/items",
                "GET /admin",
                "GET /api/../admin",
            ][..],
        ),
        ("ops-tool", &["GET /admin/stats"][..]),
    ] {
        let r = c.http_calls(from, to, requests);
        for (i, req) in requests.iter().enumerate() {
            let status = &r["statuses"][i];
            println!("{from:>9} -> {to:<24} {req:<22} HTTP {status}");
        }
    }
}

/// A burst over the example's request limit (5 per caller, then 5/s).
fn rate_limited_calls(c: &Cluster) {
    let to = SocketAddr::new(c.ip4("backend"), HTTP_PORT);
    let burst = ["GET /api/items"; 8];
    let r = c.http_calls("frontend", to, &burst);
    let statuses: Vec<String> = r["statuses"]
        .as_array()
        .map(|a| a.iter().map(ToString::to_string).collect())
        .unwrap_or_default();
    println!(
        " frontend -> {to:<24} 8 x GET /api/items, one connection: HTTP {}",
        statuses.join(" ")
    );
    if let Some(h) = r["headers"]
        .as_array()
        .and_then(|hs| hs.iter().find(|h| h["retry-after"].is_string()))
    {
        println!(
            "           429: Retry-After {} s, x-ratelimit-limit {}, x-ratelimit-remaining {}",
            h["retry-after"].as_str().unwrap_or("-"),
            h["x-ratelimit-limit"].as_str().unwrap_or("-"),
            h["x-ratelimit-remaining"].as_str().unwrap_or("-"),
        );
    }
}

/// The audit records of one node proxy, as a table.
fn decisions(node: &str, records: &[Value]) -> String {
    let mut out = format!("\nauthorization and rate-limit decisions at {node}\n");
    out += &format!(
        "{:<44} {:<14} {:>5} {:<24} {:<8} {}\n",
        "CALLER", "DESTINATION", "PORT", "REQUEST", "DECISION", "POLICY / REASON"
    );
    for r in records {
        let s = |k: &str| r[k].as_str().unwrap_or("-").to_owned();
        let request = match (r["method"].as_str(), r["path"].as_str()) {
            (Some(m), Some(p)) => format!("{m} {p}"),
            _ => "(connection)".to_owned(),
        };
        let why = r["policy"]
            .as_str()
            .map_or_else(|| s("reason"), str::to_owned);
        // A rate limit's refusal is not an authorization deny.
        let decision = match r["kind"].as_str() {
            Some("ratelimit") => "limited".to_owned(),
            _ => s("decision"),
        };
        out += &format!(
            "{:<44} {:<14} {:>5} {request:<24} {decision:<8} {why}\n",
            s("source_principal"),
            s("destination"),
            r["port"],
        );
    }
    out
}

fn table(node: &str, records: &[Value]) -> String {
    let mut out = format!("\nnode proxy {node}\n");
    out += &format!(
        "{:<44} {:<22} {:<14} {:>9} {:>9}  {}\n",
        "CALLER", "ORIGINAL DST", "DESTINATION", "SENT", "RECEIVED", "RESULT"
    );
    for r in records {
        let s = |k: &str| r[k].as_str().unwrap_or("-").to_owned();
        let n = |k: &str| r[k].as_u64().map_or("-".to_owned(), |v| v.to_string());
        let (caller, result) = match s("event").as_str() {
            "connection" => (s("source"), format!("relayed ({})", s("path"))),
            "inbound" => (
                s("source_principal"),
                format!("from tunnel ({})", s("source_node")),
            ),
            "refused" => (s("peer"), format!("refused ({})", s("reason"))),
            "connect_failed" => (s("source"), format!("failed ({})", s("reason"))),
            "denied" => (s("source"), "denied by policy".to_owned()),
            // Shown with the caller's identity in the decisions table.
            "stream_refused" => continue,
            "request" => (
                s("source_principal"),
                format!(
                    "HTTP {} {} -> {} (rate limit: {})",
                    s("method"),
                    s("path"),
                    r["status"],
                    s("rate_limit")
                ),
            ),
            other => (s("source"), other.to_owned()),
        };
        out += &format!(
            "{caller:<44} {:<22} {:<14} {:>9} {:>9}  {result}\n",
            s("orig_dst"),
            s("destination"),
            n("bytes_sent"),
            n("bytes_received")
        );
    }
    out
}

/// Removes what an earlier demo left, unless that demo is still running.
fn clean_stale_demo() -> Result<()> {
    let owner = std::env::temp_dir().join(PREFIX).join("owner");
    if let Ok(pid) = std::fs::read_to_string(&owner) {
        if Path::new(&format!("/proc/{}", pid.trim())).exists()
            && pid.trim() != std::process::id().to_string()
        {
            bail!("another demo (pid {}) is running", pid.trim());
        }
    }
    let netns = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()?;
    let names: Vec<String> = String::from_utf8_lossy(&netns.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("{PREFIX}-")))
        .map(str::to_owned)
        .collect();
    teardown(&nodeward_tests::cgroup2_mount()?.join(PREFIX), &names);
    nodeward_tests::release_mounts(&std::env::temp_dir().join(PREFIX));
    Ok(())
}
