use std::{
    pin::Pin,
    task::{Context, Poll, Waker},
};

use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;

/// Bytes that differ from one offset to the next, so a lost, repeated or
/// reordered chunk shows.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 11) as u8)
        .collect()
}

/// client ⇄ a ==relay== b ⇄ server, with duplex pipes of `cap` bytes.
fn relayed(
    cap: usize,
) -> (
    DuplexStream,
    DuplexStream,
    tokio::task::JoinHandle<io::Result<(u64, u64)>>,
) {
    let (client, mut a) = duplex(cap);
    let (mut b, server) = duplex(cap);
    let relay = tokio::spawn(async move { bidirectional(&mut a, &mut b).await });
    (client, server, relay)
}

#[tokio::test]
async fn small_exchange_and_half_close_each_way() {
    let (mut client, mut server, relay) = relayed(64 * 1024);
    client.write_all(b"hello").await.expect("io");
    client.shutdown().await.expect("io");
    let mut got = Vec::new();
    server.read_to_end(&mut got).await.expect("io");
    assert_eq!(got, b"hello");
    // The other direction still works after the first one ended.
    server.write_all(b"world!").await.expect("io");
    server.shutdown().await.expect("io");
    let mut back = Vec::new();
    client.read_to_end(&mut back).await.expect("io");
    assert_eq!(back, b"world!");
    assert_eq!(relay.await.expect("io").expect("io"), (5, 6));
}

/// Both directions at once, through pipes far smaller than the data, so
/// writes are refused and held bytes must survive until the end of stream.
#[tokio::test]
async fn large_transfers_both_ways_under_backpressure() {
    for cap in [1000, 7 * 1024, 256 * 1024] {
        let (client, server, relay) = relayed(cap);
        let up = pattern(3 << 20, 1);
        let down = pattern((1 << 20) + 17, 2);
        let (mut cr, mut cw) = tokio::io::split(client);
        let (mut sr, mut sw) = tokio::io::split(server);
        let (up2, down2) = (up.clone(), down.clone());
        let send_up = tokio::spawn(async move {
            cw.write_all(&up2).await.expect("io");
            cw.shutdown().await.expect("io");
        });
        let send_down = tokio::spawn(async move {
            sw.write_all(&down2).await.expect("io");
            sw.shutdown().await.expect("io");
        });
        let read_up = tokio::spawn(async move {
            let mut v = Vec::new();
            sr.read_to_end(&mut v).await.expect("io");
            v
        });
        let mut got_down = Vec::new();
        cr.read_to_end(&mut got_down).await.expect("io");
        let got_up = read_up.await.expect("io");
        send_up.await.expect("io");
        send_down.await.expect("io");
        assert!(got_up == up, "upstream bytes differ with a {cap}-byte pipe");
        assert!(
            got_down == down,
            "downstream bytes differ with a {cap}-byte pipe"
        );
        let counts = relay.await.expect("io").expect("io");
        assert_eq!(counts, (up.len() as u64, down.len() as u64));
    }
}

struct Broken;

impl AsyncRead for Broken {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Poll::Pending
    }
}

impl AsyncWrite for Broken {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn a_write_error_ends_the_copy_with_it() {
    let (mut client, mut a) = duplex(1024);
    client.write_all(b"x").await.expect("io");
    let err = bidirectional(&mut a, &mut Broken)
        .await
        .expect_err("the write fails");
    assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
}

/// Polls `pipe` once, copying `from` → `to`.
fn poll_once(
    pipe: &mut Pipe,
    from: &mut DuplexStream,
    to: &mut DuplexStream,
) -> Poll<io::Result<u64>> {
    let mut cx = Context::from_waker(Waker::noop());
    pipe.poll_copy(&mut cx, Pin::new(from), Pin::new(to))
}

/// An idle direction holds no buffer; a full read switches to the bulk
/// buffer, which stays while the sender is ahead (here: the writer is
/// stuck, so bytes are held) and goes once the direction has caught up.
#[tokio::test]
async fn buffer_grows_for_bulk_and_is_freed_once_caught_up() {
    let (mut source, mut from) = duplex(1 << 20);
    let (mut to, mut sink) = duplex(16 * 1024);
    let mut pipe = Pipe::default();
    assert!(poll_once(&mut pipe, &mut from, &mut to).is_pending());
    assert_eq!(pipe.held.capacity(), 0, "idle: no buffer");

    source.write_all(&[7; 100]).await.expect("io");
    assert!(poll_once(&mut pipe, &mut from, &mut to).is_pending());
    assert!(
        !pipe.bulk && pipe.held.capacity() == 0,
        "small reads stay on the stack"
    );

    let big = pattern(256 * 1024, 3);
    source.write_all(&big).await.expect("io");
    assert!(poll_once(&mut pipe, &mut from, &mut to).is_pending());
    assert!(
        pipe.bulk && pipe.held.len() == RELAY_BUF && pipe.start < pipe.end,
        "a full read goes bulk, and the stuck writer leaves bytes held"
    );

    // The sink reads everything while the pipe is polled until it is idle.
    let expected = 100 + big.len();
    let reader = tokio::spawn(async move {
        let mut all = vec![0; expected];
        sink.read_exact(&mut all).await.expect("io");
        (all, sink)
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while pipe.copied < expected as u64 && std::time::Instant::now() < deadline {
        let _ = poll_once(&mut pipe, &mut from, &mut to);
        tokio::task::yield_now().await;
    }
    let (all, _sink) = reader.await.expect("reader");
    assert_eq!(&all[100..], &big[..]);
    assert!(poll_once(&mut pipe, &mut from, &mut to).is_pending());
    assert!(
        !pipe.bulk && pipe.held.capacity() == 0,
        "caught up: the bulk buffer is freed"
    );
}

/// Accepts everything, remembering the size of each write.
#[derive(Default)]
struct WriteSizes(Vec<usize>);

impl AsyncWrite for WriteSizes {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.0.push(buf.len());
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A burst bigger than the stack buffer goes out in one write, not as the
/// first 4 KiB and then the rest (an extra DATA frame and TLS record on a
/// tunnel), also when the direction had gone back to the stack.
#[tokio::test]
async fn a_burst_goes_out_in_one_write() {
    let (mut source, mut from) = duplex(1 << 20);
    let mut sink = WriteSizes::default();
    let mut pipe = Pipe::default();
    let mut cx = Context::from_waker(Waker::noop());
    for round in 0..3 {
        source
            .write_all(&pattern(32 * 1024, round))
            .await
            .expect("io");
        let polled = pipe.poll_copy(&mut cx, Pin::new(&mut from), Pin::new(&mut sink));
        assert!(polled.is_pending());
        assert_eq!(sink.0, [32 * 1024], "round {round}");
        assert_eq!(pipe.held.capacity(), 0, "caught up: buffer freed");
        sink.0.clear();
    }
}
