//! `cargo xtask vm-test`: the end-to-end tests inside qemu, on Debian kernels.
//!
//! Everything is cached under `target/vm/`: each kernel series' `.deb`
//! (fetched with apt from the suite that carries it, through a private
//! sources list and state directory so nothing system-wide changes) and its
//! extracted tree; one Debian root filesystem built with mmdebstrap, keyed
//! by its package list. A tiny initramfs (static busybox and the modules the
//! guest needs, taken from the kernel's own `.deb`) mounts that root
//! read-only over 9p with a tmpfs overlay on top, then runs a job script
//! the host wrote: mount cgroup2 and bpffs, mount the workspace and the
//! target directory over 9p at the host's own paths, run the already-built
//! test binary. Nothing is compiled in the guest.
//!
//! qemu runs under TCG (these machines have no usable KVM: a KVM guest
//! hangs before its first console line), so expect minutes, not seconds.
//! The guest's exit code comes back in a file on the 9p share and as a
//! console marker; a guest that does neither before the timeout is killed
//! and reported as hung.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// A kernel series and the Debian suite whose `linux-image-amd64` carries it.
#[derive(Clone, Copy, Debug)]
pub struct Series {
    pub name: &'static str,
    suite: &'static str,
}

/// The kernels `--kernel all` runs, oldest first.
pub const SERIES: &[Series] = &[
    Series {
        name: "5.10",
        suite: "bullseye",
    },
    Series {
        name: "6.1",
        suite: "bookworm",
    },
    Series {
        name: "6.12",
        suite: "trixie",
    },
];

/// The Debian suite of the guest's root filesystem where the host is not
/// Debian (see [`rootfs_suite`]), and its packages.
const ROOTFS_SUITE: &str = "bookworm";
const ROOTFS_PACKAGES: &[&str] = &["iproute2", "procps"];

/// Kernel modules the guest loads before anything else: virtio-pci and
/// virtio-rng, 9p and overlay for
/// its root, veth and bridge for the e2e harness's networks, virtio-net for
/// the wire between two guests. A module built into the kernel is skipped.
const MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_rng",
    "9pnet_virtio",
    "9p",
    "overlay",
    "veth",
    "bridge",
    "virtio_net",
];

const MIRROR: &str = "http://deb.debian.org/debian";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// How the guest mounts its cgroups.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupMode {
    /// Pure cgroup v2 at `/sys/fs/cgroup`.
    Unified,
    /// systemd's hybrid layout: v1 controller hierarchies on a tmpfs at
    /// `/sys/fs/cgroup`, cgroup v2 (no controllers) at
    /// `/sys/fs/cgroup/unified`.
    Hybrid,
}

impl CgroupMode {
    fn name(self) -> &'static str {
        match self {
            Self::Unified => "unified",
            Self::Hybrid => "hybrid",
        }
    }
}

/// What to run in each guest.
pub struct Job {
    /// e2e test targets of nodeward-tests (`redirect`, `sockmap`, …).
    pub tests: Vec<String>,
    /// Passed to each test binary (a libtest filter and options).
    pub filter: Vec<String>,
    /// Kill a guest that has not reported back after this long.
    pub timeout: Duration,
    pub cgroup: CgroupMode,
    /// 1: both nodes of each test cluster in one guest (network
    /// namespaces); 2: each node in its own guest, the two joined by a
    /// virtual wire (see [`Wire`]).
    pub nodes: u8,
}

/// How one kernel's guest ended; saved as
/// `target/vm/runs/<series>-<cgroup>.json`, from which `matrix.md` is drawn.
#[derive(Debug, Serialize, Deserialize)]
pub struct Outcome {
    pub series: String,
    /// `uname -r`; empty when the `.deb` could not be had.
    pub release: String,
    pub cgroup: CgroupMode,
    /// Guests the cluster's two nodes ran in (1 or 2).
    #[serde(default = "one")]
    pub nodes: u8,
    /// When the run started (UTC) and the workspace's commit.
    pub date: String,
    pub commit: String,
    /// The arguments each test binary got.
    pub args: Vec<String>,
    /// Seconds from qemu's start to the job script running.
    pub boot: Option<f64>,
    /// Seconds from qemu's start to its end.
    pub total: f64,
    /// Why there was no guest (fetch, initramfs or qemu failed).
    pub error: Option<String>,
    /// With two guests: what went wrong with the second (node-b's agent).
    #[serde(default)]
    pub agent: Option<String>,
    pub hung: bool,
    /// `nodeward probe --format json` in the guest.
    pub probe: Option<Probe>,
    /// Why there is no probe report (its stderr, or that it never ran).
    pub probe_error: Option<String>,
    pub tests: Vec<TestRun>,
}

fn one() -> u8 {
    1
}

/// One e2e test binary in a guest. A run keeps the saved results of the
/// test files it did not run (see [`merge_earlier`]), so each carries its
/// own date, commit and arguments.
#[derive(Debug, Serialize, Deserialize)]
pub struct TestRun {
    pub name: String,
    /// Exit code; `None` when the guest never reported it.
    pub rc: Option<i32>,
    /// Seconds, guest clock.
    pub seconds: Option<f64>,
    /// When the run that ran this file started (UTC).
    #[serde(default)]
    pub date: String,
    /// The workspace's commit in that run.
    #[serde(default)]
    pub commit: String,
    /// The arguments the file's test binary got.
    #[serde(default)]
    pub args: Vec<String>,
    /// The guest hung before this file reported.
    #[serde(default)]
    pub hung: bool,
}

/// The part of `nodeward probe --format json` the matrix shows (unknown
/// fields are ignored: the probe may say more).
#[derive(Debug, Serialize, Deserialize)]
pub struct Probe {
    pub kernel: String,
    pub cgroup2: Option<String>,
    pub supported: bool,
    pub features: Vec<ProbeFeature>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ProbeFeature {
    pub feature: String,
    pub since: String,
    pub required: bool,
    pub available: bool,
    pub error: Option<String>,
}

impl Outcome {
    /// The cgroup mode, and `2 VMs` for a pair of guests.
    fn guests(&self) -> String {
        let vms = if self.nodes == 2 { ", 2 VMs" } else { "" };
        format!("{}{vms}", self.cgroup.name())
    }

    fn failed(&self) -> bool {
        self.error.is_some()
            || self.agent.is_some()
            || self.hung
            || self.probe.as_ref().is_none_or(|p| !p.supported)
            || self.tests.iter().any(|t| t.rc != Some(0))
    }
}

/// When and at which commit a run started.
struct Stamp {
    date: String,
    commit: String,
}

impl Stamp {
    fn now() -> Self {
        let out = |cmd: &mut Command| {
            cmd.output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_default()
        };
        let date = out(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]));
        let mut commit = out(Command::new("git").args(["rev-parse", "--short", "HEAD"]));
        // Uncommitted changes make the commit a lie: say so.
        if !out(Command::new("git").args(["status", "--porcelain", "--untracked-files=no"]))
            .is_empty()
        {
            commit.push_str("+changes");
        }
        Self { date, commit }
    }
}

/// Picks the kernel series for `--kernel` (`all` for every one).
pub fn select(kernel: &str) -> Result<Vec<Series>> {
    if kernel == "all" {
        return Ok(SERIES.to_vec());
    }
    match SERIES.iter().find(|s| s.name == kernel) {
        Some(s) => Ok(vec![*s]),
        None => bail!(
            "unknown kernel series {kernel:?}: one of {}, or all",
            SERIES.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// Builds what the guests run, boots one VM per kernel, writes
/// `target/vm/matrix.md`, and fails if any test failed, any guest hung or
/// could not be had, or a probe found a required feature missing.
pub fn run(target: &Path, series: &[Series], job: &Job) -> Result<()> {
    let vm = fs::canonicalize(target)?.join("vm");
    fs::create_dir_all(vm.join("runs"))?;
    let bins = build_tests(&job.tests)?;
    let nodeward = fs::canonicalize(target.join("debug/nodeward"))?;
    let rootfs = rootfs(&vm)?;
    let stamp = Stamp::now();
    let mut failed = Vec::new();
    for s in series {
        let mut outcome = guest(&vm, *s, &rootfs, &nodeward, &bins, job).unwrap_or_else(|e| {
            eprintln!("xtask vm-test: {}: {e:#}", s.name);
            Outcome {
                series: s.name.to_owned(),
                release: String::new(),
                cgroup: job.cgroup,
                nodes: job.nodes,
                date: String::new(),
                commit: String::new(),
                args: job.filter.clone(),
                boot: None,
                total: 0.0,
                error: Some(format!("{e:#}")),
                agent: None,
                hung: false,
                probe: None,
                probe_error: None,
                tests: Vec::new(),
            }
        });
        outcome.date.clone_from(&stamp.date);
        outcome.commit.clone_from(&stamp.commit);
        for t in &mut outcome.tests {
            t.date.clone_from(&stamp.date);
            t.commit.clone_from(&stamp.commit);
            t.args.clone_from(&job.filter);
            t.hung = outcome.hung && t.rc.is_none();
        }
        report(&outcome);
        let failed_now = outcome.failed();
        let saved = vm
            .join("runs")
            .join(saved_name(s.name, job.cgroup, job.nodes));
        merge_earlier(&mut outcome, &saved);
        fs::write(&saved, serde_json::to_string_pretty(&outcome)?)?;
        if failed_now {
            failed.push(s.name);
        }
    }
    let matrix = vm.join("matrix.md");
    fs::write(&matrix, render_matrix(&saved_outcomes(&vm)))?;
    eprintln!("xtask vm-test: wrote {}", matrix.display());
    if !failed.is_empty() {
        bail!("vm-test failed on kernel(s) {}", failed.join(", "));
    }
    Ok(())
}

/// `<series>-<cgroup>.json`, `-2vm` before the extension for two guests.
fn saved_name(series: &str, cgroup: CgroupMode, nodes: u8) -> String {
    let vms = if nodes == 2 { "-2vm" } else { "" };
    format!("{series}-{}{vms}.json", cgroup.name())
}

/// Keeps the earlier saved results of test files this run did not run, so
/// the matrix accumulates files run at different times (each row keeps its
/// own date and commit). The guest's own facts (release, probe) are this
/// run's.
fn merge_earlier(outcome: &mut Outcome, saved: &Path) {
    let Some(earlier) = fs::read_to_string(saved)
        .ok()
        .and_then(|t| serde_json::from_str::<Outcome>(&t).ok())
    else {
        return;
    };
    for mut t in earlier.tests {
        if outcome.tests.iter().any(|now| now.name == t.name) {
            continue;
        }
        // Saved before tests carried their own stamp.
        if t.date.is_empty() {
            t.date.clone_from(&earlier.date);
            t.commit.clone_from(&earlier.commit);
            t.args.clone_from(&earlier.args);
            t.hung = earlier.hung && t.rc.is_none();
        }
        outcome.tests.push(t);
    }
}

/// One kernel: its `.deb`, its initramfs, its guest (or two).
fn guest(
    vm: &Path,
    series: Series,
    rootfs: &Path,
    nodeward: &Path,
    bins: &[(String, PathBuf)],
    job: &Job,
) -> Result<Outcome> {
    let kernel = Kernel::fetch(vm, series).context("fetching the kernel")?;
    let initrd = kernel
        .initramfs()
        .with_context(|| format!("initramfs for {}", kernel.release))?;
    let boot = Boot {
        vm,
        kernel: &kernel,
        initrd: &initrd,
        rootfs,
        nodeward,
        bins,
        job,
    };
    if job.nodes == 2 {
        boot.pair().context("booting the two guests")
    } else {
        boot.alone().context("booting the guest")
    }
}

/// Every saved run, in [`SERIES`] order, unified before hybrid, one guest
/// before two.
fn saved_outcomes(vm: &Path) -> Vec<Outcome> {
    let mut all = Vec::new();
    for s in SERIES {
        for (mode, nodes) in [
            (CgroupMode::Unified, 1),
            (CgroupMode::Unified, 2),
            (CgroupMode::Hybrid, 1),
            (CgroupMode::Hybrid, 2),
        ] {
            let path = vm.join("runs").join(saved_name(s.name, mode, nodes));
            let Ok(text) = fs::read_to_string(&path) else {
                continue;
            };
            match serde_json::from_str(&text) {
                Ok(o) => all.push(o),
                Err(e) => eprintln!("xtask vm-test: ignoring {}: {e}", path.display()),
            }
        }
    }
    all
}

/// The debug `nodeward` and `nw-pod` (the harness runs them as siblings of
/// the test binary) and the test binaries, built on the host.
fn build_tests(tests: &[String]) -> Result<Vec<(String, PathBuf)>> {
    crate::cargo(&["build", "-p", "nodeward", "-p", "nodeward-tests", "--bins"])?;
    let mut args = vec![
        "test",
        "-p",
        "nodeward-tests",
        "--no-run",
        "--message-format=json",
    ];
    for t in tests {
        args.extend(["--test", t.as_str()]);
    }
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(&args)
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("cargo test --no-run failed: {}", out.status);
    }
    let mut bins = Vec::new();
    for line in out.stdout.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let msg: serde_json::Value = serde_json::from_slice(line)?;
        let (Some(name), Some(exe)) = (msg["target"]["name"].as_str(), msg["executable"].as_str())
        else {
            continue;
        };
        if tests.iter().any(|t| t == name) && msg["profile"]["test"] == true {
            bins.push((name.to_owned(), PathBuf::from(exe)));
        }
    }
    if bins.len() != tests.len() {
        bail!("found test binaries {bins:?}, wanted {tests:?}");
    }
    Ok(bins)
}

/// The guest's root: a minimal Debian built once with mmdebstrap, keyed by
/// suite and package list (a new list builds a new directory).
fn rootfs(vm: &Path) -> Result<PathBuf> {
    let suite = rootfs_suite();
    let dir = vm.join(format!("rootfs-{suite}-{}", ROOTFS_PACKAGES.join("-")));
    if dir.join("usr/bin").is_dir() {
        return Ok(dir);
    }
    let tmp = dir.with_extension("tmp");
    let _ = fs::remove_dir_all(&tmp);
    eprintln!("xtask vm-test: building {} with mmdebstrap", dir.display());
    crate::run(
        Command::new("nice")
            .args(["-n", "10", "mmdebstrap", "--variant=minbase", "--quiet"])
            .arg(format!("--include={}", ROOTFS_PACKAGES.join(",")))
            .arg(&suite)
            .arg(&tmp)
            .arg(MIRROR),
    )?;
    fs::rename(&tmp, &dir)?;
    Ok(dir)
}

/// The host's own Debian suite (`VERSION_CODENAME` in `/etc/os-release`),
/// so the host-built binaries find the glibc they were linked against in
/// the guest; [`ROOTFS_SUITE`] on a host that is not Debian.
fn rootfs_suite() -> String {
    let release = fs::read_to_string("/etc/os-release").unwrap_or_default();
    let field = |key: &str| {
        release
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(|v| v.trim_matches('"').to_owned())
    };
    match (field("ID").as_deref(), field("VERSION_CODENAME")) {
        (Some("debian"), Some(codename)) if !codename.is_empty() => codename,
        _ => {
            eprintln!("xtask vm-test: not a Debian host: the guest's root is {ROOTFS_SUITE}, whose glibc may be older than the binaries need");
            ROOTFS_SUITE.to_owned()
        }
    }
}

/// One kernel series' extracted `.deb` under `target/vm/kernel-<series>/`.
struct Kernel {
    series: Series,
    dir: PathBuf,
    /// `uname -r`, e.g. `6.1.0-57-amd64`.
    release: String,
}

impl Kernel {
    /// Downloads and extracts the series' newest `linux-image-*-amd64`
    /// unless a previous run did.
    fn fetch(vm: &Path, series: Series) -> Result<Self> {
        let dir = vm.join(format!("kernel-{}", series.name));
        let root = dir.join("root");
        if let Some(release) = release_in(&root)? {
            return Ok(Self {
                series,
                dir,
                release,
            });
        }
        fs::create_dir_all(dir.join("apt/lists/partial"))?;
        fs::create_dir_all(dir.join("apt/cache/archives/partial"))?;
        let sources = dir.join("apt/sources.list");
        fs::write(
            &sources,
            format!("deb [signed-by={KEYRING}] {MIRROR} {} main\n", series.suite),
        )?;
        let apt = |tool: &str| {
            let mut c = Command::new(tool);
            c.current_dir(&dir)
                .arg("-q")
                .arg(format!("-oDir::Etc::sourcelist={}", sources.display()))
                .arg("-oDir::Etc::sourceparts=-")
                .arg(format!(
                    "-oDir::State::Lists={}",
                    dir.join("apt/lists").display()
                ))
                .arg(format!("-oDir::Cache={}", dir.join("apt/cache").display()))
                // The download lands in our own directory, which _apt
                // cannot write.
                .arg("-oAPT::Sandbox::User=root");
            c
        };
        crate::run(apt("apt-get").arg("update"))?;
        let depends = apt("apt-cache")
            .args(["depends", "linux-image-amd64"])
            .output()?;
        let package = String::from_utf8_lossy(&depends.stdout)
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .find(|p| p.starts_with("linux-image-") && p.ends_with("-amd64"))
            .map(str::to_owned)
            .with_context(|| format!("no linux-image in {}'s linux-image-amd64", series.suite))?;
        eprintln!("xtask vm-test: fetching {package} from {}", series.suite);
        crate::run(apt("apt-get").args(["download", &package]))?;
        let deb = fs::read_dir(&dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&package) && n.ends_with(".deb"))
            })
            .context("the downloaded .deb")?;
        let tmp = dir.join("root.tmp");
        let _ = fs::remove_dir_all(&tmp);
        // A root without a release is a failed earlier run's.
        let _ = fs::remove_dir_all(&root);
        crate::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp))?;
        fs::rename(&tmp, &root)?;
        let release = release_in(&root)?.context("no lib/modules in the kernel .deb")?;
        if !release.starts_with(&format!("{}.", series.name)) {
            bail!(
                "{}'s kernel is {release}, not {}: update SERIES",
                series.suite,
                series.name
            );
        }
        Ok(Self {
            series,
            dir,
            release,
        })
    }

    fn vmlinuz(&self) -> PathBuf {
        self.dir.join(format!("root/boot/vmlinuz-{}", self.release))
    }

    /// An uncompressed cpio (nothing to inflate under TCG): static busybox,
    /// the init script, and [`MODULES`] with their dependencies, in load
    /// order and decompressed (busybox's insmod takes plain `.ko`).
    fn initramfs(&self) -> Result<PathBuf> {
        let out = self.dir.join("initrd.cpio");
        let tree = self.dir.join("initrd");
        let _ = fs::remove_dir_all(&tree);
        fs::create_dir_all(tree.join("bin"))?;
        fs::create_dir_all(tree.join("modules"))?;
        fs::copy("/bin/busybox", tree.join("bin/busybox"))
            .context("static busybox (apt-get install busybox-static)")?;
        write_exec(&tree.join("init"), INIT)?;
        let mut names = String::new();
        for (name, data) in self.module_order()? {
            fs::write(tree.join("modules").join(format!("{name}.ko")), data)?;
            names.push_str(&format!("{name}.ko\n"));
        }
        fs::write(tree.join("modules/order"), names)?;
        let cpio = fs::File::create(&out)?;
        let mut child = Command::new("cpio")
            .args(["--quiet", "-o", "-H", "newc"])
            .current_dir(&tree)
            .stdin(Stdio::piped())
            .stdout(cpio)
            .spawn()
            .context("running cpio (apt-get install cpio)")?;
        let mut list = String::from(".\n");
        for entry in walk(&tree)? {
            list.push_str(&format!("./{}\n", entry.strip_prefix(&tree)?.display()));
        }
        child
            .stdin
            .take()
            .context("cpio stdin")?
            .write_all(list.as_bytes())?;
        if !child.wait()?.success() {
            bail!("cpio failed");
        }
        Ok(out)
    }

    /// [`MODULES`] and what they depend on, each after its dependencies,
    /// as (name, decompressed `.ko`). The `.deb` ships no `modules.dep`
    /// (its postinst runs depmod), so the dependencies come from each
    /// module's own `depends=` modinfo field. Built-in modules are left out.
    fn module_order(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let base = modules_dir(&self.dir.join("root")).join(&self.release);
        let index: BTreeMap<String, PathBuf> = walk(&base.join("kernel"))?
            .into_iter()
            .filter(|p| p.is_file() && p.to_str().is_some_and(|s| s.contains(".ko")))
            .filter_map(|p| Some((module_name(p.to_str()?), p)))
            .collect();
        let builtin = fs::read_to_string(base.join("modules.builtin")).unwrap_or_default();
        let builtin: Vec<String> = builtin.lines().map(module_name).collect();
        let mut order = Vec::new();
        for m in MODULES {
            self.add_module(&m.replace('-', "_"), &index, &builtin, &mut order)?;
        }
        Ok(order)
    }

    fn add_module(
        &self,
        name: &str,
        index: &BTreeMap<String, PathBuf>,
        builtin: &[String],
        order: &mut Vec<(String, Vec<u8>)>,
    ) -> Result<()> {
        if order.iter().any(|(n, _)| n == name) {
            return Ok(());
        }
        let Some(path) = index.get(name) else {
            if builtin.iter().any(|b| b == name) {
                return Ok(());
            }
            bail!("{}: no module {name}", self.release);
        };
        let data = decompress(path)?;
        for dep in modinfo_depends(&data) {
            self.add_module(&dep, index, builtin, order)?;
        }
        order.push((name.to_owned(), data));
        Ok(())
    }
}

/// The `depends=` field of a module's `.modinfo` section.
fn modinfo_depends(ko: &[u8]) -> Vec<String> {
    let key = b"\0depends=";
    let Some(at) = ko.windows(key.len()).position(|w| w == key) else {
        return Vec::new();
    };
    let rest = &ko[at + key.len()..];
    let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|d| !d.is_empty())
        .map(|d| d.replace('-', "_"))
        .collect()
}

/// `lib/modules`, or `usr/lib/modules` in a merged-/usr `.deb` (trixie).
fn modules_dir(root: &Path) -> PathBuf {
    let usr = root.join("usr/lib/modules");
    if usr.is_dir() {
        usr
    } else {
        root.join("lib/modules")
    }
}

/// The one release under the modules directory, if the `.deb` was extracted.
fn release_in(root: &Path) -> Result<Option<String>> {
    let Ok(entries) = fs::read_dir(modules_dir(root)) else {
        return Ok(None);
    };
    for e in entries {
        let name = e?.file_name().to_string_lossy().into_owned();
        if root.join(format!("boot/vmlinuz-{name}")).exists() {
            return Ok(Some(name));
        }
    }
    Ok(None)
}

/// `kernel/net/9p/9pnet_virtio.ko.xz` → `9pnet_virtio` (kernel spelling: `_`).
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
}

fn decompress(path: &Path) -> Result<Vec<u8>> {
    let tool = match path.extension().and_then(|e| e.to_str()) {
        Some("xz") => "xz",
        Some("zst") => "zstd",
        Some("gz") => "gzip",
        _ => return Ok(fs::read(path)?),
    };
    let out = Command::new(tool).arg("-dc").arg(path).output()?;
    if !out.status.success() {
        bail!("{tool} -dc {} failed", path.display());
    }
    Ok(out.stdout)
}

fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut all = Vec::new();
    for e in fs::read_dir(dir)? {
        let p = e?.path();
        all.push(p.clone());
        if p.is_dir() {
            all.extend(walk(&p)?);
        }
    }
    Ok(all)
}

fn write_exec(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::write(path, text)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// The initramfs' init: modules, the 9p root under a tmpfs overlay, then
/// the host's job script as the new root's PID 1.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /lower /upper /newroot
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "nw-vm: init on $(uname -r)"
while read m; do insmod /modules/$m || echo "nw-vm: insmod $m failed"; done < /modules/order
O=trans=virtio,version=9p2000.L,msize=262144
mount -t 9p -o $O,ro rootfs /lower || echo "nw-vm: cannot mount the root"
mount -t tmpfs -o size=512m tmpfs /upper
mkdir -p /upper/u /upper/w
mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w /newroot
mkdir -p /newroot/nw-vm
mount -t 9p -o $O run /newroot/nw-vm
mount --move /dev /newroot/dev
umount /proc /sys
exec switch_root /newroot /bin/sh /nw-vm/job.sh
echo "nw-vm: switch_root failed"
echo o > /proc/sysrq-trigger
"#;

/// The job script (PID 1 in the guest's root): the filesystems the harness
/// needs, the host's directories at their host paths, `nodeward probe`,
/// then each test; in the second of two guests, the agent instead.
fn job_script(
    shares: &[(String, PathBuf, bool)],
    nodeward: &Path,
    bins: &[(String, PathBuf)],
    job: &Job,
    role: &Role,
) -> String {
    let mut s = String::from(
        "#!/bin/sh\n\
         export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root CI=1\n\
         export NW_TEST_PATIENCE=10\n\
         mount -t proc proc /proc; mount -t sysfs sysfs /sys\n\
         mount -t tmpfs tmpfs /tmp; mount -t tmpfs tmpfs /run\n",
    );
    s.push_str(match job.cgroup {
        CgroupMode::Unified => "mount -t cgroup2 cgroup2 /sys/fs/cgroup\n",
        CgroupMode::Hybrid => HYBRID_CGROUPS,
    });
    s.push_str(
        "mount -t bpf bpf /sys/fs/bpf\n\
         mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null\n\
         ip link set lo up\n\
         echo \"nw-vm-booted $(cut -d' ' -f1 /proc/uptime)\"\n\
         grep -E ' - (cgroup|cgroup2) ' /proc/self/mountinfo | sed 's/^/nw-vm-cgroup: /'\n\
         O=trans=virtio,version=9p2000.L,msize=262144\n",
    );
    for (tag, path, ro) in shares {
        let p = shell_quote(&path.display().to_string());
        let ro = if *ro { ",ro" } else { "" };
        s.push_str(&format!("mkdir -p {p}; mount -t 9p -o $O{ro} {tag} {p}\n"));
    }
    if let Some(env) = role.env() {
        s.push_str(&env);
    }
    if let Role::Agent(wire) = role {
        s.push_str(&format!(
            "echo \"nw-vm-agent start $(cut -d' ' -f1 /proc/uptime)\"\n\
             {}\n\
             echo \"nw-vm-agent exit=$? $(cut -d' ' -f1 /proc/uptime)\"\n\
             sync\necho nw-vm-done\necho o > /proc/sysrq-trigger\nsleep 60\n",
            shell_quote(&wire.agent.display().to_string())
        ));
        return s;
    }
    // The probe's JSON goes to the host through the run share; the
    // verdict also to the console.
    s.push_str(&format!(
        "echo \"nw-vm-probe start $(cut -d' ' -f1 /proc/uptime)\"\n\
         {} probe --format json > /nw-vm/probe.json 2> /nw-vm/probe.err\n\
         echo \"nw-vm-probe exit=$? $(cut -d' ' -f1 /proc/uptime)\"\n",
        shell_quote(&nodeward.display().to_string())
    ));
    let mut filter: Vec<String> = job.filter.iter().map(|f| shell_quote(f)).collect();
    if let Role::Driver(_) = role {
        // One agent serves one cluster at a time.
        if !job.filter.iter().any(|f| f.starts_with("--test-threads")) {
            filter.push("--test-threads=1".to_owned());
        }
    }
    for (name, exe) in bins {
        // cargo runs a test binary in its package's directory. Afterwards
        // the console says what the harness left running (its cleanup
        // kills through cgroup.kill, which is 5.14+).
        s.push_str(&format!(
            "echo \"nw-vm-test {name} start $(cut -d' ' -f1 /proc/uptime)\"\n\
             (cd \"$NW_TESTS_DIR\" && {} {})\n\
             rc=$?; echo \"$rc\" > /nw-vm/exit-{name}\n\
             echo \"nw-vm-test {name} exit=$rc $(cut -d' ' -f1 /proc/uptime)\"\n\
             echo \"nw-vm-leftover {name}: $(pgrep -c -x nodeward) nodeward, $(pgrep -c -x nw-pod) nw-pod, \
             $(ls /run/netns 2>/dev/null | wc -l) netns\"\n",
            shell_quote(&exe.display().to_string()),
            filter.join(" ")
        ));
    }
    if let Role::Driver(wire) = role {
        s.push_str(&format!(
            "{} done\n",
            shell_quote(&wire.agent.display().to_string())
        ));
    }
    s.push_str("sync\necho nw-vm-done\necho o > /proc/sysrq-trigger\nsleep 60\n");
    s
}

/// systemd's hybrid layout (`systemd.unified_cgroup_hierarchy=0`): a tmpfs
/// at `/sys/fs/cgroup`, one cgroup v1 hierarchy per controller group
/// systemd mounts (a controller the kernel lacks is said and skipped),
/// its named `systemd` hierarchy, and cgroup2 with no controllers at
/// `unified`. The harness and nodeward find cgroup2 by mountinfo.
const HYBRID_CGROUPS: &str = "\
mount -t tmpfs -o mode=755 tmpfs /sys/fs/cgroup
for c in cpu,cpuacct memory pids blkio devices freezer net_cls,net_prio perf_event cpuset hugetlb rdma misc; do
  mkdir -p /sys/fs/cgroup/$c
  mount -t cgroup -o $c cgroup /sys/fs/cgroup/$c 2>/dev/null || { echo \"nw-vm: no cgroup v1 $c\"; rmdir /sys/fs/cgroup/$c; }
done
mkdir -p /sys/fs/cgroup/unified /sys/fs/cgroup/systemd
mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified
mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd
";

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// What a guest plays in a run.
enum Role {
    /// The only guest: both nodes of each cluster in it.
    Alone,
    /// The first of two: runs the tests, with node-a.
    Driver(Wire),
    /// The second of two: runs `nw-vm-node` with node-b until the driver is done.
    Agent(Wire),
}

/// The wire between two guests: qemu's `dgram` netdev over a pair of Unix
/// datagram sockets on the host (no port, no host interface, nothing
/// routed: frames go only from one qemu to the other), a virtio NIC with
/// a known MAC in each guest, and the directory the harness and the agent
/// exchange requests in (see `nodeward_tests::remote`), inside the shared
/// target directory.
struct Wire {
    dir: PathBuf,
    agent: PathBuf,
}

/// The MAC address of each guest's NIC on the wire.
const WIRE_MACS: [&str; 2] = ["52:54:00:99:00:01", "52:54:00:99:00:02"];

impl Wire {
    fn socket(&self, i: usize) -> PathBuf {
        self.dir.join(format!("wire-{i}.sock"))
    }
}

impl Role {
    /// Index on the wire, node name.
    fn side(&self) -> Option<(&Wire, usize, &'static str)> {
        match self {
            Self::Alone => None,
            Self::Driver(w) => Some((w, 0, "node-a")),
            Self::Agent(w) => Some((w, 1, "node-b")),
        }
    }

    /// The variables that tell the harness (or the agent) its part.
    fn env(&self) -> Option<String> {
        let (wire, i, node) = self.side()?;
        let dir = shell_quote(&wire.dir.display().to_string());
        Some(format!(
            "export NW_SPLIT_DIR={dir} NW_SPLIT_NODE={node} NW_SPLIT_LINK={}\n\
             export TMPDIR={dir}/tmp; mkdir -p \"$TMPDIR\"\n",
            WIRE_MACS[i]
        ))
    }

    /// qemu's NIC on the wire.
    fn qemu_args(&self) -> Vec<String> {
        let Some((wire, i, _)) = self.side() else {
            return Vec::new();
        };
        vec![
            "-netdev".into(),
            format!(
                "dgram,id=wire,local.type=unix,local.path={},remote.type=unix,remote.path={}",
                wire.socket(i).display(),
                wire.socket(1 - i).display()
            ),
            "-device".into(),
            format!("virtio-net-pci,netdev=wire,mac={}", WIRE_MACS[i]),
        ]
    }

    fn suffix(&self) -> &'static str {
        match self {
            Self::Alone | Self::Driver(_) => "",
            Self::Agent(_) => "-node-b",
        }
    }
}

/// What booting needs.
struct Boot<'a> {
    vm: &'a Path,
    kernel: &'a Kernel,
    initrd: &'a Path,
    rootfs: &'a Path,
    nodeward: &'a Path,
    bins: &'a [(String, PathBuf)],
    job: &'a Job,
}

/// A guest running.
struct Launched {
    child: std::process::Child,
    reader: std::thread::JoinHandle<Console>,
    started: Instant,
    run: PathBuf,
    tag: String,
}

/// A guest ended.
struct Ended {
    hung: bool,
    total: Duration,
    console: Console,
    run: PathBuf,
    tag: String,
}

impl Boot<'_> {
    /// Boots one guest and waits for it to power off, or kills it at the timeout.
    fn alone(&self) -> Result<Outcome> {
        let guest = self.launch(&Role::Alone)?;
        let deadline = guest.started + self.job.timeout;
        let ended = guest.wait(deadline)?;
        self.outcome(ended)
    }

    /// Boots the agent's guest (node-b), then the driver's (node-a, the
    /// tests), joined by a wire; waits for the driver, then for the agent,
    /// which powers off once the driver says it is done.
    fn pair(&self) -> Result<Outcome> {
        let dir = self.vm.join(format!("nw-vm-{}-wire", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        let agent = self
            .bins
            .first()
            .and_then(|(_, exe)| exe.parent()?.parent().map(|d| d.join("nw-vm-node")))
            .context("no test binary")?;
        let wire = || Wire {
            dir: dir.clone(),
            agent: agent.clone(),
        };
        let second = self.launch(&Role::Agent(wire()))?;
        let first = self.launch(&Role::Driver(wire()));
        let first = match first {
            Ok(g) => g,
            Err(e) => {
                let _ = second.wait(Instant::now());
                return Err(e);
            }
        };
        let deadline = first.started + self.job.timeout;
        let ended = match first.wait(deadline) {
            Ok(ended) => ended,
            Err(e) => {
                let _ = second.wait(Instant::now());
                return Err(e);
            }
        };
        // The driver told the agent it is done; a driver that hung did not.
        let patience = if ended.hung {
            Duration::ZERO
        } else {
            Duration::from_secs(120)
        };
        let other = second.wait(Instant::now() + patience)?;
        let _ = fs::remove_dir_all(&dir);
        let _ = fs::remove_dir_all(&other.run);
        let mut outcome = self.outcome(ended)?;
        outcome.agent = other
            .hung
            .then(|| "the second guest (node-b's agent) did not power off".to_owned());
        Ok(outcome)
    }

    fn launch(&self, role: &Role) -> Result<Launched> {
        let (kernel, job) = (self.kernel, self.job);
        let series = kernel.series.name;
        let tag = format!("{series}-{}{}", job.cgroup.name(), role.suffix());
        let prefix = format!("nw-vm-{}-{tag}", std::process::id());
        let run = self.vm.join(&prefix);
        let _ = fs::remove_dir_all(&run);
        fs::create_dir_all(&run)?;
        let src = fs::canonicalize(".")?;
        let target = fs::canonicalize(crate::target_dir())?;
        // Shorter paths first, so a target dir inside the workspace is mounted
        // over the workspace's (read-only) one.
        let shares = vec![
            ("src".to_owned(), src.clone(), true),
            ("target".to_owned(), target, false),
        ];
        let mut script = job_script(&shares, self.nodeward, self.bins, job, role);
        script.insert_str(
            script.find('\n').unwrap_or(0) + 1,
            &format!(
                "NW_TESTS_DIR={}\n",
                shell_quote(&src.join("tests").display().to_string())
            ),
        );
        write_exec(&run.join("job.sh"), &script)?;
        let mut qemu = Command::new("nice");
        qemu.args(["-n", "10", "qemu-system-x86_64", "-name", &prefix])
            .args([
                "-accel",
                "tcg,thread=multi",
                "-cpu",
                "max",
                "-smp",
                "2",
                "-m",
                "2048",
            ])
            .args([
                "-nodefaults",
                "-display",
                "none",
                "-serial",
                "stdio",
                "-no-reboot",
            ])
            .arg("-kernel")
            .arg(kernel.vmlinuz())
            .arg("-initrd")
            .arg(self.initrd)
            .args(["-append", "console=ttyS0 panic=-1 loglevel=4"])
            // Entropy from the host: a guest kernel seeds its CRNG slowly
            // under TCG, and TLS handshakes in it want random bytes.
            .args(["-device", "virtio-rng-pci"])
            .args(role.qemu_args());
        let virtfs = |tag: &str, path: &Path, ro: bool| {
            format!(
                "local,path={},mount_tag={tag},security_model=none{}",
                path.display(),
                if ro { ",readonly=on" } else { "" }
            )
        };
        qemu.arg("-virtfs").arg(virtfs("rootfs", self.rootfs, true));
        qemu.arg("-virtfs").arg(virtfs("run", &run, false));
        for (tag, path, ro) in &shares {
            qemu.arg("-virtfs").arg(virtfs(tag, path, *ro));
        }
        eprintln!(
            "xtask vm-test: booting {} ({}, cgroup {}) as {prefix}, timeout {}s",
            kernel.release,
            kernel.series.suite,
            job.cgroup.name(),
            job.timeout.as_secs()
        );
        let started = Instant::now();
        let mut child = qemu
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("running qemu-system-x86_64 (apt-get install qemu-system-x86)")?;
        let stdout = child.stdout.take().context("qemu stdout")?;
        let log_path = self.vm.join(format!("console-{tag}.log"));
        let label = format!("{series}{}", role.suffix());
        let reader = std::thread::spawn(move || -> Console {
            let mut log = fs::File::create(&log_path).ok();
            let mut console = Console::default();
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                if let Some(f) = log.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
                if console.booted.is_none() && line.starts_with("nw-vm-booted") {
                    console.booted = Some(started.elapsed());
                }
                console.note_test(&line);
                eprintln!("[{label}] {line}");
            }
            console
        });
        Ok(Launched {
            child,
            reader,
            started,
            run,
            tag,
        })
    }

    /// The driver's (or only) guest's outcome.
    fn outcome(&self, ended: Ended) -> Result<Outcome> {
        let Ended {
            hung,
            total,
            console,
            run,
            tag,
        } = ended;
        let tests = self
            .bins
            .iter()
            .map(|(name, _)| TestRun {
                name: name.clone(),
                rc: fs::read_to_string(run.join(format!("exit-{name}")))
                    .ok()
                    .and_then(|s| s.trim().parse().ok()),
                seconds: console.seconds(name),
                date: String::new(),
                commit: String::new(),
                args: Vec::new(),
                hung: false,
            })
            .collect();
        let (probe, probe_error) = read_probe(&run, &self.vm.join(format!("probe-{tag}.json")));
        fs::remove_dir_all(&run)?;
        Ok(Outcome {
            series: self.kernel.series.name.to_owned(),
            release: self.kernel.release.clone(),
            cgroup: self.job.cgroup,
            nodes: self.job.nodes,
            date: String::new(),
            commit: String::new(),
            args: self.job.filter.clone(),
            boot: console.booted.map(|b| b.as_secs_f64()),
            total: total.as_secs_f64(),
            error: None,
            agent: None,
            hung,
            probe,
            probe_error,
            tests,
        })
    }
}

impl Launched {
    /// Waits for the guest to power off; kills it past `deadline`.
    fn wait(mut self, deadline: Instant) -> Result<Ended> {
        let hung = loop {
            if self.child.try_wait()?.is_some() {
                break false;
            }
            if Instant::now() > deadline {
                // Our own qemu, by its pid (nice exec()s it).
                let _ = self.child.kill();
                let _ = self.child.wait();
                break true;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let total = self.started.elapsed();
        let console = self.reader.join().unwrap_or_default();
        Ok(Ended {
            hung,
            total,
            console,
            run: self.run,
            tag: self.tag,
        })
    }
}

/// What the host learns from the guest's console.
#[derive(Default)]
struct Console {
    /// qemu's start to the job script's first line.
    booted: Option<Duration>,
    /// Test name → (start, end) in guest uptime seconds.
    tests: BTreeMap<String, (Option<f64>, Option<f64>)>,
}

impl Console {
    /// `nw-vm-test NAME start UPTIME` and `nw-vm-test NAME exit=RC UPTIME`.
    fn note_test(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("nw-vm-test ") else {
            return;
        };
        let words: Vec<&str> = rest.split_whitespace().collect();
        let [name, what, uptime] = words[..] else {
            return;
        };
        let Ok(uptime) = uptime.parse::<f64>() else {
            return;
        };
        let entry = self.tests.entry(name.to_owned()).or_default();
        if what == "start" {
            entry.0 = Some(uptime);
        } else if what.starts_with("exit=") {
            entry.1 = Some(uptime);
        }
    }

    fn seconds(&self, name: &str) -> Option<f64> {
        match self.tests.get(name)? {
            (Some(start), Some(end)) => Some(end - start),
            _ => None,
        }
    }
}

/// The guest's probe report: copied to `keep` (as the probe wrote it) and
/// parsed, or why there is none.
fn read_probe(run: &Path, keep: &Path) -> (Option<Probe>, Option<String>) {
    let json = match fs::read_to_string(run.join("probe.json")) {
        Ok(json) if !json.trim().is_empty() => json,
        _ => {
            let err = fs::read_to_string(run.join("probe.err")).unwrap_or_default();
            let why = if err.trim().is_empty() {
                "the probe never ran or printed nothing".to_owned()
            } else {
                err.trim().to_owned()
            };
            return (None, Some(why));
        }
    };
    let _ = fs::write(keep, &json);
    match serde_json::from_str(&json) {
        Ok(probe) => (Some(probe), None),
        Err(e) => (None, Some(format!("unreadable probe report: {e}"))),
    }
}

fn report(o: &Outcome) {
    if let Some(e) = &o.error {
        eprintln!(
            "xtask vm-test: {} ({}): no guest: {e}",
            o.series,
            o.cgroup.name()
        );
        return;
    }
    eprintln!(
        "xtask vm-test: {} ({}, cgroup {}): booted in {}, {:.0}s in all{}",
        o.series,
        o.release,
        o.cgroup.name(),
        seconds(o.boot, "never"),
        o.total,
        if o.hung {
            ", HUNG: killed at the timeout"
        } else {
            ""
        }
    );
    match (&o.probe, &o.probe_error) {
        (Some(p), _) => {
            for f in &p.features {
                let state = if f.available { "yes" } else { "NO" };
                eprintln!(
                    "  probe {:<16} {state} {}",
                    f.feature,
                    summary(f.error.as_deref().unwrap_or(""))
                );
            }
        }
        (None, why) => eprintln!("  probe: none: {}", why.as_deref().unwrap_or("")),
    }
    for t in &o.tests {
        eprintln!(
            "  {}: {} ({})",
            t.name,
            describe(t.rc),
            seconds(t.seconds, "?")
        );
    }
}

fn seconds(s: Option<f64>, none: &str) -> String {
    s.map_or(none.to_owned(), |s| format!("{s:.0} s"))
}

fn describe(rc: Option<i32>) -> String {
    match rc {
        Some(0) => "pass".into(),
        Some(rc) => format!("FAIL (exit {rc})"),
        None => "no result".into(),
    }
}

/// `target/vm/matrix.md`: the guests, kernel × feature (from `nodeward
/// probe`) and kernel × test file, each row from the last run of that
/// kernel and cgroup mode.
fn render_matrix(outcomes: &[Outcome]) -> String {
    let mut md = String::from(
        "# nodeward on Debian kernels (qemu, TCG)\n\n\
         Written by `cargo xtask vm-test` from the last run of each kernel and cgroup mode \
         (`target/vm/runs/`); each row names the date and commit of its run. \
         `unified`: pure cgroup v2; `hybrid`: cgroup v1 controllers, cgroup2 at \
         `/sys/fs/cgroup/unified`, as systemd's hybrid mode mounts them.\n\n\
         ## Guests\n\n\
         | kernel | release | cgroup | date | commit | boot | VM total | nodeward probe |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for o in outcomes {
        let verdict = match (&o.error, &o.probe, &o.probe_error) {
            (Some(e), _, _) => format!("no guest: {}", cell(e, 300)),
            (None, Some(p), _) if p.supported => "supported".into(),
            (None, Some(_), _) => "**not supported** (a required feature is missing)".into(),
            (None, None, why) => format!("no report: {}", cell(why.as_deref().unwrap_or(""), 300)),
        };
        let verdict = match &o.agent {
            Some(why) => format!("{verdict}; {why}"),
            None => verdict,
        };
        // The mode asked for, and where the probe found cgroup2.
        let cgroup = match o.probe.as_ref().and_then(|p| p.cgroup2.as_deref()) {
            Some(mount) => format!("{} (cgroup2 at `{mount}`)", o.guests()),
            None => o.guests(),
        };
        md.push_str(&format!(
            "| {} | {} | {cgroup} | {} | {} | {} | {} | {verdict} |\n",
            o.series,
            or_dash(&o.release),
            o.date,
            o.commit,
            seconds(o.boot, "—"),
            if o.error.is_some() {
                "—".to_owned()
            } else {
                format!("{:.0} s{}", o.total, if o.hung { " (hung)" } else { "" })
            },
        ));
    }
    md.push_str(&features_table(outcomes));
    md.push_str(
        "\n## Tests\n\n\
         `2 VMs`: each node of the test clusters in its own guest, the two joined by a \
         virtual wire (`--nodes 2`).\n\n\
         | kernel | cgroup | test file | args | result | time | date | commit |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for o in outcomes {
        if o.tests.is_empty() {
            md.push_str(&format!(
                "| {} | {} | — | — | not run | — | {} | {} |\n",
                o.series,
                o.guests(),
                o.date,
                o.commit
            ));
        }
        for t in &o.tests {
            // Saved before each file carried its own stamp: the run's.
            let (date, commit, args) = if t.date.is_empty() {
                (&o.date, &o.commit, &o.args)
            } else {
                (&t.date, &t.commit, &t.args)
            };
            let args = if args.is_empty() {
                "all tests".to_owned()
            } else {
                format!("`{}`", args.join(" "))
            };
            let result = if t.hung {
                "hung: killed at the timeout".to_owned()
            } else {
                describe(t.rc)
            };
            md.push_str(&format!(
                "| {} | {} | {} | {args} | {result} | {} | {} | {} |\n",
                o.series,
                o.guests(),
                t.name,
                seconds(t.seconds, "—"),
                date,
                commit
            ));
        }
    }
    md
}

/// Kernel × feature: `yes`, or `**no**` with a numbered note carrying the
/// kernel's answer (the full text is in `target/vm/probe-*.json`).
fn features_table(outcomes: &[Outcome]) -> String {
    let mut columns: Vec<(&str, bool, &str)> = Vec::new();
    for f in outcomes
        .iter()
        .filter_map(|o| o.probe.as_ref())
        .flat_map(|p| &p.features)
    {
        if !columns.iter().any(|(name, _, _)| *name == f.feature) {
            columns.push((&f.feature, f.required, &f.since));
        }
    }
    let mut md = String::from("\n## Features (`nodeward probe`)\n\n| kernel | cgroup |");
    for (name, required, since) in &columns {
        let need = if *required { "required" } else { "optional" };
        md.push_str(&format!(" {name} ({need}, {since}+) |"));
    }
    md.push_str(&format!("\n|---|---|{}\n", "---|".repeat(columns.len())));
    let mut notes = Vec::new();
    for o in outcomes {
        md.push_str(&format!("| {} | {} |", o.series, o.guests()));
        for (name, _, _) in &columns {
            let f = o
                .probe
                .as_ref()
                .and_then(|p| p.features.iter().find(|f| f.feature == *name));
            match f {
                None => md.push_str(" — |"),
                Some(f) if f.available => md.push_str(" yes |"),
                Some(f) => {
                    notes.push(format!(
                        "{}. {} ({}) {name}: {}",
                        notes.len() + 1,
                        o.series,
                        o.guests(),
                        cell(
                            &summary(f.error.as_deref().unwrap_or("no error given")),
                            400
                        )
                    ));
                    md.push_str(&format!(" **no** ({}) |", notes.len()));
                }
            }
        }
        md.push('\n');
    }
    if !notes.is_empty() {
        md.push('\n');
        md.push_str(&notes.join("\n"));
        md.push('\n');
    }
    md
}

/// An error as the matrix shows it: a verifier log is cut down to the
/// message before it and the verifier's own complaint (the line before its
/// statistics, e.g. `unknown func bpf_get_netns_cookie#122`).
fn summary(error: &str) -> String {
    let Some((head, log)) = error.split_once("Verifier output:") else {
        return error.to_owned();
    };
    let lines: Vec<&str> = log.lines().map(str::trim).collect();
    let stats = lines
        .iter()
        .position(|l| l.starts_with("verification time") || l.starts_with("processed "))
        .unwrap_or(lines.len());
    match lines[..stats].iter().rev().find(|l| !l.is_empty()) {
        Some(complaint) => format!("{} Verifier: {complaint}", head.trim()),
        None => head.trim().to_owned(),
    }
}

/// Text fit for one table cell: one line, no `|`, at most `max` chars.
fn cell(text: &str, max: usize) -> String {
    let one: String = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|");
    match one.char_indices().nth(max) {
        Some((at, _)) => format!("{} …", &one[..at]),
        None => one,
    }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "—"
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(series: &str, cgroup: CgroupMode) -> Outcome {
        Outcome {
            series: series.into(),
            release: format!("{series}.0-1-amd64"),
            cgroup,
            nodes: 1,
            date: "2026-12-06 09:00 UTC".into(),
            commit: "abc1234".into(),
            args: Vec::new(),
            boot: Some(10.0),
            total: 100.0,
            error: None,
            agent: None,
            hung: false,
            probe: Some(Probe {
                kernel: format!("{series}.0-1-amd64"),
                cgroup2: Some("/sys/fs/cgroup".into()),
                supported: true,
                features: vec![
                    ProbeFeature {
                        feature: "connect4".into(),
                        since: "5.7".into(),
                        required: true,
                        available: true,
                        error: None,
                    },
                    ProbeFeature {
                        feature: "so_netns_cookie".into(),
                        since: "5.14".into(),
                        required: false,
                        available: false,
                        error: Some("Protocol not available\n(os error 92) | x".into()),
                    },
                ],
            }),
            probe_error: None,
            tests: vec![TestRun {
                name: "redirect".into(),
                rc: Some(0),
                seconds: Some(42.0),
                date: "2026-12-06 09:00 UTC".into(),
                commit: "abc1234".into(),
                args: Vec::new(),
                hung: false,
            }],
        }
    }

    #[test]
    fn matrix_has_a_row_per_guest_feature_and_test_and_one_for_a_kernel_never_fetched() {
        let mut gone = outcome("6.12", CgroupMode::Unified);
        gone.error = Some("fetching the kernel: apt-get download failed".into());
        gone.release.clear();
        gone.boot = None;
        gone.probe = None;
        gone.tests.clear();
        let md = render_matrix(&[
            outcome("5.10", CgroupMode::Unified),
            outcome("6.1", CgroupMode::Hybrid),
            gone,
        ]);
        assert!(md.contains("| 5.10 | 5.10.0-1-amd64 | unified (cgroup2 at `/sys/fs/cgroup`) | 2026-12-06 09:00 UTC | abc1234 | 10 s | 100 s | supported |"), "{md}");
        assert!(md.contains("| 6.12 | — | unified |"), "{md}");
        assert!(
            md.contains("no guest: fetching the kernel: apt-get download failed"),
            "{md}"
        );
        assert!(md.contains("| kernel | cgroup | connect4 (required, 5.7+) | so_netns_cookie (optional, 5.14+) |"), "{md}");
        assert!(md.contains("| 6.1 | hybrid | yes | **no** (2) |"), "{md}");
        // The kernel's answer on one line, its `|` escaped.
        assert!(
            md.contains(
                "2. 6.1 (hybrid) so_netns_cookie: Protocol not available (os error 92) \\| x"
            ),
            "{md}"
        );
        assert!(
            md.contains("| 5.10 | unified | redirect | all tests | pass | 42 s |"),
            "{md}"
        );
        assert!(
            md.contains("| 6.12 | unified | — | — | not run | — |"),
            "{md}"
        );
    }

    #[test]
    fn a_verifier_log_is_cut_to_its_complaint() {
        let error =
            "BPF program nw_splice_ops: the BPF_PROG_LOAD syscall returned Invalid argument \
                     (os error 22). Verifier output: 0: (bf) r6 = r1\n113: (85) call \
                     bpf_get_netns_cookie#122\nunknown func bpf_get_netns_cookie#122\n\
                     verification time 8259 usec\nstack depth 112\nprocessed 344 insns\n";
        assert_eq!(
            summary(error),
            "BPF program nw_splice_ops: the BPF_PROG_LOAD syscall returned Invalid argument \
             (os error 22). Verifier: unknown func bpf_get_netns_cookie#122"
        );
        assert_eq!(summary("Protocol not available"), "Protocol not available");
    }

    #[test]
    fn console_lines_give_each_test_its_time() {
        let mut c = Console::default();
        for line in [
            "nw-vm-test redirect start 7.50",
            "noise",
            "nw-vm-test redirect exit=0 207.75",
            "nw-vm-test kernel start 208.00",
        ] {
            c.note_test(line);
        }
        assert_eq!(c.seconds("redirect"), Some(200.25));
        assert_eq!(c.seconds("kernel"), None);
    }

    #[test]
    fn the_hybrid_guest_mounts_cgroup2_at_unified() {
        let job = Job {
            tests: Vec::new(),
            filter: Vec::new(),
            timeout: Duration::from_secs(1),
            cgroup: CgroupMode::Hybrid,
            nodes: 1,
        };
        let script = job_script(&[], Path::new("/t/debug/nodeward"), &[], &job, &Role::Alone);
        assert!(script.contains("mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified"));
        assert!(!script.contains("cgroup2 /sys/fs/cgroup\n"));
        assert!(script.contains("'/t/debug/nodeward' probe --format json > /nw-vm/probe.json"));
        assert!(!script.contains("NW_SPLIT"), "{script}");
    }

    #[test]
    fn two_guests_split_the_nodes_and_the_driver_ends_the_agent() {
        let job = Job {
            tests: vec!["tunnel".into()],
            filter: vec!["cross_node".into()],
            timeout: Duration::from_secs(1),
            cgroup: CgroupMode::Unified,
            nodes: 2,
        };
        let wire = || Wire {
            dir: "/t/vm/w".into(),
            agent: "/t/debug/nw-vm-node".into(),
        };
        let bins = [("tunnel".to_owned(), PathBuf::from("/t/debug/deps/tunnel-1"))];
        let nodeward = Path::new("/t/debug/nodeward");
        let driver = job_script(&[], nodeward, &bins, &job, &Role::Driver(wire()));
        assert!(
            driver.contains("NW_SPLIT_NODE=node-a NW_SPLIT_LINK=52:54:00:99:00:01"),
            "{driver}"
        );
        assert!(
            driver.contains("'/t/debug/deps/tunnel-1' 'cross_node' --test-threads=1"),
            "{driver}"
        );
        assert!(driver.contains("'/t/debug/nw-vm-node' done"), "{driver}");
        let agent = job_script(&[], nodeward, &bins, &job, &Role::Agent(wire()));
        assert!(
            agent.contains("NW_SPLIT_NODE=node-b NW_SPLIT_LINK=52:54:00:99:00:02"),
            "{agent}"
        );
        assert!(agent.contains("'/t/debug/nw-vm-node'\n"), "{agent}");
        assert!(!agent.contains("probe"), "{agent}");
        assert!(!agent.contains("tunnel-1"), "{agent}");
        let (a, b) = (
            Role::Driver(wire()).qemu_args(),
            Role::Agent(wire()).qemu_args(),
        );
        assert!(
            a[1].contains(
                "local.path=/t/vm/w/wire-0.sock,remote.type=unix,remote.path=/t/vm/w/wire-1.sock"
            ),
            "{a:?}"
        );
        assert!(
            b[1].contains(
                "local.path=/t/vm/w/wire-1.sock,remote.type=unix,remote.path=/t/vm/w/wire-0.sock"
            ),
            "{b:?}"
        );
    }

    #[test]
    fn a_run_keeps_the_saved_results_of_the_files_it_did_not_run() {
        let dir = std::env::temp_dir().join(format!("nw-vm-merge-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("dir");
        let saved = dir.join("run.json");
        let mut earlier = outcome("5.10", CgroupMode::Unified);
        earlier.tests[0].rc = Some(1);
        let mut other = earlier.tests.remove(0);
        other.name = "lifecycle".into();
        earlier.tests = vec![
            TestRun {
                name: "redirect".into(),
                ..other
            },
            TestRun {
                name: "lifecycle".into(),
                rc: Some(0),
                seconds: Some(7.0),
                date: String::new(),
                commit: String::new(),
                args: Vec::new(),
                hung: false,
            },
        ];
        fs::write(&saved, serde_json::to_string(&earlier).expect("json")).expect("write");
        let mut now = outcome("5.10", CgroupMode::Unified);
        now.commit = "def5678".into();
        now.tests[0].commit = "def5678".into();
        merge_earlier(&mut now, &saved);
        let _ = fs::remove_dir_all(&dir);
        let names: Vec<(&str, Option<i32>, &str)> = now
            .tests
            .iter()
            .map(|t| (t.name.as_str(), t.rc, t.commit.as_str()))
            .collect();
        // This run's redirect replaces the saved one; the saved lifecycle
        // stays, stamped with the run it came from.
        assert_eq!(
            names,
            [
                ("redirect", Some(0), "def5678"),
                ("lifecycle", Some(0), "abc1234")
            ]
        );
    }
}
