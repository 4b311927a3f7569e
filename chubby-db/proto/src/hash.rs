//! The 64-bit hash behind content checksums and the database digest: FNV-1a 64.
//!
//! FNV-1a is a published, byte-at-a-time hash that any client can reimplement in a few lines
//! (offset basis `0xcbf29ce484222325`, prime `0x100000001b3`: for each byte, `h ^= byte;
//! h *= prime`). It detects accidental change, not deliberate forgery; nothing here needs more.

use std::io;

const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

/// The checksum of a file's contents that clients see in a node's stat and compare with the
/// `ChecksumEquals` test: FNV-1a 64 of the bytes.
pub fn content_checksum(contents: &[u8]) -> u64 {
    let mut hasher = Fnv1a::new();
    hasher.update(contents);
    hasher.finish()
}

/// An incremental FNV-1a 64 hasher, also an `io::Write` sink so serializers can stream into it.
#[derive(Clone, Copy, Debug)]
pub struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Fnv1a {
        Fnv1a::new()
    }
}

impl Fnv1a {
    pub fn new() -> Fnv1a {
        Fnv1a(OFFSET_BASIS)
    }

    pub fn update(&mut self, bytes: &[u8]) {
        let mut h = self.0;
        for &byte in bytes {
            h ^= u64::from(byte);
            h = h.wrapping_mul(PRIME);
        }
        self.0 = h;
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

impl io::Write for Fnv1a {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_test_vectors() {
        assert_eq!(content_checksum(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(content_checksum(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(content_checksum(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn incremental_equals_one_shot() {
        let mut h = Fnv1a::new();
        h.update(b"foo");
        h.update(b"bar");
        assert_eq!(h.finish(), content_checksum(b"foobar"));
    }
}
