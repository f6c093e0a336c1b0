//! Identifier newtypes: tasks, attempts, nodes and containers.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Identifier of a task, stable for the task's whole life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(pub Uuid);

impl TaskId {
    /// Generates a random (version 4) task id.
    pub fn generate() -> Self {
        Self(Uuid::new_v4())
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for TaskId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// Identifier of one placement of a task: each start of a container is a new attempt.
///
/// Containers carry their attempt id in a label, so a report about an old attempt can be
/// recognised and ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AttemptId(pub Uuid);

impl AttemptId {
    /// Generates a random (version 4) attempt id.
    pub fn generate() -> Self {
        Self(Uuid::new_v4())
    }
}

impl fmt::Display for AttemptId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for AttemptId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// Stable identity of a worker node: its name, which stays the same across restarts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeId(String);

impl NodeId {
    /// Maximum length of a node name, in bytes.
    pub const MAX_LEN: usize = 63;

    /// Creates a node id from a name of ASCII letters, digits, `-`, `_` and `.`.
    ///
    /// # Errors
    ///
    /// Returns [`InvalidNodeId`] when the name is empty, longer than [`Self::MAX_LEN`] or
    /// contains any other character.
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidNodeId> {
        let name = name.into();
        let valid_chars = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if name.is_empty() || name.len() > Self::MAX_LEN || !valid_chars {
            return Err(InvalidNodeId(name));
        }
        Ok(Self(name))
    }

    /// The node name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A node name that [`NodeId::new`] rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid node name '{0}': use 1 to 63 ASCII letters, digits, '-', '_' or '.'")]
pub struct InvalidNodeId(pub String);

impl TryFrom<String> for NodeId {
    type Error = InvalidNodeId;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<NodeId> for String {
    fn from(id: NodeId) -> Self {
        id.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for NodeId {
    type Err = InvalidNodeId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// Identifier the container engine gave a container (64 hex digits for Docker).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ContainerId(pub String);

impl ContainerId {
    /// The first 12 characters, as `docker ps` shows them.
    pub fn short(&self) -> &str {
        let end = self.0.len().min(12);
        &self.0[..end]
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_accepts_hostname_like_names() {
        for name in ["worker-1", "w.example_2", "a"] {
            assert!(NodeId::new(name).is_ok(), "{name} should be accepted");
        }
    }

    #[test]
    fn node_id_rejects_bad_names() {
        let long = "x".repeat(64);
        for name in ["", "has space", "slash/name", long.as_str()] {
            assert!(NodeId::new(name).is_err(), "{name:?} should be rejected");
        }
    }

    #[test]
    fn task_id_round_trips_through_text() {
        let id = TaskId::generate();
        let parsed: TaskId = id.to_string().parse().unwrap();
        assert_eq!(parsed, id);
    }
}
