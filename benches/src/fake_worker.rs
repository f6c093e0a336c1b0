//! The FakeWorker actor: a node that runs nothing, for placement runs at a scale where even
//! the simulated runtime's per-task supervisors would dominate the cost.
//!
//! The manager drives it through a [`cube_core::WorkerHandle`] like any worker. It replies
//! to [`DescribeNode`] with a declared capacity. It acknowledges [`StartTask`] at once and
//! reports the attempt `running`, and it acknowledges [`StopTask`] and reports the attempt
//! `completed`.
//! Reports go to the subscriber of [`SubscribeReports`] one at a time with `send`, so they
//! arrive in sequence order and wait for room in the manager's mailbox instead of growing
//! it without bound.
//!
//! # Caveats
//!
//! It keeps no report log, so a [`SubscribeReports`] with `after` behind its last sequence
//! number replays nothing; a manager subscribes once, before any task, so nothing is lost.

use std::collections::{HashMap, VecDeque};

use actix::WeakRecipient;
use actix::prelude::*;
use cube_core::clock::system_clock;
use cube_core::{
    CommandError, DescribeNode, ListTasks, NodeDescription, NodeId, ReportBody, Resources,
    SharedClock, StartTask, StopTask, SubscribeReports, TaskId, TaskState, TaskStatusReport,
    WorkerHandle, WorkerReport, WorkerTask,
};

/// A node that pretends to run every task it is given.
///
/// Handles [`DescribeNode`], [`SubscribeReports`], [`StartTask`], [`StopTask`] and
/// [`ListTasks`]; emits [`WorkerReport`]s to its subscriber.
pub struct FakeWorker {
    node: NodeId,
    capacity: Resources,
    clock: SharedClock,
    subscriber: Option<WeakRecipient<WorkerReport>>,
    /// Sequence number of the last report queued.
    seq: u64,
    tasks: HashMap<TaskId, WorkerTask>,
    /// Reports not yet delivered, oldest first.
    outgoing: VecDeque<WorkerReport>,
    /// Whether a report is on its way to the subscriber.
    sending: bool,
}

impl FakeWorker {
    /// Creates a fake node called `node` that offers `capacity`.
    pub fn new(node: NodeId, capacity: Resources) -> Self {
        Self {
            node,
            capacity,
            clock: system_clock(),
            subscriber: None,
            seq: 0,
            tasks: HashMap::new(),
            outgoing: VecDeque::new(),
            sending: false,
        }
    }

    /// Starts the actor on the current arbiter and returns the handle a manager drives it by.
    pub fn start_with_handle(self) -> (Addr<FakeWorker>, WorkerHandle) {
        let node = self.node.clone();
        let addr = self.start();
        let handle = WorkerHandle::from_addr(node, &addr);
        (addr, handle)
    }
}

impl Actor for FakeWorker {
    type Context = Context<Self>;
}

impl Handler<DescribeNode> for FakeWorker {
    type Result = Result<NodeDescription, CommandError>;

    fn handle(&mut self, _: DescribeNode, _: &mut Context<Self>) -> Self::Result {
        Ok(NodeDescription {
            id: self.node.clone(),
            capacity: self.capacity,
            metrics: None,
            publish_address: "127.0.0.1".to_owned(),
        })
    }
}

impl Handler<SubscribeReports> for FakeWorker {
    type Result = ();

    fn handle(&mut self, msg: SubscribeReports, ctx: &mut Context<Self>) {
        self.subscriber = Some(msg.recipient);
        self.flush(ctx);
    }
}

impl Handler<StartTask> for FakeWorker {
    type Result = Result<(), CommandError>;

    fn handle(&mut self, msg: StartTask, ctx: &mut Context<Self>) -> Self::Result {
        if self
            .tasks
            .get(&msg.task_id)
            .is_some_and(|task| task.attempt == msg.attempt)
        {
            // A repeated start of the same attempt is harmless, as on a real worker.
            return Ok(());
        }
        let now = self.clock.now();
        let record = WorkerTask {
            task_id: msg.task_id,
            attempt: msg.attempt,
            spec: msg.spec,
            ports: msg.ports,
            state: TaskState::Running,
            container_id: None,
            host_ports: Vec::new(),
            exit_code: None,
            reason: None,
            stop_requested: false,
            accepted_at: now,
            started_at: Some(now),
            finished_at: None,
            restart_count: 0,
            next_attempt_at: None,
            replaces: None,
        };
        self.queue_status(&record, TaskState::Running, "fake container started");
        self.tasks.insert(msg.task_id, record);
        self.flush(ctx);
        Ok(())
    }
}

impl Handler<StopTask> for FakeWorker {
    type Result = Result<(), CommandError>;

    fn handle(&mut self, msg: StopTask, ctx: &mut Context<Self>) -> Self::Result {
        let Some(record) = self.tasks.get_mut(&msg.task_id) else {
            return Ok(());
        };
        let other_attempt = msg.attempt.is_some_and(|attempt| attempt != record.attempt);
        if other_attempt || record.state != TaskState::Running {
            return Ok(());
        }
        record.state = TaskState::Completed;
        record.stop_requested = true;
        record.finished_at = Some(self.clock.now());
        record.reason = Some(msg.reason.clone());
        let record = record.clone();
        self.queue_status(&record, TaskState::Completed, msg.reason);
        self.flush(ctx);
        Ok(())
    }
}

impl Handler<ListTasks> for FakeWorker {
    type Result = Result<Vec<WorkerTask>, CommandError>;

    fn handle(&mut self, _: ListTasks, _: &mut Context<Self>) -> Self::Result {
        let mut tasks: Vec<WorkerTask> = self.tasks.values().cloned().collect();
        tasks.sort_by_key(|task| task.task_id);
        Ok(tasks)
    }
}

impl FakeWorker {
    fn queue_status(&mut self, record: &WorkerTask, state: TaskState, reason: impl Into<String>) {
        self.seq += 1;
        self.outgoing.push_back(WorkerReport {
            node: self.node.clone(),
            seq: self.seq,
            at: self.clock.now(),
            body: ReportBody::TaskStatus(TaskStatusReport {
                task_id: record.task_id,
                attempt: record.attempt,
                state,
                container_id: None,
                host_ports: Vec::new(),
                exit_code: None,
                reason: reason.into(),
                restart_count: 0,
                next_attempt_at: None,
                replaces: None,
            }),
        });
    }

    /// Sends the oldest undelivered report, unless one is already on its way.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.sending || self.outgoing.is_empty() {
            return;
        }
        let Some(recipient) = self.subscriber.as_ref().and_then(WeakRecipient::upgrade) else {
            // No manager yet, or it is gone: keep the reports for a later subscriber.
            return;
        };
        let report = self.outgoing.pop_front().expect("checked non-empty above");
        self.sending = true;
        let delivery = recipient
            .send(report)
            .into_actor(self)
            .map(|result, act, ctx| {
                act.sending = false;
                if result.is_err() {
                    log::warn!(
                        "manager stopped; fake worker {} drops its reports",
                        act.node
                    );
                    act.subscriber = None;
                    act.outgoing.clear();
                    return;
                }
                act.flush(ctx);
            });
        ctx.spawn(delivery);
    }
}

#[cfg(test)]
mod tests {
    use cube_core::ByteSize;

    use super::*;

    /// Collects the reports it receives.
    struct Probe(Vec<WorkerReport>);

    impl Actor for Probe {
        type Context = Context<Self>;
    }

    impl Handler<WorkerReport> for Probe {
        type Result = ();

        fn handle(&mut self, msg: WorkerReport, _: &mut Context<Self>) {
            self.0.push(msg);
        }
    }

    #[derive(Message)]
    #[rtype(result = "Vec<WorkerReport>")]
    struct Take;

    impl Handler<Take> for Probe {
        type Result = Vec<WorkerReport>;

        fn handle(&mut self, _: Take, _: &mut Context<Self>) -> Vec<WorkerReport> {
            std::mem::take(&mut self.0)
        }
    }

    fn start(task_id: TaskId) -> StartTask {
        StartTask {
            task_id,
            attempt: cube_core::AttemptId::generate(),
            spec: cube_core::TaskSpec::new("t", "image"),
            ports: Vec::new(),
        }
    }

    #[actix::test]
    async fn fake_worker_reports_running_then_completed_in_order() {
        let capacity = Resources {
            cpu: 1.0,
            memory: ByteSize::gib(1),
            disk: ByteSize::gib(1),
        };
        let (_addr, handle) =
            FakeWorker::new(NodeId::new("fake-1").unwrap(), capacity).start_with_handle();
        let probe = Probe(Vec::new()).start();
        handle
            .subscribe
            .send(SubscribeReports {
                recipient: probe.clone().recipient().downgrade(),
                after: 0,
            })
            .await
            .unwrap();

        let first = start(TaskId::generate());
        let second = start(TaskId::generate());
        handle.start.send(first.clone()).await.unwrap().unwrap();
        handle.start.send(second.clone()).await.unwrap().unwrap();
        let stop = StopTask {
            task_id: first.task_id,
            attempt: Some(first.attempt),
            reason: "stopped by user".into(),
        };
        handle.stop.send(stop).await.unwrap().unwrap();
        let listed = handle.list.send(ListTasks).await.unwrap().unwrap();
        assert_eq!(listed.len(), 2);

        let reports = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            let mut all = Vec::new();
            while all.len() < 3 {
                tokio::task::yield_now().await;
                all.extend(probe.send(Take).await.unwrap());
            }
            all
        })
        .await
        .expect("fake worker delivered fewer than 3 reports; is its send chain stuck?");

        let seqs: Vec<u64> = reports.iter().map(|report| report.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        let states: Vec<(TaskId, TaskState)> = reports
            .iter()
            .map(|report| match &report.body {
                ReportBody::TaskStatus(status) => (status.task_id, status.state),
                other => panic!("fake worker sent a report other than a task status: {other:?}"),
            })
            .collect();
        assert_eq!(
            states,
            vec![
                (first.task_id, TaskState::Running),
                (second.task_id, TaskState::Running),
                (first.task_id, TaskState::Completed),
            ]
        );
    }
}
