//! Shared code of cube's benchmarks: node tables for the placement benchmark, and the parts
//! of the whole-cluster runs.
//!
//! The tables here are generated from a seed, so every run and every policy gets the same
//! nodes; the placement benchmark (`benches/placement.rs`) drives the policies of
//! [`cube_core::scheduler`] against them. The modules serve the cluster benchmark
//! (`benches/cluster.rs`) and the two separate commands, `c1m` ([`c1m`]) and
//! `docker-latency` ([`docker_latency`]), which are never part of the test run.

pub mod args;
pub mod bare_docker;
pub mod c1m;
pub mod counting_store;
pub mod docker_latency;
pub mod error;
pub mod fake_worker;
pub mod process_memory;
pub mod stats;
pub mod wait;

use std::collections::{BTreeSet, VecDeque};

use cube_core::scheduler::{NodeSnapshot, PlacementRequest};
use cube_core::{
    ByteSize, HostMetrics, NodeId, NodeStatus, Protocol, Resources, TaskId, Timestamp,
};

/// A small deterministic pseudo-random generator (SplitMix64), so node tables need no
/// random-number crate and are identical across runs.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// Creates a generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Returns the next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Returns a value in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Returns one of `choices`.
    pub fn choose<T: Copy>(&mut self, choices: &[T]) -> T {
        choices[(self.next_u64() % choices.len() as u64) as usize]
    }
}

/// Returns the request every benchmark decision places: a quarter core, 256 MiB of memory and 1 GiB
/// of disk, without host ports.
pub fn bench_request() -> PlacementRequest {
    PlacementRequest {
        task_id: TaskId::generate(),
        resources: Resources {
            cpu: 0.25,
            memory: ByteSize::mib(256),
            disk: ByteSize::gib(1),
        },
        fixed_ports: Vec::new(),
        dynamic_ports: 0,
    }
}

/// Builds `count` nodes of varied size and load from `seed`.
///
/// Capacities range from 2 to 32 cores with 2 to 8 GiB of memory per core. Each node has
/// 0 to 60 % of its CPU and memory allocated, in quarter cores and 256 MiB steps. About 90 %
/// carry host metrics whose usage roughly follows their allocations. About 3 % are not ready
/// (unreachable, draining or down), and about 5 % have too little memory left for
/// [`bench_request`], so the policies see realistic infeasible nodes too.
pub fn node_table(count: usize, seed: u64) -> Vec<NodeSnapshot> {
    let mut random = SplitMix64::new(seed);
    (0..count)
        .map(|index| random_node(index, &mut random))
        .collect()
}

/// Builds `count` identical empty ready nodes of 8 cores, 32 GiB of memory and 250 GiB of
/// disk, without metrics: the case where scores differ least between nodes.
pub fn uniform_node_table(count: usize) -> Vec<NodeSnapshot> {
    (0..count)
        .map(|index| {
            NodeSnapshot::ready(
                node_id(index),
                Resources {
                    cpu: 8.0,
                    memory: ByteSize::gib(32),
                    disk: ByteSize::gib(250),
                },
            )
        })
        .collect()
}

fn node_id(index: usize) -> NodeId {
    NodeId::new(format!("node-{index:05}")).expect("generated node names are valid")
}

fn random_node(index: usize, random: &mut SplitMix64) -> NodeSnapshot {
    let cores = random.choose(&[2u32, 4, 8, 16, 32]);
    let memory_per_core = random.choose(&[2u64, 4, 8]);
    let capacity = Resources {
        cpu: f64::from(cores),
        memory: ByteSize::gib(u64::from(cores) * memory_per_core),
        disk: ByteSize::gib(random.choose(&[100, 250, 500])),
    };

    let cpu_share = 0.6 * random.next_f64();
    let memory_share = 0.6 * random.next_f64();
    let quarter_cores = (capacity.cpu * cpu_share * 4.0).floor();
    let memory_steps = (capacity.memory.bytes() as f64 * memory_share
        / ByteSize::mib(256).bytes() as f64)
        .floor() as u64;
    let mut allocated = Resources {
        cpu: quarter_cores / 4.0,
        memory: ByteSize(memory_steps * ByteSize::mib(256).bytes()),
        disk: ByteSize::gib(quarter_cores as u64),
    };
    if random.next_f64() < 0.05 {
        // Leave less memory than one request needs.
        allocated.memory = ByteSize(capacity.memory.bytes() - ByteSize::mib(128).bytes());
    }

    let status = match random.next_f64() {
        roll if roll < 0.01 => NodeStatus::Unreachable,
        roll if roll < 0.02 => NodeStatus::Draining,
        roll if roll < 0.03 => NodeStatus::Down,
        _ => NodeStatus::Ready,
    };
    let task_count = quarter_cores as u32;
    let ports_in_use: BTreeSet<(Protocol, u16)> = (0..task_count.min(8))
        .map(|port| (Protocol::Tcp, 20_000 + port as u16))
        .collect();
    let metrics = (random.next_f64() < 0.9).then(|| {
        let noise = 0.8 + 0.4 * random.next_f64();
        let memory_used =
            (allocated.memory.bytes() as f64 * noise) as u64 + ByteSize::mib(512).bytes();
        HostMetrics {
            memory_total: capacity.memory,
            memory_available: ByteSize(capacity.memory.bytes().saturating_sub(memory_used)),
            cpu_count: cores,
            cpu_usage: (cpu_share * noise).min(1.0),
            disk_total: capacity.disk,
            disk_available: ByteSize(capacity.disk.bytes() / 2),
            load_average: [cpu_share * f64::from(cores); 3],
            running_tasks: task_count,
            sampled_at: Timestamp::UNIX_EPOCH,
        }
    });

    NodeSnapshot {
        id: node_id(index),
        status,
        capacity,
        allocated,
        ports_in_use,
        dynamic_ports_free: 1000,
        task_count,
        metrics,
    }
}

/// A node table that benchmark placements allocate into, releasing the oldest placement once
/// more than a fixed number are live, so the table neither fills up nor needs a reset.
///
/// Releasing first-in first-out models tasks that finish, and each record and release
/// touches one node and allocates nothing once the queue has grown to its window.
#[derive(Debug, Clone)]
pub struct SteadyTable {
    nodes: Vec<NodeSnapshot>,
    live: VecDeque<(usize, Resources)>,
    window: usize,
}

impl SteadyTable {
    /// Wraps `nodes`, keeping at most `window` benchmark placements allocated at once.
    pub fn new(nodes: Vec<NodeSnapshot>, window: usize) -> Self {
        Self {
            nodes,
            live: VecDeque::with_capacity(window + 1),
            window,
        }
    }

    /// The nodes, to pass to a policy.
    pub fn nodes(&self) -> &[NodeSnapshot] {
        &self.nodes
    }

    /// Allocates `request` on node `index`, as the Scheduler actor does after a placement,
    /// and releases the oldest live placement if the window is exceeded.
    pub fn record(&mut self, index: usize, request: &PlacementRequest) {
        let node = &mut self.nodes[index];
        node.allocated.add(&request.resources);
        node.task_count += 1;
        self.live.push_back((index, request.resources));
        if self.live.len() > self.window
            && let Some((oldest, resources)) = self.live.pop_front()
        {
            let node = &mut self.nodes[oldest];
            node.allocated.subtract(&resources);
            node.task_count -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cube_core::scheduler::check_node;

    #[test]
    fn node_table_is_deterministic_and_mostly_feasible() {
        let first = node_table(1000, 7);
        assert_eq!(first, node_table(1000, 7));
        let request = bench_request();
        let feasible = first
            .iter()
            .filter(|node| check_node(&request, node).is_ok())
            .count();
        assert!(
            (850..1000).contains(&feasible),
            "{feasible} of 1000 feasible"
        );
    }

    #[test]
    fn steady_table_releases_oldest_beyond_window() {
        let request = bench_request();
        let mut table = SteadyTable::new(node_table(2, 1), 1);
        let before = table.nodes()[0].clone();
        table.record(0, &request);
        table.record(1, &request);
        assert_eq!(table.nodes()[0].allocated, before.allocated);
        assert_eq!(table.nodes()[0].task_count, before.task_count);
        assert_eq!(table.live.len(), 1);
    }
}
