//! The relay's counting and access logging as the running proxy does it:
//! nodeward-proxy's relay reporting into these prometheus metrics.

use std::{net::SocketAddr, sync::Mutex, time::Duration};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{field::Field, Event, Subscriber};
use tracing_subscriber::{layer::Context, prelude::*, Layer};

use nodeward_identity::SpiffeId;
use nodeward_proxy::{
    access::{log_request, RequestRecord},
    drain::Drain,
    relay::{run, Abort, Path, Route},
    telemetry::{AccessLog, Observer},
};
use nodeward_workloads::Workload;
use tokio::io::{AsyncRead, AsyncWrite};

use super::*;

const TD: &str = "cluster.local";

/// Metrics and the observer the relay counts through, wired as `run` does.
struct Counted {
    metrics: Arc<Metrics>,
    observer: Observer,
}

impl Counted {
    fn new() -> Self {
        let metrics = Arc::new(Metrics::new());
        let observer = Observer::new(metrics.clone());
        Self { metrics, observer }
    }

    fn with_trust_domain(mut self, td: &str) -> Self {
        self.observer = self.observer.with_trust_domain(td);
        self
    }

    fn with_access_log(mut self, log: AccessLog) -> Self {
        self.observer = self.observer.with_access_log(log);
        self
    }

    fn render(&self) -> String {
        self.metrics.render()
    }
}

/// Collects the `event` field of every access record.
#[derive(Clone, Default)]
struct Records(Arc<Mutex<Vec<String>>>);

struct EventField(String);

impl tracing::field::Visit for EventField {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "event" {
            self.0 = value.to_owned();
        }
    }

    fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
}

impl<S: Subscriber> Layer<S> for Records {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() == "nodeward::access" {
            let mut field = EventField(String::new());
            event.record(&mut field);
            self.0.lock().expect("records").push(field.0);
        }
    }
}

impl Records {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        tracing::subscriber::set_default(tracing_subscriber::registry().with(self.clone()))
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().expect("records"))
    }
}

fn workload(name: &str, namespace: &str, node: &str) -> Arc<Workload> {
    Arc::new(Workload {
        name: name.into(),
        namespace: namespace.into(),
        service_account: format!("{name}-sa"),
        node: node.into(),
        ips: vec!["10.0.0.1".parse().expect("ip")],
        labels: Default::default(),
        cgroup: None,
        enrolled: true,
    })
}

fn outbound(path: Path) -> Route {
    Route::Outbound {
        source: workload("frontend", "shop", "node-a"),
        peer: "10.0.0.1:40000".parse().expect("addr"),
        path,
        service: None,
        trace: None,
        flow: Default::default(),
    }
}

fn inbound(principal: &str, source: Option<Arc<Workload>>) -> Route {
    Route::Inbound {
        principal: SpiffeId::parse(principal).expect("id"),
        source_node: "node-evil\n".into(),
        source,
        peer: "192.0.2.66:5555".parse().expect("addr"),
        trace: None,
        flow: Default::default(),
    }
}

fn dst() -> SocketAddr {
    "10.0.0.2:8080".parse().expect("addr")
}

/// Relays one small exchange through [`run`].
async fn relay_once(mut route: Route, dest: Option<Arc<Workload>>, metrics: &Counted) {
    let (mut client, a) = tokio::io::duplex(1024);
    let (b, mut server) = tokio::io::duplex(1024);
    let peers = async {
        client.write_all(b"hello").await.expect("write");
        client.shutdown().await.expect("shutdown");
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.expect("read");
        server.write_all(b"hi").await.expect("write");
        server.shutdown().await.expect("shutdown");
        client.read_to_end(&mut got).await.expect("read");
        got
    };
    let drain = Drain::never();
    let (got, ()) = tokio::join!(
        peers,
        run(
            a,
            b,
            &mut route,
            dst(),
            dest,
            &metrics.observer,
            None,
            &drain
        )
    );
    assert_eq!(got, b"hellohi");
}

/// The samples of `name` in `text`, as (labels, value).
fn samples(text: &str, name: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, labels) = series.split_once('{')?;
            (n == name).then_some(())?;
            Some((labels.trim_end_matches('}').to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn has(labels: &str, pairs: &[(&str, &str)]) -> bool {
    pairs
        .iter()
        .all(|(k, v)| labels.contains(&format!("{k}=\"{v}\"")))
}

#[tokio::test]
async fn outbound_connection_is_labelled_with_the_callers_spiffe_id() {
    let metrics = Counted::new().with_trust_domain(TD);
    let dest = workload("backend", "shop", "node-b");
    relay_once(outbound(Path::Tunnel), Some(dest), &metrics).await;
    let text = metrics.render();
    let opened = samples(&text, "nodeward_connections_opened_total");
    assert_eq!(opened.len(), 1, "{text}");
    assert!(
        has(
            &opened[0].0,
            &[
                ("reporter", "source"),
                (
                    "source_principal",
                    "spiffe://cluster.local/ns/shop/sa/frontend-sa"
                ),
                ("source_workload", "frontend"),
                ("source_namespace", "shop"),
                ("destination_workload", "backend"),
                ("destination_namespace", "shop"),
            ]
        ),
        "{}",
        opened[0].0
    );
    let sent = samples(&text, "nodeward_sent_bytes_total");
    let received = samples(&text, "nodeward_received_bytes_total");
    assert_eq!((sent[0].1, received[0].1), (5.0, 2.0));
    assert_eq!(
        samples(&text, "nodeward_connections_closed_total")[0].1,
        1.0
    );
    assert_eq!(metrics.metrics.active_connections.get(), 0);
}

#[tokio::test]
async fn same_node_hop_is_reported_by_both_roles_and_passthrough_by_the_source() {
    let metrics = Counted::new().with_trust_domain(TD);
    let dest = workload("cache", "shop", "node-a");
    relay_once(outbound(Path::Local), Some(dest), &metrics).await;
    relay_once(outbound(Path::Passthrough), None, &metrics).await;
    let opened = samples(&metrics.render(), "nodeward_connections_opened_total");
    let count = |pairs: &[(&str, &str)]| {
        opened
            .iter()
            .filter(|(l, _)| has(l, pairs))
            .map(|(_, v)| v)
            .sum::<f64>()
    };
    let to_cache = ("destination_workload", "cache");
    assert_eq!(count(&[("reporter", "source"), to_cache]), 1.0);
    assert_eq!(count(&[("reporter", "destination"), to_cache]), 1.0);
    let unknown = ("destination_workload", "unknown");
    assert_eq!(count(&[("reporter", "source"), unknown]), 1.0);
    assert_eq!(count(&[("reporter", "destination"), unknown]), 0.0);
}

#[tokio::test]
async fn inbound_labels_never_carry_unverified_values() {
    let metrics = Counted::new().with_trust_domain(TD);
    let dest = Some(workload("backend", "shop", "node-b"));
    // Verified workload ID, no Forwarded workload.
    relay_once(
        inbound("spiffe://cluster.local/ns/shop/sa/frontend", None),
        dest.clone(),
        &metrics,
    )
    .await;
    // A verified ID that is no workload ID.
    relay_once(
        inbound("spiffe://cluster.local/custom/thing", None),
        dest,
        &metrics,
    )
    .await;
    let text = metrics.render();
    let opened = samples(&text, "nodeward_connections_opened_total");
    assert_eq!(opened.len(), 2, "{text}");
    assert!(opened
        .iter()
        .all(|(l, _)| has(l, &[("reporter", "destination")])));
    assert!(opened.iter().any(|(l, _)| has(
        l,
        &[
            (
                "source_principal",
                "spiffe://cluster.local/ns/shop/sa/frontend"
            ),
            ("source_namespace", "shop"),
            ("source_workload", "unknown"),
        ]
    )));
    assert!(opened.iter().any(|(l, _)| has(
        l,
        &[
            ("source_principal", "unknown"),
            ("source_namespace", "unknown"),
            ("source_workload", "unknown"),
        ]
    )));
    for unverified in ["node-evil", "192.0.2.66", "custom/thing"] {
        assert!(
            !text.contains(unverified),
            "{unverified} became a label:\n{text}"
        );
    }
}

#[tokio::test]
async fn without_a_trust_domain_local_callers_are_unknown_principals() {
    let metrics = Counted::new();
    relay_once(outbound(Path::Passthrough), None, &metrics).await;
    let opened = samples(&metrics.render(), "nodeward_connections_opened_total");
    assert!(has(
        &opened[0].0,
        &[
            ("source_principal", "unknown"),
            ("source_workload", "frontend")
        ]
    ));
}

#[tokio::test]
async fn sampling_zero_drops_successful_connection_records_only() {
    let records = Records::default();
    let _guard = records.install();
    let metrics = Counted::new().with_access_log(AccessLog::new(0.0).expect("valid"));
    relay_once(outbound(Path::Passthrough), None, &metrics).await;
    assert!(records.take().is_empty());
    // A relay that fails (the destination resets) is logged anyway.
    let (client, a) = tokio::io::duplex(64);
    let b = Failing;
    drop(client);
    run(
        a,
        b,
        &mut outbound(Path::Passthrough),
        dst(),
        None,
        &metrics.observer,
        None,
        &Drain::never(),
    )
    .await;
    assert_eq!(records.take(), ["connection"]);
    // Sampling does not touch the counters.
    let opened = samples(&metrics.render(), "nodeward_connections_opened_total");
    assert_eq!(opened.iter().map(|(_, v)| v).sum::<f64>(), 2.0);
}

#[tokio::test]
async fn sampling_one_logs_every_connection() {
    let records = Records::default();
    let _guard = records.install();
    let metrics = Counted::new();
    for _ in 0..3 {
        relay_once(outbound(Path::Passthrough), None, &metrics).await;
    }
    relay_once(
        inbound("spiffe://cluster.local/ns/shop/sa/frontend", None),
        Some(workload("backend", "shop", "node-b")),
        &metrics,
    )
    .await;
    assert_eq!(
        records.take(),
        ["connection", "connection", "connection", "inbound"]
    );
}

#[test]
fn request_records_are_counted_by_class_and_failures_always_logged() {
    let records = Records::default();
    let _guard = records.install();
    let metrics = Counted::new().with_access_log(AccessLog::new(0.0).expect("valid"));
    let backend = workload("backend", "shop", "node-b");
    let principal = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/frontend").expect("id");
    let ok = RequestRecord {
        reporter: Reporter::Destination,
        connection_id: 7,
        source_principal: Some(&principal),
        request_principal: None,
        source_ip: Some("10.0.0.1".parse().expect("ip")),
        destination: &backend,
        dst: dst(),
        method: "GET",
        path: "/api/\u{202e}items",
        host: "backend",
        status: 200,
        duration: Duration::from_millis(3),
        request_bytes: 0,
        response_bytes: 12,
        allowed: true,
        policy: Some("shop/allow-frontend"),
        rate_limit: Some(RateLimitOutcome::Allowed),
        error: None,
    };
    log_request(&metrics.observer, &ok);
    assert!(records.take().is_empty(), "sampled out");
    let denied = RequestRecord {
        status: 403,
        allowed: false,
        ..ok
    };
    let limited = RequestRecord {
        status: 429,
        rate_limit: Some(RateLimitOutcome::Limited),
        ..ok
    };
    let shadow = RequestRecord {
        rate_limit: Some(RateLimitOutcome::ShadowLimited),
        ..ok
    };
    let failed = RequestRecord { status: 502, ..ok };
    for r in [denied, limited, shadow, failed] {
        log_request(&metrics.observer, &r);
    }
    assert_eq!(records.take().len(), 4);
    let text = metrics.render();
    let requests = samples(&text, "nodeward_http_requests_total");
    let code = |c: &str| {
        requests
            .iter()
            .filter(|(l, _)| {
                has(
                    l,
                    &[
                        ("code", c),
                        ("reporter", "destination"),
                        ("destination_workload", "backend"),
                    ],
                )
            })
            .map(|(_, v)| v)
            .sum::<f64>()
    };
    assert_eq!((code("2xx"), code("4xx"), code("5xx")), (2.0, 2.0, 1.0));
    assert!(!text.contains("/api"), "paths are never labels");
}

/// A stream whose reads and writes fail, like a reset destination.
struct Failing;

impl AsyncRead for Failing {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Err(std::io::ErrorKind::ConnectionReset.into()))
    }
}

impl AsyncWrite for Failing {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready(Err(std::io::ErrorKind::ConnectionReset.into()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

impl Abort for Failing {
    fn abort(&mut self) {}
}
