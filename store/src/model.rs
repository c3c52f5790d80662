//! Domain records as they are stored (bincode) and handed to the HTTP layer.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Every record id: assigned from a counter in the database, never reused.
pub type Id = u64;

/// Microseconds since the Unix epoch (UTC). Carried inside commands; apply never reads a clock.
pub type Timestamp = i64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Category {
    pub id: Id,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    pub id: Id,
    pub name: String,
    pub stock: u32,
    #[serde(with = "rust_decimal::serde::str")]
    pub price: Decimal,
    pub description: String,
    pub category: Id,
    /// Set once the product appears in an order: such a product is archived, never erased.
    pub ordered: bool,
    /// Deleted by an admin while orders still show it: hidden from listings, not for sale.
    pub archived: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: Id,
    pub username: String,
    pub email: String,
    pub phone_number: String,
    pub password_hash: String,
    pub is_staff: bool,
    pub date_joined: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderItem {
    pub id: Id,
    pub product: Id,
    pub quantity: u32,
    pub user: Id,
    pub order: Option<Id>,
    /// Frozen when an order takes the line; `None` while it is a cart line.
    #[serde(with = "rust_decimal::serde::str_option")]
    pub unit_price: Option<Decimal>,
    /// Frozen when an order takes the line, so orders keep their names after a rename or delete.
    pub product_name: Option<String>,
    pub created_at: Timestamp,
}

/// Where an order is: placed → paid → shipped → delivered, or cancelled from placed or
/// paid. New statuses go at the end (records store the variant's index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum OrderStatus {
    Placed,
    Cancelled,
    Paid,
    Shipped,
    Delivered,
}

impl OrderStatus {
    /// Every status, in the order an order goes through them (cancelled last).
    pub const ALL: [OrderStatus; 5] = [
        OrderStatus::Placed,
        OrderStatus::Paid,
        OrderStatus::Shipped,
        OrderStatus::Delivered,
        OrderStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Placed => "placed",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::Paid => "paid",
            OrderStatus::Shipped => "shipped",
            OrderStatus::Delivered => "delivered",
        }
    }

    /// The status named `name` (as [`as_str`](Self::as_str) spells it).
    pub fn parse(name: &str) -> Option<OrderStatus> {
        OrderStatus::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Whether an order may move from this status to `next`: one step forward, or
    /// cancelled from placed or paid.
    pub fn may_become(self, next: OrderStatus) -> bool {
        use OrderStatus::*;
        matches!(
            (self, next),
            (Placed, Paid) | (Paid, Shipped) | (Shipped, Delivered) | (Placed | Paid, Cancelled)
        )
    }

    /// The key of this status in the status-change table (its stored variant index).
    pub(crate) fn code(self) -> u8 {
        match self {
            OrderStatus::Placed => 0,
            OrderStatus::Cancelled => 1,
            OrderStatus::Paid => 2,
            OrderStatus::Shipped => 3,
            OrderStatus::Delivered => 4,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<OrderStatus> {
        OrderStatus::ALL.into_iter().find(|s| s.code() == code)
    }
}

/// When an order reached a status, and who moved it there (for placed: the customer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChange {
    pub status: OrderStatus,
    pub at: Timestamp,
    pub actor: Id,
    /// The actor's username (filled by the reader; empty if the user is gone).
    pub actor_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub id: Id,
    pub user: Id,
    pub items: Vec<Id>,
    #[serde(with = "rust_decimal::serde::str")]
    pub total: Decimal,
    pub status: OrderStatus,
    pub created_at: Timestamp,
}

/// An order with everything its JSON shape needs, read in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderView {
    pub order: Order,
    pub username: String,
    pub items: Vec<OrderItemView>,
    /// When each status was reached, oldest first; only a single order's read fills it
    /// (lists leave it empty). Orders cancelled by the `CancelOrder` command of older
    /// logs have no time for it.
    pub status_history: Vec<StatusChange>,
}

/// An order item with its owner's username and the product name it shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderItemView {
    pub item: OrderItem,
    pub username: String,
    pub product_name: String,
}
