//! CSI Node: publish a certificate into a pod's volume, and take it away.
//!
//! Publish runs in a fixed order, and nothing touches the node or the API
//! before the whole request has been validated:
//! validate → key + CSR → CertificateRequest → wait (watch) → check → write
//! → mount → record state.

pub mod renew;
pub mod spiffe;
pub mod target;
pub mod trust;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::Client;
use thiserror::Error;
use tonic::{Code, Request, Response, Status};

use super::proto::node_server::Node;
use super::proto::volume_capability::AccessType;
use super::proto::*;
use crate::api::IssuerRef;
use crate::issuance::{self, IssuanceError, RequestParams, RequestTracker};
use crate::pki::{self, KeyEncoding, PrivateKey, Secret};
use crate::renewal::limiter::{Limiter, LimiterConfig, Priority};
use crate::renewal::schedule;
use crate::renewal::scheduler::Scheduler;
use crate::shutdown::CancellationToken;
use crate::store::{RequestPhase, RequestRef, Store, StoreError, StoreErrorKind, VolumeState};
use crate::telemetry::metrics::{IssuanceKind, IssueErrorReason, ReadyCondition, RequestKey};
use crate::telemetry::{EventRecorder, EventType, NodeMetrics, events::pod_reference};
use crate::volume::{self, AttributeError, PublishInput, SecretString, VolumeSpec};

pub use renew::{Recovery, RetryPolicy};

/// The kubelet's default `--root-dir`.
pub const DEFAULT_KUBELET_ROOT_DIR: &str = "/var/lib/kubelet";

/// Settings of the node service.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub node_id: String,
    /// How long NodePublishVolume waits for a decision on its request before
    /// answering DeadlineExceeded (the kubelet allows about two minutes).
    pub publish_timeout: Duration,
    /// Requests kept per volume after issuance; older ones are deleted.
    pub keep_requests: usize,
    /// When renewals happen: jitter, the minimum interval between two
    /// certificates of a volume, and the guard's longest back-off.
    pub renewal: schedule::RenewalPolicy,
    /// How long to wait before retrying a failed renewal.
    pub retry: RetryPolicy,
    /// The node-wide issuance limit (in flight, and new requests per second).
    pub limits: LimiterConfig,
    /// Where `/metrics`, `/healthz` and `/readyz` are served (see
    /// `csi::run`); `None` serves none of them.
    pub metrics_address: Option<std::net::SocketAddr>,
    /// After this long without a decision, a publish records an
    /// `IssuanceSlow` Event on the pod (it keeps waiting).
    pub slow_issuance: Duration,
    /// The kubelet's root directory: publish and unpublish act only on
    /// `<root>/pods/<uid>/volumes/kubernetes.io~csi/<name>/mount`.
    pub kubelet_root_dir: PathBuf,
}

impl NodeConfig {
    /// The defaults of `cert-csi node` for `node_id`.
    pub fn new(node_id: impl Into<String>) -> Self {
        NodeConfig {
            node_id: node_id.into(),
            publish_timeout: Duration::from_secs(60),
            keep_requests: 1,
            renewal: schedule::RenewalPolicy::default(),
            retry: RetryPolicy::default(),
            limits: LimiterConfig::default(),
            // Off unless asked for: in-process users (the demo, tests) must
            // not fight over a fixed port.
            metrics_address: None,
            slow_issuance: Duration::from_secs(10),
            kubelet_root_dir: PathBuf::from(DEFAULT_KUBELET_ROOT_DIR),
        }
    }
}

/// The node service. It is shared (`Arc`) between the gRPC server, the
/// renewal tasks and recovery.
pub struct NodeService {
    config: NodeConfig,
    kubelet_root: target::KubeletRoot,
    client: Client,
    store: Store,
    tracker: RequestTracker,
    locks: VolumeLocks,
    limiter: Limiter,
    scheduler: Scheduler,
    /// The kubelet's service account tokens by volume, from the latest
    /// publish. Held only in memory: tokens are never written to disk.
    tokens: Mutex<HashMap<String, SecretString>>,
    /// Renewals running now, by volume; cancelling one stops it (unpublish).
    renewals: Mutex<HashMap<String, CancellationToken>>,
    shutdown: CancellationToken,
    metrics: NodeMetrics,
    /// Events on pods; `None` until [`NodeService::with_telemetry`].
    events: Option<EventRecorder>,
    /// The SPIFFE driver's settings; `None` serves csi.cert-manager.io.
    spiffe: Option<Arc<spiffe::SpiffeConfig>>,
    /// The CA file content of every volume, when a trust bundle is set.
    trust: Option<trust::TrustBundle>,
    /// The API server settings that pod-token clients are built from.
    request_config: Option<kube::Config>,
}

/// Everything that can stop a publish, each mapped to the gRPC code the
/// kubelet and the user see.
#[derive(Debug, Error)]
pub enum PublishError {
    #[error("{0}")]
    Attribute(#[from] AttributeError),
    #[error("{0}")]
    Target(#[from] target::TargetError),
    #[error(
        "volume_capability: {0}. cert-csi serves filesystem (mount) volumes only; use a CSI inline volume"
    )]
    Capability(&'static str),
    #[error(
        "volume {volume_id} is already published at {existing} with different attributes; ephemeral volume attributes cannot change, recreate the pod"
    )]
    Incompatible { volume_id: String, existing: String },
    #[error("generating the private key: {0}")]
    Key(#[from] pki::KeyError),
    #[error("building the CSR: {0}")]
    Csr(#[from] pki::CsrError),
    #[error("{0}")]
    Issuance(#[from] IssuanceError),
    #[error(
        "the issued certificate cannot be used: {0}. The request was deleted; the next attempt starts a new one"
    )]
    Issued(String),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error(
        "waited {waited:?} for a free issuance slot (--max-inflight-requests / --max-request-rate) without creating a request; the node is issuing many certificates at once, and the next attempt queues again"
    )]
    Throttled { waited: Duration },
    #[error("the node plugin is shutting down; retry after it restarts")]
    ShuttingDown,
    #[error("internal error: {0}")]
    Internal(String),
}

impl PublishError {
    /// Whether the volume's progress (request, pending key, state) is kept
    /// for the next attempt instead of being removed.
    fn keeps_progress(&self) -> bool {
        matches!(
            self,
            PublishError::Issuance(IssuanceError::Timeout { .. })
                | PublishError::Throttled { .. }
                | PublishError::ShuttingDown
        )
    }

    pub fn code(&self) -> Code {
        match self {
            PublishError::Attribute(_) | PublishError::Capability(_) | PublishError::Target(_) => {
                Code::InvalidArgument
            }
            PublishError::Incompatible { .. } => Code::AlreadyExists,
            PublishError::Key(_) => Code::Internal,
            PublishError::Csr(
                pki::CsrError::LiteralSubject { .. } | pki::CsrError::Field { .. },
            ) => Code::InvalidArgument,
            PublishError::Csr(_) => Code::Internal,
            PublishError::Issuance(e) => issuance_code(e),
            PublishError::Issued(_) | PublishError::Internal(_) => Code::Internal,
            PublishError::Store(e) => store_code(e),
            PublishError::Throttled { .. } => Code::DeadlineExceeded,
            PublishError::ShuttingDown => Code::Unavailable,
        }
    }
}

/// Reasons of the Events the node plugin records on pods.
pub const EVENT_DENIED: &str = "IssuanceDenied";
pub const EVENT_FAILED: &str = "IssuanceFailed";
pub const EVENT_SLOW: &str = "IssuanceSlow";
pub const EVENT_RENEWAL_FAILED: &str = "RenewalFailed";
pub const EVENT_RENEWAL_GUARDED: &str = "RenewalGuarded";

/// The note of a `RenewalGuarded` Event: which issuer, what was asked, what
/// was given. Whole seconds, and no random wait, so a repeating cause
/// stays one Event series.
fn guard_note(spec: &VolumeSpec, issued: &schedule::Issued, min_interval: Duration) -> String {
    let fmt = |d: Duration| crate::volume::duration::format_go(Duration::from_secs(d.as_secs()));
    format!(
        "{} {} issued a certificate with {} of life left, for {} requested; \
         that is too short to renew at least {} after it arrived, so the \
         renewal waits at least that long, doubling while this repeats. \
         Check the issuer: a CA near its own expiry caps every certificate \
         it signs",
        spec.issuer.kind,
        spec.issuer.name,
        fmt(issued.lifetime()),
        fmt(spec.duration),
        fmt(min_interval),
    )
}

/// The pod's name for a volume: the directory above `mount` in the
/// kubelet's target path (`…/volumes/kubernetes.io~csi/<name>/mount`).
fn volume_name(spec: &VolumeSpec) -> String {
    spec.target_path
        .parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| spec.volume_id.clone())
}

impl PublishError {
    /// The `reason` label this failure counts under; `None` for a shutdown,
    /// which is no failure of the issuance.
    fn metric_reason(&self) -> Option<IssueErrorReason> {
        Some(match self {
            PublishError::Issuance(e) => IssueErrorReason::from(e),
            PublishError::Issued(_) => IssueErrorReason::Invalid,
            PublishError::Attribute(_)
            | PublishError::Capability(_)
            | PublishError::Target(_)
            | PublishError::Incompatible { .. } => IssueErrorReason::Invalid,
            PublishError::Csr(
                pki::CsrError::LiteralSubject { .. } | pki::CsrError::Field { .. },
            ) => IssueErrorReason::Invalid,
            PublishError::Throttled { .. } => IssueErrorReason::Timeout,
            PublishError::Key(_)
            | PublishError::Csr(_)
            | PublishError::Store(_)
            | PublishError::Internal(_) => IssueErrorReason::Internal,
            PublishError::ShuttingDown => return None,
        })
    }

    /// Reason and note of the pod Event for a denied or failed issuance.
    /// The note names the volume, the issuer's verdict and what to do, but
    /// never the request: each attempt makes a request with a new name, and
    /// repeats must fold into one Event series.
    fn issuance_event(&self, volume: &str) -> Option<(&'static str, String)> {
        match self {
            PublishError::Issuance(IssuanceError::Denied {
                issuer,
                reason,
                message,
                ..
            }) => Some((
                EVENT_DENIED,
                format!(
                    "the certificate request for volume {volume} was denied ({reason}): {message}. Check the approver's policy for issuer {issuer}"
                ),
            )),
            PublishError::Issuance(IssuanceError::Failed {
                reason, message, ..
            }) => Some((
                EVENT_FAILED,
                format!("the certificate request for volume {volume} failed ({reason}): {message}"),
            )),
            PublishError::Issuance(IssuanceError::Vanished { .. }) => Some((
                EVENT_FAILED,
                format!(
                    "the certificate request for volume {volume} was deleted before it was issued; the next attempt makes a new one"
                ),
            )),
            PublishError::Issuance(IssuanceError::BadCertificate { problem, .. })
            | PublishError::Issued(problem) => Some((
                EVENT_FAILED,
                format!(
                    "the issuer returned a certificate for volume {volume} that cannot be used: {problem}"
                ),
            )),
            _ => None,
        }
    }
}

#[derive(Debug, Error)]
pub enum UnpublishError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("volume_id: must not be empty")]
    MissingVolumeId,
    #[error("target_path: must not be empty")]
    MissingTargetPath,
    #[error("target_path: {0}")]
    BadTargetPath(String),
    #[error("{0}")]
    Target(#[from] target::TargetError),
    #[error(
        "target_path: volume {volume_id} is published at another target path on this node; pass the target_path its NodePublishVolume was given. Nothing was unmounted"
    )]
    OtherTarget { volume_id: String },
    #[error("internal error: {0}")]
    Task(String),
}

impl UnpublishError {
    pub fn code(&self) -> Code {
        match self {
            UnpublishError::Store(e) => store_code(e),
            UnpublishError::MissingVolumeId
            | UnpublishError::MissingTargetPath
            | UnpublishError::BadTargetPath(_)
            | UnpublishError::Target(_)
            | UnpublishError::OtherTarget { .. } => Code::InvalidArgument,
            UnpublishError::Task(_) => Code::Internal,
        }
    }
}

/// A subject or SAN value the CSR encoder refused is still the user's
/// input: report it under the full attribute key, as the volume parser
/// reports everything else, so the pod's events say which one to fix.
fn encoding_error(error: pki::CsrError) -> PublishError {
    let attribute = |attribute: String, message: String| {
        PublishError::Attribute(AttributeError { attribute, message })
    };
    match error {
        pki::CsrError::LiteralSubject { reason } => attribute(
            volume::keys::LITERAL_SUBJECT.to_string(),
            format!("{reason}; write an RFC 4514 string such as \"CN=app,O=example\""),
        ),
        pki::CsrError::Field {
            field,
            value,
            reason,
        } => attribute(
            format!("{}{field}", volume::attributes::PREFIX),
            format!("{value:?} cannot be encoded in a certificate request: {reason}"),
        ),
        other => PublishError::Csr(other),
    }
}

fn issuance_code(error: &IssuanceError) -> Code {
    match error {
        IssuanceError::Denied { .. } => Code::PermissionDenied,
        IssuanceError::Failed { .. } => Code::FailedPrecondition,
        IssuanceError::Timeout { .. } => Code::DeadlineExceeded,
        IssuanceError::Vanished { .. } => Code::Aborted,
        IssuanceError::BadCertificate { .. } => Code::Internal,
        IssuanceError::Api { .. } => match error.api_status() {
            Some(400 | 422) => Code::InvalidArgument,
            Some(401 | 403) => Code::PermissionDenied,
            Some(404) => Code::NotFound,
            Some(409) => Code::Aborted,
            Some(429) => Code::ResourceExhausted,
            Some(_) | None => Code::Unavailable,
        },
    }
}

fn store_code(error: &StoreError) -> Code {
    match error.kind() {
        StoreErrorKind::InvalidArgument => Code::InvalidArgument,
        StoreErrorKind::NotFound => Code::NotFound,
        StoreErrorKind::FailedPrecondition => Code::FailedPrecondition,
        StoreErrorKind::ResourceExhausted => Code::ResourceExhausted,
        StoreErrorKind::Internal => Code::Internal,
    }
}

fn status(code: Code, message: String, volume_id: &str) -> Status {
    // The kubelet shows this text in the pod's events; also log it here so
    // the node's own logs explain every failure.
    tracing::warn!(volume_id, ?code, %message, "request failed");
    Status::new(code, message)
}

/// One async lock per volume: concurrent publishes of the same volume queue
/// behind the first, then find it done (cert-manager/csi-driver#636 mounted
/// an empty directory here).
#[derive(Default)]
struct VolumeLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl VolumeLocks {
    async fn lock(&self, volume_id: &str) -> VolumeGuard<'_> {
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

struct VolumeGuard<'a> {
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

/// Runs blocking filesystem and mount work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, PublishError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| PublishError::Internal(format!("store task failed: {e}")))?
        .map_err(PublishError::from)
}

/// The file in a volume's private tmpfs directory that keeps the PKCS#12
/// password for renewals (node state on disk never holds it).
const PKCS12_PASSWORD_FILE: &str = "pkcs12-password";

impl NodeService {
    pub fn new(
        config: NodeConfig,
        client: Client,
        store: Store,
        tracker: RequestTracker,
        limiter: Limiter,
        scheduler: Scheduler,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            kubelet_root: target::KubeletRoot::new(&config.kubelet_root_dir),
            config,
            client,
            store,
            tracker,
            locks: VolumeLocks::default(),
            limiter,
            scheduler,
            tokens: Mutex::default(),
            renewals: Mutex::default(),
            shutdown,
            // Counted but not served until `with_telemetry` hands in the
            // served registry's metrics.
            metrics: NodeMetrics::register(&mut crate::telemetry::Registry::default()),
            events: None,
            spiffe: None,
            trust: None,
            request_config: None,
        }
    }

    /// Uses `metrics` (registered in the served registry) and records
    /// Events on pods through `events`.
    pub fn with_telemetry(mut self, metrics: NodeMetrics, events: EventRecorder) -> Self {
        self.metrics = metrics;
        self.events = Some(events);
        self
    }

    /// Records an Event on the pod in the background; publish and renewal
    /// never wait on the Events API.
    fn pod_event(
        &self,
        pod: &volume::PodInfo,
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

    /// Counts a failed first issuance and tells the pod why, when the
    /// cause is the issuance itself (denied, failed, slow).
    fn publish_failed(&self, spec: &VolumeSpec, error: &PublishError) {
        if let Some(reason) = error.metric_reason() {
            self.metrics.request_failed(reason);
        }
        let event = match error {
            // A timeout is the slow case that outlived the publish deadline:
            // same reason and note as the timer's Event, so one series.
            PublishError::Issuance(IssuanceError::Timeout { .. }) => {
                Some((EVENT_SLOW, self.slow_note(spec)))
            }
            other => other.issuance_event(&volume_name(spec)),
        };
        if let Some((reason, note)) = event {
            self.pod_event(&spec.pod, EventType::Warning, reason, "Issue", note);
        }
    }

    /// The note of an `IssuanceSlow` Event. It carries no time that grows
    /// between attempts, so retries of one publish stay one series.
    fn slow_note(&self, spec: &VolumeSpec) -> String {
        format!(
            "no decision on the certificate request for volume {} after {:?}; waiting for the approver and issuer {} {}/{}. The request is kept and the kubelet's retries resume it",
            volume_name(spec),
            self.config.slow_issuance,
            spec.issuer.kind,
            spec.pod.namespace,
            spec.issuer.name,
        )
    }

    /// Deletes the volume's CertificateRequests one by one, so each leaves
    /// the request metrics as it leaves the API.
    async fn delete_volume_requests(
        &self,
        namespace: &str,
        volume_id: &str,
    ) -> Result<(), IssuanceError> {
        let requests =
            issuance::list_for_volume(&self.client, namespace, &self.config.node_id, volume_id)
                .await?;
        for request in requests {
            let name = kube::ResourceExt::name_any(&request);
            issuance::delete_one(&self.client, namespace, &name).await?;
            self.metrics
                .request_deleted(&RequestKey::new(namespace, name));
        }
        Ok(())
    }

    /// The renewal timer (for tests and metrics).
    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    /// Keeps the latest tokens in memory; a republish with new tokens only
    /// updates this map.
    fn remember_tokens(&self, spec: &VolumeSpec) {
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

    async fn publish(&self, req: NodePublishVolumeRequest) -> Result<(), PublishError> {
        let mount_group = match req
            .volume_capability
            .as_ref()
            .and_then(|c| c.access_type.as_ref())
        {
            Some(AccessType::Mount(mount)) => {
                Some(mount.volume_mount_group.clone()).filter(|g| !g.is_empty())
            }
            Some(AccessType::Block(_)) => {
                return Err(PublishError::Capability("block access is not supported"));
            }
            None => return Err(PublishError::Capability("a mount capability is required")),
        };
        let input = PublishInput {
            volume_id: &req.volume_id,
            target_path: &req.target_path,
            readonly: req.readonly,
            volume_mount_group: mount_group.as_deref(),
            context: &req.volume_context,
        };
        let mut spec = self.parse_spec(&input)?;
        // Only the kubelet's own mount directory of this pod's volume, and
        // from here on in its resolved form, which the state records.
        spec.target_path = self
            .kubelet_root
            .check(&req.target_path, Some(&spec.pod.uid))?;
        for warning in &spec.warnings {
            // Accepted for compatibility but worth fixing (e.g. subject
            // attributes that literal-subject overrides).
            tracing::warn!(volume_id = %spec.volume_id, %warning, "volume attribute ignored");
        }
        let fingerprint = volume::context_fingerprint(&req.volume_context);
        // The subject and SANs are encoded for real here, so input that only
        // the DER encoder rejects still fails with InvalidArgument, naming
        // the attribute, before any key exists.
        pki::csr::subject_name(&spec.subject).map_err(encoding_error)?;
        pki::csr::san_general_names(&spec.sans).map_err(encoding_error)?;
        self.check_request_credentials(&spec)?;

        let _guard = self.locks.lock(&spec.volume_id).await;
        let state = self.current_state(&spec.volume_id).await?;
        if let Some(state) = &state
            && self.already_published(state, &spec).await?
        {
            if state.context_fingerprint != fingerprint {
                return Err(PublishError::Incompatible {
                    volume_id: spec.volume_id.clone(),
                    existing: state.target_path.display().to_string(),
                });
            }
            // A republish (requiresRepublish): nothing to issue, but the
            // kubelet may have sent fresh tokens.
            self.remember_tokens(&spec);
            return Ok(());
        }
        // Before anything is created: the target is reached without a
        // symlink, and is absent, empty or this volume's own mount.
        {
            let store = self.store.clone();
            let id = spec.volume_id.clone();
            let target = spec.target_path.clone();
            blocking(move || store.check_target(&id, &target)).await?;
        }
        self.remember_tokens(&spec);
        let outcome = self
            .issue_and_mount(&spec, &req, &fingerprint, state, mount_group.as_deref())
            .await;
        if let Err(error) = &outcome {
            self.publish_failed(&spec, error);
        }
        if let Err(error) = &outcome
            && !error.keeps_progress()
        {
            // A terminal failure leaves nothing behind: no mount, no state,
            // no request. A timeout keeps all three so the kubelet's retry
            // resumes the same request with the same key.
            self.discard(&spec).await;
        }
        outcome
    }

    async fn current_state(&self, volume_id: &str) -> Result<Option<VolumeState>, PublishError> {
        let store = self.store.clone();
        let id = volume_id.to_string();
        blocking(move || match store.load_state(&id) {
            Ok(state) => Ok(Some(state)),
            Err(e) if e.is_not_found() => Ok(None),
            // State is written without fsync, so a power loss may leave it
            // unreadable; the same loss took the volume's tmpfs, so there
            // is nothing left to describe and the publish starts afresh.
            // With the tmpfs still there the file cannot have been torn by
            // us, and the error stands for an operator to look at.
            Err(e @ StoreError::CorruptState { .. }) => {
                if store.existing(&id)?.is_some() {
                    return Err(e);
                }
                tracing::warn!(volume_id = %id, error = %e, "unreadable state of a volume whose tmpfs is gone (node power loss?); starting afresh");
                Ok(None)
            }
            Err(e) => Err(e),
        })
        .await
    }

    async fn already_published(
        &self,
        state: &VolumeState,
        spec: &VolumeSpec,
    ) -> Result<bool, PublishError> {
        // A volume with a certificate is published even while a renewal is
        // pending: the pod keeps being served the current certificate.
        let issued = state.not_after.is_some()
            || matches!(&state.request, Some(r) if r.phase == RequestPhase::Issued);
        if !issued || state.target_path != spec.target_path {
            return Ok(false);
        }
        let store = self.store.clone();
        let id = spec.volume_id.clone();
        let target = spec.target_path.clone();
        blocking(move || match store.existing(&id)? {
            Some(dir) => dir.is_mounted_at(&target),
            None => Ok(false),
        })
        .await
    }

    async fn issue_and_mount(
        &self,
        spec: &VolumeSpec,
        req: &NodePublishVolumeRequest,
        fingerprint: &str,
        previous: Option<VolumeState>,
        mount_group: Option<&str>,
    ) -> Result<(), PublishError> {
        let context = &req.volume_context;
        let started = tokio::time::Instant::now();
        let deadline = started + self.config.publish_timeout;
        // Resume a pending request when its key survived in the tmpfs;
        // otherwise start over with a fresh key.
        let pending = previous
            .as_ref()
            .and_then(|s| s.request.clone())
            .filter(|r| r.phase == RequestPhase::Pending);
        // A pod waiting here goes before every renewal; resuming a request
        // that exists takes a slot but no new-request token.
        let permit = match tokio::time::timeout_at(
            deadline,
            self.limiter.acquire(Priority::Publish, pending.is_none()),
        )
        .await
        {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Err(PublishError::ShuttingDown),
            Err(_) => {
                return Err(PublishError::Throttled {
                    waited: started.elapsed(),
                });
            }
        };
        let namespace = spec.pod.namespace.clone();
        let resumed = match pending {
            Some(request) => self.resume(spec, request).await?,
            None => None,
        };
        let (dir, key, name, mut sub) = match resumed {
            Some(resumed) => resumed,
            None => {
                let key = self.new_key(spec).await?;
                let csr = pki::build_csr(&key, &spec.subject, &spec.sans, &self.csr_options(spec))
                    .map_err(encoding_error)?;
                let dir = self.prepare(&spec.volume_id).await?;
                let pem = key.to_pem(KeyEncoding::Pkcs8)?;
                {
                    let dir = dir.clone();
                    blocking(move || dir.write_pending_key(&pem)).await?;
                }
                let name = issuance::new_request_name(&spec.pod.name);
                let sub = self.tracker.subscribe(&namespace, &name);
                // Record the pending request before creating it: a crash
                // right after the create then resumes this request instead
                // of making a second one.
                let mut state = VolumeState::new(
                    &spec.volume_id,
                    &spec.target_path,
                    volume::context_without_tokens(context),
                    fingerprint,
                );
                state.volume_mount_group = mount_group.map(str::to_string);
                if let Err(e) = self.create_request(spec, &csr.pem, &name, state).await {
                    self.tracker.forget(&namespace, &name);
                    return Err(e);
                }
                (dir, key, name, sub)
            }
        };

        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let outcome = {
            let wait = issuance::wait(&mut sub, remaining);
            tokio::pin!(wait);
            let slow = tokio::time::sleep_until(started + self.config.slow_issuance);
            tokio::pin!(slow);
            tokio::select! {
                outcome = &mut wait => outcome,
                () = &mut slow => {
                    // Tell the pod while it still waits; the publish goes on.
                    self.pod_event(&spec.pod, EventType::Warning, EVENT_SLOW, "Issue", self.slow_note(spec));
                    wait.await
                }
            }
        };
        self.tracker.forget(&namespace, &name);
        drop(permit);
        self.request_decided(&namespace, &name, &outcome);
        let issued = outcome?;

        let received = std::time::SystemTime::now();
        let leaf = pki::check_issued(issued.chain_pem.as_bytes(), key.public_key_der(), received)
            .map_err(|e| PublishError::Issued(e.to_string()))?;
        let issued = self.with_bundle_ca(issued)?;
        let files = build_files(spec, &key, &issued)?;
        let gid = spec.fs_group;
        let password = spec
            .pkcs12
            .as_ref()
            .map(|p| Secret::new(p.password.expose().as_bytes().to_vec()));
        {
            let dir = dir.clone();
            let target = spec.target_path.clone();
            blocking(move || {
                if let Some(password) = &password {
                    dir.write_private(PKCS12_PASSWORD_FILE, password)?;
                }
                dir.publish(&files, gid)?;
                dir.mount_at(&target)
            })
            .await?;
        }

        let plan = self.plan_renewal(spec, &leaf, received, 0);
        let renew_at = plan.at;
        let mut state = VolumeState::new(
            &spec.volume_id,
            &spec.target_path,
            volume::context_without_tokens(context),
            fingerprint,
        );
        state.volume_mount_group = mount_group.map(str::to_string);
        state.node_id = Some(self.config.node_id.clone());
        state.request = Some(RequestRef {
            namespace: namespace.clone(),
            name: name.clone(),
            phase: RequestPhase::Issued,
        });
        state.not_before = Some(to_timestamp(leaf.not_before));
        state.not_after = Some(to_timestamp(leaf.not_after));
        state.next_renewal = Some(to_timestamp(renew_at));
        state.received_at = Some(to_timestamp(received));
        state.short_certificates = plan.short_streak;
        {
            let store = self.store.clone();
            let dir = dir.clone();
            blocking(move || {
                store.save_state(&state)?;
                dir.clear_pending_key()
            })
            .await?;
        }
        self.scheduler.schedule(&spec.volume_id, renew_at);
        self.metrics
            .observe_issuance(IssuanceKind::First, started.elapsed());
        self.metrics.volume_published(
            &crate::telemetry::metrics::VolumeRef {
                volume_id: &spec.volume_id,
                pod_namespace: &spec.pod.namespace,
                pod_name: &spec.pod.name,
            },
            to_timestamp(leaf.not_after),
            to_timestamp(renew_at),
        );

        // Request hygiene: keep the newest `keep_requests`, delete the rest.
        // It runs after the reply: on a first publish the list almost always
        // finds only the new request, and waiting for it cost the pod one
        // more API round trip (hack/bench P1). A failure is not the pod's
        // problem either; the pod's ownerReference collects leftovers.
        {
            let (client, metrics, config) = (
                self.client.clone(),
                self.metrics.clone(),
                self.config.clone(),
            );
            let volume_id = spec.volume_id.clone();
            let (namespace, name) = (namespace.clone(), name.clone());
            tokio::spawn(async move {
                if let Err(error) =
                    prune_requests(&client, &metrics, &config, &namespace, &volume_id, &name).await
                {
                    tracing::warn!(%volume_id, %error, "could not delete old CertificateRequests");
                }
            });
        }
        tracing::info!(volume_id = %spec.volume_id, request = %format!("{namespace}/{name}"), "volume published");
        Ok(())
    }

    /// A fresh key of the volume's algorithm, made off the async threads
    /// (RSA generation takes a while).
    async fn new_key(&self, spec: &VolumeSpec) -> Result<PrivateKey, PublishError> {
        let algorithm = spec.key.algorithm;
        tokio::task::spawn_blocking(move || PrivateKey::generate(algorithm))
            .await
            .map_err(|e| PublishError::Internal(format!("key generation task failed: {e}")))?
            .map_err(PublishError::from)
    }

    /// When to renew `leaf`, which arrived at `received`, after
    /// `short_streak` certificates in a row too short to renew normally
    /// (see [`schedule::plan`]). When the guard has to step in, the pod gets
    /// a Warning Event naming the issuer and the lifetimes, and the guard
    /// metric counts it.
    fn plan_renewal(
        &self,
        spec: &VolumeSpec,
        leaf: &pki::CertInfo,
        received: std::time::SystemTime,
        short_streak: u32,
    ) -> schedule::Plan {
        let issued = schedule::Issued {
            not_before: leaf.not_before,
            not_after: leaf.not_after,
            received,
        };
        let plan = schedule::plan(
            &issued,
            spec.renew_before,
            &self.config.renewal,
            short_streak,
            rand::random::<f64>(),
        );
        if plan.guarded() {
            self.metrics.renewal_guarded();
            let wait = plan.at.duration_since(received).unwrap_or_default();
            let note = guard_note(spec, &issued, self.config.renewal.min_interval);
            tracing::warn!(volume_id = %spec.volume_id, streak = plan.short_streak, ?wait, "{note}");
            self.pod_event(
                &spec.pod,
                EventType::Warning,
                EVENT_RENEWAL_GUARDED,
                "Renew",
                note,
            );
        }
        plan
    }

    async fn prepare(&self, volume_id: &str) -> Result<crate::store::VolumeDir, PublishError> {
        let store = self.store.clone();
        let id = volume_id.to_string();
        blocking(move || store.prepare(&id)).await
    }

    /// Picks up a request left pending by a timed-out publish or a restart:
    /// same key, same request, no second CertificateRequest. Returns None
    /// when there is nothing usable to resume (the key or request is gone).
    async fn resume(
        &self,
        spec: &VolumeSpec,
        request: RequestRef,
    ) -> Result<
        Option<(
            crate::store::VolumeDir,
            PrivateKey,
            String,
            issuance::Subscription,
        )>,
        PublishError,
    > {
        let dir = self.prepare(&spec.volume_id).await?;
        let pem = {
            let dir = dir.clone();
            blocking(move || dir.read_pending_key()).await?
        };
        let Some(pem) = pem else { return Ok(None) };
        let key = PrivateKey::from_pem(pem.expose())?;
        let sub = self.tracker.subscribe(&request.namespace, &request.name);
        match issuance::get(&self.client, &request.namespace, &request.name).await {
            Ok(Some(existing)) => {
                self.tracker.seed(existing);
                Ok(Some((dir, key, request.name, sub)))
            }
            Ok(None) => {
                // Deleted meanwhile (by hand, or collected): start afresh.
                self.tracker.forget(&request.namespace, &request.name);
                Ok(None)
            }
            Err(e) => {
                self.tracker.forget(&request.namespace, &request.name);
                Err(e.into())
            }
        }
    }

    /// Saves `state` with this request as pending, then creates it.
    async fn create_request(
        &self,
        spec: &VolumeSpec,
        csr_pem: &str,
        name: &str,
        mut state: VolumeState,
    ) -> Result<(), PublishError> {
        let params = RequestParams {
            node_id: &self.config.node_id,
            volume_id: &spec.volume_id,
            pod_namespace: &spec.pod.namespace,
            pod_name: &spec.pod.name,
            pod_uid: &spec.pod.uid,
            csr_pem,
            issuer_ref: IssuerRef {
                name: spec.issuer.name.clone(),
                kind: Some(spec.issuer.kind.clone()),
                group: Some(spec.issuer.group.clone()),
            },
            duration: spec.duration,
            is_ca: spec.is_ca,
            usages: &spec.usages,
            annotations: &spec.annotations,
        };
        let request = issuance::build_request(name, &params);
        state.node_id = Some(self.config.node_id.clone());
        state.request = Some(RequestRef {
            namespace: spec.pod.namespace.clone(),
            name: name.to_string(),
            phase: RequestPhase::Pending,
        });
        let store = self.store.clone();
        blocking(move || store.save_state(&state)).await?;
        issuance::create(&self.request_client(spec)?, &request).await?;
        self.metrics
            .request_created(&RequestKey::new(&spec.pod.namespace, name));
        Ok(())
    }

    /// Moves the request's ready-status series to the decision.
    fn request_decided<T>(&self, namespace: &str, name: &str, outcome: &Result<T, IssuanceError>) {
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

    async fn prune_requests(
        &self,
        namespace: &str,
        volume_id: &str,
        current: &str,
    ) -> Result<(), IssuanceError> {
        prune_requests(
            &self.client,
            &self.metrics,
            &self.config,
            namespace,
            volume_id,
            current,
        )
        .await
    }

    /// Removes every trace of a volume whose publish failed for good.
    async fn discard(&self, spec: &VolumeSpec) {
        if let Err(error) = self
            .delete_volume_requests(&spec.pod.namespace, &spec.volume_id)
            .await
        {
            tracing::warn!(volume_id = %spec.volume_id, %error, "could not delete the volume's CertificateRequests; the pod's ownerReference will collect them");
        }
        let store = self.store.clone();
        let id = spec.volume_id.clone();
        let target = spec.target_path.clone();
        if let Err(error) = blocking(move || store.remove(&id, &target)).await {
            tracing::error!(volume_id = %spec.volume_id, %error, "could not clean up after a failed publish");
        }
    }

    async fn unpublish(&self, req: NodeUnpublishVolumeRequest) -> Result<(), UnpublishError> {
        if req.volume_id.is_empty() {
            return Err(UnpublishError::MissingVolumeId);
        }
        if req.target_path.is_empty() {
            return Err(UnpublishError::MissingTargetPath);
        }
        crate::store::validate_volume_id(&req.volume_id)?;
        volume::check_target_path(&req.target_path).map_err(UnpublishError::BadTargetPath)?;
        let target = self.kubelet_root.check(&req.target_path, None)?;
        // A known volume is unpublished only from the target it was
        // published at; nothing is stopped or touched otherwise.
        if let Ok(state) = self.store.load_state(&req.volume_id)
            && state.target_path != target
        {
            return Err(UnpublishError::OtherTarget {
                volume_id: req.volume_id.clone(),
            });
        }
        // Stop the renewal first, then take the lock, so a renewal that is
        // about to record a failure sees the cancellation and writes nothing.
        self.scheduler.cancel(&req.volume_id);
        if let Some(running) = self
            .renewals
            .lock()
            .expect("renewals lock")
            .remove(&req.volume_id)
        {
            running.cancel();
        }
        self.tokens
            .lock()
            .expect("tokens lock")
            .remove(&req.volume_id);
        let _guard = self.locks.lock(&req.volume_id).await;
        let state = match self.store.load_state(&req.volume_id) {
            Ok(state) => Some(state),
            Err(e) if e.is_not_found() => None,
            Err(e) if e.is_invalid_argument() => return Err(e.into()),
            Err(e) => {
                tracing::warn!(volume_id = %req.volume_id, error = %e, "unreadable node state; removing the volume anyway");
                None
            }
        };
        if let Some(state) = &state {
            let namespace = state
                .context
                .get(volume::kubelet::POD_NAMESPACE)
                .cloned()
                .or_else(|| state.request.as_ref().map(|r| r.namespace.clone()));
            if let Some(namespace) = namespace
                && let Err(error) = self
                    .delete_volume_requests(&namespace, &req.volume_id)
                    .await
            {
                // Unpublish must not hang a pod's deletion on the API: the
                // pod's ownerReference collects the requests anyway.
                tracing::warn!(volume_id = %req.volume_id, %error, "could not delete CertificateRequests on unpublish");
            }
        }
        if let Some(state) = &state
            && state.target_path != target
        {
            return Err(UnpublishError::OtherTarget {
                volume_id: req.volume_id.clone(),
            });
        }
        let store = self.store.clone();
        let id = req.volume_id.clone();
        tokio::task::spawn_blocking(move || store.remove(&id, &target))
            .await
            .map_err(|e| UnpublishError::Task(e.to_string()))??;
        self.metrics.volume_unpublished(&req.volume_id);
        tracing::info!(volume_id = %req.volume_id, "volume unpublished");
        Ok(())
    }
}

fn to_timestamp(time: std::time::SystemTime) -> jiff::Timestamp {
    jiff::Timestamp::try_from(time).unwrap_or(jiff::Timestamp::MAX)
}

/// The files a pod sees, in the names it asked for.
fn build_files(
    spec: &VolumeSpec,
    key: &PrivateKey,
    issued: &issuance::Issued,
) -> Result<Vec<(String, Secret, u32)>, PublishError> {
    let mode = crate::store::default_file_mode(spec.fs_group);
    let mut files = vec![
        (
            spec.certificate_file.clone(),
            Secret::new(issued.chain_pem.as_bytes().to_vec()),
            mode,
        ),
        (
            spec.private_key_file.clone(),
            key.to_pem(spec.key.encoding)?,
            mode,
        ),
        (
            spec.ca_file.clone(),
            Secret::new(issued.ca_pem.as_bytes().to_vec()),
            mode,
        ),
    ];
    if let Some(p12) = &spec.pkcs12 {
        let bytes = pki::keystore::pkcs12(
            key,
            issued.chain_pem.as_bytes(),
            Some(issued.ca_pem.as_bytes()).filter(|ca| !ca.is_empty()),
            p12.password.expose(),
        )
        .map_err(|e| PublishError::Internal(format!("building the PKCS#12 keystore: {e}")))?;
        files.push((p12.filename.clone(), Secret::new(bytes), mode));
    }
    if let Some(name) = &spec.credential_bundle_file {
        files.push((
            name.clone(),
            trust::credential_bundle(key, &issued.chain_pem)?,
            mode,
        ));
    }
    Ok(files)
}

/// Request hygiene: keeps the newest `keep_requests` of the volume's
/// requests (always including `current`) and deletes the rest.
async fn prune_requests(
    client: &Client,
    metrics: &NodeMetrics,
    config: &NodeConfig,
    namespace: &str,
    volume_id: &str,
    current: &str,
) -> Result<(), IssuanceError> {
    let requests = issuance::list_for_volume(client, namespace, &config.node_id, volume_id).await?;
    let keep = config.keep_requests.max(1);
    let mut keep_names: Vec<String> = requests
        .iter()
        .rev()
        .take(keep)
        .map(kube::ResourceExt::name_any)
        .collect();
    if !keep_names.iter().any(|n| n == current) {
        keep_names.pop();
        keep_names.push(current.to_string());
    }
    for request in &requests {
        let name = kube::ResourceExt::name_any(request);
        if !keep_names.contains(&name) {
            issuance::delete_one(client, namespace, &name).await?;
            metrics.request_deleted(&RequestKey::new(namespace, name));
        }
    }
    Ok(())
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_publish_volume(
        &self,
        request: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        let req = request.into_inner();
        let volume_id = req.volume_id.clone();
        match self.publish(req).await {
            Ok(()) => Ok(Response::new(NodePublishVolumeResponse {})),
            Err(e) => Err(status(e.code(), e.to_string(), &volume_id)),
        }
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        let req = request.into_inner();
        let volume_id = req.volume_id.clone();
        match self.unpublish(req).await {
            Ok(()) => Ok(Response::new(NodeUnpublishVolumeResponse {})),
            Err(e) => Err(status(e.code(), e.to_string(), &volume_id)),
        }
    }

    async fn node_get_capabilities(
        &self,
        _: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        use node_service_capability::{Rpc, Type, rpc};
        Ok(Response::new(NodeGetCapabilitiesResponse {
            capabilities: vec![NodeServiceCapability {
                r#type: Some(Type::Rpc(Rpc {
                    r#type: rpc::Type::VolumeMountGroup as i32,
                })),
            }],
        }))
    }

    async fn node_get_info(
        &self,
        _: Request<NodeGetInfoRequest>,
    ) -> Result<Response<NodeGetInfoResponse>, Status> {
        Ok(Response::new(NodeGetInfoResponse {
            node_id: self.config.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: None,
        }))
    }

    async fn node_stage_volume(
        &self,
        _: Request<NodeStageVolumeRequest>,
    ) -> Result<Response<NodeStageVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "NodeStageVolume: cert-csi serves ephemeral inline volumes, which have no staging",
        ))
    }

    async fn node_unstage_volume(
        &self,
        _: Request<NodeUnstageVolumeRequest>,
    ) -> Result<Response<NodeUnstageVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "NodeUnstageVolume: cert-csi serves ephemeral inline volumes, which have no staging",
        ))
    }

    async fn node_get_volume_stats(
        &self,
        _: Request<NodeGetVolumeStatsRequest>,
    ) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        Err(Status::unimplemented(
            "NodeGetVolumeStats is not offered (no GET_VOLUME_STATS capability)",
        ))
    }

    async fn node_expand_volume(
        &self,
        _: Request<NodeExpandVolumeRequest>,
    ) -> Result<Response<NodeExpandVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "NodeExpandVolume: certificate volumes cannot be expanded",
        ))
    }
}
