//! `soundwave lb`'s HTTPS listener against real processes: HTTP/2 and HTTP/1.1 chosen by
//! ALPN, both reaching the upstream over HTTP/1.1 with `X-Forwarded-Proto: https`; many
//! concurrent h2 streams on one connection each get their own answer; the balancer's
//! rules (reserved paths, rate limits) hold for h2 streams; a bad certificate stops the
//! start, naming the file.

use soundwave_testkit as common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::lb::{Balancer, EchoUpstream, local, node_addr, over_one_primary};
use common::node::Node;
use common::{free_port, run_to_exit, wait_for};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use soundwave::self_signed::{CertificateFiles, ensure_self_signed};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

/// A balancer over `echo` with an HTTPS listener on a certificate made for the test.
fn tls_balancer(echo: &EchoUpstream, dir: &Path, extra: &str) -> (Balancer, u16, CertificateFiles) {
    let files = ensure_self_signed(dir).expect("a self-signed certificate");
    let port = free_port();
    let lb = over_one_primary(
        echo,
        &format!(
            "tls_listen = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n{extra}",
            local(port),
            files.cert.display(),
            files.key.display()
        ),
    );
    (lb, port, files)
}

/// A TLS connection to `127.0.0.1:port` trusting only `cert`, offering `alpn`; the
/// protocol the balancer chose.
async fn tls_connect(port: u16, cert: &Path, alpn: &[&str]) -> (TlsStream<TcpStream>, String) {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(cert).expect("the test's certificate"))
        .expect("a usable root");
    #[allow(deprecated)] // ring's provider, as the balancer's (no post-quantum exchange)
    let provider = Arc::new(ring::default_provider());
    let mut tls = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    let tcp = TcpStream::connect(local(port)).await.expect("connect");
    let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let stream = TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .expect("a TLS handshake");
    let chosen = stream.get_ref().1.alpn_protocol().unwrap_or_default();
    let chosen = String::from_utf8_lossy(chosen).into_owned();
    (stream, chosen)
}

/// An HTTP/2 connection (ALPN `h2`) whose sender can carry many streams at once.
async fn h2_connection<B>(port: u16, cert: &Path) -> http2::SendRequest<B>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    h2_connection_with_window(port, cert, None).await
}

/// An HTTP/2 connection whose client offers flow-control windows of `window` bytes (stream
/// and connection) instead of hyper's default megabytes.
async fn h2_connection_with_window<B>(
    port: u16,
    cert: &Path,
    window: Option<u32>,
) -> http2::SendRequest<B>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (stream, chosen) = tls_connect(port, cert, &["h2", "http/1.1"]).await;
    assert_eq!(chosen, "h2", "ALPN chose h2");
    let mut builder = http2::Builder::new(TokioExecutor::new());
    if let Some(window) = window {
        builder
            .initial_stream_window_size(window)
            .initial_connection_window_size(window);
    }
    let (sender, connection) = builder
        .handshake(TokioIo::new(stream))
        .await
        .expect("an h2 handshake");
    tokio::spawn(connection);
    sender
}

/// A body that does not tell its length: its h2 request has no `content-length`.
struct UnsizedBody(Full<Bytes>);

impl hyper::body::Body for UnsizedBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_frame(cx)
    }
}

/// An HTTP/1.1 connection (ALPN `http/1.1`).
async fn h1_connection(port: u16, cert: &Path) -> http1::SendRequest<Full<Bytes>> {
    let (stream, chosen) = tls_connect(port, cert, &["http/1.1"]).await;
    assert_eq!(chosen, "http/1.1", "ALPN chose http/1.1");
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("an HTTP/1.1 handshake");
    tokio::spawn(connection);
    sender
}

fn request(method: &str, port: u16, path: &str, body: &'static str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(format!("https://127.0.0.1:{port}{path}"))
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("a request")
}

/// The status, the HTTP version, the headers and the body of an answer.
struct Answer {
    status: u16,
    version: http::Version,
    headers: http::HeaderMap,
    body: Value,
}

async fn answer(response: Response<Incoming>) -> Answer {
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("the body").to_bytes();
    Answer {
        status: parts.status.as_u16(),
        version: parts.version,
        headers: parts.headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

async fn h2_get(sender: &mut http2::SendRequest<Full<Bytes>>, port: u16, path: &str) -> Answer {
    let response = sender
        .send_request(request("GET", port, path, ""))
        .await
        .unwrap_or_else(|e| panic!("GET {path} over h2: {e}"));
    answer(response).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_h2_and_http1_by_alpn_and_forwards_them_as_https() {
    let echo = EchoUpstream::start("A");
    let dir = tempfile::tempdir().expect("temp dir");
    let (lb, port, files) = tls_balancer(&echo, dir.path(), "");

    let mut h2 = h2_connection(port, &files.cert).await;
    let got = h2_get(&mut h2, port, "/over-h2?x=1").await;
    assert_eq!((got.status, got.version), (200, http::Version::HTTP_2));
    let body = &got.body;
    assert_eq!(body["upstream"], "A");
    assert_eq!(body["path"], "/over-h2?x=1");
    assert_eq!(body["headers"]["x-forwarded-proto"], "https", "{body}");
    assert_eq!(
        body["headers"]["host"],
        format!("127.0.0.1:{port}"),
        "{body}"
    );
    assert_eq!(body["headers"]["x-forwarded-for"], "127.0.0.1", "{body}");
    assert_eq!(got.headers["x-echo"], "A");

    // A body sent on an h2 stream reaches the upstream with its length.
    let posted = h2
        .send_request(request("POST", port, "/posted", "twelve bytes"))
        .await
        .expect("POST over h2");
    let got = answer(posted).await;
    assert_eq!((got.status, got.version), (200, http::Version::HTTP_2));
    assert_eq!(got.body["method"], "POST");
    assert_eq!(got.body["headers"]["content-length"], "12", "{}", got.body);
    // One whose length the client does not say goes through too (chunked on the way in).
    let mut unsized_h2 = h2_connection::<UnsizedBody>(port, &files.cert).await;
    let unsized_post = Request::builder()
        .method("PUT")
        .uri(format!("https://127.0.0.1:{port}/unsized"))
        .body(UnsizedBody(Full::new(Bytes::from_static(
            b"seventeen bytes!!",
        ))))
        .expect("a request");
    let got = answer(
        unsized_h2
            .send_request(unsized_post)
            .await
            .expect("PUT over h2"),
    )
    .await;
    assert_eq!((got.status, got.version), (200, http::Version::HTTP_2));
    assert_eq!(got.body["method"], "PUT");
    assert_eq!(got.body["headers"]["content-length"], "17", "{}", got.body);

    let mut h1 = h1_connection(port, &files.cert).await;
    let response = h1
        .send_request(request("GET", port, "/over-h1", ""))
        .await
        .expect("GET over HTTPS/1.1");
    let got = answer(response).await;
    assert_eq!((got.status, got.version), (200, http::Version::HTTP_11));
    assert_eq!(
        got.body["headers"]["x-forwarded-proto"], "https",
        "{}",
        got.body
    );

    // The plain listener still says http, whatever the client claims.
    let plain = reqwest::Client::new();
    let resp = plain
        .get(lb.url("/plain"))
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .expect("plain GET");
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body["headers"]["x-forwarded-proto"], "http", "{body}");

    // The access line and the metrics tell the protocols apart.
    for (path, protocol) in [
        ("/over-h2", "protocol=h2+tls"),
        ("/over-h1", "protocol=h1+tls"),
        ("/plain", "protocol=h1"),
    ] {
        let quoted = format!("path=\"{path}");
        lb.wait_for_line(path, &["soundwave::lb::access", &quoted, protocol])
            .await;
    }
    let metrics = lb.metrics_text().await;
    for protocol in ["h2+tls", "h1+tls", "h1"] {
        let series = format!("soundwave_lb_requests_by_protocol_total{{protocol=\"{protocol}\"}}");
        assert!(metrics.contains(&series), "{series} in:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_h2_streams_on_one_connection_each_get_their_own_answer() {
    let echo = EchoUpstream::start("A");
    let dir = tempfile::tempdir().expect("temp dir");
    let (_lb, port, files) = tls_balancer(&echo, dir.path(), "");
    // One connection; its sender opens a stream per request, all at once (the balancer
    // lets 128 be open together, so some wait for others to end).
    let sender = h2_connection(port, &files.cert).await;
    const STREAMS: usize = 200;
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..STREAMS {
        let mut sender = sender.clone();
        requests
            .spawn(async move { (i, h2_get(&mut sender, port, &format!("/stream/{i}")).await) });
    }
    let answers = requests.join_all().await;
    assert_eq!(answers.len(), STREAMS);
    for (i, got) in answers {
        assert_eq!((got.status, got.version), (200, http::Version::HTTP_2));
        assert_eq!(
            got.body["path"],
            format!("/stream/{i}"),
            "stream {i} got {}",
            got.body
        );
    }
    let seen = echo.seen();
    assert_eq!(seen.len(), STREAMS, "each stream went upstream once");
    assert!(
        seen.iter()
            .all(|s| s.header("x-forwarded-proto") == Some("https"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_streams_meet_the_reserved_paths_and_the_rate_limit() {
    let echo = EchoUpstream::start("A");
    let dir = tempfile::tempdir().expect("temp dir");
    let (_lb, port, files) = tls_balancer(
        &echo,
        dir.path(),
        "rate_limit_per_sec = 1\nrate_limit_burst = 3\n",
    );
    let mut h2 = h2_connection(port, &files.cert).await;

    let got = h2_get(&mut h2, port, "/_internal/secret").await;
    assert_eq!((got.status, got.version), (404, http::Version::HTTP_2));
    assert!(got.body["detail"].is_string(), "{}", got.body);
    assert!(
        echo.seen()
            .iter()
            .all(|s| !s.path.starts_with("/_internal"))
    );

    // The burst of 3 (less the 404 above, more if a token came back), then a JSON 429.
    let mut refused = None;
    for _ in 0..20 {
        let got = h2_get(&mut h2, port, "/limited").await;
        if got.status == 429 {
            refused = Some(got);
            break;
        }
        assert_eq!(got.status, 200);
    }
    let refused = refused.expect("a 429 within 20 requests at 1/s");
    assert_eq!(refused.version, http::Version::HTTP_2);
    assert!(refused.headers.get("retry-after").is_some());
    assert!(refused.body["detail"].is_string(), "{}", refused.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_stream_reset_while_its_answer_is_awaited_ends_the_request() {
    let echo = EchoUpstream::start("A");
    let dir = tempfile::tempdir().expect("temp dir");
    let (lb, port, files) = tls_balancer(&echo, dir.path(), "");
    let mut h2 = h2_connection::<Full<Bytes>>(port, &files.cert).await;
    let slow_started = echo.slow_started.lock().unwrap().take().unwrap();
    // The upstream takes a second; the client gives up (RST_STREAM) once it is waiting.
    let waiting = tokio::spawn(h2.send_request(request("GET", port, "/slow-reset", "")));
    tokio::task::spawn_blocking(move || slow_started.recv_timeout(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("the slow request reached the upstream");
    waiting.abort();
    lb.wait_for_line(
        "the reset stream's access line",
        &[
            "path=\"/slow-reset\"",
            "status=0",
            "protocol=h2+tls",
            "the client went away",
        ],
    )
    .await;
    // The connection serves other streams on.
    let got = h2_get(&mut h2, port, "/after-reset").await;
    assert_eq!((got.status, got.version), (200, http::Version::HTTP_2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_s_large_list_comes_whole_over_h2_beyond_the_flow_control_window() {
    let node = Node::builder().demo().env("RUST_LOG", "warn").start();
    let list = "/api/products/?limit=1000";
    let direct = wait_for("the demo's 1,000 products", Duration::from_secs(60), || {
        let url = node.url(list);
        async move {
            let resp = reqwest::get(&url).await.ok()?;
            let total = resp.headers().get("x-total-count")?.to_str().ok()?;
            let total: usize = total.parse().ok()?;
            let body = resp.bytes().await.ok()?;
            (total >= 1000).then_some(body)
        }
    })
    .await;
    // Over ten times the client's 16 KiB windows: the answer goes out as they open.
    const WINDOW: u32 = 16 * 1024;
    assert!(
        direct.len() > 10 * WINDOW as usize,
        "{} bytes",
        direct.len()
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let files = ensure_self_signed(dir.path()).expect("a self-signed certificate");
    let port = free_port();
    let _lb = Balancer::start(
        local(free_port()),
        None,
        &format!(
            "primaries = [\"{}\"]\nbackups = []\ntls_listen = \"{}\"\ntls_cert = \"{}\"\n\
             tls_key = \"{}\"\n",
            node_addr(&node),
            local(port),
            files.cert.display(),
            files.key.display()
        ),
    );
    let mut h2 = h2_connection_with_window::<Full<Bytes>>(port, &files.cert, Some(WINDOW)).await;
    // Bounded: an answer stuck waiting for window it never gets fails here.
    let (status, version, body) = tokio::time::timeout(Duration::from_secs(30), async {
        let response = h2
            .send_request(request("GET", port, list, ""))
            .await
            .expect("the list over h2");
        let (status, version) = (response.status().as_u16(), response.version());
        let body = response.into_body().collect().await.expect("the body");
        (status, version, body.to_bytes())
    })
    .await
    .expect("the list within 30 s");
    assert_eq!((status, version), (200, http::Version::HTTP_2));
    assert_eq!(body.len(), direct.len());
    assert!(body == direct, "the list over h2 differs from the node's");
}

#[test]
fn a_bad_certificate_file_stops_the_start_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cert = dir.path().join("broken-cert.pem");
    std::fs::write(&cert, "this is no certificate").expect("write");
    let files = ensure_self_signed(&dir.path().join("good")).expect("a key");
    let (cert_arg, key_arg) = (cert.display().to_string(), files.key.display().to_string());
    let (listen, tls_listen, metrics) = (
        local(free_port()).to_string(),
        local(free_port()).to_string(),
        local(free_port()).to_string(),
    );
    let upstream = local(free_port()).to_string();
    let args = [
        "lb",
        "--listen",
        &listen,
        "--metrics-listen",
        &metrics,
        "--primary",
        &upstream,
        "--tls-listen",
        &tls_listen,
        "--tls-cert",
        &cert_arg,
        "--tls-key",
        &key_arg,
    ];
    let run = run_to_exit(&args, &[], Duration::from_secs(30));
    assert!(!run.status.success(), "exit status {:?}", run.status);
    assert!(
        run.stderr.contains(&cert_arg),
        "stderr names the file: {}",
        run.stderr
    );
    assert!(!run.stdout.contains("listening"), "{}", run.stdout);

    // A missing key is named too.
    let missing = dir.path().join("missing-key.pem").display().to_string();
    let good_cert = files.cert.display().to_string();
    let mut args = args;
    args[10] = &good_cert;
    args[12] = &missing;
    let run = run_to_exit(&args, &[], Duration::from_secs(30));
    assert!(!run.status.success(), "exit status {:?}", run.status);
    assert!(run.stderr.contains(&missing), "stderr: {}", run.stderr);
}
