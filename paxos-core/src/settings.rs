//! Timing and sizing of one replica. Time is counted in ticks of the replica's own clock.

use crate::limits;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// How often a master renews its lease and announces its chosen prefix.
    pub heartbeat_interval_ticks: u64,
    /// A follower that hears no master for this long (plus jitter) tries to become master.
    pub election_timeout_ticks: u64,
    /// Seeded random jitter added to each election timeout, against duelling proposers.
    pub election_jitter_ticks: u64,
    /// D: how long an acceptor, on its own clock, refuses other masters after granting a lease.
    pub lease_ticks: u64,
    /// Bound on any clock's rate error against true time, in parts per million.
    pub clock_drift_ppm: u64,
    /// Extra safety taken off the master's lease, in ticks (covers tick granularity).
    pub lease_margin_ticks: u64,
    /// Alpha: a membership change chosen at slot i takes effect at slot i + window. Also the most
    /// slots a master has in flight. Must be the same on every replica of a cluster.
    pub window_slots: u64,
    /// How often the master puts a digest request in the log (0: never).
    pub digest_interval_ticks: u64,
    /// How often a lagging replica re-asks for catch-up or a rebuilding replica re-probes.
    pub retry_interval_ticks: u64,
    pub batch_entries_max: usize,
    pub batch_bytes_max: usize,
}

impl Default for Settings {
    /// Timing for a tick of 10 ms: heartbeats every 50 ms, lease 2 s, elections after ~1 s of silence.
    fn default() -> Settings {
        Settings {
            heartbeat_interval_ticks: 5,
            election_timeout_ticks: 100,
            election_jitter_ticks: 50,
            lease_ticks: 200,
            clock_drift_ppm: 1_000,
            lease_margin_ticks: 2,
            window_slots: 64,
            digest_interval_ticks: 6_000,
            retry_interval_ticks: 20,
            batch_entries_max: limits::BATCH_ENTRIES_MAX,
            batch_bytes_max: limits::BATCH_BYTES_MAX,
        }
    }
}

impl Settings {
    /// Ticks, on the master's clock from when it sent a lease request, during which the lease holds.
    ///
    /// An acceptor refuses other masters for `lease_ticks + 1` of its ticks after it receives the
    /// request, which is at least `D / (1 + e)` of true time after the master sent it. The master's
    /// `L` ticks last at most `L / (1 - e)` of true time. So `L <= D (1 - e) / (1 + e)`, less a margin.
    pub fn master_lease_ticks(&self) -> u64 {
        let million = 1_000_000u128;
        let e = u128::from(self.clock_drift_ppm);
        let d = u128::from(self.lease_ticks);
        let safe = d * (million - e) / (million + e);
        (safe as u64).saturating_sub(self.lease_margin_ticks)
    }

    /// Why these settings cannot work, if they cannot.
    pub fn invalid(&self) -> Option<&'static str> {
        if self.clock_drift_ppm >= 500_000 {
            return Some("clock_drift_ppm must be below 500000 (50%)");
        }
        if self.heartbeat_interval_ticks == 0 || self.retry_interval_ticks == 0 {
            return Some("intervals must be at least one tick");
        }
        if self.master_lease_ticks() <= self.heartbeat_interval_ticks * 2 {
            return Some("lease_ticks too short: the master could not renew before its lease ends");
        }
        if self.election_timeout_ticks <= self.heartbeat_interval_ticks * 2 {
            return Some("election_timeout_ticks must exceed two heartbeat intervals");
        }
        if self.window_slots == 0 || self.window_slots > limits::WINDOW_SLOTS_MAX {
            return Some("window_slots must be in 1..=4096");
        }
        if self.batch_entries_max == 0
            || self.batch_entries_max > limits::BATCH_ENTRIES_MAX
            || self.batch_bytes_max == 0
            || self.batch_bytes_max > limits::BATCH_BYTES_MAX
        {
            return Some("batch limits out of range");
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_lease_is_shorter_than_the_grant_by_the_drift() {
        let mut s = Settings {
            lease_ticks: 1000,
            clock_drift_ppm: 50_000,
            lease_margin_ticks: 1,
            ..Settings::default()
        };
        // 1000 * 0.95 / 1.05 = 904.76 -> 904, minus the margin.
        assert_eq!(s.master_lease_ticks(), 903);
        s.clock_drift_ppm = 0;
        assert_eq!(s.master_lease_ticks(), 999);
        assert_eq!(Settings::default().invalid(), None);
    }
}
