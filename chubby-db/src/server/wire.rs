//! Frames of the client protocol on QUIC streams (see `chubby_proto::protocol` for the layout).

use crate::protocol::{decode_payload, encode_frame, payload_length, FrameError};
use chubby_proto::limits::FRAME_HEADER_BYTES;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;

/// Why a frame could not be read from or written to a stream.
#[derive(Debug)]
pub(crate) enum WireError {
    /// The bytes are not a frame of the expected message.
    Frame(FrameError),
    /// The peer finished the stream before a whole frame.
    Finished,
    Read(quinn::ReadError),
    Write(quinn::WriteError),
}

/// Reads one frame, checking its length against the limit before allocating for it.
pub(crate) async fn read_frame<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
) -> Result<T, WireError> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    read_exact(recv, &mut header).await?;
    let length = payload_length(header).map_err(WireError::Frame)?;
    let mut payload = vec![0u8; length];
    read_exact(recv, &mut payload).await?;
    decode_payload(&payload).map_err(WireError::Frame)
}

async fn read_exact(recv: &mut quinn::RecvStream, buffer: &mut [u8]) -> Result<(), WireError> {
    recv.read_exact(buffer).await.map_err(|error| match error {
        quinn::ReadExactError::FinishedEarly(_) => WireError::Finished,
        quinn::ReadExactError::ReadError(error) => WireError::Read(error),
    })
}

/// Writes one frame (the encoding is checked against the limit first).
pub(crate) async fn write_frame<T: Serialize>(
    send: &mut quinn::SendStream,
    message: &T,
) -> Result<(), WireError> {
    let frame = encode_frame(message).map_err(WireError::Frame)?;
    send.write_all(&frame).await.map_err(WireError::Write)
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Frame(error) => write!(f, "{error}"),
            WireError::Finished => f.write_str("stream finished before a whole frame"),
            WireError::Read(error) => write!(f, "read: {error}"),
            WireError::Write(error) => write!(f, "write: {error}"),
        }
    }
}
