//! The HealthChecker actor: runs one attempt's HTTP health checks on their own schedule.
//!
//! A [`TaskSupervisor`](crate::supervisor::TaskSupervisor) starts one checker when its
//! container runs and its spec has a [`HealthCheck`]. The checker sends `GET <path>` to the
//! task's published address every `interval`, the first one an interval after the start, and
//! bounds each request by `timeout`. A status from 200 to 399 passes; any other status, a
//! connection error or a timeout fails. The checker sends its supervisor
//! [`HealthChanged`] when the status changes: healthy after a passing check, unhealthy once
//! `failure_threshold` checks in a row have failed. After reporting unhealthy it stops,
//! since the supervisor then stops the container.
//!
//! Each checker is its own actor and each request a future on its context, so a hanging
//! endpoint only ever delays its own checks. A check still in flight when the next one is
//! due delays that next check until it ends; checks of one attempt never overlap.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use actix::WeakRecipient;
use actix::prelude::*;
use cube_core::{AttemptId, HealthCheck, HealthStatus, PortBinding, Protocol, TaskId};

use crate::runtime::error_chain;

/// User agent of health check requests.
const USER_AGENT: &str = concat!("cube-health-check/", env!("CARGO_PKG_VERSION"));

/// The health of an attempt changed; sent by its checker to its supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct HealthChanged {
    /// The new status.
    pub status: HealthStatus,
    /// Consecutive failed checks at the change; 0 when healthy.
    pub consecutive_failures: u32,
    /// Error of the last failed check.
    pub last_error: Option<String>,
}

/// Ends the checks; sent by the supervisor when its container stops running.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct StopChecks;

/// The endpoint one checker probes.
#[derive(Debug, Clone)]
pub struct HealthTarget {
    /// The task.
    pub task_id: TaskId,
    /// The attempt.
    pub attempt: AttemptId,
    /// The published host address of the checked container port.
    pub address: SocketAddr,
    /// The spec's health check.
    pub check: HealthCheck,
}

impl HealthTarget {
    /// Finds the published address of `check.port` among an attempt's bound `host_ports`.
    ///
    /// A port published on all interfaces (`0.0.0.0` or `::`) is probed on loopback, and one
    /// whose host ip does not parse is probed on `fallback_ip`. Returns `None` when the port
    /// is not bound.
    pub fn resolve(
        task_id: TaskId,
        attempt: AttemptId,
        check: &HealthCheck,
        host_ports: &[PortBinding],
        fallback_ip: IpAddr,
    ) -> Option<Self> {
        let binding = host_ports.iter().find(|binding| {
            binding.container_port == check.port && binding.protocol == Protocol::Tcp
        })?;
        let ip = binding.host_ip.parse().unwrap_or(fallback_ip);
        let ip = match ip {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        Some(Self {
            task_id,
            attempt,
            address: SocketAddr::new(ip, binding.host_port),
            check: check.clone(),
        })
    }

    /// Returns the URL each check requests, such as `http://127.0.0.1:32768/health`.
    pub fn url(&self) -> String {
        format!("http://{}{}", self.address, self.check.path)
    }
}

/// Probes one attempt's health endpoint and reports changes of its status.
#[derive(Debug)]
pub struct HealthChecker {
    target: HealthTarget,
    url: String,
    client: reqwest::Client,
    supervisor: WeakRecipient<HealthChanged>,
    status: Option<HealthStatus>,
    consecutive_failures: u32,
    in_flight: bool,
    /// A check came due while another was in flight; it starts when that one ends.
    due: bool,
}

impl HealthChecker {
    /// Creates a checker of `target` that reports to `supervisor`.
    ///
    /// # Errors
    ///
    /// Returns the HTTP client's error when it cannot be built.
    pub fn new(
        target: HealthTarget,
        supervisor: WeakRecipient<HealthChanged>,
    ) -> Result<Self, reqwest::Error> {
        // Each check opens a new connection, so a kept-alive connection that the server closed
        // while idle cannot fail a check. Redirects are not followed: a 3xx already passes, and
        // its target may be another host.
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(USER_AGENT)
            .build()?;
        Ok(Self {
            url: target.url(),
            target,
            client,
            supervisor,
            status: None,
            consecutive_failures: 0,
            in_flight: false,
            due: false,
        })
    }

    fn check_due(&mut self, ctx: &mut Context<Self>) {
        // The interval keeps the actor alive, so stop here once the supervisor is gone.
        if !ctx.connected() {
            ctx.stop();
            return;
        }
        if self.in_flight {
            self.due = true;
            return;
        }
        self.begin_check(ctx);
    }

    fn begin_check(&mut self, ctx: &mut Context<Self>) {
        self.in_flight = true;
        self.due = false;
        let timeout = self.target.check.timeout.get();
        let request = self.client.get(&self.url).timeout(timeout).send();
        let path = self.target.check.path.clone();
        let check = async move { judge_response(&path, timeout, request.await) };
        ctx.spawn(
            check
                .into_actor(self)
                .map(|result, act, ctx| act.on_check_result(result, ctx)),
        );
    }

    fn on_check_result(&mut self, result: Result<(), String>, ctx: &mut Context<Self>) {
        self.in_flight = false;
        match result {
            Ok(()) => {
                self.consecutive_failures = 0;
                if self.status != Some(HealthStatus::Healthy) {
                    self.change_status(HealthStatus::Healthy, None);
                }
            }
            Err(error) => {
                self.consecutive_failures += 1;
                let threshold = self.target.check.failure_threshold;
                log::debug!(
                    "health check failed task_id={} attempt={} failures={}/{threshold} \
                     error={error}",
                    self.target.task_id,
                    self.target.attempt,
                    self.consecutive_failures
                );
                if self.consecutive_failures >= threshold {
                    self.change_status(HealthStatus::Unhealthy, Some(error));
                    ctx.stop();
                    return;
                }
            }
        }
        if self.due {
            self.begin_check(ctx);
        }
    }

    fn change_status(&mut self, status: HealthStatus, last_error: Option<String>) {
        self.status = Some(status);
        log::info!(
            "task health changed task_id={} attempt={} status={status} failures={}{}",
            self.target.task_id,
            self.target.attempt,
            self.consecutive_failures,
            last_error
                .as_ref()
                .map(|error| format!(" error={error}"))
                .unwrap_or_default()
        );
        let changed = HealthChanged {
            status,
            consecutive_failures: self.consecutive_failures,
            last_error,
        };
        match self.supervisor.upgrade() {
            Some(supervisor) => supervisor.do_send(changed),
            None => log::debug!(
                "supervisor gone; dropping health change of task {}",
                self.target.task_id
            ),
        }
    }
}

impl Actor for HealthChecker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        log::debug!(
            "health checks started task_id={} attempt={} url={} interval={}",
            self.target.task_id,
            self.target.attempt,
            self.url,
            self.target.check.interval
        );
        ctx.run_interval(self.target.check.interval.get(), Self::check_due);
    }
}

impl Handler<StopChecks> for HealthChecker {
    type Result = ();

    fn handle(&mut self, _: StopChecks, ctx: &mut Context<Self>) {
        log::debug!(
            "health checks stopped task_id={} attempt={}",
            self.target.task_id,
            self.target.attempt
        );
        ctx.stop();
    }
}

/// Turns one check's HTTP outcome into a pass or the error that failed it.
fn judge_response(
    path: &str,
    timeout: Duration,
    response: Result<reqwest::Response, reqwest::Error>,
) -> Result<(), String> {
    match response {
        Ok(response) if (200..400).contains(&response.status().as_u16()) => Ok(()),
        Ok(response) => Err(format!("GET {path} returned {}", response.status())),
        Err(error) if error.is_timeout() => Err(format!(
            "GET {path} timed out after {}",
            cube_core::DurationSpec(timeout)
        )),
        Err(error) => Err(format!("GET {path} failed: {}", error_chain(&error))),
    }
}

#[cfg(test)]
mod tests {
    use cube_core::DurationSpec;

    use super::*;

    fn check(port: u16) -> HealthCheck {
        HealthCheck {
            path: "/health".into(),
            port,
            interval: DurationSpec::from_secs(1),
            timeout: DurationSpec::from_millis(500),
            failure_threshold: 2,
        }
    }

    fn binding(
        container_port: u16,
        protocol: Protocol,
        host_ip: &str,
        host_port: u16,
    ) -> PortBinding {
        PortBinding {
            container_port,
            protocol,
            host_ip: host_ip.into(),
            host_port,
        }
    }

    fn resolve(host_ports: &[PortBinding]) -> Option<SocketAddr> {
        let fallback = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        HealthTarget::resolve(
            TaskId::generate(),
            AttemptId::generate(),
            &check(80),
            host_ports,
            fallback,
        )
        .map(|target| target.address)
    }

    #[test]
    fn target_uses_bound_port_of_checked_container_port() {
        let ports = [
            binding(443, Protocol::Tcp, "127.0.0.1", 40001),
            binding(80, Protocol::Udp, "127.0.0.1", 40002),
            binding(80, Protocol::Tcp, "127.0.0.1", 40003),
        ];
        assert_eq!(resolve(&ports), Some("127.0.0.1:40003".parse().unwrap()));
    }

    #[test]
    fn target_probes_loopback_for_unspecified_host_ip() {
        let v4 = [binding(80, Protocol::Tcp, "0.0.0.0", 40001)];
        assert_eq!(resolve(&v4), Some("127.0.0.1:40001".parse().unwrap()));
        let v6 = [binding(80, Protocol::Tcp, "::", 40001)];
        assert_eq!(resolve(&v6), Some("[::1]:40001".parse().unwrap()));
        let unparsed = [binding(80, Protocol::Tcp, "", 40001)];
        assert_eq!(resolve(&unparsed), Some("127.0.0.2:40001".parse().unwrap()));
    }

    #[test]
    fn target_is_none_without_binding() {
        assert_eq!(resolve(&[binding(81, Protocol::Tcp, "127.0.0.1", 1)]), None);
    }

    #[test]
    fn target_url_joins_address_and_path() {
        let ports = [binding(80, Protocol::Tcp, "::1", 40001)];
        let target = HealthTarget::resolve(
            TaskId::generate(),
            AttemptId::generate(),
            &check(80),
            &ports,
            IpAddr::V4(Ipv4Addr::LOCALHOST),
        )
        .unwrap();
        assert_eq!(target.url(), "http://[::1]:40001/health");
    }
}
