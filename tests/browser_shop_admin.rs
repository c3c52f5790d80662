//! The admin's order handling and product table, and the storefront's place in the URL, in a
//! real headless Chromium against a real node (at 1366x900 and 390x844). What the pages did
//! is checked again through the JSON API; each scenario ends with a screenshot of its final
//! page under `target/screenshots/`.
use soundwave_testkit as common;

use std::sync::Arc;

use common::browser::{Browser, PHONE, in_browser};
use common::*;

const WIDE: (u32, u32) = (1366, 900);
const ENTER: &str = "\u{E007}";

async fn admin_log_in(b: &Browser, node: &Node) {
    b.goto(&node.url("/admin/")).await;
    b.fill("#login-username", ADMIN_USERNAME).await;
    b.fill("#login-password", ADMIN_PASSWORD).await;
    b.click("#login-form button[type=submit]").await;
    b.visible("#view-panel").await;
}

/// The current value of a form field.
async fn value(b: &Browser, css: &str) -> Option<String> {
    b.js(&format!("return document.querySelector({css:?}).value;"))
        .await
        .as_str()
        .map(str::to_owned)
}

/// Waits until the element's attribute has this value.
async fn wait_for_attr(b: &Browser, css: &str, name: &str, expected: &str) {
    for _ in 0..100 {
        if b.attr(css, name).await.as_deref() == Some(expected) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!(
        "`{css}` has {name}={:?}, not {expected:?}",
        b.attr(css, name).await
    );
}

/// The order ids the admin's order table shows, in order.
async fn listed_orders(b: &Browser) -> Vec<i64> {
    let ids = b
        .js("return [...document.querySelectorAll('#order-rows tr')].map(r => Number(r.dataset.order));")
        .await;
    ids.as_array()
        .expect("ids")
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect()
}

/// Waits until the order table shows exactly `expected`.
async fn wait_for_orders(b: &Browser, expected: &[i64]) {
    for _ in 0..100 {
        if listed_orders(b).await == expected {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!(
        "the order table shows {:?}, not {expected:?}",
        listed_orders(b).await
    );
}

#[tokio::test]
async fn staff_move_an_order_through_its_statuses_and_filter_the_order_list() {
    let node = Arc::new(Node::start());
    let admin = node.admin_token().await;
    let cat = node.create_category(&admin, "Pedals").await;
    let fuzz = node
        .create_product(&admin, "Fuzz Face", 10, "99.00", cat)
        .await;
    let ann = node.new_user("ann").await;
    let bob = node.new_user("bob").await;
    let first = node.place_order(&ann.access, &[(fuzz, 1)]).await["id"]
        .as_i64()
        .unwrap();
    let second = node.place_order(&bob.access, &[(fuzz, 2)]).await["id"]
        .as_i64()
        .unwrap();
    in_browser(
        "10-admin-order-detail",
        WIDE,
        node,
        move |b, node| async move {
            admin_log_in(&b, &node).await;
            b.click("[data-tab=orders]").await;
            wait_for_orders(&b, &[second, first]).await;

            // The detail page, and the order moved one step at a time.
            b.click(&format!("tr[data-order=\"{first}\"] td button.link"))
                .await;
            b.text_contains("#order-detail-title", &format!("Order #{first}"))
                .await;
            b.text_contains("#order-detail-items", "Fuzz Face").await;
            for (button, status, word) in [
                ("paid", "paid", "Paid"),
                ("shipped", "shipped", "Shipped"),
                ("delivered", "delivered", "Delivered"),
            ] {
                b.click(&format!("#order-detail-actions [data-move={button}]"))
                    .await;
                b.text_contains("#notice", &format!("is now {status}"))
                    .await;
                b.text_contains("#order-detail-title", word).await;
                b.find(&format!("#order-history li[data-status={status}]"))
                    .await;
            }
            let history = b.text_contains("#order-history", "Delivered").await;
            assert!(history.contains("by admin"), "{history}");
            let api = node
                .get(&format!("/api/orders/{first}/"), Some(&admin))
                .await;
            assert_eq!(api.expect(200)["status"], "delivered");
            // A delivered order offers no further move.
            let moves = b
                .js("return document.querySelectorAll('#order-detail-actions button').length;")
                .await;
            assert_eq!(moves, json!(0));
            b.screenshot("10-admin-order-delivered").await;

            // Back to the list: filters by status and by customer.
            b.click("#order-back").await;
            wait_for_orders(&b, &[second, first]).await;
            b.select("#order-status", "delivered").await;
            wait_for_orders(&b, &[first]).await;
            b.select("#order-status", "").await;
            b.fill("#order-customer", &format!("{}{ENTER}", bob.username))
                .await;
            wait_for_orders(&b, &[second]).await;
            b.select("#order-status", "cancelled").await;
            wait_for_orders(&b, &[]).await;
            b.text_contains("#order-range", "No orders match").await;
            b.select("#order-status", "placed").await;
            wait_for_orders(&b, &[second]).await;
            // The filtered list as CSV.
            b.click("#order-export").await;
            b.text_contains("#notice", "exported as orders.csv").await;
            // Cancelled from the list: its stock comes back.
            b.click(&format!(
                "tr[data-order=\"{second}\"] [data-move=cancelled]"
            ))
            .await;
            b.click_text("button", &format!("Cancel #{second}?")).await;
            b.text_contains("#notice", "is cancelled").await;
            assert_eq!(node.stock(fuzz).await, 9);

            // The customer sees where their order is.
            b.click("#logout").await;
            b.goto(&node.url("/#/login")).await;
            b.fill("#login-username", &ann.username).await;
            b.fill("#login-password", &ann.password).await;
            b.click("#login-form button[type=submit]").await;
            b.text_contains("#who", &ann.username).await;
            b.goto(&node.url("/#/orders")).await;
            b.text_contains(&format!("article[data-order=\"{first}\"]"), "Delivered")
                .await;
        },
    )
    .await;
}

#[tokio::test]
async fn staff_manage_users_and_see_sales_per_day() {
    let node = Arc::new(Node::start());
    let admin = node.admin_token().await;
    let cat = node.create_category(&admin, "Drums").await;
    let snare = node
        .create_product(&admin, "Snare", 20, "150.00", cat)
        .await;
    let sticks = node
        .create_product(&admin, "Sticks", 90, "12.00", cat)
        .await;
    let dave = node.new_user("dave").await;
    node.place_order(&dave.access, &[(snare, 2), (sticks, 3)])
        .await;
    node.place_order(&dave.access, &[(sticks, 1)]).await;
    in_browser(
        "14-admin-sales",
        WIDE,
        node,
        move |b, node| async move {
            admin_log_in(&b, &node).await;
            b.click("[data-tab=users]").await;
            b.fill("#user-search", &format!("{}{ENTER}", dave.username))
                .await;
            let row = format!("tr[data-user=\"{}\"]", dave.id);
            b.text_contains(&row, "Customer").await;
            b.click(&format!("{row} [data-action=staff]")).await;
            b.text_contains("#notice", "is now staff").await;
            b.text_contains(&row, "Staff").await;
            b.click(&format!("{row} [data-action=active]")).await;
            b.click_text(&format!("{row} button"), &format!("Deactivate {}?", dave.username))
                .await;
            b.text_contains("#notice", "is deactivated").await;
            b.text_contains(&row, "Deactivated").await;
            node.token_resp(&dave.username, &dave.password)
                .await
                .expect(401);
            b.screenshot("14-admin-users").await;

            b.click("[data-tab=sales]").await;
            b.text_contains("#sales-summary", "2 orders, $348.00 revenue")
                .await;
            let bars = b
                .js("return document.querySelectorAll('#sales-chart svg rect.bar').length;")
                .await;
            assert_eq!(bars, json!(30));
            let today = b
                .js("const bars = document.querySelectorAll('#sales-chart rect.bar');
                     const last = bars[bars.length - 1];
                     return [Number(last.getAttribute('height')) > 0, last.querySelector('title').textContent];")
                .await;
            assert_eq!(today[0], json!(true));
            assert!(
                today[1].as_str().unwrap().contains("2 orders, $348.00"),
                "{today}"
            );
            let top = b.text_contains("#sales-top", "Snare").await;
            assert!(top.find("Snare") < top.find("Sticks"), "{top}");
        },
    )
    .await;
}

#[tokio::test]
async fn the_admin_product_table_on_a_phone_has_every_column_within_reach() {
    let node = Arc::new(Node::start());
    let admin = node.admin_token().await;
    let cat = node.create_category(&admin, "Strings").await;
    for (name, stock) in [("Nylon set", 40), ("Steel set", 0), ("Bass set", 3)] {
        node.create_product(&admin, name, stock, "12.00", cat).await;
    }
    in_browser(
        "11-admin-products-phone",
        PHONE,
        node,
        |b, node| async move {
            admin_log_in(&b, &node).await;
            b.text_contains("#product-rows", "Bass set").await;
            // The page itself does not scroll sideways; the table scrolls inside its box.
            let sizes = b
                .js("const w = document.getElementById('product-table-wrap');
                     return [document.documentElement.scrollWidth, window.innerWidth,
                             w.scrollWidth, w.clientWidth];")
                .await;
            let [page, viewport, table, wrap] = [0, 1, 2, 3].map(|i| sizes[i].as_i64().unwrap());
            assert!(page <= viewport, "the page is {page} px wide in {viewport}");
            assert!(table > wrap, "the table ({table}) scrolls in its box ({wrap})");
            // Scrolled to its end, the Stock and Actions columns are on screen.
            let reach = b
                .js("const w = document.getElementById('product-table-wrap');
                     w.scrollLeft = w.scrollWidth;
                     const cells = [...document.querySelectorAll('.product-table thead th')];
                     return cells.slice(-2).map(th => {
                       const r = th.getBoundingClientRect();
                       return r.left >= 0 && r.right <= window.innerWidth + 1;
                     });")
                .await;
            assert_eq!(reach, json!([true, true]), "Stock and Actions in view");
            b.click("tr[data-product] button").await;
            b.text_contains("#product-form-title", "Edit product").await;
            // The edit form's controls, the image file input too, stay inside its box.
            let overflow = b
                .js("const box = document.getElementById('product-images').parentElement.getBoundingClientRect();
                     return [...document.querySelectorAll('#product-images input, #product-images button')]
                       .filter(c => c.getBoundingClientRect().right > box.right + 1)
                       .map(c => c.id || c.textContent);")
                .await;
            assert_eq!(overflow, json!([]), "controls wider than the edit form");

            // The low-stock view, sorted by stock from the column header.
            b.click("#product-low-stock").await;
            b.click("th[data-sort=stock] button").await;
            wait_for_attr(&b, "th[data-sort=stock]", "aria-sort", "ascending").await;
            let names = b
                .js("return [...document.querySelectorAll('#product-rows tr td:nth-child(2)')].map(td => td.textContent);")
                .await;
            assert_eq!(names, json!(["Steel set", "Bass set"]));
            b.text_contains("#product-rows", "Sold out").await;
            b.js("document.getElementById('product-table-wrap').scrollLeft = 10000; window.scrollTo(0, document.getElementById('product-table-wrap').offsetTop - 80);")
                .await;
        },
    )
    .await;
}

#[tokio::test]
async fn a_new_product_is_shown_at_once_at_the_top_of_the_admin_table() {
    let node = Arc::new(Node::start());
    let admin = node.admin_token().await;
    let cat = node.create_category(&admin, "Cables").await;
    // More than one page of the admin's table (50 a page).
    for n in 0..60 {
        node.create_product(&admin, &format!("Cable {n:02}"), 5, "3.00", cat)
            .await;
    }
    in_browser(
        "12-admin-new-product",
        WIDE,
        node,
        move |b, node| async move {
            admin_log_in(&b, &node).await;
            b.text_contains("#product-range", "of 60").await;
            b.fill("#product-name", "Patch cable, braided").await;
            b.select("#product-category", &cat.to_string()).await;
            b.fill("#product-price", "7.50").await;
            b.fill("#product-stock", "9").await;
            b.click("#product-submit").await;
            b.text_contains("#notice", "Added Patch cable, braided")
                .await;
            let first = b
                .text_contains("#product-rows tr:first-child", "Patch cable")
                .await;
            assert!(first.contains("$7.50"), "{first}");
            b.find("#product-rows tr.just-added").await;
            assert_eq!(value(&b, "#product-sort").await.as_deref(), Some("-id"));
            // Sorting by price from the header, twice for descending.
            b.click("th[data-sort=price] button").await;
            wait_for_attr(&b, "th[data-sort=price]", "aria-sort", "ascending").await;
            b.click("th[data-sort=price] button").await;
            wait_for_attr(&b, "th[data-sort=price]", "aria-sort", "descending").await;
            b.text_contains("#product-rows tr:first-child", "Patch cable")
                .await;
            let listed = node.list("/api/products/?ordering=-price", None).await;
            assert_eq!(listed[0]["name"], "Patch cable, braided");
        },
    )
    .await;
}

/// The card names the storefront shows, in order.
async fn card_names(b: &Browser) -> Vec<String> {
    let names = b
        .js("return [...document.querySelectorAll('#products li.card .card-title')].map(e => e.textContent);")
        .await;
    names
        .as_array()
        .expect("names")
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

async fn wait_for_cards(b: &Browser, expected: &[String]) {
    for _ in 0..100 {
        if card_names(b).await == expected {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the shop shows {:?}, not {expected:?}", card_names(b).await);
}

#[tokio::test]
async fn a_shared_search_url_restores_the_view_and_back_keeps_the_place() {
    shared_search_and_back("13-storefront-shared-search", WIDE).await;
}

#[tokio::test]
async fn on_a_phone_a_shared_search_url_restores_the_view_and_back_keeps_the_place() {
    shared_search_and_back("13-storefront-shared-search-phone", PHONE).await;
}

async fn shared_search_and_back(screenshot: &str, size: (u32, u32)) {
    let node = Arc::new(Node::start());
    let admin = node.admin_token().await;
    let amps = node.create_category(&admin, "Amps").await;
    let other = node.create_category(&admin, "Other").await;
    for n in 0..40 {
        let price = format!("{}.00", 100 + (n * 37) % 400);
        let stock = if n % 7 == 0 { 0 } else { 5 };
        node.create_product(&admin, &format!("Combo amp {n:02}"), stock, &price, amps)
            .await;
    }
    node.create_product(&admin, "Amp stand", 4, "20.00", other)
        .await;
    // What the API gives for the shared view: the page shows the same.
    let expected: Vec<String> = names(
        &node
            .list(
                &format!("/api/products/?category={amps}&name=amp&ordering=-price&in_stock=true"),
                None,
            )
            .await,
    );
    assert!(
        expected.len() > 24,
        "more than one page: {}",
        expected.len()
    );
    let shared = format!("/#/?category={amps}&q=amp&sort=-price&stock=in");
    in_browser(screenshot, size, node, move |b, node| async move {
        // A fresh page opened at the shared URL shows the same view.
        b.goto(&node.url(&shared)).await;
        wait_for_cards(&b, &expected[..24]).await;
        assert_eq!(value(&b, "#search").await.as_deref(), Some("amp"));
        assert_eq!(value(&b, "#sort").await.as_deref(), Some("-price"));
        let checked = b
            .js("return document.getElementById('in-stock').checked;")
            .await;
        assert_eq!(checked, json!(true));
        b.text_contains("#categories [aria-pressed=true]", "Amps")
            .await;

        // Choosing in the page puts the view in the URL: a new sort, then more pages.
        b.select("#sort", "price").await;
        let ascending = {
            let mut e = expected.clone();
            e.reverse();
            e
        };
        b.text_contains("#result-count", "Showing 24").await;
        let hash = b.js("return location.hash;").await;
        assert!(hash.as_str().unwrap().contains("sort=price"), "{hash}");
        b.click("#more").await;
        b.text_contains("#result-count", &format!("Showing {} of", expected.len()))
            .await;
        let hash = b.js("return location.hash;").await;
        assert!(hash.as_str().unwrap().contains("pages=2"), "{hash}");
        let shown = card_names(&b).await;
        assert_eq!(shown.len(), expected.len());
        // Ties in price keep id order, so compare as sets and the ends by price.
        let mut sorted_shown = shown.clone();
        sorted_shown.sort();
        let mut sorted_expected = ascending.clone();
        sorted_expected.sort();
        assert_eq!(sorted_shown, sorted_expected);

        // Scroll down, open a product, come Back: same list, same place.
        let target = shown[30].clone();
        let y = b
            .js(&format!(
                "const card = [...document.querySelectorAll('#products li.card')]
                       .find(c => c.querySelector('.card-title').textContent === {target:?});
                     card.scrollIntoView({{block: 'center'}});
                     return window.scrollY;"
            ))
            .await
            .as_f64()
            .unwrap();
        assert!(y > 500.0, "scrolled down: {y}");
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        b.click_text("#products .card-title a", &target).await;
        b.text_contains("#view-product h1", &target).await;
        b.js("history.back();").await;
        wait_for_cards(&b, &shown).await;
        let mut back_y = 0.0;
        for _ in 0..50 {
            back_y = b.js("return window.scrollY;").await.as_f64().unwrap();
            if (back_y - y).abs() < 2.0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(
            (back_y - y).abs() < 2.0,
            "Back returns to {y}, it is at {back_y}"
        );
        assert_eq!(value(&b, "#sort").await.as_deref(), Some("price"));

        // Back again: the shared view as it was first opened.
        b.js("history.back();").await;
        wait_for_cards(&b, &expected[..24]).await;
        assert_eq!(value(&b, "#sort").await.as_deref(), Some("-price"));

        // A search typed on a product page opens the catalog with it.
        b.click_text("#products .card-title a", &expected[0]).await;
        b.text_contains("#view-product h1", &expected[0]).await;
        b.fill("#search", &format!("stand{ENTER}")).await;
        b.visible("#view-shop").await;
        let hash = b.js("return location.hash;").await;
        assert!(hash.as_str().unwrap().contains("q=stand"), "{hash}");
        let hidden = b
            .js("return document.getElementById('view-product').hidden;")
            .await;
        assert_eq!(hidden, json!(true));
    })
    .await;
}
