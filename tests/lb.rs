//! `soundwave lb` against real processes: three `soundwave node`s on fixed ports (two
//! primaries, one backup) and clients from many source addresses; and scripted upstreams for
//! the exact headers, internal paths, limits, retries and the SIGTERM drain.

use soundwave_testkit as common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::lb::{
    Balancer, Clients, EchoUpstream, client_from, clients, fast_health, local, node_addr,
};
use common::{Node, free_port, wait_for};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

/// Every client GETs `path` once; all must be 200. Returns the node id each one reached.
async fn route(lb: &Balancer, clients: &Clients, path: &str) -> Vec<u64> {
    let mut nodes = Vec::new();
    for (ip, client) in clients {
        let resp = client
            .get(lb.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path} from {ip}: {e}"));
        let status = resp.status().as_u16();
        let node = resp
            .headers()
            .get("x-soundwave-node")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let body = resp.text().await.unwrap_or_default();
        assert_eq!(status, 200, "GET {path} from {ip}: {body}");
        nodes.push(node.unwrap_or_else(|| panic!("no X-Soundwave-Node from {ip}: {body}")));
    }
    nodes
}

/// Node `id` of the shared harness on a fixed port of its own, so that a restart brings it
/// back where the balancer expects it. No admin user: the balancer tests need none.
fn fixed_node(id: u64, config: &str) -> Node {
    Node::builder()
        .node_id(id)
        .listen(&format!("127.0.0.1:{}", free_port()))
        .config(config)
        .env("RUST_LOG", "warn")
        .no_admin()
        .start()
}

fn tiers(lb_nodes: &[&Node], backup: &Node) -> String {
    let list = |nodes: &[&Node]| {
        nodes
            .iter()
            .map(|n| format!("\"{}\"", node_addr(n)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "primaries = [{}]\nbackups = [{}]\n",
        list(lb_nodes),
        list(&[backup])
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_hash_sticks_fails_over_to_the_other_primary_then_the_backup_and_comes_back() {
    // The nodes trust the balancer's address and lock an IP out after 2 failed logins, so
    // per-IP behaviour behind the balancer shows whether they see the forwarded client IP.
    let node_config =
        "[node]\ntrusted_proxies = [\"127.0.0.1\"]\n[auth]\nlogin_max_failures_per_ip = 2\n";
    let mut n1 = fixed_node(1, node_config);
    let mut n2 = fixed_node(2, node_config);
    let n3 = fixed_node(3, node_config);
    let n1_addr = node_addr(&n1);
    let lb = Balancer::start(
        local(free_port()),
        Some(local(free_port())),
        &format!("{}{}", tiers(&[&n1, &n2], &n3), fast_health(2, 3)),
    );
    let clients = clients(40);

    // The same IP always lands on the same node; both primaries get clients; no backup.
    let original = route(&lb, &clients, "/api/categories/").await;
    for _ in 0..2 {
        assert_eq!(route(&lb, &clients, "/api/categories/").await, original);
    }
    let used: BTreeSet<u64> = original.iter().copied().collect();
    assert_eq!(used, BTreeSet::from([1, 2]), "mapping: {original:?}");

    let status = lb.status().await;
    assert_eq!(status["serving"], "primaries");
    let roles: Vec<(&str, &str, bool)> = status["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["address"].as_str().unwrap(),
                u["role"].as_str().unwrap(),
                u["healthy"].as_bool().unwrap(),
            )
        })
        .collect();
    let (a1, a2, a3) = (
        n1_addr.to_string(),
        node_addr(&n2).to_string(),
        node_addr(&n3).to_string(),
    );
    assert_eq!(
        roles,
        [
            (a1.as_str(), "primary", true),
            (a2.as_str(), "primary", true),
            (a3.as_str(), "backup", true)
        ]
    );
    assert!(
        status["upstreams"][0]["last_probe"]["ok"] == true,
        "{status}"
    );

    // The node sees the forwarded client IP: one client is locked out after 2 failed
    // logins, while another client on the same node is not.
    let (locked, other) = {
        let first = 0;
        let same_node = (1..clients.len())
            .find(|&i| original[i] == original[first])
            .expect("two clients on one node");
        (first, same_node)
    };
    let login = |i: usize, n: u32| {
        let client = clients[i].1.clone();
        let url = lb.url("/api/token/");
        async move {
            client
                .post(url)
                .json(&json!({"username": format!("nobody{i}x{n}"), "password": "wrong-password"}))
                .send()
                .await
                .expect("POST /api/token/")
                .status()
                .as_u16()
        }
    };
    assert_eq!(login(locked, 1).await, 401);
    assert_eq!(login(locked, 2).await, 401);
    assert_eq!(
        login(locked, 3).await,
        429,
        "the third failure from one IP is throttled"
    );
    assert_eq!(
        login(other, 1).await,
        401,
        "another IP on the same node is not"
    );

    // kill -9 a primary: every GET still succeeds, its clients move to the other primary,
    // the other primary's clients stay.
    n1.kill9();
    for _ in 0..3 {
        let now = route(&lb, &clients, "/api/categories/").await;
        for (i, (&before, &after)) in original.iter().zip(&now).enumerate() {
            let expected = if before == 1 { 2 } else { before };
            assert_eq!(after, expected, "client {} moved wrongly", clients[i].0);
        }
    }
    wait_for("node 1 marked down", WAIT, || async {
        let u = lb.upstream_status(n1_addr).await;
        (u["active_healthy"] == false && u["healthy"] == false).then_some(())
    })
    .await;
    let metrics = lb.metrics_text().await;
    assert!(metrics.contains("soundwave_lb_retries_total"), "{metrics}");

    // kill both primaries: the backup serves everyone, and no GET fails.
    n2.kill9();
    for _ in 0..2 {
        let now = route(&lb, &clients, "/api/categories/").await;
        assert!(
            now.iter().all(|&n| n == 3),
            "backup should serve all: {now:?}"
        );
    }
    wait_for("both primaries marked down", WAIT, || async {
        let status = lb.status().await;
        (status["serving"] == "backups").then_some(())
    })
    .await;

    // Restart them on the same ports: the original mapping comes back.
    n1.restart();
    n2.restart();
    wait_for("the original mapping to return", WAIT, || async {
        (route(&lb, &clients, "/api/categories/").await == original).then_some(())
    })
    .await;
    let status = lb.status().await;
    assert_eq!(status["serving"], "primaries", "{status}");

    let metrics = lb.metrics_text().await;
    for needle in [
        "soundwave_lb_requests_total{",
        "soundwave_lb_upstream_failures_total{",
        "soundwave_lb_request_duration_seconds_bucket{",
        "soundwave_lb_upstream_up{",
    ] {
        assert!(metrics.contains(needle), "missing {needle}: {metrics}");
    }
}

async fn get_json(client: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut req = client.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_internal_paths_limits_and_sigterm_drain() {
    let echo = EchoUpstream::start("A");
    let lb_addr = local(free_port());
    let mut lb = Balancer::start(
        lb_addr,
        Some(local(free_port())),
        &format!(
            "primaries = [\"{}\"]\nbackups = []\ntrusted_proxies = [\"127.0.0.9\"]\n{}",
            echo.addr,
            fast_health(2, 3)
        ),
    );

    // An untrusted client: its own X-Real-IP and X-Forwarded-Proto are replaced, its
    // X-Forwarded-For is kept and the peer appended, Host is kept with its port.
    let untrusted = client_from("127.0.0.5".parse().unwrap());
    let (status, body) = get_json(
        &untrusted,
        &lb.url("/api/products/1/?x=1"),
        &[
            ("X-Forwarded-For", "1.2.3.4"),
            ("X-Real-IP", "6.6.6.6"),
            ("X-Forwarded-Proto", "https"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let h = &body["headers"];
    assert_eq!(body["path"], "/api/products/1/?x=1");
    assert_eq!(h["x-real-ip"], "127.0.0.5");
    assert_eq!(h["x-forwarded-for"], "1.2.3.4, 127.0.0.5");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["host"], lb_addr.to_string());

    // A trusted proxy: the client is the last untrusted X-Forwarded-For entry.
    let proxy = client_from("127.0.0.9".parse().unwrap());
    let (_, body) = get_json(
        &proxy,
        &lb.url("/x"),
        &[
            ("X-Forwarded-For", "203.0.113.7"),
            ("X-Forwarded-Proto", "https"),
        ],
    )
    .await;
    let h = &body["headers"];
    assert_eq!(h["x-real-ip"], "203.0.113.7");
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.9");
    assert_eq!(h["x-forwarded-proto"], "https");

    // Internal paths: 404 from the balancer, never forwarded, whatever the method.
    let client = reqwest::Client::new();
    for path in [
        "/_internal/raft/append",
        "/_internal",
        "/_cluster/members",
        "/_cluster/join",
        "/_cluster/remove",
        "/%5Finternal/x",
        "//_cluster/x",
        "/_lb/nothing",
        "/_lb/status",
        "/metrics",
        "/Metrics/",
        "/%6detrics",
        "/;/_cluster/ping",
        "/%252F_cluster/ping",
        "/_cluster%3B/ping",
        "/_cluster%00/ping",
        "/_cluster%09/ping",
    ] {
        let (status, body) = get_json(&client, &lb.url(path), &[]).await;
        assert_eq!(
            (status, body),
            (404, json!({"detail": "Not found."})),
            "{path}"
        );
        let resp = client
            .post(lb.url(path))
            .body("{\"x\":1}")
            .send()
            .await
            .expect("POST");
        assert_eq!(resp.status(), 404, "POST {path}");
    }
    let forwarded: Vec<String> = echo.seen().into_iter().map(|s| s.path).collect();
    assert!(
        forwarded.iter().all(|p| !p.contains("internal")
            && !p.contains("cluster")
            && !p.contains("_lb")
            && !p.to_ascii_lowercase().contains("etrics")),
        "forwarded: {forwarded:?}"
    );

    // The status endpoint is the balancer's own, on the operator listener, and read-only.
    let operator = lb.metrics.expect("an operator listener");
    let status_url = format!("http://{operator}/_lb/status/");
    let (status, body) = get_json(&client, &status_url, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(body["upstreams"][0]["address"], echo.addr.to_string());
    assert_eq!(body["upstreams"][0]["role"], "primary");
    let resp = client.delete(&status_url).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    let detail: Value = resp.json().await.expect("a JSON 405");
    assert!(detail["detail"].is_string());

    // Oversized headers: 431 with a JSON body.
    let big = "x".repeat(40 * 1024);
    let (status, body) = get_json(&client, &lb.url("/x"), &[("X-Big", &big)]).await;
    assert_eq!(status, 431);
    assert!(body["detail"].is_string(), "{body}");

    // SIGTERM drains: a request in flight when the signal arrives (the upstream takes a
    // second, the grace period is 2 s) still completes.
    let slow_started = echo.slow_started.lock().unwrap().take().unwrap();
    let slow = tokio::spawn({
        let client = client.clone();
        let url = lb.url("/slow");
        async move { client.get(url).send().await.map(|r| r.status().as_u16()) }
    });
    tokio::task::spawn_blocking(move || slow_started.recv_timeout(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("the slow request reached the upstream");
    lb.sigterm();
    assert_eq!(slow.await.unwrap().expect("in-flight request"), 200);
    let exit = tokio::task::spawn_blocking(move || lb.wait_exit(Duration::from_secs(20)))
        .await
        .unwrap();
    assert!(exit.is_some(), "the balancer did not exit after SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_connects_are_retried_once_for_any_method_in_flight_failures_only_when_idempotent() {
    let a = EchoUpstream::start("A");
    let b = EchoUpstream::start("B");
    // A primary that passes its first probe, then refuses connections: probes (fall 1000)
    // and ejection (max_fails 0) never take it out, so the retry policy alone has to save
    // its clients. (An upstream never seen up gets no client at all.)
    let doomed = EchoUpstream::start("C");
    let dead = doomed.addr;
    let lb = Balancer::start(
        local(free_port()),
        Some(local(free_port())),
        &format!(
            "primaries = [\"{}\", \"{}\", \"{dead}\"]\nbackups = []\n{}",
            a.addr,
            b.addr,
            fast_health(1000, 0)
        ),
    );
    drop(doomed);
    wait_for("the dead primary refuses connections", WAIT, || async {
        std::net::TcpStream::connect(dead).is_err().then_some(())
    })
    .await;

    // Every POST succeeds and reached exactly one upstream exactly once.
    let clients = clients(24);
    for (i, (ip, client)) in clients.iter().enumerate() {
        let resp = client
            .post(lb.url(&format!("/orders/{i}")))
            .json(&json!({"n": i}))
            .send()
            .await
            .expect("POST");
        assert_eq!(resp.status(), 200, "POST from {ip}");
    }
    let seen: Vec<String> = a
        .seen()
        .into_iter()
        .chain(b.seen())
        .map(|s| s.path)
        .collect();
    for i in 0..clients.len() {
        let n = seen
            .iter()
            .filter(|p| **p == format!("/orders/{i}"))
            .count();
        assert_eq!(n, 1, "POST /orders/{i} reached the upstreams {n} times");
    }
    let dead_status = lb.upstream_status(dead).await;
    assert!(
        dead_status["failures_total"].as_u64().unwrap() > 0,
        "some client hashes to the dead primary: {dead_status}"
    );
    assert_eq!(dead_status["active_healthy"], true, "{dead_status}");

    // A GET that breaks after it was sent goes to one other upstream, never a third time;
    // a POST that breaks after it was sent is not sent again.
    let client = reqwest::Client::new();
    let resp = client.get(lb.url("/drop-get")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    let resp = client
        .post(lb.url("/drop-post"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    let count = |path: &str| {
        a.seen()
            .into_iter()
            .chain(b.seen())
            .filter(|s| s.path == path)
            .count()
    };
    assert!(
        count("/drop-get") <= 2,
        "GET sent {} times",
        count("/drop-get")
    );
    assert!(count("/drop-get") >= 1);
    assert_eq!(
        count("/drop-post"),
        1,
        "POST sent again after it reached an upstream"
    );
    // The access log says the GET was tried twice.
    lb.wait_for_line(
        "the access log line of the GET",
        &["path=\"/drop-get\"", "attempts=2"],
    )
    .await;

    // A client that hangs up before its (slow) answer: an access line with status 0, and
    // no ERROR line, since nothing failed on the balancer's side.
    {
        use std::io::Write;
        let mut gone = std::net::TcpStream::connect(lb.addr).expect("connect");
        gone.write_all(b"GET /slow-gone HTTP/1.1\r\nHost: t\r\n\r\n")
            .expect("send");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    lb.wait_for_line(
        "the access line of the client that left",
        &["path=\"/slow-gone\"", "status=0"],
    )
    .await;
    let errors: Vec<String> = lb
        .stderr_lines()
        .into_iter()
        .filter(|l| l.contains("ERROR") && l.contains("Downstream"))
        .collect();
    assert!(
        errors.is_empty(),
        "a client leaving logged as an error: {errors:#?}"
    );
}

/// An upstream that stops in the middle of its body is cut after `read_timeout_secs`: the
/// client sees the body end early, not a connection held for as long as the upstream likes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upstream_body_is_cut_after_the_read_timeout() {
    let echo = EchoUpstream::start("A");
    let lb = Balancer::start(
        local(free_port()),
        None,
        &format!(
            "primaries = [\"{}\"]\nbackups = []\nread_timeout_secs = 1\n{}",
            echo.addr,
            fast_health(2, 0)
        ),
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let resp = client
        .get(lb.url("/stall-body"))
        .send()
        .await
        .expect("the head");
    assert_eq!(resp.status(), 200);
    let body = resp.bytes().await;
    let error = body.expect_err("the stalled body cannot complete");
    assert!(
        !error.is_timeout(),
        "the balancer never cut the stalled body: the client's own timeout ended it"
    );
}
