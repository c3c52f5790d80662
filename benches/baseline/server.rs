//! The load harness's baseline: a bare hyper HTTP/1 server that answers every request with
//! the same body and headers, read once at start-up (in `benches/load.sh`, those of a cached
//! `GET /api/products/1/` from the node under test). No routing, no cache lookup, no
//! middleware: what this machine's HTTP stack can do, so that every Soundwave figure can be
//! read as a fraction of it.
//!
//! ```sh
//! cargo build --release --example baseline_server
//! target/release/examples/baseline_server --listen 127.0.0.1:9000 --body-file body.json \
//!     --header 'x-soundwave-node: 1'
//! ```
//!
//! It prints `baseline listening on http://ADDR` once bound and serves until killed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use http::{HeaderName, HeaderValue, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(about = "Bare hyper server answering every request with one fixed response")]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// File whose bytes are the body of every response.
    #[arg(long)]
    body_file: PathBuf,
    /// Extra response header, `name: value` (repeatable). `content-type: application/json`
    /// is always sent; hyper adds `content-length` and `date`.
    #[arg(long = "header")]
    headers: Vec<String>,
}

struct Canned {
    body: Bytes,
    headers: Vec<(HeaderName, HeaderValue)>,
}

fn respond(canned: &Canned) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(canned.body.clone()));
    let headers = response.headers_mut();
    for (name, value) in &canned.headers {
        headers.append(name.clone(), value.clone());
    }
    response
}

fn parse_header(raw: &str) -> anyhow::Result<(HeaderName, HeaderValue)> {
    let (name, value) = raw
        .split_once(':')
        .with_context(|| format!("header {raw:?} is not `name: value`"))?;
    Ok((
        HeaderName::from_bytes(name.trim().as_bytes())?,
        HeaderValue::from_str(value.trim())?,
    ))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let body = std::fs::read(&args.body_file)
        .with_context(|| format!("reading {}", args.body_file.display()))?;
    let mut headers = vec![(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    )];
    for raw in &args.headers {
        let (name, value) = parse_header(raw)?;
        if name != http::header::CONTENT_TYPE {
            headers.push((name, value));
        }
    }
    let canned = Arc::new(Canned {
        body: Bytes::from(body),
        headers,
    });

    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(args.listen, canned))
}

async fn serve(listen: SocketAddr, canned: Arc<Canned>) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    println!("baseline listening on http://{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let canned = canned.clone();
        tokio::spawn(async move {
            let service = service_fn(move |_request: Request<Incoming>| {
                let response = respond(&canned);
                async move { Ok::<_, Infallible>(response) }
            });
            // A client closing its connection mid-request is not this server's concern.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
