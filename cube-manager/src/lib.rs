//! The cube manager: accepts tasks, places them on workers and tracks what becomes of them.
//!
//! The [`Manager`] actor validates and stores each submitted task, requests a node from the
//! [`Scheduler`] actor and sends the task to that node's worker through a
//! [`cube_core::WorkerHandle`]. Workers report back through the same handle's subscription,
//! and the manager applies each report to the task's state. A worker may run in this process
//! (the Worker actor of `cube-worker`) or on another machine, reached through the
//! [`RemoteWorker`] bridge over HTTP. The manager's public HTTP API lives in [`http`].
//!
//! With the `in-process` feature (on by default), [`cluster`] starts a manager and any number
//! of workers in one process, with a simulated container runtime or with Docker.

pub mod error;
pub mod http;
pub mod liveness;
pub mod manager;
pub mod remote_worker;
pub mod scheduler;

#[cfg(feature = "in-process")]
pub mod cluster;

use std::fmt;
use std::time::Duration;

use cube_core::clock::{SharedClock, system_clock};
use cube_core::scheduler::POLICY_NAMES;
use cube_core::spec::SpecLimits;

pub use error::Error;
pub use manager::Manager;
pub use remote_worker::RemoteWorker;
pub use scheduler::Scheduler;

/// An inclusive range of host ports from which dynamic ports are handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// First port of the range.
    pub first: u16,
    /// Last port of the range, included.
    pub last: u16,
}

impl PortRange {
    /// The default range, 20000 to 32767: below Linux's default ephemeral range (32768 and
    /// up), so an outgoing connection on the node never takes a port cube hands out.
    pub const DEFAULT: PortRange = PortRange {
        first: 20000,
        last: 32767,
    };

    /// Number of ports in the range.
    pub fn len(&self) -> usize {
        usize::from(self.last).saturating_sub(usize::from(self.first)) + 1
    }

    /// Whether the range contains no port; never true for a range that passed validation.
    pub fn is_empty(&self) -> bool {
        self.first > self.last
    }

    /// Checks whether `port` lies in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl Default for PortRange {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// Settings of a [`Manager`].
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Name of the placement policy, one of [`cube_core::scheduler::POLICY_NAMES`].
    pub scheduler: String,
    /// Upper bounds for a task's resource requests.
    pub spec_limits: SpecLimits,
    /// Time a worker has to acknowledge a command (start, stop, describe).
    pub command_timeout: Duration,
    /// Host ports handed out as dynamic ports, per node.
    pub dynamic_ports: PortRange,
    /// Source of timestamps for tasks and events, and of the monotonic time that liveness
    /// is judged on.
    pub clock: SharedClock,
    /// Time within which each worker is expected to report again.
    pub heartbeat_ttl: Duration,
    /// Silence allowed beyond `heartbeat_ttl` before a node is declared down and its tasks
    /// are placed elsewhere.
    pub heartbeat_grace: Duration,
    /// Time between two liveness checks; `None` never declares a node down, for embedders
    /// whose workers send no heartbeats.
    pub liveness_check_interval: Option<Duration>,
}

impl ManagerConfig {
    /// The policy used when none is named: `epvm` when cube-core offers it, else
    /// `roundrobin`.
    pub fn default_policy() -> &'static str {
        if POLICY_NAMES.contains(&"epvm") {
            "epvm"
        } else {
            "roundrobin"
        }
    }

    /// Checks the settings that can be wrong.
    ///
    /// # Errors
    ///
    /// Returns [`Error::UnknownPolicy`] for a policy name cube-core does not know, and
    /// [`Error::InvalidPortRange`] for an empty dynamic port range or one that includes 0, and
    /// [`Error::ZeroDuration`] for a heartbeat TTL or liveness check interval of 0.
    pub fn validate(&self) -> Result<(), Error> {
        if !POLICY_NAMES.contains(&self.scheduler.as_str()) {
            return Err(Error::UnknownPolicy {
                name: self.scheduler.clone(),
            });
        }
        if self.dynamic_ports.is_empty() || self.dynamic_ports.first == 0 {
            return Err(Error::InvalidPortRange {
                range: self.dynamic_ports.to_string(),
            });
        }
        if self.heartbeat_ttl.is_zero() {
            return Err(Error::ZeroDuration {
                setting: "heartbeat TTL",
            });
        }
        if self
            .liveness_check_interval
            .is_some_and(|interval| interval.is_zero())
        {
            return Err(Error::ZeroDuration {
                setting: "liveness check interval",
            });
        }
        Ok(())
    }
}

impl Default for ManagerConfig {
    fn default() -> Self {
        Self {
            scheduler: Self::default_policy().to_owned(),
            spec_limits: SpecLimits::default(),
            command_timeout: Duration::from_secs(10),
            dynamic_ports: PortRange::DEFAULT,
            clock: system_clock(),
            heartbeat_ttl: liveness::DEFAULT_HEARTBEAT_TTL,
            heartbeat_grace: liveness::DEFAULT_HEARTBEAT_GRACE,
            liveness_check_interval: Some(liveness::check_interval_for(
                liveness::DEFAULT_HEARTBEAT_TTL,
                liveness::DEFAULT_HEARTBEAT_GRACE,
            )),
        }
    }
}
