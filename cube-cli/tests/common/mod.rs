//! Helpers for tests that drive the `cube` binary as separate processes. They provide child
//! guards that kill by PID, daemons started with their bound address read from the log, the
//! CLI's client commands, a small HTTP client for the manager's API, and Docker queries by
//! label.
//!
//! Every daemon started here gets a temporary `XDG_DATA_HOME` of its own, so that its default
//! data directory is never under the real home and no two daemons share one. A test that
//! restarts a daemon over its old state passes `--data-dir`.

#![allow(dead_code)] // Each test binary uses a different part of these helpers.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const CUBE: &str = env!("CARGO_BIN_EXE_cube");
/// Log lines that carry the address a daemon bound.
pub const MANAGER_MARKER: &str = "manager listening on ";
pub const WORKER_MARKER: &str = "worker API listening on ";
/// Label on every container of a test run; keys starting with `cube.` are cube's own.
pub const RUN_LABEL: &str = "cube-test-run";

// === daemons ===

/// A child process killed by PID and reaped when dropped.
pub struct ChildGuard {
    pub name: String,
    child: Child,
    /// The daemon's `XDG_DATA_HOME`, removed after the daemon is reaped.
    _data_home: tempfile::TempDir,
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ChildGuard {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGKILL, as `kill -9` does, and reaps the process.
    pub fn kill_hard(mut self) {
        self.child.kill().expect("failed to send SIGKILL");
        let status = self.child.wait().expect("failed to reap the child");
        eprintln!("[{}] killed with SIGKILL: {status}", self.name);
    }
}

/// Builds the command that runs `cube ARGS` as a daemon with `data_home` as its
/// `XDG_DATA_HOME`, its stderr piped and no `CUBE_MANAGER` inherited from the environment.
fn daemon_command(args: &[&str], data_home: &Path) -> Command {
    let mut command = Command::new(CUBE);
    command
        .args(args)
        .env("RUST_LOG", "info")
        .env("XDG_DATA_HOME", data_home)
        .env_remove("CUBE_MANAGER")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// Starts `cube ARGS` and waits until it logs `marker` followed by the bound address, which
/// it returns.
pub fn start_daemon(role: &str, marker: &str, args: &[&str]) -> (ChildGuard, String) {
    let data_home = tempfile::tempdir().expect("failed to create a data home");
    let mut child = daemon_command(args, data_home.path())
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

/// Runs `cube ARGS` that is expected to exit by itself within `timeout`; returns its exit
/// success and its stderr.
pub fn run_until_exit(args: &[&str], timeout: Duration) -> (bool, String) {
    let data_home = tempfile::tempdir().expect("failed to create a data home");
    let mut child = daemon_command(args, data_home.path())
        .spawn()
        .unwrap_or_else(|error| panic!("failed to start cube {args:?}: {error}"));
    let stderr = child.stderr.take().expect("stderr is piped");
    let reader = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("failed to poll the child") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cube {args:?} did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status.success(), reader.join().unwrap_or_default())
}

// === the CLI's client commands ===

/// Runs the client command `cube ARGS` against `manager`.
pub fn cube(manager: &str, args: &[&str]) -> Output {
    Command::new(CUBE)
        .args(args)
        .env("CUBE_MANAGER", manager)
        .stdin(Stdio::null())
        .output()
        .expect("failed to run cube")
}

/// Runs `cube ARGS` against `manager`, fails the test unless it succeeds, and returns its
/// stdout.
pub fn cube_ok(manager: &str, args: &[&str]) -> String {
    let output = cube(manager, args);
    assert!(
        output.status.success(),
        "cube {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("cube prints UTF-8")
}

/// Runs `cube ARGS` against `manager` and parses its stdout as JSON.
pub fn cube_json(manager: &str, args: &[&str]) -> Value {
    serde_json::from_str(&cube_ok(manager, args)).expect("cube prints JSON")
}

// === setup ===

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crate has a parent")
        .to_owned()
}

pub fn ensure_test_image() {
    let status = Command::new(repo_root().join("scripts/build-test-image"))
        .status()
        .expect("failed to run scripts/build-test-image");
    assert!(
        status.success(),
        "scripts/build-test-image failed; start the Docker Engine and run it by hand to see why"
    );
}

pub fn unique_run_id(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// A loopback port that was free a moment ago, for a daemon that must come back on the same
/// port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("failed to bind a loopback port")
        .port()
}

/// Calls `check` every 100 ms until it returns `Some`, and returns that value. Fails the test
/// with `cause` after `limit`.
pub fn wait_until<T>(limit: Duration, cause: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?}: {cause}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

// === Docker ===

/// One container of `docker ps`, with the labels the tests look at.
#[derive(Debug, Clone)]
pub struct DockerContainer {
    pub id: String,
    pub task: String,
    pub running: bool,
}

/// Every container carrying `RUN_LABEL=run_id`, running or not.
pub fn run_containers(run_id: &str) -> Vec<DockerContainer> {
    let output = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--no-trunc",
            "--filter",
            &format!("label={RUN_LABEL}={run_id}"),
            "--format",
            "{{.ID}} {{.State}} {{.Label \"cube.task\"}}",
        ])
        .output()
        .expect("failed to run docker ps");
    assert!(
        output.status.success(),
        "docker ps failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let id = parts.next()?.to_owned();
            let state = parts.next()?.to_owned();
            let task = parts.next().unwrap_or("").to_owned();
            Some(DockerContainer {
                id,
                task,
                running: state == "running",
            })
        })
        .collect()
}

/// Running containers of the run, grouped by their `cube.task` label.
pub fn running_by_task(run_id: &str) -> BTreeMap<String, Vec<String>> {
    let mut by_task: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for container in run_containers(run_id).into_iter().filter(|c| c.running) {
        by_task
            .entry(container.task)
            .or_default()
            .push(container.id);
    }
    by_task
}

/// Runs `docker ARGS` and returns its stdout, failing the test when it fails.
pub fn docker(args: &[&str]) -> String {
    let output = Command::new("docker")
        .args(args)
        .output()
        .expect("failed to run docker");
    assert!(
        output.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Lists the ids of the containers that match every `docker ps` filter in `filters`, running
/// or not. The list is empty when `docker ps` fails.
pub fn container_ids(filters: &[String]) -> Vec<String> {
    let mut command = Command::new("docker");
    command.args(["ps", "-aq"]);
    for filter in filters {
        command.args(["--filter", filter]);
    }
    let Ok(output) = command.output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Removes this run's containers when dropped, whatever the test's outcome.
pub struct ContainerCleanup {
    pub run_id: String,
}

impl Drop for ContainerCleanup {
    fn drop(&mut self) {
        // `container_ids` does not panic, because a panic while a failed test unwinds would
        // abort the test binary.
        let ids = container_ids(&[format!("label={RUN_LABEL}={}", self.run_id)]);
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .arg("rm")
                .arg("-f")
                .args(&ids)
                .output();
        }
    }
}

// === the manager's API ===

/// A blocking client of the manager's API, on a runtime of its own.
pub struct Api {
    pub base: String,
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
}

impl Api {
    pub fn new(address: &str) -> Self {
        Self {
            base: format!("http://{address}"),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            client: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        }
    }

    pub fn get(&self, path: &str) -> Value {
        let url = format!("{}{path}", self.base);
        self.runtime.block_on(async {
            let response = self.client.get(&url).send().await.expect("GET failed");
            assert!(
                response.status().is_success(),
                "GET {url}: {}",
                response.status()
            );
            response.json().await.expect("GET returns JSON")
        })
    }

    pub fn tasks(&self) -> Vec<Value> {
        self.get("/tasks").as_array().cloned().unwrap_or_default()
    }

    pub fn task(&self, id: &str) -> Value {
        self.get(&format!("/tasks/{id}"))
    }

    /// Submits `spec` and returns the status with the body.
    pub fn submit(&self, spec: &Value) -> (u16, Value) {
        let url = format!("{}/tasks", self.base);
        self.runtime.block_on(async {
            let response = self
                .client
                .post(&url)
                .json(spec)
                .send()
                .await
                .expect("POST failed");
            let status = response.status().as_u16();
            (status, response.json().await.unwrap_or(Value::Null))
        })
    }

    /// Polls `GET /nodes` until `count` nodes are listed as ready.
    pub fn wait_for_ready_nodes(&self, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let nodes = self.get("/nodes");
            let ready = nodes.as_array().map_or(0, |nodes| {
                nodes.iter().filter(|n| n["status"] == "ready").count()
            });
            if ready >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{count} nodes were not ready within {timeout:?}: {nodes:#}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Polls task `id` until `check` holds, returning it.
    pub fn wait_for_task(
        &self,
        id: &str,
        what: &str,
        timeout: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let task = self.task(id);
            if check(&task) {
                return task;
            }
            assert!(
                Instant::now() < deadline,
                "task {id} did not become {what} within {timeout:?}: {task:#}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A task spec of a busybox `sleep`, labelled with the run id.
pub fn sleep_spec(run_id: &str, name: &str, memory: &str) -> Value {
    serde_json::json!({
        "name": name,
        "image": "cube-test/busybox:latest",
        "pull_policy": "never",
        "command": ["sleep", "600"],
        "memory": memory,
        "cpu": 0.1,
        "stop_grace_period": "1s",
        "labels": { RUN_LABEL: run_id },
    })
}
