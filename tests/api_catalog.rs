//! Categories and products: CRUD, permissions, filters, pagination, validation.
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
    let expected = json!({"id": id, "name": "Telecaster", "stock": 3, "price": "1299.99",
                          "description": "A guitar", "category": cat});
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
                    "description": "", "category": cat2}),
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

/// Products: Delta, Alpha, Echo, Charlie, Bravo (created in that order, so id order differs from
/// name order). Category A: Delta GUITAR strap, Alpha Guitar, Charlie Drum; B: Echo Cable, Bravo guitar.
async fn seed_filter_catalog(node: &Node, admin: &str) -> (i64, i64, Vec<(i64, &'static str)>) {
    let a = node.create_category(admin, "Cat A").await;
    let b = node.create_category(admin, "Cat B").await;
    let mut products = Vec::new();
    for (name, cat) in [
        ("Delta GUITAR strap", a),
        ("Alpha Guitar", a),
        ("Echo Cable", b),
        ("Charlie Drum", a),
        ("Bravo guitar", b),
    ] {
        let id = node.create_product(admin, name, 10, "5.00", cat).await;
        products.push((id, name));
    }
    (a, b, products)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn product_filters_and_ordering() {
    let node = Node::start();
    let admin = node.admin_token().await;
    let (a, b, products) = seed_filter_catalog(&node, &admin).await;
    let by_id: Vec<i64> = products.iter().map(|p| p.0).collect();
    let id_of = |n: &str| products.iter().find(|p| p.1 == n).unwrap().0;

    // Default: by id.
    let r = node.get("/api/products/", None).await;
    r.expect(200);
    assert_eq!(ids(r.array()), by_id);
    assert_eq!(r.total_count(), 5);
    assert_eq!(r.next_link(), None, "no Link next when everything fits");

    // category
    let r = node
        .get(&format!("/api/products/?category={a}"), None)
        .await;
    r.expect(200);
    assert_eq!(
        names(r.array()),
        vec!["Delta GUITAR strap", "Alpha Guitar", "Charlie Drum"]
    );
    assert_eq!(r.total_count(), 3);
    let r = node
        .get(&format!("/api/products/?category={b}"), None)
        .await;
    assert_eq!(names(r.array()), vec!["Echo Cable", "Bravo guitar"]);

    // name: case-insensitive substring
    let r = node.get("/api/products/?name=guitar", None).await;
    r.expect(200);
    assert_eq!(
        names(r.array()),
        vec!["Delta GUITAR strap", "Alpha Guitar", "Bravo guitar"]
    );
    assert_eq!(r.total_count(), 3);
    let r = node.get("/api/products/?name=uItA", None).await;
    assert_eq!(r.array().len(), 3);
    let r = node
        .get("/api/products/?name=nothing-like-this", None)
        .await;
    r.expect(200);
    assert!(r.array().is_empty());
    assert_eq!(r.total_count(), 0);

    // combined
    let r = node
        .get(&format!("/api/products/?category={a}&name=GUITAR"), None)
        .await;
    assert_eq!(names(r.array()), vec!["Delta GUITAR strap", "Alpha Guitar"]);
    assert_eq!(r.total_count(), 2);

    // order_by_name
    let asc = vec![
        "Alpha Guitar",
        "Bravo guitar",
        "Charlie Drum",
        "Delta GUITAR strap",
        "Echo Cable",
    ];
    let mut desc = asc.clone();
    desc.reverse();
    let r = node.get("/api/products/?order_by_name=asc", None).await;
    assert_eq!(names(r.array()), asc);
    let r = node.get("/api/products/?order_by_name=desc", None).await;
    assert_eq!(names(r.array()), desc);
    let r = node
        .get("/api/products/?order_by_name=desc&limit=2&offset=1", None)
        .await;
    assert_eq!(names(r.array()), vec!["Delta GUITAR strap", "Charlie Drum"]);
    assert_eq!(r.total_count(), 5);
    let r = node
        .get(
            &format!("/api/products/?name=guitar&order_by_name=asc&category={b}"),
            None,
        )
        .await;
    assert_eq!(ids(r.array()), vec![id_of("Bravo guitar")]);

    // bad category filter: 400, not 500
    let r = node.get("/api/products/?category=abc", None).await;
    r.expect(400);
    assert!(
        r.json.is_object(),
        "400 body should be a JSON object: {}",
        r.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn product_pagination_total_count_and_link() {
    let node = Node::start();
    let admin = node.admin_token().await;
    let (_, _, products) = seed_filter_catalog(&node, &admin).await;
    let all: Vec<i64> = products.iter().map(|p| p.0).collect();

    let r = node.get("/api/products/?limit=2", None).await;
    r.expect(200);
    assert_eq!(ids(r.array()), all[0..2].to_vec());
    assert_eq!(r.total_count(), 5);
    assert!(
        r.next_link().is_some(),
        "Link rel=next expected: {:?}",
        r.headers
    );

    let r = node.get("/api/products/?limit=2&offset=2", None).await;
    assert_eq!(ids(r.array()), all[2..4].to_vec());
    assert_eq!(r.total_count(), 5);
    assert!(r.next_link().is_some());

    let r = node.get("/api/products/?limit=2&offset=4", None).await;
    assert_eq!(ids(r.array()), all[4..5].to_vec());
    assert_eq!(r.total_count(), 5);
    assert_eq!(r.next_link(), None, "no next on the last page");

    let r = node.get("/api/products/?limit=10&offset=5", None).await;
    r.expect(200);
    assert!(r.array().is_empty());
    assert_eq!(r.total_count(), 5);
    assert_eq!(r.next_link(), None);

    // Following the next links visits every product exactly once, in order.
    let mut seen = Vec::new();
    let mut next = Some("/api/products/?limit=2".to_string());
    let mut pages = 0;
    while let Some(link) = next {
        pages += 1;
        assert!(pages <= 10, "too many pages following Link next");
        let r = node.get(&link, None).await;
        r.expect(200);
        seen.extend(ids(r.array()));
        next = r.next_link();
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, all);

    // The next link keeps the filters.
    let r = node.get("/api/products/?name=guitar&limit=1", None).await;
    assert_eq!(r.total_count(), 3);
    let mut seen = ids(r.array());
    let mut next = r.next_link();
    while let Some(link) = next {
        let r = node.get(&link, None).await;
        r.expect(200);
        seen.extend(ids(r.array()));
        next = r.next_link();
        assert!(seen.len() <= 5);
    }
    let guitars: Vec<i64> = products
        .iter()
        .filter(|p| p.1.to_lowercase().contains("guitar"))
        .map(|p| p.0)
        .collect();
    assert_eq!(seen, guitars);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_is_capped_at_page_size() {
    let node = Node::builder().config("[node]\npage_size = 5\n").start();
    let admin = node.admin_token().await;
    let cat = node.create_category(&admin, "Cables").await;
    let mut all = Vec::new();
    for i in 0..7 {
        all.push(
            node.create_product(&admin, &format!("Cable {i}"), 1, "3.00", cat)
                .await,
        );
    }

    // No limit: default page size.
    let r = node.get("/api/products/", None).await;
    r.expect(200);
    assert_eq!(ids(r.array()), all[0..5].to_vec());
    assert_eq!(r.total_count(), 7);
    assert!(r.next_link().is_some(), "more remain, Link next expected");

    // Over the maximum: capped, not unbounded.
    let r = node.get("/api/products/?limit=100", None).await;
    r.expect(200);
    assert_eq!(r.array().len(), 5, "limit must be capped at page_size");
    assert_eq!(r.total_count(), 7);
    assert!(r.next_link().is_some());

    let r = node.get("/api/products/?limit=100000000", None).await;
    r.expect(200);
    assert_eq!(r.array().len(), 5);
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

/// Product lists are rebuilt from cached parts after stock changes: they must still show the
/// stock, price and membership of the moment, never an older state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_follow_stock_price_renames_and_deletes() {
    let node = Node::start();
    let admin = node.admin_token().await;
    let category = node.create_category(&admin, "Follow").await;
    let a = node
        .create_product(&admin, "Follow Alpha", 5, "10.00", category)
        .await;
    let b = node
        .create_product(&admin, "Follow Beta", 5, "20.00", category)
        .await;
    let path = format!("/api/products/?category={category}&order_by_name=asc");
    let names = |items: &[Value]| -> Vec<String> {
        items
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let first = node.list(&path, None).await;
    assert_eq!(names(&first), ["Follow Alpha", "Follow Beta"]);
    // Warm, then change stock through an order: the list shows the new stock.
    let buyer = node.new_user("follower").await;
    node.place_order(&buyer.access, &[(a, 2)]).await;
    let after_order = node.list(&path, None).await;
    assert_eq!(after_order[0]["stock"], 3);
    assert_eq!(after_order[1]["stock"], 5);
    // Price change.
    node.patch(
        &format!("/api/products/{b}/"),
        Some(&admin),
        &json!({"price": "25.50"}),
    )
    .await
    .expect(200);
    assert_eq!(node.list(&path, None).await[1]["price"], "25.50");
    // A rename moves it in name order.
    node.patch(
        &format!("/api/products/{a}/"),
        Some(&admin),
        &json!({"name": "Follow Zulu"}),
    )
    .await
    .expect(200);
    assert_eq!(
        names(&node.list(&path, None).await),
        ["Follow Beta", "Follow Zulu"]
    );
    // A delete (it was ordered, so it is archived) takes it out.
    node.delete(&format!("/api/products/{a}/"), Some(&admin))
        .await
        .expect(204);
    assert_eq!(names(&node.list(&path, None).await), ["Follow Beta"]);
    // Detail and list agree byte for byte on the remaining product.
    let detail = node.get(&format!("/api/products/{b}/"), None).await;
    assert_eq!(node.list(&path, None).await[0], *detail.expect(200));
}

/// A read the cache holds is answered before routing (`CachedReads`): the second GET of
/// each of these gets exactly what the first (routed, a miss) got, is counted and logged
/// the same way, and follows a write at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_reads_answer_as_the_router_does() {
    let node = Node::builder().env("RUST_LOG", "info").node_id(3).start();
    let admin = node.admin_token().await;
    let cat = node.create_category(&admin, "Drums").await;
    let first = node.create_product(&admin, "Snare", 5, "199.00", cat).await;
    node.create_product(&admin, "Kick", 2, "299.00", cat).await;
    let paths = [
        format!("/api/products/{first}/"),
        format!("/api/products/{first}"),
        "/api/products/?limit=1&order_by_name=asc".to_owned(),
        format!("/api/categories/{cat}/"),
        "/api/categories".to_owned(),
    ];
    for path in &paths {
        let miss = node.get(path, None).await;
        let hit = node.get(path, None).await;
        miss.expect(200);
        assert_eq!(hit.status, miss.status, "{path}");
        assert_eq!(hit.text, miss.text, "{path}");
        let without_date = |r: &Resp| {
            let mut headers: Vec<(String, String)> = r
                .headers
                .iter()
                .filter(|(name, _)| name.as_str() != "date")
                .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_owned()))
                .collect();
            headers.sort();
            headers
        };
        assert_eq!(without_date(&hit), without_date(&miss), "{path}");
        assert_eq!(hit.header("x-soundwave-node"), Some("3"), "{path}");
    }
    let list = node
        .get("/api/products/?limit=1&order_by_name=asc", None)
        .await;
    assert_eq!(list.header("x-total-count"), Some("2"));
    assert!(list.header("link").is_some_and(|l| l.contains("offset=1")));

    // Both answers of each path are counted under the route and logged.
    let metrics = node.get("/metrics", None).await.text;
    let detail_count: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("soundwave_http_requests_total")
                && l.contains(r#"route="/api/products/{id}""#)
                && l.contains(r#"status="200""#)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(detail_count, 4.0, "{metrics}");
    let needle = format!(r#"path="/api/products/{first}/""#);
    let logged = |node: &Node| {
        node.stderr_text()
            .lines()
            .filter(|l| l.contains("soundwave::access") && l.contains(&needle))
            .count()
    };
    wait_for(
        "the two access lines",
        std::time::Duration::from_secs(5),
        || async { (logged(&node) >= 2).then_some(()) },
    )
    .await;
    assert_eq!(logged(&node), 2, "{}", node.stderr_text());

    // A write is seen by the next read, cached or not.
    let both = "/api/products/?limit=2&order_by_name=asc";
    for _ in 0..2 {
        assert_eq!(node.get(both, None).await.expect(200)[1]["price"], "199.00");
    }
    node.patch(
        &format!("/api/products/{first}/"),
        Some(&admin),
        &json!({"price": "149.50"}),
    )
    .await
    .expect(200);
    let product = node.get(&format!("/api/products/{first}/"), None).await;
    assert_eq!(product.expect(200)["price"], "149.50");
    let list = node.get(both, None).await;
    assert_eq!(list.expect(200)[1]["price"], "149.50");
    node.patch(
        &format!("/api/categories/{cat}/"),
        Some(&admin),
        &json!({"name": "Percussion"}),
    )
    .await
    .expect(200);
    let category = node.get(&format!("/api/categories/{cat}/"), None).await;
    assert_eq!(category.expect(200)["name"], "Percussion");
}
