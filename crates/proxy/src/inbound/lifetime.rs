//! One tunnel connection's life after its handshake. Its streams are
//! counted; the identity it speaks for is re-checked whenever the workloads
//! file is reloaded; and the server ends it on its own when that identity
//! left the node that signed it (at once: its relays are cut), when no
//! stream was open for the idle timeout, or at its maximum age (GOAWAY:
//! new streams go to a new connection, open ones get a grace). Its relays
//! watch a drain of their own, which follows the proxy's drain and is cut
//! when the connection closes under them.

use std::{future::Future, net::SocketAddr, pin::Pin, sync::Arc, time::Duration};

use tokio::{
    sync::{watch, Notify},
    time::{sleep_until, Instant},
};

use super::limits::Settings;
use crate::{
    drain::{Drain, DrainControl},
    telemetry::Observer,
};

/// How long a connection being closed gets to send its GOAWAY and resets
/// before it is dropped, whatever the peer does.
const SETTLE: Duration = Duration::from_secs(2);

/// What a connection shares with its streams.
pub(super) struct Tracker {
    /// Streams in progress: refused ones until answered, relayed ones until
    /// the relay ends.
    open: watch::Sender<usize>,
    /// A stream found that the peer's identity left its node.
    left: Notify,
    /// What this connection's relays watch instead of the proxy's drain.
    relays: Drain,
}

/// One stream in progress; dropping it ends it.
pub(super) struct Open(Arc<Tracker>);

/// Why the server ends a connection on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Close {
    /// The peer's identity left the node that signed its certificate.
    IdentityLeftNode,
    /// The connection reached its maximum age.
    MaxAge,
    /// No stream was open for the idle timeout.
    Idle,
}

/// What a connection's supervisor watches and reports to.
pub(super) struct Watched<'a> {
    pub tracker: &'a Tracker,
    /// Moves `tracker`'s relay drain.
    pub control: DrainControl,
    /// Whether the workloads file still puts the peer's identity on the
    /// node that signed it.
    pub still_hosted: &'a (dyn Fn() -> bool + Send + Sync),
    /// Changes on every workloads reload.
    pub workloads: watch::Receiver<()>,
    /// Flips when the proxy stops accepting.
    pub shutdown: watch::Receiver<bool>,
    /// The proxy's drain, which the relays follow.
    pub proxy: &'a Drain,
    pub settings: &'a Settings,
    pub observer: &'a Observer,
    pub peer: SocketAddr,
}

/// What woke the supervisor.
enum Event {
    Stop,
    ProxyDraining,
    ProxyCut,
    Reloaded,
    WorkloadsGone,
    Left,
    Aged,
    Idle,
    Streams(usize),
    CutRelays,
}

/// The supervisor's state; see [`supervise`].
struct Supervisor<'a> {
    w: Watched<'a>,
    started: Instant,
    closing: Option<Close>,
    goaway_sent: bool,
    stopping: bool,
    proxy_draining: bool,
    proxy_cut: bool,
    watching_workloads: bool,
    idle_since: Option<Instant>,
    cut_at: Option<Instant>,
    abort_at: Option<Instant>,
}

impl Tracker {
    /// A tracker and the control of its relays' drain.
    pub(super) fn new() -> (Arc<Self>, DrainControl) {
        let (control, relays) = DrainControl::new();
        let tracker = Self {
            open: watch::Sender::new(0),
            left: Notify::new(),
            relays,
        };
        (Arc::new(tracker), control)
    }

    /// Counts a stream until the returned guard is dropped.
    pub(super) fn open(self: &Arc<Self>) -> Open {
        self.open.send_modify(|n| *n += 1);
        Open(self.clone())
    }

    /// A stream found the peer's identity gone: close the connection.
    pub(super) fn identity_left(&self) {
        self.left.notify_one();
    }

    /// The drain this connection's relays watch.
    pub(super) fn relays(&self) -> &Drain {
        &self.relays
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Close {
    /// Label value in `nodeward_tunnel_closed_total`, and the log's reason.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::IdentityLeftNode => "identity_left_node",
            Self::MaxAge => "max_age",
            Self::Idle => "idle",
        }
    }

    /// What the relays cut by this close log.
    fn cut_reason(self) -> &'static str {
        match self {
            Self::IdentityLeftNode => {
                "closed: the caller's identity left the node that signed its certificate"
            }
            Self::MaxAge => "closed: the tunnel connection reached its maximum age",
            Self::Idle => "closed: the tunnel connection was idle",
        }
    }
}

/// Drives `conn` (a served HTTP/2 connection) until it ends, or until the
/// server drops it after closing it on its own; `goaway` starts its
/// graceful shutdown. `None` when it was dropped.
pub(super) async fn supervise<C: Future>(
    mut conn: Pin<&mut C>,
    mut goaway: impl FnMut(Pin<&mut C>),
    w: Watched<'_>,
) -> Option<C::Output> {
    let mut streams = w.tracker.open.subscribe();
    let mut workloads = w.workloads.clone();
    let mut shutdown = w.shutdown.clone();
    let mut s = Supervisor::new(w);
    // A reload between the handshake's check and the subscription above
    // would otherwise go unseen.
    if !(s.w.still_hosted)() {
        s.close(Close::IdentityLeftNode);
    }
    loop {
        if s.goaway_due() {
            goaway(conn.as_mut());
        }
        let event = tokio::select! {
            out = conn.as_mut() => return Some(out),
            _ = shutdown.changed(), if !s.stopping => Event::Stop,
            () = s.w.proxy.draining(), if !s.proxy_draining => Event::ProxyDraining,
            () = s.w.proxy.cut(), if !s.proxy_cut => Event::ProxyCut,
            r = workloads.changed(), if s.watching_workloads => match r {
                Ok(()) => Event::Reloaded,
                Err(_) => Event::WorkloadsGone,
            },
            () = s.w.tracker.left.notified() => Event::Left,
            () = until(s.age_at()) => Event::Aged,
            () = until(s.idle_at()) => Event::Idle,
            _ = streams.changed() => Event::Streams(*streams.borrow_and_update()),
            () = until(s.cut_at) => Event::CutRelays,
            () = until(s.abort_at) => return None,
        };
        s.handle(event);
    }
}

impl<'a> Supervisor<'a> {
    fn new(w: Watched<'a>) -> Self {
        let now = Instant::now();
        Self {
            w,
            started: now,
            closing: None,
            goaway_sent: false,
            stopping: false,
            proxy_draining: false,
            proxy_cut: false,
            watching_workloads: true,
            idle_since: Some(now),
            cut_at: None,
            abort_at: None,
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Stop => self.stopping = true,
            Event::ProxyDraining => {
                self.proxy_draining = true;
                self.w.control.start();
            }
            Event::ProxyCut => {
                self.proxy_cut = true;
                self.w.control.cut();
                self.abort_at = Some(Instant::now() + SETTLE);
            }
            Event::Reloaded if !(self.w.still_hosted)() => self.close(Close::IdentityLeftNode),
            Event::Reloaded => {}
            Event::WorkloadsGone => self.watching_workloads = false,
            Event::Left => self.close(Close::IdentityLeftNode),
            Event::Aged => self.close(Close::MaxAge),
            Event::Idle => self.close(Close::Idle),
            Event::Streams(open) => self.idle_since = (open == 0).then(Instant::now),
            Event::CutRelays => {
                self.cut_at = None;
                let why = self.closing.map_or("closed", Close::cut_reason);
                self.w.control.cut_with(why);
                self.abort_at = Some(Instant::now() + SETTLE);
            }
        }
    }

    /// Starts closing for `reason`, unless a close that ends the
    /// connection at least as soon is under way. Only a departed identity
    /// overrides an earlier close: its relays are cut at once.
    fn close(&mut self, reason: Close) {
        match self.closing {
            Some(Close::IdentityLeftNode) => return,
            Some(_) if reason != Close::IdentityLeftNode => return,
            _ => {}
        }
        self.closing = Some(reason);
        self.w.observer.tunnel_closed(reason.as_str());
        tracing::info!(target: "nodeward::access", event = "tunnel_closed", reason = reason.as_str(),
            peer = %self.w.peer, age_s = self.started.elapsed().as_secs(), "tunnel connection closed by the server");
        let now = Instant::now();
        // An idle connection gets the grace too: a stream its peer opened
        // before our GOAWAY reached it is served, not cut.
        let grace = match reason {
            Close::IdentityLeftNode => Duration::ZERO,
            Close::MaxAge | Close::Idle => self.w.settings.max_connection_age_grace,
        };
        self.cut_at = Some(now + grace);
    }

    /// Whether a GOAWAY should go out now (once: at a stop or a close).
    fn goaway_due(&mut self) -> bool {
        let due = !self.goaway_sent && (self.stopping || self.closing.is_some());
        self.goaway_sent |= due;
        due
    }

    fn age_at(&self) -> Option<Instant> {
        let open = self.closing.is_none() && !self.stopping;
        open.then(|| self.started + self.w.settings.max_connection_age)
    }

    fn idle_at(&self) -> Option<Instant> {
        let open = self.closing.is_none() && !self.stopping;
        self.idle_since
            .filter(|_| open)
            .map(|t| t + self.w.settings.idle_timeout)
    }
}

/// Completes at `at`; never without one.
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}
