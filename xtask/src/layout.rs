//! Crate layering and forbidden dependencies, declared in the root
//! `Cargo.toml`:
//!
//! ```toml
//! [workspace.metadata.nodeward]
//! layers = [["nodeward-common"], ["nodeward-policy"], ["nodeward"]]  # lowest first
//! tools = ["xtask"]
//! forbidden = { "nodeward-policy" = ["tokio"] }
//! ```
//!
//! Every workspace member sits in exactly one layer or among the tools. A
//! crate in a layer may depend (normal, dev or build) only on workspace
//! crates in strictly lower layers, never on a tool. A crate named in
//! `forbidden` must not reach the listed packages through normal or build
//! dependencies, however indirectly.

use std::collections::{BTreeMap, HashMap, VecDeque};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::metadata::Metadata;

/// `[workspace.metadata.nodeward]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Crate names per layer, lowest layer first.
    pub layers: Vec<Vec<String>>,
    /// Crates outside the layers, which no layered crate may depend on.
    #[serde(default)]
    pub tools: Vec<String>,
    /// Crate name to the package names it must never reach.
    #[serde(default)]
    pub forbidden: BTreeMap<String, Vec<String>>,
}

impl Config {
    /// Reads the table from cargo metadata's `metadata` (that is, `[workspace.metadata]`).
    pub fn from_workspace_metadata(value: &serde_json::Value) -> Result<Self> {
        let table = value.get("nodeward").with_context(|| {
            "the root Cargo.toml has no [workspace.metadata.nodeward] table (layers, tools, forbidden)"
        })?;
        Config::deserialize(table).context("reading [workspace.metadata.nodeward]")
    }
}

/// Where a crate sits.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Place {
    /// Index into `layers` (0 is the lowest).
    Layer(usize),
    Tool,
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // People count layers from one.
            Place::Layer(i) => write!(f, "layer {}", i + 1),
            Place::Tool => write!(f, "tools"),
        }
    }
}

/// Runs every layout rule; returns the summary line or every violation.
pub fn check(meta: &Metadata) -> Result<String> {
    let config = Config::from_workspace_metadata(&meta.metadata)?;
    let errors = violations(&config, meta);
    if !errors.is_empty() {
        bail!("{}", errors.join("\n"));
    }
    let layered: usize = config.layers.iter().map(Vec::len).sum();
    Ok(format!(
        "layout: {layered} crates in {} layers, {} tools, {} crates checked for forbidden dependencies, ok",
        config.layers.len(),
        config.tools.len(),
        config.forbidden.len()
    ))
}

/// Every violation of the rules, as messages naming the crates involved.
pub fn violations(config: &Config, meta: &Metadata) -> Vec<String> {
    let members: Vec<&str> = meta.members().map(|p| p.name.as_str()).collect();
    let (places, mut errors) = places(config, &members);
    errors.extend(layering(&places, meta));
    errors.extend(forbidden(config, meta));
    errors
}

/// Each crate's place, plus errors for crates placed twice, not at all, or
/// named but not in the workspace.
fn places<'a>(config: &'a Config, members: &[&str]) -> (HashMap<&'a str, Place>, Vec<String>) {
    let listed = config
        .layers
        .iter()
        .enumerate()
        .flat_map(|(i, layer)| layer.iter().map(move |c| (c, Place::Layer(i))))
        .chain(config.tools.iter().map(|c| (c, Place::Tool)));
    let mut places = HashMap::new();
    let mut errors = Vec::new();
    for (name, place) in listed {
        if !members.contains(&name.as_str()) {
            errors.push(format!(
                "{place} names crate {name}, which is not a workspace member"
            ));
        }
        if let Some(first) = places.insert(name.as_str(), place) {
            errors.push(format!(
                "crate {name} is listed twice: in {first} and in {place}"
            ));
        }
    }
    for name in members {
        if !places.contains_key(name) {
            errors.push(format!(
                "crate {name} is in no layer (add it to a layer or to tools in [workspace.metadata.nodeward])"
            ));
        }
    }
    (places, errors)
}

/// Dependencies between workspace crates that do not go strictly downwards.
fn layering(places: &HashMap<&str, Place>, meta: &Metadata) -> Vec<String> {
    let mut errors = Vec::new();
    for krate in meta.members() {
        let Some(&Place::Layer(own)) = places.get(krate.name.as_str()) else {
            continue; // tools may depend on anything; unplaced crates are reported already
        };
        for dep in &krate.dependencies {
            // A crate may name itself as a dev-dependency (to enable features in tests).
            if dep.name == krate.name {
                continue;
            }
            let Some(&theirs) = places.get(dep.name.as_str()) else {
                continue; // not a workspace crate
            };
            let kind = dep.kind.as_deref().unwrap_or("normal");
            let ok = matches!(theirs, Place::Layer(t) if t < own);
            if !ok {
                errors.push(format!(
                    "crate {} ({}) depends on {} ({}) as a {kind} dependency; a crate in a layer may depend only on crates in lower layers",
                    krate.name, Place::Layer(own), dep.name, theirs
                ));
            }
        }
    }
    errors
}

/// Forbidden packages each guarded crate reaches, with the chain that brings them in.
///
/// This walks cargo's `resolve` graph, which is resolved for the whole
/// workspace at once: features are unified across all members, so an edge
/// that exists only because another crate enables a feature of a shared
/// dependency counts here too. That is stricter than any single build,
/// which is acceptable. Platform-specific dependencies count for every
/// platform. Dev-dependency edges are skipped wherever they occur.
fn forbidden(config: &Config, meta: &Metadata) -> Vec<String> {
    let Some(resolve) = &meta.resolve else {
        return vec!["cargo metadata has no resolve graph (was it run with --no-deps?)".into()];
    };
    let edges: HashMap<&str, Vec<&str>> = resolve
        .nodes
        .iter()
        .map(|n| {
            let deps = n
                .deps
                .iter()
                .filter(|d| d.dep_kinds.iter().any(|k| k.kind.as_deref() != Some("dev")));
            (n.id.as_str(), deps.map(|d| d.pkg.as_str()).collect())
        })
        .collect();
    let mut errors = Vec::new();
    for (name, banned) in &config.forbidden {
        let Some(start) = meta.members().find(|p| &p.name == name) else {
            errors.push(format!(
                "forbidden names crate {name}, which is not a workspace member"
            ));
            continue;
        };
        for chain in banned_chains(&edges, &start.id, |id| {
            banned.iter().any(|b| b == meta.name_of(id))
        }) {
            let names: Vec<&str> = chain.iter().map(|id| meta.name_of(id)).collect();
            errors.push(format!(
                "crate {name} must not depend on {}, but does: {}",
                names.last().copied().unwrap_or_default(),
                names.join(" -> ")
            ));
        }
    }
    errors
}

/// Breadth-first from `start`: for each reachable package that `is_banned`
/// says is forbidden, the shortest chain of ids from `start` to it. The walk
/// does not go through a banned package, so each is reported once, by its
/// own chain.
fn banned_chains<'a>(
    edges: &HashMap<&'a str, Vec<&'a str>>,
    start: &'a str,
    is_banned: impl Fn(&str) -> bool,
) -> Vec<Vec<&'a str>> {
    let mut parent: HashMap<&str, &str> = HashMap::new();
    let mut queue = VecDeque::from([start]);
    let mut found = Vec::new();
    while let Some(id) = queue.pop_front() {
        for &next in edges.get(id).into_iter().flatten() {
            if next == start || parent.contains_key(next) {
                continue;
            }
            parent.insert(next, id);
            if is_banned(next) {
                found.push(chain_to(&parent, start, next));
            } else {
                queue.push_back(next);
            }
        }
    }
    found
}

/// The ids from `start` to `end`, following `parent` links back.
fn chain_to<'a>(parent: &HashMap<&'a str, &'a str>, start: &'a str, end: &'a str) -> Vec<&'a str> {
    let mut chain = vec![end];
    let mut at = end;
    while at != start {
        at = parent[at];
        chain.push(at);
    }
    chain.reverse();
    chain
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::{DepKind, Dependency, Node, NodeDep, Package, Resolve};

    /// A synthetic workspace: `crates` are (name, [(dep, kind)]) and become
    /// members; `externals` are non-member packages with their deps. The
    /// resolve graph mirrors the declared dependencies; the id is the name.
    fn workspace(
        crates: &[(&str, &[(&str, &str)])],
        externals: &[(&str, &[(&str, &str)])],
    ) -> Metadata {
        let kind = |k: &str| (k != "normal").then(|| k.to_string());
        let package = |(name, deps): &(&str, &[(&str, &str)])| Package {
            id: name.to_string(),
            name: name.to_string(),
            manifest_path: format!("/w/{name}/Cargo.toml").into(),
            dependencies: deps
                .iter()
                .map(|(d, k)| Dependency {
                    name: d.to_string(),
                    kind: kind(k),
                })
                .collect(),
            targets: Vec::new(),
        };
        let node = |(name, deps): &(&str, &[(&str, &str)])| Node {
            id: name.to_string(),
            deps: deps
                .iter()
                .map(|(d, k)| NodeDep {
                    pkg: d.to_string(),
                    dep_kinds: vec![DepKind { kind: kind(k) }],
                })
                .collect(),
        };
        let all = || crates.iter().chain(externals);
        Metadata {
            packages: all().map(package).collect(),
            workspace_members: crates.iter().map(|(n, _)| n.to_string()).collect(),
            resolve: Some(Resolve {
                nodes: all().map(node).collect(),
            }),
            workspace_root: "/w".into(),
            metadata: serde_json::Value::Null,
        }
    }

    fn config(toml_like: serde_json::Value) -> Config {
        Config::from_workspace_metadata(&serde_json::json!({ "nodeward": toml_like }))
            .expect("valid config")
    }

    fn three_layers() -> Config {
        config(serde_json::json!({
            "layers": [["common", "yaml"], ["policy", "identity"], ["proxy"]],
            "tools": ["xtask"],
            "forbidden": { "policy": ["tokio", "hyper"] },
        }))
    }

    fn assert_one_error(errors: &[String], needles: &[&str]) {
        assert_eq!(errors.len(), 1, "{errors:#?}");
        for needle in needles {
            assert!(
                errors[0].contains(needle),
                "{needle:?} not in {}",
                errors[0]
            );
        }
    }

    #[test]
    fn clean_graph_passes() {
        let meta = workspace(
            &[
                ("common", &[]),
                ("yaml", &[("serde", "normal")]),
                (
                    "policy",
                    &[("common", "normal"), ("yaml", "normal"), ("tokio", "dev")],
                ),
                ("identity", &[("common", "build")]),
                (
                    "proxy",
                    &[
                        ("policy", "normal"),
                        ("identity", "dev"),
                        ("tokio", "normal"),
                    ],
                ),
                ("xtask", &[("proxy", "normal")]),
            ],
            &[("serde", &[]), ("tokio", &[])],
        );
        assert_eq!(violations(&three_layers(), &meta), Vec::<String>::new());
    }

    #[test]
    fn upward_dependency_fails() {
        let meta = workspace(
            &[
                ("common", &[("policy", "normal")]),
                ("yaml", &[]),
                ("policy", &[]),
                ("identity", &[]),
                ("proxy", &[]),
                ("xtask", &[]),
            ],
            &[],
        );
        let errors = violations(&three_layers(), &meta);
        assert_one_error(&errors, &["crate common (layer 1)", "policy (layer 2)"]);
    }

    #[test]
    fn same_layer_dev_dependency_fails() {
        let meta = workspace(
            &[
                ("common", &[]),
                ("yaml", &[]),
                ("policy", &[("identity", "dev")]),
                ("identity", &[]),
                ("proxy", &[]),
                ("xtask", &[]),
            ],
            &[],
        );
        let errors = violations(&three_layers(), &meta);
        assert_one_error(
            &errors,
            &["policy (layer 2)", "identity (layer 2)", "dev dependency"],
        );
    }

    #[test]
    fn tool_dependency_fails() {
        let meta = workspace(
            &[
                ("common", &[]),
                ("yaml", &[]),
                ("policy", &[]),
                ("identity", &[]),
                ("proxy", &[("xtask", "build")]),
                ("xtask", &[]),
            ],
            &[],
        );
        let errors = violations(&three_layers(), &meta);
        assert_one_error(
            &errors,
            &["proxy (layer 3)", "xtask (tools)", "build dependency"],
        );
    }

    #[test]
    fn crate_in_no_layer_fails() {
        let meta = workspace(
            &[
                ("common", &[]),
                ("yaml", &[]),
                ("policy", &[]),
                ("identity", &[]),
                ("proxy", &[]),
                ("xtask", &[]),
                ("bpf", &[]),
            ],
            &[],
        );
        let errors = violations(&three_layers(), &meta);
        assert_one_error(&errors, &["crate bpf is in no layer"]);
    }

    #[test]
    fn stale_and_duplicate_names_fail() {
        let cfg = config(serde_json::json!({
            "layers": [["common", "gone"], ["common"]],
            "forbidden": { "ghost": ["tokio"] },
        }));
        let meta = workspace(&[("common", &[])], &[]);
        let errors = violations(&cfg, &meta).join("\n");
        assert!(errors.contains("layer 1 names crate gone, which is not a workspace member"));
        assert!(errors.contains("crate common is listed twice: in layer 1 and in layer 2"));
        assert!(errors.contains("forbidden names crate ghost"));
    }

    #[test]
    fn forbidden_transitive_dependency_fails_with_chain() {
        let meta = workspace(
            &[
                ("common", &[("tokio", "dev")]),
                ("yaml", &[("helper", "build")]),
                (
                    "policy",
                    &[("common", "normal"), ("yaml", "normal"), ("hyper", "dev")],
                ),
                ("identity", &[]),
                ("proxy", &[]),
                ("xtask", &[]),
            ],
            &[
                ("helper", &[("glue", "normal")]),
                ("glue", &[("tokio", "normal")]),
                ("tokio", &[]),
                ("hyper", &[]),
            ],
        );
        let errors = violations(&three_layers(), &meta);
        // tokio via common is dev-only and hyper is a dev dependency: only the
        // build-dependency chain through yaml counts.
        assert_one_error(
            &errors,
            &[
                "crate policy must not depend on tokio",
                "policy -> yaml -> helper -> glue -> tokio",
            ],
        );
    }

    #[test]
    fn missing_table_is_a_clear_error() {
        let err = Config::from_workspace_metadata(&serde_json::Value::Null).expect_err("no table");
        assert!(err.to_string().contains("[workspace.metadata.nodeward]"));
    }
}
