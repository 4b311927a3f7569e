//! What the log layer puts inside the engine's opaque entries, and in front of the application's
//! snapshot bytes.
//!
//! An entry is one tag byte and a body: `0` the application's bytes as given, `1` a peer address
//! (postcard `(NodeId, SocketAddr)`). Addresses travel through the log so that every replica, and
//! every later master, can reach a member added at run time. A snapshot file's payload starts with
//! `length u32 LE | postcard(address book)`, then the application's own bytes.

use paxos_core::NodeId;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;

const TAG_APP: u8 = 0;
const TAG_ADDRESS: u8 = 1;
/// Bound on the address book in a snapshot: far above any real cluster.
const ADDRESS_BOOK_BYTES_MAX: u32 = 1024 * 1024;

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Entry<'a> {
    App(&'a [u8]),
    Address { node: NodeId, address: SocketAddr },
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum EntryError {
    Empty,
    UnknownTag(u8),
    BadAddress,
}

impl std::fmt::Display for EntryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EntryError::Empty => write!(f, "empty entry"),
            EntryError::UnknownTag(tag) => write!(f, "unknown entry tag {tag}"),
            EntryError::BadAddress => write!(f, "undecodable address entry"),
        }
    }
}

pub(crate) fn encode_app(data: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(data.len() + 1);
    bytes.push(TAG_APP);
    bytes.extend_from_slice(data);
    bytes
}

pub(crate) fn encode_address(node: NodeId, address: SocketAddr) -> Vec<u8> {
    let mut bytes = vec![TAG_ADDRESS];
    bytes.extend(postcard::to_stdvec(&(node, address)).expect("encoding to a Vec cannot fail"));
    bytes
}

pub(crate) fn decode(bytes: &[u8]) -> Result<Entry<'_>, EntryError> {
    let (&tag, body) = bytes.split_first().ok_or(EntryError::Empty)?;
    match tag {
        TAG_APP => Ok(Entry::App(body)),
        TAG_ADDRESS => {
            let (node, address) = postcard::from_bytes(body).map_err(|_| EntryError::BadAddress)?;
            Ok(Entry::Address { node, address })
        }
        other => Err(EntryError::UnknownTag(other)),
    }
}

pub(crate) fn write_snapshot_prefix(
    writer: &mut dyn Write,
    addresses: &BTreeMap<NodeId, SocketAddr>,
) -> std::io::Result<()> {
    let book = postcard::to_stdvec(addresses).expect("encoding to a Vec cannot fail");
    let length = u32::try_from(book.len()).expect("address book is small");
    writer.write_all(&length.to_le_bytes())?;
    writer.write_all(&book)
}

pub(crate) fn read_snapshot_prefix(
    reader: &mut dyn Read,
) -> std::io::Result<BTreeMap<NodeId, SocketAddr>> {
    let invalid = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string());
    let mut length = [0u8; 4];
    reader.read_exact(&mut length)?;
    let length = u32::from_le_bytes(length);
    if length > ADDRESS_BOOK_BYTES_MAX {
        return Err(invalid("snapshot address book too large"));
    }
    let mut book = vec![0u8; length as usize];
    reader.read_exact(&mut book)?;
    postcard::from_bytes(&book).map_err(|_| invalid("undecodable snapshot address book"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_bad_ones_are_errors() {
        assert_eq!(decode(&encode_app(b"x")), Ok(Entry::App(b"x")));
        let address: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        assert_eq!(
            decode(&encode_address(NodeId(4), address)),
            Ok(Entry::Address {
                node: NodeId(4),
                address
            })
        );
        assert_eq!(decode(&[]), Err(EntryError::Empty));
        assert_eq!(decode(&[9]), Err(EntryError::UnknownTag(9)));
        assert_eq!(decode(&[1, 200]), Err(EntryError::BadAddress));
    }

    #[test]
    fn snapshot_prefix_round_trips() {
        let mut book = BTreeMap::new();
        book.insert(NodeId(1), "127.0.0.1:1".parse().unwrap());
        let mut bytes = Vec::new();
        write_snapshot_prefix(&mut bytes, &book).unwrap();
        bytes.extend_from_slice(b"app");
        let mut reader = &bytes[..];
        assert_eq!(read_snapshot_prefix(&mut reader).unwrap(), book);
        assert_eq!(reader, b"app");
        let huge = u32::MAX.to_le_bytes();
        assert!(read_snapshot_prefix(&mut &huge[..]).is_err());
    }
}
