//! Pinning under bpffs, so the programs outlive the process that loaded
//! them and a successor can adopt them (takeover on upgrade).
//!
//! Layout: `<dir>/links/<program>` and `<dir>/maps/<MAP>`. A link stays
//! attached while its pin exists (or any process holds it); removing the
//! pins and closing our descriptors detaches.
//!
//! The sockmap fast path adds `links/nw_splice_ops` (pod cgroup),
//! `links/nw_splice_ops_proxy` (the proxy's cgroup, when outside it) and
//! `maps/NW_SPLICE{,_OFF}`. The sk_msg program is attached to the sockhash
//! itself, so the map's pin keeps it attached. Missing splice pins mean the
//! instance ran without the fast path.

use std::{
    fs,
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, SockHash},
    programs::links::{FdLink, PinnedLink},
    Ebpf,
};
use nodeward_common::{maps, programs, LpmAddr, RedirectConfig};

use super::{
    cidr_key, config_value, hash_map, FlowTable, InboundModes, KernelStats, PodCgroups,
    RedirectError, Redirector, Settings,
};

/// The programs, in the order [`super::attach_programs`] returns their links.
const PROGRAMS: [&str; 4] = [
    programs::CONNECT4,
    programs::CONNECT6,
    programs::SOCK_OPS,
    programs::INBOUND,
];

/// Pin name of the fast path's sock_ops link on the pod cgroup.
pub(super) const SPLICE_PODS: &str = programs::SPLICE_OPS;
/// Pin name of the same program's link on the proxy's own cgroup.
pub(super) const SPLICE_PROXY: &str = "nw_splice_ops_proxy";

/// Every map name that may be pinned, for removal.
const ALL_MAPS: [&str; 9] = [
    maps::CONFIG,
    maps::MESH_CIDRS,
    maps::BY_COOKIE,
    maps::FLOWS,
    maps::STATS,
    maps::INBOUND_MODES,
    maps::PODS,
    maps::SPLICE,
    maps::SPLICE_OFF,
];

/// `statfs` type of a BPF filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Every map the proxy talks to, from a loaded object or from pins.
pub(super) struct MapSet {
    config: Map,
    cidrs: Map,
    by_cookie: Map,
    flows: Map,
    stats: Map,
    modes: Map,
    pods: Map,
    /// The sockhash and the fallback marks, when the fast path is on.
    splice: Option<(Map, Map)>,
}

/// Pinned links (and the maps beside them) of one node proxy.
pub(super) struct Pins {
    dir: PathBuf,
    links: Vec<PinnedLink>,
    /// Whether the fast path's links are among them.
    spliced: bool,
}

impl MapSet {
    /// Takes the maps out of a freshly loaded object (the fast path's only
    /// when it is attached).
    pub(super) fn take(ebpf: &mut Ebpf, splice: bool) -> Result<Self, RedirectError> {
        let mut take = |name| ebpf.take_map(name).ok_or(RedirectError::Missing(name));
        Ok(Self {
            config: take(maps::CONFIG)?,
            cidrs: take(maps::MESH_CIDRS)?,
            by_cookie: take(maps::BY_COOKIE)?,
            flows: take(maps::FLOWS)?,
            stats: take(maps::STATS)?,
            modes: take(maps::INBOUND_MODES)?,
            pods: take(maps::PODS)?,
            splice: if splice {
                Some((take(maps::SPLICE)?, take(maps::SPLICE_OFF)?))
            } else {
                None
            },
        })
    }

    /// Opens the maps a predecessor pinned under `dir` (the fast path's
    /// when `splice`).
    pub(super) fn open(dir: &Path, splice: bool) -> Result<Self, RedirectError> {
        let open = |name: &'static str| {
            MapData::from_pin(dir.join("maps").join(name))
                .map_err(|source| RedirectError::Map { name, source })
        };
        Ok(Self {
            config: Map::Array(open(maps::CONFIG)?),
            cidrs: Map::LpmTrie(open(maps::MESH_CIDRS)?),
            by_cookie: Map::LruHashMap(open(maps::BY_COOKIE)?),
            flows: Map::LruHashMap(open(maps::FLOWS)?),
            stats: Map::PerCpuArray(open(maps::STATS)?),
            modes: Map::HashMap(open(maps::INBOUND_MODES)?),
            pods: Map::HashMap(open(maps::PODS)?),
            splice: if splice {
                Some((
                    Map::SockHash(open(maps::SPLICE)?),
                    Map::LruHashMap(open(maps::SPLICE_OFF)?),
                ))
            } else {
                None
            },
        })
    }

    /// Writes this process's addresses, ports and mesh CIDRs.
    pub(super) fn configure(
        &mut self,
        s: &Settings,
        netns_cookie: u64,
    ) -> Result<(), RedirectError> {
        let name = maps::CONFIG;
        let mut config: Array<_, RedirectConfig> = Array::try_from(&mut self.config)
            .map_err(|source| RedirectError::Map { name, source })?;
        config
            .set(0, config_value(s, netns_cookie), 0)
            .map_err(|source| RedirectError::Map { name, source })?;
        let name = maps::MESH_CIDRS;
        let mut trie: LpmTrie<_, LpmAddr, u8> = LpmTrie::try_from(&mut self.cidrs)
            .map_err(|source| RedirectError::Map { name, source })?;
        for net in &s.mesh_cidrs {
            trie.insert(&cidr_key(net), 1, 0)
                .map_err(|source| RedirectError::Map { name, source })?;
        }
        // An adopted trie may hold CIDRs the new config dropped: remove
        // them, or their connections would still be captured.
        let wanted: Vec<_> = s.mesh_cidrs.iter().map(cidr_key).collect();
        let stale: Vec<_> = trie
            .keys()
            .filter_map(Result::ok)
            .filter(|k| {
                !wanted
                    .iter()
                    .any(|w| w.prefix_len() == k.prefix_len() && w.data() == k.data())
            })
            .collect();
        for key in stale {
            let _ = trie.remove(&key);
        }
        Ok(())
    }

    fn pin_all(&self, dir: &Path) -> Result<(), RedirectError> {
        for (name, map) in self.named() {
            map.pin(dir.join(name))
                .map_err(|e| pin_error(&dir.join(name), &e))?;
        }
        Ok(())
    }

    fn named(&self) -> Vec<(&'static str, &Map)> {
        let mut all = vec![
            (maps::CONFIG, &self.config),
            (maps::MESH_CIDRS, &self.cidrs),
            (maps::BY_COOKIE, &self.by_cookie),
            (maps::FLOWS, &self.flows),
            (maps::STATS, &self.stats),
            (maps::INBOUND_MODES, &self.modes),
            (maps::PODS, &self.pods),
        ];
        if let Some((hash, off)) = &self.splice {
            all.extend([(maps::SPLICE, hash), (maps::SPLICE_OFF, off)]);
        }
        all
    }

    /// Splits the maps into the handles the proxy's tasks own.
    pub(super) fn into_handles(
        self,
        redirector: Redirector,
        netns_cookie: super::CookieSource,
    ) -> Result<super::Attached, RedirectError> {
        let flows_fd = super::dup_map_fd(&self.flows, maps::FLOWS)?;
        let flows = FlowTable {
            flows: hash_map(self.flows, maps::FLOWS)?,
        };
        let name = maps::STATS;
        let stats = PerCpuArray::try_from(self.stats)
            .map_err(|source| RedirectError::Map { name, source })?;
        let name = maps::SPLICE;
        let splice = self
            .splice
            .map(|(hash, _)| SockHash::try_from(hash))
            .transpose()
            .map_err(|source| RedirectError::Map { name, source })?;
        let by_cookie = hash_map(self.by_cookie, maps::BY_COOKIE)?;
        let stats = KernelStats::open(stats, by_cookie, flows_fd, splice)?;
        let modes: HashMap<MapData, LpmAddr, u32> = hash_map(self.modes, maps::INBOUND_MODES)?;
        let pods: HashMap<MapData, u64, u32> = hash_map(self.pods, maps::PODS)?;
        Ok(super::Attached {
            redirector,
            flows,
            stats,
            netns_cookie,
            modes: InboundModes::new(modes),
            pods: PodCgroups::new(pods),
        })
    }
}

impl Pins {
    /// Pins `links`, the fast path's `splice` links and `maps` under `dir`
    /// (created on bpffs).
    pub(super) fn create(
        dir: &Path,
        links: Vec<FdLink>,
        splice: Vec<(&'static str, FdLink)>,
        maps: &MapSet,
    ) -> Result<Self, RedirectError> {
        for sub in ["links", "maps"] {
            fs::create_dir_all(dir.join(sub)).map_err(|e| pin_error(dir, &e))?;
        }
        check_bpffs(dir)?;
        maps.pin_all(&dir.join("maps"))?;
        let spliced = !splice.is_empty();
        let mut pinned = Vec::new();
        for (name, link) in PROGRAMS.iter().copied().zip(links).chain(splice) {
            let path = dir.join("links").join(name);
            pinned.push(link.pin(&path).map_err(|e| pin_error(&path, &e))?);
        }
        Ok(Self {
            dir: dir.to_owned(),
            links: pinned,
            spliced,
        })
    }

    /// Opens the links a predecessor pinned under `dir`. Its fast-path
    /// links are kept when `splice`, otherwise unpinned (so they detach
    /// once the predecessor exits) together with the fast path's maps.
    pub(super) fn open(dir: &Path, splice: bool) -> Result<Self, RedirectError> {
        let links_dir = dir.join("links");
        let mut links = Vec::new();
        for name in PROGRAMS {
            let path = links_dir.join(name);
            links.push(PinnedLink::from_pin(&path).map_err(|e| pin_error(&path, &e))?);
        }
        let mut spliced = false;
        for name in [SPLICE_PODS, SPLICE_PROXY] {
            let path = links_dir.join(name);
            if !path.exists() {
                continue;
            }
            let link = PinnedLink::from_pin(&path).map_err(|e| pin_error(&path, &e))?;
            if splice {
                links.push(link);
                spliced |= name == SPLICE_PODS;
            } else if let Err(e) = link.unpin() {
                tracing::warn!(error = %e, "unpinning the sockmap fast path");
            }
        }
        if !spliced {
            for name in [maps::SPLICE, maps::SPLICE_OFF] {
                let _ = fs::remove_file(dir.join("maps").join(name));
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
            links,
            spliced,
        })
    }

    /// Whether the fast path's links are pinned (and so its maps).
    pub(super) fn spliced(&self) -> bool {
        self.spliced
    }

    /// Whether a pinned set of links is at `dir`.
    pub(super) fn exist(dir: &Path) -> bool {
        dir.join("links").join(PROGRAMS[0]).exists()
    }

    /// Leaves everything pinned (a successor owns it now).
    pub(super) fn keep(self) {}

    /// Unpins links and maps and removes the directories.
    pub(super) fn remove(self) {
        for link in self.links {
            if let Err(e) = link.unpin() {
                tracing::warn!(error = %e, "unpinning a BPF link");
            }
        }
        let maps = self.dir.join("maps");
        for name in ALL_MAPS {
            let _ = fs::remove_file(maps.join(name));
        }
        let _ = fs::remove_dir(&maps);
        let _ = fs::remove_dir(self.dir.join("links"));
        let _ = fs::remove_dir(&self.dir);
    }
}

/// Pins only work on a BPF filesystem; say so plainly rather than with EPERM.
pub fn check_bpffs(dir: &Path) -> Result<(), RedirectError> {
    let existing = dir.ancestors().find(|p| p.exists()).unwrap_or(dir);
    let stat = nix::sys::statfs::statfs(existing).map_err(|e| pin_error(dir, &e))?;
    if stat.filesystem_type().0 as i64 == BPF_FS_MAGIC {
        Ok(())
    } else {
        Err(RedirectError::Pin {
            path: dir.to_owned(),
            message: "not on a BPF filesystem (mount one: mount -t bpf bpf /sys/fs/bpf)".into(),
        })
    }
}

fn pin_error(path: &Path, e: &dyn std::fmt::Display) -> RedirectError {
    RedirectError::Pin {
        path: path.to_owned(),
        message: e.to_string(),
    }
}
