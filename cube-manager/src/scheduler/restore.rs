//! Booking the allocations of tasks that a restarted manager loaded from its store.
//!
//! A task that was `scheduled` or `running` before the restart still holds resources and host
//! ports on its node, but the new [`Scheduler`]'s table starts empty. When the node registers
//! again, the manager sends [`RestoreAllocations`] before any placement pass, so pending tasks
//! never take the room or the ports of tasks that still run.

use actix::{Context, Handler, Message};
use log::{debug, warn};

use cube_core::ids::{NodeId, TaskId};
use cube_core::resources::Resources;
use cube_core::worker_task::PortMapping;

use super::{PlaceRequest, Scheduler};

/// One task's allocation as the store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct RestoredAllocation {
    /// The task.
    pub task_id: TaskId,
    /// Resources it was given.
    pub resources: Resources,
    /// Its port mappings, every host port set.
    pub ports: Vec<PortMapping>,
}

/// Books allocations that tasks held on `node` before the manager restarted.
///
/// A task that already has an allocation keeps it, and an unknown node books nothing.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct RestoreAllocations {
    /// The node the tasks run on.
    pub node: NodeId,
    /// The allocations.
    pub tasks: Vec<RestoredAllocation>,
}

impl Handler<RestoreAllocations> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: RestoreAllocations, _: &mut Context<Self>) {
        let Some(&index) = self.index.get(&msg.node) else {
            warn!(
                "allocations for unknown node not restored node_id={} tasks={}",
                msg.node,
                msg.tasks.len()
            );
            return;
        };
        for task in msg.tasks {
            if self.allocations.contains_key(&task.task_id) {
                continue;
            }
            debug!(
                "allocation restored task_id={} node_id={}",
                task.task_id, msg.node
            );
            let request = PlaceRequest {
                task_id: task.task_id,
                resources: task.resources,
                ports: task.ports,
            };
            // Every host port is set, so this books exactly the stored ports.
            self.allocate(index, &request);
        }
    }
}

#[cfg(test)]
mod tests {
    use cube_core::resources::ByteSize;
    use cube_core::scheduler::policy_by_name;
    use cube_core::spec::Protocol;

    use super::*;
    use crate::PortRange;

    #[test]
    fn restored_allocation_books_resources_and_ports() {
        let mut scheduler =
            Scheduler::new(policy_by_name("roundrobin").unwrap(), PortRange::DEFAULT);
        let node = NodeId::new("a").unwrap();
        let capacity = Resources {
            cpu: 2.0,
            memory: ByteSize::mib(256),
            disk: ByteSize::gib(1),
        };
        scheduler.join(node.clone(), capacity, None);
        let task_id = TaskId::generate();
        let resources = Resources {
            cpu: 0.5,
            memory: ByteSize::mib(64),
            disk: ByteSize(0),
        };
        let port = PortMapping {
            container_port: 80,
            protocol: Protocol::Tcp,
            host_port: Some(20000),
        };
        let restore = RestoreAllocations {
            node,
            tasks: vec![RestoredAllocation {
                task_id,
                resources,
                ports: vec![port],
            }],
        };

        let mut ctx = Context::new();
        scheduler.handle(restore.clone(), &mut ctx);
        scheduler.handle(restore, &mut ctx);

        let snapshot = &scheduler.nodes[0];
        assert_eq!(snapshot.allocated, resources, "booked once");
        assert_eq!(snapshot.task_count, 1);
        assert!(snapshot.ports_in_use.contains(&(Protocol::Tcp, 20000)));
        let next = scheduler.next_dynamic_port(0, Protocol::Tcp);
        assert_ne!(next, 20000, "a restored port is never handed out again");
        assert!(scheduler.release(task_id));
    }
}
