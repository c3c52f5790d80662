//! Acknowledged writes survive SIGKILL.
use common::*;
use soundwave_testkit as common;
use std::collections::BTreeMap;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill9() {
    let mut node = Node::start();
    let admin = node.admin_token().await;
    let user = node.new_user("durable").await;
    let cat = node.create_category(&admin, "Durable").await;

    // 20 products, stock 100 each.
    let mut expected_stock: BTreeMap<i64, i64> = BTreeMap::new();
    let mut names: BTreeMap<i64, String> = BTreeMap::new();
    for i in 0..20 {
        let name = format!("Durable {i}");
        let id = node.create_product(&admin, &name, 100, "3.25", cat).await;
        expected_stock.insert(id, 100);
        names.insert(id, name);
    }
    let pids: Vec<i64> = expected_stock.keys().copied().collect();

    // 30 orders of 1–3 units, round robin over the products.
    let mut orders: Vec<(i64, i64, i64)> = Vec::new(); // (order id, product, quantity)
    for i in 0..30 {
        let pid = pids[i % pids.len()];
        let q = (i % 3 + 1) as i64;
        let o = node.place_order(&user.access, &[(pid, q)]).await;
        *expected_stock.get_mut(&pid).unwrap() -= q;
        orders.push((o["id"].as_i64().unwrap(), pid, q));
    }

    // A cancellation, a price change, a deletion, and a cart line as the last acknowledged writes.
    let (cancelled, cpid, cq) = orders[4];
    node.post_empty(&format!("/api/orders/{cancelled}/cancel/"), user.tok())
        .await
        .expect(200);
    *expected_stock.get_mut(&cpid).unwrap() += cq;
    let repriced = pids[19];
    node.patch(
        &format!("/api/products/{repriced}/"),
        Some(&admin),
        &json!({"price": "7.77"}),
    )
    .await
    .expect(200);
    let deleted = node
        .create_product(&admin, "Short-lived", 1, "1.00", cat)
        .await;
    node.delete(&format!("/api/products/{deleted}/"), Some(&admin))
        .await
        .expect(204);
    let cart = node.add_cart_item(&user.access, pids[0], 2).await["id"]
        .as_i64()
        .unwrap();

    node.kill9();
    node.restart();
    // A killed node's store is repaired at the next open (and says so).
    assert!(
        node.stderr_contains_soon(store::REPAIR_WARNING).await,
        "no repair after kill -9:\n{}",
        node.stderr_text()
    );

    // Tokens may or may not survive a restart; log in again.
    let admin = node.admin_token().await;
    let (access, _) = node.login(&user.username, &user.password).await;

    for (&pid, &stock) in &expected_stock {
        let p = node.product(pid).await;
        assert_eq!(
            p["stock"], stock,
            "stock of product {pid} after restart: {p}"
        );
        assert_eq!(p["name"], json!(names[&pid]));
        assert_eq!(p["category"], cat);
        let price = if pid == repriced { "7.77" } else { "3.25" };
        assert_eq!(p["price"], price);
    }
    node.get(&format!("/api/products/{deleted}/"), None)
        .await
        .expect_not_found();
    let r = node.get("/api/products/", None).await;
    r.expect(200);
    assert_eq!(r.total_count(), 20);
    assert_eq!(ids(r.array()), pids);
    node.get(&format!("/api/categories/{cat}/"), None)
        .await
        .expect_json(200, &json!({"id": cat, "name": "Durable"}));

    let listed = node.list("/api/orders/", Some(&access)).await;
    assert_eq!(listed.len(), 30, "every acknowledged order is there");
    for &(oid, pid, q) in &orders {
        let r = node
            .get(&format!("/api/orders/{oid}/"), Some(&access))
            .await;
        r.expect(200);
        let status = if oid == cancelled {
            "cancelled"
        } else {
            "placed"
        };
        assert_eq!(r.json["status"], status, "order {oid}: {}", r.text);
        let items = r.json["items"].as_array().unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0]["product"], pid);
        assert_eq!(items[0]["quantity"], q);
        assert_eq!(items[0]["unit_price"], "3.25");
        let total = format!("{}.{:02}", (325 * q) / 100, (325 * q) % 100);
        assert_eq!(r.json["total"], json!(total), "order {oid}");
    }
    let r = node
        .get(&format!("/api/orderitems/{cart}/"), Some(&access))
        .await;
    r.expect(200);
    assert_eq!(r.json["order"], Value::Null);
    assert_eq!(r.json["quantity"], 2);

    // New writes after the restart get fresh ids (no collision with acknowledged ones).
    let new_pid = node
        .create_product(&admin, "After restart", 1, "1.00", cat)
        .await;
    assert!(
        !pids.contains(&new_pid),
        "new product id {new_pid} collides with an existing one"
    );
    let o = node.place_order(&access, &[(new_pid, 1)]).await;
    let new_oid = o["id"].as_i64().unwrap();
    assert!(
        orders.iter().all(|o| o.0 != new_oid),
        "new order id {new_oid} collides with an existing one"
    );
    assert_eq!(
        node.product(pids[1]).await["stock"],
        expected_stock[&pids[1]]
    );
    assert_eq!(node.starts(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_rotated_refresh_tokens_survive_restart() {
    let mut node = Node::builder()
        .config("[auth]\njwt_secret = \"durability-test-secret-abcdef\"\n")
        .start();
    let user = node.new_user("survivor").await;
    let r = node
        .post(
            "/api/token/refresh/",
            None,
            &json!({"refresh": user.refresh}),
        )
        .await;
    r.expect(200);
    let new_refresh = r.json["refresh"].as_str().unwrap().to_string();

    node.kill9();
    node.restart();

    node.login(&user.username, &user.password).await;
    // With the same secret, an access token issued before the crash is still valid.
    node.get("/api/users/me/", user.tok()).await.expect(200);
    // The refresh token used before the crash stays used.
    node.post(
        "/api/token/refresh/",
        None,
        &json!({"refresh": user.refresh}),
    )
    .await
    .expect_bad_token();
    node.post(
        "/api/token/refresh/",
        None,
        &json!({"refresh": new_refresh}),
    )
    .await
    .expect(200);
    // The username is still taken.
    node.post(
        "/api/users/",
        None,
        &json!({"username": user.username, "password": PASSWORD}),
    )
    .await
    .expect_detail(409);
}

/// SIGTERM stops the node cleanly (exit status 0, well before any long grace period), while
/// requests are arriving, and everything acknowledged before is there after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_cleanly_and_keeps_acknowledged_writes() {
    let mut node = Node::start();
    let admin = node.admin_token().await;
    let cat = node.create_category(&admin, "Shutdown").await;
    let pid = node
        .create_product(&admin, "Last Call LP", 5, "20.00", cat)
        .await;
    let order = node.place_order(&admin, &[(pid, 2)]).await;

    // Keep reads in flight while the signal arrives; each either completes or is refused
    // at the socket, never answered with a 5xx.
    let url = node.url("/api/products/");
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut statuses = Vec::new();
                for _ in 0..50 {
                    match client.get(&url).send().await {
                        Ok(r) => statuses.push(r.status().as_u16()),
                        Err(_) => break,
                    }
                }
                statuses
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let status = node.terminate().expect("the node exits after SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    for reader in readers {
        let statuses = reader.await.expect("reader task");
        assert!(statuses.iter().all(|&s| s == 200), "statuses {statuses:?}");
    }

    node.restart();
    // Closed cleanly: nothing to repair (raft's tasks, which hold the store, were stopped).
    assert!(
        !node.stderr_text().contains(store::REPAIR_WARNING),
        "repaired after a clean stop:\n{}",
        node.stderr_text()
    );
    assert_eq!(node.stock(pid).await, 3);
    let admin = node.admin_token().await;
    let again = node
        .get(&format!("/api/orders/{}/", order["id"]), Some(&admin))
        .await;
    assert_eq!(again.expect(200)["status"], "placed");
}
