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

/// The largest share of a certificate's lifetime that an explicit
/// renew-before may claim. Beyond it the request is not "comfortably
/// smaller" than what the issuer gave, and the default (a third) applies:
/// a renew-before of 30 days on a certificate that an issuer capped at 30
/// days would otherwise renew at once, forever.
pub const MAX_RENEW_BEFORE_SHARE: f64 = 0.75;

/// Slack on [`MAX_RENEW_BEFORE_SHARE`]: X.509 times have whole seconds and
/// a certificate arrives a moment after it was signed, so the lifetime
/// received falls short of the duration asked for by up to a second or two.
/// Without it, a renew-before of exactly three quarters would never apply.
pub const RENEW_BEFORE_SLACK: Duration = Duration::from_secs(2);

/// Jitter never moves a renewal earlier than this share of the lifetime
/// after issuance (unless renew-before itself asks for earlier).
pub const JITTER_FLOOR_SHARE: f64 = 0.5;

/// The default `--min-renewal-interval`: no volume renews sooner than this
/// after its previous certificate arrived.
pub const DEFAULT_MIN_RENEWAL_INTERVAL: Duration = Duration::from_secs(60);

/// The longest the guard backs off a volume whose issuer keeps returning
/// certificates too short to renew normally.
pub const DEFAULT_MAX_GUARD_BACKOFF: Duration = Duration::from_secs(30 * 60);

/// A certificate as the node received it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Issued {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// When the node got it. Issuers backdate notBefore for clock skew
    /// (this project's by 60 s, Vault's by 30 s); the time before arrival
    /// is not life the volume can use, so the lifetime counts from here.
    pub received: SystemTime,
}

impl Issued {
    /// Where the usable lifetime starts: arrival, kept inside the validity.
    pub fn start(&self) -> SystemTime {
        if self.not_after <= self.not_before {
            return self.not_after;
        }
        self.received.clamp(self.not_before, self.not_after)
    }

    /// The usable lifetime: from [`Issued::start`] to notAfter.
    pub fn lifetime(&self) -> Duration {
        self.not_after
            .duration_since(self.start())
            .unwrap_or_default()
    }
}

/// The node's renewal rules (flags).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RenewalPolicy {
    pub jitter: JitterPolicy,
    /// No renewal sooner than this after the previous certificate arrived.
    pub min_interval: Duration,
    /// The guard's longest back-off.
    pub max_guard_backoff: Duration,
}

impl Default for RenewalPolicy {
    fn default() -> Self {
        RenewalPolicy {
            jitter: JitterPolicy::default(),
            min_interval: DEFAULT_MIN_RENEWAL_INTERVAL,
            max_guard_backoff: DEFAULT_MAX_GUARD_BACKOFF,
        }
    }
}

/// When a volume renews next, and whether the guard had to step in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub at: SystemTime,
    /// The renew-before that was applied (requested or the default).
    pub renew_before: Duration,
    /// Consecutive certificates so short that even their nominal renewal
    /// fell within the minimum interval; 0 when this one was normal.
    pub short_streak: u32,
}

impl Plan {
    /// True when the guard, not the certificate, set the time.
    pub fn guarded(&self) -> bool {
        self.short_streak > 0
    }
}

/// How long before expiry to renew a certificate with `lifetime` of usable
/// life: `requested` when it is positive and at most
/// [`MAX_RENEW_BEFORE_SHARE`] of the lifetime, else a third of the lifetime
/// (cert-manager's default, taken from what was issued, not what was asked).
pub fn renew_before(lifetime: Duration, requested: Option<Duration>) -> Duration {
    match requested {
        Some(r)
            if !r.is_zero()
                && r < lifetime
                && r <= scale(lifetime, MAX_RENEW_BEFORE_SHARE) + RENEW_BEFORE_SLACK =>
        {
            r
        }
        _ => lifetime / 3,
    }
}

/// When to renew `issued`.
///
/// - Nominally `notAfter − renew_before` (see [`renew_before`]).
/// - Jitter moves that earlier by up to `fraction × renew_before`
///   (`unit_random` in `[0, 1)` picks where), so volumes issued together
///   do not renew together; but never before half the lifetime, or before
///   the nominal time when renew-before itself asks for earlier.
/// - Never sooner than `min_interval` after arrival. When even the nominal
///   time is that soon, the issuer gave a certificate too short to renew
///   normally (a CA about to expire, an issuer handing out nearly expired
///   certificates): the guard waits `min_interval`, doubling with each such
///   certificate in a row (`short_streak` counts the ones before), up to
///   `max_guard_backoff`, with up to a tenth more at random. It never spins,
///   even if the certificate expires meanwhile.
pub fn plan(
    issued: &Issued,
    requested: Option<Duration>,
    policy: &RenewalPolicy,
    short_streak: u32,
    unit_random: f64,
) -> Plan {
    let before = renew_before(issued.lifetime(), requested);
    let nominal = issued.not_after - before.min(issued.lifetime());
    let at = jittered(
        issued.start(),
        issued.not_after,
        before,
        policy.jitter,
        unit_random,
    );

    // A zero interval would allow a renewal the instant a certificate
    // arrives; one second is the least any flag can mean.
    let min_interval = policy.min_interval.max(MIN_BACKOFF);
    let min_next = issued.received + min_interval;
    if nominal >= min_next {
        return Plan {
            at: at.max(min_next),
            renew_before: before,
            short_streak: 0,
        };
    }
    let streak = short_streak.saturating_add(1);
    let factor = 1u32.checked_shl((streak - 1).min(31)).unwrap_or(u32::MAX);
    let cap = policy.max_guard_backoff.max(min_interval);
    let wait = min_interval.saturating_mul(factor).min(cap);
    let wait = wait.saturating_add(scale(wait / 10, unit_random));
    Plan {
        at: issued.received + wait,
        renew_before: before,
        short_streak: streak,
    }
}

/// `not_after − before`, moved earlier by up to `jitter × before`
/// (`unit_random` in `[0, 1)` picks where), but never before half of the
/// life from `start`, or before the nominal time when `before` itself asks
/// for earlier than half. Shared by the node and the Certificate
/// controller.
pub fn jittered(
    start: SystemTime,
    not_after: SystemTime,
    before: Duration,
    jitter: JitterPolicy,
    unit_random: f64,
) -> SystemTime {
    let lifetime = not_after.duration_since(start).unwrap_or_default();
    let nominal = not_after.checked_sub(before.min(lifetime)).unwrap_or(start);
    let moved = nominal
        .checked_sub(scale(scale(before, jitter.fraction), unit_random))
        .unwrap_or(start);
    let floor = start
        .checked_add(scale(lifetime, JITTER_FLOOR_SHARE))
        .unwrap_or(not_after)
        .min(nominal);
    moved.max(floor)
}

/// Checks a renewal time saved by an earlier run (or an older version)
/// against today's floors: never sooner than the minimum interval after
/// arrival, and, unless the guard set it, never before a quarter of the
/// lifetime nor after expiry. A time within them is kept, so a restart
/// does not move a jittered schedule; any other gets a fresh [`plan`], so a
/// schedule saved under older rules cannot start a storm after a restart.
pub fn revalidate(
    saved: SystemTime,
    issued: &Issued,
    requested: Option<Duration>,
    policy: &RenewalPolicy,
    short_streak: u32,
    unit_random: f64,
) -> Plan {
    let min_next = issued.received + policy.min_interval.max(MIN_BACKOFF);
    let plausible = if short_streak > 0 {
        saved >= min_next
    } else {
        let quarter = (issued.start() + scale(issued.lifetime(), 1.0 - MAX_RENEW_BEFORE_SHARE))
            .checked_sub(RENEW_BEFORE_SLACK)
            .unwrap_or(issued.start());
        saved >= min_next && saved >= quarter && saved <= issued.not_after
    };
    if plausible {
        let before = renew_before(issued.lifetime(), requested);
        Plan {
            at: saved,
            renew_before: before,
            short_streak,
        }
    } else {
        plan(
            issued,
            requested,
            policy,
            short_streak.saturating_sub(1),
            unit_random,
        )
    }
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

    const MINUTE: Duration = Duration::from_secs(60);
    /// This project's signer backdates notBefore by a minute.
    const BACKDATE: Duration = Duration::from_secs(60);

    /// A certificate received at `t0()`, backdated, living `life` after it.
    fn issued(life: Duration) -> Issued {
        Issued {
            not_before: t0() - BACKDATE,
            not_after: t0() + life,
            received: t0(),
        }
    }

    fn policy(jitter: f64) -> RenewalPolicy {
        RenewalPolicy {
            jitter: JitterPolicy::new(jitter).unwrap(),
            ..RenewalPolicy::default()
        }
    }

    #[test]
    fn renew_before_uses_comfortable_requests_and_a_third_otherwise() {
        assert_eq!(renew_before(90 * DAY, Some(30 * DAY)), 30 * DAY);
        assert_eq!(renew_before(90 * DAY, None), 30 * DAY);
        assert_eq!(renew_before(90 * DAY, Some(Duration::ZERO)), 30 * DAY);
        // Up to three quarters of the lifetime is honoured, with a little
        // slack for a lifetime a second short of the duration asked ...
        assert_eq!(renew_before(4 * HOUR, Some(3 * HOUR)), 3 * HOUR);
        let short = 4 * HOUR - Duration::from_secs(1);
        assert_eq!(renew_before(short, Some(3 * HOUR)), 3 * HOUR);
        // ... beyond that, or equal to or longer than the lifetime, it
        // would renew at once or nearly so: fall back to a third.
        let just_over = 3 * HOUR + RENEW_BEFORE_SLACK + Duration::from_secs(1);
        assert_eq!(renew_before(4 * HOUR, Some(just_over)), 4 * HOUR / 3);
        assert_eq!(renew_before(90 * DAY, Some(90 * DAY)), 30 * DAY);
        assert_eq!(renew_before(90 * DAY, Some(91 * DAY)), 30 * DAY);
        assert_eq!(renew_before(Duration::ZERO, None), Duration::ZERO);
        assert_eq!(renew_before(Duration::MAX, None), Duration::MAX / 3);
    }

    #[test]
    fn the_lifetime_counts_from_arrival_not_from_the_backdate() {
        let c = issued(HOUR);
        assert_eq!(c.lifetime(), HOUR);
        assert_eq!(c.start(), t0());
        // Received before notBefore (clock skew the other way): the
        // validity starts at notBefore.
        let early = Issued {
            received: t0() - 2 * BACKDATE,
            ..c
        };
        assert_eq!(early.start(), c.not_before);
        // Received after expiry: no life left.
        let late = Issued {
            received: c.not_after + MINUTE,
            ..c
        };
        assert_eq!(late.lifetime(), Duration::ZERO);
    }

    #[test]
    fn without_jitter_renewal_is_exactly_nominal() {
        let c = issued(24 * HOUR);
        let p = plan(&c, None, &policy(0.0), 0, 0.99);
        assert_eq!(p.at, c.not_after - 8 * HOUR);
        assert_eq!(p.renew_before, 8 * HOUR);
        assert!(!p.guarded());
        let p = plan(&c, Some(HOUR), &policy(0.0), 0, 0.5);
        assert_eq!(p.at, c.not_after - HOUR);
    }

    /// The storm of issue 13: 90 days asked, renew-before a third of that,
    /// a CA with 30 days left caps the leaf. Before, renewal landed before
    /// arrival; now it is two thirds into the 30 days received.
    #[test]
    fn a_capped_certificate_renews_at_two_thirds_of_what_was_issued() {
        let c = issued(30 * DAY);
        for requested in [None, Some(30 * DAY), Some(30 * DAY - MINUTE)] {
            for u in sweep() {
                let p = plan(&c, requested, &RenewalPolicy::default(), 0, u);
                assert!(!p.guarded());
                assert_eq!(p.renew_before, 10 * DAY, "{requested:?}");
                let into = p.at.duration_since(t0()).unwrap();
                assert!(
                    into > 19 * DAY && into <= 20 * DAY,
                    "{requested:?} u={u}: {into:?}"
                );
            }
        }
    }

    #[test]
    fn jitter_stays_in_window_and_covers_it() {
        let c = issued(90 * DAY);
        let nominal = c.not_after - 30 * DAY;
        let window = 3 * DAY; // 10 % of 30 days
        let mut buckets = [0u32; 10];
        let mut earliest = nominal;
        for u in sweep() {
            let at = plan(&c, None, &RenewalPolicy::default(), 0, u).at;
            assert!(at <= nominal, "never later than renew-before asks");
            let early = nominal.duration_since(at).unwrap();
            assert!(early < window, "u={u}: {early:?} outside the window");
            buckets[(early.as_secs_f64() / window.as_secs_f64() * 10.0) as usize] += 1;
            earliest = earliest.min(at);
        }
        assert_eq!(
            plan(&c, None, &RenewalPolicy::default(), 0, 0.0).at,
            nominal
        );
        let reach = nominal.duration_since(earliest).unwrap();
        assert!(reach >= window.mul_f64(0.998), "{reach:?}");
        for (i, n) in buckets.iter().enumerate() {
            assert!((99..=101).contains(n), "bucket {i}: {n} {buckets:?}");
        }
    }

    #[test]
    fn jitter_never_reaches_before_half_the_lifetime() {
        let c = issued(30 * DAY);
        // Full jitter on the default third would reach a third in.
        let p = plan(&c, None, &policy(1.0), 0, 0.999);
        assert_eq!(p.at, t0() + 15 * DAY);
        // A renew-before that itself asks for earlier than half is honoured,
        // and jitter moves it no earlier.
        let p = plan(&c, Some(20 * DAY), &policy(1.0), 0, 0.999);
        assert_eq!(p.at, t0() + 10 * DAY);
    }

    #[test]
    fn configurable_fraction_scales_the_window() {
        let c = issued(30 * DAY);
        let nominal = c.not_after - 10 * DAY;
        let p = plan(&c, None, &policy(0.5), 0, 0.5);
        assert_eq!(nominal.duration_since(p.at).unwrap(), 10 * DAY / 4);
        for bad in [-0.1, 1.01, f64::NAN, f64::INFINITY] {
            let err = JitterPolicy::new(bad).unwrap_err();
            assert!(err.to_string().contains("jitter fraction"), "{err}");
        }
        JitterPolicy::new(0.0).unwrap();
        JitterPolicy::new(1.0).unwrap();
    }

    #[test]
    fn a_short_certificate_is_guarded_and_backs_off_exponentially() {
        let p = RenewalPolicy {
            jitter: JitterPolicy::none(),
            min_interval: MINUTE,
            max_guard_backoff: 10 * MINUTE,
        };
        // 30 s of life: even the nominal renewal is within a minute.
        let c = issued(Duration::from_secs(30));
        let waits: Vec<u64> = (0..7)
            .map(|streak| {
                let plan = plan(&c, None, &p, streak, 0.0);
                assert_eq!(plan.short_streak, streak + 1);
                plan.at.duration_since(t0()).unwrap().as_secs()
            })
            .collect();
        assert_eq!(waits, [60, 120, 240, 480, 600, 600, 600]);
        // Random spread adds at most a tenth.
        let spread = plan(&c, None, &p, 9, 0.999)
            .at
            .duration_since(t0())
            .unwrap();
        assert!(spread > 10 * MINUTE && spread < 11 * MINUTE, "{spread:?}");
        // An expired or inverted certificate is guarded too, never "now".
        let inverted = Issued {
            not_before: t0(),
            not_after: t0() - HOUR,
            received: t0(),
        };
        assert_eq!(plan(&inverted, None, &p, 0, 0.0).at, t0() + MINUTE);
        // A normal certificate resets the streak.
        let normal = plan(&issued(HOUR), None, &p, 5, 0.5);
        assert_eq!(normal.short_streak, 0);
        assert_eq!(normal.at, t0() + 40 * MINUTE);
    }

    #[test]
    fn the_minimum_interval_clamps_jitter_but_keeps_normal_certificates_unguarded() {
        let p = RenewalPolicy {
            jitter: JitterPolicy::new(1.0).unwrap(),
            min_interval: 50 * MINUTE,
            max_guard_backoff: HOUR,
        };
        // Nominal 60 min in, jitter would reach 40: the interval holds it at 50.
        let plan = plan(&issued(90 * MINUTE), None, &p, 3, 0.999);
        assert!(!plan.guarded());
        assert_eq!(plan.at, t0() + 50 * MINUTE);
    }

    #[test]
    fn revalidate_keeps_a_plausible_saved_time_and_replaces_others() {
        let c = issued(30 * DAY);
        let p = RenewalPolicy::default();
        let fresh = plan(&c, None, &p, 0, 0.37);
        assert_eq!(revalidate(fresh.at, &c, None, &p, 0, 0.9).at, fresh.at);
        // A time saved under the old rules, before arrival: replaced.
        let old = t0() - BACKDATE;
        let again = revalidate(old, &c, Some(30 * DAY), &p, 0, 0.0);
        assert_eq!(again.at, t0() + 20 * DAY);
        // A guarded time is recognised with its streak.
        let short = issued(Duration::from_secs(10));
        let guarded = plan(&short, None, &p, 2, 0.5);
        let kept = revalidate(guarded.at, &short, None, &p, guarded.short_streak, 0.1);
        assert_eq!(kept, guarded);
        // A guarded time saved too soon is re-planned with the same streak.
        let soon = revalidate(t0(), &short, None, &p, 3, 0.0);
        assert_eq!(soon.short_streak, 3);
        assert_eq!(soon.at, t0() + 4 * MINUTE);
    }

    #[test]
    fn huge_lifetimes_and_bad_random_numbers_stay_in_bounds() {
        let c = Issued {
            not_before: SystemTime::UNIX_EPOCH,
            not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(u64::MAX / 4),
            received: SystemTime::UNIX_EPOCH,
        };
        let lifetime = c.lifetime();
        for u in [0.0, 0.5, 0.999_999, 1.0, 7.0, -1.0, f64::NAN, f64::INFINITY] {
            let at = plan(&c, None, &policy(1.0), 0, u).at;
            assert!(
                at >= c.not_before + lifetime / 2 && at <= c.not_after - lifetime / 3,
                "u={u}"
            );
        }
        let a = plan(&c, None, &RenewalPolicy::default(), 0, f64::NAN).at;
        assert_eq!(a, c.not_after - lifetime / 3, "NaN counts as no jitter");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn secs(max: u64) -> impl Strategy<Value = Duration> {
            (0..=max).prop_map(Duration::from_secs)
        }

        fn certificate() -> impl Strategy<Value = (Issued, Option<Duration>)> {
            (
                secs(400 * 86_400), // lifetime after arrival
                secs(3_600),        // backdate
                secs(3_600),        // arrival after notBefore − backdate skew
                prop::option::of(secs(800 * 86_400)),
            )
                .prop_map(|(life, backdate, late, requested)| {
                    let received = t0();
                    let not_before = received - backdate + late.min(backdate);
                    (
                        Issued {
                            not_before,
                            not_after: received + life,
                            received,
                        },
                        requested,
                    )
                })
        }

        fn renewal_policy() -> impl Strategy<Value = RenewalPolicy> {
            (0.0..=1.0f64, secs(3_600), secs(86_400)).prop_map(|(j, min, max)| RenewalPolicy {
                jitter: JitterPolicy::new(j).unwrap(),
                min_interval: min,
                max_guard_backoff: max,
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(10_000))]

            /// No renewal time, for any certificate, request, jitter, streak
            /// or random number, comes before arrival plus the floor.
            #[test]
            fn never_before_the_floor(
                (c, requested) in certificate(),
                p in renewal_policy(),
                streak in 0u32..40,
                u in -0.5..1.5f64,
            ) {
                let plan = plan(&c, requested, &p, streak, u);
                let min_interval = p.min_interval.max(MIN_BACKOFF);
                prop_assert!(plan.at >= c.received + min_interval);
                if plan.guarded() {
                    prop_assert_eq!(plan.short_streak, streak + 1);
                    let cap = p.max_guard_backoff.max(min_interval);
                    prop_assert!(plan.at <= c.received + cap + cap / 10 + Duration::from_secs(1));
                } else {
                    let life = c.lifetime();
                    let start = c.start();
                    // Never later than nominal, never before a quarter of
                    // the lifetime, never before half unless asked.
                    let nominal = c.not_after - plan.renew_before;
                    prop_assert!(plan.at <= nominal.max(c.received + min_interval));
                    prop_assert!(plan.at + RENEW_BEFORE_SLACK + Duration::from_secs(1) >= start + life / 4);
                    let half = start + life / 2;
                    prop_assert!(plan.at >= half.min(nominal));
                    prop_assert!(plan.at <= c.not_after);
                }
            }

            /// Renewing again and again from an issuer that caps the lifetime
            /// at a fixed end (a CA about to expire) takes a logarithmic
            /// number of requests, never a storm.
            #[test]
            fn a_capped_issuer_never_storms(
                ca_left in secs(400 * 86_400),
                requested in prop::option::of(secs(800 * 86_400)),
                p in renewal_policy(),
                u in 0.0..1.0f64,
            ) {
                let ca_end = t0() + ca_left;
                let mut now = t0();
                let mut streak = 0;
                let mut requests = 0u32;
                // Follow the volume until the CA has expired.
                while now <= ca_end && requests < 10_000 {
                    let c = Issued { not_before: now - BACKDATE, not_after: ca_end, received: now };
                    let plan = plan(&c, requested, &p, streak, u);
                    prop_assert!(plan.at > now);
                    streak = plan.short_streak;
                    now = plan.at;
                    requests += 1;
                }
                // Each normal renewal uses at least a quarter of what is
                // left; below the interval the guard doubles.
                let bound = 4.0 * (ca_left.as_secs_f64() + 1.0).ln() / (4.0f64 / 3.0).ln() + 64.0;
                prop_assert!(f64::from(requests) <= bound, "{} requests", requests);
            }

            #[test]
            fn earlier_with_a_larger_random_number(
                (c, requested) in certificate(),
                p in renewal_policy(),
                a in 0.0..1.0f64,
                b in 0.0..1.0f64,
            ) {
                let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
                let x = plan(&c, requested, &p, 0, lo);
                let y = plan(&c, requested, &p, 0, hi);
                if !x.guarded() {
                    prop_assert!(y.at <= x.at);
                }
            }
        }
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
