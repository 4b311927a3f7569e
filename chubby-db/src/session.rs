//! Sessions and time: open, KeepAlive, close, the master's Tick that expires sessions and ends
//! lock-delays, the fail-over marker, and the reply cache behind exactly-once requests.

use crate::database::Database;
use crate::event::EventKind;
use crate::limits::{LEASE_MS_MAX, LEASE_MS_MIN, SESSION_REPLIES_MAX};
use crate::reply::{Rejection, Reply};
use crate::state::{Index, Session};
use crate::types::{Epoch, RequestSeq, SessionId};
use std::collections::BTreeMap;
use std::sync::Arc;

/// How a session ends; only expiry puts its locks in lock-delay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    Closed,
    Expired,
}

impl Database {
    pub(crate) fn on_open_session(&mut self, now_ms: u64, lease_ms: Option<u64>) -> Reply {
        self.advance_clock(now_ms);
        let lease_ms = lease_ms.unwrap_or(self.state.config.lease_ms_default);
        if !(LEASE_MS_MIN..=LEASE_MS_MAX).contains(&lease_ms) {
            return Reply::Rejected(Rejection::InvalidLease { lease_ms });
        }
        // Ids are never reused: with none left, refuse rather than hand out one twice.
        let Some(next_session) = self.state.next_session.checked_add(1) else {
            return Reply::Rejected(Rejection::SessionIdsExhausted);
        };
        let session = SessionId(self.state.next_session);
        self.state.next_session = next_session;
        let lease_until_ms = self.state.now_ms.saturating_add(lease_ms);
        let record = Session {
            lease_ms,
            lease_until_ms,
            replies: BTreeMap::new(),
            forgotten_below: RequestSeq(0),
        };
        Arc::make_mut(&mut self.state.sessions).insert(session, Arc::new(record));
        Reply::SessionOpened {
            session,
            lease_until_ms,
            lease_remaining_ms: lease_ms,
        }
    }

    /// Extends the lease; never shortens it (a KeepAlive stamped by a slower clock changes
    /// nothing). A session whose lease ran out but that no Tick expired yet is still alive: the
    /// master decides expiry, through Tick.
    pub(crate) fn on_keep_alive(&mut self, session: SessionId, now_ms: u64) -> Reply {
        self.advance_clock(now_ms);
        if !self.state.sessions.contains_key(&session) {
            return Reply::Rejected(Rejection::SessionUnknown(session));
        }
        let now = self.state.now_ms;
        let record = self.session_mut(session);
        record.lease_until_ms = record
            .lease_until_ms
            .max(now.saturating_add(record.lease_ms));
        let lease_until_ms = record.lease_until_ms;
        Reply::KeptAlive {
            lease_until_ms,
            lease_remaining_ms: lease_until_ms.saturating_sub(now),
        }
    }

    pub(crate) fn on_close_session(&mut self, session: SessionId) -> Reply {
        if !self.state.sessions.contains_key(&session) {
            return Reply::Rejected(Rejection::SessionUnknown(session));
        }
        self.end_session(session, Ending::Closed);
        Reply::SessionClosed
    }

    pub(crate) fn on_tick(&mut self, now_ms: u64) -> Reply {
        self.advance_clock(now_ms);
        let now = self.state.now_ms;
        let expired: Vec<SessionId> = self
            .state
            .sessions
            .iter()
            .filter(|(_, s)| s.lease_until_ms <= now)
            .map(|(id, _)| *id)
            .collect();
        for session in &expired {
            self.emit(*session, EventKind::SessionExpired);
            self.end_session(*session, Ending::Expired);
        }
        self.end_lapsed_lock_delays();
        Reply::Ticked { expired }
    }

    /// After a fail-over the new master cannot know which KeepAlives the old one saw, so rather
    /// than expire sessions whose clients were cut off by the fail-over itself it gives every
    /// live session a full lease from now [Chubby 2.9], and tells each one that events may have
    /// been lost.
    pub(crate) fn on_master_changed(&mut self, epoch: Epoch, now_ms: u64) -> Reply {
        self.advance_clock(now_ms);
        self.state.master_epoch = Some(epoch);
        let now = self.state.now_ms;
        let sessions = self.sessions();
        for session in &sessions {
            let record = self.session_mut(*session);
            record.lease_until_ms = record
                .lease_until_ms
                .max(now.saturating_add(record.lease_ms));
            self.emit(*session, EventKind::MasterChanged { epoch });
        }
        Reply::MasterChanged {
            sessions_extended: sessions.len() as u64,
        }
    }

    /// The database's clock only moves forward.
    fn advance_clock(&mut self, now_ms: u64) {
        self.state.now_ms = self.state.now_ms.max(now_ms);
    }

    /// Removes the session first (so nothing more is addressed to it), then its watches, its
    /// ephemeral nodes (leaves, since ephemeral nodes have no children) and its claims on
    /// locks, each in path order so every replica does the same steps.
    pub(crate) fn end_session(&mut self, session: SessionId, ending: Ending) {
        Arc::make_mut(&mut self.state.sessions)
            .remove(&session)
            .expect("ending a live session");
        for path in Index::of(&self.index.watches, session) {
            self.put_watch(&path, session, Default::default());
        }
        for path in Index::of(&self.index.ephemerals, session) {
            self.remove_node(&path);
        }
        for path in Index::of(&self.index.locks, session) {
            self.drop_lock_claim(&path, session, ending);
        }
    }

    /// Remembers a request's reply for retries; beyond `SESSION_REPLIES_MAX` the lowest
    /// request number is forgotten, and every number up to it is refused from then on.
    pub(crate) fn remember(&mut self, session: SessionId, seq: RequestSeq, reply: &Reply) {
        let record = self.session_mut(session);
        record.replies.insert(seq, reply.clone());
        while record.replies.len() > SESSION_REPLIES_MAX {
            let (oldest, _) = record.replies.pop_first().expect("cache over its bound");
            record.forgotten_below = record
                .forgotten_below
                .max(RequestSeq(oldest.0.saturating_add(1)));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{Command, Config, Database, Rejection, Reply, SessionId, Slot};

    /// Found while looking into a `db_snapshot` fuzz finding: with `next_session` at `u64::MAX`
    /// (only a crafted snapshot gets there), `OpenSession` handed out the id `u64::MAX` without
    /// moving `next_session` past it (saturating), breaking the invariant that every id is below
    /// it; a second one would have handed out the same id again.
    #[test]
    fn the_last_session_id_is_handed_out_once_then_opening_is_refused() {
        let mut database = Database::new(Config::default());
        database.state.next_session = u64::MAX - 1;
        let open = Command::OpenSession {
            now_ms: 1_000,
            lease_ms: None,
        };
        let first = database.apply(Slot(1), &open).reply;
        assert!(
            matches!(first, Reply::SessionOpened { session, .. } if session == SessionId(u64::MAX - 1))
        );
        database.check_invariants();
        let second = database.apply(Slot(2), &open).reply;
        assert_eq!(second, Reply::Rejected(Rejection::SessionIdsExhausted));
        database.check_invariants();
        assert_eq!(database.sessions().len(), 1);
    }

    /// Found by the `db_snapshot` fuzz target (`fuzz/corpus/db_snapshot/crash-next-session-zero`):
    /// a snapshot with `next_session` at 0 and no sessions restored fine, and the next
    /// `OpenSession` handed out the invalid id 0. Restoring such a snapshot is refused now.
    #[test]
    fn a_snapshot_whose_next_session_is_zero_is_refused() {
        let mut database = Database::new(Config::default());
        database.state.next_session = 0;
        let bytes = database.snapshot().to_bytes();
        assert!(matches!(
            Database::from_snapshot(&mut &bytes[..]),
            Err(crate::RestoreError::Invalid(_))
        ));
    }

    /// Found by the real-process fault harness (clock-skew nemesis): the server counted the
    /// lease it reported to a client on the answering master's clock. After a master with a
    /// clock ahead had pushed the database's clock forward, a master with a clock behind promised
    /// the client a lease longer than the database would honour, and the client kept acting on a
    /// lock the database could expire. The remaining lease is counted on the database's clock.
    #[test]
    fn a_keep_alive_stamped_by_a_slow_clock_promises_no_more_than_the_lease() {
        let mut database = Database::new(Config::default());
        let opened = database.apply(
            Slot(1),
            &Command::OpenSession {
                now_ms: 1_000,
                lease_ms: Some(12_000),
            },
        );
        let Reply::SessionOpened {
            session,
            lease_remaining_ms,
            ..
        } = opened.reply
        else {
            panic!("{:?}", opened.reply);
        };
        assert_eq!(lease_remaining_ms, 12_000);
        // A master whose clock runs 30 s ahead, then one whose clock is back at 2 s.
        database.apply(
            Slot(2),
            &Command::MasterChanged {
                epoch: crate::Epoch(2),
                now_ms: 31_000,
            },
        );
        let kept = database.apply(
            Slot(3),
            &Command::KeepAlive {
                session,
                now_ms: 2_000,
            },
        );
        let Reply::KeptAlive {
            lease_until_ms,
            lease_remaining_ms,
        } = kept.reply
        else {
            panic!("{:?}", kept.reply);
        };
        assert_eq!(lease_until_ms, 43_000);
        assert_eq!(
            lease_remaining_ms, 12_000,
            "not 41 s, as the slow clock would say"
        );
    }
}
