//! The account page and product images in a real headless Chromium: sign-up with a phone,
//! a new tab signed in through the refresh cookie, password change and logout revoking
//! refresh tokens; an admin uploading an image that the storefront then shows. Each scenario
//! ends with a screenshot under `target/screenshots/`.
use soundwave_testkit as common;

use std::io::Cursor;
use std::sync::Arc;

use common::browser::{Browser, DESKTOP, in_browser};
use common::*;

async fn refresh_cookie(b: &Browser, node: &Node) -> Option<String> {
    b.cookie_at(&node.url("/api/token/"), "sw_refresh").await
}

async fn refresh_with(node: &Node, token: &str) -> Resp {
    node.post("/api/token/refresh/", None, &json!({ "refresh": token }))
        .await
}

#[tokio::test]
async fn the_account_page_a_new_tab_password_change_and_logout() {
    let node = Arc::new(Node::start());
    in_browser("8-logged-out", DESKTOP, node, |b, node| async move {
        let username = unique_name("member");
        let new_password = "another-L0nger-secret";

        // Sign up through the page, with a phone number.
        b.goto(&node.url("/#/signup")).await;
        b.fill("#signup-username", &username).await;
        b.fill("#signup-email", "member@example.com").await;
        b.fill("#signup-phone", "+1 555-0100").await;
        b.fill("#signup-password", PASSWORD).await;
        b.click("#signup-form button[type=submit]").await;
        b.text_contains("#who", &format!("Hi, {username}")).await;
        let (access, _) = node.login(&username, PASSWORD).await;
        let me = node.get("/api/users/me/", Some(&access)).await;
        assert_eq!(me.expect(200)["phone_number"], "+1 555-0100");

        // A new tab of the same browser is signed in: it has no tokens of its own, so it
        // asked the refresh cookie (which rotated).
        let first_cookie = refresh_cookie(&b, &node).await.expect("the refresh cookie");
        b.open_in_new_tab(&node.url("/#/account")).await;
        b.text_contains("#account-username", &username).await;
        b.text_contains("#account-phone", "+1 555-0100").await;
        b.text_contains("#account-email", "member@example.com").await;
        let asked = b
            .js("return performance.getEntriesByType('resource').some(e => e.name.includes('/api/token/refresh/'));")
            .await;
        assert_eq!(asked, json!(true), "the new tab refreshed through the cookie");
        refresh_with(&node, &first_cookie).await.expect_bad_token();
        b.screenshot("7-account-page").await;

        // Changing the password ends every other session; this tab goes on.
        let (_, elsewhere) = node.login(&username, PASSWORD).await;
        b.fill("#account-current-password", PASSWORD).await;
        b.fill("#account-new-password", new_password).await;
        b.click("#password-form button[type=submit]").await;
        b.text_contains("#notice", "password is changed").await;
        refresh_with(&node, &elsewhere).await.expect_bad_token();
        node.token_resp(&username, PASSWORD).await.expect(401);
        node.login(&username, new_password).await;
        b.click("#nav-orders").await;
        b.text_contains("#orders-body", "No orders yet").await;

        // Logging out revokes the refresh token and clears the cookie.
        let cookie = refresh_cookie(&b, &node).await.expect("the refresh cookie");
        b.goto(&node.url("/#/account")).await;
        b.text_contains("#account-username", &username).await;
        b.click("#account-logout").await;
        b.visible("#nav-login").await;
        b.text_contains("#notice", "logged out").await;
        refresh_with(&node, &cookie).await.expect_bad_token();
        // The first tab still holds an access token; its next refresh finds no cookie and
        // ends its session too.
        b.switch_to_first_tab().await;
        b.goto(&node.url("/#/orders")).await;
        b.text_contains("#who", &format!("Hi, {username}")).await;
        b.js("SW.refresh().catch(() => {}); return true;").await;
        b.visible("#nav-login").await;
        b.text_contains("#notice", "session has ended").await;
        assert_eq!(refresh_cookie(&b, &node).await, None, "the cookie is cleared");
        b.goto(&node.url("/")).await;
        b.visible("#nav-login").await;
    })
    .await;
}

/// A picture with some shape to it, as a PNG file.
fn picture_file(dir: &std::path::Path, square: u32) -> (std::path::PathBuf, Vec<u8>) {
    let mut bytes = Vec::new();
    image::RgbImage::from_fn(640, 480, |x, y| {
        if (x / square + y / square) % 2 == 0 {
            image::Rgb([255, 90, 54])
        } else {
            image::Rgb([23, 19, 31])
        }
    })
    .write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)
    .expect("encode a png");
    let path = dir.join(format!("checkers-{square}.png"));
    std::fs::write(&path, &bytes).expect("write the picture");
    (path, bytes)
}

#[tokio::test]
async fn an_admin_uploads_an_image_that_the_storefront_shows() {
    let node = Arc::new(Node::start());
    in_browser(
        "10-product-list-with-image",
        DESKTOP,
        node,
        |b, node| async move {
            let admin = node.admin_token().await;
            let category = node.create_category(&admin, "Pedals").await;
            let id = node
                .create_product(&admin, "Checkered Fuzz", 4, "89.00", category)
                .await;
            let dir = tempfile::tempdir().expect("temp dir");
            let (path, bytes) = picture_file(dir.path(), 80);
            let (second_path, _) = picture_file(dir.path(), 160);

            // The admin edits the product and uploads the picture.
            b.goto(&node.url("/admin/")).await;
            b.fill("#login-username", ADMIN_USERNAME).await;
            b.fill("#login-password", ADMIN_PASSWORD).await;
            b.click("#login-form button[type=submit]").await;
            let row = format!("#product-rows tr[data-product=\"{id}\"]");
            b.click_text(&format!("{row} button"), "Edit").await;
            b.visible("#product-images").await;
            b.text_contains("#product-image-list", "No images yet")
                .await;
            b.choose_file("#product-image-file", &path).await;
            b.click("#product-image-upload").await;
            b.text_contains("#notice", "Added an image").await;
            b.find("#product-image-list img").await;
            // A second picture joins it.
            b.choose_file("#product-image-file", &second_path).await;
            b.click("#product-image-upload").await;
            b.find("#product-image-list li:nth-child(2) img").await;
            let images = node
                .list(&format!("/api/products/{id}/images/"), None)
                .await;
            assert_eq!(images.len(), 2, "{images:?}");

            // Through the API: the bytes are the file's.
            let product = node.product(id).await;
            let url = product["image"].as_str().expect("a main image").to_owned();
            let served = reqwest::get(node.url(&url)).await.expect("GET the image");
            assert!(
                served.bytes().await.expect("bytes") == bytes,
                "the file's bytes"
            );

            // The storefront's product page shows the picture, loaded.
            b.goto(&node.url(&format!("/#/product/{id}"))).await;
            // The page renders the product again once the category names are in: wait for
            // that, and read the picture through queries made afresh each time.
            b.text_contains("#view-product .card-cat", "PEDALS").await;
            let img = "#view-product img.thumb.photo";
            let src = format!("return document.querySelector('{img}').getAttribute('src');");
            let loaded = format!(
                "const i = document.querySelector('{img}'); return !!i && i.complete && i.naturalWidth;"
            );
            let deadline = std::time::Instant::now() + common::browser::WAIT;
            while b.js(&loaded).await != json!(640) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the picture did not load"
                );
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            assert_eq!(b.js(&src).await, json!(url));
            b.screenshot("9-product-with-image").await;
            // The other picture is a click away.
            b.click("#view-product .picture-choice[aria-label^=\"Show picture 2\"]")
                .await;
            assert_eq!(b.js(&src).await, images[1]["url"]);

            // The list shows the thumbnail.
            b.goto(&node.url("/")).await;
            let card = format!("#products li.card[data-product=\"{id}\"] img.thumb.photo");
            let thumb = product["thumbnail"].as_str().expect("a thumbnail");
            assert_eq!(b.attr(&card, "src").await.as_deref(), Some(thumb));
        },
    )
    .await;
}
