//! Health reports from a fake worker: the manager records the current attempt's health on
//! the task and leaves the task's state alone.

use actix::prelude::*;
use chrono::Utc;

use cube_core::DurationSpec;
use cube_core::health::{HealthStatus, TaskHealth};
use cube_core::ids::AttemptId;
use cube_core::messages::{ReportBody, TaskHealthReport};
use cube_core::spec::{HealthCheck, TaskSpec};
use cube_core::task::{Task, TaskState};
use cube_core::wire::TaskView;
use cube_manager::Manager;

use crate::util::fake_worker::{Emit, FakeOptions, FakeWorker, status};
use crate::util::*;

fn checked_spec() -> TaskSpec {
    let mut spec = spec("web");
    spec.ports = vec![port(80, None)];
    spec.health_check = Some(HealthCheck {
        path: "/health".into(),
        port: 80,
        interval: DurationSpec::from_secs(1),
        timeout: DurationSpec::from_millis(500),
        failure_threshold: 3,
    });
    spec
}

fn health(status: HealthStatus, failures: u32) -> TaskHealth {
    TaskHealth {
        status,
        consecutive_failures: failures,
        last_error: (failures > 0).then(|| "GET /health returned 500 Internal Server Error".into()),
        since: Utc::now(),
    }
}

async fn emit(fake: &Addr<FakeWorker>, body: ReportBody) {
    bounded(fake.send(Emit(body)), "fake worker did not answer")
        .await
        .expect("fake worker alive")
        .expect("manager subscribed to the fake worker's reports");
}

async fn emit_health(fake: &Addr<FakeWorker>, task: &Task, attempt: AttemptId, health: TaskHealth) {
    let report = TaskHealthReport {
        task_id: task.id,
        attempt,
        health,
    };
    emit(fake, ReportBody::TaskHealth(report)).await;
}

/// Submits a checked task and reports it running on `fake`.
async fn running_task(manager: &Addr<Manager>, fake: &Addr<FakeWorker>) -> Task {
    let submitted = submit(manager, checked_spec()).await;
    let placed = wait_for_task(manager, submitted.id, "placement never happened", |task| {
        task.state == TaskState::Scheduled
    })
    .await;
    let attempt = placed.attempt.unwrap();
    let running = status(placed.id, attempt, TaskState::Running, "container started");
    emit(fake, ReportBody::TaskStatus(running)).await;
    wait_for_task(manager, placed.id, "running report not applied", |task| {
        task.state == TaskState::Running
    })
    .await
}

#[actix::test]
async fn health_report_sets_health_without_state_change() {
    let manager = start_manager();
    let fake = add_fake(&manager, "w1", FakeOptions::default()).await;
    let task = running_task(&manager, &fake).await;
    assert_eq!(task.health, None, "no health before the first report");
    let attempt = task.attempt.unwrap();

    let healthy = health(HealthStatus::Healthy, 0);
    emit_health(&fake, &task, attempt, healthy.clone()).await;
    let seen = wait_for_task(&manager, task.id, "health report not applied", |task| {
        task.health.is_some()
    })
    .await;
    assert_eq!(seen.health, Some(healthy));
    assert_eq!(seen.state, TaskState::Running);
    assert_eq!(seen.attempt, Some(attempt));

    let unhealthy = health(HealthStatus::Unhealthy, 3);
    emit_health(&fake, &task, attempt, unhealthy.clone()).await;
    let seen = wait_for_task(&manager, task.id, "unhealthy report not applied", |task| {
        task.health.as_ref().map(|h| h.status) == Some(HealthStatus::Unhealthy)
    })
    .await;
    assert_eq!(
        seen.state,
        TaskState::Running,
        "health alone changes no state"
    );
    assert_eq!(seen.last_error, None);

    let view = TaskView::from(&seen);
    let json = serde_json::to_value(&view).unwrap();
    assert_eq!(json["health"]["status"], "unhealthy");
    assert_eq!(json["health"]["consecutive_failures"], 3);
}

#[actix::test]
async fn health_report_of_other_attempt_is_ignored() {
    let manager = start_manager();
    let fake = add_fake(&manager, "w1", FakeOptions::default()).await;
    let task = running_task(&manager, &fake).await;

    let stranger = AttemptId::generate();
    emit_health(&fake, &task, stranger, health(HealthStatus::Unhealthy, 3)).await;
    // A later report of the current attempt is applied, so the earlier one was handled.
    let healthy = health(HealthStatus::Healthy, 0);
    emit_health(&fake, &task, task.attempt.unwrap(), healthy.clone()).await;
    let seen = wait_for_task(&manager, task.id, "health report not applied", |task| {
        task.health.is_some()
    })
    .await;
    assert_eq!(seen.health, Some(healthy));
}

#[actix::test]
async fn restarted_attempt_starts_without_health() {
    let manager = start_manager();
    let fake = add_fake(&manager, "w1", FakeOptions::default()).await;
    let task = running_task(&manager, &fake).await;
    let first = task.attempt.unwrap();
    emit_health(&fake, &task, first, health(HealthStatus::Unhealthy, 3)).await;
    wait_for_task(&manager, task.id, "unhealthy report not applied", |task| {
        task.health.is_some()
    })
    .await;

    // The worker restarts the task locally: the new attempt names the one it replaces.
    let second = AttemptId::generate();
    let mut restarted = status(task.id, second, TaskState::Running, "container started");
    restarted.replaces = Some(first);
    restarted.restart_count = 1;
    emit(&fake, ReportBody::TaskStatus(restarted)).await;
    let seen = wait_for_task(&manager, task.id, "restart not applied", |task| {
        task.attempt == Some(second)
    })
    .await;
    assert_eq!(seen.health, None);
    assert_eq!(seen.state, TaskState::Running);
}
