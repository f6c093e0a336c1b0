//! A fake worker actor: records the commands it gets and sends the reports a test asks for.

use std::time::Duration;

use actix::WeakRecipient;
use actix::prelude::*;
use chrono::Utc;

use cube_core::ids::{AttemptId, NodeId, TaskId};
use cube_core::messages::{
    CommandError, DescribeNode, Heartbeat, ListTasks, ReportBody, StartTask, StopTask,
    SubscribeReports, TaskStatusReport, WorkerHandle, WorkerReport,
};
use cube_core::node::NodeDescription;
use cube_core::resources::{ByteSize, Resources};
use cube_core::task::TaskState;
use cube_core::worker_task::WorkerTask;

/// Behaviour of a [`FakeWorker`].
#[derive(Debug, Clone)]
pub struct FakeOptions {
    /// Resources the node offers.
    pub capacity: Resources,
    /// Number of starts to reject before accepting.
    pub reject_starts: usize,
    /// Whether starts and stops fail as if the worker could not be reached; describing the
    /// node still works, so that it can register. [`SetUnreachable`] changes it.
    pub unreachable: bool,
    /// Delay before a start is acknowledged.
    pub start_delay: Duration,
    /// Whether a stop is answered with a `completed` report, as a real worker does.
    pub complete_on_stop: bool,
}

impl Default for FakeOptions {
    fn default() -> Self {
        Self {
            capacity: Resources {
                cpu: 4.0,
                memory: ByteSize::gib(4),
                disk: ByteSize::gib(10),
            },
            reject_starts: 0,
            unreachable: false,
            start_delay: Duration::ZERO,
            complete_on_stop: true,
        }
    }
}

/// A worker that runs nothing: it records commands and reports what a test tells it to.
pub struct FakeWorker {
    node: NodeId,
    options: FakeOptions,
    starts: Vec<StartTask>,
    stops: Vec<StopTask>,
    subscriber: Option<WeakRecipient<WorkerReport>>,
    seq: u64,
    /// What `ListTasks` returns; empty unless [`SetListedTasks`] sets it.
    listed: Vec<WorkerTask>,
}

impl FakeWorker {
    /// Starts a fake worker called `name` and returns its address and handle.
    pub fn start(name: &str, options: FakeOptions) -> (Addr<FakeWorker>, WorkerHandle) {
        let node = NodeId::new(name).unwrap();
        let addr = FakeWorker {
            node: node.clone(),
            options,
            starts: Vec::new(),
            stops: Vec::new(),
            subscriber: None,
            seq: 0,
            listed: Vec::new(),
        }
        .start();
        let handle = WorkerHandle::from_addr(node, &addr);
        (addr, handle)
    }

    fn emit(&mut self, body: ReportBody) -> Option<WorkerReport> {
        self.seq += 1;
        let report = WorkerReport {
            node: self.node.clone(),
            seq: self.seq,
            at: Utc::now(),
            body,
        };
        self.deliver(report)
    }

    fn unreachable_error(&self) -> CommandError {
        CommandError::Unreachable {
            node: self.node.clone(),
            reason: "fake connection refused".to_owned(),
        }
    }

    fn deliver(&mut self, report: WorkerReport) -> Option<WorkerReport> {
        let recipient = self.subscriber.as_ref()?.upgrade()?;
        recipient.do_send(report.clone());
        Some(report)
    }
}

impl Actor for FakeWorker {
    type Context = Context<Self>;
}

impl Handler<StartTask> for FakeWorker {
    type Result = ResponseActFuture<Self, Result<(), CommandError>>;

    fn handle(&mut self, msg: StartTask, _: &mut Context<Self>) -> Self::Result {
        self.starts.push(msg);
        let delay = self.options.start_delay;
        Box::pin(
            async move { tokio::time::sleep(delay).await }
                .into_actor(self)
                .map(|(), act, _| {
                    if act.options.reject_starts > 0 {
                        act.options.reject_starts -= 1;
                        return Err(CommandError::Rejected {
                            node: act.node.clone(),
                            reason: "fake rejection".to_owned(),
                        });
                    }
                    if act.options.unreachable {
                        return Err(act.unreachable_error());
                    }
                    Ok(())
                }),
        )
    }
}

impl Handler<StopTask> for FakeWorker {
    type Result = Result<(), CommandError>;

    fn handle(&mut self, msg: StopTask, _: &mut Context<Self>) -> Self::Result {
        self.stops.push(msg.clone());
        if self.options.unreachable {
            return Err(self.unreachable_error());
        }
        let attempt = msg.attempt.or_else(|| {
            self.starts
                .iter()
                .rev()
                .find(|start| start.task_id == msg.task_id)
                .map(|start| start.attempt)
        });
        if self.options.complete_on_stop
            && let Some(attempt) = attempt
        {
            self.emit(ReportBody::TaskStatus(status(
                msg.task_id,
                attempt,
                TaskState::Completed,
                &msg.reason,
            )));
        }
        Ok(())
    }
}

impl Handler<ListTasks> for FakeWorker {
    type Result = Result<Vec<WorkerTask>, CommandError>;

    fn handle(&mut self, _: ListTasks, _: &mut Context<Self>) -> Self::Result {
        Ok(self.listed.clone())
    }
}

impl Handler<DescribeNode> for FakeWorker {
    type Result = Result<NodeDescription, CommandError>;

    fn handle(&mut self, _: DescribeNode, _: &mut Context<Self>) -> Self::Result {
        Ok(NodeDescription {
            id: self.node.clone(),
            capacity: self.options.capacity,
            metrics: None,
            publish_address: "127.0.0.1".to_owned(),
        })
    }
}

impl Handler<SubscribeReports> for FakeWorker {
    type Result = ();

    fn handle(&mut self, msg: SubscribeReports, _: &mut Context<Self>) {
        self.subscriber = Some(msg.recipient);
    }
}

/// Returns the commands received so far.
#[derive(Message)]
#[rtype(result = "Commands")]
pub struct GetCommands;

/// Commands a fake worker received, in order.
#[derive(Debug, Clone)]
pub struct Commands {
    pub starts: Vec<StartTask>,
    pub stops: Vec<StopTask>,
}

impl Handler<GetCommands> for FakeWorker {
    type Result = MessageResult<GetCommands>;

    fn handle(&mut self, _: GetCommands, _: &mut Context<Self>) -> Self::Result {
        MessageResult(Commands {
            starts: self.starts.clone(),
            stops: self.stops.clone(),
        })
    }
}

/// Sends a report with the next sequence number; returns it, or `None` without subscriber.
#[derive(Message)]
#[rtype(result = "Option<WorkerReport>")]
pub struct Emit(pub ReportBody);

impl Handler<Emit> for FakeWorker {
    type Result = Option<WorkerReport>;

    fn handle(&mut self, msg: Emit, _: &mut Context<Self>) -> Self::Result {
        self.emit(msg.0)
    }
}

/// Makes starts and stops fail as unreachable, or work again.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetUnreachable(pub bool);

impl Handler<SetUnreachable> for FakeWorker {
    type Result = ();

    fn handle(&mut self, msg: SetUnreachable, _: &mut Context<Self>) {
        self.options.unreachable = msg.0;
    }
}

/// Sends a report exactly as given, sequence number included.
#[derive(Message)]
#[rtype(result = "Option<WorkerReport>")]
pub struct EmitRaw(pub WorkerReport);

impl Handler<EmitRaw> for FakeWorker {
    type Result = Option<WorkerReport>;

    fn handle(&mut self, msg: EmitRaw, _: &mut Context<Self>) -> Self::Result {
        self.seq = self.seq.max(msg.0.seq);
        self.deliver(msg.0)
    }
}

/// Builds a status report body.
pub fn status(
    task_id: TaskId,
    attempt: AttemptId,
    state: TaskState,
    reason: &str,
) -> TaskStatusReport {
    TaskStatusReport {
        task_id,
        attempt,
        state,
        container_id: None,
        host_ports: Vec::new(),
        exit_code: match state {
            TaskState::Completed => Some(0),
            TaskState::Failed => Some(1),
            _ => None,
        },
        reason: reason.to_owned(),
        restart_count: 0,
        next_attempt_at: None,
        replaces: None,
    }
}

/// Builds a heartbeat body with `capacity`.
pub fn heartbeat(capacity: Resources) -> ReportBody {
    ReportBody::Heartbeat(Heartbeat {
        capacity,
        metrics: None,
    })
}

/// Sets what the fake worker answers to `ListTasks`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetListedTasks(pub Vec<WorkerTask>);

impl Handler<SetListedTasks> for FakeWorker {
    type Result = ();

    fn handle(&mut self, msg: SetListedTasks, _: &mut Context<Self>) {
        self.listed = msg.0;
    }
}
