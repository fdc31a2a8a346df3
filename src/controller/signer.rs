//! The signer for SelfSigned and CA issuers, in the order of the reference's
//! signer loop (cert-manager-api.md, "Signer loop").
//!
//! Requests are reconciled from a watch; Issuers, ClusterIssuers and Secret
//! metadata are watched too and mapped back to the requests waiting on them,
//! so a request that waits for an issuer or a key Secret moves as soon as
//! that object appears. The result is written in one status update guarded
//! by resourceVersion: two workers racing on one request cannot both store a
//! certificate, because the second write is answered 409 and re-read.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};

use super::ca_cache::{CaCache, CaMaterial};
use super::runner::{self, Action};
use super::status::{self, Decided, ReconcileError, WriteOutcome};
use super::{ControllerOptions, Health};
use crate::api::conditions::{ConditionStatus, messages, reasons, types};
use crate::api::well_known::PRIVATE_KEY_SECRET_NAME;
use crate::api::{
    CLUSTER_ISSUER_KIND, CertificateRequest, CertificateRequestCondition, CertificateRequestStatus,
    ClusterIssuer, ISSUER_KIND, Issuer, IssuerRef, IssuerSpec, IssuerType, PemBytes,
};
use crate::pki::rules::check_request_parsed;
use crate::pki::sign::{SignError, Signed};
use crate::pki::{PrivateKey, SignParams, Usage, check_issued};
use crate::shutdown::CancellationToken;
use crate::sync::lock;
use crate::telemetry::EventType;
use crate::telemetry::metrics::{SignerIssuerKind, SignerResult, SyncController};

/// Steps 1–5 of the signer loop, which need only the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Another API group's issuer: not ours.
    Ignore,
    /// Denied: write Ready=False reason Denied (once).
    MarkDenied,
    /// Terminal (invalid, failed, issued): nothing more to do.
    Stop,
    /// Not approved yet: wait for the approval to arrive through the watch.
    Wait,
    /// Go on to the issuer.
    Proceed,
}

pub fn gate(request: &CertificateRequest) -> Gate {
    if !request.spec.issuer_ref.is_cert_manager_group() {
        return Gate::Ignore;
    }
    if request.is_denied() {
        let already = request.condition(types::READY).is_some_and(|c| {
            c.status == ConditionStatus::False && c.reason.as_deref() == Some(reasons::DENIED)
        });
        return if already {
            Gate::Stop
        } else {
            Gate::MarkDenied
        };
    }
    if request.is_invalid_request() {
        return Gate::Stop;
    }
    if !request.is_approved() {
        return Gate::Wait;
    }
    if request.is_failed() || request.is_issued() {
        return Gate::Stop;
    }
    Gate::Proceed
}

/// What a reconcile decided to write.
#[derive(Debug)]
enum Outcome {
    /// Nothing to write.
    Nothing,
    /// Set Ready (Pending or Denied); `retry` re-checks later when no watch
    /// would notice the fix (e.g. a CA Secret that fails to sign).
    Ready {
        condition: CertificateRequestCondition,
        retry: Option<Duration>,
    },
    /// Terminal failure; `invalid` also sets InvalidRequest=True.
    Failed {
        message: String,
        invalid: bool,
    },
    Issued(Signed),
}

fn pending(reason_detail: &str, message: String) -> CertificateRequestCondition {
    // cert-manager reports IssuerNotFound/IssuerNotReady as the Pending reason.
    CertificateRequestCondition::new(types::READY, ConditionStatus::False, reason_detail, message)
}

/// The request's `spec.usages`, `spec.isCA` and `spec.duration` as signing
/// parameters. Errors are terminal: the spec is immutable.
pub fn sign_params(request: &CertificateRequest) -> Result<SignParams, String> {
    let spec = &request.spec;
    let mut usages = Vec::new();
    for name in spec.usages.iter().flatten() {
        let usage = Usage::from_name(name).ok_or_else(|| {
            format!(
                "spec.usages: {name:?} is not a key usage; use names such as \"digital signature\", \"key encipherment\", \"server auth\" or \"client auth\""
            )
        })?;
        usages.push(usage);
    }
    let duration = match spec.duration.as_deref() {
        None | Some("") => None,
        Some(text) => Some(crate::api::duration::parse_go(text).map_err(|e| {
            format!("spec.duration: {text:?} is not a Go duration ({e}); write e.g. 2160h")
        })?),
    };
    Ok(SignParams {
        duration,
        usages,
        is_ca: spec.is_ca.unwrap_or(false),
        ..Default::default()
    })
}

fn failed_from_sign_error(e: SignError) -> Outcome {
    let invalid = matches!(e, SignError::Request(_) | SignError::Duration { .. });
    Outcome::Failed {
        message: e.to_string(),
        invalid,
    }
}

pub(crate) struct Context {
    client: kube::Client,
    cluster_resource_namespace: String,
    issuers: Store<Issuer>,
    cluster_issuers: Store<ClusterIssuer>,
    telemetry: super::Telemetry,
    ca_cache: CaCache,
}

/// The issuer named by `reference`, from the watched caches.
async fn find_issuer(
    ctx: &Context,
    namespace: &str,
    reference: &IssuerRef,
) -> Option<(IssuerSpec, bool, String)> {
    if reference.is_cluster_issuer() {
        let _ = ctx.cluster_issuers.wait_until_ready().await;
        ctx.cluster_issuers
            .get(&ObjectRef::new(&reference.name))
            .map(|i| {
                (
                    i.spec.clone(),
                    i.is_ready(),
                    ctx.cluster_resource_namespace.clone(),
                )
            })
    } else if reference.kind_or_default() == ISSUER_KIND {
        let _ = ctx.issuers.wait_until_ready().await;
        ctx.issuers
            .get(&ObjectRef::new(&reference.name).within(namespace))
            .map(|i| (i.spec.clone(), i.is_ready(), namespace.to_owned()))
    } else {
        None
    }
}

async fn read_secret(
    ctx: &Context,
    namespace: &str,
    name: &str,
) -> Result<Option<Secret>, ReconcileError> {
    Api::<Secret>::namespaced(ctx.client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(ReconcileError::api("reading a Secret"))
}

/// A CA issuer's certificate and key, from the cache or read afresh.
/// `Err(message)` when the Secret is missing or unusable: the request waits
/// (the issuers loop reports the issuer not ready).
async fn ca_material(
    ctx: &Context,
    namespace: &str,
    name: &str,
) -> Result<Result<Arc<CaMaterial>, String>, ReconcileError> {
    if let Some(material) = ctx.ca_cache.get(namespace, name) {
        return Ok(Ok(material));
    }
    ctx.ca_cache.begin_read(namespace, name);
    let Some(secret) = read_secret(ctx, namespace, name).await? else {
        return Ok(Err(format!(
            "Referenced CA secret {namespace}/{name} not found; waiting for it"
        )));
    };
    let (Some(crt), Some(key_pem)) = (
        crate::kubernetes::secret_field(&secret, "tls.crt"),
        crate::kubernetes::secret_field(&secret, "tls.key"),
    ) else {
        return Ok(Err(format!(
            "CA secret {namespace}/{name} lacks tls.crt or tls.key"
        )));
    };
    let key = match PrivateKey::from_pem(key_pem) {
        Ok(k) => k,
        Err(e) => return Ok(Err(format!("CA secret {namespace}/{name}: {e}"))),
    };
    let material = Arc::new(CaMaterial {
        certificate_pem: crt.to_vec(),
        key,
    });
    ctx.ca_cache.finish_read(
        namespace,
        name,
        secret.metadata.resource_version.as_deref(),
        material.clone(),
    );
    Ok(Ok(material))
}

/// Steps 6–10 and the signature itself.
async fn evaluate(request: &CertificateRequest, ctx: &Context) -> Result<Outcome, ReconcileError> {
    match gate(request) {
        Gate::Ignore | Gate::Stop | Gate::Wait => return Ok(Outcome::Nothing),
        Gate::MarkDenied => {
            return Ok(Outcome::Ready {
                condition: CertificateRequestCondition::new(
                    types::READY,
                    ConditionStatus::False,
                    reasons::DENIED,
                    "The CertificateRequest was denied by an approval controller",
                ),
                retry: None,
            });
        }
        Gate::Proceed => {}
    }
    let namespace = request.metadata.namespace.as_deref().unwrap_or_default();
    let reference = &request.spec.issuer_ref;
    let kind = reference.kind_or_default();
    let Some((spec, ready, secret_namespace)) = find_issuer(ctx, namespace, reference).await else {
        if kind != ISSUER_KIND && kind != CLUSTER_ISSUER_KIND {
            // A kind of cert-manager.io that is not an issuer: not ours.
            return Ok(Outcome::Nothing);
        }
        return Ok(Outcome::Ready {
            condition: pending(
                reasons::ISSUER_NOT_FOUND,
                format!(
                    "Referenced {kind} {:?} not found; create it or fix spec.issuerRef (waiting for it to appear)",
                    reference.name
                ),
            ),
            retry: None,
        });
    };
    let issuer_type = match spec.issuer_type("Issuer") {
        Ok(t @ (IssuerType::SelfSigned(_) | IssuerType::Ca(_))) => t,
        // Another signer's issuer type, or a spec its own controller reports on.
        _ => return Ok(Outcome::Nothing),
    };
    if !ready {
        return Ok(Outcome::Ready {
            condition: pending(
                reasons::ISSUER_NOT_READY,
                format!(
                    "Referenced {kind} {:?} does not have a Ready status condition; waiting for it to become Ready",
                    reference.name
                ),
            ),
            retry: None,
        });
    }
    let status = request.status.clone().unwrap_or_default();
    if status.certificate.as_ref().is_some_and(|c| !c.is_empty()) {
        return Ok(Outcome::Nothing);
    }

    let mut params = match sign_params(request) {
        Ok(p) => p,
        Err(message) => {
            return Ok(Outcome::Failed {
                message,
                invalid: true,
            });
        }
    };
    let csr = request.spec.request.as_bytes();
    let parsed = match check_request_parsed(csr, &params.usages, params.is_ca) {
        Ok(p) => p,
        Err(e) => {
            return Ok(Outcome::Failed {
                message: e.to_string(),
                invalid: true,
            });
        }
    };

    let signed = match issuer_type {
        IssuerType::Ca(ca) => {
            params.crl_distribution_points = ca.crl_distribution_points.clone().unwrap_or_default();
            params.ocsp_servers = ca.ocsp_servers.clone().unwrap_or_default();
            params.issuing_certificate_urls =
                ca.issuing_certificate_urls.clone().unwrap_or_default();
            let retry = |message: String| Outcome::Ready {
                condition: pending(reasons::PENDING, message),
                retry: Some(Duration::from_secs(30)),
            };
            let ca_secret = ca_material(ctx, &secret_namespace, &ca.secret_name).await?;
            let material = match ca_secret {
                Ok(material) => material,
                Err(message) => return Ok(retry(message)),
            };
            match crate::pki::sign_with_ca(csr, &material.certificate_pem, &material.key, &params) {
                Ok(s) => s,
                Err(e @ (SignError::Request(_) | SignError::Duration { .. })) => {
                    return Ok(failed_from_sign_error(e));
                }
                // The CA material is wrong; the issuers loop reports that and
                // the request waits for the fix.
                Err(e) => return Ok(retry(e.to_string())),
            }
        }
        IssuerType::SelfSigned(selfsigned) => {
            params.crl_distribution_points = selfsigned
                .crl_distribution_points
                .clone()
                .unwrap_or_default();
            let Some(secret_name) = request
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(PRIVATE_KEY_SECRET_NAME))
                .filter(|s| !s.is_empty())
            else {
                return Ok(Outcome::Failed {
                    message: format!(
                        "Annotation {PRIVATE_KEY_SECRET_NAME} is missing; a SelfSigned issuer needs it to name the Secret holding the request's private key (tls.key)"
                    ),
                    invalid: false,
                });
            };
            let Some(secret) = read_secret(ctx, namespace, secret_name).await? else {
                return Ok(Outcome::Ready {
                    condition: pending(
                        reasons::PENDING,
                        format!(
                            "Referenced private key secret {namespace}/{secret_name} not found; waiting for it"
                        ),
                    ),
                    retry: None,
                });
            };
            let key = match crate::kubernetes::secret_field(&secret, "tls.key")
                .map(PrivateKey::from_pem)
            {
                Some(Ok(k)) => k,
                Some(Err(e)) => {
                    return Ok(Outcome::Failed {
                        message: format!("private key secret {namespace}/{secret_name}: {e}"),
                        invalid: false,
                    });
                }
                None => {
                    return Ok(Outcome::Failed {
                        message: format!(
                            "private key secret {namespace}/{secret_name} has no tls.key; store the request's private key there"
                        ),
                        invalid: false,
                    });
                }
            };
            match crate::pki::sign_self_signed(csr, &key, &params) {
                Ok(s) => s,
                Err(e) => return Ok(failed_from_sign_error(e)),
            }
        }
        _ => unreachable!("only SelfSigned and CA pass the issuer type check"),
    };
    // Loop guards: never store a certificate for another key, or one
    // already expired.
    if let Err(e) = check_issued(
        signed.certificate_pem.as_bytes(),
        &parsed.spki_der,
        SystemTime::now(),
    ) {
        return Ok(Outcome::Failed {
            message: e.to_string(),
            invalid: false,
        });
    }
    // A status the API server cannot store fails the write, and the retry
    // would sign again, forever; refuse it once, for good, instead.
    let stored =
        request.spec.request.as_bytes().len() + signed.certificate_pem.len() + signed.ca_pem.len();
    if stored > MAX_STORED_BYTES {
        return Ok(Outcome::Failed {
            message: format!(
                "the signed certificate would make this CertificateRequest {stored} bytes, more than the {MAX_STORED_BYTES} the API server can store (etcd limits objects to 1.5 MiB, base64 adds a third); ask for fewer or shorter names"
            ),
            invalid: false,
        });
    }
    Ok(Outcome::Issued(signed))
}

/// The most request, certificate and CA bytes one CertificateRequest may
/// carry: stored base64-encoded, that is about 1.34 MiB, inside etcd's
/// default 1.5 MiB object limit with room for the rest of the object.
pub const MAX_STORED_BYTES: usize = 1024 * 1024;

/// Whether a failed status write can never succeed as it is: the API server
/// refused the content (400, 413, 422), or storage found it too large.
fn refused_for_good(error: &ReconcileError) -> Option<String> {
    let ReconcileError::Api {
        source: kube::Error::Api(status),
        ..
    } = error
    else {
        return None;
    };
    let too_large = status.message.contains("too large");
    (matches!(status.code, 400 | 413 | 422) || too_large).then(|| {
        format!(
            "the signed certificate could not be stored in the request's status (the API server answered {}: {}); the request is marked failed so that it is not signed again",
            status.code,
            crate::volume::short_quote(&status.message)
        )
    })
}

fn issued_message(signed: &Signed) -> String {
    if signed.capped {
        let not_after = jiff::Timestamp::try_from(signed.not_after)
            .map(|t| t.to_string())
            .unwrap_or_default();
        format!(
            "{}; notAfter was capped at the CA certificate's notAfter ({not_after}), which is sooner than spec.duration",
            messages::ISSUED
        )
    } else {
        messages::ISSUED.to_owned()
    }
}

/// Applies `outcome` to `request`; `None` when nothing changes.
fn apply(
    mut request: CertificateRequest,
    outcome: Outcome,
) -> Option<(CertificateRequest, Action)> {
    let now = status::now();
    let status = request.status.get_or_insert_with(Default::default);
    let action = Action::await_change();
    match outcome {
        Outcome::Nothing => return None,
        Outcome::Ready { condition, retry } => {
            let current = crate::api::conditions::find(status.conditions(), types::READY);
            let unchanged = current.is_some_and(|c| {
                c.status == condition.status
                    && c.reason == condition.reason
                    && c.message == condition.message
            });
            let action = retry.map_or(Action::await_change(), Action::requeue);
            if unchanged {
                return None;
            }
            status.set_condition(condition, now);
            return Some((request, action));
        }
        Outcome::Failed { message, invalid } => {
            if invalid {
                status.set_condition(
                    CertificateRequestCondition::new(
                        types::INVALID_REQUEST,
                        ConditionStatus::True,
                        reasons::FAILED,
                        message.clone(),
                    ),
                    now.clone(),
                );
            }
            status.set_condition(
                CertificateRequestCondition::new(
                    types::READY,
                    ConditionStatus::False,
                    reasons::FAILED,
                    message,
                ),
                now.clone(),
            );
            status.failure_time = Some(now);
        }
        Outcome::Issued(signed) => {
            set_issued(status, &signed, now);
        }
    }
    Some((request, action))
}

/// Ready=True with the certificate and CA of `signed`.
fn set_issued(status: &mut CertificateRequestStatus, signed: &Signed, now: Time) {
    status.set_condition(
        CertificateRequestCondition::new(
            types::READY,
            ConditionStatus::True,
            reasons::ISSUED,
            issued_message(signed),
        ),
        now,
    );
    status.certificate = Some(PemBytes::from(signed.certificate_pem.as_str()));
    status.ca = Some(PemBytes::from(signed.ca_pem.as_str()));
}

async fn reconcile(
    request: Arc<CertificateRequest>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    ctx.telemetry.metrics.sync_call(SyncController::Signer);
    let namespace = request.metadata.namespace.clone().unwrap_or_default();
    let name = request.metadata.name.clone().unwrap_or_default();
    let api: Api<CertificateRequest> = Api::namespaced(ctx.client.clone(), &namespace);
    let ctx = &ctx;
    let issuing = &std::sync::atomic::AtomicBool::new(false);
    // After a conflict someone wrote first; if they issued it, the gate
    // stops the second signature.
    let written = status::decide_and_write(&api, (*request).clone(), |current| async move {
        let outcome = evaluate(&current, ctx).await?;
        issuing.store(
            matches!(outcome, Outcome::Issued(_)),
            std::sync::atomic::Ordering::Relaxed,
        );
        let retry_unchanged = match &outcome {
            Outcome::Ready {
                retry: Some(after), ..
            } => Some(*after),
            _ => None,
        };
        let summary = match &outcome {
            Outcome::Nothing => None,
            Outcome::Ready { condition, .. } => condition.reason.clone(),
            Outcome::Failed { .. } => Some(reasons::FAILED.to_owned()),
            Outcome::Issued(_) => Some(reasons::ISSUED.to_owned()),
        };
        let note = match &outcome {
            Outcome::Ready { condition, .. } => condition.message.clone().unwrap_or_default(),
            Outcome::Failed { message, .. } => message.clone(),
            Outcome::Issued(signed) => issued_message(signed),
            Outcome::Nothing => String::new(),
        };
        Ok(match apply(current, outcome) {
            Some((updated, action)) => Decided::Write {
                object: updated,
                then: (action, summary, note),
            },
            None => Decided::Nothing(retry_unchanged),
        })
    })
    .await;
    let decision = match written {
        Err(error) if issuing.load(std::sync::atomic::Ordering::Relaxed) => {
            let Some(message) = refused_for_good(&error) else {
                return Err(error);
            };
            tracing::warn!(%namespace, %name, %error, "signed certificate refused by the API server; marking the request failed");
            let failed = |current: CertificateRequest| {
                let message = message.clone();
                async move {
                    let outcome = Outcome::Failed {
                        message: message.clone(),
                        invalid: false,
                    };
                    Ok(match apply(current, outcome) {
                        Some((updated, action)) => Decided::Write {
                            object: updated,
                            then: (action, Some(reasons::FAILED.to_owned()), message),
                        },
                        None => Decided::Nothing(None),
                    })
                }
            };
            status::decide_and_write(&api, (*request).clone(), failed).await?
        }
        other => other?,
    };
    Ok(match decision {
        WriteOutcome::Written {
            object,
            then: (action, summary, note),
        } => {
            tracing::info!(%namespace, %name, ready = summary.as_deref().unwrap_or(""), "request updated");
            record(&ctx.telemetry, &object, summary.as_deref(), note);
            action
        }
        WriteOutcome::Nothing(retry) => retry.map_or(Action::await_change(), Action::requeue),
        WriteOutcome::Gone => Action::await_change(),
    })
}

/// The signer of this controller process, once its loop runs: the
/// approvers of the same process reach it through here to sign what they
/// approve in the same write (see [`approve_and_sign`]).
#[derive(Clone, Default)]
pub struct SignerSlot(Arc<std::sync::OnceLock<Arc<Context>>>);

impl SignerSlot {
    fn get(&self) -> Option<Arc<Context>> {
        self.0.get().cloned()
    }
}

/// What an approver wrote: its condition, and whether the request was
/// signed in the same write.
pub(super) struct Approval {
    pub condition: CertificateRequestCondition,
    pub signed: bool,
}

/// An approver's decision and write, for every approver of this controller.
///
/// `decide` says which condition to add (or none). When it is Approved and
/// this process also signs the request's issuer, the request is signed at
/// once and written with Approved, Ready and the certificate in one status
/// update: one API write and one watch event fewer on every publish's path.
/// Every outside observer still sees cert-manager's states in its order,
/// only the approved-but-unsigned state is never stored. Anything short of
/// a certificate (issuer not ready, a bad CSR, a missing CA) is left to the
/// signer's own loop, which reports it as always; so is a signed status the
/// API server refuses to store, which is then written approved only. A
/// signature is counted and announced here as the signer loop would; the
/// approval is the caller's to record.
pub(super) async fn approve_and_sign<D, F>(
    api: &Api<CertificateRequest>,
    request: CertificateRequest,
    signer: &SignerSlot,
    mut decide: D,
) -> Result<WriteOutcome<CertificateRequest, Approval, ()>, ReconcileError>
where
    D: FnMut(CertificateRequest) -> F,
    F: std::future::Future<Output = Result<Option<CertificateRequestCondition>, ReconcileError>>,
{
    let mut signing = signer.get();
    loop {
        // The Ready message of the certificate in the last attempted write.
        let issued = Mutex::new(None);
        let (with, issued_ref) = (signing.clone(), &issued);
        let written = status::decide_and_write(api, request.clone(), |mut current| {
            let decided = decide(current.clone());
            let with = with.clone();
            async move {
                *lock(issued_ref) = None;
                let Some(condition) = decided.await? else {
                    return Ok(Decided::Nothing(()));
                };
                let approved = condition.type_ == types::APPROVED;
                let now = status::now();
                let status = current.status.get_or_insert_with(Default::default);
                status.set_condition(condition.clone(), now.clone());
                if let Some(ctx) = with.filter(|_| approved)
                    && let Outcome::Issued(signed) = evaluate(&current, &ctx).await?
                {
                    let status = current.status.get_or_insert_with(Default::default);
                    set_issued(status, &signed, now);
                    *lock(issued_ref) = Some(issued_message(&signed));
                }
                Ok(Decided::Write {
                    object: current,
                    then: condition,
                })
            }
        })
        .await;
        let issued = issued.into_inner().unwrap_or_else(|e| e.into_inner());
        match (written, issued) {
            (Err(error), Some(_)) if refused_for_good(&error).is_some() => {
                tracing::warn!(%error, "a request signed on approval could not be stored; writing the approval alone");
                signing = None;
            }
            (Ok(WriteOutcome::Written { object, then }), issued) => {
                if let (Some(note), Some(ctx)) = (&issued, &signing) {
                    record(&ctx.telemetry, &object, Some(reasons::ISSUED), note.clone());
                }
                let approval = Approval {
                    condition: then,
                    signed: issued.is_some(),
                };
                return Ok(WriteOutcome::Written {
                    object,
                    then: approval,
                });
            }
            (Ok(WriteOutcome::Nothing(n)), _) => return Ok(WriteOutcome::Nothing(n)),
            (Ok(WriteOutcome::Gone), _) => return Ok(WriteOutcome::Gone),
            (Err(error), _) => return Err(error),
        }
    }
}

/// Counts what the signer wrote and records the decisions (issued,
/// failed) as Events on the request. Waiting for an issuer is counted but
/// not announced: the request's condition already says so, and issuers
/// that come up late would otherwise leave an Event on every request.
fn record(
    telemetry: &super::Telemetry,
    request: &CertificateRequest,
    reason: Option<&str>,
    note: String,
) {
    let kind = if request.spec.issuer_ref.kind_or_default() == CLUSTER_ISSUER_KIND {
        SignerIssuerKind::ClusterIssuer
    } else {
        SignerIssuerKind::Issuer
    };
    match reason {
        Some(reasons::ISSUED) => {
            telemetry.metrics.signer_handled(kind, SignerResult::Issued);
            telemetry.event(request, EventType::Normal, "Issued", "Sign", note);
        }
        Some(reasons::FAILED) => {
            telemetry.metrics.signer_handled(kind, SignerResult::Failed);
            telemetry.event(request, EventType::Warning, "Failed", "Sign", note);
        }
        Some(reasons::ISSUER_NOT_READY | reasons::ISSUER_NOT_FOUND) => {
            telemetry
                .metrics
                .signer_handled(kind, SignerResult::IssuerNotReady);
        }
        _ => {}
    }
}

fn error_policy(_: Arc<CertificateRequest>, error: &ReconcileError, ctx: Arc<Context>) -> Action {
    ctx.telemetry.metrics.sync_error(SyncController::Signer);
    tracing::warn!(%error, "signer: reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// Requests that may be waiting on the issuer `kind`/`name` in `namespace`
/// (`None` for a ClusterIssuer).
fn waiting_on(
    store: &Store<CertificateRequest>,
    kind: &str,
    namespace: Option<&str>,
    name: &str,
) -> Vec<ObjectRef<CertificateRequest>> {
    store
        .state()
        .into_iter()
        .filter(|r| {
            let reference = &r.spec.issuer_ref;
            !r.is_finished()
                && reference.is_cert_manager_group()
                && reference.kind_or_default() == kind
                && reference.name == name
                && namespace.is_none_or(|ns| r.metadata.namespace.as_deref() == Some(ns))
        })
        .map(|r| ObjectRef::from_obj(&*r))
        .collect()
}

/// Keeps the CA cache in step with the Secret watch.
fn note_secret_event(
    cache: &CaCache,
    event: &Result<watcher::Event<PartialObjectMeta<Secret>>, watcher::Error>,
) {
    let name = |s: &PartialObjectMeta<Secret>| {
        (
            s.metadata.namespace.clone().unwrap_or_default(),
            s.metadata.name.clone().unwrap_or_default(),
        )
    };
    match event {
        Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => {
            let (namespace, n) = name(s);
            cache.observed(&namespace, &n, s.metadata.resource_version.as_deref());
        }
        Ok(watcher::Event::Delete(s)) => {
            let (namespace, n) = name(s);
            cache.observed(&namespace, &n, None);
        }
        Ok(watcher::Event::Init) => cache.reset(),
        Ok(watcher::Event::InitDone) | Err(_) => {}
    }
}

/// Runs the signer until `shutdown` fires.
pub async fn run(
    client: kube::Client,
    options: ControllerOptions,
    health: Health,
    shutdown: CancellationToken,
) {
    let wc = watcher::Config::default;
    let (requests, request_events) = runner::watch_all(
        Api::<CertificateRequest>::all(client.clone()),
        "signer",
        health,
    );
    let request_events = request_events.boxed();

    let (issuers, issuer_writer) = reflector::store::<Issuer>();
    let (r1, r2, r3) = (requests.clone(), requests.clone(), requests.clone());
    let issuer_events = reflector::reflector(
        issuer_writer,
        watcher(Api::all(client.clone()), wc()).backoff(crate::kubernetes::WatchBackoff::default()),
    )
    .touched_objects()
    .filter_map(|event| std::future::ready(event.ok()))
    .flat_map(move |issuer: Issuer| {
        futures::stream::iter(waiting_on(
            &r1,
            ISSUER_KIND,
            issuer.metadata.namespace.as_deref(),
            issuer.metadata.name.as_deref().unwrap_or_default(),
        ))
    })
    .boxed();
    let (cluster_issuers, cluster_writer) = reflector::store::<ClusterIssuer>();
    let cluster_events = reflector::reflector(
        cluster_writer,
        watcher(Api::all(client.clone()), wc()).backoff(crate::kubernetes::WatchBackoff::default()),
    )
    .touched_objects()
    .filter_map(|event| std::future::ready(event.ok()))
    .flat_map(move |issuer: ClusterIssuer| {
        futures::stream::iter(waiting_on(
            &r2,
            CLUSTER_ISSUER_KIND,
            None,
            issuer.metadata.name.as_deref().unwrap_or_default(),
        ))
    })
    .boxed();
    // Names and versions are all that matter here (a SelfSigned key Secret
    // appearing; a cached CA Secret changing), so the watch carries
    // metadata only and no key bytes of other Secrets are ever read.
    let ca_cache = CaCache::default();
    let observed = ca_cache.clone();
    let secret_events = watcher(Api::<PartialObjectMeta<Secret>>::all(client.clone()), wc())
        .backoff(crate::kubernetes::WatchBackoff::default())
        .inspect(move |event| note_secret_event(&observed, event))
        .touched_objects()
        .filter_map(|event| std::future::ready(event.ok()))
        .flat_map(move |secret| {
            let namespace = secret.metadata.namespace.unwrap_or_default();
            let name = secret.metadata.name.unwrap_or_default();
            let waiting = r3
                .state()
                .into_iter()
                // Every Secret write in the cluster lands here, so the
                // cheap tests go first: with the condition scan first, the
                // controller benchmark (hack/bench P7) spent a fifth of its
                // CPU in `is_finished` on requests of other namespaces.
                .filter(|r| {
                    r.metadata.namespace.as_deref() == Some(namespace.as_str())
                        && r.metadata
                            .annotations
                            .as_ref()
                            .and_then(|a| a.get(PRIVATE_KEY_SECRET_NAME))
                            == Some(&name)
                        && !r.is_finished()
                })
                .map(|r| ObjectRef::from_obj(&*r))
                .collect::<Vec<_>>();
            futures::stream::iter(waiting)
        })
        .boxed();

    let ctx = Arc::new(Context {
        client,
        telemetry: options.telemetry(),
        cluster_resource_namespace: options.cluster_resource_namespace,
        issuers,
        cluster_issuers,
        ca_cache,
    });
    let _ = options.signer.0.set(ctx.clone());
    let triggers =
        futures::stream::select_all([request_events, issuer_events, cluster_events, secret_events]);
    runner::run(requests, triggers, reconcile, error_policy, ctx, shutdown).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::CertificateRequestSpec;

    fn request(
        conditions: &[(&str, ConditionStatus, &str)],
        group: Option<&str>,
    ) -> CertificateRequest {
        let mut r = CertificateRequest::new(
            "r",
            CertificateRequestSpec {
                request: PemBytes::from("csr"),
                issuer_ref: IssuerRef {
                    name: "ca".into(),
                    kind: None,
                    group: group.map(Into::into),
                },
                ..Default::default()
            },
        );
        r.status = Some(CertificateRequestStatus {
            conditions: Some(
                conditions
                    .iter()
                    .map(|(t, s, reason)| CertificateRequestCondition::new(t, *s, reason, ""))
                    .collect(),
            ),
            ..Default::default()
        });
        r
    }

    use ConditionStatus::{False, True};

    #[test]
    fn gate_follows_the_reference_order() {
        let approved = (types::APPROVED, True, "cert-manager.io");
        assert_eq!(
            gate(&request(&[approved], Some("example.com"))),
            Gate::Ignore
        );
        assert_eq!(
            gate(&request(&[(types::DENIED, True, "x")], None)),
            Gate::MarkDenied
        );
        assert_eq!(
            gate(&request(
                &[(types::DENIED, True, "x"), (types::READY, False, "Denied")],
                None
            )),
            Gate::Stop
        );
        assert_eq!(
            gate(&request(&[(types::INVALID_REQUEST, True, "x")], None)),
            Gate::Stop
        );
        assert_eq!(gate(&request(&[], None)), Gate::Wait);
        assert_eq!(
            gate(&request(&[(types::READY, False, "Pending")], None)),
            Gate::Wait
        );
        assert_eq!(
            gate(&request(&[approved, (types::READY, False, "Failed")], None)),
            Gate::Stop
        );
        assert_eq!(
            gate(&request(&[approved, (types::READY, True, "Issued")], None)),
            Gate::Stop
        );
        assert_eq!(
            gate(&request(
                &[approved, (types::READY, False, "Pending")],
                None
            )),
            Gate::Proceed
        );
        assert_eq!(gate(&request(&[approved], Some(""))), Gate::Proceed);
    }

    #[test]
    fn sign_params_from_spec() {
        let mut r = request(&[], None);
        r.spec.usages = Some(vec!["server auth".into(), "digital signature".into()]);
        r.spec.duration = Some("1h30m".into());
        r.spec.is_ca = Some(true);
        let p = sign_params(&r).unwrap();
        assert_eq!(p.usages, vec![Usage::ServerAuth, Usage::DigitalSignature]);
        assert_eq!(p.duration, Some(Duration::from_secs(5400)));
        assert!(p.is_ca);

        r.spec.usages = Some(vec!["server-auth".into()]);
        let err = sign_params(&r).unwrap_err();
        assert!(
            err.contains("spec.usages") && err.contains("server-auth"),
            "{err}"
        );

        r.spec.usages = None;
        r.spec.duration = Some("90 days".into());
        let err = sign_params(&r).unwrap_err();
        assert!(err.contains("spec.duration"), "{err}");
    }

    #[test]
    fn pending_is_written_only_when_it_changes() {
        let r = request(&[(types::READY, False, reasons::ISSUER_NOT_FOUND)], None);
        let same =
            CertificateRequestCondition::new(types::READY, False, reasons::ISSUER_NOT_FOUND, "");
        assert!(
            apply(
                r.clone(),
                Outcome::Ready {
                    condition: same,
                    retry: None
                }
            )
            .is_none()
        );
        let other =
            CertificateRequestCondition::new(types::READY, False, reasons::ISSUER_NOT_READY, "");
        assert!(
            apply(
                r,
                Outcome::Ready {
                    condition: other,
                    retry: None
                }
            )
            .is_some()
        );
    }

    #[test]
    fn failure_sets_invalid_request_and_failure_time() {
        let r = request(&[], None);
        let (r, _) = apply(
            r,
            Outcome::Failed {
                message: "bad".into(),
                invalid: true,
            },
        )
        .unwrap();
        assert!(r.is_failed() && r.is_invalid_request());
        assert!(r.status.unwrap().failure_time.is_some());
    }
}
