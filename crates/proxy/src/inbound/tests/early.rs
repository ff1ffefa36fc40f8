//! Optimistic CONNECT through the real pool and server: the caller's first
//! bytes go with the CONNECT, a silent caller waits for nothing, and the
//! early bytes of refused streams do not use up the connection's window.

use super::*;

use crate::tunnel::{TunnelError, CONNECTION_WINDOW, EARLY_DATA};

/// A connected loopback pair: the caller's end and the proxy's end (the
/// socket the outbound listener would have accepted).
pub(super) async fn caller_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let caller = TcpStream::connect(listener.local_addr().expect("addr"))
        .await
        .expect("connect");
    let (accepted, _) = listener.accept().await.expect("accept");
    (caller, accepted)
}

/// Asserts that `early` went with the stream's CONNECT and that the echo
/// upstream sent them back.
pub(super) async fn echoed_early(stream: &mut crate::tunnel::Stream, early: &[u8]) {
    assert_eq!(stream.sent_early(), early.len() as u64);
    let mut back = vec![0u8; early.len()];
    timeout(WAIT, stream.read_exact(&mut back))
        .await
        .expect("echo of the early bytes")
        .expect("read");
    assert_eq!(back, early);
}

/// Only a principal that never calls: frontend's streams are denied.
const ALLOW_NOBODY: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nobody, namespace: shop}
spec:
  selector: {matchLabels: {app: backend}}
  action: ALLOW
  rules: [{from: [{source: {principals: [\"cluster.local/ns/other/sa/nobody\"]}}]}]
";

/// A stream through the pool to `to`, for the caller whose socket the
/// proxy holds as `accepted`.
async fn connect_for(
    mesh: &Mesh,
    accepted: &TcpStream,
    to: SocketAddr,
) -> Result<crate::tunnel::Stream, TunnelError> {
    let target = Target {
        caller: Some(accepted),
        authority: to,
        ..mesh.target()
    };
    timeout(WAIT, mesh.pool.connect(target))
        .await
        .expect("answered")
}

#[tokio::test]
async fn the_callers_first_bytes_go_with_the_connect() {
    let mesh = Mesh::start(Settings::default(), ALLOW_ALL, Upstream::Echo).await;
    let (mut caller, accepted) = caller_pair().await;
    caller.write_all(b"hello first").await.expect("write");
    accepted.readable().await.expect("readable");
    let mut stream = connect_for(&mesh, &accepted, mesh.backend)
        .await
        .expect("stream");
    // Nothing written on the stream: the echo is of the bytes that went
    // with the CONNECT.
    echoed_early(&mut stream, b"hello first").await;
    // Taken from the caller's socket once: the relay will not send them again.
    let mut rest = [0u8; 16];
    let read = accepted.try_read(&mut rest);
    assert!(
        matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "{read:?}"
    );
    echoes(&mut stream, b"and the rest").await;
}

#[tokio::test]
async fn a_caller_that_waits_for_the_server_to_speak_gets_its_stream() {
    let mesh = Mesh::start(Settings::default(), ALLOW_ALL, Upstream::Echo).await;
    let (_caller, accepted) = caller_pair().await;
    let mut stream = connect_for(&mesh, &accepted, mesh.backend)
        .await
        .expect("stream");
    assert_eq!(stream.sent_early(), 0);
    echoes(&mut stream, b"late").await;
}

#[tokio::test]
async fn early_bytes_of_refused_streams_do_not_use_up_the_connection_window() {
    let mesh = Mesh::start(Settings::default(), ALLOW_ALL, Upstream::Echo).await;
    let (mut caller, accepted) = caller_pair().await;
    // Not a local workload: refused (421) before anything is dialled or read.
    let elsewhere = SocketAddr::from(([127, 0, 0, 9], 1));
    let chunk = vec![5u8; EARLY_DATA];
    // More early bytes in all than the connection's window holds.
    let streams = CONNECTION_WINDOW as usize / EARLY_DATA + 16;
    for _ in 0..streams {
        let written = timeout(WAIT, caller.write_all(&chunk)).await;
        written
            .expect("the proxy took the last chunk")
            .expect("write");
        accepted.readable().await.expect("readable");
        match connect_for(&mesh, &accepted, elsewhere).await {
            Err(TunnelError::Status { status, .. }) => {
                assert_eq!(status, StatusCode::MISDIRECTED_REQUEST);
            }
            Err(e) => panic!("refused for another reason: {e}"),
            Ok(_) => panic!("a stream to a non-local address was accepted"),
        }
    }
    assert_eq!(mesh.recorder.count("handshake:server"), 1, "one connection");
    // Had the server kept their share of the window, this stream's bytes
    // could not be sent.
    let mut stream = mesh.pooled().await;
    echoes(&mut stream, &vec![3u8; 1024 * 1024]).await;
}

#[tokio::test]
async fn early_bytes_of_a_denied_stream_never_reach_the_destination() {
    let mesh = Mesh::start(Settings::default(), ALLOW_NOBODY, Upstream::Echo).await;
    // A port of backend's address that records whether anyone dials it.
    let pod = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let (mut caller, accepted) = caller_pair().await;
    caller
        .write_all(b"DELETE /all HTTP/1.1\r\n\r\n")
        .await
        .expect("write");
    accepted.readable().await.expect("readable");
    let to = pod.local_addr().expect("addr");
    match connect_for(&mesh, &accepted, to).await {
        Err(TunnelError::Status { status, .. }) => assert_eq!(status, StatusCode::FORBIDDEN),
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("a denied stream was accepted"),
    }
    assert_eq!(mesh.recorder.count("refused:denied"), 1);
    let dialled = timeout(Duration::from_millis(500), pod.accept()).await;
    assert!(dialled.is_err(), "the destination was dialled: {dialled:?}");
}
