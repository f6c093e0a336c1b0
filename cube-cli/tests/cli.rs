//! Drives the `cube` binary as separate manager and worker processes on loopback, against
//! the local Docker Engine.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::*;

fn task_json(manager: &str, id: &str) -> Value {
    cube_json(manager, &["status", id, "-o", "json"])
}

fn wait_for_state(manager: &str, id: &str, states: &[&str], timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let task = task_json(manager, id);
        if states.contains(&task["state"].as_str().unwrap_or("")) {
            return task;
        }
        assert!(
            Instant::now() < deadline,
            "task {id} did not reach {states:?} within {timeout:?}: {task:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Fetches `/` from `host:port`, retrying for a few seconds: "running" means the container
/// started, and the server inside may need a moment before it listens.
fn http_get(host: &str, port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match try_http_get(host, port) {
            Ok(response) if response.starts_with("HTTP/1.") => return response,
            Ok(response) => assert!(
                Instant::now() < deadline,
                "not an HTTP answer: {response:?}"
            ),
            Err(error) => assert!(
                Instant::now() < deadline,
                "GET {host}:{port} failed: {error}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn try_http_get(host: &str, port: u16) -> std::io::Result<String> {
    let mut stream = TcpStream::connect((host, port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET / HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

#[test]
fn docker_multi_process_web_task() {
    ensure_test_image();
    let run_id = unique_run_id("cli");
    let _cleanup = ContainerCleanup {
        run_id: run_id.clone(),
    };

    let name_one = format!("mp-{run_id}-1");
    let name_two = format!("mp-{run_id}-2");
    let (worker_one, address_one) = start_daemon(
        "worker",
        WORKER_MARKER,
        &["worker", "--port", "0", "--name", &name_one],
    );
    let (worker_two, address_two) = start_daemon(
        "worker",
        WORKER_MARKER,
        &["worker", "--port", "0", "--name", &name_two],
    );
    let (manager_guard, manager) = start_daemon(
        "manager",
        MANAGER_MARKER,
        &[
            "manager",
            "--port",
            "0",
            "--worker",
            &address_one,
            "--worker",
            &address_two,
        ],
    );
    eprintln!(
        "manager pid {} at {manager}; workers pids {} and {}",
        manager_guard.pid(),
        worker_one.pid(),
        worker_two.pid()
    );

    // The manager connects its workers after it starts listening.
    let deadline = Instant::now() + Duration::from_secs(30);
    let nodes = loop {
        let nodes: Value =
            serde_json::from_str(&cube_ok(&manager, &["node", "-o", "json"])).unwrap();
        let count = nodes.as_array().map_or(0, Vec::len);
        if count == 2 {
            break nodes;
        }
        assert!(
            Instant::now() < deadline,
            "manager did not register both workers: {nodes:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let node_ids: Vec<&str> = nodes
        .as_array()
        .expect("node -o json prints an array")
        .iter()
        .filter_map(|node| node["id"].as_str())
        .collect();
    assert!(node_ids.contains(&name_one.as_str()), "nodes: {nodes:#}");
    assert!(node_ids.contains(&name_two.as_str()), "nodes: {nodes:#}");
    assert!(
        cube_ok(&manager, &["node"]).contains(&name_one),
        "table lists the node"
    );

    let bad = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bad.path(), r#"{"name":"bad","image":"x","memory":-1}"#).unwrap();
    let rejected = cube(&manager, &["run", bad.path().to_str().unwrap()]);
    assert!(
        !rejected.status.success(),
        "a negative memory must be rejected"
    );
    let stderr = String::from_utf8_lossy(&rejected.stderr);
    assert!(stderr.contains("memory"), "error names the field: {stderr}");
    let listed: Value =
        serde_json::from_str(&cube_ok(&manager, &["status", "-o", "json"])).unwrap();
    assert_eq!(
        listed.as_array().map(Vec::len),
        Some(0),
        "nothing is stored: {listed:#}"
    );

    let spec = serde_json::json!({
        "name": "web",
        "image": "cube-test/busybox:latest",
        "pull_policy": "never",
        "command": ["httpd", "-f", "-p", "80", "-h", "/www"],
        "memory": "32MiB",
        "ports": [{ "container_port": 80 }],
        "stop_grace_period": "2s",
        "labels": { RUN_LABEL: run_id },
    });
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), spec.to_string()).unwrap();

    let submitted_at = Instant::now();
    let id = cube_ok(&manager, &["run", file.path().to_str().unwrap()])
        .trim()
        .to_owned();
    assert_eq!(id.len(), 36, "run prints the task id alone, got {id:?}");

    let task = wait_for_state(&manager, &id, &["running"], Duration::from_secs(60));
    eprintln!(
        "submit to running through separate processes: {:?}",
        submitted_at.elapsed()
    );
    for field in [
        "id",
        "name",
        "state",
        "desired_state",
        "node",
        "container_id",
        "host_ports",
    ] {
        assert!(
            task.get(field).is_some(),
            "status -o json lacks '{field}': {task:#}"
        );
    }
    let binding = &task["host_ports"][0];
    let host = binding["host_ip"].as_str().expect("host_ip is a string");
    let port = binding["host_port"]
        .as_u64()
        .expect("host_port is a number") as u16;
    assert_eq!(host, "127.0.0.1", "ports are published on loopback");
    let page = http_get(host, port);
    assert!(page.contains("hello from cube"), "unexpected page: {page}");

    let list: Value = serde_json::from_str(&cube_ok(&manager, &["status", "-o", "json"])).unwrap();
    assert!(
        list.as_array()
            .is_some_and(|tasks| tasks.iter().any(|t| t["id"] == id))
    );
    assert!(
        cube_ok(&manager, &["status"]).contains(&id),
        "table lists the task"
    );

    assert_eq!(cube_ok(&manager, &["stop", &id]).trim(), id);
    let stopped = wait_for_state(&manager, &id, &["completed"], Duration::from_secs(30));
    assert_eq!(stopped["desired_state"], "stopped");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !container_ids(&[format!("label=cube.task={id}")]).is_empty() {
        assert!(
            Instant::now() < deadline,
            "container of task {id} was not removed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn cli_reports_unreachable_manager() {
    // Port 9 (discard) on loopback is closed on these machines, so the connection is refused.
    let output = cube("127.0.0.1:9", &["status"]);
    assert!(
        !output.status.success(),
        "status against a closed port must fail"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("127.0.0.1:9"),
        "error names the address: {stderr}"
    );
    assert!(
        stderr.contains("CUBE_MANAGER"),
        "error says what to do: {stderr}"
    );
}

#[test]
fn cli_run_rejects_missing_file() {
    let output = cube("127.0.0.1:9", &["run", "/nonexistent/task.json"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("/nonexistent/task.json"),
        "error names the file: {stderr}"
    );
}

#[test]
fn cli_rejects_bad_manager_address() {
    let output = cube("not-an-address", &["status"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("not-an-address"),
        "error names the address: {stderr}"
    );
}
