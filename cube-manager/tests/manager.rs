//! The Manager and Scheduler actors against fake workers: placement, reports, stop and
//! resource accounting.

use std::collections::BTreeSet;

use actix::prelude::*;

use cube_core::ids::{AttemptId, TaskId};
use cube_core::messages::{ReportBody, WorkerReport};
use cube_core::node::NodeStatus;
use cube_core::resources::{ByteSize, Resources};
use cube_core::task::{DesiredState, STOPPED_BY_USER, Task, TaskState};
use cube_core::wire::NodeView;
use cube_manager::manager::{CreateTask, GetTasks};
use cube_manager::{Error, Manager, ManagerConfig, PortRange};

use crate::util::fake_worker::{
    Commands, Emit, EmitRaw, FakeOptions, FakeWorker, GetCommands, SetUnreachable, heartbeat,
    status,
};
use crate::util::*;

async fn commands(fake: &Addr<FakeWorker>) -> Commands {
    bounded(fake.send(GetCommands), "fake worker did not answer")
        .await
        .expect("fake worker alive")
}

async fn emit(fake: &Addr<FakeWorker>, body: ReportBody) -> WorkerReport {
    bounded(fake.send(Emit(body)), "fake worker did not answer")
        .await
        .expect("fake worker alive")
        .expect("manager subscribed to the fake worker's reports")
}

async fn emit_status(fake: &Addr<FakeWorker>, task: &Task, state: TaskState, reason: &str) {
    let attempt = task.attempt.expect("task has an attempt");
    emit(
        fake,
        ReportBody::TaskStatus(status(task.id, attempt, state, reason)),
    )
    .await;
}

async fn wait_scheduled(manager: &Addr<Manager>, task_id: TaskId) -> Task {
    wait_for_task(
        manager,
        task_id,
        "placement never happened: is a node registered with room?",
        |task| task.state == TaskState::Scheduled,
    )
    .await
}

async fn wait_state(manager: &Addr<Manager>, task_id: TaskId, state: TaskState) -> Task {
    wait_for_task(
        manager,
        task_id,
        &format!("task never reached {state}: was the report applied?"),
        |task| task.state == state,
    )
    .await
}

fn mib(n: u64) -> Resources {
    Resources {
        cpu: 4.0,
        memory: ByteSize::mib(n),
        disk: ByteSize::gib(1),
    }
}

#[actix::test]
async fn submitted_task_is_scheduled_and_started() {
    let manager = start_manager();
    let fake = add_fake(&manager, "w1", FakeOptions::default()).await;

    let submitted = submit(&manager, spec("a")).await;
    assert_eq!(submitted.state, TaskState::Pending);

    let task = wait_scheduled(&manager, submitted.id).await;
    assert_eq!(task.node.as_ref().map(|node| node.as_str()), Some("w1"));
    let attempt = task.attempt.expect("placement records an attempt");
    let sent = wait_until(WAIT, "StartTask never reached the worker", || async {
        commands(&fake).await.starts.into_iter().next()
    })
    .await;
    assert_eq!(sent.task_id, task.id);
    assert_eq!(sent.attempt, attempt);
    assert_eq!(sent.spec, task.spec);
}

#[actix::test]
async fn running_report_moves_task_to_running() {
    let manager = start_manager();
    let fake = add_fake(&manager, "w1", FakeOptions::default()).await;
    let task = submit(&manager, spec("a")).await;
    let task = wait_scheduled(&manager, task.id).await;

    emit_status(&fake, &task, TaskState::Running, "container started").await;

    let running = wait_state(&manager, task.id, TaskState::Running).await;
    assert!(running.started_at.is_some());
    assert_eq!(running.attempt, task.attempt);
}

#[actix::test]
async fn report_for_unknown_attempt_is_ignored() {
    let manager = start_manager();
    let fake = add_fake(&manager, "w1", FakeOptions::default()).await;
    let task = submit(&manager, spec("a")).await;
    let task = wait_scheduled(&manager, task.id).await;

    let stranger = AttemptId::generate();
    emit(
        &fake,
        ReportBody::TaskStatus(status(task.id, stranger, TaskState::Failed, "boom")),
    )
    .await;
    // A later report for the current attempt is applied, so the first one was processed.
    emit_status(&fake, &task, TaskState::Running, "container started").await;

    let running = wait_state(&manager, task.id, TaskState::Running).await;
    assert_eq!(running.last_error, None, "the stray failure was applied");
}

#[actix::test]
async fn rejected_start_returns_to_pending_and_old_attempt_is_ignored() {
    let manager = start_manager();
    let rejecting = add_fake(
        &manager,
        "w1",
        FakeOptions {
            reject_starts: 1,
            ..FakeOptions::default()
        },
    )
    .await;
    let task = submit(&manager, spec("a")).await;

    let pending = wait_for_task(
        &manager,
        task.id,
        "a rejected start should send the task back to pending",
        |task| task.state == TaskState::Pending && task.pending_reason.is_some(),
    )
    .await;
    let reason = pending.pending_reason.clone().unwrap();
    assert!(reason.contains("fake rejection"), "{reason}");
    assert!(reason.contains("w1"), "{reason}");
    let first_attempt = commands(&rejecting).await.starts[0].attempt;
    assert_eq!(
        nodes(&manager).await[0].task_count,
        0,
        "allocation released"
    );

    // A node joining is a capacity change, so the task is tried again with a new attempt.
    let second = add_fake(&manager, "w2", FakeOptions::default()).await;
    let placed = wait_scheduled(&manager, task.id).await;
    let second_attempt = placed.attempt.unwrap();
    assert_ne!(second_attempt, first_attempt);

    emit(
        &rejecting,
        ReportBody::TaskStatus(status(task.id, first_attempt, TaskState::Running, "late")),
    )
    .await;
    emit_status(&second, &placed, TaskState::Running, "container started").await;
    let running = wait_state(&manager, task.id, TaskState::Running).await;
    assert_eq!(running.attempt, Some(second_attempt));
}

#[actix::test]
async fn duplicate_report_is_ignored() {
    let manager = start_manager();
    let fake = add_fake(&manager, "w1", FakeOptions::default()).await;
    let task = submit(&manager, spec("a")).await;
    let task = wait_scheduled(&manager, task.id).await;
    let attempt = task.attempt.unwrap();

    let first = emit(
        &fake,
        ReportBody::TaskStatus(status(task.id, attempt, TaskState::Running, "started")),
    )
    .await;
    let mut replay = first.clone();
    replay.body = ReportBody::TaskStatus(status(task.id, attempt, TaskState::Failed, "replay"));
    bounded(fake.send(EmitRaw(replay)), "fake worker did not answer")
        .await
        .unwrap();
    // Sent after the replay, so once it is applied the replay was processed too.
    emit_status(
        &fake,
        &task,
        TaskState::Completed,
        "container exited with code 0",
    )
    .await;

    let done = wait_state(&manager, task.id, TaskState::Completed).await;
    assert_eq!(done.last_error, None, "the replayed failure was applied");
    assert_eq!(done.exit_code, Some(0));
}

#[actix::test]
async fn stop_of_pending_task_completes_it_at_once() {
    let manager = start_manager();
    let task = submit(&manager, spec("a")).await;

    let stopped = stop(&manager, task.id).await;
    assert_eq!(stopped.state, TaskState::Completed);
    assert_eq!(stopped.desired_state, DesiredState::Stopped);

    let again = stop(&manager, task.id).await;
    assert_eq!(again, stopped, "a second stop changes nothing");
    let kept = crate::util::task(&manager, task.id).await;
    assert_eq!(kept, stopped, "the record is kept");

    // The stopped task is never placed, even when a node joins.
    let fake = add_fake(&manager, "w1", FakeOptions::default()).await;
    assert!(commands(&fake).await.starts.is_empty());
}

#[actix::test]
async fn stop_of_scheduled_task_reaches_worker() {
    let manager = start_manager();
    let fake = add_fake(&manager, "w1", FakeOptions::default()).await;
    let task = submit(&manager, spec("a")).await;
    let task = wait_scheduled(&manager, task.id).await;

    let reply = stop(&manager, task.id).await;
    assert_eq!(reply.desired_state, DesiredState::Stopped);

    let done = wait_state(&manager, task.id, TaskState::Completed).await;
    assert_eq!(done.desired_state, DesiredState::Stopped);
    let sent = commands(&fake).await.stops;
    assert_eq!(sent[0].attempt, task.attempt);
    assert_eq!(sent[0].reason, STOPPED_BY_USER);
    assert_eq!(nodes(&manager).await[0].task_count, 0);

    let again = stop(&manager, task.id).await;
    assert_eq!(again.state, TaskState::Completed);
}

#[actix::test]
async fn stop_of_running_task_ends_completed() {
    let manager = start_manager();
    let fake = add_fake(&manager, "w1", FakeOptions::default()).await;
    let task = submit(&manager, spec("a")).await;
    let task = wait_scheduled(&manager, task.id).await;
    emit_status(&fake, &task, TaskState::Running, "started").await;
    wait_state(&manager, task.id, TaskState::Running).await;

    stop(&manager, task.id).await;

    let done = wait_state(&manager, task.id, TaskState::Completed).await;
    assert!(done.finished_at.is_some());
    let again = stop(&manager, task.id).await;
    assert_eq!(again.state, TaskState::Completed);
    assert_eq!(again.finished_at, done.finished_at);
}

#[actix::test]
async fn stop_during_start_still_stops_worker() {
    let manager = start_manager();
    let fake = add_fake(
        &manager,
        "w1",
        FakeOptions {
            start_delay: std::time::Duration::from_millis(300),
            ..FakeOptions::default()
        },
    )
    .await;
    let task = submit(&manager, spec("a")).await;
    let task = wait_scheduled(&manager, task.id).await;

    stop(&manager, task.id).await;

    let done = wait_state(&manager, task.id, TaskState::Completed).await;
    assert_eq!(done.desired_state, DesiredState::Stopped);
    let sent = commands(&fake).await;
    assert_eq!(sent.starts.len(), 1);
    assert!(
        sent.stops.iter().any(|stop| stop.attempt == task.attempt),
        "no StopTask for the attempt being started: {:?}",
        sent.stops
    );
}

#[actix::test]
async fn task_larger_than_every_node_waits_for_one_that_fits() {
    let manager = start_manager();
    for name in ["small-1", "small-2"] {
        let options = FakeOptions {
            capacity: mib(256),
            ..FakeOptions::default()
        };
        add_fake(&manager, name, options).await;
    }
    let task = submit(&manager, spec_with_memory("big", 1024)).await;

    let pending = wait_for_task(
        &manager,
        task.id,
        "an unplaceable task should record why it is pending",
        |task| task.pending_reason.is_some(),
    )
    .await;
    assert_eq!(pending.state, TaskState::Pending);
    assert_eq!(
        pending.pending_reason.as_deref(),
        Some("2 nodes evaluated: 2 lack memory")
    );

    add_fake(
        &manager,
        "large",
        FakeOptions {
            capacity: mib(2048),
            ..FakeOptions::default()
        },
    )
    .await;
    let placed = wait_scheduled(&manager, task.id).await;
    assert_eq!(placed.node.unwrap().as_str(), "large");
    assert_eq!(placed.pending_reason, None);
}

#[actix::test]
async fn heartbeat_with_more_capacity_places_waiting_task() {
    let manager = start_manager();
    let fake = add_fake(
        &manager,
        "w1",
        FakeOptions {
            capacity: mib(256),
            ..FakeOptions::default()
        },
    )
    .await;
    let task = submit(&manager, spec_with_memory("big", 512)).await;
    wait_for_task(&manager, task.id, "task should wait for memory", |task| {
        task.pending_reason.is_some()
    })
    .await;

    emit(&fake, heartbeat(mib(1024))).await;

    wait_scheduled(&manager, task.id).await;
}

/// How the first task on a node with room for one gives its memory back.
#[derive(Debug, Clone, Copy)]
enum EndKind {
    Stopped,
    ExitedZero,
    Failed,
    DeletedWhilePending,
}

/// Reads the only node, asserting that its allocation is within capacity and not negative.
async fn only_node(manager: &Addr<Manager>) -> NodeView {
    let node = nodes(manager).await.remove(0);
    assert!(node.allocated.memory <= node.capacity.memory, "{node:?}");
    assert!(node.allocated.cpu >= 0.0, "{node:?}");
    assert!(node.free.cpu >= 0.0, "{node:?}");
    assert_eq!(
        node.free.memory.bytes() + node.allocated.memory.bytes(),
        node.capacity.memory.bytes(),
        "{node:?}"
    );
    node
}

/// Waits until the only node has exactly `tasks` allocations of 800 MiB each.
async fn wait_allocated(manager: &Addr<Manager>, tasks: u32) -> NodeView {
    let cause = format!("allocation never settled at {tasks} tasks of 800 MiB");
    let node = wait_until(WAIT, &cause, || async {
        let node = only_node(manager).await;
        (node.task_count == tasks).then_some(node)
    })
    .await;
    assert_eq!(
        node.allocated.memory,
        ByteSize::mib(800 * u64::from(tasks)),
        "{node:?}"
    );
    node
}

/// Submits a task `a` of 800 MiB, ends it as `kind` names and returns it once terminal.
///
/// For [`EndKind::DeletedWhilePending`], a blocker task holds the memory while `a` is
/// deleted, and is stopped afterwards.
async fn end_first_task(manager: &Addr<Manager>, fake: &Addr<FakeWorker>, kind: EndKind) -> Task {
    match kind {
        EndKind::Stopped => {
            let a = submit(manager, spec_with_memory("a", 800)).await;
            wait_scheduled(manager, a.id).await;
            wait_allocated(manager, 1).await;
            stop(manager, a.id).await;
            wait_state(manager, a.id, TaskState::Completed).await
        }
        EndKind::ExitedZero => {
            let a = submit(manager, spec_with_memory("a", 800)).await;
            let a = wait_scheduled(manager, a.id).await;
            wait_allocated(manager, 1).await;
            emit_status(fake, &a, TaskState::Running, "container started").await;
            emit_status(
                fake,
                &a,
                TaskState::Completed,
                "container exited with code 0",
            )
            .await;
            let done = wait_state(manager, a.id, TaskState::Completed).await;
            assert_eq!(done.exit_code, Some(0));
            done
        }
        EndKind::Failed => {
            let a = submit(manager, spec_with_memory("a", 800)).await;
            let a = wait_scheduled(manager, a.id).await;
            wait_allocated(manager, 1).await;
            emit_status(fake, &a, TaskState::Failed, "container exited with code 1").await;
            let failed = wait_state(manager, a.id, TaskState::Failed).await;
            assert_eq!(failed.exit_code, Some(1));
            failed
        }
        EndKind::DeletedWhilePending => {
            let blocker = submit(manager, spec_with_memory("blocker", 800)).await;
            wait_scheduled(manager, blocker.id).await;
            let a = submit(manager, spec_with_memory("a", 800)).await;
            let pending = wait_for_task(manager, a.id, "a should wait for memory", |task| {
                task.pending_reason.is_some()
            })
            .await;
            assert_eq!(
                pending.pending_reason.as_deref(),
                Some("1 node evaluated: 1 lacks memory")
            );
            let deleted = stop(manager, a.id).await;
            assert_eq!(deleted.state, TaskState::Completed);
            // Deleting a task that holds nothing must leave the blocker's allocation alone.
            let node = wait_allocated(manager, 1).await;
            assert_eq!(node.task_count, 1);
            stop(manager, blocker.id).await;
            wait_state(manager, blocker.id, TaskState::Completed).await;
            deleted
        }
    }
}

#[actix::test]
async fn one_slot_is_reused_after_each_kind_of_end() {
    for kind in [
        EndKind::Stopped,
        EndKind::ExitedZero,
        EndKind::Failed,
        EndKind::DeletedWhilePending,
    ] {
        let manager = start_manager();
        let fake = add_fake(
            &manager,
            "w1",
            FakeOptions {
                capacity: mib(1000),
                ..FakeOptions::default()
            },
        )
        .await;

        let a = end_first_task(&manager, &fake, kind).await;
        let node = wait_allocated(&manager, 0).await;
        assert_eq!(node.allocated, Resources::default(), "{kind:?}: {node:?}");

        let b = submit(&manager, spec_with_memory("b", 800)).await;
        let b = wait_scheduled(&manager, b.id).await;
        wait_allocated(&manager, 1).await;

        // A late repeat of a's end must not release b's allocation.
        if let Some(attempt) = a.attempt {
            emit(
                &fake,
                ReportBody::TaskStatus(status(a.id, attempt, a.state, "late repeat")),
            )
            .await;
        }
        stop(&manager, a.id).await;
        emit_status(&fake, &b, TaskState::Running, "container started").await;
        wait_state(&manager, b.id, TaskState::Running).await;
        let node = wait_allocated(&manager, 1).await;
        assert_eq!(node.task_count, 1, "{kind:?}: a was released twice");

        stop(&manager, b.id).await;
        wait_state(&manager, b.id, TaskState::Completed).await;
        let node = wait_allocated(&manager, 0).await;
        assert_eq!(node.allocated, Resources::default(), "{kind:?}: {node:?}");
        assert_eq!(node.free, node.capacity, "{kind:?}: {node:?}");
    }
}

#[actix::test]
async fn fifty_dynamic_port_tasks_get_distinct_ports() {
    let manager = start_manager();
    let fake = add_fake(&manager, "w1", FakeOptions::default()).await;
    let mut ids = Vec::new();
    for index in 0..50 {
        let mut spec = spec(&format!("web-{index}"));
        spec.memory = ByteSize::mib(1);
        spec.cpu = 0.01;
        spec.ports = vec![port(80, None)];
        ids.push(submit(&manager, spec).await.id);
    }

    let starts = wait_until(WAIT, "not every task was started", || async {
        let starts = commands(&fake).await.starts;
        (starts.len() == 50).then_some(starts)
    })
    .await;
    let ports: BTreeSet<u16> = starts
        .iter()
        .map(|start| start.ports[0].host_port.expect("dynamic port chosen"))
        .collect();
    assert_eq!(ports.len(), 50, "{ports:?}");
    assert!(ports.iter().all(|port| (20000..=32767).contains(port)));

    let recorded: BTreeSet<u16> = bounded(manager.send(GetTasks), "manager did not answer")
        .await
        .unwrap()
        .iter()
        .map(|task| task.host_ports[0].host_port)
        .collect();
    assert_eq!(recorded, ports, "tasks record the ports sent to the worker");
}

#[actix::test]
async fn same_fixed_port_twice_on_one_node_leaves_second_pending() {
    let manager = start_manager();
    add_fake(&manager, "w1", FakeOptions::default()).await;
    let mut web = spec("web");
    web.ports = vec![port(80, Some(8080))];

    let first = submit(&manager, web.clone()).await;
    let second = submit(&manager, web).await;

    wait_scheduled(&manager, first.id).await;
    let pending = wait_for_task(&manager, second.id, "second task should wait", |task| {
        task.pending_reason.is_some()
    })
    .await;
    assert_eq!(pending.state, TaskState::Pending);
    assert_eq!(
        pending.pending_reason.as_deref(),
        Some("1 node evaluated: 1 has port 8080 in use")
    );
}

#[actix::test]
async fn same_fixed_port_on_two_nodes_lands_on_both() {
    let manager = start_manager();
    add_fake(&manager, "w1", FakeOptions::default()).await;
    add_fake(&manager, "w2", FakeOptions::default()).await;
    let mut web = spec("web");
    web.ports = vec![port(80, Some(8080))];

    let first = submit(&manager, web.clone()).await;
    let second = submit(&manager, web).await;

    let first = wait_scheduled(&manager, first.id).await;
    let second = wait_scheduled(&manager, second.id).await;
    assert_ne!(first.node, second.node);
}

#[actix::test]
async fn client_id_repeat_returns_stored_task_or_conflicts() {
    let manager = start_manager();
    let id = TaskId::generate();

    let create = |spec| CreateTask { id: Some(id), spec };
    let first = manager.send(create(spec("a"))).await.unwrap().unwrap();
    let repeat = manager.send(create(spec("a"))).await.unwrap().unwrap();
    let conflict = manager.send(create(spec("b"))).await.unwrap();

    assert!(first.created);
    assert_eq!(first.task.id, id);
    assert!(!repeat.created);
    assert_eq!(repeat.task.id, first.task.id);
    assert_eq!(repeat.task.created_at, first.task.created_at);
    assert!(
        matches!(conflict, Err(Error::Conflict { task_id }) if task_id == id),
        "{conflict:?}"
    );
}

#[actix::test]
async fn invalid_spec_is_rejected_and_not_stored() {
    let manager = start_manager();
    let mut bad = spec("a");
    bad.cpu = -0.5;

    let result = manager
        .send(CreateTask {
            id: None,
            spec: bad,
        })
        .await
        .unwrap();

    match result {
        Err(Error::InvalidSpec { source }) => assert_eq!(source.field, "cpu"),
        other => panic!("expected an invalid spec error, got {other:?}"),
    }
    assert!(manager.send(GetTasks).await.unwrap().is_empty());
}

#[actix::test]
async fn unreachable_node_is_skipped_until_it_reports() {
    let manager = start_manager();
    let flaky = add_fake(
        &manager,
        "w1",
        FakeOptions {
            unreachable: true,
            ..FakeOptions::default()
        },
    )
    .await;
    let steady = add_fake(&manager, "w2", FakeOptions::default()).await;

    // Round robin tries w1 first; its start cannot reach the worker.
    let a = submit(&manager, spec("a")).await;
    let a = wait_for_task(&manager, a.id, "a should move on to w2", |task| {
        task.state == TaskState::Scheduled && task.node.as_ref().map(|n| n.as_str()) == Some("w2")
    })
    .await;
    assert!(
        a.last_error
            .as_deref()
            .unwrap_or_default()
            .contains("unreachable"),
        "{a:?}"
    );
    let views = nodes(&manager).await;
    assert_eq!(views[0].status, NodeStatus::Unreachable, "{views:?}");
    assert_eq!(views[0].task_count, 0, "{views:?}");
    assert_eq!(views[1].status, NodeStatus::Ready, "{views:?}");

    // Round robin would pick w1 next, but an unreachable node is skipped.
    let b = submit(&manager, spec("b")).await;
    let b = wait_scheduled(&manager, b.id).await;
    assert_eq!(b.node.as_ref().map(|n| n.as_str()), Some("w2"));

    bounded(
        flaky.send(SetUnreachable(false)),
        "fake worker did not answer",
    )
    .await
    .unwrap();
    emit(&flaky, heartbeat(FakeOptions::default().capacity)).await;
    wait_until(WAIT, "w1 never became ready after reporting", || async {
        (nodes(&manager).await[0].status == NodeStatus::Ready).then_some(())
    })
    .await;
    let c = submit(&manager, spec("c")).await;
    let c = wait_scheduled(&manager, c.id).await;
    assert_eq!(c.node.as_ref().map(|n| n.as_str()), Some("w1"));
    assert_eq!(commands(&steady).await.starts.len(), 2);
}

#[actix::test]
async fn task_waits_for_unreachable_node_to_report() {
    let manager = start_manager();
    let fake = add_fake(
        &manager,
        "w1",
        FakeOptions {
            unreachable: true,
            ..FakeOptions::default()
        },
    )
    .await;

    let task = submit(&manager, spec("a")).await;
    let pending = wait_for_task(&manager, task.id, "a should wait for w1", |task| {
        task.pending_reason.as_deref() == Some("1 node evaluated: 1 is not ready")
    })
    .await;
    assert_eq!(pending.state, TaskState::Pending);
    assert_eq!(nodes(&manager).await[0].status, NodeStatus::Unreachable);

    bounded(
        fake.send(SetUnreachable(false)),
        "fake worker did not answer",
    )
    .await
    .unwrap();
    emit(&fake, heartbeat(FakeOptions::default().capacity)).await;

    let placed = wait_scheduled(&manager, task.id).await;
    assert_eq!(placed.node.as_ref().map(|n| n.as_str()), Some("w1"));
    assert_eq!(nodes(&manager).await[0].status, NodeStatus::Ready);
    assert_eq!(commands(&fake).await.starts.len(), 2);
}

#[actix::test]
async fn dynamic_ports_come_from_configured_range() {
    let range = PortRange {
        first: 30100,
        last: 30101,
    };
    let manager = start_manager_with(ManagerConfig {
        dynamic_ports: range,
        ..round_robin_config()
    });
    add_fake(&manager, "w1", FakeOptions::default()).await;
    let web = || {
        let mut web = spec("web");
        web.ports = vec![port(80, None)];
        web
    };

    let first = wait_scheduled(&manager, submit(&manager, web()).await.id).await;
    let second = wait_scheduled(&manager, submit(&manager, web()).await.id).await;
    let third = submit(&manager, web()).await;

    let ports: BTreeSet<u16> = [&first, &second]
        .iter()
        .map(|task| task.host_ports[0].host_port)
        .collect();
    assert_eq!(ports, BTreeSet::from([30100, 30101]));
    let pending = wait_for_task(&manager, third.id, "third should wait for a port", |task| {
        task.pending_reason.is_some()
    })
    .await;
    assert_eq!(
        pending.pending_reason.as_deref(),
        Some("1 node evaluated: 1 has no free dynamic port")
    );

    // The end of a task frees its port, and the waiting task takes it without resubmission.
    stop(&manager, first.id).await;
    let third = wait_scheduled(&manager, third.id).await;
    assert_eq!(third.host_ports[0].host_port, first.host_ports[0].host_port);
}
