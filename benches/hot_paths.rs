//! Criterion benches of in-process hot paths: an order written as the node writes it
//! (through a one-member cluster), a cached product-list hit through the whole router,
//! building the uncached list of 1,000 products, filtered product lists over 100,000
//! products (in the store and uncached through the router), catalog writes, verifying a
//! JWT, and compressing the 1,000-product list (br and gzip at several levels). Run with
//! `cargo bench --bench hot_paths`.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Body;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::Request;
use rust_decimal::Decimal;
use soundwave::auth::{TokenService, TokenType};
use soundwave::config::Config;
use soundwave::output::{ProductJson, json_bytes};
use soundwave::state::AppState;
use store::{
    ChangeSet, Command, CommandOutcome, OrderLine, OrderLines, ProductChanges, ProductQuery,
    ProductSort, Store,
};
use tower::ServiceExt;

/// A store with 6 categories and `count` demo products, each with `extra_stock` more units
/// than the demo gives it, written in batches of 10,000.
fn catalog_store(dir: &tempfile::TempDir, file: &str, count: usize, extra_stock: u32) -> Store {
    let store = Store::open(dir.path().join(file)).expect("open store");
    let mut changes = ChangeSet::default();
    let categories: Vec<Command> = (1..=6)
        .map(|n| Command::CreateCategory {
            name: format!("Category {n}"),
        })
        .collect();
    store
        .apply_batch(&categories, &mut changes)
        .expect("categories");
    let products: Vec<Command> =
        soundwave::demo::demo_products(&[1, 2, 3, 4, 5, 6], count, extra_stock)
            .into_iter()
            .map(Command::CreateProduct)
            .collect();
    for batch in products.chunks(10_000) {
        store.apply_batch(batch, &mut changes).expect("products");
    }
    store
}

/// A store with 6 categories, the 1,000 demo products with plenty of stock, and one user.
fn demo_store(dir: &tempfile::TempDir) -> Arc<Store> {
    let store = catalog_store(dir, "bench.redb", 1000, 2_000_000_000);
    let user = Command::CreateUser(store::NewUser {
        username: "bench".into(),
        email: String::new(),
        phone_number: String::new(),
        password_hash: "not-a-real-hash".into(),
        is_staff: false,
        date_joined: 0,
    });
    store
        .apply_batch(&[user], &mut ChangeSet::default())
        .expect("user");
    Arc::new(store)
}

fn three_item_order(n: u64) -> Command {
    Command::PlaceOrder {
        user: 1,
        lines: OrderLines::Products(vec![
            OrderLine {
                product: 1 + n % 900,
                quantity: 1,
            },
            OrderLine {
                product: 2 + n % 900,
                quantity: 2,
            },
            OrderLine {
                product: 3 + n % 900,
                quantity: 3,
            },
        ]),
        idempotency_key: None,
        at: 1_700_000_000_000_000,
    }
}

/// Orders written as the node writes them: submitted to a one-member cluster (appended to
/// the raft log, made durable, applied by the state machine, then answered).
fn apply_order(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = demo_store(&dir);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let state = runtime.block_on(node_state(&dir, &store));
    let next = Arc::new(AtomicU64::new(0));
    let mut group = c.benchmark_group("apply");
    group.bench_function("3-item order, submitted alone", |b| {
        b.to_async(&runtime).iter(|| {
            let n = next.fetch_add(1, Ordering::Relaxed);
            let state = state.clone();
            async move {
                let outcome = state.submit(three_item_order(n)).await.expect("order");
                assert!(matches!(outcome, CommandOutcome::Order { .. }));
            }
        })
    });
    group.bench_function("100 3-item orders, submitted together", |b| {
        b.to_async(&runtime).iter(|| {
            let state = state.clone();
            let next = next.clone();
            async move {
                let mut orders = tokio::task::JoinSet::new();
                for _ in 0..100 {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let state = state.clone();
                    orders.spawn(async move { state.submit(three_item_order(n)).await });
                }
                black_box(orders.join_all().await)
            }
        })
    });
    group.finish();
    runtime.block_on(state.cluster.shutdown());
}

/// The query of the 1,000-product list (`GET /api/products/?limit=1000`).
fn first_thousand() -> ProductQuery {
    ProductQuery {
        stock: Default::default(),
        category: None,
        name_contains: None,
        sort: ProductSort::Id,
        limit: 1000,
        offset: 0,
    }
}

fn product_list(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = demo_store(&dir);
    let query = first_thousand();
    c.bench_function("uncached list of 1,000 products (read + JSON)", |b| {
        b.iter(|| {
            let reader = store.read().expect("read");
            let page = reader.products(&query).expect("query");
            let images: Vec<_> = page
                .items
                .iter()
                .map(|p| reader.product_images(p.id).expect("images"))
                .collect();
            let json: Vec<ProductJson> = page
                .items
                .iter()
                .zip(&images)
                .map(|(p, images)| ProductJson::new(p, images))
                .collect();
            black_box(json_bytes(&json))
        })
    });

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let state = runtime.block_on(node_state(&dir, &store));
    let app = soundwave::api::router(state.clone());
    let request = || {
        Request::get("/api/products?limit=1000")
            .body(Body::empty())
            .expect("request")
    };
    // Warm the cache once.
    let warm = runtime
        .block_on(app.clone().oneshot(request()))
        .expect("warm");
    assert_eq!(warm.status(), 200);
    c.bench_function("cached list hit through the router (1,000 products)", |b| {
        b.to_async(&runtime).iter(|| {
            let app = app.clone();
            async move { black_box(app.oneshot(request()).await.expect("response")) }
        })
    });
    runtime.block_on(state.cluster.shutdown());
}

/// The one-time cost of compressing the cached 1,000-product list, at the node's settings
/// (brotli 5, gzip 6) and their neighbours; the sizes are printed once.
fn compression(c: &mut Criterion) {
    use soundwave::compression::{brotli_at, gzip_at};
    let dir = tempfile::tempdir().expect("tempdir");
    let store = demo_store(&dir);
    let query = first_thousand();
    let page = store.read().expect("read").products(&query).expect("query");
    // The demo store of the benches has no images: the image fields are null and [].
    let json: Vec<ProductJson> = page
        .items
        .iter()
        .map(|p| ProductJson::new(p, &[]))
        .collect();
    let plain = json_bytes(&json);
    let mut group = c.benchmark_group("compress the 1,000-product list");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(3));
    let brotli = [4, 5, 6, 7].map(|q| (format!("br {q}"), q));
    for (name, quality) in &brotli {
        let size = brotli_at(&plain, *quality).expect("br").len();
        eprintln!("{name}: {} -> {size} bytes", plain.len());
        group.bench_function(name.as_str(), |b| {
            b.iter(|| black_box(brotli_at(&plain, *quality).expect("br")))
        });
    }
    for level in [1, 6, 9] {
        let name = format!("gzip {level}");
        let size = gzip_at(&plain, level).expect("gzip").len();
        eprintln!("{name}: {} -> {size} bytes", plain.len());
        group.bench_function(name.as_str(), |b| {
            b.iter(|| black_box(gzip_at(&plain, level).expect("gzip")))
        });
    }
    group.finish();
}

/// The node's state over `store`, its writes going through a one-member cluster as
/// `soundwave node` runs alone (stop it with `Cluster::shutdown`).
async fn node_state(dir: &tempfile::TempDir, store: &Arc<Store>) -> Arc<AppState> {
    let mut config = Config::default();
    config.auth.jwt_secret = "bench-secret".into();
    config.node.data_dir = dir.path().to_path_buf();
    soundwave::startup::node_state(&config, store.clone())
        .await
        .expect("state")
}

/// A store with 6 categories and `count` demo products.
fn large_store(dir: &tempfile::TempDir, count: usize) -> Arc<Store> {
    Arc::new(catalog_store(dir, "large.redb", count, 0))
}

/// Filtered product lists over 100,000 products, a storefront page (20) each: the store's
/// `products()` alone, and through the whole router the first time a query is asked (every
/// cached response and product JSON dropped before each request).
fn filtered_lists(c: &mut Criterion) {
    const PRODUCTS: usize = 100_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = large_store(&dir, PRODUCTS);
    let query = |category: Option<u64>, name: Option<&str>, sort: ProductSort| ProductQuery {
        stock: Default::default(),
        category,
        name_contains: name.map(str::to_owned),
        sort,
        limit: 20,
        offset: 40,
    };
    // (what, the query, the same as the API's query string)
    let cases = [
        (
            "category",
            query(Some(2), None, ProductSort::Id),
            "category=2",
        ),
        (
            "name substring",
            query(None, Some("guitar"), ProductSort::Id),
            "name=guitar",
        ),
        (
            "category + name substring",
            query(Some(2), Some("guitar"), ProductSort::Id),
            "category=2&name=guitar",
        ),
        (
            "name sort",
            query(None, None, ProductSort::NameAsc),
            "order_by_name=asc",
        ),
        (
            "category + name sort desc",
            query(Some(2), None, ProductSort::NameDesc),
            "category=2&order_by_name=desc",
        ),
        (
            "name substring + name sort",
            query(None, Some("fender"), ProductSort::NameAsc),
            "name=fender&order_by_name=asc",
        ),
    ];

    let mut group = c.benchmark_group("100k products, store products()");
    group
        .sample_size(50)
        .measurement_time(Duration::from_secs(3));
    for (what, query, _) in &cases {
        let page = store.read().expect("read").products(query).expect("query");
        assert_eq!(page.items.len(), 20, "{what}: a full page");
        group.bench_function(*what, |b| {
            b.iter(|| black_box(store.read().expect("read").products(query).expect("query")))
        });
    }
    group.finish();

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let state = runtime.block_on(node_state(&dir, &store));
    let app = soundwave::api::router(state.clone());
    let mut group = c.benchmark_group("100k products, uncached list through the router");
    group
        .sample_size(50)
        .measurement_time(Duration::from_secs(3));
    for (what, _, params) in &cases {
        let uri = format!("/api/products?{params}&limit=20&offset=40");
        group.bench_function(*what, |b| {
            b.to_async(&runtime).iter_batched(
                || state.cache.invalidate(&ChangeSet::everything()),
                |()| {
                    let app = app.clone();
                    let request = Request::get(uri.as_str())
                        .body(Body::empty())
                        .expect("request");
                    async move {
                        let response = app.oneshot(request).await.expect("response");
                        assert_eq!(response.status(), 200);
                        black_box(response)
                    }
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();

    // A write that moves a product in name order makes the next catalog index (a few linear
    // passes over it); a stock change leaves the index alone. Each is submitted alone.
    let mut group = c.benchmark_group("100k products, catalog writes");
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(5));
    let mut n = 0u32;
    let update = |changes: ProductChanges| {
        let command = Command::UpdateProduct { id: 1, changes };
        let outcome = runtime.block_on(state.submit(command));
        assert!(outcome.is_ok(), "{outcome:?}");
    };
    group.bench_function("rename 1 product", |b| {
        b.iter(|| {
            n += 1;
            update(ProductChanges {
                name: Some(format!("Renamed product {}", n % 2)),
                ..ProductChanges::default()
            })
        })
    });
    group.bench_function("change the stock of 1 product", |b| {
        b.iter(|| {
            n += 1;
            update(ProductChanges {
                stock: Some(n),
                ..ProductChanges::default()
            })
        })
    });
    group.finish();

    // Opening builds the catalog index from the products table.
    let path = store.path().to_path_buf();
    // Raft's tasks hold the store until the cluster stops.
    runtime.block_on(state.cluster.shutdown());
    drop((app, state));
    while Arc::strong_count(&store) > 1 {
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(store);
    let mut group = c.benchmark_group("100k products, start-up");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    group.bench_function("Store::open (catalog index built)", |b| {
        b.iter(|| black_box(Store::open(&path).expect("open")))
    });
    group.finish();
}

fn jwt(c: &mut Criterion) {
    let tokens = TokenService::new(
        b"bench-secret",
        Duration::from_secs(300),
        Duration::from_secs(86_400),
    );
    let (access, _) = tokens.issue_pair(7).expect("issue");
    c.bench_function("JWT verification (HS256 access token)", |b| {
        b.iter(|| black_box(tokens.verify(&access, TokenType::Access).expect("valid")))
    });
}

fn price_total(c: &mut Criterion) {
    // The decimal arithmetic of an order total, for scale against the rest.
    let prices: Vec<Decimal> = (1..=100).map(|n| Decimal::new(n * 1999, 2)).collect();
    c.bench_function("order total of 100 lines (rust_decimal)", |b| {
        b.iter(|| black_box(prices.iter().map(|p| p * Decimal::from(3)).sum::<Decimal>()))
    });
}

criterion_group!(
    benches,
    apply_order,
    product_list,
    filtered_lists,
    jwt,
    price_total,
    compression
);
criterion_main!(benches);
