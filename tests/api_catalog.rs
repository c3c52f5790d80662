//! Categories and products: CRUD, permissions, validation, conflicts.
use common::*;
use soundwave_testkit as common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn category_crud_as_admin() {
    let node = Node::start();
    let admin = node.admin_token().await;
    let tok = Some(admin.as_str());

    let r = node
        .post("/api/categories/", tok, &json!({"name": "Synths"}))
        .await;
    r.expect(201);
    let id = r.id();
    assert_eq!(r.json, json!({"id": id, "name": "Synths"}));

    let list = node.list("/api/categories/", None).await;
    assert!(
        list.contains(&json!({"id": id, "name": "Synths"})),
        "new category in list: {list:?}"
    );
    node.get(&format!("/api/categories/{id}/"), None)
        .await
        .expect_json(200, &json!({"id": id, "name": "Synths"}));

    node.put(
        &format!("/api/categories/{id}/"),
        tok,
        &json!({"name": "Synthesizers"}),
    )
    .await
    .expect_json(200, &json!({"id": id, "name": "Synthesizers"}));
    node.patch(
        &format!("/api/categories/{id}/"),
        tok,
        &json!({"name": "Modular"}),
    )
    .await
    .expect_json(200, &json!({"id": id, "name": "Modular"}));
    node.get(&format!("/api/categories/{id}/"), None)
        .await
        .expect_json(200, &json!({"id": id, "name": "Modular"}));

    // PUT needs the full representation.
    node.put(&format!("/api/categories/{id}/"), tok, &json!({}))
        .await
        .expect_field_error("name");

    node.delete(&format!("/api/categories/{id}/"), tok)
        .await
        .expect(204);
    node.get(&format!("/api/categories/{id}/"), None)
        .await
        .expect_not_found();
    node.delete(&format!("/api/categories/{id}/"), tok)
        .await
        .expect_not_found();
    let list = node.list("/api/categories/", None).await;
    assert!(
        !ids(&list).contains(&id),
        "deleted category still listed: {list:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn product_crud_as_admin_and_anonymous_reads() {
    let node = Node::start();
    let admin = node.admin_token().await;
    let tok = Some(admin.as_str());
    let cat = node.create_category(&admin, "Guitars").await;
    let cat2 = node.create_category(&admin, "Basses").await;

    let r = node
        .post(
            "/api/products/",
            tok,
            &json!({"name": "Telecaster", "stock": 3, "price": "1299.99",
                    "description": "A guitar", "category": cat}),
        )
        .await;
    r.expect(201);
    let id = r.id();
    // The image fields are additive: a product without images shows nulls.
    let expected = json!({"id": id, "name": "Telecaster", "stock": 3, "price": "1299.99",
                          "description": "A guitar", "category": cat,
                          "image": null, "thumbnail": null});
    assert_eq!(r.json, expected, "create response");

    // Anonymous reads.
    node.get(&format!("/api/products/{id}/"), None)
        .await
        .expect_json(200, &expected);
    let list = node.list("/api/products/", None).await;
    assert_eq!(list, vec![expected.clone()]);
    let cats = node.list("/api/categories/", None).await;
    assert_eq!(cats.len(), 2);

    // PATCH changes only what is sent.
    let r = node
        .patch(
            &format!("/api/products/{id}/"),
            tok,
            &json!({"price": "1199.00"}),
        )
        .await;
    let mut after_patch = expected.clone();
    after_patch["price"] = json!("1199.00");
    r.expect_json(200, &after_patch);

    // PUT with a partial body is rejected and changes nothing.
    let r = node
        .put(
            &format!("/api/products/{id}/"),
            tok,
            &json!({"price": "1.00"}),
        )
        .await;
    r.expect(400);
    assert_eq!(
        node.product(id).await,
        after_patch,
        "failed PUT must not change the product"
    );

    // PUT with the full representation replaces everything.
    let full = json!({"name": "Precision Bass", "stock": 7, "price": 899.5,
                      "description": "", "category": cat2});
    node.put(&format!("/api/products/{id}/"), tok, &full)
        .await
        .expect_json(
            200,
            &json!({"id": id, "name": "Precision Bass", "stock": 7, "price": "899.50",
                    "description": "", "category": cat2,
                    "image": null, "thumbnail": null}),
        );
    assert_eq!(node.stock(id).await, 7);

    // Delete (never ordered).
    node.delete(&format!("/api/products/{id}/"), tok)
        .await
        .expect(204);
    node.get(&format!("/api/products/{id}/"), None)
        .await
        .expect_not_found();
    assert!(node.list("/api/products/", None).await.is_empty());
    node.get("/api/products/987654/", None)
        .await
        .expect_not_found();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_admin_writes_are_forbidden() {
    let node = Node::start();
    let admin = node.admin_token().await;
    let cat = node.create_category(&admin, "Vinyl").await;
    let pid = node
        .create_product(&admin, "Blue Train", 5, "25.00", cat)
        .await;
    let user = node.new_user("shopper").await;
    let tok = user.tok();

    node.post("/api/categories/", tok, &json!({"name": "Nope"}))
        .await
        .expect_forbidden();
    node.put(
        &format!("/api/categories/{cat}/"),
        tok,
        &json!({"name": "Nope"}),
    )
    .await
    .expect_forbidden();
    node.patch(
        &format!("/api/categories/{cat}/"),
        tok,
        &json!({"name": "Nope"}),
    )
    .await
    .expect_forbidden();
    node.delete(&format!("/api/categories/{cat}/"), tok)
        .await
        .expect_forbidden();

    node.post("/api/products/", tok, &product_body("Nope", 1, "1.00", cat))
        .await
        .expect_forbidden();
    node.put(
        &format!("/api/products/{pid}/"),
        tok,
        &product_body("Nope", 1, "1.00", cat),
    )
    .await
    .expect_forbidden();
    node.patch(
        &format!("/api/products/{pid}/"),
        tok,
        &json!({"stock": 1000}),
    )
    .await
    .expect_forbidden();
    node.delete(&format!("/api/products/{pid}/"), tok)
        .await
        .expect_forbidden();

    // Nothing changed.
    assert_eq!(
        node.list("/api/categories/", None).await,
        vec![json!({"id": cat, "name": "Vinyl"})]
    );
    let p = node.product(pid).await;
    assert_eq!(p["name"], "Blue Train");
    assert_eq!(p["stock"], 5);
    assert_eq!(node.list("/api/products/", None).await.len(), 1);

    // A signed-up user reads the catalog fine.
    node.get("/api/products/", tok).await.expect(200);
    node.get(&format!("/api/categories/{cat}/"), tok)
        .await
        .expect(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_writes_are_unauthenticated() {
    let node = Node::start();
    let admin = node.admin_token().await;
    let cat = node.create_category(&admin, "Drums").await;
    let pid = node.create_product(&admin, "Snare", 5, "199.00", cat).await;

    node.post("/api/categories/", None, &json!({"name": "Nope"}))
        .await
        .expect_unauthenticated();
    node.put(
        &format!("/api/categories/{cat}/"),
        None,
        &json!({"name": "Nope"}),
    )
    .await
    .expect_unauthenticated();
    node.patch(
        &format!("/api/categories/{cat}/"),
        None,
        &json!({"name": "Nope"}),
    )
    .await
    .expect_unauthenticated();
    node.delete(&format!("/api/categories/{cat}/"), None)
        .await
        .expect_unauthenticated();
    node.post(
        "/api/products/",
        None,
        &product_body("Nope", 1, "1.00", cat),
    )
    .await
    .expect_unauthenticated();
    node.put(
        &format!("/api/products/{pid}/"),
        None,
        &product_body("Nope", 1, "1.00", cat),
    )
    .await
    .expect_unauthenticated();
    node.patch(&format!("/api/products/{pid}/"), None, &json!({"stock": 0}))
        .await
        .expect_unauthenticated();
    node.delete(&format!("/api/products/{pid}/"), None)
        .await
        .expect_unauthenticated();

    assert_eq!(node.stock(pid).await, 5);
    assert_eq!(node.product(pid).await["name"], "Snare");
    assert_eq!(node.list("/api/categories/", None).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_category_with_products_conflicts() {
    let node = Node::start();
    let admin = node.admin_token().await;
    let tok = Some(admin.as_str());
    let cat = node.create_category(&admin, "Pedals").await;
    let pid = node.create_product(&admin, "Fuzz", 2, "80.00", cat).await;

    let r = node.delete(&format!("/api/categories/{cat}/"), tok).await;
    r.expect_detail(409);
    node.get(&format!("/api/categories/{cat}/"), None)
        .await
        .expect_json(200, &json!({"id": cat, "name": "Pedals"}));
    assert_eq!(node.product(pid).await["category"], cat);

    node.delete(&format!("/api/products/{pid}/"), tok)
        .await
        .expect(204);
    node.delete(&format!("/api/categories/{cat}/"), tok)
        .await
        .expect(204);
    node.get(&format!("/api/categories/{cat}/"), None)
        .await
        .expect_not_found();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_category_name_conflicts_case_insensitively() {
    let node = Node::start();
    let admin = node.admin_token().await;
    let tok = Some(admin.as_str());
    let first = node.create_category(&admin, "Vinyl Records").await;

    node.post("/api/categories/", tok, &json!({"name": "Vinyl Records"}))
        .await
        .expect_detail(409);
    node.post("/api/categories/", tok, &json!({"name": "vinyl RECORDS"}))
        .await
        .expect_detail(409);
    assert_eq!(
        node.list("/api/categories/", None).await,
        vec![json!({"id": first, "name": "Vinyl Records"})]
    );

    // Renaming another category onto an existing name is a duplicate too.
    let other = node.create_category(&admin, "Disks").await;
    node.patch(
        &format!("/api/categories/{other}/"),
        tok,
        &json!({"name": "VINYL records"}),
    )
    .await
    .expect_detail(409);
    node.put(
        &format!("/api/categories/{other}/"),
        tok,
        &json!({"name": "vinyl records"}),
    )
    .await
    .expect_detail(409);
    node.get(&format!("/api/categories/{other}/"), None)
        .await
        .expect_json(200, &json!({"id": other, "name": "Disks"}));

    // Renaming a category to a different casing of its own name is fine.
    node.patch(
        &format!("/api/categories/{first}/"),
        tok,
        &json!({"name": "VINYL RECORDS"}),
    )
    .await
    .expect_json(200, &json!({"id": first, "name": "VINYL RECORDS"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn category_name_validation() {
    let node = Node::start();
    let admin = node.admin_token().await;
    let tok = Some(admin.as_str());
    node.post("/api/categories/", tok, &json!({"name": ""}))
        .await
        .expect_field_error("name");
    node.post("/api/categories/", tok, &json!({"name": "x".repeat(201)}))
        .await
        .expect_field_error("name");
    node.post("/api/categories/", tok, &json!({}))
        .await
        .expect_field_error("name");
    let r = node
        .post("/api/categories/", tok, &json!({"name": "y".repeat(200)}))
        .await;
    r.expect(201);
    assert_eq!(r.json["name"], "y".repeat(200));
    assert_eq!(node.list("/api/categories/", None).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn price_shapes_are_normalised() {
    let node = Node::start();
    let admin = node.admin_token().await;
    let tok = Some(admin.as_str());
    let cat = node.create_category(&admin, "Amps").await;
    let cases = [
        (json!("12000.00"), "12000.00"),
        (json!(12000), "12000.00"),
        (json!("12000"), "12000.00"),
        (json!(12.5), "12.50"),
        (json!("12.5"), "12.50"),
        (json!("0.10"), "0.10"),
        (json!(0), "0.00"),
        (json!("99999999.99"), "99999999.99"),
        (json!(19.99), "19.99"),
    ];
    for (i, (input, out)) in cases.iter().enumerate() {
        let r = node
            .post(
                "/api/products/",
                tok,
                &json!({"name": format!("Amp {i}"), "stock": 1, "price": input,
                        "description": "", "category": cat}),
            )
            .await;
        r.expect(201);
        assert_eq!(
            r.json["price"],
            json!(out),
            "price {input} -> {out}: {}",
            r.text
        );
        let id = r.id();
        assert_eq!(node.product(id).await["price"], json!(out));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_prices_are_field_errors() {
    let node = Node::start();
    let admin = node.admin_token().await;
    let tok = Some(admin.as_str());
    let cat = node.create_category(&admin, "Amps").await;
    let bad = [
        json!("-1.00"),
        json!(-1),
        json!("-0.01"),
        json!("1.234"),
        json!(1.234),
        json!("12345678901"),
        json!(12345678901_i64),
        json!("123456789.12"),
        json!("abc"),
        json!(""),
        json!(true),
        json!(null),
        json!([1]),
    ];
    for price in &bad {
        let r = node
            .post(
                "/api/products/",
                tok,
                &json!({"name": "Bad price", "stock": 1, "price": price,
                        "description": "", "category": cat}),
            )
            .await;
        assert_eq!(r.status, 400, "price {price} must be rejected: {}", r.text);
        r.expect_field_error("price");
    }
    // PATCH validates too.
    let pid = node.create_product(&admin, "Good", 1, "10.00", cat).await;
    node.patch(
        &format!("/api/products/{pid}/"),
        tok,
        &json!({"price": "-5"}),
    )
    .await
    .expect_field_error("price");
    node.patch(
        &format!("/api/products/{pid}/"),
        tok,
        &json!({"price": "0.001"}),
    )
    .await
    .expect_field_error("price");
    assert_eq!(node.product(pid).await["price"], "10.00");
    assert_eq!(node.list("/api/products/", None).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn product_field_validation() {
    let node = Node::start();
    let admin = node.admin_token().await;
    let tok = Some(admin.as_str());
    let cat = node.create_category(&admin, "Keys").await;

    node.post(
        "/api/products/",
        tok,
        &product_body(&"n".repeat(201), 1, "1.00", cat),
    )
    .await
    .expect_field_error("name");
    node.post("/api/products/", tok, &product_body("", 1, "1.00", cat))
        .await
        .expect_field_error("name");
    node.post(
        "/api/products/",
        tok,
        &product_body("Piano", -1, "1.00", cat),
    )
    .await
    .expect_field_error("stock");
    node.post(
        "/api/products/",
        tok,
        &product_body("Piano", 1, "1.00", 999_999),
    )
    .await
    .expect_field_error("category");
    node.post(
        "/api/products/",
        tok,
        &json!({"name": "Piano", "stock": 1, "price": "1.00", "description": "", "category": "abc"}),
    )
    .await
    .expect_field_error("category");
    assert!(node.list("/api/products/", None).await.is_empty());

    // Boundaries that are fine.
    let r = node
        .post(
            "/api/products/",
            tok,
            &product_body(&"n".repeat(200), 0, "0.00", cat),
        )
        .await;
    r.expect(201);
    assert_eq!(r.json["stock"], 0);
    let pid = r.id();
    node.patch(
        &format!("/api/products/{pid}/"),
        tok,
        &json!({"category": 424_242}),
    )
    .await
    .expect_field_error("category");
    node.patch(&format!("/api/products/{pid}/"), tok, &json!({"stock": -3}))
        .await
        .expect_field_error("stock");
    assert_eq!(node.product(pid).await["category"], cat);
    assert_eq!(node.stock(pid).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_ordered_product_hides_it_but_orders_keep_it() {
    let node = Node::start();
    let admin = node.admin_token().await;
    let tok = Some(admin.as_str());
    let cat = node.create_category(&admin, "Merch").await;
    let gone = node
        .create_product(&admin, "Tour Shirt", 10, "20.00", cat)
        .await;
    let stays = node.create_product(&admin, "Poster", 10, "5.00", cat).await;
    let user = node.new_user("fan").await;

    let order = node.place_order(&user.access, &[(gone, 2)]).await;
    let oid = order["id"].as_i64().unwrap();

    node.delete(&format!("/api/products/{gone}/"), tok)
        .await
        .expect(204);
    node.get(&format!("/api/products/{gone}/"), None)
        .await
        .expect_not_found();
    let r = node.get("/api/products/", None).await;
    assert_eq!(ids(r.array()), vec![stays]);
    assert_eq!(r.total_count(), 1);
    let r = node.get("/api/products/?name=shirt", None).await;
    assert!(r.array().is_empty());
    assert_eq!(r.total_count(), 0);

    // Cannot be bought any more.
    let r = node.order(&user.access, &[(gone, 1)]).await;
    r.expect_one_of(&[400, 409]);
    let r = node
        .post(
            "/api/orderitems/",
            user.tok(),
            &json!({"product": gone, "quantity": 1}),
        )
        .await;
    r.expect_one_of(&[400, 409]);

    // The order still shows the line.
    let r = node.get(&format!("/api/orders/{oid}/"), user.tok()).await;
    r.expect(200);
    let items = r.json["items"].as_array().expect("items array");
    assert_eq!(items.len(), 1, "{}", r.text);
    assert_eq!(items[0]["product"], gone);
    assert_eq!(items[0]["product_name"], "Tour Shirt");
    assert_eq!(items[0]["quantity"], 2);
    assert_eq!(items[0]["unit_price"], "20.00");
    assert_eq!(r.json["total"], "40.00");
    let orders = node.list("/api/orders/", user.tok()).await;
    assert_eq!(ids(&orders), vec![oid]);

    // And cancelling that order still works.
    let r = node
        .post_empty(&format!("/api/orders/{oid}/cancel/"), user.tok())
        .await;
    r.expect(200);
    assert_eq!(r.json["status"], "cancelled");
    node.get(&format!("/api/products/{gone}/"), None)
        .await
        .expect_not_found();
}
