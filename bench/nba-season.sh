#!/usr/bin/env bash
# The 2024-25 NBA season through phases 2–6 on the healed demo, measured alone, against a floor
# measured in the same run: the same work without gapless — a Python script that replays the
# run's tasks in the order gapless ran them (phase 2's loader command, phases 3–6's SQL files in
# one transaction each with :start/:end/:date bound, on the same ATTACHed files). The difference
# is gapless: process start, pre-flight, planning probes, recording the run, claims and
# completions, the validation gates' probes, scheduling. Also printed: the sum of the tasks'
# spans (claim to completion, from the state store) and the wall time outside them.
# The replay uses apsw built on the same SQLite as gapless (3.50.4, libsqlite3-sys 0.37), so
# both sides run the same engine: `pip install apsw==3.50.4.0`.
# Usage: bench/nba-season.sh [runs]  (builds the release binary; prints a Markdown table)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
runs=${1:-3}
python3 -c 'import apsw, sys; sys.exit(apsw.sqlite_lib_version() != "3.50.4")' 2>/dev/null || {
  echo "bench/nba-season.sh needs apsw on SQLite 3.50.4 (gapless's): pip install apsw==3.50.4.0" >&2
  exit 2
}
cargo build --release -q -p gapless-cli --manifest-path "$root/Cargo.toml"
bin="$target/release/gapless"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$bin" -q demo --dir "$work/demo" >/dev/null 2>&1
cd "$work/demo"
cat > "$work/replay.py" <<'PY'
import apsw, sqlite3, subprocess, sys, time, tomllib
spec = tomllib.load(open("gapless.toml", "rb"))
state = sqlite3.connect(".gapless/state.db")
run, = state.execute("SELECT id FROM runs ORDER BY created_at DESC, id DESC LIMIT 1").fetchone()
tasks = state.execute("SELECT phase, start_date, end_date FROM tasks WHERE run_id = ? ORDER BY started_at", (run,)).fetchall()
state.close()
phases = {p["id"]: p for p in spec["phase"]}
t0 = time.perf_counter()
db = apsw.Connection(spec["warehouse"]["url"].removeprefix("sqlite://"))
cursor = db.cursor()
for name, path in spec["warehouse"].get("attach", {}).items():
    cursor.execute(f"ATTACH DATABASE ? AS {name}", (path,))
for phase, start, end in tasks:
    run_ = phases[phase]["run"]
    values = {"start": start, "end": end, "date": start}
    if "command" in run_:
        argv = [sys.argv[1] if a == "gapless" else a.format(**values) for a in run_["command"]]
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        continue
    statements, current = [], ""
    for line in open(run_["sql_file"]).read().splitlines(keepends=True):
        current += line
        if apsw.complete(current):
            statements.append(current)
            current = ""
    cursor.execute("BEGIN IMMEDIATE")
    for statement in statements:
        for _ in cursor.execute(statement, {k: v for k, v in values.items() if ":" + k in statement}):
            pass
    cursor.execute("COMMIT")
db.close()
print(f"{time.perf_counter() - t0:.3f}")
PY
echo "| run | floor (same work, no gapless) | gapless | gapless's share | inside task spans | outside them |"
echo "| --- | ---: | ---: | ---: | ---: | ---: |"
for ((i = 1; i <= runs; i++)); do
  t0=$(date +%s.%N)
  GAPLESS_TODAY=2025-07-01 "$bin" -q backfill --start-date 2024-10-22 --end-date 2025-06-22 \
    --phases 2-6 --force --yes --jobs 1 >/dev/null
  t1=$(date +%s.%N)
  floor=$(python3 "$work/replay.py" "$bin")
  python3 - "$t0" "$t1" "$i" "$floor" <<'PY'
import sqlite3, sys
t0, t1, i, floor = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3], float(sys.argv[4])
db = sqlite3.connect(".gapless/state.db")
run, = db.execute("SELECT id FROM runs ORDER BY created_at DESC, id DESC LIMIT 1").fetchone()
inside, tasks = db.execute(
    "SELECT SUM(finished_at - started_at) / 1000.0, COUNT(*) FROM tasks WHERE run_id = ? AND state = 'complete'",
    (run,)).fetchone()
wall = t1 - t0
print(f"| {i} ({tasks} tasks) | {floor:.2f} s | {wall:.2f} s | {(wall - floor) / wall * 100:.1f} % "
      f"| {inside:.2f} s | {wall - inside:.2f} s ({(wall - inside) / wall * 100:.1f} %) |")
PY
done
