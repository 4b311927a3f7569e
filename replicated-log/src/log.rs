//! [`Log`]: the handle an application holds to one replica of the replicated log.

use crate::api::{CheckReport, Status, SubmitError};
use crate::api::{Committed, LogConfig, Metrics, OpenError, ReadError, StartMode, StateMachine};
use crate::driver::{restore, Command, Driver};
use crate::storage::{Opened, Storage, Vfs};
use crate::transport::{InboundSender, SnapshotSource, Transport, TransportError};
use crate::writer::{LatestSnapshot, Writer, WriterStats};
use paxos_core::{MembershipChange, NodeId, Replica, Slot};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Most commands queued from handles to the driver before `submit` waits for room.
const COMMANDS_QUEUED_MAX: usize = 16_384;
/// Most inbound messages queued from the transport before it drops (Paxos retries).
const INBOUND_QUEUED_MAX: usize = 65_536;

/// A handle to one running replica. Cheap to clone; every clone talks to the same replica.
pub struct Log<M: StateMachine> {
    commands: mpsc::Sender<Command<M>>,
}

impl<M: StateMachine> Clone for Log<M> {
    fn clone(&self) -> Self {
        Log {
            commands: self.commands.clone(),
        }
    }
}

impl<M: StateMachine> std::fmt::Debug for Log<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log").finish_non_exhaustive()
    }
}

impl<M: StateMachine> Log<M> {
    /// Opens (or creates) the replica's data directory through `vfs`, recovers its state, starts
    /// the transport with `connect` and the driver task, and returns at once: elections and
    /// catch-up go on in the background (watch [`Log::status`]).
    ///
    /// A data directory whose log does not check out is moved aside (never deleted) and the replica
    /// rebuilds from its peers as a non-voting member until it may vote again.
    pub async fn open<V, T, C>(
        config: LogConfig,
        mut machine: M,
        vfs: V,
        connect: C,
    ) -> Result<Log<M>, OpenError>
    where
        V: Vfs,
        T: Transport,
        C: FnOnce(InboundSender, Arc<dyn SnapshotSource>) -> Result<Arc<T>, TransportError>,
    {
        if let Some(why) = config.settings.invalid() {
            return Err(OpenError::Config(why.to_string()));
        }
        if config.start == StartMode::Bootstrap && !config.initial_members.contains(&config.node) {
            return Err(OpenError::Config(format!(
                "node {} is not among the initial members {:?}: add it with add_learner and start it with StartMode::Join",
                config.node, config.initial_members
            )));
        }
        let (mut storage, opened) = Storage::open(vfs, &config.data_dir, config.storage.clone())?;
        let peers: Vec<NodeId> = config
            .peers
            .keys()
            .copied()
            .filter(|n| *n != config.node)
            .collect();
        let mut addresses = config.peers.clone();
        let mut applied_through = Slot::ZERO;
        let start = match opened {
            Opened::Recovered { identity, state } => {
                if identity.cluster != config.cluster || identity.node != config.node {
                    return Err(OpenError::Identity(format!(
                        "{} holds node {} of cluster {}, not node {} of cluster {}: point --data-dir at this node's own directory",
                        config.data_dir.display(),
                        identity.node,
                        identity.cluster,
                        config.node,
                        config.cluster
                    )));
                }
                let snapshot_slot = state.snapshot.slot;
                let restored = if snapshot_slot == Slot::ZERO {
                    Ok(Default::default())
                } else {
                    storage
                        .open_snapshot_at(snapshot_slot)
                        .map_err(|e| e.to_string())
                        .and_then(|mut reader| {
                            restore(&mut machine, &mut reader).map_err(|e| e.to_string())
                        })
                };
                match restored {
                    Ok(book) => {
                        addresses.extend(book);
                        applied_through = snapshot_slot;
                        Some(Replica::recover(
                            state,
                            peers.clone(),
                            config.settings.clone(),
                            config.seed,
                        ))
                    }
                    Err(why) => {
                        tracing::error!(node = %config.node, %why, "the snapshot the log names does not check out: rebuilding");
                        Some(rebuild(&mut storage, &mut machine, &config, peers.clone())?)
                    }
                }
            }
            Opened::Damaged { problem, .. } => {
                tracing::error!(node = %config.node, %problem, "data directory is damaged: moving it aside and rebuilding from peers");
                Some(rebuild(&mut storage, &mut machine, &config, peers.clone())?)
            }
            Opened::Empty => match config.start {
                StartMode::Join => Some(Replica::rebuild(
                    config.node,
                    peers.clone(),
                    config.settings.clone(),
                    config.seed,
                )),
                StartMode::Bootstrap if peers.is_empty() => Some(Replica::bootstrap(
                    config.node,
                    paxos_core::Config::new([config.node]),
                    config.settings.clone(),
                    config.seed,
                )),
                // Ask the peers first: an empty directory may be a lost one.
                StartMode::Bootstrap => None,
            },
        };

        let stats = Arc::new(Mutex::new(WriterStats::new()));
        let latest = Arc::new(LatestSnapshot::default());
        let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let writer = Writer {
            storage,
            cluster: config.cluster,
            jobs: jobs_rx,
            done: done_tx.clone(),
            stats: stats.clone(),
            latest: latest.clone(),
            jobs_tx: jobs_tx.downgrade(),
        };
        writer.refresh_latest();
        std::thread::Builder::new()
            .name(format!("wal-writer-{}", config.node.0))
            .spawn(move || writer.run())
            .map_err(OpenError::Io)?;

        let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUED_MAX);
        let transport = connect(inbound_tx, latest)?;
        for (node, address) in &addresses {
            transport.set_peer(*node, *address);
        }
        let (commands_tx, commands_rx) = mpsc::channel(COMMANDS_QUEUED_MAX);
        let driver = Driver::new(
            config,
            machine,
            transport,
            start,
            commands_rx,
            inbound_rx,
            jobs_tx,
            (done_tx, done_rx),
            stats,
            addresses,
            applied_through,
        );
        tokio::spawn(driver.run());
        Ok(Log {
            commands: commands_tx,
        })
    }

    /// Opens the log over real files and QUIC with mutual TLS: the usual way to run a replica.
    /// `tls` must name `config.node` of `config.cluster`; `listen` is where peers reach this replica.
    ///
    /// A port still held by a log of this process that was just shut down (its endpoint closes in
    /// the background) is waited for, up to `LISTEN_WAIT`; a port held by anything else fails
    /// with `AddressInUse` after that wait.
    pub async fn open_quic(
        config: LogConfig,
        machine: M,
        tls: crate::tls::TlsMaterial,
        listen: SocketAddr,
    ) -> Result<Log<M>, OpenError> {
        const LISTEN_WAIT: std::time::Duration = std::time::Duration::from_secs(3);
        let deadline = tokio::time::Instant::now() + LISTEN_WAIT;
        while listen.port() != 0 && tokio::time::Instant::now() < deadline {
            match std::net::UdpSocket::bind(listen) {
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                _ => break,
            }
        }
        let quic = crate::transport::QuicConfig {
            node: config.node,
            cluster: config.cluster,
            listen,
            peers: config
                .peers
                .iter()
                .filter(|(node, _)| **node != config.node)
                .map(|(node, addr)| (*node, *addr))
                .collect(),
            tls,
            limits: Default::default(),
        };
        Log::open(
            config,
            machine,
            crate::storage::FileVfs,
            move |inbound, snapshots| {
                crate::transport::QuicTransport::start(quic, inbound, snapshots).map(Arc::new)
            },
        )
        .await
    }

    /// Appends `data` to the log. Answers once it is chosen and applied here, with its slot, epoch
    /// and what [`StateMachine::apply`] returned for it.
    pub async fn submit(&self, data: Vec<u8>) -> Result<Committed<M::Output>, SubmitError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Submit { data, reply })
            .await
            .map_err(|_| SubmitError::ShuttingDown)?;
        answer.await.unwrap_or(Err(SubmitError::ShuttingDown))
    }

    /// Runs `read` on the state machine if this replica is master under a valid lease: the result
    /// is linearizable without a log round (PML 5.2).
    pub async fn read<R: Send + 'static>(
        &self,
        read: impl FnOnce(&M) -> R + Send + 'static,
    ) -> Result<R, ReadError> {
        self.read_with(true, read).await
    }

    /// Runs `read` on this replica's state as applied so far, master or not: possibly stale.
    pub async fn read_stale<R: Send + 'static>(
        &self,
        read: impl FnOnce(&M) -> R + Send + 'static,
    ) -> Result<R, ReadError> {
        self.read_with(false, read).await
    }

    async fn read_with<R: Send + 'static>(
        &self,
        linearizable: bool,
        read: impl FnOnce(&M) -> R + Send + 'static,
    ) -> Result<R, ReadError> {
        let (reply, answer) = oneshot::channel();
        let read = Box::new(move |machine: Result<&M, ReadError>| {
            let _ = reply.send(machine.map(read));
        });
        self.commands
            .send(Command::Read { linearizable, read })
            .await
            .map_err(|_| ReadError::ShuttingDown)?;
        answer.await.unwrap_or(Err(ReadError::ShuttingDown))
    }

    /// Adds `node`, reachable at `address`, as a non-voting member. Start it with
    /// `StartMode::Join`; it catches up, then [`Log::promote`] makes it vote.
    pub async fn add_learner(
        &self,
        node: NodeId,
        address: SocketAddr,
    ) -> Result<Slot, SubmitError> {
        self.change(MembershipChange::AddLearner(node), Some(address))
            .await
    }

    /// Makes a caught-up learner a voter.
    pub async fn promote(&self, node: NodeId) -> Result<Slot, SubmitError> {
        self.change(MembershipChange::Promote(node), None).await
    }

    /// Removes a voter or learner for good (its id is never reused).
    pub async fn remove(&self, node: NodeId) -> Result<Slot, SubmitError> {
        self.change(MembershipChange::Remove(node), None).await
    }

    async fn change(
        &self,
        change: MembershipChange,
        address: Option<SocketAddr>,
    ) -> Result<Slot, SubmitError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Membership {
                change,
                address,
                reply,
            })
            .await
            .map_err(|_| SubmitError::ShuttingDown)?;
        answer.await.unwrap_or(Err(SubmitError::ShuttingDown))
    }

    /// Runs a consistency check now (PML 6): the master puts a digest request in the log, and this
    /// answers once every voter of that slot reported its digest, or after `timeout` with the
    /// reports so far ([`CheckReport::complete`] false). Master only. A replica in the minority
    /// of a disagreement also treats itself as corrupt and rebuilds, as with the periodic checks.
    pub async fn check(&self, timeout: Duration) -> Result<CheckReport, SubmitError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Check { timeout, reply })
            .await
            .map_err(|_| SubmitError::ShuttingDown)?;
        answer.await.unwrap_or(Err(SubmitError::ShuttingDown))
    }

    /// This replica's role, epoch, lease, progress and members. `None` once it has stopped.
    pub async fn status(&self) -> Option<Status> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Status(reply)).await.ok()?;
        answer.await.ok()
    }

    /// Counters and latency figures. `None` once the replica has stopped.
    pub async fn metrics(&self) -> Option<Metrics> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Metrics(reply)).await.ok()?;
        answer.await.ok()
    }

    /// Completes once the replica has stopped: after [`Log::shutdown`], or on its own when its
    /// storage failed (an fsync error, a full disk; the error is logged). A service can wait on it
    /// to exit rather than keep serving from a replica that no longer takes part.
    pub async fn stopped(&self) {
        self.commands.closed().await;
    }

    /// Stops the replica: pending submits answer `ShuttingDown`; records already queued are synced
    /// by the writer before it exits.
    pub async fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown).await;
        self.commands.closed().await;
    }
}

/// Moves the damaged state aside and starts a rebuilding replica over an empty directory.
fn rebuild<M: StateMachine, V: Vfs>(
    storage: &mut Storage<V>,
    machine: &mut M,
    config: &LogConfig,
    peers: Vec<NodeId>,
) -> Result<Replica, OpenError> {
    let moved = storage.quarantine()?;
    tracing::warn!(node = %config.node, moved_to = %moved.display(), "damaged state moved aside");
    machine.reset();
    Ok(Replica::rebuild(
        config.node,
        peers,
        config.settings.clone(),
        config.seed,
    ))
}
