//! Named limits, units last. Relations between them are checked at compile time below.
//!
//! Limits that every replica must agree on are either constants here or fields of
//! `chubby_db::Config`, which is part of the replicated state (it travels in snapshots and feeds the
//! digest), so two replicas can never apply the same command under different limits.

/// Longest path, in bytes of UTF-8, including the leading `/`.
pub const PATH_BYTES_MAX: usize = 1024;
/// Longest single name (path component), in bytes of UTF-8.
pub const NAME_BYTES_MAX: usize = 255;

/// Default for `chubby_db::Config::contents_bytes_max`: the largest contents of one file.
pub const CONTENTS_BYTES_MAX_DEFAULT: u32 = 256 * 1024;
/// The most `chubby_db::Config::contents_bytes_max` may be set to.
pub const CONTENTS_BYTES_MAX_CEILING: u32 = 512 * 1024;

/// Largest encoded command `chubby_db::Command::decode` accepts, in bytes.
pub const COMMAND_BYTES_MAX: usize = 1024 * 1024;
/// Most tests in one MultiOp guard.
pub const GUARD_TESTS_MAX: usize = 64;
/// Most ops in one MultiOp branch (`top` and `fop` are limited separately).
pub const BRANCH_OPS_MAX: usize = 64;
/// Most bytes of paths and contents one MultiOp may carry, guard and both branches together.
pub const MULTIOP_BYTES_MAX: usize = 896 * 1024;
/// Most bytes of contents the reads of one MultiOp may return.
pub const MULTIOP_READ_BYTES_MAX: usize = 1024 * 1024;

/// Default session lease, in milliseconds of the master's clock (Chubby's 12 s).
pub const LEASE_MS_DEFAULT: u64 = 12_000;
/// Shortest lease a session may ask for.
pub const LEASE_MS_MIN: u64 = 1_000;
/// Longest lease a session may ask for.
pub const LEASE_MS_MAX: u64 = 60_000;

/// Longest lock-delay a lock may have (Chubby's one minute).
pub const LOCK_DELAY_MS_MAX: u64 = 60_000;
/// Default for `chubby_db::Config::lock_delay_ms_default`.
pub const LOCK_DELAY_MS_DEFAULT: u64 = 10_000;

/// Most replies a session's reply cache remembers for exactly-once retries (the highest request
/// sequence numbers win). A client must not have more requests than this outstanding.
pub const SESSION_REPLIES_MAX: usize = 16;
/// Most paths one session may watch.
pub const SESSION_WATCHES_MAX: usize = 1024;
/// Most sessions waiting in one lock's queue.
pub const LOCK_WAITERS_MAX: usize = 1024;

/// Largest frame payload of the client protocol, in bytes (requests, responses and events).
pub const FRAME_BYTES_MAX: usize = 2 * 1024 * 1024;
/// Bytes of the little-endian `u32` length that prefixes every frame.
pub const FRAME_HEADER_BYTES: usize = 4;
/// Most events a server keeps per session for a client to resume its event stream after a
/// reconnection or a fail-over; older ones are dropped and the client is told it missed some.
pub const SESSION_EVENTS_BUFFERED_MAX: usize = 1024;

const _: () = assert!(NAME_BYTES_MAX < PATH_BYTES_MAX);
// A request carrying the largest MultiOp, and a reply carrying the largest reads, fit a frame.
const _: () = assert!(COMMAND_BYTES_MAX + 64 * 1024 <= FRAME_BYTES_MAX);
const _: () = assert!(MULTIOP_READ_BYTES_MAX + 64 * 1024 <= FRAME_BYTES_MAX);
const _: () = assert!(FRAME_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(CONTENTS_BYTES_MAX_DEFAULT <= CONTENTS_BYTES_MAX_CEILING);
// One Create of the largest file, with the longest path, fits one MultiOp, which fits a command.
const _: () = assert!(CONTENTS_BYTES_MAX_CEILING as usize + PATH_BYTES_MAX <= MULTIOP_BYTES_MAX);
const _: () = assert!(MULTIOP_BYTES_MAX + 64 * 1024 <= COMMAND_BYTES_MAX);
// One read of the largest file always fits a reply.
const _: () = assert!(CONTENTS_BYTES_MAX_CEILING as usize <= MULTIOP_READ_BYTES_MAX);
const _: () = assert!(LEASE_MS_MIN <= LEASE_MS_DEFAULT && LEASE_MS_DEFAULT <= LEASE_MS_MAX);
const _: () = assert!(LOCK_DELAY_MS_DEFAULT <= LOCK_DELAY_MS_MAX);
const _: () = assert!(SESSION_REPLIES_MAX >= 1);
