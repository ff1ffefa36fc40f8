//! One tunnel connection being served, as a future: accepts its CONNECT
//! streams (each goes on a task of its own) and PINGs the peer, until the
//! connection closes. [`super::lifetime`] drives it and may start its
//! graceful shutdown (GOAWAY).

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use bytes::Bytes;
use h2::{server::Connection, server::SendResponse, RecvStream};
use http::Request;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::{Inbound, Peer};

/// A served tunnel connection; resolves when it has closed.
pub(super) struct Served {
    conn: Connection<TlsStream<TcpStream>, Bytes>,
    keepalive: Pin<Box<dyn Future<Output = &'static str> + Send>>,
    inbound: Arc<Inbound>,
    peer: Arc<Peer>,
}

/// Why a served connection ended other than cleanly.
#[derive(Debug, thiserror::Error)]
pub(super) enum Ended {
    #[error("HTTP/2: {0}")]
    Http(#[from] h2::Error),
    #[error("{0}")]
    Keepalive(&'static str),
}

impl Served {
    pub(super) fn new(
        mut conn: Connection<TlsStream<TcpStream>, Bytes>,
        inbound: Arc<Inbound>,
        peer: Arc<Peer>,
    ) -> Self {
        let keepalive = Box::pin(crate::tunnel::keepalive(conn.ping_pong()));
        Self {
            conn,
            keepalive,
            inbound,
            peer,
        }
    }

    /// Sends GOAWAY: no new streams; the open ones finish.
    pub(super) fn graceful_shutdown(self: Pin<&mut Self>) {
        self.get_mut().conn.graceful_shutdown();
    }

    fn spawn(&self, req: Request<RecvStream>, respond: SendResponse<Bytes>) {
        let (inbound, peer) = (self.inbound.clone(), self.peer.clone());
        tokio::spawn(async move { super::stream(req, respond, &inbound, &peer).await });
    }
}

impl Future for Served {
    type Output = Result<(), Ended>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Poll::Ready(why) = this.keepalive.as_mut().poll(cx) {
            return Poll::Ready(Err(Ended::Keepalive(why)));
        }
        // Accepting also drives the connection: frames of open streams,
        // window updates, PINGs and the GOAWAY's end.
        loop {
            match ready!(this.conn.poll_accept(cx)) {
                Some(Ok((req, respond))) => this.spawn(req, respond),
                Some(Err(e)) => return Poll::Ready(Err(e.into())),
                None => return Poll::Ready(Ok(())),
            }
        }
    }
}
