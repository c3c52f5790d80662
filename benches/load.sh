#!/usr/bin/env bash
# Whole-system load run, one command: builds release (and the bare-hyper baseline,
# benches/baseline/server.rs), starts a topology on free loopback ports with the demo catalog
# (6 categories, 1,000 products), creates USERS shoppers and logs them in, then drives named
# scenarios with oha. Every oha run is bounded by DURATION and everything started is stopped
# at the end. Prints one table; oha's JSON and the generated inputs go to target/load/<time>/.
#
#   benches/load.sh                                  # one node: browse buy mixed login
#   TOPOLOGY=up benches/load.sh browse mixed         # `soundwave up`: balancer + three nodes
#   TOPOLOGY=cluster benches/load.sh buy             # three nodes, load sent to a follower
#   DURATION=5s CONNECTIONS=50 benches/load.sh detail
#
# Topologies: node (one node), cluster (three raft nodes, load to a follower; also starts a
# standalone node for `detail-single`), up (`soundwave up --config <generated>`, load to its
# balancer).
#
# Scenarios (CONNECTIONS connections each unless said otherwise):
#   browse   GETs drawn at random from a URL file: product details, product lists with
#            category/name/order/limit/offset filters, category list and details
#   buy      POST /api/orders/ of 1-3 lines by USERS shoppers: one oha process per shopper
#            (its token), each sending bodies drawn from a file of random 1-3 line orders;
#            req/s summed, percentiles of the merged latency distribution
#   mixed    browse and buy at the same time, connections split 95:5 (MIXED_BUY_PERCENT=5;
#            the achieved request share of buy is printed: buys are slower, so it is lower)
#   login    POST /api/token/ with the USERS shoppers' credentials (LOGIN_CONNECTIONS,
#            default 8: argon2id at 19 MiB per hash is slow on purpose)
#   detail, list20, filtered, orders, detail-single: the single-URL scenarios of the node
#            and cluster issues
#   compressed  the cached 1,000-product list (GET /api/products/?limit=1000) plain, with
#            Accept-Encoding: br and with gzip, in turn (list1000, list1000.br,
#            list1000.gzip); prints the sizes and each compressed/plain req/s ratio
# TOPOLOGY=nginx-vs-lb: two standalone demo nodes, `soundwave lb` over them and nginx
#   (2 workers, ip_hash, keepalive 64, HTTP/1.1 upstream, forwarding headers; Debian's,
#   installed when missing) over the same two; every scenario runs through the balancer,
#   through nginx (NAME@nginx) and straight at node A (NAME@direct), and the table ends with
#   lb/nginx and each one's added p50 (read-only scenarios: detail, list20, browse).
# TOPOLOGY=lb-tls: the same two nodes, `soundwave lb` with its HTTPS listener beside the
#   plain one and nginx with `listen ... ssl http2` beside its plain one (a self-signed P-256
#   certificate made with openssl); every scenario runs through the balancer plain (NAME),
#   HTTPS with HTTP/1.1 (NAME@tls) and HTTP/2 (NAME@h2, one stream per connection), and the
#   same three through nginx (NAME@nginx, NAME@nginx-tls, NAME@nginx-h2); the table ends with
#   each HTTPS req/s over the plain one, and lb/nginx per protocol (default scenario: detail).
# SOUNDWAVE_BIN runs another build of soundwave (to compare two builds in turn).
# Nodes, balancers and `up` run with their default logging (an access line per request at
# info), as operators run them; LOG=quiet starts them with RUST_LOG=warn instead (no access
# log), and LOG=<filter> with that RUST_LOG filter. LOG=compare (node topology, read
# scenarios) starts a default node and a quiet one side by side and runs every scenario on
# both in turn (NAME@quiet): the access log's cost, measured in one run.
# The baseline (a bare hyper server answering every request with the bytes and headers of a
# cached GET /api/products/1/) is always measured first, with the same oha settings, and
# every scenario's req/s is also printed as a fraction of it. list20 has a baseline of its
# own (baseline.list20: the bytes and headers of the cached 20-product page), its fraction
# is of that one.
# ROUNDS=N (default 1) measures the baseline and the scenarios N times in turn (baseline,
# scenarios, baseline, scenarios, ...) and prints medians: req/s, the per-round fraction of
# the baseline, and the latencies of the median round. Each round's JSON is in r<i>/.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-100}
LOGIN_CONNECTIONS=${LOGIN_CONNECTIONS:-8}
TOPOLOGY=${TOPOLOGY:-node}
USERS=${USERS:-50}
MIXED_BUY_PERCENT=${MIXED_BUY_PERCENT:-5}
ROUNDS=${ROUNDS:-1}
LOG=${LOG:-default}
SCENARIOS=("$@")
targets=()
if [ ${#SCENARIOS[@]} -eq 0 ]; then
  SCENARIOS=(browse buy mixed login)
fi
case $TOPOLOGY in node | cluster | up | nginx-vs-lb | lb-tls) ;; *) echo "TOPOLOGY is node, cluster, up, nginx-vs-lb or lb-tls" >&2; exit 2 ;; esac
for scenario in "${SCENARIOS[@]}"; do
  case $scenario in
    browse | buy | mixed | login | detail | list20 | filtered | orders | compressed) ;;
    detail-single) [ "$TOPOLOGY" = cluster ] || { echo "detail-single needs TOPOLOGY=cluster" >&2; exit 2; } ;;
    *) echo "unknown scenario $scenario" >&2; exit 2 ;;
  esac
done
# Side-by-side targets that are separate stores (a quiet node, nginx's nodes) take reads
# only: writes would land on different stores.
side_by_side=
if [ "$LOG" = compare ]; then
  [ "$TOPOLOGY" = node ] || { echo "LOG=compare needs TOPOLOGY=node" >&2; exit 2; }
  side_by_side="LOG=compare"
fi
if [ "$TOPOLOGY" = nginx-vs-lb ]; then
  [ $# -gt 0 ] || SCENARIOS=(detail list20 browse)
  side_by_side="TOPOLOGY=nginx-vs-lb"
fi
if [ "$TOPOLOGY" = lb-tls ]; then
  [ $# -gt 0 ] || SCENARIOS=(detail)
  side_by_side="TOPOLOGY=lb-tls"
fi
if [ -n "$side_by_side" ]; then
  for scenario in "${SCENARIOS[@]}"; do
    case $scenario in
      browse | detail | list20 | filtered | compressed) ;;
      *) echo "$side_by_side runs the read scenarios: browse, detail, list20, filtered, compressed" >&2; exit 2 ;;
    esac
  done
fi

command -v oha >/dev/null || cargo install oha --locked
cargo build --release --quiet --bin soundwave --example baseline_server
soundwave=${SOUNDWAVE_BIN:-target/release/soundwave}

out="target/load/$(date +%Y%m%d-%H%M%S)-$TOPOLOGY"
mkdir -p "$out"
data=$(mktemp -d)
pids=()
cleanup() {
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$data"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The harness signs up its load shoppers from this one address; the per-IP sign-up limit
# (20 an hour by default) is for the internet, not for the load generator.
export SOUNDWAVE_SIGNUPS_PER_IP_PER_HOUR=1000000

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# wait_for FILE PATTERN: waits (bounded, 90 s) for a line in a process's output.
wait_for() {
  for _ in $(seq 1 900); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "no '$2' in $1 after 90 s; see $out/*.err" >&2
  exit 1
}
# with_log COMMAND...: becomes COMMAND (exec: started with `&`, its pid is then $!, which the
# clean-up stops) with the logging LOG asks for.
with_log() {
  case $LOG in
    default) exec env -u RUST_LOG "$@" ;;
    quiet) exec env RUST_LOG=warn "$@" ;;
    *) exec env RUST_LOG="$LOG" "$@" ;;
  esac
}
# start_node NAME ARGS...: starts `soundwave node ARGS` with output in $out/NAME.{out,err}.
start_node() {
  local name=$1; shift
  with_log "$soundwave" node "$@" >"$out/$name.out" 2>"$out/$name.err" &
  pids+=($!)
}
# url_of NAME: waits for the node's ready line and prints its base URL.
url_of() {
  wait_for "$out/$1.out" "listening on"
  grep -o "http://[0-9.:]*" "$out/$1.out" | head -1
}

case $TOPOLOGY in
  cluster)
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
    follower=$((leader % 3 + 1))
    base=$(url_of "node$follower")
    credentials="$out/node1.out"
    start_node single --listen 127.0.0.1:0 --data-dir "$data/single" --demo
    single=$(url_of single)
    echo "cluster: leader node $leader, load sent to follower node $follower ($base)"
    ;;
  up)
    lb=$(free_port)
    config="$data/up.toml"
    apis=("$(free_port)" "$(free_port)" "$(free_port)")
    {
      printf '[node]\ndata_dir = "%s"\n' "$data/data"
      printf '[lb]\nlisten = "127.0.0.1:%s"\nmetrics_listen = "127.0.0.1:%s"\n' "$lb" "$(free_port)"
      printf 'primaries = ["127.0.0.1:%s", "127.0.0.1:%s"]\nbackups = ["127.0.0.1:%s"]\n' "${apis[@]}"
      printf 'run_dir = "%s"\n[cluster]\n' "$data/run"
      for id in 1 2 3; do
        printf '[[cluster.nodes]]\nid = %s\napi = "127.0.0.1:%s"\npeer = "127.0.0.1:%s"\n' \
          "$id" "${apis[$((id - 1))]}" "$(free_port)"
      done
    } >"$config"
    cp "$config" "$out/up.toml"
    with_log "$soundwave" up --config "$config" >"$out/up.out" 2>"$out/up.err" </dev/null &
    pids+=($!)
    wait_for "$out/up.out" "Soundwave is up"
    base="http://127.0.0.1:$lb"
    credentials="$out/up.out"
    echo "up: balancer $base in front of nodes on ports ${apis[*]}"
    ;;
  node)
    if [ "$LOG" = compare ]; then
      LOG=default start_node node --listen 127.0.0.1:0 --data-dir "$data/node" --demo
      LOG=quiet start_node quiet --listen 127.0.0.1:0 --data-dir "$data/quiet" --demo
      base=$(url_of node)
      targets=("" "@quiet")
      target_bases=("$base" "$(url_of quiet)")
    else
      start_node node --listen 127.0.0.1:0 --data-dir "$data/node" --demo
      base=$(url_of node)
    fi
    credentials="$out/node.out"
    ;;
  nginx-vs-lb | lb-tls)
    # Two standalone demo nodes; `soundwave lb` and nginx over the same two, and every
    # scenario run in turn through each and straight at node A (lb-tls: through each
    # plain, HTTPS/1.1 and HTTP/2).
    start_node nodeA --listen 127.0.0.1:0 --data-dir "$data/nodeA" --demo
    start_node nodeB --listen 127.0.0.1:0 --data-dir "$data/nodeB" --demo
    node_a=$(url_of nodeA); node_b=$(url_of nodeB)
    lb=$(free_port)
    lb_tls=() nginx_tls=
    if [ "$TOPOLOGY" = lb-tls ]; then
      mkdir -p "$data/tls"
      openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        -keyout "$data/tls/key.pem" -out "$data/tls/cert.pem" 2>/dev/null
      lb_https=$(free_port) nginx_https=$(free_port)
      lb_tls=(--tls-listen "127.0.0.1:$lb_https" --tls-cert "$data/tls/cert.pem" --tls-key "$data/tls/key.pem")
      nginx_tls="listen 127.0.0.1:$nginx_https ssl http2;
    ssl_certificate $data/tls/cert.pem;
    ssl_certificate_key $data/tls/key.pem;"
    fi
    with_log "$soundwave" lb --listen "127.0.0.1:$lb" --metrics-listen "127.0.0.1:$(free_port)" \
      --primary "${node_a#http://}" --primary "${node_b#http://}" "${lb_tls[@]}" >"$out/lb.out" 2>"$out/lb.err" &
    pids+=($!)
    wait_for "$out/lb.out" "listening on"
    command -v nginx >/dev/null || PATH="$PATH:/usr/sbin"
    if ! command -v nginx >/dev/null; then
      echo "installing nginx (Debian's)" >&2
      sudo=(); [ "$(id -u)" = 0 ] || sudo=(sudo)
      "${sudo[@]}" apt-get update -qq && "${sudo[@]}" apt-get install -y -qq nginx >/dev/null
    fi
    nginx_port=$(free_port)
    mkdir -p "$data/nginx"
    # nginx resolves relative paths against its prefix: give it absolute ones.
    nginx_out=$(cd "$out" && pwd)
    case $LOG in
      quiet) nginx_access="off" ;;
      # Buffered as the balancer's and the node's own: written at 64 KiB or after 100 ms.
      *) nginx_access="$nginx_out/nginx-access.log combined buffer=64k flush=100ms" ;;
    esac
    cat >"$nginx_out/nginx.conf" <<NGINX
worker_processes 2;
pid $data/nginx/nginx.pid;
error_log $nginx_out/nginx.err warn;
events { worker_connections 4096; }
http {
  access_log $nginx_access;
  client_body_temp_path $data/nginx/body;
  proxy_temp_path $data/nginx/proxy;
  fastcgi_temp_path $data/nginx/fastcgi;
  uwsgi_temp_path $data/nginx/uwsgi;
  scgi_temp_path $data/nginx/scgi;
  upstream soundwave {
    ip_hash;
    server ${node_a#http://};
    server ${node_b#http://};
    keepalive 64;
  }
  server {
    listen 127.0.0.1:$nginx_port;
    $nginx_tls
    location / {
      proxy_pass http://soundwave;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Real-IP \$remote_addr;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
    }
  }
}
NGINX
    nginx -e "$nginx_out/nginx.err" -p "$data/nginx" -c "$nginx_out/nginx.conf" -g 'daemon off;' &
    pids+=($!)
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$nginx_port/health/" >/dev/null && break; sleep 0.1; done
    curl -sf "http://127.0.0.1:$nginx_port/health/" >/dev/null || { echo "nginx did not start; see $out/nginx.err" >&2; exit 1; }
    # Inputs are made on node A (each node has its own demo passwords and shoppers).
    base="$node_a"
    credentials="$out/nodeA.out"
    # Scenario names get a suffix per target: none for the balancer.
    if [ "$TOPOLOGY" = lb-tls ]; then
      targets=("" "@tls" "@h2" "@nginx" "@nginx-tls" "@nginx-h2")
      target_bases=("http://127.0.0.1:$lb" "https://127.0.0.1:$lb_https" "https://127.0.0.1:$lb_https"
        "http://127.0.0.1:$nginx_port" "https://127.0.0.1:$nginx_https" "https://127.0.0.1:$nginx_https")
      # oha's flags per target (its HTTPS trusts any certificate; --http2 negotiates h2).
      target_flags=("" "--insecure" "--insecure --http2" "" "--insecure" "--insecure --http2")
      echo "lb-tls: soundwave lb http://127.0.0.1:$lb and https://127.0.0.1:$lb_https," \
        "nginx http://127.0.0.1:$nginx_port and https://127.0.0.1:$nginx_https, over $node_a and $node_b"
    else
      targets=("" "@nginx" "@direct")
      target_bases=("http://127.0.0.1:$lb" "http://127.0.0.1:$nginx_port" "$node_a")
      echo "nginx-vs-lb: soundwave lb ${target_bases[0]}, nginx http://127.0.0.1:$nginx_port, over $node_a and $node_b"
    fi
    ;;
esac
if [ ${#targets[@]} -eq 0 ]; then targets=(""); target_bases=("$base"); fi
[ -n "$base" ] || { echo "the topology did not start; see $out/*.err" >&2; exit 1; }

# Inputs: shoppers and their tokens, stock, the browse URL file, the order bodies, the login
# bodies, and the cached response the baseline replays.
password_of() { grep "username=$1 " "$credentials" | head -1 | sed 's/.*password=//'; }
python3 - "$base" "$out" "$USERS" "$(password_of demo-admin)" <<'PY'
import json, random, sys, urllib.request
from concurrent.futures import ThreadPoolExecutor
base, out, users, admin_password = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
rng = random.Random(5)

def call(method, path, body=None, token=None):
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response), dict(response.headers)

admin = call("POST", "/api/token/", {"username": "demo-admin", "password": admin_password})[0]["access"]
# Enough stock that buying measures placing orders, not running out.
BUY_PRODUCTS = range(1, 51)
for product in BUY_PRODUCTS:
    call("PATCH", f"/api/products/{product}/", {"stock": 2_000_000_000}, admin)

def shopper(i):
    name, password = f"load-shopper-{i}", f"load-password-{i}"
    call("POST", "/api/users/", {"username": name, "password": password, "email": f"{name}@example.com"})
    return name, password, call("POST", "/api/token/", {"username": name, "password": password})[0]["access"]

with ThreadPoolExecutor(4) as pool:
    shoppers = list(pool.map(shopper, range(users)))
with open(f"{out}/tokens.txt", "w") as f:
    f.writelines(token + "\n" for _, _, token in shoppers)
with open(f"{out}/login-bodies.txt", "w") as f:
    f.writelines(json.dumps({"username": n, "password": p}) + "\n" for n, p, _ in shoppers)
with open(f"{out}/order-bodies.txt", "w") as f:
    for _ in range(1000):
        lines = rng.sample(list(BUY_PRODUCTS), rng.randint(1, 3))
        items = [{"product": p, "quantity": rng.randint(1, 3)} for p in lines]
        f.write(json.dumps({"items": items}) + "\n")

categories = [c["id"] for c in call("GET", "/api/categories/")[0]]
words = ["guitar", "vinyl", "amp", "drum", "synth", "cable", "shirt", "pedal", "mic", "bass"]
urls = []
for _ in range(400):
    urls.append(f"{base}/api/products/{rng.randint(1, 1000)}/")
for _ in range(300):
    query = [f"limit={rng.choice([10, 20, 50])}", f"offset={rng.choice([0, 0, 20, 40, 100])}"]
    if rng.random() < 0.7:
        query.append(f"category={rng.choice(categories)}")
    if rng.random() < 0.5:
        query.append(f"name={rng.choice(words)}")
    if rng.random() < 0.5:
        query.append(f"order_by_name={rng.choice(['asc', 'desc'])}")
    rng.shuffle(query)
    urls.append(f"{base}/api/products/?{'&'.join(query)}")
for _ in range(100):
    urls.append(f"{base}/api/categories/")
for _ in range(200):
    urls.append(f"{base}/api/categories/{rng.choice(categories)}/")
rng.shuffle(urls)
with open(f"{out}/browse-urls.txt", "w") as f:
    f.writelines(u + "\n" for u in urls)

# The cached responses the baselines replay: body and the headers hyper does not add, of
# the detail (the baseline of every scenario) and of the 20-product page (list20's own).
skip = {"content-length", "date", "connection", "keep-alive", "transfer-encoding"}
for name, path in [("baseline", "/api/products/1/"), ("baseline.list20", "/api/products/?limit=20")]:
    call("GET", path)
    with urllib.request.urlopen(base + path, timeout=30) as response:
        body, headers = response.read(), response.headers.items()
    open(f"{out}/{name}-body.json", "wb").write(body)
    with open(f"{out}/{name}-headers.txt", "w") as f:
        f.writelines(f"{k}: {v}\n" for k, v in headers if k.lower() not in skip)
PY
input_base=$base
mapfile -t tokens <"$out/tokens.txt"
# start_baseline NAME: the bare hyper server replaying NAME-body.json; prints its URL.
start_baseline() {
  local args=()
  while IFS= read -r header; do args+=(--header "$header"); done <"$out/$1-headers.txt"
  target/release/examples/baseline_server --listen 127.0.0.1:0 --body-file "$out/$1-body.json" \
    "${args[@]}" >"$out/$1.out" 2>"$out/$1.err" &
  pids+=($!)
  wait_for "$out/$1.out" "baseline listening on"
}
start_baseline baseline
baseline=$(grep -o "http://[0-9.:]*" "$out/baseline.out" | head -1)
list_baseline=
if [[ " ${SCENARIOS[*]} " == *" list20 "* ]]; then
  start_baseline baseline.list20
  list_baseline=$(grep -o "http://[0-9.:]*" "$out/baseline.list20.out" | head -1)
fi

# oha NAME CONNECTIONS ARGS...: one bounded oha run, JSON in $round/NAME.json. oha sends
# `Accept-Encoding: gzip, compress, deflate, br` unless told not to, and the node now
# compresses bodies of 1 KiB or more: every run is a plain client (as the baselines are)
# unless its ARGS set Accept-Encoding (the compressed scenario).
# oha_flags: the current target's own flags (lb-tls: --insecure, --http2).
oha_flags=()
oha_run() {
  local name=$1 connections=$2; shift 2
  oha -z "$DURATION" -c "$connections" --no-tui --disable-compression --output-format json \
    "${oha_flags[@]}" "$@" >"$round/$name.json"
}
# buy_runs PREFIX CONNECTIONS: CONNECTIONS connections spread over one oha process per
# shopper (at most USERS, at least one connection each), in parallel; PREFIX-<i>.json each.
buy_runs() {
  local prefix=$1 connections=$2 procs i c
  procs=$((connections < ${#tokens[@]} ? connections : ${#tokens[@]}))
  local run_pids=()
  for ((i = 0; i < procs; i++)); do
    c=$((connections / procs + (i < connections % procs ? 1 : 0)))
    oha_run "$prefix-$i" "$c" --worker-threads 1 -m POST -T application/json \
      -H "authorization: Bearer ${tokens[$i]}" -Z "$out/order-bodies.txt" "$base/api/orders/" &
    run_pids+=($!)
  done
  for pid in "${run_pids[@]}"; do wait "$pid"; done
}
browse_run() { oha_run "$1" "$2" --urls-from-file "$target_urls"; }

rows=(baseline)
[ -z "$list_baseline" ] || rows+=(baseline.list20)
for ((r = 1; r <= ROUNDS; r++)); do
  round="$out/r$r"
  mkdir -p "$round"
  oha_flags=()
  oha_run baseline "$CONNECTIONS" "$baseline/api/products/1/"
  [ -z "$list_baseline" ] || oha_run baseline.list20 "$CONNECTIONS" "$list_baseline/api/products/?limit=20"
  for scenario in "${SCENARIOS[@]}"; do
  for t in "${!targets[@]}"; do
    sfx=${targets[$t]} base=${target_bases[$t]}
    read -ra oha_flags <<<"${target_flags[$t]:-}"
    # The browse URLs were made against input_base: each target gets its own copy.
    target_urls="$out/browse-urls.target$t.txt"
    [ -f "$target_urls" ] || sed "s#^$input_base#$base#" "$out/browse-urls.txt" >"$target_urls"
    case $scenario in
      browse) browse_run "browse$sfx" "$CONNECTIONS" ;;
      buy) buy_runs "buy$sfx" "$CONNECTIONS" ;;
      mixed)
        buy_connections=$(((CONNECTIONS * MIXED_BUY_PERCENT + 50) / 100))
        [ "$buy_connections" -ge 1 ] || buy_connections=1
        browse_run "mixed.browse$sfx" $((CONNECTIONS - buy_connections)) &
        browse_pid=$!
        buy_runs "mixed.buy$sfx" "$buy_connections"
        wait "$browse_pid"
        [ "$r" -gt 1 ] || rows+=("mixed$sfx" "mixed.browse$sfx" "mixed.buy$sfx")
        ;;
      login) oha_run "login$sfx" "$LOGIN_CONNECTIONS" -m POST -T application/json -Z "$out/login-bodies.txt" "$base/api/token/" ;;
      detail) oha_run "detail$sfx" "$CONNECTIONS" "$base/api/products/1/" ;;
      compressed)
        list1000="$base/api/products/?limit=1000"
        oha_run "list1000$sfx" "$CONNECTIONS" "$list1000"
        oha_run "list1000.br$sfx" "$CONNECTIONS" -H 'Accept-Encoding: br' "$list1000"
        oha_run "list1000.gzip$sfx" "$CONNECTIONS" -H 'Accept-Encoding: gzip' "$list1000"
        if [ "$r" -eq 1 ]; then
          rows+=("list1000$sfx" "list1000.br$sfx" "list1000.gzip$sfx")
          for coding in identity br gzip; do
            echo "list1000$sfx $coding: $(curl -sf -H "Accept-Encoding: $coding" "$list1000" | wc -c) bytes"
          done | tee -a "$out/sizes.txt"
        fi
        ;;
      detail-single) oha_run detail-single "$CONNECTIONS" "$single/api/products/1/" ;;
      list20) oha_run "list20$sfx" "$CONNECTIONS" "$base/api/products/?limit=20" ;;
      filtered) oha_run "filtered$sfx" "$CONNECTIONS" "$base/api/products/?category=2&name=guitar&order_by_name=asc" ;;
      orders)
        oha_run "orders$sfx" "$CONNECTIONS" -m POST -T application/json -H "authorization: Bearer ${tokens[0]}" \
          -d '{"items":[{"product":5,"quantity":1}]}' "$base/api/orders/" ;;
    esac
    [ "$r" -gt 1 ] || [ "$scenario" = mixed ] || [ "$scenario" = compressed ] || rows+=("$scenario$sfx")
  done
  done
done

python3 - "$out" "$TOPOLOGY" "$LOG" "${rows[@]}" <<'PY'
import glob, json, re, sys
out, topology, log, names = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
# Requests still in flight when the duration ends are cut off by oha, not failed by the server.
CUT_OFF = "aborted due to deadline"
POINTS = ["p10", "p25", "p50", "p75", "p90", "p95", "p99", "p99.9", "p99.99"]

def load(round, name):
    """One round's reports of a scenario: NAME.json, or NAME-<i>.json for the per-shopper runs."""
    files = [f"{round}/{name}.json"] if glob.glob(f"{round}/{name}.json") else sorted(
        glob.glob(f"{round}/{name}-[0-9]*.json"))
    return [json.load(open(f)) for f in files]

def cdf(report, x):
    """Fraction of this report's requests at most x seconds, interpolated between oha's
    percentiles (fastest and slowest as 0 and 1)."""
    s, p = report["summary"], report["latencyPercentiles"]
    pts = [(s.get("fastest") or 0, 0.0)] + [(p[k], float(k[1:]) / 100) for k in POINTS if p.get(k) is not None] + [(s.get("slowest") or 0, 1.0)]
    for (x0, q0), (x1, q1) in zip(pts, pts[1:]):
        if x <= x1:
            return q0 if x1 <= x0 or x < x0 else q0 + (q1 - q0) * (x - x0) / (x1 - x0)
    return 1.0

def merged(reports, q):
    """Percentile q of several runs' latencies together, weighted by their request counts.
    Exact for one run; for several, an interpolation between each run's percentiles."""
    reports = [r for r in reports if r["latencyPercentiles"].get("p50") is not None]
    if not reports:
        return None
    if len(reports) == 1:
        return reports[0]["latencyPercentiles"].get(f"p{q}")
    weights = [sum(r.get("statusCodeDistribution", {}).values()) for r in reports]
    total = sum(weights) or 1
    lo, hi = 0.0, max(r["summary"]["slowest"] for r in reports)
    for _ in range(60):
        mid = (lo + hi) / 2
        if sum(w * cdf(r, mid) for w, r in zip(weights, reports)) / total < q / 100:
            lo = mid
        else:
            hi = mid
    return hi

def measure(round):
    """One round: {name: (req/s, reports, non-2xx, errors, status codes)}."""
    rows = {}
    def add(name, reports):
        codes, errors = {}, 0
        for r in reports:
            for k, v in r.get("statusCodeDistribution", {}).items():
                codes[k] = codes.get(k, 0) + v
            errors += sum(v for k, v in r.get("errorDistribution", {}).items() if k != CUT_OFF)
        rps = sum(r["summary"]["requestsPerSec"] for r in reports)
        non2xx = sum(v for k, v in codes.items() if not k.startswith("2"))
        rows[name] = (rps, reports, non2xx, errors, codes)
    for name in names:
        if name != "mixed" and load(round, name):
            add(name, load(round, name))
    if "mixed.browse" in rows and "mixed.buy" in rows:
        add("mixed", load(round, "mixed.browse") + load(round, "mixed.buy"))
    return rows

def median(values):
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2

rounds = [measure(d) for d in sorted(glob.glob(f"{out}/r[0-9]*"), key=lambda d: int(d.rsplit("r", 1)[1]))]
rows, rps, fraction = [], {}, {}
for name in names:
    per_round = [m[name] for m in rounds if name in m]
    if not per_round:
        continue
    rps[name] = median([row[0] for row in per_round])
    # A scenario with a baseline of its own (list20: the same page's bytes) is measured
    # against it; the others against the detail's.
    scenario = name.split("@")[0]
    own = f"baseline.{scenario}" if any(f"baseline.{scenario}" in m for m in rounds) else "baseline"
    if name != own and all(own in m for m in rounds if name in m):
        fraction[name] = median([m[name][0] / m[own][0] for m in rounds if name in m])
    # Latencies and error counts of the round whose req/s is nearest the median.
    _, reports, non2xx, errors, codes = min(per_round, key=lambda row: abs(row[0] - rps[name]))
    rows.append((name, reports, non2xx, errors, codes))
ms = lambda v: "-" if v is None else f"{v * 1000:.2f}"
header = f"{'scenario':<18} {'topology':<8} {'req/s':>9} {'of base':>7} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'non-2xx':>8} {'errors':>7}"
title = f"logging: {log}, rounds: {len(rounds)} (medians)"
print(title)
print(header)
lines = [title, header]
for name, reports, non2xx, errors, codes in rows:
    frac = f"{fraction[name]:.2f}" if name in fraction else "-"
    where = "hyper" if name.startswith("baseline") else "nginx" if "@nginx" in name else "lb" if topology == "lb-tls" else "quiet" if name.endswith("@quiet") else "node" if name.endswith("@direct") else "lb" if topology == "nginx-vs-lb" else topology
    line = (f"{name:<18} {where:<8} {rps[name]:>9.0f} {frac:>7} "
            f"{ms(merged(reports, 50)):>8} {ms(merged(reports, 99)):>8} {ms(merged(reports, 99.9)):>9} "
            f"{non2xx:>8} {errors:>7}")
    print(line)
    lines.append(line)
if "mixed" in rps:
    share = rps["mixed.buy"] / rps["mixed"] * 100
    note = f"mixed: buy is {share:.1f} % of the requests ({rps['mixed.buy']:.0f} orders/s)"
    print(note)
    lines.append(note)
# nginx-vs-lb: the balancer against nginx, per scenario: the median of the per-round ratios
# of req/s, and each one's added p50 over the same requests sent straight to node A.
p50 = {name: merged(reports, 50) for name, reports, *_ in rows}
for name in [n for n in names if f"{n}@quiet" in rps]:
    pairs = [m[name][0] / m[f"{name}@quiet"][0] for m in rounds if name in m and f"{name}@quiet" in m]
    note = f"{name}: default logging / access log off {median(pairs):.2f}"
    print(note)
    lines.append(note)
for name in [n for n in names if f"{n}@nginx" in rps]:
    pairs = [m[name][0] / m[f"{name}@nginx"][0] for m in rounds if name in m and f"{name}@nginx" in m]
    note = f"{name}: lb/nginx {median(pairs):.2f}"
    direct = p50.get(f"{name}@direct")
    if direct is not None and p50.get(name) is not None and p50.get(f"{name}@nginx") is not None:
        note += (f", added p50: lb {(p50[name] - direct) * 1000:.2f} ms, "
                 f"nginx {(p50[name + '@nginx'] - direct) * 1000:.2f} ms")
    print(note)
    lines.append(note)
# lb-tls: each HTTPS target's req/s over the same server's plain one, and lb/nginx per
# protocol, the medians of the per-round ratios.
def ratio(a, b):
    pairs = [m[a][0] / m[b][0] for m in rounds if a in m and b in m]
    return f"{median(pairs):.2f}" if pairs else "-"
for name in [n for n in names if f"{n}@tls" in rps]:
    note = (f"{name}: of plain: lb https/1.1 {ratio(name + '@tls', name)}, h2 {ratio(name + '@h2', name)}; "
            f"nginx https/1.1 {ratio(name + '@nginx-tls', name + '@nginx')}, h2 {ratio(name + '@nginx-h2', name + '@nginx')}; "
            f"lb/nginx: plain {ratio(name, name + '@nginx')}, https/1.1 {ratio(name + '@tls', name + '@nginx-tls')}, "
            f"h2 {ratio(name + '@h2', name + '@nginx-h2')}")
    print(note)
    lines.append(note)
# compressed: each compressed list's req/s over the plain one's, the median of the rounds.
for name in [n for n in names if n.startswith("list1000.")]:
    plain = "list1000" + (name[name.index("@"):] if "@" in name else "")
    pairs = [m[name][0] / m[plain][0] for m in rounds if name in m and plain in m]
    if pairs:
        note = f"{name}: of plain {median(pairs):.2f}"
        print(note)
        lines.append(note)
for name, reports, non2xx, errors, codes in rows:
    if non2xx:
        print(f"{name}: status codes {codes}")
open(f"{out}/table.txt", "w").write("\n".join(lines) + "\n")
print(f"raw oha JSON and inputs: {out}/")
PY
