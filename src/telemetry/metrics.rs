//! Prometheus metrics of the node plugin and the controller.
//!
//! Callers never touch label sets: every change goes through a method named
//! after what happened (`volume_published`, `request_failed`, …), so a label
//! cannot be misspelt at a call site and the set of label values stays
//! bounded by the enums below.
//!
//! Names follow cert-manager where it has one: `certmanager_csi_*` from its
//! CSI library on the node, `certmanager_certificate_*` from its controller.
//! Our own additions are prefixed `cert_csi_`.
//!
//! # Cardinality
//! Most series have a fixed, small label set. Three families are per object
//! by nature, and each series goes away with its object:
//! - per volume (`..._expiration_timestamp_seconds`, `..._renewal_timestamp_seconds`
//!   on the node): labelled by a 16-hex hash of the volume id (the same hash
//!   as the `csi.cert-manager.io/volume-id-hash` label on the volume's
//!   CertificateRequests) plus the pod's namespace and name, never by the raw
//!   68-character id; removed by [`NodeMetrics::volume_unpublished`].
//! - per CertificateRequest (`certmanager_csi_certificate_request_ready_status`):
//!   only requests the node still keeps in the API (in flight, or the
//!   `--keep-requests` newest per volume); removed by
//!   [`NodeMetrics::request_deleted`].
//! - per Certificate (`certmanager_certificate_*` on the controller): removed by
//!   [`ControllerMetrics::certificate_removed`].

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::series::NodeSeries;

/// The `Content-Type` of [`encode`]'s output.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Renders every metric in `registry` in the OpenMetrics text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail; an error here would be a bug in the
    // encoder, and a half-written scrape is still more useful than none.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::error!(error = %e, "cannot encode metrics");
    }
    out
}

/// Gives a label enum its exact spelling on the wire (the derive would use
/// the Rust variant name, and cert-manager's values are lowercase).
macro_rules! label_value {
    ($ty:ty { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text),+
                }
            }
        }
        impl EncodeLabelValue for $ty {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                std::fmt::Write::write_str(encoder, self.as_str())
            }
        }
    };
}

label_value!(IssueErrorReason {
    Denied => "denied",
    Failed => "failed",
    Timeout => "timeout",
    Api => "api",
    Invalid => "invalid",
    Internal => "internal",
});
label_value!(IssuanceKind { First => "first", Renewal => "renewal" });
label_value!(ReadyCondition { True => "True", False => "False", Unknown => "Unknown" });
label_value!(SignerIssuerKind { Issuer => "Issuer", ClusterIssuer => "ClusterIssuer" });
label_value!(SignerResult {
    Issued => "issued",
    Failed => "failed",
    IssuerNotReady => "issuer_not_ready",
});
label_value!(ApprovalOutcome { Approved => "approved", Denied => "denied" });

/// Why an issuance failed; the `reason` label of
/// `certmanager_csi_issue_errors_total`. A closed set, so the label cannot grow.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum IssueErrorReason {
    /// The approver denied the request.
    Denied,
    /// The issuer marked the request failed (or it vanished before issuance).
    Failed,
    /// Nothing decided the request before the publish deadline.
    Timeout,
    /// The Kubernetes API refused a call.
    Api,
    /// The issued certificate or the request parameters were unusable.
    Invalid,
    /// A local failure: key generation, disk, mounts.
    Internal,
}

impl IssueErrorReason {
    pub const ALL: [IssueErrorReason; 6] = [
        Self::Denied,
        Self::Failed,
        Self::Timeout,
        Self::Api,
        Self::Invalid,
        Self::Internal,
    ];
}

/// First issuance of a volume, or a renewal; the `kind` label of the latency
/// histogram.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum IssuanceKind {
    First,
    Renewal,
}

/// The status of a `Ready` condition, as cert-manager's `condition` label
/// spells it.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ReadyCondition {
    True,
    False,
    Unknown,
}

impl ReadyCondition {
    pub const ALL: [ReadyCondition; 3] = [Self::True, Self::False, Self::Unknown];

    /// Parses a condition status (`"True"`, `"False"`, anything else is
    /// Unknown, as Kubernetes treats it).
    pub fn from_status(status: &str) -> Self {
        match status {
            "True" => Self::True,
            "False" => Self::False,
            _ => Self::Unknown,
        }
    }
}

/// The pod a volume belongs to. `volume_id` is the kubelet's id; only its
/// hash reaches a label.
#[derive(Clone, Debug)]
pub struct VolumeRef<'a> {
    pub volume_id: &'a str,
    pub pod_namespace: &'a str,
    pub pod_name: &'a str,
}

/// A CertificateRequest by namespace and name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct RequestKey {
    pub namespace: String,
    pub name: String,
}

impl RequestKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: IssueErrorReason,
}

/// The RSA size of a key-pool series (one of `node::keypool::POOLED_RSA_BITS`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeySizeLabels {
    key_size: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: IssuanceKind,
}

type FloatGauge = Gauge<f64, AtomicU64>;
type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn seconds(at: jiff::Timestamp) -> f64 {
    at.as_millisecond() as f64 / 1000.0
}

pub(super) use crate::sync::lock;

/// The node plugin's metrics. Cheap to clone; clones share the series.
#[derive(Clone)]
pub struct NodeMetrics {
    issue_requests: Counter,
    issue_errors: Family<ReasonLabels, Counter>,
    /// The per-volume and per-request series (see [`super::series`]).
    series: NodeSeries,
    issuance_duration: HistogramFamily<KindLabels>,
    queue_depth: Gauge,
    renewal_failures: Counter,
    renewals_guarded: Counter,
    unknown_attributes: Counter,
    key_pool_hits: Family<KeySizeLabels, Counter>,
    key_pool_misses: Family<KeySizeLabels, Counter>,
    key_pool_keys: Family<KeySizeLabels, Gauge>,
}

fn issuance_histogram() -> Histogram {
    // 50 ms (a local signer) to ~100 s (a slow external issuer); the
    // publish deadline is 60 s by default, so the top buckets catch the
    // requests that nearly timed out.
    Histogram::new(exponential_buckets(0.05, 2.0, 12))
}

impl NodeMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            issue_requests: Counter::default(),
            issue_errors: Family::default(),
            series: NodeSeries::default(),
            issuance_duration: Family::new_with_constructor(issuance_histogram as fn() -> _),
            queue_depth: Gauge::default(),
            renewal_failures: Counter::default(),
            renewals_guarded: Counter::default(),
            unknown_attributes: Counter::default(),
            key_pool_hits: Family::default(),
            key_pool_misses: Family::default(),
            key_pool_keys: Family::default(),
        };
        // Every reason and kind exists from the start at zero, so `rate()`
        // and alerts work before the first failure.
        for reason in IssueErrorReason::ALL {
            let _ = metrics.issue_errors.get_or_create(&ReasonLabels { reason });
        }
        for kind in [IssuanceKind::First, IssuanceKind::Renewal] {
            let _ = metrics
                .issuance_duration
                .get_or_create(&KindLabels { kind });
        }
        registry.register(
            "certmanager_csi_issue_requests",
            "CertificateRequests created by the node plugin",
            metrics.issue_requests.clone(),
        );
        registry.register(
            "certmanager_csi_issue_errors",
            "Failed issuances, by reason (denied, failed, timeout, api, invalid, internal)",
            metrics.issue_errors.clone(),
        );
        // Also writes the managed volume and request counts, which are the
        // sizes of its maps.
        registry.register_collector(Box::new(metrics.series.clone()));
        registry.register(
            "cert_csi_issuance_duration_seconds",
            "Time from key generation to a written certificate, by kind (first, renewal)",
            metrics.issuance_duration.clone(),
        );
        registry.register(
            "cert_csi_issuance_queue_depth",
            "Issuances waiting for the node-wide rate limit",
            metrics.queue_depth.clone(),
        );
        registry.register(
            "cert_csi_renewal_failures",
            "Renewals that failed; each is retried with backoff",
            metrics.renewal_failures.clone(),
        );
        registry.register(
            "cert_csi_renewals_guarded",
            "Certificates too short to renew normally, whose renewal the guard delayed to the minimum interval or beyond",
            metrics.renewals_guarded.clone(),
        );
        registry.register(
            "cert_csi_unknown_attributes",
            "Misspelt or unknown volume attributes met by a first publish and handled as upstream handles them (ignored, or copied as annotations); --strict-attributes refuses them instead",
            metrics.unknown_attributes.clone(),
        );
        registry.register(
            "cert_csi_rsa_key_pool_hits",
            "First publishes that took a ready RSA key from the pool, by key size",
            metrics.key_pool_hits.clone(),
        );
        registry.register(
            "cert_csi_rsa_key_pool_misses",
            "First publishes that found no ready RSA key and made one, by key size",
            metrics.key_pool_misses.clone(),
        );
        registry.register(
            "cert_csi_rsa_key_pool_keys",
            "RSA keys ready in the pool, by key size",
            metrics.key_pool_keys.clone(),
        );
        metrics
    }

    /// A first publish asked the RSA key pool for a `bits` key and got one
    /// (`hit`) or not.
    pub fn key_pool_taken(&self, bits: u32, hit: bool) {
        let family = if hit {
            &self.key_pool_hits
        } else {
            &self.key_pool_misses
        };
        family
            .get_or_create(&KeySizeLabels { key_size: bits })
            .inc();
    }

    /// The RSA key pool holds `depth` keys of `bits`.
    pub fn key_pool_depth(&self, bits: u32, depth: usize) {
        self.key_pool_keys
            .get_or_create(&KeySizeLabels { key_size: bits })
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    /// A publish met a volume attribute that is most likely misspelt.
    pub fn unknown_attribute(&self) {
        self.unknown_attributes.inc();
    }

    /// The renewal guard delayed a volume whose certificate was too short.
    pub fn renewal_guarded(&self) {
        self.renewals_guarded.inc();
    }

    /// A CertificateRequest was created. Its ready status starts Unknown.
    pub fn request_created(&self, request: &RequestKey) {
        self.issue_requests.inc();
        self.request_condition(request, ReadyCondition::Unknown);
    }

    /// A kept request's Ready condition changed (or was seen after a restart).
    /// Requests not announced with [`Self::request_created`] are adopted, so
    /// recovery after a restart can call this alone.
    pub fn request_condition(&self, request: &RequestKey, condition: ReadyCondition) {
        self.series
            .set_request(&request.namespace, &request.name, condition);
    }

    /// The request was deleted from the API (cleanup of old requests, or the
    /// volume went away): its series go with it.
    pub fn request_deleted(&self, request: &RequestKey) {
        self.series
            .remove_request(&request.namespace, &request.name);
    }

    /// A first issuance failed. For renewals use [`Self::renewal_failed`]
    /// instead (not both).
    pub fn request_failed(&self, reason: IssueErrorReason) {
        self.issue_errors
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// A renewal failed: counted both as an issue error and as a renewal
    /// failure.
    pub fn renewal_failed(&self, reason: IssueErrorReason) {
        self.request_failed(reason);
        self.renewal_failures.inc();
    }

    /// An issuance completed in `duration` (key generation to written files).
    pub fn observe_issuance(&self, kind: IssuanceKind, duration: Duration) {
        self.issuance_duration
            .get_or_create(&KindLabels { kind })
            .observe(duration.as_secs_f64());
    }

    /// A volume holds a certificate valid until `not_after`, to be renewed at
    /// `renew_at`. Call on publish, after each renewal, and for each volume
    /// recovered at start; repeated calls update the same series.
    pub fn volume_published(
        &self,
        volume: &VolumeRef<'_>,
        not_after: jiff::Timestamp,
        renew_at: jiff::Timestamp,
    ) {
        self.series.set_volume(
            &crate::store::id_hash(volume.volume_id),
            volume.pod_namespace,
            volume.pod_name,
            seconds(not_after),
            seconds(renew_at),
        );
    }

    /// The volume was unpublished: its per-volume series are removed.
    /// Unknown ids are ignored (unpublish is retried by the kubelet).
    pub fn volume_unpublished(&self, volume_id: &str) {
        self.series.remove_volume(&crate::store::id_hash(volume_id));
    }

    /// How many issuances wait for the node-wide rate limit right now.
    pub fn set_queue_depth(&self, depth: usize) {
        self.queue_depth
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }
}

/// The issuer kinds this project's signer serves; the `issuer_kind` label of
/// the signer counter.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum SignerIssuerKind {
    Issuer,
    ClusterIssuer,
}

/// What the signer did with one approved request.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum SignerResult {
    /// A certificate was written to the request's status.
    Issued,
    /// The request was marked Failed (bad CSR, CA unusable, …).
    Failed,
    /// The issuer was not ready; the request waits.
    IssuerNotReady,
}

/// What the approver decided.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ApprovalOutcome {
    Approved,
    Denied,
}

/// A Certificate and the issuer it names; the labels of cert-manager's
/// per-Certificate series.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateRef<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub issuer_name: &'a str,
    pub issuer_kind: &'a str,
    pub issuer_group: &'a str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertificateLabels {
    name: String,
    namespace: String,
    issuer_name: String,
    issuer_kind: String,
    issuer_group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertificateReadyLabels {
    name: String,
    namespace: String,
    condition: ReadyCondition,
    issuer_name: String,
    issuer_kind: String,
    issuer_group: String,
}

impl CertificateLabels {
    fn ready(&self, condition: ReadyCondition) -> CertificateReadyLabels {
        CertificateReadyLabels {
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            condition,
            issuer_name: self.issuer_name.clone(),
            issuer_kind: self.issuer_kind.clone(),
            issuer_group: self.issuer_group.clone(),
        }
    }
}

/// The times cert-manager's collector reports for a Certificate, from its
/// status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CertificateTimes {
    pub not_before: Option<jiff::Timestamp>,
    pub not_after: Option<jiff::Timestamp>,
    pub renewal: Option<jiff::Timestamp>,
}

/// The `controller` label of `certmanager_controller_sync_call_count`:
/// cert-manager's name where one of its controllers does the same work.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum SyncController {
    Approver,
    Signer,
    Issuers,
    ClusterIssuers,
    Certificates,
}

label_value!(SyncController {
    Approver => "certificaterequests-approver",
    Signer => "certificaterequests-issuer",
    Issuers => "issuers",
    ClusterIssuers => "clusterissuers",
    Certificates => "certificates",
});

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SyncLabels {
    controller: SyncController,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SignerLabels {
    issuer_kind: SignerIssuerKind,
    result: SignerResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApproverLabels {
    decision: ApprovalOutcome,
}

/// The controller's metrics. Cheap to clone; clones share the series.
#[derive(Clone)]
pub struct ControllerMetrics {
    expiration: Family<CertificateLabels, FloatGauge>,
    not_after: Family<CertificateLabels, FloatGauge>,
    not_before: Family<CertificateLabels, FloatGauge>,
    renewal: Family<CertificateLabels, FloatGauge>,
    ready: Family<CertificateReadyLabels, Gauge>,
    /// Gauges, not counters: an OpenMetrics counter's samples must end in
    /// `_total`, and cert-manager's samples are named without it.
    sync_calls: Family<SyncLabels, Gauge>,
    sync_errors: Family<SyncLabels, Gauge>,
    issuers: super::issuer_status::IssuerStores,
    signer: Family<SignerLabels, Counter>,
    approver: Family<ApproverLabels, Counter>,
    /// (namespace, name) → the labels last written, so a changed issuer
    /// reference or a deletion removes exactly the old series.
    certificates: Arc<Mutex<HashMap<(String, String), CertificateLabels>>>,
}

impl ControllerMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            expiration: Family::default(),
            not_after: Family::default(),
            not_before: Family::default(),
            renewal: Family::default(),
            ready: Family::default(),
            sync_calls: Family::default(),
            sync_errors: Family::default(),
            issuers: Default::default(),
            signer: Family::default(),
            approver: Family::default(),
            certificates: Arc::default(),
        };
        for issuer_kind in [SignerIssuerKind::Issuer, SignerIssuerKind::ClusterIssuer] {
            for result in [
                SignerResult::Issued,
                SignerResult::Failed,
                SignerResult::IssuerNotReady,
            ] {
                let _ = metrics.signer.get_or_create(&SignerLabels {
                    issuer_kind,
                    result,
                });
            }
        }
        for decision in [ApprovalOutcome::Approved, ApprovalOutcome::Denied] {
            let _ = metrics.approver.get_or_create(&ApproverLabels { decision });
        }
        registry.register(
            "certmanager_certificate_expiration_timestamp_seconds",
            "notAfter of each Certificate's current certificate, in Unix seconds",
            metrics.expiration.clone(),
        );
        for (name, help, family) in [
            (
                "certmanager_certificate_not_after_timestamp_seconds",
                "status.notAfter of each Certificate, in Unix seconds",
                &metrics.not_after,
            ),
            (
                "certmanager_certificate_not_before_timestamp_seconds",
                "status.notBefore of each Certificate, in Unix seconds",
                &metrics.not_before,
            ),
            (
                "certmanager_certificate_renewal_timestamp_seconds",
                "status.renewalTime of each Certificate, in Unix seconds",
                &metrics.renewal,
            ),
        ] {
            registry.register(name, help, family.clone());
        }
        registry.register(
            "certmanager_controller_sync_call_count",
            "Reconciles started, by controller",
            metrics.sync_calls.clone(),
        );
        registry.register(
            "certmanager_controller_sync_error_count",
            "Reconciles that failed, by controller",
            metrics.sync_errors.clone(),
        );
        for controller in [
            SyncController::Approver,
            SyncController::Signer,
            SyncController::Issuers,
            SyncController::ClusterIssuers,
            SyncController::Certificates,
        ] {
            let _ = metrics.sync_calls.get_or_create(&SyncLabels { controller });
            let _ = metrics
                .sync_errors
                .get_or_create(&SyncLabels { controller });
        }
        registry.register_collector(Box::new(metrics.issuers.clone()));
        registry.register(
            "certmanager_certificate_ready_status",
            "Ready condition of each Certificate: 1 for the current condition, 0 for the others",
            metrics.ready.clone(),
        );
        registry.register(
            "cert_csi_signer_requests",
            "CertificateRequests the signer handled, by issuer kind and result",
            metrics.signer.clone(),
        );
        registry.register(
            "cert_csi_approver_decisions",
            "Approval decisions on CertificateRequests",
            metrics.approver.clone(),
        );
        metrics
    }

    /// The Certificate was reconciled: record its readiness and the times
    /// its status holds. A time the status lacks has no series (where
    /// cert-manager reports 0, which an expiry alert would read as long
    /// expired).
    pub fn certificate_observed(
        &self,
        certificate: &CertificateRef<'_>,
        times: CertificateTimes,
        ready: ReadyCondition,
    ) {
        let labels = CertificateLabels {
            name: certificate.name.to_owned(),
            namespace: certificate.namespace.to_owned(),
            issuer_name: certificate.issuer_name.to_owned(),
            issuer_kind: certificate.issuer_kind.to_owned(),
            issuer_group: certificate.issuer_group.to_owned(),
        };
        let key = (labels.namespace.clone(), labels.name.clone());
        let mut certificates = lock(&self.certificates);
        if let Some(old) = certificates.insert(key, labels.clone())
            && old != labels
        {
            self.remove_series(&old);
        }
        drop(certificates);
        for condition in ReadyCondition::ALL {
            self.ready
                .get_or_create(&labels.ready(condition))
                .set(i64::from(condition == ready));
        }
        for (family, at) in [
            (&self.expiration, times.not_after),
            (&self.not_after, times.not_after),
            (&self.not_before, times.not_before),
            (&self.renewal, times.renewal),
        ] {
            match at {
                Some(at) => {
                    family.get_or_create(&labels).set(seconds(at));
                }
                None => {
                    family.remove(&labels);
                }
            }
        }
    }

    /// A controller loop starts one reconcile.
    pub fn sync_call(&self, controller: SyncController) {
        self.sync_calls
            .get_or_create(&SyncLabels { controller })
            .inc();
    }

    /// A reconcile of that loop failed.
    pub fn sync_error(&self, controller: SyncController) {
        self.sync_errors
            .get_or_create(&SyncLabels { controller })
            .inc();
    }

    /// Where `certmanager_issuer_ready_status` and
    /// `certmanager_clusterissuer_ready_status` are read from at scrape time.
    pub fn issuer_stores(&self) -> &super::issuer_status::IssuerStores {
        &self.issuers
    }

    /// The Certificate was deleted: its series are removed.
    pub fn certificate_removed(&self, namespace: &str, name: &str) {
        let removed = lock(&self.certificates).remove(&(namespace.to_owned(), name.to_owned()));
        if let Some(labels) = removed {
            self.remove_series(&labels);
        }
    }

    fn remove_series(&self, labels: &CertificateLabels) {
        for family in [
            &self.expiration,
            &self.not_after,
            &self.not_before,
            &self.renewal,
        ] {
            family.remove(labels);
        }
        for condition in ReadyCondition::ALL {
            self.ready.remove(&labels.ready(condition));
        }
    }

    /// The signer finished with one request.
    pub fn signer_handled(&self, issuer_kind: SignerIssuerKind, result: SignerResult) {
        self.signer
            .get_or_create(&SignerLabels {
                issuer_kind,
                result,
            })
            .inc();
    }

    /// The approver set Approved or Denied on a request. Abstentions are not
    /// counted: they are not decisions.
    pub fn approver_decided(&self, outcome: ApprovalOutcome) {
        self.approver
            .get_or_create(&ApproverLabels { decision: outcome })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(registry: &Registry, prefix: &str) -> Vec<String> {
        encode(registry)
            .lines()
            .filter(|l| l.starts_with(prefix))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn reasons_render_lowercase_and_start_at_zero() {
        let mut registry = Registry::default();
        let _metrics = NodeMetrics::register(&mut registry);
        let errors = lines(&registry, "certmanager_csi_issue_errors_total");
        assert_eq!(errors.len(), 6, "{errors:?}");
        for reason in ["denied", "failed", "timeout", "api", "invalid", "internal"] {
            let want = format!("certmanager_csi_issue_errors_total{{reason=\"{reason}\"}} 0");
            assert!(errors.contains(&want), "missing {want} in {errors:?}");
        }
    }

    #[test]
    fn unknown_attributes_are_counted_from_zero() {
        let mut registry = Registry::default();
        let metrics = NodeMetrics::register(&mut registry);
        assert_eq!(
            lines(&registry, "cert_csi_unknown_attributes_total"),
            ["cert_csi_unknown_attributes_total 0"]
        );
        metrics.unknown_attribute();
        metrics.unknown_attribute();
        assert_eq!(
            lines(&registry, "cert_csi_unknown_attributes_total"),
            ["cert_csi_unknown_attributes_total 2"]
        );
    }

    #[test]
    fn republishing_a_volume_keeps_one_series() {
        let mut registry = Registry::default();
        let metrics = NodeMetrics::register(&mut registry);
        let volume = VolumeRef {
            volume_id: "csi-abc",
            pod_namespace: "ns",
            pod_name: "p",
        };
        let t = jiff::Timestamp::from_second(1_000).unwrap();
        metrics.volume_published(&volume, t, t);
        metrics.volume_published(&volume, t, t);
        assert_eq!(
            lines(&registry, "certmanager_csi_managed_volume_count"),
            ["certmanager_csi_managed_volume_count 1"]
        );
        assert_eq!(
            lines(&registry, "certmanager_csi_certificate_request_expiration").len(),
            1
        );
        metrics.volume_unpublished("csi-abc");
        metrics.volume_unpublished("csi-abc");
        assert_eq!(
            lines(&registry, "certmanager_csi_managed_volume_count"),
            ["certmanager_csi_managed_volume_count 0"]
        );
    }

    #[test]
    fn volume_series_carry_the_hash_and_the_pod() {
        let mut registry = Registry::default();
        let metrics = NodeMetrics::register(&mut registry);
        let volume = VolumeRef {
            volume_id: "csi-abc",
            pod_namespace: "team",
            pod_name: "web-0",
        };
        let hash = crate::store::id_hash("csi-abc");
        metrics.volume_published(
            &volume,
            jiff::Timestamp::from_second(2_000).unwrap(),
            jiff::Timestamp::from_second(1_500).unwrap(),
        );
        let labels =
            format!("{{volume_id_hash=\"{hash}\",pod_namespace=\"team\",pod_name=\"web-0\"}}");
        assert_eq!(
            lines(&registry, super::super::series::EXPIRATION),
            [format!(
                "{}{labels} 2000.0",
                super::super::series::EXPIRATION
            )]
        );
        assert_eq!(
            lines(&registry, super::super::series::RENEWAL),
            [format!("{}{labels} 1500.0", super::super::series::RENEWAL)]
        );
        metrics.volume_unpublished("csi-abc");
        assert!(lines(&registry, super::super::series::EXPIRATION).is_empty());
        // The family stays described with no series, as an empty Family is.
        assert!(encode(&registry).contains(&format!(
            "# TYPE {} gauge",
            super::super::series::EXPIRATION
        )));
    }

    #[test]
    fn request_series_follow_the_request() {
        let mut registry = Registry::default();
        let metrics = NodeMetrics::register(&mut registry);
        let ready = super::super::series::READY;
        let key = RequestKey::new("team", "web-0-abc");
        let line = |condition: &str, value: u8| {
            format!(
                "{ready}{{name=\"web-0-abc\",namespace=\"team\",condition=\"{condition}\"}} {value}"
            )
        };
        metrics.request_created(&key);
        assert_eq!(
            lines(&registry, ready),
            [line("True", 0), line("False", 0), line("Unknown", 1)]
        );
        metrics.request_condition(&key, ReadyCondition::True);
        assert_eq!(
            lines(&registry, ready),
            [line("True", 1), line("False", 0), line("Unknown", 0)]
        );
        assert_eq!(
            lines(
                &registry,
                "certmanager_csi_managed_certificate_request_count"
            ),
            ["certmanager_csi_managed_certificate_request_count 1"]
        );
        metrics.request_deleted(&key);
        metrics.request_deleted(&key);
        assert!(lines(&registry, ready).is_empty());
        assert_eq!(
            lines(
                &registry,
                "certmanager_csi_managed_certificate_request_count"
            ),
            ["certmanager_csi_managed_certificate_request_count 0"]
        );
        assert_eq!(
            lines(&registry, "certmanager_csi_issue_requests_total"),
            ["certmanager_csi_issue_requests_total 1"]
        );
    }

    #[test]
    fn changed_issuer_reference_replaces_the_series() {
        let mut registry = Registry::default();
        let metrics = ControllerMetrics::register(&mut registry);
        let mut cert = CertificateRef {
            namespace: "ns",
            name: "c",
            issuer_name: "old",
            issuer_kind: "Issuer",
            issuer_group: "cert-manager.io",
        };
        metrics.certificate_observed(&cert, CertificateTimes::default(), ReadyCondition::False);
        cert.issuer_name = "new";
        metrics.certificate_observed(&cert, CertificateTimes::default(), ReadyCondition::True);
        let ready = lines(&registry, "certmanager_certificate_ready_status");
        assert_eq!(ready.len(), 3, "{ready:?}");
        assert!(ready.iter().all(|l| l.contains("issuer_name=\"new\"")));
        assert!(
            lines(&registry, "certmanager_certificate_expiration").is_empty(),
            "no certificate yet, so no expiry series"
        );
    }
}
