//! The approver: sets `Approved=True` (or `Denied=True`) on requests for the
//! issuers it is configured for, once, through the status subresource.
//!
//! What to decide is a [`Policy`], so a stricter one (e.g. SPIFFE identities
//! tied to the requesting service account) can replace [`ApproveAll`]
//! without touching the loop.

use std::sync::Arc;
use std::time::Duration;

use kube::api::Api;

use super::runner::{self, Action};
use super::signer;
use super::status::{ReconcileError, WriteOutcome};
use super::{ControllerConfigError, ControllerOptions, Health};
use crate::api::conditions::{ConditionStatus, messages, reasons, types};
use crate::api::{CertificateRequest, CertificateRequestCondition, IssuerRef};
use crate::shutdown::CancellationToken;
use crate::telemetry::EventType;
use crate::telemetry::metrics::{ApprovalOutcome, SyncController};

/// What a policy says about one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Approve,
    Deny {
        reason: String,
        message: String,
    },
    /// No opinion: leave the request for another approver.
    Abstain,
}

/// Decides whether a request may be signed. Called only for requests that
/// are in scope and neither approved nor denied yet.
pub trait Policy: Send + Sync {
    fn evaluate(&self, request: &CertificateRequest) -> Decision;
}

/// cert-manager's default: approve everything in scope. RBAC on who may
/// create requests is then the only gate.
#[derive(Clone, Copy, Debug, Default)]
pub struct ApproveAll;

impl Policy for ApproveAll {
    fn evaluate(&self, _request: &CertificateRequest) -> Decision {
        Decision::Approve
    }
}

/// One entry of `--approve-issuers`, in cert-manager's signer-name syntax.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SignerPattern {
    /// Plural resource, e.g. `issuers`.
    resource: String,
    group: String,
    /// `None` = `*`; for namespaced issuers `<namespace>.<name>`.
    name: Option<String>,
}

/// Which issuer references the approver acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApproveScope(Vec<SignerPattern>);

/// The default `--approve-issuers`: every issuer kind cert-manager.io defines.
pub const DEFAULT_APPROVE_ISSUERS: &str =
    "issuers.cert-manager.io/*,clusterissuers.cert-manager.io/*";

impl ApproveScope {
    pub fn all_cert_manager() -> Self {
        Self::parse(DEFAULT_APPROVE_ISSUERS).expect("the default list parses")
    }

    /// Parses a comma list such as `issuers.cert-manager.io/*,
    /// clusterissuers.cert-manager.io/root`.
    pub fn parse(list: &str) -> Result<Self, ControllerConfigError> {
        let mut patterns = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let bad = || ControllerConfigError::BadSignerName {
                entry: entry.to_owned(),
            };
            let (resource_group, name) = entry.split_once('/').ok_or_else(bad)?;
            let (resource, group) = resource_group.split_once('.').ok_or_else(bad)?;
            if resource.is_empty() || group.is_empty() || name.is_empty() {
                return Err(bad());
            }
            patterns.push(SignerPattern {
                resource: resource.to_owned(),
                group: group.to_owned(),
                name: (name != "*").then(|| name.to_owned()),
            });
        }
        if patterns.is_empty() {
            return Err(ControllerConfigError::EmptyApproveList);
        }
        Ok(Self(patterns))
    }

    /// Whether a request in `namespace` referring to `issuer` is in scope.
    /// The resource of a kind is its lower-cased plural, as RBAC names it.
    pub fn matches(&self, namespace: &str, issuer: &IssuerRef) -> bool {
        let resource = format!("{}s", issuer.kind_or_default().to_lowercase());
        let group = issuer.group_or_default();
        let cluster_scoped = issuer.is_cluster_issuer();
        self.0.iter().any(|p| {
            p.resource == resource
                && p.group == group
                && match &p.name {
                    None => true,
                    Some(name) if cluster_scoped => *name == issuer.name,
                    Some(name) => *name == format!("{namespace}.{}", issuer.name),
                }
        })
    }
}

/// The condition the approver should add to `request`, if any. Pure: the
/// loop writes what this returns.
pub fn decide(
    request: &CertificateRequest,
    scope: &ApproveScope,
    policy: &dyn Policy,
) -> Option<CertificateRequestCondition> {
    if request.is_approved() || request.is_denied() {
        return None;
    }
    let namespace = request.metadata.namespace.as_deref().unwrap_or_default();
    if !scope.matches(namespace, &request.spec.issuer_ref) {
        return None;
    }
    match policy.evaluate(request) {
        Decision::Approve => Some(CertificateRequestCondition::new(
            types::APPROVED,
            ConditionStatus::True,
            reasons::CERT_MANAGER_APPROVER,
            messages::APPROVED_BY_CERT_MANAGER,
        )),
        Decision::Deny { reason, message } => Some(CertificateRequestCondition::new(
            types::DENIED,
            ConditionStatus::True,
            &reason,
            message,
        )),
        Decision::Abstain => None,
    }
}

struct Context {
    client: kube::Client,
    signer: signer::SignerSlot,
    scope: ApproveScope,
    policy: Arc<dyn Policy>,
    telemetry: super::Telemetry,
}

async fn reconcile(
    request: Arc<CertificateRequest>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    ctx.telemetry.metrics.sync_call(SyncController::Approver);
    let namespace = request.metadata.namespace.clone().unwrap_or_default();
    let name = request.metadata.name.clone().unwrap_or_default();
    let api: Api<CertificateRequest> = Api::namespaced(ctx.client.clone(), &namespace);
    // After a conflict the request is decided again: another approver may
    // have decided meanwhile, and Approved/Denied must never be written twice.
    let decision = signer::approve_and_sign(&api, (*request).clone(), &ctx.signer, |current| {
        std::future::ready(Ok(decide(&current, &ctx.scope, ctx.policy.as_ref())))
    })
    .await?;
    if let WriteOutcome::Written { object, then } = decision {
        tracing::info!(%namespace, %name, condition = %then.condition.type_, signed = then.signed, "request decided");
        record_decision(
            &ctx.telemetry,
            &object,
            &then.condition.type_,
            then.condition.message.unwrap_or_default(),
        );
    }
    Ok(Action::await_change())
}

/// Counts an approver's decision (condition `kind`, Approved or Denied)
/// and puts the matching Event on the request; shared by the approvers.
pub(super) fn record_decision(
    telemetry: &super::Telemetry,
    object: &CertificateRequest,
    kind: &str,
    message: String,
) {
    let (outcome, type_, reason, action) = if kind == types::DENIED {
        (
            ApprovalOutcome::Denied,
            EventType::Warning,
            "Denied",
            "Deny",
        )
    } else {
        (
            ApprovalOutcome::Approved,
            EventType::Normal,
            "Approved",
            "Approve",
        )
    };
    telemetry.metrics.approver_decided(outcome);
    telemetry.event(object, type_, reason, action, message);
}

fn error_policy(_: Arc<CertificateRequest>, error: &ReconcileError, ctx: Arc<Context>) -> Action {
    ctx.telemetry.metrics.sync_error(SyncController::Approver);
    tracing::warn!(%error, "approver: reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// Runs the approver until `shutdown` fires.
pub async fn run(
    client: kube::Client,
    options: ControllerOptions,
    health: Health,
    shutdown: CancellationToken,
) {
    let api: Api<CertificateRequest> = Api::all(client.clone());
    let ctx = Arc::new(Context {
        client,
        telemetry: options.telemetry(),
        signer: options.signer.clone(),
        scope: options.approve,
        policy: options.policy,
    });
    let (store, changed) = runner::watch_all(api, "approver", health);
    runner::run(store, changed, reconcile, error_policy, ctx, shutdown).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{CertificateRequestSpec, CertificateRequestStatus, PemBytes};

    fn request(issuer: IssuerRef) -> CertificateRequest {
        let mut r = CertificateRequest::new(
            "r",
            CertificateRequestSpec {
                request: PemBytes::from("csr"),
                issuer_ref: issuer,
                ..Default::default()
            },
        );
        r.metadata.namespace = Some("team".into());
        r
    }

    fn with(mut r: CertificateRequest, type_: &str) -> CertificateRequest {
        r.status = Some(CertificateRequestStatus {
            conditions: Some(vec![CertificateRequestCondition::new(
                type_,
                ConditionStatus::True,
                "x",
                "",
            )]),
            ..Default::default()
        });
        r
    }

    struct DenyAll;
    impl Policy for DenyAll {
        fn evaluate(&self, _: &CertificateRequest) -> Decision {
            Decision::Deny {
                reason: "Policy".into(),
                message: "no".into(),
            }
        }
    }

    #[test]
    fn approves_cert_manager_issuers_by_default() {
        let scope = ApproveScope::all_cert_manager();
        let unset = IssuerRef {
            name: "ca".into(),
            kind: None,
            group: Some(String::new()),
        };
        for issuer in [
            IssuerRef::issuer("ca"),
            IssuerRef::cluster_issuer("ca"),
            unset,
        ] {
            let c = decide(&request(issuer.clone()), &scope, &ApproveAll)
                .unwrap_or_else(|| panic!("{issuer:?} not approved"));
            assert_eq!(c.type_, types::APPROVED);
            assert_eq!(c.reason.as_deref(), Some("cert-manager.io"));
            assert_eq!(
                c.message.as_deref(),
                Some("Certificate request has been approved by cert-manager.io")
            );
        }
    }

    #[test]
    fn leaves_other_groups_and_decided_requests_alone() {
        let scope = ApproveScope::all_cert_manager();
        let external = IssuerRef {
            name: "v".into(),
            kind: Some("VaultIssuer".into()),
            group: Some("example.com".into()),
        };
        assert_eq!(decide(&request(external), &scope, &ApproveAll), None);
        let approved = with(request(IssuerRef::issuer("ca")), types::APPROVED);
        assert_eq!(decide(&approved, &scope, &DenyAll), None);
        let denied = with(request(IssuerRef::issuer("ca")), types::DENIED);
        assert_eq!(decide(&denied, &scope, &ApproveAll), None);
    }

    #[test]
    fn deny_and_abstain() {
        struct Abstain;
        impl Policy for Abstain {
            fn evaluate(&self, _: &CertificateRequest) -> Decision {
                Decision::Abstain
            }
        }
        let scope = ApproveScope::all_cert_manager();
        let r = request(IssuerRef::issuer("ca"));
        let c = decide(&r, &scope, &DenyAll).unwrap();
        assert_eq!(
            (c.type_.as_str(), c.reason.as_deref()),
            ("Denied", Some("Policy"))
        );
        assert_eq!(decide(&r, &scope, &Abstain), None);
    }

    #[test]
    fn named_signers() {
        let scope = ApproveScope::parse(
            "issuers.cert-manager.io/team.ca, clusterissuers.cert-manager.io/root",
        )
        .unwrap();
        assert!(scope.matches("team", &IssuerRef::issuer("ca")));
        assert!(!scope.matches("other", &IssuerRef::issuer("ca")));
        assert!(!scope.matches("team", &IssuerRef::issuer("ca2")));
        assert!(scope.matches("any", &IssuerRef::cluster_issuer("root")));
        assert!(!scope.matches("any", &IssuerRef::cluster_issuer("ca")));
        let external = ApproveScope::parse("vaultissuers.example.com/*").unwrap();
        assert!(external.matches(
            "ns",
            &IssuerRef {
                name: "v".into(),
                kind: Some("VaultIssuer".into()),
                group: Some("example.com".into()),
            }
        ));
        assert!(!external.matches("ns", &IssuerRef::issuer("ca")));
    }

    #[test]
    fn bad_signer_names() {
        for bad in [
            "issuers",
            "issuers/*",
            ".cert-manager.io/*",
            "issuers.cert-manager.io/",
        ] {
            let err = ApproveScope::parse(bad).unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
        assert_eq!(
            ApproveScope::parse(" , ").unwrap_err(),
            ControllerConfigError::EmptyApproveList
        );
    }
}
