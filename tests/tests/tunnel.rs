//! End-to-end: workload identity and the mTLS tunnel between node proxies,
//! and strict inbound (pods reachable only through their node proxy).

use std::{
    io::{Read, Write},
    net::SocketAddr,
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Empty;
use hyper::{client::conn::http2::SendRequest, upgrade::Upgraded, Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use nodeward_tests::{
    connect_from,
    h2raw::{self, Frames},
    require_root,
    tlspeer::{client_config, sni_name, Chain, NodeCa},
    Capture, Cluster, Options, PodSpec,
};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyUsagePurpose};
use rustls::{pki_types::ServerName, ClientConnection, StreamOwned};

const PORT: u16 = 9100;
const HTTP_PORT: u16 = 8080;
const TD: &str = "cluster.local";
/// Promptly, on a loaded machine.
const WAIT: Duration = Duration::from_secs(10);

/// frontend may call backend's HTTP port, which policy judges per request.
const BACKEND_HTTP: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: backend-http, namespace: shop}
spec:
  selector: {matchLabels: {app: backend}}
  rules:
  - from: [{source: {principals: [cluster.local/ns/shop/sa/frontend]}}]
    to: [{operation: {ports: [\"8080\"], paths: [\"*\"]}}]
";

fn addr(ip: std::net::IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

fn spiffe(ns: &str, sa: &str) -> String {
    format!("spiffe://{TD}/ns/{ns}/sa/{sa}")
}

#[test]
fn cross_node_traffic_is_encrypted_and_the_caller_identified() {
    if !require_root("cross_node_traffic_is_encrypted_and_the_caller_identified") {
        return;
    }
    let mut c = Cluster::start();
    c.serve_echo("backend", PORT);
    c.serve_echo_on_node("node-b", PORT);
    let marker = "NODEWARD-PLAINTEXT-MARKER-7f3a";
    let capture = Capture::start(&c.ns("node-a"), "link0").expect("capture");
    let to_backend = addr(c.ip4("backend"), PORT);
    for _ in 0..3 {
        let r = c.call_with("frontend", to_backend, 64 * 1024, &["--marker", marker]);
        assert_eq!(r["intact"], true, "{r}");
    }
    // Control: the same marker to a non-mesh address crosses the link in the clear.
    let to_node = addr(c.node_ip("node-b"), PORT);
    let plain = c.call_with(
        "frontend",
        to_node,
        4096,
        &["--marker", "CONTROL-MARKER-42"],
    );
    assert_eq!(plain["intact"], true, "{plain}");
    let seen = capture.finish().expect("capture");
    assert!(
        seen.bytes.len() > 3 * 64 * 1024,
        "capture saw the tunnel traffic: {}",
        seen.bytes.len()
    );
    assert!(
        seen.contains(b"CONTROL-MARKER-42"),
        "the capture sees plaintext when there is some"
    );
    assert!(
        !seen.contains(marker.as_bytes()),
        "meshed bytes crossed the link in the clear"
    );

    let frontend = spiffe("shop", "frontend");
    let inbound = c.access_records("node-b", 3, |r| {
        r["event"] == "inbound" && r["destination"] == "shop/backend"
    });
    assert_eq!(inbound.len(), 3, "{inbound:?}");
    for r in &inbound {
        assert_eq!(r["source_principal"], frontend.as_str(), "{r}");
        assert_eq!(r["source_node"], "node-a", "{r}");
        assert_eq!(r["source"], "shop/frontend", "{r}");
    }
    let outbound = c.access_records("node-a", 3, |r| r["path"] == "tunnel");
    assert_eq!(outbound.len(), 3, "{outbound:?}");
    assert!(
        c.metric(
            "node-b",
            "nodeward_tunnel_handshakes_total",
            &[("side", "server")]
        ) >= 1.0
    );
}

#[test]
fn pooled_tunnels_open_far_fewer_handshakes_than_connections() {
    if !require_root("pooled_tunnels_open_far_fewer_handshakes_than_connections") {
        return;
    }
    let mut c = Cluster::start();
    c.serve_echo("backend", PORT);
    let intact = c.call_many("frontend", addr(c.ip4("backend"), PORT), 100, 500);
    assert_eq!(intact, 500);
    let handshakes = c.metric(
        "node-a",
        "nodeward_tunnel_handshakes_total",
        &[("side", "client")],
    );
    assert!(
        (1.0..50.0).contains(&handshakes),
        "{handshakes} handshakes for 500 connections"
    );
    let streams = c.metric(
        "node-b",
        "nodeward_tunnel_streams_total",
        &[("status", "200")],
    );
    assert_eq!(streams, 500.0);
}

#[test]
fn a_caller_reset_mid_upload_reaches_the_far_pod_as_a_reset() {
    if !require_root("a_caller_reset_mid_upload_reaches_the_far_pod_as_a_reset") {
        return;
    }
    let mut c = Cluster::start();
    c.serve_echo("backend", PORT);
    let to = addr(c.ip4("backend"), PORT);
    // 512 KiB of a 4 MiB upload, then the caller resets its connection.
    let r = c.call_with(
        "frontend",
        to,
        4 << 20,
        &["--abort-after", &(512 << 10).to_string()],
    );
    assert_eq!(r["connected"], true, "{r}");
    let deadline = std::time::Instant::now() + WAIT;
    let ending = loop {
        if let Some(e) = c.echo_endings("backend", PORT).pop() {
            break e;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the echo's connection never ended"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // A FIN here would pass the truncated upload on as a complete one
    // (the echo also fails after one, writing back to a stream that is
    // gone: only the FIN tells the two apart).
    assert_eq!(ending["eof"], false, "{ending}");
    assert!(ending["error"].is_string(), "{ending}");
    assert!(ending["received"].as_u64() <= Some(512 << 10), "{ending}");
}

#[test]
fn certificates_rotate_under_a_live_connection() {
    if !require_root("certificates_rotate_under_a_live_connection") {
        return;
    }
    let mut c = Cluster::start_with(Options {
        cert_lifetime: "4s",
        ..Options::default()
    });
    c.serve_echo("backend", PORT);
    let to = addr(c.ip4("backend"), PORT);
    // 10 s of paced writes: the certificates of both ends renew (at half
    // life, every 2 s) several times while this connection stays open.
    let long = c.call_with(
        "frontend",
        to,
        20 * 1024,
        &["--chunks", "20", "--pace-ms", "500"],
    );
    assert_eq!(long["intact"], true, "{long}");
    let renewals = c.metric(
        "node-a",
        "nodeward_certificates_issued_total",
        &[("cause", "renewal")],
    );
    assert!(
        renewals >= 4.0,
        "only {renewals} renewals during the connection"
    );
    // New connections after rotation use a new certificate: a new handshake.
    let before = c.metric(
        "node-a",
        "nodeward_tunnel_handshakes_total",
        &[("side", "client")],
    );
    assert_eq!(c.call("frontend", to, 1000)["intact"], true);
    let after = c.metric(
        "node-a",
        "nodeward_tunnel_handshakes_total",
        &[("side", "client")],
    );
    assert!(
        after > before,
        "a rotated certificate must not reuse the old tunnel"
    );
}

#[test]
fn a_workload_added_at_run_time_gets_an_identity_and_is_reachable() {
    if !require_root("a_workload_added_at_run_time_gets_an_identity_and_is_reachable") {
        return;
    }
    let mut c = Cluster::start();
    let late = PodSpec {
        name: "late",
        namespace: "shop",
        service_account: "late",
        node: "node-b",
        host: 12,
    };
    c.add_pod_live(late).expect("add pod");
    c.serve_echo("late", PORT);
    let id = spiffe("shop", "late");
    let expiry = c.wait_metric(
        "node-b",
        "nodeward_certificate_expiry_timestamp_seconds",
        &[("identity", &id)],
        1.0,
        Duration::from_secs(10),
    );
    assert!(expiry > 0.0, "no certificate for {id}");
    c.wait_metric(
        "node-a",
        "nodeward_workloads_reloads_total",
        &[("result", "ok")],
        1.0,
        Duration::from_secs(10),
    );
    let r = c.call("frontend", addr(c.ip4("late"), PORT), 2048);
    assert_eq!(r["intact"], true, "{r}");
    let inbound = c.access_records("node-b", 1, |r| r["destination"] == "shop/late");
    assert_eq!(
        inbound[0]["source_principal"],
        spiffe("shop", "frontend").as_str()
    );
}

#[test]
fn strict_inbound_drops_connections_that_bypass_the_proxies() {
    if !require_root("strict_inbound_drops_connections_that_bypass_the_proxies") {
        return;
    }
    let mut c = Cluster::start();
    c.serve_echo("backend", PORT);
    let to = addr(c.ip4("backend"), PORT);
    let dropped = |c: &Cluster| {
        c.metric(
            "node-b",
            "nodeward_bpf_inbound_direct_total",
            &[("verdict", "dropped")],
        )
    };
    // The attempt waits 5 s for an answer, resending its SYN meanwhile (4
    // times on kernels with linear SYN timeouts, twice on older ones), and
    // counts once all the same.
    let bypass = c.call_bypassing_proxy("frontend", to, 100);
    assert_eq!(bypass["connected"], false, "{bypass}");
    assert_eq!(dropped(&c), 1.0, "one attempt, however many SYNs");
    // An outsider (a process on the other node, not in any pod) fails too.
    assert!(connect_from(&c.ns("node-a"), to).is_err());
    assert_eq!(dropped(&c), 2.0);
    assert!(c.accepted("backend", PORT).is_empty());
    // Through the proxies it works.
    assert_eq!(c.call("frontend", to, 100)["intact"], true);
    assert_eq!(
        c.metric("node-b", "nodeward_mtls_mode", &[("mode", "STRICT")]),
        1.0
    );
}

#[test]
fn permissive_inbound_lets_plaintext_in_and_says_so() {
    if !require_root("permissive_inbound_lets_plaintext_in_and_says_so") {
        return;
    }
    let mut c = Cluster::start_with(Options {
        mtls: "PERMISSIVE",
        ..Options::default()
    });
    c.serve_echo("backend", PORT);
    let to = addr(c.ip4("backend"), PORT);
    let bypass = c.call_bypassing_proxy("frontend", to, 100);
    assert_eq!(bypass["intact"], true, "{bypass}");
    assert_eq!(
        c.metric("node-b", "nodeward_mtls_mode", &[("mode", "PERMISSIVE")]),
        1.0
    );
    let allowed = c.metric(
        "node-b",
        "nodeward_bpf_inbound_direct_total",
        &[("verdict", "allowed")],
    );
    assert!(allowed >= 1.0, "{allowed}");
}

#[test]
fn an_open_tunnel_stops_speaking_for_an_identity_that_left_its_node() {
    if !require_root("an_open_tunnel_stops_speaking_for_an_identity_that_left_its_node") {
        return;
    }
    let mut c = Cluster::start_with(Options::with_policies(&[("http.yaml", BACKEND_HTTP)]));
    c.serve_http("backend", HTTP_PORT);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    // What a compromised node-a can do: mint frontend's SVID with its key.
    let node_a = NodeCa::load(&c.ca_dir().join("node-a"));
    let frontend = node_a.leaf(&[&spiffe("shop", "frontend")], &|_| {});
    let sni = sni_name(&spiffe("shop", "backend"));
    let mut tunnel = RawTunnel::open(&rt, &c, &sni, frontend);
    let backend = addr(c.ip4("backend"), HTTP_PORT);
    let (status, path) = tunnel.connect(&rt, backend).expect("stream");
    assert_eq!(status, StatusCode::OK);
    let mut path = path.expect("upgraded");
    assert_eq!(http_status(&rt, &mut path, "/before"), Some(200));

    c.unlist("frontend");
    let closed = c.wait_metric(
        "node-b",
        "nodeward_tunnel_closed_total",
        &[("reason", "identity_left_node")],
        1.0,
        WAIT,
    );
    assert_eq!(
        closed, 1.0,
        "node-b did not close the tunnel of a departed identity"
    );
    // The open HTTP path is cut...
    assert_eq!(http_status(&rt, &mut path, "/after"), None);
    // ...and the connection takes no new stream.
    let again = tunnel.connect(&rt, backend);
    assert!(
        again.as_ref().map_or(true, |(s, _)| *s != StatusCode::OK),
        "a new stream was served: {:?}",
        again.map(|(s, _)| s)
    );
    assert!(
        tunnel.closed_within(&rt, WAIT),
        "the connection stayed open"
    );
    let requests = c.http_requests_seen("backend", HTTP_PORT);
    assert_eq!(requests, ["GET /before"], "what the pod got");
}

#[test]
fn tunnel_connections_end_when_idle_and_at_their_maximum_age() {
    if !require_root("tunnel_connections_end_when_idle_and_at_their_maximum_age") {
        return;
    }
    let mut c = Cluster::start_with(Options {
        tunnel: "{idleTimeout: 2s, maxConnectionAge: 3s, maxConnectionAgeGrace: 2s}",
        ..Options::default()
    });
    c.serve_echo("backend", PORT);
    let to = addr(c.ip4("backend"), PORT);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    // Idle: a connection that never opens a stream is closed.
    let node_a = NodeCa::load(&c.ca_dir().join("node-a"));
    let frontend = node_a.leaf(&[&spiffe("shop", "frontend")], &|_| {});
    let idle = RawTunnel::open(&rt, &c, &sni_name(&spiffe("shop", "backend")), frontend);
    assert!(
        idle.closed_within(&rt, WAIT),
        "an idle connection stayed open"
    );
    assert!(
        c.metric(
            "node-b",
            "nodeward_tunnel_closed_total",
            &[("reason", "idle")]
        ) >= 1.0
    );
    // Maximum age: a call that outlives age and grace (8 s) is cut; one
    // started after the GOAWAY goes through on a new connection.
    let handshakes = || {
        c.metric(
            "node-a",
            "nodeward_tunnel_handshakes_total",
            &[("side", "client")],
        )
    };
    let before = handshakes();
    let long = std::thread::scope(|s| {
        let long = s.spawn(|| {
            c.call_with(
                "frontend",
                to,
                16 * 1024,
                &["--chunks", "16", "--pace-ms", "500"],
            )
        });
        let aged = c.wait_metric(
            "node-b",
            "nodeward_tunnel_closed_total",
            &[("reason", "max_age")],
            1.0,
            WAIT,
        );
        assert!(aged >= 1.0, "no connection reached its maximum age");
        let short = c.call("frontend", to, 1000);
        assert_eq!(
            short["intact"], true,
            "a stream after the GOAWAY failed: {short}"
        );
        long.join().expect("long call")
    });
    assert_eq!(long["intact"], false, "a stream outlived the grace: {long}");
    assert!(
        handshakes() >= before + 2.0,
        "the pool reused the aged connection"
    );
}

/// One bad peer: what it presents and the reason the server must count.
struct BadPeer {
    name: &'static str,
    reason: &'static str,
    chain: Option<Chain>,
    tls12: bool,
}

#[test]
fn tunnel_rejects_invalid_peers_and_counts_each_reason() {
    if !require_root("tunnel_rejects_invalid_peers_and_counts_each_reason") {
        return;
    }
    let c = Cluster::start();
    let node_a = NodeCa::load(&c.ca_dir().join("node-a"));
    let foreign = NodeCa::fresh("node-a");
    let frontend = spiffe("shop", "frontend");
    let leaf = |ca: &NodeCa, uris: &[&str], tweak: &dyn Fn(&mut CertificateParams)| {
        Some(ca.leaf(uris, tweak))
    };
    let none = |_: &mut CertificateParams| {};
    let cases = [
        BadPeer {
            name: "no client certificate",
            reason: "no_client_certificate",
            chain: None,
            tls12: false,
        },
        BadPeer {
            name: "expired",
            reason: "expired",
            chain: leaf(&node_a, &[&frontend], &|p| {
                p.not_before = rcgen::date_time_ymd(2020, 1, 1);
                p.not_after = rcgen::date_time_ymd(2020, 1, 2);
            }),
            tls12: false,
        },
        BadPeer {
            name: "another CA",
            reason: "unknown_ca",
            chain: leaf(&foreign, &[&frontend], &none),
            tls12: false,
        },
        BadPeer {
            name: "another trust domain",
            reason: "trust_domain",
            chain: leaf(
                &node_a,
                &["spiffe://evil.example/ns/shop/sa/frontend"],
                &none,
            ),
            tls12: false,
        },
        BadPeer {
            name: "two URI SANs",
            reason: "uri_san_count",
            chain: leaf(&node_a, &[&frontend, &spiffe("shop", "cache")], &none),
            tls12: false,
        },
        BadPeer {
            name: "CA certificate as leaf",
            reason: "leaf_is_ca",
            chain: leaf(&node_a, &[&frontend], &|p| {
                p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                p.key_usages = vec![
                    KeyUsagePurpose::DigitalSignature,
                    KeyUsagePurpose::KeyCertSign,
                ];
            }),
            tls12: false,
        },
        BadPeer {
            name: "identity the calling node does not host",
            reason: "identity_not_on_node",
            chain: leaf(&node_a, &[&spiffe("shop", "backend")], &none),
            tls12: false,
        },
        BadPeer {
            name: "TLS 1.2",
            reason: "tls_version",
            chain: leaf(&node_a, &[&frontend], &none),
            tls12: true,
        },
    ];
    let tunnel = addr(c.node_ip("node-b"), 15008);
    let sni = sni_name(&spiffe("shop", "backend"));
    // Positive control: a well-formed SVID of a workload node-a hosts gets through.
    let good = node_a.leaf(&[&frontend], &none);
    let ok = handshake(&c, tunnel, &sni, Some(good), false);
    assert!(ok.is_ok(), "a valid peer was refused: {ok:?}");
    for case in cases {
        let result = handshake(&c, tunnel, &sni, case.chain, case.tls12);
        assert!(result.is_err(), "{} was accepted", case.name);
        let counted = c.wait_metric(
            "node-b",
            "nodeward_tunnel_rejected_total",
            &[("reason", case.reason)],
            1.0,
            Duration::from_secs(5),
        );
        assert_eq!(
            counted, 1.0,
            "{}: reason {} not counted",
            case.name, case.reason
        );
    }
    // An SNI that names no identity node-b holds.
    let good = node_a.leaf(&[&frontend], &none);
    let nobody = sni_name(&spiffe("shop", "nobody"));
    assert!(handshake(&c, tunnel, &nobody, Some(good), false).is_err());
    let counted = c.wait_metric(
        "node-b",
        "nodeward_tunnel_rejected_total",
        &[("reason", "unknown_server_name")],
        1.0,
        Duration::from_secs(5),
    );
    assert_eq!(
        counted, 1.0,
        "unknown SNI not counted as unknown_server_name"
    );
    let mut plain = connect_from(&c.ns("node-a"), tunnel).expect("connect");
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut buf = [0u8; 64];
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    assert!(
        matches!(plain.read(&mut buf), Ok(0) | Err(_)),
        "plaintext got an answer"
    );
    let counted = c.wait_metric(
        "node-b",
        "nodeward_tunnel_rejected_total",
        &[("reason", "plaintext")],
        1.0,
        Duration::from_secs(5),
    );
    assert_eq!(counted, 1.0);
}

/// A caller's early bytes can reach node-b after it refused their stream
/// and reset it: node-a's proxy read the pod while the refusal was on its
/// way. Here 4 rounds of 64 refused streams each get their DATA after
/// their reset. h2 remembers 50 reset streams by default; DATA on a
/// forgotten one draws RST_STREAM STREAM_CLOSED, and 1 024 of those close
/// the connection with every stream between the two nodes on it. Rounds
/// are a second apart, as h2 forgets a reset stream after one anyway
/// (rounds of 64, not hundreds, so that a round's DATA arrives well within
/// that second on a loaded machine).
#[test]
fn late_early_bytes_of_refused_streams_draw_no_errors() {
    if !require_root("late_early_bytes_of_refused_streams_draw_no_errors") {
        return;
    }
    let c = Cluster::start();
    let mut tunnel = raw_frames_tunnel(&c);
    // node-b's own address is no workload of node-b: 421, before any dial.
    let misdirected = addr(c.node_ip("node-b"), PORT).to_string();
    let block = h2raw::request_block("CONNECT", None, &misdirected, None, &[]);
    let mut seen = Seen::default();
    for round in 0..4u32 {
        let ids: Vec<u32> = (0..64).map(|i| 1 + 2 * (round * 64 + i)).collect();
        let connects: Vec<u8> = ids
            .iter()
            .flat_map(|&id| h2raw::headers(id, &block, false))
            .collect();
        tunnel.write_all(&connects).expect("CONNECTs");
        let resets_before = seen.resets;
        while seen.resets < resets_before + ids.len() as u64 {
            seen.read(&mut tunnel);
        }
        let late: Vec<u8> = ids
            .iter()
            .flat_map(|&id| h2raw::data(id, b"early bytes, late", false))
            .collect();
        tunnel.write_all(&late).expect("late DATA");
        std::thread::sleep(Duration::from_millis(1100));
    }
    // Whatever the late DATA drew has arrived before the PING's answer.
    tunnel.write_all(&h2raw::ping(7)).expect("PING");
    while !seen.pong {
        seen.read(&mut tunnel);
    }
    assert_eq!(seen.stream_closed, 0, "{seen:?}");
}

/// What node-b's proxy sent back on a [`raw_frames_tunnel`].
#[derive(Debug, Default)]
struct Seen {
    /// RST_STREAM NO_ERROR: a refused stream ended (the server answered,
    /// the caller never ended its side).
    resets: u64,
    /// RST_STREAM STREAM_CLOSED: frames on a stream the server forgot.
    stream_closed: u64,
    /// Our PING was answered.
    pong: bool,
}

impl Seen {
    /// Reads and tallies one frame; fails the test if none comes in time,
    /// or if the server closes the connection (GOAWAY).
    fn read(&mut self, tunnel: &mut impl Read) {
        let frame = Frames::new(tunnel).next_frame().expect("a frame in time");
        match (frame.kind, frame.payload.get(..4)) {
            (h2raw::RST_STREAM, Some([0, 0, 0, 0])) => self.resets += 1,
            (h2raw::RST_STREAM, Some([0, 0, 0, 5])) => self.stream_closed += 1,
            (h2raw::RST_STREAM, code) => panic!("RST_STREAM {code:?} after {self:?}"),
            (h2raw::GOAWAY, _) => panic!("GOAWAY {:?} after {self:?}", frame.goaway_code()),
            (h2raw::PING, _) if frame.flags & h2raw::ACK != 0 => self.pong = true,
            _ => {}
        }
    }
}

/// node-a's side of a tunnel connection to node-b that the test writes
/// frame by frame: TLS as frontend (a certificate minted with node-a's
/// key), then the HTTP/2 preface.
fn raw_frames_tunnel(c: &Cluster) -> StreamOwned<ClientConnection, std::net::TcpStream> {
    let node_a = NodeCa::load(&c.ca_dir().join("node-a"));
    let chain = node_a.leaf(&[&spiffe("shop", "frontend")], &|_| {});
    let config = client_config(Some(chain), false).expect("client config");
    let name = ServerName::try_from(sni_name(&spiffe("shop", "backend"))).expect("sni");
    let conn = ClientConnection::new(Arc::new(config), name).expect("TLS client");
    let tcp = connect_from(&c.ns("node-a"), addr(c.node_ip("node-b"), 15008)).expect("connect");
    tcp.set_read_timeout(Some(WAIT)).expect("read timeout");
    let mut tls = StreamOwned::new(conn, tcp);
    let mut start = h2raw::client_start();
    start.extend(h2raw::settings_ack());
    tls.write_all(&start).expect("preface");
    tls
}

/// A TLS handshake from node-a's namespace to the tunnel, then one read so
/// the server's verdict on our certificate (sent after our Finished) arrives.
fn handshake(
    c: &Cluster,
    to: SocketAddr,
    sni: &str,
    chain: Option<Chain>,
    tls12: bool,
) -> Result<(), String> {
    let config = client_config(chain, tls12)?;
    let name = ServerName::try_from(sni.to_owned()).map_err(|e| e.to_string())?;
    let conn = ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let tcp = connect_from(&c.ns("node-a"), to).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut tls = StreamOwned::new(conn, tcp);
    // The HTTP/2 client preface; a server that accepted us answers with SETTINGS.
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 9];
    match tls.read(&mut buf) {
        Ok(n) if n > 0 => Ok(()),
        Ok(_) => Err("closed".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// A tunnel connection of our own from node-a's namespace to node-b's
/// proxy, as a compromised node-a could open one: HTTP/2 over TLS with a
/// certificate the test minted with node-a's key. Runs on `rt`.
struct RawTunnel {
    send: SendRequest<Empty<Bytes>>,
    /// Ends when the connection does.
    ended: tokio::task::JoinHandle<()>,
}

impl RawTunnel {
    fn open(rt: &tokio::runtime::Runtime, c: &Cluster, sni: &str, chain: Chain) -> Self {
        let tunnel = addr(c.node_ip("node-b"), 15008);
        let tcp = connect_from(&c.ns("node-a"), tunnel).expect("connect");
        tcp.set_nonblocking(true).expect("nonblocking");
        let config = Arc::new(client_config(Some(chain), false).expect("client config"));
        let name = ServerName::try_from(sni.to_owned()).expect("sni");
        rt.block_on(async move {
            let tcp = tokio::net::TcpStream::from_std(tcp).expect("tokio stream");
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .expect("TLS handshake");
            let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .handshake(TokioIo::new(tls))
                .await
                .expect("HTTP/2 handshake");
            let ended = tokio::spawn(async move {
                let _ = conn.await;
            });
            Self { send, ended }
        })
    }

    /// A CONNECT to `to`: its status and, on 200, the stream; `Err` when the
    /// connection no longer takes streams.
    fn connect(
        &mut self,
        rt: &tokio::runtime::Runtime,
        to: SocketAddr,
    ) -> Result<(StatusCode, Option<TokioIo<Upgraded>>), String> {
        let mut req = Request::new(Empty::new());
        *req.method_mut() = Method::CONNECT;
        *req.uri_mut() = hyper::Uri::builder()
            .authority(to.to_string())
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let sent = tokio::time::timeout(WAIT, self.send.send_request(req)).await;
            let response = sent.map_err(|_| "no answer".to_owned())?;
            let response = response.map_err(|e| e.to_string())?;
            let status = response.status();
            if status != StatusCode::OK {
                return Ok((status, None));
            }
            let upgraded = hyper::upgrade::on(response)
                .await
                .map_err(|e| e.to_string())?;
            Ok((status, Some(TokioIo::new(upgraded))))
        })
    }

    /// Whether the server closed the connection within `within`.
    fn closed_within(self, rt: &tokio::runtime::Runtime, within: Duration) -> bool {
        rt.block_on(async { tokio::time::timeout(within, self.ended).await })
            .is_ok()
    }
}

/// One HTTP/1.1 request on a tunnelled stream: the response's status, or
/// `None` when the stream ended or failed instead.
fn http_status(
    rt: &tokio::runtime::Runtime,
    io: &mut TokioIo<Upgraded>,
    path: &str,
) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    rt.block_on(async {
        let request = format!("GET {path} HTTP/1.1\r\nhost: backend\r\n\r\n");
        io.write_all(request.as_bytes()).await.ok()?;
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(WAIT, io.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        let head = String::from_utf8_lossy(&buf[..n]).into_owned();
        head.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
    })
}
