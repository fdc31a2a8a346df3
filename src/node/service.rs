//! The [`VolumeManager`]: what the node plugin owns, and the four things
//! it does with it (publish, unpublish, recover, renew). The steps live in
//! the sibling modules; this file holds the shared parts they use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kube::Client;

use super::config::NodeConfig;
use super::driver::Driver;
use super::keypool::KeyPool;
use super::target::KubeletRoot;
use super::trim::MemoryTrim;
use super::trust::TrustBundle;
use super::volumes::Volumes;
use crate::issuance::{IssuanceError, RequestTracker};
use crate::renewal::limiter::Limiter;
use crate::renewal::scheduler::Scheduler;
use crate::shutdown::CancellationToken;
use crate::store::Store;
use crate::telemetry::events::pod_reference;
use crate::telemetry::metrics::{ReadyCondition, RequestKey};
use crate::telemetry::{EventRecorder, EventType, NodeMetrics};
use crate::volume::{PodInfo, SecretString, VolumeSpec};

/// The node-side lifecycle of every volume. Shared (`Arc`) between the gRPC
/// server, the renewal tasks, trust updates and recovery.
pub struct VolumeManager {
    pub(super) config: NodeConfig,
    pub(super) kubelet_root: KubeletRoot,
    pub(super) client: Client,
    pub(super) volumes: Volumes,
    pub(super) tracker: RequestTracker,
    pub(super) locks: VolumeLocks,
    pub(super) limiter: Limiter,
    pub(super) scheduler: Scheduler,
    /// Ready RSA keys for first publishes.
    pub(super) key_pool: KeyPool,
    /// The kubelet's service account tokens by volume, from the latest
    /// publish. Held only in memory: tokens are never written to disk.
    tokens: Mutex<HashMap<String, SecretString>>,
    /// Renewals running now, by volume; cancelling one stops it (unpublish).
    pub(super) renewals: Mutex<HashMap<String, CancellationToken>>,
    pub(super) shutdown: CancellationToken,
    pub(super) metrics: NodeMetrics,
    /// Events on pods; `None` until [`VolumeManager::with_telemetry`].
    events: Option<EventRecorder>,
    pub(super) driver: Driver,
    /// The CA file content of every volume, when a trust bundle is set.
    pub(super) trust: Option<TrustBundle>,
    /// Returns freed memory to the kernel after bursts.
    pub(super) trim: MemoryTrim,
}

impl VolumeManager {
    pub fn new(
        config: NodeConfig,
        client: Client,
        store: Store,
        tracker: RequestTracker,
        limiter: Limiter,
        scheduler: Scheduler,
        shutdown: CancellationToken,
    ) -> Self {
        // Counted but not served until `with_telemetry` hands in the
        // served registry's metrics.
        let metrics = NodeMetrics::register(&mut crate::telemetry::Registry::default());
        Self {
            kubelet_root: KubeletRoot::new(&config.kubelet_root_dir),
            key_pool: KeyPool::new(config.key_pool, metrics.clone()),
            config,
            client,
            volumes: Volumes::new(store),
            tracker,
            locks: VolumeLocks::default(),
            limiter,
            scheduler,
            tokens: Mutex::default(),
            renewals: Mutex::default(),
            trim: MemoryTrim::new(shutdown.clone()),
            shutdown,
            metrics,
            events: None,
            driver: Driver::default(),
            trust: None,
        }
    }

    /// Uses `metrics` (registered in the served registry) and records
    /// Events on pods through `events`.
    pub fn with_telemetry(mut self, metrics: NodeMetrics, events: EventRecorder) -> Self {
        self.key_pool.use_metrics(metrics.clone());
        self.metrics = metrics;
        self.events = Some(events);
        self
    }

    /// Serves `driver` instead of csi.cert-manager.io.
    pub fn with_driver(mut self, driver: Driver) -> Self {
        self.driver = driver;
        self
    }

    /// Writes `bundle` as the CA file of every volume, now and whenever it
    /// changes.
    pub fn with_trust_bundle(mut self, bundle: TrustBundle) -> Self {
        self.trust = Some(bundle);
        self
    }

    pub fn node_id(&self) -> &str {
        &self.config.node_id
    }

    /// The renewal timer (for tests and metrics).
    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    /// Records an Event on the pod in the background; publish and renewal
    /// never wait on the Events API.
    pub(super) fn pod_event(
        &self,
        pod: &PodInfo,
        type_: EventType,
        reason: &'static str,
        action: &'static str,
        note: String,
    ) {
        if let Some(events) = &self.events {
            let uid = Some(pod.uid.as_str()).filter(|u| !u.is_empty());
            events.emit(
                pod_reference(&pod.namespace, &pod.name, uid),
                type_,
                reason,
                action,
                note,
            );
        }
    }

    /// Keeps the latest tokens in memory; a republish with new tokens only
    /// updates this map.
    pub(super) fn remember_tokens(&self, spec: &VolumeSpec) {
        let mut tokens = self.tokens.lock().expect("tokens lock");
        match &spec.tokens {
            Some(t) => {
                tokens.insert(spec.volume_id.clone(), t.clone());
            }
            None => {
                tokens.remove(&spec.volume_id);
            }
        }
    }

    pub(super) fn forget_tokens(&self, volume_id: &str) {
        self.tokens.lock().expect("tokens lock").remove(volume_id);
    }

    pub(super) fn tokens(&self, volume_id: &str) -> Option<SecretString> {
        self.tokens
            .lock()
            .expect("tokens lock")
            .get(volume_id)
            .cloned()
    }

    /// Deletes a volume's requests except those `keep` spares; each leaves
    /// the request metrics as it leaves the API. Only requests that the
    /// volume's pod (`pod_uid`, when known) owns are touched: the labels'
    /// hashes are 32-bit and may be shared with another volume.
    pub(super) async fn delete_requests(
        &self,
        namespace: &str,
        volume_id: &str,
        pod_uid: Option<&str>,
        keep: crate::issuance::Keep<'_>,
    ) -> Result<(), IssuanceError> {
        let metrics = &self.metrics;
        crate::issuance::delete_for_volume(
            &self.client,
            namespace,
            &self.config.node_id,
            volume_id,
            pod_uid,
            keep,
            |name| metrics.request_deleted(&RequestKey::new(namespace, name)),
        )
        .await
    }

    /// Moves the request's ready-status series to the decision.
    pub(super) fn request_decided<T>(
        &self,
        namespace: &str,
        name: &str,
        outcome: &Result<T, IssuanceError>,
    ) {
        let condition = match outcome {
            Ok(_) => ReadyCondition::True,
            Err(IssuanceError::Denied { .. } | IssuanceError::Failed { .. }) => {
                ReadyCondition::False
            }
            Err(_) => return,
        };
        self.metrics
            .request_condition(&RequestKey::new(namespace, name), condition);
    }
}

/// One async lock per volume: concurrent publishes of the same volume queue
/// behind the first, then find it done (cert-manager/csi-driver#636 mounted
/// an empty directory here).
#[derive(Default)]
pub(super) struct VolumeLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl VolumeLocks {
    pub(super) async fn lock(&self, volume_id: &str) -> VolumeGuard<'_> {
        let lock = {
            let mut map = self.0.lock().expect("volume locks");
            map.entry(volume_id.to_string()).or_default().clone()
        };
        let guard = lock.clone().lock_owned().await;
        VolumeGuard {
            locks: self,
            volume_id: volume_id.to_string(),
            _guard: guard,
        }
    }
}

pub(super) struct VolumeGuard<'a> {
    locks: &'a VolumeLocks,
    volume_id: String,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for VolumeGuard<'_> {
    fn drop(&mut self) {
        let mut map = self.locks.0.lock().expect("volume locks");
        // Two references mean only the map and this guard hold it: nobody
        // else waits, so the entry can go and the map stays small.
        if map
            .get(&self.volume_id)
            .is_some_and(|l| Arc::strong_count(l) <= 2)
        {
            map.remove(&self.volume_id);
        }
    }
}
