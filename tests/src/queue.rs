//! The simulator's event queue: events come out in `(at, seq)` order, exactly as from a binary
//! heap, but most of them never enter one.
//!
//! Nearly every event is due within tens of milliseconds (network delays, disk syncs, ticks), so
//! the near future is a timing wheel of short buckets: scheduling appends to a bucket, and the next
//! event is the least of the first non-empty bucket, which holds one or two. Events beyond the
//! wheel's horizon (long delays, crashes, partitions) wait in a heap and move into the wheel as the
//! clock nears them. A heap of every event costs a dozen unpredictable comparisons per event.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// One scheduled event: when, in which order among events at the same time, and where it waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scheduled {
    pub at: u64,
    /// Unique and increasing in the order events were scheduled: ties at one time go in that order.
    pub seq: u64,
    pub index: usize,
}

impl Scheduled {
    fn key(&self) -> (u64, u64) {
        (self.at, self.seq)
    }
}

/// Reversed, so that `BinaryHeap` (a max-heap) yields the earliest first.
#[derive(Debug, PartialEq, Eq)]
struct Far(Scheduled);

impl PartialOrd for Far {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Far {
    fn cmp(&self, other: &Self) -> Ordering {
        other.0.key().cmp(&self.0.key())
    }
}

/// Width of a wheel bucket, as a power of two of nanoseconds (65.5 µs).
const BUCKET_NS_LOG2: u32 = 16;
/// Buckets in the wheel: its horizon is 67 ms.
const BUCKETS: usize = 1024;
const WORDS: usize = BUCKETS / 64;

#[derive(Debug)]
pub struct EventQueue {
    /// `buckets[b % BUCKETS]` holds the events with `at >> BUCKET_NS_LOG2 == b`, for every bucket
    /// number `b` in `cursor..cursor + BUCKETS`. Invariant: every event of those buckets is here,
    /// none is in `far`.
    buckets: Vec<Vec<Scheduled>>,
    /// Bit `i` is set when `buckets[i]` is not empty.
    occupied: [u64; WORDS],
    /// The bucket number of the last event taken; nothing earlier is scheduled.
    cursor: u64,
    /// How many events the wheel holds.
    in_wheel: usize,
    /// Events of buckets at or beyond `cursor + BUCKETS`.
    far: BinaryHeap<Far>,
}

impl Default for EventQueue {
    fn default() -> EventQueue {
        EventQueue::new()
    }
}

impl EventQueue {
    pub fn new() -> EventQueue {
        EventQueue {
            buckets: (0..BUCKETS).map(|_| Vec::new()).collect(),
            occupied: [0; WORDS],
            cursor: 0,
            in_wheel: 0,
            far: BinaryHeap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.in_wheel + self.far.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Schedules `event`, which must not be earlier than the last event taken.
    pub fn push(&mut self, event: Scheduled) {
        let bucket = event.at >> BUCKET_NS_LOG2;
        assert!(bucket >= self.cursor, "an event scheduled in the past");
        if bucket < self.cursor + BUCKETS as u64 {
            self.put_in_wheel(bucket, event);
        } else {
            self.far.push(Far(event));
        }
    }

    fn put_in_wheel(&mut self, bucket: u64, event: Scheduled) {
        let i = (bucket % BUCKETS as u64) as usize;
        self.buckets[i].push(event);
        self.occupied[i / 64] |= 1 << (i % 64);
        self.in_wheel += 1;
    }

    /// Takes the earliest event: least `at`, then least `seq`.
    pub fn pop(&mut self) -> Option<Scheduled> {
        if self.in_wheel == 0 {
            // Jump to the first far event's bucket and bring the new horizon in.
            let first = self.far.peek()?.0.at >> BUCKET_NS_LOG2;
            self.advance_to(first);
        }
        let ahead = self.next_occupied();
        if ahead > 0 {
            self.advance_to(self.cursor + ahead);
        }
        let i = (self.cursor % BUCKETS as u64) as usize;
        let bucket = &mut self.buckets[i];
        let mut least = 0;
        for (j, event) in bucket.iter().enumerate().skip(1) {
            if event.key() < bucket[least].key() {
                least = j;
            }
        }
        let event = bucket.swap_remove(least);
        if bucket.is_empty() {
            self.occupied[i / 64] &= !(1 << (i % 64));
        }
        self.in_wheel -= 1;
        Some(event)
    }

    /// Moves the cursor to bucket `to` and brings far events that enter the horizon into the wheel.
    #[inline]
    fn advance_to(&mut self, to: u64) {
        debug_assert!(to >= self.cursor);
        self.cursor = to;
        let horizon = self.cursor + BUCKETS as u64;
        let due = |far: &BinaryHeap<Far>| {
            far.peek()
                .is_some_and(|f| f.0.at >> BUCKET_NS_LOG2 < horizon)
        };
        if due(&self.far) {
            self.migrate(horizon);
        }
    }

    /// Brings the far events of buckets before `horizon` into the wheel.
    fn migrate(&mut self, horizon: u64) {
        while let Some(Far(event)) = self.far.peek() {
            let bucket = event.at >> BUCKET_NS_LOG2;
            if bucket >= horizon {
                break;
            }
            let event = *event;
            self.far.pop();
            self.put_in_wheel(bucket, event);
        }
    }

    /// How many buckets after the cursor's the first non-empty one is. The wheel must not be empty.
    fn next_occupied(&self) -> u64 {
        let start = (self.cursor % BUCKETS as u64) as usize;
        let (word, bit) = (start / 64, start % 64);
        let here = self.occupied[word] & (u64::MAX << bit);
        if here != 0 {
            return u64::from(here.trailing_zeros()) - bit as u64;
        }
        for step in 1..=WORDS {
            let w = (word + step) % WORDS;
            let bits = if step == WORDS {
                // Back at the first word: only the bits before the cursor's.
                self.occupied[w] & !(u64::MAX << bit)
            } else {
                self.occupied[w]
            };
            if bits != 0 {
                let index = w * 64 + bits.trailing_zeros() as usize;
                return ((index + BUCKETS - start) % BUCKETS) as u64;
            }
        }
        unreachable!("next_occupied on an empty wheel")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paxos_core::rng::Rng;

    #[test]
    fn yields_what_a_heap_yields() {
        let mut rng = Rng::new(11);
        let mut queue = EventQueue::new();
        let mut heap: BinaryHeap<Far> = BinaryHeap::new();
        let (mut now, mut seq) = (0u64, 0u64);
        for _ in 0..200_000 {
            if rng.below(100) < 52 || heap.is_empty() {
                seq += 1;
                let after = match rng.below(10) {
                    0 => 0,
                    1 => rng.below(5_000_000_000),
                    2 => rng.below(100_000_000),
                    _ => rng.below(30_000_000),
                };
                let event = Scheduled {
                    at: now + after,
                    seq,
                    index: seq as usize,
                };
                queue.push(event);
                heap.push(Far(event));
            } else {
                let expected = heap.pop().map(|f| f.0);
                let got = queue.pop();
                assert_eq!(got, expected);
                now = got.expect("not empty").at;
            }
            assert_eq!(queue.len(), heap.len());
        }
        while let Some(Far(expected)) = heap.pop() {
            assert_eq!(queue.pop(), Some(expected));
        }
        assert!(queue.is_empty());
    }
}
