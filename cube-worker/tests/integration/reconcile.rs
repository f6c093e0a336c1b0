//! The worker's periodic reconcile on the simulated runtime: it ends a running attempt whose
//! container vanished without any event, and the restart policy then applies.

use std::sync::Arc;
use std::time::Duration;

use cube_core::{DurationSpec, RestartMode, RestartPolicy, TaskState};
use cube_worker::{SimulatedBehaviour, SimulatedRuntime};

use crate::support::{ReportProbe, config, spec, start_msg, start_worker};

#[actix::test]
async fn reconcile_ends_silently_vanished_container() {
    tokio::time::pause();
    let runtime = SimulatedRuntime::new(SimulatedBehaviour::run_until_stopped());
    let mut worker_config = config("sim-reconcile");
    worker_config.reconcile_interval = Some(Duration::from_millis(100));
    let worker = start_worker(worker_config, Arc::new(runtime.clone()));
    let mut probe = ReportProbe::subscribe(&worker, 0);
    let mut spec = spec("img");
    spec.restart_policy = RestartPolicy {
        mode: RestartMode::OnFailure,
        max_attempts: 1,
        backoff: DurationSpec::from_millis(50),
        max_backoff: DurationSpec::from_secs(1),
    };
    let start = start_msg(spec);
    let task_id = start.task_id;
    worker.send(start).await.unwrap().unwrap();
    let first = probe.wait_status(task_id, TaskState::Running).await;
    let container = first.container_id.clone().unwrap();

    assert!(runtime.vanish_container(&container));
    let scheduled = probe.wait_status(task_id, TaskState::Scheduled).await;
    assert_eq!(scheduled.attempt, first.attempt);
    assert!(
        scheduled
            .reason
            .starts_with("container missing; restart 1 of 1"),
        "unexpected reason: {}",
        scheduled.reason
    );
    let second = probe.wait_status(task_id, TaskState::Running).await;
    assert_eq!(second.replaces, Some(first.attempt));
    assert_ne!(second.container_id, first.container_id);

    // Later passes see the new container running and leave it alone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let statuses = probe.statuses_of(task_id);
    let ended = statuses.iter().filter(|s| s.state == TaskState::Scheduled);
    assert_eq!(
        ended.count(),
        1,
        "the vanish is reported once: {statuses:#?}"
    );
    assert_eq!(runtime.running_count(), 1);
}

#[actix::test]
async fn without_reconcile_silent_vanish_goes_unnoticed() {
    tokio::time::pause();
    let runtime = SimulatedRuntime::new(SimulatedBehaviour::run_until_stopped());
    let mut worker_config = config("sim-reconcile");
    worker_config.reconcile_interval = Some(Duration::from_secs(3600));
    let worker = start_worker(worker_config, Arc::new(runtime.clone()));
    let mut probe = ReportProbe::subscribe(&worker, 0);
    let start = start_msg(spec("img"));
    let task_id = start.task_id;
    worker.send(start).await.unwrap().unwrap();
    let first = probe.wait_status(task_id, TaskState::Running).await;

    assert!(runtime.vanish_container(first.container_id.as_ref().unwrap()));
    tokio::time::sleep(Duration::from_secs(60)).await;
    let record = worker
        .send(cube_worker::worker::GetTask { task_id })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        record.state,
        TaskState::Running,
        "no event reached the worker"
    );
}
