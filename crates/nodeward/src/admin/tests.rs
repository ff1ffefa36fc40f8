//! The admin endpoint over real HTTP on 127.0.0.1:0.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tracing_subscriber::{layer::SubscriberExt, reload, EnvFilter};

use super::*;
use nodeward_identity::{ca, NodeCa, SpiffeId};
use nodeward_policy::{PolicySet, Settings};
use nodeward_proxy::{
    authz::audit::{AuditSink, Auditor},
    telemetry::Observer,
};
use nodeward_workloads::{NodeFile, WorkloadFile, WorkloadsFile};

const TD: &str = "cluster.local";
const POLICY: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
    metadata: {name: allow-frontend, namespace: shop}\n\
    spec:\n  selector: {matchLabels: {app: backend}}\n  action: ALLOW\n  \
    rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/frontend]}}]}]\n";

/// A running admin endpoint for node-a, whose local workloads are
/// shop/frontend and shop/cache (node-b runs shop/backend).
struct Admin {
    addr: SocketAddr,
    state: Arc<AdminState>,
    _stop: watch::Sender<bool>,
    _tmp: tempfile::TempDir,
    /// Keeps the reloadable filter alive (the handle only holds a weak ref).
    _subscriber: Option<Box<dyn tracing::Subscriber + Send + Sync>>,
}

/// How to build an [`Admin`].
#[derive(Default)]
struct Setup {
    /// Install a reloadable filter and hand its control to the endpoint.
    log: bool,
    /// Load the test policy (otherwise the deny-all set is in force).
    policy: bool,
    /// Mint the local certificates.
    certs: bool,
    bpf: bool,
    /// Other admin addresses, for the cluster flow view.
    peers: Vec<SocketAddr>,
    /// Switch the flow map off.
    no_flows: bool,
}

impl Setup {
    async fn start(self) -> Admin {
        let tmp = tempfile::tempdir().expect("tempdir");
        let metrics = Arc::new(Metrics::new());
        let observer = Arc::new(Observer::new(metrics.clone()).with_trust_domain(TD));
        let registry = Arc::new(ArcSwap::from_pointee(registry(tmp.path())));
        let certs = Arc::new(CertStore::new(
            node_ca(tmp.path()),
            Duration::from_secs(3600),
        ));
        if self.certs {
            let wanted = local_identities(&registry.load(), "node-a", TD);
            certs.sync(&wanted, SystemTime::now()).expect("mint");
        }
        let auditor = Auditor::open(
            &AuditSink::File(tmp.path().join("audit.log")),
            metrics.clone(),
        )
        .expect("audit sink");
        let authz = Arc::new(Authz::new(
            PolicySet::deny_all(Settings::default()),
            auditor,
            observer,
        ));
        if self.policy {
            authz.replace(policy_set());
        }
        let readiness = Arc::new(Readiness::new());
        readiness.set_bpf_attached(self.bpf);
        let (log, subscriber) = if self.log {
            let (layer, handle) = reload::Layer::new(EnvFilter::new("info"));
            let subscriber: Box<dyn tracing::Subscriber + Send + Sync> =
                Box::new(tracing_subscriber::registry().with(layer));
            (Some(LogControl::new(handle)), Some(subscriber))
        } else {
            (None, None)
        };
        let state = Arc::new(AdminState {
            metrics,
            readiness,
            registry,
            certs,
            authz,
            node: "node-a".into(),
            mtls: MtlsMode::Strict,
            log,
            flows: (!self.no_flows).then(|| Arc::new(FlowMap::new(100).expect("cap"))),
            flow_peers: self.peers,
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(serve(listener, state.clone(), stop_rx));
        Admin {
            addr,
            state,
            _stop: stop,
            _tmp: tmp,
            _subscriber: subscriber,
        }
    }
}

/// A response as read off the wire.
struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Admin {
    async fn get(&self, target: &str) -> Reply {
        self.request("GET", target).await
    }

    async fn request(&self, method: &str, target: &str) -> Reply {
        let head =
            format!("{method} {target} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n");
        self.raw(head.as_bytes()).await
    }

    async fn raw(&self, bytes: &[u8]) -> Reply {
        let mut s = TcpStream::connect(self.addr).await.expect("connect");
        s.write_all(bytes).await.expect("write");
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .expect("reply in time")
            .expect("read");
        let text = String::from_utf8(out).expect("utf-8 reply");
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {head:?}"));
        Reply {
            status,
            head: head.to_ascii_lowercase(),
            body: body.to_owned(),
        }
    }
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

fn workload(name: &str, sa: &str, node: &str, ip: &str) -> WorkloadFile {
    WorkloadFile {
        name: name.into(),
        namespace: "shop".into(),
        service_account: sa.into(),
        node: node.into(),
        ips: vec![ip.parse().expect("ip")],
        labels: BTreeMap::from([("app".to_owned(), name.to_owned())]),
        cgroup: None,
        mesh: None,
    }
}

fn registry(mount: &Path) -> Registry {
    let file = WorkloadsFile {
        workloads: vec![
            workload("frontend", "frontend", "node-a", "10.20.1.10"),
            workload("cache", "cache", "node-a", "10.20.1.11"),
            workload("backend", "backend", "node-b", "10.20.2.10"),
        ],
        nodes: vec![NodeFile {
            name: "node-b".into(),
            address: "10.99.0.2".parse().expect("ip"),
        }],
        services: Vec::new(),
    };
    Registry::build(Path::new("workloads.yaml"), file, "node-a", mount).expect("registry")
}

fn node_ca(tmp: &Path) -> NodeCa {
    ca::init(TD, &tmp.join("ca"), false).expect("ca init");
    let out = tmp.join("node");
    ca::issue_node(
        &tmp.join("ca"),
        "node-a",
        &out,
        Duration::from_secs(30 * 86400),
        false,
    )
    .expect("issue node");
    NodeCa::load(&out).expect("load node CA")
}

fn policy_set() -> PolicySet {
    let sources = [(PathBuf::from("policies/shop.yaml"), POLICY.to_owned())];
    PolicySet::from_sources(&sources, Settings::default()).expect("policy")
}

#[tokio::test]
async fn healthz_answers_ok_whatever_the_readiness() {
    let admin = Setup::default().start().await;
    let r = admin.get("/healthz").await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
}

#[tokio::test]
async fn ready_lists_every_unmet_condition() {
    let admin = Setup::default().start().await;
    let r = admin.get("/ready").await;
    assert_eq!(r.status, 503);
    assert!(
        r.head.contains("content-type: application/json"),
        "{}",
        r.head
    );
    assert_eq!(
        r.json(),
        serde_json::json!({"ready": false, "bpfAttached": false, "certificates": false, "policyLoaded": false, "draining": false})
    );
}

#[tokio::test]
async fn kubernetes_discovery_is_ready_after_the_first_list_and_says_when_stale() {
    let admin = Setup {
        bpf: true,
        certs: true,
        ..Setup::default()
    }
    .start()
    .await;
    admin.state.authz.replace(policy_set());
    let status = Arc::new(nodeward_kube::Status::default());
    admin.state.readiness.set_discovery(status.clone());
    let r = admin.get("/ready").await;
    assert_eq!(
        (r.status, r.json()["discoverySynced"].clone()),
        (503, Value::Bool(false))
    );
    for kind in nodeward_kube::Kind::ALL {
        status.listed(kind);
    }
    let r = admin.get("/ready").await;
    assert_eq!((r.status, r.body.as_str()), (200, "ready\n"));
    // The API server went away: still serving the last state, and saying so.
    for kind in nodeward_kube::Kind::ALL {
        status.failed(kind);
    }
    let r = admin.get("/ready").await;
    assert_eq!(r.status, 200);
    assert!(
        r.body.starts_with("ready\ndiscovery stale since 20")
            && r.body
                .ends_with(" (failing: pod, namespace, service, endpointslice, node)\n"),
        "{}",
        r.body
    );
    // Back, but one kind still refused: stale until that one works too.
    for kind in nodeward_kube::Kind::ALL {
        if kind != nodeward_kube::Kind::EndpointSlice {
            status.healthy(kind);
        }
    }
    let r = admin.get("/ready").await;
    assert!(
        r.body.ends_with(" (failing: endpointslice)\n"),
        "{}",
        r.body
    );
    status.healthy(nodeward_kube::Kind::EndpointSlice);
    let r = admin.get("/ready").await;
    assert_eq!((r.status, r.body.as_str()), (200, "ready\n"));
}

#[tokio::test]
async fn ready_only_when_attached_certified_and_policy_loaded() {
    let admin = Setup {
        bpf: true,
        certs: true,
        ..Setup::default()
    }
    .start()
    .await;
    let r = admin.get("/ready").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["policyLoaded"], false);
    assert_eq!(r.json()["certificates"], true);
    admin.state.authz.replace(policy_set());
    let r = admin.get("/ready").await;
    assert_eq!((r.status, r.body.as_str()), (200, "ready\n"));
    // Stopping: no longer ready, whatever else holds.
    admin.state.readiness.set_draining();
    let r = admin.get("/ready").await;
    assert_eq!(
        (r.status, r.json()["draining"].clone()),
        (503, Value::Bool(true))
    );
    // Detached.
    admin.state.readiness.set_bpf_attached(false);
    let r = admin.get("/ready").await;
    assert_eq!(
        (r.status, r.json()["bpfAttached"].clone()),
        (503, Value::Bool(false))
    );
}

#[tokio::test]
async fn a_new_local_identity_without_certificate_is_not_ready() {
    let admin = Setup {
        bpf: true,
        certs: true,
        policy: true,
        ..Setup::default()
    }
    .start()
    .await;
    assert_eq!(admin.get("/ready").await.status, 200);
    // Only frontend's certificate remains: cache's identity lacks one.
    let frontend = SpiffeId::workload(TD, "shop", "frontend").expect("id");
    let only = std::collections::BTreeSet::from([frontend]);
    admin
        .state
        .certs
        .sync(&only, SystemTime::now())
        .expect("sync");
    let r = admin.get("/ready").await;
    assert_eq!(
        (r.status, r.json()["certificates"].clone()),
        (503, Value::Bool(false))
    );
}

#[tokio::test]
async fn config_dump_shows_workloads_policies_and_identities() {
    let admin = Setup {
        certs: true,
        policy: true,
        ..Setup::default()
    }
    .start()
    .await;
    let r = admin.get("/config_dump").await;
    assert_eq!(r.status, 200);
    let dump = r.json();
    assert_eq!(dump["node"], "node-a");
    assert_eq!(dump["mtls"], "STRICT");
    assert_eq!(dump["policyLoaded"], true);
    let workloads = dump["workloads"].as_array().expect("workloads");
    assert_eq!(workloads.len(), 3);
    assert_eq!(
        workloads[2],
        serde_json::json!({"name": "backend", "namespace": "shop", "serviceAccount": "backend",
            "node": "node-b", "ips": ["10.20.2.10"], "labels": {"app": "backend"}, "enrolled": true})
    );
    let policy = &dump["policies"][0];
    assert_eq!(policy["kind"], "AuthorizationPolicy");
    assert_eq!(
        (&policy["namespace"], &policy["name"], &policy["action"]),
        (
            &Value::from("shop"),
            &Value::from("allow-frontend"),
            &Value::from("ALLOW")
        )
    );
    assert_eq!(policy["file"], "policies/shop.yaml");
    assert_eq!(policy["line"], 1);
    let ids: Vec<&str> = dump["identities"]
        .as_array()
        .expect("identities")
        .iter()
        .filter_map(|i| i["spiffeId"].as_str())
        .collect();
    assert_eq!(
        ids,
        [
            "spiffe://cluster.local/ns/shop/sa/cache",
            "spiffe://cluster.local/ns/shop/sa/frontend"
        ]
    );
    let first = &dump["identities"][0];
    let unix = first["notAfterUnix"].as_u64().expect("unix seconds");
    let now = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(unix > now && unix <= now + 3600, "{first}");
    let rfc3339 = first["notAfter"].as_str().expect("RFC 3339");
    assert!(rfc3339.ends_with('Z') && rfc3339.contains('T'), "{rfc3339}");
    assert_eq!(first["valid"], true);
}

#[tokio::test]
async fn config_dump_never_contains_private_keys() {
    let admin = Setup {
        certs: true,
        policy: true,
        ..Setup::default()
    }
    .start()
    .await;
    let body = admin.get("/config_dump").await.body;
    assert!(!body.contains("PRIVATE KEY"), "{body}");
    assert!(!body.to_ascii_lowercase().contains("key"), "{body}");
    for (id, _) in admin.state.certs.expiries() {
        let issued = admin.state.certs.get(&id).expect("issued");
        let der = issued.svid.key.secret_pkcs8_der();
        // However the key might be encoded: PEM/base64 lines, hex, or a
        // JSON array of byte values.
        let pem = rcgen::KeyPair::try_from(der).expect("key").serialize_pem();
        for line in pem.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!body.contains(line), "base64 key material in the dump");
        }
        let hex: String = der.iter().map(|b| format!("{b:02x}")).collect();
        for chunk in hex.as_bytes().chunks(32) {
            let chunk = std::str::from_utf8(chunk).expect("hex");
            assert!(!body.contains(chunk), "hex key material in the dump");
        }
        let array = serde_json::to_string(&der[der.len() - 16..]).expect("json");
        assert!(
            !body.contains(&array[1..array.len() - 1]),
            "key bytes in the dump"
        );
    }
}

#[tokio::test]
async fn logging_reads_and_replaces_the_filter() {
    let admin = Setup {
        log: true,
        ..Setup::default()
    }
    .start()
    .await;
    let r = admin.get("/logging").await;
    assert_eq!((r.status, r.body.as_str()), (200, "info\n"));
    let r = admin.request("POST", "/logging?level=debug").await;
    assert_eq!((r.status, r.body.as_str()), (200, "debug\n"));
    assert_eq!(
        admin.get("/logging?level=info").await.status,
        405,
        "a GET never changes the level"
    );
    let r = admin
        .request("POST", "/logging?level=nodeward%3Dtrace%2Chyper%3Dinfo")
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body.contains("nodeward=trace") && r.body.contains("hyper=info"),
        "{}",
        r.body
    );
    let current = admin.get("/logging").await.body;
    assert_eq!(current, r.body);
}

#[tokio::test]
async fn logging_rejects_bad_values_and_keeps_the_filter() {
    let admin = Setup {
        log: true,
        ..Setup::default()
    }
    .start()
    .await;
    for (target, why) in [
        ("/logging?level=loud", "invalid log filter"),
        ("/logging?level=nodeward%3Dloud", "invalid log filter"),
        ("/logging?level=", "empty filter"),
        ("/logging?verbose=1", "unknown parameter"),
        ("/logging?level=debug&level=info", "more than once"),
        ("/logging?level=%zz", "percent-encoding"),
    ] {
        let r = admin.request("POST", target).await;
        assert_eq!(r.status, 400, "{target}: {}", r.body);
        assert!(r.body.contains(why), "{target}: {}", r.body);
    }
    assert_eq!(admin.get("/logging").await.body, "info\n");
}

#[tokio::test]
async fn logging_without_a_reloadable_filter_is_not_implemented() {
    let admin = Setup::default().start().await;
    assert_eq!(admin.get("/logging").await.status, 501);
    assert_eq!(
        admin.request("POST", "/logging?level=debug").await.status,
        501
    );
}

#[tokio::test]
async fn unknown_paths_are_404_and_other_methods_405() {
    let admin = Setup::default().start().await;
    for path in [
        "/",
        "/metricsx",
        "/config_dump/",
        "/admin",
        "/ready/../healthz",
    ] {
        assert_eq!(admin.get(path).await.status, 404, "{path}");
    }
    assert_eq!(admin.request("POST", "/nothing").await.status, 404);
    for method in ["PUT", "DELETE", "HEAD"] {
        let r = admin.request(method, "/logging?level=debug").await;
        assert_eq!(r.status, 405, "{method}");
        assert!(r.head.contains("allow: get, post"), "{}", r.head);
    }
    let r = admin.request("POST", "/ready").await;
    assert_eq!(r.status, 405);
    assert!(
        r.head.contains("allow: get") && !r.head.contains("post"),
        "{}",
        r.head
    );
}

#[tokio::test]
async fn metrics_are_served_as_prometheus_text() {
    let admin = Setup::default().start().await;
    let r = admin.get("/metrics").await;
    assert_eq!(r.status, 200);
    assert!(
        r.head.contains("content-type: text/plain; version=0.0.4"),
        "{}",
        r.head
    );
    assert!(
        r.body.contains("nodeward_build_info{version=\""),
        "{}",
        r.body
    );
}

#[tokio::test]
async fn oversized_request_heads_are_refused() {
    let admin = Setup::default().start().await;
    let big = format!(
        "GET /healthz HTTP/1.1\r\nhost: admin\r\nx-big: {}\r\n\r\n",
        "a".repeat(MAX_REQUEST_HEAD)
    );
    let r = admin.raw(big.as_bytes()).await;
    assert_eq!(r.status, 431);
    let mut many = String::from("GET /healthz HTTP/1.1\r\nhost: admin\r\n");
    for i in 0..=MAX_HEADERS {
        many.push_str(&format!("x-{i}: 1\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(admin.raw(many.as_bytes()).await.status, 431);
}

fn flow_key(source: &str, destination: &str) -> nodeward_proxy::flows::EdgeKey {
    use nodeward_proxy::flows::{EdgeKey, End, EndKind};
    EdgeKey {
        source: End::new(EndKind::Workload, "shop", source),
        destination: End::new(EndKind::Service, "shop", destination),
        port: 80,
    }
}

/// The top-level and per-edge keys docs/flows.md documents, in order.
const REPORT_KEYS: &[&str] = &[
    "node",
    "nodes",
    "unreachable",
    "windowSeconds",
    "generatedAt",
    "maxEdges",
    "held",
    "evicted",
    "dropped",
    "edges",
];
const EDGE_KEYS: &[&str] = &[
    "source",
    "destination",
    "port",
    "outcome",
    "connections",
    "bytes",
    "http",
    "authz",
    "rateLimit",
    "policies",
    "lastError",
    "firstSeen",
    "lastSeen",
    "nodes",
];

fn keys(v: &Value) -> Vec<String> {
    v.as_object().expect("object").keys().cloned().collect()
}

#[tokio::test]
async fn flows_json_reports_edges_in_the_documented_shape() {
    use nodeward_proxy::flows::Verdict;
    let admin = Setup::default().start().await;
    let map = admin.state.flows.clone().expect("flows on");
    let flow = map.edge(flow_key("web", "api"));
    flow.opened();
    flow.closed(100, 2000);
    flow.request(200);
    flow.authz(Verdict::Allow, "shop/allow-web");
    drop(flow); // the connection ended
    map.edge(flow_key("evil\"<b>", "api"))
        .authz(Verdict::Deny, "default");
    let r = admin.get("/flows.json?since=60").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.head.contains("content-type: application/json"),
        "{}",
        r.head
    );
    let v = r.json();
    let mut want: Vec<String> = REPORT_KEYS.iter().map(|s| (*s).to_owned()).collect();
    let mut got = keys(&v);
    want.sort();
    got.sort();
    assert_eq!(got, want);
    assert_eq!(v["node"], "node-a");
    assert_eq!(v["windowSeconds"], 60);
    assert_eq!(v["maxEdges"], 100);
    let edges = v["edges"].as_array().expect("edges");
    assert_eq!(edges.len(), 2);
    for e in edges {
        let mut want: Vec<String> = EDGE_KEYS.iter().map(|s| (*s).to_owned()).collect();
        let mut got = keys(e);
        want.sort();
        got.sort();
        assert_eq!(got, want);
    }
    let web = edges
        .iter()
        .find(|e| e["source"]["name"] == "web")
        .expect("web");
    assert_eq!(
        web["destination"],
        serde_json::json!({"kind": "service", "namespace": "shop", "name": "api"})
    );
    assert_eq!(web["outcome"], "allowed");
    assert_eq!(
        web["connections"],
        serde_json::json!({"opened": 1, "active": 0})
    );
    assert_eq!(
        web["bytes"],
        serde_json::json!({"sent": 100, "received": 2000})
    );
    assert_eq!(web["http"]["2xx"], 1);
    assert_eq!(
        web["authz"],
        serde_json::json!({"allow": 1, "deny": 0, "audit": 0})
    );
    assert_eq!(
        web["policies"],
        serde_json::json!([{"policy": "shop/allow-web", "allow": 1, "deny": 0, "audit": 0}])
    );
    let evil = edges
        .iter()
        .find(|e| e["outcome"] == "denied")
        .expect("denied");
    assert_eq!(evil["source"]["name"], "evil\"<b>");
    // The same document parses back into the typed report.
    let _: crate::flows::FlowsReport = serde_json::from_str(&r.body).expect("typed");
}

#[tokio::test]
async fn flows_json_rejects_bad_queries_and_is_404_when_off() {
    let admin = Setup::default().start().await;
    for q in ["since=0", "since=x", "since=86401", "bogus=1"] {
        assert_eq!(
            admin.get(&format!("/flows.json?{q}")).await.status,
            400,
            "{q}"
        );
    }
    assert_eq!(admin.get("/flows.json").await.json()["windowSeconds"], 300);
    let off = Setup {
        no_flows: true,
        ..Setup::default()
    }
    .start()
    .await;
    assert_eq!(off.get("/flows.json").await.status, 404);
}

#[tokio::test]
async fn flows_page_is_one_self_contained_document() {
    let admin = Setup::default().start().await;
    let r = admin.get("/flows").await;
    assert_eq!(r.status, 200);
    assert!(r.head.contains("content-type: text/html"), "{}", r.head);
    assert!(
        r.head
            .contains("content-security-policy: default-src 'none'"),
        "{}",
        r.head
    );
    for outside in [
        "src=\"http",
        "href=\"http",
        "https://",
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
    ] {
        assert!(!r.body.contains(outside), "{outside}");
    }
    assert!(r.body.contains("fetch(\"flows.json?"));
}

#[tokio::test]
async fn cluster_flows_merge_the_peers_and_name_the_unreachable() {
    use nodeward_proxy::flows::Verdict;
    let peer = Setup::default().start().await;
    peer.state
        .flows
        .as_ref()
        .expect("on")
        .edge(flow_key("web", "api"))
        .authz(Verdict::Deny, "default");
    // A port nothing listens on: bound, then closed.
    let gone = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let admin = Setup {
        peers: vec![peer.addr, gone],
        ..Setup::default()
    }
    .start()
    .await;
    admin
        .state
        .flows
        .as_ref()
        .expect("on")
        .edge(flow_key("web", "api"))
        .authz(Verdict::Allow, "shop/a");
    let alone = admin.get("/flows.json").await.json();
    assert_eq!(alone["edges"][0]["authz"]["deny"], 0);
    let v = admin.get("/flows.json?cluster=1").await.json();
    let edges = v["edges"].as_array().expect("edges");
    assert_eq!(edges.len(), 1, "{v}");
    assert_eq!(
        edges[0]["authz"],
        serde_json::json!({"allow": 1, "deny": 1, "audit": 0})
    );
    assert_eq!(edges[0]["outcome"], "denied");
    assert_eq!(v["unreachable"][0]["address"], gone.to_string());
}

#[tokio::test]
async fn a_host_that_is_not_an_ip_or_localhost_is_forbidden() {
    let admin = Setup::default().start().await;
    for host in [
        "evil.example",
        "evil.example:15020",
        "localhost.evil.example",
        "127.0.0.1.nip.io",
    ] {
        let head =
            format!("GET /config_dump HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
        let reply = admin.raw(head.as_bytes()).await;
        assert_eq!(reply.status, 403, "{host}");
        assert!(!reply.body.contains("workloads"), "{host}");
    }
    for host in [
        "localhost",
        "LOCALHOST:15020",
        "127.0.0.1",
        "127.0.0.1:15020",
        "[::1]:15020",
    ] {
        let head = format!("GET /healthz HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
        assert_eq!(admin.raw(head.as_bytes()).await.status, 200, "{host}");
    }
}

#[test]
fn a_remote_caller_may_only_get_its_peers_flows() {
    let get = |target: &str| Request::get(target).body(()).expect("request");
    assert!(remote_allowed(&get("/flows.json")));
    assert!(remote_allowed(&get("/flows.json?since=60")));
    for target in [
        "/flows.json?cluster=1",
        "/flows",
        "/config_dump",
        "/logging",
        "/metrics",
        "/healthz",
    ] {
        assert!(!remote_allowed(&get(target)), "{target}");
    }
    let post = Request::post("/logging?level=trace")
        .body(())
        .expect("request");
    assert!(!remote_allowed(&post));
}

#[tokio::test]
async fn only_configured_peers_count_as_peers() {
    let peer: SocketAddr = "10.0.0.2:15020".parse().expect("addr");
    let admin = Setup {
        peers: vec![peer],
        ..Setup::default()
    }
    .start()
    .await;
    assert!(admin.state.is_peer("10.0.0.2".parse().expect("ip")));
    assert!(!admin.state.is_peer("10.0.0.3".parse().expect("ip")));
    let mapped: std::net::IpAddr = "::ffff:10.0.0.2".parse().expect("ip");
    assert!(admin.state.is_peer(mapped.to_canonical()));
}
