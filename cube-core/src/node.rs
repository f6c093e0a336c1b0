//! Nodes: worker identity, declared capacity and the host metrics a worker reports.

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::ids::NodeId;
use crate::resources::{ByteSize, Resources};

/// Host metrics sampled by a worker's metrics collector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostMetrics {
    /// Total memory in bytes.
    pub memory_total: ByteSize,
    /// Memory available for new processes, in bytes.
    pub memory_available: ByteSize,
    /// Number of logical CPUs.
    pub cpu_count: u32,
    /// CPU usage over the last sampling period, as a fraction from 0 to 1 of all CPUs.
    pub cpu_usage: f64,
    /// Total size of the disk holding container data, in bytes.
    pub disk_total: ByteSize,
    /// Free space on that disk, in bytes.
    pub disk_available: ByteSize,
    /// 1, 5 and 15 minute load averages.
    pub load_average: [f64; 3],
    /// Tasks whose containers run on the node.
    pub running_tasks: u32,
    /// When the sample was taken, on the worker's clock.
    pub sampled_at: Timestamp,
}

/// Capacity a worker declares, overriding what its host reports.
///
/// Each field left `None` is taken from the host, so in-process workers on one machine can
/// offer different capacities.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct DeclaredCapacity {
    /// CPU in cores.
    pub cpu: Option<f64>,
    /// Memory in bytes.
    pub memory: Option<ByteSize>,
    /// Disk in bytes.
    pub disk: Option<ByteSize>,
}

impl DeclaredCapacity {
    /// Fills the fields left `None` from `metrics`.
    pub fn resolve(&self, metrics: &HostMetrics) -> Resources {
        Resources {
            cpu: self.cpu.unwrap_or(f64::from(metrics.cpu_count)),
            memory: self.memory.unwrap_or(metrics.memory_total),
            disk: self.disk.unwrap_or(metrics.disk_total),
        }
    }
}

/// What a worker tells the manager about itself when it registers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeDescription {
    /// The worker's stable identity.
    pub id: NodeId,
    /// Resources the node offers to tasks.
    pub capacity: Resources,
    /// Latest host metrics, if sampled yet.
    pub metrics: Option<HostMetrics>,
    /// Address on which the worker publishes container ports, such as `127.0.0.1`.
    pub publish_address: String,
}

/// Whether the manager considers a node able to take tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    /// Registered and reporting.
    Ready,
    /// Registered but its last report failed.
    Unreachable,
    /// Silent for longer than the liveness window.
    Down,
    /// Takes no new tasks.
    Draining,
}
