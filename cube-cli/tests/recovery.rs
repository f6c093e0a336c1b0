//! Recovery of the real daemons after `kill -9`: a manager killed during a burst of
//! submissions, a manager restarted under running tasks, a worker restarted over its
//! containers, and a data directory that a second manager must not open.
//!
//! Each test runs `cube manager` and `cube worker` as separate processes on loopback, with
//! persistent stores in a temporary directory, against the local Docker Engine. Containers
//! are busybox `sleep`s labelled with the test's run id and removed by that label at the end.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::*;

/// Memory each test task requests; the workers declare room for ten of them each.
const TASK_MEMORY: &str = "16MiB";
const WORKER_MEMORY: &str = "160MiB";

/// Starts a worker named `name` with its store in `dir`, on `port` (0 picks one).
fn start_worker(name: &str, dir: &std::path::Path, port: u16) -> (ChildGuard, String) {
    let port = port.to_string();
    start_daemon(
        name,
        WORKER_MARKER,
        &[
            "worker",
            "--port",
            &port,
            "--name",
            name,
            "--data-dir",
            dir.to_str().unwrap(),
            "--memory",
            WORKER_MEMORY,
            "--cpus",
            "8",
        ],
    )
}

/// Starts a manager with its store in `dir` that connects `workers`.
fn start_manager(dir: &std::path::Path, workers: &[&str]) -> (ChildGuard, String) {
    let mut args = vec![
        "manager",
        "--port",
        "0",
        "--data-dir",
        dir.to_str().unwrap(),
    ];
    for worker in workers {
        args.push("--worker");
        args.push(worker);
    }
    start_daemon("manager", MANAGER_MARKER, &args)
}

fn port_of(address: &str) -> u16 {
    address
        .rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("no port in address {address}"))
}

fn str_field<'a>(task: &'a Value, field: &str) -> &'a str {
    task[field].as_str().unwrap_or("")
}

/// Waits until every running task of the manager has exactly its container running, and
/// no scheduled task is left; returns the tasks.
fn wait_until_settled(api: &Api, run_id: &str, timeout: Duration) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let tasks = api.tasks();
        let scheduled = tasks.iter().filter(|t| t["state"] == "scheduled").count();
        let running: BTreeMap<String, String> = tasks
            .iter()
            .filter(|t| t["state"] == "running")
            .map(|t| {
                (
                    str_field(t, "id").to_owned(),
                    str_field(t, "container_id").to_owned(),
                )
            })
            .collect();
        let containers = running_by_task(run_id);
        let matches = running.iter().all(|(task, container)| {
            containers
                .get(task)
                .is_some_and(|ids| ids == &vec![container.clone()])
        });
        if scheduled == 0 && matches && containers.len() == running.len() {
            return tasks;
        }
        assert!(
            Instant::now() < deadline,
            "cluster did not settle within {timeout:?}: {scheduled} scheduled, running {running:?}, \
             containers {containers:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn docker_killed_manager_keeps_acknowledged_tasks() {
    ensure_test_image();
    let run_id = unique_run_id("kill-manager");
    let _cleanup = ContainerCleanup {
        run_id: run_id.clone(),
    };
    let data = tempfile::tempdir().unwrap();
    let name_one = format!("{run_id}-w1");
    let name_two = format!("{run_id}-w2");
    let (_worker_one, address_one) = start_worker(&name_one, &data.path().join("w1"), 0);
    let (_worker_two, address_two) = start_worker(&name_two, &data.path().join("w2"), 0);
    let manager_dir = data.path().join("manager");
    let (manager, address) = start_manager(&manager_dir, &[&address_one, &address_two]);
    Api::new(&address).wait_for_ready_nodes(2, Duration::from_secs(30));

    // A client thread submits 1,000 tasks with client-chosen ids, eight at a time, and
    // records every id that got a 201; the manager is killed in the middle of it.
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let done = Arc::new(AtomicBool::new(false));
    let client = {
        let (acknowledged, done, run_id, address) = (
            acknowledged.clone(),
            done.clone(),
            run_id.clone(),
            address.clone(),
        );
        std::thread::spawn(move || submit_many(&address, &run_id, 1_000, &acknowledged, &done))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while acknowledged.lock().unwrap().len() < 300 && !done.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "300 submissions took over 60 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    manager.kill_hard();
    let attempted = client.join().expect("client thread panicked");
    let acknowledged = acknowledged.lock().unwrap().clone();
    eprintln!(
        "{} of {attempted} submissions acknowledged before the kill",
        acknowledged.len()
    );
    assert!(acknowledged.len() >= 300);

    let (_manager, address) = start_manager(&manager_dir, &[&address_one, &address_two]);
    let api = Api::new(&address);
    api.wait_for_ready_nodes(2, Duration::from_secs(30));
    let tasks = wait_until_settled(&api, &run_id, Duration::from_secs(90));

    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for task in &tasks {
        *counts.entry(str_field(task, "id")).or_default() += 1;
    }
    for id in &acknowledged {
        assert_eq!(
            counts.get(id.as_str()),
            Some(&1),
            "task {id} is present once"
        );
    }
    assert!(
        counts.values().all(|&count| count == 1),
        "no task is listed twice"
    );
    for task in &tasks {
        let state = str_field(task, "state");
        assert!(
            ["pending", "running"].contains(&state),
            "task {} is {state}: {task:#}",
            str_field(task, "id")
        );
    }
    let running = tasks.iter().filter(|t| t["state"] == "running").count();
    assert!(running <= 20, "{running} tasks run on room for 20");
    assert!(running > 0, "the acknowledged tasks that fit run");
    let containers = running_by_task(&run_id);
    for (task, ids) in &containers {
        assert_eq!(ids.len(), 1, "task {task} has one container, not {ids:?}");
    }
}

/// Submits `total` tasks, eight in flight, recording each id acknowledged with 201; stops once
/// the manager is gone. Returns how many submissions were attempted.
fn submit_many(
    address: &str,
    run_id: &str,
    total: usize,
    acknowledged: &Mutex<Vec<String>>,
    done: &AtomicBool,
) -> usize {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = format!("http://{address}/tasks");
    let attempted = runtime.block_on(async {
        let mut in_flight = tokio::task::JoinSet::new();
        let mut attempted = 0;
        let mut failures = 0;
        for index in 0..total {
            while in_flight.len() >= 8 {
                if let Some(Ok(result)) = in_flight.join_next().await {
                    record(result, acknowledged, &mut failures);
                }
            }
            if failures >= 8 {
                break;
            }
            let id = uuid_like(index);
            let mut spec = sleep_spec(run_id, &format!("burst-{index}"), TASK_MEMORY);
            spec["id"] = Value::String(id.clone());
            let request = client.post(&url).json(&spec).send();
            attempted += 1;
            in_flight.spawn(async move {
                let status = request.await.map(|response| response.status().as_u16());
                (id, status.ok())
            });
        }
        while let Some(joined) = in_flight.join_next().await {
            if let Ok(result) = joined {
                record(result, acknowledged, &mut failures);
            }
        }
        attempted
    });
    done.store(true, Ordering::SeqCst);
    attempted
}

fn record(result: (String, Option<u16>), acknowledged: &Mutex<Vec<String>>, failures: &mut usize) {
    match result {
        (id, Some(201)) => acknowledged.lock().unwrap().push(id),
        (_, Some(status)) => panic!("submission returned status {status}"),
        (_, None) => *failures += 1,
    }
}

/// Returns a task id for submission `index` of this process, so reruns never collide.
fn uuid_like(index: usize) -> String {
    let pid = std::process::id();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        pid,
        index & 0xffff,
        (nanos >> 12) & 0xfff,
        nanos & 0xfff,
        index
    )
}

#[test]
fn docker_manager_restart_keeps_running_tasks() {
    ensure_test_image();
    let run_id = unique_run_id("restart-manager");
    let _cleanup = ContainerCleanup {
        run_id: run_id.clone(),
    };
    let data = tempfile::tempdir().unwrap();
    let name_one = format!("{run_id}-w1");
    let name_two = format!("{run_id}-w2");
    let (_worker_one, address_one) = start_worker(&name_one, &data.path().join("w1"), 0);
    let (_worker_two, address_two) = start_worker(&name_two, &data.path().join("w2"), 0);
    let manager_dir = data.path().join("manager");
    let (manager, address) = start_manager(&manager_dir, &[&address_one, &address_two]);
    let api = Api::new(&address);
    api.wait_for_ready_nodes(2, Duration::from_secs(30));

    let ids: Vec<String> = (0..4)
        .map(|index| {
            let (status, task) =
                api.submit(&sleep_spec(&run_id, &format!("kept-{index}"), TASK_MEMORY));
            assert_eq!(status, 201, "{task:#}");
            str_field(&task, "id").to_owned()
        })
        .collect();
    let before: Vec<Value> = ids
        .iter()
        .map(|id| {
            api.wait_for_task(id, "running", Duration::from_secs(60), |t| {
                t["state"] == "running"
            })
        })
        .collect();
    let containers_before = run_containers(&run_id).len();

    manager.kill_hard();
    // The workers list no manager, so only the restarted manager's store names them.
    let (_manager, address) = start_manager(&manager_dir, &[]);
    let api = Api::new(&address);
    api.wait_for_ready_nodes(2, Duration::from_secs(30));
    wait_until_settled(&api, &run_id, Duration::from_secs(30));

    for old in &before {
        let id = str_field(old, "id");
        let now = api.task(id);
        for field in ["state", "node", "attempt", "container_id", "restart_count"] {
            assert_eq!(now[field], old[field], "task {id} kept its {field}");
        }
    }
    assert_eq!(
        run_containers(&run_id).len(),
        containers_before,
        "no container was started twice"
    );
}

#[test]
fn docker_worker_restart_adopts_its_containers() {
    ensure_test_image();
    let run_id = unique_run_id("restart-worker");
    let _cleanup = ContainerCleanup {
        run_id: run_id.clone(),
    };
    let data = tempfile::tempdir().unwrap();
    let name = format!("{run_id}-w1");
    let worker_dir = data.path().join("w1");
    let (worker, worker_address) = start_worker(&name, &worker_dir, 0);
    let (_manager, address) = start_manager(&data.path().join("manager"), &[&worker_address]);
    let api = Api::new(&address);
    api.wait_for_ready_nodes(1, Duration::from_secs(30));

    let submit = |name: &str| {
        let (status, task) = api.submit(&sleep_spec(&run_id, name, TASK_MEMORY));
        assert_eq!(status, 201, "{task:#}");
        str_field(&task, "id").to_owned()
    };
    let (kept, removed) = (submit("kept"), submit("removed"));
    let running = |task: &Value| task["state"] == "running";
    let kept_before = api.wait_for_task(&kept, "running", Duration::from_secs(60), running);
    let removed_before = api.wait_for_task(&removed, "running", Duration::from_secs(60), running);

    worker.kill_hard();
    // While the worker is down: one task's container is removed, and a container with the
    // worker's labels but no record appears.
    docker(&["rm", "-f", str_field(&removed_before, "container_id")]);
    let stray_task = uuid_like(0);
    let stray = docker(&[
        "run",
        "-d",
        "--label",
        &format!("{RUN_LABEL}={run_id}"),
        "--label",
        &format!("cube.node={name}"),
        "--label",
        &format!("cube.task={stray_task}"),
        "--label",
        &format!("cube.attempt={}", uuid_like(1)),
        "cube-test/busybox:latest",
        "sleep",
        "600",
    ]);

    let (_worker, _) = start_worker(&name, &worker_dir, port_of(&worker_address));

    let kept_after = api.wait_for_task(&kept, "still running", Duration::from_secs(30), running);
    assert_eq!(kept_after["container_id"], kept_before["container_id"]);
    assert_eq!(kept_after["attempt"], kept_before["attempt"]);
    let restarted = api.wait_for_task(&removed, "restarted", Duration::from_secs(60), |task| {
        task["state"] == "running" && task["container_id"] != removed_before["container_id"]
    });
    assert_eq!(restarted["restart_count"], 1, "{restarted:#}");
    let last_error = str_field(&restarted, "last_error");
    assert!(last_error.contains("container missing"), "{restarted:#}");

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let containers = run_containers(&run_id);
        let stray_left = containers
            .iter()
            .any(|c| c.id.starts_with(&stray) || stray.starts_with(&c.id));
        let by_task = running_by_task(&run_id);
        let one_each = [&kept, &removed]
            .iter()
            .all(|id| by_task.get(id.as_str()).is_some_and(|ids| ids.len() == 1));
        if !stray_left && one_each && containers.len() == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "expected one container per task and the stray one removed: {containers:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let kept_containers = &running_by_task(&run_id)[&kept];
    assert_eq!(
        kept_containers,
        &vec![str_field(&kept_before, "container_id").to_owned()],
        "the adopted container is the same one"
    );
    let names: BTreeSet<&str> = [kept.as_str(), removed.as_str()].into();
    assert_eq!(names.len(), 2);
}

#[test]
fn second_manager_on_data_dir_fails() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("manager");
    let (_first, _) = start_manager(&dir, &[]);

    let (succeeded, stderr) = run_until_exit(
        &[
            "manager",
            "--port",
            "0",
            "--data-dir",
            dir.to_str().unwrap(),
        ],
        Duration::from_secs(20),
    );

    assert!(
        !succeeded,
        "a second manager on the same data directory must fail"
    );
    assert!(
        stderr.contains(dir.to_str().unwrap()),
        "error names the directory: {stderr}"
    );
    assert!(stderr.contains("in use"), "error says why: {stderr}");
}
