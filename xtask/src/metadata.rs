//! The parts of `cargo metadata --format-version 1` that the checks read.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// The whole workspace as cargo sees it.
#[derive(Debug, Deserialize)]
pub struct Metadata {
    /// Every package in the dependency graph, workspace members included.
    pub packages: Vec<Package>,
    /// Package ids of the workspace members.
    pub workspace_members: Vec<String>,
    /// The resolved graph; absent only with `--no-deps`.
    pub resolve: Option<Resolve>,
    /// The directory of the root `Cargo.toml`.
    pub workspace_root: PathBuf,
    /// `[workspace.metadata]` of the root `Cargo.toml` (null when absent).
    #[serde(default)]
    pub metadata: serde_json::Value,
}

/// One package.
#[derive(Debug, Deserialize)]
pub struct Package {
    /// Opaque id, as used by `workspace_members` and `resolve`.
    pub id: String,
    /// The package name (`[package] name`).
    pub name: String,
    /// Path of the package's `Cargo.toml`.
    pub manifest_path: PathBuf,
    /// Declared dependencies, including optional and platform-specific ones.
    pub dependencies: Vec<Dependency>,
    /// Library, binaries, tests, build script and so on.
    pub targets: Vec<Target>,
}

/// One declared dependency of a package.
#[derive(Debug, Deserialize)]
pub struct Dependency {
    /// The depended-on package's name (not its `rename`).
    pub name: String,
    /// `None` for normal, `Some("dev")` or `Some("build")` otherwise.
    pub kind: Option<String>,
}

/// One compilation target of a package.
#[derive(Debug, Deserialize)]
pub struct Target {
    /// Target name (the binary's or library's name).
    pub name: String,
    /// `lib`, `bin`, `test`, `custom-build`, ...
    pub kind: Vec<String>,
    /// The target's root source file.
    pub src_path: PathBuf,
}

/// The resolved dependency graph.
#[derive(Debug, Deserialize)]
pub struct Resolve {
    /// One node per package in the graph.
    pub nodes: Vec<Node>,
}

/// A package in the resolved graph and its edges.
#[derive(Debug, Deserialize)]
pub struct Node {
    /// The package id.
    pub id: String,
    /// Outgoing edges.
    pub deps: Vec<NodeDep>,
}

/// An edge of the resolved graph.
#[derive(Debug, Deserialize)]
pub struct NodeDep {
    /// Id of the depended-on package.
    pub pkg: String,
    /// The kinds this edge has (one package may be both a normal and a dev dependency).
    pub dep_kinds: Vec<DepKind>,
}

/// One kind of a resolved edge.
#[derive(Debug, Deserialize)]
pub struct DepKind {
    /// `None` for normal, `Some("dev")` or `Some("build")` otherwise.
    pub kind: Option<String>,
}

impl Metadata {
    /// Runs `cargo metadata` in the current directory and parses its output.
    pub fn load() -> Result<Self> {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .args(["metadata", "--format-version", "1"])
            .output()
            .context("running cargo metadata")?;
        if !out.status.success() {
            bail!(
                "cargo metadata failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        serde_json::from_slice(&out.stdout).context("parsing cargo metadata")
    }

    /// The workspace members, in cargo's order.
    pub fn members(&self) -> impl Iterator<Item = &Package> {
        self.workspace_members
            .iter()
            .filter_map(|id| self.packages.iter().find(|p| &p.id == id))
    }

    /// The name of the package with this id (the id itself if it is unknown).
    pub fn name_of<'a>(&'a self, id: &'a str) -> &'a str {
        self.packages
            .iter()
            .find(|p| p.id == id)
            .map_or(id, |p| p.name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The field names match what cargo prints (an excerpt of real output).
    #[test]
    fn parses_cargo_output() {
        let json = r#"{
          "packages": [{"name": "a", "id": "path+file:///w/a#0.1.0", "manifest_path": "/w/a/Cargo.toml",
            "dependencies": [{"name": "b", "source": null, "req": "*", "kind": null, "rename": null,
              "optional": false, "uses_default_features": true, "features": [], "target": null, "registry": null}],
            "targets": [{"kind": ["lib"], "crate_types": ["lib"], "name": "a", "src_path": "/w/a/src/lib.rs"}]}],
          "workspace_members": ["path+file:///w/a#0.1.0"],
          "resolve": {"nodes": [{"id": "path+file:///w/a#0.1.0", "dependencies": [],
            "deps": [{"name": "b", "pkg": "x#b@1", "dep_kinds": [{"kind": "build", "target": null}]}], "features": []}],
            "root": null},
          "workspace_root": "/w",
          "metadata": {"nodeward": {"layers": [["a"]]}}
        }"#;
        let meta: Metadata = serde_json::from_str(json).expect("parses");
        assert_eq!(meta.members().count(), 1);
        assert_eq!(meta.name_of("path+file:///w/a#0.1.0"), "a");
        let node = &meta.resolve.as_ref().expect("resolve").nodes[0];
        assert_eq!(node.deps[0].dep_kinds[0].kind.as_deref(), Some("build"));
        assert!(meta.metadata["nodeward"]["layers"].is_array());
    }
}
