//! Time until 10,000 tasks are `running` on 100 simulated workers of an in-process cluster.
//!
//! Each iteration starts a fresh cluster from cube-manager's `ClusterBuilder` in a new actix
//! `System`: a manager and 100 Worker actors on simulated runtimes whose containers start at
//! once. Only what follows is timed: 10,000 `CreateTask` messages sent to the Manager actor,
//! at most 64 awaiting their reply at a time, and the wait until the manager's records show
//! every task `running`. The manager offers no subscription to task changes, so the wait
//! polls `GetTask` every 2 ms with a cursor over the submitted ids
//! ([`cube_benches::wait::wait_until_running`]), one cheap message per task instead of a
//! `GetTasks` copy of all of them.
//!
//! Run with `cargo bench -p cube-benches --bench cluster`.

use std::time::{Duration, Instant};

use actix::System;
use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use cube_benches::wait::wait_until_running;
use cube_core::{ByteSize, DeclaredCapacity, TaskSpec};
use cube_manager::cluster::ClusterBuilder;
use cube_manager::manager::CreateTask;
use futures_util::StreamExt;

/// Tasks submitted per iteration.
const TASKS: u64 = 10_000;

/// Workers of the cluster.
const WORKERS: usize = 100;

/// Maximum number of submissions awaiting their reply at once.
const SUBMISSIONS_IN_FLIGHT: usize = 64;

/// Time between two polls of the task at the wait's cursor.
const POLL_INTERVAL: Duration = Duration::from_millis(2);

/// Capacity of each worker: room for 160 tasks of the default 0.1 core and 64 MiB, which
/// leaves headroom over the average of 100 tasks per worker.
const WORKER_CAPACITY: DeclaredCapacity = DeclaredCapacity {
    cpu: Some(16.0),
    memory: Some(ByteSize::gib(16)),
    disk: Some(ByteSize::gib(10)),
};

/// Starts a cluster, then returns the time until all [`TASKS`] submitted tasks are running.
fn run_once() -> Duration {
    System::new().block_on(async {
        let cluster = ClusterBuilder::new()
            .workers(WORKERS, WORKER_CAPACITY)
            .start()
            .await
            .expect("in-process cluster with simulated workers starts");
        let manager = cluster.manager.clone();

        let start = Instant::now();
        let ids: Vec<_> = futures_util::stream::iter(0..TASKS)
            .map(|number| {
                let spec = TaskSpec::new(format!("bench-{number}"), "cube-bench/cluster:latest");
                manager.send(CreateTask { id: None, spec })
            })
            .buffered(SUBMISSIONS_IN_FLIGHT)
            .map(|reply| {
                let submission = reply
                    .expect("manager is running")
                    .expect("manager accepts a valid spec");
                submission.task.id
            })
            .collect()
            .await;
        wait_until_running(&manager, &ids, POLL_INTERVAL)
            .await
            .expect("every task reaches running on simulated workers");
        start.elapsed()
    })
}

fn cluster(c: &mut Criterion) {
    let mut group = c.benchmark_group("cluster");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(100))
        .measurement_time(Duration::from_secs(10))
        .throughput(Throughput::Elements(TASKS));
    let id = BenchmarkId::new("until-running", format!("{TASKS}-tasks-{WORKERS}-workers"));
    group.bench_function(id, |b| {
        b.iter_custom(|iterations| (0..iterations).map(|_| run_once()).sum())
    });
    group.finish();
}

criterion_group!(benches, cluster);
criterion_main!(benches);
