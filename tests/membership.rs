//! Membership at runtime with real processes: a node joins a running cluster under write
//! load (a learner catching up through a snapshot, then promoted) and ends with the same
//! state; a restart needs no --join; a member is removed (the leader too) and the cluster
//! keeps writing; a read-only learner serves reads and forwards writes; joins that must
//! fail say why; `soundwave cluster status` and `remove` as clients.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::cluster::{CLUSTER_SECRET, SECRET_HEADER, TestCluster};
use common::*;
use soundwave_testkit as common;

/// Runs `soundwave ARGS` to its end (bounded), with the cluster secret in the environment:
/// `(exit success, stdout, stderr)`.
fn soundwave(args: &[&str], secret: &str) -> (bool, String, String) {
    let finished = run_to_exit(
        args,
        &[("SOUNDWAVE_CLUSTER_SECRET", secret)],
        Duration::from_secs(60),
    );
    (finished.status.success(), finished.stdout, finished.stderr)
}

/// Creates products on `node` from 4 tasks until `stop` (at most 2,000 in all); counts the
/// acknowledged ones.
fn write_load(
    node: &Node,
    admin: &str,
    category: i64,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
) -> tokio::task::JoinSet<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..4 {
        let (url, admin) = (node.url("/api/products/"), admin.to_owned());
        let (stop, done) = (stop.clone(), done.clone());
        tasks.spawn(async move {
            let http = reqwest::Client::new();
            for n in 0..500 {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let response = http
                    .post(&url)
                    .bearer_auth(&admin)
                    .json(&product_body(
                        &format!("Load {worker}-{n}"),
                        1,
                        "3.00",
                        category,
                    ))
                    .send()
                    .await
                    .expect("write");
                assert_eq!(response.status(), 201, "a write during the join");
                done.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    tasks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fourth_node_joins_under_write_load_and_ends_with_the_same_state() {
    let mut cluster = TestCluster::start(
        3,
        "snapshot_after_entries = 50\nlogs_kept_after_snapshot = 10\n",
    );
    let leader = cluster.leader().await;
    let admin = cluster.nodes[leader].admin_token().await;
    let category = cluster.nodes[leader].create_category(&admin, "Join").await;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let mut load = write_load(
        &cluster.nodes[leader],
        &admin,
        category,
        stop.clone(),
        done.clone(),
    );
    // Enough written that the log was purged behind a snapshot: the new node needs it.
    wait_for(
        "writes before the join",
        Duration::from_secs(60),
        || async { (done.load(Ordering::SeqCst) >= 300).then_some(()) },
    )
    .await;

    let purged = cluster.cluster_status(leader).await.expect("status")["purged_index"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        purged > 0,
        "the leader purged its log: a joining node needs a snapshot"
    );
    let joined = tokio::task::block_in_place(|| cluster.join(4, false));
    let written_at_join = done.load(Ordering::SeqCst);
    cluster.member_becomes(0, 4, Some("voter")).await;
    // Writes go on after the promotion, then stop.
    wait_for("writes after the join", Duration::from_secs(60), || async {
        (done.load(Ordering::SeqCst) >= written_at_join + 100).then_some(())
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    while let Some(task) = load.join_next().await {
        task.expect("writer task");
    }
    let digest = cluster.converged(&[0, 1, 2, 3]).await;
    assert!(!digest.is_empty());
    let written = done.load(Ordering::SeqCst);
    let listed = cluster.nodes[joined]
        .get(&format!("/api/products/?category={category}&limit=1"), None)
        .await;
    assert_eq!(
        listed.total_count(),
        written as u64,
        "every write on node 4"
    );
    let status = cluster.cluster_status(joined).await.expect("status");
    assert_eq!(status["role"], "follower", "{status}");

    // A restart of the joined node needs no --join: its log knows the membership.
    cluster.nodes[joined].remove_env("SOUNDWAVE_JOIN");
    cluster.nodes[joined].remove_env("SOUNDWAVE_PEER_LISTEN");
    tokio::task::block_in_place(|| cluster.nodes[joined].restart());
    let product = cluster.nodes[joined]
        .create_product(&admin, "After the restart", 2, "4.00", category)
        .await;
    assert!(product > 0);
    cluster.converged(&[0, 1, 2, 3]).await;
    let view = cluster.member_becomes(joined, 4, Some("voter")).await;
    assert_eq!(view["members"].as_array().map(Vec::len), Some(4), "{view}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_removed_node_leaves_and_the_cluster_keeps_writing() {
    let mut cluster = TestCluster::start(3, "");
    let leader = cluster.leader().await;
    let admin = cluster.nodes[leader].admin_token().await;
    let category = cluster.nodes[leader].create_category(&admin, "Stay").await;
    let follower = (0..3).find(|&i| i != leader).expect("a follower");
    let asked = (0..3)
        .find(|&i| i != leader && i != follower)
        .expect("a third");
    let from = cluster.nodes[asked].base_url().to_owned();

    // Unknown ids, a wrong secret: refused, nothing changes.
    let (ok, _, stderr) = soundwave(&["cluster", "remove", "9", "--from", &from], CLUSTER_SECRET);
    assert!(!ok && stderr.contains("404"), "{stderr}");
    let (ok, _, stderr) = soundwave(&["cluster", "remove", "2", "--from", &from], "wrong");
    assert!(
        !ok && stderr.contains("refused the cluster secret"),
        "{stderr}"
    );

    // A follower, through another member.
    let id = cluster.nodes[follower].node_id();
    let (ok, stdout, stderr) = soundwave(
        &["cluster", "remove", &id.to_string(), "--from", &from],
        CLUSTER_SECRET,
    );
    assert!(ok, "{stdout}{stderr}");
    cluster.member_becomes(asked, id, None).await;
    // The removed node was told, and stops by itself.
    wait_for("the removed node to stop", Duration::from_secs(20), || {
        let running = cluster.nodes[follower].is_running();
        async move { (!running).then_some(()) }
    })
    .await;
    let product = cluster.nodes[asked]
        .create_product(&admin, "Two voters", 3, "5.00", category)
        .await;
    assert!(product > 0);
    cluster.converged(&[leader, asked]).await;

    // The leader itself: it steps down, the other member leads alone and keeps writing.
    let leader_id = cluster.nodes[leader].node_id();
    let (ok, stdout, stderr) = soundwave(
        &["cluster", "remove", &leader_id.to_string(), "--from", &from],
        CLUSTER_SECRET,
    );
    assert!(ok, "{stdout}{stderr}");
    // The old leader answers as leader until its step-down; then the other one leads.
    let asked_id = cluster.nodes[asked].node_id();
    let view = wait_for(
        "the other member to lead",
        Duration::from_secs(30),
        || async {
            let view = cluster.members(asked).await?;
            (view["leader_id"] == asked_id).then_some(view)
        },
    )
    .await;
    assert_eq!(view["members"].as_array().map(Vec::len), Some(1), "{view}");
    let product = cluster.nodes[asked]
        .create_product(&admin, "One voter", 3, "5.00", category)
        .await;
    assert!(product > 0);
    let (ok, stdout, _) = soundwave(&["cluster", "status", "--from", &from], CLUSTER_SECRET);
    assert!(ok && stdout.contains("leader"), "{stdout}");
    assert!(!stdout.contains(&format!("\n{leader_id:>4} ")), "{stdout}");
    // The last voter cannot be removed.
    let last = cluster.nodes[asked].node_id().to_string();
    let (ok, _, stderr) = soundwave(
        &["cluster", "remove", &last, "--from", &from],
        CLUSTER_SECRET,
    );
    assert!(!ok && stderr.contains("last voter"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_only_learner_serves_reads_and_forwards_writes() {
    let mut cluster = TestCluster::start(3, "");
    let leader = cluster.leader().await;
    let admin = cluster.nodes[leader].admin_token().await;
    let category = cluster.nodes[leader]
        .create_category(&admin, "Replica")
        .await;
    let product = cluster.nodes[leader]
        .create_product(&admin, "Replicated", 5, "9.00", category)
        .await;
    let replica = tokio::task::block_in_place(|| cluster.join(5, true));
    // Caught up before it serves: the product is there at once.
    assert_eq!(cluster.nodes[replica].stock(product).await, 5);
    // A write taken by the replica is forwarded to the leader and applied everywhere.
    let written = cluster.nodes[replica]
        .create_product(&admin, "Through the replica", 1, "2.00", category)
        .await;
    cluster.converged(&[0, 1, 2, replica]).await;
    assert_eq!(cluster.nodes[leader].stock(written).await, 1);
    // /health/ says what it is; it is never promoted, and counts in no quorum.
    let health = cluster.nodes[replica].get("/health/", None).await;
    let health = health.expect(200);
    assert_eq!(health["cluster"]["role"], "learner", "{health}");
    assert_eq!(health["cluster"]["read_only"], true, "{health}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let view = cluster.member_becomes(0, 5, Some("learner")).await;
    let member = view["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["id"] == 5).cloned())
        .expect("node 5 listed");
    assert_eq!(member["read_only"], true, "{view}");
    assert_eq!(
        member["api"].as_str(),
        cluster.nodes[replica].base_url().strip_prefix("http://"),
        "{view}"
    );
    let (ok, stdout, _) = soundwave(
        &[
            "cluster",
            "status",
            "--from",
            cluster.nodes[replica].base_url(),
        ],
        CLUSTER_SECRET,
    );
    assert!(ok && stdout.contains("read-only"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn joins_that_cannot_be_done_say_why() {
    let cluster = TestCluster::start(3, "");
    let member = cluster.nodes[0].base_url().to_owned();
    let dir = tempfile::tempdir().expect("tempdir");
    let join = |id: &str, url: &str, secret: &str| {
        let data = dir.path().join(format!("{id}-{secret}"));
        let api = format!("127.0.0.1:{}", free_port());
        let peer = format!("127.0.0.1:{}", free_port());
        let data = data.to_string_lossy().into_owned();
        #[rustfmt::skip]
        let args = ["node", "--node-id", id, "--listen", &api, "--peer-listen", &peer,
            "--data-dir", &data, "--join", url];
        soundwave(&args, secret)
    };
    let (ok, _, stderr) = join("4", &member, "wrong-secret");
    assert!(
        !ok && stderr.contains("refused the cluster secret"),
        "{stderr}"
    );
    let (ok, _, stderr) = join("2", &member, CLUSTER_SECRET);
    assert!(
        !ok && stderr.contains("node 2 is already a member") && stderr.contains("it answers"),
        "{stderr}"
    );
    let closed = format!("http://127.0.0.1:{}", free_port());
    let (ok, _, stderr) = join("4", &closed, CLUSTER_SECRET);
    assert!(!ok && stderr.contains("cannot be reached"), "{stderr}");
    // A node with a peer address, no --join and an empty store is in no cluster.
    let data = dir.path().join("lonely");
    let api = format!("127.0.0.1:{}", free_port());
    let peer = format!("127.0.0.1:{}", free_port());
    #[rustfmt::skip]
    let args = ["node", "--node-id", "8", "--listen", &api, "--peer-listen", &peer,
        "--data-dir", &data.to_string_lossy()];
    let (ok, _, stderr) = soundwave(&args, CLUSTER_SECRET);
    assert!(!ok && stderr.contains("is in no cluster"), "{stderr}");
    // The membership endpoints are behind the secret.
    let response = reqwest::Client::new()
        .get(format!("{member}/_cluster/members"))
        .header(SECRET_HEADER, "wrong")
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 403);
    // A node without a secret has no membership endpoints anyone can use.
    let alone = tokio::task::block_in_place(Node::start);
    for path in ["/_cluster/members", "/_cluster/join", "/_cluster/remove"] {
        let response = reqwest::Client::new()
            .request(
                if path.ends_with("members") {
                    Method::GET
                } else {
                    Method::POST
                },
                alone.url(path),
            )
            .header(SECRET_HEADER, "")
            .body("{\"id\": 1}")
            .send()
            .await
            .expect("answer");
        assert_eq!(response.status(), 403, "{path}");
    }
}

/// Which node answers each client (by its source address) through the balancer.
async fn nodes_by_client(lb: &common::lb::Balancer, clients: &common::lb::Clients) -> Vec<String> {
    let mut seen = Vec::new();
    for (ip, client) in clients {
        let response = client
            .get(lb.url("/api/categories/"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET through the balancer from {ip}: {e}"));
        assert_eq!(response.status(), 200, "from {ip}");
        let node = response
            .headers()
            .get("x-soundwave-node")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        seen.push(node);
    }
    seen
}

/// Waits until the balancer lists `addrs` as healthy upstreams.
async fn balancer_has_healthy(lb: &common::lb::Balancer, addrs: &[std::net::SocketAddr]) {
    wait_for(
        "the balancer to send traffic to every member",
        Duration::from_secs(30),
        || async {
            let status = lb.status().await;
            let upstreams = status["upstreams"].as_array()?.clone();
            addrs
                .iter()
                .all(|addr| {
                    upstreams
                        .iter()
                        .any(|u| u["address"] == addr.to_string() && u["healthy"] == true)
                })
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_balancer_discovers_a_read_replica_and_sends_it_its_share_without_a_restart() {
    use common::lb::{Balancer, clients, fast_health, local, node_addr};
    let mut cluster = TestCluster::start(3, "");
    let leader = cluster.leader().await;
    let admin = cluster.nodes[leader].admin_token().await;
    cluster.nodes[leader].create_category(&admin, "Seen").await;
    // One static primary; the others are learned from the cluster through node 2.
    let lb = tokio::task::block_in_place(|| {
        Balancer::start(
            local(free_port()),
            Some(local(free_port())),
            &format!(
                "primaries = [\"{}\"]\nbackups = []\ndiscover_from = [\"{}\"]\n\
                 discover_interval_ms = 200\n{}\n[cluster]\nsecret = \"{CLUSTER_SECRET}\"\n",
                node_addr(&cluster.nodes[0]),
                cluster.nodes[1].base_url(),
                fast_health(2, 3)
            ),
        )
    });
    let members: Vec<_> = cluster.nodes.iter().map(node_addr).collect();
    balancer_has_healthy(&lb, &members).await;
    let clients = clients(32);
    let before = nodes_by_client(&lb, &clients).await;

    let replica = tokio::task::block_in_place(|| cluster.join(5, true));
    balancer_has_healthy(&lb, &[node_addr(&cluster.nodes[replica])]).await;
    let after = nodes_by_client(&lb, &clients).await;
    let moved: Vec<usize> = (0..clients.len())
        .filter(|&i| before[i] != after[i])
        .collect();
    assert!(
        !moved.is_empty(),
        "some clients go to the replica: {after:?}"
    );
    for i in moved {
        assert_eq!(
            after[i], "5",
            "a client that moved went to the new node, nowhere else (ketama): {before:?} -> {after:?}"
        );
    }
    // The static primary stays whatever the cluster says.
    let status = lb.upstream_status(node_addr(&cluster.nodes[0])).await;
    assert_eq!(status["role"], "primary");
}
