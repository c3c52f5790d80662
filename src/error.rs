//! [`ApiError`]: every way a request can fail, and the one place where each maps to an HTTP
//! status and a JSON body.

use std::collections::BTreeMap;

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde_json::{Value, json};
use store::{CommandOutcome, Rejection, StockShortage, StoreError};

/// Field name → messages, as Django REST framework reports validation errors.
pub type FieldErrors = BTreeMap<String, Vec<String>>;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid fields")]
    Fields(FieldErrors),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("no credentials")]
    NotAuthenticated,
    #[error("invalid token")]
    InvalidToken,
    #[error("wrong credentials")]
    BadCredentials,
    #[error("forbidden")]
    Forbidden,
    /// A peer request without the right cluster secret.
    #[error("no valid cluster secret")]
    ClusterSecretRequired,
    #[error("not found")]
    NotFound,
    #[error("conflict: {detail}")]
    Conflict { detail: String, fields: FieldErrors },
    #[error("insufficient stock")]
    InsufficientStock(Vec<StockShortage>),
    #[error("body too large")]
    PayloadTooLarge { limit: usize },
    #[error("unsupported media type")]
    UnsupportedMediaType(String),
    #[error("too many requests")]
    TooManyRequests { retry_after_secs: u64 },
    #[error("too many sign-ups from one address")]
    TooManySignups { retry_after_secs: u64 },
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The client did not send its request body within the request timeout.
    #[error("the request body did not arrive in time")]
    RequestTimeout,
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<crate::cluster::MembershipError> for ApiError {
    fn from(error: crate::cluster::MembershipError) -> Self {
        use crate::cluster::MembershipError as E;
        match error {
            E::NotLeader { .. } => {
                ApiError::Unavailable("The cluster has no leader right now; retry.".into())
            }
            E::NotMember(_) => ApiError::NotFound,
            error @ (E::IdTaken { .. } | E::Refused(_)) => ApiError::Conflict {
                detail: error.to_string(),
                fields: FieldErrors::new(),
            },
            E::Failed(reason) => ApiError::Unavailable(reason),
        }
    }
}

impl ApiError {
    pub fn field(name: &str, message: impl Into<String>) -> ApiError {
        ApiError::Fields(BTreeMap::from([(name.to_owned(), vec![message.into()])]))
    }

    /// A command answered with an outcome of another kind: a bug, reported as a 500.
    pub fn unexpected(outcome: CommandOutcome) -> ApiError {
        ApiError::Internal(format!("unexpected command outcome: {outcome:?}"))
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Fields(_) | ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotAuthenticated | ApiError::InvalidToken | ApiError::BadCredentials => {
                StatusCode::UNAUTHORIZED
            }
            ApiError::Forbidden | ApiError::ClusterSecretRequired => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } | ApiError::InsufficientStock(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooManyRequests { .. } | ApiError::TooManySignups { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn body(&self) -> Value {
        match self {
            ApiError::Fields(fields) => json!(fields),
            ApiError::BadRequest(detail) => json!({ "detail": detail }),
            ApiError::NotAuthenticated => {
                json!({ "detail": "Authentication credentials were not provided." })
            }
            ApiError::InvalidToken => json!({
                "detail": "Given token not valid for any token type",
                "code": "token_not_valid",
            }),
            ApiError::BadCredentials => {
                json!({ "detail": "No active account found with the given credentials" })
            }
            ApiError::Forbidden => {
                json!({ "detail": "You do not have permission to perform this action." })
            }
            ApiError::ClusterSecretRequired => {
                json!({ "detail": "A valid cluster secret is required." })
            }
            ApiError::NotFound => json!({ "detail": "Not found." }),
            ApiError::Conflict { detail, fields } => {
                let mut body = json!(fields);
                body["detail"] = json!(detail);
                body
            }
            ApiError::InsufficientStock(shortages) => json!({
                "detail": "Insufficient stock",
                "items": shortages.iter().map(|s| json!({
                    "product": s.product,
                    "requested": s.requested,
                    "available": s.available,
                })).collect::<Vec<_>>(),
            }),
            ApiError::PayloadTooLarge { limit } => {
                json!({ "detail": format!("Request body is too large (limit {limit} bytes).") })
            }
            ApiError::UnsupportedMediaType(kind) => {
                json!({ "detail": format!("Unsupported media type \"{kind}\" in request.") })
            }
            ApiError::TooManySignups { retry_after_secs } => json!({
                "detail": format!(
                    "Too many sign-ups from this address. Try again in {retry_after_secs} seconds."
                ),
            }),
            ApiError::TooManyRequests { retry_after_secs } => json!({
                "detail": format!(
                    "Too many failed login attempts. Try again in {retry_after_secs} seconds."
                ),
            }),
            ApiError::Unavailable(detail) => json!({ "detail": detail }),
            ApiError::RequestTimeout => {
                json!({ "detail": "Request timeout: the request body did not arrive in time." })
            }
            ApiError::Internal(_) => json!({ "detail": "Internal server error." }),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(reason) = &self {
            tracing::error!(%reason, "internal error");
        }
        let status = self.status();
        let mut response = (status, crate::output::json_bytes(&self.body())).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        match &self {
            ApiError::NotAuthenticated | ApiError::InvalidToken | ApiError::BadCredentials => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"api\""),
                );
            }
            ApiError::TooManyRequests { retry_after_secs }
            | ApiError::TooManySignups { retry_after_secs } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            ApiError::Unavailable(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::PayloadTooLarge { .. } => {
                // The rest of the body is never read, so the connection cannot be reused.
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::WriterStopped => ApiError::Unavailable("The node is shutting down.".into()),
            StoreError::Unavailable(reason) => ApiError::Unavailable(reason),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> Self {
        match rejection {
            Rejection::NotFound => ApiError::NotFound,
            Rejection::Invalid { field, message } => ApiError::field(field, message),
            Rejection::Duplicate { what, field } => ApiError::Conflict {
                detail: format!("A {what} with that {field} already exists."),
                fields: BTreeMap::from([(
                    field.to_owned(),
                    vec![format!("A {what} with that {field} already exists.")],
                )]),
            },
            Rejection::CategoryInUse => {
                conflict("Cannot delete a category that still has products.")
            }
            Rejection::InsufficientStock(shortages) => ApiError::InsufficientStock(shortages),
            Rejection::ItemAlreadyOrdered => {
                conflict("This order item is part of an order and can no longer be changed.")
            }
            Rejection::AlreadyCancelled => conflict("This order is already cancelled."),
            Rejection::IdempotencyMismatch => {
                conflict("This Idempotency-Key was already used with a different request.")
            }
            Rejection::RefreshTokenUsed => ApiError::InvalidToken,
            Rejection::WouldPromote => {
                conflict("An account that is not staff already has this username.")
            }
            Rejection::StatusChange { from, to } => ApiError::Conflict {
                detail: format!(
                    "An order that is {} cannot become {}.",
                    from.as_str(),
                    to.as_str()
                ),
                fields: BTreeMap::from([("status".to_owned(), vec![from.as_str().to_owned()])]),
            },
            Rejection::Forbidden => ApiError::Forbidden,
        }
    }
}

fn conflict(detail: &str) -> ApiError {
    ApiError::Conflict {
        detail: detail.to_owned(),
        fields: FieldErrors::new(),
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
