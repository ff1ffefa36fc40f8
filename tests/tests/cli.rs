//! The `nodeward` command's contract with operators: bad configuration is a
//! clear error and exit code 64, before anything is bound or attached.

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
        "node: a\npodCgroup: /nonexistent/nodeward-cli-test\nmeshCidrs: [10.0.0.0/8]\nproxyAddresses: {ipv4: 10.0.0.1}\nworkloadsFile: w.yaml\nidentity: {dir: ca}\n",
    );
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("podCgroup"), "{err}");
}

#[test]
fn missing_identity_dir_exits_64_naming_the_field() {
    let cgroup = nodeward_tests::cgroup2_mount().expect("cgroup2");
    let (code, err) = run_with_config(&format!(
        "node: a\npodCgroup: {}\nmeshCidrs: [10.0.0.0/8]\nproxyAddresses: {{ipv4: 10.0.0.1}}\nworkloadsFile: w.yaml\nidentity: {{dir: /nonexistent/nodeward-ca}}\n",
        cgroup.display()
    ));
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("identity.dir"), "{err}");
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
