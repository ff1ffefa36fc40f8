//! The pinned toolchains and the bpf-linker that must match them.
//!
//! The BPF programs build with the dated nightly named in
//! `ebpf/programs/rust-toolchain.toml` (the host crates with the stable one
//! in the root `rust-toolchain.toml`, which rustup picks by itself).
//! bpf-linker 0.10 is built with a `rust-llvm-NN` feature and then loads
//! the nightly's own libLLVM at run time, so NN must be the LLVM major
//! version that nightly reports in `rustc -vV`: moving the pin moves the
//! linker's feature with it. What `cargo install` recorded in
//! `$CARGO_HOME/.crates2.json` says which feature the installed linker was
//! built with (`bpf-linker --version` does not say).

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context, Result};

use crate::run;

/// The file that pins the BPF programs' nightly.
pub const NIGHTLY_FILE: &str = "ebpf/programs/rust-toolchain.toml";
/// The bpf-linker series that has the `rust-llvm-NN` features (later
/// series link a system LLVM instead of the toolchain's).
const LINKER_SERIES: &str = "0.10.";
/// `cargo install --version` for that series.
const LINKER_VERSION_REQ: &str = "~0.10";

/// Installs the pinned nightly with `rust-src` and a bpf-linker built for
/// its LLVM, each only when missing or mismatched.
pub fn setup() -> Result<()> {
    let nightly = pinned_nightly()?;
    if !has_rust_src(&nightly) {
        eprintln!("xtask setup: installing the pinned nightly {nightly} with rust-src");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            &nightly,
            "--profile",
            "minimal",
            "-c",
            "rust-src",
        ]))?;
    }
    let feature = linker_feature(&rustc_version(&nightly)?)
        .with_context(|| format!("no `LLVM version:` in `rustc -vV` of {nightly}"))?;
    if installed_linker_matches(&feature) {
        return Ok(());
    }
    eprintln!(
        "xtask setup: installing bpf-linker {LINKER_SERIES}x with {feature} (about a minute)"
    );
    run(Command::new("cargo").args([
        "install",
        "bpf-linker",
        "--version",
        LINKER_VERSION_REQ,
        "--locked",
        "--force",
        "--no-default-features",
        "--features",
        &feature,
    ]))
    .with_context(|| {
        format!("bpf-linker {LINKER_SERIES}x has no feature {feature}: pin a nightly whose LLVM it supports in {NIGHTLY_FILE}")
    })
}

/// The toolchain `ebpf/programs/rust-toolchain.toml` pins.
pub fn pinned_nightly() -> Result<String> {
    let text = std::fs::read_to_string(NIGHTLY_FILE).with_context(|| NIGHTLY_FILE.to_owned())?;
    match channel(&text) {
        Some(c) => Ok(c),
        None => bail!("{NIGHTLY_FILE}: no `channel = \"...\"` under [toolchain]"),
    }
}

/// The `channel` of a `rust-toolchain.toml`'s `[toolchain]` table (the
/// file is this simple on purpose: a line parser reads it, here and in
/// nodeward-bpf's build script).
pub fn channel(toolchain_toml: &str) -> Option<String> {
    let mut in_toolchain = false;
    for line in toolchain_toml.lines().map(str::trim) {
        if line.starts_with('[') {
            in_toolchain = line == "[toolchain]";
            continue;
        }
        match line.split_once('=') {
            Some((key, value)) if in_toolchain && key.trim() == "channel" => {
                let value = value.trim();
                return Some(value.strip_prefix('"')?.strip_suffix('"')?.to_owned());
            }
            _ => {}
        }
    }
    None
}

/// bpf-linker's feature for the LLVM in `rustc -vV` output: `rust-llvm-NN`.
pub fn linker_feature(rustc_vv: &str) -> Option<String> {
    let version = rustc_vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))?
        .trim();
    let major: u32 = version.split('.').next()?.parse().ok()?;
    Some(format!("rust-llvm-{major}"))
}

/// Whether `cargo install` recorded a bpf-linker of the right series with
/// `feature`, in the `.crates2.json` text `crates2`.
pub fn recorded_linker_matches(crates2: &str, feature: &str) -> bool {
    let Ok(json) = serde_json::from_str::<serde_json::Value>(crates2) else {
        return false;
    };
    let Some(installs) = json["installs"].as_object() else {
        return false;
    };
    installs.iter().any(|(key, install)| {
        key.starts_with(&format!("bpf-linker {LINKER_SERIES}"))
            && install["features"]
                .as_array()
                .is_some_and(|fs| fs.iter().any(|f| f == feature))
    })
}

fn installed_linker_matches(feature: &str) -> bool {
    let on_path = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    on_path
        && std::fs::read_to_string(cargo_home().join(".crates2.json"))
            .is_ok_and(|text| recorded_linker_matches(&text, feature))
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo"),
        PathBuf::from,
    )
}

fn rustc_version(toolchain: &str) -> Result<String> {
    let out = Command::new("rustup")
        .args(["run", toolchain, "rustc", "-vV"])
        .output()
        .context("running rustup")?;
    if !out.status.success() {
        bail!(
            "`rustup run {toolchain} rustc -vV` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn has_rust_src(toolchain: &str) -> bool {
    Command::new("rustup")
        .args(["component", "list", "--toolchain", toolchain, "--installed"])
        .output()
        .is_ok_and(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .any(|l| l.starts_with("rust-src"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_channel_of_the_toolchain_table() {
        let file = "# pinned\n[toolchain]\nchannel = \"nightly-2026-05-15\"\ncomponents = [\"rust-src\"]\n";
        assert_eq!(channel(file).as_deref(), Some("nightly-2026-05-15"));
        assert_eq!(channel("[other]\nchannel = \"x\"\n"), None);
        assert_eq!(channel("[toolchain]\ncomponents = []\n"), None);
        assert_eq!(
            channel("[toolchain]\nchannel=\"1.95.0\""),
            Some("1.95.0".into())
        );
    }

    #[test]
    fn the_repository_pins_dated_toolchains() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let nightly = std::fs::read_to_string(root.join(NIGHTLY_FILE)).expect("nightly pin");
        let nightly = channel(&nightly).expect("nightly channel");
        assert!(
            nightly.len() == "nightly-YYYY-MM-DD".len() && nightly.starts_with("nightly-20"),
            "{nightly}"
        );
        let stable = std::fs::read_to_string(root.join("rust-toolchain.toml")).expect("stable pin");
        let stable = channel(&stable).expect("stable channel");
        assert_eq!(stable.split('.').count(), 3, "{stable}");
    }

    #[test]
    fn derives_the_linker_feature_from_rustc_llvm_version() {
        let vv = "rustc 1.97.0-nightly (7c3c88f42 2026-05-14)\nbinary: rustc\nhost: x86_64-unknown-linux-gnu\nrelease: 1.97.0-nightly\nLLVM version: 22.1.4\n";
        assert_eq!(linker_feature(vv).as_deref(), Some("rust-llvm-22"));
        assert_eq!(
            linker_feature("LLVM version: 23.1.4").as_deref(),
            Some("rust-llvm-23")
        );
        assert_eq!(linker_feature("rustc 1.97.0\n"), None);
        assert_eq!(linker_feature("LLVM version: x.1"), None);
    }

    #[test]
    fn matches_the_installed_linker_by_recorded_feature() {
        let crates2 = r#"{"installs": {
            "bpf-linker 0.10.4 (registry+https://github.com/rust-lang/crates.io-index)": {
                "features": ["rust-llvm-22"], "no_default_features": true
            }}}"#;
        assert!(recorded_linker_matches(crates2, "rust-llvm-22"));
        assert!(!recorded_linker_matches(crates2, "rust-llvm-23"));
        let other_series = crates2.replace("0.10.4", "0.13.0");
        assert!(!recorded_linker_matches(&other_series, "rust-llvm-22"));
        assert!(!recorded_linker_matches("{}", "rust-llvm-22"));
        assert!(!recorded_linker_matches("not json", "rust-llvm-22"));
    }
}
