//! The Worker actor: accepts commands, records attempts, and runs one supervisor per task.
//!
//! Commands stay fast: a handler validates, writes the attempt to the store, starts or
//! notifies a [`TaskSupervisor`] and replies, without awaiting the container engine. What
//! the supervisors observe comes back as [`AttemptProgress`], is written to the store and
//! published through the [`Outbox`] as reports stamped with this worker's node id and
//! sequence number. A heartbeat report carrying the latest host metrics follows every
//! heartbeat interval.
//!
//! Per task the worker keeps one record (the current attempt) and at most one supervisor
//! for it. A start for a new attempt of a task that still runs stops the old attempt first:
//! the new container starts once the old one has ended, so fixed host ports are free again.

use std::collections::{BTreeMap, HashMap};

use actix::prelude::*;
use cube_core::{
    AttemptId, Batch, CommandError, DescribeNode, Heartbeat, HostMetrics, ListTasks,
    NodeDescription, Operation, PortMapping, ReportBody, Resources, SpecLimits, StartTask,
    StopTask, Store, SubscribeReports, TaskId, TaskState, TaskStatusReport, WorkerReport,
    WorkerTask,
};
use tokio::sync::mpsc;

use crate::WorkerConfig;
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
}

/// Runs tasks as containers on one node.
pub struct Worker {
    config: WorkerConfig,
    runtime: SharedRuntime,
    store: Box<dyn Store>,
    tasks: BTreeMap<TaskId, TaskEntry>,
    outbox: Outbox,
    metrics: Option<HostMetrics>,
    collector: Option<Addr<MetricsCollector>>,
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
    /// The store is read when the actor starts; use [`Worker::start`] to start it on the
    /// current arbiter.
    pub fn new(config: WorkerConfig, runtime: SharedRuntime, store: Box<dyn Store>) -> Self {
        let outbox = Outbox::new(
            config.node_id.clone(),
            config.clock.clone(),
            config.outbox_capacity,
        );
        Self {
            config,
            runtime,
            store,
            tasks: BTreeMap::new(),
            outbox,
            metrics: None,
            collector: None,
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

    fn rejected(&self, reason: String) -> CommandError {
        CommandError::Rejected {
            node: self.config.node_id.clone(),
            reason,
        }
    }

    fn save(&mut self, record: &WorkerTask) -> Result<(), cube_core::StoreError> {
        let mut batch = Batch::new();
        batch.push(Operation::PutWorkerTask(record.clone()));
        self.store.commit(batch).map(|_| ())
    }

    /// Saves a record after an observed change; a failure is logged, since the change has
    /// already happened and is still reported.
    fn save_observed(&mut self, record: &WorkerTask) {
        if let Err(error) = self.save(record) {
            log::error!(
                "worker {} failed to record task {} as {}: {error}",
                self.config.node_id,
                record.task_id,
                record.state
            );
        }
    }

    fn load_records(&mut self, ctx: &mut Context<Self>) -> Result<(), cube_core::StoreError> {
        for record in self.store.worker_tasks()? {
            let task_id = record.task_id;
            let active = !record.state.is_terminal();
            let stop_reason = record.stop_requested.then(|| record.reason.clone());
            let container_id = record.container_id.clone();
            self.tasks.insert(
                task_id,
                TaskEntry {
                    record,
                    supervisor: None,
                    retiring: HashMap::new(),
                },
            );
            if !active {
                continue;
            }

            // NOTE: containers that carry cube's labels but have no record are not
            // reconciled yet; only recorded attempts are resumed.
            let reason = stop_reason.map(Option::unwrap_or_default);
            let launch = match (container_id, &reason) {
                (Some(container_id), _) => Launch::Adopt { container_id },
                (None, Some(reason)) => {
                    self.end_unstarted(task_id, reason.clone());
                    continue;
                }
                (None, None) => Launch::Start,
            };
            let record = self.tasks[&task_id].record.clone();
            let supervisor = self.spawn_supervisor(&record, launch, ctx);
            if let Some(reason) = reason {
                supervisor.do_send(StopAttempt { reason });
            }
            if let Some(entry) = self.tasks.get_mut(&task_id) {
                entry.supervisor = Some(supervisor);
            }
        }
        Ok(())
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
        let report = match event {
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
            },
        };
        self.outbox.publish(ReportBody::TaskStatus(report));
    }

    /// Ends an attempt that never got a supervisor, such as one replaced before it started.
    fn end_unstarted(&mut self, task_id: TaskId, reason: String) {
        let now = self.config.clock.now();
        let Some(entry) = self.tasks.get_mut(&task_id) else {
            return;
        };
        let record = &mut entry.record;
        record.state = TaskState::Completed;
        record.reason = Some(reason.clone());
        record.finished_at = Some(now);
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

    fn apply_to_record(record: &mut WorkerTask, event: &AttemptEvent, now: cube_core::Timestamp) {
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
        if let Err(error) = self.load_records(ctx) {
            log::error!(
                "worker {} failed to read its store and stops: {error}",
                self.config.node_id
            );
            ctx.stop();
            return;
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
    type Result = Result<(), CommandError>;

    fn handle(&mut self, msg: StartTask, ctx: &mut Context<Self>) -> Self::Result {
        let task_id = msg.task_id;
        if let Some(entry) = self.tasks.get(&task_id)
            && entry.record.attempt == msg.attempt
        {
            log::debug!("task {task_id} attempt {} already accepted", msg.attempt);
            return Ok(());
        }
        msg.spec
            .validate(&SpecLimits::default())
            .map_err(|error| self.rejected(format!("task {task_id} has an {error}")))?;
        let ports =
            resolve_ports(&msg).map_err(|e| self.rejected(format!("task {task_id}: {e}")))?;

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
        };
        self.save(&record).map_err(|error| {
            self.rejected(format!(
                "failed to record task {task_id} attempt {}: {error}",
                msg.attempt
            ))
        })?;

        let reason = format!("replaced by attempt {}", msg.attempt);
        if let Some(old) = self.tasks.get(&task_id)
            && old.supervisor.is_none()
            && !old.record.state.is_terminal()
        {
            // It was waiting for earlier attempts to end and never started.
            self.end_unstarted(task_id, reason.clone());
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
            },
        );
        Ok(())
    }
}

impl Handler<StopTask> for Worker {
    type Result = Result<(), CommandError>;

    fn handle(&mut self, msg: StopTask, _: &mut Context<Self>) -> Self::Result {
        let Some(entry) = self.tasks.get_mut(&msg.task_id) else {
            log::debug!("stop of unknown task {} ignored", msg.task_id);
            return Ok(());
        };
        if msg
            .attempt
            .is_some_and(|attempt| attempt != entry.record.attempt)
        {
            log::debug!("stop of an earlier attempt of task {} ignored", msg.task_id);
            return Ok(());
        }
        if entry.record.stop_requested || entry.record.state.is_terminal() {
            return Ok(());
        }

        let mut record = entry.record.clone();
        record.stop_requested = true;
        // Kept so that a restarted worker can finish the stop with the same reason.
        record.reason = Some(msg.reason.clone());
        self.save(&record).map_err(|error| {
            self.rejected(format!(
                "failed to record the stop of task {}: {error}",
                msg.task_id
            ))
        })?;

        let Some(entry) = self.tasks.get_mut(&msg.task_id) else {
            return Ok(());
        };
        entry.record = record;
        log::info!("task {} stop requested: {}", msg.task_id, msg.reason);
        match &entry.supervisor {
            Some(supervisor) => supervisor.do_send(StopAttempt { reason: msg.reason }),
            None => self.end_unstarted(msg.task_id, msg.reason),
        }
        Ok(())
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
        let ended = matches!(event, AttemptEvent::Ended { .. });
        self.publish_status(task_id, attempt, &event);

        let now = self.config.clock.now();
        let Some(entry) = self.tasks.get_mut(&task_id) else {
            return;
        };
        if entry.record.attempt == attempt {
            Self::apply_to_record(&mut entry.record, &event, now);
            if ended {
                entry.supervisor = None;
            }
            let record = entry.record.clone();
            self.save_observed(&record);
            return;
        }

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
