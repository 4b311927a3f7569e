//! Named limits, units last. Relations between them are checked at compile time below.

/// Largest value (one slot's batch) an acceptor takes, in bytes.
pub const VALUE_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Most entries a master packs into one slot.
pub const BATCH_ENTRIES_MAX: usize = 1024;
/// Most bytes a master packs into one slot.
pub const BATCH_BYTES_MAX: usize = 1024 * 1024;
/// Most slot reports in one promise; a longer tail is learned by catch-up.
pub const PROMISE_ENTRIES_MAX: usize = 65_536;
/// Most chosen values in one catch-up reply.
pub const CATCH_UP_ENTRIES_MAX: usize = 256;
/// Most submits queued at a master before `propose` answers `Overloaded`.
pub const PENDING_ENTRIES_MAX: usize = 65_536;
/// Largest membership window (alpha, also the most slots in flight).
pub const WINDOW_SLOTS_MAX: u64 = 4096;

/// Most emptied `Action::Persist` vectors a replica keeps for reuse, of each kind.
pub const SPARE_BUFFERS_MAX: usize = 64;
/// Largest capacity, in elements, of a vector kept for reuse (larger ones are freed).
pub const SPARE_BUFFER_ENTRIES_MAX: usize = 64;

const _: () = assert!(BATCH_BYTES_MAX <= VALUE_BYTES_MAX);
const _: () = assert!(BATCH_ENTRIES_MAX <= PENDING_ENTRIES_MAX);
const _: () = assert!(WINDOW_SLOTS_MAX as usize <= PROMISE_ENTRIES_MAX);
