//! `nodeward flows --format table|dot`: the merged map for a terminal or
//! for Graphviz. Names came over the network from other nodes: control
//! characters are escaped for the terminal, quotes and backslashes for dot.

use std::fmt::Write;

use nodeward_proxy::escape::clean;

use super::{EdgeReport, EndReport, FlowsReport};

/// A fixed-width table, one edge a line, busiest first.
pub fn table(r: &FlowsReport) -> String {
    let mut out = format!(
        "nodes: {}   window: {}s   edges: {}   evicted: {}   dropped: {}\n",
        clean(&r.nodes.join(", ")),
        r.window_seconds,
        r.edges.len(),
        r.evicted,
        r.dropped
    );
    for u in &r.unreachable {
        let _ = writeln!(
            out,
            "unreachable: {} ({})",
            clean(&u.address),
            clean(&u.error)
        );
    }
    let _ = writeln!(
        out,
        "{:<30} {:<30} {:>5} {:>8} {:>6} {:>6} {:>6} {:>6} {:>10} {:>10}  {:<8} POLICIES",
        "SOURCE",
        "DESTINATION",
        "PORT",
        "CONNS",
        "ALLOW",
        "DENY",
        "LIMIT",
        "5XX",
        "SENT",
        "RECEIVED",
        "OUTCOME"
    );
    let mut edges: Vec<&EdgeReport> = r.edges.iter().collect();
    // Saturating: the counts came over the network.
    edges.sort_by_key(|e| {
        std::cmp::Reverse(
            e.bytes
                .sent
                .saturating_add(e.bytes.received)
                .saturating_add(e.connections.opened),
        )
    });
    for e in edges {
        let policies: Vec<String> = e
            .policies
            .iter()
            .map(|p| clean(&p.policy).into_owned())
            .collect();
        let _ = writeln!(
            out,
            "{:<30} {:<30} {:>5} {:>8} {:>6} {:>6} {:>6} {:>6} {:>10} {:>10}  {:<8} {}",
            clean(&name(&e.source)),
            clean(&name(&e.destination)),
            e.port,
            e.connections.opened,
            e.authz.allow,
            e.authz.deny,
            e.rate_limit.limited,
            e.http.c5,
            e.bytes.sent,
            e.bytes.received,
            e.outcome,
            policies.join(",")
        );
    }
    out
}

/// Graphviz: one cluster per namespace, edges coloured by outcome and
/// labelled with port and counts.
pub fn dot(r: &FlowsReport) -> String {
    let mut namespaces: std::collections::BTreeMap<&str, std::collections::BTreeSet<&EndReport>> =
        Default::default();
    for e in &r.edges {
        for end in [&e.source, &e.destination] {
            namespaces.entry(&end.namespace).or_default().insert(end);
        }
    }
    let mut out =
        String::from("digraph flows {\n  rankdir=LR;\n  node [shape=box, style=rounded];\n");
    for (i, (ns, ends)) in namespaces.iter().enumerate() {
        let _ = writeln!(
            out,
            "  subgraph cluster_{i} {{\n    label=\"{}\";",
            quote(ns)
        );
        for end in ends {
            let shape = if end.kind == "service" {
                "ellipse"
            } else {
                "box"
            };
            let _ = writeln!(
                out,
                "    \"{}\" [label=\"{}\", shape={shape}];",
                quote(&id(end)),
                quote(&end.name)
            );
        }
        out.push_str("  }\n");
    }
    for e in &r.edges {
        let _ = writeln!(
            out,
            "  \"{}\" -> \"{}\" [color={}, label=\"{} · {} conns, {} denied\"];",
            quote(&id(&e.source)),
            quote(&id(&e.destination)),
            colour(&e.outcome),
            e.port,
            e.connections.opened,
            e.authz.deny
        );
    }
    out.push_str("}\n");
    out
}

fn colour(outcome: &str) -> &'static str {
    match outcome {
        "denied" => "red",
        "limited" | "error" => "orange",
        _ => "green",
    }
}

/// `namespace/name`, or the name alone without a namespace.
fn name(e: &EndReport) -> String {
    if e.namespace.is_empty() {
        e.name.clone()
    } else {
        format!("{}/{}", e.namespace, e.name)
    }
}

fn id(e: &EndReport) -> String {
    format!("{}:{}", e.kind, name(e))
}

/// A dot string literal's body: first [`clean`]ed (controls, bidi
/// overrides and other invisible formatting characters become visible
/// `\u{..}` escapes), then quotes and backslashes escaped.
fn quote(s: &str) -> String {
    clean(s)
        .chars()
        .flat_map(|c| match c {
            '"' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect()
}
