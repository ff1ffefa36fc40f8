//! What one tunnel peer may hold on this server: its connections' timers
//! ([`Settings`]), TLS handshakes in progress (a global cap and one per
//! source address), and dials to local pods waiting for an answer (per
//! calling node). A connection over a handshake cap is refused at once and
//! counted. A stream over the dial cap waits in line for a slot, briefly
//! ([`Settings::dial_queue_timeout`]): the cap bounds the sockets and ports
//! a node's dials hold, and a burst of streams whose dials finish in
//! microseconds must not be refused for arriving together; dials that hang
//! (an unresponsive pod) free no slot in that time, and what waits behind
//! them is refused.

use std::{
    collections::HashMap,
    hash::Hash,
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::{timeout_at, Instant},
};

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
/// Default: how long a stream over the dial cap waits for a slot. Slots
/// of dials that complete free in microseconds; one second covers a burst
/// on a loaded node, and is a tenth of a hanging dial's timeout.
pub const DEFAULT_DIAL_QUEUE_TIMEOUT: Duration = Duration::from_secs(1);

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
    /// all its connections; more streams wait in line for a slot...
    pub max_pending_dials_per_node: usize,
    /// ...this long at most, then are refused (`503`). Zero refuses at once.
    pub dial_queue_timeout: Duration,
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

/// At most `max` holders per key at once: a semaphore per key, made on
/// first use and forgotten once nobody holds or waits for it, so departed
/// peers leave nothing behind.
struct PerKey<K: Hash + Eq> {
    max: usize,
    slots: Slots<K>,
}

type Slots<K> = Arc<Mutex<HashMap<K, Arc<Semaphore>>>>;

/// One holder's place under a per-key cap, given back on drop.
pub struct Held<K: Hash + Eq> {
    /// Taken in `drop` so the slot is free before the key is looked at.
    permit: Option<OwnedSemaphorePermit>,
    /// Dropped after `permit` (see `Drop for Held`).
    _forget: Forget<K>,
}

/// Forgets its key's semaphore when dropped, if it is idle by then: run
/// after a holder gave its slot back and after a waiter stopped waiting
/// (served, timed out or cancelled).
struct Forget<K: Hash + Eq> {
    slots: Slots<K>,
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
            dial_queue_timeout: DEFAULT_DIAL_QUEUE_TIMEOUT,
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
            handshakes: Arc::new(Semaphore::new(
                settings.max_handshakes.min(Semaphore::MAX_PERMITS),
            )),
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

    /// A slot for one dial on behalf of `node`, if one is free now.
    pub fn try_start_dial(&self, node: &str) -> Option<Held<String>> {
        self.dials.try_hold(node.to_owned())
    }

    /// A slot for one dial on behalf of `node`: at once if it has room,
    /// else the first one freed (in order of asking), or `None` if none is
    /// freed by `deadline`.
    pub async fn start_dial(&self, node: &str, deadline: Instant) -> Option<Held<String>> {
        self.dials.hold_by(node.to_owned(), deadline).await
    }
}

impl<K: Hash + Eq + Clone> PerKey<K> {
    fn new(max: usize) -> Self {
        Self {
            // A semaphore cannot hold more; the config allows far fewer.
            max: max.min(Semaphore::MAX_PERMITS),
            slots: Arc::default(),
        }
    }

    /// A place for `key` if one is free now.
    fn try_hold(&self, key: K) -> Option<Held<K>> {
        let forget = self.forget(key);
        let permit = self.semaphore(&forget.key).try_acquire_owned().ok()?;
        Some(Held {
            permit: Some(permit),
            _forget: forget,
        })
    }

    /// A place for `key`, waiting for one until `deadline`. Cancel-safe: a
    /// dropped wait leaves its place in line and nothing else.
    async fn hold_by(&self, key: K, deadline: Instant) -> Option<Held<K>> {
        // Declared first, dropped last: after the wait gave up its handle
        // on the semaphore.
        let forget = self.forget(key);
        let semaphore = self.semaphore(&forget.key);
        let permit = timeout_at(deadline, semaphore.acquire_owned())
            .await
            .ok()?
            .ok()?;
        Some(Held {
            permit: Some(permit),
            _forget: forget,
        })
    }

    /// `key`'s semaphore, made if it has none. Handles on it are only ever
    /// made here, under the lock, which is what lets [`Forget`] trust the
    /// count it sees.
    fn semaphore(&self, key: &K) -> Arc<Semaphore> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(semaphore) = slots.get(key) {
            // The common case under load: no key copied.
            return semaphore.clone();
        }
        let semaphore = Arc::new(Semaphore::new(self.max));
        slots.insert(key.clone(), semaphore.clone());
        semaphore
    }

    fn forget(&self, key: K) -> Forget<K> {
        Forget {
            slots: self.slots.clone(),
            key,
        }
    }
}

impl<K: Hash + Eq> Drop for Held<K> {
    fn drop(&mut self) {
        // The slot goes back first; `forget` runs after this body.
        drop(self.permit.take());
    }
}

impl<K: Hash + Eq> Drop for Forget<K> {
    fn drop(&mut self) {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        // Only the map's handle left: every permit and every wait holds
        // one of its own, so nobody holds a place or waits for one.
        let idle = slots
            .get(&self.key)
            .is_some_and(|s| Arc::strong_count(s) == 1);
        if idle {
            slots.remove(&self.key);
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

    fn after(ms: u64) -> Instant {
        Instant::now() + Duration::from_millis(ms)
    }

    fn forgotten(l: &Limits) -> bool {
        l.dials.slots.lock().expect("lock").is_empty()
    }

    #[tokio::test]
    async fn pending_dials_are_capped_per_node_and_forgotten_when_done() {
        let l = limits(10, 10, 2);
        let a1 = l.start_dial("node-a", after(0)).await.expect("a1");
        let a2 = l.start_dial("node-a", after(0)).await.expect("a2");
        assert!(
            l.start_dial("node-a", after(50)).await.is_none(),
            "no slot freed before the deadline"
        );
        assert!(
            l.start_dial("node-c", after(0)).await.is_some(),
            "other nodes are not affected"
        );
        drop((a1, a2));
        assert!(forgotten(&l));
        assert!(l.start_dial("node-a", after(0)).await.is_some());
    }

    #[tokio::test]
    async fn a_dial_over_the_cap_gets_the_first_slot_freed_in_order_of_asking() {
        let l = Arc::new(limits(10, 10, 1));
        let held = l.start_dial("node-a", after(0)).await.expect("held");
        // Each waiter hands its slot back to the test: only the test frees.
        let wait = |l: &Arc<Limits>| {
            let l = l.clone();
            tokio::spawn(async move { l.start_dial("node-a", after(5_000)).await })
        };
        let first = wait(&l);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let second = wait(&l);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!first.is_finished() && !second.is_finished(), "both wait");
        drop(held);
        let first = first
            .await
            .expect("first")
            .expect("the first in line is served");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!second.is_finished(), "the second still waits: one slot");
        drop(first);
        let second = second.await.expect("second");
        assert!(second.is_some());
        drop(second);
        assert!(forgotten(&l));
    }

    #[tokio::test]
    async fn a_wait_given_up_leaves_nothing_behind() {
        let l = limits(10, 10, 1);
        let held = l.start_dial("node-a", after(0)).await.expect("held");
        // Cancelled from outside (the client reset its stream)...
        let cancelled = tokio::time::timeout(
            Duration::from_millis(20),
            l.start_dial("node-a", after(5_000)),
        );
        assert!(cancelled.await.is_err());
        // ...or timed out.
        assert!(l.start_dial("node-a", after(20)).await.is_none());
        // Neither took the held slot with it, nor made a second one.
        assert!(!forgotten(&l));
        assert!(l.start_dial("node-a", after(20)).await.is_none());
        drop(held);
        assert!(forgotten(&l));
        assert!(l.start_dial("node-a", after(0)).await.is_some());
    }
}
