//! What the [`Manager`] does when a node goes silent and when it comes back.
//!
//! A periodic check ([`Manager::check_liveness`]) gets from [`crate::liveness::Liveness`] the
//! nodes that have been silent for the heartbeat TTL plus grace. Each such node becomes `down` in
//! the scheduler; each of its unfinished tasks becomes `lost`, gives its allocation back and
//! returns to `pending` (same task id), so the next placement pass starts a new attempt on
//! another node. A task the user stopped ends `completed` instead. Nothing here sends a
//! command to the silent node or waits for it.
//!
//! When a report arrives from a down node, or it registers again, the manager lists the
//! node's tasks (`ListTasks`, with the command timeout, without blocking the actor) and
//! sends [`StopTask`] for each attempt that the manager ended or moved elsewhere. A status
//! report about such an attempt triggers the same stop, which covers tasks a returning
//! worker adopts after the list was taken.

use std::time::Duration;

use actix::prelude::*;
use log::{debug, error, info, warn};

use cube_core::ids::{AttemptId, NodeId, TaskId};
use cube_core::messages::StopTask;
use cube_core::node::NodeStatus;
use cube_core::task::{DesiredState, STOPPED_BY_USER, TaskState};
use cube_core::worker_task::WorkerTask;

use super::{Manager, is_contact_lost};
use crate::error::error_chain;
use crate::scheduler::NodeUpdated;

impl Manager {
    /// Declares down every node silent for longer than the liveness window, and replaces its
    /// tasks.
    pub(super) fn check_liveness(&mut self, ctx: &mut Context<Self>) {
        // The interval keeps the actor alive, so stop here once no one has its address.
        // Workers reach it only through weak recipients.
        if !ctx.connected() {
            info!("manager has no users left; stopping");
            ctx.stop();
            return;
        }
        let now = self.config.clock.monotonic();
        for (node, silence) in self.liveness.expire(now) {
            if self.workers.contains_key(&node) {
                self.node_down(&node, silence, ctx);
            }
        }
    }

    /// Marks `node` down and moves its unfinished tasks to `lost`, then to `pending`.
    fn node_down(&mut self, node: &NodeId, silence: Duration, ctx: &mut Context<Self>) {
        warn!(
            "node down node_id={node} silent_ms={} window_ms={}",
            silence.as_millis(),
            self.liveness.window().as_millis()
        );
        self.scheduler.do_send(NodeUpdated {
            node: node.clone(),
            capacity: None,
            metrics: None,
            status: Some(NodeStatus::Down),
        });

        let mut lost: Vec<TaskId> = self
            .tasks
            .values()
            .filter(|task| task.node.as_ref() == Some(node) && !task.state.is_terminal())
            .filter(|task| task.state != TaskState::Pending)
            .map(|task| task.id)
            .collect();
        lost.sort();
        let reason = format!(
            "node {node} is down: no report for {} ms",
            silence.as_millis()
        );
        let mut requeued = false;
        for task_id in lost {
            requeued |= self.replace_lost_task(task_id, node, &reason);
        }
        if requeued {
            ctx.notify(super::PlacePending);
        }
    }

    /// Records `task_id` as lost with `reason`, releases its allocation and, unless the user
    /// stopped it, queues it for a new placement. Returns whether it was queued.
    fn replace_lost_task(&mut self, task_id: TaskId, node: &NodeId, reason: &str) -> bool {
        let Some(task) = self.tasks.get(&task_id) else {
            return false;
        };
        let mut task = task.clone();
        let lost_attempt = task.attempt;
        let mut events = Vec::new();
        if task.state != TaskState::Lost {
            match self.transition(&mut task, TaskState::Lost, reason) {
                Ok(event) => events.push(event),
                Err(error) => {
                    error!("{error}");
                    return false;
                }
            }
        }
        task.last_error = Some(reason.to_owned());

        let replace = task.desired_state == DesiredState::Running;
        let next = if replace {
            let attempt = lost_attempt.map(|a| a.to_string()).unwrap_or_default();
            let why = format!("replacing attempt {attempt} lost on node {node}");
            self.transition(&mut task, TaskState::Pending, why)
        } else {
            self.transition(&mut task, TaskState::Completed, STOPPED_BY_USER)
        };
        match next {
            Ok(event) => events.push(event),
            Err(error) => {
                error!("{error}");
                return false;
            }
        }
        if replace {
            task.node = None;
            task.attempt = None;
            task.container_id = None;
            task.host_ports.clear();
        }
        if let Err(error) = self.commit(task, events) {
            error!("{}", error_chain(&error));
            return false;
        }

        // Sent before the task is queued, so the scheduler frees the old booking before it
        // places the task again.
        self.release_quietly(task_id);
        if replace {
            self.queued.push_back(task_id);
        }
        replace
    }

    /// Marks `node` ready again after it was down, and stops the attempts it still runs that
    /// the manager moved elsewhere or ended.
    pub(super) fn node_returned(&mut self, node: &NodeId, ctx: &mut Context<Self>) {
        info!("node back after being down node_id={node}");
        self.mark_reachable(node, ctx);

        let Some(worker) = self.workers.get(node) else {
            return;
        };
        let handle = worker.handle.clone();
        let timeout = self.config.command_timeout;
        let node = node.clone();
        let listed = async move { handle.list_tasks(timeout).await }
            .into_actor(self)
            .map(move |result, act, ctx| match result {
                Ok(tasks) => act.stop_stale_attempts(&node, &tasks, ctx),
                Err(error) => {
                    // Its reports about stale attempts still lead to stops.
                    warn!(
                        "failed to list the tasks of a returning node node_id={node} error={error}"
                    );
                }
            });
        ctx.spawn(listed);
    }

    /// Stops each unfinished attempt in `tasks`, as listed by `node`, that is stale.
    fn stop_stale_attempts(
        &mut self,
        node: &NodeId,
        tasks: &[WorkerTask],
        ctx: &mut Context<Self>,
    ) {
        let active = tasks
            .iter()
            .filter(|task| !task.state.is_terminal() && !task.stop_requested);
        for listed in active {
            self.stop_if_stale(node, listed.task_id, listed.attempt, listed.replaces, ctx);
        }
    }

    /// Sends `node` a [`StopTask`] for `attempt` of `task_id` if the manager no longer wants
    /// that attempt to run there.
    ///
    /// `replaces` is the attempt that `attempt` replaced in a local restart on the worker. An
    /// attempt that replaces the task's current one on the same node is not stale. A task the
    /// manager does not know is left alone.
    pub(super) fn stop_if_stale(
        &mut self,
        node: &NodeId,
        task_id: TaskId,
        attempt: AttemptId,
        replaces: Option<AttemptId>,
        ctx: &mut Context<Self>,
    ) {
        let Some(task) = self.tasks.get(&task_id) else {
            // NOTE: a task unknown to the manager is never stopped, so a manager that lost
            // its store does not stop everything its workers run.
            debug!("unknown task on node left alone task_id={task_id} node_id={node}");
            return;
        };
        let on_node = task.node.as_ref() == Some(node);
        if on_node && task.desired_state == DesiredState::Running && !task.state.is_terminal() {
            // The worker owns the chain of local restarts on the task's node. Another attempt
            // there is an older or newer link of that chain, such as a report replayed after a
            // manager restart, and stopping it would stop the task's current container.
            debug!(
                "attempt on the task's own node left alone task_id={task_id} attempt={attempt} node_id={node}"
            );
            return;
        }
        let current =
            task.attempt == Some(attempt) || (replaces.is_some() && replaces == task.attempt);
        let reason = if task.desired_state == DesiredState::Stopped {
            STOPPED_BY_USER.to_owned()
        } else if task.state.is_terminal() {
            format!("task already ended as {}", task.state)
        } else if !on_node || !current {
            match (&task.node, task.attempt) {
                (Some(other), Some(new)) => format!("replaced by attempt {new} on node {other}"),
                _ => "replaced: the task waits for a new placement".to_owned(),
            }
        } else {
            return;
        };
        self.send_stop_attempt(node, task_id, attempt, reason, ctx);
    }

    /// Sends [`StopTask`] for one attempt without waiting for it; a failure is logged.
    fn send_stop_attempt(
        &mut self,
        node: &NodeId,
        task_id: TaskId,
        attempt: AttemptId,
        reason: String,
        ctx: &mut Context<Self>,
    ) {
        let Some(worker) = self.workers.get(node) else {
            return;
        };
        info!(
            "stale attempt stopped task_id={task_id} attempt={attempt} node_id={node} reason={reason}"
        );
        let handle = worker.handle.clone();
        let stop = StopTask {
            task_id,
            attempt: Some(attempt),
            reason,
        };
        let timeout = self.config.command_timeout;
        // The change that made the attempt stale is durable first, so a restarted manager
        // never wants back an attempt it had stopped.
        let durable = self.store.flushed();
        let node = node.clone();
        let sent = async move {
            let _ = durable.await;
            handle.stop_task(stop, timeout).await
        }
        .into_actor(self)
        .map(move |result, act, _| {
            if let Err(error) = result {
                warn!(
                    "failed to stop stale attempt task_id={task_id} attempt={attempt} \
                     node_id={node} error={error}"
                );
                if is_contact_lost(&error) {
                    act.mark_unreachable(&node, &error.to_string());
                }
            }
        });
        ctx.spawn(sent);
    }
}
