//! Tasks, their desired and observed states, and the one function that changes state.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::event::TaskEvent;
use crate::health::TaskHealth;
use crate::ids::{AttemptId, ContainerId, NodeId, TaskId};
use crate::spec::{Protocol, TaskSpec};

/// The state a user requests for a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DesiredState {
    /// The task should be running.
    Running,
    /// The task should be stopped; the record is kept.
    Stopped,
}

/// The state cube last observed for a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Accepted and waiting for a node.
    Pending,
    /// Placed on a node; its container is being started.
    Scheduled,
    /// Its container is running.
    Running,
    /// Ended normally: exited with code 0, or stopped by the user. Terminal.
    Completed,
    /// Ended abnormally: non-zero exit, failed start. Terminal.
    Failed,
    /// Its node stopped reporting, so whether it still runs is unknown.
    Lost,
}

impl TaskState {
    /// Every state, in declaration order.
    pub const ALL: [TaskState; 6] = [
        TaskState::Pending,
        TaskState::Scheduled,
        TaskState::Running,
        TaskState::Completed,
        TaskState::Failed,
        TaskState::Lost,
    ];

    /// Whether no further transition leaves this state.
    pub fn is_terminal(self) -> bool {
        matches!(self, TaskState::Completed | TaskState::Failed)
    }

    /// Whether the task holds resources on a node in this state.
    pub fn holds_allocation(self) -> bool {
        matches!(
            self,
            TaskState::Scheduled | TaskState::Running | TaskState::Lost
        )
    }

    /// Whether a task may move from `self` to `to`.
    ///
    /// | from | to |
    /// | --- | --- |
    /// | pending | scheduled, completed (stopped), failed |
    /// | scheduled | running, completed, failed, pending (start rejected), lost |
    /// | running | completed, failed, lost, scheduled (restarted) |
    /// | lost | pending (to be placed again), running (node came back), completed, failed |
    /// | completed, failed | none |
    pub fn can_transition_to(self, to: TaskState) -> bool {
        use TaskState::*;
        matches!(
            (self, to),
            (Pending, Scheduled | Completed | Failed)
                | (Scheduled, Running | Completed | Failed | Pending | Lost)
                | (Running, Completed | Failed | Lost | Scheduled)
                | (Lost, Pending | Running | Completed | Failed)
        )
    }

    /// The lowercase name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Scheduled => "scheduled",
            TaskState::Running => "running",
            TaskState::Completed => "completed",
            TaskState::Failed => "failed",
            TaskState::Lost => "lost",
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A transition that the state table does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("task {task_id} cannot move from {from} to {to}")]
pub struct InvalidTransition {
    /// The task.
    pub task_id: TaskId,
    /// Its current state.
    pub from: TaskState,
    /// The requested state.
    pub to: TaskState,
}

/// A host port bound to a container port, as read back from the container engine.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortBinding {
    /// Port inside the container.
    pub container_port: u16,
    /// Protocol of both ports.
    pub protocol: Protocol,
    /// Address the host port listens on.
    pub host_ip: String,
    /// Port on the host.
    pub host_port: u16,
}

/// Reason recorded when the user stops a task.
pub const STOPPED_BY_USER: &str = "stopped by user";

/// A task: its spec, what the user wants, and what cube observed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// Identifier, client-supplied or generated.
    pub id: TaskId,
    /// The container to run and its resources.
    pub spec: TaskSpec,
    /// The state the user requests.
    pub desired_state: DesiredState,
    /// The state cube last observed.
    pub state: TaskState,
    /// Node the current attempt is placed on.
    pub node: Option<NodeId>,
    /// Current attempt; every placement or restart is a new one.
    pub attempt: Option<AttemptId>,
    /// Container of the current attempt, once created.
    pub container_id: Option<ContainerId>,
    /// Host ports bound for the current attempt.
    pub host_ports: Vec<PortBinding>,
    /// When the task was accepted.
    pub created_at: Timestamp,
    /// When the current attempt's container started.
    pub started_at: Option<Timestamp>,
    /// When the task reached a terminal state.
    pub finished_at: Option<Timestamp>,
    /// How many times the task was restarted by its restart policy.
    pub restart_count: u32,
    /// When the worker starts the next attempt, while the task waits out a restart back-off.
    #[serde(default)]
    pub next_attempt_at: Option<Timestamp>,
    /// Last error reported for the task, such as a failed start.
    pub last_error: Option<String>,
    /// Exit code of the last container that exited.
    pub exit_code: Option<i64>,
    /// Why the task is still pending, such as "2 nodes evaluated: 2 lack memory".
    pub pending_reason: Option<String>,
    /// Health of the current attempt as its worker last reported it. It is `None` until that
    /// attempt's first health report, and always without a health check in the spec.
    #[serde(default)]
    pub health: Option<TaskHealth>,
}

impl Task {
    /// Creates a pending task that should run.
    pub fn new(id: TaskId, spec: TaskSpec, now: Timestamp) -> Self {
        Self {
            id,
            spec,
            desired_state: DesiredState::Running,
            state: TaskState::Pending,
            node: None,
            attempt: None,
            container_id: None,
            host_ports: Vec::new(),
            created_at: now,
            started_at: None,
            finished_at: None,
            restart_count: 0,
            next_attempt_at: None,
            last_error: None,
            exit_code: None,
            pending_reason: None,
            health: None,
        }
    }

    /// Moves the task to `to` and returns the event that records the change.
    ///
    /// This is the only place a task's observed state changes. Reaching a terminal state sets
    /// `finished_at`; reaching `running` sets `started_at`. Every state but `scheduled` clears
    /// `next_attempt_at`, since only a scheduled task waits for a restart. The returned
    /// event's sequence number is 0 until the store assigns one.
    ///
    /// # Errors
    ///
    /// Returns [`InvalidTransition`] and leaves the task unchanged when the state table
    /// does not allow the change.
    pub fn transition(
        &mut self,
        to: TaskState,
        reason: impl Into<String>,
        now: Timestamp,
    ) -> Result<TaskEvent, InvalidTransition> {
        let from = self.state;
        if !from.can_transition_to(to) {
            return Err(InvalidTransition {
                task_id: self.id,
                from,
                to,
            });
        }
        self.state = to;
        if from == TaskState::Pending {
            // The reason it waited no longer applies once it leaves pending.
            self.pending_reason = None;
        }
        if to != TaskState::Scheduled {
            self.next_attempt_at = None;
        }
        match to {
            TaskState::Running => self.started_at = Some(now),
            TaskState::Completed | TaskState::Failed => self.finished_at = Some(now),
            TaskState::Pending => self.pending_reason = None,
            TaskState::Scheduled | TaskState::Lost => {}
        }
        Ok(TaskEvent {
            seq: 0,
            task_id: self.id,
            attempt: self.attempt,
            from,
            to,
            at: now,
            reason: reason.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;

    /// The allowed transitions, written out pair by pair.
    const ALLOWED: &[(TaskState, TaskState)] = {
        use TaskState::*;
        &[
            (Pending, Scheduled),
            (Pending, Completed),
            (Pending, Failed),
            (Scheduled, Running),
            (Scheduled, Completed),
            (Scheduled, Failed),
            (Scheduled, Pending),
            (Scheduled, Lost),
            (Running, Completed),
            (Running, Failed),
            (Running, Lost),
            (Running, Scheduled),
            (Lost, Pending),
            (Lost, Running),
            (Lost, Completed),
            (Lost, Failed),
        ]
    };

    #[test]
    fn transition_table_covers_every_pair() {
        for from in TaskState::ALL {
            for to in TaskState::ALL {
                let expected = ALLOWED.contains(&(from, to));
                assert_eq!(
                    from.can_transition_to(to),
                    expected,
                    "{from} -> {to} should be {}",
                    if expected { "allowed" } else { "rejected" }
                );
            }
        }
    }

    #[test]
    fn transition_applies_every_allowed_pair() {
        let now = Utc::now();
        for from in TaskState::ALL {
            for to in TaskState::ALL {
                let mut task = Task::new(TaskId::generate(), TaskSpec::new("t", "i"), now);
                task.state = from;
                let result = task.transition(to, "test", now);
                if from.can_transition_to(to) {
                    let event = result.expect("allowed transition");
                    assert_eq!((event.from, event.to), (from, to));
                    assert_eq!(task.state, to);
                } else {
                    assert!(result.is_err(), "{from} -> {to} should fail");
                    assert_eq!(task.state, from, "a rejected transition changes nothing");
                }
            }
        }
    }

    #[test]
    fn terminal_states_have_no_exit() {
        for from in [TaskState::Completed, TaskState::Failed] {
            assert!(from.is_terminal());
            for to in TaskState::ALL {
                assert!(!from.can_transition_to(to), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn transition_stamps_times() {
        let now = Utc::now();
        let mut task = Task::new(TaskId::generate(), TaskSpec::new("t", "i"), now);
        task.transition(TaskState::Scheduled, "placed", now)
            .unwrap();
        assert_eq!(task.started_at, None);
        task.transition(TaskState::Running, "started", now).unwrap();
        assert_eq!(task.started_at, Some(now));
        task.transition(TaskState::Completed, STOPPED_BY_USER, now)
            .unwrap();
        assert_eq!(task.finished_at, Some(now));
    }

    #[test]
    fn transition_clears_next_attempt_unless_scheduled() {
        let now = Utc::now();
        let mut task = Task::new(TaskId::generate(), TaskSpec::new("t", "i"), now);
        task.state = TaskState::Running;
        task.next_attempt_at = Some(now);
        task.transition(TaskState::Scheduled, "restarting", now)
            .unwrap();
        assert_eq!(task.next_attempt_at, Some(now), "scheduled keeps it");
        task.transition(TaskState::Running, "restarted", now)
            .unwrap();
        assert_eq!(task.next_attempt_at, None);
    }

    #[test]
    fn task_without_next_attempt_field_decodes() {
        let task = Task::new(TaskId::generate(), TaskSpec::new("t", "i"), Utc::now());
        let mut json = serde_json::to_value(&task).unwrap();
        json.as_object_mut().unwrap().remove("next_attempt_at");
        let decoded: Task = serde_json::from_value(json).unwrap();
        assert_eq!(decoded, task);
    }

    #[test]
    fn task_without_health_field_decodes() {
        let task = Task::new(TaskId::generate(), TaskSpec::new("t", "i"), Utc::now());
        let mut json = serde_json::to_value(&task).unwrap();
        json.as_object_mut().unwrap().remove("health");
        let decoded: Task = serde_json::from_value(json).unwrap();
        assert_eq!(decoded.health, None);
        assert_eq!(decoded, task);
    }

    #[test]
    fn states_serialize_lowercase() {
        assert_eq!(
            serde_json::to_string(&TaskState::Running).unwrap(),
            "\"running\""
        );
        assert_eq!(
            serde_json::to_string(&DesiredState::Stopped).unwrap(),
            "\"stopped\""
        );
    }
}
