//! This replica's clock for the times the server stamps on commands (`now_ms` of `OpenSession`,
//! `KeepAlive`, `MasterChanged` and `Tick`) and compares with the database's next deadline.
//!
//! It reads the wall clock, plus the drift a skewed clock would have gained since the server
//! started when the log's test knob `LogConfig::clock_rate_ppm` is set. The log's driver counts
//! engine ticks (master lease, elections) on the same rate, so a skewed replica is skewed as a
//! whole: its session leases and lock-delays run out early or late as its Paxos lease does.

use replicated_log::clock::skewed;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, Debug)]
pub(crate) struct ReplicaClock {
    started: Instant,
    rate_ppm: i64,
}

impl ReplicaClock {
    /// A clock that reads the wall clock, running `rate_ppm` parts per million fast (positive)
    /// or slow (negative) from now on.
    pub(crate) fn new(rate_ppm: i64) -> ReplicaClock {
        ReplicaClock {
            started: Instant::now(),
            rate_ppm,
        }
    }

    /// Milliseconds since the Unix epoch on this replica's clock. The database never lets its
    /// clock run backwards, so a step back of the wall clock only delays expiries.
    pub(crate) fn now_ms(&self) -> u64 {
        now_ms(wall_clock_ms(), self.started.elapsed(), self.rate_ppm)
    }
}

/// The wall clock `wall_ms`, moved by the drift a clock running `rate_ppm` fast or slow gains
/// over `elapsed`.
fn now_ms(wall_ms: u64, elapsed: std::time::Duration, rate_ppm: i64) -> u64 {
    if rate_ppm == 0 {
        return wall_ms;
    }
    let drift_ms = i128::try_from(skewed(elapsed, rate_ppm).as_millis()).unwrap_or(i128::MAX)
        - i128::try_from(elapsed.as_millis()).unwrap_or(i128::MAX);
    let now = i128::from(wall_ms).saturating_add(drift_ms);
    u64::try_from(now.max(0)).unwrap_or(u64::MAX)
}

/// Milliseconds since the Unix epoch on the host's wall clock.
fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_skewed_clock_gains_or_loses_its_rate_of_the_elapsed_time() {
        let wall = 1_700_000_000_000;
        let minute = Duration::from_secs(60);
        assert_eq!(now_ms(wall, minute, 0), wall);
        assert_eq!(now_ms(wall, minute, 100_000), wall + 6_000);
        assert_eq!(now_ms(wall, minute, -100_000), wall - 6_000);
        assert_eq!(now_ms(0, minute, -100_000), 0);
    }
}
