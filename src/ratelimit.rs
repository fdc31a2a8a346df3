//! One token bucket for every rate limit in cert-csi: the node's new
//! requests per second (`renewal::limiter`) and the Event writes
//! (`telemetry::events`).
//!
//! It is pure, and the caller supplies the clock, so tests step time
//! instead of sleeping. It is written here rather than taken from a crate
//! such as governor because the issuance limiter needs a reserve (renewals
//! may take a token only while the bucket holds more than the share kept
//! for waiting pods), which those crates do not offer.

use std::time::{Duration, Instant};

/// `burst` tokens, refilled at `per_second`; a full bucket to start with.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    capacity: f64,
    tokens: f64,
    per_second: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(burst: u32, per_second: f64, now: Instant) -> Self {
        let capacity = f64::from(burst.max(1));
        Self {
            capacity,
            tokens: capacity,
            per_second: per_second.max(0.0),
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.last = self.last.max(now);
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.try_take_above(now, 0).is_ok()
    }

    /// Takes one token only if `reserve` tokens stay behind; otherwise says
    /// how long until that is so (`Duration::MAX` when it never will be: the
    /// reserve is the whole bucket, or nothing refills it).
    pub fn try_take_above(&mut self, now: Instant, reserve: u32) -> Result<(), Duration> {
        self.refill(now);
        let needed = 1.0 + f64::from(reserve);
        if self.tokens >= needed {
            self.tokens -= 1.0;
            return Ok(());
        }
        if needed > self.capacity || self.per_second <= 0.0 {
            return Err(Duration::MAX);
        }
        // Rounded up to a whole microsecond, so the caller that sleeps
        // this long finds the token there.
        let secs = (needed - self.tokens) / self.per_second;
        Err(Duration::from_micros((secs * 1e6).ceil() as u64).max(Duration::from_micros(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(3, 2.0, t0);
        assert!((0..3).all(|_| bucket.try_take(t0)));
        assert!(!bucket.try_take(t0));
        assert_eq!(
            bucket.try_take_above(t0, 0),
            Err(Duration::from_millis(500))
        );
        let t1 = t0 + Duration::from_millis(500);
        assert!(bucket.try_take(t1));
        assert!(!bucket.try_take(t1));
        // An idle bucket fills up to its burst, no further.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| bucket.try_take(t2)).count(), 3);
    }

    #[test]
    fn a_reserve_is_left_for_others() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(5, 10.0, t0);
        // Takers above a reserve of 4 get one token from a full bucket...
        assert_eq!(bucket.try_take_above(t0, 4), Ok(()));
        // ...then wait for it to refill to five: 100 ms.
        assert_eq!(
            bucket.try_take_above(t0, 4),
            Err(Duration::from_millis(100))
        );
        // The reserve is still there for those who may use it.
        assert!((0..4).all(|_| bucket.try_take(t0)));
        assert!(!bucket.try_take(t0));
        // A reserve as large as the bucket is never satisfied.
        assert_eq!(bucket.try_take_above(t0, 5), Err(Duration::MAX));
    }

    #[test]
    fn time_going_backwards_takes_nothing_away() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut bucket = TokenBucket::new(1, 1.0, t0);
        assert!(bucket.try_take(t0));
        assert!(!bucket.try_take(t0 - Duration::from_secs(5)));
        assert!(bucket.try_take(t0 + Duration::from_secs(1)));
    }
}
