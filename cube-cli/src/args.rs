//! Command-line arguments of the `cube` binary, as clap derive structs.
//!
//! The `///` lines are the help text. Values are checked here only as far as clap can; the
//! commands validate the rest and say what to do on failure.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use cube_core::ByteSize;

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
    /// Placement policy.
    #[arg(short, long, default_value = "roundrobin")]
    pub scheduler: String,
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
    #[command(flatten)]
    pub capacity: CapacityArgs,
}

/// Declared capacity, overriding what the host reports.
#[derive(Debug, Args, Clone, Copy, Default)]
pub struct CapacityArgs {
    /// CPU cores offered to tasks (fractional allowed); defaults to the host's CPU count.
    #[arg(long)]
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
    /// Placement policy.
    #[arg(short, long, default_value = "roundrobin")]
    pub scheduler: String,
    #[command(flatten)]
    pub capacity: CapacityArgs,
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
