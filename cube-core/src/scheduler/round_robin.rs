//! Round robin: each task goes to the next feasible node after the previous choice.

use super::{NodeSnapshot, Placement, PlacementRequest, Policy, Unplaced, check_node};

/// Rotates through the nodes in snapshot order, starting with the first node and skipping
/// nodes that cannot take the request.
#[derive(Debug, Default, Clone)]
pub struct RoundRobin {
    next: usize,
}

impl Policy for RoundRobin {
    fn name(&self) -> &'static str {
        "roundrobin"
    }

    fn place(
        &mut self,
        request: &PlacementRequest,
        nodes: &[NodeSnapshot],
    ) -> Result<Placement, Unplaced> {
        let mut unplaced = Unplaced::default();
        let count = nodes.len();
        for offset in 0..count {
            let index = (self.next + offset) % count;
            let node = &nodes[index];
            match check_node(request, node) {
                Ok(()) => {
                    self.next = index + 1;
                    return Ok(Placement {
                        node: node.id.clone(),
                        index,
                        score: 0.0,
                    });
                }
                Err(shortfall) => unplaced.record(shortfall),
            }
        }
        Err(unplaced)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{NodeId, TaskId};
    use crate::resources::{ByteSize, Resources};

    fn nodes(count: usize) -> Vec<NodeSnapshot> {
        (0..count)
            .map(|i| {
                NodeSnapshot::ready(
                    NodeId::new(format!("node-{i}")).unwrap(),
                    Resources {
                        cpu: 4.0,
                        memory: ByteSize::gib(4),
                        disk: ByteSize::gib(4),
                    },
                )
            })
            .collect()
    }

    fn request() -> PlacementRequest {
        PlacementRequest {
            task_id: TaskId::generate(),
            resources: Resources {
                cpu: 0.1,
                memory: ByteSize::mib(64),
                disk: ByteSize(0),
            },
            fixed_ports: Vec::new(),
            dynamic_ports: 0,
        }
    }

    #[test]
    fn round_robin_starts_with_first_node() {
        let nodes = nodes(3);
        let mut policy = RoundRobin::default();
        let picks: Vec<usize> = (0..6)
            .map(|_| policy.place(&request(), &nodes).unwrap().index)
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn round_robin_skips_full_nodes() {
        let mut nodes = nodes(3);
        nodes[1].allocated.memory = ByteSize::gib(4);
        let mut policy = RoundRobin::default();
        let picks: Vec<usize> = (0..4)
            .map(|_| policy.place(&request(), &nodes).unwrap().index)
            .collect();
        assert_eq!(picks, vec![0, 2, 0, 2]);
    }

    #[test]
    fn round_robin_reports_unplaced() {
        let mut nodes = nodes(2);
        for node in &mut nodes {
            node.allocated.memory = ByteSize::gib(4);
        }
        let unplaced = RoundRobin::default().place(&request(), &nodes).unwrap_err();
        assert_eq!(unplaced.evaluated, 2);
        assert_eq!(unplaced.memory, 2);
    }
}
