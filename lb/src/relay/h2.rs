//! HTTP/2 on the HTTPS listener. Each stream of a client's h2 connection is written as an
//! HTTP/1.1 request onto an in-memory connection whose other end a [`ClientConnection`]
//! serves, the same one a plain client gets: so an h2 request meets the same limits, rate
//! limit, reserved paths, ketama choice on the client IP, attempts, failure accounting,
//! retry and access line, and goes to its upstream as HTTP/1.1. Its answer is read back
//! from that connection and sent on the stream.
//!
//! The in-memory connections of one h2 connection are kept between streams (each with the
//! upstream connection it keeps), at most one per stream open at once, so a client's
//! streams reuse upstream connections as a keep-alive HTTP/1.1 client's requests do.

use std::future::poll_fn;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::h2::server::{self, SendResponse};
use ::h2::{RecvStream, SendStream};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Request, Response};
use pingora_core::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::time::Instant;

use super::{ClientConnection, ClientStream, Peer, Relay};
use crate::http1::{
    ChunkedBody, Framing, MAX_HEADERS, head_end, is_hop_by_hop, parse_response_head,
};
use crate::proxy::Protocol;

/// Streams a client may have open at once on one connection.
const MAX_STREAMS: u32 = 128;
/// Room of an in-memory connection, each way.
const PIPE_BYTES: usize = 64 * 1024;
/// Flow-control windows offered to the client: per stream and for the connection.
const STREAM_WINDOW: u32 = 256 * 1024;
const CONNECTION_WINDOW: u32 = 1024 * 1024;
/// The largest answer head read back from the relay.
const MAX_ANSWER_HEAD: usize = 64 * 1024;

/// Serves one HTTP/2 connection until the client closes it, it stays without streams for
/// `idle_timeout_secs`, or the balancer shuts down (then open streams finish first).
pub(super) async fn serve<S: ClientStream + 'static>(
    relay: &Arc<Relay>,
    stream: S,
    peer: Option<Peer>,
    mut shutdown: ShutdownWatch,
) {
    let limits = relay.limits;
    let max_header_list = u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX);
    let handshake = server::Builder::new()
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(max_header_list)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .handshake::<_, Bytes>(stream);
    let Ok(Ok(mut connection)) = tokio::time::timeout(limits.header_timeout, handshake).await
    else {
        return;
    };
    let idle = Duration::from_secs(relay.balancer.config.idle_timeout_secs);
    let pipes = Arc::new(Pipes {
        relay: relay.clone(),
        peer,
        shutdown: shutdown.clone(),
        idle: Mutex::new(Vec::new()),
        keep_for: idle / 2,
    });
    let mut closing = false;
    let mut last_stream = Instant::now();
    loop {
        if !closing && *shutdown.borrow() {
            connection.graceful_shutdown();
            closing = true;
        }
        let accepted = tokio::select! {
            accepted = connection.accept() => accepted,
            changed = shutdown.changed(), if !closing => {
                // A dropped sender (the server is going away) counts as a shutdown.
                if changed.is_err() {
                    connection.graceful_shutdown();
                    closing = true;
                }
                continue;
            }
            _ = tokio::time::sleep_until(last_stream + idle), if !closing => {
                // Idle: no stream began for `idle`, and none is open.
                if Arc::strong_count(&pipes) == 1 {
                    connection.graceful_shutdown();
                    closing = true;
                }
                last_stream = Instant::now();
                continue;
            }
        };
        match accepted {
            Some(Ok((request, respond))) => {
                last_stream = Instant::now();
                let pipes = pipes.clone();
                tokio::spawn(async move { pipes.carry(request, respond).await });
            }
            Some(Err(_)) | None => break,
        }
    }
}

/// The in-memory connections of one h2 connection, and what opens new ones.
struct Pipes {
    relay: Arc<Relay>,
    peer: Option<Peer>,
    shutdown: ShutdownWatch,
    /// Connections between two requests, with when each became idle.
    idle: Mutex<Vec<(DuplexStream, Instant)>>,
    /// How long an idle one is reused (well within the relay's own idle timeout).
    keep_for: Duration,
}

/// How a request's body goes onto its HTTP/1.1 connection.
enum BodyFraming {
    None,
    /// As it comes: the client gave a `content-length`.
    AsIs,
    Chunked,
}

/// Why a stream's exchange stopped before its end.
struct Broken;

impl Pipes {
    /// An idle connection, or a new one served by a [`ClientConnection`] of its own.
    fn take(&self) -> DuplexStream {
        if !*self.shutdown.borrow() {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            while let Some((pipe, since)) = idle.pop() {
                if since.elapsed() < self.keep_for {
                    return pipe;
                }
            }
        }
        let (ours, theirs) = tokio::io::duplex(PIPE_BYTES);
        let (relay, peer, shutdown) =
            (self.relay.clone(), self.peer.clone(), self.shutdown.clone());
        tokio::spawn(async move {
            ClientConnection::new(&relay, theirs, peer, shutdown, Protocol::Http2Tls)
                .serve()
                .await;
        });
        ours
    }

    fn give_back(&self, pipe: DuplexStream) {
        if *self.shutdown.borrow() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_STREAMS as usize {
            idle.push((pipe, Instant::now()));
        }
    }

    /// Carries one stream: its request onto a connection, the answer back.
    async fn carry(&self, request: Request<RecvStream>, mut respond: SendResponse<Bytes>) {
        let (parts, body) = request.into_parts();
        let head_request = parts.method == http::Method::HEAD;
        let (head, framing) = request_head(&parts, body.is_end_stream());
        let pipe = self.take();
        let (reader, writer) = tokio::io::split(pipe);
        let sending = send_request(writer, head, body, framing);
        let answering = answer(reader, &mut respond, head_request);
        let (sent, answered) = tokio::join!(sending, answering);
        // The connection is kept only after a whole exchange that leaves it open.
        if let (Ok(writer), Ok(Some(reader))) = (sent, answered) {
            self.give_back(reader.unsplit(writer));
        }
    }
}

/// The HTTP/1.1 head of an h2 request: `:authority` as `Host`, cookies joined (RFC 9113,
/// 8.2.3), hop-by-hop headers dropped, and how its body will follow.
fn request_head(parts: &http::request::Parts, ends: bool) -> (BytesMut, BodyFraming) {
    let mut head = BytesMut::with_capacity(512);
    head.put_slice(parts.method.as_str().as_bytes());
    head.put_u8(b' ');
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    head.put_slice(target.as_bytes());
    head.put_slice(b" HTTP/1.1\r\n");
    let authority = parts.uri.authority();
    if let Some(authority) = authority {
        head.put_slice(b"host: ");
        head.put_slice(authority.as_str().as_bytes());
        head.put_slice(b"\r\n");
    }
    let mut cookies: Vec<&[u8]> = Vec::new();
    let mut has_length = false;
    for (name, value) in &parts.headers {
        if *name == http::header::COOKIE {
            cookies.push(value.as_bytes());
            continue;
        }
        if is_hop_by_hop(name.as_str()) || (*name == http::header::HOST && authority.is_some()) {
            continue;
        }
        has_length |= *name == http::header::CONTENT_LENGTH;
        head.put_slice(name.as_str().as_bytes());
        head.put_slice(b": ");
        head.put_slice(value.as_bytes());
        head.put_slice(b"\r\n");
    }
    if !cookies.is_empty() {
        head.put_slice(b"cookie: ");
        head.put_slice(&cookies.join(&b"; "[..]));
        head.put_slice(b"\r\n");
    }
    let framing = if ends {
        BodyFraming::None
    } else if has_length {
        BodyFraming::AsIs
    } else {
        head.put_slice(b"transfer-encoding: chunked\r\n");
        BodyFraming::Chunked
    };
    head.put_slice(b"\r\n");
    (head, framing)
}

/// Writes the request head, then its body as the client sends it (releasing flow-control
/// capacity as it goes); the writing half back when all went out.
async fn send_request(
    mut writer: WriteHalf<DuplexStream>,
    head: BytesMut,
    mut body: RecvStream,
    framing: BodyFraming,
) -> Result<WriteHalf<DuplexStream>, Broken> {
    writer.write_all(&head).await.map_err(|_| Broken)?;
    if matches!(framing, BodyFraming::None) {
        return Ok(writer);
    }
    let chunked = matches!(framing, BodyFraming::Chunked);
    while let Some(data) = body.data().await {
        let data = data.map_err(|_| Broken)?;
        let _ = body.flow_control().release_capacity(data.len());
        if data.is_empty() {
            continue;
        }
        if chunked {
            let size = format!("{:x}\r\n", data.len());
            writer
                .write_all(size.as_bytes())
                .await
                .map_err(|_| Broken)?;
        }
        writer.write_all(&data).await.map_err(|_| Broken)?;
        if chunked {
            writer.write_all(b"\r\n").await.map_err(|_| Broken)?;
        }
    }
    if chunked {
        writer.write_all(b"0\r\n\r\n").await.map_err(|_| Broken)?;
    }
    Ok(writer)
}

/// Reads the relay's answer and sends it on the stream: the reading half back when the
/// connection may carry another request (`None`: it closes).
async fn answer(
    mut reader: ReadHalf<DuplexStream>,
    respond: &mut SendResponse<Bytes>,
    head_request: bool,
) -> Result<Option<ReadHalf<DuplexStream>>, Broken> {
    let mut input = BytesMut::with_capacity(8 * 1024);
    // The head, after any interim (1xx) answers, which are dropped; a client that resets
    // the stream meanwhile ends the exchange (the relay logs it as gone).
    let (head, response) = loop {
        let mut searched = 0;
        let end = loop {
            if let Some(end) = head_end(&input, searched) {
                break end;
            }
            if input.len() > MAX_ANSWER_HEAD {
                return Err(Broken);
            }
            searched = input.len().saturating_sub(3);
            tokio::select! {
                read = reader.read_buf(&mut input) => match read {
                    Ok(n) if n > 0 => {}
                    _ => return Err(Broken),
                },
                _ = poll_fn(|cx| respond.poll_reset(cx)) => return Err(Broken),
            }
        };
        let head = input.split_to(end).freeze();
        let Some(parsed) = parse_response_head(&head, head_request) else {
            return Err(Broken);
        };
        if !(100..200).contains(&parsed.status) {
            break (head, parsed);
        }
    };
    let mut send = respond
        .send_response(
            h2_head(&head).ok_or(Broken)?,
            response.framing == Framing::None,
        )
        .map_err(|_| Broken)?;
    let mut chunked = ChunkedBody::default();
    let mut left = match response.framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    if response.framing == Framing::Length(0) {
        send_data(&mut send, Bytes::new(), true).await?;
    }
    let mut done = matches!(response.framing, Framing::None | Framing::Length(0));
    while !done {
        if input.is_empty() {
            match reader.read_buf(&mut input).await {
                Ok(n) if n > 0 => {}
                Ok(_) if response.framing == Framing::UntilClose => {
                    send_data(&mut send, Bytes::new(), true).await?;
                    return Ok(None);
                }
                _ => {
                    send.send_reset(::h2::Reason::INTERNAL_ERROR);
                    return Err(Broken);
                }
            }
        }
        let data = match response.framing {
            Framing::Length(_) => {
                let take = input.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                left -= take as u64;
                done = left == 0;
                input.split_to(take).freeze()
            }
            Framing::Chunked => {
                let mut data = BytesMut::new();
                let used = chunked
                    .advance(&input, |piece| data.extend_from_slice(piece))
                    .map_err(|_| Broken)?;
                input.advance(used);
                done = chunked.is_done();
                data.freeze()
            }
            _ => input.split().freeze(),
        };
        if !data.is_empty() || done {
            send_data(&mut send, data, done).await?;
        }
    }
    let reusable = response.keep_alive && input.is_empty();
    Ok(reusable.then_some(reader))
}

/// The h2 answer head of an HTTP/1.1 one: its status and end-to-end headers.
fn h2_head(head: &[u8]) -> Option<Response<()>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut headers);
    parsed.parse(head).ok()?;
    let mut response = Response::builder().status(parsed.code?);
    for header in parsed.headers.iter() {
        if is_hop_by_hop(header.name) {
            continue;
        }
        let name = HeaderName::from_bytes(header.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(header.value).ok()?;
        response = response.header(name, value);
    }
    response.body(()).ok()
}

/// Sends `data` within the stream's flow-control window, waiting for room as needed.
async fn send_data(send: &mut SendStream<Bytes>, mut data: Bytes, end: bool) -> Result<(), Broken> {
    if data.is_empty() {
        return send.send_data(data, end).map_err(|_| Broken);
    }
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let room = match poll_fn(|cx| send.poll_capacity(cx)).await {
            Some(Ok(room)) => room,
            _ => return Err(Broken),
        };
        if room == 0 {
            continue;
        }
        let piece = data.split_to(room.min(data.len()));
        send.send_data(piece, end && data.is_empty())
            .map_err(|_| Broken)?;
    }
    Ok(())
}
