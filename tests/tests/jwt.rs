//! End-to-end: RequestAuthentication at backend's node proxy. Tokens signed
//! here (ES256), checked by the proxy; keys inline and from a jwksUri served
//! on node-b's loopback (down at start, rotated, failing later).

use std::{net::SocketAddr, time::Duration};

use nodeward_tests::{
    jwt::{unix_now, JwksServer, JwtSigner},
    require_root, Cluster, Options,
};
use serde_json::{json, Value};

const HTTP_PORT: u16 = 8080;
const JWKS_PORT: u16 = 18443;
const INLINE: &str = "https://inline.example";
const REMOTE: &str = "https://remote.example";

fn policies(inline: &JwtSigner) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: users, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: backend}}}}
  jwtRules:
  - issuer: {INLINE}
    audiences: [shop]
    jwks: '{}'
    outputClaimToHeaders: [{{header: x-user, claim: sub}}]
  - issuer: {REMOTE}
    jwksUri: http://127.0.0.1:{JWKS_PORT}/jwks.json
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: users-only, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: backend}}}}
  rules:
  - from: [{{source: {{requestPrincipals: ['{INLINE}/*', '{REMOTE}/*']}}}}]
",
        inline.jwks()
    )
}

fn claims(iss: &str) -> Value {
    json!({"iss": iss, "sub": "alice", "aud": "shop", "exp": unix_now() + 600})
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn bearer(path: &str, token: &str) -> String {
    format!("GET {path}\nauthorization: Bearer {token}\nx-user: forged")
}

/// One request per entry on one connection; the statuses and the report.
fn statuses(c: &Cluster, requests: &[String]) -> (Vec<u64>, Value) {
    let to = SocketAddr::new(c.ip4("backend"), HTTP_PORT);
    let refs: Vec<&str> = requests.iter().map(String::as_str).collect();
    let r = c.http_calls("frontend", to, &refs);
    let statuses = r["statuses"]
        .as_array()
        .expect("statuses")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    (statuses, r)
}

/// What the pod saw of request `i`: its echo of method, path and headers.
fn seen(report: &Value, i: usize) -> Value {
    serde_json::from_str(report["bodies"][i].as_str().unwrap_or("")).unwrap_or(Value::Null)
}

#[test]
fn tokens_are_checked_before_policy_and_stripped_before_the_pod() {
    if !require_root("tokens_are_checked_before_policy_and_stripped_before_the_pod") {
        return;
    }
    let key = JwtSigner::new("k1");
    let yaml = policies(&key);
    let mut c = Cluster::start_with(Options::with_policies(&[("jwt.yaml", &yaml)]));
    c.serve_http("backend", HTTP_PORT);
    let now = unix_now();
    let valid = key.sign(&claims(INLINE));
    let mut altered: Vec<String> = valid.split('.').map(str::to_owned).collect();
    altered[1] = nodeward_tests::jwt::b64url(
        with(claims(INLINE), "sub", json!("admin"))
            .to_string()
            .as_bytes(),
    );
    let requests = [
        bearer("/valid", &valid),
        format!("GET /query?a=1&access_token={valid}"),
        "GET /anonymous".to_owned(),
        bearer(
            "/expired",
            &key.sign(&with(claims(INLINE), "exp", json!(now - 600))),
        ),
        bearer(
            "/early",
            &key.sign(&with(claims(INLINE), "nbf", json!(now + 600))),
        ),
        bearer(
            "/issuer",
            &key.sign(&with(claims(INLINE), "iss", json!("https://evil.example"))),
        ),
        bearer(
            "/audience",
            &key.sign(&with(claims(INLINE), "aud", json!("billing"))),
        ),
        bearer("/altered", &altered.join(".")),
        bearer("/none", &key.unsigned(&claims(INLINE))),
        bearer("/hs256", &key.hs256_with_public_key(&claims(INLINE))),
    ];
    let (got, report) = statuses(&c, &requests);
    assert_eq!(
        got,
        [200, 200, 403, 401, 401, 401, 401, 401, 401, 401],
        "{report}"
    );
    let challenge = report["headers"][3]["www-authenticate"]
        .as_str()
        .unwrap_or("");
    assert!(
        challenge.contains("invalid_token") && challenge.contains("expired"),
        "{report}"
    );
    // The pod never sees the token; it sees the claim, not the forged header.
    let pod = seen(&report, 0);
    assert_eq!(pod["headers"]["x-user"], "alice", "{pod}");
    assert!(pod["headers"].get("authorization").is_none(), "{pod}");
    assert_eq!(seen(&report, 1)["path"], "/query?a=1");
    for (result, count) in [
        ("ok", 2.0),
        ("expired", 1.0),
        ("not_yet_valid", 1.0),
        ("unknown_issuer", 1.0),
        ("wrong_audience", 1.0),
        ("bad_signature", 1.0),
        ("unsupported_alg", 2.0),
    ] {
        let n = c.metric(
            "node-b",
            "nodeward_jwt_validations_total",
            &[("result", result)],
        );
        assert_eq!(n, count, "{result}");
    }
    // The audit writer batches records: wait for the one asserted on.
    c.audit_records("node-b", 1, |r| r["path"] == "/valid");
    let audit = c.audit_log("node-b");
    let allowed = audit
        .iter()
        .find(|r| r["path"] == "/valid" && r["decision"] == "allow")
        .expect("audit of /valid");
    assert_eq!(allowed["request_principal"], format!("{INLINE}/alice"));
    let text = serde_json::to_string(&audit).unwrap_or_default();
    assert!(!text.contains(&valid), "a token reached the audit log");
}

#[test]
fn jwks_uri_keys_are_fetched_when_the_server_comes_up_rotated_and_kept() {
    if !require_root("jwks_uri_keys_are_fetched_when_the_server_comes_up_rotated_and_kept") {
        return;
    }
    let inline = JwtSigner::new("inline");
    let yaml = policies(&inline);
    let mut c = Cluster::start_with(Options::with_policies(&[("jwt.yaml", &yaml)]));
    c.serve_http("backend", HTTP_PORT);
    let old = JwtSigner::new("old");
    let call = |token: &str| statuses(&c, &[bearer("/", token)]).0[0];
    // The key server is down: a token for it is refused, never let through.
    assert_eq!(call(&old.sign(&claims(REMOTE))), 401);
    let n = c.metric(
        "node-b",
        "nodeward_jwt_validations_total",
        &[("result", "keys_unavailable")],
    );
    assert_eq!(n, 1.0);
    let server = JwksServer::start(&c.ns("node-b"), JWKS_PORT, Some(old.jwks()));
    // Fetched within the backoff (at most 60 s between tries).
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while call(&old.sign(&claims(REMOTE))) != 200 {
        assert!(std::time::Instant::now() < deadline, "keys never fetched");
        std::thread::sleep(Duration::from_millis(500));
    }
    // Rotation: a token with a new kid makes the proxy refetch.
    let new = JwtSigner::new("new");
    server.serve(Some(new.jwks()));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while call(&new.sign(&claims(REMOTE))) != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "rotated key never found"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // The server fails later: the last good keys stay.
    server.serve(None);
    let hits = server.hits();
    assert_eq!(call(&JwtSigner::new("other").sign(&claims(REMOTE))), 401);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(call(&new.sign(&claims(REMOTE))), 200);
    assert!(
        server.hits() <= hits + 1,
        "unknown kids refetch at most once a minute"
    );
}
