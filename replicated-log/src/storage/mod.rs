//! Durable state on disk: the write-ahead log, snapshot files and the identity file.
//!
//! ## Contract
//!
//! - [`Storage`] keeps one replica's data directory: a segmented WAL of the engine's
//!   [`Record`](paxos_core::Record)s, the application's snapshot files, and the identity file.
//!   It is synchronous and blocking; the driver runs it on a dedicated writer thread and the
//!   simulator calls it directly. It reads no clock and draws no randomness.
//! - Group commit: [`Storage::append`] only encodes; [`Storage::sync`] writes everything pending
//!   with one write and one fdatasync. A record is acknowledged (the engine may send what depends on
//!   it) only after a `sync` that covers it returned Ok. A failed fsync is fatal: storage refuses
//!   every later call and the process must exit (the page cache state is unknown).
//! - [`Storage::open`] recovers exactly the acknowledged records, or reports [`Opened::Damaged`]
//!   with the file, offset and reason. The only bytes it discards are a torn tail: the last batch,
//!   whose sync never returned. The one case where that rule can misjudge (a bit flip in the last
//!   synced batch) is bounded and documented in `docs/storage-format.md`.
//! - Everything runs over the narrow [`Vfs`] trait: [`FileVfs`] for real files, [`MemVfs`] for
//!   tests and the simulator (written vs synced bytes, torn writes, bit flips, lost files, failed
//!   fsyncs).
//!
//! Every byte layout is in [`format`] and drawn in `docs/storage-format.md`.

pub mod format;
pub mod limits;

mod dir_lock;
mod error;
mod mem_vfs;
mod recovery;
mod snapshot;
mod store;
mod vfs;
mod wal;

pub use dir_lock::{DirLock, LockError, LockState, LOCK_FILE_NAME};
pub use error::{Damage, DamageKind, StorageError};
pub use format::{FormatError, Identity};
pub use mem_vfs::{FailPoint, MemFile, MemStats, MemVfs, Tear};
pub use recovery::TornTail;
pub use snapshot::{verify_snapshot, SnapshotFiles, SnapshotReader, SnapshotWriter};
pub use store::{Opened, Storage, StorageMetrics, StorageOptions, SyncReport};
pub use vfs::{DirEntry, FileVfs, FsFile, Vfs, VfsFile};
pub use wal::prepare_spare;
