//! The HTTP API: the router, the pieces every endpoint shares (ids in paths, pages, cached
//! responses), and the middleware that observes every request.

mod accounts;
mod backoffice;
mod catalog;
mod membership;
mod ops;
mod orders;
mod pages;
mod request;
mod response;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, patch, post};
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// The API's routes. Each answers with and without its trailing slash (`/api/products/1/`
/// as Django REST framework spells it, and `/api/products/1`): both are registered, so no
/// request pays for rewriting its path before routing.
pub fn router(state: Arc<AppState>) -> Router {
    let routes: Vec<(&str, MethodRouter<Arc<AppState>>)> = vec![
        ("/api/token", post(accounts::obtain_token)),
        ("/api/token/refresh", post(accounts::refresh_token)),
        ("/api/token/blacklist", post(accounts::blacklist_token)),
        (
            "/api/users",
            get(backoffice::list_users).post(accounts::sign_up),
        ),
        ("/api/users/{id}", patch(backoffice::patch_user)),
        ("/api/users/me", get(accounts::me)),
        ("/api/users/me/password", post(accounts::change_password)),
        (
            "/api/categories",
            get(catalog::list_categories).post(catalog::create_category),
        ),
        (
            "/api/categories/{id}",
            get(catalog::get_category)
                .put(catalog::put_category)
                .patch(catalog::patch_category)
                .delete(catalog::delete_category),
        ),
        (
            "/api/products",
            get(catalog::list_products).post(catalog::create_product),
        ),
        (
            "/api/products/{id}",
            get(catalog::get_product)
                .put(catalog::put_product)
                .patch(catalog::patch_product)
                .delete(catalog::delete_product),
        ),
        (
            "/api/orderitems",
            get(orders::list_order_items).post(orders::create_order_item),
        ),
        (
            "/api/orderitems/{id}",
            get(orders::get_order_item)
                .patch(orders::patch_order_item)
                .delete(orders::delete_order_item),
        ),
        (
            "/api/orders",
            get(orders::list_orders).post(orders::create_order),
        ),
        ("/api/orders/{id}", get(orders::get_order)),
        ("/api/orders/{id}/cancel", post(orders::cancel_order)),
        (
            "/api/orders/{id}/status",
            post(backoffice::set_order_status),
        ),
        ("/api/orders/export", get(backoffice::export_orders)),
        ("/api/stats/sales", get(backoffice::sales)),
        (HEALTH_ROUTE, get(ops::health)),
        ("/metrics", get(ops::metrics)),
        // Behind the cluster secret; `soundwave lb` never forwards `/_cluster/` paths.
        ("/_cluster/backup", get(ops::backup)),
        ("/_cluster/digest", get(ops::digest)),
        ("/_cluster/members", get(membership::members)),
        ("/_cluster/join", post(membership::join)),
        ("/_cluster/remove", post(membership::remove)),
        ("/admin", get(pages::admin)),
        ("/assets/{name}", get(pages::asset)),
        ("/", get(pages::storefront)),
    ];
    let mut router = Router::new();
    for (path, methods) in routes {
        if path != "/" {
            router = router.route(&format!("{path}/"), methods.clone());
        }
        router = router.route(path, methods);
    }
    router
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// The route load balancers and orchestrators probe; its requests log at debug.
const HEALTH_ROUTE: &str = "/health";

async fn not_found() -> ApiError {
    ApiError::NotFound
}

/// Around every request: first `?consistency=strong` (see [`strong_read_barrier`]) and the
/// request timeout; then, once answered, metrics and one access line, the `X-Soundwave-Node`
/// header, and a JSON body for error responses made below the handlers (405). One layer,
/// not one per concern: each `from_fn` layer costs a boxed future per request.
///
/// The timeout bounds what can wait on the cluster: writes and strong reads. A plain read
/// is answered from this node's own cache or store and cannot wait on anything else, so it
/// does not pay for a timer.
async fn observe(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request.extensions().get::<MatchedPath>().cloned();
    let route = route
        .as_ref()
        .map_or("unmatched", |r| route_label(r.as_str()));
    // What the access line needs from the request, only when it is written. The URI's
    // clone shares its bytes.
    let access = access_level(route).map(|level| {
        let peer = request.extensions().get::<ConnectInfo<SocketAddr>>();
        let client = peer.map(|ConnectInfo(peer)| state.client_ip(*peer, request.headers()));
        (level, client, request.uri().clone())
    });
    // An error may be answered before the request's body is read; hyper then closes the
    // connection. Say so in the response, so a client or balancer does not reuse it.
    let carries_body = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() != b"0")
        || request.headers().contains_key(header::TRANSFER_ENCODING);
    let body_read = carries_body.then(|| Arc::new(AtomicBool::new(false)));
    let request = match &body_read {
        Some(read) => request.map(|body| Body::new(EndTracked::new(body, read.clone()))),
        None => request,
    };
    let accepted = crate::compression::negotiate(request.headers());
    let strong = wants_strong_read(&request);
    let local_read = !strong && (method == http::Method::GET || method == http::Method::HEAD);
    let mut response = if local_read {
        next.run(request).await
    } else {
        let timeout = Duration::from_secs(state.limits.request_timeout_secs);
        let answer = async {
            strong_read_barrier(&state, strong).await?;
            Ok::<_, ApiError>(next.run(request).await)
        };
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => error.into_response(),
            // Still waiting for the client's body: its fault, not the node's (408, not 503).
            Err(_)
                if body_read
                    .as_ref()
                    .is_some_and(|read| !read.load(Ordering::Acquire)) =>
            {
                ApiError::RequestTimeout.into_response()
            }
            Err(_) => ApiError::Unavailable(format!(
                "The request did not complete within {} s.",
                timeout.as_secs()
            ))
            .into_response(),
        }
    };

    let status = response.status();
    if status.is_client_error() || status.is_server_error() {
        if body_read
            .as_ref()
            .is_some_and(|read| !read.load(Ordering::Acquire))
        {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
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
    response::encode(&mut response, accepted);
    response
        .headers_mut()
        .insert("x-soundwave-node", state.node_header.clone());
    let access = access
        .as_ref()
        .map(|(level, client, uri)| (*level, *client, uri));
    record_answer(&state, route, &method, status, started, access);
    response
}

/// The level of a route's access line, if the filter (`RUST_LOG`) lets it through. Health
/// probes come every few seconds from every balancer: they log at debug, so that the log
/// is about the traffic.
fn access_level(route: &str) -> Option<tracing::Level> {
    if route == HEALTH_ROUTE {
        tracing::enabled!(target: "soundwave::access", tracing::Level::DEBUG)
            .then_some(tracing::Level::DEBUG)
    } else {
        tracing::enabled!(target: "soundwave::access", tracing::Level::INFO)
            .then_some(tracing::Level::INFO)
    }
}

/// What every answered request ends with, however it was answered: its metrics, and its
/// access line when `access` says at what level, from whom and for what.
fn record_answer(
    state: &AppState,
    route: &str,
    method: &http::Method,
    status: StatusCode,
    started: Instant,
    access: Option<(tracing::Level, Option<IpAddr>, &http::Uri)>,
) {
    let elapsed = started.elapsed();
    crate::telemetry::record_http_request(route, method, status.as_u16(), elapsed.as_secs_f64());
    if let Some((level, client, uri)) = access {
        let line = crate::logging::AccessLine {
            node: state.node_id,
            client,
            method: method.as_str(),
            path: uri.path_and_query().map_or(uri.path(), |p| p.as_str()),
            status: status.as_u16(),
            latency_us: u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
        };
        crate::logging::write_access_line(level, &line);
    }
}

/// The cache in front of the router: a plain public catalog read (`GET` of a product, a
/// category or a list of either, without a body or `consistency=strong`) whose body the
/// cache holds is answered here, before routing, with what the handler would have sent
/// (the same cache key, headers, encoding, metrics and access line). Everything else, and
/// every miss, goes to the router. Profiled under oha, routing a cached read (the boxed
/// route service, path matching, path parameters, the middleware's boxed future, request
/// extensions) cost about as much as the rest of the node's work on it.
#[derive(Clone)]
pub struct CachedReads {
    state: Arc<AppState>,
}

impl CachedReads {
    pub fn new(state: Arc<AppState>) -> Self {
        CachedReads { state }
    }

    /// The answer to `request` from `peer`, when the cache holds it; `None`: route it.
    pub fn answer<B>(&self, request: &http::Request<B>, peer: SocketAddr) -> Option<Response> {
        if request.method() != http::Method::GET
            || request.headers().contains_key(header::CONTENT_LENGTH)
            || request.headers().contains_key(header::TRANSFER_ENCODING)
            || wants_strong_read(request)
        {
            return None;
        }
        let started = Instant::now();
        let uri = request.uri();
        let state = &self.state;
        let read = catalog::CatalogRead::parse(uri.path(), uri.query(), state.limits.page_size)?;
        let route = read.route();
        let hit = state.cache.get_body(&read.cache_key(state))?;
        let mut response = response::send(StatusCode::OK, &hit);
        response::encode(
            &mut response,
            crate::compression::negotiate(request.headers()),
        );
        response
            .headers_mut()
            .insert("x-soundwave-node", state.node_header.clone());
        let access = access_level(route)
            .map(|level| (level, Some(state.client_ip(peer, request.headers())), uri));
        record_answer(
            state,
            route,
            request.method(),
            StatusCode::OK,
            started,
            access,
        );
        Some(response)
    }
}

pin_project_lite::pin_project! {
    /// A request body that records when it was read to its end.
    struct EndTracked {
        #[pin]
        inner: Body,
        read: Arc<AtomicBool>,
    }
}

impl EndTracked {
    fn new(inner: Body, read: Arc<AtomicBool>) -> Self {
        EndTracked { inner, read }
    }
}

impl http_body::Body for EndTracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if matches!(polled, std::task::Poll::Ready(None)) {
            this.read.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let end = self.inner.is_end_stream();
        if end {
            self.read.store(true, Ordering::Release);
        }
        end
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A route as metrics name it: the same series with and without the trailing slash.
fn route_label(route: &str) -> &str {
    match route.strip_suffix('/') {
        Some(trimmed) if !trimmed.is_empty() => trimmed,
        _ => route,
    }
}

/// `?consistency=strong` on a read: first make sure this node has applied everything the
/// leader had committed when the read began (openraft's read index), so the local read that
/// follows is linearizable. Other reads are local, from the cache where possible.
async fn strong_read_barrier(state: &AppState, strong: bool) -> ApiResult<()> {
    if strong {
        state.cluster.linearizable_barrier().await?;
    }
    Ok(())
}

/// A GET with `consistency=strong` in its query.
fn wants_strong_read<B>(request: &http::Request<B>) -> bool {
    request.method() == http::Method::GET
        && request
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|pair| pair == "consistency=strong"))
}
