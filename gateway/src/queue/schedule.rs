//! When the next attempt happens.

use std::time::Duration;

/// The retry schedule: the waits between attempts; the last one repeats.
#[derive(Debug, Clone)]
pub struct RetrySchedule {
    waits: Vec<Duration>,
}

impl RetrySchedule {
    pub fn new(waits: Vec<Duration>) -> Self {
        assert!(
            !waits.is_empty(),
            "config validation guarantees one interval"
        );
        RetrySchedule { waits }
    }

    /// The wait after the `attempts`-th failed attempt (1-based).
    pub fn wait_after(&self, attempts: u32) -> Duration {
        let i = (attempts.max(1) as usize - 1).min(self.waits.len() - 1);
        self.waits[i]
    }
}
