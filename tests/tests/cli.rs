//! The `nodeward` command's contract with operators: bad configuration is a
//! clear error and exit code 64, before anything is bound or attached; and
//! the policy tooling pipelines call (`policy check`, `policy explain`).

use std::{os::unix::fs::PermissionsExt, path::Path, process::Command};

use nodeward_tests::Binaries;

fn run_with_config(text: &str) -> (Option<i32>, String) {
    let dir = std::env::temp_dir().join(format!("nw-cli-{}-{}", std::process::id(), text.len()));
    std::fs::create_dir_all(&dir).expect("tempdir");
    let path = dir.join("config.yaml");
    std::fs::write(&path, text).expect("write config");
    std::fs::write(dir.join("w.yaml"), "workloads: []\n").expect("write workloads");
    let bins = Binaries::locate().expect("binaries built");
    let out = Command::new(&bins.nodeward)
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .expect("run nodeward");
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unknown_config_field_exits_64_naming_file_line_and_field() {
    let (code, err) = run_with_config(
        "node: a\npodCgroup: x\nmeshCidrs: [10.0.0.0/8]\nproxyAddresses: {ipv4: 10.0.0.1}\nworkloadsFile: w.yaml\nadmn: {address: 1.2.3.4:5}\n",
    );
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("config.yaml:6:"), "{err}");
    assert!(err.contains("admn"), "{err}");
}

#[test]
fn invalid_value_exits_64_naming_the_field() {
    let (code, err) = run_with_config(
        "node: a\npodCgroup: x\nmeshCidrs: [10.0.0.0/8]\nproxyAddresses: {ipv4: 10.0.0.300}\nworkloadsFile: w.yaml\n",
    );
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("config.yaml:4:"), "{err}");
    assert!(err.contains("proxyAddresses.ipv4"), "{err}");
}

#[test]
fn missing_pod_cgroup_exits_64() {
    let (code, err) = run_with_config(
        "node: a\npodCgroup: /nonexistent/nodeward-cli-test\nmeshCidrs: [10.0.0.0/8]\nproxyAddresses: {ipv4: 10.0.0.1}\nworkloadsFile: w.yaml\nidentity: {dir: ca}\npolicy: {dir: p}\n",
    );
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("podCgroup"), "{err}");
}

#[test]
fn missing_identity_dir_exits_64_naming_the_field() {
    let cgroup = nodeward_tests::cgroup2_mount().expect("cgroup2");
    let (code, err) = run_with_config(&format!(
        "node: a\npodCgroup: {}\nmeshCidrs: [10.0.0.0/8]\nproxyAddresses: {{ipv4: 10.0.0.1}}\nworkloadsFile: w.yaml\nidentity: {{dir: /nonexistent/nodeward-ca}}\npolicy: {{dir: p}}\n",
        cgroup.display()
    ));
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("identity.dir"), "{err}");
}

#[test]
fn a_config_without_a_policy_section_exits_64() {
    let cgroup = nodeward_tests::cgroup2_mount().expect("cgroup2");
    let (code, err) = run_with_config(&format!(
        "node: a\npodCgroup: {}\nmeshCidrs: [10.0.0.0/8]\nproxyAddresses: {{ipv4: 10.0.0.1}}\nworkloadsFile: w.yaml\nidentity: {{dir: ca}}\n",
        cgroup.display()
    ));
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("policy"), "{err}");
}

fn nodeward(args: &[&str], dir: &Path) -> (bool, String) {
    let bins = Binaries::locate().expect("binaries built");
    let out = Command::new(&bins.nodeward)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run nodeward");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn ca_commands_write_private_keys_0600_and_never_overwrite_without_force() {
    let dir = std::env::temp_dir().join(format!("nw-cli-ca-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("tempdir");
    let (ok, err) = nodeward(
        &[
            "ca",
            "init",
            "--trust-domain",
            "example.org",
            "--out",
            "root",
        ],
        &dir,
    );
    assert!(ok, "{err}");
    let key = dir.join("root/ca.key");
    let mode = std::fs::metadata(&key)
        .expect("ca.key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let before = std::fs::read(&key).expect("key");
    let (ok, err) = nodeward(&["ca", "init", "--out", "root"], &dir);
    assert!(!ok, "a second init overwrote the root key");
    assert!(err.contains("ca.key") || err.contains("ca.pem"), "{err}");
    assert_eq!(std::fs::read(&key).expect("key"), before);
    let issue = [
        "ca",
        "issue-node",
        "--ca",
        "root",
        "--node",
        "node-a",
        "--out",
        "node-a",
    ];
    let (ok, err) = nodeward(&issue, &dir);
    assert!(ok, "{err}");
    let node_key = std::fs::metadata(dir.join("node-a/node.key")).expect("node.key");
    assert_eq!(node_key.permissions().mode() & 0o777, 0o600);
    let node_pem = std::fs::read_to_string(dir.join("node-a/node.pem")).expect("node.pem");
    assert!(node_pem.contains("BEGIN CERTIFICATE"));
    assert!(
        !nodeward(&issue, &dir).0,
        "issue-node overwrote without --force"
    );
    let forced: Vec<&str> = issue.iter().copied().chain(["--force"]).collect();
    assert!(nodeward(&forced, &dir).0);
    let _ = std::fs::remove_dir_all(&dir);
}

fn policy_cmd(args: &[&str]) -> (Option<i32>, String, String) {
    let bins = Binaries::locate().expect("binaries built");
    let out = Command::new(&bins.nodeward)
        .arg("policy")
        .args(args)
        .output()
        .expect("run nodeward policy");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn examples() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../policies")
        .display()
        .to_string()
}

#[test]
fn policy_check_accepts_the_examples_and_lists_every_error_of_a_broken_dir() {
    let (code, out, err) = policy_cmd(&["check", &examples()]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains("AuthorizationPolic"), "{out}");

    let dir = std::env::temp_dir().join(format!("nw-cli-policy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("tempdir");
    std::fs::write(
        dir.join("a.yaml"),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: x}\nspec:\n  action: CUSTOM\n",
    )
    .expect("write");
    std::fs::write(
        dir.join("b.yaml"),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: b, namespace: x}\nspec:\n  rules:\n  - to: [{operation: {pathz: [/x]}}]\n",
    )
    .expect("write");
    // Every wrong field of one document, not only the first serde meets.
    std::fs::write(
        dir.join("c.yaml"),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: c, namespace: x}\n\
         spec:\n  selectr: {matchLabels: {app: a}}\n  provider: {name: ext}\n  rules:\n  - to: [{operation: {paths: [/api/*/x]}}]\n",
    )
    .expect("write");
    let (code, out, err) = policy_cmd(&["check", &dir.display().to_string()]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("a.yaml:") && err.contains("CUSTOM"), "{err}");
    assert!(err.contains("b.yaml:6") && err.contains("pathz"), "{err}");
    let c: Vec<&str> = err.lines().filter(|l| l.contains("c.yaml:")).collect();
    assert_eq!(c.len(), 3, "{err}");
    assert!(
        c[0].contains("c.yaml:5:") && c[0].contains("`spec.selectr`"),
        "{err}"
    );
    assert!(
        c[1].contains("c.yaml:6:") && c[1].contains("`spec.provider`"),
        "{err}"
    );
    assert!(
        c[2].contains("c.yaml:8:") && c[2].contains("/api/*/x"),
        "{err}"
    );
}

/// Valid (exit 0), but the proxy would deny everything: say so on stderr.
#[test]
fn policy_check_of_an_empty_dir_warns_that_everything_is_denied() {
    let dir = std::env::temp_dir().join(format!("nw-cli-empty-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("tempdir");
    let (code, out, err) = policy_cmd(&["check", &dir.display().to_string()]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.ends_with(": ok: no policy files\n"), "{out}");
    assert!(err.starts_with("warning: "), "{err}");
    assert!(err.contains("denies every connection"), "{err}");
    // The examples allow calls: no warning.
    let (code, _, err) = policy_cmd(&["check", &examples()]);
    assert_eq!((code, err.as_str()), (Some(0), ""));
}

fn explain(args: &[&str]) -> serde_json::Value {
    let policies = examples();
    let mut all = vec!["explain", "--policies", &policies];
    all.extend_from_slice(args);
    let (code, out, err) = policy_cmd(&all);
    assert_eq!(code, Some(0), "{out}{err}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn policy_explain_prints_the_decision_as_json_without_any_workload() {
    let frontend = "spiffe://cluster.local/ns/shop/sa/frontend";
    let backend = [
        "--to-namespace",
        "shop",
        "--to-labels",
        "app=backend",
        "--port",
        "8080",
    ];
    let get = explain(
        &[
            &["--from", frontend],
            &backend[..],
            &["--method", "GET", "--path", "/api/items"],
        ]
        .concat(),
    );
    assert_eq!(get["decision"], "allow", "{get}");
    assert_eq!(get["action"], "ALLOW", "{get}");
    assert!(
        get["policy"]
            .as_str()
            .is_some_and(|p| p.starts_with("shop/")),
        "{get}"
    );
    assert!(get["audit"].is_array(), "{get}");
    let post = explain(
        &[
            &["--from", frontend],
            &backend[..],
            &["--method", "POST", "--path", "/api/items"],
        ]
        .concat(),
    );
    assert_eq!(post["decision"], "deny", "{post}");
    // No workload name is known: the labels name the destination.
    assert_eq!(
        post["reason"], "no ALLOW policy for shop/{app=backend} matched",
        "{post}"
    );
    let sneaky = explain(
        &[
            &["--from", frontend],
            &backend[..],
            &["--method", "GET", "--path", "/api/../admin"],
        ]
        .concat(),
    );
    assert_eq!(sneaky["decision"], "deny", "{sneaky}");
    let bad_host = explain(
        &[
            &["--from", frontend],
            &backend[..],
            &[
                "--method",
                "GET",
                "--path",
                "/api/items",
                "--host",
                "b,backend",
            ],
        ]
        .concat(),
    );
    assert_eq!(bad_host["decision"], "deny", "{bad_host}");
    assert!(
        bad_host["reason"]
            .as_str()
            .is_some_and(|r| r.contains("host rejected") && r.contains("400")),
        "{bad_host}"
    );
    let ops = explain(
        &[
            &["--from", "spiffe://cluster.local/ns/ops/sa/ops-tool"],
            &backend[..],
            &["--method", "GET", "--path", "/admin"],
        ]
        .concat(),
    );
    assert_eq!(ops["decision"], "allow", "{ops}");
    let anon = explain(
        &[
            &["--from", "unauthenticated"],
            &backend[..],
            &["--method", "GET", "--path", "/api"],
        ]
        .concat(),
    );
    assert_eq!(anon["decision"], "deny", "{anon}");
    // With the Istio default, a workload no policy selects is reachable.
    let lonely = [
        "--from",
        frontend,
        "--to-namespace",
        "other",
        "--port",
        "80",
    ];
    assert_eq!(explain(&lonely)["decision"], "deny");
    assert_eq!(
        explain(&[&lonely[..], &["--default", "allow"]].concat())["decision"],
        "allow"
    );
}

#[test]
fn policy_explain_finds_the_destination_in_a_workloads_file_and_rejects_bad_input() {
    let dir = std::env::temp_dir().join(format!("nw-cli-explain-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("tempdir");
    let workloads = dir.join("workloads.yaml");
    std::fs::write(
        &workloads,
        "workloads:\n  - {name: db, namespace: data, serviceAccount: db, node: node-b, ips: [10.20.2.11], labels: {app: db}}\n",
    )
    .expect("write");
    let w = workloads.display().to_string();
    let from = |sa: &str| format!("spiffe://cluster.local/ns/shop/sa/{sa}");
    let db = explain(&[
        "--from",
        &from("backend"),
        "--workloads",
        &w,
        "--to",
        "10.20.2.11:9000",
    ]);
    assert_eq!(db["decision"], "allow", "{db}");
    let db = explain(&[
        "--from",
        &from("frontend"),
        "--workloads",
        &w,
        "--to",
        "10.20.2.11:9000",
    ]);
    assert_eq!(db["decision"], "deny", "{db}");
    let policies = examples();
    let (code, _, err) = policy_cmd(&[
        "explain",
        "--policies",
        &policies,
        "--from",
        "not-a-spiffe-id",
        "--workloads",
        &w,
        "--to",
        "10.20.2.11:9000",
    ]);
    assert_eq!(code, Some(1), "{err}");
    let (code, _, err) = policy_cmd(&[
        "explain",
        "--policies",
        &policies,
        "--from",
        &from("x"),
        "--workloads",
        &w,
        "--to",
        "10.9.9.9:1",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("10.9.9.9"), "{err}");
    let (code, _, err) = policy_cmd(&["explain", "--policies", &policies, "--from", &from("x")]);
    assert_eq!(code, Some(1), "missing target: {err}");
    let _ = std::fs::remove_dir_all(&dir);
}
