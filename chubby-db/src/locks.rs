//! Advisory locks: try and blocking acquire with a fair FIFO queue, release, grants with
//! sequencers, and lock-delay after a holder's session expires.
//!
//! The queue is strictly first come, first served: a request is granted only from the head, so a
//! shared request behind a waiting exclusive one waits even though the current holders are
//! shared. A try-acquire succeeds only if nobody is queued, the lock is not in lock-delay and
//! the holders admit its mode.

use crate::command::{LockMode, Sequencer};
use crate::database::Database;
use crate::event::EventKind;
use crate::limits::LOCK_WAITERS_MAX;
use crate::path::NodePath;
use crate::reply::{OpError, OpOutput};
use crate::session::Ending;
use crate::state::{Holders, LockState, Node, Waiter};
use crate::types::SessionId;
use std::collections::BTreeMap;
use std::sync::Arc;

impl Database {
    pub(crate) fn op_acquire(
        &mut self,
        session: SessionId,
        path: &NodePath,
        mode: LockMode,
        wait: bool,
    ) -> Result<OpOutput, OpError> {
        if !self.state.nodes.contains_key(path) {
            return Err(OpError::NodeAbsent);
        }
        let mut lock = self.lock_state(path);
        // A lock-delay that lapsed since the last Tick lets the queue move first, so a newcomer
        // never overtakes the requests already waiting.
        self.advance_queue(path, &mut lock);
        if lock.holders.held_by(session).is_some() {
            return Err(OpError::AlreadyHolder);
        }
        if lock.waiters.iter().any(|w| w.session == session) {
            return Err(OpError::AlreadyWaiting);
        }
        let delayed = lock.delay_until_ms.filter(|t| self.delay_active(*t));
        if self.bugs().exclusive_lock_stolen
            && mode == LockMode::Exclusive
            && lock.waiters.is_empty()
            && matches!(lock.holders, Holders::Exclusive { .. })
        {
            // Planted bug: the holder is dropped without a word.
            lock.holders = Holders::Free;
        }
        if lock.waiters.is_empty() && delayed.is_none() && lock.holders.admit(mode) {
            let sequencer = self.grant(path, &mut lock, session, mode);
            self.put_lock(path, lock);
            return Ok(OpOutput::Acquired(sequencer));
        }
        if !wait {
            return Err(match delayed {
                Some(until_ms) => OpError::LockDelayed { until_ms },
                None => OpError::LockBusy,
            });
        }
        if lock.waiters.len() >= LOCK_WAITERS_MAX {
            return Err(OpError::LockQueueFull {
                max: LOCK_WAITERS_MAX,
            });
        }
        let ahead = lock.waiters.len() as u64;
        lock.waiters.push_back(Waiter { session, mode });
        self.put_lock(path, lock);
        let conflict = EventKind::LockConflict {
            path: path.clone(),
            mode,
        };
        self.notify(path, |k| k.lock_conflict, conflict);
        Ok(OpOutput::Queued { ahead })
    }

    /// Releases `session`'s hold (no lock-delay: a clean release) or withdraws its request.
    pub(crate) fn op_release(
        &mut self,
        session: SessionId,
        path: &NodePath,
    ) -> Result<OpOutput, OpError> {
        if !self.state.nodes.contains_key(path) {
            return Err(OpError::NodeAbsent);
        }
        let mut lock = self.lock_state(path);
        let output = if lock.holders.held_by(session).is_some() {
            lock.holders.remove(session);
            OpOutput::Released
        } else if let Some(at) = lock.waiters.iter().position(|w| w.session == session) {
            lock.waiters.remove(at);
            OpOutput::WaitCancelled
        } else {
            return Err(OpError::NotHolder);
        };
        self.advance_queue(path, &mut lock);
        self.put_lock(path, lock);
        Ok(output)
    }

    /// A session ended: drop its hold or its queued request on `path`. An expired holder leaves
    /// the lock in lock-delay, so work it started before it lost its lease cannot race the next
    /// holder; a closed one does not.
    pub(crate) fn drop_lock_claim(&mut self, path: &NodePath, session: SessionId, ending: Ending) {
        let mut lock = self.lock_state(path);
        if lock.holders.held_by(session).is_some() {
            lock.holders.remove(session);
            let delay_ms = self.state.nodes[path].lock_delay_ms;
            if ending == Ending::Expired && delay_ms > 0 {
                let until = self.state.now_ms.saturating_add(delay_ms);
                lock.delay_until_ms = Some(lock.delay_until_ms.map_or(until, |t| t.max(until)));
            }
        } else {
            lock.waiters.retain(|w| w.session != session);
        }
        self.advance_queue(path, &mut lock);
        self.put_lock(path, lock);
    }

    /// On Tick: every lock whose lock-delay lapsed grants what its queue allows.
    pub(crate) fn end_lapsed_lock_delays(&mut self) {
        let lapsed: Vec<NodePath> = self
            .state
            .locks
            .iter()
            .filter(|(_, l)| l.delay_until_ms.is_some_and(|t| !self.delay_active(t)))
            .map(|(path, _)| path.clone())
            .collect();
        for path in lapsed {
            let mut lock = self.lock_state(&path);
            self.advance_queue(&path, &mut lock);
            self.put_lock(&path, lock);
        }
    }

    /// Clears a lapsed lock-delay and grants requests from the head of the queue for as long as
    /// the holders admit them. The caller stores `lock`.
    pub(crate) fn advance_queue(&mut self, path: &NodePath, lock: &mut LockState) {
        if let Some(until) = lock.delay_until_ms {
            if self.delay_active(until) {
                return;
            }
            lock.delay_until_ms = None;
        }
        while let Some(head) = lock.waiters.front().copied() {
            if !lock.holders.admit(head.mode) {
                break;
            }
            lock.waiters.pop_front();
            let sequencer = self.grant(path, lock, head.session, head.mode);
            self.emit(head.session, EventKind::LockGranted(sequencer));
        }
    }

    /// Makes `session` a holder under a new lock generation. The caller stores `lock`.
    fn grant(
        &mut self,
        path: &NodePath,
        lock: &mut LockState,
        session: SessionId,
        mode: LockMode,
    ) -> Sequencer {
        assert!(lock.holders.admit(mode), "granting a conflicting lock");
        assert!(lock.holders.held_by(session).is_none(), "granting twice");
        let old = self.state.nodes[path].clone();
        let generation = old.lock_generation.saturating_add(1);
        let node = Node {
            lock_generation: generation,
            ..(*old).clone()
        };
        let instance = node.instance;
        self.put_node(path, Some(Arc::new(node)));
        match (&mut lock.holders, mode) {
            (Holders::Shared(map), LockMode::Shared) => {
                map.insert(session, generation);
            }
            (holders, LockMode::Shared) => {
                *holders = Holders::Shared(BTreeMap::from([(session, generation)]));
            }
            (holders, LockMode::Exclusive) => {
                *holders = Holders::Exclusive {
                    session,
                    generation,
                };
            }
        }
        let acquired = EventKind::LockAcquired {
            path: path.clone(),
            holder: session,
            mode,
            lock_generation: generation,
        };
        self.notify(path, |k| k.lock_acquired, acquired);
        Sequencer {
            path: path.clone(),
            instance,
            mode,
            lock_generation: generation,
        }
    }
}

impl Holders {
    /// Drops `session`'s hold, if any.
    pub(crate) fn remove(&mut self, session: SessionId) {
        match self {
            Holders::Exclusive {
                session: holder, ..
            } if *holder == session => {
                *self = Holders::Free;
            }
            Holders::Shared(map) => {
                map.remove(&session);
                if map.is_empty() {
                    *self = Holders::Free;
                }
            }
            _ => {}
        }
    }
}
