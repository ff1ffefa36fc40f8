//! A tunnel stream as a byte stream: one HTTP/2 CONNECT stream, driven
//! through `h2` directly, on either side of the tunnel.
//!
//! hyper's upgraded CONNECT stream would sit between the relay and `h2`: it
//! copies each write into a boxed slice and hands it over a channel to a
//! task of its own that waits for flow-control capacity, so every write
//! costs an allocation, a task wake-up and that task's memory for the
//! stream's whole life. Here the relay's own task asks `h2` for capacity
//! and queues the frame itself.

use std::{
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    task::{ready, Context, Poll},
};

use bytes::{Buf, Bytes};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Counts a client stream against its pooled connection until dropped.
pub(super) struct StreamSlot(pub(super) Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An open tunnel stream. Dropped, it ends our half (END_STREAM) as a
/// closed socket sends FIN; [`Stream::reset`] is the reset.
pub struct Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// What is left of the last DATA frame, not yet read.
    unread: Bytes,
    /// Bytes sent with the CONNECT, before the destination accepted it.
    early: u64,
    /// END_STREAM was sent.
    shut: bool,
    /// A client stream's place in its pooled connection's count.
    _slot: Option<StreamSlot>,
}

impl Stream {
    /// A client stream the pool opened, with `early` bytes sent with its
    /// CONNECT.
    pub(super) fn opened(
        send: SendStream<Bytes>,
        recv: RecvStream,
        early: u64,
        slot: StreamSlot,
    ) -> Self {
        let mut stream = Self::accepted(send, recv);
        stream.early = early;
        stream._slot = Some(slot);
        stream
    }

    /// A stream the tunnel server accepted: the request's body and the
    /// sending half of its `200`.
    pub fn accepted(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        Self {
            send,
            recv,
            unread: Bytes::new(),
            early: 0,
            shut: false,
            _slot: None,
        }
    }

    /// Bytes of the caller's that went with the CONNECT (optimistic
    /// CONNECT), before this stream was handed to the relay.
    pub fn sent_early(&self) -> u64 {
        self.early
    }

    /// Resets the stream (the relay failed, was revoked or cut).
    /// CONNECT_ERROR is RFC 9113's reason for a tunnelled TCP connection
    /// that was reset or failed (§8.5): the other proxy resets its side's
    /// connection too, so a cut upload never reads as a complete one.
    pub fn reset(&mut self) {
        self.send.send_reset(Reason::CONNECT_ERROR);
    }

    /// Ends our half (END_STREAM), once: shutdown and drop both come here.
    fn end(&mut self) -> Result<(), h2::Error> {
        if self.shut {
            return Ok(());
        }
        self.shut = true;
        self.send.send_data(Bytes::new(), true)
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.unread.is_empty() {
            match ready!(this.recv.poll_data(cx)) {
                None => return Poll::Ready(Ok(())),
                // An empty frame (END_STREAM alone) is read past.
                Some(Ok(data)) => this.unread = data,
                Some(Err(e)) => return Poll::Ready(read_error(e)),
            }
        }
        let n = this.unread.len().min(buf.remaining());
        buf.put_slice(&this.unread[..n]);
        this.unread.advance(n);
        // The window reopens as the relay takes bytes, so a slow pod holds
        // back its sender instead of growing a buffer here.
        let _ = this.recv.flow_control().release_capacity(n);
        Poll::Ready(Ok(()))
    }
}

/// A stream error as the relay sees it. NO_ERROR is the one clean end: a
/// server that has sent its whole response tells the client to stop
/// sending with it. Any other reset means the other end's connection broke
/// (CONNECT_ERROR, or CANCEL from a proxy whose relay was dropped), and RFC
/// 9113 §8.5 has the proxy reset its TCP connection in turn, so it reads as
/// a reset; hyper's upgraded stream read CANCEL as end of stream, which
/// passed a cut connection on as a clean close.
fn read_error(e: h2::Error) -> io::Result<()> {
    match e.reason() {
        Some(Reason::NO_ERROR) => Ok(()),
        Some(Reason::CONNECT_ERROR | Reason::CANCEL) => {
            Err(io::Error::new(io::ErrorKind::ConnectionReset, e))
        }
        Some(Reason::STREAM_CLOSED) => Err(io::Error::new(io::ErrorKind::BrokenPipe, e)),
        _ => Err(h2_to_io(e)),
    }
}

/// An `h2` error as an I/O error, keeping the socket's own error when the
/// connection failed underneath.
pub(super) fn h2_to_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        e.into_io()
            .unwrap_or_else(|| io::Error::other("HTTP/2 I/O error"))
    } else {
        io::Error::other(e)
    }
}

impl AsyncWrite for Stream {
    /// Queues `buf` as one DATA frame once the stream has any send
    /// capacity. Capacity is asked for only with bytes to send: capacity
    /// reserved by an idle stream would be taken from the connection's
    /// window, which its other streams share. `h2` splits and paces the
    /// frame by the windows, and reports capacity only while less than the
    /// connection's send buffer is queued, which is the writer's
    /// backpressure.
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = self.get_mut();
        while this.send.capacity() == 0 {
            this.send.reserve_capacity(1);
            match ready!(this.send.poll_capacity(cx)) {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
                // No longer open for sending: reset by the peer.
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
        let data = Bytes::copy_from_slice(buf);
        this.send.send_data(data, false).map_err(h2_to_io)?;
        Poll::Ready(Ok(buf.len()))
    }

    /// Frames are written by the connection's task as soon as they are
    /// queued; there is nothing to flush here.
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Ends our half of the stream (END_STREAM); reading goes on. A peer
    /// that has already told us to stop sending (RST_STREAM NO_ERROR, as a
    /// server does after its whole response) leaves nothing to end: that is
    /// no error.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.end() {
            let stopped = matches!(this.send.poll_reset(cx), Poll::Ready(Ok(Reason::NO_ERROR)));
            if !stopped {
                return Poll::Ready(Err(h2_to_io(e)));
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for Stream {
    /// A stream dropped before its end is closed as a dropped socket is,
    /// with END_STREAM where TCP sends FIN: hyper's HTTP server ends a
    /// connection by dropping it (a timeout, a malformed request), and the
    /// caller must see that close, not a reset. A relay that failed has
    /// reset the stream already ([`Stream::reset`]), and then this does
    /// nothing.
    fn drop(&mut self) {
        let _ = self.end();
    }
}
