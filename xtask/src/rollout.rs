//! The image run the way the DaemonSet runs it, short of a kubelet: as
//! root with only the capabilities `deploy/30-daemonset.yaml` adds, a
//! read-only root filesystem, no seccomp profile, the node's cgroup tree
//! and a BPF filesystem mounted in. One container starts and pins its
//! programs; a second one in the same network namespace (as hostNetwork
//! pods share the node's) takes over with `--takeover`, the first exits 0;
//! stopping the second removes the pins.
//!
//! Each container has its own network namespace pair (`--network none`,
//! then `container:`), so nothing is bound or attached in the host's; the
//! programs attach to an empty cgroup made for the run.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{image, image::Podman, run, target_dir};

const DAEMONSET: &str = "deploy/30-daemonset.yaml";
const FIRST: &str = "nw-xtask-rollout-old";
const SECOND: &str = "nw-xtask-rollout-new";

/// Runs the scenario; prints SKIPPED when not root (a BPF filesystem
/// cannot be mounted, nor programs loaded).
pub fn test(podman: &Podman, bin: &Path) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        println!("SKIPPED image rollout test: needs root");
        return Ok(());
    }
    let work = Work::create(bin)?;
    let caps = capabilities()?;
    let args = work.container_args(&caps);
    let start = |name: &str, network: &str| {
        let mut a = vec!["run", "-d", "--name", name, "--network", network];
        a.extend(args.iter().map(String::as_str));
        podman.output(&a).map(drop)
    };
    start(FIRST, "none")?;
    wait_ready(podman, FIRST)?;
    if !work.pinned() {
        bail!("{FIRST} is ready but pinned nothing under its BPF filesystem");
    }
    start(SECOND, &format!("container:{FIRST}"))?;
    wait_ready(podman, SECOND)?;
    let old = podman.output(&["wait", FIRST])?;
    if old.trim() != "0" {
        bail!("the old instance exited {} after the takeover", old.trim());
    }
    podman.output(&["stop", "-t", "20", SECOND])?;
    let new = podman.output(&["wait", SECOND])?;
    if new.trim() != "0" || work.pinned() {
        bail!(
            "stopping the new instance: exit {}, pins left: {}",
            new.trim(),
            work.pinned()
        );
    }
    println!(
        "image rollout test: with only {} (read-only root, no seccomp): pinned, taken over, old exited 0, stopped clean",
        caps.join(", ")
    );
    Ok(())
}

/// Waits for `nodeward ready` in a container's log.
fn wait_ready(podman: &Podman, name: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let logs = podman.combined(&["logs", name])?;
        if logs.contains("\"nodeward ready\"") {
            return Ok(());
        }
        let running = podman.output(&["inspect", "-f", "{{.State.Running}}", name])?;
        if running.trim() != "true" || Instant::now() > deadline {
            bail!("{name} did not become ready:\n{logs}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The capabilities the DaemonSet adds (`capabilities: add:`), less those
/// this machine withholds from us (some sandboxes have no
/// CAP_SYS_RESOURCE; nodeward then starts with a warning).
fn capabilities() -> Result<Vec<String>> {
    let text = std::fs::read_to_string(DAEMONSET).context(DAEMONSET)?;
    let caps: Vec<String> = text
        .lines()
        .skip_while(|l| l.trim() != "add:")
        .skip(1)
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .map_while(|l| l.strip_prefix("- ").map(str::to_owned))
        .collect();
    if caps.is_empty() {
        bail!("{DAEMONSET}: no `capabilities: add:` list");
    }
    let bounding = bounding_set()?;
    Ok(caps
        .into_iter()
        .filter(|c| cap_bit(c).is_none_or(|bit| bounding & (1 << bit) != 0))
        .collect())
}

fn bounding_set() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .context("no CapBnd in /proc/self/status")
}

/// The bit of the capabilities a sandbox may lack (linux/capability.h).
fn cap_bit(cap: &str) -> Option<u32> {
    match cap {
        "SYS_RESOURCE" => Some(24),
        "PERFMON" => Some(38),
        "BPF" => Some(39),
        _ => None,
    }
}

/// The run's files, BPF filesystem and cgroup; removed on drop, with the
/// containers.
struct Work {
    dir: PathBuf,
    bpffs: PathBuf,
    cgroup: PathBuf,
    podman_cleanup: Vec<String>,
}

impl Work {
    fn create(bin: &Path) -> Result<Self> {
        let dir = std::path::absolute(target_dir().join("image/rollout"))?;
        if dir.exists() {
            // A killed earlier run may have left its mount behind.
            let _ = Command::new("umount")
                .arg(dir.join("bpffs"))
                .stderr(std::process::Stdio::null())
                .status();
            std::fs::remove_dir_all(&dir)?;
        }
        for sub in ["policies", "bpffs"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        if let Ok(podman) = Podman::new() {
            for name in [SECOND, FIRST] {
                let _ = podman.output(&["rm", "-f", "-t", "0", name]);
            }
        }
        let cgroup = cgroup2_mount()?.join(format!("nw-xtask-rollout-{}", std::process::id()));
        std::fs::create_dir_all(&cgroup).with_context(|| cgroup.display().to_string())?;
        let bpffs = dir.join("bpffs");
        let work = Self {
            dir,
            bpffs,
            cgroup,
            // The second shares the first's network namespace: podman
            // removes the first only once the second is gone.
            podman_cleanup: vec![SECOND.into(), FIRST.into()],
        };
        run(Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&work.bpffs))?;
        work.write_files(bin)?;
        Ok(work)
    }

    /// The node's CA (issued here, as `ca issue-node` would off the node),
    /// the example policies, an empty workloads file and the config.
    fn write_files(&self, bin: &Path) -> Result<()> {
        let ca = self.dir.join("ca");
        run(Command::new(bin).args(["ca", "init", "--out"]).arg(&ca))?;
        run(Command::new(bin)
            .args(["ca", "issue-node", "--node", "node-1", "--ca"])
            .arg(&ca)
            .arg("--out")
            .arg(self.dir.join("identity")))?;
        for entry in std::fs::read_dir("policies")? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "yaml") {
                std::fs::copy(
                    &path,
                    self.dir
                        .join("policies")
                        .join(path.file_name().context("name")?),
                )?;
            }
        }
        std::fs::write(
            self.dir.join("workloads.yaml"),
            "nodes: []\nworkloads: []\n",
        )?;
        let config = format!(
            "node: node-1\npodCgroup: {}\nmeshCidrs: [10.250.0.0/16]\n\
             proxyAddresses: {{ipv4: 127.0.0.1}}\nworkloadsFile: workloads.yaml\n\
             identity: {{dir: /etc/nodeward/identity}}\npolicy: {{dir: /etc/nodeward/policies}}\n\
             bpf: {{pinDir: /sys/fs/bpf/nodeward}}\nlifecycle: {{drainDeadline: 2s}}\n",
            self.cgroup.display()
        );
        std::fs::write(self.dir.join("config.yaml"), config)?;
        Ok(())
    }

    /// What both containers run with, as the DaemonSet's securityContext
    /// and volumes say.
    fn container_args(&self, caps: &[String]) -> Vec<String> {
        let d = self.dir.display();
        let mut args: Vec<String> = ["--user", "0", "--cap-drop", "all", "--read-only"]
            .map(String::from)
            .into();
        args.extend(["--cap-add".into(), caps.join(",")]);
        args.extend(["--security-opt".into(), "seccomp=unconfined".into()]);
        for volume in [
            format!("{d}:/etc/nodeward/config:ro"),
            format!("{d}/identity:/etc/nodeward/identity:ro"),
            format!("{d}/policies:/etc/nodeward/policies:ro"),
            format!("{}:/sys/fs/bpf", self.bpffs.display()),
            "/sys/fs/cgroup:/sys/fs/cgroup:rslave".into(),
        ] {
            args.extend(["-v".into(), volume]);
        }
        args.push(image::reference());
        args.extend(
            [
                "--log-format",
                "json",
                "run",
                "--config",
                "/etc/nodeward/config/config.yaml",
                "--takeover",
            ]
            .map(String::from),
        );
        args
    }

    fn pinned(&self) -> bool {
        self.bpffs.join("nodeward/links").exists()
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        for name in &self.podman_cleanup {
            let _ = Podman::new().and_then(|p| p.output(&["rm", "-f", "-t", "0", name]));
        }
        let _ = std::fs::remove_dir_all(self.bpffs.join("nodeward"));
        let _ = Command::new("umount").arg(&self.bpffs).status();
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}

/// The first cgroup2 mount point in this process's mountinfo.
fn cgroup2_mount() -> Result<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    info.lines()
        .find_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let mount_point = pre.split_whitespace().nth(4)?;
            (post.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .context("no cgroup2 filesystem mounted")
}
