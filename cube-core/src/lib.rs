//! The domain of cube, a container orchestrator: tasks and their states, nodes, the messages
//! between manager and workers, placement policies and stores.
//!
//! # Glossary
//!
//! - **task**: a container image with its resource needs, submitted as a [`TaskSpec`].
//! - **manager**: accepts tasks, places them and reconciles what workers report.
//! - **worker** (or **node**): runs tasks as containers on its host's engine.
//! - **attempt**: one placement of a task; each container start is a new attempt.
//! - **desired state**: what the user wants ([`DesiredState`]); **observed state**: what was
//!   last reported ([`TaskState`]).
//! - **placement**: the scheduler's choice of a node for a task.
//! - **report**: something a worker observed, sent to the manager ([`WorkerReport`]).
//! - **heartbeat**: a worker's periodic report with its metrics.
//! - **health check**: an HTTP probe a worker runs against a task's published port; its
//!   result is the attempt's health ([`TaskHealth`]).
//! - **reconcile**: bringing observed state in line with desired state.
//!
//! This crate has no I/O besides the stores, so every rule here is unit-tested without
//! actors or Docker.

pub mod address;
pub mod clock;
pub mod duration;
pub mod event;
pub mod health;
pub mod ids;
pub mod messages;
pub mod node;
pub mod resources;
pub mod scheduler;
pub mod spec;
pub mod store;
pub mod task;
pub mod wire;
pub mod worker_task;

pub use clock::{Clock, ManualClock, SharedClock, SystemClock, Timestamp};
pub use duration::DurationSpec;
pub use event::TaskEvent;
pub use health::{HealthStatus, TaskHealth};
pub use ids::{AttemptId, ContainerId, InvalidNodeId, NodeId, TaskId};
pub use messages::{
    CommandError, DescribeNode, Heartbeat, ListTasks, ReportBody, StartTask, StopTask,
    SubscribeReports, TaskHealthReport, TaskStatusReport, WorkerHandle, WorkerReport,
};
pub use node::{DeclaredCapacity, HostMetrics, NodeDescription, NodeStatus};
pub use resources::{ByteSize, Resources};
pub use spec::{
    FieldError, HealthCheck, MAX_HEALTH_INTERVAL, MAX_RESTART_ATTEMPTS, MAX_RESTART_BACKOFF,
    PortSpec, Protocol, PullPolicy, RESTART_JITTER, RestartMode, RestartPolicy, SpecLimits,
    TaskSpec,
};
pub use store::{Batch, MemoryStore, NodeRecord, Operation, Store, StoreError};
pub use store::{Committed, RedbStore, STORE_FILE_NAME, StoreWriter};
pub use task::{DesiredState, InvalidTransition, PortBinding, STOPPED_BY_USER, Task, TaskState};
pub use worker_task::{PortMapping, WorkerTask};

/// Label on every container cube creates: the task id.
pub const LABEL_TASK: &str = "cube.task";
/// Label on every container cube creates: the attempt id.
pub const LABEL_ATTEMPT: &str = "cube.attempt";
/// Label on every container cube creates: the node id.
pub const LABEL_NODE: &str = "cube.node";
