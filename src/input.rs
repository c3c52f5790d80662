//! Reading client input: the JSON body extractor (media type, size limit, syntax) and
//! [`Fields`], which validates one field at a time and collects DRF-style field errors.

use std::sync::Arc;

use axum::extract::{FromRequest, Request};
use http::header;
use rust_decimal::Decimal;
use serde_json::{Map, Value};

use crate::error::{ApiError, FieldErrors};
use crate::state::AppState;

/// Most digits a price may have in all, and after the point.
const MONEY_MAX_DIGITS: u32 = 10;
const MONEY_MAX_PLACES: u32 = 2;

/// A request body that must be a JSON object.
pub struct JsonObject(pub Map<String, Value>);

impl FromRequest<Arc<AppState>> for JsonObject {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &Arc<AppState>) -> Result<Self, ApiError> {
        let (media_type, essence) = media_type(&request);
        if essence != "application/json" && !essence.ends_with("+json") {
            return Err(ApiError::UnsupportedMediaType(media_type));
        }
        let body = read_body(request, state.limits.max_body_bytes).await?;
        parse_object(&body).map(JsonObject)
    }
}

/// A request's `Content-Type` as sent, and its essence (the type without parameters,
/// lower case).
pub fn media_type(request: &Request) -> (String, String) {
    let media_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let essence = media_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    (media_type, essence)
}

/// A request's body, at most `limit` bytes: 413 on a larger declared length at once, or
/// once more than `limit` bytes came.
pub async fn read_body(request: Request, limit: usize) -> Result<axum::body::Bytes, ApiError> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    axum::body::to_bytes(request.into_body(), limit)
        .await
        .map_err(|error| {
            let too_large = std::error::Error::source(&error)
                .is_some_and(|e| e.is::<http_body_util::LengthLimitError>());
            if too_large {
                ApiError::PayloadTooLarge { limit }
            } else {
                ApiError::BadRequest(format!("Could not read the request body: {error}"))
            }
        })
}

/// Parses a body that must be a JSON object.
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(ApiError::field(
            "non_field_errors",
            format!(
                "Invalid data. Expected a dictionary, but got {}.",
                json_type_name(&other)
            ),
        )),
        Err(error) => Err(ApiError::BadRequest(format!("JSON parse error - {error}"))),
    }
}

fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

/// Validates the fields of a JSON object one by one, collecting every error.
/// In `partial` mode (PATCH) a missing field is not an error.
pub struct Fields<'a> {
    object: &'a Map<String, Value>,
    partial: bool,
    errors: FieldErrors,
}

impl<'a> Fields<'a> {
    pub fn new(object: &'a Map<String, Value>, partial: bool) -> Fields<'a> {
        Fields {
            object,
            partial,
            errors: FieldErrors::new(),
        }
    }

    pub fn error(&mut self, name: &str, message: impl Into<String>) {
        self.errors
            .entry(name.to_owned())
            .or_default()
            .push(message.into());
    }

    /// The field's value when it is present and not null; records why otherwise.
    fn value(&mut self, name: &str, required: bool) -> Option<&'a Value> {
        match self.object.get(name) {
            None => {
                if required && !self.partial {
                    self.error(name, "This field is required.");
                }
                None
            }
            Some(Value::Null) => {
                self.error(name, "This field may not be null.");
                None
            }
            Some(value) => Some(value),
        }
    }

    /// A string of at most `max_chars` characters, whitespace trimmed.
    pub fn text(
        &mut self,
        name: &str,
        required: bool,
        allow_blank: bool,
        max_chars: usize,
    ) -> Option<String> {
        let value = self.value(name, required)?;
        let Value::String(text) = value else {
            self.error(name, "Not a valid string.");
            return None;
        };
        let text = text.trim();
        if text.is_empty() && !allow_blank {
            self.error(name, "This field may not be blank.");
            return None;
        }
        if text.chars().count() > max_chars {
            self.error(
                name,
                format!("Ensure this field has no more than {max_chars} characters."),
            );
            return None;
        }
        Some(text.to_owned())
    }

    /// A string taken as it is (passwords: no trimming), within a length range.
    pub fn raw_text(&mut self, name: &str, min_chars: usize, max_chars: usize) -> Option<String> {
        let value = self.value(name, true)?;
        let Value::String(text) = value else {
            self.error(name, "Not a valid string.");
            return None;
        };
        let count = text.chars().count();
        if count < min_chars {
            self.error(
                name,
                format!("Ensure this field has at least {min_chars} characters."),
            );
            return None;
        }
        if count > max_chars {
            self.error(
                name,
                format!("Ensure this field has no more than {max_chars} characters."),
            );
            return None;
        }
        Some(text.clone())
    }

    /// An integer in `min..=max`; integral JSON numbers and digit strings are accepted.
    pub fn integer(&mut self, name: &str, required: bool, min: i64, max: i64) -> Option<i64> {
        let value = self.value(name, required)?;
        let Some(number) = integer_value(value) else {
            self.error(name, "A valid integer is required.");
            return None;
        };
        if number < min {
            self.error(
                name,
                format!("Ensure this value is greater than or equal to {min}."),
            );
            return None;
        }
        if number > max {
            self.error(
                name,
                format!("Ensure this value is less than or equal to {max}."),
            );
            return None;
        }
        Some(number)
    }

    /// The id of another record (existence is checked when the command is applied).
    pub fn reference(&mut self, name: &str, required: bool) -> Option<u64> {
        let value = self.value(name, required)?;
        match integer_value(value) {
            Some(id) if id >= 1 => Some(id as u64),
            Some(id) => {
                self.error(
                    name,
                    format!("Invalid pk \"{id}\" - object does not exist."),
                );
                None
            }
            None => {
                self.error(
                    name,
                    format!(
                        "Incorrect type. Expected pk value, received {}.",
                        json_type_name(value)
                    ),
                );
                None
            }
        }
    }

    /// A non-negative amount with at most 10 digits, 2 of them after the point, given as a
    /// JSON number or a decimal string. Returned with exactly two places.
    pub fn money(&mut self, name: &str, required: bool) -> Option<Decimal> {
        let value = self.value(name, required)?;
        match parse_money(value) {
            Ok(amount) => Some(amount),
            Err(message) => {
                self.error(name, message);
                None
            }
        }
    }

    /// Every error found so far, or `Ok`.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Fields(self.errors))
        }
    }
}

fn integer_value(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 1e15)
                .map(|f| f as i64)
        }),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    }
}

/// Parses a money amount; the error is the message for the client.
pub fn parse_money(value: &Value) -> Result<Decimal, String> {
    let text = match value {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.trim().to_owned(),
        _ => return Err("A valid number is required.".into()),
    };
    let amount: Decimal = text
        .parse()
        .or_else(|_| Decimal::from_scientific(&text))
        .map_err(|_| "A valid number is required.".to_owned())?;
    let amount = amount.normalize();
    if amount.is_sign_negative() && !amount.is_zero() {
        return Err("Ensure this value is greater than or equal to 0.".into());
    }
    if amount.scale() > MONEY_MAX_PLACES {
        return Err(format!(
            "Ensure that there are no more than {MONEY_MAX_PLACES} decimal places."
        ));
    }
    let whole_digits_allowed = MONEY_MAX_DIGITS - MONEY_MAX_PLACES;
    if amount.trunc() >= Decimal::from(10u64.pow(whole_digits_allowed)) {
        return Err(format!(
            "Ensure that there are no more than {MONEY_MAX_DIGITS} digits in total."
        ));
    }
    let mut amount = amount.abs();
    amount.rescale(MONEY_MAX_PLACES);
    Ok(amount)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn money_accepts_numbers_and_strings_with_two_places() {
        assert_eq!(
            parse_money(&json!("12000")).unwrap().to_string(),
            "12000.00"
        );
        assert_eq!(parse_money(&json!(19.99)).unwrap().to_string(), "19.99");
        assert_eq!(parse_money(&json!("0.5")).unwrap().to_string(), "0.50");
        assert_eq!(
            parse_money(&json!("99999999.99")).unwrap().to_string(),
            "99999999.99"
        );
    }

    #[test]
    fn money_refuses_bad_amounts() {
        for bad in [
            json!("-1"),
            json!("1.234"),
            json!("100000000"),
            json!("abc"),
            json!(true),
        ] {
            assert!(parse_money(&bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn fields_collect_every_error() {
        let object = json!({"name": "", "stock": -1, "price": "x"});
        let object = object.as_object().unwrap();
        let mut fields = Fields::new(object, false);
        fields.text("name", true, false, 200);
        fields.integer("stock", true, 0, 10);
        fields.money("price", true);
        fields.reference("category", true);
        let Err(ApiError::Fields(errors)) = fields.finish() else {
            panic!("expected field errors");
        };
        assert_eq!(
            errors.keys().collect::<Vec<_>>(),
            ["category", "name", "price", "stock"]
        );
    }

    #[test]
    fn partial_mode_allows_missing_fields() {
        let object = json!({});
        let mut fields = Fields::new(object.as_object().unwrap(), true);
        assert_eq!(fields.text("name", true, false, 200), None);
        assert!(fields.finish().is_ok());
    }
}
