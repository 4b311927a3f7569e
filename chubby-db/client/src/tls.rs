//! TLS 1.3 over QUIC with rustls' *ring* provider, passed explicitly (the process-wide default
//! provider is never installed nor consulted).
//!
//! A client knows the replicas by address, not by node id, so it cannot name the certificate it
//! expects before it connects. [`ReplicaVerifier`] accepts a server certificate that (a) names
//! exactly the form `node-<id>.<cluster>.paxos` of this cluster and (b) passes the standard WebPKI
//! verification, against the cluster CA, for that very name. A client certificate of the same
//! cluster cannot pass: it names `client-<name>` and carries no server usage.

use crate::config::ClientConfig;
use crate::error::Error;
use chubby_proto::ALPN;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::Arc;
use std::time::Duration;

/// How often an idle connection pings, and after how much silence it counts as dead.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(1);
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The domain every name of `cluster` lives under: `<16 hex digits>.paxos`.
pub(crate) fn cluster_domain(cluster: u64) -> String {
    format!("{cluster:016x}.paxos")
}

/// The quinn client configuration for `config`: ALPN `chubby/1`, the replica verifier, the
/// client certificate when there is one.
pub(crate) fn quic_client_config(config: &ClientConfig) -> Result<quinn::ClientConfig, Error> {
    let tls_error = |e: rustls::Error| Error::Config(format!("tls: {e}"));
    let provider = provider();
    let mut roots = RootCertStore::empty();
    roots.add(config.ca.clone()).map_err(tls_error)?;
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| Error::Config(format!("tls verifier: {e}")))?;
    let verifier = Arc::new(ReplicaVerifier {
        inner: webpki,
        domain: cluster_domain(config.cluster),
    });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut tls = match &config.identity {
        Some(identity) => builder
            .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
            .map_err(tls_error)?,
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| Error::Config(format!("tls config unusable for QUIC: {e}")))?;
    let mut client = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(KEEP_ALIVE_INTERVAL));
    transport.max_idle_timeout(Some(
        IDLE_TIMEOUT.try_into().expect("idle timeout fits a VarInt"),
    ));
    client.transport_config(Arc::new(transport));
    Ok(client)
}

/// Accepts the certificate of any replica of one cluster (see the module doc).
#[derive(Debug)]
pub(crate) struct ReplicaVerifier {
    inner: Arc<WebPkiServerVerifier>,
    /// `<cluster>.paxos`.
    domain: String,
}

impl ReplicaVerifier {
    /// The one `node-<id>.<domain>` name the certificate lists, if it lists exactly one. The
    /// WebPKI check that follows verifies the certificate is really valid for it.
    fn replica_name(&self, end_entity: &CertificateDer<'_>) -> Option<ServerName<'static>> {
        let parsed = webpki::EndEntityCert::try_from(end_entity).ok()?;
        let suffix = format!(".{}", self.domain);
        let mut names = parsed.valid_dns_names().filter(|name| {
            name.strip_suffix(&suffix)
                .and_then(|label| label.strip_prefix("node-"))
                .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
        });
        let name = names.next()?;
        if names.next().is_some() {
            return None;
        }
        ServerName::try_from(name.to_string()).ok()
    }
}

impl ServerCertVerifier for ReplicaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = self
            .replica_name(end_entity)
            .ok_or(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            ))?;
        self.inner
            .verify_server_cert(end_entity, intermediates, &name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A QUIC client endpoint on an ephemeral port of the replicas' address family, speaking the
/// client protocol with `config`'s certificates.
pub(crate) fn client_endpoint(config: &ClientConfig) -> Result<quinn::Endpoint, Error> {
    let quic = quic_client_config(config)?;
    let bind: std::net::SocketAddr = if config.replicas[0].is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let mut endpoint = quinn::Endpoint::client(bind)
        .map_err(|e| Error::Config(format!("client endpoint on {bind}: {e}")))?;
    endpoint.set_default_client_config(quic);
    Ok(endpoint)
}
