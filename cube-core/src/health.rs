//! The health of a running attempt, as judged by its worker's HTTP health checks.
//!
//! A task's [`crate::spec::HealthCheck`] defines what to probe. Its worker probes the task's
//! published address and reports each change of [`HealthStatus`] as a [`TaskHealth`]. The
//! manager keeps the latest one on the task, so the API can show it. Reaching
//! [`HealthStatus::Unhealthy`] also ends the attempt, which the restart policy then handles.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;

/// Whether an attempt passes its health checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// The last check succeeded.
    Healthy,
    /// The failure threshold of consecutive failed checks was reached.
    Unhealthy,
}

impl HealthStatus {
    /// The lowercase name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Healthy => "healthy",
            HealthStatus::Unhealthy => "unhealthy",
        }
    }
}

impl fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The health of one attempt when its status last changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskHealth {
    /// The new status.
    pub status: HealthStatus,
    /// Consecutive failed checks at the change; 0 when healthy.
    pub consecutive_failures: u32,
    /// Error of the last failed check, such as "GET /health returned 500".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Wall-clock time on the worker when the check that changed the status ended.
    pub since: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_status_serializes_lowercase() {
        let json = serde_json::to_string(&HealthStatus::Unhealthy).unwrap();
        assert_eq!(json, "\"unhealthy\"");
        assert_eq!(HealthStatus::Healthy.to_string(), "healthy");
    }

    #[test]
    fn task_health_round_trips() {
        let health = TaskHealth {
            status: HealthStatus::Unhealthy,
            consecutive_failures: 3,
            last_error: Some("GET /health returned 500".into()),
            since: chrono::Utc::now(),
        };
        let json = serde_json::to_string(&health).unwrap();
        let decoded: TaskHealth = serde_json::from_str(&json).unwrap();
        assert_eq!(decoded, health);
    }
}
