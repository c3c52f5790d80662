//! The guard in front of Pingora on every client connection: bounds on open connections
//! (in all, and per client IP), *total* deadlines for a request's head and body, and JSON
//! answers for heads that are too large or do not parse.
//!
//! Pingora times each read on its own, so a client sending a byte every few seconds would
//! hold a connection forever, and it answers a head it cannot parse with a bare 400.
//! [`GuardedApp`] wraps the proxy's [`ServerApp`]: it admits a connection through a
//! [`ConnectionCounter`] (past a bound: a JSON 503 and close) and hands Pingora a
//! [`DeadlineStream`], which gathers each request's head itself and passes it on only once
//! complete (within `header_timeout` of its first byte, at most `max_header_bytes`) and
//! parsable; the body must then be in (by `Content-Length`, or until the answer starts for
//! a chunked one) within `body_timeout`. A client past a limit gets a JSON 408, 431 or 400
//! with `Connection: close` and an access line; Pingora sees a connection that closed.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType,
};
use pingora_core::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::proxy::{AccessLog, AccessRecord};

/// Counts open connections, in all and per client IP. Peers in `exempt` (proxies in front,
/// whose connections carry many clients) count in all but have no per-IP bound.
pub struct ConnectionCounter {
    max_total: usize,
    max_per_ip: usize,
    exempt: Vec<IpAddr>,
    open: Mutex<OpenConnections>,
}

#[derive(Default)]
struct OpenConnections {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

impl ConnectionCounter {
    pub fn new(max_total: usize, max_per_ip: usize, exempt: Vec<IpAddr>) -> Arc<Self> {
        Arc::new(ConnectionCounter {
            max_total,
            max_per_ip,
            exempt,
            open: Mutex::new(OpenConnections::default()),
        })
    }

    /// A slot for one more connection from `ip`, or `None` past a bound.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<ConnectionSlot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.total >= self.max_total {
            return None;
        }
        let bounded = !self.exempt.contains(&ip);
        if bounded {
            let from_ip = open.per_ip.entry(ip).or_insert(0);
            if *from_ip >= self.max_per_ip {
                return None;
            }
            *from_ip += 1;
        }
        open.total += 1;
        Some(ConnectionSlot {
            counter: self.clone(),
            ip: bounded.then_some(ip),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

/// One admitted connection; dropping it frees the slot.
pub struct ConnectionSlot {
    counter: Arc<ConnectionCounter>,
    /// The IP whose count this slot holds (none for an exempt peer).
    ip: Option<IpAddr>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.counter.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(ip) = self.ip
            && let Some(from_ip) = open.per_ip.get_mut(&ip)
        {
            *from_ip -= 1;
            if *from_ip == 0 {
                open.per_ip.remove(&ip);
            }
        }
    }
}

/// The whole answer, closing the connection, of a request the balancer ends itself.
pub fn closing_json_response(status_line: &str, extra_headers: &str, detail: &str) -> Bytes {
    let body = serde_json::json!({ "detail": detail }).to_string();
    Bytes::from(format!(
        "HTTP/1.1 {status_line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n{extra_headers}\r\n{body}",
        body.len()
    ))
}

/// What a client's request must keep to: its head within `header_timeout` of its first byte
/// and at most `max_header_bytes` long, its body within `body_timeout` of the head's end.
#[derive(Clone, Copy, Debug)]
pub struct RequestLimits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_header_bytes: usize,
}

/// The whole answers the guard gives itself, built once.
struct GuardAnswers {
    too_many_connections: Bytes,
    timed_out: Bytes,
    too_large: Bytes,
    uri_too_long: Bytes,
    unparsable: Bytes,
}

impl GuardAnswers {
    fn new() -> Self {
        GuardAnswers {
            too_many_connections: closing_json_response(
                "503 Service Unavailable",
                "retry-after: 1\r\n",
                "Too many connections; try again shortly.",
            ),
            timed_out: closing_json_response(
                "408 Request Timeout",
                "",
                "The request was not received in time.",
            ),
            too_large: closing_json_response(
                "431 Request Header Fields Too Large",
                "",
                "Request header fields too large.",
            ),
            uri_too_long: closing_json_response("414 URI Too Long", "", "Request URI too long."),
            unparsable: closing_json_response(
                "400 Bad Request",
                "",
                "The request could not be parsed as HTTP/1.1.",
            ),
        }
    }
}

/// The proxy's [`ServerApp`] behind connection bounds and request limits.
pub struct GuardedApp<A> {
    inner: Arc<A>,
    counter: Arc<ConnectionCounter>,
    limits: RequestLimits,
    answers: Arc<GuardAnswers>,
    access_log: AccessLog,
}

impl<A> GuardedApp<A> {
    pub fn new(
        inner: A,
        counter: Arc<ConnectionCounter>,
        limits: RequestLimits,
        access_log: AccessLog,
    ) -> Self {
        GuardedApp {
            inner: Arc::new(inner),
            counter,
            limits,
            answers: Arc::new(GuardAnswers::new()),
            access_log,
        }
    }
}

/// How long a refused connection is given to take its 503.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for GuardedApp<A> {
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
                    metrics::counter!("soundwave_lb_connections_refused_total").increment(1);
                    log_guard_answer(self.access_log, Some(ip), &[], 503, "too many connections");
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
        let guarded = DeadlineStream {
            inner: session,
            limits: self.limits,
            phase: Phase::Idle,
            timer: Box::pin(tokio::time::sleep(self.limits.header_timeout)),
            head: Vec::new(),
            answer_started: false,
            answers: self.answers.clone(),
            client: ip,
            access_log: self.access_log,
        };
        let reuse = self.inner.process_new(Box::new(guarded), shutdown).await;
        drop(slot);
        reuse
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

/// The access line of a request the guard answered itself: method and path as far as the
/// head got (`-` otherwise).
fn log_guard_answer(
    access_log: AccessLog,
    client: Option<IpAddr>,
    head: &[u8],
    status: u16,
    why: &str,
) {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut words = line.split(|&b| b == b' ');
    let method = words.next().and_then(|w| std::str::from_utf8(w).ok());
    let path = words.next().and_then(|w| std::str::from_utf8(w).ok());
    access_log(&AccessRecord {
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

/// Where the client's side of a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Between requests (Pingora's keep-alive timeout bounds this).
    Idle,
    /// A request's head is being gathered, not yet shown to Pingora (the header deadline
    /// runs).
    Head,
    /// The complete head (and what came with it, from byte `handed` on) goes to Pingora;
    /// then `next`.
    HandingOver { handed: usize, next: AfterHead },
    /// Its body is coming in: `Some(bytes still due)`, or `None` for a chunked body, which
    /// counts as in until the answer starts (the body deadline runs).
    Body(Option<u64>),
    /// The request is in; the answer is the upstream's business.
    Answering,
    /// The guard answers itself (`written` bytes of `answer` out so far), then closes.
    Refusing { answer: GuardAnswer, written: usize },
    /// Pingora sees the connection closed, the guard's answer having gone out (or not).
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterHead {
    Body(Option<u64>),
    Answering,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GuardAnswer {
    TimedOut,
    TooLarge,
    UriTooLong,
    Unparsable,
}

/// Room asked of the allocator for a head at a time.
const HEAD_READ_CHUNK: usize = 4096;

/// A client connection as Pingora sees it. A request's head is gathered here, bounded in
/// time and size, and handed to Pingora only once complete and parsable; a client who
/// misses a limit gets the guard's JSON answer, and Pingora sees a connection that closed
/// before a request (which it drops without a word).
pub struct DeadlineStream {
    inner: Stream,
    limits: RequestLimits,
    phase: Phase,
    timer: Pin<Box<Sleep>>,
    /// The head being gathered or handed over.
    head: Vec<u8>,
    /// The answer to the current request started (interim 1xx answers aside).
    answer_started: bool,
    answers: Arc<GuardAnswers>,
    client: Option<IpAddr>,
    access_log: AccessLog,
}

impl fmt::Debug for DeadlineStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadlineStream")
            .field("inner", &self.inner)
            .field("phase", &self.phase)
            .finish()
    }
}

impl DeadlineStream {
    fn start_timer(&mut self, limit: Duration) {
        self.timer.as_mut().reset(Instant::now() + limit);
    }

    /// Gives up on the request: the guard's `answer` goes out, then the connection closes.
    fn refuse(&mut self, answer: GuardAnswer) {
        let (status, why, reason) = match answer {
            GuardAnswer::TimedOut => (408, "request not received in time", "timed_out"),
            GuardAnswer::TooLarge => (431, "request head too large", "too_large"),
            GuardAnswer::UriTooLong => (414, "request line too long", "uri_too_long"),
            GuardAnswer::Unparsable => (400, "request head not parsable", "unparsable"),
        };
        metrics::counter!("soundwave_lb_requests_refused_total", "reason" => reason).increment(1);
        log_guard_answer(self.access_log, self.client, &self.head, status, why);
        self.phase = Phase::Refusing { answer, written: 0 };
    }

    /// The head gathered so far is complete at `end`: checked, then handed to Pingora.
    fn head_complete(&mut self, end: usize) {
        if end > self.limits.max_header_bytes {
            return self.refuse(GuardAnswer::TooLarge);
        }
        let Some(framing) = body_framing(&self.head[..end]) else {
            return self.refuse(GuardAnswer::Unparsable);
        };
        let body_read = (self.head.len() - end) as u64;
        let next = match framing {
            BodyFraming::Length(due) if due > body_read => AfterHead::Body(Some(due - body_read)),
            BodyFraming::Chunked => AfterHead::Body(None),
            _ => AfterHead::Answering,
        };
        if matches!(next, AfterHead::Body(_)) {
            self.start_timer(self.limits.body_timeout);
        }
        self.phase = Phase::HandingOver { handed: 0, next };
    }

    /// Reads more of a head from the client; `Ready` once the phase moved on.
    fn poll_gather(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.phase == Phase::Idle {
            // The last request's head was kept for its access line until now.
            self.head.clear();
        }
        loop {
            if self.phase == Phase::Head && self.timer.as_mut().poll(cx).is_ready() {
                self.refuse(GuardAnswer::TimedOut);
                return Poll::Ready(Ok(()));
            }
            let searched = self.head.len().saturating_sub(3);
            self.head.reserve(HEAD_READ_CHUNK);
            let mut room = ReadBuf::uninit(self.head.spare_capacity_mut());
            ready!(Pin::new(&mut self.inner).poll_read(cx, &mut room))?;
            let read = room.filled().len();
            if read == 0 {
                // The client closed before a whole head: Pingora sees a closed connection.
                self.phase = Phase::Closed;
                return Poll::Ready(Ok(()));
            }
            // SAFETY: `poll_read` initialized `read` bytes of the spare capacity.
            unsafe { self.head.set_len(self.head.len() + read) };
            if self.phase == Phase::Idle {
                self.phase = Phase::Head;
                self.answer_started = false;
                self.start_timer(self.limits.header_timeout);
            }
            if let Some(end) = head_end(&self.head, searched) {
                self.head_complete(end);
                return Poll::Ready(Ok(()));
            }
            if self.head.len() > self.limits.max_header_bytes {
                // A request line that alone fills the limit is a URI too long (as nginx).
                let answer = if self.head.contains(&b'\n') {
                    GuardAnswer::TooLarge
                } else {
                    GuardAnswer::UriTooLong
                };
                self.refuse(answer);
                return Poll::Ready(Ok(()));
            }
        }
    }

    /// Writes the guard's answer; `Ready` once it went out or could not.
    fn poll_refusal(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while let Phase::Refusing { answer, written } = self.phase {
            let bytes = match answer {
                GuardAnswer::TimedOut => &self.answers.timed_out,
                GuardAnswer::TooLarge => &self.answers.too_large,
                GuardAnswer::UriTooLong => &self.answers.uri_too_long,
                GuardAnswer::Unparsable => &self.answers.unparsable,
            };
            if written == bytes.len() {
                let _ = ready!(Pin::new(&mut self.inner).poll_flush(cx));
                self.phase = Phase::Closed;
                break;
            }
            match ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[written..])) {
                Ok(n) if n > 0 => {
                    self.phase = Phase::Refusing {
                        answer,
                        written: written + n,
                    }
                }
                _ => self.phase = Phase::Closed,
            }
        }
        Poll::Ready(())
    }

    /// Bytes of the answer went out: the request is over, unless they are an interim
    /// (1xx) answer or the body is still being counted in.
    fn answered(&mut self, bytes: &[u8]) {
        if !self.answer_started && bytes.starts_with(b"HTTP/1.1 1") {
            return;
        }
        self.answer_started = true;
        if matches!(self.phase, Phase::Answering | Phase::Body(None)) {
            self.phase = Phase::Idle;
        }
    }
}

fn timed_out() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "the client did not send its request in time",
    )
}

/// Where the head ends (the index after its blank line), searching from `from`. Bare LF line
/// ends count, as Pingora's parser accepts them.
fn head_end(head: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(pos) = head[i..].iter().position(|&b| b == b'\n') {
        let lf = i + pos;
        match head.get(lf + 1) {
            Some(b'\n') => return Some(lf + 2),
            Some(b'\r') if head.get(lf + 2) == Some(&b'\n') => return Some(lf + 3),
            _ => i = lf + 1,
        }
    }
    None
}

#[derive(Debug, PartialEq, Eq)]
enum BodyFraming {
    None,
    Length(u64),
    Chunked,
}

/// Pingora's bound on the number of request headers.
const MAX_HEADERS: usize = 256;

/// How the request whose complete head this is frames its body; `None` when the head does
/// not parse (as Pingora parses it: httparse, at most `MAX_HEADERS` headers).
fn body_framing(head: &[u8]) -> Option<BodyFraming> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    if !matches!(request.parse(head), Ok(httparse::Status::Complete(_))) {
        return None;
    }
    let mut framing = BodyFraming::None;
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Some(BodyFraming::Chunked);
        }
        if header.name.eq_ignore_ascii_case("content-length") {
            let length = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse().ok());
            framing = length.map_or(BodyFraming::None, BodyFraming::Length);
        }
    }
    Some(framing)
}

impl AsyncRead for DeadlineStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match this.phase {
                Phase::Idle | Phase::Head => ready!(this.poll_gather(cx))?,
                Phase::HandingOver { handed, next } => {
                    let n = buf.remaining().min(this.head.len() - handed);
                    buf.put_slice(&this.head[handed..handed + n]);
                    let handed = handed + n;
                    this.phase = if handed < this.head.len() {
                        Phase::HandingOver { handed, next }
                    } else {
                        match next {
                            AfterHead::Body(due) => Phase::Body(due),
                            AfterHead::Answering => Phase::Answering,
                        }
                    };
                    return Poll::Ready(Ok(()));
                }
                Phase::Body(due) => {
                    if this.timer.as_mut().poll(cx).is_ready() {
                        this.refuse(GuardAnswer::TimedOut);
                        continue;
                    }
                    let before = buf.filled().len();
                    ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
                    let read = (buf.filled().len() - before) as u64;
                    if let Some(due) = due {
                        let left = due.saturating_sub(read);
                        this.phase = match (left, this.answer_started) {
                            (0, true) => Phase::Idle,
                            (0, false) => Phase::Answering,
                            (left, _) => Phase::Body(Some(left)),
                        };
                    }
                    return Poll::Ready(Ok(()));
                }
                Phase::Answering => return Pin::new(&mut this.inner).poll_read(cx, buf),
                Phase::Refusing { .. } => ready!(this.poll_refusal(cx)),
                // A closed connection, as far as Pingora can tell: it ends it silently.
                Phase::Closed => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl AsyncWrite for DeadlineStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if matches!(this.phase, Phase::Refusing { .. } | Phase::Closed) {
            return Poll::Ready(Err(timed_out()));
        }
        let written = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        if written > 0 {
            this.answered(buf);
        }
        Poll::Ready(Ok(written))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if matches!(this.phase, Phase::Refusing { .. } | Phase::Closed) {
            return Poll::Ready(Err(timed_out()));
        }
        let written = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs))?;
        if written > 0 {
            this.answered(bufs.iter().find(|b| !b.is_empty()).map_or(&[], |b| &b[..]));
        }
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for DeadlineStream {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(self.inner.as_mut()).await;
    }
}

impl UniqueID for DeadlineStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for DeadlineStream {
    fn get_ssl(&self) -> Option<&pingora_core::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora_core::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<pingora_core::protocols::ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for DeadlineStream {
    fn get_timing_digest(&self) -> Vec<Option<pingora_core::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for DeadlineStream {
    fn get_proxy_digest(&self) -> Option<Arc<pingora_core::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: pingora_core::protocols::raw_connect::ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for DeadlineStream {
    fn get_socket_digest(&self) -> Option<Arc<pingora_core::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: pingora_core::protocols::SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[async_trait]
impl Peek for DeadlineStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_of_a_head_is_found_across_reads_and_with_bare_line_feeds() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody";
        assert_eq!(head_end(head, 0), Some(head.len() - 4));
        for from in 0..head.len() - 4 {
            let seen = &head[..head.len() - 4];
            assert_eq!(head_end(seen, from.saturating_sub(3)), head_end(seen, 0));
        }
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: a\n\nx", 0), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n", 0), None);
    }

    #[test]
    fn body_framing_follows_content_length_and_chunking() {
        let framing = |head: &str| match body_framing(head.as_bytes()) {
            None => "unparsable".to_owned(),
            Some(BodyFraming::None) => "none".to_owned(),
            Some(BodyFraming::Length(n)) => format!("{n}"),
            Some(BodyFraming::Chunked) => "chunked".to_owned(),
        };
        assert_eq!(framing("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), "none");
        assert_eq!(
            framing("POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n"),
            "12"
        );
        assert_eq!(
            framing("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            "chunked"
        );
        assert_eq!(framing("NOT HTTP\r\n\r\n"), "unparsable");
    }

    #[test]
    fn the_counter_bounds_each_ip_and_the_total_and_frees_slots() {
        let exempt: IpAddr = [127, 0, 0, 9].into();
        let counter = ConnectionCounter::new(3, 2, vec![exempt]);
        let a: IpAddr = [127, 0, 0, 2].into();
        let first = counter.admit(a).expect("first");
        let _second = counter.admit(a).expect("second");
        assert!(counter.admit(a).is_none(), "a third from one IP");
        let _proxy = counter.admit(exempt).expect("the exempt peer");
        assert!(counter.admit(exempt).is_none(), "past the total");
        drop(first);
        let _again = counter.admit(a).expect("a freed slot");
        assert_eq!(counter.open(), 3);
    }
}
