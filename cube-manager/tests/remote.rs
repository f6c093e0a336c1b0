//! The RemoteWorker bridge against cube-worker's HTTP API on loopback: commands over HTTP,
//! reports from the event stream, a stream that resumes after the worker's API restarts, and
//! the node marked unreachable while its stream is down.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use cube_core::ids::NodeId;
use cube_core::node::{DeclaredCapacity, NodeStatus};
use cube_core::resources::ByteSize;
use cube_core::store::MemoryStore;
use cube_core::task::TaskState;
use cube_manager::Manager;
use cube_manager::manager::AddWorker;
use cube_manager::remote_worker::{ConnectError, RemoteWorker, RemoteWorkerConfig};
use cube_worker::http::{HttpOptions, serve};
use cube_worker::simulated::{SimulatedBehaviour, SimulatedRuntime};
use cube_worker::{Worker, WorkerConfig};

use crate::util::*;

/// A simulated worker with its HTTP API on loopback.
struct ServedWorker {
    worker: Addr<Worker>,
    runtime: Arc<SimulatedRuntime>,
    address: SocketAddr,
    server: actix_web::dev::ServerHandle,
}

async fn serve_worker(
    worker: Addr<Worker>,
    bind: SocketAddr,
) -> (SocketAddr, actix_web::dev::ServerHandle) {
    let (server, address) = serve(worker, bind, HttpOptions::default())
        .await
        .expect("bind the worker API on loopback");
    let handle = server.handle();
    actix::spawn(server);
    (address, handle)
}

async fn start_served_worker(name: &str) -> ServedWorker {
    let mut config = WorkerConfig::new(NodeId::new(name).unwrap());
    config.capacity = DeclaredCapacity {
        cpu: Some(2.0),
        memory: Some(ByteSize::gib(1)),
        disk: Some(ByteSize::gib(1)),
    };
    config.metrics_interval = None;
    config.heartbeat_interval = Duration::from_millis(200);
    let runtime = Arc::new(SimulatedRuntime::new(
        SimulatedBehaviour::run_until_stopped(),
    ));
    let worker = Worker::start(config, runtime.clone(), Box::new(MemoryStore::new()));
    let (address, server) = serve_worker(worker.clone(), "127.0.0.1:0".parse().unwrap()).await;
    ServedWorker {
        worker,
        runtime,
        address,
        server,
    }
}

fn bridge_config() -> RemoteWorkerConfig {
    RemoteWorkerConfig {
        request_timeout: Duration::from_secs(2),
        connect_deadline: Duration::from_secs(5),
        stream_idle_timeout: Duration::from_secs(2),
    }
}

async fn connect(manager: &Addr<Manager>, address: SocketAddr) {
    let url = format!("http://{address}");
    let handle = bounded(
        RemoteWorker::connect(&url, bridge_config()),
        "RemoteWorker::connect did not return",
    )
    .await
    .expect("worker API reachable");
    bounded(
        manager.send(AddWorker {
            handle,
            address: Some(url),
        }),
        "manager did not answer AddWorker",
    )
    .await
    .unwrap()
    .expect("remote worker added");
}

#[actix::test]
async fn remote_worker_runs_and_stops_task() {
    let manager = start_manager();
    let served = start_served_worker("remote-1").await;
    connect(&manager, served.address).await;

    let task = submit(&manager, spec("a")).await;
    wait_for_task(&manager, task.id, "task never ran over HTTP", |task| {
        task.state == TaskState::Running
    })
    .await;
    assert_eq!(served.runtime.running_count(), 1);
    let views = nodes(&manager).await;
    assert_eq!(
        views[0].address.as_deref(),
        Some(format!("http://{}", served.address).as_str())
    );

    stop(&manager, task.id).await;
    let done = wait_for_task(
        &manager,
        task.id,
        "stop over HTTP never ended the task",
        |task| task.state.is_terminal(),
    )
    .await;
    assert_eq!(done.state, TaskState::Completed);
    assert_eq!(served.runtime.running_count(), 0);
    served.server.stop(false).await;
    drop(served.worker);
}

#[actix::test]
async fn event_stream_resumes_after_worker_api_restarts() {
    let manager = start_manager();
    let served = start_served_worker("remote-1").await;
    connect(&manager, served.address).await;
    let task = submit(&manager, spec("a")).await;
    wait_for_task(&manager, task.id, "task never ran over HTTP", |task| {
        task.state == TaskState::Running
    })
    .await;

    // Restart the API on the same address; the Worker actor and its outbox live on.
    served.server.stop(true).await;
    let (_, server) = serve_worker(served.worker.clone(), served.address).await;
    stop(&manager, task.id).await;

    let done = wait_for_task(
        &manager,
        task.id,
        "the completion report never arrived: did the event stream reconnect?",
        |task| task.state.is_terminal(),
    )
    .await;
    assert_eq!(done.state, TaskState::Completed);
    server.stop(false).await;
}

#[actix::test]
async fn connect_to_closed_port_fails_after_deadline() {
    // Bind and release a port so that nothing listens on it.
    let address = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = RemoteWorkerConfig {
        connect_deadline: Duration::from_millis(500),
        ..bridge_config()
    };

    let result = bounded(
        RemoteWorker::connect(&address.to_string(), config),
        "connect ignored its deadline",
    )
    .await;

    match result {
        Err(error @ ConnectError::Describe { .. }) => {
            assert!(error.to_string().contains(&address.to_string()), "{error}");
        }
        Err(other) => panic!("expected a describe error, got {other}"),
        Ok(_) => panic!("connect to a closed port succeeded"),
    }
}

#[actix::test]
async fn broken_report_stream_marks_node_unreachable() {
    let manager = start_manager();
    let served = start_served_worker("remote-1").await;
    let url = format!("http://{}", served.address);
    let watcher = manager.downgrade().recipient();
    let handle = bounded(
        RemoteWorker::connect_watched(&url, bridge_config(), watcher),
        "RemoteWorker::connect_watched did not return",
    )
    .await
    .expect("worker API reachable");
    bounded(
        manager.send(AddWorker {
            handle,
            address: Some(url),
        }),
        "manager did not answer AddWorker",
    )
    .await
    .unwrap()
    .expect("remote worker added");
    assert_eq!(nodes(&manager).await[0].status, NodeStatus::Ready);

    served.server.stop(false).await;

    wait_until(
        WAIT,
        "node never marked unreachable after its API stopped",
        || async { (nodes(&manager).await[0].status == NodeStatus::Unreachable).then_some(()) },
    )
    .await;
    // An unreachable node is skipped rather than scored as if it were empty.
    let task = submit(&manager, spec("a")).await;
    let pending = wait_for_task(&manager, task.id, "task should wait", |task| {
        task.pending_reason.is_some()
    })
    .await;
    assert_eq!(
        pending.pending_reason.as_deref(),
        Some("1 node evaluated: 1 is not ready")
    );

    let (_, server) = serve_worker(served.worker.clone(), served.address).await;

    wait_until(
        WAIT,
        "node never ready again after its API returned",
        || async { (nodes(&manager).await[0].status == NodeStatus::Ready).then_some(()) },
    )
    .await;
    wait_for_task(&manager, task.id, "waiting task never ran", |task| {
        task.state == TaskState::Running
    })
    .await;
    assert_eq!(served.runtime.running_count(), 1);
    server.stop(false).await;
}
