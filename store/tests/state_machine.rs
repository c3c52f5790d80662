//! Property tests of the store as a state machine: random but plausible command sequences
//! (see `model`) applied to fresh stores.
//!
//! - determinism: the same commands give the same answers and the same digest however they
//!   are split into batches;
//! - a small reference model predicts every answer and the whole visible state, stock
//!   included, after every batch;
//! - a refused command changes nothing.

mod model;

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use store::{Command, CommandOutcome, Id, OrderStatus, Rejection, Store};

use model::*;

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
                status: o.status,
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
