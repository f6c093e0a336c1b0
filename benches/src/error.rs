//! Errors of the benchmark runs, each naming the step that failed.

use actix::MailboxError;
use cube_core::{TaskId, TaskState};

/// Failure of a benchmark run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// An actor stopped or its mailbox closed while the run needed it.
    #[error("{actor} stopped during the run")]
    ActorGone {
        /// The actor, such as "manager".
        actor: &'static str,
        /// The mailbox error.
        #[source]
        source: MailboxError,
    },
    /// The manager rejected a request.
    #[error("manager failed to {action}")]
    Manager {
        /// What was requested, such as "accept a task".
        action: &'static str,
        /// The manager's error.
        #[source]
        source: cube_manager::Error,
    },
    /// The in-process cluster could not be started.
    #[error("failed to start the in-process cluster")]
    Cluster {
        /// The cluster builder's error.
        #[source]
        source: cube_manager::cluster::ClusterError,
    },
    /// A call to the Docker Engine failed.
    #[error("failed to {action}")]
    Docker {
        /// What was attempted, such as "create container x".
        action: String,
        /// bollard's error.
        #[source]
        source: bollard::errors::Error,
    },
    /// A task ended before it was running, so the run cannot finish.
    #[error("task {task_id} ended {state} before running: {reason}")]
    TaskEnded {
        /// The task.
        task_id: TaskId,
        /// Its terminal state.
        state: TaskState,
        /// Its last error or state reason.
        reason: String,
    },
    /// The run did not finish in its time limit.
    #[error("run timed out after {seconds} s with {running} of {expected} tasks running")]
    TimedOut {
        /// The limit, in seconds.
        seconds: u64,
        /// Tasks running when it expired.
        running: u64,
        /// Tasks submitted.
        expected: u64,
    },
    /// The settings cannot produce a meaningful run.
    #[error("invalid benchmark settings: {reason}")]
    Settings {
        /// What is wrong.
        reason: String,
    },
}
