//! Process-wide telemetry: the one Prometheus recorder that the node's `/metrics` and the
//! balancer's metrics endpoint both render.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use http::Method;
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Latency histogram buckets, in seconds: 100 µs to 5 s.
const LATENCY_BUCKETS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// How often recorded histogram samples are folded into their buckets.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Histogram samples wait in a queue until the next upkeep (or render): without a periodic
/// upkeep a node nobody scrapes would keep every latency sample it ever recorded.
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics upkeep".to_owned())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                handle.run_upkeep();
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("no metrics upkeep thread ({e}): histograms grow until scraped");
    }
}

/// The process-wide Prometheus recorder (installed once; later calls share it).
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&LATENCY_BUCKETS)
                .map(|b| b.build_recorder())
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            // Fails only when another recorder is installed (tests, benches): keep that one.
            if metrics::set_global_recorder(recorder).is_ok() {
                spawn_upkeep(handle.clone());
            }
            handle
        })
        .clone()
}

/// The metric handles of one (route, method, status).
struct HttpSeries {
    method: Method,
    status: u16,
    requests: Counter,
    duration: Histogram,
}

thread_local! {
    /// Handles already registered, per route, on this thread: a request records through
    /// them without building label sets or looking the series up in the registry.
    static HTTP_SERIES: RefCell<HashMap<Box<str>, Vec<HttpSeries>>> = RefCell::new(HashMap::new());
}

/// Counts one answered HTTP request (`soundwave_http_requests_total{route,method,status}`)
/// and records its latency (`soundwave_http_request_duration_seconds{route}`).
pub fn record_http_request(route: &str, method: &Method, status: u16, seconds: f64) {
    HTTP_SERIES.with_borrow_mut(|by_route| {
        let series = match by_route.get_mut(route) {
            Some(series) => series,
            None => by_route.entry(route.into()).or_default(),
        };
        let index = match series
            .iter()
            .position(|s| s.status == status && s.method == method)
        {
            Some(index) => index,
            None => {
                series.push(HttpSeries {
                    method: method.clone(),
                    status,
                    requests: metrics::counter!(
                        "soundwave_http_requests_total",
                        "route" => route.to_owned(),
                        "method" => method.to_string(),
                        "status" => status.to_string(),
                    ),
                    duration: metrics::histogram!(
                        "soundwave_http_request_duration_seconds",
                        "route" => route.to_owned()
                    ),
                });
                series.len() - 1
            }
        };
        let handles = &series[index];
        handles.requests.increment(1);
        handles.duration.record(seconds);
    });
}
