//! The SPIFFE policy approver: approves a SPIFFE CertificateRequest only when
//! the identity it asks for is the one its requester is entitled to, and
//! denies it otherwise, naming the check that failed.
//!
//! # Which requests are SPIFFE requests
//! A request is ours when it carries [`spiffe::ANNOTATION_IDENTITY`] or names
//! one of the `--spiffe-issuer` issuers. Both directions matter: the marker
//! keeps the generic approver away ([`ExceptSpiffe`]), and the issuer keeps a
//! caller from dodging the policy by leaving the marker off. Everything else
//! is left to the generic approver, so neither overrides the other.
//!
//! # Who the requester is (the trust chain)
//! `spec.username`, `uid`, `groups` and `extra` are trusted only because an
//! admission webhook (cert-manager's, or [`super::webhook`]) overwrites them
//! with the authenticated caller on create and refuses later changes.
//!
//! - **(a) pod token**: the requester is `system:serviceaccount:<ns>:<sa>`;
//!   the identity is derived from exactly that.
//! - **(b) node account**: the requester is one of `--spiffe-node-accounts`
//!   (a node plugin). The pod is named by annotations; the approver reads it
//!   from the API and requires that it exists with the annotated uid, runs on
//!   the annotated node, and takes its ServiceAccount from the pod spec,
//!   never from the request. The node itself is bound to the requester when
//!   the node plugin's token is pod-bound: the API server then records the
//!   plugin pod's node in `spec.extra["authentication.kubernetes.io/node-name"]`,
//!   and it must equal the annotated node, so a node plugin can only ask for
//!   pods on its own node. Without that extra (tokens that are not pod-bound,
//!   or API servers before 1.30) the node annotation is the node plugin's
//!   word; the check then still proves the pod is real and scheduled there,
//!   but a compromised node plugin could ask for pods on other nodes.
//!
//! Decisions are made by [`SpiffePolicy::evaluate`], a pure function of the
//! request and (mode b) the pod; the loop only fetches the pod and writes the
//! condition.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use thiserror::Error;

use super::approver::{ApproveScope, Decision, Policy};
use super::runner::{self, Action};
use super::signer;
use super::status::{ReconcileError, WriteOutcome};
use super::{ControllerConfigError, Health};
use crate::api::conditions::{ConditionStatus, types};
use crate::api::{CertificateRequest, CertificateRequestCondition};
use crate::pki::rules::{OID_BC, OID_EKU, OID_KU, OID_SAN};
use crate::pki::{EncodedUsages, KeyAlgorithm, Usage};
use crate::shutdown::CancellationToken;
use crate::spiffe_id::{self as spiffe, IdTemplate, TrustDomain};

/// The reason on an Approved condition this approver writes.
pub const APPROVED_REASON: &str = "spiffe.csi.cert-manager.io";

/// Deny reasons, one per check, so that `kubectl get cr -o wide` alone tells
/// which rule a request broke.
pub mod reasons {
    pub const ISSUER: &str = "SpiffeIssuer";
    pub const REQUESTER: &str = "SpiffeRequester";
    pub const POD_BINDING: &str = "SpiffePodBinding";
    pub const DURATION: &str = "SpiffeDuration";
    pub const IS_CA: &str = "SpiffeIsCA";
    pub const USAGES: &str = "SpiffeUsages";
    pub const CSR: &str = "SpiffeCSR";
    pub const SIGNATURE: &str = "SpiffeCSRSignature";
    pub const KEY_TYPE: &str = "SpiffeKeyType";
    pub const SUBJECT: &str = "SpiffeSubject";
    pub const SANS: &str = "SpiffeSANs";
    pub const EXTENSIONS: &str = "SpiffeExtensions";
    pub const ID: &str = "SpiffeID";
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SpiffeConfigError {
    #[error("--spiffe-trust-domain: {0}")]
    TrustDomain(spiffe::SpiffeError),
    #[error("--spiffe-id-template: {0}")]
    Template(spiffe::SpiffeError),
    #[error("--spiffe-issuer: {0}")]
    Issuer(ControllerConfigError),
    #[error("--spiffe-duration: {value:?} is too short; SPIFFE certificates need at least 1m")]
    Duration { value: Duration },
    #[error("--spiffe-key-types: {0}")]
    KeyType(spiffe::SpiffeError),
    #[error("--spiffe-key-types is empty; allow at least one of P-256, P-384, Ed25519")]
    NoKeyTypes,
    #[error(
        "--spiffe-node-accounts: {entry:?} is not <namespace>:<serviceaccount>; write e.g. cert-csi:cert-csi-node"
    )]
    NodeAccount { entry: String },
}

/// The approver's configuration, validated once at start.
#[derive(Clone, Debug)]
pub struct SpiffePolicy {
    pub trust_domain: TrustDomain,
    pub template: IdTemplate,
    /// The issuers SPIFFE requests must (and may only) name.
    pub issuers: ApproveScope,
    /// The exact `spec.duration` a request must carry.
    pub duration: Duration,
    pub key_types: Vec<KeyAlgorithm>,
    /// `(namespace, name)` of node plugin ServiceAccounts allowed mode (b).
    pub node_accounts: Vec<(String, String)>,
}

/// What the approver needs to know about the pod in mode (b).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodFacts {
    pub uid: String,
    pub node_name: Option<String>,
    pub service_account: String,
}

impl PodFacts {
    pub fn of(pod: &Pod) -> PodFacts {
        let spec = pod.spec.as_ref();
        PodFacts {
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            node_name: spec.and_then(|s| s.node_name.clone()),
            // The API server defaults an empty serviceAccountName to "default".
            service_account: spec
                .and_then(|s| s.service_account_name.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".into()),
        }
    }
}

fn deny(reason: &str, message: String) -> Decision {
    Decision::Deny {
        reason: reason.to_owned(),
        message,
    }
}

/// The raw flag values, parsed by [`SpiffePolicy::from_flags`].
#[derive(Clone, Debug)]
pub struct SpiffeFlags<'a> {
    pub trust_domain: &'a str,
    pub id_template: &'a str,
    pub issuers: &'a str,
    pub duration: Duration,
    pub key_types: &'a str,
    pub node_accounts: &'a str,
}

impl SpiffePolicy {
    pub fn from_flags(flags: &SpiffeFlags<'_>) -> Result<SpiffePolicy, SpiffeConfigError> {
        let trust_domain =
            TrustDomain::parse(flags.trust_domain).map_err(SpiffeConfigError::TrustDomain)?;
        let template = IdTemplate::parse(flags.id_template).map_err(SpiffeConfigError::Template)?;
        let issuers = ApproveScope::parse(flags.issuers).map_err(SpiffeConfigError::Issuer)?;
        if flags.duration < Duration::from_secs(60) {
            return Err(SpiffeConfigError::Duration {
                value: flags.duration,
            });
        }
        let key_types = flags
            .key_types
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(spiffe::parse_key_type)
            .collect::<Result<Vec<_>, _>>()
            .map_err(SpiffeConfigError::KeyType)?;
        if key_types.is_empty() {
            return Err(SpiffeConfigError::NoKeyTypes);
        }
        let node_accounts = flags
            .node_accounts
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|entry| match entry.split_once(':') {
                Some((ns, sa)) if !ns.is_empty() && !sa.is_empty() && !sa.contains(':') => {
                    Ok((ns.to_owned(), sa.to_owned()))
                }
                _ => Err(SpiffeConfigError::NodeAccount {
                    entry: entry.to_owned(),
                }),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(SpiffePolicy {
            trust_domain,
            template,
            issuers,
            duration: flags.duration,
            key_types,
            node_accounts,
        })
    }

    fn namespace(request: &CertificateRequest) -> &str {
        request.metadata.namespace.as_deref().unwrap_or_default()
    }

    fn annotation<'r>(request: &'r CertificateRequest, key: &str) -> Option<&'r str> {
        request
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .map(String::as_str)
    }

    /// Whether this approver owns the request (see the module docs).
    pub fn is_spiffe(&self, request: &CertificateRequest) -> bool {
        Self::annotation(request, spiffe::ANNOTATION_IDENTITY).is_some()
            || self
                .issuers
                .matches(Self::namespace(request), &request.spec.issuer_ref)
    }

    fn is_node_account(&self, namespace: &str, name: &str) -> bool {
        self.node_accounts
            .iter()
            .any(|(ns, sa)| ns == namespace && sa == name)
    }

    /// The pod `(namespace, name)` the loop must fetch before
    /// [`Self::evaluate`]: `Some` only for a mode (b) request that names one.
    pub fn pod_to_fetch(&self, request: &CertificateRequest) -> Option<(String, String)> {
        if !self.is_spiffe(request) {
            return None;
        }
        let (ns, sa) = spiffe::parse_service_account_username(request.spec.username.as_deref()?)?;
        if !self.is_node_account(ns, sa) {
            return None;
        }
        let pod = Self::annotation(request, spiffe::ANNOTATION_POD_NAME)?;
        Some((Self::namespace(request).to_owned(), pod.to_owned()))
    }

    /// The decision for one request. `pod` is what the API returned for
    /// [`Self::pod_to_fetch`] (`None` when it does not exist or was not asked).
    pub fn evaluate(&self, request: &CertificateRequest, pod: Option<&PodFacts>) -> Decision {
        if !self.is_spiffe(request) {
            return Decision::Abstain;
        }
        let namespace = Self::namespace(request);
        let issuer = &request.spec.issuer_ref;
        if !self.issuers.matches(namespace, issuer) {
            return deny(
                reasons::ISSUER,
                format!(
                    "issuer check: the request is marked as SPIFFE ({}) but spec.issuerRef names {} {:?}, which is not a --spiffe-issuer; send SPIFFE requests to the SPIFFE issuer",
                    spiffe::ANNOTATION_IDENTITY,
                    issuer.kind_or_default(),
                    issuer.name
                ),
            );
        }
        let (id_namespace, service_account) = match self.requester(request, pod) {
            Ok(who) => who,
            Err(decision) => return decision,
        };
        let expected = match spiffe::id_for(
            &self.trust_domain,
            &self.template,
            &id_namespace,
            &service_account,
        ) {
            Ok(id) => id,
            Err(e) => {
                return deny(
                    reasons::ID,
                    format!("SPIFFE ID check: no ID can be derived for the requester: {e}"),
                );
            }
        };
        if let Err(decision) = self.check_spec(request) {
            return decision;
        }
        if let Err(decision) = self.check_csr(request, &expected) {
            return decision;
        }
        Decision::Approve
    }

    /// `(namespace, serviceaccount)` the identity is derived from.
    fn requester(
        &self,
        request: &CertificateRequest,
        pod: Option<&PodFacts>,
    ) -> Result<(String, String), Decision> {
        let username = request.spec.username.as_deref().unwrap_or_default();
        let Some((ns, sa)) = spiffe::parse_service_account_username(username) else {
            return Err(deny(
                reasons::REQUESTER,
                format!(
                    "requester check: spec.username {username:?} is not a ServiceAccount; SPIFFE identities are issued only to requests made with a ServiceAccount token (the pod's, or a node plugin's listed in --spiffe-node-accounts)"
                ),
            ));
        };
        if !self.is_node_account(ns, sa) {
            return Ok((ns.to_owned(), sa.to_owned()));
        }
        let binding = |message: String| Err(deny(reasons::POD_BINDING, message));
        let annotation = |key: &str| Self::annotation(request, key).filter(|v| !v.is_empty());
        let (Some(pod_name), Some(pod_uid), Some(node)) = (
            annotation(spiffe::ANNOTATION_POD_NAME),
            annotation(spiffe::ANNOTATION_POD_UID),
            annotation(spiffe::ANNOTATION_NODE),
        ) else {
            return binding(format!(
                "pod binding check: the request was made by node plugin {username} and must name its pod and node in the annotations {}, {} and {}",
                spiffe::ANNOTATION_POD_NAME,
                spiffe::ANNOTATION_POD_UID,
                spiffe::ANNOTATION_NODE
            ));
        };
        let namespace = Self::namespace(request);
        let Some(pod) = pod else {
            return binding(format!(
                "pod binding check: pod {namespace}/{pod_name} does not exist"
            ));
        };
        if pod.uid != pod_uid {
            return binding(format!(
                "pod binding check: pod {namespace}/{pod_name} has uid {} but the request names uid {pod_uid}; the pod was replaced",
                pod.uid
            ));
        }
        if pod.node_name.as_deref() != Some(node) {
            return binding(format!(
                "pod binding check: pod {namespace}/{pod_name} is scheduled on {} but the request names node {node:?}",
                pod.node_name
                    .as_deref()
                    .map_or("no node".to_owned(), |n| format!("node {n:?}"))
            ));
        }
        let token_node = request
            .spec
            .extra
            .as_ref()
            .and_then(|e| e.get(spiffe::EXTRA_NODE_NAME));
        if let Some(values) = token_node
            && values.as_slice() != [node]
        {
            return binding(format!(
                "pod binding check: node plugin {username} runs on node {values:?} (from its token) but asks for pod {namespace}/{pod_name} on node {node:?}; a node plugin may only ask for pods on its own node"
            ));
        }
        Ok((namespace.to_owned(), pod.service_account.clone()))
    }

    /// Checks on the request's spec: duration, isCA, usages.
    fn check_spec(&self, request: &CertificateRequest) -> Result<(), Decision> {
        let want = crate::api::duration::format_go(self.duration);
        let duration = request.spec.duration.as_deref();
        let parsed = duration.and_then(|d| crate::api::duration::parse_go(d).ok());
        if parsed != Some(self.duration) {
            return Err(deny(
                reasons::DURATION,
                format!(
                    "duration check: spec.duration is {} but SPIFFE certificates must last exactly {want} (--spiffe-duration)",
                    duration.map_or("unset".to_owned(), |d| format!("{d:?}"))
                ),
            ));
        }
        if request.spec.is_ca == Some(true) {
            return Err(deny(
                reasons::IS_CA,
                "isCA check: spec.isCA is true; a SPIFFE identity must not be a CA".into(),
            ));
        }
        let names = request.spec.usages.clone().unwrap_or_default();
        let parsed: Option<BTreeSet<Usage>> = names.iter().map(|n| Usage::from_name(n)).collect();
        let wanted: BTreeSet<Usage> = spiffe::USAGES.into_iter().collect();
        if parsed.as_ref() != Some(&wanted) || names.len() != wanted.len() {
            return Err(deny(
                reasons::USAGES,
                format!(
                    "usages check: spec.usages is {names:?} but must be exactly {:?}",
                    spiffe::USAGES.map(Usage::name)
                ),
            ));
        }
        Ok(())
    }

    /// Checks on the CSR itself.
    fn check_csr(&self, request: &CertificateRequest, expected: &str) -> Result<(), Decision> {
        let csr = request.spec.request.as_bytes();
        let parsed = crate::pki::parse_csr(csr).map_err(|e| {
            deny(
                reasons::CSR,
                format!("CSR check: spec.request cannot be decoded: {e}"),
            )
        })?;
        crate::pki::verify_csr_signature(&parsed.der)
            .map_err(|e| deny(reasons::SIGNATURE, format!("CSR signature check: {e}")))?;
        let allowed = |a: &KeyAlgorithm| self.key_types.contains(a);
        match parsed.key_algorithm {
            Some(a) if allowed(&a) => {}
            other => {
                let names: Vec<&str> = self
                    .key_types
                    .iter()
                    .filter_map(|k| spiffe::key_type_name(*k))
                    .collect();
                return Err(deny(
                    reasons::KEY_TYPE,
                    format!(
                        "key type check: the CSR's key is {} but --spiffe-key-types allows only {names:?}",
                        other.map_or(
                            "of an unknown type".to_owned(),
                            crate::pki::key::describe_algorithm
                        )
                    ),
                ));
            }
        }
        if !parsed.subject.is_empty() {
            return Err(deny(
                reasons::SUBJECT,
                format!(
                    "subject check: the CSR subject is {:?}; a SPIFFE identity has an empty subject (no CN or other attribute)",
                    parsed.subject
                ),
            ));
        }
        for ext in &parsed.extensions {
            let oid = ext.oid.as_str();
            let known = oid == OID_SAN.to_string()
                || oid == OID_KU.to_string()
                || oid == OID_EKU.to_string()
                || (oid == OID_BC.to_string() && parsed.basic_constraints_ca == Some(false));
            if !known {
                return Err(deny(
                    reasons::EXTENSIONS,
                    format!(
                        "extensions check: the CSR requests extension {oid}; only subjectAltName (2.5.29.17), keyUsage (2.5.29.15), extKeyUsage (2.5.29.37) and basicConstraints with CA:FALSE (2.5.29.19) are allowed"
                    ),
                ));
            }
        }
        // As csi-driver-spiffe's approver: usage extensions may be left
        // out, or ask for a part of the SPIFFE usages, never more.
        if parsed.key_usages.is_some() || parsed.ext_key_usages.is_some() {
            let allowed = EncodedUsages::derive(&spiffe::USAGES, false);
            let asked = &parsed.encoded_usages;
            let within = asked.key_usage_bits & !allowed.key_usage_bits == 0
                && asked
                    .ext_key_usages
                    .iter()
                    .all(|oid| allowed.ext_key_usages.contains(oid));
            if !within {
                return Err(deny(
                    reasons::USAGES,
                    format!(
                        "usages check: the CSR's keyUsage/extKeyUsage encode {asked} but may encode only {allowed} or a part of it, or be left out"
                    ),
                ));
            }
        }
        let san = parsed.extension(&OID_SAN.to_string());
        let uris = match san.map(|e| san_uris(&e.value)) {
            None => Vec::new(),
            Some(Ok(uris)) => uris,
            Some(Err(message)) => return Err(deny(reasons::SANS, message)),
        };
        match uris.as_slice() {
            [one] if one == expected => Ok(()),
            [one] => Err(deny(
                reasons::ID,
                format!(
                    "SPIFFE ID check: the CSR asks for {one:?} but the requester is entitled only to {expected:?}"
                ),
            )),
            _ => Err(deny(
                reasons::ID,
                format!(
                    "SPIFFE ID check: the CSR carries {} URI SANs {uris:?}; it must carry exactly one, {expected:?}",
                    uris.len()
                ),
            )),
        }
    }
}

/// The URIs of a SAN extension value; any other name type is refused by
/// name, including the types cert-csi's own SAN reader skips (otherName,
/// directoryName, registeredID), which must not slip through unseen.
fn san_uris(value: &[u8]) -> Result<Vec<String>, String> {
    use der::Decode;
    use x509_cert::ext::pkix::SubjectAltName;
    use x509_cert::ext::pkix::name::GeneralName;
    let san = SubjectAltName::from_der(value)
        .map_err(|e| format!("SANs check: the subjectAltName extension is malformed: {e}"))?;
    let mut uris = Vec::new();
    for name in san.0 {
        let refused = match name {
            GeneralName::UniformResourceIdentifier(u) => {
                uris.push(u.to_string());
                continue;
            }
            GeneralName::DnsName(d) => format!("DNS name {:?}", d.to_string()),
            GeneralName::IpAddress(_) => "an IP address".to_owned(),
            GeneralName::Rfc822Name(e) => format!("email address {:?}", e.to_string()),
            GeneralName::OtherName(_) => "an otherName".to_owned(),
            GeneralName::DirectoryName(_) => "a directoryName".to_owned(),
            GeneralName::RegisteredId(_) => "a registeredID".to_owned(),
            GeneralName::EdiPartyName(_) => "an ediPartyName".to_owned(),
        };
        return Err(format!(
            "SANs check: the CSR carries {refused}; a SPIFFE identity may carry only its one spiffe:// URI (no DNS, IP, email or other names)"
        ));
    }
    Ok(uris)
}

/// Wraps the generic approver's policy so it abstains on SPIFFE requests;
/// without this, `ApproveAll` would approve a forged identity before the
/// SPIFFE approver could deny it.
pub struct ExceptSpiffe {
    pub inner: Arc<dyn Policy>,
    /// `None` when SPIFFE is not configured: requests marked SPIFFE are then
    /// still left alone (nobody approves them, which is the safe outcome).
    pub spiffe: Option<Arc<SpiffePolicy>>,
}

impl Policy for ExceptSpiffe {
    fn evaluate(&self, request: &CertificateRequest) -> Decision {
        let marked = SpiffePolicy::annotation(request, spiffe::ANNOTATION_IDENTITY).is_some();
        let owned = self.spiffe.as_ref().is_some_and(|p| p.is_spiffe(request));
        if marked || owned {
            Decision::Abstain
        } else {
            self.inner.evaluate(request)
        }
    }
}

/// The condition to add, if any: pure, like `approver::decide`.
pub fn decide(
    policy: &SpiffePolicy,
    request: &CertificateRequest,
    pod: Option<&PodFacts>,
) -> Option<CertificateRequestCondition> {
    if request.is_approved() || request.is_denied() {
        return None;
    }
    match policy.evaluate(request, pod) {
        Decision::Approve => Some(CertificateRequestCondition::new(
            types::APPROVED,
            ConditionStatus::True,
            APPROVED_REASON,
            format!(
                "Approved by the SPIFFE policy: the identity matches the requester ({})",
                request.spec.username.as_deref().unwrap_or_default()
            ),
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
    policy: Arc<SpiffePolicy>,
    signer: signer::SignerSlot,
}

async fn fetch_pod(
    ctx: &Context,
    request: &CertificateRequest,
) -> Result<Option<PodFacts>, ReconcileError> {
    let Some((namespace, name)) = ctx.policy.pod_to_fetch(request) else {
        return Ok(None);
    };
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let pod = pods.get_opt(&name).await.map_err(ReconcileError::api(
        "reading the pod a SPIFFE request names",
    ))?;
    Ok(pod.as_ref().map(PodFacts::of))
}

async fn reconcile(
    request: Arc<CertificateRequest>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let namespace = request.metadata.namespace.clone().unwrap_or_default();
    let name = request.metadata.name.clone().unwrap_or_default();
    if !ctx.policy.is_spiffe(&request) || request.is_approved() || request.is_denied() {
        return Ok(Action::await_change());
    }
    let api: Api<CertificateRequest> = Api::namespaced(ctx.client.clone(), &namespace);
    let ctx = &ctx;
    let decision = signer::approve_and_sign(
        &api,
        (*request).clone(),
        &ctx.signer,
        |current| async move {
            let pod = fetch_pod(ctx, &current).await?;
            Ok(decide(&ctx.policy, &current, pod.as_ref()))
        },
    )
    .await?;
    if let WriteOutcome::Written { then, .. } = decision {
        tracing::info!(%namespace, %name, condition = %then.condition.type_,
            reason = %then.condition.reason.unwrap_or_default(), signed = then.signed, "SPIFFE request decided");
    }
    Ok(Action::await_change())
}

fn error_policy(_: Arc<CertificateRequest>, error: &ReconcileError, _: Arc<Context>) -> Action {
    tracing::warn!(%error, "SPIFFE approver: reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// Runs the SPIFFE approver until `shutdown` fires.
pub async fn run(
    client: kube::Client,
    policy: Arc<SpiffePolicy>,
    signer: super::signer::SignerSlot,
    health: Health,
    shutdown: CancellationToken,
) {
    let api: Api<CertificateRequest> = Api::all(client.clone());
    let ctx = Arc::new(Context {
        client,
        policy,
        signer,
    });
    // On the runner, not kube-runtime's Controller: in SPIFFE mode this
    // approval is on every publish's path (see `runner`).
    let (store, changed) = runner::watch_all(api, "SPIFFE approver", health);
    runner::run(store, changed, reconcile, error_policy, ctx, shutdown).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{CertificateRequestSpec, IssuerRef, PemBytes};
    use crate::pki::{CsrOptions, Curve, PrivateKey, SanSpec, SubjectSpec, build_csr};
    use std::collections::BTreeMap;

    fn policy() -> SpiffePolicy {
        SpiffePolicy::from_flags(&SpiffeFlags {
            trust_domain: "example.org",
            id_template: spiffe::DEFAULT_ID_TEMPLATE,
            issuers: "clusterissuers.cert-manager.io/spiffe",
            duration: Duration::from_secs(3600),
            key_types: "P-256,P-384,Ed25519",
            node_accounts: "cert-csi:cert-csi-node",
        })
        .unwrap()
    }

    fn csr_for(key: &PrivateKey, sans: SanSpec, subject: SubjectSpec, usages: bool) -> String {
        build_csr(
            key,
            &subject,
            &sans,
            &CsrOptions {
                encode_usages: usages.then_some((&spiffe::USAGES[..], false)),
                critical_san_when_subject_empty: true,
                ..Default::default()
            },
        )
        .unwrap()
        .pem
    }

    fn uri(id: &str) -> SanSpec {
        SanSpec {
            uris: vec![id.into()],
            ..Default::default()
        }
    }

    fn request(csr: String, username: &str) -> CertificateRequest {
        let mut r = CertificateRequest::new(
            "r",
            CertificateRequestSpec {
                request: PemBytes::from(csr.as_str()),
                issuer_ref: IssuerRef::cluster_issuer("spiffe"),
                duration: Some("1h0m0s".into()),
                is_ca: Some(false),
                usages: Some(spiffe::USAGES.iter().map(|u| u.name().to_owned()).collect()),
                username: Some(username.into()),
                ..Default::default()
            },
        );
        r.metadata.namespace = Some("shop".into());
        r.metadata.annotations = Some(BTreeMap::from([(
            spiffe::ANNOTATION_IDENTITY.to_owned(),
            "spiffe://example.org/ns/shop/sa/billing".to_owned(),
        )]));
        r
    }

    const BILLING: &str = "system:serviceaccount:shop:billing";
    const ID: &str = "spiffe://example.org/ns/shop/sa/billing";

    fn key() -> PrivateKey {
        PrivateKey::generate(KeyAlgorithm::Ecdsa(Curve::P256)).unwrap()
    }

    fn denied_with(d: Decision, reason: &str, needle: &str) {
        match d {
            Decision::Deny { reason: r, message } => {
                assert_eq!(r, reason, "{message}");
                assert!(message.contains(needle), "{message}");
            }
            other => panic!("expected a denial ({reason}), got {other:?}"),
        }
    }

    #[test]
    fn a_correct_pod_token_request_is_approved_with_or_without_usage_extensions() {
        let p = policy();
        let k = key();
        for usages in [true, false] {
            let r = request(
                csr_for(&k, uri(ID), SubjectSpec::default(), usages),
                BILLING,
            );
            assert_eq!(p.evaluate(&r, None), Decision::Approve);
        }
        let ed = PrivateKey::generate(KeyAlgorithm::Ed25519).unwrap();
        let r = request(csr_for(&ed, uri(ID), SubjectSpec::default(), true), BILLING);
        assert_eq!(p.evaluate(&r, None), Decision::Approve);
    }

    #[test]
    fn each_forgery_names_its_check() {
        let p = policy();
        let k = key();
        let good = || csr_for(&k, uri(ID), SubjectSpec::default(), true);

        let other = request(
            csr_for(
                &k,
                uri("spiffe://example.org/ns/shop/sa/admin"),
                SubjectSpec::default(),
                true,
            ),
            BILLING,
        );
        denied_with(p.evaluate(&other, None), reasons::ID, "entitled only to");

        let mut sans = uri(ID);
        sans.dns_names.push("billing.shop.svc".into());
        let dns = request(csr_for(&k, sans, SubjectSpec::default(), true), BILLING);
        denied_with(p.evaluate(&dns, None), reasons::SANS, "DNS name");

        let mut wrong = request(good(), BILLING);
        wrong.spec.duration = Some("2h".into());
        denied_with(p.evaluate(&wrong, None), reasons::DURATION, "1h0m0s");
        wrong.spec.duration = None;
        denied_with(p.evaluate(&wrong, None), reasons::DURATION, "unset");

        let mut ca = request(good(), BILLING);
        ca.spec.is_ca = Some(true);
        denied_with(p.evaluate(&ca, None), reasons::IS_CA, "isCA");

        let ca_csr = build_csr(
            &k,
            &SubjectSpec::default(),
            &uri(ID),
            &CsrOptions {
                encode_usages: Some((&spiffe::USAGES[..], true)),
                critical_san_when_subject_empty: true,
                ..Default::default()
            },
        )
        .unwrap()
        .pem;
        denied_with(
            p.evaluate(&request(ca_csr, BILLING), None),
            reasons::EXTENSIONS,
            "2.5.29.19",
        );

        let mut usages = request(good(), BILLING);
        usages.spec.usages = Some(vec!["digital signature".into(), "server auth".into()]);
        denied_with(p.evaluate(&usages, None), reasons::USAGES, "spec.usages");

        let cn = SubjectSpec {
            common_name: Some("billing".into()),
            ..Default::default()
        };
        let cn = request(csr_for(&k, uri(ID), cn, true), BILLING);
        denied_with(p.evaluate(&cn, None), reasons::SUBJECT, "CN=billing");

        let two = SanSpec {
            uris: vec![ID.into(), "spiffe://example.org/x".into()],
            ..Default::default()
        };
        let two = request(csr_for(&k, two, SubjectSpec::default(), true), BILLING);
        denied_with(p.evaluate(&two, None), reasons::ID, "exactly one");

        let rsa = PrivateKey::generate(KeyAlgorithm::Rsa { bits: 2048 }).unwrap();
        let rsa = request(
            csr_for(&rsa, uri(ID), SubjectSpec::default(), true),
            BILLING,
        );
        denied_with(p.evaluate(&rsa, None), reasons::KEY_TYPE, "RSA");

        let anon = request(good(), "system:anonymous");
        denied_with(
            p.evaluate(&anon, None),
            reasons::REQUESTER,
            "system:anonymous",
        );

        let mut elsewhere = request(good(), BILLING);
        elsewhere.spec.issuer_ref = IssuerRef::issuer("ca");
        denied_with(
            p.evaluate(&elsewhere, None),
            reasons::ISSUER,
            "--spiffe-issuer",
        );
    }

    #[test]
    fn a_tampered_csr_fails_the_signature_check() {
        let p = policy();
        let pem = csr_for(&key(), uri(ID), SubjectSpec::default(), true);
        let mut der = pem::parse(&pem).unwrap().into_contents();
        // The last byte belongs to the signature.
        let last = der.len() - 1;
        der[last] ^= 0x01;
        let tampered = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der));
        denied_with(
            p.evaluate(&request(tampered, BILLING), None),
            reasons::SIGNATURE,
            "signature",
        );
    }

    fn node_request(
        pod: &str,
        uid: &str,
        node: &str,
        token_node: Option<&str>,
    ) -> CertificateRequest {
        let mut r = request(
            csr_for(&key(), uri(ID), SubjectSpec::default(), true),
            "system:serviceaccount:cert-csi:cert-csi-node",
        );
        let a = r.metadata.annotations.as_mut().unwrap();
        a.insert(spiffe::ANNOTATION_POD_NAME.into(), pod.into());
        a.insert(spiffe::ANNOTATION_POD_UID.into(), uid.into());
        a.insert(spiffe::ANNOTATION_NODE.into(), node.into());
        r.spec.extra = token_node
            .map(|n| BTreeMap::from([(spiffe::EXTRA_NODE_NAME.to_owned(), vec![n.to_owned()])]));
        r
    }

    #[test]
    fn node_account_requests_are_bound_to_a_real_pod_on_the_node() {
        let p = policy();
        let pod = PodFacts {
            uid: "u1".into(),
            node_name: Some("node-a".into()),
            service_account: "billing".into(),
        };
        let ok = node_request("web", "u1", "node-a", Some("node-a"));
        assert_eq!(
            p.pod_to_fetch(&ok),
            Some(("shop".to_owned(), "web".to_owned()))
        );
        assert_eq!(p.evaluate(&ok, Some(&pod)), Decision::Approve);
        // Without a pod-bound token the annotation is the node's word.
        assert_eq!(
            p.evaluate(&node_request("web", "u1", "node-a", None), Some(&pod)),
            Decision::Approve
        );
        denied_with(
            p.evaluate(&ok, None),
            reasons::POD_BINDING,
            "does not exist",
        );
        denied_with(
            p.evaluate(&node_request("web", "u0", "node-a", None), Some(&pod)),
            reasons::POD_BINDING,
            "uid",
        );
        denied_with(
            p.evaluate(
                &node_request("web", "u1", "node-b", Some("node-b")),
                Some(&pod),
            ),
            reasons::POD_BINDING,
            "scheduled on node \"node-a\"",
        );
        let on_b = PodFacts {
            node_name: Some("node-b".into()),
            ..pod.clone()
        };
        denied_with(
            p.evaluate(
                &node_request("web", "u1", "node-b", Some("node-a")),
                Some(&on_b),
            ),
            reasons::POD_BINDING,
            "its own node",
        );
        let admin = PodFacts {
            service_account: "admin".into(),
            ..pod.clone()
        };
        denied_with(
            p.evaluate(&ok, Some(&admin)),
            reasons::ID,
            "spiffe://example.org/ns/shop/sa/admin",
        );
        let mut bare = node_request("web", "u1", "node-a", None);
        bare.metadata
            .annotations
            .as_mut()
            .unwrap()
            .remove(spiffe::ANNOTATION_NODE);
        denied_with(
            p.evaluate(&bare, Some(&pod)),
            reasons::POD_BINDING,
            "annotations",
        );
        // Mode (a) requests never fetch a pod.
        let a = request(
            csr_for(&key(), uri(ID), SubjectSpec::default(), true),
            BILLING,
        );
        assert_eq!(p.pod_to_fetch(&a), None);
    }

    #[test]
    fn scope_and_the_generic_approver_stay_apart() {
        let p = Arc::new(policy());
        let mut plain = request("x".into(), BILLING);
        plain.metadata.annotations = None;
        plain.spec.issuer_ref = IssuerRef::issuer("ca");
        assert_eq!(p.evaluate(&plain, None), Decision::Abstain);
        let generic = ExceptSpiffe {
            inner: Arc::new(super::super::ApproveAll),
            spiffe: Some(p.clone()),
        };
        assert_eq!(generic.evaluate(&plain), Decision::Approve);
        let marked = request("x".into(), BILLING);
        assert_eq!(generic.evaluate(&marked), Decision::Abstain);
        // Unmarked but addressed to the SPIFFE issuer: still ours.
        let mut unmarked = marked.clone();
        unmarked.metadata.annotations = None;
        assert!(p.is_spiffe(&unmarked));
        assert_eq!(generic.evaluate(&unmarked), Decision::Abstain);
        let unconfigured = ExceptSpiffe {
            inner: Arc::new(super::super::ApproveAll),
            spiffe: None,
        };
        assert_eq!(unconfigured.evaluate(&marked), Decision::Abstain);
        assert_eq!(unconfigured.evaluate(&unmarked), Decision::Approve);
    }

    #[test]
    fn flags_are_validated_with_their_names() {
        let base = SpiffeFlags {
            trust_domain: "example.org",
            id_template: spiffe::DEFAULT_ID_TEMPLATE,
            issuers: "clusterissuers.cert-manager.io/spiffe",
            duration: Duration::from_secs(3600),
            key_types: "P-256",
            node_accounts: "",
        };
        let cases: [(SpiffeFlags, &str); 6] = [
            (
                SpiffeFlags {
                    trust_domain: "Bad",
                    ..base.clone()
                },
                "--spiffe-trust-domain",
            ),
            (
                SpiffeFlags {
                    id_template: "/{pod}",
                    ..base.clone()
                },
                "--spiffe-id-template",
            ),
            (
                SpiffeFlags {
                    issuers: "spiffe",
                    ..base.clone()
                },
                "--spiffe-issuer",
            ),
            (
                SpiffeFlags {
                    key_types: "RSA",
                    ..base.clone()
                },
                "--spiffe-key-types",
            ),
            (
                SpiffeFlags {
                    node_accounts: "cert-csi/node",
                    ..base.clone()
                },
                "--spiffe-node-accounts",
            ),
            (
                SpiffeFlags {
                    duration: Duration::from_secs(5),
                    ..base.clone()
                },
                "--spiffe-duration",
            ),
        ];
        for (flags, name) in cases {
            let err = SpiffePolicy::from_flags(&flags).unwrap_err().to_string();
            assert!(err.starts_with(name), "{err}");
        }
        assert!(SpiffePolicy::from_flags(&base).is_ok());
    }
}
