//! Kernel redirection: load and attach nodeward's BPF programs and read what
//! they record.
//!
//! [`Redirector::attach`] loads the embedded object, fills the config and
//! mesh-CIDR maps, and attaches `connect4`, `connect6`, `sock_ops` and the
//! inbound `cgroup_skb` filter (strict mTLS) to the pods' cgroup. Dropping
//! the [`Redirector`] detaches them, so a stopped proxy leaves pods
//! connecting directly. With a pin directory (`bpf.pinDir`), links and maps
//! are also pinned under bpffs, so a successor can [`Redirector::adopt`]
//! them without redirection ever stopping; the predecessor then
//! [`Redirector::hand_over`]s instead of detaching.
//!
//! The sockmap fast path (`sockmap.enabled`, off by default): `nw_splice_ops`
//! (sock_ops, on the pod cgroup and on the proxy's own cgroup) puts both
//! sockets of every pod ⇄ proxy connection into a sockhash, and
//! `nw_splice_msg` (sk_msg, attached to that sockhash) hands each send
//! straight to the peer socket's receive queue. A kernel that cannot load or
//! attach them gets the normal path, with one log line.
//!
//! Owns: the embedded BPF object (built by `build.rs` from `ebpf/programs`),
//! its programs, links, pins and maps. Must not know: the config file,
//! policies, workloads, identities or metrics libraries; it is handed
//! cgroup paths, addresses and modes, and hands back raw records and
//! counters ([`KernelStats`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
};

use aya::{
    maps::{lpm_trie::Key, HashMap, Map, MapData, MapError, PerCpuArray, SockHash},
    programs::{
        links::FdLink, sk_msg::SkMsgLink, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType,
        CgroupSockAddr, ProgramError, SkMsg, SockOps,
    },
    Ebpf, EbpfError,
};
use ipnet::IpNet;
use nodeward_common::{
    inbound, maps, programs, stat, Addr, FlowKey, LpmAddr, OrigDst, RedirectConfig,
};

mod netns;
mod pin;
pub mod probe;

pub use netns::{learn as learn_netns_cookie, CookieSource};
pub use pin::check_bpffs;

/// The kernel programs, built by `build.rs` and embedded in the binary.
static BPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/nodeward-ebpf.o"));

/// On kernels ≥ 5.7 aya attaches through bpf_link, which is always
/// multi-attach (other cgroup BPF users such as a CNI keep working) and
/// rejects explicit attach flags with EINVAL, so "Single" is the right mode.
const ATTACH_MODE: CgroupAttachMode = CgroupAttachMode::Single;

/// Errors loading, attaching or talking to the kernel programs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedirectError {
    #[error("loading the BPF object: {0}")]
    Load(#[from] EbpfError),
    #[error("BPF program {name}: {source} (it needs {needs})", needs = probe::requirement(name))]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("BPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("BPF object has no {0}")]
    Missing(&'static str),
    #[error("BPF link of {name}: {message}")]
    Link { name: &'static str, message: String },
    #[error("pinning under {path}: {message}")]
    Pin { path: PathBuf, message: String },
    #[error("opening cgroup {path}: {source}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the proxy's network namespace cookie: {0}")]
    NetnsCookie(#[source] std::io::Error),
}

/// What to redirect and where.
#[derive(Debug, Clone)]
pub struct Settings {
    /// cgroup v2 directory the node's pods live below.
    pub pod_cgroup: PathBuf,
    /// The cgroup2 mount, to find this process's own cgroup.
    pub cgroup_mount: PathBuf,
    pub mesh_cidrs: Vec<IpNet>,
    pub proxy_ipv4: Ipv4Addr,
    pub proxy_ipv6: Option<Ipv6Addr>,
    pub outbound_port: u16,
    /// What the inbound program does with connections that bypass the proxy.
    pub mtls: InboundMode,
    /// bpffs directory to pin links and maps under (takeover on upgrade);
    /// `None`: the programs live and die with this process.
    pub pin_dir: Option<PathBuf>,
    /// Try the sockmap fast path for the pod ⇄ proxy hop.
    pub sockmap: bool,
}

/// What the inbound program does with a connection that reaches a pod
/// without passing through its node proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundMode {
    /// Drop it (only the proxy may reach meshed pods).
    Strict,
    /// Let it in, and count it.
    Permissive,
}

/// Attached programs. Dropping this detaches them, unless they are pinned
/// and were handed over to a successor ([`Redirector::hand_over`]).
pub struct Redirector {
    /// The loaded object, when this process loaded it (not when adopted).
    _ebpf: Option<Ebpf>,
    links: Vec<FdLink>,
    /// The sk_msg program's attachment to the sockhash, when this process
    /// made it. It is not a bpf_link: it lives as long as the sockhash.
    splice_msg: Option<SkMsgLink>,
    pins: Option<pin::Pins>,
}

/// What [`attach_splice`] attached: the sk_msg attachment and the sock_ops
/// links, with their pin names.
struct Splice {
    msg: SkMsgLink,
    ops: Vec<(&'static str, FdLink)>,
}

/// The proxy's handle on the flow records (single owner: the accept loop).
pub struct FlowTable {
    flows: HashMap<MapData, FlowKey, OrigDst>,
}

/// Per-pod inbound mode overrides (PeerAuthentication), owned by the task
/// that keeps them in line with the policy set and the workloads.
pub struct InboundModes {
    map: HashMap<MapData, LpmAddr, u32>,
    current: BTreeMap<IpAddr, InboundMode>,
}

/// The enrolled pods' cgroup ids the programs redirect for, owned by the
/// task that keeps them in line with the workloads.
pub struct PodCgroups {
    map: HashMap<MapData, u64, u32>,
    current: BTreeSet<u64>,
}

/// Read-only views of the kernel state, for metrics and tests.
pub struct KernelStats {
    stats: PerCpuArray<MapData, u64>,
    flows: HashMap<MapData, FlowKey, OrigDst>,
    by_cookie: HashMap<MapData, u64, OrigDst>,
    /// The sockhash, when the fast path is on.
    splice: Option<SockHash<MapData, FlowKey>>,
}

/// Counters and map occupancy read from the kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelCounters {
    pub redirected4: u64,
    pub redirected6: u64,
    pub skipped_proxy: u64,
    /// Mesh-bound connects from cgroups below no enrolled pod.
    pub skipped_unenrolled: u64,
    pub record_failed: u64,
    pub flows_recorded: u64,
    pub flows_closed: u64,
    pub flow_entries: u64,
    pub cookie_entries: u64,
    pub inbound_dropped: u64,
    pub inbound_allowed: u64,
    /// Whether the sockmap fast path is attached.
    pub sockmap_enabled: bool,
    /// Sockets put into the sockhash (both ends of each spliced connection).
    pub spliced: u64,
    /// Spliced sockets that fell back to the normal path.
    pub splice_fallbacks: u64,
    pub splice_entries: u64,
}

/// What attaching (or adopting) hands the proxy's tasks.
pub struct Attached {
    /// Keeps the programs attached (detaches on drop unless handed over).
    pub redirector: Redirector,
    /// The flow records, for the accept loop.
    pub flows: FlowTable,
    /// Counters and map sizes, for metrics.
    pub stats: KernelStats,
    /// How the proxy's network namespace cookie was found.
    pub netns_cookie: CookieSource,
    /// Enrolled pods' inbound modes, for the task that keeps them current.
    pub modes: InboundModes,
    /// Enrolled pods' cgroups, for the same task.
    pub pods: PodCgroups,
}

impl Redirector {
    /// Loads the programs, fills their maps and attaches them to
    /// `settings.pod_cgroup`; with a pin directory, links and maps are also
    /// pinned there so a successor can adopt them.
    pub fn attach(settings: &Settings) -> Result<Attached, RedirectError> {
        let mut ebpf = load_object()?;
        if cfg!(debug_assertions) {
            start_bpf_logger(&mut ebpf);
        }
        let (cookie, cookie_source) = netns::proxy_cookie(Some(&mut ebpf), &settings.cgroup_mount)?;
        let cgroup = File::open(&settings.pod_cgroup).map_err(|source| RedirectError::Cgroup {
            path: settings.pod_cgroup.clone(),
            source,
        })?;
        let mut links = attach_programs(&mut ebpf, &cgroup)?;
        let splice = if settings.sockmap {
            attach_splice(&mut ebpf, &cgroup, settings)
                .map_err(|e| {
                    tracing::info!(error = %e, "sockmap fast path off: the kernel cannot load or attach it");
                })
                .ok()
        } else {
            None
        };
        let mut maps = pin::MapSet::take(&mut ebpf, splice.is_some())?;
        maps.configure(settings, cookie)?;
        let (splice_msg, splice_ops) = match splice {
            Some(Splice { msg, ops }) => (Some(msg), ops),
            None => (None, Vec::new()),
        };
        let (links, pins) = match &settings.pin_dir {
            Some(dir) => (
                Vec::new(),
                Some(pin::Pins::create(dir, links, splice_ops, &maps)?),
            ),
            None => {
                links.extend(splice_ops.into_iter().map(|(_, link)| link));
                (links, None)
            }
        };
        let redirector = Self {
            _ebpf: Some(ebpf),
            links,
            splice_msg,
            pins,
        };
        maps.into_handles(redirector, cookie_source)
    }

    /// Takes over the programs another nodeward pinned under
    /// `settings.pin_dir`: they stay attached throughout, so redirection
    /// never stops; this process only opens their maps and rewrites the
    /// config (its own addresses and CIDRs).
    pub fn adopt(settings: &Settings) -> Result<Attached, RedirectError> {
        let dir = settings
            .pin_dir
            .as_deref()
            .ok_or(RedirectError::Missing("bpf.pinDir"))?;
        let pins = pin::Pins::open(dir, settings.sockmap)?;
        if settings.sockmap && !pins.spliced() {
            tracing::info!("sockmap fast path off: the nodeward taken over ran without it (a fresh start turns it on)");
        }
        let (cookie, cookie_source) = netns::proxy_cookie(None, &settings.cgroup_mount)?;
        let mut maps = pin::MapSet::open(dir, pins.spliced())?;
        maps.configure(settings, cookie)?;
        let redirector = Self {
            _ebpf: None,
            links: Vec::new(),
            splice_msg: None,
            pins: Some(pins),
        };
        maps.into_handles(redirector, cookie_source)
    }

    /// Whether pinned programs from an earlier run are at `dir`.
    pub fn pinned_at(dir: &Path) -> bool {
        pin::Pins::exist(dir)
    }

    /// Removes pins an earlier, dead instance left at `dir`, detaching its
    /// programs, so this run starts clean.
    pub fn remove_stale(dir: &Path) -> Result<(), RedirectError> {
        pin::Pins::open(dir, true)?.remove();
        Ok(())
    }

    /// Leaves the pinned programs attached when this process exits: a
    /// successor has adopted them.
    pub fn hand_over(mut self) {
        if let Some(pins) = self.pins.take() {
            pins.keep();
        }
        if let Some(msg) = self.splice_msg.take() {
            // Dropping it would detach the sk_msg program from the pinned
            // sockhash the successor now uses; the attachment ends when
            // the sockhash's last pin and descriptor are gone.
            std::mem::forget(msg);
        }
    }
}

impl Drop for Redirector {
    fn drop(&mut self) {
        // Unpinning removes the last reference the filesystem holds; our
        // descriptors close right after, and the kernel detaches.
        if let Some(pins) = self.pins.take() {
            pins.remove();
        }
        self.links.clear();
        // Detaches sk_msg from the sockhash: nothing new is spliced. Sockets
        // already spliced keep their own reference to it until they close.
        self.splice_msg.take();
    }
}

/// Loads and attaches every program; the links are returned, not left in
/// the object, so they can be pinned.
fn attach_programs(ebpf: &mut Ebpf, cgroup: &File) -> Result<Vec<FdLink>, RedirectError> {
    let mut links = Vec::new();
    for name in [programs::CONNECT4, programs::CONNECT6] {
        let prog: &mut CgroupSockAddr = program(ebpf, name)?;
        let err = |source| RedirectError::Program { name, source };
        prog.load().map_err(err)?;
        let id = prog.attach(cgroup, ATTACH_MODE).map_err(err)?;
        links.push(fd_link(name, prog.take_link(id).map_err(err)?)?);
    }
    let name = programs::SOCK_OPS;
    let prog: &mut SockOps = program(ebpf, name)?;
    let err = |source| RedirectError::Program { name, source };
    prog.load().map_err(err)?;
    let id = prog.attach(cgroup, ATTACH_MODE).map_err(err)?;
    links.push(fd_link(name, prog.take_link(id).map_err(err)?)?);
    let name = programs::INBOUND;
    let prog: &mut CgroupSkb = program(ebpf, name)?;
    let err = |source| RedirectError::Program { name, source };
    prog.load().map_err(err)?;
    let id = prog
        .attach(cgroup, CgroupSkbAttachType::Ingress, ATTACH_MODE)
        .map_err(err)?;
    links.push(fd_link(name, prog.take_link(id).map_err(err)?)?);
    Ok(links)
}

/// Attaches the fast path: `nw_splice_msg` to the sockhash first (sockets
/// take the sk_msg program in force when they enter the map), then
/// `nw_splice_ops` to the pod cgroup and to this process's own cgroup,
/// where the proxy's accepted sockets live (skipped when that is already
/// below the pod cgroup). Dropping what is returned undoes it all.
fn attach_splice(
    ebpf: &mut Ebpf,
    pod_cgroup: &File,
    settings: &Settings,
) -> Result<Splice, RedirectError> {
    let pod_cgroup_path = &settings.pod_cgroup;
    let msg = attach_splice_msg(ebpf)?;
    let own = own_cgroup(&settings.cgroup_mount)?;
    let name = programs::SPLICE_OPS;
    let prog: &mut SockOps = program(ebpf, name)?;
    let err = |source| RedirectError::Program { name, source };
    prog.load().map_err(err)?;
    let id = prog.attach(pod_cgroup, ATTACH_MODE).map_err(err)?;
    let mut ops = vec![(
        pin::SPLICE_PODS,
        fd_link(name, prog.take_link(id).map_err(err)?)?,
    )];
    if !own.starts_with(pod_cgroup_path) {
        let file = File::open(&own).map_err(|source| RedirectError::Cgroup {
            path: own.clone(),
            source,
        })?;
        let id = prog.attach(&file, ATTACH_MODE).map_err(err)?;
        ops.push((
            pin::SPLICE_PROXY,
            fd_link(name, prog.take_link(id).map_err(err)?)?,
        ));
    }
    Ok(Splice { msg, ops })
}

/// Loads the fast path's sk_msg program and attaches it to the sockhash;
/// dropping the link detaches it.
pub(crate) fn attach_splice_msg(ebpf: &mut Ebpf) -> Result<SkMsgLink, RedirectError> {
    let name = maps::SPLICE;
    let map = ebpf.map(name).ok_or(RedirectError::Missing(name))?;
    let hash: SockHash<&MapData, FlowKey> =
        SockHash::try_from(map).map_err(|source| RedirectError::Map { name, source })?;
    let map_fd = hash.fd().try_clone().map_err(|e| RedirectError::Link {
        name,
        message: e.to_string(),
    })?;
    let name = programs::SPLICE_MSG;
    let prog: &mut SkMsg = program(ebpf, name)?;
    let err = |source| RedirectError::Program { name, source };
    prog.load().map_err(err)?;
    let id = prog.attach(&map_fd).map_err(err)?;
    prog.take_link(id).map_err(err)
}

/// This process's cgroup v2 directory (from `/proc/self/cgroup`).
fn own_cgroup(mount: &Path) -> Result<PathBuf, RedirectError> {
    let proc = Path::new("/proc/self/cgroup");
    let bad = |source: std::io::Error| RedirectError::Cgroup {
        path: proc.to_owned(),
        source,
    };
    let text = std::fs::read_to_string(proc).map_err(bad)?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| bad(std::io::Error::other("no cgroup v2 entry")))?;
    Ok(mount.join(rel.trim_start_matches('/')))
}

/// A program's link as a plain bpf_link (what can be pinned).
fn fd_link<L>(name: &'static str, link: L) -> Result<FdLink, RedirectError>
where
    FdLink: TryFrom<L, Error = aya::programs::links::LinkError>,
{
    FdLink::try_from(link).map_err(|e| RedirectError::Link {
        name,
        message: e.to_string(),
    })
}

impl FlowTable {
    /// Takes the kernel's record for an accepted connection (`peer` = the
    /// pod's address, `local` = the proxy address it was redirected to).
    pub fn take(&mut self, peer: SocketAddr, local: SocketAddr) -> Option<OrigDst> {
        let key = flow_key(peer, local);
        let value = self.flows.get(&key, 0).ok()?;
        // The kernel also removes it when the pod's socket closes; whichever
        // runs second finds nothing, which is fine.
        let _ = self.flows.remove(&key);
        Some(value)
    }
}

impl PodCgroups {
    /// Starts from what the map holds (an adopted map keeps the
    /// predecessor's pods until the first [`PodCgroups::set`]).
    fn new(map: HashMap<MapData, u64, u32>) -> Self {
        let current = map.keys().filter_map(Result::ok).collect();
        Self { map, current }
    }

    /// Makes the kernel's set of enrolled pod cgroups exactly `wanted`.
    /// Returns whether anything changed.
    pub fn set(&mut self, wanted: BTreeSet<u64>) -> bool {
        if wanted == self.current {
            return false;
        }
        for id in self.current.difference(&wanted) {
            let _ = self.map.remove(id);
        }
        let mut applied = BTreeSet::new();
        for id in wanted {
            match self.map.insert(id, 1, 0) {
                Ok(()) => {
                    applied.insert(id);
                }
                // Left out of `current`, so the next sync tries again.
                Err(e) => tracing::error!(cgroup = id, error = %e, "enrolling a pod's cgroup"),
            }
        }
        self.current = applied;
        true
    }

    /// The cgroup ids the kernel holds now.
    pub fn current(&self) -> &BTreeSet<u64> {
        &self.current
    }
}

impl InboundModes {
    /// Starts from what the map holds (an adopted map keeps the
    /// predecessor's entries until the first [`InboundModes::set`]).
    fn new(map: HashMap<MapData, LpmAddr, u32>) -> Self {
        let current = map
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(k, v)| Some((addr_from_key(k), mode_from_value(v)?)))
            .collect();
        Self { map, current }
    }

    /// Makes the kernel's overrides exactly `wanted` (pod IP → mode); pods
    /// not listed use the configured mode. Returns whether anything changed.
    pub fn set(&mut self, wanted: BTreeMap<IpAddr, InboundMode>) -> bool {
        if wanted == self.current {
            return false;
        }
        for ip in self.current.keys().filter(|ip| !wanted.contains_key(ip)) {
            let _ = self.map.remove(&addr_key(*ip));
        }
        let mut applied = BTreeMap::new();
        for (ip, mode) in wanted {
            match self.map.insert(addr_key(ip), mode_value(mode), 0) {
                Ok(()) => {
                    applied.insert(ip, mode);
                }
                // Left out of `current`, so the next sync tries again.
                Err(e) => tracing::error!(%ip, error = %e, "setting a pod's inbound mode"),
            }
        }
        self.current = applied;
        true
    }
}

/// A pod address as the inbound program looks it up (IPv4 mapped).
fn addr_key(ip: IpAddr) -> LpmAddr {
    match ip.to_canonical() {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

fn addr_from_key(key: LpmAddr) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(key)).to_canonical()
}

fn mode_from_value(v: u32) -> Option<InboundMode> {
    match v {
        inbound::STRICT => Some(InboundMode::Strict),
        inbound::PERMISSIVE => Some(InboundMode::Permissive),
        _ => None,
    }
}

fn mode_value(mode: InboundMode) -> u32 {
    match mode {
        InboundMode::Strict => inbound::STRICT,
        InboundMode::Permissive => inbound::PERMISSIVE,
    }
}

impl KernelStats {
    fn open(
        stats: PerCpuArray<MapData, u64>,
        by_cookie: HashMap<MapData, u64, OrigDst>,
        flows_fd: std::os::fd::OwnedFd,
        splice: Option<SockHash<MapData, FlowKey>>,
    ) -> Result<Self, RedirectError> {
        // A second descriptor for the flow map, so the accept loop keeps sole
        // ownership of the one it mutates.
        let second = MapData::from_fd(flows_fd).map_err(|source| RedirectError::Map {
            name: maps::FLOWS,
            source,
        })?;
        let flows = hash_map(Map::LruHashMap(second), maps::FLOWS)?;
        Ok(Self {
            stats,
            flows,
            by_cookie,
            splice,
        })
    }

    /// Reads the counters (summed over CPUs) and counts live map entries.
    pub fn read(&self) -> KernelCounters {
        let sum = |i: u32| {
            self.stats
                .get(&i, 0)
                .map(|v| v.iter().sum::<u64>())
                .unwrap_or(0)
        };
        KernelCounters {
            redirected4: sum(stat::REDIRECTED4),
            redirected6: sum(stat::REDIRECTED6),
            skipped_proxy: sum(stat::SKIPPED_PROXY),
            skipped_unenrolled: sum(stat::SKIPPED_UNENROLLED),
            record_failed: sum(stat::RECORD_FAILED),
            flows_recorded: sum(stat::FLOW_RECORDED),
            flows_closed: sum(stat::FLOW_CLOSED),
            flow_entries: self.flows.keys().count() as u64,
            cookie_entries: self.by_cookie.keys().count() as u64,
            inbound_dropped: sum(stat::INBOUND_DROPPED),
            inbound_allowed: sum(stat::INBOUND_ALLOWED),
            sockmap_enabled: self.splice.is_some(),
            spliced: sum(stat::SPLICED),
            splice_fallbacks: sum(stat::SPLICE_FALLBACK),
            splice_entries: self.splice.as_ref().map_or(0, |m| m.keys().count() as u64),
        }
    }
}

impl std::fmt::Debug for KernelStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelStats").finish_non_exhaustive()
    }
}

/// The original destination as a socket address.
pub fn orig_dst_addr(o: &OrigDst) -> SocketAddr {
    SocketAddr::new(words_to_ip(o.addr), o.port)
}

/// The key the kernel used for this connection (pod's view: src = pod).
pub fn flow_key(peer: SocketAddr, local: SocketAddr) -> FlowKey {
    FlowKey {
        src_addr: ip_to_words(peer.ip()),
        dst_addr: ip_to_words(local.ip()),
        src_port: peer.port(),
        dst_port: local.port(),
    }
}

/// Network-order words, IPv4 as `::ffff:a.b.c.d`, as the kernel programs store them.
pub fn ip_to_words(ip: IpAddr) -> Addr {
    let v6 = match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    };
    let o = v6.octets();
    std::array::from_fn(|i| {
        u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
    })
}

/// Inverse of [`ip_to_words`]; v4-mapped addresses come back as IPv4.
pub fn words_to_ip(words: Addr) -> IpAddr {
    let mut o = [0u8; 16];
    for (i, w) in words.iter().enumerate() {
        o[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
    }
    IpAddr::V6(Ipv6Addr::from(o)).to_canonical()
}

/// LPM trie key of a CIDR (IPv4 as its mapped /96 + prefix).
pub fn cidr_key(net: &IpNet) -> Key<LpmAddr> {
    let (bytes, prefix) = match net {
        IpNet::V4(n) => (
            n.network().to_ipv6_mapped().octets(),
            96 + u32::from(n.prefix_len()),
        ),
        IpNet::V6(n) => (n.network().octets(), u32::from(n.prefix_len())),
    };
    Key::new(prefix, bytes)
}

/// Loads the embedded object without relocating it against the kernel's
/// BTF: the programs use no CO-RE relocation (they read only the stable
/// context structs of their program types), and parsing the kernel's BTF
/// (6 MB on 6.18, twice in `Ebpf::load`) cost the proxy about 16 MB of
/// heap that glibc kept after it was freed. `EbpfLoader::new` still parses
/// it once; [`give_back_freed_heap`] returns that memory to the kernel.
pub(crate) fn load_object() -> Result<Ebpf, EbpfError> {
    let loaded = aya::EbpfLoader::new().btf(None).load(BPF_OBJECT);
    give_back_freed_heap();
    loaded
}

/// Returns the heap freed after loading (glibc keeps freed memory mapped
/// below live allocations otherwise).
fn give_back_freed_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks and trims glibc's own free lists; it
    // takes no pointer and is thread-safe.
    #[expect(unsafe_code, reason = "libc::malloc_trim has no safe wrapper")]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The config record the programs read, for this process.
fn config_value(s: &Settings, netns_cookie: u64) -> RedirectConfig {
    RedirectConfig {
        proxy_addr4: ip_to_words(IpAddr::V4(s.proxy_ipv4))[3],
        proxy_port: s.outbound_port,
        has_addr6: u8::from(s.proxy_ipv6.is_some()),
        log: u8::from(cfg!(debug_assertions)),
        proxy_addr6: s
            .proxy_ipv6
            .map(|a| ip_to_words(IpAddr::V6(a)))
            .unwrap_or_default(),
        proxy_netns_cookie: netns_cookie,
        inbound_mode: mode_value(s.mtls),
        _pad: 0,
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, RedirectError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let prog = ebpf.program_mut(name).ok_or(RedirectError::Missing(name))?;
    prog.try_into()
        .map_err(|source| RedirectError::Program { name, source })
}

/// A second descriptor for a hash map: a `dup` of its own. Reopening it by
/// id (`BPF_MAP_GET_FD_BY_ID`) would need `CAP_SYS_ADMIN`, which the
/// DaemonSet does not grant (deploy/30-daemonset.yaml).
fn dup_map_fd(map: &Map, name: &'static str) -> Result<std::os::fd::OwnedFd, RedirectError> {
    use std::os::fd::AsFd;
    match map {
        Map::HashMap(data) | Map::LruHashMap(data) => data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| RedirectError::Map {
                name,
                source: aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                    call: "dup",
                    io_error: e,
                }),
            }),
        _ => Err(RedirectError::Missing(name)),
    }
}

fn hash_map<K: aya::Pod, V: aya::Pod>(
    map: Map,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>, RedirectError> {
    HashMap::try_from(map).map_err(|source| RedirectError::Map { name, source })
}

/// Forwards the programs' aya-log records to `log` (and so to tracing).
fn start_bpf_logger(ebpf: &mut Ebpf) {
    let logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(l) => l,
        Err(e) => {
            tracing::debug!(error = %e, "BPF logging unavailable");
            return;
        }
    };
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    // Debug builds only: a short poll keeps this free of unsafe fd registration.
    let mut logger = logger;
    handle.spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
        loop {
            tick.tick().await;
            logger.flush();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_and_v4_is_mapped() {
        let v4: IpAddr = "10.20.1.7".parse().expect("ip");
        let w = ip_to_words(v4);
        assert_eq!(w[0..2], [0, 0]);
        assert_eq!(w[2], nodeward_common::V4_MAPPED_WORD);
        assert_eq!(w[3].to_ne_bytes(), [10, 20, 1, 7]);
        assert_eq!(words_to_ip(w), v4);
        let v6: IpAddr = "fd00:20:1::9".parse().expect("ip");
        assert_eq!(words_to_ip(ip_to_words(v6)), v6);
    }

    #[test]
    fn flow_key_of_v4_mapped_peer_equals_plain_v4() {
        let local: SocketAddr = "10.20.1.1:15001".parse().expect("addr");
        let a = flow_key("10.20.1.10:40000".parse().expect("addr"), local);
        let b = flow_key("[::ffff:10.20.1.10]:40000".parse().expect("addr"), local);
        assert_eq!(a, b);
    }

    #[test]
    fn cidr_keys_put_v4_under_the_mapped_prefix() {
        let k = cidr_key(&"10.20.0.0/16".parse().expect("net"));
        assert_eq!({ k.prefix_len() }, 112);
        assert_eq!(&k.data()[10..14], &[0xff, 0xff, 10, 20]);
        let k = cidr_key(&"fd00::/8".parse().expect("net"));
        assert_eq!({ k.prefix_len() }, 8);
    }
}
