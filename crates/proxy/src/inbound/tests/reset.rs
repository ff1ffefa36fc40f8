//! Resets across the tunnel: streams the client resets before the server
//! answered them, and a reset on either side of a relayed connection
//! passed on as a reset, not a clean close.

use super::*;

#[tokio::test]
async fn a_stream_reset_while_it_is_dialled_gives_its_dial_slot_back() {
    let (mesh, mut second, hanging) = one_dial_pending().await;
    // Dropping the response resets the stream (RST_STREAM CANCEL).
    hanging.abort();
    // Well before the dial's own 10-s timeout.
    timeout(Duration::from_secs(3), async {
        while mesh.recorder.pending() > 0 {
            sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the reset stream's dial was dropped");
    // The calling node may dial again: this stream waits on its own dial
    // instead of getting 503 at once.
    let next = timeout(Duration::from_secs(1), second.connect(mesh.backend)).await;
    if let Ok(answer) = next {
        let status = answer.expect("a response").status();
        assert_ne!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
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
