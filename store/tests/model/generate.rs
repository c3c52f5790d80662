//! Generators of random but plausible command sequences: ids drawn from small ranges, so
//! many hit and some miss, and steps aimed by the reference model at existing records.

use std::collections::BTreeSet;

use proptest::prelude::*;
use proptest::strategy::Union;
use rust_decimal::Decimal;
use store::{
    Command, Id, MAX_LINE_QUANTITY, NewProduct, NewUser, OrderLine, OrderLines, OrderStatus,
    ProductChanges,
};

use super::{MItem, MOrder, Model};

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

pub fn new_user(username: &str, is_staff: bool) -> Command {
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
            (user_id(), user_id(), any::<bool>())
                .prop_map(|(actor, id, is_staff)| Command::SetUserStaff {
                    actor,
                    id,
                    is_staff,
                    at: 7_000_000,
                })
                .boxed(),
        ),
        (
            1,
            (user_id(), user_id(), any::<bool>())
                .prop_map(|(actor, id, active)| Command::SetUserActive {
                    actor,
                    id,
                    active,
                    at: 7_000_000,
                })
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
    /// Moves an existing order to a status (mostly the next one), as staff or its owner.
    MoveExisting {
        order: prop::sample::Index,
        status: prop::sample::Index,
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
        2 => (
            any::<prop::sample::Index>(),
            any::<prop::sample::Index>(),
            prop::bool::weighted(0.8)
        )
            .prop_map(|(order, status, by_staff)| Step::MoveExisting {
                order,
                status,
                by_staff
            }),
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
        Step::MoveExisting {
            order,
            status,
            by_staff,
        } => {
            let orders: Vec<(&Id, &MOrder)> = model.orders.iter().collect();
            if orders.is_empty() {
                return None;
            }
            let (&id, o) = *order.get(&orders);
            let actor = if by_staff { 3 } else { o.user };
            Some(Command::SetOrderStatus {
                actor,
                id,
                status: *status.get(&OrderStatus::ALL),
                at: 50,
            })
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

pub fn commands(with_stock: bool, max_steps: usize) -> impl Strategy<Value = Vec<Command>> {
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
pub fn cuts() -> impl Strategy<Value = Vec<bool>> {
    prop::collection::vec(prop::bool::weighted(0.2), 80)
}
