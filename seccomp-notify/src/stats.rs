//! Decision-time statistics: the supervisor's own time from receiving a notification to
//! answering it, kept as the most recent samples for percentiles.
//!
//! Limits: only the last [`KEEP`] samples are kept.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

/// Samples kept.
pub const KEEP: usize = 200_000;

/// Recent decision times in microseconds.
#[derive(Debug, Default)]
pub struct DecisionStats {
    samples: Mutex<VecDeque<u32>>,
}

impl DecisionStats {
    /// Adds one decision time.
    pub fn record(&self, elapsed: Duration) {
        let micros = u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX);
        if let Ok(mut samples) = self.samples.lock() {
            if samples.len() == KEEP {
                samples.pop_front();
            }
            samples.push_back(micros);
        }
    }

    /// Drops all samples.
    pub fn clear(&self) {
        if let Ok(mut samples) = self.samples.lock() {
            samples.clear();
        }
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.samples.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `q` quantile (0.0..=1.0) in microseconds, `None` without samples.
    pub fn quantile(&self, q: f64) -> Option<u32> {
        let samples = self.samples.lock().ok()?;
        let mut sorted: Vec<u32> = samples.iter().copied().collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_unstable();
        let index = ((sorted.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
        sorted.get(index).copied()
    }
}
