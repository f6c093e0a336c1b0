//! An in-memory [`Store`], for tests, benchmarks and `cube dev`.

use std::collections::BTreeMap;

use super::{Batch, NodeRecord, Operation, Store, StoreError};
use crate::event::TaskEvent;
use crate::ids::{NodeId, TaskId};
use crate::task::Task;
use crate::worker_task::WorkerTask;

/// A [`Store`] that keeps everything in memory and loses it when dropped.
#[derive(Debug, Default)]
pub struct MemoryStore {
    tasks: BTreeMap<TaskId, Task>,
    events: Vec<TaskEvent>,
    nodes: BTreeMap<NodeId, NodeRecord>,
    worker_tasks: BTreeMap<TaskId, WorkerTask>,
}

impl MemoryStore {
    /// Creates an empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Store for MemoryStore {
    fn tasks(&self) -> Result<Vec<Task>, StoreError> {
        Ok(self.tasks.values().cloned().collect())
    }

    fn task(&self, id: TaskId) -> Result<Option<Task>, StoreError> {
        Ok(self.tasks.get(&id).cloned())
    }

    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<TaskEvent>, StoreError> {
        // Sequence numbers start at 1 and have no gaps, so event `seq` sits at index seq - 1.
        let start = usize::try_from(after)
            .unwrap_or(usize::MAX)
            .min(self.events.len());
        Ok(self.events[start..].iter().take(limit).cloned().collect())
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        Ok(self.nodes.values().cloned().collect())
    }

    fn worker_tasks(&self) -> Result<Vec<WorkerTask>, StoreError> {
        Ok(self.worker_tasks.values().cloned().collect())
    }

    fn is_in_memory(&self) -> bool {
        true
    }

    fn commit(&mut self, batch: Batch) -> Result<Vec<u64>, StoreError> {
        // Nothing here can fail, so applying in place is atomic.
        let mut seqs = Vec::new();
        for operation in batch.operations {
            match operation {
                Operation::PutTask(task) => {
                    self.tasks.insert(task.id, task);
                }
                Operation::AppendEvent(mut event) => {
                    event.seq = self.events.len() as u64 + 1;
                    seqs.push(event.seq);
                    self.events.push(event);
                }
                Operation::PutNode(node) => {
                    self.nodes.insert(node.id.clone(), node);
                }
                Operation::DeleteNode(id) => {
                    self.nodes.remove(&id);
                }
                Operation::PutWorkerTask(record) => {
                    self.worker_tasks.insert(record.task_id, record);
                }
                Operation::DeleteWorkerTask(id) => {
                    self.worker_tasks.remove(&id);
                }
            }
        }
        Ok(seqs)
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::spec::TaskSpec;
    use crate::task::TaskState;

    #[test]
    fn memory_store_assigns_event_sequence() {
        let mut store = MemoryStore::new();
        let now = Utc::now();
        let mut task = Task::new(TaskId::generate(), TaskSpec::new("t", "i"), now);
        let first = task
            .transition(TaskState::Scheduled, "placed", now)
            .unwrap();
        let second = task.transition(TaskState::Running, "started", now).unwrap();
        let mut batch = Batch::new();
        batch
            .put_task(task.clone())
            .append_event(first)
            .append_event(second);

        assert_eq!(store.commit(batch).unwrap(), vec![1, 2]);
        assert_eq!(store.task(task.id).unwrap(), Some(task));
        let after_first = store.events_after(1, 10).unwrap();
        assert_eq!(after_first.len(), 1);
        assert_eq!(after_first[0].seq, 2);
        assert!(store.events_after(5, 10).unwrap().is_empty());
    }
}
