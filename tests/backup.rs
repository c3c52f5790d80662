//! Backup and restore with real processes: `soundwave backup` of a three-node cluster while a
//! client places orders, `soundwave restore` into a new data directory, and a node started on
//! it that serves the backup's state (same digest, same users, catalog and orders; tokens
//! still valid) as a new one-member cluster. A damaged backup file is refused.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::cluster::{CLUSTER_SECRET, SECRET_HEADER, TestCluster};
use common::*;
use soundwave_testkit as common;
use tokio::sync::Mutex;

const COMMAND_LIMIT: Duration = Duration::from_secs(120);
/// Orders the writer places at most (orders lists answer up to 1,000).
const MAX_ORDERS: usize = 400;

/// `soundwave ARGS` run to its end off the test's runtime.
async fn soundwave(args: Vec<String>, env: Vec<(&'static str, String)>) -> Finished {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        run_to_exit(&args, &env, COMMAND_LIMIT)
    })
    .await
    .expect("the command's thread")
}

/// The word after `label` in `text` (as `soundwave backup` and `restore` print them).
/// `soundwave restore FILE --data-dir DATA`.
async fn run_restore(file: &std::path::Path, data: &std::path::Path) -> Finished {
    soundwave(
        vec![
            "restore".into(),
            file.display().to_string(),
            "--data-dir".into(),
            data.display().to_string(),
        ],
        vec![],
    )
    .await
}

fn value_after<'a>(text: &'a str, label: &str) -> &'a str {
    let start = text
        .find(label)
        .unwrap_or_else(|| panic!("no {label:?} in {text:?}"))
        + label.len();
    text[start..]
        .split(|c: char| c == ',' || c.is_whitespace())
        .find(|word| !word.is_empty())
        .unwrap_or_default()
}

async fn applied_index(cluster: &TestCluster, i: usize) -> u64 {
    let status = cluster.cluster_status(i).await.expect("health");
    status["applied_index"].as_u64().expect("applied index")
}

/// Orders of `token`'s user on `node`, by id.
async fn orders_by_id(node: &Node, token: &str) -> Vec<Value> {
    let mut orders = node.list("/api/orders/", Some(token)).await;
    orders.sort_by_key(|o| o["id"].as_i64());
    orders
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_writes_restores_to_a_new_node_with_the_same_state() {
    let mut cluster = TestCluster::start(3, "");
    let leader = cluster.leader().await;
    let entry = &cluster.nodes[leader];
    let admin = entry.admin_token().await;
    let category = entry.create_category(&admin, "Backed up").await;
    let mut products = Vec::new();
    for i in 0..4 {
        let name = format!("Backed up {i}");
        products.push(
            entry
                .create_product(&admin, &name, 100_000, "2.50", category)
                .await,
        );
    }
    let buyer = entry.new_user("backup-buyer").await;

    // A client places orders through a follower until told to stop (bounded in count and time).
    let writer_node = (leader + 1) % 3;
    let acknowledged: Arc<Mutex<Vec<i64>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writes = {
        let client_node = cluster.nodes[writer_node].base_url().to_owned();
        let (acknowledged, stop, token) =
            (acknowledged.clone(), stop.clone(), buyer.access.clone());
        let products = products.clone();
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let started = Instant::now();
            for n in 0..MAX_ORDERS {
                if stop.load(Ordering::SeqCst) || started.elapsed() > Duration::from_secs(90) {
                    break;
                }
                let product = products[n % products.len()];
                let response = http
                    .post(format!("{client_node}/api/orders/"))
                    .bearer_auth(&token)
                    .json(&items_body(&[(product, 1 + (n % 3) as i64)]))
                    .send()
                    .await
                    .expect("order sent");
                assert_eq!(response.status(), 201, "an order was refused");
                let order: Value = response.json().await.expect("order JSON");
                acknowledged
                    .lock()
                    .await
                    .push(order["id"].as_i64().expect("id"));
            }
        })
    };
    let count = |at_least: usize| {
        let acknowledged = acknowledged.clone();
        async move {
            wait_for("orders acknowledged", Duration::from_secs(60), || async {
                (acknowledged.lock().await.len() >= at_least).then_some(())
            })
            .await
        }
    };
    count(20).await;

    // The backup, from another follower's API, while the orders go on.
    let source = (leader + 2) % 3;
    let before_backup: Vec<i64> = acknowledged.lock().await.clone();
    let applied_before = applied_index(&cluster, source).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("cluster.swb");
    let backup = soundwave(
        vec![
            "backup".into(),
            "--from".into(),
            cluster.nodes[source].base_url().into(),
            "--out".into(),
            file.display().to_string(),
        ],
        vec![("SOUNDWAVE_CLUSTER_SECRET", CLUSTER_SECRET.into())],
    )
    .await;
    assert!(backup.status.success(), "backup failed: {}", backup.stderr);
    let applied_after = applied_index(&cluster, source).await;
    let during = acknowledged.lock().await.len();
    count(during + 10).await;
    stop.store(true, Ordering::SeqCst);
    writes.await.expect("the writer");

    let log_index: u64 = value_after(&backup.stdout, "log index")
        .parse()
        .expect("index");
    let digest = value_after(&backup.stdout, "state digest").to_owned();
    assert!(
        (applied_before..=applied_after).contains(&log_index),
        "the backup's index {log_index} is not between {applied_before} and {applied_after}"
    );
    assert!(
        backup.stdout.contains("members [1, 2, 3]"),
        "{}",
        backup.stdout
    );
    assert!(
        std::fs::read_dir(dir.path()).expect("list").count() == 1,
        "a temporary file was left beside the backup"
    );
    // The cluster went on writing: its state moved past the backup's.
    let (_, now) = cluster.digest(source).await.expect("digest");
    assert_ne!(now, digest, "the writes after the backup changed nothing?");

    // Restore into a new directory and start a node alone on it.
    let data = dir.path().join("restored");
    let restore = run_restore(&file, &data).await;
    assert!(
        restore.status.success(),
        "restore failed: {}",
        restore.stderr
    );
    assert_eq!(value_after(&restore.stdout, "state digest"), digest);
    let restored = Node::builder()
        .data_dir(&data)
        .env("SOUNDWAVE_CLUSTER_SECRET", CLUSTER_SECRET)
        .start();
    let restored_digest: Value = restored
        .client
        .get(restored.url("/_cluster/digest"))
        .header(SECRET_HEADER, CLUSTER_SECRET)
        .send()
        .await
        .expect("digest")
        .json()
        .await
        .expect("digest JSON");
    assert_eq!(
        restored_digest["digest"],
        json!(digest),
        "{restored_digest}"
    );

    // By the API: the buyer's token (the JWT secret came along), the catalog, and exactly
    // the orders of the backup's index, each as the cluster has it.
    let restored_orders = orders_by_id(&restored, &buyer.access).await;
    let cluster_orders = orders_by_id(&cluster.nodes[leader], &buyer.access).await;
    assert!(restored_orders.len() >= before_backup.len());
    assert!(restored_orders.len() < cluster_orders.len());
    assert_eq!(restored_orders[..], cluster_orders[..restored_orders.len()]);
    for id in &before_backup {
        assert!(
            restored_orders.iter().any(|o| o["id"] == *id),
            "order {id} lost"
        );
    }
    for &product in &products {
        let sold: i64 = restored_orders
            .iter()
            .flat_map(|o| o["items"].as_array().cloned().unwrap_or_default())
            .filter(|item| item["product"] == product)
            .map(|item| item["quantity"].as_i64().unwrap_or(0))
            .sum();
        let p = restored.product(product).await;
        assert_eq!(p["stock"], json!(100_000 - sold), "{p}");
        let on_cluster = cluster.nodes[leader].product(product).await;
        assert_eq!(p["name"], on_cluster["name"]);
    }
    restored.login(&buyer.username, &buyer.password).await;
    // A new cluster of one: it takes writes.
    let order = restored.order(&buyer.access, &[(products[0], 1)]).await;
    order.expect(201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_backup_or_a_wrong_secret_is_refused() {
    let node = Node::builder()
        .env("SOUNDWAVE_CLUSTER_SECRET", CLUSTER_SECRET)
        .start();
    let admin = node.admin_token().await;
    node.create_category(&admin, "Refused").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("node.swb");
    let run_backup = |secret: &str| {
        soundwave(
            vec![
                "backup".into(),
                "--from".into(),
                node.base_url().into(),
                "--out".into(),
                file.display().to_string(),
                "--cluster-secret".into(),
                secret.into(),
            ],
            vec![],
        )
    };

    let refused = run_backup("not-the-secret").await;
    assert!(!refused.status.success());
    assert!(refused.stderr.contains("403"), "{}", refused.stderr);
    assert!(
        std::fs::read_dir(dir.path())
            .expect("list")
            .next()
            .is_none()
    );

    let taken = run_backup(CLUSTER_SECRET).await;
    assert!(taken.status.success(), "{}", taken.stderr);
    let whole = std::fs::read(&file).expect("read the backup");
    // A bit flipped in the rows (the structure may break first) and one in the CRC-32.
    for (at, reason) in [
        (whole.len() / 2, "the backup is unusable"),
        (whole.len() - 2, "checksum mismatch"),
    ] {
        let mut bytes = whole.clone();
        bytes[at] ^= 0x40;
        std::fs::write(&file, &bytes).expect("damage the backup");
        let data = dir.path().join("restored");
        let restore = run_restore(&file, &data).await;
        assert!(!restore.status.success(), "a damaged backup was restored");
        assert!(restore.stderr.contains(reason), "{}", restore.stderr);
        assert!(
            !Path::new(&data).exists(),
            "a damaged backup made a directory"
        );
    }
}
