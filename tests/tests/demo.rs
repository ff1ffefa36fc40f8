//! `cargo xtask demo` as a user drives it: it stops cleanly however it is
//! stopped (a signal to xtask, `--down`), a demo whose owner was killed is
//! swept by the next one or by `--down`, `demo exec` runs a command as a
//! pod (in its cgroup and netns, through the mesh), and the demo runs
//! under its own copy of the example policies.
//!
//! Each test runs the real xtask binary with the debug binaries
//! (`NW_DEMO_BIN_DIR`, so nothing is built) under its own prefix
//! (`NW_DEMO_PREFIX`), so the tests run in parallel and never touch a
//! user's `nw-demo`.

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use nodeward_tests::{cgroup2_mount, require_root, sweep_prefix, Cluster};

/// How long a debug demo may take to print `demo ready`.
const READY: Duration = Duration::from_secs(180);

/// One `cargo xtask demo` under a test's own prefix.
struct Demo {
    prefix: String,
    bin_dir: PathBuf,
    xtask: Option<Child>,
    lines: Option<mpsc::Receiver<String>>,
}

impl Demo {
    fn new() -> Self {
        let exe = std::env::current_exe().expect("test exe");
        let bin_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target dir")
            .to_owned();
        assert!(
            bin_dir.join("xtask").exists() && bin_dir.join("nw-demo").exists(),
            "{}: build xtask and the binaries first (`cargo build -p xtask -p nodeward -p nodeward-tests --bins`)",
            bin_dir.display()
        );
        Self {
            prefix: Cluster::unique_prefix(),
            bin_dir,
            xtask: None,
            lines: None,
        }
    }

    fn xtask(&self) -> Command {
        let mut cmd = Command::new(self.bin_dir.join("xtask"));
        cmd.arg("demo")
            .env("NW_DEMO_BIN_DIR", &self.bin_dir)
            .env("NW_DEMO_PREFIX", &self.prefix)
            .stdin(Stdio::null());
        cmd
    }

    /// Starts `xtask demo` and waits for `demo ready`; the lines it printed.
    fn up(&mut self) -> Vec<String> {
        let mut child = self
            .xtask()
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn xtask demo");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                println!("demo: {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        self.xtask = Some(child);
        let mut seen = Vec::new();
        let deadline = Instant::now() + READY;
        while Instant::now() < deadline {
            match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(line) if line == "demo ready" => {
                    self.lines = Some(rx);
                    return seen;
                }
                Ok(line) => seen.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        panic!("no `demo ready` within {READY:?}:\n{}", seen.join("\n"));
    }

    /// `xtask demo <args>` run to completion.
    fn run(&self, args: &[&str]) -> Output {
        self.xtask().args(args).output().expect("run xtask demo")
    }

    /// `xtask demo exec POD -- argv`: (success, stdout, stderr).
    fn exec(&self, pod: &str, argv: &[&str]) -> (bool, String, String) {
        let mut args = vec!["exec", pod, "--"];
        args.extend_from_slice(argv);
        let out = self.run(&args);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The running `nw-demo`'s pid, from its owner file.
    fn owner(&self) -> Pid {
        let text = std::fs::read_to_string(std::env::temp_dir().join(&self.prefix).join("owner"))
            .expect("owner file");
        Pid::from_raw(text.trim().parse().expect("pid"))
    }

    /// Waits (up to 90 s) for the `xtask demo` process to exit.
    fn wait_xtask(&mut self) -> std::process::ExitStatus {
        let child = self.xtask.as_mut().expect("xtask running");
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.xtask = None;
                return status;
            }
            assert!(Instant::now() < deadline, "xtask demo did not exit");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn cgroup_root(&self) -> PathBuf {
        cgroup2_mount().expect("cgroup2").join(&self.prefix)
    }

    /// Every process in the demo's cgroup tree (proxies, pod servers) and
    /// the `nw-demo` itself.
    fn processes(&self) -> BTreeSet<i32> {
        let mut pids = BTreeSet::from([self.owner().as_raw()]);
        cgroup_procs(&self.cgroup_root(), &mut pids);
        pids
    }

    /// What is left of the demo: namespaces, cgroups, its directory, and
    /// which of `pids` still live.
    fn leftovers(&self, pids: &BTreeSet<i32>) -> Vec<String> {
        let mut left: Vec<String> = netns_names()
            .into_iter()
            .filter(|n| n.starts_with(&format!("{}-", self.prefix)))
            .map(|n| format!("netns {n}"))
            .collect();
        if self.cgroup_root().exists() {
            left.push(format!("cgroup {}", self.cgroup_root().display()));
        }
        let dir = std::env::temp_dir().join(&self.prefix);
        if dir.exists() {
            left.push(format!("directory {}", dir.display()));
        }
        for pid in pids {
            if alive(*pid) {
                left.push(format!("process {pid}"));
            }
        }
        left
    }
}

impl Drop for Demo {
    /// Whatever a failed test left: the xtask, the demo, its cluster.
    fn drop(&mut self) {
        if let Some(child) = &mut self.xtask {
            let _ = child.kill();
            let _ = child.wait();
        }
        let owner = std::env::temp_dir().join(&self.prefix).join("owner");
        if let Ok(pid) = std::fs::read_to_string(owner) {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                if comm(pid).as_deref() == Some("nw-demo") {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
        sweep_prefix(&self.prefix);
    }
}

fn cgroup_procs(dir: &Path, pids: &mut BTreeSet<i32>) {
    if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            cgroup_procs(&entry.path(), pids);
        }
    }
}

fn netns_names() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

fn comm(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim().to_owned())
}

/// A process that exists and is not a zombie.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}

/// Waits (up to 10 s) until none of `pids` lives; the ones that still do.
fn wait_gone(pids: &BTreeSet<i32>) -> Vec<i32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<i32> = pids.iter().copied().filter(|p| alive(*p)).collect();
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stop_by_signal_to_xtask(signal: Signal) {
    let mut demo = Demo::new();
    demo.up();
    let pids = demo.processes();
    assert!(pids.len() > 3, "proxies and servers run: {pids:?}");
    let xtask = demo.xtask.as_ref().expect("xtask").id();
    kill(Pid::from_raw(xtask as i32), signal).expect("signal xtask");
    let status = demo.wait_xtask();
    assert!(status.success(), "xtask after {signal:?}: {status}");
    assert_eq!(demo.leftovers(&pids), Vec::<String>::new());
}

#[test]
fn sigterm_to_xtask_tears_the_whole_demo_down() {
    if !require_root("sigterm_to_xtask_tears_the_whole_demo_down") {
        return;
    }
    stop_by_signal_to_xtask(Signal::SIGTERM);
}

#[test]
fn sighup_to_xtask_tears_the_whole_demo_down() {
    if !require_root("sighup_to_xtask_tears_the_whole_demo_down") {
        return;
    }
    // What a closing terminal sends.
    stop_by_signal_to_xtask(Signal::SIGHUP);
}

#[test]
fn a_killed_demo_is_swept_by_the_next_one_and_by_down() {
    if !require_root("a_killed_demo_is_swept_by_the_next_one_and_by_down") {
        return;
    }
    let mut demo = Demo::new();
    demo.up();
    let first = demo.processes();
    kill(demo.owner(), Signal::SIGKILL).expect("kill -9 nw-demo");
    assert!(!demo.wait_xtask().success());
    let left = first.iter().filter(|p| alive(**p)).count();
    assert!(
        left > 2,
        "the killed demo's proxies and servers are left running"
    );
    // The next demo finds the dead owner and sweeps what it left.
    demo.up();
    assert_eq!(wait_gone(&first), Vec::<i32>::new(), "the next demo sweeps");
    let second = demo.processes();
    kill(demo.owner(), Signal::SIGKILL).expect("kill -9 nw-demo");
    assert!(!demo.wait_xtask().success());
    let out = demo.run(&["--down"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(demo.leftovers(&second), Vec::<String>::new());
}

#[test]
fn exec_runs_a_command_as_a_pod_through_the_mesh() {
    if !require_root("exec_runs_a_command_as_a_pod_through_the_mesh") {
        return;
    }
    let mut demo = Demo::new();
    demo.up();
    let prefix = demo.prefix.clone();

    let (ok, cgroup, err) = demo.exec("frontend", &["cat", "/proc/self/cgroup"]);
    assert!(ok, "{err}");
    assert!(
        cgroup
            .trim()
            .ends_with(&format!("/{prefix}/node-a/frontend")),
        "{cgroup}"
    );
    let (ok, netns, err) = demo.exec("frontend", &["readlink", "/proc/self/ns/net"]);
    assert!(ok, "{err}");
    let pod_netns = std::fs::metadata(format!("/run/netns/{prefix}-frontend")).expect("netns");
    assert_eq!(netns.trim(), format!("net:[{}]", pod_netns.ino()));

    // Through the mesh, judged by the example policies.
    let backend = "http://10.20.2.10:8080";
    let status = |path: &str| {
        let url = format!("{backend}{path}");
        let (ok, out, err) = demo.exec(
            "frontend",
            &["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", &url],
        );
        assert!(ok, "curl {url}: {err}");
        out
    };
    // The demo's own burst may have just emptied frontend's rate-limit
    // bucket (5 requests, 5 more a second): wait for it to refill.
    let deadline = Instant::now() + Duration::from_secs(10);
    while status("/api/items") == "429" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(status("/api/items"), "200");
    assert_eq!(status("/admin"), "403");
    let (ok, metrics, err) = demo.exec("node-b", &["curl", "-s", "http://127.0.0.1:15020/metrics"]);
    assert!(
        ok && metrics.contains("nodeward_authz_decisions_total"),
        "{err}"
    );

    let (ok, _, err) = demo.exec("nosuchpod", &["true"]);
    assert!(!ok && err.contains("frontend"), "{err}");

    // `--down` stops the running demo through its pid file, and its
    // parent xtask exits as the demo ends.
    let pids = demo.processes();
    let out = demo.run(&["--down"]);
    assert!(out.status.success(), "{out:?}");
    assert!(demo.wait_xtask().success());
    assert_eq!(demo.leftovers(&pids), Vec::<String>::new());
    let (ok, _, err) = demo.exec("frontend", &["true"]);
    assert!(!ok && err.contains("no demo is running"), "{err}");
}

#[test]
fn the_demo_runs_under_its_own_copy_of_the_example_policies() {
    if !require_root("the_demo_runs_under_its_own_copy_of_the_example_policies") {
        return;
    }
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let examples = std::fs::canonicalize(examples).expect("policies/");
    let before = files(&examples);
    let mut demo = Demo::new();
    let printed = demo.up();
    let line = printed
        .iter()
        .find_map(|l| l.strip_prefix("policies: "))
        .unwrap_or_else(|| panic!("no policies line:\n{}", printed.join("\n")));
    let copy = PathBuf::from(line.split(" (").next().expect("path"));
    assert!(copy.is_dir(), "{}", copy.display());
    assert_ne!(std::fs::canonicalize(&copy).expect("copy"), examples);
    assert_eq!(files(&copy), before, "the copy holds every example file");
    // An edit to the copy never reaches the tracked directory.
    std::fs::write(copy.join("edit.yaml"), "# mine\n").expect("edit the copy");
    assert!(!examples.join("edit.yaml").exists());
    assert_eq!(files(&examples), before);
    let out = demo.run(&["--down"]);
    assert!(out.status.success(), "{out:?}");
    assert!(demo.wait_xtask().success());
    assert!(!copy.exists(), "the copy goes with the demo");
}

/// The regular files of `dir` with their contents.
fn files(dir: &Path) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = std::fs::read_dir(dir)
        .expect("read dir")
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read_to_string(e.path()).expect("read"),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn the_demo_calls_its_service_and_shows_the_calls_to_the_vip() {
    if !require_root("the_demo_calls_its_service_and_shows_the_calls_to_the_vip") {
        return;
    }
    let mut demo = Demo::new();
    let lines = demo.up();
    let calls: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("(Service backend.shop)"))
        .collect();
    assert_eq!(calls.len(), 2, "{lines:#?}");
    assert!(calls.iter().all(|l| l.contains("HTTP 200")), "{calls:#?}");
    let relayed = lines
        .iter()
        .filter(|l| l.contains("via Service backend.shop at 10.20.200.10:80"))
        .count();
    assert!(relayed >= 1, "{lines:#?}");
}

#[test]
fn the_demo_shows_end_user_tokens_allowed_refused_and_missing() {
    if !require_root("the_demo_shows_end_user_tokens_allowed_refused_and_missing") {
        return;
    }
    let mut demo = Demo::new();
    let lines = demo.up();
    for (what, status) in [
        ("(valid token)", "HTTP 200"),
        ("(expired token)", "HTTP 401"),
        ("(no token)", "HTTP 403"),
    ] {
        let line = lines
            .iter()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no {what} line:\n{lines:#?}"));
        assert!(line.contains(status), "{line}");
    }
}
