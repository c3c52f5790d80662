//! Authentication: simplejwt-compatible HS256 tokens ([`TokenService`]), argon2id password
//! hashing off the async runtime, the failed-login throttle and the sign-up limit, and who
//! a request acts for ([`Principal`], [`Staff`]; the API's extractors make them from an
//! `Authorization: Bearer` header).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version};
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use store::Id;

use crate::clock::unix_seconds;
use crate::error::{ApiError, ApiResult};
use crate::random::random_hex;

/// OWASP's argon2id recommendation: 19 MiB of memory, 2 iterations, 1 lane.
const ARGON2_MEMORY_KIB: u32 = 19 * 1024;
const ARGON2_ITERATIONS: u32 = 2;
const ARGON2_LANES: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    Access,
    Refresh,
}

impl TokenType {
    fn as_str(self) -> &'static str {
        match self {
            TokenType::Access => "access",
            TokenType::Refresh => "refresh",
        }
    }
}

/// The claims djangorestframework-simplejwt puts in its tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub token_type: String,
    pub exp: i64,
    pub iat: i64,
    pub jti: String,
    pub user_id: Id,
}

/// Issues and verifies HS256 tokens with one secret.
pub struct TokenService {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    access_lifetime: Duration,
    refresh_lifetime: Duration,
}

impl TokenService {
    pub fn new(secret: &[u8], access_lifetime: Duration, refresh_lifetime: Duration) -> Self {
        let mut validation = Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.leeway = 0;
        // A token with `nbf` is refused before that time (we never set it; a forger might).
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iat"]);
        TokenService {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            access_lifetime,
            refresh_lifetime,
        }
    }

    fn issue(&self, user_id: Id, kind: TokenType, now: i64) -> ApiResult<String> {
        let lifetime = match kind {
            TokenType::Access => self.access_lifetime,
            TokenType::Refresh => self.refresh_lifetime,
        };
        let claims = Claims {
            token_type: kind.as_str().to_owned(),
            exp: now + lifetime.as_secs() as i64,
            iat: now,
            jti: random_hex(16)?,
            user_id,
        };
        jsonwebtoken::encode(&Header::default(), &claims, &self.encoding)
            .map_err(|e| ApiError::Internal(format!("cannot sign a token: {e}")))
    }

    /// How long a refresh token lives, in seconds (the refresh cookie's `Max-Age`).
    pub fn refresh_lifetime_secs(&self) -> u64 {
        self.refresh_lifetime.as_secs()
    }

    /// A fresh `(access, refresh)` pair.
    pub fn issue_pair(&self, user_id: Id) -> ApiResult<(String, String)> {
        self.issue_pair_from(user_id, None)
    }

    /// A fresh `(access, refresh)` pair issued no earlier than `valid_from` (the second
    /// from which a user's sessions count after a password change, which may be the next
    /// second): a pair issued just after a change is not taken for one from before it.
    pub fn issue_pair_from(
        &self,
        user_id: Id,
        valid_from: Option<i64>,
    ) -> ApiResult<(String, String)> {
        let now = unix_seconds().max(valid_from.unwrap_or(i64::MIN));
        Ok((
            self.issue(user_id, TokenType::Access, now)?,
            self.issue(user_id, TokenType::Refresh, now)?,
        ))
    }

    /// The claims of a valid, unexpired HS256 token of the expected type.
    pub fn verify(&self, token: &str, expected: TokenType) -> ApiResult<Claims> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|_| ApiError::InvalidToken)?;
        if data.claims.token_type != expected.as_str() {
            return Err(ApiError::InvalidToken);
        }
        Ok(data.claims)
    }
}

fn argon2() -> Argon2<'static> {
    let params =
        Params::new(ARGON2_MEMORY_KIB, ARGON2_ITERATIONS, ARGON2_LANES, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

fn hash_password_blocking(password: &str) -> ApiResult<String> {
    argon2()
        .hash_password(password.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|e| ApiError::Internal(format!("cannot hash a password: {e}")))
}

fn verify_password_blocking(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            argon2()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Bounds password work: argon2id takes 19 MiB and a core for tens of milliseconds per
/// hash or check, so a flood of sign-ups or logins must not run them all at once (the
/// blocking pool alone would allow 512, about 9.5 GiB). At most [`HashingGate::running`]
/// run, one per core; [`HashingGate::queued`] more wait; beyond that the request gets 503
/// with `Retry-After` at once.
struct HashingGate {
    permits: Arc<tokio::sync::Semaphore>,
    /// Running and waiting, together.
    admitted: Arc<std::sync::atomic::AtomicUsize>,
    max_admitted: usize,
}

impl HashingGate {
    fn running() -> usize {
        std::thread::available_parallelism().map_or(2, usize::from)
    }

    fn queued() -> usize {
        4 * Self::running()
    }

    fn get() -> &'static HashingGate {
        static GATE: OnceLock<HashingGate> = OnceLock::new();
        GATE.get_or_init(|| HashingGate {
            permits: Arc::new(tokio::sync::Semaphore::new(Self::running())),
            admitted: Arc::default(),
            max_admitted: Self::running() + Self::queued(),
        })
    }
}

/// Leaves the gate's count when dropped: when the work is done, or its wait is cancelled.
struct Admitted(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Runs password work on the blocking pool through the [`HashingGate`]. The permit moves
/// into the blocking task: a cancelled request does not free it before the work ends.
async fn password_work<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> ApiResult<T> {
    let gate = HashingGate::get();
    let before = gate
        .admitted
        .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    let admitted = Admitted(gate.admitted.clone());
    if before >= gate.max_admitted {
        metrics::counter!("soundwave_password_work_refused_total").increment(1);
        return Err(ApiError::Unavailable(
            "The server is busy checking passwords; try again shortly.".into(),
        ));
    }
    let permit = gate
        .permits
        .clone()
        .acquire_owned()
        .await
        .map_err(|e| ApiError::Internal(format!("password gate closed: {e}")))?;
    tokio::task::spawn_blocking(move || {
        let result = work();
        drop((permit, admitted));
        result
    })
    .await
    .map_err(|e| ApiError::Internal(format!("password task failed: {e}")))
}

/// Hashes a password with argon2id on the blocking pool (bounded by the [`HashingGate`]).
pub async fn hash_password(password: String) -> ApiResult<String> {
    password_work(move || hash_password_blocking(&password)).await?
}

/// Checks a password on the blocking pool (bounded by the [`HashingGate`]). With no hash
/// (unknown user) it still spends the time of one verification, so response times do not
/// reveal which usernames exist.
pub async fn verify_password(password: String, hash: Option<String>) -> ApiResult<bool> {
    static DECOY: OnceLock<String> = OnceLock::new();
    password_work(move || match hash {
        Some(hash) => Ok(verify_password_blocking(&password, &hash)),
        None => {
            let decoy = match DECOY.get() {
                Some(decoy) => decoy.clone(),
                None => {
                    let fresh = hash_password_blocking(&random_hex(16)?)?;
                    DECOY.get_or_init(|| fresh).clone()
                }
            };
            verify_password_blocking(&password, &decoy);
            Ok(false)
        }
    })
    .await?
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ThrottleKey {
    /// One username from one client IP: the tight limit, so an attacker elsewhere cannot
    /// lock the owner out (OWASP's advice).
    Pair(String, IpAddr),
    /// One username from anywhere: a looser limit against guesses spread over many IPs.
    Username(String),
    /// One client IP, whatever the usernames: against spraying one password over many.
    Ip(IpAddr),
}

#[derive(Debug, Clone, Copy)]
struct FailureWindow {
    started: Instant,
    failures: u32,
    /// Attempts admitted whose password check has not finished: they count against the
    /// limit, so concurrent guesses cannot all get past it.
    in_flight: u32,
}

/// The three limits of [`LoginThrottle`], failed logins per window.
#[derive(Debug, Clone, Copy)]
pub struct LoginLimits {
    pub per_username_and_ip: u32,
    pub per_username: u32,
    pub per_ip: u32,
    pub window: Duration,
}

/// Counts failed logins per username and client IP, per username and per client IP, in
/// fixed windows. An attempt is admitted, and counted as in flight, before its password is
/// checked, atomically under one lock; past any limit it is refused (429) until the window
/// ends.
pub struct LoginThrottle {
    limits: LoginLimits,
    windows: Mutex<HashMap<ThrottleKey, FailureWindow>>,
}

/// Windows kept before expired ones are swept.
const THROTTLE_SWEEP_AT: usize = 100_000;

/// An admitted login attempt. Say how it ended with [`LoginAttempt::finish`]; dropped
/// unfinished (the request was cancelled), it only leaves the in-flight count.
pub struct LoginAttempt<'a> {
    throttle: &'a LoginThrottle,
    keys: Option<[ThrottleKey; 3]>,
}

impl LoginAttempt<'_> {
    /// A failure counts against every limit; a success forgets this username's failures
    /// from this IP (not those from elsewhere, which may be an attack in progress).
    pub fn finish(mut self, succeeded: bool) {
        if let Some(keys) = self.keys.take() {
            self.throttle.settle(keys, Some(succeeded));
        }
    }
}

impl Drop for LoginAttempt<'_> {
    fn drop(&mut self) {
        if let Some(keys) = self.keys.take() {
            self.throttle.settle(keys, None);
        }
    }
}

impl LoginThrottle {
    pub fn new(limits: LoginLimits) -> Self {
        LoginThrottle {
            limits,
            windows: Mutex::new(HashMap::new()),
        }
    }

    fn keys(ip: IpAddr, username: &str) -> [ThrottleKey; 3] {
        [
            ThrottleKey::Pair(username.to_owned(), ip),
            ThrottleKey::Username(username.to_owned()),
            ThrottleKey::Ip(ip),
        ]
    }

    fn limit(&self, key: &ThrottleKey) -> u32 {
        match key {
            ThrottleKey::Pair(..) => self.limits.per_username_and_ip,
            ThrottleKey::Username(_) => self.limits.per_username,
            ThrottleKey::Ip(_) => self.limits.per_ip,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ThrottleKey, FailureWindow>> {
        self.windows.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits one attempt for `username` from `ip`, or `Err(seconds to wait)` when a limit
    /// is reached, counting the attempts still being checked.
    pub fn begin(&self, ip: IpAddr, username: &str) -> Result<LoginAttempt<'_>, u64> {
        let now = Instant::now();
        let window_length = self.limits.window;
        let keys = Self::keys(ip, username);
        let mut windows = self.lock();
        if windows.len() >= THROTTLE_SWEEP_AT {
            windows.retain(|_, w| w.in_flight > 0 || now.duration_since(w.started) < window_length);
        }
        for key in &keys {
            let Some(window) = windows.get(key) else {
                continue;
            };
            let elapsed = now.duration_since(window.started);
            let failures = if elapsed < window_length {
                window.failures
            } else {
                0
            };
            if failures + window.in_flight >= self.limit(key) {
                let wait = if failures >= self.limit(key) {
                    window_length.saturating_sub(elapsed).as_secs()
                } else {
                    0
                };
                return Err(wait.max(1));
            }
        }
        for key in &keys {
            let window = windows.entry(key.clone()).or_insert(FailureWindow {
                started: now,
                failures: 0,
                in_flight: 0,
            });
            window.in_flight += 1;
        }
        Ok(LoginAttempt {
            throttle: self,
            keys: Some(keys),
        })
    }

    fn settle(&self, keys: [ThrottleKey; 3], succeeded: Option<bool>) {
        let now = Instant::now();
        let mut windows = self.lock();
        for key in keys {
            let Some(window) = windows.get_mut(&key) else {
                continue;
            };
            window.in_flight = window.in_flight.saturating_sub(1);
            if now.duration_since(window.started) >= self.limits.window {
                window.started = now;
                window.failures = 0;
            }
            match succeeded {
                Some(false) => window.failures += 1,
                Some(true) if matches!(key, ThrottleKey::Pair(..)) => window.failures = 0,
                _ => {}
            }
            if window.failures == 0 && window.in_flight == 0 {
                windows.remove(&key);
            }
        }
    }
}

/// Sign-ups per client IP in fixed windows of an hour; past the limit, refused (429) until
/// the window ends.
pub struct SignupLimit {
    per_ip_per_hour: u32,
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

/// The window of [`SignupLimit`].
const SIGNUP_WINDOW: Duration = Duration::from_secs(3600);

impl SignupLimit {
    pub fn new(per_ip_per_hour: u32) -> Self {
        SignupLimit {
            per_ip_per_hour,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one sign-up from `ip`, or `Err(seconds to wait)` past the limit.
    pub fn admit(&self, ip: IpAddr) -> Result<(), u64> {
        let now = Instant::now();
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if windows.len() >= THROTTLE_SWEEP_AT {
            windows.retain(|_, (started, _)| now.duration_since(*started) < SIGNUP_WINDOW);
        }
        let (started, count) = windows.entry(ip).or_insert((now, 0));
        if now.duration_since(*started) >= SIGNUP_WINDOW {
            (*started, *count) = (now, 0);
        }
        if *count >= self.per_ip_per_hour {
            let left = SIGNUP_WINDOW.saturating_sub(now.duration_since(*started));
            return Err(left.as_secs().max(1));
        }
        *count += 1;
        Ok(())
    }
}

/// Who a token belongs to, as far as permissions go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub id: Id,
    pub username: String,
    pub is_staff: bool,
}

/// A principal who is staff; anyone else gets 403.
pub struct Staff(pub Principal);

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> TokenService {
        TokenService::new(
            b"test-secret",
            Duration::from_secs(300),
            Duration::from_secs(600),
        )
    }

    #[test]
    fn tokens_round_trip_and_types_are_not_interchangeable() {
        let tokens = service();
        let (access, refresh) = tokens.issue_pair(42).unwrap();
        assert_eq!(
            tokens.verify(&access, TokenType::Access).unwrap().user_id,
            42
        );
        assert_eq!(
            tokens.verify(&refresh, TokenType::Refresh).unwrap().user_id,
            42
        );
        assert!(tokens.verify(&access, TokenType::Refresh).is_err());
        assert!(tokens.verify(&refresh, TokenType::Access).is_err());
    }

    #[test]
    fn tokens_of_another_secret_are_rejected() {
        let other = TokenService::new(b"other", Duration::from_secs(300), Duration::from_secs(600));
        let (access, _) = other.issue_pair(1).unwrap();
        assert!(service().verify(&access, TokenType::Access).is_err());
    }

    #[test]
    fn passwords_verify_only_with_the_right_password() {
        let hash = hash_password_blocking("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(verify_password_blocking("correct horse", &hash));
        assert!(!verify_password_blocking("wrong horse", &hash));
    }

    fn limits(per_pair: u32, per_username: u32, per_ip: u32) -> LoginLimits {
        LoginLimits {
            per_username_and_ip: per_pair,
            per_username,
            per_ip,
            window: Duration::from_secs(60),
        }
    }

    fn fail(throttle: &LoginThrottle, ip: IpAddr, username: &str) {
        throttle
            .begin(ip, username)
            .expect("admitted")
            .finish(false);
    }

    #[test]
    fn the_throttle_locks_a_username_from_one_ip_after_too_many_failures() {
        let throttle = LoginThrottle::new(limits(2, 100, 100));
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        let elsewhere: IpAddr = "127.0.0.10".parse().unwrap();
        fail(&throttle, ip, "bob");
        fail(&throttle, ip, "bob");
        assert!(throttle.begin(ip, "bob").is_err());
        assert!(
            throttle.begin(ip, "alice").is_ok(),
            "other usernames are not locked"
        );
        let owner = throttle
            .begin(elsewhere, "bob")
            .expect("the owner elsewhere gets in");
        owner.finish(true);
    }

    #[test]
    fn a_success_forgets_the_failures_from_its_ip_only() {
        let throttle = LoginThrottle::new(limits(2, 3, 100));
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        let attacker: IpAddr = "127.0.0.66".parse().unwrap();
        fail(&throttle, ip, "bob");
        throttle.begin(ip, "bob").unwrap().finish(true);
        fail(&throttle, ip, "bob");
        assert!(
            throttle.begin(ip, "bob").is_ok(),
            "the pair count restarted"
        );
        fail(&throttle, attacker, "bob");
        assert!(
            throttle.begin(ip, "bob").is_err(),
            "three failures for bob from anywhere reach the per-username limit"
        );
    }

    #[test]
    fn attempts_in_flight_count_against_the_limit() {
        let throttle = LoginThrottle::new(limits(5, 100, 100));
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        let admitted: Vec<_> = (0..30)
            .filter_map(|_| throttle.begin(ip, "bob").ok())
            .collect();
        assert_eq!(admitted.len(), 5, "only the limit is admitted at once");
        drop(admitted);
        assert!(
            throttle.begin(ip, "bob").is_ok(),
            "cancelled attempts are not failures"
        );
        assert!(throttle.lock().len() <= 3);
    }

    #[test]
    fn the_ip_limit_spans_usernames() {
        let throttle = LoginThrottle::new(limits(5, 100, 3));
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        for name in ["a", "b", "c"] {
            fail(&throttle, ip, name);
        }
        assert!(throttle.begin(ip, "d").is_err());
        assert!(throttle.begin("127.0.0.8".parse().unwrap(), "d").is_ok());
    }
}
