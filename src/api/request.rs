//! What handlers take from a request besides its body: [`IdPath`], [`QueryParams`],
//! [`PageRequest`], and who it acts for ([`Principal`], [`Staff`]).

use std::sync::Arc;

use axum::extract::{FromRequestParts, Path};
use http::request::Parts;
use http::{HeaderValue, header};

use crate::auth::{Principal, Staff, TokenType};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

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

/// A request's query parameters, decoded once (`application/x-www-form-urlencoded`), the
/// last value of a repeated key winning. A request carries a handful: a scan of a short
/// list beats building a hash map (and serde's deserializer) for each request.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct QueryParams(Vec<(String, String)>);

impl QueryParams {
    pub fn parse(query: &str) -> QueryParams {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match pairs.iter_mut().find(|(k, _)| *k == key) {
                Some(pair) => pair.1 = value.into_owned(),
                None => pairs.push((key.into_owned(), value.into_owned())),
            }
        }
        QueryParams(pairs)
    }

    pub fn get(&self, name: &str) -> Option<&String> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .uri
            .query()
            .map(QueryParams::parse)
            .unwrap_or_default())
    }
}

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

    /// The `Link` header of the next page, when entries remain after this one.
    pub fn next_link(&self, path: &str, params: &QueryParams, total: usize) -> Option<HeaderValue> {
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
        // Percent-encoded, so always a valid header value.
        HeaderValue::from_str(&format!("<{path}?{}>; rel=\"next\"", query.join("&"))).ok()
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

/// The principal an access token (`Authorization: Bearer`) names; 401 without a valid one.
impl FromRequestParts<Arc<AppState>> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> ApiResult<Self> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or(ApiError::NotAuthenticated)?;
        let token = header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or(ApiError::NotAuthenticated)?;
        let claims = state.tokens.verify(token, TokenType::Access)?;
        state
            .principal(claims.user_id)?
            .ok_or(ApiError::InvalidToken)
    }
}

/// A principal who is staff; anyone else gets 403.
impl FromRequestParts<Arc<AppState>> for Staff {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> ApiResult<Self> {
        let principal = Principal::from_request_parts(parts, state).await?;
        if principal.is_staff {
            Ok(Staff(principal))
        } else {
            Err(ApiError::Forbidden)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> QueryParams {
        QueryParams(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn query_parameters_are_decoded_and_the_last_repeated_value_wins() {
        let params = QueryParams::parse("limit=5&name=Red%20Guitar&limit=7&q=a+b&empty=&flag");
        assert_eq!(params.get("limit").map(String::as_str), Some("7"));
        assert_eq!(params.get("name").map(String::as_str), Some("Red Guitar"));
        assert_eq!(params.get("q").map(String::as_str), Some("a b"));
        assert_eq!(params.get("empty").map(String::as_str), Some(""));
        assert_eq!(params.get("flag").map(String::as_str), Some(""));
        assert_eq!(params.get("missing"), None);
        assert_eq!(params.iter().count(), 5);
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
            page.next_link("/api/products/", &query, 11),
            Some(HeaderValue::from_static(
                "</api/products/?name=red%20guitar&limit=10&offset=10>; rel=\"next\""
            ))
        );
    }
}
