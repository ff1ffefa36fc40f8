//! `cargo xtask image`: a static nodeward in an OCI image archive, built
//! without a container daemon, and the test that runs it with podman.
//!
//! The binary is built for `x86_64-unknown-linux-musl` (static: the image
//! holds nothing else, no libc, no shell). The OCI layout is small enough
//! to write directly: one gzipped layer, a config, a manifest and an index,
//! each blob named by its sha256, all in one tar (`oci-archive`, which
//! `podman load` and `ctr images import` take). Timestamps and owners are
//! fixed, so the same binary gives the same image digest.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context, Result};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::{cargo, on_path, run, target_dir};

/// The static target the image's binary is built for.
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";
/// Where the binary sits in the image (and the entrypoint).
const BIN_IN_IMAGE: &str = "usr/local/bin/nodeward";
/// The image's name, as the DaemonSet (`deploy/30-daemonset.yaml`) names
/// it: nothing is published, the archive is imported on each node.
const REPOSITORY: &str = "localhost/nodeward";
/// The size the image must stay under (issue 16).
const MAX_SIZE: u64 = 30 * 1024 * 1024;

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// The image's reference, `localhost/nodeward:<version>`.
pub fn reference() -> String {
    format!("{REPOSITORY}:{}", env!("CARGO_PKG_VERSION"))
}

/// Where `cargo xtask image` writes the archive.
pub fn archive_path() -> PathBuf {
    target_dir()
        .join("image")
        .join(format!("nodeward-{}.oci.tar", env!("CARGO_PKG_VERSION")))
}

/// Adds the musl target when rustup lacks it (`musl-gcc`, for ring's C
/// code, comes with the apt packages).
pub fn setup() -> Result<()> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("running rustup")?;
    if !String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l == MUSL_TARGET)
    {
        eprintln!("xtask setup: adding the {MUSL_TARGET} target");
        run(Command::new("rustup").args(["target", "add", MUSL_TARGET]))?;
    }
    Ok(())
}

/// Builds the static binary and writes the image archive; returns its path.
pub fn build() -> Result<PathBuf> {
    let started = Instant::now();
    cargo(&[
        "build",
        "--release",
        "-p",
        "nodeward",
        "--target",
        MUSL_TARGET,
    ])?;
    let built = started.elapsed();
    let bin = target_dir().join(MUSL_TARGET).join("release/nodeward");
    let out = archive_path();
    write_archive(
        &std::fs::read(&bin).context("reading the musl binary")?,
        &out,
    )?;
    let size = std::fs::metadata(&out)?.len();
    eprintln!(
        "xtask image: {} ({:.1} MB, {} as {}; musl release build took {:.0}s)",
        out.display(),
        size as f64 / 1e6,
        BIN_IN_IMAGE,
        reference(),
        built.as_secs_f64()
    );
    if size > MAX_SIZE {
        bail!("the image is {size} bytes, above the {MAX_SIZE}-byte budget");
    }
    Ok(out)
}

/// Loads the archive with podman and runs `nodeward --version` and
/// `nodeward policy check` on the example policies inside it. Prints a
/// SKIPPED line and returns `false` only where podman cannot run a
/// container.
pub fn test(archive: &Path) -> Result<bool> {
    let podman = Podman::new()?;
    if !on_path("podman") || !on_path("runc") {
        println!("SKIPPED image test: podman or runc is not installed");
        return Ok(false);
    }
    let bin = musl_binary();
    // A binary that does not run on the host is a failure, not a reason
    // to skip.
    run(Command::new(&bin).arg("--version"))?;
    if let Err(e) = podman.probe(&bin) {
        println!("SKIPPED image test: podman cannot run a container here: {e:#}");
        return Ok(false);
    }
    let loaded = podman.output(&["load", "-i", &archive.display().to_string()])?;
    if !loaded.contains(&reference()) {
        bail!(
            "podman load did not name the image {}: {loaded}",
            reference()
        );
    }
    let version = podman.output(&[
        "run",
        "--rm",
        "--network",
        "none",
        &reference(),
        "--version",
    ])?;
    let want = format!("nodeward {}", env!("CARGO_PKG_VERSION"));
    if version.trim() != want {
        bail!("`nodeward --version` in the image said {version:?}, not {want:?}");
    }
    let policies = std::fs::canonicalize("policies").context("policies/")?;
    let checked = podman.output(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        &format!("{}:/policies:ro", policies.display()),
        &reference(),
        "policy",
        "check",
        "/policies",
    ])?;
    println!(
        "image test: {} runs: {}; policy check: {}",
        reference(),
        version.trim(),
        checked.trim()
    );
    Ok(true)
}

/// The static binary `build` builds.
pub fn musl_binary() -> PathBuf {
    target_dir().join(MUSL_TARGET).join("release/nodeward")
}

/// podman with this machine's workarounds and its own storage under the
/// target dir (so the test leaves nothing in the host's image store).
pub struct Podman {
    base: Vec<String>,
    conf: PathBuf,
}

impl Podman {
    pub fn new() -> Result<Self> {
        let dir = std::path::absolute(target_dir().join("image/podman"))?;
        std::fs::create_dir_all(&dir)?;
        // crun (podman's default) cannot set rlimits without
        // CAP_SYS_RESOURCE and refuses hybrid cgroups; runc with no
        // default ulimits runs containers on these machines.
        let conf = dir.join("containers.conf");
        std::fs::write(&conf, "[containers]\ndefault_ulimits = []\n")?;
        let base = [
            "--runtime",
            "runc",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
            "--storage-driver",
            "vfs",
        ]
        .map(String::from)
        .into_iter()
        .chain([
            "--root".into(),
            dir.join("root").display().to_string(),
            "--runroot".into(),
            dir.join("run").display().to_string(),
        ])
        .collect();
        Ok(Self { base, conf })
    }

    /// Whether podman can run a container at all, apart from the image:
    /// the same static binary in a bare root directory (`--rootfs`).
    fn probe(&self, bin: &Path) -> Result<()> {
        let rootfs = self.conf.with_file_name("probe-rootfs");
        std::fs::create_dir_all(&rootfs)?;
        std::fs::copy(bin, rootfs.join("nodeward"))?;
        let rootfs = rootfs.display().to_string();
        self.output(&[
            "run",
            "--rm",
            "--network",
            "none",
            "--rootfs",
            &rootfs,
            "/nodeward",
            "--version",
        ])
        .map(drop)
    }

    /// podman's stdout and stderr together (`podman logs` passes the
    /// container's two streams through apart).
    pub fn combined(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("podman")
            .env("CONTAINERS_CONF", &self.conf)
            .args(&self.base)
            .args(args)
            .output()
            .context("running podman")?;
        Ok(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }

    pub fn output(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("podman")
            .env("CONTAINERS_CONF", &self.conf)
            .args(&self.base)
            .args(args)
            .output()
            .context("running podman")?;
        if !out.status.success() {
            bail!(
                "podman {}: {}\n{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Writes the OCI image archive holding `binary` to `out`.
fn write_archive(binary: &[u8], out: &Path) -> Result<()> {
    let layer_tar = layer(binary)?;
    let diff_id = sha256(&layer_tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&layer_tar)?;
    let layer_gz = gz.finish()?;
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "Entrypoint": [format!("/{BIN_IN_IMAGE}")],
            "Cmd": ["--help"],
            "Env": ["PATH=/usr/local/bin"],
            "Labels": {
                "org.opencontainers.image.title": "nodeward",
                "org.opencontainers.image.version": env!("CARGO_PKG_VERSION"),
            },
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "cargo xtask image"}],
    }))?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": descriptor(CONFIG_TYPE, &config),
        "layers": [descriptor(LAYER_TYPE, &layer_gz)],
    }))?;
    let mut entry = descriptor(MANIFEST_TYPE, &manifest);
    entry["annotations"] = json!({
        // A full reference, which podman and containerd both take as the
        // image's name (containerd reads its own annotation first).
        "org.opencontainers.image.ref.name": reference(),
        "io.containerd.image.name": reference(),
    });
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry],
    }))?;
    std::fs::create_dir_all(out.parent().context("archive path has no parent")?)?;
    let mut archive = tar::Builder::new(std::fs::File::create(out)?);
    append(
        &mut archive,
        "oci-layout",
        br#"{"imageLayoutVersion":"1.0.0"}"#,
        0o644,
    )?;
    append(&mut archive, "index.json", &index, 0o644)?;
    append_dir(&mut archive, "blobs/")?;
    append_dir(&mut archive, "blobs/sha256/")?;
    for blob in [&layer_gz, &config, &manifest] {
        let name = format!("blobs/sha256/{}", hex(&Sha256::digest(blob)));
        append(&mut archive, &name, blob, 0o644)?;
    }
    archive.into_inner()?.sync_all()?;
    Ok(())
}

/// The one layer: the binary plus the directories it expects.
fn layer(binary: &[u8]) -> Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    for dir in [
        "etc/",
        "etc/nodeward/",
        "usr/",
        "usr/local/",
        "usr/local/bin/",
    ] {
        append_dir(&mut tar, dir)?;
    }
    let mut tmp = header(tar::EntryType::Directory, 0o1777, 0);
    tar.append_data(&mut tmp, "tmp/", std::io::empty())?;
    append(&mut tar, BIN_IN_IMAGE, binary, 0o755)?;
    Ok(tar.into_inner()?)
}

fn append<W: Write>(tar: &mut tar::Builder<W>, path: &str, data: &[u8], mode: u32) -> Result<()> {
    let mut h = header(tar::EntryType::Regular, mode, data.len() as u64);
    tar.append_data(&mut h, path, data)?;
    Ok(())
}

fn append_dir<W: Write>(tar: &mut tar::Builder<W>, path: &str) -> Result<()> {
    let mut h = header(tar::EntryType::Directory, 0o755, 0);
    tar.append_data(&mut h, path, std::io::empty())?;
    Ok(())
}

/// A header with fixed owner (root) and time, so the digests are stable.
fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

fn descriptor(media_type: &str, blob: &[u8]) -> serde_json::Value {
    json!({"mediaType": media_type, "digest": sha256(blob), "size": blob.len()})
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(data)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    /// The archive's entries by name.
    fn entries(archive: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
        let mut tar = tar::Archive::new(std::fs::File::open(archive).expect("archive"));
        tar.entries()
            .expect("entries")
            .map(|e| {
                let mut e = e.expect("entry");
                let name = e.path().expect("path").display().to_string();
                let mut data = Vec::new();
                e.read_to_end(&mut data).expect("read");
                (name, data)
            })
            .collect()
    }

    fn json(data: &[u8]) -> serde_json::Value {
        serde_json::from_slice(data).expect("json")
    }

    #[test]
    fn every_blob_is_named_by_its_digest_and_the_index_reaches_the_binary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("image.oci.tar");
        write_archive(b"not really an ELF", &out).expect("archive");
        let files = entries(&out);
        for (name, data) in &files {
            // Every file there (the directory itself has an empty name).
            if let Some(hex) = name.strip_prefix("blobs/sha256/").filter(|h| !h.is_empty()) {
                assert_eq!(sha256(data), format!("sha256:{hex}"), "{name}");
            }
        }
        let blob = |digest: &serde_json::Value| {
            let d = digest
                .as_str()
                .expect("digest")
                .trim_start_matches("sha256:");
            files[&format!("blobs/sha256/{d}")].clone()
        };
        let index = json(&files["index.json"]);
        let entry = &index["manifests"][0];
        assert_eq!(
            entry["annotations"]["org.opencontainers.image.ref.name"],
            reference()
        );
        let manifest = json(&blob(&entry["digest"]));
        let config = json(&blob(&manifest["config"]["digest"]));
        assert_eq!(config["config"]["Entrypoint"][0], "/usr/local/bin/nodeward");
        let layer_gz = blob(&manifest["layers"][0]["digest"]);
        let mut layer = Vec::new();
        flate2::read::GzDecoder::new(&layer_gz[..])
            .read_to_end(&mut layer)
            .expect("gunzip");
        assert_eq!(config["rootfs"]["diff_ids"][0], sha256(&layer));
        let mut tar = tar::Archive::new(&layer[..]);
        let bin = tar
            .entries()
            .expect("layer")
            .map(|e| e.expect("entry"))
            .find(|e| e.path().expect("path").to_str() == Some(BIN_IN_IMAGE))
            .expect("the binary is in the layer");
        assert_eq!(bin.header().mode().expect("mode"), 0o755);
    }

    #[test]
    fn the_same_binary_gives_the_same_archive() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a.tar"), dir.path().join("b.tar"));
        write_archive(b"binary", &a).expect("a");
        write_archive(b"binary", &b).expect("b");
        assert_eq!(std::fs::read(a).expect("a"), std::fs::read(b).expect("b"));
    }
}
