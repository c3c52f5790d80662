//! Request bodies, unique names, and the ids and names of JSON lists.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

pub fn product_body(name: &str, stock: i64, price: &str, category: i64) -> Value {
    json!({
        "name": name,
        "stock": stock,
        "price": price,
        "description": format!("{name} description"),
        "category": category,
    })
}

pub fn items_body(items: &[(i64, i64)]) -> Value {
    json!({
        "items": items
            .iter()
            .map(|(p, q)| json!({"product": p, "quantity": q}))
            .collect::<Vec<_>>()
    })
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A username-safe unique name: `prefix_<pid>_<nanos>_<n>` (letters, digits, `_` only).
pub fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}_{}_{nanos}_{n}", std::process::id())
}

/// Ids of a JSON array of objects.
pub fn ids(items: &[Value]) -> Vec<i64> {
    items
        .iter()
        .map(|v| v["id"].as_i64().expect("object with integer id"))
        .collect()
}

/// `name`s of a JSON array of objects.
pub fn names(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|v| {
            v["name"]
                .as_str()
                .expect("object with string name")
                .to_string()
        })
        .collect()
}

/// JSON number or string id equality (`user_id` may be either, as simplejwt versions differ).
pub fn json_id_eq(v: &Value, id: i64) -> bool {
    match v {
        Value::Number(n) => n.as_i64() == Some(id),
        Value::String(s) => s == &id.to_string(),
        _ => false,
    }
}
