//! Snapshots, restore and the digest.
//!
//! A [`Snapshot`] is a frozen view of the state: taking one bumps a few reference counts (see
//! `state.rs`), and writing it out can happen on another thread while the database keeps
//! applying. The byte layout (fixed-width little-endian integers):
//!
//! ```text
//! offset 0      magic "CHUBBYDB"                        8 bytes
//! offset 8      format version, u32 = 1                 4 bytes
//! offset 12     payload: the state, postcard-encoded    N bytes
//! offset 12+N   N, u64                                  8 bytes
//! offset 20+N   CRC-32 (IEEE) of bytes [0, 20+N), u32   4 bytes
//! ```
//!
//! The length and checksum trail the payload so a snapshot streams out in one pass. `restore`
//! reads the whole input, checks magic, version, length and CRC, decodes, then checks every
//! invariant of the decoded state (including each file's content checksum) before replacing
//! anything: a truncated, corrupted or inconsistent snapshot is a typed [`RestoreError`] and
//! leaves the database as it was.
//!
//! The digest is FNV-1a 64 of the payload bytes: the postcard encoding of the whole state with
//! every map in key order, so it covers every node, lock, session (reply cache included) and
//! watch, and equal states give equal digests on any machine.

use crate::database::Database;
use crate::hash::Fnv1a;
use crate::state::State;
use crate::types::Slot;
use std::fmt;
use std::io::{self, Read, Write};

const MAGIC: &[u8; 8] = b"CHUBBYDB";
const FORMAT_VERSION: u32 = 1;
const HEADER_BYTES: usize = 12;
const TRAILER_BYTES: usize = 12;
/// Bytes buffered before the snapshot writer hands them to the output.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// A snapshot as a one-shot writer, to run on any thread.
pub type SnapshotWriter = Box<dyn FnOnce(&mut dyn Write) -> io::Result<()> + Send>;

/// A frozen view of the database, `Send + 'static`, to be written out anywhere.
#[derive(Clone)]
pub struct Snapshot {
    state: State,
}

/// Why a snapshot could not be restored. The database is unchanged.
#[derive(Debug)]
pub enum RestoreError {
    Io(io::Error),
    /// Shorter than a header and trailer.
    Truncated {
        bytes: usize,
    },
    BadMagic,
    UnsupportedVersion {
        version: u32,
    },
    /// The recorded payload length disagrees with the bytes present (truncation or garbage).
    LengthMismatch {
        recorded: u64,
        actual: u64,
    },
    ChecksumMismatch {
        recorded: u32,
        computed: u32,
    },
    /// The checksum matched but the payload does not decode.
    Malformed,
    /// The payload decoded but breaks an invariant.
    Invalid(&'static str),
}

impl Database {
    /// A frozen view of the state as applied so far. Call between commands.
    pub fn snapshot(&self) -> Snapshot {
        assert!(
            self.journal.is_empty(),
            "snapshot in the middle of a command"
        );
        Snapshot {
            state: self.state.clone(),
        }
    }

    /// Replaces the whole state (config included) with a snapshot's. On error nothing changes.
    pub fn restore<R: Read + ?Sized>(&mut self, input: &mut R) -> Result<(), RestoreError> {
        let mut bytes = Vec::new();
        input.read_to_end(&mut bytes)?;
        let state = decode(&bytes)?;
        self.replace_state(state);
        Ok(())
    }

    /// A database restored from a snapshot.
    pub fn from_snapshot<R: Read + ?Sized>(input: &mut R) -> Result<Database, RestoreError> {
        let mut bytes = Vec::new();
        input.read_to_end(&mut bytes)?;
        Ok(Database::from_state(decode(&bytes)?))
    }

    /// A digest of the whole replicated state, equal on replicas that applied the same commands.
    pub fn digest(&self) -> u64 {
        digest(&self.state)
    }
}

impl Snapshot {
    /// The slot the snapshot was taken after.
    pub fn applied(&self) -> Slot {
        self.state.applied
    }

    /// The digest of the database the snapshot was taken from.
    pub fn digest(&self) -> u64 {
        digest(&self.state)
    }

    /// Writes the snapshot in the layout above.
    pub fn write_to<W: Write + ?Sized>(&self, output: &mut W) -> io::Result<()> {
        let mut sink = Sink {
            output,
            buffer: Vec::with_capacity(WRITE_BUFFER_BYTES),
            crc: crc32fast::Hasher::new(),
            payload_bytes: 0,
            error: None,
        };
        sink.put(MAGIC)?;
        sink.put(&FORMAT_VERSION.to_le_bytes())?;
        sink.payload_bytes = 0;
        if let Err(error) = postcard::to_io(&self.state, &mut sink) {
            return Err(sink.error.take().unwrap_or_else(|| io::Error::other(error)));
        }
        let payload_bytes = sink.payload_bytes;
        sink.put(&payload_bytes.to_le_bytes())?;
        sink.drain()?;
        let crc = sink.crc.clone().finalize();
        sink.output.write_all(&crc.to_le_bytes())?;
        sink.output.flush()
    }

    /// The snapshot's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        self.write_to(&mut bytes)
            .expect("writing to a Vec cannot fail");
        bytes
    }

    /// The snapshot as a one-shot writer, the shape `replicated-log`'s `StateMachine::snapshot`
    /// returns.
    pub fn into_writer(self) -> SnapshotWriter {
        Box::new(move |output: &mut dyn Write| self.write_to(output))
    }
}

/// Buffers output, computes the CRC and counts payload bytes; keeps the first IO error, which
/// postcard would otherwise flatten into its own error type.
struct Sink<'a, W: Write + ?Sized> {
    output: &'a mut W,
    buffer: Vec<u8>,
    crc: crc32fast::Hasher,
    /// Bytes counted since the header.
    payload_bytes: u64,
    error: Option<io::Error>,
}

impl<W: Write + ?Sized> Sink<'_, W> {
    /// Appends bytes covered by the CRC.
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.payload_bytes += bytes.len() as u64;
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= WRITE_BUFFER_BYTES {
            self.drain()?;
        }
        Ok(())
    }

    /// Checksums and writes out what is buffered.
    fn drain(&mut self) -> io::Result<()> {
        self.crc.update(&self.buffer);
        let result = self.output.write_all(&self.buffer);
        self.buffer.clear();
        result
    }
}

impl<W: Write + ?Sized> Write for Sink<'_, W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match self.put(bytes) {
            Ok(()) => Ok(bytes.len()),
            Err(error) => {
                let kind = error.kind();
                self.error.get_or_insert(error);
                Err(io::Error::from(kind))
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn digest(state: &State) -> u64 {
    let mut hasher = Fnv1a::new();
    postcard::to_io(state, &mut hasher).expect("hashing cannot fail");
    hasher.finish()
}

/// Checks and decodes snapshot bytes.
pub(crate) fn decode(bytes: &[u8]) -> Result<State, RestoreError> {
    if bytes.len() < HEADER_BYTES + TRAILER_BYTES {
        return Err(RestoreError::Truncated { bytes: bytes.len() });
    }
    if &bytes[..8] != MAGIC {
        return Err(RestoreError::BadMagic);
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(RestoreError::UnsupportedVersion { version });
    }
    let trailer = bytes.len() - TRAILER_BYTES;
    let recorded = u64::from_le_bytes(bytes[trailer..trailer + 8].try_into().expect("8 bytes"));
    let actual = (trailer - HEADER_BYTES) as u64;
    if recorded != actual {
        return Err(RestoreError::LengthMismatch { recorded, actual });
    }
    let recorded = u32::from_le_bytes(bytes[trailer + 8..].try_into().expect("4 bytes"));
    let computed = crc32fast::hash(&bytes[..trailer + 8]);
    if recorded != computed {
        return Err(RestoreError::ChecksumMismatch { recorded, computed });
    }
    let payload = &bytes[HEADER_BYTES..trailer];
    let (state, rest) =
        postcard::take_from_bytes::<State>(payload).map_err(|_| RestoreError::Malformed)?;
    if !rest.is_empty() {
        return Err(RestoreError::Malformed);
    }
    if let Some(why) = state.invalid() {
        return Err(RestoreError::Invalid(why));
    }
    Ok(state)
}

impl From<io::Error> for RestoreError {
    fn from(error: io::Error) -> RestoreError {
        RestoreError::Io(error)
    }
}

/// For `StateMachine::restore`, which answers `io::Result`: corruption is `InvalidData`.
impl From<RestoreError> for io::Error {
    fn from(error: RestoreError) -> io::Error {
        match error {
            RestoreError::Io(error) => error,
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}

impl fmt::Display for RestoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestoreError::Io(error) => write!(f, "reading the snapshot: {error}"),
            RestoreError::Truncated { bytes } => write!(f, "snapshot truncated at {bytes} bytes"),
            RestoreError::BadMagic => f.write_str("not a chubby-db snapshot (bad magic)"),
            RestoreError::UnsupportedVersion { version } => {
                write!(f, "snapshot format version {version} is not supported")
            }
            RestoreError::LengthMismatch { recorded, actual } => write!(
                f,
                "snapshot payload is {actual} bytes but the trailer records {recorded}"
            ),
            RestoreError::ChecksumMismatch { recorded, computed } => write!(
                f,
                "snapshot checksum mismatch: recorded {recorded:#010x}, computed {computed:#010x}"
            ),
            RestoreError::Malformed => f.write_str("snapshot payload does not decode"),
            RestoreError::Invalid(why) => write!(f, "snapshot state is inconsistent: {why}"),
        }
    }
}

impl std::error::Error for RestoreError {}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("applied", &self.state.applied)
            .field("nodes", &self.state.nodes.len())
            .field("sessions", &self.state.sessions.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Config;

    #[test]
    fn layout_matches_the_doc() {
        let db = Database::new(Config::default());
        let bytes = db.snapshot().to_bytes();
        assert_eq!(&bytes[..8], b"CHUBBYDB");
        assert_eq!(bytes[8..12], 1u32.to_le_bytes());
        let n = bytes.len() - HEADER_BYTES - TRAILER_BYTES;
        let trailer = bytes.len() - TRAILER_BYTES;
        assert_eq!(bytes[trailer..trailer + 8], (n as u64).to_le_bytes());
        let crc = crc32fast::hash(&bytes[..trailer + 8]);
        assert_eq!(bytes[trailer + 8..], crc.to_le_bytes());
        let mut payload_hash = Fnv1a::new();
        payload_hash.update(&bytes[HEADER_BYTES..trailer]);
        assert_eq!(payload_hash.finish(), db.digest());
    }

    /// A snapshot whose checksum matches but whose state breaks an invariant (written by a
    /// buggy or hostile writer) is refused, not trusted.
    #[test]
    fn consistent_bytes_of_an_inconsistent_state_are_invalid() {
        use crate::state::Node;
        use crate::NodePath;
        use std::sync::Arc;

        let mut db = Database::new(Config::default());
        Arc::make_mut(&mut db.state.nodes).clear();
        let bytes = db.snapshot().to_bytes();
        assert!(matches!(
            decode(&bytes),
            Err(RestoreError::Invalid("the root is absent"))
        ));

        let mut db = Database::new(Config::default());
        let orphan = Node {
            instance: 1,
            ..(*db.state.nodes[&NodePath::root()]).clone()
        };
        let path = NodePath::new("/a/b").unwrap();
        Arc::make_mut(&mut db.state.nodes).insert(path, Arc::new(orphan.clone()));
        let bytes = db.snapshot().to_bytes();
        assert!(matches!(decode(&bytes), Err(RestoreError::Invalid(_))));

        let mut db = Database::new(Config::default());
        let tampered = Node {
            kind: crate::NodeKind::File,
            contents: Arc::from(&b"x"[..]),
            ..orphan
        };
        let path = NodePath::new("/f").unwrap();
        Arc::make_mut(&mut db.state.nodes).insert(path, Arc::new(tampered));
        let bytes = db.snapshot().to_bytes();
        assert!(matches!(
            decode(&bytes),
            Err(RestoreError::Invalid(
                "a node's checksum does not match its contents"
            ))
        ));
    }

    #[test]
    fn io_errors_surface() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let db = Database::new(Config::default());
        let error = db.snapshot().write_to(&mut Broken).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::StorageFull);
    }
}
