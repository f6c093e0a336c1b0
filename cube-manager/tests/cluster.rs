//! The in-process cluster with cube-worker's simulated runtime: many tasks, even spreading,
//! clean stops, a stop during a start, host port accounting, bin-packing and spreading over
//! workers of different sizes, and a cluster run from a plain thread.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use cube_core::node::DeclaredCapacity;
use cube_core::resources::{ByteSize, Resources};
use cube_core::spec::TaskSpec;
use cube_core::task::TaskState;
use cube_manager::cluster::{Cluster, ClusterBuilder};
use cube_manager::http::HttpConfig;
use cube_manager::manager::GetTasks;
use cube_worker::simulated::SimulatedBehaviour;

use crate::util::*;

async fn start_cluster(workers: usize, behaviour: SimulatedBehaviour) -> Cluster {
    init_logging();
    bounded(
        ClusterBuilder::new()
            .policy("roundrobin")
            .simulated(behaviour)
            .workers(workers, DeclaredCapacity::default())
            .start(),
        "cluster did not start: does every worker answer DescribeNode?",
    )
    .await
    .expect("cluster starts")
}

async fn all_tasks(cluster: &Cluster) -> Vec<cube_core::task::Task> {
    bounded(
        cluster.manager.send(GetTasks),
        "manager did not answer GetTasks",
    )
    .await
    .expect("manager alive")
}

#[actix::test]
async fn hundred_tasks_run_spread_evenly_and_stop_cleanly() {
    let cluster = start_cluster(3, SimulatedBehaviour::run_until_stopped()).await;
    let mut ids = Vec::new();
    for index in 0..100 {
        ids.push(
            submit(&cluster.manager, spec(&format!("task-{index}")))
                .await
                .id,
        );
    }

    let running = wait_until(
        Duration::from_secs(30),
        "not every task reached running: are worker reports reaching the manager?",
        || async {
            let tasks = all_tasks(&cluster).await;
            let done = tasks.iter().all(|task| task.state == TaskState::Running);
            (done && tasks.len() == 100).then_some(tasks)
        },
    )
    .await;
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for task in &running {
        *per_node
            .entry(task.node.as_ref().unwrap().to_string())
            .or_default() += 1;
    }
    let expected = BTreeMap::from([
        ("worker-1".to_owned(), 34),
        ("worker-2".to_owned(), 33),
        ("worker-3".to_owned(), 33),
    ]);
    assert_eq!(per_node, expected);
    for worker in &cluster.workers {
        let runtime = worker.simulated.as_ref().unwrap();
        assert_eq!(runtime.running_count(), expected[worker.node.as_str()]);
    }

    for id in &ids {
        stop(&cluster.manager, *id).await;
    }

    wait_until(
        Duration::from_secs(30),
        "not every task reached a terminal state after its stop",
        || async {
            let tasks = all_tasks(&cluster).await;
            tasks
                .iter()
                .all(|task| task.state.is_terminal())
                .then_some(())
        },
    )
    .await;
    let nodes = wait_until(WAIT, "allocations were not all released", || async {
        let nodes = nodes(&cluster.manager).await;
        nodes
            .iter()
            .all(|node| node.task_count == 0)
            .then_some(nodes)
    })
    .await;
    for node in nodes {
        assert_eq!(node.allocated, Resources::default(), "{node:?}");
    }
    for worker in &cluster.workers {
        let runtime = worker.simulated.as_ref().unwrap();
        assert_eq!(runtime.running_count(), 0, "{} still runs", worker.node);
    }
}

#[actix::test]
async fn stop_during_start_leaves_no_container_running() {
    let start_delay = Duration::from_millis(500);
    let behaviour = SimulatedBehaviour::run_until_stopped().with_start_delay(start_delay);
    let cluster = start_cluster(1, behaviour).await;
    let runtime = cluster.workers[0].simulated.clone().unwrap();
    let task = submit(&cluster.manager, spec("slow")).await;
    wait_for_task(&cluster.manager, task.id, "task was never placed", |task| {
        task.state == TaskState::Scheduled
    })
    .await;

    stop(&cluster.manager, task.id).await;

    let done = wait_for_task(
        &cluster.manager,
        task.id,
        "a stop during the start never ended the task",
        |task| task.state.is_terminal(),
    )
    .await;
    assert_eq!(done.state, TaskState::Completed);
    // Outlast the start so that a container started late would show up.
    tokio::time::sleep(start_delay * 2).await;
    assert_eq!(
        runtime.running_count(),
        0,
        "a container runs after its stop"
    );
    let node = nodes(&cluster.manager).await.remove(0);
    assert_eq!(node.task_count, 0);
}

#[actix::test]
async fn dropped_cluster_stops_its_actors() {
    init_logging();
    // NOTE: a cube-worker Worker stops only at its next heartbeat after the manager is gone,
    // so a short interval keeps this test quick.
    let cluster = bounded(
        ClusterBuilder::new()
            .workers(2, DeclaredCapacity::default())
            .heartbeat_interval(Duration::from_millis(200))
            .start(),
        "cluster did not start",
    )
    .await
    .expect("cluster starts");
    let task = submit(&cluster.manager, spec("a")).await;
    wait_for_task(&cluster.manager, task.id, "task never ran", |task| {
        task.state == TaskState::Running
    })
    .await;
    let manager = cluster.manager.downgrade();
    let workers: Vec<_> = cluster.workers.iter().map(|w| w.addr.downgrade()).collect();

    drop(cluster);

    wait_until(
        WAIT,
        "manager outlived the cluster: does a worker hold a strong address of it?",
        || async { manager.upgrade().is_none().then_some(()) },
    )
    .await;
    wait_until(
        WAIT,
        "a worker outlived the cluster: does something hold a strong address of it?",
        || async {
            workers
                .iter()
                .all(|worker| worker.upgrade().is_none())
                .then_some(())
        },
    )
    .await;
}

#[test]
fn spawned_cluster_serves_api_to_plain_threads() {
    init_logging();
    let handle = ClusterBuilder::new()
        .policy("roundrobin")
        .workers(2, DeclaredCapacity::default())
        .serve_api(HttpConfig::default())
        .spawn()
        .expect("cluster starts on its own thread");
    let base = handle.api_url().expect("API served");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let body = serde_json::to_value(spec("from-thread")).unwrap();
        let created: serde_json::Value = bounded(
            async {
                client
                    .post(format!("{base}/tasks"))
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap()
            },
            "POST /tasks to the spawned cluster did not answer",
        )
        .await;
        let id = created["id"].as_str().unwrap().to_owned();

        wait_until(WAIT, "task never ran on the spawned cluster", || async {
            let task: serde_json::Value = client
                .get(format!("{base}/tasks/{id}"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (task["state"] == "running").then_some(())
        })
        .await;
    });

    assert_eq!(handle.nodes.len(), 2);
    handle.shutdown();
}

fn web_on(host_port: Option<u16>) -> TaskSpec {
    let mut web = spec("web");
    web.ports = vec![port(80, host_port)];
    web
}

async fn wait_placed(cluster: &Cluster, task_id: cube_core::ids::TaskId) -> cube_core::task::Task {
    wait_for_task(
        &cluster.manager,
        task_id,
        "task never left pending: is a worker registered with room?",
        |task| task.state != TaskState::Pending,
    )
    .await
}

#[actix::test]
async fn fixed_port_conflict_on_one_worker_leaves_second_pending() {
    let cluster = start_cluster(1, SimulatedBehaviour::run_until_stopped()).await;

    let first = submit(&cluster.manager, web_on(Some(18080))).await;
    let second = submit(&cluster.manager, web_on(Some(18080))).await;

    let first = wait_for_task(&cluster.manager, first.id, "first never ran", |task| {
        task.state == TaskState::Running
    })
    .await;
    assert_eq!(first.host_ports[0].host_port, 18080);
    let pending = wait_for_task(
        &cluster.manager,
        second.id,
        "second should record why it waits",
        |task| task.pending_reason.is_some(),
    )
    .await;
    assert_eq!(pending.state, TaskState::Pending);
    assert_eq!(
        pending.pending_reason.as_deref(),
        Some("1 node evaluated: 1 has port 18080 in use")
    );
    let runtime = cluster.workers[0].simulated.as_ref().unwrap();
    assert_eq!(runtime.container_count(), 1, "the second task was started");

    // Once the first ends, its port is free and the second runs without resubmission.
    stop(&cluster.manager, first.id).await;
    wait_for_task(&cluster.manager, second.id, "second never ran", |task| {
        task.state == TaskState::Running
    })
    .await;
}

#[actix::test]
async fn fixed_port_on_two_workers_lands_on_each() {
    let cluster = start_cluster(2, SimulatedBehaviour::run_until_stopped()).await;

    let first = submit(&cluster.manager, web_on(Some(18080))).await;
    let second = submit(&cluster.manager, web_on(Some(18080))).await;

    let first = wait_placed(&cluster, first.id).await;
    let second = wait_placed(&cluster, second.id).await;
    assert!(first.node.is_some(), "{first:?}");
    assert!(second.node.is_some(), "{second:?}");
    assert_ne!(first.node, second.node);
    for worker in &cluster.workers {
        let runtime = worker.simulated.as_ref().unwrap();
        wait_until(WAIT, "each worker should start one container", || async {
            (runtime.container_count() == 1).then_some(())
        })
        .await;
    }
}

#[actix::test]
async fn fifty_dynamic_ports_on_one_worker_are_distinct() {
    let cluster = start_cluster(1, SimulatedBehaviour::run_until_stopped()).await;
    for _ in 0..50 {
        let mut web = web_on(None);
        web.memory = ByteSize::mib(1);
        web.cpu = 0.01;
        submit(&cluster.manager, web).await;
    }

    let tasks = wait_until(WAIT, "not every task reached running", || async {
        let tasks = all_tasks(&cluster).await;
        tasks
            .iter()
            .all(|task| task.state == TaskState::Running)
            .then_some(tasks)
    })
    .await;
    let recorded: BTreeSet<u16> = tasks
        .iter()
        .map(|task| task.host_ports[0].host_port)
        .collect();
    assert_eq!(recorded.len(), 50, "{recorded:?}");
    let runtime = cluster.workers[0].simulated.as_ref().unwrap();
    let bound: BTreeSet<u16> = runtime
        .containers()
        .iter()
        .map(|container| container.host_ports[0].host_port)
        .collect();
    assert_eq!(
        bound, recorded,
        "containers bind the ports the manager chose"
    );
}

/// Starts a cluster with a large worker (4 cores, 4 GiB) that joins before a smaller one
/// (3 cores, 3 GiB).
async fn start_uneven_cluster(policy: &str) -> Cluster {
    init_logging();
    let capacity = |cpu: f64, memory_gib: u64| DeclaredCapacity {
        cpu: Some(cpu),
        memory: Some(ByteSize::gib(memory_gib)),
        disk: Some(ByteSize::gib(10)),
    };
    bounded(
        ClusterBuilder::new()
            .policy(policy)
            .worker("large", capacity(4.0, 4))
            .worker("small", capacity(3.0, 3))
            .start(),
        "cluster did not start",
    )
    .await
    .expect("cluster starts")
}

/// Submits `count` tasks of 0.5 cores and 512 MiB one after another and returns the node
/// each was placed on, in submission order.
async fn place_in_order(cluster: &Cluster, count: usize) -> Vec<String> {
    let mut placed = Vec::new();
    for index in 0..count {
        let mut task = spec(&format!("task-{index}"));
        task.cpu = 0.5;
        task.memory = ByteSize::mib(512);
        let task = submit(&cluster.manager, task).await;
        let task = wait_placed(cluster, task.id).await;
        placed.push(task.node.expect("placed task has a node").to_string());
    }
    placed
}

#[actix::test]
async fn binpack_fills_one_worker_first() {
    let cluster = start_uneven_cluster("binpack").await;

    let placed = place_in_order(&cluster, 7).await;

    // The small worker ends up fuller after each task, until its 3 GiB hold six tasks.
    let expected = [
        "small", "small", "small", "small", "small", "small", "large",
    ];
    assert_eq!(placed, expected);
}

#[actix::test]
async fn spread_alternates_between_workers() {
    let cluster = start_uneven_cluster("spread").await;

    let placed = place_in_order(&cluster, 4).await;

    // Free share after placing: large 7/8, small 5/6, then 3/4 against 5/6, and so on.
    assert_eq!(placed, ["large", "small", "large", "small"]);
}
