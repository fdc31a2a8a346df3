//! One watch on this node's CertificateRequests, shared by every waiter.
//!
//! A watch per publish would mean thousands of open watches on a busy node,
//! and a poll per publish would load the API server. Instead the node plugin
//! runs a single watcher, filtered by the node label, and hands each waiter
//! the latest version of the one request it cares about. Only requests that
//! someone waits for are kept, so memory follows the number of waiters, not
//! the number of volumes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;

use crate::api::CertificateRequest;
use crate::shutdown::CancellationToken;

/// What the tracker last saw of one request.
#[derive(Clone, Debug)]
pub enum Seen {
    /// No event yet since the waiter subscribed.
    Unknown,
    Present(Arc<CertificateRequest>),
    Deleted,
}

type Key = (String, String);

#[derive(Clone, Default)]
pub struct RequestTracker {
    waiters: Arc<Mutex<HashMap<Key, watch::Sender<Seen>>>>,
}

/// A waiter's view of one request. Dropping it does not stop tracking; call
/// [`RequestTracker::forget`] when the volume no longer waits.
pub struct Subscription {
    pub namespace: String,
    pub name: String,
    pub rx: watch::Receiver<Seen>,
}

impl RequestTracker {
    /// Starts watching requests carrying `label_selector` in all namespaces.
    /// The watcher backs off ([`WatchBackoff`]) and resumes on API errors,
    /// relisting after a 410 Gone or a restarted API server, so an outage
    /// delays decisions but never loses one.
    pub fn spawn(client: Client, label_selector: String, shutdown: CancellationToken) -> Self {
        let tracker = RequestTracker::default();
        let this = tracker.clone();
        tokio::spawn(async move {
            let api: Api<CertificateRequest> = Api::all(client);
            let config = watcher::Config::default().labels(&label_selector);
            let mut stream = watcher::watcher(api, config)
                .backoff(WatchBackoff::default())
                .boxed();
            loop {
                let event = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    event = stream.next() => event,
                };
                match event {
                    Some(Ok(event)) => this.apply(event),
                    Some(Err(error)) => {
                        tracing::warn!(%error, "watch on CertificateRequests interrupted; resuming")
                    }
                    None => break,
                }
            }
        });
        tracker
    }

    fn apply(&self, event: Event<CertificateRequest>) {
        match event {
            Event::Apply(request) | Event::InitApply(request) => {
                let key = key_of(&request);
                self.update(&key, Seen::Present(Arc::new(request)));
            }
            Event::Delete(request) => self.update(&key_of(&request), Seen::Deleted),
            Event::Init | Event::InitDone => {}
        }
    }

    /// Only requests with a waiter are stored; the rest are dropped at once.
    fn update(&self, key: &Key, seen: Seen) {
        let waiters = self.waiters.lock().expect("tracker lock");
        if let Some(sender) = waiters.get(key) {
            sender.send_replace(seen);
        }
    }

    /// Registers interest in a request. Subscribe before creating the
    /// request (its name is chosen client-side for this reason) so that no
    /// event can slip past between the create and the subscription.
    pub fn subscribe(&self, namespace: &str, name: &str) -> Subscription {
        let key = (namespace.to_string(), name.to_string());
        let mut waiters = self.waiters.lock().expect("tracker lock");
        let rx = waiters
            .entry(key)
            .or_insert_with(|| watch::channel(Seen::Unknown).0)
            .subscribe();
        Subscription {
            namespace: namespace.to_string(),
            name: name.to_string(),
            rx,
        }
    }

    /// Records what a direct read returned, for waiters that subscribed to a
    /// request created before the watcher started (recovery after restart).
    pub fn seed(&self, request: CertificateRequest) {
        let key = key_of(&request);
        let waiters = self.waiters.lock().expect("tracker lock");
        if let Some(sender) = waiters.get(&key) {
            sender.send_if_modified(|seen| {
                if matches!(seen, Seen::Unknown) {
                    *seen = Seen::Present(Arc::new(request));
                    true
                } else {
                    false
                }
            });
        }
    }

    pub fn forget(&self, namespace: &str, name: &str) {
        let key = (namespace.to_string(), name.to_string());
        self.waiters.lock().expect("tracker lock").remove(&key);
    }

    /// How many requests are being waited on (for metrics and tests).
    pub fn waiting(&self) -> usize {
        self.waiters.lock().expect("tracker lock").len()
    }
}

/// Retry delays of the shared watch after an API error: from 1 s doubling
/// to at most 5 s, with jitter. kube's default climbs to 30 s, which after an
/// API outage would leave every renewal waiting up to half a minute for a
/// decision that is already made; one watch per node is cheap to resume.
/// The controller's watches use it too: a watcher without any backoff
/// would retry in a tight loop while the API is down.
#[derive(Debug, Default)]
pub struct WatchBackoff {
    attempt: u32,
}

impl WatchBackoff {
    pub const BASE: std::time::Duration = std::time::Duration::from_secs(1);
    pub const MAX: std::time::Duration = std::time::Duration::from_secs(5);
}

impl Iterator for WatchBackoff {
    type Item = std::time::Duration;

    fn next(&mut self) -> Option<std::time::Duration> {
        self.attempt = self.attempt.saturating_add(1);
        Some(crate::renewal::schedule::backoff(
            self.attempt,
            Self::BASE,
            Self::MAX,
            rand::random::<f64>(),
        ))
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.attempt = 0;
    }
}

fn key_of(request: &CertificateRequest) -> Key {
    (request.namespace().unwrap_or_default(), request.name_any())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::utils::Backoff;

    #[test]
    fn watch_backoff_is_short_and_resets() {
        let mut backoff = WatchBackoff::default();
        let delays: Vec<_> = (&mut backoff).take(12).collect();
        assert!(
            delays
                .iter()
                .all(|d| *d >= WatchBackoff::BASE / 2 && *d <= WatchBackoff::MAX)
        );
        assert!(delays[0] <= WatchBackoff::BASE);
        assert!(delays[11] >= WatchBackoff::MAX / 2);
        backoff.reset();
        assert!(backoff.next().unwrap() <= WatchBackoff::BASE);
    }
}
