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
    /// The watcher backs off ([`crate::kubernetes::WatchBackoff`]) and resumes on API errors,
    /// relisting after a 410 Gone or a restarted API server, so an outage
    /// delays decisions but never loses one.
    pub fn spawn(client: Client, label_selector: String, shutdown: CancellationToken) -> Self {
        let tracker = RequestTracker::default();
        let this = tracker.clone();
        tokio::spawn(async move {
            let api: Api<CertificateRequest> = Api::all(client);
            let config = watcher::Config::default().labels(&label_selector);
            let mut stream = watcher::watcher(api, config)
                .backoff(crate::kubernetes::WatchBackoff::default())
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

fn key_of(request: &CertificateRequest) -> Key {
    (request.namespace().unwrap_or_default(), request.name_any())
}
