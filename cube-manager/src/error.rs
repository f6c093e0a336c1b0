//! Errors of the manager crate.

use actix::MailboxError;
use cube_core::ids::{NodeId, TaskId};
use cube_core::messages::CommandError;
use cube_core::spec::FieldError;
use cube_core::store::StoreError;
use cube_core::task::InvalidTransition;

/// Failure of a request to the manager.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The submitted spec failed validation; the field error names the field.
    #[error(transparent)]
    InvalidSpec {
        /// The invalid field.
        #[from]
        source: FieldError,
    },

    /// No task has this id.
    #[error("task {task_id} not found")]
    TaskNotFound {
        /// The requested id.
        task_id: TaskId,
    },

    /// A state change the transition table does not allow; a bug in the manager.
    #[error(transparent)]
    Transition {
        /// The rejected transition.
        #[from]
        source: InvalidTransition,
    },

    /// A task with this client-supplied id exists with a different spec.
    #[error("task {task_id} already exists with a different spec")]
    Conflict {
        /// The client-supplied id.
        task_id: TaskId,
    },

    /// The store failed to record a change.
    #[error("failed to store task {task_id}")]
    Store {
        /// The task being changed.
        task_id: TaskId,
        /// The store's error.
        #[source]
        source: StoreError,
    },

    /// A concurrent submission of the same client-supplied id failed to store the task, so
    /// this repeat, which waited for it, stored nothing either.
    #[error(
        "task {task_id} was not stored because a concurrent submission of it failed; submit it again"
    )]
    SubmissionFailed {
        /// The client-supplied id.
        task_id: TaskId,
    },

    /// The store failed to record a node registration.
    #[error("failed to store node {node}")]
    StoreNode {
        /// The node being registered.
        node: NodeId,
        /// The store's error.
        #[source]
        source: StoreError,
    },

    /// The store could not be read at start-up.
    #[error("failed to load tasks from the store")]
    LoadStore {
        /// The store's error.
        #[source]
        source: StoreError,
    },

    /// A worker did not describe itself when it was added.
    #[error("failed to add worker {node}")]
    AddWorker {
        /// The node named by the worker's handle.
        node: NodeId,
        /// The worker's error.
        #[source]
        source: CommandError,
    },

    /// A worker's handle and its own description name different nodes.
    #[error("worker handle for node {handle_node} describes itself as node {described_node}")]
    NodeMismatch {
        /// The node named by the handle.
        handle_node: NodeId,
        /// The node the worker described.
        described_node: NodeId,
    },

    /// An actor the manager relies on stopped or did not answer in time.
    #[error("{actor} did not answer")]
    ActorUnavailable {
        /// The actor, such as "scheduler".
        actor: &'static str,
        /// The mailbox failure.
        #[source]
        source: MailboxError,
    },

    /// The configured placement policy does not exist.
    #[error(
        "unknown scheduler policy '{name}'; expected one of: {}",
        cube_core::scheduler::POLICY_NAMES.join(", ")
    )]
    UnknownPolicy {
        /// The requested name.
        name: String,
    },

    /// A liveness duration that must be above 0 is 0.
    #[error("invalid {setting} of 0: expected a duration above 0")]
    ZeroDuration {
        /// The setting, such as "heartbeat TTL".
        setting: &'static str,
    },

    /// The configured dynamic port range holds no usable port.
    #[error("invalid dynamic port range {range}: expected FIRST-LAST with 1 <= FIRST <= LAST")]
    InvalidPortRange {
        /// The range as configured.
        range: String,
    },
}

/// Formats `error` with its chain of sources, each once: "failed to store task X: disk full".
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
