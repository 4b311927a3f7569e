#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a short while (FUZZ_SECONDS each, 15 by default),
# starting from the seed corpus in fuzz/corpus/<target>/. New inputs the fuzzer finds go to
# fuzz/target/corpus/<target>/ (ignored by git), so the seed corpus stays as committed; a crash
# stops the script with the input in fuzz/artifacts/<target>/.
#
# cargo-fuzz needs a nightly compiler (sanitizer flags). A nightly toolchain is used if rustup has
# one; otherwise the stable compiler runs with RUSTC_BOOTSTRAP=1, which unlocks the same flags.
# cargo-fuzz itself is installed at a pinned version if missing (into ~/.cargo/bin, so a cached
# cargo home keeps it).
#
#   scripts/fuzz-smoke.sh                  # every target, 15 s each
#   FUZZ_SECONDS=60 scripts/fuzz-smoke.sh wal_recovery db_apply
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

CARGO_FUZZ_VERSION=0.13.1
SECONDS_EACH="${FUZZ_SECONDS:-15}"

if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

if rustup run nightly rustc --version >/dev/null 2>&1; then
  fuzz=(cargo +nightly fuzz)
else
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz)
fi

if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <("${fuzz[@]}" list)
fi

echo "== building ${#targets[@]} fuzz targets (${fuzz[*]})"
"${fuzz[@]}" build --debug-assertions

for target in "${targets[@]}"; do
  work="target/corpus/$target"
  mkdir -p "$work" "corpus/$target"
  log="target/fuzz-$target.log"
  echo "== fuzzing $target for ${SECONDS_EACH}s"
  if ! "${fuzz[@]}" run --debug-assertions "$target" "$work" "corpus/$target" -- \
    -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz target $target failed: the input is in fuzz/artifacts/$target/"
    exit 1
  fi
  grep -E "^stat::(number_of_executed_units|peak_rss_mb)" "$log" | tr '\n' ' '
  echo
done
echo "== every fuzz target ran ${SECONDS_EACH}s without a crash"
