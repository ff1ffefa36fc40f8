//! End-to-end: identity-based authorization at the destination's node
//! proxy: L4 decisions, HTTP decisions per request, hot reload that closes
//! what it now denies, and a broken policy file that changes nothing.

use std::{net::SocketAddr, time::Duration};

use nodeward_tests::{require_root, Cluster, Options, ALLOW_ALL};
use serde_json::Value;

const TCP_PORT: u16 = 9000;
const HTTP_PORT: u16 = 8080;

/// backend accepts frontend on the TCP port, nobody else.
const BACKEND_FROM_FRONTEND: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: backend-from-frontend, namespace: shop}
spec:
  selector: {matchLabels: {app: backend}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/shop/sa/frontend]}}]
    to: [{operation: {ports: [\"9000\"]}}]
";

/// frontend may GET anything on backend's HTTP port, except that /admin is
/// denied to all: only the DENY (and normalisation) stands between a trick
/// path and the admin endpoint.
const BACKEND_API: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: backend-api, namespace: shop}
spec:
  selector: {matchLabels: {app: backend}}
  rules:
  - from: [{source: {principals: [cluster.local/ns/shop/sa/frontend]}}]
    to: [{operation: {ports: [\"8080\"], methods: [GET], paths: [\"*\"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: shop}
spec:
  selector: {matchLabels: {app: backend}}
  action: DENY
  rules:
  - to: [{operation: {paths: [/admin, /admin/*]}}]
";

const DENY_FRONTEND: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-frontend, namespace: shop}
spec:
  selector: {matchLabels: {app: backend}}
  action: DENY
  rules:
  - from: [{source: {principals: [cluster.local/ns/shop/sa/frontend]}}]
";

/// An unknown field: must be rejected, never ignored.
const BROKEN: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: broken, namespace: shop}
spec:
  action: ALLOW
  rules:
  - from: [{source: {principals: [\"*\"], remoteIpBlox: [0.0.0.0/0]}}]
";

/// A paced call from frontend to `to` (16 chunks, `pace_ms` apart) with
/// `change` made `after` into it; the call's report.
fn long_call_while(
    c: &Cluster,
    to: SocketAddr,
    pace_ms: &str,
    after: Duration,
    change: impl FnOnce(&Cluster),
) -> Value {
    std::thread::scope(|s| {
        let call = s.spawn(|| {
            c.call_with(
                "frontend",
                to,
                16 * 1024,
                &["--chunks", "16", "--pace-ms", pace_ms],
            )
        });
        std::thread::sleep(after);
        change(c);
        call.join().expect("call thread")
    })
}

/// The call was cut, and backend's proxy counts exactly one revocation.
fn assert_closed_by_revocation(c: &Cluster, call: &Value) {
    assert_eq!(call["intact"], false, "{call}");
    let revoked = c.wait_metric(
        "node-b",
        "nodeward_policy_revoked_connections_total",
        &[],
        1.0,
        Duration::from_secs(5),
    );
    assert_eq!(revoked, 1.0);
}

fn principal(record: &Value) -> &str {
    record["source_principal"].as_str().unwrap_or("")
}

#[test]
fn allowed_and_denied_connections_follow_identity_policy() {
    if !require_root("allowed_and_denied_connections_follow_identity_policy") {
        return;
    }
    let mut c = Cluster::start_with(Options::with_policies(&[(
        "backend.yaml",
        BACKEND_FROM_FRONTEND,
    )]));
    c.serve_echo("backend", TCP_PORT);
    c.serve_echo("cache", TCP_PORT);
    let backend = SocketAddr::new(c.ip4("backend"), TCP_PORT);
    let allowed = c.call("frontend", backend, 4096);
    assert_eq!(allowed["intact"], true, "{allowed}");
    // Another identity, cross-node: refused by backend's proxy.
    let denied = c.call("cache", backend, 4096);
    assert_eq!(denied["intact"], false, "{denied}");
    assert_eq!(denied["received"], 0, "{denied}");
    // Same node: no policy selects cache, and the default is deny.
    let local = c.call("frontend", SocketAddr::new(c.ip4("cache"), TCP_PORT), 100);
    assert_eq!(local["intact"], false, "{local}");
    assert!(c.accepted("cache", TCP_PORT).is_empty());

    // The audit writer batches records: wait for the ones asserted on.
    let audit = c.audit_records("node-b", 2, |r| {
        r["decision"] == "allow" || r["decision"] == "deny"
    });
    let allow = audit
        .iter()
        .find(|r| r["decision"] == "allow")
        .expect("an allow record");
    assert!(
        principal(allow).ends_with("/ns/shop/sa/frontend"),
        "{allow}"
    );
    assert_eq!(allow["policy"], "shop/backend-from-frontend");
    assert_eq!(allow["destination"], "shop/backend");
    assert_eq!(allow["port"], TCP_PORT);
    let deny = audit
        .iter()
        .find(|r| r["decision"] == "deny")
        .expect("a deny record");
    assert!(principal(deny).ends_with("/ns/shop/sa/cache"), "{deny}");
    assert_eq!(deny["source_ip"], c.ip4("cache").to_string());
    c.audit_records("node-a", 1, |r| {
        r["decision"] == "deny" && r["destination"] == "shop/cache"
    });
    let denials = c.metric(
        "node-b",
        "nodeward_authz_decisions_total",
        &[("decision", "deny"), ("layer", "connection")],
    );
    assert!(denials >= 1.0, "deny decisions counted: {denials}");
}

#[test]
fn http_port_allows_get_api_and_forbids_other_requests_on_one_connection() {
    if !require_root("http_port_allows_get_api_and_forbids_other_requests_on_one_connection") {
        return;
    }
    let mut c = Cluster::start_with(Options::with_policies(&[("backend-api.yaml", BACKEND_API)]));
    c.serve_http("backend", HTTP_PORT);
    let to = SocketAddr::new(c.ip4("backend"), HTTP_PORT);
    let tricks = [
        "GET /admin",
        "GET //admin",
        "GET /./admin",
        "GET /api/../admin",
        "GET /api/%2e%2e/admin",
        "GET /%61dmin",
        "GET /ADMIN",
        "GET /admin/",
        "GET /admin#x",
    ];
    let mut requests = vec!["GET /api/items", "POST /api/items"];
    requests.extend(tricks);
    requests.extend(["GET /api/..%2Fadmin", "GET /api/..;/admin", "GET /api"]);
    let r = c.http_calls("frontend", to, &requests);
    let statuses: Vec<u64> = r["statuses"]
        .as_array()
        .expect("statuses")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    let mut expected = vec![200, 403];
    expected.extend([403; 9]);
    expected.extend([400, 400, 200]);
    assert_eq!(statuses, expected, "{r}");
    // The pod saw exactly the allowed requests, in normalised form.
    assert_eq!(
        c.http_requests_seen("backend", HTTP_PORT),
        ["GET /api/items", "GET /api"]
    );
    // Every trick was judged as /admin and stopped by the DENY policy.
    // (The audit writer batches records: wait for the ones asserted on.)
    let stopped = c.audit_records("node-b", tricks.len(), |a| {
        let admin = a["path"] == "/admin" || a["path"] == "/admin/" || a["path"] == "/ADMIN";
        a["policy"] == "shop/no-admin" && a["decision"] == "deny" && admin
    });
    assert_eq!(stopped.len(), tricks.len(), "{stopped:#?}");
    c.audit_records("node-b", 1, |a| a["method"] == "POST");
    let audit = c.audit_log("node-b");
    // Another identity cannot even reach the port.
    let other = c.http_calls("cache", to, &["GET /api"]);
    assert_eq!(other["statuses"][0], 0, "{other}");
    let post = audit
        .iter()
        .find(|a| a["method"] == "POST")
        .expect("audit of the POST");
    assert_eq!(post["decision"], "deny");
    assert_eq!(post["path"], "/api/items");
    assert_eq!(post["layer"], "request");
}

#[test]
fn a_reload_that_denies_a_live_connection_closes_it() {
    if !require_root("a_reload_that_denies_a_live_connection_closes_it") {
        return;
    }
    let mut c = Cluster::start_with(Options::default());
    c.serve_echo("backend", TCP_PORT);
    let to = SocketAddr::new(c.ip4("backend"), TCP_PORT);
    // 8 s of paced writes; the policy changes in the middle.
    let long = long_call_while(&c, to, "500", Duration::from_secs(2), |c| {
        c.change_policies("ok", |c| c.write_policy("deny.yaml", DENY_FRONTEND))
    });
    assert_closed_by_revocation(&c, &long);
    c.audit_records("node-b", 1, |r| {
        r["decision"] == "deny"
            && r["reason"]
                .as_str()
                .is_some_and(|s| s.starts_with("policy reloaded"))
    });
    // And new connections are refused too.
    assert_eq!(c.call("frontend", to, 10)["intact"], false);
}

#[test]
fn a_broken_policy_file_keeps_the_last_good_set_and_is_reported() {
    if !require_root("a_broken_policy_file_keeps_the_last_good_set_and_is_reported") {
        return;
    }
    let mut c = Cluster::start_with(Options::with_policies(&[(
        "backend.yaml",
        BACKEND_FROM_FRONTEND,
    )]));
    c.serve_echo("backend", TCP_PORT);
    let to = SocketAddr::new(c.ip4("backend"), TCP_PORT);
    c.change_policies("error", |c| {
        c.write_policy(
            "backend.yaml",
            &format!("{BACKEND_FROM_FRONTEND}---\n{BROKEN}"),
        )
    });
    let log = c.proxy_log("node-b");
    assert!(
        log.contains("backend.yaml:") && log.contains("remoteIpBlox"),
        "the error names the file and field:\n{log}"
    );
    assert_eq!(c.call("frontend", to, 100)["intact"], true);
    assert_eq!(c.call("cache", to, 100)["intact"], false);
    assert_eq!(c.metric("node-b", "nodeward_policy_loaded", &[]), 1.0);
}

#[test]
fn without_any_valid_policy_everything_is_denied() {
    if !require_root("without_any_valid_policy_everything_is_denied") {
        return;
    }
    let mut c = Cluster::start_with(Options::with_policies(&[
        ("allow-all.yaml", ALLOW_ALL),
        ("broken.yaml", BROKEN),
    ]));
    c.serve_echo("backend", TCP_PORT);
    let to = SocketAddr::new(c.ip4("backend"), TCP_PORT);
    assert_eq!(c.metric("node-b", "nodeward_policy_loaded", &[]), 0.0);
    assert_eq!(c.call("frontend", to, 100)["intact"], false);
    c.change_policies("ok", |c| c.remove_policy("broken.yaml"));
    assert_eq!(c.call("frontend", to, 100)["intact"], true);
}

#[test]
fn peer_authentication_makes_one_namespace_permissive_and_keeps_the_rest_strict() {
    if !require_root("peer_authentication_makes_one_namespace_permissive_and_keeps_the_rest_strict")
    {
        return;
    }
    let data_permissive = "\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: data-permissive, namespace: data}
spec:
  mtls: {mode: PERMISSIVE}
";
    let mut c = Cluster::start_with(Options::with_policies(&[
        ("allow-all.yaml", ALLOW_ALL),
        ("peer.yaml", data_permissive),
    ]));
    c.serve_echo("db", TCP_PORT);
    c.serve_echo("backend", TCP_PORT);
    let db = SocketAddr::new(c.ip4("db"), TCP_PORT);
    // The modes reach the kernel within a poll or two of start.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut direct = c.call_bypassing_proxy("frontend", db, 100);
    while direct["intact"] != true && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        direct = c.call_bypassing_proxy("frontend", db, 100);
    }
    assert_eq!(direct["intact"], true, "data is PERMISSIVE: {direct}");
    let strict =
        c.call_bypassing_proxy("frontend", SocketAddr::new(c.ip4("backend"), TCP_PORT), 100);
    assert_eq!(strict["intact"], false, "shop stays STRICT: {strict}");
    // Removing the PeerAuthentication makes data STRICT again.
    c.change_policies("ok", |c| c.remove_policy("peer.yaml"));
    std::thread::sleep(Duration::from_secs(1));
    let again = c.call_bypassing_proxy("frontend", db, 100);
    assert_eq!(again["intact"], false, "{again}");
}

#[test]
fn relabelling_a_workload_re_judges_its_open_connections() {
    if !require_root("relabelling_a_workload_re_judges_its_open_connections") {
        return;
    }
    // Only `app: backend` is reachable; the default denies the rest.
    let mut c = Cluster::start_with(Options::with_policies(&[(
        "backend.yaml",
        BACKEND_FROM_FRONTEND,
    )]));
    c.serve_echo("backend", TCP_PORT);
    let to = SocketAddr::new(c.ip4("backend"), TCP_PORT);
    // The pod is relabelled mid-connection: no policy selects it any more.
    let long = long_call_while(&c, to, "400", Duration::from_millis(1500), |c| {
        c.relabel("backend", "backend-v2")
    });
    assert_closed_by_revocation(&c, &long);
}
