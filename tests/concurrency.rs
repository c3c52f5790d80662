//! Many clients buying at once: no overselling, no lost updates.
use common::*;
use soundwave_testkit as common;
use std::sync::Arc;

async fn users(node: &Arc<Node>, n: usize) -> Vec<TestUser> {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let node = node.clone();
        set.spawn(async move { node.new_user(&format!("buyer{i}")).await });
    }
    let mut out = Vec::new();
    while let Some(u) = set.join_next().await {
        out.push(u.expect("signup task"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_buyers_ten_in_stock() {
    let node = Arc::new(Node::start());
    let admin = node.admin_token().await;
    let cat = node.create_category(&admin, "Limited").await;
    let pid = node
        .create_product(&admin, "Signed LP", 10, "49.99", cat)
        .await;
    let buyers = users(&node, 20).await;

    // 100 attempts, 5 per user, all in flight together.
    let barrier = Arc::new(tokio::sync::Barrier::new(100));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..100 {
        let node = node.clone();
        let token = buyers[i % buyers.len()].access.clone();
        let barrier = barrier.clone();
        set.spawn(async move {
            barrier.wait().await;
            node.order(&token, &[(pid, 1)]).await
        });
    }
    let mut created = Vec::new();
    let mut conflicts = 0;
    let mut other = Vec::new();
    while let Some(r) = set.join_next().await {
        let r = r.expect("order task");
        match r.status {
            201 => created.push(r),
            409 => {
                assert_eq!(
                    r.json,
                    json!({"detail": "Insufficient stock",
                           "items": [{"product": pid, "requested": 1, "available": 0}]}),
                    "409 body"
                );
                conflicts += 1;
            }
            _ => other.push(format!("{} {}", r.status, truncate(&r.text, 300))),
        }
    }
    assert!(other.is_empty(), "unexpected answers: {other:?}");
    assert_eq!(created.len(), 10, "exactly the stock is sold");
    assert_eq!(conflicts, 90);
    assert_eq!(node.stock(pid).await, 0);

    // The placed orders are distinct and sum to 10 units.
    let mut order_ids: Vec<i64> = created.iter().map(|r| r.id()).collect();
    order_ids.sort();
    order_ids.dedup();
    assert_eq!(order_ids.len(), 10);

    let all = node.list("/api/orders/", Some(&admin)).await;
    assert_eq!(all.len(), 10, "admin sees exactly the placed orders");
    let sold: i64 = all
        .iter()
        .flat_map(|o| o["items"].as_array().unwrap().clone())
        .filter(|it| it["product"] == pid)
        .map(|it| it["quantity"].as_i64().unwrap())
        .sum();
    assert_eq!(sold, 10);
    for o in &all {
        assert_eq!(o["status"], "placed");
        assert_eq!(o["total"], "49.99");
    }
    let items = node.list("/api/orderitems/", Some(&admin)).await;
    assert_eq!(
        items.len(),
        10,
        "no stray order lines from the refused attempts"
    );
}

/// Orders touching two products in opposite orders, plus cancellations, all at once: every
/// request succeeds (plenty of stock; no deadlock) and no update is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crossing_orders_and_cancels_lose_no_updates() {
    let node = Arc::new(Node::start());
    let admin = node.admin_token().await;
    let cat = node.create_category(&admin, "Busy").await;
    let a = node.create_product(&admin, "A", 1000, "1.00", cat).await;
    let b = node.create_product(&admin, "B", 1000, "2.00", cat).await;
    let buyers = users(&node, 4).await;

    // Some orders to cancel concurrently.
    let mut to_cancel = Vec::new();
    for u in &buyers {
        let o = node.place_order(&u.access, &[(a, 5), (b, 5)]).await;
        to_cancel.push((u.access.clone(), o["id"].as_i64().unwrap()));
    }
    assert_eq!(node.stock(a).await, 980);
    assert_eq!(node.stock(b).await, 980);

    let mut set = tokio::task::JoinSet::new();
    for i in 0..40 {
        let node = node.clone();
        let token = buyers[i % buyers.len()].access.clone();
        set.spawn(async move {
            let lines = if i % 2 == 0 {
                [(a, 2), (b, 3)]
            } else {
                [(b, 3), (a, 2)]
            };
            node.order(&token, &lines).await
        });
    }
    for (token, oid) in to_cancel.clone() {
        let node = node.clone();
        set.spawn(async move {
            node.post_empty(&format!("/api/orders/{oid}/cancel/"), Some(&token))
                .await
        });
    }
    while let Some(r) = set.join_next().await {
        let r = r.expect("task");
        assert!(
            r.status == 201 || r.status == 200,
            "{} {} -> {} {}",
            r.method,
            r.url,
            r.status,
            r.text
        );
    }
    // 980 + 4×5 returned − 40×2 sold = 920; 980 + 20 − 40×3 = 880.
    assert_eq!(node.stock(a).await, 920);
    assert_eq!(node.stock(b).await, 880);
    let orders = node.list("/api/orders/", Some(&admin)).await;
    assert_eq!(orders.len(), 44);
    let placed = orders.iter().filter(|o| o["status"] == "placed").count();
    assert_eq!(placed, 40);
}
