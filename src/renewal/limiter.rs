//! The node-wide issuance limit: how many CertificateRequests may be in
//! flight at once, and how many new ones may be created per second.
//!
//! Every issuance, first or renewal, asks the [`Limiter`] for a [`Permit`]
//! and holds it until its request is decided. Waiters queue by priority: a
//! pod blocked in NodePublishVolume goes first, then renewals, closest to
//! expiry first. The queue sits in front of a token bucket (new requests per
//! second, with a burst) and a count of permits (requests in flight); one
//! dispatcher task hands out permits, so no waiter polls.
//!
//! The burst is for pods: tens of pods starting together are not held back,
//! while renewals take a token only when the bucket is full, so even a
//! renewal storm leaves the burst to the pods that come next and runs at the
//! rate, no faster.
//!
//! The ordering and the bucket arithmetic are pure and tested on their own.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use thiserror::Error;
use tokio::sync::{Notify, oneshot};

use crate::shutdown::CancellationToken;

/// Who is asking, which decides the order in which waiters are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// A first issuance: a pod is waiting in NodePublishVolume.
    Publish,
    /// A renewal of a certificate that expires at `not_after`.
    Renewal { not_after: SystemTime },
}

/// `Greater` when `a` is to be served before `b`; `seq` (arrival order)
/// breaks ties, first come first served.
pub fn serve_order(a: (Priority, u64), b: (Priority, u64)) -> Ordering {
    use Priority::*;
    let by_priority = match (a.0, b.0) {
        (Publish, Renewal { .. }) => Ordering::Greater,
        (Renewal { .. }, Publish) => Ordering::Less,
        (Publish, Publish) => Ordering::Equal,
        // The earlier expiry is the more urgent one.
        (Renewal { not_after: x }, Renewal { not_after: y }) => y.cmp(&x),
    };
    by_priority.then_with(|| b.1.cmp(&a.1))
}

use crate::ratelimit::TokenBucket;

/// New requests per second: finite and greater than zero.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestRate(f64);

#[derive(Debug, Clone, PartialEq, Error)]
#[error(
    "--max-request-rate {value}: must be a number of requests per second greater than 0 \
     and at most 1000000 (e.g. 10 or 0.5)"
)]
pub struct InvalidRate {
    pub value: f64,
}

impl RequestRate {
    pub fn new(per_second: f64) -> Result<Self, InvalidRate> {
        if per_second.is_finite() && per_second > 0.0 && per_second <= 1_000_000.0 {
            Ok(RequestRate(per_second))
        } else {
            Err(InvalidRate { value: per_second })
        }
    }

    pub fn per_second(&self) -> f64 {
        self.0
    }
}

/// Settings of the limiter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimiterConfig {
    /// Requests created and not yet decided, node-wide (at least 1).
    pub max_inflight: usize,
    pub rate: RequestRate,
    /// New requests pods may make at once, beyond the rate (at least 1).
    /// Renewals never use it.
    pub burst: u32,
}

/// The default burst: a node of 30 pods restarting together (the kubelet's
/// default is at most 110 pods; 30 is typical) gets all its certificates at
/// once, and a storm of renewals still runs at the rate.
pub const DEFAULT_BURST: u32 = 32;

impl Default for LimiterConfig {
    fn default() -> Self {
        LimiterConfig {
            max_inflight: 32,
            rate: RequestRate(10.0),
            burst: DEFAULT_BURST,
        }
    }
}

struct Waiter {
    priority: Priority,
    seq: u64,
    /// Creating a request takes a token; resuming one already created only
    /// counts as in flight.
    new_request: bool,
    tx: oneshot::Sender<Permit>,
}

impl PartialEq for Waiter {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Waiter {}
impl PartialOrd for Waiter {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Waiter {
    fn cmp(&self, other: &Self) -> Ordering {
        serve_order((self.priority, self.seq), (other.priority, other.seq))
    }
}

struct State {
    queue: BinaryHeap<Waiter>,
    inflight: usize,
    bucket: TokenBucket,
    /// The bucket's size; renewals leave all but one token of it to pods.
    burst: u32,
    seq: u64,
    granted_new: u64,
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Notify,
    max_inflight: usize,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The node-wide limiter; clones share one queue.
#[derive(Clone)]
pub struct Limiter {
    shared: Arc<Shared>,
}

/// Held while a request is in flight; dropping it frees the slot.
pub struct Permit {
    shared: Arc<Shared>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.shared.lock().inflight -= 1;
        self.shared.wake.notify_one();
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Permit")
    }
}

/// The limiter stopped (shutdown) before the waiter was served.
#[derive(Debug, Error)]
#[error("the node is shutting down; the issuance limiter no longer grants requests")]
pub struct LimiterClosed;

impl Limiter {
    /// Starts the dispatcher; it stops with `shutdown`.
    pub fn spawn(config: LimiterConfig, shutdown: CancellationToken) -> Limiter {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: BinaryHeap::new(),
                inflight: 0,
                bucket: TokenBucket::new(
                    config.burst,
                    config.rate.per_second(),
                    tokio::time::Instant::now().into_std(),
                ),
                burst: config.burst.max(1),
                seq: 0,
                granted_new: 0,
                closed: false,
            }),
            wake: Notify::new(),
            max_inflight: config.max_inflight.max(1),
        });
        tokio::spawn(dispatch(shared.clone(), shutdown));
        Limiter { shared }
    }

    /// Waits for a permit. `new_request` is false when resuming a request
    /// that already exists, which takes no token. Dropping the future leaves
    /// the queue.
    pub async fn acquire(
        &self,
        priority: Priority,
        new_request: bool,
    ) -> Result<Permit, LimiterClosed> {
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.shared.lock();
            if state.closed {
                return Err(LimiterClosed);
            }
            state.seq += 1;
            let seq = state.seq;
            state.queue.push(Waiter {
                priority,
                seq,
                new_request,
                tx,
            });
        }
        self.shared.wake.notify_one();
        rx.await.map_err(|_| LimiterClosed)
    }

    /// Waiters queued and permits held, for metrics and tests.
    pub fn load(&self) -> (usize, usize) {
        let state = self.shared.lock();
        (state.queue.len(), state.inflight)
    }

    /// Permits granted to new requests so far.
    pub fn granted_new(&self) -> u64 {
        self.shared.lock().granted_new
    }
}

async fn dispatch(shared: Arc<Shared>, shutdown: CancellationToken) {
    loop {
        let wait = serve_ready(&shared);
        let sleep = async {
            match wait {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = shared.wake.notified() => {}
            _ = sleep => {}
        }
    }
    // Waiters see LimiterClosed once their senders are dropped.
    let mut state = shared.lock();
    state.closed = true;
    state.queue.clear();
}

/// Grants to as many queued waiters as the limits allow. Returns how long
/// until the bucket has a token, when that is what the head waits for.
fn serve_ready(shared: &Arc<Shared>) -> Option<Duration> {
    let mut state = shared.lock();
    loop {
        let head = state.queue.peek()?;
        if head.tx.is_closed() {
            state.queue.pop();
            continue;
        }
        if state.inflight >= shared.max_inflight {
            return None;
        }
        let reserve = match head.priority {
            Priority::Publish => 0,
            Priority::Renewal { .. } => state.burst - 1,
        };
        if head.new_request
            // tokio's clock, so tests with paused time stay consistent.
            && let Err(wait) = state
                .bucket
                .try_take_above(tokio::time::Instant::now().into_std(), reserve)
        {
            return Some(wait);
        }
        let waiter = state.queue.pop().expect("peeked");
        state.inflight += 1;
        if waiter.new_request {
            state.granted_new += 1;
        }
        let permit = Permit {
            shared: shared.clone(),
        };
        // A waiter that left between the check and the send drops the
        // permit here, which would lock `state` again: release it first.
        drop(state);
        let _ = waiter.tx.send(permit);
        state = shared.lock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn publishes_first_then_earliest_expiry_then_arrival() {
        let renew = |s| Priority::Renewal { not_after: at(s) };
        let mut items = vec![
            (renew(300), 1),
            (Priority::Publish, 5),
            (renew(100), 2),
            (renew(100), 3),
            (Priority::Publish, 4),
            (renew(200), 0),
        ];
        // Sorted by "served first" descending.
        items.sort_by(|a, b| serve_order(*b, *a));
        let seqs: Vec<u64> = items.iter().map(|i| i.1).collect();
        assert_eq!(seqs, [4, 5, 2, 3, 0, 1]);
        // The order is a total order: antisymmetric on every pair.
        for a in &items {
            for b in &items {
                assert_eq!(serve_order(*a, *b), serve_order(*b, *a).reverse());
            }
        }
    }

    #[test]
    fn bucket_spaces_grants_by_the_interval() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(1, 4.0, t0);
        assert_eq!(bucket.try_take_above(t0, 0), Ok(()));
        assert_eq!(
            bucket.try_take_above(t0, 0),
            Err(Duration::from_millis(250))
        );
        assert_eq!(
            bucket.try_take_above(t0 + Duration::from_millis(100), 0),
            Err(Duration::from_millis(150))
        );
        assert_eq!(
            bucket.try_take_above(t0 + Duration::from_millis(250), 0),
            Ok(())
        );
        // A bucket of one does not save up a burst while idle.
        assert!(bucket.try_take(t0 + Duration::from_secs(10)));
        assert!(!bucket.try_take(t0 + Duration::from_secs(10)));
    }

    #[test]
    fn bucket_never_exceeds_the_rate_in_any_second() {
        // Greedy takes at 1 ms steps for 5 s: count grants in every
        // half-open one-second window.
        for rate in [0.5, 1.0, 3.0, 10.0, 250.0] {
            let t0 = Instant::now();
            let mut bucket = TokenBucket::new(1, rate, t0);
            let mut grants = Vec::new();
            for ms in 0..5000u64 {
                let now = t0 + Duration::from_millis(ms);
                if bucket.try_take(now) {
                    grants.push(ms);
                }
            }
            let cap = rate.ceil() as usize;
            for (i, start) in grants.iter().enumerate() {
                let in_window = grants[i..]
                    .iter()
                    .take_while(|g| **g < start + 1000)
                    .count();
                assert!(
                    in_window <= cap,
                    "rate {rate}: {in_window} grants from {start} ms"
                );
            }
            // And it does grant: close to rate × 5 s.
            let expect = (rate * 5.0).ceil() as usize;
            assert!(grants.len() + 1 >= expect, "rate {rate}: {}", grants.len());
        }
    }

    /// Tens of pods starting together are served at once from the burst,
    /// while a storm of renewals queued before them keeps to the rate and
    /// never touches the burst.
    #[tokio::test(start_paused = true)]
    async fn pods_use_the_burst_and_renewals_keep_the_rate() {
        let limiter = Limiter::spawn(
            LimiterConfig {
                max_inflight: 1000,
                rate: RequestRate::new(10.0).unwrap(),
                burst: 32,
            },
            CancellationToken::new(),
        );
        let start = tokio::time::Instant::now();
        let mut renewals = Vec::new();
        for i in 0..50 {
            let limiter = limiter.clone();
            renewals.push(tokio::spawn(async move {
                let permit = limiter
                    .acquire(Priority::Renewal { not_after: at(i) }, true)
                    .await
                    .unwrap();
                (tokio::time::Instant::now() - start, permit)
            }));
        }
        // Half a second into the storm, 30 pods arrive together.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let arrived = tokio::time::Instant::now();
        let mut pods = Vec::new();
        for _ in 0..30 {
            pods.push(limiter.acquire(Priority::Publish, true).await.unwrap());
        }
        assert_eq!(
            tokio::time::Instant::now(),
            arrived,
            "no pod waited for a token"
        );
        let mut granted = Vec::new();
        for r in renewals {
            granted.push(r.await.unwrap().0);
        }
        granted.sort();
        // Renewals never go faster than the rate: one per 100 ms at most...
        for pair in granted.windows(2) {
            assert!(
                pair[1] - pair[0] >= Duration::from_millis(99),
                "renewals {:?} and {:?} too close",
                pair[0],
                pair[1]
            );
        }
        // ...five went before the pods came, and the pods' burst is paid
        // back before the storm goes on: 30 tokens at 10 per second.
        assert_eq!(
            granted
                .iter()
                .filter(|t| **t < Duration::from_millis(500))
                .count(),
            5
        );
        assert!(
            granted[5] >= Duration::from_millis(3500),
            "{:?}",
            granted[5]
        );
        assert_eq!(limiter.granted_new(), 80);
        drop(pods);
    }

    #[test]
    fn rates_are_validated() {
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 2e6] {
            let err = RequestRate::new(bad).unwrap_err();
            assert!(err.to_string().contains("--max-request-rate"), "{err}");
        }
        assert_eq!(RequestRate::new(0.5).unwrap().per_second(), 0.5);
    }

    #[tokio::test(start_paused = true)]
    async fn inflight_is_capped_and_publishes_jump_the_queue() {
        let limiter = Limiter::spawn(
            LimiterConfig {
                max_inflight: 2,
                rate: RequestRate::new(1000.0).unwrap(),
                burst: 1,
            },
            CancellationToken::new(),
        );
        let a = limiter.acquire(Priority::Publish, true).await.unwrap();
        let b = limiter
            .acquire(Priority::Renewal { not_after: at(10) }, true)
            .await
            .unwrap();
        // Both slots taken: queue a late renewal, an urgent one, and a publish.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for (name, priority) in [
            ("late", Priority::Renewal { not_after: at(50) }),
            ("urgent", Priority::Renewal { not_after: at(20) }),
            ("publish", Priority::Publish),
        ] {
            let limiter = limiter.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let permit = limiter.acquire(priority, true).await.unwrap();
                tx.send((name, permit)).unwrap();
            });
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(rx.try_recv().is_err(), "no slot is free yet");
        assert_eq!(limiter.load(), (3, 2));
        drop(a);
        let (first, p1) = rx.recv().await.unwrap();
        assert_eq!(first, "publish");
        assert!(rx.try_recv().is_err(), "still capped at two");
        drop(b);
        let (second, p2) = rx.recv().await.unwrap();
        assert_eq!(second, "urgent");
        drop(p1);
        assert_eq!(rx.recv().await.unwrap().0, "late");
        drop(p2);
        assert_eq!(limiter.granted_new(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn resumes_take_no_token_and_abandoned_waiters_free_their_turn() {
        let limiter = Limiter::spawn(
            LimiterConfig {
                max_inflight: 8,
                rate: RequestRate::new(1.0).unwrap(),
                burst: 1,
            },
            CancellationToken::new(),
        );
        let start = tokio::time::Instant::now();
        let _first = limiter.acquire(Priority::Publish, true).await.unwrap();
        // The next new request waits a second; a resume does not.
        let _resume = limiter.acquire(Priority::Publish, false).await.unwrap();
        assert!(start.elapsed() < Duration::from_millis(5));
        // A waiter that gives up leaves the queue without holding a slot.
        let gave_up = tokio::time::timeout(
            Duration::from_millis(100),
            limiter.acquire(Priority::Publish, true),
        )
        .await;
        assert!(gave_up.is_err());
        let _second = limiter.acquire(Priority::Publish, true).await.unwrap();
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_secs(1) && waited < Duration::from_millis(1100),
            "{waited:?}"
        );
        assert_eq!(limiter.load(), (0, 3));
    }

    #[tokio::test]
    async fn shutdown_fails_waiters() {
        let shutdown = CancellationToken::new();
        let limiter = Limiter::spawn(
            LimiterConfig {
                max_inflight: 1,
                rate: RequestRate::new(1000.0).unwrap(),
                burst: 1,
            },
            shutdown.clone(),
        );
        let _held = limiter.acquire(Priority::Publish, true).await.unwrap();
        let waiting = tokio::spawn({
            let limiter = limiter.clone();
            async move { limiter.acquire(Priority::Publish, true).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        shutdown.cancel();
        assert!(waiting.await.unwrap().is_err());
    }
}
