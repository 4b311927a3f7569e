#!/usr/bin/env bash
# The README's test command: every unit, protocol, storage, transport, end-to-end and simulator
# test, then seed sweeps of the deterministic simulator across safety and liveness modes, with the
# register and with the chubby-db database above the engine, then the real-process fault suites.
# SEEDS and CHUBBY_SEEDS override the sweep sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace
# `cargo test` built the simulator binary for the tests crate's integration tests, with the
# workspace's features (the engine and simulator are optimized even in this profile, and overflow
# checks stay on). Running it directly spares CI a rebuild of the dependency tree that
# `cargo run -p tests` would make with that package's features alone.
"${CARGO_TARGET_DIR:-target}/debug/sim" --seeds "${SEEDS:-1000}"
# The same engine, network, crash and disk faults with the real chubby-db database and its
# simulated clients on top (lock safety, sequencers, exactly once, database agreement).
# CHUBBY_SEEDS overrides the sweep size.
"${CARGO_TARGET_DIR:-target}/debug/sim" --app chubby --seeds "${CHUBBY_SEEDS:-1000}"
# Real processes: the fault harness's short suite (three and five chubbyd replicas behind fault
# proxies, clients through the client crate; kills, pauses, partitions, loss and delay, clock skew,
# every kind of disk damage with rebuild, membership changes; linearizability, lock, durability
# and digest checks), then the teeth suite (a planted bug the harness must catch). `cargo test`
# built these binaries (chubbyd with the planted-bugs knob, through the tests crate's features).
"${CARGO_TARGET_DIR:-target}/debug/fault" --suite ci
"${CARGO_TARGET_DIR:-target}/debug/fault" --suite teeth
