//! The report outbox: every report a worker emits, in order, with its sequence number.
//!
//! The Worker actor owns one [`Outbox`]. Publishing stamps a report with the next sequence
//! number (strictly increasing from 1), the node id and the time, keeps it, and hands it to
//! every subscriber:
//! - an in-process manager, through a [`WeakRecipient`] so the worker never keeps it alive;
//! - HTTP event streams, through bounded channels.
//!
//! A subscriber names the last sequence number it has seen and first receives every kept
//! report after it, so a dropped connection loses nothing as long as the outbox still keeps
//! the reports. The outbox keeps the latest [`DEFAULT_OUTBOX_CAPACITY`] reports by default
//! and drops older ones; a subscriber that resumes from before the oldest kept report sees a
//! gap in the sequence numbers. Each outbox has a random instance id, sent with every HTTP
//! stream, so that a client can tell a restarted worker process from a reconnection.

use std::collections::VecDeque;

use actix::WeakRecipient;
use cube_core::{NodeId, ReportBody, SharedClock, WorkerReport};
use tokio::sync::mpsc;
use uuid::Uuid;

/// Reports kept for replay by default; at a 5 s heartbeat this alone covers about 14 hours.
pub const DEFAULT_OUTBOX_CAPACITY: usize = 10_000;

/// Reports buffered per HTTP stream. A stream that falls this far behind is dropped, and
/// its client resumes from its last sequence number.
pub const STREAM_BUFFER: usize = 1024;

/// The ordered, bounded log of a worker's reports and their subscribers.
#[derive(Debug)]
pub struct Outbox {
    node: NodeId,
    /// Random id of this outbox, new in every worker process; see [`Outbox::instance`].
    instance: Uuid,
    clock: SharedClock,
    capacity: usize,
    last_seq: u64,
    reports: VecDeque<WorkerReport>,
    recipients: Vec<WeakRecipient<WorkerReport>>,
    streams: Vec<mpsc::Sender<WorkerReport>>,
}

/// Counts describing an outbox, for monitoring and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxStats {
    /// Sequence number of the newest report; 0 before the first.
    pub last_seq: u64,
    /// Reports kept for replay.
    pub kept: usize,
    /// Live in-process subscribers.
    pub recipients: usize,
    /// Open HTTP streams.
    pub streams: usize,
    /// The outbox's instance id; see [`Outbox::instance`].
    pub instance: Uuid,
}

impl Outbox {
    /// Creates an empty outbox for `node` that keeps at least `capacity` reports (1 at least).
    pub fn new(node: NodeId, clock: SharedClock, capacity: usize) -> Self {
        Self {
            node,
            instance: Uuid::new_v4(),
            clock,
            capacity: capacity.max(1),
            last_seq: 0,
            reports: VecDeque::new(),
            recipients: Vec::new(),
            streams: Vec::new(),
        }
    }

    /// Numbers the reports from `first` on instead of 1; use before the first publish.
    ///
    /// A worker starts from a number above any it issued before a restart, so that a manager
    /// that resumes after the last number it applied misses nothing of the new process.
    pub fn starting_at(mut self, first: u64) -> Self {
        self.last_seq = first.saturating_sub(1);
        self
    }

    /// Stamps `body` with the next sequence number, keeps it and delivers it to every
    /// subscriber; returns the sequence number.
    pub fn publish(&mut self, body: ReportBody) -> u64 {
        self.last_seq += 1;
        let report = WorkerReport {
            node: self.node.clone(),
            seq: self.last_seq,
            at: self.clock.now(),
            body,
        };

        self.recipients
            .retain(|recipient| match recipient.upgrade() {
                Some(live) => {
                    live.do_send(report.clone());
                    true
                }
                None => false,
            });
        let node = &self.node;
        self.streams
            .retain(|stream| match stream.try_send(report.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    log::warn!(
                        "worker {node} dropped an event stream that fell {STREAM_BUFFER} reports \
                     behind; its client can resume after its last sequence number"
                    );
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });

        if self.reports.len() == self.capacity {
            self.reports.pop_front();
        }
        self.reports.push_back(report);
        self.last_seq
    }

    /// Returns every kept report with a sequence number greater than `after`, in order.
    pub fn reports_after(&self, after: u64) -> Vec<WorkerReport> {
        // Kept sequence numbers are consecutive, so the first wanted one has a known index.
        let oldest = self.reports.front().map_or(self.last_seq + 1, |r| r.seq);
        let skip = after.saturating_add(1).saturating_sub(oldest);
        let skip = usize::try_from(skip).unwrap_or(usize::MAX);
        self.reports.iter().skip(skip).cloned().collect()
    }

    /// Sends every kept report after `after` to `recipient`, then every new one.
    pub fn subscribe(&mut self, recipient: WeakRecipient<WorkerReport>, after: u64) {
        let Some(live) = recipient.upgrade() else {
            return;
        };
        for report in self.reports_after(after) {
            live.do_send(report);
        }
        self.recipients.push(recipient);
    }

    /// Opens a stream: returns the kept reports after `after` and a channel of new ones.
    ///
    /// Dropping the receiver closes the stream, and the next publish removes it.
    pub fn open_stream(&mut self, after: u64) -> (Vec<WorkerReport>, mpsc::Receiver<WorkerReport>) {
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
        self.streams.retain(|stream| !stream.is_closed());
        self.streams.push(sender);
        (self.reports_after(after), receiver)
    }

    /// Returns the random id of this outbox.
    ///
    /// Sequence numbers are only comparable between reports of one instance: a worker
    /// process that restarts without keeping its outbox numbers its reports from 1 again,
    /// under a new instance id.
    pub fn instance(&self) -> Uuid {
        self.instance
    }

    /// Current counts.
    pub fn stats(&self) -> OutboxStats {
        OutboxStats {
            instance: self.instance,
            last_seq: self.last_seq,
            kept: self.reports.len(),
            recipients: self.recipients.len(),
            streams: self.streams.iter().filter(|s| !s.is_closed()).count(),
        }
    }
}

#[cfg(test)]
mod tests {
    use cube_core::clock::system_clock;
    use cube_core::{Heartbeat, Resources};

    use super::*;

    fn heartbeat() -> ReportBody {
        ReportBody::Heartbeat(Heartbeat {
            capacity: Resources::default(),
            metrics: None,
        })
    }

    fn outbox(capacity: usize) -> Outbox {
        Outbox::new(NodeId::new("w1").unwrap(), system_clock(), capacity)
    }

    fn seqs(reports: &[WorkerReport]) -> Vec<u64> {
        reports.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn publish_numbers_from_one() {
        let mut outbox = outbox(10);
        assert_eq!(outbox.publish(heartbeat()), 1);
        assert_eq!(outbox.publish(heartbeat()), 2);
        assert_eq!(seqs(&outbox.reports_after(0)), vec![1, 2]);
        assert_eq!(outbox.reports_after(0)[0].node.as_str(), "w1");
    }

    #[test]
    fn replay_starts_after_seq() {
        let mut outbox = outbox(10);
        for _ in 0..5 {
            outbox.publish(heartbeat());
        }
        assert_eq!(seqs(&outbox.reports_after(3)), vec![4, 5]);
        assert!(outbox.reports_after(5).is_empty());
        assert!(outbox.reports_after(99).is_empty());
    }

    #[test]
    fn capacity_drops_oldest() {
        let mut outbox = outbox(3);
        for _ in 0..5 {
            outbox.publish(heartbeat());
        }
        assert_eq!(outbox.stats().kept, 3);
        assert_eq!(seqs(&outbox.reports_after(0)), vec![3, 4, 5]);
        assert_eq!(seqs(&outbox.reports_after(3)), vec![4, 5]);
    }

    #[test]
    fn stream_receives_replay_then_new_reports() {
        let mut outbox = outbox(10);
        outbox.publish(heartbeat());
        outbox.publish(heartbeat());
        let (replay, mut receiver) = outbox.open_stream(1);
        assert_eq!(seqs(&replay), vec![2]);
        outbox.publish(heartbeat());
        assert_eq!(receiver.try_recv().unwrap().seq, 3);
    }

    #[test]
    fn closed_stream_is_forgotten() {
        let mut outbox = outbox(10);
        let (_, receiver) = outbox.open_stream(0);
        assert_eq!(outbox.stats().streams, 1);
        drop(receiver);
        outbox.publish(heartbeat());
        assert_eq!(outbox.stats().streams, 0);
        assert!(outbox.streams.is_empty());
    }

    #[test]
    fn numbering_can_start_above_one() {
        let mut outbox = outbox(10).starting_at(1_000);
        assert_eq!(outbox.publish(heartbeat()), 1_000);
        assert_eq!(outbox.publish(heartbeat()), 1_001);
        assert_eq!(seqs(&outbox.reports_after(0)), vec![1_000, 1_001]);
        assert_eq!(seqs(&outbox.reports_after(1_000)), vec![1_001]);
    }

    #[test]
    fn each_outbox_has_its_own_instance() {
        let first = outbox(10);
        let second = outbox(10);
        assert_ne!(first.instance(), second.instance());
        assert_eq!(first.stats().instance, first.instance());
    }

    #[test]
    fn lagging_stream_is_dropped() {
        let mut outbox = outbox(STREAM_BUFFER * 2);
        let (_, _receiver) = outbox.open_stream(0);
        for _ in 0..=STREAM_BUFFER {
            outbox.publish(heartbeat());
        }
        assert!(outbox.streams.is_empty());
    }
}
