//! Framing of messages on a stream: `length: u32 LE | payload: postcard`, the length counting the
//! payload only and bounded by a limit ([`super::limits::FRAME_BYTES_MAX`] for replica traffic).
//!
//! Decoding is total: any byte string yields a value, "need more bytes", or a typed
//! [`FrameError`]; never a panic (a property test feeds it arbitrary bytes).

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Bytes of the length prefix.
pub const FRAME_HEADER_BYTES: usize = 4;

#[derive(Debug)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix announces more than the limit. The stream cannot be resynchronized.
    Oversized { bytes: u64, max: u32 },
    /// The payload is not a postcard encoding of the expected type (or has trailing bytes).
    Undecodable(String),
    /// The stream ended inside a frame.
    Truncated { expected: u64, received: u64 },
    /// Reading the stream failed (connection lost, stream reset).
    Io(std::io::Error),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Oversized { bytes, max } => {
                write!(f, "frame of {bytes} bytes exceeds the limit of {max}")
            }
            FrameError::Undecodable(why) => write!(f, "undecodable frame: {why}"),
            FrameError::Truncated { expected, received } => write!(
                f,
                "stream ended inside a frame ({received} of {expected} bytes)"
            ),
            FrameError::Io(error) => write!(f, "stream read failed: {error}"),
        }
    }
}

impl std::error::Error for FrameError {}

impl FrameError {
    /// True when the peer sent bytes that do not check out, including a stream it finished in the
    /// middle of a frame (as opposed to the stream or connection failing).
    pub fn is_decode_error(&self) -> bool {
        matches!(
            self,
            FrameError::Oversized { .. }
                | FrameError::Undecodable(_)
                | FrameError::Truncated { .. }
        )
    }
}

/// The most a frame's announced length makes `read` allocate before its bytes arrive.
const PREALLOCATE_BYTES_MAX: usize = 1 << 20;

/// Encodes `value` as one frame, or `Oversized` when its payload exceeds `max`.
pub fn encode<T: Serialize>(value: &T, max: u32) -> Result<Vec<u8>, FrameError> {
    let mut frame = Vec::new();
    encode_into(value, max, &mut frame)?;
    Ok(frame)
}

/// Appends `value` as one frame to `out`, or leaves `out` as it was and returns `Oversized` when
/// its payload exceeds `max`. Lets a sender put several frames into one stream write.
pub fn encode_into<T: Serialize>(value: &T, max: u32, out: &mut Vec<u8>) -> Result<(), FrameError> {
    // Measured first (a pass that copies nothing): the check needs no encoding, and a value
    // holding a large batch is written into space reserved once instead of a vector that doubles
    // and copies as it grows.
    let size = postcard::serialize_with_flavor(value, postcard::ser_flavors::Size::default())
        .map_err(|error| FrameError::Undecodable(error.to_string()))?;
    if size as u64 > u64::from(max) {
        return Err(FrameError::Oversized {
            bytes: size as u64,
            max,
        });
    }
    let length = u32::try_from(size).expect("size <= max, a u32");
    let start = out.len();
    out.extend_from_slice(&length.to_le_bytes());
    out.resize(start + FRAME_HEADER_BYTES + size, 0);
    let written =
        postcard::to_slice(value, &mut out[start + FRAME_HEADER_BYTES..]).map(|b| b.len());
    match written {
        Ok(written) => assert_eq!(
            written, size,
            "postcard's size pass and its encoding disagree"
        ),
        Err(error) => {
            out.truncate(start);
            return Err(FrameError::Undecodable(error.to_string()));
        }
    }
    Ok(())
}

/// Decodes the first frame of `bytes`: `Ok(Some((value, consumed)))`, or `Ok(None)` when `bytes`
/// holds only part of a frame.
pub fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    max: u32,
) -> Result<Option<(T, usize)>, FrameError> {
    let Some(header) = bytes.get(..FRAME_HEADER_BYTES) else {
        return Ok(None);
    };
    let length = payload_length(header.try_into().expect("4 bytes"), max)?;
    let end = FRAME_HEADER_BYTES + length;
    let Some(payload) = bytes.get(FRAME_HEADER_BYTES..end) else {
        return Ok(None);
    };
    Ok(Some((decode_payload(payload)?, end)))
}

/// Reads one frame from `reader`: `Ok(None)` on a clean end of stream before a frame starts.
/// Returns the value and the frame's size in bytes. `Oversized` is reported before the payload is
/// read; the payload buffer is sized for the announced length up to `PREALLOCATE_BYTES_MAX`, and
/// beyond that grows with the bytes that actually arrive (a peer cannot make us allocate what it
/// does not send).
pub async fn read<T, R>(reader: &mut R, max: u32) -> Result<Option<(T, usize)>, FrameError>
where
    T: DeserializeOwned,
    R: AsyncRead + Unpin,
{
    let mut header = [0u8; FRAME_HEADER_BYTES];
    let mut filled = 0;
    while filled < FRAME_HEADER_BYTES {
        let n = reader
            .read(&mut header[filled..])
            .await
            .map_err(FrameError::Io)?;
        if n == 0 {
            if filled == 0 {
                return Ok(None);
            }
            return Err(FrameError::Truncated {
                expected: FRAME_HEADER_BYTES as u64,
                received: filled as u64,
            });
        }
        filled += n;
    }
    let length = payload_length(header, max)?;
    let mut payload = Vec::with_capacity(length.min(PREALLOCATE_BYTES_MAX));
    let received = reader
        .take(length as u64)
        .read_to_end(&mut payload)
        .await
        .map_err(FrameError::Io)?;
    if received < length {
        return Err(FrameError::Truncated {
            expected: (FRAME_HEADER_BYTES + length) as u64,
            received: (FRAME_HEADER_BYTES + received) as u64,
        });
    }
    Ok(Some((
        decode_payload(&payload)?,
        FRAME_HEADER_BYTES + length,
    )))
}

fn payload_length(header: [u8; FRAME_HEADER_BYTES], max: u32) -> Result<usize, FrameError> {
    let length = u32::from_le_bytes(header);
    if length > max {
        return Err(FrameError::Oversized {
            bytes: u64::from(length),
            max,
        });
    }
    Ok(usize::try_from(length).expect("u32 fits usize"))
}

fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    let (value, rest) = postcard::take_from_bytes(payload)
        .map_err(|error| FrameError::Undecodable(error.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::Undecodable(format!(
            "{} trailing bytes",
            rest.len()
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{ClusterId, PeerMessage};

    #[test]
    fn round_trip_and_partial_input() {
        let message = PeerMessage::IdentityQuery {
            cluster: ClusterId(7),
        };
        let frame = encode(&message, 1024).unwrap();
        for cut in 0..frame.len() {
            assert!(decode::<PeerMessage>(&frame[..cut], 1024)
                .unwrap()
                .is_none());
        }
        let (decoded, used) = decode::<PeerMessage>(&frame, 1024).unwrap().unwrap();
        assert_eq!((decoded, used), (message, frame.len()));
    }

    #[test]
    fn oversized_and_trailing_bytes_are_typed_errors() {
        let message = PeerMessage::IdentityQuery {
            cluster: ClusterId(7),
        };
        assert!(matches!(
            encode(&message, 1),
            Err(FrameError::Oversized { .. })
        ));
        let header = 100u32.to_le_bytes();
        assert!(matches!(
            decode::<PeerMessage>(&header, 99),
            Err(FrameError::Oversized { bytes: 100, .. })
        ));
        let mut frame = encode(&message, 1024).unwrap();
        frame.push(0);
        let grown = (frame.len() - FRAME_HEADER_BYTES) as u32;
        frame[..4].copy_from_slice(&grown.to_le_bytes());
        assert!(matches!(
            decode::<PeerMessage>(&frame, 1024),
            Err(FrameError::Undecodable(_))
        ));
    }

    #[tokio::test]
    async fn read_reports_truncation_and_clean_end() {
        let message = PeerMessage::IdentityQuery {
            cluster: ClusterId(7),
        };
        let frame = encode(&message, 1024).unwrap();
        let mut whole: &[u8] = &frame;
        let (decoded, _) = read::<PeerMessage, _>(&mut whole, 1024)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(decoded, message);
        assert!(read::<PeerMessage, _>(&mut whole, 1024)
            .await
            .unwrap()
            .is_none());
        let mut cut: &[u8] = &frame[..frame.len() - 1];
        assert!(matches!(
            read::<PeerMessage, _>(&mut cut, 1024).await,
            Err(FrameError::Truncated { .. })
        ));
    }
}
