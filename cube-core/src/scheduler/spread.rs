//! Spreading: places a task on the node that will have the most left free once it is placed.
//!
//! The score is Kubernetes' `LeastAllocated` scoring (its default) with equal weights for
//! CPU and memory: the mean over both resources of
//! `(capacity - allocated - requested) / capacity`, from 0 to 1, leaving out a resource the
//! node has none of. The highest score wins, and among equal scores the first node in
//! snapshot order wins. Spreading keeps load even and limits how many tasks one node failure
//! takes down.

use super::{
    NodeSnapshot, Placement, PlacementRequest, Policy, Preference, Unplaced, mean_share_after,
    place_best,
};

/// The least-allocated-first policy.
#[derive(Debug, Default, Clone, Copy)]
pub struct Spread;

impl Policy for Spread {
    fn name(&self) -> &'static str {
        "spread"
    }

    /// Chooses the feasible node with the highest [`free_share_after`] and reports that share
    /// as the placement's score.
    fn place(
        &mut self,
        request: &PlacementRequest,
        nodes: &[NodeSnapshot],
    ) -> Result<Placement, Unplaced> {
        place_best(request, nodes, Preference::Highest, |node, _| {
            free_share_after(request, node)
        })
    }
}

/// Returns the mean fraction of CPU and memory capacity left free on `node` once `request`
/// is placed; higher is better.
pub fn free_share_after(request: &PlacementRequest, node: &NodeSnapshot) -> f64 {
    mean_share_after(request, node, |allocated, capacity| {
        (capacity - allocated) / capacity
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::ByteSize;
    use crate::scheduler::fixtures::{node, place_repeatedly, request};

    #[test]
    fn spread_scores_match_hand_computed_vector() {
        let task = request(1.0, 1024);
        // Free after placing: cpu 2/4, memory 2048/4096, mean 0.5.
        let mut partly = node("partly", 4.0, 4096);
        partly.allocated.cpu = 1.0;
        partly.allocated.memory = ByteSize::mib(1024);
        // Free after placing: cpu 1/2, memory 1024/2048, mean 0.5.
        let small = node("small", 2.0, 2048);
        // Free after placing: cpu 4/8, memory 1024/4096, mean 0.375.
        let mut uneven = node("uneven", 8.0, 4096);
        uneven.allocated.cpu = 3.0;
        uneven.allocated.memory = ByteSize::mib(2048);
        // Free after placing: cpu 15/16, memory 15360/16384, mean 0.9375.
        let big = node("big", 16.0, 16384);

        let nodes = [partly, small, uneven, big];
        let scores: Vec<f64> = nodes
            .iter()
            .map(|node| free_share_after(&task, node))
            .collect();
        assert_eq!(scores, vec![0.5, 0.5, 0.375, 0.9375]);

        let placement = Spread.place(&task, &nodes).unwrap();
        assert_eq!(placement.index, 3);
        assert_eq!(placement.score, 0.9375);

        let without_big = &nodes[..3];
        let placement = Spread.place(&task, without_big).unwrap();
        assert_eq!(placement.index, 0, "equal scores go to the first node");
    }

    #[test]
    fn spread_alternates_unequal_nodes() {
        // Free share after each pick, a of 4 and b of 3 units: a 3/4 > b 2/3; b 2/3 > a 2/4;
        // a 2/4 > b 1/3; b 1/3 > a 1/4; a 1/4 > b 0; a 0 = b 0, so a first; then only b fits.
        let mut nodes = vec![node("a", 4.0, 4096), node("b", 3.0, 3072)];
        let picks = place_repeatedly(&mut Spread, &request(1.0, 1024), &mut nodes, 8);
        assert_eq!(picks, vec![0, 1, 0, 1, 0, 0, 1]);
    }

    #[test]
    fn spread_alternates_equal_nodes() {
        let mut nodes = vec![node("a", 2.0, 2048), node("b", 2.0, 2048)];
        let picks = place_repeatedly(&mut Spread, &request(1.0, 1024), &mut nodes, 4);
        assert_eq!(picks, vec![0, 1, 0, 1]);
    }
}
