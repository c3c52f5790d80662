//! The staff's endpoints: order statuses, the order list's filters and CSV export, user
//! management and the sales dashboard; who may use them and what bad input gets.
use common::*;
use soundwave_testkit as common;

struct Shop {
    node: Node,
    admin: String,
    cat: i64,
}

async fn shop() -> Shop {
    let node = Node::start();
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
    async fn set_status(&self, token: Option<&str>, order: i64, status: &str) -> Resp {
        self.node
            .post(
                &format!("/api/orders/{order}/status/"),
                token,
                &json!({ "status": status }),
            )
            .await
    }
}

fn statuses(history: &Value) -> Vec<String> {
    history
        .as_array()
        .expect("status_history")
        .iter()
        .map(|c| c["status"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staff_move_an_order_through_its_statuses_and_stock_returns_only_on_cancel() {
    let s = shop().await;
    let node = &s.node;
    let pid = s.product("Amp", 10, "100.00").await;
    let buyer = node.new_user("mover").await;
    let order = node.place_order(&buyer.access, &[(pid, 3)]).await;
    let oid = order["id"].as_i64().unwrap();
    assert_eq!(node.stock(pid).await, 7);

    // Only staff move orders: the buyer is refused, and so is someone without a token.
    s.set_status(buyer.tok(), oid, "paid").await.expect(403);
    s.set_status(None, oid, "paid").await.expect(401);
    // Steps cannot be skipped or taken back.
    let r = s.set_status(s.admin(), oid, "shipped").await;
    r.expect(409);
    assert_eq!(
        r.json["detail"],
        "An order that is placed cannot become shipped."
    );
    for bad in [json!({"status": "lost"}), json!({"status": 3}), json!({})] {
        let r = node
            .post(&format!("/api/orders/{oid}/status/"), s.admin(), &bad)
            .await;
        r.expect(400);
        assert!(r.json["status"].is_array(), "{}", r.text);
    }
    s.set_status(s.admin(), 99_999, "paid").await.expect(404);

    for next in ["paid", "shipped"] {
        let r = s.set_status(s.admin(), oid, next).await;
        assert_eq!(r.expect(200)["status"], next);
    }
    // Shipped: neither the buyer nor staff can cancel any more, and stock stays taken.
    node.post_empty(&format!("/api/orders/{oid}/cancel/"), buyer.tok())
        .await
        .expect(403);
    s.set_status(s.admin(), oid, "cancelled").await.expect(409);
    let r = s.set_status(s.admin(), oid, "delivered").await;
    r.expect(200);
    assert_eq!(
        statuses(&r.json["status_history"]),
        ["placed", "paid", "shipped", "delivered"]
    );
    assert_eq!(r.json["status_history"][1]["by"], "admin");
    assert_eq!(node.stock(pid).await, 7);
    // The buyer sees the status and its history on their order.
    let mine = node
        .get(&format!("/api/orders/{oid}/"), buyer.tok())
        .await
        .expect(200)
        .clone();
    assert_eq!(mine["status"], "delivered");
    assert_eq!(statuses(&mine["status_history"]).len(), 4);

    // A paid order can be cancelled by staff: its stock comes back.
    let other = node.place_order(&buyer.access, &[(pid, 2)]).await;
    let other = other["id"].as_i64().unwrap();
    s.set_status(s.admin(), other, "paid").await.expect(200);
    // Paid: the owner can no longer cancel it themself.
    node.post_empty(&format!("/api/orders/{other}/cancel/"), buyer.tok())
        .await
        .expect(403);
    assert_eq!(node.stock(pid).await, 5);
    s.set_status(s.admin(), other, "cancelled")
        .await
        .expect(200);
    assert_eq!(node.stock(pid).await, 7);
    let r = s.set_status(s.admin(), other, "cancelled").await;
    r.expect(409);
    assert_eq!(r.json["detail"], "This order is already cancelled.");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_list_filters_by_status_customer_and_date_and_exports_csv() {
    let s = shop().await;
    let node = &s.node;
    let pid = s.product("Cable, \"long\"", 100, "5.00").await;
    let ann = node.new_user("ann").await;
    let ben = node.new_user("ben").await;
    let a1 = node.place_order(&ann.access, &[(pid, 1)]).await["id"]
        .as_i64()
        .unwrap();
    let b1 = node.place_order(&ben.access, &[(pid, 2)]).await["id"]
        .as_i64()
        .unwrap();
    let a2 = node.place_order(&ann.access, &[(pid, 3)]).await["id"]
        .as_i64()
        .unwrap();
    s.set_status(s.admin(), a1, "paid").await.expect(200);

    let listed = |path: String, token: Option<String>| async move {
        let r = node.get(&path, token.as_deref()).await;
        let body = r.expect(200).clone();
        let total: usize = r.header_required("x-total-count").parse().unwrap();
        (ids(body.as_array().unwrap()), total)
    };
    let admin = Some(s.admin.clone());
    assert_eq!(
        listed(format!("/api/orders/?user={}", ann.username), admin.clone()).await,
        (vec![a2, a1], 2)
    );
    assert_eq!(
        listed("/api/orders/?status=paid".into(), admin.clone()).await,
        (vec![a1], 1)
    );
    assert_eq!(
        listed("/api/orders/?status=placed&limit=1".into(), admin.clone()).await,
        (vec![a2], 2)
    );
    assert_eq!(
        listed("/api/orders/?user=nobody-at-all".into(), admin.clone()).await,
        (vec![], 0)
    );
    let today = node.get("/api/orders/", s.admin()).await.expect(200)[0]["created_at"]
        .as_str()
        .unwrap()[..10]
        .to_owned();
    assert_eq!(
        listed(
            format!("/api/orders/?date_from={today}&date_to={today}"),
            admin.clone()
        )
        .await
        .1,
        3
    );
    assert_eq!(
        listed("/api/orders/?date_to=2000-01-01".into(), admin.clone())
            .await
            .1,
        0
    );
    // A customer's filters stay within their own orders, whoever they name.
    assert_eq!(
        listed(
            format!("/api/orders/?user={}", ann.username),
            Some(ben.access.clone())
        )
        .await,
        (vec![b1], 1)
    );
    // Bad filters are field errors.
    for (query, field) in [
        ("status=lost", "status"),
        ("date_from=yesterday", "date_from"),
        ("date_from=2026-02-30", "date_from"),
        ("date_from=2026-03-02&date_to=2026-03-01", "date_to"),
    ] {
        let r = node.get(&format!("/api/orders/?{query}"), s.admin()).await;
        r.expect(400);
        assert!(r.json[field].is_array(), "{query}: {}", r.text);
    }

    // The export: staff only, CSV, the same filters, fields quoted.
    node.get("/api/orders/export/", ann.tok()).await.expect(403);
    let r = node
        .get(
            &format!("/api/orders/export/?user={}", ann.username),
            s.admin(),
        )
        .await;
    r.expect(200);
    assert_eq!(r.header_required("content-type"), "text/csv; charset=utf-8");
    assert_eq!(r.header_required("x-total-count"), "2");
    let lines: Vec<&str> = r.text.split("\r\n").collect();
    assert_eq!(lines[0], "id,created_at,user,status,total,lines,items");
    assert!(
        lines[1].starts_with(&format!("{a2},")),
        "newest first: {}",
        r.text
    );
    assert!(
        lines[1].ends_with(&format!(
            ",{},placed,15.00,1,\"3 x Cable, \"\"long\"\"\"",
            ann.username
        )),
        "{}",
        lines[1]
    );
    assert!(lines[2].contains(",paid,5.00,1,"), "{}", lines[2]);
    assert_eq!(lines[3], "");
    assert_eq!(lines.len(), 4);
    node.get("/api/orders/export/?status=nope", s.admin())
        .await
        .expect(400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staff_manage_users_and_a_deactivated_user_cannot_log_in_or_refresh() {
    let s = shop().await;
    let node = &s.node;
    let carl = node.new_user("carl").await;
    let dora = node.new_user("dora").await;

    // Listing and searching users is for staff.
    node.get("/api/users/", carl.tok()).await.expect(403);
    node.get("/api/users/", None).await.expect(401);
    let r = node
        .get(&format!("/api/users/?search={}", carl.username), s.admin())
        .await;
    let found = r.expect(200).as_array().unwrap().clone();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["username"], carl.username.as_str());
    assert_eq!(found[0]["is_active"], true);
    assert!(found[0].get("password").is_none());
    assert_eq!(r.header_required("x-total-count"), "1");

    // Only staff change users; never themselves; bad input is a field error.
    let path = format!("/api/users/{}/", dora.id);
    node.patch(&path, carl.tok(), &json!({"is_staff": true}))
        .await
        .expect(403);
    let admin_id = node.get("/api/users/me/", s.admin()).await.expect(200)["id"].clone();
    node.patch(
        &format!("/api/users/{admin_id}/"),
        s.admin(),
        &json!({"is_active": false}),
    )
    .await
    .expect(400);
    node.patch(&path, s.admin(), &json!({"is_staff": "yes"}))
        .await
        .expect(400);
    node.patch(&path, s.admin(), &json!({"username": "x"}))
        .await
        .expect(400);
    node.patch("/api/users/99999/", s.admin(), &json!({"is_active": false}))
        .await
        .expect(404);

    // Made staff, dora manages users at once (rights come from the user record).
    let r = node
        .patch(&path, s.admin(), &json!({"is_staff": true}))
        .await;
    assert_eq!(r.expect(200)["is_staff"], true);
    let dora_access = dora.access.clone();
    node.get("/api/users/", Some(&dora_access))
        .await
        .expect(200);

    // Deactivated, carl's tokens stop working and he cannot log in or refresh.
    node.get("/api/users/me/", carl.tok()).await.expect(200);
    let r = node
        .patch(
            &format!("/api/users/{}/", carl.id),
            Some(&dora_access),
            &json!({"is_active": false}),
        )
        .await;
    assert_eq!(r.expect(200)["is_active"], false);
    node.get("/api/users/me/", carl.tok()).await.expect(401);
    node.token_resp(&carl.username, &carl.password)
        .await
        .expect(401);
    node.post(
        "/api/token/refresh/",
        None,
        &json!({"refresh": carl.refresh}),
    )
    .await
    .expect(401);
    // Reactivated, he can log in again.
    node.patch(
        &format!("/api/users/{}/", carl.id),
        s.admin(),
        &json!({"is_active": true}),
    )
    .await
    .expect(200);
    node.login(&carl.username, &carl.password).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sales_report_counts_orders_and_revenue_per_day_and_top_products() {
    let s = shop().await;
    let node = &s.node;
    let amp = s.product("Amp", 10, "100.00").await;
    let pick = s.product("Pick", 100, "0.50").await;
    let buyer = node.new_user("spender").await;
    node.place_order(&buyer.access, &[(amp, 2), (pick, 10)])
        .await;
    let gone = node.place_order(&buyer.access, &[(amp, 1)]).await;
    node.post_empty(&format!("/api/orders/{}/cancel/", gone["id"]), buyer.tok())
        .await
        .expect(200);

    node.get("/api/stats/sales/", buyer.tok()).await.expect(403);
    for bad in ["days=0", "days=367", "days=x"] {
        node.get(&format!("/api/stats/sales/?{bad}"), s.admin())
            .await
            .expect(400);
    }
    let report = node
        .get("/api/stats/sales/?days=7", s.admin())
        .await
        .expect(200)
        .clone();
    let days = report["days"].as_array().unwrap();
    assert_eq!(days.len(), 7);
    let today = &days[6];
    assert_eq!(today["orders"], 1);
    assert_eq!(today["revenue"], "205.00");
    assert_eq!(report["orders"], 1);
    assert_eq!(report["revenue"], "205.00");
    assert_eq!(report["cancelled"], 1);
    assert_eq!(report["top_products"][0]["name"], "Amp");
    assert_eq!(report["top_products"][0]["quantity"], 2);
    assert_eq!(report["top_products"][1]["revenue"], "5.00");
}
