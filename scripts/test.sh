#!/usr/bin/env bash
# The README's test command: every unit, protocol and simulator test, then a seed sweep of the
# deterministic simulator across safety and liveness modes. SEEDS overrides the sweep size.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace
cargo run -p tests --release --bin sim -- --seeds "${SEEDS:-1000}"
