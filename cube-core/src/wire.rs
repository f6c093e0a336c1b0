//! JSON bodies of the manager's and workers' HTTP APIs.

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::health::TaskHealth;
use crate::ids::{AttemptId, ContainerId, NodeId, TaskId};
use crate::messages::CommandError;
use crate::node::{HostMetrics, NodeStatus};
use crate::resources::Resources;
use crate::spec::TaskSpec;
use crate::task::{DesiredState, PortBinding, Task, TaskState};

/// Body of every 4xx and 5xx response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Description of the failure, in one sentence.
    pub error: String,
    /// The request field at fault, such as `memory` or `ports[0].host_port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The worker command error behind the response, so a bridge can rebuild it exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_error: Option<CommandError>,
}

impl ErrorBody {
    /// Creates a body that names no field.
    pub fn new(error: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            field: None,
            command_error: None,
        }
    }

    /// Creates a body that names `field`.
    pub fn for_field(field: impl Into<String>, error: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            field: Some(field.into()),
            command_error: None,
        }
    }
}

/// Body of `POST /tasks` on the manager: a spec, optionally with a client-chosen id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubmitTask {
    /// Client-supplied id; a repeat with an identical spec returns the stored task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<TaskId>,
    /// The container to run and its resources.
    #[serde(flatten)]
    pub spec: TaskSpec,
}

/// A task as the manager's API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskView {
    /// Task id.
    pub id: TaskId,
    /// Display label from the spec.
    pub name: String,
    /// Image from the spec.
    pub image: String,
    /// Observed state.
    pub state: TaskState,
    /// The state the user requests.
    pub desired_state: DesiredState,
    /// Node of the current attempt.
    pub node: Option<NodeId>,
    /// Current attempt.
    pub attempt: Option<AttemptId>,
    /// Container of the current attempt.
    pub container_id: Option<ContainerId>,
    /// Host ports bound for the current attempt.
    pub host_ports: Vec<PortBinding>,
    /// When the task was accepted.
    pub created_at: Timestamp,
    /// When the current container started.
    pub started_at: Option<Timestamp>,
    /// When the task ended.
    pub finished_at: Option<Timestamp>,
    /// Restarts so far.
    pub restart_count: u32,
    /// When the next attempt starts, while the task waits out a restart back-off.
    #[serde(default)]
    pub next_attempt_at: Option<Timestamp>,
    /// Last error reported.
    pub last_error: Option<String>,
    /// Exit code of the last container that exited.
    pub exit_code: Option<i64>,
    /// Reason the task is still pending.
    pub pending_reason: Option<String>,
    /// Health of the current attempt, once its worker reported any.
    #[serde(default)]
    pub health: Option<TaskHealth>,
    /// The full spec.
    pub spec: TaskSpec,
}

impl From<&Task> for TaskView {
    fn from(task: &Task) -> Self {
        Self {
            id: task.id,
            name: task.spec.name.clone(),
            image: task.spec.image.clone(),
            state: task.state,
            desired_state: task.desired_state,
            node: task.node.clone(),
            attempt: task.attempt,
            container_id: task.container_id.clone(),
            host_ports: task.host_ports.clone(),
            created_at: task.created_at,
            started_at: task.started_at,
            finished_at: task.finished_at,
            restart_count: task.restart_count,
            next_attempt_at: task.next_attempt_at,
            last_error: task.last_error.clone(),
            exit_code: task.exit_code,
            pending_reason: task.pending_reason.clone(),
            health: task.health.clone(),
            spec: task.spec.clone(),
        }
    }
}

/// A node as the manager's `GET /nodes` returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    /// Node id.
    pub id: NodeId,
    /// Base URL of a remote worker's API; `None` for an in-process worker.
    pub address: Option<String>,
    /// Whether it takes tasks.
    pub status: NodeStatus,
    /// Resources offered.
    pub capacity: Resources,
    /// Resources allocated to tasks.
    pub allocated: Resources,
    /// Resources still free.
    pub free: Resources,
    /// Tasks holding an allocation on it.
    pub task_count: u32,
    /// Latest host metrics.
    pub metrics: Option<HostMetrics>,
}

/// Response header of a worker's `GET /events` that names the worker process's outbox.
///
/// The value changes when the worker process restarts, so a client that sees a new value
/// knows that the worker's sequence numbers may have started again from 1.
pub const WORKER_INSTANCE_HEADER: &str = "cube-worker-instance";

/// Body of `POST /nodes` on the manager: a worker asks to be added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinNode {
    /// Base URL of the worker's API as the manager should reach it, such as
    /// `http://127.0.0.1:5556`.
    pub address: String,
}
