//! The certificates loop: keeps the `kubernetes.io/tls` Secret named by each
//! Certificate up to date, in upstream's stages (trigger → next private key
//! → CertificateRequest → issuing → readiness → revision history), folded
//! into one reconcile that advances one stage per status write.
//!
//! Every status write is guarded by resourceVersion, so several controller
//! instances (or a racing writer) cannot record two different next keys or
//! issue twice for one revision: the request name is `<certificate>-<revision>`
//! and creating it twice is answered 409.
//!
//! Memory: only Secrets labelled `controller.cert-manager.io/fao=true` are
//! cached in full; all others are watched as metadata only and mapped back
//! to Certificates through a small (namespace, secretName) index.

pub mod output;
pub mod policy;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams, Preconditions};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use thiserror::Error;

use self::output::{OutputError, PasswordSource, Passwords};
use self::policy::{Desired, Evaluation, Requested, SecretView, Trigger, reasons};
use super::status::{self, CONFLICT_ATTEMPTS, ReconcileError, Write};
use super::{ControllerOptions, Health};
use crate::api::conditions::{ConditionStatus, types};
use crate::api::well_known as wk;
use crate::api::{
    Certificate, CertificateCondition, CertificateRequest, CertificateRequestSpec,
    CertificateStatus, PemBytes, RotationPolicy,
};
use crate::kubernetes::secret_field as field;
use crate::pki::{CsrOptions, KeyEncoding, PrivateKey};
use crate::renewal::schedule::JitterPolicy;
use crate::shutdown::CancellationToken;
use crate::telemetry::EventType;
use crate::telemetry::metrics::{CertificateRef, CertificateTimes, ReadyCondition, SyncController};

/// Label upstream puts on the temporary Secret holding the next private key.
pub const NEXT_PRIVATE_KEY_LABEL: &str = "cert-manager.io/next-private-key";

/// Tunables of the certificates loop.
#[derive(Clone, Debug, PartialEq)]
pub struct CertificatesOptions {
    /// First delay after a failed issuance (upstream: 1h); doubles per failure.
    pub backoff_base: Duration,
    /// Longest delay (upstream: 32h).
    pub backoff_max: Duration,
    /// Renew up to this share of renewBefore early (0 = upstream's exact time).
    pub jitter: JitterPolicy,
}

impl Default for CertificatesOptions {
    fn default() -> Self {
        Self {
            backoff_base: policy::DEFAULT_BACKOFF_BASE,
            backoff_max: policy::DEFAULT_BACKOFF_MAX,
            jitter: JitterPolicy::none(),
        }
    }
}

/// Why a reconcile could not finish; the loop retries with a delay.
#[derive(Debug, Error)]
pub enum CertificateError {
    #[error(transparent)]
    Reconcile(#[from] ReconcileError),
    #[error("generating the next private key ({algorithm}): {source}")]
    Key {
        algorithm: String,
        #[source]
        source: crate::pki::KeyError,
    },
    #[error("building the CSR for Certificate {certificate}: {reason}")]
    Csr { certificate: String, reason: String },
}

fn api_err(action: &'static str) -> impl FnOnce(kube::Error) -> CertificateError {
    move |source| CertificateError::Reconcile(ReconcileError::Api { action, source })
}

type Index = Mutex<HashMap<(String, String), BTreeSet<String>>>;

struct Context {
    client: kube::Client,
    options: CertificatesOptions,
    /// Secrets with the fao label, in full.
    secrets: Store<Secret>,
    requests: Store<CertificateRequest>,
    /// (namespace, secretName) → Certificates naming it; filled by reconciles.
    by_secret: Index,
    /// (namespace, certificate) → CertificateRequest names, from the watch.
    by_certificate: Index,
    telemetry: super::Telemetry,
    /// Uids of Certificates seen deleted, so a reconcile that was already
    /// running when the deletion arrived cannot bring their series back.
    /// Uids are never reused, and entries are pruned after a while.
    deleted: Mutex<HashMap<String, std::time::Instant>>,
}

/// How long a deleted Certificate's uid is remembered; far longer than any
/// reconcile takes.
const DELETED_MEMORY: std::time::Duration = std::time::Duration::from_secs(600);

impl Context {
    fn forget_deleted(&self, namespace: &str, name: &str, uid: Option<&str>) {
        self.telemetry.metrics.certificate_removed(namespace, name);
        if let Some(uid) = uid {
            let mut deleted = self.deleted.lock().unwrap_or_else(|e| e.into_inner());
            let now = std::time::Instant::now();
            deleted.retain(|_, at| now.duration_since(*at) < DELETED_MEMORY);
            deleted.insert(uid.to_string(), now);
        }
    }

    fn was_deleted(&self, uid: Option<&str>) -> bool {
        uid.is_some_and(|uid| {
            self.deleted
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(uid)
        })
    }
}

fn index_add(index: &Index, ns: &str, key: &str, value: &str) {
    let mut map = index.lock().unwrap_or_else(|e| e.into_inner());
    map.entry((ns.to_owned(), key.to_owned()))
        .or_default()
        .insert(value.to_owned());
}

fn index_get(index: &Index, ns: &str, key: &str) -> Vec<String> {
    let map = index.lock().unwrap_or_else(|e| e.into_inner());
    map.get(&(ns.to_owned(), key.to_owned()))
        .map(|s| s.iter().cloned().collect())
        .unwrap_or_default()
}

fn index_remove(index: &Index, ns: &str, key: &str, value: &str) {
    let mut map = index.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(set) = map.get_mut(&(ns.to_owned(), key.to_owned())) {
        set.remove(value);
        if set.is_empty() {
            map.remove(&(ns.to_owned(), key.to_owned()));
        }
    }
}

/// How one pass over a Certificate ended.
enum Step {
    Done(Action),
    /// A guarded write lost; re-read and decide again.
    Conflict,
}

fn view(secret: &Secret) -> SecretView<'_> {
    let a = secret.metadata.annotations.as_ref();
    let get = |k: &str| a.and_then(|a| a.get(k)).map(String::as_str);
    SecretView {
        tls_crt: field(secret, output::TLS_CRT),
        tls_key: field(secret, output::TLS_KEY),
        issuer_name: get(wk::ISSUER_NAME),
        issuer_kind: get(wk::ISSUER_KIND),
        issuer_group: get(wk::ISSUER_GROUP),
    }
}

fn to_time(t: SystemTime) -> Time {
    Time(jiff::Timestamp::try_from(t).unwrap_or(jiff::Timestamp::UNIX_EPOCH))
}

fn from_time(t: &Time) -> SystemTime {
    SystemTime::from(t.0)
}

fn until(t: SystemTime) -> Duration {
    t.duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO)
        .max(Duration::from_millis(100))
}

fn owner_reference(cert: &Certificate) -> Option<OwnerReference> {
    cert.controller_owner_ref(&())
}

fn requested_of(request: &CertificateRequest) -> Requested {
    let s = &request.spec;
    let usages: Vec<_> = s
        .usages
        .iter()
        .flatten()
        .filter_map(|u| crate::pki::Usage::from_name(u))
        .collect();
    Requested {
        duration: s
            .duration
            .as_deref()
            .and_then(|d| crate::api::duration::parse_go(d).ok()),
        is_ca: s.is_ca.unwrap_or(false),
        usages: policy::usage_set(&usages, s.is_ca.unwrap_or(false)),
    }
}

fn request_revision(request: &CertificateRequest) -> Option<i32> {
    request
        .metadata
        .annotations
        .as_ref()?
        .get(wk::CERTIFICATE_REVISION)?
        .parse()
        .ok()
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

impl Context {
    /// The Secret, from the labelled cache, or read when not there (not yet
    /// labelled, or the cache lags a write).
    async fn secret(
        &self,
        ns: &str,
        name: &str,
        fresh: bool,
    ) -> Result<Option<Secret>, CertificateError> {
        if !fresh && let Some(s) = self.secrets.get(&ObjectRef::new(name).within(ns)) {
            return Ok(Some((*s).clone()));
        }
        Api::<Secret>::namespaced(self.client.clone(), ns)
            .get_opt(name)
            .await
            .map_err(api_err("reading a Secret"))
    }

    async fn request(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Option<CertificateRequest>, CertificateError> {
        if let Some(r) = self.requests.get(&ObjectRef::new(name).within(ns)) {
            return Ok(Some((*r).clone()));
        }
        Api::<CertificateRequest>::namespaced(self.client.clone(), ns)
            .get_opt(name)
            .await
            .map_err(api_err("reading a CertificateRequest"))
    }

    async fn passwords(&self, cert: &Certificate, ns: &str) -> Result<Passwords, String> {
        let (p12, jks) = output::password_sources(&cert.spec).map_err(|e| e.to_string())?;
        let read = async |src: Option<PasswordSource<'_>>,
                          field: &str|
               -> Result<Option<crate::pki::Secret>, String> {
            match src {
                None => Ok(None),
                // Upstream refuses an empty password in either form.
                Some(PasswordSource::Inline("")) => Err(format!(
                    "{field}.password: is empty; set a non-empty password or use passwordSecretRef"
                )),
                Some(PasswordSource::Inline(p)) => Ok(Some(crate::pki::Secret::from(p))),
                Some(PasswordSource::SecretRef { name, key }) => {
                    let secret = Api::<Secret>::namespaced(self.client.clone(), ns)
                        .get_opt(name)
                        .await
                        .map_err(|e| format!("{field}.passwordSecretRef: reading Secret {ns}/{name}: {e}"))?
                        .ok_or_else(|| format!("{field}.passwordSecretRef: Secret {ns}/{name} does not exist; create it with the keystore password under {key:?}"))?;
                    let value = field_owned(&secret, key).ok_or_else(|| {
                        format!("{field}.passwordSecretRef: Secret {ns}/{name} has no key {key:?}; add the keystore password there")
                    })?;
                    if value.is_empty() {
                        return Err(format!(
                            "{field}.passwordSecretRef: key {key:?} of Secret {ns}/{name} is empty; put the keystore password there"
                        ));
                    }
                    Ok(Some(crate::pki::Secret::new(value)))
                }
            }
        };
        Ok(Passwords {
            pkcs12: read(p12, "spec.keystores.pkcs12").await?,
            jks: read(jks, "spec.keystores.jks").await?,
        })
    }
}

fn field_owned(secret: &Secret, key: &str) -> Option<Vec<u8>> {
    field(secret, key).map(<[u8]>::to_vec)
}

/// Sets a condition, keeping its transition time when unchanged.
fn set_condition(status: &mut CertificateStatus, c: CertificateCondition) {
    status.set_condition(c, status::now());
}

fn condition(
    type_: &str,
    st: ConditionStatus,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) -> CertificateCondition {
    CertificateCondition::new(type_, st, reason, message, generation)
}

fn remove_condition(status: &mut CertificateStatus, type_: &str) {
    if let Some(c) = status.conditions.as_mut() {
        c.retain(|c| c.type_ != type_);
    }
}

async fn write_status(
    api: &Api<Certificate>,
    original: &Certificate,
    status: CertificateStatus,
) -> Result<Option<Certificate>, CertificateError> {
    if original.status.as_ref() == Some(&status) {
        return Ok(Some(original.clone()));
    }
    let mut updated = original.clone();
    updated.status = Some(status);
    match status::replace_status(api, &updated).await? {
        Write::Done(c) => Ok(Some(c)),
        Write::Conflict => Ok(None),
    }
}

/// One pass: decide, act on one stage, write.
async fn step(cert: &Certificate, ctx: &Context) -> Result<Step, CertificateError> {
    let ns = cert.namespace().unwrap_or_default();
    let name = cert.name_any();
    let generation = cert.metadata.generation;
    let api: Api<Certificate> = Api::namespaced(ctx.client.clone(), &ns);
    let mut status = cert.status.clone().unwrap_or_default();
    index_add(&ctx.by_secret, &ns, &cert.spec.secret_name, &name);

    let desired = match policy::parse_spec(&cert.spec)
        .map_err(|e| e.to_string())
        .and_then(|d| {
            output::check_formats(&cert.spec)
                .map(|_| d)
                .map_err(|e| e.to_string())
        }) {
        Ok(d) => d,
        Err(message) => {
            set_condition(
                &mut status,
                condition(
                    types::READY,
                    ConditionStatus::False,
                    reasons::INVALID_SPEC,
                    message,
                    generation,
                ),
            );
            return Ok(match write_status(&api, cert, status).await? {
                Some(_) => Step::Done(Action::await_change()),
                None => Step::Conflict,
            });
        }
    };

    if cert.is_issuing() {
        return issue(cert, &desired, ctx, &api).await;
    }

    let revision = status.revision.unwrap_or(0);
    let requested = if revision > 0 {
        ctx.request(&ns, &format!("{name}-{revision}"))
            .await?
            .map(|r| requested_of(&r))
    } else {
        None
    };
    let now = SystemTime::now();
    let mut secret = ctx.secret(&ns, &desired.secret_name, false).await?;
    let mut evaluation = policy::evaluate(
        &desired,
        secret.as_ref().map(view).as_ref(),
        requested.as_ref(),
        now,
    );
    if matches!(evaluation, Evaluation::Issue(_)) {
        // The cache may lag our own last write; confirm with a fresh read
        // before starting an issuance.
        secret = ctx.secret(&ns, &desired.secret_name, true).await?;
        evaluation = policy::evaluate(
            &desired,
            secret.as_ref().map(view).as_ref(),
            requested.as_ref(),
            now,
        );
    }

    let trigger: Trigger = match evaluation {
        Evaluation::Valid(current) => {
            let renew_at = renewal_at(cert, &desired, &current.leaf, &ctx.options);
            if now < renew_at {
                return steady(
                    cert, &desired, ctx, &api, status, *current, secret, renew_at,
                )
                .await;
            }
            // Ready stays True while renewing a certificate that still works.
            set_ready_true(&mut status, &current.leaf, renew_at, generation);
            policy::renewing(renew_at)
        }
        Evaluation::Issue(trigger) => {
            set_condition(
                &mut status,
                condition(
                    types::READY,
                    ConditionStatus::False,
                    trigger.reason,
                    trigger.message.clone(),
                    generation,
                ),
            );
            trigger
        }
    };

    let failed_generation = cert
        .condition(types::ISSUING)
        .filter(|c| c.status == ConditionStatus::False)
        .and_then(|c| c.observed_generation);
    if let Some(retry_at) = policy::retry_not_before(
        status.failed_issuance_attempts.unwrap_or(0).max(0) as u32,
        status.last_failure_time.as_ref().map(from_time),
        failed_generation,
        generation,
        ctx.options.backoff_base,
        ctx.options.backoff_max,
    ) && now < retry_at
    {
        return Ok(match write_status(&api, cert, status).await? {
            Some(_) => Step::Done(Action::requeue(until(retry_at))),
            None => Step::Conflict,
        });
    }
    set_condition(
        &mut status,
        condition(
            types::ISSUING,
            ConditionStatus::True,
            trigger.reason,
            trigger.message.clone(),
            generation,
        ),
    );
    tracing::info!(%ns, %name, reason = trigger.reason, "certificate: issuing");
    Ok(match write_status(&api, cert, status).await? {
        // The status change comes back through the watch and runs `issue`.
        Some(_) => Step::Done(Action::await_change()),
        None => Step::Conflict,
    })
}

fn renewal_at(
    cert: &Certificate,
    desired: &Desired,
    leaf: &crate::pki::CertInfo,
    options: &CertificatesOptions,
) -> SystemTime {
    let seed = format!("{}/{}", cert.uid().unwrap_or_default(), leaf.serial_hex);
    policy::renewal_time(
        leaf.not_before,
        leaf.not_after,
        desired.renew_before,
        desired.renew_before_percentage,
        options.jitter,
        policy::stable_unit(seed.as_bytes()),
    )
}

fn set_ready_true(
    status: &mut CertificateStatus,
    leaf: &crate::pki::CertInfo,
    renew_at: SystemTime,
    generation: Option<i64>,
) {
    set_condition(
        status,
        condition(
            types::READY,
            ConditionStatus::True,
            reasons::READY,
            policy::READY_MESSAGE,
            generation,
        ),
    );
    status.not_before = Some(to_time(leaf.not_before));
    status.not_after = Some(to_time(leaf.not_after));
    status.renewal_time = Some(to_time(renew_at));
}

/// Nothing to issue: keep the Secret's metadata and outputs, status and
/// request history right, and wake up at the renewal time.
#[allow(clippy::too_many_arguments)]
async fn steady(
    cert: &Certificate,
    desired: &Desired,
    ctx: &Context,
    api: &Api<Certificate>,
    mut status: CertificateStatus,
    current: policy::Current,
    secret: Option<Secret>,
    renew_at: SystemTime,
) -> Result<Step, CertificateError> {
    let ns = cert.namespace().unwrap_or_default();
    let generation = cert.metadata.generation;
    if let Some(secret) = secret {
        let annotations = output::secret_annotations(cert, &current.leaf);
        let labels = output::secret_labels(cert);
        let chain = field_owned(&secret, output::TLS_CRT).unwrap_or_default();
        let ca = field_owned(&secret, output::CA_CRT);
        // Keystores are only rebuilt when missing; the deterministic outputs
        // are compared byte for byte.
        match ctx.passwords(cert, &ns).await {
            Ok(passwords) => match output::secret_data(
                cert,
                desired,
                &current.key,
                &chain,
                ca.as_deref(),
                &passwords,
            ) {
                Ok(mut data) => {
                    // tls.key keeps its bytes unless the encoding changed.
                    data.remove(output::TLS_KEY);
                    let key_in_secret = field_owned(&secret, output::TLS_KEY).unwrap_or_default();
                    let reencoded = current.key.to_pem(desired.key_encoding).ok();
                    let key_ok = reencoded
                        .as_ref()
                        .is_some_and(|k| k.expose() == key_in_secret.as_slice());
                    if !key_ok && let Some(k) = reencoded {
                        data.insert(output::TLS_KEY.to_owned(), k.expose().to_vec());
                    }
                    if !key_ok || !output::up_to_date(&secret, &annotations, &labels, &data) {
                        let name = desired.secret_name.clone();
                        let merged =
                            output::merge(Some(secret), &ns, &name, data, annotations, labels);
                        match Api::<Secret>::namespaced(ctx.client.clone(), &ns)
                            .replace(&name, &PostParams::default(), &merged)
                            .await
                        {
                            Ok(_) => {
                                tracing::info!(%ns, secret = %name, "certificate: Secret outputs repaired")
                            }
                            Err(e) if is_conflict(&e) => return Ok(Step::Conflict),
                            Err(e) => return Err(api_err("updating a Secret")(e)),
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(%ns, certificate = %cert.name_any(), error = %e, "certificate: outputs not written")
                }
            },
            Err(message) => {
                tracing::warn!(%ns, certificate = %cert.name_any(), error = %message, "certificate: keystore password unavailable")
            }
        }
    }
    set_ready_true(&mut status, &current.leaf, renew_at, generation);
    Ok(match write_status(api, cert, status).await? {
        Some(_) => {
            prune_history(cert, desired, ctx).await?;
            Step::Done(Action::requeue(until(renew_at)))
        }
        None => Step::Conflict,
    })
}

/// Issuing=True: next key, request, then the result.
async fn issue(
    cert: &Certificate,
    desired: &Desired,
    ctx: &Context,
    api: &Api<Certificate>,
) -> Result<Step, CertificateError> {
    let ns = cert.namespace().unwrap_or_default();
    let name = cert.name_any();
    let generation = cert.metadata.generation;
    let mut status = cert.status.clone().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);

    // 1. The next private key.
    let existing = ctx.secret(&ns, &desired.secret_name, false).await?;
    let reuse = (desired.rotation == RotationPolicy::Never)
        .then(|| existing.as_ref().and_then(|s| field(s, output::TLS_KEY)))
        .flatten()
        .and_then(|pem| PrivateKey::from_pem(pem).ok())
        .filter(|k| k.algorithm() == desired.key_algorithm);
    let (key, key_secret) = match reuse {
        Some(k) => (k, desired.secret_name.clone()),
        None => {
            let stored = match status.next_private_key_secret_name.as_deref() {
                Some(n) => secrets
                    .get_opt(n)
                    .await
                    .map_err(api_err("reading the next private key"))?
                    .and_then(|s| {
                        field(&s, output::TLS_KEY).and_then(|p| PrivateKey::from_pem(p).ok())
                    })
                    .filter(|k| k.algorithm() == desired.key_algorithm)
                    .map(|k| (k, n.to_owned())),
                None => None,
            };
            match stored {
                Some(found) => found,
                None => return store_next_key(cert, desired, ctx, api, status).await,
            }
        }
    };

    // 2. The request for the next revision.
    let revision = status.revision.unwrap_or(0) + 1;
    let request_name = format!("{name}-{revision}");
    let requests: Api<CertificateRequest> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(request) = ctx.request(&ns, &request_name).await? else {
        let request = build_request(cert, desired, &key, &key_secret, &request_name, revision)?;
        match requests.create(&PostParams::default(), &request).await {
            Ok(_) => {
                index_add(&ctx.by_certificate, &ns, &name, &request_name);
                tracing::info!(%ns, certificate = %name, request = %request_name, "certificate: request created");
            }
            // Another instance created it; its watch event brings us back.
            Err(e) if is_conflict(&e) => {}
            Err(e) => return Err(api_err("creating a CertificateRequest")(e)),
        }
        return Ok(Step::Done(Action::await_change()));
    };
    let issuing_since = cert
        .condition(types::ISSUING)
        .and_then(|c| c.last_transition_time.as_ref())
        .map(from_time);
    let created = request.metadata.creation_timestamp.as_ref().map(from_time);
    let stale_attempt =
        request.is_finished() && matches!((created, issuing_since), (Some(c), Some(i)) if c < i);
    if stale_attempt || !request_matches(&request, desired, &key) {
        // A request from an earlier attempt or an older spec: replace it.
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: request.uid(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match requests.delete(&request_name, &dp).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) || is_conflict(&e) => {}
            Err(e) => return Err(api_err("deleting a stale CertificateRequest")(e)),
        }
        return Ok(Step::Done(Action::requeue(Duration::from_millis(200))));
    }

    // 3. The result.
    let failure = if request.is_denied() {
        Some((
            reasons::DENIED,
            request
                .condition(types::DENIED)
                .and_then(|c| c.message.clone())
                .unwrap_or_default(),
        ))
    } else if request.is_failed() {
        Some((
            reasons::FAILED,
            request
                .condition(types::READY)
                .and_then(|c| c.message.clone())
                .unwrap_or_default(),
        ))
    } else {
        None
    };
    if let Some((reason, message)) = failure {
        return fail(cert, ctx, api, status, reason, &message).await;
    }
    let chain = match request.status.as_ref().and_then(|s| s.certificate.as_ref()) {
        Some(c) if request.is_issued() && !c.is_empty() => c.as_bytes().to_vec(),
        // Still pending: the request watch brings us back.
        _ => return Ok(Step::Done(Action::await_change())),
    };
    let leaf = match crate::pki::check_issued(&chain, key.public_key_der(), SystemTime::now()) {
        Ok(l) => l,
        Err(e) => return fail(cert, ctx, api, status, reasons::FAILED, &e.to_string()).await,
    };
    let ca = request
        .status
        .as_ref()
        .and_then(|s| s.ca.as_ref())
        .map(|c| c.as_bytes().to_vec());
    let passwords = match ctx.passwords(cert, &ns).await {
        Ok(p) => p,
        Err(message) => return fail(cert, ctx, api, status, reasons::FAILED, &message).await,
    };
    let data = match output::secret_data(cert, desired, &key, &chain, ca.as_deref(), &passwords) {
        Ok(d) => d,
        Err(
            e @ (OutputError::Keystore { .. }
            | OutputError::Key { .. }
            | OutputError::NoPassword { .. }
            | OutputError::UnknownFormat { .. }
            | OutputError::UnknownProfile { .. }),
        ) => {
            return fail(cert, ctx, api, status, reasons::FAILED, &e.to_string()).await;
        }
    };
    let merged = output::merge(
        existing,
        &ns,
        &desired.secret_name,
        data,
        output::secret_annotations(cert, &leaf),
        output::secret_labels(cert),
    );
    let written = if merged.metadata.resource_version.is_some() {
        secrets
            .replace(&desired.secret_name, &PostParams::default(), &merged)
            .await
    } else {
        secrets.create(&PostParams::default(), &merged).await
    };
    match written {
        Ok(_) => {}
        // The cached Secret was stale or someone created it meanwhile.
        Err(e) if is_conflict(&e) => {
            let fresh = secrets
                .get_opt(&desired.secret_name)
                .await
                .map_err(api_err("re-reading a Secret"))?;
            if let Some(fresh) = fresh {
                let mut retry = merged.clone();
                retry.metadata.resource_version = fresh.metadata.resource_version.clone();
                // Keep keys written meanwhile by others.
                let mut data = fresh.data.clone().unwrap_or_default();
                data.extend(retry.data.take().unwrap_or_default());
                retry.data = Some(data);
                match secrets
                    .replace(&desired.secret_name, &PostParams::default(), &retry)
                    .await
                {
                    Ok(_) => {}
                    Err(e) if is_conflict(&e) => return Ok(Step::Conflict),
                    Err(e) => return Err(api_err("writing the Secret")(e)),
                }
            } else {
                return Ok(Step::Conflict);
            }
        }
        Err(e) => return Err(api_err("writing the Secret")(e)),
    }

    let renew_at = renewal_at(cert, desired, &leaf, &ctx.options);
    remove_condition(&mut status, types::ISSUING);
    set_ready_true(&mut status, &leaf, renew_at, generation);
    status.revision = Some(revision);
    status.failed_issuance_attempts = None;
    status.last_failure_time = None;
    let next_key = status.next_private_key_secret_name.take();
    match write_status(api, cert, status).await? {
        Some(_) => {
            tracing::info!(%ns, certificate = %name, revision, serial = %leaf.serial_hex, "certificate: issued");
            ctx.telemetry.event(
                cert,
                EventType::Normal,
                "Issued",
                "Issue",
                format!("{} (revision {revision})", policy::READY_MESSAGE),
            );
            if let Some(n) = next_key.filter(|n| *n != desired.secret_name) {
                match secrets.delete(&n, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => {
                        tracing::warn!(%ns, secret = %n, error = %e, "certificate: could not delete the used next-key Secret")
                    }
                }
            }
            let mut after = cert.clone();
            after.status.get_or_insert_with(Default::default).revision = Some(revision);
            prune_history(&after, desired, ctx).await?;
            Ok(Step::Done(Action::requeue(until(renew_at))))
        }
        None => Ok(Step::Conflict),
    }
}

/// The request still fits: same key, same issuer, same asks.
fn request_matches(request: &CertificateRequest, desired: &Desired, key: &PrivateKey) -> bool {
    let same_key = crate::pki::parse_csr(request.spec.request.as_bytes())
        .map(|p| crate::pki::key::same_public_key(&p.spki_der, key.public_key_der()))
        .unwrap_or(false);
    let asked = requested_of(request);
    same_key
        && request.spec.issuer_ref.same_issuer(&desired.issuer_ref)
        && asked.is_ca == desired.is_ca
        && asked.usages == policy::usage_set(&desired.usages, desired.is_ca)
        && asked.duration == Some(desired.duration)
        && crate::pki::parse_csr(request.spec.request.as_bytes())
            .map(|p| {
                let want = &desired.sans;
                let have = &p.sans;
                let s = |v: &Vec<String>| v.iter().cloned().collect::<BTreeSet<_>>();
                s(&want.dns_names) == s(&have.dns_names)
                    && want.ip_addresses.iter().collect::<BTreeSet<_>>()
                        == have.ip_addresses.iter().collect::<BTreeSet<_>>()
                    && s(&want.uris) == s(&have.uris)
                    && s(&want.emails) == s(&have.emails)
                    && (desired.subject.literal.is_some()
                        || p.subject_fields.common_name == desired.subject.common_name)
            })
            .unwrap_or(false)
}

fn build_request(
    cert: &Certificate,
    desired: &Desired,
    key: &PrivateKey,
    key_secret: &str,
    request_name: &str,
    revision: i32,
) -> Result<CertificateRequest, CertificateError> {
    let csr_err = |reason: String| CertificateError::Csr {
        certificate: format!(
            "{}/{}",
            cert.namespace().unwrap_or_default(),
            cert.name_any()
        ),
        reason,
    };
    let options = CsrOptions {
        encode_usages: desired
            .encode_usages_in_request
            .then_some((desired.usages.as_slice(), desired.is_ca)),
        critical_san_when_subject_empty: true,
        ..Default::default()
    };
    let csr = crate::pki::build_csr(key, &desired.subject, &desired.sans, &options)
        .map_err(|e| csr_err(e.to_string()))?;
    // What a real cert-manager webhook would check before admitting it.
    crate::pki::check_request(csr.pem.as_bytes(), &desired.usages, desired.is_ca)
        .map_err(|e| csr_err(e.to_string()))?;
    let annotations = [
        (wk::CERTIFICATE_NAME, cert.name_any()),
        (wk::CERTIFICATE_REVISION, revision.to_string()),
        (wk::PRIVATE_KEY_SECRET_NAME, key_secret.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    Ok(CertificateRequest {
        metadata: ObjectMeta {
            name: Some(request_name.to_owned()),
            namespace: cert.namespace(),
            annotations: Some(annotations),
            owner_references: owner_reference(cert).map(|o| vec![o]),
            ..Default::default()
        },
        spec: CertificateRequestSpec {
            request: PemBytes::from(csr.pem),
            issuer_ref: desired.issuer_ref.clone(),
            duration: Some(desired.duration_string()),
            is_ca: Some(desired.is_ca),
            usages: (!desired.usage_names.is_empty()).then(|| desired.usage_names.clone()),
            ..Default::default()
        },
        status: None,
    })
}

/// Makes the next key, keeps it in a temporary Secret (never in logs or on
/// the controller's disk) and records its name in status.
async fn store_next_key(
    cert: &Certificate,
    desired: &Desired,
    ctx: &Context,
    api: &Api<Certificate>,
    mut status: CertificateStatus,
) -> Result<Step, CertificateError> {
    let ns = cert.namespace().unwrap_or_default();
    let algorithm = desired.key_algorithm;
    let key = tokio::task::spawn_blocking(move || PrivateKey::generate(algorithm))
        .await
        .map_err(|e| CertificateError::Key {
            algorithm: crate::pki::key::describe_algorithm(algorithm),
            source: crate::pki::KeyError::Generate {
                algorithm: e.to_string(),
            },
        })?
        .map_err(|source| CertificateError::Key {
            algorithm: crate::pki::key::describe_algorithm(algorithm),
            source,
        })?;
    let pem = key
        .to_pem(KeyEncoding::Pkcs8)
        .map_err(|source| CertificateError::Key {
            algorithm: crate::pki::key::describe_algorithm(algorithm),
            source,
        })?;
    let secret_name = format!("{}-{}", truncate(&cert.name_any(), 52), random_suffix());
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(secret_name.clone()),
            namespace: Some(ns.clone()),
            labels: Some([(NEXT_PRIVATE_KEY_LABEL.to_owned(), "true".to_owned())].into()),
            owner_references: owner_reference(cert).map(|o| vec![o]),
            ..Default::default()
        },
        data: Some(
            [(
                output::TLS_KEY.to_owned(),
                k8s_openapi::ByteString(pem.expose().to_vec()),
            )]
            .into(),
        ),
        type_: Some("Opaque".to_owned()),
        ..Default::default()
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .map_err(api_err("creating the next private key Secret"))?;
    let previous = status
        .next_private_key_secret_name
        .replace(secret_name.clone());
    match write_status(api, cert, status).await? {
        Some(_) => {
            if let Some(p) = previous.filter(|p| *p != secret_name) {
                let _ = secrets.delete(&p, &DeleteParams::default()).await;
            }
            Ok(Step::Done(Action::await_change()))
        }
        None => {
            // Another writer recorded its own key first; ours is unused.
            let _ = secrets.delete(&secret_name, &DeleteParams::default()).await;
            Ok(Step::Conflict)
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => s[..i].trim_end_matches(['-', '.']),
        None => s,
    }
}

fn random_suffix() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Records a failed attempt: Issuing=False, one more failure, and a wake-up
/// when the backoff ends.
async fn fail(
    cert: &Certificate,
    ctx: &Context,
    api: &Api<Certificate>,
    mut status: CertificateStatus,
    reason: &str,
    detail: &str,
) -> Result<Step, CertificateError> {
    let generation = cert.metadata.generation;
    let failures = status.failed_issuance_attempts.unwrap_or(0).max(0) + 1;
    let now = SystemTime::now();
    status.failed_issuance_attempts = Some(failures);
    status.last_failure_time = Some(to_time(now));
    set_condition(
        &mut status,
        condition(
            types::ISSUING,
            ConditionStatus::False,
            reason,
            format!("The certificate request has failed to complete and will be retried: {detail}"),
            generation,
        ),
    );
    let delay = policy::backoff_delay(
        failures as u32,
        ctx.options.backoff_base,
        ctx.options.backoff_max,
    );
    tracing::warn!(
        namespace = %cert.namespace().unwrap_or_default(),
        certificate = %cert.name_any(),
        failures,
        retry_in = ?delay,
        %detail,
        "certificate: issuance failed"
    );
    // A Certificate that already holds a certificate is failing to renew:
    // the Secret still serves the old one, which is what users must know.
    let renewing = cert.status.as_ref().is_some_and(|s| s.not_after.is_some());
    ctx.telemetry.event(
        cert,
        EventType::Warning,
        if renewing { "RenewalFailed" } else { "Failed" },
        "Issue",
        format!("The certificate request has failed to complete and will be retried ({reason}): {detail}"),
    );
    Ok(match write_status(api, cert, status).await? {
        Some(_) => Step::Done(Action::requeue(delay.max(Duration::from_millis(100)))),
        None => Step::Conflict,
    })
}

/// Deletes this Certificate's requests beyond revisionHistoryLimit (the
/// newest revisions are kept; requests for revisions still to come are
/// never touched).
async fn prune_history(
    cert: &Certificate,
    desired: &Desired,
    ctx: &Context,
) -> Result<(), CertificateError> {
    let ns = cert.namespace().unwrap_or_default();
    let name = cert.name_any();
    let current = cert.status.as_ref().and_then(|s| s.revision).unwrap_or(0);
    let uid = cert.uid();
    let mut owned: Vec<(i32, String, Option<String>)> = Vec::new();
    for request_name in index_get(&ctx.by_certificate, &ns, &name) {
        let Some(r) = ctx.requests.get(&ObjectRef::new(&request_name).within(&ns)) else {
            index_remove(&ctx.by_certificate, &ns, &name, &request_name);
            continue;
        };
        let ours = r
            .owner_references()
            .iter()
            .any(|o| Some(&o.uid) == uid.as_ref() && o.kind == "Certificate");
        if let (true, Some(rev)) = (ours, request_revision(&r))
            && rev <= current
        {
            owned.push((rev, request_name, r.uid()));
        }
    }
    if owned.len() <= desired.revision_history_limit {
        return Ok(());
    }
    owned.sort();
    let excess = owned.len() - desired.revision_history_limit;
    let requests: Api<CertificateRequest> = Api::namespaced(ctx.client.clone(), &ns);
    for (_, request_name, request_uid) in owned.into_iter().take(excess) {
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: request_uid,
                resource_version: None,
            }),
            ..Default::default()
        };
        match requests.delete(&request_name, &dp).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) || is_conflict(&e) => {}
            Err(e) => return Err(api_err("deleting an old CertificateRequest")(e)),
        }
    }
    Ok(())
}

/// Updates the Certificate's expiry and readiness series from what the
/// watch delivered. Every status write comes back through the watch and
/// reconciles again, so the series follow each change without extra reads.
fn observe(cert: &Certificate, ctx: &Context) {
    let ns = cert.namespace().unwrap_or_default();
    let name = cert.name_any();
    if cert.meta().deletion_timestamp.is_some() || ctx.was_deleted(cert.meta().uid.as_deref()) {
        ctx.telemetry.metrics.certificate_removed(&ns, &name);
        return;
    }
    let issuer = &cert.spec.issuer_ref;
    let ready = cert
        .condition(types::READY)
        .map_or(ReadyCondition::Unknown, |c| {
            ReadyCondition::from_status(c.status.as_str())
        });
    let status = cert.status.as_ref();
    let time = |t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| t.map(|t| t.0);
    let times = CertificateTimes {
        not_before: time(status.and_then(|s| s.not_before.as_ref())),
        not_after: time(status.and_then(|s| s.not_after.as_ref())),
        renewal: time(status.and_then(|s| s.renewal_time.as_ref())),
    };
    ctx.telemetry.metrics.certificate_observed(
        &CertificateRef {
            namespace: &ns,
            name: &name,
            issuer_name: &issuer.name,
            issuer_kind: issuer.kind_or_default(),
            issuer_group: issuer.group_or_default(),
        },
        times,
        ready,
    );
}

async fn reconcile(cert: Arc<Certificate>, ctx: Arc<Context>) -> Result<Action, CertificateError> {
    ctx.telemetry
        .metrics
        .sync_call(SyncController::Certificates);
    observe(&cert, &ctx);
    let ns = cert.namespace().unwrap_or_default();
    let name = cert.name_any();
    let api: Api<Certificate> = Api::namespaced(ctx.client.clone(), &ns);
    let mut current = (*cert).clone();
    for _ in 0..CONFLICT_ATTEMPTS {
        if current.meta().deletion_timestamp.is_some() {
            return Ok(Action::await_change());
        }
        match step(&current, &ctx).await? {
            Step::Done(action) => return Ok(action),
            Step::Conflict => match api
                .get_opt(&name)
                .await
                .map_err(api_err("re-reading a Certificate"))?
            {
                Some(fresh) => current = fresh,
                None => return Ok(Action::await_change()),
            },
        }
    }
    Err(ReconcileError::Contended {
        what: format!("Certificate {ns}/{name}"),
        attempts: CONFLICT_ATTEMPTS,
    }
    .into())
}

fn error_policy(cert: Arc<Certificate>, error: &CertificateError, ctx: Arc<Context>) -> Action {
    ctx.telemetry
        .metrics
        .sync_error(SyncController::Certificates);
    tracing::warn!(
        namespace = %cert.namespace().unwrap_or_default(),
        certificate = %cert.name_any(),
        %error,
        "certificates: reconcile failed; retrying"
    );
    Action::requeue(Duration::from_secs(5))
}

/// Runs the certificates loop until `shutdown` fires.
pub async fn run(
    client: kube::Client,
    options: ControllerOptions,
    health: Health,
    shutdown: CancellationToken,
) {
    let wc = watcher::Config::default;
    let controller = Controller::new(Api::<Certificate>::all(client.clone()), wc())
        .trigger_backoff(crate::kubernetes::WatchBackoff::default());
    let certificates = controller.store();

    let fao = format!("{}={}", wk::FAO_LABEL, wk::FAO_LABEL_VALUE);
    let not_fao = format!("{}!={}", wk::FAO_LABEL, wk::FAO_LABEL_VALUE);
    let (secrets, secret_writer) = reflector::store::<Secret>();
    let managed_events = reflector::reflector(
        secret_writer,
        watcher(Api::<Secret>::all(client.clone()), wc().labels(&fao))
            .backoff(crate::kubernetes::WatchBackoff::default()),
    )
    .touched_objects();
    // Everything else only as metadata: names matter (a Secret appearing
    // or vanishing at a secretName), contents do not, and nothing is kept.
    let other_events = watcher(
        Api::<PartialObjectMeta<Secret>>::all(client.clone()),
        wc().labels(&not_fao),
    )
    .backoff(crate::kubernetes::WatchBackoff::default())
    .touched_objects();
    let (requests, request_writer) = reflector::store::<CertificateRequest>();
    let request_events = reflector::reflector(
        request_writer,
        watcher(Api::<CertificateRequest>::all(client.clone()), wc())
            .backoff(crate::kubernetes::WatchBackoff::default()),
    )
    .touched_objects();

    let client_for_deletions = client.clone();
    let ctx = Arc::new(Context {
        client,
        options: options.certificates.clone(),
        secrets,
        requests,
        by_secret: Mutex::default(),
        by_certificate: Mutex::default(),
        telemetry: options.telemetry(),
        deleted: Mutex::default(),
    });
    // The controller reconciles objects that exist; a deletion only shows
    // as a watch event. Metadata is all this needs. (A deletion missed
    // while the watch was down leaves its series until the restart.)
    {
        let deletion_ctx = ctx.clone();
        let deletions = watcher(
            Api::<PartialObjectMeta<Certificate>>::all(client_for_deletions),
            wc(),
        )
        .backoff(crate::kubernetes::WatchBackoff::default());
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut deletions = std::pin::pin!(deletions);
            loop {
                let event = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    event = deletions.next() => event,
                };
                match event {
                    Some(Ok(watcher::Event::Delete(meta))) => deletion_ctx.forget_deleted(
                        meta.metadata.namespace.as_deref().unwrap_or_default(),
                        meta.metadata.name.as_deref().unwrap_or_default(),
                        meta.metadata.uid.as_deref(),
                    ),
                    Some(_) => {}
                    None => break,
                }
            }
        });
    }
    let (c1, c2, c3) = (ctx.clone(), ctx.clone(), ctx.clone());
    let controller = controller
        .watches_stream(managed_events, move |secret: Secret| {
            certificates_for_secret(&c1, secret.metadata)
        })
        .watches_stream(other_events, move |secret: PartialObjectMeta<Secret>| {
            certificates_for_secret(&c2, secret.metadata)
        })
        .watches_stream(request_events, move |request: CertificateRequest| {
            let ns = request.namespace().unwrap_or_default();
            let owner = request
                .owner_references()
                .iter()
                .find(|o| o.kind == "Certificate" && o.controller == Some(true))
                .map(|o| o.name.clone());
            let owner = owner?;
            index_add(&c3.by_certificate, &ns, &owner, &request.name_any());
            Some(ObjectRef::<Certificate>::new(&owner).within(&ns))
        });
    super::mark_ready_when_synced(certificates, health);
    controller
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "certificates: controller event");
            }
        })
        .await;
}

fn certificates_for_secret(ctx: &Context, meta: ObjectMeta) -> Vec<ObjectRef<Certificate>> {
    let ns = meta.namespace.unwrap_or_default();
    let name = meta.name.unwrap_or_default();
    let mut names: BTreeSet<String> = index_get(&ctx.by_secret, &ns, &name).into_iter().collect();
    if let Some(c) = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(wk::CERTIFICATE_NAME))
    {
        names.insert(c.clone());
    }
    names
        .into_iter()
        .map(|c| ObjectRef::new(&c).within(&ns))
        .collect()
}
