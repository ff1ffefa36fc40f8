//! Kubernetes discovery: the API server as the source of workloads, nodes
//! and Services.
//!
//! Pods (all namespaces), Namespaces, Services, EndpointSlices and Nodes are
//! watched with kube-rs watchers (which re-list on `410 Gone` and back off
//! on errors) into reflector stores. After a change, and at most every
//! debounce interval, the stores are converted ([`convert`]) into the same
//! registry input the workloads file gives, built into a
//! [`Registry`], and handed to the caller, which swaps it in exactly as
//! for a file reload.
//!
//! Owns: talking to the API server, what a pod/Service/node means for the
//! registry, finding local pods' cgroups ([`cgroup`]), watch health
//! ([`Status`]).
//! Must not know: sockets, kernel programs, policies, metrics (errors are
//! counted through [`WatchTelemetry`]).
#![forbid(unsafe_code)]

use std::{
    collections::{HashMap, HashSet},
    fmt::Debug,
    hash::Hash,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use futures_util::{pin_mut, StreamExt, TryStreamExt};
use k8s_openapi::api::{
    core::v1::{Namespace, Node, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    runtime::{
        reflector::{self, Store},
        watcher::{self, Event},
        WatchStreamExt,
    },
    Api, Resource,
};
use serde::de::DeserializeOwned;
use tokio::sync::{watch, Notify};

use nodeward_workloads::Registry;

/// The API server client ([`connect`] makes one).
pub use kube::Client;

pub mod cgroup;
pub mod convert;
pub mod strip;

pub use convert::{convert, Converted, Snapshot, MESH_LABEL};
pub use strip::PodInfo;

/// Objects per page of a (re-)list: bounds the memory one response takes.
const PAGE_SIZE: u32 = 500;
/// How often the kinds whose watches fail are probed.
const PROBE_EVERY: Duration = Duration::from_secs(2);
/// The longest a kind the API server refuses waits between probes: each
/// refusal doubles its wait from [`PROBE_EVERY`], so that a kind refused
/// for days (an RBAC mistake) costs one probe per node every 30 s, not
/// every 2 s, on top of its watcher's own retries.
const PROBE_MAX_GAP: Duration = Duration::from_secs(30);
/// How long a probe may take. kube-client sets no read timeout, so a
/// server (or a pooled connection to a gone one) that never answers would
/// otherwise hold the discovery loop, and with it `/ready` and the stop,
/// for ever.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How soon a local pod whose cgroup was missing is looked for again.
const CGROUP_RETRY: Duration = Duration::from_secs(1);
/// The name errors give the API source (in place of a file path).
pub const SOURCE: &str = "kubernetes";

/// The watched kinds, as metrics and logs name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Pod,
    Namespace,
    Service,
    EndpointSlice,
    Node,
}

impl Kind {
    /// Every watched kind.
    pub const ALL: [Kind; 5] = [
        Kind::Pod,
        Kind::Namespace,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Node,
    ];

    /// Stable label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pod => "pod",
            Self::Namespace => "namespace",
            Self::Service => "service",
            Self::EndpointSlice => "endpointslice",
            Self::Node => "node",
        }
    }
}

/// No client could be made: no in-cluster service account and no usable
/// `KUBECONFIG`.
#[derive(Debug, thiserror::Error)]
#[error("connecting to the Kubernetes API server: {0}")]
pub struct ConnectError(#[source] kube::Error);

/// A client from the in-cluster service account, or from `KUBECONFIG`
/// (or `~/.kube/config`) outside a cluster.
pub async fn connect() -> Result<Client, ConnectError> {
    Client::try_default().await.map_err(ConnectError)
}

/// Where watch failures are counted (the binary's metrics).
pub trait WatchTelemetry: Send + Sync {
    /// A watch of `kind` failed (list, watch start, stream cut, `410 Gone`);
    /// the watcher restarts it after a backoff.
    fn watch_error(&self, kind: Kind);
}

/// Watch health, for `/ready`. Kept per kind: the API server can answer
/// for one kind and refuse another (RBAC's `403 Forbidden`, a missing
/// resource), and discovery is stale while any kind's watch fails.
#[derive(Debug, Default)]
pub struct Status {
    inner: Mutex<StatusInner>,
    /// Woken when the watches start failing, so that the discovery loop,
    /// which may be parked waiting for changes, starts probing.
    went_stale: Notify,
}

#[derive(Debug, Default)]
struct StatusInner {
    /// Kinds whose first complete list arrived.
    listed: HashSet<Kind>,
    /// Kinds whose watches fail (their part of the registry is the last
    /// known state).
    failing: HashMap<Kind, Failing>,
}

#[derive(Debug, Clone, Copy)]
struct Failing {
    /// Since when.
    since: SystemTime,
    /// The latest failure.
    last: Instant,
    /// Its watcher has started listing again (after `410 Gone` or a failed
    /// list): its store is the old state until the list completes, so
    /// only the complete list clears it, never a probe.
    relisting: bool,
    /// When it is probed next, and the wait after a failed probe.
    probe_at: Instant,
    probe_gap: Duration,
}

impl Status {
    /// Whether every kind has been listed completely at least once.
    pub fn synced(&self) -> bool {
        self.lock().listed.len() == Kind::ALL.len()
    }

    /// Since when a watch has been failing (the API server unreachable,
    /// or a kind refused); `None` while every kind is healthy.
    pub fn stale_since(&self) -> Option<SystemTime> {
        self.stale().map(|(since, _)| since)
    }

    /// The kinds whose watches fail.
    pub fn failing(&self) -> Vec<Kind> {
        self.stale().map(|(_, kinds)| kinds).unwrap_or_default()
    }

    /// Since when, and which kinds, in one look (`None` while healthy).
    pub fn stale(&self) -> Option<(SystemTime, Vec<Kind>)> {
        let s = self.lock();
        let since = s.failing.values().map(|f| f.since).min()?;
        let kinds = Kind::ALL.into_iter().filter(|k| s.failing.contains_key(k));
        Some((since, kinds.collect()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StatusInner> {
        // A panic elsewhere must not take readiness down with it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the first (or a new) complete list of `kind`.
    pub fn listed(&self, kind: Kind) {
        let mut s = self.lock();
        s.listed.insert(kind);
        s.failing.remove(&kind);
    }

    /// Records a failed watch of `kind`: stale from now, unless already.
    pub fn failed(&self, kind: Kind) {
        let mut s = self.lock();
        let was_fresh = s.failing.is_empty();
        let now = (SystemTime::now(), Instant::now());
        s.failing
            .entry(kind)
            .and_modify(|f| f.last = now.1)
            .or_insert(Failing {
                since: now.0,
                last: now.1,
                relisting: false,
                probe_at: now.1,
                probe_gap: PROBE_EVERY,
            });
        drop(s);
        if was_fresh {
            // A stored permit if nobody waits yet: the wake-up is not lost.
            self.went_stale.notify_one();
        }
    }

    /// Records that a watch of `kind` delivered a change: it works again.
    pub fn healthy(&self, kind: Kind) {
        self.lock().failing.remove(&kind);
    }

    /// Records that a failing kind's watcher lists it again: only the
    /// complete list ([`Status::listed`]) clears it now.
    pub fn relisting(&self, kind: Kind) {
        if let Some(f) = self.lock().failing.get_mut(&kind) {
            f.relisting = true;
        }
    }

    /// The failing kinds whose probe is due.
    fn due(&self) -> Vec<Kind> {
        let s = self.lock();
        let now = Instant::now();
        // A re-listing kind is cleared by its list alone: no probe for it.
        let due = |k: &Kind| {
            s.failing
                .get(k)
                .is_some_and(|f| !f.relisting && f.probe_at <= now)
        };
        Kind::ALL.into_iter().filter(due).collect()
    }

    /// The API server refused a probe of `kind`: the next one waits twice
    /// as long. (A server that does not answer at all is an outage, which
    /// is probed every [`PROBE_EVERY`] so that it is over within 2 s.)
    fn probe_failed(&self, kind: Kind) {
        if let Some(f) = self.lock().failing.get_mut(&kind) {
            f.probe_at = Instant::now() + f.probe_gap;
            f.probe_gap = (f.probe_gap * 2).min(PROBE_MAX_GAP);
        }
    }

    /// The API server let a probe list and watch `kind`: healthy unless its
    /// watch failed since the previous probe or its store awaits a list.
    fn probe_ok(&self, kind: Kind) {
        let mut s = self.lock();
        let clears = |f: &Failing| !f.relisting && f.last.elapsed() >= PROBE_EVERY;
        if s.failing.get(&kind).is_some_and(clears) {
            s.failing.remove(&kind);
        }
    }
}

/// What the discovery loop needs besides the client.
pub struct Discovery {
    /// This node's name.
    pub node: String,
    /// The cgroup2 mount (the registry resolves cgroup ids under it).
    pub cgroup_mount: PathBuf,
    /// Where kubelet's `kubepods` hierarchy lives (usually the mount).
    pub cgroup_root: PathBuf,
    /// Quiet time after a change before the registry is rebuilt, so a
    /// burst of events costs one rebuild.
    pub debounce: Duration,
    pub status: Arc<Status>,
    pub telemetry: Arc<dyn WatchTelemetry>,
}

/// The reflector stores of every watched kind.
#[derive(Clone)]
struct Stores {
    pods: Store<PodInfo>,
    namespaces: Store<Namespace>,
    services: Store<Service>,
    endpoint_slices: Store<EndpointSlice>,
    nodes: Store<Node>,
}

impl Stores {
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            pods: self.pods.state(),
            namespaces: self.namespaces.state(),
            services: self.services.state(),
            endpoint_slices: self.endpoint_slices.state(),
            nodes: self.nodes.state(),
        }
    }
}

impl Discovery {
    /// Watches until `shutdown` flips, calling `apply` with each new
    /// registry: the first once every kind has been listed, then after
    /// changes. While the API server is away nothing is applied, so the
    /// last registry stays in force.
    pub async fn run<F>(self, client: Client, mut apply: F, mut shutdown: watch::Receiver<bool>)
    where
        F: FnMut(Registry) + Send,
    {
        let changed = Arc::new(Notify::new());
        let (stores, tasks) = self.spawn_watches(&client, &changed);
        let mut retry = false;
        // Kept across wake-ups: a loop woken more often than PROBE_EVERY
        // (a local pod's cgroup looked for every second) must still probe.
        let mut next_probe = None;
        loop {
            let stale = self.status.stale_since().is_some();
            if !stale {
                next_probe = None;
            } else if next_probe.is_none() {
                next_probe = Some(tokio::time::Instant::now() + PROBE_EVERY);
            }
            tokio::select! {
                _ = changed.notified() => {}
                // Watches fail without changing anything: the loop must
                // wake to arm the probe, or it would stay stale after the
                // API server returns (a re-started watch reports nothing
                // until an object changes).
                _ = self.status.went_stale.notified(), if !stale => continue,
                _ = tokio::time::sleep(CGROUP_RETRY), if retry => {}
                _ = sleep_until(next_probe) => {
                    next_probe = None;
                    self.probe(&client).await;
                    continue;
                }
                _ = shutdown.changed() => break,
            }
            if !self.status.synced() {
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(self.debounce) => {}
                _ = shutdown.changed() => break,
            }
            retry = match self.rebuild_off_runtime(&stores).await {
                Ok((registry, waiting)) => {
                    apply(registry);
                    waiting
                }
                Err(()) => true,
            };
        }
        for t in tasks {
            t.abort();
        }
    }

    /// Lists one object of each failing kind whose probe is due and starts
    /// a watch of it (all at once, each bounded: kube-client sets no read
    /// timeout); a kind the API server serves both for, with no watch
    /// failure since the previous probe, is fresh again. Per kind, not the
    /// server's version: a server that answers but refuses one kind (RBAC)
    /// must leave discovery stale.
    async fn probe(&self, client: &Client) {
        let due = self.status.due();
        let probes = due.iter().map(|&kind| async move {
            let served = tokio::time::timeout(PROBE_TIMEOUT, probe_kind(client, kind));
            (kind, served.await)
        });
        for (kind, served) in futures_util::future::join_all(probes).await {
            match served {
                Ok(Ok(())) => self.status.probe_ok(kind),
                Ok(Err(kube::Error::Api(_))) => self.status.probe_failed(kind),
                // Unreachable or silent: an outage, probed again in 2 s.
                Ok(Err(_)) | Err(_) => {}
            }
        }
    }

    /// [`rebuild`] on a blocking thread: converting a large cluster's stores
    /// and looking up its local pods' cgroups takes milliseconds of CPU and
    /// file-system calls, which must not stall the runtime's workers (one,
    /// by default, on a two-core node).
    async fn rebuild_off_runtime(&self, stores: &Stores) -> Result<(Registry, bool), ()> {
        let (stores, node) = (stores.clone(), self.node.clone());
        let (root, mount) = (self.cgroup_root.clone(), self.cgroup_mount.clone());
        let job = move || rebuild(&stores, &node, &root, &mount);
        tokio::task::spawn_blocking(job).await.unwrap_or_else(|e| {
            tracing::error!(error = %e, "registry rebuild failed; keeping the last one");
            Err(())
        })
    }

    fn spawn_watches(
        &self,
        client: &Client,
        changed: &Arc<Notify>,
    ) -> (Stores, Vec<tokio::task::JoinHandle<()>>) {
        let mut tasks = Vec::new();
        let ctx = |kind| Ctx {
            kind,
            status: self.status.clone(),
            telemetry: self.telemetry.clone(),
            changed: changed.clone(),
        };
        let (pods, w) = reflector::store();
        tasks.push(tokio::spawn(watch_kind(
            Api::<k8s_openapi::api::core::v1::Pod>::all(client.clone()),
            w,
            PodInfo::from,
            ctx(Kind::Pod),
        )));
        let (namespaces, w) = reflector::store();
        tasks.push(tokio::spawn(watch_kind(
            Api::all(client.clone()),
            w,
            |mut o: Namespace| {
                strip::namespace(&mut o);
                o
            },
            ctx(Kind::Namespace),
        )));
        let (services, w) = reflector::store();
        tasks.push(tokio::spawn(watch_kind(
            Api::all(client.clone()),
            w,
            |mut o: Service| {
                strip::service(&mut o);
                o
            },
            ctx(Kind::Service),
        )));
        let (endpoint_slices, w) = reflector::store();
        tasks.push(tokio::spawn(watch_kind(
            Api::all(client.clone()),
            w,
            |mut o: EndpointSlice| {
                strip::endpoint_slice(&mut o);
                o
            },
            ctx(Kind::EndpointSlice),
        )));
        let (nodes, w) = reflector::store();
        tasks.push(tokio::spawn(watch_kind(
            Api::all(client.clone()),
            w,
            |mut o: Node| {
                strip::node(&mut o);
                o
            },
            ctx(Kind::Node),
        )));
        let stores = Stores {
            pods,
            namespaces,
            services,
            endpoint_slices,
            nodes,
        };
        (stores, tasks)
    }
}

/// Converts the stores into a registry for `node`; also says whether a
/// local pod is still waiting for its cgroup (look again soon).
fn rebuild(
    stores: &Stores,
    node: &str,
    cgroup_root: &Path,
    cgroup_mount: &Path,
) -> Result<(Registry, bool), ()> {
    let snapshot = stores.snapshot();
    let finder = convert::cgroup_finder(cgroup_root);
    let Converted {
        file,
        skipped,
        waiting_for_cgroup,
    } = convert(&snapshot, node, &finder);
    for why in &skipped {
        tracing::debug!(reason = %why, "object left out of the registry");
    }
    match Registry::build(Path::new(SOURCE), file, node, cgroup_mount) {
        Ok(registry) => Ok((registry, waiting_for_cgroup > 0)),
        Err(e) => {
            // A cgroup can vanish between finding and reading it (a pod
            // stopping): try again shortly with fresh state.
            tracing::warn!(error = %e, "registry from the API server rejected; keeping the last one");
            Err(())
        }
    }
}

/// Sleeps until `at`; never wakes without one.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What one watch reports to.
struct Ctx {
    kind: Kind,
    status: Arc<Status>,
    telemetry: Arc<dyn WatchTelemetry>,
    changed: Arc<Notify>,
}

/// Watches one kind into its store for ever: the watcher re-lists after
/// `410 Gone` and re-connects after cuts, with kube-rs' default backoff.
/// `keep` turns each object into what the store keeps (see [`strip`]:
/// 10 000 full pods would otherwise cost hundreds of MB).
async fn watch_kind<K, T>(
    api: Api<K>,
    writer: reflector::store::Writer<T>,
    keep: fn(K) -> T,
    ctx: Ctx,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    T: reflector::Lookup + Clone + Send + Sync + 'static,
    T::DynamicType: Default + Eq + Hash + Clone,
{
    let config = watcher::Config::default().page_size(PAGE_SIZE);
    let events = watcher::watcher(api, config)
        .map_ok(move |event| map_event(event, keep))
        .default_backoff();
    let stream = reflector::reflector(writer, events);
    pin_mut!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::InitDone) => {
                ctx.status.listed(ctx.kind);
                ctx.changed.notify_one();
            }
            Ok(Event::Apply(_) | Event::Delete(_)) => {
                ctx.status.healthy(ctx.kind);
                ctx.changed.notify_one();
            }
            // A (re-)list has started, not ended: the store is still the
            // old state (and a list that fails comes straight back here).
            Ok(Event::Init) => ctx.status.relisting(ctx.kind),
            Ok(Event::InitApply(_)) => {}
            Err(e) => {
                tracing::warn!(kind = ctx.kind.as_str(), error = %e, "Kubernetes watch failed; retrying with backoff");
                ctx.telemetry.watch_error(ctx.kind);
                ctx.status.failed(ctx.kind);
                if relists(&e) {
                    // Its next `Init` may be a whole backoff away: a probe
                    // in between must not call the old store fresh.
                    ctx.status.relisting(ctx.kind);
                }
            }
        }
    }
}

/// Lists at most one object of `kind` and starts a watch from there (then
/// drops it): both permissions a watcher needs, and the server serving
/// both (RBAC can grant `list` without `watch`).
async fn probe_kind(client: &Client, kind: Kind) -> Result<(), kube::Error> {
    let c = client.clone();
    match kind {
        Kind::Pod => list_and_watch(Api::<k8s_openapi::api::core::v1::Pod>::all(c)).await,
        Kind::Namespace => list_and_watch(Api::<Namespace>::all(c)).await,
        Kind::Service => list_and_watch(Api::<Service>::all(c)).await,
        Kind::EndpointSlice => list_and_watch(Api::<EndpointSlice>::all(c)).await,
        Kind::Node => list_and_watch(Api::<Node>::all(c)).await,
    }
}

async fn list_and_watch<K>(api: Api<K>) -> Result<(), kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let one = kube::api::ListParams::default().limit(1);
    let list = api.list(&one).await?;
    let version = list.metadata.resource_version.unwrap_or_default();
    // The response's status arrives before any event: a refusal shows here.
    let watch = kube::api::WatchParams::default().timeout(1);
    drop(api.watch(&watch, &version).await?);
    Ok(())
}

/// Whether the watcher answers `e` by listing the kind again (kube-runtime
/// goes back to its empty state): `410 Gone`, and a failed list.
fn relists(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::WatchError(status) => status.code == 410,
        watcher::Error::InitialListFailed(_) | watcher::Error::NoResourceVersion => true,
        watcher::Error::WatchStartFailed(_) | watcher::Error::WatchFailed(_) => false,
    }
}

/// `event` with its object(s) turned into what the store keeps.
fn map_event<K, T>(event: Event<K>, keep: fn(K) -> T) -> Event<T> {
    match event {
        Event::Apply(o) => Event::Apply(keep(o)),
        Event::Delete(o) => Event::Delete(keep(o)),
        Event::Init => Event::Init,
        Event::InitApply(o) => Event::InitApply(keep(o)),
        Event::InitDone => Event::InitDone,
    }
}
