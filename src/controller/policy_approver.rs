//! The policy approver: approves or denies CertificateRequests by the
//! `CertificateRequestPolicy` objects that apply to them, as cert-manager's
//! approver-policy does. It replaces the approve-everything approver when
//! `--policy-approver` is set.
//!
//! A policy applies to a request when its selector picks the request and the
//! requester (the request's `spec.username`, `groups`, `uid` and `extra`)
//! may `use` it, which a SubjectAccessReview asks the API server's own
//! authorizer. With no applicable policy the request is left alone (neither
//! approved nor denied), as approver-policy leaves it; when some apply, it
//! is approved if one permits it, and otherwise denied with a message that
//! names every policy and the fields each refused (see [`policy_eval`]).
//!
//! Undecided requests are evaluated again when a policy or any RBAC Role,
//! ClusterRole or binding changes, so a request left alone is picked up
//! once a policy for it appears or its requester is bound to one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};

use super::approver::ApproveScope;
use super::policy_eval::{self, RequestFacts, Verdict};
use super::runner::{self, Action};
use super::signer;
use super::spiffe_approver::SpiffePolicy;
use super::status::{ReconcileError, WriteOutcome};
use super::{ControllerOptions, Health};
use crate::api::conditions::{ConditionStatus, types};
use crate::api::{
    CertificateRequest, CertificateRequestCondition, CertificateRequestPolicy, POLICY_GROUP,
    POLICY_RESOURCE,
};
use crate::shutdown::CancellationToken;
use crate::telemetry::metrics::SyncController;

/// The reason on both conditions, as approver-policy writes it.
pub const REASON: &str = "policy.cert-manager.io";

/// The condition for a verdict, or `None` to leave the request alone.
pub fn condition(verdict: &Verdict) -> Option<CertificateRequestCondition> {
    match verdict {
        Verdict::NoPolicy => None,
        Verdict::Approved { policy } => Some(CertificateRequestCondition::new(
            types::APPROVED,
            ConditionStatus::True,
            REASON,
            format!("Approved by CertificateRequestPolicy: {policy:?}"),
        )),
        Verdict::Denied { message } => Some(CertificateRequestCondition::new(
            types::DENIED,
            ConditionStatus::True,
            REASON,
            message.clone(),
        )),
    }
}

/// The SubjectAccessReview asking whether the request's requester may `use`
/// `policy`. The namespace is the request's, so a RoleBinding there counts
/// as well as a ClusterRoleBinding.
pub fn use_review(request: &CertificateRequest, policy: &str) -> SubjectAccessReview {
    let spec = &request.spec;
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: spec.username.clone(),
            groups: spec.groups.clone(),
            uid: spec.uid.clone(),
            extra: spec.extra.clone(),
            resource_attributes: Some(ResourceAttributes {
                group: Some(POLICY_GROUP.to_owned()),
                resource: Some(POLICY_RESOURCE.to_owned()),
                name: Some(policy.to_owned()),
                namespace: request.metadata.namespace.clone(),
                verb: Some("use".to_owned()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    }
}

struct Context {
    client: kube::Client,
    scope: ApproveScope,
    spiffe: Option<Arc<SpiffePolicy>>,
    policies: Store<CertificateRequestPolicy>,
    telemetry: super::Telemetry,
    signer: super::signer::SignerSlot,
}

impl Context {
    /// Whether this approver leaves `request` to someone else: decided,
    /// out of `--approve-issuers`, or a SPIFFE request.
    fn skips(&self, request: &CertificateRequest) -> bool {
        let namespace = request.metadata.namespace.as_deref().unwrap_or_default();
        request.is_approved()
            || request.is_denied()
            || !self.scope.matches(namespace, &request.spec.issuer_ref)
            || request
                .metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(crate::spiffe_id::ANNOTATION_IDENTITY))
            || self.spiffe.as_ref().is_some_and(|p| p.is_spiffe(request))
    }

    /// The policies that apply to `request`: selected, and usable by its
    /// requester according to the API server. Second, the names of those
    /// selected that the requester may not use.
    async fn applicable(
        &self,
        request: &CertificateRequest,
    ) -> Result<(Vec<Arc<CertificateRequestPolicy>>, Vec<String>), ReconcileError> {
        let namespace = request.metadata.namespace.clone().unwrap_or_default();
        let all = self.policies.state();
        let labels: Option<BTreeMap<String, String>> = if all
            .iter()
            .any(|p| policy_eval::needs_labels(&p.spec.selector))
        {
            let namespaces: Api<Namespace> = Api::all(self.client.clone());
            namespaces
                .get_opt(&namespace)
                .await
                .map_err(ReconcileError::api(
                    "reading the request's namespace labels",
                ))?
                .map(|n| n.metadata.labels.unwrap_or_default())
        } else {
            None
        };
        let mut applicable = Vec::new();
        let mut refused = Vec::new();
        for policy in all {
            if !policy_eval::selects(
                &policy.spec.selector,
                &request.spec.issuer_ref,
                &namespace,
                labels.as_ref(),
            ) {
                continue;
            }
            let name = policy.metadata.name.clone().unwrap_or_default();
            let reviews: Api<SubjectAccessReview> = Api::all(self.client.clone());
            let answer = reviews
                .create(&PostParams::default(), &use_review(request, &name))
                .await
                .map_err(ReconcileError::api(
                    "asking the API server whether the requester may use a policy",
                ))?;
            if answer.status.is_some_and(|s| s.allowed) {
                applicable.push(policy);
            } else {
                refused.push(name);
            }
        }
        Ok((applicable, refused))
    }

    /// `cr.serviceAccountName` for `request` (see
    /// [`policy_eval::service_account_of`]): reads the Pod its
    /// ownerReference names, in its namespace, and trusts it only when the
    /// uid matches (a Pod deleted and made again under the same name is
    /// another pod).
    async fn service_account(
        &self,
        request: &CertificateRequest,
    ) -> Result<String, ReconcileError> {
        let namespace = request.metadata.namespace.clone().unwrap_or_default();
        let owner = request
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.kind == "Pod" && o.api_version == "v1");
        let mut pod_sa = None;
        if let Some(owner) = owner {
            let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
            let pod = pods
                .get_opt(&owner.name)
                .await
                .map_err(ReconcileError::api("reading the request's owner Pod"))?;
            pod_sa = pod
                .filter(|p| p.metadata.uid.as_deref() == Some(owner.uid.as_str()))
                .and_then(|p| p.spec)
                .map(|s| {
                    s.service_account_name
                        .unwrap_or_else(|| "default".to_owned())
                });
        }
        Ok(policy_eval::service_account_of(
            &namespace,
            request.spec.username.as_deref(),
            pod_sa.as_deref(),
        ))
    }
}

async fn reconcile(
    request: Arc<CertificateRequest>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    ctx.telemetry.metrics.sync_call(SyncController::Approver);
    if ctx.skips(&request) {
        return Ok(Action::await_change());
    }
    let namespace = request.metadata.namespace.clone().unwrap_or_default();
    let name = request.metadata.name.clone().unwrap_or_default();
    let api: Api<CertificateRequest> = Api::namespaced(ctx.client.clone(), &namespace);
    let ctx = &ctx;
    let decision = signer::approve_and_sign(&api, (*request).clone(), &ctx.signer, |current| async move {
        if ctx.skips(&current) {
            return Ok(None);
        }
        let (applicable, refused) = ctx.applicable(&current).await?;
        let refs: Vec<&CertificateRequestPolicy> = applicable.iter().map(AsRef::as_ref).collect();
        let mut facts = RequestFacts::of(&current);
        if let Ok(facts) = facts.as_mut()
            && refs.iter().any(|p| policy_eval::reads_service_account(p))
        {
            facts.service_account = ctx.service_account(&current).await?;
        }
        let verdict = policy_eval::verdict(&refs, &facts);
        let Some(condition) = condition(&verdict) else {
            let namespace = current.metadata.namespace.as_deref().unwrap_or_default();
            let name = current.metadata.name.as_deref().unwrap_or_default();
            if refused.is_empty() {
                tracing::debug!(%namespace, %name,
                    "no CertificateRequestPolicy selects the request; leaving it alone");
            } else {
                // Said as the API server says a denial, so that whoever
                // wonders why a request waits finds the missing grant.
                tracing::info!(%namespace, %name, policies = ?refused,
                    "no CertificateRequestPolicy applies; leaving the request alone: User {:?} cannot use resource {:?} in API group {:?}",
                    current.spec.username.as_deref().unwrap_or_default(),
                    POLICY_RESOURCE, POLICY_GROUP);
            }
            return Ok(None);
        };
        Ok(Some(condition))
    })
    .await?;
    if let WriteOutcome::Written { object, then } = decision {
        let message = then.condition.message.unwrap_or_default();
        tracing::info!(%namespace, %name, condition = %then.condition.type_, %message, signed = then.signed, "request decided by policy");
        super::approver::record_decision(&ctx.telemetry, &object, &then.condition.type_, message);
    }
    Ok(Action::await_change())
}

fn error_policy(_: Arc<CertificateRequest>, error: &ReconcileError, ctx: Arc<Context>) -> Action {
    ctx.telemetry.metrics.sync_error(SyncController::Approver);
    tracing::warn!(%error, "policy approver: reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// Every request in `store` that is neither approved nor denied.
fn undecided(store: &Store<CertificateRequest>) -> Vec<ObjectRef<CertificateRequest>> {
    store
        .state()
        .iter()
        .filter(|r| !r.is_approved() && !r.is_denied())
        .map(|r| ObjectRef::from_obj(r.as_ref()))
        .collect()
}

/// One `()` per change of any `K` (all namespaces), from a metadata-only
/// watch that retries with backoff and keeps nothing.
fn rbac_events<K>(client: &kube::Client) -> futures::stream::BoxStream<'static, ()>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    use kube::core::PartialObjectMeta;
    use kube::runtime::{WatchStreamExt, watcher};
    let api: Api<PartialObjectMeta<K>> = Api::all(client.clone());
    watcher(api, watcher::Config::default())
        .backoff(crate::kubernetes::WatchBackoff::default())
        .filter_map(|event| {
            std::future::ready(match event {
                Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => Some(()),
                Ok(_) => None,
                Err(error) => {
                    // Warn: without this watch a new binding is noticed
                    // only when the request itself changes.
                    tracing::warn!(%error, "policy approver: RBAC watch error; retrying");
                    None
                }
            })
        })
        .boxed()
}

/// The `Ready` condition a policy should carry, as approver-policy writes
/// it, keeping the transition time of an unchanged status. `None` when the
/// current one already says it (same status, message and generation).
pub fn ready_condition(policy: &CertificateRequestPolicy, now: &str) -> Option<serde_json::Value> {
    let problems = policy_eval::problems(policy);
    let (status, reason, message) = if problems.is_empty() {
        (
            "True",
            "Ready",
            "CertificateRequestPolicy is ready for approval evaluation".to_owned(),
        )
    } else {
        ("False", "NotReady", problems.join("; "))
    };
    let generation = policy.metadata.generation;
    let current = policy
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"));
    if let Some(c) = current
        && c["status"] == status
        && c["message"] == message.as_str()
        && c["observedGeneration"].as_i64() == generation
    {
        return None;
    }
    let since = match current {
        Some(c) if c["status"] == status => c["lastTransitionTime"].clone(),
        _ => serde_json::Value::from(now),
    };
    Some(serde_json::json!({
        "type": "Ready",
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
        "observedGeneration": generation,
    }))
}

/// Writes each policy's `Ready` condition when it changes (a merge patch
/// of the status subresource, other conditions kept).
async fn reconcile_policy(
    policy: Arc<CertificateRequestPolicy>,
    ctx: Arc<kube::Client>,
) -> Result<Action, ReconcileError> {
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let Some(ready) = ready_condition(&policy, &now) else {
        return Ok(Action::await_change());
    };
    let name = policy.metadata.name.clone().unwrap_or_default();
    let mut conditions: Vec<serde_json::Value> = policy
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c["type"] != "Ready")
        .collect();
    if ready["status"] == "False" {
        tracing::warn!(policy = %name, message = %ready["message"], "CertificateRequestPolicy is not ready");
    }
    conditions.push(ready);
    let api: Api<CertificateRequestPolicy> = Api::all((*ctx).clone());
    api.patch_status(
        &name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(serde_json::json!({"status": {"conditions": conditions}})),
    )
    .await
    .map_err(ReconcileError::api(
        "writing a CertificateRequestPolicy's Ready condition",
    ))?;
    Ok(Action::await_change())
}

fn policy_error(
    _: Arc<CertificateRequestPolicy>,
    error: &ReconcileError,
    _: Arc<kube::Client>,
) -> Action {
    tracing::warn!(%error, "policy approver: policy status failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// How many loops [`run`] reports to [`Health`]: the request watch, the
/// policy watch, and the policy status watch.
pub const LOOPS: usize = 3;

/// Runs the policy approver until `shutdown` fires.
pub async fn run(
    client: kube::Client,
    options: ControllerOptions,
    health: Health,
    shutdown: CancellationToken,
) {
    let (policies, policy_changes) = runner::watch_all(
        Api::<CertificateRequestPolicy>::all(client.clone()),
        "policy approver (policies)",
        health.clone(),
    );
    // A second watch of the policies for their Ready conditions, so that
    // a status write never waits behind request evaluations.
    let (statuses, status_changes) = runner::watch_all(
        Api::<CertificateRequestPolicy>::all(client.clone()),
        "policy approver (policy status)",
        health.clone(),
    );
    let status_loop = runner::run(
        statuses,
        status_changes,
        reconcile_policy,
        policy_error,
        Arc::new(client.clone()),
        shutdown.clone(),
    );
    let (requests, request_changes) = runner::watch_all(
        Api::<CertificateRequest>::all(client.clone()),
        "policy approver",
        health,
    );
    // A changed policy may decide requests that were left alone: evaluate
    // every undecided request again.
    let pending = requests.clone();
    let again = policy_changes.flat_map(move |_| futures::stream::iter(undecided(&pending)));
    // So does a change to RBAC: a new binding may let a requester use a
    // policy. Only the event matters, so nothing is cached.
    let pending = requests.clone();
    let rbac = futures::stream::select_all([
        rbac_events::<Role>(&client),
        rbac_events::<RoleBinding>(&client),
        rbac_events::<ClusterRole>(&client),
        rbac_events::<ClusterRoleBinding>(&client),
    ])
    .flat_map(move |()| futures::stream::iter(undecided(&pending)));
    let triggers = futures::stream::select(futures::stream::select(request_changes, again), rbac);
    let ctx = Arc::new(Context {
        client,
        telemetry: options.telemetry(),
        scope: options.approve,
        spiffe: options.spiffe,
        policies,
        signer: options.signer,
    });
    let requests_loop = runner::run(requests, triggers, reconcile, error_policy, ctx, shutdown);
    futures::future::join(requests_loop, status_loop).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{CertificateRequestSpec, IssuerRef, PemBytes};

    #[test]
    fn the_use_review_carries_the_requester_and_the_policy() {
        let mut r = CertificateRequest::new(
            "r",
            CertificateRequestSpec {
                request: PemBytes::from("csr"),
                issuer_ref: IssuerRef::issuer("ca"),
                username: Some("system:serviceaccount:team:app".into()),
                groups: Some(vec!["system:serviceaccounts".into()]),
                uid: Some("u-1".into()),
                extra: Some(BTreeMap::from([("k".into(), vec!["v".into()])])),
                ..Default::default()
            },
        );
        r.metadata.namespace = Some("team".into());
        let review = use_review(&r, "p");
        assert_eq!(
            review.spec.user.as_deref(),
            Some("system:serviceaccount:team:app")
        );
        assert_eq!(
            review.spec.groups.as_deref(),
            Some(&["system:serviceaccounts".to_owned()][..])
        );
        assert_eq!(review.spec.uid.as_deref(), Some("u-1"));
        assert!(review.spec.extra.is_some());
        let attrs = review.spec.resource_attributes.unwrap();
        assert_eq!(
            (
                attrs.group.as_deref(),
                attrs.resource.as_deref(),
                attrs.name.as_deref(),
                attrs.verb.as_deref(),
                attrs.namespace.as_deref()
            ),
            (
                Some("policy.cert-manager.io"),
                Some("certificaterequestpolicies"),
                Some("p"),
                Some("use"),
                Some("team")
            )
        );
    }

    #[test]
    fn ready_conditions_follow_the_policys_problems() {
        use crate::api::{CertificateRequestPolicySpec, CertificateRequestPolicyStatus};
        let mut p = CertificateRequestPolicy::new(
            "p",
            CertificateRequestPolicySpec {
                selector: crate::api::PolicySelector {
                    issuer_ref: Some(Default::default()),
                    namespace: None,
                },
                ..Default::default()
            },
        );
        p.metadata.generation = Some(1);
        let ready = ready_condition(&p, "2026-12-07T00:00:00Z").unwrap();
        assert_eq!(
            (
                &ready["status"],
                &ready["reason"],
                &ready["observedGeneration"]
            ),
            (&"True".into(), &"Ready".into(), &1.into())
        );
        // Written once: the same again is nothing to write.
        p.status = Some(CertificateRequestPolicyStatus {
            conditions: Some(vec![ready.clone()]),
        });
        assert_eq!(ready_condition(&p, "2026-12-07T01:00:00Z"), None);
        // A new generation keeps the transition time of an unchanged status.
        p.metadata.generation = Some(2);
        let again = ready_condition(&p, "2026-12-07T01:00:00Z").unwrap();
        assert_eq!(again["lastTransitionTime"], "2026-12-07T00:00:00Z");
        // A broken selector: False, with the problem, from now.
        p.spec.selector.issuer_ref = None;
        let broken = ready_condition(&p, "2026-12-07T02:00:00Z").unwrap();
        assert_eq!(
            (&broken["status"], &broken["reason"]),
            (&"False".into(), &"NotReady".into())
        );
        assert!(
            broken["message"]
                .as_str()
                .unwrap()
                .starts_with("spec.selector")
        );
        assert_eq!(broken["lastTransitionTime"], "2026-12-07T02:00:00Z");
    }

    #[test]
    fn conditions() {
        assert_eq!(condition(&Verdict::NoPolicy), None);
        let approved = condition(&Verdict::Approved { policy: "p".into() }).unwrap();
        assert_eq!(approved.type_, "Approved");
        assert_eq!(approved.reason.as_deref(), Some("policy.cert-manager.io"));
        assert_eq!(
            approved.message.as_deref(),
            Some("Approved by CertificateRequestPolicy: \"p\"")
        );
        let denied = condition(&Verdict::Denied {
            message: "m".into(),
        })
        .unwrap();
        assert_eq!(
            (denied.type_.as_str(), denied.message.as_deref()),
            ("Denied", Some("m"))
        );
    }
}
