//! State-machine snapshots as files: the raw rows of every application table, streamed from
//! one read transaction into a file beside the store, sent to other nodes in chunks by
//! openraft, and loaded back row by row into one write transaction. Memory stays bounded by
//! the I/O buffers and one row, whatever the size of the state.
//!
//! A snapshot file (integers little-endian):
//!
//! ```text
//! header  "SWSNAPSH" · format version u32 · schema version u32 · meta length u32 · meta (bincode)
//! table*  1u8 · name length u8 · name · row count u64 · row*
//! row     key length u32 · key · value length u32 · value      (redb's own encodings)
//! end     0xFFu8 · table count u32 · CRC-32 of every byte before it u32
//! ```
//!
//! Files are written under a temporary name, fsynced, then renamed over the current one
//! ([`SnapshotFiles::keep`]), so a crash never leaves a half-written current snapshot.

use std::fs::{File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};

use openraft::storage::SnapshotMeta;
use redb::{Key, ReadTransaction, TableDefinition, TableHandle, Value, WriteTransaction};

use super::{NodeId, RaftLogId, RaftNode};
use crate::error::StoreError;
use crate::tables::*;

pub(crate) type Meta = SnapshotMeta<NodeId, RaftNode>;

const MAGIC: [u8; 8] = *b"SWSNAPSH";
/// Bumped whenever the layout of the file changes.
const FORMAT_VERSION: u32 = 1;
const TABLE_TAG: u8 = 1;
const END_TAG: u8 = 0xFF;
/// Size of the read and write buffers of snapshot files.
const BUFFER_BYTES: usize = 1024 * 1024;
/// Size of the read buffer when only the header is read.
const HEADER_BUFFER_BYTES: usize = 8 * 1024;

// ---- Errors ---------------------------------------------------------------------------

fn io_error(path: &Path, action: &'static str) -> impl FnOnce(io::Error) -> StoreError {
    move |source| {
        if source.kind() == io::ErrorKind::UnexpectedEof {
            invalid(path, "the file ends early (truncated)")
        } else {
            StoreError::SnapshotIo {
                path: path.display().to_string(),
                action,
                source,
            }
        }
    }
}

fn invalid(path: &Path, reason: impl Into<String>) -> StoreError {
    StoreError::SnapshotInvalid {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

// ---- Writing a snapshot file ----------------------------------------------------------

/// A writer that keeps the CRC-32 of everything written through it.
struct ChecksumWriter<W> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Write for ChecksumWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.crc.update(&buf[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes the rows of a [`visit_state`] walk in the file layout.
struct RowWriter<'a, W> {
    out: ChecksumWriter<W>,
    path: &'a Path,
    tables: u32,
    /// Rows the current table announced and has not written yet.
    rows_due: u64,
}

impl<W: Write> RowWriter<'_, W> {
    /// Every row the last table announced was written.
    fn check_rows_written(&self) -> Result<(), StoreError> {
        if self.rows_due != 0 {
            return Err(invalid(self.path, "a table had fewer rows than its length"));
        }
        Ok(())
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.out
            .write_all(bytes)
            .map_err(io_error(self.path, "write"))
    }

    fn put_field(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        let length = u32::try_from(bytes.len())
            .map_err(|_| invalid(self.path, "a row is larger than 4 GiB"))?;
        self.put(&length.to_le_bytes())?;
        self.put(bytes)
    }
}

impl<W: Write> StateVisitor for RowWriter<'_, W> {
    fn table(&mut self, name: &str, rows: u64) -> Result<(), StoreError> {
        let name_length = u8::try_from(name.len())
            .map_err(|_| invalid(self.path, format!("table name {name} is too long")))?;
        self.check_rows_written()?;
        self.tables += 1;
        self.rows_due = rows;
        self.put(&[TABLE_TAG, name_length])?;
        self.put(name.as_bytes())?;
        self.put(&rows.to_le_bytes())
    }

    fn row(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.rows_due = self
            .rows_due
            .checked_sub(1)
            .ok_or_else(|| invalid(self.path, "a table had more rows than its length"))?;
        self.put_field(key)?;
        self.put_field(value)
    }
}

/// Writes the snapshot of `txn`'s state with `meta` into a new file at `path`, fsynced,
/// and returns the file positioned at its start.
pub(crate) fn write_snapshot(
    path: &Path,
    txn: &ReadTransaction,
    meta: &Meta,
) -> Result<File, StoreError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_error(path, "create"))?;
    let mut writer = RowWriter {
        out: ChecksumWriter {
            inner: BufWriter::with_capacity(BUFFER_BYTES, file),
            crc: crc32fast::Hasher::new(),
        },
        path,
        tables: 0,
        rows_due: 0,
    };
    let meta_bytes = encode(meta)?;
    let meta_length = u32::try_from(meta_bytes.len())
        .map_err(|_| invalid(path, "the snapshot meta is larger than 4 GiB"))?;
    writer.put(&MAGIC)?;
    writer.put(&FORMAT_VERSION.to_le_bytes())?;
    writer.put(&SCHEMA_VERSION.to_le_bytes())?;
    writer.put(&meta_length.to_le_bytes())?;
    writer.put(&meta_bytes)?;
    visit_state(txn, &mut writer)?;
    writer.check_rows_written()?;
    let tables = writer.tables;
    writer.put(&[END_TAG])?;
    writer.put(&tables.to_le_bytes())?;
    let ChecksumWriter { mut inner, crc } = writer.out;
    inner
        .write_all(&crc.finalize().to_le_bytes())
        .map_err(io_error(path, "write"))?;
    let mut file = inner
        .into_inner()
        .map_err(|e| io_error(path, "write")(e.into_error()))?;
    file.sync_all().map_err(io_error(path, "sync"))?;
    file.seek(SeekFrom::Start(0))
        .map_err(io_error(path, "seek"))?;
    Ok(file)
}

// ---- Reading a snapshot file ----------------------------------------------------------

/// A reader that keeps the CRC-32 of everything read through it.
struct ChecksumReader<R> {
    inner: R,
    crc: crc32fast::Hasher,
}

impl<R: Read> Read for ChecksumReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.crc.update(&buf[..read]);
        Ok(read)
    }
}

/// One record after the header.
enum Record {
    Table { name: String, rows: u64 },
    End,
}

/// Reads a snapshot file record by record, checking its structure and checksum.
struct SnapshotReader<'a> {
    input: ChecksumReader<BufReader<&'a mut File>>,
    path: &'a Path,
    tables: u32,
}

impl<'a> SnapshotReader<'a> {
    /// Reads the header from the start of `file`: the snapshot's meta.
    fn open(
        file: &'a mut File,
        path: &'a Path,
        buffer_bytes: usize,
    ) -> Result<(SnapshotReader<'a>, Meta), StoreError> {
        file.seek(SeekFrom::Start(0))
            .map_err(io_error(path, "seek"))?;
        let mut reader = SnapshotReader {
            input: ChecksumReader {
                inner: BufReader::with_capacity(buffer_bytes, file),
                crc: crc32fast::Hasher::new(),
            },
            path,
            tables: 0,
        };
        let mut magic = [0; 8];
        reader.take(&mut magic)?;
        if magic != MAGIC {
            return Err(invalid(path, "not a Soundwave snapshot file"));
        }
        let format = reader.u32()?;
        if format != FORMAT_VERSION {
            return Err(invalid(
                path,
                format!("snapshot format {format}, this build reads {FORMAT_VERSION}"),
            ));
        }
        let schema = reader.u32()?;
        if schema != SCHEMA_VERSION {
            return Err(invalid(
                path,
                format!("rows of schema version {schema}, this build has {SCHEMA_VERSION}"),
            ));
        }
        let meta_length = reader.u32()?;
        let mut meta = Vec::new();
        reader.field(meta_length, &mut meta)?;
        let meta = decode(&meta).map_err(|e| invalid(path, format!("bad meta: {e}")))?;
        Ok((reader, meta))
    }

    fn take(&mut self, buf: &mut [u8]) -> Result<(), StoreError> {
        self.input
            .read_exact(buf)
            .map_err(io_error(self.path, "read"))
    }

    fn u32(&mut self) -> Result<u32, StoreError> {
        let mut bytes = [0; 4];
        self.take(&mut bytes)?;
        Ok(u32::from_le_bytes(bytes))
    }

    fn u64(&mut self) -> Result<u64, StoreError> {
        let mut bytes = [0; 8];
        self.take(&mut bytes)?;
        Ok(u64::from_le_bytes(bytes))
    }

    /// Reads `length` bytes into `buf`, which grows only as far as the file really goes.
    fn field(&mut self, length: u32, buf: &mut Vec<u8>) -> Result<(), StoreError> {
        buf.clear();
        let read = (&mut self.input)
            .take(u64::from(length))
            .read_to_end(buf)
            .map_err(io_error(self.path, "read"))?;
        if read != length as usize {
            return Err(invalid(self.path, "the file ends early (truncated)"));
        }
        Ok(())
    }

    /// Reads a row's key and value into the buffers.
    fn row(&mut self, key: &mut Vec<u8>, value: &mut Vec<u8>) -> Result<(), StoreError> {
        let length = self.u32()?;
        self.field(length, key)?;
        let length = self.u32()?;
        self.field(length, value)
    }

    /// Passes over a row without keeping it.
    fn skip_row(&mut self) -> Result<(), StoreError> {
        for _ in 0..2 {
            let length = u64::from(self.u32()?);
            let skipped = io::copy(&mut (&mut self.input).take(length), &mut io::sink())
                .map_err(io_error(self.path, "read"))?;
            if skipped != length {
                return Err(invalid(self.path, "the file ends early (truncated)"));
            }
        }
        Ok(())
    }

    fn next_record(&mut self) -> Result<Record, StoreError> {
        let mut tag = [0];
        self.take(&mut tag)?;
        match tag[0] {
            TABLE_TAG => {
                let mut name_length = [0];
                self.take(&mut name_length)?;
                let mut name = vec![0; usize::from(name_length[0])];
                self.take(&mut name)?;
                let name = String::from_utf8(name)
                    .map_err(|_| invalid(self.path, "a table name is not UTF-8"))?;
                let rows = self.u64()?;
                self.tables += 1;
                Ok(Record::Table { name, rows })
            }
            END_TAG => self.finish().map(|()| Record::End),
            other => Err(invalid(self.path, format!("unknown record tag {other}"))),
        }
    }

    /// Checks the end record's table count and checksum, and that nothing follows.
    fn finish(&mut self) -> Result<(), StoreError> {
        let tables = self.u32()?;
        if tables != self.tables {
            return Err(invalid(
                self.path,
                format!(
                    "the end says {tables} tables, the file holds {}",
                    self.tables
                ),
            ));
        }
        let expected = self.input.crc.clone().finalize();
        let checksum = self.u32()?;
        if checksum != expected {
            return Err(invalid(self.path, "checksum mismatch (corrupt file)"));
        }
        let mut rest = [0];
        let more = self
            .input
            .read(&mut rest)
            .map_err(io_error(self.path, "read"))?;
        if more != 0 {
            return Err(invalid(self.path, "data after the end record"));
        }
        Ok(())
    }
}

/// Reads the meta in the header of the snapshot file at `path`.
pub(crate) fn read_meta(file: &mut File, path: &Path) -> Result<Meta, StoreError> {
    SnapshotReader::open(file, path, HEADER_BUFFER_BYTES).map(|(_, meta)| meta)
}

/// Reads the whole file once without loading anything: its structure, its tables (each a
/// state table, at most once) and its checksum are sound, and its meta is `meta`.
fn verify(file: &mut File, path: &Path, meta: &Meta) -> Result<(), StoreError> {
    let (mut reader, found) = SnapshotReader::open(file, path, BUFFER_BYTES)?;
    if found != *meta {
        return Err(invalid(
            path,
            format!("the file holds snapshot {found}, not {meta}"),
        ));
    }
    let mut seen: Vec<String> = Vec::new();
    loop {
        match reader.next_record()? {
            Record::Table { name, rows } => {
                if !is_state_table(&name) || seen.contains(&name) {
                    return Err(invalid(path, format!("unexpected table {name}")));
                }
                for _ in 0..rows {
                    reader.skip_row()?;
                }
                seen.push(name);
            }
            Record::End => return Ok(()),
        }
    }
}

fn load_rows<K: Key + 'static, V: Value + 'static>(
    txn: &WriteTransaction,
    definition: TableDefinition<K, V>,
    rows: u64,
    reader: &mut SnapshotReader,
) -> Result<(), StoreError> {
    let mut table = txn.open_table(definition)?;
    let (mut key, mut value) = (Vec::new(), Vec::new());
    for _ in 0..rows {
        reader.row(&mut key, &mut value)?;
        table.insert(K::from_bytes(&key), V::from_bytes(&value))?;
    }
    Ok(())
}

/// Replaces every state table in `txn` with the rows of the snapshot file, which must hold
/// the snapshot `meta`. The file is verified whole (structure and checksum) before anything
/// is written, so a truncated or corrupt file is an error that leaves `txn` untouched.
pub(crate) fn load_snapshot(
    file: &mut File,
    path: &Path,
    meta: &Meta,
    txn: &WriteTransaction,
) -> Result<(), StoreError> {
    verify(file, path, meta)?;
    macro_rules! clear {
        ($table:ident) => {
            txn.delete_table($table)?;
            txn.open_table($table)?;
        };
    }
    for_each_state_table!(clear);
    let (mut reader, _) = SnapshotReader::open(file, path, BUFFER_BYTES)?;
    while let Record::Table { name, rows } = reader.next_record()? {
        macro_rules! load {
            ($table:ident) => {
                if name == $table.name() {
                    load_rows(txn, $table, rows, &mut reader)?;
                    continue;
                }
            };
        }
        for_each_state_table!(load);
        return Err(invalid(path, format!("unexpected table {name}")));
    }
    Ok(())
}

// ---- The files beside the store -------------------------------------------------------

/// A random number of this process, in the names of its temporary files, so that files
/// left by an earlier process can be told apart and removed.
fn process_nonce() -> u64 {
    static NONCE: OnceLock<u64> = OnceLock::new();
    *NONCE.get_or_init(|| {
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
    })
}

/// The current snapshot file and its temporary siblings (`<name>.building-…`,
/// `<name>.receiving-…`, `<name>.installing-…`).
#[derive(Debug)]
pub(crate) struct SnapshotFiles {
    current: PathBuf,
    /// Held while the current file is replaced, so that an older snapshot built
    /// concurrently never replaces a newer installed one.
    replacing: Mutex<()>,
    tidied: AtomicBool,
    counter: AtomicU64,
}

/// A state-machine log id, for comparing snapshots.
type LastLogId = Option<RaftLogId>;

impl SnapshotFiles {
    pub(crate) fn new(current: PathBuf) -> SnapshotFiles {
        SnapshotFiles {
            current,
            replacing: Mutex::new(()),
            tidied: AtomicBool::new(false),
            counter: AtomicU64::new(0),
        }
    }

    fn file_name(&self) -> String {
        self.current
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|| "snapshot".to_owned())
    }

    fn sibling(&self, name: String) -> PathBuf {
        self.current.with_file_name(name)
    }

    /// A new, unused temporary path of this process for `kind` (building or receiving).
    pub(crate) fn temporary(&self, kind: &str) -> PathBuf {
        let number = self.counter.fetch_add(1, Ordering::Relaxed);
        self.sibling(format!(
            "{}.{kind}-{:016x}-{number}",
            self.file_name(),
            process_nonce()
        ))
    }

    /// Where a received snapshot waits while its install commits.
    pub(crate) fn installing(&self) -> PathBuf {
        self.sibling(format!(
            "{}.installing-{:016x}",
            self.file_name(),
            process_nonce()
        ))
    }

    fn sync_directory(&self) -> Result<(), StoreError> {
        let directory = match self.current.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        File::open(directory)
            .and_then(|d| d.sync_all())
            .map_err(io_error(directory, "sync"))
    }

    /// The last log id of the current snapshot; none when there is none or it is unreadable.
    fn current_last_log_id(&self) -> Result<Option<LastLogId>, StoreError> {
        match self.open_current()? {
            Some((_, meta)) => Ok(Some(meta.last_log_id)),
            None => Ok(None),
        }
    }

    /// Renames the fsynced snapshot at `temporary` (of `last_log_id`) over the current one,
    /// unless the current one is newer; then the temporary file is removed instead. Answers
    /// whether it became current.
    pub(crate) fn keep(
        &self,
        temporary: &Path,
        last_log_id: LastLogId,
    ) -> Result<bool, StoreError> {
        let _replacing = self
            .replacing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self
            .current_last_log_id()?
            .is_some_and(|current| current > last_log_id)
        {
            remove_quietly(temporary);
            return Ok(false);
        }
        std::fs::rename(temporary, &self.current).map_err(io_error(temporary, "rename"))?;
        self.sync_directory()?;
        Ok(true)
    }

    /// The received snapshot in `file` as a durable file of ours, with its path and guard:
    /// the file itself when it was received into `received`, else a copy.
    pub(crate) fn make_durable(
        &self,
        mut file: File,
        received: RemoveOnDrop,
    ) -> Result<(File, PathBuf, RemoveOnDrop), StoreError> {
        let (file, path, received) = match received.path() {
            Some(path) => (file, path.to_owned(), received),
            None => {
                let path = self.temporary("receiving");
                let guard = RemoveOnDrop::new(path.clone());
                let mut copy = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(io_error(&path, "create"))?;
                file.seek(SeekFrom::Start(0))
                    .and_then(|_| io::copy(&mut file, &mut copy))
                    .map_err(io_error(&path, "copy into"))?;
                (copy, path, guard)
            }
        };
        file.sync_all().map_err(io_error(&path, "sync"))?;
        Ok((file, path, received))
    }

    /// Moves the received file at `path` to its installing name (durably) before its
    /// install commits; its `guard` follows it.
    pub(crate) fn stage(
        &self,
        path: &Path,
        guard: &mut RemoveOnDrop,
    ) -> Result<PathBuf, StoreError> {
        let installing = self.installing();
        std::fs::rename(path, &installing).map_err(io_error(path, "rename"))?;
        guard.0 = Some(installing.clone());
        self.sync_directory()?;
        Ok(installing)
    }

    /// Opens the current snapshot with its meta, positioned at its start. A file that is
    /// not a snapshot this build reads (an older format, damage) counts as none: the state
    /// machine builds a new one when openraft needs it.
    pub(crate) fn open_current(&self) -> Result<Option<(File, Meta)>, StoreError> {
        let path = &self.current;
        let mut file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(path, "open")(e)),
        };
        match read_meta(&mut file, path) {
            Ok(meta) => {
                file.seek(SeekFrom::Start(0))
                    .map_err(io_error(path, "seek"))?;
                Ok(Some((file, meta)))
            }
            Err(error @ StoreError::SnapshotInvalid { .. }) => {
                tracing::warn!(%error, "ignoring the current snapshot file");
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }

    /// Once per process, removes what an earlier process left behind: temporary files of
    /// snapshots being built or received, and a received snapshot whose install may not
    /// have committed: it becomes current if the state machine reached its last log id
    /// (`applied`), and is removed otherwise.
    pub(crate) fn tidy_once(
        &self,
        applied: impl FnOnce() -> Result<LastLogId, StoreError>,
    ) -> Result<(), StoreError> {
        if self.tidied.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let applied = applied()?;
        let Some(directory) = self.current.parent() else {
            return Ok(());
        };
        let directory = if directory.as_os_str().is_empty() {
            Path::new(".")
        } else {
            directory
        };
        let entries = match std::fs::read_dir(directory) {
            Ok(entries) => entries,
            Err(e) => return Err(io_error(directory, "list")(e)),
        };
        let prefix = format!("{}.", self.file_name());
        let ours = format!("-{:016x}", process_nonce());
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(suffix) = name.strip_prefix(&prefix) else {
                continue;
            };
            let path = entry.path();
            if suffix.starts_with("installing-") && !suffix.ends_with(&ours) {
                self.recover_install(&path, applied)?;
            } else if suffix == "partial"
                || ((suffix.starts_with("building-") || suffix.starts_with("receiving-"))
                    && !suffix.contains(&ours))
            {
                remove_quietly(&path);
            }
        }
        Ok(())
    }

    fn recover_install(&self, path: &Path, applied: LastLogId) -> Result<(), StoreError> {
        let meta = File::open(path)
            .map_err(io_error(path, "open"))
            .and_then(|mut file| read_meta(&mut file, path));
        match meta {
            Ok(meta) if meta.last_log_id <= applied => {
                tracing::info!(snapshot = %meta, "keeping a snapshot installed before a restart");
                self.keep(path, meta.last_log_id)?;
            }
            _ => remove_quietly(path),
        }
        Ok(())
    }
}

fn remove_quietly(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => {
            tracing::warn!(%error, path = %path.display(), "cannot remove a snapshot file");
        }
    }
}

/// Removes a temporary file when dropped, unless [`disarm`](RemoveOnDrop::disarm)ed: a file
/// being received that openraft gives up, a file whose install failed.
#[derive(Debug, Default)]
pub(crate) struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    pub(crate) fn new(path: PathBuf) -> RemoveOnDrop {
        RemoveOnDrop(Some(path))
    }

    pub(crate) fn path(&self) -> Option<&Path> {
        self.0.as_deref()
    }

    /// The file was moved or kept: nothing to remove any more.
    pub(crate) fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let Some(path) = self.0.take() else {
            return;
        };
        // Off the async runtime when there is one.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn_blocking(move || remove_quietly(&path));
            }
            Err(_) => remove_quietly(&path),
        }
    }
}

/// A snapshot file as openraft handles it: read in chunks to send a snapshot, or written
/// with the chunks of one being received (then removed if it is never installed).
#[derive(Debug)]
pub struct SnapshotFile {
    file: tokio::fs::File,
    received: RemoveOnDrop,
}

impl SnapshotFile {
    /// A snapshot file to read, positioned at its start.
    pub(crate) fn reading(file: File) -> SnapshotFile {
        SnapshotFile {
            file: tokio::fs::File::from_std(file),
            received: RemoveOnDrop::default(),
        }
    }

    /// A new file at `path` to write received chunks into.
    pub(crate) async fn receiving(path: PathBuf) -> Result<SnapshotFile, StoreError> {
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(io_error(&path, "create"))?;
        Ok(SnapshotFile {
            file,
            received: RemoveOnDrop::new(path),
        })
    }

    /// The file, once every write has finished, and the guard of a received file.
    pub(crate) async fn into_parts(self) -> (File, RemoveOnDrop) {
        (self.file.into_std().await, self.received)
    }
}

impl tokio::io::AsyncRead for SnapshotFile {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.file).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for SnapshotFile {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.file).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.file).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.file).poll_shutdown(cx)
    }
}

impl tokio::io::AsyncSeek for SnapshotFile {
    fn start_seek(mut self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        Pin::new(&mut self.file).start_seek(position)
    }

    fn poll_complete(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Pin::new(&mut self.file).poll_complete(cx)
    }
}

#[cfg(test)]
mod tests {
    use openraft::testing::log_id;
    use redb::ReadableDatabase;

    use super::*;
    use crate::apply::tests::{TestStore, category, product};

    fn meta_at(index: u64) -> Meta {
        Meta {
            last_log_id: Some(log_id(1, 1, index)),
            last_membership: Default::default(),
            snapshot_id: format!("at-{index}"),
        }
    }

    #[test]
    fn every_table_of_a_store_is_state_or_raft_bookkeeping() {
        assert_eq!(RAFT_TABLES, [RAFT_LOG.name(), RAFT_STATE.name()]);
        // A fresh store has every table (they are created at open): each one must be in
        // `for_each_state_table!` (and so in snapshots and the digest), or be raft's own.
        let store = TestStore::new();
        let txn = store.store.db().begin_read().expect("read");
        let names: Vec<String> = txn
            .list_tables()
            .expect("tables")
            .map(|t| t.name().to_owned())
            .collect();
        assert!(names.len() > RAFT_TABLES.len(), "{names:?}");
        for name in &names {
            assert!(
                is_state_table(name) != RAFT_TABLES.contains(&name.as_str()),
                "table {name} is neither in for_each_state_table! nor one of RAFT_TABLES"
            );
        }
        // And every state table exists in the store.
        let mut listed = 0;
        macro_rules! count {
            ($table:ident) => {
                assert!(
                    names.iter().any(|n| n == $table.name()),
                    "{}",
                    $table.name()
                );
                listed += 1;
            };
        }
        for_each_state_table!(count);
        assert_eq!(listed + RAFT_TABLES.len(), names.len());
    }

    /// A store with a little data, and a directory for snapshot files.
    fn setup() -> (TestStore, tempfile::TempDir) {
        let store = TestStore::new();
        store.apply_all(&[category("Rock"), product("Guitar", 3, 100, 1)]);
        (store, tempfile::tempdir().expect("temp dir"))
    }

    fn write_at(store: &TestStore, path: &Path, index: u64) {
        let txn = store.store.db().begin_read().expect("read");
        write_snapshot(path, &txn, &meta_at(index)).expect("write");
    }

    fn current_index(files: &SnapshotFiles) -> Option<u64> {
        let (_, meta) = files.open_current().expect("open")?;
        meta.last_log_id.map(|id| id.index)
    }

    #[test]
    fn a_written_snapshot_loads_into_another_store_with_the_same_rows() {
        let (source, dir) = setup();
        let path = dir.path().join("snapshot.bin");
        write_at(&source, &path, 3);
        let target = TestStore::new();
        target.apply(category("Other")).expect("a category");
        let txn = target.store.db().begin_write().expect("write");
        let mut file = File::open(&path).expect("open");
        load_snapshot(&mut file, &path, &meta_at(3), &txn).expect("load");
        txn.commit().expect("commit");
        assert_eq!(target.digest(), source.digest());
    }

    #[test]
    fn an_older_snapshot_never_replaces_a_newer_one() {
        let (store, dir) = setup();
        let files = SnapshotFiles::new(dir.path().join("snapshot.bin"));
        let newer = files.temporary("receiving");
        write_at(&store, &newer, 9);
        assert!(files.keep(&newer, Some(log_id(1, 1, 9))).expect("keep"));
        // Built from a state before the install, finished after it.
        let older = files.temporary("building");
        write_at(&store, &older, 4);
        assert!(!files.keep(&older, Some(log_id(1, 1, 4))).expect("keep"));
        assert_eq!(current_index(&files), Some(9));
        assert!(!older.exists(), "the older file is removed");
        let next = files.temporary("building");
        write_at(&store, &next, 12);
        assert!(files.keep(&next, Some(log_id(1, 1, 12))).expect("keep"));
        assert_eq!(current_index(&files), Some(12));
    }

    #[test]
    fn a_file_that_is_not_a_snapshot_counts_as_no_snapshot() {
        let (_store, dir) = setup();
        let files = SnapshotFiles::new(dir.path().join("snapshot.bin"));
        assert!(files.open_current().expect("open").is_none());
        // What the previous, in-memory format looked like to this reader: no magic.
        std::fs::write(dir.path().join("snapshot.bin"), b"\x00\x01bincode").expect("write");
        assert!(files.open_current().expect("open").is_none());
    }

    #[test]
    fn a_restart_keeps_an_install_that_committed_and_removes_leftovers() {
        let (store, dir) = setup();
        let current = dir.path().join("snapshot.bin");
        let earlier = |name: &str| dir.path().join(format!("snapshot.bin.{name}"));
        // Left by an earlier process: an install of index 5 that committed (the state
        // machine is at 6 now), files being built or received, the old format's temporary.
        write_at(&store, &earlier("installing-00000000000000aa"), 5);
        for name in [
            "building-00000000000000aa-0",
            "receiving-00000000000000aa-3",
            "partial",
        ] {
            std::fs::write(earlier(name), b"half").expect("write");
        }
        let files = SnapshotFiles::new(current.clone());
        let ours = files.temporary("receiving");
        std::fs::write(&ours, b"arriving").expect("write");
        files.tidy_once(|| Ok(Some(log_id(1, 1, 6)))).expect("tidy");
        assert_eq!(current_index(&files), Some(5));
        let mut left: Vec<PathBuf> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|entry| entry.expect("entry").path())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec![current, ours],
            "only this process's file is left"
        );

        // An install that did not commit (the state machine is still at 2) is dropped.
        let (store, dir) = setup();
        let staged = dir.path().join("snapshot.bin.installing-00000000000000bb");
        write_at(&store, &staged, 5);
        let files = SnapshotFiles::new(dir.path().join("snapshot.bin"));
        files.tidy_once(|| Ok(Some(log_id(1, 1, 2)))).expect("tidy");
        assert_eq!(current_index(&files), None);
        assert!(!staged.exists());
    }
}
