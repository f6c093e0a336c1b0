//! Host ports held by processes outside cube: a worker rejects the start, the manager books
//! the port as taken on that node and places the task again.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};

use cube_core::node::DeclaredCapacity;
use cube_core::task::TaskState;
use cube_manager::cluster::{ClusterBuilder, WorkerOptions};
use cube_manager::{ManagerConfig, PortRange};
use cube_worker::simulated::SimulatedBehaviour;

use crate::util::*;

/// A loopback address no other test publishes on, so the held port is this test's own.
const ADDRESS: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 31);

#[actix::test]
async fn held_dynamic_port_is_skipped() {
    init_logging();
    // Hold the first port of a small dynamic range, as an unrelated process would.
    let listener = TcpListener::bind(SocketAddr::new(IpAddr::V4(ADDRESS), 0)).unwrap();
    let held = listener.local_addr().unwrap().port();
    let config = ManagerConfig {
        scheduler: "roundrobin".to_owned(),
        dynamic_ports: PortRange {
            first: held,
            last: held.saturating_add(5),
        },
        ..ManagerConfig::default()
    };
    let cluster = bounded(
        ClusterBuilder::new()
            .manager_config(config)
            .simulated(SimulatedBehaviour::run_until_stopped())
            .worker_with(WorkerOptions {
                name: "ports-1".to_owned(),
                capacity: DeclaredCapacity::default(),
                publish_address: Some(IpAddr::V4(ADDRESS)),
            })
            .start(),
        "cluster did not start",
    )
    .await
    .expect("cluster starts");

    let mut dynamic = spec("dynamic");
    dynamic.ports = vec![port(80, None)];
    let task = submit(&cluster.manager, dynamic).await;
    let running = wait_for_task(&cluster.manager, task.id, "task did not run", |task| {
        task.state == TaskState::Running
    })
    .await;
    let bound = running.host_ports[0].host_port;
    assert_ne!(bound, held, "the held port must not be handed out");
    assert!(
        bound > held && bound <= held + 5,
        "port {bound} comes from the range"
    );

    let mut fixed = spec("fixed");
    fixed.ports = vec![port(80, Some(held))];
    let task = submit(&cluster.manager, fixed).await;
    let pending = wait_for_task(&cluster.manager, task.id, "task did not wait", |task| {
        task.state == TaskState::Pending
            && task
                .pending_reason
                .as_deref()
                .is_some_and(|reason| reason.contains(&format!("port {held} in use")))
    })
    .await;
    assert_eq!(pending.node, None);
    drop(listener);
}
