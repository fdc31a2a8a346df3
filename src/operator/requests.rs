//! `cert-csi approve|deny` and `cert-csi renew`, as cmctl does them:
//! - approve or deny sets the request's `Approved` or `Denied` condition
//!   (cmctl's default reason `KubectlCertManager`) with a guarded status
//!   write, and refuses a request that is already decided, since a decision
//!   is final in cert-manager;
//! - renew sets a Certificate's `Issuing` condition with reason
//!   `ManuallyTriggered`, which the certificates loop (or cert-manager's)
//!   acts on like any other trigger.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Api;
use kube::api::PostParams;
use thiserror::Error;

use crate::api::conditions::{ConditionStatus, types};
use crate::api::{
    Certificate, CertificateCondition, CertificateRequest, CertificateRequestCondition,
};

/// cmctl's reason for a manual decision.
pub const DEFAULT_REASON: &str = "KubectlCertManager";
/// cert-manager's reason for a manually triggered issuance.
pub const RENEW_REASON: &str = "ManuallyTriggered";
pub const RENEW_MESSAGE: &str = "Certificate re-issuance manually triggered";

#[derive(Debug, Error)]
pub enum DecisionError {
    #[error("certificaterequest {namespace}/{name} not found")]
    NotFound { namespace: String, name: String },
    #[error(
        "certificaterequest {namespace}/{name} is already {decided}; a decision cannot be changed (create a new request instead)"
    )]
    AlreadyDecided {
        namespace: String,
        name: String,
        decided: &'static str,
    },
    #[error("--reason is empty; give a CamelCase reason such as {DEFAULT_REASON}")]
    EmptyReason,
    #[error("{what} certificaterequest {namespace}/{name}: {source}")]
    Api {
        what: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// Approves (`approve`) or denies a request.
pub async fn decide(
    client: kube::Client,
    namespace: &str,
    name: &str,
    approve: bool,
    reason: &str,
    message: &str,
) -> Result<(), DecisionError> {
    if reason.trim().is_empty() {
        return Err(DecisionError::EmptyReason);
    }
    let api: Api<CertificateRequest> = Api::namespaced(client, namespace);
    let api_err = |what, source| DecisionError::Api {
        what,
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        source,
    };
    for _ in 0..3 {
        let mut request = match api.get_opt(name).await {
            Ok(Some(r)) => r,
            Ok(None) => {
                return Err(DecisionError::NotFound {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                });
            }
            Err(e) => return Err(api_err("reading", e)),
        };
        for (type_, decided) in [(types::APPROVED, "approved"), (types::DENIED, "denied")] {
            if request.condition(type_).is_some() {
                return Err(DecisionError::AlreadyDecided {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    decided,
                });
            }
        }
        let type_ = if approve {
            types::APPROVED
        } else {
            types::DENIED
        };
        let status = request.status.get_or_insert_with(Default::default);
        status.set_condition(
            CertificateRequestCondition::new(type_, ConditionStatus::True, reason, message),
            Time(jiff::Timestamp::now()),
        );
        match api
            .replace_status(name, &PostParams::default(), &request)
            .await
        {
            Ok(_) => return Ok(()),
            // Changed since read (the signer, say): read and check again.
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(api_err("updating", e)),
        }
    }
    Err(api_err("updating", kept_changing("request")))
}

#[derive(Debug, Error)]
pub enum RenewError {
    #[error("certificate {namespace}/{name} not found")]
    NotFound { namespace: String, name: String },
    #[error("{what} certificate {namespace}/{name}: {source}")]
    Api {
        what: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// Whether `renew` wrote the trigger or found an issuance under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    Triggered,
    AlreadyIssuing,
}

/// Marks a Certificate for re-issuance now.
pub async fn renew(
    client: kube::Client,
    namespace: &str,
    name: &str,
) -> Result<Renewal, RenewError> {
    let api: Api<Certificate> = Api::namespaced(client, namespace);
    let api_err = |what, source| RenewError::Api {
        what,
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        source,
    };
    for _ in 0..3 {
        let mut cert = match api.get_opt(name).await {
            Ok(Some(c)) => c,
            Ok(None) => {
                return Err(RenewError::NotFound {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                });
            }
            Err(e) => return Err(api_err("reading", e)),
        };
        if cert.is_issuing() {
            return Ok(Renewal::AlreadyIssuing);
        }
        let generation = cert.metadata.generation;
        cert.status
            .get_or_insert_with(Default::default)
            .set_condition(
                CertificateCondition::new(
                    types::ISSUING,
                    ConditionStatus::True,
                    RENEW_REASON,
                    RENEW_MESSAGE,
                    generation,
                ),
                Time(jiff::Timestamp::now()),
            );
        match api
            .replace_status(name, &PostParams::default(), &cert)
            .await
        {
            Ok(_) => return Ok(Renewal::Triggered),
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(api_err("updating", e)),
        }
    }
    Err(api_err("updating", kept_changing("certificate")))
}

/// The error after three conflicts in a row.
fn kept_changing(what: &str) -> kube::Error {
    kube::Error::Api(Box::new(kube::core::Status {
        code: 409,
        message: format!("the {what} kept changing while it was written"),
        ..Default::default()
    }))
}
