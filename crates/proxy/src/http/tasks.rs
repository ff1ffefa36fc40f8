//! An executor whose tasks belong to one connection.
//!
//! hyper spawns tasks of its own (HTTP/2 streams, the upstream HTTP/2
//! connection, request bodies). On a plain tokio executor they would outlive
//! a cancelled `serve`, keeping the upstream socket open; here dropping the
//! [`Tasks`] aborts them all.

use std::{
    future::Future,
    sync::{Arc, Mutex, PoisonError, Weak},
};

use tokio::task::JoinSet;

/// Owner of a connection's tasks: dropping it aborts every one of them.
pub(super) struct Tasks(Arc<Mutex<JoinSet<()>>>);

/// Spawns into a [`Tasks`]. Holds it weakly, because the tasks themselves
/// hold executors and must not keep their owner alive.
#[derive(Clone)]
pub(super) struct Exec(Weak<Mutex<JoinSet<()>>>);

impl Tasks {
    pub(super) fn new() -> Self {
        Self(Arc::new(Mutex::new(JoinSet::new())))
    }

    pub(super) fn executor(&self) -> Exec {
        Exec(Arc::downgrade(&self.0))
    }
}

impl Exec {
    /// Runs `fut` until it ends or the owner is dropped. Once the owner is
    /// gone the connection is being torn down, and `fut` is dropped unrun.
    pub(super) fn spawn<F>(&self, fut: F)
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let Some(set) = self.0.upgrade() else {
            return;
        };
        let mut set = set.lock().unwrap_or_else(PoisonError::into_inner);
        // Reap finished tasks so a long-lived connection's set stays small.
        while set.try_join_next().is_some() {}
        set.spawn(async move {
            fut.await;
        });
    }
}

impl<F> hyper::rt::Executor<F> for Exec
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        self.spawn(fut);
    }
}
