//! TLS material for a cluster: a development CA, node and client certificates, PEM files, and the
//! rustls/quinn configurations for mutual TLS.
//!
//! # Naming scheme
//!
//! Every certificate names exactly one identity in its subject alternative name, as a DNS name
//! under the cluster's domain `<cluster-id>.paxos`, where `<cluster-id>` is the 16 lowercase hex
//! digits of [`ClusterId`]'s `Display`:
//!
//! - a replica: `node-<id>.<cluster-id>.paxos`, for example `node-3.00000000deadbeef.paxos`
//!   ([`node_dns_name`]). Replica certificates carry both the server and the client extended key
//!   usage: a replica accepts connections and makes them with the same certificate.
//! - a client of the application (for example the database's client protocol):
//!   `client-<name>.<cluster-id>.paxos` ([`client_dns_name`]), client key usage only. `<name>` is
//!   1 to 40 characters of `a-z`, `0-9` and `-`, not starting or ending with `-`.
//!
//! A certificate signed by the cluster CA proves membership of the cluster; the name proves *which*
//! member. The TLS handshake checks the first; [`verify_node`] checks the second against the node a
//! peer claims to be, so a valid certificate for node 2 cannot speak as node 3, and a client
//! certificate cannot speak as any node.
//!
//! # Files
//!
//! [`init_dir`] (what `chubbyctl certs init` runs) writes into one directory:
//! `ca.pem` and `ca.key` (the cluster CA), `node-<id>.pem` and `node-<id>.key` per replica,
//! `client-<name>.pem` and `client-<name>.key` per client. Keys are PKCS#8 PEM, written with mode
//! 0600 on Unix. [`load_node_material`] and [`load_client_material`] read them back and check that
//! the key matches the certificate, the certificate is signed by the CA, and it names the expected
//! identity.
//!
//! # Crypto provider
//!
//! Everything here uses [`provider`] (rustls' *ring* provider), passed explicitly to every builder;
//! the process-wide default provider is never installed nor consulted.

use crate::wire::ClusterId;
use paxos_core::NodeId;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// ALPN of replica-to-replica traffic. Another protocol on the same certificates (the database's
/// client protocol) passes its own ALPN to the config builders.
pub const ALPN_PEER: &[u8] = b"paxos-log/1";

/// The top-level label under which every cluster's names live.
pub const DOMAIN_SUFFIX: &str = "paxos";

/// Longest client name accepted in `client-<name>`, so the DNS label stays under 63 bytes.
pub const CLIENT_NAME_BYTES_MAX: usize = 40;

const CA_CERT_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca.key";
const INIT_HINT: &str = "run `chubbyctl certs init`";

/// The single crypto provider of this crate: rustls' *ring* provider.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// `node-<id>.<cluster-id>.paxos`: the name a replica's certificate must be valid for.
pub fn node_dns_name(cluster: ClusterId, node: NodeId) -> String {
    format!("node-{}.{cluster}.{DOMAIN_SUFFIX}", node.0)
}

/// `client-<name>.<cluster-id>.paxos`, or [`TlsError::InvalidClientName`].
pub fn client_dns_name(cluster: ClusterId, name: &str) -> Result<String, TlsError> {
    if !client_name_valid(name) {
        return Err(TlsError::InvalidClientName(name.to_string()));
    }
    Ok(format!("client-{name}.{cluster}.{DOMAIN_SUFFIX}"))
}

fn client_name_valid(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= CLIENT_NAME_BYTES_MAX
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The files of one identity inside a certificate directory.
pub fn node_cert_path(dir: &Path, node: NodeId) -> PathBuf {
    dir.join(format!("node-{}.pem", node.0))
}
pub fn node_key_path(dir: &Path, node: NodeId) -> PathBuf {
    dir.join(format!("node-{}.key", node.0))
}
pub fn client_cert_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("client-{name}.pem"))
}
pub fn client_key_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("client-{name}.key"))
}
pub fn ca_cert_path(dir: &Path) -> PathBuf {
    dir.join(CA_CERT_FILE)
}

/// Why TLS material could not be made, loaded or used.
#[derive(Debug)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate or key file does not exist.
    NotFound {
        path: PathBuf,
    },
    /// `init_dir` refuses to overwrite an existing CA.
    AlreadyExists {
        path: PathBuf,
    },
    Io {
        path: PathBuf,
        source: io::Error,
    },
    /// The file is not PEM, or holds no item of the expected kind.
    Pem {
        path: PathBuf,
        why: String,
    },
    /// The private key is not the key of the certificate.
    KeyMismatch {
        certificate: String,
    },
    /// The certificate does not chain to the cluster CA (or is expired, or not yet valid).
    NotSignedByCa {
        certificate: String,
        why: String,
    },
    /// The certificate is signed by the CA but does not name the expected identity.
    WrongName {
        certificate: String,
        expected: String,
    },
    /// The certificate names no identity of this cluster, or more than one.
    UnknownIdentity {
        why: String,
    },
    InvalidClientName(String),
    /// `ca.key` does not belong to `ca.pem` (or the cluster id differs from the CA's).
    CaMismatch {
        why: String,
    },
    Generate(rcgen::Error),
    Rustls(rustls::Error),
    Verifier(rustls::server::VerifierBuilderError),
    /// The rustls configuration cannot carry QUIC (no TLS 1.3 initial suite).
    Quic(String),
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsError::NotFound { path } => write!(
                f,
                "certificate file {} not found: {INIT_HINT}",
                path.display()
            ),
            TlsError::AlreadyExists { path } => write!(
                f,
                "{} already exists: refusing to replace the cluster CA",
                path.display()
            ),
            TlsError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            TlsError::Pem { path, why } => write!(f, "{}: {why}", path.display()),
            TlsError::KeyMismatch { certificate } => {
                write!(f, "key does not match certificate {certificate}")
            }
            TlsError::NotSignedByCa { certificate, why } => write!(
                f,
                "certificate {certificate} not signed by the cluster CA ({why})"
            ),
            TlsError::WrongName {
                certificate,
                expected,
            } => write!(f, "certificate {certificate} is not valid for {expected}"),
            TlsError::UnknownIdentity { why } => write!(f, "certificate names no identity: {why}"),
            TlsError::InvalidClientName(name) => write!(
                f,
                "invalid client name {name:?}: use 1 to {CLIENT_NAME_BYTES_MAX} of a-z, 0-9 and '-'"
            ),
            TlsError::CaMismatch { why } => write!(f, "CA key and certificate disagree: {why}"),
            TlsError::Generate(error) => write!(f, "certificate generation: {error}"),
            TlsError::Rustls(error) => write!(f, "tls: {error}"),
            TlsError::Verifier(error) => write!(f, "tls verifier: {error}"),
            TlsError::Quic(why) => write!(f, "tls config unusable for QUIC: {why}"),
        }
    }
}

impl std::error::Error for TlsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TlsError::Io { source, .. } => Some(source),
            TlsError::Generate(error) => Some(error),
            TlsError::Rustls(error) => Some(error),
            TlsError::Verifier(error) => Some(error),
            _ => None,
        }
    }
}

impl From<rcgen::Error> for TlsError {
    fn from(error: rcgen::Error) -> TlsError {
        TlsError::Generate(error)
    }
}

impl From<rustls::Error> for TlsError {
    fn from(error: rustls::Error) -> TlsError {
        TlsError::Rustls(error)
    }
}

/// A certificate chain (end entity first) and its private key.
#[derive(Debug)]
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Identity {
        Identity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Identity {
    /// The end-entity certificate. Panics on an empty chain, which no constructor here makes.
    pub fn end_entity(&self) -> &CertificateDer<'static> {
        self.chain.first().expect("an identity has a certificate")
    }
}

/// What one endpoint needs for mutual TLS: the cluster CA to trust and its own identity.
#[derive(Clone, Debug)]
pub struct TlsMaterial {
    pub ca: CertificateDer<'static>,
    pub identity: Identity,
}

impl TlsMaterial {
    /// Checks that the key matches the certificate, the certificate chains to `ca`, and it is valid
    /// for `node` of `cluster`.
    pub fn check_node(&self, cluster: ClusterId, node: NodeId) -> Result<(), TlsError> {
        let label = node_dns_name(cluster, node);
        self.check_signed(&label)?;
        verify_node(self.identity.end_entity(), cluster, node)
    }

    /// As [`TlsMaterial::check_node`], for a client certificate named `name`.
    pub fn check_client(&self, cluster: ClusterId, name: &str) -> Result<(), TlsError> {
        let label = client_dns_name(cluster, name)?;
        self.check_signed(&label)?;
        match identify(self.identity.end_entity(), cluster)? {
            PeerIdentity::Client(found) if found == name => Ok(()),
            _ => Err(TlsError::WrongName {
                certificate: label.clone(),
                expected: label,
            }),
        }
    }

    fn check_signed(&self, label: &str) -> Result<(), TlsError> {
        check_key_matches(&self.identity, label)?;
        verify_signed_by_ca(&self.ca, &self.identity.chain, label)
    }
}

/// Who a certificate of this cluster proves its holder is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerIdentity {
    Node(NodeId),
    Client(String),
}

/// Checks that `cert` (already verified against the CA by the handshake) is valid for `node` of
/// `cluster`. This is what stops a replica from speaking under another replica's id.
pub fn verify_node(
    cert: &CertificateDer<'_>,
    cluster: ClusterId,
    node: NodeId,
) -> Result<(), TlsError> {
    let expected = node_dns_name(cluster, node);
    let parsed =
        webpki::EndEntityCert::try_from(cert).map_err(|error| TlsError::UnknownIdentity {
            why: format!("unparsable certificate: {error}"),
        })?;
    let name = ServerName::try_from(expected.as_str())
        .expect("node names are valid DNS names")
        .to_owned();
    parsed
        .verify_is_valid_for_subject_name(&name)
        .map_err(|_| TlsError::WrongName {
            certificate: describe(&parsed),
            expected,
        })
}

/// The identity `cert` names in `cluster`: exactly one `node-<id>` or `client-<name>` DNS name.
/// Use [`verify_node`] to check a claim; this is for logs and for protocols without a claim.
pub fn identify(cert: &CertificateDer<'_>, cluster: ClusterId) -> Result<PeerIdentity, TlsError> {
    let parsed =
        webpki::EndEntityCert::try_from(cert).map_err(|error| TlsError::UnknownIdentity {
            why: format!("unparsable certificate: {error}"),
        })?;
    let suffix = format!(".{cluster}.{DOMAIN_SUFFIX}");
    let mut found: Vec<PeerIdentity> = parsed
        .valid_dns_names()
        .filter_map(|name| parse_identity(name, &suffix))
        .collect();
    found.dedup();
    match found.len() {
        1 => {
            let identity = found.pop().expect("one identity");
            // Names come from `valid_dns_names`, which must not be used for verification on its
            // own: confirm with the proper subject-name check.
            let dns = match &identity {
                PeerIdentity::Node(node) => node_dns_name(cluster, *node),
                PeerIdentity::Client(name) => client_dns_name(cluster, name)?,
            };
            let server_name = ServerName::try_from(dns.as_str())
                .map_err(|_| TlsError::UnknownIdentity {
                    why: format!("invalid name {dns}"),
                })?
                .to_owned();
            parsed
                .verify_is_valid_for_subject_name(&server_name)
                .map_err(|_| TlsError::UnknownIdentity {
                    why: format!("{dns} listed but not valid"),
                })?;
            Ok(identity)
        }
        0 => Err(TlsError::UnknownIdentity {
            why: format!("no node or client name under {}", &suffix[1..]),
        }),
        _ => Err(TlsError::UnknownIdentity {
            why: format!("several identities: {found:?}"),
        }),
    }
}

fn parse_identity(name: &str, suffix: &str) -> Option<PeerIdentity> {
    let label = name.strip_suffix(suffix)?;
    if let Some(id) = label.strip_prefix("node-") {
        // Only the canonical spelling: no sign, no leading zeros.
        let node: u64 = id.parse().ok()?;
        return (node.to_string() == id).then_some(PeerIdentity::Node(NodeId(node)));
    }
    let client = label.strip_prefix("client-")?;
    client_name_valid(client).then(|| PeerIdentity::Client(client.to_string()))
}

fn describe(cert: &webpki::EndEntityCert<'_>) -> String {
    let names: Vec<&str> = cert.valid_dns_names().collect();
    if names.is_empty() {
        "(no DNS names)".to_string()
    } else {
        names.join(",")
    }
}

/// Checks that `chain` (end entity first) chains to `ca` and is currently valid for client
/// authentication (replica certificates carry client and server usage; client certificates only
/// client usage). `label` names the certificate in the error.
pub fn verify_signed_by_ca(
    ca: &CertificateDer<'static>,
    chain: &[CertificateDer<'static>],
    label: &str,
) -> Result<(), TlsError> {
    let Some((end_entity, intermediates)) = chain.split_first() else {
        return Err(TlsError::NotSignedByCa {
            certificate: label.to_string(),
            why: "empty chain".to_string(),
        });
    };
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
        .build()
        .map_err(TlsError::Verifier)?;
    verifier
        .verify_client_cert(end_entity, intermediates, UnixTime::now())
        .map(|_| ())
        .map_err(|error| TlsError::NotSignedByCa {
            certificate: label.to_string(),
            why: error.to_string(),
        })
}

fn check_key_matches(identity: &Identity, label: &str) -> Result<(), TlsError> {
    let key = provider()
        .key_provider
        .load_private_key(identity.key.clone_key())?;
    rustls::sign::CertifiedKey::new(identity.chain.clone(), key)
        .keys_match()
        .map_err(|_| TlsError::KeyMismatch {
            certificate: label.to_string(),
        })
}

fn roots(ca: &CertificateDer<'static>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone())?;
    Ok(roots)
}

// ---------------------------------------------------------------------------------------------
// Generation

/// A cluster CA for development and small deployments: generated here, kept as `ca.pem`/`ca.key`.
///
/// Certificates are valid from 1975 to 4096 (rcgen's defaults): the CA is the cluster's, rotation
/// is by replacing the directory, not by expiry.
pub struct DevCa {
    cluster: ClusterId,
    key: rcgen::KeyPair,
    /// The issuer as rcgen needs it: same subject and key as `anchor`.
    issuer: rcgen::Certificate,
    /// The trust anchor as written in `ca.pem`.
    anchor: CertificateDer<'static>,
    anchor_pem: String,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa")
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

/// A certificate and its new private key, as DER and PEM.
pub struct IssuedCert {
    /// The DNS name the certificate is valid for.
    pub dns_name: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub identity: Identity,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("dns_name", &self.dns_name)
            .finish_non_exhaustive()
    }
}

impl IssuedCert {
    /// Writes `<cert_path>` and `<key_path>` (the key with mode 0600 on Unix).
    pub fn write(&self, cert_path: &Path, key_path: &Path) -> Result<(), TlsError> {
        write_file(cert_path, self.cert_pem.as_bytes(), false)?;
        write_file(key_path, self.key_pem.as_bytes(), true)
    }
}

impl DevCa {
    pub fn generate(cluster: ClusterId) -> Result<DevCa, TlsError> {
        let key = rcgen::KeyPair::generate()?;
        let issuer = ca_params(cluster)?.self_signed(&key)?;
        let anchor = issuer.der().clone();
        let anchor_pem = issuer.pem();
        Ok(DevCa {
            cluster,
            key,
            issuer,
            anchor,
            anchor_pem,
        })
    }

    /// Reads `ca.pem` and `ca.key` from `dir`, and checks that certificates it issues verify
    /// against `ca.pem` (that is, the key and the cluster id are the CA's).
    pub fn load(dir: &Path, cluster: ClusterId) -> Result<DevCa, TlsError> {
        let anchor = load_ca(&ca_cert_path(dir))?;
        let key_path = dir.join(CA_KEY_FILE);
        let key_pem = read_to_string(&key_path)?;
        let key = rcgen::KeyPair::from_pem(&key_pem).map_err(|error| TlsError::Pem {
            path: key_path.clone(),
            why: error.to_string(),
        })?;
        // rcgen signs with the issuer's subject and key identifier, both derived from the cluster
        // id and the key: a re-created issuer signs certificates that chain to the stored anchor.
        let issuer = ca_params(cluster)?.self_signed(&key)?;
        let anchor_pem = read_to_string(&ca_cert_path(dir))?;
        let ca = DevCa {
            cluster,
            key,
            issuer,
            anchor,
            anchor_pem,
        };
        let probe = ca.issue_client("probe")?;
        verify_signed_by_ca(&ca.anchor, &probe.identity.chain, "probe").map_err(|error| {
            TlsError::CaMismatch {
                why: format!("{} with cluster {cluster}: {error}", key_path.display()),
            }
        })?;
        Ok(ca)
    }

    pub fn cluster(&self) -> ClusterId {
        self.cluster
    }

    /// The CA certificate every endpoint of the cluster trusts.
    pub fn certificate(&self) -> CertificateDer<'static> {
        self.anchor.clone()
    }

    pub fn issue_node(&self, node: NodeId) -> Result<IssuedCert, TlsError> {
        let usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.issue(node_dns_name(self.cluster, node), usages)
    }

    pub fn issue_client(&self, name: &str) -> Result<IssuedCert, TlsError> {
        let dns_name = client_dns_name(self.cluster, name)?;
        self.issue(dns_name, vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth])
    }

    /// The material for an endpoint holding `issued`.
    pub fn material(&self, issued: &IssuedCert) -> TlsMaterial {
        TlsMaterial {
            ca: self.certificate(),
            identity: issued.identity.clone(),
        }
    }

    /// Writes `ca.pem` and `ca.key` into `dir` (created if missing).
    pub fn write(&self, dir: &Path) -> Result<(), TlsError> {
        create_dir(dir)?;
        write_file(&ca_cert_path(dir), self.anchor_pem.as_bytes(), false)?;
        write_file(
            &dir.join(CA_KEY_FILE),
            self.key.serialize_pem().as_bytes(),
            true,
        )
    }

    /// Issues a node certificate and writes `node-<id>.pem` and `node-<id>.key` into `dir`.
    pub fn write_node(&self, dir: &Path, node: NodeId) -> Result<(), TlsError> {
        self.issue_node(node)?
            .write(&node_cert_path(dir, node), &node_key_path(dir, node))
    }

    /// Issues a client certificate and writes `client-<name>.pem` and `client-<name>.key`.
    pub fn write_client(&self, dir: &Path, name: &str) -> Result<(), TlsError> {
        self.issue_client(name)?
            .write(&client_cert_path(dir, name), &client_key_path(dir, name))
    }

    fn issue(
        &self,
        dns_name: String,
        usages: Vec<rcgen::ExtendedKeyUsagePurpose>,
    ) -> Result<IssuedCert, TlsError> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(vec![dns_name.clone()])?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, dns_name.clone());
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = usages;
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer, &self.key)?;
        let identity = Identity {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        };
        Ok(IssuedCert {
            dns_name,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            identity,
        })
    }
}

fn ca_params(cluster: ClusterId) -> Result<rcgen::CertificateParams, TlsError> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("paxos cluster {cluster} CA"),
    );
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// Creates a certificate directory: a new CA, one certificate per node and per client. Refuses to
/// run over an existing `ca.pem`.
pub fn init_dir(
    dir: &Path,
    cluster: ClusterId,
    nodes: &[NodeId],
    clients: &[&str],
) -> Result<DevCa, TlsError> {
    let ca_path = ca_cert_path(dir);
    if ca_path.exists() {
        return Err(TlsError::AlreadyExists { path: ca_path });
    }
    // Check names before writing anything, so a typo leaves no half-made directory.
    for name in clients {
        client_dns_name(cluster, name)?;
    }
    let ca = DevCa::generate(cluster)?;
    ca.write(dir)?;
    for node in nodes {
        ca.write_node(dir, *node)?;
    }
    for name in clients {
        ca.write_client(dir, name)?;
    }
    Ok(ca)
}

// ---------------------------------------------------------------------------------------------
// Loading

/// Reads the CA certificate (the first certificate in the PEM file).
pub fn load_ca(path: &Path) -> Result<CertificateDer<'static>, TlsError> {
    load_certs(path)?
        .into_iter()
        .next()
        .ok_or_else(|| TlsError::Pem {
            path: path.to_path_buf(),
            why: "no certificate in file".to_string(),
        })
}

/// Reads a certificate chain and its private key, and checks that they belong together.
pub fn load_identity(cert_path: &Path, key_path: &Path) -> Result<Identity, TlsError> {
    let chain = load_certs(cert_path)?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            path: cert_path.to_path_buf(),
            why: "no certificate in file".to_string(),
        });
    }
    require_exists(key_path)?;
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|error| TlsError::Pem {
        path: key_path.to_path_buf(),
        why: error.to_string(),
    })?;
    let identity = Identity { chain, key };
    check_key_matches(&identity, &cert_path.display().to_string())?;
    Ok(identity)
}

/// Reads `ca.pem`, `node-<id>.pem` and `node-<id>.key` from `dir` and checks them (key matches,
/// signed by the CA, valid for `node` of `cluster`).
pub fn load_node_material(
    dir: &Path,
    cluster: ClusterId,
    node: NodeId,
) -> Result<TlsMaterial, TlsError> {
    let ca = load_ca(&ca_cert_path(dir))?;
    let cert_path = node_cert_path(dir, node);
    let identity = load_identity(&cert_path, &node_key_path(dir, node))?;
    let label = cert_path.display().to_string();
    verify_signed_by_ca(&ca, &identity.chain, &label)?;
    verify_node(identity.end_entity(), cluster, node)?;
    Ok(TlsMaterial { ca, identity })
}

/// Reads `ca.pem`, `client-<name>.pem` and `client-<name>.key` from `dir` and checks them.
pub fn load_client_material(
    dir: &Path,
    cluster: ClusterId,
    name: &str,
) -> Result<TlsMaterial, TlsError> {
    client_dns_name(cluster, name)?;
    let ca = load_ca(&ca_cert_path(dir))?;
    let cert_path = client_cert_path(dir, name);
    let identity = load_identity(&cert_path, &client_key_path(dir, name))?;
    let material = TlsMaterial { ca, identity };
    material.check_client(cluster, name)?;
    Ok(material)
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    require_exists(path)?;
    CertificateDer::pem_file_iter(path)
        .and_then(|items| items.collect::<Result<Vec<_>, _>>())
        .map_err(|error| TlsError::Pem {
            path: path.to_path_buf(),
            why: error.to_string(),
        })
}

fn require_exists(path: &Path) -> Result<(), TlsError> {
    match std::fs::metadata(path) {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Err(TlsError::NotFound {
            path: path.to_path_buf(),
        }),
        Err(source) => Err(TlsError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn read_to_string(path: &Path) -> Result<String, TlsError> {
    require_exists(path)?;
    std::fs::read_to_string(path).map_err(|source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn create_dir(dir: &Path) -> Result<(), TlsError> {
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

fn write_file(path: &Path, bytes: &[u8], secret: bool) -> Result<(), TlsError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let io_error = |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = options.open(path).map_err(io_error)?;
    // `mode` applies only to a new file: tighten one that already existed too.
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        let private = std::fs::Permissions::from_mode(0o600);
        file.set_permissions(private).map_err(io_error)?;
    }
    file.write_all(bytes).map_err(io_error)?;
    file.sync_all().map_err(io_error)
}

// ---------------------------------------------------------------------------------------------
// rustls and quinn configurations

/// Whether a server demands a certificate from its clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// Mutual TLS: a client without a certificate signed by the CA is refused. Replica traffic.
    Required,
    /// A client may present no certificate (a certificate it does present must verify). For an
    /// application protocol that authenticates some clients otherwise; never for replica traffic.
    Optional,
}

/// A TLS 1.3 server config presenting `material.identity`, verifying clients against
/// `material.ca`, speaking only `alpn`.
pub fn server_config(
    material: &TlsMaterial,
    alpn: &[u8],
    client_auth: ClientAuth,
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = provider();
    let builder = WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(&material.ca)?),
        provider.clone(),
    );
    let verifier = match client_auth {
        ClientAuth::Required => builder.build(),
        ClientAuth::Optional => builder.allow_unauthenticated().build(),
    }
    .map_err(TlsError::Verifier)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            material.identity.chain.clone(),
            material.identity.key.clone_key(),
        )?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

/// A TLS 1.3 client config verifying servers against `ca`, presenting `identity` when given,
/// offering only `alpn`. The server's name is given per connection (see [`node_dns_name`]).
pub fn client_config(
    ca: &CertificateDer<'static>,
    identity: Option<&Identity>,
    alpn: &[u8],
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let verifier =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots(ca)?), provider.clone())
            .build()
            .map_err(TlsError::Verifier)?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_webpki_verifier(verifier);
    let mut config = match identity {
        Some(identity) => {
            builder.with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

/// [`server_config`] wrapped for quinn. Transport parameters are left at quinn's defaults; the
/// caller sets them with `quinn::ServerConfig::transport_config`.
pub fn quic_server_config(
    material: &TlsMaterial,
    alpn: &[u8],
    client_auth: ClientAuth,
) -> Result<quinn::ServerConfig, TlsError> {
    let tls = server_config(material, alpn, client_auth)?;
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|error| TlsError::Quic(error.to_string()))?;
    Ok(quinn::ServerConfig::with_crypto(Arc::new(quic)))
}

/// [`client_config`] wrapped for quinn.
pub fn quic_client_config(
    ca: &CertificateDer<'static>,
    identity: Option<&Identity>,
    alpn: &[u8],
) -> Result<quinn::ClientConfig, TlsError> {
    let tls = client_config(ca, identity, alpn)?;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|error| TlsError::Quic(error.to_string()))?;
    Ok(quinn::ClientConfig::new(Arc::new(quic)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: ClusterId = ClusterId(0xdead_beef);

    #[test]
    fn node_names_follow_the_scheme() {
        assert_eq!(
            node_dns_name(CLUSTER, NodeId(3)),
            "node-3.00000000deadbeef.paxos"
        );
        assert_eq!(
            client_dns_name(CLUSTER, "alice-2").unwrap(),
            "client-alice-2.00000000deadbeef.paxos"
        );
        for bad in ["", "-a", "a-", "Alice", "a.b", &"x".repeat(41)] {
            assert!(client_dns_name(CLUSTER, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn issued_certificates_prove_their_own_name_only() {
        let ca = DevCa::generate(CLUSTER).unwrap();
        let node2 = ca.issue_node(NodeId(2)).unwrap();
        let cert = node2.identity.end_entity();
        assert!(verify_node(cert, CLUSTER, NodeId(2)).is_ok());
        assert!(matches!(
            verify_node(cert, CLUSTER, NodeId(3)),
            Err(TlsError::WrongName { .. })
        ));
        assert!(verify_node(cert, ClusterId(1), NodeId(2)).is_err());
        assert_eq!(
            identify(cert, CLUSTER).unwrap(),
            PeerIdentity::Node(NodeId(2))
        );
        ca.material(&node2).check_node(CLUSTER, NodeId(2)).unwrap();

        let client = ca.issue_client("alice").unwrap();
        let cert = client.identity.end_entity();
        assert_eq!(
            identify(cert, CLUSTER).unwrap(),
            PeerIdentity::Client("alice".to_string())
        );
        assert!(verify_node(cert, CLUSTER, NodeId(0)).is_err());
        ca.material(&client).check_client(CLUSTER, "alice").unwrap();
    }

    #[test]
    fn foreign_ca_and_swapped_keys_are_refused() {
        let ca = DevCa::generate(CLUSTER).unwrap();
        let other = DevCa::generate(CLUSTER).unwrap();
        let foreign = other.issue_node(NodeId(1)).unwrap();
        let material = TlsMaterial {
            ca: ca.certificate(),
            identity: foreign.identity.clone(),
        };
        assert!(matches!(
            material.check_node(CLUSTER, NodeId(1)),
            Err(TlsError::NotSignedByCa { .. })
        ));

        let mine = ca.issue_node(NodeId(1)).unwrap();
        let swapped = TlsMaterial {
            ca: ca.certificate(),
            identity: Identity {
                chain: mine.identity.chain.clone(),
                key: foreign.identity.key.clone_key(),
            },
        };
        assert!(matches!(
            swapped.check_node(CLUSTER, NodeId(1)),
            Err(TlsError::KeyMismatch { .. })
        ));
    }

    #[test]
    fn directory_round_trip_with_typed_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path();
        let missing = load_node_material(path, CLUSTER, NodeId(1)).unwrap_err();
        assert!(matches!(missing, TlsError::NotFound { .. }));
        assert!(
            missing.to_string().contains("chubbyctl certs init"),
            "{missing}"
        );

        init_dir(path, CLUSTER, &[NodeId(1), NodeId(2)], &["alice"]).unwrap();
        assert!(matches!(
            init_dir(path, CLUSTER, &[], &[]),
            Err(TlsError::AlreadyExists { .. })
        ));
        load_node_material(path, CLUSTER, NodeId(1)).unwrap();
        load_client_material(path, CLUSTER, "alice").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(node_key_path(path, NodeId(1)))
                .unwrap()
                .permissions();
            assert_eq!(mode.mode() & 0o777, 0o600);
        }
        assert!(matches!(
            load_node_material(path, ClusterId(7), NodeId(1)),
            Err(TlsError::WrongName { .. })
        ));

        // A node added later is issued by the reloaded CA and chains to the original ca.pem.
        let ca = DevCa::load(path, CLUSTER).unwrap();
        ca.write_node(path, NodeId(3)).unwrap();
        load_node_material(path, CLUSTER, NodeId(3)).unwrap();
        assert!(matches!(
            DevCa::load(path, ClusterId(7)),
            Err(TlsError::CaMismatch { .. })
        ));

        // node-1's key with node-2's certificate.
        std::fs::copy(
            node_key_path(path, NodeId(2)),
            node_key_path(path, NodeId(1)),
        )
        .unwrap();
        let error = load_node_material(path, CLUSTER, NodeId(1)).unwrap_err();
        assert!(matches!(error, TlsError::KeyMismatch { .. }), "{error}");

        // A certificate from another CA.
        let other = tempfile::tempdir().unwrap();
        init_dir(other.path(), CLUSTER, &[NodeId(2)], &[]).unwrap();
        for file in ["node-2.pem", "node-2.key"] {
            std::fs::copy(other.path().join(file), path.join(file)).unwrap();
        }
        let error = load_node_material(path, CLUSTER, NodeId(2)).unwrap_err();
        assert!(matches!(error, TlsError::NotSignedByCa { .. }), "{error}");
        assert!(error.to_string().contains("not signed by the cluster CA"));
    }

    #[test]
    fn configs_build_with_the_ring_provider() {
        let ca = DevCa::generate(CLUSTER).unwrap();
        let material = ca.material(&ca.issue_node(NodeId(1)).unwrap());
        for auth in [ClientAuth::Required, ClientAuth::Optional] {
            quic_server_config(&material, ALPN_PEER, auth).unwrap();
        }
        quic_client_config(&material.ca, Some(&material.identity), ALPN_PEER).unwrap();
        quic_client_config(&material.ca, None, b"chubby/1").unwrap();
    }
}
