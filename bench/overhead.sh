#!/usr/bin/env bash
# Orchestration overhead of `gapless backfill`, as ratios against floors measured in the same run:
#   1. 3 phases × 1,000 days of no-op command tasks (`true`) with --jobs 1, against a bare
#      fork+exec loop of `/bin/true` run the same number of times;
#   2. the same with no-op SQL tasks (one INSERT each), against 3,000 plain SQLite inserts, one
#      transaction each (Python's sqlite3), on the same kind of file, run before and after the
#      round's SQL runs (the floor is their mean).
# Usage: bench/overhead.sh [rounds] [other-gapless-binary...]
#   rounds: default 5. Builds the release binary first and prints a Markdown table: each round,
#   the fastest run of each column, and the medians.
#   other-gapless-binary: other builds (e.g. an older commit's, or this one with a change
#   undone) to compare with: each round then also runs the SQL workload with each, and a
#   second table puts them all against the floor.
# BENCH_DIR: where the databases go (default: a new directory under $TMPDIR, on disk). With
#   BENCH_DIR=/dev/shm the files are on tmpfs, where fdatasync costs nothing: the floor and
#   gapless then measure CPU and system calls alone, with much less noise from the disk.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
cargo build --release -q -p gapless-cli --manifest-path "$root/Cargo.toml"
bin="$target/release/gapless"
work=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/overhead.XXXXXX")
trap 'rm -rf "$work"' EXIT
days=1000
rounds=${1:-5}
other_bins=("${@:2}")
for other in "${other_bins[@]}"; do
  if [[ ! -x $other ]]; then
    echo "overhead.sh: $other is not an executable gapless binary" >&2
    exit 2
  fi
done
start=2020-01-01
end=$(date -d "$start + $((days - 1)) days" +%F)
tasks=$((days * 3))

now() { date +%s.%N; }
elapsed() { python3 -c "print(f'{$2 - $1:.3f}')"; }

# A warehouse whose `done` table already holds every date, so the gate's re-probe passes; the
# backfill runs with --force so every one of the 3,000 cells runs.
python3 - "$work/warehouse.db" "$start" "$days" <<'PY'
import datetime, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute("PRAGMA journal_mode = WAL")
db.execute("CREATE TABLE done (d TEXT PRIMARY KEY)")
db.execute("CREATE TABLE sink (d TEXT, p INTEGER, PRIMARY KEY (d, p))")
first = datetime.date.fromisoformat(sys.argv[2])
db.executemany("INSERT INTO done VALUES (?)", [((first + datetime.timedelta(days=i)).isoformat(),) for i in range(int(sys.argv[3]))])
db.commit()
PY

pipeline() { # $1 = the run line of every phase, with `PHASE` for the phase's id
  cat <<TOML
[pipeline]
name = "overhead"
start = "$start"

[warehouse]
url = "sqlite://warehouse.db"

[[phase]]
id = 1
name = "a"
${1//PHASE/1}
check.sql = "SELECT d, 1 FROM done WHERE d BETWEEN :start AND :end"

[[phase]]
id = 2
name = "b"
needs = [1]
${1//PHASE/2}
check.sql = "SELECT d, 1 FROM done WHERE d BETWEEN :start AND :end"

[[phase]]
id = 3
name = "c"
needs = [2]
${1//PHASE/3}
check.sql = "SELECT d, 1 FROM done WHERE d BETWEEN :start AND :end"
TOML
}

run_backfill() { # $1 = the gapless binary (default: this checkout's)
  local binary=${1:-$bin}
  rm -rf "$work/.gapless"
  # An empty sink, as the floor starts with: every task inserts a new row.
  python3 -c 'import sqlite3, sys; db = sqlite3.connect(sys.argv[1]); db.execute("DELETE FROM sink"); db.commit(); db.execute("PRAGMA wal_checkpoint(TRUNCATE)")' "$work/warehouse.db"
  local t0 t1
  t0=$(now)
  (cd "$work" && GAPLESS_TODAY=$end "$binary" -q backfill --start-date "$start" --end-date "$end" --force --yes --jobs 1 >/dev/null)
  t1=$(now)
  elapsed "$t0" "$t1"
}

floor_sql() {
  rm -f "$work"/floor.db*
  python3 - "$work/floor.db" "$tasks" <<'PY'
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA journal_mode = WAL")
db.execute("CREATE TABLE sink (d TEXT, p INTEGER, PRIMARY KEY (d, p))")
t0 = time.perf_counter()
for i in range(int(sys.argv[2])):
    db.execute("BEGIN")
    db.execute("INSERT OR REPLACE INTO sink (d, p) VALUES (?, 1)", (str(i),))
    db.execute("COMMIT")
print(f"{time.perf_counter() - t0:.3f}")
PY
}

floor_exec() {
  local t0 t1
  t0=$(now); for ((i = 0; i < tasks; i++)); do /bin/true; done; t1=$(now)
  elapsed "$t0" "$t1"
}

# Rounds alternate floor and gapless, so that both see the same state of this shared VM.
results=()
others=()
for ((round = 1; round <= rounds; round++)); do
  pipeline 'run.command = ["true"]' > "$work/gapless.toml"
  fe=$(floor_exec); ge=$(run_backfill)
  # One new row per task, as in the floor: (date, phase) is the key.
  pipeline 'run.sql = "INSERT OR REPLACE INTO sink (d, p) VALUES (:start, PHASE)"' > "$work/gapless.toml"
  # The SQLite floor runs before and after the SQL runs of the round, and their mean is the
  # round's floor: the disk's latency drifts over seconds, and a floor taken only before would
  # charge that drift to whichever runs came after it.
  # With other builds, even rounds run them before this checkout's: a run leaves dirty pages
  # that the next one's fsyncs wait on, so no build should always come first.
  before=$(floor_sql)
  runs=""
  if ((round % 2)); then
    gs=$(run_backfill)
    for other in "${other_bins[@]}"; do runs="$runs,$(run_backfill "$other")"; done
  else
    for other in "${other_bins[@]}"; do runs="$runs,$(run_backfill "$other")"; done
    gs=$(run_backfill)
  fi
  fs=$(python3 -c "print(f'{($before + $(floor_sql)) / 2:.3f}')")
  results+=("$fe,$ge,$fs,$gs")
  if ((${#other_bins[@]})); then
    others+=("$fs,$gs$runs")
  fi
done

python3 - "$tasks" "${results[@]}" <<'PY'
import statistics, sys
tasks = int(sys.argv[1])
rounds = [tuple(map(float, r.split(","))) for r in sys.argv[2:]]
us = lambda g, f: (g - f) / tasks * 1e6
print(f"| round ({tasks} tasks, --jobs 1) | fork+exec floor | gapless, command | ratio | SQLite floor | gapless, SQL | SQL overhead per task |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for i, (fe, ge, fs, gs) in enumerate(rounds, 1):
    print(f"| {i} | {fe:.2f} s | {ge:.2f} s | {ge/fe:.2f}× | {fs:.2f} s | {gs:.2f} s | {us(gs, fs):.0f} µs |")
fe, ge, fs, gs = (min(column) for column in zip(*rounds))
print(f"| fastest of each | {fe:.2f} s | {ge:.2f} s | {ge/fe:.2f}× | {fs:.2f} s | {gs:.2f} s | {us(gs, fs):.0f} µs |")
print()
print(f"Median over rounds: command ratio {statistics.median(g / f for f, g, _, _ in rounds):.2f}×, "
      f"SQL overhead {statistics.median(us(g, f) for _, _, f, g in rounds):.0f} µs per task.")
PY

if ((${#other_bins[@]})); then
  echo
  python3 - "$tasks" "${#other_bins[@]}" "${other_bins[@]}" "${others[@]}" <<'PY'
import statistics, sys
tasks, n = int(sys.argv[1]), int(sys.argv[2])
names = ["this checkout"] + [f"`{b}`" for b in sys.argv[3:3 + n]]
rounds = [tuple(map(float, r.split(","))) for r in sys.argv[3 + n:]]
us = lambda g, f: (g - f) / tasks * 1e6
print("SQL workload, the same rounds, overhead per task over the SQLite floor:")
print()
print("| round | SQLite floor | " + " | ".join(names) + " |")
print("| --- | ---: | " + " | ".join("---:" for _ in names) + " |")
for i, (floor, *runs) in enumerate(rounds, 1):
    print(f"| {i} | {floor:.2f} s | " + " | ".join(f"{g:.2f} s, {us(g, floor):.0f} µs" for g in runs) + " |")
print()
for column, name in enumerate(names, 1):
    print(f"Median, {name}: {statistics.median(r[column] for r in rounds):.3f} s, "
          f"{statistics.median(us(r[column], r[0]) for r in rounds):.0f} µs per task.")
PY
fi
