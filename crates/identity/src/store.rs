//! The local workloads' certificates: minted with the node's intermediate,
//! renewed at half life, read lock-free by every handshake.
//!
//! One task writes ([`CertStore::sync`]); readers get an `Arc` snapshot, so a
//! renewal never disturbs a handshake in flight or an open connection (TLS
//! does not look at the certificate again once the handshake is done).

use std::{
    collections::{BTreeSet, HashMap},
    fmt::Write as _,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use rustls::sign::CertifiedKey;

use crate::{CaError, NodeCa, SpiffeId, Svid};

/// A minted certificate, ready for rustls.
pub struct Issued {
    pub svid: Svid,
    pub key: Arc<CertifiedKey>,
    /// Unique per minting: pooled tunnels opened with an older certificate
    /// of the same identity are retired once it is renewed.
    pub generation: u64,
    /// When to renew (half the lifetime).
    pub renew_at: SystemTime,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("id", &self.svid.id)
            .field("generation", &self.generation)
            .field("not_after", &self.svid.not_after)
            .finish_non_exhaustive()
    }
}

/// What a [`CertStore::sync`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncReport {
    pub minted: Vec<SpiffeId>,
    pub renewed: Vec<SpiffeId>,
    pub dropped: Vec<SpiffeId>,
}

#[derive(Default)]
struct Snapshot {
    by_id: HashMap<SpiffeId, Arc<Issued>>,
    by_sni: HashMap<String, Arc<Issued>>,
}

/// Certificates of every identity among the local workloads.
pub struct CertStore {
    ca: NodeCa,
    lifetime: Duration,
    current: ArcSwap<Snapshot>,
    generations: AtomicU64,
}

impl CertStore {
    /// An empty store minting with `ca`, `lifetime` per certificate.
    pub fn new(ca: NodeCa, lifetime: Duration) -> Self {
        Self {
            ca,
            lifetime,
            current: ArcSwap::from_pointee(Snapshot::default()),
            generations: AtomicU64::new(1),
        }
    }

    /// The node CA this store mints with.
    pub fn ca(&self) -> &NodeCa {
        &self.ca
    }

    /// The current certificate of `id`.
    pub fn get(&self, id: &SpiffeId) -> Option<Arc<Issued>> {
        self.current.load().by_id.get(id).cloned()
    }

    /// The certificate a tunnel client asked for by SNI (see [`sni_name`]).
    pub fn by_sni(&self, sni: &str) -> Option<Arc<Issued>> {
        self.current.load().by_sni.get(sni).cloned()
    }

    /// Every identity held now, with its certificate's expiry.
    pub fn expiries(&self) -> Vec<(SpiffeId, SystemTime)> {
        let snap = self.current.load();
        let mut out: Vec<_> = snap
            .by_id
            .values()
            .map(|i| (i.svid.id.clone(), i.svid.not_after))
            .collect();
        out.sort();
        out
    }

    /// The earliest time a held certificate is due for renewal.
    pub fn next_renewal(&self) -> Option<SystemTime> {
        self.current.load().by_id.values().map(|i| i.renew_at).min()
    }

    /// Holds exactly `wanted`: mints missing identities, renews those past
    /// half life, drops the rest. On a minting error the identities done so
    /// far are kept and the error is returned (the next sync retries).
    pub fn sync(
        &self,
        wanted: &BTreeSet<SpiffeId>,
        now: SystemTime,
    ) -> Result<SyncReport, CaError> {
        let old = self.current.load_full();
        let mut report = SyncReport::default();
        let mut next = Snapshot::default();
        let mut failure = None;
        for id in wanted {
            let kept = old.by_id.get(id).filter(|i| i.renew_at > now).cloned();
            let issued = match kept {
                Some(i) => i,
                None => match self.issue(id, now) {
                    Ok(i) => {
                        match old.by_id.contains_key(id) {
                            true => report.renewed.push(id.clone()),
                            false => report.minted.push(id.clone()),
                        }
                        i
                    }
                    Err(e) => {
                        // Keep serving the old certificate while it is valid.
                        if let Some(i) = old.by_id.get(id) {
                            next.insert(i.clone());
                        }
                        failure = Some(e);
                        continue;
                    }
                },
            };
            next.insert(issued);
        }
        report.dropped = old
            .by_id
            .keys()
            .filter(|id| !wanted.contains(*id))
            .cloned()
            .collect();
        self.current.store(Arc::new(next));
        match failure {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    fn issue(&self, id: &SpiffeId, now: SystemTime) -> Result<Arc<Issued>, CaError> {
        let svid = self.ca.mint(id, self.lifetime)?;
        let key = svid.certified_key()?;
        let life = svid.not_after.duration_since(now).unwrap_or(Duration::ZERO);
        Ok(Arc::new(Issued {
            key,
            generation: self.generations.fetch_add(1, Ordering::Relaxed),
            renew_at: now + life / 2,
            svid,
        }))
    }
}

impl Snapshot {
    fn insert(&mut self, issued: Arc<Issued>) {
        self.by_sni
            .insert(sni_name(&issued.svid.id), issued.clone());
        self.by_id.insert(issued.svid.id.clone(), issued);
    }
}

/// The SNI that selects `id`'s certificate on a node proxy: the first 16
/// bytes of SHA-256 over the SPIFFE ID, in hex, under `id.nodeward`. A hash
/// keeps any valid ID within DNS name limits.
pub fn sni_name(id: &SpiffeId) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, id.to_string().as_bytes());
    let mut out = String::with_capacity(45);
    for b in &digest.as_ref()[..16] {
        let _ = write!(out, "{b:02x}");
    }
    out.push_str(".id.nodeward");
    out
}
