//! Product images: the list (`GET /api/products/{id}/images/`), staff upload (`POST`, the
//! image as the raw body) and delete (`DELETE /api/products/{id}/images/{hash}/`), and the
//! stored bytes served at `/media/{hash}.{ext}`, immutable (the name is the content's hash).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use store::{Command, ImageFormat, ProductImage};

use super::request::IdPath;
use super::response::{no_content, send_json};
use crate::auth::Staff;
use crate::error::{ApiError, ApiResult};
use crate::images;
use crate::input;
use crate::output::{ImageJson, json_bytes};
use crate::state::AppState;

/// Content types an upload may declare; what it is comes from the bytes.
const UPLOAD_TYPES: [&str; 4] = [
    "image/jpeg",
    "image/png",
    "image/webp",
    "application/octet-stream",
];

/// Reads an upload's body: at most `limit` bytes (413 beyond, on the declared length or
/// while reading), of a content type an image may be sent with (415 otherwise).
async fn upload_body(request: Request, limit: usize) -> ApiResult<Vec<u8>> {
    let (media_type, essence) = input::media_type(&request);
    if !UPLOAD_TYPES.contains(&essence.as_str()) {
        return Err(ApiError::UnsupportedMediaType(media_type));
    }
    let body = input::read_body(request, limit).await?;
    if body.is_empty() {
        return Err(ApiError::field("image", "No file was submitted."));
    }
    Ok(body.to_vec())
}

/// A product's images, the main one first; 404 for a product not on sale.
fn images_of(state: &AppState, id: u64) -> ApiResult<Vec<ProductImage>> {
    let reader = state.read()?;
    if reader.product(id)?.filter(|p| !p.archived).is_none() {
        return Err(ApiError::NotFound);
    }
    Ok(reader.product_images(id)?)
}

pub async fn list_product_images(
    State(state): State<Arc<AppState>>,
    IdPath(id): IdPath,
) -> ApiResult<Response> {
    let images: Vec<ImageJson> = images_of(&state, id)?.iter().map(ImageJson::from).collect();
    Ok(send_json(StatusCode::OK, json_bytes(&images)))
}

pub async fn upload_product_image(
    State(state): State<Arc<AppState>>,
    _staff: Staff,
    IdPath(id): IdPath,
    request: Request,
) -> ApiResult<Response> {
    // An unknown product is a 404 before the body is read or decoded.
    if state.read()?.product(id)?.filter(|p| !p.archived).is_none() {
        return Err(ApiError::NotFound);
    }
    let bytes = upload_body(request, state.limits.max_image_bytes).await?;
    let processed = images::process(bytes).await?;
    let created = ImageJson::from(&processed.image);
    state
        .submit(Command::AddProductImage {
            product: id,
            image: processed.image,
            blobs: processed.blobs,
        })
        .await?;
    Ok(send_json(StatusCode::CREATED, json_bytes(&created)))
}

pub async fn delete_product_image(
    State(state): State<Arc<AppState>>,
    _staff: Staff,
    Path((id, hash)): Path<(String, String)>,
) -> ApiResult<Response> {
    let id = id
        .parse::<u64>()
        .ok()
        .filter(|&id| id > 0)
        .ok_or(ApiError::NotFound)?;
    if !images::is_content_hash(&hash) {
        return Err(ApiError::NotFound);
    }
    state
        .submit(Command::DeleteProductImage { product: id, hash })
        .await?;
    Ok(no_content())
}

/// Whether `If-None-Match` names `etag` (or is `*`).
fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == etag || tag == "*")
}

/// `GET /media/{hash}.{ext}`: stored bytes, cached for a year (they never change under
/// their name), `ETag` the hash, `304` on `If-None-Match`.
pub async fn serve_media(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (hash, extension) = name.split_once('.').ok_or(ApiError::NotFound)?;
    let format = ImageFormat::from_extension(extension).ok_or(ApiError::NotFound)?;
    if !images::is_content_hash(hash) {
        return Err(ApiError::NotFound);
    }
    let etag = format!("\"{hash}\"");
    let immutable = HeaderValue::from_static("public, max-age=31536000, immutable");
    let etag_value = HeaderValue::try_from(etag.as_str())
        .map_err(|e| ApiError::Internal(format!("ETag: {e}")))?;
    let bytes = state.read()?.media(&name)?.ok_or(ApiError::NotFound)?;
    let mut response = if not_modified(&headers, &etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut response = Body::from(bytes).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(format.mime_type()),
        );
        response
    };
    let out = response.headers_mut();
    out.insert(header::CACHE_CONTROL, immutable);
    out.insert(header::ETAG, etag_value);
    out.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_names_the_etag() {
        let mut headers = HeaderMap::new();
        assert!(!not_modified(&headers, "\"abc\""));
        headers.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"x\", W/\"abc\""),
        );
        assert!(not_modified(&headers, "\"abc\""));
        assert!(!not_modified(&headers, "\"abd\""));
    }
}
