//! The pool's second try at a stream whose caller's first bytes went with
//! the CONNECT, against a stand-in tunnel server (h2 behind node-b's own
//! TLS set-up) whose first connection resets every stream once it has its
//! early bytes: REFUSED_STREAM (the peer never processed it) is retried on
//! a fresh connection, carrying those bytes once; any other reset is not,
//! because the bytes may have reached the destination.

use std::sync::atomic::{AtomicUsize, Ordering};

use h2::Reason;
use tokio_rustls::TlsAcceptor;

use super::{
    early::{caller_pair, echoed_early},
    *,
};
use crate::tunnel::TunnelError;

/// A stand-in tunnel server: its first connection resets each stream with
/// `reason` after the stream's first DATA; later ones answer `200` and
/// echo.
struct StandIn {
    addr: SocketAddr,
    /// The early bytes each reset stream carried.
    reset: Arc<Mutex<Vec<Bytes>>>,
    connections: Arc<AtomicUsize>,
}

impl StandIn {
    async fn start(mesh: &Mesh, reason: Reason) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let stand_in = Self {
            addr: listener.local_addr().expect("addr"),
            reset: Arc::default(),
            connections: Arc::default(),
        };
        let acceptor = TlsAcceptor::from(mesh.tls.clone());
        let (reset, connections) = (stand_in.reset.clone(), stand_in.connections.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let first = connections.fetch_add(1, Ordering::SeqCst) == 0;
                let refusal = first.then_some(reason);
                tokio::spawn(serve_stand_in(
                    acceptor.clone(),
                    tcp,
                    refusal,
                    reset.clone(),
                ));
            }
        });
        stand_in
    }

    fn reset(&self) -> Vec<Bytes> {
        self.reset.lock().expect("reset").clone()
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// One connection of the stand-in: each stream reset with `refusal` after
/// its first DATA (recorded in `reset`), or answered and echoed.
async fn serve_stand_in(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    refusal: Option<Reason>,
    reset: Arc<Mutex<Vec<Bytes>>>,
) {
    let Ok(tls) = acceptor.accept(tcp).await else {
        return;
    };
    let Ok(mut conn) = h2::server::handshake(tls).await else {
        return;
    };
    while let Some(Ok((request, mut respond))) = conn.accept().await {
        let reset = reset.clone();
        tokio::spawn(async move {
            let mut body = request.into_body();
            if let Some(reason) = refusal {
                if let Some(Ok(data)) = body.data().await {
                    reset.lock().expect("reset").push(data);
                }
                respond.send_reset(reason);
                return;
            }
            let Ok(mut send) = respond.send_response(hyper::Response::new(()), false) else {
                return;
            };
            while let Some(Ok(data)) = body.data().await {
                let _ = body.flow_control().release_capacity(data.len());
                if send.send_data(data, false).is_err() {
                    return;
                }
            }
        });
    }
}

/// A stream through the pool to the stand-in, for a caller that has sent
/// `first` before the stream was asked for.
async fn connect_with_early(
    mesh: &Mesh,
    stand_in: &StandIn,
    first: &[u8],
) -> (Result<crate::tunnel::Stream, TunnelError>, TcpStream) {
    let (mut caller, accepted) = caller_pair().await;
    caller.write_all(first).await.expect("write");
    accepted.readable().await.expect("readable");
    let target = Target {
        caller: Some(&accepted),
        node_addr: stand_in.addr,
        ..mesh.target()
    };
    let stream = timeout(WAIT, mesh.pool.connect(target))
        .await
        .expect("answered");
    (stream, caller)
}

#[tokio::test]
async fn a_stream_refused_unprocessed_is_retried_carrying_its_early_bytes_once() {
    let mesh = Mesh::start(Settings::default(), ALLOW_ALL, Upstream::Echo).await;
    let stand_in = StandIn::start(&mesh, Reason::REFUSED_STREAM).await;
    let (stream, _caller) = connect_with_early(&mesh, &stand_in, b"first bytes").await;
    let mut stream = stream.expect("the retried stream");
    // The refused stream had them, and the retry went to a fresh connection.
    assert_eq!(stand_in.reset(), [Bytes::from_static(b"first bytes")]);
    assert_eq!(stand_in.connections(), 2);
    // Echoed once: the retried stream carried them too...
    echoed_early(&mut stream, b"first bytes").await;
    // ...and only once: a second copy would come back before these.
    echoes(&mut stream, b"and the rest").await;
}

#[tokio::test]
async fn a_stream_reset_after_its_early_bytes_is_not_retried() {
    let mesh = Mesh::start(Settings::default(), ALLOW_ALL, Upstream::Echo).await;
    let stand_in = StandIn::start(&mesh, Reason::INTERNAL_ERROR).await;
    let (stream, _caller) = connect_with_early(&mesh, &stand_in, b"first bytes").await;
    assert!(
        matches!(stream, Err(TunnelError::Http(_))),
        "{:?}",
        stream.map(|_| ())
    );
    assert_eq!(stand_in.reset(), [Bytes::from_static(b"first bytes")]);
    // Not opened again elsewhere: the bytes may have reached the destination.
    assert_eq!(stand_in.connections(), 1);
}
