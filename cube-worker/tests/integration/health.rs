//! HTTP health checks on the simulated runtime, against HTTP servers the tests run on
//! 127.0.0.1.
//!
//! The simulated runtime binds each test image's container port to a test server's real
//! port, so the worker probes that server as if it were the container's process. Time is
//! real here: the servers respond over real sockets, and the tests measure when checks
//! arrive. Servers run on threads of their own, so their timestamps do not depend on the
//! actor thread under test.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cube_core::{
    DurationSpec, HealthCheck, HealthStatus, ReportBody, RestartMode, RestartPolicy,
    STOPPED_BY_USER, StopTask, TaskHealthReport, TaskId, TaskSpec, TaskState, TaskStatusReport,
    WorkerReport,
};
use cube_worker::{SimulatedBehaviour, SimulatedRuntime};

use crate::support::{ReportProbe, config, spec_with_port, start_msg, start_worker};

/// Container port every test task publishes and checks.
const CONTAINER_PORT: u16 = 80;

// === test HTTP server ===

/// How a [`TestServer`] responds.
#[derive(Debug, Clone, Copy)]
enum Answer {
    /// Always this status.
    Status(u16),
    /// 200 for the first `requests` requests, 500 from then on.
    HealthyFor { requests: usize },
    /// Accepts the connection, reads the request and never responds.
    Hang,
}

/// An HTTP server on 127.0.0.1 that records when each request arrives.
struct TestServer {
    port: u16,
    hits: Arc<Mutex<Vec<Instant>>>,
    closing: Arc<AtomicBool>,
}

impl TestServer {
    fn start(answer: Answer) -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a test server");
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(Mutex::new(Vec::new()));
        let closing = Arc::new(AtomicBool::new(false));
        let (thread_hits, thread_closing) = (hits.clone(), closing.clone());
        std::thread::spawn(move || {
            // Hung connections stay open until the server ends.
            let mut held = Vec::new();
            for stream in listener.incoming() {
                if thread_closing.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut stream) = stream else { continue };
                if !read_request(&mut stream) {
                    continue;
                }
                let served = {
                    let mut hits = thread_hits.lock().unwrap();
                    hits.push(Instant::now());
                    hits.len()
                };
                let status = match answer {
                    Answer::Status(status) => status,
                    Answer::HealthyFor { requests } if served <= requests => 200,
                    Answer::HealthyFor { .. } => 500,
                    Answer::Hang => {
                        held.push(stream);
                        continue;
                    }
                };
                let response = format!(
                    "HTTP/1.1 {status} Test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let _ = stream.write_all(response.as_bytes());
            }
        });
        Self {
            port,
            hits,
            closing,
        }
    }

    fn hits(&self) -> Vec<Instant> {
        self.hits.lock().unwrap().clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // The accept loop checks the flag on its next connection, which this one provides.
        self.closing.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port));
    }
}

/// Reads up to the end of the request headers; returns false if the client went away.
fn read_request(stream: &mut TcpStream) -> bool {
    let mut request = Vec::new();
    let mut buffer = [0u8; 1024];
    while !request.windows(4).any(|window| window == b"\r\n\r\n") {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return false,
            Ok(read) => request.extend_from_slice(&buffer[..read]),
        }
    }
    true
}

// === helpers ===

fn health_spec(image: &str, interval_ms: u64, timeout_ms: u64, threshold: u32) -> TaskSpec {
    let mut spec = spec_with_port(image, CONTAINER_PORT);
    spec.health_check = Some(HealthCheck {
        path: "/health".into(),
        port: CONTAINER_PORT,
        interval: DurationSpec::from_millis(interval_ms),
        timeout: DurationSpec::from_millis(timeout_ms),
        failure_threshold: threshold,
    });
    spec
}

/// A report with the instant the test received it.
type Timed = (Instant, WorkerReport);

fn health_of(reports: &[Timed], task_id: TaskId) -> Vec<(Instant, TaskHealthReport)> {
    let reports = reports.iter();
    reports
        .filter_map(|(at, report)| match &report.body {
            ReportBody::TaskHealth(health) if health.task_id == task_id => {
                Some((*at, health.clone()))
            }
            _ => None,
        })
        .collect()
}

fn statuses_of(reports: &[Timed], task_id: TaskId) -> Vec<(Instant, TaskStatusReport)> {
    let reports = reports.iter();
    reports
        .filter_map(|(at, report)| match &report.body {
            ReportBody::TaskStatus(status) if status.task_id == task_id => {
                Some((*at, status.clone()))
            }
            _ => None,
        })
        .collect()
}

/// Receives reports until `done` holds for the reports so far.
async fn collect_until(probe: &mut ReportProbe, done: impl Fn(&[Timed]) -> bool) -> Vec<Timed> {
    let mut reports = Vec::new();
    while !done(&reports) {
        let report = probe.next().await;
        reports.push((Instant::now(), report));
    }
    reports
}

fn ended(reports: &[Timed], task_id: TaskId) -> bool {
    let statuses = statuses_of(reports, task_id);
    statuses
        .iter()
        .any(|(_, status)| status.state.is_terminal())
}

fn millis(duration: Duration) -> u128 {
    duration.as_millis()
}

// === tests ===

#[actix::test]
async fn hanging_healthy_and_flaky_endpoints_are_judged_on_schedule() {
    let _ = env_logger::builder().is_test(true).try_init();
    const INTERVAL: u64 = 400;
    const TIMEOUT: u64 = 350;
    const THRESHOLD: u32 = 3;
    let healthy_server = TestServer::start(Answer::Status(200));
    let flaky_server = TestServer::start(Answer::HealthyFor { requests: 2 });
    let hanging_server = TestServer::start(Answer::Hang);
    let runtime = SimulatedRuntime::new(SimulatedBehaviour::run_until_stopped());
    runtime.set_image_host_port("healthy", CONTAINER_PORT, healthy_server.port);
    runtime.set_image_host_port("flaky", CONTAINER_PORT, flaky_server.port);
    runtime.set_image_host_port("hanging", CONTAINER_PORT, hanging_server.port);
    let worker = start_worker(config("sim-health"), Arc::new(runtime.clone()));
    let mut probe = ReportProbe::subscribe(&worker, 0);

    let healthy = start_msg(health_spec("healthy", INTERVAL, TIMEOUT, THRESHOLD));
    let mut flaky_spec = health_spec("flaky", INTERVAL, TIMEOUT, THRESHOLD);
    flaky_spec.restart_policy = RestartPolicy {
        mode: RestartMode::OnFailure,
        max_attempts: 1,
        backoff: DurationSpec::from_millis(100),
        max_backoff: DurationSpec::from_secs(1),
    };
    let flaky = start_msg(flaky_spec);
    let hanging = start_msg(health_spec("hanging", INTERVAL, TIMEOUT, THRESHOLD));
    let (healthy_id, flaky_id, hanging_id) = (healthy.task_id, flaky.task_id, hanging.task_id);
    for start in [healthy, flaky, hanging] {
        worker.send(start).await.unwrap().unwrap();
    }

    let reports = collect_until(&mut probe, |reports| {
        ended(reports, flaky_id) && ended(reports, hanging_id)
    })
    .await;

    // The hanging endpoint fails by its timeout: three checks, the last ending one timeout
    // after the third interval.
    let hanging_statuses = statuses_of(&reports, hanging_id);
    let (hanging_started, _) = hanging_statuses[0].clone();
    let hanging_health = health_of(&reports, hanging_id);
    assert_eq!(hanging_health.len(), 1, "{hanging_health:#?}");
    let (judged_at, verdict) = &hanging_health[0];
    assert_eq!(verdict.health.status, HealthStatus::Unhealthy);
    assert_eq!(verdict.health.consecutive_failures, THRESHOLD);
    let last_error = verdict.health.last_error.clone().unwrap();
    assert_eq!(last_error, "GET /health timed out after 350ms");
    let judged_after = judged_at.duration_since(hanging_started);
    let expected = Duration::from_millis(u64::from(THRESHOLD) * INTERVAL + TIMEOUT);
    assert!(
        judged_after + Duration::from_millis(50) >= expected,
        "hanging endpoint judged after {} ms, before its checks could time out",
        millis(judged_after)
    );
    assert!(
        judged_after <= expected + Duration::from_millis(700),
        "hanging endpoint judged after {} ms, expected about {} ms",
        millis(judged_after),
        millis(expected)
    );
    assert_eq!(hanging_server.hits().len(), THRESHOLD as usize);

    // With restart policy `never`, the unhealthy task ends failed, after its health report.
    let (_, hanging_end) = hanging_statuses.last().unwrap().clone();
    assert_eq!(hanging_end.state, TaskState::Failed);
    assert_eq!(
        hanging_end.reason,
        format!("health check failed 3 times: {last_error}")
    );
    assert!(hanging_end.container_id.is_some());

    // The flaky endpoint is healthy after its first check and unhealthy after its fifth.
    let flaky_health = health_of(&reports, flaky_id);
    let flaky_statuses = statuses_of(&reports, flaky_id);
    let (flaky_started, first_attempt) = flaky_statuses[0].clone();
    assert_eq!(first_attempt.state, TaskState::Running);
    let health_states: Vec<(HealthStatus, bool)> = flaky_health
        .iter()
        .map(|(_, report)| {
            (
                report.health.status,
                report.attempt == first_attempt.attempt,
            )
        })
        .collect();
    assert_eq!(
        health_states,
        vec![
            (HealthStatus::Healthy, true),
            (HealthStatus::Unhealthy, true),
            (HealthStatus::Unhealthy, false),
        ],
        "health changes (status, of the first attempt) of the flaky task"
    );
    let became_unhealthy = flaky_health[1].0.duration_since(flaky_started);
    let expected = Duration::from_millis(5 * INTERVAL);
    assert!(
        became_unhealthy + Duration::from_millis(50) >= expected
            && became_unhealthy <= expected + Duration::from_millis(700),
        "flaky endpoint judged unhealthy after {} ms, expected about {} ms",
        millis(became_unhealthy),
        millis(expected)
    );
    assert_eq!(
        flaky_health[1].1.health.last_error.as_deref(),
        Some("GET /health returned 500 Internal Server Error")
    );

    // It is restarted once through its on-failure policy, then fails at the limit.
    let flaky_states: Vec<TaskState> = flaky_statuses.iter().map(|(_, s)| s.state).collect();
    assert_eq!(
        flaky_states,
        vec![
            TaskState::Running,
            TaskState::Scheduled,
            TaskState::Running,
            TaskState::Failed,
        ]
    );
    let restart = &flaky_statuses[1].1;
    assert!(
        restart
            .reason
            .starts_with("health check failed 3 times: GET /health returned 500"),
        "{}",
        restart.reason
    );
    assert!(
        restart.reason.contains("restart 1 of 1"),
        "{}",
        restart.reason
    );
    let second_attempt = &flaky_statuses[2].1;
    assert_eq!(second_attempt.replaces, Some(first_attempt.attempt));
    assert_eq!(flaky_health[2].1.attempt, second_attempt.attempt);
    let flaky_end = &flaky_statuses[3].1;
    assert!(
        flaky_end.reason.ends_with("restart limit of 1 reached"),
        "{}",
        flaky_end.reason
    );
    assert_eq!(runtime.started_total(), 4, "three tasks and one restart");

    // The healthy task was checked on its own interval all along, never held up by the
    // hanging checks beside it.
    let healthy_health = health_of(&reports, healthy_id);
    assert_eq!(healthy_health.len(), 1, "{healthy_health:#?}");
    assert_eq!(healthy_health[0].1.health.status, HealthStatus::Healthy);
    let checks = healthy_server.hits();
    assert!(
        checks.len() >= 7,
        "only {} checks of the healthy task",
        checks.len()
    );
    let gaps: Vec<u128> = checks
        .windows(2)
        .map(|pair| millis(pair[1].duration_since(pair[0])))
        .collect();
    let span = checks.last().unwrap().duration_since(checks[0]);
    let mean = millis(span) / (gaps.len() as u128);
    let interval = u128::from(INTERVAL);
    println!(
        "hanging judged after {} ms, flaky after {} ms, healthy gaps {gaps:?} ms",
        millis(judged_after),
        millis(became_unhealthy)
    );
    assert!(
        mean.abs_diff(interval) <= interval / 10,
        "mean gap {mean} ms between healthy checks, expected {INTERVAL} ms: {gaps:?}"
    );
    for gap in &gaps {
        assert!(
            *gap < interval + u128::from(TIMEOUT),
            "a healthy check waited {gap} ms, as if behind a timed-out one: {gaps:?}"
        );
    }
    let healthy_statuses = statuses_of(&reports, healthy_id);
    assert_eq!(healthy_statuses.len(), 1, "the healthy task keeps running");

    // A stop ends the checks with the container.
    worker
        .send(StopTask {
            task_id: healthy_id,
            attempt: None,
            reason: STOPPED_BY_USER.into(),
        })
        .await
        .unwrap()
        .unwrap();
    let completed = probe.wait_status(healthy_id, TaskState::Completed).await;
    assert_eq!(completed.reason, STOPPED_BY_USER);
    let checks_at_stop = healthy_server.hits().len();
    tokio::time::sleep(Duration::from_millis(3 * INTERVAL)).await;
    assert_eq!(healthy_server.hits().len(), checks_at_stop);
}

#[actix::test]
async fn redirect_counts_as_healthy() {
    let server = TestServer::start(Answer::Status(302));
    let runtime = SimulatedRuntime::new(SimulatedBehaviour::run_until_stopped());
    runtime.set_image_host_port("moved", CONTAINER_PORT, server.port);
    let worker = start_worker(config("sim-health"), Arc::new(runtime));
    let mut probe = ReportProbe::subscribe(&worker, 0);
    let start = start_msg(health_spec("moved", 100, 50, 1));
    let task_id = start.task_id;
    worker.send(start).await.unwrap().unwrap();

    let reports = collect_until(&mut probe, |reports| {
        !health_of(reports, task_id).is_empty()
    })
    .await;
    let health = health_of(&reports, task_id);
    assert_eq!(health[0].1.health.status, HealthStatus::Healthy);
    assert_eq!(health[0].1.health.consecutive_failures, 0);
    assert_eq!(health[0].1.health.last_error, None);
}

#[actix::test]
async fn client_error_status_fails_and_always_policy_restarts() {
    let server = TestServer::start(Answer::Status(404));
    let runtime = SimulatedRuntime::new(SimulatedBehaviour::run_until_stopped());
    runtime.set_image_host_port("missing", CONTAINER_PORT, server.port);
    let worker = start_worker(config("sim-health"), Arc::new(runtime.clone()));
    let mut probe = ReportProbe::subscribe(&worker, 0);
    let mut spec = health_spec("missing", 100, 50, 2);
    spec.restart_policy = RestartPolicy {
        mode: RestartMode::Always,
        max_attempts: 2,
        backoff: DurationSpec::from_millis(50),
        max_backoff: DurationSpec::from_secs(1),
    };
    let start = start_msg(spec);
    let task_id = start.task_id;
    worker.send(start).await.unwrap().unwrap();

    let reports = collect_until(&mut probe, |reports| ended(reports, task_id)).await;
    let health = health_of(&reports, task_id);
    assert_eq!(
        health.len(),
        3,
        "one unhealthy report per attempt: {health:#?}"
    );
    for (_, report) in &health {
        assert_eq!(report.health.status, HealthStatus::Unhealthy);
        assert_eq!(
            report.health.last_error.as_deref(),
            Some("GET /health returned 404 Not Found")
        );
    }
    let statuses = statuses_of(&reports, task_id);
    let last = &statuses.last().unwrap().1;
    assert_eq!(last.state, TaskState::Failed);
    assert_eq!(
        last.reason,
        "health check failed 2 times: GET /health returned 404 Not Found; \
         restart limit of 2 reached"
    );
    assert_eq!(last.restart_count, 2);
    assert_eq!(runtime.started_total(), 3);
    assert_eq!(runtime.running_count(), 0);
    assert_eq!(server.hits().len(), 6, "two checks per attempt");
}

#[actix::test]
async fn refused_connection_fails_check() {
    // A port that was free a moment ago, so nothing listens on it.
    let port = {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        listener.local_addr().unwrap().port()
    };
    let runtime = SimulatedRuntime::new(SimulatedBehaviour::run_until_stopped());
    runtime.set_image_host_port("closed", CONTAINER_PORT, port);
    let worker = start_worker(config("sim-health"), Arc::new(runtime.clone()));
    let mut probe = ReportProbe::subscribe(&worker, 0);
    let start = start_msg(health_spec("closed", 100, 100, 1));
    let task_id = start.task_id;
    worker.send(start).await.unwrap().unwrap();

    let failed = probe.wait_status(task_id, TaskState::Failed).await;
    assert!(
        failed
            .reason
            .starts_with("health check failed 1 time: GET /health failed: "),
        "{}",
        failed.reason
    );
    assert_eq!(runtime.running_count(), 0);
}
