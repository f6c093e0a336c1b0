//! Command-line arguments of the `cube` binary, as clap derive structs.
//!
//! The `///` lines are the help text. Values are checked here only as far as clap can; the
//! commands validate the rest and say what to do on failure.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use cube_core::{ByteSize, DurationSpec};

/// cube: a container orchestrator. Run a manager and workers, then submit tasks to it.
#[derive(Debug, Parser)]
#[command(name = "cube", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the manager daemon: the API that accepts tasks and places them on workers.
    Manager(ManagerArgs),
    /// Run a worker daemon: runs tasks as containers on this host's Docker Engine.
    Worker(WorkerArgs),
    /// Run a manager and N workers in one process, using the local Docker Engine.
    Dev(DevArgs),
    /// Submit the task spec in FILE and print the new task's id.
    Run(RunArgs),
    /// Stop a task; its record is kept.
    Stop(StopArgs),
    /// Show all tasks, or one task.
    Status(StatusArgs),
    /// Show the nodes with their capacity, allocation and task count.
    Node(NodeArgs),
}

/// Options shared by the commands that talk to a manager.
#[derive(Debug, Args)]
pub struct ManagerAddress {
    /// Manager address, as host:port or a URL.
    #[arg(
        short = 'm',
        long = "manager",
        env = "CUBE_MANAGER",
        default_value = "127.0.0.1:5555"
    )]
    pub manager: String,
}

/// Output format of `status` and `node`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people.
    #[default]
    Table,
    /// JSON for programs.
    Json,
}

/// Arguments of `cube manager`.
#[derive(Debug, Args)]
pub struct ManagerArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port to listen on; 0 picks a free one (the log shows it).
    #[arg(short, long, default_value_t = 5555)]
    pub port: u16,
    /// Worker API address (host:port or URL); repeat for several workers.
    #[arg(short, long = "worker", value_name = "ADDR")]
    pub workers: Vec<String>,
    /// Placement policy: epvm, epvm-book, roundrobin, greedy, binpack or spread.
    #[arg(short, long, default_value = cube_core::scheduler::DEFAULT_POLICY)]
    pub scheduler: String,
    /// Time within which each worker must report again, such as 10s or 500ms.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub heartbeat_ttl: DurationSpec,
    /// Silence allowed beyond the heartbeat TTL before a worker is declared down and its
    /// tasks are placed elsewhere, such as 10s.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub heartbeat_grace: DurationSpec,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Arguments of `cube worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port to listen on; 0 picks a free one (the log shows it).
    #[arg(short, long, default_value_t = 5556)]
    pub port: u16,
    /// Node name, stable across restarts; defaults to the host name.
    #[arg(short, long)]
    pub name: Option<String>,
    /// Address on which container ports are published.
    #[arg(long, default_value = "127.0.0.1")]
    pub publish_address: IpAddr,
    /// Manager to join at start (host:port or URL); without it, the manager must list this
    /// worker with --worker.
    #[arg(long = "manager", value_name = "ADDR")]
    pub manager: Option<String>,
    /// URL at which the manager reaches this worker's API; defaults to the bound address.
    #[arg(long, value_name = "ADDR")]
    pub advertise: Option<String>,
    /// Time between two heartbeats to the manager, such as 5s or 500ms.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub heartbeat_interval: DurationSpec,
    /// Time between two checks of this node's containers against the worker's records, a
    /// safety net for exits that Docker's wait call missed, such as 30s or 1h.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub reconcile_interval: DurationSpec,
    #[command(flatten)]
    pub capacity: CapacityArgs,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Declared capacity, overriding what the host reports.
#[derive(Debug, Args, Clone, Copy, Default)]
pub struct CapacityArgs {
    /// CPU cores offered to tasks (fractional allowed); defaults to the host's CPU count.
    #[arg(long, allow_negative_numbers = true)]
    pub cpus: Option<f64>,
    /// Memory offered to tasks, in bytes or with a unit such as 2GiB; defaults to the host's.
    #[arg(long, value_parser = parse_size)]
    pub memory: Option<ByteSize>,
    /// Disk offered to tasks, in bytes or with a unit such as 10GiB; defaults to the host's.
    #[arg(long, value_parser = parse_size)]
    pub disk: Option<ByteSize>,
}

/// Arguments of `cube dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Address the manager API listens on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port of the manager API; 0 picks a free one (the log shows it).
    #[arg(short, long, default_value_t = 5555)]
    pub port: u16,
    /// Number of in-process workers.
    #[arg(short, long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub workers: u16,
    /// Placement policy: epvm, epvm-book, roundrobin, greedy, binpack or spread.
    #[arg(short, long, default_value = cube_core::scheduler::DEFAULT_POLICY)]
    pub scheduler: String,
    #[command(flatten)]
    pub capacity: CapacityArgs,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Kind of state store of a daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// Kept in memory and lost when the process exits.
    Memory,
    /// A crash-safe redb file in the data directory, found again after a restart.
    Persistent,
}

/// Where a daemon keeps its state.
#[derive(Debug, Args, Clone)]
pub struct StoreArgs {
    /// Directory of the persistent store; defaults to $XDG_DATA_HOME/cube/ROLE (or
    /// ~/.local/share/cube/ROLE), where ROLE is `manager`, `worker-NAME` or `dev`. Only one
    /// process can use a directory at a time.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Store kind; `cube manager` and `cube worker` default to persistent, `cube dev` to
    /// memory.
    #[arg(long, value_enum)]
    pub store: Option<StoreKind>,
}

/// Arguments of `cube run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub address: ManagerAddress,
    /// Task file: a JSON task spec.
    pub file: PathBuf,
}

/// Arguments of `cube stop`.
#[derive(Debug, Args)]
pub struct StopArgs {
    #[command(flatten)]
    pub address: ManagerAddress,
    /// Id of the task to stop.
    pub id: String,
}

/// Arguments of `cube status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub address: ManagerAddress,
    /// Show only this task.
    pub id: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// Arguments of `cube node`.
#[derive(Debug, Args)]
pub struct NodeArgs {
    #[command(flatten)]
    pub address: ManagerAddress,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

fn parse_size(text: &str) -> Result<ByteSize, String> {
    ByteSize::parse(text)
}

fn parse_duration(text: &str) -> Result<DurationSpec, String> {
    let duration = DurationSpec::parse(text)?;
    if duration.get().is_zero() {
        return Err("expected a duration above 0, such as 1s".to_owned());
    }
    Ok(duration)
}
