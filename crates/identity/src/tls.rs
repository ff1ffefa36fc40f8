//! mTLS between nodeward proxies: the trust bundle and rustls certificate
//! verifiers that accept X.509-SVIDs only (see [`verify_svid`]).
//!
//! Identity comes from the peer certificate's SPIFFE ID, never from SNI or
//! DNS names: SNI is used for routing only.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, OtherError,
    PeerIncompatible, SignatureScheme,
};
use thiserror::Error;
use x509_parser::extensions::GeneralName;

use crate::spiffe::{trust_domain_from_uri, validate_trust_domain, SpiffeId, SpiffeIdError};

pub mod verify;

pub use verify::{peer_from_chain, verify_svid, Reject, Usage, VerifiedPeer};

/// The roots of one trust domain. Verification picks the bundle by the
/// peer's trust domain, so each bundle is bound to exactly one.
pub struct TrustBundle {
    trust_domain: String,
    anchors: Vec<TrustAnchor<'static>>,
    certs: Vec<CertificateDer<'static>>,
}

/// Why a trust bundle could not be built.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BundleError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: bad PEM", path.display())]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("trust bundle has no certificates")]
    Empty,
    #[error("invalid trust domain")]
    TrustDomain(#[source] SpiffeIdError),
    #[error("root certificate #{index} is not a usable trust anchor")]
    Anchor {
        index: usize,
        #[source]
        source: webpki::Error,
    },
    #[error("root certificate #{index} belongs to trust domain {found:?}")]
    ForeignRoot { index: usize, found: String },
}

/// Decides whether `id` may connect from `node`, after its SVID verified.
pub type Authorizer = Arc<dyn Fn(&SpiffeId, &str) -> bool + Send + Sync>;

/// Server-side verifier: client certificates are mandatory and must be
/// SVIDs of the bundle's trust domain that the authorizer accepts.
pub struct ClientVerifier {
    bundle: Arc<TrustBundle>,
    authorize: Authorizer,
}

/// Client-side verifier: the server must present the SVID of exactly the
/// identity we meant to reach, issued by the node we meant to reach.
pub struct ServerVerifier {
    bundle: Arc<TrustBundle>,
    expected: SpiffeId,
    expected_node: String,
}

impl TrustBundle {
    /// Loads the PEM roots in `path` for `trust_domain`.
    pub fn from_pem_file(path: &Path, trust_domain: &str) -> Result<Self, BundleError> {
        let pem = std::fs::read(path).map_err(|source| BundleError::Read {
            path: path.to_owned(),
            source,
        })?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| BundleError::Pem {
                path: path.to_owned(),
                source,
            })?;
        Self::from_der(certs, trust_domain)
    }

    /// Builds a bundle from DER roots. A root whose URI SAN names another
    /// trust domain is refused: it was almost certainly copied by mistake.
    pub fn from_der(
        certs: Vec<CertificateDer<'static>>,
        trust_domain: &str,
    ) -> Result<Self, BundleError> {
        validate_trust_domain(trust_domain).map_err(BundleError::TrustDomain)?;
        if certs.is_empty() {
            return Err(BundleError::Empty);
        }
        let anchors = certs
            .iter()
            .enumerate()
            .map(|(index, cert)| anchor(index, cert, trust_domain))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            anchors,
            certs,
        })
    }

    /// The trust domain this bundle vouches for.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The root certificates, as loaded.
    pub fn certs(&self) -> &[CertificateDer<'static>] {
        &self.certs
    }

    pub(crate) fn anchors(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }
}

impl fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustBundle")
            .field("trust_domain", &self.trust_domain)
            .field("roots", &self.certs.len())
            .finish()
    }
}

impl ClientVerifier {
    /// A verifier for `bundle` that admits only peers `authorize` accepts.
    pub fn new(bundle: Arc<TrustBundle>, authorize: Authorizer) -> Self {
        Self { bundle, authorize }
    }

    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<VerifiedPeer, Reject> {
        let peer = verify_svid(&self.bundle, end_entity, intermediates, now, Usage::Client)?;
        if (self.authorize)(&peer.id, &peer.node) {
            Ok(peer)
        } else {
            Err(Reject::IdentityNotOnNode {
                id: peer.id,
                node: peer.node,
            })
        }
    }
}

impl fmt::Debug for ClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientVerifier")
            .field("bundle", &self.bundle)
            .finish_non_exhaustive()
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    /// Empty: every nodeward peer has exactly one SVID, so hints buy nothing
    /// and would only advertise our CA names.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.check(end_entity, intermediates, now)
            .map(|_| ClientCertVerified::assertion())
            .map_err(|reject| rejected("client", reject))
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, verify::sig_algs())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        verify::sig_algs().supported_schemes()
    }
}

impl ServerVerifier {
    /// A verifier accepting only `expected`, issued by node `expected_node`.
    pub fn new(bundle: Arc<TrustBundle>, expected: SpiffeId, expected_node: String) -> Self {
        Self {
            bundle,
            expected,
            expected_node,
        }
    }

    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<VerifiedPeer, Reject> {
        let peer = verify_svid(&self.bundle, end_entity, intermediates, now, Usage::Server)?;
        if peer.id != self.expected {
            return Err(Reject::IdentityMismatch {
                expected: self.expected.clone(),
                got: peer.id,
            });
        }
        if peer.node != self.expected_node {
            return Err(Reject::IdentityNotOnNode {
                id: peer.id,
                node: peer.node,
            });
        }
        Ok(peer)
    }
}

impl fmt::Debug for ServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerVerifier")
            .field("bundle", &self.bundle)
            .field("expected", &self.expected)
            .field("expected_node", &self.expected_node)
            .finish()
    }
}

impl ServerCertVerifier for ServerVerifier {
    /// `_server_name` is ignored on purpose: SNI routes, the SVID identifies.
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        self.check(end_entity, intermediates, now)
            .map(|_| ServerCertVerified::assertion())
            .map_err(|reject| rejected("server", reject))
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, verify::sig_algs())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        verify::sig_algs().supported_schemes()
    }
}

/// Maps a handshake error to a stable, low-cardinality metric label.
///
/// Our own [`Reject`] reasons pass through unchanged (found by downcasting
/// the `OtherError` the verifiers return); rustls errors get coarse labels.
pub fn reject_reason(err: &Error) -> &'static str {
    match err {
        Error::InvalidCertificate(CertificateError::Other(other)) => {
            downcast_reject(other).unwrap_or("bad_certificate")
        }
        Error::Other(other) => downcast_reject(other).unwrap_or("handshake_error"),
        Error::NoCertificatesPresented => "no_client_certificate",
        Error::InvalidCertificate(cert) => certificate_reason(cert),
        Error::PeerIncompatible(incompatible) => incompatible_reason(incompatible),
        Error::InvalidMessage(_)
        | Error::InappropriateMessage { .. }
        | Error::InappropriateHandshakeMessage { .. }
        | Error::PeerMisbehaved(_) => "protocol_error",
        Error::AlertReceived(_) => "alert_received",
        _ => "handshake_error",
    }
}

fn anchor(
    index: usize,
    cert: &CertificateDer<'_>,
    trust_domain: &str,
) -> Result<TrustAnchor<'static>, BundleError> {
    if let Some(found) = root_trust_domain(cert).filter(|td| td != trust_domain) {
        return Err(BundleError::ForeignRoot { index, found });
    }
    webpki::anchor_from_trusted_cert(cert)
        .map(|anchor| anchor.to_owned())
        .map_err(|source| BundleError::Anchor { index, source })
}

/// The trust domain a root names in a `spiffe://<td>` URI SAN, if any. Roots
/// without one (some CAs omit it) are accepted as they are.
fn root_trust_domain(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert).ok()?;
    let san = x509.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        GeneralName::URI(uri) => trust_domain_from_uri(uri).ok().map(str::to_owned),
        _ => None,
    })
}

/// Wraps a [`Reject`] so callers can get the reason back with
/// [`reject_reason`]. rustls answers the peer with `certificate_unknown`,
/// which tells it nothing about which check failed.
fn rejected(side: &'static str, reject: Reject) -> Error {
    tracing::debug!(peer = side, reason = reject.as_str(), error = %reject, "peer certificate rejected");
    Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(reject))))
}

/// nodeward speaks TLS 1.3 only; a TLS 1.2 signature means a misconfigured
/// config, which we refuse rather than verify.
fn tls12_refused() -> Error {
    Error::PeerIncompatible(PeerIncompatible::Tls12NotOfferedOrEnabled)
}

fn downcast_reject(other: &OtherError) -> Option<&'static str> {
    other.0.downcast_ref::<Reject>().map(Reject::as_str)
}

fn certificate_reason(err: &CertificateError) -> &'static str {
    match err {
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "not_yet_valid"
        }
        CertificateError::UnknownIssuer => "unknown_ca",
        CertificateError::BadSignature => "bad_signature",
        _ => "bad_certificate",
    }
}

/// Version mismatches get their own label (the common case: an old TLS 1.2
/// client); other incompatibilities (no common cipher, group, scheme) are
/// grouped.
fn incompatible_reason(err: &PeerIncompatible) -> &'static str {
    match err {
        PeerIncompatible::Tls12NotOffered
        | PeerIncompatible::Tls12NotOfferedOrEnabled
        | PeerIncompatible::SupportedVersionsExtensionRequired
        | PeerIncompatible::ServerDoesNotSupportTls12Or13
        | PeerIncompatible::ServerTlsVersionIsDisabledByOurConfig
        | PeerIncompatible::Tls13RequiredForQuic => "tls_version",
        _ => "peer_incompatible",
    }
}
