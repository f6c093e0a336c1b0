//! The `c1m` run: many tasks placed onto many simulated nodes in one process, in the spirit
//! of Nomad's C1M (one million containers on 5,000 hosts).
//!
//! The run starts a [`Manager`] (and with it the Scheduler actor) over a [`CountingStore`]
//! on one arbiter thread, and the nodes on a second one: [`FakeWorker`]s, or cube-worker's
//! Worker actors on simulated runtimes. It registers every node with [`AddWorker`], then
//! submits tasks with [`CreateTask`] until all are `running` by the manager's own records.
//! Submission keeps at most `window` tasks submitted but not yet running, and each
//! submission is a `send` that waits for room in the manager's mailbox, so no queue grows
//! without bound. A line of progress goes to stderr every second.
//!
//! # Caveats
//!
//! The Scheduler scores every feasible node for every task; it has no option to score a
//! bounded sample of nodes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix::{Actor, Addr, Arbiter, ArbiterHandle};
use cube_core::{
    ByteSize, DeclaredCapacity, MemoryStore, NodeId, Resources, TaskSpec, WorkerHandle,
};
use cube_manager::manager::{AddWorker, CreateTask, ListNodes};
use cube_manager::{Manager, ManagerConfig};
use cube_worker::simulated::{SimulatedBehaviour, SimulatedRuntime};
use cube_worker::{Worker, WorkerConfig};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

use crate::args::{C1mArgs, NodeKind};
use crate::counting_store::{CountingStore, StateCounts};
use crate::error::BenchError;
use crate::fake_worker::FakeWorker;
use crate::process_memory::ProcessMemory;
use crate::stats::Summary;

/// Maximum number of [`CreateTask`] requests awaiting their reply at once.
const SUBMISSIONS_IN_FLIGHT: usize = 64;

/// Capacity of every node: enough for 1,280 tasks of [`task_spec`], limited by CPU.
pub const NODE_CAPACITY: Resources = Resources {
    cpu: 128.0,
    memory: ByteSize::gib(512),
    disk: ByteSize::gib(1024),
};

/// What a run measured.
#[derive(Debug, Clone)]
pub struct C1mReport {
    /// Tasks submitted, all of them running at the end.
    pub tasks: u64,
    /// Nodes registered.
    pub nodes: usize,
    /// Time to start and register the nodes.
    pub setup: Duration,
    /// Time from the first submission until the last task was running.
    pub elapsed: Duration,
    /// Resident memory at the end, with its high-water mark; `None` off Linux.
    pub memory: Option<ProcessMemory>,
    /// Tasks per node at the end.
    pub per_node: Summary,
}

/// The spec of every task: the default 0.1 core and 64 MiB, no ports.
pub fn task_spec() -> TaskSpec {
    TaskSpec::new("c1m", "cube-bench/c1m:latest")
}

/// Runs the benchmark described by `args` inside the current actix `System`.
///
/// # Errors
///
/// Returns [`BenchError::Settings`] for settings that cannot fit, [`BenchError::TimedOut`]
/// past the time limit, and the manager's or a mailbox's error when an actor fails.
pub async fn run(args: &C1mArgs) -> Result<C1mReport, BenchError> {
    let config = check_settings(args)?;
    let manager_arbiter = Arbiter::new();
    let node_arbiter = Arbiter::new();
    let (store, counts) = CountingStore::new();
    let manager = Manager::start_in_arbiter(&manager_arbiter.handle(), move |_| {
        Manager::new(config, Box::new(store))
            .expect("the settings were validated and an empty store always loads")
    });

    let setup_start = Instant::now();
    for index in 0..args.nodes {
        let handle = start_node(args, index, &node_arbiter.handle());
        let added = manager.send(AddWorker {
            handle,
            address: None,
        });
        added
            .await
            .map_err(|source| BenchError::ActorGone {
                actor: "manager",
                source,
            })?
            .map_err(|source| BenchError::Manager {
                action: "add a node",
                source,
            })?;
    }
    let setup = setup_start.elapsed();
    eprintln!(
        "c1m: {} nodes registered in {:.1} s",
        args.nodes,
        setup.as_secs_f64()
    );

    let submitted = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let progress = actix::spawn(show_progress(counts.clone(), submitted.clone(), args.tasks));
    let limit = Duration::from_secs(args.timeout_secs);
    let driven = tokio::time::timeout(limit, submit_all(&manager, &counts, args, &submitted)).await;
    let elapsed = start.elapsed();
    progress.abort();
    match driven {
        Ok(result) => result?,
        Err(_) => {
            return Err(BenchError::TimedOut {
                seconds: args.timeout_secs,
                running: counts.running(),
                expected: args.tasks,
            });
        }
    }

    let memory = ProcessMemory::read();
    let per_node = tasks_per_node(&manager).await?;
    manager_arbiter.stop();
    node_arbiter.stop();
    Ok(C1mReport {
        tasks: args.tasks,
        nodes: args.nodes,
        setup,
        elapsed,
        memory,
        per_node,
    })
}

/// Checks that the tasks fit on the nodes and returns the manager's settings.
fn check_settings(args: &C1mArgs) -> Result<ManagerConfig, BenchError> {
    let invalid = |reason: String| Err(BenchError::Settings { reason });
    if args.tasks == 0 || args.nodes == 0 || args.window == 0 {
        return invalid("--tasks, --nodes and --window must be at least 1".to_owned());
    }
    let spec = task_spec();
    let slots = (NODE_CAPACITY.cpu / spec.cpu).floor() as u64;
    let slots = slots.min(NODE_CAPACITY.memory.bytes() / spec.memory.bytes());
    if args.tasks > slots * args.nodes as u64 {
        return invalid(format!(
            "{} tasks do not fit on {} nodes of {slots} tasks each",
            args.tasks, args.nodes
        ));
    }
    let config = ManagerConfig {
        scheduler: args.policy.clone(),
        // The fake nodes send no heartbeats, and a run outlasts the liveness window.
        liveness_check_interval: None,
        ..ManagerConfig::default()
    };
    config.validate().map_err(|source| BenchError::Manager {
        action: "accept the benchmark's settings",
        source,
    })?;
    Ok(config)
}

/// Starts node `index` on `arbiter` and returns the handle the manager drives it by.
fn start_node(args: &C1mArgs, index: usize, arbiter: &ArbiterHandle) -> WorkerHandle {
    let node = NodeId::new(format!("node-{index:05}")).expect("generated node names are valid");
    match args.node_kind {
        NodeKind::Fake => {
            let worker = FakeWorker::new(node.clone(), NODE_CAPACITY);
            let addr = FakeWorker::start_in_arbiter(arbiter, move |_| worker);
            WorkerHandle::from_addr(node, &addr)
        }
        NodeKind::Simulated => {
            let mut config = WorkerConfig::new(node.clone());
            config.capacity = DeclaredCapacity {
                cpu: Some(NODE_CAPACITY.cpu),
                memory: Some(NODE_CAPACITY.memory),
                disk: Some(NODE_CAPACITY.disk),
            };
            // Every figure is declared, so there is nothing to sample.
            config.metrics_interval = None;
            config.heartbeat_interval = Duration::from_secs(args.heartbeat_secs.max(1));
            let runtime = Arc::new(SimulatedRuntime::new(
                SimulatedBehaviour::run_until_stopped(),
            ));
            let addr = Worker::start_in_arbiter(arbiter, move |_| {
                Worker::new(config, runtime, Box::new(MemoryStore::new()))
            });
            cube_worker::handle(node, &addr)
        }
    }
}

/// Submits `args.tasks` tasks, keeping at most `args.window` not yet running, and returns
/// once all are running.
async fn submit_all(
    manager: &Addr<Manager>,
    counts: &StateCounts,
    args: &C1mArgs,
    submitted: &AtomicU64,
) -> Result<(), BenchError> {
    let spec = task_spec();
    // NOTE: a request waiting for mailbox room is only delivered while polled, so fewer of
    // them than the window keeps the window's wait from waiting on undelivered tasks.
    let in_flight = SUBMISSIONS_IN_FLIGHT.min((args.window / 2).max(1) as usize);
    let mut replies = FuturesUnordered::new();
    for sent in 0..args.tasks {
        if sent.saturating_sub(counts.running()) >= args.window {
            counts
                .wait_until(|counts| sent.saturating_sub(counts.running()) < args.window)
                .await;
        }
        replies.push(manager.send(CreateTask {
            id: None,
            spec: spec.clone(),
        }));
        submitted.store(sent + 1, Ordering::Relaxed);
        if replies.len() >= in_flight
            && let Some(reply) = replies.next().await
        {
            check_submission(reply)?;
        }
    }
    while let Some(reply) = replies.next().await {
        check_submission(reply)?;
    }
    counts
        .wait_until(|counts| counts.running() >= args.tasks)
        .await;
    Ok(())
}

fn check_submission(
    reply: Result<
        Result<cube_manager::manager::Submission, cube_manager::Error>,
        actix::MailboxError,
    >,
) -> Result<(), BenchError> {
    reply
        .map_err(|source| BenchError::ActorGone {
            actor: "manager",
            source,
        })?
        .map_err(|source| BenchError::Manager {
            action: "accept a task",
            source,
        })?;
    Ok(())
}

/// Prints one line of progress to stderr every second, until aborted.
async fn show_progress(counts: Arc<StateCounts>, submitted: Arc<AtomicU64>, total: u64) {
    let start = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    ticks.tick().await;
    let mut last_running = 0;
    loop {
        ticks.tick().await;
        let running = counts.running();
        let resident = ProcessMemory::read()
            .map(|memory| memory.resident.to_string())
            .unwrap_or_else(|| "unknown".to_owned());
        eprintln!(
            "c1m: {:>5.0} s submitted={} scheduled={} running={}/{total} rate={}/s rss={resident}",
            start.elapsed().as_secs_f64(),
            submitted.load(Ordering::Relaxed),
            counts.scheduled(),
            running,
            running - last_running,
        );
        last_running = running;
    }
}

/// Summarises the task count of every node, read from the scheduler through the manager.
async fn tasks_per_node(manager: &Addr<Manager>) -> Result<Summary, BenchError> {
    let nodes = manager
        .send(ListNodes)
        .await
        .map_err(|source| BenchError::ActorGone {
            actor: "manager",
            source,
        })?
        .map_err(|source| BenchError::Manager {
            action: "list nodes",
            source,
        })?;
    let counts: Vec<f64> = nodes
        .iter()
        .map(|node| f64::from(node.task_count))
        .collect();
    Ok(Summary::of(&counts).expect("the run registers at least one node"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(tasks: u64, nodes: usize, node_kind: NodeKind) -> C1mArgs {
        C1mArgs {
            tasks,
            nodes,
            node_kind,
            policy: "epvm".into(),
            window: 100,
            heartbeat_secs: 10,
            timeout_secs: 60,
        }
    }

    #[test]
    fn settings_reject_tasks_that_cannot_fit() {
        let error = check_settings(&args(1_281, 1, NodeKind::Fake)).unwrap_err();
        assert!(
            error.to_string().contains("do not fit on 1 nodes of 1280"),
            "{error}"
        );
    }

    #[test]
    fn settings_reject_unknown_policy() {
        let mut bad = args(10, 1, NodeKind::Fake);
        bad.policy = "fastest".into();
        assert!(check_settings(&bad).is_err());
    }

    #[actix::test]
    async fn small_run_places_every_task_on_fake_nodes() {
        let report = run(&args(500, 10, NodeKind::Fake)).await.unwrap();
        assert_eq!(report.per_node.count, 10);
        assert_eq!(report.per_node.mean, 50.0);
    }

    #[actix::test]
    async fn small_run_places_every_task_on_simulated_workers() {
        let report = run(&args(200, 4, NodeKind::Simulated)).await.unwrap();
        assert_eq!(report.per_node.count, 4);
        assert_eq!(report.per_node.mean * 4.0, 200.0);
    }
}
