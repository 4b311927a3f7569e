#!/usr/bin/env bash
# side-by-side.sh - our three replicas against etcd's three members on this machine, in one run,
# with the same workloads, and a markdown table of both figures and their ratio per row.
#
#   bash bench/side-by-side.sh            # from the repository root (or anywhere)
#
# Both clusters run on loopback with their data on the same disk (fsync before every
# acknowledgement: chubbyd always syncs, etcd does by default), 1 KiB values, closed loop (each
# worker keeps one request in flight; ops started in the measured window count). One cluster is
# stopped before the other starts. Rows:
#   writes        64 in flight (8 sessions / 8 gRPC connections to the leader)
#   lin. reads    64 in flight (ours: the master under its lease; etcd: ReadIndex, all 3 members)
#   stale reads   64 in flight (ours: get-stale; etcd: serializable reads, all 3 members)
#   1-client writes
#
# Env: ANCHORS (default ../shared/anchors from the repository root: etcd scripts and etcd-bench),
#      DURATION (s, 15), WARMUP (s, 2), REPS (1; with more, each row is the median and the
#      clusters alternate), NO_BUILD=1 (use the binaries already built), BASE_PORT (7401: ours
#      uses BASE..+2, +100.., +200..), ETCD_BASE_PORT (24790), WORK (scratch directory on the
#      disk to measure; default a new one under TMPDIR or /tmp), KEEP=1 (keep the raw logs).
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
ANCHORS="${ANCHORS:-$REPO/../shared/anchors}"
ANCHORS="$(cd "$ANCHORS" && pwd)"
DURATION="${DURATION:-15}"
WARMUP="${WARMUP:-2}"
REPS="${REPS:-1}"
BASE_PORT="${BASE_PORT:-7401}"
export ETCD_BASE_PORT="${ETCD_BASE_PORT:-24790}"
WORK="${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/side-by-side.XXXXXX")}"
RESULTS="$WORK/results.txt"
mkdir -p "$WORK"
: >"$RESULTS"

BIN="$REPO/target/release"
ETCD_BENCH_TARGET="$REPO/target/anchors"
if [[ "${NO_BUILD:-0}" != 1 ]]; then
  echo "building chubbyd, chubbyctl, chubby-bench (release) and etcd-bench..." >&2
  (cd "$REPO" && cargo build --release -q -p tools --bin chubbyd --bin chubbyctl --bin chubby-bench)
  (cd "$ANCHORS/etcd-bench" && CARGO_TARGET_DIR="$ETCD_BENCH_TARGET" cargo build --release -q --locked)
fi
ETCD_BENCH="$ETCD_BENCH_TARGET/release/etcd-bench"
command -v etcd >/dev/null || { echo "etcd not found: run $ANCHORS/install.sh" >&2; exit 2; }

DEV_PID=""
ETCD_ROOT_DIR="$WORK/etcd"
cleanup() {
  if [[ -n "$DEV_PID" ]]; then kill -TERM "$DEV_PID" 2>/dev/null || true; wait "$DEV_PID" 2>/dev/null || true; fi
  ETCD_ROOT="$ETCD_ROOT_DIR" bash "$ANCHORS/etcd-cluster.sh" stop >/dev/null 2>&1 || true
  if [[ "${KEEP:-0}" != 1 ]]; then rm -rf "$WORK"; else echo "raw results in $WORK" >&2; fi
}
trap cleanup EXIT

load() { cut -d' ' -f1-3 /proc/loadavg; }

# One measurement: `row <system> <row-name> <command...>`; appends "system row json cpu_busy".
row() {
  local system="$1" name="$2"; shift 2
  echo "  $system $name (load $(load))" >&2
  local out
  out="$(bash "$ANCHORS/cpu_busy.sh" "$@")"
  local json cpu
  json="$(echo "$out" | grep -v 'cpu_busy=' | tail -1)"
  cpu="$(echo "$out" | sed -n 's/.*cpu_busy=\([0-9]*\)%.*/\1/p')"
  echo "$system $name ${cpu:-?} $json" >>"$RESULTS"
}

ours() {
  echo "ours: starting three chubbyd replicas (dev-cluster, data in $WORK/chubby)" >&2
  rm -rf "$WORK/chubby"
  "$BIN/chubbyctl" dev-cluster --dir "$WORK/chubby" --base-port "$BASE_PORT" --json \
    >"$WORK/dev-cluster.json" 2>"$WORK/dev-cluster.err" &
  DEV_PID=$!
  for _ in $(seq 1 600); do
    [[ -s "$WORK/dev-cluster.json" ]] && break
    kill -0 "$DEV_PID" 2>/dev/null || { cat "$WORK/dev-cluster.err" >&2; exit 1; }
    sleep 0.1
  done
  local info cluster endpoints
  info="$(cat "$WORK/dev-cluster.json")"
  cluster="$(echo "$info" | python3 -c 'import json,sys; print(json.load(sys.stdin)["cluster"])')"
  endpoints="$(echo "$info" | python3 -c 'import json,sys; print(",".join(n["client"] for n in json.load(sys.stdin)["nodes"]))')"
  local common=(--cluster "$cluster" --certs "$WORK/chubby/certs" --endpoints "$endpoints"
    --json --duration "$DURATION" --warmup "$WARMUP" --value-bytes 1024)
  row ours write64 "$BIN/chubby-bench" "${common[@]}" --workload set --clients 8 -c 64
  row ours lin64 "$BIN/chubby-bench" "${common[@]}" --workload get --clients 8 -c 64 --no-populate
  row ours stale64 "$BIN/chubby-bench" "${common[@]}" --workload get-stale --clients 8 -c 64 --no-populate
  row ours write1 "$BIN/chubby-bench" "${common[@]}" --workload set --clients 1 -c 1 --no-populate
  kill -TERM "$DEV_PID"; wait "$DEV_PID" 2>/dev/null || true; DEV_PID=""
}

etcd_cluster() {
  echo "etcd: starting three members (data in $ETCD_ROOT_DIR)" >&2
  ETCD_ROOT="$ETCD_ROOT_DIR" bash "$ANCHORS/etcd-cluster.sh" start >&2
  local all leader
  all="$(ETCD_ROOT="$ETCD_ROOT_DIR" bash "$ANCHORS/etcd-cluster.sh" endpoints)"
  leader="$(ETCDCTL_API=3 etcdctl --endpoints "$all" endpoint status -w simple | awk -F', ' '$5 == "true" { print $1 }')"
  local common=(--duration "$DURATION" --warmup "$WARMUP" --val-size 1024)
  row etcd write64 "$ETCD_BENCH" "${common[@]}" --endpoints "$leader" --mode put -c 64 --conns 8
  row etcd lin64 "$ETCD_BENCH" "${common[@]}" --endpoints "$all" --mode get-lin -c 64 --conns 8
  row etcd stale64 "$ETCD_BENCH" "${common[@]}" --endpoints "$all" --mode get-ser -c 64 --conns 8 --no-populate
  row etcd write1 "$ETCD_BENCH" "${common[@]}" --endpoints "$leader" --mode put -c 1 --conns 1
  ETCD_ROOT="$ETCD_ROOT_DIR" bash "$ANCHORS/etcd-cluster.sh" stop >&2
}

STARTED="$(date -u '+%Y-%m-%d %H:%M UTC')"
LOAD_BEFORE="$(load)"
for rep in $(seq 1 "$REPS"); do
  echo "=== rep $rep of $REPS" >&2
  if (( rep % 2 == 1 )); then ours; etcd_cluster; else etcd_cluster; ours; fi
done
LOAD_AFTER="$(load)"

python3 - "$RESULTS" "$STARTED" "$LOAD_BEFORE" "$LOAD_AFTER" "$REPS" "$DURATION" <<'PY'
import json, statistics, sys

path, started, load_before, load_after, reps, duration = sys.argv[1:]
runs = {}
for line in open(path):
    system, row, cpu, text = line.split(" ", 3)
    text = text.strip()
    if text.startswith("{"):
        r = json.loads(text)
        if "error" in r:
            sys.exit(f"{system} {row}: {r['error']}")
        fig = dict(ops=r["ops_per_second"], p50=r["latency_ms_p50"], p99=r["latency_ms_p99"],
                   errors=r["errors"])
    else:  # etcd-bench: key=value pairs
        kv = dict(f.split("=", 1) for f in text.split() if "=" in f)
        fig = dict(ops=float(kv["ops_per_s"]), p50=float(kv["p50_ms"]), p99=float(kv["p99_ms"]),
                   errors=int(kv["errors"]))
    fig["cpu"] = cpu
    runs.setdefault((system, row), []).append(fig)

def med(system, row, key):
    values = [f[key] for f in runs.get((system, row), [])]
    return statistics.median(values) if values else float("nan")

rows = [
    ("write64", "writes, 1 KiB, 64 in flight", "ops", 2.0),
    ("lin64", "linearizable reads, 64 in flight", "ops", 3.0),
    ("stale64", "stale reads (ours) vs serializable (etcd), 64 in flight", "ops", 2.0),
    ("write1", "writes, 1 KiB, 1 client (median latency)", "p50", 1.0),
]
print(f"Run {started}; load average before {load_before}, after {load_after}; "
      f"{reps} rep(s) of {duration} s per row (median); 1 KiB values; fsync on both.")
print()
print("| workload | ours ops/s | etcd ops/s | ops/s ours/etcd | ours p50 / p99 ms | etcd p50 / p99 ms | p99 ours/etcd | bar | met |")
print("|---|---:|---:|---:|---:|---:|---:|---|---|")
for row, label, key, bar in rows:
    o = {k: med("ours", row, k) for k in ("ops", "p50", "p99")}
    e = {k: med("etcd", row, k) for k in ("ops", "p50", "p99")}
    ratio = o["ops"] / e["ops"]
    p99 = o["p99"] / e["p99"]
    if key == "ops":
        met = ratio >= bar and (row != "write64" or p99 <= 1.0)
        want = f"≥ {bar:.1f}×" + (" and p99 ≤ etcd" if row == "write64" else "")
    else:
        p50 = o["p50"] / e["p50"]
        met = p50 <= bar
        want = f"p50 ≤ etcd (ours/etcd {p50:.2f})"
    print(f"| {label} | {o['ops']:,.0f} | {e['ops']:,.0f} | {ratio:.2f} | "
          f"{o['p50']:.2f} / {o['p99']:.2f} | {e['p50']:.2f} / {e['p99']:.2f} | {p99:.2f} | "
          f"{want} | {'yes' if met else 'no'} |")
errors = {k: sum(f["errors"] for f in v) for k, v in runs.items() if any(f["errors"] for f in v)}
if errors:
    print()
    print("errors: " + ", ".join(f"{s} {r}: {n}" for (s, r), n in sorted(errors.items())))
print()
print("CPU busy % of the 2 cores per row (ours, etcd): " + "; ".join(
    f"{row} {','.join(f['cpu'] for f in runs.get(('ours', row), []))} / "
    f"{','.join(f['cpu'] for f in runs.get(('etcd', row), []))}" for row, *_ in rows))
PY
