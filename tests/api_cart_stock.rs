//! A cart never holds more of a product than its stock: adding a line or raising its
//! quantity past it is the 409 an order would get, counting the user's other cart lines.
use common::*;
use soundwave_testkit as common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cart_holds_no_more_than_the_stock() {
    let node = Node::start();
    let admin = node.admin_token().await;
    let cat = node.create_category(&admin, "Tubes").await;
    let tube = node.create_product(&admin, "EL34", 3, "20.00", cat).await;
    let other = node.create_product(&admin, "KT88", 1, "30.00", cat).await;
    let user = node.new_user("tubes").await;
    let add = |product: i64, quantity: i64| {
        let node = &node;
        let token = user.access.clone();
        async move {
            node.post(
                "/api/orderitems/",
                Some(&token),
                &json!({"product": product, "quantity": quantity}),
            )
            .await
        }
    };

    add(tube, 4).await.expect_json(
        409,
        &json!({"detail": "Insufficient stock",
                "items": [{"product": tube, "requested": 4, "available": 3}]}),
    );
    let first = add(tube, 2).await.expect(201)["id"].as_i64().unwrap();
    // A second line of the same product counts with the first.
    add(tube, 2).await.expect_json(
        409,
        &json!({"detail": "Insufficient stock",
                "items": [{"product": tube, "requested": 4, "available": 3}]}),
    );
    add(tube, 1).await.expect(201);
    add(other, 1).await.expect(201);
    // Raising a line's quantity counts the other lines but not its own old quantity.
    let line = format!("/api/orderitems/{first}/");
    node.patch(&line, user.tok(), &json!({"quantity": 3}))
        .await
        .expect(409);
    node.patch(&line, user.tok(), &json!({"quantity": 1}))
        .await
        .expect(200);
    node.patch(&line, user.tok(), &json!({"quantity": 2}))
        .await
        .expect(200);
    // Another user's cart does not count against this one's.
    let other_user = node.new_user("tubes2").await;
    node.post(
        "/api/orderitems/",
        other_user.tok(),
        &json!({"product": tube, "quantity": 3}),
    )
    .await
    .expect(201);
    // Ordered lines leave the cart: after checkout the stock is what counts again.
    let cart: Vec<i64> = ids(&node.list("/api/orderitems/", user.tok()).await);
    node.post("/api/orders/", user.tok(), &json!({"order_items": cart}))
        .await
        .expect(201);
    assert_eq!(node.stock(tube).await, 0);
    add(tube, 1).await.expect(409);
}
