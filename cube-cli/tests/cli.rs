//! Drives the `cube` binary as separate manager and worker processes on loopback, against
//! the local Docker Engine.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

const CUBE: &str = env!("CARGO_BIN_EXE_cube");
/// Log lines that carry the address a daemon bound.
const MANAGER_MARKER: &str = "manager listening on ";
const WORKER_MARKER: &str = "worker API listening on ";

/// A child process killed by PID and reaped when dropped.
struct ChildGuard {
    name: String,
    child: Child,
    /// The daemon's `XDG_DATA_HOME`, so that its default data directory is its own and is
    /// removed with it.
    _data_home: tempfile::TempDir,
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ChildGuard {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Starts `cube ARGS` and waits until it logs `marker` followed by the bound address, which
/// it returns.
fn start_daemon(role: &str, marker: &str, args: &[&str]) -> (ChildGuard, String) {
    let data_home = tempfile::tempdir().expect("failed to create a data home");
    let mut child = Command::new(CUBE)
        .args(args)
        .env("RUST_LOG", "info")
        .env("XDG_DATA_HOME", data_home.path())
        .env_remove("CUBE_MANAGER")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("failed to start cube {args:?}: {error}"));
    let stderr = child.stderr.take().expect("stderr is piped");
    let (sender, receiver) = mpsc::channel();
    let (label, pattern) = (role.to_owned(), marker.to_owned());
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[{label}] {line}");
            if !sent && let Some(at) = line.find(&pattern) {
                let address = line[at + pattern.len()..]
                    .split_whitespace()
                    .next()
                    .unwrap_or("");
                let _ = sender.send(address.to_owned());
                sent = true;
            }
        }
    });
    let guard = ChildGuard {
        name: role.to_owned(),
        child,
        _data_home: data_home,
    };
    let address = receiver
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("{} did not log '{marker}ADDR' within 30 s", guard.name));
    (guard, address)
}

fn cube(manager: &str, args: &[&str]) -> Output {
    Command::new(CUBE)
        .args(args)
        .env("CUBE_MANAGER", manager)
        .stdin(Stdio::null())
        .output()
        .expect("failed to run cube")
}

fn cube_ok(manager: &str, args: &[&str]) -> String {
    let output = cube(manager, args);
    assert!(
        output.status.success(),
        "cube {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("cube prints UTF-8")
}

fn task_json(manager: &str, id: &str) -> Value {
    serde_json::from_str(&cube_ok(manager, &["status", id, "-o", "json"]))
        .expect("status -o json prints JSON")
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

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crate has a parent")
        .to_owned()
}

fn ensure_test_image() {
    let status = Command::new(repo_root().join("scripts/build-test-image"))
        .status()
        .expect("failed to run scripts/build-test-image");
    assert!(
        status.success(),
        "scripts/build-test-image failed; start the Docker Engine and run it by hand to see why"
    );
}

/// Containers carrying the label `key=value`, from `docker ps -a`.
fn containers_with_label(key: &str, value: &str) -> Vec<String> {
    let output = Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label={key}={value}")])
        .output()
        .expect("failed to run docker ps");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Removes this run's containers when dropped, whatever the test's outcome.
struct ContainerCleanup {
    run_id: String,
}

impl Drop for ContainerCleanup {
    fn drop(&mut self) {
        let ids = containers_with_label(RUN_LABEL, &self.run_id);
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .arg("rm")
                .arg("-f")
                .args(&ids)
                .output();
        }
    }
}

const RUN_LABEL: &str = "cube-test-run";

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

fn unique_suffix() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos() % 1_000_000
    )
}

#[test]
fn docker_multi_process_web_task() {
    ensure_test_image();
    let run_id = format!("cli-{}", unique_suffix());
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
    while !containers_with_label("cube.task", &id).is_empty() {
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
