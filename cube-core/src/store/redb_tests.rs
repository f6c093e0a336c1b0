//! Tests of what only the persistent store does: reopening, locking, corruption and
//! failed commits. The behaviour it shares with the in-memory store is checked in
//! `store::contract_tests`.

use std::io::{BufRead, BufReader, Write};
use std::ops::Bound;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

use super::*;
use crate::store::contract_tests::{commit_all, event_of, node, running_task, worker_task_of};

/// Environment variable that makes [`hold_store_for_parent_process`] open the store in
/// the directory it names.
const HOLDER_DIR_VAR: &str = "CUBE_TEST_STORE_HOLDER_DIR";
/// Line the child prints once it has the store open.
const HOLDER_READY: &str = "cube-test: store held";

#[test]
fn reopen_keeps_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let task = running_task("durable");
    let event = event_of(&task, "container started");
    let registration = node("node-1", Some("http://127.0.0.1:9"));
    let record = worker_task_of(&task);
    {
        let mut store = RedbStore::open(dir.path()).unwrap();
        commit_all(
            &mut store,
            vec![
                Operation::PutTask(task.clone()),
                Operation::AppendEvent(event.clone()),
                Operation::PutNode(registration.clone()),
                Operation::PutWorkerTask(record.clone()),
            ],
        );
    }

    let store = RedbStore::open(dir.path()).unwrap();

    assert_eq!(store.path(), dir.path().join(STORE_FILE_NAME));
    assert_eq!(store.tasks().unwrap(), vec![task.clone()]);
    assert_eq!(store.task(task.id).unwrap(), Some(task));
    assert_eq!(
        store.events_after(0, 10).unwrap(),
        vec![TaskEvent { seq: 1, ..event }]
    );
    assert_eq!(store.nodes().unwrap(), vec![registration]);
    assert_eq!(store.worker_tasks().unwrap(), vec![record]);
}

#[test]
fn event_seqs_continue_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let task = running_task("seq");
    {
        let mut store = RedbStore::open(dir.path()).unwrap();
        let seqs = commit_all(
            &mut store,
            vec![
                Operation::AppendEvent(event_of(&task, "one")),
                Operation::AppendEvent(event_of(&task, "two")),
            ],
        );
        assert_eq!(seqs, vec![1, 2]);
    }

    let mut store = RedbStore::open(dir.path()).unwrap();
    let seqs = commit_all(
        &mut store,
        vec![Operation::AppendEvent(event_of(&task, "three"))],
    );

    assert_eq!(seqs, vec![3]);
    let stored: Vec<u64> = store
        .events_after(0, 10)
        .unwrap()
        .iter()
        .map(|event| event.seq)
        .collect();
    assert_eq!(stored, vec![1, 2, 3]);
}

#[test]
fn open_creates_missing_directories() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("manager").join("main");

    let store = RedbStore::open(&nested).unwrap();

    assert!(store.path().is_file());
    assert!(store.tasks().unwrap().is_empty());
}

#[test]
fn open_on_a_file_fails_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-directory");
    std::fs::write(&file, b"").unwrap();

    let error = RedbStore::open(&file).unwrap_err();

    match error {
        StoreError::Open { path, .. } => assert_eq!(path, file.display().to_string()),
        other => panic!("expected StoreError::Open, got {other:?}"),
    }
}

#[test]
fn second_open_in_same_process_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let first = RedbStore::open(dir.path()).unwrap();

    let error = RedbStore::open(dir.path()).unwrap_err();

    match &error {
        StoreError::Locked { path } => assert_eq!(*path, dir.path().display().to_string()),
        other => panic!("expected StoreError::Locked, got {other:?}"),
    }
    assert!(
        error
            .to_string()
            .contains(&dir.path().display().to_string())
    );
    drop(first);
    RedbStore::open(dir.path()).expect("the lock should be released when the store is dropped");
}

/// Kills and reaps the child process when dropped, so a failed assertion leaks no process.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn open_held_by_other_process_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "store::redb::tests::hold_store_for_parent_process",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HOLDER_DIR_VAR, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let guard = ChildGuard(child);
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // libtest prints the test's name on the same line, before the child's output.
            if line.ends_with(HOLDER_READY) {
                let _ = ready_tx.send(());
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("child process did not report holding the store within 30 s");

    let error = RedbStore::open(dir.path()).unwrap_err();

    match error {
        StoreError::Locked { path } => assert_eq!(path, dir.path().display().to_string()),
        other => panic!("expected StoreError::Locked, got {other:?}"),
    }
    drop(guard);
    RedbStore::open(dir.path()).expect("the lock should be released when its process dies");
}

/// Runs as the child process of [`open_held_by_other_process_is_locked`] and keeps the store
/// in the directory named by [`HOLDER_DIR_VAR`] open until killed. Without that variable it
/// does nothing.
#[test]
#[ignore = "child process of open_held_by_other_process_is_locked, which runs it"]
fn hold_store_for_parent_process() {
    let Some(dir) = std::env::var_os(HOLDER_DIR_VAR) else {
        return;
    };
    let _store = RedbStore::open(Path::new(&dir)).expect("child failed to open the store");
    println!("{HOLDER_READY}");
    std::io::stdout().flush().unwrap();
    // Bounded, so that a child whose parent died without killing it still exits.
    std::thread::sleep(Duration::from_secs(60));
}

/// Writes `bytes` under `key` into `table` through redb directly, bypassing the store.
fn write_raw_str(dir: &Path, table: TableDefinition<'_, &str, &[u8]>, key: &str, bytes: &[u8]) {
    let database = Database::create(dir.join(STORE_FILE_NAME)).unwrap();
    let txn = database.begin_write().unwrap();
    txn.open_table(table).unwrap().insert(key, bytes).unwrap();
    txn.commit().unwrap();
}

fn assert_corrupt<T: std::fmt::Debug>(
    result: Result<T, StoreError>,
    expected_kind: &str,
    expected_key: &str,
) {
    match result {
        Err(StoreError::Corrupt { kind, key, .. }) => {
            assert_eq!(kind, expected_kind);
            assert_eq!(key, expected_key);
        }
        other => panic!("expected StoreError::Corrupt for {expected_kind}, got {other:?}"),
    }
}

#[test]
fn undecodable_records_are_reported_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let task = running_task("healthy");
    drop(RedbStore::open(dir.path()).unwrap());
    let task_key = task.id.to_string();
    let record_key = TaskId::generate().to_string();
    write_raw_str(dir.path(), TASKS, &task_key, b"{\"id\": not json");
    write_raw_str(dir.path(), NODES, "node-1", b"\xff\xfe");
    write_raw_str(dir.path(), WORKER_TASKS, &record_key, b"[]");
    {
        let database = Database::create(dir.path().join(STORE_FILE_NAME)).unwrap();
        let txn = database.begin_write().unwrap();
        txn.open_table(EVENTS)
            .unwrap()
            .insert(1, b"".as_slice())
            .unwrap();
        txn.commit().unwrap();
    }

    let store = RedbStore::open(dir.path()).unwrap();

    assert_corrupt(store.tasks(), "task", &task_key);
    assert_corrupt(store.task(task.id), "task", &task_key);
    assert_corrupt(store.events_after(0, 10), "event", "1");
    assert_corrupt(store.nodes(), "node", "node-1");
    assert_corrupt(store.worker_tasks(), "worker task", &record_key);
}

/// Task name whose bytes make [`FailingBackend`] fail the write that carries them.
const POISON: &str = "poison-7c1e0b";

/// A file backend that fails every write of a page containing [`POISON`], as a disk
/// error would, so that only a commit holding a poisoned record fails.
#[derive(Debug)]
struct FailingBackend {
    inner: FileBackend,
}

impl FailingBackend {
    fn check(data: &[u8]) -> Result<(), BackendError> {
        let poison = POISON.as_bytes();
        if data.windows(poison.len()).any(|window| window == poison) {
            return Err(BackendError::Io(std::io::Error::other(
                "injected write failure",
            )));
        }
        Ok(())
    }
}

impl StorageBackend for FailingBackend {
    fn len(&self) -> Result<u64, BackendError> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), BackendError> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), BackendError> {
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> Result<(), BackendError> {
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        Self::check(data)?;
        self.inner.write(offset, data)
    }

    fn close(&self) -> Result<(), BackendError> {
        self.inner.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}

#[test]
fn failed_commit_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.path().join(STORE_FILE_NAME))
        .unwrap();
    let backend = FailingBackend {
        inner: FileBackend::new(file),
    };
    let committed = running_task("committed");
    let lost = running_task("lost");
    let poisoned = running_task(POISON);
    {
        let mut store = RedbStore::open_with_backend(dir.path(), backend).unwrap();
        commit_all(
            &mut store,
            vec![
                Operation::PutTask(committed.clone()),
                Operation::AppendEvent(event_of(&committed, "accepted")),
            ],
        );

        // Only the last operation carries the poison, so a store that wrote the earlier
        // ones on their own would leave them behind.
        let mut batch = Batch::new();
        batch
            .put_task(lost.clone())
            .append_event(event_of(&lost, "accepted"))
            .push(Operation::PutNode(node("node-1", None)))
            .push(Operation::DeleteWorkerTask(committed.id))
            .push(Operation::PutWorkerTask(worker_task_of(&poisoned)));
        let error = store.commit(batch).unwrap_err();
        assert!(
            matches!(
                error,
                StoreError::Io {
                    action: "commit",
                    ..
                }
            ),
            "expected a commit I/O error, got {error:?}"
        );
    }

    let mut store = RedbStore::open(dir.path()).unwrap();

    assert_eq!(store.tasks().unwrap(), vec![committed.clone()]);
    assert_eq!(store.task(lost.id).unwrap(), None);
    assert_eq!(store.events_after(0, 10).unwrap().len(), 1);
    assert!(store.nodes().unwrap().is_empty());
    assert!(store.worker_tasks().unwrap().is_empty());
    let seqs = commit_all(
        &mut store,
        vec![Operation::AppendEvent(event_of(&committed, "next"))],
    );
    assert_eq!(seqs, vec![2]);
}
