//! The node's HTTP server: accepts TCP connections and serves the API router on each with
//! hyper's HTTP/1.1 connection, until told to stop; then stops accepting, lets every
//! connection finish the request it is on, and returns.
//!
//! Not `axum::serve`: that one sniffs each connection for HTTP/2 and serves it through
//! hyper-util's auto connection with upgrades, which a cached GET paid for on every request
//! (profiled under oha), and it leaves Nagle on. The node speaks HTTP/1.1 (as the balancer
//! does to it), with `TCP_NODELAY` and a deadline for a request's headers.
//!
//! Connections are bounded, in all and per client IP ([`ConnectionLimits`]): past a limit a
//! connection gets a JSON 503 with `Connection: close` at once, instead of holding a
//! descriptor and a task while it trickles or idles.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::IntoResponse;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

use crate::api::CachedReads;

/// How long to wait, after accepting fails (e.g. out of file descriptors), before trying again.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(50);

/// Serves `app` on `listener` until `stop` resolves, then waits up to `drain` for in-flight
/// requests to finish. Each request carries its peer as `ConnectInfo<SocketAddr>`. With
/// `cached`, the reads it answers from the cache never reach `app`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    cached: Option<CachedReads>,
    limits: ConnectionLimits,
    stop: impl Future<Output = ()>,
    drain: Duration,
) {
    let limits = Arc::new(limits);
    let graceful = GracefulShutdown::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    accept_failed(&error).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        // Responses are written whole, in one writev: nothing to gain from Nagle's delay.
        let _ = stream.set_nodelay(true);
        let Some(slot) = limits.admit(peer.ip()) else {
            tokio::spawn(refuse(stream, limits.refusal.clone()));
            continue;
        };
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .serve_connection(
                TokioIo::new(ParseErrorsAsJson::new(
                    LingeringClose::new(stream),
                    &limits.node_header,
                )),
                RouterService::new(&app, cached.as_ref(), peer, &limits.node_header),
            );
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "requests still in flight after {}s: closing their connections",
            drain.as_secs()
        );
    }
}

/// How long a closing connection keeps reading (and dropping) what its client still sends.
const LINGER: Duration = Duration::from_millis(500);

pin_project_lite::pin_project! {
    /// A client's stream whose shutdown lingers, as nginx's `lingering_close`: the sending
    /// side is shut (the client sees the end), then whatever the client still sends is read
    /// and dropped until it closes too or `LINGER` passes. An answer given before its
    /// request's body was read (a 413 on `Content-Length`) would otherwise be lost to the
    /// reset that closing over unread bytes sends, while the client is still writing.
    struct LingeringClose<S> {
        #[pin]
        inner: S,
        // Set once the sending side is shut: the end of the lingering.
        deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    }
}

impl<S> LingeringClose<S> {
    fn new(inner: S) -> Self {
        LingeringClose {
            inner,
            deadline: None,
        }
    }
}

impl<S: tokio::io::AsyncRead> tokio::io::AsyncRead for LingeringClose<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().inner.poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite> tokio::io::AsyncWrite for LingeringClose<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut this = self.project();
        if this.deadline.is_none() {
            std::task::ready!(this.inner.as_mut().poll_shutdown(cx))?;
            *this.deadline = Some(Box::pin(tokio::time::sleep(LINGER)));
        }
        let mut sink = [0u8; 8192];
        loop {
            if let Some(deadline) = this.deadline.as_mut()
                && deadline.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(Ok(()));
            }
            let mut dropped = tokio::io::ReadBuf::new(&mut sink);
            match this.inner.as_mut().poll_read(cx, &mut dropped) {
                // More of what the client sends: dropped; go on until it closes.
                Poll::Ready(Ok(())) if !dropped.filled().is_empty() => {}
                // The client closed (or broke) its side: done.
                Poll::Ready(_) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The connection's stream, with hyper's own answers to requests it cannot parse (a
    /// bodiless `400`, `414` or `431` written before any handler runs, so without the
    /// API's JSON body or `X-Soundwave-Node`) replaced by the API's JSON error. Every other
    /// byte passes through unchanged; checking costs a prefix comparison per response.
    struct ParseErrorsAsJson<S> {
        #[pin]
        inner: S,
        node_header: http::HeaderValue,
        // The replacement being written, how much of it went out, and the length of
        // hyper's bytes it stands for.
        pending: Option<(Vec<u8>, usize, usize)>,
    }
}

impl<S> ParseErrorsAsJson<S> {
    fn new(inner: S, node_header: &http::HeaderValue) -> Self {
        ParseErrorsAsJson {
            inner,
            node_header: node_header.clone(),
            pending: None,
        }
    }
}

/// The JSON answer for one of hyper's parse-error heads, if `head` is one.
fn json_parse_error(head: &[u8], node_header: &http::HeaderValue) -> Option<Vec<u8>> {
    let (status, reason, detail) = if head.starts_with(b"HTTP/1.1 431 ") {
        (
            431,
            "Request Header Fields Too Large",
            "Request header fields too large.",
        )
    } else if head.starts_with(b"HTTP/1.1 414 ") {
        (414, "URI Too Long", "Request URI too long.")
    } else if head.starts_with(b"HTTP/1.1 400 ") {
        (400, "Bad Request", "Malformed request.")
    } else {
        return None;
    };
    // Ours carry a body and the node header; hyper's have neither.
    let text = String::from_utf8_lossy(head).to_ascii_lowercase();
    if !text.contains("\r\ncontent-length: 0\r\n") || text.contains("x-soundwave-node") {
        return None;
    }
    Some(closing_json_response(
        &format!("{status} {reason}"),
        "",
        detail,
        node_header,
    ))
}

/// A whole HTTP/1.1 response written by the server itself, below the router: a JSON
/// `{"detail": ...}` body, `Connection: close` and the node header, with `extra_headers`
/// (each ending in CRLF) before them. `detail` is a literal of ours: it is not escaped.
fn closing_json_response(
    status_line: &str,
    extra_headers: &str,
    detail: &str,
    node_header: &http::HeaderValue,
) -> Vec<u8> {
    let body = format!("{{\"detail\":\"{detail}\"}}");
    let mut response = format!(
        "HTTP/1.1 {status_line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         {extra_headers}connection: close\r\nx-soundwave-node: ",
        body.len()
    )
    .into_bytes();
    response.extend_from_slice(node_header.as_bytes());
    response.extend_from_slice(b"\r\n\r\n");
    response.extend_from_slice(body.as_bytes());
    response
}

impl<S: tokio::io::AsyncRead> tokio::io::AsyncRead for ParseErrorsAsJson<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().inner.poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite> ParseErrorsAsJson<S> {
    /// Writes out the pending replacement; `Ready(Ok(n))` with the length it stands for.
    fn poll_pending(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut this = self.project();
        while let Some((bytes, written, stands_for)) = this.pending.as_mut() {
            if *written == bytes.len() {
                let n = *stands_for;
                *this.pending = None;
                return Poll::Ready(Ok(n));
            }
            match this.inner.as_mut().poll_write(cx, &bytes[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(0))
    }
}

impl<S: tokio::io::AsyncWrite> tokio::io::AsyncWrite for ParseErrorsAsJson<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.pending.is_none()
            && buf.starts_with(b"HTTP/1.1 4")
            && let Some(replacement) = json_parse_error(buf, &self.node_header)
        {
            *self.as_mut().project().pending = Some((replacement, 0, buf.len()));
        }
        if self.pending.is_some() {
            return self.poll_pending(cx);
        }
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.pending.is_none()
            && let Some(first) = bufs.iter().find(|b| !b.is_empty())
            && first.starts_with(b"HTTP/1.1 4")
            && let Some(replacement) = json_parse_error(first, &self.node_header)
        {
            // A parse-error answer has no body: the head is all hyper writes.
            let total = bufs.iter().map(|b| b.len()).sum();
            *self.as_mut().project().pending = Some((replacement, 0, total));
        }
        if self.pending.is_some() {
            return self.poll_pending(cx);
        }
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

/// Bounds on client connections: how many are open, in all and per client IP, and how long
/// one may wait for a request's headers. Trusted proxies (the balancer, whose connections
/// carry many clients) count in all but have no per-IP bound.
pub struct ConnectionLimits {
    /// How long a client may take to send a request's headers, in all, and how long a
    /// keep-alive connection may wait for its next request (hyper starts the same timer
    /// when it waits for a head); then hyper closes the connection.
    header_read_timeout: Duration,
    /// The same count the balancer keeps of its clients.
    counter: Arc<lb::ConnectionCounter>,
    /// The whole response a refused connection gets.
    refusal: bytes::Bytes,
    node_header: http::HeaderValue,
}

impl ConnectionLimits {
    /// `node_header` is the `X-Soundwave-Node` value every response carries.
    pub fn new(
        header_read_timeout: Duration,
        max_total: usize,
        max_per_ip: usize,
        exempt: Vec<IpAddr>,
        node_header: &http::HeaderValue,
    ) -> Self {
        let refusal = closing_json_response(
            "503 Service Unavailable",
            "retry-after: 1\r\n",
            "Too many connections; try again shortly.",
            node_header,
        );
        ConnectionLimits {
            header_read_timeout,
            counter: lb::ConnectionCounter::new(max_total, max_per_ip, exempt),
            refusal: refusal.into(),
            node_header: node_header.clone(),
        }
    }

    /// A slot for one more connection from `ip`, or `None` past a limit.
    fn admit(&self, ip: IpAddr) -> Option<lb::ConnectionSlot> {
        self.counter.admit(ip)
    }
}

/// How long a refused connection is given to take its 503.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Answers a connection past a limit with a 503 and closes it, without reading its request.
async fn refuse(mut stream: TcpStream, response: bytes::Bytes) {
    metrics::counter!("soundwave_connections_refused_total").increment(1);
    let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, async {
        stream.write_all(&response).await?;
        stream.shutdown().await
    })
    .await;
}

/// Logs a failed `accept` and waits a little: the usual causes (no file descriptors left, a
/// connection reset before it was accepted) pass, and retrying at once would spin.
async fn accept_failed(error: &io::Error) {
    if error.kind() != io::ErrorKind::ConnectionAborted {
        tracing::warn!(%error, "accepting a connection failed");
        tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
    }
}

/// The router as one connection's hyper service: each request gets the connection's peer,
/// and a request whose handler panics gets a JSON 500 instead of a dropped connection.
/// Reads the cache holds are answered first, without routing ([`CachedReads`]).
#[derive(Clone)]
struct RouterService {
    app: Router,
    cached: Option<CachedReads>,
    peer: SocketAddr,
    node_header: http::HeaderValue,
}

impl RouterService {
    fn new(
        app: &Router,
        cached: Option<&CachedReads>,
        peer: SocketAddr,
        node_header: &http::HeaderValue,
    ) -> Self {
        RouterService {
            app: app.clone(),
            cached: cached.cloned(),
            peer,
            node_header: node_header.clone(),
        }
    }
}

impl hyper::service::Service<http::Request<Incoming>> for RouterService {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = CatchPanic<tower::util::Oneshot<Router, http::Request<Body>>>;

    fn call(&self, request: http::Request<Incoming>) -> Self::Future {
        if let Some(cached) = &self.cached {
            match std::panic::catch_unwind(AssertUnwindSafe(|| cached.answer(&request, self.peer)))
            {
                Ok(Some(response)) => return CatchPanic::answered(response),
                Ok(None) => {}
                Err(panic) => {
                    return CatchPanic::answered(panic_response(&*panic, Some(&self.node_header)));
                }
            }
        }
        let mut request = request.map(Body::new);
        request.extensions_mut().insert(ConnectInfo(self.peer));
        CatchPanic {
            inner: Some(self.app.clone().oneshot(request)),
            answered: None,
            node_header: Some(self.node_header.clone()),
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's future that answers 500 when it panics (logged at error and counted in
    /// `soundwave_panics_total`); the connection stays usable. Or an answer already made.
    pub struct CatchPanic<F> {
        #[pin]
        inner: Option<F>,
        answered: Option<axum::response::Response>,
        node_header: Option<http::HeaderValue>,
    }
}

impl<F> CatchPanic<F> {
    fn answered(response: axum::response::Response) -> Self {
        CatchPanic {
            inner: None,
            answered: Some(response),
            node_header: None,
        }
    }
}

/// The 500 that answers a panic (logged at error and counted in `soundwave_panics_total`).
fn panic_response(
    panic: &(dyn std::any::Any + Send),
    node_header: Option<&http::HeaderValue>,
) -> axum::response::Response {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(panic = %message, "a request handler panicked");
    metrics::counter!("soundwave_panics_total").increment(1);
    let mut response =
        crate::error::ApiError::Internal("a request handler panicked".into()).into_response();
    if let Some(node) = node_header {
        response
            .headers_mut()
            .insert("x-soundwave-node", node.clone());
    }
    response
}

impl<F> Future for CatchPanic<F>
where
    F: Future<Output = Result<axum::response::Response, std::convert::Infallible>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            let response = this.answered.take();
            return match response {
                Some(response) => Poll::Ready(Ok(response)),
                // Polled again after it answered: hyper never does.
                None => Poll::Pending,
            };
        };
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(poll) => poll,
            Err(panic) => Poll::Ready(Ok(panic_response(&*panic, this.node_header.as_ref()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::AsyncReadExt;

    /// Reads one response with a `content-length` body from `stream`.
    async fn read_response(stream: &mut TcpStream) -> String {
        let mut out = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            let n = stream.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&out));
            out.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&out).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .expect("a content-length");
                if body.len() >= length {
                    return text;
                }
            }
        }
    }

    async fn boom() -> &'static str {
        panic!("deliberately, for the test")
    }

    #[tokio::test]
    async fn a_panicking_handler_gets_a_json_500_and_the_connection_stays_usable() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/boom", get(boom))
            .route("/ok", get(|| async { "fine" }));
        let limits = ConnectionLimits::new(
            Duration::from_secs(30),
            10,
            10,
            Vec::new(),
            &http::HeaderValue::from(7u64),
        );
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            app,
            None,
            limits,
            async move {
                let _ = stop_rx.await;
            },
            Duration::from_secs(1),
        ));

        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /boom HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let response = read_response(&mut stream).await;
        assert!(response.starts_with("HTTP/1.1 500"), "{response}");
        assert!(response.contains("x-soundwave-node: 7"), "{response}");
        let body = response.split_once("\r\n\r\n").unwrap().1;
        let json: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
        assert!(json["detail"].is_string(), "{body}");

        stream
            .write_all(b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let response = read_response(&mut stream).await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.ends_with("fine"), "{response}");

        let _ = stop_tx.send(());
        server.await.unwrap();
    }
}
