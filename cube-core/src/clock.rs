//! Injectable clocks, so tests can control wall-clock and monotonic time.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

/// A wall-clock timestamp in UTC, as stored in tasks and events.
pub type Timestamp = DateTime<Utc>;

/// Source of time for the manager and workers.
///
/// Wall-clock time stamps records for people to read; monotonic time is the only time used
/// to judge durations such as liveness, so a clock step never declares a node dead.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current wall-clock time.
    fn now(&self) -> Timestamp;

    /// The current monotonic instant.
    fn monotonic(&self) -> Instant;
}

/// The operating system's clocks.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Utc::now()
    }

    fn monotonic(&self) -> Instant {
        Instant::now()
    }
}

/// A shared handle to a clock.
pub type SharedClock = Arc<dyn Clock>;

/// Returns a shared handle to the system clock.
pub fn system_clock() -> SharedClock {
    Arc::new(SystemClock)
}

/// A clock that moves only when told to, for tests.
#[derive(Debug, Clone)]
pub struct ManualClock {
    state: Arc<Mutex<(Timestamp, Instant)>>,
}

impl ManualClock {
    /// Creates a clock reading `start` on the wall clock.
    pub fn new(start: Timestamp) -> Self {
        Self {
            state: Arc::new(Mutex::new((start, Instant::now()))),
        }
    }

    /// Moves both the wall clock and the monotonic clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut state = self.state.lock().expect("manual clock lock poisoned");
        state.0 += chrono::Duration::from_std(by).expect("duration fits chrono");
        state.1 += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        self.state.lock().expect("manual clock lock poisoned").0
    }

    fn monotonic(&self) -> Instant {
        self.state.lock().expect("manual clock lock poisoned").1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_advances_both_clocks() {
        let clock = ManualClock::new(Utc::now());
        let (wall, mono) = (clock.now(), clock.monotonic());
        clock.advance(Duration::from_secs(5));
        assert_eq!((clock.now() - wall).num_seconds(), 5);
        assert_eq!(clock.monotonic() - mono, Duration::from_secs(5));
    }
}
