//! Frames of the client protocol on QUIC streams (see `chubby_proto::protocol` for the layout).

use crate::protocol::{decode_frame, encode_frame, FrameError};
use chubby_proto::limits::{FRAME_BYTES_MAX, FRAME_HEADER_BYTES};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;

/// Why a frame could not be read from or written to a stream.
#[derive(Debug)]
pub(crate) enum WireError {
    /// The bytes are not a frame of the expected message.
    Frame(FrameError),
    Read(quinn::ReadError),
    Write(quinn::WriteError),
}

/// Reads the one frame of a request stream, which the client has finished. The buffer grows
/// only as bytes arrive (never from an announced length), up to one frame of the largest size,
/// so a client cannot make the server reserve memory it does not send.
pub(crate) async fn read_request<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
) -> Result<T, WireError> {
    let limit = FRAME_HEADER_BYTES + FRAME_BYTES_MAX;
    let bytes = recv.read_to_end(limit).await.map_err(|error| match error {
        quinn::ReadToEndError::TooLong => WireError::Frame(FrameError::TooLarge {
            bytes: limit as u64 + 1,
            max: FRAME_BYTES_MAX as u64,
        }),
        quinn::ReadToEndError::Read(error) => WireError::Read(error),
    })?;
    let (message, used) = decode_frame(&bytes).map_err(WireError::Frame)?;
    if used != bytes.len() {
        return Err(WireError::Frame(FrameError::TrailingBytes {
            bytes: (bytes.len() - used) as u64,
        }));
    }
    Ok(message)
}

/// Writes one frame (the encoding is checked against the limit first). The encoded buffer is
/// handed to the stream as it is, not copied into it.
pub(crate) async fn write_frame<T: Serialize>(
    send: &mut quinn::SendStream,
    message: &T,
) -> Result<(), WireError> {
    let frame = encode_frame(message).map_err(WireError::Frame)?;
    send.write_chunk(frame.into())
        .await
        .map_err(WireError::Write)
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Frame(error) => write!(f, "{error}"),
            WireError::Read(error) => write!(f, "read: {error}"),
            WireError::Write(error) => write!(f, "write: {error}"),
        }
    }
}
