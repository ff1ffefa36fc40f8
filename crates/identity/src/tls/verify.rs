//! X.509-SVID verification: rustls-webpki for the chain, our own code for
//! what the SPIFFE standard adds and webpki does not check (URI SAN count,
//! key usage criticality, trust-domain binding, the node intermediate).

use std::sync::LazyLock;

use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, UnixTime};
use thiserror::Error;
use webpki::{EndEntityCert, KeyUsage};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::spiffe::{SpiffeId, SpiffeIdError};
use crate::tls::TrustBundle;

/// Which side of the handshake the certificate authenticates; selects the
/// EKU webpki requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// The peer is a client (we are the server).
    Client,
    /// The peer is a server (we are the client).
    Server,
}

/// A peer that passed verification: its workload ID and the node whose
/// intermediate CA issued it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedPeer {
    pub id: SpiffeId,
    pub node: String,
}

/// Why a peer certificate was refused. [`Reject::as_str`] gives a stable
/// label for metrics; `Display` is for logs (peer-supplied text is either
/// validated or `{:?}`-escaped first).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Reject {
    #[error("peer sent {0} intermediate certificates, expected exactly 1 (its node CA)")]
    ChainShape(usize),
    #[error("certificate is not valid DER X.509")]
    Malformed,
    #[error("certificate has {0} URI SANs, expected exactly 1")]
    UriSanCount(usize),
    #[error("URI SAN is not a valid SPIFFE ID")]
    InvalidSpiffeId(#[source] SpiffeIdError),
    #[error("trust domain {got:?} is not the local trust domain {expected:?}")]
    TrustDomain { expected: String, got: String },
    #[error("certificate has expired")]
    Expired,
    #[error("certificate is not yet valid")]
    NotYetValid,
    #[error("certificate is not issued by a trusted CA")]
    UnknownCa,
    #[error("certificate signature does not verify")]
    BadSignature,
    #[error("leaf certificate is a CA")]
    LeafIsCa,
    #[error(
        "leaf key usage must be critical with digitalSignature and without keyCertSign/cRLSign"
    )]
    KeyUsage,
    #[error("leaf extended key usage must allow both serverAuth and clientAuth")]
    ExtendedKeyUsage,
    #[error("issuer is not a node CA of this trust domain")]
    NoNodeIdentity,
    #[error("{id} is not allowed from node {node:?}")]
    IdentityNotOnNode { id: SpiffeId, node: String },
    #[error("peer is {got}, expected {expected}")]
    IdentityMismatch { expected: SpiffeId, got: SpiffeId },
    #[error("certificate chain rejected: {0}")]
    Chain(String),
}

impl Reject {
    /// Stable, low-cardinality label for metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::ChainShape(_) => "chain_shape",
            Self::Malformed => "malformed",
            Self::UriSanCount(_) => "uri_san_count",
            Self::InvalidSpiffeId(_) => "invalid_spiffe_id",
            Self::TrustDomain { .. } => "trust_domain",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::UnknownCa => "unknown_ca",
            Self::BadSignature => "bad_signature",
            Self::LeafIsCa => "leaf_is_ca",
            Self::KeyUsage => "key_usage",
            Self::ExtendedKeyUsage => "extended_key_usage",
            Self::NoNodeIdentity => "no_node_identity",
            Self::IdentityNotOnNode { .. } => "identity_not_on_node",
            Self::IdentityMismatch { .. } => "identity_mismatch",
            Self::Chain(_) => "chain",
        }
    }
}

/// Verifies a peer's X.509-SVID chain `[end_entity, intermediate]` against
/// `bundle` at time `now`.
///
/// The trust domain is checked before any signature: a bundle only ever
/// vouches for its own trust domain, so no CA can mint another's SVIDs.
pub fn verify_svid(
    bundle: &TrustBundle,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    usage: Usage,
) -> Result<VerifiedPeer, Reject> {
    let [intermediate] = intermediates else {
        return Err(Reject::ChainShape(intermediates.len()));
    };
    let leaf = parse(end_entity)?;
    let id = spiffe_id(&leaf)?;
    if id.trust_domain() != bundle.trust_domain() {
        return Err(Reject::TrustDomain {
            expected: bundle.trust_domain().to_owned(),
            got: id.trust_domain().to_owned(),
        });
    }
    verify_chain(bundle, end_entity, intermediates, now, usage)?;
    check_leaf(&leaf)?;
    let node = node_of(&leaf, intermediate, bundle.trust_domain())?;
    Ok(VerifiedPeer { id, node })
}

/// Reads the peer of an already verified chain (no cryptography): the
/// leaf's SPIFFE ID and the node named by its intermediate.
pub fn peer_from_chain(chain: &[CertificateDer<'_>]) -> Result<VerifiedPeer, Reject> {
    let [leaf_der, intermediate] = chain else {
        return Err(Reject::ChainShape(chain.len().saturating_sub(1)));
    };
    let leaf = parse(leaf_der)?;
    let id = spiffe_id(&leaf)?;
    let node = node_of(&leaf, intermediate, id.trust_domain())?;
    Ok(VerifiedPeer { id, node })
}

/// The signature algorithms of the ring provider, built once.
pub(crate) fn sig_algs() -> &'static WebPkiSupportedAlgorithms {
    static ALGS: LazyLock<WebPkiSupportedAlgorithms> = LazyLock::new(|| {
        rustls::crypto::ring::default_provider().signature_verification_algorithms
    });
    &ALGS
}

fn parse<'a>(der: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>, Reject> {
    match x509_parser::parse_x509_certificate(der) {
        Ok(([], cert)) => Ok(cert),
        _ => Err(Reject::Malformed),
    }
}

/// The single URI SAN as a SPIFFE ID. DNS or IP SANs may sit beside it,
/// but a second URI would make "who is this" ambiguous.
fn spiffe_id(cert: &X509Certificate<'_>) -> Result<SpiffeId, Reject> {
    match uri_sans(cert)?.as_slice() {
        [uri] => SpiffeId::parse(uri).map_err(Reject::InvalidSpiffeId),
        uris => Err(Reject::UriSanCount(uris.len())),
    }
}

fn uri_sans<'a>(cert: &'a X509Certificate<'_>) -> Result<Vec<&'a str>, Reject> {
    let Some(san) = cert
        .subject_alternative_name()
        .map_err(|_| Reject::Malformed)?
    else {
        return Ok(Vec::new());
    };
    Ok(san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect())
}

/// Chain, validity, signatures, basic constraints, path length and EKU, by
/// webpki. The path must run through the presented intermediate: a leaf
/// signed straight by the root has no node to vouch for it.
fn verify_chain(
    bundle: &TrustBundle,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    usage: Usage,
) -> Result<(), Reject> {
    let cert = EndEntityCert::try_from(end_entity).map_err(|_| Reject::Malformed)?;
    let eku = match usage {
        Usage::Client => KeyUsage::client_auth(),
        Usage::Server => KeyUsage::server_auth(),
    };
    let path = cert
        .verify_for_usage(
            sig_algs().all,
            bundle.anchors(),
            intermediates,
            now,
            eku,
            None,
            None,
        )
        .map_err(map_webpki)?;
    match path.intermediate_certificates().count() {
        1 => Ok(()),
        _ => Err(Reject::NoNodeIdentity),
    }
}

fn map_webpki(err: webpki::Error) -> Reject {
    use webpki::Error as E;
    match err {
        E::CertExpired { .. } => Reject::Expired,
        E::CertNotValidYet { .. } => Reject::NotYetValid,
        E::UnknownIssuer => Reject::UnknownCa,
        E::CaUsedAsEndEntity => Reject::LeafIsCa,
        E::InvalidSignatureForPublicKey
        | E::UnsupportedSignatureAlgorithmContext(_)
        | E::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => Reject::BadSignature,
        E::RequiredEkuNotFoundContext(_) | E::EmptyEkuExtension => Reject::ExtendedKeyUsage,
        other => Reject::Chain(other.to_string()),
    }
}

/// The X.509-SVID leaf rules webpki leaves to us.
fn check_leaf(leaf: &X509Certificate<'_>) -> Result<(), Reject> {
    let bc = leaf.basic_constraints().map_err(|_| Reject::Malformed)?;
    if bc.is_some_and(|bc| bc.value.ca) {
        return Err(Reject::LeafIsCa);
    }
    let ku = leaf.key_usage().map_err(|_| Reject::Malformed)?;
    let ku = ku.ok_or(Reject::KeyUsage)?;
    if !ku.critical
        || !ku.value.digital_signature()
        || ku.value.key_cert_sign()
        || ku.value.crl_sign()
    {
        return Err(Reject::KeyUsage);
    }
    let eku = leaf.extended_key_usage().map_err(|_| Reject::Malformed)?;
    match eku {
        Some(eku) if !(eku.value.server_auth && eku.value.client_auth) => {
            Err(Reject::ExtendedKeyUsage)
        }
        _ => Ok(()),
    }
}

/// The node vouching for the leaf: the intermediate's URI SAN must be a node
/// ID of `trust_domain`, it must be allowed to sign, and it must be the
/// leaf's issuer.
fn node_of(
    leaf: &X509Certificate<'_>,
    intermediate: &CertificateDer<'_>,
    trust_domain: &str,
) -> Result<String, Reject> {
    let ca = parse(intermediate)?;
    let id = match uri_sans(&ca)?.as_slice() {
        [uri] => SpiffeId::parse(uri).map_err(|_| Reject::NoNodeIdentity)?,
        _ => return Err(Reject::NoNodeIdentity),
    };
    let can_sign = ca
        .key_usage()
        .map_err(|_| Reject::Malformed)?
        .is_some_and(|ku| ku.value.key_cert_sign());
    let issued_leaf = leaf.issuer().as_raw() == ca.subject().as_raw();
    match id.node_name() {
        Some(node) if id.trust_domain() == trust_domain && can_sign && issued_leaf => {
            Ok(node.to_owned())
        }
        _ => Err(Reject::NoNodeIdentity),
    }
}
