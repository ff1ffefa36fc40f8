//! `cargo xtask soak`: many meshed connections held for a long time on the
//! two-node cluster, with churn, steady requests, policy reloads and
//! certificate renewals, while both proxies are sampled.
//!
//! The load is `nw-bench hold` ([`hold`]) in two pods: `frontend` (node-a)
//! holds connections to `backend` (cross-node, through the tunnel) and to
//! `cache` (same node), `db` (node-b) to `backend` (same node), split
//! 40/30/30. A share of them is closed and reopened every second, and each
//! does a small echo round trip every `interval`. Meanwhile a harmless
//! policy file is rewritten every [`RELOAD_EVERY`] and certificates live one
//! minute (renewed at half life). Every [`SAMPLE_EVERY`] each proxy's RSS,
//! open fds, threads, live tokio tasks, active connections and BPF map
//! entries are recorded; `soak.csv`, `soak.png` and `soak.json` go to the
//! output directory.
//!
//! Verdict (see [`verdict`]): no connection failed that the clients did
//! not close on purpose; every connection was open at once; in the second
//! half RSS grew by at most [`RSS_GROWTH`]; fds, map entries and tasks did
//! not grow (beyond the connections in flight at a sample: see
//! [`in_flight_slack`]); policy reloads and certificate renewals happened.

pub mod hold;
mod plot;

use std::{
    fs,
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::{
    bench::{cleanup_on_signal, reuse_time_wait, spawn_server},
    metric_value, standard_pods, Cluster, Options,
};

/// How often both proxies are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// How often the policy file is rewritten.
const RELOAD_EVERY: Duration = Duration::from_secs(30);
/// Workload certificates live this long (renewed at half life).
const CERT_LIFETIME: &str = "1m";
/// Largest RSS growth allowed over the second half.
pub const RSS_GROWTH: f64 = 0.05;
/// Echo server port in `backend` and `cache`.
const PORT: u16 = 9000;
/// How much longer than the run the clients hold their connections: the
/// last sample must see them all open.
const CLIENT_MARGIN: Duration = Duration::from_secs(20);
/// Samples averaged at each end of the second half.
const WINDOW: usize = 3;

/// What `nw-bench soak` was asked for.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where `soak.csv`, `soak.png` and `soak.json` go.
    pub out_dir: PathBuf,
    /// How long the connections are held, once open.
    pub run: Duration,
    /// Connections held, both clients together.
    pub connections: usize,
    /// Connections closed and reopened every second, both together.
    pub churn: usize,
    /// Each connection does one round trip this often.
    pub interval: Duration,
    /// The `nw-bench` binary (client and server).
    pub bench_bin: PathBuf,
}

/// One sample of one proxy.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Seconds since the connections were all open.
    pub t: f64,
    pub node: &'static str,
    pub rss_mb: f64,
    pub fds: f64,
    pub threads: f64,
    pub tasks: f64,
    pub active_connections: f64,
    pub map_flows: f64,
    pub map_by_cookie: f64,
    pub map_splice: f64,
    pub policy_reloads: f64,
    pub cert_renewals: f64,
    /// Both clients: connections open, requests done, failures so far.
    pub client_open: f64,
    pub client_requests: f64,
    pub client_failures: f64,
}

impl Sample {
    /// BPF map entries, all maps together.
    pub fn map_entries(&self) -> f64 {
        self.map_flows + self.map_by_cookie + self.map_splice
    }
}

/// The nodes, in the order of the CSV and the plot's colours.
pub const NODES: [&str; 2] = ["node-a", "node-b"];

/// A client's latest report lines, kept by a reader thread.
#[derive(Default)]
struct ClientState {
    held: Option<Value>,
    last: Option<Value>,
    last_final: Option<Value>,
}

struct Client {
    child: Child,
    state: Arc<Mutex<ClientState>>,
}

/// Builds the cluster, runs the soak, writes the reports; an error if the
/// verdict fails. SIGINT/SIGTERM tear the cluster down.
pub fn run(s: &Settings) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the soak needs root: it creates network namespaces, cgroups and BPF links");
    }
    let prefix = Cluster::unique_prefix();
    cleanup_on_signal(&prefix)?;
    let options = Options {
        cert_lifetime: CERT_LIFETIME,
        drain_deadline: "1s",
        ..Options::default()
    };
    let mut cluster = Cluster::start_with_prefix(&prefix, standard_pods(), options)?;
    let result = soak(&mut cluster, s);
    // Access records would drown them: only warnings and errors.
    let log_tail = |node| tail(&cluster.proxy_log(node), 20);
    let logs = if result.is_err() {
        format!(
            "\nnode-a log:\n{}\nnode-b log:\n{}",
            log_tail("node-a"),
            log_tail("node-b")
        )
    } else {
        String::new()
    };
    drop(cluster);
    let (samples, finals) = result.with_context(|| logs.clone())?;
    fs::create_dir_all(&s.out_dir)?;
    fs::write(s.out_dir.join("soak.csv"), csv(&samples))?;
    plot::png(&s.out_dir.join("soak.png"), &samples, s.run.as_secs_f64())?;
    let checks = verdict(&samples, &finals, s);
    let report = json!({
        "settings": {
            "seconds": s.run.as_secs_f64(), "connections": s.connections,
            "churn_per_s": s.churn, "interval_s": s.interval.as_secs_f64(),
            "sample_every_s": SAMPLE_EVERY.as_secs_f64(), "cert_lifetime": CERT_LIFETIME,
            "policy_reload_every_s": RELOAD_EVERY.as_secs_f64(),
        },
        "summary": summary(&samples),
        "clients": finals,
        "failed_checks": checks,
    });
    fs::write(
        s.out_dir.join("soak.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    eprintln!(
        "soak: {}",
        serde_json::to_string_pretty(&report["summary"])?
    );
    eprintln!("soak: reports in {}", s.out_dir.display());
    if !checks.is_empty() {
        bail!("soak failed:\n- {}", checks.join("\n- "));
    }
    eprintln!("soak: passed");
    Ok(())
}

/// Servers, clients, the sampling loop; the samples and the clients' final
/// reports.
fn soak(c: &mut Cluster, s: &Settings) -> Result<(Vec<Sample>, Vec<Value>)> {
    reuse_time_wait(c)?;
    let dir = c.ca_dir().parent().context("cluster dir")?.to_owned();
    let mut servers = Vec::new();
    for pod in ["backend", "cache"] {
        let log = dir.join(format!("soak-server-{pod}.log"));
        let cg = c.cgroup_of(pod);
        servers.push(spawn_server(&s.bench_bin, &c.ns(pod), &cg, PORT, &log)?);
    }
    let result = drive(c, s, &dir);
    for mut server in servers {
        let _ = server.kill();
        let _ = server.wait();
    }
    result
}

fn drive(c: &Cluster, s: &Settings, dir: &std::path::Path) -> Result<(Vec<Sample>, Vec<Value>)> {
    let to = |pod: &str| SocketAddr::new(c.ip4(pod), PORT);
    let share = |pct: usize, of: usize| of * pct / 100;
    let (n, churn) = (s.connections, s.churn);
    let plans: [Plan; 2] = [
        (
            "frontend",
            vec![(to("backend"), share(40, n)), (to("cache"), share(30, n))],
            share(70, churn),
        ),
        (
            "db",
            vec![(to("backend"), n - share(40, n) - share(30, n))],
            churn - share(70, churn),
        ),
    ];
    // Time to open them all: generous, and bounded.
    let ramp = Duration::from_secs(60 + (n / 50) as u64);
    let mut clients = Vec::new();
    for (pod, targets, churn) in plans {
        clients.push(start_client(c, s, dir, pod, &targets, churn, ramp)?);
    }
    let result = sample_while_held(c, s, &clients, ramp);
    let mut finals = Vec::new();
    for mut client in clients {
        // The clients stop by themselves once their time is up.
        let deadline = Instant::now() + CLIENT_MARGIN + Duration::from_secs(60);
        while client.child.try_wait()?.is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = client.child.kill();
        let _ = client.child.wait();
        let state = client.state.lock().unwrap_or_else(|e| e.into_inner());
        finals.push(json!({
            "held": state.held,
            "final": state.last_final,
        }));
    }
    Ok((result?, finals))
}

/// A client pod, its (destination, connections) and its churn per second.
type Plan = (&'static str, Vec<(SocketAddr, usize)>, usize);

/// Starts `nw-bench hold` in `pod`; a thread keeps its latest lines.
fn start_client(
    c: &Cluster,
    s: &Settings,
    dir: &std::path::Path,
    pod: &str,
    targets: &[(SocketAddr, usize)],
    churn: usize,
    ramp: Duration,
) -> Result<Client> {
    let mut cmd = Command::new(&s.bench_bin);
    cmd.arg("--netns")
        .arg(c.ns(pod))
        .arg("--cgroup")
        .arg(c.cgroup_of(pod))
        .arg("hold");
    for (to, n) in targets {
        cmd.args(["--to", &format!("{to}={n}")]);
    }
    let mut child = cmd
        .args(["--churn", &churn.to_string()])
        .args(["--interval", &s.interval.as_secs_f64().to_string()])
        // Past the last sample: the orchestrator stops them.
        .args([
            "--seconds",
            &(s.run + CLIENT_MARGIN).as_secs_f64().to_string(),
        ])
        .args(["--ramp", &ramp.as_secs_f64().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(fs::File::create(
            dir.join(format!("soak-client-{pod}.log")),
        )?)
        .spawn()
        .context("spawning nw-bench hold")?;
    let stdout = child.stdout.take().context("client stdout")?;
    let state = Arc::new(Mutex::new(ClientState::default()));
    let keep = state.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            let mut st = keep.lock().unwrap_or_else(|e| e.into_inner());
            match v["phase"].as_str() {
                Some("held") => st.held = Some(v.clone()),
                Some("final") => st.last_final = Some(v.clone()),
                _ => {}
            }
            st.last = Some(v);
        }
    });
    Ok(Client { child, state })
}

/// Waits until both clients hold their connections, then samples every
/// [`SAMPLE_EVERY`] and rewrites the policy every [`RELOAD_EVERY`] until the
/// run's time is up.
fn sample_while_held(
    c: &Cluster,
    s: &Settings,
    clients: &[Client],
    ramp: Duration,
) -> Result<Vec<Sample>> {
    let deadline = Instant::now() + ramp + Duration::from_secs(10);
    while !clients.iter().all(|cl| lock(cl).held.is_some()) {
        if Instant::now() > deadline {
            bail!("the clients did not report their connections held in time");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "soak: connections held: {:?}; running {} s",
        clients
            .iter()
            .map(|cl| lock(cl).held.clone())
            .collect::<Vec<_>>(),
        s.run.as_secs()
    );
    let start = Instant::now();
    let samples_wanted = (s.run.as_secs_f64() / SAMPLE_EVERY.as_secs_f64()).floor() as u32;
    let mut samples = Vec::new();
    let mut next_reload = start + RELOAD_EVERY;
    let mut generation = 0u32;
    for i in 0..=samples_wanted {
        let at = start + SAMPLE_EVERY * i;
        while Instant::now() < at {
            if Instant::now() >= next_reload {
                generation += 1;
                c.write_policy("soak-reload.yaml", &reload_policy(generation));
                next_reload += RELOAD_EVERY;
            }
            std::thread::sleep(Duration::from_millis(100).min(at - Instant::now().min(at)));
        }
        let t = start.elapsed().as_secs_f64();
        for node in NODES {
            samples.push(sample(c, node, t, clients)?);
        }
        if i % 6 == 0 {
            let a = &samples[samples.len() - 2];
            eprintln!(
                "soak: t={t:.0}s node-a rss {:.1} MB fds {} tasks {} maps {}; clients open {} failures {}",
                a.rss_mb, a.fds, a.tasks, a.map_entries(), a.client_open, a.client_failures
            );
        }
    }
    Ok(samples)
}

fn lock(cl: &Client) -> std::sync::MutexGuard<'_, ClientState> {
    cl.state.lock().unwrap_or_else(|e| e.into_inner())
}

/// An ALLOW policy that selects no pod: reloading it changes no decision.
fn reload_policy(generation: u32) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: soak-reload, namespace: shop}}\nspec:\n  selector: {{matchLabels: {{app: soak-nobody}}}}\n  action: ALLOW\n  rules: [{{from: [{{source: {{namespaces: ['generation-{generation}']}}}}]}}]\n"
    )
}

fn sample(c: &Cluster, node: &'static str, t: f64, clients: &[Client]) -> Result<Sample> {
    let pid = c.proxy_pid(node);
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("{node}'s proxy is gone"))?;
    let field = |name: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    let fds = fs::read_dir(format!("/proc/{pid}/fd"))?.count() as f64;
    let text = c.metrics(node);
    let m = |name: &str, labels: &[(&str, &str)]| metric_value(&text, name, labels);
    let map = |name: &str| m("nodeward_bpf_map_entries", &[("map", name)]);
    let mut client = [0.0; 3];
    for cl in clients {
        if let Some(last) = &lock(cl).last {
            client[0] += last["open"].as_f64().unwrap_or(0.0);
            client[1] += last["requests"].as_f64().unwrap_or(0.0);
            client[2] += last["connect_failures"].as_f64().unwrap_or(0.0)
                + last["request_failures"].as_f64().unwrap_or(0.0);
        }
    }
    Ok(Sample {
        t,
        node,
        rss_mb: field("VmRSS:") * 1024.0 / 1e6,
        fds,
        threads: field("Threads:"),
        tasks: m("nodeward_runtime_alive_tasks", &[]),
        active_connections: m("nodeward_active_connections", &[]),
        map_flows: map("flows"),
        map_by_cookie: map("by_cookie"),
        map_splice: map("splice"),
        policy_reloads: m("nodeward_policy_reloads_total", &[("result", "ok")]),
        cert_renewals: m(
            "nodeward_certificates_issued_total",
            &[("cause", "renewal")],
        ),
        client_open: client[0],
        client_requests: client[1],
        client_failures: client[2],
    })
}

/// The samples as CSV, one row per node per sample.
pub fn csv(samples: &[Sample]) -> String {
    let mut out = String::from("t_s,node,rss_mb,fds,threads,tasks,active_connections,map_flows,map_by_cookie,map_splice,policy_reloads_ok,cert_renewals,client_open,client_requests,client_failures\n");
    for x in samples {
        out += &format!(
            "{:.1},{},{:.2},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            x.t,
            x.node,
            x.rss_mb,
            x.fds,
            x.threads,
            x.tasks,
            x.active_connections,
            x.map_flows,
            x.map_by_cookie,
            x.map_splice,
            x.policy_reloads,
            x.cert_renewals,
            x.client_open,
            x.client_requests,
            x.client_failures
        );
    }
    out
}

/// Per node: first, second-half start and end of each series.
fn summary(samples: &[Sample]) -> Value {
    let mut out = serde_json::Map::new();
    for node in NODES {
        let mine: Vec<&Sample> = samples.iter().filter(|x| x.node == node).collect();
        let Some(last) = mine.last() else { continue };
        let (first_half_end, halves) = halves(&mine);
        let series = |f: fn(&Sample) -> f64| {
            json!({
                "first": mine.first().map(|x| f(x)),
                "min": mine.iter().map(|x| f(x)).fold(f64::INFINITY, f64::min),
                "max": mine.iter().map(|x| f(x)).fold(f64::NEG_INFINITY, f64::max),
                "second_half_start": mean(halves.0.iter().map(|x| f(x))),
                "end": mean(halves.1.iter().map(|x| f(x))),
            })
        };
        out.insert(
            node.to_owned(),
            json!({
                "samples": mine.len(),
                "second_half_from_s": first_half_end,
                "rss_mb": series(|x| x.rss_mb),
                "fds": series(|x| x.fds),
                "map_entries": series(Sample::map_entries),
                "tasks": series(|x| x.tasks),
                "threads": series(|x| x.threads),
                "active_connections": series(|x| x.active_connections),
                "policy_reloads_ok": last.policy_reloads,
                "cert_renewals": last.cert_renewals,
                "client_requests": last.client_requests,
            }),
        );
    }
    Value::Object(out)
}

/// The second half's first and last [`WINDOW`] samples (and when it starts).
fn halves<'a>(mine: &[&'a Sample]) -> (f64, (Vec<&'a Sample>, Vec<&'a Sample>)) {
    let end = mine.last().map_or(0.0, |x| x.t);
    let second: Vec<&Sample> = mine.iter().copied().filter(|x| x.t >= end / 2.0).collect();
    let w = WINDOW.min(second.len() / 2).max(1).min(second.len());
    let start = second.iter().take(w).copied().collect();
    let last = second.iter().rev().take(w).copied().collect();
    (end / 2.0, (start, last))
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 {
        f64::NAN
    } else {
        sum / n as f64
    }
}

/// Connections that can be in flight at a sample without being a leak:
/// the churn of one second each way (closing and reopening) on each of a
/// relay's two descriptors, plus a small constant for the proxy's own
/// (admin scrape, policy watch, tunnel reconnects).
pub fn in_flight_slack(churn_per_s: usize) -> f64 {
    (4 * churn_per_s + 32) as f64
}

/// A series the verdict watches for growth, and its name.
type Series = (&'static str, fn(&Sample) -> f64);

/// What failed, in words; empty when the soak passed.
pub fn verdict(samples: &[Sample], finals: &[Value], s: &Settings) -> Vec<String> {
    let mut failed = Vec::new();
    for (i, f) in finals.iter().enumerate() {
        let held = &f["held"];
        let last = &f["final"];
        if last.is_null() {
            failed.push(format!("client {i} gave no final report"));
            continue;
        }
        for key in ["connect_failures", "request_failures"] {
            if last[key].as_u64() != Some(0) {
                failed.push(format!(
                    "client {i}: {key} = {} ({})",
                    last[key], last["errors"]
                ));
            }
        }
        if held["connect_failures"].as_u64() != Some(0) || held["open"].is_null() {
            failed.push(format!("client {i} did not open every connection: {held}"));
        }
    }
    let total_open: u64 = finals
        .iter()
        .filter_map(|f| f["held"]["open"].as_u64())
        .sum();
    if total_open != s.connections as u64 {
        failed.push(format!(
            "{total_open} of {} connections were open at once",
            s.connections
        ));
    }
    let slack = in_flight_slack(s.churn);
    for node in NODES {
        let mine: Vec<&Sample> = samples.iter().filter(|x| x.node == node).collect();
        if mine.len() < 4 {
            failed.push(format!("{node}: only {} samples", mine.len()));
            continue;
        }
        let (_, (start, end)) = halves(&mine);
        let m = |v: &[&Sample], f: fn(&Sample) -> f64| mean(v.iter().map(|x| f(x)));
        let (r0, r1) = (m(&start, |x| x.rss_mb), m(&end, |x| x.rss_mb));
        // Written so that NaN (a missing sample) fails too.
        let within = r1 <= r0 * (1.0 + RSS_GROWTH);
        if !within {
            failed.push(format!(
                "{node}: RSS grew {:.1}% in the second half ({r0:.1} -> {r1:.1} MB)",
                (r1 / r0 - 1.0) * 100.0
            ));
        }
        let grows: [Series; 3] = [
            ("open fds", |x| x.fds),
            ("BPF map entries", Sample::map_entries),
            ("runtime tasks", |x| x.tasks),
        ];
        for (what, f) in grows {
            let (a, b) = (m(&start, f), m(&end, f));
            let within = b <= a + slack;
            if !within {
                failed.push(format!(
                    "{node}: {what} grew in the second half ({a:.0} -> {b:.0}, slack {slack})"
                ));
            }
        }
        let (first, last) = (mine[0], mine[mine.len() - 1]);
        if last.policy_reloads <= first.policy_reloads && s.run >= RELOAD_EVERY * 2 {
            failed.push(format!("{node}: no policy reload during the run"));
        }
        if last.cert_renewals <= first.cert_renewals && s.run >= Duration::from_secs(60) {
            failed.push(format!("{node}: no certificate renewal during the run"));
        }
    }
    failed
}

/// The last `n` warning or error lines of a log.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("\"WARN\"") || l.contains("\"ERROR\""))
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
