#!/usr/bin/env bash
# `gapless serve`, measured from the outside as a user runs it (a real process on loopback,
# the SQLite state store, a SQLite warehouse):
#
#   cascade  The trigger's delay. The 4-phase pipeline of crates/cli/tests/cli/serve.rs (raw
#            rows, phase 1; a loader, 2; a daily roll-up in batches of up to 7 days, 3; a
#            rolling 3-day window over it, 4, batches of 7) over DAYS days of raw rows, with
#            `serve` running; `gapless backfill --phases 2 --yes` fills phase 2 from the CLI and
#            the trigger must fill 3 and 4. From the state store afterwards, for each phase-3
#            cell: the start of the task that ran it minus the created_at of the phase-2
#            completion event of its date; for each phase-4 cell: the start of its task minus
#            the latest completion event of the phase-3 cells it needs (its date and the two
#            days before). Median, p95, max; tasks per phase against dates (batching).
#            Also (CASCADE_SOURCES="cli http", the default) with phase 2 loaded outside gapless
#            and reported by one POST /events per date, in date order: events that reach
#            `serve` itself wake its trigger at once, where those written by another process are
#            seen at its next poll of the event log. Target: under 1 s.
#   events   POST /events throughput: a bounded load generator (Python threads, one persistent
#            HTTP/1.1 connection each, a fixed number of requests prepared before the clock
#            starts) posting phase-2 events with distinct ids, as single events and as arrays
#            of 100, into an empty event log and into one already holding 100,000 events. Every
#            answer must be 202 with `stored` equal to the events sent, and the state store must
#            hold them all afterwards. The floor, in the same round and with the same generator:
#            GET /healthz, which touches no store (10,000 requests, just before each shape).
#            Before each measurement the trigger has read the whole event log (it reads the
#            events too, plans their downstream cells and probes the warehouse for them: here
#            phase 2 is not in the warehouse, so nothing becomes runnable).
#   heal     From a gap's creation to its healing through every downstream phase, with the
#            scheduler's one-minute cron (`[healing] scan = "0 * * * * *"`): the cascade
#            pipeline over 60 days, all complete, `serve` running; a phase-3 cell 10 days old
#            and its phase-4 cell are deleted; the time until phase 4 is back, split into the
#            wait for the next tick (gap → heal run created) and the work (run created → run
#            finished). Target: under one scan interval plus the work. Not in `all`: each
#            round waits up to a minute.
#
# Usage: bench/serve.sh [rounds] [cascade|events|heal|all] [gapless-binary]
#   rounds: default 3. The release binary is built first unless a binary is given.
#   CASCADE_DAYS: the lengths of the cascade, default "60 365". EVENTS_THREADS: default 4.
#   EVENTS_SINGLE, EVENTS_ARRAYS: requests per shape, default 10000 and 500 (50,000 events).
# Prints Markdown tables. Run it under `nice -n 19` on a shared machine.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
rounds=${1:-3}
what=${2:-all}
bin=${3:-}
if [[ -z $bin ]]; then
  target=${CARGO_TARGET_DIR:-$root/target}
  cargo build --release -q -p gapless-cli --manifest-path "$root/Cargo.toml"
  bin="$target/release/gapless"
fi
[[ -x $bin ]] || { echo "serve.sh: $bin is not an executable gapless binary" >&2; exit 2; }
case $what in cascade | events | heal | all) ;; *) echo "serve.sh: unknown part '$what' (cascade, events, heal or all)" >&2; exit 2 ;; esac
work=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/serve.XXXXXX")
serve_pid=
cleanup() {
  if [[ -n $serve_pid ]]; then kill -TERM "$serve_pid" 2>/dev/null || true; wait "$serve_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
start=2023-01-01
day() { date -d "$start + $1 days" +%F; }

# $1 = directory, $2 = number of days of raw rows, $3 = the pipeline's start (default $start).
# Writes the pipeline and the warehouse (2 raw rows a day).
project() {
  local first=${3:-$start}
  mkdir -p "$1"
  cat > "$1/gapless.toml" <<TOML
[pipeline]
name = "cascade"
start = "$first"

[warehouse]
url = "sqlite://warehouse.db"

[[phase]]
id = 1
name = "raw"
check.sql = "SELECT d, COUNT(*) FROM raw WHERE d BETWEEN :start AND :end GROUP BY d"

[[phase]]
id = 2
name = "load"
needs = [1]
run.sql = "DELETE FROM loaded WHERE d BETWEEN :start AND :end; INSERT INTO loaded SELECT d, v FROM raw WHERE d BETWEEN :start AND :end"
check.sql = "SELECT d, COUNT(*) FROM loaded WHERE d BETWEEN :start AND :end GROUP BY d"

[[phase]]
id = 3
name = "daily"
needs = [2]
batch_days = 7
run.sql = "DELETE FROM daily WHERE d BETWEEN :start AND :end; INSERT INTO daily SELECT d, SUM(v) FROM loaded WHERE d BETWEEN :start AND :end GROUP BY d"
check.sql = "SELECT d, COUNT(*) FROM daily WHERE d BETWEEN :start AND :end GROUP BY d"

[[phase]]
id = 4
name = "rolling"
needs = [{ phase = 3, lookback_days = 2 }]
batch_days = 7
run.sql = "DELETE FROM rolling WHERE d BETWEEN :start AND :end; INSERT INTO rolling SELECT a.d, (SELECT SUM(b.total) FROM daily b WHERE b.d BETWEEN date(a.d, '-2 days') AND a.d) FROM daily a WHERE a.d BETWEEN :start AND :end"
check.sql = "SELECT d, COUNT(*) FROM rolling WHERE d BETWEEN :start AND :end GROUP BY d"
TOML
  python3 - "$1/warehouse.db" "$first" "$2" <<'PY'
import datetime, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.executescript("""
CREATE TABLE raw (d TEXT, v INTEGER);
CREATE TABLE loaded (d TEXT, v INTEGER);
CREATE TABLE daily (d TEXT, total INTEGER);
CREATE TABLE rolling (d TEXT, total INTEGER);
""")
first = datetime.date.fromisoformat(sys.argv[2])
days = [(first + datetime.timedelta(days=i)).isoformat() for i in range(int(sys.argv[3]))]
db.executemany("INSERT INTO raw VALUES (?, ?)", [(d, v) for d in days for v in (1, 2)])
db.commit()
PY
}

# $1 = directory, $2 = today. Starts `gapless serve` there on a free loopback port; sets
# serve_pid and serve_url.
serve_start() {
  (cd "$1" && GAPLESS_TODAY=$2 exec "$bin" serve --listen 127.0.0.1:0 2> serve.log > /dev/null) &
  serve_pid=$!
  serve_url=
  for ((i = 0; i < 300; i++)); do
    serve_url=$(head -n 1 "$1/serve.log" 2>/dev/null | grep -o 'http://[0-9.:]*' || true)
    [[ -n $serve_url ]] && return 0
    kill -0 "$serve_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "serve.sh: gapless serve did not start in $1:" >&2
  cat "$1/serve.log" >&2
  exit 1
}

serve_stop() {
  kill -TERM "$serve_pid"
  local code=0
  wait "$serve_pid" || code=$?
  serve_pid=
  if ((code != 0)); then
    echo "serve.sh: gapless serve exited with $code:" >&2
    tail -n 20 "$1/serve.log" >&2
    exit 1
  fi
}

cascade_round() { # $1 = days, $2 = round, $3 = cli|http; prints one JSON line
  local dir="$work/cascade-$3-$1-$2" days=$1
  local today last
  today=$(day "$days")
  last=$(day $((days - 1)))
  project "$dir" "$days"
  if [[ $3 == http ]]; then
    # Phase 2 done outside gapless, as a live loader would; its completions are then reported.
    python3 -c 'import sqlite3, sys; db = sqlite3.connect(sys.argv[1]); db.execute("INSERT INTO loaded SELECT d, v FROM raw"); db.commit()' "$dir/warehouse.db"
  fi
  serve_start "$dir" "$today"
  local t0 t1
  t0=$(date +%s%3N)
  if [[ $3 == cli ]]; then
    (cd "$dir" && GAPLESS_TODAY=$today "$bin" -q backfill --start-date "$start" --end-date "$last" \
      --phases 2 --yes > /dev/null)
  else
    python3 - "$serve_url" "$start" "$days" <<'PY'
import datetime, http.client, json, sys, urllib.parse
url = urllib.parse.urlsplit(sys.argv[1])
connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
first = datetime.date.fromisoformat(sys.argv[2])
for i in range(int(sys.argv[3])):
    date = (first + datetime.timedelta(days=i)).isoformat()
    connection.request("POST", "/events", body=json.dumps({"phase": 2, "date": date, "id": f"load-{date}"}),
                       headers={"content-type": "application/json"})
    answer = connection.getresponse()
    body = answer.read()
    if answer.status != 202:
        sys.exit(f"serve.sh: POST /events for {date}: {answer.status} {body[:200]!r}")
PY
  fi
  t1=$(date +%s%3N)
  # Wait (up to 10 minutes) for the trigger to fill phase 4 on every date.
  python3 - "$dir/.gapless/state.db" "$days" <<'PY'
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], timeout=30)
deadline = time.monotonic() + 600
while True:
    done, = db.execute("SELECT COUNT(DISTINCT date) FROM run_cells WHERE phase = 4 AND state = 'complete'").fetchone()
    if done == int(sys.argv[2]):
        break
    if time.monotonic() > deadline:
        sys.exit(f"serve.sh: after 10 minutes the trigger had filled phase 4 on {done} of {sys.argv[2]} dates")
    time.sleep(0.05)
PY
  serve_stop "$dir"
  python3 - "$dir/.gapless/state.db" "$days" "$t0" "$t1" "$3" <<'PY'
import datetime, json, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
days, t0, t1 = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
completed = {}  # (phase, date) -> created_at of its first completion event
for phase, date, at in db.execute(
        "SELECT phase, date, MIN(created_at) FROM events WHERE status = 'complete' GROUP BY phase, date"):
    completed[(phase, date)] = at
started = {}  # (phase, date) -> started_at of the task that completed it
created = {}  # (phase, date) -> created_at of the run that holds that task
kinds = {}
for phase, date, at, kind, run_at in db.execute(
        "SELECT c.phase, c.date, t.started_at, r.kind, r.created_at FROM run_cells c JOIN tasks t ON t.id = c.task_id "
        "JOIN runs r ON r.id = c.run_id WHERE c.state = 'complete' AND c.phase IN (3, 4)"):
    if (phase, date) in started:
        sys.exit(f"serve.sh: phase {phase} on {date} ran twice")
    started[(phase, date)] = at
    created[(phase, date)] = run_at
    kinds[kind] = kinds.get(kind, 0) + 1
first = datetime.date.fromisoformat(min(d for _, d in started))
delays = {3: [], 4: []}
worst = {3: (-1, 0, 0), 4: (-1, 0, 0)}  # delay, of which until the run was created, then until the task started
for (phase, date), at in started.items():
    d = datetime.date.fromisoformat(date)
    if phase == 3:
        needed = [(2, date)]
    else:  # its date and the two before, from the pipeline's start
        needed = [(3, (d - datetime.timedelta(days=k)).isoformat()) for k in range(3)
                  if d - datetime.timedelta(days=k) >= first]
    ready = max(completed[n] for n in needed)
    delays[phase].append(at - ready)
    if at - ready > worst[phase][0]:
        worst[phase] = (at - ready, created[(phase, date)] - ready, at - created[(phase, date)])
tasks = dict(db.execute("SELECT phase, COUNT(*) FROM tasks GROUP BY phase").fetchall())
runs, = db.execute("SELECT COUNT(*) FROM runs WHERE kind = 'trigger'").fetchone()
last4, = db.execute("SELECT MAX(completed_at) FROM run_cells WHERE phase = 4").fetchone()
print(json.dumps({"source": sys.argv[5], "days": days, "delays": delays, "worst": worst, "tasks": tasks, "trigger_runs": runs, "kinds": kinds,
                  "backfill_s": (t1 - t0) / 1e3, "end_to_end_s": (last4 - t0) / 1e3}))
PY
}

cascade() {
  local results="$work/cascade.jsonl"
  for source in ${CASCADE_SOURCES:-cli http}; do
    for days in ${CASCADE_DAYS:-60 365}; do
      for ((round = 1; round <= rounds; round++)); do
        cascade_round "$days" "$round" "$source" >> "$results"
      done
    done
  done
  python3 - "$results" <<'PY'
import json, math, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
def pct(values, p):  # nearest rank
    values = sorted(values)
    return values[max(0, math.ceil(p / 100 * len(values)) - 1)]
print("Cascade: phase 2 filled by `gapless backfill --phases 2` from the CLI (cli), or loaded outside gapless and "
      "reported by one POST /events per date (http); phases 3 and 4 by `serve`'s trigger. Delay = start of the task that ran the cell − created_at of the last completion event it needed (ms).")
print()
print("The worst cell's delay is split into: event → the trigger run that holds the cell is created, + run created → its task starts.")
print()
print("| phase 2 from | days | round | phase 3 delay: median / p95 / max | worst phase-3 cell | phase 4 delay: median / p95 / max | worst phase-4 cell | tasks 2 / 3 / 4 (dates) | trigger runs | phase 2 (backfill or posting) | its start → last phase-4 cell |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
by_days = {}
for i, r in enumerate(rows):
    d3, d4 = r["delays"]["3"], r["delays"]["4"]
    by_days.setdefault((r["source"], r["days"]), []).append(r)
    t = r["tasks"]
    w3, w4 = r["worst"]["3"], r["worst"]["4"]
    print(f"| {r['source']} | {r['days']} | {len(by_days[(r['source'], r['days'])])} | {statistics.median(d3):.0f} / {pct(d3, 95):.0f} / {max(d3):.0f} ms "
          f"| {w3[1]} + {w3[2]} ms "
          f"| {statistics.median(d4):.0f} / {pct(d4, 95):.0f} / {max(d4):.0f} ms "
          f"| {w4[1]} + {w4[2]} ms "
          f"| {t.get('2', 0)} / {t.get('3', 0)} / {t.get('4', 0)} ({r['days']}) | {r['trigger_runs']} "
          f"| {r['backfill_s']:.2f} s | {r['end_to_end_s']:.2f} s |")
print()
print("All rounds together, per length:")
print()
print("| phase 2 from | days | cells per phase | phase 3: median / p95 / max | phase 4: median / p95 / max | cells over 1 s (3, 4) |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
for (source, days), rs in by_days.items():
    d3 = [x for r in rs for x in r["delays"]["3"]]
    d4 = [x for r in rs for x in r["delays"]["4"]]
    print(f"| {source} | {days} | {days} × {len(rs)} rounds | {statistics.median(d3):.0f} / {pct(d3, 95):.0f} / {max(d3):.0f} ms "
          f"| {statistics.median(d4):.0f} / {pct(d4, 95):.0f} / {max(d4):.0f} ms "
          f"| {sum(x > 1000 for x in d3)}, {sum(x > 1000 for x in d4)} |")
PY
}

# The load generator: `load.py URL METHOD PATH BODIES_FILE REQUESTS THREADS EVENTS_PER_REQUEST`.
# BODIES_FILE holds one request body a line (empty for GET); request i sends line i. Prints
# one JSON line: seconds, requests, events acknowledged as stored.
cat > "$work/load.py" <<'PY'
import http.client, json, sys, threading, time, urllib.parse
url, method, path, bodies_file, requests, threads, per = sys.argv[1:8]
requests, threads, per = int(requests), int(threads), int(per)
host = urllib.parse.urlsplit(url)
bodies = open(bodies_file, "rb").read().split(b"\n")[:requests] if method == "POST" else None
if bodies is not None and len(bodies) < requests:
    sys.exit(f"load.py: {bodies_file} holds {len(bodies)} bodies, {requests} needed")
failures, stored = [], [0] * threads
def worker(k):
    connection = http.client.HTTPConnection(host.hostname, host.port, timeout=60)
    count = 0
    for i in range(k, requests, threads):
        if method == "POST":
            connection.request("POST", path, body=bodies[i], headers={"content-type": "application/json"})
        else:
            connection.request("GET", path)
        answer = connection.getresponse()
        body = answer.read()
        if method == "POST":
            if answer.status != 202 or json.loads(body).get("stored") != per:
                failures.append((answer.status, body[:200]))
                return
            count += per
        elif answer.status != 200:
            failures.append((answer.status, body[:200]))
            return
    stored[k] = count
    connection.close()
workers = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
t0 = time.perf_counter()
for w in workers: w.start()
for w in workers: w.join()
elapsed = time.perf_counter() - t0
if failures:
    sys.exit(f"load.py: {len(failures)} failed requests, first: {failures[0]}")
print(json.dumps({"seconds": elapsed, "requests": requests, "stored": sum(stored)}))
PY

# $1 = file, $2 = requests, $3 = events per request, $4 = id prefix: one JSON body a line,
# phase-2 events with distinct ids over March 2024 (today is the 31st).
bodies() {
  python3 - "$@" <<'PY'
import json, sys
path, requests, per, prefix = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
with open(path, "w") as out:
    for i in range(requests):
        events = [{"phase": 2, "date": f"2024-03-{1 + (i * per + j) % 30:02d}", "id": f"{prefix}-{i}-{j}"}
                  for j in range(per)]
        out.write(json.dumps(events[0] if per == 1 else events) + "\n")
PY
}

# $1 = directory: waits until the trigger has read every event stored (its position in the
# state store's `consumers` table), so that the next measurement does not share the CPU with
# the backlog of the previous one.
caught_up() {
  python3 - "$1/.gapless/state.db" <<'PY'
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], timeout=30)
deadline = time.monotonic() + 300
while True:
    last, = db.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()
    read = db.execute("SELECT event_id FROM consumers WHERE name = 'trigger'").fetchone()
    if read and read[0] >= last:
        break
    if time.monotonic() > deadline:
        sys.exit(f"serve.sh: the trigger had not read the event log up to {last} after 5 minutes ({read})")
    time.sleep(0.05)
PY
}

events() {
  local threads=${EVENTS_THREADS:-4} results="$work/events.jsonl"
  # Shapes: name, events per request, requests.
  local shapes=("1 ${EVENTS_SINGLE:-10000}" "100 ${EVENTS_ARRAYS:-500}") floor_requests=${EVENTS_FLOOR:-10000}
  for ((round = 1; round <= rounds; round++)); do
    for prefill in 0 100000; do
      local dir="$work/events-$prefill-$round"
      # March 2024, today the 31st: raw rows, nothing loaded, so the events' phase-3 candidates
      # are probed by the trigger but not runnable (phase 2 is not in the warehouse).
      project "$dir" 30 2024-03-01
      serve_start "$dir" 2024-03-31
      if ((prefill > 0)); then
        bodies "$work/prefill" $((prefill / 1000)) 1000 "prefill-$round"
        local posted_at read_at prefilled
        prefilled=$(python3 "$work/load.py" "$serve_url" POST /events "$work/prefill" $((prefill / 1000)) 2 1000)
        posted_at=$(date +%s.%N)
        caught_up "$dir"
        read_at=$(date +%s.%N)
        echo "{\"posted\": $prefilled, \"trigger_s\": $(python3 -c "print($read_at - $posted_at)")}" >> "$work/prefill.jsonl"
      fi
      local expected=$prefill
      for shape in "${shapes[@]}"; do
        read -r per requests <<< "$shape"
        bodies "$work/bodies" "$requests" "$per" "r$round-$per"
        floor=$(python3 "$work/load.py" "$serve_url" GET /healthz /dev/null "$floor_requests" "$threads" 0)
        posted=$(python3 "$work/load.py" "$serve_url" POST /events "$work/bodies" "$requests" "$threads" "$per")
        expected=$((expected + requests * per))
        held=$(python3 -c 'import sqlite3, sys; print(sqlite3.connect(sys.argv[1], timeout=30).execute("SELECT COUNT(*) FROM events WHERE dedup_key IS NOT NULL").fetchone()[0])' "$dir/.gapless/state.db")
        if ((held != expected)); then
          echo "serve.sh: the state store holds $held events from outside, $expected were acknowledged" >&2
          exit 1
        fi
        caught_up "$dir"
        echo "{\"round\": $round, \"prefill\": $prefill, \"per\": $per, \"floor\": $floor, \"posted\": $posted}" >> "$results"
      done
      serve_stop "$dir"
    done
  done
  python3 - "$results" "$threads" "$work/prefill.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
prefills = [json.loads(line) for line in open(sys.argv[3])]
print(f"POST /events: {sys.argv[2]} client threads, one persistent connection each; floor = GET /healthz "
      "with the same generator in the same round. Medians over rounds (range).")
print()
print("| events per request | already stored | floor: GET /healthz req/s | POST req/s | events/s stored and acknowledged | POST req/s / floor | events/s / floor req/s |")
print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
shapes = sorted({(r["per"], r["prefill"]) for r in rows})
for per, prefill in shapes:
    rs = [r for r in rows if r["per"] == per and r["prefill"] == prefill]
    floor = [r["floor"]["requests"] / r["floor"]["seconds"] for r in rs]
    post = [r["posted"]["requests"] / r["posted"]["seconds"] for r in rs]
    ev = [r["posted"]["stored"] / r["posted"]["seconds"] for r in rs]
    ratio = [p / f for p, f in zip(post, floor)]
    eratio = [e / f for e, f in zip(ev, floor)]
    rng = lambda xs, f: f"{f(statistics.median(xs))} ({f(min(xs))}–{f(max(xs))})"
    print(f"| {per} | {prefill:,} | {rng(floor, lambda x: f'{x:,.0f}')} | {rng(post, lambda x: f'{x:,.0f}')} "
          f"| {rng(ev, lambda x: f'{x:,.0f}')} | {rng(ratio, lambda x: f'{x:.2f}×')} | {rng(eratio, lambda x: f'{x:.1f}×')} |")
print()
print("Prefill (arrays of 1,000, 2 threads), then until the trigger has read the whole log: " + "; ".join(
    f"{p['posted']['stored']:,} events in {p['posted']['seconds']:.2f} s, trigger +{p['trigger_s']:.2f} s" for p in prefills))
PY
}

heal_round() { # $1 = round; prints one JSON line
  local dir="$work/heal-$1" today gap
  today=$(day 60)
  gap=$(day 50)
  project "$dir" 60
  printf '\n[healing]\nscan = "0 * * * * *"\nlookback = "90d"\nauto_heal_max_age = "30d"\n' >> "$dir/gapless.toml"
  (cd "$dir" && GAPLESS_TODAY=$today "$bin" -q backfill --start-date "$start" --end-date "$(day 59)" --yes > /dev/null)
  serve_start "$dir" "$today"
  sleep 2
  python3 - "$dir" "$gap" <<'PY'
import json, sqlite3, sys, time
dir, gap = sys.argv[1], sys.argv[2]
warehouse = sqlite3.connect(f"{dir}/warehouse.db", timeout=30)
warehouse.execute("DELETE FROM daily WHERE d = ?", (gap,))
warehouse.execute("DELETE FROM rolling WHERE d = ?", (gap,))
warehouse.commit()
created = time.time()
deadline = created + 180
while time.time() < deadline:
    if warehouse.execute("SELECT COUNT(*) FROM rolling WHERE d = ?", (gap,)).fetchone()[0] == 1:
        break
    time.sleep(0.02)
else:
    sys.exit("heal: the gap was not healed within 3 minutes")
healed = time.time()
state = sqlite3.connect(f"{dir}/.gapless/state.db", timeout=30)
run = None
while run is None or run[1] is None:
    run = state.execute("SELECT created_at, finished_at FROM runs WHERE kind = 'heal'").fetchone()
    time.sleep(0.02)
print(json.dumps({"wait_s": run[0] / 1000 - created, "work_s": (run[1] - run[0]) / 1000,
                  "total_s": healed - created}))
PY
  serve_stop "$dir"
}

heal() {
  local results="$work/heal.jsonl"
  for ((round = 1; round <= rounds; round++)); do heal_round "$round" >> "$results"; done
  python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print("Heal: a gap (a phase-3 cell and its phase-4 cell, 10 days old) until phase 4 is back, with a one-minute scan.")
print()
print("| round | gap → heal run created (wait for the tick) | heal run (work) | gap → phase 4 back |")
print("| ---: | ---: | ---: | ---: |")
for i, r in enumerate(rows, 1):
    print(f"| {i} | {r['wait_s']:.1f} s | {r['work_s'] * 1000:.0f} ms | {r['total_s']:.1f} s |")
PY
}

if [[ $what == cascade || $what == all ]]; then cascade; echo; fi
if [[ $what == heal ]]; then heal; fi
if [[ $what == events || $what == all ]]; then events; fi
