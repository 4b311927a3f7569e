//! The paper's nouns as newtypes, so a slot is never mixed up with a ballot.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A replica's permanent identity in the cluster. Node ids are never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u64);

/// A position in the replicated log. Slot 0 is "before the log"; the first value goes in slot 1.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Slot(pub u64);

/// How many times a node's durable state was lost and rebuilt. A rebuilt replica speaks under a new
/// incarnation, so promises and votes its lost state made can never be confused with new ones
/// (see docs/paxos.md, "Rebuild").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Incarnation(pub u64);

/// A Paxos ballot (proposal number): totally ordered by round, then node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Ballot {
    pub round: u64,
    pub node: NodeId,
}

/// A master tenure (PML 5.3). It is the ballot that won phase 1, so two tenures of any replicas never
/// share an epoch, and two submits carry the same epoch only if the replica was master continuously
/// between them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Epoch(pub Ballot);

/// Identifies a submitted entry: unique across the cluster's whole history, because epochs are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EntryId {
    pub epoch: Epoch,
    pub seq: u64,
}

impl Slot {
    pub const ZERO: Slot = Slot(0);
    pub fn next(self) -> Slot {
        Slot(self.0 + 1)
    }
    pub fn prev(self) -> Slot {
        Slot(self.0.saturating_sub(1))
    }
    pub fn plus(self, n: u64) -> Slot {
        Slot(self.0 + n)
    }
}

impl Ballot {
    pub const ZERO: Ballot = Ballot {
        round: 0,
        node: NodeId(0),
    };
    /// The smallest ballot owned by `node` that is above `self`.
    pub fn successor_for(self, node: NodeId) -> Ballot {
        Ballot {
            round: self.round + 1,
            node,
        }
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}
impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}", self.0)
    }
}
impl fmt::Display for Ballot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b{}.{}", self.round, self.node.0)
    }
}
impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "e{}.{}", self.0.round, self.0.node.0)
    }
}

/// One client-visible item inside a slot's value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub id: EntryId,
    pub kind: EntryKind,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// Opaque application bytes: the engine never looks inside. Encoded as one byte string, not a
    /// sequence of numbers: the same postcard bytes, written and read in one copy.
    App(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A membership change; it takes effect `window` slots after the slot that holds it.
    Reconfigure(MembershipChange),
    /// PML section 6: every replica computes a digest of its state at this slot and compares.
    DigestRequest,
}

/// The value of one slot: a batch of entries. An empty batch is a no-op (used to fill gaps found by
/// phase 1). Shared, not copied, when it goes to many peers.
#[derive(Clone, Debug, Eq, Serialize, Deserialize)]
pub struct Value {
    pub entries: std::sync::Arc<[Entry]>,
}

impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        // Copies of one proposal share their entries: equal without a deep comparison.
        std::sync::Arc::ptr_eq(&self.entries, &other.entries) || self.entries == other.entries
    }
}

impl Default for Value {
    fn default() -> Value {
        Value::noop()
    }
}

impl Value {
    pub fn new(entries: Vec<Entry>) -> Value {
        Value {
            entries: entries.into(),
        }
    }
    pub fn noop() -> Value {
        Value::new(Vec::new())
    }
    pub fn bytes(&self) -> usize {
        self.entries.iter().map(Entry::bytes).sum()
    }
}

impl Entry {
    /// Approximate encoded size, for batching limits.
    pub fn bytes(&self) -> usize {
        match &self.kind {
            EntryKind::App(data) => data.len() + 32,
            _ => 32,
        }
    }
}

/// A change of the group, decided through the log (PML 5.4).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// A new node joins as a non-voting member; it gets its incarnation when it first syncs.
    AddLearner(NodeId),
    /// A learner that has joined (incarnation known) becomes a voter.
    Promote(NodeId),
    /// A voter or learner leaves for good. Its id is never reused.
    Remove(NodeId),
    /// A node rebuilt or joined under a new incarnation: votes of older incarnations stop counting,
    /// and the node votes again (if it is a voter) from the slot where this change takes effect.
    Reincarnate {
        node: NodeId,
        incarnation: Incarnation,
    },
}

/// Voting and non-voting members, each with the incarnation whose votes count.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub voters: std::collections::BTreeMap<NodeId, Incarnation>,
    pub learners: std::collections::BTreeMap<NodeId, Incarnation>,
}

impl Config {
    pub fn new(voters: impl IntoIterator<Item = NodeId>) -> Config {
        Config {
            voters: voters.into_iter().map(|n| (n, Incarnation(1))).collect(),
            learners: Default::default(),
        }
    }
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }
    pub fn is_voter(&self, node: NodeId, incarnation: Incarnation) -> bool {
        self.voters.get(&node) == Some(&incarnation)
    }
    pub fn contains(&self, node: NodeId) -> bool {
        self.voters.contains_key(&node) || self.learners.contains_key(&node)
    }
    pub fn incarnation_of(&self, node: NodeId) -> Option<Incarnation> {
        self.voters
            .get(&node)
            .or_else(|| self.learners.get(&node))
            .copied()
    }
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.keys().chain(self.learners.keys()).copied()
    }
    /// How many of `nodes` are voters of this config (under the right incarnation).
    pub fn count_voters<'a>(
        &self,
        nodes: impl IntoIterator<Item = &'a (NodeId, Incarnation)>,
    ) -> usize {
        nodes
            .into_iter()
            .filter(|(n, i)| self.is_voter(*n, *i))
            .count()
    }

    /// Applies `change`, or returns why it does not apply. Deterministic: every replica applying the
    /// same chosen change to the same config gets the same result.
    pub fn apply(&self, change: &MembershipChange) -> Result<Config, &'static str> {
        let mut next = self.clone();
        match change {
            MembershipChange::AddLearner(node) => {
                if self.contains(*node) {
                    return Err("node is already a member");
                }
                next.learners.insert(*node, Incarnation(0));
            }
            MembershipChange::Promote(node) => match self.learners.get(node) {
                None => return Err("only a learner can be promoted"),
                Some(Incarnation(0)) => return Err("the learner has not joined yet"),
                Some(inc) => {
                    next.voters.insert(*node, *inc);
                    next.learners.remove(node);
                }
            },
            MembershipChange::Remove(node) => {
                if self.voters.contains_key(node) && self.voters.len() == 1 {
                    return Err("cannot remove the last voter");
                }
                if next.voters.remove(node).is_none() && next.learners.remove(node).is_none() {
                    return Err("node is not a member");
                }
            }
            MembershipChange::Reincarnate { node, incarnation } => {
                let slot = if let Some(i) = next.voters.get_mut(node) {
                    i
                } else if let Some(i) = next.learners.get_mut(node) {
                    i
                } else {
                    return Err("node is not a member");
                };
                if *slot >= *incarnation {
                    return Err("incarnation is not newer");
                }
                *slot = *incarnation;
            }
        }
        Ok(next)
    }
}

/// The configurations in force from given slots on: `config_at(s)` is the last entry whose start is
/// at or below `s`. Invariant: starts strictly increase and the first entry covers every slot the
/// replica still needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipLog {
    pub entries: Vec<(Slot, Config)>,
}

impl MembershipLog {
    pub fn initial(config: Config) -> MembershipLog {
        MembershipLog {
            entries: vec![(Slot(1), config)],
        }
    }
    pub fn config_at(&self, slot: Slot) -> &Config {
        let index = self.entries.partition_point(|(start, _)| *start <= slot);
        &self.entries[index.saturating_sub(1)].1
    }
    pub fn latest(&self) -> &Config {
        &self
            .entries
            .last()
            .expect("membership log is never empty")
            .1
    }
    /// Records a config taking effect at `start` (must be after every recorded start).
    pub fn push(&mut self, start: Slot, config: Config) {
        let last = self
            .entries
            .last()
            .expect("membership log is never empty")
            .0;
        assert!(
            start > last,
            "membership starts must increase: {start} after {last}"
        );
        self.entries.push((start, config));
    }
    /// Forgets configs no slot at or after `slot` can need.
    pub fn forget_before(&mut self, slot: Slot) {
        let index = self.entries.partition_point(|(start, _)| *start <= slot);
        if index > 1 {
            self.entries.drain(..index - 1);
        }
    }
    /// The distinct configs in force for slots `from..=to`.
    pub fn configs_between(&self, from: Slot, to: Slot) -> impl Iterator<Item = &Config> {
        let first = self
            .entries
            .partition_point(|(start, _)| *start <= from)
            .saturating_sub(1);
        self.entries[first..]
            .iter()
            .take_while(move |(start, _)| *start <= to)
            .map(|(_, c)| c)
    }
}

/// What the application gets to take a snapshot (PML 5.5): the slot it covers and the membership
/// needed to continue after it. The log before `slot` may be truncated only after the application
/// hands the handle back as done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotHandle {
    pub slot: Slot,
    pub membership: MembershipLog,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ballots_order_by_round_then_node() {
        let a = Ballot {
            round: 1,
            node: NodeId(9),
        };
        let b = Ballot {
            round: 2,
            node: NodeId(1),
        };
        assert!(a < b);
        assert!(
            Ballot {
                round: 2,
                node: NodeId(2)
            } > b
        );
        assert_eq!(
            a.successor_for(NodeId(3)),
            Ballot {
                round: 2,
                node: NodeId(3)
            }
        );
    }

    #[test]
    fn membership_log_answers_by_slot() {
        let mut log = MembershipLog::initial(Config::new([NodeId(1), NodeId(2), NodeId(3)]));
        let bigger = log
            .latest()
            .apply(&MembershipChange::AddLearner(NodeId(4)))
            .unwrap();
        log.push(Slot(10), bigger.clone());
        assert_eq!(log.config_at(Slot(9)).learners.len(), 0);
        assert_eq!(log.config_at(Slot(10)), &bigger);
        assert_eq!(log.configs_between(Slot(5), Slot(12)).count(), 2);
        assert_eq!(log.configs_between(Slot(10), Slot(12)).count(), 1);
        log.forget_before(Slot(11));
        assert_eq!(log.entries.len(), 1);
        assert_eq!(log.config_at(Slot(3)), &bigger);
    }

    #[test]
    fn config_changes_refuse_nonsense() {
        let c = Config::new([NodeId(1)]);
        assert!(c.apply(&MembershipChange::Remove(NodeId(1))).is_err());
        assert!(c.apply(&MembershipChange::Promote(NodeId(1))).is_err());
        let c = c.apply(&MembershipChange::AddLearner(NodeId(2))).unwrap();
        assert!(
            c.apply(&MembershipChange::Promote(NodeId(2))).is_err(),
            "not joined yet"
        );
        let joined = MembershipChange::Reincarnate {
            node: NodeId(2),
            incarnation: Incarnation(1),
        };
        let c = c.apply(&joined).unwrap();
        assert!(c.apply(&joined).is_err(), "same incarnation twice");
        let c = c.apply(&MembershipChange::Promote(NodeId(2))).unwrap();
        assert_eq!(c.quorum(), 2);
    }
}
