//! The fetcher against a real HTTP server on loopback: down at start, up,
//! failing later, and key rotation found through an unknown key id.

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicUsize, Ordering},
};

use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use super::*;

/// A JWKS server: answers every request with the current body, or 503
/// when there is none.
struct KeyServer {
    body: Arc<Mutex<Option<String>>>,
    hits: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl KeyServer {
    async fn start(addr: SocketAddr, body: Option<String>) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind");
        let body = Arc::new(Mutex::new(body));
        let hits = Arc::new(AtomicUsize::new(0));
        let (b, h) = (body.clone(), hits.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = [0; 4096];
                let _ = stream.read(&mut buf).await;
                h.fetch_add(1, Ordering::SeqCst);
                let current = b.lock().expect("lock").clone();
                let response = match current {
                    Some(body) => format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    ),
                    None => "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_owned(),
                };
                let _ = stream.write_all(response.as_bytes()).await;
            }
        });
        Self { body, hits, task }
    }

    fn serve(&self, body: Option<String>) {
        *self.body.lock().expect("lock") = body;
    }
}

impl Drop for KeyServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn key_set(kid: &str) -> String {
    // A well-formed P-256 public key (the curve's generator point).
    json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": kid,
        "x": "axfR8uEsQkf4vOblY6RA8ncDfYEt6zOg9KE5RdiYwpY",
        "y": "T-NC4v4af5uO5-tKfA-eFivOM1drMV7Oy7ZAaDe_UfU"}]})
    .to_string()
}

fn settings() -> FetchSettings {
    FetchSettings {
        refresh: Duration::from_secs(3600),
        min_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        kid_refetch: Duration::from_secs(60),
        timeout: Duration::from_secs(5),
        max_bytes: 1 << 20,
    }
}

/// Waits (up to 10 s) until `f` holds.
async fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn kids(fetcher: &JwksFetcher, uri: &str) -> Vec<String> {
    fetcher.keys(uri).map_or_else(Vec::new, |set| {
        set.keys
            .iter()
            .filter_map(|k| k.common.key_id.clone())
            .collect()
    })
}

async fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr")
}

#[tokio::test]
async fn keys_arrive_once_the_server_is_up_and_survive_its_failures() {
    let addr = free_addr().await;
    let uri = format!("http://{addr}/jwks.json");
    let fetcher = JwksFetcher::new(settings());
    fetcher.track(&BTreeSet::from([uri.clone()]));
    // Down at start: nothing, so tokens are refused.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(fetcher.keys(&uri).is_none());
    let server = KeyServer::start(addr, Some(key_set("a"))).await;
    eventually("the first fetch", || kids(&fetcher, &uri) == ["a"]).await;
    // Failing later: a refetch that gets 503 keeps the last good keys.
    server.serve(None);
    let before = server.hits.load(Ordering::SeqCst);
    fetcher.unknown_kid(&uri);
    eventually("the refetch", || {
        server.hits.load(Ordering::SeqCst) > before
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(kids(&fetcher, &uri), ["a"]);
    // And it keeps retrying with backoff until the server is back.
    server.serve(Some(key_set("b")));
    eventually("the retry", || kids(&fetcher, &uri) == ["b"]).await;
}

#[tokio::test]
async fn unknown_kid_refetches_at_most_once_per_interval() {
    let addr = free_addr().await;
    let server = KeyServer::start(addr, Some(key_set("old"))).await;
    let uri = format!("http://{addr}/jwks.json");
    let fetcher = JwksFetcher::new(settings());
    fetcher.track(&BTreeSet::from([uri.clone()]));
    eventually("the first fetch", || kids(&fetcher, &uri) == ["old"]).await;
    server.serve(Some(key_set("new")));
    fetcher.unknown_kid(&uri);
    eventually("the rotated key", || kids(&fetcher, &uri) == ["new"]).await;
    let hits = server.hits.load(Ordering::SeqCst);
    for _ in 0..5 {
        fetcher.unknown_kid(&uri);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.hits.load(Ordering::SeqCst), hits);
}

#[tokio::test]
async fn untracked_uris_are_forgotten() {
    let addr = free_addr().await;
    let _server = KeyServer::start(addr, Some(key_set("a"))).await;
    let uri = format!("http://{addr}/jwks.json");
    let fetcher = JwksFetcher::new(settings());
    fetcher.track(&BTreeSet::from([uri.clone()]));
    eventually("the first fetch", || fetcher.keys(&uri).is_some()).await;
    fetcher.track(&BTreeSet::new());
    assert!(fetcher.keys(&uri).is_none());
}

#[tokio::test]
async fn a_key_the_jose_crate_cannot_read_does_not_cost_the_others() {
    let addr = free_addr().await;
    // An identity provider that also publishes a P-521 key (ES512, which
    // the JOSE crate does not know) and an encryption key.
    let mut set: serde_json::Value = serde_json::from_str(&key_set("es256")).expect("json");
    let keys = set["keys"].as_array_mut().expect("keys");
    keys.insert(
        0,
        json!({"kty": "EC", "crv": "P-521", "alg": "ES512", "kid": "es512", "x": "AQ", "y": "AQ"}),
    );
    keys.push(json!({"kty": "RSA", "alg": "RSA-OAEP-384", "kid": "enc", "n": "AQ", "e": "AQAB"}));
    let _server = KeyServer::start(addr, Some(set.to_string())).await;
    let uri = format!("http://{addr}/jwks.json");
    let fetcher = JwksFetcher::new(settings());
    fetcher.track(&BTreeSet::from([uri.clone()]));
    eventually("the first fetch", || kids(&fetcher, &uri) == ["es256"]).await;
}
