//! [`Store`]: the redb database, opened with its schema checked, written in batches of
//! commands, and read through [`StoreReader`] snapshots.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition, WriteTransaction,
};

use crate::apply::{ChangeSet, WriteTables, apply_command};
use crate::catalog::CatalogIndex;
use crate::command::{Command, CommandOutcome, Rejection};
use crate::error::StoreError;
use crate::model::{Category, Id, Order, OrderItem, OrderItemView, OrderView, Product, User};
use crate::query::{Page, ProductQuery};
use crate::tables::*;

/// redb's page cache when none is configured (redb's own default is 1 GiB).
pub const DEFAULT_PAGE_CACHE_BYTES: usize = 128 * 1024 * 1024;

/// Logged when the store file was not closed cleanly (a crash, a kill -9) and redb repairs
/// it at open, which reads the whole file.
pub const REPAIR_WARNING: &str = "the store was not closed cleanly";

/// The embedded database. Cheap to share behind an `Arc`; reads run concurrently with the
/// single writer.
pub struct Store {
    db: Database,
    path: PathBuf,
    /// The catalog index of the last committed state. Replaced only by [`Store::commit`],
    /// which holds the write lock across the commit, and read with the read lock held while
    /// a read transaction begins: every reader gets the index of the state it reads.
    catalog: RwLock<Arc<CatalogIndex>>,
}

/// A store written before usernames were unique whatever their case has no username keys:
/// derive them from the usernames (the first of two that differ only in case keeps the key).
/// The same state gives the same keys on every node.
fn backfill_username_keys(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    let mut keys = txn.open_table(USERNAME_KEYS)?;
    if !keys.is_empty()? {
        return Ok(());
    }
    let names = txn.open_table(USERNAMES)?;
    let mut by_id: Vec<(u64, String)> = Vec::new();
    for row in names.iter()? {
        let (name, id) = row?;
        by_id.push((id.value(), name.value().to_lowercase()));
    }
    by_id.sort();
    for (id, key) in by_id {
        if keys.get(key.as_str())?.is_none() {
            keys.insert(key.as_str(), id)?;
        }
    }
    Ok(())
}

/// A store written before carts were capped has no cart line counts: count the lines.
fn backfill_cart_line_counts(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    let mut counts = txn.open_table(CART_LINE_COUNTS)?;
    let lines = txn.open_table(CART_LINES_BY_PRODUCT)?;
    if !counts.is_empty()? || lines.is_empty()? {
        return Ok(());
    }
    let items = txn.open_table(ORDER_ITEMS)?;
    let mut per_user: std::collections::BTreeMap<u64, u64> = Default::default();
    for row in lines.iter()? {
        let (key, _) = row?;
        let item_id = key.value().1;
        if let Some(bytes) = items.get(item_id)? {
            let item: OrderItem = decode(bytes.value())?;
            *per_user.entry(item.user).or_default() += 1;
        }
    }
    for (user, count) in per_user {
        counts.insert(user, count)?;
    }
    Ok(())
}

impl Store {
    /// Opens (or creates) the store file, refusing a file of another schema version, with
    /// redb's page cache at [`DEFAULT_PAGE_CACHE_BYTES`].
    pub fn open(path: impl AsRef<Path>) -> Result<Store, StoreError> {
        Store::open_with_page_cache(path, DEFAULT_PAGE_CACHE_BYTES)
    }

    /// [`Store::open`] with redb's page cache limited to `page_cache_bytes` (it is most of
    /// a node's resident memory once the store is larger than the cache).
    pub fn open_with_page_cache(
        path: impl AsRef<Path>,
        page_cache_bytes: usize,
    ) -> Result<Store, StoreError> {
        let path = path.as_ref().to_path_buf();
        let shown = path.display().to_string();
        let damaged = |reason: String| StoreError::Damaged {
            path: shown.clone(),
            reason,
        };
        // An empty file is not a new store: something truncated it (a new store is created
        // where there is no file at all).
        if std::fs::metadata(&path).is_ok_and(|m| m.is_file() && m.len() == 0) {
            return Err(damaged("the file is empty (0 bytes)".into()));
        }
        let warned = std::sync::atomic::AtomicBool::new(false);
        let repair_path = shown.clone();
        // redb may panic on damaged pages instead of returning an error: a panic here is a
        // damaged file, not a crash of the node.
        let opened = std::panic::catch_unwind(|| {
            let mut db = Database::builder()
                .set_cache_size(page_cache_bytes)
                .set_repair_callback(move |_| {
                    if !warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
                        tracing::warn!(
                            path = %repair_path,
                            "{REPAIR_WARNING}; repairing it (this reads the whole file)"
                        );
                    }
                })
                .create(&path)?;
            // Every page's checksum, once at start: a file damaged on disk is refused here
            // rather than found by a request (or written into) later.
            let intact = db.check_integrity()?;
            Ok::<_, redb::DatabaseError>((db, intact))
        });
        let db = match opened {
            Ok(Ok((db, intact))) => {
                if !intact {
                    tracing::warn!(
                        path = %shown,
                        "the store failed its integrity check and redb repaired it; the last \
                         commits may be gone (a cluster member catches up from the leader)"
                    );
                }
                db
            }
            Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Corrupted(reason)))) => {
                return Err(damaged(reason));
            }
            Ok(Err(source)) => {
                return Err(StoreError::Open {
                    path: shown,
                    source,
                });
            }
            Err(panic) => {
                let reason = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "redb could not read it".to_owned());
                return Err(damaged(reason));
            }
        };
        let mut store = Store {
            db,
            path,
            catalog: RwLock::default(),
        };
        store.check_schema()?;
        let catalog = {
            let txn = store.db.begin_read()?;
            CatalogIndex::from_table(&txn.open_table(PRODUCTS)?)?
        };
        store.catalog = RwLock::new(Arc::new(catalog));
        Ok(store)
    }

    pub(crate) fn db(&self) -> &Database {
        &self.db
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size of the database file in bytes.
    pub fn file_size(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }

    fn check_schema(&self) -> Result<(), StoreError> {
        let path = self.path.display().to_string();
        let txn = self.db.begin_write()?;
        let existing_tables = txn.list_tables()?.count();
        {
            let mut meta = txn.open_table(META)?;
            let found = meta
                .get(META_SCHEMA_VERSION)?
                .map(|v| v.value().try_into().map(u32::from_le_bytes));
            match found {
                Some(Ok(version)) if version == SCHEMA_VERSION => {}
                Some(Ok(version)) => {
                    return Err(StoreError::SchemaMismatch {
                        path,
                        found: version,
                        supported: SCHEMA_VERSION,
                    });
                }
                Some(Err(_)) => return Err(StoreError::UnknownSchema { path }),
                None if existing_tables > 0 => return Err(StoreError::UnknownSchema { path }),
                None => {
                    meta.insert(META_SCHEMA_VERSION, SCHEMA_VERSION.to_le_bytes().as_slice())?;
                }
            }
        }
        // Creating every table up front lets readers open them without special cases.
        WriteTables::open(&txn)?;
        backfill_username_keys(&txn)?;
        backfill_cart_line_counts(&txn)?;
        txn.open_table(APPLIED_REQUESTS)?;
        txn.open_table(APPLIED_REQUESTS_BY_INDEX)?;
        txn.open_table(RAFT_LOG)?;
        txn.open_table(RAFT_STATE)?;
        txn.commit()?;
        Ok(())
    }

    /// Makes every write committed so far durable: an empty durable commit, which writes and
    /// fsyncs what the non-durable commits before it left in memory.
    pub fn flush(&self) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.commit()?;
        Ok(())
    }

    /// Applies commands in order in one write transaction, committed durably once.
    /// Each command gets its own answer; a rejected one changed nothing. A storage error
    /// aborts the whole batch, and nothing of it is kept.
    pub fn apply_batch(
        &self,
        commands: &[Command],
        changes: &mut ChangeSet,
    ) -> Result<Vec<Result<CommandOutcome, Rejection>>, StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        let mut results = Vec::with_capacity(commands.len());
        let mut batch_changes = ChangeSet::default();
        {
            let mut tables = WriteTables::open(&txn)?;
            for command in commands {
                results.push(apply_command(&mut tables, command, &mut batch_changes)?);
            }
        }
        self.commit(txn, &batch_changes)?;
        changes.merge(batch_changes);
        Ok(results)
    }

    /// Commits a write transaction of the state machine whose commands changed `changes`,
    /// and brings the catalog index in step with it before returning, so that whoever is
    /// told of the changes next (caches, waiting callers) finds lists as new as the store.
    ///
    /// Only a transaction that changed which products lists hold or their names
    /// ([`ChangeSet::product_listing`], or a whole new state) touches the index: the next
    /// index is made from this transaction's products first, then the commit and the swap
    /// happen under the index's write lock, so no reader can begin a transaction in between
    /// and pair the new state with the old index. Other commits (orders, stock) take no lock.
    pub(crate) fn commit(
        &self,
        txn: WriteTransaction,
        changes: &ChangeSet,
    ) -> Result<(), StoreError> {
        if !(changes.product_listing || changes.everything) {
            txn.commit()?;
            return Ok(());
        }
        let next = {
            let products = txn.open_table(PRODUCTS)?;
            if changes.everything {
                Some(CatalogIndex::from_table(&products)?)
            } else {
                // This writer's transaction began after the previous one committed, and
                // that one published its index before releasing the write lock: the read
                // lock gives the index of the state this transaction started from.
                self.catalog_index()
                    .updated(&products, changes.products.iter().copied())?
            }
        };
        let mut current = self.catalog.write().unwrap_or_else(PoisonError::into_inner);
        txn.commit()?;
        let replaced = next.map(|next| std::mem::replace(&mut *current, Arc::new(next)));
        drop(current);
        // Freeing the old index (when no reader holds it) waits until readers may go on.
        drop(replaced);
        Ok(())
    }

    fn catalog_index(&self) -> Arc<CatalogIndex> {
        Arc::clone(&self.catalog.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// A consistent snapshot for reading.
    pub fn read(&self) -> Result<StoreReader, StoreError> {
        // The read lock keeps a catalog commit from landing between the two.
        let current = self.catalog.read().unwrap_or_else(PoisonError::into_inner);
        let txn = self.db.begin_read()?;
        Ok(StoreReader {
            txn,
            catalog: Arc::clone(&current),
        })
    }
}

/// A read snapshot of the whole store.
pub struct StoreReader {
    txn: ReadTransaction,
    /// The catalog index of the same state as `txn`.
    catalog: Arc<CatalogIndex>,
}

fn get_record<T: serde::de::DeserializeOwned>(
    txn: &ReadTransaction,
    table: TableDefinition<u64, &[u8]>,
    id: Id,
) -> Result<Option<T>, StoreError> {
    let table = txn.open_table(table)?;
    let value = table.get(id)?;
    value.map(|v| decode(v.value())).transpose()
}

/// Ids from an index keyed by `(owner, id)`: newest (highest id) first, or all ids of a
/// record table when there is no owner.
fn owned_ids(
    txn: &ReadTransaction,
    index: TableDefinition<(u64, u64), ()>,
    records: TableDefinition<u64, &[u8]>,
    owner: Option<Id>,
    offset: usize,
    limit: usize,
) -> Result<(Vec<Id>, usize), StoreError> {
    match owner {
        Some(owner) => {
            let index = txn.open_table(index)?;
            let range = || index.range((owner, 0)..=(owner, u64::MAX));
            let total = range()?.count();
            let ids = range()?
                .rev()
                .skip(offset)
                .take(limit)
                .map(|entry| entry.map(|(key, _)| key.value().1))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((ids, total))
        }
        None => {
            let table = txn.open_table(records)?;
            let total = table.len()? as usize;
            let ids = table
                .iter()?
                .rev()
                .skip(offset)
                .take(limit)
                .map(|entry| entry.map(|(key, _)| key.value()))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((ids, total))
        }
    }
}

impl StoreReader {
    pub fn category(&self, id: Id) -> Result<Option<Category>, StoreError> {
        get_record(&self.txn, CATEGORIES, id)
    }

    /// All categories by id.
    pub fn categories(&self) -> Result<Vec<Category>, StoreError> {
        let table = self.txn.open_table(CATEGORIES)?;
        table
            .iter()?
            .map(|entry| decode(entry?.1.value()))
            .collect()
    }

    /// A product, archived or not.
    pub fn product(&self, id: Id) -> Result<Option<Product>, StoreError> {
        get_record(&self.txn, PRODUCTS, id)
    }

    /// Products on sale that match the query, one page of them and the number matching.
    /// The catalog index picks the page's ids and counts the matches; only the page's
    /// products are read.
    pub fn products(&self, query: &ProductQuery) -> Result<Page<Product>, StoreError> {
        let page = self.catalog.query(query);
        let products = self.txn.open_table(PRODUCTS)?;
        let mut items = Vec::with_capacity(page.ids.len());
        for id in page.ids {
            // The index is of this very state, so every id is a product on sale; the check
            // only keeps a stale index from ever listing an archived product.
            if let Some(value) = products.get(id)? {
                let product: Product = decode(value.value())?;
                if !product.archived {
                    items.push(product);
                }
            }
        }
        Ok(Page {
            items,
            total: page.total,
        })
    }

    pub fn user(&self, id: Id) -> Result<Option<User>, StoreError> {
        get_record(&self.txn, USERS, id)
    }

    pub fn user_by_username(&self, username: &str) -> Result<Option<User>, StoreError> {
        let usernames = self.txn.open_table(USERNAMES)?;
        let id = usernames.get(username)?.map(|v| v.value());
        match id {
            Some(id) => self.user(id),
            None => Ok(None),
        }
    }

    fn item_views(&self, items: Vec<OrderItem>) -> Result<Vec<OrderItemView>, StoreError> {
        let mut usernames: HashMap<Id, String> = HashMap::new();
        let mut views = Vec::with_capacity(items.len());
        for item in items {
            let username = match usernames.get(&item.user) {
                Some(name) => name.clone(),
                None => {
                    let name = self
                        .user(item.user)?
                        .map(|u| u.username)
                        .unwrap_or_default();
                    usernames.insert(item.user, name.clone());
                    name
                }
            };
            let product_name = match &item.product_name {
                Some(name) => name.clone(),
                None => self
                    .product(item.product)?
                    .map(|p| p.name)
                    .unwrap_or_default(),
            };
            views.push(OrderItemView {
                item,
                username,
                product_name,
            });
        }
        Ok(views)
    }

    pub fn order_item(&self, id: Id) -> Result<Option<OrderItemView>, StoreError> {
        let item: Option<OrderItem> = get_record(&self.txn, ORDER_ITEMS, id)?;
        Ok(item
            .map(|i| self.item_views(vec![i]))
            .transpose()?
            .and_then(|mut v| v.pop()))
    }

    /// Order items newest first: one user's (`Some`) or everyone's (`None`).
    pub fn order_items(
        &self,
        owner: Option<Id>,
        offset: usize,
        limit: usize,
    ) -> Result<Page<OrderItemView>, StoreError> {
        let (ids, total) = owned_ids(
            &self.txn,
            ORDER_ITEMS_BY_USER,
            ORDER_ITEMS,
            owner,
            offset,
            limit,
        )?;
        let mut items = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(item) = get_record(&self.txn, ORDER_ITEMS, id)? {
                items.push(item);
            }
        }
        Ok(Page {
            items: self.item_views(items)?,
            total,
        })
    }

    fn order_view(&self, order: Order) -> Result<OrderView, StoreError> {
        let mut items = Vec::with_capacity(order.items.len());
        for &id in &order.items {
            if let Some(item) = get_record(&self.txn, ORDER_ITEMS, id)? {
                items.push(item);
            }
        }
        let items = self.item_views(items)?;
        let username = match items.first() {
            Some(view) => view.username.clone(),
            None => self
                .user(order.user)?
                .map(|u| u.username)
                .unwrap_or_default(),
        };
        Ok(OrderView {
            order,
            username,
            items,
        })
    }

    pub fn order(&self, id: Id) -> Result<Option<OrderView>, StoreError> {
        let order: Option<Order> = get_record(&self.txn, ORDERS, id)?;
        order.map(|o| self.order_view(o)).transpose()
    }

    /// Orders newest first: one user's (`Some`) or everyone's (`None`).
    pub fn orders(
        &self,
        owner: Option<Id>,
        offset: usize,
        limit: usize,
    ) -> Result<Page<OrderView>, StoreError> {
        let (ids, total) = owned_ids(&self.txn, ORDERS_BY_USER, ORDERS, owner, offset, limit)?;
        let mut views = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(order) = get_record::<Order>(&self.txn, ORDERS, id)? {
                views.push(self.order_view(order)?);
            }
        }
        Ok(Page {
            items: views,
            total,
        })
    }

    pub fn jwt_secret(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let meta = self.txn.open_table(META)?;
        Ok(meta.get(META_JWT_SECRET)?.map(|v| v.value().to_vec()))
    }

    /// The unix second of the user's last password or staff change, if any: tokens issued
    /// before it belong to an ended session.
    pub fn credentials_changed_at(&self, user: Id) -> Result<Option<i64>, StoreError> {
        let table = self.txn.open_table(CREDENTIALS_CHANGED)?;
        Ok(table.get(user)?.map(|v| v.value()))
    }

    pub fn refresh_token_used(&self, jti: &str) -> Result<bool, StoreError> {
        let table = self.txn.open_table(USED_REFRESH)?;
        Ok(table.get(jti)?.is_some())
    }

    /// Whether the catalog is empty (no categories and no products).
    pub fn catalog_is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.txn.open_table(CATEGORIES)?.is_empty()?
            && self.txn.open_table(PRODUCTS)?.is_empty()?)
    }

    /// Every product record, archived ones included, by id.
    pub fn all_products(&self) -> Result<Vec<Product>, StoreError> {
        let table = self.txn.open_table(PRODUCTS)?;
        table
            .iter()?
            .map(|entry| decode(entry?.1.value()))
            .collect()
    }

    /// Every order with its items, by id (oldest first).
    pub fn all_orders(&self) -> Result<Vec<OrderView>, StoreError> {
        let table = self.txn.open_table(ORDERS)?;
        let mut views = Vec::new();
        for entry in table.iter()? {
            let order: Order = decode(entry?.1.value())?;
            views.push(self.order_view(order)?);
        }
        Ok(views)
    }

    /// A digest of the application state (every table but the raft log and bookkeeping):
    /// equal on two stores exactly when they hold the same data. Used to compare nodes and
    /// in property tests.
    pub fn digest(&self) -> Result<u64, StoreError> {
        /// Hashes rows as they are read: no copy of the state is held.
        struct Digest(DefaultHasher);
        impl crate::raft::StateVisitor for Digest {
            fn table(&mut self, name: &str, rows: u64) -> Result<(), StoreError> {
                self.0.write(name.as_bytes());
                self.0
                    .write_usize(usize::try_from(rows).unwrap_or(usize::MAX));
                Ok(())
            }
            fn row(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
                self.0.write(key);
                self.0.write(value);
                Ok(())
            }
        }
        let mut digest = Digest(DefaultHasher::new());
        crate::raft::visit_state(&self.txn, &mut digest)?;
        let hasher = digest.0;
        Ok(hasher.finish())
    }
}

#[cfg(test)]
mod tests {
    use redb::ReadableDatabase;
    use rust_decimal::Decimal;

    use super::*;
    use crate::apply::tests::{
        TestStore, add_to_cart, cancel, category, created_id, order, placed, product, user,
    };
    use crate::command::ProductChanges;
    use crate::model::OrderStatus;
    use crate::query::ProductSort;

    #[test]
    fn reopening_keeps_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let digest = {
            let store = Store::open(&path).unwrap();
            let mut changes = ChangeSet::default();
            let results = store
                .apply_batch(
                    &[category("Rock"), product("Guitar", 3, 100, 1)],
                    &mut changes,
                )
                .unwrap();
            assert!(results.iter().all(Result::is_ok));
            store.read().unwrap().digest().unwrap()
        };
        let store = Store::open(&path).unwrap();
        assert_eq!(store.path(), path);
        assert!(store.file_size() > 0);
        let reader = store.read().unwrap();
        assert_eq!(reader.digest().unwrap(), digest);
        assert_eq!(reader.product(1).unwrap().unwrap().name, "Guitar");
    }

    /// Overwrites the stored schema version with raw bytes, as another build might have.
    fn set_raw_schema_version(store: &Store, bytes: &[u8]) {
        let txn = store.db.begin_write().unwrap();
        {
            let mut meta = txn.open_table(META).unwrap();
            meta.insert(META_SCHEMA_VERSION, bytes).unwrap();
        }
        txn.commit().unwrap();
    }

    #[test]
    fn a_store_of_another_schema_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let store = Store::open(&path).unwrap();
        set_raw_schema_version(&store, &(SCHEMA_VERSION + 1).to_le_bytes());
        drop(store);
        match Store::open(&path) {
            Err(StoreError::SchemaMismatch {
                path: shown,
                found,
                supported,
            }) => {
                assert_eq!(found, SCHEMA_VERSION + 1);
                assert_eq!(supported, SCHEMA_VERSION);
                assert_eq!(shown, path.display().to_string());
            }
            Err(other) => panic!("expected SchemaMismatch, got {other}"),
            Ok(_) => panic!("expected SchemaMismatch, the store opened"),
        }
        // The refusal wrote nothing: it is refused again, the same way.
        assert!(matches!(
            Store::open(&path),
            Err(StoreError::SchemaMismatch { found, .. }) if found == SCHEMA_VERSION + 1
        ));
    }

    /// Usernames are unique whatever their case, in a new store and in one written before
    /// the username keys existed (they are derived at open).
    #[test]
    fn usernames_are_unique_whatever_their_case_also_in_older_stores() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        {
            let store = Store::open(&path).unwrap();
            let mut changes = ChangeSet::default();
            let results = store
                .apply_batch(
                    &[user("Shopper", false), user("shopper", false)],
                    &mut changes,
                )
                .unwrap();
            assert!(results[0].is_ok());
            assert_eq!(
                results[1],
                Err(Rejection::Duplicate {
                    what: "user",
                    field: "username"
                })
            );
            // As an older store: no username keys.
            let txn = store.db.begin_write().unwrap();
            txn.delete_table(USERNAME_KEYS).unwrap();
            txn.commit().unwrap();
        }
        let store = Store::open(&path).unwrap();
        let mut changes = ChangeSet::default();
        let results = store
            .apply_batch(
                &[user("SHOPPER", false), user("other", false)],
                &mut changes,
            )
            .unwrap();
        assert!(results[0].is_err(), "the derived keys know Shopper");
        assert!(results[1].is_ok());
    }

    #[test]
    fn an_empty_store_file_is_refused_not_taken_for_a_new_shop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        std::fs::write(&path, b"").unwrap();
        match Store::open(&path) {
            Err(error @ StoreError::Damaged { .. }) => {
                let message = error.to_string();
                assert!(message.contains(&path.display().to_string()), "{message}");
                assert!(message.contains("restore"), "{message}");
            }
            Err(other) => panic!("expected Damaged, got {other}"),
            Ok(_) => panic!("an empty file opened as a new store"),
        }
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "left as found");
    }

    #[test]
    fn a_foreign_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        std::fs::write(&path, vec![0x5a; 64 * 1024]).unwrap();
        assert!(Store::open(&path).is_err());
        assert_eq!(
            std::fs::read(&path).unwrap(),
            vec![0x5a; 64 * 1024],
            "left as found"
        );
    }

    /// Bytes overwritten inside the file (as a bad disk or a stray write would): the store
    /// is refused at open, naming the file, instead of a request finding it later.
    #[test]
    fn a_store_damaged_on_disk_is_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        {
            let store = Store::open(&path).unwrap();
            let mut commands = vec![category("gear")];
            commands.extend((0..3000).map(|i| product(&format!("amp {i}"), 5, 1000 + i, 1)));
            let mut changes = ChangeSet::default();
            store.apply_batch(&commands, &mut changes).unwrap();
        }
        let mut bytes = std::fs::read(&path).unwrap();
        let (start, end) = (bytes.len() / 4, bytes.len() * 3 / 4);
        let mut noise = 0x9e37_79b9_u32;
        for byte in &mut bytes[start..end] {
            noise ^= noise << 13;
            noise ^= noise >> 17;
            noise ^= noise << 5;
            *byte = noise as u8;
        }
        std::fs::write(&path, &bytes).unwrap();
        match Store::open(&path) {
            Err(error @ StoreError::Damaged { .. }) => {
                assert!(error.to_string().contains(&path.display().to_string()));
            }
            Err(other) => panic!("expected Damaged, got {other}"),
            Ok(_) => panic!("a damaged store opened"),
        }
    }

    #[test]
    fn a_garbled_schema_version_is_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let store = Store::open(&path).unwrap();
        set_raw_schema_version(&store, &[1, 0, 0]);
        drop(store);
        assert!(matches!(
            Store::open(&path),
            Err(StoreError::UnknownSchema { .. })
        ));
    }

    #[test]
    fn a_redb_file_without_meta_is_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.redb");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let other: TableDefinition<u64, u64> = TableDefinition::new("something_else");
                let mut table = txn.open_table(other).unwrap();
                table.insert(1, 2).unwrap();
            }
            txn.commit().unwrap();
        }
        match Store::open(&path) {
            Err(StoreError::UnknownSchema { path: shown }) => {
                assert_eq!(shown, path.display().to_string())
            }
            Err(other) => panic!("expected UnknownSchema, got {other}"),
            Ok(_) => panic!("expected UnknownSchema, the store opened"),
        }
        // Nothing was added to the foreign file.
        let db = Database::create(&path).unwrap();
        let txn = db.begin_read().unwrap();
        let names: Vec<String> = txn
            .list_tables()
            .unwrap()
            .map(|t| redb::TableHandle::name(&t).to_owned())
            .collect();
        assert_eq!(names, ["something_else"]);
    }

    #[test]
    fn a_fresh_store_has_every_table_and_an_empty_catalog() {
        let s = TestStore::new();
        let reader = s.store.read().unwrap();
        assert!(reader.catalog_is_empty().unwrap());
        assert_eq!(reader.categories().unwrap(), []);
        assert_eq!(reader.all_products().unwrap(), []);
        assert_eq!(reader.all_orders().unwrap(), []);
        assert_eq!(reader.jwt_secret().unwrap(), None);
        assert_eq!(reader.orders(None, 0, 10).unwrap().total, 0);
        assert_eq!(reader.order_items(Some(1), 0, 10).unwrap().total, 0);
        // 20 application tables, 2 of applied request ids, the raft log and raft state.
        assert_eq!(reader.txn.list_tables().unwrap().count(), 24);
        // Two fresh stores are equal.
        assert_eq!(reader.digest().unwrap(), TestStore::new().digest());
    }

    #[test]
    fn digest_tells_stores_apart() {
        let a = TestStore::new();
        let b = TestStore::new();
        let commands = [category("Rock"), product("Guitar", 3, 100, 1)];
        a.apply_all(&commands);
        b.apply_all(&commands);
        assert_eq!(a.digest(), b.digest());
        a.apply(Command::UpdateProduct {
            id: 1,
            changes: ProductChanges {
                stock: Some(4),
                ..Default::default()
            },
        })
        .unwrap();
        assert_ne!(a.digest(), b.digest());
        // An index-only difference shows too: the same record, another lower-cased name.
        let c = TestStore::new();
        c.apply_all(&commands);
        let txn = c.store.db.begin_write().unwrap();
        txn.open_table(PRODUCTS_BY_NAME)
            .unwrap()
            .insert(("zzz", 1), ())
            .unwrap();
        txn.commit().unwrap();
        assert_ne!(c.digest(), b.digest());
    }

    fn query(category: Option<Id>, name: Option<&str>, sort: ProductSort) -> ProductQuery {
        ProductQuery {
            category,
            name_contains: name.map(str::to_owned),
            sort,
            limit: 100,
            offset: 0,
        }
    }

    /// A catalog with two categories, names that differ only in case, an archived product
    /// and an erased one.
    fn catalog() -> TestStore {
        let s = TestStore::new();
        let results = s.apply_all(&[
            category("Strings"),                   // 1
            category("Drums"),                     // 2
            user("alice", false),                  // 1
            product("Fender GUITAR", 3, 100, 1),   // 1
            product("bass guitar", 3, 100, 1),     // 2
            product("Snare", 3, 100, 2),           // 3
            product("amp", 3, 100, 1),             // 4
            product("Old Guitar", 3, 100, 1),      // 5: ordered, then archived
            product("Acoustic Guitar", 3, 100, 2), // 6
            product("Amp", 3, 100, 2),             // 7
            product("Gone guitar", 3, 100, 1),     // 8: erased
            product("Zither", 3, 100, 1),          // 9
            order(1, &[(5, 1)], None),
            Command::DeleteProduct { id: 5 },
            Command::DeleteProduct { id: 8 },
        ]);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        s
    }

    fn ids(page: &Page<Product>) -> Vec<Id> {
        page.items.iter().map(|p| p.id).collect()
    }

    #[test]
    fn product_listing_filters_and_sorts() {
        let s = catalog();
        let reader = s.store.read().unwrap();
        let list = |q: ProductQuery| {
            let page = reader.products(&q).unwrap();
            assert_eq!(page.total, page.items.len(), "one page holds all of {q:?}");
            ids(&page)
        };
        use ProductSort::{NameAsc, NameDesc};
        assert_eq!(
            list(query(None, None, ProductSort::Id)),
            [1, 2, 3, 4, 6, 7, 9]
        );
        // Name order is case-insensitive; equal names go by id, and reversed by id.
        assert_eq!(list(query(None, None, NameAsc)), [6, 4, 7, 2, 1, 3, 9]);
        assert_eq!(list(query(None, None, NameDesc)), [9, 3, 1, 2, 7, 4, 6]);
        assert_eq!(list(query(Some(1), None, ProductSort::Id)), [1, 2, 4, 9]);
        assert_eq!(list(query(Some(1), None, NameAsc)), [4, 2, 1, 9]);
        assert_eq!(list(query(Some(1), None, NameDesc)), [9, 1, 2, 4]);
        assert_eq!(list(query(Some(2), None, NameAsc)), [6, 7, 3]);
        assert_eq!(list(query(Some(2), None, NameDesc)), [3, 7, 6]);
        assert_eq!(
            list(query(Some(99), None, ProductSort::Id)),
            Vec::<Id>::new()
        );
        // The needle matches any case; archived and erased guitars are not listed.
        for needle in ["guitar", "GUITAR", "gUiTaR", "uita"] {
            assert_eq!(list(query(None, Some(needle), ProductSort::Id)), [1, 2, 6]);
            assert_eq!(list(query(None, Some(needle), NameAsc)), [6, 2, 1]);
            assert_eq!(list(query(None, Some(needle), NameDesc)), [1, 2, 6]);
            assert_eq!(list(query(Some(1), Some(needle), NameAsc)), [2, 1]);
            assert_eq!(list(query(Some(2), Some(needle), ProductSort::Id)), [6]);
        }
        assert_eq!(list(query(None, Some("AMP"), ProductSort::Id)), [4, 7]);
        assert_eq!(list(query(None, Some(""), ProductSort::Id)).len(), 7);
        assert_eq!(list(query(None, Some("violin"), NameAsc)), Vec::<Id>::new());
        // The archived product is still there to read directly.
        assert!(reader.product(5).unwrap().unwrap().archived);
        assert_eq!(reader.product(8).unwrap(), None);
    }

    #[test]
    fn product_listing_pages() {
        let s = catalog();
        let reader = s.store.read().unwrap();
        let categories = [None, Some(1), Some(2), Some(3)];
        let needles = [None, Some("GUITAR"), Some("a"), Some("nothing")];
        let sorts = [ProductSort::Id, ProductSort::NameAsc, ProductSort::NameDesc];
        for category in categories {
            for needle in needles {
                for sort in sorts {
                    let full = reader.products(&query(category, needle, sort)).unwrap();
                    let all = ids(&full);
                    for limit in 0..=4 {
                        for offset in 0..=all.len() + 1 {
                            let q = ProductQuery {
                                limit,
                                offset,
                                ..query(category, needle, sort)
                            };
                            let page = reader.products(&q).unwrap();
                            assert_eq!(page.total, all.len(), "{q:?}");
                            let expected: Vec<Id> =
                                all.iter().copied().skip(offset).take(limit).collect();
                            assert_eq!(ids(&page), expected, "{q:?}");
                        }
                    }
                    // A huge limit or offset does not overflow.
                    let q = ProductQuery {
                        limit: usize::MAX,
                        offset: usize::MAX,
                        ..query(category, needle, sort)
                    };
                    assert_eq!(reader.products(&q).unwrap().items, []);
                    let q = ProductQuery {
                        limit: usize::MAX,
                        offset: 1,
                        ..query(category, needle, sort)
                    };
                    assert_eq!(
                        reader.products(&q).unwrap().items.len(),
                        all.len().saturating_sub(1)
                    );
                }
            }
        }
    }

    #[test]
    fn product_listing_follows_renames_moves_and_deletes() {
        let s = catalog();
        s.apply(Command::UpdateProduct {
            id: 9,
            changes: ProductChanges {
                name: Some("AAA Guitar".into()),
                category: Some(2),
                ..Default::default()
            },
        })
        .unwrap();
        s.apply(Command::DeleteProduct { id: 1 }).unwrap();
        let reader = s.store.read().unwrap();
        let list = |q| ids(&reader.products(&q).unwrap());
        assert_eq!(
            list(query(None, Some("guitar"), ProductSort::NameAsc)),
            [9, 6, 2]
        );
        assert_eq!(list(query(Some(1), None, ProductSort::Id)), [2, 4]);
        assert_eq!(
            list(query(Some(2), None, ProductSort::NameAsc)),
            [9, 6, 7, 3]
        );
    }

    #[test]
    fn orders_and_items_are_listed_newest_first() {
        let s = catalog();
        s.apply(user("bob", false)).unwrap();
        let bob = 2;
        let mut bobs_orders = Vec::new();
        for _ in 0..3 {
            let (o, _) = placed(s.apply(order(bob, &[(1, 1), (3, 1)], None)));
            bobs_orders.push(o.id);
        }
        let cart_line = created_id(s.apply(add_to_cart(bob, 2, 2)));
        s.apply(cancel(bob, bobs_orders[1])).unwrap();

        let reader = s.store.read().unwrap();
        let page = reader.orders(Some(bob), 0, 2).unwrap();
        assert_eq!(page.total, 3);
        let listed: Vec<Id> = page.items.iter().map(|v| v.order.id).collect();
        assert_eq!(listed, [bobs_orders[2], bobs_orders[1]]);
        assert_eq!(page.items[1].order.status, OrderStatus::Cancelled);
        let page = reader.orders(Some(bob), 2, 2).unwrap();
        assert_eq!(page.items.len(), 1);
        assert_eq!(page.items[0].order.id, bobs_orders[0]);
        let view = &page.items[0];
        assert_eq!(view.username, "bob");
        let names: Vec<&str> = view.items.iter().map(|i| i.product_name.as_str()).collect();
        assert_eq!(names, ["Fender GUITAR", "Snare"]);
        assert_eq!(view.order.total, Decimal::new(200, 2));

        // Everyone's orders: alice's one from the catalog and bob's three.
        let all = reader.orders(None, 0, 10).unwrap();
        assert_eq!(all.total, 4);
        assert_eq!(all.items.last().unwrap().username, "alice");
        assert_eq!(reader.all_orders().unwrap().len(), 4);
        assert_eq!(reader.orders(Some(99), 0, 10).unwrap().total, 0);

        // Bob's order items: the cart line first, then the order lines, newest first.
        let items = reader.order_items(Some(bob), 0, 3).unwrap();
        assert_eq!(items.total, 7);
        assert_eq!(items.items[0].item.id, cart_line);
        assert_eq!(items.items[0].item.order, None);
        assert_eq!(items.items[0].product_name, "bass guitar");
        assert!(items.items.windows(2).all(|w| w[0].item.id > w[1].item.id));
        assert_eq!(reader.order_items(None, 0, 100).unwrap().total, 8);
    }
}
