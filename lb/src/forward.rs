//! How a request is carried: [`HttpFront`] serves each client connection Pingora accepts
//! with hyper's HTTP/1.1 server, and [`Balancer::forward`] takes every request through the
//! balancer's rules (local answers, ketama choice, forwarding headers, one retry, failure
//! accounting, the access line) to an upstream, over the client connection's own upstream
//! connections ([`UpstreamLinks`], driven in the same task).
//!
//! Why not Pingora's `ProxyHttp`: measured on the same two upstreams, its per-request
//! machinery cost about twice nginx's CPU per request; hyper's server and client, with the
//! upstream connection in the client connection's task, cost about 1.3 times nginx's
//! (0.79-0.94 of its req/s in `TOPOLOGY=nginx-vs-lb benches/load.sh`). Pingora still runs
//! the process (listeners, graceful shutdown and upgrade, runtimes), the ketama selection
//! and the health checks.

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use pingora_core::apps::ServerApp;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;

use crate::links::{LinkError, UpstreamLinks};
use crate::metrics;
use crate::proxy::{AccessRecord, Balancer, MAX_ATTEMPTS, client_ip, is_internal, maybe_local};
use crate::upstream::FailurePhase;

/// What the balancer answers with: an upstream's streamed body or its own.
pub type FrontBody = Either<UpstreamBody, Full<Bytes>>;

/// An upstream's response body, streamed to the client, cut when the upstream sends
/// nothing for `read_timeout_secs` (as Pingora's and nginx's `proxy_read_timeout`). The
/// timer is armed only while the body waits: a body that is already there costs none.
pub struct UpstreamBody {
    inner: Incoming,
    read_timeout: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The timer runs for the current wait (it is re-armed after each frame).
    armed: bool,
}

impl hyper::body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.armed = false;
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = tokio::time::Instant::now() + this.read_timeout;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !this.armed {
            timer.as_mut().reset(deadline);
            this.armed = true;
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                Poll::Ready(Some(Err("the upstream stopped sending its body".into())))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Serves one client connection with hyper's HTTP/1.1 server, and drives its upstream
/// connections in the same task; on shutdown, the request in flight finishes and the
/// connection closes.
pub struct HttpFront {
    pub balancer: Arc<Balancer>,
}

#[async_trait]
impl ServerApp for HttpFront {
    async fn process_new(
        self: &Arc<Self>,
        session: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let peer = session
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let balancer = self.balancer.clone();
        let client = Arc::new(ClientConnection {
            peer: peer.map(|ip| Peer {
                ip,
                header: ip_header_value(ip),
            }),
            links: UpstreamLinks::default(),
        });
        let served = client.clone();
        let service = hyper::service::service_fn(move |request| {
            let balancer = balancer.clone();
            let client = served.clone();
            async move { Ok::<_, Infallible>(balancer.forward(&client, request).await) }
        });
        let idle = Duration::from_secs(self.balancer.config.idle_timeout_secs);
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            // hyper's header timer runs while a keep-alive connection waits for its next
            // request: the idle timeout. The guard bounds a head once it has started.
            .header_read_timeout(idle)
            .serve_connection(TokioIo::new(session), service);
        let mut connection = std::pin::pin!(connection);
        let mut shutdown = shutdown.clone();
        if *shutdown.borrow() {
            connection.as_mut().graceful_shutdown();
        }
        let serve = async {
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = shutdown.changed() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        };
        tokio::select! {
            () = serve => {}
            () = client.links.drive() => {}
        }
        None
    }
}

/// What the requests of one client connection share.
pub(crate) struct ClientConnection {
    /// The TCP peer, when known.
    peer: Option<Peer>,
    links: UpstreamLinks,
}

/// A client connection's TCP peer, with its address as a header value, made once.
struct Peer {
    ip: IpAddr,
    header: HeaderValue,
}

/// Headers that belong to one hop and are never passed on (RFC 9110, 7.6.1), and the
/// forwarding headers the balancer sets itself.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::EXPECT,
];

static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// One request's way through the balancer, for its access line: written when the answer
/// is ready, or, when the client goes away first (hyper drops the request's future), on
/// drop, with status 0.
struct Trip<'a> {
    balancer: &'a Balancer,
    method: Method,
    path: Option<http::uri::PathAndQuery>,
    started: Instant,
    client: Option<IpAddr>,
    attempts: u8,
    upstream: Option<usize>,
    logged: bool,
}

impl Trip<'_> {
    fn log(&mut self, status: u16, error: Option<&dyn std::fmt::Display>) {
        self.logged = true;
        let upstream = match self.upstream {
            Some(index) if error.is_none() => self.balancer.upstreams.get(index).label.as_str(),
            _ => "-",
        };
        let elapsed = self.started.elapsed();
        metrics::request(upstream, status, elapsed.as_secs_f64());
        (self.balancer.access_log)(&AccessRecord {
            method: self.method.as_str(),
            path: self.path.as_ref().map_or("/", |p| p.as_str()),
            status,
            client: self.client,
            upstream,
            attempts: self.attempts,
            latency_us: u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            error,
        });
    }
}

impl Drop for Trip<'_> {
    fn drop(&mut self) {
        if !self.logged {
            self.log(0, Some(&"the client went away before its answer"));
        }
    }
}

/// Why an attempt failed.
enum AttemptError {
    Connect(String),
    TimedOut,
    Broken(String),
}

impl std::fmt::Display for AttemptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttemptError::Connect(e) => write!(f, "connect: {e}"),
            AttemptError::TimedOut => f.write_str("the upstream did not answer in time"),
            AttemptError::Broken(e) => write!(f, "proxy: {e}"),
        }
    }
}

/// A JSON answer of the balancer's own.
fn json_answer(status: StatusCode, detail: &str) -> Response<FrontBody> {
    let body = Bytes::from(serde_json::json!({ "detail": detail }).to_string());
    let mut response = Response::new(Either::Right(Full::new(body.clone())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// An IP address as a header value.
fn ip_header_value(ip: IpAddr) -> HeaderValue {
    // An address's text is always a valid header value.
    HeaderValue::from_maybe_shared(Bytes::from(ip.to_string()))
        .unwrap_or_else(|_| HeaderValue::from_static("-"))
}

impl Balancer {
    /// Takes one client request to an upstream (or answers it itself) and writes its
    /// access line.
    pub(crate) async fn forward(
        &self,
        connection: &ClientConnection,
        request: Request<Incoming>,
    ) -> Response<FrontBody> {
        let peer = connection.peer.as_ref();
        let mut trip = Trip {
            balancer: self,
            method: request.method().clone(),
            path: request.uri().path_and_query().cloned(),
            started: Instant::now(),
            client: peer.map(|p| client_ip(p.ip, &self.config.trusted_proxies, request.headers())),
            attempts: 0,
            upstream: None,
            logged: false,
        };
        let (parts, body) = request.into_parts();
        let (response, error) = self
            .answer(peer, parts, body, &connection.links, &mut trip)
            .await;
        trip.log(
            response.status().as_u16(),
            error.as_ref().map(|e| e as &dyn std::fmt::Display),
        );
        response
    }

    async fn answer(
        &self,
        peer: Option<&Peer>,
        mut parts: http::request::Parts,
        body: Incoming,
        links: &UpstreamLinks,
        trip: &mut Trip<'_>,
    ) -> (Response<FrontBody>, Option<AttemptError>) {
        let path = parts.uri.path();
        if maybe_local(path) && is_internal(path) {
            return (json_answer(StatusCode::NOT_FOUND, "Not found."), None);
        }
        if parts.method == Method::CONNECT {
            return (
                json_answer(StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not proxied."),
                None,
            );
        }
        // The body is read whole before the first attempt (as nginx buffers it), so a
        // retry can send it again.
        let body = match Limited::new(body, self.config.max_body_bytes)
            .collect()
            .await
        {
            Ok(collected) => collected.to_bytes(),
            Err(error)
                if error
                    .downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                let mut response =
                    json_answer(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large.");
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                return (response, None);
            }
            // The client went away or broke its body: nobody reads this answer.
            Err(_) => return (json_answer(StatusCode::BAD_REQUEST, "Bad request."), None),
        };
        let mut headers = std::mem::take(&mut parts.headers);
        self.rewrite_headers(peer, trip.client, &mut headers);
        // The ketama key: the client address's octets (on the stack).
        let mut octets = [0u8; 16];
        let key: &[u8] = match trip.client {
            Some(IpAddr::V4(ip)) => {
                octets[..4].copy_from_slice(&ip.octets());
                &octets[..4]
            }
            Some(IpAddr::V6(ip)) => {
                octets = ip.octets();
                &octets
            }
            None => &[],
        };
        let mut failed: Vec<usize> = Vec::new();
        let mut last_error = None;
        while trip.attempts < MAX_ATTEMPTS {
            let Some(index) = self.choose(key, &failed) else {
                break;
            };
            if trip.attempts > 0 {
                metrics::retry();
            }
            trip.attempts += 1;
            trip.upstream = Some(index);
            self.upstreams.record_request(index);
            match self.attempt(links, index, &parts, &headers, &body).await {
                Ok(response) => return (response, None),
                Err(error) => {
                    let phase = match error {
                        AttemptError::Connect(_) => FailurePhase::Connect,
                        _ => FailurePhase::Proxy,
                    };
                    self.upstreams.record_failure(index, phase);
                    failed.push(index);
                    // A request that may have reached the upstream is sent again only when
                    // it is idempotent; one that never connected may go anywhere.
                    let again =
                        matches!(error, AttemptError::Connect(_)) || parts.method.is_idempotent();
                    last_error = Some(error);
                    if !again {
                        break;
                    }
                }
            }
        }
        let response = match &last_error {
            None => json_answer(StatusCode::SERVICE_UNAVAILABLE, "No upstream is available."),
            Some(AttemptError::TimedOut) => json_answer(
                StatusCode::GATEWAY_TIMEOUT,
                "Gateway timeout: the upstream did not answer in time.",
            ),
            Some(_) => json_answer(StatusCode::BAD_GATEWAY, "Bad gateway: the upstream failed."),
        };
        (response, last_error)
    }

    /// Turns the client's headers into the upstream's, in place: hop-by-hop ones dropped,
    /// the forwarding headers set (`X-Forwarded-For` appended to, `Host` kept).
    fn rewrite_headers(
        &self,
        peer: Option<&Peer>,
        client: Option<IpAddr>,
        headers: &mut HeaderMap,
    ) {
        // One pass over the (few) names a request has, rather than a lookup of each
        // hop-by-hop name; most requests have none.
        if headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
            for name in &HOP_BY_HOP {
                headers.remove(name);
            }
        }
        headers.remove(&X_REAL_IP);
        let Some(peer) = peer else {
            headers.remove(&X_FORWARDED_FOR);
            headers.remove(&X_FORWARDED_PROTO);
            return;
        };
        let peer_value = peer.header.clone();
        let peer = peer.ip;
        let client = client.unwrap_or(peer);
        let real_ip = if client == peer {
            peer_value.clone()
        } else {
            ip_header_value(client)
        };
        let forwarded_for = {
            let earlier: Vec<&str> = headers
                .get_all(&X_FORWARDED_FOR)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .collect();
            if earlier.is_empty() {
                Some(peer_value)
            } else {
                HeaderValue::from_str(&format!("{}, {peer}", earlier.join(", "))).ok()
            }
        };
        let trusted_https = self.config.trusted_proxies.contains(&peer)
            && headers
                .get(&X_FORWARDED_PROTO)
                .is_some_and(|v| v.as_bytes() == b"https");
        let proto = if trusted_https { "https" } else { "http" };
        headers.insert(X_REAL_IP.clone(), real_ip);
        match forwarded_for {
            Some(value) => headers.insert(X_FORWARDED_FOR.clone(), value),
            None => headers.remove(&X_FORWARDED_FOR),
        };
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    }

    /// One attempt at upstream `index`: its response head within `read_timeout_secs`. A
    /// kept connection found closed does not count: the request goes again on a new one.
    async fn attempt(
        &self,
        links: &UpstreamLinks,
        index: usize,
        parts: &http::request::Parts,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Result<Response<FrontBody>, AttemptError> {
        let upstream = self.upstreams.get(index);
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        let request = || {
            let mut request = Request::new(Full::new(body.clone()));
            *request.method_mut() = parts.method.clone();
            *request.uri_mut() = Uri::from(path.clone());
            *request.headers_mut() = headers.clone();
            request
        };
        let connect_timeout = Duration::from_millis(self.config.connect_timeout_ms);
        let send = async {
            match links
                .send(index, upstream.addr, connect_timeout, request())
                .await
            {
                Err(LinkError::Stale) => {
                    links
                        .send(index, upstream.addr, connect_timeout, request())
                        .await
                }
                sent => sent,
            }
        };
        let read_timeout = Duration::from_secs(self.config.read_timeout_secs);
        let response = match tokio::time::timeout(read_timeout, send).await {
            Err(_) => return Err(AttemptError::TimedOut),
            Ok(Err(LinkError::Connect(error))) => return Err(AttemptError::Connect(error)),
            Ok(Err(LinkError::Stale)) => {
                return Err(AttemptError::Broken(
                    "the upstream closed two connections in a row".to_owned(),
                ));
            }
            Ok(Err(LinkError::Broken(error))) => {
                return Err(AttemptError::Broken(error.to_string()));
            }
            Ok(Ok(response)) => response,
        };
        let (mut head, body) = response.into_parts();
        for name in &HOP_BY_HOP {
            head.headers.remove(name);
        }
        let body = UpstreamBody {
            inner: body,
            read_timeout,
            timer: None,
            armed: false,
        };
        Ok(Response::from_parts(head, Either::Left(body)))
    }
}
