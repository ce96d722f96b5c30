#!/usr/bin/env bash
# What gapless adds per task on a BigQuery warehouse, against the same queries sent by a bare
# HTTP client. The BigQuery emulator (`bqemulator`, REST on DuckDB; see .ci/run for its install)
# serves both, in the same run:
#   gapless  a backfill of one SQL phase over N days (`--jobs 1`, `--force`, one day per task):
#            each task is a session transaction (BEGIN, DELETE + INSERT of the day, the gate's
#            probe, COMMIT), after the pre-flight dry runs and the scan's probes;
#   bare     the very `jobs.query` bodies gapless sent (recorded once through a logging proxy,
#            untimed), replayed in order by Python's http.client on one keep-alive connection,
#            with each session id mapped to the new one the replay's BEGIN gets.
# Each round resets the target table, times gapless, then times the replay.
# Usage: bench/bigquery.sh [rounds] [days] [gapless-binary]
#   rounds: default 5; days: default 100; gapless-binary: default this checkout's release build.
# Needs GAPLESS_BQEMULATOR (or `bqemulator` on PATH).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
rounds=${1:-5}
days=${2:-100}
bin=${3:-}
if [[ -z $bin ]]; then
  target=${CARGO_TARGET_DIR:-$root/target}
  cargo build --release -q -p gapless-cli --manifest-path "$root/Cargo.toml"
  bin="$target/release/gapless"
fi
[[ -x $bin ]] || { echo "bigquery.sh: $bin is not an executable gapless binary" >&2; exit 2; }
emulator=${GAPLESS_BQEMULATOR:-$(command -v bqemulator || true)}
[[ -x $emulator ]] || { echo "bigquery.sh: set GAPLESS_BQEMULATOR to the bqemulator program" >&2; exit 2; }
python=$(dirname "$emulator")/python
[[ -x $python ]] || python=python3
work=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/bigquery.XXXXXX")
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
proxy_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$emulator" start --rest-port "$port" --grpc-port 0 --project bench --ephemeral --data-dir "$work" \
  --log-level warning >"$work/emulator.log" 2>&1 </dev/null &
emulator_pid=$!
trap 'kill $emulator_pid 2>/dev/null; kill ${proxy_pid:-} 2>/dev/null; rm -rf "$work"' EXIT
api="http://127.0.0.1:$port/bigquery/v2/projects/bench"
for _ in $(seq 1 300); do curl -sf "$api/datasets" >/dev/null && break; sleep 0.1; done
start=2024-01-01
end=$(date -d "$start + $((days - 1)) days" +%F)

q() { curl -sf -X POST "$api/queries" -H 'content-type: application/json' -d "{\"query\": \"$1\", \"useLegacySql\": false}" >/dev/null; }
curl -sf -X POST "$api/datasets" -H 'content-type: application/json' \
  -d '{"datasetReference": {"projectId": "bench", "datasetId": "b"}}' >/dev/null
q "CREATE TABLE b.src AS SELECT d, n FROM UNNEST(GENERATE_DATE_ARRAY(DATE '$start', DATE '$end')) AS d, UNNEST(GENERATE_ARRAY(1, 20)) AS n"
q "CREATE TABLE b.dst (d DATE, n INT64)"

pipeline() { # $1 = the endpoint
  cat <<TOML
[pipeline]
name = "bigquery-bench"
start = "$start"

[warehouse]
url = "bigquery://bench?location=US&endpoint=$1"

[[phase]]
id = 1
name = "copy"
run.sql = "DELETE FROM b.dst WHERE d BETWEEN :start AND :end; INSERT INTO b.dst SELECT d, n FROM b.src WHERE d BETWEEN :start AND :end"
check.sql = "SELECT d, COUNT(*) FROM b.dst WHERE d BETWEEN :start AND :end GROUP BY d"
expect.min = 20
TOML
}

backfill() {
  rm -rf "$work/.gapless"
  q "DELETE FROM b.dst WHERE true"
  (cd "$work" && GAPLESS_TODAY=$end "$bin" -q backfill --start-date "$start" --end-date "$end" --force --yes --jobs 1 >/dev/null)
}

# Record once, through a proxy that logs each jobs.query body.
"$python" - "$proxy_port" "$port" "$work/recorded.jsonl" <<'PY' &
import http.client, http.server, sys
listen, upstream, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
class Proxy(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def forward(self):
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        if self.command == "POST" and self.path.endswith("/queries"):
            with open(out, "ab") as f:
                f.write(body + b"\n")
        c = http.client.HTTPConnection("127.0.0.1", upstream)
        c.request(self.command, self.path, body, {"content-type": "application/json"})
        r = c.getresponse(); data = r.read()
        self.send_response(r.status); self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data))); self.end_headers(); self.wfile.write(data)
    do_GET = do_POST = forward
    def log_message(self, *args): pass
http.server.ThreadingHTTPServer(("127.0.0.1", listen), Proxy).serve_forever()
PY
proxy_pid=$!
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$proxy_port") 2>/dev/null && break; sleep 0.1; done
pipeline "http://127.0.0.1:$proxy_port" >"$work/gapless.toml"
backfill
kill $proxy_pid; proxy_pid=
pipeline "http://127.0.0.1:$port" >"$work/gapless.toml"
recorded=$(wc -l <"$work/recorded.jsonl")

replay() {
  q "DELETE FROM b.dst WHERE true"
  "$python" - "$port" "$work/recorded.jsonl" <<'PY'
import http.client, json, sys, time, uuid
port, path = int(sys.argv[1]), sys.argv[2]
bodies = [json.loads(line) for line in open(path)]
c = http.client.HTTPConnection("127.0.0.1", port)
sessions = {}
t0 = time.perf_counter()
for body in bodies:
    body["requestId"] = uuid.uuid4().hex
    recorded_session = body.pop("_recorded_session", None)
    for prop in body.get("connectionProperties", []):
        prop["value"] = sessions[prop["value"]]
    c.request("POST", "/bigquery/v2/projects/bench/queries", json.dumps(body), {"content-type": "application/json"})
    answer = json.loads(c.getresponse().read())
    if body.get("createSession"):
        sessions[recorded_session] = answer["sessionInfo"]["sessionId"]
print(f"{time.perf_counter() - t0:.3f}")
PY
}

# The recorded BEGINs do not hold the session id they got: number them in order and map the
# ids the later statements use, in order of first use, to them.
"$python" - "$work/recorded.jsonl" <<'PY'
import json, sys
path = sys.argv[1]
bodies = [json.loads(line) for line in open(path)]
pending, seen = [], set()
for body in bodies:
    if body.get("createSession"):
        pending.append(body)
    for prop in body.get("connectionProperties", []):
        if prop["value"] not in seen:
            seen.add(prop["value"])
            pending.pop(0)["_recorded_session"] = prop["value"]
with open(path, "w") as f:
    for body in bodies:
        f.write(json.dumps(body) + "\n")
PY

now() { date +%s.%N; }
printf '%s days, one task per day, %s jobs.query calls per backfill\n\n' "$days" "$recorded"
printf '| round | gapless (s) | bare client (s) | ratio | overhead per task (ms) |\n| ---: | ---: | ---: | ---: | ---: |\n'
ratios=(); overheads=()
for ((round = 1; round <= rounds; round++)); do
  t0=$(now); backfill; t1=$(now)
  g=$(echo "$t1 - $t0" | bc -l)
  b=$(replay)
  ratio=$(echo "$g / $b" | bc -l)
  per=$(echo "($g - $b) * 1000 / $days" | bc -l)
  ratios+=("$ratio"); overheads+=("$per")
  printf '| %d | %.2f | %.2f | %.2f× | %.1f |\n' "$round" "$g" "$b" "$ratio" "$per"
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR % 2 ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2)}'; }
printf '\nmedian ratio %.2f×, median overhead per task %.1f ms\n' "$(median "${ratios[@]}")" "$(median "${overheads[@]}")"
