//! `--demo`: seeded catalog and demo users, seeded only once.
mod common;
use common::*;

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
