//! Builds the BPF programs so the `nodeward` binary embeds them.
//!
//! The kernel crate needs nightly, `-Z build-std=core` and `bpf-linker`
//! (`cargo xtask setup` installs them). It builds with the dated nightly
//! pinned in `ebpf/programs/rust-toolchain.toml`, whatever toolchain runs
//! this script. Set `NODEWARD_BPF_OBJECT` to a prebuilt object to skip
//! this step.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

/// Pins the nightly the BPF programs build with.
const TOOLCHAIN_FILE: &str = "ebpf/programs/rust-toolchain.toml";

fn main() -> Result<()> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let dest = out_dir.join("nodeward-ebpf.o");
    println!("cargo:rerun-if-env-changed=NODEWARD_BPF_OBJECT");
    if let Some(prebuilt) = env::var_os("NODEWARD_BPF_OBJECT") {
        println!(
            "cargo:rerun-if-changed={}",
            PathBuf::from(&prebuilt).display()
        );
        std::fs::copy(&prebuilt, &dest).context("copying NODEWARD_BPF_OBJECT")?;
        return Ok(());
    }
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../..");
    for dir in [
        "ebpf/programs/src",
        "ebpf/common/src",
        "ebpf/programs/Cargo.toml",
        TOOLCHAIN_FILE,
    ] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    let nightly = pinned_nightly(&root)?;
    let target_dir = out_dir.join("bpf-target");
    let mut cmd = Command::new("rustup");
    cmd.current_dir(&root)
        .args([
            "run",
            &nightly,
            "cargo",
            "build",
            "--release",
            "-p",
            "nodeward-ebpf",
        ])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir);
    // The outer cargo's settings are for the host build, not the BPF one.
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
    ] {
        cmd.env_remove(var);
    }
    for (var, _) in env::vars() {
        if (var.starts_with("CARGO_") && var != "CARGO_HOME") || var == "RUSTUP_TOOLCHAIN" {
            cmd.env_remove(var);
        }
    }
    let status = cmd.status().with_context(|| {
        format!("running `rustup run {nightly} cargo` (run `cargo xtask setup` first)")
    })?;
    if !status.success() {
        bail!("building the BPF programs with {nightly} failed; `cargo xtask setup` installs it with rust-src, and the bpf-linker that matches its LLVM");
    }
    let built = target_dir.join("bpfel-unknown-none/release/nodeward-ebpf");
    std::fs::copy(&built, &dest).with_context(|| format!("copying {}", built.display()))?;
    Ok(())
}

/// The `channel` under `[toolchain]` in the pin file: the same line parser
/// as xtask's `toolchain::channel` (unit-tested there), since a build script
/// cannot share xtask's code.
fn pinned_nightly(root: &Path) -> Result<String> {
    let text = std::fs::read_to_string(root.join(TOOLCHAIN_FILE)).context(TOOLCHAIN_FILE)?;
    let mut in_toolchain = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_toolchain = line == "[toolchain]";
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            if in_toolchain && key.trim() == "channel" {
                return Ok(value.trim().trim_matches('"').to_owned());
            }
        }
    }
    bail!("{TOOLCHAIN_FILE}: no `channel = \"...\"` under [toolchain]")
}
