//! The database: applies commands in log order, answers read-only queries, and owns the
//! per-command scratch (undo journal, events) that is empty between commands.

use crate::command::{Command, Sequencer, WatchKinds};
use crate::event::{Event, EventKind};
use crate::path::NodePath;
use crate::reply::{
    LockInfo, NodeStat, NodeView, QueryError, Rejection, Reply, SequencerInvalid, SessionInfo,
};
use crate::state::{Config, Holders, Index, LockState, Session, State, Undo};
use crate::types::{Epoch, EventId, SessionId, Slot};
use std::fmt;
use std::ops::Bound;
use std::sync::Arc;

/// What applying one command produced: the reply for whoever proposed it, and the events for
/// the sessions they are addressed to, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub reply: Reply,
    pub events: Vec<Event>,
}

/// Deliberately broken behaviours for teeth tests: a checker (the simulator's lock-safety
/// checker, say) must catch each one. Settable only with the `planted-bugs` feature.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlantedBugs {
    /// Locks are granted during lock-delay, as if it had ended.
    pub ignore_lock_delay: bool,
    /// `check_sequencer` (and so the `SequencerValid` test) accepts a sequencer whose grant was
    /// superseded, as long as the lock is held in its mode under any generation.
    pub check_sequencer_ignores_generation: bool,
    /// A MultiOp finds no cached reply for its `(session, seq)`: a retry runs again.
    pub forget_replies: bool,
    /// The server answers linearizable reads from whatever this replica has applied, on any
    /// replica, without the master's lease (a read that should go through the lease reads stale).
    /// Only the real server honours it (`server::handler`); the database itself is unchanged.
    pub stale_linearizable_reads: bool,
    /// A master answers a plain `Set` as done once it has handed it to the log, before it is
    /// chosen. Only the real server honours it (`server::handler`).
    pub ack_writes_before_commit: bool,
    /// An exclusive request with nobody queued takes a held exclusive lock from its holder,
    /// without telling the holder: two clients then hold the lock at once.
    pub exclusive_lock_stolen: bool,
}

/// The Chubby-style database and lock service as a deterministic state machine.
///
/// Same commands in the same order give the same replies, events, snapshots and digest on every
/// replica. The database reads no clock, does no IO and iterates no hash map.
pub struct Database {
    pub(crate) state: State,
    pub(crate) index: Index,
    /// Undo records of the command being applied; empty between commands.
    pub(crate) journal: Vec<Undo>,
    /// Events of the command being applied; empty between commands.
    pub(crate) events: Vec<Event>,
    #[cfg(feature = "planted-bugs")]
    planted: PlantedBugs,
}

impl Database {
    /// An empty database: only the root directory `/`.
    ///
    /// Panics if `config.invalid()`: validate operator settings before.
    pub fn new(config: Config) -> Database {
        Database::from_state(State::new(config))
    }

    pub(crate) fn from_state(state: State) -> Database {
        let index = Index::build(&state);
        Database {
            state,
            index,
            journal: Vec::new(),
            events: Vec::new(),
            #[cfg(feature = "planted-bugs")]
            planted: PlantedBugs::default(),
        }
    }

    /// Applies one command taken from `slot` of the log. Slots must not go backwards (several
    /// commands may share one).
    pub fn apply(&mut self, slot: Slot, command: &Command) -> Applied {
        self.begin(slot);
        let reply = match command {
            Command::OpenSession { now_ms, lease_ms } => self.on_open_session(*now_ms, *lease_ms),
            Command::KeepAlive { session, now_ms } => self.on_keep_alive(*session, *now_ms),
            Command::CloseSession { session } => self.on_close_session(*session),
            Command::MultiOp { session, seq, op } => {
                if self.bugs().forget_replies {
                    self.forget_reply(*session, *seq);
                }
                self.on_multi_op(*session, *seq, op)
            }
            Command::Tick { now_ms } => self.on_tick(*now_ms),
            Command::MasterChanged { epoch, now_ms } => self.on_master_changed(*epoch, *now_ms),
            Command::Restore { snapshot, force } => self.on_restore(snapshot, *force),
        };
        self.journal.clear();
        Applied {
            reply,
            events: std::mem::take(&mut self.events),
        }
    }

    /// Decodes a log entry and applies it. Bytes that are not a command change nothing but the
    /// applied slot and get `Rejected(Undecodable)`.
    pub fn apply_bytes(&mut self, slot: Slot, entry: &[u8]) -> Applied {
        match Command::decode(entry) {
            Ok(command) => self.apply(slot, &command),
            Err(error) => {
                self.begin(slot);
                Applied {
                    reply: Reply::Rejected(Rejection::Undecodable(error)),
                    events: Vec::new(),
                }
            }
        }
    }

    /// Moves to `slot`; a new slot numbers its events from 0.
    fn begin(&mut self, slot: Slot) {
        assert!(
            slot >= self.state.applied,
            "apply out of order: {slot} after {}",
            self.state.applied
        );
        assert!(
            self.journal.is_empty() && self.events.is_empty(),
            "scratch left over from the previous command"
        );
        if slot > self.state.applied {
            self.state.applied = slot;
            self.state.next_event = 0;
        }
    }

    /// Forgets everything but the config: the replica is being rebuilt.
    pub fn reset(&mut self) {
        self.replace_state(State::new(self.state.config.clone()));
    }

    /// Swaps in a whole new state (reset, restore); planted bugs stay planted.
    pub(crate) fn replace_state(&mut self, state: State) {
        assert!(self.journal.is_empty() && self.events.is_empty());
        self.index = Index::build(&state);
        self.state = state;
    }

    pub fn config(&self) -> &Config {
        &self.state.config
    }

    /// The slot of the last command applied.
    pub fn applied(&self) -> Slot {
        self.state.applied
    }

    /// The database's clock: the largest `now_ms` applied.
    pub fn now_ms(&self) -> u64 {
        self.state.now_ms
    }

    pub fn master_epoch(&self) -> Option<Epoch> {
        self.state.master_epoch
    }

    /// A node's stat and contents.
    pub fn get(&self, path: &NodePath) -> Result<NodeView, QueryError> {
        let node = self.node(path)?;
        Ok(NodeView {
            stat: node.stat(),
            contents: node.contents.clone(),
        })
    }

    pub fn stat(&self, path: &NodePath) -> Result<NodeStat, QueryError> {
        Ok(self.node(path)?.stat())
    }

    /// A directory's children, in path order.
    pub fn children(&self, path: &NodePath) -> Result<Vec<NodePath>, QueryError> {
        if self.node(path)?.kind != crate::NodeKind::Directory {
            return Err(QueryError::NotADirectory(path.clone()));
        }
        Ok(self.child_paths(path))
    }

    /// Whether `sequencer`'s grant is still held: the node exists with the same instance and a
    /// current holder holds it in the same mode under the same generation.
    pub fn check_sequencer(&self, sequencer: &Sequencer) -> Result<(), SequencerInvalid> {
        let node = self
            .state
            .nodes
            .get(&sequencer.path)
            .ok_or(SequencerInvalid::NodeAbsent)?;
        if node.instance != sequencer.instance {
            return Err(SequencerInvalid::InstanceChanged);
        }
        let holders = self.state.locks.get(&sequencer.path).map(|l| &l.holders);
        let any_generation = self.bugs().check_sequencer_ignores_generation;
        let held = match holders {
            None | Some(Holders::Free) => false,
            Some(Holders::Exclusive { generation, .. }) => {
                sequencer.mode == crate::LockMode::Exclusive
                    && (*generation == sequencer.lock_generation || any_generation)
            }
            Some(Holders::Shared(map)) => {
                sequencer.mode == crate::LockMode::Shared
                    && map
                        .values()
                        .any(|g| *g == sequencer.lock_generation || any_generation)
            }
        };
        if held {
            Ok(())
        } else {
            Err(SequencerInvalid::NotHeld)
        }
    }

    pub fn session(&self, session: SessionId) -> Option<SessionInfo> {
        let s = self.state.sessions.get(&session)?;
        Some(SessionInfo {
            session,
            lease_ms: s.lease_ms,
            lease_until_ms: s.lease_until_ms,
            locks: Index::of(&self.index.locks, session),
            ephemerals: Index::of(&self.index.ephemerals, session),
            watches: Index::of(&self.index.watches, session),
        })
    }

    /// Every live session, in id order.
    pub fn sessions(&self) -> Vec<SessionId> {
        self.state.sessions.keys().copied().collect()
    }

    /// A node's lock: holders, queue, lock-delay.
    pub fn lock(&self, path: &NodePath) -> Result<LockInfo, QueryError> {
        self.node(path)?;
        let Some(lock) = self.state.locks.get(path) else {
            return Ok(LockInfo::default());
        };
        let holders = match &lock.holders {
            Holders::Free => Vec::new(),
            Holders::Exclusive {
                session,
                generation,
            } => vec![(*session, crate::LockMode::Exclusive, *generation)],
            Holders::Shared(map) => map
                .iter()
                .map(|(s, g)| (*s, crate::LockMode::Shared, *g))
                .collect(),
        };
        Ok(LockInfo {
            holders,
            waiters: lock.waiters.iter().map(|w| (w.session, w.mode)).collect(),
            delay_until_ms: lock.delay_until_ms,
        })
    }

    /// The earliest time at which a `Tick` would change something (a lease ends or a
    /// lock-delay lapses): when the master should propose its next `Tick` at the latest.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        let leases = self.state.sessions.values().map(|s| s.lease_until_ms);
        let delays = self.state.locks.values().filter_map(|l| l.delay_until_ms);
        leases.chain(delays).min()
    }

    /// Panics with the first broken invariant: for tests and the simulator, after every step.
    pub fn check_invariants(&self) {
        if let Some(why) = self.state.invalid() {
            panic!(
                "chubby-db invariant broken at {}: {why}",
                self.state.applied
            );
        }
        assert_eq!(
            self.index,
            Index::build(&self.state),
            "chubby-db derived index out of step with the state"
        );
        assert!(self.journal.is_empty() && self.events.is_empty());
    }

    #[cfg(feature = "planted-bugs")]
    pub fn plant_bugs(&mut self, bugs: PlantedBugs) {
        self.planted = bugs;
    }

    /// Planted bug `forget_replies`: drops the cached reply of `(session, seq)`.
    fn forget_reply(&mut self, session: SessionId, seq: crate::RequestSeq) {
        let cached = self
            .state
            .sessions
            .get(&session)
            .is_some_and(|s| s.replies.contains_key(&seq));
        if cached {
            self.session_mut(session).replies.remove(&seq);
        }
    }

    pub(crate) fn bugs(&self) -> PlantedBugs {
        #[cfg(feature = "planted-bugs")]
        {
            self.planted
        }
        #[cfg(not(feature = "planted-bugs"))]
        {
            PlantedBugs::default()
        }
    }

    fn node(&self, path: &NodePath) -> Result<&crate::state::Node, QueryError> {
        self.state
            .nodes
            .get(path)
            .map(|n| &**n)
            .ok_or_else(|| QueryError::NodeAbsent(path.clone()))
    }

    /// The children of `parent`: walk its subtree (one contiguous key range, see `path.rs`),
    /// jumping over each child's own subtree.
    pub(crate) fn child_paths(&self, parent: &NodePath) -> Vec<NodePath> {
        let mut children = Vec::new();
        let mut after = parent.clone();
        loop {
            let next = self
                .state
                .nodes
                .range::<NodePath, _>((Bound::Excluded(&after), Bound::Unbounded))
                .next();
            match next {
                Some((path, _)) if path.is_descendant_of(parent) => {
                    children.push(path.clone());
                    after = path.subtree_end();
                }
                _ => return children,
            }
        }
    }

    pub(crate) fn has_children(&self, path: &NodePath) -> bool {
        self.state
            .nodes
            .range::<NodePath, _>((Bound::Excluded(path), Bound::Unbounded))
            .next()
            .is_some_and(|(next, _)| next.is_descendant_of(path))
    }

    pub(crate) fn session_mut(&mut self, session: SessionId) -> &mut Session {
        let sessions = Arc::make_mut(&mut self.state.sessions);
        let entry = sessions.get_mut(&session).expect("session is live");
        Arc::make_mut(entry)
    }

    /// Queues an event for a live session (events to ended sessions are dropped).
    pub(crate) fn emit(&mut self, session: SessionId, kind: EventKind) {
        if !self.state.sessions.contains_key(&session) {
            return;
        }
        let id = EventId {
            slot: self.state.applied,
            index: self.state.next_event,
        };
        self.state.next_event += 1;
        self.events.push(Event { id, session, kind });
    }

    /// Queues `kind` for every session watching `path` with an interest `wants` accepts.
    pub(crate) fn notify(
        &mut self,
        path: &NodePath,
        wants: impl Fn(WatchKinds) -> bool,
        kind: EventKind,
    ) {
        let first = (path.clone(), SessionId(0));
        let last = (path.clone(), SessionId(u64::MAX));
        let watchers: Vec<SessionId> = self
            .state
            .watches
            .range(first..=last)
            .filter(|(_, kinds)| wants(**kinds))
            .map(|((_, session), _)| *session)
            .collect();
        for session in watchers {
            self.emit(session, kind.clone());
        }
    }

    /// Whether a lock-delay ending at `until_ms` still holds grants back.
    pub(crate) fn delay_active(&self, until_ms: u64) -> bool {
        until_ms > self.state.now_ms && !self.bugs().ignore_lock_delay
    }

    /// An idle lock for a node that has no entry.
    pub(crate) fn lock_state(&self, path: &NodePath) -> LockState {
        self.state
            .locks
            .get(path)
            .map(|l| (**l).clone())
            .unwrap_or_else(LockState::idle)
    }
}

/// A fresh copy with the same state (cheap: the tables are shared until either side writes).
impl Clone for Database {
    fn clone(&self) -> Database {
        assert!(self.journal.is_empty() && self.events.is_empty());
        Database {
            state: self.state.clone(),
            index: self.index.clone(),
            journal: Vec::new(),
            events: Vec::new(),
            #[cfg(feature = "planted-bugs")]
            planted: self.planted,
        }
    }
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database")
            .field("applied", &self.state.applied)
            .field("now_ms", &self.state.now_ms)
            .field("master_epoch", &self.state.master_epoch)
            .field("nodes", &self.state.nodes.len())
            .field("sessions", &self.state.sessions.len())
            .field("locks", &self.state.locks.len())
            .field("watches", &self.state.watches.len())
            .finish()
    }
}
