//! The storefront (`/`) and the admin (`/admin/`): plain HTML, CSS and JavaScript from `web/`,
//! embedded in the binary. The pages talk to the node only through the public JSON API.
//!
//! Caching: every file has a strong `ETag` (a hash of its bytes) and `If-None-Match` is
//! answered with `304`. The pages are `no-cache` (revalidated on every load, so a new binary
//! shows at once) and refer to the assets as `/assets/NAME?v=HASH`; an asset asked for with
//! its current hash is cached for a year as `immutable`, since new content means a new URL.
//!
//! Compression: a file of at least [`compression::MIN_SIZE`] is sent as br or gzip when the
//! request accepts it, compressed once at its first such request, with `Vary:
//! Accept-Encoding` and an ETag per encoding (the hash, then `-br` or `-gz`).

use std::sync::LazyLock;

use axum::body::Body;
use axum::extract::{Path, RawQuery};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};

use crate::compression::{self, Encoding, Variants};
use crate::error::{ApiError, ApiResult};

/// The assets under `/assets/`: name, content type, bytes.
const ASSETS: [(&str, &str, &str); 5] = [
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../../web/app.css"),
    ),
    (
        "common.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/common.js"),
    ),
    (
        "store.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/store.js"),
    ),
    (
        "admin.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/admin.js"),
    ),
    (
        "admin-ops.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/admin-ops.js"),
    ),
];

const STOREFRONT_HTML: &str = include_str!("../../web/index.html");
const ADMIN_HTML: &str = include_str!("../../web/admin.html");

const HTML: &str = "text/html; charset=utf-8";
/// Pages: always revalidate (cheap with the ETag), so a new release shows at once.
const PAGE_CACHE: &str = "no-cache";
/// An asset asked for with its current hash never changes under that URL.
const VERSIONED_CACHE: &str = "public, max-age=31536000, immutable";
/// Everything the pages load comes from this origin; no inline scripts or styles.
const PAGE_CSP: &str = "default-src 'self'; img-src 'self' data:; object-src 'none'; \
                        base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// One embedded file with its content hash, and its br and gzip forms (made once, at the
/// first request for each), each with an ETag of its own.
struct File {
    content_type: &'static str,
    body: Bytes,
    hash: String,
    /// The tag of each encoding (indexed by `Encoding as usize`) and its `ETag` value.
    etags: [(String, HeaderValue); 3],
    /// `None` for a file below [`compression::MIN_SIZE`]: always sent plain.
    variants: Option<Variants>,
}

impl File {
    fn new(content_type: &'static str, body: Bytes) -> File {
        let hash = format!("{:016x}", fnv1a(&body));
        let etags = [Encoding::Identity, Encoding::Brotli, Encoding::Gzip].map(|encoding| {
            let tag = format!("{hash}{}", encoding.etag_suffix());
            let value =
                HeaderValue::from_str(&format!("\"{tag}\"")).expect("hex is a valid header");
            (tag, value)
        });
        File {
            content_type,
            variants: Variants::new(body.clone()),
            body,
            hash,
            etags,
        }
    }

    /// `200` with the body in the encoding the request accepts, or `304` when the client
    /// already holds that version in that encoding.
    fn respond(&self, request: &HeaderMap, cache_control: &'static str) -> Response {
        let accepted = compression::negotiate(request);
        let compressed = self.variants.as_ref().and_then(|v| v.get(accepted));
        let encoding = match compressed {
            Some(_) => accepted,
            None => Encoding::Identity,
        };
        let (tag, etag) = &self.etags[encoding as usize];
        let fresh = request
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .any(|value| etag_matches(value, tag));
        let mut response = if fresh {
            StatusCode::NOT_MODIFIED.into_response()
        } else {
            let body = compressed.unwrap_or_else(|| self.body.clone());
            let mut ok = (StatusCode::OK, Body::from(body)).into_response();
            let headers = ok.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(self.content_type),
            );
            if let Some(coding) = encoding.header() {
                headers.insert(header::CONTENT_ENCODING, coding);
            }
            ok
        };
        let headers = response.headers_mut();
        headers.insert(header::ETAG, etag.clone());
        if self.variants.is_some() {
            headers.insert(header::VARY, compression::vary());
        }
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static(cache_control),
        );
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        response
    }
}

/// The pages and assets, hashed once.
struct Site {
    storefront: File,
    admin: File,
    assets: Vec<(&'static str, File)>,
}

impl Site {
    fn build() -> Site {
        let assets: Vec<(&'static str, File)> = ASSETS
            .iter()
            .map(|&(name, content_type, text)| {
                (
                    name,
                    File::new(content_type, Bytes::from_static(text.as_bytes())),
                )
            })
            .collect();
        let page = |html: &str| {
            let mut html = html.to_owned();
            for (name, file) in &assets {
                let plain = format!("\"/assets/{name}\"");
                let versioned = format!("\"/assets/{name}?v={}\"", file.hash);
                html = html.replace(&plain, &versioned);
            }
            File::new(HTML, Bytes::from(html))
        };
        Site {
            storefront: page(STOREFRONT_HTML),
            admin: page(ADMIN_HTML),
            assets,
        }
    }
}

static SITE: LazyLock<Site> = LazyLock::new(Site::build);

/// Headers of an HTML page: the policy that keeps it to this origin.
fn page_response(file: &File, request: &HeaderMap) -> Response {
    let mut response = file.respond(request, PAGE_CACHE);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_CSP),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// `GET /`: the storefront.
pub async fn storefront(headers: HeaderMap) -> Response {
    page_response(&SITE.storefront, &headers)
}

/// `GET /admin/`: the staff pages.
pub async fn admin(headers: HeaderMap) -> Response {
    page_response(&SITE.admin, &headers)
}

/// `GET /assets/{name}`: a stylesheet or script; long-lived when asked for by its hash.
pub async fn asset(
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (_, file) = SITE
        .assets
        .iter()
        .find(|(known, _)| *known == name)
        .ok_or(ApiError::NotFound)?;
    let versioned = query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .any(|pair| pair.strip_prefix("v=") == Some(file.hash.as_str()));
    let cache_control = if versioned {
        VERSIONED_CACHE
    } else {
        PAGE_CACHE
    };
    Ok(file.respond(&headers, cache_control))
}

/// Does an `If-None-Match` value name this entity (`*`, or the tag, weak or strong)?
fn etag_matches(value: &HeaderValue, hash: &str) -> bool {
    let Ok(text) = value.to_str() else {
        return false;
    };
    text.split(',').map(str::trim).any(|tag| {
        tag == "*"
            || tag
                .trim_start_matches("W/")
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                == Some(hash)
    })
}

/// 64-bit FNV-1a: a small, stable content hash (not for security, only for cache keys).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_refer_to_every_asset_by_its_hash() {
        let site = Site::build();
        let pages = [&site.storefront, &site.admin];
        for page in pages {
            let html = std::str::from_utf8(&page.body).unwrap();
            assert!(
                !html.contains(".css\"") && !html.contains(".js\""),
                "an asset is referred to without its version"
            );
        }
        let all: String = pages
            .iter()
            .map(|p| std::str::from_utf8(&p.body).unwrap().to_owned())
            .collect();
        for (name, file) in &site.assets {
            assert!(
                all.contains(&format!("/assets/{name}?v={}", file.hash)),
                "{name} is not used by any page"
            );
        }
    }

    #[test]
    fn nothing_is_loaded_from_another_origin() {
        let texts = ASSETS
            .iter()
            .map(|(_, _, text)| *text)
            .chain([STOREFRONT_HTML, ADMIN_HTML]);
        let loads = [
            "=\"http",
            "='http",
            "=\"//",
            "url(http",
            "url(\"http",
            "url(//",
            "fetch(\"http",
        ];
        for text in texts {
            // An SVG's `xmlns` names a namespace; it loads nothing.
            let text = text.replace("xmlns='http://www.w3.org/2000/svg'", "");
            for pattern in loads {
                assert!(!text.contains(pattern), "{pattern} in an embedded file");
            }
        }
    }

    #[test]
    fn if_none_match_accepts_lists_weak_tags_and_star() {
        let hash = "0123456789abcdef";
        let matches = |v: &'static str| etag_matches(&HeaderValue::from_static(v), hash);
        assert!(matches("\"0123456789abcdef\""));
        assert!(matches("W/\"0123456789abcdef\""));
        assert!(matches("\"other\", \"0123456789abcdef\""));
        assert!(matches("*"));
        assert!(!matches("\"other\""));
        assert!(!matches("0123456789abcdef"));
    }

    #[test]
    fn the_hash_is_stable() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
