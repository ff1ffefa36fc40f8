//! Pinning under bpffs, so the programs outlive the process that loaded
//! them and a successor can adopt them (takeover on upgrade).
//!
//! Layout: `<dir>/links/<program>` and `<dir>/maps/<MAP>`. A link stays
//! attached while its pin exists (or any process holds it); removing the
//! pins and closing our descriptors detaches.

use std::{
    fs,
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray},
    programs::links::{FdLink, PinnedLink},
    Ebpf,
};
use nodeward_common::{maps, programs, LpmAddr, RedirectConfig};

use super::{
    cidr_key, config_value, hash_map, FlowTable, InboundModes, KernelStats, RedirectError,
    Redirector, Settings,
};

/// The programs, in the order [`super::attach_programs`] returns their links.
const PROGRAMS: [&str; 4] = [
    programs::CONNECT4,
    programs::CONNECT6,
    programs::SOCK_OPS,
    programs::INBOUND,
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
}

/// Pinned links (and the maps beside them) of one node proxy.
pub(super) struct Pins {
    dir: PathBuf,
    links: Vec<PinnedLink>,
}

impl MapSet {
    /// Takes the maps out of a freshly loaded object.
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, RedirectError> {
        let mut take = |name| ebpf.take_map(name).ok_or(RedirectError::Missing(name));
        Ok(Self {
            config: take(maps::CONFIG)?,
            cidrs: take(maps::MESH_CIDRS)?,
            by_cookie: take(maps::BY_COOKIE)?,
            flows: take(maps::FLOWS)?,
            stats: take(maps::STATS)?,
            modes: take(maps::INBOUND_MODES)?,
        })
    }

    /// Opens the maps a predecessor pinned under `dir`.
    pub(super) fn open(dir: &Path) -> Result<Self, RedirectError> {
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
        })
    }

    /// Writes this process's addresses, ports and mesh CIDRs.
    pub(super) fn configure(&mut self, s: &Settings) -> Result<(), RedirectError> {
        let name = maps::CONFIG;
        let mut config: Array<_, RedirectConfig> = Array::try_from(&mut self.config)
            .map_err(|source| RedirectError::Map { name, source })?;
        config
            .set(0, config_value(s)?, 0)
            .map_err(|source| RedirectError::Map { name, source })?;
        let name = maps::MESH_CIDRS;
        let mut trie: LpmTrie<_, LpmAddr, u8> = LpmTrie::try_from(&mut self.cidrs)
            .map_err(|source| RedirectError::Map { name, source })?;
        for net in &s.mesh_cidrs {
            trie.insert(&cidr_key(net), 1, 0)
                .map_err(|source| RedirectError::Map { name, source })?;
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

    fn named(&self) -> [(&'static str, &Map); 6] {
        [
            (maps::CONFIG, &self.config),
            (maps::MESH_CIDRS, &self.cidrs),
            (maps::BY_COOKIE, &self.by_cookie),
            (maps::FLOWS, &self.flows),
            (maps::STATS, &self.stats),
            (maps::INBOUND_MODES, &self.modes),
        ]
    }

    /// Splits the maps into the handles the proxy's tasks own.
    pub(super) fn into_handles(
        self,
        redirector: Redirector,
    ) -> Result<super::Attached, RedirectError> {
        let flows_id = super::map_id(&self.flows, maps::FLOWS)?;
        let flows = FlowTable {
            flows: hash_map(self.flows, maps::FLOWS)?,
        };
        let name = maps::STATS;
        let stats = PerCpuArray::try_from(self.stats)
            .map_err(|source| RedirectError::Map { name, source })?;
        let stats = KernelStats::open(stats, hash_map(self.by_cookie, maps::BY_COOKIE)?, flows_id)?;
        let modes: HashMap<MapData, LpmAddr, u32> = hash_map(self.modes, maps::INBOUND_MODES)?;
        Ok((redirector, flows, stats, InboundModes::new(modes)))
    }
}

impl Pins {
    /// Pins `links` and `maps` under `dir` (created on bpffs).
    pub(super) fn create(
        dir: &Path,
        links: Vec<FdLink>,
        maps: &MapSet,
    ) -> Result<Self, RedirectError> {
        for sub in ["links", "maps"] {
            fs::create_dir_all(dir.join(sub)).map_err(|e| pin_error(dir, &e))?;
        }
        check_bpffs(dir)?;
        maps.pin_all(&dir.join("maps"))?;
        let mut pinned = Vec::new();
        for (name, link) in PROGRAMS.iter().zip(links) {
            let path = dir.join("links").join(name);
            pinned.push(link.pin(&path).map_err(|e| pin_error(&path, &e))?);
        }
        Ok(Self {
            dir: dir.to_owned(),
            links: pinned,
        })
    }

    /// Opens the links a predecessor pinned under `dir`.
    pub(super) fn open(dir: &Path) -> Result<Self, RedirectError> {
        let mut links = Vec::new();
        for name in PROGRAMS {
            let path = dir.join("links").join(name);
            links.push(PinnedLink::from_pin(&path).map_err(|e| pin_error(&path, &e))?);
        }
        Ok(Self {
            dir: dir.to_owned(),
            links,
        })
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
        for name in [
            maps::CONFIG,
            maps::MESH_CIDRS,
            maps::BY_COOKIE,
            maps::FLOWS,
            maps::STATS,
            maps::INBOUND_MODES,
        ] {
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
