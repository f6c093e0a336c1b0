//! The cube worker: runs tasks as containers on one node and reports what happens to them.
//!
//! # Starting a worker inside a running actix `System`
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use cube_core::{ByteSize, DeclaredCapacity, MemoryStore, NodeId};
//! use cube_worker::simulated::{SimulatedBehaviour, SimulatedRuntime};
//! use cube_worker::{Worker, WorkerConfig};
//!
//! # #[actix::main]
//! # async fn main() {
//! let mut config = WorkerConfig::new(NodeId::new("worker-1").unwrap());
//! // A fully declared capacity needs no host sampling, as in tests.
//! config.capacity = DeclaredCapacity {
//!     cpu: Some(2.0),
//!     memory: Some(ByteSize::gib(1)),
//!     disk: Some(ByteSize::gib(10)),
//! };
//! config.metrics_interval = None;
//! let runtime = Arc::new(SimulatedRuntime::new(SimulatedBehaviour::run_until_stopped()));
//! let node = config.node_id.clone();
//! let addr = Worker::start(config, runtime, Box::new(MemoryStore::new()));
//! let handle = cube_worker::handle(node, &addr); // a cube_core::WorkerHandle
//! # drop(handle);
//! # }
//! ```
//!
//! For Docker, pass `Arc::new(DockerRuntime::connect(&DockerConfig::default()).await?)`
//! instead. To serve the worker's HTTP API, call [`http::serve`] with the same address.
//!
//! # Modules
//!
//! - [`worker`]: the Worker actor, which handles cube-core's worker messages.
//! - [`supervisor`]: one TaskSupervisor actor per task attempt.
//! - [`health`]: one HealthChecker actor per running attempt with a health check.
//! - [`runtime`]: the container runtime trait; [`docker`] and [`simulated`] implement it.
//! - [`outbox`]: the ordered, replayable log of reports.
//! - [`metrics_collector`] and [`host_metrics`]: host metrics sampled off the actor threads.
//! - [`http`]: the worker's HTTP API.
//! - [`join`]: joins a manager on the worker's own initiative.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use actix::Addr;
use cube_core::clock::system_clock;
use cube_core::{DeclaredCapacity, NodeId, SharedClock, WorkerHandle};

pub mod docker;
pub mod health;
pub mod host_metrics;
pub mod http;
pub mod join;
pub mod metrics_collector;
pub mod outbox;
pub mod runtime;
pub mod simulated;
pub mod supervisor;
pub mod worker;

pub use docker::{DockerConfig, DockerRuntime};
pub use runtime::{ContainerRuntime, RuntimeError, SharedRuntime};
pub use simulated::{SimulatedBehaviour, SimulatedRuntime};
pub use worker::Worker;

/// Default time between two heartbeat reports.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// Default time between two reconciles of the records with the engine's containers.
pub const DEFAULT_RECONCILE_INTERVAL: Duration = Duration::from_secs(30);
/// Default time between two host metric samples.
pub const DEFAULT_METRICS_INTERVAL: Duration = Duration::from_secs(5);

/// Settings of one worker.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The node's stable identity.
    pub node_id: NodeId,
    /// Capacity that overrides the host's figures, field by field.
    pub capacity: DeclaredCapacity,
    /// Host address container ports are published on; loopback by default.
    pub publish_address: IpAddr,
    /// Time between two heartbeat reports.
    pub heartbeat_interval: Duration,
    /// Time between two host metric samples; `None` samples nothing, so undeclared
    /// capacity counts as 0 and `GET /stats` has nothing to return.
    pub metrics_interval: Option<Duration>,
    /// A path on the disk whose size and free space are reported, such as `/` or the
    /// Docker data root.
    pub disk_path: PathBuf,
    /// Time between two reconciles of the records with the engine's containers, a safety net
    /// for exits the engine's wait call missed; `None` disables it.
    pub reconcile_interval: Option<Duration>,
    /// Reports the outbox keeps for replay; see [`outbox::DEFAULT_OUTBOX_CAPACITY`].
    pub outbox_capacity: usize,
    /// Clock that stamps records and reports.
    pub clock: SharedClock,
}

impl WorkerConfig {
    /// Creates the default settings for `node_id`: nothing declared, ports on 127.0.0.1,
    /// heartbeats and samples every 5 s, a reconcile every 30 s, the disk holding `/`.
    pub fn new(node_id: NodeId) -> Self {
        Self {
            node_id,
            capacity: DeclaredCapacity::default(),
            publish_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            metrics_interval: Some(DEFAULT_METRICS_INTERVAL),
            disk_path: PathBuf::from("/"),
            reconcile_interval: Some(DEFAULT_RECONCILE_INTERVAL),
            outbox_capacity: outbox::DEFAULT_OUTBOX_CAPACITY,
            clock: system_clock(),
        }
    }
}

/// Builds the [`WorkerHandle`] through which a manager drives the worker at `addr`.
pub fn handle(node: NodeId, addr: &Addr<Worker>) -> WorkerHandle {
    WorkerHandle::from_addr(node, addr)
}
