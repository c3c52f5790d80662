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

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use bytes::{Buf, Bytes, BytesMut};
use pingora_core::apps::ServerApp;
use pingora_core::protocols::{Shutdown, Stream};
use pingora_core::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::connection::{ConnectionCounter, GuardAnswer, GuardAnswers, RequestLimits, json_answer};
use crate::http1::{
    ChunkedBody, Forwarding, Framing, RequestHead, ResponseHead, head_end, write_client_head,
    write_upstream_head,
};
use crate::metrics;
use crate::proxy::{Balancer, MAX_ATTEMPTS, Protocol, client_ip, is_internal, maybe_local};
use crate::ratelimit::{RateLimiter, Verdict};
use crate::reload::SharedLimiter;
use crate::upstream::{FailurePhase, Upstream};

mod access;
mod body;
mod h2;
mod link;
#[cfg(test)]
mod tests;

use access::{Trip, log_refusal};
use body::BodyFault;
use link::{AttemptError, UpstreamLink, attempt};

/// Room asked of the allocator for a client's reads at a time.
const READ_CHUNK: usize = 8 * 1024;
/// Bodies up to this size go out in the same write as their head.
const COALESCE_BODY: usize = 16 * 1024;
/// After a refusal, how long the client's remaining bytes are read and dropped, so that
/// closing does not reset the connection before the client read the answer.
const LINGER: Duration = Duration::from_millis(500);
/// How many of the client's remaining bytes are read then, at most.
const LINGER_BYTES: usize = 1024 * 1024;

/// The balancer's connection handler: admits a client connection (bounds on open
/// connections in all and per IP, else a JSON 503) and relays its requests. On the HTTPS
/// listener it first completes the TLS handshake, and serves HTTP/2 when ALPN chose it
/// (`h2.rs`: each stream carried through this same relay).
pub struct Relay {
    balancer: Arc<Balancer>,
    counter: Arc<ConnectionCounter>,
    limits: RequestLimits,
    answers: GuardAnswers,
    /// Per client IP requests per second; `None` when `rate_limit_per_sec` is 0. Replaced
    /// whole by a reload that changes the limit; shared by the plain and the HTTPS listener.
    limiter: SharedLimiter,
    /// The HTTPS listener's TLS; `None` on the plain listener.
    tls: Option<TlsAcceptor>,
}

impl Relay {
    pub fn new(balancer: Balancer, counter: Arc<ConnectionCounter>, limits: RequestLimits) -> Self {
        let limiter = RateLimiter::new(
            balancer.config.rate_limit_per_sec,
            balancer.config.rate_limit_burst,
        );
        let limiter = Arc::new(ArcSwapOption::from(limiter.map(Arc::new)));
        Relay {
            balancer: Arc::new(balancer),
            counter,
            limits,
            answers: GuardAnswers::new(),
            limiter,
            tls: None,
        }
    }

    /// The relay of the HTTPS listener: the same balancer, connection bounds and rate
    /// limits as this one, behind `acceptor`'s handshake.
    pub fn over_tls(&self, acceptor: TlsAcceptor) -> Self {
        Relay {
            balancer: self.balancer.clone(),
            counter: self.counter.clone(),
            limits: self.limits,
            answers: GuardAnswers::new(),
            limiter: self.limiter.clone(),
            tls: Some(acceptor),
        }
    }

    /// The rate limiter this relay consults, for a reload to replace.
    pub fn limiter(&self) -> SharedLimiter {
        self.limiter.clone()
    }
}

/// What a client connection can be read from and written to: a TCP stream, TLS over one,
/// or (for an HTTP/2 stream) the relay's end of an in-memory connection.
trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send> ClientStream for S {}

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
                    let protocol = if self.tls.is_some() {
                        Protocol::Tls
                    } else {
                        Protocol::Http1
                    };
                    let why = "too many connections";
                    log_refusal(&self.balancer, Some(ip), protocol, &[], 503, why);
                    // Before a handshake, a TLS client could not read a plain answer.
                    if self.tls.is_none() {
                        let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, async {
                            session
                                .write_all(&self.answers.too_many_connections)
                                .await?;
                            session.flush().await
                        })
                        .await;
                    }
                    Shutdown::shutdown(session.as_mut()).await;
                    return None;
                }
            },
            None => None,
        };
        let peer = ip.map(|ip| Peer {
            ip,
            text: Bytes::from(ip.to_string()),
        });
        match &self.tls {
            None => {
                ClientConnection::new(self, session, peer, shutdown.clone(), Protocol::Http1)
                    .serve()
                    .await;
            }
            Some(acceptor) => {
                // The handshake is bounded as a request head is.
                let handshake =
                    tokio::time::timeout(self.limits.header_timeout, acceptor.accept(session));
                if let Ok(Ok(tls)) = handshake.await {
                    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                        h2::serve(self, tls, peer, shutdown.clone()).await;
                    } else {
                        let protocol = Protocol::Http1Tls;
                        ClientConnection::new(self, tls, peer, shutdown.clone(), protocol)
                            .serve()
                            .await;
                    }
                }
            }
        }
        drop(slot);
        None
    }
}

/// A client connection's TCP peer, with its address's text made once.
#[derive(Clone)]
struct Peer {
    ip: IpAddr,
    text: Bytes,
}

/// One client connection and the upstream connection it keeps.
struct ClientConnection<'a, S> {
    relay: &'a Relay,
    stream: S,
    protocol: Protocol,
    /// What the client sent and was not used yet.
    input: BytesMut,
    /// Bytes being put together for a write.
    output: BytesMut,
    peer: Option<Peer>,
    link: Option<UpstreamLink>,
    shutdown: ShutdownWatch,
}

/// A JSON answer of the balancer's own to a request, never cached; `extra` is more header
/// lines, each ending in CRLF.
fn own_answer(status: u16, reason: &str, detail: &str, close: bool, extra: &str) -> Bytes {
    let headers = format!("cache-control: no-store\r\n{extra}");
    json_answer(&format!("{status} {reason}"), &headers, detail, close)
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

impl<'a, S: ClientStream> ClientConnection<'a, S> {
    fn new(
        relay: &'a Relay,
        stream: S,
        peer: Option<Peer>,
        shutdown: ShutdownWatch,
        protocol: Protocol,
    ) -> Self {
        ClientConnection {
            relay,
            stream,
            protocol,
            input: BytesMut::with_capacity(READ_CHUNK),
            output: BytesMut::with_capacity(READ_CHUNK),
            peer,
            link: None,
            shutdown,
        }
    }

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
            self.protocol,
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
            protocol: self.protocol,
            attempts: 0,
            upstream: None,
        };
        // One branch when there is no limit; a lookup in a preallocated table when there is.
        let limiter = self.relay.limiter.load();
        if let (Some(limiter), Some(ip)) = (&*limiter, client)
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
            tls: self.protocol.is_tls(),
        };
        write_upstream_head(&mut request, &head, target, &forwarding, body.len());
        let coalesced = body.len() <= COALESCE_BODY;
        if coalesced {
            request.extend_from_slice(&body);
        }
        let body_apart: &[u8] = if coalesced { &[] } else { &body };
        let head_request = head.method() == "HEAD";
        // RFC 9110's idempotent methods, as the http crate lists them.
        let idempotent = http::Method::from_bytes(head.method().as_bytes())
            .is_ok_and(|method| method.is_idempotent());

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
        let mut failed: Vec<Arc<Upstream>> = Vec::new();
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
                    let Some(upstream) = balancer.choose(key, &failed) else {
                        break;
                    };
                    if trip.attempts > 0 {
                        metrics::retry();
                    }
                    trip.attempts += 1;
                    trip.upstream = Some(upstream.clone());
                    balancer.upstreams.record_request(&upstream);
                    let sent = attempt(
                        &balancer,
                        link,
                        &upstream,
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
                            balancer.upstreams.record_failure(&upstream, phase);
                            failed.push(upstream);
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
