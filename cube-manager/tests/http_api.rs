//! The manager's HTTP API: status codes, error bodies naming the problem, and nothing stored
//! after a rejected request.

use std::net::SocketAddr;

use actix::prelude::*;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

use cube_core::resources::ByteSize;
use cube_core::spec::SpecLimits;
use cube_core::task::TaskState;
use cube_core::wire::{ErrorBody, NodeView, TaskView};
use cube_manager::http::{HttpConfig, serve};
use cube_manager::{Manager, ManagerConfig};

use crate::util::fake_worker::FakeOptions;
use crate::util::*;

/// A manager with its API on a free loopback port.
struct Api {
    manager: Addr<Manager>,
    base: String,
    client: Client,
    server: actix_web::dev::ServerHandle,
}

impl Api {
    async fn start() -> Api {
        Api::start_with(round_robin_config()).await
    }

    async fn start_with(config: ManagerConfig) -> Api {
        let manager = start_manager_with(config);
        let bind: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let config = HttpConfig {
            body_limit: 64 * 1024,
            ..HttpConfig::default()
        };
        let (server, address) = serve(manager.clone(), bind, config)
            .await
            .expect("bind a free loopback port");
        let handle = server.handle();
        actix::spawn(server);
        Api {
            manager,
            base: format!("http://{address}"),
            client: Client::builder().no_proxy().build().unwrap(),
            server: handle,
        }
    }

    async fn post_raw(&self, body: &str) -> (StatusCode, Value) {
        let request = self
            .client
            .post(format!("{}/tasks", self.base))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send();
        let response = bounded(request, "API did not answer POST /tasks")
            .await
            .expect("request sent");
        let status = response.status();
        (status, response.json().await.expect("JSON body"))
    }

    async fn post(&self, body: Value) -> (StatusCode, Value) {
        self.post_raw(&body.to_string()).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let request = self.client.get(format!("{}{path}", self.base)).send();
        let response = bounded(request, "API did not answer GET")
            .await
            .expect("request sent");
        let status = response.status();
        (status, response.json().await.expect("JSON body"))
    }

    async fn delete(&self, path: &str) -> (StatusCode, Value) {
        let request = self.client.delete(format!("{}{path}", self.base)).send();
        let response = bounded(request, "API did not answer DELETE")
            .await
            .expect("request sent");
        let status = response.status();
        (status, response.json().await.expect("JSON body"))
    }

    async fn assert_nothing_stored(&self) {
        let (status, tasks) = self.get("/tasks").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(tasks, json!([]), "a rejected request stored a task");
    }

    async fn stop(self) {
        self.server.stop(false).await;
    }
}

fn error_body(body: Value) -> ErrorBody {
    serde_json::from_value(body).expect("an ErrorBody")
}

fn valid_body() -> Value {
    json!({
        "name": "web",
        "image": "cube-test/busybox:latest",
        "pull_policy": "never",
        "memory": "16MiB",
        "ports": [{"container_port": 80}],
    })
}

#[actix::test]
async fn malformed_json_is_rejected() {
    let api = Api::start().await;

    let (status, body) = api.post_raw(r#"{"name": "web", "image": "#).await;

    assert_eq!(status, StatusCode::BAD_REQUEST);
    let error = error_body(body);
    assert!(error.error.contains("malformed JSON"), "{}", error.error);
    api.assert_nothing_stored().await;
    api.stop().await;
}

#[actix::test]
async fn unknown_field_is_named() {
    let api = Api::start().await;
    let mut body = valid_body();
    body["memroy"] = json!(1024);

    let (status, body) = api.post(body).await;

    assert_eq!(status, StatusCode::BAD_REQUEST);
    let error = error_body(body);
    assert_eq!(error.field.as_deref(), Some("memroy"));
    assert!(error.error.contains("unknown field"), "{}", error.error);
    api.assert_nothing_stored().await;
    api.stop().await;
}

#[actix::test]
async fn missing_image_is_named() {
    let api = Api::start().await;
    let (status, body) = api.post(json!({"name": "web"})).await;

    assert_eq!(status, StatusCode::BAD_REQUEST);
    let error = error_body(body);
    assert_eq!(error.field.as_deref(), Some("image"));
    assert!(error.error.contains("missing field"), "{}", error.error);
    api.assert_nothing_stored().await;
    api.stop().await;
}

#[actix::test]
async fn negative_memory_is_named() {
    let api = Api::start().await;
    let mut body = valid_body();
    body["memory"] = json!(-1);

    let (status, body) = api.post(body).await;

    assert_eq!(status, StatusCode::BAD_REQUEST);
    let error = error_body(body);
    assert_eq!(error.field.as_deref(), Some("memory"));
    assert!(error.error.contains("negative"), "{}", error.error);
    api.assert_nothing_stored().await;
    api.stop().await;
}

/// Limits small enough that each case's message shows the configured maximum.
const LIMITS: SpecLimits = SpecLimits {
    max_cpu: 8.0,
    max_memory: ByteSize::gib(2),
    max_disk: ByteSize::gib(3),
};

#[actix::test]
async fn out_of_range_values_name_field_and_range() {
    let api = Api::start_with(ManagerConfig {
        spec_limits: LIMITS,
        ..round_robin_config()
    })
    .await;
    let memory_range = "1 to 2147483648 bytes";
    let cpu_range = "at most 8";
    let cases = [
        ("memory", json!(-1), memory_range),
        ("memory", json!(0), memory_range),
        ("memory", json!(18446744073709551616_f64), memory_range),
        ("memory", json!("3GiB"), memory_range),
        ("cpu", json!(-0.5), cpu_range),
        ("cpu", json!(0), cpu_range),
        ("cpu", json!(1e30), cpu_range),
        ("cpu", json!(9), cpu_range),
        ("cpu", json!("two"), cpu_range),
        ("disk", json!(-1), "0 to 3221225472 bytes"),
        ("disk", json!("4GiB"), "0 to 3221225472 bytes"),
    ];
    for (field, value, range) in cases {
        let mut body = valid_body();
        body[field] = value.clone();

        let (status, body) = api.post(body).await;

        assert_eq!(status, StatusCode::BAD_REQUEST, "{field} = {value}");
        let error = error_body(body);
        assert_eq!(error.field.as_deref(), Some(field), "{value}");
        assert!(
            error.error.contains(range),
            "{field} = {value}: {}",
            error.error
        );
    }
    api.assert_nothing_stored().await;
    api.stop().await;
}

#[actix::test]
async fn repeated_host_port_is_named() {
    let api = Api::start().await;
    let mut body = valid_body();
    body["ports"] = json!([
        {"container_port": 80, "host_port": 18080},
        {"container_port": 81, "host_port": 18080},
    ]);

    let (status, body) = api.post(body).await;

    assert_eq!(status, StatusCode::BAD_REQUEST);
    let error = error_body(body);
    assert_eq!(error.field.as_deref(), Some("ports[1].host_port"));
    assert!(error.error.contains("18080"), "{}", error.error);
    api.assert_nothing_stored().await;
    api.stop().await;
}

#[actix::test]
async fn task_within_maximum_but_larger_than_nodes_stays_pending() {
    let api = Api::start_with(ManagerConfig {
        spec_limits: LIMITS,
        ..round_robin_config()
    })
    .await;
    let small = FakeOptions {
        capacity: cube_core::resources::Resources {
            cpu: 4.0,
            memory: ByteSize::mib(256),
            disk: ByteSize::gib(1),
        },
        ..FakeOptions::default()
    };
    add_fake(&api.manager, "w1", small).await;
    let mut body = valid_body();
    body["memory"] = json!("1GiB");

    let (status, created) = api.post(body).await;

    assert_eq!(status, StatusCode::CREATED);
    let id = created["id"].as_str().unwrap().to_owned();
    let task = wait_until(WAIT, "pending reason never appeared", || async {
        let (_, task) = api.get(&format!("/tasks/{id}")).await;
        task["pending_reason"].is_string().then_some(task)
    })
    .await;
    assert_eq!(task["state"], "pending");
    assert_eq!(task["pending_reason"], "1 node evaluated: 1 lacks memory");
    api.stop().await;
}

#[actix::test]
async fn oversized_body_is_rejected() {
    let api = Api::start().await;
    let mut body = valid_body();
    body["command"] = json!(vec!["x".repeat(1024); 100]);

    let (status, body) = api.post(body).await;

    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(error_body(body).error.contains("limit"));
    api.assert_nothing_stored().await;
    api.stop().await;
}

#[actix::test]
async fn unknown_and_invalid_task_ids_are_named() {
    let api = Api::start().await;
    let unknown = uuid::Uuid::new_v4();

    let (status, body) = api.get(&format!("/tasks/{unknown}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(error_body(body).error.contains(&unknown.to_string()));

    let (status, body) = api.delete(&format!("/tasks/{unknown}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(error_body(body).error.contains(&unknown.to_string()));

    let (status, body) = api.get("/tasks/not-a-uuid").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let error = error_body(body);
    assert_eq!(error.field.as_deref(), Some("id"));
    assert!(error.error.contains("not-a-uuid"), "{}", error.error);

    api.assert_nothing_stored().await;
    api.stop().await;
}

#[actix::test]
async fn submit_repeat_and_conflict_status_codes() {
    let api = Api::start().await;
    let id = uuid::Uuid::new_v4();
    let mut body = valid_body();
    body["id"] = json!(id);

    let (created, first) = api.post(body.clone()).await;
    let (repeated, second) = api.post(body.clone()).await;
    body["memory"] = json!("32MiB");
    let (conflict, error) = api.post(body).await;

    assert_eq!(created, StatusCode::CREATED);
    assert_eq!(repeated, StatusCode::OK);
    assert_eq!(first["id"], second["id"]);
    assert_eq!(first["created_at"], second["created_at"]);
    assert_eq!(conflict, StatusCode::CONFLICT);
    let error = error_body(error);
    assert_eq!(error.field.as_deref(), Some("id"));
    assert!(error.error.contains(&id.to_string()));
    let view: TaskView = serde_json::from_value(first).unwrap();
    assert_eq!(view.id.0, id);
    api.stop().await;
}

#[actix::test]
async fn stop_is_accepted_and_idempotent() {
    let api = Api::start().await;
    let (_, created) = api.post(valid_body()).await;
    let id = created["id"].as_str().unwrap().to_owned();

    let (first_status, first) = api.delete(&format!("/tasks/{id}")).await;
    let (second_status, second) = api.delete(&format!("/tasks/{id}")).await;

    assert_eq!(first_status, StatusCode::ACCEPTED);
    assert_eq!(second_status, StatusCode::ACCEPTED);
    let view: TaskView = serde_json::from_value(first).unwrap();
    assert_eq!(view.state, TaskState::Completed);
    assert_eq!(second["state"], "completed");
    let (_, tasks) = api.get("/tasks").await;
    assert_eq!(tasks.as_array().unwrap().len(), 1, "the record is kept");
    api.stop().await;
}

#[actix::test]
async fn nodes_show_capacity_allocation_and_free() {
    let api = Api::start().await;
    let (_, empty) = api.get("/nodes").await;
    assert_eq!(empty, json!([]));
    add_fake(&api.manager, "w1", FakeOptions::default()).await;
    let mut body = valid_body();
    body["cpu"] = json!(0.5);
    body["disk"] = json!("1GiB");
    let (_, created) = api.post(body).await;
    let id = created["id"].as_str().unwrap().to_owned();
    wait_until(WAIT, "task never left pending", || async {
        let (_, task) = api.get(&format!("/tasks/{id}")).await;
        (task["state"] == "scheduled").then_some(())
    })
    .await;

    let (status, body) = api.get("/nodes").await;

    assert_eq!(status, StatusCode::OK);
    let nodes: Vec<NodeView> = serde_json::from_value(body).unwrap();
    assert_eq!(nodes.len(), 1);
    let node = &nodes[0];
    assert_eq!(node.id.as_str(), "w1");
    assert_eq!(node.task_count, 1);
    assert_eq!(node.allocated.memory.bytes(), 16 * 1024 * 1024);
    assert_eq!(
        node.free.memory.bytes(),
        node.capacity.memory.bytes() - 16 * 1024 * 1024
    );
    assert_eq!(node.allocated.cpu, 0.5);
    assert_eq!(node.free.cpu, node.capacity.cpu - 0.5);
    assert_eq!(node.allocated.disk, ByteSize::gib(1));
    assert_eq!(
        node.free.disk.bytes(),
        node.capacity.disk.bytes() - (1 << 30)
    );

    // Stopping the task gives every resource back.
    api.delete(&format!("/tasks/{id}")).await;
    let node = wait_until(WAIT, "allocation never returned to zero", || async {
        let (_, body) = api.get("/nodes").await;
        let nodes: Vec<NodeView> = serde_json::from_value(body).ok()?;
        (nodes[0].task_count == 0).then(|| nodes[0].clone())
    })
    .await;
    assert_eq!(node.allocated, cube_core::resources::Resources::default());
    assert_eq!(node.free, node.capacity);
    api.stop().await;
}

#[actix::test]
async fn unknown_route_answers_json_404() {
    let api = Api::start().await;
    let (status, body) = api.get("/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(error_body(body).error.contains("/nope"));
    api.stop().await;
}
