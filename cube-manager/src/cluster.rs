//! An in-process cluster: a manager and any number of workers in one process.
//!
//! [`ClusterBuilder`] starts a [`Manager`], N cube-worker `Worker` actors, each on its own
//! simulated container runtime or all on the local Docker Engine, and optionally the
//! manager's HTTP API on `127.0.0.1:0`. Inside a running actix `System`,
//! [`ClusterBuilder::start`] returns a [`Cluster`] with the actors' addresses. From a plain
//! thread or another async runtime, [`ClusterBuilder::spawn`] starts a `System` on a thread of
//! its own and returns a [`ClusterHandle`] whose fields are all `Send`.
//!
//! The manager keeps strong handles to its workers; the workers reach the manager only
//! through the weak recipient of their report subscription, so dropping the cluster stops
//! every actor.
//!
//! # Caveats
//!
//! Docker workers of one cluster share the host, and each node hands out dynamic host ports
//! on its own. So that two nodes never bind the same address and port, worker `i` (from 0)
//! of a Docker cluster publishes on `127.0.0.{i + 1}` unless its publish address is set.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use actix::{Actor, Addr, System};
use actix_web::dev::ServerHandle;
use log::{info, warn};

use cube_core::ids::{InvalidNodeId, NodeId};
use cube_core::node::DeclaredCapacity;
use cube_core::resources::ByteSize;
use cube_core::store::{MemoryStore, RedbStore, Store, StoreError};
use cube_worker::docker::{DockerConfig, DockerRuntime};
use cube_worker::runtime::{RuntimeError, SharedRuntime};
use cube_worker::simulated::{SimulatedBehaviour, SimulatedRuntime};
use cube_worker::{Worker, WorkerConfig};

use crate::http::{HttpConfig, serve};
use crate::manager::AddWorker;
use crate::{Error, Manager, ManagerConfig};

/// Capacity of a simulated worker for each resource it does not declare.
pub const SIMULATED_CAPACITY: DeclaredCapacity = DeclaredCapacity {
    cpu: Some(4.0),
    memory: Some(ByteSize::gib(4)),
    disk: Some(ByteSize::gib(10)),
};

/// The container runtime of a cluster's workers.
#[derive(Debug, Clone)]
pub enum RuntimeChoice {
    /// One [`SimulatedRuntime`] per worker, with this default behaviour.
    Simulated(SimulatedBehaviour),
    /// The Docker Engine named by this configuration, shared by all workers.
    Docker(DockerConfig),
}

/// One worker to start.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The node's name.
    pub name: String,
    /// Capacity overriding the host's figures; a simulated worker takes
    /// [`SIMULATED_CAPACITY`] for each field left `None`.
    pub capacity: DeclaredCapacity,
    /// Address container ports are published on; see the module's caveats for the default.
    pub publish_address: Option<IpAddr>,
}

/// Failure to start a cluster.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// A worker name is not a valid node id.
    #[error("invalid worker name")]
    WorkerName {
        /// The rejected name.
        #[source]
        source: InvalidNodeId,
    },
    /// A persistent store could not be opened.
    #[error("failed to open the store of the cluster's {role}")]
    Store {
        /// Whose store: "manager" or the worker's name.
        role: String,
        /// The store's error, which names the directory.
        #[source]
        source: StoreError,
    },
    /// The Docker Engine could not be reached.
    #[error("failed to connect the cluster's workers to Docker")]
    Docker {
        /// The runtime's error.
        #[source]
        source: RuntimeError,
    },
    /// The manager could not be created or did not accept a worker.
    #[error("failed to set up the cluster's manager")]
    Manager {
        /// The manager's error.
        #[source]
        source: Error,
    },
    /// The manager actor stopped during set-up.
    #[error("manager stopped while worker {node} was added")]
    ManagerGone {
        /// The worker being added.
        node: NodeId,
    },
    /// The manager's API could not be bound.
    #[error("failed to bind the manager API on 127.0.0.1")]
    Bind {
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The cluster's thread could not be started or died during set-up.
    #[error("failed to run the cluster thread: {reason}")]
    Thread {
        /// What went wrong.
        reason: String,
    },
}

/// Builds an in-process cluster.
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    manager: ManagerConfig,
    runtime: RuntimeChoice,
    workers: Vec<WorkerOptions>,
    api: Option<HttpConfig>,
    heartbeat_interval: Duration,
    data_dir: Option<PathBuf>,
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ClusterBuilder {
    /// Starts from a default manager, simulated containers that run until stopped, no
    /// workers and no HTTP API.
    pub fn new() -> Self {
        Self {
            manager: ManagerConfig::default(),
            runtime: RuntimeChoice::Simulated(SimulatedBehaviour::run_until_stopped()),
            workers: Vec::new(),
            api: None,
            heartbeat_interval: cube_worker::DEFAULT_HEARTBEAT_INTERVAL,
            data_dir: None,
        }
    }

    /// Sets the manager's configuration.
    pub fn manager_config(mut self, config: ManagerConfig) -> Self {
        self.manager = config;
        self
    }

    /// Sets the placement policy by name.
    pub fn policy(mut self, name: impl Into<String>) -> Self {
        self.manager.scheduler = name.into();
        self
    }

    /// Runs containers on simulated runtimes with `behaviour` as the default.
    pub fn simulated(mut self, behaviour: SimulatedBehaviour) -> Self {
        self.runtime = RuntimeChoice::Simulated(behaviour);
        self
    }

    /// Runs containers on the Docker Engine named by `config`.
    pub fn docker(mut self, config: DockerConfig) -> Self {
        self.runtime = RuntimeChoice::Docker(config);
        self
    }

    /// Adds a worker called `name` with `capacity`.
    pub fn worker(mut self, name: impl Into<String>, capacity: DeclaredCapacity) -> Self {
        self.workers.push(WorkerOptions {
            name: name.into(),
            capacity,
            publish_address: None,
        });
        self
    }

    /// Adds a worker described in full.
    pub fn worker_with(mut self, options: WorkerOptions) -> Self {
        self.workers.push(options);
        self
    }

    /// Adds `count` workers called `worker-1`, `worker-2`, … with `capacity` each.
    pub fn workers(mut self, count: usize, capacity: DeclaredCapacity) -> Self {
        let first = self.workers.len() + 1;
        for number in first..first + count {
            self = self.worker(format!("worker-{number}"), capacity);
        }
        self
    }

    /// Serves the manager's HTTP API on a free port of 127.0.0.1.
    pub fn serve_api(mut self, config: HttpConfig) -> Self {
        self.api = Some(config);
        self
    }

    /// Sets the time between two heartbeats of each worker.
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat_interval = interval;
        self
    }

    /// Keeps the manager's state in a redb store in `dir/manager` and each worker's in
    /// `dir/worker-<name>`; `None`, the default, keeps every store in memory.
    pub fn data_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.data_dir = dir;
        self
    }

    /// Starts the cluster in the current actix `System` and waits until every worker is
    /// registered with the manager.
    ///
    /// # Errors
    ///
    /// Returns [`ClusterError`] when a worker name is invalid, Docker cannot be reached,
    /// the manager rejects its configuration or a worker, or the API cannot be bound.
    pub async fn start(self) -> Result<Cluster, ClusterError> {
        let store = open_store(self.data_dir.as_deref(), "manager")?;
        let manager = Manager::new(self.manager.clone(), store)
            .map_err(|source| ClusterError::Manager { source })?
            .start();

        let docker = match &self.runtime {
            RuntimeChoice::Docker(config) => Some(
                DockerRuntime::connect(config)
                    .await
                    .map_err(|source| ClusterError::Docker { source })?,
            ),
            RuntimeChoice::Simulated(_) => None,
        };

        let mut workers = Vec::with_capacity(self.workers.len());
        for (index, options) in self.workers.iter().enumerate() {
            let worker = self.start_worker(index, options, docker.as_ref())?;
            let added = manager
                .send(AddWorker {
                    handle: cube_worker::handle(worker.node.clone(), &worker.addr),
                    address: None,
                })
                .await
                .map_err(|_| ClusterError::ManagerGone {
                    node: worker.node.clone(),
                })?;
            added.map_err(|source| ClusterError::Manager { source })?;
            workers.push(worker);
        }

        let (api_address, server) = match self.api {
            Some(config) => {
                let bind = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
                let (server, address) = serve(manager.clone(), bind, config)
                    .await
                    .map_err(|source| ClusterError::Bind { source })?;
                let handle = server.handle();
                actix::spawn(server);
                (Some(address), Some(handle))
            }
            None => (None, None),
        };
        info!("in-process cluster started workers={}", workers.len());
        Ok(Cluster {
            manager,
            workers,
            api_address,
            server,
        })
    }

    /// Starts the cluster in a new actix `System` on a thread of its own.
    ///
    /// # Errors
    ///
    /// Returns what [`ClusterBuilder::start`] returns, or [`ClusterError::Thread`] when the
    /// thread cannot be created or dies during set-up.
    pub fn spawn(self) -> Result<ClusterHandle, ClusterError> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("cube-cluster".to_owned())
            .spawn(move || {
                let runner = System::new();
                let started = runner.block_on(async move {
                    self.start().await.map(|cluster| {
                        let parts = SpawnedParts {
                            system: System::current(),
                            manager: cluster.manager.clone(),
                            nodes: cluster.workers.iter().map(|w| w.node.clone()).collect(),
                            api_address: cluster.api_address,
                        };
                        (cluster, parts)
                    })
                });
                match started {
                    Ok((cluster, parts)) => {
                        let _ = ready_tx.send(Ok(parts));
                        if let Err(error) = runner.run() {
                            warn!("in-process cluster system failed: {error}");
                        }
                        drop(cluster);
                    }
                    Err(error) => {
                        let _ = ready_tx.send(Err(error));
                    }
                }
            })
            .map_err(|error| ClusterError::Thread {
                reason: error.to_string(),
            })?;

        let parts = match ready_rx.recv() {
            Ok(Ok(parts)) => parts,
            Ok(Err(error)) => {
                let _ = thread.join();
                return Err(error);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(ClusterError::Thread {
                    reason: "the thread ended before the cluster started".to_owned(),
                });
            }
        };
        Ok(ClusterHandle {
            system: parts.system,
            manager: parts.manager,
            nodes: parts.nodes,
            api_address: parts.api_address,
            thread: Some(thread),
        })
    }

    fn start_worker(
        &self,
        index: usize,
        options: &WorkerOptions,
        docker: Option<&DockerRuntime>,
    ) -> Result<ClusterWorker, ClusterError> {
        let node = NodeId::new(options.name.clone())
            .map_err(|source| ClusterError::WorkerName { source })?;
        let mut config = WorkerConfig::new(node.clone());
        config.heartbeat_interval = self.heartbeat_interval;
        config.clock = self.manager.clock.clone();

        let (runtime, simulated): (SharedRuntime, _) = match (&self.runtime, docker) {
            (_, Some(docker)) => {
                config.capacity = options.capacity;
                config.publish_address = options
                    .publish_address
                    .unwrap_or_else(|| loopback_for(index));
                (Arc::new(docker.clone()), None)
            }
            (RuntimeChoice::Simulated(behaviour), None) => {
                config.capacity = DeclaredCapacity {
                    cpu: options.capacity.cpu.or(SIMULATED_CAPACITY.cpu),
                    memory: options.capacity.memory.or(SIMULATED_CAPACITY.memory),
                    disk: options.capacity.disk.or(SIMULATED_CAPACITY.disk),
                };
                // Every figure is declared, so there is nothing to sample.
                config.metrics_interval = None;
                if let Some(address) = options.publish_address {
                    config.publish_address = address;
                }
                let runtime = Arc::new(SimulatedRuntime::new(behaviour.clone()));
                (runtime.clone() as SharedRuntime, Some(runtime))
            }
            (RuntimeChoice::Docker(_), None) => {
                unreachable!("start connects to Docker before starting Docker workers")
            }
        };
        let store = open_store(self.data_dir.as_deref(), &format!("worker-{node}"))?;
        let addr = Worker::start(config, runtime, store);
        Ok(ClusterWorker {
            node,
            addr,
            simulated,
        })
    }
}

/// Opens the store of `role` in `data_dir/role`, or a memory store without a data directory.
fn open_store(data_dir: Option<&Path>, role: &str) -> Result<Box<dyn Store>, ClusterError> {
    let Some(dir) = data_dir else {
        return Ok(Box::new(MemoryStore::new()));
    };
    let store = RedbStore::open(&dir.join(role)).map_err(|source| ClusterError::Store {
        role: role.to_owned(),
        source,
    })?;
    Ok(Box::new(store))
}

/// Worker `index` of a Docker cluster publishes on 127.0.0.`index + 1`.
fn loopback_for(index: usize) -> IpAddr {
    let last = u8::try_from(index + 1).unwrap_or(u8::MAX);
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A worker of a [`Cluster`].
pub struct ClusterWorker {
    /// The node's id.
    pub node: NodeId,
    /// The Worker actor.
    pub addr: Addr<Worker>,
    /// The worker's simulated runtime, to inspect or steer containers; `None` with Docker.
    pub simulated: Option<Arc<SimulatedRuntime>>,
}

impl fmt::Debug for ClusterWorker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterWorker")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// A running in-process cluster; dropping it stops the API and, once the last address is
/// gone, every actor.
pub struct Cluster {
    /// The manager.
    pub manager: Addr<Manager>,
    /// The workers, in the order they were added.
    pub workers: Vec<ClusterWorker>,
    /// The manager API's bound address, when served.
    pub api_address: Option<SocketAddr>,
    server: Option<ServerHandle>,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("workers", &self.workers)
            .field("api_address", &self.api_address)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// The manager API's base URL, such as `http://127.0.0.1:40123`, when served.
    pub fn api_url(&self) -> Option<String> {
        self.api_address.map(|address| format!("http://{address}"))
    }

    /// Stops the manager API, waiting for open requests to finish.
    pub async fn shutdown(mut self) {
        if let Some(server) = self.server.take() {
            server.stop(true).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            // Stopping without awaiting is enough: the server ends on its own.
            drop(server.stop(false));
        }
    }
}

/// What the cluster thread hands back once started.
struct SpawnedParts {
    system: System,
    manager: Addr<Manager>,
    nodes: Vec<NodeId>,
    api_address: Option<SocketAddr>,
}

/// A cluster running on its own thread; every field is `Send`.
///
/// Dropping the handle shuts the cluster down as [`ClusterHandle::shutdown`] does.
pub struct ClusterHandle {
    system: System,
    /// The manager, reachable from any thread with `send`.
    pub manager: Addr<Manager>,
    /// The workers' node ids.
    pub nodes: Vec<NodeId>,
    /// The manager API's bound address, when served.
    pub api_address: Option<SocketAddr>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for ClusterHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterHandle")
            .field("nodes", &self.nodes)
            .field("api_address", &self.api_address)
            .finish_non_exhaustive()
    }
}

impl ClusterHandle {
    /// The manager API's base URL, such as `http://127.0.0.1:40123`, when served.
    pub fn api_url(&self) -> Option<String> {
        self.api_address.map(|address| format!("http://{address}"))
    }

    /// Stops the cluster's `System` and waits for its thread to end.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.system.stop();
            if thread.join().is_err() {
                warn!("in-process cluster thread panicked");
            }
        }
    }
}

impl Drop for ClusterHandle {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}
