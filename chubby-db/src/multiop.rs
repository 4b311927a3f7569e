//! MultiOp [PML 5.6]: exactly-once bookkeeping, guard evaluation, and the all-or-nothing run of
//! the chosen branch.

use crate::command::{MultiOp, Op, Test};
use crate::database::Database;
use crate::namespace::CreateArgs;
use crate::reply::{Branch, MultiOpReply, OpError, OpOutput, OpResult, Rejection, Reply};
use crate::types::{RequestSeq, SessionId};

impl Database {
    /// A request of a live session. A request number seen before answers the remembered reply
    /// and changes nothing; one below the reply cache is refused; a new one runs and its reply
    /// (whatever it is, even a limit rejection) is remembered.
    pub(crate) fn on_multi_op(
        &mut self,
        session: SessionId,
        seq: RequestSeq,
        op: &MultiOp,
    ) -> Reply {
        let Some(record) = self.state.sessions.get(&session) else {
            return Reply::Rejected(Rejection::SessionUnknown(session));
        };
        if let Some(reply) = record.replies.get(&seq) {
            return reply.clone();
        }
        if seq < record.forgotten_below {
            return Reply::Rejected(Rejection::SeqForgotten {
                seq,
                forgotten_below: record.forgotten_below,
            });
        }
        let reply = match op.invalid() {
            Some(rejection) => Reply::Rejected(rejection),
            None => Reply::MultiOp(self.run_multi_op(session, op)),
        };
        self.remember(session, seq, &reply);
        reply
    }

    /// Evaluates every guard test (no short cut, so each one's result is reported), then runs
    /// the chosen branch; the first op that fails undoes the ones before it.
    fn run_multi_op(&mut self, session: SessionId, op: &MultiOp) -> MultiOpReply {
        let guards: Vec<bool> = op.guard.iter().map(|test| self.test(test)).collect();
        let (branch, ops) = if guards.iter().all(|held| *held) {
            (Branch::Top, &op.top)
        } else {
            (Branch::Fop, &op.fop)
        };
        let journal_mark = self.journal.len();
        let events_mark = self.events.len();
        let next_event = self.state.next_event;
        let mut read_bytes = 0;
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            match self.run_op(session, op, &mut read_bytes) {
                Ok(output) => results.push(OpResult::Done(output)),
                Err(error) => {
                    self.rollback(journal_mark);
                    self.events.truncate(events_mark);
                    self.state.next_event = next_event;
                    results.fill(OpResult::Undone);
                    results.push(OpResult::Failed(error));
                    results.resize(ops.len(), OpResult::NotRun);
                    break;
                }
            }
        }
        MultiOpReply {
            branch,
            guards,
            ops: results,
        }
    }

    fn run_op(
        &mut self,
        session: SessionId,
        op: &Op,
        read_bytes: &mut usize,
    ) -> Result<OpOutput, OpError> {
        match op {
            Op::Create {
                path,
                kind,
                ephemeral,
                contents,
                lock_delay_ms,
            } => {
                let args = CreateArgs {
                    path,
                    kind: *kind,
                    ephemeral: *ephemeral,
                    contents,
                    lock_delay_ms: *lock_delay_ms,
                };
                self.op_create(session, args)
            }
            Op::Set { path, contents } => self.op_set(path, contents),
            Op::Delete { path } => self.op_delete(path),
            Op::Read { path } => self.op_read(path, read_bytes),
            Op::Acquire { path, mode, wait } => self.op_acquire(session, path, *mode, *wait),
            Op::Release { path } => self.op_release(session, path),
            Op::Watch { path, kinds } => self.op_watch(session, path, *kinds),
        }
    }

    /// Whether a guard test holds, against the state before the branch runs.
    pub(crate) fn test(&self, test: &Test) -> bool {
        let nodes = &self.state.nodes;
        match test {
            Test::Exists { path } => nodes.contains_key(path),
            Test::Absent { path } => !nodes.contains_key(path),
            Test::ContentGeneration {
                path,
                cmp,
                generation,
            } => nodes
                .get(path)
                .is_some_and(|n| cmp.holds(n.content_generation, *generation)),
            Test::ContentsEqual { path, contents } => {
                nodes.get(path).is_some_and(|n| *n.contents == contents[..])
            }
            Test::ChecksumEquals { path, checksum } => {
                nodes.get(path).is_some_and(|n| n.checksum == *checksum)
            }
            Test::LockHeldBy {
                path,
                session,
                mode,
            } => self
                .state
                .locks
                .get(path)
                .and_then(|l| l.holders.held_by(*session))
                .is_some_and(|(held, _)| held == *mode),
            Test::SequencerValid(sequencer) => self.check_sequencer(sequencer).is_ok(),
            Test::SessionAlive(session) => self.state.sessions.contains_key(session),
            Test::MasterEpochEquals(epoch) => self.state.master_epoch == Some(*epoch),
        }
    }
}
