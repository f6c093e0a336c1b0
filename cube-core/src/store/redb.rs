//! A [`Store`] kept in one redb file, so that a manager or worker finds its state again
//! after a restart or a crash.
//!
//! [`RedbStore`] keeps `<data dir>/cube.redb` open for its whole life. Each table maps a
//! key to the record's JSON bytes: tasks and worker task records by task id, nodes by node
//! id, and events by their sequence number. The manager and the workers call it through the
//! [`Store`] trait only, and never see redb types.

use std::fmt::Display;
use std::path::{Path, PathBuf};

use log::debug;
use redb::{
    Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, TableDefinition,
    WriteTransaction,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Batch, NodeRecord, Operation, Store, StoreError};
use crate::event::TaskEvent;
use crate::ids::TaskId;
use crate::task::Task;
use crate::worker_task::WorkerTask;

/// Name of the database file inside the data directory.
pub const STORE_FILE_NAME: &str = "cube.redb";

// NOTE: values are JSON bytes, never redb's `Option<&str>`-style types, whose encoding
// changed in redb 5.0. String keys are the ids' `Display` forms, whose byte order is the
// order of `TaskId` and `NodeId`, so scans return records in id order.
const TASKS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("tasks");
const EVENTS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("events");
const NODES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("nodes");
const WORKER_TASKS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("worker_tasks");

/// A [`Store`] in a redb database file, durable once [`Store::commit`] returns.
///
/// # Guarantees
///
/// Each commit is one redb write transaction with [`Durability::Immediate`], so the batch
/// is on disk (fsynced) when `commit` returns `Ok`. A commit that returns an error, or that
/// a crash cuts short, stores none of the batch. Event sequence numbers are assigned
/// inside that transaction, continuing after the highest stored one, so they stay
/// gap-free across restarts. A record that no longer decodes is reported as
/// [`StoreError::Corrupt`], never skipped.
///
/// # Caveats
///
/// `commit` blocks on fsync, and reads block on disk I/O. Callers on an actor's thread
/// should run the store in a `SyncArbiter` actor or on another thread, or every actor
/// sharing that thread stalls for the duration of each commit.
///
/// Only one `RedbStore` can have a data directory open at a time, in this process or any
/// other: redb holds byte-range locks on the file, and [`RedbStore::open`] returns
/// [`StoreError::Locked`] while another handle holds them. The locks are released when the
/// store is dropped or its process dies.
///
/// A file altered outside redb may make [`RedbStore::open`] panic, because redb 5 trusts a
/// cleanly closed file and integrity checking on open, which reads the whole file, is off.
#[derive(Debug)]
pub struct RedbStore {
    database: Database,
    path: PathBuf,
}

impl RedbStore {
    /// Opens the store in `dir`, creating the directory and the database file if missing.
    ///
    /// # Errors
    ///
    /// Returns [`StoreError::Locked`] when another process, or another `RedbStore` in this
    /// process, has `dir` open, and [`StoreError::Open`] when the directory or the file
    /// cannot be created or read.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| open_error(dir, source))?;
        let path = dir.join(STORE_FILE_NAME);
        let database = Database::create(&path).map_err(|source| database_error(dir, source))?;
        Self::init(dir, database)
    }

    /// Opens the store in `dir` over `backend`, so that tests can inject storage failures.
    /// The backend must read and write the file `dir/cube.redb`.
    #[cfg(test)]
    pub(crate) fn open_with_backend(
        dir: &Path,
        backend: impl redb::StorageBackend,
    ) -> Result<Self, StoreError> {
        let database = Database::builder()
            .create_with_backend(backend)
            .map_err(|source| database_error(dir, source))?;
        Self::init(dir, database)
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the tables that are missing, so that read transactions can open every one.
    fn init(dir: &Path, database: Database) -> Result<Self, StoreError> {
        let txn = database
            .begin_write()
            .map_err(|source| open_error(dir, source))?;
        txn.open_table(TASKS)
            .map_err(|source| open_error(dir, source))?;
        txn.open_table(EVENTS)
            .map_err(|source| open_error(dir, source))?;
        txn.open_table(NODES)
            .map_err(|source| open_error(dir, source))?;
        txn.open_table(WORKER_TASKS)
            .map_err(|source| open_error(dir, source))?;
        txn.commit().map_err(|source| open_error(dir, source))?;

        let path = dir.join(STORE_FILE_NAME);
        debug!("store opened path={}", path.display());
        Ok(Self { database, path })
    }

    /// Decodes every record of `table`, in key order.
    fn scan<T: DeserializeOwned>(
        &self,
        table: TableDefinition<'_, &str, &[u8]>,
        kind: &'static str,
        action: &'static str,
    ) -> Result<Vec<T>, StoreError> {
        let txn = self
            .database
            .begin_read()
            .map_err(|e| io_error(action, e))?;
        let table = txn.open_table(table).map_err(|e| io_error(action, e))?;
        let mut records = Vec::new();
        for entry in table.iter().map_err(|e| io_error(action, e))? {
            let (key, value) = entry.map_err(|e| io_error(action, e))?;
            records.push(decode(kind, key.value(), value.value())?);
        }
        Ok(records)
    }

    /// Applies `batch` inside `txn` and returns the sequence numbers given to its events.
    fn apply(txn: &WriteTransaction, batch: Batch) -> Result<Vec<u64>, StoreError> {
        let mut tasks = txn.open_table(TASKS).map_err(commit_error)?;
        let mut events = txn.open_table(EVENTS).map_err(commit_error)?;
        let mut nodes = txn.open_table(NODES).map_err(commit_error)?;
        let mut worker_tasks = txn.open_table(WORKER_TASKS).map_err(commit_error)?;

        // Read inside the write transaction, so no other commit can take the same number.
        let last_seq = events
            .last()
            .map_err(commit_error)?
            .map(|(key, _)| key.value());
        let mut next_seq = last_seq.map_or(1, |seq| seq + 1);

        let mut seqs = Vec::new();
        for operation in batch.operations {
            match operation {
                Operation::PutTask(task) => {
                    let key = task.id.to_string();
                    let value = encode("task", &key, &task)?;
                    tasks
                        .insert(key.as_str(), value.as_slice())
                        .map_err(commit_error)?;
                }
                Operation::AppendEvent(mut event) => {
                    event.seq = next_seq;
                    let value = encode("event", next_seq, &event)?;
                    events
                        .insert(next_seq, value.as_slice())
                        .map_err(commit_error)?;
                    seqs.push(next_seq);
                    next_seq += 1;
                }
                Operation::PutNode(node) => {
                    let value = encode("node", &node.id, &node)?;
                    nodes
                        .insert(node.id.as_str(), value.as_slice())
                        .map_err(commit_error)?;
                }
                Operation::DeleteNode(id) => {
                    nodes.remove(id.as_str()).map_err(commit_error)?;
                }
                Operation::PutWorkerTask(record) => {
                    let key = record.task_id.to_string();
                    let value = encode("worker task", &key, &record)?;
                    worker_tasks
                        .insert(key.as_str(), value.as_slice())
                        .map_err(commit_error)?;
                }
                Operation::DeleteWorkerTask(id) => {
                    worker_tasks
                        .remove(id.to_string().as_str())
                        .map_err(commit_error)?;
                }
            }
        }
        Ok(seqs)
    }
}

impl Store for RedbStore {
    fn tasks(&self) -> Result<Vec<Task>, StoreError> {
        self.scan(TASKS, "task", "read of tasks")
    }

    fn task(&self, id: TaskId) -> Result<Option<Task>, StoreError> {
        const ACTION: &str = "read of a task";
        let txn = self
            .database
            .begin_read()
            .map_err(|e| io_error(ACTION, e))?;
        let table = txn.open_table(TASKS).map_err(|e| io_error(ACTION, e))?;
        let key = id.to_string();
        let value = table.get(key.as_str()).map_err(|e| io_error(ACTION, e))?;
        value
            .map(|value| decode("task", &key, value.value()))
            .transpose()
    }

    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<TaskEvent>, StoreError> {
        const ACTION: &str = "read of events";
        let txn = self
            .database
            .begin_read()
            .map_err(|e| io_error(ACTION, e))?;
        let table = txn.open_table(EVENTS).map_err(|e| io_error(ACTION, e))?;
        let range = table
            .range((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
            .map_err(|e| io_error(ACTION, e))?;
        let mut events = Vec::new();
        for entry in range.take(limit) {
            let (key, value) = entry.map_err(|e| io_error(ACTION, e))?;
            events.push(decode("event", key.value(), value.value())?);
        }
        Ok(events)
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        self.scan(NODES, "node", "read of nodes")
    }

    fn worker_tasks(&self) -> Result<Vec<WorkerTask>, StoreError> {
        self.scan(WORKER_TASKS, "worker task", "read of worker tasks")
    }

    fn commit(&mut self, batch: Batch) -> Result<Vec<u64>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut txn = self.database.begin_write().map_err(commit_error)?;
        // Immediate is redb's default; set it so that a changed default cannot weaken it.
        txn.set_durability(Durability::Immediate)
            .map_err(commit_error)?;
        // On an error, dropping `txn` aborts it, so nothing of the batch is stored.
        let seqs = Self::apply(&txn, batch)?;
        txn.commit().map_err(commit_error)?;
        Ok(seqs)
    }
}

fn encode(
    kind: &'static str,
    key: impl Display,
    record: &impl Serialize,
) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(record).map_err(|source| StoreError::Encode {
        kind,
        key: key.to_string(),
        source,
    })
}

fn decode<T: DeserializeOwned>(
    kind: &'static str,
    key: impl Display,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
        kind,
        key: key.to_string(),
        source,
    })
}

/// Maps a failed open, reporting a file held elsewhere as [`StoreError::Locked`].
fn database_error(dir: &Path, error: DatabaseError) -> StoreError {
    match error {
        // A redb of another locking-protocol generation has the file open, so it is in use too.
        DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
            StoreError::Locked {
                path: dir.display().to_string(),
            }
        }
        other => open_error(dir, other),
    }
}

fn open_error(dir: &Path, source: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Open {
        path: dir.display().to_string(),
        source: Box::new(source),
    }
}

fn commit_error(source: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    io_error("commit", source)
}

fn io_error(
    action: &'static str,
    source: impl std::error::Error + Send + Sync + 'static,
) -> StoreError {
    StoreError::Io {
        action,
        source: Box::new(source),
    }
}

#[cfg(test)]
#[path = "redb_tests.rs"]
mod tests;
