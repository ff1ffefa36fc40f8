use super::*;

fn build(text: &str, mount: &Path) -> Result<Registry, FileError> {
    let path = Path::new("/etc/nodeward/workloads.yaml");
    let file = yaml::decode(path, text)?;
    Registry::build(path, file, "node-a", mount)
}

fn sample(mount: &Path) -> String {
    std::fs::create_dir_all(mount.join("pods/client")).expect("mkdir");
    "workloads:
  - {name: client, namespace: default, serviceAccount: client, node: node-a,
     ips: [10.20.1.10], labels: {app: client}, cgroup: pods/client}
  - {name: server, namespace: prod, serviceAccount: server, node: node-b, ips: [10.20.2.10]}
nodes:
  - {name: node-b, address: 10.99.0.2}
"
    .to_owned()
}

#[test]
fn local_workload_is_identified_by_cgroup_and_ip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let reg = build(&sample(dir.path()), dir.path()).expect("valid");
    let id = cgroup::cgroup_id(&dir.path().join("pods/client")).expect("id");
    let ip: IpAddr = "10.20.1.10".parse().expect("ip");
    assert_eq!(reg.identify(id, ip).expect("known").name, "client");
    let mapped: IpAddr = "::ffff:10.20.1.10".parse().expect("ip");
    assert_eq!(reg.identify(id, mapped).expect("mapped").name, "client");
}

#[test]
fn wrong_ip_or_cgroup_is_unknown_not_guessed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let reg = build(&sample(dir.path()), dir.path()).expect("valid");
    let id = cgroup::cgroup_id(&dir.path().join("pods/client")).expect("id");
    let other: IpAddr = "10.20.2.10".parse().expect("ip");
    assert_eq!(reg.identify(id, other), Err(Unknown::SourceIp));
    let ip: IpAddr = "10.20.1.10".parse().expect("ip");
    assert_eq!(reg.identify(id + 1, ip), Err(Unknown::Cgroup));
    assert_eq!(reg.by_ip(other).expect("remote").namespace, "prod");
}

#[test]
fn duplicate_ip_is_rejected_naming_the_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = sample(dir.path()).replace("10.20.2.10", "10.20.1.10");
    let err = build(&text, dir.path()).expect_err("dup").to_string();
    assert!(err.contains("workloads[1].ips"), "{err}");
}

#[test]
fn unknown_field_and_bad_names_are_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = sample(dir.path()).replace("labels:", "label:");
    let err = build(&text, dir.path()).expect_err("unknown").to_string();
    assert!(err.contains("workloads.yaml:3:"), "{err}");
    assert!(err.contains("workloads[0].label"), "{err}");
    let text = sample(dir.path()).replace("namespace: prod", "namespace: Prod_1");
    let err = build(&text, dir.path()).expect_err("bad name").to_string();
    assert!(err.contains("workloads[1].namespace"), "{err}");
}

#[test]
fn missing_local_cgroup_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = sample(dir.path()).replace("pods/client", "pods/nope");
    let err = build(&text, dir.path())
        .expect_err("missing cgroup")
        .to_string();
    assert!(err.contains("workloads[0].cgroup"), "{err}");
}

#[test]
fn nodes_give_tunnel_addresses_and_hosted_identities() {
    let dir = tempfile::tempdir().expect("tempdir");
    let reg = build(&sample(dir.path()), dir.path()).expect("valid");
    assert_eq!(
        reg.node_address("node-b"),
        Some("10.99.0.2".parse().expect("ip"))
    );
    assert!(reg.hosts("node-b", "prod", "server"));
    assert!(!reg.hosts("node-a", "prod", "server"));
    let local = reg.identities_on("node-a");
    assert_eq!(
        local.into_iter().collect::<Vec<_>>(),
        [("default".to_owned(), "client".to_owned())]
    );
}

#[test]
fn remote_workload_without_a_node_entry_is_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = sample(dir.path()).replace("  - {name: node-b, address: 10.99.0.2}\n", "");
    let err = build(&text.replace("nodes:\n", ""), dir.path())
        .expect_err("no node")
        .to_string();
    assert!(err.contains("workloads[1].node"), "{err}");
}

/// A workloads file of 100 000 entries (8 MB): loaded, every entry
/// indexed. Nothing in building the registry is quadratic in its size.
#[test]
fn a_workloads_file_of_100_000_entries_loads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut text = String::from("nodes:\n  - {name: node-b, address: 10.99.0.2}\nworkloads:\n");
    for i in 0..100_000u32 {
        let [_, a, b, c] = i.to_be_bytes();
        text.push_str(&format!(
            "  - {{name: w{i}, namespace: ns{}, serviceAccount: sa, node: node-b, ips: [10.{a}.{b}.{c}]}}\n",
            i % 100
        ));
    }
    let reg = build(&text, dir.path()).expect("valid");
    assert_eq!(reg.all().len(), 100_000);
    let last: IpAddr = "10.1.134.159".parse().expect("ip");
    assert_eq!(reg.by_ip(last).expect("indexed").name, "w99999");
    // The same file with one address twice is refused, naming the entry.
    let text = text.replace("ips: [10.1.134.159]", "ips: [10.0.0.7]");
    let err = build(&text, dir.path()).expect_err("dup").to_string();
    assert!(err.contains("workloads[99999].ips"), "{err}");
}
