//! The schema at open: the version check (a store of another [`SCHEMA_VERSION`], or a redb
//! file that is not a Soundwave store, is refused; one of the version before is upgraded),
//! every table created, and what older stores lack derived, all in one write transaction.

use std::path::Path;

use redb::{Database, ReadableTable, ReadableTableMetadata};

use crate::error::StoreError;
use crate::model::OrderItem;
use crate::tables::*;

/// Checks the schema version of the store `db` (at `path`, named in errors), writes it into
/// a new store, upgrades a store of [`PREVIOUS_SCHEMA_VERSION`], and creates every table,
/// in one committed write transaction. A refused store is left as it was.
pub(crate) fn check_and_prepare(db: &Database, path: &Path) -> Result<(), StoreError> {
    let path = path.display().to_string();
    let txn = db.begin_write()?;
    let existing_tables = txn.list_tables()?.count();
    let upgrade = {
        let mut meta = txn.open_table(META)?;
        let found = meta
            .get(META_SCHEMA_VERSION)?
            .map(|v| v.value().try_into().map(u32::from_le_bytes));
        match found {
            Some(Ok(version)) if version == SCHEMA_VERSION => false,
            Some(Ok(PREVIOUS_SCHEMA_VERSION)) => {
                meta.insert(META_SCHEMA_VERSION, SCHEMA_VERSION.to_le_bytes().as_slice())?;
                true
            }
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
                false
            }
        }
    };
    if upgrade {
        for table in DROPPED_TABLES {
            txn.delete_table(table)?;
        }
    }
    // Creating every table up front lets readers open them without special cases.
    macro_rules! create {
        ($table:ident) => {
            txn.open_table($table)?;
        };
    }
    for_each_state_table!(create);
    txn.open_table(RAFT_LOG)?;
    txn.open_table(RAFT_STATE)?;
    backfill_username_keys(&txn)?;
    backfill_cart_line_counts(&txn)?;
    txn.commit()?;
    if upgrade {
        tracing::info!(
            path = %path,
            from = PREVIOUS_SCHEMA_VERSION,
            to = SCHEMA_VERSION,
            "upgraded the store's schema"
        );
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use redb::{ReadableDatabase, TableDefinition};

    use super::*;
    use crate::apply::ChangeSet;
    use crate::apply::tests::{category, open_with, product, table_names, user};
    use crate::command::Rejection;
    use crate::db::Store;

    /// Overwrites the stored schema version with raw bytes, as another build might have.
    fn set_raw_schema_version(store: &Store, bytes: &[u8]) {
        let txn = store.db().begin_write().unwrap();
        {
            let mut meta = txn.open_table(META).unwrap();
            meta.insert(META_SCHEMA_VERSION, bytes).unwrap();
        }
        txn.commit().unwrap();
    }

    /// A store of the version before, written by hand as that version's build left it (its
    /// version number and its `products_by_name` index, filled), is upgraded at open: the
    /// dropped table is gone, the version is the current one, the data is all there.
    #[test]
    fn a_store_of_the_previous_schema_version_is_upgraded_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let digest = {
            let store = open_with(&path, &[category("Rock"), product("Guitar", 3, 100, 1)]);
            let digest = store.read().unwrap().digest().unwrap();
            set_raw_schema_version(&store, &PREVIOUS_SCHEMA_VERSION.to_le_bytes());
            let txn = store.db().begin_write().unwrap();
            txn.open_table(DROPPED_TABLES[0])
                .unwrap()
                .insert(("guitar", 1), ())
                .unwrap();
            txn.commit().unwrap();
            digest
        };
        let stored_version = |store: &Store| -> Vec<u8> {
            let txn = store.db().begin_read().unwrap();
            let meta = txn.open_table(META).unwrap();
            meta.get(META_SCHEMA_VERSION)
                .unwrap()
                .unwrap()
                .value()
                .to_vec()
        };

        let store = Store::open(&path).unwrap();
        assert_eq!(stored_version(&store), SCHEMA_VERSION.to_le_bytes());
        assert!(!table_names(&store).contains(&"products_by_name".to_owned()));
        let reader = store.read().unwrap();
        assert_eq!(reader.digest().unwrap(), digest);
        assert_eq!(reader.product(1).unwrap().unwrap().name, "Guitar");
        drop(reader);
        drop(store);
        // Opened again, it is a store of this version like any other.
        let store = Store::open(&path).unwrap();
        assert_eq!(store.read().unwrap().digest().unwrap(), digest);
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
            let txn = store.db().begin_write().unwrap();
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
}
