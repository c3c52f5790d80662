//! Prometheus metrics of the balancer and the small HTTP service that exposes them.
//!
//! - `soundwave_lb_requests_total{upstream,status}`: requests answered (upstream `-` when the
//!   balancer answered itself),
//! - `soundwave_lb_upstream_failures_total{upstream,phase}`: connect / in-flight failures,
//! - `soundwave_lb_requests_refused_total{reason}`: requests the balancer answered itself
//!   instead of relaying (limits broken, `rate_limited`),
//! - `soundwave_lb_connections_refused_total`: connections refused past the bounds,
//! - `soundwave_lb_retries_total`: requests sent a second time to another upstream,
//! - `soundwave_lb_ejections_total{upstream}`: passive ejections,
//! - `soundwave_lb_upstream_up{upstream,role}`: 1 while the upstream can be chosen (healthy,
//!   not ejected, not drained),
//! - `soundwave_lb_request_duration_seconds{upstream}`: latency histogram.

use std::cell::RefCell;
use std::collections::HashMap;

use async_trait::async_trait;
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::PrometheusHandle;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;

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

/// The operator listener: `GET /metrics` in the Prometheus text format, `GET /_lb/status`
/// (JSON), and `POST /_lb/upstreams/{addr}/drain` and `.../undrain`; anything else is a
/// JSON 404 (405 for another method on a known path).
pub struct MetricsApp {
    pub handle: PrometheusHandle,
    pub balancer: crate::proxy::Balancer,
}

/// One answer of the operator listener.
struct OperatorAnswer {
    status: u16,
    content_type: &'static str,
    /// The methods a 405 names.
    allow: Option<&'static str>,
    body: Vec<u8>,
}

fn json_answer(status: u16, body: &serde_json::Value) -> OperatorAnswer {
    OperatorAnswer {
        status,
        content_type: "application/json",
        allow: None,
        body: body.to_string().into_bytes(),
    }
}

fn not_allowed(method: &http::Method, allow: &'static str) -> OperatorAnswer {
    let detail = format!("Method \"{method}\" not allowed.");
    OperatorAnswer {
        allow: Some(allow),
        ..json_answer(405, &serde_json::json!({ "detail": detail }))
    }
}

impl MetricsApp {
    fn answer(&self, method: &http::Method, path: &str) -> OperatorAnswer {
        let readable = method == http::Method::GET || method == http::Method::HEAD;
        match path {
            "/metrics" | "/metrics/" | "/_lb/status" | "/_lb/status/" if !readable => {
                not_allowed(method, "GET, HEAD")
            }
            "/metrics" | "/metrics/" => {
                self.handle.run_upkeep();
                OperatorAnswer {
                    status: 200,
                    content_type: "text/plain; version=0.0.4",
                    allow: None,
                    body: self.handle.render().into_bytes(),
                }
            }
            "/_lb/status" | "/_lb/status/" => OperatorAnswer {
                status: 200,
                content_type: "application/json",
                allow: None,
                body: self.balancer.status().to_vec(),
            },
            _ => match path.strip_prefix("/_lb/upstreams/") {
                Some(rest) => self.drain(method, rest.trim_end_matches('/')),
                None => json_answer(404, &serde_json::json!({ "detail": "Not found." })),
            },
        }
    }

    /// `POST /_lb/upstreams/{addr}/drain` or `/undrain` (`rest` is what follows
    /// `/_lb/upstreams/`): the upstream's drain state, and whether this changed it.
    fn drain(&self, method: &http::Method, rest: &str) -> OperatorAnswer {
        let not_found = |detail: String| json_answer(404, &serde_json::json!({ "detail": detail }));
        let Some((addr, action)) = rest.rsplit_once('/') else {
            return not_found("Not found.".to_owned());
        };
        let drained = match action {
            "drain" => true,
            "undrain" => false,
            _ => return not_found("Not found.".to_owned()),
        };
        let addr = crate::proxy::percent_decode(addr);
        let upstreams = &self.balancer.upstreams;
        let Some(index) = addr.parse().ok().and_then(|a| upstreams.position(a)) else {
            return not_found(format!("No upstream {addr}."));
        };
        if method != http::Method::POST {
            return not_allowed(method, "POST");
        }
        let changed = upstreams.set_drained(index, drained);
        json_answer(
            200,
            &serde_json::json!({
                "address": upstreams.get(index).label,
                "drained": drained,
                "changed": changed,
            }),
        )
    }
}

#[async_trait]
impl ServeHttp for MetricsApp {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let req = session.req_header();
        let answer = self.answer(&req.method, req.uri.path());
        let mut response = http::Response::builder()
            .status(answer.status)
            .header(http::header::CONTENT_TYPE, answer.content_type)
            .header(http::header::CONTENT_LENGTH, answer.body.len());
        if let Some(allow) = answer.allow {
            response = response.header(http::header::ALLOW, allow);
        }
        response.body(answer.body).unwrap_or_default()
    }
}
