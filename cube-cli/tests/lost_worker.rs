//! Drives `cube manager` and `cube worker --manager ADDR` as separate processes on loopback
//! against the local Docker Engine. Workers join by themselves. A worker killed with SIGKILL
//! has its task moved to the other worker, and once started again it keeps no container of
//! the old attempt.
//!
//! Containers carry the label `cube-test-run=<run id>` and are removed by that label when a
//! test ends. Every child process is killed by PID when its guard drops. Each daemon gets a
//! temporary `XDG_DATA_HOME` of its own, and each worker keeps its store in the test's
//! temporary directory, so that a worker started again under the same name reopens it.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// Liveness settings given to the manager.
const TTL: Duration = Duration::from_secs(1);
const GRACE: Duration = Duration::from_secs(1);
/// Slack on top of TTL + grace for the new container to start. It is generous because this
/// test checks the path, not its speed.
const SLACK: Duration = Duration::from_secs(20);

/// Starts a worker named `name` on `port` (0 picks one) that joins `manager` and publishes
/// task ports on `publish`. Its store is `dir/worker-<name>`, so a worker started again under
/// the same name reopens the store of the one before.
fn start_worker(dir: &Path, name: &str, port: u16, manager: &str, publish: &str) -> ChildGuard {
    let port = port.to_string();
    let data_dir = dir.join(format!("worker-{name}"));
    let data_dir = data_dir.to_str().expect("the test directory is UTF-8");
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
        "--data-dir",
        data_dir,
    ];
    start_daemon(name, WORKER_MARKER, &args).0
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

fn write_spec(dir: &Path, run_id: &str) -> PathBuf {
    let spec = sleep_spec(run_id, "sleeper", "16MiB");
    let path = dir.join("sleeper.json");
    std::fs::write(&path, spec.to_string()).expect("write the task file");
    path
}

#[test]
fn docker_worker_joins_by_itself() {
    let run_id = unique_run_id("lost");
    let test_dir = tempfile::tempdir().expect("failed to create the test directory");
    let dir = test_dir.path();
    let (_manager, manager) = start_daemon("manager", MANAGER_MARKER, &["manager", "--port", "0"]);
    let name = format!("join-{run_id}");
    let _worker = start_worker(dir, &name, 0, &manager, "127.0.0.1");

    wait_until(
        Duration::from_secs(20),
        "the worker never appeared in `cube node`",
        || node_names(&manager).contains(&name).then_some(()),
    );
}

#[test]
fn docker_killed_worker_task_moves() {
    ensure_test_image();
    let run_id = unique_run_id("lost");
    let _cleanup = ContainerCleanup {
        run_id: run_id.clone(),
    };
    let test_dir = tempfile::tempdir().expect("failed to create the test directory");
    let dir = test_dir.path();
    let ttl = format!("{}ms", TTL.as_millis());
    let grace = format!("{}ms", GRACE.as_millis());
    let (_manager, manager) = start_daemon(
        "manager",
        MANAGER_MARKER,
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
    let worker_a = start_worker(dir, &name_a, port_a, &manager, "127.0.0.1");
    wait_until(Duration::from_secs(20), "worker A never joined", || {
        node_names(&manager).contains(&name_a).then_some(())
    });

    // With A the only node, the task lands on A.
    let spec = write_spec(dir, &run_id);
    let id = cube_ok(&manager, &["run", spec.to_str().unwrap()])
        .trim()
        .to_owned();
    let on_a = wait_until(Duration::from_secs(30), "task never ran on A", || {
        let task = cube_json(&manager, &["status", &id, "-o", "json"]);
        (task["state"] == "running").then_some(task)
    });
    assert_eq!(on_a["node"], name_a.as_str());
    let _worker_b = start_worker(dir, &name_b, 0, &manager, "127.0.0.2");
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
    let _worker_a = start_worker(dir, &name_a, port_a, &manager, "127.0.0.1");
    let task_filter = format!("label=cube.task={id}");
    wait_until(
        Duration::from_secs(30),
        "A's stale container was not removed",
        || {
            let on_node_a =
                container_ids(&[task_filter.clone(), format!("label=cube.node={name_a}")]);
            on_node_a.is_empty().then_some(())
        },
    );
    let remaining = container_ids(&[task_filter.clone(), "status=running".to_owned()]);
    assert_eq!(remaining.len(), 1, "exactly one container of the task runs");
    assert_eq!(
        container_ids(&[task_filter]).len(),
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
}
