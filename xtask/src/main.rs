//! `cargo xtask`: setup, build, test, demo, bench and soak for nodeward.

use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

mod check;
mod demo;
mod deploy;
mod fuzz;
mod image;
mod layout;
mod links;
mod metadata;
mod modcycles;
mod rollout;
mod toolchain;
mod vm;

/// Debian packages the end-to-end tests need (`ip`, `sysctl`), the
/// benchmark's hand-built mTLS alternative (`haproxy`), and the client the
/// README's quick start and the demo tests call through the mesh (`curl`),
/// and the browser the flow-map test renders `/flows` in (`chromium` and
/// its WebDriver).
const APT_PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("sysctl", "procps"),
    ("cc", "gcc"),
    ("haproxy", "haproxy"),
    ("curl", "curl"),
    ("chromium", "chromium"),
    ("chromedriver", "chromium-driver"),
    // `cargo xtask vm-test` (part of `test`): qemu, the guest's root
    // (mmdebstrap, the Debian keyring), its initramfs (cpio, a static
    // busybox, xz and zstd for the kernel's modules).
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("mmdebstrap", "mmdebstrap"),
    (
        "/usr/share/keyrings/debian-archive-keyring.gpg",
        "debian-archive-keyring",
    ),
    ("cpio", "cpio"),
    ("busybox", "busybox-static"),
    ("xz", "xz-utils"),
    ("zstd", "zstd"),
];

/// Debian packages for the deployment tests: the C compiler ring's code
/// needs for the static (musl) image binary, podman and runc to run the
/// image, openssl for the recipe's host preparation, vagrant and its
/// libvirt provider to validate `vagrant/`. Without
/// podman or vagrant those tests print SKIPPED, so a failed install here
/// is a warning, not an error.
const DEPLOY_APT_PACKAGES: &[(&str, &str)] = &[
    ("musl-gcc", "musl-tools"),
    ("podman", "podman"),
    ("runc", "runc"),
    ("openssl", "openssl"),
    ("vagrant", "vagrant"),
    ("vagrant", "vagrant-libvirt"),
];

#[derive(Parser)]
#[command(about = "nodeward's build and test tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what a fresh Debian machine lacks (quick when nothing is missing).
    Setup,
    /// Build the BPF objects and a release `nodeward` that embeds them.
    Build,
    /// Setup, lint, unit tests, the end-to-end suite (needs root), two of
    /// its files in a qemu guest on Debian's 6.1 kernel, every
    /// fuzz target for 15 s and the deployment checks (manifests, image, Vagrantfile).
    Test {
        /// Only the deployment checks: manifests against the Kubernetes
        /// schemas, the image built and run with podman, `vagrant validate`.
        #[arg(long)]
        deployment: bool,
    },
    /// Build a static nodeward and write the OCI image archive
    /// `target/image/nodeward-<version>.oci.tar` (no container daemon).
    Image {
        /// Then load it with podman and run `nodeward --version` and
        /// `nodeward policy check policies/` in it (as `cargo xtask test` does).
        #[arg(long)]
        test: bool,
    },
    /// Crate layering, forbidden dependencies, module cycles and doc links
    /// (quick: builds nothing).
    Check,
    /// Run the fuzz targets in `fuzz/` (docs/fuzzing.md), one after the
    /// other; fails at the first crash, leaving its input in
    /// `target/fuzz/artifacts/<target>/`.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = fuzz::DEFAULT_SECONDS)]
        seconds: u64,
        /// Print the targets and exit.
        #[arg(long)]
        list: bool,
        /// Only this target (default: all).
        target: Option<String>,
    },
    /// Bring up the two-node demo cluster and show what flows through the
    /// proxies; runs until Ctrl-C, SIGTERM or SIGHUP, then tears it down.
    #[command(args_conflicts_with_subcommands = true)]
    Demo {
        /// Policy directory to run the mesh with, reloaded live as you edit
        /// it (default: a copy of the examples in `policies/`, in the
        /// demo's own directory).
        #[arg(long)]
        policies: Option<std::path::PathBuf>,
        /// Stop the running demo, or remove what a dead one left behind.
        #[arg(long, conflicts_with = "policies")]
        down: bool,
        #[command(subcommand)]
        command: Option<DemoCommand>,
    },
    /// Benchmark direct, nodeward and HAProxy-mTLS paths on a netns cluster
    /// (needs root); writes `target/bench/bench.{md,json}`.
    Bench {
        /// Duration of each timed scenario, in seconds.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Idle meshed connections for the memory scenario.
        #[arg(long, default_value_t = 10_000)]
        idle: usize,
        /// Only these scenarios, comma-separated (bulk1, bulk8, rr1, rr64,
        /// connrate, idle).
        #[arg(long)]
        only: Option<String>,
        /// nodeward's `runtime.workerThreads` in the run (default: its own).
        #[arg(long)]
        worker_threads: Option<usize>,
    },
    /// Hold meshed connections on a netns cluster for MINUTES with churn,
    /// traffic, policy reloads and certificate renewals (needs root);
    /// writes `target/soak/soak.{csv,png,json}`, fails on a leak or a
    /// failed connection.
    Soak {
        /// How long the connections are held once open.
        #[arg(long, default_value_t = 30.0)]
        minutes: f64,
        /// Connections held (both client pods together); 1% of them
        /// reconnect every second.
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Run release binaries (`cargo xtask build`) instead of the debug
        /// ones the tests use.
        #[arg(long)]
        release: bool,
    },
    /// Run e2e test binaries inside qemu (TCG) on Debian kernels; writes
    /// `target/vm/matrix.md`. See docs/tests.md.
    VmTest {
        /// Kernel series: 5.10, 6.1, 6.12 or all.
        #[arg(long, default_value = "6.1")]
        kernel: String,
        /// e2e test targets to run (repeatable).
        #[arg(long = "test", default_value = "redirect")]
        tests: Vec<String>,
        /// Kill a guest that has not finished after this many seconds.
        #[arg(long, default_value_t = 1800)]
        timeout: u64,
        /// How the guest mounts cgroups: pure v2, or systemd's hybrid
        /// layout (v1 controllers, cgroup2 at /sys/fs/cgroup/unified).
        #[arg(long, value_enum, default_value = "unified")]
        cgroup: vm::CgroupMode,
        /// 2: each node of the test clusters in its own VM, the two joined
        /// by a virtual wire (tests that ask only what the harness can ask
        /// of a node in another machine; see tests/src/remote.rs).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
        nodes: u8,
        /// Passed to each test binary (a filter, `--test-threads=1`, …).
        #[arg(last = true)]
        filter: Vec<String>,
    },
}

/// Connections `cargo xtask test`'s short soak holds, and its minutes.
const CI_SOAK: (usize, f64) = (10_000, 3.0);

/// The kernel and e2e files `cargo xtask test` runs in a VM, and the
/// guest's timeout in seconds (about 6 min of tests under TCG here).
const CI_VM_KERNEL: &str = "6.1";
const CI_VM_TESTS: &[&str] = &["kernel", "redirect"];
const CI_VM_TIMEOUT: u64 = 1500;

#[derive(Subcommand)]
enum DemoCommand {
    /// Run a command as a pod of the running demo: it joins the pod's
    /// cgroup, then its network namespace, so its connections go through
    /// the mesh (`exec frontend -- curl http://10.20.2.10:8080/api/items`).
    /// A node (node-a, node-b) joins only the node's netns.
    Exec {
        /// frontend, cache, backend, db, ops-tool, node-a or node-b.
        pod: String,
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, required = true, allow_hyphen_values = true)]
        argv: Vec<String>,
    },
}

fn main() -> Result<()> {
    // `ip` and `sysctl` live in sbin, which `su` without `-` leaves off PATH.
    let path = std::env::var("PATH").unwrap_or_default();
    if !path.split(':').any(|d| d == "/usr/sbin") {
        std::env::set_var("PATH", format!("{path}:/usr/sbin:/sbin"));
    }
    let task = Cli::parse().task;
    // A user's path means what it meant where they typed it.
    let task = match task {
        Task::Demo {
            policies: Some(p),
            down,
            command,
        } => Task::Demo {
            policies: Some(
                std::fs::canonicalize(&p)
                    .with_context(|| format!("policy directory {}", p.display()))?,
            ),
            down,
            command,
        },
        other => other,
    };
    // Every task runs from the workspace root, wherever cargo was invoked.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::env::set_current_dir(&root).context("entering the workspace root")?;
    match task {
        Task::Setup => setup(),
        Task::Build => build(),
        Task::Test { deployment: false } => test(),
        Task::Test { deployment: true } => {
            setup()?;
            test_deployment()
        }
        Task::Image { test } => {
            setup()?;
            let archive = image::build()?;
            if test {
                test_image(&archive)?;
            }
            Ok(())
        }
        Task::Check => check::all(),
        Task::Fuzz { list: true, .. } => {
            println!("{}", fuzz::targets()?.join("\n"));
            Ok(())
        }
        Task::Fuzz {
            seconds, target, ..
        } => {
            setup()?;
            fuzz::run_targets(seconds, target.as_deref())
        }
        Task::Demo {
            policies,
            down,
            command,
        } => demo::run(match (down, command) {
            (true, _) => demo::Action::Down,
            (false, Some(DemoCommand::Exec { pod, argv })) => demo::Action::Exec { pod, argv },
            (false, None) => demo::Action::Up { policies },
        }),
        Task::Bench {
            seconds,
            idle,
            only,
            worker_threads,
        } => bench(seconds, idle, only.as_deref(), worker_threads),
        Task::Soak {
            minutes,
            connections,
            release,
        } => soak(minutes, connections, release),
        Task::VmTest {
            kernel,
            tests,
            timeout,
            cgroup,
            nodes,
            filter,
        } => vm::run(
            &target_dir(),
            &vm::select(&kernel)?,
            &vm::Job {
                tests,
                filter,
                timeout: std::time::Duration::from_secs(timeout),
                cgroup,
                nodes,
            },
        ),
    }
}

fn setup() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .filter(|(bin, pkg)| match *pkg {
            // busybox's /bin/busybox is dynamic: the guest's initramfs
            // needs the static one.
            "busybox-static" => !deb_installed(pkg),
            _ if bin.starts_with('/') => !std::path::Path::new(bin).exists(),
            _ => !on_path(bin),
        })
        .map(|(_, pkg)| *pkg)
        .collect();
    if !missing.is_empty() {
        eprintln!("xtask setup: installing {missing:?}");
        run(Command::new("apt-get").arg("update").arg("-q"))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing))?;
    }
    install_deploy_packages();
    for (probe, component) in [("rustfmt", "rustfmt"), ("cargo-clippy", "clippy")] {
        if Command::new(probe)
            .arg("--version")
            .output()
            .map_or(true, |o| !o.status.success())
        {
            eprintln!("xtask setup: adding {component}");
            run(Command::new("rustup").args(["component", "add", component]))?;
        }
    }
    toolchain::setup()?;
    fuzz::setup()?;
    image::setup()
}

/// Installs what the deployment tests use, warning (not failing) when apt
/// cannot: those tests then say SKIPPED.
fn install_deploy_packages() {
    let missing: Vec<&str> = DEPLOY_APT_PACKAGES
        .iter()
        .filter(|(bin, pkg)| match *pkg {
            // A plugin, not a command: ask dpkg (`vagrant plugin list`
            // takes seconds).
            "vagrant-libvirt" => !deb_installed(pkg),
            _ => !on_path(bin),
        })
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return;
    }
    eprintln!("xtask setup: installing {missing:?}");
    let installed = run(Command::new("apt-get").arg("update").arg("-q")).and_then(|()| {
        run(Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing))
    });
    if let Err(e) = installed {
        eprintln!(
            "xtask setup: warning: {e:#}; the deployment tests that need them will be SKIPPED"
        );
    }
}

fn build() -> Result<()> {
    setup()?;
    cargo(&[
        "build",
        "--release",
        "-p",
        "nodeward",
        "-p",
        "nodeward-tests",
        "--bins",
    ])?;
    eprintln!(
        "xtask build: {} (BPF programs embedded)",
        target_dir().join("release/nodeward").display()
    );
    Ok(())
}

fn test() -> Result<()> {
    setup()?;
    cargo(&["fmt", "--all", "--", "--check"])?;
    check::all()?;
    cargo(&["clippy", "--all-targets", "--", "-D", "warnings"])?;
    // The e2e suite runs the real binaries; build them before the tests look for them.
    cargo(&["build", "-p", "nodeward", "-p", "nodeward-tests", "--bins"])?;
    cargo(&["test", "--workspace", "--exclude", "nodeward-ebpf"])?;
    vm_test_ci()?;
    let (connections, minutes) = CI_SOAK;
    soak(minutes, connections, false)?;
    // Every fuzz target briefly on its corpus: a regression in a parser
    // shows up here before a long run finds it.
    fuzz::run_targets(fuzz::TEST_SECONDS, None)?;
    test_deployment()
}

/// The e2e files [`CI_VM_TESTS`] in a qemu guest on [`CI_VM_KERNEL`], a
/// kernel other than the host's (docs/tests.md); prints how long it took.
fn vm_test_ci() -> Result<()> {
    let started = std::time::Instant::now();
    let result = vm::run(
        &target_dir(),
        &vm::select(CI_VM_KERNEL)?,
        &vm::Job {
            tests: CI_VM_TESTS.iter().map(|t| (*t).to_owned()).collect(),
            filter: Vec::new(),
            timeout: std::time::Duration::from_secs(CI_VM_TIMEOUT),
            cgroup: vm::CgroupMode::Unified,
            nodes: 1,
        },
    );
    eprintln!(
        "xtask test: the VM step ({CI_VM_KERNEL}: {}) took {:.0}s",
        CI_VM_TESTS.join(", "),
        started.elapsed().as_secs_f64()
    );
    result
}

/// The deployment checks: manifests against the Kubernetes schemas, the
/// image built and run with podman, the Vagrantfile validated (with the
/// host-side preparation it triggers). Prints how long the image took.
fn test_deployment() -> Result<()> {
    deploy::validate_manifests()?;
    let started = std::time::Instant::now();
    let archive = image::build()?;
    test_image(&archive)?;
    eprintln!(
        "xtask test: image built and tested in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    deploy::validate_vagrant(&archive)
}

/// The image run with podman: `--version` and `policy check`, then the
/// rollout the DaemonSet performs (where podman can run containers).
fn test_image(archive: &std::path::Path) -> Result<()> {
    if image::test(archive)? {
        rollout::test(&image::Podman::new()?, &image::musl_binary())?;
    }
    Ok(())
}

fn bench(seconds: f64, idle: usize, only: Option<&str>, threads: Option<usize>) -> Result<()> {
    build()?;
    let mut cmd = Command::new(target_dir().join("release/nw-bench"));
    cmd.args(["run", "--out", "target/bench"])
        .args(["--seconds", &seconds.to_string()])
        .args(["--idle", &idle.to_string()]);
    if let Some(only) = only {
        cmd.args(["--only", only]);
    }
    if let Some(n) = threads {
        cmd.args(["--worker-threads", &n.to_string()]);
    }
    let status = cmd
        .env("NODEWARD_BIN", target_dir().join("release/nodeward"))
        .env("NW_POD_BIN", target_dir().join("release/nw-pod"))
        .status()
        .context("running nw-bench")?;
    if !status.success() {
        bail!("bench failed: {status}");
    }
    Ok(())
}

/// Runs `nw-bench soak` (see `nodeward_tests::soak`) on debug or release
/// binaries; prints how long it took, set-up and teardown included.
fn soak(minutes: f64, connections: usize, release: bool) -> Result<()> {
    let profile = if release {
        build()?;
        "release"
    } else {
        cargo(&["build", "-p", "nodeward", "-p", "nodeward-tests", "--bins"])?;
        "debug"
    };
    let bin = |name: &str| target_dir().join(profile).join(name);
    let started = std::time::Instant::now();
    let status = Command::new(bin("nw-bench"))
        .args(["soak", "--out", "target/soak"])
        .args(["--minutes", &minutes.to_string()])
        .args(["--connections", &connections.to_string()])
        .env("NODEWARD_BIN", bin("nodeward"))
        .env("NW_POD_BIN", bin("nw-pod"))
        .status()
        .context("running nw-bench soak")?;
    eprintln!(
        "xtask soak: {minutes} min with {connections} connections took {:.0}s in all",
        started.elapsed().as_secs_f64()
    );
    if !status.success() {
        bail!("soak failed: {status}");
    }
    Ok(())
}

/// Where cargo puts what it builds: `CARGO_TARGET_DIR` if set, else `target`.
fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| "target".into(), Into::into)
}

fn cargo(args: &[&str]) -> Result<()> {
    run(Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())).args(args))
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn deb_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${Status}", pkg])
        .output()
        .is_ok_and(|o| o.stdout == b"install ok installed")
}

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        || ["/usr/sbin", "/sbin"]
            .iter()
            .any(|d| std::path::Path::new(d).join(bin).is_file())
}
