//! The worker's HTTP API against a worker on the simulated runtime, on 127.0.0.1:0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use actix_web::dev::ServerHandle;
use cube_core::wire::ErrorBody;
use cube_core::{
    HostMetrics, NodeDescription, ReportBody, STOPPED_BY_USER, TaskId, TaskState, WorkerReport,
    WorkerTask,
};
use cube_worker::http::{HttpOptions, serve};
use cube_worker::worker::GetOutboxStats;
use cube_worker::{SimulatedBehaviour, SimulatedRuntime, Worker, WorkerConfig};
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::support::{
    ReportProbe, WAIT, config, eventually, spec_with_port, start_msg, start_worker,
};

/// A worker with its API served on a free loopback port.
struct Api {
    base: String,
    client: reqwest::Client,
    worker: Addr<Worker>,
    runtime: SimulatedRuntime,
    server: ServerHandle,
}

impl Api {
    async fn start(config: WorkerConfig) -> Self {
        let runtime = SimulatedRuntime::new(SimulatedBehaviour::run_until_stopped());
        let worker = start_worker(config, Arc::new(runtime.clone()));
        let bind: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let (server, addr) = serve(worker.clone(), bind, HttpOptions::default())
            .await
            .expect("bind the worker API");
        assert!(addr.ip().is_loopback());
        assert_ne!(addr.port(), 0);
        let handle = server.handle();
        actix::spawn(server);
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(WAIT)
            .build()
            .unwrap();
        Self {
            base: format!("http://{addr}"),
            client,
            worker,
            runtime,
            server: handle,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn post_raw(&self, body: &str) -> reqwest::Response {
        self.client
            .post(self.url("/tasks"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    }

    async fn stop(self) {
        self.server.stop(false).await;
    }
}

async fn error_body(response: reqwest::Response) -> ErrorBody {
    response.json().await.expect("an ErrorBody")
}

#[actix::test]
async fn post_task_then_list_get_and_delete() {
    let api = Api::start(config("http-1")).await;
    let mut probe = ReportProbe::subscribe(&api.worker, 0);
    let start = start_msg(spec_with_port("img", 80));
    let task_id = start.task_id;

    let response = api
        .client
        .post(api.url("/tasks"))
        .json(&start)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    assert_eq!(response.json::<Value>().await.unwrap(), json!({}));
    probe.wait_status(task_id, TaskState::Running).await;

    let tasks: Vec<WorkerTask> = api
        .client
        .get(api.url("/tasks"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].task_id, task_id);

    let one = api
        .client
        .get(api.url(&format!("/tasks/{task_id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(one.status(), 200);
    let one: WorkerTask = one.json().await.unwrap();
    assert_eq!(one.state, TaskState::Running);
    assert_eq!(one.host_ports.len(), 1);

    let url = api.url(&format!("/tasks/{task_id}?attempt={}", start.attempt));
    let deleted = api.client.delete(url).send().await.unwrap();
    assert_eq!(deleted.status(), 202);
    assert_eq!(deleted.json::<Value>().await.unwrap(), json!({}));
    let completed = probe.wait_status(task_id, TaskState::Completed).await;
    assert_eq!(completed.reason, STOPPED_BY_USER);
    assert_eq!(api.runtime.container_count(), 0);
    api.stop().await;
}

#[actix::test]
async fn delete_uses_given_reason() {
    let api = Api::start(config("http-1")).await;
    let mut probe = ReportProbe::subscribe(&api.worker, 0);
    let start = start_msg(spec_with_port("img", 80));
    let task_id = start.task_id;
    api.client
        .post(api.url("/tasks"))
        .json(&start)
        .send()
        .await
        .unwrap();
    probe.wait_status(task_id, TaskState::Running).await;

    let url = api.url(&format!("/tasks/{task_id}?reason=node%20drained"));
    assert_eq!(api.client.delete(url).send().await.unwrap().status(), 202);
    let completed = probe.wait_status(task_id, TaskState::Completed).await;
    assert_eq!(completed.reason, "node drained");
    api.stop().await;
}

#[actix::test]
async fn empty_list_is_an_array() {
    let api = Api::start(config("http-1")).await;
    let response = api.client.get(api.url("/tasks")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap(), json!([]));
    api.stop().await;
}

#[actix::test]
async fn bad_bodies_get_400_naming_problem() {
    let api = Api::start(config("http-1")).await;

    let malformed = api.post_raw("{\"task_id\": ").await;
    assert_eq!(malformed.status(), 400);
    assert!(error_body(malformed).await.error.contains("malformed JSON"));

    let mut start = serde_json::to_value(start_msg(spec_with_port("img", 80))).unwrap();
    start["spec"]["memroy"] = json!(5);
    let unknown = api.post_raw(&start.to_string()).await;
    assert_eq!(unknown.status(), 400);
    let body = error_body(unknown).await;
    assert!(body.error.contains("memroy"), "{}", body.error);
    assert_eq!(body.field.as_deref(), Some("spec.memroy"));

    let mut start = serde_json::to_value(start_msg(spec_with_port("img", 80))).unwrap();
    start["spec"]["memory"] = json!(-1);
    let negative = api.post_raw(&start.to_string()).await;
    assert_eq!(negative.status(), 400);
    let body = error_body(negative).await;
    assert_eq!(body.field.as_deref(), Some("spec.memory"));
    assert!(body.error.contains("negative"), "{}", body.error);

    let mut start = serde_json::to_value(start_msg(spec_with_port("img", 80))).unwrap();
    start["task_id"] = json!("not-a-uuid");
    let bad_id = api.post_raw(&start.to_string()).await;
    assert_eq!(bad_id.status(), 400);
    assert_eq!(error_body(bad_id).await.field.as_deref(), Some("task_id"));

    let huge = format!("{{\"pad\":\"{}\"}}", "x".repeat(2 * 1024 * 1024));
    let too_large = api.post_raw(&huge).await;
    assert_eq!(too_large.status(), 413);

    let tasks = api.client.get(api.url("/tasks")).send().await.unwrap();
    assert_eq!(
        tasks.json::<Value>().await.unwrap(),
        json!([]),
        "nothing stored"
    );
    api.stop().await;
}

#[actix::test]
async fn rejected_spec_gets_409() {
    let api = Api::start(config("http-1")).await;
    let mut start = serde_json::to_value(start_msg(spec_with_port("img", 80))).unwrap();
    start["spec"]["restart_policy"] = json!({"mode": "always", "backoff": "0s"});
    let response = api.post_raw(&start.to_string()).await;
    assert_eq!(response.status(), 409);
    let body = error_body(response).await;
    assert!(
        body.error.contains("restart_policy.backoff"),
        "{}",
        body.error
    );
    api.stop().await;
}

#[actix::test]
async fn unknown_and_bad_ids() {
    let api = Api::start(config("http-1")).await;
    let unknown = TaskId::generate();

    let missing = api
        .client
        .get(api.url(&format!("/tasks/{unknown}")))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert!(
        error_body(missing)
            .await
            .error
            .contains(&unknown.to_string())
    );

    let bad = api.client.get(api.url("/tasks/nope")).send().await.unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(error_body(bad).await.field.as_deref(), Some("task_id"));

    let stop_unknown = api
        .client
        .delete(api.url(&format!("/tasks/{unknown}")))
        .send()
        .await
        .unwrap();
    assert_eq!(stop_unknown.status(), 202);

    let url = api.url(&format!("/tasks/{unknown}?attempt=xyz"));
    let bad_attempt = api.client.delete(url).send().await.unwrap();
    assert_eq!(bad_attempt.status(), 400);
    assert_eq!(
        error_body(bad_attempt).await.field.as_deref(),
        Some("attempt")
    );

    let no_route = api.client.get(api.url("/nothing")).send().await.unwrap();
    assert_eq!(no_route.status(), 404);
    assert!(error_body(no_route).await.error.contains("/nothing"));

    let wrong_method = api.client.put(api.url("/tasks")).send().await.unwrap();
    assert_eq!(wrong_method.status(), 405);
    api.stop().await;
}

#[actix::test]
async fn stats_and_node() {
    let api = Api::start(config("http-1")).await;
    let stats = api.client.get(api.url("/stats")).send().await.unwrap();
    assert_eq!(stats.status(), 503, "no sampling configured");
    assert!(error_body(stats).await.error.contains("no host metrics"));

    let node: NodeDescription = api
        .client
        .get(api.url("/node"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(node.id.as_str(), "http-1");
    assert_eq!(node.capacity.cpu, 4.0);
    api.stop().await;

    let mut sampled = config("http-2");
    sampled.metrics_interval = Some(Duration::from_millis(100));
    let api = Api::start(sampled).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let metrics: HostMetrics = loop {
        let response = api.client.get(api.url("/stats")).send().await.unwrap();
        if response.status() == 200 {
            break response.json().await.unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no sample within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(metrics.cpu_count >= 1);
    assert!(metrics.memory_total.bytes() > 0);
    api.stop().await;
}

/// Reads NDJSON lines from a streaming response.
struct LineReader {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>>>>,
    buffer: Vec<u8>,
}

impl LineReader {
    fn new(response: reqwest::Response) -> Self {
        Self {
            body: Box::pin(response.bytes_stream()),
            buffer: Vec::new(),
        }
    }

    async fn next_report(&mut self) -> WorkerReport {
        loop {
            if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                return serde_json::from_slice(&line).expect("a WorkerReport line");
            }
            let chunk = tokio::time::timeout(WAIT, self.body.next())
                .await
                .expect("a line within the wait")
                .expect("the stream stays open")
                .unwrap();
            self.buffer.extend_from_slice(&chunk);
        }
    }
}

#[actix::test]
async fn events_stream_replays_then_follows() {
    let api = Api::start(config("http-1")).await;
    let mut probe = ReportProbe::subscribe(&api.worker, 0);
    let first = start_msg(spec_with_port("img", 80));
    api.client
        .post(api.url("/tasks"))
        .json(&first)
        .send()
        .await
        .unwrap();
    probe.wait_status(first.task_id, TaskState::Running).await;

    let response = api
        .client
        .get(api.url("/events?after=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(content_type, "application/x-ndjson");
    let mut lines = LineReader::new(response);
    let replayed = lines.next_report().await;
    let stats = api.worker.send(GetOutboxStats).await.unwrap();
    assert_eq!(
        replayed.seq,
        stats.last_seq + 1 - stats.kept as u64,
        "replay starts at the oldest"
    );
    assert!(matches!(replayed.body, ReportBody::TaskStatus(ref s) if s.task_id == first.task_id));

    let second = start_msg(spec_with_port("img", 80));
    api.client
        .post(api.url("/tasks"))
        .json(&second)
        .send()
        .await
        .unwrap();
    let live = lines.next_report().await;
    assert_eq!(live.seq, replayed.seq + 1);
    assert!(matches!(live.body, ReportBody::TaskStatus(ref s) if s.task_id == second.task_id));

    let resumed = api
        .client
        .get(api.url(&format!("/events?after={}", replayed.seq)))
        .send()
        .await
        .unwrap();
    let mut resumed = LineReader::new(resumed);
    assert_eq!(resumed.next_report().await.seq, live.seq);

    let bad = api
        .client
        .get(api.url("/events?after=minus"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(error_body(bad).await.field.as_deref(), Some("after"));
    api.stop().await;
}

#[actix::test]
async fn events_disconnect_frees_subscriber() {
    let mut config = config("http-1");
    config.heartbeat_interval = Duration::from_millis(50);
    let api = Api::start(config).await;

    let response = api.client.get(api.url("/events")).send().await.unwrap();
    let mut lines = LineReader::new(response);
    let heartbeat = lines.next_report().await;
    assert!(
        matches!(heartbeat.body, ReportBody::Heartbeat(_)),
        "heartbeats reach the stream"
    );
    let open = api.worker.send(GetOutboxStats).await.unwrap();
    assert_eq!(open.streams, 1);

    drop(lines);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let stats = api.worker.send(GetOutboxStats).await.unwrap();
        if stats.streams == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stream still registered: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eventually("nothing runs", || api.runtime.running_count() == 0).await;
    api.stop().await;
}
