//! The Worker actor: accepts commands, records attempts, and runs one supervisor per task.
//!
//! Commands stay fast: a handler validates, writes the attempt to the store, starts or
//! notifies a [`TaskSupervisor`] and replies, without awaiting the container engine. What
//! the supervisors observe comes back as [`AttemptProgress`], is written to the store and
//! published through the [`Outbox`] as reports stamped with this worker's node id and
//! sequence number. Health changes of a current attempt are only published, as
//! `TaskHealth` reports, and never stored. A heartbeat report carrying the latest host
//! metrics follows every heartbeat interval.
//!
//! Per task the worker keeps one record (the current attempt) and at most one supervisor
//! for it. A start for a new attempt of a task that still runs stops the old attempt first:
//! the new container starts once the old one has ended, so fixed host ports are free again.
//!
//! The worker applies each task's restart policy. When the current attempt ends and the
//! policy calls for a restart, the worker reports the task `scheduled` with the time of the
//! next attempt, waits out the back-off on a timer it owns, and then starts a new attempt
//! (new attempt id, new container) whose reports name the attempt it `replaces`. A stop
//! during the back-off cancels the timer and ends the task; a stop the user asked for never
//! leads to a restart. Every change to a record is written to the store first.
//!
//! Exits reach the worker from each supervisor's wait on its container, which also returns
//! when the container is removed behind cube's back. A periodic reconcile (see the
//! `reconcile` module) lists the node's containers as a safety net for an exit the wait missed.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use actix::prelude::*;
use cube_core::{
    AttemptId, Batch, CommandError, Committed, DescribeNode, Heartbeat, HostMetrics, ListTasks,
    NodeDescription, Operation, PortMapping, Protocol, ReportBody, Resources, SpecLimits,
    StartTask, StopTask, Store, StoreError, StoreWriter, SubscribeReports, TaskId, TaskState,
    TaskStatusReport, Timestamp, WorkerReport, WorkerTask,
};
use tokio::sync::mpsc;

mod reconcile;

use crate::WorkerConfig;
use crate::health::HealthChanged;
use crate::metrics_collector::{CollectorConfig, HostSampled, MetricsCollector, SampleNow};
use crate::outbox::{Outbox, OutboxStats};
use crate::runtime::SharedRuntime;
use crate::supervisor::{
    AttemptEvent, AttemptPlan, AttemptProgress, Launch, StopAttempt, TaskSupervisor,
};

/// Returns the worker's record of one task, if it has one.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Option<WorkerTask>")]
pub struct GetTask {
    /// The task.
    pub task_id: TaskId,
}

/// Opens an event stream: returns the kept reports after `after` and a channel of new ones.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "ReportStream")]
pub struct OpenReportStream {
    /// Reports up to this sequence number were already seen.
    pub after: u64,
}

/// The reply to [`OpenReportStream`].
#[derive(Debug)]
pub struct ReportStream {
    /// Kept reports after the requested sequence number, in order.
    pub replay: Vec<WorkerReport>,
    /// Reports published from now on; dropping it closes the stream.
    pub live: mpsc::Receiver<WorkerReport>,
}

/// Returns the latest host metrics, with the worker's running task count.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Option<HostMetrics>")]
pub struct GetHostMetrics;

/// Returns the outbox's counts.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "OutboxStats")]
pub struct GetOutboxStats;

/// One task as the worker tracks it.
#[derive(Debug)]
struct TaskEntry {
    record: WorkerTask,
    /// Supervisor of `record`'s attempt; `None` before it starts or after it ended.
    supervisor: Option<Addr<TaskSupervisor>>,
    /// Supervisors of earlier attempts that are being stopped.
    retiring: HashMap<AttemptId, Addr<TaskSupervisor>>,
    /// Timer that starts the next attempt once the restart back-off has passed.
    restart_timer: Option<SpawnHandle>,
}

impl TaskEntry {
    fn new(record: WorkerTask) -> Self {
        Self {
            record,
            supervisor: None,
            retiring: HashMap::new(),
            restart_timer: None,
        }
    }
}

/// Runs tasks as containers on one node.
pub struct Worker {
    config: WorkerConfig,
    runtime: SharedRuntime,
    /// Commits record changes off the actor's thread; `None` when it could not be started.
    writer: Option<StoreWriter>,
    /// The records read from the store, until the actor starts and adopts them.
    loaded: Option<Result<Vec<WorkerTask>, StoreError>>,
    tasks: BTreeMap<TaskId, TaskEntry>,
    outbox: Outbox,
    metrics: Option<HostMetrics>,
    collector: Option<Addr<MetricsCollector>>,
    /// Whether start-up adoption has matched the records with the listed containers.
    adopted: bool,
    /// Whether a reconcile waits for its container listing.
    reconciling: bool,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("node", &self.config.node_id)
            .field("tasks", &self.tasks.len())
            .finish_non_exhaustive()
    }
}

// === impl Worker ===

impl Worker {
    /// Creates a worker that runs containers on `runtime` and records attempts in `store`.
    ///
    /// The store's records are read here and resumed when the actor starts; from then on the
    /// store belongs to a [`StoreWriter`] thread. Use [`Worker::start`] to start the actor on
    /// the current arbiter.
    pub fn new(config: WorkerConfig, runtime: SharedRuntime, store: Box<dyn Store>) -> Self {
        let outbox = Outbox::new(
            config.node_id.clone(),
            config.clock.clone(),
            config.outbox_capacity,
        )
        .starting_at(reconcile::first_report_seq());
        let (loaded, writer) = match store.worker_tasks() {
            Ok(records) => match StoreWriter::spawn(config.node_id.as_str(), store) {
                Ok(writer) => (Ok(records), Some(writer)),
                Err(error) => (Err(error), None),
            },
            Err(error) => (Err(error), None),
        };
        Self {
            config,
            runtime,
            writer,
            loaded: Some(loaded),
            tasks: BTreeMap::new(),
            outbox,
            metrics: None,
            collector: None,
            adopted: false,
            reconciling: false,
        }
    }

    /// Starts a worker on the current arbiter of the running actix `System`.
    ///
    /// When the store cannot be read, the worker logs the error and stops, so every command
    /// then fails with [`CommandError::ShutDown`].
    pub fn start(
        config: WorkerConfig,
        runtime: SharedRuntime,
        store: Box<dyn Store>,
    ) -> Addr<Worker> {
        Actor::start(Self::new(config, runtime, store))
    }

    fn capacity(&self) -> Resources {
        let declared = &self.config.capacity;
        match &self.metrics {
            Some(metrics) => declared.resolve(metrics),
            None => Resources {
                cpu: declared.cpu.unwrap_or(0.0),
                memory: declared.memory.unwrap_or_default(),
                disk: declared.disk.unwrap_or_default(),
            },
        }
    }

    fn capacity_fully_declared(&self) -> bool {
        let declared = &self.config.capacity;
        declared.cpu.is_some() && declared.memory.is_some() && declared.disk.is_some()
    }

    fn running_tasks(&self) -> u32 {
        let running = self.tasks.values();
        let count = running
            .filter(|entry| entry.record.state == TaskState::Running)
            .count();
        u32::try_from(count).unwrap_or(u32::MAX)
    }

    fn current_metrics(&self) -> Option<HostMetrics> {
        let mut metrics = self.metrics.clone()?;
        metrics.running_tasks = self.running_tasks();
        Some(metrics)
    }

    fn describe(&self) -> NodeDescription {
        NodeDescription {
            id: self.config.node_id.clone(),
            capacity: self.capacity(),
            metrics: self.current_metrics(),
            publish_address: self.config.publish_address.to_string(),
        }
    }

    /// Rejects the start when another process on this host holds one of `ports`.
    ///
    /// NOTE: this sees only ports bound by a listening socket (such as Docker's userland
    /// proxy); a port Docker forwards with iptables alone shows up as a failed start.
    fn check_ports_free(&self, ports: &[PortMapping]) -> Result<(), CommandError> {
        let address = self.config.publish_address;
        for mapping in ports {
            let Some(port) = mapping.host_port else {
                continue;
            };
            let target = std::net::SocketAddr::new(address, port);
            let bound = match mapping.protocol {
                Protocol::Tcp => std::net::TcpListener::bind(target).map(drop),
                Protocol::Udp => std::net::UdpSocket::bind(target).map(drop),
            };
            if let Err(error) = bound
                && error.kind() == std::io::ErrorKind::AddrInUse
            {
                log::info!(
                    "start rejected: host port {port}/{} in use node_id={}",
                    mapping.protocol,
                    self.config.node_id
                );
                return Err(CommandError::PortInUse {
                    node: self.config.node_id.clone(),
                    protocol: mapping.protocol,
                    port,
                });
            }
        }
        Ok(())
    }

    fn rejected(&self, reason: String) -> CommandError {
        CommandError::Rejected {
            node: self.config.node_id.clone(),
            reason,
        }
    }

    /// Queues `record` on the store writer; the returned future resolves once it is durable.
    fn save(&mut self, record: &WorkerTask) -> Committed {
        let mut batch = Batch::new();
        batch.push(Operation::PutWorkerTask(record.clone()));
        match &self.writer {
            Some(writer) => writer.commit(batch),
            None => Committed::ready(Err(StoreError::Io {
                action: "commit",
                source: "the worker has no store writer".into(),
            })),
        }
    }

    /// Saves a record after an observed change; a failure is logged, since the change has
    /// already happened and is still reported.
    fn save_observed(&mut self, record: &WorkerTask) {
        let committed = self.save(record);
        let (node, task_id, state) = (self.config.node_id.clone(), record.task_id, record.state);
        actix::spawn(async move {
            if let Err(error) = committed.await {
                log::error!("worker {node} failed to record task {task_id} as {state}: {error}");
            }
        });
    }

    fn spawn_supervisor(
        &self,
        record: &WorkerTask,
        launch: Launch,
        ctx: &mut Context<Self>,
    ) -> Addr<TaskSupervisor> {
        let plan = AttemptPlan {
            task_id: record.task_id,
            attempt: record.attempt,
            spec: record.spec.clone(),
            ports: record.ports.clone(),
            node: self.config.node_id.clone(),
            publish_address: self.config.publish_address,
            launch,
        };
        let worker = ctx.address().downgrade().recipient();
        TaskSupervisor::new(plan, self.runtime.clone(), worker).start()
    }

    fn publish_status(&mut self, task_id: TaskId, attempt: AttemptId, event: &AttemptEvent) {
        let mut report = match event {
            AttemptEvent::Running {
                container_id,
                host_ports,
            } => TaskStatusReport {
                task_id,
                attempt,
                state: TaskState::Running,
                container_id: Some(container_id.clone()),
                host_ports: host_ports.clone(),
                exit_code: None,
                reason: "container started".into(),
                restart_count: 0,
                next_attempt_at: None,
                replaces: None,
            },
            AttemptEvent::Ended {
                state,
                container_id,
                exit_code,
                reason,
            } => TaskStatusReport {
                task_id,
                attempt,
                state: *state,
                container_id: container_id.clone(),
                host_ports: Vec::new(),
                exit_code: *exit_code,
                reason: reason.clone(),
                restart_count: 0,
                next_attempt_at: None,
                replaces: None,
            },
            AttemptEvent::Health(changed) => {
                self.publish_health(task_id, attempt, changed.clone());
                return;
            }
        };
        // Only the current attempt carries restart details; an earlier one's report is
        // ignored by the manager, and must not claim to replace anything.
        if let Some(entry) = self.tasks.get(&task_id)
            && entry.record.attempt == attempt
        {
            report.restart_count = entry.record.restart_count;
            report.next_attempt_at = entry.record.next_attempt_at;
            report.replaces = entry.record.replaces;
        }
        self.outbox.publish(ReportBody::TaskStatus(report));
    }

    /// Reports a health change of `task_id`'s current attempt; one of an earlier attempt is
    /// dropped, since the manager ignores it.
    fn publish_health(&mut self, task_id: TaskId, attempt: AttemptId, changed: HealthChanged) {
        let current = self.tasks.get(&task_id);
        if current.is_none_or(|entry| entry.record.attempt != attempt) {
            log::debug!("health change of earlier attempt {attempt} of task {task_id} dropped");
            return;
        }
        let health = cube_core::TaskHealth {
            status: changed.status,
            consecutive_failures: changed.consecutive_failures,
            last_error: changed.last_error,
            since: self.config.clock.now(),
        };
        let report = cube_core::TaskHealthReport {
            task_id,
            attempt,
            health,
        };
        self.outbox.publish(ReportBody::TaskHealth(report));
    }

    /// Ends an attempt that has no supervisor, such as one replaced before it started or one
    /// waiting out a restart back-off, whose pending restart is cancelled.
    fn end_unstarted(&mut self, task_id: TaskId, reason: String, ctx: &mut Context<Self>) {
        let now = self.config.clock.now();
        let Some(entry) = self.tasks.get_mut(&task_id) else {
            return;
        };
        if let Some(timer) = entry.restart_timer.take() {
            ctx.cancel_future(timer);
            log::info!(
                "task restart cancelled task_id={task_id} attempt={} reason={reason}",
                entry.record.attempt
            );
        }
        let record = &mut entry.record;
        record.state = TaskState::Completed;
        record.reason = Some(reason.clone());
        record.finished_at = Some(now);
        record.next_attempt_at = None;
        let (record, attempt) = (record.clone(), record.attempt);
        self.save_observed(&record);
        let event = AttemptEvent::Ended {
            state: TaskState::Completed,
            container_id: None,
            exit_code: None,
            reason,
        };
        self.publish_status(task_id, attempt, &event);
    }

    fn apply_to_record(record: &mut WorkerTask, event: &AttemptEvent, now: Timestamp) {
        match event {
            AttemptEvent::Running {
                container_id,
                host_ports,
            } => {
                record.state = TaskState::Running;
                record.container_id = Some(container_id.clone());
                record.host_ports = host_ports.clone();
                record.started_at = Some(now);
            }
            AttemptEvent::Ended {
                state,
                container_id,
                exit_code,
                reason,
            } => {
                record.state = *state;
                if container_id.is_some() {
                    record.container_id = container_id.clone();
                }
                record.exit_code = *exit_code;
                record.reason = Some(reason.clone());
                record.finished_at = Some(now);
            }
            // Health is reported, not recorded: a restarted worker checks afresh.
            AttemptEvent::Health(_) => {}
        }
    }

    // === restarts ===

    /// Applies the end of `task_id`'s current attempt: ends the task, or waits to restart
    /// it when its restart policy calls for it and restarts remain.
    fn end_attempt(&mut self, task_id: TaskId, event: AttemptEvent, ctx: &mut Context<Self>) {
        let Some(entry) = self.tasks.get_mut(&task_id) else {
            return;
        };
        entry.supervisor = None;
        let AttemptEvent::Ended {
            state,
            container_id,
            exit_code,
            reason,
        } = event
        else {
            return;
        };
        let record = &entry.record;
        let policy = record.spec.restart_policy;
        let failed = state == TaskState::Failed;
        let wants_restart = !record.stop_requested && policy.mode.restarts_after(failed);
        log::debug!(
            "task {task_id} attempt {} ended as {state}; restart policy {:?} with {} of {} \
             restarts used, stop requested: {}",
            record.attempt,
            policy.mode,
            record.restart_count,
            policy.max_attempts,
            record.stop_requested
        );

        if wants_restart && policy.should_restart(failed, record.restart_count) {
            self.schedule_restart(task_id, container_id, exit_code, reason, ctx);
            return;
        }
        // A container that exited or vanished just before a requested stop reached it still
        // ends as stopped; a stop that failed keeps its failure.
        let exited_before_stop = record.stop_requested
            && state == TaskState::Failed
            && (exit_code.is_some() || reason == crate::supervisor::CONTAINER_MISSING);
        let (state, reason) = if wants_restart {
            let reason = format!("{reason}; restart limit of {} reached", policy.max_attempts);
            log::info!("task restart limit reached task_id={task_id} reason={reason}");
            // The last attempt's own outcome stands: a clean exit is still `completed`.
            (state, reason)
        } else if exited_before_stop {
            let stop_reason = record.reason.clone().unwrap_or_default();
            log::debug!("task {task_id} ended before its stop took effect: {reason}");
            (TaskState::Completed, stop_reason)
        } else {
            (state, reason)
        };
        let event = AttemptEvent::Ended {
            state,
            container_id,
            exit_code,
            reason,
        };
        self.record_and_publish(task_id, &event);
    }

    /// Applies `event` to the current attempt's record, stores it and reports it.
    fn record_and_publish(&mut self, task_id: TaskId, event: &AttemptEvent) {
        let now = self.config.clock.now();
        let Some(entry) = self.tasks.get_mut(&task_id) else {
            return;
        };
        Self::apply_to_record(&mut entry.record, event, now);
        entry.record.next_attempt_at = None;
        let record = entry.record.clone();
        self.save_observed(&record);
        self.publish_status(task_id, record.attempt, event);
    }

    /// Records that the ended current attempt of `task_id` waits out its back-off, reports
    /// the task `scheduled` with the next attempt's time, and sets the timer.
    fn schedule_restart(
        &mut self,
        task_id: TaskId,
        container_id: Option<cube_core::ContainerId>,
        exit_code: Option<i64>,
        reason: String,
        ctx: &mut Context<Self>,
    ) {
        let now = self.config.clock.now();
        let Some(entry) = self.tasks.get_mut(&task_id) else {
            return;
        };
        let record = &mut entry.record;
        let policy = record.spec.restart_policy;
        let restart = record.restart_count + 1;
        let delay = policy.delay(restart, rand::random_range(-1.0..=1.0));
        let next_attempt_at = now + chrono::TimeDelta::from_std(delay).unwrap_or_default();
        let reason = format!(
            "{reason}; restart {restart} of {} in {}",
            policy.max_attempts,
            format_delay(delay)
        );

        // The container is removed, so a restarted worker must not try to adopt it.
        record.state = TaskState::Scheduled;
        record.container_id = None;
        record.host_ports.clear();
        record.exit_code = exit_code;
        record.reason = Some(reason.clone());
        record.finished_at = Some(now);
        record.next_attempt_at = Some(next_attempt_at);
        let attempt = record.attempt;
        let record = record.clone();
        self.save_observed(&record);

        log::info!(
            "task restart scheduled task_id={task_id} attempt={attempt} restart={restart}/{} \
             delay_ms={}",
            policy.max_attempts,
            delay.as_millis()
        );
        let report = TaskStatusReport {
            task_id,
            attempt,
            state: TaskState::Scheduled,
            container_id,
            host_ports: Vec::new(),
            exit_code,
            reason,
            restart_count: record.restart_count,
            next_attempt_at: Some(next_attempt_at),
            replaces: record.replaces,
        };
        self.outbox.publish(ReportBody::TaskStatus(report));
        self.set_restart_timer(task_id, attempt, delay, ctx);
    }

    /// Sets the timer of a back-off read from the store, due at `at`.
    fn resume_backoff(&mut self, task_id: TaskId, at: Timestamp, ctx: &mut Context<Self>) {
        let now = self.config.clock.now();
        let delay = (at - now).to_std().unwrap_or(Duration::ZERO);
        let Some(attempt) = self.tasks.get(&task_id).map(|entry| entry.record.attempt) else {
            return;
        };
        log::info!(
            "task restart resumed task_id={task_id} attempt={attempt} delay_ms={}",
            delay.as_millis()
        );
        self.set_restart_timer(task_id, attempt, delay, ctx);
    }

    fn set_restart_timer(
        &mut self,
        task_id: TaskId,
        ended: AttemptId,
        delay: Duration,
        ctx: &mut Context<Self>,
    ) {
        let timer = ctx.run_later(delay, move |act, ctx| act.restart_due(task_id, ended, ctx));
        if let Some(entry) = self.tasks.get_mut(&task_id)
            && let Some(previous) = entry.restart_timer.replace(timer)
        {
            ctx.cancel_future(previous);
        }
    }

    /// Starts a new attempt of `task_id` replacing `ended`, unless the task moved on during
    /// the back-off (stopped, or replaced by the manager).
    fn restart_due(&mut self, task_id: TaskId, ended: AttemptId, ctx: &mut Context<Self>) {
        let Some(entry) = self.tasks.get_mut(&task_id) else {
            return;
        };
        entry.restart_timer = None;
        let record = &entry.record;
        let waiting = record.attempt == ended
            && record.state == TaskState::Scheduled
            && record.next_attempt_at.is_some()
            && !record.stop_requested
            && entry.supervisor.is_none();
        if !waiting {
            log::debug!("task {task_id} restart after attempt {ended} no longer due");
            return;
        }

        let mut record = record.clone();
        record.replaces = Some(ended);
        record.attempt = AttemptId::generate();
        record.restart_count += 1;
        record.next_attempt_at = None;
        record.exit_code = None;
        record.reason = None;
        record.accepted_at = self.config.clock.now();
        record.started_at = None;
        record.finished_at = None;
        let committed = self.save(&record);
        let recorded = committed
            .into_actor(self)
            .map(move |result, act, ctx| act.restart_recorded(task_id, ended, record, result, ctx));
        ctx.spawn(recorded);
    }

    /// Starts the restarted attempt `record` once its record is durable, unless the task
    /// moved on meanwhile.
    fn restart_recorded(
        &mut self,
        task_id: TaskId,
        ended: AttemptId,
        record: WorkerTask,
        result: Result<Vec<u64>, StoreError>,
        ctx: &mut Context<Self>,
    ) {
        let still_due = self.tasks.get(&task_id).is_some_and(|entry| {
            entry.record.attempt == ended
                && entry.record.state == TaskState::Scheduled
                && !entry.record.stop_requested
                && entry.supervisor.is_none()
        });
        if !still_due {
            log::debug!("task {task_id} restart after attempt {ended} no longer due");
            return;
        }
        if let Err(error) = result {
            // Starting a container the store does not know could make a restarted worker
            // start another one, so the task ends instead.
            let reason = format!(
                "failed to record restart {} of task {task_id}: {error}",
                record.restart_count
            );
            log::error!("{reason}");
            let event = AttemptEvent::Ended {
                state: TaskState::Failed,
                container_id: None,
                exit_code: None,
                reason,
            };
            self.record_and_publish(task_id, &event);
            return;
        }

        log::info!(
            "task restarting task_id={task_id} attempt={} replaces={ended} restart={}/{}",
            record.attempt,
            record.restart_count,
            record.spec.restart_policy.max_attempts
        );
        let supervisor = self.spawn_supervisor(&record, Launch::Start, ctx);
        if let Some(entry) = self.tasks.get_mut(&task_id) {
            entry.record = record;
            entry.supervisor = Some(supervisor);
        }
    }

    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        // The interval keeps the actor alive, so stop here once no one can reach it.
        if !ctx.connected() {
            log::info!("worker {} has no users left; stopping", self.config.node_id);
            ctx.stop();
            return;
        }
        let heartbeat = Heartbeat {
            capacity: self.capacity(),
            metrics: self.current_metrics(),
        };
        self.outbox.publish(ReportBody::Heartbeat(heartbeat));
    }
}

/// Formats a restart delay for a reason text, such as "1.2s" or "250ms".
fn format_delay(delay: Duration) -> String {
    if delay < Duration::from_secs(1) {
        format!("{}ms", delay.as_millis())
    } else {
        format!("{:.1}s", delay.as_secs_f64())
    }
}

/// Checks the start's port mappings against its spec and returns the ones to bind.
fn resolve_ports(msg: &StartTask) -> Result<Vec<PortMapping>, String> {
    if msg.ports.is_empty() {
        return Ok(PortMapping::from_spec(&msg.spec));
    }
    let mut wanted: Vec<_> = msg
        .spec
        .ports
        .iter()
        .map(|port| (port.container_port, port.protocol))
        .collect();
    let mut given: Vec<_> = msg
        .ports
        .iter()
        .map(|port| (port.container_port, port.protocol))
        .collect();
    wanted.sort();
    given.sort();
    if wanted != given {
        return Err(format!(
            "port mappings {given:?} do not match the spec's container ports {wanted:?}"
        ));
    }
    for (index, mapping) in msg.ports.iter().enumerate() {
        if mapping.host_port == Some(0) {
            return Err(format!(
                "ports[{index}].host_port is 0; leave it out for a dynamic port"
            ));
        }
    }
    Ok(msg.ports.clone())
}

impl Actor for Worker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let loaded = self.loaded.take().unwrap_or_else(|| Ok(Vec::new()));
        match loaded {
            Ok(records) => self.adopt(records, ctx),
            Err(error) => {
                log::error!(
                    "worker {} failed to read its store and stops: {error}",
                    self.config.node_id
                );
                ctx.stop();
                return;
            }
        }

        match self.config.metrics_interval {
            Some(interval) => {
                let collector = MetricsCollector::new(
                    CollectorConfig {
                        interval,
                        disk_path: self.config.disk_path.clone(),
                        clock: self.config.clock.clone(),
                    },
                    Some(ctx.address().downgrade().recipient()),
                );
                self.collector = Some(collector.start());
            }
            None if !self.capacity_fully_declared() => log::warn!(
                "worker {} samples no host metrics and declares only part of its capacity; \
                 undeclared resources count as 0",
                self.config.node_id
            ),
            None => {}
        }

        ctx.run_interval(self.config.heartbeat_interval, Self::heartbeat);
        if let Some(interval) = self.config.reconcile_interval {
            ctx.run_interval(interval, Self::reconcile);
        }
        log::info!(
            "worker {} started with {} recorded tasks",
            self.config.node_id,
            self.tasks.len()
        );
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        log::info!("worker {} stopped", self.config.node_id);
    }
}

impl Handler<StartTask> for Worker {
    type Result = ResponseActFuture<Self, Result<(), CommandError>>;

    fn handle(&mut self, msg: StartTask, ctx: &mut Context<Self>) -> Self::Result {
        let (task_id, attempt) = (msg.task_id, msg.attempt);
        // The acknowledgement waits until the record is durable; a repeat waits for the first.
        let committed = match self.accept_start(msg, ctx) {
            Ok(Some(committed)) => committed,
            Ok(None) => self.flushed(),
            Err(error) => return Box::pin(fut::ready(Err(error))),
        };
        Box::pin(committed.into_actor(self).map(move |result, act, _| {
            let Err(error) = result else {
                return Ok(());
            };
            act.abandon_unrecorded(task_id, attempt);
            Err(act.rejected(format!(
                "failed to record task {task_id} attempt {attempt}: {error}"
            )))
        }))
    }
}

impl Worker {
    /// Records and starts a new attempt; returns its commit, or `None` for an attempt that
    /// was accepted before.
    fn accept_start(
        &mut self,
        msg: StartTask,
        ctx: &mut Context<Self>,
    ) -> Result<Option<Committed>, CommandError> {
        let task_id = msg.task_id;
        if let Some(entry) = self.tasks.get(&task_id)
            && entry.record.attempt == msg.attempt
        {
            log::debug!("task {task_id} attempt {} already accepted", msg.attempt);
            return Ok(None);
        }
        msg.spec
            .validate(&SpecLimits::default())
            .map_err(|error| self.rejected(format!("task {task_id} has an {error}")))?;
        let ports =
            resolve_ports(&msg).map_err(|e| self.rejected(format!("task {task_id}: {e}")))?;
        if !self.tasks.contains_key(&task_id) {
            // An earlier attempt of the same task may still hold its ports until it ends;
            // for a new task, a held port means another process on this host has it.
            self.check_ports_free(&ports)?;
        }

        let record = WorkerTask {
            task_id,
            attempt: msg.attempt,
            spec: msg.spec,
            ports,
            state: TaskState::Scheduled,
            container_id: None,
            host_ports: Vec::new(),
            exit_code: None,
            reason: None,
            stop_requested: false,
            accepted_at: self.config.clock.now(),
            started_at: None,
            finished_at: None,
            restart_count: 0,
            next_attempt_at: None,
            replaces: None,
        };
        let committed = self.save(&record);

        let reason = format!("replaced by attempt {}", msg.attempt);
        if let Some(old) = self.tasks.get(&task_id)
            && old.supervisor.is_none()
            && !old.record.state.is_terminal()
        {
            // It was waiting for earlier attempts to end, or for a restart, and never started.
            self.end_unstarted(task_id, reason.clone(), ctx);
        }
        let mut retiring = HashMap::new();
        if let Some(old) = self.tasks.remove(&task_id) {
            retiring = old.retiring;
            if let Some(supervisor) = old.supervisor {
                log::info!(
                    "task {task_id} attempt {} stops: {reason}",
                    old.record.attempt
                );
                supervisor.do_send(StopAttempt { reason });
                retiring.insert(old.record.attempt, supervisor);
            }
        }

        let supervisor = retiring
            .is_empty()
            .then(|| self.spawn_supervisor(&record, Launch::Start, ctx));
        log::info!(
            "worker {} accepted task {task_id} attempt {}",
            self.config.node_id,
            record.attempt
        );
        self.tasks.insert(
            task_id,
            TaskEntry {
                record,
                supervisor,
                retiring,
                restart_timer: None,
            },
        );
        Ok(Some(committed))
    }

    /// Stops `attempt` of `task_id`, whose record failed to commit, so that nothing runs
    /// that a restarted worker would not know.
    fn abandon_unrecorded(&mut self, task_id: TaskId, attempt: AttemptId) {
        let Some(entry) = self.tasks.get(&task_id) else {
            return;
        };
        if entry.record.attempt != attempt {
            return;
        }
        if let Some(supervisor) = &entry.supervisor {
            supervisor.do_send(StopAttempt {
                reason: "the worker failed to record the attempt".to_owned(),
            });
        }
    }

    /// Returns a future that resolves once every record change queued so far is durable.
    fn flushed(&self) -> Committed {
        match &self.writer {
            Some(writer) => writer.flushed(),
            None => Committed::ready(Ok(Vec::new())),
        }
    }
}

impl Handler<StopTask> for Worker {
    type Result = ResponseActFuture<Self, Result<(), CommandError>>;

    fn handle(&mut self, msg: StopTask, ctx: &mut Context<Self>) -> Self::Result {
        let task_id = msg.task_id;
        // The acknowledgement waits until the stop request is durable.
        let committed = match self.accept_stop(msg, ctx) {
            Ok(Some(committed)) => committed,
            Ok(None) => self.flushed(),
            Err(error) => return Box::pin(fut::ready(Err(error))),
        };
        Box::pin(committed.into_actor(self).map(move |result, act, _| {
            result.map(drop).map_err(|error| {
                act.rejected(format!(
                    "failed to record the stop of task {task_id}: {error}"
                ))
            })
        }))
    }
}

impl Worker {
    /// Applies a stop request; returns the commit of the changed record, or `None` when
    /// nothing changed.
    fn accept_stop(
        &mut self,
        msg: StopTask,
        ctx: &mut Context<Self>,
    ) -> Result<Option<Committed>, CommandError> {
        let Some(entry) = self.tasks.get_mut(&msg.task_id) else {
            log::debug!("stop of unknown task {} ignored", msg.task_id);
            return Ok(None);
        };
        // A manager that has not yet seen a local restart names the attempt it replaced.
        let record = &entry.record;
        if msg
            .attempt
            .is_some_and(|attempt| attempt != record.attempt && Some(attempt) != record.replaces)
        {
            log::debug!("stop of an earlier attempt of task {} ignored", msg.task_id);
            return Ok(None);
        }
        if entry.record.stop_requested || entry.record.state.is_terminal() {
            return Ok(None);
        }

        let mut record = entry.record.clone();
        record.stop_requested = true;
        // Kept so that a restarted worker can finish the stop with the same reason.
        record.reason = Some(msg.reason.clone());
        let committed = self.save(&record);

        let Some(entry) = self.tasks.get_mut(&msg.task_id) else {
            return Ok(Some(committed));
        };
        entry.record = record;
        log::info!("task {} stop requested: {}", msg.task_id, msg.reason);
        match &entry.supervisor {
            Some(supervisor) => supervisor.do_send(StopAttempt { reason: msg.reason }),
            None => self.end_unstarted(msg.task_id, msg.reason, ctx),
        }
        Ok(Some(committed))
    }
}

impl Handler<ListTasks> for Worker {
    type Result = Result<Vec<WorkerTask>, CommandError>;

    fn handle(&mut self, _: ListTasks, _: &mut Context<Self>) -> Self::Result {
        Ok(self
            .tasks
            .values()
            .map(|entry| entry.record.clone())
            .collect())
    }
}

impl Handler<DescribeNode> for Worker {
    type Result = ResponseActFuture<Self, Result<NodeDescription, CommandError>>;

    fn handle(&mut self, _: DescribeNode, _: &mut Context<Self>) -> Self::Result {
        let collector = match &self.collector {
            Some(collector) if self.metrics.is_none() && !self.capacity_fully_declared() => {
                collector.clone()
            }
            _ => return Box::pin(fut::ready(Ok(self.describe()))),
        };
        // Undeclared capacity comes from the host: take the first sample now.
        Box::pin(
            collector
                .send(SampleNow)
                .into_actor(self)
                .map(|result, act, _| {
                    match result {
                        Ok(Ok(metrics)) => act.metrics = Some(metrics),
                        Ok(Err(error)) => log::warn!("worker {}: {error}", act.config.node_id),
                        Err(error) => log::warn!(
                            "worker {}: metrics collector unreachable: {error}",
                            act.config.node_id
                        ),
                    }
                    Ok(act.describe())
                }),
        )
    }
}

impl Handler<SubscribeReports> for Worker {
    type Result = ();

    fn handle(&mut self, msg: SubscribeReports, _: &mut Context<Self>) {
        log::debug!(
            "worker {} report subscriber after seq {}",
            self.config.node_id,
            msg.after
        );
        self.outbox.subscribe(msg.recipient, msg.after);
    }
}

impl Handler<AttemptProgress> for Worker {
    type Result = ();

    fn handle(&mut self, msg: AttemptProgress, ctx: &mut Context<Self>) {
        let AttemptProgress {
            task_id,
            attempt,
            event,
        } = msg;
        if let AttemptEvent::Health(changed) = event {
            self.publish_health(task_id, attempt, changed);
            return;
        }
        let ended = matches!(event, AttemptEvent::Ended { .. });
        let current = self
            .tasks
            .get(&task_id)
            .is_some_and(|entry| entry.record.attempt == attempt);
        if current && ended {
            self.end_attempt(task_id, event, ctx);
            return;
        }
        if current {
            let now = self.config.clock.now();
            if let Some(entry) = self.tasks.get_mut(&task_id) {
                Self::apply_to_record(&mut entry.record, &event, now);
                let record = entry.record.clone();
                self.save_observed(&record);
            }
            self.publish_status(task_id, attempt, &event);
            return;
        }

        self.publish_status(task_id, attempt, &event);
        let Some(entry) = self.tasks.get_mut(&task_id) else {
            return;
        };

        if ended && entry.retiring.remove(&attempt).is_some() && entry.retiring.is_empty() {
            // The last earlier attempt ended: the current one may start now.
            let waiting = entry.supervisor.is_none()
                && entry.record.state == TaskState::Scheduled
                && !entry.record.stop_requested;
            if waiting {
                let record = entry.record.clone();
                let supervisor = self.spawn_supervisor(&record, Launch::Start, ctx);
                if let Some(entry) = self.tasks.get_mut(&task_id) {
                    entry.supervisor = Some(supervisor);
                }
            }
        }
    }
}

impl Handler<HostSampled> for Worker {
    type Result = ();

    fn handle(&mut self, msg: HostSampled, _: &mut Context<Self>) {
        self.metrics = Some(msg.0);
    }
}

impl Handler<GetTask> for Worker {
    type Result = Option<WorkerTask>;

    fn handle(&mut self, msg: GetTask, _: &mut Context<Self>) -> Self::Result {
        self.tasks
            .get(&msg.task_id)
            .map(|entry| entry.record.clone())
    }
}

impl Handler<OpenReportStream> for Worker {
    type Result = MessageResult<OpenReportStream>;

    fn handle(&mut self, msg: OpenReportStream, _: &mut Context<Self>) -> Self::Result {
        let (replay, live) = self.outbox.open_stream(msg.after);
        MessageResult(ReportStream { replay, live })
    }
}

impl Handler<GetHostMetrics> for Worker {
    type Result = Option<HostMetrics>;

    fn handle(&mut self, _: GetHostMetrics, _: &mut Context<Self>) -> Self::Result {
        self.current_metrics()
    }
}

impl Handler<GetOutboxStats> for Worker {
    type Result = MessageResult<GetOutboxStats>;

    fn handle(&mut self, _: GetOutboxStats, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.outbox.stats())
    }
}

#[cfg(test)]
mod tests {
    use cube_core::{PortSpec, Protocol, TaskSpec};

    use super::*;

    fn start_with_ports(spec_ports: &[u16], mappings: &[(u16, Option<u16>)]) -> StartTask {
        let mut spec = TaskSpec::new("web", "img");
        spec.ports = spec_ports
            .iter()
            .map(|&container_port| PortSpec {
                container_port,
                host_port: None,
                protocol: Protocol::Tcp,
            })
            .collect();
        StartTask {
            task_id: TaskId::generate(),
            attempt: AttemptId::generate(),
            spec,
            ports: mappings
                .iter()
                .map(|&(container_port, host_port)| PortMapping {
                    container_port,
                    protocol: Protocol::Tcp,
                    host_port,
                })
                .collect(),
        }
    }

    #[test]
    fn ports_default_to_spec() {
        let ports = resolve_ports(&start_with_ports(&[80], &[])).unwrap();
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].host_port, None);
    }

    #[test]
    fn ports_must_match_spec() {
        assert!(resolve_ports(&start_with_ports(&[80], &[(80, Some(8081))])).is_ok());
        assert!(resolve_ports(&start_with_ports(&[80], &[(81, None)])).is_err());
        assert!(resolve_ports(&start_with_ports(&[80, 81], &[(80, None)])).is_err());
        assert!(resolve_ports(&start_with_ports(&[80], &[(80, Some(0))])).is_err());
    }
}
