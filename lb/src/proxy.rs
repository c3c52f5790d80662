//! The balancer's rules: which upstream (ketama on the client IP over the available
//! primaries, then the backups), which paths are never forwarded (reserved and operator
//! prefixes, however spelled), who the client is (`client_ip`), `/_lb/status`, and the
//! access record. How a request is carried is `forward.rs`.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;

use crate::config::LbConfig;
use crate::upstream::{Upstream, Upstreams};

/// A request is sent to at most this many upstreams (the first try and one retry).
pub const MAX_ATTEMPTS: u8 = 2;

/// Path prefixes that belong to the cluster itself and are never forwarded.
pub const RESERVED_PREFIXES: [&str; 2] = ["_internal", "_cluster"];
/// Operator endpoints (the balancer's `/_lb/status`, a node's `/metrics`): never forwarded
/// and never answered on the public port (404). The balancer's are served on its
/// operator listener (`metrics_listen`) instead.
pub const OPERATOR_PREFIXES: [&str; 2] = ["_lb", "metrics"];

/// The balancer: the upstream table (with a ketama ring per tier) and the settings it
/// started with.
#[derive(Clone)]
pub struct Balancer {
    pub upstreams: Arc<Upstreams>,
    /// The configuration the balancer started with: what a reload cannot change (listeners,
    /// timeouts, limits) is read from here.
    pub config: Arc<LbConfig>,
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
    /// How the client spoke to the balancer.
    pub protocol: Protocol,
    /// Why the request failed, when it did.
    pub error: Option<&'a dyn std::fmt::Display>,
}

/// How a client spoke to the balancer: plain HTTP/1.1 on `listen`, or on `tls_listen`
/// HTTP/1.1 or HTTP/2 as ALPN chose (`Tls`: a connection refused before its handshake).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Tls,
    Http1Tls,
    Http2Tls,
}

impl Protocol {
    /// The name in access lines and in `soundwave_lb_requests_by_protocol_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "h1",
            Protocol::Tls => "tls",
            Protocol::Http1Tls => "h1+tls",
            Protocol::Http2Tls => "h2+tls",
        }
    }

    /// The client came over TLS (its forwarded requests say `X-Forwarded-Proto: https`).
    pub fn is_tls(self) -> bool {
        self != Protocol::Http1
    }
}

/// Where the access line of each request goes. `soundwave lb` passes a writer that asks
/// the log filter (target `soundwave::lb::access`, level info) and formats the line
/// straight into the process's buffered log, as the node's access line is written.
pub type AccessLog = fn(&AccessRecord<'_>);

/// Percent-decodes a path (bytes that do not decode are kept as they are).
pub(crate) fn percent_decode(path: &str) -> String {
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
pub(crate) fn maybe_local(path: &str) -> bool {
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
pub fn client_ip(peer: IpAddr, trusted: &[IpAddr], headers: &http::HeaderMap) -> IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    if let Some(ip) = forwarded.iter().rev().find(|ip| !trusted.contains(ip)) {
        return *ip;
    }
    let real = headers
        .get("x-real-ip")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    real.or_else(|| forwarded.first().copied()).unwrap_or(peer)
}

impl Balancer {
    /// The upstream for `key`: see [`Upstreams::choose`].
    pub(crate) fn choose(&self, key: &[u8], exclude: &[Arc<Upstream>]) -> Option<Arc<Upstream>> {
        self.upstreams.choose(key, exclude)
    }

    /// `GET /_lb/status` of the operator listener: each upstream and the serving tier.
    pub(crate) fn status(&self) -> Bytes {
        let mut status = self.upstreams.status();
        status["listen"] = self.config.listen.to_string().into();
        let serving = |role: &str| {
            status["upstreams"].as_array().is_some_and(|a| {
                a.iter()
                    .any(|u| u["role"] == role && u["healthy"] == true && u["drained"] == false)
            })
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

    fn req(headers: &[(&str, &str)]) -> http::HeaderMap {
        let mut r = http::HeaderMap::new();
        for (k, v) in headers {
            r.append(
                http::HeaderName::try_from(*k).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
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
