//! Product lists: filters, ordering, pagination and its headers, the page size cap, and
//! lists and reads served from the response cache.
use common::*;
use soundwave_testkit as common;

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

/// `ordering` by price, stock and newest, `in_stock` and `max_stock` (additive params), with
/// category and name filters and pages; a cached price or stock list follows stock changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn products_order_by_price_stock_and_newest_and_filter_by_stock() {
    let node = Node::start();
    let admin = node.admin_token().await;
    let cat = node.create_category(&admin, "Keys").await;
    let other = node.create_category(&admin, "Other").await;
    let mut made = Vec::new();
    for (name, stock, price, category) in [
        ("Organ", 0, "900.00", cat),
        ("Piano", 3, "2500.00", cat),
        ("Synth", 12, "700.00", cat),
        ("Melodica", 1, "30.00", cat),
        ("Piano stool", 0, "80.00", other),
    ] {
        made.push(
            node.create_product(&admin, name, stock, price, category)
                .await,
        );
    }
    let listed = |query: &str| {
        let node = &node;
        let query = query.to_owned();
        async move {
            let r = node.get(&format!("/api/products/?{query}"), None).await;
            r.expect(200);
            (names(r.array()), r.total_count())
        }
    };
    let five = |v: [&str; 5]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        listed("ordering=price").await.0,
        five(["Melodica", "Piano stool", "Synth", "Organ", "Piano"])
    );
    assert_eq!(
        listed("ordering=-price").await.0,
        five(["Piano", "Organ", "Synth", "Piano stool", "Melodica"])
    );
    assert_eq!(
        listed("ordering=-id").await.0,
        five(["Piano stool", "Melodica", "Synth", "Piano", "Organ"])
    );
    // Ties in stock keep id order.
    assert_eq!(
        listed("ordering=stock").await.0,
        five(["Organ", "Piano stool", "Melodica", "Piano", "Synth"])
    );
    let (in_stock, total) = listed("in_stock=true&ordering=-price&limit=2").await;
    assert_eq!((in_stock, total), (vec!["Piano".into(), "Synth".into()], 3));
    let (low, total) = listed("max_stock=1&ordering=stock").await;
    assert_eq!(total, 3);
    assert_eq!(low, ["Organ", "Piano stool", "Melodica"]);
    let query = format!("category={cat}&name=pian&ordering=-price");
    assert_eq!(listed(&query).await.0, ["Piano"]);
    let (newest_in_stock, _) = listed("in_stock=1&ordering=-id&offset=1").await;
    assert_eq!(newest_in_stock, ["Synth", "Piano"]);

    // A list by stock is rebuilt when stock changes (an order), not served stale.
    assert_eq!(listed("in_stock=true").await.1, 3);
    let buyer = node.new_user("keys").await;
    node.place_order(&buyer.access, &[(made[3], 1)]).await;
    let (after, total) = listed("in_stock=true").await;
    assert_eq!((after, total), (vec!["Piano".into(), "Synth".into()], 2));
    assert_eq!(listed("max_stock=0").await.1, 3);

    // Bad values are field errors.
    for (query, field) in [
        ("ordering=cheapest", "ordering"),
        ("ordering=price&order_by_name=asc", "ordering"),
        ("in_stock=maybe", "in_stock"),
        ("max_stock=-1", "max_stock"),
    ] {
        let r = node.get(&format!("/api/products/?{query}"), None).await;
        r.expect(400);
        assert!(r.json[field].is_array(), "{query}: {}", r.text);
    }
}
