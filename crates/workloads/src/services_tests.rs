//! Services and enrolment in the workloads file.

use super::*;

fn build(text: &str, mount: &Path) -> Result<Registry, FileError> {
    let path = Path::new("/etc/nodeward/workloads.yaml");
    let file = yaml::decode(path, text)?;
    Registry::build(path, file, "node-a", mount)
}

/// backend on both nodes, one unenrolled pod, and `services` appended.
fn with_services(mount: &Path, services: &str) -> String {
    std::fs::create_dir_all(mount.join("pods/backend-a")).expect("mkdir");
    std::fs::create_dir_all(mount.join("pods/legacy")).expect("mkdir");
    format!(
        "workloads:
  - {{name: backend-a, namespace: shop, serviceAccount: backend, node: node-a,
     ips: [10.20.1.10, 'fd00:20:1::10'], labels: {{app: backend}}, cgroup: pods/backend-a}}
  - {{name: backend-b, namespace: shop, serviceAccount: backend, node: node-b,
     ips: [10.20.2.10], labels: {{app: backend}}}}
  - {{name: legacy, namespace: shop, serviceAccount: legacy, node: node-a,
     ips: [10.20.1.11], labels: {{app: legacy}}, cgroup: pods/legacy, mesh: false}}
nodes:
  - {{name: node-b, address: 10.99.0.2}}
services:
{services}"
    )
}

const BACKEND: &str = "  - {name: backend, namespace: shop, vips: [10.96.0.10, 'fd00:96::10'],
     ports: [{port: 80, targetPort: 8080}], selector: {app: backend}}
";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

#[test]
fn a_vip_and_port_resolve_to_the_selected_workloads_and_target_port() {
    let dir = tempfile::tempdir().expect("tempdir");
    let reg = build(&with_services(dir.path(), BACKEND), dir.path()).expect("valid");
    let (service, target) = reg.services().resolve(ip("10.96.0.10"), 80).expect("vip");
    assert_eq!(
        (service.to_string(), target),
        ("backend.shop".to_owned(), 8080)
    );
    let names: Vec<_> = service
        .endpoints
        .iter()
        .map(|e| e.workload.as_ref().expect("workload").name.clone())
        .collect();
    assert_eq!(names, ["backend-a", "backend-b"]);
    // A dual-stack endpoint is dialled in the VIP's family.
    let a = &service.endpoints[0];
    assert_eq!(a.ip_for(ip("10.96.0.10")), ip("10.20.1.10"));
    assert_eq!(a.ip_for(ip("fd00:96::10")), ip("fd00:20:1::10"));
    assert!(reg.services().resolve(ip("10.96.0.10"), 81).is_none());
    assert!(reg
        .services()
        .resolve(ip("::ffff:10.96.0.10"), 80)
        .is_some());
    assert!(reg.services().is_vip(ip("fd00:96::10")));
}

#[test]
fn explicit_endpoints_need_not_be_workloads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let svc = "  - {name: ext, namespace: shop, vips: [10.96.0.11], ports: [{port: 5432, targetPort: 5432}],
     endpoints: [10.20.2.10, 10.30.0.5]}
";
    let reg = build(&with_services(dir.path(), svc), dir.path()).expect("valid");
    let (service, _) = reg.services().resolve(ip("10.96.0.11"), 5432).expect("vip");
    assert_eq!(service.endpoints.len(), 2);
    assert!(service.endpoints[0].workload.is_some());
    assert!(service.endpoints[1].workload.is_none());
}

#[test]
fn bad_services_are_errors_naming_the_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        // A VIP that is a workload's IP.
        (
            BACKEND.replace("10.96.0.10", "10.20.2.10"),
            "services[0].vips[0]",
            "backend-b",
        ),
        // targetPort out of range, and 0.
        (
            BACKEND.replace("targetPort: 8080", "targetPort: 70000"),
            "services[0].ports[0].targetPort",
            "out of range",
        ),
        (
            BACKEND.replace("targetPort: 8080", "targetPort: 0"),
            "services[0].ports[0].targetPort",
            "out of range",
        ),
        // The same service twice.
        (
            format!(
                "{BACKEND}{}",
                BACKEND
                    .replace("10.96.0.10", "10.96.0.12")
                    .replace("fd00:96::10", "fd00:96::12")
            ),
            "services[1].name",
            "listed twice",
        ),
        // Two services on one VIP.
        (
            format!(
                "{BACKEND}{}",
                BACKEND.replace("name: backend", "name: other")
            ),
            "services[1].vips",
            "also claimed",
        ),
        // Neither selector nor endpoints.
        (
            BACKEND.replace(", selector: {app: backend}", ""),
            "services[0].selector",
            "exactly one",
        ),
        // Unknown field.
        (
            BACKEND.replace("selector:", "selektor:"),
            "services[0].selektor",
            "",
        ),
    ];
    for (svc, field, words) in cases {
        let err = build(&with_services(dir.path(), &svc), dir.path())
            .expect_err(&svc)
            .to_string();
        assert!(err.contains(field) && err.contains(words), "{svc}: {err}");
    }
}

#[test]
fn a_selector_matching_nothing_is_a_warning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let svc = BACKEND.replace("app: backend}}", "app: nothing}}");
    let reg = build(&with_services(dir.path(), &svc), dir.path()).expect("valid");
    let (service, _) = reg.services().resolve(ip("10.96.0.10"), 80).expect("vip");
    assert!(service.endpoints.is_empty());
    assert_eq!(reg.warnings().len(), 1, "{:?}", reg.warnings());
    assert!(reg.warnings()[0].contains("backend.shop"));
}

#[test]
fn unenrolled_pods_are_named_but_not_meshed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let reg = build(&with_services(dir.path(), BACKEND), dir.path()).expect("valid");
    let legacy = reg.by_ip(ip("10.20.1.11")).expect("listed");
    assert!(!legacy.enrolled);
    let legacy_cgroup = cgroup::cgroup_id(&dir.path().join("pods/legacy")).expect("id");
    let backend_cgroup = cgroup::cgroup_id(&dir.path().join("pods/backend-a")).expect("id");
    let enrolled: Vec<u64> = reg.enrolled_cgroups().collect();
    assert_eq!(enrolled, [backend_cgroup]);
    assert_eq!(
        reg.identify(legacy_cgroup, ip("10.20.1.11")),
        Err(Unknown::Cgroup)
    );
    // No identity is minted for, or accepted from, an unenrolled pod.
    assert!(!reg.hosts("node-a", "shop", "legacy"));
    assert!(reg.hosts("node-a", "shop", "backend"));
    assert_eq!(
        reg.identities_on("node-a").into_iter().collect::<Vec<_>>(),
        [("shop".to_owned(), "backend".to_owned())]
    );
}

#[test]
fn a_reload_keeps_the_load_of_endpoints_that_stay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let old = build(&with_services(dir.path(), BACKEND), dir.path()).expect("valid");
    let (service, _) = old.services().resolve(ip("10.96.0.10"), 80).expect("vip");
    let _open = EndpointGuard::open(&service.endpoints[1]);
    let mut new = build(&with_services(dir.path(), BACKEND), dir.path()).expect("valid");
    new.inherit_loads(&old);
    let (service, _) = new.services().resolve(ip("10.96.0.10"), 80).expect("vip");
    assert_eq!(
        (service.endpoints[0].open(), service.endpoints[1].open()),
        (0, 1)
    );
    drop(_open);
    assert_eq!(service.endpoints[1].open(), 0);
}
