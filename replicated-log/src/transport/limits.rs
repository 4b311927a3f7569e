//! The transport's limits, in one place. Defaults of [`super::QuicLimits`] come from here.
//!
//! The crate has no crate-wide `limits` module yet; these belong to the transport alone.

use std::time::Duration;

/// Largest frame (postcard payload, without its 4-byte length) accepted or sent. A PML promise
/// reply may carry every accepted value above the promised slot, so this is generous; a frame
/// above it is a decode error on receipt and a counted drop on send.
pub const FRAME_BYTES_MAX: u32 = 64 * 1024 * 1024;

/// Messages waiting for one peer's send task. `send` drops (and counts) beyond this.
pub const SEND_QUEUE_MESSAGES_MAX: usize = 4096;

/// A peer's send task puts the messages queued at once into one stream write of about this many
/// bytes (more when one message alone is larger): many small writes each take the connection's
/// lock and wake its driver, which cost more than the messages themselves at high rates.
pub const SEND_BATCH_BYTES_MAX: usize = 256 * 1024;

/// The buffer a peer's message stream is read through, so that many small frames cost one read of
/// the stream (each read takes the connection's lock).
pub const RECEIVE_BUFFER_BYTES: usize = 256 * 1024;

/// First and largest delay between connection attempts to a peer (each delay is jittered down to
/// half its value so peers that lost each other together do not retry in lockstep).
pub const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(20);
pub const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A connection attempt (QUIC and TLS handshake) that takes longer fails.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a new stream may take to present its hello before it is closed.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection that hears nothing for this long is dead; keep-alives keep idle peers connected.
/// A peer restarted on its address is noticed sooner, by the boot nonce of its hello; this is for
/// a peer that went silent without coming back (crash, partition), whose messages meanwhile go
/// into a connection that looks up. Five keep-alives fit in it, so only a silence of seconds,
/// not a lost packet or two, ends a connection. Unrelated to election and lease timing: Paxos
/// retransmits whatever a dead connection swallowed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(1);

/// Snapshot files travel in chunks of at most this many bytes, each with its own crc32.
pub const SNAPSHOT_CHUNK_BYTES: u32 = 64 * 1024;

/// A snapshot transfer that makes no progress for this long fails with a timeout.
pub const SNAPSHOT_STALL_TIMEOUT: Duration = Duration::from_secs(10);

const _: () = assert!(RECONNECT_BACKOFF_MIN.as_millis() < RECONNECT_BACKOFF_MAX.as_millis());
const _: () = assert!(KEEP_ALIVE_INTERVAL.as_millis() * 2 < IDLE_TIMEOUT.as_millis());
const _: () = assert!(SNAPSHOT_CHUNK_BYTES <= FRAME_BYTES_MAX);
const _: () = assert!(SNAPSHOT_CHUNK_BYTES > 0 && SEND_QUEUE_MESSAGES_MAX > 0);
