use super::*;

const GOOD: &str = "\
node: node-a
podCgroup: nodeward/node-a
meshCidrs: [10.20.0.0/16, 'fd00:20::/32']
proxyAddresses:
  ipv4: 10.20.1.1
workloadsFile: workloads.yaml
identity:
  dir: ca/node-a
policy:
  dir: policies
";

fn parse(text: &str) -> Result<Config, ConfigError> {
    parse_with_env(text, None)
}

fn parse_with_env(text: &str, node_name: Option<&str>) -> Result<Config, ConfigError> {
    let path = Path::new("/etc/nodeward/config.yaml");
    let file = yaml::decode(path, text)?;
    Config::from_file_with_env(path, file, node_name.map(str::to_owned))
}

#[test]
fn kubernetes_discovery_takes_its_settings_and_no_workloads_file() {
    let text = GOOD.replace(
        "workloadsFile: workloads.yaml",
        "discovery: kubernetes\nkubernetes:\n  cgroupRoot: kubelet\n  syncTimeout: 5s",
    );
    let cfg = parse(&text).expect("valid");
    assert_eq!(
        cfg.discovery,
        Discovery::Kubernetes(KubernetesSettings {
            cgroup_root: Some(PathBuf::from("kubelet")),
            sync_timeout: Duration::from_secs(5),
        })
    );
    let text = GOOD.replace("workloadsFile: workloads.yaml", "discovery: kubernetes");
    let cfg = parse(&text).expect("valid");
    assert_eq!(
        cfg.discovery,
        Discovery::Kubernetes(KubernetesSettings {
            cgroup_root: None,
            sync_timeout: DEFAULT_KUBERNETES_SYNC_TIMEOUT,
        })
    );
}

#[test]
fn each_discovery_source_rejects_the_others_settings() {
    let both = GOOD.replace("workloadsFile:", "discovery: kubernetes\nworkloadsFile:");
    let err = parse(&both).expect_err("both").to_string();
    assert!(err.contains("workloadsFile"), "{err}");
    let stray = format!("{GOOD}kubernetes:\n  syncTimeout: 5s\n");
    let err = parse(&stray).expect_err("stray").to_string();
    assert!(err.contains("kubernetes"), "{err}");
    let none = GOOD.replace("workloadsFile: workloads.yaml\n", "");
    let err = parse(&none).expect_err("no file").to_string();
    assert!(err.contains("workloadsFile"), "{err}");
    let bad = GOOD.replace(
        "workloadsFile: workloads.yaml",
        "discovery: kubernetes\nkubernetes: {syncTimeout: 0s}",
    );
    let err = parse(&bad).expect_err("zero").to_string();
    assert!(err.contains("kubernetes.syncTimeout"), "{err}");
}

#[test]
fn the_node_name_falls_back_to_node_name_from_the_downward_api() {
    let text = GOOD.replace("node: node-a\n", "");
    let cfg = parse_with_env(&text, Some("worker-7")).expect("valid");
    assert_eq!(cfg.node, "worker-7");
    let cfg = parse_with_env(GOOD, Some("worker-7")).expect("valid");
    assert_eq!(cfg.node, "node-a", "the config wins");
    let err = parse_with_env(&text, None)
        .expect_err("no name")
        .to_string();
    assert!(err.contains("NODE_NAME"), "{err}");
}

#[test]
fn defaults_fill_ports_and_admin_and_paths_are_relative_to_the_file() {
    let cfg = parse(GOOD).expect("valid");
    assert_eq!(cfg.outbound_port, 15001);
    assert_eq!(cfg.admin_addr, DEFAULT_ADMIN_ADDR);
    assert_eq!(
        cfg.discovery,
        Discovery::File(PathBuf::from("/etc/nodeward/workloads.yaml"))
    );
    assert_eq!(cfg.mesh_cidrs.len(), 2);
    assert_eq!(cfg.tunnel_port, 15008);
    assert_eq!(cfg.identity_dir, Path::new("/etc/nodeward/ca/node-a"));
    assert_eq!(cfg.cert_lifetime, DEFAULT_CERT_LIFETIME);
    assert_eq!(cfg.mtls, MtlsMode::Strict);
}

#[test]
fn mtls_mode_and_lifetime_are_read_and_checked() {
    let text = format!("{GOOD}mtls: PERMISSIVE\n")
        .replace("dir: ca/node-a", "dir: x\n  certLifetime: 90m");
    let cfg = parse(&text).expect("valid");
    assert_eq!(cfg.mtls, MtlsMode::Permissive);
    assert_eq!(cfg.cert_lifetime, Duration::from_secs(5400));
    let err = parse(&format!("{GOOD}mtls: LOOSE\n"))
        .expect_err("bad mode")
        .to_string();
    assert!(err.contains("field `mtls`"), "{err}");
    let err = parse(&GOOD.replace("dir: ca/node-a", "dir: x\n  certLifetime: 1s"))
        .expect_err("too short")
        .to_string();
    assert!(err.contains("identity.certLifetime"), "{err}");
}

#[test]
fn tunnel_port_must_differ_from_outbound() {
    let text = GOOD.replace("workloadsFile", "ports:\n  tunnel: 15001\nworkloadsFile");
    let err = parse(&text).expect_err("clash").to_string();
    assert!(err.contains("ports.tunnel"), "{err}");
}

#[test]
fn durations_parse_with_units_only() {
    assert_eq!(parse_duration("24h"), Some(Duration::from_secs(86400)));
    assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(parse_duration("10"), None);
    assert_eq!(parse_duration("h"), None);
    assert_eq!(parse_duration("-5s"), None);
    assert_eq!(parse_duration("99999999999999999999d"), None);
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

#[test]
fn policy_settings_default_to_zero_trust_and_stdout_audit() {
    let cfg = parse(GOOD).expect("valid");
    assert_eq!(cfg.policy_dir, Path::new("/etc/nodeward/policies"));
    assert_eq!(cfg.policy.default_policy, DefaultPolicy::Deny);
    assert_eq!(cfg.policy.root_namespace, "istio-system");
    assert_eq!(cfg.audit_sink, AuditSink::Stdout);
}

#[test]
fn policy_and_audit_fields_are_read_and_checked() {
    let text = GOOD.replace(
        "dir: policies\n",
        "dir: /srv/p\n  defaultPolicy: allow\n  rootNamespace: mesh-root\naudit:\n  sink: audit.log\n",
    );
    let cfg = parse(&text).expect("valid");
    assert_eq!(cfg.policy_dir, Path::new("/srv/p"));
    assert_eq!(cfg.policy.default_policy, DefaultPolicy::Allow);
    assert_eq!(cfg.policy.root_namespace, "mesh-root");
    assert_eq!(
        cfg.audit_sink,
        AuditSink::File("/etc/nodeward/audit.log".into())
    );
    let err = parse(&GOOD.replace("dir: policies\n", "dir: p\n  defaultPolicy: maybe\n"))
        .expect_err("bad default")
        .to_string();
    assert!(err.contains("policy.defaultPolicy"), "{err}");
    let err = parse(&GOOD.replace("dir: policies\n", "dir: p\n  rootNamespace: Bad_NS\n"))
        .expect_err("bad namespace")
        .to_string();
    assert!(err.contains("policy.rootNamespace"), "{err}");
    let err = parse(&GOOD.replace("policy:\n  dir: policies\n", ""))
        .expect_err("policy is required")
        .to_string();
    assert!(err.contains("policy"), "{err}");
}

#[test]
fn lifecycle_and_pin_dir_are_read_and_checked() {
    let cfg = parse(GOOD).expect("valid");
    assert_eq!(cfg.bpf_pin_dir, None);
    assert_eq!(cfg.drain_deadline, DEFAULT_DRAIN_DEADLINE);
    let text =
        format!("{GOOD}bpf: {{pinDir: /sys/fs/bpf/nodeward}}\nlifecycle: {{drainDeadline: 2s}}\n");
    let cfg = parse(&text).expect("valid");
    assert_eq!(cfg.bpf_pin_dir, Some("/sys/fs/bpf/nodeward".into()));
    assert_eq!(cfg.drain_deadline, Duration::from_secs(2));
    let err = parse(&format!("{GOOD}bpf: {{pinDir: relative/dir}}\n"))
        .expect_err("relative")
        .to_string();
    assert!(err.contains("bpf.pinDir"), "{err}");
    let err = parse(&format!("{GOOD}lifecycle: {{drainDeadline: soon}}\n"))
        .expect_err("bad duration")
        .to_string();
    assert!(err.contains("lifecycle.drainDeadline"), "{err}");
}

#[test]
fn sockmap_is_off_by_default_and_can_be_switched_on() {
    assert!(!parse(GOOD).expect("valid").sockmap);
    let cfg = parse(&format!("{GOOD}sockmap:\n  enabled: true\n")).expect("valid");
    assert!(cfg.sockmap);
    let cfg = parse(&format!("{GOOD}sockmap: {{}}\n")).expect("valid");
    assert!(!cfg.sockmap);
    let err = parse(&format!("{GOOD}sockmap:\n  enable: false\n"))
        .expect_err("unknown field")
        .to_string();
    assert!(err.contains("sockmap"), "{err}");
}

#[test]
fn header_names_with_underscores_are_rejected_by_default_and_can_be_allowed() {
    let cfg = parse(GOOD).expect("valid");
    assert_eq!(cfg.headers_with_underscores, HeadersWithUnderscores::Reject);
    let cfg = parse(&format!("{GOOD}http:\n  headersWithUnderscores: allow\n")).expect("valid");
    assert_eq!(cfg.headers_with_underscores, HeadersWithUnderscores::Allow);
    let cfg = parse(&format!("{GOOD}http: {{headersWithUnderscores: reject}}\n")).expect("valid");
    assert_eq!(cfg.headers_with_underscores, HeadersWithUnderscores::Reject);
    let err = parse(&format!("{GOOD}http:\n  headersWithUnderscores: drop\n"))
        .expect_err("unknown action")
        .to_string();
    assert!(err.starts_with("/etc/nodeward/config.yaml:12:"), "{err}");
    assert!(err.contains("http.headersWithUnderscores"), "{err}");
}

#[test]
fn http_timers_default_and_are_read_and_a_bad_one_is_named_at_its_line() {
    assert_eq!(
        parse(GOOD).expect("valid").http_limits,
        HttpLimits::default()
    );
    let text = format!("{GOOD}http:\n  headerReadTimeout: 5s\n  idleTimeout: 2m\n");
    let limits = parse(&text).expect("valid").http_limits;
    assert_eq!(limits.header_read_timeout, Duration::from_secs(5));
    assert_eq!(limits.idle_timeout, Duration::from_secs(120));
    for (bad, field) in [
        ("headerReadTimeout: 0s", "http.headerReadTimeout"),
        ("idleTimeout: forever", "http.idleTimeout"),
    ] {
        let err = parse(&format!("{GOOD}http:\n  {bad}\n"))
            .expect_err(bad)
            .to_string();
        assert!(err.starts_with("/etc/nodeward/config.yaml:12:"), "{err}");
        assert!(err.contains(field), "{bad}: {err}");
    }
    let err = parse(&format!("{GOOD}http:\n  readTimeout: 5s\n"))
        .expect_err("unknown field")
        .to_string();
    assert!(err.contains("readTimeout"), "{err}");
}

#[test]
fn tunnel_timers_and_caps_default_and_are_read() {
    assert_eq!(
        parse(GOOD).expect("valid").tunnel,
        TunnelSettings::default()
    );
    let text = format!(
        "{GOOD}tunnel:\n  idleTimeout: 30s\n  maxConnectionAge: 2h\n  maxConnectionAgeGrace: 0s\n  maxHandshakes: 8\n  maxHandshakesPerAddress: 2\n  maxPendingDialsPerNode: 4\n  dialQueueTimeout: 0s\n"
    );
    let t = parse(&text).expect("valid").tunnel;
    assert_eq!(t.idle_timeout, Duration::from_secs(30));
    assert_eq!(t.max_connection_age, Duration::from_secs(7200));
    assert_eq!(t.max_connection_age_grace, Duration::ZERO);
    assert_eq!(
        (
            t.max_handshakes,
            t.max_handshakes_per_address,
            t.max_pending_dials_per_node
        ),
        (8, 2, 4)
    );
    assert_eq!(t.dial_queue_timeout, Duration::ZERO, "zero: refuse at once");
}

#[test]
fn tunnel_values_that_would_close_everything_are_refused_by_field() {
    for (bad, field) in [
        ("idleTimeout: 0s", "tunnel.idleTimeout"),
        ("maxConnectionAge: 0m", "tunnel.maxConnectionAge"),
        ("maxConnectionAge: soon", "tunnel.maxConnectionAge"),
        ("maxHandshakes: 0", "tunnel.maxHandshakes"),
        ("maxPendingDialsPerNode: 0", "tunnel.maxPendingDialsPerNode"),
        ("maxHandshakes: 1000001", "tunnel.maxHandshakes"),
        (
            "maxHandshakesPerAddress: 18446744073709551615",
            "tunnel.maxHandshakesPerAddress",
        ),
        ("dialQueueTimeout: 61s", "tunnel.dialQueueTimeout"),
        ("dialQueueTimeout: soon", "tunnel.dialQueueTimeout"),
    ] {
        let err = parse(&format!("{GOOD}tunnel:\n  {bad}\n"))
            .expect_err(bad)
            .to_string();
        assert!(err.contains(field), "{bad}: {err}");
    }
    let err = parse(&format!("{GOOD}tunnel:\n  idle: 5m\n"))
        .expect_err("unknown field")
        .to_string();
    assert!(err.contains("idle"), "{err}");
}

#[test]
fn the_proxy_address_may_come_from_the_environment() {
    // A variable no other test sets; tests in this file run in parallel.
    std::env::set_var("NW_TEST_PROXY_ADDR_OK", "10.1.2.3");
    let text = GOOD.replace("ipv4: 10.20.1.1", "ipv4: ${NW_TEST_PROXY_ADDR_OK}");
    assert_ne!(text, GOOD, "GOOD names the proxy address");
    let cfg = parse(&text).expect("valid");
    assert_eq!(cfg.proxy_ipv4, std::net::Ipv4Addr::new(10, 1, 2, 3));
    let unset = GOOD.replace("ipv4: 10.20.1.1", "ipv4: ${NW_TEST_PROXY_ADDR_UNSET}");
    let err = parse(&unset).expect_err("unset").to_string();
    assert!(
        err.contains("proxyAddresses.ipv4") && err.contains("not set"),
        "{err}"
    );
    let bad = GOOD.replace("ipv4: 10.20.1.1", "ipv4: HOST_IP");
    let err = parse(&bad).expect_err("not an address").to_string();
    assert!(err.contains("proxyAddresses.ipv4"), "{err}");
}

/// The config `deploy/` ships in its ConfigMap is one this binary accepts,
/// with the environment the DaemonSet gives it.
#[test]
fn the_deploy_configmap_config_is_accepted() {
    let manifest = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/20-config.yaml"),
    )
    .expect("deploy/20-config.yaml");
    let (_, block) = manifest
        .split_once("config.yaml: |\n")
        .expect("a config.yaml entry");
    let text: String = block
        .lines()
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.get(4..).unwrap_or("")))
        .collect();
    // The DaemonSet's downward API; no other test reads HOST_IP.
    std::env::set_var("HOST_IP", "192.0.2.7");
    let cfg = parse_with_env(&text, Some("worker-1")).expect("the shipped config");
    assert_eq!(cfg.node, "worker-1");
    assert_eq!(cfg.proxy_ipv4, std::net::Ipv4Addr::new(192, 0, 2, 7));
    assert!(
        matches!(cfg.discovery, Discovery::Kubernetes { .. }),
        "{:?}",
        cfg.discovery
    );
}

#[test]
fn tracing_is_off_by_default_and_read_when_present() {
    assert_eq!(parse(GOOD).expect("valid").tracing, None);
    let on = format!("{GOOD}tracing: {{}}\n");
    let t = parse(&on).expect("valid").tracing.expect("on");
    assert_eq!(
        t,
        TracingSettings {
            endpoint: None,
            protocol: OtlpProtocol::HttpProtobuf,
            sampling: 1.0,
            service_name: "nodeward".into(),
        }
    );
    let full = format!(
        "{GOOD}tracing:\n  otlp:\n    endpoint: http://collector:4317\n    protocol: grpc\n  sampling: 0.25\n  serviceName: mesh\n"
    );
    let t = parse(&full).expect("valid").tracing.expect("on");
    assert_eq!(t.endpoint.as_deref(), Some("http://collector:4317"));
    assert_eq!((t.protocol, t.sampling), (OtlpProtocol::Grpc, 0.25));
    assert_eq!(t.service_name, "mesh");
}

#[test]
fn tracing_errors_name_the_field() {
    for (text, field) in [
        (
            "  otlp:\n    protocol: http/json\n",
            "tracing.otlp.protocol",
        ),
        (
            "  otlp:\n    endpoint: https://collector:4318\n",
            "tracing.otlp.endpoint",
        ),
        (
            "  otlp:\n    endpoint: collector:4318\n",
            "tracing.otlp.endpoint",
        ),
        ("  sampling: 1.5\n", "tracing.sampling"),
        ("  serviceName: ''\n", "tracing.serviceName"),
        ("  ratio: 0.5\n", "tracing"),
        ("  otlp:\n    headers: {}\n", "tracing.otlp"),
    ] {
        let err = parse(&format!("{GOOD}tracing:\n{text}"))
            .expect_err(text)
            .to_string();
        assert!(err.contains(field), "{text}: {err}");
    }
}

#[test]
fn worker_threads_default_to_half_the_cores_and_are_checked() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(
        parse(GOOD).expect("valid").worker_threads,
        (cores / 2).clamp(1, 8)
    );
    // One thread with Kubernetes discovery: the watches recover from an
    // outage there too (kube::fresh_again_after_an_outage_in_which_nothing_changed).
    let kube = GOOD.replace("workloadsFile: workloads.yaml\n", "discovery: kubernetes\n");
    let cfg = parse(&format!("{kube}runtime:\n  workerThreads: 1\n")).expect("one thread");
    assert_eq!(cfg.worker_threads, 1);
    let cfg = parse(&format!("{GOOD}runtime:\n  workerThreads: 3\n")).expect("valid");
    assert_eq!(cfg.worker_threads, 3);
    for bad in ["0", "257"] {
        let err = parse(&format!("{GOOD}runtime:\n  workerThreads: {bad}\n"))
            .expect_err(bad)
            .to_string();
        assert!(err.starts_with("/etc/nodeward/config.yaml:12:"), "{err}");
        assert!(err.contains("runtime.workerThreads"), "{bad}: {err}");
    }
    let err = parse(&format!("{GOOD}runtime:\n  threads: 2\n"))
        .expect_err("unknown field")
        .to_string();
    assert!(err.contains("threads"), "{err}");
}
