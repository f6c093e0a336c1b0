//! The `docker-latency` run: submit-to-running latency of containers started through cube
//! against bare create and start calls on the same Docker Engine, side by side.
//!
//! cube's side is an in-process cluster with one worker on the Docker runtime. A task is
//! submitted with [`CreateTask`] and counts as running once the manager's record shows it
//! `running`.
//! The bare side is [`BareDocker::create_and_start`] with the same image, command and limits.
//! The two alternate, one container at a time, starting with cube on even rounds, so both
//! see the same engine state. Round 0 warms up both paths and is not counted. Every
//! container carries the label [`RUN_LABEL`] with the run's id. At the end cube stops its
//! tasks, then exactly the containers with that label are removed, also after a failure.
//!
//! Two figures are kept for cube: the manager's own stamps (the task's `started_at` minus
//! its `created_at`), which carry no polling error, and the time the client saw, which adds
//! up to one poll interval.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cube_core::{
    ByteSize, DeclaredCapacity, DurationSpec, PullPolicy, RestartMode, TaskId, TaskSpec,
};
use cube_manager::cluster::{Cluster, ClusterBuilder};
use cube_manager::manager::{CreateTask, GetTask, RequestStop};
use cube_worker::DockerConfig;

use crate::args::DockerLatencyArgs;
use crate::bare_docker::{BareContainer, BareDocker};
use crate::error::BenchError;
use crate::stats::Summary;
use crate::wait::wait_until_running;

/// Label key on every container of a run; its value is the run's id.
pub const RUN_LABEL: &str = "cube-bench.run";

/// Command of every container: it runs until removed.
const COMMAND: [&str; 2] = ["sleep", "3600"];

/// CPU limit of every container, in cores: cube's default request.
const CPU: f64 = 0.1;

/// Memory limit of every container: cube's default request.
const MEMORY: ByteSize = ByteSize::mib(64);

/// Time cube waits for its tasks to end at the end of a run before the containers are
/// removed anyway.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Latencies of one run, in milliseconds.
#[derive(Debug, Clone)]
pub struct LatencyReport {
    /// The run's id, the value of [`RUN_LABEL`].
    pub run_id: String,
    /// cube, from the manager's `created_at` to its `started_at`.
    pub cube_stamped: Summary,
    /// cube, as the submitting client saw it.
    pub cube_observed: Summary,
    /// Bare create and start.
    pub bare: Summary,
    /// Containers removed at the end.
    pub removed: usize,
}

impl LatencyReport {
    /// cube's stamped median over the bare median.
    pub fn median_ratio(&self) -> f64 {
        self.cube_stamped.median / self.bare.median
    }

    /// cube's stamped 90th percentile over the bare one.
    pub fn p90_ratio(&self) -> f64 {
        self.cube_stamped.p90 / self.bare.p90
    }
}

/// Runs the comparison described by `args` inside the current actix `System`.
///
/// # Errors
///
/// Returns [`BenchError::Settings`] for zero containers, and the Docker, cluster or manager
/// error of the step that failed; the run's containers are removed in every case.
pub async fn run(args: &DockerLatencyArgs) -> Result<LatencyReport, BenchError> {
    if args.containers == 0 {
        return Err(BenchError::Settings {
            reason: "--containers must be at least 1".to_owned(),
        });
    }
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let bare = BareDocker::connect().await?;
    eprintln!(
        "docker-latency: run {run_id}, {} containers per side",
        args.containers
    );

    let measured = measure(args, &run_id, &bare).await;
    let removed = bare.remove_labelled(RUN_LABEL, &run_id).await;
    let (cube_stamped, cube_observed, bare_times) = measured?;
    let removed = removed?;
    let summary = |values: &[f64]| Summary::of(values).expect("at least one container");
    Ok(LatencyReport {
        run_id,
        cube_stamped: summary(&cube_stamped),
        cube_observed: summary(&cube_observed),
        bare: summary(&bare_times),
        removed,
    })
}

type Samples = (Vec<f64>, Vec<f64>, Vec<f64>);

/// Runs the warm-up round and `args.containers` measured rounds.
async fn measure(
    args: &DockerLatencyArgs,
    run_id: &str,
    bare: &BareDocker,
) -> Result<Samples, BenchError> {
    let capacity = DeclaredCapacity {
        cpu: Some(8.0),
        memory: Some(ByteSize::gib(8)),
        disk: Some(ByteSize::gib(10)),
    };
    let cluster = ClusterBuilder::new()
        .docker(DockerConfig::default())
        .worker("latency-1", capacity)
        .start()
        .await
        .map_err(|source| BenchError::Cluster { source })?;

    let mut task_ids = Vec::new();
    let measured = measure_rounds(&cluster, args, run_id, bare, &mut task_ids).await;
    stop_tasks(&cluster, &task_ids).await;
    cluster.shutdown().await;
    measured
}

/// Runs the rounds, recording every task cube accepted in `task_ids`.
async fn measure_rounds(
    cluster: &Cluster,
    args: &DockerLatencyArgs,
    run_id: &str,
    bare: &BareDocker,
    task_ids: &mut Vec<TaskId>,
) -> Result<Samples, BenchError> {
    let poll = Duration::from_millis(args.poll_ms);
    let (mut stamped, mut observed, mut bare_times) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..=args.containers {
        let container = bare_container(args, run_id, round);
        let (cube, bare_time) = if round % 2 == 0 {
            let cube = start_through_cube(cluster, args, run_id, round, poll, task_ids).await?;
            (cube, bare.create_and_start(&container).await?)
        } else {
            let bare_time = bare.create_and_start(&container).await?;
            (
                start_through_cube(cluster, args, run_id, round, poll, task_ids).await?,
                bare_time,
            )
        };
        if round == 0 {
            continue;
        }
        eprintln!(
            "docker-latency: round {round}: cube {:.1} ms (observed {:.1} ms), bare {:.1} ms",
            millis(cube.0),
            millis(cube.1),
            millis(bare_time)
        );
        stamped.push(millis(cube.0));
        observed.push(millis(cube.1));
        bare_times.push(millis(bare_time));
    }
    Ok((stamped, observed, bare_times))
}

/// Stops `task_ids` through the manager and waits until each has ended, so that cube
/// removes its own containers and no worker acts on them afterwards.
async fn stop_tasks(cluster: &Cluster, task_ids: &[TaskId]) {
    for &task_id in task_ids {
        if let Err(error) = cluster.manager.send(RequestStop { task_id }).await {
            log::warn!("failed to request the stop of task {task_id}: {error}");
        }
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    for &task_id in task_ids {
        loop {
            let ended = match cluster.manager.send(GetTask { task_id }).await {
                Ok(Ok(task)) => task.state.is_terminal(),
                Ok(Err(_)) | Err(_) => true,
            };
            if ended {
                break;
            }
            if Instant::now() >= deadline {
                log::warn!(
                    "task {task_id} did not end within {STOP_TIMEOUT:?}; removing it anyway"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Submits one task and waits until it runs; returns the stamped and observed latencies.
async fn start_through_cube(
    cluster: &Cluster,
    args: &DockerLatencyArgs,
    run_id: &str,
    round: usize,
    poll: Duration,
    task_ids: &mut Vec<TaskId>,
) -> Result<(Duration, Duration), BenchError> {
    let mut spec = TaskSpec::new(format!("latency-{round}"), args.image.clone());
    spec.pull_policy = PullPolicy::Never;
    spec.command = COMMAND.iter().map(|part| (*part).to_owned()).collect();
    spec.cpu = CPU;
    spec.memory = MEMORY;
    spec.labels = BTreeMap::from([(RUN_LABEL.to_owned(), run_id.to_owned())]);
    // A container removed at the end must not come back as a restart, and `sleep` as PID 1
    // ignores SIGTERM, so a short grace period keeps the final stop short.
    spec.restart_policy.mode = RestartMode::Never;
    spec.stop_grace_period = DurationSpec::from_secs(1);

    let start = Instant::now();
    let submission = cluster
        .manager
        .send(CreateTask { id: None, spec })
        .await
        .map_err(|source| BenchError::ActorGone {
            actor: "manager",
            source,
        })?
        .map_err(|source| BenchError::Manager {
            action: "accept a task",
            source,
        })?;
    task_ids.push(submission.task.id);
    let running = wait_until_running(&cluster.manager, &[submission.task.id], poll).await?;
    let observed = start.elapsed();

    let task = &running[0];
    let started_at = task.started_at.expect("a running task has a start time");
    let stamped = (started_at - task.created_at).to_std().unwrap_or_default();
    Ok((stamped, observed))
}

fn bare_container(args: &DockerLatencyArgs, run_id: &str, round: usize) -> BareContainer {
    BareContainer {
        name: format!("cube-bench-{run_id}-bare-{round}"),
        image: args.image.clone(),
        command: COMMAND.iter().map(|part| (*part).to_owned()).collect(),
        labels: BTreeMap::from([(RUN_LABEL.to_owned(), run_id.to_owned())]),
        cpu: CPU,
        memory: MEMORY,
    }
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}
