//! Typed messages between the manager and its workers, and the [`WorkerHandle`] that carries
//! them.
//!
//! The manager cannot tell whether a worker runs in its process or on another machine: it
//! holds one [`WorkerHandle`] per worker, filled either from a local Worker actor or from a
//! bridge actor that speaks HTTP to a remote worker. Commands are acknowledged once the
//! worker has recorded them; what happens afterwards comes back as [`WorkerReport`]s.

use std::time::Duration;

use actix::dev::ToEnvelope;
use actix::{Actor, Addr, Handler, MailboxError, Message, Recipient, WeakRecipient};
use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::health::TaskHealth;
use crate::ids::{AttemptId, ContainerId, NodeId, TaskId};
use crate::node::{HostMetrics, NodeDescription};
use crate::resources::Resources;
use crate::spec::{Protocol, TaskSpec};
use crate::task::{PortBinding, TaskState};
use crate::worker_task::{PortMapping, WorkerTask};

/// Failure of a command to a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CommandError {
    /// The worker could not be reached.
    #[error("worker {node} is unreachable: {reason}")]
    Unreachable {
        /// The worker.
        node: NodeId,
        /// The transport error.
        reason: String,
    },
    /// The worker did not respond in time.
    #[error("worker {node} did not answer within {timeout_ms} ms")]
    TimedOut {
        /// The worker.
        node: NodeId,
        /// The timeout that expired, in milliseconds.
        timeout_ms: u64,
    },
    /// The worker refused the command.
    #[error("worker {node} rejected the command: {reason}")]
    Rejected {
        /// The worker.
        node: NodeId,
        /// Why.
        reason: String,
    },
    /// A host port the command needs is held by another process on the worker's host.
    #[error("host port {port}/{protocol} is already in use on worker {node}")]
    PortInUse {
        /// The worker.
        node: NodeId,
        /// Protocol of the port.
        protocol: Protocol,
        /// The host port.
        port: u16,
    },
    /// The worker's actor has stopped or its mailbox is closed.
    #[error("worker {node} is shut down")]
    ShutDown {
        /// The worker.
        node: NodeId,
    },
}

impl CommandError {
    /// Converts a local mailbox failure of `node`'s actor.
    pub fn from_mailbox(node: &NodeId, error: MailboxError, timeout: Duration) -> Self {
        match error {
            MailboxError::Timeout => CommandError::TimedOut {
                node: node.clone(),
                timeout_ms: timeout.as_millis() as u64,
            },
            MailboxError::Closed => CommandError::ShutDown { node: node.clone() },
        }
    }
}

/// Starts one attempt of a task on a worker.
///
/// The worker acknowledges once it has recorded the attempt; the container is started
/// afterwards and its fate comes back as reports. Sending the same attempt again is
/// harmless.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Message)]
#[rtype(result = "Result<(), CommandError>")]
pub struct StartTask {
    /// The task.
    pub task_id: TaskId,
    /// The attempt, chosen by the manager at placement.
    pub attempt: AttemptId,
    /// The container to run and its resources.
    pub spec: TaskSpec,
    /// Host ports to bind, one per spec port.
    pub ports: Vec<PortMapping>,
}

/// Stops a task on a worker: SIGTERM, the grace period, then SIGKILL, then removal.
///
/// Acknowledged at once; the stop itself runs in the background and ends with a report.
/// Stopping an unknown or already stopped task succeeds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Message)]
#[rtype(result = "Result<(), CommandError>")]
pub struct StopTask {
    /// The task.
    pub task_id: TaskId,
    /// Only stop this attempt; `None` stops whichever attempt runs.
    pub attempt: Option<AttemptId>,
    /// Why, recorded as the task's reason, such as "stopped by user".
    pub reason: String,
}

/// Lists the tasks a worker has records of.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, Message)]
#[rtype(result = "Result<Vec<WorkerTask>, CommandError>")]
pub struct ListTasks;

/// Asks a worker for its identity and capacity.
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "Result<NodeDescription, CommandError>")]
pub struct DescribeNode;

/// Asks a worker to send its reports to `recipient`, starting after sequence number `after`.
///
/// The recipient is weak so that a worker never keeps its manager alive.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SubscribeReports {
    /// Recipient of the reports.
    pub recipient: WeakRecipient<WorkerReport>,
    /// Reports with a sequence number up to this one were already seen.
    pub after: u64,
}

/// Something a worker observed, stamped with its sequence number on that worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Message)]
#[rtype(result = "()")]
pub struct WorkerReport {
    /// The reporting worker.
    pub node: NodeId,
    /// Per-worker sequence number, strictly increasing from 1.
    pub seq: u64,
    /// Wall-clock time on the worker; never used to judge liveness.
    pub at: Timestamp,
    /// What happened.
    pub body: ReportBody,
}

/// The content of a [`WorkerReport`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ReportBody {
    /// An attempt changed state.
    TaskStatus(TaskStatusReport),
    /// The worker is alive; carries its latest metrics.
    Heartbeat(Heartbeat),
    /// An attempt's health changed; its state did not.
    TaskHealth(TaskHealthReport),
}

/// A change in one attempt's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskStatusReport {
    /// The task.
    pub task_id: TaskId,
    /// The attempt the report is about.
    pub attempt: AttemptId,
    /// New state: running, completed or failed, or scheduled while a restart waits.
    pub state: TaskState,
    /// The attempt's container, if one was created.
    pub container_id: Option<ContainerId>,
    /// Ports bound for the container.
    pub host_ports: Vec<PortBinding>,
    /// Exit code, if the container exited.
    pub exit_code: Option<i64>,
    /// Reason for the change, such as "container exited with code 1".
    pub reason: String,
    /// Restarts the worker made under the task's restart policy for this placement.
    #[serde(default)]
    pub restart_count: u32,
    /// When the worker starts the next attempt; set while the task is `scheduled` and waits
    /// out a restart back-off.
    #[serde(default)]
    pub next_attempt_at: Option<Timestamp>,
    /// The attempt this one replaces, when the worker started it as a local restart.
    ///
    /// The manager switches a task to a new attempt only when this names the task's current
    /// attempt on the same node.
    #[serde(default)]
    pub replaces: Option<AttemptId>,
}

/// A change in one attempt's health, judged by the task's health check.
///
/// It never changes the task's state: an attempt that turns unhealthy is stopped by its
/// worker, and that end arrives as a separate [`TaskStatusReport`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskHealthReport {
    /// The task.
    pub task_id: TaskId,
    /// The attempt that was checked.
    pub attempt: AttemptId,
    /// The new health.
    pub health: TaskHealth,
}

/// A worker's periodic sign of life.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Resources the node offers.
    pub capacity: Resources,
    /// Latest host metrics, if sampled yet.
    pub metrics: Option<HostMetrics>,
}

/// The typed recipients through which a manager drives one worker.
///
/// Filled from a local Worker actor with [`WorkerHandle::from_addr`], or from a bridge
/// actor that forwards each message over HTTP.
#[derive(Clone)]
pub struct WorkerHandle {
    /// The worker's identity.
    pub node: NodeId,
    /// Receives [`StartTask`].
    pub start: Recipient<StartTask>,
    /// Receives [`StopTask`].
    pub stop: Recipient<StopTask>,
    /// Receives [`ListTasks`].
    pub list: Recipient<ListTasks>,
    /// Receives [`DescribeNode`].
    pub describe: Recipient<DescribeNode>,
    /// Receives [`SubscribeReports`].
    pub subscribe: Recipient<SubscribeReports>,
}

impl std::fmt::Debug for WorkerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerHandle")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl WorkerHandle {
    /// Builds a handle whose recipients all point at `addr`.
    pub fn from_addr<A>(node: NodeId, addr: &Addr<A>) -> Self
    where
        A: Actor
            + Handler<StartTask>
            + Handler<StopTask>
            + Handler<ListTasks>
            + Handler<DescribeNode>
            + Handler<SubscribeReports>,
        A::Context: ToEnvelope<A, StartTask>
            + ToEnvelope<A, StopTask>
            + ToEnvelope<A, ListTasks>
            + ToEnvelope<A, DescribeNode>
            + ToEnvelope<A, SubscribeReports>,
    {
        Self {
            node,
            start: addr.clone().recipient(),
            stop: addr.clone().recipient(),
            list: addr.clone().recipient(),
            describe: addr.clone().recipient(),
            subscribe: addr.clone().recipient(),
        }
    }

    /// Sends [`StartTask`] and waits at most `timeout` for the acknowledgement.
    ///
    /// # Errors
    ///
    /// Returns the worker's [`CommandError`], or one made from a local mailbox failure.
    pub async fn start_task(&self, msg: StartTask, timeout: Duration) -> Result<(), CommandError> {
        self.start
            .send(msg)
            .timeout(timeout)
            .await
            .map_err(|error| CommandError::from_mailbox(&self.node, error, timeout))?
    }

    /// Sends [`StopTask`] and waits at most `timeout` for the acknowledgement.
    ///
    /// # Errors
    ///
    /// Returns the worker's [`CommandError`], or one made from a local mailbox failure.
    pub async fn stop_task(&self, msg: StopTask, timeout: Duration) -> Result<(), CommandError> {
        self.stop
            .send(msg)
            .timeout(timeout)
            .await
            .map_err(|error| CommandError::from_mailbox(&self.node, error, timeout))?
    }

    /// Sends [`ListTasks`] and waits at most `timeout` for the list.
    ///
    /// # Errors
    ///
    /// Returns the worker's [`CommandError`], or one made from a local mailbox failure.
    pub async fn list_tasks(&self, timeout: Duration) -> Result<Vec<WorkerTask>, CommandError> {
        self.list
            .send(ListTasks)
            .timeout(timeout)
            .await
            .map_err(|error| CommandError::from_mailbox(&self.node, error, timeout))?
    }

    /// Sends [`DescribeNode`] and waits at most `timeout` for the description.
    ///
    /// # Errors
    ///
    /// Returns the worker's [`CommandError`], or one made from a local mailbox failure.
    pub async fn describe_node(&self, timeout: Duration) -> Result<NodeDescription, CommandError> {
        self.describe
            .send(DescribeNode)
            .timeout(timeout)
            .await
            .map_err(|error| CommandError::from_mailbox(&self.node, error, timeout))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_report_without_restart_fields_decodes() {
        let task_id = TaskId::generate();
        let attempt = AttemptId::generate();
        let json = serde_json::json!({
            "task_id": task_id,
            "attempt": attempt,
            "state": "failed",
            "container_id": null,
            "host_ports": [],
            "exit_code": 1,
            "reason": "container exited with code 1",
        });
        let report: TaskStatusReport = serde_json::from_value(json).unwrap();
        assert_eq!(report.restart_count, 0);
        assert_eq!(report.next_attempt_at, None);
        assert_eq!(report.replaces, None);
    }

    #[test]
    fn status_report_round_trips_restart_fields() {
        let report = TaskStatusReport {
            task_id: TaskId::generate(),
            attempt: AttemptId::generate(),
            state: TaskState::Scheduled,
            container_id: None,
            host_ports: Vec::new(),
            exit_code: Some(1),
            reason: "container exited with code 1; restart 2 of 3 in 2.0s".into(),
            restart_count: 1,
            next_attempt_at: Some(chrono::Utc::now()),
            replaces: Some(AttemptId::generate()),
        };
        let json = serde_json::to_string(&report).unwrap();
        let decoded: TaskStatusReport = serde_json::from_str(&json).unwrap();
        assert_eq!(decoded, report);
    }

    #[test]
    fn health_report_round_trips_in_worker_report() {
        let report = WorkerReport {
            node: NodeId::new("worker-1").unwrap(),
            seq: 7,
            at: chrono::Utc::now(),
            body: ReportBody::TaskHealth(TaskHealthReport {
                task_id: TaskId::generate(),
                attempt: AttemptId::generate(),
                health: TaskHealth {
                    status: crate::health::HealthStatus::Unhealthy,
                    consecutive_failures: 3,
                    last_error: Some("GET /health timed out after 1s".into()),
                    since: chrono::Utc::now(),
                },
            }),
        };
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["body"]["type"], "task_health");
        assert_eq!(json["body"]["health"]["status"], "unhealthy");
        let decoded: WorkerReport = serde_json::from_value(json).unwrap();
        assert_eq!(decoded, report);
    }
}
