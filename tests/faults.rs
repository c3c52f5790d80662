//! Faults and abuse a node must survive (issue 15): idle, trickling and too many
//! connections, a damaged store file, a panicking request. Real processes, bounded in time.
use common::*;
use soundwave_testkit as common;

use serde_json::json;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A raw TCP connection to `addr` from the source address `from`.
fn connect_from(from: IpAddr, addr: SocketAddr) -> TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("a socket");
    socket
        .bind(&SocketAddr::new(from, 0).into())
        .expect("bind the source address");
    socket.connect(&addr.into()).expect("connect");
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("a read timeout");
    stream
}

/// Sends one GET on `stream` and reads the response up to the end of its (short) body.
fn get_on(stream: &mut TcpStream, path: &str) -> String {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").expect("send a request");
    read_response(stream)
}

/// Reads what the server sends until it closes or pauses (responses here are small).
fn read_response(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&out);
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().to_owned())
                        })
                        .and_then(|v| v.parse::<usize>().ok());
                    if length.is_some_and(|n| body.len() >= n) {
                        break;
                    }
                }
            }
            Err(error) => panic!(
                "reading a response: {error}; so far {:?}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Asserts an error answer the node closes after: `status`, a JSON `{"detail": ...}` body,
/// `Connection: close` and `X-Soundwave-Node`.
fn assert_closing_json_error(response: &str, status: u16) {
    assert!(
        response.starts_with(&format!("HTTP/1.1 {status} ")),
        "{response}"
    );
    let lower = response.to_ascii_lowercase();
    assert!(
        lower.contains("content-type: application/json"),
        "{response}"
    );
    assert!(lower.contains("connection: close"), "{response}");
    assert!(lower.contains("x-soundwave-node: 1"), "{response}");
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let json: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
    assert!(json["detail"].is_string(), "{body}");
}

/// Past the per-IP limit a connection gets a JSON 503 with `Connection: close` at once;
/// other IPs are served meanwhile, and a freed slot is taken again.
#[test]
fn connections_are_bounded_per_client_ip() {
    let node = Node::builder()
        .config("[node]\nmax_connections_per_ip = 3\n")
        .start();
    let addr = lb::node_addr(&node);
    let [crowd, other] = lb::client_ips(2)[..] else {
        unreachable!()
    };
    let mut held: Vec<TcpStream> = (0..3).map(|_| connect_from(crowd, addr)).collect();
    // The held connections are admitted: each is served.
    for stream in &mut held {
        assert!(get_on(stream, "/health/").starts_with("HTTP/1.1 200"));
    }
    let mut refused = connect_from(crowd, addr);
    assert_closing_json_error(&read_response(&mut refused), 503);

    let mut elsewhere = connect_from(other, addr);
    assert!(get_on(&mut elsewhere, "/health/").starts_with("HTTP/1.1 200"));

    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut again = connect_from(crowd, addr);
        let response = get_on(&mut again, "/health/");
        if response.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the freed slot was never reused: {response}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends `request` a byte every 250 ms (then `a`s, without end) on a connection from `ip`,
/// checking every second that others are still served, until the server answers or closes:
/// how long that took and what it answered. Panics when the client is never cut (20 s).
fn trickle_until_cut(addr: SocketAddr, ip: IpAddr, request: &[u8]) -> (Duration, String) {
    let mut trickling = connect_from(ip, addr);
    trickling
        .set_read_timeout(Some(Duration::from_millis(250)))
        .expect("a read timeout");
    let started = Instant::now();
    let mut answer = Vec::new();
    for i in 0.. {
        let byte = [request.get(i).copied().unwrap_or(b'a')];
        if trickling.write_all(&byte).is_err() {
            break;
        }
        // Whatever the server sends (its 408, or nothing) ends the trickle once it closed.
        let mut buf = [0u8; 512];
        match trickling.read(&mut buf) {
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                if n > 0 {
                    trickling
                        .set_read_timeout(Some(Duration::from_secs(2)))
                        .expect("a read timeout");
                    answer.extend_from_slice(read_response(&mut trickling).as_bytes());
                }
                break;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
        // Others are served meanwhile.
        if i % 4 == 0 {
            let mut other = connect_from(ip, addr);
            assert!(get_on(&mut other, "/health/").starts_with("HTTP/1.1 200"));
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the trickling client was never cut"
        );
    }
    (
        started.elapsed(),
        String::from_utf8_lossy(&answer).into_owned(),
    )
}

/// A client trickling its headers a byte at a time, and one idling on a keep-alive
/// connection, are both cut after the header timeout, while others are served.
#[test]
fn trickling_and_idle_connections_are_cut() {
    let node = Node::builder()
        .config("[node]\nheader_timeout_secs = 2\n")
        .start();
    let addr = lb::node_addr(&node);
    let ip = lb::client_ips(1)[0];

    let mut idle = connect_from(ip, addr);
    assert!(get_on(&mut idle, "/health/").starts_with("HTTP/1.1 200"));
    let (cut_after, _) =
        trickle_until_cut(addr, ip, b"GET /health/ HTTP/1.1\r\nHost: test\r\nX-Slow: ");
    assert!(
        cut_after >= Duration::from_secs(1),
        "cut after {cut_after:?}: before the timeout"
    );
    // The idle keep-alive connection was closed too: the server's end reads as closed.
    idle.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("a read timeout");
    let mut buf = [0u8; 64];
    let read = idle.read(&mut buf);
    assert!(
        matches!(read, Ok(0)) || read.is_err(),
        "the idle connection is still open: {read:?}"
    );
}

/// Asserts an answer the balancer itself gives and closes after: `status`, a JSON
/// `{"detail": ...}` body and `Connection: close`.
fn assert_closing_lb_error(response: &str, status: u16) {
    assert!(
        response.starts_with(&format!("HTTP/1.1 {status} ")),
        "{response}"
    );
    let lower = response.to_ascii_lowercase();
    assert!(
        lower.contains("content-type: application/json"),
        "{response}"
    );
    assert!(lower.contains("connection: close"), "{response}");
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let json: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
    assert!(json["detail"].is_string(), "{body}");
}

/// The balancer cuts clients trickling a request's head or its body (Pingora alone times
/// each read, so a byte every 250 ms would never be cut) with a JSON 408, and bounds the
/// connections of one client IP with a JSON 503, while serving others meanwhile.
#[test]
fn the_balancer_cuts_trickling_clients_and_bounds_connections_per_ip() {
    let node = Node::start();
    let lb_addr = lb::local(free_port());
    let _balancer = lb::Balancer::start(
        lb_addr,
        None,
        &format!(
            "primaries = [\"{}\"]\nbackups = []\nheader_timeout_secs = 2\n\
             body_timeout_secs = 2\nmax_connections_per_ip = 3\n",
            lb::node_addr(&node)
        ),
    );
    let [crowd, other, head_trickler, body_trickler] = lb::client_ips(4)[..] else {
        unreachable!()
    };

    let mut held: Vec<TcpStream> = (0..3).map(|_| connect_from(crowd, lb_addr)).collect();
    for stream in &mut held {
        assert!(get_on(stream, "/health/").starts_with("HTTP/1.1 200"));
    }
    let mut refused = connect_from(crowd, lb_addr);
    assert_closing_lb_error(&read_response(&mut refused), 503);
    let mut elsewhere = connect_from(other, lb_addr);
    assert!(get_on(&mut elsewhere, "/health/").starts_with("HTTP/1.1 200"));
    drop(held);

    let (head_cut, answer) = trickle_until_cut(
        lb_addr,
        head_trickler,
        b"GET /health/ HTTP/1.1\r\nHost: test\r\nX-Slow: ",
    );
    eprintln!("a trickled head was cut after {head_cut:?}");
    assert_closing_lb_error(&answer, 408);
    assert!(
        head_cut >= Duration::from_secs(1),
        "cut after {head_cut:?}: before the timeout"
    );
    let (body_cut, answer) = trickle_until_cut(
        lb_addr,
        body_trickler,
        b"POST /api/token/ HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
          Content-Length: 1000\r\n\r\n{\"username\": \"",
    );
    eprintln!("a trickled body was cut after {body_cut:?}");
    assert_closing_lb_error(&answer, 408);
}

/// A store file damaged on disk is refused at start, with a message naming the file and
/// what to do; a store file truncated to nothing is not taken for a new, empty shop.
#[test]
fn a_damaged_or_emptied_store_is_refused_at_start() {
    let mut node = Node::builder().demo().start();
    node.terminate();
    let store_file = node.data_dir().join("soundwave.redb");
    let mut bytes = std::fs::read(&store_file).expect("read the store file");
    let (start, end) = (bytes.len() / 4, bytes.len() * 3 / 4);
    for (i, byte) in bytes[start..end].iter_mut().enumerate() {
        *byte = (i.wrapping_mul(2_654_435_761) >> 7) as u8;
    }
    let data_arg = node.data_dir().display().to_string();
    let start_on_it = || {
        let run = run_to_exit(
            &["node", "--listen", "127.0.0.1:0", "--data-dir", &data_arg],
            &[],
            START_TIMEOUT,
        );
        assert!(!run.status.success(), "it started: {}", run.stdout);
        assert!(!run.stdout.contains("listening on"), "{}", run.stdout);
        run.stderr
    };
    std::fs::write(&store_file, &bytes).expect("damage the store file");
    let stderr = start_on_it();
    assert!(stderr.contains("is damaged"), "{stderr}");
    assert!(
        stderr.contains(&store_file.display().to_string()),
        "{stderr}"
    );
    assert!(stderr.contains("restore it from a backup"), "{stderr}");

    std::fs::write(&store_file, b"").expect("truncate the store file");
    let stderr = start_on_it();
    assert!(stderr.contains("the file is empty"), "{stderr}");
    assert_eq!(
        std::fs::metadata(&store_file).map(|m| m.len()).ok(),
        Some(0),
        "the empty file is left as found"
    );
}

/// A leader cut off from both followers (here: they are frozen with SIGSTOP) still
/// believes it leads, but cannot commit: its `/health/` turns 503 with the reason, so the
/// balancer takes it out, and comes back once a quorum answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_without_a_quorum_reports_not_ok() {
    let mut cluster = cluster::TestCluster::start(3, "");
    let leader = cluster.leader().await;
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let health = |i: usize| {
        let node = &cluster.nodes[i];
        async move { node.get("/health/", None).await }
    };
    assert_eq!(health(leader).await.status, 200);
    for &i in &followers {
        cluster.signal(i, "STOP");
    }
    let cut_off = Instant::now();
    let unhealthy = wait_for(
        "the cut-off leader to report not ok",
        Duration::from_secs(15),
        || async {
            let r = health(leader).await;
            (r.status == 503).then_some(r)
        },
    )
    .await;
    eprintln!(
        "the cut-off leader reported 503 after {:?}: {}",
        cut_off.elapsed(),
        unhealthy.text
    );
    assert!(
        unhealthy.json["cluster"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("quorum")),
        "{}",
        unhealthy.text
    );
    // A strong read cannot be confirmed meanwhile: a 503 that names no member or address.
    let strong = cluster.nodes[leader]
        .get("/api/products/?consistency=strong", None)
        .await;
    assert_eq!(strong.status, 503, "{}", strong.text);
    assert!(strong.json["detail"].is_string(), "{}", strong.text);
    for secret in ["127.0.0.1", "members", "Node", "QuorumNotEnough"] {
        assert!(!strong.text.contains(secret), "{secret} in {}", strong.text);
    }
    for &i in &followers {
        cluster.signal(i, "CONT");
    }
    let leader_again = cluster.leader().await;
    let health = |i: usize| {
        let node = &cluster.nodes[i];
        async move { node.get("/health/", None).await }
    };
    wait_for(
        "a healthy leader again",
        Duration::from_secs(15),
        || async { (health(leader_again).await.status == 200).then_some(()) },
    )
    .await;
}

/// The leader cut off from both followers by the network (policy-routing rules on
/// loopback, each node on its own address): the two others elect a new leader and take
/// writes again, the cut-off leader reports not ok, and after the partition heals all
/// three hold the same state with every acknowledged order in it. How long each step took
/// is printed (the figures of the faults note; not asserted).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_isolated_leader_is_replaced_and_reports_not_ok() {
    let hosts = ["127.0.0.31", "127.0.0.32", "127.0.0.33"];
    let mut cluster = cluster::TestCluster::start_on(&hosts, "");
    let leader = cluster.leader().await;
    let admin = cluster.nodes[leader].admin_token().await;
    let category = cluster.nodes[leader]
        .create_category(&admin, "Isolated")
        .await;
    let product = cluster.nodes[leader]
        .create_product(&admin, "Island Record", 50, "5.00", category)
        .await;
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let follower_hosts: Vec<&str> = followers.iter().map(|&i| hosts[i]).collect();
    let Some(partition) = cluster::LoopbackPartition::cut(hosts[leader], &follower_hosts) else {
        return;
    };
    let cut_at = Instant::now();
    let old_leader_health = async {
        let unhealthy = wait_for(
            "the isolated leader to report not ok",
            Duration::from_secs(15),
            || async {
                let r = cluster.nodes[leader].get("/health/", None).await;
                (r.status == 503).then_some(r)
            },
        )
        .await;
        (cut_at.elapsed(), unhealthy)
    };
    let (first, second, (unhealthy_after, unhealthy)) = tokio::join!(
        cluster.writes_back_after(followers[0], &admin, product, cut_at),
        cluster.writes_back_after(followers[1], &admin, product, cut_at),
        old_leader_health
    );
    eprintln!(
        "leader isolated: writes back on node {} after {first:?}, on node {} after \
         {second:?}; the isolated leader reported 503 after {unhealthy_after:?}",
        followers[0] + 1,
        followers[1] + 1
    );
    assert!(
        unhealthy.json["cluster"]["reason"].is_string(),
        "{}",
        unhealthy.text
    );
    let new_leader = cluster.nodes[followers[0]].get("/health/", None).await;
    assert_ne!(
        new_leader.json["cluster"]["leader_id"].as_u64(),
        Some(leader as u64 + 1),
        "the two others elected another leader: {}",
        new_leader.text
    );
    drop(partition);
    cluster.converged(&[0, 1, 2]).await;
    let seen = cluster.nodes[leader]
        .get(
            &format!("/api/products/{product}/?consistency=strong"),
            None,
        )
        .await;
    assert_eq!(
        seen.expect(200)["stock"],
        48,
        "both acknowledged orders are on the healed leader"
    );
}

/// Unmounts the test's filesystem when dropped, whatever happened.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A small tmpfs of its own, or `None` (with the reason printed) where the test may not
/// mount one (not root, or a container without the privilege).
fn small_filesystem(dir: &std::path::Path, size: &str) -> Option<Mounted> {
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: cannot mount a tmpfs here (the test needs root; CI runs as root)");
        return None;
    }
    Some(Mounted(dir.to_path_buf()))
}

/// The disk fills up under a node: writes fail fast and clearly, `/health/` says why, the
/// node stops by itself (for its supervisor to restart), and once space is freed it starts
/// again with every acknowledged write and takes writes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_writes_honestly_and_nothing_acknowledged_is_lost() {
    let dir = tempfile::tempdir().expect("temp dir");
    let Some(_mounted) = small_filesystem(dir.path(), "24m") else {
        return;
    };
    let mut node = Node::builder().data_dir(&dir.path().join("data")).start();
    let admin = node.admin_token().await;
    let mut acknowledged = Vec::new();
    for i in 0..5 {
        let name = format!("before-{i}");
        node.create_category(&admin, &name).await;
        acknowledged.push(name);
    }

    // Fill the filesystem.
    let filler = dir.path().join("filler");
    {
        let mut file = std::fs::File::create(&filler).expect("create the filler");
        let chunk = vec![0x42u8; 256 * 1024];
        while file.write_all(&chunk).is_ok() {}
    }

    // Writes until the node refuses them: every one is answered (201 or a JSON 503) or
    // the node has stopped; none waits out the write timeout.
    let mut refused = None;
    for i in 0..200 {
        let name = format!("during-{i}");
        let started = Instant::now();
        let r = node
            .post("/api/categories/", Some(&admin), &json!({ "name": name }))
            .await;
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "a write waited {:?} on a full disk: {}",
            started.elapsed(),
            r.text
        );
        match r.status {
            201 => acknowledged.push(name),
            503 => {
                refused = Some(r);
                break;
            }
            other => panic!("a write on a full disk answered {other}: {}", r.text),
        }
    }
    let refused = refused.expect("the full disk never refused a write");
    assert!(refused.json["detail"].is_string(), "{}", refused.text);
    eprintln!("refused: {}", refused.text);
    let health = node.get("/health/", None).await;
    if health.status != 0 {
        assert_eq!(health.status, 503, "{}", health.text);
        assert!(
            health.text.contains("replicated log stopped"),
            "{}",
            health.text
        );
    }

    // It stops by itself, saying why.
    let deadline = Instant::now() + Duration::from_secs(20);
    while node.is_running() {
        assert!(
            Instant::now() < deadline,
            "the node kept running on a full disk"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        node.stderr_text().contains("the replicated log stopped"),
        "{}",
        node.stderr_text()
    );

    // Space is back: the node starts with every acknowledged write and takes new ones.
    std::fs::remove_file(&filler).expect("free the space");
    node.restart();
    let admin = node.admin_token().await;
    let listed = node.get("/api/categories/?limit=1000", None).await;
    let names: Vec<&str> = listed.expect(200).as_array().map_or(Vec::new(), |a| {
        a.iter().filter_map(|c| c["name"].as_str()).collect()
    });
    for name in &acknowledged {
        assert!(
            names.contains(&name.as_str()),
            "{name} was acknowledged and is lost: {names:?}"
        );
    }
    node.create_category(&admin, "after").await;
}

/// An error answered before the request's body was read (here 401 for a POST with a body)
/// says `Connection: close` and is JSON, and then the connection is closed: a client or a
/// balancer never reuses a connection the node is about to drop.
#[test]
fn an_early_error_to_a_request_with_a_body_announces_the_close() {
    let node = Node::start();
    let addr = lb::node_addr(&node);
    let mut stream = connect_from(lb::client_ips(1)[0], addr);
    let body = "{\"reason\": \"".to_owned() + &"x".repeat(64 * 1024) + "\"}";
    write!(
        stream,
        "POST /api/orders/1/cancel/ HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )
    .expect("send the head");
    let _ = stream.write_all(body.as_bytes());
    assert_closing_json_error(&read_response(&mut stream), 401);
    let mut rest = Vec::new();
    let closed = stream.read_to_end(&mut rest);
    assert!(
        closed.is_ok(),
        "the node kept the connection open: {closed:?}"
    );

    // An error after the body was read (a field error) keeps the connection.
    let mut stream = connect_from(lb::client_ips(1)[0], addr);
    let body = r#"{"username": "", "password": "x"}"#;
    write!(
        stream,
        "POST /api/users/ HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let response = read_response(&mut stream);
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(
        !response.to_ascii_lowercase().contains("connection: close"),
        "{response}"
    );
    assert!(get_on(&mut stream, "/health/").starts_with("HTTP/1.1 200"));
}

/// Requests too large or not HTTP at all, each with the status it must get.
fn unparsable_requests() -> Vec<(String, u16)> {
    let huge_header = format!(
        "GET /api/products/ HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(500_000)
    );
    let long_uri = format!(
        "GET /api/products/?q={} HTTP/1.1\r\nHost: t\r\n\r\n",
        "a".repeat(70_000)
    );
    vec![
        (huge_header, 431),
        (long_uri, 414),
        ("GARBAGE\r\n\r\n".to_owned(), 400),
        ("GET / HTTP/1.1\r\nBad Header\r\n\r\n".to_owned(), 400),
    ]
}

/// Requests hyper cannot parse (headers too large, a URI too long, garbage) get the API's
/// JSON error with `X-Soundwave-Node` and `Connection: close`, not a bodiless answer.
#[test]
fn unparsable_requests_get_json_errors() {
    let node = Node::start();
    let addr = lb::node_addr(&node);
    let ip = lb::client_ips(1)[0];
    for (request, status) in unparsable_requests() {
        let mut stream = connect_from(ip, addr);
        let _ = stream.write_all(request.as_bytes());
        assert_closing_json_error(&read_response(&mut stream), status);
    }
    // Ordinary answers pass through untouched.
    let mut stream = connect_from(ip, addr);
    let response = get_on(&mut stream, "/api/products/999999/");
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
}

/// The balancer answers the same requests itself, with the same statuses and JSON bodies
/// (Pingora alone answers a head it cannot parse with a bare 400), and still proxies the
/// next client's requests, bodies included.
#[test]
fn the_balancer_answers_unparsable_requests_with_json() {
    let node = Node::start();
    let lb_addr = lb::local(free_port());
    let _balancer = lb::Balancer::start(
        lb_addr,
        None,
        &format!("primaries = [\"{}\"]\nbackups = []\n", lb::node_addr(&node)),
    );
    let ip = lb::client_ips(1)[0];
    for (request, status) in unparsable_requests() {
        let mut stream = connect_from(ip, lb_addr);
        let _ = stream.write_all(request.as_bytes());
        assert_closing_lb_error(&read_response(&mut stream), status);
    }
    let mut stream = connect_from(ip, lb_addr);
    let response = get_on(&mut stream, "/api/products/999999/");
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
    let body = r#"{"username": "nobody", "password": "wrong-password"}"#;
    write!(
        stream,
        "POST /api/token/ HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send a request with a body");
    let response = read_response(&mut stream);
    assert!(response.starts_with("HTTP/1.1 401"), "{response}");
}

/// Copies the regular files of `from` into `to`.
fn copy_files(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).expect("read the data dir") {
        let entry = entry.expect("an entry");
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy a file");
        }
    }
}

/// In a cluster, the member whose disk fills stops by itself; the other two go on taking
/// writes; once space is back it starts again and catches up with the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_a_full_disk_stops_and_catches_up_once_space_is_back() {
    let mut cluster = cluster::TestCluster::start(3, "");
    let leader = cluster.leader().await;
    let admin = cluster.nodes[leader].admin_token().await;
    cluster.nodes[leader]
        .create_category(&admin, "before")
        .await;
    let full = (leader + 1) % 3;
    cluster.converged(&[0, 1, 2]).await;

    // Move the member's data onto a small filesystem of its own.
    cluster.nodes[full].terminate();
    let data = cluster.nodes[full].data_dir().to_path_buf();
    let saved = tempfile::tempdir().expect("temp dir");
    copy_files(&data, saved.path());
    let Some(_mounted) = small_filesystem(&data, "16m") else {
        return;
    };
    copy_files(saved.path(), &data);
    cluster.nodes[full].restart();
    cluster.converged(&[0, 1, 2]).await;

    let filler = data.join("filler");
    {
        let mut file = std::fs::File::create(&filler).expect("create the filler");
        let chunk = vec![0x42u8; 256 * 1024];
        while file.write_all(&chunk).is_ok() {}
    }
    // Writes go on through the others; the full member stops by itself.
    let alive: Vec<usize> = (0..3).filter(|&i| i != full).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut written = 0;
    while cluster.nodes[full].is_running() || written < 20 {
        let node = &cluster.nodes[alive[written % 2]];
        let r = node
            .post(
                "/api/categories/",
                Some(&admin),
                &json!({ "name": format!("during-{written}") }),
            )
            .await;
        if r.status == 201 {
            written += 1;
        } else {
            assert_eq!(r.status, 503, "{}", r.text);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            Instant::now() < deadline,
            "the full member kept running, or writes stopped"
        );
    }
    assert!(
        cluster.nodes[full]
            .stderr_text()
            .contains("the replicated log stopped"),
        "{}",
        cluster.nodes[full].stderr_text()
    );

    std::fs::remove_file(&filler).expect("free the space");
    cluster.nodes[full].restart();
    cluster.converged(&[0, 1, 2]).await;
    let listed = cluster.nodes[full]
        .get("/api/categories/?limit=1000", None)
        .await;
    assert_eq!(
        listed.total_count(),
        1 + written as u64,
        "every category written meanwhile, on the member that was full"
    );
    // Unmount only after the node let go of its files.
    cluster.nodes[full].terminate();
}

/// A request body that never finishes gets 408 (the client's fault) with `Connection:
/// close` once the request timeout passes, not the 503 of a node that could not answer.
#[test]
fn a_body_that_never_finishes_gets_408() {
    let node = Node::builder()
        .config("[node]\nrequest_timeout_secs = 1\n")
        .start();
    let addr = lb::node_addr(&node);
    let mut stream = connect_from(lb::client_ips(1)[0], addr);
    write!(
        stream,
        "POST /api/users/ HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
         Content-Length: 100\r\n\r\n{{\"username\": "
    )
    .expect("send a part of the request");
    assert_closing_json_error(&read_response(&mut stream), 408);
}
