//! QuicTransport over loopback with freshly generated certificates: delivery both ways, reconnect
//! after a restart (orderly, or killed and restarted on the same address), refusal of unauthenticated or lying peers, decode errors, snapshot transfer.

use paxos_core::{Incarnation, NodeId, Slot};
use replicated_log::tls::{self, ClientAuth, DevCa, Identity};
use replicated_log::transport::frame;
use replicated_log::transport::limits::FRAME_BYTES_MAX;
use replicated_log::transport::quic::protocol::{
    codes, BootNonce, Hello, StreamKind, CONTROL_FRAME_BYTES_MAX, PROTOCOL_VERSION,
};
use replicated_log::transport::quic::snapshot::write_snapshot;
use replicated_log::transport::{
    NoSnapshots, QuicConfig, QuicLimits, QuicTransport, SnapshotSource, Transport, TransportError,
};
use replicated_log::wire::{ClusterId, Inbound, PeerMessage};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

const CLUSTER: ClusterId = ClusterId(0x5eed_0001);
const PATIENCE: Duration = Duration::from_secs(10);
/// How long "nothing arrives" is watched for.
const QUIET: Duration = Duration::from_millis(700);

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Short timeouts so reconnects happen within a test's patience.
fn limits() -> QuicLimits {
    QuicLimits {
        connect_timeout: Duration::from_millis(500),
        reconnect_backoff_max: Duration::from_millis(200),
        hello_timeout: Duration::from_secs(2),
        snapshot_stall_timeout: Duration::from_secs(5),
        ..QuicLimits::default()
    }
}

#[derive(Debug)]
struct Node {
    transport: QuicTransport,
    inbound: mpsc::Receiver<Inbound>,
}

fn start(
    ca: &DevCa,
    node: u64,
    listen: SocketAddr,
    peers: BTreeMap<NodeId, SocketAddr>,
    snapshots: Arc<dyn SnapshotSource>,
) -> Result<Node, TransportError> {
    let issued = ca.issue_node(NodeId(node)).unwrap();
    let config = QuicConfig {
        node: NodeId(node),
        cluster: CLUSTER,
        listen,
        peers,
        tls: ca.material(&issued),
        limits: limits(),
    };
    let (tx, inbound) = mpsc::channel(1024);
    let transport = QuicTransport::start(config, tx, snapshots)?;
    Ok(Node { transport, inbound })
}

/// A message that carries a tag, to tell messages apart.
fn tagged(tag: u64) -> PeerMessage {
    PeerMessage::IdentityReply {
        cluster: CLUSTER,
        incarnation: Some(Incarnation(tag)),
        pristine: false,
    }
}

/// Sends `tag` from `from` to `to` until it arrives (messages sent before the connection is up
/// are dropped by design); returns who the receiver says sent it.
async fn deliver(from: &QuicTransport, to: &mut Node, tag: u64) -> NodeId {
    deliver_within(from, to, tag, PATIENCE).await
}

/// [`deliver`], failing when `tag` has not arrived within `patience`.
async fn deliver_within(
    from: &QuicTransport,
    to: &mut Node,
    tag: u64,
    patience: Duration,
) -> NodeId {
    let message = tagged(tag);
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        from.send(to.transport.node(), message.clone());
        let wait = tokio::time::timeout(Duration::from_millis(100), async {
            loop {
                let inbound = to.inbound.recv().await.expect("inbound open");
                if inbound.message == message {
                    return inbound.from;
                }
            }
        });
        if let Ok(sender) = wait.await {
            return sender;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "message {tag} did not arrive within {patience:?}"
        );
    }
}

async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn assert_quiet(inbound: &mut mpsc::Receiver<Inbound>) {
    if let Ok(Some(message)) = tokio::time::timeout(QUIET, inbound.recv()).await {
        panic!("unexpected delivery: {message:?}");
    }
}

/// A bare quinn client, for playing a misbehaving peer.
async fn raw_client(
    ca: &DevCa,
    identity: Option<&Identity>,
    server: SocketAddr,
    server_node: NodeId,
) -> (
    quinn::Endpoint,
    Result<quinn::Connection, quinn::ConnectionError>,
) {
    let endpoint = quinn::Endpoint::client(loopback()).unwrap();
    let config = tls::quic_client_config(&ca.certificate(), identity, tls::ALPN_PEER).unwrap();
    let name = tls::node_dns_name(CLUSTER, server_node);
    let connecting = endpoint.connect_with(config, server, &name).unwrap();
    let connection = tokio::time::timeout(PATIENCE, connecting).await.unwrap();
    (endpoint, connection)
}

fn hello(node: u64, stream: StreamKind) -> Vec<u8> {
    let hello = Hello {
        version: PROTOCOL_VERSION,
        cluster: CLUSTER,
        node: NodeId(node),
        boot: BootNonce(node),
        stream,
    };
    frame::encode(&hello, CONTROL_FRAME_BYTES_MAX).unwrap()
}

/// Opens a message stream on `connection` and writes `bytes`; errors are ignored (a refused peer
/// may see its writes fail).
async fn write_stream(connection: &quinn::Connection, bytes: &[u8]) -> Option<quinn::SendStream> {
    let mut stream = connection.open_uni().await.ok()?;
    stream.write_all(bytes).await.ok()?;
    Some(stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_exchange_messages_both_ways() {
    let ca = DevCa::generate(CLUSTER).unwrap();
    let mut nodes: Vec<Node> = (1..=3)
        .map(|id| start(&ca, id, loopback(), BTreeMap::new(), Arc::new(NoSnapshots)).unwrap())
        .collect();
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.transport.local_addr()).collect();
    for (i, node) in nodes.iter().enumerate() {
        for (j, addr) in addrs.iter().enumerate() {
            // Adding itself is ignored.
            node.transport.add_peer(NodeId(j as u64 + 1), *addr);
        }
        assert_eq!(node.transport.peers().len(), 2, "node {}", i + 1);
    }

    for from in 0..3 {
        for to in 0..3 {
            if from == to {
                continue;
            }
            let sender = nodes[from].transport.clone();
            let tag = (from * 10 + to) as u64;
            let seen = deliver(&sender, &mut nodes[to], tag).await;
            assert_eq!(seen, NodeId(from as u64 + 1));
        }
    }

    // Once connected, a burst arrives complete and in order.
    let sender = nodes[0].transport.clone();
    for tag in 1000..1200 {
        sender.send(NodeId(2), tagged(tag));
    }
    for tag in 1000..1200 {
        let inbound = tokio::time::timeout(PATIENCE, nodes[1].inbound.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((inbound.from, inbound.message), (NodeId(1), tagged(tag)));
    }
    let metrics = nodes[0].transport.metrics();
    assert!(
        metrics.messages_sent >= 202 && metrics.bytes_sent > 0,
        "{metrics:?}"
    );
    assert_eq!(metrics.decode_errors, 0);
    assert!(nodes[1].transport.metrics().messages_received >= 201);

    // Unknown peers and this node itself are counted drops, not errors.
    let dropped = nodes[0].transport.metrics().messages_dropped;
    sender.send(NodeId(99), tagged(1));
    sender.send(NodeId(1), tagged(1));
    assert_eq!(nodes[0].transport.metrics().messages_dropped, dropped + 2);

    // A second transport on a taken port is a clear error.
    let taken = start(&ca, 4, addrs[0], BTreeMap::new(), Arc::new(NoSnapshots)).unwrap_err();
    assert!(
        matches!(taken, TransportError::AddressInUse { addr } if addr == addrs[0]),
        "{taken}"
    );
    for node in &nodes {
        node.transport.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_peer_is_reconnected() {
    let ca = DevCa::generate(CLUSTER).unwrap();
    let mut one = start(&ca, 1, loopback(), BTreeMap::new(), Arc::new(NoSnapshots)).unwrap();
    let addr1 = one.transport.local_addr();
    let peers_of_two = BTreeMap::from([(NodeId(1), addr1)]);
    let mut two = start(
        &ca,
        2,
        loopback(),
        peers_of_two.clone(),
        Arc::new(NoSnapshots),
    )
    .unwrap();
    let addr2 = two.transport.local_addr();
    one.transport.add_peer(NodeId(2), addr2);
    assert_eq!(
        deliver(&one.transport.clone(), &mut two, 1).await,
        NodeId(1)
    );
    assert_eq!(
        deliver(&two.transport.clone(), &mut one, 2).await,
        NodeId(2)
    );

    two.transport.shutdown().await;
    drop(two);
    eventually("node 1 notices node 2 is gone", || {
        !one.transport.is_connected(NodeId(2))
    })
    .await;

    // The same address again; the socket may take a moment to be released.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut two = loop {
        match start(&ca, 2, addr2, peers_of_two.clone(), Arc::new(NoSnapshots)) {
            Ok(node) => break node,
            Err(TransportError::AddressInUse { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("restart failed: {error}"),
        }
    };
    assert_eq!(
        deliver(&one.transport.clone(), &mut two, 3).await,
        NodeId(1)
    );
    assert_eq!(
        deliver(&two.transport.clone(), &mut one, 4).await,
        NodeId(2)
    );
    assert!(one.transport.metrics().reconnects >= 1);

    // After removal nothing more is sent to node 2.
    one.transport.remove_peer(NodeId(2));
    one.transport.send(NodeId(2), tagged(5));
    assert_quiet(&mut two.inbound).await;
    one.transport.shutdown().await;
    two.transport.shutdown().await;
}

/// A node whose transport runs on a runtime of its own, so that it can die like a process killed
/// with SIGKILL, without a packet (no CONNECTION_CLOSE) reaching its peers: see [`Killable::kill`].
struct Killable {
    node: Node,
    /// `None` once killed.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Killable {
    fn start(ca: &DevCa, node: u64, peers: BTreeMap<NodeId, SocketAddr>) -> Killable {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let node = {
            let _entered = runtime.enter();
            start(ca, node, loopback(), peers, Arc::new(NoSnapshots)).unwrap()
        };
        Killable {
            node,
            runtime: Some(runtime),
        }
    }

    /// Stops the runtime and waits until its tasks (quinn's connection drivers among them) are
    /// dropped; only then is the transport handle dropped, whose close has no driver left to send
    /// it, and the socket released. (Dropping the handle while the runtime winds down in the
    /// background lets the close out, and the peer learns of the death at once.)
    async fn kill(mut self) {
        let runtime = self.runtime.take().expect("killed once");
        tokio::task::spawn_blocking(move || runtime.shutdown_timeout(PATIENCE))
            .await
            .unwrap();
    }
}

impl Drop for Killable {
    fn drop(&mut self) {
        // Only when a test fails before `kill`: a runtime may not be dropped in async code.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Starts node `id` on `addr`, waiting for the socket of its previous run to be released.
async fn restart(
    ca: &DevCa,
    id: u64,
    addr: SocketAddr,
    peers: &BTreeMap<NodeId, SocketAddr>,
) -> Node {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match start(ca, id, addr, peers.clone(), Arc::new(NoSnapshots)) {
            Ok(node) => return node,
            Err(TransportError::AddressInUse { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) => panic!("restart failed: {error}"),
        }
    }
}

/// A peer killed without a word and restarted on its address is reached again at once, not after
/// the idle timeout: its new keys make its stateless resets unrecognizable, so QUIC alone would
/// keep node 1's connection to the dead process up until then. The restarted node's hello
/// carries a new boot nonce, on which node 1 drops that connection and reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_killed_and_restarted_on_its_address_is_reached_at_once() {
    const PROMPTLY: Duration = Duration::from_millis(1500);
    assert!(PROMPTLY < limits().idle_timeout);
    let ca = DevCa::generate(CLUSTER).unwrap();
    let mut one = start(&ca, 1, loopback(), BTreeMap::new(), Arc::new(NoSnapshots)).unwrap();
    let peers_of_two = BTreeMap::from([(NodeId(1), one.transport.local_addr())]);
    let mut two = Killable::start(&ca, 2, peers_of_two.clone());
    let addr2 = two.node.transport.local_addr();
    one.transport.add_peer(NodeId(2), addr2);
    assert_eq!(deliver(&one.transport, &mut two.node, 1).await, NodeId(1));
    assert_eq!(deliver(&two.node.transport, &mut one, 2).await, NodeId(2));

    two.kill().await;

    let restarted = tokio::time::Instant::now();
    let mut two = restart(&ca, 2, addr2, &peers_of_two).await;
    assert_eq!(
        deliver_within(&one.transport, &mut two, 3, PROMPTLY).await,
        NodeId(1)
    );
    assert_eq!(deliver(&two.transport, &mut one, 4).await, NodeId(2));
    eprintln!("reached again {:?} after the kill", restarted.elapsed());
    assert_eq!(one.transport.metrics().reconnects, 1);

    // More hellos of the same runs (snapshot requests both ways) reconnect nothing.
    let dir = tempfile::tempdir().unwrap();
    for (from, to) in [(&one.transport, NodeId(2)), (&two.transport, NodeId(1))] {
        let error = from
            .fetch_snapshot(to, Slot(1), dir.path().join("none"))
            .await
            .unwrap_err();
        assert!(
            matches!(error, TransportError::NoSnapshot { .. }),
            "{error}"
        );
    }
    assert_eq!(deliver(&one.transport, &mut two, 5).await, NodeId(1));
    assert_eq!(deliver(&two.transport, &mut one, 6).await, NodeId(2));
    tokio::time::sleep(QUIET).await;
    assert_eq!(one.transport.metrics().reconnects, 1);
    assert_eq!(two.transport.metrics().reconnects, 0);
    assert!(one.transport.is_connected(NodeId(2)) && two.transport.is_connected(NodeId(1)));
    one.transport.shutdown().await;
    two.transport.shutdown().await;
}

/// How node 1 turns a bad peer away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    /// The TLS handshake fails: a crypto (TLS alert) transport error.
    Handshake,
    /// The handshake succeeds but the hello is refused, with this application code.
    Hello(u32),
}

fn refusal_of(error: &quinn::ConnectionError) -> Option<Refusal> {
    match error {
        quinn::ConnectionError::ConnectionClosed(close) => {
            let code = u64::from(close.error_code);
            // QUIC carries TLS alerts as transport error codes 0x100..=0x1ff.
            (0x100..0x200).contains(&code).then_some(Refusal::Handshake)
        }
        quinn::ConnectionError::ApplicationClosed(close) => {
            let code = u32::try_from(u64::from(close.error_code)).ok()?;
            Some(Refusal::Hello(code))
        }
        _ => None,
    }
}

/// Runs a raw client against node 1 and checks that nothing it sends is delivered, that it is
/// refused the `expected` way, and that node 1 counts the refusal.
async fn assert_refused(
    ca: &DevCa,
    identity: Option<&Identity>,
    claimed_node: u64,
    expected: Refusal,
) -> Node {
    let mut one = start(ca, 1, loopback(), BTreeMap::new(), Arc::new(NoSnapshots)).unwrap();
    let addr = one.transport.local_addr();
    let (_endpoint, connection) = raw_client(ca, identity, addr, NodeId(1)).await;
    let error = match connection {
        Err(error) => error,
        Ok(connection) => {
            // TLS 1.3 lets a client finish before the server has judged its certificate.
            let mut bytes = hello(claimed_node, StreamKind::Messages);
            bytes.extend(frame::encode(&tagged(7), FRAME_BYTES_MAX).unwrap());
            let _stream = write_stream(&connection, &bytes).await;
            tokio::time::timeout(PATIENCE, connection.closed())
                .await
                .expect("node 1 kept the connection open")
        }
    };
    assert_eq!(refusal_of(&error), Some(expected), "{error}");
    assert_quiet(&mut one.inbound).await;
    let transport = one.transport.clone();
    eventually("a refusal is counted", || {
        transport.metrics().connections_refused >= 1
    })
    .await;
    one
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_from_another_ca_is_refused() {
    let ca = DevCa::generate(CLUSTER).unwrap();
    let other = DevCa::generate(CLUSTER).unwrap();
    // Trusts the right CA (so the client accepts node 1) but presents a foreign certificate.
    let foreign = other.issue_node(NodeId(2)).unwrap();
    let one = assert_refused(&ca, Some(&foreign.identity), 2, Refusal::Handshake).await;
    one.transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_client_certificate_is_refused() {
    let ca = DevCa::generate(CLUSTER).unwrap();
    let one = assert_refused(&ca, None, 2, Refusal::Handshake).await;
    one.transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_2_certificate_cannot_speak_as_node_3() {
    let ca = DevCa::generate(CLUSTER).unwrap();
    let two = ca.issue_node(NodeId(2)).unwrap();
    let refused = Refusal::Hello(codes::IDENTITY_REFUSED);
    let one = assert_refused(&ca, Some(&two.identity), 3, refused).await;

    // A client certificate of the cluster cannot speak as a node either.
    let client = ca.issue_client("alice").unwrap();
    let (_endpoint, connection) = raw_client(
        &ca,
        Some(&client.identity),
        one.transport.local_addr(),
        NodeId(1),
    )
    .await;
    let connection = connection.unwrap();
    let _stream = write_stream(&connection, &hello(2, StreamKind::Messages)).await;
    let closed = tokio::time::timeout(PATIENCE, connection.closed()).await;
    assert_eq!(refusal_of(&closed.unwrap()), Some(refused));
    one.transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_frames_are_counted_decode_errors() {
    let ca = DevCa::generate(CLUSTER).unwrap();
    let mut one = start(&ca, 1, loopback(), BTreeMap::new(), Arc::new(NoSnapshots)).unwrap();
    let two = ca.issue_node(NodeId(2)).unwrap();
    let (_endpoint, connection) = raw_client(
        &ca,
        Some(&two.identity),
        one.transport.local_addr(),
        NodeId(1),
    )
    .await;
    let connection = connection.unwrap();
    let transport = one.transport.clone();

    // Garbage: a well-sized frame whose payload is not a PeerMessage.
    let mut garbage = hello(2, StreamKind::Messages);
    garbage.extend(8u32.to_le_bytes());
    garbage.extend([0xff; 8]);
    let _garbage = write_stream(&connection, &garbage).await.unwrap();
    eventually("garbage counted", || transport.metrics().decode_errors == 1).await;

    // Oversized: a length prefix above the limit (the payload never needs to be sent).
    let mut oversized = hello(2, StreamKind::Messages);
    oversized.extend((FRAME_BYTES_MAX + 1).to_le_bytes());
    oversized.extend([0u8; 64]);
    let _oversized = write_stream(&connection, &oversized).await.unwrap();
    eventually("oversize counted", || {
        transport.metrics().decode_errors == 2
    })
    .await;
    assert_quiet(&mut one.inbound).await;

    // The connection (and the transport) still work for well-formed streams.
    let mut good = hello(2, StreamKind::Messages);
    good.extend(frame::encode(&tagged(9), FRAME_BYTES_MAX).unwrap());
    let _good = write_stream(&connection, &good).await.unwrap();
    let inbound = tokio::time::timeout(PATIENCE, one.inbound.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((inbound.from, inbound.message), (NodeId(2), tagged(9)));
    assert_eq!(one.transport.metrics().decode_errors, 2);
    one.transport.shutdown().await;
}

/// Serves one file for every `min_slot` up to `slot`.
struct FileSource {
    path: PathBuf,
    slot: Slot,
}

impl SnapshotSource for FileSource {
    fn snapshot_file(&self, min_slot: Slot) -> Option<PathBuf> {
        (min_slot <= self.slot).then(|| self.path.clone())
    }
}

fn content(bytes: usize) -> Vec<u8> {
    (0..bytes)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761) as u8 ^ (i >> 16) as u8)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_several_mib_arrives_intact() {
    let dir = tempfile::tempdir().unwrap();
    let source_path = dir.path().join("snapshot-source");
    let expected = content(5 * 1024 * 1024 + 123);
    std::fs::write(&source_path, &expected).unwrap();
    let ca = DevCa::generate(CLUSTER).unwrap();
    let source = Arc::new(FileSource {
        path: source_path,
        slot: Slot(100),
    });
    let two = start(&ca, 2, loopback(), BTreeMap::new(), source).unwrap();
    let peers = BTreeMap::from([(NodeId(2), two.transport.local_addr())]);
    let one = start(&ca, 1, loopback(), peers, Arc::new(NoSnapshots)).unwrap();

    let dest = dir.path().join("fetched");
    let bytes = one
        .transport
        .fetch_snapshot(NodeId(2), Slot(50), dest.clone())
        .await
        .unwrap();
    assert_eq!(bytes, expected.len() as u64);
    assert!(std::fs::read(&dest).unwrap() == expected, "content differs");
    assert_eq!(one.transport.metrics().snapshots_fetched, 1);
    assert_eq!(two.transport.metrics().snapshot_bytes_sent, bytes);

    let missing = dir.path().join("missing");
    let error = one
        .transport
        .fetch_snapshot(NodeId(2), Slot(101), missing.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            TransportError::NoSnapshot {
                peer: NodeId(2),
                min_slot: Slot(101)
            }
        ),
        "{error}"
    );
    assert!(!missing.exists());
    let unknown = one
        .transport
        .fetch_snapshot(NodeId(7), Slot(1), missing)
        .await
        .unwrap_err();
    assert!(matches!(unknown, TransportError::UnknownPeer(NodeId(7))));
    one.transport.shutdown().await;
    two.transport.shutdown().await;
}

/// A fake node 2 (valid certificate) that answers every snapshot request with a stream in which
/// one payload byte of the second chunk is flipped.
async fn corrupting_peer(ca: &DevCa) -> (quinn::Endpoint, SocketAddr) {
    let material = ca.material(&ca.issue_node(NodeId(2)).unwrap());
    let config = tls::quic_server_config(&material, tls::ALPN_PEER, ClientAuth::Required).unwrap();
    let endpoint = quinn::Endpoint::server(config, loopback()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let server = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            let Ok(connection) = incoming.await else {
                continue;
            };
            tokio::spawn(async move {
                while let Ok((mut send, mut recv)) = connection.accept_bi().await {
                    let request = frame::read::<Hello, _>(&mut recv, CONTROL_FRAME_BYTES_MAX).await;
                    assert!(matches!(request, Ok(Some(_))), "{request:?}");
                    let file = content(200 * 1024);
                    let mut stream = Vec::new();
                    let path = std::path::Path::new("fake");
                    let mut reader: &[u8] = &file;
                    write_snapshot(Some((&mut reader, file.len() as u64, path)), &mut stream)
                        .await
                        .unwrap();
                    let header = stream.len() - file.len() - 4 - 8 * 4;
                    let second_chunk_payload = header + 8 + 64 * 1024 + 8;
                    stream[second_chunk_payload + 10] ^= 0x01;
                    let _ = send.write_all(&stream).await;
                    let _ = send.finish();
                }
            });
        }
    });
    (endpoint, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_snapshot_chunk_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::generate(CLUSTER).unwrap();
    let (_fake, fake_addr) = corrupting_peer(&ca).await;
    let peers = BTreeMap::from([(NodeId(2), fake_addr)]);
    let one = start(&ca, 1, loopback(), peers, Arc::new(NoSnapshots)).unwrap();
    let dest = dir.path().join("fetched");
    let error = one
        .transport
        .fetch_snapshot(NodeId(2), Slot(1), dest.clone())
        .await
        .unwrap_err();
    match error {
        TransportError::SnapshotCorrupt { peer, offset, .. } => {
            assert_eq!((peer, offset), (NodeId(2), 64 * 1024));
        }
        other => panic!("expected SnapshotCorrupt, got {other}"),
    }
    assert!(!dest.exists(), "a corrupt download is removed");
    assert_eq!(one.transport.metrics().snapshots_fetched, 0);
    one.transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_that_do_not_name_the_node_do_not_start() {
    let ca = DevCa::generate(CLUSTER).unwrap();
    let two = ca.issue_node(NodeId(2)).unwrap();
    let config = QuicConfig {
        node: NodeId(3),
        cluster: CLUSTER,
        listen: loopback(),
        peers: BTreeMap::new(),
        tls: ca.material(&two),
        limits: limits(),
    };
    let (tx, _rx) = mpsc::channel(1);
    let error = QuicTransport::start(config, tx, Arc::new(NoSnapshots)).unwrap_err();
    assert!(matches!(error, TransportError::Tls(_)), "{error}");
}
