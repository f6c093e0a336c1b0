//! Task events: the log of every state change.

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::ids::{AttemptId, TaskId};
use crate::task::TaskState;

/// One recorded state change of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskEvent {
    /// Sequence number assigned by the store in the transaction that records the change;
    /// strictly increasing, starting at 1.
    pub seq: u64,
    /// The task that changed.
    pub task_id: TaskId,
    /// The attempt current at the change.
    pub attempt: Option<AttemptId>,
    /// State before.
    pub from: TaskState,
    /// State after.
    pub to: TaskState,
    /// Wall-clock time of the change.
    pub at: Timestamp,
    /// Why it changed, such as "container exited with code 0".
    pub reason: String,
}
