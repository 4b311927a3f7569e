//! This replica's clock as the driver reads it: the host's monotonic clock, optionally made to run
//! fast or slow by a test knob ([`LogConfig::clock_rate_ppm`](crate::LogConfig::clock_rate_ppm)).
//!
//! The protocol tolerates clocks whose rates differ by up to `Settings::clock_drift_ppm` (see
//! `docs/paxos.md`, "Leases"). Real hosts rarely drift enough to show whether that bound is honoured,
//! so a fault harness skews a replica's clock on purpose: one replica at +200 000 ppm against a
//! drift bound of 100 ppm must be caught by a linearizability checker, one within the bound must not.

use std::time::Duration;

/// The largest clock rate skew, either way, in parts per million: half again as fast, or half as
/// fast. Larger settings are clamped to it, so a skewed clock always runs forward.
pub const CLOCK_RATE_PPM_MAX: i64 = 500_000;

const PPM_PER_UNIT: u128 = 1_000_000;
const NANOS_PER_SECOND: u128 = 1_000_000_000;

/// How much time a clock running `clock_rate_ppm` parts per million fast (positive) or slow
/// (negative) counts while `elapsed` passes in true time.
pub fn skewed(elapsed: Duration, clock_rate_ppm: i64) -> Duration {
    let ppm = clock_rate_ppm.clamp(-CLOCK_RATE_PPM_MAX, CLOCK_RATE_PPM_MAX);
    let rate = u128::try_from(1_000_000 + ppm).expect("a clamped rate is positive");
    // At most ~1.8e28 ns times 1.5e6: far below u128::MAX (~3.4e38).
    let nanos = elapsed.as_nanos() * rate / PPM_PER_UNIT;
    let seconds = u64::try_from(nanos / NANOS_PER_SECOND).unwrap_or(u64::MAX);
    let subsecond = u32::try_from(nanos % NANOS_PER_SECOND).expect("below one second");
    Duration::new(seconds, subsecond)
}

/// How many engine ticks of length `tick` are due after `elapsed` true time on a clock running
/// `clock_rate_ppm` fast or slow.
pub(crate) fn ticks_due(elapsed: Duration, tick: Duration, clock_rate_ppm: i64) -> u64 {
    let tick = tick.as_nanos().max(1);
    u64::try_from(skewed(elapsed, clock_rate_ppm).as_nanos() / tick).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(10);

    #[test]
    fn a_true_clock_counts_wall_time() {
        assert_eq!(ticks_due(Duration::from_secs(10), TICK, 0), 1_000);
        assert_eq!(ticks_due(Duration::from_millis(19), TICK, 0), 1);
        assert_eq!(
            skewed(Duration::from_nanos(123_456_789), 0),
            Duration::from_nanos(123_456_789)
        );
    }

    #[test]
    fn a_fast_clock_counts_more_ticks_and_a_slow_one_fewer() {
        let ten_seconds = Duration::from_secs(10);
        assert_eq!(ticks_due(ten_seconds, TICK, 200_000), 1_200);
        assert_eq!(ticks_due(ten_seconds, TICK, -200_000), 800);
        // 100 ppm over 100 s is 10 ms: exactly one tick more or less.
        let hundred_seconds = Duration::from_secs(100);
        assert_eq!(ticks_due(hundred_seconds, TICK, 100), 10_001);
        assert_eq!(ticks_due(hundred_seconds, TICK, -100), 9_999);
    }

    #[test]
    fn the_rate_is_clamped_and_never_overflows() {
        let second = Duration::from_secs(1);
        assert_eq!(skewed(second, i64::MAX), Duration::from_millis(1_500));
        assert_eq!(skewed(second, i64::MIN), Duration::from_millis(500));
        assert_eq!(
            skewed(Duration::MAX, CLOCK_RATE_PPM_MAX).as_secs(),
            u64::MAX
        );
        assert_eq!(
            ticks_due(Duration::MAX, Duration::ZERO, CLOCK_RATE_PPM_MAX),
            u64::MAX
        );
        assert_eq!(
            skewed(Duration::MAX, -CLOCK_RATE_PPM_MAX).as_secs(),
            u64::MAX / 2
        );
    }
}
