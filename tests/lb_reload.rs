//! `soundwave lb` reloading its configuration on SIGHUP, against real processes and
//! scripted upstreams: an added upstream gets its share of clients, a removed one none, the
//! rate limit changes, a kept connection lives through it, and a broken file is refused
//! while the running configuration keeps serving.

use soundwave_testkit as common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::lb::{Balancer, EchoUpstream, client_from, clients, fast_health, local};
use common::{free_port, wait_for};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

/// The `[lb]` body of a balancer over `primaries`, with `extra`.
fn tiers(primaries: &[SocketAddr], extra: &str) -> String {
    let list: Vec<String> = primaries.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "primaries = [{}]\nbackups = []\n{extra}{}",
        list.join(", "),
        fast_health(2, 3)
    )
}

/// One GET over a kept HTTP/1.1 connection: the status and the `X-Echo` upstream.
fn get_on(stream: &mut BufReader<TcpStream>, path: &str) -> (u16, String) {
    write!(
        stream.get_mut(),
        "GET {path} HTTP/1.1\r\nHost: shop\r\n\r\n"
    )
    .expect("send on the kept connection");
    let mut status_line = String::new();
    stream.read_line(&mut status_line).expect("status line");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {status_line:?}"));
    let (mut length, mut echo) = (0usize, String::new());
    loop {
        let mut line = String::new();
        stream.read_line(&mut line).expect("header line");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap_or(0),
                "x-echo" => echo = value.trim().to_owned(),
                _ => {}
            }
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).expect("body");
    (status, echo)
}

/// The `X-Echo` of a GET from `client`, which must be answered 200.
async fn upstream_of(client: &reqwest::Client, url: &str) -> String {
    let resp = client.get(url).send().await.expect("GET");
    assert_eq!(resp.status(), 200, "GET {url}");
    resp.headers()
        .get("x-echo")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Statuses of `n` GETs sent at once, one after another, from one client.
async fn burst(client: &reqwest::Client, url: &str, n: usize) -> Vec<u16> {
    let mut statuses = Vec::new();
    for _ in 0..n {
        let resp = client.get(url).send().await.expect("GET");
        statuses.push(resp.status().as_u16());
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_and_removes_upstreams_and_changes_the_rate_limit_keeping_connections() {
    let a = EchoUpstream::start("A");
    let b = EchoUpstream::start("B");
    let lb = Balancer::start(
        local(free_port()),
        Some(local(free_port())),
        &tiers(&[a.addr], ""),
    );
    let clients = clients(24);
    for (_, client) in &clients {
        assert_eq!(upstream_of(client, &lb.url("/before")).await, "A");
    }
    let greedy = client_from("127.0.0.60".parse().unwrap());
    let statuses = burst(&greedy, &lb.url("/unlimited"), 8).await;
    assert!(
        statuses.iter().all(|s| *s == 200),
        "no limit yet: {statuses:?}"
    );
    let kept = TcpStream::connect(lb.addr).expect("connect");
    let mut kept = BufReader::new(kept);
    assert_eq!(get_on(&mut kept, "/kept-before"), (200, "A".to_owned()));

    // B joins the primaries, the rate limit comes on, and a setting that cannot change
    // without a restart is named and kept.
    lb.rewrite_config(&tiers(
        &[a.addr, b.addr],
        "rate_limit_per_sec = 1\nrate_limit_burst = 2\nmax_body_bytes = 1000\n",
    ));
    lb.sighup();
    lb.wait_for_line(
        "the reload",
        &["configuration reloaded", &b.addr.to_string()],
    )
    .await;
    lb.wait_for_line("the warning", &["cannot change", "lb.max_body_bytes"])
        .await;
    wait_for("B probed up", WAIT, || async {
        (lb.upstream_status(b.addr).await["healthy"] == true).then_some(())
    })
    .await;

    // The connection opened before the reload goes on.
    let (status, _) = get_on(&mut kept, "/kept-after");
    assert_eq!(status, 200, "the kept connection lived through the reload");

    // B takes its share of the clients (ketama: about half), the others stay on A.
    let mut on_b = 0;
    for (_, client) in &clients {
        if upstream_of(client, &lb.url("/after-add")).await == "B" {
            on_b += 1;
        }
    }
    assert!(
        on_b > 0 && on_b < clients.len(),
        "B has some of the clients, A the rest: {on_b} of {}",
        clients.len()
    );

    // The limit holds now: a burst beyond 2 is refused.
    let statuses = burst(&greedy, &lb.url("/limited"), 8).await;
    assert!(
        statuses.contains(&429),
        "limited after the reload: {statuses:?}"
    );

    // A leaves the primaries: nobody is sent to it any more.
    lb.rewrite_config(&tiers(&[b.addr], ""));
    lb.sighup();
    wait_for("A removed", WAIT, || async {
        let status = lb.status().await;
        let listed = status["upstreams"].as_array().map_or(0, Vec::len);
        (listed == 1).then_some(())
    })
    .await;
    let before = a.seen().len();
    for (_, client) in &clients {
        assert_eq!(upstream_of(client, &lb.url("/after-remove")).await, "B");
    }
    assert_eq!(
        a.seen().len(),
        before,
        "no request reached the removed upstream"
    );
    let metrics = lb.metrics_text().await;
    assert!(
        metrics.contains("soundwave_lb_reloads_total{result=\"ok\"} 2"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_file_is_refused_and_the_running_configuration_keeps_serving() {
    let a = EchoUpstream::start("A");
    let b = EchoUpstream::start("B");
    let lb = Balancer::start(
        local(free_port()),
        Some(local(free_port())),
        &tiers(&[a.addr], ""),
    );
    let client = reqwest::Client::new();

    // Not TOML at all, then TOML that does not validate (no primary, B listed as backup).
    lb.write_config_file("[lb\nprimaries = [");
    lb.sighup();
    lb.wait_for_line("the first refusal", &["reload refused"])
        .await;
    lb.rewrite_config(&format!(
        "primaries = []\nbackups = [\"{}\"]\n{}",
        b.addr,
        fast_health(2, 3)
    ));
    lb.sighup();
    wait_for("the second refusal", WAIT, || async {
        let refusals = lb
            .stderr_lines()
            .iter()
            .filter(|l| l.contains("reload refused"))
            .count();
        (refusals == 2).then_some(())
    })
    .await;
    assert!(
        lb.stderr_lines()
            .iter()
            .any(|l| l.contains("reload refused") && l.contains("primaries")),
        "the refusal says why"
    );

    for _ in 0..5 {
        assert_eq!(upstream_of(&client, &lb.url("/still")).await, "A");
    }
    let status = lb.status().await;
    assert_eq!(
        status["upstreams"].as_array().map(Vec::len),
        Some(1),
        "{status}"
    );
    assert!(b.seen().is_empty());
    let metrics = lb.metrics_text().await;
    assert!(
        metrics.contains("soundwave_lb_reloads_total{result=\"failed\"} 2"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_changes_the_probe_settings() {
    let a = EchoUpstream::start("A");
    let b = EchoUpstream::start("B");
    let with_probe = |path: &str| {
        format!(
            "primaries = [\"{}\"]\nbackups = [\"{}\"]\nhealth_path = \"{path}\"\n{}",
            a.addr,
            b.addr,
            fast_health(2, 3)
        )
    };
    let lb = Balancer::start(
        local(free_port()),
        Some(local(free_port())),
        &with_probe("/health/"),
    );
    let client = reqwest::Client::new();
    assert_eq!(upstream_of(&client, &lb.url("/x")).await, "A");

    // A probe path the echo upstreams answer by closing the connection: both fail their
    // probes, and the balancer has nobody to send clients to.
    lb.rewrite_config(&with_probe("/drop-probe"));
    lb.sighup();
    lb.wait_for_line("the reload", &["configuration reloaded", "lb.health_path"])
        .await;
    wait_for("both down by the new probe", WAIT, || async {
        let down = |u: Value| u["active_healthy"] == false;
        (down(lb.upstream_status(a.addr).await) && down(lb.upstream_status(b.addr).await))
            .then_some(())
    })
    .await;
    let resp = client.get(lb.url("/y")).send().await.expect("GET");
    assert_eq!(resp.status(), 503, "no upstream passes the new probe");

    // Back to the real probe: A comes back.
    lb.rewrite_config(&with_probe("/health/"));
    lb.sighup();
    wait_for("A up again", WAIT, || async {
        (lb.upstream_status(a.addr).await["active_healthy"] == true).then_some(())
    })
    .await;
    assert_eq!(upstream_of(&client, &lb.url("/z")).await, "A");
}
