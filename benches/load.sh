#!/usr/bin/env bash
# Whole-system load run: builds release, starts a topology on free loopback ports with the
# demo catalog, and drives it with oha. Every run is bounded (DURATION per scenario) and
# everything started is stopped at the end. Prints one table; oha's JSON goes to
# target/load/<time>/.
#
#   benches/load.sh                                  # one node, all scenarios
#   TOPOLOGY=cluster benches/load.sh detail orders   # three nodes, load sent to a follower
#   DURATION=5s CONNECTIONS=50 benches/load.sh orders
#
# With TOPOLOGY=cluster a standalone node also runs, so the `detail-single` scenario puts a
# cluster follower's reads next to a single node's, in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-100}
TOPOLOGY=${TOPOLOGY:-node}
SCENARIOS=("$@")
if [ ${#SCENARIOS[@]} -eq 0 ]; then
  SCENARIOS=(detail list20 filtered orders)
  [ "$TOPOLOGY" = cluster ] && SCENARIOS+=(detail-single)
fi

command -v oha >/dev/null || cargo install oha --locked
cargo build --release --quiet

out="target/load/$(date +%Y%m%d-%H%M%S)-$TOPOLOGY"
mkdir -p "$out"
data=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$data"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# start_node NAME ARGS...: starts `soundwave node ARGS` with output in $out/NAME.{out,err}.
start_node() {
  local name=$1; shift
  RUST_LOG=warn target/release/soundwave node "$@" >"$out/$name.out" 2>"$out/$name.err" &
  pids+=($!)
}
# url_of NAME: waits (bounded) for the node's ready line and prints its base URL.
url_of() {
  for _ in $(seq 1 600); do
    grep -q "listening on" "$out/$1.out" 2>/dev/null && break
    sleep 0.1
  done
  grep -o "http://[0-9.:]*" "$out/$1.out" | head -1
}

if [ "$TOPOLOGY" = cluster ]; then
  config="$data/cluster.toml"
  printf '[cluster]\nsecret = "load-test-secret"\n' >"$config"
  for id in 1 2 3; do
    printf '[[cluster.nodes]]\nid = %s\napi = "127.0.0.1:%s"\npeer = "127.0.0.1:%s"\n' \
      "$id" "$(free_port)" "$(free_port)" >>"$config"
  done
  for id in 1 2 3; do
    demo=(); [ "$id" = 1 ] && demo=(--demo)
    start_node "node$id" --config "$config" --node-id "$id" --data-dir "$data/node$id" "${demo[@]}"
  done
  for id in 1 2 3; do url_of "node$id" >/dev/null; done
  leader=$(curl -sf "$(url_of node1)/health/" | python3 -c 'import json,sys; print(json.load(sys.stdin)["cluster"]["leader_id"])')
  follower=$(( leader % 3 + 1 ))
  base=$(url_of "node$follower")
  credentials="$out/node1.out"
  start_node single --listen 127.0.0.1:0 --data-dir "$data/single" --demo
  single=$(url_of single)
  echo "cluster: leader node $leader, load sent to follower node $follower ($base)"
else
  start_node node --listen 127.0.0.1:0 --data-dir "$data/node" --demo
  base=$(url_of node)
  credentials="$out/node.out"
fi
[ -n "$base" ] || { echo "the topology did not start; see $out/*.err" >&2; exit 1; }

password_of() { grep "username=$1 " "$credentials" | head -1 | sed 's/.*password=//'; }
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
    detail-single) run detail-single "$single/api/products/1/" ;;
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
print(f"{'scenario':<14} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'non-2xx':>8} {'errors':>7}")
# Requests still in flight when the duration ends are cut off by oha, not failed by the server.
CUT_OFF = "aborted due to deadline"
for name in names:
    r = json.load(open(f"{out}/{name}.json"))
    p = r["latencyPercentiles"]
    codes = r.get("statusCodeDistribution", {})
    non2xx = sum(v for k, v in codes.items() if not k.startswith("2"))
    errors = sum(v for k, v in r.get("errorDistribution", {}).items() if k != CUT_OFF)
    ms = lambda v: (v or 0) * 1000
    print(f"{name:<14} {r['summary']['requestsPerSec']:>10.0f} {ms(p['p50']):>8.2f} "
          f"{ms(p['p99']):>8.2f} {ms(p.get('p99.9')):>9.2f} {non2xx:>8} {errors:>7}")
print(f"raw oha JSON: {out}/")
PY
