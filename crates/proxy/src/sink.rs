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
    io::{self, Write},
    time::Duration,
};

/// How long the writer thread waits after a flush: lines appear at most
/// this much later than without it.
pub const LINGER: Duration = Duration::from_millis(5);

/// A buffered writer whose `flush` writes everything out and then waits
/// [`LINGER`] (see the module docs). Only for a dedicated writer thread:
/// the wait blocks the caller.
///
/// Callers write whole lines, one `write_all` each. A batch goes to the
/// inner writer in a single `write_all` (for stdout, under one hold of its
/// lock), so the lines of two writer threads sharing stdout never
/// interleave. A batch the inner writer fails to take is discarded and its
/// lines are counted ([`BatchingWriter::take_lost_lines`]).
pub struct BatchingWriter<W: Write> {
    inner: W,
    batch: Vec<u8>,
    linger: Duration,
    lost_lines: u64,
}

/// Bytes collected before a batch is written even without a flush.
const BATCH: usize = 64 * 1024;

impl<W: Write> BatchingWriter<W> {
    /// Wraps `out`.
    pub fn new(out: W) -> Self {
        Self::with_linger(out, LINGER)
    }

    /// As [`BatchingWriter::new`], lingering `linger` after each flush.
    pub fn with_linger(out: W, linger: Duration) -> Self {
        Self {
            inner: out,
            batch: Vec::with_capacity(BATCH),
            linger,
            lost_lines: 0,
        }
    }

    /// Lines discarded because the inner writer failed, since last asked.
    pub fn take_lost_lines(&mut self) -> u64 {
        std::mem::take(&mut self.lost_lines)
    }

    fn write_batch(&mut self) -> io::Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let result = self.inner.write_all(&self.batch);
        if result.is_err() {
            self.lost_lines += self.batch.iter().filter(|&&b| b == b'\n').count() as u64;
        }
        self.batch.clear();
        result
    }
}

impl<W: Write> Write for BatchingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        if self.batch.len() + buf.len() > BATCH {
            self.write_batch()?;
        }
        self.batch.extend_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        let result = self.write_batch().and_then(|()| self.inner.flush());
        if !self.linger.is_zero() {
            std::thread::sleep(self.linger);
        }
        result
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

    struct Failing;

    impl Write for Failing {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_a_broken_sink_refused_are_counted() {
        let mut w = BatchingWriter::with_linger(Failing, Duration::ZERO);
        w.write_all(b"one\n").expect("buffered");
        w.write_all(b"two\n").expect("buffered");
        assert!(w.flush().is_err());
        assert_eq!(w.take_lost_lines(), 2);
        assert_eq!(w.take_lost_lines(), 0, "taken");
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
