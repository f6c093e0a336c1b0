//! Worker and supervisor behaviour on the simulated runtime.

use std::sync::Arc;
use std::time::Duration;

use cube_core::{
    AttemptId, CommandError, DescribeNode, ListTasks, ReportBody, STOPPED_BY_USER, StopTask,
    TaskId, TaskState,
};
use cube_worker::simulated::{SIGKILL_EXIT_CODE, SIGTERM_EXIT_CODE};
use cube_worker::worker::GetTask;
use cube_worker::{SimulatedBehaviour, SimulatedRuntime, Worker};

use crate::support::{
    ReportProbe, SharedStore, config, eventually, spec, spec_with_port, start_msg, start_worker,
};

fn runtime(behaviour: SimulatedBehaviour) -> SimulatedRuntime {
    SimulatedRuntime::new(behaviour)
}

fn stop(task_id: TaskId) -> StopTask {
    StopTask {
        task_id,
        attempt: None,
        reason: STOPPED_BY_USER.into(),
    }
}

#[actix::test]
async fn start_reports_running_with_ports() {
    let runtime = runtime(SimulatedBehaviour::run_until_stopped());
    let worker = start_worker(config("sim-1"), Arc::new(runtime.clone()));
    let mut probe = ReportProbe::subscribe(&worker, 0);

    let start = start_msg(spec_with_port("img", 80));
    let task_id = start.task_id;
    worker.send(start).await.unwrap().unwrap();

    let running = probe.wait_status(task_id, TaskState::Running).await;
    assert!(running.container_id.is_some());
    assert_eq!(running.host_ports.len(), 1);
    assert_eq!(running.host_ports[0].container_port, 80);
    assert_eq!(running.host_ports[0].host_ip, "127.0.0.1");
    assert_eq!(runtime.running_count(), 1);

    let record = worker.send(GetTask { task_id }).await.unwrap().unwrap();
    assert_eq!(record.state, TaskState::Running);
    assert_eq!(record.container_id, running.container_id);
    assert!(record.started_at.is_some());
}

#[actix::test]
async fn exit_zero_completes_and_removes() {
    let runtime = runtime(SimulatedBehaviour::exit_after(Duration::from_millis(50), 0));
    let worker = start_worker(config("sim-1"), Arc::new(runtime.clone()));
    let mut probe = ReportProbe::subscribe(&worker, 0);

    let start = start_msg(spec("img"));
    let task_id = start.task_id;
    worker.send(start).await.unwrap().unwrap();

    probe.wait_status(task_id, TaskState::Running).await;
    let completed = probe.wait_status(task_id, TaskState::Completed).await;
    assert_eq!(completed.exit_code, Some(0));
    assert_eq!(completed.reason, "container exited with code 0");
    eventually("the exited container is removed", || {
        runtime.container_count() == 0
    })
    .await;
}

#[actix::test]
async fn exit_three_fails_with_code() {
    let runtime = runtime(SimulatedBehaviour::exit_after(Duration::from_millis(20), 3));
    let worker = start_worker(config("sim-1"), Arc::new(runtime.clone()));
    let mut probe = ReportProbe::subscribe(&worker, 0);

    let start = start_msg(spec("img"));
    let task_id = start.task_id;
    worker.send(start).await.unwrap().unwrap();

    let failed = probe.wait_status(task_id, TaskState::Failed).await;
    assert_eq!(failed.exit_code, Some(3));
    assert!(failed.reason.contains("code 3"), "{}", failed.reason);
    let record = worker.send(GetTask { task_id }).await.unwrap().unwrap();
    assert_eq!(record.state, TaskState::Failed);
    assert_eq!(record.exit_code, Some(3));
    assert!(record.finished_at.is_some());
}

#[actix::test]
async fn start_failure_fails_with_reason() {
    let runtime = runtime(SimulatedBehaviour::fail_to_start("disk full"));
    let worker = start_worker(config("sim-1"), Arc::new(runtime.clone()));
    let mut probe = ReportProbe::subscribe(&worker, 0);

    let start = start_msg(spec("img"));
    let task_id = start.task_id;
    worker.send(start).await.unwrap().unwrap();

    let failed = probe.wait_status(task_id, TaskState::Failed).await;
    assert!(failed.reason.contains("disk full"), "{}", failed.reason);
    assert_eq!(failed.container_id, None);
    assert_eq!(runtime.container_count(), 0);
}

#[actix::test]
async fn missing_image_fails_naming_image() {
    let runtime = runtime(SimulatedBehaviour::run_until_stopped());
    runtime.remove_image("cube-test/absent:1");
    let worker = start_worker(config("sim-1"), Arc::new(runtime.clone()));
    let mut probe = ReportProbe::subscribe(&worker, 0);

    let start = start_msg(spec("cube-test/absent:1"));
    let task_id = start.task_id;
    worker.send(start).await.unwrap().unwrap();

    let failed = probe.wait_status(task_id, TaskState::Failed).await;
    assert!(
        failed.reason.contains("cube-test/absent:1"),
        "{}",
        failed.reason
    );
    assert_eq!(runtime.started_total(), 0);
}

#[actix::test]
async fn stop_during_start_leaves_no_container() {
    let behaviour =
        SimulatedBehaviour::run_until_stopped().with_start_delay(Duration::from_millis(200));
    let runtime = runtime(behaviour);
    let worker = start_worker(config("sim-1"), Arc::new(runtime.clone()));
    let mut probe = ReportProbe::subscribe(&worker, 0);

    let start = start_msg(spec("img"));
    let task_id = start.task_id;
    worker.send(start).await.unwrap().unwrap();
    worker.send(stop(task_id)).await.unwrap().unwrap();

    let completed = probe.wait_status(task_id, TaskState::Completed).await;
    assert_eq!(completed.reason, STOPPED_BY_USER);
    assert_eq!(runtime.started_total(), 1, "the start itself went through");
    assert_eq!(runtime.running_count(), 0);
    assert_eq!(runtime.container_count(), 0);
    let states: Vec<TaskState> = probe.statuses_of(task_id).iter().map(|s| s.state).collect();
    assert_eq!(
        states,
        vec![TaskState::Completed],
        "no running report for a stopped start"
    );
}

#[actix::test]
async fn stop_running_task_completes_and_removes() {
    let runtime = runtime(SimulatedBehaviour::run_until_stopped());
    let worker = start_worker(config("sim-1"), Arc::new(runtime.clone()));
    let mut probe = ReportProbe::subscribe(&worker, 0);

    let start = start_msg(spec("img"));
    let task_id = start.task_id;
    worker.send(start).await.unwrap().unwrap();
    probe.wait_status(task_id, TaskState::Running).await;
    worker.send(stop(task_id)).await.unwrap().unwrap();

    let completed = probe.wait_status(task_id, TaskState::Completed).await;
    assert_eq!(completed.reason, STOPPED_BY_USER);
    assert_eq!(completed.exit_code, Some(SIGTERM_EXIT_CODE));
    assert_eq!(runtime.container_count(), 0);
    let record = worker.send(GetTask { task_id }).await.unwrap().unwrap();
    assert!(record.stop_requested);
    assert_eq!(record.state, TaskState::Completed);
}

#[actix::test]
async fn stop_of_sigterm_ignoring_task_waits_for_grace() {
    let runtime = runtime(SimulatedBehaviour::run_until_stopped().ignoring_sigterm());
    let worker = start_worker(config("sim-1"), Arc::new(runtime.clone()));
    let mut probe = ReportProbe::subscribe(&worker, 0);

    let mut spec = spec("img");
    spec.stop_grace_period = cube_core::DurationSpec::from_millis(300);
    let start = start_msg(spec);
    let task_id = start.task_id;
    worker.send(start).await.unwrap().unwrap();
    probe.wait_status(task_id, TaskState::Running).await;

    let stop_sent = std::time::Instant::now();
    worker.send(stop(task_id)).await.unwrap().unwrap();
    let completed = probe.wait_status(task_id, TaskState::Completed).await;
    assert!(stop_sent.elapsed() >= Duration::from_millis(300));
    assert_eq!(completed.exit_code, Some(SIGKILL_EXIT_CODE));
    assert_eq!(runtime.container_count(), 0);
}

#[actix::test]
async fn repeated_start_makes_one_container() {
    let runtime = runtime(SimulatedBehaviour::run_until_stopped());
    let worker = start_worker(config("sim-1"), Arc::new(runtime.clone()));
    let mut probe = ReportProbe::subscribe(&worker, 0);

    let start = start_msg(spec("img"));
    let task_id = start.task_id;
    worker.send(start.clone()).await.unwrap().unwrap();
    worker.send(start.clone()).await.unwrap().unwrap();
    probe.wait_status(task_id, TaskState::Running).await;
    worker.send(start).await.unwrap().unwrap();

    // A later report proves the worker handled everything sent before it.
    let other = start_msg(spec("img"));
    let other_id = other.task_id;
    worker.send(other).await.unwrap().unwrap();
    probe.wait_status(other_id, TaskState::Running).await;
    assert_eq!(runtime.started_total(), 2);
    assert_eq!(probe.statuses_of(task_id).len(), 1);
}

#[actix::test]
async fn new_attempt_stops_old_one_first() {
    let runtime = runtime(SimulatedBehaviour::run_until_stopped());
    let worker = start_worker(config("sim-1"), Arc::new(runtime.clone()));
    let mut probe = ReportProbe::subscribe(&worker, 0);

    let first = start_msg(spec_with_port("img", 80));
    let task_id = first.task_id;
    worker.send(first.clone()).await.unwrap().unwrap();
    let first_running = probe.wait_status(task_id, TaskState::Running).await;

    let mut second = first.clone();
    second.attempt = AttemptId::generate();
    worker.send(second.clone()).await.unwrap().unwrap();

    let ended = probe.wait_status(task_id, TaskState::Completed).await;
    assert_eq!(ended.attempt, first.attempt);
    assert!(
        ended.reason.contains("replaced by attempt"),
        "{}",
        ended.reason
    );
    let second_running = probe.wait_status(task_id, TaskState::Running).await;
    assert_eq!(second_running.attempt, second.attempt);
    assert_ne!(second_running.container_id, first_running.container_id);
    assert_eq!(runtime.running_count(), 1);

    let record = worker.send(GetTask { task_id }).await.unwrap().unwrap();
    assert_eq!(record.attempt, second.attempt);
    assert_eq!(record.state, TaskState::Running);
}

#[actix::test]
async fn stop_of_unknown_task_succeeds() {
    let runtime = runtime(SimulatedBehaviour::run_until_stopped());
    let worker = start_worker(config("sim-1"), Arc::new(runtime));
    let result = worker.send(stop(TaskId::generate())).await.unwrap();
    assert_eq!(result, Ok(()));
}

#[actix::test]
async fn invalid_spec_is_rejected() {
    let runtime = runtime(SimulatedBehaviour::run_until_stopped());
    let worker = start_worker(config("sim-1"), Arc::new(runtime.clone()));
    let mut spec = spec("img");
    spec.restart_policy.backoff = cube_core::DurationSpec::from_millis(0);
    let start = start_msg(spec);
    let task_id = start.task_id;

    let result = worker.send(start).await.unwrap();
    match result {
        Err(CommandError::Rejected { reason, .. }) => {
            assert!(reason.contains("restart_policy.backoff"), "{reason}");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(worker.send(GetTask { task_id }).await.unwrap(), None);
    assert_eq!(worker.send(ListTasks).await.unwrap().unwrap(), vec![]);
}

#[actix::test]
async fn sequence_numbers_strictly_increase() {
    // A worker numbers its reports from the wall clock in microseconds, so that a restarted
    // worker continues above every number it issued before.
    let floor = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let runtime = runtime(SimulatedBehaviour::exit_after(Duration::from_millis(30), 0));
    let mut config = config("sim-1");
    config.heartbeat_interval = Duration::from_millis(20);
    let worker = start_worker(config, Arc::new(runtime));
    let mut probe = ReportProbe::subscribe(&worker, 0);

    let mut task_ids = Vec::new();
    for _ in 0..5 {
        let start = start_msg(spec("img"));
        task_ids.push(start.task_id);
        worker.send(start).await.unwrap().unwrap();
    }
    for task_id in &task_ids {
        probe.wait_status(*task_id, TaskState::Completed).await;
    }

    let seqs: Vec<u64> = probe.seen.iter().map(|report| report.seq).collect();
    assert!(seqs[0] >= floor, "first seq {} is below {floor}", seqs[0]);
    assert!(
        seqs.windows(2).all(|pair| pair[1] == pair[0] + 1),
        "{seqs:?}"
    );
    assert!(
        probe
            .seen
            .iter()
            .all(|report| report.node.as_str() == "sim-1")
    );
    let heartbeats = probe.seen.iter();
    let heartbeats = heartbeats
        .filter(|r| matches!(r.body, ReportBody::Heartbeat(_)))
        .count();
    assert!(
        heartbeats >= 1,
        "no heartbeat among {} reports",
        probe.seen.len()
    );
}

#[actix::test]
async fn subscriber_replays_after_seq() {
    let runtime = runtime(SimulatedBehaviour::run_until_stopped());
    let worker = start_worker(config("sim-1"), Arc::new(runtime));
    let mut first = ReportProbe::subscribe(&worker, 0);

    let mut last = None;
    for _ in 0..3 {
        let start = start_msg(spec("img"));
        let task_id = start.task_id;
        worker.send(start).await.unwrap().unwrap();
        last = Some(first.wait_status(task_id, TaskState::Running).await);
    }
    assert_eq!(first.seen.len(), 3);
    let second_seq = first.seen[1].seq;

    let mut late = ReportProbe::subscribe(&worker, second_seq);
    let replayed = late.next().await;
    assert_eq!(replayed.seq, second_seq + 1);
    assert_eq!(replayed.body, ReportBody::TaskStatus(last.unwrap()));
}

#[actix::test]
async fn describe_node_uses_declared_capacity() {
    let runtime = runtime(SimulatedBehaviour::run_until_stopped());
    let worker = start_worker(config("sim-1"), Arc::new(runtime));
    let description = worker.send(DescribeNode).await.unwrap().unwrap();
    assert_eq!(description.id.as_str(), "sim-1");
    assert_eq!(description.capacity.cpu, 4.0);
    assert_eq!(description.capacity.memory, cube_core::ByteSize::gib(8));
    assert_eq!(description.publish_address, "127.0.0.1");
    assert_eq!(description.metrics, None);
}

#[actix::test]
async fn describe_node_samples_undeclared_capacity() {
    let runtime = runtime(SimulatedBehaviour::run_until_stopped());
    let mut config = config("sim-1");
    config.capacity.memory = None;
    config.metrics_interval = Some(Duration::from_secs(60));
    let worker = start_worker(config, Arc::new(runtime));
    let description = worker.send(DescribeNode).await.unwrap().unwrap();
    let metrics = description.metrics.expect("a sample was taken");
    assert_eq!(description.capacity.memory, metrics.memory_total);
    assert_eq!(description.capacity.cpu, 4.0);
}

#[actix::test]
async fn handle_drives_worker() {
    let runtime = runtime(SimulatedBehaviour::run_until_stopped());
    let config = config("sim-1");
    let node = config.node_id.clone();
    let worker = start_worker(config, Arc::new(runtime.clone()));
    let handle = cube_worker::handle(node, &worker);

    let start = start_msg(spec("img"));
    let task_id = start.task_id;
    handle
        .start_task(start, Duration::from_secs(1))
        .await
        .unwrap();
    let tasks = handle.list_tasks(Duration::from_secs(1)).await.unwrap();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].task_id, task_id);
    handle
        .stop_task(stop(task_id), Duration::from_secs(1))
        .await
        .unwrap();
    eventually("the container is removed", || {
        runtime.container_count() == 0
    })
    .await;
}

#[actix::test]
async fn restarted_worker_adopts_running_container() {
    let runtime = runtime(SimulatedBehaviour::run_until_stopped());
    let store = SharedStore::default();
    let worker = Worker::start(
        config("sim-1"),
        Arc::new(runtime.clone()),
        Box::new(store.clone()),
    );
    let mut probe = ReportProbe::subscribe(&worker, 0);
    let start = start_msg(spec("img"));
    let task_id = start.task_id;
    worker.send(start).await.unwrap().unwrap();
    probe.wait_status(task_id, TaskState::Running).await;
    // A second worker on the same store takes over, as after a crash. The first one's
    // supervisor still watches the container, which only adds a second remove.
    drop(probe);
    let restarted = Worker::start(
        config("sim-1"),
        Arc::new(runtime.clone()),
        Box::new(store.clone()),
    );
    let mut probe = ReportProbe::subscribe(&restarted, 0);

    let record = restarted.send(GetTask { task_id }).await.unwrap().unwrap();
    assert_eq!(record.state, TaskState::Running);
    restarted.send(stop(task_id)).await.unwrap().unwrap();
    let completed = probe.wait_status(task_id, TaskState::Completed).await;
    assert_eq!(completed.reason, STOPPED_BY_USER);
    assert_eq!(runtime.container_count(), 0);
}
