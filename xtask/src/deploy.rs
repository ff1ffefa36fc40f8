//! Offline checks of what deploys nodeward: the manifests in `deploy/`
//! against the Kubernetes OpenAPI schemas, and the `vagrant/` recipe with
//! `vagrant validate`. No cluster is involved (none can be had here).

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context, Result};

use crate::{image, on_path, target_dir};

/// The manifest directory `kubectl apply -f deploy/` takes.
const DEPLOY_DIR: &str = "deploy";
/// The DaemonSet, whose image must be the one `cargo xtask image` names.
const DAEMONSET: &str = "deploy/30-daemonset.yaml";
/// The vagrant recipe's smoke-check workloads.
const SMOKE: &str = "vagrant/smoke.yaml";
/// How many of the newest Kubernetes minor releases the manifests are
/// validated against.
const RELEASES: usize = 3;

/// Validates every manifest, strictly (unknown fields are errors), against
/// the schemas of the newest Kubernetes releases `kubernetes-validate`
/// knows. Prints a SKIPPED line if the validator cannot be installed
/// (PyPI unreachable).
pub fn validate_manifests() -> Result<()> {
    check_image_reference()?;
    let Some(venv) = validator()? else {
        return Ok(());
    };
    let files = manifests()?;
    for version in newest_releases(&venv)? {
        let status = Command::new(venv.join("bin/kubernetes-validate"))
            .args(["--strict", "--quiet", "-k", &version])
            .args(&files)
            .status()
            .context("running kubernetes-validate")?;
        if !status.success() {
            bail!("deploy/: manifests are not valid for Kubernetes {version}");
        }
        println!(
            "deploy/ and {SMOKE}: {} manifests valid for Kubernetes {version} (strict)",
            files.len()
        );
    }
    Ok(())
}

/// Runs the Vagrantfile's host preparation (`vagrant/host-prepare.sh`:
/// CA, node identities, join material) into the target dir, then
/// `vagrant validate` for each provider it describes (the file
/// provisioners' sources must exist for it to pass). Prints a SKIPPED line
/// if vagrant is not installed.
pub fn validate_vagrant(archive: &std::path::Path) -> Result<()> {
    if !on_path("vagrant") {
        println!(
            "SKIPPED vagrant validate: vagrant is not installed (cargo xtask setup installs it)"
        );
        return Ok(());
    }
    check_shell_syntax()?;
    let state = std::path::absolute(target_dir().join("vagrant-state"))?;
    let nodeward = target_dir()
        .join(image::MUSL_TARGET)
        .join("release/nodeward");
    crate::run(
        Command::new("sh")
            .arg("vagrant/host-prepare.sh")
            .args([nodeward.as_path(), archive, &state])
            .args(["192.168.56.10", "nw-cp", "nw-w1", "nw-w2"]),
    )?;
    for provider in ["libvirt", "virtualbox"] {
        let mut cmd = Command::new("vagrant");
        cmd.arg("validate");
        // Validating a provider's settings needs the provider itself:
        // vagrant-libvirt installs from Debian, VirtualBox does not, so
        // without it its block is skipped (and the rest still checked).
        let skip_provider = !provider_installed(provider);
        if skip_provider {
            cmd.arg("--ignore-provider");
        }
        let out = cmd
            .current_dir("vagrant")
            .env("NODEWARD_VAGRANT_STATE", &state)
            .env("CARGO_TARGET_DIR", std::path::absolute(target_dir())?)
            .env("VAGRANT_DEFAULT_PROVIDER", provider)
            .env("VAGRANT_CHECKPOINT_DISABLE", "1")
            .output()
            .context("running vagrant validate")?;
        if !out.status.success() {
            bail!(
                "vagrant validate ({provider}) failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let note = if skip_provider {
            " (provider not installed: its settings not checked)"
        } else {
            ""
        };
        println!("vagrant/: Vagrantfile valid for {provider}{note}");
    }
    Ok(())
}

/// `sh -n` on the recipe's scripts: they run only inside VMs, which
/// cannot be booted here, so a syntax error would go unseen otherwise.
fn check_shell_syntax() -> Result<()> {
    for entry in std::fs::read_dir("vagrant").context("vagrant/")? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "sh") {
            crate::run(Command::new("sh").arg("-n").arg(&path))?;
        }
    }
    Ok(())
}

/// Whether vagrant can use `provider` here.
fn provider_installed(provider: &str) -> bool {
    match provider {
        "virtualbox" => on_path("VBoxManage"),
        _ => Command::new("vagrant")
            .args(["plugin", "list"])
            .env("VAGRANT_CHECKPOINT_DISABLE", "1")
            .output()
            .is_ok_and(|o| {
                String::from_utf8_lossy(&o.stdout).contains(&format!("vagrant-{provider}"))
            }),
    }
}

/// The DaemonSet runs the image `cargo xtask image` builds, at this version.
fn check_image_reference() -> Result<()> {
    let text = std::fs::read_to_string(DAEMONSET).context(DAEMONSET)?;
    let want = format!("image: {}", image::reference());
    if !text.lines().any(|l| l.trim() == want) {
        bail!("{DAEMONSET}: the nodeward container must run `{want}` (the image `cargo xtask image` builds)");
    }
    Ok(())
}

/// The YAML files in `deploy/`, sorted, and the smoke check's workloads.
fn manifests() -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(DEPLOY_DIR)
        .context(DEPLOY_DIR)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == "yaml"));
    files.sort();
    if files.is_empty() {
        bail!("no manifests in {DEPLOY_DIR}/");
    }
    files.push(SMOKE.into());
    Ok(files)
}

/// A virtualenv under the target dir with `kubernetes-validate`, installed
/// on first use; `None` (after a SKIPPED line) if pip cannot install it.
fn validator() -> Result<Option<PathBuf>> {
    let venv = std::path::absolute(target_dir().join("venv/kubernetes-validate"))?;
    if venv.join("bin/kubernetes-validate").is_file() {
        return Ok(Some(venv));
    }
    let created = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .is_ok_and(|s| s.success());
    let installed = created
        && Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "kubernetes-validate"])
            .status()
            .is_ok_and(|s| s.success());
    if !installed {
        println!(
            "SKIPPED manifest validation: cannot install kubernetes-validate from PyPI into {}",
            venv.display()
        );
        return Ok(None);
    }
    Ok(Some(venv))
}

/// The newest `RELEASES` minor releases the validator has schemas for,
/// e.g. `["1.37.0", "1.36.0", "1.35.0"]`.
fn newest_releases(venv: &std::path::Path) -> Result<Vec<String>> {
    let out = Command::new(venv.join("bin/python"))
        .args([
            "-c",
            "from kubernetes_validate.utils import all_versions; print('\\n'.join(all_versions()))",
        ])
        .output()
        .context("asking kubernetes-validate for its versions")?;
    if !out.status.success() {
        bail!(
            "kubernetes-validate's version list: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut versions: Vec<(u32, u32, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|v| {
            let mut parts = v.trim().split('.');
            let major = parts.next()?.parse().ok()?;
            let minor = parts.next()?.parse().ok()?;
            Some((major, minor, v.trim().to_owned()))
        })
        .collect();
    versions.sort();
    versions.dedup_by_key(|(major, minor, _)| (*major, *minor));
    let newest: Vec<String> = versions
        .into_iter()
        .rev()
        .take(RELEASES)
        .map(|v| v.2)
        .collect();
    if newest.len() < RELEASES {
        bail!("kubernetes-validate knows fewer than {RELEASES} Kubernetes releases: {newest:?}");
    }
    Ok(newest)
}
