//! When to renew and how long to wait after a failure.
//!
//! Pure functions: the caller passes the random number, so every branch can
//! be tested exactly and the scheduler stays the only place with a clock.

use std::time::{Duration, SystemTime};

/// The default share of renew-before used as the jitter window.
pub const DEFAULT_JITTER_FRACTION: f64 = 0.10;

/// The shortest retry delay `backoff` returns (unless `max` is shorter),
/// so a misconfigured zero base cannot make a busy loop against the issuer.
pub const MIN_BACKOFF: Duration = Duration::from_secs(1);

/// How far before the nominal renewal time a volume may renew.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JitterPolicy {
    fraction: f64,
}

/// A jitter fraction outside `[0, 1]`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "jitter fraction {value} is invalid: it must be a number from 0 (no jitter) \
     to 1 (up to a whole renew-before earlier); the default is 0.1"
)]
pub struct InvalidJitter {
    pub value: f64,
}

impl JitterPolicy {
    /// Renews up to `fraction × renew_before` earlier than nominal.
    pub fn new(fraction: f64) -> Result<Self, InvalidJitter> {
        if (0.0..=1.0).contains(&fraction) {
            Ok(JitterPolicy { fraction })
        } else {
            Err(InvalidJitter { value: fraction })
        }
    }

    /// Always renew exactly at the nominal time.
    pub const fn none() -> Self {
        JitterPolicy { fraction: 0.0 }
    }

    pub fn fraction(&self) -> f64 {
        self.fraction
    }
}

impl Default for JitterPolicy {
    fn default() -> Self {
        JitterPolicy {
            fraction: DEFAULT_JITTER_FRACTION,
        }
    }
}

/// How long before expiry to renew: `requested` if it is positive and
/// shorter than `lifetime`, else a third of `lifetime` (cert-manager's default).
pub fn renew_before(lifetime: Duration, requested: Option<Duration>) -> Duration {
    match requested {
        Some(r) if !r.is_zero() && r < lifetime => r,
        _ => lifetime / 3,
    }
}

/// When to renew a certificate valid from `not_before` to `not_after`.
///
/// Nominally `not_after − renew_before`; jitter moves that earlier by up to
/// `fraction × renew_before` (`unit_random` in `[0, 1)` picks where in that
/// window), so volumes issued together do not renew together. The result is
/// never later than nominal and never before `not_before`. A certificate
/// whose `not_after` is not after `not_before` yields `not_after`: a time in
/// the past, which the scheduler treats as "renew now".
pub fn renewal_time(
    not_before: SystemTime,
    not_after: SystemTime,
    renew_before_requested: Option<Duration>,
    jitter: JitterPolicy,
    unit_random: f64,
) -> SystemTime {
    let Ok(lifetime) = not_after.duration_since(not_before) else {
        return not_after;
    };
    if lifetime.is_zero() {
        return not_after;
    }
    let before = renew_before(lifetime, renew_before_requested);
    let window = scale(before, jitter.fraction);
    let offset = before.saturating_add(scale(window, unit_random));
    // Both subtractions stay within the validity, because offset is capped
    // at the lifetime.
    not_after
        .checked_sub(offset.min(lifetime))
        .unwrap_or(not_before)
        .max(not_before)
}

/// How long to wait before retry number `attempt` (1 after the first
/// failure; 0 is treated as 1). The ceiling doubles from `base` up to `max`;
/// the delay lies in the upper half of the ceiling ("equal jitter"), so
/// retries spread out but never collapse to zero. Never above `max`, never
/// below `min(MIN_BACKOFF, max)`.
pub fn backoff(attempt: u32, base: Duration, max: Duration, unit_random: f64) -> Duration {
    let doublings = attempt.saturating_sub(1);
    // 2^31 × any base already exceeds every sane max; capping the shift
    // keeps the arithmetic exact and overflow-free.
    let factor = 1u32.checked_shl(doublings.min(31)).unwrap_or(u32::MAX);
    let ceiling = base.saturating_mul(factor).min(max);
    let half = ceiling / 2;
    let delay = half.saturating_add(scale(ceiling - half, unit_random));
    delay.min(max).max(MIN_BACKOFF.min(max))
}

/// `d × f` for `f` in `[0, 1]`, clamped into `[0, d]`. Non-finite or
/// out-of-range factors are clamped, so a bad random source cannot push a
/// schedule outside its bounds.
fn scale(d: Duration, f: f64) -> Duration {
    let f = if f.is_nan() { 0.0 } else { f.clamp(0.0, 1.0) };
    Duration::try_from_secs_f64(d.as_secs_f64() * f)
        .unwrap_or(d)
        .min(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);
    const DAY: Duration = Duration::from_secs(86_400);

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    /// 1000 evenly spaced values in [0, 1).
    fn sweep() -> impl Iterator<Item = f64> {
        (0..1000).map(|i| f64::from(i) / 1000.0)
    }

    #[test]
    fn renew_before_uses_valid_requests_and_a_third_otherwise() {
        assert_eq!(renew_before(90 * DAY, Some(30 * DAY)), 30 * DAY);
        assert_eq!(renew_before(90 * DAY, None), 30 * DAY);
        assert_eq!(renew_before(90 * DAY, Some(Duration::ZERO)), 30 * DAY);
        // Equal to or longer than the lifetime would mean "renew at once,
        // forever": fall back.
        assert_eq!(renew_before(90 * DAY, Some(90 * DAY)), 30 * DAY);
        assert_eq!(renew_before(90 * DAY, Some(91 * DAY)), 30 * DAY);
        assert_eq!(
            renew_before(90 * DAY, Some(90 * DAY - Duration::from_nanos(1))),
            90 * DAY - Duration::from_nanos(1)
        );
        assert_eq!(renew_before(Duration::ZERO, None), Duration::ZERO);
        assert_eq!(renew_before(Duration::MAX, None), Duration::MAX / 3);
    }

    #[test]
    fn without_jitter_renewal_is_exactly_nominal() {
        let nb = t0();
        let na = nb + 24 * HOUR;
        let at = renewal_time(nb, na, None, JitterPolicy::none(), 0.99);
        assert_eq!(at, na - 8 * HOUR);
        let at = renewal_time(nb, na, Some(HOUR), JitterPolicy::none(), 0.5);
        assert_eq!(at, na - HOUR);
    }

    #[test]
    fn jitter_stays_in_window_and_covers_it() {
        let nb = t0();
        let na = nb + 90 * DAY;
        let nominal = na - 30 * DAY;
        let window = 3 * DAY; // 10 % of 30 days
        let mut buckets = [0u32; 10];
        let mut earliest = nominal;
        for u in sweep() {
            let at = renewal_time(nb, na, None, JitterPolicy::default(), u);
            assert!(at <= nominal, "never later than renew-before asks");
            let early = nominal.duration_since(at).unwrap();
            assert!(early < window, "u={u}: {early:?} outside the window");
            buckets[(early.as_secs_f64() / window.as_secs_f64() * 10.0) as usize] += 1;
            earliest = earliest.min(at);
        }
        assert_eq!(
            renewal_time(nb, na, None, JitterPolicy::default(), 0.0),
            nominal
        );
        // The sweep reaches within one step (0.1 %) of the window's far end.
        let reach = nominal.duration_since(earliest).unwrap();
        assert!(reach >= window.mul_f64(0.998), "{reach:?}");
        // Evenly spread: each tenth of the window gets a tenth of the sweep.
        for (i, n) in buckets.iter().enumerate() {
            assert!((99..=101).contains(n), "bucket {i}: {n} {buckets:?}");
        }
    }

    #[test]
    fn configurable_fraction_scales_the_window() {
        let nb = t0();
        let na = nb + 30 * DAY;
        let nominal = na - 10 * DAY;
        let half = JitterPolicy::new(0.5).unwrap();
        let at = renewal_time(nb, na, None, half, 0.5);
        assert_eq!(nominal.duration_since(at).unwrap(), 10 * DAY / 4);
        for bad in [-0.1, 1.01, f64::NAN, f64::INFINITY] {
            let err = JitterPolicy::new(bad).unwrap_err();
            assert!(err.to_string().contains("jitter fraction"), "{err}");
        }
        JitterPolicy::new(0.0).unwrap();
        JitterPolicy::new(1.0).unwrap();
    }

    #[test]
    fn renewal_is_monotonic_in_the_random_number() {
        let nb = t0();
        let na = nb + 7 * DAY;
        let mut prev = na;
        for u in sweep() {
            let at = renewal_time(nb, na, Some(2 * DAY), JitterPolicy::new(1.0).unwrap(), u);
            assert!(at <= prev, "u={u}");
            prev = at;
        }
    }

    #[test]
    fn never_before_not_before() {
        let nb = t0();
        let na = nb + HOUR;
        // renew-before just under the lifetime plus full jitter would reach
        // far before not_before.
        let rb = HOUR - Duration::from_secs(1);
        for u in sweep() {
            let at = renewal_time(nb, na, Some(rb), JitterPolicy::new(1.0).unwrap(), u);
            assert!(at >= nb && at <= na - rb, "u={u}");
        }
        assert_eq!(
            renewal_time(nb, na, Some(rb), JitterPolicy::new(1.0).unwrap(), 0.999),
            nb
        );
    }

    #[test]
    fn degenerate_validity_means_renew_now() {
        let nb = t0();
        // not_after before not_before: the returned time is in the past
        // relative to both.
        assert_eq!(
            renewal_time(nb, nb - HOUR, None, JitterPolicy::default(), 0.3),
            nb - HOUR
        );
        assert_eq!(renewal_time(nb, nb, None, JitterPolicy::default(), 0.3), nb);
        // 1 ns lifetime: renew-before rounds to zero, renewal at expiry.
        let na = nb + Duration::from_nanos(1);
        assert_eq!(renewal_time(nb, na, None, JitterPolicy::default(), 0.9), na);
        // An already expired certificate renews at a time in the past.
        let expired = renewal_time(
            SystemTime::UNIX_EPOCH,
            SystemTime::UNIX_EPOCH + DAY,
            None,
            JitterPolicy::default(),
            0.5,
        );
        assert!(expired < SystemTime::now());
    }

    #[test]
    fn huge_lifetimes_and_bad_random_numbers_stay_in_bounds() {
        let nb = SystemTime::UNIX_EPOCH;
        let na = nb + Duration::from_secs(u64::MAX / 4);
        let lifetime = na.duration_since(nb).unwrap();
        for u in [0.0, 0.5, 0.999_999, 1.0, 7.0, -1.0, f64::NAN, f64::INFINITY] {
            let at = renewal_time(nb, na, None, JitterPolicy::new(1.0).unwrap(), u);
            assert!(at >= nb && at <= na - lifetime / 3, "u={u}");
        }
        let a = renewal_time(nb, na, None, JitterPolicy::default(), f64::NAN);
        assert_eq!(a, na - lifetime / 3, "NaN counts as no jitter");
    }

    #[test]
    fn backoff_doubles_from_base_to_max() {
        let base = Duration::from_secs(30);
        let max = Duration::from_secs(300);
        // With unit_random just below 1 the delay approaches the ceiling.
        let ceilings: Vec<u64> = (1..=6)
            .map(|a| backoff(a, base, max, 0.999_999).as_secs())
            .collect();
        assert_eq!(ceilings, [29, 59, 119, 239, 299, 299]);
        // With 0 it is half the ceiling.
        let floors: Vec<u64> = (1..=6)
            .map(|a| backoff(a, base, max, 0.0).as_secs())
            .collect();
        assert_eq!(floors, [15, 30, 60, 120, 150, 150]);
        assert_eq!(backoff(0, base, max, 0.0), backoff(1, base, max, 0.0));
    }

    #[test]
    fn backoff_bounds_monotonicity_and_overflow() {
        let base = Duration::from_secs(30);
        let max = Duration::from_secs(300);
        for u in sweep() {
            let mut prev = Duration::ZERO;
            for attempt in [0, 1, 2, 3, 4, 5, 6, 10, 31, 32, 33, 64, 1000, u32::MAX] {
                let d = backoff(attempt, base, max, u);
                assert!(d <= max && d >= base / 2, "attempt {attempt} u={u}: {d:?}");
                assert!(d >= prev, "attempt {attempt} u={u}: not monotonic");
                prev = d;
            }
        }
        // A huge base and max do not overflow.
        let d = backoff(u32::MAX, Duration::MAX, Duration::MAX, 0.5);
        assert!(d >= Duration::MAX / 2);
        // A zero base still waits at least MIN_BACKOFF.
        assert_eq!(backoff(3, Duration::ZERO, max, 0.5), MIN_BACKOFF);
        // Unless max itself is shorter.
        let tiny = Duration::from_millis(10);
        assert_eq!(backoff(9, base, tiny, 0.99), tiny);
    }

    #[test]
    fn backoff_jitter_covers_the_upper_half() {
        let base = Duration::from_secs(30);
        let max = Duration::from_secs(300);
        let delays: Vec<Duration> = sweep().map(|u| backoff(10, base, max, u)).collect();
        let lo = *delays.iter().min().unwrap();
        let hi = *delays.iter().max().unwrap();
        assert_eq!(lo, Duration::from_secs(150));
        assert!(hi > Duration::from_millis(299_500) && hi < max, "{hi:?}");
        assert!(delays.windows(2).all(|w| w[0] <= w[1]));
    }
}
