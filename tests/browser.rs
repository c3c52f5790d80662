//! The storefront (`/`) and the admin (`/admin/`) in a real headless Chromium, against a real
//! node; what the pages did is checked again through the JSON API. Each scenario ends with a
//! screenshot of its final page under `target/screenshots/`.
use soundwave_testkit as common;

use std::sync::Arc;

use common::browser::{Browser, DESKTOP, PHONE, in_browser};
use common::*;

const ENTER: &str = "\u{E007}";

/// Logs in through the storefront's form and waits for the greeting.
async fn log_in(b: &Browser, node: &Node, username: &str, password: &str) {
    b.goto(&node.url("/#/login")).await;
    b.fill("#login-username", username).await;
    b.fill("#login-password", password).await;
    b.click("#login-form button[type=submit]").await;
    b.text_contains("#who", &format!("Hi, {username}")).await;
}

/// A card's quantity field and its "Add to cart" button.
async fn add_to_cart(b: &Browser, form: &str, quantity: u32) {
    b.fill(
        &format!("{form} input[name=quantity]"),
        &quantity.to_string(),
    )
    .await;
    b.click(&format!("{form} button[type=submit]")).await;
    b.text_contains("#notice", "to your cart").await;
}

async fn token(node: &Node, username: &str, password: &str) -> String {
    node.login(username, password).await.0
}

/// The old scenario: open `/`, choose a product and a quantity, submit, read "Order placed
/// successfully"; the stock went down. Also records the storefront's first-load figures.
#[tokio::test]
async fn a_shopper_orders_from_the_storefront_and_stock_goes_down() {
    let node = Arc::new(Node::builder().demo().start());
    in_browser("1-order-placed", DESKTOP, node, |b, node| async move {
        let admin = node.admin_token().await;
        let cat = node.create_category(&admin, "Studio Monitors").await;
        let product = node
            .create_product(&admin, "Nearfield Monitor Pair", 10, "249.99", cat)
            .await;
        let shopper = node.new_user("shopper").await;

        // First load, cold cache: the demo catalog's first page.
        b.goto(&node.url("/")).await;
        b.find("#products li.card").await;
        b.text_contains("#result-count", "Showing 24 of 1,001 products")
            .await;
        first_load_figures(&b, &node).await;
        b.screenshot("0-storefront").await;

        log_in(&b, &node, &shopper.username, &shopper.password).await;
        b.click_text("#categories button", "Studio Monitors").await;
        let form = format!("#products form.buy[data-product=\"{product}\"]");
        b.find(&form).await;
        b.text_contains("#result-count", "Showing 1 of 1 products")
            .await;
        add_to_cart(&b, &form, 3).await;
        b.text_contains("#cart-count", "3").await;

        b.click("#nav-cart").await;
        b.text_contains("#subtotal", "$749.97").await;
        b.click("#checkout").await;
        let text = b
            .text_contains("#order-confirmation", "Order placed successfully")
            .await;

        let orders = node.list("/api/orders/", shopper.tok()).await;
        assert_eq!(orders.len(), 1, "one order placed: {orders:?}");
        let order = &orders[0];
        assert_eq!(order["total"], "749.97");
        assert_eq!(order["items"][0]["product"], json!(product));
        assert_eq!(order["items"][0]["quantity"], json!(3));
        assert!(
            text.contains(&format!("Order number #{}", order["id"])) && text.contains("$749.97"),
            "the page names the order and its total: {text:?}"
        );
        assert_eq!(node.stock(product).await, 7, "stock went down by 3");
        b.text_contains("#cart-count", "0").await;
    })
    .await;
}

/// Prints the storefront's first-load size and time (cold cache), then a second visit's.
async fn first_load_figures(b: &Browser, node: &Node) {
    const FIGURES: &str = r#"
        const nav = performance.getEntriesByType("navigation")[0];
        const assets = performance.getEntriesByType("resource")
            .filter((r) => r.name.includes("/assets/"))
            .map((r) => ({ name: new URL(r.name).pathname, bytes: r.decodedBodySize,
                           transferred: r.transferSize }));
        const rendered = performance.getEntriesByName("sw:products")[0];
        return {
            html_bytes: nav.decodedBodySize,
            html_transferred: nav.transferSize,
            assets,
            response_end_ms: Math.round(nav.responseEnd),
            dom_content_loaded_ms: Math.round(nav.domContentLoadedEventEnd),
            load_event_ms: Math.round(nav.loadEventEnd),
            products_shown_ms: rendered ? Math.round(rendered.startTime) : null,
        };
    "#;
    let cold = b.js(FIGURES).await;
    let assets = cold["assets"].as_array().expect("assets");
    let names: Vec<&str> = assets.iter().filter_map(|a| a["name"].as_str()).collect();
    for expected in ["/assets/app.css", "/assets/common.js", "/assets/store.js"] {
        assert!(names.contains(&expected), "{expected} loaded: {names:?}");
    }
    let bytes = cold["html_bytes"].as_u64().unwrap_or(0)
        + assets
            .iter()
            .map(|a| a["bytes"].as_u64().unwrap_or(0))
            .sum::<u64>();
    assert!(bytes > 0);
    eprintln!("storefront first load (cold cache): {bytes} bytes of HTML+CSS+JS; {cold}");

    // A second visit: the page is revalidated, the versioned assets come from the cache.
    b.goto(&node.url("/?again")).await;
    b.find("#products li.card").await;
    let warm = b.js(FIGURES).await;
    eprintln!("storefront second visit: {warm}");
    b.goto(&node.url("/")).await;
    b.find("#products li.card").await;
}

/// Sign-up, log-out and log-in through the page, on a phone-sized screen and with the keyboard;
/// a shopper is refused by the admin.
#[tokio::test]
async fn sign_up_and_log_in_through_the_page() {
    let node = Arc::new(Node::start());
    in_browser(
        "2-admin-refuses-a-shopper-phone",
        PHONE,
        node,
        |b, node| async move {
            let admin = node.admin_token().await;
            let cat = node.create_category(&admin, "Drums").await;
            for (name, stock, price) in [
                ("Maple Snare 14x5.5", 8, "329.00"),
                ("Crash Cymbal 18\"", 3, "189.90"),
            ] {
                node.create_product(&admin, name, stock, price, cat).await;
            }
            let username = unique_name("newbie");
            b.goto(&node.url("/")).await;
            b.find("#products li.card").await;
            let width = b.js("return window.innerWidth;").await;
            assert!(
                width.as_u64().is_some_and(|w| w <= 420),
                "phone-sized: {width}"
            );

            b.click("#nav-signup").await;
            b.fill("#signup-username", &username).await;
            b.fill("#signup-email", "newbie@example.com").await;
            b.fill("#signup-password", PASSWORD).await;
            b.click("#signup-form button[type=submit]").await;
            b.text_contains("#notice", "Your account is ready").await;
            b.text_contains("#who", &format!("Hi, {username}")).await;
            let overflow = b
                .js("return document.documentElement.scrollWidth - window.innerWidth;")
                .await;
            assert_eq!(overflow, json!(0), "nothing wider than the phone's screen");
            b.screenshot("2-signed-up-phone").await;

            // The account exists, is no staff member, and the page keeps working tokens.
            let me = node
                .get(
                    "/api/users/me/",
                    Some(&token(&node, &username, PASSWORD).await),
                )
                .await;
            assert_eq!(me.expect(200)["is_staff"], json!(false));
            assert_eq!(me.json["email"], "newbie@example.com");
            let kept = b.js("return sessionStorage.getItem('sw.access');").await;
            let kept = kept.as_str().expect("an access token in sessionStorage");
            node.get("/api/users/me/", Some(kept)).await.expect(200);

            b.click("#logout").await;
            b.visible("#nav-login").await;
            assert_eq!(
                b.js("return sessionStorage.getItem('sw.access');").await,
                Value::Null
            );

            // A wrong password is explained; then the keyboard: type, Enter submits.
            b.click("#nav-login").await;
            b.fill("#login-username", &username).await;
            b.fill("#login-password", &format!("wrong-{PASSWORD}{ENTER}"))
                .await;
            b.text_contains("#notice", "don't match an account").await;
            b.fill("#login-password", &format!("{PASSWORD}{ENTER}"))
                .await;
            b.text_contains("#who", &format!("Hi, {username}")).await;
            b.text_contains("#notice", "Welcome back").await;
            b.text_contains("#notice", &format!("Welcome back, {username}!"))
                .await;

            // White text on the brand colour is readable: every primary button and badge
            // has a contrast of at least 4.5:1 (WCAG AA for normal text).
            let lowest = b
                .js(
                    "const lum = (c) => { const [r, g, b] = c.match(/[\\d.]+/g).slice(0, 3) \
                       .map((v) => { v = Number(v) / 255; \
                         return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); }); \
                       return 0.2126 * r + 0.7152 * g + 0.0722 * b; }; \
                     const ratios = [...document.querySelectorAll('.btn-primary, .badge')] \
                       .map((e) => { const s = getComputedStyle(e); \
                         const [x, y] = [lum(s.color), lum(s.backgroundColor)]; \
                         return (Math.max(x, y) + 0.05) / (Math.min(x, y) + 0.05); }); \
                     return ratios.length ? Math.min(...ratios) : 0;",
                )
                .await;
            let lowest = lowest.as_f64().expect("a contrast ratio");
            assert!(lowest >= 4.5, "a primary button or badge at {lowest:.2}:1");

            // The same tab opens the admin: a clear refusal.
            b.goto(&node.url("/admin/")).await;
            let refusal = b.visible("#view-refused").await;
            let text = refusal.text().await.expect("refusal text");
            assert!(
                text.contains("Staff only") && text.contains(&username),
                "refusal: {text:?}"
            );
            assert!(
                !b.find("#view-panel").await.is_displayed().await.unwrap(),
                "no admin tools for a shopper"
            );
        },
    )
    .await;
}

/// A staff user adds a category and a product in the admin, edits it, and the storefront
/// shows it.
#[tokio::test]
async fn an_admin_adds_a_product_that_appears_on_the_storefront() {
    let node = Arc::new(Node::start());
    in_browser(
        "3-storefront-shows-new-product",
        DESKTOP,
        node,
        |b, node| async move {
            b.goto(&node.url("/admin/")).await;
            b.fill("#login-username", ADMIN_USERNAME).await;
            b.fill("#login-password", ADMIN_PASSWORD).await;
            b.click("#login-form button[type=submit]").await;
            b.visible("#view-panel").await;
            b.text_contains("#who", ADMIN_USERNAME).await;

            b.click("[data-tab=categories]").await;
            b.fill("#category-name", "Synthesizers").await;
            b.click("#category-submit").await;
            b.text_contains("#notice", "Added the category Synthesizers")
                .await;
            let categories = node.list("/api/categories/", None).await;
            assert_eq!(names(&categories), ["Synthesizers"]);
            let cat = categories[0]["id"].as_i64().unwrap();

            b.click("[data-tab=products]").await;
            b.fill("#product-name", "Analog Poly Synth 8").await;
            b.select("#product-category", &cat.to_string()).await;
            b.fill("#product-price", "1999.00").await;
            b.fill("#product-stock", "4").await;
            b.fill("#product-description", "Eight voices, real filters.")
                .await;
            b.click("#product-submit").await;
            b.text_contains("#notice", "Added Analog Poly Synth 8 to the catalog")
                .await;
            let products = node.list("/api/products/", None).await;
            assert_eq!(products.len(), 1, "{products:?}");
            let id = products[0]["id"].as_i64().unwrap();
            assert_eq!(
                products[0],
                json!({"id": id, "name": "Analog Poly Synth 8", "stock": 4, "price": "1999.00",
                   "description": "Eight voices, real filters.", "category": cat,
                   "image": null, "thumbnail": null})
            );

            // Edit price and stock from the table's Edit button.
            b.click(&format!("tr[data-product=\"{id}\"] button")).await;
            b.text_contains("#product-form-title", &format!("Edit product #{id}"))
                .await;
            b.fill("#product-price", "1899.50").await;
            b.fill("#product-stock", "6").await;
            b.click("#product-submit").await;
            b.text_contains("#notice", "Saved Analog Poly Synth 8")
                .await;
            b.text_contains(&format!("tr[data-product=\"{id}\"]"), "$1,899.50")
                .await;
            let product = node.product(id).await;
            assert_eq!(
                (product["price"].clone(), product["stock"].clone()),
                (json!("1899.50"), json!(6))
            );
            b.screenshot("3-admin-products").await;

            b.goto(&node.url("/")).await;
            b.fill("#search", &format!("poly synth{ENTER}")).await;
            let card = format!("#products li.card[data-product=\"{id}\"]");
            let text = b.text_contains(&card, "Analog Poly Synth 8").await;
            assert!(
                text.contains("$1,899.50")
                    && text.contains("In stock (6)")
                    && text.to_lowercase().contains("synthesizers"),
                "card: {text:?}"
            );
        },
    )
    .await;
}

/// Asking for more than the stock: the cart refuses it at once; when the stock falls before
/// checkout, the page says how many are left, and nothing changes.
#[tokio::test]
async fn an_order_for_more_than_the_stock_shows_a_clear_message_and_changes_nothing() {
    let node = Arc::new(Node::start());
    in_browser(
        "4-cart-after-failed-order",
        DESKTOP,
        node,
        |b, node| async move {
            let admin = node.admin_token().await;
            let cat = node.create_category(&admin, "Vinyl").await;
            let product = node
                .create_product(&admin, "Blue Train (Limited Pressing)", 2, "34.00", cat)
                .await;
            let shopper = node.new_user("eager").await;

            log_in(&b, &node, &shopper.username, &shopper.password).await;
            b.goto(&node.url(&format!("/#/product/{product}"))).await;
            b.text_contains("#view-product h1", "Blue Train").await;
            b.text_contains("#view-product", "Only 2 left").await;
            // The cart takes no more than the stock, and says so at once.
            let form = format!("#view-product form.buy[data-product=\"{product}\"]");
            b.fill(&format!("{form} input[name=quantity]"), "5").await;
            b.click(&format!("{form} button[type=submit]")).await;
            b.text_contains("#notice", "Only 2 left of Blue Train (Limited Pressing)")
                .await;
            assert!(
                node.list("/api/orderitems/", shopper.tok())
                    .await
                    .is_empty()
            );
            add_to_cart(&b, &form, 2).await;
            // Then the stock falls before checkout.
            node.patch(
                &format!("/api/products/{product}/"),
                Some(&admin),
                &json!({"stock": 1}),
            )
            .await
            .expect(200);

            b.click("#nav-cart").await;
            b.text_contains("#subtotal", "$68.00").await;
            b.click("#checkout").await;
            let message = b
                .text_contains("#notice", "Only 1 left of Blue Train (Limited Pressing)")
                .await;
            assert!(
                !message.contains("Insufficient stock"),
                "shopper words: {message:?}"
            );
            b.text_contains(
                &format!("li.line[data-product=\"{product}\"]"),
                "Only 1 left",
            )
            .await;
            assert!(
                !b.body_text().await.contains("Order placed successfully"),
                "no success shown"
            );

            assert_eq!(node.stock(product).await, 1, "stock unchanged");
            assert!(
                node.list("/api/orders/", shopper.tok()).await.is_empty(),
                "no order"
            );
            let lines = node.list("/api/orderitems/", shopper.tok()).await;
            assert_eq!(lines.len(), 1, "{lines:?}");
            assert_eq!(lines[0]["quantity"], json!(2));
            assert_eq!(lines[0]["order"], Value::Null, "the cart is as it was");
        },
    )
    .await;
}

/// With 2-second access tokens, the page refreshes them on its own, keeps each rotated refresh
/// token, and signed-in calls keep working.
#[tokio::test]
async fn the_page_refreshes_tokens_before_they_expire() {
    let node = Arc::new(
        Node::builder()
            .config("[auth]\naccess_token_lifetime_secs = 2")
            .start(),
    );
    in_browser(
        "5-cart-after-token-refresh",
        DESKTOP,
        node,
        |b, node| async move {
            let admin = node.admin_token().await;
            let cat = node.create_category(&admin, "Strings").await;
            let product = node
                .create_product(&admin, "Nickel Strings 10-46", 50, "7.99", cat)
                .await;
            let shopper = node.new_user("steady").await;
            log_in(&b, &node, &shopper.username, &shopper.password).await;
            // The refresh token is only in the HttpOnly cookie: read it there, then back.
            let first = b
                .cookie_at(&node.url("/api/token/"), "sw_refresh")
                .await
                .expect("the refresh cookie");
            b.goto(&node.url("/")).await;
            b.text_contains("#who", &format!("Hi, {}", shopper.username))
                .await;

            let access = access_token(&b).await;
            let second = next_access_token(&b, &access).await;
            next_access_token(&b, &second).await;
            // Rotation happened on the server: the first refresh token no longer works.
            node.post("/api/token/refresh/", None, &json!({"refresh": first}))
                .await
                .expect_bad_token();

            // Well past the first access token's life, the page still acts for the shopper.
            b.click_text("#categories button", "Strings").await;
            let form = format!("#products form.buy[data-product=\"{product}\"]");
            add_to_cart(&b, &form, 2).await;
            b.click("#nav-cart").await;
            b.text_contains("#subtotal", "$15.98").await;
            let (access, _) = node.login(&shopper.username, &shopper.password).await;
            let lines = node.list("/api/orderitems/", Some(&access)).await;
            assert_eq!(lines.len(), 1, "{lines:?}");
        },
    )
    .await;
}

async fn access_token(b: &Browser) -> String {
    b.js("return sessionStorage.getItem('sw.access');")
        .await
        .as_str()
        .expect("an access token in sessionStorage")
        .to_owned()
}

/// Waits (bounded) until the page holds an access token other than `old`: it refreshed.
async fn next_access_token(b: &Browser, old: &str) -> String {
    let deadline = std::time::Instant::now() + common::browser::WAIT;
    loop {
        let now = access_token(b).await;
        if now != old {
            return now;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the page did not refresh its tokens"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// The pages and assets carry caching headers; a revalidation is a 304.
#[tokio::test]
async fn pages_and_assets_are_served_with_caching_headers() {
    let node = Node::start();
    for path in ["/", "/admin/", "/admin"] {
        let page = node.get(path, None).await;
        page.expect(200);
        assert_eq!(
            page.header("content-type"),
            Some("text/html; charset=utf-8")
        );
        assert_eq!(page.header("cache-control"), Some("no-cache"));
        assert!(
            page.header_required("content-security-policy")
                .contains("default-src 'self'")
        );
        let etag = page.header_required("etag").to_owned();
        let again = node
            .send(
                node.request(Method::GET, path, None)
                    .header("If-None-Match", &etag),
            )
            .await;
        assert_eq!(again.status, 304, "{path} revalidates");
        assert!(again.text.is_empty());
    }

    let html = node.get("/", None).await.text;
    let mut assets = Vec::new();
    for piece in html.split('"') {
        if let Some(rest) = piece.strip_prefix("/assets/") {
            assets.push(format!("/assets/{rest}"));
        }
    }
    assert_eq!(assets.len(), 3, "css and two scripts: {assets:?}");
    for url in &assets {
        assert!(url.contains("?v="), "{url} is versioned");
        let asset = node.get(url, None).await;
        asset.expect(200);
        assert_eq!(
            asset.header("cache-control"),
            Some("public, max-age=31536000, immutable")
        );
        let etag = asset.header_required("etag");
        assert!(
            url.ends_with(etag.trim_matches('"')),
            "the version is the ETag"
        );
        let unversioned = node.get(url.split('?').next().unwrap(), None).await;
        assert_eq!(unversioned.header("cache-control"), Some("no-cache"));
        assert_eq!(unversioned.text, asset.text);
    }
    let css = node.get(&assets[0], None).await;
    assert_eq!(css.header("content-type"), Some("text/css; charset=utf-8"));

    node.get("/assets/nope.js", None).await.expect_not_found();
    node.get("/admin/nope", None).await.expect_not_found();
}
