//! Behaviour every [`Store`] must share, run against [`MemoryStore`] and [`RedbStore`].
//!
//! Each check is a generic function over [`Store`]. The `contract_tests!` macro turns each
//! into one test per implementation, so the in-memory store used by tests and `cube dev`
//! cannot drift from the persistent one. The record builders are also used by the
//! persistent store's own tests.

use std::collections::BTreeMap;

use chrono::Utc;

use super::{Batch, MemoryStore, NodeRecord, Operation, RedbStore, Store};
use crate::event::TaskEvent;
use crate::ids::{AttemptId, ContainerId, NodeId, TaskId};
use crate::spec::{Protocol, TaskSpec};
use crate::task::{PortBinding, Task, TaskState};
use crate::worker_task::{PortMapping, WorkerTask};

/// Builds a placed, running task whose optional fields are all set.
pub(super) fn running_task(name: &str) -> Task {
    let now = Utc::now();
    let mut spec = TaskSpec::new(name, "cube-test/busybox:latest");
    spec.command = vec!["sleep".into(), "60".into()];
    spec.env = BTreeMap::from([("MODE".into(), "test".into())]);
    let mut task = Task::new(TaskId::generate(), spec, now);
    task.node = Some(NodeId::new("node-1").unwrap());
    task.attempt = Some(AttemptId::generate());
    task.transition(TaskState::Scheduled, "placed on node-1", now)
        .unwrap();
    task.transition(TaskState::Running, "container started", now)
        .unwrap();
    task.container_id = Some(ContainerId("c0ffee".repeat(10)));
    task.host_ports = vec![PortBinding {
        container_port: 80,
        protocol: Protocol::Tcp,
        host_ip: "127.0.0.1".into(),
        host_port: 32768,
    }];
    task.restart_count = 2;
    task.next_attempt_at = Some(now);
    task.last_error = Some("container exited with code 1".into());
    task.exit_code = Some(1);
    task
}

/// Builds an event of `task` with a sequence number the store must replace.
pub(super) fn event_of(task: &Task, reason: &str) -> TaskEvent {
    TaskEvent {
        seq: 999,
        task_id: task.id,
        attempt: task.attempt,
        from: TaskState::Scheduled,
        to: TaskState::Running,
        at: Utc::now(),
        reason: reason.into(),
    }
}

/// Builds a node registration, remote when `address` is given.
pub(super) fn node(name: &str, address: Option<&str>) -> NodeRecord {
    NodeRecord {
        id: NodeId::new(name).unwrap(),
        address: address.map(str::to_owned),
    }
}

/// Builds a worker's record of `task`, with its optional fields set.
pub(super) fn worker_task_of(task: &Task) -> WorkerTask {
    let now = Utc::now();
    WorkerTask {
        task_id: task.id,
        attempt: task.attempt.unwrap_or_else(AttemptId::generate),
        spec: task.spec.clone(),
        ports: vec![PortMapping {
            container_port: 80,
            protocol: Protocol::Tcp,
            host_port: None,
        }],
        state: TaskState::Running,
        container_id: task.container_id.clone(),
        host_ports: task.host_ports.clone(),
        exit_code: Some(0),
        reason: Some("started".into()),
        stop_requested: true,
        accepted_at: now,
        started_at: Some(now),
        finished_at: Some(now),
        restart_count: 2,
        next_attempt_at: Some(now),
        replaces: Some(AttemptId::generate()),
    }
}

/// Commits `operations` as one batch and returns the assigned sequence numbers.
pub(super) fn commit_all(store: &mut impl Store, operations: Vec<Operation>) -> Vec<u64> {
    store.commit(Batch { operations }).unwrap()
}

/// Checks that every record kind reads back equal to what was committed.
fn round_trips_every_record_kind(store: &mut impl Store) {
    let task = running_task("web");
    let event = event_of(&task, "container started");
    let local = node("local-1", None);
    let remote = node("remote-1", Some("http://127.0.0.1:9"));
    let record = worker_task_of(&task);

    let seqs = commit_all(
        store,
        vec![
            Operation::PutTask(task.clone()),
            Operation::AppendEvent(event.clone()),
            Operation::PutNode(local.clone()),
            Operation::PutNode(remote.clone()),
            Operation::PutWorkerTask(record.clone()),
        ],
    );

    assert_eq!(seqs, vec![1]);
    assert_eq!(store.task(task.id).unwrap(), Some(task.clone()));
    assert_eq!(store.tasks().unwrap(), vec![task]);
    let stored_event = TaskEvent { seq: 1, ..event };
    assert_eq!(store.events_after(0, 10).unwrap(), vec![stored_event]);
    assert_eq!(store.nodes().unwrap(), vec![local, remote]);
    assert_eq!(store.worker_tasks().unwrap(), vec![record]);
    assert_eq!(store.task(TaskId::generate()).unwrap(), None);
}

/// Checks that sequence numbers start at 1, have no gaps across commits and page correctly.
fn assigns_gap_free_event_seqs(store: &mut impl Store) {
    let task = running_task("seq");
    let first = commit_all(
        store,
        vec![
            Operation::AppendEvent(event_of(&task, "one")),
            Operation::PutTask(task.clone()),
            Operation::AppendEvent(event_of(&task, "two")),
        ],
    );
    let second = commit_all(
        store,
        vec![Operation::AppendEvent(event_of(&task, "three"))],
    );

    assert_eq!(first, vec![1, 2]);
    assert_eq!(second, vec![3]);
    let all = store.events_after(0, usize::MAX).unwrap();
    let seqs: Vec<u64> = all.iter().map(|event| event.seq).collect();
    let reasons: Vec<&str> = all.iter().map(|event| event.reason.as_str()).collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    assert_eq!(reasons, vec!["one", "two", "three"]);

    let page = store.events_after(1, 1).unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].seq, 2);
    assert!(store.events_after(0, 0).unwrap().is_empty());
    assert!(store.events_after(3, 10).unwrap().is_empty());
    assert!(store.events_after(u64::MAX, 10).unwrap().is_empty());
}

/// Checks that a put with an existing id replaces the stored record.
fn replaces_records_with_same_id(store: &mut impl Store) {
    let mut task = running_task("replace");
    let mut record = worker_task_of(&task);
    let mut registration = node("node-1", None);
    commit_all(
        store,
        vec![
            Operation::PutTask(task.clone()),
            Operation::PutWorkerTask(record.clone()),
            Operation::PutNode(registration.clone()),
        ],
    );

    task.restart_count += 1;
    record.exit_code = Some(137);
    registration.address = Some("http://127.0.0.1:9".into());
    commit_all(
        store,
        vec![
            Operation::PutTask(task.clone()),
            Operation::PutWorkerTask(record.clone()),
            Operation::PutNode(registration.clone()),
        ],
    );

    assert_eq!(store.tasks().unwrap(), vec![task]);
    assert_eq!(store.worker_tasks().unwrap(), vec![record]);
    assert_eq!(store.nodes().unwrap(), vec![registration]);
}

/// Checks that deletes remove their record, and that deleting a missing record is no error.
fn deletes_records(store: &mut impl Store) {
    let kept = running_task("kept");
    let removed = running_task("removed");
    commit_all(
        store,
        vec![
            Operation::PutNode(node("node-1", None)),
            Operation::PutNode(node("node-2", None)),
            Operation::PutWorkerTask(worker_task_of(&kept)),
            Operation::PutWorkerTask(worker_task_of(&removed)),
        ],
    );

    commit_all(
        store,
        vec![
            Operation::DeleteNode(NodeId::new("node-1").unwrap()),
            Operation::DeleteWorkerTask(removed.id),
            Operation::DeleteNode(NodeId::new("never-registered").unwrap()),
            Operation::DeleteWorkerTask(TaskId::generate()),
        ],
    );

    assert_eq!(store.nodes().unwrap(), vec![node("node-2", None)]);
    let remaining: Vec<TaskId> = store
        .worker_tasks()
        .unwrap()
        .iter()
        .map(|record| record.task_id)
        .collect();
    assert_eq!(remaining, vec![kept.id]);
}

/// Checks that the operations of one batch apply in their order.
fn applies_batch_in_order(store: &mut impl Store) {
    let task = running_task("order");
    commit_all(
        store,
        vec![
            Operation::PutNode(node("added-then-deleted", None)),
            Operation::DeleteNode(NodeId::new("added-then-deleted").unwrap()),
            Operation::DeleteWorkerTask(task.id),
            Operation::PutWorkerTask(worker_task_of(&task)),
        ],
    );

    assert!(store.nodes().unwrap().is_empty());
    assert_eq!(store.worker_tasks().unwrap().len(), 1);
}

/// Checks that scans return records in id order, whatever the order of insertion.
fn lists_records_in_id_order(store: &mut impl Store) {
    let tasks: Vec<Task> = (0..20).map(|i| running_task(&format!("t{i}"))).collect();
    let names = ["n-b", "n-a", "N-c", "n.1", "n_0", "n-aa"];
    let mut operations = Vec::new();
    for task in &tasks {
        operations.push(Operation::PutTask(task.clone()));
        operations.push(Operation::PutWorkerTask(worker_task_of(task)));
    }
    for name in names {
        operations.push(Operation::PutNode(node(name, None)));
    }
    commit_all(store, operations);

    let mut task_ids: Vec<TaskId> = tasks.iter().map(|task| task.id).collect();
    task_ids.sort();
    let mut node_ids: Vec<NodeId> = names.iter().map(|n| NodeId::new(*n).unwrap()).collect();
    node_ids.sort();
    let stored_tasks: Vec<TaskId> = store.tasks().unwrap().iter().map(|t| t.id).collect();
    let stored_records: Vec<TaskId> = store
        .worker_tasks()
        .unwrap()
        .iter()
        .map(|record| record.task_id)
        .collect();
    let stored_nodes: Vec<NodeId> = store.nodes().unwrap().into_iter().map(|n| n.id).collect();
    assert_eq!(stored_tasks, task_ids);
    assert_eq!(stored_records, task_ids);
    assert_eq!(stored_nodes, node_ids);
}

/// Checks that an empty batch stores nothing and takes no sequence number.
fn empty_batch_changes_nothing(store: &mut impl Store) {
    assert_eq!(store.commit(Batch::new()).unwrap(), Vec::<u64>::new());
    let task = running_task("after-empty");
    let seqs = commit_all(
        store,
        vec![Operation::AppendEvent(event_of(&task, "first"))],
    );

    assert_eq!(seqs, vec![1]);
    assert!(store.tasks().unwrap().is_empty());
    assert!(store.nodes().unwrap().is_empty());
    assert!(store.worker_tasks().unwrap().is_empty());
}

/// Generates, for each check, one test per store implementation.
macro_rules! contract_tests {
    ($($check:ident),* $(,)?) => {
        mod memory_store {
            $(
                #[test]
                fn $check() {
                    super::$check(&mut super::MemoryStore::new());
                }
            )*
        }

        mod redb_store {
            $(
                #[test]
                fn $check() {
                    let dir = tempfile::tempdir().unwrap();
                    let mut store = super::RedbStore::open(dir.path()).unwrap();
                    super::$check(&mut store);
                }
            )*
        }
    };
}

contract_tests!(
    round_trips_every_record_kind,
    assigns_gap_free_event_seqs,
    replaces_records_with_same_id,
    deletes_records,
    applies_batch_in_order,
    lists_records_in_id_order,
    empty_batch_changes_nothing,
);
