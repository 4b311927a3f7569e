//! The replicated state, the indexes derived from it, and the few primitives every change goes
//! through.
//!
//! [`State`] is everything replicas must agree on: it is what a snapshot writes and what the digest
//! hashes (postcard encoding, maps in key order). Its tables are `Arc`-shared maps of `Arc`-shared
//! values, so a snapshot is a handful of reference-count bumps; the first change to a table
//! after a snapshot copies that table's map of pointers (`Arc::make_mut`), never the contents.
//!
//! Every change to `nodes`, `locks` and `watches` goes through `put_node`, `put_lock` and
//! `put_watch`, which keep the derived [`Index`] in step and record the old value in the undo
//! journal, so a failing MultiOp branch rolls back by replaying the journal backwards.

use crate::command::{LockMode, NodeKind, WatchKinds};
use crate::database::Database;
use crate::hash::content_checksum;
use crate::limits::{
    CONTENTS_BYTES_MAX_CEILING, CONTENTS_BYTES_MAX_DEFAULT, LEASE_MS_DEFAULT, LEASE_MS_MAX,
    LEASE_MS_MIN, LOCK_DELAY_MS_DEFAULT, LOCK_DELAY_MS_MAX, LOCK_WAITERS_MAX, SESSION_REPLIES_MAX,
    SESSION_WATCHES_MAX,
};
use crate::path::NodePath;
use crate::reply::{NodeStat, Reply};
use crate::types::{Epoch, RequestSeq, SessionId, Slot};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

/// Settings every replica must share. Part of the replicated state: it travels in snapshots and
/// feeds the digest, and `restore` takes it from the snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Largest contents of one file, in bytes; at most [`CONTENTS_BYTES_MAX_CEILING`].
    pub contents_bytes_max: u32,
    /// Lease of a session that does not ask for one.
    pub lease_ms_default: u64,
    /// Lock-delay of a node created without one; at most [`LOCK_DELAY_MS_MAX`].
    pub lock_delay_ms_default: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            contents_bytes_max: CONTENTS_BYTES_MAX_DEFAULT,
            lease_ms_default: LEASE_MS_DEFAULT,
            lock_delay_ms_default: LOCK_DELAY_MS_DEFAULT,
        }
    }
}

impl Config {
    /// What is wrong with the settings, if anything.
    pub fn invalid(&self) -> Option<&'static str> {
        if self.contents_bytes_max > CONTENTS_BYTES_MAX_CEILING {
            return Some("contents_bytes_max above CONTENTS_BYTES_MAX_CEILING");
        }
        if !(LEASE_MS_MIN..=LEASE_MS_MAX).contains(&self.lease_ms_default) {
            return Some("lease_ms_default outside LEASE_MS_MIN..=LEASE_MS_MAX");
        }
        if self.lock_delay_ms_default > LOCK_DELAY_MS_MAX {
            return Some("lock_delay_ms_default above LOCK_DELAY_MS_MAX");
        }
        None
    }
}

/// Everything replicas agree on.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct State {
    pub config: Config,
    /// The slot of the last command applied.
    pub applied: Slot,
    /// Index of the next event within `applied`'s slot.
    pub next_event: u64,
    /// The master's clock: the largest `now_ms` any applied command carried.
    pub now_ms: u64,
    /// The epoch the last `MasterChanged` named.
    pub master_epoch: Option<Epoch>,
    /// Invariant: above every session id ever handed out.
    pub next_session: u64,
    /// Invariant: above every node instance ever handed out.
    pub next_instance: u64,
    /// Invariant: the root exists; every other node's parent exists and is a permanent directory.
    pub nodes: Arc<BTreeMap<NodePath, Arc<Node>>>,
    /// Only locks that are held, waited for or in lock-delay; invariant: each on an existing node.
    pub locks: Arc<BTreeMap<NodePath, Arc<LockState>>>,
    pub sessions: Arc<BTreeMap<SessionId, Arc<Session>>>,
    /// Interest of a live session in a path (which need not exist); invariant: never empty.
    pub watches: Arc<BTreeMap<(NodePath, SessionId), WatchKinds>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Node {
    pub kind: NodeKind,
    /// Invariant: a live session.
    pub ephemeral_owner: Option<SessionId>,
    pub instance: u64,
    /// Invariant: >= 1.
    pub content_generation: u64,
    /// The generation of the latest grant of this node's lock; 0 if never granted.
    pub lock_generation: u64,
    /// Invariant: <= LOCK_DELAY_MS_MAX.
    pub lock_delay_ms: u64,
    /// Invariant: `content_checksum(&contents)`.
    pub checksum: u64,
    /// Invariant: empty for a directory; at most `contents_bytes_max` bytes.
    #[serde(with = "chubby_proto::types::shared_bytes")]
    pub contents: Arc<[u8]>,
}

/// Who holds a lock. The variants own their data, so "exclusive with two holders" cannot be said.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Holders {
    Free,
    Exclusive {
        session: SessionId,
        generation: u64,
    },
    /// Invariant: not empty; holder -> generation of its grant.
    Shared(BTreeMap<SessionId, u64>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Waiter {
    pub session: SessionId,
    pub mode: LockMode,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LockState {
    pub holders: Holders,
    /// FIFO. Invariant: no session twice, no holder; at most LOCK_WAITERS_MAX. Invariant: the
    /// head is not grantable unless the lock has a (possibly lapsed) lock-delay.
    pub waiters: VecDeque<Waiter>,
    /// No grant before this time. Invariant: <= now_ms + LOCK_DELAY_MS_MAX. A lapsed delay
    /// (<= now_ms) is cleared, and its waiters granted, by the next Tick or lock change.
    pub delay_until_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Session {
    pub lease_ms: u64,
    pub lease_until_ms: u64,
    /// Replies to the highest request numbers applied; invariant: at most SESSION_REPLIES_MAX,
    /// every key >= forgotten_below.
    pub replies: BTreeMap<RequestSeq, Reply>,
    /// Requests below this are refused: their replies were dropped from the cache.
    pub forgotten_below: RequestSeq,
}

/// Per-session indexes derived from the state, so ending a session touches only what it owns.
/// Never serialized: `restore` rebuilds them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Index {
    pub ephemerals: BTreeSet<(SessionId, NodePath)>,
    /// Locks held or waited for.
    pub locks: BTreeSet<(SessionId, NodePath)>,
    pub watches: BTreeSet<(SessionId, NodePath)>,
}

/// The old value of one changed entry, to put back if the MultiOp branch fails.
#[derive(Debug)]
pub(crate) enum Undo {
    Node(NodePath, Option<Arc<Node>>),
    Lock(NodePath, Option<Arc<LockState>>),
    Watch((NodePath, SessionId), Option<WatchKinds>),
    NextInstance(u64),
}

impl State {
    pub fn new(config: Config) -> State {
        assert!(config.invalid().is_none(), "invalid config: {config:?}");
        let root = Node {
            kind: NodeKind::Directory,
            ephemeral_owner: None,
            instance: 1,
            content_generation: 1,
            lock_generation: 0,
            lock_delay_ms: config.lock_delay_ms_default,
            checksum: content_checksum(&[]),
            contents: Arc::from(&[][..]),
        };
        State {
            config,
            applied: Slot(0),
            next_event: 0,
            now_ms: 0,
            master_epoch: None,
            next_session: 1,
            next_instance: 2,
            nodes: Arc::new(BTreeMap::from([(NodePath::root(), Arc::new(root))])),
            locks: Arc::default(),
            sessions: Arc::default(),
            watches: Arc::default(),
        }
    }

    /// The first broken invariant, if any. Runs on every restored snapshot (a checksummed
    /// snapshot that decodes but breaks one is `Invalid`) and after every step in tests.
    pub fn invalid(&self) -> Option<&'static str> {
        if let Some(why) = self.config.invalid() {
            return Some(why);
        }
        self.invalid_nodes()
            .or_else(|| self.invalid_locks())
            .or_else(|| self.invalid_sessions())
            .or_else(|| self.invalid_watches())
    }

    fn invalid_nodes(&self) -> Option<&'static str> {
        let Some(root) = self.nodes.get(&NodePath::root()) else {
            return Some("the root is absent");
        };
        if root.kind != NodeKind::Directory || root.ephemeral_owner.is_some() {
            return Some("the root is not a permanent directory");
        }
        for (path, node) in self.nodes.iter() {
            if let Some(parent) = path.parent() {
                match self.nodes.get(&parent) {
                    None => return Some("a node's parent is absent"),
                    Some(p) if p.kind != NodeKind::Directory => {
                        return Some("a node's parent is not a directory")
                    }
                    Some(p) if p.ephemeral_owner.is_some() => {
                        return Some("a node's parent is ephemeral")
                    }
                    Some(_) => {}
                }
            }
            if let Some(why) = self.invalid_node(node) {
                return Some(why);
            }
        }
        None
    }

    fn invalid_node(&self, node: &Node) -> Option<&'static str> {
        if let Some(owner) = node.ephemeral_owner {
            if !self.sessions.contains_key(&owner) {
                return Some("an ephemeral node's owner is not a live session");
            }
        }
        if node.instance == 0 || node.instance >= self.next_instance {
            return Some("a node's instance is not below next_instance");
        }
        if node.content_generation == 0 || node.lock_delay_ms > LOCK_DELAY_MS_MAX {
            return Some("a node's content generation or lock-delay is out of range");
        }
        if node.kind == NodeKind::Directory && !node.contents.is_empty() {
            return Some("a directory has contents");
        }
        if node.contents.len() > self.config.contents_bytes_max as usize {
            return Some("a file's contents exceed contents_bytes_max");
        }
        if node.checksum != content_checksum(&node.contents) {
            return Some("a node's checksum does not match its contents");
        }
        None
    }

    fn invalid_locks(&self) -> Option<&'static str> {
        for (path, lock) in self.locks.iter() {
            let Some(node) = self.nodes.get(path) else {
                return Some("a lock's node is absent");
            };
            let holders = lock.holder_sessions();
            if holders.iter().any(|s| !self.sessions.contains_key(s)) {
                return Some("a lock holder is not a live session");
            }
            match &lock.holders {
                Holders::Free => {}
                Holders::Exclusive { generation, .. } if *generation != node.lock_generation => {
                    return Some("an exclusive holder's generation is not the node's latest")
                }
                Holders::Exclusive { .. } => {}
                Holders::Shared(map) => {
                    let generations: BTreeSet<u64> = map.values().copied().collect();
                    if map.is_empty() || generations.len() != map.len() {
                        return Some("shared holders are empty or share a generation");
                    }
                    if generations
                        .iter()
                        .any(|g| *g == 0 || *g > node.lock_generation)
                    {
                        return Some("a shared holder's generation is out of range");
                    }
                }
            }
            if let Some(why) = self.invalid_queue(lock, &holders) {
                return Some(why);
            }
        }
        None
    }

    fn invalid_queue(&self, lock: &LockState, holders: &[SessionId]) -> Option<&'static str> {
        let waiters: BTreeSet<SessionId> = lock.waiters.iter().map(|w| w.session).collect();
        if waiters.len() != lock.waiters.len() || lock.waiters.len() > LOCK_WAITERS_MAX {
            return Some("a lock queue holds a session twice or is too long");
        }
        if waiters
            .iter()
            .any(|s| holders.contains(s) || !self.sessions.contains_key(s))
        {
            return Some("a lock waiter holds the lock or is not a live session");
        }
        let head_grantable = lock
            .waiters
            .front()
            .is_some_and(|w| lock.holders.admit(w.mode));
        if head_grantable && lock.delay_until_ms.is_none() {
            return Some("a lock's head waiter is grantable but waits");
        }
        if lock
            .delay_until_ms
            .is_some_and(|t| t > self.now_ms.saturating_add(LOCK_DELAY_MS_MAX))
        {
            return Some("a lock-delay ends too far in the future");
        }
        if lock.holders == Holders::Free && lock.waiters.is_empty() && lock.delay_until_ms.is_none()
        {
            return Some("an idle lock is kept");
        }
        None
    }

    fn invalid_sessions(&self) -> Option<&'static str> {
        // Ids start at 1: with `next_session` at 0 the next session would get the invalid id 0.
        if self.next_session == 0 {
            return Some("next_session is 0");
        }
        for (id, session) in self.sessions.iter() {
            if id.0 == 0 || id.0 >= self.next_session {
                return Some("a session id is not below next_session");
            }
            if !(LEASE_MS_MIN..=LEASE_MS_MAX).contains(&session.lease_ms) {
                return Some("a session's lease is out of range");
            }
            if session.replies.len() > SESSION_REPLIES_MAX {
                return Some("a session's reply cache is over its bound");
            }
            if session
                .replies
                .keys()
                .next()
                .is_some_and(|seq| *seq < session.forgotten_below)
            {
                return Some("a session remembers a reply below forgotten_below");
            }
        }
        None
    }

    fn invalid_watches(&self) -> Option<&'static str> {
        let mut per_session: BTreeMap<SessionId, usize> = BTreeMap::new();
        for ((_, session), kinds) in self.watches.iter() {
            if kinds.is_empty() || !self.sessions.contains_key(session) {
                return Some("a watch is empty or not a live session's");
            }
            *per_session.entry(*session).or_default() += 1;
        }
        if per_session.values().any(|n| *n > SESSION_WATCHES_MAX) {
            return Some("a session watches too many paths");
        }
        None
    }
}

impl Node {
    pub fn stat(&self) -> NodeStat {
        NodeStat {
            kind: self.kind,
            ephemeral_owner: self.ephemeral_owner,
            instance: self.instance,
            content_generation: self.content_generation,
            lock_generation: self.lock_generation,
            checksum: self.checksum,
            contents_bytes: self.contents.len() as u64,
            lock_delay_ms: self.lock_delay_ms,
        }
    }
}

impl Holders {
    /// Whether a request for `mode` is compatible with the current holders.
    pub fn admit(&self, mode: LockMode) -> bool {
        match self {
            Holders::Free => true,
            Holders::Exclusive { .. } => false,
            Holders::Shared(_) => mode == LockMode::Shared,
        }
    }

    /// The holder's mode and grant generation.
    pub fn held_by(&self, session: SessionId) -> Option<(LockMode, u64)> {
        match self {
            Holders::Free => None,
            Holders::Exclusive {
                session: holder,
                generation,
            } => (*holder == session).then_some((LockMode::Exclusive, *generation)),
            Holders::Shared(map) => map.get(&session).map(|g| (LockMode::Shared, *g)),
        }
    }
}

impl LockState {
    pub fn idle() -> LockState {
        LockState {
            holders: Holders::Free,
            waiters: VecDeque::new(),
            delay_until_ms: None,
        }
    }

    pub fn holder_sessions(&self) -> Vec<SessionId> {
        match &self.holders {
            Holders::Free => Vec::new(),
            Holders::Exclusive { session, .. } => vec![*session],
            Holders::Shared(map) => map.keys().copied().collect(),
        }
    }

    /// Every session holding or waiting.
    fn sessions(&self) -> impl Iterator<Item = SessionId> + '_ {
        self.holder_sessions()
            .into_iter()
            .chain(self.waiters.iter().map(|w| w.session))
    }

    /// Whether the entry can be dropped: nothing held, queued or delayed (as of `now_ms`).
    fn is_idle(&self, now_ms: u64) -> bool {
        self.holders == Holders::Free
            && self.waiters.is_empty()
            && self.delay_until_ms.is_none_or(|t| t <= now_ms)
    }
}

impl Index {
    pub fn build(state: &State) -> Index {
        let mut index = Index::default();
        for (path, node) in state.nodes.iter() {
            if let Some(owner) = node.ephemeral_owner {
                index.ephemerals.insert((owner, path.clone()));
            }
        }
        for (path, lock) in state.locks.iter() {
            for session in lock.sessions() {
                index.locks.insert((session, path.clone()));
            }
        }
        for (path, session) in state.watches.keys() {
            index.watches.insert((*session, path.clone()));
        }
        index
    }

    /// The paths in `set` that belong to `session`, in path order.
    pub fn of(set: &BTreeSet<(SessionId, NodePath)>, session: SessionId) -> Vec<NodePath> {
        set.range((session, NodePath::root())..)
            .take_while(|(s, _)| *s == session)
            .map(|(_, path)| path.clone())
            .collect()
    }
}

/// The primitives. Only these touch `nodes`, `locks`, `watches` and `next_instance` while a
/// command is applied.
impl Database {
    pub(crate) fn put_node(&mut self, path: &NodePath, node: Option<Arc<Node>>) {
        let old = self.put_node_raw(path, node);
        self.journal.push(Undo::Node(path.clone(), old));
    }

    /// Stores `lock`, or drops the entry if the lock is idle.
    pub(crate) fn put_lock(&mut self, path: &NodePath, lock: LockState) {
        let lock = (!lock.is_idle(self.state.now_ms)).then(|| Arc::new(lock));
        let old = self.put_lock_raw(path, lock);
        self.journal.push(Undo::Lock(path.clone(), old));
    }

    pub(crate) fn put_watch(&mut self, path: &NodePath, session: SessionId, kinds: WatchKinds) {
        let key = (path.clone(), session);
        let kinds = (!kinds.is_empty()).then_some(kinds);
        let old = self.put_watch_raw(key.clone(), kinds);
        self.journal.push(Undo::Watch(key, old));
    }

    /// Hands out a new node instance number.
    pub(crate) fn take_instance(&mut self) -> u64 {
        let instance = self.state.next_instance;
        self.journal.push(Undo::NextInstance(instance));
        self.state.next_instance = self.state.next_instance.saturating_add(1);
        instance
    }

    /// Puts back every change journaled after `mark`, newest first.
    pub(crate) fn rollback(&mut self, mark: usize) {
        while self.journal.len() > mark {
            match self.journal.pop().expect("journal longer than mark") {
                Undo::Node(path, old) => {
                    self.put_node_raw(&path, old);
                }
                Undo::Lock(path, old) => {
                    self.put_lock_raw(&path, old);
                }
                Undo::Watch(key, old) => {
                    self.put_watch_raw(key, old);
                }
                Undo::NextInstance(next) => self.state.next_instance = next,
            }
        }
    }

    fn put_node_raw(&mut self, path: &NodePath, node: Option<Arc<Node>>) -> Option<Arc<Node>> {
        let new_owner = node.as_ref().and_then(|n| n.ephemeral_owner);
        let nodes = Arc::make_mut(&mut self.state.nodes);
        let old = match node {
            Some(node) => nodes.insert(path.clone(), node),
            None => nodes.remove(path),
        };
        if let Some(owner) = old.as_ref().and_then(|n| n.ephemeral_owner) {
            self.index.ephemerals.remove(&(owner, path.clone()));
        }
        if let Some(owner) = new_owner {
            self.index.ephemerals.insert((owner, path.clone()));
        }
        old
    }

    fn put_lock_raw(
        &mut self,
        path: &NodePath,
        lock: Option<Arc<LockState>>,
    ) -> Option<Arc<LockState>> {
        let locks = Arc::make_mut(&mut self.state.locks);
        let old = match &lock {
            Some(lock) => locks.insert(path.clone(), lock.clone()),
            None => locks.remove(path),
        };
        for session in old.iter().flat_map(|l| l.sessions()) {
            self.index.locks.remove(&(session, path.clone()));
        }
        for session in lock.iter().flat_map(|l| l.sessions()) {
            self.index.locks.insert((session, path.clone()));
        }
        old
    }

    fn put_watch_raw(
        &mut self,
        key: (NodePath, SessionId),
        kinds: Option<WatchKinds>,
    ) -> Option<WatchKinds> {
        let watches = Arc::make_mut(&mut self.state.watches);
        let index_key = (key.1, key.0.clone());
        match kinds {
            Some(kinds) => {
                self.index.watches.insert(index_key);
                watches.insert(key, kinds)
            }
            None => {
                self.index.watches.remove(&index_key);
                watches.remove(&key)
            }
        }
    }
}
