#!/usr/bin/env bash
# The dashboard (`GET /`) at size, measured as a person meets it: a release `gapless serve` on
# loopback, the SQLite state store, a SQLite warehouse with one table per phase (one row per
# date, a hole every 97th date of each phase but the first), no token.
#
# For each shape (phases × years):
#   server   GET / with curl: the whole answer (probing every phase over the range, classifying
#            the cells, reading the ledger and the runs, rendering), median of ROUNDS.
#   floor    `gapless status --json` over the same range, in the same round: the same probes and
#            classification, as a process of its own (so it also pays a process start and
#            opening the stores). The ratio server/floor is the page's cost beyond the probes.
#   browser  Headless Chromium (chromedriver, WebDriver): navigation start to the end of the
#            `load` event, and to the first contentful paint, median of ROUNDS page loads.
#            Target: under 1 s at 10 phases × 10 years (36,500 cells).
#   bytes    Size of the page, and as it crosses the wire gzipped (browsers ask for gzip);
#            `server gz` is the server's answer when asked for gzip (compression included).
#
# Usage: bench/dashboard.sh [rounds] [gapless-binary]
#   rounds: default 5. The release binary is built first unless a binary is given.
#   SHAPES: "PHASES:YEARS ..." default "6:4 10:5 10:10 20:10" (20 × 10 shows the default cut to
#   40,000 cells). Needs chromium, chromedriver, curl, python3, sqlite via python.
# Prints a Markdown table. Run it under `nice -n 19` on a shared machine.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS="${1:-5}"
BIN="${2:-}"
SHAPES="${SHAPES:-6:4 10:5 10:10 20:10}"
if [ -z "$BIN" ]; then
  cargo build --release -q -p gapless-cli
  BIN="${CARGO_TARGET_DIR:-target}/release/gapless"
fi
BIN="$(realpath "$BIN")"
TODAY="2026-06-30"
WORK="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$WORK"' EXIT

port_free() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

DRIVER_PORT="$(port_free)"
chromedriver --port="$DRIVER_PORT" >/dev/null 2>&1 &
sleep 1

echo "| shape | cells | bytes | gzipped | server GET / (ms) | server gz (ms) | floor: status --json (ms) | server/floor | browser load (ms) | first paint (ms) |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for shape in $SHAPES; do
  phases="${shape%%:*}"
  years="${shape##*:}"
  dir="$WORK/p$phases-y$years"
  mkdir -p "$dir"
  python3 - "$dir" "$phases" "$years" "$TODAY" <<'EOF'
import datetime, sqlite3, sys
d, phases, years, today = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
end = datetime.date.fromisoformat(today)
start = end - datetime.timedelta(days=365 * years - 1)
days = [(start + datetime.timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]
db = sqlite3.connect(f"{d}/warehouse.db")
toml = [f'[pipeline]\nname = "dashboard-{phases}x{years}"\nstart = "{start}"\n',
        '[warehouse]\nurl = "sqlite://warehouse.db"\n']
for p in range(1, phases + 1):
    db.execute(f"CREATE TABLE t{p} (d TEXT)")
    rows = [(day,) for i, day in enumerate(days) if p == 1 or (i + p) % 97 != 0]
    db.executemany(f"INSERT INTO t{p} VALUES (?)", rows)
    db.execute(f"CREATE INDEX t{p}_d ON t{p} (d)")
    phase = f'[[phase]]\nid = {p}\nname = "phase{p}"\n'
    if p > 1:
        phase += f'needs = [{p - 1}]\n'
        phase += f'run.sql = "INSERT INTO t{p} SELECT d FROM t{p - 1} WHERE d BETWEEN :start AND :end"\n'
    phase += f'check.sql = "SELECT d, COUNT(*) FROM t{p} WHERE d BETWEEN :start AND :end GROUP BY d"\n'
    toml.append(phase)
db.commit()
open(f"{d}/gapless.toml", "w").write("\n".join(toml))
EOF
  port="$(port_free)"
  (cd "$dir" && GAPLESS_TODAY="$TODAY" "$BIN" -q serve --listen "127.0.0.1:$port" >/dev/null 2>&1) &
  serve=$!
  for _ in $(seq 1 50); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
  start="$(python3 -c "import datetime; print(datetime.date.fromisoformat('$TODAY') - datetime.timedelta(days=365*$years-1))")"
  python3 - "$port" "$DRIVER_PORT" "$ROUNDS" "$dir" "$BIN" "$TODAY" "$start" "$shape" <<'EOF'
import json, statistics, subprocess, sys, tempfile, time, urllib.request
port, driver, rounds, d, binary, today, start, shape = sys.argv[1:9]
rounds = int(rounds)
url = f"http://127.0.0.1:{port}/"

def get(u, headers={}):
    t = time.perf_counter()
    body = urllib.request.urlopen(urllib.request.Request(u, headers=headers)).read()
    return time.perf_counter() - t, body

get(url)  # warm: the first probe opens the warehouse
server, server_gz, floor = [], [], []
for _ in range(rounds):
    t, body = get(url)
    server.append(t)
    t, zipped = get(url, {"Accept-Encoding": "gzip"})
    server_gz.append(t)
    t = time.perf_counter()
    subprocess.run([binary, "-q", "--json", "status", "--start-date", start, "--end-date", today],
                   cwd=d, env={"GAPLESS_TODAY": today, "PATH": "/usr/bin:/bin"},
                   stdout=subprocess.DEVNULL, check=True)
    floor.append(time.perf_counter() - t)
cells = body.count(b"<rect x=") - body.count(b'class="closed"')

def wd(method, path, payload=None):
    req = urllib.request.Request(f"http://127.0.0.1:{driver}{path}", method=method,
                                 data=None if payload is None else json.dumps(payload).encode(),
                                 headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=120).read())["value"]

profile = tempfile.mkdtemp()
args = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--window-size=1400,1000",
        f"--user-data-dir={profile}"]
session = wd("POST", "/session", {"capabilities": {"alwaysMatch": {
    "browserName": "chrome", "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args}}}})["sessionId"]
load, paint = [], []
try:
    wd("POST", f"/session/{session}/url", {"url": url})
    for _ in range(rounds):
        wd("POST", f"/session/{session}/url", {"url": "about:blank"})
        wd("POST", f"/session/{session}/url", {"url": url})
        timing = wd("POST", f"/session/{session}/execute/sync", {"args": [], "script":
            "const n = performance.getEntriesByType('navigation')[0];"
            "const p = performance.getEntriesByName('first-contentful-paint')[0];"
            "return [n.loadEventEnd, p ? p.startTime : null];"})
        load.append(timing[0] / 1000)
        if timing[1] is not None:
            paint.append(timing[1] / 1000)
finally:
    wd("DELETE", f"/session/{session}")
ms = lambda xs: f"{statistics.median(xs) * 1000:.0f}" if xs else "n/a"
phases, years = shape.split(":")
print(f"| {phases} phases × {years} years | {cells:,} | {len(body):,} | {len(zipped):,} | {ms(server)} | "
      f"{ms(server_gz)} | {ms(floor)} | "
      f"{statistics.median(server) / statistics.median(floor):.2f}× | {ms(load)} | {ms(paint)} |")
EOF
  kill "$serve" 2>/dev/null || true
  wait "$serve" 2>/dev/null || true
done
