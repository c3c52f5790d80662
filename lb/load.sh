#!/usr/bin/env bash
# Load run of `soundwave lb` on loopback (release build, demo catalog, RUST_LOG=warn):
# three nodes (two primaries, one backup) and the balancer; then, in one run,
#   direct   oha straight to one node
#   lb       oha through the balancer (oha connects from one IP, so one primary serves it)
#   lb-kill  oha through the balancer while the primary serving it is killed (SIGKILL)
#            KILL_AFTER seconds in
# each `oha -c CONNECTIONS -z DURATION` on GET /api/products/1/. Every run is bounded and
# every process is stopped at the end. Prints a table; oha's JSON goes to
# target/load-lb/<time>/.
#
#   lb/load.sh
#   DURATION=5s CONNECTIONS=50 KILL_AFTER=2 lb/load.sh
#   LB_THREADS=1 lb/load.sh        # the balancer's worker threads (default: one per core)
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-100}
KILL_AFTER=${KILL_AFTER:-3}
PATH_UNDER_TEST=${PATH_UNDER_TEST:-/api/products/1/}
LB_THREADS=${LB_THREADS:-0}

command -v oha >/dev/null || cargo install oha --locked
cargo build --release --quiet
bin=target/release/soundwave

out="target/load-lb/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
tmp=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_line() { # file pattern
  for _ in $(seq 1 300); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "no '$2' in $1" >&2
  exit 1
}

declare -A node_pid node_port
for id in 1 2 3; do
  node_port[$id]=$(free_port)
  RUST_LOG=warn "$bin" node --listen "127.0.0.1:${node_port[$id]}" --data-dir "$tmp/node$id" \
    --node-id "$id" --demo >"$out/node$id.out" 2>"$out/node$id.err" &
  node_pid[$id]=$!
  pids+=($!)
done
for id in 1 2 3; do wait_line "$out/node$id.out" "listening on"; done

lb_port=$(free_port)
metrics_port=$(free_port)
printf '[lb]\nthreads = %s\n' "$LB_THREADS" >"$tmp/lb.toml"
RUST_LOG=warn "$bin" lb --config "$tmp/lb.toml" --listen "127.0.0.1:$lb_port" --metrics-listen "127.0.0.1:$metrics_port" \
  --primary "127.0.0.1:${node_port[1]}" --primary "127.0.0.1:${node_port[2]}" \
  --backup "127.0.0.1:${node_port[3]}" >"$out/lb.out" 2>"$out/lb.err" &
pids+=($!)
wait_line "$out/lb.out" "soundwave lb listening on"

direct="http://127.0.0.1:${node_port[1]}$PATH_UNDER_TEST"
balanced="http://127.0.0.1:$lb_port$PATH_UNDER_TEST"
curl -sf -o /dev/null "$direct"
curl -sf -o /dev/null "$balanced"

if oha --help | grep -q -- "--output-format"; then json_flag=(--output-format json); else json_flag=(--json); fi
run() { # name url
  oha -z "$DURATION" -c "$CONNECTIONS" --no-tui "${json_flag[@]}" "$2" >"$out/$1.json"
}

run direct "$direct"
run lb "$balanced"

# The primary that serves this client (oha connects from 127.0.0.1 like curl).
victim=$(curl -s -D - -o /dev/null "$balanced" | tr -d '\r' | awk 'tolower($1)=="x-soundwave-node:" {print $2}')
( sleep "$KILL_AFTER"; kill -9 "${node_pid[$victim]}"; echo "killed node $victim" >"$out/killed.txt" ) &
run lb-kill "$balanced"
wait_line "$out/killed.txt" "killed"
curl -s "http://127.0.0.1:$lb_port/_lb/status" >"$out/status-after-kill.json"
curl -s "http://127.0.0.1:$metrics_port/metrics" >"$out/lb-metrics.txt"

python3 - "$out" "$(cat "$out/killed.txt")" <<'PY'
import json, sys
out, killed = sys.argv[1], sys.argv[2]
print(f"{'run':<8} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'requests':>9} {'non-2xx':>8} {'errors':>7}")
for name in ["direct", "lb", "lb-kill"]:
    r = json.load(open(f"{out}/{name}.json"))
    p = r["latencyPercentiles"]
    codes = r.get("statusCodeDistribution", {})
    total = sum(codes.values())
    non2xx = sum(v for k, v in codes.items() if not k.startswith("2"))
    errors = sum(r.get("errorDistribution", {}).values())
    ms = lambda v: (v or 0) * 1000
    print(f"{name:<8} {r['summary']['requestsPerSec']:>10.0f} {ms(p['p50']):>8.2f} "
          f"{ms(p['p99']):>8.2f} {total:>9} {non2xx:>8} {errors:>7}")
d = json.load(open(f"{out}/direct.json"))
b = json.load(open(f"{out}/lb.json"))
ratio = b["summary"]["requestsPerSec"] / d["summary"]["requestsPerSec"]
added = (b["latencyPercentiles"]["p50"] - d["latencyPercentiles"]["p50"]) * 1000
print(f"lb/direct throughput: {ratio:.2f}; p50 added by the balancer: {added:.2f} ms")
k = json.load(open(f"{out}/lb-kill.json"))
print(f"lb-kill: {killed}; status codes {k.get('statusCodeDistribution')}, "
      f"errors {k.get('errorDistribution') or {}}")
print(f"raw oha JSON, balancer status and metrics: {out}/")
PY
