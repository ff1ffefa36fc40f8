//! Keys of `RequestAuthentication` rules with a `jwksUri`: fetched over
//! HTTPS (plain HTTP only to loopback, checked at policy load), cached, and
//! refreshed in the background.
//!
//! Every URI in the policy set in force has one task: it fetches at once,
//! then every [`FetchSettings::refresh`]; a failed fetch is retried with
//! exponential backoff ([`FetchSettings::min_backoff`] doubling to
//! [`FetchSettings::max_backoff`]) and keeps the last good keys. A token
//! naming a key id the keys lack asks for a refetch, at most once per
//! [`FetchSettings::kid_refetch`] per URI, so a stream of made-up key ids
//! cannot turn the proxy into a load generator against the issuer. Until a
//! URI's first fetch succeeds, [`KeySource::keys`] has nothing and a request
//! carrying a token for it is refused (401), never let through.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::{header, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use nodeward_policy::jwt::{jwk::JwkSet, read_key_set, KeySetError, KeySource};
use tokio::{net::TcpStream, sync::Notify, task::JoinHandle};

use crate::escape::clean;

/// Timings and limits of the fetcher.
#[derive(Debug, Clone)]
pub struct FetchSettings {
    /// Between successful fetches (Istio's default: 20 minutes).
    pub refresh: Duration,
    /// First retry after a failed fetch; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Least time between two refetches asked for by unknown key ids.
    pub kid_refetch: Duration,
    /// For one whole fetch: connect, TLS, request and body.
    pub timeout: Duration,
    /// Larger key sets are refused.
    pub max_bytes: usize,
}

/// Fetches and caches the keys of every `jwksUri` it is told to track.
pub struct JwksFetcher {
    settings: FetchSettings,
    tls: Arc<rustls::ClientConfig>,
    entries: Mutex<HashMap<String, Arc<Entry>>>,
}

/// Why a fetch failed (logged; the last good keys stay).
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("{0}")]
    Invalid(String),
    #[error("connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("tls: {0}")]
    Tls(#[source] std::io::Error),
    #[error("http: {0}")]
    Http(#[source] hyper::Error),
    #[error("status {0}")]
    Status(StatusCode),
    #[error("body: {0}")]
    Body(String),
    #[error("{0}")]
    Keys(#[source] KeySetError),
    #[error("timed out")]
    Timeout,
}

/// One URI's keys and its refresh task.
struct Entry {
    keys: ArcSwapOption<JwkSet>,
    refetch: Notify,
    last_refetch: Mutex<Option<Instant>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Default for FetchSettings {
    fn default() -> Self {
        Self {
            refresh: Duration::from_secs(20 * 60),
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            kid_refetch: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
            max_bytes: 1 << 20,
        }
    }
}

impl JwksFetcher {
    /// A fetcher trusting the system's root certificates.
    pub fn new(settings: FetchSettings) -> Arc<Self> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            let _ = roots.add(cert);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(roots).with_no_client_auth())
            .map(Arc::new);
        let tls = match tls {
            Ok(tls) => tls,
            // ring's defaults always build; keep going without https if not.
            Err(e) => {
                tracing::error!(error = %e, "jwks: cannot build a TLS client");
                Arc::new(
                    rustls::ClientConfig::builder()
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth(),
                )
            }
        };
        Arc::new(Self {
            settings,
            tls,
            entries: Mutex::new(HashMap::new()),
        })
    }

    /// Keeps exactly `uris` fresh: starts a task for each new one, stops the
    /// tasks of those no policy names any more. Must run inside a tokio
    /// runtime.
    pub fn track(self: &Arc<Self>, uris: &BTreeSet<String>) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.retain(|uri, entry| {
            let keep = uris.contains(uri);
            if !keep {
                entry.stop();
            }
            keep
        });
        for uri in uris {
            if entries.contains_key(uri) {
                continue;
            }
            let entry = Arc::new(Entry {
                keys: ArcSwapOption::empty(),
                refetch: Notify::new(),
                last_refetch: Mutex::new(None),
                task: Mutex::new(None),
            });
            let task = tokio::spawn(refresh_loop(self.clone(), uri.clone(), entry.clone()));
            *entry.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
            entries.insert(uri.clone(), entry);
        }
    }

    fn entry(&self, uri: &str) -> Option<Arc<Entry>> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.get(uri).cloned()
    }

    /// One fetch of `uri`, within [`FetchSettings::timeout`].
    async fn fetch(&self, uri: &str) -> Result<JwkSet, FetchError> {
        tokio::time::timeout(self.settings.timeout, self.fetch_once(uri))
            .await
            .map_err(|_| FetchError::Timeout)?
    }

    async fn fetch_once(&self, uri: &str) -> Result<JwkSet, FetchError> {
        let parsed: Uri = uri
            .parse()
            .map_err(|_| FetchError::Invalid(format!("{uri:?} is not a URL")))?;
        let https = parsed.scheme_str() == Some("https");
        let host = parsed.host().unwrap_or_default().to_owned();
        let port = parsed.port_u16().unwrap_or(if https { 443 } else { 80 });
        let bare = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let tcp = TcpStream::connect((bare.as_str(), port))
            .await
            .map_err(FetchError::Connect)?;
        let path = parsed
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let authority = parsed.authority().map_or(host.clone(), |a| a.to_string());
        let request = Request::get(path)
            .header(header::HOST, authority)
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, "nodeward")
            .body(Empty::<Bytes>::new())
            .map_err(|e| FetchError::Invalid(e.to_string()))?;
        let body = if https {
            let name = rustls::pki_types::ServerName::try_from(bare)
                .map_err(|e| FetchError::Invalid(e.to_string()))?;
            let connector = tokio_rustls::TlsConnector::from(self.tls.clone());
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(FetchError::Tls)?;
            self.get(TokioIo::new(tls), request).await?
        } else {
            self.get(TokioIo::new(tcp), request).await?
        };
        let read = read_key_set(&body).map_err(FetchError::Keys)?;
        for why in &read.skipped {
            // Text from the issuer's server: escaped before it is logged.
            tracing::warn!(uri = %uri, key = %clean(why), "jwks: key left out");
        }
        Ok(read.set)
    }

    async fn get<I>(&self, io: I, request: Request<Empty<Bytes>>) -> Result<Bytes, FetchError>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (mut tx, conn) = http1::handshake(io).await.map_err(FetchError::Http)?;
        let driver = tokio::spawn(conn);
        let response = tx.send_request(request).await.map_err(FetchError::Http);
        let result = match response {
            Ok(r) if r.status() == StatusCode::OK => {
                Limited::new(r.into_body(), self.settings.max_bytes)
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .map_err(|e| FetchError::Body(e.to_string()))
            }
            Ok(r) => Err(FetchError::Status(r.status())),
            Err(e) => Err(e),
        };
        driver.abort();
        result
    }
}

impl KeySource for JwksFetcher {
    fn keys(&self, uri: &str) -> Option<Arc<JwkSet>> {
        self.entry(uri)?.keys.load_full()
    }

    fn unknown_kid(&self, uri: &str) {
        let Some(entry) = self.entry(uri) else {
            return;
        };
        let mut last = entry
            .last_refetch
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < self.settings.kid_refetch) {
            return;
        }
        *last = Some(now);
        entry.refetch.notify_one();
    }
}

impl Drop for JwksFetcher {
    fn drop(&mut self) {
        let entries = self
            .entries
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        for entry in entries.values() {
            entry.stop();
        }
    }
}

impl Entry {
    fn stop(&self) {
        if let Some(task) = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }
}

/// Fetches `uri` now and then forever: see the module docs. Holds the
/// fetcher weakly in spirit: it is aborted when the URI is untracked or the
/// fetcher dropped.
async fn refresh_loop(fetcher: Arc<JwksFetcher>, uri: String, entry: Arc<Entry>) {
    let settings = fetcher.settings.clone();
    let fetcher = Arc::downgrade(&fetcher);
    let mut backoff = settings.min_backoff;
    loop {
        let Some(strong) = fetcher.upgrade() else {
            return;
        };
        let wait = match strong.fetch(&uri).await {
            Ok(keys) => {
                tracing::info!(uri = %uri, keys = keys.keys.len(), "jwks: fetched");
                entry.keys.store(Some(Arc::new(keys)));
                backoff = settings.min_backoff;
                settings.refresh
            }
            Err(e) => {
                let kept = entry.keys.load().is_some();
                let error = e.to_string();
                let error = clean(&error);
                tracing::warn!(uri = %uri, error = %error, kept_last_keys = kept, "jwks: fetch failed");
                let wait = backoff;
                backoff = (backoff * 2).min(settings.max_backoff);
                wait
            }
        };
        drop(strong);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = entry.refetch.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests;
