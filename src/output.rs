//! The JSON shapes clients see, rendered straight to bytes ready to send (and to cache).

use bytes::Bytes;
use rust_decimal::Decimal;
use serde::{Serialize, Serializer};
use store::{Category, OrderItemView, OrderView, Product, StatusChange, Timestamp, User};

/// Money as a decimal string with exactly two places: `"12000.00"`.
pub struct Money(pub Decimal);

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("{:.2}", self.0))
    }
}

/// A timestamp as RFC 3339 UTC.
pub struct Rfc3339(pub Timestamp);

impl Serialize for Rfc3339 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let formatted = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1000)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            });
        match formatted {
            Some(text) => serializer.serialize_str(&text),
            None => serializer.serialize_none(),
        }
    }
}

impl Rfc3339 {
    /// The timestamp as RFC 3339 text (empty if out of range).
    pub fn text(&self) -> String {
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1000)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default()
    }
}

/// Serializes to JSON bytes. Serializing these plain shapes cannot fail; if it ever did, the
/// client gets `null` rather than a torn body.
pub fn json_bytes<T: Serialize + ?Sized>(value: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec()))
}

#[derive(Serialize)]
pub struct CategoryJson<'a> {
    pub id: u64,
    pub name: &'a str,
}

impl<'a> From<&'a Category> for CategoryJson<'a> {
    fn from(c: &'a Category) -> Self {
        CategoryJson {
            id: c.id,
            name: &c.name,
        }
    }
}

#[derive(Serialize)]
pub struct ProductJson<'a> {
    pub id: u64,
    pub name: &'a str,
    pub stock: u32,
    pub price: Money,
    pub description: &'a str,
    pub category: u64,
}

impl<'a> From<&'a Product> for ProductJson<'a> {
    fn from(p: &'a Product) -> Self {
        ProductJson {
            id: p.id,
            name: &p.name,
            stock: p.stock,
            price: Money(p.price),
            description: &p.description,
            category: p.category,
        }
    }
}

#[derive(Serialize)]
pub struct UserJson<'a> {
    pub id: u64,
    pub username: &'a str,
    pub email: &'a str,
    pub phone_number: &'a str,
    pub is_staff: bool,
    pub date_joined: Rfc3339,
}

impl<'a> From<&'a User> for UserJson<'a> {
    fn from(u: &'a User) -> Self {
        UserJson {
            id: u.id,
            username: &u.username,
            email: &u.email,
            phone_number: &u.phone_number,
            is_staff: u.is_staff,
            date_joined: Rfc3339(u.date_joined),
        }
    }
}

#[derive(Serialize)]
pub struct OrderItemJson<'a> {
    pub id: u64,
    pub product: u64,
    pub product_name: &'a str,
    pub quantity: u32,
    pub user: &'a str,
    pub order: Option<u64>,
    pub unit_price: Option<Money>,
}

impl<'a> From<&'a OrderItemView> for OrderItemJson<'a> {
    fn from(v: &'a OrderItemView) -> Self {
        OrderItemJson {
            id: v.item.id,
            product: v.item.product,
            product_name: &v.product_name,
            quantity: v.item.quantity,
            user: &v.username,
            order: v.item.order,
            unit_price: v.item.unit_price.map(Money),
        }
    }
}

#[derive(Serialize)]
pub struct OrderJson<'a> {
    pub id: u64,
    pub user: &'a str,
    pub items: Vec<OrderItemJson<'a>>,
    pub total: Money,
    pub status: &'static str,
    pub created_at: Rfc3339,
    /// When each status was reached and by whom: only in a single order's answers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub status_history: Vec<StatusChangeJson<'a>>,
}

#[derive(Serialize)]
pub struct StatusChangeJson<'a> {
    pub status: &'static str,
    pub at: Rfc3339,
    pub by: &'a str,
}

impl<'a> From<&'a StatusChange> for StatusChangeJson<'a> {
    fn from(c: &'a StatusChange) -> Self {
        StatusChangeJson {
            status: c.status.as_str(),
            at: Rfc3339(c.at),
            by: &c.actor_name,
        }
    }
}

impl<'a> From<&'a OrderView> for OrderJson<'a> {
    fn from(v: &'a OrderView) -> Self {
        OrderJson {
            id: v.order.id,
            user: &v.username,
            items: v.items.iter().map(OrderItemJson::from).collect(),
            total: Money(v.order.total),
            status: v.order.status.as_str(),
            created_at: Rfc3339(v.order.created_at),
            status_history: v
                .status_history
                .iter()
                .map(StatusChangeJson::from)
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_has_exactly_two_places() {
        let render = |d: Decimal| String::from_utf8(json_bytes(&Money(d)).to_vec()).unwrap();
        assert_eq!(render(Decimal::new(12000, 0)), "\"12000.00\"");
        assert_eq!(render(Decimal::new(125, 1)), "\"12.50\"");
        assert_eq!(render(Decimal::new(6007, 2)), "\"60.07\"");
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let text = String::from_utf8(json_bytes(&Rfc3339(1_700_000_000_000_000)).to_vec()).unwrap();
        assert_eq!(text, "\"2023-11-14T22:13:20Z\"");
    }
}
