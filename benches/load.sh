#!/usr/bin/env bash
# Whole-system load run: builds release, starts one node with the demo catalog on a free
# loopback port, and drives it with oha. Every run is bounded (DURATION per scenario) and the
# node is stopped at the end. Prints one table; oha's JSON goes to target/load/<time>/.
#
#   benches/load.sh                      # all scenarios, 100 connections, 10 s each
#   DURATION=5s CONNECTIONS=50 benches/load.sh detail orders
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-100}
SCENARIOS=("$@")
[ ${#SCENARIOS[@]} -gt 0 ] || SCENARIOS=(detail list20 filtered orders)

command -v oha >/dev/null || cargo install oha --locked
cargo build --release --quiet

out="target/load/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
data=$(mktemp -d)
node_pid=""
cleanup() {
  [ -n "$node_pid" ] && kill "$node_pid" 2>/dev/null && wait "$node_pid" 2>/dev/null
  rm -rf "$data"
}
trap cleanup EXIT

RUST_LOG=warn target/release/soundwave node --listen 127.0.0.1:0 --data-dir "$data" --demo \
  >"$out/node.out" 2>"$out/node.err" &
node_pid=$!
for _ in $(seq 1 300); do
  grep -q "listening on" "$out/node.out" 2>/dev/null && break
  sleep 0.1
done
base=$(grep -o "http://[0-9.:]*" "$out/node.out" | head -1)
[ -n "$base" ] || { echo "the node did not start; see $out/node.err" >&2; exit 1; }

password_of() { grep "username=$1 " "$out/node.out" | sed 's/.*password=//'; }
token_for() {
  curl -sf -X POST "$base/api/token/" -H 'content-type: application/json' \
    -d "{\"username\":\"$1\",\"password\":\"$(password_of "$1")\"}" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["access"])'
}
admin=$(token_for demo-admin)
shopper=$(token_for demo-shopper)
# Enough stock that the order scenario measures placing orders, not running out.
curl -sf -X PATCH "$base/api/products/5/" -H "authorization: Bearer $admin" \
  -H 'content-type: application/json' -d '{"stock": 2000000000}' >/dev/null

if oha --help | grep -q -- "--output-format"; then json_flag=(--output-format json); else json_flag=(--json); fi

run() {
  local name=$1; shift
  oha -z "$DURATION" -c "$CONNECTIONS" --no-tui "${json_flag[@]}" "$@" >"$out/$name.json"
}

for scenario in "${SCENARIOS[@]}"; do
  case $scenario in
    detail) run detail "$base/api/products/1/" ;;
    list20) run list20 "$base/api/products/?limit=20" ;;
    filtered) run filtered "$base/api/products/?category=2&name=guitar&order_by_name=asc" ;;
    orders)
      run orders -m POST -H "authorization: Bearer $shopper" -T application/json \
        -d '{"items":[{"product":5,"quantity":1}]}' "$base/api/orders/" ;;
    *) echo "unknown scenario $scenario" >&2; exit 2 ;;
  esac
done

python3 - "$out" "${SCENARIOS[@]}" <<'PY'
import json, sys
out, names = sys.argv[1], sys.argv[2:]
print(f"{'scenario':<10} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'non-2xx':>8} {'errors':>7}")
# Requests still in flight when the duration ends are cut off by oha, not failed by the server.
CUT_OFF = "aborted due to deadline"
for name in names:
    r = json.load(open(f"{out}/{name}.json"))
    p = r["latencyPercentiles"]
    codes = r.get("statusCodeDistribution", {})
    non2xx = sum(v for k, v in codes.items() if not k.startswith("2"))
    errors = sum(v for k, v in r.get("errorDistribution", {}).items() if k != CUT_OFF)
    ms = lambda v: (v or 0) * 1000
    print(f"{name:<10} {r['summary']['requestsPerSec']:>10.0f} {ms(p['p50']):>8.2f} "
          f"{ms(p['p99']):>8.2f} {ms(p.get('p99.9')):>9.2f} {non2xx:>8} {errors:>7}")
print(f"raw oha JSON: {out}/")
PY
