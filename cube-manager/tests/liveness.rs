//! Node liveness against fake workers: a silent node goes down and its tasks are placed
//! elsewhere, a returning node is told to stop its stale attempts, and liveness is judged on
//! the manager's clock alone, whatever the workers' timestamps say.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use chrono::Utc;

use cube_core::clock::{ManualClock, SharedClock};
use cube_core::event::TaskEvent;
use cube_core::ids::{AttemptId, NodeId, TaskId};
use cube_core::messages::{ReportBody, WorkerReport};
use cube_core::node::NodeStatus;
use cube_core::store::{Batch, MemoryStore, NodeRecord, Store, StoreError};
use cube_core::task::{Task, TaskState};
use cube_core::worker_task::WorkerTask;
use cube_core::{PortMapping, Resources};
use cube_manager::{Manager, ManagerConfig};

use crate::util::fake_worker::{
    Emit, EmitRaw, FakeOptions, FakeWorker, GetCommands, SetListedTasks, heartbeat, status,
};
use crate::util::*;

const TTL: Duration = Duration::from_millis(300);
const GRACE: Duration = Duration::from_millis(300);
const CHECK: Duration = Duration::from_millis(20);

/// A store whose events the test can read while the manager owns it.
#[derive(Clone, Default)]
struct SharedStore(Arc<Mutex<MemoryStore>>);

impl SharedStore {
    fn events(&self) -> Vec<TaskEvent> {
        self.0.lock().unwrap().events_after(0, usize::MAX).unwrap()
    }
}

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
}

fn short_liveness(clock: SharedClock) -> ManagerConfig {
    ManagerConfig {
        heartbeat_ttl: TTL,
        heartbeat_grace: GRACE,
        liveness_check_interval: Some(CHECK),
        clock,
        ..round_robin_config()
    }
}

fn start(config: ManagerConfig) -> (Addr<Manager>, SharedStore) {
    init_logging();
    let store = SharedStore::default();
    let manager = Manager::new(config, Box::new(store.clone()))
        .expect("test manager config is valid")
        .start();
    (manager, store)
}

/// A heartbeat loop that stops when dropped.
struct Beating(tokio::task::JoinHandle<()>);

impl Drop for Beating {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends a heartbeat from `fake` every 100 ms until the returned guard is dropped.
fn keep_beating(fake: &Addr<FakeWorker>) -> Beating {
    let fake = fake.clone();
    Beating(actix::spawn(async move {
        loop {
            let _ = fake
                .send(Emit(heartbeat(FakeOptions::default().capacity)))
                .await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }))
}

async fn node_status(manager: &Addr<Manager>, name: &str) -> NodeStatus {
    nodes(manager)
        .await
        .into_iter()
        .find(|node| node.id.as_str() == name)
        .unwrap_or_else(|| panic!("node {name} is registered"))
        .status
}

async fn wait_node_status(manager: &Addr<Manager>, name: &str, expected: NodeStatus) {
    wait_until(
        WAIT,
        &format!("node {name} never became {expected:?}"),
        || async { (node_status(manager, name).await == expected).then_some(()) },
    )
    .await;
}

async fn emit_running(fake: &Addr<FakeWorker>, task: &Task) {
    let attempt = task.attempt.expect("task has an attempt");
    let body = ReportBody::TaskStatus(status(task.id, attempt, TaskState::Running, "started"));
    bounded(fake.send(Emit(body)), "fake worker did not answer")
        .await
        .expect("fake worker alive")
        .expect("manager subscribed to the fake's reports");
}

fn listed(task: &Task, attempt: AttemptId) -> WorkerTask {
    WorkerTask {
        task_id: task.id,
        attempt,
        spec: task.spec.clone(),
        ports: PortMapping::from_spec(&task.spec),
        state: TaskState::Running,
        container_id: None,
        host_ports: Vec::new(),
        exit_code: None,
        reason: None,
        stop_requested: false,
        accepted_at: Utc::now(),
        started_at: Some(Utc::now()),
        finished_at: None,
        restart_count: 0,
        next_attempt_at: None,
        replaces: None,
    }
}

/// Sends a heartbeat from `fake` stamped `skew` away from the real time, with sequence
/// number `seq`, and waits until the manager has handled it.
async fn skewed_heartbeat(
    manager: &Addr<Manager>,
    fake: &Addr<FakeWorker>,
    seq: u64,
    skew: chrono::Duration,
) {
    let report = WorkerReport {
        node: NodeId::new("w1").unwrap(),
        seq,
        at: Utc::now() + skew,
        body: heartbeat(Resources::default()),
    };
    bounded(fake.send(EmitRaw(report)), "fake worker did not answer")
        .await
        .expect("fake worker alive")
        .expect("manager subscribed to the fake's reports");
    // The manager handles its mailbox in order, so this answer follows the heartbeat.
    nodes(manager).await;
}

#[actix::test]
async fn silent_node_task_moves_elsewhere() {
    let (manager, store) = start(short_liveness(cube_core::clock::system_clock()));
    let w1 = add_fake(&manager, "w1", FakeOptions::default()).await;
    let w1_beat = keep_beating(&w1);
    let task = submit(&manager, spec("a")).await;
    let placed = wait_for_task(&manager, task.id, "never placed on w1", |task| {
        task.state == TaskState::Scheduled
    })
    .await;
    emit_running(&w1, &placed).await;
    wait_for_task(&manager, task.id, "never running", |task| {
        task.state == TaskState::Running
    })
    .await;
    let w2 = add_fake(&manager, "w2", FakeOptions::default()).await;
    let _w2_beat = keep_beating(&w2);

    drop(w1_beat);
    wait_node_status(&manager, "w1", NodeStatus::Down).await;
    let moved = wait_for_task(&manager, task.id, "never placed on w2", |task| {
        task.node.as_ref().map(NodeId::as_str) == Some("w2")
    })
    .await;

    assert_eq!(moved.state, TaskState::Scheduled);
    assert_ne!(
        moved.attempt, placed.attempt,
        "a replacement is a new attempt"
    );
    let last_error = moved.last_error.clone().unwrap_or_default();
    assert!(last_error.contains("node w1 is down"), "{last_error}");
    let views = nodes(&manager).await;
    let w1_view = views.iter().find(|n| n.id.as_str() == "w1").unwrap();
    assert_eq!(
        w1_view.task_count, 0,
        "the lost task's allocation is released"
    );
    let states: Vec<(TaskState, TaskState)> = store
        .events()
        .iter()
        .filter(|event| event.task_id == task.id)
        .map(|event| (event.from, event.to))
        .collect();
    assert_eq!(
        states,
        vec![
            (TaskState::Pending, TaskState::Scheduled),
            (TaskState::Scheduled, TaskState::Running),
            (TaskState::Running, TaskState::Lost),
            (TaskState::Lost, TaskState::Pending),
            (TaskState::Pending, TaskState::Scheduled),
        ]
    );

    let started = bounded(w2.send(GetCommands), "fake w2 did not answer")
        .await
        .unwrap()
        .starts;
    assert_eq!(started.len(), 1);
    assert_eq!(Some(started[0].attempt), moved.attempt);
    emit_running(&w2, &moved).await;
    wait_for_task(&manager, task.id, "never running on w2", |task| {
        task.state == TaskState::Running
    })
    .await;
}

#[actix::test]
async fn returning_node_stops_stale_attempt() {
    let (manager, _store) = start(short_liveness(cube_core::clock::system_clock()));
    let w1 = add_fake(&manager, "w1", FakeOptions::default()).await;
    let task = submit(&manager, spec("a")).await;
    let placed = wait_for_task(&manager, task.id, "never placed on w1", |task| {
        task.state == TaskState::Scheduled
    })
    .await;
    let stale = placed.attempt.unwrap();
    emit_running(&w1, &placed).await;
    let w2 = add_fake(&manager, "w2", FakeOptions::default()).await;
    let _w2_beat = keep_beating(&w2);
    wait_node_status(&manager, "w1", NodeStatus::Down).await;
    let moved = wait_for_task(&manager, task.id, "never moved to w2", |task| {
        task.node.as_ref().map(NodeId::as_str) == Some("w2")
    })
    .await;

    // w1 comes back still running the old attempt.
    bounded(
        w1.send(SetListedTasks(vec![listed(&placed, stale)])),
        "fake w1 did not answer",
    )
    .await
    .unwrap();
    let _w1_beat = keep_beating(&w1);
    wait_node_status(&manager, "w1", NodeStatus::Ready).await;

    let stop = wait_until(
        WAIT,
        "w1 was never told to stop the stale attempt",
        || async {
            let commands = w1.send(GetCommands).await.unwrap();
            commands
                .stops
                .into_iter()
                .find(|stop| stop.task_id == task.id)
        },
    )
    .await;
    assert_eq!(stop.attempt, Some(stale));
    let new_attempt = moved.attempt.unwrap().to_string();
    assert!(stop.reason.contains(&new_attempt), "{}", stop.reason);
    assert!(stop.reason.contains("w2"), "{}", stop.reason);
    let current = task_of(&manager, task.id).await;
    assert_eq!(
        current.attempt, moved.attempt,
        "the replacement stays current"
    );
    let w2_stops = w2.send(GetCommands).await.unwrap().stops;
    assert!(
        w2_stops.is_empty(),
        "the replacement is not stopped: {w2_stops:?}"
    );
}

#[actix::test]
async fn stale_running_report_gets_stop() {
    let (manager, _store) = start(short_liveness(cube_core::clock::system_clock()));
    let w1 = add_fake(&manager, "w1", FakeOptions::default()).await;
    let task = submit(&manager, spec("a")).await;
    let placed = wait_for_task(&manager, task.id, "never placed on w1", |task| {
        task.state == TaskState::Scheduled
    })
    .await;
    let w2 = add_fake(&manager, "w2", FakeOptions::default()).await;
    let _w2_beat = keep_beating(&w2);
    wait_node_status(&manager, "w1", NodeStatus::Down).await;
    wait_for_task(&manager, task.id, "never moved to w2", |task| {
        task.node.as_ref().map(NodeId::as_str) == Some("w2")
    })
    .await;

    // w1 returns and reports that the old attempt runs, as a worker that adopted it would.
    emit_running(&w1, &placed).await;

    let stop = wait_until(
        WAIT,
        "the stale running report was not answered",
        || async {
            let commands = w1.send(GetCommands).await.unwrap();
            commands
                .stops
                .into_iter()
                .find(|stop| stop.task_id == task.id)
        },
    )
    .await;
    assert_eq!(stop.attempt, placed.attempt);
    wait_node_status(&manager, "w1", NodeStatus::Ready).await;
    let current = task_of(&manager, task.id).await;
    assert_eq!(current.node.as_ref().map(NodeId::as_str), Some("w2"));
}

#[actix::test]
async fn worker_clock_skew_is_ignored() {
    for minutes in [10, -10] {
        let skew = chrono::Duration::minutes(minutes);
        let clock = ManualClock::new(Utc::now());
        let (manager, _store) = start(short_liveness(Arc::new(clock.clone())));
        let w1 = add_fake(&manager, "w1", FakeOptions::default()).await;
        let mut seq = 0;

        // Reports every 200 ms of manager time, for longer than TTL + grace: alive.
        for _ in 0..6 {
            clock.advance(Duration::from_millis(200));
            seq += 1;
            skewed_heartbeat(&manager, &w1, seq, skew).await;
            tokio::time::sleep(3 * CHECK).await;
            assert_eq!(
                node_status(&manager, "w1").await,
                NodeStatus::Ready,
                "a node reporting within TTL + grace is alive, skew {minutes} min"
            );
        }

        // Silent, but the manager's clock has not passed TTL + grace yet: still alive,
        // whatever real time passes.
        clock.advance(TTL + GRACE - Duration::from_millis(50));
        tokio::time::sleep(5 * CHECK).await;
        assert_eq!(
            node_status(&manager, "w1").await,
            NodeStatus::Ready,
            "skew {minutes} min"
        );

        // Past TTL + grace on the manager's clock: down.
        clock.advance(Duration::from_millis(100));
        wait_node_status(&manager, "w1", NodeStatus::Down).await;

        // One report, stamped as wrongly as before, makes it ready again.
        seq += 1;
        skewed_heartbeat(&manager, &w1, seq, skew).await;
        wait_node_status(&manager, "w1", NodeStatus::Ready).await;
    }
}

#[actix::test]
async fn manager_answers_while_a_node_is_down() {
    let options = FakeOptions {
        // Every start hangs far beyond the test, as a dead address would.
        start_delay: Duration::from_secs(3600),
        ..FakeOptions::default()
    };
    let (manager, _store) = start(short_liveness(cube_core::clock::system_clock()));
    add_fake(&manager, "w1", options).await;
    let task = submit(&manager, spec("a")).await;
    wait_for_task(&manager, task.id, "never placed", |task| {
        task.state == TaskState::Scheduled
    })
    .await;
    wait_node_status(&manager, "w1", NodeStatus::Down).await;

    let pending = wait_for_task(&manager, task.id, "never back to pending", |task| {
        task.state == TaskState::Pending
    })
    .await;
    assert_eq!(pending.node, None);
    let answered = tokio::time::timeout(Duration::from_secs(1), submit(&manager, spec("b"))).await;
    assert!(
        answered.is_ok(),
        "the manager must not wait for the dead node"
    );
}

async fn task_of(manager: &Addr<Manager>, task_id: TaskId) -> Task {
    task(manager, task_id).await
}
