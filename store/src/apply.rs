//! The one deterministic function that turns a [`Command`] into changes of the store.
//!
//! Discipline: every command first checks everything it needs and only then writes, so a
//! rejected command leaves no trace even though it shares a write transaction with its
//! neighbours in a batch. Nothing here reads a clock or a random source.

use std::collections::{BTreeMap, BTreeSet};

use redb::{ReadableTable, Table, WriteTransaction};
use rust_decimal::Decimal;

use crate::command::{
    Command, CommandOutcome, NewProduct, NewUser, OrderLine, OrderLines, ProductChanges, Rejection,
    StockShortage,
};
use crate::error::StoreError;
use crate::model::{Category, Id, Order, OrderItem, OrderStatus, Product, Timestamp, User};
use crate::tables::*;

/// Largest quantity on one order line.
pub const MAX_LINE_QUANTITY: u32 = 1000;
/// Lines one user's cart may hold (against storage abuse; an order takes at most
/// [`MAX_ORDER_LINES`] of them at once).
pub const MAX_CART_LINES: u64 = 100;
/// Most lines in one order.
pub const MAX_ORDER_LINES: usize = 100;
/// Used refresh tokens forgotten per consume, once expired.
const REFRESH_PURGE_BATCH: usize = 64;

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
    products_by_name: Table<'txn, (&'static str, u64), ()>,
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
            products_by_name: txn.open_table(PRODUCTS_BY_NAME)?,
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

type Applied = Result<CommandOutcome, Rejection>;

fn does_not_exist(field: &'static str, id: Id) -> Rejection {
    Rejection::Invalid {
        field,
        message: format!("Invalid pk \"{id}\" - object does not exist."),
    }
}

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
    match command {
        Command::CreateCategory { name } => create_category(t, name, changes),
        Command::UpdateCategory { id, name } => update_category(t, *id, name, changes),
        Command::DeleteCategory { id } => delete_category(t, *id, changes),
        Command::CreateProduct(new) => create_product(t, new, changes),
        Command::UpdateProduct { id, changes: c } => update_product(t, *id, c, changes),
        Command::DeleteProduct { id } => delete_product(t, *id, changes),
        Command::CreateUser(new) => create_user(t, new, changes),
        Command::EnsureAdmin {
            username,
            password_hash,
            at,
        } => ensure_admin(t, username, password_hash, *at, changes),
        Command::AddOrderItem {
            user,
            product,
            quantity,
            at,
        } => add_order_item(t, *user, *product, *quantity, *at, changes),
        Command::UpdateOrderItem {
            actor,
            id,
            quantity,
        } => update_order_item(t, *actor, *id, *quantity, changes),
        Command::DeleteOrderItem { actor, id } => delete_order_item(t, *actor, *id, changes),
        Command::PlaceOrder {
            user,
            lines,
            idempotency_key,
            at,
        } => place_order(t, *user, lines, idempotency_key.as_deref(), *at, changes),
        Command::CancelOrder { actor, id } => cancel_order(t, *actor, *id, changes),
        Command::InitJwtSecret { secret } => init_jwt_secret(t, secret),
        Command::ConsumeRefreshToken {
            jti,
            expires_at,
            now,
        } => consume_refresh_token(t, jti, *expires_at, *now),
    }
}

fn create_category(
    t: &mut WriteTables<'_>,
    name: &str,
    changes: &mut ChangeSet,
) -> Result<Applied, StoreError> {
    let key = name.to_lowercase();
    if t.category_names.get(key.as_str())?.is_some() {
        return Ok(Err(Rejection::Duplicate {
            what: "category",
            field: "name",
        }));
    }
    let category = Category {
        id: t.next_id("category")?,
        name: name.to_owned(),
    };
    t.categories
        .insert(category.id, encode(&category)?.as_slice())?;
    t.category_names.insert(key.as_str(), category.id)?;
    changes.categories = true;
    Ok(Ok(CommandOutcome::Category(category)))
}

fn update_category(
    t: &mut WriteTables<'_>,
    id: Id,
    name: &str,
    changes: &mut ChangeSet,
) -> Result<Applied, StoreError> {
    let Some(mut category) = t.category(id)? else {
        return Ok(Err(Rejection::NotFound));
    };
    let old_key = category.name.to_lowercase();
    let new_key = name.to_lowercase();
    if let Some(owner) = t.category_names.get(new_key.as_str())?.map(|v| v.value())
        && owner != id
    {
        return Ok(Err(Rejection::Duplicate {
            what: "category",
            field: "name",
        }));
    }
    t.category_names.remove(old_key.as_str())?;
    t.category_names.insert(new_key.as_str(), id)?;
    category.name = name.to_owned();
    t.categories.insert(id, encode(&category)?.as_slice())?;
    changes.categories = true;
    Ok(Ok(CommandOutcome::Category(category)))
}

fn delete_category(
    t: &mut WriteTables<'_>,
    id: Id,
    changes: &mut ChangeSet,
) -> Result<Applied, StoreError> {
    let Some(category) = t.category(id)? else {
        return Ok(Err(Rejection::NotFound));
    };
    if t.category_has_products(id)? {
        return Ok(Err(Rejection::CategoryInUse));
    }
    t.category_names
        .remove(category.name.to_lowercase().as_str())?;
    t.categories.remove(id)?;
    changes.categories = true;
    Ok(Ok(CommandOutcome::Done))
}

fn create_product(
    t: &mut WriteTables<'_>,
    new: &NewProduct,
    changes: &mut ChangeSet,
) -> Result<Applied, StoreError> {
    if t.category(new.category)?.is_none() {
        return Ok(Err(does_not_exist("category", new.category)));
    }
    let product = Product {
        id: t.next_id("product")?,
        name: new.name.clone(),
        stock: new.stock,
        price: new.price,
        description: new.description.clone(),
        category: new.category,
        ordered: false,
        archived: false,
    };
    t.put_product(&product)?;
    t.products_by_category
        .insert((product.category, product.id), ())?;
    t.products_by_name
        .insert((product.name.to_lowercase().as_str(), product.id), ())?;
    changes.products.insert(product.id);
    changes.product_listing = true;
    Ok(Ok(CommandOutcome::Product(product)))
}

fn update_product(
    t: &mut WriteTables<'_>,
    id: Id,
    c: &ProductChanges,
    changes: &mut ChangeSet,
) -> Result<Applied, StoreError> {
    let Some(mut product) = t.product_on_sale(id)? else {
        return Ok(Err(Rejection::NotFound));
    };
    if let Some(category) = c.category
        && t.category(category)?.is_none()
    {
        return Ok(Err(does_not_exist("category", category)));
    }
    if let Some(category) = c.category
        && category != product.category
    {
        t.products_by_category.remove((product.category, id))?;
        t.products_by_category.insert((category, id), ())?;
        product.category = category;
        changes.product_listing = true;
    }
    if let Some(name) = &c.name
        && *name != product.name
    {
        t.products_by_name
            .remove((product.name.to_lowercase().as_str(), id))?;
        t.products_by_name
            .insert((name.to_lowercase().as_str(), id), ())?;
        product.name = name.clone();
        changes.product_names = true;
        changes.product_listing = true;
    }
    if let Some(stock) = c.stock {
        product.stock = stock;
    }
    if let Some(price) = c.price {
        product.price = price;
    }
    if let Some(description) = &c.description {
        product.description = description.clone();
    }
    t.put_product(&product)?;
    changes.products.insert(id);
    Ok(Ok(CommandOutcome::Product(product)))
}

fn delete_product(
    t: &mut WriteTables<'_>,
    id: Id,
    changes: &mut ChangeSet,
) -> Result<Applied, StoreError> {
    let Some(mut product) = t.product_on_sale(id)? else {
        return Ok(Err(Rejection::NotFound));
    };
    // Cart lines of a product that is gone can never be ordered: drop them.
    let cart_lines: Vec<Id> = t
        .cart_lines_by_product
        .range((id, 0)..=(id, u64::MAX))?
        .map(|entry| entry.map(|(key, _)| key.value().1))
        .collect::<Result<_, _>>()?;
    for item_id in cart_lines {
        if let Some(item) = t.order_item(item_id)? {
            t.order_items.remove(item_id)?;
            t.order_items_by_user.remove((item.user, item_id))?;
            t.count_cart_line(item.user, false)?;
            changes.users.insert(item.user);
        }
        t.cart_lines_by_product.remove((id, item_id))?;
    }
    t.products_by_name
        .remove((product.name.to_lowercase().as_str(), id))?;
    if product.ordered {
        product.archived = true;
        t.put_product(&product)?;
    } else {
        t.products.remove(id)?;
        t.products_by_category.remove((product.category, id))?;
    }
    changes.products.insert(id);
    changes.product_names = true;
    changes.product_listing = true;
    Ok(Ok(CommandOutcome::Done))
}

fn create_user(
    t: &mut WriteTables<'_>,
    new: &NewUser,
    changes: &mut ChangeSet,
) -> Result<Applied, StoreError> {
    let key = new.username.to_lowercase();
    if t.usernames.get(new.username.as_str())?.is_some()
        || t.username_keys.get(key.as_str())?.is_some()
    {
        return Ok(Err(Rejection::Duplicate {
            what: "user",
            field: "username",
        }));
    }
    let user = User {
        id: t.next_id("user")?,
        username: new.username.clone(),
        email: new.email.clone(),
        phone_number: new.phone_number.clone(),
        password_hash: new.password_hash.clone(),
        is_staff: new.is_staff,
        date_joined: new.date_joined,
    };
    t.put_user(&user)?;
    t.usernames.insert(user.username.as_str(), user.id)?;
    t.username_keys.insert(key.as_str(), user.id)?;
    changes.users.insert(user.id);
    Ok(Ok(CommandOutcome::User(user)))
}

fn ensure_admin(
    t: &mut WriteTables<'_>,
    username: &str,
    password_hash: &str,
    at: Timestamp,
    changes: &mut ChangeSet,
) -> Result<Applied, StoreError> {
    let existing = t.usernames.get(username)?.map(|v| v.value());
    match existing {
        Some(id) => {
            let Some(mut user) = t.user(id)? else {
                return Ok(Err(Rejection::NotFound));
            };
            // Someone may have signed up under the admin's name first: never hand them
            // staff rights (and their old tokens a staff session).
            if !user.is_staff {
                return Ok(Err(Rejection::WouldPromote));
            }
            if user.password_hash != password_hash {
                user.password_hash = password_hash.to_owned();
                t.put_user(&user)?;
                // Sessions begun with the old password end with it.
                t.credentials_changed.insert(id, at.div_euclid(1_000_000))?;
                changes.users.insert(id);
            }
            Ok(Ok(CommandOutcome::User(user)))
        }
        None => create_user(
            t,
            &NewUser {
                username: username.to_owned(),
                email: String::new(),
                phone_number: String::new(),
                password_hash: password_hash.to_owned(),
                is_staff: true,
                date_joined: at,
            },
            changes,
        ),
    }
}

fn add_order_item(
    t: &mut WriteTables<'_>,
    user: Id,
    product: Id,
    quantity: u32,
    at: Timestamp,
    changes: &mut ChangeSet,
) -> Result<Applied, StoreError> {
    if t.user(user)?.is_none() {
        return Ok(Err(Rejection::NotFound));
    }
    if let Err(rejection) = check_quantity("quantity", quantity) {
        return Ok(Err(rejection));
    }
    if t.product_on_sale(product)?.is_none() {
        return Ok(Err(does_not_exist("product", product)));
    }
    if t.cart_lines(user)? >= MAX_CART_LINES {
        return Ok(Err(Rejection::Invalid {
            field: "product",
            message: format!(
                "The cart is full ({MAX_CART_LINES} lines): order or remove some lines first."
            ),
        }));
    }
    let item = OrderItem {
        id: t.next_id("order_item")?,
        product,
        quantity,
        user,
        order: None,
        unit_price: None,
        product_name: None,
        created_at: at,
    };
    t.put_order_item(&item)?;
    t.order_items_by_user.insert((user, item.id), ())?;
    t.cart_lines_by_product.insert((product, item.id), ())?;
    t.count_cart_line(user, true)?;
    changes.users.insert(user);
    Ok(Ok(CommandOutcome::OrderItem(item)))
}

/// The cart line `id` if `actor` owns it and no order has taken it yet.
fn own_cart_line(
    t: &WriteTables<'_>,
    actor: Id,
    id: Id,
) -> Result<Result<OrderItem, Rejection>, StoreError> {
    Ok(match t.order_item(id)? {
        Some(item) if item.user == actor => {
            if item.order.is_some() {
                Err(Rejection::ItemAlreadyOrdered)
            } else {
                Ok(item)
            }
        }
        _ => Err(Rejection::NotFound),
    })
}

fn update_order_item(
    t: &mut WriteTables<'_>,
    actor: Id,
    id: Id,
    quantity: u32,
    changes: &mut ChangeSet,
) -> Result<Applied, StoreError> {
    let mut item = match own_cart_line(t, actor, id)? {
        Ok(item) => item,
        Err(rejection) => return Ok(Err(rejection)),
    };
    if let Err(rejection) = check_quantity("quantity", quantity) {
        return Ok(Err(rejection));
    }
    item.quantity = quantity;
    t.put_order_item(&item)?;
    changes.users.insert(item.user);
    Ok(Ok(CommandOutcome::OrderItem(item)))
}

fn delete_order_item(
    t: &mut WriteTables<'_>,
    actor: Id,
    id: Id,
    changes: &mut ChangeSet,
) -> Result<Applied, StoreError> {
    let item = match own_cart_line(t, actor, id)? {
        Ok(item) => item,
        Err(rejection) => return Ok(Err(rejection)),
    };
    t.order_items.remove(id)?;
    t.order_items_by_user.remove((item.user, id))?;
    t.cart_lines_by_product.remove((item.product, id))?;
    t.count_cart_line(item.user, false)?;
    changes.users.insert(item.user);
    Ok(Ok(CommandOutcome::Done))
}

/// What an idempotency key remembers: the request it was first used with and its order.
#[derive(serde::Serialize, serde::Deserialize)]
struct IdempotencyRecord {
    lines: OrderLines,
    order: Id,
}

/// One order line after validation: the product as it is now, and the cart line it came
/// from, if any.
struct ResolvedLine {
    product: Product,
    quantity: u32,
    cart_item: Option<OrderItem>,
}

fn resolve_lines(
    t: &WriteTables<'_>,
    user: Id,
    lines: &OrderLines,
) -> Result<Result<Vec<ResolvedLine>, Rejection>, StoreError> {
    let count = match lines {
        OrderLines::Products(lines) => lines.len(),
        OrderLines::CartItems(ids) => ids.len(),
    };
    let field = match lines {
        OrderLines::Products(_) => "items",
        OrderLines::CartItems(_) => "order_items",
    };
    if count == 0 {
        return Ok(Err(Rejection::Invalid {
            field,
            message: "This list may not be empty.".into(),
        }));
    }
    if count > MAX_ORDER_LINES {
        return Ok(Err(Rejection::Invalid {
            field,
            message: format!("Ensure this list has no more than {MAX_ORDER_LINES} elements."),
        }));
    }
    let mut resolved = Vec::with_capacity(count);
    match lines {
        OrderLines::Products(lines) => {
            for &OrderLine { product, quantity } in lines {
                if let Err(rejection) = check_quantity(field, quantity) {
                    return Ok(Err(rejection));
                }
                let Some(product) = t.product_on_sale(product)? else {
                    return Ok(Err(does_not_exist(field, product)));
                };
                resolved.push(ResolvedLine {
                    product,
                    quantity,
                    cart_item: None,
                });
            }
        }
        OrderLines::CartItems(ids) => {
            let mut seen = BTreeSet::new();
            for &id in ids {
                if !seen.insert(id) {
                    return Ok(Err(Rejection::Invalid {
                        field,
                        message: format!("Order item {id} is listed more than once."),
                    }));
                }
                let item = match own_cart_line(t, user, id)? {
                    Ok(item) => item,
                    Err(Rejection::ItemAlreadyOrdered) => {
                        return Ok(Err(Rejection::Invalid {
                            field,
                            message: format!("Order item {id} is already part of an order."),
                        }));
                    }
                    Err(_) => return Ok(Err(does_not_exist(field, id))),
                };
                let Some(product) = t.product_on_sale(item.product)? else {
                    return Ok(Err(does_not_exist(field, id)));
                };
                resolved.push(ResolvedLine {
                    product,
                    quantity: item.quantity,
                    cart_item: Some(item),
                });
            }
        }
    }
    Ok(Ok(resolved))
}

fn place_order(
    t: &mut WriteTables<'_>,
    user: Id,
    lines: &OrderLines,
    idempotency_key: Option<&str>,
    at: Timestamp,
    changes: &mut ChangeSet,
) -> Result<Applied, StoreError> {
    if let Some(key) = idempotency_key {
        let earlier = t
            .idempotency
            .get((user, key))?
            .map(|v| decode::<IdempotencyRecord>(v.value()))
            .transpose()?;
        if let Some(record) = earlier {
            if record.lines != *lines {
                return Ok(Err(Rejection::IdempotencyMismatch));
            }
            let Some(order) = t.order(record.order)? else {
                return Ok(Err(Rejection::NotFound));
            };
            return Ok(Ok(CommandOutcome::Order {
                order,
                replayed: true,
            }));
        }
    }
    if t.user(user)?.is_none() {
        return Ok(Err(Rejection::NotFound));
    }
    let resolved = match resolve_lines(t, user, lines)? {
        Ok(resolved) => resolved,
        Err(rejection) => return Ok(Err(rejection)),
    };

    // Stock is checked per product, with the quantities of all its lines added up.
    let mut wanted: BTreeMap<Id, (u64, u32)> = BTreeMap::new();
    for line in &resolved {
        let entry = wanted
            .entry(line.product.id)
            .or_insert((0, line.product.stock));
        entry.0 += u64::from(line.quantity);
    }
    let shortages: Vec<StockShortage> = wanted
        .iter()
        .filter(|(_, (requested, available))| *requested > u64::from(*available))
        .map(|(&product, &(requested, available))| StockShortage {
            product,
            requested,
            available,
        })
        .collect();
    if !shortages.is_empty() {
        return Ok(Err(Rejection::InsufficientStock(shortages)));
    }
    // Decimal arithmetic panics on overflow, which would take the writer down with it.
    let mut total = Decimal::ZERO;
    for line in &resolved {
        let Some(sum) = line
            .product
            .price
            .checked_mul(Decimal::from(line.quantity))
            .and_then(|amount| total.checked_add(amount))
        else {
            let field = match lines {
                OrderLines::Products(_) => "items",
                OrderLines::CartItems(_) => "order_items",
            };
            return Ok(Err(Rejection::Invalid {
                field,
                message: "The order total is too large.".into(),
            }));
        };
        total = sum;
    }

    // Everything checked: from here on the command only writes.
    let order_id = t.next_id("order")?;
    for (&product_id, &(requested, available)) in &wanted {
        if let Some(mut product) = t.product(product_id)? {
            // requested <= available was checked above, so this fits in u32.
            product.stock = available - requested as u32;
            product.ordered = true;
            t.put_product(&product)?;
            changes.products.insert(product_id);
        }
    }
    let mut item_ids = Vec::with_capacity(resolved.len());
    for line in resolved {
        let item = match line.cart_item {
            Some(mut item) => {
                t.cart_lines_by_product.remove((item.product, item.id))?;
                t.count_cart_line(item.user, false)?;
                item.order = Some(order_id);
                item.unit_price = Some(line.product.price);
                item.product_name = Some(line.product.name.clone());
                item
            }
            None => {
                let id = t.next_id("order_item")?;
                t.order_items_by_user.insert((user, id), ())?;
                OrderItem {
                    id,
                    product: line.product.id,
                    quantity: line.quantity,
                    user,
                    order: Some(order_id),
                    unit_price: Some(line.product.price),
                    product_name: Some(line.product.name.clone()),
                    created_at: at,
                }
            }
        };
        t.put_order_item(&item)?;
        item_ids.push(item.id);
    }
    let order = Order {
        id: order_id,
        user,
        items: item_ids,
        total,
        status: OrderStatus::Placed,
        created_at: at,
    };
    t.put_order(&order)?;
    t.orders_by_user.insert((user, order_id), ())?;
    if let Some(key) = idempotency_key {
        let record = IdempotencyRecord {
            lines: lines.clone(),
            order: order_id,
        };
        t.idempotency
            .insert((user, key), encode(&record)?.as_slice())?;
    }
    changes.users.insert(user);
    Ok(Ok(CommandOutcome::Order {
        order,
        replayed: false,
    }))
}

fn cancel_order(
    t: &mut WriteTables<'_>,
    actor: Id,
    id: Id,
    changes: &mut ChangeSet,
) -> Result<Applied, StoreError> {
    let Some(mut order) = t.order(id)? else {
        return Ok(Err(Rejection::NotFound));
    };
    if order.user != actor {
        let actor_is_staff = t.user(actor)?.is_some_and(|u| u.is_staff);
        if !actor_is_staff {
            return Ok(Err(Rejection::NotFound));
        }
    }
    if order.status == OrderStatus::Cancelled {
        return Ok(Err(Rejection::AlreadyCancelled));
    }
    for &item_id in &order.items {
        let Some(item) = t.order_item(item_id)? else {
            continue;
        };
        if let Some(mut product) = t.product(item.product)? {
            product.stock = product.stock.saturating_add(item.quantity);
            t.put_product(&product)?;
            changes.products.insert(product.id);
        }
    }
    order.status = OrderStatus::Cancelled;
    t.put_order(&order)?;
    changes.users.insert(order.user);
    Ok(Ok(CommandOutcome::Order {
        order,
        replayed: false,
    }))
}

fn init_jwt_secret(t: &mut WriteTables<'_>, secret: &[u8]) -> Result<Applied, StoreError> {
    if let Some(existing) = t.meta.get(META_JWT_SECRET)? {
        return Ok(Ok(CommandOutcome::JwtSecret(existing.value().to_vec())));
    }
    t.meta.insert(META_JWT_SECRET, secret)?;
    Ok(Ok(CommandOutcome::JwtSecret(secret.to_vec())))
}

fn consume_refresh_token(
    t: &mut WriteTables<'_>,
    jti: &str,
    expires_at: Timestamp,
    now: Timestamp,
) -> Result<Applied, StoreError> {
    if t.used_refresh.get(jti)?.is_some() {
        return Ok(Err(Rejection::RefreshTokenUsed));
    }
    let expired: Vec<(i64, String)> = t
        .used_refresh_by_expiry
        .range::<(i64, &str)>(..(now, ""))?
        .take(REFRESH_PURGE_BATCH)
        .map(|entry| entry.map(|(key, _)| (key.value().0, key.value().1.to_owned())))
        .collect::<Result<_, _>>()?;
    for (expiry, old) in expired {
        t.used_refresh.remove(old.as_str())?;
        t.used_refresh_by_expiry.remove((expiry, old.as_str()))?;
    }
    t.used_refresh.insert(jti, expires_at)?;
    t.used_refresh_by_expiry.insert((expires_at, jti), ())?;
    Ok(Ok(CommandOutcome::Done))
}

#[cfg(test)]
pub(crate) mod tests {
    //! Unit tests of apply, through [`Store::apply_batch`]. The helpers are shared with the
    //! tests of `db` and `writer`.

    use rust_decimal::Decimal;
    use tempfile::TempDir;

    use super::*;
    use crate::db::Store;
    use crate::query::{ProductQuery, ProductSort};

    /// A fresh store in its own temporary directory.
    pub(crate) struct TestStore {
        pub(crate) store: Store,
        _dir: TempDir,
    }

    impl TestStore {
        pub(crate) fn new() -> TestStore {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = Store::open(dir.path().join("store.redb")).expect("open store");
            TestStore { store, _dir: dir }
        }

        pub(crate) fn apply(&self, command: Command) -> Applied {
            self.apply_all(&[command]).pop().expect("one result")
        }

        pub(crate) fn apply_all(&self, commands: &[Command]) -> Vec<Applied> {
            let mut changes = ChangeSet::default();
            let results = self
                .store
                .apply_batch(commands, &mut changes)
                .expect("apply batch");
            assert_eq!(results.len(), commands.len());
            results
        }

        pub(crate) fn digest(&self) -> u64 {
            self.store.read().unwrap().digest().unwrap()
        }

        pub(crate) fn product(&self, id: Id) -> Option<Product> {
            self.store.read().unwrap().product(id).unwrap()
        }

        pub(crate) fn stock(&self, id: Id) -> u32 {
            self.product(id).expect("product exists").stock
        }
    }

    pub(crate) fn category(name: &str) -> Command {
        Command::CreateCategory { name: name.into() }
    }

    /// `cents` is the price in hundredths.
    pub(crate) fn product(name: &str, stock: u32, cents: i64, category: Id) -> Command {
        Command::CreateProduct(NewProduct {
            name: name.into(),
            stock,
            price: Decimal::new(cents, 2),
            description: format!("about {name}"),
            category,
        })
    }

    pub(crate) fn user(name: &str, is_staff: bool) -> Command {
        Command::CreateUser(NewUser {
            username: name.into(),
            email: format!("{name}@example.com"),
            phone_number: "+10000000000".into(),
            password_hash: format!("hash-of-{name}"),
            is_staff,
            date_joined: 1,
        })
    }

    pub(crate) fn lines(lines: &[(Id, u32)]) -> OrderLines {
        OrderLines::Products(
            lines
                .iter()
                .map(|&(product, quantity)| OrderLine { product, quantity })
                .collect(),
        )
    }

    pub(crate) fn order(user: Id, order_lines: &[(Id, u32)], key: Option<&str>) -> Command {
        Command::PlaceOrder {
            user,
            lines: lines(order_lines),
            idempotency_key: key.map(str::to_owned),
            at: 10,
        }
    }

    pub(crate) fn cart_order(user: Id, items: &[Id]) -> Command {
        Command::PlaceOrder {
            user,
            lines: OrderLines::CartItems(items.to_vec()),
            idempotency_key: None,
            at: 10,
        }
    }

    pub(crate) fn add_to_cart(user: Id, product: Id, quantity: u32) -> Command {
        Command::AddOrderItem {
            user,
            product,
            quantity,
            at: 5,
        }
    }

    pub(crate) fn cancel(actor: Id, id: Id) -> Command {
        Command::CancelOrder { actor, id }
    }

    /// The order of an accepted `PlaceOrder` / `CancelOrder`, and whether it was replayed.
    pub(crate) fn placed(result: Applied) -> (Order, bool) {
        match result {
            Ok(CommandOutcome::Order { order, replayed }) => (order, replayed),
            other => panic!("expected an order, got {other:?}"),
        }
    }

    pub(crate) fn created_id(result: Applied) -> Id {
        match result {
            Ok(CommandOutcome::Category(c)) => c.id,
            Ok(CommandOutcome::Product(p)) => p.id,
            Ok(CommandOutcome::User(u)) => u.id,
            Ok(CommandOutcome::OrderItem(i)) => i.id,
            Ok(CommandOutcome::Order { order, .. }) => order.id,
            other => panic!("expected a created record, got {other:?}"),
        }
    }

    fn assert_invalid(result: Applied, expected_field: &str) {
        match result {
            Err(Rejection::Invalid { field, .. }) => assert_eq!(field, expected_field),
            other => panic!("expected Invalid({expected_field}), got {other:?}"),
        }
    }

    /// Category 1 "Rock", users 1 alice, 2 bob, 3 staff carol.
    fn shop() -> TestStore {
        let s = TestStore::new();
        let results = s.apply_all(&[
            category("Rock"),
            user("alice", false),
            user("bob", false),
            user("carol", true),
        ]);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        s
    }

    const ALICE: Id = 1;
    const BOB: Id = 2;
    const CAROL: Id = 3;

    #[test]
    fn category_names_are_unique_case_insensitively() {
        let s = TestStore::new();
        assert_eq!(created_id(s.apply(category("Rock"))), 1);
        let duplicate = Err(Rejection::Duplicate {
            what: "category",
            field: "name",
        });
        assert_eq!(s.apply(category("rock")), duplicate);
        assert_eq!(s.apply(category("ROCK")), duplicate);
        assert_eq!(created_id(s.apply(category("Jazz"))), 2);

        // Renaming onto another category's name, in any case, is refused.
        let rename = |id, name: &str| Command::UpdateCategory {
            id,
            name: name.into(),
        };
        assert_eq!(s.apply(rename(2, "rOcK")), duplicate);
        // Renaming a category to its own name in another case is fine and frees nothing.
        assert_eq!(
            s.apply(rename(1, "ROCK")),
            Ok(CommandOutcome::Category(Category {
                id: 1,
                name: "ROCK".into()
            }))
        );
        assert_eq!(s.apply(category("Rock")), duplicate);
        // A rename frees the old name.
        assert!(s.apply(rename(1, "Metal")).is_ok());
        assert_eq!(created_id(s.apply(category("rock"))), 3);
        assert_eq!(s.apply(rename(99, "Pop")), Err(Rejection::NotFound));

        // Deleting frees the name too; ids are never reused.
        assert_eq!(
            s.apply(Command::DeleteCategory { id: 3 }),
            Ok(CommandOutcome::Done)
        );
        assert_eq!(created_id(s.apply(category("ROCK"))), 4);
        assert_eq!(
            s.apply(Command::DeleteCategory { id: 3 }),
            Err(Rejection::NotFound)
        );
        let names: Vec<String> = s
            .store
            .read()
            .unwrap()
            .categories()
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["Metal", "Jazz", "ROCK"]);
    }

    #[test]
    fn category_with_products_cannot_be_deleted() {
        let s = shop();
        assert_eq!(created_id(s.apply(category("Jazz"))), 2);
        assert_eq!(created_id(s.apply(product("Sax", 1, 100, 2))), 1);
        assert_eq!(
            s.apply(Command::DeleteCategory { id: 2 }),
            Err(Rejection::CategoryInUse)
        );
        // Moving the product away frees the category.
        let moved = s.apply(Command::UpdateProduct {
            id: 1,
            changes: ProductChanges {
                category: Some(1),
                ..Default::default()
            },
        });
        assert!(matches!(moved, Ok(CommandOutcome::Product(ref p)) if p.category == 1));
        assert_eq!(
            s.apply(Command::DeleteCategory { id: 1 }),
            Err(Rejection::CategoryInUse)
        );
        assert_eq!(
            s.apply(Command::DeleteCategory { id: 2 }),
            Ok(CommandOutcome::Done)
        );
        // A product that was never ordered is erased, which frees its category.
        assert_eq!(
            s.apply(Command::DeleteProduct { id: 1 }),
            Ok(CommandOutcome::Done)
        );
        assert_eq!(
            s.apply(Command::DeleteCategory { id: 1 }),
            Ok(CommandOutcome::Done)
        );
        assert!(s.store.read().unwrap().catalog_is_empty().unwrap());
    }

    #[test]
    fn products_need_an_existing_category() {
        let s = shop();
        assert_invalid(s.apply(product("Sax", 1, 100, 9)), "category");
        assert_eq!(created_id(s.apply(product("Sax", 1, 100, 1))), 1);
        let to_missing = Command::UpdateProduct {
            id: 1,
            changes: ProductChanges {
                category: Some(9),
                name: Some("Renamed".into()),
                ..Default::default()
            },
        };
        let before = s.digest();
        assert_invalid(s.apply(to_missing), "category");
        assert_eq!(s.digest(), before);
        assert_eq!(s.product(1).unwrap().name, "Sax");
        let missing = Command::UpdateProduct {
            id: 2,
            changes: ProductChanges::default(),
        };
        assert_eq!(s.apply(missing), Err(Rejection::NotFound));
    }

    #[test]
    fn ordered_product_is_archived_and_unordered_one_erased() {
        let s = shop();
        assert_eq!(created_id(s.apply(product("Guitar", 5, 1000, 1))), 1);
        assert_eq!(created_id(s.apply(product("Drum", 5, 500, 1))), 2);
        // Both products sit in bob's cart; alice orders the guitar.
        assert_eq!(created_id(s.apply(add_to_cart(BOB, 1, 1))), 1);
        assert_eq!(created_id(s.apply(add_to_cart(BOB, 2, 1))), 2);
        let (placed_order, _) = placed(s.apply(order(ALICE, &[(1, 2)], None)));
        // A rename after the order: the order keeps the name it was placed with.
        let renamed = s.apply(Command::UpdateProduct {
            id: 1,
            changes: ProductChanges {
                name: Some("Electric Guitar".into()),
                ..Default::default()
            },
        });
        assert!(renamed.is_ok());

        let mut changes = ChangeSet::default();
        let results = s
            .store
            .apply_batch(
                &[
                    Command::DeleteProduct { id: 1 },
                    Command::DeleteProduct { id: 2 },
                ],
                &mut changes,
            )
            .unwrap();
        assert_eq!(
            results,
            [Ok(CommandOutcome::Done), Ok(CommandOutcome::Done)]
        );
        assert!(changes.product_names);
        assert_eq!(changes.products, BTreeSet::from([1, 2]));
        assert_eq!(changes.users, BTreeSet::from([BOB]));

        // Soft delete: the guitar stays, archived, with the stock the order left.
        let guitar = s.product(1).expect("ordered product is kept");
        assert!(guitar.archived && guitar.ordered);
        assert_eq!(guitar.stock, 3);
        // Hard delete: the drum is gone.
        assert_eq!(s.product(2), None);

        let reader = s.store.read().unwrap();
        // Bob's cart lines of both products were dropped.
        assert_eq!(reader.order_items(Some(BOB), 0, 10).unwrap().total, 0);
        assert_eq!(reader.order_item(1).unwrap(), None);
        // Alice's order still shows the product as it was ordered.
        let view = reader.order(placed_order.id).unwrap().expect("order kept");
        assert_eq!(view.username, "alice");
        assert_eq!(view.items.len(), 1);
        assert_eq!(view.items[0].product_name, "Guitar");
        assert_eq!(view.items[0].item.product, 1);
        assert_eq!(view.items[0].item.unit_price, Some(Decimal::new(1000, 2)));
        // Archived products are not listed.
        let all = ProductQuery {
            category: None,
            name_contains: None,
            sort: ProductSort::Id,
            limit: 100,
            offset: 0,
        };
        assert_eq!(reader.products(&all).unwrap().total, 0);
        drop(reader);

        // An archived product is not for sale and cannot be changed or deleted again.
        assert_invalid(s.apply(add_to_cart(ALICE, 1, 1)), "product");
        assert_invalid(s.apply(order(ALICE, &[(1, 1)], None)), "items");
        let update = Command::UpdateProduct {
            id: 1,
            changes: ProductChanges {
                stock: Some(10),
                ..Default::default()
            },
        };
        assert_eq!(s.apply(update), Err(Rejection::NotFound));
        assert_eq!(
            s.apply(Command::DeleteProduct { id: 1 }),
            Err(Rejection::NotFound)
        );
        assert_eq!(
            s.apply(Command::DeleteProduct { id: 2 }),
            Err(Rejection::NotFound)
        );
        // Cancelling still returns the stock to the archived record.
        assert!(s.apply(cancel(ALICE, placed_order.id)).is_ok());
        assert_eq!(s.stock(1), 5);
    }

    #[test]
    fn cart_lines_show_live_names_and_orders_freeze_them() {
        let s = shop();
        s.apply(product("Guitar", 5, 1000, 1)).unwrap();
        let cart_line = created_id(s.apply(add_to_cart(ALICE, 1, 1)));
        let ordered_line = created_id(s.apply(add_to_cart(ALICE, 1, 2)));
        let (o, _) = placed(s.apply(cart_order(ALICE, &[ordered_line])));
        s.apply(Command::UpdateProduct {
            id: 1,
            changes: ProductChanges {
                name: Some("Bass".into()),
                price: Some(Decimal::new(1, 0)),
                ..Default::default()
            },
        })
        .unwrap();
        let reader = s.store.read().unwrap();
        let cart = reader.order_item(cart_line).unwrap().unwrap();
        assert_eq!(cart.product_name, "Bass");
        assert_eq!(cart.item.unit_price, None);
        let ordered = reader.order_item(ordered_line).unwrap().unwrap();
        assert_eq!(ordered.product_name, "Guitar");
        assert_eq!(ordered.item.order, Some(o.id));
        assert_eq!(ordered.item.unit_price, Some(Decimal::new(1000, 2)));
        assert_eq!(o.total, Decimal::new(2000, 2));
    }

    #[test]
    fn orders_from_cart_items() {
        let s = shop();
        s.apply(product("Guitar", 5, 1000, 1)).unwrap();
        s.apply(product("Drum", 5, 250, 1)).unwrap();
        let a = created_id(s.apply(add_to_cart(ALICE, 1, 2)));
        let b = created_id(s.apply(add_to_cart(ALICE, 2, 1)));
        let c = created_id(s.apply(add_to_cart(ALICE, 1, 4)));
        let bobs = created_id(s.apply(add_to_cart(BOB, 2, 1)));

        // Quantities of a cart line can change while it is in the cart.
        let update = Command::UpdateOrderItem {
            actor: ALICE,
            id: a,
            quantity: 3,
        };
        assert!(matches!(s.apply(update), Ok(CommandOutcome::OrderItem(ref i)) if i.quantity == 3));

        let before = s.digest();
        assert_invalid(s.apply(cart_order(ALICE, &[a, a])), "order_items");
        assert_invalid(s.apply(cart_order(ALICE, &[a, bobs])), "order_items");
        assert_invalid(s.apply(cart_order(ALICE, &[99])), "order_items");
        // 3 + 4 guitars from two cart lines exceed the stock of 5.
        assert_eq!(
            s.apply(cart_order(ALICE, &[a, b, c])),
            Err(Rejection::InsufficientStock(vec![StockShortage {
                product: 1,
                requested: 7,
                available: 5,
            }]))
        );
        assert_eq!(s.digest(), before);

        let (o, replayed) = placed(s.apply(cart_order(ALICE, &[b, a])));
        assert!(!replayed);
        assert_eq!(
            o.items,
            [b, a],
            "cart lines keep their ids, in request order"
        );
        assert_eq!(o.total, Decimal::new(3250, 2));
        assert_eq!(s.stock(1), 2);
        assert_eq!(s.stock(2), 4);

        // Ordered lines are no longer cart lines.
        assert_invalid(s.apply(cart_order(ALICE, &[a])), "order_items");
        let update = Command::UpdateOrderItem {
            actor: ALICE,
            id: a,
            quantity: 1,
        };
        assert_eq!(s.apply(update), Err(Rejection::ItemAlreadyOrdered));
        assert_eq!(
            s.apply(Command::DeleteOrderItem {
                actor: ALICE,
                id: b
            }),
            Err(Rejection::ItemAlreadyOrdered)
        );
        // Somebody else's line is not found, whoever asks.
        assert_eq!(
            s.apply(Command::DeleteOrderItem {
                actor: ALICE,
                id: bobs
            }),
            Err(Rejection::NotFound)
        );
        assert_eq!(
            s.apply(Command::DeleteOrderItem {
                actor: BOB,
                id: bobs
            }),
            Ok(CommandOutcome::Done)
        );
        assert_eq!(s.store.read().unwrap().order_item(bobs).unwrap(), None);
        // Deleting the guitar drops alice's remaining guitar cart line `c`.
        s.apply(Command::DeleteProduct { id: 1 }).unwrap();
        assert_eq!(s.store.read().unwrap().order_item(c).unwrap(), None);
        assert!(s.product(1).unwrap().archived);
    }

    #[test]
    fn quantities_and_line_counts_are_bounded() {
        let s = shop();
        s.apply(product("Pick", u32::MAX, 1, 1)).unwrap();
        assert_invalid(s.apply(add_to_cart(ALICE, 1, 0)), "quantity");
        assert_invalid(
            s.apply(add_to_cart(ALICE, 1, MAX_LINE_QUANTITY + 1)),
            "quantity",
        );
        assert!(s.apply(add_to_cart(ALICE, 1, MAX_LINE_QUANTITY)).is_ok());
        assert_eq!(s.apply(add_to_cart(99, 1, 1)), Err(Rejection::NotFound));
        assert_invalid(s.apply(add_to_cart(ALICE, 99, 1)), "product");

        assert_invalid(s.apply(order(ALICE, &[], None)), "items");
        assert_invalid(s.apply(cart_order(ALICE, &[])), "order_items");
        assert_invalid(s.apply(order(ALICE, &[(1, 0)], None)), "items");
        assert_invalid(
            s.apply(order(ALICE, &[(1, MAX_LINE_QUANTITY + 1)], None)),
            "items",
        );
        let too_many = vec![(1, 1); MAX_ORDER_LINES + 1];
        assert_invalid(s.apply(order(ALICE, &too_many, None)), "items");
        assert_eq!(
            s.apply(order(99, &[(1, 1)], None)),
            Err(Rejection::NotFound)
        );

        let most = vec![(1, MAX_LINE_QUANTITY); MAX_ORDER_LINES];
        let (o, _) = placed(s.apply(order(ALICE, &most, None)));
        assert_eq!(o.items.len(), MAX_ORDER_LINES);
        assert_eq!(
            s.stock(1),
            u32::MAX - MAX_LINE_QUANTITY * MAX_ORDER_LINES as u32
        );
    }

    #[test]
    fn insufficient_stock_adds_up_the_lines_of_a_product() {
        let s = shop();
        s.apply(product("Guitar", 5, 1000, 1)).unwrap();
        s.apply(product("Drum", 2, 500, 1)).unwrap();
        s.apply(product("Amp", 9, 500, 1)).unwrap();
        let before = s.digest();
        // Each line alone fits, together they do not; shortages come in product id order.
        assert_eq!(
            s.apply(order(
                ALICE,
                &[(3, 1), (2, 2), (1, 3), (2, 1), (1, 3)],
                None
            )),
            Err(Rejection::InsufficientStock(vec![
                StockShortage {
                    product: 1,
                    requested: 6,
                    available: 5,
                },
                StockShortage {
                    product: 2,
                    requested: 3,
                    available: 2,
                },
            ]))
        );
        assert_eq!(s.digest(), before);
        // Exactly the stock is fine, and leaves zero.
        let (o, _) = placed(s.apply(order(ALICE, &[(1, 2), (2, 2), (1, 3)], None)));
        assert_eq!(o.items.len(), 3);
        assert_eq!(o.total, Decimal::new(6000, 2));
        assert_eq!((s.stock(1), s.stock(2), s.stock(3)), (0, 0, 9));
        assert_eq!(
            s.apply(order(BOB, &[(1, 1)], None)),
            Err(Rejection::InsufficientStock(vec![StockShortage {
                product: 1,
                requested: 1,
                available: 0,
            }]))
        );
    }

    #[test]
    fn idempotency_key_replays_the_order_and_takes_stock_once() {
        let s = shop();
        s.apply(product("Guitar", 5, 1000, 1)).unwrap();
        s.apply(product("Drum", 5, 500, 1)).unwrap();
        let first = order(ALICE, &[(1, 2), (2, 1)], Some("key-1"));
        let (o, replayed) = placed(s.apply(first.clone()));
        assert!(!replayed);
        assert_eq!((s.stock(1), s.stock(2)), (3, 4));
        let after_first = s.digest();

        // The same request again (even at another time) gives the same order, nothing new.
        let mut again = first.clone();
        if let Command::PlaceOrder { at, .. } = &mut again {
            *at = 99;
        }
        let (o2, replayed) = placed(s.apply(again));
        assert!(replayed);
        assert_eq!(o2, o);
        assert_eq!(s.digest(), after_first);

        // The same key with other lines is refused.
        assert_eq!(
            s.apply(order(ALICE, &[(1, 1)], Some("key-1"))),
            Err(Rejection::IdempotencyMismatch)
        );
        assert_eq!(
            s.apply(order(ALICE, &[(2, 1), (1, 2)], Some("key-1"))),
            Err(Rejection::IdempotencyMismatch)
        );
        assert_eq!(s.digest(), after_first);

        // Keys belong to a user: bob's "key-1" is a new order.
        let (bobs, replayed) = placed(s.apply(order(BOB, &[(1, 1)], Some("key-1"))));
        assert!(!replayed);
        assert_ne!(bobs.id, o.id);
        assert_eq!(s.stock(1), 2);

        // Both requests in one batch: the second is a replay of the first.
        let twice = order(ALICE, &[(1, 1)], Some("key-2"));
        let results = s.apply_all(&[twice.clone(), twice]);
        let (a, replayed_a) = placed(results[0].clone());
        let (b, replayed_b) = placed(results[1].clone());
        assert!(!replayed_a && replayed_b);
        assert_eq!(a, b);
        assert_eq!(s.stock(1), 1);

        // A replay of a cancelled order shows it cancelled and places nothing.
        s.apply(cancel(ALICE, o.id)).unwrap();
        let (replay, replayed) = placed(s.apply(first));
        assert!(replayed);
        assert_eq!(replay.status, OrderStatus::Cancelled);
        assert_eq!((s.stock(1), s.stock(2)), (3, 5));
    }

    #[test]
    fn refused_order_does_not_use_up_its_idempotency_key() {
        let s = shop();
        s.apply(product("Guitar", 1, 1000, 1)).unwrap();
        assert!(matches!(
            s.apply(order(ALICE, &[(1, 2)], Some("k"))),
            Err(Rejection::InsufficientStock(_))
        ));
        let (o, replayed) = placed(s.apply(order(ALICE, &[(1, 1)], Some("k"))));
        assert!(!replayed);
        assert_eq!(o.id, 1, "the refused order did not take an id");
    }

    #[test]
    fn cancel_returns_stock_once() {
        let s = shop();
        s.apply(product("Guitar", 5, 1000, 1)).unwrap();
        s.apply(product("Drum", 5, 500, 1)).unwrap();
        let (o, _) = placed(s.apply(order(ALICE, &[(1, 2), (2, 3), (1, 1)], None)));
        assert_eq!((s.stock(1), s.stock(2)), (2, 2));

        let (cancelled, replayed) = placed(s.apply(cancel(ALICE, o.id)));
        assert!(!replayed);
        assert_eq!(cancelled.status, OrderStatus::Cancelled);
        assert_eq!(cancelled.items, o.items);
        assert_eq!((s.stock(1), s.stock(2)), (5, 5));

        let after = s.digest();
        assert_eq!(
            s.apply(cancel(ALICE, o.id)),
            Err(Rejection::AlreadyCancelled)
        );
        assert_eq!(
            s.apply(cancel(CAROL, o.id)),
            Err(Rejection::AlreadyCancelled)
        );
        assert_eq!(s.digest(), after);
        let view = s.store.read().unwrap().order(o.id).unwrap().unwrap();
        assert_eq!(view.order.status, OrderStatus::Cancelled);
    }

    #[test]
    fn only_the_owner_or_staff_can_cancel() {
        let s = shop();
        s.apply(product("Guitar", 5, 1000, 1)).unwrap();
        let (o, _) = placed(s.apply(order(ALICE, &[(1, 2)], None)));
        let before = s.digest();
        assert_eq!(s.apply(cancel(BOB, o.id)), Err(Rejection::NotFound));
        assert_eq!(s.apply(cancel(99, o.id)), Err(Rejection::NotFound));
        assert_eq!(s.apply(cancel(ALICE, 99)), Err(Rejection::NotFound));
        assert_eq!(s.digest(), before);
        assert_eq!(s.stock(1), 3);

        let mut changes = ChangeSet::default();
        let results = s.store.apply_batch(&[cancel(CAROL, o.id)], &mut changes);
        let (cancelled, _) = placed(results.unwrap().pop().unwrap());
        assert_eq!(cancelled.status, OrderStatus::Cancelled);
        assert_eq!(cancelled.user, ALICE);
        // The owner's data changed, not the staff member's.
        assert_eq!(changes.users, BTreeSet::from([ALICE]));
        assert_eq!(changes.products, BTreeSet::from([1]));
        assert_eq!(s.stock(1), 5);
    }

    #[test]
    fn refresh_token_is_consumed_once() {
        let s = TestStore::new();
        let consume = |jti: &str, expires_at, now| Command::ConsumeRefreshToken {
            jti: jti.into(),
            expires_at,
            now,
        };
        assert_eq!(s.apply(consume("a", 100, 0)), Ok(CommandOutcome::Done));
        let after = s.digest();
        assert_eq!(
            s.apply(consume("a", 100, 0)),
            Err(Rejection::RefreshTokenUsed)
        );
        assert_eq!(
            s.apply(consume("a", 500, 50)),
            Err(Rejection::RefreshTokenUsed)
        );
        assert_eq!(s.digest(), after);
        assert!(s.store.read().unwrap().refresh_token_used("a").unwrap());
        assert!(!s.store.read().unwrap().refresh_token_used("b").unwrap());

        // Tokens that expired before `now` are forgotten, but not those expiring at `now`.
        assert!(s.apply(consume("b", 200, 0)).is_ok());
        assert!(s.apply(consume("c", 300, 200)).is_ok());
        let reader = s.store.read().unwrap();
        assert!(!reader.refresh_token_used("a").unwrap());
        assert!(reader.refresh_token_used("b").unwrap());
        assert!(reader.refresh_token_used("c").unwrap());
    }

    #[test]
    fn refresh_token_purge_is_bounded() {
        let s = TestStore::new();
        let total = REFRESH_PURGE_BATCH + 10;
        let commands: Vec<Command> = (0..total)
            .map(|i| Command::ConsumeRefreshToken {
                jti: format!("old-{i:03}"),
                expires_at: i as i64,
                now: 0,
            })
            .collect();
        assert!(s.apply_all(&commands).iter().all(Result::is_ok));
        assert!(
            s.apply(Command::ConsumeRefreshToken {
                jti: "new".into(),
                expires_at: 10_000,
                now: 1_000,
            })
            .is_ok()
        );
        let reader = s.store.read().unwrap();
        let remembered: Vec<bool> = (0..total)
            .map(|i| reader.refresh_token_used(&format!("old-{i:03}")).unwrap())
            .collect();
        // The earliest-expiring ones are forgotten first.
        assert!(remembered[..REFRESH_PURGE_BATCH].iter().all(|used| !used));
        assert!(remembered[REFRESH_PURGE_BATCH..].iter().all(|used| *used));
    }

    #[test]
    fn jwt_secret_keeps_the_first_proposal() {
        let s = TestStore::new();
        let init = |secret: &[u8]| Command::InitJwtSecret {
            secret: secret.to_vec(),
        };
        assert_eq!(
            s.apply_all(&[init(b"first"), init(b"second")]),
            [
                Ok(CommandOutcome::JwtSecret(b"first".to_vec())),
                Ok(CommandOutcome::JwtSecret(b"first".to_vec()))
            ]
        );
        assert_eq!(
            s.store.read().unwrap().jwt_secret().unwrap(),
            Some(b"first".to_vec())
        );
    }

    #[test]
    fn a_cart_holds_at_most_max_cart_lines_and_frees_them_as_lines_leave() {
        let s = shop();
        assert_eq!(created_id(s.apply(product("Amp", 5, 1000, 1))), 1);
        for _ in 0..MAX_CART_LINES {
            assert!(s.apply(add_to_cart(ALICE, 1, 1)).is_ok());
        }
        assert!(matches!(
            s.apply(add_to_cart(ALICE, 1, 1)),
            Err(Rejection::Invalid {
                field: "product",
                ..
            })
        ));
        assert!(
            s.apply(add_to_cart(BOB, 1, 1)).is_ok(),
            "other carts are not full"
        );
        // Deleting a line frees a place.
        let first = s
            .store
            .read()
            .unwrap()
            .order_items(Some(ALICE), 0, 1)
            .unwrap()
            .items[0]
            .item
            .id;
        assert!(
            s.apply(Command::DeleteOrderItem {
                actor: ALICE,
                id: first
            })
            .is_ok()
        );
        assert!(s.apply(add_to_cart(ALICE, 1, 1)).is_ok());
        assert!(s.apply(add_to_cart(ALICE, 1, 1)).is_err());
    }

    #[test]
    fn ensure_admin_creates_or_updates_staff_but_never_promotes() {
        let s = shop();
        let ensure = |username: &str, hash: &str, at: Timestamp| Command::EnsureAdmin {
            username: username.into(),
            password_hash: hash.into(),
            at,
        };
        // bob signed up as a shopper: his account is not made staff.
        let before = s.digest();
        assert_eq!(
            s.apply(ensure("bob", "new-hash", 7)),
            Err(Rejection::WouldPromote)
        );
        assert_eq!(s.digest(), before, "nothing changed");

        // carol is staff: her password is replaced and her earlier sessions end.
        let Ok(CommandOutcome::User(carol)) = s.apply(ensure("carol", "new-hash", 9_500_000))
        else {
            panic!("carol updated");
        };
        assert_eq!(carol.id, CAROL);
        assert_eq!(carol.password_hash, "new-hash");
        let reader = s.store.read().unwrap();
        assert_eq!(reader.credentials_changed_at(CAROL).unwrap(), Some(9));
        assert_eq!(reader.credentials_changed_at(BOB).unwrap(), None);
        drop(reader);
        // The same password again changes nothing.
        let unchanged = s.digest();
        assert!(s.apply(ensure("carol", "new-hash", 20_000_000)).is_ok());
        assert_eq!(s.digest(), unchanged);

        let Ok(CommandOutcome::User(root)) = s.apply(ensure("root", "h", 7)) else {
            panic!("root created");
        };
        assert_eq!((root.id, root.is_staff, root.date_joined), (4, true, 7));
        assert_eq!(
            s.apply(user("root", false)),
            Err(Rejection::Duplicate {
                what: "user",
                field: "username"
            })
        );
        let reader = s.store.read().unwrap();
        assert_eq!(reader.user_by_username("root").unwrap(), Some(root));
        assert_eq!(reader.user_by_username("Root").unwrap(), None);
    }

    #[test]
    fn a_refused_command_in_a_batch_leaves_no_trace() {
        let with_refusals = TestStore::new();
        let without = TestStore::new();
        // (accepted?, command): the refused ones each fail at the point they are applied.
        let script = [
            (true, category("Rock")),
            (false, category("ROCK")),
            (false, cancel(1, 1)),
            (true, user("alice", false)),
            (false, user("alice", true)),
            (false, add_to_cart(1, 1, 1)),
            (true, product("Guitar", 2, 1000, 1)),
            (false, product("Drum", 2, 1000, 7)),
            (false, Command::DeleteCategory { id: 1 }),
            (true, add_to_cart(1, 1, 1)),
            (false, add_to_cart(1, 1, 0)),
            (false, order(1, &[(1, 5)], Some("other"))),
            (false, order(1, &[(1, 1), (9, 1)], None)),
            (false, cart_order(1, &[1, 1])),
            (true, order(1, &[(1, 1)], Some("k"))),
            (false, order(1, &[(1, 2)], Some("k"))),
            (false, cancel(2, 1)),
            (true, cart_order(1, &[1])),
        ];
        let mixed: Vec<Command> = script.iter().map(|(_, c)| c.clone()).collect();
        let good: Vec<Command> = script
            .iter()
            .filter(|(accepted, _)| *accepted)
            .map(|(_, c)| c.clone())
            .collect();
        let results = with_refusals.apply_all(&mixed);
        let accepted: Vec<bool> = results.iter().map(Result::is_ok).collect();
        let expected: Vec<bool> = script.iter().map(|(accepted, _)| *accepted).collect();
        assert_eq!(accepted, expected, "{results:?}");
        let expected = without.apply_all(&good);
        let accepted: Vec<_> = results.into_iter().filter(Result::is_ok).collect();
        assert_eq!(accepted, expected);
        assert_eq!(with_refusals.digest(), without.digest());
    }

    #[test]
    fn an_order_total_that_overflows_is_refused_not_a_panic() {
        let s = shop();
        s.apply(Command::CreateProduct(NewProduct {
            name: "Priceless".into(),
            stock: 10,
            price: Decimal::MAX,
            description: String::new(),
            category: 1,
        }))
        .unwrap();
        s.apply(product("Pick", 10, 100, 1)).unwrap();
        let before = s.digest();
        assert_invalid(s.apply(order(ALICE, &[(1, 2)], None)), "items");
        assert_invalid(s.apply(order(ALICE, &[(1, 1), (1, 1)], None)), "items");
        let line = created_id(s.apply(add_to_cart(ALICE, 1, 1)));
        let other = created_id(s.apply(add_to_cart(ALICE, 2, 1)));
        let before_cart = s.digest();
        assert_ne!(before, before_cart);
        assert_invalid(s.apply(cart_order(ALICE, &[line, other])), "order_items");
        assert_eq!(s.digest(), before_cart);
        assert_eq!(s.stock(1), 10);
        // One of it still sells.
        let (o, _) = placed(s.apply(order(ALICE, &[(1, 1)], None)));
        assert_eq!(o.total, Decimal::MAX);
    }

    #[test]
    fn records_and_commands_round_trip_through_bincode() {
        // Decimal's default Deserialize asks for `deserialize_any`, which bincode cannot do;
        // every money field must go through `rust_decimal::serde::str`.
        let price = Decimal::new(-123_4500, 4);
        let product = Product {
            id: 1,
            name: "Guitar".into(),
            stock: 3,
            price,
            description: String::new(),
            category: 2,
            ordered: true,
            archived: false,
        };
        assert_eq!(
            decode::<Product>(&encode(&product).unwrap()).unwrap(),
            product
        );
        let decoded = decode::<Product>(&encode(&product).unwrap()).unwrap();
        assert_eq!(decoded.price.scale(), 4, "the scale survives");
        for unit_price in [None, Some(Decimal::MAX), Some(Decimal::MIN)] {
            let item = OrderItem {
                id: 1,
                product: 1,
                quantity: 2,
                user: 3,
                order: Some(4),
                unit_price,
                product_name: Some("Guitar".into()),
                created_at: -5,
            };
            assert_eq!(decode::<OrderItem>(&encode(&item).unwrap()).unwrap(), item);
        }
        let placed_order = Order {
            id: 4,
            user: 3,
            items: vec![1],
            total: Decimal::new(1, 28),
            status: OrderStatus::Cancelled,
            created_at: 9,
        };
        let decoded = decode::<Order>(&encode(&placed_order).unwrap()).unwrap();
        assert_eq!(decoded, placed_order);
        let commands = [
            product_command_with_price(price),
            Command::UpdateProduct {
                id: 1,
                changes: ProductChanges {
                    price: Some(price),
                    ..Default::default()
                },
            },
            Command::UpdateProduct {
                id: 1,
                changes: ProductChanges::default(),
            },
            order(1, &[(1, 2)], Some("k")),
            cart_order(1, &[3, 4]),
        ];
        for command in commands {
            assert_eq!(
                decode::<Command>(&encode(&command).unwrap()).unwrap(),
                command
            );
        }
    }

    fn product_command_with_price(price: Decimal) -> Command {
        Command::CreateProduct(NewProduct {
            name: "Guitar".into(),
            stock: 1,
            price,
            description: "d".into(),
            category: 1,
        })
    }

    #[test]
    fn change_sets_name_what_changed() {
        let s = shop();
        let changes_of = |commands: &[Command]| {
            let mut changes = ChangeSet::default();
            s.store.apply_batch(commands, &mut changes).unwrap();
            changes
        };
        let c = changes_of(&[product("Guitar", 5, 100, 1), add_to_cart(BOB, 1, 1)]);
        assert!(!c.categories && !c.product_names);
        assert_eq!(c.products, BTreeSet::from([1]));
        assert_eq!(c.users, BTreeSet::from([BOB]));
        let c = changes_of(&[order(ALICE, &[(1, 1)], None)]);
        assert_eq!(c.products, BTreeSet::from([1]));
        assert_eq!(c.users, BTreeSet::from([ALICE]));
        // Refused commands change nothing, so they report nothing.
        let c = changes_of(&[
            order(ALICE, &[(1, 50)], None),
            category("rock"),
            Command::DeleteProduct { id: 9 },
            cancel(BOB, 1),
        ]);
        assert!(c.is_empty(), "{c:?}");
        let c = changes_of(&[Command::UpdateCategory {
            id: 1,
            name: "Pop".into(),
        }]);
        assert!(c.categories);
    }
}
