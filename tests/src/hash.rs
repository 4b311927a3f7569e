//! Hash tables for the simulator's lookups, with a fast unseeded hasher.

use std::hash::{BuildHasherDefault, Hasher};

/// A map for the simulator's lookup tables, hashed with [`FxHasher`]. Never iterated: a run must not
/// depend on the order of a hash table.
pub type FastMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<FxHasher>>;
/// A set for the simulator's lookup tables; see [`FastMap`].
pub type FastSet<K> = std::collections::HashSet<K, BuildHasherDefault<FxHasher>>;

/// The multiply-rotate hash of rustc's `FxHasher`: a few instructions per word, unseeded, so a run
/// stays the same from one process to the next. Fine for keys no adversary picks.
#[derive(Clone, Copy, Debug, Default)]
pub struct FxHasher(u64);

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }
    fn write_u64(&mut self, word: u64) {
        self.add(word);
    }
    fn write_usize(&mut self, word: usize) {
        self.add(word as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}
