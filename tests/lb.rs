//! `soundwave lb` against real processes: three `soundwave node`s on fixed ports (two
//! primaries, one backup) and clients from many source addresses; and scripted upstreams for
//! the exact headers, internal paths, limits, retries and the SIGTERM drain.

use soundwave_testkit as common;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use common::lb::{Balancer, EchoUpstream, client_from, client_ips, local, node_addr};
use common::{Node, free_port, wait_for};
use serde_json::{Value, json};

/// Fast probes so that health changes are seen within a second or so.
fn fast_health(fall: usize, max_fails: u32) -> String {
    format!(
        "health_interval_ms = 200\nhealth_timeout_ms = 500\nrise = 2\nfall = {fall}\n\
         max_fails = {max_fails}\nfail_timeout_secs = 5\ngrace_period_secs = 2\n\
         graceful_shutdown_timeout_secs = 2\nthreads = 2\n"
    )
}

const WAIT: Duration = Duration::from_secs(20);

type Clients = Vec<(IpAddr, reqwest::Client)>;

fn clients(n: u8) -> Clients {
    client_ips(n)
        .into_iter()
        .map(|ip| (ip, client_from(ip)))
        .collect()
}

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

/// A balancer over the one primary `echo`, with `extra` in its `[lb]`.
fn over_one_primary(echo: &EchoUpstream, extra: &str) -> Balancer {
    Balancer::start(
        local(free_port()),
        Some(local(free_port())),
        &format!(
            "primaries = [\"{}\"]\nbackups = []\n{extra}{}",
            echo.addr,
            fast_health(2, 3)
        ),
    )
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
    // A primary that refuses connections, but that probes and ejection never take out, so
    // the retry policy alone has to save its clients.
    let dead = local(free_port());
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

/// `GET path` from `client`: the status, the `X-Echo` upstream and the `Retry-After`.
async fn echo_get(client: &reqwest::Client, url: &str) -> (u16, String, Option<String>) {
    let resp = client
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (upstream, retry_after) = (header("x-echo").unwrap_or_default(), header("retry-after"));
    (resp.status().as_u16(), upstream, retry_after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_rate_gets_429_with_retry_after_while_another_is_served() {
    let echo = EchoUpstream::start("A");
    let lb = over_one_primary(&echo, "rate_limit_per_sec = 1\nrate_limit_burst = 3\n");
    let url = lb.url("/limited");
    let greedy = client_from("127.0.0.20".parse().unwrap());

    // The burst of 3 goes through (more if the machine is slow enough for a token to come
    // back meanwhile); then a JSON 429 with Retry-After.
    let mut served = 0;
    let mut refused = None;
    for _ in 0..20 {
        let resp = greedy.get(&url).send().await.expect("GET");
        if resp.status() == 429 {
            refused = Some(resp);
            break;
        }
        assert_eq!(resp.status(), 200);
        served += 1;
    }
    let refused = refused.expect("a 429 within 20 requests at 1/s");
    assert!(served >= 3, "the burst was served: {served}");
    let retry_after: u64 = refused
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a numeric Retry-After");
    assert!((1..=2).contains(&retry_after), "Retry-After {retry_after}");
    let body: Value = refused.json().await.expect("a JSON 429");
    assert!(body["detail"].is_string(), "{body}");

    // Another IP has a bucket of its own.
    let other = client_from("127.0.0.21".parse().unwrap());
    assert_eq!(echo_get(&other, &url).await.0, 200);

    // Refused requests never reached the upstream.
    assert_eq!(echo.seen().len(), served + 1);

    // Counted in the metrics and the access line.
    let metrics = lb.metrics_text().await;
    assert!(
        metrics.contains("soundwave_lb_requests_refused_total{reason=\"rate_limited\"}"),
        "{metrics}"
    );
    lb.wait_for_line(
        "the access line of the 429",
        &["client=127.0.0.20", "status=429"],
    )
    .await;

    // The bucket refills: after Retry-After, the greedy client is served again.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    wait_for("the bucket to refill", WAIT, || async {
        (echo_get(&greedy, &url).await.0 == 200).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_primary_gets_no_new_clients_and_its_clients_come_back_when_undrained() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU8, Ordering};

    let a = EchoUpstream::start("A");
    let b = EchoUpstream::start("B");
    let lb = Arc::new(Balancer::start(
        local(free_port()),
        Some(local(free_port())),
        &format!(
            "primaries = [\"{}\", \"{}\"]\nbackups = []\n{}",
            a.addr,
            b.addr,
            fast_health(2, 3)
        ),
    ));
    let clients = Arc::new(clients(20));
    let mapping = |lb: Arc<Balancer>, clients: Arc<Clients>| async move {
        let mut names = Vec::new();
        for (ip, client) in clients.iter() {
            let (status, name, _) = echo_get(client, &lb.url("/where")).await;
            assert_eq!(status, 200, "from {ip}");
            names.push(name);
        }
        names
    };
    let original = mapping(lb.clone(), clients.clone()).await;
    assert!(
        original.iter().any(|n| n == "A") && original.iter().any(|n| n == "B"),
        "both primaries have clients: {original:?}"
    );

    // Refusals: an unknown upstream, a wrong method.
    let (status, body) = lb
        .operator(reqwest::Method::POST, "/_lb/upstreams/127.0.0.1:1/drain")
        .await;
    assert_eq!(status, 404, "{body}");
    assert!(body["detail"].is_string());
    let drain_a = format!("/_lb/upstreams/{}/drain", a.addr);
    let (status, _) = lb.operator(reqwest::Method::GET, &drain_a).await;
    assert_eq!(status, 405);

    // Every client sends requests, on its kept connection, while A is drained. Phase 0:
    // before the drain was acknowledged; 1: after; 2: stop.
    let phase = Arc::new(AtomicU8::new(0));
    let mut streams = Vec::new();
    for index in 0..clients.len() {
        let (lb, clients, phase) = (lb.clone(), clients.clone(), phase.clone());
        streams.push(tokio::spawn(async move {
            let (ip, client) = &clients[index];
            let mut failures = Vec::new();
            for n in 0..400 {
                let now = phase.load(Ordering::SeqCst);
                if now == 2 {
                    break;
                }
                let url = lb.url(&format!("/stream?phase={now}&ip={ip}&n={n}"));
                let (status, name, _) = echo_get(client, &url).await;
                if status != 200 {
                    failures.push(format!("{url}: {status} from {name}"));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            failures
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = lb.operator(reqwest::Method::POST, &drain_a).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["drained"], true);
    phase.store(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(600)).await;
    phase.store(2, Ordering::SeqCst);
    for stream in streams {
        let failures = stream.await.expect("a client stream");
        assert!(failures.is_empty(), "{failures:?}");
    }
    let after_drain: Vec<String> = a
        .seen()
        .into_iter()
        .map(|s| s.path)
        .filter(|p| p.contains("phase=1"))
        .collect();
    assert!(after_drain.is_empty(), "A got {after_drain:?}");
    assert!(
        b.seen().iter().any(|s| s.path.contains("phase=1")),
        "the stream went on through B"
    );
    let status = lb.upstream_status(a.addr).await;
    assert_eq!(status["drained"], true, "{status}");
    assert_eq!(status["healthy"], true, "{status}");
    assert_eq!(lb.status().await["serving"], "primaries");
    assert!(
        mapping(lb.clone(), clients.clone())
            .await
            .iter()
            .all(|n| n == "B")
    );

    // Undrained: every client is back where it was.
    let undrain_a = format!("/_lb/upstreams/{}/undrain", a.addr);
    let (status, body) = lb.operator(reqwest::Method::POST, &undrain_a).await;
    assert_eq!((status, &body["drained"]), (200, &json!(false)), "{body}");
    assert_eq!(mapping(lb.clone(), clients.clone()).await, original);
    assert_eq!(lb.upstream_status(a.addr).await["drained"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_under_requests_fails_none_and_the_old_process_exits() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let echo = EchoUpstream::start("A");
    let old = over_one_primary(&echo, "");
    let url = old.url("/during-upgrade");

    // A client sends requests one after another, each on a new connection, until told to
    // stop (bounded in count and time).
    let stop = Arc::new(AtomicBool::new(false));
    let sender = tokio::spawn({
        let stop = stop.clone();
        async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(30))
                .build()
                .expect("a client");
            let started = std::time::Instant::now();
            let (mut sent, mut failures) = (0u32, Vec::new());
            while !stop.load(Ordering::SeqCst)
                && sent < 20_000
                && started.elapsed() < Duration::from_secs(90)
            {
                sent += 1;
                match client.get(format!("{url}?n={sent}")).send().await {
                    Ok(resp) if resp.status() == 200 => {}
                    Ok(resp) => failures.push(format!("#{sent}: {}", resp.status())),
                    Err(error) => failures.push(format!("#{sent}: {error}")),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (sent, failures)
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Both wait on processes: off the runtime's threads.
    let (mut old, new) = tokio::task::spawn_blocking(move || {
        let new = old.upgrade();
        (old, new)
    })
    .await
    .expect("the upgrade");
    let (exit, old) = tokio::task::spawn_blocking(move || {
        let exit = old.wait_exit(Duration::from_secs(40));
        (exit, old)
    })
    .await
    .expect("waiting for the old balancer");
    assert!(
        exit.is_some(),
        "the old balancer did not exit after SIGQUIT"
    );
    // A few more requests reach the new balancer alone.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let (sent, failures) = sender.await.expect("the client");
    assert!(
        failures.is_empty(),
        "{} of {sent} failed: {failures:?}",
        failures.len()
    );
    assert!(sent > 10, "only {sent} requests were sent");

    // Both served some; the new one serves on, with its own operator listener.
    let served = |lb: &Balancer| {
        lb.stderr_lines()
            .iter()
            .filter(|l| l.contains("path=\"/during-upgrade") && l.contains("status=200"))
            .count()
    };
    let (by_old, by_new) = (served(&old), served(&new));
    eprintln!("{sent} requests: {by_old} served by the old balancer, {by_new} by the new");
    assert!(by_old > 0 && by_new > 0, "old {by_old}, new {by_new}");
    assert_eq!(new.status().await["serving"], "primaries");
}

#[test]
fn an_upgrade_with_no_running_balancer_is_refused_at_once() {
    let run_dir = tempfile::tempdir().expect("temp dir");
    let output = common::process::soundwave_command()
        .args(["lb", "--upgrade", "--primary", "127.0.0.1:9"])
        .arg("--listen")
        .arg(local(free_port()).to_string())
        .arg("--metrics-listen")
        .arg(local(free_port()).to_string())
        .arg("--run-dir")
        .arg(run_dir.path())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run soundwave lb --upgrade");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot upgrade: no running balancer"),
        "{stderr}"
    );
}
