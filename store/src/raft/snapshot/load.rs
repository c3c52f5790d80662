//! Reading a snapshot file: its header, a check of the whole file, and its rows loaded
//! into a write transaction.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use redb::{Key, TableDefinition, TableHandle, Value, WriteTransaction};

use super::{
    BUFFER_BYTES, END_TAG, FORMAT_VERSION, HEADER_BUFFER_BYTES, MAGIC, Meta, TABLE_TAG, invalid,
    io_error,
};
use crate::error::StoreError;
use crate::tables::*;

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
    /// The schema version of the rows: [`SCHEMA_VERSION`] or the one before.
    schema: u32,
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
            schema: SCHEMA_VERSION,
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
        if schema != SCHEMA_VERSION && schema != PREVIOUS_SCHEMA_VERSION {
            return Err(invalid(
                path,
                format!("rows of schema version {schema}, this build has {SCHEMA_VERSION}"),
            ));
        }
        reader.schema = schema;
        let meta_length = reader.u32()?;
        let mut meta = Vec::new();
        reader.field(meta_length, &mut meta)?;
        let meta = decode(&meta).map_err(|e| invalid(path, format!("bad meta: {e}")))?;
        Ok((reader, meta))
    }

    /// Whether the table `name` is one that the file's (older) schema had and this one
    /// dropped: its rows are passed over.
    fn is_dropped(&self, name: &str) -> bool {
        self.schema == PREVIOUS_SCHEMA_VERSION && is_dropped_table(name)
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
/// state table or one its older schema dropped, at most once) and its checksum are sound,
/// and its meta is `meta`.
fn verify(file: &mut File, path: &Path, meta: &Meta) -> Result<(), StoreError> {
    let (mut reader, found) = SnapshotReader::open(file, path, BUFFER_BYTES)?;
    if found != *meta {
        return Err(invalid(
            path,
            format!("the file holds snapshot {found}, not {meta}"),
        ));
    }
    read_tables(&mut reader, None)
}

/// Reads the whole file once as [`verify`] does, whatever snapshot it holds: its meta and
/// the digest of the state it holds (as `StoreReader::digest` of a store loaded from it).
pub(crate) fn verify_with_digest(file: &mut File, path: &Path) -> Result<(Meta, u64), StoreError> {
    let (mut reader, meta) = SnapshotReader::open(file, path, BUFFER_BYTES)?;
    let mut digest = StateDigest::default();
    read_tables(&mut reader, Some(&mut digest))?;
    Ok((meta, digest.finish()))
}

/// Reads every table record up to and with the end record, rows passed over or, with
/// `digest`, hashed (but those of dropped tables).
fn read_tables(
    reader: &mut SnapshotReader,
    mut digest: Option<&mut StateDigest>,
) -> Result<(), StoreError> {
    let mut seen: Vec<String> = Vec::new();
    let (mut key, mut value) = (Vec::new(), Vec::new());
    loop {
        match reader.next_record()? {
            Record::Table { name, rows } => {
                let dropped = reader.is_dropped(&name);
                let known = is_state_table(&name) || dropped;
                if !known || seen.contains(&name) {
                    return Err(invalid(reader.path, format!("unexpected table {name}")));
                }
                match digest.as_deref_mut() {
                    Some(digest) if !dropped => {
                        digest.table(&name, rows)?;
                        for _ in 0..rows {
                            reader.row(&mut key, &mut value)?;
                            digest.row(&key, &value)?;
                        }
                    }
                    _ => {
                        for _ in 0..rows {
                            reader.skip_row()?;
                        }
                    }
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
/// the snapshot `meta`. Rows of a table that the file's older schema had and this one
/// dropped are passed over. The file is verified whole (structure and checksum) before anything
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
        if reader.is_dropped(&name) {
            for _ in 0..rows {
                reader.skip_row()?;
            }
            continue;
        }
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
