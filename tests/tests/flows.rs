//! End-to-end: the flow map as a person sees it. The demo's traffic (the
//! example policies, allowed, denied and rate-limited calls, a Service)
//! runs through the two-node cluster; then `/flows.json` is checked against
//! its documented shape, and `/flows` is opened in headless Chromium inside
//! the node's netns (the admin port is loopback there). The test reads the
//! rendered SVG, not pixels, and saves a screenshot under target/.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
};

use nodeward_tests::{require_root, Cluster, Options, ADMIN_PORT};
use serde_json::Value;

const PORT: u16 = 9000;
const HTTP_PORT: u16 = 8080;
const SERVICE_VIP: &str = "10.20.200.10";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_owned()
}

/// The example policies the demo runs under.
fn example_policies() -> Options {
    let mut policies = Vec::new();
    for entry in std::fs::read_dir(repo().join("policies")).expect("policies/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let name = path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            policies.push((name, std::fs::read_to_string(&path).expect("read")));
        }
    }
    Options {
        policies,
        ..Options::default()
    }
}

/// The demo's calls: TCP allowed and denied, HTTP allowed and denied, a
/// burst over the request limit, and calls through a Service VIP.
fn demo_traffic(c: &Cluster) {
    assert!(c.reload_workloads(|c| c.set_services(&format!(
        "  - {{name: backend, namespace: shop, vips: ['{SERVICE_VIP}'], ports: [{{port: 80, targetPort: {HTTP_PORT}}}], selector: {{app: backend}}}}\n"
    ))));
    for (from, to) in [("backend", "db"), ("frontend", "cache"), ("frontend", "db")] {
        c.call(from, SocketAddr::new(c.ip4(to), PORT), 100);
    }
    let api = SocketAddr::new(c.ip4("backend"), HTTP_PORT);
    let r = c.http_calls("frontend", api, &["GET /api/items", "GET /admin"]);
    assert_eq!(r["statuses"], serde_json::json!([200, 403]), "{r}");
    let burst = c.http_calls("frontend", api, &["GET /api/items"; 8]);
    assert!(
        burst["statuses"]
            .as_array()
            .expect("statuses")
            .iter()
            .any(|s| s == 429),
        "{burst}"
    );
    let vip = SocketAddr::new(SERVICE_VIP.parse().expect("vip"), 80);
    // Past the burst's refill (5 per second), so this one is allowed.
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let r = c.http_calls("frontend", vip, &["GET /api/items"]);
    assert_eq!(r["statuses"], serde_json::json!([200]), "{r}");
}

/// `chromium --headless` in `node`'s netns, with a throwaway profile.
fn chromium(c: &Cluster, node: &str, args: &[&str]) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let out = Command::new("ip")
        .args(["netns", "exec", &c.ns(node), "chromium"])
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        // Lets the page's fetch of flows.json finish before the dump.
        .arg("--virtual-time-budget=5000")
        .args(args)
        .output()
        .expect("chromium (install it: cargo xtask setup)");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn edge<'a>(flows: &'a Value, source: &str, destination: &str, port: u64) -> &'a Value {
    flows["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .find(|e| {
            e["source"]["name"] == source
                && e["destination"]["name"] == destination
                && e["port"] == port
        })
        .unwrap_or_else(|| panic!("no edge {source} -> {destination}:{port} in {flows:#}"))
}

/// The rendered page's `tag` elements with `class="class…"`, as their
/// opening tags.
fn tags<'a>(dom: &'a str, prefix: &str) -> Vec<&'a str> {
    dom.match_indices(prefix)
        .map(|(i, _)| &dom[i..i + dom[i..].find('>').unwrap_or(0)])
        .collect()
}

/// The element with `attr` and what follows it up to its closing tag.
fn section<'a>(dom: &'a str, attr: &str) -> &'a str {
    let start = dom
        .find(attr)
        .unwrap_or_else(|| panic!("no {attr} in the page:\n{dom}"));
    let end = dom[start..]
        .find("</table>")
        .or_else(|| dom[start..].find("</p>"))
        .unwrap_or(0);
    &dom[start..start + end]
}

#[test]
fn the_demo_traffic_is_drawn_as_a_service_map_in_a_real_browser() {
    if !require_root("the_demo_traffic_is_drawn_as_a_service_map_in_a_real_browser") {
        return;
    }
    let mut c = Cluster::start_with(example_policies());
    for pod in ["backend", "cache", "db"] {
        c.serve_echo(pod, PORT);
    }
    c.serve_http("backend", HTTP_PORT);
    demo_traffic(&c);

    // The destination's proxy decided: its map has the decisions.
    let (status, _, body) = c.admin("node-b", "/flows.json?since=600");
    assert_eq!(status, 200, "{body}");
    let flows: Value = serde_json::from_str(&body).expect("flows.json");
    assert_eq!(flows["node"], "node-b");
    assert_eq!(flows["windowSeconds"], 600);
    let api = edge(&flows, "frontend", "backend", u64::from(HTTP_PORT));
    assert_eq!(api["outcome"], "limited", "{api:#}");
    assert!(api["authz"]["allow"].as_u64() > Some(0) && api["authz"]["deny"].as_u64() > Some(0));
    assert!(api["rateLimit"]["limited"].as_u64() > Some(0), "{api:#}");
    assert!(api["http"]["4xx"].as_u64() >= Some(2), "{api:#}");
    let policies_decided: Vec<String> = api["policies"]
        .as_array()
        .expect("policies")
        .iter()
        .filter_map(|p| p["policy"].as_str().map(str::to_owned))
        .collect();
    assert!(
        policies_decided
            .iter()
            .any(|p| p == "shop/backend-admin-only-ops"),
        "the DENY policy decided /admin: {api:#}"
    );
    assert_eq!(
        edge(&flows, "frontend", "db", u64::from(PORT))["outcome"],
        "denied"
    );
    assert_eq!(
        edge(&flows, "backend", "db", u64::from(PORT))["outcome"],
        "allowed"
    );
    // The source's proxy names the Service the caller dialled.
    let (_, _, body) = c.admin("node-a", "/flows.json");
    let source_side: Value = serde_json::from_str(&body).expect("flows.json");
    let svc = edge(&source_side, "frontend", "backend", 80);
    assert_eq!(svc["destination"]["kind"], "service");
    assert_eq!(svc["connections"]["opened"], 1, "{svc:#}");
    assert!(svc["bytes"]["received"].as_u64() > Some(0), "{svc:#}");

    // The same map in a terminal, for Graphviz.
    let admin = format!("127.0.0.1:{ADMIN_PORT}");
    let out = Command::new("ip")
        .args(["netns", "exec", &c.ns("node-b")])
        .arg(&c.bins.nodeward)
        .args([
            "flows", "--admin", &admin, "--format", "dot", "--since", "600",
        ])
        .output()
        .expect("nodeward flows");
    let dot = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dot.starts_with("digraph flows {"), "{dot}");
    assert!(
        dot.contains("\"workload:shop/frontend\" -> \"workload:data/db\" [color=red"),
        "{dot}"
    );

    let url = format!("http://127.0.0.1:{ADMIN_PORT}/flows?since=600");
    let dom = chromium(&c, "node-b", &["--dump-dom", &url]);
    let nodes = tags(&dom, "<g class=\"node\"");
    let edges = tags(&dom, "<path class=\"edge ");
    assert!(
        !nodes.is_empty() && !edges.is_empty(),
        "the page rendered no graph:\n{dom}"
    );
    for id in [
        "workload:shop/frontend",
        "workload:shop/backend",
        "workload:data/db",
    ] {
        let want = format!("data-id=\"{id}\"");
        assert!(
            nodes.iter().any(|n| n.contains(&want)),
            "no node {id}: {nodes:#?}"
        );
    }
    for outcome in ["allowed", "denied", "limited"] {
        let want = format!("data-outcome=\"{outcome}\"");
        assert!(
            edges.iter().any(|e| e.contains(&want)),
            "no {outcome} edge: {edges:#?}"
        );
    }
    assert!(dom.contains("namespace shop") && dom.contains("namespace data"));
    assert!(
        dom.contains("node-b · "),
        "status line: the page loaded flows.json"
    );

    // The details of one edge, as a click shows them (`?edge=` selects it).
    let selected = "workload:shop/frontend -> workload:shop/backend:8080";
    let url = format!(
        "{url}&edge={}",
        selected.replace(' ', "%20").replace('>', "%3E")
    );
    let dom = chromium(&c, "node-b", &["--dump-dom", &url]);
    let policies = section(&dom, "id=\"edge-policies\"");
    for p in &policies_decided {
        assert!(policies.contains(p), "{p} not in {policies}");
    }
    let counts = section(&dom, "id=\"edge-counts\"");
    assert!(
        counts.contains("rate limited") && counts.contains("authz deny"),
        "{counts}"
    );

    let shot = repo().join("target").join("flows-e2e.png");
    let _ = std::fs::remove_file(&shot);
    chromium(
        &c,
        "node-b",
        &[
            "--window-size=1280,640",
            &format!("--screenshot={}", shot.display()),
            &url,
        ],
    );
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 10_000,
        "screenshot {} is {size} bytes",
        shot.display()
    );
}
