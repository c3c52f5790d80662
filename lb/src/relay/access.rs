//! The relay's access lines: one per request, for requests it relayed or answered itself
//! ([`Trip`]) and for those it refused before it had a head to go by ([`log_refusal`]).

use std::net::IpAddr;
use std::sync::Arc;

use tokio::time::Instant;

use crate::metrics;
use crate::proxy::{AccessRecord, Balancer, Protocol};
use crate::upstream::Upstream;

/// The access line of a request the relay refused before it had a head to go by.
pub(super) fn log_refusal(
    balancer: &Balancer,
    client: Option<IpAddr>,
    protocol: Protocol,
    head: &[u8],
    status: u16,
    why: &str,
) {
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
        protocol,
        error: Some(&why),
    });
}

/// One request's way through the balancer, for its access line and metrics.
pub(super) struct Trip<'a> {
    pub(super) balancer: &'a Balancer,
    pub(super) method: &'a str,
    pub(super) path: &'a str,
    pub(super) started: Instant,
    pub(super) client: Option<IpAddr>,
    pub(super) protocol: Protocol,
    pub(super) attempts: u8,
    /// The upstream of the last attempt.
    pub(super) upstream: Option<Arc<Upstream>>,
}

impl Trip<'_> {
    /// Writes the access line: `status` 0 when no answer reached the client. The upstream
    /// is named when one answered.
    pub(super) fn log(
        &self,
        status: u16,
        answered_by_upstream: bool,
        error: Option<&dyn std::fmt::Display>,
    ) {
        let upstream = match &self.upstream {
            Some(upstream) if answered_by_upstream => upstream.label.as_str(),
            _ => "-",
        };
        let elapsed = self.started.elapsed();
        metrics::request(upstream, status, elapsed.as_secs_f64());
        metrics::request_protocol(self.protocol);
        (self.balancer.access_log)(&AccessRecord {
            method: self.method,
            path: self.path,
            status,
            client: self.client,
            upstream,
            attempts: self.attempts,
            latency_us: u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            protocol: self.protocol,
            error,
        });
    }
}
