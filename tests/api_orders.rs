//! Cart lines and orders: ownership, totals, stock, cancel, idempotency, validation.
use common::*;
use soundwave_testkit as common;

struct Shop {
    node: Node,
    admin: String,
    cat: i64,
}

async fn shop() -> Shop {
    shop_with(Node::start()).await
}

async fn shop_with(node: Node) -> Shop {
    let admin = node.admin_token().await;
    let cat = node.create_category(&admin, "Gear").await;
    Shop { node, admin, cat }
}

impl Shop {
    async fn product(&self, name: &str, stock: i64, price: &str) -> i64 {
        self.node
            .create_product(&self.admin, name, stock, price, self.cat)
            .await
    }
    fn admin(&self) -> Option<&str> {
        Some(&self.admin)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cart_line_crud_while_not_ordered() {
    let s = shop().await;
    let node = &s.node;
    let pid = s.product("Strings", 50, "7.50").await;
    let user = node.new_user("cart").await;

    let r = node
        .post(
            "/api/orderitems/",
            user.tok(),
            &json!({"product": pid, "quantity": 2}),
        )
        .await;
    r.expect(201);
    let iid = r.id();
    assert_eq!(
        r.json,
        json!({"id": iid, "product": pid, "product_name": "Strings", "quantity": 2,
               "user": user.username, "order": null, "unit_price": null})
    );
    // Adding to the cart does not take stock.
    assert_eq!(node.stock(pid).await, 50);

    let list = node.list("/api/orderitems/", user.tok()).await;
    assert_eq!(list, vec![r.json.clone()]);
    node.get(&format!("/api/orderitems/{iid}/"), user.tok())
        .await
        .expect_json(200, &r.json);

    let r = node
        .patch(
            &format!("/api/orderitems/{iid}/"),
            user.tok(),
            &json!({"quantity": 5}),
        )
        .await;
    r.expect(200);
    assert_eq!(r.json["quantity"], 5);
    assert_eq!(r.json["order"], Value::Null);
    assert_eq!(
        node.get(&format!("/api/orderitems/{iid}/"), user.tok())
            .await
            .expect(200)["quantity"],
        5
    );

    node.delete(&format!("/api/orderitems/{iid}/"), user.tok())
        .await
        .expect(204);
    node.get(&format!("/api/orderitems/{iid}/"), user.tok())
        .await
        .expect_not_found();
    assert!(node.list("/api/orderitems/", user.tok()).await.is_empty());

    // Anonymous access to carts and orders.
    node.get("/api/orderitems/", None)
        .await
        .expect_unauthenticated();
    node.post(
        "/api/orderitems/",
        None,
        &json!({"product": pid, "quantity": 1}),
    )
    .await
    .expect_unauthenticated();
    node.get("/api/orders/", None)
        .await
        .expect_unauthenticated();
    node.post("/api/orders/", None, &items_body(&[(pid, 1)]))
        .await
        .expect_unauthenticated();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_cart_lines_then_lines_are_frozen() {
    let s = shop().await;
    let node = &s.node;
    let a = s.product("Picks", 100, "0.50").await;
    let b = s.product("Capo", 10, "15.00").await;
    let user = node.new_user("checkout").await;

    let i1 = node.add_cart_item(&user.access, a, 10).await["id"]
        .as_i64()
        .unwrap();
    let i2 = node.add_cart_item(&user.access, b, 1).await["id"]
        .as_i64()
        .unwrap();
    let i3 = node.add_cart_item(&user.access, a, 1).await["id"]
        .as_i64()
        .unwrap();

    let r = node
        .post(
            "/api/orders/",
            user.tok(),
            &json!({"order_items": [i1, i2]}),
        )
        .await;
    r.expect(201);
    let oid = r.id();
    assert_eq!(r.json["status"], "placed");
    assert_eq!(r.json["user"], json!(user.username));
    assert_eq!(r.json["total"], "20.00");
    assert!(r.json["created_at"].is_string(), "{}", r.text);
    let items = r.json["items"].as_array().expect("items").clone();
    let mut item_ids = ids(&items);
    item_ids.sort();
    assert_eq!(item_ids, vec![i1, i2]);
    for it in &items {
        assert_eq!(it["order"], oid);
        let expected_price = if it["product"] == a { "0.50" } else { "15.00" };
        assert_eq!(it["unit_price"], expected_price, "{it}");
        assert_eq!(it["user"], json!(user.username));
    }
    assert_eq!(node.stock(a).await, 90);
    assert_eq!(node.stock(b).await, 9);

    // The lines now belong to the order.
    let r = node
        .get(&format!("/api/orderitems/{i1}/"), user.tok())
        .await;
    r.expect(200);
    assert_eq!(r.json["order"], oid);
    assert_eq!(r.json["unit_price"], "0.50");
    let r = node
        .get(&format!("/api/orderitems/{i3}/"), user.tok())
        .await;
    assert_eq!(r.expect(200)["order"], Value::Null);

    // Ordered lines cannot be changed or removed.
    let r = node
        .patch(
            &format!("/api/orderitems/{i1}/"),
            user.tok(),
            &json!({"quantity": 99}),
        )
        .await;
    r.expect_one_of(&[400, 409]);
    let r = node
        .delete(&format!("/api/orderitems/{i1}/"), user.tok())
        .await;
    r.expect_one_of(&[400, 409]);
    let r = node
        .get(&format!("/api/orderitems/{i1}/"), user.tok())
        .await;
    assert_eq!(r.expect(200)["quantity"], 10);
    assert_eq!(r.json["order"], oid);

    // An already-ordered line cannot be checked out again.
    let r = node
        .post("/api/orders/", user.tok(), &json!({"order_items": [i1]}))
        .await;
    r.expect_one_of(&[400, 409]);
    assert_eq!(node.stock(a).await, 90);
    assert_eq!(node.list("/api/orders/", user.tok()).await.len(), 1);

    let order = node.get(&format!("/api/orders/{oid}/"), user.tok()).await;
    assert_eq!(order.expect(200)["total"], "20.00");
    assert_eq!(order.json["items"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_users_items_and_orders_are_not_found() {
    let s = shop().await;
    let node = &s.node;
    let pid = s.product("Mic", 20, "99.00").await;
    let alice = node.new_user("alice").await;
    let bob = node.new_user("bob").await;

    let cart = node.add_cart_item(&alice.access, pid, 1).await["id"]
        .as_i64()
        .unwrap();
    let order = node.place_order(&alice.access, &[(pid, 2)]).await;
    let oid = order["id"].as_i64().unwrap();
    let ordered_item = order["items"][0]["id"].as_i64().unwrap();

    for iid in [cart, ordered_item] {
        let path = format!("/api/orderitems/{iid}/");
        node.get(&path, bob.tok()).await.expect_not_found();
        node.patch(&path, bob.tok(), &json!({"quantity": 3}))
            .await
            .expect_not_found();
        node.delete(&path, bob.tok()).await.expect_not_found();
    }
    node.get(&format!("/api/orders/{oid}/"), bob.tok())
        .await
        .expect_not_found();
    node.post_empty(&format!("/api/orders/{oid}/cancel/"), bob.tok())
        .await
        .expect_not_found();

    // Bob cannot check out Alice's cart line.
    let r = node
        .post("/api/orders/", bob.tok(), &json!({"order_items": [cart]}))
        .await;
    r.expect_one_of(&[400, 404]);

    // Bob's lists do not show Alice's data.
    assert!(node.list("/api/orderitems/", bob.tok()).await.is_empty());
    assert!(node.list("/api/orders/", bob.tok()).await.is_empty());

    // Alice's data is untouched.
    let r = node
        .get(&format!("/api/orderitems/{cart}/"), alice.tok())
        .await;
    assert_eq!(r.expect(200)["quantity"], 1);
    assert_eq!(r.json["order"], Value::Null);
    let r = node.get(&format!("/api/orders/{oid}/"), alice.tok()).await;
    assert_eq!(r.expect(200)["status"], "placed");
    assert_eq!(node.stock(pid).await, 18);
    assert_eq!(node.list("/api/orderitems/", alice.tok()).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_sees_everything() {
    let s = shop().await;
    let node = &s.node;
    let pid = s.product("Cable", 100, "4.00").await;
    let alice = node.new_user("alice").await;
    let bob = node.new_user("bob").await;
    let oa = node.place_order(&alice.access, &[(pid, 1)]).await["id"]
        .as_i64()
        .unwrap();
    let ob = node.place_order(&bob.access, &[(pid, 2)]).await["id"]
        .as_i64()
        .unwrap();
    let cart_b = node.add_cart_item(&bob.access, pid, 3).await["id"]
        .as_i64()
        .unwrap();

    let orders = node.list("/api/orders/", s.admin()).await;
    let oids = ids(&orders);
    assert!(
        oids.contains(&oa) && oids.contains(&ob),
        "admin sees all orders: {oids:?}"
    );
    let items = node.list("/api/orderitems/", s.admin()).await;
    let iids = ids(&items);
    assert!(iids.contains(&cart_b), "admin sees all items: {iids:?}");
    assert_eq!(items.len(), 3);

    let r = node.get(&format!("/api/orders/{oa}/"), s.admin()).await;
    assert_eq!(r.expect(200)["user"], json!(alice.username));
    node.get(&format!("/api/orderitems/{cart_b}/"), s.admin())
        .await
        .expect(200);

    // Admin may cancel someone else's order.
    let r = node
        .post_empty(&format!("/api/orders/{ob}/cancel/"), s.admin())
        .await;
    assert_eq!(r.expect(200)["status"], "cancelled");
    assert_eq!(node.stock(pid).await, 99);
    let r = node.get(&format!("/api/orders/{ob}/"), bob.tok()).await;
    assert_eq!(r.expect(200)["status"], "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_total_is_computed_by_the_server() {
    let s = shop().await;
    let node = &s.node;
    let a = s.product("Slide", 10, "19.99").await;
    let b = s.product("Pick", 10, "0.05").await;
    let user = node.new_user("maths").await;

    let r = node
        .post(
            "/api/orders/",
            user.tok(),
            &json!({"items": [{"product": a, "quantity": 3}, {"product": b, "quantity": 2}],
                    "total": "0.01", "status": "cancelled", "user": "admin"}),
        )
        .await;
    r.expect(201);
    assert_eq!(r.json["total"], "60.07", "3 × 19.99 + 2 × 0.05: {}", r.text);
    assert_eq!(r.json["status"], "placed");
    assert_eq!(r.json["user"], json!(user.username));
    let oid = r.id();
    let items = r.json["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    let line_a = items
        .iter()
        .find(|i| i["product"] == a)
        .expect("line for a");
    assert_eq!(line_a["quantity"], 3);
    assert_eq!(line_a["unit_price"], "19.99");
    assert_eq!(line_a["product_name"], "Slide");
    assert_eq!(line_a["order"], oid);
    let line_b = items
        .iter()
        .find(|i| i["product"] == b)
        .expect("line for b");
    assert_eq!(line_b["quantity"], 2);
    assert_eq!(line_b["unit_price"], "0.05");

    assert_eq!(node.stock(a).await, 7);
    assert_eq!(node.stock(b).await, 8);
    let r = node.get(&format!("/api/orders/{oid}/"), user.tok()).await;
    assert_eq!(r.expect(200)["total"], "60.07");

    // Large totals keep exact cents.
    let big = s.product("Grand Piano", 5, "99999999.99").await;
    let r = node.order(&user.access, &[(big, 3)]).await;
    r.expect(201);
    assert_eq!(r.json["total"], "299999999.97");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_product_twice_beyond_stock_conflicts_and_changes_nothing() {
    let s = shop().await;
    let node = &s.node;
    let a = s.product("Tube", 5, "30.00").await;
    let user = node.new_user("greedy").await;

    let r = node.order(&user.access, &[(a, 3), (a, 3)]).await;
    r.expect_detail_eq(409, "Insufficient stock");
    let lines = r.json["items"].as_array().expect("items in 409 body");
    assert!(!lines.is_empty(), "{}", r.text);
    for l in lines {
        assert_eq!(l["product"], a, "{}", r.text);
        assert_eq!(l["available"], 5, "{}", r.text);
        let req = l["requested"].as_i64().expect("requested");
        assert!(
            req > 5,
            "an insufficient line must request more than available: {}",
            r.text
        );
    }
    assert_eq!(node.stock(a).await, 5);
    assert!(node.list("/api/orders/", user.tok()).await.is_empty());
    assert!(node.list("/api/orders/", s.admin()).await.is_empty());
    assert!(node.list("/api/orderitems/", user.tok()).await.is_empty());

    // Exactly the stock is fine.
    let r = node.order(&user.access, &[(a, 2), (a, 3)]).await;
    r.expect(201);
    assert_eq!(node.stock(a).await, 0);
    // And now nothing is left.
    let r = node.order(&user.access, &[(a, 1)]).await;
    r.expect_json(
        409,
        &json!({"detail": "Insufficient stock",
                "items": [{"product": a, "requested": 1, "available": 0}]}),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_product_order_is_all_or_nothing() {
    let s = shop().await;
    let node = &s.node;
    let plenty = s.product("Plenty", 10, "1.00").await;
    let scarce = s.product("Scarce", 1, "2.00").await;
    let user = node.new_user("allornothing").await;

    let r = node.order(&user.access, &[(plenty, 2), (scarce, 2)]).await;
    r.expect_json(
        409,
        &json!({"detail": "Insufficient stock",
                "items": [{"product": scarce, "requested": 2, "available": 1}]}),
    );
    assert_eq!(node.stock(plenty).await, 10);
    assert_eq!(node.stock(scarce).await, 1);
    assert!(node.list("/api/orders/", user.tok()).await.is_empty());

    // Same through cart checkout: cart lines stay in the cart. (A cart takes no more than
    // the stock, so the stock falls after the lines were added.)
    let path = format!("/api/products/{scarce}/");
    let (two, one) = (json!({"stock": 2}), json!({"stock": 1}));
    let set_stock = |body| node.patch(&path, s.admin(), body);
    set_stock(&two).await.expect(200);
    let i1 = node.add_cart_item(&user.access, plenty, 2).await["id"]
        .as_i64()
        .unwrap();
    let i2 = node.add_cart_item(&user.access, scarce, 2).await["id"]
        .as_i64()
        .unwrap();
    set_stock(&one).await.expect(200);
    let r = node
        .post(
            "/api/orders/",
            user.tok(),
            &json!({"order_items": [i1, i2]}),
        )
        .await;
    r.expect_json(
        409,
        &json!({"detail": "Insufficient stock",
                "items": [{"product": scarce, "requested": 2, "available": 1}]}),
    );
    assert_eq!(node.stock(plenty).await, 10);
    assert_eq!(node.stock(scarce).await, 1);
    for iid in [i1, i2] {
        let r = node
            .get(&format!("/api/orderitems/{iid}/"), user.tok())
            .await;
        assert_eq!(r.expect(200)["order"], Value::Null);
        assert_eq!(r.json["unit_price"], Value::Null);
    }
    assert!(node.list("/api/orders/", user.tok()).await.is_empty());

    // Fix the cart and check out.
    node.patch(
        &format!("/api/orderitems/{i2}/"),
        user.tok(),
        &json!({"quantity": 1}),
    )
    .await
    .expect(200);
    let r = node
        .post(
            "/api/orders/",
            user.tok(),
            &json!({"order_items": [i1, i2]}),
        )
        .await;
    r.expect(201);
    assert_eq!(r.json["total"], "4.00");
    assert_eq!(node.stock(plenty).await, 8);
    assert_eq!(node.stock(scarce).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unit_price_is_frozen_at_order_time() {
    let s = shop().await;
    let node = &s.node;
    let a = s.product("Metronome", 10, "19.99").await;
    let user = node.new_user("frozen").await;
    let order = node.place_order(&user.access, &[(a, 2)]).await;
    let oid = order["id"].as_i64().unwrap();
    assert_eq!(order["total"], "39.98");

    node.patch(
        &format!("/api/products/{a}/"),
        s.admin(),
        &json!({"price": "25.00", "name": "Metronome Pro"}),
    )
    .await
    .expect(200);

    let r = node.get(&format!("/api/orders/{oid}/"), user.tok()).await;
    r.expect(200);
    assert_eq!(r.json["total"], "39.98");
    assert_eq!(r.json["items"][0]["unit_price"], "19.99");
    assert_eq!(r.json["items"][0]["quantity"], 2);

    // A new order uses the new price.
    let order2 = node.place_order(&user.access, &[(a, 1)]).await;
    assert_eq!(order2["total"], "25.00");
    assert_eq!(order2["items"][0]["unit_price"], "25.00");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_returns_stock_and_cancelling_twice_conflicts() {
    let s = shop().await;
    let node = &s.node;
    let a = s.product("Pedalboard", 10, "120.00").await;
    let b = s.product("Patch cable", 10, "3.00").await;
    let user = node.new_user("canceller").await;
    let order = node.place_order(&user.access, &[(a, 4), (b, 6)]).await;
    let oid = order["id"].as_i64().unwrap();
    assert_eq!(node.stock(a).await, 6);
    assert_eq!(node.stock(b).await, 4);

    let r = node
        .post_empty(&format!("/api/orders/{oid}/cancel/"), user.tok())
        .await;
    r.expect(200);
    assert_eq!(r.json["id"], oid);
    assert_eq!(r.json["status"], "cancelled");
    assert_eq!(r.json["total"], "498.00");
    assert_eq!(node.stock(a).await, 10);
    assert_eq!(node.stock(b).await, 10);

    node.post_empty(&format!("/api/orders/{oid}/cancel/"), user.tok())
        .await
        .expect_detail(409);
    assert_eq!(
        node.stock(a).await,
        10,
        "second cancel must not return stock again"
    );
    assert_eq!(node.stock(b).await, 10);
    let r = node.get(&format!("/api/orders/{oid}/"), user.tok()).await;
    assert_eq!(r.expect(200)["status"], "cancelled");

    node.post_empty("/api/orders/987654/cancel/", user.tok())
        .await
        .expect_not_found();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_replays_the_first_result() {
    let s = shop().await;
    let node = &s.node;
    let a = s.product("Drumsticks", 10, "12.00").await;
    let b = s.product("Drum key", 10, "2.00").await;
    let user = node.new_user("retrier").await;
    let body = items_body(&[(a, 3)]);
    let key = unique_name("idem");

    let send = |body: Value, key: String| {
        let rb = node
            .request(Method::POST, "/api/orders/", user.tok())
            .header("Idempotency-Key", key)
            .json(&body);
        node.send(rb)
    };

    let first = send(body.clone(), key.clone()).await;
    first.expect(201);
    let oid = first.id();
    assert_eq!(node.stock(a).await, 7);

    let again = send(body.clone(), key.clone()).await;
    again.expect_one_of(&[200, 201]);
    assert_eq!(again.id(), oid, "same key and body returns the first order");
    assert_eq!(again.json["total"], first.json["total"]);
    assert_eq!(again.json["items"], first.json["items"]);
    assert_eq!(node.stock(a).await, 7, "stock taken only once");
    assert_eq!(ids(&node.list("/api/orders/", user.tok()).await), vec![oid]);

    // Same key, different body.
    let r = send(items_body(&[(b, 1)]), key.clone()).await;
    r.expect_detail(409);
    let r = send(items_body(&[(a, 4)]), key.clone()).await;
    r.expect_detail(409);
    assert_eq!(node.stock(a).await, 7);
    assert_eq!(node.stock(b).await, 10);
    assert_eq!(node.list("/api/orders/", user.tok()).await.len(), 1);

    // A different key places a new order.
    let r = send(body.clone(), unique_name("idem")).await;
    r.expect(201);
    assert_ne!(r.id(), oid);
    assert_eq!(node.stock(a).await, 4);
    // No key: every request is a new order.
    node.place_order(&user.access, &[(a, 1)]).await;
    node.place_order(&user.access, &[(a, 1)]).await;
    assert_eq!(node.stock(a).await, 2);
    assert_eq!(node.list("/api/orders/", user.tok()).await.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_are_listed_newest_first_with_limit_and_offset() {
    let s = shop().await;
    let node = &s.node;
    let a = s.product("Rosin", 100, "6.00").await;
    let user = node.new_user("collector").await;
    let mut placed = Vec::new();
    for q in 1..=4 {
        placed.push(
            node.place_order(&user.access, &[(a, q)]).await["id"]
                .as_i64()
                .unwrap(),
        );
    }
    let mut newest_first = placed.clone();
    newest_first.reverse();

    let list = node.list("/api/orders/", user.tok()).await;
    assert_eq!(ids(&list), newest_first);
    let stamps: Vec<&str> = list
        .iter()
        .map(|o| o["created_at"].as_str().unwrap())
        .collect();
    for w in stamps.windows(2) {
        assert!(
            w[0] >= w[1],
            "created_at must not increase down the list: {stamps:?}"
        );
    }

    let page = node.list("/api/orders/?limit=2", user.tok()).await;
    assert_eq!(ids(&page), newest_first[0..2].to_vec());
    let page = node.list("/api/orders/?limit=2&offset=2", user.tok()).await;
    assert_eq!(ids(&page), newest_first[2..4].to_vec());
    let page = node.list("/api/orders/?offset=3", user.tok()).await;
    assert_eq!(ids(&page), newest_first[3..4].to_vec());

    // Order items take limit/offset too.
    let items = node.list("/api/orderitems/", user.tok()).await;
    assert_eq!(items.len(), 4);
    let page = node.list("/api/orderitems/?limit=3", user.tok()).await;
    assert_eq!(page.len(), 3);
    let page = node
        .list("/api/orderitems/?limit=3&offset=3", user.tok())
        .await;
    assert_eq!(page.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quantity_validation() {
    let s = shop().await;
    let node = &s.node;
    let a = s.product("Bulk picks", 2000, "0.10").await;
    let user = node.new_user("bulk").await;

    for q in [
        json!(0),
        json!(1001),
        json!("x"),
        json!(-1),
        json!(1.5),
        json!(null),
    ] {
        node.post(
            "/api/orderitems/",
            user.tok(),
            &json!({"product": a, "quantity": q}),
        )
        .await
        .expect_field_error("quantity");
        let r = node
            .post(
                "/api/orders/",
                user.tok(),
                &json!({"items": [{"product": a, "quantity": q}]}),
            )
            .await;
        assert_eq!(r.status, 400, "order with quantity {q}: {}", r.text);
    }
    node.post("/api/orderitems/", user.tok(), &json!({"product": a}))
        .await
        .expect_field_error("quantity");
    node.post("/api/orderitems/", user.tok(), &json!({"quantity": 1}))
        .await
        .expect_field_error("product");
    node.post(
        "/api/orderitems/",
        user.tok(),
        &json!({"product": 987654, "quantity": 1}),
    )
    .await
    .expect_field_error("product");
    assert_eq!(node.stock(a).await, 2000);
    assert!(node.list("/api/orderitems/", user.tok()).await.is_empty());
    assert!(node.list("/api/orders/", user.tok()).await.is_empty());

    // Orders with no lines, unknown products or a malformed body.
    for body in [
        json!({"items": []}),
        json!({"order_items": []}),
        json!({}),
        json!({"items": [{"product": 987654, "quantity": 1}]}),
        json!({"items": [{"quantity": 1}]}),
        json!({"items": "all of them"}),
    ] {
        let r = node.post("/api/orders/", user.tok(), &body).await;
        assert_eq!(r.status, 400, "order body {body}: {}", r.text);
        assert!(r.json.is_object(), "400 body is a JSON object: {}", r.text);
    }
    assert!(node.list("/api/orders/", user.tok()).await.is_empty());

    // PATCH validates too.
    let iid = node.add_cart_item(&user.access, a, 1).await["id"]
        .as_i64()
        .unwrap();
    for q in [json!(0), json!(1001), json!("x")] {
        node.patch(
            &format!("/api/orderitems/{iid}/"),
            user.tok(),
            &json!({"quantity": q}),
        )
        .await
        .expect_field_error("quantity");
    }

    // Boundaries.
    node.patch(
        &format!("/api/orderitems/{iid}/"),
        user.tok(),
        &json!({"quantity": 1000}),
    )
    .await
    .expect(200);
    let r = node.order(&user.access, &[(a, 1000)]).await;
    r.expect(201);
    assert_eq!(r.json["total"], "100.00");
    assert_eq!(node.stock(a).await, 1000);
}

/// Another user sending the same Idempotency-Key gets their own new order, never the first
/// user's order (that would leak another user's data).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_do_not_cross_users() {
    let s = shop().await;
    let node = &s.node;
    let a = s.product("Shared key", 10, "5.00").await;
    let alice = node.new_user("alice").await;
    let bob = node.new_user("bob").await;
    let key = unique_name("shared");
    let body = items_body(&[(a, 1)]);
    let send = |token: &str| {
        node.send(
            node.request(Method::POST, "/api/orders/", Some(token))
                .header("Idempotency-Key", key.as_str())
                .json(&body),
        )
    };
    let ra = send(&alice.access).await;
    ra.expect(201);
    let rb = send(&bob.access).await;
    rb.expect(201);
    assert_ne!(rb.id(), ra.id(), "bob must not get alice's order");
    assert_eq!(rb.json["user"], json!(bob.username));
    assert_eq!(node.stock(a).await, 8);
    assert_eq!(
        ids(&node.list("/api/orders/", bob.tok()).await),
        vec![rb.id()]
    );
    assert_eq!(
        ids(&node.list("/api/orders/", alice.tok()).await),
        vec![ra.id()]
    );
}
