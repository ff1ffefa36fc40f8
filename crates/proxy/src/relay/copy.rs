//! Bidirectional copy whose buffers follow the traffic.
//!
//! Most meshed connections are idle most of the time, or carry small
//! request/response exchanges. A fixed buffer per direction (tokio's
//! `copy_bidirectional` allocates two up front) costs its size on every
//! connection from accept to close, whether it is used or not. Here a
//! direction reads into a small buffer on the poll's stack and writes it out
//! at once, so a connection holds no relay buffer between reads. Only when a
//! read fills the small buffer does the direction switch to a heap buffer of
//! `RELAY_BUF` bytes (bulk mode, fewer syscalls per byte, and the burst
//! that filled the small buffer goes out in one write); it frees that
//! buffer and returns to the stack once it has caught up with the sender
//! (nothing left to read or write), so a connection idle after a large
//! transfer holds no buffer either. Bytes the
//! writer cannot take yet are kept on the heap until it can.

use std::{
    future::poll_fn,
    io,
    mem::MaybeUninit,
    pin::Pin,
    task::{ready, Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::RELAY_BUF;

/// Reads up to this size go through a buffer on the stack.
const SMALL: usize = 4 * 1024;
/// Read/write rounds per poll before yielding, so that one busy connection
/// cannot hold a worker thread whatever its peers' readiness.
const ROUNDS_PER_POLL: u32 = 64;

/// Copies `a` → `b` and `b` → `a` until both directions have seen end of
/// stream (each end-of-stream is passed on as a write shutdown). Returns the
/// bytes copied each way, or the first error.
pub async fn bidirectional<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut a_to_b = Pipe::default();
    let mut b_to_a = Pipe::default();
    poll_fn(|cx| {
        let forward = a_to_b.poll_copy(cx, Pin::new(&mut *a), Pin::new(&mut *b))?;
        let backward = b_to_a.poll_copy(cx, Pin::new(&mut *b), Pin::new(&mut *a))?;
        match (forward, backward) {
            (Poll::Ready(sent), Poll::Ready(received)) => Poll::Ready(Ok((sent, received))),
            _ => Poll::Pending,
        }
    })
    .await
}

/// One direction's state.
#[derive(Default)]
struct Pipe {
    /// Bytes read but not yet written are `held[start..end]`. In bulk mode
    /// `held` is the [`RELAY_BUF`] read buffer; otherwise it is empty, or
    /// holds exactly the bytes the writer refused.
    held: Vec<u8>,
    start: usize,
    end: usize,
    bulk: bool,
    read_done: bool,
    need_flush: bool,
    shut: bool,
    copied: u64,
}

impl Pipe {
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        if self.shut {
            return Poll::Ready(Ok(self.copied));
        }
        for _ in 0..ROUNDS_PER_POLL {
            ready!(self.poll_drain(cx, writer.as_mut()))?;
            if self.read_done {
                ready!(writer.as_mut().poll_flush(cx))?;
                ready!(writer.as_mut().poll_shutdown(cx))?;
                self.shut = true;
                return Poll::Ready(Ok(self.copied));
            }
            let read = if self.bulk {
                self.poll_read_bulk(cx, reader.as_mut())
            } else {
                self.poll_read_small(cx, reader.as_mut(), writer.as_mut())
            };
            if read?.is_pending() {
                self.release_if_caught_up();
                if self.need_flush {
                    ready!(writer.as_mut().poll_flush(cx))?;
                    self.need_flush = false;
                }
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// A bulk direction that has read and written everything there was gives
    /// its buffer back before it parks: a keep-alive connection that once
    /// carried a large response must not hold 64 KiB while idle. A sender
    /// that keeps ahead of the relay never lets it park, and keeps it; one
    /// that is just slower pays a reallocation per burst.
    fn release_if_caught_up(&mut self) {
        if self.bulk && self.start == self.end {
            self.bulk = false;
            self.held = Vec::new();
        }
    }

    /// Writes out held bytes; once they are all written, a non-bulk pipe
    /// lets go of its buffer.
    fn poll_drain<W: AsyncWrite + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<()>> {
        while self.start < self.end {
            let n = ready!(writer
                .as_mut()
                .poll_write(cx, &self.held[self.start..self.end]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.start += n;
            self.copied += n as u64;
            self.need_flush = true;
        }
        if !self.bulk && !self.held.is_empty() {
            self.held = Vec::new();
        }
        Poll::Ready(Ok(()))
    }

    /// Reads into a stack buffer and writes straight on; only what the
    /// writer refuses is copied to the heap. A read that fills the stack
    /// buffer means the sender is ahead: the direction goes bulk, and the
    /// bytes wait for the rest of the burst, so it goes out in one write.
    fn poll_read_small<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        // Uninitialised: the reader fills what it reads, nothing is cleared.
        let mut stack = [MaybeUninit::<u8>::uninit(); SMALL];
        let mut buf = ReadBuf::uninit(&mut stack);
        ready!(reader.as_mut().poll_read(cx, &mut buf))?;
        let data = buf.filled();
        if data.is_empty() {
            self.read_done = true;
            return Poll::Ready(Ok(()));
        }
        if data.len() == SMALL {
            self.go_bulk(data);
            return Poll::Ready(self.top_up(cx, reader));
        }
        let mut written = 0;
        while written < data.len() {
            match writer.as_mut().poll_write(cx, &data[written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => break,
            }
        }
        self.copied += written as u64;
        self.need_flush |= written > 0;
        let rest = &data[written..];
        if !rest.is_empty() {
            self.held = rest.to_vec();
        }
        self.start = 0;
        self.end = rest.len();
        Poll::Ready(Ok(()))
    }

    /// Switches to the heap buffer, holding `data` at its start.
    fn go_bulk(&mut self, data: &[u8]) {
        self.bulk = true;
        self.held = vec![0; RELAY_BUF];
        self.held[..data.len()].copy_from_slice(data);
        self.start = 0;
        self.end = data.len();
    }

    /// Reads what more there is behind the held bytes; nothing to read yet
    /// is fine (the held bytes go out first, the reader's waker is set).
    fn top_up<R: AsyncRead + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        reader: Pin<&mut R>,
    ) -> io::Result<()> {
        let mut buf = ReadBuf::new(&mut self.held[self.end..]);
        match reader.poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len();
                self.read_done = n == 0;
                self.end += n;
                Ok(())
            }
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Ok(()),
        }
    }

    /// Reads into the heap buffer (empty: everything was written).
    fn poll_read_bulk<R: AsyncRead + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        reader: Pin<&mut R>,
    ) -> Poll<io::Result<()>> {
        let mut buf = ReadBuf::new(&mut self.held);
        ready!(reader.poll_read(cx, &mut buf))?;
        let n = buf.filled().len();
        self.start = 0;
        self.end = n;
        self.read_done = n == 0;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests;
