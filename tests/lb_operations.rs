//! `soundwave lb` operations against real processes and scripted upstreams: per-IP rate
//! limits, draining an upstream, and the zero-downtime upgrade.

use soundwave_testkit as common;

use std::time::Duration;

use common::lb::{
    Balancer, Clients, EchoUpstream, client_from, clients, fast_health, local, over_one_primary,
};
use common::{free_port, wait_for};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

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
