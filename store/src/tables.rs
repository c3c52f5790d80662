//! The redb tables: records keyed by id, and the secondary indexes that keep reads
//! from scanning. Records are bincode-encoded; index values are empty. Also the walk over
//! the application state ([`visit_state`]) that snapshots and the digest share.

use redb::{
    Key, ReadTransaction, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle, Value,
};

use crate::error::StoreError;

/// Bumped whenever a table's layout or a record's encoding changes. A store written with
/// another version is refused at open instead of being misread, except a store of the
/// version before, which is upgraded at open (see `schema`).
///
/// - 1: the first.
/// - 2: no `products_by_name` index (it was written but never read: the catalog index in
///   memory answers name filters).
pub const SCHEMA_VERSION: u32 = 2;

/// The schema version before [`SCHEMA_VERSION`]: its stores are upgraded at open, its
/// snapshots still load.
pub(crate) const PREVIOUS_SCHEMA_VERSION: u32 = 1;

/// Tables of the previous schema version that this one dropped: an older store loses them
/// when it is upgraded, and their rows in an older node's snapshot are skipped.
pub(crate) const DROPPED_TABLES: [TableDefinition<(&str, u64), ()>; 1] =
    [TableDefinition::new("products_by_name")];

pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
pub(crate) const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");

pub(crate) const CATEGORIES: TableDefinition<u64, &[u8]> = TableDefinition::new("categories");
/// Lower-cased category name → id (names are unique case-insensitively).
pub(crate) const CATEGORY_NAMES: TableDefinition<&str, u64> =
    TableDefinition::new("category_names");

pub(crate) const PRODUCTS: TableDefinition<u64, &[u8]> = TableDefinition::new("products");
/// (category, product) for every product, archived ones included.
pub(crate) const PRODUCTS_BY_CATEGORY: TableDefinition<(u64, u64), ()> =
    TableDefinition::new("products_by_category");

pub(crate) const USERS: TableDefinition<u64, &[u8]> = TableDefinition::new("users");
pub(crate) const USERNAMES: TableDefinition<&str, u64> = TableDefinition::new("usernames");
/// lowercased username → user id: usernames are unique whatever their case (as category
/// names are), while a login names the account exactly.
pub(crate) const USERNAME_KEYS: TableDefinition<&str, u64> = TableDefinition::new("username_keys");

pub(crate) const ORDER_ITEMS: TableDefinition<u64, &[u8]> = TableDefinition::new("order_items");
/// (user, item) for every order item.
pub(crate) const ORDER_ITEMS_BY_USER: TableDefinition<(u64, u64), ()> =
    TableDefinition::new("order_items_by_user");
/// (product, item) for cart lines only (items not yet in an order).
/// user id → lines in the user's cart (items not yet ordered), for the cap on carts.
pub(crate) const CART_LINE_COUNTS: TableDefinition<u64, u64> =
    TableDefinition::new("cart_line_counts");
pub(crate) const CART_LINES_BY_PRODUCT: TableDefinition<(u64, u64), ()> =
    TableDefinition::new("cart_lines_by_product");

pub(crate) const ORDERS: TableDefinition<u64, &[u8]> = TableDefinition::new("orders");
pub(crate) const ORDERS_BY_USER: TableDefinition<(u64, u64), ()> =
    TableDefinition::new("orders_by_user");
/// (user, Idempotency-Key) → the request's lines and the order it placed.
pub(crate) const IDEMPOTENCY: TableDefinition<(u64, &str), &[u8]> =
    TableDefinition::new("idempotency_keys");

/// Refresh-token ids that were used (rotated), with their expiry.
pub(crate) const USED_REFRESH: TableDefinition<&str, i64> = TableDefinition::new("used_refresh");
pub(crate) const USED_REFRESH_BY_EXPIRY: TableDefinition<(i64, &str), ()> =
    TableDefinition::new("used_refresh_by_expiry");

/// user id → unix second of the user's last password or staff change: refresh tokens
/// issued before it are refused.
pub(crate) const CREDENTIALS_CHANGED: TableDefinition<u64, i64> =
    TableDefinition::new("credentials_changed");

/// (order, status code) → (when, by whom) the order reached that status through
/// `SetOrderStatus` (placed is the order's own `created_at`).
pub(crate) const ORDER_STATUS_CHANGES: TableDefinition<(u64, u8), (i64, u64)> =
    TableDefinition::new("order_status_changes");

/// user id → when the user was deactivated: they cannot log in and their tokens fail.
pub(crate) const DEACTIVATED_USERS: TableDefinition<u64, i64> =
    TableDefinition::new("deactivated_users");

/// Calls `$visit!(TABLE)` for every table that is application state (replicated, in
/// snapshots and in the digest), leaving out the raft log and the raft bookkeeping
/// (`RAFT_TABLES`). The one list of them, walked by the schema (which creates them at
/// open), snapshots, the digest and tests: a table missing here would be silently absent
/// from snapshots, which `raft::snapshot`'s tests catch.
macro_rules! for_each_state_table {
    ($visit:ident) => {
        $visit!(META);
        $visit!(COUNTERS);
        $visit!(CATEGORIES);
        $visit!(CATEGORY_NAMES);
        $visit!(PRODUCTS);
        $visit!(PRODUCTS_BY_CATEGORY);
        $visit!(USERS);
        $visit!(USERNAMES);
        $visit!(USERNAME_KEYS);
        $visit!(ORDER_ITEMS);
        $visit!(ORDER_ITEMS_BY_USER);
        $visit!(CART_LINES_BY_PRODUCT);
        $visit!(CART_LINE_COUNTS);
        $visit!(ORDERS);
        $visit!(ORDERS_BY_USER);
        $visit!(IDEMPOTENCY);
        $visit!(USED_REFRESH);
        $visit!(USED_REFRESH_BY_EXPIRY);
        $visit!(CREDENTIALS_CHANGED);
        $visit!(ORDER_STATUS_CHANGES);
        $visit!(DEACTIVATED_USERS);
        $visit!(APPLIED_REQUESTS);
        $visit!(APPLIED_REQUESTS_BY_INDEX);
    };
}
pub(crate) use for_each_state_table;

/// Receives the state of a read transaction table by table, in key order.
pub(crate) trait StateVisitor {
    fn table(&mut self, name: &str, rows: u64) -> Result<(), StoreError>;
    fn row(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError>;
}

fn visit_table<K: Key + 'static, V: Value + 'static>(
    txn: &ReadTransaction,
    definition: TableDefinition<K, V>,
    visitor: &mut impl StateVisitor,
) -> Result<(), StoreError> {
    let table = txn.open_table(definition)?;
    visitor.table(definition.name(), table.len()?)?;
    for entry in table.iter()? {
        let (key, value) = entry?;
        visitor.row(
            K::as_bytes(&key.value()).as_ref(),
            V::as_bytes(&value.value()).as_ref(),
        )?;
    }
    Ok(())
}

/// Streams every state table of `txn` to `visitor`.
pub(crate) fn visit_state(
    txn: &ReadTransaction,
    visitor: &mut impl StateVisitor,
) -> Result<(), StoreError> {
    macro_rules! visit {
        ($table:ident) => {
            visit_table(txn, $table, visitor)?;
        };
    }
    for_each_state_table!(visit);
    Ok(())
}

/// The state digest (see `StoreReader::digest`): hashes rows as they are visited, so no
/// copy of the state is held. A store and a snapshot file of the same state hash alike.
#[derive(Default)]
pub(crate) struct StateDigest(std::hash::DefaultHasher);

impl StateDigest {
    pub(crate) fn finish(&self) -> u64 {
        std::hash::Hasher::finish(&self.0)
    }
}

impl StateVisitor for StateDigest {
    fn table(&mut self, name: &str, rows: u64) -> Result<(), StoreError> {
        use std::hash::Hasher;
        self.0.write(name.as_bytes());
        self.0
            .write_usize(usize::try_from(rows).unwrap_or(usize::MAX));
        Ok(())
    }

    fn row(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        use std::hash::Hasher;
        self.0.write(key);
        self.0.write(value);
        Ok(())
    }
}

/// Whether `name` is one of [`DROPPED_TABLES`].
pub(crate) fn is_dropped_table(name: &str) -> bool {
    DROPPED_TABLES.iter().any(|table| table.name() == name)
}

/// Whether `name` is one of the tables of `for_each_state_table!`.
pub(crate) fn is_state_table(name: &str) -> bool {
    macro_rules! check {
        ($table:ident) => {
            if name == $table.name() {
                return true;
            }
        };
    }
    for_each_state_table!(check);
    false
}

pub(crate) const META_SCHEMA_VERSION: &str = "schema_version";
pub(crate) const META_JWT_SECRET: &str = "jwt_secret";
/// `META` keys of cluster members' records: this prefix and the id in 20 digits, so that
/// they sort by id.
pub(crate) const META_MEMBER_PREFIX: &str = "member/";
/// The first key after every member key.
pub(crate) const META_MEMBER_END: &str = "member0";

pub(crate) fn member_key(id: u64) -> String {
    format!("{META_MEMBER_PREFIX}{id:020}")
}

pub(crate) fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .map_err(|e| StoreError::Encoding(e.to_string()))
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map(|(value, _)| value)
        .map_err(|e| StoreError::Encoding(e.to_string()))
}

/// Request ids of applied client commands, with the log index that applied them, so a
/// command retried after a leader change is applied once. Pruned by index, deterministically.
pub(crate) const APPLIED_REQUESTS: TableDefinition<u128, u64> =
    TableDefinition::new("applied_requests");
pub(crate) const APPLIED_REQUESTS_BY_INDEX: TableDefinition<(u64, u128), ()> =
    TableDefinition::new("applied_requests_by_index");

/// The replicated log: index → bincode entry.
pub(crate) const RAFT_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// Raft bookkeeping: vote, committed and purged log ids, last applied log id, membership.
pub(crate) const RAFT_STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_state");

/// The tables that are not application state: raft's own, never in a snapshot.
#[cfg(test)]
pub(crate) const RAFT_TABLES: [&str; 2] = ["raft_log", "raft_state"];
