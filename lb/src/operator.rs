//! The operator listener (`metrics_listen`): Prometheus metrics, the balancer's status,
//! and draining an upstream. Never on the public port.

use async_trait::async_trait;
use metrics_exporter_prometheus::PrometheusHandle;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;

use crate::proxy::{Balancer, percent_decode};

/// The operator listener: `GET /metrics` in the Prometheus text format, `GET /_lb/status`
/// (JSON), and `POST /_lb/upstreams/{addr}/drain` and `.../undrain`; anything else is a
/// JSON 404 (405 for another method on a known path).
pub struct OperatorApp {
    pub handle: PrometheusHandle,
    pub balancer: Balancer,
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

impl OperatorApp {
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
        let addr = percent_decode(addr);
        let upstreams = &self.balancer.upstreams;
        let Some(upstream) = addr.parse().ok().and_then(|a| upstreams.find(a)) else {
            return not_found(format!("No upstream {addr}."));
        };
        if method != http::Method::POST {
            return not_allowed(method, "POST");
        }
        let changed = upstreams.set_drained(&upstream, drained);
        json_answer(
            200,
            &serde_json::json!({
                "address": upstream.label,
                "drained": drained,
                "changed": changed,
            }),
        )
    }
}

#[async_trait]
impl ServeHttp for OperatorApp {
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
