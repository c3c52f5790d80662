//! Soundwave's store: the data model, the [`Command`]s that are the only way to change it,
//! the deterministic [`apply`](Store::apply_batch) of commands over a redb write transaction,
//! the read queries, and the write interface [`CommandSubmitter`].
//!
//! Applying the same commands in the same order to two fresh stores gives the same state:
//! ids come from counters in the database and timestamps, hashes and secrets come inside the
//! commands.

mod apply;
mod backoffice;
mod catalog;
mod command;
mod db;
mod error;
mod model;
mod query;
pub mod raft;
mod reader;
mod schema;
mod tables;
mod writer;

pub use apply::{ChangeSet, MAX_CART_LINES, MAX_LINE_QUANTITY, MAX_ORDER_LINES};
pub use backoffice::{
    CLOCK_SKEW, DAY, DaySales, OrderFilter, ProductSales, SalesReport, UserListing,
};
pub use command::{
    Command, CommandOutcome, MemberRecord, NewProduct, NewUser, OrderLine, OrderLines,
    ProductChanges, Rejection, StockShortage,
};
pub use db::{DEFAULT_PAGE_CACHE_BYTES, REPAIR_WARNING, Store};
pub use error::StoreError;
pub use model::{
    Category, Id, Order, OrderItem, OrderItemView, OrderStatus, OrderView, Product, StatusChange,
    Timestamp, User,
};
pub use query::{Page, ProductQuery, ProductSort};
pub use reader::StoreReader;
pub use tables::SCHEMA_VERSION;
pub use writer::{CommandSubmitter, SubmitFuture};
