//! A reconcile loop that starts work the moment a watch event arrives.
//!
//! kube-runtime's `Controller` passes every trigger through a
//! `tokio_util::time::DelayQueue`, even one due "now": the queue rounds the
//! deadline up to its next millisecond and releases it only when a timer
//! fires, so each reconcile starts 1–2 ms after its event. A node publish
//! waits for two of them in a row (approve, then sign), which `hack/bench`
//! P1 showed as the largest part of a publish above its floor.
//!
//! This loop keeps the guarantees that matter here and drops the delay:
//! - one reconcile per object at a time, always on the newest cached state;
//!   a trigger that arrives while the object is being reconciled runs it
//!   once more afterwards, however many triggers came;
//! - a requeue replaces the object's earlier requeue (timers are not
//!   latency-critical, so they do use a `DelayQueue`);
//! - on shutdown no new reconcile starts and running ones are awaited.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt};
use kube::Resource;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::task::JoinSet;
use tokio_util::time::{DelayQueue, delay_queue};

use crate::shutdown::CancellationToken;

/// What to do after a reconcile: nothing until the next change, or run
/// again after a while.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Action {
    requeue_after: Option<Duration>,
}

impl Action {
    /// Reconcile again after `after`, even without a change.
    pub const fn requeue(after: Duration) -> Self {
        Self {
            requeue_after: Some(after),
        }
    }

    /// Wait for the next change of the object (or of what it depends on).
    pub const fn await_change() -> Self {
        Self {
            requeue_after: None,
        }
    }
}

/// Runs `reconcile` for every object `triggers` names until `shutdown`
/// fires. `store` must be the reflector store fed by the same watch that
/// produces (some of) the triggers, so a trigger always finds the object's
/// state at least as new as the event.
pub async fn run<K, C, E, F, Fut, P>(
    store: Store<K>,
    triggers: impl Stream<Item = ObjectRef<K>> + Send,
    reconcile: F,
    error_policy: P,
    ctx: Arc<C>,
    shutdown: CancellationToken,
) where
    K: Resource + Clone + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Default + Send + Sync,
    C: Send + Sync + 'static,
    E: std::fmt::Display + Send + 'static,
    F: Fn(Arc<K>, Arc<C>) -> Fut,
    Fut: Future<Output = Result<Action, E>> + Send + 'static,
    P: Fn(Arc<K>, &E, Arc<C>) -> Action,
{
    let mut triggers = std::pin::pin!(triggers);
    // Object → whether another trigger came while it was being reconciled.
    let mut running: HashMap<ObjectRef<K>, bool> = HashMap::new();
    let mut tasks: JoinSet<Finished<K, E>> = JoinSet::new();
    let mut requeues: DelayQueue<ObjectRef<K>> = DelayQueue::new();
    let mut requeue_keys: HashMap<ObjectRef<K>, delay_queue::Key> = HashMap::new();

    let start = |object: ObjectRef<K>,
                 running: &mut HashMap<ObjectRef<K>, bool>,
                 tasks: &mut JoinSet<Finished<K, E>>| {
        // Gone from the cache: deleted, nothing to reconcile.
        let Some(current) = store.get(&object) else {
            return;
        };
        running.insert(object.clone(), false);
        let work = reconcile(current.clone(), ctx.clone());
        tasks.spawn(async move {
            // A panic is caught here so the object's slot is always freed.
            let result = std::panic::AssertUnwindSafe(work).catch_unwind().await.ok();
            (object, current, result)
        });
    };

    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(done) = tasks.join_next() => {
                // Tasks are never aborted and panics are caught inside them.
                let Ok((object, seen, result)) = done else { continue };
                let action = match &result {
                    Some(Ok(action)) => *action,
                    Some(Err(error)) => error_policy(seen, error, ctx.clone()),
                    None => {
                        tracing::error!(object = %object, "reconcile panicked; retrying in 5 s");
                        Action::requeue(Duration::from_secs(5))
                    }
                };
                if let Some(key) = requeue_keys.remove(&object) {
                    requeues.remove(&key);
                }
                if let Some(after) = action.requeue_after {
                    requeue_keys.insert(object.clone(), requeues.insert(object.clone(), after));
                }
                if running.remove(&object) == Some(true) {
                    start(object, &mut running, &mut tasks);
                }
            }
            Some(expired) = requeues.next(), if !requeues.is_empty() => {
                let object = expired.into_inner();
                requeue_keys.remove(&object);
                trigger(object, &mut running, &mut tasks, &start);
            }
            next = triggers.next() => match next {
                Some(object) => trigger(object, &mut running, &mut tasks, &start),
                // The watches ended: only happens when they are shut down.
                None => break,
            },
        }
    }
    // Let running reconciles finish their writes, as Controller does.
    while tasks.join_next().await.is_some() {}
}

/// Watches and caches every object of kind `K`, and marks `health` ready
/// once the first list is cached. Returns the cache and a stream naming each
/// object that changed, the two halves [`run`] takes.
///
/// Objects of a (re)list are named only once the whole list is in the
/// cache: the reflector buffers a list and swaps it in at its end, so a
/// reconcile started on an object as it was listed would find the cache
/// without it, take it for deleted and drop it. That left every request
/// made before the controller started undecided until it next changed
/// (found on the real API server, whose watch lists before it streams).
pub fn watch_all<K>(
    api: kube::Api<K>,
    who: &'static str,
    health: super::Health,
) -> (Store<K>, impl Stream<Item = ObjectRef<K>> + Send)
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Default + Send + Sync,
{
    use kube::runtime::{WatchStreamExt, reflector, watcher};
    let (store, writer) = reflector::store();
    let cached = store.clone();
    let changed = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default())
            .backoff(crate::kubernetes::WatchBackoff::default()),
    )
    .flat_map(move |event| futures::stream::iter(objects_of(event, &cached, who)));
    super::mark_ready_when_synced(store.clone(), health);
    (store, changed)
}

/// The objects a watch event names: the object of an apply or delete, and
/// at the end of a (re)list every object then cached (see [`watch_all`]).
/// A watch error (retried by the watch's backoff) is only logged, as
/// kube-runtime's Controller does.
fn objects_of<K>(
    event: Result<kube::runtime::watcher::Event<K>, kube::runtime::watcher::Error>,
    cached: &Store<K>,
    who: &str,
) -> Vec<ObjectRef<K>>
where
    K: Resource + Clone,
    K::DynamicType: Eq + Hash + Clone + Default,
{
    use kube::runtime::watcher::Event;
    match event {
        Ok(Event::Apply(object) | Event::Delete(object)) => vec![ObjectRef::from_obj(&object)],
        Ok(Event::InitDone) => cached
            .state()
            .iter()
            .map(|object| ObjectRef::from_obj(object.as_ref()))
            .collect(),
        Ok(Event::Init | Event::InitApply(_)) => Vec::new(),
        Err(error) => {
            tracing::debug!(%error, "{who}: watch error; retrying");
            Vec::new()
        }
    }
}

/// A finished reconcile: the object, the state it ran on, and its result
/// (`None` if it panicked).
type Finished<K, E> = (ObjectRef<K>, Arc<K>, Option<Result<Action, E>>);

fn trigger<K, T, S>(
    object: ObjectRef<K>,
    running: &mut HashMap<ObjectRef<K>, bool>,
    tasks: &mut JoinSet<T>,
    start: &S,
) where
    K: Resource,
    K::DynamicType: Eq + Hash + Clone,
    S: Fn(ObjectRef<K>, &mut HashMap<ObjectRef<K>, bool>, &mut JoinSet<T>),
{
    match running.entry(object) {
        Entry::Occupied(mut busy) => {
            busy.insert(true);
        }
        Entry::Vacant(idle) => {
            let object = idle.into_key();
            start(object, running, tasks);
        }
    }
}
