//! Builders for the node snapshots and requests that the policy tests score.
//!
//! Placing a task in these tests means what the Scheduler actor does after a placement:
//! [`allocate`] adds the request to the chosen node and counts one more task.

use chrono::DateTime;

use super::{NodeSnapshot, PlacementRequest, Policy};
use crate::ids::{NodeId, TaskId};
use crate::node::HostMetrics;
use crate::resources::{ByteSize, Resources};

/// A ready node with `cpu` cores, `memory_mib` MiB of memory and 10 GiB of disk.
pub(super) fn node(name: &str, cpu: f64, memory_mib: u64) -> NodeSnapshot {
    NodeSnapshot::ready(
        NodeId::new(name).unwrap(),
        Resources {
            cpu,
            memory: ByteSize::mib(memory_mib),
            disk: ByteSize::gib(10),
        },
    )
}

/// A request for `cpu` cores and `memory_mib` MiB of memory, without disk or ports.
pub(super) fn request(cpu: f64, memory_mib: u64) -> PlacementRequest {
    PlacementRequest {
        task_id: TaskId::generate(),
        resources: Resources {
            cpu,
            memory: ByteSize::mib(memory_mib),
            disk: ByteSize(0),
        },
        fixed_ports: Vec::new(),
        dynamic_ports: 0,
    }
}

/// Host metrics reporting `cpu_usage` (0 to 1) and `memory_used` of `memory_total` in use.
pub(super) fn metrics(
    cpu_usage: f64,
    memory_used: ByteSize,
    memory_total: ByteSize,
) -> HostMetrics {
    HostMetrics {
        memory_total,
        memory_available: ByteSize(memory_total.bytes() - memory_used.bytes()),
        cpu_count: 4,
        cpu_usage,
        disk_total: ByteSize::gib(100),
        disk_available: ByteSize::gib(50),
        load_average: [0.0; 3],
        running_tasks: 0,
        sampled_at: DateTime::UNIX_EPOCH,
    }
}

/// Records `request` as placed on `node`.
pub(super) fn allocate(node: &mut NodeSnapshot, request: &PlacementRequest) {
    node.allocated.add(&request.resources);
    node.task_count += 1;
}

/// Places `request` `count` times with `policy`, allocating after each placement, and returns
/// the chosen node indices; stops early when the request no longer fits.
pub(super) fn place_repeatedly(
    policy: &mut dyn Policy,
    request: &PlacementRequest,
    nodes: &mut [NodeSnapshot],
    count: usize,
) -> Vec<usize> {
    let mut picks = Vec::new();
    for _ in 0..count {
        let Ok(placement) = policy.place(request, nodes) else {
            break;
        };
        allocate(&mut nodes[placement.index], request);
        picks.push(placement.index);
    }
    picks
}
