//! State-machine snapshots: the raw rows of every application table, so a node that was
//! away long, or a new node, can take over the whole state at once.

use redb::{Key, ReadTransaction, ReadableTable, TableDefinition, Value, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::tables::*;

/// One table's rows in redb's own key and value encodings.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct TableRows {
    pub name: String,
    pub rows: Vec<(Vec<u8>, Vec<u8>)>,
}

fn dump<K: Key + 'static, V: Value + 'static>(
    txn: &ReadTransaction,
    definition: TableDefinition<K, V>,
) -> Result<TableRows, StoreError> {
    let table = txn.open_table(definition)?;
    let mut rows = Vec::new();
    for entry in table.iter()? {
        let (key, value) = entry?;
        rows.push((
            K::as_bytes(&key.value()).as_ref().to_vec(),
            V::as_bytes(&value.value()).as_ref().to_vec(),
        ));
    }
    Ok(TableRows {
        name: redb::TableHandle::name(&definition).to_owned(),
        rows,
    })
}

fn load<K: Key + 'static, V: Value + 'static>(
    txn: &WriteTransaction,
    definition: TableDefinition<K, V>,
    rows: &[(Vec<u8>, Vec<u8>)],
) -> Result<(), StoreError> {
    let mut table = txn.open_table(definition)?;
    table.retain(|_, _| false)?;
    for (key, value) in rows {
        table.insert(K::from_bytes(key), V::from_bytes(value))?;
    }
    Ok(())
}

/// Calls `$visit!(TABLE)` for every table that is application state (replicated and
/// snapshotted), leaving out the raft log and the raft bookkeeping.
macro_rules! for_each_state_table {
    ($visit:ident) => {
        $visit!(META);
        $visit!(COUNTERS);
        $visit!(CATEGORIES);
        $visit!(CATEGORY_NAMES);
        $visit!(PRODUCTS);
        $visit!(PRODUCTS_BY_CATEGORY);
        $visit!(PRODUCTS_BY_NAME);
        $visit!(USERS);
        $visit!(USERNAMES);
        $visit!(ORDER_ITEMS);
        $visit!(ORDER_ITEMS_BY_USER);
        $visit!(CART_LINES_BY_PRODUCT);
        $visit!(ORDERS);
        $visit!(ORDERS_BY_USER);
        $visit!(IDEMPOTENCY);
        $visit!(USED_REFRESH);
        $visit!(USED_REFRESH_BY_EXPIRY);
        $visit!(APPLIED_REQUESTS);
        $visit!(APPLIED_REQUESTS_BY_INDEX);
    };
}

/// The rows of every state table in one read snapshot.
pub(crate) fn dump_state(txn: &ReadTransaction) -> Result<Vec<TableRows>, StoreError> {
    let mut tables = Vec::new();
    macro_rules! visit {
        ($table:ident) => {
            tables.push(dump(txn, $table)?);
        };
    }
    for_each_state_table!(visit);
    Ok(tables)
}

/// Replaces every state table with the given rows.
pub(crate) fn load_state(txn: &WriteTransaction, tables: &[TableRows]) -> Result<(), StoreError> {
    let rows_of = |name: &str| -> &[(Vec<u8>, Vec<u8>)] {
        tables
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.rows.as_slice())
            .unwrap_or(&[])
    };
    macro_rules! visit {
        ($table:ident) => {
            load(txn, $table, rows_of(redb::TableHandle::name(&$table)))?;
        };
    }
    for_each_state_table!(visit);
    Ok(())
}
