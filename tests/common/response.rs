//! A fully read response ([`Resp`]) and the expectations tests state about it (status,
//! Django REST framework's error bodies, list headers).

use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use serde_json::{Value, json};

pub const MSG_NO_CREDENTIALS: &str = "Authentication credentials were not provided.";
pub const MSG_BAD_TOKEN: &str = "Given token not valid for any token type";
pub const MSG_FORBIDDEN: &str = "You do not have permission to perform this action.";
pub const MSG_NOT_FOUND: &str = "Not found.";
pub const MSG_BAD_LOGIN: &str = "No active account found with the given credentials";

/// Sends again, as a polite client does, while the node answers 503 because its password
/// work is at its bound (many sign-ups or logins at once); gives up after 60 s.
pub async fn until_not_busy<F, Fut>(send: F) -> Resp
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Resp>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut attempt: u64 = 0;
    loop {
        let r = send().await;
        let busy = r.status == 503 && r.text.contains("busy checking passwords");
        if !busy || Instant::now() > deadline {
            return r;
        }
        attempt += 1;
        // Spread the retries, so the waiting clients do not all come back at once.
        let pause = 20 + (attempt * 37 + u64::from(std::process::id())) % 150;
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// A fully read response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub method: String,
    pub url: String,
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
    /// The body parsed as JSON (`Value::Null` when it is not JSON).
    pub json: Value,
}

impl Resp {
    fn ctx(&self) -> String {
        format!(
            "{} {} -> {} body: {}",
            self.method,
            self.url,
            self.status,
            truncate(&self.text, 2000)
        )
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    #[track_caller]
    pub fn header_required(&self, name: &str) -> &str {
        self.header(name).unwrap_or_else(|| {
            panic!(
                "missing header {name}: {}\nheaders: {:?}",
                self.ctx(),
                self.headers
            )
        })
    }

    /// Assert the status; return the JSON body.
    #[track_caller]
    pub fn expect(&self, status: u16) -> &Value {
        assert_eq!(self.status, status, "unexpected status: {}", self.ctx());
        &self.json
    }

    /// Assert the status is one of `statuses`; return the JSON body.
    #[track_caller]
    pub fn expect_one_of(&self, statuses: &[u16]) -> &Value {
        assert!(
            statuses.contains(&self.status),
            "expected one of {statuses:?}: {}",
            self.ctx()
        );
        &self.json
    }

    /// Assert status and that the JSON body equals `expected` exactly.
    #[track_caller]
    pub fn expect_json(&self, status: u16, expected: &Value) {
        self.expect(status);
        assert_eq!(&self.json, expected, "unexpected body: {}", self.ctx());
    }

    /// Assert status and that the body is a JSON object whose `detail` is a non-empty string.
    #[track_caller]
    pub fn expect_detail(&self, status: u16) -> String {
        self.expect(status);
        match self.json.get("detail").and_then(Value::as_str) {
            Some(d) if !d.is_empty() => d.to_string(),
            _ => panic!(
                "expected a JSON body with a string `detail`: {}",
                self.ctx()
            ),
        }
    }

    /// Assert status and that `detail` is exactly `msg`.
    #[track_caller]
    pub fn expect_detail_eq(&self, status: u16, msg: &str) {
        let d = self.expect_detail(status);
        assert_eq!(d, msg, "unexpected detail: {}", self.ctx());
    }

    /// Assert a 400 whose JSON body has `field` as a non-empty array of strings.
    #[track_caller]
    pub fn expect_field_error(&self, field: &str) {
        self.expect(400);
        let ok = self
            .json
            .get(field)
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty() && a.iter().all(Value::is_string));
        assert!(
            ok,
            "expected 400 with field error {{\"{field}\": [\"...\"]}}: {}",
            self.ctx()
        );
    }

    /// 401 without credentials, exact body, `WWW-Authenticate: Bearer...`.
    #[track_caller]
    pub fn expect_unauthenticated(&self) {
        self.expect_json(401, &json!({"detail": MSG_NO_CREDENTIALS}));
        self.expect_www_authenticate();
    }

    /// 401 for a bad token, exact body, `WWW-Authenticate: Bearer...`.
    #[track_caller]
    pub fn expect_bad_token(&self) {
        self.expect_json(
            401,
            &json!({"detail": MSG_BAD_TOKEN, "code": "token_not_valid"}),
        );
        self.expect_www_authenticate();
    }

    #[track_caller]
    pub fn expect_www_authenticate(&self) {
        let h = self.header_required("www-authenticate");
        assert!(
            h.starts_with("Bearer"),
            "WWW-Authenticate should start with Bearer, got {h:?}: {}",
            self.ctx()
        );
    }

    #[track_caller]
    pub fn expect_forbidden(&self) {
        self.expect_json(403, &json!({"detail": MSG_FORBIDDEN}));
    }

    #[track_caller]
    pub fn expect_not_found(&self) {
        self.expect_json(404, &json!({"detail": MSG_NOT_FOUND}));
    }

    /// The body as a JSON array (panics otherwise).
    #[track_caller]
    pub fn array(&self) -> &Vec<Value> {
        self.json
            .as_array()
            .unwrap_or_else(|| panic!("expected a JSON array: {}", self.ctx()))
    }

    /// `id` of the JSON body (panics if missing / not an integer).
    #[track_caller]
    pub fn id(&self) -> i64 {
        self.json["id"]
            .as_i64()
            .unwrap_or_else(|| panic!("expected an integer `id`: {}", self.ctx()))
    }

    /// `X-Total-Count` as a number (panics if missing or not a number).
    #[track_caller]
    pub fn total_count(&self) -> u64 {
        let h = self.header_required("x-total-count");
        h.trim()
            .parse()
            .unwrap_or_else(|_| panic!("X-Total-Count not a number: {h:?}: {}", self.ctx()))
    }

    /// The URL of the `rel="next"` link in the `Link` header, if any.
    pub fn next_link(&self) -> Option<String> {
        let mut found = None;
        for value in self.headers.get_all("link") {
            let v = value.to_str().ok()?;
            for part in v.split(',') {
                let part = part.trim();
                let is_next = part
                    .split(';')
                    .skip(1)
                    .any(|p| p.trim().replace(' ', "") == "rel=\"next\"" || p.trim() == "rel=next");
                if is_next {
                    let start = part.find('<')?;
                    let end = part.find('>')?;
                    found = Some(part[start + 1..end].to_string());
                }
            }
        }
        found
    }
}

pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        s.to_string()
    } else {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}… ({} bytes)", &s[..end], s.len())
    }
}
