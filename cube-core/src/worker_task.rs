//! The worker's own record of a task it was told to run.

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::ids::{AttemptId, ContainerId, TaskId};
use crate::spec::{Protocol, TaskSpec};
use crate::task::{PortBinding, TaskState};

/// A host port a worker should bind for a container port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortMapping {
    /// Port inside the container.
    pub container_port: u16,
    /// Protocol of both ports.
    pub protocol: Protocol,
    /// Host port to bind; `None` lets the container engine choose a free one.
    pub host_port: Option<u16>,
}

impl PortMapping {
    /// The mappings a spec asks for, with its fixed host ports and dynamic ones unset.
    pub fn from_spec(spec: &TaskSpec) -> Vec<PortMapping> {
        spec.ports
            .iter()
            .map(|port| PortMapping {
                container_port: port.container_port,
                protocol: port.protocol,
                host_port: port.host_port,
            })
            .collect()
    }
}

/// A task as its worker knows it: one attempt, its container and what became of it.
///
/// A local restart replaces `attempt` with a new one and records the old one in `replaces`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerTask {
    /// The task.
    pub task_id: TaskId,
    /// The attempt this worker runs.
    pub attempt: AttemptId,
    /// The container to run and its resources.
    pub spec: TaskSpec,
    /// Host ports to bind.
    pub ports: Vec<PortMapping>,
    /// Observed state of the attempt: scheduled (also while a restart waits), running,
    /// completed or failed.
    pub state: TaskState,
    /// Container, once created.
    pub container_id: Option<ContainerId>,
    /// Ports bound, read back from the engine after start.
    pub host_ports: Vec<PortBinding>,
    /// Exit code, once the container exited.
    pub exit_code: Option<i64>,
    /// Why the attempt failed or ended.
    pub reason: Option<String>,
    /// Whether a stop was requested; a stopped task never starts again.
    pub stop_requested: bool,
    /// When the worker accepted the attempt.
    pub accepted_at: Timestamp,
    /// When the container started.
    pub started_at: Option<Timestamp>,
    /// When the attempt ended.
    pub finished_at: Option<Timestamp>,
    /// Restarts made under the task's restart policy since the manager placed it here.
    #[serde(default)]
    pub restart_count: u32,
    /// When the next attempt starts, while the task waits out a restart back-off.
    #[serde(default)]
    pub next_attempt_at: Option<Timestamp>,
    /// The attempt that `attempt` replaces, when the worker started it as a local restart.
    #[serde(default)]
    pub replaces: Option<AttemptId>,
}
