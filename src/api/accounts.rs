//! Sign-up, the caller's own user, and the token endpoints (obtain with a failed-login
//! throttle, refresh with rotation).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::response::Response;
use http::{HeaderMap, StatusCode};
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

fn token_pair_response(state: &AppState, user_id: u64) -> ApiResult<Response> {
    let (access, refresh) = state.tokens.issue_pair(user_id)?;
    Ok(send_json(
        StatusCode::OK,
        json_bytes(&json!({ "access": access, "refresh": refresh })),
    ))
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
            token_pair_response(&state, user.id)
        }
        _ => {
            attempt.finish(false);
            metrics::counter!("soundwave_failed_logins_total").increment(1);
            Err(ApiError::BadCredentials)
        }
    }
}

pub async fn refresh_token(
    State(state): State<Arc<AppState>>,
    body: JsonObject,
) -> ApiResult<Response> {
    let mut fields = Fields::new(&body.0, false);
    let token = fields.raw_text("refresh", 1, 4096);
    fields.finish()?;
    let token = token.ok_or(ApiError::InvalidToken)?;
    let claims = state.tokens.verify(&token, TokenType::Refresh)?;
    if state.principal(claims.user_id)?.is_none() {
        return Err(ApiError::InvalidToken);
    }
    // A password or staff change since the token was issued ended its session.
    let changed = state.read()?.credentials_changed_at(claims.user_id)?;
    if changed.is_some_and(|second| claims.iat < second) {
        return Err(ApiError::InvalidToken);
    }
    // Rotation: the old refresh token is used up, through the log like every write, so a
    // replay is refused on every node.
    state
        .submit(Command::ConsumeRefreshToken {
            jti: claims.jti,
            expires_at: claims.exp.saturating_mul(1_000_000),
            now: crate::clock::unix_micros(),
        })
        .await?;
    token_pair_response(&state, claims.user_id)
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
