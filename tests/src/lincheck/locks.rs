//! The lock checker: what a fenced downstream resource saw.
//!
//! A lock holder sends its sequencer with every write to a downstream resource (Chubby 2.4); the
//! resource accepts a write only if the sequencer's generation is at least the highest it has
//! accepted. This checker reads the resource's log of accepted writes and reports what an
//! exclusive lock must never allow: two clients writing under one grant, or a write accepted under
//! an older grant after a newer one (two holders at once, the older one stale).

use super::history::Time;

/// A write the resource accepted, in the order it accepted them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FencedWrite {
    /// When the resource accepted it (for reports; the slice order is the accept order).
    pub at: Time,
    pub client: u64,
    /// The lock generation of the writer's sequencer: every grant of the lock has its own.
    pub generation: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LockViolation {
    /// Two clients wrote under the same grant: two exclusive holders at once.
    SharedGrant {
        generation: u64,
        /// Indices into the log of the first write of each client.
        first: usize,
        second: usize,
    },
    /// The write at `later` carries an older generation than the one at `earlier`, accepted
    /// before it: the old holder still wrote after a new holder had started.
    GenerationWentBack { earlier: usize, later: usize },
}

/// Every violation in `log`, in log order (empty: the lock kept the resource exclusive).
pub fn check_fenced_log(log: &[FencedWrite]) -> Vec<LockViolation> {
    let mut violations = Vec::new();
    // Index of the write with the highest generation so far, and the first writer of each grant.
    let mut highest: Option<usize> = None;
    let mut owner: std::collections::BTreeMap<u64, usize> = Default::default();
    for (i, write) in log.iter().enumerate() {
        match owner.get(&write.generation) {
            Some(&first) if log[first].client != write.client => {
                let reported = violations.iter().any(|v| {
                    matches!(v, LockViolation::SharedGrant { generation, second, .. }
                        if *generation == write.generation && log[*second].client == write.client)
                });
                if !reported {
                    violations.push(LockViolation::SharedGrant {
                        generation: write.generation,
                        first,
                        second: i,
                    });
                }
            }
            Some(_) => {}
            None => {
                owner.insert(write.generation, i);
            }
        }
        match highest {
            Some(h) if log[h].generation > write.generation => {
                violations.push(LockViolation::GenerationWentBack {
                    earlier: h,
                    later: i,
                });
            }
            Some(h) if log[h].generation == write.generation => {}
            _ => highest = Some(i),
        }
    }
    violations
}
