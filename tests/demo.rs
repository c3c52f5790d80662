//! `--demo`: seeded catalog and demo users, seeded only once.
use common::*;
use soundwave_testkit as common;

const DEMO_CATEGORIES: [&str; 6] = [
    "Merch",
    "Musical Instruments",
    "Musical Equipment",
    "Vinyl Records",
    "Disks",
    "Accessories",
];

async fn assert_demo_catalog(node: &Node) -> Vec<Value> {
    let cats = node.list("/api/categories/", None).await;
    let mut got = names(&cats);
    got.sort();
    let mut want: Vec<String> = DEMO_CATEGORIES.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(got, want, "demo categories");

    let r = node.get("/api/products/", None).await;
    r.expect(200);
    assert_eq!(r.total_count(), 1000, "demo products");
    let products = r.array().clone();
    assert_eq!(products.len(), 1000, "default page size is 1000");
    assert_eq!(r.next_link(), None);
    let cat_ids = ids(&cats);
    for p in &products {
        let cat = p["category"].as_i64().expect("category id");
        assert!(
            cat_ids.contains(&cat),
            "product in an unknown category: {p}"
        );
        assert!(p["stock"].as_i64().is_some_and(|s| s >= 0), "{p}");
        let price = p["price"].as_str().expect("price string");
        let (_, cents) = price.split_once('.').expect("price with a decimal point");
        assert_eq!(cents.len(), 2, "two decimals: {p}");
        assert!(!price.starts_with('-'), "{p}");
        assert!(
            p["name"]
                .as_str()
                .is_some_and(|n| !n.is_empty() && n.len() <= 200)
        );
    }
    let mut pids = ids(&products);
    pids.sort();
    pids.dedup();
    assert_eq!(pids.len(), 1000);
    // Every category holds some products.
    for c in &cat_ids {
        let r = node
            .get(&format!("/api/products/?category={c}&limit=1"), None)
            .await;
        assert!(r.total_count() > 0, "category {c} is empty");
    }
    products
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_seeds_catalog_and_users_once() {
    let mut node = Node::builder().demo().start();
    let admin_pw = node
        .stdout_value("demo admin:", "password")
        .unwrap_or_else(|| panic!("no `demo admin:` line on stdout: {:?}", node.stdout_lines()));
    let shopper_pw = node
        .stdout_value("demo shopper:", "password")
        .unwrap_or_else(|| {
            panic!(
                "no `demo shopper:` line on stdout: {:?}",
                node.stdout_lines()
            )
        });
    assert_eq!(
        node.stdout_value("demo admin:", "username").as_deref(),
        Some("demo-admin")
    );
    assert_eq!(
        node.stdout_value("demo shopper:", "username").as_deref(),
        Some("demo-shopper")
    );

    let products = assert_demo_catalog(&node).await;

    // Demo admin is staff, demo shopper is not.
    let (admin, _) = node.login("demo-admin", &admin_pw).await;
    let r = node.get("/api/users/me/", Some(&admin)).await;
    assert_eq!(r.expect(200)["is_staff"], true);
    let (shopper, _) = node.login("demo-shopper", &shopper_pw).await;
    let r = node.get("/api/users/me/", Some(&shopper)).await;
    assert_eq!(r.expect(200)["is_staff"], false);
    assert_eq!(r.json["username"], "demo-shopper");

    // The shopper can buy something in stock.
    let p = products
        .iter()
        .find(|p| p["stock"].as_i64().unwrap() >= 2)
        .expect("some demo product with stock");
    let pid = p["id"].as_i64().unwrap();
    let stock = p["stock"].as_i64().unwrap();
    let order = node.place_order(&shopper, &[(pid, 2)]).await;
    assert_eq!(order["status"], "placed");
    assert_eq!(order["user"], "demo-shopper");
    assert_eq!(node.stock(pid).await, stock - 2);
    let oid = order["id"].as_i64().unwrap();

    // Starting again on the same data dir with --demo does not seed twice.
    node.restart();
    assert_demo_catalog(&node).await;
    assert_eq!(
        node.stock(pid).await,
        stock - 2,
        "the order survived and was not re-seeded"
    );
    let (shopper, _) = node.login("demo-shopper", &shopper_pw).await;
    let orders = node.list("/api/orders/", Some(&shopper)).await;
    assert_eq!(ids(&orders), vec![oid]);
    node.login("demo-admin", &admin_pw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_demo_the_store_starts_empty() {
    let node = Node::start();
    assert!(node.list("/api/categories/", None).await.is_empty());
    let r = node.get("/api/products/", None).await;
    r.expect(200);
    assert!(r.array().is_empty());
    assert_eq!(r.total_count(), 0);
    node.token_resp("demo-shopper", "whatever-password")
        .await
        .expect_detail_eq(401, MSG_BAD_LOGIN);
}

/// `node --demo` on a port already in use fails at once: the store stays untouched and no
/// demo password is printed for a node that never served.
#[test]
fn a_busy_port_fails_before_the_store_or_the_credentials() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let data_arg = data.display().to_string();
    let run = run_to_exit(
        &["node", "--listen", &addr, "--data-dir", &data_arg, "--demo"],
        &[],
        START_TIMEOUT,
    );
    assert!(!run.status.success(), "exit status {:?}", run.status);
    assert!(
        run.stderr.contains(&format!("cannot listen on {addr}")),
        "stderr names the address: {}",
        run.stderr
    );
    assert!(
        !run.stdout.contains("demo admin:") && !run.stdout.contains("demo shopper:"),
        "no credentials printed: {}",
        run.stdout
    );
    assert!(!data.exists(), "the data directory was not even created");
}

/// A data directory the node cannot use is named in the error.
#[test]
fn an_unusable_data_directory_is_named() {
    // Starts a node on `data`, which must fail, and returns its stderr.
    let failed_start = |data: &std::path::Path| {
        let data_arg = data.display().to_string();
        let run = run_to_exit(
            &["node", "--listen", "127.0.0.1:0", "--data-dir", &data_arg],
            &[],
            START_TIMEOUT,
        );
        assert!(!run.status.success(), "exit status {:?}", run.status);
        run.stderr
    };
    let dir = tempfile::tempdir().expect("temp dir");
    // A file where a directory should be: refused whoever runs the test (root too).
    let blocker = dir.path().join("not-a-directory");
    std::fs::write(&blocker, b"").expect("write file");
    let data = blocker.join("data");
    let stderr = failed_start(&data);
    assert!(
        stderr.contains(&data.display().to_string()),
        "stderr: {stderr}"
    );

    // The store file itself unusable (here a directory): its path is named too.
    let data = dir.path().join("data");
    let store = data.join("soundwave.redb");
    std::fs::create_dir_all(&store).expect("create dir");
    let stderr = failed_start(&data);
    assert!(
        stderr.contains(&store.display().to_string()),
        "stderr: {stderr}"
    );
}

/// At the default log level every request gets one access line with the node, client,
/// method, path with query (quoted, as tracing writes strings), status and latency; health
/// probes do not (they log at debug).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_lines_name_the_request_and_leave_out_health_probes() {
    let node = Node::builder().env("RUST_LOG", "info").start();
    for _ in 0..3 {
        node.send(node.request(Method::GET, "/health/", None))
            .await
            .expect(200);
    }
    node.send(node.request(Method::GET, "/api/products/?limit=1&offset=0", None))
        .await
        .expect(200);
    assert!(
        node.stderr_contains_soon(r#"path="/api/products/?limit=1&offset=0""#)
            .await,
        "no access line: {}",
        node.stderr_text()
    );
    let stderr = node.stderr_text();
    let line = stderr
        .lines()
        .find(|l| l.contains(r#"path="/api/products/?limit=1&offset=0""#))
        .expect("the line");
    for field in [
        "soundwave::access",
        "node=1",
        "client=127.0.0.1",
        "method=GET",
        "status=200",
        "latency_us=",
    ] {
        assert!(line.contains(field), "{field} missing from {line}");
    }
    // Lines are written in order, so the health lines would be there by now.
    assert!(
        !stderr.contains(r#"path="/health/""#),
        "health probes logged at info: {stderr}"
    );
}
