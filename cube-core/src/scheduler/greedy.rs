//! Greedy: places a task on the node with the lowest CPU load.
//!
//! A node's CPU load is its measured `cpu_usage` (the fraction of all host CPUs busy over the
//! last sampling period) when it has sent metrics, and otherwise its allocated cores over
//! its capacity in cores. Memory and disk only decide feasibility. The book's greedy policy
//! divided the same usage by 2^0.8, which changes no ordering, so the score here is the plain
//! fraction.
//!
//! # Caveats
//!
//! Measured usage changes only when a new sample arrives, so between two samples every task
//! goes to the same least-loaded node as long as it stays feasible.

use super::{
    NodeSnapshot, Placement, PlacementRequest, Policy, Preference, Unplaced, fraction,
    measured_cpu_usage, place_best,
};

/// The lowest-CPU-load policy.
#[derive(Debug, Default, Clone, Copy)]
pub struct Greedy;

impl Policy for Greedy {
    fn name(&self) -> &'static str {
        "greedy"
    }

    /// Chooses the feasible node with the lowest [`cpu_load`], the first in snapshot order
    /// among equal loads, and reports that load as the placement's score.
    fn place(
        &mut self,
        request: &PlacementRequest,
        nodes: &[NodeSnapshot],
    ) -> Result<Placement, Unplaced> {
        place_best(request, nodes, Preference::Lowest, |node, _| cpu_load(node))
    }
}

/// Returns the node's CPU load from 0 to 1: measured usage if present, else allocated cores
/// over capacity (0 for a node without CPU capacity).
pub fn cpu_load(node: &NodeSnapshot) -> f64 {
    measured_cpu_usage(node).unwrap_or_else(|| fraction(node.allocated.cpu, node.capacity.cpu))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::NodeStatus;
    use crate::resources::ByteSize;
    use crate::scheduler::fixtures::{metrics, node, place_repeatedly, request};

    #[test]
    fn greedy_scores_match_hand_computed_vector() {
        let mut measured = node("measured", 4.0, 4096);
        measured.metrics = Some(metrics(0.3, ByteSize(0), ByteSize::mib(4096)));
        let mut allocated = node("allocated", 4.0, 4096);
        allocated.allocated.cpu = 1.0;
        // Measured usage replaces the allocated fraction of 3/4.
        let mut quiet = node("quiet", 4.0, 4096);
        quiet.allocated.cpu = 3.0;
        quiet.metrics = Some(metrics(0.1, ByteSize(0), ByteSize::mib(4096)));
        let mut half = node("half", 8.0, 4096);
        half.allocated.cpu = 4.0;

        let nodes = [measured, allocated, quiet, half];
        let loads: Vec<f64> = nodes.iter().map(cpu_load).collect();
        assert_eq!(loads, vec![0.3, 0.25, 0.1, 0.5]);

        let placement = Greedy.place(&request(0.5, 256), &nodes).unwrap();
        assert_eq!(placement.index, 2);
        assert_eq!(placement.score, 0.1);
    }

    #[test]
    fn greedy_clamps_out_of_range_usage() {
        let mut over = node("over", 4.0, 4096);
        over.metrics = Some(metrics(1.5, ByteSize(0), ByteSize::mib(4096)));
        let mut not_a_number = node("nan", 4.0, 4096);
        not_a_number.metrics = Some(metrics(f64::NAN, ByteSize(0), ByteSize::mib(4096)));
        not_a_number.allocated.cpu = 2.0;
        assert_eq!(cpu_load(&over), 1.0);
        assert_eq!(cpu_load(&not_a_number), 0.5);
    }

    #[test]
    fn greedy_follows_allocations_without_metrics() {
        let mut nodes = vec![node("a", 4.0, 4096), node("b", 2.0, 4096)];
        // Loads before each pick: a 0 = b 0, so a; b 0 < a 1/4; a 1/4 < b 1/2; a 2/4 = b 2/4,
        // so a; b 2/4 < a 3/4; b is full, so a.
        let picks = place_repeatedly(&mut Greedy, &request(1.0, 0), &mut nodes, 6);
        assert_eq!(picks, vec![0, 1, 0, 0, 1, 0]);
    }

    #[test]
    fn greedy_skips_draining_idle_node() {
        let mut draining = node("draining", 4.0, 4096);
        draining.status = NodeStatus::Draining;
        let mut busy = node("busy", 4.0, 4096);
        busy.allocated.cpu = 3.0;
        let placement = Greedy.place(&request(0.5, 256), &[draining, busy]).unwrap();
        assert_eq!(placement.index, 1);
    }
}
