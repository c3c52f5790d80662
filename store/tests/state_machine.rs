//! Property tests of the store as a state machine: random but plausible command sequences
//! (ids drawn from small ranges, so many hit and some miss) applied to fresh stores.
//!
//! - determinism: the same commands give the same answers and the same digest however they
//!   are split into batches;
//! - a small reference model predicts every answer and the whole visible state, stock
//!   included, after every batch;
//! - conservation: without admin stock edits, created stock = current stock + what placed
//!   (not cancelled) orders hold;
//! - a refused command changes nothing;
//! - an order asking for more than the stock of a product, summed over its lines, is refused
//!   with exactly that sum.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::strategy::Union;
use rust_decimal::Decimal;
use store::{
    ChangeSet, Command, CommandOutcome, Id, MAX_CART_LINES, MAX_LINE_QUANTITY, MAX_ORDER_LINES,
    NewProduct, NewUser, OrderLine, OrderLines, OrderStatus, ProductChanges, Rejection,
    StockShortage, Store,
};
use tempfile::TempDir;

type Answer = Result<CommandOutcome, Rejection>;

// ---------------------------------------------------------------------------------------
// Stores

struct TestStore {
    store: Store,
    _dir: TempDir,
}

impl TestStore {
    fn new() -> TestStore {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path().join("store.redb")).expect("open store");
        TestStore { store, _dir: dir }
    }

    fn apply(&self, commands: &[Command]) -> (Vec<Answer>, ChangeSet) {
        let mut changes = ChangeSet::default();
        let answers = self
            .store
            .apply_batch(commands, &mut changes)
            .expect("no storage error");
        assert_eq!(answers.len(), commands.len());
        (answers, changes)
    }

    fn digest(&self) -> u64 {
        self.store.read().unwrap().digest().unwrap()
    }
}

/// Splits `commands` into batches, cutting after command `i` when `cuts[i]`.
fn batches<'a>(commands: &'a [Command], cuts: &[bool]) -> Vec<&'a [Command]> {
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
// Generators

/// An id: mostly one of the first `likely` (which tend to exist), sometimes up to `max`
/// (which tend not to).
fn id(likely: Id, max: Id) -> BoxedStrategy<Id> {
    prop_oneof![5 => 1..=likely, 1 => 1..=max].boxed()
}

fn category_id() -> BoxedStrategy<Id> {
    id(3, 5)
}

fn product_id() -> BoxedStrategy<Id> {
    id(4, 10)
}

/// Users 1..=3 are created first; 4 exists only once a generated command creates it.
/// Alice (1) acts most, so her cart lines and orders are often hers to order and cancel.
fn user_id() -> BoxedStrategy<Id> {
    prop_oneof![4 => Just(1), 3 => 2..=3u64, 1 => Just(4)].boxed()
}

fn item_id() -> BoxedStrategy<Id> {
    id(6, 16)
}

fn order_id() -> BoxedStrategy<Id> {
    id(3, 8)
}

fn quantity() -> impl Strategy<Value = u32> {
    prop_oneof![
        30 => 1..=4u32,
        1 => Just(0u32),
        1 => Just(MAX_LINE_QUANTITY + 1),
    ]
}

fn price() -> impl Strategy<Value = Decimal> {
    (1..=50_00i64).prop_map(|cents| Decimal::new(cents, 2))
}

fn category_name() -> impl Strategy<Value = String> {
    prop::sample::select(&["Rock", "rock", "Jazz", "JAZZ", "Folk", "Blues", "bLUES"][..])
        .prop_map(str::to_owned)
}

fn product_name() -> impl Strategy<Value = String> {
    prop::sample::select(&["Guitar", "guitar", "Drum Kit", "Bass", "Amp", "Piano"][..])
        .prop_map(str::to_owned)
}

fn idempotency_key() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        1 => Just(None),
        1 => prop::sample::select(&["k1", "k2", "k3"][..]).prop_map(|k| Some(k.to_owned())),
    ]
}

fn new_user(username: &str, is_staff: bool) -> Command {
    Command::CreateUser(NewUser {
        username: username.into(),
        email: format!("{username}@example.com"),
        phone_number: String::new(),
        password_hash: format!("hash:{username}"),
        is_staff,
        date_joined: 0,
    })
}

fn create_product(categories: impl Strategy<Value = Id>) -> impl Strategy<Value = Command> {
    (product_name(), 0..=8u32, price(), categories).prop_map(|(name, stock, price, category)| {
        Command::CreateProduct(NewProduct {
            description: format!("a {name}"),
            name,
            stock,
            price,
            category,
        })
    })
}

fn product_changes(with_stock: bool) -> impl Strategy<Value = ProductChanges> {
    let stock = if with_stock {
        prop::option::of(0..=8u32).boxed()
    } else {
        Just(None).boxed()
    };
    (
        prop::option::of(product_name()),
        stock,
        prop::option::of(price()),
        prop::option::weighted(0.2, Just("new description".to_owned())),
        prop::option::weighted(0.3, category_id()),
    )
        .prop_map(
            |(name, stock, price, description, category)| ProductChanges {
                name,
                stock,
                price,
                description,
                category,
            },
        )
}

fn order_lines() -> impl Strategy<Value = OrderLines> {
    let products = prop::collection::vec((product_id(), quantity()), 1..=3).prop_map(|lines| {
        OrderLines::Products(
            lines
                .into_iter()
                .map(|(product, quantity)| OrderLine { product, quantity })
                .collect(),
        )
    });
    let cart_items = prop::collection::vec(item_id(), 1..=3).prop_map(OrderLines::CartItems);
    prop_oneof![
        12 => products,
        8 => cart_items,
        1 => Just(OrderLines::Products(Vec::new())),
        1 => Just(OrderLines::CartItems(Vec::new())),
    ]
}

/// One plausible command. `with_stock`: whether product updates may set the stock.
fn command(with_stock: bool) -> BoxedStrategy<Command> {
    let at = 0..1_000i64;
    Union::new_weighted(vec![
        (
            1,
            category_name()
                .prop_map(|name| Command::CreateCategory { name })
                .boxed(),
        ),
        (
            1,
            (category_id(), category_name())
                .prop_map(|(id, name)| Command::UpdateCategory { id, name })
                .boxed(),
        ),
        (
            1,
            category_id()
                .prop_map(|id| Command::DeleteCategory { id })
                .boxed(),
        ),
        (3, create_product(category_id()).boxed()),
        (
            2,
            (product_id(), product_changes(with_stock))
                .prop_map(|(id, changes)| Command::UpdateProduct { id, changes })
                .boxed(),
        ),
        (
            1,
            product_id()
                .prop_map(|id| Command::DeleteProduct { id })
                .boxed(),
        ),
        (
            1,
            // Case variants: usernames are unique whatever their case.
            prop::sample::select(&["alice", "dave", "Dave", "ALICE"][..])
                .prop_map(|name| new_user(name, false))
                .boxed(),
        ),
        (
            1,
            (
                prop::sample::select(&["bob", "root", "Root"][..]),
                at.clone(),
            )
                .prop_map(|(username, at)| Command::EnsureAdmin {
                    username: username.into(),
                    password_hash: "admin-hash".into(),
                    at,
                })
                .boxed(),
        ),
        (
            5,
            (user_id(), product_id(), quantity(), at.clone())
                .prop_map(|(user, product, quantity, at)| Command::AddOrderItem {
                    user,
                    product,
                    quantity,
                    at,
                })
                .boxed(),
        ),
        (
            1,
            (user_id(), item_id(), quantity())
                .prop_map(|(actor, id, quantity)| Command::UpdateOrderItem {
                    actor,
                    id,
                    quantity,
                })
                .boxed(),
        ),
        (
            1,
            (user_id(), item_id())
                .prop_map(|(actor, id)| Command::DeleteOrderItem { actor, id })
                .boxed(),
        ),
        (
            8,
            (user_id(), order_lines(), idempotency_key(), at)
                .prop_map(|(user, lines, idempotency_key, at)| Command::PlaceOrder {
                    user,
                    lines,
                    idempotency_key,
                    at,
                })
                .boxed(),
        ),
        (
            3,
            (user_id(), order_id())
                .prop_map(|(actor, id)| Command::CancelOrder { actor, id })
                .boxed(),
        ),
        (
            1,
            (
                prop::sample::select(&["jti-a", "jti-b", "jti-c"][..]),
                0..100i64,
                0..100i64,
            )
                .prop_map(|(jti, expires_at, now)| Command::ConsumeRefreshToken {
                    jti: jti.into(),
                    expires_at,
                    now,
                })
                .boxed(),
        ),
        (
            1,
            prop::sample::select(vec![b"one".to_vec(), b"two".to_vec()])
                .prop_map(|secret| Command::InitJwtSecret { secret })
                .boxed(),
        ),
    ])
    .boxed()
}

/// A generated step: a fresh command, or one aimed at the state so far (worked out with the
/// reference model while the sequence is built), so that orders from cart lines and
/// cancellations get past the "not found" checks often enough to matter.
#[derive(Debug, Clone)]
enum Step {
    Fresh(Command),
    /// The repetition of any earlier command: the same order twice, a second cancel,
    /// a token used again...
    Repeat(prop::sample::Index),
    /// Places an earlier order again: same user, lines and idempotency key.
    RepeatOrder(prop::sample::Index),
    /// Orders some of a user's cart lines (chosen by the bits of the mask; all if none).
    OrderCart {
        user: prop::sample::Index,
        mask: u8,
        key: Option<String>,
    },
    /// Changes the quantity of (`Some`) or deletes (`None`) a cart line, as its owner.
    EditCart {
        item: prop::sample::Index,
        quantity: Option<u32>,
    },
    /// Cancels an existing order, as its owner or as staff.
    CancelExisting {
        order: prop::sample::Index,
        by_staff: bool,
    },
}

fn step(with_stock: bool) -> impl Strategy<Value = Step> {
    prop_oneof![
        14 => command(with_stock).prop_map(Step::Fresh),
        1 => any::<prop::sample::Index>().prop_map(Step::Repeat),
        2 => any::<prop::sample::Index>().prop_map(Step::RepeatOrder),
        1 => (any::<prop::sample::Index>(), prop::option::of(quantity()))
            .prop_map(|(item, quantity)| Step::EditCart { item, quantity }),
        2 => (any::<prop::sample::Index>(), any::<u8>(), idempotency_key())
            .prop_map(|(user, mask, key)| Step::OrderCart { user, mask, key }),
        1 => (any::<prop::sample::Index>(), prop::bool::weighted(0.25))
            .prop_map(|(order, by_staff)| Step::CancelExisting { order, by_staff }),
    ]
}

/// The command a step stands for, given the commands so far and the model's state after
/// them; `None` when the step has nothing to aim at.
fn materialize(step: Step, commands: &[Command], model: &Model) -> Option<Command> {
    match step {
        Step::Fresh(command) => Some(command),
        Step::Repeat(index) => Some(index.get(commands).clone()),
        Step::RepeatOrder(index) => {
            let orders: Vec<&Command> = commands
                .iter()
                .filter(|c| matches!(c, Command::PlaceOrder { .. }))
                .collect();
            (!orders.is_empty()).then(|| (*index.get(&orders)).clone())
        }
        Step::OrderCart { user, mask, key } => {
            let owners: BTreeSet<Id> = model
                .items
                .values()
                .filter(|i| i.order.is_none())
                .map(|i| i.user)
                .collect();
            let owners: Vec<Id> = owners.into_iter().collect();
            if owners.is_empty() {
                return None;
            }
            let owner = *user.get(&owners);
            let lines: Vec<Id> = model
                .items
                .iter()
                .filter(|(_, i)| i.user == owner && i.order.is_none())
                .map(|(&id, _)| id)
                .collect();
            let chosen: Vec<Id> = lines
                .iter()
                .enumerate()
                .filter(|(n, _)| mask & (1 << (n % 8)) != 0)
                .map(|(_, &id)| id)
                .collect();
            Some(Command::PlaceOrder {
                user: owner,
                lines: OrderLines::CartItems(if chosen.is_empty() { lines } else { chosen }),
                idempotency_key: key,
                at: 500,
            })
        }
        Step::EditCart { item, quantity } => {
            let lines: Vec<(&Id, &MItem)> = model
                .items
                .iter()
                .filter(|(_, i)| i.order.is_none())
                .collect();
            if lines.is_empty() {
                return None;
            }
            let (&id, line) = *item.get(&lines);
            let actor = line.user;
            Some(match quantity {
                Some(quantity) => Command::UpdateOrderItem {
                    actor,
                    id,
                    quantity,
                },
                None => Command::DeleteOrderItem { actor, id },
            })
        }
        Step::CancelExisting { order, by_staff } => {
            let orders: Vec<(&Id, &MOrder)> = model.orders.iter().collect();
            if orders.is_empty() {
                return None;
            }
            let (&id, o) = *order.get(&orders);
            let actor = if by_staff { 3 } else { o.user };
            Some(Command::CancelOrder { actor, id })
        }
    }
}

/// Three categories and three users (bob plain, carol staff), then a few products.
fn prefix() -> impl Strategy<Value = Vec<Command>> {
    prop::collection::vec(create_product(1..=3u64), 2..=5).prop_map(|products| {
        let mut commands = vec![
            Command::CreateCategory {
                name: "Rock".into(),
            },
            Command::CreateCategory {
                name: "Jazz".into(),
            },
            Command::CreateCategory {
                name: "Folk".into(),
            },
            new_user("alice", false),
            new_user("bob", false),
            new_user("carol", true),
        ];
        commands.extend(products);
        commands
    })
}

fn commands(with_stock: bool, max_steps: usize) -> impl Strategy<Value = Vec<Command>> {
    let steps = prop::collection::vec(step(with_stock), 0..=max_steps);
    (prefix(), steps).prop_map(|(prefix, steps)| {
        let mut model = Model::default();
        for command in &prefix {
            let _ = model.apply(command);
        }
        let mut commands = prefix;
        for step in steps {
            if let Some(command) = materialize(step, &commands, &model) {
                let _ = model.apply(&command);
                commands.push(command);
            }
        }
        commands
    })
}

/// Where to cut a sequence of commands into batches.
fn cuts() -> impl Strategy<Value = Vec<bool>> {
    prop::collection::vec(prop::bool::weighted(0.2), 80)
}

// ---------------------------------------------------------------------------------------
// The reference model

#[derive(Debug, Clone, PartialEq, Eq)]
struct MProduct {
    name: String,
    stock: u32,
    price: Decimal,
    category: Id,
    ordered: bool,
    archived: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct MUser {
    username: String,
    is_staff: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct MItem {
    user: Id,
    product: Id,
    quantity: u32,
    order: Option<Id>,
    unit_price: Option<Decimal>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct MOrder {
    user: Id,
    items: Vec<Id>,
    total: Decimal,
    cancelled: bool,
}

/// Everything the tests compare between the model and a store.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Visible {
    categories: BTreeMap<Id, String>,
    products: BTreeMap<Id, MProduct>,
    users: BTreeMap<Id, MUser>,
    items: BTreeMap<Id, MItem>,
    orders: BTreeMap<Id, MOrder>,
    jwt_secret: Option<Vec<u8>>,
    used_refresh: BTreeSet<String>,
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
enum Expected {
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
type Prediction = Result<Expected, Option<Rejection>>;

#[derive(Debug, Default)]
struct Model {
    ids: Counters,
    categories: BTreeMap<Id, String>,
    products: BTreeMap<Id, MProduct>,
    users: BTreeMap<Id, MUser>,
    items: BTreeMap<Id, MItem>,
    orders: BTreeMap<Id, MOrder>,
    idempotency: BTreeMap<(Id, String), (OrderLines, Id)>,
    jwt_secret: Option<Vec<u8>>,
    /// jti → expiry.
    used_refresh: BTreeMap<String, i64>,
}

fn quantity_ok(quantity: u32) -> bool {
    (1..=MAX_LINE_QUANTITY).contains(&quantity)
}

impl Model {
    fn visible(&self) -> Visible {
        Visible {
            categories: self.categories.clone(),
            products: self.products.clone(),
            users: self.users.clone(),
            items: self.items.clone(),
            orders: self.orders.clone(),
            jwt_secret: self.jwt_secret.clone(),
            used_refresh: self.used_refresh.keys().cloned().collect(),
        }
    }

    fn on_sale(&self, id: Id) -> Option<&MProduct> {
        self.products.get(&id).filter(|p| !p.archived)
    }

    fn category_name_taken(&self, name: &str, except: Option<Id>) -> bool {
        let lower = name.to_lowercase();
        self.categories
            .iter()
            .any(|(&id, n)| Some(id) != except && n.to_lowercase() == lower)
    }

    fn apply(&mut self, command: &Command) -> Prediction {
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

/// The store's state in the model's terms.
fn visible(store: &Store) -> Visible {
    let reader = store.read().unwrap();
    let categories = reader
        .categories()
        .unwrap()
        .into_iter()
        .map(|c| (c.id, c.name))
        .collect();
    let products = reader
        .all_products()
        .unwrap()
        .into_iter()
        .map(|p| {
            let m = MProduct {
                name: p.name,
                stock: p.stock,
                price: p.price,
                category: p.category,
                ordered: p.ordered,
                archived: p.archived,
            };
            (p.id, m)
        })
        .collect();
    let mut users = BTreeMap::new();
    for id in 1..=10 {
        if let Some(u) = reader.user(id).unwrap() {
            let by_name = reader.user_by_username(&u.username).unwrap();
            assert_eq!(by_name.as_ref(), Some(&u), "username index of {id}");
            users.insert(
                id,
                MUser {
                    username: u.username,
                    is_staff: u.is_staff,
                },
            );
        }
    }
    let all_items = reader.order_items(None, 0, usize::MAX).unwrap();
    assert_eq!(all_items.total, all_items.items.len());
    let items = all_items
        .items
        .into_iter()
        .map(|v| {
            let i = v.item;
            let m = MItem {
                user: i.user,
                product: i.product,
                quantity: i.quantity,
                order: i.order,
                unit_price: i.unit_price,
            };
            (i.id, m)
        })
        .collect();
    let orders = reader
        .all_orders()
        .unwrap()
        .into_iter()
        .map(|v| {
            let o = v.order;
            let item_ids: Vec<Id> = v.items.iter().map(|i| i.item.id).collect();
            assert_eq!(item_ids, o.items, "every item of order {} is there", o.id);
            let m = MOrder {
                user: o.user,
                items: o.items,
                total: o.total,
                cancelled: o.status == OrderStatus::Cancelled,
            };
            (o.id, m)
        })
        .collect();
    let used_refresh = ["jti-a", "jti-b", "jti-c"]
        .into_iter()
        .filter(|jti| reader.refresh_token_used(jti).unwrap())
        .map(str::to_owned)
        .collect();
    Visible {
        categories,
        products,
        users,
        items,
        orders,
        jwt_secret: reader.jwt_secret().unwrap(),
        used_refresh,
    }
}

/// Checks a store's answer against the model's prediction.
fn check_answer(command: &Command, answer: &Answer, predicted: &Prediction) {
    let ok = match (answer, predicted) {
        (Err(actual), Err(None)) => !matches!(actual, Rejection::InsufficientStock(_)),
        (Err(actual), Err(Some(expected))) => actual == expected,
        (Ok(outcome), Ok(expected)) => match (outcome, expected) {
            (CommandOutcome::Category(c), Expected::Record(id)) => c.id == *id,
            (CommandOutcome::Product(p), Expected::Record(id)) => p.id == *id,
            (CommandOutcome::User(u), Expected::Record(id)) => u.id == *id,
            (CommandOutcome::OrderItem(i), Expected::Record(id)) => i.id == *id,
            (CommandOutcome::Order { order, replayed }, Expected::Order { id, replayed: r }) => {
                order.id == *id && replayed == r
            }
            (CommandOutcome::JwtSecret(s), Expected::Secret(e)) => s == e,
            (CommandOutcome::Done, Expected::Done) => true,
            _ => false,
        },
        _ => false,
    };
    assert!(
        ok,
        "{command:?}\n  store answered {answer:?}\n  model predicted {predicted:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Properties

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// One command per batch or random batches: the same answers and the same digest,
    /// at every point both have committed.
    #[test]
    fn batching_does_not_change_answers_or_state(
        commands in commands(true, 60),
        cuts in cuts(),
    ) {
        let a = TestStore::new();
        let b = TestStore::new();
        let mut answers_a = Vec::new();
        let mut answers_b = Vec::new();
        for batch in batches(&commands, &cuts) {
            for command in batch {
                answers_a.extend(a.apply(std::slice::from_ref(command)).0);
            }
            answers_b.extend(b.apply(batch).0);
            prop_assert_eq!(&answers_a, &answers_b);
            prop_assert_eq!(a.digest(), b.digest());
        }
        prop_assert_eq!(visible(&a.store), visible(&b.store));
    }

    /// The model predicts every answer, and after every batch the store shows exactly the
    /// model's state: stock of every product included.
    #[test]
    fn the_store_follows_the_model(commands in commands(true, 60), cuts in cuts()) {
        let s = TestStore::new();
        let mut model = Model::default();
        for batch in batches(&commands, &cuts) {
            let (answers, _) = s.apply(batch);
            for (command, answer) in batch.iter().zip(&answers) {
                let predicted = model.apply(command);
                check_answer(command, answer, &predicted);
                if let Command::PlaceOrder { .. } = command {
                    let order_or_refusal =
                        matches!(answer, Ok(CommandOutcome::Order { .. }) | Err(_));
                    prop_assert!(order_or_refusal, "{:?}", answer);
                }
            }
            prop_assert_eq!(visible(&s.store), model.visible());
        }
    }

    /// With stock set only when products are created, it is all accounted for: what is on
    /// the shelf plus what placed orders hold is what was created.
    #[test]
    fn stock_is_conserved(commands in commands(false, 60), cuts in cuts()) {
        let s = TestStore::new();
        let mut created: BTreeMap<Id, u32> = BTreeMap::new();
        for batch in batches(&commands, &cuts) {
            let (answers, _) = s.apply(batch);
            for answer in answers {
                if let Ok(CommandOutcome::Product(p)) = answer {
                    created.entry(p.id).or_insert(p.stock);
                }
            }
        }
        let reader = s.store.read().unwrap();
        let mut held: BTreeMap<Id, u64> = BTreeMap::new();
        for view in reader.all_orders().unwrap() {
            prop_assert_eq!(view.items.len(), view.order.items.len());
            if view.order.status == OrderStatus::Placed {
                for item in &view.items {
                    *held.entry(item.item.product).or_default() += u64::from(item.item.quantity);
                }
            }
        }
        let products = reader.all_products().unwrap();
        for p in &products {
            let held = held.get(&p.id).copied().unwrap_or(0);
            prop_assert_eq!(
                u64::from(created[&p.id]),
                u64::from(p.stock) + held,
                "product {} ({:?})", p.id, p
            );
        }
        // Products that are gone were never ordered.
        for product in held.keys() {
            prop_assert!(products.iter().any(|p| p.id == *product));
        }
    }

    /// A refused command, applied alone, leaves the store as it was and reports no change.
    #[test]
    fn a_refused_command_changes_nothing(commands in commands(true, 60)) {
        let s = TestStore::new();
        let mut before = s.digest();
        for command in &commands {
            let (mut answers, changes) = s.apply(std::slice::from_ref(command));
            let after = s.digest();
            if let Err(rejection) = answers.pop().unwrap() {
                prop_assert_eq!(before, after, "{:?} refused with {:?}", command, rejection);
                prop_assert!(changes.is_empty(), "{:?} reported {:?}", command, changes);
            }
            before = after;
        }
    }
}

/// An order for product 1 (stock `stock`) in `parts` lines, mixed with lines for product 2,
/// which always has enough, at the given positions.
#[derive(Debug, Clone)]
struct ShortOrder {
    stock: u32,
    parts: Vec<u32>,
    others: Vec<(prop::sample::Index, u32)>,
    from_cart: bool,
}

fn short_order() -> impl Strategy<Value = ShortOrder> {
    (
        prop::collection::vec(1..=6u32, 1..=5),
        any::<prop::sample::Index>(),
        prop::collection::vec((any::<prop::sample::Index>(), 1..=3u32), 0..=3),
        any::<bool>(),
    )
        .prop_map(|(parts, below, others, from_cart)| {
            let sum: u32 = parts.iter().sum();
            // Anything from 0 to sum - 1.
            let stock = below.index(sum as usize) as u32;
            ShortOrder {
                stock,
                parts,
                others,
                from_cart,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Lines of one product are added up: more than the stock in all is refused, naming
    /// the product, the sum and the stock; exactly the stock is fine.
    #[test]
    fn an_order_beyond_stock_is_refused_with_the_sum(order in short_order()) {
        let s = TestStore::new();
        let setup = [
            Command::CreateCategory { name: "Rock".into() },
            new_user("alice", false),
            Command::CreateProduct(NewProduct {
                name: "Short".into(),
                stock: order.stock,
                price: Decimal::new(250, 2),
                description: String::new(),
                category: 1,
            }),
            Command::CreateProduct(NewProduct {
                name: "Plenty".into(),
                stock: 100,
                price: Decimal::ONE,
                description: String::new(),
                category: 1,
            }),
        ];
        prop_assert!(s.apply(&setup).0.iter().all(Result::is_ok));

        let mut lines: Vec<(Id, u32)> = order.parts.iter().map(|&q| (1, q)).collect();
        for (position, quantity) in &order.others {
            let at = position.index(lines.len() + 1);
            lines.insert(at, (2, *quantity));
        }
        let place = |lines: &[(Id, u32)]| -> Command {
            let lines = if order.from_cart {
                let adds: Vec<Command> = lines
                    .iter()
                    .map(|&(product, quantity)| Command::AddOrderItem {
                        user: 1,
                        product,
                        quantity,
                        at: 0,
                    })
                    .collect();
                let ids = s
                    .apply(&adds)
                    .0
                    .into_iter()
                    .map(|a| match a {
                        Ok(CommandOutcome::OrderItem(item)) => item.id,
                        other => panic!("cart line not added: {other:?}"),
                    })
                    .collect();
                OrderLines::CartItems(ids)
            } else {
                OrderLines::Products(
                    lines
                        .iter()
                        .map(|&(product, quantity)| OrderLine { product, quantity })
                        .collect(),
                )
            };
            Command::PlaceOrder { user: 1, lines, idempotency_key: None, at: 1 }
        };

        let command = place(&lines);
        let before = s.digest();
        let (answers, _) = s.apply(std::slice::from_ref(&command));
        let requested: u32 = order.parts.iter().sum();
        let expected = Rejection::InsufficientStock(vec![StockShortage {
            product: 1,
            requested: u64::from(requested),
            available: order.stock,
        }]);
        prop_assert_eq!(&answers[0], &Err(expected));
        prop_assert_eq!(s.digest(), before);

        // Taking exactly the stock works and empties the shelf.
        if order.stock > 0 {
            let mut exact = lines.clone();
            exact.retain(|&(product, _)| product == 2);
            exact.push((1, order.stock));
            let (answers, _) = s.apply(&[place(&exact)]);
            let placed = matches!(&answers[0], Ok(CommandOutcome::Order { replayed: false, .. }));
            prop_assert!(placed, "{:?}", answers);
            let reader = s.store.read().unwrap();
            prop_assert_eq!(reader.product(1).unwrap().unwrap().stock, 0);
        }
    }
}
