//! The long-running processes a cluster owns: node proxies (`nodeward run`
//! in a node's netns through `nw-pod exec`, the `nodeward_run` builder,
//! waiting until ready, running one to exit, signalling and stopping) and
//! `nw-pod` servers (echo, HTTP) in pods or nodes. Their output goes to
//! their log files; all are stopped before the cluster is removed.

use std::{
    fs,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    cgroups,
    cluster::Cluster,
    logs::{append, wait_for},
    remote::Request,
};

impl Cluster {
    /// When `node` runs in the other machine: asks its agent (within 30 s,
    /// times [`patience`]) and returns the reply; `None` for a local node.
    /// A failed request panics, as the same step failing here does.
    pub(crate) fn ask_remote(
        &self,
        node: &str,
        request: impl FnOnce() -> Request,
    ) -> Option<crate::remote::Reply> {
        let split = self.remote(node)?;
        let reply = split.ask(&request(), patience(Duration::from_secs(30)));
        Some(reply.unwrap_or_else(|e| panic!("{e:#}")))
    }

    /// Starts the node proxy of `node` and waits until it is ready.
    pub fn start_proxy(&mut self, node: &str) -> Result<()> {
        self.start_proxy_with(node, &[])
    }

    /// Starts another proxy on `node` with extra `nodeward run` flags (such
    /// as `--takeover`) and waits until it is ready; earlier ones keep running.
    pub fn start_proxy_with(&mut self, node: &str, extra: &[&str]) -> Result<()> {
        if let Some(split) = self.remote(node) {
            let start = Request::StartProxy {
                node: node.to_owned(),
                extra: extra.iter().map(|e| (*e).to_owned()).collect(),
            };
            return split
                .ask(&start, patience(Duration::from_secs(60)))
                .map(drop);
        }
        let log = self.log_path(node);
        let start = fs::metadata(&log).map_or(0, |m| m.len() as usize);
        let cg = self.cgroup_root.join(format!("proxy-{node}"));
        cgroups::create(&cg)?;
        let child = self
            .nodeward_run(node, &cg, &["--log-format", "json"], extra)
            .env("NODEWARD_LOG", "info")
            .stdout(append(&log)?)
            .stderr(append(&log)?)
            .stdin(Stdio::null())
            .spawn()
            .context("spawning nodeward")?;
        self.proxies.push((node.to_owned(), child));
        self.wait_ready(node, &log, start)
    }

    /// Waits (up to 20 s, times [`patience`]) until the proxy last started
    /// on `node` logs to `log`, past byte `start`, that it is ready; fails
    /// if it exits first.
    fn wait_ready(&mut self, node: &str, log: &Path, start: usize) -> Result<()> {
        let deadline = Instant::now() + patience(Duration::from_secs(20));
        loop {
            // Only this run's lines count: a restarted proxy appends to the same log.
            let text = fs::read_to_string(log).unwrap_or_default();
            if text
                .get(start..)
                .is_some_and(|t| t.contains("nodeward ready"))
            {
                return Ok(());
            }
            let exited = self
                .proxies
                .last_mut()
                .and_then(|(_, c)| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                bail!(
                    "proxy {node} did not become ready ({exited:?}):\n{}",
                    self.proxy_log(node)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `nodeward <global> run --config <node's config> <extra>` in `node`'s
    /// netns and cgroup `cg`.
    fn nodeward_run(&self, node: &str, cg: &Path, global: &[&str], extra: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bins.nw_pod);
        cmd.arg("--netns")
            .arg(self.ns(node))
            .arg("--cgroup")
            .arg(cg)
            .args(["exec", "--"])
            .arg(&self.bins.nodeward)
            .args(global)
            .args(["run", "--config"])
            .arg(self.config_path(node))
            .args(extra);
        if self.options.kubernetes {
            cmd.env("KUBECONFIG", self.kubeconfig_path());
        }
        cmd
    }

    /// Runs one more `nodeward run` on `node` to completion (for instances
    /// expected to refuse to start); (exit code, output). Bounded: killed
    /// after 20 s.
    pub fn run_proxy_to_exit(&self, node: &str, extra: &[&str]) -> (Option<i32>, String) {
        let cg = self.cgroup_root.join(format!("proxy-{node}-extra"));
        cgroups::create(&cg).expect("cgroup");
        let mut child = self
            .nodeward_run(node, &cg, &[], extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn nodeward");
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let out = child.wait_with_output().expect("output");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    }

    /// Waits (up to `timeout`) for the `index`-th proxy started on `node`
    /// to exit by itself; its exit status, or `None` if it still runs.
    pub fn wait_proxy_exit(
        &mut self,
        node: &str,
        index: usize,
        timeout: Duration,
    ) -> Option<std::process::ExitStatus> {
        if let Some(split) = self.remote(node) {
            let wait = Request::WaitProxyExit {
                node: node.to_owned(),
                index,
                timeout_ms: timeout.as_millis() as u64,
            };
            let reply = split
                .ask(&wait, timeout + patience(Duration::from_secs(30)))
                .unwrap_or_else(|e| panic!("{e:#}"));
            return reply
                .code
                .map(std::os::unix::process::ExitStatusExt::from_raw);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let child = self
                .proxies
                .iter_mut()
                .filter(|(n, _)| n == node)
                .nth(index)
                .map(|(_, c)| c)?;
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM to the `index`-th proxy started on `node` without
    /// waiting for it.
    pub fn signal_proxy(&self, node: &str, index: usize) {
        let signal = || Request::SignalProxy {
            node: node.to_owned(),
            index,
        };
        if self.ask_remote(node, signal).is_some() {
            return;
        }
        let (_, child) = self
            .proxies
            .iter()
            .filter(|(n, _)| n == node)
            .nth(index)
            .expect("proxy");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }

    /// The pid of the first running proxy of `node`.
    pub fn proxy_pid(&self, node: &str) -> u32 {
        assert!(
            self.is_local(node),
            "the proxy of {node} runs in the other machine"
        );
        self.proxies
            .iter()
            .find(|(n, _)| n == node)
            .map(|(_, c)| c.id())
            .expect("proxy running")
    }

    /// Stops the node proxy of `node` with SIGTERM and waits for it to exit.
    pub fn stop_proxy(&mut self, node: &str) -> std::process::ExitStatus {
        let i = self
            .proxies
            .iter()
            .position(|(n, _)| n == node)
            .expect("proxy running");
        let (_, mut child) = self.proxies.remove(i);
        terminate(&mut child)
    }

    /// Stops every process the cluster started: proxies with SIGTERM (then
    /// SIGKILL after 10 s), servers with SIGKILL.
    pub(crate) fn stop_processes(&mut self) {
        for (_, child) in &mut self.proxies {
            terminate(child);
        }
        for child in &mut self.others {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs an echo server in `pod` on `port` (all addresses, both families).
    pub fn serve_echo(&mut self, pod: &str, port: u16) {
        let p = self.pod(pod).clone();
        let serve = || Request::ServeEcho {
            pod: pod.to_owned(),
            port,
        };
        if self.ask_remote(p.node, serve).is_some() {
            return;
        }
        let (ns, cg) = (self.ns(pod), self.pod_cgroup(&p));
        self.serve_echo_in(&ns, Some(&cg), &format!("echo-{pod}-{port}"), port);
    }

    /// Runs a small HTTP/1.1 server in `pod` on `port` that answers every
    /// request with 200 and logs it (`{"request": "GET /path"}`).
    pub fn serve_http(&mut self, pod: &str, port: u16) {
        let p = self.pod(pod).clone();
        let (ns, cg) = (self.ns(pod), self.pod_cgroup(&p));
        self.serve_in(
            &ns,
            Some(&cg),
            &format!("http-{pod}-{port}"),
            "http-serve",
            port,
        );
    }

    /// Runs `nw-pod hyper-serve` in `pod` on `port`: HTTP/1.1 and HTTP/2
    /// (prior knowledge), 200 for every request, `/big` 1 MiB.
    pub fn serve_hyper(&mut self, pod: &str, port: u16) {
        let p = self.pod(pod).clone();
        let (ns, cg) = (self.ns(pod), self.pod_cgroup(&p));
        let name = format!("hyper-{pod}-{port}");
        self.serve_in(&ns, Some(&cg), &name, "hyper-serve", port);
    }

    /// Resident memory of `node`'s first proxy, in KiB (`VmRSS`).
    pub fn proxy_rss_kib(&self, node: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.proxy_pid(node)))
            .expect("proxy status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// CPU time `node`'s first proxy has used (user + system), in clock ticks.
    pub fn proxy_cpu_ticks(&self, node: &str) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.proxy_pid(node)))
            .expect("proxy stat");
        // Fields after the command name, which is in parentheses.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
        // utime and stime are fields 14 and 15; `rest` starts at field 3.
        field(11)
            .zip(field(12))
            .map(|(u, s)| u + s)
            .expect("utime, stime")
    }

    /// Runs an echo server in a node's netns (outside the mesh, for bypass tests).
    pub fn serve_echo_on_node(&mut self, node: &str, port: u16) {
        let serve = || Request::ServeEchoOnNode {
            node: node.to_owned(),
            port,
        };
        if self.ask_remote(node, serve).is_some() {
            return;
        }
        let ns = self.ns(node);
        self.serve_echo_in(&ns, None, &format!("echo-{node}-{port}"), port);
    }

    fn serve_echo_in(&mut self, ns: &str, cgroup: Option<&Path>, name: &str, port: u16) {
        self.serve_in(ns, cgroup, name, "echo", port);
    }

    /// Runs the `nw-pod` server `tool` on `port` (all addresses, both
    /// families) and waits until it listens; its log is `name`.
    fn serve_in(&mut self, ns: &str, cgroup: Option<&Path>, name: &str, tool: &str, port: u16) {
        let log = self.log_path(name);
        let mut cmd = Command::new(&self.bins.nw_pod);
        cmd.arg("--netns").arg(ns);
        if let Some(cg) = cgroup {
            cmd.arg("--cgroup").arg(cg);
        }
        let child = cmd
            .args([tool, "--listen", &format!("[::]:{port}")])
            .stdout(append(&log).expect("log file"))
            .stderr(append(&log).expect("log file"))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {tool}: {e}"));
        self.others.push(child);
        wait_for(&log, "listening", Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{tool} listening: {e}"));
    }
}

/// SIGTERM, then waits for `child` to exit: SIGKILL after 10 s.
/// `d` times `NW_TEST_PATIENCE` (a whole factor, default 1): a debug
/// nodeward under qemu's TCG (`cargo xtask vm-test` sets it) starts many
/// times slower than on the host.
pub(crate) fn patience(d: Duration) -> Duration {
    let factor = std::env::var("NW_TEST_PATIENCE")
        .ok()
        .and_then(|f| f.parse::<u32>().ok())
        .unwrap_or(1)
        .max(1);
    d * factor
}

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return child.wait().expect("wait for killed child");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
