//! `cube manager`, `cube worker` and `cube dev`: the long-running processes.
//!
//! Each starts its actors inside the actix System that `main` runs, serves its HTTP API and
//! runs until SIGINT or SIGTERM.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, Addr};
use anyhow::{Context, Result, bail};
use cube_core::scheduler::POLICY_NAMES;
use cube_core::{DeclaredCapacity, NodeId};
use cube_manager::cluster::{ClusterBuilder, WorkerOptions};
use cube_manager::http::HttpConfig;
use cube_manager::liveness::check_interval_for;
use cube_manager::manager::{AddWorker, GetTasks, RequestStop};
use cube_manager::remote_worker::RemoteWorkerConfig;
use cube_manager::remote_worker::normalize_address;
use cube_manager::{Manager, ManagerConfig, RemoteWorker};
use cube_worker::join::{JoinConfig, Joiner};
use cube_worker::{DockerConfig, DockerRuntime, Worker, WorkerConfig};

use crate::args::{CapacityArgs, DevArgs, ManagerArgs, StoreKind, WorkerArgs};
use crate::commands::store::StoreChoice;

/// Time allowed for tasks to stop when `cube dev` shuts down, beyond their grace periods.
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(5);
/// Delay between two attempts to connect a worker listed on the command line.
const RECONNECT_DELAY: Duration = Duration::from_secs(5);

/// Runs the manager daemon until a signal arrives.
pub async fn manager(args: ManagerArgs) -> Result<()> {
    let mut config = manager_config(&args.scheduler)?;
    config.heartbeat_ttl = args.heartbeat_ttl.get();
    config.heartbeat_grace = args.heartbeat_grace.get();
    config.liveness_check_interval = Some(check_interval_for(
        config.heartbeat_ttl,
        config.heartbeat_grace,
    ));
    check_port_free(args.host, args.port)?;
    let store = StoreChoice::resolve(&args.store, "manager", StoreKind::Persistent)?;
    let manager = Manager::new(config, store.open()?).context("failed to create the manager")?;
    let known_workers = stored_worker_addresses(&manager, &args.workers);
    let manager = manager.start();
    let (server, address) = cube_manager::http::serve(
        manager.clone(),
        SocketAddr::new(args.host, args.port),
        HttpConfig::default(),
    )
    .await
    .with_context(|| format!("failed to listen on {}:{}", args.host, args.port))?;
    let handle = server.handle();
    actix::spawn(server);
    log::info!(
        "manager started address={address} scheduler={} store={}",
        args.scheduler,
        store.describe()
    );

    for worker in args.workers.into_iter().chain(known_workers) {
        actix::spawn(connect_worker(manager.clone(), worker));
    }

    wait_for_signal().await?;
    log::info!("manager stopping");
    handle.stop(true).await;
    Ok(())
}

/// Runs a worker daemon on the local Docker Engine until a signal arrives.
///
/// Containers keep running when the worker stops.
pub async fn worker(args: WorkerArgs) -> Result<()> {
    let name = match args.name {
        Some(name) => name,
        None => default_node_name()?,
    };
    let node = NodeId::new(name).context("invalid --name")?;
    check_port_free(args.host, args.port)?;
    let runtime = DockerRuntime::connect(&DockerConfig::default())
        .await
        .context("failed to connect to the Docker Engine; start dockerd or set DOCKER_HOST")?;
    let mut config = WorkerConfig::new(node.clone());
    config.capacity = declared_capacity(&args.capacity)?;
    config.publish_address = args.publish_address;
    config.heartbeat_interval = args.heartbeat_interval.get();
    config.reconcile_interval = Some(args.reconcile_interval.get());
    let store = StoreChoice::resolve(
        &args.store,
        &format!("worker-{node}"),
        StoreKind::Persistent,
    )?;
    log::info!("worker store node_id={node} store={}", store.describe());
    let worker = Worker::start(config, Arc::new(runtime), store.open()?);
    let (server, address) = cube_worker::http::serve(
        worker,
        SocketAddr::new(args.host, args.port),
        cube_worker::http::HttpOptions::default(),
    )
    .await
    .with_context(|| format!("failed to listen on {}:{}", args.host, args.port))?;
    let handle = server.handle();
    actix::spawn(server);
    log::info!("worker started node_id={node} address={address}");
    if let Some(manager) = args.manager {
        let advertise = advertise_address(args.advertise.as_deref(), address)?;
        let joiner = Joiner::new(JoinConfig::new(manager, advertise, node.clone()))
            .context("invalid --manager")?;
        actix::spawn(joiner.run());
    }

    wait_for_signal().await?;
    log::info!("worker stopping node_id={node}; its containers keep running");
    handle.stop(true).await;
    Ok(())
}

/// Runs a manager and `--workers` in-process workers on the local Docker Engine.
///
/// On a signal it stops every task it started before exiting, so no container outlives it.
pub async fn dev(args: DevArgs) -> Result<()> {
    check_port_free(args.host, args.port)?;
    let config = manager_config(&args.scheduler)?;
    let capacity = declared_capacity(&args.capacity)?;
    let data_dir = match StoreChoice::resolve(&args.store, "dev", StoreKind::Memory)? {
        StoreChoice::Memory => None,
        StoreChoice::Persistent(dir) => Some(dir),
    };
    let mut builder = ClusterBuilder::new()
        .manager_config(config)
        .docker(DockerConfig::default())
        .data_dir(data_dir);
    for index in 0..args.workers {
        // Each worker publishes on its own loopback address because each hands out dynamic
        // host ports on its own.
        let publish_address = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + index as u8));
        builder = builder.worker_with(WorkerOptions {
            name: format!("dev-worker-{}", index + 1),
            capacity,
            publish_address: Some(publish_address),
        });
    }
    let cluster = builder
        .start()
        .await
        .context("failed to start the dev cluster; is the Docker Engine running?")?;
    let (server, address) = cube_manager::http::serve(
        cluster.manager.clone(),
        SocketAddr::new(args.host, args.port),
        HttpConfig::default(),
    )
    .await
    .with_context(|| format!("failed to listen on {}:{}", args.host, args.port))?;
    let handle = server.handle();
    actix::spawn(server);
    log::info!(
        "dev cluster started address={address} workers={} scheduler={}",
        args.workers,
        args.scheduler
    );

    wait_for_signal().await?;
    log::info!("dev cluster stopping its tasks");
    handle.stop(true).await;
    stop_all_tasks(&cluster.manager).await;
    cluster.shutdown().await;
    Ok(())
}

/// Binds `host:port` once before any actor starts, so that a port in use fails start-up with
/// one clear error instead of an error raised while actors are torn down.
fn check_port_free(host: IpAddr, port: u16) -> Result<()> {
    if port == 0 {
        return Ok(());
    }
    let bind = SocketAddr::new(host, port);
    std::net::TcpListener::bind(bind)
        .map(drop)
        .with_context(|| format!("failed to listen on {bind}; choose another --port"))
}

fn manager_config(scheduler: &str) -> Result<ManagerConfig> {
    if !POLICY_NAMES.contains(&scheduler) {
        bail!(
            "unknown scheduler '{scheduler}'; use one of: {}",
            POLICY_NAMES.join(", ")
        );
    }
    let config = ManagerConfig {
        scheduler: scheduler.to_owned(),
        ..ManagerConfig::default()
    };
    config.validate().context("invalid manager settings")?;
    Ok(config)
}

fn declared_capacity(args: &CapacityArgs) -> Result<DeclaredCapacity> {
    if let Some(cpus) = args.cpus
        && (!cpus.is_finite() || cpus <= 0.0)
    {
        bail!("invalid --cpus {cpus}: expected a number of cores above 0, such as 2 or 0.5");
    }
    if args.memory.is_some_and(|memory| memory.bytes() == 0) {
        bail!("invalid --memory 0: expected a size above 0, such as 2GiB");
    }
    Ok(DeclaredCapacity {
        cpu: args.cpus,
        memory: args.memory,
        disk: args.disk,
    })
}

/// The addresses of remote workers the manager's store knows that `listed` does not name,
/// so that a restarted manager reconnects them.
fn stored_worker_addresses(manager: &Manager, listed: &[String]) -> Vec<String> {
    manager
        .stored_nodes()
        .iter()
        .filter_map(|node| node.address.clone())
        .filter(|address| !listed.contains(address))
        .collect()
}

/// Connects a worker listed on the command line, retrying until it answers.
async fn connect_worker(manager: Addr<Manager>, address: String) {
    loop {
        // The watcher lets the manager mark the node unreachable while its report stream is down.
        let watcher = manager.downgrade().recipient();
        match RemoteWorker::connect_watched(&address, RemoteWorkerConfig::default(), watcher).await
        {
            Ok(handle) => {
                let node = handle.node.clone();
                match manager
                    .send(AddWorker {
                        handle,
                        address: Some(address.clone()),
                    })
                    .await
                {
                    Ok(Ok(_)) => log::info!("worker added node_id={node} address={address}"),
                    Ok(Err(error)) => {
                        log::error!(
                            "failed to add worker node_id={node} address={address}: {error:#}"
                        )
                    }
                    Err(error) => {
                        log::error!("manager stopped while adding worker {address}: {error}")
                    }
                }
                return;
            }
            Err(error) => {
                log::warn!(
                    "failed to connect worker {address}, retrying in {RECONNECT_DELAY:?}: {error}"
                );
                actix_rt::time::sleep(RECONNECT_DELAY).await;
            }
        }
    }
}

/// Stops every task that is not finished and waits for them to end.
async fn stop_all_tasks(manager: &Addr<Manager>) {
    let Ok(tasks) = manager.send(GetTasks).await else {
        return;
    };
    let mut longest_grace = Duration::ZERO;
    for task in tasks.iter().filter(|task| !task.state.is_terminal()) {
        longest_grace = longest_grace.max(task.spec.stop_grace_period.get());
        if let Ok(Err(error)) = manager.send(RequestStop { task_id: task.id }).await {
            log::warn!("failed to stop task {}: {error:#}", task.id);
        }
    }
    let deadline = Instant::now() + longest_grace + SHUTDOWN_MARGIN;
    while Instant::now() < deadline {
        let Ok(tasks) = manager.send(GetTasks).await else {
            return;
        };
        let running = tasks
            .iter()
            .filter(|task| !task.state.is_terminal())
            .count();
        if running == 0 {
            return;
        }
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    log::warn!("some tasks did not stop before the shutdown deadline");
}

/// Waits for SIGINT (Ctrl-C) or SIGTERM.
async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};

    let mut terminate = signal(SignalKind::terminate()).context("failed to watch SIGTERM")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("failed to watch SIGINT")?,
        _ = terminate.recv() => {}
    }
    Ok(())
}

fn default_node_name() -> Result<String> {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .context("failed to read the host name; pass --name")?;
    Ok(hostname.trim().to_owned())
}

/// Returns the URL at which the manager reaches this worker: `--advertise`, or the address
/// the worker's API is bound to.
fn advertise_address(advertise: Option<&str>, bound: SocketAddr) -> Result<String> {
    let address = match advertise {
        Some(advertise) => advertise.trim().to_owned(),
        None if bound.ip().is_unspecified() => bail!(
            "--manager needs --advertise when the worker listens on {}, which the manager \
             cannot connect to; pass the address the manager should use, such as \
             http://10.0.0.5:{}",
            bound.ip(),
            bound.port()
        ),
        None => format!("http://{bound}"),
    };
    normalize_address(&address).with_context(|| format!("invalid --advertise '{address}'"))?;
    Ok(address)
}
