//! The store's error type: failures of the storage itself, as opposed to a command's
//! [`Rejection`](crate::Rejection), which is a normal answer.

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage error: {0}")]
    Storage(#[from] redb::Error),
    #[error("cannot open the store {path}: {source}")]
    Open {
        path: String,
        source: redb::DatabaseError,
    },
    #[error(
        "the store {path} is damaged ({reason}); refusing to start on it: restore it from a \
         backup, or, in a cluster, move it away and let the node rejoin from a snapshot"
    )]
    Damaged { path: String, reason: String },
    #[error("record encoding error: {0}")]
    Encoding(String),
    #[error("cannot {action} the snapshot file {path}: {source}")]
    SnapshotIo {
        path: String,
        action: &'static str,
        source: std::io::Error,
    },
    #[error("the snapshot file {path} is unusable: {reason}")]
    SnapshotInvalid { path: String, reason: String },
    #[error(
        "the store at {path} has schema version {found}, but this build reads version {supported}; \
         refusing to open it (use a matching Soundwave release or a fresh data directory)"
    )]
    SchemaMismatch {
        path: String,
        found: u32,
        supported: u32,
    },
    #[error("the file at {path} holds tables but no Soundwave schema version; refusing to open it")]
    UnknownSchema { path: String },
    #[error("the write failed: {0}")]
    WriteFailed(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("the store's writer has stopped")]
    WriterStopped,
    #[error("the catalog holds more products on sale than its index can number (4,294,967,294)")]
    CatalogTooLarge,
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Storage(e.into())
            }
        }
    )*};
}

from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);
