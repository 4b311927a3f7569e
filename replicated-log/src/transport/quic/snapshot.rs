//! The snapshot stream: a [`SnapshotHeader`] frame, then for a file of `n` bytes
//!
//! ```text
//! chunk*   = chunk_bytes: u32 LE | crc32(chunk): u32 LE | chunk     (1 ..= SNAPSHOT_CHUNK_BYTES)
//! trailer  = crc32(all n bytes): u32 LE
//! ```
//!
//! The chunk lengths add up to `n` exactly. Each chunk is checked before it is written to the
//! destination, so corruption is reported at the chunk it hit; the trailer catches anything the
//! chunk checks cannot (a reordered or duplicated chunk). Generic over the byte streams so it can
//! be tested without a network.

use super::protocol::{SnapshotHeader, CONTROL_FRAME_BYTES_MAX};
use crate::transport::frame::{self, FrameError};
use crate::transport::limits::SNAPSHOT_CHUNK_BYTES;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

#[derive(Debug)]
#[non_exhaustive]
pub enum SnapshotStreamError {
    /// The peer answered that it holds no suitable snapshot.
    NoSnapshot,
    /// The header frame did not decode.
    Header(FrameError),
    /// A chunk's length is out of bounds or its crc32 does not match.
    BadChunk { offset: u64, why: String },
    /// Every chunk checked out but the whole-file crc32 does not.
    ChecksumMismatch { computed: u32, received: u32 },
    /// The stream ended before the announced length (and trailer).
    Truncated { received: u64, expected: u64 },
    /// No bytes arrived within the stall timeout.
    Stalled,
    /// Reading the stream failed (reset, connection lost).
    Stream(io::Error),
    /// Reading the local file to send, or writing the destination, failed.
    File { path: PathBuf, source: io::Error },
}

impl std::fmt::Display for SnapshotStreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotStreamError::NoSnapshot => write!(f, "peer has no snapshot"),
            SnapshotStreamError::Header(error) => write!(f, "bad snapshot header: {error}"),
            SnapshotStreamError::BadChunk { offset, why } => {
                write!(f, "bad chunk at byte {offset}: {why}")
            }
            SnapshotStreamError::ChecksumMismatch { computed, received } => write!(
                f,
                "whole-file crc32 {computed:08x} differs from the sender's {received:08x}"
            ),
            SnapshotStreamError::Truncated { received, expected } => {
                write!(f, "stream ended at byte {received} of {expected}")
            }
            SnapshotStreamError::Stalled => write!(f, "no progress within the stall timeout"),
            SnapshotStreamError::Stream(error) => write!(f, "stream failed: {error}"),
            SnapshotStreamError::File { path, source } => {
                write!(f, "{}: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for SnapshotStreamError {}

/// Writes the response for `file`: `None` writes the "no snapshot" header; otherwise `bytes`
/// bytes are read from the file and sent. Returns the file bytes sent.
pub async fn write_snapshot<F, W>(
    file: Option<(&mut F, u64, &Path)>,
    writer: &mut W,
) -> Result<u64, SnapshotStreamError>
where
    F: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let header = match &file {
        None => SnapshotHeader::None,
        Some((_, bytes, _)) => SnapshotHeader::File { bytes: *bytes },
    };
    let frame = frame::encode(&header, CONTROL_FRAME_BYTES_MAX).expect("headers are small");
    writer.write_all(&frame).await.map_err(stream_error)?;
    let Some((file, bytes, path)) = file else {
        return Ok(0);
    };
    let file_error = |source| SnapshotStreamError::File {
        path: path.to_path_buf(),
        source,
    };
    let mut whole = crc32fast::Hasher::new();
    let mut chunk = vec![0u8; SNAPSHOT_CHUNK_BYTES as usize];
    let mut sent = 0u64;
    while sent < bytes {
        let length = (bytes - sent).min(u64::from(SNAPSHOT_CHUNK_BYTES)) as usize;
        let chunk = &mut chunk[..length];
        file.read_exact(chunk).await.map_err(file_error)?;
        whole.update(chunk);
        let mut prefix = [0u8; 8];
        prefix[..4].copy_from_slice(&(length as u32).to_le_bytes());
        prefix[4..].copy_from_slice(&crc32fast::hash(chunk).to_le_bytes());
        writer.write_all(&prefix).await.map_err(stream_error)?;
        writer.write_all(chunk).await.map_err(stream_error)?;
        sent += length as u64;
    }
    writer
        .write_all(&whole.finalize().to_le_bytes())
        .await
        .map_err(stream_error)?;
    Ok(sent)
}

/// Reads a response into `dest` (created or truncated), checking every chunk and the trailer,
/// then syncs it. Each read must progress within `stall`. On error `dest` may hold a partial file;
/// the caller removes it.
pub async fn read_snapshot<R>(
    reader: &mut R,
    dest: &Path,
    stall: Duration,
) -> Result<u64, SnapshotStreamError>
where
    R: AsyncRead + Unpin,
{
    let header = tokio::time::timeout(stall, frame::read(reader, CONTROL_FRAME_BYTES_MAX))
        .await
        .map_err(|_| SnapshotStreamError::Stalled)?;
    let bytes = match header {
        Ok(Some((SnapshotHeader::File { bytes }, _))) => bytes,
        Ok(Some((SnapshotHeader::None, _))) => return Err(SnapshotStreamError::NoSnapshot),
        Ok(None) | Err(FrameError::Truncated { .. }) => {
            // The length is not known yet: the header itself is cut short.
            return Err(SnapshotStreamError::Truncated {
                received: 0,
                expected: 0,
            });
        }
        Err(FrameError::Io(error)) => return Err(stream_error(error)),
        Err(error) => return Err(SnapshotStreamError::Header(error)),
    };
    let file_error = |source| SnapshotStreamError::File {
        path: dest.to_path_buf(),
        source,
    };
    let mut file = tokio::fs::File::create(dest).await.map_err(file_error)?;
    let received = receive_chunks(reader, &mut file, bytes, stall, &file_error).await;
    // A tokio file writes in the background: wait for the last write to land before answering,
    // even on error, so that nothing reaches `dest` after this returns (a retry may reuse it).
    let flushed = file.flush().await.map_err(file_error);
    let received = received?;
    flushed?;
    file.sync_all().await.map_err(file_error)?;
    Ok(received)
}

/// The chunks and the trailer of a response announcing `bytes`, written to `file`.
async fn receive_chunks<R>(
    reader: &mut R,
    file: &mut tokio::fs::File,
    bytes: u64,
    stall: Duration,
    file_error: &impl Fn(io::Error) -> SnapshotStreamError,
) -> Result<u64, SnapshotStreamError>
where
    R: AsyncRead + Unpin,
{
    let mut whole = crc32fast::Hasher::new();
    let mut chunk = vec![0u8; SNAPSHOT_CHUNK_BYTES as usize];
    let mut received = 0u64;
    while received < bytes {
        let mut prefix = [0u8; 8];
        read_exact(reader, &mut prefix, stall, received, bytes).await?;
        let length = u32::from_le_bytes(prefix[..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(prefix[4..].try_into().expect("4 bytes"));
        if length == 0 || length > SNAPSHOT_CHUNK_BYTES || u64::from(length) > bytes - received {
            return Err(SnapshotStreamError::BadChunk {
                offset: received,
                why: format!("chunk length {length}"),
            });
        }
        let chunk = &mut chunk[..length as usize];
        read_exact(reader, chunk, stall, received, bytes).await?;
        let computed = crc32fast::hash(chunk);
        if computed != crc {
            return Err(SnapshotStreamError::BadChunk {
                offset: received,
                why: format!("crc32 {computed:08x}, sender said {crc:08x}"),
            });
        }
        whole.update(chunk);
        file.write_all(chunk).await.map_err(file_error)?;
        received += u64::from(length);
    }
    let mut trailer = [0u8; 4];
    read_exact(reader, &mut trailer, stall, received, bytes).await?;
    let (computed, sent) = (whole.finalize(), u32::from_le_bytes(trailer));
    if computed != sent {
        return Err(SnapshotStreamError::ChecksumMismatch {
            computed,
            received: sent,
        });
    }
    Ok(received)
}

async fn read_exact<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut [u8],
    stall: Duration,
    received: u64,
    expected: u64,
) -> Result<(), SnapshotStreamError> {
    match tokio::time::timeout(stall, reader.read_exact(buf)).await {
        Err(_) => Err(SnapshotStreamError::Stalled),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) if error.kind() == io::ErrorKind::UnexpectedEof => {
            Err(SnapshotStreamError::Truncated { received, expected })
        }
        Ok(Err(error)) => Err(stream_error(error)),
    }
}

fn stream_error(error: io::Error) -> SnapshotStreamError {
    SnapshotStreamError::Stream(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALL: Duration = Duration::from_secs(5);

    async fn encoded(content: &[u8]) -> Vec<u8> {
        let mut source: &[u8] = content;
        let mut stream = Vec::new();
        let path = Path::new("source");
        let sent = write_snapshot(Some((&mut source, content.len() as u64, path)), &mut stream)
            .await
            .unwrap();
        assert_eq!(sent, content.len() as u64);
        stream
    }

    fn content(bytes: usize) -> Vec<u8> {
        (0..bytes).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[tokio::test]
    async fn round_trip_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("dest");
        let chunk = SNAPSHOT_CHUNK_BYTES as usize;
        for size in [0, 1, chunk - 1, chunk, chunk + 1, 3 * chunk + 17] {
            let content = content(size);
            let stream = encoded(&content).await;
            let mut reader: &[u8] = &stream;
            let got = read_snapshot(&mut reader, &dest, STALL).await.unwrap();
            assert_eq!(got, size as u64);
            assert_eq!(std::fs::read(&dest).unwrap(), content);
        }
    }

    #[tokio::test]
    async fn every_flipped_byte_and_every_cut_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("dest");
        let content = content(2 * SNAPSHOT_CHUNK_BYTES as usize + 5);
        let stream = encoded(&content).await;
        let step = 997;
        for at in (0..stream.len()).step_by(step) {
            let mut bad = stream.clone();
            bad[at] ^= 0x20;
            let mut reader: &[u8] = &bad;
            assert!(
                read_snapshot(&mut reader, &dest, STALL).await.is_err(),
                "flip at {at} undetected"
            );
        }
        for cut in (0..stream.len()).step_by(step) {
            let mut reader: &[u8] = &stream[..cut];
            let error = read_snapshot(&mut reader, &dest, STALL).await.unwrap_err();
            assert!(
                matches!(error, SnapshotStreamError::Truncated { .. }),
                "cut at {cut}: {error}"
            );
        }
        let mut none = Vec::new();
        write_snapshot::<&[u8], _>(None, &mut none).await.unwrap();
        let mut reader: &[u8] = &none;
        assert!(matches!(
            read_snapshot(&mut reader, &dest, STALL).await,
            Err(SnapshotStreamError::NoSnapshot)
        ));
    }

    #[tokio::test]
    async fn a_bad_chunk_crc_is_named_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("dest");
        let content = content(3 * SNAPSHOT_CHUNK_BYTES as usize);
        let mut stream = encoded(&content).await;
        // Flip a byte inside the second chunk's payload.
        let header = frame::encode(
            &SnapshotHeader::File {
                bytes: content.len() as u64,
            },
            CONTROL_FRAME_BYTES_MAX,
        )
        .unwrap()
        .len();
        let second = header + 8 + SNAPSHOT_CHUNK_BYTES as usize;
        stream[second + 8 + 100] ^= 1;
        let mut reader: &[u8] = &stream;
        match read_snapshot(&mut reader, &dest, STALL).await {
            Err(SnapshotStreamError::BadChunk { offset, .. }) => {
                assert_eq!(offset, u64::from(SNAPSHOT_CHUNK_BYTES))
            }
            other => panic!("expected BadChunk, got {other:?}"),
        }
    }
}
