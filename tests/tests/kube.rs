//! Kubernetes discovery against the in-test API server
//! (`nodeward_tests::apiserver`): the `nodeward-kube` watches, conversion
//! and resilience, in process, with objects from YAML fixtures shaped like
//! `kubectl get -o yaml`. The pods' cgroups are directories laid out as
//! kubelet's systemd driver lays them out, under a temporary root.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use nodeward_kube::{Discovery, Kind, Status, WatchTelemetry};
use nodeward_tests::apiserver::{ApiServer, ApiState};
use nodeward_workloads::Registry;

const CART_UID: &str = "6b1f0a52-3c2d-4e8f-9a7b-0c1d2e3f4a5b";
/// Generous: the watcher's backoff after a failure reaches 30 s.
const PATIENCE: Duration = Duration::from_secs(90);

#[derive(Default)]
struct Errors(AtomicUsize);

impl WatchTelemetry for Errors {
    fn watch_error(&self, _kind: Kind) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// An API server fed with the fixtures, and the discovery loop watching it.
struct Harness {
    server: Option<ApiServer>,
    addr: SocketAddr,
    registries: mpsc::UnboundedReceiver<Registry>,
    status: Arc<Status>,
    errors: Arc<Errors>,
    _stop: watch::Sender<bool>,
    _cgroups: tempfile::TempDir,
}

impl Harness {
    async fn start() -> Self {
        let state = ApiState::default();
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/kube");
        for f in ["namespaces", "nodes", "pods", "services", "endpointslices"] {
            state
                .apply_yaml_file(&fixtures.join(format!("{f}.yaml")))
                .expect("fixture");
        }
        let server = ApiServer::start("127.0.0.1:0".parse().expect("addr"), state)
            .await
            .expect("API server");
        let cgroups = tempfile::tempdir().expect("tempdir");
        make_pod_cgroup(cgroups.path(), CART_UID);
        let kubeconfig =
            kube::config::Kubeconfig::from_yaml(&server.kubeconfig()).expect("kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("client config");
        let client = kube::Client::try_from(config).expect("client");
        let status = Arc::new(Status::default());
        let errors = Arc::new(Errors::default());
        let discovery = Discovery {
            node: "node-a".into(),
            cgroup_mount: cgroups.path().to_owned(),
            cgroup_root: cgroups.path().to_owned(),
            debounce: Duration::from_millis(50),
            status: status.clone(),
            telemetry: errors.clone(),
        };
        let (tx, registries) = mpsc::unbounded_channel();
        let (stop, stop_rx) = watch::channel(false);
        let apply = move |r| {
            let _ = tx.send(r);
        };
        tokio::spawn(discovery.run(client, apply, stop_rx));
        Self {
            addr: server.addr,
            server: Some(server),
            registries,
            status,
            errors,
            _stop: stop,
            _cgroups: cgroups,
        }
    }

    fn state(&self) -> &ApiState {
        &self.server.as_ref().expect("server running").state
    }

    /// Once the fixtures are applied and the loop waits for changes (past
    /// the debounce and rebuild), stops the API server and waits for
    /// discovery to say stale; returns the server's state for a restart.
    async fn synced_then_stopped(&mut self) -> ApiState {
        self.until("the fixtures", |r| r.all().len() == 2).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let state = self.server.take().expect("server").stop().await;
        self.until_stale(true, PATIENCE).await;
        state
    }

    /// Waits up to `within` for discovery to say stale (`true`) or fresh.
    async fn until_stale(&self, stale: bool, within: Duration) {
        let turned = async {
            while self.status.stale_since().is_some() != stale {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let what = if stale { "stale" } else { "fresh" };
        tokio::time::timeout(within, turned)
            .await
            .unwrap_or_else(|_| panic!("discovery never said {what}"));
    }

    /// The first registry applied from now on that satisfies `check`.
    async fn until(&mut self, what: &str, check: impl Fn(&Registry) -> bool) -> Registry {
        let wait = async {
            loop {
                let r = self.registries.recv().await.expect("discovery runs");
                if check(&r) {
                    return r;
                }
            }
        };
        tokio::time::timeout(PATIENCE, wait)
            .await
            .unwrap_or_else(|_| panic!("no registry with {what}"))
    }

    /// Changes a stored object and applies it again.
    fn edit(&self, kind: &str, ns: &str, name: &str, change: impl FnOnce(&mut Value)) {
        let mut object = self.state().get(kind, ns, name).expect("object exists");
        change(&mut object);
        self.state().apply(object);
    }
}

/// `<root>/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid_>.slice`
/// with a container scope below, as kubelet's systemd driver names them.
fn make_pod_cgroup(root: &Path, uid: &str) -> PathBuf {
    let pod = root
        .join("kubepods.slice/kubepods-besteffort.slice")
        .join(format!(
            "kubepods-besteffort-pod{}.slice",
            uid.replace('-', "_")
        ));
    std::fs::create_dir_all(pod.join("cri-containerd-0123abcd.scope")).expect("mkdir");
    pod
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn workload<'a>(r: &'a Registry, name: &str) -> Option<&'a nodeward_workloads::Workload> {
    r.all().iter().find(|w| w.name == name).map(|w| &**w)
}

fn pod(name: &str, node: &str, ip: &str, uid: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "uid": uid, "labels": {"app": "cart"}},
        "spec": {"nodeName": node, "serviceAccountName": "cart",
            "containers": [{"name": "cart", "image": "registry.example.com/cart:1.4.2"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_services_and_nodes_are_listed_and_followed() {
    let mut h = Harness::start().await;
    let r = h.until("the fixtures", |r| r.all().len() == 2).await;
    let cart = workload(&r, "cart-6b7c8d9f5-x2k8q").expect("cart");
    assert!(cart.enrolled);
    assert_eq!(cart.service_account, "cart");
    assert_eq!(r.enrolled_cgroups().count(), 1, "the local pod's cgroup");
    assert!(workload(&r, "kube-proxy-7xq2w").is_none(), "hostNetwork");
    assert!(workload(&r, "migrate-4kq9v").is_none(), "finished");
    assert_eq!(r.node_address("node-b"), Some(ip("192.168.50.2")));
    let (svc, target) = r
        .services()
        .resolve(ip("10.96.0.10"), 80)
        .expect("cart VIP");
    assert_eq!((svc.id.as_str(), target), ("cart.shop", 8080), "named port");
    assert!(!r.services().is_vip(ip("10.96.0.11")));

    // Created.
    h.state().apply(pod(
        "cart-new",
        "node-b",
        "10.244.1.30",
        "00000000-0000-4000-8000-000000000030",
    ));
    h.until("the new pod", |r| workload(r, "cart-new").is_some())
        .await;
    // Relabelled.
    h.edit("Pod", "shop", "cart-new", |p| {
        p["metadata"]["labels"]["version"] = json!("v2")
    });
    h.until("the new label", |r| {
        workload(r, "cart-new").is_some_and(|w| w.labels.get("version").is_some_and(|v| v == "v2"))
    })
    .await;
    // Opted out, then deleted.
    h.edit("Pod", "shop", "cart-new", |p| {
        p["metadata"]["labels"]["nodeward.io/mesh"] = json!("disabled")
    });
    h.until("the pod opted out", |r| {
        workload(r, "cart-new").is_some_and(|w| !w.enrolled)
    })
    .await;
    h.state().delete("Pod", "shop", "cart-new");
    h.until("the pod gone", |r| workload(r, "cart-new").is_none())
        .await;

    // Namespace enrolment off and on.
    h.edit("Namespace", "", "shop", |n| {
        n["metadata"]["labels"]["nodeward.io/mesh"] = json!("disabled")
    });
    let r = h
        .until("shop unenrolled", |r| r.all().iter().all(|w| !w.enrolled))
        .await;
    assert_eq!(r.enrolled_cgroups().count(), 0);
    h.edit("Namespace", "", "shop", |n| {
        n["metadata"]["labels"]["nodeward.io/mesh"] = json!("enabled")
    });
    h.until("shop enrolled", |r| r.enrolled_cgroups().count() == 1)
        .await;

    // The Service scaled to three endpoints, one of them not ready.
    h.edit("EndpointSlice", "shop", "cart-7xk2p", |s| {
        s["endpoints"] = json!([
            {"addresses": ["10.244.0.11"], "conditions": {"ready": true}},
            {"addresses": ["10.244.1.31"], "conditions": {"ready": true}},
            {"addresses": ["10.244.1.32"], "conditions": {"ready": true}},
            {"addresses": ["10.244.1.33"], "conditions": {"ready": false}},
        ]);
    });
    h.until("three ready endpoints", |r| {
        r.services()
            .resolve(ip("10.96.0.10"), 80)
            .is_some_and(|(s, _)| s.endpoints.len() == 3)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_larger_than_a_page_come_whole() {
    let mut h = Harness::start().await;
    // Beyond the watches' 500-object pages: the list comes in chunks.
    for i in 0..700 {
        let name = format!("bulk-{i}");
        let uid = format!("00000000-0000-4000-8000-{i:012}");
        h.state().apply(pod(
            &name,
            "node-b",
            &format!("10.245.{}.{}", i / 250, i % 250 + 1),
            &uid,
        ));
    }
    h.until("every pod", |r| r.all().len() == 702).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_gone_forces_a_relist_and_nothing_is_lost() {
    let mut h = Harness::start().await;
    h.until("the fixtures", |r| r.all().len() == 2).await;
    let before = h.errors.0.load(Ordering::Relaxed);
    // History compacted and watches cut: the resume gets 410 Gone.
    // Known only to a new list: the watches' resumes get 410 Gone.
    h.state().compact_and_cut_with(pod(
        "after-410",
        "node-b",
        "10.244.1.40",
        "00000000-0000-4000-8000-000000000410",
    ));
    h.until("the pod created across the 410", |r| {
        workload(r, "after-410").is_some()
    })
    .await;
    let every_kind = async {
        while h.state().gone_sent() < 5 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(PATIENCE, every_kind)
        .await
        .expect("every kind's resume answered 410");
    assert!(
        h.errors.0.load(Ordering::Relaxed) > before,
        "the 410 is counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_state_stays_while_the_api_server_is_away() {
    let mut h = Harness::start().await;
    let first = h.until("the fixtures", |r| r.all().len() == 2).await;
    assert_eq!(h.status.stale_since(), None);
    let state = h.server.take().expect("server").stop().await;
    h.until_stale(true, PATIENCE).await;
    assert!(h.status.synced(), "still synced: the last state stays");
    // While away, the registry stays the last state (a rebuild already
    // under way when the server went can still land: the same state).
    while let Ok(r) = h.registries.try_recv() {
        assert_eq!(r.all().len(), first.all().len(), "only the last state");
    }
    // Changed while away; seen once the server is back.
    state.apply(pod(
        "while-away",
        "node-b",
        "10.244.1.50",
        "00000000-0000-4000-8000-000000000050",
    ));
    h.server = Some(ApiServer::start(h.addr, state).await.expect("restart"));
    h.until("the pod created while away", |r| {
        workload(r, "while-away").is_some()
    })
    .await;
    h.until_stale(false, PATIENCE).await;
    assert!(
        h.errors.0.load(Ordering::Relaxed) > 0,
        "the failures are counted"
    );
}

/// An outage during which nothing changes: the re-started watches report
/// nothing, so only the probe can tell discovery is fresh again. The loop
/// was parked waiting for a change when the watches failed; it must wake
/// to probe. (Found by `e2e_services_outages_and_410s`, which failed when
/// no rebuild happened to follow the failures.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_again_after_an_outage_in_which_nothing_changed() {
    let mut h = Harness::start().await;
    let state = h.synced_then_stopped().await;
    h.server = Some(ApiServer::start(h.addr, state).await.expect("restart"));
    // Probes come every 2 s (the watches' backoff alone reaches 30 s, and
    // a re-started watch reports nothing here).
    h.until_stale(false, Duration::from_secs(60)).await;
}

/// An API server that answers but refuses one kind (RBAC: `403
/// Forbidden` after a ClusterRole edit) leaves discovery stale, saying
/// which kind, for as long as it refuses: the probe lists and watches
/// each failing kind instead of asking for the server's version, which it
/// would get. Here its list and watch are refused, and an outage restarts
/// the watches (refusals do not cut open ones).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kind_the_api_server_refuses_keeps_discovery_stale() {
    let h = back_refusing_slices(&["list", "watch"]).await;
    stale_while_slices_are_refused(&h).await;
}

/// The same when only `watch` is refused: listing the kind is not enough
/// for a watcher, so not enough for the probe either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kind_whose_watch_is_refused_keeps_discovery_stale() {
    let h = back_refusing_slices(&["watch"]).await;
    stale_while_slices_are_refused(&h).await;
}

/// Hostile input: a server whose answers for one kind are not JSON (a
/// broken proxy in front of it, a cut response) leaves that kind stale and
/// panics nothing; a probe that cannot read what it got clears nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kind_the_api_server_garbles_keeps_discovery_stale() {
    let mut h = Harness::start().await;
    let state = h.synced_then_stopped().await;
    state.garble("EndpointSlice", true);
    h.server = Some(ApiServer::start(h.addr, state).await.expect("restart"));
    stale_while_slices_are_refused(&h).await;
}

/// Discovery synced, then an outage (which restarts every watch), after
/// which the API server refuses `verbs` on EndpointSlices.
async fn back_refusing_slices(verbs: &[&'static str]) -> Harness {
    let mut h = Harness::start().await;
    let state = h.synced_then_stopped().await;
    state.forbid("EndpointSlice", verbs);
    h.server = Some(ApiServer::start(h.addr, state).await.expect("restart"));
    h
}

/// The same when the refusal meets a re-list (after `410 Gone`): a list
/// that starts and fails does not count as the kind working again, and
/// the stale mark keeps its time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kind_refused_across_a_relist_keeps_discovery_stale() {
    let mut h = Harness::start().await;
    h.until("the fixtures", |r| r.all().len() == 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Watching stays allowed: the resumed watch gets `410 Gone`, and the
    // re-list that follows is refused, again and again.
    h.state().forbid("EndpointSlice", &["list"]);
    let pod = pod(
        "during-refusal",
        "node-b",
        "10.244.1.41",
        "00000000-0000-4000-8000-000000000411",
    );
    h.state().compact_and_cut_with(pod);
    stale_while_slices_are_refused(&h).await;
}

/// Waits for every kind but EndpointSlices to be fresh again, checks for
/// 12 s (probe rounds and watch retries backing off past the 2-s probe)
/// that discovery stays stale since the same time, then lifts the refusal
/// and waits for fresh.
async fn stale_while_slices_are_refused(h: &Harness) {
    let only_slices = async {
        while h.status.failing() != [Kind::EndpointSlice] {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), only_slices)
        .await
        .expect("every other kind fresh again");
    let since = h.status.stale_since();
    let until = tokio::time::Instant::now() + Duration::from_secs(12);
    while tokio::time::Instant::now() < until {
        assert_eq!(
            h.status.failing(),
            [Kind::EndpointSlice],
            "fresh although refused"
        );
        assert_eq!(h.status.stale_since(), since, "stale mark restarted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    h.state().forbid("EndpointSlice", &[]);
    h.state().garble("EndpointSlice", false);
    h.until_stale(false, Duration::from_secs(60)).await;
}

/// A long outage does not slow the return: probes that find no server at
/// all keep coming every 2 s (only a server that refuses a kind makes that
/// kind's probes back off), so discovery is fresh within seconds of the
/// server's return, not up to 30 s later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_again_soon_after_a_long_outage() {
    let mut h = Harness::start().await;
    let state = h.synced_then_stopped().await;
    // Long enough for several failed probes (2 + 4 + 8 s, were they
    // backing off).
    tokio::time::sleep(Duration::from_secs(16)).await;
    h.server = Some(ApiServer::start(h.addr, state).await.expect("restart"));
    h.until_stale(false, Duration::from_secs(10)).await;
}

/// The same while a local pod waits for its cgroup: discovery looks for it
/// every second, and those wake-ups must not keep postponing the 2-s probe
/// for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_again_after_an_outage_while_a_pod_waits_for_its_cgroup() {
    let mut h = Harness::start().await;
    h.until("the fixtures", |r| r.all().len() == 2).await;
    // On this node, with no cgroup yet.
    h.state().apply(pod(
        "cart-starting",
        "node-a",
        "10.244.0.60",
        "00000000-0000-4000-8000-000000000060",
    ));
    // Rebuilt once for the pod, then again a second later: looking again.
    for _ in 0..3 {
        tokio::time::timeout(PATIENCE, h.registries.recv())
            .await
            .expect("rebuilt while the pod waits");
    }
    let state = h.server.take().expect("server").stop().await;
    h.until_stale(true, PATIENCE).await;
    h.server = Some(ApiServer::start(h.addr, state).await.expect("restart"));
    h.until_stale(false, Duration::from_secs(60)).await;
}

/// While the watches fail, discovery probes the API server every 2 s. A
/// server that accepts connections and never answers must not hold the
/// discovery loop (kube-client sets no read timeout): it still stops when
/// told. Without a bound on the probe, `e2e_services_outages_and_410s`
/// sometimes never saw discovery fresh again after the API server's
/// restart.
#[tokio::test]
async fn an_api_server_that_never_answers_does_not_hold_discovery() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    // Accepts and keeps every connection; answers nothing.
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let mut config = kube::Config::new(format!("https://{addr}").parse().expect("url"));
    config.accept_invalid_certs = true;
    let client = kube::Client::try_from(config).expect("client");
    let cgroups = tempfile::tempdir().expect("tempdir");
    let status = Arc::new(Status::default());
    // Stale, as after failed watches: the probe runs.
    status.failed(Kind::Pod);
    let discovery = Discovery {
        node: "node-a".into(),
        cgroup_mount: cgroups.path().to_owned(),
        cgroup_root: cgroups.path().to_owned(),
        debounce: Duration::from_millis(50),
        status,
        telemetry: Arc::new(Errors::default()),
    };
    let (stop, stop_rx) = watch::channel(false);
    let running = tokio::spawn(discovery.run(client, |_| {}, stop_rx));
    // Past the first probe, which starts 2 s in.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.send_replace(true);
    tokio::time::timeout(Duration::from_secs(20), running)
        .await
        .expect("discovery stopped although a probe never got an answer")
        .expect("discovery task");
    silent.abort();
}

// End to end: the netns cluster with `discovery: kubernetes`, the API
// server in node-a's netns.

const PORT: u16 = 9400;

fn cluster_addr(c: &nodeward_tests::Cluster, pod: &str) -> SocketAddr {
    SocketAddr::new(c.ip4(pod), PORT)
}

/// Waits until `check` holds, re-trying every 200 ms for up to 90 s (a
/// watch's backoff after an outage reaches 30 s).
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + PATIENCE;
    while !check() {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn e2e_enrolment_follows_the_api_server() {
    if !nodeward_tests::require_root("e2e_enrolment_follows_the_api_server") {
        return;
    }
    let mut c = nodeward_tests::Cluster::start_with(nodeward_tests::Options {
        kubernetes: true,
        ..nodeward_tests::Options::default()
    });
    c.serve_echo("backend", PORT);
    c.serve_echo("db", PORT);
    // Listed from the API: across nodes, through both proxies.
    let r = c.call("frontend", cluster_addr(&c, "backend"), 100);
    assert_eq!(r["intact"], true, "{r}");
    let (status, _, body) = c.admin("node-a", "/ready");
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    // cache deleted from the API: no longer redirected, so STRICT backend
    // refuses it; created again: meshed again.
    c.kube().delete("Pod", "shop", "cache");
    eventually("cache refused once deleted", || {
        c.call("cache", cluster_addr(&c, "backend"), 100)["connected"] == false
    });
    c.kube().apply(c.pod_object(c.pod("cache")));
    eventually("cache meshed once created", || {
        c.call("cache", cluster_addr(&c, "backend"), 100)["intact"] == true
    });
    // cache opts out: the same as deleted, for the mesh.
    let mut cache = c.kube().get("Pod", "shop", "cache").expect("cache pod");
    cache["metadata"]["labels"]["nodeward.io/mesh"] = json!("disabled");
    c.kube().apply(cache);
    eventually("cache refused once opted out", || {
        c.call("cache", cluster_addr(&c, "backend"), 100)["connected"] == false
    });
    // The whole namespace off: frontend is no longer meshed, so db (in
    // namespace data, still enrolled and STRICT) refuses it; then on again.
    let mut shop = c.kube().get("Namespace", "", "shop").expect("shop");
    shop["metadata"]["labels"]["nodeward.io/mesh"] = json!("disabled");
    c.kube().apply(shop.clone());
    eventually("frontend refused with shop unenrolled", || {
        c.call("frontend", cluster_addr(&c, "db"), 100)["connected"] == false
    });
    shop["metadata"]["labels"]["nodeward.io/mesh"] = json!("enabled");
    c.kube().apply(shop);
    eventually("frontend meshed again", || {
        c.call("frontend", cluster_addr(&c, "db"), 100)["intact"] == true
    });
}

/// Service `backend` at `VIP:80` -> `PORT`, and its EndpointSlice with
/// `endpoints` (pod names) ready.
fn backend_service(c: &nodeward_tests::Cluster, endpoints: &[&str]) -> (Value, Value) {
    let service = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "backend", "namespace": "shop"},
        "spec": {"type": "ClusterIP", "clusterIP": VIP, "clusterIPs": [VIP],
            "selector": {"app": "backend"},
            "ports": [{"name": "echo", "port": 80, "protocol": "TCP", "targetPort": PORT}]}});
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|p| json!({"addresses": [c.ip4(p).to_string()], "conditions": {"ready": true}}))
        .collect();
    let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "backend-x7k2p", "namespace": "shop",
            "labels": {"kubernetes.io/service-name": "backend"}},
        "addressType": "IPv4",
        "ports": [{"name": "echo", "port": PORT, "protocol": "TCP"}],
        "endpoints": endpoints});
    (service, slice)
}

/// A VIP inside the mesh CIDRs, so the kernel hands its connections over.
const VIP: &str = "10.20.200.10";

#[test]
fn e2e_services_outages_and_410s() {
    if !nodeward_tests::require_root("e2e_services_outages_and_410s") {
        return;
    }
    let mut c = nodeward_tests::Cluster::start_with(nodeward_tests::Options {
        kubernetes: true,
        ..nodeward_tests::Options::default()
    });
    c.serve_echo("backend", PORT);
    let vip = SocketAddr::new(ip(VIP), 80);
    // A Service with its endpoints from an EndpointSlice.
    let (service, slice) = backend_service(&c, &["backend"]);
    c.kube().apply(service);
    c.kube().apply(slice);
    eventually("the VIP reaches backend", || {
        c.call("frontend", vip, 100)["intact"] == true
    });
    // Scaled to zero, then back.
    let (_, empty) = backend_service(&c, &[]);
    c.kube().apply(empty);
    eventually("no endpoint: the VIP call fails", || {
        c.call("frontend", vip, 100)["intact"] != true
    });
    let (_, slice) = backend_service(&c, &["backend"]);
    c.kube().apply(slice);
    eventually("the VIP reaches backend again", || {
        c.call("frontend", vip, 100)["intact"] == true
    });

    // The API server killed: the last state stays, /ready says stale.
    c.stop_api_server();
    eventually("node-a reports stale discovery", || {
        let (status, _, body) = c.admin("node-a", "/ready");
        status == 200 && body.starts_with("ready\ndiscovery stale since ")
    });
    let r = c.call("frontend", vip, 100);
    assert_eq!(r["intact"], true, "still served on the last state: {r}");
    assert!(
        c.metric(
            "node-a",
            "nodeward_discovery_watch_errors_total",
            &[("kind", "pod")]
        ) > 0.0
    );
    // Back: fresh again.
    c.restart_api_server();
    for node in ["node-a", "node-b"] {
        eventually("fresh again", || c.admin(node, "/ready").2 == "ready\n");
    }

    // A forced 410: every watch re-lists; a change made then still lands.
    let errors = c.metric(
        "node-b",
        "nodeward_discovery_watch_errors_total",
        &[("kind", "pod")],
    );
    let mut cache = c.kube().get("Pod", "shop", "cache").expect("cache pod");
    cache["metadata"]["labels"]["nodeward.io/mesh"] = json!("disabled");
    c.kube().compact_and_cut_with(cache);
    eventually("cache opted out after the re-list", || {
        c.call("cache", cluster_addr(&c, "backend"), 100)["connected"] == false
    });
    eventually("the 410 is counted", || {
        c.metric(
            "node-b",
            "nodeward_discovery_watch_errors_total",
            &[("kind", "pod")],
        ) > errors
    });
    assert!(c.kube().gone_sent() > 0);
}

#[test]
fn e2e_a_proxy_started_without_the_api_server_is_not_ready_until_it_lists() {
    if !nodeward_tests::require_root(
        "e2e_a_proxy_started_without_the_api_server_is_not_ready_until_it_lists",
    ) {
        return;
    }
    let mut c = nodeward_tests::Cluster::start_with(nodeward_tests::Options {
        kubernetes: true,
        ..nodeward_tests::Options::default()
    });
    c.serve_echo("backend", PORT);
    c.stop_proxy("node-a");
    c.stop_api_server();
    // Starts after `kubernetes.syncTimeout` (15 s here) with nothing listed:
    // no pod enrolled, not ready.
    c.start_proxy("node-a")
        .expect("node-a starts without the API server");
    let (status, _, body) = c.admin("node-a", "/ready");
    assert_eq!(status, 503, "{body}");
    let report: Value = serde_json::from_str(&body).expect("a JSON report");
    assert_eq!(report["discoverySynced"], false, "{body}");
    c.restart_api_server();
    eventually("node-a ready once listed", || {
        c.admin("node-a", "/ready").0 == 200
    });
    eventually("frontend meshed once listed", || {
        c.call("frontend", cluster_addr(&c, "backend"), 100)["intact"] == true
    });
}
