//! Command-line arguments of the `c1m` and `docker-latency` commands.

use clap::{Parser, ValueEnum};

/// Places many tasks onto many simulated nodes in one process and reports the time taken,
/// the peak memory and how evenly the tasks were spread.
#[derive(Debug, Clone, Parser)]
#[command(name = "c1m")]
pub struct C1mArgs {
    /// Number of tasks to submit.
    #[arg(long, default_value_t = 1_000_000)]
    pub tasks: u64,
    /// Number of nodes to register.
    #[arg(long, default_value_t = 5_000)]
    pub nodes: usize,
    /// What stands in for each node.
    #[arg(long, value_enum, default_value_t = NodeKind::Fake)]
    pub node_kind: NodeKind,
    /// Placement policy, one of cube's policy names.
    #[arg(long, default_value = "epvm")]
    pub policy: String,
    /// Maximum number of tasks submitted but not yet running; submission waits beyond it.
    #[arg(long, default_value_t = 10_000)]
    pub window: u64,
    /// Seconds between two heartbeats of each simulated worker (`--node-kind simulated`).
    #[arg(long, default_value_t = 10)]
    pub heartbeat_secs: u64,
    /// Seconds after which the run is abandoned.
    #[arg(long, default_value_t = 1_800)]
    pub timeout_secs: u64,
}

/// What runs behind each node of a `c1m` run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NodeKind {
    /// A FakeWorker actor that acknowledges each start and reports it running at once.
    Fake,
    /// cube-worker's Worker actor on a simulated container runtime, with one supervisor
    /// actor per task.
    Simulated,
}

/// Measures submit-to-running latency of containers started through cube against bare
/// create and start calls on the same Docker Engine.
#[derive(Debug, Clone, Parser)]
#[command(name = "docker-latency")]
pub struct DockerLatencyArgs {
    /// Containers measured on each side, after one warm-up container each.
    #[arg(long, default_value_t = 20)]
    pub containers: usize,
    /// Local image to run; it is never pulled.
    #[arg(long, default_value = "cube-test/busybox:latest")]
    pub image: String,
    /// Milliseconds between two polls of the manager for the task's state.
    #[arg(long, default_value_t = 1)]
    pub poll_ms: u64,
}
