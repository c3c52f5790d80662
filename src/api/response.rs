//! How handlers answer: a JSON body with its list headers ([`send`], [`send_json`]), the
//! cached-or-built body ([`cached`]), an empty 204.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};

use crate::cache::{CacheKey, CachedBody};
use crate::error::ApiResult;
use crate::state::AppState;

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
    if let Some(link) = &cached.next_link {
        headers.insert(header::LINK, link.clone());
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
