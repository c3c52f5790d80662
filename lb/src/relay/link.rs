//! The upstream connection a client connection keeps, and one attempt at an upstream over
//! it: the request sent, the answer's head read (interim answers skipped), a kept
//! connection found closed replaced once for an idempotent request.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::http1::{ResponseHead, head_end, parse_response_head};
use crate::proxy::Balancer;
use crate::upstream::Upstream;

/// Room for an upstream's answer head and what follows it in one read: most answers
/// (a product, a page of 50, the compressed 1,000-product list) fit whole. Measured
/// against 16 KiB on the compressed list (about 21 KB) through lb and nginx in turn:
/// lb/nginx 1.25 and 1.06 (br, gzip) against 1.09 and 0.93.
const ANSWER_READ: usize = 32 * 1024;
/// Most room asked for one read of an answer's body.
const MAX_BODY_READ: usize = 64 * 1024;
/// Largest upstream answer head taken; a larger one is a broken upstream (502).
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// A kept upstream connection idle for longer than this is checked before it carries a
/// request: the upstream may have closed it meanwhile.
const CHECK_IDLE_AFTER: Duration = Duration::from_secs(1);

/// An upstream connection kept by a client connection.
pub(super) struct UpstreamLink {
    /// The upstream it is connected to (kept while the connection lives, even when a
    /// reload removed it from the table).
    upstream: Arc<Upstream>,
    stream: TcpStream,
    /// What the upstream sent and was not relayed yet.
    pub(super) input: BytesMut,
    /// When its last answer ended.
    pub(super) idle_since: Instant,
}

impl UpstreamLink {
    async fn connect(upstream: &Arc<Upstream>, timeout: Duration) -> Result<Self, String> {
        let connecting = TcpStream::connect(upstream.addr);
        let stream = match tokio::time::timeout(timeout, connecting).await {
            Err(_) => return Err("connect timed out".to_owned()),
            Ok(Err(error)) => return Err(error.to_string()),
            Ok(Ok(stream)) => stream,
        };
        // Small requests and answers go out at once.
        let _ = stream.set_nodelay(true);
        Ok(UpstreamLink {
            upstream: upstream.clone(),
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
    pub(super) async fn read_more(&mut self, room: usize) -> std::io::Result<usize> {
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
pub(super) enum LinkFault {
    /// Nothing of an answer came (the connection failed or closed): on a kept connection,
    /// it may have been closed before the request arrived.
    BeforeAnswer(std::io::Error),
    /// The answer broke, or was not HTTP.
    Broken(&'static str),
}

/// Why an attempt failed.
pub(super) enum AttemptError {
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

/// One attempt at `upstream`: the request sent and its answer's head in, within
/// `read_timeout_secs`. A kept connection that turns out closed does not count: an
/// idempotent request goes again on a new connection.
pub(super) async fn attempt(
    balancer: &Balancer,
    link: &mut Option<UpstreamLink>,
    upstream: &Arc<Upstream>,
    request: &[u8],
    body: &[u8],
    head_request: bool,
    idempotent: bool,
) -> Result<(ResponseHead, usize), AttemptError> {
    let config = &balancer.config;
    if link.as_ref().is_some_and(|l| {
        !Arc::ptr_eq(&l.upstream, upstream)
            || (l.idle_since.elapsed() > CHECK_IDLE_AFTER && !l.still_open())
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
                    UpstreamLink::connect(upstream, connect_timeout)
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
