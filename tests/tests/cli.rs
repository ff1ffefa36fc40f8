//! The `nodeward` command's contract with operators: bad configuration is a
//! clear error and exit code 64, before anything is bound or attached.

use std::process::Command;

use nodeward_tests::Binaries;

fn run_with_config(text: &str) -> (Option<i32>, String) {
    let dir = std::env::temp_dir().join(format!("nw-cli-{}-{}", std::process::id(), text.len()));
    std::fs::create_dir_all(&dir).expect("tempdir");
    let path = dir.join("config.yaml");
    std::fs::write(&path, text).expect("write config");
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
        "node: a\npodCgroup: /nonexistent/nodeward-cli-test\nmeshCidrs: [10.0.0.0/8]\nproxyAddresses: {ipv4: 10.0.0.1}\nworkloadsFile: w.yaml\n",
    );
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("podCgroup"), "{err}");
}
