//! How a stopping proxy ends the connections it still relays.
//!
//! When the drain starts, HTTP connections stop keeping alive (hyper's
//! graceful shutdown: the request in flight finishes, then the connection
//! closes). At the drain deadline every relay still running is cut: both
//! sides are reset, so a peer reading until end of stream sees an error
//! instead of a FIN that would make a cut transfer look complete.

use tokio::sync::watch;

/// Where the proxy is in its stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Running,
    Draining,
    Cut,
}

/// What relays watch; cheap to clone.
#[derive(Clone)]
pub struct Drain(watch::Receiver<Phase>);

/// What the proxy's stop sequence moves forward.
pub struct DrainControl(watch::Sender<Phase>);

impl DrainControl {
    /// A control and the first of its watchers.
    pub fn new() -> (Self, Drain) {
        let (tx, rx) = watch::channel(Phase::Running);
        (Self(tx), Drain(rx))
    }

    /// The drain has started: wind down.
    pub fn start(&self) {
        self.advance(Phase::Draining);
    }

    /// The deadline has passed: cut what is left.
    pub fn cut(&self) {
        self.advance(Phase::Cut);
    }

    fn advance(&self, to: Phase) {
        self.0.send_if_modified(|p| {
            let later = to > *p;
            if later {
                *p = to;
            }
            later
        });
    }
}

impl Drain {
    /// A watcher that never fires (for relays run outside a proxy, in tests).
    pub fn never() -> Self {
        DrainControl::new().1
    }

    /// Completes once the drain has started.
    pub async fn draining(&self) {
        self.reached(Phase::Draining).await;
    }

    /// Completes once the drain deadline has passed.
    pub async fn cut(&self) {
        self.reached(Phase::Cut).await;
    }

    async fn reached(&self, phase: Phase) {
        let mut rx = self.0.clone();
        if rx.wait_for(|p| *p >= phase).await.is_err() {
            // The control is gone without getting there: it never will.
            std::future::pending::<()>().await;
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
    }

    #[tokio::test]
    async fn a_dropped_control_or_never_does_not_fire() {
        assert!(timeout(SHORT, Drain::never().cut()).await.is_err());
        let (control, drain) = DrainControl::new();
        drop(control);
        assert!(timeout(SHORT, drain.draining()).await.is_err());
    }
}
