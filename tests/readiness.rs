//! Readiness, with real processes: a node that is starting answers `/health/` 503 with the
//! step under way and the balancer sends it no client until a probe passes; a follower
//! frozen while writes go on reports that it is catching up once it runs again, and is
//! ready once it caught up.

use soundwave_testkit as common;

use std::time::{Duration, Instant};

use common::cluster::TestCluster;
use common::lb::{Balancer, EchoUpstream, client_from, fast_health, local};
use common::{Node, free_port, wait_for};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

/// `/health/` of the node at `base`: the status and the body, if it answers.
async fn health(client: &reqwest::Client, base: &str) -> Option<(u16, Value)> {
    let resp = client.get(format!("{base}/health/")).send().await.ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.json().await.unwrap_or(Value::Null)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starting_node_says_so_and_the_balancer_sends_it_nothing_until_it_is_ready() {
    let backup = EchoUpstream::start("B");
    let api = local(free_port());
    // A node with a demo catalog of 5,000 products: its start takes a while (store,
    // cluster, admin, demo).
    let starting = std::thread::spawn(move || {
        Node::builder()
            .listen(&api.to_string())
            .config("[node]\ndemo = true\ndemo_products = 5000\n")
            .start()
    });
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let base = format!("http://{api}");

    // Its port answers from the start: 503, "starting: ...".
    let first = wait_for("the starting node's first answer", WAIT, || async {
        health(&client, &base).await
    })
    .await;
    assert_eq!(first.0, 503, "{}", first.1);
    let mut reasons = vec![first.1["reason"].as_str().unwrap_or_default().to_owned()];

    // A balancer started now probes a node that answers but is not ready: until the node
    // is ready, every request through the balancer is answered by the backup (never by
    // the starting node's 503). `fall` is high: a node never seen up is out from its first
    // failed probe, not after `fall` of them.
    let lb = Balancer::start(
        local(free_port()),
        Some(local(free_port())),
        &format!(
            "primaries = [\"{api}\"]\nbackups = [\"{}\"]\n{}",
            backup.addr,
            fast_health(10, 3)
        ),
    );
    let shopper = client_from("127.0.0.70".parse().unwrap());
    let mut through_lb = 0;
    let deadline = Instant::now() + WAIT;
    while !starting.is_finished() {
        assert!(Instant::now() < deadline, "the node did not start");
        let Some((status, body)) = health(&client, &base).await else {
            continue;
        };
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "{body}");
        reasons.push(body["reason"].as_str().unwrap_or_default().to_owned());
        let resp = shopper.get(lb.url("/api/products/")).send().await.unwrap();
        assert_eq!(resp.status(), 200, "through the balancer while starting");
        let echo = resp.headers().get("x-echo").and_then(|v| v.to_str().ok());
        assert_eq!(echo, Some("B"), "the starting node got a client");
        through_lb += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        reasons.iter().all(|r| r.starts_with("starting: ")),
        "the starting node said so: {reasons:?}"
    );
    assert!(
        through_lb > 0,
        "no request went through the balancer while the node started"
    );
    eprintln!(
        "while starting: {through_lb} requests through the balancer went to the backup; \
         reasons seen: {:?}",
        reasons.iter().collect::<std::collections::BTreeSet<_>>()
    );
    let node = starting.join().expect("the node started");

    // Once a probe passed, its clients come to it.
    wait_for("the node serves through the balancer", WAIT, || async {
        let resp = shopper.get(lb.url("/api/products/")).send().await.ok()?;
        resp.headers().get("x-echo").is_none().then_some(())
    })
    .await;
    let (status, _) = health(&client, node.base_url()).await.expect("health");
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_frozen_while_writes_go_on_reports_catching_up_until_it_caught_up() {
    let mut cluster = TestCluster::start(3, "");
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let admin = cluster.nodes[leader].admin_token().await;
    let (status, body) = health(&reqwest::Client::new(), cluster.nodes[follower].base_url())
        .await
        .expect("health");
    assert_eq!(status, 200, "a follower in step is ready: {body}");

    // Freeze the follower while writes go on (three writers), until the leader's log has
    // grown by 150 entries (the follower is "catching up" past 32).
    let log_index = |body: &Value| body["cluster"]["last_log_index"].as_u64().unwrap_or(0);
    let leader_base = cluster.nodes[leader].base_url().to_owned();
    let client = reqwest::Client::new();
    let (_, body) = health(&client, &leader_base).await.expect("leader health");
    let target = log_index(&body) + 150;
    cluster.signal(follower, "STOP");
    let node = &cluster.nodes[leader];
    let mut written = 0;
    let deadline = Instant::now() + WAIT;
    for round in 0.. {
        let until = Instant::now() + Duration::from_millis(500);
        let (a, b, c) = tokio::join!(
            write_until(node, &admin, format!("{round}a"), until),
            write_until(node, &admin, format!("{round}b"), until),
            write_until(node, &admin, format!("{round}c"), until)
        );
        written += a + b + c;
        let (_, body) = health(&client, &leader_base).await.expect("leader health");
        if log_index(&body) >= target {
            break;
        }
        assert!(Instant::now() < deadline, "the leader's log did not grow");
    }

    // Its /health/, asked while it is frozen, is answered once it runs again.
    let base = cluster.nodes[follower].base_url().to_owned();
    let asked = tokio::spawn(async move {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        health(&client, &base).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.signal(follower, "CONT");
    let (status, body) = asked.await.unwrap().expect("health after SIGCONT");
    eprintln!("{written} writes while frozen; the first health after: {status} {body}");
    assert_eq!(status, 503, "{body}");
    let reason = body["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("catching up"), "{body}");
    assert_eq!(body["cluster"]["reason"], body["reason"]);

    // Then it catches up and is ready again, at the leader's state.
    let client = reqwest::Client::new();
    let follower_base = cluster.nodes[follower].base_url().to_owned();
    wait_for("the follower ready again", WAIT, || async {
        let (status, _) = health(&client, &follower_base).await?;
        (status == 200).then_some(())
    })
    .await;
    cluster.converged(&[0, 1, 2]).await;
}

/// Creates categories (named after `writer`) on `node` until `until`; how many.
async fn write_until(node: &Node, admin: &str, writer: String, until: Instant) -> usize {
    let mut written = 0;
    while Instant::now() < until {
        node.create_category(admin, &format!("Lag {writer}-{written}"))
            .await;
        written += 1;
    }
    written
}
