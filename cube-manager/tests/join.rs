//! Workers that join the manager by themselves through `POST /nodes`, the `GET /nodes/{id}`
//! membership check, and a worker process replaced behind the same address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde_json::{Value, json};

use cube_core::ids::NodeId;
use cube_core::node::{DeclaredCapacity, NodeStatus};
use cube_core::resources::ByteSize;
use cube_core::store::MemoryStore;
use cube_core::task::TaskState;
use cube_manager::Manager;
use cube_manager::http::{HttpConfig, serve as serve_manager};
use cube_worker::http::{HttpOptions, serve as serve_worker};
use cube_worker::join::{JoinConfig, Joiner, Membership};
use cube_worker::simulated::{SimulatedBehaviour, SimulatedRuntime};
use cube_worker::{Worker, WorkerConfig};

use crate::util::*;

/// A manager with its API on loopback.
struct Api {
    manager: Addr<Manager>,
    url: String,
    client: reqwest::Client,
    _server: actix_web::dev::ServerHandle,
}

async fn start_api() -> Api {
    let manager = start_manager();
    let (server, address) = serve_manager(
        manager.clone(),
        "127.0.0.1:0".parse().unwrap(),
        HttpConfig::default(),
    )
    .await
    .expect("bind the manager API on loopback");
    let handle = server.handle();
    actix::spawn(server);
    Api {
        manager,
        url: format!("http://{address}"),
        client: reqwest::Client::builder().no_proxy().build().unwrap(),
        _server: handle,
    }
}

impl Api {
    async fn post_node(&self, body: Value) -> (u16, Value) {
        let response = bounded(
            self.client
                .post(format!("{}/nodes", self.url))
                .json(&body)
                .send(),
            "POST /nodes did not answer",
        )
        .await
        .expect("manager API reachable");
        let status = response.status().as_u16();
        (status, response.json().await.expect("JSON body"))
    }

    async fn get_node(&self, id: &str) -> (u16, Value) {
        let response = bounded(
            self.client.get(format!("{}/nodes/{id}", self.url)).send(),
            "GET /nodes/{id} did not answer",
        )
        .await
        .expect("manager API reachable");
        let status = response.status().as_u16();
        (status, response.json().await.expect("JSON body"))
    }
}

fn worker_config(name: &str) -> WorkerConfig {
    let mut config = WorkerConfig::new(NodeId::new(name).unwrap());
    config.capacity = DeclaredCapacity {
        cpu: Some(2.0),
        memory: Some(ByteSize::gib(1)),
        disk: Some(ByteSize::gib(1)),
    };
    config.metrics_interval = None;
    config.heartbeat_interval = Duration::from_millis(200);
    config
}

/// Starts a simulated worker called `name` and serves its API on `bind`.
async fn served_worker(
    name: &str,
    bind: SocketAddr,
) -> (Addr<Worker>, SocketAddr, actix_web::dev::ServerHandle) {
    let runtime = Arc::new(SimulatedRuntime::new(
        SimulatedBehaviour::run_until_stopped(),
    ));
    let worker = Worker::start(worker_config(name), runtime, Box::new(MemoryStore::new()));
    let (server, address) = serve_worker(worker.clone(), bind, HttpOptions::default())
        .await
        .expect("bind the worker API on loopback");
    let handle = server.handle();
    actix::spawn(server);
    (worker, address, handle)
}

#[actix::test]
async fn join_adds_node_once() {
    let api = start_api().await;
    let (_worker, address, _server) = served_worker("joiner", "127.0.0.1:0".parse().unwrap()).await;
    let body = json!({ "address": format!("http://{address}") });

    let (status, view) = api.post_node(body.clone()).await;
    assert_eq!(status, 201, "{view}");
    assert_eq!(view["id"], "joiner");
    assert_eq!(view["status"], "ready");

    // The same address in another spelling is the same node.
    let (status, view) = api
        .post_node(json!({ "address": address.to_string() }))
        .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["id"], "joiner");
    assert_eq!(nodes(&api.manager).await.len(), 1);

    let (status, view) = api.get_node("joiner").await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["id"], "joiner");
}

#[actix::test]
async fn join_rejects_bad_bodies() {
    let api = start_api().await;
    let cases = [
        (json!({}), "address"),
        (json!({ "address": 5 }), "address"),
        (json!({ "address": "https://127.0.0.1:1" }), "address"),
        (json!({ "address": "" }), "address"),
        (
            json!({ "address": "http://127.0.0.1:1", "extra": true }),
            "extra",
        ),
    ];
    for (body, field) in cases {
        let (status, error) = api.post_node(body.clone()).await;
        assert_eq!(status, 400, "{body} -> {error}");
        assert_eq!(error["field"], field, "{body} -> {error}");
        assert!(error["error"].as_str().is_some_and(|text| !text.is_empty()));
    }
    assert!(nodes(&api.manager).await.is_empty());
}

#[actix::test]
async fn join_of_unreachable_worker_is_bad_gateway() {
    let api = start_api().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();

    let (status, error) = api
        .post_node(json!({ "address": format!("http://{closed}") }))
        .await;

    assert_eq!(status, 502, "{error}");
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .contains(&closed.to_string()),
        "{error}"
    );
    assert!(nodes(&api.manager).await.is_empty());
}

#[actix::test]
async fn unknown_node_is_not_found() {
    let api = start_api().await;
    let (status, error) = api.get_node("nobody").await;
    assert_eq!(status, 404, "{error}");
    assert_eq!(error["field"], "id");
}

#[actix::test]
async fn joiner_joins_and_sees_membership() {
    let api = start_api().await;
    let (_worker, address, _server) =
        served_worker("self-join", "127.0.0.1:0".parse().unwrap()).await;
    let config = JoinConfig::new(
        api.url.clone(),
        format!("http://{address}"),
        NodeId::new("self-join").unwrap(),
    );
    let joiner = Joiner::new(config).unwrap();
    assert_eq!(joiner.membership().await, Membership::Unknown);

    bounded(joiner.join_until_accepted(), "the join was never accepted").await;

    assert_eq!(joiner.membership().await, Membership::Known);
    let task = submit(&api.manager, spec("a")).await;
    wait_for_task(
        &api.manager,
        task.id,
        "task never ran on the joined node",
        |task| task.state == TaskState::Running,
    )
    .await;
}

#[actix::test]
async fn replaced_worker_process_keeps_reporting() {
    let api = start_api().await;
    let (first, address, server) = served_worker("replaced", "127.0.0.1:0".parse().unwrap()).await;
    let (status, view) = api
        .post_node(json!({ "address": format!("http://{address}") }))
        .await;
    assert_eq!(status, 201, "{view}");
    // Let the first process send a few heartbeats, so its stream has a position to resume.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A new worker process behind the same address, with an outbox of its own.
    server.stop(false).await;
    drop(first);
    let (_second, _, _server) = served_worker("replaced", address).await;
    let task = submit(&api.manager, spec("a")).await;

    let running = wait_for_task(
        &api.manager,
        task.id,
        "reports of the new process were dropped as already applied",
        |task| task.state == TaskState::Running,
    )
    .await;
    assert_eq!(running.node.as_ref().map(NodeId::as_str), Some("replaced"));
    let views = nodes(&api.manager).await;
    assert_eq!(views[0].status, NodeStatus::Ready);
}
