//! The public face of the log: what an application configures, implements and calls.

use crate::wire::ClusterId;
use paxos_core::{Epoch, NodeId, ProposeError, RoleKind, Settings, Slot};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Writes a frozen view of the application's state; runs on a blocking thread.
pub type SnapshotFn = Box<dyn FnOnce(&mut dyn Write) -> std::io::Result<()> + Send>;

/// The application's replicated state. The log calls it from one task, in slot order, exactly once
/// per chosen entry on this replica (after a restart, from the last snapshot on).
pub trait StateMachine: Send + 'static {
    /// What applying an entry answers; handed back to whoever submitted it.
    type Output: Send + 'static;

    /// Applies one chosen entry. Must be deterministic: every replica applies the same entries in
    /// the same order and must reach the same state.
    fn apply(&mut self, slot: Slot, entry: &[u8]) -> Self::Output;

    /// A frozen view of the state as applied so far, written out on another thread while the log
    /// keeps applying (PML 5.5). Make it cheap: share immutable structure, or copy if small.
    fn snapshot(&self) -> SnapshotFn;

    /// Replaces the whole state with a snapshot written by `snapshot` (on this or another replica).
    fn restore(&mut self, snapshot: &mut dyn Read) -> std::io::Result<()>;

    /// Forgets everything: the replica's state was found corrupt and is being rebuilt.
    fn reset(&mut self);

    /// A digest of the whole state, compared across replicas at consistency-check slots (PML 6).
    fn digest(&self) -> u64;
}

/// How a replica with an empty data directory starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StartMode {
    /// A member of `initial_members`: bootstrap the cluster if no peer holds state of it; if one
    /// does, this replica's state was lost and it rebuilds instead.
    Bootstrap,
    /// A node added with `add_learner`: it catches up from its peers as a non-voting member.
    Join,
}

/// Everything a replica needs to open its log.
#[derive(Clone, Debug)]
pub struct LogConfig {
    pub cluster: ClusterId,
    pub node: NodeId,
    pub data_dir: PathBuf,
    /// The voters of a new cluster (also the peers asked when the data directory is empty).
    pub initial_members: Vec<NodeId>,
    /// Every peer's address. Nodes added later are learned through the log.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    pub start: StartMode,
    /// Engine timing, in ticks.
    pub settings: Settings,
    /// Wall time of one engine tick.
    pub tick: Duration,
    /// Take a snapshot (and truncate the log) after this many applied slots.
    pub snapshot_every_slots: u64,
    /// Also take one once the values applied since the last snapshot add up to this many bytes.
    /// This bounds the memory and disk the log holds between snapshots. With the default (one
    /// default segment's worth) a busy log keeps to the segment files compaction recycles; a new
    /// segment must be zero-filled before use, which doubles what the disk writes (see
    /// `docs/storage-format.md`, "Recycled segments"). Scale it with a larger state machine: each
    /// snapshot writes the whole state.
    pub snapshot_every_bytes: u64,
    /// How long `submit` waits for its entry to be chosen before answering `Timeout`.
    pub submit_timeout: Duration,
    /// Seeds the engine's election jitter.
    pub seed: u64,
    /// Segment size and preallocation of the write-ahead log.
    pub storage: crate::storage::StorageOptions,
    /// Test knob, 0 in service: this replica's clock runs this many parts per million fast
    /// (positive) or slow (negative), clamped to [`CLOCK_RATE_PPM_MAX`](crate::clock::CLOCK_RATE_PPM_MAX)
    /// either way. The driver counts engine ticks on the skewed clock, so a fault harness can run
    /// one replica's clock outside `settings.clock_drift_ppm` and check that it is caught.
    pub clock_rate_ppm: i64,
    /// Deliberately broken engine behaviours, planted in every `Replica` the driver runs (teeth
    /// tests of real-process fault harnesses only; all off by default).
    #[cfg(feature = "planted-bugs")]
    pub planted_bugs: paxos_core::PlantedBugs,
}

impl LogConfig {
    /// A configuration with the defaults for a replica of `initial_members`.
    pub fn new(
        cluster: ClusterId,
        node: NodeId,
        data_dir: impl Into<PathBuf>,
        peers: BTreeMap<NodeId, SocketAddr>,
    ) -> LogConfig {
        LogConfig {
            cluster,
            node,
            data_dir: data_dir.into(),
            initial_members: peers.keys().copied().collect(),
            peers,
            start: StartMode::Bootstrap,
            settings: Settings::default(),
            tick: Duration::from_millis(10),
            snapshot_every_slots: 100_000,
            snapshot_every_bytes: crate::storage::limits::SEGMENT_BYTES_DEFAULT,
            submit_timeout: Duration::from_secs(10),
            seed: node.0,
            storage: Default::default(),
            clock_rate_ppm: 0,
            #[cfg(feature = "planted-bugs")]
            planted_bugs: paxos_core::PlantedBugs::default(),
        }
    }
}

/// A submitted entry was chosen and applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed<O> {
    pub slot: Slot,
    /// The master tenure that chose it (PML 5.3).
    pub epoch: Epoch,
    /// What the state machine answered when it applied the entry here.
    pub output: O,
}

/// Why a submit was not acknowledged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// Only the master takes submits; `hint` is who this replica believes is master.
    NotMaster { hint: Option<NodeId> },
    /// Mastership was lost before the entry was chosen. It may or may not be chosen later: resubmit
    /// only what is idempotent or deduplicated by the application.
    EpochChanged,
    /// The entry was not chosen in time. Its fate is unknown, as with `EpochChanged`.
    Timeout,
    /// Too many submits are queued, or the entry is too large, or the change makes no sense.
    Refused(String),
    /// The replica is shutting down or stopped on a fatal storage error.
    ShuttingDown,
}

impl From<ProposeError> for SubmitError {
    fn from(error: ProposeError) -> SubmitError {
        match error {
            ProposeError::NotMaster { hint } => SubmitError::NotMaster { hint },
            ProposeError::EpochChanged { .. } => SubmitError::EpochChanged,
            other => SubmitError::Refused(other.to_string()),
        }
    }
}

impl std::fmt::Display for SubmitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubmitError::NotMaster { hint: Some(node) } => write!(f, "not master: try {node}"),
            SubmitError::NotMaster { hint: None } => {
                write!(f, "not master and no master known yet: retry shortly")
            }
            SubmitError::EpochChanged => write!(
                f,
                "mastership changed before the entry was chosen: its fate is unknown"
            ),
            SubmitError::Timeout => write!(f, "not chosen in time: its fate is unknown"),
            SubmitError::Refused(why) => write!(f, "refused: {why}"),
            SubmitError::ShuttingDown => write!(f, "the replica is shutting down"),
        }
    }
}

impl std::error::Error for SubmitError {}

/// The outcome of a consistency check requested with [`Log::check`](crate::Log::check) (PML 6):
/// the master put a digest request in the log at `slot`; every replica that applied it reported a
/// digest of its state right after that slot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    pub slot: u64,
    /// The voters of the configuration in force at `slot`: the replicas that must agree.
    pub voters: Vec<NodeId>,
    /// The digest each replica reported before the answer (voters, and learners that did), by node.
    pub digests: BTreeMap<NodeId, u64>,
    /// Every voter reported before the timeout.
    pub complete: bool,
}

impl CheckReport {
    /// Every voter reported and every reported digest is the same.
    pub fn agree(&self) -> bool {
        let mut values = self.digests.values();
        let first = values.next();
        self.complete && values.all(|d| Some(d) == first)
    }
}

/// Why a read was not served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadError {
    /// Linearizable reads are served by the master under its lease only.
    NotMaster {
        hint: Option<NodeId>,
    },
    /// This replica is master but its lease is not (yet, or any more) valid: retry shortly.
    NoLease,
    ShuttingDown,
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::NotMaster { hint: Some(node) } => write!(f, "not master: try {node}"),
            ReadError::NotMaster { hint: None } => {
                write!(f, "not master and no master known yet: retry shortly")
            }
            ReadError::NoLease => write!(f, "master lease not held right now: retry shortly"),
            ReadError::ShuttingDown => write!(f, "the replica is shutting down"),
        }
    }
}

impl std::error::Error for ReadError {}

/// Why a log could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// The configuration cannot work; the text says which field.
    Config(String),
    /// The data directory belongs to another cluster or node.
    Identity(String),
    Storage(crate::storage::StorageError),
    Transport(crate::transport::TransportError),
    Io(std::io::Error),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Config(why) => write!(f, "bad configuration: {why}"),
            OpenError::Identity(why) => write!(f, "data directory identity: {why}"),
            OpenError::Storage(error) => write!(f, "storage: {error}"),
            OpenError::Transport(error) => write!(f, "transport: {error}"),
            OpenError::Io(error) => write!(f, "{error}"),
        }
    }
}

impl std::error::Error for OpenError {}

impl From<crate::storage::StorageError> for OpenError {
    fn from(error: crate::storage::StorageError) -> OpenError {
        OpenError::Storage(error)
    }
}

impl From<crate::transport::TransportError> for OpenError {
    fn from(error: crate::transport::TransportError) -> OpenError {
        OpenError::Transport(error)
    }
}

/// One replica's view of itself, for operators and health checks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub cluster: ClusterId,
    pub node: NodeId,
    pub incarnation: u64,
    pub role: Role,
    /// The epoch this replica is master of.
    pub epoch: Option<String>,
    /// Who this replica believes is master.
    pub master: Option<NodeId>,
    /// Master holding a valid lease: linearizable reads are served here.
    pub lease: bool,
    pub rebuilding: bool,
    pub chosen_through: u64,
    pub applied_through: u64,
    pub snapshot_slot: u64,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    pub peers: BTreeMap<NodeId, SocketAddr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Follower,
    Candidate,
    Master,
}

impl From<RoleKind> for Role {
    fn from(role: RoleKind) -> Role {
        match role {
            RoleKind::Follower => Role::Follower,
            RoleKind::Candidate => Role::Candidate,
            RoleKind::Master => Role::Master,
        }
    }
}

/// Counters and distributions since the replica started.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub fsyncs: u64,
    pub fsync_micros_p50: u64,
    pub fsync_micros_p99: u64,
    pub fsync_micros_max: u64,
    pub records_written: u64,
    pub bytes_written: u64,
    /// Records per group commit.
    pub batch_records_mean: f64,
    pub batch_records_max: u64,
    pub submits_committed: u64,
    pub submits_failed: u64,
    pub snapshots_taken: u64,
    pub snapshots_installed: u64,
    pub messages_sent: u64,
    pub messages_received: u64,
}
