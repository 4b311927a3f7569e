//! Newtypes for the ids and numbers the database hands out, so a slot is never mixed up with a
//! session or a request number.
//!
//! The crate does not depend on `replicated-log` or `paxos-core`: [`Slot`] and [`Epoch`] here are
//! this crate's own; the integration converts at the boundary (`Slot(log_slot.0)`).

use serde::{Deserialize, Serialize};
use std::fmt;

/// A position in the replicated log: the slot whose value held the command being applied.
/// Several commands may share a slot (a batch); slots never go backwards.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Slot(pub u64);

/// A client session. Ids are handed out in increasing order by `OpenSession` and never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SessionId(pub u64);

/// A session-scoped request number: a write retried with the same `(session, seq)` is applied at
/// most once (see `docs/chubby-db.md`, "Exactly once").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestSeq(pub u64);

/// A master tenure, opaque to the database: it only records the epoch the last `MasterChanged`
/// named and compares it for equality (the `MasterEpochEquals` test).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Epoch(pub u64);

/// Identifies an event: the slot that produced it and its position among that slot's events.
/// Clients resume and deduplicate by it; ids of one session's events only increase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EventId {
    pub slot: Slot,
    pub index: u64,
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}", self.0)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "session {}", self.0)
    }
}

/// Serde for shared contents (`Arc<[u8]>`) as one byte string, like `serde_bytes` does for
/// `Vec<u8>`: postcard writes the same bytes either way (a length, then the bytes), but reads and
/// writes them in one piece instead of one element at a time. Use with `#[serde(with = ...)]`.
pub mod shared_bytes {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::sync::Arc;

    pub fn serialize<S: Serializer>(bytes: &Arc<[u8]>, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Arc<[u8]>, D::Error> {
        let bytes = serde_bytes::ByteBuf::deserialize(deserializer)?;
        Ok(Arc::from(bytes.into_vec()))
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};
    use std::sync::Arc;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct AsSequence {
        contents: Vec<u8>,
    }

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct AsBytes {
        #[serde(with = "serde_bytes")]
        contents: Vec<u8>,
    }

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Shared {
        #[serde(with = "super::shared_bytes")]
        contents: Arc<[u8]>,
    }

    /// Contents written as a byte string are the bytes written before as a sequence of bytes, so
    /// logs, snapshots and peers of either encoding read each other.
    #[test]
    fn byte_strings_encode_as_the_sequences_they_replaced() {
        for len in [0usize, 1, 127, 128, 1024, 70_000] {
            let contents: Vec<u8> = (0..len).map(|i| (i * 31) as u8).collect();
            let old = postcard::to_stdvec(&AsSequence {
                contents: contents.clone(),
            })
            .unwrap();
            let new = postcard::to_stdvec(&AsBytes {
                contents: contents.clone(),
            })
            .unwrap();
            let shared = postcard::to_stdvec(&Shared {
                contents: Arc::from(contents.clone()),
            })
            .unwrap();
            assert_eq!(old, new, "len {len}");
            assert_eq!(old, shared, "len {len}");
            let back: Shared = postcard::from_bytes(&old).unwrap();
            assert_eq!(&*back.contents, &contents[..]);
            let back: AsBytes = postcard::from_bytes(&old).unwrap();
            assert_eq!(back.contents, contents);
        }
    }
}
