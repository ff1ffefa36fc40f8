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

/// The Debian suite and packages of the guest's root filesystem. The suite
/// matches the build host's (bookworm) so the host-built binaries find the
/// glibc they were linked against.
const ROOTFS_SUITE: &str = "bookworm";
const ROOTFS_PACKAGES: &[&str] = &["iproute2", "procps"];

/// Kernel modules the guest loads before anything else: virtio-pci and
/// virtio-rng, 9p and overlay for
/// its root, veth and bridge for the e2e harness's networks. A module built
/// into the kernel is skipped.
const MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_rng",
    "9pnet_virtio",
    "9p",
    "overlay",
    "veth",
    "bridge",
];

const MIRROR: &str = "http://deb.debian.org/debian";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// What to run in each guest.
pub struct Job {
    /// e2e test targets of nodeward-tests (`redirect`, `sockmap`, …).
    pub tests: Vec<String>,
    /// Passed to each test binary (a libtest filter and options).
    pub filter: Vec<String>,
    /// Kill a guest that has not reported back after this long.
    pub timeout: Duration,
}

/// How one kernel's guest ended.
pub struct Outcome {
    pub series: &'static str,
    pub release: String,
    pub boot: Option<Duration>,
    pub total: Duration,
    /// Test target → exit code; `None` when the guest never reported it.
    pub results: Vec<(String, Option<i32>)>,
    pub hung: bool,
    pub probe: Vec<String>,
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
/// `target/vm/matrix.md`, and fails if any test failed or any guest hung.
pub fn run(target: &Path, series: &[Series], job: &Job) -> Result<()> {
    let vm = fs::canonicalize(target)?.join("vm");
    fs::create_dir_all(&vm)?;
    let bins = build_tests(&job.tests)?;
    let rootfs = rootfs(&vm)?;
    let mut outcomes = Vec::new();
    for s in series {
        let kernel = Kernel::fetch(&vm, *s)?;
        let initrd = kernel
            .initramfs()
            .with_context(|| format!("initramfs for {}", kernel.release))?;
        let outcome = boot(&vm, &kernel, &initrd, &rootfs, &bins, job)?;
        report(&outcome);
        outcomes.push(outcome);
    }
    let matrix = vm.join("matrix.md");
    fs::write(&matrix, render_matrix(&outcomes, &job.filter))?;
    eprintln!("xtask vm-test: wrote {}", matrix.display());
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| o.hung || o.results.iter().any(|(_, rc)| *rc != Some(0)))
        .map(|o| o.series.to_owned())
        .collect();
    if !failed.is_empty() {
        bail!("vm-test failed on kernel(s) {}", failed.join(", "));
    }
    Ok(())
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
    let dir = vm.join(format!(
        "rootfs-{ROOTFS_SUITE}-{}",
        ROOTFS_PACKAGES.join("-")
    ));
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
            .arg(ROOTFS_SUITE)
            .arg(&tmp)
            .arg(MIRROR),
    )?;
    fs::rename(&tmp, &dir)?;
    Ok(dir)
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
/// needs, the host's directories at their host paths, then each test.
fn job_script(shares: &[(String, PathBuf, bool)], bins: &[(String, PathBuf)], job: &Job) -> String {
    let mut s = String::from(
        "#!/bin/sh\n\
         export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root CI=1\n\
         export NW_TEST_PATIENCE=10\n\
         mount -t proc proc /proc; mount -t sysfs sysfs /sys\n\
         mount -t tmpfs tmpfs /tmp; mount -t tmpfs tmpfs /run\n\
         mount -t cgroup2 cgroup2 /sys/fs/cgroup; mount -t bpf bpf /sys/fs/bpf\n\
         mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null\n\
         ip link set lo up\n\
         echo \"nw-vm-booted $(cut -d' ' -f1 /proc/uptime)\"\n\
         PROBE\
         O=trans=virtio,version=9p2000.L,msize=262144\n",
    )
    .replace("PROBE", PROBE);
    for (tag, path, ro) in shares {
        let p = shell_quote(&path.display().to_string());
        let ro = if *ro { ",ro" } else { "" };
        s.push_str(&format!("mkdir -p {p}; mount -t 9p -o $O{ro} {tag} {p}\n"));
    }
    let filter: Vec<String> = job.filter.iter().map(|f| shell_quote(f)).collect();
    for (name, exe) in bins {
        // cargo runs a test binary in its package's directory.
        s.push_str(&format!(
            "echo \"nw-vm-test {name} start $(cut -d' ' -f1 /proc/uptime)\"\n\
             (cd \"$NW_TESTS_DIR\" && {} {})\n\
             rc=$?; echo \"$rc\" > /nw-vm/exit-{name}\n\
             echo \"nw-vm-test {name} exit=$rc $(cut -d' ' -f1 /proc/uptime)\"\n",
            shell_quote(&exe.display().to_string()),
            filter.join(" ")
        ));
    }
    s.push_str("sync\necho nw-vm-done\necho o > /proc/sysrq-trigger\nsleep 60\n");
    s
}

/// Kernel facts the proxy depends on, one `nw-probe: name: result` line
/// each. Shallow (files the kernel exposes), not yet a load-and-attach of
/// each BPF program: see the note on issue 17.
const PROBE: &str = "\
p() { echo \"nw-probe: $1: $2\"; }
[ -e /proc/sys/net/ipv4/tcp_migrate_req ] && p tcp_migrate_req present || p tcp_migrate_req 'absent (5.14+)'
[ -e /sys/kernel/btf/vmlinux ] && p btf present || p btf absent
grep -qw cgroup2 /proc/filesystems && p cgroup2 present || p cgroup2 absent
p unprivileged_bpf_disabled \"$(cat /proc/sys/kernel/unprivileged_bpf_disabled)\"
";

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Boots one guest and waits for it to power off, or kills it at the timeout.
fn boot(
    vm: &Path,
    kernel: &Kernel,
    initrd: &Path,
    rootfs: &Path,
    bins: &[(String, PathBuf)],
    job: &Job,
) -> Result<Outcome> {
    let prefix = format!("nw-vm-{}-{}", std::process::id(), kernel.series.name);
    let run = vm.join(&prefix);
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
    let mut script = job_script(&shares, bins, job);
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
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 loglevel=4"]);
    let virtfs = |tag: &str, path: &Path, ro: bool| {
        format!(
            "local,path={},mount_tag={tag},security_model=none{}",
            path.display(),
            if ro { ",readonly=on" } else { "" }
        )
    };
    qemu.arg("-virtfs").arg(virtfs("rootfs", rootfs, true));
    qemu.arg("-virtfs").arg(virtfs("run", &run, false));
    for (tag, path, ro) in &shares {
        qemu.arg("-virtfs").arg(virtfs(tag, path, *ro));
    }
    eprintln!(
        "xtask vm-test: booting {} ({}) as {prefix}, timeout {}s",
        kernel.release,
        kernel.series.suite,
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
    let log_path = vm.join(format!("console-{}.log", kernel.series.name));
    let series = kernel.series.name;
    let reader = std::thread::spawn(move || -> (Option<Duration>, Vec<String>) {
        let mut log = fs::File::create(&log_path).ok();
        let mut booted = None;
        let mut probe = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
            if let Some(f) = log.as_mut() {
                let _ = writeln!(f, "{line}");
            }
            if booted.is_none() && line.starts_with("nw-vm-booted") {
                booted = Some(started.elapsed());
            }
            if let Some(p) = line.strip_prefix("nw-probe: ") {
                probe.push(p.trim().to_owned());
            }
            eprintln!("[{series}] {line}");
        }
        (booted, probe)
    });
    let hung = loop {
        if child.try_wait()?.is_some() {
            break false;
        }
        if started.elapsed() > job.timeout {
            // Our own qemu, by its pid (nice exec()s it).
            let _ = child.kill();
            let _ = child.wait();
            break true;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let total = started.elapsed();
    let (boot, probe) = reader.join().unwrap_or_default();
    let results = bins
        .iter()
        .map(|(name, _)| {
            let rc = fs::read_to_string(run.join(format!("exit-{name}")))
                .ok()
                .and_then(|s| s.trim().parse().ok());
            (name.clone(), rc)
        })
        .collect();
    fs::remove_dir_all(&run)?;
    Ok(Outcome {
        series: kernel.series.name,
        release: kernel.release.clone(),
        boot,
        total,
        results,
        hung,
        probe,
    })
}

fn report(o: &Outcome) {
    let boot = o
        .boot
        .map_or("never".to_owned(), |b| format!("{:.1}s", b.as_secs_f64()));
    eprintln!(
        "xtask vm-test: {} ({}): booted in {boot}, {:.0}s in all{}",
        o.series,
        o.release,
        o.total.as_secs_f64(),
        if o.hung {
            ", HUNG: killed at the timeout"
        } else {
            ""
        }
    );
    for (name, rc) in &o.results {
        eprintln!("  {name}: {}", describe(*rc));
    }
    for p in &o.probe {
        eprintln!("  probe {p}");
    }
}

fn describe(rc: Option<i32>) -> String {
    match rc {
        Some(0) => "pass".into(),
        Some(rc) => format!("FAIL (exit {rc})"),
        None => "no result".into(),
    }
}

/// `target/vm/matrix.md`: kernel × test target (and probe lines, if any).
fn render_matrix(outcomes: &[Outcome], filter: &[String]) -> String {
    // A pass of a filtered run is a pass of those tests only: say which.
    let args = if filter.is_empty() {
        "all tests".to_owned()
    } else {
        format!("`{}`", filter.join(" "))
    };
    let mut md = String::from(
        "# nodeward on Debian kernels (qemu, TCG)\n\n\
         Written by `cargo xtask vm-test`.\n\n\
         | kernel | release | boot | test | args | result |\n|---|---|---|---|---|---|\n",
    );
    for o in outcomes {
        let boot = o
            .boot
            .map_or("never".to_owned(), |b| format!("{:.0}s", b.as_secs_f64()));
        for (name, rc) in &o.results {
            let result = if o.hung && rc.is_none() {
                format!("hung: killed after {:.0}s", o.total.as_secs_f64())
            } else {
                describe(*rc)
            };
            md.push_str(&format!(
                "| {} | {} | {boot} | {name} | {args} | {result} |\n",
                o.series, o.release
            ));
        }
    }
    md.push_str("\n| kernel | probe |\n|---|---|\n");
    for o in outcomes {
        for p in &o.probe {
            md.push_str(&format!("| {} | {p} |\n", o.series));
        }
    }
    md
}
