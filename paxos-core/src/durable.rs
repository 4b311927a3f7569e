//! What the engine asks storage to keep, and how a replica's state is recovered from it.
//!
//! Storage appends [`Record`]s in order and makes them durable; on restart it hands the records that
//! survived back to [`DurableState::recover`]. The engine never reads a disk itself.

use crate::types::{Ballot, Incarnation, MembershipLog, NodeId, Slot, SnapshotHandle, Value};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// The replica's identity and the group it starts with (first record of a bootstrapped replica).
    Bootstrap {
        node: NodeId,
        incarnation: Incarnation,
        membership: MembershipLog,
    },
    /// The acceptor promised not to accept ballots below this one.
    Promised(Ballot),
    /// The acceptor accepted `value` for `slot` under `ballot`.
    Accepted {
        slot: Slot,
        ballot: Ballot,
        value: Value,
    },
    /// The replica learned that `value` is chosen for `slot`.
    Chosen { slot: Slot, value: Value },
    /// The replica learned that the value it accepted for `slot` under `ballot` (an earlier
    /// `Accepted` record) is chosen: `Chosen` without writing the value a second time.
    Learned { slot: Slot, ballot: Ballot },
    /// A snapshot covering the log through `handle.slot` is durable (taken here or installed from a
    /// peer); the log before it is truncated.
    Snapshot(SnapshotHandle),
    /// The replica lost its state and is rebuilding under this new incarnation (PML 5.1).
    RebuildBegan {
        node: NodeId,
        incarnation: Incarnation,
    },
    /// The rebuild completed: the replica votes again.
    RebuildDone,
}

/// An acceptor's knowledge of one slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlotState {
    Accepted { ballot: Ballot, value: Value },
    Chosen { value: Value },
}

impl SlotState {
    pub fn value(&self) -> &Value {
        match self {
            SlotState::Accepted { value, .. } | SlotState::Chosen { value } => value,
        }
    }
    pub fn is_chosen(&self) -> bool {
        matches!(self, SlotState::Chosen { .. })
    }
}

/// A replica's state as recovered from its records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DurableState {
    pub node: NodeId,
    pub incarnation: Incarnation,
    pub promised: Ballot,
    /// Slots after the snapshot.
    pub log: BTreeMap<Slot, SlotState>,
    /// The latest durable snapshot, or the bootstrap membership at slot 0.
    pub snapshot: SnapshotHandle,
    /// True between `RebuildBegan` and `RebuildDone`.
    pub rebuilding: bool,
}

/// Why records cannot be recovered. Storage treats this like a failed checksum: rebuild.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecoverError {
    /// No `Bootstrap` or `RebuildBegan` record came first: the state is not a replica's.
    NoIdentity,
    /// A record contradicts an earlier one (names a different node, goes back in ballot).
    Inconsistent(&'static str),
}

impl std::fmt::Display for RecoverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecoverError::NoIdentity => write!(
                f,
                "no identity record: the state is empty or not a replica's"
            ),
            RecoverError::Inconsistent(why) => write!(f, "records contradict each other: {why}"),
        }
    }
}

impl std::error::Error for RecoverError {}

impl DurableState {
    /// Folds records, oldest first, into the state they describe.
    pub fn recover<'a>(
        records: impl IntoIterator<Item = &'a Record>,
    ) -> Result<DurableState, RecoverError> {
        let mut state: Option<DurableState> = None;
        for record in records {
            state = Some(match (state, record) {
                (None, Record::Bootstrap { membership, .. }) if membership.entries.is_empty() => {
                    return Err(RecoverError::Inconsistent("bootstrap without a membership"))
                }
                (
                    None,
                    Record::Bootstrap {
                        node,
                        incarnation,
                        membership,
                    },
                ) => DurableState {
                    node: *node,
                    incarnation: *incarnation,
                    promised: Ballot::ZERO,
                    log: BTreeMap::new(),
                    snapshot: SnapshotHandle {
                        slot: Slot::ZERO,
                        membership: membership.clone(),
                    },
                    rebuilding: false,
                },
                (None, Record::RebuildBegan { node, incarnation }) => DurableState {
                    node: *node,
                    incarnation: *incarnation,
                    promised: Ballot::ZERO,
                    log: BTreeMap::new(),
                    // Replaced by the snapshot the rebuild installs; until then nothing is known.
                    snapshot: SnapshotHandle {
                        slot: Slot::ZERO,
                        membership: MembershipLog::initial(Default::default()),
                    },
                    rebuilding: true,
                },
                (None, _) => return Err(RecoverError::NoIdentity),
                (Some(mut s), record) => {
                    s.fold(record)?;
                    s
                }
            });
        }
        state.ok_or(RecoverError::NoIdentity)
    }

    /// The records that rebuild exactly this state through [`DurableState::recover`]: what storage
    /// writes at the head of a fresh segment when it compacts the log after a snapshot.
    pub fn to_records(&self) -> Vec<Record> {
        let mut records = Vec::with_capacity(self.log.len() + 4);
        if self.rebuilding {
            records.push(Record::RebuildBegan {
                node: self.node,
                incarnation: self.incarnation,
            });
        } else {
            records.push(Record::Bootstrap {
                node: self.node,
                incarnation: self.incarnation,
                membership: self.snapshot.membership.clone(),
            });
        }
        records.push(Record::Promised(self.promised));
        records.push(Record::Snapshot(self.snapshot.clone()));
        for (slot, state) in &self.log {
            records.push(match state {
                SlotState::Accepted { ballot, value } => Record::Accepted {
                    slot: *slot,
                    ballot: *ballot,
                    value: value.clone(),
                },
                SlotState::Chosen { value } => Record::Chosen {
                    slot: *slot,
                    value: value.clone(),
                },
            });
        }
        records
    }

    /// Folds one more record into the state, as `recover` does (storage keeps a live copy this way).
    pub fn apply(&mut self, record: &Record) -> Result<(), RecoverError> {
        self.fold(record)
    }

    fn fold(&mut self, record: &Record) -> Result<(), RecoverError> {
        match record {
            Record::Bootstrap { .. } => {
                return Err(RecoverError::Inconsistent("second bootstrap record"))
            }
            Record::Promised(ballot) => {
                if *ballot < self.promised {
                    return Err(RecoverError::Inconsistent("promise went backwards"));
                }
                self.promised = *ballot;
            }
            Record::Accepted {
                slot,
                ballot,
                value,
            } => {
                if *slot > self.snapshot.slot
                    && !self.log.get(slot).is_some_and(SlotState::is_chosen)
                {
                    self.log.insert(
                        *slot,
                        SlotState::Accepted {
                            ballot: *ballot,
                            value: value.clone(),
                        },
                    );
                }
            }
            Record::Chosen { slot, value } => {
                if *slot > self.snapshot.slot {
                    self.log.insert(
                        *slot,
                        SlotState::Chosen {
                            value: value.clone(),
                        },
                    );
                }
            }
            Record::Learned { slot, ballot } => {
                if *slot > self.snapshot.slot {
                    let value = match self.log.get(slot) {
                        Some(SlotState::Accepted { ballot: b, value }) if b == ballot => {
                            value.clone()
                        }
                        Some(SlotState::Chosen { .. }) => return Ok(()),
                        _ => {
                            return Err(RecoverError::Inconsistent(
                                "learned a value that was not accepted under that ballot",
                            ))
                        }
                    };
                    self.log.insert(*slot, SlotState::Chosen { value });
                }
            }
            Record::Snapshot(handle) => {
                if handle.membership.entries.is_empty() {
                    return Err(RecoverError::Inconsistent("snapshot without a membership"));
                }
                let first_membership = self.snapshot.membership.latest().voters.is_empty();
                if handle.slot > self.snapshot.slot || first_membership {
                    self.snapshot = handle.clone();
                    // A snapshot at the largest slot leaves no slot after it.
                    self.log = match handle.slot.0.checked_add(1) {
                        Some(next) => self.log.split_off(&Slot(next)),
                        None => BTreeMap::new(),
                    };
                }
            }
            Record::RebuildBegan { node, incarnation } => {
                if *node != self.node {
                    return Err(RecoverError::Inconsistent(
                        "rebuild record names another node",
                    ));
                }
                self.incarnation = *incarnation;
                self.rebuilding = true;
            }
            Record::RebuildDone => self.rebuilding = false,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Config;

    fn boot() -> Record {
        Record::Bootstrap {
            node: NodeId(1),
            incarnation: Incarnation(1),
            membership: MembershipLog::initial(Config::new([NodeId(1)])),
        }
    }

    #[test]
    fn recovery_keeps_the_latest_of_everything() {
        let b1 = Ballot {
            round: 1,
            node: NodeId(1),
        };
        let b2 = Ballot {
            round: 2,
            node: NodeId(2),
        };
        let records = vec![
            boot(),
            Record::Promised(b1),
            Record::Accepted {
                slot: Slot(1),
                ballot: b1,
                value: Value::noop(),
            },
            Record::Accepted {
                slot: Slot(2),
                ballot: b1,
                value: Value::noop(),
            },
            Record::Promised(b2),
            Record::Chosen {
                slot: Slot(1),
                value: Value::noop(),
            },
            Record::Snapshot(SnapshotHandle {
                slot: Slot(1),
                membership: MembershipLog::initial(Config::new([NodeId(1)])),
            }),
        ];
        let state = DurableState::recover(&records).unwrap();
        assert_eq!(state.promised, b2);
        assert_eq!(state.snapshot.slot, Slot(1));
        assert_eq!(state.log.keys().copied().collect::<Vec<_>>(), vec![Slot(2)]);
        let compacted = DurableState::recover(&state.to_records()).unwrap();
        assert_eq!(compacted, state);
    }

    #[test]
    fn a_learned_record_chooses_the_value_accepted_under_its_ballot() {
        let b1 = Ballot {
            round: 1,
            node: NodeId(1),
        };
        let b2 = Ballot {
            round: 2,
            node: NodeId(1),
        };
        let value = Value::new(vec![crate::types::Entry {
            id: crate::types::EntryId {
                epoch: crate::types::Epoch(b1),
                seq: 1,
            },
            kind: crate::types::EntryKind::App(b"v".to_vec()),
        }]);
        let accepted = Record::Accepted {
            slot: Slot(1),
            ballot: b1,
            value: value.clone(),
        };
        let learned = |ballot| Record::Learned {
            slot: Slot(1),
            ballot,
        };
        let state = DurableState::recover(&[boot(), accepted.clone(), learned(b1)]).unwrap();
        assert_eq!(state.log.get(&Slot(1)), Some(&SlotState::Chosen { value }));
        // Learned under a ballot this replica did not accept under, or for a slot it never
        // accepted, contradicts the log.
        assert!(DurableState::recover(&[boot(), accepted, learned(b2)]).is_err());
        assert!(DurableState::recover(&[boot(), learned(b1)]).is_err());
    }

    /// Records read back from disk (checksums fine) may still say anything: a membership with no
    /// entry made `latest()` panic, and a snapshot at the largest slot overflowed its successor.
    /// Both are typed errors or plain states now. Found while writing the `wal_recovery` fuzz
    /// target, which recomputes the checksums of mutated segments.
    #[test]
    fn records_that_say_nonsense_are_refused_not_a_panic() {
        let empty = MembershipLog { entries: vec![] };
        let bare_boot = Record::Bootstrap {
            node: NodeId(1),
            incarnation: Incarnation(1),
            membership: empty.clone(),
        };
        assert!(matches!(
            DurableState::recover(&[bare_boot]),
            Err(RecoverError::Inconsistent(_))
        ));
        let bare_snapshot = Record::Snapshot(SnapshotHandle {
            slot: Slot(3),
            membership: empty,
        });
        assert!(matches!(
            DurableState::recover(&[boot(), bare_snapshot]),
            Err(RecoverError::Inconsistent(_))
        ));
        let last = SnapshotHandle {
            slot: Slot(u64::MAX),
            membership: MembershipLog::initial(Config::new([NodeId(1)])),
        };
        let accepted = Record::Accepted {
            slot: Slot(5),
            ballot: Ballot::ZERO,
            value: Value::noop(),
        };
        let state =
            DurableState::recover(&[boot(), accepted, Record::Snapshot(last.clone())]).unwrap();
        assert_eq!(state.snapshot, last);
        assert!(state.log.is_empty());
    }

    #[test]
    fn recovery_refuses_what_is_not_a_replica() {
        assert_eq!(DurableState::recover(&[]), Err(RecoverError::NoIdentity));
        let promise = Record::Promised(Ballot::ZERO);
        assert_eq!(
            DurableState::recover(&[promise]),
            Err(RecoverError::NoIdentity)
        );
        let back = [
            boot(),
            Record::Promised(Ballot {
                round: 2,
                node: NodeId(1),
            }),
            Record::Promised(Ballot::ZERO),
        ];
        assert!(matches!(
            DurableState::recover(&back),
            Err(RecoverError::Inconsistent(_))
        ));
    }
}
