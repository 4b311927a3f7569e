//! The incoming half: accept connections (the TLS handshake has already required a certificate
//! signed by the cluster CA), then for each stream read the hello, check that the certificate
//! proves the claimed node, and either forward its messages or serve a snapshot.
//!
//! A checked hello whose boot nonce differs from the last one seen from its node means that node
//! restarted: the outgoing connection to it, if older than the incoming one that brought the news,
//! goes to the dead process and is closed so that its task reconnects. A connection made after the
//! restart is kept, and an unchanged nonce does nothing, so this cannot loop.

use super::protocol::{
    codes, BootNonce, Hello, StreamKind, CONTROL_FRAME_BYTES_MAX, PROTOCOL_VERSION,
};
use super::snapshot::write_snapshot;
use super::{Links, QuicLimits};
use crate::tls;
use crate::transport::frame;
use crate::transport::limits::RECEIVE_BUFFER_BYTES;
use crate::transport::metrics::{bump, Counters};
use crate::transport::{InboundSender, SnapshotSource};
use crate::wire::{ClusterId, Inbound, PeerMessage};
use paxos_core::NodeId;
use rustls_pki_types::CertificateDer;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What the per-connection and per-stream tasks share. Holds no endpoint, so the socket closes as
/// soon as the transport drops its own handles (the peers' tasks in `links`, which do hold it, are
/// stopped when the transport stops).
pub(super) struct Shared {
    pub node: NodeId,
    pub cluster: ClusterId,
    pub limits: QuicLimits,
    pub counters: Arc<Counters>,
    pub inbound: InboundSender,
    pub snapshots: Arc<dyn SnapshotSource>,
    /// The outgoing side, to close a connection to a peer that restarted.
    pub links: Arc<Links>,
    pub boots: Mutex<BootNonces>,
}

/// The boot nonce last seen from each node, in hellos that passed the identity check.
#[derive(Debug, Default)]
pub(super) struct BootNonces(BTreeMap<NodeId, BootNonce>);

impl BootNonces {
    /// Records `boot` as the nonce of `node`. True when it replaces a different one: the node
    /// restarted. The first nonce of a node says nothing (this transport may be the one that
    /// restarted), and the same nonce again is one more stream of the same run.
    pub fn handle_hello(&mut self, node: NodeId, boot: BootNonce) -> bool {
        self.0.insert(node, boot).is_some_and(|last| last != boot)
    }
}

pub(super) async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(serve_connection(shared.clone(), incoming));
    }
}

/// A peer connection that passed the handshake, with the certificate it presented.
#[derive(Clone)]
struct Peer {
    connection: quinn::Connection,
    certificate: CertificateDer<'static>,
    /// When the handshake completed: the peer's process was running by then.
    established: Instant,
}

async fn serve_connection(shared: Arc<Shared>, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    let connection = match tokio::time::timeout(shared.limits.connect_timeout, incoming).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(error)) => {
            bump(&shared.counters.connections_refused, 1);
            tracing::warn!(%remote, %error, "incoming connection refused during handshake");
            return;
        }
        Err(_) => {
            bump(&shared.counters.connections_refused, 1);
            tracing::warn!(%remote, "incoming handshake timed out");
            return;
        }
    };
    let alpn = alpn_of(&connection);
    let Some(certificate) = peer_certificate(&connection).filter(|_| alpn_ok(&alpn)) else {
        // Unreachable with the server config this transport builds; checked all the same.
        bump(&shared.counters.connections_refused, 1);
        tracing::warn!(%remote, ?alpn, "incoming connection without certificate or ALPN");
        connection.close(
            codes::PROTOCOL_ERROR.into(),
            b"certificate and ALPN required",
        );
        return;
    };
    let peer = Peer {
        connection,
        certificate,
        established: Instant::now(),
    };
    loop {
        tokio::select! {
            stream = peer.connection.accept_uni() => match stream {
                Ok(recv) => {
                    tokio::spawn(receive_messages(shared.clone(), peer.clone(), recv));
                }
                Err(_) => return,
            },
            stream = peer.connection.accept_bi() => match stream {
                Ok((send, recv)) => {
                    tokio::spawn(serve_snapshot(shared.clone(), peer.clone(), send, recv));
                }
                Err(_) => return,
            },
        }
    }
}

fn alpn_of(connection: &quinn::Connection) -> Option<Vec<u8>> {
    connection
        .handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?
        .protocol
}

fn alpn_ok(alpn: &Option<Vec<u8>>) -> bool {
    alpn.as_deref() == Some(tls::ALPN_PEER)
}

fn peer_certificate(connection: &quinn::Connection) -> Option<CertificateDer<'static>> {
    let chain = connection
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    chain.into_iter().next()
}

/// Reads and checks a stream's hello. On refusal the whole connection is closed: a peer that
/// lies about who it is gets nothing more through. `None` when refused or the stream died.
async fn read_hello(shared: &Shared, peer: &Peer, recv: &mut quinn::RecvStream) -> Option<Hello> {
    let read = frame::read::<Hello, _>(recv, CONTROL_FRAME_BYTES_MAX);
    let hello = match tokio::time::timeout(shared.limits.hello_timeout, read).await {
        Ok(Ok(Some((hello, _)))) => hello,
        Ok(Ok(None)) => return None,
        Ok(Err(error)) if error.is_decode_error() => {
            bump(&shared.counters.decode_errors, 1);
            refuse(shared, peer, codes::DECODE_ERROR, &error.to_string());
            return None;
        }
        Ok(Err(_)) => return None,
        Err(_) => {
            refuse(shared, peer, codes::PROTOCOL_ERROR, "no hello in time");
            return None;
        }
    };
    match check_hello(shared, &peer.certificate, &hello) {
        Ok(()) => {
            handle_boot(shared, peer, &hello);
            Some(hello)
        }
        Err((code, why)) => {
            refuse(shared, peer, code, &why);
            None
        }
    }
}

fn check_hello(
    shared: &Shared,
    certificate: &CertificateDer<'_>,
    hello: &Hello,
) -> Result<(), (u32, String)> {
    if hello.version != PROTOCOL_VERSION {
        let why = format!(
            "protocol version {} (ours {PROTOCOL_VERSION})",
            hello.version
        );
        return Err((codes::PROTOCOL_ERROR, why));
    }
    if hello.cluster != shared.cluster {
        let why = format!("claims cluster {} (ours {})", hello.cluster, shared.cluster);
        return Err((codes::IDENTITY_REFUSED, why));
    }
    if hello.node == shared.node {
        let why = format!("claims to be this node ({})", shared.node.0);
        return Err((codes::IDENTITY_REFUSED, why));
    }
    tls::verify_node(certificate, shared.cluster, hello.node)
        .map_err(|error| (codes::IDENTITY_REFUSED, error.to_string()))
}

/// Closes the stale outgoing connection to the hello's node if the hello shows that it restarted.
/// Only called for hellos whose node the certificate proved, so no one else can force reconnects.
fn handle_boot(shared: &Shared, peer: &Peer, hello: &Hello) {
    let restarted = shared
        .boots
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .handle_hello(hello.node, hello.boot);
    if restarted {
        let closed = shared.links.close_stale(hello.node, peer.established);
        tracing::info!(peer = hello.node.0, closed, "peer restarted");
    }
}

fn refuse(shared: &Shared, peer: &Peer, code: u32, why: &str) {
    bump(&shared.counters.connections_refused, 1);
    tracing::warn!(remote = %peer.connection.remote_address(), %why, "peer refused");
    peer.connection.close(code.into(), b"refused");
}

async fn receive_messages(shared: Arc<Shared>, peer: Peer, mut recv: quinn::RecvStream) {
    let Some(hello) = read_hello(&shared, &peer, &mut recv).await else {
        return;
    };
    if hello.stream != StreamKind::Messages {
        refuse(
            &shared,
            &peer,
            codes::PROTOCOL_ERROR,
            "snapshot request on a one-way stream",
        );
        return;
    }
    let from = hello.node;
    // Frames are read through a buffer: each read of the stream takes the connection's lock, and
    // reading a frame's header and payload straight from it would take it several times a message.
    let mut recv = tokio::io::BufReader::with_capacity(RECEIVE_BUFFER_BYTES, recv);
    loop {
        match frame::read::<PeerMessage, _>(&mut recv, shared.limits.frame_bytes_max).await {
            Ok(Some((message, bytes))) => {
                if shared
                    .inbound
                    .send(Inbound { from, message })
                    .await
                    .is_err()
                {
                    // The driver is gone: the transport is shutting down.
                    return;
                }
                bump(&shared.counters.messages_received, 1);
                bump(&shared.counters.bytes_received, bytes as u64);
            }
            Ok(None) => return,
            Err(error) if error.is_decode_error() => {
                bump(&shared.counters.decode_errors, 1);
                tracing::warn!(peer = from.0, %error, "closing message stream");
                // Best effort: the stream may already be gone.
                let _ = recv.get_mut().stop(codes::DECODE_ERROR.into());
                return;
            }
            Err(error) => {
                tracing::debug!(peer = from.0, %error, "message stream ended");
                return;
            }
        }
    }
}

async fn serve_snapshot(
    shared: Arc<Shared>,
    peer: Peer,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let Some(hello) = read_hello(&shared, &peer, &mut recv).await else {
        return;
    };
    let StreamKind::Snapshot { min_slot } = hello.stream else {
        refuse(
            &shared,
            &peer,
            codes::PROTOCOL_ERROR,
            "messages on a two-way stream",
        );
        return;
    };
    let snapshots = shared.snapshots.clone();
    let path = tokio::task::spawn_blocking(move || snapshots.snapshot_file(min_slot))
        .await
        .ok()
        .flatten();
    let result = match &path {
        None => write_snapshot::<tokio::fs::File, _>(None, &mut send).await,
        Some(path) => match open(path).await {
            Ok((mut file, bytes)) => {
                write_snapshot(Some((&mut file, bytes, path)), &mut send).await
            }
            Err(error) => Err(error),
        },
    };
    match result {
        Ok(bytes) => {
            // Finishing cannot fail unless the peer gave up; it will see that.
            let _ = send.finish();
            if path.is_some() {
                bump(&shared.counters.snapshots_served, 1);
                bump(&shared.counters.snapshot_bytes_sent, bytes);
                tracing::info!(peer = hello.node.0, bytes, "snapshot served");
            }
        }
        Err(error) => {
            tracing::warn!(peer = hello.node.0, %error, "snapshot not served");
            let _ = send.reset(codes::SNAPSHOT_FAILED.into());
        }
    }
}

async fn open(
    path: &std::path::Path,
) -> Result<(tokio::fs::File, u64), super::snapshot::SnapshotStreamError> {
    let error = |source| super::snapshot::SnapshotStreamError::File {
        path: path.to_path_buf(),
        source,
    };
    let file = tokio::fs::File::open(path).await.map_err(error)?;
    // The length of the opened file: a snapshot replaced meanwhile does not change it.
    let bytes = file.metadata().await.map_err(error)?.len();
    Ok((file, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_changed_boot_nonce_is_a_restart() {
        let mut boots = BootNonces::default();
        let (two, three) = (NodeId(2), NodeId(3));
        assert!(!boots.handle_hello(two, BootNonce(7)), "a first nonce");
        assert!(!boots.handle_hello(two, BootNonce(7)), "the same run");
        assert!(
            !boots.handle_hello(three, BootNonce(8)),
            "another node's first"
        );
        assert!(boots.handle_hello(two, BootNonce(9)), "a new run");
        assert!(
            !boots.handle_hello(two, BootNonce(9)),
            "then the same run again"
        );
        assert!(boots.handle_hello(two, BootNonce(7)), "any change counts");
    }
}
