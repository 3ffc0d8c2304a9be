//! The embedded key-value stores [`crate::LogStore`] was measured against, behind the same
//! [`Store`] trait: redb (a copy-on-write B-tree) and fjall (an LSM tree with a journal).
//! Each buffers a batch and commits it with one durable transaction, as the log does.

use bytes::Bytes;
use scale0_proto::journal::{JournalOp, Store};
use std::io;
use std::path::Path;

fn other(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::other(e)
}

/// Both stores buffer a batch as journal ops and write it in one transaction at commit.
fn buffer_put(buf: &mut Vec<JournalOp>, key: u64, value: &[u8]) -> io::Result<()> {
    buf.push(JournalOp::Put {
        key,
        value: Bytes::copy_from_slice(value),
    });
    Ok(())
}

fn buffer_delete(buf: &mut Vec<JournalOp>, key: u64) -> io::Result<()> {
    buf.push(JournalOp::Delete { key });
    Ok(())
}

const TABLE: redb::TableDefinition<'_, u64, &[u8]> = redb::TableDefinition::new("requests");

/// redb, one write transaction (durability `Immediate`) per commit.
pub struct RedbStore {
    db: redb::Database,
    buf: Vec<JournalOp>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore").finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens or creates `dir/requests.redb`.
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let db = redb::Database::create(dir.join("requests.redb")).map_err(other)?;
        let tx = db.begin_write().map_err(other)?;
        tx.open_table(TABLE).map_err(other)?;
        tx.commit().map_err(other)?;
        Ok(Self {
            db,
            buf: Vec::new(),
        })
    }
}

impl Store for RedbStore {
    fn load(&mut self) -> io::Result<Vec<(u64, Bytes)>> {
        use redb::{ReadableDatabase, ReadableTable};
        let tx = self.db.begin_read().map_err(other)?;
        let table = tx.open_table(TABLE).map_err(other)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(other)? {
            let (k, v) = row.map_err(other)?;
            out.push((k.value(), Bytes::copy_from_slice(v.value())));
        }
        Ok(out)
    }

    fn put(&mut self, key: u64, value: &[u8]) -> io::Result<()> {
        buffer_put(&mut self.buf, key, value)
    }

    fn delete(&mut self, key: u64) -> io::Result<()> {
        buffer_delete(&mut self.buf, key)
    }

    fn commit(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let tx = self.db.begin_write().map_err(other)?;
        {
            let mut table = tx.open_table(TABLE).map_err(other)?;
            for op in self.buf.drain(..) {
                match op {
                    JournalOp::Put { key, value } => {
                        table.insert(key, value.as_ref()).map_err(other)?;
                    }
                    JournalOp::Delete { key } => {
                        table.remove(key).map_err(other)?;
                    }
                }
            }
        }
        tx.commit().map_err(other)
    }
}

/// fjall, one write batch per commit followed by a `SyncAll` persist of its journal.
pub struct FjallStore {
    db: fjall::Database,
    items: fjall::Keyspace,
    buf: Vec<JournalOp>,
}

impl std::fmt::Debug for FjallStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FjallStore").finish_non_exhaustive()
    }
}

impl FjallStore {
    /// Opens or creates a fjall database in `dir`.
    pub fn open(dir: &Path) -> io::Result<Self> {
        let db = fjall::Database::builder(dir)
            .manual_journal_persist(true)
            .open()
            .map_err(other)?;
        let items = db
            .keyspace("requests", fjall::KeyspaceCreateOptions::default)
            .map_err(other)?;
        Ok(Self {
            db,
            items,
            buf: Vec::new(),
        })
    }
}

impl Store for FjallStore {
    fn load(&mut self) -> io::Result<Vec<(u64, Bytes)>> {
        let mut out = Vec::new();
        for guard in self.items.iter() {
            let (k, v) = guard.into_inner().map_err(other)?;
            let mut key = [0u8; 8];
            if k.len() == 8 {
                key.copy_from_slice(&k);
            }
            out.push((u64::from_be_bytes(key), Bytes::copy_from_slice(&v)));
        }
        Ok(out)
    }

    fn put(&mut self, key: u64, value: &[u8]) -> io::Result<()> {
        buffer_put(&mut self.buf, key, value)
    }

    fn delete(&mut self, key: u64) -> io::Result<()> {
        buffer_delete(&mut self.buf, key)
    }

    fn commit(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let mut batch = self.db.batch();
        for op in self.buf.drain(..) {
            match op {
                // Big-endian keys sort in acceptance order.
                JournalOp::Put { key, value } => {
                    batch.insert(&self.items, key.to_be_bytes(), value.as_ref());
                }
                JournalOp::Delete { key } => batch.remove(&self.items, key.to_be_bytes()),
            }
        }
        batch.commit().map_err(other)?;
        self.db.persist(fjall::PersistMode::SyncAll).map_err(other)
    }
}
