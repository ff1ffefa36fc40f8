use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::{
    AlertDescription, CertificateError, ClientConfig, ClientConnection, Connection, Error,
    OtherError, PeerIncompatible, ServerConfig, ServerConnection,
};
use tempfile::TempDir;

use crate::ca::{self, Signer};
use crate::mint::{svid_params, NodeCa};
use crate::tls::{
    peer_from_chain, reject_reason, verify_svid, Authorizer, ClientVerifier, Reject,
    ServerVerifier, TrustBundle, Usage, VerifiedPeer,
};
use crate::{SpiffeId, Svid};

const TD: &str = "cluster.local";
const WEB: &str = "spiffe://cluster.local/ns/default/sa/web";
const HOUR: Duration = Duration::from_secs(3600);

/// A root CA and node "node-a" in a temporary directory.
struct Pki {
    dir: TempDir,
    ca: NodeCa,
    bundle: Arc<TrustBundle>,
}

impl Pki {
    fn new(td: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        ca::init(td, &dir.path().join("ca"), false).expect("init");
        let node = dir.path().join("node");
        ca::issue_node(&dir.path().join("ca"), "node-a", &node, 24 * HOUR, false).expect("issue");
        let ca = NodeCa::load(&node).expect("load");
        let bundle = ca.trust_bundle();
        Self { dir, ca, bundle }
    }

    fn svid(&self, id: &str) -> Svid {
        self.ca.mint(&id_of(id), HOUR).expect("mint")
    }

    /// `[leaf, node]` for a leaf crafted from `params`, signed by the node CA.
    fn chain(&self, params: &CertificateParams) -> Vec<CertificateDer<'static>> {
        let key = KeyPair::generate().expect("key");
        let leaf = self.ca.sign(params, &key).expect("sign");
        vec![leaf, self.ca.cert().clone()]
    }

    fn verify(&self, chain: &[CertificateDer<'_>], usage: Usage) -> Result<VerifiedPeer, Reject> {
        verify_svid(&self.bundle, &chain[0], &chain[1..], UnixTime::now(), usage)
    }

    /// Verifies as both client and server; the outcome must not depend on it.
    fn verify_both(&self, chain: &[CertificateDer<'_>]) -> Result<VerifiedPeer, Reject> {
        let client = self.verify(chain, Usage::Client);
        assert_eq!(client, self.verify(chain, Usage::Server));
        client
    }
}

fn id_of(s: &str) -> SpiffeId {
    SpiffeId::parse(s).expect("valid id")
}

/// The good SVID profile, ready to be broken one field at a time.
fn good_params(id: &str) -> CertificateParams {
    let now = SystemTime::now();
    svid_params(&id_of(id), now - Duration::from_secs(60), now + HOUR).expect("params")
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().expect("ia5"))
}

fn allow_all() -> Authorizer {
    Arc::new(|_: &SpiffeId, _: &str| true)
}

fn peer(id: &str) -> VerifiedPeer {
    VerifiedPeer {
        id: id_of(id),
        node: "node-a".into(),
    }
}

// ---- verify_svid ----

#[test]
fn valid_svid_accepted_with_id_and_node() {
    let pki = Pki::new(TD);
    let svid = pki.svid(WEB);
    assert_eq!(pki.verify_both(&svid.chain), Ok(peer(WEB)));
}

#[test]
fn dns_san_beside_the_uri_is_allowed() {
    let pki = Pki::new(TD);
    let mut params = good_params(WEB);
    params
        .subject_alt_names
        .push(SanType::DnsName("web.default.svc".try_into().expect("dns")));
    assert_eq!(pki.verify_both(&pki.chain(&params)), Ok(peer(WEB)));
}

#[test]
fn expired_leaf_rejected() {
    let pki = Pki::new(TD);
    let mut params = good_params(WEB);
    let now = SystemTime::now();
    params.not_before = (now - 2 * HOUR).into();
    params.not_after = (now - HOUR).into();
    assert_eq!(pki.verify_both(&pki.chain(&params)), Err(Reject::Expired));
}

#[test]
fn not_yet_valid_leaf_rejected() {
    let pki = Pki::new(TD);
    let mut params = good_params(WEB);
    let now = SystemTime::now();
    params.not_before = (now + HOUR).into();
    params.not_after = (now + 2 * HOUR).into();
    assert_eq!(
        pki.verify_both(&pki.chain(&params)),
        Err(Reject::NotYetValid)
    );
}

#[test]
fn chain_from_another_ca_of_the_same_trust_domain_rejected() {
    let ours = Pki::new(TD);
    let theirs = Pki::new(TD);
    let svid = theirs.svid(WEB);
    // Both roots are named "nodeward root CA, O=cluster.local", so webpki
    // finds our root as the issuer by name and the signature check fails.
    assert_eq!(ours.verify_both(&svid.chain), Err(Reject::BadSignature));
}

#[test]
fn root_with_another_name_is_an_unknown_ca() {
    let pki = Pki::new(TD);
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let root = params.self_signed(&key).expect("root");
    let bundle = TrustBundle::from_der(vec![root.der().clone()], TD).expect("bundle");
    let svid = pki.svid(WEB);
    let got = verify_svid(
        &bundle,
        &svid.chain[0],
        &svid.chain[1..],
        UnixTime::now(),
        Usage::Client,
    );
    assert_eq!(got, Err(Reject::UnknownCa));
}

#[test]
fn other_trust_domain_rejected_before_chain_validation() {
    let pki = Pki::new(TD);
    // Signed by our own node CA: only the trust-domain check can catch it.
    let mut params = good_params("spiffe://other.td/ns/default/sa/web");
    let now = SystemTime::now();
    params.not_after = (now - HOUR).into(); // also expired: must not matter
    params.not_before = (now - 2 * HOUR).into();
    let got = pki.verify_both(&pki.chain(&params));
    assert_eq!(
        got,
        Err(Reject::TrustDomain {
            expected: TD.into(),
            got: "other.td".into()
        })
    );
}

#[test]
fn two_uri_sans_rejected() {
    let pki = Pki::new(TD);
    let mut params = good_params(WEB);
    params
        .subject_alt_names
        .push(uri("spiffe://cluster.local/ns/kube-system/sa/admin"));
    assert_eq!(
        pki.verify_both(&pki.chain(&params)),
        Err(Reject::UriSanCount(2))
    );
}

#[test]
fn missing_uri_san_rejected() {
    let pki = Pki::new(TD);
    let mut params = good_params(WEB);
    params.subject_alt_names = vec![SanType::DnsName("web".try_into().expect("dns"))];
    assert_eq!(
        pki.verify_both(&pki.chain(&params)),
        Err(Reject::UriSanCount(0))
    );
}

#[test]
fn invalid_spiffe_id_rejected() {
    let pki = Pki::new(TD);
    let mut params = good_params(WEB);
    params.subject_alt_names = vec![uri("spiffe://cluster.local/ns/../sa/web")];
    let got = pki.verify_both(&pki.chain(&params));
    assert!(matches!(got, Err(Reject::InvalidSpiffeId(_))), "{got:?}");
}

#[test]
fn ca_leaf_rejected() {
    let pki = Pki::new(TD);
    let mut params = good_params(WEB);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    assert_eq!(pki.verify_both(&pki.chain(&params)), Err(Reject::LeafIsCa));
}

#[test]
fn missing_key_usage_rejected() {
    let pki = Pki::new(TD);
    let mut params = good_params(WEB);
    params.key_usages.clear();
    assert_eq!(pki.verify_both(&pki.chain(&params)), Err(Reject::KeyUsage));
}

#[test]
fn non_critical_key_usage_rejected() {
    let pki = Pki::new(TD);
    let mut params = good_params(WEB);
    params.key_usages.clear();
    // keyUsage (2.5.29.15) = BIT STRING digitalSignature, marked non-critical.
    let ku = CustomExtension::from_oid_content(&[2, 5, 29, 15], vec![0x03, 0x02, 0x07, 0x80]);
    assert!(!ku.criticality());
    params.custom_extensions.push(ku);
    assert_eq!(pki.verify_both(&pki.chain(&params)), Err(Reject::KeyUsage));
}

#[test]
fn key_usage_with_key_cert_sign_rejected() {
    let pki = Pki::new(TD);
    let mut params = good_params(WEB);
    params.key_usages.push(KeyUsagePurpose::KeyCertSign);
    assert_eq!(pki.verify_both(&pki.chain(&params)), Err(Reject::KeyUsage));
}

#[test]
fn key_usage_without_digital_signature_rejected() {
    let pki = Pki::new(TD);
    let mut params = good_params(WEB);
    params.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
    assert_eq!(pki.verify_both(&pki.chain(&params)), Err(Reject::KeyUsage));
}

#[test]
fn server_auth_only_eku_rejected_for_both_usages() {
    let pki = Pki::new(TD);
    let mut params = good_params(WEB);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    // As a client cert webpki refuses it; as a server cert our check does.
    assert_eq!(
        pki.verify_both(&pki.chain(&params)),
        Err(Reject::ExtendedKeyUsage)
    );
}

#[test]
fn absent_eku_is_allowed() {
    let pki = Pki::new(TD);
    let mut params = good_params(WEB);
    params.extended_key_usages.clear();
    assert_eq!(pki.verify_both(&pki.chain(&params)), Ok(peer(WEB)));
}

#[test]
fn chain_without_intermediate_rejected() {
    let pki = Pki::new(TD);
    let svid = pki.svid(WEB);
    assert_eq!(
        pki.verify_both(&svid.chain[..1]),
        Err(Reject::ChainShape(0))
    );
}

#[test]
fn chain_with_two_intermediates_rejected() {
    let pki = Pki::new(TD);
    let svid = pki.svid(WEB);
    let mut chain = svid.chain.clone();
    chain.push(pki.bundle.certs()[0].clone());
    assert_eq!(pki.verify_both(&chain), Err(Reject::ChainShape(2)));
}

#[test]
fn garbage_leaf_is_malformed() {
    let pki = Pki::new(TD);
    let chain = vec![
        CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01]),
        pki.ca.cert().clone(),
    ];
    assert_eq!(pki.verify_both(&chain), Err(Reject::Malformed));
}

#[test]
fn leaf_signed_by_the_root_has_no_node_identity() {
    let pki = Pki::new(TD);
    let ca_dir = pki.dir.path().join("ca");
    let root = Signer::load(&ca_dir.join(ca::CA_CERT), &ca_dir.join(ca::CA_KEY)).expect("root");
    let key = KeyPair::generate().expect("key");
    let leaf = good_params(WEB)
        .signed_by(&key, &root.issuer)
        .expect("sign");
    let chain = vec![leaf.der().clone(), pki.ca.cert().clone()];
    assert_eq!(pki.verify_both(&chain), Err(Reject::NoNodeIdentity));
}

#[test]
fn reject_labels_are_distinct() {
    let id = id_of(WEB);
    let all = [
        Reject::ChainShape(0),
        Reject::Malformed,
        Reject::UriSanCount(0),
        Reject::InvalidSpiffeId(crate::SpiffeIdError::Scheme),
        Reject::TrustDomain {
            expected: TD.into(),
            got: "x".into(),
        },
        Reject::Expired,
        Reject::NotYetValid,
        Reject::UnknownCa,
        Reject::BadSignature,
        Reject::LeafIsCa,
        Reject::KeyUsage,
        Reject::ExtendedKeyUsage,
        Reject::NoNodeIdentity,
        Reject::IdentityNotOnNode {
            id: id.clone(),
            node: "n".into(),
        },
        Reject::IdentityMismatch {
            expected: id.clone(),
            got: id,
        },
        Reject::Chain("x".into()),
    ];
    let mut labels: Vec<_> = all.iter().map(Reject::as_str).collect();
    labels.sort_unstable();
    labels.dedup();
    assert_eq!(labels.len(), all.len());
}

// ---- peer_from_chain ----

#[test]
fn peer_from_chain_reads_id_and_node() {
    let pki = Pki::new(TD);
    let svid = pki.svid(WEB);
    assert_eq!(peer_from_chain(&svid.chain), Ok(peer(WEB)));
    assert_eq!(
        peer_from_chain(&svid.chain[..1]),
        Err(Reject::ChainShape(0))
    );
}

// ---- rustls verifiers ----

#[test]
fn client_verifier_accepts_and_passes_peer_to_authorizer() {
    let pki = Pki::new(TD);
    let seen = Arc::new(Mutex::new(None));
    let record = Arc::clone(&seen);
    let authorize: Authorizer = Arc::new(move |id: &SpiffeId, node: &str| {
        *record.lock().expect("lock") = Some((id.clone(), node.to_owned()));
        true
    });
    let verifier = ClientVerifier::new(Arc::clone(&pki.bundle), authorize);
    assert!(verifier.client_auth_mandatory());
    assert!(verifier.root_hint_subjects().is_empty());
    let svid = pki.svid(WEB);
    verifier
        .verify_client_cert(&svid.chain[0], &svid.chain[1..], UnixTime::now())
        .expect("accepted");
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen, Some((id_of(WEB), "node-a".to_owned())));
}

#[test]
fn authorizer_refusal_is_identity_not_on_node() {
    let pki = Pki::new(TD);
    let verifier = ClientVerifier::new(
        Arc::clone(&pki.bundle),
        Arc::new(|_: &SpiffeId, _: &str| false),
    );
    let svid = pki.svid(WEB);
    let err = verifier
        .verify_client_cert(&svid.chain[0], &svid.chain[1..], UnixTime::now())
        .expect_err("refused");
    assert_eq!(reject_reason(&err), "identity_not_on_node");
    assert_eq!(
        downcast(&err),
        Some(Reject::IdentityNotOnNode {
            id: id_of(WEB),
            node: "node-a".into()
        })
    );
}

#[test]
fn client_verifier_wraps_chain_rejects() {
    let pki = Pki::new(TD);
    let verifier = ClientVerifier::new(Arc::clone(&pki.bundle), allow_all());
    let svid = pki.svid(WEB);
    let err = verifier
        .verify_client_cert(&svid.chain[0], &[], UnixTime::now())
        .expect_err("no intermediate");
    assert_eq!(reject_reason(&err), "chain_shape");
}

#[test]
fn server_verifier_accepts_expected_identity_whatever_the_sni() {
    let pki = Pki::new(TD);
    let verifier = ServerVerifier::new(Arc::clone(&pki.bundle), id_of(WEB), "node-a".into());
    let svid = pki.svid(WEB);
    let sni = ServerName::try_from("unrelated.example").expect("sni");
    verifier
        .verify_server_cert(&svid.chain[0], &svid.chain[1..], &sni, &[], UnixTime::now())
        .expect("accepted");
}

#[test]
fn server_verifier_rejects_identity_mismatch() {
    let pki = Pki::new(TD);
    let expected = id_of("spiffe://cluster.local/ns/default/sa/db");
    let verifier = ServerVerifier::new(Arc::clone(&pki.bundle), expected.clone(), "node-a".into());
    let svid = pki.svid(WEB);
    let sni = ServerName::try_from("db").expect("sni");
    let err = verifier
        .verify_server_cert(&svid.chain[0], &svid.chain[1..], &sni, &[], UnixTime::now())
        .expect_err("mismatch");
    assert_eq!(reject_reason(&err), "identity_mismatch");
    assert_eq!(
        downcast(&err),
        Some(Reject::IdentityMismatch {
            expected,
            got: id_of(WEB)
        })
    );
}

#[test]
fn server_verifier_rejects_other_node() {
    let pki = Pki::new(TD);
    let verifier = ServerVerifier::new(Arc::clone(&pki.bundle), id_of(WEB), "node-b".into());
    let svid = pki.svid(WEB);
    let sni = ServerName::try_from("web").expect("sni");
    let err = verifier
        .verify_server_cert(&svid.chain[0], &svid.chain[1..], &sni, &[], UnixTime::now())
        .expect_err("wrong node");
    assert_eq!(reject_reason(&err), "identity_not_on_node");
}

fn downcast(err: &Error) -> Option<Reject> {
    match err {
        Error::InvalidCertificate(CertificateError::Other(OtherError(e))) => {
            e.downcast_ref::<Reject>().cloned()
        }
        _ => None,
    }
}

// ---- in-memory handshakes ----

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn key_of(svid: &Svid) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(svid.key.clone_key())
}

fn server_config(pki: &Pki, svid: &Svid, authorize: Authorizer) -> Arc<ServerConfig> {
    let verifier = ClientVerifier::new(Arc::clone(&pki.bundle), authorize);
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(svid.chain.clone(), key_of(svid))
        .expect("server cert");
    Arc::new(config)
}

fn client_config(
    pki: &Pki,
    svid: &Svid,
    server: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let verifier = ServerVerifier::new(Arc::clone(&pki.bundle), id_of(server), "node-a".into());
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(svid.chain.clone(), key_of(svid))
        .expect("client cert");
    Arc::new(config)
}

fn connections(client: Arc<ClientConfig>, server: Arc<ServerConfig>) -> (Connection, Connection) {
    let sni = ServerName::try_from("web.default.svc").expect("sni");
    let client = ClientConnection::new(client, sni).expect("client");
    let server = ServerConnection::new(server).expect("server");
    (client.into(), server.into())
}

/// Moves TLS records between the two sides until neither has anything left
/// to say, recording each side's first error (its alert still gets sent).
fn pump(
    client: &mut Connection,
    server: &mut Connection,
) -> (Result<(), Error>, Result<(), Error>) {
    let (mut client_result, mut server_result) = (Ok(()), Ok(()));
    for _ in 0..32 {
        let to_server = transfer(client, server, &mut server_result);
        let to_client = transfer(server, client, &mut client_result);
        if !to_server && !to_client {
            break;
        }
    }
    (client_result, server_result)
}

fn transfer(from: &mut Connection, to: &mut Connection, to_result: &mut Result<(), Error>) -> bool {
    let mut bytes = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut bytes).expect("write_tls");
    }
    if bytes.is_empty() || to_result.is_err() {
        return false;
    }
    let mut input = &bytes[..];
    while !input.is_empty() {
        to.read_tls(&mut input).expect("read_tls");
        if let Err(e) = to.process_new_packets() {
            *to_result = Err(e);
            break;
        }
    }
    true
}

#[test]
fn mtls_handshake_over_tls13_identifies_both_sides() {
    let pki = Pki::new(TD);
    let server_svid = pki.svid(WEB);
    let client_svid = pki.svid("spiffe://cluster.local/ns/shop/sa/frontend");
    let (mut client, mut server) = connections(
        client_config(&pki, &client_svid, WEB, &[&rustls::version::TLS13]),
        server_config(&pki, &server_svid, allow_all()),
    );
    let (client_result, server_result) = pump(&mut client, &mut server);
    client_result.expect("client accepted the server");
    server_result.expect("server accepted the client");
    assert!(!client.is_handshaking() && !server.is_handshaking());
    assert_eq!(
        server.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );

    let seen_by_server = peer_from_chain(server.peer_certificates().expect("client certs"));
    assert_eq!(
        seen_by_server,
        Ok(peer("spiffe://cluster.local/ns/shop/sa/frontend"))
    );
    let seen_by_client = peer_from_chain(client.peer_certificates().expect("server certs"));
    assert_eq!(seen_by_client, Ok(peer(WEB)));
}

#[test]
fn handshake_refused_by_authorizer_reports_reasons_on_both_sides() {
    let pki = Pki::new(TD);
    let server_svid = pki.svid(WEB);
    let client_svid = pki.svid("spiffe://cluster.local/ns/shop/sa/frontend");
    let (mut client, mut server) = connections(
        client_config(&pki, &client_svid, WEB, &[&rustls::version::TLS13]),
        server_config(&pki, &server_svid, Arc::new(|_: &SpiffeId, _: &str| false)),
    );
    let (client_result, server_result) = pump(&mut client, &mut server);
    let server_err = server_result.expect_err("server refuses");
    assert_eq!(reject_reason(&server_err), "identity_not_on_node");
    let client_err = client_result.expect_err("client hears the alert");
    // rustls sends certificate_unknown for `CertificateError::Other`.
    assert_eq!(
        client_err,
        Error::AlertReceived(AlertDescription::CertificateUnknown)
    );
    assert_eq!(reject_reason(&client_err), "alert_received");
}

#[test]
fn tls12_only_client_is_a_tls_version_reject() {
    let pki = Pki::new(TD);
    let server_svid = pki.svid(WEB);
    let client_svid = pki.svid("spiffe://cluster.local/ns/shop/sa/frontend");
    let (mut client, mut server) = connections(
        client_config(&pki, &client_svid, WEB, &[&rustls::version::TLS12]),
        server_config(&pki, &server_svid, allow_all()),
    );
    let (_, server_result) = pump(&mut client, &mut server);
    let err = server_result.expect_err("server refuses TLS 1.2");
    assert!(matches!(err, Error::PeerIncompatible(_)), "{err:?}");
    assert_eq!(reject_reason(&err), "tls_version");
}

#[test]
fn reject_reason_maps_rustls_errors() {
    use CertificateError as C;
    let cases = [
        (Error::NoCertificatesPresented, "no_client_certificate"),
        (Error::InvalidCertificate(C::Expired), "expired"),
        (Error::InvalidCertificate(C::NotValidYet), "not_yet_valid"),
        (Error::InvalidCertificate(C::UnknownIssuer), "unknown_ca"),
        (Error::InvalidCertificate(C::BadSignature), "bad_signature"),
        (Error::InvalidCertificate(C::BadEncoding), "bad_certificate"),
        (
            Error::InvalidCertificate(C::Other(OtherError(Arc::new(std::fmt::Error)))),
            "bad_certificate",
        ),
        (
            Error::InvalidCertificate(C::Other(OtherError(Arc::new(Reject::KeyUsage)))),
            "key_usage",
        ),
        (
            Error::PeerIncompatible(PeerIncompatible::SupportedVersionsExtensionRequired),
            "tls_version",
        ),
        (
            Error::PeerIncompatible(PeerIncompatible::NoCipherSuitesInCommon),
            "peer_incompatible",
        ),
        (
            Error::InvalidMessage(rustls::InvalidMessage::MessageTooShort),
            "protocol_error",
        ),
        (
            Error::AlertReceived(AlertDescription::HandshakeFailure),
            "alert_received",
        ),
        (Error::General("boom".into()), "handshake_error"),
    ];
    for (err, want) in cases {
        assert_eq!(reject_reason(&err), want, "{err:?}");
    }
}

// ---- TrustBundle ----

#[test]
fn trust_bundle_loads_pem_and_checks_trust_domain() {
    let pki = Pki::new(TD);
    let path = pki.dir.path().join("node").join(ca::BUNDLE);
    let bundle = TrustBundle::from_pem_file(&path, TD).expect("bundle");
    assert_eq!(bundle.trust_domain(), TD);
    assert_eq!(bundle.certs(), pki.ca.bundle());
    let err = TrustBundle::from_pem_file(&path, "other.td").expect_err("foreign root");
    assert!(
        matches!(err, crate::tls::BundleError::ForeignRoot { index: 0, .. }),
        "{err:?}"
    );
    let err = TrustBundle::from_der(Vec::new(), TD).expect_err("empty");
    assert!(matches!(err, crate::tls::BundleError::Empty), "{err:?}");
    let missing = TrustBundle::from_pem_file(Path::new("/nonexistent/bundle.pem"), TD);
    assert!(matches!(missing, Err(crate::tls::BundleError::Read { .. })));
}
