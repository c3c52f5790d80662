//! Prometheus metrics of the balancer (the operator listener, `operator.rs`, serves them).
//!
//! - `soundwave_lb_requests_total{upstream,status}`: requests answered (upstream `-` when the
//!   balancer answered itself),
//! - `soundwave_lb_requests_by_protocol_total{protocol}`: the same requests by how the
//!   client spoke (`h1`, `h1+tls`, `h2+tls`),
//! - `soundwave_lb_upstream_failures_total{upstream,phase}`: connect / in-flight failures,
//! - `soundwave_lb_requests_refused_total{reason}`: requests the balancer answered itself
//!   instead of relaying (limits broken, `rate_limited`),
//! - `soundwave_lb_connections_refused_total`: connections refused past the bounds,
//! - `soundwave_lb_retries_total`: requests sent a second time to another upstream,
//! - `soundwave_lb_ejections_total{upstream}`: passive ejections,
//! - `soundwave_lb_upstream_up{upstream,role}`: 1 while the upstream can be chosen (healthy,
//!   not ejected, not drained),
//! - `soundwave_lb_request_duration_seconds{upstream}`: latency histogram,
//! - `soundwave_lb_reloads_total{result}`: configuration reloads (SIGHUP), `ok` or `failed`.

use std::cell::RefCell;
use std::collections::HashMap;

use metrics::{Counter, Histogram};

use crate::proxy::Protocol;

const REQUESTS: &str = "soundwave_lb_requests_total";
const FAILURES: &str = "soundwave_lb_upstream_failures_total";
const RETRIES: &str = "soundwave_lb_retries_total";
const EJECTIONS: &str = "soundwave_lb_ejections_total";
const UP: &str = "soundwave_lb_upstream_up";
const DURATION: &str = "soundwave_lb_request_duration_seconds";

/// The metric handles of one upstream (`-`: the balancer itself).
struct UpstreamSeries {
    duration: Histogram,
    by_status: Vec<(u16, Counter)>,
}

thread_local! {
    /// Handles already registered on this thread: a request records through them without
    /// building label sets or looking the series up in the registry.
    static REQUEST_SERIES: RefCell<HashMap<Box<str>, UpstreamSeries>> =
        RefCell::new(HashMap::new());
}

/// Counts an answered request and records its latency.
pub fn request(upstream: &str, status: u16, seconds: f64) {
    REQUEST_SERIES.with_borrow_mut(|by_upstream| {
        let series = match by_upstream.get_mut(upstream) {
            Some(series) => series,
            None => by_upstream
                .entry(upstream.into())
                .or_insert_with(|| UpstreamSeries {
                    duration: metrics::histogram!(DURATION, "upstream" => upstream.to_owned()),
                    by_status: Vec::new(),
                }),
        };
        series.duration.record(seconds);
        match series.by_status.iter().find(|(s, _)| *s == status) {
            Some((_, counter)) => counter.increment(1),
            None => {
                let counter = metrics::counter!(
                    REQUESTS,
                    "upstream" => upstream.to_owned(),
                    "status" => status.to_string()
                );
                counter.increment(1);
                series.by_status.push((status, counter));
            }
        }
    });
}

thread_local! {
    /// This thread's handles of `soundwave_lb_requests_by_protocol_total`, by protocol.
    static PROTOCOL_SERIES: RefCell<[Option<Counter>; 4]> = const { RefCell::new([None, None, None, None]) };
}

/// Counts an answered request by the protocol its client spoke.
pub fn request_protocol(protocol: Protocol) {
    let index = match protocol {
        Protocol::Http1 => 0,
        Protocol::Tls => 1,
        Protocol::Http1Tls => 2,
        Protocol::Http2Tls => 3,
    };
    PROTOCOL_SERIES.with_borrow_mut(|series| {
        series[index]
            .get_or_insert_with(|| {
                metrics::counter!(
                    "soundwave_lb_requests_by_protocol_total",
                    "protocol" => protocol.as_str()
                )
            })
            .increment(1);
    });
}

pub fn upstream_failure(upstream: &str, phase: &'static str) {
    metrics::counter!(FAILURES, "upstream" => upstream.to_owned(), "phase" => phase).increment(1);
}

/// A connection refused past the connection bounds.
pub fn connection_refused() {
    metrics::counter!("soundwave_lb_connections_refused_total").increment(1);
}

/// A request the balancer gave up on before relaying it (`reason`: timed_out, too_large,
/// uri_too_long, unparsable, rate_limited).
pub fn request_refused(reason: &'static str) {
    metrics::counter!("soundwave_lb_requests_refused_total", "reason" => reason).increment(1);
}

pub fn retry() {
    metrics::counter!(RETRIES).increment(1);
}

pub fn ejection(upstream: &str) {
    metrics::counter!(EJECTIONS, "upstream" => upstream.to_owned()).increment(1);
}

pub fn upstream_up(upstream: &str, role: &'static str, up: bool) {
    metrics::gauge!(UP, "upstream" => upstream.to_owned(), "role" => role).set(if up {
        1.0
    } else {
        0.0
    });
}

/// A configuration reload (`result`: ok, failed).
pub fn reload(result: &'static str) {
    metrics::counter!("soundwave_lb_reloads_total", "result" => result).increment(1);
}
