//! [`CountingStore`]: the in-memory store with counters of the state changes it records.
//!
//! The manager commits every state change as a task event, so counting the events that
//! reach `scheduled` and `running` tells a benchmark how far the manager has got without
//! sending it a message or copying its tasks. A waiter awaits [`StateCounts::changed`]
//! instead of polling.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cube_core::{
    Batch, MemoryStore, NodeRecord, Operation, Store, StoreError, Task, TaskEvent, TaskId,
    TaskState, WorkerTask,
};
use tokio::sync::Notify;

/// Numbers of recorded transitions, shared between the store and a benchmark driver.
#[derive(Debug, Default)]
pub struct StateCounts {
    scheduled: AtomicU64,
    running: AtomicU64,
    /// Notified after every commit that recorded a transition to `running`.
    pub changed: Notify,
}

impl StateCounts {
    /// Transitions to `scheduled` committed so far.
    pub fn scheduled(&self) -> u64 {
        self.scheduled.load(Ordering::Relaxed)
    }

    /// Transitions to `running` committed so far; a restarted task counts again.
    pub fn running(&self) -> u64 {
        self.running.load(Ordering::Relaxed)
    }

    /// Waits until `condition(self)` holds, checked after every transition to `running`.
    pub async fn wait_until(&self, condition: impl Fn(&StateCounts) -> bool) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Registering before the check means a commit between the two still wakes us.
            notified.as_mut().enable();
            if condition(self) {
                return;
            }
            notified.await;
        }
    }
}

/// A [`MemoryStore`] that counts the transitions it commits.
#[derive(Debug, Default)]
pub struct CountingStore {
    inner: MemoryStore,
    counts: Arc<StateCounts>,
}

impl CountingStore {
    /// Creates an empty store and returns it with its counters.
    pub fn new() -> (Self, Arc<StateCounts>) {
        let store = Self::default();
        let counts = store.counts.clone();
        (store, counts)
    }
}

impl Store for CountingStore {
    fn tasks(&self) -> Result<Vec<Task>, StoreError> {
        self.inner.tasks()
    }

    fn task(&self, id: TaskId) -> Result<Option<Task>, StoreError> {
        self.inner.task(id)
    }

    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<TaskEvent>, StoreError> {
        self.inner.events_after(after, limit)
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        self.inner.nodes()
    }

    fn worker_tasks(&self) -> Result<Vec<WorkerTask>, StoreError> {
        self.inner.worker_tasks()
    }

    fn commit(&mut self, batch: Batch) -> Result<Vec<u64>, StoreError> {
        let (mut scheduled, mut running) = (0, 0);
        for operation in &batch.operations {
            if let Operation::AppendEvent(event) = operation {
                match event.to {
                    TaskState::Scheduled => scheduled += 1,
                    TaskState::Running => running += 1,
                    _ => {}
                }
            }
        }
        let seqs = self.inner.commit(batch)?;
        self.counts
            .scheduled
            .fetch_add(scheduled, Ordering::Relaxed);
        if running > 0 {
            self.counts.running.fetch_add(running, Ordering::Relaxed);
            self.counts.changed.notify_waiters();
        }
        Ok(seqs)
    }
}

#[cfg(test)]
mod tests {
    use cube_core::{AttemptId, Timestamp};

    use super::*;

    fn event(to: TaskState) -> TaskEvent {
        TaskEvent {
            seq: 0,
            task_id: TaskId::generate(),
            attempt: Some(AttemptId::generate()),
            from: TaskState::Pending,
            to,
            at: Timestamp::UNIX_EPOCH,
            reason: "test".into(),
        }
    }

    #[test]
    fn counting_store_counts_committed_transitions() {
        let (mut store, counts) = CountingStore::new();
        let mut batch = Batch::new();
        batch.append_event(event(TaskState::Scheduled));
        batch.append_event(event(TaskState::Running));
        batch.append_event(event(TaskState::Completed));
        store.commit(batch).unwrap();
        let mut batch = Batch::new();
        batch.append_event(event(TaskState::Running));
        store.commit(batch).unwrap();

        assert_eq!(counts.scheduled(), 1);
        assert_eq!(counts.running(), 2);
        assert_eq!(store.events_after(0, 10).unwrap().len(), 4);
    }
}
