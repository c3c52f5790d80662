//! Writing a snapshot file: every state table of one read transaction, row by row.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

use redb::ReadTransaction;

use super::{BUFFER_BYTES, END_TAG, FORMAT_VERSION, MAGIC, Meta, TABLE_TAG, invalid, io_error};
use crate::error::StoreError;
use crate::tables::{SCHEMA_VERSION, StateVisitor, encode, visit_state};

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

/// Bytes written to a snapshot file between two `fdatasync`s: the file reaches the disk as
/// it is written instead of in one flush of hundreds of MiB at the end, which held the
/// log's own fsyncs (every acknowledged write waits for one) behind it. Small, because
/// a log fsync (a journal commit) also waits for the snapshot's dirty pages written so far.
const SYNC_EVERY_BYTES: u64 = 1024 * 1024;

/// At most this many bytes a second go into a snapshot file: a snapshot of a few hundred
/// MiB then takes seconds longer, but its reads, writes and syncs no longer crowd out the
/// log's fsyncs and the API's threads while it is built.
const WRITE_BYTES_PER_SEC: u64 = 32 * 1024 * 1024;

/// A file that is synced every [`SYNC_EVERY_BYTES`] written, written at most at
/// [`WRITE_BYTES_PER_SEC`] (measured from `started`).
struct PacedFile {
    file: File,
    unsynced: u64,
    written: u64,
    started: std::time::Instant,
}

impl Write for PacedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.file.write(buf)?;
        self.unsynced += written as u64;
        self.written += written as u64;
        if self.unsynced >= SYNC_EVERY_BYTES {
            self.file.sync_data()?;
            self.unsynced = 0;
            let due = std::time::Duration::from_secs_f64(
                self.written as f64 / WRITE_BYTES_PER_SEC as f64,
            );
            if let Some(early) = due.checked_sub(self.started.elapsed()) {
                std::thread::sleep(early);
            }
        }
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
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
    let paced = PacedFile {
        file,
        unsynced: 0,
        written: 0,
        started: std::time::Instant::now(),
    };
    let out = write_state(
        BufWriter::with_capacity(BUFFER_BYTES, paced),
        path,
        txn,
        meta,
    )?;
    let PacedFile { mut file, .. } = out
        .into_inner()
        .map_err(|e| io_error(path, "write")(e.into_error()))?;
    file.sync_all().map_err(io_error(path, "sync"))?;
    file.seek(SeekFrom::Start(0))
        .map_err(io_error(path, "seek"))?;
    Ok(file)
}

/// Writes the snapshot of `txn`'s state with `meta` in the file layout to `out` (flushed),
/// and gives `out` back. `path` names the destination in errors.
pub(crate) fn write_state<W: Write>(
    out: W,
    path: &Path,
    txn: &ReadTransaction,
    meta: &Meta,
) -> Result<W, StoreError> {
    let mut writer = RowWriter {
        out: ChecksumWriter {
            inner: out,
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
        .and_then(|()| inner.flush())
        .map_err(io_error(path, "write"))?;
    Ok(inner)
}
