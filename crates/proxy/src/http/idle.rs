//! The client connection's idle timer: when did the connection last make
//! progress? [`Activity`] is stamped when a request head arrives, when the
//! pod's response head arrives, and whenever body bytes move either way
//! (the `Counted` body polls); [`Activity::deadline`] tells `drive` when the
//! connection has made no progress for too long.
//!
//! Progress, not socket bytes: an HTTP/2 client can keep a connection busy
//! with frames that move nothing (a PING every few minutes, answered by the
//! proxy's ACK) while it holds every stream's window at zero and the proxy
//! buffers responses it never reads. Counting progress also catches a
//! request body that stalls, an HTTP/2 connection kept open with nothing on
//! it, and a client that stopped reading its response (the proxy cannot
//! write, so the response body is not polled).

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use tokio::time::Instant;

/// When the connection last made progress, in milliseconds since it started.
pub(super) struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }
}

impl Activity {
    /// Notes progress now.
    pub(super) fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// When the connection counts as idle if it makes no progress before then.
    pub(super) fn deadline(&self, idle: Duration) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + idle
    }
}
