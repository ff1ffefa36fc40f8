//! What one tunnel peer may hold on this server: its connections' timers
//! ([`Settings`]), TLS handshakes in progress (a global cap and one per
//! source address), and dials to local pods waiting for an answer (per
//! calling node). A peer over a cap is refused at once and counted; nothing
//! waits in line for a slot.

use std::{
    collections::HashMap,
    hash::Hash,
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Default: a connection without streams this long is closed. Longer than
/// the pool's idle timeout, so in normal operation the client closes first.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// Default: a connection this old takes no new streams (GOAWAY).
pub const DEFAULT_MAX_CONNECTION_AGE: Duration = Duration::from_secs(60 * 60);
/// Default: how long streams open at the maximum age may still run.
pub const DEFAULT_MAX_CONNECTION_AGE_GRACE: Duration = Duration::from_secs(10 * 60);
/// Default: TLS handshakes in progress at once, from all peers.
pub const DEFAULT_MAX_HANDSHAKES: usize = 1024;
/// Default: TLS handshakes in progress at once from one source address. A
/// node proxy opens at most one per pool key at a time.
pub const DEFAULT_MAX_HANDSHAKES_PER_ADDRESS: usize = 128;
/// Default: dials to local pods waiting for an answer, per calling node.
pub const DEFAULT_MAX_PENDING_DIALS_PER_NODE: usize = 256;

/// The tunnel server's timers and caps (config file `tunnel:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// A connection with no stream open this long is closed.
    pub idle_timeout: Duration,
    /// A connection this old gets a GOAWAY: new streams go to a new
    /// connection (a fresh handshake), open ones may finish...
    pub max_connection_age: Duration,
    /// ...for this long, after which they are cut.
    pub max_connection_age_grace: Duration,
    /// TLS handshakes in progress at once; more are refused.
    pub max_handshakes: usize,
    /// TLS handshakes in progress at once from one source address.
    pub max_handshakes_per_address: usize,
    /// Dials to local pods in progress at once for one calling node, over
    /// all its connections; more streams are refused (`503`).
    pub max_pending_dials_per_node: usize,
}

/// The shared state behind the caps; one per tunnel server.
pub struct Limits {
    settings: Settings,
    handshakes: Arc<Semaphore>,
    handshakes_per_address: PerKey<IpAddr>,
    dials: PerKey<String>,
}

/// Why a new connection or stream was refused by a cap (metric labels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    /// [`Settings::max_handshakes`].
    Handshakes,
    /// [`Settings::max_handshakes_per_address`].
    HandshakesPerAddress,
}

/// A handshake in progress: holds its slots until dropped.
pub struct HandshakeSlot {
    _all: OwnedSemaphorePermit,
    _address: Held<IpAddr>,
}

/// At most `max` holders per key at once.
struct PerKey<K: Hash + Eq> {
    max: usize,
    held: Arc<Mutex<HashMap<K, usize>>>,
}

/// One holder's place under a per-key cap, given back on drop.
pub struct Held<K: Hash + Eq> {
    held: Arc<Mutex<HashMap<K, usize>>>,
    key: K,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connection_age: DEFAULT_MAX_CONNECTION_AGE,
            max_connection_age_grace: DEFAULT_MAX_CONNECTION_AGE_GRACE,
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
            max_handshakes_per_address: DEFAULT_MAX_HANDSHAKES_PER_ADDRESS,
            max_pending_dials_per_node: DEFAULT_MAX_PENDING_DIALS_PER_NODE,
        }
    }
}

impl Over {
    /// Label value in `nodeward_tunnel_rejected_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Handshakes => "handshake_limit",
            Self::HandshakesPerAddress => "handshake_limit_per_address",
        }
    }
}

impl Limits {
    /// Fresh caps for `settings`.
    pub fn new(settings: Settings) -> Self {
        Self {
            handshakes: Arc::new(Semaphore::new(settings.max_handshakes)),
            handshakes_per_address: PerKey::new(settings.max_handshakes_per_address),
            dials: PerKey::new(settings.max_pending_dials_per_node),
            settings,
        }
    }

    /// The settings these caps enforce.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// A slot for a TLS handshake with a peer at `address`, if both caps
    /// have room.
    pub fn start_handshake(&self, address: IpAddr) -> Result<HandshakeSlot, Over> {
        let all = self
            .handshakes
            .clone()
            .try_acquire_owned()
            .map_err(|_| Over::Handshakes)?;
        let address = self
            .handshakes_per_address
            .try_hold(address.to_canonical())
            .ok_or(Over::HandshakesPerAddress)?;
        Ok(HandshakeSlot {
            _all: all,
            _address: address,
        })
    }

    /// A slot for one dial on behalf of `node`, if it has room.
    pub fn start_dial(&self, node: &str) -> Option<Held<String>> {
        self.dials.try_hold(node.to_owned())
    }
}

impl<K: Hash + Eq + Clone> PerKey<K> {
    fn new(max: usize) -> Self {
        Self {
            max,
            held: Arc::default(),
        }
    }

    fn try_hold(&self, key: K) -> Option<Held<K>> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let count = held.entry(key.clone()).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(Held {
            held: self.held.clone(),
            key,
        })
    }
}

impl<K: Hash + Eq> Drop for Held<K> {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = held.get_mut(&self.key) {
            *count -= 1;
            // Forgotten at zero, so departed peers leave nothing behind.
            if *count == 0 {
                held.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(handshakes: usize, per_address: usize, dials: usize) -> Limits {
        Limits::new(Settings {
            max_handshakes: handshakes,
            max_handshakes_per_address: per_address,
            max_pending_dials_per_node: dials,
            ..Settings::default()
        })
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 99, 0, last])
    }

    #[test]
    fn a_handshake_beyond_the_global_cap_is_refused_until_one_ends() {
        let l = limits(2, 10, 1);
        let first = l.start_handshake(ip(1)).expect("first");
        let _second = l.start_handshake(ip(2)).expect("second");
        assert_eq!(l.start_handshake(ip(3)).err(), Some(Over::Handshakes));
        drop(first);
        assert!(l.start_handshake(ip(3)).is_ok());
    }

    #[test]
    fn one_address_cannot_take_every_handshake_slot() {
        let l = limits(10, 2, 1);
        let _a = l.start_handshake(ip(1)).expect("a");
        let _b = l.start_handshake(ip(1)).expect("b");
        assert_eq!(
            l.start_handshake(ip(1)).err(),
            Some(Over::HandshakesPerAddress)
        );
        // The refused attempt gave its global slot back: others still get in.
        let others: Vec<_> = (2..10).map(|i| l.start_handshake(ip(i))).collect();
        assert!(others.iter().all(Result::is_ok));
    }

    #[test]
    fn ipv4_mapped_addresses_count_as_their_ipv4_address() {
        let l = limits(10, 1, 1);
        let _v4 = l.start_handshake(ip(1)).expect("v4");
        let mapped = IpAddr::V6(std::net::Ipv4Addr::new(10, 99, 0, 1).to_ipv6_mapped());
        assert_eq!(
            l.start_handshake(mapped).err(),
            Some(Over::HandshakesPerAddress)
        );
    }

    #[test]
    fn pending_dials_are_capped_per_node_and_forgotten_when_done() {
        let l = limits(10, 10, 2);
        let a1 = l.start_dial("node-a").expect("a1");
        let a2 = l.start_dial("node-a").expect("a2");
        assert!(l.start_dial("node-a").is_none());
        assert!(
            l.start_dial("node-c").is_some(),
            "other nodes are not affected"
        );
        drop((a1, a2));
        assert!(l.dials.held.lock().expect("lock").is_empty());
        assert!(l.start_dial("node-a").is_some());
    }
}
