//! A tunnel peer of the tests' own making: node CAs that mint SVID-shaped
//! leaves (the cluster's node keys from disk, or foreign ones), a TLS
//! client config presenting one, and the SNI the tunnel expects. For tests
//! that act as a compromised or broken node against a node proxy.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{
        pem::PemObject, CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime,
    },
    ClientConfig, DigitallySignedStruct, SignatureScheme,
};

/// The tests' trust domain.
const TD: &str = "cluster.local";

/// A certificate chain and its key, as a client presents them.
pub type Chain = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// A client presenting `chain` (or nothing), ALPN `h2`, trusting any server.
pub fn client_config(chain: Option<Chain>, tls12: bool) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let version: &'static rustls::SupportedProtocolVersion = if tls12 {
        &rustls::version::TLS12
    } else {
        &rustls::version::TLS13
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer));
    let mut config = match chain {
        Some((certs, key)) => builder
            .with_client_auth_cert(certs, key)
            .map_err(|e| e.to_string())?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The documented SNI: SHA-256 of the SPIFFE ID, first 16 bytes in hex, `.id.nodeward`.
pub fn sni_name(id: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, id.as_bytes());
    let hex: String = d.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{hex}.id.nodeward")
}

/// A node intermediate (ours from disk, or a foreign one) that mints test leaves.
pub struct NodeCa {
    cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl NodeCa {
    pub fn load(dir: &std::path::Path) -> Self {
        let pem = std::fs::read_to_string(dir.join("node.pem")).expect("node.pem");
        let key =
            KeyPair::from_pem(&std::fs::read_to_string(dir.join("node.key")).expect("node.key"))
                .expect("node key");
        let cert = CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem");
        let issuer = Issuer::from_ca_cert_der(&cert, key).expect("issuer");
        Self { cert, issuer }
    }

    /// A root and a node intermediate unrelated to the cluster's CA.
    pub fn fresh(node: &str) -> Self {
        let root_key = KeyPair::generate().expect("key");
        let mut root = CertificateParams::new(Vec::<String>::new()).expect("params");
        root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        root.distinguished_name = dn("foreign root");
        let root_cert = root.self_signed(&root_key).expect("root");
        let root_issuer = Issuer::from_ca_cert_der(root_cert.der(), root_key).expect("issuer");
        let key = KeyPair::generate().expect("key");
        let mut mid = CertificateParams::new(Vec::<String>::new()).expect("params");
        mid.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        mid.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        mid.distinguished_name = dn("foreign node");
        mid.subject_alt_names = vec![SanType::URI(
            format!("spiffe://{TD}/nodeward/node/{node}")
                .try_into()
                .expect("uri"),
        )];
        let cert = mid.signed_by(&key, &root_issuer).expect("intermediate");
        let cert = cert.der().clone();
        let issuer = Issuer::from_ca_cert_der(&cert, key).expect("issuer");
        Self { cert, issuer }
    }

    /// An SVID-shaped leaf with these URI SANs, after `tweak`.
    pub fn leaf(&self, uris: &[&str], tweak: &dyn Fn(&mut CertificateParams)) -> Chain {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.subject_alt_names = uris
            .iter()
            .map(|u| SanType::URI((*u).try_into().expect("uri")))
            .collect();
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.distinguished_name = dn("test leaf");
        tweak(&mut p);
        let cert = p.signed_by(&key, &self.issuer).expect("leaf");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (vec![cert.der().clone(), self.cert.clone()], key)
    }
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// The tests judge the server; the client accepts whatever it presents.
#[derive(Debug)]
struct AcceptAnyServer;

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
