//! Durable state in the manager: concurrent submissions of one client id, and a manager
//! restarted over the store a crash left, reconciling with its worker's records.

use std::sync::{Arc, Mutex};

use actix::prelude::*;
use chrono::Utc;

use cube_core::event::TaskEvent;
use cube_core::ids::{ContainerId, TaskId};
use cube_core::messages::{ReportBody, StartTask};
use cube_core::node::DeclaredCapacity;
use cube_core::store::{Batch, MemoryStore, NodeRecord, Operation, Store, StoreError};
use cube_core::task::{Task, TaskState};
use cube_core::wire::TaskView;
use cube_core::worker_task::WorkerTask;
use cube_manager::Manager;
use cube_manager::cluster::ClusterBuilder;
use cube_manager::http::HttpConfig;
use cube_manager::manager::GetTasks;
use cube_worker::simulated::SimulatedBehaviour;

use crate::util::fake_worker::{
    Emit, FakeOptions, FakeWorker, GetCommands, SetListedTasks, status,
};
use crate::util::*;

/// A memory store that the test can still read after handing it to a manager.
#[derive(Clone, Default)]
struct SharedStore(Arc<Mutex<MemoryStore>>);

impl Store for SharedStore {
    fn tasks(&self) -> Result<Vec<Task>, StoreError> {
        self.0.lock().unwrap().tasks()
    }

    fn task(&self, id: TaskId) -> Result<Option<Task>, StoreError> {
        self.0.lock().unwrap().task(id)
    }

    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<TaskEvent>, StoreError> {
        self.0.lock().unwrap().events_after(after, limit)
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        self.0.lock().unwrap().nodes()
    }

    fn worker_tasks(&self) -> Result<Vec<WorkerTask>, StoreError> {
        self.0.lock().unwrap().worker_tasks()
    }

    fn commit(&mut self, batch: Batch) -> Result<Vec<u64>, StoreError> {
        self.0.lock().unwrap().commit(batch)
    }

    fn is_in_memory(&self) -> bool {
        true
    }
}

/// A copy of `store`'s tasks and nodes, as a manager killed at this moment leaves them.
fn crash_copy(store: &SharedStore) -> MemoryStore {
    let mut copy = MemoryStore::new();
    let mut batch = Batch::new();
    for task in store.tasks().unwrap() {
        batch.put_task(task);
    }
    for node in store.nodes().unwrap() {
        batch.push(Operation::PutNode(node));
    }
    copy.commit(batch).unwrap();
    copy
}

/// The record a worker keeps of `start` once its container `container` runs.
fn running_record(start: &StartTask, container: &ContainerId) -> WorkerTask {
    WorkerTask {
        task_id: start.task_id,
        attempt: start.attempt,
        spec: start.spec.clone(),
        ports: start.ports.clone(),
        state: TaskState::Running,
        container_id: Some(container.clone()),
        host_ports: Vec::new(),
        exit_code: None,
        reason: Some("container started".to_owned()),
        stop_requested: false,
        accepted_at: Utc::now(),
        started_at: Some(Utc::now()),
        finished_at: None,
        restart_count: 0,
        next_attempt_at: None,
        replaces: None,
    }
}

async fn starts_of(fake: &Addr<FakeWorker>) -> Vec<StartTask> {
    bounded(fake.send(GetCommands), "fake worker did not answer")
        .await
        .expect("fake worker alive")
        .starts
}

#[actix::test]
async fn concurrent_identical_submissions_make_one_task() {
    init_logging();
    let data = tempfile::tempdir().unwrap();
    let cluster = bounded(
        ClusterBuilder::new()
            .policy("roundrobin")
            .simulated(SimulatedBehaviour::run_until_stopped())
            .workers(1, DeclaredCapacity::default())
            .serve_api(HttpConfig::default())
            // A persistent store commits on its own thread, so the ten submissions overlap
            // with the first one's commit.
            .data_dir(Some(data.path().to_owned()))
            .start(),
        "cluster did not start",
    )
    .await
    .expect("cluster starts");
    let url = format!("{}/tasks", cluster.api_url().unwrap());
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let id = TaskId::generate();
    let mut body = serde_json::to_value(spec("once")).unwrap();
    body["id"] = serde_json::json!(id);

    let requests = (0..10).map(|_| {
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        async move {
            let response = client.post(&url).json(&body).send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<TaskView>().await.unwrap())
        }
    });
    let answers = bounded(
        futures_util::future::join_all(requests),
        "submissions were not answered",
    )
    .await;

    let created = answers.iter().filter(|(status, _)| *status == 201).count();
    let repeated = answers.iter().filter(|(status, _)| *status == 200).count();
    assert_eq!((created, repeated), (1, 9), "statuses: {answers:?}");
    for (_, view) in &answers {
        assert_eq!(view.id, id);
        assert_eq!(
            view.created_at, answers[0].1.created_at,
            "one task, created once"
        );
    }
    let tasks = bounded(cluster.manager.send(GetTasks), "manager did not answer")
        .await
        .unwrap();
    assert_eq!(tasks.len(), 1);

    wait_for_task(&cluster.manager, id, "the task never ran", |task| {
        task.state == TaskState::Running
    })
    .await;
    let runtime = cluster.workers[0].simulated.clone().unwrap();
    assert_eq!(runtime.started_total(), 1, "one container for one task");

    body["image"] = serde_json::json!("cube-test/other:latest");
    let conflict = client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(conflict.status().as_u16(), 409);
}

#[actix::test]
async fn restarted_manager_reconciles_with_worker_records() {
    init_logging();
    let store = SharedStore::default();
    let first = Manager::new(round_robin_config(), Box::new(store.clone()))
        .unwrap()
        .start();
    let (fake, handle) = FakeWorker::start("w1", FakeOptions::default());
    add_worker(&first, handle).await;
    let running = submit(&first, spec("running")).await;
    let unstarted = submit(&first, spec("unstarted")).await;
    let starts = wait_until(WAIT, "both tasks were sent to the worker", || {
        let fake = fake.clone();
        async move {
            let starts = starts_of(&fake).await;
            (starts.len() == 2).then_some(starts)
        }
    })
    .await;
    let start_running = starts.iter().find(|s| s.task_id == running.id).unwrap();
    let start_unstarted = starts.iter().find(|s| s.task_id == unstarted.id).unwrap();
    let container = ContainerId("c0ffee".repeat(10) + "abcd");
    let mut report = status(
        running.id,
        start_running.attempt,
        TaskState::Running,
        "container started",
    );
    report.container_id = Some(container.clone());
    fake.send(Emit(ReportBody::TaskStatus(report)))
        .await
        .unwrap();
    wait_for_task(
        &first,
        running.id,
        "the running report was not applied",
        |t| t.state == TaskState::Running,
    )
    .await;

    // The worker's records after a crash of the manager: the first task runs; the start of
    // the second never reached it.
    let copy = crash_copy(&store);
    let second = Manager::new(round_robin_config(), Box::new(copy))
        .unwrap()
        .start();
    let (fake, handle) = FakeWorker::start("w1", FakeOptions::default());
    fake.send(SetListedTasks(vec![running_record(
        start_running,
        &container,
    )]))
    .await
    .unwrap();
    add_worker(&second, handle).await;

    let resent = wait_until(WAIT, "the lost start was not sent again", || {
        let fake = fake.clone();
        async move {
            let starts = starts_of(&fake).await;
            (!starts.is_empty()).then_some(starts)
        }
    })
    .await;
    assert_eq!(
        resent.len(),
        1,
        "only the unstarted task is sent again: {resent:?}"
    );
    assert_eq!(resent[0].task_id, unstarted.id);
    assert_eq!(resent[0].attempt, start_unstarted.attempt, "same attempt");

    let kept = task(&second, running.id).await;
    assert_eq!(kept.state, TaskState::Running);
    assert_eq!(kept.container_id, Some(container));
    assert_eq!(kept.attempt, Some(start_running.attempt));
    let node = &nodes(&second).await[0];
    assert_eq!(
        node.task_count, 2,
        "both allocations are booked again: {node:?}"
    );
    assert_eq!(
        task(&second, unstarted.id).await.state,
        TaskState::Scheduled
    );
}
