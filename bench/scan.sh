#!/usr/bin/env bash
# `gapless scan` over 20 phases × 3 years, against the same 20 probe queries run alone.
#
# A generated chain of 20 phases (phase 1 a source, each next one needing the one before), each
# checked by `SELECT d, COUNT(*) FROM tN WHERE d BETWEEN :start AND :end GROUP BY d`, over a
# warehouse holding ROWS rows a date in every table for 1,101 dates (today and the 1,100 days
# before it), an index on d in every table, and 5 dates missing from phase 10 so that the scan
# finds gaps. `gapless scan --lookback 1100d` probes the 20 phases over the 1,101 dates (one
# query each), classifies the cells and records the gaps in the state store's ledger. The
# floor, in the same round: the same 20 queries with the dates written in, run by the
# database's own CLI (`sqlite3 warehouse.db < probes.sql`, `psql -f probes.sql`), process
# start included on both sides. Also timed: `gapless scan --lookback 1d` (2 dates), gapless's
# cost that does not depend on the range. One scan runs first, untimed, so every timed scan finds the
# ledger as a periodic scan does (the gaps already recorded). Target: ≤ 1.1× the floor.
#
# Warehouses: SQLite always; PostgreSQL when `psql` reaches database `test` at 127.0.0.1:5432
# as user postgres (PG_URL overrides), in a fresh schema dropped at the end; twice: with the URL
# as given (sslmode=prefer, the default of both gapless and psql: TLS when the server offers it)
# and with `sslmode=disable` on both sides.
#
# Usage: bench/scan.sh [rounds] [gapless-binary]
#   rounds: default 7. ROWS: rows per date to measure, default "1 50".
# Prints a Markdown table. Run it under `nice -n 19` on a shared machine.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
rounds=${1:-7}
bin=${2:-}
if [[ -z $bin ]]; then
  target=${CARGO_TARGET_DIR:-$root/target}
  cargo build --release -q -p gapless-cli --manifest-path "$root/Cargo.toml"
  bin="$target/release/gapless"
fi
[[ -x $bin ]] || { echo "scan.sh: $bin is not an executable gapless binary" >&2; exit 2; }
command -v sqlite3 > /dev/null || { echo "scan.sh: needs the sqlite3 CLI for its floor" >&2; exit 2; }
pg_url=${PG_URL:-postgres://postgres@127.0.0.1:5432/test}
schema="gapless_bench_scan_$$"
use_pg=0
if command -v psql > /dev/null && psql "$pg_url" -qAtc 'SELECT 1' > /dev/null 2>&1; then use_pg=1; fi
work=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/scan.XXXXXX")
cleanup() {
  if ((use_pg)); then
    for rows in ${ROWS:-1 50}; do
      psql "$pg_url" -qc "SET client_min_messages = warning; DROP SCHEMA IF EXISTS ${schema}_$rows CASCADE" > /dev/null 2>&1 || true
    done
  fi
  rm -rf "$work"
}
trap cleanup EXIT
phases=20
today=2025-12-31
first=$(date -d "$today - 1100 days" +%F)
holes="'2024-02-10', '2024-02-11', '2024-07-01', '2025-03-15', '2025-11-30'"

pipeline() { # $1 = warehouse url, $2 = table prefix ("" or "schema.")
  printf '[pipeline]\nname = "scan-%s"\nstart = "%s"\n\n[warehouse]\nurl = "%s"\n\n' "$phases" "$first" "$1"
  for ((p = 1; p <= phases; p++)); do
    printf '[[phase]]\nid = %s\nname = "p%s"\n' "$p" "$p"
    if ((p > 1)); then
      printf 'needs = [%s]\n' $((p - 1))
      printf 'run.sql = "INSERT INTO %st%s SELECT d, v FROM %st%s WHERE d BETWEEN :start AND :end"\n' "$2" "$p" "$2" $((p - 1))
    fi
    printf 'check.sql = "SELECT d, COUNT(*) FROM %st%s WHERE d BETWEEN :start AND :end GROUP BY d"\n\n' "$2" "$p"
  done
}

probes() { # $1 = table prefix, $2 = date literal prefix ("" or "DATE ")
  for ((p = 1; p <= phases; p++)); do
    printf "SELECT d, COUNT(*) FROM %st%s WHERE d BETWEEN %s'%s' AND %s'%s' GROUP BY d;\n" "$1" "$p" "$2" "$first" "$2" "$today"
  done
}

sqlite_setup() { # $1 = directory, $2 = rows per date
  mkdir -p "$1"
  pipeline "sqlite://warehouse.db" "" > "$1/gapless.toml"
  probes "" "" > "$1/probes.sql"
  {
    for ((p = 1; p <= phases; p++)); do
      echo "CREATE TABLE t$p (d TEXT, v INTEGER);"
      echo "WITH RECURSIVE days(d) AS (SELECT '$first' UNION ALL SELECT date(d, '+1 day') FROM days WHERE d < '$today'),"
      echo "  n(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM n WHERE v < $2)"
      echo "INSERT INTO t$p SELECT d, v FROM days, n ORDER BY d;"
      echo "CREATE INDEX t${p}_d ON t$p (d);"
    done
    echo "DELETE FROM t10 WHERE d IN ($holes);"
  } | sqlite3 "$1/warehouse.db"
}

pg_setup() { # $1 = directory, $2 = rows per date; also $work/pg-nossl-$2, over sslmode=disable
  local nossl="$work/pg-nossl-$2"
  mkdir -p "$1" "$nossl"
  local s="${schema}_$2" sep='?'
  [[ $pg_url == *\?* ]] && sep='&'
  pipeline "$pg_url" "$s." > "$1/gapless.toml"
  echo "$pg_url" > "$1/url"
  pipeline "$pg_url${sep}sslmode=disable" "$s." > "$nossl/gapless.toml"
  echo "$pg_url${sep}sslmode=disable" > "$nossl/url"
  probes "$s." "DATE " > "$1/probes.sql"
  cp "$1/probes.sql" "$nossl/probes.sql"
  {
    echo "SET client_min_messages = warning; DROP SCHEMA IF EXISTS $s CASCADE; CREATE SCHEMA $s;"
    for ((p = 1; p <= phases; p++)); do
      echo "CREATE TABLE $s.t$p (d DATE, v INTEGER);"
      echo "INSERT INTO $s.t$p SELECT d::date, v FROM generate_series(DATE '$first', DATE '$today', INTERVAL '1 day') d, generate_series(1, $2) v ORDER BY 1;"
      echo "CREATE INDEX ON $s.t$p (d);"
    done
    echo "DELETE FROM $s.t10 WHERE d IN ($holes);"
    for ((p = 1; p <= phases; p++)); do echo "VACUUM ANALYZE $s.t$p;"; done
  } | psql "$pg_url" -q -v ON_ERROR_STOP=1 > /dev/null
}

now() { date +%s.%N; }

# $1 = directory, $2 = lookback (default 1100d). One gapless scan; over 1,100 days exit 1 (gaps
# open) is what it must say here, over 1 day exit 0.
scan() {
  local code=0 lookback=${2:-1100d}
  (cd "$1" && GAPLESS_TODAY=$today "$bin" -q scan --lookback "$lookback" > "$1/scan.out") || code=$?
  if [[ $lookback == 1d ]]; then
    ((code == 0)) && return 0
  elif ((code == 1)) && grep -q "p10" "$1/scan.out"; then
    return 0
  fi
  echo "scan.sh: gapless scan --lookback $lookback in $1 exited with $code (expected 0 over 1 day, 1 with phase 10's gaps over 1,100):" >&2
  cat "$1/scan.out" >&2
  exit 1
}

floor() { # $1 = directory, $2 = sqlite|pg
  if [[ $2 == sqlite ]]; then
    sqlite3 "$1/warehouse.db" < "$1/probes.sql" > "$1/floor.out"
  else  # pg, pg-nossl
    psql "$(cat "$1/url")" -qAt -v ON_ERROR_STOP=1 -f "$1/probes.sql" > "$1/floor.out"
  fi
}

cases=()
for rows in ${ROWS:-1 50}; do
  sqlite_setup "$work/sqlite-$rows" "$rows"
  cases+=("sqlite $rows")
  if ((use_pg)); then
    pg_setup "$work/pg-$rows" "$rows"
    cases+=("pg $rows" "pg-nossl $rows")
  fi
done
for c in "${cases[@]}"; do
  read -r kind rows <<< "$c"
  dir="$work/$kind-$rows"
  scan "$dir"  # untimed: creates the state store and records the gaps once
  floor "$dir" "$kind"
  # The floor's answer covers every date of every phase but phase 10's holes.
  lines=$(wc -l < "$dir/floor.out")
  if ((lines != phases * 1101 - 5)); then
    echo "scan.sh: the floor's queries in $dir returned $lines rows, expected $((phases * 1101 - 5))" >&2
    exit 1
  fi
done

results="$work/results"
for ((round = 1; round <= rounds; round++)); do
  for c in "${cases[@]}"; do
    read -r kind rows <<< "$c"
    dir="$work/$kind-$rows"
    t0=$(now); floor "$dir" "$kind"; t1=$(now)
    scan "$dir"; t2=$(now)
    scan "$dir" 1d; t3=$(now)
    echo "$kind $rows $t0 $t1 $t2 $t3" >> "$results"
  done
done

python3 - "$results" "$rounds" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
print(f"{sys.argv[2]} rounds; 20 phases × 1,101 dates; wall time of each process (median, range).")
print()
print("| warehouse | rows per date | floor: 20 queries in the database's CLI | `gapless scan --lookback 1100d` | ratio, median (range) | `gapless scan --lookback 1d` (fixed cost) |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
cases = []
for r in rows:
    if (r[0], r[1]) not in cases:
        cases.append((r[0], r[1]))
for kind, n in cases:
    rs = [r for r in rows if (r[0], r[1]) == (kind, n)]
    floor = [float(r[3]) - float(r[2]) for r in rs]
    scan = [float(r[4]) - float(r[3]) for r in rs]
    fixed = [float(r[5]) - float(r[4]) for r in rs]
    ratio = [s / f for s, f in zip(scan, floor)]
    name = {"sqlite": "SQLite", "pg": "PostgreSQL 15 (TLS: sslmode=prefer, the default)",
            "pg-nossl": "PostgreSQL 15, `?sslmode=disable`"}[kind]
    ms = lambda xs: f"{statistics.median(xs) * 1e3:.0f} ms ({min(xs) * 1e3:.0f}–{max(xs) * 1e3:.0f})"
    print(f"| {name} | {int(n)} | {ms(floor)} | {ms(scan)} | {statistics.median(ratio):.2f}× "
          f"({min(ratio):.2f}–{max(ratio):.2f}×) | {ms(fixed)} |")
PY
