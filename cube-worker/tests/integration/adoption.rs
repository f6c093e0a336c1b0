//! A worker restarted over its store and the engine's containers: containers that vanished
//! while it was down, and containers with its labels that no record claims.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use cube_core::{
    AttemptId, ByteSize, ContainerId, LABEL_ATTEMPT, LABEL_NODE, LABEL_TASK, RestartMode,
    STOPPED_BY_USER, StopTask, TaskId, TaskState,
};
use cube_worker::runtime::{ContainerConfig, ContainerRuntime};
use cube_worker::{SimulatedBehaviour, SimulatedRuntime, Worker, WorkerConfig};

use crate::support::{ReportProbe, SharedStore, config, eventually, spec, start_msg};

/// A worker config whose actor stops at its next heartbeat once its address is dropped.
fn short_lived(node: &str) -> WorkerConfig {
    let mut config = config(node);
    config.heartbeat_interval = Duration::from_millis(10);
    config
}

/// Starts a task on a worker over `store`, waits until it runs, then drops the worker as a
/// crash would; returns the task, its attempt and its container.
async fn run_then_crash(
    runtime: &SimulatedRuntime,
    store: &SharedStore,
    restart: RestartMode,
) -> (TaskId, AttemptId, ContainerId) {
    let worker = Worker::start(
        short_lived("sim-1"),
        Arc::new(runtime.clone()),
        Box::new(store.clone()),
    );
    let mut probe = ReportProbe::subscribe(&worker, 0);
    let mut spec = spec("img");
    spec.restart_policy.mode = restart;
    spec.restart_policy.max_attempts = 1;
    let start = start_msg(spec);
    let (task_id, attempt) = (start.task_id, start.attempt);
    worker.send(start).await.unwrap().unwrap();
    let running = probe.wait_status(task_id, TaskState::Running).await;
    drop(worker);
    drop(probe);
    // The dropped worker stops at its next heartbeat, so it records nothing more.
    tokio::time::sleep(Duration::from_millis(50)).await;
    (task_id, attempt, running.container_id.unwrap())
}

#[actix::test]
async fn vanished_container_fails_task_as_container_missing() {
    let runtime = SimulatedRuntime::new(SimulatedBehaviour::run_until_stopped());
    let store = SharedStore::default();
    let (task_id, attempt, container) = run_then_crash(&runtime, &store, RestartMode::Never).await;
    runtime.remove_container(&container).await.unwrap();

    let restarted = Worker::start(
        config("sim-1"),
        Arc::new(runtime.clone()),
        Box::new(store.clone()),
    );
    let mut probe = ReportProbe::subscribe(&restarted, 0);

    let failed = probe.wait_status(task_id, TaskState::Failed).await;
    assert_eq!(failed.attempt, attempt);
    assert_eq!(failed.reason, "container missing");
    assert_eq!(runtime.started_total(), 1, "nothing is started again");
}

#[actix::test]
async fn vanished_container_restarts_per_policy() {
    let runtime = SimulatedRuntime::new(SimulatedBehaviour::run_until_stopped());
    let store = SharedStore::default();
    let (task_id, attempt, container) =
        run_then_crash(&runtime, &store, RestartMode::OnFailure).await;
    runtime.remove_container(&container).await.unwrap();

    let restarted = Worker::start(
        config("sim-1"),
        Arc::new(runtime.clone()),
        Box::new(store.clone()),
    );
    let mut probe = ReportProbe::subscribe(&restarted, 0);

    let waiting = probe.wait_status(task_id, TaskState::Scheduled).await;
    assert!(
        waiting.reason.starts_with("container missing"),
        "{}",
        waiting.reason
    );
    let running = probe.wait_status(task_id, TaskState::Running).await;
    assert_eq!(running.replaces, Some(attempt));
    assert_eq!(running.restart_count, 1);
    assert_eq!(runtime.running_count(), 1);
}

#[actix::test]
async fn adopted_container_keeps_its_id() {
    let runtime = SimulatedRuntime::new(SimulatedBehaviour::run_until_stopped());
    let store = SharedStore::default();
    let (task_id, attempt, container) = run_then_crash(&runtime, &store, RestartMode::Never).await;

    let restarted = Worker::start(
        config("sim-1"),
        Arc::new(runtime.clone()),
        Box::new(store.clone()),
    );
    let mut probe = ReportProbe::subscribe(&restarted, 0);
    // Adoption lists the containers first; the simulated engine returns at once.
    tokio::time::sleep(Duration::from_millis(20)).await;
    restarted
        .send(StopTask {
            task_id,
            attempt: None,
            reason: STOPPED_BY_USER.to_owned(),
        })
        .await
        .unwrap()
        .unwrap();

    let completed = probe.wait_status(task_id, TaskState::Completed).await;
    assert_eq!(completed.attempt, attempt, "the adopted attempt ends");
    assert_eq!(
        completed.container_id,
        Some(container),
        "its container is the one adopted"
    );
    assert_eq!(
        runtime.started_total(),
        1,
        "the container was adopted, not started again"
    );
    assert_eq!(runtime.container_count(), 0);
}

/// Starts a container in `runtime` labelled for `node`, as an earlier worker would have.
async fn labelled_container(runtime: &SimulatedRuntime, node: &str) -> ContainerId {
    let labels = BTreeMap::from([
        (LABEL_NODE.to_owned(), node.to_owned()),
        (LABEL_TASK.to_owned(), TaskId::generate().to_string()),
        (LABEL_ATTEMPT.to_owned(), AttemptId::generate().to_string()),
    ]);
    let config = ContainerConfig {
        name: format!("stray-{node}"),
        image: "img".to_owned(),
        command: Vec::new(),
        env: BTreeMap::new(),
        cpu: 0.1,
        memory: ByteSize::mib(8),
        labels,
        ports: Vec::new(),
        publish_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    runtime.start_container(config).await.unwrap().id
}

#[actix::test]
async fn containers_without_record_are_removed() {
    let runtime = SimulatedRuntime::new(SimulatedBehaviour::run_until_stopped());
    labelled_container(&runtime, "sim-1").await;
    let other_node = labelled_container(&runtime, "sim-2").await;

    let _worker = Worker::start(
        config("sim-1"),
        Arc::new(runtime.clone()),
        Box::new(SharedStore::default()),
    );

    eventually("the stray container of this node is removed", || {
        runtime.container_count() == 1
    })
    .await;
    let left: Vec<ContainerId> = runtime
        .containers()
        .into_iter()
        .map(|info| info.id)
        .collect();
    assert_eq!(
        left,
        vec![other_node],
        "another node's container is left alone"
    );
}
