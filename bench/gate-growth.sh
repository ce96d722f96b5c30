#!/usr/bin/env bash
# Does a task's gate cost grow with the history already present? Per-task cost of a backfill of
# the same 100 new days (3 phases, 300 tasks, --jobs 1) after 200 and after 1,000 days of
# history, for three kinds of gate:
#   files-stat  command tasks (`touch`) checked by `markers/pN-{date}.done`: no wildcard;
#   files-glob  the same checked by `markers/pN-{date}*`: a wildcard in the markers folder,
#               which holds 3 files per day of history;
#   sql         SQL tasks (one INSERT) checked by a SQL count, on a SQLite warehouse whose table
#               holds the history's rows.
# The history is made by gapless itself (a backfill of the history days, not timed), so the
# state store holds it too. Each round copies the prepared directory and times the backfill of
# the new days. A fork+exec loop of `touch` (300 times) is printed as the command floor.
# Usage: bench/gate-growth.sh [rounds] [gapless-binary]
#   rounds: default 5. gapless-binary: default this checkout's release build (built first).
# Prints a Markdown table: median per-task cost per kind and history, and the ratio.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
rounds=${1:-5}
bin=${2:-}
if [[ -z $bin ]]; then
  target=${CARGO_TARGET_DIR:-$root/target}
  cargo build --release -q -p gapless-cli --manifest-path "$root/Cargo.toml"
  bin="$target/release/gapless"
fi
[[ -x $bin ]] || { echo "gate-growth.sh: $bin is not an executable gapless binary" >&2; exit 2; }
work=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/gate-growth.XXXXXX")
trap 'rm -rf "$work"' EXIT
start=2020-01-01
new_days=100
tasks=$((new_days * 3))
day() { date -d "$start + $1 days" +%F; }
now() { date +%s.%N; }

pipeline() { # $1 = kind
  printf '[pipeline]\nname = "gate-growth"\nstart = "%s"\n\n' "$start"
  if [[ $1 == sql ]]; then printf '[warehouse]\nurl = "sqlite://warehouse.db"\n\n'; fi
  for p in 1 2 3; do
    printf '[[phase]]\nid = %s\nname = "p%s"\n' "$p" "$p"
    if ((p > 1)); then printf 'needs = [%s]\n' $((p - 1)); fi
    case $1 in
      files-stat) printf 'run.command = ["touch", "markers/p%s-{date}.done"]\ncheck.files = "markers/p%s-{date}.done"\n' "$p" "$p" ;;
      files-glob) printf 'run.command = ["touch", "markers/p%s-{date}.done"]\ncheck.files = "markers/p%s-{date}*"\n' "$p" "$p" ;;
      sql) printf 'run.sql = "INSERT OR REPLACE INTO t (d, p) VALUES (:start, %s)"\ncheck.sql = "SELECT d, count(*) FROM t WHERE p = %s AND d BETWEEN :start AND :end GROUP BY d"\n' "$p" "$p" ;;
    esac
    printf '\n'
  done
}

backfill() { # $1 = directory, $2 = first day offset, $3 = last day offset
  (cd "$1" && GAPLESS_TODAY=$(day $((1000 + new_days))) "$bin" -q backfill \
    --start-date "$(day "$2")" --end-date "$(day "$3")" --yes --jobs 1 >/dev/null)
}

# One prepared directory per kind and history length.
for kind in files-stat files-glob sql; do
  for history in 200 1000; do
    dir="$work/$kind-$history"
    mkdir -p "$dir/markers"
    pipeline "$kind" > "$dir/gapless.toml"
    if [[ $kind == sql ]]; then
      python3 -c 'import sqlite3, sys; db = sqlite3.connect(sys.argv[1]); db.execute("PRAGMA journal_mode = WAL"); db.execute("CREATE TABLE t (d TEXT, p INTEGER, PRIMARY KEY (d, p))"); db.commit()' "$dir/warehouse.db"
    fi
    backfill "$dir" 0 $((history - 1))
  done
done

floor_exec() {
  rm -rf "$work/floor" && mkdir -p "$work/floor"
  local t0 t1
  t0=$(now); for ((i = 0; i < tasks; i++)); do touch "$work/floor/$i"; done; t1=$(now)
  python3 -c "print(f'{$t1 - $t0:.4f}')"
}

results=()
for ((round = 1; round <= rounds; round++)); do
  line="$(floor_exec)"
  for kind in files-stat files-glob sql; do
    for history in 200 1000; do
      rm -rf "$work/run" && cp -a "$work/$kind-$history" "$work/run"
      t0=$(now)
      backfill "$work/run" "$history" $((history + new_days - 1))
      t1=$(now)
      line="$line,$(python3 -c "print(f'{$t1 - $t0:.4f}')")"
    done
  done
  results+=("$line")
done

python3 - "$tasks" "${results[@]}" <<'PY'
import statistics, sys
tasks = int(sys.argv[1])
rounds = [list(map(float, r.split(","))) for r in sys.argv[2:]]
ms = lambda s: s / tasks * 1e3
median = lambda column: statistics.median(r[column] for r in rounds)
print(f"{len(rounds)} rounds, {tasks} tasks per backfill (3 phases x 100 new days, --jobs 1); "
      f"median per-task cost. Command floor (fork+exec of `touch`): {ms(median(0)):.2f} ms per task.")
print()
print("| gate | 200 days of history | 1,000 days of history | ratio 1,000 / 200 |")
print("| --- | ---: | ---: | ---: |")
for i, name in enumerate(["command, `check.files` without wildcard (stat)",
                          "command, `check.files` with a wildcard in the markers folder",
                          "SQL, `check.sql` (SQLite)"]):
    small, large = median(1 + 2 * i), median(2 + 2 * i)
    print(f"| {name} | {ms(small):.2f} ms | {ms(large):.2f} ms | {large / small:.2f}x |")
PY
