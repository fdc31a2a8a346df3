//! `CertificateRequest`: one CSR sent to one issuer.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::conditions::{self, CertificateRequestCondition, ConditionStatus, reasons, types};
use super::{ApiError, IssuerRef, PemBytes};

/// A request for a signed certificate. The whole spec is immutable once created.
// The printcolumn entries of #[kube] repeat keys by design.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "cert-manager.io",
    version = "v1",
    kind = "CertificateRequest",
    plural = "certificaterequests",
    namespaced,
    status = "CertificateRequestStatus",
    derive = "PartialEq",
    shortname = "cr",
    shortname = "crs",
    category = "cert-manager",
    doc = "A CertificateRequest asks an issuer to sign a PEM CSR.",
    printcolumn(
        name = "Approved",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Approved")].status"#
    ),
    printcolumn(
        name = "Denied",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Denied")].status"#
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(name = "Issuer", type_ = "string", json_path = ".spec.issuerRef.name"),
    printcolumn(name = "Requester", type_ = "string", json_path = ".spec.username"),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].message"#,
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp",
        description = "CreationTimestamp is a timestamp representing the server time when this object was created."
    )
)]
#[serde(rename_all = "camelCase")]
pub struct CertificateRequestSpec {
    /// The PEM-encoded CSR (base64 on the wire, decoded here).
    pub request: PemBytes,
    /// The issuer that should sign the request.
    pub issuer_ref: IssuerRef,
    /// Requested lifetime as a Go duration string (e.g. `2160h`); signers use 90 days when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// Request a CA certificate; adds the `cert sign` usage.
    #[serde(default, rename = "isCA", skip_serializing_if = "Option::is_none")]
    pub is_ca: Option<bool>,
    /// Key usages such as `digital signature` or `server auth`; empty means
    /// `digital signature` + `key encipherment`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usages: Option<Vec<String>>,
    /// Requester's user name, set by the admission webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Requester's UID, set by the admission webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Requester's groups, set by the admission webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<String>>,
    /// Requester's extra attributes, set by the admission webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<BTreeMap<String, Vec<String>>>,
}

/// What the approver and the signer report about a request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateRequestStatus {
    /// `Ready`, `InvalidRequest`, `Approved` and `Denied`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<CertificateRequestCondition>>,
    /// The signed PEM chain, leaf first (base64 on the wire, decoded here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<PemBytes>,
    /// The PEM CA certificate, best effort (base64 on the wire, decoded here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PemBytes>,
    /// When the request failed for good.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_time: Option<Time>,
}

impl CertificateRequestSpec {
    /// The CSR as PEM text.
    pub fn request_pem(&self) -> Result<&str, ApiError> {
        self.request.as_pem_str("spec.request")
    }
}

impl CertificateRequestStatus {
    pub fn conditions(&self) -> &[CertificateRequestCondition] {
        self.conditions.as_deref().unwrap_or_default()
    }

    /// Sets a condition; see [`conditions::set`] for the transition-time rule.
    pub fn set_condition(&mut self, condition: CertificateRequestCondition, now: Time) {
        conditions::set(self.conditions.get_or_insert_with(Vec::new), condition, now);
    }

    /// The signed chain as PEM text, if the signer has written one.
    pub fn certificate_pem(&self) -> Result<Option<&str>, ApiError> {
        non_empty_pem(self.certificate.as_ref(), "status.certificate")
    }

    /// The CA as PEM text, if known.
    pub fn ca_pem(&self) -> Result<Option<&str>, ApiError> {
        non_empty_pem(self.ca.as_ref(), "status.ca")
    }
}

fn non_empty_pem<'a>(
    value: Option<&'a PemBytes>,
    field: &'static str,
) -> Result<Option<&'a str>, ApiError> {
    match value {
        Some(bytes) if !bytes.is_empty() => bytes.as_pem_str(field).map(Some),
        _ => Ok(None),
    }
}

impl CertificateRequest {
    pub fn conditions(&self) -> &[CertificateRequestCondition] {
        self.status
            .as_ref()
            .map(|s| s.conditions())
            .unwrap_or_default()
    }

    pub fn condition(&self, condition_type: &str) -> Option<&CertificateRequestCondition> {
        conditions::find(self.conditions(), condition_type)
    }

    fn has(&self, condition_type: &str, status: ConditionStatus) -> bool {
        conditions::has(self.conditions(), condition_type, status)
    }

    /// Approved=True.
    pub fn is_approved(&self) -> bool {
        self.has(types::APPROVED, ConditionStatus::True)
    }

    /// Denied=True (terminal).
    pub fn is_denied(&self) -> bool {
        self.has(types::DENIED, ConditionStatus::True)
    }

    /// InvalidRequest=True (terminal).
    pub fn is_invalid_request(&self) -> bool {
        self.has(types::INVALID_REQUEST, ConditionStatus::True)
    }

    /// Ready=True, whatever the reason.
    pub fn is_ready(&self) -> bool {
        self.has(types::READY, ConditionStatus::True)
    }

    /// The reason on the Ready condition, if there is one.
    pub fn ready_reason(&self) -> Option<&str> {
        self.condition(types::READY)
            .and_then(|c| c.reason.as_deref())
    }

    /// Ready=False with reason `Failed` (terminal).
    pub fn is_failed(&self) -> bool {
        self.has(types::READY, ConditionStatus::False)
            && self.ready_reason() == Some(reasons::FAILED)
    }

    /// Ready=True with reason `Issued`: the signer is done and
    /// `status.certificate` holds the chain.
    pub fn is_issued(&self) -> bool {
        self.is_ready() && self.ready_reason() == Some(reasons::ISSUED)
    }

    /// Whether no signer will touch this request again: issued, failed,
    /// denied or invalid.
    pub fn is_finished(&self) -> bool {
        self.is_issued() || self.is_failed() || self.is_denied() || self.is_invalid_request()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_with(conditions: Vec<CertificateRequestCondition>) -> CertificateRequest {
        let mut request = CertificateRequest::new(
            "r",
            CertificateRequestSpec {
                request: PemBytes::from("csr"),
                issuer_ref: IssuerRef::issuer("ca"),
                ..Default::default()
            },
        );
        request.status = Some(CertificateRequestStatus {
            conditions: Some(conditions),
            ..Default::default()
        });
        request
    }

    fn cond(type_: &str, status: ConditionStatus, reason: &str) -> CertificateRequestCondition {
        CertificateRequestCondition::new(type_, status, reason, "")
    }

    #[test]
    fn predicates_on_an_empty_request() {
        let mut request = request_with(vec![]);
        request.status = None;
        assert!(!request.is_approved());
        assert!(!request.is_denied());
        assert!(!request.is_ready());
        assert!(!request.is_finished());
        assert_eq!(request.ready_reason(), None);
    }

    #[test]
    fn predicates_follow_conditions() {
        let approved_pending = request_with(vec![
            cond(
                types::APPROVED,
                ConditionStatus::True,
                reasons::CERT_MANAGER_APPROVER,
            ),
            cond(types::READY, ConditionStatus::False, reasons::PENDING),
        ]);
        assert!(approved_pending.is_approved());
        assert!(!approved_pending.is_ready());
        assert!(!approved_pending.is_failed());
        assert!(!approved_pending.is_finished());
        assert_eq!(approved_pending.ready_reason(), Some(reasons::PENDING));

        let issued = request_with(vec![cond(
            types::READY,
            ConditionStatus::True,
            reasons::ISSUED,
        )]);
        assert!(issued.is_ready() && issued.is_issued() && issued.is_finished());

        let failed = request_with(vec![cond(
            types::READY,
            ConditionStatus::False,
            reasons::FAILED,
        )]);
        assert!(failed.is_failed() && !failed.is_issued() && failed.is_finished());

        let denied = request_with(vec![
            cond(types::DENIED, ConditionStatus::True, "policy"),
            cond(types::READY, ConditionStatus::False, reasons::DENIED),
        ]);
        assert!(
            denied.is_denied()
                && !denied.is_approved()
                && !denied.is_failed()
                && denied.is_finished()
        );

        let invalid = request_with(vec![cond(
            types::INVALID_REQUEST,
            ConditionStatus::True,
            "BadCSR",
        )]);
        assert!(invalid.is_invalid_request() && invalid.is_finished());

        // A False Approved condition is not an approval.
        let odd = request_with(vec![cond(types::APPROVED, ConditionStatus::False, "x")]);
        assert!(!odd.is_approved());
    }

    #[test]
    fn status_pem_accessors() {
        let status = CertificateRequestStatus {
            certificate: Some(PemBytes::from("leaf")),
            ca: Some(PemBytes::default()),
            ..Default::default()
        };
        assert_eq!(status.certificate_pem().unwrap(), Some("leaf"));
        assert_eq!(status.ca_pem().unwrap(), None);
    }

    #[test]
    fn set_condition_creates_the_list() {
        let mut status = CertificateRequestStatus::default();
        let now = Time(jiff::Timestamp::from_second(7).unwrap());
        status.set_condition(
            cond(types::READY, ConditionStatus::False, reasons::PENDING),
            now.clone(),
        );
        assert_eq!(status.conditions()[0].last_transition_time, Some(now));
    }
}
