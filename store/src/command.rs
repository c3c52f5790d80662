//! Every write to the store is a [`Command`]: the unit the local writer batches and the
//! replicated log will carry. Commands hold everything apply needs (ids of actors, timestamps,
//! password hashes, secrets), so applying them never reads a clock or a random source.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::model::{Category, Id, Order, OrderItem, OrderStatus, Product, Timestamp, User};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    CreateCategory {
        name: String,
    },
    UpdateCategory {
        id: Id,
        name: String,
    },
    DeleteCategory {
        id: Id,
    },
    CreateProduct(NewProduct),
    UpdateProduct {
        id: Id,
        changes: ProductChanges,
    },
    DeleteProduct {
        id: Id,
    },
    CreateUser(NewUser),
    /// Makes sure a staff user with this name exists and has this password hash.
    EnsureAdmin {
        username: String,
        password_hash: String,
        at: Timestamp,
    },
    AddOrderItem {
        user: Id,
        product: Id,
        quantity: u32,
        at: Timestamp,
    },
    UpdateOrderItem {
        actor: Id,
        id: Id,
        quantity: u32,
    },
    DeleteOrderItem {
        actor: Id,
        id: Id,
    },
    PlaceOrder {
        user: Id,
        lines: OrderLines,
        idempotency_key: Option<String>,
        at: Timestamp,
    },
    CancelOrder {
        actor: Id,
        id: Id,
    },
    /// Keeps the first JWT signing secret ever proposed; later proposals get the kept one back.
    InitJwtSecret {
        secret: Vec<u8>,
    },
    /// Marks a refresh token as used (rotation). Fails if it was used before. Also forgets
    /// a bounded number of used tokens that expired before `now`.
    ConsumeRefreshToken {
        jti: String,
        expires_at: Timestamp,
        now: Timestamp,
    },
    /// Replaces a user's password hash and ends every session begun before `at`: refresh
    /// tokens issued before the change are refused from then on.
    ChangePassword {
        user: Id,
        password_hash: String,
        at: Timestamp,
    },
    /// Moves an order to `status` (staff only), or cancels it (staff from placed or paid,
    /// its owner from placed). Cancelling returns the stock; when each status was reached
    /// is kept.
    SetOrderStatus {
        actor: Id,
        id: Id,
        status: OrderStatus,
        at: Timestamp,
    },
    /// Makes a user staff or not (staff only, never oneself); the user's sessions end.
    SetUserStaff {
        actor: Id,
        id: Id,
        is_staff: bool,
        at: Timestamp,
    },
    /// Deactivates or reactivates a user (staff only, never oneself). A deactivated user
    /// cannot log in, and their tokens stop working.
    SetUserActive {
        actor: Id,
        id: Id,
        active: bool,
        at: Timestamp,
    },
    /// Records a cluster member's addresses (and whether it stays a read-only learner), so
    /// that every member, and the balancer through them, knows where a joined node listens.
    /// Raft's own membership carries only peer addresses; this keeps its log format as it was.
    RecordMember(MemberRecord),
}

/// A cluster member's addresses, as recorded by [`Command::RecordMember`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    pub id: u64,
    /// Its client (HTTP API) address.
    pub api: String,
    /// Its peer (raft) address.
    pub peer: String,
    /// A learner that is never promoted to voter (a read replica).
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewProduct {
    pub name: String,
    pub stock: u32,
    #[serde(with = "rust_decimal::serde::str")]
    pub price: Decimal,
    pub description: String,
    pub category: Id,
}

/// Fields to change on a product; `None` leaves a field as it is (PATCH), all `Some` is a PUT.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductChanges {
    pub name: Option<String>,
    pub stock: Option<u32>,
    #[serde(with = "rust_decimal::serde::str_option")]
    pub price: Option<Decimal>,
    pub description: Option<String>,
    pub category: Option<Id>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewUser {
    pub username: String,
    pub email: String,
    pub phone_number: String,
    pub password_hash: String,
    pub is_staff: bool,
    pub date_joined: Timestamp,
}

/// What an order is made of: new lines, or the caller's own cart lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderLines {
    Products(Vec<OrderLine>),
    CartItems(Vec<Id>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    pub product: Id,
    pub quantity: u32,
}

/// The result of a command that was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandOutcome {
    Category(Category),
    Product(Product),
    User(User),
    OrderItem(OrderItem),
    /// `replayed` is true when an idempotency key matched an earlier order: nothing new was placed.
    Order {
        order: Order,
        replayed: bool,
    },
    JwtSecret(Vec<u8>),
    Done,
}

/// One line of an order that could not be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockShortage {
    pub product: Id,
    pub requested: u64,
    pub available: u32,
}

/// Why a command was refused. A refused command changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("not found")]
    NotFound,
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("a {what} with this name already exists")]
    Duplicate {
        what: &'static str,
        field: &'static str,
    },
    #[error("the category still has products")]
    CategoryInUse,
    #[error("insufficient stock")]
    InsufficientStock(Vec<StockShortage>),
    #[error("the order item is already part of an order")]
    ItemAlreadyOrdered,
    #[error("the order is already cancelled")]
    AlreadyCancelled,
    #[error("the idempotency key was used with a different request")]
    IdempotencyMismatch,
    #[error("the refresh token was already used")]
    RefreshTokenUsed,
    #[error("an account that is not staff has this username; it is not made staff")]
    WouldPromote,
    #[error("an order cannot move from {from:?} to {to:?}")]
    StatusChange { from: OrderStatus, to: OrderStatus },
    /// The actor may see the record but not do this to it.
    #[error("not allowed")]
    Forbidden,
}
