//! RSA keys made ahead of need, so that a pod asking for RSA (the default
//! key of cert-manager's csi-driver) does not wait 50–100 ms for its key.
//!
//! - Only first publishes take from the pool; renewals are in no hurry and
//!   make their own key, so a renewal storm cannot drain what pods wait for.
//! - Each key leaves the pool by move: it is handed out once, and the pool
//!   keeps no copy. Keys live in memory only, and are dropped (zeroed)
//!   unused once older than `max_age`.
//! - The pool is filled by demand: nothing is made for a size until a
//!   publish asks for it, and a size nobody asked for in `max_age` is let
//!   run dry. A node without RSA volumes spends nothing on it.
//! - One background thread refills, at nice 19: it yields the CPU to
//!   publishes and to the node's workloads. While a shelf still has keys it
//!   waits for [`REFILL_QUIET`] without a take first, so it does not make
//!   keys on the core that a publish in flight (the node, the API server,
//!   the signer) needs; an empty shelf is refilled at once.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::pki::{KeyAlgorithm, PrivateKey};
use crate::sync::lock;
use crate::telemetry::NodeMetrics;

/// The RSA sizes the pool serves: those aws-lc makes itself and that take
/// long enough to be worth keeping ready. 8192-bit keys take seconds each
/// and are left out; other sizes are rare and made on demand.
pub const POOLED_RSA_BITS: [u32; 3] = [2048, 3072, 4096];

/// How long after the last take a shelf that still has keys waits before
/// it is topped up: a publish is over in a few milliseconds, and a burst
/// of pods is served from what is ready.
pub const REFILL_QUIET: Duration = Duration::from_millis(100);

/// `--rsa-key-pool-size` and `--rsa-key-pool-max-age`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyPoolConfig {
    /// Keys kept ready per RSA size in use; 0 turns the pool off.
    pub size: usize,
    /// The longest a key waits in the pool before it is dropped unused,
    /// and how long a size stays in use after the last publish asked for it.
    pub max_age: Duration,
}

impl Default for KeyPoolConfig {
    fn default() -> Self {
        KeyPoolConfig {
            size: 8,
            max_age: Duration::from_secs(3600),
        }
    }
}

/// A handle on the pool; clones share it. The refill thread stops when the
/// last handle is dropped.
#[derive(Clone)]
pub struct KeyPool {
    inner: Option<Arc<Inner>>,
    _stop: Option<Arc<StopOnDrop>>,
}

struct Inner {
    config: KeyPoolConfig,
    state: Mutex<PoolState>,
    wake: Condvar,
    /// Swapped for the served registry's by `VolumeManager::with_telemetry`.
    metrics: Mutex<NodeMetrics>,
}

struct StopOnDrop(Arc<Inner>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        lock(&self.0.state).stopped = true;
        self.0.wake.notify_all();
    }
}

/// One RSA size's keys, oldest first, and when a publish last asked for one.
#[derive(Default)]
struct Shelf {
    keys: VecDeque<(Instant, PrivateKey)>,
    asked: Option<Instant>,
}

impl Shelf {
    /// How much longer a short shelf waits before it is topped up.
    fn quiet_left(&self, now: Instant) -> Option<Duration> {
        if self.keys.is_empty() {
            return None;
        }
        let since = now.saturating_duration_since(self.asked?);
        REFILL_QUIET.checked_sub(since).filter(|d| !d.is_zero())
    }
}

#[derive(Default)]
struct PoolState {
    shelves: [Shelf; POOLED_RSA_BITS.len()],
    stopped: bool,
    refilling: bool,
    /// Keys made so far (for tests).
    made: u64,
}

/// What the refill thread does next.
#[derive(Debug, PartialEq, Eq)]
enum Work {
    /// Make one key of this many bits.
    Make(u32),
    /// Nothing to make; look again after this long (or when woken).
    Wait(Duration),
}

impl PoolState {
    /// Drops keys older than `max_age`; returns how many went.
    fn prune(&mut self, now: Instant, max_age: Duration) -> usize {
        let mut dropped = 0;
        for shelf in &mut self.shelves {
            while shelf
                .keys
                .front()
                .is_some_and(|(made, _)| now.saturating_duration_since(*made) >= max_age)
            {
                shelf.keys.pop_front();
                dropped += 1;
            }
        }
        dropped
    }

    /// The next key to make: the first size in use whose shelf is short;
    /// otherwise how long until a key expires or a size falls out of use.
    fn next_work(&self, now: Instant, config: KeyPoolConfig) -> Work {
        let mut wait = config.max_age;
        for (bits, shelf) in POOLED_RSA_BITS.iter().zip(&self.shelves) {
            let Some(asked) = shelf.asked else { continue };
            let idle = now.saturating_duration_since(asked);
            if idle >= config.max_age {
                continue;
            }
            if shelf.keys.len() < config.size {
                match shelf.quiet_left(now) {
                    None => return Work::Make(*bits),
                    Some(left) => {
                        wait = wait.min(left);
                        continue;
                    }
                }
            }
            wait = wait.min(config.max_age - idle);
            if let Some((made, _)) = shelf.keys.front() {
                wait = wait.min(config.max_age.saturating_sub(now - *made));
            }
        }
        Work::Wait(wait.max(Duration::from_millis(1)))
    }
}

fn shelf_index(algorithm: KeyAlgorithm) -> Option<usize> {
    match algorithm {
        KeyAlgorithm::Rsa { bits } => POOLED_RSA_BITS.iter().position(|b| *b == bits),
        _ => None,
    }
}

impl KeyPool {
    pub fn new(config: KeyPoolConfig, metrics: NodeMetrics) -> KeyPool {
        if config.size == 0 {
            return KeyPool {
                inner: None,
                _stop: None,
            };
        }
        let inner = Arc::new(Inner {
            config,
            state: Mutex::default(),
            wake: Condvar::new(),
            metrics: Mutex::new(metrics),
        });
        KeyPool {
            _stop: Some(Arc::new(StopOnDrop(inner.clone()))),
            inner: Some(inner),
        }
    }

    /// Counts hits, misses and depth in `metrics` from now on.
    pub fn use_metrics(&self, metrics: NodeMetrics) {
        if let Some(inner) = &self.inner {
            *lock(&inner.metrics) = metrics;
        }
    }

    /// A ready key of `algorithm`, if the pool has one. `None` for sizes it
    /// does not serve, when it is off, and when it is empty; the caller
    /// then makes a key itself. Asking marks the size as in use, so the
    /// pool fills up for the next publish.
    pub fn take(&self, algorithm: KeyAlgorithm) -> Option<PrivateKey> {
        let inner = self.inner.as_ref()?;
        let index = shelf_index(algorithm)?;
        let bits = POOLED_RSA_BITS[index];
        let now = Instant::now();
        let mut state = lock(&inner.state);
        state.prune(now, inner.config.max_age);
        let shelf = &mut state.shelves[index];
        shelf.asked = Some(now);
        let key = shelf.keys.pop_front().map(|(_, key)| key);
        let depth = shelf.keys.len();
        let start_refill = !state.refilling;
        state.refilling = true;
        drop(state);
        {
            let metrics = lock(&inner.metrics);
            metrics.key_pool_taken(bits, key.is_some());
            metrics.key_pool_depth(bits, depth);
        }
        if start_refill {
            spawn_refill(inner.clone());
        } else {
            inner.wake.notify_all();
        }
        key
    }

    /// Keys ready now for `bits`.
    #[cfg(test)]
    pub fn depth(&self, bits: u32) -> usize {
        let (Some(inner), Some(index)) = (&self.inner, shelf_index(KeyAlgorithm::Rsa { bits }))
        else {
            return 0;
        };
        lock(&inner.state).shelves[index].keys.len()
    }
}

/// Starts the refill thread, at the lowest nice value.
fn spawn_refill(inner: Arc<Inner>) {
    let spawned = std::thread::Builder::new()
        .name("rsa-key-pool".into())
        .spawn(move || {
            lower_priority();
            refill(&inner);
        });
    if let Err(e) = spawned {
        // Publishes still work, each making its own key.
        tracing::warn!(error = %e, "cannot start the RSA key pool's thread; keys are made on demand");
    }
}

/// Nice 19 for the calling thread only (on Linux a thread id names one
/// thread to setpriority). Not `SCHED_IDLE`: on a node kept busy by its
/// workloads that could starve the pool for good, where nice 19 still
/// gets a small share.
fn lower_priority() {
    // SAFETY: plain system calls with integer arguments.
    let rc = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19)
    };
    if rc != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "cannot lower the RSA key pool thread's priority; it runs at normal priority"
        );
    }
}

fn refill(inner: &Inner) {
    let config = inner.config;
    let mut state = lock(&inner.state);
    loop {
        if state.stopped {
            return;
        }
        let now = Instant::now();
        if state.prune(now, config.max_age) > 0 {
            report_depths(inner, &state);
        }
        match state.next_work(now, config) {
            Work::Wait(wait) => {
                state = inner
                    .wake
                    .wait_timeout(state, wait)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            Work::Make(bits) => {
                drop(state);
                let made = PrivateKey::generate(KeyAlgorithm::Rsa { bits });
                state = lock(&inner.state);
                match made {
                    Ok(key) => {
                        state.made += 1;
                        let index = POOLED_RSA_BITS.iter().position(|b| *b == bits);
                        if let Some(shelf) = index.map(|i| &mut state.shelves[i])
                            && shelf.keys.len() < config.size
                        {
                            shelf.keys.push_back((Instant::now(), key));
                        }
                        report_depths(inner, &state);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, bits, "the RSA key pool cannot make a key; keys are made on demand");
                        return;
                    }
                }
            }
        }
    }
}

fn report_depths(inner: &Inner, state: &PoolState) {
    let metrics = lock(&inner.metrics);
    for (bits, shelf) in POOLED_RSA_BITS.iter().zip(&state.shelves) {
        if shelf.asked.is_some() {
            metrics.key_pool_depth(*bits, shelf.keys.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn pool(size: usize, max_age: Duration) -> KeyPool {
        KeyPool::new(
            KeyPoolConfig { size, max_age },
            NodeMetrics::register(&mut prometheus_client::registry::Registry::default()),
        )
    }

    fn wait_for_depth(pool: &KeyPool, bits: u32, want: usize) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while pool.depth(bits) != want {
            assert!(
                Instant::now() < deadline,
                "the pool of RSA {bits} never reached {want} keys (has {})",
                pool.depth(bits)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    const RSA2048: KeyAlgorithm = KeyAlgorithm::Rsa { bits: 2048 };

    #[test]
    fn nothing_is_made_before_a_size_is_asked_for() {
        let pool = pool(2, Duration::from_secs(60));
        assert_eq!(pool.depth(2048), 0);
        // Not pooled: no shelf, no demand, no thread.
        assert!(
            pool.take(KeyAlgorithm::Ecdsa(crate::pki::Curve::P256))
                .is_none()
        );
        assert!(pool.take(KeyAlgorithm::Rsa { bits: 2049 }).is_none());
        let state = lock(&pool.inner.as_ref().unwrap().state);
        assert!(!state.refilling);
        assert!(state.shelves.iter().all(|s| s.asked.is_none()));
    }

    #[test]
    fn a_pool_of_size_zero_is_off() {
        let pool = pool(0, Duration::from_secs(60));
        assert!(pool.take(RSA2048).is_none());
        assert!(pool.inner.is_none());
    }

    /// Every key handed out is a different key, with many threads taking at
    /// once while the refill thread adds more.
    #[test]
    fn no_key_is_handed_out_twice_under_concurrent_takes() {
        let pool = pool(4, Duration::from_secs(60));
        assert!(pool.take(RSA2048).is_none(), "a fresh pool is empty");
        wait_for_depth(&pool, 2048, 4);
        let taken: Vec<Vec<u8>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..6)
                .map(|_| {
                    let pool = pool.clone();
                    scope.spawn(move || {
                        (0..3)
                            .filter_map(|_| pool.take(RSA2048))
                            .map(|k| k.public_key_der().to_vec())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        assert!(
            taken.len() >= 4,
            "the four ready keys were taken: {}",
            taken.len()
        );
        let distinct: HashSet<_> = taken.iter().collect();
        assert_eq!(distinct.len(), taken.len(), "a key was handed out twice");
        // It fills up again for the next publishes.
        wait_for_depth(&pool, 2048, 4);
    }

    #[test]
    fn keys_and_demand_expire_after_max_age() {
        let max_age = Duration::from_millis(300);
        let now = Instant::now();
        let config = KeyPoolConfig { size: 2, max_age };
        let mut state = PoolState::default();
        assert_eq!(state.next_work(now, config), Work::Wait(max_age));
        state.shelves[0].asked = Some(now);
        assert_eq!(state.next_work(now, config), Work::Make(2048));
        let key = || PrivateKey::generate(KeyAlgorithm::Ecdsa(crate::pki::Curve::P256)).unwrap();
        state.shelves[0].keys.push_back((now, key()));
        // Short but not empty, just after a take: wait for quiet first...
        assert_eq!(state.next_work(now, config), Work::Wait(REFILL_QUIET));
        // ...and top up once it is quiet.
        assert_eq!(
            state.next_work(now + REFILL_QUIET, config),
            Work::Make(2048)
        );
        state.shelves[0]
            .keys
            .push_back((now + Duration::from_millis(100), key()));
        // Full: wait until the oldest key expires.
        let later = now + Duration::from_millis(50);
        assert_eq!(
            state.next_work(later, config),
            Work::Wait(Duration::from_millis(250))
        );
        // The oldest goes at exactly max_age; then one is short again.
        assert_eq!(state.prune(now + max_age, max_age), 1);
        assert_eq!(state.shelves[0].keys.len(), 1);
        // Nobody asked within max_age: the size is no longer in use, and
        // nothing is made for it even though its shelf is short.
        assert_eq!(state.next_work(now + max_age, config), Work::Wait(max_age));
    }

    #[test]
    fn an_unused_pool_runs_dry_after_max_age() {
        let pool = pool(2, Duration::from_secs(5));
        assert!(pool.take(RSA2048).is_none());
        let inner = pool.inner.clone().unwrap();
        let made = || lock(&inner.state).made;
        let deadline = Instant::now() + Duration::from_secs(120);
        while made() == 0 {
            assert!(Instant::now() < deadline, "no key was made after a miss");
            std::thread::sleep(Duration::from_millis(20));
        }
        // The keys expire unused, and none is made again once nobody has
        // asked for max_age: the depth reaches zero and stays there.
        wait_for_depth(&pool, 2048, 0);
        let after = made();
        let state = lock(&inner.state);
        let asked = state.shelves[0].asked.unwrap();
        assert!(asked.elapsed() >= Duration::from_secs(5));
        assert_eq!(
            state.next_work(Instant::now(), inner.config),
            Work::Wait(Duration::from_secs(5)),
            "made {after} keys, and would make more"
        );
    }
}
