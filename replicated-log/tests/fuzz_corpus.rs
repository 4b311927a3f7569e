//! Replays the fuzz corpus of this crate's decoders on stable: every file under
//! `fuzz/corpus/<target>/` and every freshly generated seed goes through the same target body
//! that `cargo fuzz` runs (`fuzz/src/log_targets.rs`, included here). A decoder that panics on
//! one of them, or a target property that fails, fails this test.

#[path = "../../fuzz/src/log_targets.rs"]
mod log_targets;

#[path = "../../fuzz/src/replay.rs"]
mod replay;

use std::path::Path;

#[test]
fn every_corpus_file_replays() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    replay::corpus(&root, log_targets::TARGETS);
}

#[test]
fn generated_seeds_replay() {
    replay::seeds(log_targets::TARGETS, log_targets::seeds());
    assert_eq!(log_targets::SEGMENT_SEPARATOR.len(), 8);
}

/// A short fuzz run in every test run: mutated corpus inputs must give typed errors, never a
/// panic (the long runs are `cargo fuzz`, `scripts/fuzz-smoke.sh`).
#[test]
fn mutated_corpus_inputs_never_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    replay::mutations(&root, log_targets::TARGETS, 3_000, 0x5eed);
}
