//! `cargo xtask demo`: the two-node netns cluster with real node proxies,
//! some traffic between pods, and a table of what went through each proxy.
//!
//! `nw-demo up` runs it until SIGINT, SIGTERM or SIGHUP, then tears it down;
//! `nw-demo down` stops a running demo (its pid is in `/tmp/<prefix>/owner`)
//! or removes what a dead one left; `nw-demo exec POD -- CMD` runs CMD as a
//! pod of the running demo (in its cgroup, then its netns). Every name
//! starts with the prefix `nw-demo`, or `NW_DEMO_PREFIX` (for tests).

use std::{
    net::SocketAddr,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use nix::{
    sys::signal::{kill, SigSet, Signal},
    unistd::Pid,
};
use nodeward_tests::jwt::{unix_now, JwtSigner, DEMO_ISSUER};
use nodeward_tests::{
    cgroup2_mount, join, print_flush, standard_pods, sweep_prefix, Cluster, Options, PodSpec,
    ADMIN_PORT,
};
use serde_json::{json, Value};

const PORT: u16 = 9000;
const HTTP_PORT: u16 = 8080;
/// The demo Service's VIP, inside the mesh CIDRs.
const SERVICE_VIP: &str = "10.20.200.10";
/// How long `down` waits for a running demo to tear itself down (each
/// proxy drains for up to 2 s; a stuck one is killed after 10 s).
const DOWN_WAIT: Duration = Duration::from_secs(60);

#[derive(Parser)]
#[command(about = "The two-node demo cluster")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the demo and run it until SIGINT, SIGTERM or SIGHUP.
    Up {
        /// Copy the policy files of this directory to the demo's own
        /// directory and run the mesh under the copies.
        #[arg(long, conflicts_with = "policies")]
        examples: Option<PathBuf>,
        /// Run the mesh under this directory itself (edits reload live).
        #[arg(long)]
        policies: Option<PathBuf>,
    },
    /// Stop the running demo, or remove what a dead one left.
    Down,
    /// Run a command as a pod of the running demo (its cgroup, then its
    /// netns), or in a node's netns (node-a, node-b).
    Exec {
        /// A pod (frontend, cache, backend, db, ops-tool) or a node.
        pod: String,
        #[arg(trailing_var_arg = true, required = true, allow_hyphen_values = true)]
        argv: Vec<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if !nix::unistd::geteuid().is_root() {
        bail!("the demo needs root: it creates network namespaces, cgroups and BPF links");
    }
    let prefix = std::env::var("NW_DEMO_PREFIX").unwrap_or_else(|_| "nw-demo".to_owned());
    if prefix.is_empty()
        || !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        bail!("NW_DEMO_PREFIX must be letters, digits and '-', not {prefix:?}");
    }
    match cli.command {
        Cmd::Up { examples, policies } => up(&prefix, examples, policies),
        Cmd::Down => down(&prefix),
        Cmd::Exec { pod, argv } => exec(&prefix, &pod, &argv),
    }
}

/// The demo's pods: the standard four and an ops tool.
fn demo_pods() -> Vec<PodSpec> {
    let mut pods = standard_pods();
    pods.push(PodSpec {
        name: "ops-tool",
        namespace: "ops",
        service_account: "ops-tool",
        node: "node-a",
        host: 12,
    });
    pods
}

fn up(prefix: &str, examples: Option<PathBuf>, policies: Option<PathBuf>) -> Result<()> {
    // Block the stop signals before any thread starts, then wait for them below.
    let mut stop = SigSet::empty();
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        stop.add(sig);
    }
    stop.thread_block()?;
    if let Some(pid) = running_demo(prefix) {
        bail!("a demo is already running (pid {pid}): stop it with `cargo xtask demo --down`");
    }
    // A demo whose owner died left its proxies, namespaces and cgroups.
    sweep_prefix(prefix);
    let options = Options {
        policy_link: policies.clone(),
        policies: match &examples {
            Some(dir) => read_policy_files(dir)?,
            None => Vec::new(),
        },
        ..Options::default()
    };
    let mut c = Cluster::start_with_prefix(prefix, demo_pods(), options)?;
    for pod in ["backend", "cache", "db"] {
        c.serve_echo(pod, PORT);
    }
    c.serve_http("backend", HTTP_PORT);
    define_service(&c);
    tcp_calls(&c);
    http_calls(&c);
    jwt_calls(&c);
    service_calls(&c);
    rate_limited_calls(&c);
    std::thread::sleep(std::time::Duration::from_millis(300));
    for node in ["node-a", "node-b"] {
        print_flush(&table(node, &c.access_log(node)));
        print_flush(&decisions(node, &c.audit_log(node)));
    }
    print_flush(&hints(&c, examples.as_deref()));
    print_flush("demo ready\n");
    let sig = stop.wait()?;
    // Not println!: after SIGHUP the terminal may be gone, and a failed
    // write must not skip the teardown.
    print_flush(&format!("{sig:?}: tearing down\n"));
    drop(c);
    Ok(())
}

/// What to try next, printed before `demo ready`.
fn hints(c: &Cluster, examples: Option<&Path>) -> String {
    let prefix = &c.prefix;
    let backend = c.ip4("backend");
    let policies = c.policy_dir();
    let policies = std::fs::canonicalize(&policies).unwrap_or(policies);
    let whose = match examples {
        Some(from) => format!("a copy of {}, removed with the demo; ", from.display()),
        None => String::new(),
    };
    format!(
        "\nnetns: {prefix}-node-a {prefix}-node-b {prefix}-<pod>; logs in /tmp/{prefix}\n\
         policies: {} ({whose}edit it: changes apply within a second; `nodeward policy check` it first)\n\
         try a call as a pod (joins its cgroup, then its netns):\n\
         \x20 cargo xtask demo exec frontend -- curl -i http://{backend}:{HTTP_PORT}/api/items   # allowed: 200\n\
         \x20 cargo xtask demo exec frontend -- curl -i http://{backend}:{HTTP_PORT}/admin       # denied: 403\n\
         metrics: cargo xtask demo exec node-b -- curl -s http://127.0.0.1:{ADMIN_PORT}/metrics \
         (also /ready, /config_dump, /logging?level=debug)\n\
         flow map (allowed, denied, rate-limited edges): http://127.0.0.1:{ADMIN_PORT}/flows in node-b's netns;\n\
         \x20 see it: cargo xtask demo exec node-b -- chromium --headless --no-sandbox --virtual-time-budget=5000 --screenshot=/tmp/flows.png http://127.0.0.1:{ADMIN_PORT}/flows\n\
         \x20 or in a terminal: cargo xtask demo exec node-b -- curl -s http://127.0.0.1:{ADMIN_PORT}/flows.json\n\
         stop: Ctrl-C here, or `cargo xtask demo --down` from another shell\n",
        policies.display()
    )
}

/// The Service `backend.shop` (VIP [`SERVICE_VIP`], port 80 to the
/// backend's HTTP port), as a Service and its EndpointSlice would define
/// it; returns once both proxies have it.
fn define_service(c: &Cluster) {
    c.reload_workloads(|c| {
        c.set_services(&format!(
            "  - {{name: backend, namespace: shop, vips: ['{SERVICE_VIP}'], ports: [{{port: 80, targetPort: {HTTP_PORT}}}], selector: {{app: backend}}}}\n"
        ));
    });
}

/// HTTP calls to the Service's VIP: the proxy picks the endpoint.
fn service_calls(c: &Cluster) {
    let to = SocketAddr::new(SERVICE_VIP.parse().expect("vip"), 80);
    let requests = ["GET /api/items", "GET /api/items"];
    let r = c.http_calls("frontend", to, &requests);
    for (i, req) in requests.iter().enumerate() {
        let status = &r["statuses"][i];
        println!(
            "{:>9} -> {to:<24} {req:<22} HTTP {status} (Service backend.shop)",
            "frontend"
        );
    }
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

/// End-user tokens on backend's `/user` (policies/jwt.yaml): a valid one
/// allowed by `requestPrincipals`, an expired one refused with 401, and none
/// at all denied by the policy (403).
fn jwt_calls(c: &Cluster) {
    let to = SocketAddr::new(c.ip4("backend"), HTTP_PORT);
    let key = JwtSigner::demo();
    let now = unix_now();
    let claims = |exp: u64| json!({"iss": DEMO_ISSUER, "sub": "alice", "aud": "shop", "exp": exp});
    let calls = [
        ("valid token", key.sign(&claims(now + 3600))),
        ("expired token", key.sign(&claims(now - 3600))),
    ];
    let mut requests: Vec<String> = calls
        .iter()
        .map(|(_, t)| format!("GET /user/profile\nauthorization: Bearer {t}"))
        .collect();
    requests.push("GET /user/profile".to_owned());
    let refs: Vec<&str> = requests.iter().map(String::as_str).collect();
    let r = c.http_calls("frontend", to, &refs);
    for (i, what) in ["valid token", "expired token", "no token"]
        .iter()
        .enumerate()
    {
        let status = &r["statuses"][i];
        println!(
            "{:>9} -> {to:<24} {:<22} HTTP {status} ({what})",
            "frontend", "GET /user/profile"
        );
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
            "connection" => match r["service_vip"].as_str() {
                Some(vip) if vip != "unknown" => (
                    s("source"),
                    format!(
                        "relayed ({}) via Service {} at {vip}",
                        s("path"),
                        s("destination_service")
                    ),
                ),
                _ => (s("source"), format!("relayed ({})", s("path"))),
            },
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

/// Every regular file of `dir` (the example policies and their README),
/// as (file name, text), for the demo's own copy.
fn read_policy_files(dir: &Path) -> Result<Vec<(String, String)>> {
    let mut files = Vec::new();
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("policy directory {}", dir.display()))?;
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            let text = std::fs::read_to_string(entry.path())
                .with_context(|| entry.path().display().to_string())?;
            files.push((entry.file_name().to_string_lossy().into_owned(), text));
        }
    }
    files.sort();
    Ok(files)
}

/// The pid of the running demo under `prefix`: the owner its cluster
/// recorded, if that process is still an `nw-demo` (not a reused pid).
fn running_demo(prefix: &str) -> Option<i32> {
    let owner = std::env::temp_dir().join(prefix).join("owner");
    let pid: i32 = std::fs::read_to_string(owner).ok()?.trim().parse().ok()?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    (comm.trim() == "nw-demo" && pid != std::process::id() as i32).then_some(pid)
}

/// Stops the running demo (SIGTERM, then waits for its teardown; SIGKILL
/// if it does not finish), then removes whatever is left under `prefix`.
fn down(prefix: &str) -> Result<()> {
    if let Some(pid) = running_demo(prefix) {
        println!("stopping the demo (pid {pid})");
        let pid = Pid::from_raw(pid);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + DOWN_WAIT;
        while kill(pid, None).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if kill(pid, None).is_ok() {
            eprintln!("the demo did not stop within {DOWN_WAIT:?}: killing it");
            let _ = kill(pid, Signal::SIGKILL);
        }
    }
    sweep_prefix(prefix);
    println!("demo {prefix} removed");
    Ok(())
}

/// Replaces this process with `argv` run as `pod` of the running demo:
/// in the pod's cgroup first (so its connections are redirected to the
/// node proxy and attributed to the pod), then in its netns. A node name
/// joins only the node's netns (outside the mesh: its admin port).
fn exec(prefix: &str, pod: &str, argv: &[String]) -> Result<()> {
    if running_demo(prefix).is_none() {
        bail!("no demo is running: start one with `cargo xtask demo`");
    }
    let pods = demo_pods();
    let cgroup = if pods.iter().any(|p| p.node == pod) {
        None
    } else {
        let Some(p) = pods.iter().find(|p| p.name == pod) else {
            let names: Vec<&str> = pods.iter().map(|p| p.name).collect();
            bail!(
                "no pod {pod:?}: the demo has {}, and nodes node-a, node-b",
                names.join(", ")
            );
        };
        // The harness's layout: <cgroup2>/<prefix>/<node>/<pod>.
        Some(cgroup2_mount()?.join(prefix).join(p.node).join(p.name))
    };
    join(Some(&format!("{prefix}-{pod}")), cgroup.as_deref())?;
    // exec resets the signal mask; this process blocked none anyway.
    let err = std::process::Command::new(&argv[0]).args(&argv[1..]).exec();
    Err(err).with_context(|| format!("running {}", argv[0]))
}
