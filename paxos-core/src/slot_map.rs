//! A map keyed by slot, stored densely.
//!
//! The engine's slot-keyed state covers runs of consecutive slots: the log from the snapshot to the
//! highest slot accepted, the master's window of `window_slots` slots in flight. A deque indexed by
//! slot answers a lookup with one subtraction and keeps slot order for free, where a tree would
//! allocate nodes and compare keys on every accept. Memory is one `Option<T>` per slot between the
//! first and the last slot held, gaps included; a gap in the log is a slot this replica learns by
//! catch-up anyway.

use crate::types::Slot;
use std::collections::VecDeque;

pub(crate) struct SlotMap<T> {
    /// The slot of `items[0]`.
    start: Slot,
    /// Invariant: empty, or both ends hold an item (so the first and last slot are at the ends).
    items: VecDeque<Option<T>>,
    /// How many of `items` hold an item.
    len: usize,
}

impl<T> Default for SlotMap<T> {
    fn default() -> SlotMap<T> {
        SlotMap::new()
    }
}

impl<T> SlotMap<T> {
    pub(crate) fn new() -> SlotMap<T> {
        SlotMap {
            start: Slot::ZERO,
            items: VecDeque::new(),
            len: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn index(&self, slot: Slot) -> Option<usize> {
        let offset = slot.0.checked_sub(self.start.0)?;
        usize::try_from(offset)
            .ok()
            .filter(|i| *i < self.items.len())
    }

    pub(crate) fn get(&self, slot: Slot) -> Option<&T> {
        let index = self.index(slot)?;
        self.items[index].as_ref()
    }

    pub(crate) fn get_mut(&mut self, slot: Slot) -> Option<&mut T> {
        let index = self.index(slot)?;
        self.items[index].as_mut()
    }

    pub(crate) fn contains(&self, slot: Slot) -> bool {
        self.get(slot).is_some()
    }

    /// Inserts `item` at `slot`, returning what was there.
    pub(crate) fn insert(&mut self, slot: Slot, item: T) -> Option<T> {
        if self.items.is_empty() {
            self.start = slot;
            self.items.push_back(Some(item));
            self.len = 1;
            return None;
        }
        if slot < self.start {
            let gap = usize::try_from(self.start.0 - slot.0).expect("slot gap fits in memory");
            self.items.reserve(gap);
            for _ in 1..gap {
                self.items.push_front(None);
            }
            self.items.push_front(Some(item));
            self.start = slot;
            self.len += 1;
            return None;
        }
        let index = usize::try_from(slot.0 - self.start.0).expect("slot gap fits in memory");
        if index >= self.items.len() {
            self.items.resize_with(index, || None);
            self.items.push_back(Some(item));
            self.len += 1;
            return None;
        }
        let previous = self.items[index].replace(item);
        if previous.is_none() {
            self.len += 1;
        }
        previous
    }

    /// Replaces the item at `slot` (which must hold one) with `f` of it, moving rather than
    /// copying it.
    pub(crate) fn replace_with(&mut self, slot: Slot, f: impl FnOnce(T) -> T) {
        let index = self.index(slot).expect("replace_with needs an item");
        let item = self.items[index]
            .take()
            .expect("replace_with needs an item");
        self.items[index] = Some(f(item));
    }

    /// Removes the item at `slot`, if any.
    pub(crate) fn remove(&mut self, slot: Slot) -> Option<T> {
        let index = self.index(slot)?;
        let item = self.items[index].take()?;
        self.len -= 1;
        self.trim();
        Some(item)
    }

    /// Drops every item at or below `slot`.
    pub(crate) fn remove_through(&mut self, slot: Slot) {
        if slot < self.start || self.items.is_empty() {
            return;
        }
        let count = usize::try_from(slot.0 - self.start.0 + 1)
            .unwrap_or(usize::MAX)
            .min(self.items.len());
        self.len -= self.items.range(..count).filter(|i| i.is_some()).count();
        // Dropped in place, not moved out one by one.
        self.items.drain(..count);
        self.start = self.start.plus(count as u64);
        self.trim();
    }

    /// Restores the invariant that both ends hold an item.
    fn trim(&mut self) {
        let leading = self.items.iter().take_while(|i| i.is_none()).count();
        if leading > 0 {
            self.items.drain(..leading);
            self.start = self.start.plus(leading as u64);
        }
        let trailing = self.items.iter().rev().take_while(|i| i.is_none()).count();
        self.items.truncate(self.items.len() - trailing);
    }

    pub(crate) fn first(&self) -> Option<(Slot, &T)> {
        let item = self.items.front()?.as_ref()?;
        Some((self.start, item))
    }

    pub(crate) fn last(&self) -> Option<(Slot, &T)> {
        let item = self.items.back()?.as_ref()?;
        Some((self.start.plus(self.items.len() as u64 - 1), item))
    }

    /// Items in slot order.
    pub(crate) fn iter(&self) -> impl DoubleEndedIterator<Item = (Slot, &T)> + '_ {
        self.range_from(Slot::ZERO)
    }

    /// Items at `from` and above, in slot order.
    pub(crate) fn range_from(
        &self,
        from: Slot,
    ) -> impl DoubleEndedIterator<Item = (Slot, &T)> + '_ {
        let skip = usize::try_from(from.0.saturating_sub(self.start.0))
            .unwrap_or(usize::MAX)
            .min(self.items.len());
        let start = self.start;
        self.items
            .range(skip..)
            .enumerate()
            .filter_map(move |(i, item)| {
                item.as_ref()
                    .map(|item| (start.plus((skip + i) as u64), item))
            })
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &T> + '_ {
        self.items.iter().flatten()
    }

    pub(crate) fn into_values(self) -> impl Iterator<Item = T> {
        self.items.into_iter().flatten()
    }
}

impl<T> FromIterator<(Slot, T)> for SlotMap<T> {
    fn from_iter<I: IntoIterator<Item = (Slot, T)>>(items: I) -> SlotMap<T> {
        let mut map = SlotMap::new();
        for (slot, item) in items {
            map.insert(slot, item);
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn behaves_like_an_ordered_map() {
        let mut rng = crate::rng::Rng::new(5);
        let mut dense: SlotMap<u64> = SlotMap::new();
        let mut tree: BTreeMap<Slot, u64> = BTreeMap::new();
        for step in 0..20_000u64 {
            let slot = Slot(1 + rng.below(200));
            match rng.below(10) {
                0..=5 => assert_eq!(dense.insert(slot, step), tree.insert(slot, step)),
                6..=7 => assert_eq!(dense.remove(slot), tree.remove(&slot)),
                8 if rng.chance(50_000) => {
                    dense.remove_through(slot);
                    tree = tree.split_off(&slot.next());
                }
                _ => assert_eq!(dense.get(slot), tree.get(&slot)),
            }
            assert_eq!(dense.len(), tree.len());
            assert_eq!(dense.first(), tree.first_key_value().map(|(s, v)| (*s, v)));
            assert_eq!(dense.last(), tree.last_key_value().map(|(s, v)| (*s, v)));
            let from = Slot(rng.below(220));
            assert!(dense
                .range_from(from)
                .eq(tree.range(from..).map(|(s, v)| (*s, v))));
        }
        assert!(dense.values().eq(tree.values()));
    }
}
