//! Bounds on a client connection before it is served: open connections in all and per
//! client IP ([`ConnectionCounter`], also used by the node), what a request must keep to
//! ([`RequestLimits`]), and the whole JSON answers the balancer closes a connection with
//! when a client misses a limit ([`GuardAnswers`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

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

/// A whole JSON answer of the balancer's own (`{"detail": ...}`), with `extra_headers`
/// (each ending in CRLF) and, when `close`, `Connection: close`.
pub(crate) fn json_answer(
    status_line: &str,
    extra_headers: &str,
    detail: &str,
    close: bool,
) -> Bytes {
    let body = serde_json::json!({ "detail": detail }).to_string();
    let connection = if close { "connection: close\r\n" } else { "" };
    Bytes::from(format!(
        "HTTP/1.1 {status_line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         {connection}{extra_headers}\r\n{body}",
        body.len()
    ))
}

/// The whole answer, closing the connection, of a request the balancer ends itself.
fn closing_json_response(status_line: &str, extra_headers: &str, detail: &str) -> Bytes {
    json_answer(status_line, extra_headers, detail, true)
}

/// What a client's request must keep to: its head within `header_timeout` of its first byte
/// and at most `max_header_bytes` long, its body within `body_timeout` of the head's end.
#[derive(Clone, Copy, Debug)]
pub struct RequestLimits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_header_bytes: usize,
}

/// Why the balancer gave up on a request before it had one to relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GuardAnswer {
    TimedOut,
    TooLarge,
    UriTooLong,
    Unparsable,
}

impl GuardAnswer {
    /// The status and the access line's reason.
    pub(crate) fn status_and_reason(self) -> (u16, &'static str) {
        match self {
            GuardAnswer::TimedOut => (408, "request not received in time"),
            GuardAnswer::TooLarge => (431, "request head too large"),
            GuardAnswer::UriTooLong => (414, "request line too long"),
            GuardAnswer::Unparsable => (400, "request head not parsable"),
        }
    }

    /// The `reason` label of `soundwave_lb_requests_refused_total`.
    pub(crate) fn metric_reason(self) -> &'static str {
        match self {
            GuardAnswer::TimedOut => "timed_out",
            GuardAnswer::TooLarge => "too_large",
            GuardAnswer::UriTooLong => "uri_too_long",
            GuardAnswer::Unparsable => "unparsable",
        }
    }
}

/// The whole answers the balancer closes a connection with, built once.
pub(crate) struct GuardAnswers {
    pub(crate) too_many_connections: Bytes,
    timed_out: Bytes,
    too_large: Bytes,
    uri_too_long: Bytes,
    unparsable: Bytes,
}

impl GuardAnswers {
    pub(crate) fn new() -> Self {
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

    pub(crate) fn bytes(&self, answer: GuardAnswer) -> &Bytes {
        match answer {
            GuardAnswer::TimedOut => &self.timed_out,
            GuardAnswer::TooLarge => &self.too_large,
            GuardAnswer::UriTooLong => &self.uri_too_long,
            GuardAnswer::Unparsable => &self.unparsable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
