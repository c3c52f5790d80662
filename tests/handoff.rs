//! A planned restart of the leader, with real processes: SIGTERM on the leader of three
//! hands leadership to an up-to-date member before it stops. Clients writing all along
//! (orders with an Idempotency-Key, retried until answered) lose no acknowledged write,
//! and the new leader is the hand-off target. The longest pause between acknowledged
//! writes is printed (not asserted: timing).

use soundwave_testkit as common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::TestCluster;
use serde_json::{Value, json};
use tokio::sync::Mutex;

/// The election timeout of `TestCluster` (its `election_timeout_ms`).
const ELECTION_TIMEOUT: Duration = Duration::from_millis(400);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_on_the_leader_hands_leadership_over_and_loses_no_acknowledged_write() {
    let mut cluster = TestCluster::start(3, "");
    let leader = cluster.leader().await;
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let admin = cluster.nodes[leader].admin_token().await;
    let category = cluster.nodes[leader].create_category(&admin, "Hand").await;
    let product = cluster.nodes[leader]
        .create_product(&admin, "Baton", 100_000, "1.00", category)
        .await;
    let buyer = cluster.nodes[leader].new_user("relay").await;
    // The clients write through the two followers (the leader is going away); their
    // writes go to whichever node leads.
    let urls: Vec<String> = followers
        .iter()
        .map(|&i| cluster.nodes[i].url("/api/orders/"))
        .collect();
    let acknowledged = Arc::new(Mutex::new(Vec::<(i64, Instant)>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));

    let mut clients = tokio::task::JoinSet::new();
    for c in 0..4 {
        let (urls, token) = (urls.clone(), buyer.access.clone());
        let (acknowledged, stop) = (acknowledged.clone(), stop.clone());
        clients.spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client");
            let mut order = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && order < 2000 {
                order += 1;
                let key = format!("handoff-{c}-{order}");
                // The same key until it is answered: at most once, whatever the retries.
                for attempt in 0..200 {
                    let url = &urls[(attempt + c) % urls.len()];
                    let response = http
                        .post(url)
                        .bearer_auth(&token)
                        .header("Idempotency-Key", &key)
                        .json(&json!({"items": [{"product": product, "quantity": 1}]}))
                        .send()
                        .await;
                    if let Ok(response) = response
                        && response.status() == 201
                        && let Ok(body) = response.json::<Value>().await
                    {
                        let id = body["id"].as_i64().expect("order id");
                        acknowledged.lock().await.push((id, Instant::now()));
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        });
    }
    common::wait_for(
        "some orders before the SIGTERM",
        Duration::from_secs(30),
        || async { (acknowledged.lock().await.len() >= 30).then_some(()) },
    )
    .await;

    // A leader elected less than its lease ago (twice the election timeout) waits that out
    // first; this one leads for longer, as in a planned restart.
    tokio::time::sleep(ELECTION_TIMEOUT * 2).await;
    let terminated_at = Instant::now();
    cluster.signal(leader, "TERM");
    common::wait_for("the old leader to exit", Duration::from_secs(30), || {
        let running = cluster.nodes[leader].is_running();
        async move { (!running).then_some(()) }
    })
    .await;
    let log = cluster.nodes[leader].stderr_text();
    let target: u64 = log
        .lines()
        .find_map(|l| {
            l.split("leadership handed to node ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|id| id.parse().ok())
        })
        .unwrap_or_else(|| panic!("no hand-off in the old leader's log:\n{log}"));
    let handoff_line = log
        .lines()
        .find(|l| l.contains("leadership handed to node"))
        .unwrap_or_default()
        .to_owned();

    // Writes go on for a while under the new leader.
    let count_at_exit = acknowledged.lock().await.len();
    common::wait_for(
        "orders after the hand-off",
        Duration::from_secs(30),
        || async { (acknowledged.lock().await.len() >= count_at_exit + 30).then_some(()) },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    while let Some(done) = clients.join_next().await {
        done.expect("client task");
    }
    let new_leader = cluster.leader().await;
    assert_eq!(
        cluster.nodes[new_leader].node_id(),
        target,
        "the new leader is the hand-off target"
    );

    // The pause: the longest gap between two acknowledged writes from a second before the
    // SIGTERM on.
    let mut times: Vec<Instant> = acknowledged
        .lock()
        .await
        .iter()
        .map(|(_, at)| *at)
        .collect();
    times.sort();
    let window_start = terminated_at - Duration::from_secs(1);
    let pause = times
        .windows(2)
        .filter(|w| w[1] > window_start)
        .map(|w| w[1].duration_since(w[0]))
        .max()
        .unwrap_or_default();
    println!(
        "leadership hand-off: longest pause between acknowledged writes {pause:?} \
         (election timeout {ELECTION_TIMEOUT:?}); {handoff_line}"
    );

    // Nothing acknowledged is lost, on any node.
    cluster.nodes[leader].restart();
    cluster.converged(&[0, 1, 2]).await;
    let ids: BTreeSet<i64> = acknowledged
        .lock()
        .await
        .iter()
        .map(|(id, _)| *id)
        .collect();
    for node in &cluster.nodes {
        let orders = node.list("/api/orders/", Some(&buyer.access)).await;
        let on_node: BTreeSet<i64> = orders.iter().filter_map(|o| o["id"].as_i64()).collect();
        let missing: Vec<_> = ids.difference(&on_node).collect();
        assert!(
            missing.is_empty(),
            "node {} lacks {missing:?}",
            node.node_id()
        );
    }
}
