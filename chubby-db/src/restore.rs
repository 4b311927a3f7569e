//! Online restore: [`Command::Restore`](crate::Command::Restore) replaces the whole database with
//! a snapshot, through the log, so every replica does it at the same slot and stays equal.
//!
//! The rules, chosen for lock safety and for disaster recovery into a fresh cluster:
//!
//! - Refused (nothing changes) unless the database holds no node but the root, or `force`.
//! - The snapshot is checked as a catch-up snapshot is (magic, version, length, CRC-32, every
//!   invariant) and must fit this cluster's limits; a bad one is refused.
//! - Every live session ends (each is told `SessionExpired`); their locks, ephemeral nodes and
//!   watches go with the old namespace. The snapshot's own sessions, ephemeral nodes, locks and
//!   watches are not restored either: their clients belong to another time.
//! - Every restored node's instance number becomes its number in the snapshot plus an offset at
//!   least as large as the instance counter here and in the snapshot. A sequencer names a node
//!   instance, so no sequencer issued before the restore (here, or in the snapshot's cluster) can
//!   ever validate again, and instance numbers stay unique and increasing.
//! - Session ids continue above both counters, so a client of the snapshot's cluster cannot
//!   stumble onto a new session with its old id.
//! - What stays the cluster's own: its config (limits), applied slot, clock and master epoch.

use crate::database::Database;
use crate::event::EventKind;
use crate::reply::Reply;
use crate::snapshot;
use crate::state::State;
use chubby_proto::admin::{AdminRefusal, RestoreReport};
use std::collections::BTreeMap;
use std::sync::Arc;

impl Database {
    pub(crate) fn on_restore(&mut self, snapshot: &[u8], force: bool) -> Reply {
        let nodes_here = self.state.nodes.len().saturating_sub(1) as u64;
        if nodes_here > 0 && !force {
            return Reply::RestoreRefused(AdminRefusal::NotEmpty { nodes: nodes_here });
        }
        let restored = match snapshot::decode(snapshot) {
            Ok(state) => state,
            Err(error) => {
                return Reply::RestoreRefused(AdminRefusal::InvalidSnapshot {
                    why: error.to_string(),
                })
            }
        };
        let snapshot_slot = restored.applied.0;
        let (state, instance_offset) = match self.renumbered(restored) {
            Ok(renumbered) => renumbered,
            Err(why) => {
                return Reply::RestoreRefused(AdminRefusal::InvalidSnapshot {
                    why: why.to_string(),
                })
            }
        };
        let ended = self.sessions();
        for session in &ended {
            self.emit(*session, EventKind::SessionExpired);
        }
        let events = std::mem::take(&mut self.events);
        self.replace_state(state);
        self.events = events;
        Reply::Restored(RestoreReport {
            slot: self.state.applied.0,
            snapshot_slot,
            nodes: self.state.nodes.len() as u64,
            sessions_ended: ended.len() as u64,
            instance_offset,
            digest: self.digest(),
        })
    }

    /// The state to switch to: the snapshot's permanent nodes, renumbered above every instance
    /// handed out so far, under this cluster's config, slot, clock and epoch. Errs if the result
    /// would break an invariant (a file over this cluster's contents limit, say).
    fn renumbered(&self, snapshot: State) -> Result<(State, u64), &'static str> {
        let here = &self.state;
        let offset = here.next_instance.max(snapshot.next_instance);
        let next_instance = offset
            .checked_add(snapshot.next_instance)
            .ok_or("instance numbers would overflow")?;
        let nodes: BTreeMap<_, _> = snapshot
            .nodes
            .iter()
            .filter(|(_, node)| node.ephemeral_owner.is_none())
            .map(|(path, node)| {
                let mut node = (**node).clone();
                node.instance += offset;
                (path.clone(), Arc::new(node))
            })
            .collect();
        let state = State {
            config: here.config.clone(),
            applied: here.applied,
            next_event: here.next_event,
            now_ms: here.now_ms,
            master_epoch: here.master_epoch,
            next_session: here.next_session.max(snapshot.next_session),
            next_instance,
            nodes: Arc::new(nodes),
            locks: Arc::default(),
            sessions: Arc::default(),
            watches: Arc::default(),
        };
        match state.invalid() {
            Some(why) => Err(why),
            None => Ok((state, offset)),
        }
    }
}
