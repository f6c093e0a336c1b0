//! The in-process cluster on the local Docker Engine with the `cube-test/busybox:latest`
//! image: a web server reachable on its dynamic port, stop removing the container, a missing
//! image failing the task, and two tasks on one fixed host port.
//!
//! Containers carry the label `cube-test.run=<run id>`; a guard removes exactly those when
//! the test ends, passed or not. No test pulls: every spec uses pull policy `never`.

use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::process::Command;
use std::time::{Duration, Instant};

use cube_core::node::DeclaredCapacity;
use cube_core::resources::ByteSize;
use cube_core::spec::TaskSpec;
use cube_core::task::TaskState;
use cube_manager::cluster::{Cluster, ClusterBuilder, WorkerOptions};
use cube_worker::docker::DockerConfig;

use crate::util::*;

const IMAGE: &str = "cube-test/busybox:latest";
const RUN_LABEL: &str = "cube-test.run";

/// Removes every container labelled with this run's id when dropped.
struct RunGuard {
    run_id: String,
}

impl RunGuard {
    fn new() -> Self {
        ensure_image();
        Self {
            run_id: uuid::Uuid::new_v4().to_string(),
        }
    }

    fn label(&self, spec: &mut TaskSpec) {
        spec.labels.insert(RUN_LABEL.into(), self.run_id.clone());
    }

    /// Ids of this run's containers, running or not, with `extra` filters.
    fn containers(&self, extra: &[String]) -> Vec<String> {
        let mut args = vec![
            "ps".to_owned(),
            "-aq".to_owned(),
            "--filter".to_owned(),
            format!("label={RUN_LABEL}={}", self.run_id),
        ];
        for filter in extra {
            args.push("--filter".to_owned());
            args.push(filter.clone());
        }
        let output = Command::new("docker")
            .args(&args)
            .output()
            .expect("the docker CLI runs");
        String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        let ids = self.containers(&[]);
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .arg("rm")
                .arg("-f")
                .args(&ids)
                .output();
        }
    }
}

/// Builds the test image if it is missing; the script is idempotent and pulls nothing.
fn ensure_image() {
    let present = Command::new("docker")
        .args(["image", "inspect", IMAGE])
        .output()
        .expect("the docker CLI runs; is Docker installed?")
        .status
        .success();
    if !present {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/build-test-image");
        let status = Command::new(script)
            .status()
            .expect("build-test-image runs");
        assert!(status.success(), "scripts/build-test-image failed");
    }
}

/// Publish address of [`start_docker_cluster`]'s worker: not 127.0.0.1, where other
/// processes' clusters hand out the same dynamic ports.
const WEB_ADDRESS: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 22);

async fn start_docker_cluster() -> Cluster {
    init_logging();
    let capacity = DeclaredCapacity {
        cpu: Some(2.0),
        memory: Some(ByteSize::gib(1)),
        disk: Some(ByteSize::gib(10)),
    };
    bounded(
        ClusterBuilder::new()
            .docker(DockerConfig::default())
            .worker_with(WorkerOptions {
                name: "docker-1".to_owned(),
                capacity,
                publish_address: Some(IpAddr::V4(WEB_ADDRESS)),
            })
            .start(),
        "cluster did not start: is the Docker Engine running (systemctl start docker)?",
    )
    .await
    .expect("cluster connects to Docker; start the engine if this fails")
}

fn web_spec(guard: &RunGuard) -> TaskSpec {
    let mut spec = TaskSpec::new("web", IMAGE);
    spec.pull_policy = cube_core::spec::PullPolicy::Never;
    spec.command = ["busybox", "httpd", "-f", "-p", "80", "-h", "/www"]
        .map(String::from)
        .to_vec();
    spec.memory = ByteSize::mib(32);
    spec.stop_grace_period = cube_core::duration::DurationSpec::from_secs(2);
    spec.ports = vec![port(80, None)];
    guard.label(&mut spec);
    spec
}

#[actix::test]
async fn web_example_serves_its_page_and_stop_removes_it() {
    let guard = RunGuard::new();
    let cluster = start_docker_cluster().await;

    let submitted_at = Instant::now();
    let task = submit(&cluster.manager, web_spec(&guard)).await;
    let running = wait_for_task(
        &cluster.manager,
        task.id,
        "web task never ran: is the image present and the engine healthy?",
        |task| task.state == TaskState::Running || task.state.is_terminal(),
    )
    .await;
    println!("submit to running: {:?}", submitted_at.elapsed());
    assert_eq!(running.state, TaskState::Running, "{running:#?}");

    let binding = running.host_ports.first().expect("a bound host port");
    assert_eq!(binding.host_ip, WEB_ADDRESS.to_string());
    let url = format!("http://{}:{}/", binding.host_ip, binding.host_port);
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let page = wait_until(
        Duration::from_secs(10),
        "httpd did not answer on its published port",
        || async {
            let response = client.get(&url).send().await.ok()?;
            response.status().is_success().then_some(())?;
            response.text().await.ok()
        },
    )
    .await;
    assert!(page.contains("hello from cube"), "{page}");
    assert_eq!(
        guard
            .containers(&[format!("label=cube.task={}", task.id)])
            .len(),
        1
    );

    stop(&cluster.manager, task.id).await;

    let stopped = wait_for_task(
        &cluster.manager,
        task.id,
        "web task did not end after its stop",
        |task| task.state.is_terminal(),
    )
    .await;
    assert_eq!(stopped.state, TaskState::Completed);
    wait_until(
        Duration::from_secs(20),
        "the stopped task's container was not removed",
        || async {
            guard
                .containers(&[format!("label=cube.task={}", task.id)])
                .is_empty()
                .then_some(())
        },
    )
    .await;
}

#[actix::test]
async fn missing_image_fails_task_naming_image() {
    let guard = RunGuard::new();
    let cluster = start_docker_cluster().await;
    let image = format!("cube-test/missing-{}:latest", guard.run_id);
    let mut spec = web_spec(&guard);
    spec.image = image.clone();
    // Each failed start is retried under the default policy; a short back-off keeps the
    // three restarts well inside the wait.
    spec.restart_policy.backoff = cube_core::duration::DurationSpec::from_millis(100);

    let task = submit(&cluster.manager, spec).await;

    let failed = wait_for_task(
        &cluster.manager,
        task.id,
        "a task with a missing image never ended",
        |task| task.state.is_terminal(),
    )
    .await;
    assert_eq!(failed.state, TaskState::Failed);
    let error = failed.last_error.expect("the failure is recorded");
    assert!(error.contains(&image), "{error}");
    assert!(
        guard.containers(&[]).is_empty(),
        "a container was left behind"
    );
}

/// Publish address of the port conflict test's worker, used by no other test.
const CONFLICT_ADDRESS: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 23);

#[actix::test]
async fn docker_fixed_port_conflict_leaves_second_pending() {
    let guard = RunGuard::new();
    init_logging();
    // A port that is free on the address now; the worker publishes there and nowhere else.
    let host_port = TcpListener::bind((CONFLICT_ADDRESS, 0))
        .expect("bind 127.0.0.23: is the whole of 127.0.0.0/8 on loopback?")
        .local_addr()
        .unwrap()
        .port();
    let cluster = bounded(
        ClusterBuilder::new()
            .docker(DockerConfig::default())
            .worker_with(WorkerOptions {
                name: "docker-ports".to_owned(),
                capacity: DeclaredCapacity {
                    cpu: Some(2.0),
                    memory: Some(ByteSize::gib(1)),
                    disk: Some(ByteSize::gib(10)),
                },
                publish_address: Some(IpAddr::V4(CONFLICT_ADDRESS)),
            })
            .start(),
        "cluster did not start: is the Docker Engine running?",
    )
    .await
    .expect("cluster connects to Docker");
    let mut web = web_spec(&guard);
    web.ports = vec![port(80, Some(host_port))];

    let first = submit(&cluster.manager, web.clone()).await;
    let second = submit(&cluster.manager, web).await;

    let running = wait_for_task(
        &cluster.manager,
        first.id,
        "first web task never ran: is the image present and the engine healthy?",
        |task| task.state == TaskState::Running || task.state.is_terminal(),
    )
    .await;
    assert_eq!(running.state, TaskState::Running, "{running:#?}");
    let binding = running.host_ports.first().expect("a bound host port");
    assert_eq!(binding.host_ip, CONFLICT_ADDRESS.to_string());
    assert_eq!(binding.host_port, host_port);
    let url = format!("http://{CONFLICT_ADDRESS}:{host_port}/");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let page = wait_until(
        Duration::from_secs(10),
        "httpd did not answer on its fixed port",
        || async {
            let response = client.get(&url).send().await.ok()?;
            response.status().is_success().then_some(())?;
            response.text().await.ok()
        },
    )
    .await;
    assert!(page.contains("hello from cube"), "{page}");

    let pending = wait_for_task(
        &cluster.manager,
        second.id,
        "second web task should record why it waits",
        |task| task.pending_reason.is_some(),
    )
    .await;
    assert_eq!(pending.state, TaskState::Pending);
    assert_eq!(
        pending.pending_reason,
        Some(format!("1 node evaluated: 1 has port {host_port} in use"))
    );
    assert_eq!(
        guard.containers(&[]).len(),
        1,
        "the second task got a container"
    );

    stop(&cluster.manager, first.id).await;
    stop(&cluster.manager, second.id).await;
    wait_for_task(
        &cluster.manager,
        first.id,
        "first web task did not end",
        |task| task.state.is_terminal(),
    )
    .await;
}
