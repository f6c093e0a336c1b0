//! Waiting until submitted tasks are `running`, by the manager's own task records.
//!
//! The manager offers no subscription to task changes, so this polls [`GetTask`] with a
//! cursor: it asks about the oldest task not yet seen running, moves past every running one
//! and sleeps `interval` only when the task at the cursor is not running yet. Each poll is
//! one message that copies one task, so waiting for N tasks costs about N messages plus one
//! per interval, unlike [`cube_manager::manager::GetTasks`], which copies every task each
//! time.

use std::time::Duration;

use actix::Addr;
use cube_core::{Task, TaskId, TaskState};
use cube_manager::Manager;
use cube_manager::manager::GetTask;

use crate::error::BenchError;

/// Waits until every task of `ids` is `running`, checking every `interval`; returns their
/// records in the order of `ids`.
///
/// # Errors
///
/// Returns [`BenchError::TaskEnded`] when a task reaches a terminal state first, and
/// [`BenchError::ActorGone`] or [`BenchError::Manager`] when the manager cannot answer.
pub async fn wait_until_running(
    manager: &Addr<Manager>,
    ids: &[TaskId],
    interval: Duration,
) -> Result<Vec<Task>, BenchError> {
    let mut running = Vec::with_capacity(ids.len());
    while running.len() < ids.len() {
        let task = fetch(manager, ids[running.len()]).await?;
        match task.state {
            TaskState::Running => running.push(task),
            state if state.is_terminal() => {
                return Err(BenchError::TaskEnded {
                    task_id: task.id,
                    state,
                    reason: task.last_error.unwrap_or_default(),
                });
            }
            _ => tokio::time::sleep(interval).await,
        }
    }
    Ok(running)
}

async fn fetch(manager: &Addr<Manager>, task_id: TaskId) -> Result<Task, BenchError> {
    manager
        .send(GetTask { task_id })
        .await
        .map_err(|source| BenchError::ActorGone {
            actor: "manager",
            source,
        })?
        .map_err(|source| BenchError::Manager {
            action: "return a task",
            source,
        })
}
