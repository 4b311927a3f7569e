#!/usr/bin/env bash
# The README's first command: build the binaries, then run a local three-replica cluster with dev
# certificates under .dev-cluster/ (reused by the next run) until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p tools --bins
exec target/release/chubbyctl dev-cluster --dir .dev-cluster "$@"
