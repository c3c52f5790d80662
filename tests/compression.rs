//! Compressed responses against a real node and through a real `soundwave lb`: br and gzip
//! bodies that decompress to exactly the plain bytes (a product, the cached 1,000-product
//! list, a web asset and a page), `Vary: Accept-Encoding`, no `Content-Encoding` unless
//! asked for, the same answer from the cache in front of the router as from the router, and
//! the balancer passing compressed bodies through untouched.

use soundwave_testkit as common;

use std::io::Read;
use std::time::Duration;

use common::lb::{Balancer, local, node_addr};
use common::{Node, free_port, json, wait_for};
use reqwest::header::HeaderMap;

const LIST: &str = "/api/products/?limit=1000";
const ASSET: &str = "/assets/store.js";

/// One answer, its body as sent (not decoded: reqwest is built without decompression).
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body decoded by its `Content-Encoding`.
    fn decoded(&self) -> Vec<u8> {
        let mut plain = Vec::new();
        match self.header("content-encoding") {
            None => plain.clone_from(&self.body),
            Some("br") => {
                brotli::BrotliDecompress(&mut &self.body[..], &mut plain).expect("valid br");
            }
            Some("gzip") => {
                flate2::read::GzDecoder::new(&self.body[..])
                    .read_to_end(&mut plain)
                    .expect("valid gzip");
            }
            Some(other) => panic!("unexpected Content-Encoding {other}"),
        }
        plain
    }

    /// The headers, without the ones that differ between two sends of the same answer.
    fn stable_headers(&self) -> Vec<(String, String)> {
        let mut headers: Vec<(String, String)> = self
            .headers
            .iter()
            .filter(|(name, _)| *name != "date")
            .map(|(name, value)| {
                (
                    name.to_string(),
                    value.to_str().unwrap_or("<binary>").to_owned(),
                )
            })
            .collect();
        headers.sort();
        headers
    }
}

async fn fetch(url: &str, accept: Option<&str>, extra: &[(&str, &str)]) -> Answer {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");
    let mut request = client.get(url);
    if let Some(accept) = accept {
        request = request.header("accept-encoding", accept);
    }
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.bytes().await.expect("body").to_vec();
    if let Some(length) = headers.get("content-length") {
        assert_eq!(
            length.to_str().ok().and_then(|l| l.parse::<usize>().ok()),
            Some(body.len()),
            "GET {url}: Content-Length is not the length of the body as sent"
        );
    }
    Answer {
        status,
        headers,
        body,
    }
}

/// The plain answer and its br and gzip forms for `url`: each decodes to the plain bytes,
/// carries `Vary` and the right `Content-Encoding`; returns (plain, br, gzip).
async fn three_ways(url: &str) -> (Answer, Answer, Answer) {
    let plain = fetch(url, None, &[]).await;
    assert_eq!(plain.status, 200, "GET {url}");
    assert_eq!(plain.header("content-encoding"), None, "{url} unasked");
    let br = fetch(url, Some("gzip, deflate, br"), &[]).await;
    let gzip = fetch(url, Some("gzip"), &[]).await;
    for (answer, coding) in [(&br, "br"), (&gzip, "gzip")] {
        assert_eq!(answer.status, 200, "GET {url} ({coding})");
        assert_eq!(answer.header("content-encoding"), Some(coding), "{url}");
        assert_eq!(answer.header("vary"), Some("Accept-Encoding"), "{url}");
        assert!(
            answer.body.len() < plain.body.len(),
            "{url}: {coding} is {} bytes, plain {}",
            answer.body.len(),
            plain.body.len()
        );
        assert_eq!(answer.decoded(), plain.body, "{url}: {coding} decoded");
        assert_eq!(
            answer.header("content-type"),
            plain.header("content-type"),
            "{url}"
        );
    }
    assert_eq!(plain.header("vary"), Some("Accept-Encoding"), "{url}");
    (plain, br, gzip)
}

async fn demo_node() -> Node {
    let node = Node::builder().demo().env("RUST_LOG", "warn").start();
    wait_for("the demo's 1,000 products", Duration::from_secs(60), || {
        let url = node.url("/api/products/?limit=1");
        async move {
            let answer = fetch(&url, None, &[]).await;
            let total = answer.header("x-total-count")?.parse::<usize>().ok()?;
            (total >= 1000).then_some(())
        }
    })
    .await;
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn br_and_gzip_decode_to_the_plain_bytes_and_cached_equals_routed() {
    let node = demo_node().await;

    // The 1,000-product list: the first br request is a miss (answered by the router, which
    // fills the cache), the second a hit answered before routing: the same answer.
    let routed = fetch(&node.url(LIST), Some("br"), &[]).await;
    let cached = fetch(&node.url(LIST), Some("br"), &[]).await;
    assert_eq!(routed.status, 200);
    assert_eq!(routed.header("content-encoding"), Some("br"));
    assert_eq!(
        cached.body, routed.body,
        "cached br list differs from routed"
    );
    assert_eq!(cached.stable_headers(), routed.stable_headers());
    let (plain, br, gzip) = three_ways(&node.url(LIST)).await;
    assert_eq!(br.body, routed.body, "br made once per cache entry");
    let products: Vec<serde_json::Value> = serde_json::from_slice(&plain.body).expect("JSON");
    assert_eq!(products.len(), 1000);
    for answer in [&br, &gzip] {
        assert_eq!(
            answer.header("x-total-count"),
            plain.header("x-total-count")
        );
        assert_eq!(answer.header("link"), plain.header("link"));
    }
    println!(
        "GET {LIST}: plain {} bytes, br {}, gzip {}",
        plain.body.len(),
        br.body.len(),
        gzip.body.len()
    );

    // A write makes the list a miss again: the routed gzip answer and the cached one agree.
    let admin = node.admin_token().await;
    node.patch("/api/products/7/", Some(&admin), &json!({"stock": 77}))
        .await
        .expect(200);
    let routed = fetch(&node.url(LIST), Some("gzip"), &[]).await;
    let cached = fetch(&node.url(LIST), Some("gzip"), &[]).await;
    assert_eq!(
        cached.body, routed.body,
        "cached gzip list differs from routed"
    );
    assert_eq!(cached.stable_headers(), routed.stable_headers());
    let fresh = fetch(&node.url(LIST), None, &[]).await;
    assert_eq!(routed.decoded(), fresh.body);
    assert!(String::from_utf8_lossy(&fresh.body).contains("\"stock\":77"));

    // A product's detail: a demo product is below the threshold and stays plain, without
    // Vary; one with a long description is compressed like the list.
    let small = fetch(&node.url("/api/products/1/"), Some("br, gzip"), &[]).await;
    assert_eq!(small.status, 200);
    assert_eq!(small.header("content-encoding"), None);
    assert_eq!(small.header("vary"), None);
    let category = node.create_category(&admin, "Long reads").await;
    let created = node
        .post(
            "/api/products/",
            Some(&admin),
            &json!({
                "name": "Liner notes", "stock": 5, "price": "12.00", "category": category,
                "description": "A long description of a record, its songs and sleeve. ".repeat(40),
            }),
        )
        .await;
    let id = created.expect(201)["id"].as_i64().expect("id");
    let detail = format!("/api/products/{id}/");
    let routed = fetch(&node.url(&detail), Some("gzip"), &[]).await;
    let (plain, _, gzip) = three_ways(&node.url(&detail)).await;
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&plain.body).expect("JSON")["id"],
        id
    );
    // The routed answer (the first request, a miss) and the cached ones agree too.
    assert_eq!(gzip.body, routed.body);
    assert_eq!(gzip.stable_headers(), routed.stable_headers());

    // Accept-Encoding's q-values: refused codings are not used; identity alone is plain.
    let gzip_only = fetch(&node.url(LIST), Some("br;q=0, gzip;q=0.5"), &[]).await;
    assert_eq!(gzip_only.header("content-encoding"), Some("gzip"));
    let preferred = fetch(&node.url(LIST), Some("gzip;q=1, br;q=0.4"), &[]).await;
    assert_eq!(preferred.header("content-encoding"), Some("gzip"));
    for accept in ["identity", "br;q=0, gzip;q=0", "deflate"] {
        let answer = fetch(&node.url(LIST), Some(accept), &[]).await;
        assert_eq!(answer.header("content-encoding"), None, "{accept}");
        assert_eq!(answer.body, fresh.body, "{accept}");
    }

    // Errors stay plain.
    let missing = fetch(&node.url("/api/products/999999/"), Some("br"), &[]).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.header("content-encoding"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_files_are_compressed_once_with_an_etag_per_encoding() {
    let node = Node::builder().env("RUST_LOG", "warn").start();
    for path in [ASSET, "/"] {
        let (plain, br, gzip) = three_ways(&node.url(path)).await;
        let tag = |a: &Answer| a.header("etag").expect("an ETag").to_owned();
        let plain_tag = tag(&plain);
        let hash = plain_tag.trim_matches('"');
        assert_eq!(tag(&br), format!("\"{hash}-br\""), "{path}");
        assert_eq!(tag(&gzip), format!("\"{hash}-gz\""), "{path}");
        // The tag of the encoding asked for revalidates; another encoding's does not.
        for (accept, held, expected) in [
            (Some("br"), tag(&br), 304),
            (Some("gzip"), tag(&gzip), 304),
            (None, plain_tag.clone(), 304),
            (Some("gzip"), tag(&br), 200),
            (None, tag(&br), 200),
        ] {
            let answer = fetch(&node.url(path), accept, &[("if-none-match", held.as_str())]).await;
            assert_eq!(
                answer.status, expected,
                "{path} {accept:?} If-None-Match {held}"
            );
            assert_eq!(answer.header("vary"), Some("Accept-Encoding"), "{path}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balancer_passes_compressed_bodies_through_untouched() {
    let node = demo_node().await;
    let lb = Balancer::start(
        local(free_port()),
        None,
        &format!("primaries = [\"{}\"]\nbackups = []\n", node_addr(&node)),
    );
    wait_for("the balancer to forward", Duration::from_secs(20), || {
        let url = lb.url("/api/categories/");
        async move { (fetch(&url, None, &[]).await.status == 200).then_some(()) }
    })
    .await;
    for path in [LIST, ASSET] {
        let (plain, br, gzip) = three_ways(&lb.url(path)).await;
        for (through, accept) in [(&plain, None), (&br, Some("br")), (&gzip, Some("gzip"))] {
            let direct = fetch(&node.url(path), accept, &[]).await;
            assert_eq!(through.body, direct.body, "{path} {accept:?} changed by lb");
            for name in ["content-encoding", "content-length", "vary", "etag"] {
                assert_eq!(
                    through.header(name),
                    direct.header(name),
                    "{path} {accept:?}: {name}"
                );
            }
        }
    }
}
