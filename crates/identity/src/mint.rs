//! The node's intermediate CA at run time: it mints short-lived X.509-SVIDs
//! for the workloads on this node.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::sign::CertifiedKey;

use crate::ca::{
    invalid, new_key, random_serial, read_certs, subject_o, uri_san, CaError, Signer, BUNDLE,
    NODE_CERT, NODE_KEY,
};
use crate::spiffe::SpiffeId;
use crate::tls::{verify_svid, TrustBundle, Usage};

/// Long enough to be verified right after minting, short enough to be useless
/// if it ever leaked (it never leaves the process).
const PROBE_LIFETIME: Duration = Duration::from_secs(120);

/// A node's intermediate CA (`node.pem`, `node.key`) and trust bundle
/// (`bundle.pem`), loaded and checked.
pub struct NodeCa {
    signer: Signer,
    id: SpiffeId,
    node: String,
    bundle: Arc<TrustBundle>,
    cert_path: PathBuf,
}

/// An X.509-SVID: a workload's certificate chain and private key.
pub struct Svid {
    pub id: SpiffeId,
    /// `[leaf, node intermediate]`, the chain nodeward peers always present.
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivatePkcs8KeyDer<'static>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl NodeCa {
    /// Loads the node CA from `dir` and proves it usable: its URI SAN must be
    /// a node ID, and an SVID it mints must pass the same verification peers
    /// apply. A broken CA therefore fails at start-up, not on first traffic.
    pub fn load(dir: &Path) -> Result<Self, CaError> {
        let cert_path = dir.join(NODE_CERT);
        let signer = Signer::load(&cert_path, &dir.join(NODE_KEY))?;
        let id = SpiffeId::parse(&signer.uri).map_err(|e| invalid(&cert_path, e))?;
        let Some(node) = id.node_name().map(str::to_owned) else {
            return Err(invalid(&cert_path, "URI SAN is not a nodeward node ID"));
        };
        let bundle_path = dir.join(BUNDLE);
        let bundle = TrustBundle::from_der(read_certs(&bundle_path)?, id.trust_domain()).map_err(
            |source| CaError::Bundle {
                path: bundle_path,
                source,
            },
        )?;
        let ca = Self {
            signer,
            id,
            node,
            bundle: Arc::new(bundle),
            cert_path,
        };
        ca.self_check()?;
        Ok(ca)
    }

    /// The trust domain this CA issues for.
    pub fn trust_domain(&self) -> &str {
        self.id.trust_domain()
    }

    /// The name of the node this CA belongs to.
    pub fn node_name(&self) -> &str {
        &self.node
    }

    /// The node CA's own ID, `spiffe://<td>/nodeward/node/<node>`.
    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    /// The trust bundle's root certificates.
    pub fn bundle(&self) -> &[CertificateDer<'static>] {
        self.bundle.certs()
    }

    /// The trust bundle, ready for [`crate::tls::ClientVerifier`] and
    /// [`crate::tls::ServerVerifier`].
    pub fn trust_bundle(&self) -> Arc<TrustBundle> {
        Arc::clone(&self.bundle)
    }

    /// When the node certificate expires; no SVID outlives it.
    pub fn not_after(&self) -> SystemTime {
        self.signer.not_after
    }

    /// Issues an SVID for `id`, valid from a minute ago (clock skew) until
    /// `lifetime` from now or the node certificate's expiry, whichever is
    /// first. IDs of other trust domains are refused.
    pub fn mint(&self, id: &SpiffeId, lifetime: Duration) -> Result<Svid, CaError> {
        if id.trust_domain() != self.trust_domain() {
            return Err(CaError::ForeignTrustDomain {
                id: id.clone(),
                expected: self.trust_domain().to_owned(),
            });
        }
        let (not_before, not_after) = self.signer.validity_for(lifetime, &self.cert_path)?;
        let key = new_key()?;
        let leaf = self.sign(&svid_params(id, not_before, not_after)?, &key)?;
        Ok(Svid {
            id: id.clone(),
            chain: vec![leaf, self.signer.cert.clone()],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            not_before,
            not_after,
        })
    }

    /// Signs arbitrary leaf parameters with the node key. Crate-private: only
    /// [`NodeCa::mint`] and tests crafting deliberately bad leaves use it.
    pub(crate) fn sign(
        &self,
        params: &CertificateParams,
        key: &KeyPair,
    ) -> Result<CertificateDer<'static>, CaError> {
        params
            .signed_by(key, &self.signer.issuer)
            .map(Into::into)
            .map_err(CaError::Generate)
    }

    /// The node intermediate certificate.
    #[cfg(test)]
    pub(crate) fn cert(&self) -> &CertificateDer<'static> {
        &self.signer.cert
    }

    fn self_check(&self) -> Result<(), CaError> {
        let probe = self.mint(&self.id, PROBE_LIFETIME)?;
        let chain_err = |source| CaError::Chain {
            path: self.cert_path.clone(),
            source,
        };
        let Some((leaf, intermediates)) = probe.chain.split_first() else {
            return Err(invalid(&self.cert_path, "minted an empty chain"));
        };
        verify_svid(
            &self.bundle,
            leaf,
            intermediates,
            UnixTime::now(),
            Usage::Server,
        )
        .map(drop)
        .map_err(chain_err)
    }
}

impl fmt::Debug for NodeCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeCa")
            .field("id", &self.id)
            .field("not_after", &self.signer.not_after)
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

impl Svid {
    /// The chain and key in the form rustls serves, loaded by the ring
    /// provider's key provider (which also checks key and leaf match).
    pub fn certified_key(&self) -> Result<Arc<CertifiedKey>, CaError> {
        let provider = rustls::crypto::ring::default_provider();
        let key = PrivateKeyDer::Pkcs8(self.key.clone_key());
        CertifiedKey::from_der(self.chain.clone(), key, &provider)
            .map(Arc::new)
            .map_err(CaError::Rustls)
    }
}

/// Never prints the key, only that there is one.
impl fmt::Debug for Svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Svid")
            .field("id", &self.id)
            .field("chain_len", &self.chain.len())
            .field("key", &"<redacted>")
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish()
    }
}

/// The leaf profile of the X.509-SVID standard: one URI SAN, `cA=false`,
/// critical key usage digitalSignature, EKU serverAuth + clientAuth.
pub(crate) fn svid_params(
    id: &SpiffeId,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    params.serial_number = Some(random_serial()?);
    params.subject_alt_names = vec![uri_san(id.to_string())?];
    params.distinguished_name = subject_o(id.trust_domain());
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}
