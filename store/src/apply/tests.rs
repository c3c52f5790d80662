//! Unit tests of apply, through [`Store::apply_batch`], and the helpers they share with
//! the tests of each resource's commands and of `db`, `reader`, `schema`, `raft` and `writer`.

use std::collections::BTreeSet;
use std::path::Path;

use redb::{ReadableDatabase, TableHandle};
use rust_decimal::Decimal;
use tempfile::TempDir;

use super::*;
use crate::command::{NewProduct, NewUser, OrderLine, OrderLines, ProductChanges};
use crate::db::Store;
use crate::model::OrderStatus;

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

/// Opens (or creates) the store at `path` and applies `commands` in one batch, every one
/// accepted.
pub(crate) fn open_with(path: &Path, commands: &[Command]) -> Store {
    let store = Store::open(path).expect("open store");
    let mut changes = ChangeSet::default();
    let results = store
        .apply_batch(commands, &mut changes)
        .expect("apply batch");
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    store
}

/// The names of every table in `store`.
pub(crate) fn table_names(store: &Store) -> Vec<String> {
    let txn = store.db().begin_read().expect("read");
    txn.list_tables()
        .expect("tables")
        .map(|t| t.name().to_owned())
        .collect()
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

pub(crate) fn assert_invalid(result: Applied, expected_field: &str) {
    match result {
        Err(Rejection::Invalid { field, .. }) => assert_eq!(field, expected_field),
        other => panic!("expected Invalid({expected_field}), got {other:?}"),
    }
}

/// Category 1 "Rock", users 1 alice, 2 bob, 3 staff carol.
pub(crate) fn shop() -> TestStore {
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

pub(crate) const ALICE: Id = 1;
pub(crate) const BOB: Id = 2;
pub(crate) const CAROL: Id = 3;

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
