use super::*;

const GOOD: &str = "\
node: node-a
podCgroup: nodeward/node-a
meshCidrs: [10.20.0.0/16, 'fd00:20::/32']
proxyAddresses:
  ipv4: 10.20.1.1
workloadsFile: workloads.yaml
";

fn parse(text: &str) -> Result<Config, ConfigError> {
    let path = Path::new("/etc/nodeward/config.yaml");
    let file = yaml::decode(path, text)?;
    Config::from_file(path, file)
}

#[test]
fn defaults_fill_ports_and_admin_and_paths_are_relative_to_the_file() {
    let cfg = parse(GOOD).expect("valid");
    assert_eq!(cfg.outbound_port, 15001);
    assert_eq!(cfg.admin_addr, DEFAULT_ADMIN_ADDR);
    assert_eq!(
        cfg.workloads_file,
        Path::new("/etc/nodeward/workloads.yaml")
    );
    assert_eq!(cfg.mesh_cidrs.len(), 2);
}

#[test]
fn unknown_field_is_rejected_with_file_line_and_field() {
    let text = GOOD.replace(
        "proxyAddresses:\n  ipv4",
        "proxyAddresses:\n  ipv5: 1.2.3.4\n  ipv4",
    );
    let err = parse(&text).expect_err("unknown field").to_string();
    assert!(err.starts_with("/etc/nodeward/config.yaml:5:"), "{err}");
    assert!(err.contains("field `proxyAddresses.ipv5`"), "{err}");
    assert!(err.contains("ipv5"), "{err}");
}

#[test]
fn bad_cidr_names_the_field_and_line() {
    let text = GOOD.replace("10.20.0.0/16", "10.20.0.0/33");
    let err = parse(&text).expect_err("bad cidr").to_string();
    assert!(err.contains(":3:"), "{err}");
    assert!(err.contains("meshCidrs[0]"), "{err}");
}

#[test]
fn missing_field_is_named() {
    let text = GOOD.replace("node: node-a\n", "");
    let err = parse(&text).expect_err("missing node").to_string();
    assert!(err.contains("node"), "{err}");
}

#[test]
fn semantic_errors_name_the_field() {
    let err = parse(&GOOD.replace("[10.20.0.0/16, 'fd00:20::/32']", "[]"))
        .expect_err("empty cidrs")
        .to_string();
    assert!(err.contains("field `meshCidrs`"), "{err}");
    let err = parse(&format!("{GOOD}ports: {{outbound: 0}}\n"))
        .expect_err("port 0")
        .to_string();
    assert!(err.contains("ports.outbound"), "{err}");
}
