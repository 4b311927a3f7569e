//! The durability checker: every acknowledged write is still there at the end.
//!
//! After the faults stop, the harness reads every key once more. For each key, the final value
//! must be the value of a write that nothing acknowledged later overwrote: an acknowledged write
//! that is not followed in real time by another acknowledged write of the key, or a write whose
//! outcome is unknown (or acknowledged) that did not end before such a write began. Anything
//! else means an acknowledged write was lost (or an older value came back).

use super::history::{Key, ShowValue, Time, Value};
use std::collections::BTreeMap;
use std::fmt;

/// A write as the client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyWrite {
    pub key: Key,
    /// `None` deletes.
    pub value: Option<Value>,
    pub call: Time,
    /// When the store acknowledged it; `None` when the outcome is unknown.
    pub acked: Option<Time>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LostWrite {
    pub key: Key,
    /// An acknowledged write (index into the writes) that the final value does not account for:
    /// the last one to return among those nothing acknowledged follows.
    pub acknowledged: usize,
    pub found: Option<Value>,
}

impl fmt::Display for LostWrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: acknowledged write #{} lost, final read found {}",
            self.key,
            self.acknowledged,
            ShowValue(&self.found)
        )
    }
}

/// Keys missing from `final_read` read as absent. Returns one report per key that lost a write.
pub fn check_durability(
    writes: &[KeyWrite],
    final_read: &BTreeMap<Key, Option<Value>>,
) -> Vec<LostWrite> {
    let mut by_key: BTreeMap<&Key, Vec<usize>> = BTreeMap::new();
    for (i, write) in writes.iter().enumerate() {
        by_key.entry(&write.key).or_default().push(i);
    }
    let mut lost = Vec::new();
    for (key, indices) in by_key {
        let acked: Vec<usize> = indices
            .iter()
            .copied()
            .filter(|&i| writes[i].acked.is_some())
            .collect();
        if acked.is_empty() {
            continue;
        }
        // `a` ended before `b` began.
        let before = |a: usize, b: usize| writes[a].acked.is_some_and(|end| end < writes[b].call);
        let superseded = |i: usize| acked.iter().any(|&a| a != i && before(i, a));
        let found = final_read.get(key).cloned().flatten();
        let explained = indices
            .iter()
            .any(|&i| !superseded(i) && writes[i].value == found);
        if !explained {
            let latest = acked
                .iter()
                .copied()
                .filter(|&i| !superseded(i))
                .max_by_key(|&i| writes[i].acked)
                .expect("some acknowledged write is not superseded");
            lost.push(LostWrite {
                key: key.clone(),
                acknowledged: latest,
                found,
            });
        }
    }
    lost
}
