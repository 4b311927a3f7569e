//! What a client needs to know: where the replicas are, which cluster, whom to trust, who it is,
//! and how long to wait.

use crate::error::Error;
use chubby_proto::limits::{LEASE_MS_MAX, LEASE_MS_MIN};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// How to reach a cluster and how to behave there.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The client addresses of the replicas (any subset will do: the client follows redirects).
    pub replicas: Vec<SocketAddr>,
    /// The cluster id; replicas must present a certificate named
    /// `node-<id>.<cluster as 16 hex digits>.paxos` signed by `ca`.
    pub cluster: u64,
    /// The cluster CA certificate.
    pub ca: CertificateDer<'static>,
    /// The client's certificate and key (`client-<name>.<cluster>.paxos`). Servers refuse a client
    /// without one unless their operator allows it.
    pub identity: Option<ClientIdentity>,
    /// The session lease to ask for; `None` takes the server's default (12 s).
    pub lease: Option<Duration>,
    pub timeouts: Timeouts,
}

/// A certificate chain (end entity first) and its private key.
#[derive(Debug)]
pub struct ClientIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for ClientIdentity {
    fn clone(&self) -> ClientIdentity {
        ClientIdentity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// How long the client waits, and how it keeps its session alive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// One QUIC connection attempt to one replica.
    pub connect: Duration,
    /// One request on one replica, before the client tries again (maybe elsewhere).
    pub attempt: Duration,
    /// One call of the API, across retries, redirects and fail-overs.
    pub request: Duration,
    /// Between KeepAlives; `None`: a third of the lease.
    pub keep_alive_interval: Option<Duration>,
    /// How long after its local view of the lease ran out, with no KeepAlive acknowledged, the
    /// client gives its session up as expired (Chubby's grace period). A new master extends
    /// every lease when it takes over, so a session can outlive its last acknowledged lease.
    pub grace: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(2),
            attempt: Duration::from_secs(5),
            request: Duration::from_secs(30),
            keep_alive_interval: None,
            grace: Duration::from_secs(45),
        }
    }
}

impl ClientConfig {
    /// A configuration without a client certificate (see [`ClientConfig::with_identity`]).
    pub fn new(replicas: Vec<SocketAddr>, cluster: u64, ca: CertificateDer<'static>) -> Self {
        ClientConfig {
            replicas,
            cluster,
            ca,
            identity: None,
            lease: None,
            timeouts: Timeouts::default(),
        }
    }

    pub fn with_identity(mut self, identity: ClientIdentity) -> Self {
        self.identity = Some(identity);
        self
    }

    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = Some(lease);
        self
    }

    /// Reads the CA and, when given, the client's certificate chain and key, from PEM files.
    pub fn from_pem_files(
        replicas: Vec<SocketAddr>,
        cluster: u64,
        ca: &Path,
        identity: Option<(&Path, &Path)>,
    ) -> Result<ClientConfig, Error> {
        let ca = load_certificates(ca)?
            .into_iter()
            .next()
            .ok_or_else(|| Error::Config(format!("{}: no certificate in file", ca.display())))?;
        let mut config = ClientConfig::new(replicas, cluster, ca);
        if let Some((chain, key)) = identity {
            config.identity = Some(ClientIdentity {
                chain: load_certificates(chain)?,
                key: PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| Error::Config(format!("{}: {e}", key.display())))?,
            });
        }
        Ok(config)
    }

    /// Reads `ca.pem` and, for `Some(name)`, `client-<name>.pem` and `client-<name>.key` from a
    /// certificate directory as `chubbyctl certs init` writes it.
    pub fn from_cert_dir(
        replicas: Vec<SocketAddr>,
        cluster: u64,
        dir: &Path,
        client_name: Option<&str>,
    ) -> Result<ClientConfig, Error> {
        let chain = client_name.map(|name| dir.join(format!("client-{name}.pem")));
        let key = client_name.map(|name| dir.join(format!("client-{name}.key")));
        let identity = chain.as_deref().zip(key.as_deref());
        ClientConfig::from_pem_files(replicas, cluster, &dir.join("ca.pem"), identity)
    }

    /// Why this configuration cannot work, if it cannot.
    pub fn invalid(&self) -> Option<String> {
        if self.replicas.is_empty() {
            return Some("no replica addresses".to_string());
        }
        if let Some(lease) = self.lease {
            let ms = lease.as_millis();
            if ms < u128::from(LEASE_MS_MIN) || ms > u128::from(LEASE_MS_MAX) {
                return Some(format!(
                    "lease of {ms} ms outside {LEASE_MS_MIN}..={LEASE_MS_MAX} ms"
                ));
            }
        }
        let t = &self.timeouts;
        if t.connect.is_zero() || t.attempt.is_zero() || t.request.is_zero() {
            return Some("timeouts must be positive".to_string());
        }
        if t.keep_alive_interval.is_some_and(|i| i.is_zero()) {
            return Some("keep_alive_interval must be positive".to_string());
        }
        None
    }

    /// The lease the client plans with before the server has answered.
    pub(crate) fn lease_or_default(&self) -> Duration {
        self.lease.unwrap_or(Duration::from_millis(
            chubby_proto::limits::LEASE_MS_DEFAULT,
        ))
    }
}

fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    CertificateDer::pem_file_iter(path)
        .and_then(|items| items.collect::<Result<Vec<_>, _>>())
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))
}
