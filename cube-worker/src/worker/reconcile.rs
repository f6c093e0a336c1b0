//! Adoption at start-up and the periodic reconcile: the worker matches its records with the
//! containers that carry its node's label.
//!
//! [`Worker::adopt`] runs when the actor starts. It takes the records read from the store
//! into the task table at once, so commands see them, then lists the engine's containers that
//! carry this node's [`LABEL_NODE`] and matches them to the records by [`LABEL_TASK`] and
//! [`LABEL_ATTEMPT`]:
//!
//! - a record whose attempt has a container is adopted: a supervisor watches that container
//!   again, and a container that exited meanwhile ends the attempt with its exit code;
//! - a record whose container vanished while the worker was down ends its attempt as failed
//!   with the reason [`CONTAINER_MISSING`], and the task's restart policy applies;
//! - a record that never got a container starts one, a record waiting out a restart back-off
//!   sets its timer again, and a record with a pending stop finishes the stop;
//! - a container with this node's labels that matches no active record is stopped and
//!   removed.
//!
//! When the engine cannot list containers, each record with a container id is adopted by
//! that id, and a container that is gone is then reported by its supervisor. The worker starts
//! in every case: nothing found at start-up makes it refuse to run.
//!
//! [`Worker::reconcile`] repeats the listing every [`crate::WorkerConfig::reconcile_interval`]
//! as a safety net behind the engine's wait call. A running attempt whose container is
//! missing from the listing or exited gets a [`CheckContainer`], so its supervisor ends it
//! with [`CONTAINER_MISSING`] or the exit code and the restart policy applies. Containers
//! that no record claims are removed as at start-up.

use std::collections::{HashMap, HashSet};
use std::time::{SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use cube_core::{
    AttemptId, ContainerId, LABEL_ATTEMPT, LABEL_NODE, LABEL_TASK, TaskId, TaskState, WorkerTask,
};

use super::{TaskEntry, Worker};
use crate::runtime::{ContainerInfo, ContainerStatus, error_chain};
use crate::supervisor::{AttemptEvent, CONTAINER_MISSING, CheckContainer, Launch, StopAttempt};

/// Returns the first report sequence number of this worker process: the microseconds since the Unix
/// epoch, so that it exceeds every number an earlier process of the same worker issued.
///
/// NOTE: this holds while the wall clock does not step back by more than the time between
/// the two processes, and while a process issues fewer than a million reports per second.
pub(super) fn first_report_seq() -> u64 {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_micros());
    u64::try_from(micros).unwrap_or(u64::MAX).max(1)
}

/// The occasion of a reconcile pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Once, when the actor starts: records without a supervisor are resumed.
    StartUp,
    /// On every reconcile interval: only supervised attempts are checked.
    Periodic,
}

/// The step that resumes one active record once the containers are known.
enum Resume {
    /// Watch this container again.
    Adopt(ContainerId),
    /// Start the attempt's container.
    Start,
    /// Set the restart timer again.
    Backoff,
    /// End the attempt: its container vanished.
    Missing(Option<ContainerId>),
    /// Finish a stop that was requested before the restart and found no container.
    EndStopped(String),
}

impl Worker {
    /// Takes `records` into the task table and resumes them once the containers are listed.
    pub(super) fn adopt(&mut self, records: Vec<WorkerTask>, ctx: &mut Context<Self>) {
        let active = records
            .iter()
            .filter(|record| !record.state.is_terminal())
            .count();
        for record in records {
            self.tasks.insert(record.task_id, TaskEntry::new(record));
        }
        log::debug!(
            "worker {} lists its containers to resume {active} active records",
            self.config.node_id
        );
        self.list_and_reconcile(Pass::StartUp, ctx);
    }

    /// Runs one periodic reconcile, unless start-up adoption or the previous pass is still
    /// waiting for its listing.
    ///
    /// # Guarantees
    ///
    /// A running attempt whose container is gone or exited ends exactly as if the engine's
    /// wait had returned: its supervisor confirms with an inspect, reports the end once and
    /// the restart policy applies. An end that the wait already reported is not reported
    /// again.
    ///
    /// # Caveats
    ///
    /// It finds a missed exit only on the next pass, so one period late at most.
    pub(super) fn reconcile(&mut self, ctx: &mut Context<Self>) {
        if !self.adopted || self.reconciling {
            log::debug!(
                "worker {} skips a reconcile: an earlier listing is still pending",
                self.config.node_id
            );
            return;
        }
        self.list_and_reconcile(Pass::Periodic, ctx);
    }

    /// Lists the containers with this node's label, then reconciles the records with them.
    fn list_and_reconcile(&mut self, pass: Pass, ctx: &mut Context<Self>) {
        self.reconciling = true;
        let node = self.config.node_id.to_string();
        let listing = self.runtime.list_containers(LABEL_NODE, Some(&node));
        ctx.spawn(listing.into_actor(self).map(move |result, act, ctx| {
            act.reconciling = false;
            let containers = match result {
                Ok(containers) => Some(containers),
                Err(error) if pass == Pass::StartUp => {
                    log::warn!(
                        "worker {} could not list its containers, adopting recorded ones by id: {}",
                        act.config.node_id,
                        error_chain(&error)
                    );
                    None
                }
                Err(error) => {
                    log::warn!(
                        "worker {} could not list its containers for a reconcile: {}",
                        act.config.node_id,
                        error_chain(&error)
                    );
                    return;
                }
            };
            if pass == Pass::StartUp {
                act.adopted = true;
            }
            act.reconcile_containers(containers, pass, ctx);
        }));
    }

    /// Matches the records with the listed `containers` (`None` when listing failed): at
    /// start-up resumes every active record that no command has taken over since, then has
    /// the supervisors check containers that are gone or exited, and removes the containers
    /// that no record claims.
    fn reconcile_containers(
        &mut self,
        containers: Option<Vec<ContainerInfo>>,
        pass: Pass,
        ctx: &mut Context<Self>,
    ) {
        let mut claimed = HashSet::new();
        if pass == Pass::StartUp {
            claimed = self.resume_records(containers.as_deref(), ctx);
        }
        let Some(containers) = containers else {
            return;
        };
        self.check_supervised(&containers);
        for info in containers {
            if !claimed.contains(&info.id) && !self.is_current_container(&info) {
                self.remove_unclaimed(info);
            }
        }
    }

    /// Resumes every active record without a supervisor, timer or earlier attempt; returns the
    /// containers adopted.
    fn resume_records(
        &mut self,
        containers: Option<&[ContainerInfo]>,
        ctx: &mut Context<Self>,
    ) -> HashSet<ContainerId> {
        let by_attempt: HashMap<(TaskId, AttemptId), ContainerId> = containers
            .into_iter()
            .flatten()
            .filter_map(|info| Some((labelled_attempt(info)?, info.id.clone())))
            .collect();
        let listed = containers.is_some();

        let mut claimed = HashSet::new();
        let waiting: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|(_, entry)| {
                !entry.record.state.is_terminal()
                    && entry.supervisor.is_none()
                    && entry.retiring.is_empty()
                    && entry.restart_timer.is_none()
            })
            .map(|(task_id, _)| *task_id)
            .collect();
        for task_id in waiting {
            let record = &self.tasks[&task_id].record;
            let found = by_attempt.get(&(task_id, record.attempt)).cloned();
            let resume = decide(record, found, listed);
            if let Resume::Adopt(container_id) = &resume {
                claimed.insert(container_id.clone());
            }
            self.resume(task_id, resume, ctx);
        }
        claimed
    }

    /// Sends [`CheckContainer`] to the supervisor of each running attempt whose container is
    /// missing from `containers` or no longer runs.
    fn check_supervised(&self, containers: &[ContainerInfo]) {
        let statuses: HashMap<&ContainerId, ContainerStatus> = containers
            .iter()
            .map(|info| (&info.id, info.status))
            .collect();
        for (task_id, entry) in &self.tasks {
            let (Some(supervisor), Some(container_id)) =
                (&entry.supervisor, &entry.record.container_id)
            else {
                continue;
            };
            if entry.record.state != TaskState::Running {
                continue;
            }
            let status = statuses.get(container_id).copied();
            if matches!(
                status,
                None | Some(ContainerStatus::Exited | ContainerStatus::Dead)
            ) {
                log::debug!(
                    "reconcile asks task {task_id} attempt {} to check container {} listed as \
                     {status:?}",
                    entry.record.attempt,
                    container_id.short()
                );
                supervisor.do_send(CheckContainer);
            }
        }
    }

    /// Checks whether `info` is the container of a task's current attempt that a supervisor runs,
    /// such as one a command started since start-up.
    fn is_current_container(&self, info: &ContainerInfo) -> bool {
        let Some((task_id, attempt)) = labelled_attempt(info) else {
            return false;
        };
        self.tasks.get(&task_id).is_some_and(|entry| {
            let current = entry.record.attempt == attempt && entry.supervisor.is_some();
            current || entry.retiring.contains_key(&attempt)
        })
    }

    fn resume(&mut self, task_id: TaskId, resume: Resume, ctx: &mut Context<Self>) {
        let node = self.config.node_id.clone();
        match resume {
            Resume::Adopt(container_id) => {
                let Some(entry) = self.tasks.get_mut(&task_id) else {
                    return;
                };
                log::info!(
                    "container adopted task_id={task_id} attempt={} container_id={} node_id={node}",
                    entry.record.attempt,
                    container_id.short()
                );
                entry.record.container_id = Some(container_id.clone());
                let record = entry.record.clone();
                let stop_reason = record
                    .stop_requested
                    .then(|| record.reason.clone().unwrap_or_default());
                let supervisor =
                    self.spawn_supervisor(&record, Launch::Adopt { container_id }, ctx);
                if let Some(reason) = stop_reason {
                    supervisor.do_send(StopAttempt { reason });
                }
                if let Some(entry) = self.tasks.get_mut(&task_id) {
                    entry.supervisor = Some(supervisor);
                }
            }
            Resume::Start => {
                let record = self.tasks[&task_id].record.clone();
                let supervisor = self.spawn_supervisor(&record, Launch::Start, ctx);
                if let Some(entry) = self.tasks.get_mut(&task_id) {
                    entry.supervisor = Some(supervisor);
                }
            }
            Resume::Backoff => {
                if let Some(at) = self.tasks[&task_id].record.next_attempt_at {
                    self.resume_backoff(task_id, at, ctx);
                }
            }
            Resume::Missing(container_id) => {
                log::warn!(
                    "container of recorded attempt is gone task_id={task_id} container_id={} \
                     node_id={node}",
                    container_id
                        .as_ref()
                        .map(ContainerId::short)
                        .unwrap_or("none")
                );
                let event = AttemptEvent::Ended {
                    state: TaskState::Failed,
                    container_id,
                    exit_code: None,
                    reason: CONTAINER_MISSING.to_owned(),
                };
                self.end_attempt(task_id, event, ctx);
            }
            Resume::EndStopped(reason) => self.end_unstarted(task_id, reason, ctx),
        }
    }

    /// Stops and removes a container with this node's labels that no record claims.
    fn remove_unclaimed(&self, info: ContainerInfo) {
        log::info!(
            "removing container that no record claims container_id={} name={} task_id={} \
             node_id={}",
            info.id.short(),
            info.name,
            info.labels.get(LABEL_TASK).map_or("", String::as_str),
            self.config.node_id
        );
        let runtime = self.runtime.clone();
        let node = self.config.node_id.clone();
        actix::spawn(async move {
            // Removal is forced, which kills a container that still runs.
            if let Err(error) = runtime.remove_container(&info.id).await {
                log::warn!(
                    "failed to remove unclaimed container container_id={} node_id={node}: {}",
                    info.id.short(),
                    error_chain(&error)
                );
            }
        });
    }
}

/// Returns the task and attempt named by a container's labels, if both parse.
fn labelled_attempt(info: &ContainerInfo) -> Option<(TaskId, AttemptId)> {
    let task_id = info.labels.get(LABEL_TASK)?.parse().ok()?;
    let attempt = info.labels.get(LABEL_ATTEMPT)?.parse().ok()?;
    Some((task_id, attempt))
}

/// Decides how to resume an active `record`, given the container found for its attempt;
/// `listed` is whether the engine's containers are known at all.
fn decide(record: &WorkerTask, found: Option<ContainerId>, listed: bool) -> Resume {
    let stop_reason = record
        .stop_requested
        .then(|| record.reason.clone().unwrap_or_default());
    if !listed {
        // Without a listing, trust the record; a supervisor finds out if the container is gone.
        return match (&record.container_id, stop_reason) {
            (Some(container_id), _) => Resume::Adopt(container_id.clone()),
            (None, Some(reason)) => Resume::EndStopped(reason),
            (None, None) if record.next_attempt_at.is_some() => Resume::Backoff,
            (None, None) => Resume::Start,
        };
    }
    if record.next_attempt_at.is_some() {
        // The ended attempt's container was removed before the back-off began.
        return match stop_reason {
            Some(reason) => Resume::EndStopped(reason),
            None => Resume::Backoff,
        };
    }
    match (found, stop_reason) {
        (Some(container_id), _) => Resume::Adopt(container_id),
        (None, Some(reason)) => Resume::EndStopped(reason),
        (None, None) if record.state == TaskState::Running || record.container_id.is_some() => {
            Resume::Missing(record.container_id.clone())
        }
        (None, None) => Resume::Start,
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use cube_core::TaskSpec;

    use super::*;

    fn record(state: TaskState, container: Option<&str>) -> WorkerTask {
        WorkerTask {
            task_id: TaskId::generate(),
            attempt: AttemptId::generate(),
            spec: TaskSpec::new("t", "i"),
            ports: Vec::new(),
            state,
            container_id: container.map(|id| ContainerId(id.to_owned())),
            host_ports: Vec::new(),
            exit_code: None,
            reason: None,
            stop_requested: false,
            accepted_at: Utc::now(),
            started_at: None,
            finished_at: None,
            restart_count: 0,
            next_attempt_at: None,
            replaces: None,
        }
    }

    fn name(resume: &Resume) -> &'static str {
        match resume {
            Resume::Adopt(_) => "adopt",
            Resume::Start => "start",
            Resume::Backoff => "backoff",
            Resume::Missing(_) => "missing",
            Resume::EndStopped(_) => "end-stopped",
        }
    }

    #[test]
    fn decisions_cover_each_record_kind() {
        let found = Some(ContainerId("c1".to_owned()));
        let running = record(TaskState::Running, Some("c1"));
        let unstarted = record(TaskState::Scheduled, None);
        let mut backoff = record(TaskState::Scheduled, None);
        backoff.next_attempt_at = Some(Utc::now());
        let mut stopping = record(TaskState::Running, Some("c1"));
        stopping.stop_requested = true;

        let cases = [
            (&running, found.clone(), true, "adopt"),
            (&running, None, true, "missing"),
            (&running, None, false, "adopt"),
            (&unstarted, found.clone(), true, "adopt"),
            (&unstarted, None, true, "start"),
            (&unstarted, None, false, "start"),
            (&backoff, found.clone(), true, "backoff"),
            (&backoff, None, false, "backoff"),
            (&stopping, found.clone(), true, "adopt"),
            (&stopping, None, true, "end-stopped"),
        ];
        for (index, (record, found, listed, expected)) in cases.into_iter().enumerate() {
            let resume = decide(record, found, listed);
            assert_eq!(name(&resume), expected, "case {index}");
        }
    }

    #[test]
    fn first_seq_grows_between_calls() {
        let first = first_report_seq();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(first_report_seq() > first);
    }
}
