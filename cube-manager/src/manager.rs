//! The Manager actor: accepts tasks, places them through the scheduler, drives workers and
//! applies what they report.
//!
//! The HTTP edge ([`crate::http`]) and embedding code send it [`CreateTask`], [`GetTask`],
//! [`GetTasks`], [`RequestStop`], [`AddWorker`], [`ListNodes`] and [`GetSpecLimits`].
//! Workers send it [`WorkerReport`]s through the weak recipient it hands them in
//! [`SubscribeReports`], and a watched [`crate::RemoteWorker`] sends [`ReportStreamChanged`]. It
//! requests placements from the [`Scheduler`] and sends [`StartTask`] and [`StopTask`]
//! through each worker's [`WorkerHandle`].
//!
//! The manager owns the task records (cached in memory, written to its [`Store`]) and the
//! queue of pending tasks. Every change is committed to the store, task and event in one
//! [`Batch`], before a reply goes out, and every state change goes through
//! [`Task::transition`].
//!
//! # Guarantees
//!
//! - A submitted task is placed as soon as the submission is stored; a task that fits nowhere
//!   stays `pending` with the reason and is tried again whenever capacity appears (a node
//!   joins or changes, a task releases its allocation).
//! - Each placement is a new attempt; reports about any other attempt, and reports whose
//!   per-worker sequence number was already seen, are ignored. The one exception is a
//!   worker's local restart: a report whose `replaces` names the current attempt on the same
//!   node moves the task to the new attempt, and the allocation stays booked meanwhile.
//! - A task's allocation is released exactly once, when it reaches a terminal state or goes
//!   back to `pending`.
//! - A node that a command cannot reach or that times out, or whose report stream breaks, is
//!   marked `unreachable` and skipped by every policy until it reports again.
//! - A node silent for the heartbeat TTL plus grace, on the manager's monotonic clock, is
//!   `down`: its unfinished tasks become `lost`, release their allocations and go back to
//!   `pending` to be placed on another node as new attempts (see [`crate::liveness`]).
//!
//! # Caveats
//!
//! - Tasks loaded from a persistent store that were `scheduled` or `running` hold no
//!   allocation until their node registers again; then they are booked and reconciled with
//!   the worker's records (see `manager/recovery.rs`).
//! - Changes that follow a worker's report are committed in the background; an API answer or
//!   a command to a worker waits until every earlier change is durable.
//! - A node that comes back after being declared down is told to stop each attempt it
//!   reports or lists that the manager moved elsewhere or ended; one whose stop is lost
//!   keeps running until the node's next report about it or its next return.

mod node_loss;
mod recovery;

use std::collections::{HashMap, HashSet, VecDeque};

use actix::prelude::*;
use log::{debug, error, info, warn};

use cube_core::event::TaskEvent;
use cube_core::ids::{AttemptId, NodeId, TaskId};
use cube_core::messages::{
    CommandError, ReportBody, StartTask, StopTask, SubscribeReports, TaskHealthReport,
    TaskStatusReport, WorkerHandle, WorkerReport,
};
use cube_core::node::{NodeDescription, NodeStatus};
use cube_core::scheduler::{Unplaced, policy_by_name};
use cube_core::spec::{SpecLimits, TaskSpec};
use cube_core::store::{Batch, Committed, NodeRecord, Operation, Store, StoreWriter};
use cube_core::task::{DesiredState, PortBinding, STOPPED_BY_USER, Task, TaskState};
use cube_core::wire::NodeView;

use crate::error::error_chain;
use crate::liveness::Liveness;
use crate::remote_worker::ReportStreamChanged;
use crate::scheduler::{
    Assignment, GetNodes, NodeJoined, NodeUpdated, PlaceRequest, PlaceTasks, ReleaseTask,
    ReservePort, Scheduler,
};
use crate::{Error, ManagerConfig};

// === messages ===

/// Submits a task: validates its spec, stores it and places it.
///
/// With a client-supplied `id` already stored, an identical spec returns the stored task
/// with `created: false`; a different spec is [`Error::Conflict`].
#[derive(Debug, Message)]
#[rtype(result = "Result<Submission, Error>")]
pub struct CreateTask {
    /// Client-supplied id; `None` generates one.
    pub id: Option<TaskId>,
    /// The container to run and its resources.
    pub spec: TaskSpec,
}

/// The reply to [`CreateTask`].
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    /// The stored task.
    pub task: Task,
    /// Whether this request created it; `false` for an identical repeat.
    pub created: bool,
}

/// Returns one task.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<Task, Error>")]
pub struct GetTask {
    /// The task.
    pub task_id: TaskId,
}

/// Returns every task, oldest first.
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "Vec<Task>")]
pub struct GetTasks;

/// Sets a task's desired state to `stopped` and returns the task.
///
/// A pending task ends `completed` at once; a scheduled or running one is stopped by its
/// worker, whose report ends it. Stopping a finished or already stopped task changes
/// nothing. The record is kept.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<Task, Error>")]
pub struct RequestStop {
    /// The task.
    pub task_id: TaskId,
}

/// Adds a worker: fetches its description, registers it with the scheduler and subscribes
/// to its reports. Returns its node id.
///
/// Adding a node that is already registered replaces its handle and keeps its tasks.
#[derive(Message)]
#[rtype(result = "Result<NodeId, Error>")]
pub struct AddWorker {
    /// How to reach the worker.
    pub handle: WorkerHandle,
    /// Base URL of a remote worker's API, shown in `GET /nodes`; `None` for an in-process one.
    pub address: Option<String>,
}

/// Returns every node with its capacity, allocation and metrics.
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "Result<Vec<NodeView>, Error>")]
pub struct ListNodes;

/// Returns the upper bounds that submitted specs' resources are checked against.
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "SpecLimits")]
pub struct GetSpecLimits;

/// Runs a placement pass over the queued tasks.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
struct PlacePending;

// === the actor ===

/// A registered worker.
struct WorkerEntry {
    handle: WorkerHandle,
    address: Option<String>,
    publish_address: String,
    /// Highest report sequence number applied from this worker.
    last_seq: u64,
    /// Whether a command or the report stream failed since the last report, so the
    /// scheduler marks the node `unreachable`.
    unreachable: bool,
}

/// Accepts tasks, places them and reconciles what workers report.
///
/// Handles [`CreateTask`], [`GetTask`], [`GetTasks`], [`RequestStop`], [`AddWorker`],
/// [`ListNodes`], [`GetSpecLimits`], [`WorkerReport`] and [`ReportStreamChanged`]. Sends
/// [`PlaceTasks`], [`ReleaseTask`], [`NodeJoined`] and [`NodeUpdated`] to its [`Scheduler`],
/// and [`StartTask`], [`StopTask`] and [`SubscribeReports`] to workers.
pub struct Manager {
    config: ManagerConfig,
    store: StoreWriter,
    /// Nodes registered before the last restart, as the store holds them.
    stored_nodes: Vec<NodeRecord>,
    /// Submissions whose commit is under way, by id, so that a repeat waits for it.
    submitting: HashMap<TaskId, TaskSpec>,
    /// Scheduled or running tasks loaded from the store whose node has not registered yet;
    /// their allocations are booked and they are reconciled when it does.
    recovering: HashSet<TaskId>,
    scheduler: Addr<Scheduler>,
    /// When each node was last heard from, on the manager's monotonic clock.
    liveness: Liveness,
    tasks: HashMap<TaskId, Task>,
    workers: HashMap<NodeId, WorkerEntry>,
    /// Tasks to try at the next placement pass, oldest first.
    queued: VecDeque<TaskId>,
    /// Tasks that fit nowhere, tried again when capacity changes.
    waiting: VecDeque<TaskId>,
    /// Whether a placement pass is waiting for the scheduler.
    placing: bool,
    /// Incremented on every capacity change, so a pass can tell whether one happened
    /// while it waited for the scheduler.
    capacity_epoch: u64,
}

impl Manager {
    /// Creates a manager over `store`, loading the tasks it holds, and starts its scheduler.
    ///
    /// Must be called inside a running actix `System`, because it starts the [`Scheduler`]
    /// actor. Pending tasks from the store are placed once the manager starts.
    ///
    /// # Errors
    ///
    /// Returns [`Error::UnknownPolicy`] or [`Error::InvalidPortRange`] for bad settings, and
    /// [`Error::LoadStore`] when the store cannot be read.
    pub fn new(config: ManagerConfig, store: Box<dyn Store>) -> Result<Self, Error> {
        config.validate()?;
        let policy = policy_by_name(&config.scheduler).ok_or_else(|| Error::UnknownPolicy {
            name: config.scheduler.clone(),
        })?;
        let mut stored = store
            .tasks()
            .map_err(|source| Error::LoadStore { source })?;
        stored.sort_by_key(|task| (task.created_at, task.id));
        let stored_nodes = store
            .nodes()
            .map_err(|source| Error::LoadStore { source })?;
        let recovering = recovery::tasks_to_recover(&stored);

        let queued = stored
            .iter()
            .filter(|task| {
                task.state == TaskState::Pending && task.desired_state == DesiredState::Running
            })
            .map(|task| task.id)
            .collect();
        let tasks = stored.into_iter().map(|task| (task.id, task)).collect();
        let store =
            StoreWriter::spawn("manager", store).map_err(|source| Error::LoadStore { source })?;
        let scheduler = Scheduler::new(policy, config.dynamic_ports).start();
        let liveness = Liveness::new(config.heartbeat_ttl, config.heartbeat_grace);
        Ok(Self {
            config,
            store,
            stored_nodes,
            submitting: HashMap::new(),
            recovering,
            scheduler,
            liveness,
            tasks,
            workers: HashMap::new(),
            queued,
            waiting: VecDeque::new(),
            placing: false,
            capacity_epoch: 0,
        })
    }

    /// The scheduler actor this manager places tasks with.
    pub fn scheduler(&self) -> Addr<Scheduler> {
        self.scheduler.clone()
    }

    /// The nodes the store held when the manager was created, so that a daemon can connect
    /// the remote workers it knew before a restart.
    pub fn stored_nodes(&self) -> &[NodeRecord] {
        &self.stored_nodes
    }
}

impl Actor for Manager {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Workers' reports and the API's requests share this mailbox; 16 is too few for a
        // burst of reports from many workers.
        ctx.set_mailbox_capacity(1024);
        info!(
            "manager started policy={} tasks={}",
            self.config.scheduler,
            self.tasks.len()
        );
        if !self.queued.is_empty() {
            ctx.notify(PlacePending);
        }
        if let Some(interval) = self.config.liveness_check_interval {
            ctx.run_interval(interval, Self::check_liveness);
        }
    }
}

impl Handler<CreateTask> for Manager {
    type Result = ResponseActFuture<Self, Result<Submission, Error>>;

    fn handle(&mut self, msg: CreateTask, _: &mut Context<Self>) -> Self::Result {
        if let Err(error) = msg.spec.validate(&self.config.spec_limits) {
            return Box::pin(fut::ready(Err(error.into())));
        }
        if let Some(id) = msg.id {
            if let Some(existing) = self.tasks.get(&id) {
                return Box::pin(fut::ready(repeated_submission(existing, &msg.spec)));
            }
            if let Some(spec) = self.submitting.get(&id) {
                if *spec != msg.spec {
                    return Box::pin(fut::ready(Err(Error::Conflict { task_id: id })));
                }
                // The first submission's commit is under way: answer once it is done.
                return Box::pin(self.store.flushed().into_actor(self).map(move |_, act, _| {
                    match act.tasks.get(&id) {
                        Some(existing) => repeated_submission(existing, &msg.spec),
                        None => Err(Error::SubmissionFailed { task_id: id }),
                    }
                }));
            }
        }

        let id = msg.id.unwrap_or_else(TaskId::generate);
        let task = Task::new(id, msg.spec, self.config.clock.now());
        let mut batch = Batch::new();
        batch.put_task(task.clone());
        self.submitting.insert(id, task.spec.clone());
        // The task enters the cache, and is placed, only once it is durable.
        Box::pin(
            self.store
                .commit(batch)
                .into_actor(self)
                .map(move |result, act, ctx| {
                    act.submitting.remove(&id);
                    result.map_err(|source| Error::Store {
                        task_id: id,
                        source,
                    })?;
                    info!("task submitted task_id={id} image={}", task.spec.image);
                    act.tasks.insert(id, task.clone());
                    act.queued.push_back(id);
                    ctx.notify(PlacePending);
                    Ok(Submission {
                        task,
                        created: true,
                    })
                }),
        )
    }
}

impl Handler<GetTask> for Manager {
    type Result = Result<Task, Error>;

    fn handle(&mut self, msg: GetTask, _: &mut Context<Self>) -> Self::Result {
        self.tasks
            .get(&msg.task_id)
            .cloned()
            .ok_or(Error::TaskNotFound {
                task_id: msg.task_id,
            })
    }
}

impl Handler<GetTasks> for Manager {
    type Result = Vec<Task>;

    fn handle(&mut self, _: GetTasks, _: &mut Context<Self>) -> Vec<Task> {
        let mut tasks: Vec<Task> = self.tasks.values().cloned().collect();
        tasks.sort_by_key(|task| (task.created_at, task.id));
        tasks
    }
}

impl Handler<RequestStop> for Manager {
    type Result = ResponseActFuture<Self, Result<Task, Error>>;

    fn handle(&mut self, msg: RequestStop, ctx: &mut Context<Self>) -> Self::Result {
        let task_id = msg.task_id;
        // The answer waits for the stop to be durable.
        let (task, committed) = match self.request_stop(msg, ctx) {
            Ok((task, committed)) => (task, committed.unwrap_or_else(|| self.store.flushed())),
            Err(error) => return Box::pin(fut::ready(Err(error))),
        };
        Box::pin(committed.into_actor(self).map(move |result, _, _| {
            result.map_err(|source| Error::Store { task_id, source })?;
            Ok(task)
        }))
    }
}

impl Manager {
    /// Applies a stop request and returns the task with the commit of its change, if any.
    fn request_stop(
        &mut self,
        msg: RequestStop,
        ctx: &mut Context<Self>,
    ) -> Result<(Task, Option<Committed>), Error> {
        let task = self.tasks.get(&msg.task_id).ok_or(Error::TaskNotFound {
            task_id: msg.task_id,
        })?;
        if task.desired_state == DesiredState::Stopped {
            // A repeat changes nothing, but asks the worker again in case the first stop
            // never reached it.
            let task = task.clone();
            if matches!(task.state, TaskState::Scheduled | TaskState::Running) {
                self.send_stop(&task, ctx);
            }
            return Ok((task, None));
        }

        let mut task = task.clone();
        task.desired_state = DesiredState::Stopped;
        info!(
            "task stop requested task_id={} state={}",
            task.id, task.state
        );
        let committed = match task.state {
            TaskState::Pending => {
                let event = self.transition(&mut task, TaskState::Completed, STOPPED_BY_USER)?;
                self.commit(task.clone(), vec![event])?
            }
            TaskState::Scheduled | TaskState::Running => {
                let committed = self.commit(task.clone(), Vec::new())?;
                self.send_stop(&task, ctx);
                committed
            }
            TaskState::Lost => {
                // Its node is silent: end the task here, and still ask the node in case it
                // comes back.
                let event = self.transition(&mut task, TaskState::Completed, STOPPED_BY_USER)?;
                let committed = self.commit(task.clone(), vec![event])?;
                self.send_stop(&task, ctx);
                self.release(task.id, ctx);
                committed
            }
            TaskState::Completed | TaskState::Failed => self.commit(task.clone(), Vec::new())?,
        };
        Ok((task, Some(committed)))
    }
}

impl Handler<AddWorker> for Manager {
    type Result = ResponseActFuture<Self, Result<NodeId, Error>>;

    fn handle(&mut self, msg: AddWorker, _: &mut Context<Self>) -> Self::Result {
        let handle = msg.handle;
        let describer = handle.clone();
        let timeout = self.config.command_timeout;
        Box::pin(
            async move { describer.describe_node(timeout).await }
                .into_actor(self)
                .map(move |result, act, ctx| {
                    let description = result.map_err(|source| Error::AddWorker {
                        node: handle.node.clone(),
                        source,
                    })?;
                    if description.id != handle.node {
                        return Err(Error::NodeMismatch {
                            handle_node: handle.node,
                            described_node: description.id,
                        });
                    }
                    act.register_worker(handle, msg.address, description, ctx)
                }),
        )
    }
}

impl Handler<ListNodes> for Manager {
    type Result = ResponseActFuture<Self, Result<Vec<NodeView>, Error>>;

    fn handle(&mut self, _: ListNodes, _: &mut Context<Self>) -> Self::Result {
        Box::pin(
            self.scheduler
                .send(GetNodes)
                .into_actor(self)
                .map(|result, act, _| {
                    let nodes = result.map_err(|source| Error::ActorUnavailable {
                        actor: "scheduler",
                        source,
                    })?;
                    let views = nodes
                        .iter()
                        .map(|node| NodeView {
                            id: node.id.clone(),
                            address: act
                                .workers
                                .get(&node.id)
                                .and_then(|entry| entry.address.clone()),
                            status: node.status,
                            capacity: node.capacity,
                            allocated: node.allocated,
                            free: node.free(),
                            task_count: node.task_count,
                            metrics: node.metrics.clone(),
                        })
                        .collect();
                    Ok(views)
                }),
        )
    }
}

impl Handler<GetSpecLimits> for Manager {
    type Result = MessageResult<GetSpecLimits>;

    fn handle(&mut self, _: GetSpecLimits, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.config.spec_limits)
    }
}

impl Handler<WorkerReport> for Manager {
    type Result = ();

    fn handle(&mut self, report: WorkerReport, ctx: &mut Context<Self>) {
        if !self.workers.contains_key(&report.node) {
            debug!(
                "report from unregistered node ignored node_id={}",
                report.node
            );
            return;
        }
        // Any report proves the node alive, even one already applied.
        let was_down = self
            .liveness
            .heard(&report.node, self.config.clock.monotonic());
        if was_down {
            self.node_returned(&report.node, ctx);
        }
        let Some(entry) = self.workers.get_mut(&report.node) else {
            return;
        };
        if report.seq <= entry.last_seq {
            debug!(
                "report already applied node_id={} seq={} last_seq={}",
                report.node, report.seq, entry.last_seq
            );
            return;
        }
        entry.last_seq = report.seq;
        if std::mem::take(&mut entry.unreachable) {
            self.mark_reachable(&report.node, ctx);
        }

        match report.body {
            ReportBody::Heartbeat(heartbeat) => {
                let update = NodeUpdated {
                    node: report.node,
                    capacity: Some(heartbeat.capacity),
                    metrics: heartbeat.metrics,
                    status: None,
                };
                let changed =
                    self.scheduler
                        .send(update)
                        .into_actor(self)
                        .map(|result, act, ctx| {
                            if let Ok(true) = result {
                                act.capacity_changed(ctx);
                            }
                        });
                ctx.spawn(changed);
            }
            ReportBody::TaskStatus(status) => self.apply_status(&report.node, status, ctx),
            ReportBody::TaskHealth(health) => self.apply_health(&report.node, health),
        }
    }
}

impl Handler<ReportStreamChanged> for Manager {
    type Result = ();

    fn handle(&mut self, msg: ReportStreamChanged, ctx: &mut Context<Self>) {
        if msg.worker_restarted
            && let Some(entry) = self.workers.get_mut(&msg.node)
        {
            // The bridge replays the new process's reports from 1; they were never applied.
            info!(
                "worker process restarted, its reports are applied from the start node_id={}",
                msg.node
            );
            entry.last_seq = 0;
        }
        if !msg.connected {
            self.mark_unreachable(&msg.node, &msg.reason);
            return;
        }
        if let Some(entry) = self.workers.get_mut(&msg.node)
            && std::mem::take(&mut entry.unreachable)
        {
            self.mark_reachable(&msg.node, ctx);
        }
    }
}

impl Handler<PlacePending> for Manager {
    type Result = ();

    fn handle(&mut self, _: PlacePending, ctx: &mut Context<Self>) {
        if self.placing {
            // The running pass notifies again when it sees queued tasks.
            return;
        }
        let mut seen = HashSet::new();
        let batch: Vec<TaskId> = std::mem::take(&mut self.queued)
            .into_iter()
            .filter(|id| seen.insert(*id) && self.is_placeable(*id))
            .collect();
        if batch.is_empty() {
            return;
        }

        let requests = batch
            .iter()
            .map(|id| PlaceRequest::for_spec(*id, &self.tasks[id].spec))
            .collect();
        self.placing = true;
        let epoch = self.capacity_epoch;
        let pass = self
            .scheduler
            .send(PlaceTasks { requests })
            .into_actor(self)
            .map(move |result, act, ctx| {
                act.placing = false;
                match result {
                    Ok(results) => act.apply_placements(batch, results, epoch, ctx),
                    Err(source) => {
                        error!("scheduler did not answer a placement pass: {source}");
                        act.waiting.extend(batch);
                    }
                }
                if !act.queued.is_empty() {
                    ctx.notify(PlacePending);
                }
            });
        ctx.spawn(pass);
    }
}

// === private helpers ===

impl Manager {
    /// Whether `id` is a task that should be placed now.
    fn is_placeable(&self, id: TaskId) -> bool {
        self.tasks.get(&id).is_some_and(|task| {
            task.state == TaskState::Pending && task.desired_state == DesiredState::Running
        })
    }

    /// Queues every waiting task for another pass, because capacity may have appeared.
    fn capacity_changed(&mut self, ctx: &mut Context<Self>) {
        self.capacity_epoch += 1;
        if self.waiting.is_empty() {
            return;
        }
        // Waiting tasks are older than queued ones, so they go first.
        let mut queued = std::mem::take(&mut self.waiting);
        queued.extend(self.queued.drain(..));
        self.queued = queued;
        ctx.notify(PlacePending);
    }

    fn apply_placements(
        &mut self,
        batch: Vec<TaskId>,
        results: Vec<Result<Assignment, Unplaced>>,
        epoch: u64,
        ctx: &mut Context<Self>,
    ) {
        // Capacity that appeared while the scheduler decided may fit the unplaced tasks.
        let capacity_changed = epoch != self.capacity_epoch;
        for (task_id, result) in batch.into_iter().zip(results) {
            match result {
                Ok(assignment) => self.start_assignment(assignment, ctx),
                Err(unplaced) => {
                    self.record_unplaced(task_id, &unplaced);
                    if capacity_changed {
                        self.queued.push_back(task_id);
                    } else {
                        self.waiting.push_back(task_id);
                    }
                }
            }
        }
    }

    /// Stores why `task_id` stays pending, if the reason changed.
    fn record_unplaced(&mut self, task_id: TaskId, unplaced: &Unplaced) {
        let Some(task) = self.tasks.get(&task_id) else {
            return;
        };
        let reason = unplaced.to_string();
        debug!("task stays pending task_id={task_id} reason={reason}");
        if task.state != TaskState::Pending || task.pending_reason.as_ref() == Some(&reason) {
            return;
        }
        let mut task = task.clone();
        task.pending_reason = Some(reason);
        if let Err(error) = self.commit(task, Vec::new()) {
            error!("{}", error_chain(&error));
        }
    }

    /// Records a placement as a new attempt and sends its [`StartTask`].
    fn start_assignment(&mut self, assignment: Assignment, ctx: &mut Context<Self>) {
        let task_id = assignment.task_id;
        if !self.is_placeable(task_id) {
            // Stopped while the scheduler decided: give the allocation back.
            self.release(task_id, ctx);
            return;
        }
        let Some((handle, publish_address)) = self
            .workers
            .get(&assignment.node)
            .map(|worker| (worker.handle.clone(), worker.publish_address.clone()))
        else {
            warn!(
                "placement on unregistered node dropped task_id={task_id} node_id={}",
                assignment.node
            );
            self.release_quietly(task_id);
            self.waiting.push_back(task_id);
            return;
        };

        let mut task = self.tasks[&task_id].clone();
        let attempt = AttemptId::generate();
        task.node = Some(assignment.node.clone());
        task.attempt = Some(attempt);
        task.container_id = None;
        task.health = None;
        task.exit_code = None;
        task.pending_reason = None;
        task.host_ports = assignment
            .ports
            .iter()
            .map(|mapping| PortBinding {
                container_port: mapping.container_port,
                protocol: mapping.protocol,
                host_ip: publish_address.clone(),
                host_port: mapping.host_port.unwrap_or_default(),
            })
            .collect();
        let reason = format!("placed on node {}", assignment.node);
        let event = match self.transition(&mut task, TaskState::Scheduled, reason) {
            Ok(event) => event,
            Err(error) => {
                error!("{error}");
                self.release_quietly(task_id);
                return;
            }
        };
        let start = StartTask {
            task_id,
            attempt,
            spec: task.spec.clone(),
            ports: assignment.ports,
        };
        if let Err(error) = self.commit(task, vec![event]) {
            error!("{}", error_chain(&error));
            self.release_quietly(task_id);
            self.waiting.push_back(task_id);
            return;
        }

        let timeout = self.config.command_timeout;
        let durable = self.store.flushed();
        let sent = async move {
            // A restarted manager must know every attempt a worker may run.
            if let Err(error) = durable.await {
                error!("start not sent, because the placement was not stored task_id={task_id}: {error}");
                return Err(CommandError::Rejected {
                    node: handle.node.clone(),
                    reason: format!("the manager failed to store the placement: {error}"),
                });
            }
            handle.start_task(start, timeout).await
        }
        .into_actor(self)
            .map(move |result, act, ctx| act.start_acknowledged(task_id, attempt, result, ctx));
        ctx.spawn(sent);
    }

    /// Handles the worker's answer to a [`StartTask`], unless the attempt was superseded.
    fn start_acknowledged(
        &mut self,
        task_id: TaskId,
        attempt: AttemptId,
        result: Result<(), CommandError>,
        ctx: &mut Context<Self>,
    ) {
        let Some(task) = self.tasks.get(&task_id) else {
            return;
        };
        if task.attempt != Some(attempt) {
            return;
        }
        let error = match result {
            Ok(()) => {
                // A stop that arrived during the start was sent at once; send it again now
                // that the worker has surely recorded the attempt.
                if task.desired_state == DesiredState::Stopped && !task.state.is_terminal() {
                    let task = task.clone();
                    self.send_stop(&task, ctx);
                }
                return;
            }
            Err(error) => error,
        };
        if task.state != TaskState::Scheduled {
            debug!("start error after a later report ignored task_id={task_id} error={error}");
            return;
        }

        let node = task.node.clone();
        warn!("task start failed task_id={task_id} attempt={attempt} error={error}");
        let contact_lost = is_contact_lost(&error);
        if contact_lost {
            // The worker may have recorded the attempt after all; make sure it never runs.
            let task = task.clone();
            self.send_stop(&task, ctx);
        }

        let mut task = task.clone();
        let (state, reason) = if task.desired_state == DesiredState::Stopped {
            (TaskState::Completed, STOPPED_BY_USER.to_owned())
        } else {
            (TaskState::Pending, format!("start failed: {error}"))
        };
        let event = match self.transition(&mut task, state, reason) {
            Ok(event) => event,
            Err(error) => {
                error!("{error}");
                return;
            }
        };
        task.last_error = Some(error.to_string());
        if state == TaskState::Pending {
            let node = node.as_ref().map(NodeId::to_string).unwrap_or_default();
            task.pending_reason = Some(format!("start on node {node} failed: {error}"));
            task.node = None;
            task.attempt = None;
            task.host_ports.clear();
        }
        if let Err(error) = self.commit(task, vec![event]) {
            error!("{}", error_chain(&error));
        }

        // Retry only when capacity changes, so a worker that rejects every start does not
        // spin; the release below is not such a change.
        self.release_quietly(task_id);
        if contact_lost && let Some(node) = &node {
            self.mark_unreachable(node, &error.to_string());
        }
        // A port held outside cube is booked after the release, so no placement uses it again
        // and the task can be placed again at once without a spin.
        let port_in_use = if let CommandError::PortInUse {
            node,
            protocol,
            port,
        } = &error
        {
            self.scheduler.do_send(ReservePort {
                node: node.clone(),
                protocol: *protocol,
                port: *port,
            });
            true
        } else {
            false
        };
        if state == TaskState::Pending {
            if contact_lost || port_in_use {
                // The scheduler now skips the silent node, so another node may take the task
                // at once without a spin.
                self.queued.push_back(task_id);
                ctx.notify(PlacePending);
            } else {
                self.waiting.push_back(task_id);
            }
        }
    }

    /// Applies one task status report from `node`.
    ///
    /// After a local restart, a report about the new attempt is accepted only when its
    /// `replaces` names the current attempt on the same node. The task then switches to it.
    fn apply_status(&mut self, node: &NodeId, status: TaskStatusReport, ctx: &mut Context<Self>) {
        let Some(task) = self.tasks.get(&status.task_id) else {
            debug!("report for unknown task ignored task_id={}", status.task_id);
            return;
        };
        let replaces_current = status.replaces.is_some() && status.replaces == task.attempt;
        let known_attempt = task.attempt == Some(status.attempt) || replaces_current;
        if !known_attempt || task.node.as_ref() != Some(node) {
            debug!(
                "report for another attempt ignored task_id={} attempt={} node_id={node}",
                status.task_id, status.attempt
            );
            if !status.state.is_terminal() {
                // A worker back from being down, or one that missed a stop, still runs it.
                self.stop_if_stale(node, status.task_id, status.attempt, status.replaces, ctx);
            }
            return;
        }

        let mut task = task.clone();
        let switched = task.attempt != Some(status.attempt);
        if switched {
            debug!(
                "task switches to restarted attempt task_id={} attempt={} replaces={}",
                task.id,
                status.attempt,
                status.replaces.map(|a| a.to_string()).unwrap_or_default()
            );
            task.attempt = Some(status.attempt);
            task.container_id = None;
            task.health = None;
        }
        task.restart_count = task.restart_count.max(status.restart_count);
        let event = match status.state {
            // A running report of a new attempt whose restart wait was never reported.
            TaskState::Running if task.state == TaskState::Running && switched => None,
            TaskState::Running if task.state == TaskState::Running => return,
            TaskState::Running => {
                Some(self.transition(&mut task, TaskState::Running, status.reason))
            }
            TaskState::Completed | TaskState::Failed => {
                let (state, reason) = if task.desired_state == DesiredState::Stopped {
                    (TaskState::Completed, STOPPED_BY_USER.to_owned())
                } else {
                    (status.state, status.reason.clone())
                };
                if state == TaskState::Failed {
                    task.last_error = Some(status.reason);
                }
                task.exit_code = status.exit_code.or(task.exit_code);
                Some(self.transition(&mut task, state, reason))
            }
            TaskState::Scheduled if task.state.is_terminal() => return,
            TaskState::Scheduled => {
                // The worker waits out a restart back-off; the allocation stays booked.
                task.next_attempt_at = status.next_attempt_at;
                task.exit_code = status.exit_code.or(task.exit_code);
                if status.exit_code != Some(0) {
                    task.last_error = Some(status.reason.clone());
                }
                if task.state == TaskState::Scheduled {
                    // A restarted attempt failed to start: no state change, so no event.
                    info!(
                        "task restart pending task_id={} reason={}",
                        task.id, status.reason
                    );
                    None
                } else {
                    Some(self.transition(&mut task, TaskState::Scheduled, status.reason))
                }
            }
            TaskState::Pending | TaskState::Lost => {
                debug!(
                    "report of state {} ignored task_id={}",
                    status.state, status.task_id
                );
                return;
            }
        };
        let events = match event.transpose() {
            Ok(event) => event.into_iter().collect(),
            Err(error) => {
                debug!("report ignored: {error}");
                return;
            }
        };
        if status.container_id.is_some() {
            task.container_id = status.container_id;
        }
        if !status.host_ports.is_empty() {
            task.host_ports = status.host_ports;
        }

        let terminal = task.state.is_terminal();
        // A stop sent while the worker restarted named the replaced attempt; send it again.
        let stop_again = !terminal && task.desired_state == DesiredState::Stopped;
        let task_id = task.id;
        if let Err(error) = self.commit(task.clone(), events) {
            error!("{}", error_chain(&error));
            return;
        }
        if terminal {
            self.release(task_id, ctx);
        }
        if stop_again {
            self.send_stop(&task, ctx);
        }
    }

    /// Records a health change of a task's current attempt on `node`, without an event: the
    /// task's state changes only through the status report that may follow.
    fn apply_health(&mut self, node: &NodeId, report: TaskHealthReport) {
        let Some(task) = self.tasks.get(&report.task_id) else {
            debug!(
                "health report for unknown task ignored task_id={}",
                report.task_id
            );
            return;
        };
        if task.attempt != Some(report.attempt) || task.node.as_ref() != Some(node) {
            debug!(
                "health report for another attempt ignored task_id={} attempt={} node_id={node}",
                report.task_id, report.attempt
            );
            return;
        }
        info!(
            "task health changed task_id={} attempt={} status={}",
            report.task_id, report.attempt, report.health.status
        );
        let mut task = task.clone();
        task.health = Some(report.health);
        if let Err(error) = self.commit(task, Vec::new()) {
            error!("{}", error_chain(&error));
        }
    }

    /// Sends [`StopTask`] for `task`'s current attempt to its node, logging a failure.
    fn send_stop(&self, task: &Task, ctx: &mut Context<Self>) {
        let Some(node) = task.node.as_ref() else {
            return;
        };
        let Some(worker) = self.workers.get(node) else {
            warn!(
                "cannot stop task on unregistered node task_id={} node_id={node}",
                task.id
            );
            return;
        };
        let handle = worker.handle.clone();
        let stop = StopTask {
            task_id: task.id,
            attempt: task.attempt,
            reason: STOPPED_BY_USER.to_owned(),
        };
        let timeout = self.config.command_timeout;
        let task_id = task.id;
        let node = node.clone();
        let durable = self.store.flushed();
        let sent = async move {
            // The stop request is durable first, so a restarted manager never runs the task
            // again. A stop is sent even when the store failed, since the user asked for it.
            let _ = durable.await;
            handle.stop_task(stop, timeout).await
        }
        .into_actor(self)
        .map(move |result, act, _| {
            // TODO: retry the stop from a periodic reconciliation pass.
            if let Err(error) = result {
                warn!("failed to send stop to worker task_id={task_id} error={error}");
                if is_contact_lost(&error) {
                    act.mark_unreachable(&node, &error.to_string());
                }
            }
        });
        ctx.spawn(sent);
    }

    /// Marks `node` unreachable after a failed command or report stream, so the scheduler
    /// skips it until its next report arrives.
    fn mark_unreachable(&mut self, node: &NodeId, reason: &str) {
        let Some(entry) = self.workers.get_mut(node) else {
            return;
        };
        if std::mem::replace(&mut entry.unreachable, true) {
            return;
        }
        warn!("node unreachable node_id={node} error={reason}");
        self.scheduler.do_send(NodeUpdated {
            node: node.clone(),
            capacity: None,
            metrics: None,
            status: Some(self.node_status(node)),
        });
    }

    /// The status the scheduler should hold for `node`: `down` overrides `unreachable`,
    /// which overrides `ready`.
    fn node_status(&self, node: &NodeId) -> NodeStatus {
        if self.liveness.is_down(node) {
            NodeStatus::Down
        } else if self
            .workers
            .get(node)
            .is_some_and(|entry| entry.unreachable)
        {
            NodeStatus::Unreachable
        } else {
            NodeStatus::Ready
        }
    }

    /// Sends the scheduler `node`'s status after its `unreachable` or `down` mark was cleared,
    /// and tries the waiting tasks if the node takes tasks again.
    fn mark_reachable(&mut self, node: &NodeId, ctx: &mut Context<Self>) {
        info!("node reachable again node_id={node}");
        // NOTE: the status is derived from the manager's marks (see `node_status`), so a
        // report clears `unreachable` without hiding `down`; a `draining` mark would need a
        // mark of its own there, since nothing in the manager sets that status yet.
        let update = NodeUpdated {
            node: node.clone(),
            capacity: None,
            metrics: None,
            status: Some(self.node_status(node)),
        };
        let updated = self
            .scheduler
            .send(update)
            .into_actor(self)
            .map(|result, act, ctx| {
                if let Ok(true) = result {
                    act.capacity_changed(ctx);
                }
            });
        ctx.spawn(updated);
    }

    /// Releases `task_id`'s allocation and, because capacity grew, tries the waiting tasks.
    fn release(&mut self, task_id: TaskId, ctx: &mut Context<Self>) {
        let released = self
            .scheduler
            .send(ReleaseTask { task_id })
            .into_actor(self)
            .map(|result, act, ctx| match result {
                Ok(true) => act.capacity_changed(ctx),
                Ok(false) => {}
                Err(source) => error!("scheduler did not answer a release: {source}"),
            });
        ctx.spawn(released);
    }

    /// Releases `task_id`'s allocation without trying the waiting tasks again.
    fn release_quietly(&self, task_id: TaskId) {
        // NOTE: `do_send` and `send` both enqueue at once, so this release reaches the
        // scheduler before any later placement request.
        self.scheduler.do_send(ReleaseTask { task_id });
    }

    /// Moves `task` to `to` and logs the change.
    fn transition(
        &self,
        task: &mut Task,
        to: TaskState,
        reason: impl Into<String>,
    ) -> Result<TaskEvent, cube_core::task::InvalidTransition> {
        let event = task.transition(to, reason, self.config.clock.now())?;
        info!(
            "task {} task_id={} from={} reason={}",
            event.to, event.task_id, event.from, event.reason
        );
        Ok(event)
    }

    /// Queues `task` and its `events` as one batch on the store writer and updates the cache
    /// at once.
    ///
    /// Commands to workers and API answers wait for [`StoreWriter::flushed`], so nothing
    /// leaves the manager before the changes it depends on are durable.
    ///
    /// Returns the commit's future; dropping it leaves the commit to the writer, which logs a
    /// failure. NOTE: this never returns `Err` itself, so a caller that drops the future keeps
    /// a cached change that a failed commit did not store.
    fn commit(&mut self, task: Task, events: Vec<TaskEvent>) -> Result<Committed, Error> {
        let mut batch = Batch::new();
        batch.put_task(task.clone());
        for event in events {
            batch.append_event(event);
        }
        let committed = self.store.commit(batch);
        self.tasks.insert(task.id, task);
        Ok(committed)
    }

    fn register_worker(
        &mut self,
        handle: WorkerHandle,
        address: Option<String>,
        description: NodeDescription,
        ctx: &mut Context<Self>,
    ) -> Result<NodeId, Error> {
        let node = description.id.clone();
        let mut batch = Batch::new();
        batch.push(Operation::PutNode(NodeRecord {
            id: node.clone(),
            address: address.clone(),
        }));
        drop(self.store.commit(batch));

        // NOTE: a re-registered node resumes after the last report applied from it, so a
        // worker must keep its sequence numbers across restarts.
        let last_seq = self.workers.get(&node).map_or(0, |entry| entry.last_seq);
        handle.subscribe.do_send(SubscribeReports {
            recipient: ctx.address().downgrade().recipient(),
            after: last_seq,
        });
        self.workers.insert(
            node.clone(),
            WorkerEntry {
                handle,
                address,
                publish_address: description.publish_address.clone(),
                last_seq,
                unreachable: false,
            },
        );
        self.scheduler.do_send(NodeJoined {
            node: node.clone(),
            capacity: description.capacity,
            metrics: description.metrics,
        });
        info!(
            "node joined node_id={node} cpu={} memory={} disk={}",
            description.capacity.cpu, description.capacity.memory, description.capacity.disk
        );
        // Booked before the placement pass below, so no pending task takes their room.
        self.recover_node(&node, ctx);
        if self.liveness.heard(&node, self.config.clock.monotonic()) {
            self.node_returned(&node, ctx);
        }
        self.capacity_changed(ctx);
        Ok(node)
    }
}

/// Answers a submission whose id is stored: the stored task for an identical spec, else
/// [`Error::Conflict`].
fn repeated_submission(existing: &Task, spec: &TaskSpec) -> Result<Submission, Error> {
    if existing.spec != *spec {
        return Err(Error::Conflict {
            task_id: existing.id,
        });
    }
    Ok(Submission {
        task: existing.clone(),
        created: false,
    })
}

/// Whether `error` means the worker could not be reached or did not respond in time, as
/// opposed to a response that rejected the command.
fn is_contact_lost(error: &CommandError) -> bool {
    matches!(
        error,
        CommandError::TimedOut { .. } | CommandError::Unreachable { .. }
    )
}
