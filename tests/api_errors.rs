//! The error table, path forms, node header, health and metrics.
use common::*;
use soundwave_testkit as common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_400_with_detail() {
    let node = Node::start();
    let admin = node.admin_token().await;
    for body in [
        r#"{"name": "#,
        "{name: 'x'}",
        "not json at all",
        r#"{"name":"x"} trailing"#,
    ] {
        let r = node
            .post_raw(
                "/api/categories/",
                Some(&admin),
                "application/json",
                body.to_string(),
            )
            .await;
        r.expect_detail(400);
    }
    let r = node
        .post_raw(
            "/api/token/",
            None,
            "application/json",
            r#"{"username": "a""#.to_string(),
        )
        .await;
    r.expect_detail(400);
    let r = node
        .post_raw(
            "/api/users/",
            None,
            "application/json; charset=utf-8",
            "{".to_string(),
        )
        .await;
    r.expect_detail(400);
    assert!(node.list("/api/categories/", None).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_types_and_missing_fields_are_field_errors() {
    let node = Node::start();
    let admin = node.admin_token().await;
    let tok = Some(admin.as_str());
    let cat = node.create_category(&admin, "Types").await;

    // Wrong types.
    node.post(
        "/api/products/",
        tok,
        &json!({"name": "P", "stock": "many", "price": "1.00", "description": "", "category": cat}),
    )
    .await
    .expect_field_error("stock");
    node.post(
        "/api/products/",
        tok,
        &json!({"name": "P", "stock": 1.5, "price": "1.00", "description": "", "category": cat}),
    )
    .await
    .expect_field_error("stock");
    node.post(
        "/api/products/",
        tok,
        &json!({"name": "P", "stock": 1, "price": {"amount": 1}, "description": "", "category": cat}),
    )
    .await
    .expect_field_error("price");
    node.post(
        "/api/products/",
        tok,
        &json!({"name": "P", "stock": 1, "price": "1.00", "description": "", "category": [cat]}),
    )
    .await
    .expect_field_error("category");
    node.post("/api/categories/", tok, &json!({"name": ["a", "b"]}))
        .await
        .expect_field_error("name");
    node.post(
        "/api/users/",
        None,
        &json!({"username": {"x": 1}, "password": "long-enough-pw"}),
    )
    .await
    .expect_field_error("username");

    // Missing fields: one error per missing required field.
    let r = node.post("/api/products/", tok, &json!({})).await;
    for f in ["name", "price", "category"] {
        r.expect_field_error(f);
    }
    let r = node.post("/api/users/", None, &json!({})).await;
    r.expect_field_error("username");
    r.expect_field_error("password");
    let r = node.post("/api/token/", None, &json!({})).await;
    r.expect_field_error("username");
    r.expect_field_error("password");

    // Several wrong fields are all reported.
    let r = node
        .post(
            "/api/products/",
            tok,
            &json!({"name": "", "stock": -1, "price": "x", "description": "", "category": 999_999}),
        )
        .await;
    for f in ["name", "stock", "price", "category"] {
        r.expect_field_error(f);
    }

    // A body that is JSON but not an object.
    for body in [json!([1, 2]), json!("name"), json!(42), json!(null)] {
        let r = node.post("/api/categories/", tok, &body).await;
        assert_eq!(r.status, 400, "body {body}: {}", r.text);
        assert!(r.json.is_object(), "400 body is a JSON object: {}", r.text);
    }
    assert!(node.list("/api/products/", None).await.is_empty());
    assert_eq!(node.list("/api/categories/", None).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_not_allowed_has_allow_and_detail() {
    let node = Node::start();
    let admin = node.admin_token().await;
    let cat = node.create_category(&admin, "Methods").await;
    let cases: Vec<(Method, String, Vec<&str>)> = vec![
        (Method::PUT, "/api/products/".into(), vec!["GET", "POST"]),
        (Method::DELETE, "/api/products/".into(), vec!["GET", "POST"]),
        (
            Method::PATCH,
            "/api/categories/".into(),
            vec!["GET", "POST"],
        ),
        (
            Method::POST,
            format!("/api/categories/{cat}/"),
            vec!["GET", "PUT", "PATCH", "DELETE"],
        ),
        (Method::GET, "/api/token/".into(), vec!["POST"]),
        (
            Method::GET,
            format!("/api/orders/{cat}/cancel/"),
            vec!["POST"],
        ),
        (Method::DELETE, "/api/users/me/".into(), vec!["GET"]),
    ];
    for (method, path, allowed) in cases {
        let mut rb = node.request(method.clone(), &path, Some(&admin));
        if method != Method::GET && method != Method::DELETE {
            rb = rb.json(&json!({"name": "x"}));
        }
        let r = node.send(rb).await;
        r.expect_detail(405);
        let allow = r.header_required("allow").to_uppercase();
        let listed: Vec<&str> = allow.split(',').map(str::trim).collect();
        for m in allowed {
            assert!(
                listed.contains(&m),
                "{method} {path}: Allow {allow:?} should list {m}"
            );
        }
        assert!(
            !listed.contains(&method.as_str()),
            "{method} {path}: Allow {allow:?} must not list the refused method"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body_is_413() {
    let node = Node::start();
    let admin = node.admin_token().await;
    let cat = node.create_category(&admin, "Big").await;
    // The oversized requests go on their own connections: see
    // `connection_stays_usable_after_413` for what happens to a pooled one.
    let big = json!({"name": "Huge", "stock": 1, "price": "1.00",
                     "description": "x".repeat(2 * 1024 * 1024), "category": cat});
    let r = node
        .send_unpooled(
            node.request(Method::POST, "/api/products/", Some(&admin))
                .json(&big),
        )
        .await;
    r.expect_detail(413);
    let r = node
        .send_unpooled(
            node.request(Method::POST, "/api/users/", None)
                .json(&json!({"username": "big", "password": "p".repeat(2 * 1024 * 1024)})),
        )
        .await;
    r.expect_detail(413);
    assert!(node.list("/api/products/", None).await.is_empty());
    // The rejected sign-up created nothing: the username is still free.
    node.signup("big", PASSWORD).await;
    // Just under the limit is not a 413.
    let ok = json!({"name": "Large", "stock": 1, "price": "1.00",
                    "description": "y".repeat(900 * 1024), "category": cat});
    let r = node.post("/api/products/", Some(&admin), &ok).await;
    assert_ne!(
        r.status,
        413,
        "a 900 KiB body is under the 1 MiB limit: {}",
        truncate(&r.text, 300)
    );
}

/// Reads one HTTP/1.1 response (head + Content-Length body) from a raw socket.
fn read_raw_response(stream: &mut std::net::TcpStream) -> std::io::Result<(String, String)> {
    use std::io::Read;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("connection closed after {} bytes", buf.len()),
            ));
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body)?;
    Ok((head, String::from_utf8_lossy(&body).to_string()))
}

/// After answering 413 the server must either say `Connection: close` or read the rest of the
/// body and keep serving the connection. Otherwise a keep-alive client (reqwest, browsers, the
/// load balancer) sends its next request on a connection the server is closing and gets an
/// error instead of an answer (seen as `hyper::Error(IncompleteMessage)` in reqwest).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_stays_usable_after_413() {
    let node = Node::start();
    let admin = node.admin_token().await;
    let addr = node.base_url().trim_start_matches("http://").to_string();
    let outcome = tokio::task::spawn_blocking(move || -> Result<(), String> {
        use std::io::Write;
        let mut stream = std::net::TcpStream::connect(&addr).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        stream
            .set_write_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let body = format!("{{\"name\": \"{}\"}}", "x".repeat(2 * 1024 * 1024));
        let head = format!(
            "POST /api/categories/ HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {admin}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let mut writer = stream.try_clone().unwrap();
        let sender = std::thread::spawn(move || -> std::io::Result<()> {
            writer.write_all(head.as_bytes())?;
            writer.write_all(body.as_bytes())?;
            writer.flush()
        });
        let (head, body) = read_raw_response(&mut stream).map_err(|e| format!("no 413 response: {e}"))?;
        if !head.starts_with("HTTP/1.1 413") {
            return Err(format!("expected 413, got {head}{body}"));
        }
        if head.to_ascii_lowercase().contains("\r\nconnection: close") {
            return Ok(()); // the client knows not to reuse the connection
        }
        // No `Connection: close`: the connection is persistent, so the whole body must be
        // accepted and the next request answered.
        match sender.join().unwrap() {
            Ok(()) => {}
            Err(e) => {
                return Err(format!(
                    "413 without `Connection: close`, but sending the rest of the body failed: {e}\n{head}"
                ));
            }
        }
        stream
            .write_all(format!("GET /api/categories/ HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
            .map_err(|e| format!("413 without `Connection: close`, then writing the next request failed: {e}\n{head}"))?;
        match read_raw_response(&mut stream) {
            Ok((h, _)) if h.starts_with("HTTP/1.1 200") => Ok(()),
            Ok((h, b)) => Err(format!("next request answered {h}{b}")),
            Err(e) => Err(format!(
                "413 without `Connection: close`, then the next request on the connection got no answer: {e}\n413 head:\n{head}"
            )),
        }
    })
    .await
    .unwrap();
    if let Err(e) = outcome {
        panic!("{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_body_bytes_is_configurable() {
    let node = Node::builder()
        .config("[node]\nmax_body_bytes = 1024\n")
        .start();
    let admin = node.admin_token().await;
    let r = node
        .send_unpooled(
            node.request(Method::POST, "/api/categories/", Some(&admin))
                .json(&json!({"name": "z".repeat(2000)})),
        )
        .await;
    r.expect_detail(413);
    node.create_category(&admin, "Small").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_json_content_type_is_415() {
    let node = Node::start();
    let admin = node.admin_token().await;
    for ct in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/xml",
    ] {
        let r = node
            .post_raw(
                "/api/categories/",
                Some(&admin),
                ct,
                r#"{"name":"Plain"}"#.to_string(),
            )
            .await;
        r.expect_detail(415);
    }
    let r = node
        .post_raw(
            "/api/token/",
            None,
            "text/plain",
            format!(r#"{{"username":"{ADMIN_USERNAME}","password":"{ADMIN_PASSWORD}"}}"#),
        )
        .await;
    r.expect_detail(415);
    assert!(node.list("/api/categories/", None).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_ids_are_json_404() {
    let node = Node::start();
    let user = node.new_user("lost").await;
    for path in [
        "/api/nope/",
        "/api/nope",
        "/nothing-here",
        "/api/products/987654/",
        "/api/products/abc/",
        "/api/categories/987654/",
        "/api/products/1/extra/",
    ] {
        node.get(path, None).await.expect_not_found();
    }
    node.get("/api/orders/987654/", user.tok())
        .await
        .expect_not_found();
    node.get("/api/orderitems/987654/", user.tok())
        .await
        .expect_not_found();
    node.post("/api/nope/", user.tok(), &json!({}))
        .await
        .expect_not_found();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_without_trailing_slash_work() {
    let node = Node::start();
    let admin = node.admin_token().await;
    let tok = Some(admin.as_str());

    let r = node
        .post("/api/categories", tok, &json!({"name": "NoSlash"}))
        .await;
    r.expect(201);
    let cat = r.id();
    node.get(&format!("/api/categories/{cat}"), None)
        .await
        .expect_json(200, &json!({"id": cat, "name": "NoSlash"}));
    node.patch(
        &format!("/api/categories/{cat}"),
        tok,
        &json!({"name": "Still"}),
    )
    .await
    .expect_json(200, &json!({"id": cat, "name": "Still"}));
    let r = node
        .post("/api/products", tok, &product_body("Bare", 5, "2.00", cat))
        .await;
    r.expect(201);
    let pid = r.id();
    let list = node.list("/api/products", None).await;
    assert_eq!(ids(&list), vec![pid]);
    let r = node.get("/api/products?limit=1", None).await;
    assert_eq!(r.total_count(), 1);
    node.get(&format!("/api/products/{pid}"), None)
        .await
        .expect(200);

    let name = unique_name("slashless");
    node.post(
        "/api/users",
        None,
        &json!({"username": name, "password": PASSWORD}),
    )
    .await
    .expect(201);
    let r = node
        .post(
            "/api/token",
            None,
            &json!({"username": name, "password": PASSWORD}),
        )
        .await;
    r.expect(200);
    let access = r.json["access"].as_str().unwrap().to_string();
    let refresh = r.json["refresh"].as_str().unwrap().to_string();
    node.get("/api/users/me", Some(&access)).await.expect(200);
    node.post("/api/token/refresh", None, &json!({"refresh": refresh}))
        .await
        .expect(200);
    let r = node
        .post(
            "/api/orderitems",
            Some(&access),
            &json!({"product": pid, "quantity": 1}),
        )
        .await;
    r.expect(201);
    let iid = r.id();
    node.get(&format!("/api/orderitems/{iid}"), Some(&access))
        .await
        .expect(200);
    let r = node
        .post("/api/orders", Some(&access), &items_body(&[(pid, 2)]))
        .await;
    r.expect(201);
    let oid = r.id();
    node.get(&format!("/api/orders/{oid}"), Some(&access))
        .await
        .expect(200);
    let r = node
        .post_empty(&format!("/api/orders/{oid}/cancel"), Some(&access))
        .await;
    assert_eq!(r.expect(200)["status"], "cancelled");
    node.delete(&format!("/api/orderitems/{iid}"), Some(&access))
        .await
        .expect(204);
    node.get("/health", None).await.expect(200);
    node.get("/metrics/", None).await.expect(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_names_the_node() {
    let node = Node::builder().node_id(7).start();
    let admin = node.admin_token().await;
    let responses = vec![
        node.get("/api/products/", None).await,
        node.get("/api/nope/", None).await,
        node.post("/api/categories/", None, &json!({"name": "x"}))
            .await,
        node.put("/api/products/", Some(&admin), &json!({})).await,
        node.post("/api/categories/", Some(&admin), &json!({}))
            .await,
        node.token_resp("nobody-here", "wrong-password").await,
        node.get("/health/", None).await,
        node.get("/metrics", None).await,
        node.post_raw(
            "/api/categories/",
            Some(&admin),
            "text/plain",
            "x".to_string(),
        )
        .await,
    ];
    for r in responses {
        assert_eq!(
            r.header("x-soundwave-node"),
            Some("7"),
            "{} {} -> {}: X-Soundwave-Node header",
            r.method,
            r.url,
            r.status
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_checks() {
    let node = Node::start();
    let r = node.get("/health/", None).await;
    r.expect(200);
    assert_eq!(r.json["status"], "ok", "{}", r.text);
    for check in ["database", "cache"] {
        let c = &r.json["checks"][check];
        assert!(
            c.is_object(),
            "checks.{check} should be an object: {}",
            r.text
        );
        assert_eq!(c["status"], "ok", "checks.{check}.status: {}", r.text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_prometheus_text() {
    let node = Node::start();
    let admin = node.admin_token().await;
    let cat = node.create_category(&admin, "Metered").await;
    let pid = node.create_product(&admin, "Counter", 5, "1.00", cat).await;
    let user = node.new_user("metered").await;
    node.place_order(&user.access, &[(pid, 1)]).await;
    for _ in 0..3 {
        node.get("/api/products/", None).await.expect(200);
        node.get(&format!("/api/products/{pid}/"), None)
            .await
            .expect(200);
    }
    node.get("/api/nope/", None).await.expect(404);

    let r = node.get("/metrics", None).await;
    r.expect(200);
    let ct = r.header("content-type").unwrap_or("");
    assert!(
        ct.starts_with("text/plain"),
        "Prometheus content type, got {ct:?}"
    );
    assert!(
        r.text.contains("# TYPE"),
        "Prometheus text: {}",
        truncate(&r.text, 1500)
    );
    assert!(r.text.contains("# HELP") || r.text.contains("# TYPE"));
    // Every non-comment, non-empty line is `name{labels} value`.
    for line in r
        .text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let value = line.rsplit(' ').next().unwrap();
        assert!(
            value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
            "bad sample line {line:?}"
        );
    }
    let samples = r
        .text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count();
    assert!(
        samples >= 3,
        "some samples after a few requests: {}",
        truncate(&r.text, 1500)
    );
}

/// A client still sending a body the node refused on its `Content-Length` (413) reads the
/// answer: the node lingers, reading and dropping the rest, instead of closing over unread
/// bytes (which resets the connection and loses the answer on the client's side).
#[test]
fn a_refused_body_still_being_sent_does_not_lose_its_413() {
    use std::io::{Read, Write};
    let node = Node::start();
    let length = 2 * 1024 * 1024;
    let mut stream = std::net::TcpStream::connect(lb::node_addr(&node)).expect("connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("a read timeout");
    write!(
        stream,
        "POST /api/users/ HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
         Content-Length: {length}\r\n\r\n"
    )
    .expect("send the head");
    let chunk = vec![b'x'; 64 * 1024];
    stream.write_all(&chunk).expect("send the first part");
    // The node answers on the head and closes its side meanwhile.
    std::thread::sleep(std::time::Duration::from_millis(300));
    // As an HTTP client does, it sends the whole body before it reads: a reset here is
    // what clients report instead of the 413.
    for part in 1..length / chunk.len() {
        if let Err(error) = stream.write_all(&chunk) {
            panic!("the rest of the body (part {part}) could not be sent: {error}");
        }
    }
    let mut answer = Vec::new();
    let read = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "read {read:?}, answer {answer:?}"
    );
}
