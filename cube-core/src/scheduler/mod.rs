//! Placement policies: pure functions from a task's request and a snapshot of the nodes to a
//! placement, or to the reasons no node fits.
//!
//! Every policy runs the same three phases: filter the feasible candidates, score them, pick
//! the best. Feasibility is shared ([`check_node`]); policies differ only in how they choose.
//! The manager's Scheduler actor owns the node table and updates it by deltas; a policy
//! only reads it.
//!
//! The policies are [`Epvm`] (the default, [`DEFAULT_POLICY`]), [`EpvmBook`], [`Greedy`],
//! [`Binpack`], [`Spread`] and [`RoundRobin`]. Each scores a node from its capacity, its
//! allocations and, for the CPU and memory load policies, its latest host metrics, in one
//! pass over the snapshot that allocates nothing per node.

mod binpack;
mod epvm;
mod epvm_book;
#[cfg(test)]
mod fixtures;
mod greedy;
mod round_robin;
mod spread;

pub use binpack::{Binpack, allocated_share_after};
pub use epvm::{Epvm, LIEB, marginal_cost};
pub use epvm_book::{EpvmBook, MAX_JOBS, book_score};
pub use greedy::{Greedy, cpu_load};
pub use round_robin::RoundRobin;
pub use spread::{Spread, free_share_after};

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::ids::{NodeId, TaskId};
use crate::node::{HostMetrics, NodeStatus};
use crate::resources::Resources;
use crate::spec::{Protocol, TaskSpec};

/// Resources and ports a task needs from a node.
#[derive(Debug, Clone, PartialEq)]
pub struct PlacementRequest {
    /// The task being placed.
    pub task_id: TaskId,
    /// Resources to allocate.
    pub resources: Resources,
    /// Fixed host ports that must be free on the node.
    pub fixed_ports: Vec<(Protocol, u16)>,
    /// Number of dynamic host ports the node must hand out.
    pub dynamic_ports: usize,
}

impl PlacementRequest {
    /// Builds the request for `spec`.
    pub fn for_spec(task_id: TaskId, spec: &TaskSpec) -> Self {
        let fixed_ports = spec
            .ports
            .iter()
            .filter_map(|port| port.host_port.map(|host| (port.protocol, host)))
            .collect();
        let dynamic_ports = spec
            .ports
            .iter()
            .filter(|port| port.host_port.is_none())
            .count();
        Self {
            task_id,
            resources: spec.resources(),
            fixed_ports,
            dynamic_ports,
        }
    }
}

/// A node as the scheduler sees it at one decision.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSnapshot {
    /// The node.
    pub id: NodeId,
    /// Whether it can take tasks.
    pub status: NodeStatus,
    /// Resources it offers in total.
    pub capacity: Resources,
    /// Resources allocated to its tasks.
    pub allocated: Resources,
    /// Host ports held by its tasks.
    pub ports_in_use: BTreeSet<(Protocol, u16)>,
    /// Free host ports left in its dynamic range.
    pub dynamic_ports_free: usize,
    /// Tasks placed on it that hold an allocation.
    pub task_count: u32,
    /// Latest host metrics, if any arrived.
    pub metrics: Option<HostMetrics>,
}

impl NodeSnapshot {
    /// Creates a ready node with `capacity`, nothing allocated and 1000 free dynamic ports.
    pub fn ready(id: NodeId, capacity: Resources) -> Self {
        Self {
            id,
            status: NodeStatus::Ready,
            capacity,
            allocated: Resources::default(),
            ports_in_use: BTreeSet::new(),
            dynamic_ports_free: 1000,
            task_count: 0,
            metrics: None,
        }
    }

    /// Resources not yet allocated.
    pub fn free(&self) -> Resources {
        let mut free = self.capacity;
        free.subtract(&self.allocated);
        free
    }
}

/// Reason one node cannot take a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Shortfall {
    /// The node is down, unreachable or draining.
    Ineligible,
    /// Not enough free memory.
    Memory,
    /// Not enough free CPU.
    Cpu,
    /// Not enough free disk.
    Disk,
    /// This fixed host port is in use.
    Port(Protocol, u16),
    /// The dynamic port range is exhausted.
    DynamicPorts,
}

/// Checks whether `node` can take `request`, reporting the first shortfall found.
///
/// # Errors
///
/// Returns the [`Shortfall`] that rules the node out.
pub fn check_node(request: &PlacementRequest, node: &NodeSnapshot) -> Result<(), Shortfall> {
    if node.status != NodeStatus::Ready {
        return Err(Shortfall::Ineligible);
    }
    let free = node.free();
    if request.resources.memory > free.memory {
        return Err(Shortfall::Memory);
    }
    // A small tolerance absorbs float dust from repeated allocate/release of fractional cores.
    if request.resources.cpu > free.cpu + 1e-9 {
        return Err(Shortfall::Cpu);
    }
    if request.resources.disk > free.disk {
        return Err(Shortfall::Disk);
    }
    for &(protocol, port) in &request.fixed_ports {
        if node.ports_in_use.contains(&(protocol, port)) {
            return Err(Shortfall::Port(protocol, port));
        }
    }
    if request.dynamic_ports > node.dynamic_ports_free {
        return Err(Shortfall::DynamicPorts);
    }
    Ok(())
}

/// The chosen node.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// The node.
    pub node: NodeId,
    /// Its position in the snapshot passed to the policy.
    pub index: usize,
    /// The policy's score for it; what is better depends on the policy.
    pub score: f64,
}

/// Reasons no node could take a request, counted per shortfall.
///
/// Each evaluated node is counted once, under the first shortfall found for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unplaced {
    /// Nodes looked at.
    pub evaluated: usize,
    /// Nodes down, unreachable or draining.
    pub ineligible: usize,
    /// Nodes without enough memory.
    pub memory: usize,
    /// Nodes without enough CPU.
    pub cpu: usize,
    /// Nodes without enough disk.
    pub disk: usize,
    /// Nodes where a fixed host port is in use, per port.
    pub ports: BTreeMap<(Protocol, u16), usize>,
    /// Nodes whose dynamic port range is exhausted.
    pub dynamic_ports: usize,
}

impl Unplaced {
    /// Counts one more node ruled out by `shortfall`.
    pub fn record(&mut self, shortfall: Shortfall) {
        self.evaluated += 1;
        match shortfall {
            Shortfall::Ineligible => self.ineligible += 1,
            Shortfall::Memory => self.memory += 1,
            Shortfall::Cpu => self.cpu += 1,
            Shortfall::Disk => self.disk += 1,
            Shortfall::Port(protocol, port) => {
                *self.ports.entry((protocol, port)).or_default() += 1
            }
            Shortfall::DynamicPorts => self.dynamic_ports += 1,
        }
    }
}

impl fmt::Display for Unplaced {
    /// Writes e.g. "3 nodes evaluated: 2 lack memory, 1 has port 8080 in use".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.evaluated == 0 {
            return f.write_str("no nodes registered");
        }
        let noun = if self.evaluated == 1 { "node" } else { "nodes" };
        write!(f, "{} {noun} evaluated", self.evaluated)?;
        let mut parts = Vec::new();
        let verb = |n: usize, one: &str, many: &str| {
            if n == 1 {
                one.to_owned()
            } else {
                many.to_owned()
            }
        };
        if self.ineligible > 0 {
            parts.push(format!(
                "{} {} not ready",
                self.ineligible,
                verb(self.ineligible, "is", "are")
            ));
        }
        for (count, what) in [
            (self.memory, "memory"),
            (self.cpu, "cpu"),
            (self.disk, "disk"),
        ] {
            if count > 0 {
                parts.push(format!("{count} {} {what}", verb(count, "lacks", "lack")));
            }
        }
        for (&(protocol, port), &count) in &self.ports {
            let port = match protocol {
                Protocol::Tcp => port.to_string(),
                Protocol::Udp => format!("{port}/udp"),
            };
            parts.push(format!(
                "{count} {} port {port} in use",
                verb(count, "has", "have")
            ));
        }
        if self.dynamic_ports > 0 {
            parts.push(format!(
                "{} {} no free dynamic port",
                self.dynamic_ports,
                verb(self.dynamic_ports, "has", "have")
            ));
        }
        if !parts.is_empty() {
            write!(f, ": {}", parts.join(", "))?;
        }
        Ok(())
    }
}

/// A placement policy.
pub trait Policy: Send + fmt::Debug {
    /// The name used to select it, such as `roundrobin`.
    fn name(&self) -> &'static str;

    /// Chooses a node for `request` among `nodes`.
    ///
    /// # Errors
    ///
    /// Returns [`Unplaced`] with a count per shortfall when no node is feasible.
    fn place(
        &mut self,
        request: &PlacementRequest,
        nodes: &[NodeSnapshot],
    ) -> Result<Placement, Unplaced>;
}

/// The policy a manager uses when none is configured.
pub const DEFAULT_POLICY: &str = "epvm";

/// Names accepted by [`policy_by_name`], the default first.
pub const POLICY_NAMES: &[&str] = &[
    DEFAULT_POLICY,
    "epvm-book",
    "greedy",
    "binpack",
    "spread",
    "roundrobin",
];

/// Creates the policy called `name`, if there is one.
pub fn policy_by_name(name: &str) -> Option<Box<dyn Policy>> {
    match name {
        "epvm" => Some(Box::new(Epvm)),
        "epvm-book" => Some(Box::new(EpvmBook)),
        "greedy" => Some(Box::new(Greedy)),
        "binpack" => Some(Box::new(Binpack)),
        "spread" => Some(Box::new(Spread)),
        "roundrobin" => Some(Box::new(RoundRobin::default())),
        _ => None,
    }
}

/// Which end of a policy's score scale wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Preference {
    Lowest,
    Highest,
}

/// Places `request` on the feasible node with the best score, the first in snapshot order
/// among equal scores.
///
/// Runs filter, score and pick in one pass: each node is checked with [`check_node`] and only
/// feasible nodes are passed to `score`, so an ineligible node is never scored. `score` also
/// receives the best score so far (infinitely bad before the first feasible node). When it
/// can prove a node scores no better than that, it may return any value that is no better
/// instead of the exact score, because such a node cannot win.
///
/// # Errors
///
/// Returns [`Unplaced`] with a count per shortfall when no node is feasible.
fn place_best(
    request: &PlacementRequest,
    nodes: &[NodeSnapshot],
    preference: Preference,
    mut score: impl FnMut(&NodeSnapshot, f64) -> f64,
) -> Result<Placement, Unplaced> {
    let mut unplaced = Unplaced::default();
    let mut best: Option<(usize, f64)> = None;
    let worst = match preference {
        Preference::Lowest => f64::INFINITY,
        Preference::Highest => f64::NEG_INFINITY,
    };
    for (index, node) in nodes.iter().enumerate() {
        if let Err(shortfall) = check_node(request, node) {
            unplaced.record(shortfall);
            continue;
        }
        let value = score(node, best.map_or(worst, |(_, best_value)| best_value));
        debug_assert!(!value.is_nan(), "policy scored node {} as NaN", node.id);
        let wins = match best {
            None => true,
            Some((_, best_value)) => match preference {
                Preference::Lowest => value < best_value,
                Preference::Highest => value > best_value,
            },
        };
        if wins {
            best = Some((index, value));
        }
    }
    match best {
        Some((index, score)) => Ok(Placement {
            node: nodes[index].id.clone(),
            index,
            score,
        }),
        None => Err(unplaced),
    }
}

/// Returns `part / whole`, or 0 when `whole` is not positive (a node without that resource).
fn fraction(part: f64, whole: f64) -> f64 {
    if whole > 0.0 { part / whole } else { 0.0 }
}

/// The node's measured CPU usage as a fraction from 0 to 1 of its host's CPUs, if metrics
/// arrived and hold a finite value.
fn measured_cpu_usage(node: &NodeSnapshot) -> Option<f64> {
    let usage = node.metrics.as_ref()?.cpu_usage;
    usage.is_finite().then(|| usage.clamp(0.0, 1.0))
}

/// The node's measured memory use (total minus available) as a fraction from 0 to 1 of its
/// host's memory, if metrics arrived and report a total.
fn measured_memory_usage(node: &NodeSnapshot) -> Option<f64> {
    let metrics = node.metrics.as_ref()?;
    let total = metrics.memory_total.bytes();
    if total == 0 {
        return None;
    }
    let used = total.saturating_sub(metrics.memory_available.bytes());
    Some(used as f64 / total as f64)
}

/// Averages `share(allocated_after, capacity)` over CPU and memory, where `allocated_after`
/// is what the node would have allocated once `request` is placed.
///
/// A resource the node has none of is left out of the mean, as Kubernetes' `NodeResourcesFit`
/// scorers do; a node with neither CPU nor memory scores 0.
fn mean_share_after(
    request: &PlacementRequest,
    node: &NodeSnapshot,
    share: impl Fn(f64, f64) -> f64,
) -> f64 {
    let resources = [
        (
            node.allocated.cpu + request.resources.cpu,
            node.capacity.cpu,
        ),
        (
            node.allocated.memory.bytes() as f64 + request.resources.memory.bytes() as f64,
            node.capacity.memory.bytes() as f64,
        ),
    ];
    let mut sum = 0.0;
    let mut counted = 0u32;
    for (allocated_after, capacity) in resources {
        if capacity > 0.0 {
            sum += share(allocated_after.min(capacity), capacity);
            counted += 1;
        }
    }
    if counted == 0 {
        0.0
    } else {
        sum / f64::from(counted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::ByteSize;

    fn node(name: &str, memory_mib: u64) -> NodeSnapshot {
        NodeSnapshot::ready(
            NodeId::new(name).unwrap(),
            Resources {
                cpu: 2.0,
                memory: ByteSize::mib(memory_mib),
                disk: ByteSize::gib(10),
            },
        )
    }

    fn request(memory_mib: u64) -> PlacementRequest {
        PlacementRequest {
            task_id: TaskId::generate(),
            resources: Resources {
                cpu: 0.5,
                memory: ByteSize::mib(memory_mib),
                disk: ByteSize(0),
            },
            fixed_ports: Vec::new(),
            dynamic_ports: 0,
        }
    }

    #[test]
    fn check_node_finds_each_shortfall() {
        let mut small = node("a", 100);
        assert_eq!(check_node(&request(200), &small), Err(Shortfall::Memory));
        assert_eq!(check_node(&request(50), &small), Ok(()));

        let mut cpu_hungry = request(10);
        cpu_hungry.resources.cpu = 3.0;
        assert_eq!(check_node(&cpu_hungry, &small), Err(Shortfall::Cpu));

        let mut with_port = request(10);
        with_port.fixed_ports.push((Protocol::Tcp, 8080));
        small.ports_in_use.insert((Protocol::Tcp, 8080));
        assert_eq!(
            check_node(&with_port, &small),
            Err(Shortfall::Port(Protocol::Tcp, 8080))
        );

        small.status = NodeStatus::Down;
        assert_eq!(check_node(&request(10), &small), Err(Shortfall::Ineligible));
    }

    #[test]
    fn unplaced_names_each_resource() {
        let mut unplaced = Unplaced::default();
        unplaced.record(Shortfall::Memory);
        unplaced.record(Shortfall::Memory);
        unplaced.record(Shortfall::Port(Protocol::Tcp, 8080));
        assert_eq!(
            unplaced.to_string(),
            "3 nodes evaluated: 2 lack memory, 1 has port 8080 in use"
        );
        assert_eq!(Unplaced::default().to_string(), "no nodes registered");
    }

    #[test]
    fn policy_by_name_knows_every_listed_name() {
        for name in POLICY_NAMES {
            let policy = policy_by_name(name).expect("listed policy exists");
            assert_eq!(policy.name(), *name);
        }
        assert!(policy_by_name("nope").is_none());
    }

    #[test]
    fn default_policy_is_epvm_and_listed_first() {
        assert_eq!(DEFAULT_POLICY, "epvm");
        assert_eq!(POLICY_NAMES[0], DEFAULT_POLICY);
        assert!(policy_by_name(DEFAULT_POLICY).is_some());
    }

    /// Nodes that every policy would prefer if it scored them, each ruled out for another
    /// reason, followed by one loaded but feasible node at index 7.
    fn tempting_nodes() -> Vec<NodeSnapshot> {
        let large = |name: &str, status: NodeStatus| {
            let mut node = fixtures::node(name, 64.0, 65536);
            node.status = status;
            node
        };
        let mut no_memory = fixtures::node("no-memory", 64.0, 0);
        no_memory.capacity.disk = ByteSize(0);
        let no_cpu = fixtures::node("no-cpu", 0.0, 65536);
        let mut full_memory = fixtures::node("full-memory", 64.0, 1024);
        full_memory.allocated.memory = ByteSize::mib(1000);
        let mut port_taken = fixtures::node("port-taken", 64.0, 65536);
        port_taken.ports_in_use.insert((Protocol::Tcp, 8080));
        let mut feasible = fixtures::node("feasible", 4.0, 4096);
        feasible.allocated.cpu = 2.0;
        feasible.allocated.memory = ByteSize::mib(2048);
        feasible.task_count = 3;
        vec![
            large("unreachable", NodeStatus::Unreachable),
            large("down", NodeStatus::Down),
            large("draining", NodeStatus::Draining),
            no_memory,
            no_cpu,
            full_memory,
            port_taken,
            feasible,
        ]
    }

    fn tempted_request() -> PlacementRequest {
        let mut request = fixtures::request(1.0, 512);
        request.fixed_ports.push((Protocol::Tcp, 8080));
        request
    }

    #[test]
    fn every_policy_skips_ineligible_and_lacking_nodes() {
        let nodes = tempting_nodes();
        for name in POLICY_NAMES {
            let mut policy = policy_by_name(name).unwrap();
            for attempt in 0..3 {
                let placement = policy
                    .place(&tempted_request(), &nodes)
                    .unwrap_or_else(|unplaced| panic!("{name} placed nothing: {unplaced}"));
                assert_eq!(
                    placement.index, 7,
                    "{name} chose {} on attempt {attempt}",
                    placement.node
                );
                assert_eq!(placement.node.as_str(), "feasible", "{name}");
            }
        }
    }

    #[test]
    fn every_policy_counts_each_shortfall() {
        let mut nodes = tempting_nodes();
        nodes.pop();
        for name in POLICY_NAMES {
            let mut policy = policy_by_name(name).unwrap();
            let unplaced = policy.place(&tempted_request(), &nodes).unwrap_err();
            assert_eq!(unplaced.evaluated, 7, "{name}");
            assert_eq!(unplaced.ineligible, 3, "{name}");
            assert_eq!(unplaced.memory, 2, "{name}");
            assert_eq!(unplaced.cpu, 1, "{name}");
            assert_eq!(
                unplaced.ports.get(&(Protocol::Tcp, 8080)),
                Some(&1),
                "{name}"
            );
        }
    }

    #[test]
    fn every_policy_reports_no_nodes() {
        for name in POLICY_NAMES {
            let mut policy = policy_by_name(name).unwrap();
            let unplaced = policy.place(&tempted_request(), &[]).unwrap_err();
            assert_eq!(unplaced.evaluated, 0, "{name}");
        }
    }
}
