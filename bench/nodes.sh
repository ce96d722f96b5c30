#!/usr/bin/env bash
# Several `gapless serve` nodes sharing one PostgreSQL state store (docs/operations.md, "Several
# nodes"), measured from the outside as a user runs them: N real processes on loopback, one
# run started through `POST /backfills` on the first node, every node claiming its tasks.
#
# The pipeline: two phases over DAYS dates, phase 2 needing phase 1 on the same date, one task
# per date and phase, `concurrency = 64`; each node runs with `--jobs JOBS`. Every cell is
# already complete in the warehouse and the backfill is forced, so every task runs and its gate
# passes at once: what is measured is the runner and the queue. Two kinds of task:
#   sleep  `sleep 0.05`: work that scales with nodes;
#   noop   `true`: the queue's own limit (claim, heartbeat setup, runner spawn, gate, completion).
# Figures, from the state store after the run (task timestamps are set by the nodes):
#   tasks/s       tasks ÷ (last finish − first start), DAYS dates (2 × DAYS tasks), JOBS per
#                 node: every slot busy, so this is the throughput;
#   claim p50/p95/p99/max  a second, unsaturated run (LATENCY_DAYS dates, 64 jobs per node,
#                 sleep tasks): for each phase-2 task, its start (the claim) minus the finish
#                 of the phase-1 task of its date (when it became claimable): the hand-off from
#                 whichever node completed phase 1 to whichever node claims phase 2.
#   pickup p50/p95/max  a third run whose phase-1 tasks (`sleep 1`) fill every slot of every
#                 node (nodes × JOBS dates, so no slot frees during the pickup): each phase-1
#                 task's claim minus the run's creation. The node that created the run claims
#                 its share at once; the others hear of the run through LISTEN/NOTIFY (or
#                 their 0.5 s poll), join it and claim theirs: the path of work from one node
#                 to an idle other.
# The same run on a single node with the SQLite state store is the baseline.
#
# Usage: bench/nodes.sh [rounds] [gapless-binary]
#   rounds: default 3. The release binary is built first unless a binary is given.
#   BENCH_PG_URL: the PostgreSQL server (default postgres://postgres@127.0.0.1:5432/postgres);
#   a database gapless_bench_* is created per measurement and dropped after.
#   DAYS (default 300), JOBS (default 8), LATENCY_DAYS (default 40), NODES (default "1 2 3"),
#   KINDS (default "sleep noop").
#   PG_CPUACCT: a cgroup-v1 cpuacct directory holding the PostgreSQL server's processes (as
#   root: mkdir /sys/fs/cgroup/cpuacct/pg; for p in $(pgrep -x postgres); do echo $p >
#   /sys/fs/cgroup/cpuacct/pg/cgroup.procs; done). Adds the server's CPU time per task.
#   DEBUG_WAITS=1: also prints every latency of every measurement (stderr).
# Prints a Markdown table. Run it under `nice -n 19` on a shared machine.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
rounds=${1:-3}
bin=${2:-}
if [[ -z $bin ]]; then
  target=${CARGO_TARGET_DIR:-$root/target}
  cargo build --release -q -p gapless-cli --manifest-path "$root/Cargo.toml"
  bin="$target/release/gapless"
fi
[[ -x $bin ]] || { echo "nodes.sh: $bin is not an executable gapless binary" >&2; exit 2; }
pg=${BENCH_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}
days=${DAYS:-300}
jobs=${JOBS:-8}
latency_days=${LATENCY_DAYS:-40}
node_counts=${NODES:-1 2 3}
kinds=${KINDS:-sleep noop}
work=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/nodes.XXXXXX")
pids=()
database=
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
  if [[ -n $database ]]; then psql -q "$pg" -c "DROP DATABASE IF EXISTS $database WITH (FORCE)" >/dev/null || true; fi
  database=
}
trap 'cleanup; rm -rf "$work"' EXIT
start=2023-01-01
last_day() { date -d "$start + $(($1 - 1)) days" +%F; }
end=$(last_day "$days")
today=$(date -d "$end + 1 day" +%F)

python3 - "$work/warehouse.db" "$start" "$days" <<'PY'
import datetime, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute("PRAGMA journal_mode = WAL")
db.execute("CREATE TABLE done (d TEXT PRIMARY KEY)")
first = datetime.date.fromisoformat(sys.argv[2])
db.executemany("INSERT INTO done VALUES (?)", [((first + datetime.timedelta(days=i)).isoformat(),) for i in range(int(sys.argv[3]))])
db.commit()
PY

pipeline() { # $1 = the run line, $2 = the state URL
  cat <<TOML
[pipeline]
name = "nodes"
start = "$start"

[warehouse]
url = "sqlite://warehouse.db"

[state]
url = "$2"

[[phase]]
id = 1
name = "a"
concurrency = 64
$1
check.sql = "SELECT d, 1 FROM done WHERE d BETWEEN :start AND :end"

[[phase]]
id = 2
name = "b"
needs = [1]
concurrency = 64
$1
check.sql = "SELECT d, 1 FROM done WHERE d BETWEEN :start AND :end"
TOML
}

# Starts a serve node; its address goes to $work/addr.N.
start_node() { # $1 = index, $2 = jobs
  (cd "$work" && GAPLESS_TODAY=$today exec "$bin" serve --listen 127.0.0.1:0 --jobs "$2" 2>"$work/serve.$1.log") &
  pids+=($!)
  for _ in $(seq 1 100); do
    grep -o 'http://[0-9.:]*' "$work/serve.$1.log" >"$work/addr.$1" 2>/dev/null && [[ -s $work/addr.$1 ]] && return
    sleep 0.1
  done
  echo "nodes.sh: node $1 did not start: $(cat "$work/serve.$1.log")" >&2
  exit 1
}

# Runs one measurement; prints "tasks/s p50 p95 p99 max" (claim latencies in ms).
measure() { # $1 = kind, $2 = nodes (0: one node on SQLite), $3 = dates, $4 = jobs per node
  # Runs in a subshell (a pipe): its nodes and database are cleaned up on its own exit.
  trap cleanup EXIT
  local run_line state
  case $1 in
    sleep) run_line='run.command = ["sleep", "0.05"]' ;;
    noop) run_line='run.command = ["true"]' ;;
    hold) run_line='run.command = ["sleep", "1"]' ;;
  esac
  rm -rf "$work/.gapless"
  if [[ $2 == 0 ]]; then
    state="sqlite://.gapless/state.db"
  else
    database="gapless_bench_$$_$RANDOM"
    psql -q "$pg" -c "CREATE DATABASE $database" >/dev/null
    state="${pg%/*}/$database"
  fi
  pipeline "$run_line" "$state" >"$work/gapless.toml"
  (cd "$work" && GAPLESS_TODAY=$today "$bin" -q migrate >/dev/null)
  local cpu_before=0
  if [[ -n ${PG_CPUACCT:-} ]]; then cpu_before=$(cat "$PG_CPUACCT/cpuacct.usage"); fi
  local n=$(( $2 == 0 ? 1 : $2 ))
  for i in $(seq 1 "$n"); do start_node "$i" "$4"; done
  local base
  base=$(cat "$work/addr.1")
  sleep 1 # let the nodes register and elect a leader
  local answer run
  answer=$(curl -s -X POST "$base/backfills" -H 'content-type: application/json' \
    -d "{\"start_date\": \"$start\", \"end_date\": \"$(last_day "$3")\", \"force\": true}")
  run=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["run_id"])' "$answer")
  local state_now
  for _ in $(seq 1 6000); do
    state_now=$(curl -sf "$base/backfills/$run" | python3 -c 'import json, sys; print(json.load(sys.stdin)["run"]["state"])')
    [[ $state_now != running ]] && break
    sleep 0.1
  done
  [[ $state_now == succeeded ]] || { echo "nodes.sh: the run ended $state_now" >&2; exit 1; }
  local query="SELECT t.phase, t.start_date, t.started_at, t.finished_at, r.created_at FROM tasks t JOIN runs r ON r.id = t.run_id WHERE t.run_id = '$run'"
  if [[ $2 == 0 ]]; then
    sqlite3 -separator ' ' "$work/.gapless/state.db" "$query" >"$work/tasks.txt"
  else
    psql -At -F ' ' "${pg%/*}/$database" -c "$query" >"$work/tasks.txt"
  fi
  local pg_cpu=-
  if [[ -n ${PG_CPUACCT:-} && $2 != 0 ]]; then
    pg_cpu=$(( $(cat "$PG_CPUACCT/cpuacct.usage") - cpu_before ))
  fi
  cleanup
  python3 - "$work/tasks.txt" "$1" "$pg_cpu" <<'PY'
import os, sys
rows = [line.split() for line in open(sys.argv[1]) if line.strip()]
tasks = [(int(p), d, int(s), int(f), int(c)) for p, d, s, f, c in rows]
first = min(t[2] for t in tasks)
last = max(t[3] for t in tasks)
if sys.argv[2] == "hold":
    waits = sorted(s - c for p, d, s, f, c in tasks if p == 1)
else:
    finish1 = {d: f for p, d, s, f, c in tasks if p == 1}
    waits = sorted(s - finish1[d] for p, d, s, f, c in tasks if p == 2)
if os.environ.get("DEBUG_WAITS"):
    print(waits, file=sys.stderr)
def pct(q):
    return waits[min(len(waits) - 1, int(q * len(waits)))]
cpu = "-" if sys.argv[3] == "-" else f"{int(sys.argv[3]) / 1e6 / len(tasks):.2f}"
print(f"{len(tasks) / ((last - first) / 1000):.0f} {pct(0.5)} {pct(0.95)} {pct(0.99)} {waits[-1]} {cpu}")
PY
}

summarize() { # stdin: measurements; $1 = label, $2 = nodes, $3 = what to print
  python3 -c '
import sys
label, nodes, what = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rows = sorted((line.split() for line in sys.stdin if line.strip()), key=lambda r: float(r[0]))
cpu = rows[len(rows) // 2][5]
rows = [list(map(float, r[:5])) for r in rows]
mid = rows[len(rows) // 2]
store = "SQLite" if nodes == 0 else "PostgreSQL"
if what == "rate":
    print(f"| {label} | {store} | {max(nodes, 1)} | {mid[0]:.0f} | {cpu} |")
else:
    mid = sorted(rows, key=lambda r: r[1])[len(rows) // 2]
    print(f"| {label} | {store} | {max(nodes, 1)} | {mid[1]:.0f} ms | {mid[2]:.0f} ms | {mid[3]:.0f} ms | {mid[4]:.0f} ms |")
' "$@"
}

echo "| tasks | state store | nodes | tasks/s (median of $rounds) | PostgreSQL CPU per task (ms) |"
echo "| --- | --- | ---: | ---: | ---: |"
for kind in $kinds; do
  for nodes in 0 $node_counts; do
    for _ in $(seq 1 "$rounds"); do measure "$kind" "$nodes" "$days" "$jobs"; done |
      summarize "$((days * 2)) × $kind, $jobs jobs per node" "$nodes" rate
  done
done
echo
echo "| tasks | state store | nodes | claim p50 | p95 | p99 | max (median run of $rounds) |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: |"
for nodes in 0 $node_counts; do
  for _ in $(seq 1 "$rounds"); do measure sleep "$nodes" "$latency_days" 64; done |
    summarize "$((latency_days * 2)) × sleep, 64 jobs per node" "$nodes" latency
done
echo
echo "| tasks | state store | nodes | pickup p50 | p95 | p99 | max (median run of $rounds) |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: |"
for nodes in 0 $node_counts; do
  n=$(( nodes == 0 ? 1 : nodes ))
  for _ in $(seq 1 "$rounds"); do measure hold "$nodes" "$((n * jobs))" "$jobs"; done |
    summarize "$((n * jobs)) phase-1 × sleep 1, $jobs jobs per node" "$nodes" latency
done
