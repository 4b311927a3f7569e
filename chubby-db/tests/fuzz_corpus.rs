//! Replays the fuzz corpus of this crate's and chubby-proto's decoders on stable: every file under
//! `fuzz/corpus/<target>/` and every freshly generated seed goes through the same target body
//! that `cargo fuzz` runs (`fuzz/src/db_targets.rs`, included here). A decoder that panics on
//! one of them, or a target property that fails, fails this test.

#[path = "../../fuzz/src/db_targets.rs"]
mod db_targets;

use std::path::Path;

#[test]
fn every_corpus_file_replays() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    for (target, body) in db_targets::TARGETS {
        let dir = root.join(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.expect("a directory entry").path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{target} has no corpus");
        for file in files {
            let bytes = std::fs::read(&file).expect("a corpus file");
            eprintln!("{target}: {}", file.display());
            body(&bytes);
        }
    }
}

#[test]
fn generated_seeds_replay() {
    let seeds = db_targets::seeds();
    for (target, _) in db_targets::TARGETS {
        assert!(
            seeds.iter().any(|(t, _, _)| t == target),
            "no seed for {target}"
        );
    }
    for (target, name, bytes) in seeds {
        let (_, body) = db_targets::TARGETS
            .iter()
            .find(|(t, _)| *t == target)
            .expect("a seed of a known target");
        eprintln!("{target}: seed {name}");
        body(&bytes);
    }
}
