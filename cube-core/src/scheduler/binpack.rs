//! Bin packing: places a task on the node that will be most allocated once it is placed.
//!
//! The score is Kubernetes' `MostAllocated` scoring with equal weights for CPU and memory:
//! the mean over both resources of `(allocated + requested) / capacity`, from 0 to 1, leaving
//! out a resource the node has none of. The highest score wins, and among equal scores the
//! first node in snapshot order wins. Filling the fullest node first keeps other nodes empty
//! for large tasks, which is why Nomad packs by default. Nomad scores the free fractions with
//! `20 - (10^free_cpu + 10^free_memory)` instead, which orders nodes much the same way but
//! costs two exponentials per node.

use super::{
    NodeSnapshot, Placement, PlacementRequest, Policy, Preference, Unplaced, mean_share_after,
    place_best,
};

/// The most-allocated-first policy.
#[derive(Debug, Default, Clone, Copy)]
pub struct Binpack;

impl Policy for Binpack {
    fn name(&self) -> &'static str {
        "binpack"
    }

    /// Chooses the feasible node with the highest [`allocated_share_after`] and reports that
    /// share as the placement's score.
    fn place(
        &mut self,
        request: &PlacementRequest,
        nodes: &[NodeSnapshot],
    ) -> Result<Placement, Unplaced> {
        place_best(request, nodes, Preference::Highest, |node, _| {
            allocated_share_after(request, node)
        })
    }
}

/// Returns the mean fraction of CPU and memory capacity allocated on `node` once `request`
/// is placed; higher is better.
pub fn allocated_share_after(request: &PlacementRequest, node: &NodeSnapshot) -> f64 {
    mean_share_after(request, node, |allocated, capacity| allocated / capacity)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::fixtures::{node, place_repeatedly, request};

    #[test]
    fn binpack_scores_match_hand_computed_vector() {
        let task = request(1.0, 1024);
        // After placing: cpu 2/4, memory 2048/4096, mean 0.5.
        let mut partly = node("partly", 4.0, 4096);
        partly.allocated.cpu = 1.0;
        partly.allocated.memory = crate::resources::ByteSize::mib(1024);
        // After placing: cpu 1/2, memory 1024/2048, mean 0.5.
        let small = node("small", 2.0, 2048);
        // After placing: cpu 4/8, memory 3072/4096, mean 0.625.
        let mut uneven = node("uneven", 8.0, 4096);
        uneven.allocated.cpu = 3.0;
        uneven.allocated.memory = crate::resources::ByteSize::mib(2048);
        // After placing: cpu 1/16, memory 1024/16384, mean 0.0625.
        let big = node("big", 16.0, 16384);

        let nodes = [partly, small, uneven, big];
        let scores: Vec<f64> = nodes
            .iter()
            .map(|node| allocated_share_after(&task, node))
            .collect();
        assert_eq!(scores, vec![0.5, 0.5, 0.625, 0.0625]);

        let placement = Binpack.place(&task, &nodes).unwrap();
        assert_eq!(placement.index, 2);
        assert_eq!(placement.score, 0.625);
    }

    #[test]
    fn binpack_skips_missing_resource() {
        // No CPU capacity and no CPU requested: only memory counts, 1024/4096.
        let no_cpu = node("no-cpu", 0.0, 4096);
        assert_eq!(allocated_share_after(&request(0.0, 1024), &no_cpu), 0.25);
        let nothing = node("nothing", 0.0, 0);
        assert_eq!(allocated_share_after(&request(0.0, 0), &nothing), 0.0);
    }

    #[test]
    fn binpack_fills_the_smaller_node_first() {
        // b reaches 1/3, 2/3, 3/3 before a, whose share after one task is only 1/4.
        let mut nodes = vec![node("a", 4.0, 4096), node("b", 3.0, 3072)];
        let picks = place_repeatedly(&mut Binpack, &request(1.0, 1024), &mut nodes, 8);
        assert_eq!(picks, vec![1, 1, 1, 0, 0, 0, 0]);
    }

    #[test]
    fn binpack_fills_equal_nodes_in_order() {
        let mut nodes = vec![node("a", 2.0, 2048), node("b", 2.0, 2048)];
        let picks = place_repeatedly(&mut Binpack, &request(1.0, 1024), &mut nodes, 4);
        assert_eq!(picks, vec![0, 0, 1, 1]);
    }
}
