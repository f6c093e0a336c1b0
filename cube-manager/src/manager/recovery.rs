//! Recovery after a manager restart: tasks loaded from the store meet their workers again.
//!
//! [`Manager::new`] notes every loaded task that holds an allocation on a node (`scheduled`,
//! `running` or `lost`). When that node registers, [`Manager::recover_node`] books those
//! allocations in the [`Scheduler`] before any placement pass, then asks the worker for its
//! records ([`ListTasks`](cube_core::messages::ListTasks)) and reconciles each task with them:
//!
//! - a record of the task's current attempt, or of a local restart of it, is applied like a
//!   status report, so a task the worker still runs stays `running` with its container id;
//! - a `scheduled` task the worker has no record of never got its [`StartTask`], which is sent
//!   again with the same attempt (the worker treats a repeated attempt as harmless);
//! - a `running` task the worker has no record of lost its container with the record (a
//!   worker whose data directory was wiped), so it is started again under the same attempt;
//! - an active record of an attempt that is no longer the task's current one is stopped.
//!
//! # Caveats
//!
//! A worker record of a task this manager does not know at all is left alone: it may belong to
//! another manager. When `ListTasks` fails, the tasks keep their state and their bookings, and
//! the reports that the worker replays still bring them up to date.

use std::collections::{HashMap, HashSet};

use actix::prelude::*;
use log::{debug, info, warn};

use cube_core::ids::{NodeId, TaskId};
use cube_core::messages::{CommandError, StartTask, StopTask, TaskStatusReport};
use cube_core::task::{DesiredState, Task, TaskState};
use cube_core::worker_task::{PortMapping, WorkerTask};

use super::Manager;
use crate::scheduler::{RestoreAllocations, RestoredAllocation};

/// Reason given to a worker for stopping an attempt the manager has replaced.
const SUPERSEDED: &str = "attempt superseded while the manager restarted";

/// The loaded tasks that hold an allocation on a node and must be reconciled with it.
pub(super) fn tasks_to_recover(tasks: &[Task]) -> HashSet<TaskId> {
    tasks
        .iter()
        .filter(|task| task.state.holds_allocation() && task.node.is_some())
        .map(|task| task.id)
        .collect()
}

impl Manager {
    /// Books the allocations of the loaded tasks on `node` and reconciles them with the
    /// worker's records; does nothing for a node without such tasks.
    pub(super) fn recover_node(&mut self, node: &NodeId, ctx: &mut Context<Self>) {
        let ids: Vec<TaskId> = self
            .recovering
            .iter()
            .filter(|id| {
                self.tasks
                    .get(id)
                    .is_some_and(|task| task.node.as_ref() == Some(node))
            })
            .copied()
            .collect();
        if ids.is_empty() {
            return;
        }
        let Some(worker) = self.workers.get(node) else {
            return;
        };
        for id in &ids {
            self.recovering.remove(id);
        }

        let tasks = ids
            .iter()
            .map(|id| restored_allocation(&self.tasks[id]))
            .collect();
        self.scheduler.do_send(RestoreAllocations {
            node: node.clone(),
            tasks,
        });
        info!(
            "node rejoined with stored tasks node_id={node} tasks={}",
            ids.len()
        );

        let handle = worker.handle.clone();
        let timeout = self.config.command_timeout;
        let node = node.clone();
        let listed = async move { handle.list_tasks(timeout).await }
            .into_actor(self)
            .map(move |result, act, ctx| match result {
                Ok(records) => act.reconcile_node(&node, &ids, records, ctx),
                Err(error) => warn!(
                    "failed to list tasks of node, its stored tasks wait for its reports \
                     node_id={node} error={error}"
                ),
            });
        ctx.spawn(listed);
    }

    /// Reconciles the loaded tasks `ids` on `node` with the worker's `records`.
    fn reconcile_node(
        &mut self,
        node: &NodeId,
        ids: &[TaskId],
        records: Vec<WorkerTask>,
        ctx: &mut Context<Self>,
    ) {
        let records: HashMap<TaskId, WorkerTask> = records
            .into_iter()
            .map(|record| (record.task_id, record))
            .collect();
        for &id in ids {
            let Some(task) = self.tasks.get(&id) else {
                continue;
            };
            // A report may have moved the task on since the node registered.
            if task.node.as_ref() != Some(node) || task.state.is_terminal() {
                continue;
            }
            let current = task.attempt;
            match records.get(&id) {
                Some(record) if Some(record.attempt) == current || record.replaces == current => {
                    if let Some(status) = status_of(record) {
                        self.apply_status(node, status, ctx);
                    }
                }
                _ => self.start_again(node, id, ctx),
            }
            if let Some(task) = self.tasks.get(&id)
                && task.desired_state == DesiredState::Stopped
                && !task.state.is_terminal()
            {
                let task = task.clone();
                self.send_stop(&task, ctx);
            }
        }
        self.stop_superseded(node, &records, ctx);
    }

    /// Sends the current attempt of `id` to `node` again, because the worker has no record
    /// of it.
    fn start_again(&mut self, node: &NodeId, id: TaskId, ctx: &mut Context<Self>) {
        let Some(task) = self.tasks.get(&id) else {
            return;
        };
        let Some(attempt) = task.attempt else {
            return;
        };
        if !matches!(task.state, TaskState::Scheduled | TaskState::Running) {
            return;
        }
        let mut task = task.clone();
        if task.state == TaskState::Running {
            let reason =
                format!("node {node} has no record of the running attempt; starting it again");
            match self.transition(&mut task, TaskState::Scheduled, reason) {
                Ok(event) => {
                    task.container_id = None;
                    let _ = self.commit(task.clone(), vec![event]);
                }
                Err(error) => {
                    debug!("task not started again: {error}");
                    return;
                }
            }
        }
        let Some(worker) = self.workers.get(node) else {
            return;
        };
        info!("task start sent again task_id={id} attempt={attempt} node_id={node}");
        let start = StartTask {
            task_id: id,
            attempt,
            spec: task.spec.clone(),
            ports: stored_ports(&task),
        };
        let handle = worker.handle.clone();
        let timeout = self.config.command_timeout;
        let durable = self.store.flushed();
        let sent = async move {
            let _ = durable.await;
            handle.start_task(start, timeout).await
        }
        .into_actor(self)
        .map(move |result, act, ctx| act.start_acknowledged(id, attempt, result, ctx));
        ctx.spawn(sent);
    }

    /// Stops every active attempt on `node` whose task now runs another attempt or elsewhere.
    fn stop_superseded(
        &mut self,
        node: &NodeId,
        records: &HashMap<TaskId, WorkerTask>,
        ctx: &mut Context<Self>,
    ) {
        let Some(worker) = self.workers.get(node) else {
            return;
        };
        for record in records.values() {
            if record.state.is_terminal() || record.stop_requested {
                continue;
            }
            let Some(task) = self.tasks.get(&record.task_id) else {
                continue;
            };
            let current = task.node.as_ref() == Some(node)
                && !task.state.is_terminal()
                && (task.attempt == Some(record.attempt) || task.attempt == record.replaces);
            if current {
                continue;
            }
            info!(
                "stopping superseded attempt task_id={} attempt={} node_id={node}",
                record.task_id, record.attempt
            );
            let stop = StopTask {
                task_id: record.task_id,
                attempt: Some(record.attempt),
                reason: SUPERSEDED.to_owned(),
            };
            let handle = worker.handle.clone();
            let timeout = self.config.command_timeout;
            let task_id = record.task_id;
            let sent = async move { handle.stop_task(stop, timeout).await }
                .into_actor(self)
                .map(move |result: Result<(), CommandError>, _, _| {
                    if let Err(error) = result {
                        warn!("failed to stop superseded attempt task_id={task_id} error={error}");
                    }
                });
            ctx.spawn(sent);
        }
    }
}

/// Returns the allocation `task` held, rebuilt from its spec and its stored host ports.
fn restored_allocation(task: &Task) -> RestoredAllocation {
    RestoredAllocation {
        task_id: task.id,
        resources: task.spec.resources(),
        ports: stored_ports(task),
    }
}

/// Returns the port mappings of `task`'s current attempt, with the host ports it was given.
fn stored_ports(task: &Task) -> Vec<PortMapping> {
    task.host_ports
        .iter()
        .map(|binding| PortMapping {
            container_port: binding.container_port,
            protocol: binding.protocol,
            host_port: Some(binding.host_port),
        })
        .collect()
}

/// Builds the status report that `record` amounts to, or `None` for an attempt that the worker
/// accepted but has not started yet, whose reports are still to come.
fn status_of(record: &WorkerTask) -> Option<TaskStatusReport> {
    if record.state == TaskState::Scheduled && record.next_attempt_at.is_none() {
        return None;
    }
    Some(TaskStatusReport {
        task_id: record.task_id,
        attempt: record.attempt,
        state: record.state,
        container_id: record.container_id.clone(),
        host_ports: record.host_ports.clone(),
        exit_code: record.exit_code,
        reason: record
            .reason
            .clone()
            .unwrap_or_else(|| "reconciled with the worker's record".to_owned()),
        restart_count: record.restart_count,
        next_attempt_at: record.next_attempt_at,
        replaces: record.replaces,
    })
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use cube_core::ids::AttemptId;
    use cube_core::spec::TaskSpec;

    use super::*;

    fn task_in(state: TaskState, node: Option<&str>) -> Task {
        let mut task = Task::new(TaskId::generate(), TaskSpec::new("t", "i"), Utc::now());
        task.state = state;
        task.node = node.map(|name| NodeId::new(name).unwrap());
        task.attempt = node.map(|_| AttemptId::generate());
        task
    }

    #[test]
    fn only_placed_tasks_are_recovered() {
        let tasks = vec![
            task_in(TaskState::Pending, None),
            task_in(TaskState::Scheduled, Some("a")),
            task_in(TaskState::Running, Some("a")),
            task_in(TaskState::Lost, Some("b")),
            task_in(TaskState::Completed, Some("a")),
            task_in(TaskState::Failed, Some("b")),
        ];
        let recovered = tasks_to_recover(&tasks);
        let expected: HashSet<TaskId> = tasks[1..4].iter().map(|task| task.id).collect();
        assert_eq!(recovered, expected);
    }
}
