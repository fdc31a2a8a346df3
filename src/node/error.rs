//! Why a publish or an unpublish failed: each error with the gRPC code the
//! kubelet sees, the `reason` label it counts under, and the Event the pod
//! gets.

use thiserror::Error;
use tonic::Code;

use super::target::TargetError;
use crate::issuance::IssuanceError;
use crate::pki;
use crate::store::{StoreError, StoreErrorKind};
use crate::telemetry::metrics::IssueErrorReason;
use crate::volume::{self, AttributeError};

/// Reasons of the Events the node plugin records on pods.
pub const EVENT_DENIED: &str = "IssuanceDenied";
pub const EVENT_FAILED: &str = "IssuanceFailed";
pub const EVENT_SLOW: &str = "IssuanceSlow";
pub const EVENT_RENEWAL_FAILED: &str = "RenewalFailed";
pub const EVENT_RENEWAL_GUARDED: &str = "RenewalGuarded";
/// A volume attribute that is most likely misspelt, handled as upstream
/// handles it (see `VolumeSpec::unknown_attributes`).
pub const EVENT_UNKNOWN_ATTRIBUTE: &str = "UnknownAttribute";
/// Any other attribute accepted as upstream accepts it but worth fixing.
pub const EVENT_ATTRIBUTE_WARNING: &str = "AttributeWarning";

/// Everything that can stop a publish (or a renewal, which runs the same
/// steps), each mapped to the gRPC code the kubelet and the user see.
#[derive(Debug, Error)]
pub enum PublishError {
    #[error("{0}")]
    Attribute(#[from] AttributeError),
    #[error("{0}")]
    Target(#[from] TargetError),
    #[error(
        "volume_capability: {0}. cert-csi serves filesystem (mount) volumes only; use a CSI inline volume"
    )]
    Capability(&'static str),
    #[error(
        "volume {volume_id} is already published at {existing} with different attributes; ephemeral volume attributes cannot change, recreate the pod"
    )]
    Incompatible { volume_id: String, existing: String },
    #[error(
        "volume {volume_id} belongs to target {existing}; a volume is published at one target only. Unpublish it there first (the kubelet does when the pod goes away)"
    )]
    PublishedElsewhere { volume_id: String, existing: String },
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
    Throttled { waited: std::time::Duration },
    #[error("the node plugin is shutting down; retry after it restarts")]
    ShuttingDown,
    #[error(
        "no issuer for SPIFFE requests: the runtime issuance ConfigMap {config_map} is absent or lacks issuer-name, issuer-kind or issuer-group, and --spiffe-issuer-name is not set; create the ConfigMap (the kubelet retries)"
    )]
    NoIssuer { config_map: String },
    #[error("internal error: {0}")]
    Internal(String),
}

impl PublishError {
    /// Whether the volume's progress (request, pending key, state) is kept
    /// for the next attempt instead of being removed.
    pub(super) fn keeps_progress(&self) -> bool {
        matches!(
            self,
            PublishError::Issuance(IssuanceError::Timeout { .. })
                | PublishError::Throttled { .. }
                | PublishError::ShuttingDown
        )
    }

    /// Whether the request was decided against (denied, failed, unusable)
    /// or deleted, so a retry must make a new one.
    pub(super) fn decided_against(&self) -> bool {
        matches!(
            self,
            PublishError::Issuance(
                IssuanceError::Denied { .. }
                    | IssuanceError::Failed { .. }
                    | IssuanceError::Vanished { .. }
                    | IssuanceError::BadCertificate { .. }
            ) | PublishError::Issued(_)
        )
    }

    pub fn code(&self) -> Code {
        match self {
            PublishError::Attribute(_) | PublishError::Capability(_) | PublishError::Target(_) => {
                Code::InvalidArgument
            }
            PublishError::Incompatible { .. } => Code::AlreadyExists,
            // CSI: published at another target and cannot be at two.
            PublishError::PublishedElsewhere { .. } => Code::FailedPrecondition,
            PublishError::Key(_) => Code::Internal,
            PublishError::Csr(
                pki::CsrError::LiteralSubject { .. } | pki::CsrError::Field { .. },
            ) => Code::InvalidArgument,
            PublishError::Csr(_) => Code::Internal,
            PublishError::Issuance(e) => issuance_code(e),
            PublishError::Issued(_) | PublishError::Internal(_) => Code::Internal,
            PublishError::Store(e) => store_code(e),
            PublishError::Throttled { .. } => Code::DeadlineExceeded,
            PublishError::ShuttingDown | PublishError::NoIssuer { .. } => Code::Unavailable,
        }
    }

    /// The `reason` label this failure counts under; `None` for a shutdown,
    /// which is no failure of the issuance.
    pub fn metric_reason(&self) -> Option<IssueErrorReason> {
        Some(match self {
            PublishError::Issuance(e) => e.metric_reason(),
            PublishError::Issued(_) => IssueErrorReason::Invalid,
            PublishError::Attribute(_)
            | PublishError::Capability(_)
            | PublishError::Target(_)
            | PublishError::Incompatible { .. }
            | PublishError::PublishedElsewhere { .. } => IssueErrorReason::Invalid,
            PublishError::Csr(
                pki::CsrError::LiteralSubject { .. } | pki::CsrError::Field { .. },
            ) => IssueErrorReason::Invalid,
            PublishError::Throttled { .. } => IssueErrorReason::Timeout,
            PublishError::Key(_)
            | PublishError::Csr(_)
            | PublishError::Store(_)
            | PublishError::Internal(_) => IssueErrorReason::Internal,
            PublishError::NoIssuer { .. } => IssueErrorReason::Invalid,
            PublishError::ShuttingDown => return None,
        })
    }

    /// Reason and note of the pod Event for a denied or failed issuance.
    /// The note names the volume, the issuer's verdict and what to do, but
    /// never the request: each attempt makes a request with a new name, and
    /// repeats must fold into one Event series.
    pub(super) fn issuance_event(&self, volume: &str) -> Option<(&'static str, String)> {
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

/// A subject or SAN value the CSR encoder refused is still the user's
/// input: report it under the full attribute key, as the volume parser
/// reports everything else, so the pod's events say which one to fix.
pub(super) fn encoding_error(error: pki::CsrError) -> PublishError {
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
            format!(
                "{} cannot be encoded in a certificate request: {reason}",
                volume::short_quote(&value)
            ),
        ),
        other => PublishError::Csr(other),
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
    Target(#[from] TargetError),
    #[error(
        "target_path: volume {volume_id} is published at another target path on this node; pass the target_path its NodePublishVolume was given. Nothing was unmounted"
    )]
    OtherTarget { volume_id: String },
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
        }
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
