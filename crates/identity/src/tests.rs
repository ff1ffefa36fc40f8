use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rustls::pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::ca::{self, CaError};
use crate::mint::NodeCa;
use crate::spiffe::{validate_trust_domain, SpiffeId, SpiffeIdError, DEFAULT_TRUST_DOMAIN};
use crate::tls::Reject;

const TD: &str = "cluster.local";
const DAY: Duration = Duration::from_secs(24 * 60 * 60);

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

fn parse<'a>(der: &'a CertificateDer<'_>) -> X509Certificate<'a> {
    x509_parser::parse_x509_certificate(der).expect("x509").1
}

fn pem_cert(path: &Path) -> CertificateDer<'static> {
    let certs = ca::read_certs(path).expect("certs");
    assert_eq!(certs.len(), 1, "{} holds one certificate", path.display());
    certs.into_iter().next().expect("one cert")
}

fn uris(cert: &X509Certificate<'_>) -> Vec<String> {
    let san = cert
        .subject_alternative_name()
        .expect("san")
        .expect("has san");
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .collect()
}

/// Root in `<tmp>/ca`, node "node-a" in `<tmp>/node`.
fn node_dir(tmp: &Path) -> std::path::PathBuf {
    ca::init(TD, &tmp.join("ca"), false).expect("init");
    let out = tmp.join("node");
    ca::issue_node(&tmp.join("ca"), "node-a", &out, 30 * DAY, false).expect("issue");
    out
}

// ---- SpiffeId ----

#[test]
fn valid_spiffe_ids_parse() {
    let max_td = "a".repeat(255);
    let max_id = format!("spiffe://td/{}", "b".repeat(2048 - "spiffe://td/".len()));
    for s in [
        "spiffe://cluster.local/ns/default/sa/web",
        "spiffe://a-b_c.9/x",
        "spiffe://td/Mixed.Case-path_9/...",
        &format!("spiffe://{max_td}/x"),
        &max_id,
    ] {
        let id = SpiffeId::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(id.to_string(), s);
    }
}

#[test]
fn invalid_spiffe_ids_rejected() {
    use SpiffeIdError as E;
    let long_td = format!("spiffe://{}/x", "a".repeat(256));
    let long_id = format!("spiffe://td/{}", "b".repeat(2049 - "spiffe://td/".len()));
    let cases: &[(&str, E)] = &[
        ("SPIFFE://td/x", E::Scheme),
        ("https://td/x", E::Scheme),
        ("spiffe:/td/x", E::Scheme),
        ("spiffe://Cluster.local/x", E::TrustDomainChar('C')),
        ("spiffe:///x", E::EmptyTrustDomain),
        ("spiffe://td", E::NoPath),
        ("spiffe://td/", E::EmptySegment),
        ("spiffe://td/a//b", E::EmptySegment),
        ("spiffe://td/a/", E::EmptySegment),
        ("spiffe://td/./a", E::DotSegment),
        ("spiffe://td/a/..", E::DotSegment),
        ("spiffe://td/a?x=1", E::Query),
        ("spiffe://td/a#frag", E::Fragment),
        ("spiffe://td:8443/a", E::Port),
        ("spiffe://user@td/a", E::Userinfo),
        ("spiffe://td/a%2Fb", E::PercentEncoded),
        ("spiffe://td/a b", E::PathChar(' ')),
        ("spiffe://td/caf\u{e9}", E::PathChar('\u{e9}')),
        ("spiffe://t\u{e9}/a", E::TrustDomainChar('\u{e9}')),
        (&long_td, E::TrustDomainTooLong(256)),
        (&long_id, E::TooLong(2049)),
    ];
    for (s, want) in cases {
        assert_eq!(SpiffeId::parse(s).as_ref(), Err(want), "{s:?}");
    }
}

#[test]
fn workload_id_has_namespace_and_service_account() {
    let id = SpiffeId::workload(TD, "default", "web").expect("valid");
    assert_eq!(id.as_str(), "spiffe://cluster.local/ns/default/sa/web");
    assert_eq!(id.trust_domain(), TD);
    assert_eq!(id.path(), "/ns/default/sa/web");
    assert_eq!(id.namespace_and_sa(), Some(("default", "web")));
    assert_eq!(id.node_name(), None);
}

#[test]
fn workload_id_refuses_smuggled_segments() {
    assert_eq!(
        SpiffeId::workload(TD, "a/sa/b", "c"),
        Err(SpiffeIdError::PathChar('/'))
    );
    assert_eq!(
        SpiffeId::workload(TD, "..", "c"),
        Err(SpiffeIdError::DotSegment)
    );
    assert_eq!(
        SpiffeId::workload("Bad", "a", "b"),
        Err(SpiffeIdError::TrustDomainChar('B'))
    );
}

#[test]
fn node_id_round_trips() {
    let id = SpiffeId::node(TD, "node-a.zone1").expect("valid");
    assert_eq!(
        id.as_str(),
        "spiffe://cluster.local/nodeward/node/node-a.zone1"
    );
    assert_eq!(id.node_name(), Some("node-a.zone1"));
    assert_eq!(id.namespace_and_sa(), None);
    let parsed = SpiffeId::parse(id.as_str()).expect("parse");
    assert_eq!(parsed.node_name(), Some("node-a.zone1"));
}

#[test]
fn node_names_must_be_dns_subdomains() {
    for bad in ["", "Node", "node_a", "-node", "node-", "a..b", ".a"] {
        assert!(SpiffeId::node(TD, bad).is_err(), "{bad:?}");
    }
    let parsed = SpiffeId::parse("spiffe://td/nodeward/node/Node_A").expect("valid id");
    assert_eq!(
        parsed.node_name(),
        None,
        "non-DNS node names are not node IDs"
    );
    let nested = SpiffeId::parse("spiffe://td/nodeward/node/a/b").expect("valid id");
    assert_eq!(nested.node_name(), None);
}

#[test]
fn trust_domain_validation() {
    assert_eq!(validate_trust_domain(DEFAULT_TRUST_DOMAIN), Ok(()));
    assert_eq!(
        validate_trust_domain(""),
        Err(SpiffeIdError::EmptyTrustDomain)
    );
    assert_eq!(
        validate_trust_domain("td/x"),
        Err(SpiffeIdError::TrustDomainChar('/'))
    );
    assert_eq!(validate_trust_domain("td:1"), Err(SpiffeIdError::Port));
}

#[test]
fn spiffe_id_error_escapes_control_characters() {
    let err = SpiffeId::parse("spiffe://td/a\nb").expect_err("newline");
    assert!(!err.to_string().contains('\n'), "{err}");
}

// ---- ca init / issue-node ----

#[test]
fn init_writes_root_ca() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("new/ca");
    let files = ca::init(TD, &out, false).expect("init");
    assert_eq!(mode(&out), 0o700);
    assert_eq!(mode(&files.key), 0o600);
    assert_eq!(files.trust_domain, TD);

    let der = pem_cert(&files.cert);
    let root = parse(&der);
    assert_eq!(uris(&root), ["spiffe://cluster.local"]);
    assert!(
        root.basic_constraints()
            .expect("bc")
            .expect("present")
            .value
            .ca
    );
    let ku = root.key_usage().expect("ku").expect("present");
    assert!(ku.critical && ku.value.key_cert_sign() && ku.value.crl_sign());
    let cn = root.subject().iter_common_name().next().expect("cn");
    assert_eq!(cn.as_str().expect("str"), "nodeward root CA");
    let o = root.subject().iter_organization().next().expect("o");
    assert_eq!(o.as_str().expect("str"), TD);
    let serial = root.raw_serial();
    assert_eq!(serial.len(), 16);
    assert!(serial[0] & 0x80 == 0, "serial must be positive");
    let lifetime = root.validity().time_to_expiration().expect("valid");
    assert!(lifetime.whole_days() > 3640, "{lifetime}");
}

#[test]
fn init_refuses_to_overwrite_without_force() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let files = ca::init(TD, tmp.path(), false).expect("init");
    let key = fs::read(&files.key).expect("key");
    match ca::init(TD, tmp.path(), false) {
        Err(CaError::Exists(path)) => assert_eq!(path, files.key),
        other => panic!("expected Exists, got {other:?}"),
    }
    assert_eq!(fs::read(&files.key).expect("key"), key, "key untouched");
}

#[test]
fn init_refuses_when_only_the_cert_exists() {
    let tmp = tempfile::tempdir().expect("tempdir");
    fs::write(tmp.path().join(ca::CA_CERT), "old").expect("write");
    let err = ca::init(TD, tmp.path(), false).expect_err("refused");
    assert!(err.to_string().contains("ca.pem"), "{err}");
    assert!(!tmp.path().join(ca::CA_KEY).exists(), "nothing written");
}

#[test]
fn init_with_force_replaces_key_with_a_private_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let files = ca::init(TD, tmp.path(), false).expect("init");
    let old = fs::read(&files.key).expect("key");
    // A loosened mode on the old file must not carry over to the new key.
    fs::set_permissions(&files.key, fs::Permissions::from_mode(0o644)).expect("chmod");
    ca::init(TD, tmp.path(), true).expect("forced init");
    assert_ne!(fs::read(&files.key).expect("key"), old);
    assert_eq!(mode(&files.key), 0o600);
    let leftovers = fs::read_dir(tmp.path()).expect("dir").count();
    assert_eq!(leftovers, 2, "no temporary files left behind");
}

#[test]
fn init_rejects_invalid_trust_domain() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let err = ca::init("Cluster.Local", tmp.path(), false).expect_err("uppercase");
    assert!(matches!(
        err,
        CaError::Name(SpiffeIdError::TrustDomainChar('C'))
    ));
}

#[test]
fn issue_node_writes_intermediate_and_bundle() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = ca::init(TD, &tmp.path().join("ca"), false).expect("init");
    let out = tmp.path().join("node");
    let files =
        ca::issue_node(&tmp.path().join("ca"), "node-a", &out, 30 * DAY, false).expect("issue");
    assert_eq!(mode(&out), 0o700);
    assert_eq!(mode(&files.key), 0o600);
    assert_eq!(
        files.id.as_str(),
        "spiffe://cluster.local/nodeward/node/node-a"
    );
    assert_eq!(
        fs::read(&files.bundle).expect("bundle"),
        fs::read(&root.cert).expect("root")
    );

    let der = pem_cert(&files.cert);
    let node = parse(&der);
    assert_eq!(uris(&node), [files.id.as_str()]);
    let bc = node.basic_constraints().expect("bc").expect("present");
    assert!(bc.critical && bc.value.ca);
    assert_eq!(bc.value.path_len_constraint, Some(0));
    let ku = node.key_usage().expect("ku").expect("present");
    assert!(ku.critical && ku.value.key_cert_sign() && ku.value.crl_sign());
    assert!(ku.value.digital_signature());
    let cn = node.subject().iter_common_name().next().expect("cn");
    assert_eq!(cn.as_str().expect("str"), "nodeward node node-a");
    let root_der = pem_cert(&root.cert);
    assert_eq!(node.issuer().as_raw(), parse(&root_der).subject().as_raw());
    let days = node
        .validity()
        .time_to_expiration()
        .expect("valid")
        .whole_days();
    assert!((29..=30).contains(&days), "{days}");
}

#[test]
fn issue_node_validity_is_clamped_to_the_root() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = ca::init(TD, &tmp.path().join("ca"), false).expect("init");
    let files = ca::issue_node(
        &tmp.path().join("ca"),
        "node-a",
        &tmp.path().join("node"),
        Duration::MAX,
        false,
    )
    .expect("issue");
    assert_eq!(files.not_after, root.not_after);
    let der = pem_cert(&files.cert);
    let not_after: SystemTime = parse(&der).validity().not_after.to_datetime().into();
    assert_eq!(not_after, root.not_after);
}

#[test]
fn issue_node_refuses_overwrite_unless_forced() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = node_dir(tmp.path());
    let key = fs::read(out.join(ca::NODE_KEY)).expect("key");
    let ca_dir = tmp.path().join("ca");
    let err = ca::issue_node(&ca_dir, "node-a", &out, DAY, false).expect_err("refused");
    assert!(
        matches!(&err, CaError::Exists(p) if p == &out.join(ca::NODE_KEY)),
        "{err:?}"
    );
    assert_eq!(fs::read(out.join(ca::NODE_KEY)).expect("key"), key);
    ca::issue_node(&ca_dir, "node-a", &out, DAY, true).expect("forced");
    assert_ne!(fs::read(out.join(ca::NODE_KEY)).expect("key"), key);
    assert_eq!(mode(&out.join(ca::NODE_KEY)), 0o600);
}

#[test]
fn issue_node_rejects_bad_node_name() {
    let tmp = tempfile::tempdir().expect("tempdir");
    ca::init(TD, &tmp.path().join("ca"), false).expect("init");
    let err = ca::issue_node(&tmp.path().join("ca"), "Node_A", tmp.path(), DAY, false)
        .expect_err("invalid");
    assert!(
        matches!(err, CaError::Name(SpiffeIdError::NodeName(_))),
        "{err:?}"
    );
}

#[test]
fn issue_node_names_missing_ca_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let err =
        ca::issue_node(tmp.path(), "node-a", &tmp.path().join("n"), DAY, false).expect_err("no CA");
    match err {
        CaError::Read { path, .. } => assert_eq!(path, tmp.path().join(ca::CA_CERT)),
        other => panic!("expected Read, got {other:?}"),
    }
}

#[test]
fn issue_node_rejects_mismatched_root_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    ca::init(TD, &tmp.path().join("a"), false).expect("init a");
    ca::init(TD, &tmp.path().join("b"), false).expect("init b");
    fs::copy(tmp.path().join("b/ca.key"), tmp.path().join("a/ca.key")).expect("copy");
    let err = ca::issue_node(
        &tmp.path().join("a"),
        "n",
        &tmp.path().join("n"),
        DAY,
        false,
    )
    .expect_err("mismatch");
    assert!(matches!(err, CaError::KeyMismatch { .. }), "{err:?}");
}

// ---- NodeCa / mint ----

#[test]
fn node_ca_loads_and_describes_itself() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = node_dir(tmp.path());
    let ca = NodeCa::load(&out).expect("load");
    assert_eq!(ca.trust_domain(), TD);
    assert_eq!(ca.node_name(), "node-a");
    assert_eq!(ca.bundle(), [pem_cert(&out.join(ca::BUNDLE))]);
    let until = ca
        .not_after()
        .duration_since(SystemTime::now())
        .expect("future");
    assert!(until > 29 * DAY && until <= 30 * DAY, "{until:?}");
}

#[test]
fn node_ca_load_rejects_bundle_of_another_ca() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = node_dir(tmp.path());
    let other = ca::init(TD, &tmp.path().join("other"), false).expect("init");
    fs::copy(&other.cert, out.join(ca::BUNDLE)).expect("copy");
    match NodeCa::load(&out) {
        // Same subject name, different key: the signature check fails.
        Err(CaError::Chain { path, source }) => {
            assert_eq!(path, out.join(ca::NODE_CERT));
            assert_eq!(source, Reject::BadSignature);
        }
        other => panic!("expected Chain, got {other:?}"),
    }
}

#[test]
fn node_ca_load_rejects_root_as_node() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = ca::init(TD, tmp.path(), false).expect("init");
    fs::copy(&root.cert, tmp.path().join(ca::NODE_CERT)).expect("copy cert");
    fs::copy(&root.key, tmp.path().join(ca::NODE_KEY)).expect("copy key");
    fs::copy(&root.cert, tmp.path().join(ca::BUNDLE)).expect("copy bundle");
    let err = NodeCa::load(tmp.path()).expect_err("root is not a node CA");
    assert!(matches!(err, CaError::InvalidCert { .. }), "{err:?}");
}

#[test]
fn minted_svid_follows_the_x509_svid_profile() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = NodeCa::load(&node_dir(tmp.path())).expect("load");
    let id = SpiffeId::workload(TD, "default", "web").expect("id");
    let before = SystemTime::now();
    let svid = ca.mint(&id, Duration::from_secs(3600)).expect("mint");
    assert_eq!(svid.id, id);
    assert_eq!(svid.chain.len(), 2);
    assert_eq!(&svid.chain[1], ca.cert());

    let leaf = parse(&svid.chain[0]);
    assert_eq!(uris(&leaf), [id.as_str()]);
    let bc = leaf.basic_constraints().expect("bc").expect("present");
    assert!(!bc.value.ca);
    let ku = leaf.key_usage().expect("ku").expect("present");
    assert!(ku.critical && ku.value.digital_signature());
    assert!(!ku.value.key_cert_sign() && !ku.value.crl_sign());
    let eku = leaf.extended_key_usage().expect("eku").expect("present");
    assert!(eku.value.server_auth && eku.value.client_auth);
    let o = leaf.subject().iter_organization().next().expect("o");
    assert_eq!(o.as_str().expect("str"), TD);
    assert_eq!(leaf.raw_serial().len(), 16);

    let skew = before.duration_since(svid.not_before).expect("backdated");
    assert!((59..=61).contains(&skew.as_secs()), "{skew:?}");
    let life = svid.not_after.duration_since(before).expect("future");
    assert!((3599..=3600).contains(&life.as_secs()), "{life:?}");
}

#[test]
fn minted_svid_never_outlives_the_node_ca() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = NodeCa::load(&node_dir(tmp.path())).expect("load");
    let id = SpiffeId::workload(TD, "default", "web").expect("id");
    let svid = ca.mint(&id, 365 * DAY).expect("mint");
    assert_eq!(svid.not_after, ca.not_after());
}

#[test]
fn mint_refuses_foreign_trust_domain() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = NodeCa::load(&node_dir(tmp.path())).expect("load");
    let id = SpiffeId::workload("other.td", "default", "web").expect("id");
    let err = ca.mint(&id, DAY).expect_err("foreign");
    assert!(matches!(err, CaError::ForeignTrustDomain { .. }), "{err:?}");
}

#[test]
fn svid_debug_hides_the_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = NodeCa::load(&node_dir(tmp.path())).expect("load");
    let id = SpiffeId::workload(TD, "default", "web").expect("id");
    let svid = ca.mint(&id, DAY).expect("mint");
    let debug = format!("{svid:?}");
    let key = svid.key.secret_pkcs8_der();
    assert!(debug.contains("redacted"), "{debug}");
    assert!(!debug.contains(&format!("{:?}", &key[..4])), "{debug}");
    assert!(
        !debug.contains(&format!("{:02x}{:02x}", key[0], key[1])),
        "{debug}"
    );
    assert!(debug.contains(id.as_str()));
}

#[test]
fn svid_loads_into_rustls() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = NodeCa::load(&node_dir(tmp.path())).expect("load");
    let id = SpiffeId::workload(TD, "default", "web").expect("id");
    let svid = ca.mint(&id, DAY).expect("mint");
    let key = svid.certified_key().expect("certified key");
    assert_eq!(key.cert, svid.chain);
}
