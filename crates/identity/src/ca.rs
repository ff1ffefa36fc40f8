//! Offline CA tooling behind `nodeward ca init` and `nodeward ca issue-node`.
//!
//! Files are written so that a crash or a concurrent run never leaves a
//! world-readable or half-written key: keys are created with mode 0600 from
//! the start, and replacements go through a temporary file and a rename.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use thiserror::Error;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::der_parser::asn1_rs::Tag;
use x509_parser::extensions::GeneralName;
use x509_parser::x509::X509Name;

use crate::spiffe::{
    trust_domain_from_uri, trust_domain_uri, validate_node_name, SpiffeId, SpiffeIdError,
};
use crate::tls::{BundleError, Reject};

/// Root certificate file written by [`init`].
pub const CA_CERT: &str = "ca.pem";
/// Root private key file written by [`init`] (mode 0600).
pub const CA_KEY: &str = "ca.key";
/// Node intermediate certificate written by [`issue_node`].
pub const NODE_CERT: &str = "node.pem";
/// Node intermediate private key written by [`issue_node`] (mode 0600).
pub const NODE_KEY: &str = "node.key";
/// Trust bundle (the root certificate) written by [`issue_node`].
pub const BUNDLE: &str = "bundle.pem";

/// Root CAs live ten years: rotating a root means re-issuing every node.
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
/// Backdating tolerates peers whose clocks run a little behind ours.
const CLOCK_SKEW: Duration = Duration::from_secs(60);
const KEY_MODE: u32 = 0o600;
const CERT_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o700;

/// Paths and facts about a root CA written by [`init`].
#[derive(Debug, Clone)]
pub struct CaFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub trust_domain: String,
    pub not_after: SystemTime,
}

/// Paths and facts about a node intermediate written by [`issue_node`].
#[derive(Debug, Clone)]
pub struct NodeFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub bundle: PathBuf,
    /// The node's SPIFFE ID (`spiffe://<td>/nodeward/node/<node>`).
    pub id: SpiffeId,
    pub not_after: SystemTime,
}

/// Failures of the CA tooling and of SVID minting; file errors name the file.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CaError {
    #[error("invalid name")]
    Name(#[source] SpiffeIdError),
    #[error("refusing to overwrite {}: use force to replace it", .0.display())]
    Exists(PathBuf),
    #[error("cannot create directory {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: {reason}", path.display())]
    InvalidCert { path: PathBuf, reason: String },
    #[error("{}: not a usable private key", path.display())]
    InvalidKey {
        path: PathBuf,
        #[source]
        source: rcgen::Error,
    },
    #[error("{}: key does not match the certificate", path.display())]
    KeyMismatch { path: PathBuf },
    #[error("{}: certificate has expired", path.display())]
    Expired { path: PathBuf },
    #[error("{}: invalid trust bundle", path.display())]
    Bundle {
        path: PathBuf,
        #[source]
        source: BundleError,
    },
    #[error("{}: does not verify against the trust bundle", path.display())]
    Chain {
        path: PathBuf,
        #[source]
        source: Reject,
    },
    #[error("{id} is not in trust domain {expected:?}")]
    ForeignTrustDomain { id: SpiffeId, expected: String },
    #[error("certificate generation failed")]
    Generate(#[source] rcgen::Error),
    #[error("the system random number generator failed")]
    Random,
    #[error("rustls rejected the SVID key")]
    Rustls(#[source] rustls::Error),
}

/// A CA certificate loaded with its key, ready to sign.
pub(crate) struct Signer {
    pub(crate) cert: CertificateDer<'static>,
    /// The certificate file as read: `issue_node` copies it as the bundle.
    pub(crate) pem: Vec<u8>,
    pub(crate) issuer: Issuer<'static, KeyPair>,
    /// The certificate's single URI SAN.
    pub(crate) uri: String,
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
}

/// Creates a root CA for `trust_domain` in `out` (`ca.pem`, `ca.key`).
///
/// Refuses to replace an existing certificate or key unless `force`:
/// replacing a root silently would cut every node off from the mesh.
pub fn init(trust_domain: &str, out: &Path, force: bool) -> Result<CaFiles, CaError> {
    let uri = trust_domain_uri(trust_domain).map_err(CaError::Name)?;
    let (cert_path, key_path) = (out.join(CA_CERT), out.join(CA_KEY));
    refuse_overwrite(&[&key_path, &cert_path], force)?;
    create_private_dir(out)?;
    let now = SystemTime::now();
    let not_after = whole_seconds(now + ROOT_LIFETIME);
    let mut params = CertificateParams::default();
    params.not_before = whole_seconds(now - CLOCK_SKEW).into();
    params.not_after = not_after.into();
    params.serial_number = Some(random_serial()?);
    params.subject_alt_names = vec![uri_san(uri)?];
    params.distinguished_name = subject("nodeward root CA", trust_domain);
    // pathLen 1: exactly one level (the node CA) may sit below the root.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = new_key()?;
    let cert = params.self_signed(&key).map_err(CaError::Generate)?;
    write_file(&key_path, key.serialize_pem().as_bytes(), KEY_MODE, force)?;
    write_file(&cert_path, cert.pem().as_bytes(), CERT_MODE, force)?;
    Ok(CaFiles {
        cert: cert_path,
        key: key_path,
        trust_domain: trust_domain.to_owned(),
        not_after,
    })
}

/// Issues the intermediate CA of node `node` from the root in `ca_dir`,
/// writing `node.pem`, `node.key` and `bundle.pem` into `out`.
///
/// The validity is clamped to the root's: a node certificate outliving its
/// issuer would only fail later, in the middle of traffic.
pub fn issue_node(
    ca_dir: &Path,
    node: &str,
    out: &Path,
    lifetime: Duration,
    force: bool,
) -> Result<NodeFiles, CaError> {
    validate_node_name(node).map_err(CaError::Name)?;
    let root_path = ca_dir.join(CA_CERT);
    let root = Signer::load(&root_path, &ca_dir.join(CA_KEY))?;
    let td = trust_domain_from_uri(&root.uri).map_err(|e| invalid(&root_path, e))?;
    let id = SpiffeId::node(td, node).map_err(CaError::Name)?;
    let (not_before, not_after) = root.validity_for(lifetime, &root_path)?;
    let files = NodeFiles::new(out, id, not_after);
    refuse_overwrite(&[&files.key, &files.cert, &files.bundle], force)?;
    let params = node_params(&files.id, node, not_before, not_after)?;
    let key = new_key()?;
    let cert = params
        .signed_by(&key, &root.issuer)
        .map_err(CaError::Generate)?;
    create_private_dir(out)?;
    write_file(&files.key, key.serialize_pem().as_bytes(), KEY_MODE, force)?;
    write_file(&files.cert, cert.pem().as_bytes(), CERT_MODE, force)?;
    write_file(&files.bundle, &root.pem, CERT_MODE, force)?;
    Ok(files)
}

impl NodeFiles {
    fn new(out: &Path, id: SpiffeId, not_after: SystemTime) -> Self {
        Self {
            cert: out.join(NODE_CERT),
            key: out.join(NODE_KEY),
            bundle: out.join(BUNDLE),
            id,
            not_after,
        }
    }
}

impl Signer {
    /// Loads a CA certificate (exactly one in the file) and its key, checking
    /// that they belong together and that the certificate is a CA.
    pub(crate) fn load(cert_path: &Path, key_path: &Path) -> Result<Self, CaError> {
        let pem = read(cert_path)?;
        let cert = single_cert(&pem, cert_path)?;
        let key = read_key(key_path)?;
        let x509 = parse(&cert, cert_path)?;
        if x509.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(CaError::KeyMismatch {
                path: key_path.to_owned(),
            });
        }
        let facts = CaFacts::read(&x509).map_err(|reason| invalid(cert_path, reason))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = facts.subject;
        Ok(Self {
            cert,
            pem,
            issuer: Issuer::new(params, key),
            uri: facts.uri,
            not_before: facts.not_before,
            not_after: facts.not_after,
        })
    }

    /// `(not_before, not_after)` for a certificate issued now for `lifetime`,
    /// inside this signer's own validity.
    pub(crate) fn validity_for(
        &self,
        lifetime: Duration,
        path: &Path,
    ) -> Result<(SystemTime, SystemTime), CaError> {
        let now = SystemTime::now();
        if self.not_after <= now {
            return Err(CaError::Expired {
                path: path.to_owned(),
            });
        }
        let wanted = now.checked_add(lifetime).unwrap_or(self.not_after);
        let not_before = (now - CLOCK_SKEW).max(self.not_before);
        Ok((
            whole_seconds(not_before),
            whole_seconds(wanted.min(self.not_after)),
        ))
    }
}

/// What [`Signer::load`] needs from a parsed CA certificate.
struct CaFacts {
    subject: DistinguishedName,
    uri: String,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl CaFacts {
    fn read(x509: &X509Certificate<'_>) -> Result<Self, String> {
        let is_ca = x509
            .basic_constraints()
            .map_err(|e| format!("bad basicConstraints: {e}"))?
            .is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err("not a CA certificate".into());
        }
        let validity = x509.validity();
        Ok(Self {
            subject: distinguished_name(x509.subject())?,
            uri: single_uri_san(x509)?,
            not_before: validity.not_before.to_datetime().into(),
            not_after: validity.not_after.to_datetime().into(),
        })
    }
}

fn node_params(
    id: &SpiffeId,
    node: &str,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    params.serial_number = Some(random_serial()?);
    params.subject_alt_names = vec![uri_san(id.to_string())?];
    params.distinguished_name = subject(&format!("nodeward node {node}"), id.trust_domain());
    // pathLen 0: a node CA signs workload leaves, never further CAs.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// Subject `CN=<cn>, O=<trust domain>`.
pub(crate) fn subject(common_name: &str, trust_domain: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, trust_domain);
    dn
}

/// Subject `O=<trust domain>`: SVIDs identify by URI SAN, not by name.
pub(crate) fn subject_o(trust_domain: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, trust_domain);
    dn
}

pub(crate) fn uri_san(uri: String) -> Result<SanType, CaError> {
    let uri = uri.try_into().map_err(CaError::Generate)?;
    Ok(SanType::URI(uri))
}

pub(crate) fn new_key() -> Result<KeyPair, CaError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(CaError::Generate)
}

/// A random, positive, 16-byte serial (RFC 5280 allows up to 20).
pub(crate) fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CaError::Random)?;
    // Clear the sign bit (positive) and set the next one so DER keeps all
    // 16 bytes instead of stripping a leading zero.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

/// Certificates carry whole seconds; rounding here keeps the times we report
/// equal to the ones in the certificate.
pub(crate) fn whole_seconds(t: SystemTime) -> SystemTime {
    let dt = OffsetDateTime::from(t);
    dt.replace_nanosecond(0).unwrap_or(dt).into()
}

pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CaError> {
    certs_from_pem(&read(path)?, path)
}

fn certs_from_pem(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, CaError> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(path, format!("bad PEM: {e}")))
}

fn single_cert(pem: &[u8], path: &Path) -> Result<CertificateDer<'static>, CaError> {
    let mut certs = certs_from_pem(pem, path)?;
    match (certs.pop(), certs.is_empty()) {
        (Some(cert), true) => Ok(cert),
        _ => Err(invalid(path, "expected exactly one certificate")),
    }
}

fn read_key(path: &Path) -> Result<KeyPair, CaError> {
    let pem = String::from_utf8(read(path)?).map_err(|_| invalid(path, "not a PEM file"))?;
    KeyPair::from_pem(&pem).map_err(|source| CaError::InvalidKey {
        path: path.to_owned(),
        source,
    })
}

fn read(path: &Path) -> Result<Vec<u8>, CaError> {
    fs::read(path).map_err(|source| CaError::Read {
        path: path.to_owned(),
        source,
    })
}

pub(crate) fn parse<'a>(
    cert: &'a CertificateDer<'_>,
    path: &Path,
) -> Result<X509Certificate<'a>, CaError> {
    match x509_parser::parse_x509_certificate(cert) {
        Ok(([], x509)) => Ok(x509),
        Ok(_) => Err(invalid(path, "trailing data after certificate")),
        Err(e) => Err(invalid(path, format!("bad certificate: {e}"))),
    }
}

fn single_uri_san(x509: &X509Certificate<'_>) -> Result<String, String> {
    let san = x509
        .subject_alternative_name()
        .map_err(|e| format!("bad subjectAltName: {e}"))?
        .ok_or("no subjectAltName")?;
    let mut uris = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        });
    match (uris.next(), uris.next()) {
        (Some(uri), None) => Ok(uri.to_owned()),
        _ => Err("expected exactly one URI SAN".into()),
    }
}

/// Rebuilds an issuer's subject for rcgen, keeping each attribute's string
/// type: issuer and subject are compared byte for byte during verification.
fn distinguished_name(name: &X509Name<'_>) -> Result<DistinguishedName, String> {
    let mut dn = DistinguishedName::new();
    for attr in name.iter_attributes() {
        let oid: Vec<u64> = attr
            .attr_type()
            .iter()
            .ok_or("subject attribute OID too large")?
            .collect();
        let text = attr
            .as_str()
            .map_err(|_| "subject attribute is not a string")?;
        let value = match attr.attr_value().tag() {
            Tag::Utf8String => DnValue::Utf8String(text.to_owned()),
            Tag::PrintableString => DnValue::PrintableString(
                text.try_into()
                    .map_err(|_| "subject attribute is not printable")?,
            ),
            _ => return Err("unsupported subject string type".into()),
        };
        dn.push(DnType::from_oid(&oid), value);
    }
    Ok(dn)
}

pub(crate) fn invalid(path: &Path, reason: impl ToString) -> CaError {
    CaError::InvalidCert {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// Checks every target up front so a refused run writes nothing at all.
fn refuse_overwrite(paths: &[&Path], force: bool) -> Result<(), CaError> {
    match paths.iter().find(|p| !force && p.exists()) {
        Some(path) => Err(CaError::Exists(path.to_path_buf())),
        None => Ok(()),
    }
}

fn create_private_dir(dir: &Path) -> Result<(), CaError> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|source| CaError::CreateDir {
            path: dir.to_owned(),
            source,
        })
}

/// Writes `bytes` to `path`, creating the file with `mode` (never chmod
/// afterwards, so a key is never readable by others, even briefly).
///
/// Without `force`, `create_new` makes the no-overwrite rule atomic. With
/// `force`, the data goes to a fresh temporary file renamed over `path`, so
/// the old file's mode cannot leak onto the new content and readers never
/// see a half-written file.
fn write_file(path: &Path, bytes: &[u8], mode: u32, force: bool) -> Result<(), CaError> {
    let err = |source| CaError::Write {
        path: path.to_owned(),
        source,
    };
    if !force {
        return write_new(path, bytes, mode).map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => CaError::Exists(path.to_owned()),
            _ => err(e),
        });
    }
    let tmp = temp_path(path)?;
    write_new(&tmp, bytes, mode)
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = fs::remove_file(&tmp);
            err(e)
        })
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut file: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    if written.is_err() {
        let _ = fs::remove_file(path);
    }
    written
}

fn temp_path(path: &Path) -> Result<PathBuf, CaError> {
    let mut suffix = [0u8; 8];
    SystemRandom::new()
        .fill(&mut suffix)
        .map_err(|_| CaError::Random)?;
    let hex: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    Ok(path.with_file_name(format!(".{name}.{hex}.tmp")))
}
