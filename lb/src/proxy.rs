//! The proxy logic ([`ProxyHttp`]): local answers (`/_lb/status`, refused internal paths,
//! oversized headers), upstream choice (ketama on the client IP over the available primaries,
//! then the backups), forwarding headers, the retry policy, failure accounting and the access
//! log line.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderValue, Method};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorSource, ErrorType};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_load_balancing::LoadBalancer;
use pingora_load_balancing::selection::Consistent;
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::config::LbConfig;
use crate::metrics;
use crate::upstream::{FailurePhase, Role, Upstreams};

/// A request is sent to at most this many upstreams (the first try and one retry).
pub const MAX_ATTEMPTS: u8 = 2;

/// Path prefixes that belong to the cluster itself and are never forwarded.
pub const RESERVED_PREFIXES: [&str; 2] = ["_internal", "_cluster"];
/// Operator endpoints (the balancer's `/_lb/status`, a node's `/metrics`): never forwarded
/// and never answered on the public port (404). The balancer's are served on its
/// operator listener (`metrics_listen`) instead.
pub const OPERATOR_PREFIXES: [&str; 2] = ["_lb", "metrics"];

/// The balancer: two pingora load balancers (primaries, backups) over one upstream table.
#[derive(Clone)]
pub struct Balancer {
    pub primaries: Arc<LoadBalancer<Consistent>>,
    pub backups: Arc<LoadBalancer<Consistent>>,
    pub upstreams: Arc<Upstreams>,
    pub config: Arc<LbConfig>,
    /// Bound on ring steps of one selection (every point of the largest ring).
    pub max_ring_steps: usize,
    pub access_log: AccessLog,
}

/// One finished request, as the access log line tells it.
pub struct AccessRecord<'a> {
    pub method: &'a str,
    /// Path and query, as the client sent them.
    pub path: &'a str,
    /// 0: no response was written (the client went away).
    pub status: u16,
    pub client: Option<IpAddr>,
    /// Label of the upstream that answered; `-` when the balancer answered itself.
    pub upstream: &'a str,
    pub attempts: u8,
    pub latency_us: u64,
    /// Why the request failed, when it did.
    pub error: Option<&'a dyn std::fmt::Display>,
}

/// Where the access line of each request goes. `soundwave lb` passes a writer that asks
/// the log filter (target `soundwave::lb::access`, level info) and formats the line
/// straight into the process's buffered log, as the node's access line is written.
pub type AccessLog = fn(&AccessRecord<'_>);

/// What one request learns on its way through the balancer.
pub struct RequestCtx {
    started: Instant,
    peer: Option<IpAddr>,
    peer_trusted: bool,
    client: Option<IpAddr>,
    attempts: u8,
    /// The upstream of the current (last) attempt.
    upstream: Option<usize>,
    /// Upstreams that failed this request: not chosen again for it.
    failed: Vec<usize>,
    /// Status of a response the balancer wrote itself.
    local_status: Option<u16>,
}

fn json_detail(detail: &str) -> Bytes {
    Bytes::from(serde_json::json!({ "detail": detail }).to_string())
}

/// Writes a complete JSON response from the balancer.
async fn respond_json(session: &mut Session, status: u16, body: Bytes) -> pingora_core::Result<()> {
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    if status == 405 {
        resp.insert_header(http::header::ALLOW, "GET, HEAD")?;
    }
    if !session.is_body_empty() {
        // Do not leave an unread request body in front of the next request.
        session.set_keepalive(None);
    }
    let head_only = session.req_header().method == Method::HEAD;
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// Percent-decodes a path (bytes that do not decode are kept as they are).
fn percent_decode(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-decodes until nothing changes (at most a few rounds): `%252F` is `/` to a
/// server that decodes twice.
fn percent_decode_fully(path: &str) -> String {
    let mut decoded = path.to_owned();
    for _ in 0..4 {
        let next = percent_decode(&decoded);
        if next == decoded {
            break;
        }
        decoded = next;
    }
    decoded
}

/// The first segment of a path after percent-decoding (repeatedly), splitting at `/`, `\`
/// and `;` (path parameters), trimming whitespace and control bytes, dropping empty and
/// `.` segments and resolving `..`, lowercased: what an upstream router could possibly see
/// as the prefix.
pub fn first_segment(path: &str) -> Option<String> {
    let decoded = percent_decode_fully(path);
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split(['/', '\\', ';']) {
        let segment = segment.trim_matches(|c: char| c.is_whitespace() || c.is_control());
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    segments.first().map(|s| s.to_ascii_lowercase())
}

/// Could this path be one the balancer answers itself? A cheap test that lets ordinary paths
/// through without decoding them.
fn maybe_local(path: &str) -> bool {
    let trimmed = path.trim_start_matches('/');
    trimmed.starts_with('_')
        || trimmed
            .as_bytes()
            .get(..OPERATOR_PREFIXES[1].len())
            .is_some_and(|start| start.eq_ignore_ascii_case(OPERATOR_PREFIXES[1].as_bytes()))
        || path.contains(['%', '\\', ';'])
        || path.contains("/.")
        || path.bytes().any(|b| b.is_ascii_control() || b == b' ')
}

/// Is this path one the balancer never forwards: under a reserved internal prefix, or an
/// operator endpoint?
pub fn is_internal(path: &str) -> bool {
    first_segment(path).is_some_and(|s| {
        RESERVED_PREFIXES.contains(&s.as_str()) || OPERATOR_PREFIXES.contains(&s.as_str())
    })
}

/// The client's address: the TCP peer, unless the peer is a trusted proxy; then the last
/// address of `X-Forwarded-For` that is not itself a trusted proxy, else `X-Real-IP`.
pub fn client_ip(peer: IpAddr, trusted: &[IpAddr], req: &RequestHeader) -> IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    let forwarded: Vec<IpAddr> = req
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    if let Some(ip) = forwarded.iter().rev().find(|ip| !trusted.contains(ip)) {
        return *ip;
    }
    let real = req
        .headers
        .get("x-real-ip")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    real.or_else(|| forwarded.first().copied()).unwrap_or(peer)
}

/// An IP address as a header value, without copying it again.
fn ip_header_value(ip: IpAddr) -> HeaderValue {
    // An address's text is always a valid header value.
    HeaderValue::from_maybe_shared(Bytes::from(ip.to_string()))
        .unwrap_or_else(|_| HeaderValue::from_static("-"))
}

impl Balancer {
    /// The upstream for `key`: the first available primary on the ring, else the first
    /// available backup. Available: healthy by the probes, not ejected, not in `exclude`.
    fn choose(&self, key: &[u8], exclude: &[usize]) -> Option<usize> {
        let accept = |backend: &pingora_load_balancing::Backend, healthy: bool| {
            healthy
                && self
                    .upstreams
                    .index_of(backend)
                    .is_some_and(|i| !exclude.contains(&i) && !self.upstreams.is_ejected(i))
        };
        self.primaries
            .select_with(key, self.max_ring_steps, accept)
            .or_else(|| self.backups.select_with(key, self.max_ring_steps, accept))
            .and_then(|b| self.upstreams.index_of(&b))
    }

    fn active_healthy(&self, role: Role, backend: &pingora_load_balancing::Backend) -> bool {
        match role {
            Role::Primary => self.primaries.backends().ready(backend),
            Role::Backup => self.backups.backends().ready(backend),
        }
    }

    /// `GET /_lb/status` of the operator listener: each upstream and the serving tier.
    pub(crate) fn status(&self) -> Bytes {
        let mut status = self
            .upstreams
            .status(|u| self.active_healthy(u.role, &u.backend));
        status["listen"] = self.config.listen.to_string().into();
        let serving = |role: &str| {
            status["upstreams"]
                .as_array()
                .is_some_and(|a| a.iter().any(|u| u["role"] == role && u["healthy"] == true))
        };
        let tier = if serving("primary") {
            "primaries"
        } else if serving("backup") {
            "backups"
        } else {
            "none"
        };
        status["serving"] = tier.into();
        Bytes::from(status.to_string())
    }

    /// Answers what the balancer answers itself; `Ok(true)` when a response was written.
    async fn local_answer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora_core::Result<bool> {
        let req = session.req_header();
        let (status, body) = if !maybe_local(req.uri.path()) {
            return Ok(false);
        } else if is_internal(req.uri.path()) {
            (404, json_detail("Not found."))
        } else {
            return Ok(false);
        };
        ctx.local_status = Some(status);
        respond_json(session, status, body).await?;
        Ok(true)
    }

    fn peer_for(&self, index: usize) -> HttpPeer {
        let upstream = self.upstreams.get(index);
        let mut peer = HttpPeer::new(upstream.addr, false, String::new());
        let options = &mut peer.options;
        options.connection_timeout = Some(Duration::from_millis(self.config.connect_timeout_ms));
        options.read_timeout = Some(Duration::from_secs(self.config.read_timeout_secs));
        options.write_timeout = Some(Duration::from_secs(self.config.read_timeout_secs));
        options.idle_timeout = Some(Duration::from_secs(self.config.idle_timeout_secs));
        peer
    }

    /// Is another attempt allowed, and worth it? Counts the retry when it is.
    fn allow_retry(&self, ctx: &RequestCtx) -> bool {
        let allowed = ctx.attempts < MAX_ATTEMPTS;
        if allowed {
            metrics::retry();
        }
        allowed
    }
}

#[async_trait]
impl ProxyHttp for Balancer {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            peer: None,
            peer_trusted: false,
            client: None,
            attempts: 0,
            upstream: None,
            failed: Vec::new(),
            local_status: None,
        }
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora_core::Result<()> {
        if !session.is_process_shutting_down() {
            session.set_keepalive(Some(self.config.idle_timeout_secs));
        }
        session.set_read_timeout(Some(Duration::from_secs(self.config.read_timeout_secs)));
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(SocketAddr::ip);
        if let Some(peer) = peer {
            ctx.peer = Some(peer);
            ctx.peer_trusted = self.config.trusted_proxies.contains(&peer);
            ctx.client = Some(client_ip(
                peer,
                &self.config.trusted_proxies,
                session.req_header(),
            ));
        }
        Ok(())
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora_core::Result<bool> {
        self.local_answer(session, ctx).await
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora_core::Result<Box<HttpPeer>> {
        let key = match ctx.client {
            Some(IpAddr::V4(ip)) => ip.octets().to_vec(),
            Some(IpAddr::V6(ip)) => ip.octets().to_vec(),
            None => Vec::new(),
        };
        let Some(index) = self.choose(&key, &ctx.failed) else {
            ctx.upstream = None;
            return Err(Error::explain(
                ErrorType::HTTPStatus(503),
                "no upstream is available",
            ));
        };
        ctx.attempts += 1;
        ctx.upstream = Some(index);
        self.upstreams.record_request(index);
        Ok(Box::new(self.peer_for(index)))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> pingora_core::Result<()> {
        let Some(peer) = ctx.peer else {
            return Ok(());
        };
        // One allocation for the common case: the client is the peer, no earlier proxies.
        let peer_value = ip_header_value(peer);
        let client = ctx.client.unwrap_or(peer);
        let real_ip = if client == peer {
            peer_value.clone()
        } else {
            ip_header_value(client)
        };
        upstream_request.insert_header("X-Real-IP", real_ip)?;
        let earlier: Vec<&str> = session
            .req_header()
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect();
        if earlier.is_empty() {
            upstream_request.insert_header("X-Forwarded-For", peer_value)?;
        } else {
            let forwarded_for = format!("{}, {peer}", earlier.join(", "));
            upstream_request.insert_header("X-Forwarded-For", forwarded_for)?;
        }
        let trusted_https = ctx.peer_trusted
            && session
                .req_header()
                .headers
                .get("x-forwarded-proto")
                .is_some_and(|v| v.as_bytes() == b"https");
        let proto = if trusted_https { "https" } else { "http" };
        upstream_request.insert_header("X-Forwarded-Proto", HeaderValue::from_static(proto))?;
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(index) = ctx.upstream {
            self.upstreams.record_failure(index, FailurePhase::Connect);
            ctx.failed.push(index);
        }
        // The connection was never established: the request surely never reached the
        // upstream, so any method may go to the next one.
        e.set_retry(self.allow_retry(ctx));
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        let from_upstream = *e.esource() == ErrorSource::Upstream;
        let timed_out = matches!(
            e.etype(),
            ErrorType::ReadTimedout | ErrorType::WriteTimedout
        );
        if let Some(index) = ctx.upstream.filter(|_| from_upstream) {
            // A pooled keep-alive connection that the upstream had closed is the benign
            // keep-alive race, not a sign of a failing upstream (unless it timed out).
            if !client_reused || timed_out {
                self.upstreams.record_failure(index, FailurePhase::Proxy);
            }
            ctx.failed.push(index);
        }
        // The request may have reached the upstream: only an idempotent one whose response
        // has not started and whose body is still fully buffered may be sent again.
        let retry = from_upstream
            && session.req_header().method.is_idempotent()
            && session.response_written().is_none()
            && !session.retry_buffer_truncated()
            && self.allow_retry(ctx);
        e.set_retry(retry);
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            _ => match e.esource() {
                ErrorSource::Upstream => match e.etype() {
                    ErrorType::ConnectTimedout
                    | ErrorType::ReadTimedout
                    | ErrorType::WriteTimedout => 504,
                    _ => 502,
                },
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    ErrorType::ReadTimedout => 408,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        if code > 0 && session.response_written().is_none() {
            // The connection is not reused after an error: say so in the response.
            session.set_keepalive(None);
            let detail = match code {
                400 => "Bad request.",
                408 => "Request timeout.",
                502 => "Bad gateway: the upstream failed.",
                503 => "No upstream is available.",
                504 => "Gateway timeout: the upstream did not answer in time.",
                _ => "Internal error.",
            };
            let _ = respond_json(session, code, json_detail(detail)).await;
            ctx.local_status = Some(code);
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// A client that went away is no error of the balancer's: its access line says so (at
    /// info), without Pingora's ERROR line beside it.
    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, error: &Error) -> bool {
        *error.esource() == ErrorSource::Downstream
            && matches!(
                error.etype(),
                ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
            )
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .or(ctx.local_status)
            .unwrap_or(0);
        let upstream = match (ctx.local_status, ctx.upstream) {
            (None, Some(index)) => self.upstreams.get(index).label.as_str(),
            _ => "-",
        };
        let elapsed = ctx.started.elapsed();
        metrics::request(upstream, status, elapsed.as_secs_f64());
        let req = session.req_header();
        (self.access_log)(&AccessRecord {
            method: req.method.as_str(),
            path: req
                .uri
                .path_and_query()
                .map_or(req.uri.path(), |p| p.as_str()),
            status,
            client: ctx.client,
            upstream,
            attempts: ctx.attempts,
            latency_us: u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            error: e.map(|e| e as &dyn std::fmt::Display),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_paths_are_recognised_however_they_are_spelled() {
        for path in [
            "/_internal/",
            "/_internal",
            "/_internal/raft/append",
            "/_cluster/members",
            "//_internal/x",
            "/./_cluster/",
            "/api/../_internal/x",
            "/%5Finternal/x",
            "/%5finternal/x",
            "/_INTERNAL/x",
            "/metrics",
            "/metrics/",
            "/METRICS",
            "/%6Detrics",
            "/api/../metrics",
            "/_lb/status",
            "/_LB/status/",
            "/;/_cluster/ping",
            "/%252F_cluster/ping",
            "/%25252F_cluster/ping",
            "/_cluster%3B/ping",
            "/_cluster;x=1/ping",
            "/_cluster%00/ping",
            "/%00_cluster/ping",
            "/_cluster%09/ping",
            "/%20_internal/x",
        ] {
            assert!(is_internal(path), "{path} should be internal");
        }
        for path in [
            "/",
            "/api/products/",
            "/health/",
            "/api/_internal/",
            "/_internals",
            "/metricsboard",
            "/api/metrics/",
        ] {
            assert!(!is_internal(path), "{path} should be forwarded");
        }
        for path in ["/api/products/1/", "/health/", "/api/users/me/"] {
            assert!(!maybe_local(path), "{path} needs no decoding");
        }
        for path in [
            "/_internal/",
            "//_cluster",
            "/%5Finternal/",
            "/a/../_lb/status",
            "/Metrics",
            "/;/_cluster/ping",
        ] {
            assert!(maybe_local(path), "{path} must be checked");
        }
    }

    #[test]
    fn percent_decoding_keeps_broken_escapes() {
        assert_eq!(percent_decode("/a%2Fb%zz%4"), "/a/b%zz%4");
        assert_eq!(percent_decode("%"), "%");
    }

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn the_client_ip_is_the_peer_unless_the_peer_is_trusted() {
        let peer: IpAddr = "10.0.0.5".parse().unwrap();
        let spoofed = req(&[("X-Forwarded-For", "1.2.3.4"), ("X-Real-IP", "5.6.7.8")]);
        assert_eq!(client_ip(peer, &[], &spoofed), peer);

        let trusted = ["10.0.0.5".parse().unwrap(), "10.0.0.6".parse().unwrap()];
        let chain = req(&[("X-Forwarded-For", "9.9.9.9, 1.2.3.4, 10.0.0.6")]);
        assert_eq!(
            client_ip(peer, &trusted, &chain),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        let real = req(&[("X-Real-IP", "5.6.7.8")]);
        assert_eq!(
            client_ip(peer, &trusted, &real),
            "5.6.7.8".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(peer, &trusted, &req(&[])), peer);
    }
}
