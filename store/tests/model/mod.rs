//! What the property tests of the store share: fresh stores and batches, the generators of
//! random but plausible command sequences (`generate`), and the reference model that predicts
//! every answer and that the generators follow to aim at existing records.

pub mod generate;

use std::collections::{BTreeMap, BTreeSet};

use rust_decimal::Decimal;
use store::{
    ChangeSet, Command, CommandOutcome, Id, MAX_CART_LINES, MAX_LINE_QUANTITY, MAX_ORDER_LINES,
    OrderLines, Rejection, StockShortage, Store,
};
use tempfile::TempDir;

pub use generate::{commands, cuts};

pub type Answer = Result<CommandOutcome, Rejection>;

// ---------------------------------------------------------------------------------------
// Stores

pub struct TestStore {
    pub store: Store,
    _dir: TempDir,
}

impl TestStore {
    pub fn new() -> TestStore {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path().join("store.redb")).expect("open store");
        TestStore { store, _dir: dir }
    }

    pub fn apply(&self, commands: &[Command]) -> (Vec<Answer>, ChangeSet) {
        let mut changes = ChangeSet::default();
        let answers = self
            .store
            .apply_batch(commands, &mut changes)
            .expect("no storage error");
        assert_eq!(answers.len(), commands.len());
        (answers, changes)
    }

    pub fn digest(&self) -> u64 {
        self.store.read().unwrap().digest().unwrap()
    }
}

/// Splits `commands` into batches, cutting after command `i` when `cuts[i]`.
pub fn batches<'a>(commands: &'a [Command], cuts: &[bool]) -> Vec<&'a [Command]> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 0..commands.len() {
        if cuts.get(i).copied().unwrap_or(false) || i + 1 == commands.len() {
            out.push(&commands[start..=i]);
            start = i + 1;
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// The reference model

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MProduct {
    pub name: String,
    pub stock: u32,
    pub price: Decimal,
    pub category: Id,
    pub ordered: bool,
    pub archived: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MUser {
    pub username: String,
    pub is_staff: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MItem {
    pub user: Id,
    pub product: Id,
    pub quantity: u32,
    pub order: Option<Id>,
    pub unit_price: Option<Decimal>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MOrder {
    pub user: Id,
    pub items: Vec<Id>,
    pub total: Decimal,
    pub cancelled: bool,
}

#[derive(Debug, Default)]
struct Counters {
    category: Id,
    product: Id,
    user: Id,
    item: Id,
    order: Id,
}

fn next(counter: &mut Id) -> Id {
    *counter += 1;
    *counter
}

/// What the model expects of an accepted command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// The record created or changed, by id.
    Record(Id),
    Order {
        id: Id,
        replayed: bool,
    },
    Secret(Vec<u8>),
    Done,
}

/// The model's answer: accepted, or refused for this exact reason (`Some`) or for some
/// reason among several (`None`: which one is reported first is not this model's business).
pub type Prediction = Result<Expected, Option<Rejection>>;

#[derive(Debug, Default)]
pub struct Model {
    ids: Counters,
    pub categories: BTreeMap<Id, String>,
    pub products: BTreeMap<Id, MProduct>,
    pub users: BTreeMap<Id, MUser>,
    pub items: BTreeMap<Id, MItem>,
    pub orders: BTreeMap<Id, MOrder>,
    idempotency: BTreeMap<(Id, String), (OrderLines, Id)>,
    pub jwt_secret: Option<Vec<u8>>,
    /// jti → expiry.
    pub used_refresh: BTreeMap<String, i64>,
}

fn quantity_ok(quantity: u32) -> bool {
    (1..=MAX_LINE_QUANTITY).contains(&quantity)
}

impl Model {
    fn on_sale(&self, id: Id) -> Option<&MProduct> {
        self.products.get(&id).filter(|p| !p.archived)
    }

    fn category_name_taken(&self, name: &str, except: Option<Id>) -> bool {
        let lower = name.to_lowercase();
        self.categories
            .iter()
            .any(|(&id, n)| Some(id) != except && n.to_lowercase() == lower)
    }

    pub fn apply(&mut self, command: &Command) -> Prediction {
        let duplicate_category = Rejection::Duplicate {
            what: "category",
            field: "name",
        };
        match command {
            Command::CreateCategory { name } => {
                if self.category_name_taken(name, None) {
                    return Err(Some(duplicate_category));
                }
                let id = next(&mut self.ids.category);
                self.categories.insert(id, name.clone());
                Ok(Expected::Record(id))
            }
            Command::UpdateCategory { id, name } => {
                if !self.categories.contains_key(id) {
                    return Err(Some(Rejection::NotFound));
                }
                if self.category_name_taken(name, Some(*id)) {
                    return Err(Some(duplicate_category));
                }
                self.categories.insert(*id, name.clone());
                Ok(Expected::Record(*id))
            }
            Command::DeleteCategory { id } => {
                if !self.categories.contains_key(id) {
                    return Err(Some(Rejection::NotFound));
                }
                // Archived products still belong to their category.
                if self.products.values().any(|p| p.category == *id) {
                    return Err(Some(Rejection::CategoryInUse));
                }
                self.categories.remove(id);
                Ok(Expected::Done)
            }
            Command::CreateProduct(new) => {
                if !self.categories.contains_key(&new.category) {
                    return Err(None);
                }
                let id = next(&mut self.ids.product);
                self.products.insert(
                    id,
                    MProduct {
                        name: new.name.clone(),
                        stock: new.stock,
                        price: new.price,
                        category: new.category,
                        ordered: false,
                        archived: false,
                    },
                );
                Ok(Expected::Record(id))
            }
            Command::UpdateProduct { id, changes } => {
                if self.on_sale(*id).is_none() {
                    return Err(Some(Rejection::NotFound));
                }
                if let Some(category) = changes.category
                    && !self.categories.contains_key(&category)
                {
                    return Err(None);
                }
                let p = self.products.get_mut(id).unwrap();
                if let Some(name) = &changes.name {
                    p.name = name.clone();
                }
                if let Some(stock) = changes.stock {
                    p.stock = stock;
                }
                if let Some(price) = changes.price {
                    p.price = price;
                }
                if let Some(category) = changes.category {
                    p.category = category;
                }
                Ok(Expected::Record(*id))
            }
            Command::DeleteProduct { id } => {
                if self.on_sale(*id).is_none() {
                    return Err(Some(Rejection::NotFound));
                }
                self.items
                    .retain(|_, item| item.product != *id || item.order.is_some());
                let p = self.products.get_mut(id).unwrap();
                if p.ordered {
                    p.archived = true;
                } else {
                    self.products.remove(id);
                }
                Ok(Expected::Done)
            }
            Command::CreateUser(new) => {
                let taken = |u: &MUser| u.username.to_lowercase() == new.username.to_lowercase();
                if self.users.values().any(taken) {
                    return Err(Some(Rejection::Duplicate {
                        what: "user",
                        field: "username",
                    }));
                }
                let id = next(&mut self.ids.user);
                self.users.insert(
                    id,
                    MUser {
                        username: new.username.clone(),
                        is_staff: new.is_staff,
                    },
                );
                Ok(Expected::Record(id))
            }
            Command::EnsureAdmin { username, .. } => {
                let existing = self.users.iter_mut().find(|(_, u)| u.username == *username);
                if let Some((&id, user)) = existing {
                    // An account that is not staff is never promoted.
                    if !user.is_staff {
                        return Err(Some(Rejection::WouldPromote));
                    }
                    return Ok(Expected::Record(id));
                }
                let folded = username.to_lowercase();
                if self
                    .users
                    .values()
                    .any(|u| u.username.to_lowercase() == folded)
                {
                    return Err(Some(Rejection::Duplicate {
                        what: "user",
                        field: "username",
                    }));
                }
                let id = next(&mut self.ids.user);
                self.users.insert(
                    id,
                    MUser {
                        username: username.clone(),
                        is_staff: true,
                    },
                );
                Ok(Expected::Record(id))
            }
            Command::AddOrderItem {
                user,
                product,
                quantity,
                ..
            } => {
                if !self.users.contains_key(user) {
                    return Err(Some(Rejection::NotFound));
                }
                if !quantity_ok(*quantity) || self.on_sale(*product).is_none() {
                    return Err(None);
                }
                let in_cart = self
                    .items
                    .values()
                    .filter(|i| i.user == *user && i.order.is_none())
                    .count();
                if in_cart as u64 >= MAX_CART_LINES {
                    return Err(None);
                }
                let id = next(&mut self.ids.item);
                self.items.insert(
                    id,
                    MItem {
                        user: *user,
                        product: *product,
                        quantity: *quantity,
                        order: None,
                        unit_price: None,
                    },
                );
                Ok(Expected::Record(id))
            }
            Command::UpdateOrderItem {
                actor,
                id,
                quantity,
            } => {
                self.own_cart_line(*actor, *id)?;
                if !quantity_ok(*quantity) {
                    return Err(None);
                }
                self.items.get_mut(id).unwrap().quantity = *quantity;
                Ok(Expected::Record(*id))
            }
            Command::DeleteOrderItem { actor, id } => {
                self.own_cart_line(*actor, *id)?;
                self.items.remove(id);
                Ok(Expected::Done)
            }
            Command::PlaceOrder {
                user,
                lines,
                idempotency_key,
                ..
            } => self.place_order(*user, lines, idempotency_key.as_deref()),
            Command::CancelOrder { actor, id } => {
                let Some(order) = self.orders.get(id) else {
                    return Err(Some(Rejection::NotFound));
                };
                let staff = self.users.get(actor).is_some_and(|u| u.is_staff);
                if order.user != *actor && !staff {
                    return Err(Some(Rejection::NotFound));
                }
                if order.cancelled {
                    return Err(Some(Rejection::AlreadyCancelled));
                }
                for item in &order.items {
                    let item = &self.items[item];
                    let product = self.products.get_mut(&item.product).unwrap();
                    product.stock = product.stock.saturating_add(item.quantity);
                }
                self.orders.get_mut(id).unwrap().cancelled = true;
                Ok(Expected::Order {
                    id: *id,
                    replayed: false,
                })
            }
            Command::InitJwtSecret { secret } => {
                let kept = self.jwt_secret.get_or_insert_with(|| secret.clone());
                Ok(Expected::Secret(kept.clone()))
            }
            Command::ConsumeRefreshToken {
                jti,
                expires_at,
                now,
            } => {
                if self.used_refresh.contains_key(jti) {
                    return Err(Some(Rejection::RefreshTokenUsed));
                }
                let by_expiry: BTreeSet<(i64, String)> = self
                    .used_refresh
                    .iter()
                    .map(|(jti, &expiry)| (expiry, jti.clone()))
                    .collect();
                for (_, old) in by_expiry.into_iter().filter(|(e, _)| e < now).take(64) {
                    self.used_refresh.remove(&old);
                }
                self.used_refresh.insert(jti.clone(), *expires_at);
                Ok(Expected::Done)
            }
            Command::ChangePassword { user, .. } => match self.users.contains_key(user) {
                true => Ok(Expected::Record(*user)),
                false => Err(Some(Rejection::NotFound)),
            },
            // The generators make no status or staff changes: those commands are tested
            // beside their apply code (apply/order_status.rs, apply/staff.rs).
            Command::SetOrderStatus { .. }
            | Command::SetUserStaff { .. }
            | Command::SetUserActive { .. } => {
                panic!("the model does not predict {command:?}; the generators never make it")
            }
            // Not generated: members are no part of the shop's model.
            Command::RecordMember(_) => Ok(Expected::Done),
        }
    }

    fn own_cart_line(&self, actor: Id, id: Id) -> Result<(), Option<Rejection>> {
        match self.items.get(&id) {
            Some(item) if item.user == actor => match item.order {
                Some(_) => Err(Some(Rejection::ItemAlreadyOrdered)),
                None => Ok(()),
            },
            _ => Err(Some(Rejection::NotFound)),
        }
    }

    fn place_order(&mut self, user: Id, lines: &OrderLines, key: Option<&str>) -> Prediction {
        if let Some(key) = key
            && let Some((earlier, order)) = self.idempotency.get(&(user, key.to_owned()))
        {
            if earlier != lines {
                return Err(Some(Rejection::IdempotencyMismatch));
            }
            return Ok(Expected::Order {
                id: *order,
                replayed: true,
            });
        }
        if !self.users.contains_key(&user) {
            return Err(Some(Rejection::NotFound));
        }
        // (product, quantity, cart line)
        let mut resolved: Vec<(Id, u32, Option<Id>)> = Vec::new();
        match lines {
            OrderLines::Products(lines) => {
                if lines.is_empty() || lines.len() > MAX_ORDER_LINES {
                    return Err(None);
                }
                for line in lines {
                    if !quantity_ok(line.quantity) || self.on_sale(line.product).is_none() {
                        return Err(None);
                    }
                    resolved.push((line.product, line.quantity, None));
                }
            }
            OrderLines::CartItems(ids) => {
                if ids.is_empty() || ids.len() > MAX_ORDER_LINES {
                    return Err(None);
                }
                let distinct: BTreeSet<Id> = ids.iter().copied().collect();
                if distinct.len() != ids.len() {
                    return Err(None);
                }
                for id in ids {
                    match self.items.get(id) {
                        Some(item)
                            if item.user == user
                                && item.order.is_none()
                                && self.on_sale(item.product).is_some() =>
                        {
                            resolved.push((item.product, item.quantity, Some(*id)));
                        }
                        _ => return Err(None),
                    }
                }
            }
        }
        let mut wanted: BTreeMap<Id, u64> = BTreeMap::new();
        for &(product, quantity, _) in &resolved {
            *wanted.entry(product).or_default() += u64::from(quantity);
        }
        let shortages: Vec<StockShortage> = wanted
            .iter()
            .filter_map(|(&product, &requested)| {
                let available = self.products[&product].stock;
                (requested > u64::from(available)).then_some(StockShortage {
                    product,
                    requested,
                    available,
                })
            })
            .collect();
        if !shortages.is_empty() {
            return Err(Some(Rejection::InsufficientStock(shortages)));
        }

        let order_id = next(&mut self.ids.order);
        for (product, requested) in wanted {
            let p = self.products.get_mut(&product).unwrap();
            p.stock -= requested as u32;
            p.ordered = true;
        }
        let mut total = Decimal::ZERO;
        let mut item_ids = Vec::new();
        for (product, quantity, cart_line) in resolved {
            let price = self.products[&product].price;
            total += price * Decimal::from(quantity);
            let id = match cart_line {
                Some(id) => id,
                None => next(&mut self.ids.item),
            };
            self.items.insert(
                id,
                MItem {
                    user,
                    product,
                    quantity,
                    order: Some(order_id),
                    unit_price: Some(price),
                },
            );
            item_ids.push(id);
        }
        self.orders.insert(
            order_id,
            MOrder {
                user,
                items: item_ids,
                total,
                cancelled: false,
            },
        );
        if let Some(key) = key {
            self.idempotency
                .insert((user, key.to_owned()), (lines.clone(), order_id));
        }
        Ok(Expected::Order {
            id: order_id,
            replayed: false,
        })
    }
}
