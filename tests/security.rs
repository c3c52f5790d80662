//! What an attacker must not get (issue 20): the store's secrets through file modes, ...
//! Real processes, as a local user or a client would meet them.
use common::*;
use soundwave_testkit as common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// The data directory is 0700 and its files 0600 from the first start (the store holds the
/// token signing secret); a directory and store made too open are fixed at the next start,
/// with a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_and_its_files_are_private() {
    let mut node = Node::builder().demo().start();
    let dir = node.data_dir().to_path_buf();
    let store = dir.join("soundwave.redb");
    assert_eq!(mode(&dir), 0o700, "a fresh data directory");
    assert_eq!(mode(&store), 0o600, "a fresh store file");
    assert_eq!(mode(&dir.join("demo-credentials.txt")), 0o600);

    node.terminate();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o644)).unwrap();
    node.restart();
    assert_eq!(mode(&dir), 0o700, "the directory was fixed");
    assert_eq!(mode(&store), 0o600, "the store file was fixed");
    assert!(
        node.stderr_contains_soon("readable by other users").await,
        "a warning: {}",
        node.stderr_text()
    );
    let stderr = node.stderr_text();
    assert!(
        stderr.contains("soundwave.redb"),
        "it names the file: {stderr}"
    );
}

/// Peak resident memory of a process, in KiB (`VmHWM`).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// Fires `n` requests at once; their statuses, and whether each 503 said when to retry.
async fn flood(
    node: &Node,
    n: usize,
    body: impl Fn(usize) -> serde_json::Value,
    path: &str,
) -> Vec<(u16, bool)> {
    let client = reqwest::Client::new();
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..n {
        let request = client.post(node.url(path)).json(&body(i));
        requests.spawn(async move {
            let response = request.send().await.expect("a response");
            (
                response.status().as_u16(),
                response.headers().contains_key("retry-after"),
            )
        });
    }
    requests.join_all().await
}

/// 100 sign-ups and 100 logins of unknown users at once: argon2id's 19 MiB each must not
/// all be spent together (that was about 1.3 and 1.8 GiB). Password work is bounded; the
/// requests beyond the bound get 503 with Retry-After.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_floods_keep_memory_bounded() {
    let node = Node::builder()
        .config(
            "[auth]\nlogin_max_failures_per_ip = 1000\nlogin_max_failures_per_username = 1000\n",
        )
        .start();
    let pid = node.pid().expect("pid");
    let before = peak_rss_kib(pid);
    let run = unique_name("flood");
    let signups = flood(
        &node,
        100,
        |i| json!({"username": format!("{run}-{i}"), "password": "a-long-enough-password"}),
        "/api/users/",
    )
    .await;
    let logins = flood(
        &node,
        100,
        |i| json!({"username": format!("{run}-ghost-{i}"), "password": "wrong-password-here"}),
        "/api/token/",
    )
    .await;
    let grown_mib = peak_rss_kib(pid).saturating_sub(before) / 1024;
    eprintln!("peak RSS grew by {grown_mib} MiB over 100 sign-ups and 100 logins at once");
    for (status, retry_after) in &signups {
        assert!(matches!(status, 201 | 503), "sign-up answered {status}");
        assert!(*status != 503 || *retry_after, "a 503 without Retry-After");
    }
    for (status, retry_after) in &logins {
        assert!(matches!(status, 401 | 503), "login answered {status}");
        assert!(*status != 503 || *retry_after, "a 503 without Retry-After");
    }
    assert!(
        signups.iter().any(|(s, _)| *s == 201),
        "some sign-ups went through"
    );
    assert!(
        grown_mib < 400,
        "peak RSS grew by {grown_mib} MiB: password work is not bounded"
    );
}

/// A shopper signs up as `boss`; the operator later names `boss` as the admin. The node
/// refuses to start rather than hand the shopper's account, and its tokens, staff rights.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_bootstrap_never_promotes_a_squatted_username() {
    let mut node = Node::builder().no_admin().start();
    let squatter = unique_name("boss");
    node.signup(&squatter, "squatter-password-1").await;
    node.terminate();
    let data_arg = node.data_dir().display().to_string();
    let run = run_to_exit(
        &["node", "--listen", "127.0.0.1:0", "--data-dir", &data_arg],
        &[
            ("SOUNDWAVE_ADMIN_USERNAME", squatter.as_str()),
            ("SOUNDWAVE_ADMIN_PASSWORD", "operator-password-1"),
        ],
        START_TIMEOUT,
    );
    assert!(!run.status.success(), "the node started: {}", run.stdout);
    assert!(
        run.stderr.contains("refusing to make it staff") && run.stderr.contains(&squatter),
        "{}",
        run.stderr
    );
    // The account is still a shopper's.
    node.set_admin(None);
    node.restart();
    let (access, _) = node.login(&squatter, "squatter-password-1").await;
    let me = node.get("/api/users/me/", Some(&access)).await;
    assert_eq!(me.expect(200)["is_staff"], false);
}

/// The operator changes the admin's password (through the environment): the admin's
/// refresh tokens from before are refused; a login with the new password works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_admin_password_ends_the_earlier_sessions() {
    let admin = unique_name("chief");
    let mut node = Node::builder().no_admin().start();
    node.set_admin(Some((&admin, "first-password-1")));
    node.restart();
    let (_, refresh) = node.login(&admin, "first-password-1").await;
    // A token issued in the second of the change would survive it: step past it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    node.set_admin(Some((&admin, "second-password-2")));
    node.restart();
    node.post("/api/token/refresh/", None, &json!({ "refresh": refresh }))
        .await
        .expect_bad_token();
    node.token_resp(&admin, "first-password-1")
        .await
        .expect(401);
    let (_, fresh) = node.login(&admin, "second-password-2").await;
    node.post("/api/token/refresh/", None, &json!({ "refresh": fresh }))
        .await
        .expect(200);
}

/// `/metrics` is an operator endpoint: with a token configured it needs the token, from
/// anywhere (and the balancer never forwards it, see tests/lb.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_metrics_need_the_operator_token() {
    let open = Node::start();
    assert_eq!(
        open.get("/metrics", None).await.status,
        200,
        "loopback, no token set"
    );

    let node = Node::builder()
        .config("[node]\nmetrics_token = \"scrape-token-123\"\n")
        .start();
    node.get("/metrics", None).await.expect_detail(403);
    node.get("/metrics", Some("scrape-token-12"))
        .await
        .expect_detail(403);
    node.get("/metrics", Some("scrape-token-1234"))
        .await
        .expect_detail(403);
    let r = node.get("/metrics", Some("scrape-token-123")).await;
    assert_eq!(r.status, 200);
    assert!(r.text.contains("soundwave_"), "{}", r.text);
}

/// Sign-ups are limited per client IP (counted before any password is hashed); another
/// address is not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_ups_are_limited_per_client_ip() {
    let node = Node::builder()
        .env("SOUNDWAVE_SIGNUPS_PER_IP_PER_HOUR", "3")
        .start();
    let ips = lb::client_ips(2);
    let sign_up = |ip, i: usize| {
        let request = lb::client_from(ip)
            .post(node.url("/api/users/"))
            .json(&json!({
                "username": unique_name(&format!("many{i}")),
                "password": "tambourine-quietly-7",
            }));
        async move {
            let response = request.send().await.expect("a response");
            (
                response.status().as_u16(),
                response.headers().contains_key("retry-after"),
            )
        }
    };
    for i in 0..3 {
        assert_eq!(sign_up(ips[0], i).await.0, 201);
    }
    assert_eq!(sign_up(ips[0], 3).await, (429, true));
    assert_eq!(sign_up(ips[1], 4).await.0, 201, "another address signs up");
}
