//! Sign-up, users/me, JWT obtain/refresh/rotation, forged and expired tokens, login throttling.
use common::*;
use soundwave_testkit as common;

const SECRET: &str = "integration-test-jwt-secret-0123456789";

fn assert_no_password(user: &Value, password: &str) {
    let obj = user.as_object().expect("user is a JSON object");
    for key in ["password", "password_hash", "hash", "passwd"] {
        assert!(
            !obj.contains_key(key),
            "user output must not contain {key}: {user}"
        );
    }
    let text = user.to_string();
    assert!(
        !text.contains(password),
        "user output leaks the password: {text}"
    );
    assert!(
        !text.contains("$argon2"),
        "user output leaks a hash: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signup_creates_a_non_staff_user_without_leaking_the_password() {
    let node = Node::start();
    let username = unique_name("alice");
    let password = "correct-horse-battery";
    let r = node
        .post(
            "/api/users/",
            None,
            &json!({"username": username, "password": password, "email": "alice@example.com",
                    "phone_number": "+1 555-0100", "is_staff": true}),
        )
        .await;
    r.expect(201);
    let user = r.json.clone();
    assert_no_password(&user, password);
    assert!(user["id"].is_i64(), "id: {user}");
    assert_eq!(user["username"], json!(username));
    assert_eq!(user["email"], "alice@example.com");
    assert_eq!(user["phone_number"], "+1 555-0100");
    assert_eq!(user["is_staff"], false, "is_staff cannot be set at sign-up");
    let joined = user["date_joined"].as_str().expect("date_joined string");
    assert!(
        joined.contains('T') && joined.len() >= 20,
        "RFC 3339 date_joined: {joined}"
    );

    let (access, _) = node.login(&username, password).await;
    let r = node.get("/api/users/me/", Some(&access)).await;
    r.expect_json(200, &user);
    assert_no_password(&r.json, password);

    // Not staff for real.
    node.post("/api/categories/", Some(&access), &json!({"name": "Hack"}))
        .await
        .expect_forbidden();

    // The admin from the environment is staff.
    let admin = node.admin_token().await;
    let r = node.get("/api/users/me/", Some(&admin)).await;
    r.expect(200);
    assert_eq!(r.json["username"], ADMIN_USERNAME);
    assert_eq!(r.json["is_staff"], true);
    assert_no_password(&r.json, ADMIN_PASSWORD);

    // Minimal sign-up (optional fields omitted) works.
    let r = node
        .post(
            "/api/users/",
            None,
            &json!({"username": unique_name("bob"), "password": "long-enough-pw"}),
        )
        .await;
    r.expect(201);
    assert_eq!(r.json["is_staff"], false);
    assert_no_password(&r.json, "long-enough-pw");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signup_validation() {
    let node = Node::start();
    let ok_name = unique_name("carol");

    node.post(
        "/api/users/",
        None,
        &json!({"username": ok_name, "password": "short77"}),
    )
    .await
    .expect_field_error("password");
    node.post("/api/users/", None, &json!({"username": ok_name}))
        .await
        .expect_field_error("password");
    node.post("/api/users/", None, &json!({"password": "long-enough-pw"}))
        .await
        .expect_field_error("username");
    for bad in ["bad name", "bad!name", "semi;colon", "slash/name", ""] {
        node.post(
            "/api/users/",
            None,
            &json!({"username": bad, "password": "long-enough-pw"}),
        )
        .await
        .expect_field_error("username");
    }
    node.post(
        "/api/users/",
        None,
        &json!({"username": "u".repeat(151), "password": "long-enough-pw"}),
    )
    .await
    .expect_field_error("username");
    node.post(
        "/api/users/",
        None,
        &json!({"username": unique_name("dave"), "password": "long-enough-pw",
                "phone_number": "call me maybe"}),
    )
    .await
    .expect_field_error("phone_number");
    node.post(
        "/api/users/",
        None,
        &json!({"username": unique_name("dave"), "password": "long-enough-pw",
                "phone_number": "1234567890123456"}),
    )
    .await
    .expect_field_error("phone_number");

    // None of those created the user.
    node.token_resp(&ok_name, "short77")
        .await
        .expect_detail_eq(401, MSG_BAD_LOGIN);

    // Allowed characters and lengths.
    let r = node
        .post(
            "/api/users/",
            None,
            &json!({"username": format!("{}@a.b+c-d_e", &ok_name), "password": "exactly8"}),
        )
        .await;
    r.expect(201);
    let long = format!("{}{}", ok_name, "x".repeat(150 - ok_name.len()));
    node.post(
        "/api/users/",
        None,
        &json!({"username": long, "password": "long-enough-pw"}),
    )
    .await
    .expect(201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_username_conflicts() {
    let node = Node::start();
    let name = unique_name("erin");
    node.signup(&name, "first-password").await;
    node.post(
        "/api/users/",
        None,
        &json!({"username": name, "password": "second-password"}),
    )
    .await
    .expect_detail(409);
    // The original password still works, the second does not.
    node.login(&name, "first-password").await;
    node.token_resp(&name, "second-password")
        .await
        .expect_detail_eq(401, MSG_BAD_LOGIN);
    // Nor in another case.
    node.post(
        "/api/users/",
        None,
        &json!({"username": name.to_uppercase(), "password": "third-password"}),
    )
    .await
    .expect_detail(409);
    // The env admin cannot be re-registered either.
    node.post(
        "/api/users/",
        None,
        &json!({"username": ADMIN_USERNAME, "password": "take-over-attempt"}),
    )
    .await
    .expect_detail(409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_me_requires_authentication() {
    let node = Node::start();
    node.get("/api/users/me/", None)
        .await
        .expect_unauthenticated();
    let r = node
        .send(
            node.request(Method::GET, "/api/users/me/", None)
                .header("Authorization", "Bearer"),
        )
        .await;
    assert_eq!(r.status, 401, "{}", r.text);
    node.get("/api/users/me/", Some("not-a-jwt"))
        .await
        .expect_bad_token();
    let user = node.new_user("frank").await;
    let r = node.get("/api/users/me/", user.tok()).await;
    r.expect(200);
    assert_eq!(r.json["id"], user.id);
    assert_eq!(r.json["username"], json!(user.username));
    assert_eq!(r.json["is_staff"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_obtain_and_wrong_credentials() {
    let node = Node::start();
    let user = node.new_user("grace").await;
    let r = node.token_resp(&user.username, &user.password).await;
    r.expect(200);
    assert!(
        r.json["access"].is_string() && r.json["refresh"].is_string(),
        "{}",
        r.text
    );

    let r = node.token_resp(&user.username, "wrong-password").await;
    r.expect_detail_eq(401, MSG_BAD_LOGIN);
    let r = node
        .token_resp("no-such-user-anywhere", "whatever-password")
        .await;
    r.expect_detail_eq(401, MSG_BAD_LOGIN);
    node.post("/api/token/", None, &json!({"username": user.username}))
        .await
        .expect_field_error("password");
    node.post("/api/token/", None, &json!({"password": "whatever"}))
        .await
        .expect_field_error("username");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issued_tokens_have_simplejwt_claims() {
    let node = Node::start();
    let user = node.new_user("heidi").await;
    let before = now_secs();
    let (access, refresh) = node.login(&user.username, &user.password).await;
    let after = now_secs();

    let (ah, ap, _) = jwt_parts(&access);
    let (rh, rp, _) = jwt_parts(&refresh);
    assert_eq!(ah["alg"], "HS256", "access header {ah}");
    assert_eq!(rh["alg"], "HS256", "refresh header {rh}");
    assert_eq!(ap["token_type"], "access", "{ap}");
    assert_eq!(rp["token_type"], "refresh", "{rp}");
    for (name, p) in [("access", &ap), ("refresh", &rp)] {
        assert!(json_id_eq(&p["user_id"], user.id), "{name} user_id: {p}");
        for claim in ["exp", "iat"] {
            assert!(
                p[claim].is_i64() || p[claim].is_u64(),
                "{name} {claim} integer: {p}"
            );
        }
        let iat = p["iat"].as_i64().unwrap();
        assert!(
            iat >= before - 2 && iat <= after + 2,
            "{name} iat {iat} not now ({before})"
        );
        assert!(
            p["jti"].as_str().is_some_and(|s| !s.is_empty()),
            "{name} jti: {p}"
        );
    }
    assert_ne!(ap["jti"], rp["jti"]);
    // Default lifetimes: 5 minutes and 1 day.
    assert_eq!(
        ap["exp"].as_i64().unwrap() - ap["iat"].as_i64().unwrap(),
        300,
        "{ap}"
    );
    assert_eq!(
        rp["exp"].as_i64().unwrap() - rp["iat"].as_i64().unwrap(),
        86400,
        "{rp}"
    );

    // Two logins give different tokens.
    let (access2, _) = node.login(&user.username, &user.password).await;
    assert_ne!(jwt_parts(&access2).1["jti"], ap["jti"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rotates_and_old_refresh_is_rejected() {
    let node = Node::start();
    let user = node.new_user("ivan").await;
    let r1 = user.refresh.clone();

    let r = node
        .post("/api/token/refresh/", None, &json!({"refresh": r1}))
        .await;
    r.expect(200);
    let access2 = r.json["access"].as_str().expect("access").to_string();
    let r2 = r.json["refresh"]
        .as_str()
        .expect("rotated refresh")
        .to_string();
    assert_ne!(r2, r1, "refresh token must rotate");
    assert_eq!(jwt_parts(&access2).1["token_type"], "access");
    assert_eq!(jwt_parts(&r2).1["token_type"], "refresh");
    assert!(json_id_eq(&jwt_parts(&r2).1["user_id"], user.id));

    node.get("/api/users/me/", Some(&access2)).await.expect(200);

    // The used refresh token stops working.
    node.post("/api/token/refresh/", None, &json!({"refresh": r1}))
        .await
        .expect_bad_token();
    // The rotated one works (once).
    let r = node
        .post("/api/token/refresh/", None, &json!({"refresh": r2}))
        .await;
    r.expect(200);
    let r3 = r.json["refresh"].as_str().unwrap().to_string();
    node.post("/api/token/refresh/", None, &json!({"refresh": r2}))
        .await
        .expect_bad_token();
    node.post("/api/token/refresh/", None, &json!({"refresh": r3}))
        .await
        .expect(200);

    node.post("/api/token/refresh/", None, &json!({}))
        .await
        .expect_field_error("refresh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_types_are_not_interchangeable() {
    let node = Node::start();
    let user = node.new_user("judy").await;
    // access used as refresh
    node.post(
        "/api/token/refresh/",
        None,
        &json!({"refresh": user.access}),
    )
    .await
    .expect_bad_token();
    // refresh used as access
    node.get("/api/users/me/", Some(&user.refresh))
        .await
        .expect_bad_token();
    // both still fine for their own purpose
    node.get("/api/users/me/", user.tok()).await.expect(200);
    node.post(
        "/api/token/refresh/",
        None,
        &json!({"refresh": user.refresh}),
    )
    .await
    .expect(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_tokens_are_rejected() {
    let node = Node::start();
    let user = node.new_user("mallory").await;
    let admin = node.admin_token().await;
    let admin_id = node.get("/api/users/me/", Some(&admin)).await.expect(200)["id"]
        .as_i64()
        .unwrap();

    let (header, payload, sig) = jwt_parts(&user.access);

    // Payload changed (become admin), original signature kept.
    let mut evil = payload.clone();
    evil["user_id"] = if payload["user_id"].is_string() {
        json!(admin_id.to_string())
    } else {
        json!(admin_id)
    };
    let forged = jwt_assemble(&header, &evil, &sig);
    node.get("/api/users/me/", Some(&forged))
        .await
        .expect_bad_token();
    node.post("/api/categories/", Some(&forged), &json!({"name": "Pwned"}))
        .await
        .expect_bad_token();

    // Later expiry, original signature kept.
    let mut longer = payload.clone();
    longer["exp"] = json!(payload["exp"].as_i64().unwrap() + 86400 * 365);
    node.get(
        "/api/users/me/",
        Some(&jwt_assemble(&header, &longer, &sig)),
    )
    .await
    .expect_bad_token();

    // Signature bytes flipped.
    let mut sig_bytes = b64url_decode(&sig);
    sig_bytes[0] ^= 0x01;
    let bad_sig = format!(
        "{}.{}",
        user.access.rsplit_once('.').unwrap().0,
        b64url_encode(&sig_bytes)
    );
    node.get("/api/users/me/", Some(&bad_sig))
        .await
        .expect_bad_token();

    // Truncated / garbage.
    let truncated = &user.access[..user.access.len() - 5];
    node.get("/api/users/me/", Some(truncated))
        .await
        .expect_bad_token();
    node.get("/api/users/me/", Some("a.b.c"))
        .await
        .expect_bad_token();

    // A tampered refresh token.
    let (rh, mut rp, rsig) = jwt_parts(&user.refresh);
    rp["user_id"] = evil["user_id"].clone();
    node.post(
        "/api/token/refresh/",
        None,
        &json!({"refresh": jwt_assemble(&rh, &rp, &rsig)}),
    )
    .await
    .expect_bad_token();

    // The genuine token still works.
    let r = node.get("/api/users/me/", user.tok()).await;
    r.expect(200);
    assert_eq!(r.json["username"], json!(user.username));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_hs256_with_the_node_secret_is_accepted() {
    let node = Node::builder()
        .config(&format!("[auth]\njwt_secret = \"{SECRET}\"\n"))
        .start();
    let user = node.new_user("oscar").await;
    let (_, payload, _) = jwt_parts(&user.access);

    // Control: the server signs with the configured secret, so an HS256 token we sign with it
    // is genuine and must be accepted. (If this fails, the other checks below prove nothing.)
    let mut fresh = payload.clone();
    fresh["jti"] = json!(format!("control-{}", unique_name("jti")));
    let genuine = jwt_sign_hmac("HS256", &fresh, SECRET.as_bytes());
    let r = node.get("/api/users/me/", Some(&genuine)).await;
    r.expect(200);
    assert_eq!(r.json["username"], json!(user.username));

    // alg: none, with and without a signature segment.
    for alg in ["none", "None", "NONE"] {
        let none = jwt_assemble(&json!({"alg": alg, "typ": "JWT"}), &payload, "");
        node.get("/api/users/me/", Some(&none))
            .await
            .expect_bad_token();
    }
    let none_with_sig = jwt_assemble(
        &json!({"alg": "none", "typ": "JWT"}),
        &payload,
        user.access.rsplit_once('.').unwrap().1,
    );
    node.get("/api/users/me/", Some(&none_with_sig))
        .await
        .expect_bad_token();

    // Other HMAC algorithms, even with the right secret.
    for alg in ["HS512", "HS384"] {
        let t = jwt_sign_hmac(alg, &payload, SECRET.as_bytes());
        node.get("/api/users/me/", Some(&t))
            .await
            .expect_bad_token();
    }
    // HS256 with another secret.
    let t = jwt_sign_hmac("HS256", &payload, b"some-other-secret-entirely");
    node.get("/api/users/me/", Some(&t))
        .await
        .expect_bad_token();
    let t = jwt_sign_hmac("HS256", &payload, b"");
    node.get("/api/users/me/", Some(&t))
        .await
        .expect_bad_token();

    // Forged refresh tokens: alg none and HS512.
    let (_, rp, _) = jwt_parts(&user.refresh);
    let none = jwt_assemble(&json!({"alg": "none", "typ": "JWT"}), &rp, "");
    node.post("/api/token/refresh/", None, &json!({"refresh": none}))
        .await
        .expect_bad_token();
    let hs512 = jwt_sign_hmac("HS512", &rp, SECRET.as_bytes());
    node.post("/api/token/refresh/", None, &json!({"refresh": hs512}))
        .await
        .expect_bad_token();

    // A token for a user that does not exist.
    let mut ghost = payload.clone();
    ghost["user_id"] = if payload["user_id"].is_string() {
        json!("987654")
    } else {
        json!(987654)
    };
    let t = jwt_sign_hmac("HS256", &ghost, SECRET.as_bytes());
    let r = node.get("/api/users/me/", Some(&t)).await;
    assert_eq!(r.status, 401, "token for a missing user: {}", r.text);

    // An already expired (but correctly signed) token.
    let mut old = payload.clone();
    old["iat"] = json!(now_secs() - 1000);
    old["exp"] = json!(now_secs() - 500);
    let t = jwt_sign_hmac("HS256", &old, SECRET.as_bytes());
    node.get("/api/users/me/", Some(&t))
        .await
        .expect_bad_token();

    // A correctly signed token that is not valid yet (`nbf` in the future).
    let mut early = payload.clone();
    early["nbf"] = json!(now_secs() + 3600);
    let t = jwt_sign_hmac("HS256", &early, SECRET.as_bytes());
    node.get("/api/users/me/", Some(&t))
        .await
        .expect_bad_token();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_tokens_are_rejected() {
    let node = Node::builder()
        .config("[auth]\naccess_token_lifetime_secs = 1\nrefresh_token_lifetime_secs = 1\n")
        .start();
    let user = node.new_user("peggy").await;
    let (_, ap, _) = jwt_parts(&user.access);
    assert_eq!(
        ap["exp"].as_i64().unwrap() - ap["iat"].as_i64().unwrap(),
        1,
        "{ap}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    node.get("/api/users/me/", user.tok())
        .await
        .expect_bad_token();
    node.post(
        "/api/token/refresh/",
        None,
        &json!({"refresh": user.refresh}),
    )
    .await
    .expect_bad_token();
    // A fresh login works again.
    let (access, _) = node.login(&user.username, &user.password).await;
    node.get("/api/users/me/", Some(&access)).await.expect(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_throttle_per_username() {
    let node = Node::builder()
        .config("[auth]\nlogin_max_failures = 3\nlogin_failure_window_secs = 300\n")
        .start();
    let victim = node.new_user("victim").await;
    let bystander = node.new_user("bystander").await;

    for i in 1..=3 {
        let r = node
            .token_resp(&victim.username, &format!("guess-{i}"))
            .await;
        r.expect_detail_eq(401, MSG_BAD_LOGIN);
    }
    let r = node.token_resp(&victim.username, "guess-4").await;
    r.expect_detail(429);
    let retry = r.header_required("retry-after");
    let secs: u64 = retry
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After should be seconds, got {retry:?}"));
    assert!(
        (1..=300).contains(&secs),
        "Retry-After {secs} within the window"
    );

    // Other usernames are not affected.
    node.login(&bystander.username, &bystander.password).await;
    node.token_resp(&bystander.username, "wrong-once")
        .await
        .expect_detail_eq(401, MSG_BAD_LOGIN);
    // Already-issued tokens keep working.
    node.get("/api/users/me/", victim.tok()).await.expect(200);
}

/// While a username is locked out, even the right password gets 429 (otherwise the lock-out is
/// a password oracle and brute force continues).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_throttle_blocks_even_the_right_password() {
    let node = Node::builder()
        .config("[auth]\nlogin_max_failures = 3\n")
        .start();
    let victim = node.new_user("locked").await;
    for i in 1..=3 {
        node.token_resp(&victim.username, &format!("guess-{i}"))
            .await
            .expect(401);
    }
    let r = node.token_resp(&victim.username, &victim.password).await;
    r.expect_detail(429);
    r.header_required("retry-after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_throttle_per_ip() {
    let node = Node::builder()
        .config("[auth]\nlogin_max_failures = 100\nlogin_max_failures_per_ip = 3\n")
        .start();
    for i in 1..=3 {
        node.token_resp(&format!("ghost{i}"), "wrong-password")
            .await
            .expect_detail_eq(401, MSG_BAD_LOGIN);
    }
    let r = node.token_resp("ghost4", "wrong-password").await;
    r.expect_detail(429);
    r.header_required("retry-after");
}

/// Concurrent guesses cannot get past the limit: each is admitted, and counted, before its
/// password is checked. 30 at once for one username with a limit of 5: at most 5 checked,
/// whether the right password is among them or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_guesses_check_at_most_the_limit() {
    let node = Node::builder()
        .config("[auth]\nlogin_max_failures = 5\nlogin_failure_window_secs = 300\n")
        .start();
    let victim = node.new_user("concurrent").await;
    let client = reqwest::Client::new();
    let mut guesses = tokio::task::JoinSet::new();
    for i in 0..30 {
        let password = if i == 29 {
            victim.password.clone()
        } else {
            format!("guess-{i}")
        };
        let request = client
            .post(node.url("/api/token/"))
            .json(&json!({"username": victim.username, "password": password}));
        guesses.spawn(async move {
            request
                .send()
                .await
                .expect("POST /api/token/")
                .status()
                .as_u16()
        });
    }
    let statuses = guesses.join_all().await;
    let checked = statuses.iter().filter(|s| matches!(s, 200 | 401)).count();
    let refused = statuses.iter().filter(|&&s| s == 429).count();
    assert!(checked <= 5, "{checked} passwords checked: {statuses:?}");
    assert_eq!(checked + refused, 30, "only 200, 401 and 429: {statuses:?}");
}

/// An attacker failing from one IP locks that IP out of the username, not the owner, who
/// logs in from elsewhere; guesses spread over many IPs meet the per-username limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attacker_elsewhere_does_not_lock_the_owner_out() {
    let node = Node::builder()
        .config(
            "[auth]\nlogin_max_failures = 3\nlogin_max_failures_per_username = 6\n\
             login_max_failures_per_ip = 100\n",
        )
        .start();
    let victim = node.new_user("owner").await;
    let ips = lb::client_ips(4);
    let attempt = |ip, password: String| {
        let request = lb::client_from(ip)
            .post(node.url("/api/token/"))
            .json(&json!({"username": victim.username, "password": password}));
        async move {
            request
                .send()
                .await
                .expect("POST /api/token/")
                .status()
                .as_u16()
        }
    };
    for i in 0..3 {
        assert_eq!(attempt(ips[0], format!("guess-{i}")).await, 401);
    }
    assert_eq!(
        attempt(ips[0], "guess-3".into()).await,
        429,
        "the attacker's IP is locked"
    );
    assert_eq!(
        attempt(ips[1], victim.password.clone()).await,
        200,
        "the owner, elsewhere, gets in"
    );
    // Three more failures from two other IPs: six for the username in all.
    for (i, ip) in [ips[2], ips[2], ips[3]].into_iter().enumerate() {
        assert_eq!(attempt(ip, format!("spread-{i}")).await, 401);
    }
    assert_eq!(
        attempt(ips[1], victim.password.clone()).await,
        429,
        "the per-username limit holds whatever the IP"
    );
}

/// Passwords an attacker tries first are refused at sign-up, with a field error that says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weak_passwords_are_refused_at_signup() {
    let node = Node::start();
    let name = unique_name("weakling");
    for password in [
        "password",
        "Password1",
        "12345678",
        "98765432100",
        name.as_str(),
    ] {
        let r = node
            .post(
                "/api/users/",
                None,
                &json!({"username": name, "password": password}),
            )
            .await;
        r.expect_field_error("password");
    }
    let suffixed = format!("{name}-2026");
    node.post(
        "/api/users/",
        None,
        &json!({"username": name, "password": suffixed}),
    )
    .await
    .expect_field_error("password");
    node.signup(&name, "tambourine-quietly-7").await;
}
