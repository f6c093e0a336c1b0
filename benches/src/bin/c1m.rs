//! `c1m`: places many tasks onto many simulated nodes in one process and reports the time,
//! the peak memory and the spread of tasks over nodes.
//!
//! Run with `cargo run --release -p cube-benches --bin c1m -- --tasks 1000000 --nodes 5000`;
//! `--help` lists the options.

use std::process::ExitCode;

use clap::Parser;
use cube_benches::args::C1mArgs;
use cube_benches::c1m;
use env_logger::Env;

#[actix::main]
async fn main() -> ExitCode {
    env_logger::Builder::from_env(Env::default().default_filter_or("warn")).init();
    let args = C1mArgs::parse();
    let report = match c1m::run(&args).await {
        Ok(report) => report,
        Err(error) => {
            eprintln!("c1m failed: {:#}", anyhow::Error::new(error));
            return ExitCode::FAILURE;
        }
    };

    let seconds = report.elapsed.as_secs_f64();
    println!(
        "tasks: {} on {} nodes ({:?} nodes, policy {})",
        report.tasks, report.nodes, args.node_kind, args.policy
    );
    println!(
        "setup: {:.1} s to register the nodes",
        report.setup.as_secs_f64()
    );
    println!(
        "time: {seconds:.1} s from first submission to all running ({:.0} tasks/s)",
        report.tasks as f64 / seconds
    );
    match report.memory {
        Some(memory) => println!(
            "memory: peak {} (VmHWM), {} at the end (VmRSS)",
            memory.peak, memory.resident
        ),
        None => println!("memory: unknown (no /proc/self/status)"),
    }
    let spread = &report.per_node;
    println!(
        "tasks per node: min {} max {} mean {:.1} stddev {:.2}",
        spread.min, spread.max, spread.mean, spread.stddev
    );
    ExitCode::SUCCESS
}
