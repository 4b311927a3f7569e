//! The tokio task that owns one replica's engine: it turns wall time into ticks, feeds the engine
//! messages and commands, and performs the engine's actions in the order it demands (records durable
//! before the messages that depend on them leave).

use crate::api::{CheckReport, Committed, LogConfig, Metrics, ReadError, StateMachine, Status};
use crate::api::{Role, SubmitError};
use crate::entry::{self, Entry};
use crate::storage::{SnapshotReader, SnapshotWriter, StorageError, Vfs};
use crate::transport::Transport;
use crate::wire::{Inbound, PeerMessage, ADDRESS_BOOK_PEERS_MAX};
use crate::writer::{Done, Job, WriterStats};
use paxos_core::{
    Action, EntryId, EntryKind, Envelope, MembershipChange, Message, NodeId, Outgoing,
    ProposeError, Replica, Slot, SnapshotHandle, Value,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

pub(crate) type SubmitReply<O> = oneshot::Sender<Result<Committed<O>, SubmitError>>;
pub(crate) type ReadFn<M> = Box<dyn FnOnce(Result<&M, ReadError>) + Send>;

/// What a `Log` handle asks of its driver.
pub(crate) enum Command<M: StateMachine> {
    Submit {
        data: Vec<u8>,
        reply: SubmitReply<M::Output>,
    },
    Read {
        linearizable: bool,
        read: ReadFn<M>,
    },
    Membership {
        change: MembershipChange,
        address: Option<SocketAddr>,
        reply: oneshot::Sender<Result<Slot, SubmitError>>,
    },
    Status(oneshot::Sender<Status>),
    Metrics(oneshot::Sender<Metrics>),
    Check {
        timeout: Duration,
        reply: CheckReply,
    },
    Shutdown,
}

pub(crate) type CheckReply = oneshot::Sender<Result<CheckReport, SubmitError>>;

/// A consistency check whose request is chosen, waiting for every voter's digest.
struct PendingCheck {
    slot: Slot,
    voters: Vec<NodeId>,
    until: Instant,
    reply: CheckReply,
}

/// Where a replica is in its life.
enum Phase {
    /// Empty data directory, `StartMode::Bootstrap`: asking the other initial members whether any
    /// holds state of this cluster. `None` answers so far, by node.
    Probing {
        empty: BTreeSet<NodeId>,
        last_ask: Option<Instant>,
    },
    Running(Box<Replica>),
}

impl Phase {
    /// Every engine the driver runs comes through here (opened, bootstrapped or rebuilt), so the
    /// configured planted bugs are in each.
    #[cfg_attr(not(feature = "planted-bugs"), allow(unused_variables, unused_mut))]
    fn running(config: &LogConfig, mut replica: Replica) -> Phase {
        #[cfg(feature = "planted-bugs")]
        replica.plant_bugs(config.planted_bugs);
        Phase::Running(Box::new(replica))
    }
}

/// A submit waiting for its entry to be chosen.
enum Waiter<O> {
    Submit(SubmitReply<O>),
    Membership(oneshot::Sender<Result<Slot, SubmitError>>),
    Check(Duration, CheckReply),
}

pub(crate) struct Driver<M: StateMachine, V: Vfs, T: Transport> {
    pub config: LogConfig,
    pub machine: M,
    pub transport: Arc<T>,
    phase: Phase,
    pub commands: mpsc::Receiver<Command<M>>,
    pub inbound: mpsc::Receiver<Inbound>,
    pub jobs: mpsc::UnboundedSender<Job>,
    pub done: mpsc::UnboundedReceiver<Done<V>>,
    /// For tasks the driver spawns (snapshot writes and fetches) to report back.
    pub done_tx: mpsc::UnboundedSender<Done<V>>,
    pub stats: Arc<Mutex<WriterStats>>,
    /// Tick 0 of the engine's clock.
    pub started: Instant,
    pub ticks: u64,
    pub next_ticket: u64,
    /// Messages released once the persist with that ticket is durable, oldest first.
    pub held: VecDeque<(u64, Vec<Outgoing>)>,
    pub loopback: VecDeque<Envelope>,
    waiters: BTreeMap<EntryId, Waiter<M::Output>>,
    deadlines: VecDeque<(Instant, EntryId)>,
    /// Outputs of our own entries, applied but not yet reported committed.
    outputs: BTreeMap<EntryId, M::Output>,
    pub applied_through: Slot,
    /// Peer addresses from the configuration, the log and snapshots: the authoritative book.
    pub addresses: BTreeMap<NodeId, SocketAddr>,
    /// Addresses of nodes missing from `addresses`, learned from peers' address books while
    /// rebuilding (given to the transport, never written to a snapshot). The log's own address
    /// entries replace them as it catches up. Invariant: at most `ADDRESS_BOOK_PEERS_MAX` entries.
    learned_addresses: BTreeMap<NodeId, SocketAddr>,
    snapshot_in_progress: bool,
    /// Bytes of values applied since this driver started (see `snapshot_every_bytes`).
    applied_bytes: u64,
    /// `applied_bytes` at the slot of the newest snapshot, taken or installed: the byte trigger
    /// counts from here.
    snapshot_bytes_mark: u64,
    /// `applied_bytes` at the handle of the snapshot being written. It becomes the mark only if
    /// that snapshot succeeds: one abandoned because more was applied before its writer opened
    /// (common under load) must not restart the count.
    snapshot_bytes_begun: u64,
    fetching_snapshot: bool,
    checks: Vec<PendingCheck>,
    pub metrics: Metrics,
    pub stopping: bool,
}

impl<M: StateMachine, V: Vfs, T: Transport> Driver<M, V, T> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: LogConfig,
        machine: M,
        transport: Arc<T>,
        start: Option<Replica>,
        commands: mpsc::Receiver<Command<M>>,
        inbound: mpsc::Receiver<Inbound>,
        jobs: mpsc::UnboundedSender<Job>,
        done: (
            mpsc::UnboundedSender<Done<V>>,
            mpsc::UnboundedReceiver<Done<V>>,
        ),
        stats: Arc<Mutex<WriterStats>>,
        addresses: BTreeMap<NodeId, SocketAddr>,
        applied_through: Slot,
    ) -> Self {
        let phase = match start {
            Some(replica) => Phase::running(&config, replica),
            None => Phase::Probing {
                empty: BTreeSet::new(),
                last_ask: None,
            },
        };
        Driver {
            config,
            machine,
            transport,
            phase,
            commands,
            inbound,
            jobs,
            done_tx: done.0,
            done: done.1,
            stats,
            started: Instant::now(),
            ticks: 0,
            next_ticket: 0,
            held: VecDeque::new(),
            loopback: VecDeque::new(),
            waiters: BTreeMap::new(),
            deadlines: VecDeque::new(),
            outputs: BTreeMap::new(),
            applied_through,
            addresses,
            learned_addresses: BTreeMap::new(),
            snapshot_in_progress: false,
            applied_bytes: 0,
            snapshot_bytes_mark: 0,
            snapshot_bytes_begun: 0,
            fetching_snapshot: false,
            checks: Vec::new(),
            metrics: Metrics::default(),
            stopping: false,
        }
    }

    /// The driver's loop: one event at a time, then every action the engine has for it.
    pub async fn run(mut self) {
        let mut timer = tokio::time::interval(self.config.tick);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.drain();
        while !self.stopping {
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(command) => {
                        self.on_command(command);
                        // Take what else is queued before acting: more submits per batch.
                        for _ in 0..256 {
                            match self.commands.try_recv() {
                                Ok(command) => self.on_command(command),
                                Err(_) => break,
                            }
                        }
                    }
                    None => self.stopping = true,
                },
                Some(inbound) = self.inbound.recv() => {
                    self.on_inbound(inbound);
                    for _ in 0..256 {
                        match self.inbound.try_recv() {
                            Ok(inbound) => self.on_inbound(inbound),
                            Err(_) => break,
                        }
                    }
                }
                Some(done) = self.done.recv() => self.on_done(done),
                _ = timer.tick() => {}
            }
            self.catch_up_ticks();
            self.drain();
        }
        self.fail_all_waiters();
        self.transport.close();
    }

    /// Brings the engine's clock level with the wall clock. Done before serving anything, so a
    /// driver that was stalled never acts on a lease its clock has not yet seen run out.
    fn catch_up_ticks(&mut self) {
        let due = crate::clock::ticks_due(
            self.started.elapsed(),
            self.config.tick,
            self.config.clock_rate_ppm,
        );
        while self.ticks < due {
            self.ticks += 1;
            match &mut self.phase {
                Phase::Running(replica) => replica.handle_tick(),
                Phase::Probing { .. } => {}
            }
        }
        if matches!(self.phase, Phase::Probing { .. }) {
            self.probe_peers();
        }
        self.expire_waiters();
        self.answer_checks();
    }

    /// Answers each consistency check whose voters have all reported, or whose time is up.
    fn answer_checks(&mut self) {
        if self.checks.is_empty() {
            return;
        }
        let now = Instant::now();
        for check in std::mem::take(&mut self.checks) {
            let digests = match &self.phase {
                Phase::Running(replica) => replica.digest_reports(check.slot).cloned(),
                Phase::Probing { .. } => None,
            }
            .unwrap_or_default();
            let complete = check.voters.iter().all(|n| digests.contains_key(n));
            if complete || now >= check.until || check.reply.is_closed() {
                let _ = check.reply.send(Ok(CheckReport {
                    slot: check.slot.0,
                    voters: check.voters,
                    digests,
                    complete,
                }));
            } else {
                self.checks.push(check);
            }
        }
    }

    fn replica(&mut self) -> Option<&mut Replica> {
        match &mut self.phase {
            Phase::Running(replica) => Some(replica),
            Phase::Probing { .. } => None,
        }
    }

    // ----- commands -----

    fn on_command(&mut self, command: Command<M>) {
        match command {
            Command::Submit { data, reply } => self.on_submit(data, reply),
            Command::Read { linearizable, read } => self.on_read(linearizable, read),
            Command::Membership {
                change,
                address,
                reply,
            } => self.on_membership(change, address, reply),
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Metrics(reply) => {
                let _ = reply.send(self.collect_metrics());
            }
            Command::Check { timeout, reply } => {
                let Some(replica) = self.replica() else {
                    let _ = reply.send(Err(SubmitError::NotMaster { hint: None }));
                    return;
                };
                match replica.request_digest() {
                    Ok(id) => self.wait_for(id, Waiter::Check(timeout, reply)),
                    Err(error) => {
                        let _ = reply.send(Err(error.into()));
                    }
                }
            }
            Command::Shutdown => self.stopping = true,
        }
    }

    fn on_submit(&mut self, data: Vec<u8>, reply: SubmitReply<M::Output>) {
        let Some(replica) = self.replica() else {
            let _ = reply.send(Err(SubmitError::NotMaster { hint: None }));
            return;
        };
        match replica.propose(entry::encode_app(&data)) {
            Ok(id) => self.wait_for(id, Waiter::Submit(reply)),
            Err(error) => {
                let _ = reply.send(Err(error.into()));
            }
        }
    }

    fn on_membership(
        &mut self,
        change: MembershipChange,
        address: Option<SocketAddr>,
        reply: oneshot::Sender<Result<Slot, SubmitError>>,
    ) {
        let Some(replica) = self.replica() else {
            let _ = reply.send(Err(SubmitError::NotMaster { hint: None }));
            return;
        };
        // The address goes through the log first, so every replica (and every later master) can
        // reach the new member.
        if let (MembershipChange::AddLearner(node), Some(address)) = (&change, address) {
            let record = entry::encode_address(*node, address);
            if let Err(error) = replica.propose(record) {
                let _ = reply.send(Err(error.into()));
                return;
            }
        }
        match replica.propose_membership(change) {
            Ok(id) => self.wait_for(id, Waiter::Membership(reply)),
            Err(error) => {
                let _ = reply.send(Err(error.into()));
            }
        }
    }

    fn wait_for(&mut self, id: EntryId, waiter: Waiter<M::Output>) {
        self.waiters.insert(id, waiter);
        self.deadlines
            .push_back((Instant::now() + self.config.submit_timeout, id));
    }

    fn on_read(&mut self, linearizable: bool, read: ReadFn<M>) {
        let verdict = match &self.phase {
            Phase::Probing { .. } if linearizable => Err(ReadError::NotMaster { hint: None }),
            Phase::Probing { .. } => Ok(()),
            Phase::Running(replica) => {
                if !linearizable || replica.lease_read_ok() {
                    Ok(())
                } else if replica.epoch().is_some() {
                    Err(ReadError::NoLease)
                } else {
                    Err(ReadError::NotMaster {
                        hint: replica.leader_hint(),
                    })
                }
            }
        };
        match verdict {
            Ok(()) => read(Ok(&self.machine)),
            Err(error) => read(Err(error)),
        }
    }

    // ----- network -----

    fn on_inbound(&mut self, inbound: Inbound) {
        self.metrics.messages_received += 1;
        if let Some(why) = inbound.message.invalid() {
            tracing::warn!(peer = %inbound.from, why, "dropped an invalid message");
            return;
        }
        match inbound.message {
            PeerMessage::Paxos(envelope) => {
                if envelope.from != inbound.from {
                    tracing::warn!(
                        peer = %inbound.from,
                        claimed = %envelope.from,
                        "dropped a message whose sender is not the certificate's node"
                    );
                    return;
                }
                if let Some(why) = envelope.message.invalid() {
                    tracing::warn!(peer = %inbound.from, why, "dropped an invalid message");
                    return;
                }
                if matches!(envelope.message, Message::RebuildProbe(_)) {
                    // Sent before the engine's reply, on the same ordered stream: by the time the
                    // prober reads the members in the reply, it can reach them.
                    self.send_address_book(inbound.from);
                }
                if let Some(replica) = self.replica() {
                    replica.handle_message(envelope);
                }
            }
            PeerMessage::AddressBook { peers } => self.on_address_book(inbound.from, peers),
            PeerMessage::IdentityQuery { cluster } => {
                if cluster != self.config.cluster {
                    return;
                }
                let (incarnation, pristine) = match &self.phase {
                    Phase::Running(replica) => (
                        Some(replica.incarnation()),
                        !replica.is_rebuilding()
                            && replica.promised() == paxos_core::Ballot::ZERO
                            && replica.chosen_through() == Slot::ZERO,
                    ),
                    Phase::Probing { .. } => (None, true),
                };
                self.send(
                    inbound.from,
                    PeerMessage::IdentityReply {
                        cluster,
                        incarnation,
                        pristine,
                    },
                );
            }
            PeerMessage::IdentityReply {
                cluster, pristine, ..
            } => self.on_identity_reply(inbound.from, cluster, pristine),
        }
    }

    /// Tells a replica that probes us for a rebuild every address we know. Only a replica that
    /// answers the probe (running, not rebuilding itself) sends its book.
    fn send_address_book(&mut self, to: NodeId) {
        let answers = matches!(&self.phase, Phase::Running(replica) if !replica.is_rebuilding());
        if !answers {
            return;
        }
        let peers: BTreeMap<NodeId, SocketAddr> = self
            .addresses
            .iter()
            .filter(|(node, _)| **node != to)
            .take(ADDRESS_BOOK_PEERS_MAX)
            .map(|(node, address)| (*node, *address))
            .collect();
        if !peers.is_empty() {
            self.send(to, PeerMessage::AddressBook { peers });
        }
    }

    /// A peer that answers our rebuild probe sent its address book: reach the nodes we have no
    /// address for, so that the probes to the members its reply names get through. Addresses we
    /// have (configured, or from the log) are kept: the log is authoritative, a book is a hint.
    fn on_address_book(&mut self, from: NodeId, peers: BTreeMap<NodeId, SocketAddr>) {
        let rebuilding = matches!(&self.phase, Phase::Running(replica) if replica.is_rebuilding());
        if !rebuilding {
            return;
        }
        for (node, address) in peers {
            let known = node == self.config.node
                || self.addresses.contains_key(&node)
                || self.learned_addresses.contains_key(&node);
            if known || self.learned_addresses.len() >= ADDRESS_BOOK_PEERS_MAX {
                continue;
            }
            tracing::info!(node = %self.config.node, peer = %node, %address, via = %from, "learned a peer's address while rebuilding");
            self.learned_addresses.insert(node, address);
            self.transport.set_peer(node, address);
        }
    }

    fn send(&mut self, to: NodeId, message: PeerMessage) {
        self.metrics.messages_sent += 1;
        self.transport.send(to, message);
    }

    /// Empty data directory: bootstrap only if every other initial member answers that it is
    /// pristine (empty, or bootstrapped without having promised, accepted or learned anything); rebuild
    /// as soon as one is not (the cluster ran, so we were a member and lost our state). Safe because
    /// any vote of ours that could have counted left a promise on the disk of whoever asked for it.
    fn probe_peers(&mut self) {
        let others: Vec<NodeId> = self
            .config
            .initial_members
            .iter()
            .copied()
            .filter(|n| *n != self.config.node)
            .collect();
        let Phase::Probing { empty, last_ask } = &mut self.phase else {
            return;
        };
        if others.iter().all(|n| empty.contains(n)) {
            tracing::info!(node = %self.config.node, "every initial member is empty: bootstrapping the cluster");
            self.bootstrap();
            return;
        }
        if last_ask.is_some_and(|at| at.elapsed() < Duration::from_millis(200)) {
            return;
        }
        *last_ask = Some(Instant::now());
        let cluster = self.config.cluster;
        for node in others {
            self.send(node, PeerMessage::IdentityQuery { cluster });
        }
    }

    fn on_identity_reply(&mut self, from: NodeId, cluster: crate::wire::ClusterId, pristine: bool) {
        if cluster != self.config.cluster {
            return;
        }
        let Phase::Probing { empty, .. } = &mut self.phase else {
            return;
        };
        match pristine {
            true => {
                empty.insert(from);
            }
            false => {
                tracing::warn!(
                    node = %self.config.node,
                    peer = %from,
                    "data directory is empty but the cluster exists: rebuilding as a non-voting member"
                );
                self.start_rebuild();
            }
        }
    }

    fn bootstrap(&mut self) {
        let config = paxos_core::Config::new(self.config.initial_members.iter().copied());
        let replica = Replica::bootstrap(
            self.config.node,
            config,
            self.config.settings.clone(),
            self.config.seed,
        );
        self.phase = Phase::running(&self.config, replica);
    }

    fn start_rebuild(&mut self) {
        self.machine.reset();
        self.applied_through = Slot::ZERO;
        self.outputs.clear();
        let me = self.config.node;
        let peers = self
            .addresses
            .keys()
            .copied()
            .filter(|n| *n != me)
            .collect();
        let replica = Replica::rebuild(
            self.config.node,
            peers,
            self.config.settings.clone(),
            self.config.seed ^ self.ticks,
        );
        self.phase = Phase::running(&self.config, replica);
    }

    // ----- actions -----

    /// Performs every action the engine has queued, and the ones they cause (loopback messages).
    fn drain(&mut self) {
        loop {
            let action = match &mut self.phase {
                Phase::Running(replica) => replica.poll_action(),
                Phase::Probing { .. } => None,
            };
            match action {
                Some(action) => self.on_action(action),
                None => match self.loopback.pop_front() {
                    Some(envelope) => {
                        if let Some(replica) = self.replica() {
                            replica.handle_message(envelope);
                        }
                    }
                    None => break,
                },
            }
        }
        self.maybe_snapshot();
    }

    fn on_action(&mut self, action: Action) {
        match action {
            Action::Persist { records, messages } => {
                self.next_ticket += 1;
                let ticket = self.next_ticket;
                if self.jobs.send(Job::Persist { records, ticket }).is_err() {
                    self.stopping = true;
                    return;
                }
                if !messages.is_empty() {
                    self.held.push_back((ticket, messages));
                }
            }
            Action::Send(outgoing) => self.deliver(outgoing),
            Action::Apply { slot, value } => self.apply(slot, &value),
            Action::Committed { id, slot } => self.committed(id, slot),
            Action::Failed { id, error } => self.failed(id, error),
            Action::RoleChanged { role, epoch } => {
                tracing::info!(node = %self.config.node, ?role, epoch = ?epoch.map(|e| e.to_string()), "role changed");
            }
            Action::FetchSnapshot { from, handle } => self.fetch_snapshot(from, handle),
            Action::DigestMismatch { slot, digests } => {
                tracing::error!(node = %self.config.node, %slot, ?digests, "replicas disagree about the state at a consistency check");
            }
            Action::Corrupt { slot } => {
                tracing::error!(node = %self.config.node, %slot, "a majority's digest differs from ours: this replica's state is corrupt; rebuilding");
                let _ = self.jobs.send(Job::Quarantine);
                self.fail_all_waiters();
                self.start_rebuild();
            }
        }
    }

    fn deliver(&mut self, outgoing: Outgoing) {
        if outgoing.to == self.config.node {
            self.loopback.push_back(outgoing.envelope);
        } else {
            self.send(outgoing.to, PeerMessage::Paxos(outgoing.envelope));
        }
    }

    fn apply(&mut self, slot: Slot, value: &Value) {
        self.applied_bytes += value.bytes() as u64;
        for item in value.entries.iter() {
            match &item.kind {
                EntryKind::App(bytes) => match entry::decode(bytes) {
                    Ok(Entry::App(data)) => {
                        let output = self.machine.apply(slot, data);
                        if self.waiters.contains_key(&item.id) {
                            self.outputs.insert(item.id, output);
                        }
                    }
                    Ok(Entry::Address { node, address }) => {
                        self.addresses.insert(node, address);
                        self.transport.set_peer(node, address);
                    }
                    Err(error) => {
                        // Every replica skips the same bytes the same way: still deterministic.
                        tracing::error!(%slot, %error, "skipped an undecodable log entry");
                    }
                },
                EntryKind::Reconfigure(_) => {}
                EntryKind::DigestRequest => {
                    let digest = self.machine.digest();
                    if let Some(replica) = self.replica() {
                        replica.handle_digest(slot, digest);
                    }
                }
            }
        }
        self.applied_through = slot;
    }

    fn committed(&mut self, id: EntryId, slot: Slot) {
        let output = self.outputs.remove(&id);
        match self.waiters.remove(&id) {
            Some(Waiter::Submit(reply)) => {
                self.metrics.submits_committed += 1;
                if let Some(output) = output {
                    let _ = reply.send(Ok(Committed {
                        slot,
                        epoch: id.epoch,
                        output,
                    }));
                }
            }
            Some(Waiter::Membership(reply)) => {
                let _ = reply.send(Ok(slot));
            }
            Some(Waiter::Check(timeout, reply)) => {
                let voters = match &self.phase {
                    Phase::Running(replica) => {
                        let config = replica.membership().config_at(slot);
                        config.voters.keys().copied().collect()
                    }
                    Phase::Probing { .. } => Vec::new(),
                };
                self.checks.push(PendingCheck {
                    slot,
                    voters,
                    until: Instant::now() + timeout,
                    reply,
                });
            }
            None => {}
        }
    }

    fn failed(&mut self, id: EntryId, error: ProposeError) {
        self.outputs.remove(&id);
        self.metrics.submits_failed += 1;
        match self.waiters.remove(&id) {
            Some(Waiter::Submit(reply)) => {
                let _ = reply.send(Err(error.into()));
            }
            Some(Waiter::Membership(reply)) => {
                let _ = reply.send(Err(error.into()));
            }
            Some(Waiter::Check(_, reply)) => {
                let _ = reply.send(Err(error.into()));
            }
            None => {}
        }
    }

    fn expire_waiters(&mut self) {
        let now = Instant::now();
        while let Some((deadline, id)) = self.deadlines.front().copied() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            self.outputs.remove(&id);
            match self.waiters.remove(&id) {
                Some(Waiter::Submit(reply)) => {
                    let _ = reply.send(Err(SubmitError::Timeout));
                }
                Some(Waiter::Membership(reply)) => {
                    let _ = reply.send(Err(SubmitError::Timeout));
                }
                Some(Waiter::Check(_, reply)) => {
                    let _ = reply.send(Err(SubmitError::Timeout));
                }
                None => {}
            }
        }
    }

    fn fail_all_waiters(&mut self) {
        let error = if self.stopping {
            SubmitError::ShuttingDown
        } else {
            SubmitError::EpochChanged
        };
        for (_, waiter) in std::mem::take(&mut self.waiters) {
            match waiter {
                Waiter::Submit(reply) => {
                    let _ = reply.send(Err(error.clone()));
                }
                Waiter::Membership(reply) => {
                    let _ = reply.send(Err(error.clone()));
                }
                Waiter::Check(_, reply) => {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
        for check in std::mem::take(&mut self.checks) {
            let _ = check.reply.send(Err(error.clone()));
        }
        self.outputs.clear();
        self.deadlines.clear();
    }

    // ----- storage completions -----

    fn on_done(&mut self, done: Done<V>) {
        match done {
            Done::Synced { through } => {
                while self.held.front().is_some_and(|(t, _)| *t <= through) {
                    let (_, messages) = self.held.pop_front().expect("checked");
                    for outgoing in messages {
                        self.deliver(outgoing);
                    }
                }
            }
            Done::SnapshotWriter { handle, writer } => self.write_snapshot(handle, writer),
            Done::SnapshotTaken(result) => {
                self.snapshot_in_progress = false;
                match result {
                    Ok(handle) => {
                        self.metrics.snapshots_taken += 1;
                        self.snapshot_bytes_mark = self.snapshot_bytes_begun;
                        if let Some(replica) = self.replica() {
                            replica.handle_snapshot_done(handle);
                        }
                    }
                    Err(error) => tracing::error!(%error, "snapshot failed; the log is kept"),
                }
            }
            Done::SnapshotFetched(Err(error)) => {
                self.fetching_snapshot = false;
                tracing::warn!(%error, "snapshot fetch failed; catch-up will retry");
                if let Some(replica) = self.replica() {
                    replica.handle_snapshot_fetch_failed();
                }
            }
            Done::SnapshotFetched(Ok(path)) => {
                let _ = self.jobs.send(Job::InstallReceived { path });
            }
            Done::SnapshotReceived(result) => {
                self.fetching_snapshot = false;
                self.install_snapshot(result);
            }
            Done::Quarantined(Ok(path)) => {
                tracing::warn!(moved_to = %path.display(), "damaged state moved aside");
            }
            Done::Quarantined(Err(error)) | Done::Fatal(error) => {
                tracing::error!(%error, "storage failed: stopping the replica");
                self.stopping = true;
            }
        }
    }

    // ----- snapshots -----

    fn maybe_snapshot(&mut self) {
        if self.snapshot_in_progress || self.stopping {
            return;
        }
        let every = self.config.snapshot_every_slots.max(1);
        let Phase::Running(replica) = &self.phase else {
            return;
        };
        let since = self
            .applied_through
            .0
            .saturating_sub(replica.snapshot_slot().0);
        let due = since >= every
            || (since > 0
                && self.applied_bytes - self.snapshot_bytes_mark
                    >= self.config.snapshot_every_bytes);
        if replica.is_rebuilding() || replica.chosen_through() != self.applied_through || !due {
            return;
        }
        let handle = replica.snapshot_handle();
        self.snapshot_in_progress = true;
        self.snapshot_bytes_begun = self.applied_bytes;
        let _ = self.jobs.send(Job::BeginSnapshot { handle });
    }

    fn write_snapshot(
        &mut self,
        handle: SnapshotHandle,
        writer: Result<SnapshotWriter<V>, StorageError>,
    ) {
        let mut writer = match writer {
            Ok(writer) => writer,
            Err(error) => {
                self.snapshot_in_progress = false;
                tracing::error!(%error, "cannot start a snapshot");
                return;
            }
        };
        // The machine may have applied more since the handle was taken; a snapshot must match its
        // handle exactly, so take it only if nothing was applied in between.
        if self.applied_through != handle.slot {
            self.snapshot_in_progress = false;
            return;
        }
        let write_state = self.machine.snapshot();
        let addresses = self.addresses.clone();
        let done = self.done_sender();
        let data_dir = self.config.data_dir.clone();
        tokio::task::spawn_blocking(move || {
            let result = entry::write_snapshot_prefix(&mut writer, &addresses)
                .and_then(|()| write_state(&mut writer))
                .map_err(|source| StorageError::Io {
                    action: "write snapshot",
                    path: data_dir,
                    source,
                })
                .and_then(|()| writer.finish())
                .map(|_| handle);
            let _ = done.send(Done::SnapshotTaken(result));
        });
    }

    fn fetch_snapshot(&mut self, from: NodeId, handle: SnapshotHandle) {
        if self.fetching_snapshot {
            return;
        }
        self.fetching_snapshot = true;
        let dest = self.config.data_dir.join("incoming-snapshot.tmp");
        let transport = self.transport.clone();
        let done = self.done_sender();
        tokio::spawn(async move {
            let result = transport
                .fetch_snapshot(from, handle.slot, dest.clone())
                .await
                .map(|_| dest);
            let _ = done.send(Done::SnapshotFetched(result));
        });
    }

    fn install_snapshot(
        &mut self,
        result: Result<(SnapshotHandle, SnapshotReader<V>), StorageError>,
    ) {
        let (handle, mut reader) = match result {
            Ok(opened) => opened,
            Err(error) => {
                tracing::warn!(%error, "received snapshot does not check out; catch-up will retry");
                if let Some(replica) = self.replica() {
                    replica.handle_snapshot_fetch_failed();
                }
                return;
            }
        };
        let wanted = match &self.phase {
            Phase::Running(replica) => replica.wants_snapshot(handle.slot),
            Phase::Probing { .. } => false,
        };
        if !wanted {
            return;
        }
        match restore(&mut self.machine, &mut reader) {
            Ok(addresses) => {
                for (node, address) in &addresses {
                    self.transport.set_peer(*node, *address);
                }
                self.addresses.extend(addresses);
                self.applied_through = handle.slot;
                self.snapshot_bytes_mark = self.applied_bytes;
                self.metrics.snapshots_installed += 1;
                if let Some(replica) = self.replica() {
                    replica.handle_snapshot_installed(handle);
                }
            }
            Err(error) => {
                tracing::error!(%error, "restoring a received snapshot failed; starting over");
                self.machine.reset();
                if let Some(replica) = self.replica() {
                    replica.handle_snapshot_fetch_failed();
                }
            }
        }
    }

    fn done_sender(&self) -> mpsc::UnboundedSender<Done<V>> {
        self.done_tx.clone()
    }

    // ----- status -----

    fn status(&self) -> Status {
        let addresses = self.addresses.clone();
        match &self.phase {
            Phase::Probing { .. } => Status {
                cluster: self.config.cluster,
                node: self.config.node,
                incarnation: 0,
                role: Role::Follower,
                epoch: None,
                master: None,
                lease: false,
                rebuilding: false,
                chosen_through: 0,
                applied_through: 0,
                snapshot_slot: 0,
                voters: Vec::new(),
                learners: Vec::new(),
                peers: addresses,
            },
            Phase::Running(replica) => {
                let config = replica.membership().latest();
                Status {
                    cluster: self.config.cluster,
                    node: self.config.node,
                    incarnation: replica.incarnation().0,
                    role: replica.role_kind().into(),
                    epoch: replica.epoch().map(|e| e.to_string()),
                    master: replica.leader_hint(),
                    lease: replica.lease_read_ok(),
                    rebuilding: replica.is_rebuilding(),
                    chosen_through: replica.chosen_through().0,
                    applied_through: self.applied_through.0,
                    snapshot_slot: replica.snapshot_slot().0,
                    voters: config.voters.keys().copied().collect(),
                    learners: config.learners.keys().copied().collect(),
                    peers: addresses,
                }
            }
        }
    }

    fn collect_metrics(&self) -> Metrics {
        let mut metrics = self.metrics.clone();
        let stats = self.stats.lock().expect("writer stats lock");
        metrics.fsyncs = stats.fsyncs;
        metrics.records_written = stats.records;
        metrics.bytes_written = stats.bytes;
        metrics.batch_records_max = stats.batch_records_max;
        metrics.batch_records_mean = if stats.fsyncs == 0 {
            0.0
        } else {
            stats.records as f64 / stats.fsyncs as f64
        };
        metrics.fsync_micros_p50 = stats.fsync_micros.value_at_quantile(0.5);
        metrics.fsync_micros_p99 = stats.fsync_micros.value_at_quantile(0.99);
        metrics.fsync_micros_max = stats.fsync_micros.max();
        metrics
    }
}

/// Restores the application from a snapshot file's contents: our prefix, then the application's
/// bytes. Returns the address book the snapshot carried.
pub(crate) fn restore<M: StateMachine>(
    machine: &mut M,
    reader: &mut dyn Read,
) -> std::io::Result<BTreeMap<NodeId, SocketAddr>> {
    let addresses = entry::read_snapshot_prefix(reader)?;
    machine.restore(reader)?;
    Ok(addresses)
}
