//! E-PVM: places a task on the node where its marginal opportunity cost is lowest.
//!
//! This is the opportunity-cost method of MOSIX, which E-PVM and the book's Cube scheduler
//! use, with consistent units and a CPU term that counts. Each resource's load `u` is a
//! fraction of the node's capacity, and a resource costs `L^u` with `L` = [`LIEB`], so cost
//! grows faster the fuller a node gets. A task that raises a resource's load by `d` adds `L^(u + d) - L^u = L^u · (L^d - 1)`. The
//! score is the sum over memory and CPU:
//!
//! ```text
//! u_mem = max(allocated memory / capacity memory, measured used memory / host memory)
//! d_mem = requested memory / capacity memory                      (bytes over bytes)
//! u_cpu = max(allocated cores / capacity cores, measured cpu_usage)
//! d_cpu = requested cores / capacity cores                        (cores over cores)
//! cost  = L^u_mem · (L^d_mem - 1) + L^u_cpu · (L^d_cpu - 1)
//! ```
//!
//! The lowest cost wins, and among equal costs the first node in snapshot order wins.
//! Measured figures come from the node's latest [`HostMetrics`](crate::node::HostMetrics):
//! memory used is total minus available, and `cpu_usage` is the fraction of all host CPUs
//! busy over the last sampling period. Without metrics, the allocations alone decide.
//!
//! The load is the larger of allocation and measurement, not their sum, because a task's
//! measured use is already part of the host's figures. The allocation covers reserved but
//! idle resources, and the measurement covers use that cube did not allocate. Disk and ports
//! only decide feasibility ([`check_node`](super::check_node)).
//!
//! # Caveats
//!
//! The policy cannot tell a sample's age (it has no clock), so it trusts whatever metrics the
//! snapshot holds. Workers that share one host, as in-process workers do, report the same
//! host figures. While that measured load is above their allocated fractions, it hides their
//! allocations, and the node with the most capacity wins until its allocated fraction passes
//! the measured one.

use super::{
    NodeSnapshot, Placement, PlacementRequest, Policy, Preference, Unplaced, fraction,
    measured_cpu_usage, measured_memory_usage, place_best,
};

/// The cost base: Lieb's square-ice constant, (4/3)^(3/2) = 1.53960071783900203869, as the
/// book chose it. Any base above 1 makes the cost convex in the load.
pub const LIEB: f64 = 1.539_600_717_839_002;

/// The natural logarithm of [`LIEB`], so that `LIEB^x` is computed as `exp(x · LN_LIEB)`.
const LN_LIEB: f64 = 0.431_523_108_677_671_4;

/// The opportunity-cost policy with a real CPU term, and the default policy.
#[derive(Debug, Default, Clone, Copy)]
pub struct Epvm;

impl Policy for Epvm {
    fn name(&self) -> &'static str {
        "epvm"
    }

    /// Chooses the feasible node with the lowest [`marginal_cost`] and reports that cost as
    /// the placement's score.
    fn place(
        &mut self,
        request: &PlacementRequest,
        nodes: &[NodeSnapshot],
    ) -> Result<Placement, Unplaced> {
        let mut scorer = Scorer::default();
        place_best(request, nodes, Preference::Lowest, |node, best| {
            scorer.score(Loads::new(request, node), best)
        })
    }
}

/// Scores nodes for one decision, skipping the exponentials for nodes that cannot win.
///
/// A node cannot win when its loads equal those of the best node so far (same cost, and ties
/// go to the first), or when [`Loads::cost_lower_bound`] is not below the best cost. The
/// factors `L^demand - 1` depend only on the demand, so the last one per resource is reused
/// while consecutive nodes share a capacity.
#[derive(Debug)]
struct Scorer {
    best_loads: Option<Loads>,
    memory_factor: DemandFactor,
    cpu_factor: DemandFactor,
}

impl Default for Scorer {
    fn default() -> Self {
        Self {
            best_loads: None,
            memory_factor: DemandFactor::EMPTY,
            cpu_factor: DemandFactor::EMPTY,
        }
    }
}

impl Scorer {
    /// Returns the node's exact cost, or infinity when it provably cannot beat `best`.
    fn score(&mut self, loads: Loads, best: f64) -> f64 {
        if self.best_loads == Some(loads) {
            return f64::INFINITY;
        }
        // The margin keeps rounding in the bound from skipping a winner.
        if loads.cost_lower_bound() * (1.0 - 1e-12) >= best {
            return f64::INFINITY;
        }
        let cost = (loads.memory_load * LN_LIEB).exp()
            * self.memory_factor.get(loads.memory_demand)
            + (loads.cpu_load * LN_LIEB).exp() * self.cpu_factor.get(loads.cpu_demand);
        if cost < best {
            // place_best takes a strictly lower cost, so this node is now the best.
            self.best_loads = Some(loads);
        }
        cost
    }
}

/// The last demand seen for one resource and its factor `L^demand - 1`.
#[derive(Debug, Clone, Copy)]
struct DemandFactor {
    demand: f64,
    factor: f64,
}

impl DemandFactor {
    /// Matches no demand, because NaN equals nothing.
    const EMPTY: Self = Self {
        demand: f64::NAN,
        factor: f64::NAN,
    };

    /// Returns `L^demand - 1`, computing it only when `demand` differs from the last one.
    fn get(&mut self, demand: f64) -> f64 {
        if demand != self.demand {
            *self = Self {
                demand,
                factor: demand_factor(demand),
            };
        }
        self.factor
    }
}

/// Computes what placing `request` on `node` adds to the node's cost, as the module docs
/// define it; lower is better.
pub fn marginal_cost(request: &PlacementRequest, node: &NodeSnapshot) -> f64 {
    Loads::new(request, node).cost()
}

/// A node's memory and CPU load and a task's demand on each, as fractions of capacity.
///
/// Every field is at least 0, because allocations, requests and measurements are.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Loads {
    memory_load: f64,
    memory_demand: f64,
    cpu_load: f64,
    cpu_demand: f64,
}

impl Loads {
    fn new(request: &PlacementRequest, node: &NodeSnapshot) -> Self {
        // One division per resource; a node without the resource gets fractions of 0.
        let per_memory_byte = fraction(1.0, node.capacity.memory.bytes() as f64);
        let per_core = fraction(1.0, node.capacity.cpu);
        let memory_allocated = node.allocated.memory.bytes() as f64 * per_memory_byte;
        let cpu_allocated = node.allocated.cpu * per_core;
        Self {
            memory_load: match measured_memory_usage(node) {
                Some(measured) => memory_allocated.max(measured),
                None => memory_allocated,
            },
            memory_demand: request.resources.memory.bytes() as f64 * per_memory_byte,
            cpu_load: match measured_cpu_usage(node) {
                Some(measured) => cpu_allocated.max(measured),
                None => cpu_allocated,
            },
            cpu_demand: request.resources.cpu * per_core,
        }
    }

    /// Computes the marginal cost over memory and CPU.
    fn cost(&self) -> f64 {
        resource_cost(self.memory_load, self.memory_demand)
            + resource_cost(self.cpu_load, self.cpu_demand)
    }

    /// Computes a lower bound of [`Self::cost`] without exponentials.
    fn cost_lower_bound(&self) -> f64 {
        resource_cost_lower_bound(self.memory_load, self.memory_demand)
            + resource_cost_lower_bound(self.cpu_load, self.cpu_demand)
    }
}

/// Computes `L^(load + demand) - L^load` in the factored form `L^load · (L^demand - 1)`.
fn resource_cost(load: f64, demand: f64) -> f64 {
    (load * LN_LIEB).exp() * demand_factor(demand)
}

/// Computes `L^demand - 1`, which is 0 for a resource the task does not request.
fn demand_factor(demand: f64) -> f64 {
    if demand <= 0.0 {
        return 0.0;
    }
    (demand * LN_LIEB).exp_m1()
}

/// Bounds [`resource_cost`] from below with the first terms of the Taylor series of `e^x`
/// and `e^x - 1`, which are below the functions for `x >= 0`. For loads and demands up to 1,
/// the bound is within about 1.5 % of the cost.
fn resource_cost_lower_bound(load: f64, demand: f64) -> f64 {
    if demand <= 0.0 {
        return 0.0;
    }
    let x = load * LN_LIEB;
    let y = demand * LN_LIEB;
    (1.0 + x + x * x / 2.0) * (y + y * y / 2.0 + y * y * y / 6.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::NodeStatus;
    use crate::resources::ByteSize;
    use crate::scheduler::fixtures::{allocate, metrics, node, place_repeatedly, request};

    fn assert_close(actual: f64, expected: f64, what: &str) {
        assert!(
            (actual - expected).abs() < 1e-12,
            "{what}: cost {actual}, expected {expected}"
        );
    }

    #[test]
    fn ln_lieb_matches_lieb() {
        assert_close(LN_LIEB, LIEB.ln(), "ln(LIEB)");
        assert_close(LIEB, (4.0f64 / 3.0).powf(1.5), "(4/3)^(3/2)");
    }

    #[test]
    fn epvm_scores_match_hand_computed_vector() {
        // Expected costs from L^(u+d) - L^u per resource, computed separately in Python.
        let task = request(1.0, 1024);
        let mut allocated = node("allocated", 4.0, 8192);
        allocated.allocated.cpu = 1.0;
        allocated.allocated.memory = ByteSize::mib(2048);
        // u_mem = max(0.25, 0.5), d_mem = 0.125; u_cpu = max(0.25, 0.75), d_cpu = 0.25.
        let mut measured = allocated.clone();
        measured.metrics = Some(metrics(0.75, ByteSize::mib(4096), ByteSize::mib(8192)));
        // Measured figures below the allocation change nothing.
        let mut quiet = allocated.clone();
        quiet.metrics = Some(metrics(0.1, ByteSize::mib(512), ByteSize::mib(8192)));
        // u_mem = 1/16, d_mem = 1/16; u_cpu = 0.1, d_cpu = 0.125.
        let mut large = node("large", 8.0, 16384);
        large.metrics = Some(metrics(0.1, ByteSize::mib(1024), ByteSize::mib(16384)));
        // u = 0 for both, d_mem = 0.25, d_cpu = 0.5.
        let small = node("small", 2.0, 4096);

        assert_close(
            marginal_cost(&task, &allocated),
            0.188_626_588_089_910_73,
            "allocated",
        );
        assert_close(
            marginal_cost(&task, &measured),
            0.226_215_437_605_777_9,
            "measured",
        );
        assert_close(
            marginal_cost(&task, &quiet),
            0.188_626_588_089_910_73,
            "quiet",
        );
        assert_close(
            marginal_cost(&task, &large),
            0.085_950_113_465_882_88,
            "large",
        );
        assert_close(
            marginal_cost(&task, &small),
            0.354_721_412_180_927_45,
            "small",
        );

        let nodes = [allocated, measured, quiet, large, small];
        let placement = Epvm.place(&task, &nodes).unwrap();
        assert_eq!(placement.index, 3);
        assert_close(placement.score, 0.085_950_113_465_882_88, "placement score");
    }

    #[test]
    fn epvm_cpu_term_counts_measured_usage() {
        // Same memory; only measured CPU differs. d_mem = 0.125, d_cpu = 0.25.
        let task = request(1.0, 1024);
        let mut busy = node("busy", 4.0, 8192);
        busy.metrics = Some(metrics(0.6, ByteSize(0), ByteSize::mib(8192)));
        let mut idle = node("idle", 4.0, 8192);
        idle.metrics = Some(metrics(0.2, ByteSize(0), ByteSize::mib(8192)));

        assert_close(
            marginal_cost(&task, &busy),
            0.203_001_011_396_614_75,
            "busy",
        );
        assert_close(marginal_cost(&task, &idle), 0.179_604_723_474_888_1, "idle");
        let placement = Epvm.place(&task, &[busy, idle]).unwrap();
        assert_eq!(placement.index, 1);
    }

    #[test]
    fn epvm_cpu_term_counts_allocated_cores() {
        let task = request(1.0, 0);
        let mut loaded = node("loaded", 4.0, 8192);
        loaded.allocated.cpu = 2.0;
        let light = node("light", 4.0, 8192);
        let placement = Epvm.place(&task, &[loaded, light]).unwrap();
        assert_eq!(placement.index, 1);
    }

    #[test]
    fn epvm_lower_bound_never_exceeds_cost() {
        for load in [0.0, 0.1, 0.5, 0.99, 1.0, 1.5] {
            for demand in [0.0, 1e-9, 0.01, 0.25, 1.0] {
                let bound = resource_cost_lower_bound(load, demand);
                let cost = resource_cost(load, demand);
                assert!(
                    bound <= cost,
                    "load {load}, demand {demand}: {bound} > {cost}"
                );
            }
        }
    }

    #[test]
    fn epvm_matches_exhaustive_search() {
        // A linear congruential generator keeps the table fixed without a random crate.
        let mut state = 12_345u64;
        let mut next = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            (state >> 33) as f64 / (1u64 << 31) as f64
        };
        let task = request(0.5, 512);
        for round in 0..50 {
            let nodes: Vec<NodeSnapshot> = (0..40)
                .map(|i| {
                    let mut candidate = node(&format!("n{i}"), 4.0, 8192);
                    candidate.allocated.cpu = (next() * 14.0).floor() / 4.0;
                    candidate.allocated.memory =
                        ByteSize::mib((next() * 7.0).floor() as u64 * 1024);
                    if next() < 0.7 {
                        let used = ByteSize::mib((next() * 8192.0) as u64);
                        candidate.metrics = Some(metrics(next(), used, ByteSize::mib(8192)));
                    }
                    candidate
                })
                .collect();
            let mut expected = 0;
            for (index, candidate) in nodes.iter().enumerate() {
                if marginal_cost(&task, candidate) < marginal_cost(&task, &nodes[expected]) {
                    expected = index;
                }
            }
            let placement = Epvm.place(&task, &nodes).unwrap();
            assert_eq!(placement.index, expected, "round {round}");
            assert_eq!(placement.score, marginal_cost(&task, &nodes[expected]));
        }
    }

    #[test]
    fn epvm_ties_go_to_first_node() {
        let nodes = [node("a", 4.0, 4096), node("b", 4.0, 4096)];
        let placement = Epvm.place(&request(1.0, 512), &nodes).unwrap();
        assert_eq!(placement.index, 0);
    }

    #[test]
    fn epvm_balances_equal_nodes() {
        let mut nodes = vec![
            node("a", 4.0, 4096),
            node("b", 4.0, 4096),
            node("c", 4.0, 4096),
        ];
        let picks = place_repeatedly(&mut Epvm, &request(1.0, 1024), &mut nodes, 6);
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn epvm_skips_unready_empty_node() {
        let task = request(1.0, 1024);
        let mut unreachable = node("unreachable", 8.0, 16384);
        unreachable.status = NodeStatus::Unreachable;
        let mut busy = node("busy", 4.0, 8192);
        allocate(&mut busy, &task);
        let placement = Epvm.place(&task, &[unreachable, busy]).unwrap();
        assert_eq!(placement.index, 1);
    }
}
