//! `docker-latency`: submit-to-running latency through cube against bare create and start,
//! on the local Docker Engine.
//!
//! Run with `cargo run --release -p cube-benches --bin docker-latency`; `--help` lists the
//! options. It needs the local image `cube-test/busybox:latest` (`scripts/build-test-image`).

use std::process::ExitCode;

use clap::Parser;
use cube_benches::args::DockerLatencyArgs;
use cube_benches::docker_latency;
use cube_benches::stats::Summary;
use env_logger::Env;

#[actix::main]
async fn main() -> ExitCode {
    env_logger::Builder::from_env(Env::default().default_filter_or("warn")).init();
    let args = DockerLatencyArgs::parse();
    let report = match docker_latency::run(&args).await {
        Ok(report) => report,
        Err(error) => {
            eprintln!("docker-latency failed: {:#}", anyhow::Error::new(error));
            return ExitCode::FAILURE;
        }
    };

    let line = |name: &str, summary: &Summary| {
        println!(
            "{name:<24} median {:>7.1} ms  p90 {:>7.1} ms  min {:>7.1} ms  max {:>7.1} ms",
            summary.median, summary.p90, summary.min, summary.max
        );
    };
    println!(
        "run {}: {} containers per side",
        report.run_id, report.bare.count
    );
    line("cube (manager stamps)", &report.cube_stamped);
    line("cube (client observed)", &report.cube_observed);
    line("bare create+start", &report.bare);
    println!(
        "ratio cube/bare: median {:.2}, p90 {:.2}",
        report.median_ratio(),
        report.p90_ratio()
    );
    println!(
        "removed {} containers labelled {}={}",
        report.removed,
        docker_latency::RUN_LABEL,
        report.run_id
    );
    ExitCode::SUCCESS
}
