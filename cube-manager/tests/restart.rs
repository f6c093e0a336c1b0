//! Local restarts seen through the manager: an in-process cluster on the simulated runtime
//! whose containers keep failing, watched through the HTTP API's task view, and fake workers
//! that send restart reports about current, stale and foreign attempts.

use std::collections::BTreeSet;
use std::time::Duration;

use actix::Addr;
use chrono::Utc;

use cube_core::duration::DurationSpec;
use cube_core::ids::AttemptId;
use cube_core::messages::{ReportBody, TaskStatusReport};
use cube_core::node::DeclaredCapacity;
use cube_core::spec::{RestartMode, RestartPolicy};
use cube_core::task::TaskState;
use cube_core::wire::TaskView;
use cube_manager::cluster::ClusterBuilder;
use cube_manager::http::HttpConfig;
use cube_worker::simulated::SimulatedBehaviour;

use crate::util::fake_worker::{Emit, FakeOptions, FakeWorker, GetCommands, status};
use crate::util::*;

async fn emit(fake: &Addr<FakeWorker>, status: TaskStatusReport) {
    bounded(
        fake.send(Emit(ReportBody::TaskStatus(status))),
        "fake worker did not answer",
    )
    .await
    .expect("fake worker alive")
    .expect("manager subscribed to the fake worker's reports");
}

/// Builds a running report of `attempt` as a local restart of `replaces`.
fn restarted(
    task_id: cube_core::ids::TaskId,
    attempt: AttemptId,
    replaces: AttemptId,
    restart_count: u32,
) -> TaskStatusReport {
    let mut report = status(task_id, attempt, TaskState::Running, "container started");
    report.replaces = Some(replaces);
    report.restart_count = restart_count;
    report
}

#[actix::test]
async fn restarts_show_in_task_view_until_limit_fails_task() {
    init_logging();
    let behaviour = SimulatedBehaviour::exit_after(Duration::from_millis(100), 1);
    let cluster = bounded(
        ClusterBuilder::new()
            .policy("roundrobin")
            .simulated(behaviour)
            .workers(1, DeclaredCapacity::default())
            .serve_api(HttpConfig::default())
            .start(),
        "cluster did not start: does the worker answer DescribeNode?",
    )
    .await
    .expect("cluster starts");
    let base = cluster.api_url().expect("API served");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();

    let mut spec = spec("crashing");
    spec.restart_policy = RestartPolicy {
        mode: RestartMode::OnFailure,
        max_attempts: 3,
        backoff: DurationSpec::from_millis(300),
        max_backoff: DurationSpec::from_secs(10),
    };
    let task = submit(&cluster.manager, spec).await;

    // Poll the API's view and keep every attempt and restart count it shows.
    let mut attempts = BTreeSet::new();
    let mut counts = BTreeSet::new();
    let mut saw_next_attempt = false;
    let mut booked_while_waiting = None;
    let url = format!("{base}/tasks/{}", task.id);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let done = loop {
        let view: TaskView = bounded(
            async { client.get(&url).send().await?.json().await },
            "GET /tasks/{id} did not answer",
        )
        .await
        .expect("the API returns the task view");
        if let Some(attempt) = view.attempt {
            attempts.insert(attempt.to_string());
        }
        counts.insert(view.restart_count);
        if view.state == TaskState::Scheduled && view.next_attempt_at.is_some() {
            saw_next_attempt = true;
            if booked_while_waiting.is_none() {
                booked_while_waiting = Some(nodes(&cluster.manager).await[0].task_count);
            }
        }
        if view.state.is_terminal() {
            break view;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the task never ended after its restarts; last view: {view:#?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };

    assert_eq!(done.state, TaskState::Failed);
    assert_eq!(done.restart_count, 3);
    assert_eq!(done.next_attempt_at, None);
    let error = done.last_error.expect("the failure is recorded");
    assert_eq!(
        error,
        "container exited with code 1; restart limit of 3 reached"
    );
    assert_eq!(done.exit_code, Some(1));
    assert_eq!(attempts.len(), 4, "one attempt per start: {attempts:?}");
    assert!(
        attempts.contains(&done.attempt.unwrap().to_string()),
        "the final attempt is the last restart"
    );
    assert_eq!(counts, BTreeSet::from([0, 1, 2, 3]));
    assert!(saw_next_attempt, "no view showed the next attempt's time");
    assert_eq!(
        booked_while_waiting,
        Some(1),
        "the allocation was released during a restart wait"
    );

    let runtime = cluster.workers[0].simulated.clone().unwrap();
    assert_eq!(runtime.started_total(), 4);
    let node = wait_until(WAIT, "the allocation was never released", || async {
        let node = nodes(&cluster.manager).await.remove(0);
        (node.task_count == 0).then_some(node)
    })
    .await;
    assert_eq!(node.allocated.memory.0, 0);
    cluster.shutdown().await;
}

#[actix::test]
async fn stop_during_restart_wait_completes_task() {
    init_logging();
    let behaviour = SimulatedBehaviour::exit_after(Duration::from_millis(20), 1);
    let cluster = bounded(
        ClusterBuilder::new()
            .policy("roundrobin")
            .simulated(behaviour)
            .workers(1, DeclaredCapacity::default())
            .start(),
        "cluster did not start: does the worker answer DescribeNode?",
    )
    .await
    .expect("cluster starts");
    let mut spec = spec("crashing");
    spec.restart_policy.backoff = DurationSpec::from_secs(1);
    let task = submit(&cluster.manager, spec).await;
    let waiting = wait_for_task(
        &cluster.manager,
        task.id,
        "the task never waited for a restart",
        |task| task.state == TaskState::Scheduled && task.next_attempt_at.is_some(),
    )
    .await;
    assert_eq!(waiting.restart_count, 0);

    stop(&cluster.manager, task.id).await;
    let done = wait_for_task(
        &cluster.manager,
        task.id,
        "a stop during the restart wait never ended the task",
        |task| task.state.is_terminal(),
    )
    .await;

    assert_eq!(done.state, TaskState::Completed);
    assert_eq!(done.next_attempt_at, None);
    let runtime = cluster.workers[0].simulated.clone().unwrap();
    // Outlast the back-off, so a restart that was not cancelled would show.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(runtime.started_total(), 1, "a restart ran after the stop");
    assert_eq!(runtime.running_count(), 0);
    cluster.shutdown().await;
}

#[actix::test]
async fn manager_follows_only_restarts_of_current_attempt() {
    let manager = start_manager();
    let w1 = add_fake(&manager, "w1", FakeOptions::default()).await;
    let w2 = add_fake(&manager, "w2", FakeOptions::default()).await;
    let task = submit(&manager, spec("a")).await;
    let task = wait_for_task(&manager, task.id, "task was never placed", |task| {
        task.state == TaskState::Scheduled
    })
    .await;
    let first = task.attempt.unwrap();
    let (own, other) = if task.node.as_ref().unwrap().as_str() == "w1" {
        (&w1, &w2)
    } else {
        (&w2, &w1)
    };
    emit(
        own,
        status(task.id, first, TaskState::Running, "container started"),
    )
    .await;

    let mut waiting = status(
        task.id,
        first,
        TaskState::Scheduled,
        "restart 1 of 3 in 1.0s",
    );
    waiting.exit_code = Some(1);
    waiting.next_attempt_at = Some(Utc::now());
    emit(own, waiting).await;
    let scheduled = wait_for_task(&manager, task.id, "the wait was not applied", |task| {
        task.state == TaskState::Scheduled
    })
    .await;
    assert!(scheduled.next_attempt_at.is_some());
    assert_eq!(scheduled.exit_code, Some(1));
    assert_eq!(
        nodes(&manager)
            .await
            .iter()
            .map(|node| node.task_count)
            .sum::<u32>(),
        1,
        "the allocation stays booked while the worker waits"
    );

    // A restart of some other attempt, and one reported by the wrong node, are ignored.
    let second = AttemptId::generate();
    emit(own, restarted(task.id, second, AttemptId::generate(), 1)).await;
    emit(other, restarted(task.id, second, first, 1)).await;
    // The same restart from the task's node is applied, which proves the two before it were
    // processed first.
    emit(own, restarted(task.id, second, first, 1)).await;
    let running = wait_for_task(&manager, task.id, "the restart was not applied", |task| {
        task.state == TaskState::Running
    })
    .await;
    assert_eq!(running.attempt, Some(second));
    assert_eq!(running.restart_count, 1);
    assert_eq!(running.next_attempt_at, None);

    // A late report of the replaced attempt changes nothing.
    emit(
        own,
        status(
            task.id,
            first,
            TaskState::Failed,
            "container exited with code 1",
        ),
    )
    .await;
    let mut ended = status(
        task.id,
        second,
        TaskState::Failed,
        "container exited with code 1; restart limit of 1 reached",
    );
    ended.replaces = Some(first);
    ended.restart_count = 1;
    emit(own, ended).await;
    let failed = wait_for_task(
        &manager,
        task.id,
        "the final failure was not applied",
        |task| task.state.is_terminal(),
    )
    .await;
    assert_eq!(failed.state, TaskState::Failed);
    assert_eq!(failed.attempt, Some(second));
    assert_eq!(
        failed.last_error.as_deref(),
        Some("container exited with code 1; restart limit of 1 reached")
    );
}

#[actix::test]
async fn replayed_report_of_replaced_attempt_sends_no_stop() {
    let manager = start_manager();
    let worker = add_fake(&manager, "w1", FakeOptions::default()).await;
    let task = submit(&manager, spec("a")).await;
    let task = wait_for_task(&manager, task.id, "task was never placed", |task| {
        task.state == TaskState::Scheduled
    })
    .await;
    let first = task.attempt.unwrap();
    emit(
        &worker,
        status(task.id, first, TaskState::Running, "container started"),
    )
    .await;
    let second = AttemptId::generate();
    emit(&worker, restarted(task.id, second, first, 1)).await;
    wait_for_task(&manager, task.id, "the restart was not applied", |task| {
        task.attempt == Some(second) && task.state == TaskState::Running
    })
    .await;

    // A manager that restarts reads the worker's reports again from the start, so it sees
    // the replaced attempt running; the worker's current container must be left alone.
    emit(
        &worker,
        status(task.id, first, TaskState::Running, "container started"),
    )
    .await;
    // A report applied after the replay proves the replay was handled first.
    let mut waiting = status(
        task.id,
        second,
        TaskState::Scheduled,
        "restart 2 of 3 in 1.0s",
    );
    waiting.replaces = Some(first);
    waiting.restart_count = 1;
    emit(&worker, waiting).await;
    wait_for_task(
        &manager,
        task.id,
        "the later report was not applied",
        |task| task.state == TaskState::Scheduled,
    )
    .await;

    let commands = bounded(worker.send(GetCommands), "fake worker did not answer")
        .await
        .expect("fake worker alive");
    assert!(
        commands.stops.iter().all(|stop| stop.task_id != task.id),
        "no stop may reach the task's own node: {:?}",
        commands.stops
    );
    let current = wait_for_task(&manager, task.id, "task vanished", |_| true).await;
    assert_eq!(current.attempt, Some(second));
    assert_eq!(
        current.desired_state,
        cube_core::task::DesiredState::Running
    );
}
