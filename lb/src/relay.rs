//! How a request is carried: [`Relay`] serves each client connection Pingora accepts, one
//! request after another, in that connection's own task: it gathers the head (bounded in
//! size and in total time), parses it once, reads the body whole (bounded too), applies the
//! balancer's rules (local answers, ketama choice, forwarding headers, one retry, failure
//! accounting) and relays the upstream's answer as it comes, over the upstream connection
//! this client connection keeps (one at most, driven by the same task).
//!
//! Why its own HTTP/1.1 relay rather than Pingora's `ProxyHttp` or hyper's server and
//! client: measured on the same two upstreams, `ProxyHttp` cost about twice nginx's CPU per
//! request and hyper's server and client about 1.3 times (two codecs, a header map built
//! and copied per request, the request and its answer crossing futures). Here a request
//! head is parsed once (httparse) and rewritten straight into the upstream's bytes, the
//! answer's head is rewritten into the client's, and the body already read with it goes out
//! in the same write, as nginx does. Pingora still runs the process (listeners, graceful
//! shutdown and upgrade, runtimes), the ketama selection and the health checks.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Buf, Bytes, BytesMut};
use pingora_core::apps::ServerApp;
use pingora_core::protocols::{Shutdown, Stream};
use pingora_core::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::connection::{ConnectionCounter, GuardAnswer, GuardAnswers, RequestLimits};
use crate::http1::{
    ChunkedBody, Forwarding, Framing, RequestHead, ResponseHead, head_end, parse_response_head,
    write_client_head, write_upstream_head,
};
use crate::metrics;
use crate::proxy::{AccessRecord, Balancer, MAX_ATTEMPTS, client_ip, is_internal, maybe_local};
use crate::ratelimit::{RateLimiter, Verdict};
use crate::upstream::FailurePhase;

/// Room asked of the allocator for a client's reads at a time.
const READ_CHUNK: usize = 8 * 1024;
/// Room for an upstream's answer head and what follows it in one read: most answers
/// (a product, a page of 50) fit whole.
const ANSWER_READ: usize = 16 * 1024;
/// Most room asked for one read of an answer's body.
const MAX_BODY_READ: usize = 64 * 1024;
/// Largest upstream answer head taken; a larger one is a broken upstream (502).
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// A kept upstream connection idle for longer than this is checked before it carries a
/// request: the upstream may have closed it meanwhile.
const CHECK_IDLE_AFTER: Duration = Duration::from_secs(1);
/// Bodies up to this size go out in the same write as their head.
const COALESCE_BODY: usize = 16 * 1024;
/// After a refusal, how long the client's remaining bytes are read and dropped, so that
/// closing does not reset the connection before the client read the answer.
const LINGER: Duration = Duration::from_millis(500);
/// How many of the client's remaining bytes are read then, at most.
const LINGER_BYTES: usize = 1024 * 1024;

/// The balancer's connection handler: admits a client connection (bounds on open
/// connections in all and per IP, else a JSON 503) and relays its requests.
pub struct Relay {
    balancer: Arc<Balancer>,
    counter: Arc<ConnectionCounter>,
    limits: RequestLimits,
    answers: GuardAnswers,
    /// Per client IP requests per second; `None` when `rate_limit_per_sec` is 0.
    limiter: Option<RateLimiter>,
}

impl Relay {
    pub fn new(balancer: Balancer, counter: Arc<ConnectionCounter>, limits: RequestLimits) -> Self {
        let limiter = RateLimiter::new(
            balancer.config.rate_limit_per_sec,
            balancer.config.rate_limit_burst,
        );
        Relay {
            balancer: Arc::new(balancer),
            counter,
            limits,
            answers: GuardAnswers::new(),
            limiter,
        }
    }
}

/// How long a refused connection is given to take its 503.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

#[async_trait]
impl ServerApp for Relay {
    async fn process_new(
        self: &Arc<Self>,
        mut session: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let ip = session
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        // A peer without an IP address (a Unix socket) is the operator's own: not bounded.
        let slot = match ip {
            Some(ip) => match self.counter.admit(ip) {
                Some(slot) => Some(slot),
                None => {
                    metrics::connection_refused();
                    log_refusal(&self.balancer, Some(ip), &[], 503, "too many connections");
                    let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, async {
                        session
                            .write_all(&self.answers.too_many_connections)
                            .await?;
                        session.flush().await
                    })
                    .await;
                    Shutdown::shutdown(session.as_mut()).await;
                    return None;
                }
            },
            None => None,
        };
        let mut connection = ClientConnection {
            relay: self,
            stream: session,
            input: BytesMut::with_capacity(READ_CHUNK),
            output: BytesMut::with_capacity(READ_CHUNK),
            peer: ip.map(|ip| Peer {
                ip,
                text: Bytes::from(ip.to_string()),
            }),
            link: None,
            shutdown: shutdown.clone(),
        };
        connection.serve().await;
        drop(slot);
        None
    }
}

/// A client connection's TCP peer, with its address's text made once.
struct Peer {
    ip: IpAddr,
    text: Bytes,
}

/// One client connection and the upstream connection it keeps.
struct ClientConnection<'a> {
    relay: &'a Relay,
    stream: Stream,
    /// What the client sent and was not used yet.
    input: BytesMut,
    /// Bytes being put together for a write.
    output: BytesMut,
    peer: Option<Peer>,
    link: Option<UpstreamLink>,
    shutdown: ShutdownWatch,
}

/// An upstream connection kept by a client connection.
struct UpstreamLink {
    /// The upstream's index in the table.
    index: usize,
    stream: TcpStream,
    /// What the upstream sent and was not relayed yet.
    input: BytesMut,
    /// When its last answer ended.
    idle_since: Instant,
}

impl UpstreamLink {
    async fn connect(index: usize, addr: SocketAddr, timeout: Duration) -> Result<Self, String> {
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Err(_) => return Err("connect timed out".to_owned()),
            Ok(Err(error)) => return Err(error.to_string()),
            Ok(Ok(stream)) => stream,
        };
        // Small requests and answers go out at once.
        let _ = stream.set_nodelay(true);
        Ok(UpstreamLink {
            index,
            stream,
            input: BytesMut::with_capacity(ANSWER_READ),
            idle_since: Instant::now(),
        })
    }

    /// Is a connection kept idle still open? (Nothing is due from it: bytes or an end
    /// both mean it cannot carry a request.)
    fn still_open(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(
            self.stream.try_read(&mut probe),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
        )
    }

    /// Reads more of the answer, with room for `room` bytes at least (up to
    /// `MAX_BODY_READ`); `Ok(0)` when the upstream closed.
    async fn read_more(&mut self, room: usize) -> std::io::Result<usize> {
        let room = room.clamp(ANSWER_READ, MAX_BODY_READ);
        if self.input.capacity() - self.input.len() < room / 2 {
            self.input.reserve(room);
        }
        self.stream.read_buf(&mut self.input).await
    }

    /// Sends the request and reads the answer's head, skipping interim (1xx) answers;
    /// returns the head and its length in `input`.
    async fn exchange(
        &mut self,
        request: &[u8],
        body: &[u8],
        head_request: bool,
    ) -> Result<(ResponseHead, usize), LinkFault> {
        self.input.clear();
        let sent = async {
            self.stream.write_all(request).await?;
            if !body.is_empty() {
                self.stream.write_all(body).await?;
            }
            Ok::<_, std::io::Error>(())
        };
        sent.await.map_err(LinkFault::BeforeAnswer)?;
        let mut searched = 0;
        loop {
            if let Some(end) = head_end(&self.input, searched) {
                let head = parse_response_head(&self.input[..end], head_request)
                    .ok_or(LinkFault::Broken("the upstream's answer did not parse"))?;
                if (100..200).contains(&head.status) {
                    if head.status == 101 {
                        return Err(LinkFault::Broken("the upstream switched protocols"));
                    }
                    self.input.advance(end);
                    searched = 0;
                    continue;
                }
                return Ok((head, end));
            }
            if self.input.len() > MAX_RESPONSE_HEAD {
                return Err(LinkFault::Broken("the upstream's answer head is too large"));
            }
            searched = self.input.len().saturating_sub(3);
            match self.read_more(ANSWER_READ).await {
                Ok(0) if self.input.is_empty() => {
                    return Err(LinkFault::BeforeAnswer(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the upstream closed the connection",
                    )));
                }
                Ok(0) => return Err(LinkFault::Broken("the upstream closed mid-answer")),
                Ok(_) => {}
                Err(error) if self.input.is_empty() => {
                    return Err(LinkFault::BeforeAnswer(error));
                }
                Err(_) => return Err(LinkFault::Broken("the upstream broke mid-answer")),
            }
        }
    }
}

/// How an exchange with an upstream failed.
enum LinkFault {
    /// Nothing of an answer came (the connection failed or closed): on a kept connection,
    /// it may have been closed before the request arrived.
    BeforeAnswer(std::io::Error),
    /// The answer broke, or was not HTTP.
    Broken(&'static str),
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

/// Why a request's body could not be read.
enum BodyFault {
    TooLarge,
    TimedOut,
    /// The client went away or broke its body's framing.
    Gone,
    Unparsable,
}

/// The access line of a request the relay refused before it had a head to go by.
fn log_refusal(balancer: &Balancer, client: Option<IpAddr>, head: &[u8], status: u16, why: &str) {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut words = line.split(|&b| b == b' ');
    let method = words.next().and_then(|w| std::str::from_utf8(w).ok());
    let path = words.next().and_then(|w| std::str::from_utf8(w).ok());
    (balancer.access_log)(&AccessRecord {
        method: method.filter(|m| !m.is_empty()).unwrap_or("-"),
        path: path.unwrap_or("-"),
        status,
        client,
        upstream: "-",
        attempts: 0,
        latency_us: 0,
        error: Some(&why),
    });
}

/// One request's way through the balancer, for its access line and metrics.
struct Trip<'a> {
    balancer: &'a Balancer,
    method: &'a str,
    path: &'a str,
    started: Instant,
    client: Option<IpAddr>,
    attempts: u8,
    upstream: Option<usize>,
}

impl Trip<'_> {
    /// Writes the access line: `status` 0 when no answer reached the client. The upstream
    /// is named when one answered.
    fn log(&self, status: u16, answered_by_upstream: bool, error: Option<&dyn std::fmt::Display>) {
        let upstream = match self.upstream {
            Some(index) if answered_by_upstream => {
                self.balancer.upstreams.get(index).label.as_str()
            }
            _ => "-",
        };
        let elapsed = self.started.elapsed();
        metrics::request(upstream, status, elapsed.as_secs_f64());
        (self.balancer.access_log)(&AccessRecord {
            method: self.method,
            path: self.path,
            status,
            client: self.client,
            upstream,
            attempts: self.attempts,
            latency_us: u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            error,
        });
    }
}

/// A JSON answer of the balancer's own, whole; `extra` is more header lines, each ending
/// in CRLF.
fn own_answer(status: u16, reason: &str, detail: &str, close: bool, extra: &str) -> Bytes {
    let body = serde_json::json!({ "detail": detail }).to_string();
    let connection = if close { "connection: close\r\n" } else { "" };
    Bytes::from(format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         cache-control: no-store\r\n{extra}{connection}\r\n{body}",
        body.len()
    ))
}

/// The request target in origin form (an absolute-form target loses scheme and authority).
fn origin_form(target: &str) -> &str {
    if target.starts_with('/') || target == "*" {
        return target;
    }
    match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |slash| &rest[slash..]),
        None => target,
    }
}

/// How a client connection goes on after an exchange.
#[derive(PartialEq, Eq)]
enum Next {
    KeepOpen,
    Close,
}

impl ClientConnection<'_> {
    fn balancer(&self) -> &Balancer {
        &self.relay.balancer
    }

    fn client_addr(&self) -> Option<IpAddr> {
        self.peer.as_ref().map(|p| p.ip)
    }

    /// Serves requests until the client leaves, breaks a limit, asks to close, or the
    /// balancer shuts down (the request in flight finishes first).
    async fn serve(&mut self) {
        let idle = Duration::from_secs(self.balancer().config.idle_timeout_secs);
        // A shutdown (SIGTERM, or SIGQUIT handing the sockets to a new balancer) closes a
        // kept connection between two requests, as any server may (clients send again on a
        // new one). A new connection's first request is still awaited and answered (with
        // `connection: close`): its client, accepted just as the listener stopped, cannot
        // tell it from a refusal. Pingora's grace period bounds that wait.
        let mut served = false;
        loop {
            if served && *self.shutdown.borrow() {
                break;
            }
            if self.input.is_empty() {
                self.input.reserve(READ_CHUNK);
                let reading = tokio::time::timeout(idle, self.stream.read_buf(&mut self.input));
                let read = if served {
                    tokio::select! {
                        biased;
                        _ = self.shutdown.changed() => break,
                        read = reading => read,
                    }
                } else {
                    reading.await
                };
                if !matches!(read, Ok(Ok(n)) if n > 0) {
                    break;
                }
            }
            let Some(head) = self.read_head().await else {
                break;
            };
            served = true;
            if self.relay_request(head).await == Next::Close {
                break;
            }
        }
        let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, self.stream.shutdown()).await;
    }

    /// Gathers a request's head, within `header_timeout` of its first byte and at most
    /// `max_header_bytes`; `None` when the client left or was refused.
    async fn read_head(&mut self) -> Option<RequestHead> {
        let limits = self.relay.limits;
        let mut deadline = None;
        let mut searched = 0;
        loop {
            if let Some(end) = head_end(&self.input, searched) {
                if end > limits.max_header_bytes {
                    self.refuse(GuardAnswer::TooLarge).await;
                    return None;
                }
                let bytes = self.input.split_to(end).freeze();
                return match RequestHead::parse(bytes.clone()) {
                    Ok(head) => Some(head),
                    Err(_) => {
                        self.input = BytesMut::from(&bytes[..]);
                        self.refuse(GuardAnswer::Unparsable).await;
                        None
                    }
                };
            }
            if self.input.len() > limits.max_header_bytes {
                // A request line that alone fills the limit is a URI too long (as nginx).
                let answer = if self.input.contains(&b'\n') {
                    GuardAnswer::TooLarge
                } else {
                    GuardAnswer::UriTooLong
                };
                self.refuse(answer).await;
                return None;
            }
            searched = self.input.len().saturating_sub(3);
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + limits.header_timeout);
            self.input.reserve(READ_CHUNK);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.input)).await {
                Err(_) => {
                    self.refuse(GuardAnswer::TimedOut).await;
                    return None;
                }
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return None,
            }
        }
    }

    /// Gives up on the request: the guard's answer goes out (with its access line and
    /// count), then the connection closes, lingering a little for the client's last bytes.
    async fn refuse(&mut self, answer: GuardAnswer) {
        let (status, why) = answer.status_and_reason();
        metrics::request_refused(answer.metric_reason());
        log_refusal(
            self.balancer(),
            self.client_addr(),
            &self.input,
            status,
            why,
        );
        let bytes = self.relay.answers.bytes(answer).clone();
        let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, async {
            self.stream.write_all(&bytes).await?;
            self.stream.flush().await
        })
        .await;
        self.linger().await;
    }

    /// Shuts the sending side and reads (and drops) what the client still sends for a
    /// moment, so the answer is not lost to a reset.
    async fn linger(&mut self) {
        let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, self.stream.shutdown()).await;
        let _ = tokio::time::timeout(LINGER, async {
            let mut dropped = 0;
            let mut sink = [0u8; 8192];
            while dropped < LINGER_BYTES {
                match self.stream.read(&mut sink).await {
                    Ok(n) if n > 0 => dropped += n,
                    _ => break,
                }
            }
        })
        .await;
    }

    /// Reads the request's body whole (within `body_timeout` of the head's end, at most
    /// `max_body_bytes`), answering `Expect: 100-continue` first.
    async fn read_body(&mut self, head: &RequestHead) -> Result<Bytes, BodyFault> {
        let limits = self.relay.limits;
        let max = self.balancer().config.max_body_bytes;
        let deadline = Instant::now() + limits.body_timeout;
        match head.framing {
            Framing::None | Framing::UntilClose => Ok(Bytes::new()),
            Framing::Length(length) => {
                let length = usize::try_from(length).unwrap_or(usize::MAX);
                if length > max {
                    return Err(BodyFault::TooLarge);
                }
                if self.input.len() < length {
                    if head.expects_continue {
                        self.continue_body().await?;
                    }
                    self.input.reserve(length - self.input.len());
                }
                while self.input.len() < length {
                    self.read_client(deadline).await?;
                }
                Ok(self.input.split_to(length).freeze())
            }
            Framing::Chunked => {
                if self.input.is_empty() && head.expects_continue {
                    self.continue_body().await?;
                }
                let mut chunked = ChunkedBody::default();
                let mut body = BytesMut::new();
                loop {
                    let used = chunked
                        .advance(&self.input, |data| body.extend_from_slice(data))
                        .map_err(|_| BodyFault::Unparsable)?;
                    self.input.advance(used);
                    if body.len() > max {
                        return Err(BodyFault::TooLarge);
                    }
                    if chunked.is_done() {
                        return Ok(body.freeze());
                    }
                    self.read_client(deadline).await?;
                }
            }
        }
    }

    async fn continue_body(&mut self) -> Result<(), BodyFault> {
        self.stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .map_err(|_| BodyFault::Gone)
    }

    async fn read_client(&mut self, deadline: Instant) -> Result<(), BodyFault> {
        self.input.reserve(READ_CHUNK);
        match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.input)).await {
            Err(_) => Err(BodyFault::TimedOut),
            Ok(Ok(n)) if n > 0 => Ok(()),
            Ok(_) => Err(BodyFault::Gone),
        }
    }

    /// Writes `bytes` to the client; `false` when it went away.
    async fn send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).await.is_ok()
    }

    /// Takes one request to an upstream (or answers it itself) and writes its access line.
    async fn relay_request(&mut self, head: RequestHead) -> Next {
        let balancer = self.relay.balancer.clone();
        let target = origin_form(head.target());
        let path = target.split_once('?').map_or(target, |(path, _)| path);
        let trusted = &balancer.config.trusted_proxies;
        let client = self.peer.as_ref().map(|peer| {
            if trusted.contains(&peer.ip) {
                client_ip(peer.ip, trusted, &head.forwarding_headers())
            } else {
                peer.ip
            }
        });
        let mut trip = Trip {
            balancer: &balancer,
            method: head.method(),
            path: target,
            started: Instant::now(),
            client,
            attempts: 0,
            upstream: None,
        };
        // One branch when there is no limit; a lookup in a preallocated table when there is.
        if let (Some(limiter), Some(ip)) = (&self.relay.limiter, client)
            && let Verdict::Limited { retry_after_secs } = limiter.check(ip)
        {
            metrics::request_refused("rate_limited");
            // The body is not read: the connection closes after the answer.
            let close = head.has_body() || !head.keep_alive;
            let mut seconds = itoa::Buffer::new();
            let extra = ["retry-after: ", seconds.format(retry_after_secs), "\r\n"].concat();
            let detail = "Too many requests: slow down and retry after the Retry-After seconds.";
            return self
                .answer_own(
                    &trip,
                    429,
                    "Too Many Requests",
                    detail,
                    close,
                    Some(&"rate limited"),
                    &extra,
                )
                .await;
        }
        if maybe_local(path) && is_internal(path) {
            let close = head.has_body() || !head.keep_alive;
            return self
                .answer_own(&trip, 404, "Not Found", "Not found.", close, None, "")
                .await;
        }
        if head.method() == "CONNECT" {
            return self
                .answer_own(
                    &trip,
                    405,
                    "Method Not Allowed",
                    "CONNECT is not proxied.",
                    true,
                    None,
                    "",
                )
                .await;
        }
        // The body is read whole before the first attempt (as nginx buffers it), so a
        // retry can send it again.
        let body = match self.read_body(&head).await {
            Ok(body) => body,
            Err(BodyFault::TooLarge) => {
                let detail = "Request body too large.";
                return self
                    .answer_own(&trip, 413, "Payload Too Large", detail, true, None, "")
                    .await;
            }
            Err(BodyFault::TimedOut) => {
                self.input = BytesMut::from(&head.bytes[..]);
                self.refuse(GuardAnswer::TimedOut).await;
                return Next::Close;
            }
            Err(BodyFault::Unparsable) => {
                let detail = "The request body's chunked framing is broken.";
                return self
                    .answer_own(&trip, 400, "Bad Request", detail, true, None, "")
                    .await;
            }
            // The client went away or broke its body: nobody reads an answer.
            Err(BodyFault::Gone) => {
                trip.log(
                    0,
                    false,
                    Some(&"the client went away before its body was in"),
                );
                return Next::Close;
            }
        };

        let mut request = BytesMut::with_capacity(head.bytes.len() + 128);
        let forwarding = Forwarding {
            peer: self.peer.as_ref().map(|p| (p.ip, &p.text[..])),
            client,
            trusted: self.peer.as_ref().is_some_and(|p| trusted.contains(&p.ip)),
        };
        write_upstream_head(&mut request, &head, target, &forwarding, body.len());
        let coalesced = body.len() <= COALESCE_BODY;
        if coalesced {
            request.extend_from_slice(&body);
        }
        let body_apart: &[u8] = if coalesced { &[] } else { &body };
        let head_request = head.method() == "HEAD";
        let idempotent = matches!(
            head.method(),
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
        );

        // The ketama key: the client address's octets (on the stack).
        let mut octets = [0u8; 16];
        let key: &[u8] = match client {
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

        // The attempts, while watching the client: one who leaves ends the request.
        let mut failed: Vec<usize> = Vec::new();
        let mut last_error = None;
        let mut answered = None;
        let client_left = {
            let ClientConnection {
                stream,
                input,
                link,
                relay,
                ..
            } = &mut *self;
            let relay: &Relay = relay;
            let attempts = async {
                while trip.attempts < MAX_ATTEMPTS {
                    let Some(index) = balancer.choose(key, &failed) else {
                        break;
                    };
                    if trip.attempts > 0 {
                        metrics::retry();
                    }
                    trip.attempts += 1;
                    trip.upstream = Some(index);
                    balancer.upstreams.record_request(index);
                    let sent = attempt(
                        relay,
                        link,
                        index,
                        &request,
                        body_apart,
                        head_request,
                        idempotent,
                    );
                    match sent.await {
                        Ok(response) => return Some(response),
                        Err(error) => {
                            let phase = match error {
                                AttemptError::Connect(_) => FailurePhase::Connect,
                                _ => FailurePhase::Proxy,
                            };
                            balancer.upstreams.record_failure(index, phase);
                            failed.push(index);
                            // A request that may have reached the upstream is sent again
                            // only when it is idempotent; one that never connected may go
                            // anywhere.
                            let again = matches!(error, AttemptError::Connect(_)) || idempotent;
                            last_error = Some(error);
                            if !again {
                                break;
                            }
                        }
                    }
                }
                None
            };
            let mut attempts = std::pin::pin!(attempts);
            let mut watching = true;
            loop {
                tokio::select! {
                    biased;
                    result = &mut attempts => {
                        answered = result;
                        break false;
                    }
                    read = stream.read_buf(input), if watching => match read {
                        // Pipelined: the next request waits its turn.
                        Ok(n) if n > 0 => watching = input.len() < relay.limits.max_header_bytes,
                        _ => break true,
                    },
                }
            }
        };
        if client_left {
            // The upstream connection is mid-exchange: not reusable.
            self.link = None;
            trip.log(0, false, Some(&"the client went away before its answer"));
            return Next::Close;
        }

        let Some(response) = answered else {
            let (status, reason, detail) = match &last_error {
                None => (503, "Service Unavailable", "No upstream is available."),
                Some(AttemptError::TimedOut) => (
                    504,
                    "Gateway Timeout",
                    "Gateway timeout: the upstream did not answer in time.",
                ),
                Some(_) => (502, "Bad Gateway", "Bad gateway: the upstream failed."),
            };
            let close = !head.keep_alive;
            let error = last_error
                .as_ref()
                .map(|e| e as &(dyn std::fmt::Display + Sync));
            return self
                .answer_own(&trip, status, reason, detail, close, error, "")
                .await;
        };
        self.relay_answer(&head, response, &trip).await
    }

    /// Relays the upstream's answer, head then body, as it comes; writes the access line.
    async fn relay_answer(
        &mut self,
        head: &RequestHead,
        (response, head_len): (ResponseHead, usize),
        trip: &Trip<'_>,
    ) -> Next {
        let Some(mut link) = self.link.take() else {
            return Next::Close;
        };
        let read_timeout = Duration::from_secs(self.balancer().config.read_timeout_secs);
        // An HTTP/1.0 client cannot take chunks: it gets the data, then the close.
        let dechunk = response.framing == Framing::Chunked && head.http10;
        let keep = head.keep_alive
            && response.framing != Framing::UntilClose
            && !dechunk
            && !*self.shutdown.borrow();
        let connection = match (keep, head.http10) {
            (false, _) => Some("close"),
            (true, true) => Some("keep-alive"),
            (true, false) => None,
        };
        self.output.clear();
        write_client_head(
            &mut self.output,
            &link.input[..head_len],
            response.framing == Framing::Chunked && !dechunk,
            connection,
        );
        link.input.advance(head_len);

        let mut chunked = ChunkedBody::default();
        let mut left = match response.framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        let mut first = true;
        let outcome: Result<(), &'static str> = loop {
            // What the upstream sent so far goes into this write.
            let body_done = match response.framing {
                Framing::None => true,
                Framing::Length(_) => {
                    let take = link
                        .input
                        .len()
                        .min(usize::try_from(left).unwrap_or(usize::MAX));
                    if self.output.is_empty() && take == link.input.len() {
                        // Past the head: the upstream's bytes go out as they are.
                        std::mem::swap(&mut self.output, &mut link.input);
                    } else {
                        self.output.extend_from_slice(&link.input[..take]);
                        link.input.advance(take);
                    }
                    left -= take as u64;
                    left == 0
                }
                Framing::Chunked => {
                    let output = &mut self.output;
                    let used = match chunked.advance(&link.input, |data| {
                        if dechunk {
                            output.extend_from_slice(data);
                        }
                    }) {
                        Ok(used) => used,
                        Err(_) => break Err("the upstream's chunked body is broken"),
                    };
                    if !dechunk {
                        output.extend_from_slice(&link.input[..used]);
                    }
                    link.input.advance(used);
                    chunked.is_done()
                }
                Framing::UntilClose => {
                    if self.output.is_empty() {
                        std::mem::swap(&mut self.output, &mut link.input);
                    } else {
                        self.output.extend_from_slice(&link.input);
                        link.input.clear();
                    }
                    false
                }
            };
            if !self.output.is_empty() {
                let sent = self.stream.write_all(&self.output).await.is_ok();
                self.output.clear();
                if !sent {
                    let status = if first { 0 } else { response.status };
                    trip.log(
                        status,
                        !first,
                        Some(&"the client went away during its answer"),
                    );
                    return Next::Close;
                }
                first = false;
            }
            if body_done {
                break Ok(());
            }
            let room = usize::try_from(left).unwrap_or(usize::MAX);
            match tokio::time::timeout(read_timeout, link.read_more(room)).await {
                Err(_) => break Err("the upstream stopped sending its body"),
                Ok(Ok(0)) if response.framing == Framing::UntilClose => break Ok(()),
                Ok(Ok(0)) => break Err("the upstream closed before its body ended"),
                Ok(Err(_)) => break Err("the upstream broke during its body"),
                Ok(Ok(_)) => {}
            }
        };
        match outcome {
            Ok(()) => {
                trip.log(response.status, true, None);
                if response.keep_alive && link.input.is_empty() {
                    link.idle_since = Instant::now();
                    self.link = Some(link);
                }
                if keep { Next::KeepOpen } else { Next::Close }
            }
            // The answer started: the client can only be told by the connection closing
            // before the body's end.
            Err(why) => {
                trip.log(response.status, true, Some(&why));
                Next::Close
            }
        }
    }

    /// Answers with the balancer's own JSON (with `extra` header lines, each ending in
    /// CRLF) and writes the access line.
    #[allow(clippy::too_many_arguments)]
    async fn answer_own(
        &mut self,
        trip: &Trip<'_>,
        status: u16,
        reason: &str,
        detail: &str,
        close: bool,
        error: Option<&(dyn std::fmt::Display + Sync)>,
        extra: &str,
    ) -> Next {
        let close = close || *self.shutdown.borrow();
        let answer = own_answer(status, reason, detail, close, extra);
        if !self.send(&answer).await {
            trip.log(0, false, Some(&"the client went away before its answer"));
            return Next::Close;
        }
        trip.log(status, false, error.map(|e| e as &dyn std::fmt::Display));
        if close {
            self.linger().await;
            Next::Close
        } else {
            Next::KeepOpen
        }
    }
}

/// One attempt at upstream `index`: the request sent and its answer's head in, within
/// `read_timeout_secs`. A kept connection that turns out closed does not count: an
/// idempotent request goes again on a new connection.
async fn attempt(
    relay: &Relay,
    link: &mut Option<UpstreamLink>,
    index: usize,
    request: &[u8],
    body: &[u8],
    head_request: bool,
    idempotent: bool,
) -> Result<(ResponseHead, usize), AttemptError> {
    let balancer = &relay.balancer;
    let upstream = balancer.upstreams.get(index);
    let config = &balancer.config;
    if link.as_ref().is_some_and(|l| {
        l.index != index || (l.idle_since.elapsed() > CHECK_IDLE_AFTER && !l.still_open())
    }) {
        *link = None;
    }
    let connect_timeout = Duration::from_millis(config.connect_timeout_ms);
    let read_timeout = Duration::from_secs(config.read_timeout_secs);
    let exchange = async {
        let mut resent = false;
        loop {
            let kept = link.is_some();
            let current = match link {
                Some(current) => current,
                None => link.insert(
                    UpstreamLink::connect(index, upstream.addr, connect_timeout)
                        .await
                        .map_err(AttemptError::Connect)?,
                ),
            };
            match current.exchange(request, body, head_request).await {
                Ok(answer) => return Ok(answer),
                Err(LinkFault::BeforeAnswer(_)) if kept && !resent && idempotent => {
                    // The kept connection was closed under it: once more on a new one.
                    *link = None;
                    resent = true;
                }
                Err(LinkFault::BeforeAnswer(error)) => {
                    *link = None;
                    return Err(AttemptError::Broken(error.to_string()));
                }
                Err(LinkFault::Broken(why)) => {
                    *link = None;
                    return Err(AttemptError::Broken(why.to_owned()));
                }
            }
        }
    };
    match tokio::time::timeout(read_timeout, exchange).await {
        Ok(result) => result,
        Err(_) => {
            *link = None;
            Err(AttemptError::TimedOut)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LbConfig;
    use crate::upstream::Upstreams;
    use pingora_load_balancing::LoadBalancer;
    use pingora_load_balancing::selection::Consistent;
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
        let tier = |addrs: &[SocketAddr]| {
            Arc::new(LoadBalancer::<Consistent>::try_from_iter(addrs.iter().copied()).unwrap())
        };
        let balancer = Balancer {
            primaries: tier(&config.primaries),
            backups: tier(&config.backups),
            upstreams: Arc::new(Upstreams::new(
                &config.primaries,
                &[],
                config.max_fails,
                config.fail_timeout(),
            )),
            max_ring_steps: 1000,
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
}
