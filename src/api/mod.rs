//! The HTTP API: the router, the pieces every endpoint shares (ids in paths, pages, cached
//! responses), and the middleware that observes every request.

mod accounts;
mod catalog;
mod ops;
mod orders;
mod pages;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequestParts, MatchedPath, Path, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, StatusCode, header};
use tower_http::timeout::TimeoutLayer;

use crate::cache::{CacheKey, CachedBody};
use crate::error::{ApiError, ApiResult};
use crate::node::AppState;

/// The API's routes, without trailing slashes (they are trimmed before routing).
pub fn router(state: Arc<AppState>) -> Router {
    let timeout = Duration::from_secs(state.limits.request_timeout_secs);
    Router::new()
        .route("/api/token", post(accounts::obtain_token))
        .route("/api/token/refresh", post(accounts::refresh_token))
        .route("/api/users", post(accounts::sign_up))
        .route("/api/users/me", get(accounts::me))
        .route(
            "/api/categories",
            get(catalog::list_categories).post(catalog::create_category),
        )
        .route(
            "/api/categories/{id}",
            get(catalog::get_category)
                .put(catalog::put_category)
                .patch(catalog::patch_category)
                .delete(catalog::delete_category),
        )
        .route(
            "/api/products",
            get(catalog::list_products).post(catalog::create_product),
        )
        .route(
            "/api/products/{id}",
            get(catalog::get_product)
                .put(catalog::put_product)
                .patch(catalog::patch_product)
                .delete(catalog::delete_product),
        )
        .route(
            "/api/orderitems",
            get(orders::list_order_items).post(orders::create_order_item),
        )
        .route(
            "/api/orderitems/{id}",
            get(orders::get_order_item)
                .patch(orders::patch_order_item)
                .delete(orders::delete_order_item),
        )
        .route(
            "/api/orders",
            get(orders::list_orders).post(orders::create_order),
        )
        .route("/api/orders/{id}", get(orders::get_order))
        .route("/api/orders/{id}/cancel", post(orders::cancel_order))
        .route("/health", get(ops::health))
        .route("/metrics", get(ops::metrics))
        .route("/", get(pages::storefront))
        .route("/admin", get(pages::admin))
        .route("/assets/{name}", get(pages::asset))
        .fallback(not_found)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            timeout,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), strong_reads))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

/// Records metrics and one log line per request, stamps `X-Soundwave-Node`, and gives error
/// responses made below the handlers (405, timeouts) a JSON body.
async fn observe(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    // The path is only kept when the access log line is written.
    let path = tracing::enabled!(target: "soundwave::access", tracing::Level::INFO)
        .then(|| request.uri().path().to_owned());
    let route = request.extensions().get::<MatchedPath>().cloned();
    let mut response = next.run(request).await;

    let status = response.status();
    if status.is_client_error() || status.is_server_error() {
        let has_body_type = response.headers().contains_key(header::CONTENT_TYPE);
        if !has_body_type {
            let detail = if status == StatusCode::METHOD_NOT_ALLOWED {
                format!("Method \"{method}\" not allowed.")
            } else {
                status.canonical_reason().unwrap_or("Error").to_owned()
            };
            let body = crate::output::json_bytes(&serde_json::json!({ "detail": detail }));
            let (mut parts, _) = response.into_parts();
            parts.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            parts.headers.remove(header::CONTENT_LENGTH);
            response = Response::from_parts(parts, Body::from(body));
        }
    }
    response
        .headers_mut()
        .insert("x-soundwave-node", state.node_header.clone());

    let elapsed = started.elapsed();
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    crate::telemetry::record_http_request(route, &method, status.as_u16(), elapsed.as_secs_f64());
    if let Some(path) = path {
        tracing::info!(
            target: "soundwave::access",
            %method,
            %path,
            status = status.as_u16(),
            latency_us = elapsed.as_micros() as u64,
        );
    }
    response
}

/// `?consistency=strong` on a read: first make sure this node has applied everything the
/// leader had committed when the read began (openraft's read index), so the local read that
/// follows is linearizable. Other reads are local, from the cache where possible.
async fn strong_reads(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let strong = request.method() == http::Method::GET
        && request
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|pair| pair == "consistency=strong"));
    if strong
        && let Some(cluster) = &state.cluster
        && let Err(error) = cluster.linearizable_barrier().await
    {
        return ApiError::from(error).into_response();
    }
    next.run(request).await
}

/// A record id from the path. Anything but a positive integer is a 404, as no such
/// record can exist.
pub struct IdPath(pub u64);

impl<S: Send + Sync> FromRequestParts<S> for IdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> ApiResult<Self> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::NotFound)?;
        raw.parse::<u64>()
            .ok()
            .filter(|&id| id > 0)
            .map(IdPath)
            .ok_or(ApiError::NotFound)
    }
}

/// Query parameters, keeping the last value of a repeated key.
pub type QueryParams = HashMap<String, String>;

/// `limit` and `offset` of a list request, capped at the configured page size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub limit: usize,
    pub offset: usize,
}

impl PageRequest {
    pub fn parse(params: &QueryParams, page_size: usize) -> ApiResult<PageRequest> {
        let number = |name: &str, min: usize| -> ApiResult<Option<usize>> {
            match params.get(name) {
                None => Ok(None),
                Some(raw) if raw.is_empty() => Ok(None),
                Some(raw) => match raw.parse::<usize>() {
                    Ok(value) if value >= min => Ok(Some(value)),
                    _ => Err(ApiError::field(
                        name,
                        format!("Ensure this value is an integer greater than or equal to {min}."),
                    )),
                },
            }
        };
        Ok(PageRequest {
            limit: number("limit", 1)?.unwrap_or(page_size).min(page_size),
            offset: number("offset", 0)?.unwrap_or(0),
        })
    }

    /// The `Link` target of the next page, when entries remain after this one.
    pub fn next_link(&self, path: &str, params: &QueryParams, total: usize) -> Option<String> {
        let next_offset = self.offset.checked_add(self.limit)?;
        if next_offset >= total {
            return None;
        }
        let mut pairs: Vec<(&str, String)> = params
            .iter()
            .filter(|(k, _)| k.as_str() != "limit" && k.as_str() != "offset")
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        pairs.sort();
        pairs.push(("limit", self.limit.to_string()));
        pairs.push(("offset", next_offset.to_string()));
        let query: Vec<String> = pairs
            .into_iter()
            .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(&v)))
            .collect();
        Some(format!("<{path}?{}>; rel=\"next\"", query.join("&")))
    }
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Sends a JSON body (cached or fresh) with its list headers.
pub fn send(status: StatusCode, cached: &CachedBody) -> Response {
    let mut response = (status, Body::from(cached.body.clone())).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(total) = cached.total_count {
        headers.insert("x-total-count", HeaderValue::from(total));
    }
    if let Some(link) = cached
        .next_link
        .as_deref()
        .and_then(|l| HeaderValue::from_str(l).ok())
    {
        headers.insert(header::LINK, link);
    }
    response
}

/// Answers from the cache, or builds the body, caches it and answers. The key must be built
/// (generations read) before `build` reads the store.
pub fn cached(
    state: &AppState,
    key: CacheKey,
    build: impl FnOnce() -> ApiResult<CachedBody>,
) -> ApiResult<Response> {
    if let Some(hit) = state.cache.get_body(&key) {
        return Ok(send(StatusCode::OK, &hit));
    }
    let fresh = build()?;
    let response = send(StatusCode::OK, &fresh);
    state.cache.put_body(key, fresh);
    Ok(response)
}

/// A JSON body that is not cached.
pub fn send_json(status: StatusCode, body: Bytes) -> Response {
    send(
        status,
        &CachedBody {
            body,
            total_count: None,
            next_link: None,
        },
    )
}

pub fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> QueryParams {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn limit_is_capped_at_the_page_size() {
        let page = PageRequest::parse(&params(&[("limit", "5000")]), 1000).unwrap();
        assert_eq!(page.limit, 1000);
        assert!(PageRequest::parse(&params(&[("limit", "0")]), 1000).is_err());
        assert!(PageRequest::parse(&params(&[("offset", "-1")]), 1000).is_err());
    }

    #[test]
    fn next_link_only_when_more_remain() {
        let query = params(&[("name", "red guitar"), ("limit", "10")]);
        let page = PageRequest::parse(&query, 1000).unwrap();
        assert_eq!(page.next_link("/api/products/", &query, 10), None);
        assert_eq!(
            page.next_link("/api/products/", &query, 11).as_deref(),
            Some("</api/products/?name=red%20guitar&limit=10&offset=10>; rel=\"next\"")
        );
    }
}
