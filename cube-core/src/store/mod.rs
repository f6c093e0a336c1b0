//! Durable state behind one fallible trait, shared by the manager and the workers.
//!
//! A [`Store`] holds tasks, their event log, the node registry and a worker's own task
//! records. Every change goes through [`Store::commit`], which applies a [`Batch`]
//! atomically: either every operation is stored or none is. Event sequence numbers are
//! assigned inside the same commit as the task change they record.

mod memory;
mod redb;
mod writer;

#[cfg(test)]
mod contract_tests;

pub use self::redb::{RedbStore, STORE_FILE_NAME};
pub use memory::MemoryStore;
pub use writer::{Committed, StoreWriter};

use serde::{Deserialize, Serialize};

use crate::event::TaskEvent;
use crate::ids::{NodeId, TaskId};
use crate::task::Task;
use crate::worker_task::WorkerTask;

/// A node as the manager's registry stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The node.
    pub id: NodeId,
    /// Base URL of the worker's API for a remote worker, `None` for an in-process one.
    pub address: Option<String>,
}

/// One change inside a [`Batch`].
#[derive(Debug, Clone, PartialEq)]
pub enum Operation {
    /// Inserts or replaces a task.
    PutTask(Task),
    /// Appends an event; its `seq` is replaced by the next sequence number.
    AppendEvent(TaskEvent),
    /// Inserts or replaces a node registration.
    PutNode(NodeRecord),
    /// Removes a node registration.
    DeleteNode(NodeId),
    /// Inserts or replaces a worker's record of a task.
    PutWorkerTask(WorkerTask),
    /// Removes a worker's record of a task.
    DeleteWorkerTask(TaskId),
}

/// Changes applied together by [`Store::commit`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    /// The changes, applied in order.
    pub operations: Vec<Operation>,
}

impl Batch {
    /// Creates an empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `task`.
    pub fn put_task(&mut self, task: Task) -> &mut Self {
        self.operations.push(Operation::PutTask(task));
        self
    }

    /// Adds `event`.
    pub fn append_event(&mut self, event: TaskEvent) -> &mut Self {
        self.operations.push(Operation::AppendEvent(event));
        self
    }

    /// Adds any operation.
    pub fn push(&mut self, operation: Operation) -> &mut Self {
        self.operations.push(operation);
        self
    }

    /// Whether the batch holds no operation.
    pub fn is_empty(&self) -> bool {
        self.operations.is_empty()
    }
}

/// Failure of a store operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store's files could not be opened.
    #[error("failed to open store at {path}")]
    Open {
        /// Path of the store.
        path: String,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Another process holds the store's files.
    #[error(
        "store at {path} is in use by another process; stop it or choose another data directory"
    )]
    Locked {
        /// Path of the store.
        path: String,
    },
    /// Reading or writing failed.
    #[error("store {action} failed")]
    Io {
        /// What was attempted, such as "commit".
        action: &'static str,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A record could not be encoded for storage.
    #[error("failed to encode {kind} {key} for storage")]
    Encode {
        /// Kind of record, such as "task".
        kind: &'static str,
        /// Its key.
        key: String,
        /// The encoding error.
        #[source]
        source: serde_json::Error,
    },
    /// A stored record could not be decoded.
    #[error("stored {kind} {key} is corrupt")]
    Corrupt {
        /// Kind of record, such as "task".
        kind: &'static str,
        /// Its key.
        key: String,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
}

/// Storage of tasks, events, nodes and worker task records.
pub trait Store: Send + 'static {
    /// Every stored task, in id order.
    ///
    /// # Errors
    ///
    /// Returns [`StoreError`] when reading or decoding fails.
    fn tasks(&self) -> Result<Vec<Task>, StoreError>;

    /// One task, if stored.
    ///
    /// # Errors
    ///
    /// Returns [`StoreError`] when reading or decoding fails.
    fn task(&self, id: TaskId) -> Result<Option<Task>, StoreError>;

    /// Up to `limit` events with a sequence number greater than `after`, in order.
    ///
    /// # Errors
    ///
    /// Returns [`StoreError`] when reading or decoding fails.
    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<TaskEvent>, StoreError>;

    /// Every registered node, in id order.
    ///
    /// # Errors
    ///
    /// Returns [`StoreError`] when reading or decoding fails.
    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError>;

    /// Every worker task record, in task id order.
    ///
    /// # Errors
    ///
    /// Returns [`StoreError`] when reading or decoding fails.
    fn worker_tasks(&self) -> Result<Vec<WorkerTask>, StoreError>;

    /// Applies `batch` atomically and returns the sequence numbers given to its events.
    ///
    /// # Errors
    ///
    /// Returns [`StoreError`] and stores nothing when any part fails.
    fn commit(&mut self, batch: Batch) -> Result<Vec<u64>, StoreError>;
    /// Whether a commit returns at once without disk I/O, so that a [`StoreWriter`] may
    /// commit on the caller's thread instead of its own; `false` unless overridden.
    fn is_in_memory(&self) -> bool {
        false
    }
}
