//! The bodies of the fuzz targets, as plain functions: `fuzz_targets/*.rs` hand them libFuzzer's
//! input, and the stable test suites of `replicated-log` and `chubby-db` replay the corpus in
//! `corpus/` through the very same functions (those tests include these files by path).
//!
//! Run one target: `cargo fuzz run <target>` in this directory (nightly, or `RUSTC_BOOTSTRAP=1`
//! on stable); all of them briefly: `scripts/fuzz-smoke.sh`. Regenerate the seed corpus after a
//! format change: `cargo run --example gen-corpus` here. See `docs/testing.md`.

pub mod db_targets;
pub mod log_targets;
pub mod replay;

/// Every target: its name (the directory of its corpus under `corpus/`) and its body.
pub fn targets() -> impl Iterator<Item = (&'static str, fn(&[u8]))> {
    log_targets::TARGETS
        .iter()
        .chain(db_targets::TARGETS)
        .copied()
}
