//! The wire protocol between replicas: one enum, one struct per message, validated once at the
//! boundary (`Message::invalid`), trusted after it.

use crate::limits;
use crate::types::{Ballot, Incarnation, MembershipLog, NodeId, Slot, SnapshotHandle, Value};
use serde::{Deserialize, Serialize};

/// Every message says who sent it and under which incarnation: votes of a lost incarnation never
/// count again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub from: NodeId,
    pub incarnation: Incarnation,
    pub message: Message,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    Probe(Probe),
    ProbeReply(ProbeReply),
    Prepare(Prepare),
    Promise(Promise),
    Accept(Accept),
    Accepted(Accepted),
    Nack(Nack),
    Heartbeat(Heartbeat),
    HeartbeatAck(HeartbeatAck),
    CatchUpRequest(CatchUpRequest),
    CatchUpReply(CatchUpReply),
    SnapshotRequired(SnapshotRequired),
    DigestReport(DigestReport),
    RebuildProbe(RebuildProbe),
    RebuildProbeReply(RebuildProbeReply),
    Rejoin(Rejoin),
}

/// Pre-vote: "would you promise `ballot`?" Asked before a real prepare so that a replica that was
/// partitioned away cannot raise everyone's ballot and depose a master whose lease is valid.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    pub ballot: Ballot,
    /// The prober's chosen prefix: a replica that lags learns there is something to catch up on
    /// even while no master exists (it may be the voter whose vote an election is waiting for).
    pub chosen_through: Slot,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeReply {
    pub ballot: Ballot,
    pub ok: bool,
}

/// Phase 1a for every slot from `from` on. Also a lease request sent at the candidate's `lease_tick`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prepare {
    pub ballot: Ballot,
    pub from: Slot,
    pub lease_tick: u64,
}

/// What an acceptor holds for one slot, reported in a promise.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reported {
    Accepted { ballot: Ballot, value: Value },
    Chosen { value: Value },
}

/// Phase 1b. `log_start` is the acceptor's first untruncated slot: if it is above the prepare's
/// `from`, the slots between are chosen and behind a snapshot, and the candidate must catch up first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promise {
    pub ballot: Ballot,
    pub lease_tick: u64,
    pub log_start: Slot,
    pub entries: Vec<(Slot, Reported)>,
}

/// Phase 2a for one slot; carries the master's chosen prefix (chosen-ness propagation).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accept {
    pub ballot: Ballot,
    pub slot: Slot,
    pub value: Value,
    pub chosen_through: Slot,
}

/// Phase 2b.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    pub ballot: Ballot,
    pub slot: Slot,
}

/// A refusal: `rejected` is below what the acceptor `promised`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nack {
    pub rejected: Ballot,
    pub promised: Ballot,
}

/// The master's lease renewal (sent at its `lease_tick`) and chosen-prefix announcement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub ballot: Ballot,
    pub lease_tick: u64,
    pub chosen_through: Slot,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatAck {
    pub ballot: Ballot,
    pub lease_tick: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatchUpRequest {
    pub from: Slot,
}

/// Chosen values from `entries[0].0` on, contiguous.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatchUpReply {
    pub entries: Vec<(Slot, Value)>,
    pub chosen_through: Slot,
}

/// "That prefix is behind my snapshot: fetch the snapshot first."
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRequired {
    pub handle: SnapshotHandle,
}

/// A replica's digest of its state at a consistency-check slot (PML 6).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestReport {
    pub slot: Slot,
    pub digest: u64,
}

/// Sent by a replica that lost its state: "what do you know of the group and of me?"
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebuildProbe {}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebuildProbeReply {
    /// The replier's latest snapshot: where a rebuild starts from.
    pub snapshot: SnapshotHandle,
    pub membership: MembershipLog,
    pub chosen_through: Slot,
    /// The highest incarnation of the asking node the replier has seen anywhere: in any config,
    /// applied or pending, and in any reincarnation it accepted. A chosen reincarnation was accepted
    /// by a majority, so a majority of replies cannot miss it.
    pub incarnation_seen: Incarnation,
}

/// A rebuilt or new replica that has caught up asks the master to make its incarnation count.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejoin {}

impl Message {
    /// Checks what the types cannot: sizes and ranges. `None` means valid.
    pub fn invalid(&self) -> Option<&'static str> {
        match self {
            Message::Accept(m) if m.slot == Slot::ZERO => Some("accept for slot 0"),
            Message::Accept(m) if m.value.bytes() > limits::VALUE_BYTES_MAX => {
                Some("accept value too large")
            }
            Message::Accepted(m) if m.slot == Slot::ZERO => Some("accepted for slot 0"),
            Message::Prepare(m) if m.from == Slot::ZERO => Some("prepare from slot 0"),
            Message::Promise(m) if m.entries.len() > limits::PROMISE_ENTRIES_MAX => {
                Some("promise too long")
            }
            Message::CatchUpReply(m) if m.entries.len() > limits::CATCH_UP_ENTRIES_MAX => {
                Some("catch-up reply too long")
            }
            Message::CatchUpReply(m) if !contiguous(m.entries.iter().map(|(s, _)| *s)) => {
                Some("catch-up reply not contiguous")
            }
            Message::CatchUpRequest(m) if m.from == Slot::ZERO => Some("catch-up from slot 0"),
            Message::RebuildProbeReply(m) if m.membership.entries.is_empty() => {
                Some("empty membership")
            }
            Message::SnapshotRequired(m) if m.handle.membership.entries.is_empty() => {
                Some("empty membership")
            }
            _ => None,
        }
    }
}

fn contiguous(slots: impl Iterator<Item = Slot>) -> bool {
    let mut previous: Option<Slot> = None;
    for slot in slots {
        // `checked_add`: a peer's slot may be the largest u64, whose successor does not exist.
        if slot == Slot::ZERO || previous.is_some_and(|p| p.0.checked_add(1) != Some(slot.0)) {
            return false;
        }
        previous = Some(slot);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catch_up(slots: &[u64]) -> Message {
        Message::CatchUpReply(CatchUpReply {
            entries: slots.iter().map(|s| (Slot(*s), Value::noop())).collect(),
            chosen_through: Slot(1),
        })
    }

    #[test]
    fn catch_up_replies_must_be_contiguous() {
        assert_eq!(catch_up(&[3, 4, 5]).invalid(), None);
        assert!(catch_up(&[3, 5]).invalid().is_some());
        assert!(catch_up(&[0, 1]).invalid().is_some());
    }

    /// Found by reading the `peer_message` fuzz target's path: the successor of the largest slot
    /// overflowed (a panic with overflow checks on) instead of making the reply invalid.
    #[test]
    fn a_catch_up_reply_past_the_largest_slot_is_invalid_not_a_panic() {
        assert!(catch_up(&[u64::MAX, 0]).invalid().is_some());
        assert!(catch_up(&[u64::MAX, u64::MAX]).invalid().is_some());
        assert_eq!(catch_up(&[u64::MAX]).invalid(), None);
    }
}
