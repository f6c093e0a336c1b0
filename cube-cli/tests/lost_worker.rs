//! Drives `cube manager` and `cube worker --manager ADDR` as separate processes on loopback
//! against the local Docker Engine. Workers join by themselves. A worker killed with SIGKILL
//! has its task moved to the other worker, and once started again it keeps no container of
//! the old attempt.
//!
//! Containers carry the label `cube-test-run=<run id>` and are removed by that label when a
//! test ends; every child process is killed by PID when its guard drops. The daemons run in
//! a temporary directory, with `HOME` and `XDG_DATA_HOME` inside it, so whatever data they
//! keep stays out of the user's directories.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

const CUBE: &str = env!("CARGO_BIN_EXE_cube");
const MANAGER_MARKER: &str = "manager listening on ";
const WORKER_MARKER: &str = "worker API listening on ";
const RUN_LABEL: &str = "cube-test-run";
/// Liveness settings given to the manager.
const TTL: Duration = Duration::from_secs(1);
const GRACE: Duration = Duration::from_secs(1);
/// Slack on top of TTL + grace for the new container to start. It is generous because this
/// test checks the path, not its speed.
const SLACK: Duration = Duration::from_secs(20);

/// A child process killed by PID and reaped when dropped.
struct ChildGuard {
    child: Child,
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes this run's containers when dropped, whatever the test's outcome.
struct ContainerCleanup {
    run_id: String,
}

impl Drop for ContainerCleanup {
    fn drop(&mut self) {
        let ids = containers(&[format!("label={RUN_LABEL}={}", self.run_id)]);
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .arg("rm")
                .arg("-f")
                .args(&ids)
                .output();
        }
    }
}

/// Starts `cube ARGS` in `dir` and returns it with the address it logs after `marker`.
fn start_daemon(role: &str, marker: &str, dir: &Path, args: &[&str]) -> (ChildGuard, String) {
    let mut child = Command::new(CUBE)
        .args(args)
        .current_dir(dir)
        .env("HOME", dir)
        .env("XDG_DATA_HOME", dir.join("data"))
        .env("RUST_LOG", "info")
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
                let rest = &line[at + pattern.len()..];
                let _ = sender.send(rest.split_whitespace().next().unwrap_or("").to_owned());
                sent = true;
            }
        }
    });
    let guard = ChildGuard { child };
    let address = receiver
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("{role} did not log '{marker}ADDR' within 30 s"));
    (guard, address)
}

fn start_worker(dir: &Path, name: &str, port: u16, manager: &str, publish: &str) -> ChildGuard {
    let port = port.to_string();
    let args = [
        "worker",
        "--port",
        &port,
        "--name",
        name,
        "--manager",
        manager,
        "--heartbeat-interval",
        "200ms",
        "--publish-address",
        publish,
    ];
    start_daemon(name, WORKER_MARKER, dir, &args).0
}

fn cube_json(manager: &str, args: &[&str]) -> Value {
    serde_json::from_str(&cube_ok(manager, args)).expect("cube prints JSON")
}

fn cube_ok(manager: &str, args: &[&str]) -> String {
    let output = Command::new(CUBE)
        .args(args)
        .env("CUBE_MANAGER", manager)
        .stdin(Stdio::null())
        .output()
        .expect("failed to run cube");
    assert!(
        output.status.success(),
        "cube {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("cube prints UTF-8")
}

/// Waits until `check` returns `Some`, every 100 ms; panics with `cause` after `limit`.
fn wait_until<T>(limit: Duration, cause: &str, mut check: impl FnMut() -> Option<T>) -> T {
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

fn node_names(manager: &str) -> Vec<String> {
    let nodes = cube_json(manager, &["node", "-o", "json"]);
    nodes
        .as_array()
        .expect("node -o json prints an array")
        .iter()
        .filter_map(|node| node["id"].as_str().map(str::to_owned))
        .collect()
}

fn node_status(manager: &str, name: &str) -> Option<String> {
    let nodes = cube_json(manager, &["node", "-o", "json"]);
    nodes
        .as_array()?
        .iter()
        .find(|node| node["id"] == name)
        .and_then(|node| node["status"].as_str().map(str::to_owned))
}

/// Ids of containers matching every `filters` entry, running or not.
fn containers(filters: &[String]) -> Vec<String> {
    let mut command = Command::new("docker");
    command.args(["ps", "-aq"]);
    for filter in filters {
        command.args(["--filter", filter]);
    }
    let output = command.output().expect("failed to run docker ps");
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn ensure_test_image() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-test-image");
    let status = Command::new(script)
        .status()
        .expect("failed to run scripts/build-test-image");
    assert!(
        status.success(),
        "scripts/build-test-image failed; start the Docker Engine and run it by hand to see why"
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind a loopback port")
        .port()
}

fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.subsec_nanos());
    format!("lost-{}-{nanos}", std::process::id())
}

fn temp_dir(run_id: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cube-{run_id}"));
    std::fs::create_dir_all(dir.join("data")).expect("create the test directory");
    dir
}

fn write_spec(dir: &Path, run_id: &str) -> PathBuf {
    let spec = serde_json::json!({
        "name": "sleeper",
        "image": "cube-test/busybox:latest",
        "pull_policy": "never",
        "command": ["sleep", "600"],
        "memory": 16 * 1024 * 1024,
        "stop_grace_period": "1s",
        "labels": { RUN_LABEL: run_id },
    });
    let path = dir.join("sleeper.json");
    std::fs::write(&path, spec.to_string()).expect("write the task file");
    path
}

#[test]
fn docker_worker_joins_by_itself() {
    let run_id = run_id();
    let dir = temp_dir(&run_id);
    let (_manager, manager) =
        start_daemon("manager", MANAGER_MARKER, &dir, &["manager", "--port", "0"]);
    let name = format!("join-{run_id}");
    let _worker = start_worker(&dir, &name, 0, &manager, "127.0.0.1");

    wait_until(
        Duration::from_secs(20),
        "the worker never appeared in `cube node`",
        || node_names(&manager).contains(&name).then_some(()),
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn docker_killed_worker_task_moves() {
    ensure_test_image();
    let run_id = run_id();
    let _cleanup = ContainerCleanup {
        run_id: run_id.clone(),
    };
    let dir = temp_dir(&run_id);
    let ttl = format!("{}ms", TTL.as_millis());
    let grace = format!("{}ms", GRACE.as_millis());
    let (_manager, manager) = start_daemon(
        "manager",
        MANAGER_MARKER,
        &dir,
        &[
            "manager",
            "--port",
            "0",
            "--heartbeat-ttl",
            &ttl,
            "--heartbeat-grace",
            &grace,
        ],
    );
    let (name_a, name_b) = (format!("a-{run_id}"), format!("b-{run_id}"));
    let port_a = free_port();
    let worker_a = start_worker(&dir, &name_a, port_a, &manager, "127.0.0.1");
    wait_until(Duration::from_secs(20), "worker A never joined", || {
        node_names(&manager).contains(&name_a).then_some(())
    });

    // With A the only node, the task lands on A.
    let spec = write_spec(&dir, &run_id);
    let id = cube_ok(&manager, &["run", spec.to_str().unwrap()])
        .trim()
        .to_owned();
    let on_a = wait_until(Duration::from_secs(30), "task never ran on A", || {
        let task = cube_json(&manager, &["status", &id, "-o", "json"]);
        (task["state"] == "running").then_some(task)
    });
    assert_eq!(on_a["node"], name_a.as_str());
    let _worker_b = start_worker(&dir, &name_b, 0, &manager, "127.0.0.2");
    wait_until(Duration::from_secs(20), "worker B never joined", || {
        node_names(&manager).contains(&name_b).then_some(())
    });

    drop(worker_a);
    let killed = Instant::now();
    let on_b = wait_until(TTL + GRACE + SLACK, "task never ran on B", || {
        let task = cube_json(&manager, &["status", &id, "-o", "json"]);
        (task["state"] == "running" && task["node"] == name_b.as_str()).then_some(task)
    });
    eprintln!("task ran on B {:?} after A was killed", killed.elapsed());
    assert_ne!(
        on_b["attempt"], on_a["attempt"],
        "a replacement is a new attempt"
    );

    // A comes back with the same name and port; its container of the old attempt goes.
    let _worker_a = start_worker(&dir, &name_a, port_a, &manager, "127.0.0.1");
    let task_filter = format!("label=cube.task={id}");
    wait_until(
        Duration::from_secs(30),
        "A's stale container was not removed",
        || {
            let on_node_a = containers(&[task_filter.clone(), format!("label=cube.node={name_a}")]);
            on_node_a.is_empty().then_some(())
        },
    );
    let remaining = containers(&[task_filter.clone(), "status=running".to_owned()]);
    assert_eq!(remaining.len(), 1, "exactly one container of the task runs");
    assert_eq!(
        containers(&[task_filter]).len(),
        1,
        "no other container of it is left"
    );
    wait_until(
        Duration::from_secs(30),
        "A never became ready again",
        || (node_status(&manager, &name_a).as_deref() == Some("ready")).then_some(()),
    );
    let task = cube_json(&manager, &["status", &id, "-o", "json"]);
    assert_eq!(task["state"], "running");
    assert_eq!(task["node"], name_b.as_str());
    let _ = std::fs::remove_dir_all(&dir);
}
