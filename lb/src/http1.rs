//! The balancer's HTTP/1.1 wire work: a request head parsed once (httparse) into what the
//! relay needs and rewritten for the upstream in one buffer, a response head parsed and
//! rewritten for the client, and chunked bodies decoded (requests, which are buffered) or
//! delimited in passing (responses, which are streamed as they came).

use std::net::IpAddr;
use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};
use http::HeaderMap;

/// Bound on the headers of a request (as Pingora's parser) and of an upstream's answer.
pub const MAX_HEADERS: usize = 256;

/// Where a head ends (the index after its blank line), searching from `from`. Bare LF line
/// ends count, as httparse accepts them.
pub fn head_end(head: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(pos) = memchr::memchr(b'\n', &head[i..]) {
        let lf = i + pos;
        match head.get(lf + 1) {
            Some(b'\n') => return Some(lf + 2),
            Some(b'\r') if head.get(lf + 2) == Some(&b'\n') => return Some(lf + 3),
            _ => i = lf + 1,
        }
    }
    None
}

/// How a message frames its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the connection closes (answers only).
    UntilClose,
}

/// Headers that belong to one hop and are never passed on (RFC 9110, 7.6.1), with
/// `Expect` (the balancer reads bodies whole itself).
pub(crate) fn is_hop_by_hop(name: &str) -> bool {
    const NAMES: [&str; 8] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
    ];
    NAMES.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// Does a comma-separated header value hold `token` (case-insensitive)?
fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// What a message's headers say about its body and its connection.
#[derive(Debug, Default)]
struct FramingHeaders {
    length: Option<u64>,
    /// Whether the last transfer coding is `chunked`, when there is one.
    chunked_last: Option<bool>,
    /// `Connection: close`.
    close: bool,
    /// `Connection: keep-alive`.
    keep_alive: bool,
    /// `Expect: 100-continue`.
    expects_continue: bool,
}

impl FramingHeaders {
    /// `None` when a `Content-Length` does not parse or two disagree.
    fn read(headers: &[httparse::Header<'_>]) -> Option<FramingHeaders> {
        let mut said = FramingHeaders::default();
        for header in headers {
            let name = header.name;
            if name.eq_ignore_ascii_case("content-length") {
                let value = std::str::from_utf8(header.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())?;
                if said.length.is_some_and(|l| l != value) {
                    return None;
                }
                said.length = Some(value);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                let last = header.value.rsplit(|&b| b == b',').next().unwrap_or(b"");
                said.chunked_last = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            } else if name.eq_ignore_ascii_case("connection") {
                said.close |= has_token(header.value, "close");
                said.keep_alive |= has_token(header.value, "keep-alive");
            } else if name.eq_ignore_ascii_case("expect") {
                said.expects_continue |= has_token(header.value, "100-continue");
            }
        }
        Some(said)
    }
}

/// A request head that parsed: ranges into its bytes, and what its headers say.
#[derive(Debug)]
pub struct RequestHead {
    /// The head's bytes, blank line included.
    pub bytes: Bytes,
    method: Range<usize>,
    target: Range<usize>,
    /// HTTP/1.0 (`false`: 1.1).
    pub http10: bool,
    pub framing: Framing,
    /// The client keeps the connection open after this exchange.
    pub keep_alive: bool,
    pub expects_continue: bool,
}

/// Why a request head was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadError {
    /// Not HTTP/1.x, or its framing headers contradict each other.
    Unparsable,
}

impl RequestHead {
    /// Parses the complete head `bytes` (ending with its blank line).
    pub fn parse(bytes: Bytes) -> Result<RequestHead, HeadError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&bytes) {
            Ok(httparse::Status::Complete(_)) => {}
            _ => return Err(HeadError::Unparsable),
        }
        let base = bytes.as_ptr() as usize;
        let range_of = |s: &str| {
            let start = s.as_ptr() as usize - base;
            start..start + s.len()
        };
        let (Some(method), Some(target), Some(version)) =
            (request.method, request.path, request.version)
        else {
            return Err(HeadError::Unparsable);
        };
        let http10 = version == 0;
        let said = FramingHeaders::read(request.headers).ok_or(HeadError::Unparsable)?;
        let framing = match (said.chunked_last, said.length) {
            // Only `chunked`, last (RFC 9112, 6.3): anything else cannot be framed; and
            // chunks beside a length are a smuggling attempt or a broken client.
            (Some(false), _) | (Some(true), Some(_)) => return Err(HeadError::Unparsable),
            (Some(true), None) if http10 => return Err(HeadError::Unparsable),
            (Some(true), None) => Framing::Chunked,
            (None, None) => Framing::None,
            (None, Some(n)) => Framing::Length(n),
        };
        Ok(RequestHead {
            method: range_of(method),
            target: range_of(target),
            http10,
            framing,
            keep_alive: !said.close && (!http10 || said.keep_alive),
            expects_continue: said.expects_continue && !http10,
            bytes,
        })
    }

    pub fn method(&self) -> &str {
        // httparse checked that the method is a token (ASCII).
        std::str::from_utf8(&self.bytes[self.method.clone()]).unwrap_or("-")
    }

    /// The request target (path and query) as sent.
    pub fn target(&self) -> &str {
        std::str::from_utf8(&self.bytes[self.target.clone()]).unwrap_or("/")
    }

    /// The request has a body, or says it has an empty one.
    pub fn has_body(&self) -> bool {
        self.framing != Framing::None
    }

    /// The `X-Forwarded-For` and `X-Real-IP` headers only, for `client_ip` when the peer
    /// is a trusted proxy.
    pub fn forwarding_headers(&self) -> HeaderMap {
        let mut map = HeaderMap::new();
        self.each_header(|name, value| {
            if (name.eq_ignore_ascii_case("x-forwarded-for")
                || name.eq_ignore_ascii_case("x-real-ip"))
                && let (Ok(name), Ok(value)) = (
                    http::HeaderName::from_bytes(name.as_bytes()),
                    http::HeaderValue::from_bytes(value),
                )
            {
                map.append(name, value);
            }
        });
        map
    }

    fn each_header(&self, mut each: impl FnMut(&str, &[u8])) {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        // The head parsed in `parse`; it parses the same way again.
        if request.parse(&self.bytes).is_ok() {
            for header in request.headers.iter() {
                each(header.name, header.value);
            }
        }
    }
}

/// Who sent the request, for the forwarding headers.
pub struct Forwarding<'a> {
    /// The TCP peer and its address's text (`None`: a Unix socket, no headers set).
    pub peer: Option<(IpAddr, &'a [u8])>,
    /// The client, as `client_ip` found it.
    pub client: Option<IpAddr>,
    /// The peer is a trusted proxy (its `X-Forwarded-Proto: https` is believed).
    pub trusted: bool,
    /// The client came over TLS: `X-Forwarded-Proto: https` whatever it said.
    pub tls: bool,
}

/// Writes the upstream's request head into `out`: the request line (with `target`) as
/// HTTP/1.1, the client's headers less the hop-by-hop and forwarding ones, `X-Real-IP`,
/// `X-Forwarded-For` (the earlier entries and the peer), `X-Forwarded-Proto`, and the
/// body's `Content-Length`.
pub fn write_upstream_head(
    out: &mut BytesMut,
    head: &RequestHead,
    target: &str,
    forwarding: &Forwarding<'_>,
    body_len: usize,
) {
    out.put_slice(head.method().as_bytes());
    out.put_u8(b' ');
    out.put_slice(target.as_bytes());
    out.put_slice(b" HTTP/1.1\r\n");
    let mut earlier_forwarded: Vec<&[u8]> = Vec::new();
    let mut forwarded_https = false;
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    if request.parse(&head.bytes).is_ok() {
        for header in request.headers.iter() {
            let name = header.name;
            if name.eq_ignore_ascii_case("x-forwarded-for") {
                let value = header.value.trim_ascii();
                if !value.is_empty() && std::str::from_utf8(value).is_ok() {
                    earlier_forwarded.push(value);
                }
                continue;
            }
            if name.eq_ignore_ascii_case("x-forwarded-proto") {
                forwarded_https |= header.value == b"https";
                continue;
            }
            if name.eq_ignore_ascii_case("x-real-ip")
                || name.eq_ignore_ascii_case("content-length")
                || is_hop_by_hop(name)
            {
                continue;
            }
            out.put_slice(name.as_bytes());
            out.put_slice(b": ");
            out.put_slice(header.value);
            out.put_slice(b"\r\n");
        }
    }
    if let Some((peer, peer_text)) = forwarding.peer {
        out.put_slice(b"x-real-ip: ");
        match forwarding.client {
            Some(client) if client != peer => out.put_slice(client.to_string().as_bytes()),
            _ => out.put_slice(peer_text),
        }
        out.put_slice(b"\r\nx-forwarded-for: ");
        for earlier in earlier_forwarded {
            out.put_slice(earlier);
            out.put_slice(b", ");
        }
        out.put_slice(peer_text);
        let proto: &[u8] = if forwarding.tls || (forwarding.trusted && forwarded_https) {
            b"https"
        } else {
            b"http"
        };
        out.put_slice(b"\r\nx-forwarded-proto: ");
        out.put_slice(proto);
        out.put_slice(b"\r\n");
    }
    if head.has_body() || body_len > 0 {
        out.put_slice(b"content-length: ");
        out.put_slice(itoa::Buffer::new().format(body_len).as_bytes());
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
}

/// An upstream's response head, parsed.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: u16,
    pub framing: Framing,
    /// The upstream keeps the connection open after this answer.
    pub keep_alive: bool,
}

/// Parses the complete response head `bytes` to a request whose method was HEAD or not;
/// `None` when it does not parse.
pub fn parse_response_head(bytes: &[u8], head_request: bool) -> Option<ResponseHead> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    if !matches!(response.parse(bytes), Ok(httparse::Status::Complete(_))) {
        return None;
    }
    let status = response.code?;
    let http10 = response.version? == 0;
    let said = FramingHeaders::read(response.headers)?;
    let framing = if head_request || status < 200 || status == 204 || status == 304 {
        Framing::None
    } else {
        match (said.chunked_last, said.length) {
            (Some(true), _) => Framing::Chunked,
            // Another coding last: the body runs until the connection closes.
            (Some(false), _) | (None, None) => Framing::UntilClose,
            (None, Some(0)) => Framing::None,
            (None, Some(n)) => Framing::Length(n),
        }
    };
    Some(ResponseHead {
        status,
        framing,
        keep_alive: !said.close && (!http10 || said.keep_alive) && framing != Framing::UntilClose,
    })
}

/// Writes the client's response head into `out`: the upstream's status line as HTTP/1.1
/// and its headers less the hop-by-hop ones (`Transfer-Encoding` kept, and any
/// `Content-Length` dropped, when `chunked` is passed through as it came), then
/// `Connection: close` when the client's connection ends after this answer (or
/// `keep-alive` for an HTTP/1.0 client that keeps it).
pub fn write_client_head(
    out: &mut BytesMut,
    upstream_head: &[u8],
    pass_chunked: bool,
    connection: Option<&'static str>,
) {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    if response.parse(upstream_head).is_err() {
        return;
    }
    let status = response.code.unwrap_or(502);
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(itoa::Buffer::new().format(status).as_bytes());
    out.put_u8(b' ');
    out.put_slice(response.reason.unwrap_or("").as_bytes());
    out.put_slice(b"\r\n");
    for header in response.headers.iter() {
        let name = header.name;
        let keep = if name.eq_ignore_ascii_case("transfer-encoding") {
            pass_chunked
        } else if name.eq_ignore_ascii_case("content-length") {
            // Chunks frame the body: a length beside them would contradict them.
            !pass_chunked
        } else {
            !is_hop_by_hop(name)
        };
        if keep {
            out.put_slice(name.as_bytes());
            out.put_slice(b": ");
            out.put_slice(header.value);
            out.put_slice(b"\r\n");
        }
    }
    if let Some(connection) = connection {
        out.put_slice(b"connection: ");
        out.put_slice(connection.as_bytes());
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
}

/// Where a chunked body's framing is, as its bytes go by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// In a chunk-size line (hex digits, then extensions, to LF).
    Size {
        size: u64,
        digits: u8,
        in_extension: bool,
    },
    /// `left` bytes of chunk data, then its CRLF.
    Data {
        left: u64,
    },
    /// The CRLF after chunk data.
    DataEnd {
        seen_cr: bool,
    },
    /// Trailer lines after the last chunk; `empty_line`: the current line has no bytes yet.
    Trailer {
        empty_line: bool,
    },
    Done,
}

/// Why a chunked body cannot be read.
#[derive(Debug, PartialEq, Eq)]
pub struct ChunkError;

/// A chunked body's framing, followed byte by byte: it tells where the body ends and which
/// bytes are data (for a body that is decoded).
#[derive(Debug)]
pub struct ChunkedBody {
    state: ChunkState,
}

impl Default for ChunkedBody {
    fn default() -> Self {
        ChunkedBody {
            state: ChunkState::Size {
                size: 0,
                digits: 0,
                in_extension: false,
            },
        }
    }
}

impl ChunkedBody {
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Follows `input` from its start; returns how many of its bytes belong to the body
    /// (all of them, or up to the body's end), and gives each run of data to `data`.
    pub fn advance(
        &mut self,
        input: &[u8],
        mut data: impl FnMut(&[u8]),
    ) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            match &mut self.state {
                ChunkState::Done => break,
                ChunkState::Data { left } => {
                    let take = usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .min(input.len() - i);
                    data(&input[i..i + take]);
                    i += take;
                    *left -= take as u64;
                    if *left == 0 {
                        self.state = ChunkState::DataEnd { seen_cr: false };
                    }
                }
                ChunkState::Size {
                    size,
                    digits,
                    in_extension,
                } => {
                    let b = input[i];
                    i += 1;
                    match b {
                        b'\n' => {
                            if *digits == 0 {
                                return Err(ChunkError);
                            }
                            self.state = if *size == 0 {
                                ChunkState::Trailer { empty_line: true }
                            } else {
                                ChunkState::Data { left: *size }
                            };
                        }
                        _ if *in_extension => {}
                        b';' | b' ' | b'\t' | b'\r' => *in_extension = true,
                        _ => {
                            let digit = (b as char).to_digit(16).ok_or(ChunkError)?;
                            // 15 hex digits: far past any body the balancer takes.
                            if *digits >= 15 {
                                return Err(ChunkError);
                            }
                            *size = *size * 16 + u64::from(digit);
                            *digits += 1;
                        }
                    }
                }
                ChunkState::DataEnd { seen_cr } => {
                    let b = input[i];
                    i += 1;
                    match (b, *seen_cr) {
                        (b'\r', false) => *seen_cr = true,
                        (b'\n', _) => {
                            self.state = ChunkState::Size {
                                size: 0,
                                digits: 0,
                                in_extension: false,
                            }
                        }
                        _ => return Err(ChunkError),
                    }
                }
                ChunkState::Trailer { empty_line } => {
                    let b = input[i];
                    i += 1;
                    match b {
                        b'\n' if *empty_line => self.state = ChunkState::Done,
                        b'\n' => *empty_line = true,
                        b'\r' => {}
                        _ => *empty_line = false,
                    }
                }
            }
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(head: &str) -> Result<RequestHead, HeadError> {
        RequestHead::parse(Bytes::copy_from_slice(head.as_bytes()))
    }

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
    fn request_framing_follows_content_length_and_chunking() {
        let framing = |head: &str| parse(head).map(|h| h.framing);
        assert_eq!(
            framing("GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            Ok(Framing::None)
        );
        assert_eq!(
            framing("POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n"),
            Ok(Framing::Length(12))
        );
        assert_eq!(
            framing("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Ok(Framing::Chunked)
        );
        for refused in [
            "NOT HTTP\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        ] {
            assert_eq!(framing(refused), Err(HeadError::Unparsable), "{refused}");
        }
    }

    #[test]
    fn keep_alive_follows_the_version_and_the_connection_header() {
        let keep = |head: &str| parse(head).unwrap().keep_alive;
        assert!(keep("GET / HTTP/1.1\r\n\r\n"));
        assert!(!keep("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n"));
        assert!(!keep("GET / HTTP/1.0\r\n\r\n"));
        assert!(keep("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
    }

    #[test]
    fn the_upstream_head_drops_hop_by_hop_headers_and_sets_the_forwarding_ones() {
        let head = parse(
            "POST /a?b=1 HTTP/1.1\r\nHost: shop\r\nConnection: keep-alive\r\n\
             X-Forwarded-For: 1.2.3.4\r\nX-Real-IP: 6.6.6.6\r\nX-Forwarded-Proto: https\r\n\
             Transfer-Encoding: chunked\r\nExpect: 100-continue\r\nAccept: */*\r\n\r\n",
        )
        .unwrap();
        let peer: IpAddr = "127.0.0.5".parse().unwrap();
        let mut out = BytesMut::new();
        let forwarding = Forwarding {
            peer: Some((peer, b"127.0.0.5")),
            client: Some(peer),
            trusted: false,
            tls: false,
        };
        write_upstream_head(&mut out, &head, head.target(), &forwarding, 3);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "POST /a?b=1 HTTP/1.1\r\nHost: shop\r\nAccept: */*\r\nx-real-ip: 127.0.0.5\r\n\
             x-forwarded-for: 1.2.3.4, 127.0.0.5\r\nx-forwarded-proto: http\r\n\
             content-length: 3\r\n\r\n"
        );
        // From the HTTPS listener: https, whatever the client said.
        let plain_claim = parse("GET / HTTP/1.1\r\nX-Forwarded-Proto: http\r\n\r\n").unwrap();
        let mut out = BytesMut::new();
        let over_tls = Forwarding {
            tls: true,
            ..forwarding
        };
        write_upstream_head(&mut out, &plain_claim, "/", &over_tls, 0);
        let text = std::str::from_utf8(&out).unwrap();
        assert!(text.contains("\r\nx-forwarded-proto: https\r\n"), "{text}");
        assert!(!text.contains(": http\r\n"), "{text}");
    }

    #[test]
    fn response_framing_and_keep_alive() {
        let head = |text: &str, head_request| parse_response_head(text.as_bytes(), head_request);
        let ok = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false).unwrap();
        assert_eq!((ok.framing, ok.keep_alive), (Framing::Length(5), true));
        let ok = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true).unwrap();
        assert_eq!(ok.framing, Framing::None);
        let chunked = head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        );
        assert_eq!(chunked.unwrap().framing, Framing::Chunked);
        let until_close = head("HTTP/1.1 200 OK\r\n\r\n", false).unwrap();
        assert_eq!(
            (until_close.framing, until_close.keep_alive),
            (Framing::UntilClose, false)
        );
        let closing = head(
            "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n",
            false,
        );
        assert!(!closing.unwrap().keep_alive);
        assert!(head("HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", false).is_none());
    }

    #[test]
    fn the_client_head_keeps_the_status_and_end_to_end_headers() {
        let mut out = BytesMut::new();
        write_client_head(
            &mut out,
            b"HTTP/1.1 404 Not Found\r\nContent-Type: a/b\r\nConnection: keep-alive\r\n\
              Keep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\n\r\n",
            true,
            Some("close"),
        );
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "HTTP/1.1 404 Not Found\r\nContent-Type: a/b\r\nTransfer-Encoding: chunked\r\n\
             connection: close\r\n\r\n"
        );
    }

    #[test]
    fn chunked_bodies_are_decoded_and_delimited_in_any_pieces() {
        let body = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        let end = body.len() - 4;
        for split in 0..=end {
            let mut chunked = ChunkedBody::default();
            let mut data = Vec::new();
            let first = chunked
                .advance(&body[..split], |d| data.extend_from_slice(d))
                .unwrap();
            assert_eq!(first, split);
            let second = chunked
                .advance(&body[split..], |d| data.extend_from_slice(d))
                .unwrap();
            assert!(chunked.is_done());
            assert_eq!(split + second, end, "the body ends before NEXT");
            assert_eq!(data, b"hello world");
        }
        let mut chunked = ChunkedBody::default();
        assert_eq!(
            chunked.advance(body, |_| {}),
            Ok(end),
            "bytes past the end are left"
        );
        let mut chunked = ChunkedBody::default();
        assert_eq!(chunked.advance(b"zz\r\n", |_| {}), Err(ChunkError));
        let mut chunked = ChunkedBody::default();
        assert_eq!(chunked.advance(b"1\r\nab", |_| {}), Err(ChunkError));
    }
}
