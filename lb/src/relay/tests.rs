//! The relay over a scripted upstream and an in-memory client.

use super::*;
use crate::config::LbConfig;
use crate::upstream::Upstreams;
use std::net::SocketAddr;
use tokio::io::DuplexStream;
use tokio::net::TcpListener;

#[test]
fn absolute_targets_are_sent_in_origin_form() {
    assert_eq!(origin_form("/a?b"), "/a?b");
    assert_eq!(origin_form("http://shop:8080/a?b"), "/a?b");
    assert_eq!(origin_form("http://shop"), "/");
    assert_eq!(origin_form("*"), "*");
}

/// A scripted upstream: for each connection, reads requests (head, then a
/// `Content-Length` body) and sends the answer `script` gives for the request's bytes;
/// `None` closes the connection. Returns its address and every request it read.
async fn upstream(
    script: fn(&str) -> Option<String>,
) -> (SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut input = BytesMut::new();
                loop {
                    let end = loop {
                        if let Some(end) = head_end(&input, 0) {
                            break end;
                        }
                        match socket.read_buf(&mut input).await {
                            Ok(n) if n > 0 => {}
                            _ => return,
                        }
                    };
                    let head = String::from_utf8_lossy(&input[..end]).to_string();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    while input.len() < end + length {
                        if socket.read_buf(&mut input).await.unwrap_or(0) == 0 {
                            return;
                        }
                    }
                    let request = String::from_utf8_lossy(&input[..end + length]).to_string();
                    input.advance(end + length);
                    record.lock().unwrap().push(request.clone());
                    match script(&request) {
                        Some(answer) => {
                            if socket.write_all(answer.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                        None => return,
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// A relay over one upstream, serving one client connection: the client's end.
fn relay_to(upstream: SocketAddr) -> DuplexStream {
    let config = LbConfig {
        primaries: vec![upstream],
        backups: Vec::new(),
        read_timeout_secs: 2,
        ..LbConfig::default()
    };
    let upstreams = Arc::new(Upstreams::new(
        &config.primaries,
        &[],
        config.max_fails,
        config.fail_timeout(),
    ));
    for upstream in upstreams.list() {
        upstreams.record_probe(&upstream, None, Duration::ZERO, 1, 1);
    }
    let balancer = Balancer {
        upstreams,
        access_log: |_| {},
        config: Arc::new(config.clone()),
    };
    let relay = Arc::new(Relay::new(
        balancer,
        ConnectionCounter::new(10, 10, Vec::new()),
        config.request_limits(),
    ));
    let (client, served) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let (_keep, shutdown) = tokio::sync::watch::channel(false);
        relay.process_new(Box::new(served), &shutdown).await;
    });
    client
}

/// Reads from the relay until `done` says the text read so far is complete.
async fn read_until(client: &mut DuplexStream, done: impl Fn(&str) -> bool) -> String {
    let mut text = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !done(&String::from_utf8_lossy(&text)) {
            if client.read_buf(&mut text).await.unwrap_or(0) == 0 {
                break;
            }
        }
    })
    .await
    .expect("the relay answered in time");
    String::from_utf8_lossy(&text).to_string()
}

fn echo_path(request: &str) -> Option<String> {
    let path = request.split(' ').nth(1)?;
    if path == "/chunked" {
        return Some(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
             3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
                .to_owned(),
        );
    }
    if path == "/until-close" {
        return Some("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it".to_owned());
    }
    let body = request.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let text = format!("{path}|{body}");
    // A HEAD answer has the length of the body it does not carry.
    let sent = if request.starts_with("HEAD ") {
        ""
    } else {
        &text
    };
    Some(format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nKeep-Alive: timeout=5\r\n\r\n{sent}",
        text.len()
    ))
}

fn complete(text: &str, answers: usize) -> bool {
    text.matches("HTTP/1.1 200").count() >= answers
        && text
            .rsplit("\r\n\r\n")
            .next()
            .is_some_and(|tail| !tail.is_empty())
}

#[tokio::test]
async fn pipelined_requests_bodies_and_continue_go_through_in_order() {
    let (addr, seen) = upstream(echo_path).await;
    let mut client = relay_to(addr);
    client
        .write_all(
            b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n\
              POST /b HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
              4\r\nwiki\r\n5;x=y\r\npedia\r\n0\r\n\r\n",
        )
        .await
        .unwrap();
    let text = read_until(&mut client, |t| t.contains("/b|wikipedia")).await;
    let first = text.find("/a|").expect("the first answer");
    assert!(first < text.find("/b|wikipedia").unwrap(), "{text}");
    assert!(!text.to_ascii_lowercase().contains("keep-alive"), "{text}");

    client
        .write_all(
            b"PUT /c HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
    let interim = read_until(&mut client, |t| t.contains("\r\n\r\n")).await;
    assert_eq!(interim, "HTTP/1.1 100 Continue\r\n\r\n");
    client.write_all(b"xyz").await.unwrap();
    let text = read_until(&mut client, |t| t.contains("/c|xyz")).await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen[1].contains("content-length: 9\r\n"), "{}", seen[1]);
    assert!(!seen[1].to_ascii_lowercase().contains("transfer-encoding"));
    assert!(
        !seen[2].to_ascii_lowercase().contains("expect"),
        "{}",
        seen[2]
    );
}

#[tokio::test]
async fn chunked_and_close_delimited_answers_are_relayed_whole() {
    let (addr, _) = upstream(echo_path).await;
    let mut client = relay_to(addr);
    client
        .write_all(b"GET /chunked HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let text = read_until(&mut client, |t| t.ends_with("0\r\n\r\n")).await;
    assert!(text.contains("Transfer-Encoding: chunked"), "{text}");
    assert!(
        text.ends_with("\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"),
        "{text}"
    );

    // The same connection goes on; a body that ends with the upstream's connection
    // ends the client's too.
    client
        .write_all(
            b"HEAD /x HTTP/1.1\r\nHost: t\r\n\r\nGET /until-close HTTP/1.1\r\nHost: t\r\n\r\n",
        )
        .await
        .unwrap();
    let text = read_until(&mut client, |_| false).await;
    let (head_answer, rest) = text.split_once("\r\n\r\n").expect("the HEAD answer");
    assert!(head_answer.contains("Content-Length: 3"), "{head_answer}");
    assert!(
        rest.starts_with("HTTP/1.1 200 OK\r\n"),
        "no body after HEAD: {rest}"
    );
    assert!(rest.contains("connection: close\r\n"), "{rest}");
    assert!(rest.ends_with("\r\n\r\nall of it"), "{rest}");

    // An HTTP/1.0 client gets the chunks' data, then the close.
    let mut client = relay_to(addr);
    client
        .write_all(b"GET /chunked HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let text = read_until(&mut client, |_| false).await;
    assert!(text.ends_with("connection: close\r\n\r\nabcde"), "{text}");
    assert!(!text.contains("chunked"), "{text}");
}

#[tokio::test]
async fn a_kept_connection_the_upstream_closed_is_replaced_for_idempotent_requests() {
    // Every connection answers one request, then closes without a word.
    fn once(request: &str) -> Option<String> {
        static ANSWERED: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
        let _ = request;
        let mut answered = ANSWERED.lock().unwrap();
        answered.push(0);
        (answered.len() % 2 == 1)
            .then(|| "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_owned())
    }
    let (addr, seen) = upstream(once).await;
    let mut client = relay_to(addr);
    for round in 1..=2 {
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let text = read_until(&mut client, |t| complete(t, 1)).await;
        assert!(text.starts_with("HTTP/1.1 200 OK"), "round {round}: {text}");
    }
    assert_eq!(
        seen.lock().unwrap().len(),
        3,
        "the second GET was sent again once"
    );
}
