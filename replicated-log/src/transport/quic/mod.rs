//! [`QuicTransport`]: replicas over QUIC (quinn) with mutual TLS (rustls, *ring*).
//!
//! - One endpoint per replica, listening on `listen` and making the outgoing connections.
//! - One outgoing connection per peer, owned by that peer's task ([`peer`]); the task drains a
//!   bounded queue into one long-lived unidirectional stream and reconnects with jittered
//!   exponential backoff. `send` only enqueues: it never blocks, and drops (counting) when the
//!   queue is full or the peer is unknown.
//! - Incoming connections ([`accept`]) must present a certificate signed by the cluster CA (the
//!   handshake refuses others); every stream then opens with a [`Hello`] whose claimed node the
//!   certificate must prove. Messages go to the inbound channel as `Inbound { from, message }`.
//! - Snapshots travel on a bidirectional stream of their own, in checksummed chunks ([`snapshot`]).
//! - Every hello carries the sender's [`BootNonce`]. A node killed and restarted on the same
//!   address is noticed by the new nonce in its first hello, and the outgoing connection to its
//!   previous run is closed at once instead of lingering until the idle timeout.
//!
//! Frames are `u32 LE length | postcard` ([`crate::transport::frame`]), at most
//! [`QuicLimits::frame_bytes_max`]; a frame that does not decode is counted and closes its stream.
//!
//! Two consequences worth knowing: a full inbound channel makes the receiving stream wait, so a
//! slow driver pushes back through QUIC flow control onto the sender's queue, where messages are
//! then dropped; and a node that is not (or no longer) a peer is still accepted when its
//! certificate proves its id, since membership is the driver's business: it drops what it does
//! not expect.

mod accept;
mod peer;
pub mod protocol;
pub mod snapshot;

pub use protocol::{BootNonce, Hello, SnapshotHeader, StreamKind};

use super::limits;
use super::metrics::{bump, Counters};
use super::{InboundSender, SnapshotSource, Transport, TransportError, TransportMetrics};
use crate::tls::{self, ClientAuth, TlsMaterial};
use crate::transport::frame;
use crate::wire::{ClusterId, PeerMessage};
use paxos_core::{NodeId, Slot};
use peer::Outbound;
use protocol::{codes, CONTROL_FRAME_BYTES_MAX, PROTOCOL_VERSION};
use snapshot::SnapshotStreamError;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// How long `shutdown` waits for connections to close gracefully.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

/// Where and as whom a replica's transport runs.
#[derive(Clone, Debug)]
pub struct QuicConfig {
    pub node: NodeId,
    pub cluster: ClusterId,
    /// Address to listen on; port 0 picks a free port (see [`QuicTransport::local_addr`]).
    pub listen: SocketAddr,
    /// The other replicas. An entry for `node` itself is ignored.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// The cluster CA and this node's certificate, which must be valid for `node`.
    pub tls: TlsMaterial,
    pub limits: QuicLimits,
}

/// Tunable limits; the defaults are the constants of [`crate::transport::limits`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuicLimits {
    pub frame_bytes_max: u32,
    pub send_queue_messages_max: usize,
    pub reconnect_backoff_min: Duration,
    pub reconnect_backoff_max: Duration,
    pub connect_timeout: Duration,
    pub hello_timeout: Duration,
    pub idle_timeout: Duration,
    pub keep_alive_interval: Duration,
    pub snapshot_stall_timeout: Duration,
}

impl Default for QuicLimits {
    fn default() -> QuicLimits {
        QuicLimits {
            frame_bytes_max: limits::FRAME_BYTES_MAX,
            send_queue_messages_max: limits::SEND_QUEUE_MESSAGES_MAX,
            reconnect_backoff_min: limits::RECONNECT_BACKOFF_MIN,
            reconnect_backoff_max: limits::RECONNECT_BACKOFF_MAX,
            connect_timeout: limits::CONNECT_TIMEOUT,
            hello_timeout: limits::HELLO_TIMEOUT,
            idle_timeout: limits::IDLE_TIMEOUT,
            keep_alive_interval: limits::KEEP_ALIVE_INTERVAL,
            snapshot_stall_timeout: limits::SNAPSHOT_STALL_TIMEOUT,
        }
    }
}

impl QuicLimits {
    /// Why these limits cannot work, if they cannot.
    pub fn invalid(&self) -> Option<&'static str> {
        if self.frame_bytes_max < CONTROL_FRAME_BYTES_MAX {
            return Some("frame_bytes_max below the control frame size");
        }
        if self.send_queue_messages_max == 0 {
            return Some("send_queue_messages_max is zero");
        }
        if self.reconnect_backoff_min.is_zero()
            || self.reconnect_backoff_min > self.reconnect_backoff_max
        {
            return Some("reconnect backoff must satisfy 0 < min <= max");
        }
        if self.keep_alive_interval >= self.idle_timeout {
            return Some("keep_alive_interval must be below idle_timeout");
        }
        let zero = [
            self.connect_timeout,
            self.hello_timeout,
            self.snapshot_stall_timeout,
        ];
        if zero.iter().any(Duration::is_zero) {
            return Some("timeouts must be positive");
        }
        None
    }
}

/// The real transport. Cloning shares it; it stops when [`QuicTransport::shutdown`] is called or
/// the last clone is dropped.
#[derive(Clone)]
pub struct QuicTransport {
    inner: Arc<Inner>,
}

struct Inner {
    node: NodeId,
    cluster: ClusterId,
    /// Drawn at start; sent in every hello.
    boot: BootNonce,
    local_addr: SocketAddr,
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    limits: QuicLimits,
    counters: Arc<Counters>,
    runtime: tokio::runtime::Handle,
    peers: Arc<Links>,
    accept_task: Mutex<Option<JoinHandle<()>>>,
    shut_down: AtomicBool,
}

/// The peers' tasks by node, shared with the accept side so that it can close a connection to a
/// peer that restarted.
#[derive(Default)]
struct Links(Mutex<BTreeMap<NodeId, PeerHandle>>);

/// The transport's side of one peer's task. Dropping it stops the task.
struct PeerHandle {
    addr: SocketAddr,
    queue: mpsc::Sender<PeerMessage>,
    connection: watch::Receiver<Option<Outbound>>,
    task: JoinHandle<()>,
}

impl Drop for PeerHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for QuicTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicTransport")
            .field("node", &self.inner.node)
            .field("cluster", &self.inner.cluster)
            .field("local_addr", &self.inner.local_addr)
            .field("peers", &self.peers())
            .finish_non_exhaustive()
    }
}

impl QuicTransport {
    /// Binds `config.listen`, starts accepting peers and connecting to `config.peers`. Must be
    /// called inside a tokio runtime. Fails with [`TransportError::AddressInUse`] when the port is
    /// taken, [`TransportError::Tls`] when the certificate does not name `config.node`.
    pub fn start(
        config: QuicConfig,
        inbound: InboundSender,
        snapshots: Arc<dyn SnapshotSource>,
    ) -> Result<QuicTransport, TransportError> {
        if let Some(why) = config.limits.invalid() {
            return Err(TransportError::InvalidConfig(why));
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            TransportError::Unavailable("QuicTransport::start outside a tokio runtime".into())
        })?;
        config.tls.check_node(config.cluster, config.node)?;
        let (server_config, client_config) = quic_configs(&config)?;
        let endpoint = bind(config.listen, server_config)?;
        let local_addr = endpoint
            .local_addr()
            .map_err(|source| TransportError::Bind {
                addr: config.listen,
                source,
            })?;
        let counters = Arc::new(Counters::default());
        let peers = Arc::new(Links::default());
        let shared = Arc::new(accept::Shared {
            node: config.node,
            cluster: config.cluster,
            limits: config.limits.clone(),
            counters: counters.clone(),
            inbound,
            snapshots,
            links: peers.clone(),
            boots: Mutex::default(),
        });
        let accept_task = runtime.spawn(accept::accept_loop(endpoint.clone(), shared));
        let transport = QuicTransport {
            inner: Arc::new(Inner {
                node: config.node,
                cluster: config.cluster,
                boot: BootNonce::generate(),
                local_addr,
                endpoint,
                client_config,
                limits: config.limits,
                counters,
                runtime,
                peers,
                accept_task: Mutex::new(Some(accept_task)),
                shut_down: AtomicBool::new(false),
            }),
        };
        for (node, addr) in config.peers {
            transport.add_peer(node, addr);
        }
        tracing::info!(node = config.node.0, %local_addr, "transport listening");
        Ok(transport)
    }

    pub fn node(&self) -> NodeId {
        self.inner.node
    }

    /// The address actually bound (the port chosen when `listen` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// Starts talking to `node` at `addr` (a membership change). Replaces the address of a known
    /// peer, reconnecting; adding this node itself, or after shutdown, does nothing.
    pub fn add_peer(&self, node: NodeId, addr: SocketAddr) {
        if node == self.inner.node || self.inner.shut_down.load(Ordering::Acquire) {
            return;
        }
        let mut peers = self.inner.lock_peers();
        if peers.get(&node).is_some_and(|peer| peer.addr == addr) {
            return;
        }
        peers.insert(node, self.inner.spawn_link(node, addr));
    }

    /// Stops talking to `node`: its queue is dropped and its connection closed. Connections it
    /// makes to this node are still accepted (its certificate is valid); the driver ignores them.
    pub fn remove_peer(&self, node: NodeId) {
        self.inner.lock_peers().remove(&node);
    }

    pub fn peers(&self) -> BTreeMap<NodeId, SocketAddr> {
        let peers = self.inner.lock_peers();
        peers
            .iter()
            .map(|(node, peer)| (*node, peer.addr))
            .collect()
    }

    /// True while an outgoing connection to `node` is established.
    pub fn is_connected(&self, node: NodeId) -> bool {
        let peers = self.inner.lock_peers();
        peers
            .get(&node)
            .is_some_and(|peer| peer.connection.borrow().is_some())
    }

    pub fn metrics(&self) -> TransportMetrics {
        self.inner.counters.snapshot()
    }

    /// Stops every task, closes all connections and the socket. Later sends are dropped, fetches
    /// fail with [`TransportError::ShutDown`]. Idempotent.
    pub async fn shutdown(&self) {
        if self.inner.shut_down.swap(true, Ordering::AcqRel) {
            return;
        }
        self.inner.stop();
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.inner.endpoint.wait_idle()).await;
        tracing::info!(node = self.inner.node.0, "transport shut down");
    }
}

impl Transport for QuicTransport {
    fn set_peer(&self, node: NodeId, addr: SocketAddr) {
        self.add_peer(node, addr);
    }

    fn close(&self) {
        if !self.inner.shut_down.swap(true, Ordering::AcqRel) {
            self.inner.stop();
        }
    }

    fn send(&self, to: NodeId, message: PeerMessage) {
        let peers = self.inner.lock_peers();
        let queued = peers
            .get(&to)
            .is_some_and(|peer| peer.queue.try_send(message).is_ok());
        if !queued {
            bump(&self.inner.counters.messages_dropped, 1);
        }
    }

    fn fetch_snapshot(
        &self,
        from: NodeId,
        min_slot: Slot,
        dest: PathBuf,
    ) -> Pin<Box<dyn Future<Output = Result<u64, TransportError>> + Send + 'static>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let result = inner.fetch_snapshot(from, min_slot, &dest).await;
            if result.is_err() {
                // A partial file is useless; it may not exist at all.
                let _ = tokio::fs::remove_file(&dest).await;
            }
            result
        })
    }
}

impl Inner {
    fn lock_peers(&self) -> MutexGuard<'_, BTreeMap<NodeId, PeerHandle>> {
        self.peers.lock()
    }

    fn spawn_link(&self, peer: NodeId, addr: SocketAddr) -> PeerHandle {
        let (queue, queue_rx) = mpsc::channel(self.limits.send_queue_messages_max);
        let (connection_tx, connection) = watch::channel(None);
        let link = peer::Link {
            local: self.node,
            cluster: self.cluster,
            boot: self.boot,
            peer,
            addr,
            endpoint: self.endpoint.clone(),
            client_config: self.client_config.clone(),
            limits: self.limits.clone(),
            counters: self.counters.clone(),
            queue: queue_rx,
            connection: connection_tx,
        };
        PeerHandle {
            addr,
            queue,
            connection,
            task: self.runtime.spawn(link.run()),
        }
    }

    fn stop(&self) {
        self.lock_peers().clear();
        let accept_task = self
            .accept_task
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(task) = accept_task {
            task.abort();
        }
        self.endpoint.close(codes::CLOSED.into(), b"shutdown");
    }

    async fn fetch_snapshot(
        &self,
        from: NodeId,
        min_slot: Slot,
        dest: &Path,
    ) -> Result<u64, TransportError> {
        if self.shut_down.load(Ordering::Acquire) {
            return Err(TransportError::ShutDown);
        }
        let connection = self.wait_for_connection(from).await?;
        let stall = self.limits.snapshot_stall_timeout;
        let stream_error = |error: &dyn std::fmt::Display| TransportError::Stream {
            peer: from,
            why: error.to_string(),
        };
        let (mut send, mut recv) = tokio::time::timeout(stall, connection.open_bi())
            .await
            .map_err(|_| TransportError::Timeout {
                peer: from,
                what: "opening a snapshot stream",
            })?
            .map_err(|error| stream_error(&error))?;
        let hello = Hello {
            version: PROTOCOL_VERSION,
            cluster: self.cluster,
            node: self.node,
            boot: self.boot,
            stream: StreamKind::Snapshot { min_slot },
        };
        let hello = frame::encode(&hello, CONTROL_FRAME_BYTES_MAX).expect("a hello is small");
        send.write_all(&hello)
            .await
            .map_err(|error| stream_error(&error))?;
        // Nothing more to say; the peer answers on the other half.
        let _ = send.finish();
        let bytes = snapshot::read_snapshot(&mut recv, dest, stall)
            .await
            .map_err(|error| snapshot_error(error, from, min_slot))?;
        bump(&self.counters.snapshots_fetched, 1);
        bump(&self.counters.snapshot_bytes_received, bytes);
        tracing::info!(peer = from.0, bytes, "snapshot fetched");
        Ok(bytes)
    }

    /// The peer's current outgoing connection, waiting up to the connect timeout for one.
    async fn wait_for_connection(&self, peer: NodeId) -> Result<quinn::Connection, TransportError> {
        let mut connection = self
            .lock_peers()
            .get(&peer)
            .map(|handle| handle.connection.clone())
            .ok_or(TransportError::UnknownPeer(peer))?;
        let waited = tokio::time::timeout(
            self.limits.connect_timeout,
            connection.wait_for(Option::is_some),
        )
        .await;
        match waited {
            Ok(Ok(current)) => {
                let current = current.as_ref().expect("waited for a connection");
                Ok(current.connection.clone())
            }
            Ok(Err(_)) => Err(TransportError::Unreachable {
                peer,
                why: "peer removed".to_string(),
            }),
            Err(_) => Err(TransportError::Unreachable {
                peer,
                why: "no connection within the connect timeout".to_string(),
            }),
        }
    }
}

impl Links {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<NodeId, PeerHandle>> {
        // The map stays consistent under a panic (single inserts and removals); keep using it.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Closes the outgoing connection to `peer` if it was established before `restarted_by`, an
    /// instant by which the peer is known to run anew: such a connection goes to the dead process.
    /// The peer's task sees the close and reconnects after its shortest backoff (it reset the
    /// backoff when that connection came up). True when a connection was closed.
    fn close_stale(&self, peer: NodeId, restarted_by: Instant) -> bool {
        let peers = self.lock();
        let Some(handle) = peers.get(&peer) else {
            return false;
        };
        let outbound = handle.connection.borrow();
        match outbound.as_ref() {
            Some(stale) if stale.established < restarted_by => {
                stale
                    .connection
                    .close(codes::CLOSED.into(), b"peer restarted");
                true
            }
            _ => false,
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop();
    }
}

fn snapshot_error(error: SnapshotStreamError, peer: NodeId, min_slot: Slot) -> TransportError {
    match error {
        SnapshotStreamError::NoSnapshot => TransportError::NoSnapshot { peer, min_slot },
        SnapshotStreamError::Header(error) => TransportError::SnapshotCorrupt {
            peer,
            offset: 0,
            why: error.to_string(),
        },
        SnapshotStreamError::BadChunk { offset, why } => {
            TransportError::SnapshotCorrupt { peer, offset, why }
        }
        error @ SnapshotStreamError::ChecksumMismatch { .. } => TransportError::SnapshotCorrupt {
            peer,
            offset: 0,
            why: error.to_string(),
        },
        SnapshotStreamError::Truncated { received, expected } => {
            TransportError::SnapshotTruncated {
                peer,
                received,
                expected,
            }
        }
        SnapshotStreamError::Stalled => TransportError::Timeout {
            peer,
            what: "snapshot transfer",
        },
        SnapshotStreamError::Stream(error) => TransportError::Stream {
            peer,
            why: error.to_string(),
        },
        SnapshotStreamError::File { path, source } => TransportError::Io { path, source },
    }
}

fn quic_configs(
    config: &QuicConfig,
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), TransportError> {
    let transport = Arc::new(transport_config(&config.limits)?);
    let mut server = tls::quic_server_config(&config.tls, tls::ALPN_PEER, ClientAuth::Required)?;
    server.transport_config(transport.clone());
    let identity = Some(&config.tls.identity);
    let mut client = tls::quic_client_config(&config.tls.ca, identity, tls::ALPN_PEER)?;
    client.transport_config(transport);
    Ok((server, client))
}

fn transport_config(limits: &QuicLimits) -> Result<quinn::TransportConfig, TransportError> {
    let idle = quinn::IdleTimeout::try_from(limits.idle_timeout)
        .map_err(|_| TransportError::InvalidConfig("idle_timeout too large"))?;
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(idle));
    transport.keep_alive_interval(Some(limits.keep_alive_interval));
    Ok(transport)
}

fn bind(
    addr: SocketAddr,
    server_config: quinn::ServerConfig,
) -> Result<quinn::Endpoint, TransportError> {
    let bind_error = |source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::AddrInUse {
            TransportError::AddressInUse { addr }
        } else {
            TransportError::Bind { addr, source }
        }
    };
    let socket = std::net::UdpSocket::bind(addr).map_err(bind_error)?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| TransportError::Unavailable("no async runtime for quinn".to_string()))?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server_config),
        socket,
        runtime,
    )
    .map_err(bind_error)
}
