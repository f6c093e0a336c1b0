//! The TaskSupervisor actor: one per task attempt, it drives that attempt's container.
//!
//! Steps, in order: ensure the image, create and start the container, report it running,
//! wait for it to exit, remove the container, report the end. Each engine call is a future
//! spawned on the supervisor's context, so one slow task never blocks another. A stop may
//! arrive while a call is in flight, so every result is checked against the current phase
//! and stop request before the supervisor acts on it. A stop during the start is applied
//! when the start returns, so no container is left running.
//!
//! The supervisor reports to its Worker through a weak recipient of [`AttemptProgress`], so
//! it never keeps the Worker alive. It reports the end only once the container is removed,
//! so a restart that the Worker starts on that report never meets the old container's
//! name or host ports, and then it stops itself. Restart decisions and their back-off belong
//! to the Worker: each restart is a new attempt with a supervisor of its own.
//!
//! While the container runs and the spec has a health check, a [`HealthChecker`] probes it.
//! The supervisor forwards each [`HealthChanged`] to the Worker. When the checker reports
//! unhealthy, the supervisor stops the container as for a stop request and ends the attempt
//! `failed` with the reason "health check failed N times: <last error>", so the Worker's
//! restart policy applies.
//!
//! The exit normally arrives through the engine's wait call, which also returns when the
//! container is removed behind cube's back. The Worker's periodic reconcile sends
//! [`CheckContainer`] as a safety net: the supervisor inspects its container and, when it is
//! gone or exited, ends the attempt as if the wait had returned. Both paths end the attempt
//! only while the supervisor is still in its running phase, so an exit is reported once.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use actix::WeakRecipient;
use actix::prelude::*;
use cube_core::{
    AttemptId, ContainerId, HealthStatus, LABEL_ATTEMPT, LABEL_NODE, LABEL_TASK, NodeId,
    PortBinding, PortMapping, TaskId, TaskSpec, TaskState,
};

use crate::health::{HealthChanged, HealthChecker, HealthTarget, StopChecks};
use crate::runtime::{
    ContainerConfig, ContainerExit, ContainerStatus, RuntimeError, SharedRuntime, StartedContainer,
    container_name, error_chain,
};

/// First delay before waiting again on a container after the engine failed the wait.
const WAIT_RETRY_MIN: Duration = Duration::from_secs(1);
/// Upper bound of that delay.
const WAIT_RETRY_MAX: Duration = Duration::from_secs(30);

/// Reason of an attempt whose container no longer exists, such as one removed with
/// `docker rm -f` or one that vanished while the worker was not running.
pub const CONTAINER_MISSING: &str = "container missing";

/// Something that happened to an attempt, sent by its supervisor to the Worker.
#[derive(Debug, Clone, PartialEq, Message)]
#[rtype(result = "()")]
pub struct AttemptProgress {
    /// The task.
    pub task_id: TaskId,
    /// The attempt.
    pub attempt: AttemptId,
    /// What happened.
    pub event: AttemptEvent,
}

/// The content of an [`AttemptProgress`].
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptEvent {
    /// The container runs.
    Running {
        /// The container.
        container_id: ContainerId,
        /// Its bound host ports.
        host_ports: Vec<PortBinding>,
    },
    /// The attempt ended and its container is removed; nothing else follows.
    Ended {
        /// Completed or failed.
        state: TaskState,
        /// The container, if one was created.
        container_id: Option<ContainerId>,
        /// The exit code, if the container exited.
        exit_code: Option<i64>,
        /// The reason, such as "container exited with code 3".
        reason: String,
    },
    /// The running container's health changed; its state did not.
    Health(HealthChanged),
}

/// Stops the attempt: SIGTERM, the spec's grace period, SIGKILL, then removal.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct StopAttempt {
    /// Why, reported as the attempt's reason, such as "stopped by user".
    pub reason: String,
}

/// Makes the supervisor inspect its running container and end the attempt if the container
/// is gone or exited, for an exit the wait call may have missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct CheckContainer;

/// One attempt of a task, as the Worker hands it to a supervisor.
#[derive(Debug, Clone)]
pub struct AttemptPlan {
    /// The task.
    pub task_id: TaskId,
    /// The attempt.
    pub attempt: AttemptId,
    /// The spec to run.
    pub spec: TaskSpec,
    /// Host ports to bind, one per spec port.
    pub ports: Vec<PortMapping>,
    /// The worker's node, written into the container's labels.
    pub node: NodeId,
    /// Host address container ports are published on.
    pub publish_address: IpAddr,
    /// The first step of the supervisor.
    pub launch: Launch,
}

/// The first step of a supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launch {
    /// Start a new container.
    Start,
    /// Watch a container a previous run of the worker started, for a record found in the
    /// store.
    Adopt {
        /// The container.
        container_id: ContainerId,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Starting,
    Running(ContainerId),
    Stopping(ContainerId),
    /// The container exited on its own and is being removed.
    Removing(ContainerId),
    Ended,
}

/// Drives one attempt's container from start to removal.
#[derive(Debug)]
pub struct TaskSupervisor {
    plan: AttemptPlan,
    runtime: SharedRuntime,
    worker: WeakRecipient<AttemptProgress>,
    phase: Phase,
    stop_reason: Option<String>,
    /// Why the supervisor itself stops the container: its health check failed.
    health_failure: Option<String>,
    health_checker: Option<Addr<HealthChecker>>,
    exit_code: Option<i64>,
    wait_retry: Duration,
}

impl TaskSupervisor {
    /// Creates a supervisor for `plan` that reports to `worker`.
    pub fn new(
        plan: AttemptPlan,
        runtime: SharedRuntime,
        worker: WeakRecipient<AttemptProgress>,
    ) -> Self {
        Self {
            plan,
            runtime,
            worker,
            phase: Phase::Starting,
            stop_reason: None,
            health_failure: None,
            health_checker: None,
            exit_code: None,
            wait_retry: WAIT_RETRY_MIN,
        }
    }

    fn container_config(&self) -> ContainerConfig {
        let plan = &self.plan;
        let mut labels: BTreeMap<String, String> = plan.spec.labels.clone();
        labels.insert(LABEL_TASK.into(), plan.task_id.to_string());
        labels.insert(LABEL_ATTEMPT.into(), plan.attempt.to_string());
        labels.insert(LABEL_NODE.into(), plan.node.to_string());
        ContainerConfig {
            name: container_name(plan.task_id, plan.attempt),
            image: plan.spec.image.clone(),
            command: plan.spec.command.clone(),
            env: plan.spec.env.clone(),
            cpu: plan.spec.cpu,
            memory: plan.spec.memory,
            labels,
            ports: plan.ports.clone(),
            publish_address: plan.publish_address,
        }
    }

    fn begin_start(&mut self, ctx: &mut Context<Self>) {
        self.phase = Phase::Starting;
        let runtime = self.runtime.clone();
        let config = self.container_config();
        let policy = self.plan.spec.pull_policy;
        let start = async move {
            runtime.ensure_image(&config.image, policy).await?;
            runtime.start_container(config).await
        };
        ctx.spawn(
            start
                .into_actor(self)
                .map(|result, act, ctx| act.on_start_result(result, ctx)),
        );
    }

    fn on_start_result(
        &mut self,
        result: Result<StartedContainer, RuntimeError>,
        ctx: &mut Context<Self>,
    ) {
        let started = match result {
            Ok(started) => started,
            Err(error) => {
                // A stop that arrived during a failed start wins: nothing runs, as asked.
                let (state, reason) = match self.stop_reason.clone() {
                    Some(reason) => (TaskState::Completed, reason),
                    None => (TaskState::Failed, error_chain(&error)),
                };
                log::info!(
                    "task {} attempt {} failed to start: {reason}",
                    self.plan.task_id,
                    self.plan.attempt
                );
                self.finish(state, None, reason);
                ctx.stop();
                return;
            }
        };

        if self.stop_reason.is_some() {
            log::info!(
                "task {} container {} started after a stop request; stopping it",
                self.plan.task_id,
                started.id.short()
            );
            self.begin_stop(started.id, ctx);
            return;
        }

        log::info!(
            "task {} attempt {} running in container {}",
            self.plan.task_id,
            self.plan.attempt,
            started.id.short()
        );
        self.phase = Phase::Running(started.id.clone());
        self.start_health_checks(&started.host_ports, ctx);
        self.send(AttemptEvent::Running {
            container_id: started.id.clone(),
            host_ports: started.host_ports,
        });
        self.begin_wait(started.id, ctx);
    }

    fn begin_wait(&mut self, id: ContainerId, ctx: &mut Context<Self>) {
        let wait = self.runtime.wait_container(&id);
        ctx.spawn(wait.into_actor(self).map(move |result, act, ctx| {
            act.on_wait_result(id, result, ctx);
        }));
    }

    fn on_wait_result(
        &mut self,
        id: ContainerId,
        result: Result<ContainerExit, RuntimeError>,
        ctx: &mut Context<Self>,
    ) {
        if self.phase != Phase::Running(id.clone()) {
            // A stop is under way and reports the end itself; keep the exit code for it.
            if let Ok(ContainerExit::Exited { code }) = result {
                self.exit_code = Some(code);
            }
            return;
        }

        let (state, exit_code, reason) = match result {
            Ok(ContainerExit::Exited { code: 0 }) => (
                TaskState::Completed,
                Some(0),
                "container exited with code 0".to_string(),
            ),
            Ok(ContainerExit::Exited { code }) => (
                TaskState::Failed,
                Some(code),
                format!("container exited with code {code}"),
            ),
            Ok(ContainerExit::Vanished) => (TaskState::Failed, None, CONTAINER_MISSING.to_owned()),
            Err(error) => {
                log::warn!(
                    "task {}: {}; waiting again in {:?}",
                    self.plan.task_id,
                    error_chain(&error),
                    self.wait_retry
                );
                let delay = self.wait_retry;
                self.wait_retry = (self.wait_retry * 2).min(WAIT_RETRY_MAX);
                ctx.run_later(delay, move |act, ctx| {
                    if act.phase == Phase::Running(id.clone()) {
                        act.begin_wait(id, ctx);
                    }
                });
                return;
            }
        };
        self.wait_retry = WAIT_RETRY_MIN;
        log::info!(
            "task {} attempt {} ended: {reason}",
            self.plan.task_id,
            self.plan.attempt
        );

        self.exit_code = exit_code;
        self.remove_then_finish(id, state, reason, ctx);
    }

    fn begin_stop(&mut self, id: ContainerId, ctx: &mut Context<Self>) {
        self.phase = Phase::Stopping(id.clone());
        self.stop_health_checks();
        let runtime = self.runtime.clone();
        let grace = self.plan.spec.stop_grace_period.get();
        let stop_id = id.clone();
        let stop = async move {
            runtime.stop_container(&stop_id, grace).await?;
            // The exit code is read before removal; the wait may not have returned yet.
            let exit_code = match runtime.inspect_container(&stop_id).await {
                Ok(info) => info.exit_code,
                Err(_) => None,
            };
            runtime.remove_container(&stop_id).await?;
            Ok::<_, RuntimeError>(exit_code)
        };
        ctx.spawn(stop.into_actor(self).map(move |result, act, ctx| {
            let (state, reason) = act.stop_outcome();
            match result {
                Ok(exit_code) => {
                    act.exit_code = exit_code.or(act.exit_code);
                    log::info!("task {} stopped: {reason}", act.plan.task_id);
                    act.finish(state, Some(id), reason);
                }
                Err(error) => {
                    // NOTE: no retry; the container may still run and needs removing by hand.
                    let reason = format!("{}; requested because {reason}", error_chain(&error));
                    log::error!("task {}: {reason}", act.plan.task_id);
                    act.finish(TaskState::Failed, Some(id), reason);
                }
            }
            ctx.stop();
        }));
    }

    fn remove_then_finish(
        &mut self,
        id: ContainerId,
        state: TaskState,
        reason: String,
        ctx: &mut Context<Self>,
    ) {
        self.phase = Phase::Removing(id.clone());
        self.stop_health_checks();
        let remove = self.runtime.remove_container(&id);
        ctx.spawn(remove.into_actor(self).map(move |result, act, ctx| {
            if let Err(error) = result {
                // NOTE: the exited container stays behind. It binds no host ports, and a
                // restart names its container after the new attempt, so nothing collides.
                log::error!("task {}: {}", act.plan.task_id, error_chain(&error));
            }
            act.finish(state, Some(id), reason);
            ctx.stop();
        }));
    }

    /// Returns the state and reason a completed stop ends the attempt with: a requested stop
    /// completes it, even one that arrived during a stop for a failed health check.
    fn stop_outcome(&self) -> (TaskState, String) {
        match (&self.stop_reason, &self.health_failure) {
            (Some(reason), _) => (TaskState::Completed, reason.clone()),
            (None, Some(reason)) => (TaskState::Failed, reason.clone()),
            (None, None) => (TaskState::Completed, String::new()),
        }
    }

    // === health checks ===

    /// Starts the health checker of the running container, if the spec has a health check.
    fn start_health_checks(&mut self, host_ports: &[PortBinding], ctx: &mut Context<Self>) {
        let plan = &self.plan;
        let Some(check) = &plan.spec.health_check else {
            return;
        };
        let target = HealthTarget::resolve(
            plan.task_id,
            plan.attempt,
            check,
            host_ports,
            plan.publish_address,
        );
        let Some(target) = target else {
            // NOTE: a started container has every spec port bound, so this needs an adopted
            // container whose bindings changed; it then runs unchecked.
            log::warn!(
                "task {} attempt {} has no host port bound for health check port {}; \
                 running without health checks",
                plan.task_id,
                plan.attempt,
                check.port
            );
            return;
        };
        match HealthChecker::new(target, ctx.address().downgrade().recipient()) {
            Ok(checker) => self.health_checker = Some(checker.start()),
            Err(error) => log::error!(
                "task {} attempt {} runs without health checks: failed to build the HTTP \
                 client: {}",
                plan.task_id,
                plan.attempt,
                error_chain(&error)
            ),
        }
    }

    /// Reads an adopted container's bound ports, then starts its health checks.
    fn start_adopted_health_checks(&mut self, id: ContainerId, ctx: &mut Context<Self>) {
        if self.plan.spec.health_check.is_none() {
            return;
        }
        let inspect = self.runtime.inspect_container(&id);
        ctx.spawn(inspect.into_actor(self).map(move |result, act, ctx| {
            if act.phase != Phase::Running(id.clone()) {
                return;
            }
            match result {
                Ok(info) => act.start_health_checks(&info.host_ports, ctx),
                Err(error) => log::warn!(
                    "task {} adopted container {} runs without health checks: {}",
                    act.plan.task_id,
                    id.short(),
                    error_chain(&error)
                ),
            }
        }));
    }

    fn stop_health_checks(&mut self) {
        if let Some(checker) = self.health_checker.take() {
            checker.do_send(StopChecks);
        }
    }

    /// Reports the end of the attempt, once; the caller stops the actor after its cleanup.
    fn finish(&mut self, state: TaskState, container_id: Option<ContainerId>, reason: String) {
        let already_ended = self.phase == Phase::Ended;
        self.phase = Phase::Ended;
        if already_ended {
            return;
        }
        self.send(AttemptEvent::Ended {
            state,
            container_id,
            exit_code: self.exit_code,
            reason,
        });
    }

    fn send(&self, event: AttemptEvent) {
        let progress = AttemptProgress {
            task_id: self.plan.task_id,
            attempt: self.plan.attempt,
            event,
        };
        match self.worker.upgrade() {
            Some(worker) => worker.do_send(progress),
            None => log::debug!(
                "worker gone; dropping progress of task {}",
                self.plan.task_id
            ),
        }
    }
}

impl Actor for TaskSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        match self.plan.launch.clone() {
            Launch::Start => self.begin_start(ctx),
            Launch::Adopt { container_id } => {
                log::info!(
                    "task {} adopting container {}",
                    self.plan.task_id,
                    container_id.short()
                );
                self.phase = Phase::Running(container_id.clone());
                self.start_adopted_health_checks(container_id.clone(), ctx);
                self.begin_wait(container_id, ctx);
            }
        }
    }
}

impl Handler<StopAttempt> for TaskSupervisor {
    type Result = ();

    fn handle(&mut self, msg: StopAttempt, ctx: &mut Context<Self>) {
        if self.stop_reason.is_none() {
            self.stop_reason = Some(msg.reason);
        }
        match self.phase.clone() {
            Phase::Starting => log::debug!(
                "task {} stop requested during start; stopping once the start returns",
                self.plan.task_id
            ),
            Phase::Running(id) => self.begin_stop(id, ctx),
            // The container already exited; its end is reported once it is removed.
            Phase::Stopping(_) | Phase::Removing(_) | Phase::Ended => {}
        }
    }
}

impl Handler<CheckContainer> for TaskSupervisor {
    type Result = ();

    fn handle(&mut self, _: CheckContainer, ctx: &mut Context<Self>) {
        let Phase::Running(id) = self.phase.clone() else {
            return;
        };
        let inspect = self.runtime.inspect_container(&id);
        ctx.spawn(inspect.into_actor(self).map(move |result, act, ctx| {
            let exit = match result {
                Err(RuntimeError::ContainerNotFound { .. }) => ContainerExit::Vanished,
                Ok(info) => match (info.status, info.exit_code) {
                    (ContainerStatus::Exited | ContainerStatus::Dead, Some(code)) => {
                        ContainerExit::Exited { code }
                    }
                    _ => return,
                },
                Err(error) => {
                    log::debug!(
                        "task {} check of container {} failed: {}",
                        act.plan.task_id,
                        id.short(),
                        error_chain(&error)
                    );
                    return;
                }
            };
            if act.phase == Phase::Running(id.clone()) {
                log::warn!(
                    "task {} attempt {}: reconcile found container {} {}; the wait missed it",
                    act.plan.task_id,
                    act.plan.attempt,
                    id.short(),
                    match exit {
                        ContainerExit::Vanished => "gone",
                        ContainerExit::Exited { .. } => "exited",
                    }
                );
            }
            // A wait that returned meanwhile has left the running phase, so this is a no-op.
            act.on_wait_result(id, Ok(exit), ctx);
        }));
    }
}

impl Handler<HealthChanged> for TaskSupervisor {
    type Result = ();

    fn handle(&mut self, msg: HealthChanged, ctx: &mut Context<Self>) {
        let Phase::Running(id) = self.phase.clone() else {
            log::debug!(
                "health change of task {} after its container stopped running ignored",
                self.plan.task_id
            );
            return;
        };
        let unhealthy = msg.status == HealthStatus::Unhealthy;
        let failures = msg.consecutive_failures;
        let reason = format!(
            "health check failed {failures} {}: {}",
            if failures == 1 { "time" } else { "times" },
            msg.last_error.as_deref().unwrap_or("no error recorded")
        );
        self.send(AttemptEvent::Health(msg));
        if unhealthy {
            log::info!(
                "task {} attempt {} stops: {reason}",
                self.plan.task_id,
                self.plan.attempt
            );
            self.health_failure = Some(reason);
            self.begin_stop(id, ctx);
        }
    }
}
