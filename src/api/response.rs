//! How handlers answer: a JSON body with its list headers ([`send`], [`send_json`]), the
//! cached-or-built body ([`cached`]), an empty 204; and the encoding it goes out in
//! ([`encode`]).

use std::sync::Arc;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};

use crate::cache::{CacheKey, CachedBody};
use crate::compression::{self, Encoding, Variants};
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
    if let Some(variants) = &cached.variants {
        response
            .extensions_mut()
            .insert(Compressible(variants.clone()));
    }
    response
}

/// What [`send`] leaves on a response whose body could be compressed, for [`encode`].
#[derive(Clone)]
struct Compressible(Arc<Variants>);

/// Sends a response in the encoding the request accepted: a body [`send`] made compressible
/// gets `Vary: Accept-Encoding`, and, on a success when the client accepts br or gzip, its
/// compressed form (made once per cache entry, see [`Variants`]) with `Content-Encoding`.
/// Both the router (`observe`) and `CachedReads` end with this, so their answers are the
/// same. Other responses (errors, the web files, which encode themselves) pass unchanged.
pub fn encode(response: &mut Response, accepted: Encoding) {
    let Some(Compressible(variants)) = response.extensions_mut().remove::<Compressible>() else {
        return;
    };
    response
        .headers_mut()
        .insert(header::VARY, compression::vary());
    if !response.status().is_success() {
        return;
    }
    if let (Some(body), Some(coding)) = (variants.get(accepted), accepted.header()) {
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_ENCODING, coding);
        headers.remove(header::CONTENT_LENGTH);
        *response.body_mut() = Body::from(body);
    }
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
    send(status, &CachedBody::new(body))
}

pub fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}
