#!/usr/bin/env bash
# The README's test command: every unit, protocol and simulator test, then a seed sweep of the
# deterministic simulator across safety and liveness modes. SEEDS overrides the sweep size.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace
# The test profile's build (the engine and simulator are optimized even there, and overflow checks
# stay on) spares CI a second, release build of the whole dependency tree.
cargo run -p tests --bin sim -- --seeds "${SEEDS:-1000}"
