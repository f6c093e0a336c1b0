//! Real-Docker tests against the local engine and the `cube-test/busybox:latest` image.
//!
//! Each test gets its own run id. Containers the tests create directly carry
//! `cube.test=<run id>`. Spec labels may not start with `cube.`, so containers a Worker
//! creates are found by `cube.node=<node id>` instead, and the node id contains the run id. A guard removes
//! exactly those containers when the test ends, even on failure. No test pulls from a
//! registry: specs use pull policy `never`, and the one pull goes to `127.0.0.1:1`, where
//! nothing listens.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use actix::Addr;
use cube_core::{
    ByteSize, DurationSpec, HealthCheck, HealthStatus, LABEL_NODE, LABEL_TASK, PullPolicy,
    RESTART_JITTER, ReportBody, RestartMode, RestartPolicy, STOPPED_BY_USER, StopTask, TaskState,
};
use cube_worker::runtime::{
    ContainerConfig, ContainerExit, ContainerRuntime, ContainerStatus, RuntimeError,
};
use cube_worker::{DockerConfig, DockerRuntime, Worker};
use uuid::Uuid;

use crate::support::{ReportProbe, config, spec, spec_with_port, start_msg, start_worker};

const IMAGE: &str = "cube-test/busybox:latest";
const TEST_LABEL: &str = "cube.test";
/// Upper bound of one Docker test.
const TEST_TIMEOUT: Duration = Duration::from_secs(90);

/// This run's containers, removed on drop.
struct Cleanup {
    run_id: String,
    node: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        // The test's runtime may be gone, so the cleanup uses the docker CLI.
        for filter in [
            format!("label={TEST_LABEL}={}", self.run_id),
            format!("label={LABEL_NODE}={}", self.node),
        ] {
            let listed = std::process::Command::new("docker")
                .args(["ps", "-aq", "--filter", &filter])
                .output();
            let Ok(listed) = listed else { continue };
            let ids = String::from_utf8_lossy(&listed.stdout);
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let _ = std::process::Command::new("docker")
                    .args(["rm", "-f"])
                    .args(&ids)
                    .output();
            }
        }
    }
}

/// Connects to Docker, makes sure the test image exists, and returns the runtime with a
/// cleanup guard for a fresh run id.
async fn setup(timeout: Duration) -> (DockerRuntime, Cleanup) {
    let _ = env_logger::builder().is_test(true).try_init();
    let docker_config = DockerConfig {
        timeout,
        ..DockerConfig::default()
    };
    let runtime = DockerRuntime::connect(&docker_config)
        .await
        .unwrap_or_else(|error| {
            panic!(
                "these tests need a running Docker Engine: {}. Start dockerd (or set DOCKER_HOST), \
             then run scripts/build-test-image",
                cube_worker::runtime::error_chain(&error)
            )
        });
    if runtime
        .ensure_image(IMAGE, PullPolicy::Never)
        .await
        .is_err()
    {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/build-test-image");
        let status = std::process::Command::new(script).status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "image {IMAGE} is missing and {script} failed to build it"
        );
    }
    let run_id = Uuid::new_v4().simple().to_string()[..12].to_string();
    let cleanup = Cleanup {
        node: format!("docker-test-{run_id}"),
        run_id,
    };
    (runtime, cleanup)
}

/// Runs `test` with a time limit, so a stuck engine fails the test instead of hanging it.
async fn bounded<F: Future<Output = ()>>(test: F) {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .unwrap_or_else(|_| panic!("docker test took longer than {TEST_TIMEOUT:?}"));
}

fn docker_worker(runtime: &DockerRuntime, cleanup: &Cleanup) -> Addr<Worker> {
    start_worker(config(&cleanup.node), Arc::new(runtime.clone()))
}

/// GETs `/` from 127.0.0.1:`port` and returns the whole response, retrying while the server
/// in the container is still starting.
fn http_get(port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let attempt = (|| -> std::io::Result<String> {
            let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            stream.write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer)?;
            Ok(answer)
        })();
        match attempt {
            Ok(answer) if !answer.is_empty() => return answer,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            other => panic!("GET on 127.0.0.1:{port} failed: {other:?}"),
        }
    }
}

#[actix::test]
async fn docker_httpd_serves_page_and_stop_removes() {
    let (runtime, cleanup) = setup(Duration::from_secs(60)).await;
    bounded(async {
        let worker = docker_worker(&runtime, &cleanup);
        let mut probe = ReportProbe::subscribe(&worker, 0);
        let mut spec = spec_with_port(IMAGE, 80);
        spec.command = ["httpd", "-f", "-p", "80", "-h", "/www"]
            .map(String::from)
            .to_vec();
        spec.stop_grace_period = DurationSpec::from_secs(2);
        let start = start_msg(spec);
        let task_id = start.task_id;

        let submitted = Instant::now();
        worker.send(start).await.unwrap().unwrap();
        let running = probe.wait_status(task_id, TaskState::Running).await;
        println!("submit to running: {:?}", submitted.elapsed());

        let port = &running.host_ports[0];
        assert_eq!(port.host_ip, "127.0.0.1");
        let page = tokio::task::spawn_blocking({
            let host_port = port.host_port;
            move || http_get(host_port)
        })
        .await
        .unwrap();
        assert!(page.starts_with("HTTP/1."), "{page}");
        assert!(page.contains("hello from cube"), "{page}");

        let container = running.container_id.clone().unwrap();
        let info = runtime.inspect_container(&container).await.unwrap();
        assert_eq!(info.labels["cube.task"], task_id.to_string());
        assert_eq!(info.labels[LABEL_NODE], cleanup.node);
        assert!(
            info.name.starts_with(&format!("cube-{task_id}-")),
            "{}",
            info.name
        );

        let stop = StopTask {
            task_id,
            attempt: None,
            reason: STOPPED_BY_USER.into(),
        };
        worker.send(stop).await.unwrap().unwrap();
        let completed = probe.wait_status(task_id, TaskState::Completed).await;
        assert_eq!(completed.reason, STOPPED_BY_USER);
        let gone = runtime.inspect_container(&container).await;
        assert!(
            matches!(gone, Err(RuntimeError::ContainerNotFound { .. })),
            "container still exists: {gone:?}"
        );
    })
    .await;
}

#[actix::test]
async fn docker_missing_image_fails_naming_image() {
    let (runtime, cleanup) = setup(Duration::from_secs(60)).await;
    bounded(async {
        let worker = docker_worker(&runtime, &cleanup);
        let mut probe = ReportProbe::subscribe(&worker, 0);
        let image = format!("cube-test/absent-{}:1", cleanup.run_id);
        let start = start_msg(spec(&image));
        let task_id = start.task_id;
        worker.send(start).await.unwrap().unwrap();

        let failed = probe.wait_status(task_id, TaskState::Failed).await;
        assert!(failed.reason.contains(&image), "{}", failed.reason);
        assert!(failed.reason.contains("never"), "{}", failed.reason);
        let left = runtime
            .list_containers(LABEL_NODE, Some(&cleanup.node))
            .await
            .unwrap();
        assert!(left.is_empty(), "containers left: {left:?}");
    })
    .await;
}

#[actix::test]
async fn docker_pull_failure_names_image() {
    let (runtime, _cleanup) = setup(Duration::from_secs(60)).await;
    bounded(async {
        // Nothing listens on port 1, so the engine fails at once without leaving the host.
        let image = "127.0.0.1:1/cube-test/absent:1";
        let error = runtime
            .ensure_image(image, PullPolicy::IfNotPresent)
            .await
            .unwrap_err();
        assert!(
            matches!(&error, RuntimeError::ImagePull { image: named, .. } if named == image),
            "{error:?}"
        );
        assert!(error.to_string().contains(image), "{error}");
    })
    .await;
}

#[actix::test]
async fn docker_exit_three_reports_failed() {
    let (runtime, cleanup) = setup(Duration::from_secs(60)).await;
    bounded(async {
        let worker = docker_worker(&runtime, &cleanup);
        let mut probe = ReportProbe::subscribe(&worker, 0);
        let mut spec = spec(IMAGE);
        spec.command = ["sh", "-c", "exit 3"].map(String::from).to_vec();
        let start = start_msg(spec);
        let task_id = start.task_id;
        worker.send(start).await.unwrap().unwrap();

        let failed = probe.wait_status(task_id, TaskState::Failed).await;
        assert_eq!(failed.exit_code, Some(3));
        let container = failed.container_id.expect("the container was created");
        let deadline = Instant::now() + Duration::from_secs(10);
        while runtime.inspect_container(&container).await.is_ok() {
            assert!(
                Instant::now() < deadline,
                "exited container was not removed"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
}

#[actix::test]
async fn docker_stop_kills_sigterm_ignoring_container_after_grace() {
    let (runtime, cleanup) = setup(Duration::from_secs(60)).await;
    bounded(async {
        let worker = docker_worker(&runtime, &cleanup);
        let mut probe = ReportProbe::subscribe(&worker, 0);
        let mut spec = spec(IMAGE);
        spec.command = ["sh", "-c", "trap '' TERM; sleep 300"]
            .map(String::from)
            .to_vec();
        spec.stop_grace_period = DurationSpec::from_secs(1);
        let start = start_msg(spec);
        let task_id = start.task_id;
        worker.send(start).await.unwrap().unwrap();
        probe.wait_status(task_id, TaskState::Running).await;

        let stop_sent = Instant::now();
        let stop = StopTask {
            task_id,
            attempt: None,
            reason: STOPPED_BY_USER.into(),
        };
        worker.send(stop).await.unwrap().unwrap();
        let completed = probe.wait_status(task_id, TaskState::Completed).await;
        let took = stop_sent.elapsed();
        assert!(
            took >= Duration::from_secs(1),
            "stopped before the grace period: {took:?}"
        );
        assert!(took < Duration::from_secs(6), "stop took {took:?}");
        assert_eq!(completed.reason, STOPPED_BY_USER);
    })
    .await;
}

#[actix::test]
async fn docker_wait_outlives_client_timeout() {
    // A 1 s client timeout covers only the response headers, which the engine sends at once.
    let (runtime, cleanup) = setup(Duration::from_secs(1)).await;
    bounded(async {
        let config = ContainerConfig {
            name: format!("cube-test-wait-{}", cleanup.run_id),
            image: IMAGE.into(),
            command: ["sleep", "3"].map(String::from).to_vec(),
            env: BTreeMap::new(),
            cpu: 0.1,
            memory: ByteSize::mib(16),
            labels: BTreeMap::from([(TEST_LABEL.to_string(), cleanup.run_id.clone())]),
            ports: Vec::new(),
            publish_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
        };
        let started = runtime.start_container(config).await.unwrap();
        let exit = runtime.wait_container(&started.id).await.unwrap();
        assert_eq!(exit, ContainerExit::Exited { code: 0 });
        let listed = runtime
            .list_containers(TEST_LABEL, Some(&cleanup.run_id))
            .await
            .unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id, started.id);
        runtime.remove_container(&started.id).await.unwrap();
        runtime
            .remove_container(&started.id)
            .await
            .expect("a second remove succeeds");
    })
    .await;
}

#[actix::test]
async fn docker_always_restart_backs_off_and_bounds_containers() {
    let (runtime, cleanup) = setup(Duration::from_secs(60)).await;
    bounded(async {
        let worker = docker_worker(&runtime, &cleanup);
        let mut probe = ReportProbe::subscribe(&worker, 0);
        let mut spec = spec(IMAGE);
        spec.command = ["sh", "-c", "exit 1"].map(String::from).to_vec();
        let backoff = Duration::from_millis(500);
        spec.restart_policy = RestartPolicy {
            mode: RestartMode::Always,
            max_attempts: 4,
            backoff: DurationSpec(backoff),
            max_backoff: DurationSpec::from_secs(30),
        };
        let start = start_msg(spec);
        let task_id = start.task_id;

        // Count the task's containers every 20 ms while it restarts.
        let max_containers = Arc::new(AtomicUsize::new(0));
        let counting = Arc::new(AtomicBool::new(true));
        let counter = {
            let (runtime, max_seen, counting) =
                (runtime.clone(), max_containers.clone(), counting.clone());
            actix::spawn(async move {
                while counting.load(Ordering::Relaxed) {
                    let listed = runtime
                        .list_containers(LABEL_TASK, Some(&task_id.to_string()))
                        .await
                        .expect("docker lists containers");
                    max_seen.fetch_max(listed.len(), Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };

        worker.send(start).await.unwrap().unwrap();
        let mut starts = Vec::new();
        let mut announced = Vec::new();
        let failed = loop {
            let report = probe.next().await;
            let status = match report.body {
                ReportBody::TaskStatus(status) if status.task_id == task_id => status,
                _ => continue,
            };
            match status.state {
                TaskState::Running => starts.push(Instant::now()),
                TaskState::Scheduled => {
                    let next = status.next_attempt_at.expect("a waiting report has a time");
                    announced.push((next - report.at).to_std().unwrap_or_default());
                }
                TaskState::Failed => break status,
                _ => {}
            }
        };
        counting.store(false, Ordering::Relaxed);
        counter.await.unwrap();

        assert_eq!(
            failed.reason,
            "container exited with code 1; restart limit of 4 reached"
        );
        assert_eq!(starts.len(), 5, "one start and four restarts");
        // The delays the worker chose double, so they grow whatever the jitter.
        assert_eq!(announced.len(), 4);
        assert!(
            announced.windows(2).all(|pair| pair[1] > pair[0]),
            "back-off delays do not grow: {announced:?}"
        );
        // Engine calls add a varying overhead to each observed gap, so only the lower bound
        // and the overall growth are checked there.
        let gaps: Vec<Duration> = starts.windows(2).map(|pair| pair[1] - pair[0]).collect();
        for (index, gap) in gaps.iter().enumerate() {
            let least = (backoff * 2u32.pow(index as u32)).mul_f64(1.0 - RESTART_JITTER);
            assert!(
                *gap >= least,
                "restart {} came before its back-off of at least {least:?}: {gaps:?}",
                index + 1
            );
        }
        assert!(
            gaps[3] > gaps[0] * 2,
            "gaps between restarts do not grow: {gaps:?}"
        );
        let max_seen = max_containers.load(Ordering::Relaxed);
        assert!(
            (1..=2).contains(&max_seen),
            "the task had {max_seen} containers at once"
        );
        let left = runtime
            .list_containers(LABEL_TASK, Some(&task_id.to_string()))
            .await
            .unwrap();
        assert!(left.is_empty(), "containers left behind: {left:?}");
    })
    .await;
}

#[actix::test]
async fn docker_httpd_health_checks_pass_and_missing_path_restarts() {
    let (runtime, cleanup) = setup(Duration::from_secs(60)).await;
    bounded(async {
        let worker = docker_worker(&runtime, &cleanup);
        let mut probe = ReportProbe::subscribe(&worker, 0);
        let checked_httpd = |path: &str| {
            let mut spec = spec_with_port(IMAGE, 80);
            spec.command = ["httpd", "-f", "-p", "80", "-h", "/www"]
                .map(String::from)
                .to_vec();
            spec.stop_grace_period = DurationSpec::from_secs(2);
            spec.health_check = Some(HealthCheck {
                path: path.into(),
                port: 80,
                interval: DurationSpec::from_millis(500),
                timeout: DurationSpec::from_millis(400),
                failure_threshold: 2,
            });
            spec
        };
        let served = start_msg(checked_httpd("/index.html"));
        let mut missing_spec = checked_httpd("/missing.html");
        missing_spec.restart_policy = RestartPolicy {
            mode: RestartMode::OnFailure,
            max_attempts: 1,
            backoff: DurationSpec::from_millis(200),
            max_backoff: DurationSpec::from_secs(1),
        };
        let missing = start_msg(missing_spec);
        let (served_id, missing_id) = (served.task_id, missing.task_id);
        worker.send(served).await.unwrap().unwrap();
        worker.send(missing).await.unwrap().unwrap();

        let mut served_health = Vec::new();
        let mut missing_health = Vec::new();
        let mut missing_states = Vec::new();
        let missing_end = loop {
            match probe.next().await.body {
                ReportBody::TaskHealth(report) if report.task_id == served_id => {
                    served_health.push(report.health);
                }
                ReportBody::TaskHealth(report) if report.task_id == missing_id => {
                    missing_health.push(report.health);
                }
                ReportBody::TaskStatus(status) if status.task_id == missing_id => {
                    missing_states.push(status.state);
                    if status.state.is_terminal() {
                        break status;
                    }
                }
                _ => {}
            }
        };

        let not_found = "GET /missing.html returned 404 Not Found";
        assert_eq!(
            missing_states,
            vec![
                TaskState::Running,
                TaskState::Scheduled,
                TaskState::Running,
                TaskState::Failed
            ]
        );
        assert_eq!(
            missing_end.reason,
            format!("health check failed 2 times: {not_found}; restart limit of 1 reached")
        );
        assert_eq!(missing_health.len(), 2, "{missing_health:#?}");
        for health in &missing_health {
            assert_eq!(health.status, HealthStatus::Unhealthy);
            assert_eq!(health.last_error.as_deref(), Some(not_found));
        }
        let container = missing_end.container_id.expect("the container was created");
        let gone = runtime.inspect_container(&container).await;
        assert!(
            matches!(gone, Err(RuntimeError::ContainerNotFound { .. })),
            "unhealthy container still exists: {gone:?}"
        );

        // By now the served task has had several checks; it is healthy and still running.
        assert_eq!(served_health.len(), 1, "{served_health:#?}");
        assert_eq!(served_health[0].status, HealthStatus::Healthy);
        let statuses = probe.statuses_of(served_id);
        assert_eq!(statuses.len(), 1, "{statuses:#?}");
        assert_eq!(statuses[0].state, TaskState::Running);

        let stop = StopTask {
            task_id: served_id,
            attempt: None,
            reason: STOPPED_BY_USER.into(),
        };
        worker.send(stop).await.unwrap().unwrap();
        probe.wait_status(served_id, TaskState::Completed).await;
        let left = runtime
            .list_containers(LABEL_NODE, Some(&cleanup.node))
            .await
            .unwrap();
        assert!(left.is_empty(), "containers left: {left:?}");
    })
    .await;
}

#[actix::test]
async fn docker_removed_container_restarts_and_stop_of_gone_one_completes() {
    let (runtime, cleanup) = setup(Duration::from_secs(60)).await;
    bounded(async {
        let mut worker_config = config(&cleanup.node);
        // An hour-long period proves that the engine's wait, not the reconcile, saw the removal.
        worker_config.reconcile_interval = Some(Duration::from_secs(3600));
        let worker = start_worker(worker_config, Arc::new(runtime.clone()));
        let mut probe = ReportProbe::subscribe(&worker, 0);
        let mut spec = spec(IMAGE);
        spec.command = ["sleep", "300"].map(String::from).to_vec();
        spec.restart_policy = RestartPolicy {
            mode: RestartMode::OnFailure,
            max_attempts: 3,
            backoff: DurationSpec::from_millis(200),
            max_backoff: DurationSpec::from_secs(1),
        };
        let start = start_msg(spec);
        let task_id = start.task_id;
        worker.send(start).await.unwrap().unwrap();
        let first = probe.wait_status(task_id, TaskState::Running).await;
        let first_container = first.container_id.clone().expect("a running task has one");

        let removed_at = Instant::now();
        docker_rm_force(&first_container.0);
        let left = loop {
            if let ReportBody::TaskStatus(status) = probe.next().await.body
                && status.task_id == task_id
                && status.state != TaskState::Running
            {
                break status;
            }
        };
        let noticed = removed_at.elapsed();
        assert!(
            noticed < Duration::from_secs(10),
            "the removal was noticed after {noticed:?}"
        );
        assert_eq!(left.attempt, first.attempt);
        assert_eq!(left.state, TaskState::Scheduled, "on-failure restarts it");
        assert!(
            left.reason.contains("code 137") || left.reason.contains("container missing"),
            "unexpected reason: {}",
            left.reason
        );

        let second = probe.wait_status(task_id, TaskState::Running).await;
        assert_ne!(second.attempt, first.attempt);
        assert_eq!(second.replaces, Some(first.attempt));
        assert_eq!(second.restart_count, 1);
        let second_container = second.container_id.clone().expect("a running task has one");
        assert_ne!(second_container, first_container);
        let inspected = runtime.inspect_container(&second_container).await.unwrap();
        assert_eq!(inspected.status, ContainerStatus::Running);

        // The stop meets a container that is already gone, whichever path sees it first.
        docker_rm_force(&second_container.0);
        let stop = StopTask {
            task_id,
            attempt: None,
            reason: STOPPED_BY_USER.to_owned(),
        };
        worker.send(stop).await.unwrap().unwrap();
        let completed = probe.wait_status(task_id, TaskState::Completed).await;
        assert_eq!(completed.reason, STOPPED_BY_USER);
        let statuses = probe.statuses_of(task_id);
        let running = statuses.iter().filter(|s| s.state == TaskState::Running);
        assert_eq!(
            running.count(),
            2,
            "no restart after the stop: {statuses:#?}"
        );
        let left = runtime
            .list_containers(LABEL_TASK, Some(&task_id.to_string()))
            .await
            .unwrap();
        assert!(left.is_empty(), "containers left behind: {left:?}");
    })
    .await;
}

/// Removes a container with `docker rm -f`, behind the worker's back.
fn docker_rm_force(id: &str) {
    let output = std::process::Command::new("docker")
        .args(["rm", "-f", id])
        .output()
        .expect("docker CLI runs");
    assert!(
        output.status.success(),
        "docker rm -f {id} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
