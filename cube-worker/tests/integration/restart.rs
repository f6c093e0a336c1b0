//! Restart policies on the simulated runtime: restarts up to the limit, back-off that grows,
//! stops during a back-off, and start failures counted as failed attempts.
//!
//! Every test pauses tokio's clock, so back-off delays pass at once, and the instant at which
//! a report arrives is the simulated time of the event it reports.

use std::sync::Arc;
use std::time::Duration;

use cube_core::{
    AttemptId, DurationSpec, RESTART_JITTER, ReportBody, RestartMode, RestartPolicy,
    STOPPED_BY_USER, StopTask, TaskId, TaskSpec, TaskState, TaskStatusReport,
};
use cube_worker::runtime::container_name;
use cube_worker::worker::GetTask;
use cube_worker::{SimulatedBehaviour, SimulatedRuntime, Worker};
use tokio::time::Instant;

use crate::support::{ReportProbe, SharedStore, config, eventually, spec, start_msg, start_worker};

/// Time a simulated container runs before it exits on its own.
const RUN_TIME: Duration = Duration::from_millis(10);

fn restart_spec(mode: RestartMode, max_attempts: u32, backoff_ms: u64) -> TaskSpec {
    let mut spec = spec("img");
    spec.restart_policy = RestartPolicy {
        mode,
        max_attempts,
        backoff: DurationSpec::from_millis(backoff_ms),
        max_backoff: DurationSpec::from_secs(60),
    };
    spec
}

fn stop(task_id: TaskId, attempt: Option<AttemptId>) -> StopTask {
    StopTask {
        task_id,
        attempt,
        reason: STOPPED_BY_USER.into(),
    }
}

/// Collects `task_id`'s status reports, each with the instant it arrived, until a terminal
/// one.
async fn until_terminal(
    probe: &mut ReportProbe,
    task_id: TaskId,
) -> Vec<(Instant, TaskStatusReport)> {
    let mut statuses = Vec::new();
    loop {
        let report = probe.next().await;
        let ReportBody::TaskStatus(status) = report.body else {
            continue;
        };
        if status.task_id != task_id {
            continue;
        }
        let terminal = status.state.is_terminal();
        statuses.push((Instant::now(), status));
        if terminal {
            return statuses;
        }
    }
}

fn states(statuses: &[(Instant, TaskStatusReport)]) -> Vec<TaskState> {
    statuses.iter().map(|(_, status)| status.state).collect()
}

fn running(statuses: &[(Instant, TaskStatusReport)]) -> Vec<(Instant, TaskStatusReport)> {
    let running = statuses.iter().cloned();
    running
        .filter(|(_, status)| status.state == TaskState::Running)
        .collect()
}

/// Returns the states of a task restarted `restarts` times, ending in `last`.
fn restart_states(restarts: usize, last: TaskState) -> Vec<TaskState> {
    let mut expected = Vec::new();
    for _ in 0..restarts {
        expected.extend([TaskState::Running, TaskState::Scheduled]);
    }
    expected.extend([TaskState::Running, last]);
    expected
}

#[actix::test]
async fn on_failure_restarts_until_limit_then_fails() {
    tokio::time::pause();
    let runtime = SimulatedRuntime::new(SimulatedBehaviour::exit_after(RUN_TIME, 1));
    let worker = start_worker(config("sim-1"), Arc::new(runtime.clone()));
    let mut probe = ReportProbe::subscribe(&worker, 0);

    let start = start_msg(restart_spec(RestartMode::OnFailure, 3, 100));
    let (task_id, first_attempt) = (start.task_id, start.attempt);
    worker.send(start).await.unwrap().unwrap();
    let statuses = until_terminal(&mut probe, task_id).await;

    assert_eq!(states(&statuses), restart_states(3, TaskState::Failed));
    let failed = &statuses.last().unwrap().1;
    assert_eq!(
        failed.reason,
        "container exited with code 1; restart limit of 3 reached"
    );
    assert_eq!(failed.exit_code, Some(1));
    assert_eq!(failed.restart_count, 3);
    assert_eq!(runtime.started_total(), 4);

    // Each restart is a new attempt that names the one it replaces.
    let runs = running(&statuses);
    assert_eq!(runs[0].1.attempt, first_attempt);
    assert_eq!(runs[0].1.replaces, None);
    for (index, pair) in runs.windows(2).enumerate() {
        let (before, after) = (&pair[0].1, &pair[1].1);
        assert_ne!(after.attempt, before.attempt, "restart {}", index + 1);
        assert_eq!(
            after.replaces,
            Some(before.attempt),
            "restart {}",
            index + 1
        );
        assert_eq!(after.restart_count, index as u32 + 1);
        assert_ne!(after.container_id, before.container_id);
    }
    for (_, status) in &statuses {
        if status.state == TaskState::Scheduled {
            assert!(status.next_attempt_at.is_some(), "{status:?}");
            assert!(status.reason.contains("restart"), "{}", status.reason);
        }
    }

    let record = worker.send(GetTask { task_id }).await.unwrap().unwrap();
    assert_eq!(record.state, TaskState::Failed);
    assert_eq!(record.restart_count, 3);
    assert_eq!(record.attempt, runs[3].1.attempt);
    assert_eq!(record.replaces, Some(runs[2].1.attempt));
    assert_eq!(record.next_attempt_at, None);
    eventually("every exited container is removed", || {
        runtime.container_count() == 0
    })
    .await;
}

#[actix::test]
async fn restarted_attempt_names_its_container_after_itself() {
    tokio::time::pause();
    let runtime = SimulatedRuntime::new(SimulatedBehaviour::run_until_stopped());
    let worker = start_worker(config("sim-1"), Arc::new(runtime.clone()));
    let mut probe = ReportProbe::subscribe(&worker, 0);

    let start = start_msg(restart_spec(RestartMode::OnFailure, 3, 100));
    let task_id = start.task_id;
    worker.send(start).await.unwrap().unwrap();
    let first = probe.wait_status(task_id, TaskState::Running).await;
    runtime.exit_container(first.container_id.as_ref().unwrap(), 2);
    let second = probe.wait_status(task_id, TaskState::Running).await;

    assert_eq!(second.replaces, Some(first.attempt));
    let containers = runtime.containers();
    assert_eq!(containers.len(), 1, "the old container is removed first");
    assert_eq!(containers[0].name, container_name(task_id, second.attempt));
    assert_eq!(
        containers[0].labels.get(cube_core::LABEL_ATTEMPT),
        Some(&second.attempt.to_string())
    );
}

#[actix::test]
async fn always_restarts_container_that_exits_zero() {
    tokio::time::pause();
    let runtime = SimulatedRuntime::new(SimulatedBehaviour::exit_after(RUN_TIME, 0));
    let worker = start_worker(config("sim-1"), Arc::new(runtime.clone()));
    let mut probe = ReportProbe::subscribe(&worker, 0);

    let start = start_msg(restart_spec(RestartMode::Always, 2, 50));
    let task_id = start.task_id;
    worker.send(start).await.unwrap().unwrap();
    let statuses = until_terminal(&mut probe, task_id).await;

    assert_eq!(states(&statuses), restart_states(2, TaskState::Completed));
    let last = &statuses.last().unwrap().1;
    assert_eq!(
        last.reason,
        "container exited with code 0; restart limit of 2 reached"
    );
    assert_eq!(last.exit_code, Some(0));
    assert_eq!(runtime.started_total(), 3);
}

#[actix::test]
async fn on_failure_keeps_a_clean_exit() {
    tokio::time::pause();
    let runtime = SimulatedRuntime::new(SimulatedBehaviour::exit_after(RUN_TIME, 0));
    let worker = start_worker(config("sim-1"), Arc::new(runtime.clone()));
    let mut probe = ReportProbe::subscribe(&worker, 0);

    let start = start_msg(restart_spec(RestartMode::OnFailure, 3, 50));
    let task_id = start.task_id;
    worker.send(start).await.unwrap().unwrap();
    let statuses = until_terminal(&mut probe, task_id).await;

    assert_eq!(states(&statuses), restart_states(0, TaskState::Completed));
    assert_eq!(statuses[1].1.reason, "container exited with code 0");
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(runtime.started_total(), 1);
}

#[actix::test]
async fn never_does_not_restart() {
    tokio::time::pause();
    let runtime = SimulatedRuntime::new(SimulatedBehaviour::exit_after(RUN_TIME, 1));
    let worker = start_worker(config("sim-1"), Arc::new(runtime.clone()));
    let mut probe = ReportProbe::subscribe(&worker, 0);

    let start = start_msg(restart_spec(RestartMode::Never, 3, 50));
    let task_id = start.task_id;
    worker.send(start).await.unwrap().unwrap();
    let statuses = until_terminal(&mut probe, task_id).await;

    assert_eq!(states(&statuses), restart_states(0, TaskState::Failed));
    assert_eq!(statuses[1].1.reason, "container exited with code 1");
    assert_eq!(statuses[1].1.restart_count, 0);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(runtime.started_total(), 1);
    let record = worker.send(GetTask { task_id }).await.unwrap().unwrap();
    assert_eq!(record.restart_count, 0);
}

#[actix::test]
async fn restart_gaps_grow_with_back_off() {
    tokio::time::pause();
    let runtime = SimulatedRuntime::new(SimulatedBehaviour::exit_after(RUN_TIME, 1));
    let worker = start_worker(config("sim-1"), Arc::new(runtime.clone()));
    let mut probe = ReportProbe::subscribe(&worker, 0);

    let backoff = Duration::from_millis(100);
    let start = start_msg(restart_spec(RestartMode::Always, 5, 100));
    let task_id = start.task_id;
    worker.send(start).await.unwrap().unwrap();
    let statuses = until_terminal(&mut probe, task_id).await;

    let starts: Vec<Instant> = running(&statuses).iter().map(|(at, _)| *at).collect();
    assert_eq!(starts.len(), 6);
    let gaps: Vec<Duration> = starts.windows(2).map(|pair| pair[1] - pair[0]).collect();
    for (index, gap) in gaps.iter().enumerate() {
        // The gap is the run time plus the back-off delay, which doubles per restart.
        let base = backoff * 2u32.pow(index as u32);
        let low = RUN_TIME + base.mul_f64(1.0 - RESTART_JITTER);
        let high = RUN_TIME + base.mul_f64(1.0 + RESTART_JITTER) + Duration::from_millis(5);
        assert!(
            *gap >= low && *gap <= high,
            "gap {index} is {gap:?}, expected {low:?} to {high:?}; gaps: {gaps:?}"
        );
    }
    assert!(
        gaps.windows(2).all(|pair| pair[1] > pair[0]),
        "gaps do not grow: {gaps:?}"
    );

    // The announced next attempt matches the delay the worker waited.
    for (_, status) in statuses
        .iter()
        .filter(|(_, s)| s.state == TaskState::Scheduled)
    {
        let next = status
            .next_attempt_at
            .expect("a waiting report names the next attempt");
        let restart = status.restart_count + 1;
        let base = backoff * 2u32.pow(restart - 1);
        let report_at = probe
            .seen
            .iter()
            .find(|report| report.body == ReportBody::TaskStatus(status.clone()))
            .map(|report| report.at)
            .unwrap();
        let announced = (next - report_at).to_std().unwrap_or_default();
        let high = base.mul_f64(1.0 + RESTART_JITTER) + Duration::from_millis(1);
        assert!(
            announced <= high && announced + Duration::from_millis(1) >= base.mul_f64(0.8),
            "restart {restart} announced in {announced:?}, base delay {base:?}"
        );
    }
}

#[actix::test]
async fn stop_during_back_off_cancels_restart() {
    tokio::time::pause();
    let runtime = SimulatedRuntime::new(SimulatedBehaviour::exit_after(RUN_TIME, 1));
    let worker = start_worker(config("sim-1"), Arc::new(runtime.clone()));
    let mut probe = ReportProbe::subscribe(&worker, 0);

    let start = start_msg(restart_spec(RestartMode::OnFailure, 3, 10_000));
    let (task_id, attempt) = (start.task_id, start.attempt);
    worker.send(start).await.unwrap().unwrap();
    let waiting = probe.wait_status(task_id, TaskState::Scheduled).await;
    assert_eq!(waiting.attempt, attempt);
    worker
        .send(stop(task_id, Some(attempt)))
        .await
        .unwrap()
        .unwrap();

    let completed = probe.wait_status(task_id, TaskState::Completed).await;
    assert_eq!(completed.attempt, attempt);
    assert_eq!(completed.reason, STOPPED_BY_USER);
    assert_eq!(completed.next_attempt_at, None);
    // Outlast the longest back-off the jitter allows.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(runtime.started_total(), 1, "the restart was not cancelled");
    assert_eq!(runtime.running_count(), 0);
    assert_eq!(runtime.container_count(), 0);
    let record = worker.send(GetTask { task_id }).await.unwrap().unwrap();
    assert_eq!(record.state, TaskState::Completed);
    assert!(record.stop_requested);
    assert_eq!(record.next_attempt_at, None);
}

#[actix::test]
async fn stop_naming_replaced_attempt_stops_its_restart() {
    tokio::time::pause();
    let runtime = SimulatedRuntime::new(SimulatedBehaviour::run_until_stopped());
    let worker = start_worker(config("sim-1"), Arc::new(runtime.clone()));
    let mut probe = ReportProbe::subscribe(&worker, 0);

    let start = start_msg(restart_spec(RestartMode::OnFailure, 3, 100));
    let (task_id, first_attempt) = (start.task_id, start.attempt);
    worker.send(start).await.unwrap().unwrap();
    let first = probe.wait_status(task_id, TaskState::Running).await;
    runtime.exit_container(first.container_id.as_ref().unwrap(), 1);
    let second = probe.wait_status(task_id, TaskState::Running).await;

    // A manager that has not seen the restart yet still names the first attempt.
    worker
        .send(stop(task_id, Some(first_attempt)))
        .await
        .unwrap()
        .unwrap();
    let completed = probe.wait_status(task_id, TaskState::Completed).await;
    assert_eq!(completed.attempt, second.attempt);
    assert_eq!(completed.reason, STOPPED_BY_USER);
    assert_eq!(runtime.running_count(), 0);
}

#[actix::test]
async fn absent_image_counts_as_failed_attempt() {
    tokio::time::pause();
    let runtime = SimulatedRuntime::new(SimulatedBehaviour::run_until_stopped());
    runtime.remove_image("cube-test/absent:1");
    let worker = start_worker(config("sim-1"), Arc::new(runtime.clone()));
    let mut probe = ReportProbe::subscribe(&worker, 0);

    let mut spec = restart_spec(RestartMode::OnFailure, 2, 1000);
    spec.image = "cube-test/absent:1".into();
    let start = start_msg(spec);
    let task_id = start.task_id;
    let began = Instant::now();
    worker.send(start).await.unwrap().unwrap();
    let statuses = until_terminal(&mut probe, task_id).await;

    assert_eq!(
        states(&statuses),
        vec![
            TaskState::Scheduled,
            TaskState::Scheduled,
            TaskState::Failed
        ]
    );
    // The attempts waited out their back-off (1 s, then 2 s, each at least 80 %) instead of
    // retrying at once.
    assert!(
        began.elapsed() >= Duration::from_millis(2400),
        "{:?}",
        began.elapsed()
    );
    let failed = &statuses[2].1;
    assert!(
        failed.reason.contains("cube-test/absent:1"),
        "{}",
        failed.reason
    );
    assert!(
        failed.reason.ends_with("restart limit of 2 reached"),
        "{}",
        failed.reason
    );
    assert_eq!(failed.restart_count, 2);
    assert_eq!(statuses[1].1.replaces, Some(statuses[0].1.attempt));
    assert_eq!(runtime.started_total(), 0);
    assert_eq!(runtime.container_count(), 0);
}

#[actix::test]
async fn new_attempt_during_back_off_cancels_restart() {
    tokio::time::pause();
    let runtime = SimulatedRuntime::new(SimulatedBehaviour::exit_after(RUN_TIME, 1));
    runtime.set_image_behaviour("other", SimulatedBehaviour::run_until_stopped());
    let worker = start_worker(config("sim-1"), Arc::new(runtime.clone()));
    let mut probe = ReportProbe::subscribe(&worker, 0);

    let start = start_msg(restart_spec(RestartMode::OnFailure, 3, 10_000));
    let task_id = start.task_id;
    worker.send(start.clone()).await.unwrap().unwrap();
    probe.wait_status(task_id, TaskState::Scheduled).await;

    let mut placed = start.clone();
    placed.attempt = AttemptId::generate();
    placed.spec.image = "other".into();
    worker.send(placed.clone()).await.unwrap().unwrap();
    let replaced = probe.wait_status(task_id, TaskState::Completed).await;
    assert_eq!(replaced.attempt, start.attempt);
    let running = probe.wait_status(task_id, TaskState::Running).await;
    assert_eq!(running.attempt, placed.attempt);
    assert_eq!(running.replaces, None);
    assert_eq!(running.restart_count, 0);

    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(runtime.started_total(), 2, "the cancelled restart ran");
    assert_eq!(runtime.running_count(), 1);
}

#[actix::test]
async fn restarted_worker_resumes_back_off() {
    tokio::time::pause();
    let runtime = SimulatedRuntime::new(SimulatedBehaviour::exit_after(RUN_TIME, 1));
    let store = SharedStore::default();
    let mut first_config = config("sim-1");
    // The worker stops at its next heartbeat once its address is dropped.
    first_config.heartbeat_interval = Duration::from_millis(10);
    let worker = Worker::start(
        first_config,
        Arc::new(runtime.clone()),
        Box::new(store.clone()),
    );
    let mut probe = ReportProbe::subscribe(&worker, 0);
    let start = start_msg(restart_spec(RestartMode::OnFailure, 3, 5_000));
    let (task_id, attempt) = (start.task_id, start.attempt);
    worker.send(start).await.unwrap().unwrap();
    probe.wait_status(task_id, TaskState::Scheduled).await;
    drop(worker);
    drop(probe);
    tokio::time::sleep(Duration::from_millis(50)).await;

    let restarted = Worker::start(
        config("sim-1"),
        Arc::new(runtime.clone()),
        Box::new(store.clone()),
    );
    let mut probe = ReportProbe::subscribe(&restarted, 0);
    let record = restarted.send(GetTask { task_id }).await.unwrap().unwrap();
    assert_eq!(record.state, TaskState::Scheduled);
    assert!(record.next_attempt_at.is_some());
    assert_eq!(record.container_id, None);

    let running = probe.wait_status(task_id, TaskState::Running).await;
    assert_eq!(running.replaces, Some(attempt));
    assert_eq!(running.restart_count, 1);
    assert_eq!(runtime.started_total(), 2, "one restart, by one worker");
}
