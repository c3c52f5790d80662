//! A node never reuses an identity whose log it lost: a member of a running cluster started
//! with an empty data directory refuses to start and says how to rejoin, while a restart
//! with data asks nobody (and so starts while its peers are down).

use std::time::Duration;

use common::cluster::TestCluster;
use common::*;
use soundwave_testkit as common;

/// What a node with no raft state logs as it asks its peers.
const ASKING_PEERS: &str = "no raft state: asking the peers whether this id has a log";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_lost_its_data_refuses_to_start_and_says_how_to_rejoin() {
    let mut cluster = TestCluster::start(3, "");
    let leader = cluster.leader().await;
    let admin = cluster.nodes[leader].admin_token().await;
    cluster.nodes[leader]
        .create_category(&admin, "Before")
        .await;
    cluster.converged(&[0, 1, 2]).await;

    let away = (leader + 1) % 3;
    let id = away + 1;
    cluster.nodes[away].kill9();
    let data = cluster.nodes[away].data_dir().to_owned();
    std::fs::remove_dir_all(&data).expect("wipe the data");
    std::fs::create_dir_all(&data).expect("an empty data directory");

    for attempt in ["first", "second"] {
        let refused = cluster.nodes[away].start_to_exit(Duration::from_secs(60));
        assert!(
            !refused.status.success(),
            "the {attempt} start was not refused"
        );
        for needed in [
            format!("node {id} starts with no raft state"),
            format!("soundwave cluster remove {id}"),
            format!("soundwave node --join http://MEMBER_API --node-id {id}"),
        ] {
            assert!(
                refused.stderr.contains(&needed),
                "the {attempt} refusal does not say {needed:?}:\n{}",
                refused.stderr
            );
        }
        assert!(
            !refused.stdout.contains("listening on"),
            "it served before refusing:\n{}",
            refused.stdout
        );
    }

    // The other two go on.
    let status = cluster.nodes[leader]
        .post("/api/categories/", Some(&admin), &json!({"name": "After"}))
        .await;
    status.expect(201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_data_asks_no_peer_and_starts_while_they_are_down() {
    let mut cluster = TestCluster::start(3, "");
    let leader = cluster.leader().await;
    let admin = cluster.nodes[leader].admin_token().await;
    cluster.nodes[leader].create_category(&admin, "Kept").await;
    cluster.converged(&[0, 1, 2]).await;
    // The first start (every member empty) asked the peers, and went on.
    for node in &cluster.nodes {
        assert!(
            node.stderr_contains_soon(ASKING_PEERS).await,
            "{}",
            node.stderr_text()
        );
    }
    for node in &mut cluster.nodes {
        node.terminate();
    }
    let alone = &mut cluster.nodes[0];
    alone.restart();
    alone.get("/api/categories/", None).await.expect(200);
    // Logged after the cluster started, so after the check would have been.
    assert!(alone.stderr_contains_soon("serving").await);
    assert!(
        !alone.stderr_text().contains(ASKING_PEERS),
        "a restart with data asked its peers:\n{}",
        alone.stderr_text()
    );
}
