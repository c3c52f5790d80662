//! Product lists (`StoreReader::products`, answered from the in-memory catalog index, and
//! by price, stock or kept by stock from the records it picks) against
//! a straightforward reference that filters and sorts every product record, after random
//! product creates, updates, deletes and orders (which archive deleted products instead of
//! erasing them), applied in random batches; and again after the store is reopened (the
//! index built from the tables) and after the state is installed as a raft snapshot.
//!
//! Also: a reader always gets the lists of the very state it reads, while a writer changes
//! them; the raft state machine's applies keep lists current before its sink hears of them.

use std::sync::{Arc, Mutex};

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use proptest::prelude::*;
use rust_decimal::Decimal;
use store::raft::{AppliedSink, Proposal, RequestId, StateMachine};
use store::{
    ChangeSet, Command, CommandOutcome, Id, NewProduct, NewUser, OrderLine, OrderLines, Page,
    Product, ProductChanges, ProductQuery, ProductSort, Rejection, StockFilter, Store,
};
use tempfile::TempDir;

// ---------------------------------------------------------------------------------------
// The reference

/// What a product list must be: every product record filtered, sorted and paged the plain
/// way.
fn reference(all: &[Product], query: &ProductQuery) -> Page<Product> {
    let needle = query.name_contains.as_deref().map(str::to_lowercase);
    let mut matching: Vec<&Product> = all
        .iter()
        .filter(|p| !p.archived)
        .filter(|p| query.category.is_none_or(|category| p.category == category))
        .filter(|p| {
            needle
                .as_deref()
                .is_none_or(|needle| p.name.to_lowercase().contains(needle))
        })
        .filter(|p| !query.stock.in_stock || p.stock > 0)
        .filter(|p| query.stock.at_most.is_none_or(|most| p.stock <= most))
        .collect();
    match query.sort {
        ProductSort::Id => matching.sort_by_key(|p| p.id),
        ProductSort::IdDesc => matching.sort_by_key(|p| std::cmp::Reverse(p.id)),
        ProductSort::PriceAsc => matching.sort_by_key(|p| (p.price, p.id)),
        ProductSort::PriceDesc => matching.sort_by_key(|p| (std::cmp::Reverse(p.price), p.id)),
        ProductSort::StockAsc => matching.sort_by_key(|p| (p.stock, p.id)),
        ProductSort::StockDesc => matching.sort_by_key(|p| (std::cmp::Reverse(p.stock), p.id)),
        ProductSort::NameAsc => matching.sort_by_cached_key(|p| (p.name.to_lowercase(), p.id)),
        ProductSort::NameDesc => {
            matching.sort_by_cached_key(|p| (p.name.to_lowercase(), p.id));
            matching.reverse();
        }
    }
    Page {
        total: matching.len(),
        items: matching
            .into_iter()
            .skip(query.offset)
            .take(query.limit)
            .cloned()
            .collect(),
    }
}

/// Every query of `queries`, and every filter and sort with all results on one page,
/// answers what the reference does.
fn assert_lists_match(store: &Store, queries: &[ProductQuery], when: &str) {
    let reader = store.read().expect("read");
    let all = reader.all_products().expect("all products");
    let mut every_filter = Vec::new();
    for category in [None, Some(1), Some(2), Some(3), Some(4)] {
        for name in [None, Some("guitar"), Some("A"), Some("ß")] {
            for (sort, stock) in ALL_SORTS
                .iter()
                .flat_map(|&sort| STOCK_FILTERS.iter().map(move |&stock| (sort, stock)))
            {
                every_filter.push(ProductQuery {
                    stock,
                    category,
                    name_contains: name.map(str::to_owned),
                    sort,
                    limit: usize::MAX,
                    offset: 0,
                });
            }
        }
    }
    for query in queries.iter().chain(&every_filter) {
        let listed = reader.products(query).expect("products");
        assert_eq!(listed, reference(&all, query), "{when}: {query:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Generators

fn name() -> impl Strategy<Value = String> {
    prop::sample::select(
        &[
            "Guitar",
            "guitar",
            "Bass Guitar",
            "GUITAR AMP",
            "Amp",
            "amp",
            "Drum Kit",
            "Straße",
            "STRASSE",
            "Ärger",
            "",
            "a",
        ][..],
    )
    .prop_map(str::to_owned)
}

/// Needles, some of which occur only where one name ends and the next begins in the index's
/// concatenated names.
fn needle() -> impl Strategy<Value = Option<String>> {
    prop::option::weighted(
        0.7,
        prop::sample::select(
            &[
                "", "g", "GUITAR", "uit", "amp", "a", "ä", "r a", "ss", "ß", "e", "zzz", "kit",
                // Only ever found across two names: "guitar" then "amp", "a" then "guitar"...
                "ra", "ag", "pg", "ta",
            ][..],
        )
        .prop_map(str::to_owned),
    )
}

const ALL_SORTS: [ProductSort; 8] = [
    ProductSort::Id,
    ProductSort::NameAsc,
    ProductSort::NameDesc,
    ProductSort::IdDesc,
    ProductSort::PriceAsc,
    ProductSort::PriceDesc,
    ProductSort::StockAsc,
    ProductSort::StockDesc,
];

const STOCK_FILTERS: [StockFilter; 4] = [
    StockFilter {
        in_stock: false,
        at_most: None,
    },
    StockFilter {
        in_stock: true,
        at_most: None,
    },
    StockFilter {
        in_stock: false,
        at_most: Some(2),
    },
    StockFilter {
        in_stock: true,
        at_most: Some(3),
    },
];

fn query() -> impl Strategy<Value = ProductQuery> {
    (
        prop::option::weighted(0.5, 1..=4u64),
        needle(),
        prop::sample::select(&ALL_SORTS[..]),
        prop_oneof![4 => 0..=6usize, 1 => Just(usize::MAX)],
        prop_oneof![4 => 0..=8usize, 1 => Just(usize::MAX)],
        prop::sample::select(&STOCK_FILTERS[..]),
    )
        .prop_map(
            |(category, name_contains, sort, limit, offset, stock)| ProductQuery {
                stock,
                category,
                name_contains,
                sort,
                limit,
                offset,
            },
        )
}

/// Product ids are drawn from a small range, so most updates and deletes find a product.
fn product_id() -> impl Strategy<Value = Id> {
    1..=14u64
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        6 => (name(), 1..=4u64, 1..=4i64).prop_map(|(name, category, cents)| {
            Command::CreateProduct(NewProduct {
                description: format!("a {name}"),
                name,
                stock: 5,
                price: Decimal::new(cents * 50, 2),
                category,
            })
        }),
        5 => (
            product_id(),
            prop::option::of(name()),
            prop::option::of(1..=4u64),
            prop::option::of(0..=9u32),
            prop::option::of(1..=4i64),
        )
            .prop_map(|(id, name, category, stock, cents)| Command::UpdateProduct {
                id,
                changes: ProductChanges {
                    name,
                    category,
                    stock,
                    price: cents.map(|cents| Decimal::new(cents * 50, 2)),
                    ..ProductChanges::default()
                },
            }),
        3 => product_id().prop_map(|id| Command::DeleteProduct { id }),
        // An ordered product is archived when deleted, not erased; stock changes only.
        3 => product_id().prop_map(|product| Command::PlaceOrder {
            user: 1,
            lines: OrderLines::Products(vec![OrderLine { product, quantity: 1 }]),
            idempotency_key: None,
            at: 0,
        }),
    ]
}

// ---------------------------------------------------------------------------------------
// Stores

/// A store with four categories (ids 1 to 4) and a user (id 1).
fn fresh_store(dir: &TempDir) -> Store {
    let store = Store::open(dir.path().join("store.redb")).expect("open store");
    let mut setup: Vec<Command> = ["Strings", "Drums", "Keys", "Amps"]
        .iter()
        .map(|name| Command::CreateCategory {
            name: (*name).into(),
        })
        .collect();
    setup.push(Command::CreateUser(NewUser {
        username: "alice".into(),
        email: String::new(),
        phone_number: String::new(),
        password_hash: "hash".into(),
        is_staff: false,
        date_joined: 0,
    }));
    let results = store
        .apply_batch(&setup, &mut ChangeSet::default())
        .expect("setup");
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    store
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn lists_answer_what_the_reference_does(
        batches in prop::collection::vec(prop::collection::vec(command(), 1..=6), 1..=8),
        queries in prop::collection::vec(query(), 8),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = fresh_store(&dir);
        assert_lists_match(&store, &queries, "empty");
        for (n, batch) in batches.iter().enumerate() {
            store.apply_batch(batch, &mut ChangeSet::default()).expect("apply");
            assert_lists_match(&store, &queries, &format!("after batch {n}"));
        }
        // Built from the tables at open.
        let path = store.path().to_path_buf();
        drop(store);
        let reopened = Store::open(&path).expect("reopen");
        assert_lists_match(&reopened, &queries, "reopened");
    }
}

#[test]
fn readers_see_lists_of_the_state_they_read_while_a_writer_changes_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(fresh_store(&dir));
    let creates: Vec<Command> = (0..200)
        .map(|n| new_product(&format!("Guitar {n}"), n % 4 + 1))
        .collect();
    store
        .apply_batch(&creates, &mut ChangeSet::default())
        .expect("products");
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let store = store.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            // Renames and moves that reorder every list, then deletes and new products.
            for round in 0..200u64 {
                let id = round % 200 + 1;
                let commands = [
                    Command::UpdateProduct {
                        id,
                        changes: ProductChanges {
                            name: Some(format!("{} guitar", 999 - round)),
                            category: Some(round % 4 + 1),
                            ..ProductChanges::default()
                        },
                    },
                    Command::DeleteProduct { id: id + 100 },
                    new_product(&format!("amp {round}"), round % 4 + 1),
                ];
                store
                    .apply_batch(&commands, &mut ChangeSet::default())
                    .expect("apply");
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        })
    };
    let queries: Vec<ProductQuery> = [
        (None, None, ProductSort::NameAsc),
        (Some(2), None, ProductSort::Id),
        (Some(3), Some("GUITAR"), ProductSort::NameDesc),
        (None, Some("9"), ProductSort::Id),
    ]
    .into_iter()
    .map(|(category, name, sort)| ProductQuery {
        stock: Default::default(),
        category,
        name_contains: name.map(str::to_owned),
        sort,
        limit: 50,
        offset: 3,
    })
    .collect();
    let mut reads = 0;
    while !done.load(std::sync::atomic::Ordering::SeqCst) || reads == 0 {
        let reader = store.read().expect("read");
        let all = reader.all_products().expect("all products");
        for query in &queries {
            let listed = reader.products(query).expect("products");
            assert_eq!(listed, reference(&all, query), "read {reads}: {query:?}");
        }
        reads += 1;
    }
    writer.join().expect("writer");
}

// ---------------------------------------------------------------------------------------
// The raft state machine

/// Records, when told of applied changes, the product list the store answers right then.
struct ListAtApply {
    store: Arc<Store>,
    seen: Mutex<Vec<Vec<Id>>>,
}

impl AppliedSink for ListAtApply {
    fn applied(
        &self,
        _results: Vec<(RequestId, Result<CommandOutcome, Rejection>)>,
        _changes: &ChangeSet,
    ) {
        let query = ProductQuery {
            stock: Default::default(),
            category: None,
            name_contains: None,
            sort: ProductSort::NameAsc,
            limit: usize::MAX,
            offset: 0,
        };
        let page = self.store.read().expect("read").products(&query);
        let ids = page.expect("products").items.iter().map(|p| p.id).collect();
        self.seen.lock().expect("seen").push(ids);
    }
}

fn entry(index: u64, commands: Vec<Command>) -> Entry<store::raft::RaftConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Proposal {
            commands: commands
                .into_iter()
                .enumerate()
                .map(|(n, command)| (RequestId(u128::from(index) << 32 | n as u128), command))
                .collect(),
        }),
    }
}

fn state_machine(dir: &TempDir) -> (Arc<Store>, Arc<ListAtApply>, StateMachine) {
    let store = Arc::new(fresh_store(dir));
    let sink = Arc::new(ListAtApply {
        store: store.clone(),
        seen: Mutex::default(),
    });
    let machine = StateMachine::new(store.clone(), sink.clone(), dir.path().join("snapshot"));
    (store, sink, machine)
}

fn new_product(name: &str, category: Id) -> Command {
    Command::CreateProduct(NewProduct {
        name: name.into(),
        stock: 1,
        price: Decimal::ONE,
        description: String::new(),
        category,
    })
}

#[tokio::test]
async fn raft_applies_and_snapshot_installs_keep_lists_current() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, sink, mut machine) = state_machine(&dir);
    machine
        .apply([entry(
            1,
            vec![new_product("Zither", 1), new_product("Amp", 2)],
        )])
        .await
        .expect("apply");
    machine
        .apply([
            entry(2, vec![new_product("Guitar", 1)]),
            entry(
                3,
                vec![Command::UpdateProduct {
                    id: 1,
                    changes: ProductChanges {
                        name: Some("Banjo".into()),
                        ..ProductChanges::default()
                    },
                }],
            ),
        ])
        .await
        .expect("apply");
    // Each apply's sink already saw the list of what it applied.
    assert_eq!(*sink.seen.lock().unwrap(), [vec![2, 1], vec![2, 1, 3]]);
    assert_lists_match(&store, &[], "after raft applies");
    let snapshot = machine.build_snapshot().await.expect("snapshot");

    // Another node with another catalog installs the snapshot: its lists become the first's.
    let other_dir = tempfile::tempdir().expect("tempdir");
    let (other, other_sink, mut other_machine) = state_machine(&other_dir);
    other_machine
        .apply([entry(
            1,
            vec![new_product("Drum", 3), new_product("Piano", 3)],
        )])
        .await
        .expect("apply");
    other_machine
        .install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .expect("install");
    assert_eq!(
        *other_sink.seen.lock().unwrap(),
        [vec![1, 2], vec![2, 1, 3]]
    );
    assert_lists_match(&other, &[], "after the snapshot was installed");
    assert_eq!(
        other.read().unwrap().digest().unwrap(),
        store.read().unwrap().digest().unwrap()
    );
}
