//! Sign-up, the caller's own user and password change, and the token endpoints (obtain
//! with a failed-login throttle, refresh with rotation, blacklist), with the refresh token
//! also in an HttpOnly cookie for the web pages.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::response::Response;
use http::{HeaderMap, StatusCode, header};
use serde_json::json;
use store::{Command, CommandOutcome, NewUser};

use super::response::{cached, send_json};
use crate::auth::Principal;
use crate::auth::{self, TokenType};
use crate::cache::{CacheKey, CachedBody};
use crate::error::{ApiError, ApiResult};
use crate::input::{Fields, JsonObject};
use crate::output::{UserJson, json_bytes};
use crate::state::AppState;

const USERNAME_MAX_CHARS: usize = 150;
const PASSWORD_MIN_CHARS: usize = 8;
/// Bounds the work a single login can ask of argon2.
const PASSWORD_MAX_CHARS: usize = 128;
const EMAIL_MAX_CHARS: usize = 254;
const PHONE_MAX_CHARS: usize = 15;

fn valid_username(name: &str) -> bool {
    name.chars()
        .all(|c| c.is_alphanumeric() || "@.+-_".contains(c))
}

fn valid_email(email: &str) -> bool {
    match email.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !email.chars().any(char::is_whitespace)
                && !domain.contains('@')
        }
        None => false,
    }
}

fn valid_phone(phone: &str) -> bool {
    phone
        .chars()
        .all(|c| c.is_ascii_digit() || "+ -".contains(c))
}

pub async fn sign_up(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: JsonObject,
) -> ApiResult<Response> {
    let mut fields = Fields::new(&body.0, false);
    let username = fields.text("username", true, false, USERNAME_MAX_CHARS);
    if let Some(name) = &username
        && !valid_username(name)
    {
        fields.error(
            "username",
            "Enter a valid username. This value may contain only letters, numbers, and @/./+/-/_ characters.",
        );
    }
    let password = fields.raw_text("password", PASSWORD_MIN_CHARS, PASSWORD_MAX_CHARS);
    if let (Some(password), Some(username)) = (&password, &username)
        && let Some(problem) = weak_password(password, username)
    {
        fields.error("password", problem);
    }
    let email = fields
        .text("email", false, true, EMAIL_MAX_CHARS)
        .unwrap_or_default();
    if !email.is_empty() && !valid_email(&email) {
        fields.error("email", "Enter a valid email address.");
    }
    let phone_number = fields
        .text("phone_number", false, true, PHONE_MAX_CHARS)
        .unwrap_or_default();
    if !valid_phone(&phone_number) {
        fields.error(
            "phone_number",
            "Enter a valid phone number: digits, spaces, '+' and '-' only.",
        );
    }
    fields.finish()?;
    let (Some(username), Some(password)) = (username, password) else {
        return Err(ApiError::BadRequest("Missing username or password.".into()));
    };
    // Counted before the password is hashed: a flood of sign-ups from one address costs
    // neither memory nor accounts past the limit.
    let ip = state.client_ip(peer, &headers);
    state
        .signups
        .admit(ip)
        .map_err(|retry_after_secs| ApiError::TooManySignups { retry_after_secs })?;
    let password_hash = auth::hash_password(password).await?;
    let command = Command::CreateUser(NewUser {
        username,
        email,
        phone_number,
        password_hash,
        is_staff: false,
        date_joined: crate::clock::unix_micros(),
    });
    match state.submit(command).await? {
        CommandOutcome::User(user) => Ok(send_json(
            StatusCode::CREATED,
            json_bytes(&UserJson::from(&user)),
        )),
        other => Err(ApiError::unexpected(other)),
    }
}

pub async fn me(State(state): State<Arc<AppState>>, principal: Principal) -> ApiResult<Response> {
    let key = CacheKey::Me {
        generation: state.cache.user_generation(principal.id),
        id: principal.id,
    };
    cached(&state, key, || {
        let user = state
            .read()?
            .user(principal.id)?
            .ok_or(ApiError::InvalidToken)?;
        Ok(CachedBody::new(json_bytes(&UserJson::from(&user))))
    })
}

/// A new token pair in the body (simplejwt's shape, for API clients) and the refresh token
/// also in the HttpOnly cookie (for the web pages, so a new tab is signed in). Issued no
/// earlier than the user's last password change, so it outlives that change.
fn token_pair_response(state: &AppState, user_id: u64, https: bool) -> ApiResult<Response> {
    let valid_from = state.read()?.credentials_changed_at(user_id)?;
    let (access, refresh) = state.tokens.issue_pair_from(user_id, valid_from)?;
    let mut response = send_json(
        StatusCode::OK,
        json_bytes(&json!({ "access": access, "refresh": refresh })),
    );
    let cookie = refresh_cookie::set(&refresh, state.tokens.refresh_lifetime_secs(), https);
    response.headers_mut().append(header::SET_COOKIE, cookie);
    Ok(response)
}

pub async fn obtain_token(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: JsonObject,
) -> ApiResult<Response> {
    let mut fields = Fields::new(&body.0, false);
    let username = fields.text("username", true, false, USERNAME_MAX_CHARS);
    let password = fields.raw_text("password", 1, PASSWORD_MAX_CHARS);
    fields.finish()?;
    let (Some(username), Some(password)) = (username, password) else {
        return Err(ApiError::BadRequest("Missing username or password.".into()));
    };
    let ip = state.client_ip(peer, &headers);
    // Admitted before the password is checked, and counted while it is: concurrent guesses
    // cannot get past the limit.
    let attempt = state
        .throttle
        .begin(ip, &username)
        .map_err(|retry_after_secs| ApiError::TooManyRequests { retry_after_secs })?;
    let user = state.read()?.user_by_username(&username)?;
    let hash = user.as_ref().map(|u| u.password_hash.clone());
    let verified = auth::verify_password(password, hash).await?;
    // A user deactivated by staff has no active account, as Django says.
    let active = match &user {
        Some(user) => state.read()?.user_is_active(user.id)?,
        None => false,
    };
    match user {
        Some(user) if verified && active => {
            attempt.finish(true);
            token_pair_response(
                &state,
                user.id,
                refresh_cookie::https(&state, peer, &headers),
            )
        }
        _ => {
            attempt.finish(false);
            metrics::counter!("soundwave_failed_logins_total").increment(1);
            Err(ApiError::BadCredentials)
        }
    }
}

/// The refresh token a request presents: `refresh` in the body (simplejwt's API clients),
/// or, when the body has no such field, the refresh cookie (the web pages).
fn presented_refresh_token(body: &JsonObject, headers: &HeaderMap) -> ApiResult<String> {
    if !body.0.contains_key("refresh")
        && let Some(token) = refresh_cookie::read(headers)
    {
        return Ok(token);
    }
    let mut fields = Fields::new(&body.0, false);
    let token = fields.raw_text("refresh", 1, 4096);
    fields.finish()?;
    token.ok_or(ApiError::InvalidToken)
}

/// The claims of a refresh token that is still good: valid, of a user who exists, issued
/// after the user's last password or staff change.
fn live_refresh_claims(state: &AppState, token: &str) -> ApiResult<auth::Claims> {
    let claims = state.tokens.verify(token, TokenType::Refresh)?;
    if state.principal(claims.user_id)?.is_none() {
        return Err(ApiError::InvalidToken);
    }
    // A password or staff change since the token was issued ended its session.
    let changed = state.read()?.credentials_changed_at(claims.user_id)?;
    if changed.is_some_and(|second| claims.iat < second) {
        return Err(ApiError::InvalidToken);
    }
    Ok(claims)
}

/// Uses a refresh token up, through the log like every write, so a replay is refused on
/// every node; a token used before is refused (401).
async fn consume_refresh_token(state: &AppState, claims: &auth::Claims) -> ApiResult<()> {
    state
        .submit(Command::ConsumeRefreshToken {
            jti: claims.jti.clone(),
            expires_at: claims.exp.saturating_mul(1_000_000),
            now: crate::clock::unix_micros(),
        })
        .await?;
    Ok(())
}

pub async fn refresh_token(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: JsonObject,
) -> ApiResult<Response> {
    let token = presented_refresh_token(&body, &headers)?;
    let claims = live_refresh_claims(&state, &token)?;
    // Rotation: the old refresh token is used up.
    consume_refresh_token(&state, &claims).await?;
    token_pair_response(
        &state,
        claims.user_id,
        refresh_cookie::https(&state, peer, &headers),
    )
}

/// Logout, simplejwt's `TokenBlacklistView`: `{"refresh": ...}` (or the refresh cookie) is
/// refused from then on; `200 {}`. The cookie is cleared.
pub async fn blacklist_token(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: JsonObject,
) -> ApiResult<Response> {
    let token = presented_refresh_token(&body, &headers)?;
    let claims = state.tokens.verify(&token, TokenType::Refresh)?;
    consume_refresh_token(&state, &claims).await?;
    let mut response = send_json(StatusCode::OK, json_bytes(&json!({})));
    let https = refresh_cookie::https(&state, peer, &headers);
    response
        .headers_mut()
        .append(header::SET_COOKIE, refresh_cookie::clear(https));
    Ok(response)
}

/// `POST /api/users/me/password/`: `current_password` and `new_password` (the sign-up
/// rules). Every refresh token of the user issued before the change is refused from then
/// on; the answer is a new token pair for the caller, as a login gives.
pub async fn change_password(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    principal: Principal,
    body: JsonObject,
) -> ApiResult<Response> {
    let mut fields = Fields::new(&body.0, false);
    let current = fields.raw_text("current_password", 1, PASSWORD_MAX_CHARS);
    let new = fields.raw_text("new_password", PASSWORD_MIN_CHARS, PASSWORD_MAX_CHARS);
    if let Some(new) = &new
        && let Some(problem) = weak_password(new, &principal.username)
    {
        fields.error("new_password", problem);
    }
    if let (Some(current), Some(new)) = (&current, &new)
        && current == new
    {
        fields.error(
            "new_password",
            "The new password must differ from the current one.",
        );
    }
    fields.finish()?;
    let (Some(current), Some(new)) = (current, new) else {
        return Err(ApiError::BadRequest("Missing password.".into()));
    };
    // The current password is guessed against the login throttle, so a stolen access
    // token cannot try passwords faster than a login form.
    let ip = state.client_ip(peer, &headers);
    let attempt = state
        .throttle
        .begin(ip, &principal.username)
        .map_err(|retry_after_secs| ApiError::TooManyRequests { retry_after_secs })?;
    let user = state
        .read()?
        .user(principal.id)?
        .ok_or(ApiError::InvalidToken)?;
    let verified = auth::verify_password(current, Some(user.password_hash)).await?;
    attempt.finish(verified);
    if !verified {
        return Err(ApiError::field(
            "current_password",
            "Your current password was entered incorrectly.",
        ));
    }
    let password_hash = auth::hash_password(new).await?;
    state
        .submit(Command::ChangePassword {
            user: principal.id,
            password_hash,
            at: crate::clock::unix_micros(),
        })
        .await?;
    token_pair_response(
        &state,
        principal.id,
        refresh_cookie::https(&state, peer, &headers),
    )
}

/// The refresh token's cookie, for the web pages: `HttpOnly` (no script reads it),
/// `SameSite=Strict` (no other site's page sends it), `Path=/api/token/` (sent only to the
/// refresh and logout endpoints, which return tokens in the body, never act on the
/// caller's behalf otherwise), `Secure` when the request came over https.
mod refresh_cookie {
    use std::net::SocketAddr;

    use http::{HeaderMap, HeaderValue, header};

    use crate::state::AppState;

    pub(super) const NAME: &str = "sw_refresh";
    const ATTRIBUTES: &str = "Path=/api/token/; HttpOnly; SameSite=Strict";

    /// Whether the client's request came over https: the balancer (a trusted proxy) says so
    /// in `X-Forwarded-Proto`.
    pub(super) fn https(state: &AppState, peer: SocketAddr, headers: &HeaderMap) -> bool {
        state.trusted_proxies.contains(&peer.ip())
            && headers
                .get("x-forwarded-proto")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"))
    }

    fn header_value(text: String) -> HeaderValue {
        // Tokens are base64url and dots: always a valid header value.
        HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    pub(super) fn set(token: &str, max_age_secs: u64, https: bool) -> HeaderValue {
        let secure = if https { "; Secure" } else { "" };
        header_value(format!(
            "{NAME}={token}; Max-Age={max_age_secs}; {ATTRIBUTES}{secure}"
        ))
    }

    pub(super) fn clear(https: bool) -> HeaderValue {
        let secure = if https { "; Secure" } else { "" };
        header_value(format!("{NAME}=; Max-Age=0; {ATTRIBUTES}{secure}"))
    }

    /// The refresh token in the request's `Cookie` headers, if any.
    pub(super) fn read(headers: &HeaderMap) -> Option<String> {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|line| line.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, value)| *name == NAME && !value.is_empty())
            .map(|(_, value)| value.to_owned())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_cookie_is_read_among_others_and_set_with_its_attributes() {
            let mut headers = HeaderMap::new();
            headers.append(
                header::COOKIE,
                HeaderValue::from_static("a=1; sw_refresh=x.y.z"),
            );
            assert_eq!(read(&headers).as_deref(), Some("x.y.z"));
            assert_eq!(read(&HeaderMap::new()), None);
            let mut cleared = HeaderMap::new();
            cleared.append(header::COOKIE, HeaderValue::from_static("sw_refresh="));
            assert_eq!(read(&cleared), None);
            assert_eq!(
                set("t", 60, false),
                "sw_refresh=t; Max-Age=60; Path=/api/token/; HttpOnly; SameSite=Strict"
            );
            assert!(set("t", 60, true).to_str().unwrap().ends_with("; Secure"));
            assert!(clear(false).to_str().unwrap().contains("Max-Age=0"));
        }
    }
}

/// Passwords guessed first (lists of leaked passwords, the shop's own name), at least
/// [`PASSWORD_MIN_CHARS`] long; compared lowercased.
const COMMON_PASSWORDS: &[&str] = &[
    "password",
    "password1",
    "password12",
    "password123",
    "passw0rd",
    "p@ssw0rd",
    "12345678",
    "123456789",
    "1234567890",
    "87654321",
    "11111111",
    "00000000",
    "88888888",
    "12341234",
    "qwertyui",
    "qwerty12",
    "qwerty123",
    "qwertyuiop",
    "1q2w3e4r",
    "1qaz2wsx",
    "q1w2e3r4",
    "zaq12wsx",
    "asdfghjk",
    "iloveyou",
    "sunshine",
    "princess",
    "football",
    "baseball",
    "welcome1",
    "abc12345",
    "abcd1234",
    "letmein1",
    "trustno1",
    "admin123",
    "administrator",
    "superman",
    "starwars",
    "whatever",
    "changeme",
    "computer",
    "internet",
    "michelle",
    "jennifer",
    "dragon12",
    "monkey12",
    "master12",
    "soundwave",
    "soundwave1",
    "musician",
    "guitar12",
    "metallica",
    "rockandroll",
];

/// Why a password is too weak, Django's way: too common, entirely numeric, or too close to
/// the username.
fn weak_password(password: &str, username: &str) -> Option<&'static str> {
    let lower = password.to_lowercase();
    let name = username.to_lowercase();
    if COMMON_PASSWORDS.contains(&lower.as_str()) {
        Some("This password is too common.")
    } else if password.chars().all(|c| c.is_ascii_digit()) {
        Some("This password is entirely numeric.")
    } else if lower == name
        || (name.chars().count() >= 4 && lower.contains(&name))
        || (lower.chars().count() >= 4 && name.contains(&lower))
    {
        Some("The password is too similar to the username.")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weak_passwords_are_named() {
        assert_eq!(
            weak_password("Password1", "ann"),
            Some("This password is too common.")
        );
        assert_eq!(
            weak_password("20261204", "ann"),
            Some("This password is entirely numeric.")
        );
        assert_eq!(
            weak_password("drummer-boy", "Drummer"),
            Some("The password is too similar to the username.")
        );
        assert_eq!(
            weak_password("alexandra", "alexandra"),
            Some("The password is too similar to the username.")
        );
        assert_eq!(weak_password("s3cret-Passw0rd", "drummer"), None);
    }

    #[test]
    fn usernames_allow_letters_digits_and_django_punctuation() {
        assert!(valid_username("john.doe+shop@x-y_z"));
        assert!(valid_username("Zoë"));
        assert!(!valid_username("john doe"));
        assert!(!valid_username("john/doe"));
    }

    #[test]
    fn emails_and_phones_are_checked() {
        assert!(valid_email("a@b.co"));
        assert!(!valid_email("a@b"));
        assert!(!valid_email("@b.co"));
        assert!(valid_phone("+44 20-7946 0958"));
        assert!(!valid_phone("call me"));
    }
}
