//! A [`StoreWriter`]: commits a [`Store`]'s batches on a thread of its own.
//!
//! A redb commit fsyncs, which takes milliseconds. The manager and the workers are actors that
//! share one arbiter thread with every other actor of their `System`, so a commit made in a
//! handler would delay every heartbeat and report behind it. They hand their store to a
//! `StoreWriter` instead. [`StoreWriter::commit`] queues a batch and returns a
//! [`Committed`] future that resolves once the batch is durable. A caller that must not
//! reply before then (an API request, a command acknowledgement) awaits it, and a caller that
//! only records an observation drops it: the batch is committed all the same.
//!
//! # Guarantees
//!
//! - Batches are committed in the order [`StoreWriter::commit`] was called, so when one
//!   batch's future resolves with `Ok`, every batch queued before it is durable too (or
//!   failed and was logged). [`StoreWriter::flushed`] uses this as a barrier.
//! - Batches queued while a commit runs are merged into the next transaction, so a burst of
//!   submissions costs one fsync, not one each. When a merged transaction fails, its batches
//!   are committed again one at a time, so a failure reaches only the batch that caused it.
//! - On the writer thread, a failed commit whose future was dropped is logged at error level;
//!   one whose future is awaited is returned to the caller and not logged. (A
//!   [`super::MemoryStore`], committed inline, never fails.)
//!
//! A store whose [`Store::is_in_memory`] is true, such as [`super::MemoryStore`], costs no
//! I/O, so its writer commits on the caller's thread and [`Committed`] is ready at once: tests
//! that pause tokio's clock then never wait on another thread.
//!
//! # Caveats
//!
//! The thread ends, and drops the store (releasing a [`super::RedbStore`]'s lock), once every
//! clone of the writer is dropped and the queue is empty. That happens shortly after the last
//! drop, not during it: a restart in the same process must retry an open that fails with
//! [`StoreError::Locked`] for a moment.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, mpsc};
use std::task::{Context, Poll};

use log::{debug, error};
use tokio::sync::oneshot;

use super::{Batch, Operation, Store, StoreError};

/// Maximum number of queued batches merged into one transaction.
const MAX_MERGED: usize = 512;

/// One queued batch and where its result goes.
struct Request {
    batch: Batch,
    reply: oneshot::Sender<Result<Vec<u64>, StoreError>>,
}

/// Commits batches to a [`Store`] on a dedicated thread; clones share that thread.
#[derive(Clone)]
pub struct StoreWriter {
    target: Target,
}

/// The destination of a [`StoreWriter`]'s commits.
#[derive(Clone)]
enum Target {
    /// The writer thread, through its queue.
    Thread(mpsc::Sender<Request>),
    /// An in-memory store, committed to on the caller's thread.
    Inline(Arc<Mutex<Box<dyn Store>>>),
}

impl std::fmt::Debug for StoreWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self.target {
            Target::Thread(_) => "thread",
            Target::Inline(_) => "inline",
        };
        f.debug_struct("StoreWriter").field("mode", &mode).finish()
    }
}

/// The result of one [`StoreWriter::commit`]: the sequence numbers given to the batch's
/// events, once the batch is durable.
///
/// Dropping it does not cancel the commit.
#[derive(Debug)]
pub struct Committed {
    receiver: Option<oneshot::Receiver<Result<Vec<u64>, StoreError>>>,
}

impl StoreWriter {
    /// Moves `store` to a new thread named `cube-store-<name>` that commits what this writer
    /// queues, or keeps it on the caller's thread when it is in memory.
    ///
    /// # Errors
    ///
    /// Returns [`StoreError::Io`] when the thread cannot be created.
    pub fn spawn(name: &str, store: Box<dyn Store>) -> Result<Self, StoreError> {
        if store.is_in_memory() {
            return Ok(Self {
                target: Target::Inline(Arc::new(Mutex::new(store))),
            });
        }
        let (sender, receiver) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("cube-store-{name}"))
            .spawn(move || run(store, receiver))
            .map_err(|source| StoreError::Io {
                action: "start of the store writer thread",
                source: Box::new(source),
            })?;
        Ok(Self {
            target: Target::Thread(sender),
        })
    }

    /// Queues `batch` and returns a future of its result.
    ///
    /// An empty batch is committed as a no-op in its turn, which makes it a barrier.
    pub fn commit(&self, batch: Batch) -> Committed {
        let sender = match &self.target {
            Target::Thread(sender) => sender,
            Target::Inline(store) => {
                let result = match store.lock() {
                    Ok(mut store) => store.commit(batch),
                    Err(_) => Err(StoreError::Io {
                        action: "commit",
                        source: "an earlier commit panicked".into(),
                    }),
                };
                if let Err(error) = &result {
                    debug!("store commit failed: {}", error_chain(error));
                }
                return Committed::ready(result);
            }
        };
        let (reply, receiver) = oneshot::channel();
        // A send fails only when the thread has ended; the dropped reply then reports it.
        let _ = sender.send(Request { batch, reply });
        Committed {
            receiver: Some(receiver),
        }
    }

    /// Returns a future that resolves once every batch queued before this call is committed.
    pub fn flushed(&self) -> Committed {
        self.commit(Batch::new())
    }
}

impl Committed {
    /// Creates a commit result that is known already, such as the failure of a writer that could not
    /// be started.
    pub fn ready(result: Result<Vec<u64>, StoreError>) -> Self {
        let (reply, receiver) = oneshot::channel();
        let _ = reply.send(result);
        Self {
            receiver: Some(receiver),
        }
    }
}

impl Future for Committed {
    type Output = Result<Vec<u64>, StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(receiver) = self.receiver.as_mut() else {
            return Poll::Ready(Err(writer_gone()));
        };
        match Pin::new(receiver).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(result) => {
                self.receiver = None;
                Poll::Ready(result.unwrap_or_else(|_| Err(writer_gone())))
            }
        }
    }
}

/// Returns the error of a batch whose writer thread ended before committing it.
fn writer_gone() -> StoreError {
    StoreError::Io {
        action: "commit",
        source: "the store writer thread has stopped".into(),
    }
}

/// Runs the writer thread: commits queued batches until every sender is dropped.
fn run(mut store: Box<dyn Store>, receiver: mpsc::Receiver<Request>) {
    while let Ok(first) = receiver.recv() {
        let mut requests = vec![first];
        while requests.len() < MAX_MERGED {
            match receiver.try_recv() {
                Ok(request) => requests.push(request),
                Err(_) => break,
            }
        }
        commit_merged(store.as_mut(), requests);
    }
    debug!("store writer stopped");
}

/// Commits `requests` in one transaction, or one by one when that transaction fails.
fn commit_merged(store: &mut dyn Store, requests: Vec<Request>) {
    if requests.len() == 1 {
        let request = requests.into_iter().next().expect("one request");
        let result = store.commit(request.batch);
        reply(request.reply, result);
        return;
    }

    let mut merged = Batch::new();
    let mut event_counts = Vec::with_capacity(requests.len());
    for request in &requests {
        let events = request
            .batch
            .operations
            .iter()
            .filter(|operation| matches!(operation, Operation::AppendEvent(_)))
            .count();
        event_counts.push(events);
        merged
            .operations
            .extend(request.batch.operations.iter().cloned());
    }
    match store.commit(merged) {
        Ok(seqs) => {
            let mut seqs = seqs.into_iter();
            for (request, count) in requests.into_iter().zip(event_counts) {
                let own: Vec<u64> = seqs.by_ref().take(count).collect();
                reply(request.reply, Ok(own));
            }
        }
        Err(error) => {
            debug!(
                "merged commit of {} batches failed, committing them one by one: {error}",
                requests.len()
            );
            for request in requests {
                let result = store.commit(request.batch);
                reply(request.reply, result);
            }
        }
    }
}

/// Sends `result` to its caller, or logs a failure that no caller awaits.
fn reply(
    sender: oneshot::Sender<Result<Vec<u64>, StoreError>>,
    result: Result<Vec<u64>, StoreError>,
) {
    if let Err(Err(error)) = sender.send(result) {
        error!("store commit failed: {}", error_chain(&error));
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::event::TaskEvent;
    use crate::ids::TaskId;
    use crate::store::MemoryStore;
    use crate::store::NodeRecord;
    use crate::store::contract_tests::{event_of, running_task};
    use crate::task::Task;
    use crate::worker_task::WorkerTask;

    /// A memory store that counts commits and fails batches holding a task named "poison".
    #[derive(Clone, Default)]
    struct ProbeStore {
        inner: Arc<Mutex<MemoryStore>>,
        commits: Arc<Mutex<usize>>,
    }

    impl Store for ProbeStore {
        fn tasks(&self) -> Result<Vec<Task>, StoreError> {
            self.inner.lock().unwrap().tasks()
        }

        fn task(&self, id: TaskId) -> Result<Option<Task>, StoreError> {
            self.inner.lock().unwrap().task(id)
        }

        fn events_after(&self, after: u64, limit: usize) -> Result<Vec<TaskEvent>, StoreError> {
            self.inner.lock().unwrap().events_after(after, limit)
        }

        fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
            self.inner.lock().unwrap().nodes()
        }

        fn worker_tasks(&self) -> Result<Vec<WorkerTask>, StoreError> {
            self.inner.lock().unwrap().worker_tasks()
        }

        fn commit(&mut self, batch: Batch) -> Result<Vec<u64>, StoreError> {
            *self.commits.lock().unwrap() += 1;
            let poisoned = batch.operations.iter().any(|operation| {
                matches!(operation, Operation::PutTask(task) if task.spec.name == "poison")
            });
            if poisoned {
                return Err(StoreError::Io {
                    action: "commit",
                    source: "poisoned batch".into(),
                });
            }
            self.inner.lock().unwrap().commit(batch)
        }
    }

    fn batch_with_event(name: &str) -> Batch {
        let task = running_task(name);
        let mut batch = Batch::new();
        batch
            .put_task(task.clone())
            .append_event(event_of(&task, "placed"));
        batch
    }

    fn block_on<F: Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }

    #[test]
    fn commit_resolves_with_event_seqs_in_order() {
        let store = ProbeStore::default();
        let writer = StoreWriter::spawn("test", Box::new(store.clone())).unwrap();
        let futures: Vec<Committed> = (0..20)
            .map(|index| writer.commit(batch_with_event(&format!("t{index}"))))
            .collect();

        let seqs: Vec<Vec<u64>> = block_on(async {
            let mut all = Vec::new();
            for future in futures {
                all.push(future.await.unwrap());
            }
            all
        });

        let expected: Vec<Vec<u64>> = (1..=20).map(|seq| vec![seq]).collect();
        assert_eq!(seqs, expected);
        assert_eq!(store.tasks().unwrap().len(), 20);
        assert!(*store.commits.lock().unwrap() <= 20);
    }

    #[test]
    fn dropped_future_still_commits_before_barrier() {
        let store = ProbeStore::default();
        let writer = StoreWriter::spawn("test", Box::new(store.clone())).unwrap();
        drop(writer.commit(batch_with_event("behind")));

        block_on(writer.flushed()).unwrap();

        assert_eq!(store.tasks().unwrap().len(), 1);
    }

    #[test]
    fn failed_batch_does_not_fail_its_neighbours() {
        let store = ProbeStore::default();
        let writer = StoreWriter::spawn("test", Box::new(store.clone())).unwrap();
        let names = ["a", "poison", "b"];
        let futures: Vec<Committed> = names
            .iter()
            .map(|name| writer.commit(batch_with_event(name)))
            .collect();

        let results: Vec<bool> = block_on(async {
            let mut all = Vec::new();
            for future in futures {
                all.push(future.await.is_ok());
            }
            all
        });

        assert_eq!(results, vec![true, false, true]);
        let stored: Vec<String> = store
            .tasks()
            .unwrap()
            .into_iter()
            .map(|task| task.spec.name)
            .collect();
        assert_eq!(stored.len(), 2, "stored {stored:?}");
        assert!(!stored.contains(&"poison".to_owned()));
    }

    #[test]
    fn memory_store_commits_inline() {
        let writer = StoreWriter::spawn("test", Box::new(MemoryStore::new())).unwrap();
        let mut committed = std::pin::pin!(writer.commit(batch_with_event("inline")));
        let waker = std::task::Waker::noop();
        let polled = committed.as_mut().poll(&mut Context::from_waker(waker));
        assert!(
            matches!(polled, Poll::Ready(Ok(ref seqs)) if seqs == &vec![1]),
            "{polled:?}"
        );
        assert!(format!("{writer:?}").contains("inline"));
    }

    #[test]
    fn dropping_every_writer_releases_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::RedbStore::open(dir.path()).unwrap();
        let writer = StoreWriter::spawn("test", Box::new(store)).unwrap();
        block_on(writer.commit(batch_with_event("kept"))).unwrap();
        drop(writer);

        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let reopened = loop {
            match crate::store::RedbStore::open(dir.path()) {
                Ok(store) => break store,
                Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(error) => panic!("reopen failed: {error}"),
            }
        };
        assert_eq!(reopened.tasks().unwrap().len(), 1);
    }
}
