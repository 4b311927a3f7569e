//! The server: one replica of the database behind the client protocol.
//!
//! A [`Server`] runs two QUIC endpoints. The replicated log's own (opened with
//! `Log::open_quic`) carries replica traffic; the client endpoint speaks the client protocol of
//! `chubby_proto::protocol` (ALPN `chubby/1`), with TLS 1.3 and, unless the operator sets
//! [`ServerConfig::allow_clients_without_certificate`], a client certificate of the cluster.
//!
//! - **Writes** (open, KeepAlive, close, MultiOp) become a [`Command`](crate::Command) stamped with this replica's
//!   wall clock where the command carries time, submitted to the log; the reply comes from the
//!   committed output. A replica that is not master answers `NotMaster` naming the master and its
//!   client address. Retried MultiOps keep their request number and the database applies each at
//!   most once.
//! - **Reads** are linearizable by default, through `Log::read` (the master under its lease, no log
//!   round), or stale on request from any replica through `Log::read_stale`.
//! - **Events** from every applied command go to this replica's [`EventHub`]; a client subscribes
//!   to its session's stream on any replica and resumes after the last event it saw.
//! - **Master duties** run in a background task on every replica and act while it is master:
//!   propose `MasterChanged` first in each tenure, then a `Tick` whenever the database's next
//!   deadline (a lease end or a lock-delay end) is due (see `docs/chubby-db.md`, "The server").

mod admin;
mod clock;
mod duties;
mod events;
mod handler;
mod machine;
mod wire;

pub use events::EventHub;
pub use machine::DatabaseMachine;

use crate::protocol::{Request, Response, ServerError, ALPN};
use crate::state::Config;
use crate::types::{EventId, SessionId};
use paxos_core::NodeId;
use replicated_log::tls::{self, ClientAuth, PeerIdentity, TlsError, TlsMaterial};
use replicated_log::{ClusterId, Log, LogConfig, OpenError};
use rustls_pki_types::CertificateDer;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use wire::{read_request, write_frame, WireError};

/// How often the master-duty task looks at the log's status and the database's next deadline.
pub const DUTY_INTERVAL_DEFAULT: Duration = Duration::from_millis(20);
/// Most streams (requests in flight, plus the event stream) one client connection may open at
/// once. A client keeps at most `SESSION_REPLIES_MAX` MultiOps outstanding; reads add to it.
pub const CLIENT_STREAMS_CONCURRENT_MAX: u32 = 256;

/// QUIC application close and stream reset codes of the client endpoint.
const CLOSE_SHUTTING_DOWN: u32 = 1;
const CLOSE_UNKNOWN_IDENTITY: u32 = 2;
const RESET_BAD_REQUEST: u32 = 3;

/// Everything one replica's server needs.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The replica's log: cluster, node, data directory, peers' replica addresses, timing.
    pub log: LogConfig,
    /// This node's certificate and the cluster CA; used on both endpoints.
    pub tls: TlsMaterial,
    /// Where peers reach this replica's log.
    pub peer_listen: SocketAddr,
    /// Where clients reach this replica.
    pub client_listen: SocketAddr,
    /// Every replica's client address, so a follower's redirect can say where the master is.
    pub client_addresses: BTreeMap<NodeId, SocketAddr>,
    /// The database's limits and defaults; the same on every replica (it is replicated state).
    pub database: Config,
    /// Accept clients that present no certificate (a certificate that is presented must still
    /// verify). Off by default: the operator opts in explicitly.
    pub allow_clients_without_certificate: bool,
    pub duty_interval: Duration,
    /// Deliberately broken database behaviours, planted in this replica's [`Database`](crate::Database)
    /// (teeth tests of real-process fault harnesses only; all off by default).
    #[cfg(feature = "planted-bugs")]
    pub planted_bugs: crate::PlantedBugs,
}

impl ServerConfig {
    pub fn new(
        log: LogConfig,
        tls: TlsMaterial,
        peer_listen: SocketAddr,
        client_listen: SocketAddr,
        client_addresses: BTreeMap<NodeId, SocketAddr>,
    ) -> ServerConfig {
        ServerConfig {
            log,
            tls,
            peer_listen,
            client_listen,
            client_addresses,
            database: Config::default(),
            allow_clients_without_certificate: false,
            duty_interval: DUTY_INTERVAL_DEFAULT,
            #[cfg(feature = "planted-bugs")]
            planted_bugs: crate::PlantedBugs::default(),
        }
    }
}

/// Why a server did not start.
#[derive(Debug)]
pub enum StartError {
    /// A setting cannot work; the text says which.
    Config(String),
    Tls(TlsError),
    Log(OpenError),
    /// The client endpoint could not bind its address.
    Bind(std::io::Error),
}

/// One running replica: its log and its client endpoint.
pub struct Server {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

/// What the connection handlers and the duty task share.
pub(crate) struct Shared {
    log: Log<DatabaseMachine>,
    hub: Arc<EventHub>,
    endpoint: quinn::Endpoint,
    cluster: ClusterId,
    client_addresses: BTreeMap<NodeId, SocketAddr>,
    lease_ms_default: u64,
    /// The clock commands are stamped with: the log's, skewed alike by `LogConfig::clock_rate_ppm`.
    clock: clock::ReplicaClock,
    tenure: Mutex<Tenure>,
    /// The planted bugs the server itself honours (teeth tests only).
    #[cfg(feature = "planted-bugs")]
    planted: crate::PlantedBugs,
    #[cfg(feature = "fault-injection")]
    replies_to_drop: std::sync::atomic::AtomicUsize,
}

/// The master-duty task's last view of this replica's tenure.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tenure {
    /// The epoch this replica is master of, as the log names it.
    master_of: Option<String>,
    /// The last epoch whose `MasterChanged` this replica committed.
    announced: Option<String>,
}

impl Tenure {
    /// Master of an epoch not announced yet: client writes wait so that `MasterChanged` comes
    /// first in the tenure.
    fn starting(&self) -> bool {
        self.master_of.is_some() && self.master_of != self.announced
    }
}

impl Server {
    /// Opens the replica's log (elections and catch-up go on in the background), binds the client
    /// endpoint and starts serving.
    pub async fn start(config: ServerConfig) -> Result<Server, StartError> {
        if let Some(why) = config.database.invalid() {
            return Err(StartError::Config(format!("database: {why}")));
        }
        config
            .tls
            .check_node(config.log.cluster, config.log.node)
            .map_err(StartError::Tls)?;
        let client_auth = if config.allow_clients_without_certificate {
            ClientAuth::Optional
        } else {
            ClientAuth::Required
        };
        let mut client_tls =
            tls::quic_server_config(&config.tls, ALPN, client_auth).map_err(StartError::Tls)?;
        let mut transport = quinn::TransportConfig::default();
        transport.max_concurrent_bidi_streams(CLIENT_STREAMS_CONCURRENT_MAX.into());
        transport.max_concurrent_uni_streams(0u32.into());
        client_tls.transport_config(Arc::new(transport));

        let hub = Arc::new(EventHub::new());
        let machine = DatabaseMachine::new(config.database.clone(), hub.clone());
        #[cfg(feature = "planted-bugs")]
        let machine = machine.with_planted_bugs(config.planted_bugs);
        let clock = clock::ReplicaClock::new(config.log.clock_rate_ppm);
        let log = Log::open_quic(
            config.log.clone(),
            machine,
            config.tls.clone(),
            config.peer_listen,
        )
        .await
        .map_err(StartError::Log)?;
        let endpoint = match quinn::Endpoint::server(client_tls, config.client_listen) {
            Ok(endpoint) => endpoint,
            Err(error) => {
                log.shutdown().await;
                return Err(StartError::Bind(error));
            }
        };
        let shared = Arc::new(Shared {
            #[cfg(feature = "planted-bugs")]
            planted: config.planted_bugs,
            log,
            hub,
            endpoint: endpoint.clone(),
            cluster: config.log.cluster,
            client_addresses: config.client_addresses,
            lease_ms_default: config.database.lease_ms_default,
            clock,
            tenure: Mutex::new(Tenure::default()),
            #[cfg(feature = "fault-injection")]
            replies_to_drop: Default::default(),
        });
        let tasks = vec![
            tokio::spawn(accept_loop(shared.clone(), endpoint)),
            tokio::spawn(duties::run(shared.clone(), config.duty_interval)),
        ];
        tracing::info!(node = %config.log.node, client_listen = %config.client_listen, "chubby server started");
        Ok(Server { shared, tasks })
    }

    /// The replica's log (status, metrics, membership, stale reads of the database).
    pub fn log(&self) -> &Log<DatabaseMachine> {
        &self.shared.log
    }

    /// Where clients reach this replica.
    pub fn client_address(&self) -> SocketAddr {
        self.shared
            .endpoint
            .local_addr()
            .expect("a bound endpoint has an address")
    }

    /// Stops serving clients (connections close, event streams end) and shuts the log down.
    pub async fn shutdown(self) {
        self.shared.stop_serving();
        self.shared.log.shutdown().await;
        for task in &self.tasks {
            task.abort();
        }
    }

    /// Master of a tenure it has not announced yet (client writes answer `TenureStarting`).
    pub fn tenure_starting(&self) -> bool {
        self.shared.tenure_starting()
    }

    /// Fault injection: the next `count` MultiOps this replica commits get no reply (their streams
    /// stay silent until the connection closes), as if the reply were lost with the connection
    /// right after the commit. The client retries with the same request number, elsewhere once
    /// this replica is gone, and must get the remembered reply.
    #[cfg(feature = "fault-injection")]
    pub fn drop_multi_op_replies(&self, count: usize) {
        self.shared
            .replies_to_drop
            .store(count, std::sync::atomic::Ordering::SeqCst);
    }
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("client_address", &self.shared.endpoint.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Closes the client endpoint and every event stream: the log has stopped or the server is
    /// shutting down. Clients move to another replica.
    fn stop_serving(&self) {
        self.hub.close();
        self.endpoint
            .close(CLOSE_SHUTTING_DOWN.into(), b"replica shutting down");
    }

    /// Master of a tenure not announced yet (asked on every write: looks without cloning).
    fn tenure_starting(&self) -> bool {
        self.tenure.lock().expect("tenure lock").starting()
    }

    fn set_tenure(&self, tenure: Tenure) {
        *self.tenure.lock().expect("tenure lock") = tenure;
    }

    /// Whether this MultiOp's reply is to be dropped (fault injection).
    fn drop_reply(&self) -> bool {
        #[cfg(feature = "fault-injection")]
        {
            use std::sync::atomic::Ordering;
            self.replies_to_drop
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        }
        #[cfg(not(feature = "fault-injection"))]
        {
            false
        }
    }
}

async fn accept_loop(shared: Arc<Shared>, endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let shared = shared.clone();
        tokio::spawn(async move {
            match incoming.await {
                Ok(connection) => serve_connection(shared, connection).await,
                Err(error) => tracing::debug!(%error, "client handshake failed"),
            }
        });
    }
}

/// Serves one client connection: one task per stream.
async fn serve_connection(shared: Arc<Shared>, connection: quinn::Connection) {
    let peer = match client_identity(&connection, shared.cluster) {
        Ok(peer) => peer,
        Err(why) => {
            tracing::warn!(remote = %connection.remote_address(), %why, "client refused");
            connection.close(CLOSE_UNKNOWN_IDENTITY.into(), why.as_bytes());
            return;
        }
    };
    tracing::debug!(remote = %connection.remote_address(), %peer, "client connected");
    let peer: Arc<str> = peer.into();
    while let Ok((send, recv)) = connection.accept_bi().await {
        tokio::spawn(serve_stream(
            shared.clone(),
            connection.clone(),
            peer.clone(),
            send,
            recv,
        ));
    }
}

/// Who the client's certificate says it is (`client-<name>`, or a replica's `node-<id>`), or
/// `anonymous` when the server allows clients without a certificate and it presented none.
fn client_identity(connection: &quinn::Connection, cluster: ClusterId) -> Result<String, String> {
    let Some(identity) = connection.peer_identity() else {
        return Ok("anonymous".to_string());
    };
    let chain = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| "unexpected kind of peer identity".to_string())?;
    let Some(certificate) = chain.first() else {
        return Ok("anonymous".to_string());
    };
    match tls::identify(certificate, cluster) {
        Ok(PeerIdentity::Client(name)) => Ok(format!("client-{name}")),
        Ok(PeerIdentity::Node(node)) => Ok(format!("node-{}", node.0)),
        Err(error) => Err(error.to_string()),
    }
}

async fn serve_stream(
    shared: Arc<Shared>,
    connection: quinn::Connection,
    peer: Arc<str>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let request: Request = match read_request(&mut recv).await {
        Ok(request) => request,
        Err(error) => {
            tracing::debug!(%error, "bad request frame");
            let _ = send.reset(RESET_BAD_REQUEST.into());
            return;
        }
    };
    if let Request::Subscribe { session, after } = request {
        serve_subscription(&shared, &connection, send, session, after).await;
        return;
    }
    if let Request::Admin(request) = request {
        admin::serve(&shared, &peer, request, send).await;
        return;
    }
    match shared.handle(request).await {
        Some(response) => respond(&mut send, &response).await,
        // Fault injection: the reply is lost. The stream stays silent until the connection
        // closes, so the client's retry cannot reach this replica while it still serves.
        None => {
            connection.closed().await;
        }
    }
}

/// Writes the one response of a stream and finishes it. A response too large for a frame
/// becomes `ReplyTooLarge`.
async fn respond(send: &mut quinn::SendStream, response: &Response) {
    let written = match write_frame(send, response).await {
        Err(WireError::Frame(crate::protocol::FrameError::TooLarge { bytes, max })) => {
            let error = Response::Error(ServerError::ReplyTooLarge { bytes, max });
            write_frame(send, &error).await
        }
        other => other,
    };
    match written {
        Ok(()) => {
            let _ = send.finish();
        }
        Err(error) => tracing::debug!(%error, "response not delivered"),
    }
}

/// Sends `Subscribed`, the replay, then live events until the session ends, the subscriber is
/// replaced or too slow, the client goes away, or the server stops.
async fn serve_subscription(
    shared: &Shared,
    connection: &quinn::Connection,
    mut send: quinn::SendStream,
    session: SessionId,
    after: Option<EventId>,
) {
    if let Err(error) = shared.check_subscription(session).await {
        respond(&mut send, &Response::Error(error)).await;
        return;
    }
    let Some(mut subscription) = shared.hub.subscribe(session, after) else {
        respond(&mut send, &Response::Error(ServerError::ShuttingDown)).await;
        return;
    };
    let subscribed = Response::Subscribed {
        missed: subscription.missed,
    };
    let mut delivered = write_frame(&mut send, &subscribed).await;
    for event in std::mem::take(&mut subscription.replay) {
        if delivered.is_err() {
            break;
        }
        delivered = write_frame(&mut send, &event).await;
    }
    while delivered.is_ok() {
        let event = tokio::select! {
            event = subscription.live.recv() => event,
            _ = connection.closed() => None,
        };
        let Some(event) = event else { break };
        delivered = write_frame(&mut send, &event).await;
    }
    shared.hub.unsubscribe(session, subscription.id);
    let _ = send.finish();
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Config(why) => write!(f, "bad configuration: {why}"),
            StartError::Tls(error) => write!(f, "tls: {error}"),
            StartError::Log(error) => write!(f, "log: {error}"),
            StartError::Bind(error) => write!(f, "client endpoint: {error}"),
        }
    }
}

impl std::error::Error for StartError {}
