//! Helpers shared by the integration tests: manager set-up, bounded waits and specs.

pub mod fake_worker;

use std::future::Future;
use std::time::Duration;

use actix::prelude::*;

use cube_core::ids::{NodeId, TaskId};
use cube_core::messages::WorkerHandle;
use cube_core::resources::ByteSize;
use cube_core::spec::{PortSpec, Protocol, PullPolicy, TaskSpec};
use cube_core::store::MemoryStore;
use cube_core::task::Task;
use cube_core::wire::NodeView;
use cube_manager::manager::{AddWorker, CreateTask, GetTask, ListNodes, RequestStop};
use cube_manager::{Manager, ManagerConfig};

use fake_worker::{FakeOptions, FakeWorker};

/// Default bound of every wait in these tests.
pub const WAIT: Duration = Duration::from_secs(10);

/// Turns on logging once, at the level `RUST_LOG` asks for.
pub fn init_logging() {
    let _ = env_logger::builder().is_test(true).try_init();
}

/// Starts a round-robin manager over an in-memory store.
pub fn start_manager() -> Addr<Manager> {
    start_manager_with(round_robin_config())
}

/// Returns the default manager settings with the round-robin policy, whose choices tests
/// can predict.
pub fn round_robin_config() -> ManagerConfig {
    ManagerConfig {
        scheduler: "roundrobin".to_owned(),
        ..ManagerConfig::default()
    }
}

/// Starts a manager with `config` over an in-memory store.
pub fn start_manager_with(config: ManagerConfig) -> Addr<Manager> {
    init_logging();
    Manager::new(config, Box::new(MemoryStore::new()))
        .expect("test manager config is valid")
        .start()
}

/// Adds `handle` to `manager`.
pub async fn add_worker(manager: &Addr<Manager>, handle: WorkerHandle) -> NodeId {
    bounded(
        manager.send(AddWorker {
            handle,
            address: None,
        }),
        "manager did not answer AddWorker: is DescribeNode answered?",
    )
    .await
    .expect("manager mailbox open")
    .expect("worker added")
}

/// Starts a fake worker called `name` and adds it to `manager`.
pub async fn add_fake(
    manager: &Addr<Manager>,
    name: &str,
    options: FakeOptions,
) -> Addr<FakeWorker> {
    let (fake, handle) = FakeWorker::start(name, options);
    add_worker(manager, handle).await;
    fake
}

/// A small busybox spec named `name`.
pub fn spec(name: &str) -> TaskSpec {
    let mut spec = TaskSpec::new(name, "cube-test/busybox:latest");
    spec.pull_policy = PullPolicy::Never;
    spec.command = vec!["sleep".into(), "300".into()];
    spec.memory = ByteSize::mib(16);
    spec
}

/// A spec asking for `memory_mib` of memory.
pub fn spec_with_memory(name: &str, memory_mib: u64) -> TaskSpec {
    let mut spec = spec(name);
    spec.memory = ByteSize::mib(memory_mib);
    spec
}

/// A TCP port spec; `host_port: None` asks for a dynamic port.
pub fn port(container_port: u16, host_port: Option<u16>) -> PortSpec {
    PortSpec {
        container_port,
        host_port,
        protocol: Protocol::Tcp,
    }
}

/// Submits `spec` and returns the stored task.
pub async fn submit(manager: &Addr<Manager>, spec: TaskSpec) -> Task {
    bounded(
        manager.send(CreateTask { id: None, spec }),
        "manager did not answer CreateTask",
    )
    .await
    .expect("manager mailbox open")
    .expect("task accepted")
    .task
}

/// Reads one task.
pub async fn task(manager: &Addr<Manager>, task_id: TaskId) -> Task {
    bounded(
        manager.send(GetTask { task_id }),
        "manager did not answer GetTask",
    )
    .await
    .expect("manager mailbox open")
    .expect("task exists")
}

/// Asks the manager to stop a task and returns its reply.
pub async fn stop(manager: &Addr<Manager>, task_id: TaskId) -> Task {
    bounded(
        manager.send(RequestStop { task_id }),
        "manager did not answer RequestStop",
    )
    .await
    .expect("manager mailbox open")
    .expect("task exists")
}

/// Reads the node table.
pub async fn nodes(manager: &Addr<Manager>) -> Vec<NodeView> {
    bounded(
        manager.send(ListNodes),
        "manager did not answer ListNodes: is the scheduler alive?",
    )
    .await
    .expect("manager mailbox open")
    .expect("scheduler answered")
}

/// Waits until `task_id` satisfies `done`, and returns it; panics with `cause` after [`WAIT`].
pub async fn wait_for_task(
    manager: &Addr<Manager>,
    task_id: TaskId,
    cause: &str,
    done: impl Fn(&Task) -> bool,
) -> Task {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let task = task(manager, task_id).await;
        if done(&task) {
            return task;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out waiting for task {task_id}: {cause}; last seen: {task:#?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `check` returns `Some`, polling every 10 ms; panics with `cause` after `limit`.
pub async fn wait_until<T, F, Fut>(limit: Duration, cause: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {limit:?}: {cause}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Awaits `future` for at most [`WAIT`], panicking with `cause` if it takes longer.
pub async fn bounded<F: Future>(future: F, cause: &str) -> F::Output {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {WAIT:?}: {cause}"))
}
