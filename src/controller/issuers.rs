//! Issuer and ClusterIssuer readiness: SelfSigned is always ready; CA is
//! ready when its Secret holds a CA certificate and the matching key.
//!
//! Secrets are watched metadata-only (names and versions, never key bytes),
//! and each change is mapped to the issuers naming that Secret, so fixing a
//! Secret makes its issuer Ready without polling. The Secret itself is read
//! with one GET when an issuer is reconciled, so no Secret data is cached.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::core::object::{HasSpec, HasStatus};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::status::{self, Decided, ReconcileError};
use super::{ControllerOptions, Health};
use crate::api::conditions::{ConditionStatus, messages, reasons, types};
use crate::api::{ClusterIssuer, Issuer, IssuerCondition, IssuerSpec, IssuerStatus, IssuerType};
use crate::pki::{PrivateKey, key_matches_certificate, parse_chain};
use crate::shutdown::CancellationToken;
use crate::telemetry::ControllerMetrics;
use crate::telemetry::metrics::SyncController;
use kube::runtime::reflector::Store;

/// What the CA Secret read returned.
pub enum SecretRead<'a> {
    Missing,
    Unreadable(String),
    Found(&'a Secret),
}

/// The Ready condition of a CA issuer whose Secret `namespace/name` is
/// `secret`. Pure; the loop writes what this returns.
pub fn ca_ready(
    namespace: &str,
    name: &str,
    secret: SecretRead<'_>,
    generation: Option<i64>,
) -> IssuerCondition {
    let not_ready = |reason: &str, message: String| {
        IssuerCondition::new(
            types::READY,
            ConditionStatus::False,
            reason,
            message,
            generation,
        )
    };
    let secret = match secret {
        SecretRead::Missing => {
            return not_ready(
                reasons::ERR_GET_KEY_PAIR,
                format!(
                    "Error getting keypair for CA issuer: secret {namespace}/{name} (spec.ca.secretName) not found; create it with tls.crt and tls.key"
                ),
            );
        }
        SecretRead::Unreadable(e) => {
            return not_ready(
                reasons::ERR_GET_KEY_PAIR,
                format!(
                    "Error getting keypair for CA issuer: reading secret {namespace}/{name} failed: {e}"
                ),
            );
        }
        SecretRead::Found(s) => s,
    };
    let field = |key: &str| crate::kubernetes::secret_field(secret, key);
    let (Some(crt), Some(key)) = (field("tls.crt"), field("tls.key")) else {
        return not_ready(
            reasons::ERR_GET_KEY_PAIR,
            format!(
                "Error getting keypair for CA issuer: secret {namespace}/{name} lacks tls.crt or tls.key; store the CA certificate and its key under those keys"
            ),
        );
    };
    let invalid = |what: String| {
        not_ready(
            reasons::ERR_INVALID_KEY_PAIR,
            format!("Error decoding keypair in secret {namespace}/{name}: {what}"),
        )
    };
    let chain = match parse_chain(crt) {
        Ok(c) => c,
        Err(e) => return invalid(format!("tls.crt: {e}")),
    };
    let key = match PrivateKey::from_pem(key) {
        Ok(k) => k,
        Err(e) => return invalid(format!("tls.key: {e}")),
    };
    let ca = &chain[0];
    if !ca.is_ca {
        return invalid(format!(
            "the certificate {:?} in tls.crt is not a CA (BasicConstraints CA is not true); issue it with isCA: true",
            ca.subject
        ));
    }
    if !key_matches_certificate(&key, ca) {
        return invalid(format!(
            "tls.key does not match the public key of {:?} in tls.crt; store the matching key pair",
            ca.subject
        ));
    }
    IssuerCondition::new(
        types::READY,
        ConditionStatus::True,
        reasons::KEY_PAIR_VERIFIED,
        messages::SIGNING_CA_VERIFIED,
        generation,
    )
}

/// Ready for issuer types cert-csi does not sign with: left to whoever runs them.
fn foreign_type(spec: &IssuerSpec, kind: &'static str) -> Option<String> {
    match spec.issuer_type(kind) {
        Ok(IssuerType::SelfSigned(_) | IssuerType::Ca(_)) => None,
        Ok(_) => Some(String::new()),
        Err(e) => Some(e.to_string()),
    }
}

/// Whether `current` already says what `wanted` says (the transition time
/// is not compared: it only changes with the status).
fn same_condition(current: Option<&IssuerCondition>, wanted: &IssuerCondition) -> bool {
    current.is_some_and(|c| {
        c.status == wanted.status
            && c.reason == wanted.reason
            && c.message == wanted.message
            && c.observed_generation == wanted.observed_generation
    })
}

/// The parts of Issuer and ClusterIssuer this loop needs.
pub trait IssuerObject:
    kube::Resource<DynamicType = ()>
    + HasSpec<Spec = IssuerSpec>
    + HasStatus<Status = IssuerStatus>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    const KIND: &'static str;
    /// This kind's `certmanager_controller_sync_call_count` label.
    const SYNC: SyncController;
    /// Hands the loop's cache to the `*_ready_status` collector.
    fn expose(metrics: &ControllerMetrics, store: Store<Self>);
    /// Where this issuer's CA Secret lives.
    fn secret_namespace(&self, cluster_resource_namespace: &str) -> String;
    fn api(client: kube::Client, namespace: Option<&str>) -> Api<Self>;
}

impl IssuerObject for Issuer {
    const KIND: &'static str = "Issuer";
    const SYNC: SyncController = SyncController::Issuers;
    fn expose(metrics: &ControllerMetrics, store: Store<Self>) {
        metrics.issuer_stores().set_issuers(store);
    }
    fn secret_namespace(&self, _: &str) -> String {
        self.metadata.namespace.clone().unwrap_or_default()
    }
    fn api(client: kube::Client, namespace: Option<&str>) -> Api<Self> {
        match namespace {
            Some(ns) => Api::namespaced(client, ns),
            None => Api::all(client),
        }
    }
}

impl IssuerObject for ClusterIssuer {
    const KIND: &'static str = "ClusterIssuer";
    const SYNC: SyncController = SyncController::ClusterIssuers;
    fn expose(metrics: &ControllerMetrics, store: Store<Self>) {
        metrics.issuer_stores().set_cluster_issuers(store);
    }
    fn secret_namespace(&self, cluster_resource_namespace: &str) -> String {
        cluster_resource_namespace.to_owned()
    }
    fn api(client: kube::Client, _: Option<&str>) -> Api<Self> {
        Api::all(client)
    }
}

struct Context {
    client: kube::Client,
    cluster_resource_namespace: String,
    metrics: ControllerMetrics,
}

/// The Ready condition `issuer` should carry, reading its Secret if it is a CA.
async fn wanted_condition<K: IssuerObject>(issuer: &K, ctx: &Context) -> Option<IssuerCondition> {
    let generation = issuer.meta().generation;
    if let Some(problem) = foreign_type(issuer.spec(), K::KIND) {
        // An invalid spec is reported; a valid foreign type is not ours to judge.
        return (!problem.is_empty()).then(|| {
            IssuerCondition::new(
                types::READY,
                ConditionStatus::False,
                "InvalidSpec",
                problem,
                generation,
            )
        });
    }
    match issuer.spec().issuer_type(K::KIND) {
        Ok(IssuerType::SelfSigned(_)) => Some(IssuerCondition::new(
            types::READY,
            ConditionStatus::True,
            reasons::IS_READY,
            "",
            generation,
        )),
        Ok(IssuerType::Ca(ca)) => {
            let namespace = issuer.secret_namespace(&ctx.cluster_resource_namespace);
            let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
            let fetched = api.get_opt(&ca.secret_name).await;
            let read = match &fetched {
                Ok(Some(s)) => SecretRead::Found(s),
                Ok(None) => SecretRead::Missing,
                Err(e) => SecretRead::Unreadable(e.to_string()),
            };
            Some(ca_ready(&namespace, &ca.secret_name, read, generation))
        }
        _ => None,
    }
}

async fn reconcile<K: IssuerObject>(
    issuer: Arc<K>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    ctx.metrics.sync_call(K::SYNC);
    let namespace = issuer.meta().namespace.clone();
    let name = issuer.meta().name.clone().unwrap_or_default();
    let api = K::api(ctx.client.clone(), namespace.as_deref());
    let ctx = &ctx;
    let (namespace, name) = (&namespace, &name);
    status::decide_and_write(&api, (*issuer).clone(), |mut current| async move {
        let Some(wanted) = wanted_condition(&current, ctx).await else {
            return Ok(Decided::Nothing(()));
        };
        let existing = current
            .status()
            .and_then(|s| crate::api::conditions::find(s.conditions(), types::READY));
        if same_condition(existing, &wanted) {
            return Ok(Decided::Nothing(()));
        }
        tracing::info!(
            kind = K::KIND,
            namespace = namespace.as_deref().unwrap_or(""),
            %name,
            ready = %wanted.status,
            reason = wanted.reason.as_deref().unwrap_or(""),
            "issuer readiness changed"
        );
        current
            .status_mut()
            .get_or_insert_with(Default::default)
            .set_condition(wanted, status::now());
        Ok(Decided::Write {
            object: current,
            then: (),
        })
    })
    .await?;
    Ok(Action::await_change())
}

fn error_policy<K: IssuerObject>(_: Arc<K>, error: &ReconcileError, ctx: Arc<Context>) -> Action {
    ctx.metrics.sync_error(K::SYNC);
    tracing::warn!(kind = K::KIND, %error, "issuers: reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

async fn run_kind<K: IssuerObject>(
    client: kube::Client,
    options: ControllerOptions,
    health: Health,
    shutdown: CancellationToken,
) {
    let cluster_ns = options.cluster_resource_namespace.clone();
    let controller = Controller::new(K::api(client.clone(), None), watcher::Config::default())
        .trigger_backoff(crate::kubernetes::WatchBackoff::default());
    let store = controller.store();
    let mapping_store = store.clone();
    // ClusterIssuer secrets live in one namespace; Issuer secrets anywhere.
    let secrets: Api<PartialObjectMeta<Secret>> = if K::KIND == "ClusterIssuer" {
        Api::namespaced(client.clone(), &cluster_ns)
    } else {
        Api::all(client.clone())
    };
    let secret_changes = watcher(secrets, watcher::Config::default())
        .backoff(crate::kubernetes::WatchBackoff::default())
        .touched_objects();
    let map_cluster_ns = cluster_ns.clone();
    let controller = controller.watches_stream(secret_changes, move |secret| {
        let secret_ns = secret.metadata.namespace.clone().unwrap_or_default();
        let secret_name = secret.metadata.name.clone().unwrap_or_default();
        mapping_store
            .state()
            .into_iter()
            .filter(|issuer| {
                issuer.spec().ca.as_ref().is_some_and(|ca| {
                    ca.secret_name == secret_name
                        && issuer.secret_namespace(&map_cluster_ns) == secret_ns
                })
            })
            .map(|issuer| ObjectRef::from_obj(&*issuer))
            .collect::<Vec<_>>()
    });
    K::expose(&options.metrics, store.clone());
    super::mark_ready_when_synced(store, health);
    let ctx = Arc::new(Context {
        client,
        cluster_resource_namespace: cluster_ns,
        metrics: options.metrics.clone(),
    });
    controller
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile::<K>, error_policy::<K>, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(kind = K::KIND, error = %e, "issuers: controller event");
            }
        })
        .await;
}

/// Runs the Issuer and ClusterIssuer loops until `shutdown` fires.
pub async fn run(
    client: kube::Client,
    options: ControllerOptions,
    health: Health,
    shutdown: CancellationToken,
) {
    tokio::join!(
        run_kind::<Issuer>(
            client.clone(),
            options.clone(),
            health.clone(),
            shutdown.clone()
        ),
        run_kind::<ClusterIssuer>(client, options, health, shutdown),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{CsrOptions, KeyAlgorithm, SanSpec, SignParams, SubjectSpec};
    use k8s_openapi::ByteString;

    fn self_signed(key: &PrivateKey, cn: &str, is_ca: bool) -> String {
        let subject = SubjectSpec {
            common_name: Some(cn.into()),
            ..Default::default()
        };
        let csr = crate::pki::build_csr(key, &subject, &SanSpec::default(), &CsrOptions::default())
            .unwrap();
        crate::pki::sign_self_signed(
            csr.pem.as_bytes(),
            key,
            &SignParams {
                is_ca,
                ..Default::default()
            },
        )
        .unwrap()
        .certificate_pem
    }

    fn secret(crt: &str, key: &PrivateKey) -> Secret {
        let key_pem = key.to_pem(crate::pki::KeyEncoding::Pkcs8).unwrap();
        Secret {
            data: Some(
                [
                    ("tls.crt".to_string(), ByteString(crt.as_bytes().to_vec())),
                    ("tls.key".to_string(), ByteString(key_pem.expose().to_vec())),
                ]
                .into(),
            ),
            ..Default::default()
        }
    }

    fn reason(c: &IssuerCondition) -> (ConditionStatus, &str) {
        (c.status, c.reason.as_deref().unwrap_or(""))
    }

    #[test]
    fn ca_secret_checks() {
        let key = PrivateKey::generate(KeyAlgorithm::Ecdsa(crate::pki::Curve::P256)).unwrap();
        let other = PrivateKey::generate(KeyAlgorithm::Ed25519).unwrap();
        let ca = self_signed(&key, "ca", true);
        let leaf = self_signed(&key, "leaf", false);

        let ok = ca_ready("ns", "ca", SecretRead::Found(&secret(&ca, &key)), Some(3));
        assert_eq!(reason(&ok), (ConditionStatus::True, "KeyPairVerified"));
        assert_eq!(ok.message.as_deref(), Some("Signing CA verified"));
        assert_eq!(ok.observed_generation, Some(3));

        let missing = ca_ready("ns", "ca", SecretRead::Missing, None);
        assert_eq!(reason(&missing), (ConditionStatus::False, "ErrGetKeyPair"));
        assert!(missing.message.unwrap().contains("ns/ca"));

        let not_ca = ca_ready("ns", "ca", SecretRead::Found(&secret(&leaf, &key)), None);
        assert_eq!(
            reason(&not_ca),
            (ConditionStatus::False, "ErrInvalidKeyPair")
        );
        assert!(not_ca.message.unwrap().contains("not a CA"));

        let mismatch = ca_ready("ns", "ca", SecretRead::Found(&secret(&ca, &other)), None);
        assert_eq!(
            reason(&mismatch),
            (ConditionStatus::False, "ErrInvalidKeyPair")
        );
        assert!(mismatch.message.unwrap().contains("does not match"));

        let garbage = ca_ready(
            "ns",
            "ca",
            SecretRead::Found(&secret("not pem", &key)),
            None,
        );
        assert_eq!(
            reason(&garbage),
            (ConditionStatus::False, "ErrInvalidKeyPair")
        );

        let empty = ca_ready("ns", "ca", SecretRead::Found(&Secret::default()), None);
        assert_eq!(reason(&empty), (ConditionStatus::False, "ErrGetKeyPair"));
    }

    #[test]
    fn key_bytes_never_reach_the_message() {
        let key = PrivateKey::generate(KeyAlgorithm::Ed25519).unwrap();
        let other = PrivateKey::generate(KeyAlgorithm::Ed25519).unwrap();
        let ca = self_signed(&other, "ca", true);
        let s = secret(&ca, &key);
        let c = ca_ready("ns", "ca", SecretRead::Found(&s), None);
        let key_pem = key.to_pem(crate::pki::KeyEncoding::Pkcs8).unwrap();
        let body: String = key_pem
            .expose_str()
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        assert!(!c.message.unwrap().contains(&body[..20]));
    }

    #[test]
    fn same_condition_ignores_time_only() {
        let a = IssuerCondition::new("Ready", ConditionStatus::True, "IsReady", "", Some(1));
        let mut b = a.clone();
        b.last_transition_time = Some(status::now());
        assert!(same_condition(Some(&b), &a));
        let c = IssuerCondition::new("Ready", ConditionStatus::True, "IsReady", "", Some(2));
        assert!(!same_condition(Some(&b), &c));
        assert!(!same_condition(None, &a));
    }
}
