//! Newtypes for the ids and numbers the database hands out, so a slot is never mixed up with a
//! session or a request number.
//!
//! The crate does not depend on `replicated-log` or `paxos-core`: [`Slot`] and [`Epoch`] here are
//! this crate's own; the integration converts at the boundary (`Slot(log_slot.0)`).

use serde::{Deserialize, Serialize};
use std::fmt;

/// A position in the replicated log: the slot whose value held the command being applied.
/// Several commands may share a slot (a batch); slots never go backwards.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Slot(pub u64);

/// A client session. Ids are handed out in increasing order by `OpenSession` and never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SessionId(pub u64);

/// A session-scoped request number: a write retried with the same `(session, seq)` is applied at
/// most once (see `docs/chubby-db.md`, "Exactly once").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestSeq(pub u64);

/// A master tenure, opaque to the database: it only records the epoch the last `MasterChanged`
/// named and compares it for equality (the `MasterEpochEquals` test).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Epoch(pub u64);

/// Identifies an event: the slot that produced it and its position among that slot's events.
/// Clients resume and deduplicate by it; ids of one session's events only increase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EventId {
    pub slot: Slot,
    pub index: u64,
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}", self.0)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "session {}", self.0)
    }
}
