//! The one deterministic function that turns a [`Command`] into changes of the store:
//! [`apply_command`] hands each command to its resource's file (`catalog`, `accounts`,
//! `cart`, `orders`), which holds the commands of that resource.
//!
//! Discipline: every command first checks everything it needs and only then writes, so a
//! rejected command leaves no trace even though it shares a write transaction with its
//! neighbours in a batch. A command returns a rejection and a storage error alike, with `?`
//! or `Err(rejection.into())`: both are a [`NotApplied`], told apart once, in
//! [`apply_command`]. Nothing here reads a clock or a random source.

mod accounts;
mod cart;
mod catalog;
mod members;
mod order_status;
mod orders;
mod staff;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::BTreeSet;

pub(crate) use order_status::recorded_changes as recorded_status_changes;

use redb::{ReadableTable, Table, WriteTransaction};

use crate::command::{Command, CommandOutcome, Rejection};
use crate::error::StoreError;
use crate::model::{Category, Id, Order, OrderItem, Product, User};
use crate::tables::*;

/// Largest quantity on one order line.
pub const MAX_LINE_QUANTITY: u32 = 1000;
/// Lines one user's cart may hold (against storage abuse; an order takes at most
/// [`MAX_ORDER_LINES`] of them at once).
pub const MAX_CART_LINES: u64 = 100;
/// Most lines in one order.
pub const MAX_ORDER_LINES: usize = 100;

/// What applied commands changed, so caches can drop exactly what went stale.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeSet {
    /// The category list or a category changed.
    pub categories: bool,
    /// Products whose detail changed (stock, fields, deletion).
    pub products: BTreeSet<Id>,
    /// Users whose own data (profile, order items, orders) changed.
    pub users: BTreeSet<Id>,
    /// A product's name changed or it was removed: cart lines of every user show live names.
    pub product_names: bool,
    /// Which products a list holds, or their order, may have changed: a product was
    /// created, deleted, renamed or moved to another category. Stock, price and description
    /// changes leave product lists the same ids in the same order.
    pub product_listing: bool,
    /// The whole state was replaced (a snapshot was installed).
    pub everything: bool,
}

impl ChangeSet {
    /// Everything changed: what installing a snapshot does.
    pub fn everything() -> ChangeSet {
        ChangeSet {
            everything: true,
            ..ChangeSet::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        !self.categories
            && self.products.is_empty()
            && self.users.is_empty()
            && !self.product_names
            && !self.product_listing
            && !self.everything
    }

    pub fn merge(&mut self, other: ChangeSet) {
        self.categories |= other.categories;
        self.products.extend(other.products);
        self.users.extend(other.users);
        self.product_names |= other.product_names;
        self.product_listing |= other.product_listing;
        self.everything |= other.everything;
    }
}

/// Every table, opened once per write transaction and shared by the commands of a batch.
pub(crate) struct WriteTables<'txn> {
    meta: Table<'txn, &'static str, &'static [u8]>,
    counters: Table<'txn, &'static str, u64>,
    categories: Table<'txn, u64, &'static [u8]>,
    category_names: Table<'txn, &'static str, u64>,
    products: Table<'txn, u64, &'static [u8]>,
    products_by_category: Table<'txn, (u64, u64), ()>,
    users: Table<'txn, u64, &'static [u8]>,
    usernames: Table<'txn, &'static str, u64>,
    username_keys: Table<'txn, &'static str, u64>,
    order_items: Table<'txn, u64, &'static [u8]>,
    order_items_by_user: Table<'txn, (u64, u64), ()>,
    cart_lines_by_product: Table<'txn, (u64, u64), ()>,
    cart_line_counts: Table<'txn, u64, u64>,
    orders: Table<'txn, u64, &'static [u8]>,
    orders_by_user: Table<'txn, (u64, u64), ()>,
    idempotency: Table<'txn, (u64, &'static str), &'static [u8]>,
    used_refresh: Table<'txn, &'static str, i64>,
    used_refresh_by_expiry: Table<'txn, (i64, &'static str), ()>,
    credentials_changed: Table<'txn, u64, i64>,
    order_status_changes: Table<'txn, (u64, u8), (i64, u64)>,
    deactivated_users: Table<'txn, u64, i64>,
}

impl<'txn> WriteTables<'txn> {
    pub(crate) fn open(txn: &'txn WriteTransaction) -> Result<Self, StoreError> {
        Ok(WriteTables {
            meta: txn.open_table(META)?,
            counters: txn.open_table(COUNTERS)?,
            categories: txn.open_table(CATEGORIES)?,
            category_names: txn.open_table(CATEGORY_NAMES)?,
            products: txn.open_table(PRODUCTS)?,
            products_by_category: txn.open_table(PRODUCTS_BY_CATEGORY)?,
            users: txn.open_table(USERS)?,
            usernames: txn.open_table(USERNAMES)?,
            username_keys: txn.open_table(USERNAME_KEYS)?,
            order_items: txn.open_table(ORDER_ITEMS)?,
            order_items_by_user: txn.open_table(ORDER_ITEMS_BY_USER)?,
            cart_lines_by_product: txn.open_table(CART_LINES_BY_PRODUCT)?,
            cart_line_counts: txn.open_table(CART_LINE_COUNTS)?,
            orders: txn.open_table(ORDERS)?,
            orders_by_user: txn.open_table(ORDERS_BY_USER)?,
            idempotency: txn.open_table(IDEMPOTENCY)?,
            used_refresh: txn.open_table(USED_REFRESH)?,
            used_refresh_by_expiry: txn.open_table(USED_REFRESH_BY_EXPIRY)?,
            credentials_changed: txn.open_table(CREDENTIALS_CHANGED)?,
            order_status_changes: txn.open_table(ORDER_STATUS_CHANGES)?,
            deactivated_users: txn.open_table(DEACTIVATED_USERS)?,
        })
    }

    fn cart_lines(&self, user: Id) -> Result<u64, StoreError> {
        Ok(self.cart_line_counts.get(user)?.map_or(0, |v| v.value()))
    }

    /// One line more (`added`) or less in `user`'s cart.
    fn count_cart_line(&mut self, user: Id, added: bool) -> Result<(), StoreError> {
        let lines = self.cart_lines(user)?;
        let lines = if added {
            lines + 1
        } else {
            lines.saturating_sub(1)
        };
        if lines == 0 {
            self.cart_line_counts.remove(user)?;
        } else {
            self.cart_line_counts.insert(user, lines)?;
        }
        Ok(())
    }

    fn next_id(&mut self, counter: &'static str) -> Result<Id, StoreError> {
        let next = self.counters.get(counter)?.map(|v| v.value()).unwrap_or(0) + 1;
        self.counters.insert(counter, next)?;
        Ok(next)
    }

    fn category(&self, id: Id) -> Result<Option<Category>, StoreError> {
        self.categories
            .get(id)?
            .map(|v| decode(v.value()))
            .transpose()
    }

    fn product(&self, id: Id) -> Result<Option<Product>, StoreError> {
        self.products
            .get(id)?
            .map(|v| decode(v.value()))
            .transpose()
    }

    /// A product that can be bought or put in a cart.
    fn product_on_sale(&self, id: Id) -> Result<Option<Product>, StoreError> {
        Ok(self.product(id)?.filter(|p| !p.archived))
    }

    fn user(&self, id: Id) -> Result<Option<User>, StoreError> {
        self.users.get(id)?.map(|v| decode(v.value())).transpose()
    }

    fn order_item(&self, id: Id) -> Result<Option<OrderItem>, StoreError> {
        self.order_items
            .get(id)?
            .map(|v| decode(v.value()))
            .transpose()
    }

    fn order(&self, id: Id) -> Result<Option<Order>, StoreError> {
        self.orders.get(id)?.map(|v| decode(v.value())).transpose()
    }

    fn put_product(&mut self, product: &Product) -> Result<(), StoreError> {
        self.products
            .insert(product.id, encode(product)?.as_slice())?;
        Ok(())
    }

    fn put_user(&mut self, user: &User) -> Result<(), StoreError> {
        self.users.insert(user.id, encode(user)?.as_slice())?;
        Ok(())
    }

    fn put_order_item(&mut self, item: &OrderItem) -> Result<(), StoreError> {
        self.order_items.insert(item.id, encode(item)?.as_slice())?;
        Ok(())
    }

    fn put_order(&mut self, order: &Order) -> Result<(), StoreError> {
        self.orders.insert(order.id, encode(order)?.as_slice())?;
        Ok(())
    }

    fn category_has_products(&self, category: Id) -> Result<bool, StoreError> {
        Ok(self
            .products_by_category
            .range((category, 0)..=(category, u64::MAX))?
            .next()
            .is_some())
    }
}

/// A command's own answer: what it did, or why it was refused.
type Applied = Result<CommandOutcome, Rejection>;

/// Why a command was not applied: it was rejected (an answer to its caller, given before
/// anything was written), or the storage failed (the whole batch aborts). Command code
/// raises both with `?`; [`apply_command`] tells them apart.
#[derive(Debug)]
enum NotApplied {
    Rejected(Rejection),
    Storage(StoreError),
}

impl From<Rejection> for NotApplied {
    fn from(rejection: Rejection) -> Self {
        NotApplied::Rejected(rejection)
    }
}

impl From<StoreError> for NotApplied {
    fn from(error: StoreError) -> Self {
        NotApplied::Storage(error)
    }
}

impl From<redb::StorageError> for NotApplied {
    fn from(error: redb::StorageError) -> Self {
        NotApplied::Storage(error.into())
    }
}

/// What a command's function returns.
type CommandResult = Result<CommandOutcome, NotApplied>;

/// The rejection of a reference (`field`) to a record `id` that does not exist.
fn does_not_exist(field: &'static str, id: Id) -> Rejection {
    Rejection::Invalid {
        field,
        message: format!("Invalid pk \"{id}\" - object does not exist."),
    }
}

/// A line's quantity is within 1..=[`MAX_LINE_QUANTITY`].
fn check_quantity(field: &'static str, quantity: u32) -> Result<(), Rejection> {
    if (1..=MAX_LINE_QUANTITY).contains(&quantity) {
        Ok(())
    } else {
        Err(Rejection::Invalid {
            field,
            message: format!("Ensure this value is between 1 and {MAX_LINE_QUANTITY}."),
        })
    }
}

/// Applies one command. The outer error is a storage failure (the whole batch must abort);
/// the inner result is the command's own answer.
pub(crate) fn apply_command(
    t: &mut WriteTables<'_>,
    command: &Command,
    changes: &mut ChangeSet,
) -> Result<Applied, StoreError> {
    let result = match command {
        Command::CreateCategory { name } => catalog::create_category(t, name, changes),
        Command::UpdateCategory { id, name } => catalog::update_category(t, *id, name, changes),
        Command::DeleteCategory { id } => catalog::delete_category(t, *id, changes),
        Command::CreateProduct(new) => catalog::create_product(t, new, changes),
        Command::UpdateProduct { id, changes: c } => catalog::update_product(t, *id, c, changes),
        Command::DeleteProduct { id } => catalog::delete_product(t, *id, changes),
        Command::CreateUser(new) => accounts::create_user(t, new, changes),
        Command::EnsureAdmin {
            username,
            password_hash,
            at,
        } => accounts::ensure_admin(t, username, password_hash, *at, changes),
        Command::AddOrderItem {
            user,
            product,
            quantity,
            at,
        } => cart::add_order_item(t, *user, *product, *quantity, *at, changes),
        Command::UpdateOrderItem {
            actor,
            id,
            quantity,
        } => cart::update_order_item(t, *actor, *id, *quantity, changes),
        Command::DeleteOrderItem { actor, id } => cart::delete_order_item(t, *actor, *id, changes),
        Command::PlaceOrder {
            user,
            lines,
            idempotency_key,
            at,
        } => orders::place_order(t, *user, lines, idempotency_key.as_deref(), *at, changes),
        Command::CancelOrder { actor, id } => orders::cancel_order(t, *actor, *id, changes),
        Command::InitJwtSecret { secret } => accounts::init_jwt_secret(t, secret),
        Command::ConsumeRefreshToken {
            jti,
            expires_at,
            now,
        } => accounts::consume_refresh_token(t, jti, *expires_at, *now),
        Command::ChangePassword {
            user,
            password_hash,
            at,
        } => accounts::change_password(t, *user, password_hash, *at, changes),
        Command::SetOrderStatus {
            actor,
            id,
            status,
            at,
        } => order_status::set_order_status(t, *actor, *id, *status, *at, changes),
        Command::SetUserStaff {
            actor,
            id,
            is_staff,
            at,
        } => staff::set_user_staff(t, *actor, *id, *is_staff, *at, changes),
        Command::SetUserActive {
            actor,
            id,
            active,
            at,
        } => staff::set_user_active(t, *actor, *id, *active, *at, changes),
        Command::RecordMember(record) => members::record_member(t, record),
    };
    match result {
        Ok(outcome) => Ok(Ok(outcome)),
        Err(NotApplied::Rejected(rejection)) => Ok(Err(rejection)),
        Err(NotApplied::Storage(error)) => Err(error),
    }
}
