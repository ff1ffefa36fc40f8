//! rustls configurations for the tunnel: TLS 1.3 only, mutual authentication
//! with SPIFFE verification on both sides, ALPN `h2`, no session resumption
//! (a resumed session would skip the certificate checks, and survive a trust
//! bundle change: CVE-2022-21654).

use std::sync::{Arc, OnceLock};

use rustls::{
    client::{ResolvesClientCert, Resumption},
    crypto::CryptoProvider,
    pki_types::{DnsName, ServerName},
    server::{ClientHello, NoServerSessionStorage, ResolvesServerCert},
    sign::CertifiedKey,
    ClientConfig, ServerConfig, SignatureScheme,
};

use crate::{
    store::sni_name,
    tls::{ClientVerifier, ServerVerifier, TrustBundle},
    CertStore, Issued, SpiffeId,
};

/// ALPN protocol of the tunnel.
pub const ALPN_H2: &[u8] = b"h2";

/// The crypto provider of the tunnel's TLS configs (key exchange, record
/// protection): ring, or aws-lc-rs with the `aws-lc` feature. Certificates
/// are signed, and handshake signatures checked, with ring either way.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            #[cfg(feature = "aws-lc")]
            let provider = rustls::crypto::aws_lc_rs::default_provider();
            #[cfg(not(feature = "aws-lc"))]
            let provider = rustls::crypto::ring::default_provider();
            Arc::new(provider)
        })
        .clone()
}

/// Makes [`provider`] the process's default, for TLS configs built by other
/// crates (kube-client's, the JWKS fetcher's). Needed with the `aws-lc`
/// feature: rustls then has two providers compiled in and picks neither by
/// itself. Idempotent.
pub fn install_default_provider() {
    // An error only says a default is already installed.
    let _ = CryptoProvider::install_default(provider().as_ref().clone());
}

/// The tunnel server's config: the certificate is picked by SNI (which names
/// the destination identity), the client must present a valid SVID that
/// `verifier` accepts.
pub fn server_config(
    store: Arc<CertStore>,
    verifier: Arc<ClientVerifier>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(ByServerName(store)));
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    cfg.session_storage = Arc::new(NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    Ok(Arc::new(cfg))
}

/// A client config for one tunnel connection: presents `source`'s
/// certificate and accepts only `expected` served by `node`.
pub fn client_config(
    source: &Issued,
    bundle: Arc<TrustBundle>,
    expected: SpiffeId,
    node: String,
) -> Result<Arc<ClientConfig>, rustls::Error> {
    let verifier = ServerVerifier::new(bundle, expected, node);
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(OneCert(source.key.clone())));
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    cfg.resumption = Resumption::disabled();
    Ok(Arc::new(cfg))
}

/// The SNI a client sends to reach `id`'s certificate on a node proxy.
pub fn server_name(id: &SpiffeId) -> ServerName<'static> {
    match DnsName::try_from(sni_name(id)) {
        Ok(name) => ServerName::DnsName(name),
        // sni_name is hex + fixed labels, always a valid DNS name.
        Err(_) => unreachable!("SNI names are generated DNS names"),
    }
}

#[derive(Debug)]
struct OneCert(Arc<CertifiedKey>);

impl ResolvesClientCert for OneCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

struct ByServerName(Arc<CertStore>);

impl std::fmt::Debug for ByServerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ByServerName")
    }
}

impl ResolvesServerCert for ByServerName {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let issued = self.0.by_sni(hello.server_name()?)?;
        Some(issued.key.clone())
    }
}

/// The metric label for a failed handshake as tokio-rustls reports it.
pub fn io_error_reason(e: &std::io::Error) -> &'static str {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => crate::tls::reject_reason(tls),
        None if e.kind() == std::io::ErrorKind::UnexpectedEof => "eof",
        None => "io",
    }
}
