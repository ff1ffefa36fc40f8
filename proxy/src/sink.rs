//! Output for the threads that write log and audit lines.
//!
//! Connections hand their lines to a queue drained by one writer thread.
//! If that thread sleeps in the queue's `recv` whenever the queue is empty,
//! every line written while it sleeps costs the connection's thread a wake
//! (a futex call) and the machine a context switch: under a stream of new
//! connections that was several percent of the proxy's CPU. A
//! [`BatchingWriter`] lingers for a moment after each flush instead, so the
//! lines of that moment queue up without waking anyone and go out in one
//! `write`.

use std::{
    io::{self, BufWriter, Write},
    time::Duration,
};

/// How long the writer thread waits after a flush: lines appear at most
/// this much later than without it.
pub const LINGER: Duration = Duration::from_millis(5);

/// A buffered writer whose `flush` writes everything out and then waits
/// [`LINGER`] (see the module docs). Only for a dedicated writer thread:
/// the wait blocks the caller.
pub struct BatchingWriter<W: Write> {
    inner: BufWriter<W>,
    linger: Duration,
}

impl<W: Write> BatchingWriter<W> {
    /// Wraps `out` with a 64 KiB buffer.
    pub fn new(out: W) -> Self {
        Self::with_linger(out, LINGER)
    }

    /// As [`BatchingWriter::new`], lingering `linger` after each flush.
    pub fn with_linger(out: W, linger: Duration) -> Self {
        Self {
            inner: BufWriter::with_capacity(64 * 1024, out),
            linger,
        }
    }
}

impl<W: Write> Write for BatchingWriter<W> {
    /// Callers write whole lines with `write_all`; the buffer passes on only
    /// whole lines, so they never interleave with another writer's.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.inner.write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()?;
        if !self.linger.is_zero() {
            std::thread::sleep(self.linger);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{Arc, Mutex},
        time::Instant,
    };

    use super::*;

    /// Records each `write` call it gets.
    #[derive(Clone, Default)]
    struct Calls(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Calls {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("calls").push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_go_out_together_on_flush_then_the_writer_lingers() {
        let calls = Calls::default();
        let mut w = BatchingWriter::with_linger(calls.clone(), Duration::from_millis(30));
        w.write_all(b"one\n").expect("write");
        w.write_all(b"two\n").expect("write");
        assert!(
            calls.0.lock().expect("calls").is_empty(),
            "buffered until flush"
        );
        let started = Instant::now();
        w.flush().expect("flush");
        assert!(
            started.elapsed() >= Duration::from_millis(30),
            "flush lingers"
        );
        assert_eq!(
            *calls.0.lock().expect("calls"),
            vec![b"one\ntwo\n".to_vec()]
        );
    }

    #[test]
    fn a_full_buffer_passes_on_whole_lines_only() {
        let calls = Calls::default();
        let mut w = BatchingWriter::with_linger(calls.clone(), Duration::ZERO);
        let mut line = [b'x'; 1000];
        line[999] = b'\n';
        for _ in 0..200 {
            w.write_all(&line).expect("write");
        }
        w.flush().expect("flush");
        let calls = calls.0.lock().expect("calls");
        assert!(calls.len() > 1, "200 KB went out in more than one write");
        for chunk in calls.iter() {
            assert_eq!(chunk.len() % 1000, 0, "a write cut a line");
        }
    }
}
