//! The replicated state machine the simulator runs above the engine: a register whose writes carry
//! unique numbers, with a running digest (hash chain) of everything applied. On a chubby seed
//! (`sim/chubby.rs`) it also carries the real `chubby_db::Database`, fed the same log values, so
//! snapshots, restarts and catch-up move the database wherever they move the register.

use paxos_core::{EntryKind, Slot, Value};

#[derive(Clone, Debug, Default)]
pub struct Register {
    /// The last value written.
    pub value: u64,
    /// Every slot through here is applied.
    pub applied: Slot,
    /// Hash chain over every applied slot and value: equal chains mean equal histories.
    pub chain: u64,
    /// The chubby-db state machine, on a chubby seed (`None` on a register seed). The simulator
    /// applies commands to it; `Register::apply` leaves it alone.
    pub db: Option<Box<chubby_db::Database>>,
}

/// Registers are equal when their histories are; databases compare by digest.
impl PartialEq for Register {
    fn eq(&self, other: &Register) -> bool {
        self.value == other.value
            && self.applied == other.applied
            && self.chain == other.chain
            && self.db.as_ref().map(|d| d.digest()) == other.db.as_ref().map(|d| d.digest())
    }
}

impl Eq for Register {}

/// What applying a slot asks of the driver.
#[derive(Debug, Default)]
pub struct Applied {
    /// The slot held a digest request: report this digest to the engine.
    pub digest: Option<u64>,
}

impl Register {
    pub fn apply(&mut self, slot: Slot, value: &Value) -> Applied {
        assert_eq!(
            slot,
            self.applied.next(),
            "apply out of order: {slot} after {}",
            self.applied
        );
        self.applied = slot;
        self.chain = chain(self.chain, slot, value);
        let mut applied = Applied::default();
        for entry in value.entries.iter() {
            match &entry.kind {
                EntryKind::App(bytes) => self.value = decode(bytes),
                EntryKind::DigestRequest => applied.digest = Some(self.chain ^ self.value),
                EntryKind::Reconfigure(_) => {}
            }
        }
        applied
    }
}

pub fn encode(value: u64) -> Vec<u8> {
    value.to_le_bytes().to_vec()
}

pub fn decode(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    let n = bytes.len().min(8);
    buf[..n].copy_from_slice(&bytes[..n]);
    u64::from_le_bytes(buf)
}

/// The next link of a history's hash chain.
pub fn chain(previous: u64, slot: Slot, value: &Value) -> u64 {
    let mut h = Fnv::new(previous);
    h.write(slot.0);
    for entry in value.entries.iter() {
        h.write(entry.id.epoch.0.round);
        h.write(entry.id.epoch.0.node.0);
        h.write(entry.id.seq);
        match &entry.kind {
            EntryKind::App(bytes) => {
                h.write(1);
                h.write(decode(bytes));
            }
            EntryKind::DigestRequest => h.write(2),
            EntryKind::Reconfigure(change) => {
                h.write(3);
                h.write(format!("{change:?}").len() as u64);
            }
        }
    }
    h.finish()
}

/// An FNV-style hash over 64-bit words: fast, deterministic, good enough to tell histories apart.
#[derive(Clone, Copy, Debug)]
pub struct Fnv(u64);

impl Fnv {
    pub fn new(seed: u64) -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325 ^ seed)
    }
    pub fn write(&mut self, word: u64) {
        // Word at a time, with a final avalanche in `finish`: plenty to tell histories apart.
        self.0 ^= word;
        self.0 = self.0.wrapping_mul(0x0100_0000_01b3).rotate_left(29);
    }
    pub fn finish(self) -> u64 {
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z ^ (z >> 31)
    }
}
