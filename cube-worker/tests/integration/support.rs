//! Helpers shared by the integration tests: workers with declared capacity, a report
//! probe, and task specs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use cube_core::{
    AttemptId, Batch, ByteSize, DeclaredCapacity, MemoryStore, NodeId, NodeRecord, PortSpec,
    Protocol, PullPolicy, ReportBody, RestartMode, StartTask, Store, StoreError, SubscribeReports,
    Task, TaskEvent, TaskId, TaskSpec, TaskState, TaskStatusReport, WorkerReport, WorkerTask,
};
use cube_worker::{SharedRuntime, Worker, WorkerConfig};
use tokio::sync::mpsc;

/// Upper bound of any single wait in these tests.
pub const WAIT: Duration = Duration::from_secs(10);

/// Builds a worker config with fully declared capacity, no host sampling and rare heartbeats.
pub fn config(node: &str) -> WorkerConfig {
    let mut config = WorkerConfig::new(NodeId::new(node).unwrap());
    config.capacity = DeclaredCapacity {
        cpu: Some(4.0),
        memory: Some(ByteSize::gib(8)),
        disk: Some(ByteSize::gib(100)),
    };
    config.metrics_interval = None;
    config.heartbeat_interval = Duration::from_secs(3600);
    config
}

/// Starts a worker on `runtime` with a memory store.
pub fn start_worker(config: WorkerConfig, runtime: SharedRuntime) -> Addr<Worker> {
    Worker::start(config, runtime, Box::new(MemoryStore::new()))
}

/// Builds a spec for `image` that never pulls and is never restarted; restart tests set
/// their own policy.
pub fn spec(image: &str) -> TaskSpec {
    let mut spec = TaskSpec::new("test", image);
    spec.pull_policy = PullPolicy::Never;
    spec.memory = ByteSize::mib(32);
    spec.restart_policy.mode = RestartMode::Never;
    spec
}

/// Builds a spec with one dynamic TCP port.
pub fn spec_with_port(image: &str, container_port: u16) -> TaskSpec {
    let mut spec = spec(image);
    spec.ports = vec![PortSpec {
        container_port,
        host_port: None,
        protocol: Protocol::Tcp,
    }];
    spec
}

/// Builds a start of a new task and attempt.
pub fn start_msg(spec: TaskSpec) -> StartTask {
    StartTask {
        task_id: TaskId::generate(),
        attempt: AttemptId::generate(),
        spec,
        ports: Vec::new(),
    }
}

// === impl ReportProbe ===

/// Collects a worker's reports through `SubscribeReports`, as an in-process manager would.
pub struct ReportProbe {
    receiver: mpsc::UnboundedReceiver<WorkerReport>,
    /// Keeps the sink alive: the worker holds only a weak recipient.
    _sink: Addr<ReportSink>,
    /// Every report received so far, in arrival order.
    pub seen: Vec<WorkerReport>,
}

/// The actor end of a [`ReportProbe`].
pub struct ReportSink {
    sender: mpsc::UnboundedSender<WorkerReport>,
}

impl Actor for ReportSink {
    type Context = Context<Self>;
}

impl Handler<WorkerReport> for ReportSink {
    type Result = ();

    fn handle(&mut self, report: WorkerReport, _: &mut Context<Self>) {
        let _ = self.sender.send(report);
    }
}

impl ReportProbe {
    /// Subscribes to `worker`'s reports after `after`.
    pub fn subscribe(worker: &Addr<Worker>, after: u64) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        let sink = ReportSink { sender }.start();
        worker.do_send(SubscribeReports {
            recipient: sink.downgrade().recipient(),
            after,
        });
        Self {
            receiver,
            _sink: sink,
            seen: Vec::new(),
        }
    }

    /// Waits for the next report of any kind.
    pub async fn next(&mut self) -> WorkerReport {
        let report = tokio::time::timeout(WAIT, self.receiver.recv())
            .await
            .unwrap_or_else(|_| panic!("no report within {WAIT:?}; seen: {:#?}", self.seen))
            .expect("report sink closed");
        self.seen.push(report.clone());
        report
    }

    /// Waits for the status report of `task_id` reaching `state`, skipping others.
    pub async fn wait_status(&mut self, task_id: TaskId, state: TaskState) -> TaskStatusReport {
        loop {
            if let ReportBody::TaskStatus(status) = self.next().await.body
                && status.task_id == task_id
                && status.state == state
            {
                return status;
            }
        }
    }

    /// Status reports of `task_id` seen so far, in order.
    pub fn statuses_of(&self, task_id: TaskId) -> Vec<TaskStatusReport> {
        self.seen
            .iter()
            .filter_map(|report| match &report.body {
                ReportBody::TaskStatus(status) if status.task_id == task_id => Some(status.clone()),
                _ => None,
            })
            .collect()
    }
}

/// Polls `check` every 10 ms until it holds, failing after [`WAIT`].
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// === impl SharedStore ===

/// A memory store that outlives the worker using it, to test a worker restart.
#[derive(Clone, Default)]
pub struct SharedStore(pub Arc<Mutex<MemoryStore>>);

impl Store for SharedStore {
    fn tasks(&self) -> Result<Vec<Task>, StoreError> {
        self.0.lock().unwrap().tasks()
    }

    fn task(&self, id: TaskId) -> Result<Option<Task>, StoreError> {
        self.0.lock().unwrap().task(id)
    }

    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<TaskEvent>, StoreError> {
        self.0.lock().unwrap().events_after(after, limit)
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        self.0.lock().unwrap().nodes()
    }

    fn worker_tasks(&self) -> Result<Vec<WorkerTask>, StoreError> {
        self.0.lock().unwrap().worker_tasks()
    }

    fn commit(&mut self, batch: Batch) -> Result<Vec<u64>, StoreError> {
        self.0.lock().unwrap().commit(batch)
    }

    fn is_in_memory(&self) -> bool {
        true
    }
}
