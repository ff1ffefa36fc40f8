//! How a stopping proxy ends the connections it still relays.
//!
//! When the drain starts, HTTP connections wind down (see `http::serve`).
//! At the drain deadline every relay still running is cut: a byte relay
//! resets both sides, so a peer reading until end of stream sees an error
//! instead of a FIN that would make a cut transfer look complete; an HTTP
//! relay is closed (its framing shows a cut response).
//!
//! Each tunnel connection gives its streams' relays a drain of their own,
//! which follows the proxy's and is also cut when the tunnel server closes
//! that one connection (see `inbound`); [`DrainControl::cut_with`] says why.

use std::sync::{
    atomic::{AtomicU8, Ordering},
    Arc, OnceLock,
};

use tokio::sync::Notify;

/// Where the proxy is in its stop (only ever moves forward; 0 is running).
const DRAINING: u8 = 1;
const CUT: u8 = 2;

/// The phase and the relays waiting for it to move. An atomic and a
/// `Notify` rather than a watch channel: every relay holds a waiting
/// future for its whole life, and this one is about half the size (120
/// bytes against 216; 8.5 -> 8.2 KB per idle same-node connection).
#[derive(Default)]
struct State {
    phase: AtomicU8,
    moved: Notify,
    /// Why relays were cut, when not for the drain deadline (a tunnel
    /// connection closed under them); set once, before the cut.
    why: OnceLock<&'static str>,
}

/// What a cut relay logs when no other reason was given.
const DEADLINE: &str = "cut at the drain deadline";

/// What relays watch; cheap to clone.
#[derive(Clone)]
pub struct Drain(Arc<State>);

/// What the proxy's stop sequence moves forward.
pub struct DrainControl(Arc<State>);

impl DrainControl {
    /// A control and the first of its watchers.
    pub fn new() -> (Self, Drain) {
        let state = Arc::new(State::default());
        (Self(state.clone()), Drain(state))
    }

    /// The drain has started: wind down.
    pub fn start(&self) {
        self.advance(DRAINING);
    }

    /// The deadline has passed: cut what is left.
    pub fn cut(&self) {
        self.advance(CUT);
    }

    /// Cuts what is left, for `why` (what cut relays log); the first
    /// reason given stays.
    pub fn cut_with(&self, why: &'static str) {
        let _ = self.0.why.set(why);
        self.advance(CUT);
    }

    fn advance(&self, to: u8) {
        if self.0.phase.fetch_max(to, Ordering::AcqRel) < to {
            self.0.moved.notify_waiters();
        }
    }
}

impl Drain {
    /// A watcher that never fires (for relays run outside a proxy, in tests).
    pub fn never() -> Self {
        Self(Arc::default())
    }

    /// Whether the drain has started.
    pub fn is_draining(&self) -> bool {
        self.0.phase.load(Ordering::Acquire) >= DRAINING
    }

    /// Completes once the drain has started.
    pub async fn draining(&self) {
        self.reached(DRAINING).await;
    }

    /// Completes once the drain deadline has passed.
    pub async fn cut(&self) {
        self.reached(CUT).await;
    }

    /// Why the relays were cut, for their records.
    pub fn why(&self) -> &'static str {
        self.0.why.get().copied().unwrap_or(DEADLINE)
    }

    async fn reached(&self, phase: u8) {
        loop {
            let moved = self.0.moved.notified();
            tokio::pin!(moved);
            // Registered before the check, so a move in between is not missed.
            moved.as_mut().enable();
            if self.0.phase.load(Ordering::Acquire) >= phase {
                return;
            }
            moved.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::timeout;

    use super::*;

    const SHORT: Duration = Duration::from_millis(50);

    #[tokio::test]
    async fn phases_fire_in_order_and_late_watchers_see_them() {
        let (control, drain) = DrainControl::new();
        assert!(timeout(SHORT, drain.draining()).await.is_err());
        control.start();
        timeout(SHORT, drain.draining()).await.expect("draining");
        assert!(timeout(SHORT, drain.cut()).await.is_err(), "not cut yet");
        control.cut();
        let late = drain.clone();
        timeout(SHORT, late.cut()).await.expect("cut");
        timeout(SHORT, late.draining())
            .await
            .expect("a cut has drained too");
        control.start();
        timeout(SHORT, drain.cut()).await.expect("never goes back");
        assert_eq!(drain.why(), "cut at the drain deadline");
    }

    #[tokio::test]
    async fn a_cut_keeps_its_first_reason() {
        let (control, drain) = DrainControl::new();
        control.cut_with("peer left");
        control.cut_with("later");
        timeout(SHORT, drain.cut()).await.expect("cut");
        assert_eq!(drain.why(), "peer left");
    }

    #[tokio::test]
    async fn a_dropped_control_or_never_does_not_fire() {
        assert!(timeout(SHORT, Drain::never().cut()).await.is_err());
        let (control, drain) = DrainControl::new();
        drop(control);
        assert!(timeout(SHORT, drain.draining()).await.is_err());
    }

    /// A relay waiting for the cut wakes when it comes, also when it skips
    /// the draining phase.
    #[tokio::test]
    async fn a_waiting_relay_is_woken() {
        let (control, drain) = DrainControl::new();
        let waiting = tokio::spawn(async move { drain.cut().await });
        tokio::time::sleep(SHORT).await;
        control.cut();
        timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .expect("task");
    }
}
