//! The CertificateRequest lifecycle for one volume: create the request, wait
//! for the approver's and signer's decision by watching, and clean up.

pub mod tracker;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use thiserror::Error;

use crate::api::{CertificateRequest, CertificateRequestSpec, IssuerRef, PemBytes};
use crate::pki::Usage;
use crate::store::id_hash;
use crate::telemetry::metrics::IssueErrorReason;
pub use tracker::{RequestTracker, Seen, Subscription};

/// Label carrying a hash of the node id: the node plugin watches only its own
/// requests. Label values are limited to 63 characters, so ids are hashed.
pub const NODE_LABEL: &str = "csi.cert-manager.io/node-id-hash";
/// Label carrying a hash of the volume id (a kubelet volume id is 68 chars).
pub const VOLUME_LABEL: &str = "csi.cert-manager.io/volume-id-hash";

pub fn node_selector(node_id: &str) -> String {
    format!("{NODE_LABEL}={}", id_hash(node_id))
}

fn volume_selector(node_id: &str, volume_id: &str) -> String {
    format!(
        "{NODE_LABEL}={},{VOLUME_LABEL}={}",
        id_hash(node_id),
        id_hash(volume_id)
    )
}

/// Everything a request for one volume carries.
pub struct RequestParams<'a> {
    pub node_id: &'a str,
    pub volume_id: &'a str,
    pub pod_namespace: &'a str,
    pub pod_name: &'a str,
    pub pod_uid: &'a str,
    pub csr_pem: &'a str,
    pub issuer_ref: IssuerRef,
    pub duration: Duration,
    pub is_ca: bool,
    pub usages: &'a [Usage],
    pub annotations: &'a BTreeMap<String, String>,
}

#[derive(Debug, Error)]
pub enum IssuanceError {
    #[error(
        "CertificateRequest {namespace}/{name} was denied ({reason}): {message}. Check the approver's policy for issuer {issuer}"
    )]
    Denied {
        namespace: String,
        name: String,
        issuer: String,
        reason: String,
        message: String,
    },
    #[error("CertificateRequest {namespace}/{name} failed ({reason}): {message}")]
    Failed {
        namespace: String,
        name: String,
        reason: String,
        message: String,
    },
    #[error(
        "timed out after {waited:?} waiting for CertificateRequest {namespace}/{name}: {waiting_for}. The request is kept and the next attempt resumes it"
    )]
    Timeout {
        namespace: String,
        name: String,
        waited: Duration,
        waiting_for: String,
    },
    #[error("CertificateRequest {namespace}/{name} was deleted before it was issued")]
    Vanished { namespace: String, name: String },
    #[error("the Kubernetes API refused {action}: {source}")]
    Api {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error("CertificateRequest {namespace}/{name} is issued but {problem}")]
    BadCertificate {
        namespace: String,
        name: String,
        problem: String,
    },
}

impl IssuanceError {
    /// The `reason` label this failure counts under.
    pub fn metric_reason(&self) -> IssueErrorReason {
        match self {
            IssuanceError::Denied { .. } => IssueErrorReason::Denied,
            IssuanceError::Failed { .. } | IssuanceError::Vanished { .. } => {
                IssueErrorReason::Failed
            }
            IssuanceError::Timeout { .. } => IssueErrorReason::Timeout,
            IssuanceError::Api { .. } => IssueErrorReason::Api,
            IssuanceError::BadCertificate { .. } => IssueErrorReason::Invalid,
        }
    }

    fn api(action: impl Into<String>, source: kube::Error) -> Self {
        IssuanceError::Api {
            action: action.into(),
            source,
        }
    }

    /// The HTTP status of an API refusal, if that is what this is.
    pub fn api_status(&self) -> Option<u16> {
        match self {
            IssuanceError::Api {
                source: kube::Error::Api(status),
                ..
            } => Some(status.code),
            _ => None,
        }
    }
}

/// A request name chosen client-side, so the waiter can subscribe before the
/// request exists. Pod names can be 253 characters; the prefix is cut so the
/// whole name stays a valid object name, and the suffix is random.
pub fn new_request_name(pod_name: &str) -> String {
    let prefix: String = pod_name.chars().take(52).collect();
    let prefix = prefix.trim_end_matches(['-', '.']);
    let suffix: u64 = rand::random();
    format!("{prefix}-{:010x}", suffix & 0xff_ffff_ffff)
}

/// Builds the request object. Kept separate from the API call so its shape is
/// testable without a server.
pub fn build_request(name: &str, params: &RequestParams<'_>) -> CertificateRequest {
    let labels = BTreeMap::from([
        (NODE_LABEL.to_string(), id_hash(params.node_id)),
        (VOLUME_LABEL.to_string(), id_hash(params.volume_id)),
    ]);
    let metadata = ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(params.pod_namespace.to_string()),
        labels: Some(labels),
        annotations: (!params.annotations.is_empty()).then(|| params.annotations.clone()),
        // The pod owns its requests: deleting the pod collects them even if
        // this node never sees an unpublish.
        owner_references: Some(vec![OwnerReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: params.pod_name.to_string(),
            uid: params.pod_uid.to_string(),
            controller: None,
            block_owner_deletion: None,
        }]),
        ..Default::default()
    };
    CertificateRequest {
        metadata,
        spec: CertificateRequestSpec {
            request: PemBytes(params.csr_pem.as_bytes().to_vec()),
            issuer_ref: params.issuer_ref.clone(),
            duration: Some(crate::api::duration::format_go(params.duration)),
            // csi-lib leaves isCA out unless it is true; so do we, so the
            // stored object is the same for approvers and policies.
            is_ca: params.is_ca.then_some(true),
            usages: Some(params.usages.iter().map(|u| u.name().to_string()).collect()),
            username: None,
            uid: None,
            groups: None,
            extra: None,
        },
        status: None,
    }
}

pub async fn create(
    client: &Client,
    request: &CertificateRequest,
) -> Result<CertificateRequest, IssuanceError> {
    let namespace = request.namespace().unwrap_or_default();
    let api: Api<CertificateRequest> = Api::namespaced(client.clone(), &namespace);
    api.create(&PostParams::default(), request)
        .await
        .map_err(|e| {
            IssuanceError::api(
                format!(
                    "creating CertificateRequest {namespace}/{}",
                    request.name_any()
                ),
                e,
            )
        })
}

pub async fn get(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<CertificateRequest>, IssuanceError> {
    let api: Api<CertificateRequest> = Api::namespaced(client.clone(), namespace);
    api.get_opt(name).await.map_err(|e| {
        IssuanceError::api(format!("reading CertificateRequest {namespace}/{name}"), e)
    })
}

/// The outcome of a request that was issued.
pub struct Issued {
    pub chain_pem: String,
    pub ca_pem: String,
}

/// Waits, by watch, until the request is issued, denied or failed, or until
/// `timeout` passes. A request that is merely slow is never deleted here:
/// the caller keeps it, and a retry resumes the same request.
pub async fn wait(sub: &mut Subscription, timeout: Duration) -> Result<Issued, IssuanceError> {
    wait_until(sub, Some(timeout)).await
}

/// Waits for the decision with no deadline, as a renewal does: under an
/// issuer backlog the request is waited on, never deleted and recreated. It
/// still ends with a Timeout error if the tracker stops (shutdown).
pub async fn wait_for_decision(sub: &mut Subscription) -> Result<Issued, IssuanceError> {
    wait_until(sub, None).await
}

async fn wait_until(
    sub: &mut Subscription,
    timeout: Option<Duration>,
) -> Result<Issued, IssuanceError> {
    let started = tokio::time::Instant::now();
    let deadline = timeout.map(|t| started + t);
    loop {
        let seen = sub.rx.borrow_and_update().clone();
        match &seen {
            Seen::Present(request) => {
                if let Some(outcome) = decide(request, &sub.namespace, &sub.name) {
                    return outcome;
                }
            }
            Seen::Deleted => {
                return Err(IssuanceError::Vanished {
                    namespace: sub.namespace.clone(),
                    name: sub.name.clone(),
                });
            }
            Seen::Unknown => {}
        }
        let changed = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, sub.rx.changed()).await,
            None => Ok(sub.rx.changed().await),
        };
        match changed {
            Ok(Ok(())) => continue,
            // The tracker stopped (shutdown): report it as a timeout so the
            // request is kept for the next attempt.
            Ok(Err(_)) | Err(_) => {
                return Err(IssuanceError::Timeout {
                    namespace: sub.namespace.clone(),
                    name: sub.name.clone(),
                    waited: timeout.unwrap_or_else(|| started.elapsed()),
                    waiting_for: waiting_for(&seen),
                });
            }
        }
    }
}

/// Turns a request's conditions into an outcome, or None while undecided.
fn decide(
    request: &CertificateRequest,
    namespace: &str,
    name: &str,
) -> Option<Result<Issued, IssuanceError>> {
    use crate::api::conditions::types;
    let condition = |t: &str| request.condition(t).cloned();
    let describe = |t: &str| {
        let c = condition(t);
        (
            c.as_ref()
                .and_then(|c| c.reason.clone())
                .unwrap_or_default(),
            c.as_ref()
                .and_then(|c| c.message.clone())
                .unwrap_or_default(),
        )
    };
    if request.is_denied() {
        let (reason, message) = describe(types::DENIED);
        return Some(Err(IssuanceError::Denied {
            namespace: namespace.into(),
            name: name.into(),
            issuer: describe_issuer(&request.spec.issuer_ref),
            reason,
            message,
        }));
    }
    if request.is_invalid_request() {
        let (reason, message) = describe(types::INVALID_REQUEST);
        return Some(Err(IssuanceError::Failed {
            namespace: namespace.into(),
            name: name.into(),
            reason,
            message,
        }));
    }
    if request.is_failed() {
        let (reason, message) = describe(types::READY);
        return Some(Err(IssuanceError::Failed {
            namespace: namespace.into(),
            name: name.into(),
            reason,
            message,
        }));
    }
    if request.is_ready() {
        let status = request.status.as_ref()?;
        let chain = match status.certificate_pem() {
            Ok(Some(chain)) => chain.to_string(),
            // Ready without a certificate is a signer bug; wait for a fix
            // rather than mount an empty file.
            Ok(None) => return None,
            Err(e) => {
                return Some(Err(IssuanceError::BadCertificate {
                    namespace: namespace.into(),
                    name: name.into(),
                    problem: e.to_string(),
                }));
            }
        };
        let ca = status
            .ca_pem()
            .ok()
            .flatten()
            .unwrap_or_default()
            .to_string();
        return Some(Ok(Issued {
            chain_pem: chain,
            ca_pem: ca,
        }));
    }
    None
}

fn describe_issuer(issuer: &IssuerRef) -> String {
    format!(
        "{}.{}/{}",
        issuer.kind_or_default(),
        issuer.group_or_default(),
        issuer.name
    )
}

/// Says which condition a timed-out publish was waiting for, in words a
/// user can act on from `kubectl describe pod`.
fn waiting_for(seen: &Seen) -> String {
    use crate::api::conditions::types;
    match seen {
        Seen::Unknown => "no update was seen for it yet; is the API server reachable?".into(),
        Seen::Deleted => "it was deleted".into(),
        Seen::Present(request) if !request.is_approved() => format!(
            "it is not approved yet (no Approved condition). Is an approver running for issuer {}?",
            describe_issuer(&request.spec.issuer_ref)
        ),
        Seen::Present(request) => {
            let ready = request.condition(types::READY);
            match ready {
                Some(c) => format!(
                    "it is approved and waiting for the issuer to sign it (Ready={:?} reason {}: {})",
                    c.status,
                    c.reason.as_deref().unwrap_or("-"),
                    c.message.as_deref().unwrap_or("-")
                ),
                None => format!(
                    "it is approved and waiting for issuer {} to sign it (no Ready condition yet)",
                    describe_issuer(&request.spec.issuer_ref)
                ),
            }
        }
    }
}

/// Lists this volume's requests, oldest first. The labels hold 32-bit
/// hashes (csi-lib's), which two volumes of one node may share; with
/// `pod_uid`, only requests that pod owns are listed, so a clean-up never
/// touches another pod's requests.
pub async fn list_for_volume(
    client: &Client,
    namespace: &str,
    node_id: &str,
    volume_id: &str,
    pod_uid: Option<&str>,
) -> Result<Vec<CertificateRequest>, IssuanceError> {
    let api: Api<CertificateRequest> = Api::namespaced(client.clone(), namespace);
    let params = ListParams::default().labels(&volume_selector(node_id, volume_id));
    let mut items = api
        .list(&params)
        .await
        .map_err(|e| IssuanceError::api(format!("listing CertificateRequests in {namespace}"), e))?
        .items;
    if let Some(uid) = pod_uid {
        items.retain(|cr| cr.owner_references().iter().any(|o| o.uid == uid));
    }
    items.sort_by(|a, b| {
        a.metadata
            .creation_timestamp
            .cmp(&b.metadata.creation_timestamp)
            .then_with(|| a.name_any().cmp(&b.name_any()))
    });
    Ok(items)
}

/// Which of a volume's requests survive a clean-up.
#[derive(Clone, Copy, Debug)]
pub enum Keep<'a> {
    /// None: the volume is gone.
    Nothing,
    /// Request hygiene after an issuance: the newest `count` (at least
    /// one), always including `current`, the request just issued.
    Newest { count: usize, current: &'a str },
}

/// The names `keep` spares among `names`, which are oldest first.
pub fn names_to_keep(names: &[String], keep: Keep<'_>) -> Vec<String> {
    let Keep::Newest { count, current } = keep else {
        return Vec::new();
    };
    let mut kept: Vec<String> = names.iter().rev().take(count.max(1)).cloned().collect();
    if !kept.iter().any(|n| n == current) {
        kept.pop();
        kept.push(current.to_string());
    }
    kept
}

/// Deletes a volume's requests except those `keep` spares, one at a time,
/// calling `deleted` after each so metrics follow the API exactly even when
/// a later delete fails.
pub async fn delete_for_volume(
    client: &Client,
    namespace: &str,
    node_id: &str,
    volume_id: &str,
    pod_uid: Option<&str>,
    keep: Keep<'_>,
    mut deleted: impl FnMut(&str),
) -> Result<(), IssuanceError> {
    let api: Api<CertificateRequest> = Api::namespaced(client.clone(), namespace);
    let requests = list_for_volume(client, namespace, node_id, volume_id, pod_uid).await?;
    let names: Vec<String> = requests.iter().map(ResourceExt::name_any).collect();
    let kept = names_to_keep(&names, keep);
    for name in names.iter().filter(|n| !kept.contains(n)) {
        delete(&api, namespace, name).await?;
        deleted(name);
    }
    Ok(())
}

pub async fn delete_one(client: &Client, namespace: &str, name: &str) -> Result<(), IssuanceError> {
    let api: Api<CertificateRequest> = Api::namespaced(client.clone(), namespace);
    delete(&api, namespace, name).await
}

async fn delete(
    api: &Api<CertificateRequest>,
    namespace: &str,
    name: &str,
) -> Result<(), IssuanceError> {
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(IssuanceError::api(
            format!("deleting CertificateRequest {namespace}/{name}"),
            e,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuance_errors_map_to_bounded_reasons() {
        let denied = IssuanceError::Denied {
            namespace: "n".into(),
            name: "r".into(),
            issuer: "i".into(),
            reason: "Denied".into(),
            message: "no".into(),
        };
        assert_eq!(denied.metric_reason(), IssueErrorReason::Denied);
        let timeout = IssuanceError::Timeout {
            namespace: "n".into(),
            name: "r".into(),
            waited: Duration::from_secs(1),
            waiting_for: "approval".into(),
        };
        assert_eq!(timeout.metric_reason(), IssueErrorReason::Timeout);
        let vanished = IssuanceError::Vanished {
            namespace: "n".into(),
            name: "r".into(),
        };
        assert_eq!(vanished.metric_reason(), IssueErrorReason::Failed);
    }

    #[test]
    fn hygiene_keeps_the_newest_and_always_the_current_request() {
        let names: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
        let keep = |count, current| names_to_keep(&names, Keep::Newest { count, current });
        assert_eq!(keep(1, "d"), ["d"]);
        assert_eq!(keep(2, "d"), ["d", "c"]);
        // The current request is kept even when it is not the newest.
        assert_eq!(keep(1, "b"), ["b"]);
        assert_eq!(keep(2, "a"), ["d", "a"]);
        // Zero still keeps the current one.
        assert_eq!(keep(0, "d"), ["d"]);
        assert!(names_to_keep(&names, Keep::Nothing).is_empty());
    }

    #[test]
    fn label_hashes_are_csi_libs() {
        // What csi-driver v0.15.0 put on its requests for node
        // "node-e2e-1" (seen in the differential test's run).
        assert_eq!(id_hash("node-e2e-1"), "67d4d757b6");
        // FNV-1 32 of "a" is 0x050c5d7e = 84696446; '8' is the 56th byte,
        // 56 % 27 = 2 → 'd', and so on.
        assert_eq!(id_hash("a"), "d8bfb88b");
        let volume_id = format!("csi-{}", "a".repeat(64));
        let hash = id_hash(&volume_id);
        assert!(hash.len() <= 10, "a u32 has at most 10 digits: {hash}");
        assert!(
            hash.bytes()
                .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b))
        );
        assert_ne!(hash, id_hash("csi-other"));
    }

    #[test]
    fn request_names_are_valid_and_distinct() {
        let long = "p".repeat(253);
        for pod in ["web-0", long.as_str(), "a-b-c-", "x.y"] {
            let name = new_request_name(pod);
            assert!(name.len() <= 63, "{name}");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            );
            assert!(!name.contains("--") || pod.ends_with('-'));
        }
        assert_ne!(new_request_name("web"), new_request_name("web"));
    }
}
