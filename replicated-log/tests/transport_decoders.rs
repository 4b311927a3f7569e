//! Property tests of the transport's decoders: arbitrary or mutated bytes give a value or a typed
//! error, never a panic.

use paxos_core::Incarnation;
use proptest::prelude::*;
use replicated_log::transport::frame::{self, FrameError};
use replicated_log::transport::limits::FRAME_BYTES_MAX;
use replicated_log::transport::quic::protocol::{Hello, SnapshotHeader};
use replicated_log::transport::quic::snapshot::{read_snapshot, write_snapshot};
use replicated_log::wire::{ClusterId, PeerMessage};
use std::time::Duration;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn message(cluster: u64, incarnation: Option<u64>) -> PeerMessage {
    match incarnation {
        None => PeerMessage::IdentityQuery {
            cluster: ClusterId(cluster),
        },
        Some(n) => PeerMessage::IdentityReply {
            cluster: ClusterId(cluster),
            incarnation: Some(Incarnation(n)),
            pristine: n % 2 == 0,
        },
    }
}

/// Decodes every frame of `bytes` until it runs out or fails; returns how many decoded.
fn decode_all(mut bytes: &[u8], max: u32) -> usize {
    let mut decoded = 0;
    while let Ok(Some((_, used))) = frame::decode::<PeerMessage>(bytes, max) {
        assert!(used >= frame::FRAME_HEADER_BYTES && used <= bytes.len());
        bytes = &bytes[used..];
        decoded += 1;
    }
    decoded
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn frame_decoder_never_panics_on_arbitrary_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        max in prop_oneof![Just(FRAME_BYTES_MAX), 0u32..64],
    ) {
        decode_all(&bytes, max);
        let _ = frame::decode::<Hello>(&bytes, max);
        let _ = frame::decode::<SnapshotHeader>(&bytes, max);
    }

    #[test]
    fn stream_reader_never_panics_and_agrees_with_the_slice_decoder(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
    ) {
        let from_slice = decode_all(&bytes, FRAME_BYTES_MAX);
        let mut reader: &[u8] = &bytes;
        let from_stream = runtime().block_on(async {
            let mut decoded = 0;
            while let Ok(Some(_)) = frame::read::<PeerMessage, _>(&mut reader, FRAME_BYTES_MAX).await {
                decoded += 1;
            }
            decoded
        });
        prop_assert_eq!(from_slice, from_stream);
    }

    #[test]
    fn mutated_valid_frames_decode_or_fail_cleanly(
        messages in proptest::collection::vec((any::<u64>(), proptest::option::of(any::<u64>())), 1..8),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
    ) {
        let mut bytes = Vec::new();
        for (cluster, incarnation) in &messages {
            bytes.extend(frame::encode(&message(*cluster, *incarnation), FRAME_BYTES_MAX).unwrap());
        }
        if flips.is_empty() {
            prop_assert_eq!(decode_all(&bytes, FRAME_BYTES_MAX), messages.len());
        }
        for (at, value) in flips {
            let at = at.index(bytes.len());
            bytes[at] = value;
        }
        decode_all(&bytes, FRAME_BYTES_MAX);
    }

    #[test]
    fn encode_decode_round_trip(cluster in any::<u64>(), incarnation in proptest::option::of(any::<u64>())) {
        let original = message(cluster, incarnation);
        let bytes = frame::encode(&original, FRAME_BYTES_MAX).unwrap();
        let (decoded, used) = frame::decode::<PeerMessage>(&bytes, FRAME_BYTES_MAX).unwrap().unwrap();
        prop_assert_eq!(decoded, original);
        prop_assert_eq!(used, bytes.len());
        let too_small = u32::try_from(bytes.len() - frame::FRAME_HEADER_BYTES - 1).unwrap();
        let refused = matches!(frame::encode(&message(cluster, incarnation), too_small), Err(FrameError::Oversized { .. }));
        prop_assert!(refused);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn snapshot_reader_never_panics_on_mutated_streams(
        size in 0usize..200_000,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("dest");
        let content: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let runtime = runtime();
        let mut stream = Vec::new();
        let mut source: &[u8] = &content;
        runtime
            .block_on(write_snapshot(Some((&mut source, size as u64, dir.path())), &mut stream))
            .unwrap();
        let pristine = flips.is_empty() && cut.is_none();
        for (at, value) in flips {
            let at = at.index(stream.len());
            stream[at] = value;
        }
        if let Some(cut) = cut {
            stream.truncate(cut.index(stream.len()));
        }
        let mut reader: &[u8] = &stream;
        let result = runtime.block_on(read_snapshot(&mut reader, &dest, Duration::from_secs(5)));
        if pristine {
            prop_assert_eq!(result.unwrap(), size as u64);
            prop_assert_eq!(std::fs::read(&dest).unwrap(), content);
        } else if let Ok(bytes) = result {
            // Only a mutation that changed nothing (the same byte written back) gets through.
            prop_assert_eq!(bytes, size as u64);
            prop_assert_eq!(std::fs::read(&dest).unwrap(), content);
        }
    }
}
