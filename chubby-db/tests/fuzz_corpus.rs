//! Replays the fuzz corpus of this crate's and chubby-proto's decoders on stable: every file under
//! `fuzz/corpus/<target>/` and every freshly generated seed goes through the same target body
//! that `cargo fuzz` runs (`fuzz/src/db_targets.rs`, included here). A decoder that panics on
//! one of them, or a target property that fails, fails this test.

#[path = "../../fuzz/src/db_targets.rs"]
mod db_targets;

#[path = "../../fuzz/src/replay.rs"]
mod replay;

use std::path::Path;

#[test]
fn every_corpus_file_replays() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    replay::corpus(&root, db_targets::TARGETS);
}

#[test]
fn generated_seeds_replay() {
    replay::seeds(db_targets::TARGETS, db_targets::seeds());
}
