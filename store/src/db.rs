//! [`Store`]: the redb database, opened with its schema checked, written in batches of
//! commands, and read through [`StoreReader`] snapshots.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use redb::{Database, Durability, ReadableDatabase, WriteTransaction};

use crate::apply::{ChangeSet, WriteTables, apply_command};
use crate::catalog::CatalogIndex;
use crate::command::{Command, CommandOutcome, Rejection};
use crate::error::StoreError;
use crate::reader::StoreReader;
use crate::schema;
use crate::tables::PRODUCTS;

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

impl Store {
    /// Opens (or creates) the store file, refusing a file of another schema version (one of
    /// the version before is upgraded), with redb's page cache at [`DEFAULT_PAGE_CACHE_BYTES`].
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
        schema::check_and_prepare(&store.db, &store.path)?;
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
        Ok(StoreReader::new(txn, Arc::clone(&current)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::tests::{category, open_with, product};

    #[test]
    fn reopening_keeps_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let digest = {
            let store = open_with(&path, &[category("Rock"), product("Guitar", 3, 100, 1)]);
            store.read().unwrap().digest().unwrap()
        };
        let store = Store::open(&path).unwrap();
        assert_eq!(store.path(), path);
        assert!(store.file_size() > 0);
        let reader = store.read().unwrap();
        assert_eq!(reader.digest().unwrap(), digest);
        assert_eq!(reader.product(1).unwrap().unwrap().name, "Guitar");
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
}
