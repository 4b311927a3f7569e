//! The database under the replicated log: [`DatabaseMachine`] implements the log's
//! `StateMachine` by applying each chosen entry to the [`Database`] and handing the events it
//! produced to the replica's [`EventHub`].

use super::events::EventHub;
use crate::command::Command;
use crate::database::{Applied, Database};
use crate::reply::Reply;
use crate::state::Config;
use crate::types::{SessionId, Slot};
use replicated_log::{SnapshotFn, StateMachine};
use std::io::{self, Read};
use std::sync::Arc;

/// The [`Database`] as the replicated log's state machine. Every replica applies the same
/// entries in the same order; the events each entry produces go to this replica's event hub (so a
/// client can resume its event stream on whichever replica it reaches next) and back to the
/// submitter in the [`Applied`] output.
pub struct DatabaseMachine {
    db: Database,
    hub: Arc<EventHub>,
}

impl DatabaseMachine {
    pub fn new(config: Config, hub: Arc<EventHub>) -> DatabaseMachine {
        DatabaseMachine {
            db: Database::new(config),
            hub,
        }
    }

    /// Turns on deliberately broken database behaviours (teeth tests only); they stay planted
    /// through reset and restore.
    #[cfg(feature = "planted-bugs")]
    pub fn with_planted_bugs(mut self, bugs: crate::PlantedBugs) -> DatabaseMachine {
        self.db.plant_bugs(bugs);
        self
    }

    /// The database as applied so far on this replica.
    pub fn database(&self) -> &Database {
        &self.db
    }
}

impl StateMachine for DatabaseMachine {
    type Output = Applied;

    fn apply(&mut self, slot: paxos_core::Slot, entry: &[u8]) -> Applied {
        let slot = Slot(slot.0);
        let (applied, ended) = match Command::decode(entry) {
            Ok(command) => {
                let before = match &command {
                    Command::Restore { .. } => self.db.sessions(),
                    _ => Vec::new(),
                };
                let applied = self.db.apply(slot, &command);
                let ended = ended_sessions(&command, &applied.reply, before);
                (applied, ended)
            }
            Err(_) => (self.db.apply_bytes(slot, entry), Vec::new()),
        };
        self.hub.publish(slot, &applied.events, &ended);
        applied
    }

    fn snapshot(&self) -> SnapshotFn {
        self.db.snapshot().into_writer()
    }

    fn restore(&mut self, snapshot: &mut dyn Read) -> io::Result<()> {
        self.db.restore(snapshot)?;
        self.hub.discontinuity();
        Ok(())
    }

    fn reset(&mut self) {
        self.db.reset();
        self.hub.discontinuity();
    }

    fn digest(&self) -> u64 {
        self.db.digest()
    }
}

impl std::fmt::Debug for DatabaseMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseMachine")
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

/// The sessions a command ended: closed, expired by a tick, or all of `before` (the sessions
/// live before it) for a restore.
fn ended_sessions(command: &Command, reply: &Reply, before: Vec<SessionId>) -> Vec<SessionId> {
    match (command, reply) {
        (Command::Restore { .. }, Reply::Restored(_)) => before,
        (Command::CloseSession { session }, Reply::SessionClosed) => vec![*session],
        (Command::Tick { .. }, Reply::Ticked { expired }) => expired.clone(),
        _ => Vec::new(),
    }
}
