//! Builds the BPF programs so the `nodeward` binary embeds them.
//!
//! The kernel crate needs nightly, `-Z build-std=core` and `bpf-linker`
//! (`cargo xtask setup` installs them). Set `NODEWARD_BPF_OBJECT` to a
//! prebuilt object to skip this step.

use std::{env, path::PathBuf, process::Command};

use anyhow::{bail, Context, Result};

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
    ] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    let target_dir = out_dir.join("bpf-target");
    let mut cmd = Command::new("rustup");
    cmd.current_dir(&root)
        .args([
            "run",
            "nightly",
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
    let status = cmd
        .status()
        .context("running `rustup run nightly cargo` (run `cargo xtask setup` first)")?;
    if !status.success() {
        bail!("building the BPF programs failed; `cargo xtask setup` installs nightly rust-src and bpf-linker");
    }
    let built = target_dir.join("bpfel-unknown-none/release/nodeward-ebpf");
    std::fs::copy(&built, &dest).with_context(|| format!("copying {}", built.display()))?;
    Ok(())
}
