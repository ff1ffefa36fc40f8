//! `cargo xtask fuzz`: the cargo-fuzz targets in `fuzz/` (docs/fuzzing.md).
//!
//! They build with the nightly the BPF programs pin (libFuzzer needs `-Z`
//! flags) into `target/fuzz`, without a sanitizer: what they reach is safe
//! Rust, and AddressSanitizer would only slow them down. Each run reads
//! the committed seeds in `fuzz/corpus/<target>` and grows its own corpus
//! in `target/fuzz/corpus/<target>`, so nothing generated lands in git.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context, Result};

use crate::{on_path, run, target_dir, toolchain};

/// The fuzz package's manifest; its `[[bin]]`s are the targets.
const MANIFEST: &str = "fuzz/Cargo.toml";
/// Seconds per target when none are given.
pub const DEFAULT_SECONDS: u64 = 60;
/// Seconds per target in `cargo xtask test`.
pub const TEST_SECONDS: u64 = 15;

/// Installs cargo-fuzz if it is missing (the nightly comes with the BPF
/// toolchain).
pub fn setup() -> Result<()> {
    if on_path("cargo-fuzz") {
        return Ok(());
    }
    eprintln!("xtask setup: installing cargo-fuzz");
    run(Command::new(cargo()).args(["install", "cargo-fuzz", "--locked"]))
}

/// Runs `only` (or every target) for `seconds` each, one after the other;
/// fails on the first target that finds a crash.
pub fn run_targets(seconds: u64, only: Option<&str>) -> Result<()> {
    let all = targets()?;
    let chosen: Vec<&String> = match only {
        Some(name) if all.iter().any(|t| t == name) => all.iter().filter(|t| *t == name).collect(),
        Some(name) => bail!("no fuzz target {name:?}; the targets: {}", all.join(", ")),
        None => all.iter().collect(),
    };
    let nightly = toolchain::pinned_nightly()?;
    let work = fuzz_dir()?;
    let started = Instant::now();
    build(&nightly, &work)?;
    eprintln!(
        "xtask fuzz: built in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    for target in chosen {
        let started = Instant::now();
        run_one(&nightly, &work, target, seconds)?;
        eprintln!(
            "xtask fuzz: {target}: no crash in {:.0}s",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// The targets named in the fuzz manifest, in its order.
pub fn targets() -> Result<Vec<String>> {
    let text = std::fs::read_to_string(MANIFEST).with_context(|| MANIFEST.to_owned())?;
    Ok(bin_names(&text))
}

/// `name = "..."` of every `[[bin]]` table (a line parser: the manifest is
/// kept that simple).
fn bin_names(manifest: &str) -> Vec<String> {
    let mut in_bin = false;
    let mut names = Vec::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            let name = value
                .trim()
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'));
            if let (true, "name", Some(name)) = (in_bin, key.trim(), name) {
                names.push(name.to_owned());
            }
        }
    }
    names
}

/// `target/fuzz` as an absolute path (cargo-fuzz runs cargo in `fuzz/`).
fn fuzz_dir() -> Result<PathBuf> {
    let dir = std::env::current_dir()?.join(target_dir()).join("fuzz");
    std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
    Ok(dir)
}

/// A `cargo fuzz` command with the pinned nightly and our build settings.
fn cargo_fuzz(nightly: &str, work: &Path, subcommand: &str) -> Result<Command> {
    // The targets never load BPF programs: an empty object spares the
    // fuzz build nodeward-bpf's nightly BPF build.
    let no_bpf = work.join("no-bpf.o");
    // Written once: a fresh mtime would rerun nodeward-bpf's build script
    // and rebuild everything above it before every target's run.
    if !no_bpf.exists() {
        std::fs::write(&no_bpf, b"").with_context(|| no_bpf.display().to_string())?;
    }
    // `cargo +toolchain` only works through rustup's proxy, and `CARGO`
    // names the stable toolchain's own cargo: ask rustup for the nightly.
    let mut cmd = Command::new("rustup");
    cmd.args(["run", nightly, "cargo"])
        .args([
            "fuzz",
            subcommand,
            "--fuzz-dir",
            "fuzz",
            "--sanitizer",
            "none",
        ])
        .arg("--target-dir")
        .arg(work)
        .env("NODEWARD_BPF_OBJECT", &no_bpf);
    // The outer (stable) cargo's settings are not the nightly build's.
    cmd.env_remove("RUSTUP_TOOLCHAIN");
    for (var, _) in std::env::vars() {
        if var.starts_with("CARGO_") && var != "CARGO_HOME" {
            cmd.env_remove(var);
        }
    }
    Ok(cmd)
}

fn build(nightly: &str, work: &Path) -> Result<()> {
    run(&mut cargo_fuzz(nightly, work, "build")?)
}

fn run_one(nightly: &str, work: &Path, target: &str, seconds: u64) -> Result<()> {
    let corpus = work.join("corpus").join(target);
    let artifacts = work.join("artifacts").join(target);
    for dir in [&corpus, &artifacts] {
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    }
    let mut cmd = cargo_fuzz(nightly, work, "run")?;
    // New inputs go to the first corpus directory, never to the seeds.
    cmd.arg(target)
        .arg(&corpus)
        .arg(Path::new("fuzz/corpus").join(target).canonicalize()?)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .args(["-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1"]);
    run(&mut cmd).with_context(|| {
        format!(
            "fuzz target {target} failed; its input is in {}",
            artifacts.display()
        )
    })
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bin_names_reads_each_bin_table() {
        let manifest = "[package]\nname = \"nodeward-fuzz\"\n\n[[bin]]\nname = \"path\"\npath = \"fuzz_targets/path.rs\"\n\n[[bin]]\nname = \"host\"\n";
        assert_eq!(bin_names(manifest), ["path", "host"]);
    }

    #[test]
    fn every_target_has_a_seed_corpus_and_a_source() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let manifest = std::fs::read_to_string(root.join(MANIFEST)).expect("fuzz manifest");
        let names = bin_names(&manifest);
        assert!(names.len() >= 9, "{names:?}");
        for name in names {
            let seeds = root.join("fuzz/corpus").join(&name);
            let count = std::fs::read_dir(&seeds).map_or(0, Iterator::count);
            assert!((1..=20).contains(&count), "{name}: {count} seeds");
            let source = root.join("fuzz/fuzz_targets").join(format!("{name}.rs"));
            assert!(source.is_file(), "{}", source.display());
        }
    }
}
