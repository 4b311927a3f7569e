//! A small harness over `Database`: one command per slot, invariants checked after every step,
//! request numbers handed out per session, events collected.

#![allow(dead_code)]

use chubby_db::{
    Command, Config, Database, Epoch, Event, EventKind, LockMode, MultiOp, MultiOpReply, NodePath,
    Op, OpOutput, OpResult, Reply, RequestSeq, Sequencer, SessionId, Slot, WatchKinds,
};
use std::collections::BTreeMap;

pub fn p(path: &str) -> NodePath {
    NodePath::new(path).unwrap()
}

pub struct Harness {
    pub db: Database,
    pub slot: u64,
    pub now_ms: u64,
    pub seqs: BTreeMap<SessionId, u64>,
    /// Events of the last command.
    pub events: Vec<Event>,
}

impl Harness {
    pub fn new() -> Harness {
        Harness::with_config(Config::default())
    }

    pub fn with_config(config: Config) -> Harness {
        Harness {
            db: Database::new(config),
            slot: 0,
            now_ms: 1_000,
            seqs: BTreeMap::new(),
            events: Vec::new(),
        }
    }

    /// Applies `command` in the next slot.
    pub fn apply(&mut self, command: Command) -> Reply {
        self.slot += 1;
        let applied = self.db.apply(Slot(self.slot), &command);
        self.db.check_invariants();
        self.events = applied.events;
        applied.reply
    }

    pub fn open(&mut self) -> SessionId {
        match self.apply(Command::OpenSession {
            now_ms: self.now_ms,
            lease_ms: None,
        }) {
            Reply::SessionOpened { session, .. } => session,
            other => panic!("open failed: {other:?}"),
        }
    }

    pub fn next_seq(&mut self, session: SessionId) -> RequestSeq {
        let seq = self.seqs.entry(session).or_insert(0);
        *seq += 1;
        RequestSeq(*seq)
    }

    /// Runs a MultiOp under a fresh request number; returns the raw reply.
    pub fn request(&mut self, session: SessionId, op: MultiOp) -> Reply {
        let seq = self.next_seq(session);
        self.apply(Command::MultiOp { session, seq, op })
    }

    pub fn multi(&mut self, session: SessionId, op: MultiOp) -> MultiOpReply {
        match self.request(session, op) {
            Reply::MultiOp(reply) => reply,
            other => panic!("not a MultiOp reply: {other:?}"),
        }
    }

    /// Runs unguarded ops; returns each op's result.
    pub fn ops(&mut self, session: SessionId, ops: Vec<Op>) -> Vec<OpResult> {
        self.multi(
            session,
            MultiOp {
                guard: vec![],
                top: ops,
                fop: vec![],
            },
        )
        .ops
    }

    /// Runs one op and returns its result.
    pub fn op(&mut self, session: SessionId, op: Op) -> OpResult {
        self.ops(session, vec![op]).remove(0)
    }

    /// Runs one op that must succeed.
    pub fn ok(&mut self, session: SessionId, op: Op) -> OpOutput {
        match self.op(session, op.clone()) {
            OpResult::Done(output) => output,
            other => panic!("{op:?} failed: {other:?}"),
        }
    }

    pub fn create(&mut self, session: SessionId, path: &str, contents: &[u8]) {
        self.ok(session, Op::create_file(p(path), contents.to_vec()));
    }

    pub fn mkdir(&mut self, session: SessionId, path: &str) {
        self.ok(session, Op::create_directory(p(path)));
    }

    pub fn acquire(
        &mut self,
        session: SessionId,
        path: &str,
        mode: LockMode,
        wait: bool,
    ) -> OpResult {
        self.op(
            session,
            Op::Acquire {
                path: p(path),
                mode,
                wait,
            },
        )
    }

    /// Acquires a lock that must be granted at once.
    pub fn lock(&mut self, session: SessionId, path: &str, mode: LockMode) -> Sequencer {
        match self.acquire(session, path, mode, false) {
            OpResult::Done(OpOutput::Acquired(sequencer)) => sequencer,
            other => panic!("lock {path} not granted: {other:?}"),
        }
    }

    pub fn release(&mut self, session: SessionId, path: &str) -> OpResult {
        self.op(session, Op::Release { path: p(path) })
    }

    pub fn watch(&mut self, session: SessionId, path: &str, kinds: WatchKinds) {
        self.ok(
            session,
            Op::Watch {
                path: p(path),
                kinds,
            },
        );
    }

    pub fn keep_alive(&mut self, session: SessionId) -> Reply {
        self.apply(Command::KeepAlive {
            session,
            now_ms: self.now_ms,
        })
    }

    /// Moves the master's clock to `now_ms` and proposes a Tick; returns the expired sessions.
    pub fn tick(&mut self, now_ms: u64) -> Vec<SessionId> {
        self.now_ms = now_ms;
        match self.apply(Command::Tick { now_ms }) {
            Reply::Ticked { expired } => expired,
            other => panic!("tick: {other:?}"),
        }
    }

    pub fn master_changed(&mut self, epoch: u64, now_ms: u64) -> Reply {
        self.now_ms = now_ms;
        self.apply(Command::MasterChanged {
            epoch: Epoch(epoch),
            now_ms,
        })
    }

    /// The last command's events for `session`.
    pub fn events_for(&self, session: SessionId) -> Vec<EventKind> {
        self.events
            .iter()
            .filter(|e| e.session == session)
            .map(|e| e.kind.clone())
            .collect()
    }

    pub fn exists(&self, path: &str) -> bool {
        self.db.stat(&p(path)).is_ok()
    }
}

/// The output of a successful op result.
pub fn done(result: &OpResult) -> &OpOutput {
    match result {
        OpResult::Done(output) => output,
        other => panic!("op did not succeed: {other:?}"),
    }
}
