//! Resets across the tunnel: streams the client resets before the server
//! answered them, and a reset on either side of a relayed connection
//! passed on as a reset, not a clean close.

use super::*;

#[tokio::test]
async fn a_stream_reset_while_it_is_dialled_gives_its_dial_slot_back() {
    let (mesh, _second, hanging) = one_dial_pending(WAIT).await;
    assert!(!mesh.dial_slot_free().await, "the dial holds the only slot");
    // Dropping the response resets the stream (RST_STREAM CANCEL).
    hanging.abort();
    // Well before the dial's own timeout.
    timeout(Duration::from_secs(3), async {
        while mesh.recorder.pending() > 0 {
            sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the reset stream's dial was dropped");
    assert!(mesh.dial_slot_free().await, "its slot went with it");
    assert_eq!(mesh.recorder.count("refused:dial_limit"), 0);
}

/// A stream through the pool to a destination of the test's own, and that
/// destination's end of the connection the server dialled.
async fn relayed(mesh: &Mesh) -> (crate::tunnel::Stream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let target = Target {
        authority: listener.local_addr().expect("addr"),
        ..mesh.target()
    };
    let stream = timeout(WAIT, mesh.pool.connect(target))
        .await
        .expect("answered")
        .expect("stream");
    let (destination, _) = timeout(WAIT, listener.accept())
        .await
        .expect("dialled")
        .expect("accept");
    (stream, destination)
}

fn is_reset<T: std::fmt::Debug>(read: &std::io::Result<T>) -> bool {
    matches!(read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
}

#[tokio::test]
async fn a_stream_its_caller_aborts_resets_the_destinations_connection() {
    let mesh = Mesh::start(Settings::default(), ALLOW_ALL, Upstream::Echo).await;
    let (mut stream, mut destination) = relayed(&mesh).await;
    stream.write_all(b"half an upload").await.expect("write");
    let mut got = [0u8; 14];
    timeout(WAIT, destination.read_exact(&mut got))
        .await
        .expect("relayed in time")
        .expect("read");
    // What the caller's proxy does when the pod's connection breaks.
    crate::relay::Abort::abort(&mut stream);
    let mut rest = [0u8; 16];
    let read = timeout(WAIT, destination.read(&mut rest))
        .await
        .expect("ended in time");
    // End of stream would pass the cut upload on as a complete one.
    assert!(is_reset(&read), "{read:?}");
}

#[tokio::test]
async fn a_destination_that_resets_its_connection_resets_the_callers_stream() {
    let mesh = Mesh::start(Settings::default(), ALLOW_ALL, Upstream::Echo).await;
    let (mut stream, destination) = relayed(&mesh).await;
    destination.set_zero_linger().expect("linger");
    drop(destination);
    let mut buf = [0u8; 16];
    let read = timeout(WAIT, stream.read(&mut buf))
        .await
        .expect("ended in time");
    assert!(is_reset(&read), "{read:?}");
}

#[tokio::test]
async fn a_connection_the_destinations_http_server_times_out_reads_as_closed_not_reset() {
    let limits = http::Limits {
        header_read_timeout: Duration::from_millis(300),
        idle_timeout: WAIT,
    };
    let mesh =
        Mesh::start_with_http_limits(Settings::default(), HTTP_ALLOW, Upstream::Http, limits).await;
    let mut stream = mesh.pooled().await;
    assert_eq!(http_status(&mut stream, "/").await, Some(200));
    // No next request: node-b's HTTP server drops the keep-alive connection
    // at its header read timeout, and a local caller would see a FIN.
    let mut rest = Vec::new();
    let read = timeout(WAIT, stream.read_to_end(&mut rest))
        .await
        .expect("ended in time");
    assert!(read.is_ok(), "{read:?}");
}

#[tokio::test]
async fn the_callers_end_after_a_closing_http_response_is_no_error() {
    let mesh = Mesh::start(Settings::default(), HTTP_ALLOW, Upstream::Http).await;
    let mut stream = mesh.pooled().await;
    let request = b"GET / HTTP/1.1\r\nhost: backend\r\nconnection: close\r\n\r\n";
    stream.write_all(request).await.expect("write");
    let mut response = Vec::new();
    timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("answered in time")
        .expect("response");
    assert!(response.starts_with(b"HTTP/1.1 200"), "{response:?}");
    // Its END_STREAM is followed by RST_STREAM NO_ERROR (stop sending): the
    // caller's own end, when it comes, has nothing left to end.
    sleep(Duration::from_millis(200)).await;
    stream.shutdown().await.expect("a clean end");
}
