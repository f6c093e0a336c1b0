//! The `cube` command: daemons (`manager`, `worker`, `dev`) and clients of the manager's API.

mod args;
mod client;
mod commands;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command};
use crate::commands::{client_commands, daemons};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Manager(_) | Command::Worker(_) | Command::Dev(_) => "info",
        _ => "warn",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level))
        .init();

    let result = actix::System::new().block_on(async move {
        match cli.command {
            Command::Manager(args) => daemons::manager(args).await,
            Command::Worker(args) => daemons::worker(args).await,
            Command::Dev(args) => daemons::dev(args).await,
            Command::Run(args) => client_commands::run(args).await,
            Command::Stop(args) => client_commands::stop(args).await,
            Command::Status(args) => client_commands::status(args).await,
            Command::Node(args) => client_commands::node(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
