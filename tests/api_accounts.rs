//! Accounts: logout (`/api/token/blacklist/`), password change (`/api/users/me/password/`)
//! revoking the user's refresh tokens, and the refresh token's HttpOnly cookie.
use common::*;
use reqwest::Method;
use soundwave_testkit as common;

async fn refresh(node: &Node, token: &str) -> Resp {
    node.post("/api/token/refresh/", None, &json!({ "refresh": token }))
        .await
}

/// A request carrying only the refresh cookie (as a browser sends it), with an empty body.
async fn refresh_with_cookie(node: &Node, cookie: &str) -> Resp {
    let rb = node
        .request(Method::POST, "/api/token/refresh/", None)
        .header("Content-Type", "application/json")
        .header("Cookie", format!("sw_refresh={cookie}"))
        .body("{}");
    node.send(rb).await
}

/// The refresh token a response set in its cookie, and the cookie's attributes.
fn set_cookie(r: &Resp) -> (String, String) {
    let line = r.header_required("set-cookie");
    let (pair, attributes) = line.split_once(';').expect("attributes");
    let value = pair
        .strip_prefix("sw_refresh=")
        .expect("the refresh cookie");
    (value.to_owned(), attributes.trim().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blacklisted_refresh_token_is_refused() {
    let node = Node::start();
    let user = node.new_user("logout").await;
    let other_session = node.login(&user.username, &user.password).await.1;

    let r = node
        .post(
            "/api/token/blacklist/",
            None,
            &json!({ "refresh": user.refresh }),
        )
        .await;
    r.expect_json(200, &json!({}));
    // The cookie is cleared as well.
    let (value, attributes) = set_cookie(&r);
    assert_eq!(value, "");
    assert!(attributes.contains("Max-Age=0"), "{attributes}");

    refresh(&node, &user.refresh).await.expect(401);
    // Blacklisting it twice is refused as simplejwt does (the token is no longer valid).
    node.post(
        "/api/token/blacklist/",
        None,
        &json!({ "refresh": user.refresh }),
    )
    .await
    .expect(401);
    // Only that session ended.
    refresh(&node, &other_session).await.expect(200);

    // Bad input: no token, an access token, garbage, not JSON.
    node.post("/api/token/blacklist/", None, &json!({}))
        .await
        .expect_field_error("refresh");
    node.post(
        "/api/token/blacklist/",
        None,
        &json!({ "refresh": user.access }),
    )
    .await
    .expect(401);
    node.post(
        "/api/token/blacklist/",
        None,
        &json!({ "refresh": "x.y.z" }),
    )
    .await
    .expect(401);
    node.post_raw("/api/token/blacklist/", None, "text/plain", "refresh")
        .await
        .expect(415);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_change_revokes_every_earlier_refresh_token() {
    let node = Node::start();
    let user = node.new_user("changer").await;
    let second_session = node.login(&user.username, &user.password).await.1;
    let new_password = "a-much-better-secret";

    // Bad input first: nothing changes.
    let change = |body: Value| {
        let node = &node;
        let access = user.access.clone();
        async move {
            node.post("/api/users/me/password/", Some(&access), &body)
                .await
        }
    };
    change(json!({ "current_password": "wrong-password", "new_password": new_password }))
        .await
        .expect_field_error("current_password");
    change(json!({ "current_password": user.password, "new_password": "short" }))
        .await
        .expect_field_error("new_password");
    change(json!({ "current_password": user.password, "new_password": "password123" }))
        .await
        .expect_field_error("new_password");
    change(json!({ "current_password": user.password, "new_password": user.password }))
        .await
        .expect_field_error("new_password");
    change(json!({ "current_password": user.password }))
        .await
        .expect_field_error("new_password");
    node.post(
        "/api/users/me/password/",
        None,
        &json!({ "current_password": user.password, "new_password": new_password }),
    )
    .await
    .expect_unauthenticated();
    // Still the old password, still the old sessions.
    let still = node.login(&user.username, &user.password).await.1;

    let r =
        change(json!({ "current_password": user.password, "new_password": new_password })).await;
    r.expect(200);
    let fresh_refresh = r.json["refresh"].as_str().expect("a new refresh token");
    let fresh_access = r.json["access"].as_str().expect("a new access token");

    // Every refresh token issued before the change is refused, even one from this second.
    for old in [&user.refresh, &second_session, &still] {
        refresh(&node, old).await.expect(401);
    }
    // The pair the change answered with works, and so does a login with the new password.
    node.get("/api/users/me/", Some(fresh_access))
        .await
        .expect(200);
    refresh(&node, fresh_refresh).await.expect(200);
    node.token_resp(&user.username, &user.password)
        .await
        .expect(401);
    let (_, after) = node.login(&user.username, new_password).await;
    refresh(&node, &after).await.expect(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refresh_cookie_refreshes_when_the_body_has_no_token() {
    let node = Node::start();
    let user = node.new_user("cookie").await;
    let r = node.token_resp(&user.username, &user.password).await;
    r.expect(200);
    let (cookie, attributes) = set_cookie(&r);
    assert_eq!(
        cookie,
        r.json["refresh"].as_str().unwrap(),
        "the same token"
    );
    for attribute in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/api/token/",
        "Max-Age=",
    ] {
        assert!(attributes.contains(attribute), "{attributes}");
    }
    assert!(!attributes.contains("Secure"), "plain http: {attributes}");

    // A browser tab with only the cookie gets tokens in the body and a rotated cookie.
    let r = refresh_with_cookie(&node, &cookie).await;
    r.expect(200);
    let (rotated, _) = set_cookie(&r);
    assert_eq!(rotated, r.json["refresh"].as_str().unwrap());
    node.get("/api/users/me/", r.json["access"].as_str())
        .await
        .expect(200);
    // The cookie rotated: the old one is used up.
    refresh_with_cookie(&node, &cookie).await.expect(401);

    // A token in the body wins over the cookie (API clients are unchanged).
    let rb = node
        .request(Method::POST, "/api/token/refresh/", None)
        .header("Cookie", format!("sw_refresh={rotated}"))
        .json(&json!({ "refresh": "not-a-token" }));
    node.send(rb).await.expect(401);

    // Logout with only the cookie revokes it.
    let rb = node
        .request(Method::POST, "/api/token/blacklist/", None)
        .header("Cookie", format!("sw_refresh={rotated}"))
        .json(&json!({}));
    node.send(rb).await.expect_json(200, &json!({}));
    refresh_with_cookie(&node, &rotated).await.expect(401);

    // Behind a trusted proxy that says https, the cookie is Secure.
    let rb = node
        .request(Method::POST, "/api/token/", None)
        .header("X-Forwarded-Proto", "https")
        .json(&json!({ "username": user.username, "password": user.password }));
    let r = node.send(rb).await;
    r.expect(200);
    assert!(set_cookie(&r).1.ends_with("Secure"), "{:?}", set_cookie(&r));
}
