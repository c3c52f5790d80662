#!/usr/bin/env python3
"""Soundwave at scale (run through benches/scale.sh, which builds release first).

Starts a three-node cluster on free loopback ports, fills it through node 1's demo seeding
(PRODUCTS products, ORDERS orders by demo buyers: the normal command path, batched), then
measures, on that data:

  seed        time to write the catalog and the orders, data file size per node
  start-up    a follower stopped (SIGTERM) and started again: time until it listens, until
              its /health/ is 200 (it knows the leader and has caught up), and its resident memory
  lists       QUERIES distinct filtered product lists (category, name, category+name, name
              order; limit 20) sent once each to the restarted follower, whose response cache
              is empty, so every one is computed: p50 / p99 / max
  details     distinct product details, once each (uncached): p50 / p99
  orders      POST /api/orders/ by one demo buyer (oha, ORDER_CONNECTIONS connections,
              ORDER_SECONDS s) to the follower: orders/s, p50, p99
  snapshot    the same orders for SNAPSHOT_ORDER_SECONDS s; after 5 s every node is asked for
              a snapshot (/_cluster/take-snapshot): order p50/p99 of the requests that started
              while a snapshot was being built (until the last node's snapshot_index moved)
              and of the others (oha's per-request times, --db-url)
  memory      resident memory (and peak) of every node after all of that
  catch-up    a follower stopped, orders placed (CATCH_UP_ORDER_SECONDS s) and a snapshot
              taken without it (the leader purges its log behind snapshots), started again:
              time until it has applied the leader's log (by installing a snapshot). (A
              member started with its data removed refuses to start: it must rejoin.)

PAGE_CACHE_MIB sets every node's redb page cache (default: the node's, 128 MiB).
Every wait is bounded; every process is stopped at the end. Prints a table and writes
target/scale/<time>/scale.json (and each node's output) there.
"""

import http.client
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

PRODUCTS = int(os.environ.get("PRODUCTS", "100000"))
ORDERS = int(os.environ.get("ORDERS", "1000000"))
QUERIES = int(os.environ.get("QUERIES", "200"))
ORDER_CONNECTIONS = int(os.environ.get("ORDER_CONNECTIONS", "20"))
ORDER_SECONDS = int(os.environ.get("ORDER_SECONDS", "10"))
PAGE_CACHE_MIB = os.environ.get("PAGE_CACHE_MIB")  # redb page cache per node; default: the node's
SEED_TIMEOUT = int(os.environ.get("SEED_TIMEOUT", "1800"))
BIN = os.path.abspath(os.environ.get("SOUNDWAVE_BIN", "target/release/soundwave"))
CATCH_UP_TIMEOUT = int(os.environ.get("CATCH_UP_TIMEOUT", "600"))
SNAPSHOT_ORDER_SECONDS = int(os.environ.get("SNAPSHOT_ORDER_SECONDS", "30"))
CATCH_UP_ORDER_SECONDS = int(os.environ.get("CATCH_UP_ORDER_SECONDS", "5"))
SECRET = "scale-test-secret"
OHA = shutil.which("oha") or os.path.expanduser("~/.cargo/bin/oha")

OUT = os.path.join("target", "scale", time.strftime("%Y%m%d-%H%M%S"))
os.makedirs(OUT, exist_ok=True)
DATA = tempfile.mkdtemp(prefix="soundwave-scale-")
results = {"products": PRODUCTS, "orders": ORDERS, "page_cache_mib": PAGE_CACHE_MIB}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what, predicate, timeout, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    sys.exit(f"scale: gave up waiting for {what} after {timeout} s (see {OUT})")


class Node:
    def __init__(self, node_id, api, peer, config):
        self.id, self.api, self.peer, self.config = node_id, api, peer, config
        self.data_dir = os.path.join(DATA, f"node{node_id}")
        self.process = None
        self.starts = 0

    def start(self, *extra):
        self.starts += 1
        name = os.path.join(OUT, f"node{self.id}-{self.starts}")
        self.out_path = name + ".out"
        args = [BIN, "node", "--config", self.config, "--node-id", str(self.id),
                "--data-dir", self.data_dir, *extra]
        env = dict(os.environ, RUST_LOG=os.environ.get("SCALE_RUST_LOG", "warn"))
        self.process = subprocess.Popen(args, stdout=open(self.out_path, "w"),
                                        stderr=open(name + ".err", "w"), env=env)
        self.started_at = time.monotonic()

    def output(self):
        with open(self.out_path) as f:
            return f.read()

    def wait_listening(self, timeout=60):
        wait_until(f"node {self.id} to listen", lambda: "listening on" in self.output(), timeout, 0.005)
        return time.monotonic() - self.started_at

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def health(self):
        try:
            status, body = request("GET", self.api, "/health/")
            return status, json.loads(body)
        except (OSError, ValueError, http.client.HTTPException):
            return 0, {}

    def memory(self):
        """Resident and peak resident memory in MiB."""
        fields = {}
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        mib = lambda key: int(fields[key].split()[0]) / 1024
        return round(mib("VmRSS"), 1), round(mib("VmHWM"), 1)

    def file_mib(self):
        path = os.path.join(self.data_dir, "soundwave.redb")
        return round(os.path.getsize(path) / 2**20, 1)


def request(method, addr, path, body=None, headers=None, connection=None):
    own = connection is None
    if own:
        host, port = addr.split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
    payload = json.dumps(body).encode() if body is not None else None
    all_headers = {"content-type": "application/json"} if payload else {}
    all_headers.update(headers or {})
    connection.request(method, path, body=payload, headers=all_headers)
    response = connection.getresponse()
    data = response.read()
    if own:
        connection.close()
    return response.status, data


def timed_gets(addr, paths):
    host, port = addr.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    latencies = []
    for path in paths:
        started = time.perf_counter()
        status, _ = request("GET", addr, path, connection=connection)
        latencies.append((time.perf_counter() - started) * 1000)
        if status != 200:
            sys.exit(f"scale: GET {path} answered {status}")
    connection.close()
    return latencies


def summary(latencies):
    if not latencies:
        return {"count": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    ordered = sorted(latencies)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]
    return {"count": len(ordered), "p50_ms": round(statistics.median(ordered), 3),
            "p99_ms": round(pick(0.99), 3), "max_ms": round(ordered[-1], 3)}


def main():
    ports = [(free_port(), free_port()) for _ in range(3)]
    config = os.path.join(DATA, "cluster.toml")
    with open(config, "w") as f:
        # Snapshots every 2,000 entries (seeding writes ~3,500), few entries kept behind them: a node that starts empty
        # catches up from a snapshot, not by replaying the log.
        if PAGE_CACHE_MIB:
            f.write(f"[node]\nstore_page_cache_bytes = {int(PAGE_CACHE_MIB) * 2**20}\n")
        f.write(f'[cluster]\nsecret = "{SECRET}"\n'
                "snapshot_after_entries = 2000\nlogs_kept_after_snapshot = 100\n")
        for node_id, (api, peer) in enumerate(ports, start=1):
            f.write(f'[[cluster.nodes]]\nid = {node_id}\napi = "127.0.0.1:{api}"\n'
                    f'peer = "127.0.0.1:{peer}"\n')
    nodes = [Node(i, f"127.0.0.1:{api}", f"127.0.0.1:{peer}", config)
             for i, (api, peer) in enumerate(ports, start=1)]
    try:
        run(nodes)
    finally:
        for node in nodes:
            node.stop()
        shutil.rmtree(DATA, ignore_errors=True)


def applied(node):
    status, health = node.health()
    cluster = health.get("cluster", {})
    return status, cluster.get("applied_index") or 0, cluster


def leader_of(nodes):
    _, _, cluster = applied(nodes[0])
    return next(n for n in nodes if n.id == cluster.get("leader_id"))


def wait_caught_up(node, leader, timeout):
    """Waits until `node` is healthy and has applied what the leader had applied when asked."""
    _, target, _ = applied(leader)
    def done():
        status, index, _ = applied(node)
        return status == 200 and index >= target
    wait_until(f"node {node.id} to apply index {target}", done, timeout)
    return target


def snapshot_indexes(nodes):
    return {n.id: applied(n)[2].get("snapshot_index") for n in nodes}


def take_snapshots(nodes, timeout):
    """Asks every node in `nodes` for a snapshot; answers when each was asked and, per node,
    the seconds until it had a snapshot of at least what it had applied when asked. A
    snapshot the node's own policy began before (openraft ignores the request meanwhile)
    ends the wait only if it is that recent; otherwise the node is asked again, and the
    time runs on."""
    def ask(n):
        status, body = request("POST", n.peer, "/_cluster/take-snapshot",
                               headers={"x-soundwave-cluster-secret": SECRET})
        if status != 202:
            sys.exit(f"scale: node {n.id} refused a snapshot: {status} {body[:200]!r}")
    targets = {n.id: applied(n)[1] for n in nodes}
    seen = snapshot_indexes(nodes)
    asked = time.monotonic()
    for n in nodes:
        ask(n)
    done = {}
    def all_done():
        for n in nodes:
            if n.id in done:
                continue
            index = applied(n)[2].get("snapshot_index")
            if index is not None and index >= targets[n.id]:
                done[n.id] = round(time.monotonic() - asked, 2)
            elif index != seen[n.id]:
                seen[n.id] = index
                ask(n)
        return len(done) == len(nodes)
    wait_until("the snapshots", all_done, timeout, 0.02)
    return asked, done


def orders_during_snapshot(nodes, orders):
    """Orders for SNAPSHOT_ORDER_SECONDS; 5 s in, every node takes a snapshot. Splits oha's
    requests by start time: while a snapshot was being built, and the rest (the first second
    left out as warm-up)."""
    db = os.path.join(OUT, "orders-snapshot.db")
    out = open(os.path.join(OUT, "orders-snapshot-oha.json"), "w")
    launched = time.monotonic()
    oha = subprocess.Popen(orders(SNAPSHOT_ORDER_SECONDS, "--db-url", db), stdout=out)
    time.sleep(5)
    asked, done = take_snapshots(nodes, max(SNAPSHOT_ORDER_SECONDS, 300))
    finished = max(done.values())
    oha.wait(timeout=SNAPSHOT_ORDER_SECONDS + 60)
    window = (asked - launched, asked - launched + finished)
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT start, duration, status FROM oha").fetchall()
    during = [d * 1000 for start, d, _ in rows if window[0] <= start <= window[1]]
    outside = [d * 1000 for start, d, _ in rows
               if start >= 1.0 and not window[0] <= start <= window[1]]
    codes = {}
    for _, _, status in rows:
        codes[status] = codes.get(status, 0) + 1
    return {"snapshot_seconds": done, "window_s": [round(w, 2) for w in window],
            "during": summary(during), "outside": summary(outside), "status_codes": codes}


def run(nodes):
    print(f"scale: {PRODUCTS} products, {ORDERS} orders, three nodes; output in {OUT}")
    started = time.monotonic()
    nodes[0].start("--demo", "--demo-products", str(PRODUCTS), "--demo-orders", str(ORDERS))
    for node in nodes[1:]:
        node.start()
    wait_until("the demo seeding", lambda: "demo: added" in nodes[0].output(), SEED_TIMEOUT, 1)
    seed_line = next(l for l in nodes[0].output().splitlines() if l.startswith("demo: added"))
    password = next(l.split("password=")[1] for l in nodes[0].output().splitlines()
                    if l.startswith("demo buyers:"))
    leader = leader_of(nodes)
    for node in nodes:
        wait_caught_up(node, leader, 600)
    results["seed"] = {"line": seed_line, "seconds": round(time.monotonic() - started, 1),
                       "file_mib": {n.id: n.file_mib() for n in nodes},
                       "memory_mib_after_seed": {n.id: n.memory() for n in nodes}}
    print(f"seed: {seed_line}; all nodes applied after {results['seed']['seconds']} s")

    follower = next(n for n in nodes if n is not leader)
    follower.stop()
    follower.start()
    listening = follower.wait_listening()
    wait_until(f"node {follower.id} to be healthy",
               lambda: follower.health()[0] == 200, 60, 0.01)
    healthy = time.monotonic() - follower.started_at
    results["startup"] = {"node": follower.id, "listening_s": round(listening, 3),
                          "healthy_s": round(healthy, 3), "memory_mib": follower.memory()}
    print(f"start-up of node {follower.id}: listening after {listening:.3f} s, "
          f"healthy after {healthy:.3f} s, memory {follower.memory()} MiB")

    rng = random.Random(7)
    words = ["guitar", "amp", "maple", "cable", "stand", "vinyl", "drum", "pedal", "strap",
             "tee", "synth", "mic", "live", "deluxe", "black", "studio", "bass", "pro"]
    fragments = words + [w[:3] for w in words] + [w[1:4] for w in words]
    kinds = {
        "category": lambda: f"?category={rng.randint(1, 6)}&offset={rng.randint(0, 10000)}",
        "name": lambda: f"?name={rng.choice(fragments)}&offset={rng.randint(0, 500)}",
        "category+name": lambda: f"?category={rng.randint(1, 6)}&name={rng.choice(fragments)}",
        "name order": lambda: f"?order_by_name={rng.choice(['asc', 'desc'])}"
                              f"&offset={rng.randint(0, 90000)}",
    }
    lists = {}
    for kind, make in kinds.items():
        paths = set()
        while len(paths) < QUERIES // len(kinds):
            paths.add(f"/api/products/{make()}&limit=20")
        lists[kind] = summary(timed_gets(follower.api, sorted(paths)))
    details = summary(timed_gets(follower.api, [f"/api/products/{i}/" for i in
                                                rng.sample(range(1, PRODUCTS + 1), 200)]))
    results["lists_uncached"] = lists
    results["details_uncached"] = details

    status, body = request("POST", follower.api, "/api/token/",
                           {"username": "demo-buyer-1", "password": password})
    if status != 200:
        sys.exit(f"scale: demo buyer login answered {status}: {body[:200]!r}")
    token = json.loads(body)["access"]
    status, body = request("GET", follower.api, "/api/orders/?limit=20",
                           headers={"authorization": f"Bearer {token}"})
    results["buyer_orders_total"] = None if status != 200 else len(json.loads(body))
    order_json = os.path.join(OUT, "orders-oha.json")
    bodies_path = os.path.join(OUT, "order-bodies.txt")
    with open(bodies_path, "w") as f:
        for _ in range(10000):
            lines = [{"product": p, "quantity": 1}
                     for p in rng.sample(range(1, PRODUCTS + 1), rng.randint(1, 3))]
            f.write(json.dumps({"items": lines}) + "\n")
    with open(order_json, "w") as f:
        subprocess.run([OHA, "-z", f"{ORDER_SECONDS}s", "-c", str(ORDER_CONNECTIONS), "--no-tui",
                        "--output-format", "json", "-m", "POST",
                        "-H", f"authorization: Bearer {token}",
                        "-H", "content-type: application/json", "-Z", bodies_path,
                        f"http://{follower.api}/api/orders/"], stdout=f, check=True)
    with open(order_json) as f:
        oha = json.load(f)
    codes = oha.get("statusCodeDistribution", {})
    results["orders_load"] = {
        "orders_per_s": round(codes.get("201", 0) / oha["summary"]["total"], 1),
        "requests_per_s": round(oha["summary"]["requestsPerSec"], 1),
        "p50_ms": round(oha["latencyPercentiles"]["p50"] * 1000, 2),
        "p99_ms": round(oha["latencyPercentiles"]["p99"] * 1000, 2),
        "status_codes": codes}
    results["memory_mib_after_load"] = {n.id: n.memory() for n in nodes}
    results["file_mib_after_load"] = {n.id: n.file_mib() for n in nodes}

    orders = lambda seconds, *extra: [
        OHA, "-z", f"{seconds}s", "-c", str(ORDER_CONNECTIONS), "--no-tui",
        "--output-format", "json", "-m", "POST", "-H", f"authorization: Bearer {token}",
        "-H", "content-type: application/json", "-Z", bodies_path, *extra,
        f"http://{follower.api}/api/orders/"]
    results["orders_during_snapshot"] = orders_during_snapshot(nodes, orders)

    away = next(n for n in nodes if n is not leader and n is not follower)
    _, away_index, _ = applied(away)
    away.stop()
    with open(os.path.join(OUT, "orders-catch-up.json"), "w") as f:
        subprocess.run(orders(CATCH_UP_ORDER_SECONDS), stdout=f, check=True)
    take_snapshots([n for n in nodes if n is not away], 600)
    _, leader_index, leader_cluster = applied(leader)
    if os.environ.get("SCALE_DEBUG"):
        print("leader before catch-up:", json.dumps(leader_cluster))
    away.start()
    target = wait_caught_up(away, leader, CATCH_UP_TIMEOUT)
    caught_up = time.monotonic() - away.started_at
    _, _, away_cluster = applied(away)
    results["catch_up"] = {"node": away.id, "seconds": round(caught_up, 2), "from_index": away_index,
                           "to_index": target,
                           "leader_purged_index": leader_cluster.get("purged_index"),
                           "snapshot_index": away_cluster.get("snapshot_index"),
                           "memory_mib": away.memory(), "leader_memory_mib": leader.memory(),
                           "file_mib": away.file_mib()}

    with open(os.path.join(OUT, "scale.json"), "w") as f:
        json.dump(results, f, indent=2)
    print()
    print(f"{'what':<34} {'figure':>42}")
    row = lambda what, figure: print(f"{what:<34} {figure:>42}")
    row("data file per node (MiB)", str(results["file_mib_after_load"]))
    row("start-up: listening / healthy", f"{listening:.3f} s / {healthy:.3f} s")
    for kind, s in lists.items():
        row(f"uncached list, {kind}", f"p50 {s['p50_ms']} ms  p99 {s['p99_ms']} ms  n={s['count']}")
    row("uncached product detail", f"p50 {details['p50_ms']} ms  p99 {details['p99_ms']} ms")
    o = results["orders_load"]
    row(f"orders, {ORDER_CONNECTIONS} connections",
        f"{o['orders_per_s']}/s  p50 {o['p50_ms']} ms  p99 {o['p99_ms']} ms")
    if set(o['status_codes']) - {'201'}:
        row('  order status codes', str(o['status_codes']))
    for node_id, (rss, peak) in results["memory_mib_after_load"].items():
        row(f"node {node_id} memory: resident / peak", f"{rss} / {peak} MiB")
    d = results["orders_during_snapshot"]
    row("orders while snapshots are built", f"p50 {d['during']['p50_ms']} ms  p99 "
        f"{d['during']['p99_ms']} ms  n={d['during']['count']}")
    row("  the same run, outside them", f"p50 {d['outside']['p50_ms']} ms  p99 "
        f"{d['outside']['p99_ms']} ms  n={d['outside']['count']}")
    row("  snapshot seconds per node", str(d["snapshot_seconds"]))
    c = results["catch_up"]
    row(f"catch-up of node {c['node']} (away)",
        f"{c['seconds']} s to index {c['to_index']} (snapshot {c['snapshot_index']})")
    row("  its memory / leader's (res/peak)", f"{c['memory_mib']} / {c['leader_memory_mib']} MiB")
    print(f"raw figures: {OUT}/scale.json")


if __name__ == "__main__":
    main()
