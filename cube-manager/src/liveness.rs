//! Node liveness: when each node was last heard from, judged on the manager's own clock.
//!
//! The [`crate::Manager`] calls [`Liveness::heard`] for every report a worker sends
//! (heartbeat or status) and when a node registers, and [`Liveness::expire`] from a periodic
//! check. Times are the manager's monotonic instants (`Clock::monotonic` of its configured
//! clock). The wall-clock stamps in workers' reports are never read here, so neither a
//! worker whose clock is wrong nor a clock step on either side changes a verdict.
//!
//! A node silent for longer than the heartbeat TTL plus the grace period is `down`. The
//! defaults are Nomad's: `min_heartbeat_ttl` 10 s and `heartbeat_grace` 10 s
//! (hashicorp/nomad `nomad/config.go`, `DefaultConfig`), so a lost node of a small cluster
//! is declared down about 20 s after its last report.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use cube_core::ids::NodeId;

/// Default time within which a worker is expected to report again (Nomad's
/// `min_heartbeat_ttl`).
pub const DEFAULT_HEARTBEAT_TTL: Duration = Duration::from_secs(10);
/// Default silence allowed beyond the TTL before a node is declared down (Nomad's
/// `heartbeat_grace`).
pub const DEFAULT_HEARTBEAT_GRACE: Duration = Duration::from_secs(10);
/// Maximum time between two liveness checks.
const MAX_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Minimum time between two liveness checks.
const MIN_CHECK_INTERVAL: Duration = Duration::from_millis(10);

/// Returns the time between two liveness checks for a TTL and grace period: a tenth of
/// their sum, between 10 ms and 1 s, so a node is declared down at most 10 % late.
pub fn check_interval_for(ttl: Duration, grace: Duration) -> Duration {
    ((ttl + grace) / 10).clamp(MIN_CHECK_INTERVAL, MAX_CHECK_INTERVAL)
}

/// When each registered node was last heard from, and which nodes are down.
#[derive(Debug, Clone)]
pub struct Liveness {
    /// Silence after which a node is down: TTL plus grace.
    window: Duration,
    last_heard: HashMap<NodeId, Instant>,
    down: HashSet<NodeId>,
}

impl Liveness {
    /// Creates a tracker that declares a node down after `ttl + grace` of silence.
    pub fn new(ttl: Duration, grace: Duration) -> Self {
        Self {
            window: ttl + grace,
            last_heard: HashMap::new(),
            down: HashSet::new(),
        }
    }

    /// Returns the silence after which a node is down.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Records that `node` was heard from at `now`; returns whether it was down until now.
    pub fn heard(&mut self, node: &NodeId, now: Instant) -> bool {
        let last = self.last_heard.entry(node.clone()).or_insert(now);
        // A report handled late must not move the time back.
        *last = (*last).max(now);
        self.down.remove(node)
    }

    /// Checks whether `node` is down.
    pub fn is_down(&self, node: &NodeId) -> bool {
        self.down.contains(node)
    }

    /// Marks every node silent for longer than the window at `now` as down, and returns
    /// those nodes with their silence. A node already down is not returned again.
    pub fn expire(&mut self, now: Instant) -> Vec<(NodeId, Duration)> {
        let mut expired = Vec::new();
        for (node, last) in &self.last_heard {
            let silence = now.saturating_duration_since(*last);
            if silence > self.window && !self.down.contains(node) {
                expired.push((node.clone(), silence));
            }
        }
        expired.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        for (node, _) in &expired {
            self.down.insert(node.clone());
        }
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> NodeId {
        NodeId::new(name).unwrap()
    }

    #[test]
    fn node_is_down_only_after_ttl_plus_grace() {
        let mut liveness = Liveness::new(Duration::from_secs(10), Duration::from_secs(10));
        let start = Instant::now();
        liveness.heard(&node("a"), start);

        assert!(liveness.expire(start + Duration::from_secs(20)).is_empty());
        assert!(!liveness.is_down(&node("a")));

        let expired = liveness.expire(start + Duration::from_millis(20_001));
        assert_eq!(expired, vec![(node("a"), Duration::from_millis(20_001))]);
        assert!(liveness.is_down(&node("a")));
    }

    #[test]
    fn down_node_is_reported_once() {
        let mut liveness = Liveness::new(Duration::from_secs(1), Duration::from_secs(1));
        let start = Instant::now();
        liveness.heard(&node("a"), start);
        assert_eq!(liveness.expire(start + Duration::from_secs(3)).len(), 1);
        assert!(liveness.expire(start + Duration::from_secs(4)).is_empty());
    }

    #[test]
    fn report_revives_down_node() {
        let mut liveness = Liveness::new(Duration::from_secs(1), Duration::from_secs(1));
        let start = Instant::now();
        liveness.heard(&node("a"), start);
        liveness.expire(start + Duration::from_secs(3));

        assert!(liveness.heard(&node("a"), start + Duration::from_secs(4)));
        assert!(!liveness.is_down(&node("a")));
        assert!(!liveness.heard(&node("a"), start + Duration::from_secs(5)));
    }

    #[test]
    fn late_report_does_not_move_time_back() {
        let mut liveness = Liveness::new(Duration::from_secs(1), Duration::from_secs(1));
        let start = Instant::now();
        liveness.heard(&node("a"), start + Duration::from_secs(5));
        liveness.heard(&node("a"), start);
        assert!(liveness.expire(start + Duration::from_secs(6)).is_empty());
    }

    #[test]
    fn each_node_is_judged_on_its_own() {
        let mut liveness = Liveness::new(Duration::from_secs(1), Duration::from_secs(1));
        let start = Instant::now();
        liveness.heard(&node("a"), start);
        liveness.heard(&node("b"), start + Duration::from_secs(2));
        let expired = liveness.expire(start + Duration::from_secs(3));
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].0, node("a"));
        assert!(!liveness.is_down(&node("b")));
    }

    #[test]
    fn check_interval_is_bounded_tenth() {
        let second = Duration::from_secs(1);
        assert_eq!(check_interval_for(10 * second, 10 * second), second);
        assert_eq!(
            check_interval_for(second, second),
            Duration::from_millis(200)
        );
        assert_eq!(
            check_interval_for(Duration::from_millis(30), Duration::from_millis(30)),
            Duration::from_millis(10)
        );
    }
}
