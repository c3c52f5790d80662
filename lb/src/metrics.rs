//! Prometheus metrics of the balancer and the small HTTP service that exposes them.
//!
//! - `soundwave_lb_requests_total{upstream,status}`: requests answered (upstream `-` when the
//!   balancer answered itself),
//! - `soundwave_lb_upstream_failures_total{upstream,phase}`: connect / in-flight failures,
//! - `soundwave_lb_retries_total`: requests sent a second time to another upstream,
//! - `soundwave_lb_ejections_total{upstream}`: passive ejections,
//! - `soundwave_lb_upstream_up{upstream,role}`: 1 while the upstream can be chosen,
//! - `soundwave_lb_request_duration_seconds{upstream}`: latency histogram.

use std::sync::OnceLock;

use async_trait::async_trait;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;

const REQUESTS: &str = "soundwave_lb_requests_total";
const FAILURES: &str = "soundwave_lb_upstream_failures_total";
const RETRIES: &str = "soundwave_lb_retries_total";
const EJECTIONS: &str = "soundwave_lb_ejections_total";
const UP: &str = "soundwave_lb_upstream_up";
const DURATION: &str = "soundwave_lb_request_duration_seconds";

/// The process-wide recorder (installed once; later calls share it).
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5, 5.0,
                ])
                .map(|b| b.build_recorder())
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            // Fails only when another recorder is installed (tests): keep that one.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

pub fn request(upstream: &str, status: u16, seconds: f64) {
    metrics::counter!(REQUESTS, "upstream" => upstream.to_owned(), "status" => status.to_string())
        .increment(1);
    metrics::histogram!(DURATION, "upstream" => upstream.to_owned()).record(seconds);
}

pub fn upstream_failure(upstream: &str, phase: &'static str) {
    metrics::counter!(FAILURES, "upstream" => upstream.to_owned(), "phase" => phase).increment(1);
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

/// `GET /metrics` in the Prometheus text format; anything else is a JSON 404.
pub struct MetricsApp {
    pub handle: PrometheusHandle,
}

#[async_trait]
impl ServeHttp for MetricsApp {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let path = session.req_header().uri.path();
        let (status, content_type, body) = if path == "/metrics" || path == "/metrics/" {
            self.handle.run_upkeep();
            (
                200,
                "text/plain; version=0.0.4",
                self.handle.render().into_bytes(),
            )
        } else {
            (
                404,
                "application/json",
                br#"{"detail":"Not found."}"#.to_vec(),
            )
        };
        http::Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, content_type)
            .header(http::header::CONTENT_LENGTH, body.len())
            .body(body)
            .unwrap_or_default()
    }
}
