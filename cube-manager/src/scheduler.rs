//! The Scheduler actor: the node table, the placement policy and the resource accounting.
//!
//! The [`crate::Manager`] sends the [`Scheduler`] a message when nodes join or change
//! ([`NodeJoined`], [`NodeUpdated`]), when tasks need a node ([`PlaceTasks`]) and when a task
//! gives its resources back ([`ReleaseTask`]). `GET /nodes` reads the table through
//! [`GetNodes`]. The table is a `Vec<NodeSnapshot>` updated in place by these messages, so a
//! decision never copies it.
//!
//! # Guarantees
//!
//! - Allocation happens in the same handler as the placement decision, so two decisions can
//!   never book the same capacity or port.
//! - Each task holds at most one allocation; releasing it twice, or releasing a task that
//!   holds none, changes nothing.
//! - A host port is held by at most one task per node and protocol. Dynamic ports come from
//!   the configured range and also avoid port numbers that fixed ports hold in that range.

use std::collections::{BTreeMap, HashMap};

use actix::{Actor, Context, Handler, Message};
use log::{debug, warn};

use cube_core::ids::{NodeId, TaskId};
use cube_core::node::{HostMetrics, NodeStatus};
use cube_core::resources::Resources;
use cube_core::scheduler::{NodeSnapshot, PlacementRequest, Policy, Unplaced};
use cube_core::spec::{Protocol, TaskSpec};
use cube_core::worker_task::PortMapping;

use crate::PortRange;

mod restore;

pub use restore::{RestoreAllocations, RestoredAllocation};

/// A node registered or re-registered with its capacity.
///
/// A node that is already in the table keeps its allocations and becomes ready again.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct NodeJoined {
    /// The node.
    pub node: NodeId,
    /// Resources it offers.
    pub capacity: Resources,
    /// Latest host metrics, if any.
    pub metrics: Option<HostMetrics>,
}

/// New figures for a node; fields left `None` keep their value.
///
/// Returns whether the node's capacity or status changed, in which case pending tasks may
/// now fit. An unknown node is ignored and returns `false`.
#[derive(Debug, Clone, Message)]
#[rtype(result = "bool")]
pub struct NodeUpdated {
    /// The node.
    pub node: NodeId,
    /// New capacity.
    pub capacity: Option<Resources>,
    /// New metrics.
    pub metrics: Option<HostMetrics>,
    /// New status.
    pub status: Option<NodeStatus>,
}

/// A task's placement request: resources and port mappings, dynamic ones without a host port.
#[derive(Debug, Clone, PartialEq)]
pub struct PlaceRequest {
    /// The task.
    pub task_id: TaskId,
    /// Resources to allocate.
    pub resources: Resources,
    /// One mapping per spec port; `host_port: None` requests a dynamic port.
    pub ports: Vec<PortMapping>,
}

impl PlaceRequest {
    /// Builds the request for `spec`.
    pub fn for_spec(task_id: TaskId, spec: &TaskSpec) -> Self {
        Self {
            task_id,
            resources: spec.resources(),
            ports: PortMapping::from_spec(spec),
        }
    }
}

/// A placement with its allocation made.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    /// The task.
    pub task_id: TaskId,
    /// The chosen node.
    pub node: NodeId,
    /// The request's mappings with every host port set.
    pub ports: Vec<PortMapping>,
}

/// Places tasks in order, allocating each placement before deciding the next.
///
/// Returns one result per request, in request order.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Vec<Result<Assignment, Unplaced>>")]
pub struct PlaceTasks {
    /// The tasks to place.
    pub requests: Vec<PlaceRequest>,
}

/// Releases a task's allocation; returns whether it held one.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "bool")]
pub struct ReleaseTask {
    /// The task.
    pub task_id: TaskId,
}

/// Marks a host port on a node as held by something outside cube, so that no placement on
/// that node uses it again.
///
/// NOTE: the reservation lasts as long as the scheduler; a port the other process frees is
/// not handed out again until the manager restarts.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct ReservePort {
    /// The node.
    pub node: NodeId,
    /// Protocol of the port.
    pub protocol: Protocol,
    /// The host port.
    pub port: u16,
}

/// Returns a copy of the node table, in the order nodes joined.
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "Vec<NodeSnapshot>")]
pub struct GetNodes;

/// The resources and ports one task has booked on its node.
#[derive(Debug, Clone)]
struct Allocation {
    node_index: usize,
    resources: Resources,
    ports: Vec<(Protocol, u16)>,
}

/// Per-node bookkeeping of port numbers inside the dynamic range.
#[derive(Debug, Clone, Default)]
struct DynamicPorts {
    /// Port numbers in the range held by any protocol, with the number of holders.
    used: BTreeMap<u16, u32>,
    /// Start of the search for the next free port, so a released port is reused last.
    cursor: u16,
}

/// Holds the node table and decides placements with a [`Policy`].
///
/// Handles [`NodeJoined`], [`NodeUpdated`], [`PlaceTasks`], [`ReleaseTask`],
/// [`ReservePort`] and [`GetNodes`]; it sends no messages.
#[derive(Debug)]
pub struct Scheduler {
    policy: Box<dyn Policy>,
    range: PortRange,
    nodes: Vec<NodeSnapshot>,
    dynamic: Vec<DynamicPorts>,
    index: HashMap<NodeId, usize>,
    allocations: HashMap<TaskId, Allocation>,
}

impl Scheduler {
    /// Creates a scheduler with `policy`, handing out dynamic ports from `range`.
    pub fn new(policy: Box<dyn Policy>, range: PortRange) -> Self {
        Self {
            policy,
            range,
            nodes: Vec::new(),
            dynamic: Vec::new(),
            index: HashMap::new(),
            allocations: HashMap::new(),
        }
    }
}

impl Actor for Scheduler {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // The manager sends one release per finished task; a burst of them must not wait on
        // the default 16-message limit.
        ctx.set_mailbox_capacity(1024);
    }
}

impl Handler<NodeJoined> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: NodeJoined, _: &mut Context<Self>) {
        self.join(msg.node, msg.capacity, msg.metrics);
    }
}

impl Handler<NodeUpdated> for Scheduler {
    type Result = bool;

    fn handle(&mut self, msg: NodeUpdated, _: &mut Context<Self>) -> bool {
        let Some(index) = self.index.get(&msg.node) else {
            return false;
        };
        let node = &mut self.nodes[*index];
        let mut changed = false;
        if let Some(capacity) = msg.capacity {
            changed |= node.capacity != capacity;
            node.capacity = capacity;
        }
        if let Some(status) = msg.status {
            changed |= node.status != status;
            node.status = status;
        }
        if msg.metrics.is_some() {
            node.metrics = msg.metrics;
        }
        changed
    }
}

impl Handler<PlaceTasks> for Scheduler {
    type Result = Vec<Result<Assignment, Unplaced>>;

    fn handle(&mut self, msg: PlaceTasks, _: &mut Context<Self>) -> Self::Result {
        msg.requests
            .into_iter()
            .map(|request| self.place_one(request))
            .collect()
    }
}

impl Handler<ReleaseTask> for Scheduler {
    type Result = bool;

    fn handle(&mut self, msg: ReleaseTask, _: &mut Context<Self>) -> bool {
        self.release(msg.task_id)
    }
}

impl Handler<ReservePort> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: ReservePort, _: &mut Context<Self>) {
        let Some(&index) = self.index.get(&msg.node) else {
            return;
        };
        if !self.nodes[index]
            .ports_in_use
            .contains(&(msg.protocol, msg.port))
        {
            self.hold_port(index, msg.protocol, msg.port);
        }
    }
}

impl Handler<GetNodes> for Scheduler {
    type Result = Vec<NodeSnapshot>;

    fn handle(&mut self, _: GetNodes, _: &mut Context<Self>) -> Vec<NodeSnapshot> {
        self.nodes.clone()
    }
}

impl Scheduler {
    /// Adds `node` to the table, or refreshes it and marks it ready if it is there already.
    fn join(&mut self, node: NodeId, capacity: Resources, metrics: Option<HostMetrics>) {
        if let Some(&index) = self.index.get(&node) {
            let snapshot = &mut self.nodes[index];
            snapshot.capacity = capacity;
            snapshot.status = NodeStatus::Ready;
            if metrics.is_some() {
                snapshot.metrics = metrics;
            }
            debug!("node rejoined node_id={node}");
            return;
        }
        let mut snapshot = NodeSnapshot::ready(node.clone(), capacity);
        snapshot.metrics = metrics;
        snapshot.dynamic_ports_free = self.range.len();
        self.index.insert(node, self.nodes.len());
        self.nodes.push(snapshot);
        self.dynamic.push(DynamicPorts {
            used: BTreeMap::new(),
            cursor: self.range.first,
        });
    }

    /// Decides a node for `request` and allocates on it.
    fn place_one(&mut self, request: PlaceRequest) -> Result<Assignment, Unplaced> {
        if self.allocations.contains_key(&request.task_id) {
            // NOTE: the manager releases before it places a task again, so this means a
            // release was lost; dropping the old allocation keeps the accounting exact.
            warn!(
                "task placed while still holding an allocation; releasing the old one task_id={}",
                request.task_id
            );
            self.release(request.task_id);
        }

        let decision_request = PlacementRequest {
            task_id: request.task_id,
            resources: request.resources,
            fixed_ports: request
                .ports
                .iter()
                .filter_map(|port| port.host_port.map(|host| (port.protocol, host)))
                .collect(),
            dynamic_ports: request
                .ports
                .iter()
                .filter(|port| port.host_port.is_none())
                .count(),
        };
        let placement = self.policy.place(&decision_request, &self.nodes)?;
        debug!(
            "task placed task_id={} node_id={} score={}",
            request.task_id, placement.node, placement.score
        );

        let ports = self.allocate(placement.index, &request);
        Ok(Assignment {
            task_id: request.task_id,
            node: placement.node,
            ports,
        })
    }

    /// Books `request` on node `index`, choosing its dynamic ports; returns the mappings.
    fn allocate(&mut self, index: usize, request: &PlaceRequest) -> Vec<PortMapping> {
        let mut ports = request.ports.clone();
        for mapping in &mut ports {
            if mapping.host_port.is_none() {
                mapping.host_port = Some(self.next_dynamic_port(index, mapping.protocol));
            }
            let host_port = mapping.host_port.expect("host port set above");
            self.hold_port(index, mapping.protocol, host_port);
        }

        let node = &mut self.nodes[index];
        node.allocated.add(&request.resources);
        node.task_count += 1;
        self.allocations.insert(
            request.task_id,
            Allocation {
                node_index: index,
                resources: request.resources,
                ports: ports
                    .iter()
                    .map(|mapping| (mapping.protocol, mapping.host_port.unwrap_or_default()))
                    .collect(),
            },
        );
        ports
    }

    /// Finds the next port of the range that no protocol holds on node `index`.
    ///
    /// # Panics
    ///
    /// Panics when the range is exhausted; [`cube_core::scheduler::check_node`] rules such a
    /// node out before allocation, because it compares against `dynamic_ports_free`.
    fn next_dynamic_port(&mut self, index: usize, protocol: Protocol) -> u16 {
        let dynamic = &mut self.dynamic[index];
        let mut port = dynamic.cursor;
        for _ in 0..self.range.len() {
            let candidate = port;
            port = if port >= self.range.last {
                self.range.first
            } else {
                port + 1
            };
            let free = !dynamic.used.contains_key(&candidate)
                && !self.nodes[index]
                    .ports_in_use
                    .contains(&(protocol, candidate));
            if free {
                dynamic.cursor = port;
                return candidate;
            }
        }
        panic!(
            "dynamic port range {} exhausted on a feasible node",
            self.range
        )
    }

    fn hold_port(&mut self, index: usize, protocol: Protocol, port: u16) {
        let node = &mut self.nodes[index];
        node.ports_in_use.insert((protocol, port));
        if self.range.contains(port) {
            *self.dynamic[index].used.entry(port).or_default() += 1;
            node.dynamic_ports_free = self.range.len() - self.dynamic[index].used.len();
        }
    }

    fn free_port(&mut self, index: usize, protocol: Protocol, port: u16) {
        let node = &mut self.nodes[index];
        node.ports_in_use.remove(&(protocol, port));
        if self.range.contains(port) {
            let used = &mut self.dynamic[index].used;
            if let Some(holders) = used.get_mut(&port) {
                *holders -= 1;
                if *holders == 0 {
                    used.remove(&port);
                }
            }
            node.dynamic_ports_free = self.range.len() - used.len();
        }
    }

    /// Returns a task's allocation to its node; returns whether it held one.
    fn release(&mut self, task_id: TaskId) -> bool {
        let Some(allocation) = self.allocations.remove(&task_id) else {
            return false;
        };
        for &(protocol, port) in &allocation.ports {
            self.free_port(allocation.node_index, protocol, port);
        }
        let node = &mut self.nodes[allocation.node_index];
        node.allocated.subtract(&allocation.resources);
        node.task_count = node.task_count.saturating_sub(1);
        if node.task_count == 0 {
            // With no task left, anything still allocated is float dust from fractional CPU.
            node.allocated = Resources::default();
        }
        debug!("allocation released task_id={task_id} node_id={}", node.id);
        true
    }
}

#[cfg(test)]
mod tests {
    use cube_core::resources::ByteSize;
    use cube_core::scheduler::policy_by_name;

    use super::*;

    fn scheduler(range: PortRange) -> Scheduler {
        Scheduler::new(policy_by_name("roundrobin").unwrap(), range)
    }

    fn join(scheduler: &mut Scheduler, name: &str, memory_mib: u64) -> NodeId {
        let node = NodeId::new(name).unwrap();
        let capacity = Resources {
            cpu: 4.0,
            memory: ByteSize::mib(memory_mib),
            disk: ByteSize::gib(1),
        };
        scheduler.join(node.clone(), capacity, None);
        node
    }

    fn request(memory_mib: u64, ports: Vec<PortMapping>) -> PlaceRequest {
        PlaceRequest {
            task_id: TaskId::generate(),
            resources: Resources {
                cpu: 0.3,
                memory: ByteSize::mib(memory_mib),
                disk: ByteSize(0),
            },
            ports,
        }
    }

    fn dynamic(container_port: u16) -> PortMapping {
        PortMapping {
            container_port,
            protocol: Protocol::Tcp,
            host_port: None,
        }
    }

    #[test]
    fn allocation_returns_to_zero_after_release() {
        let mut scheduler = scheduler(PortRange::DEFAULT);
        join(&mut scheduler, "a", 1024);
        let tasks: Vec<_> = (0..3).map(|_| request(100, vec![dynamic(80)])).collect();
        for task in &tasks {
            scheduler.place_one(task.clone()).expect("fits");
        }
        assert_eq!(scheduler.nodes[0].task_count, 3);
        for task in &tasks {
            assert!(scheduler.release(task.task_id));
            assert!(
                !scheduler.release(task.task_id),
                "second release is a no-op"
            );
        }
        let node = &scheduler.nodes[0];
        assert_eq!(node.allocated, Resources::default());
        assert_eq!(node.task_count, 0);
        assert!(node.ports_in_use.is_empty());
        assert_eq!(node.dynamic_ports_free, PortRange::DEFAULT.len());
    }

    #[test]
    fn dynamic_ports_skip_fixed_ports_in_range() {
        let range = PortRange {
            first: 30000,
            last: 30002,
        };
        let mut scheduler = scheduler(range);
        join(&mut scheduler, "a", 1024);
        let fixed = PortMapping {
            container_port: 80,
            protocol: Protocol::Tcp,
            host_port: Some(30000),
        };
        scheduler.place_one(request(1, vec![fixed])).unwrap();
        let first = scheduler.place_one(request(1, vec![dynamic(80)])).unwrap();
        let second = scheduler.place_one(request(1, vec![dynamic(80)])).unwrap();
        assert_eq!(first.ports[0].host_port, Some(30001));
        assert_eq!(second.ports[0].host_port, Some(30002));

        let exhausted = scheduler
            .place_one(request(1, vec![dynamic(80)]))
            .unwrap_err();
        assert_eq!(exhausted.dynamic_ports, 1);
    }

    #[test]
    fn released_dynamic_port_is_reused_last() {
        let range = PortRange {
            first: 30000,
            last: 30002,
        };
        let mut scheduler = scheduler(range);
        join(&mut scheduler, "a", 1024);
        let first = scheduler.place_one(request(1, vec![dynamic(80)])).unwrap();
        scheduler.release(first.task_id);
        let second = scheduler.place_one(request(1, vec![dynamic(80)])).unwrap();
        assert_eq!(first.ports[0].host_port, Some(30000));
        assert_eq!(second.ports[0].host_port, Some(30001));
    }

    #[test]
    fn unplaced_task_allocates_nothing() {
        let mut scheduler = scheduler(PortRange::DEFAULT);
        join(&mut scheduler, "a", 100);
        let unplaced = scheduler.place_one(request(200, Vec::new())).unwrap_err();
        assert_eq!(unplaced.memory, 1);
        assert_eq!(scheduler.nodes[0].allocated, Resources::default());
        assert!(scheduler.allocations.is_empty());
    }
}
