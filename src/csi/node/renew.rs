//! Renewal in place and recovery after a restart.
//!
//! The scheduler hands a due volume id to [`NodeService::drive_renewals`],
//! which starts one task for that renewal only (none exists between
//! renewals). The task queues at the limiter, makes the new key (or reads
//! the current one back when `reuse-private-key` is set), records the
//! request as pending before creating it, waits for the decision on the
//! shared tracker without a deadline, and swaps the files atomically. The
//! volume lock is held only around the short steps that read or write the
//! volume, never while waiting, so republish and unpublish stay quick.
//!
//! A failed attempt keeps the current certificate, counts the attempt in
//! node state and retries after a jittered, doubling backoff.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use super::{
    EVENT_RENEWAL_FAILED, NodeService, PKCS12_PASSWORD_FILE, PublishError, blocking, build_files,
    to_timestamp,
};
use crate::issuance::{self, IssuanceError};
use crate::pki::{self, KeyEncoding, PrivateKey};
use crate::renewal::limiter::Priority;
use crate::renewal::schedule;
use crate::shutdown::CancellationToken;
use crate::store::{DATA_LINK, RequestPhase, RequestRef, StoreError, VolumeDir, VolumeState};
use crate::telemetry::EventType;
use crate::telemetry::metrics::{
    IssuanceKind, IssueErrorReason, ReadyCondition, RequestKey, VolumeRef,
};
use crate::volume::{self, PublishInput, VolumeSpec, keys, kubelet};

/// Stable log message of a failed renewal attempt; the hook for metrics and
/// events (count these per volume and reason).
pub const RENEWAL_FAILED: &str =
    "certificate renewal failed; serving the current certificate and retrying after a backoff";
/// Stable log message of a completed renewal.
pub const RENEWED: &str = "certificate renewed";

/// Delay before retrying a failed renewal: doubling from `base` to `max`,
/// with jitter (see [`schedule::backoff`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_secs(30),
            max: Duration::from_secs(300),
        }
    }
}

/// What recovery found in node state at start.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Valid certificates scheduled for a later renewal; no request made.
    pub scheduled: usize,
    /// Certificates past their renewal time, queued at the limiter.
    pub overdue: usize,
    /// Renewals whose request was pending; the same request is resumed.
    pub resumed: usize,
    /// First issuances that timed out before the restart; the kubelet's
    /// retry of NodePublishVolume resumes them.
    pub awaiting_publish: usize,
    /// Volumes whose tmpfs or target mount was gone, removed with their
    /// requests.
    pub cleaned: usize,
}

/// How a renewal attempt ended, when it did not fail.
enum Renewal {
    Done {
        next: SystemTime,
    },
    /// Unpublished, or not a volume with a certificate: nothing to do.
    Gone,
}

enum Verdict {
    Keep,
    AwaitingPublish,
    Gone,
}

impl NodeService {
    /// Re-adopts every volume in node state. Runs before Probe reports
    /// ready. Volumes with a valid certificate are only scheduled: no API
    /// call is made for them.
    pub async fn recover(self: &Arc<Self>) -> Result<Recovery, StoreError> {
        let store = self.store.clone();
        let found = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            let mut found = Vec::new();
            for state in store.list()? {
                let verdict = match store.existing(&state.volume_id) {
                    Ok(Some(_)) if state.not_after.is_none() => Verdict::AwaitingPublish,
                    Ok(Some(dir)) => match dir.is_mounted_at(&state.target_path) {
                        Ok(true) => Verdict::Keep,
                        Ok(false) => Verdict::Gone,
                        Err(error) => {
                            // Unsure: keep serving; a renewal reports it.
                            tracing::warn!(volume_id = %state.volume_id, %error, "cannot check the target mount; keeping the volume");
                            Verdict::Keep
                        }
                    },
                    Ok(None) => Verdict::Gone,
                    Err(error) => {
                        tracing::warn!(volume_id = %state.volume_id, %error, "cannot check the volume's tmpfs; keeping the volume");
                        Verdict::Keep
                    }
                };
                found.push((state, verdict));
            }
            Ok(found)
        })
        .await
        .map_err(|e| StoreError::Conflict {
            op: "recover",
            path: self.store.root().to_path_buf(),
            reason: format!("the recovery task failed: {e}"),
        })??;

        let mut report = Recovery::default();
        let now = SystemTime::now();
        let mut gone = Vec::new();
        for (state, verdict) in found {
            match verdict {
                Verdict::AwaitingPublish => report.awaiting_publish += 1,
                Verdict::Gone => gone.push(state),
                Verdict::Keep => {
                    let mut state = state;
                    let pending =
                        matches!(&state.request, Some(r) if r.phase == RequestPhase::Pending);
                    let at = if pending {
                        report.resumed += 1;
                        now
                    } else {
                        let at = self.recovered_renewal(&state);
                        if Some(to_timestamp(at)) != state.next_renewal {
                            // Saved, so the next restart starts from the
                            // same time and the metrics show it.
                            state.next_renewal = Some(to_timestamp(at));
                            let store = self.store.clone();
                            let saving = state.clone();
                            if let Err(error) = blocking(move || store.save_state(&saving)).await {
                                tracing::warn!(volume_id = %state.volume_id, %error, "could not save the rescheduled renewal");
                            }
                        }
                        if at <= now {
                            report.overdue += 1;
                        } else {
                            report.scheduled += 1;
                        }
                        at
                    };
                    self.scheduler.schedule(&state.volume_id, at);
                    self.adopt_metrics(&state);
                }
            }
        }
        report.cleaned = gone.len();
        for state in gone {
            self.clean_up_lost(state).await;
        }
        tracing::info!(
            scheduled = report.scheduled,
            overdue = report.overdue,
            resumed = report.resumed,
            awaiting_publish = report.awaiting_publish,
            cleaned = report.cleaned,
            "node state recovered"
        );
        Ok(report)
    }

    /// The renewal time of a recovered volume, under the same rules as a
    /// fresh certificate (see [`schedule::revalidate`]). A retry after a
    /// failed renewal is kept as saved; so is a state that lacks validity.
    fn recovered_renewal(&self, state: &VolumeState) -> SystemTime {
        let saved = state
            .next_renewal
            .map(SystemTime::from)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let (Some(not_before), Some(not_after)) = (state.not_before, state.not_after) else {
            return saved;
        };
        if state.renewal_attempts > 0 {
            return saved;
        }
        let not_before = SystemTime::from(not_before);
        let issued = schedule::Issued {
            not_before,
            not_after: SystemTime::from(not_after),
            received: state.received_at.map_or(not_before, SystemTime::from),
        };
        // The renew-before the pod asked for. A context that no longer
        // parses (a keystore password lives only in the tmpfs) falls back
        // to the default third, which renews later but still in time.
        let target = state.target_path.to_string_lossy();
        let context: HashMap<String, String> = state
            .context
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let requested = self
            .parse_spec(&PublishInput {
                volume_id: &state.volume_id,
                target_path: &target,
                readonly: true,
                volume_mount_group: state.volume_mount_group.as_deref(),
                context: &context,
            })
            .ok()
            .and_then(|spec| spec.renew_before);
        let plan = schedule::revalidate(
            saved,
            &issued,
            requested,
            &self.config.renewal,
            state.short_certificates,
            rand::random::<f64>(),
        );
        if plan.at != saved {
            tracing::info!(
                volume_id = %state.volume_id,
                saved = %jiff::Timestamp::try_from(saved).map(|t| t.to_string()).unwrap_or_default(),
                next_renewal = %to_timestamp(plan.at),
                "a saved renewal time broke the renewal rules; rescheduled"
            );
        }
        plan.at
    }

    /// Brings a recovered volume's series back: a restart must not make a
    /// volume vanish from dashboards until its next renewal.
    fn adopt_metrics(&self, state: &VolumeState) {
        let pod_namespace = state.context.get(kubelet::POD_NAMESPACE);
        let pod_name = state.context.get(kubelet::POD_NAME);
        if let (Some(ns), Some(pod), Some(not_after), Some(next)) =
            (pod_namespace, pod_name, state.not_after, state.next_renewal)
        {
            self.metrics.volume_published(
                &VolumeRef {
                    volume_id: &state.volume_id,
                    pod_namespace: ns,
                    pod_name: pod,
                },
                not_after,
                next,
            );
        }
        if let Some(request) = &state.request {
            let condition = match request.phase {
                RequestPhase::Pending => ReadyCondition::Unknown,
                _ => ReadyCondition::True,
            };
            self.metrics.request_condition(
                &RequestKey::new(&request.namespace, &request.name),
                condition,
            );
        }
    }

    /// Removes a volume whose mounts disappeared (node reboot, manual
    /// unmount): its files cannot be served any more, and the kubelet
    /// publishes it anew if the pod still exists. Its requests are deleted
    /// in the background so an unreachable API does not delay readiness.
    async fn clean_up_lost(self: &Arc<Self>, state: VolumeState) {
        tracing::warn!(volume_id = %state.volume_id, target = %state.target_path.display(), "volume's mount is gone; removing its node state and requests");
        let store = self.store.clone();
        let id = state.volume_id.clone();
        let target = state.target_path.clone();
        if let Err(error) = blocking(move || store.remove(&id, &target)).await {
            tracing::error!(volume_id = %state.volume_id, %error, "could not remove a lost volume");
        }
        let namespace = state
            .context
            .get(kubelet::POD_NAMESPACE)
            .cloned()
            .or_else(|| state.request.as_ref().map(|r| r.namespace.clone()));
        if let Some(namespace) = namespace {
            let this = self.clone();
            tokio::spawn(async move {
                if let Err(error) = issuance::delete_for_volume(
                    &this.client,
                    &namespace,
                    &this.config.node_id,
                    &state.volume_id,
                    &[],
                )
                .await
                {
                    tracing::warn!(volume_id = %state.volume_id, %error, "could not delete a lost volume's CertificateRequests; the pod's ownerReference will collect them");
                }
            });
        }
    }

    /// Starts a renewal for every volume id the scheduler reports due.
    pub fn drive_renewals(self: &Arc<Self>, mut due: mpsc::UnboundedReceiver<String>) {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let id = tokio::select! {
                    _ = this.shutdown.cancelled() => break,
                    id = due.recv() => match id {
                        Some(id) => id,
                        None => break,
                    },
                };
                this.start_renewal(id);
            }
        });
    }

    fn start_renewal(self: &Arc<Self>, volume_id: String) {
        let cancel = {
            let mut running = self.renewals.lock().expect("renewals lock");
            if running.contains_key(&volume_id) {
                return;
            }
            let token = self.shutdown.child_token();
            running.insert(volume_id.clone(), token.clone());
            token
        };
        let this = self.clone();
        tokio::spawn(async move {
            let outcome = tokio::select! {
                _ = cancel.cancelled() => None,
                outcome = this.renew(&volume_id, &cancel) => Some(outcome),
            };
            {
                let mut running = this.renewals.lock().expect("renewals lock");
                // Unpublish may have removed it, and a new publish started
                // another renewal since: remove only our own entry.
                if !cancel.is_cancelled() {
                    running.remove(&volume_id);
                }
            }
            match outcome {
                None | Some(Ok(Renewal::Gone)) => {}
                Some(Ok(Renewal::Done { next })) => this.scheduler.schedule(&volume_id, next),
                Some(Err(error)) => this.renewal_failed(&volume_id, error, &cancel).await,
            }
        });
    }

    /// One renewal attempt.
    async fn renew(
        &self,
        volume_id: &str,
        cancel: &CancellationToken,
    ) -> Result<Renewal, PublishError> {
        // A first look decides the kind of slot: resuming a request that
        // exists takes no new-request token.
        let Some(state) = self.current_state(volume_id).await? else {
            return Ok(Renewal::Gone);
        };
        let Some(not_after) = state.not_after else {
            return Ok(Renewal::Gone);
        };
        let pending = matches!(&state.request, Some(r) if r.phase == RequestPhase::Pending);
        let permit = self
            .limiter
            .acquire(
                Priority::Renewal {
                    not_after: not_after.into(),
                },
                !pending,
            )
            .await
            .map_err(|_| PublishError::ShuttingDown)?;
        let started = std::time::Instant::now();

        let (spec, dir, key, namespace, name, mut sub) = {
            let _guard = self.locks.lock(volume_id).await;
            if cancel.is_cancelled() {
                return Ok(Renewal::Gone);
            }
            let Some(state) = self.current_state(volume_id).await? else {
                return Ok(Renewal::Gone);
            };
            if state.not_after.is_none() {
                return Ok(Renewal::Gone);
            }
            let dir = self.existing_dir(volume_id).await?;
            let spec = self.spec_from_state(&state, &dir).await?;
            let namespace = spec.pod.namespace.clone();
            let pending = state
                .request
                .clone()
                .filter(|r| r.phase == RequestPhase::Pending);
            let resumed = match pending {
                Some(request) => self.resume(&spec, request).await?,
                None => None,
            };
            match resumed {
                Some((dir, key, name, sub)) => {
                    tracing::info!(volume_id, request = %format!("{namespace}/{name}"), "resuming a pending renewal");
                    (spec, dir, key, namespace, name, sub)
                }
                None => {
                    let key = if spec.reuse_private_key {
                        current_key(&dir, &spec).await?
                    } else {
                        self.new_key(&spec).await?
                    };
                    let csr =
                        pki::build_csr(&key, &spec.subject, &spec.sans, &self.csr_options(&spec))?;
                    let pem = key.to_pem(KeyEncoding::Pkcs8)?;
                    {
                        let dir = dir.clone();
                        blocking(move || dir.write_pending_key(&pem)).await?;
                    }
                    let name = issuance::new_request_name(&spec.pod.name);
                    let sub = self.tracker.subscribe(&namespace, &name);
                    // The state keeps the validity of the certificate still
                    // served, so a restart sees a published volume with a
                    // renewal pending.
                    if let Err(e) = self
                        .create_request(&spec, &csr.pem, &name, state.clone())
                        .await
                    {
                        self.tracker.forget(&namespace, &name);
                        return Err(e);
                    }
                    tracing::debug!(volume_id, request = %format!("{namespace}/{name}"), "renewal requested");
                    (spec, dir, key, namespace, name, sub)
                }
            }
        };

        let outcome = issuance::wait_for_decision(&mut sub).await;
        self.tracker.forget(&namespace, &name);
        self.request_decided(&namespace, &name, &outcome);
        let issued = outcome?;
        let received = SystemTime::now();
        let leaf = pki::check_issued(issued.chain_pem.as_bytes(), key.public_key_der(), received)
            .map_err(|e| PublishError::Issued(e.to_string()))?;
        let next = {
            let _guard = self.locks.lock(volume_id).await;
            if cancel.is_cancelled() {
                return Ok(Renewal::Gone);
            }
            // Built under the lock, so a trust bundle update that ran
            // meanwhile is not overwritten with the bundle before it.
            let issued = self.with_bundle_ca(issued)?;
            let files = build_files(&spec, &key, &issued)?;
            let Some(mut state) = self.current_state(volume_id).await? else {
                return Ok(Renewal::Gone);
            };
            if state.request.as_ref().map(|r| r.name.as_str()) != Some(name.as_str()) {
                // A publish replaced this volume's request meanwhile.
                return Ok(Renewal::Gone);
            }
            state.request = Some(RequestRef {
                namespace: namespace.clone(),
                name: name.clone(),
                phase: RequestPhase::Issued,
            });
            let plan = self.plan_renewal(&spec, &leaf, received, state.short_certificates);
            state.not_before = Some(to_timestamp(leaf.not_before));
            state.not_after = Some(to_timestamp(leaf.not_after));
            state.next_renewal = Some(to_timestamp(plan.at));
            state.received_at = Some(to_timestamp(received));
            state.short_certificates = plan.short_streak;
            state.renewal_attempts = 0;
            let store = self.store.clone();
            let gid = spec.fs_group;
            blocking(move || {
                dir.publish(&files, gid)?;
                store.save_state(&state)?;
                dir.clear_pending_key()
            })
            .await?;
            plan.at
        };
        drop(permit);
        self.metrics
            .observe_issuance(IssuanceKind::Renewal, started.elapsed());
        self.metrics.volume_published(
            &VolumeRef {
                volume_id,
                pod_namespace: &spec.pod.namespace,
                pod_name: &spec.pod.name,
            },
            to_timestamp(leaf.not_after),
            to_timestamp(next),
        );
        tracing::info!(
            volume_id,
            request = %format!("{namespace}/{name}"),
            serial = %leaf.serial_hex,
            not_after = %to_timestamp(leaf.not_after),
            next_renewal = %to_timestamp(next),
            "{RENEWED}"
        );
        if let Err(error) = self.prune_requests(&namespace, volume_id, &name).await {
            tracing::warn!(volume_id, %error, "could not delete old CertificateRequests");
        }
        Ok(Renewal::Done { next })
    }

    /// Records a failed attempt and schedules the retry. The certificate
    /// being served stays. A request that was decided against (denied,
    /// failed, unusable) or deleted is removed, so the retry makes a new
    /// one; a request that is merely undecided never reaches here.
    async fn renewal_failed(
        &self,
        volume_id: &str,
        error: PublishError,
        cancel: &CancellationToken,
    ) {
        let decided_against = matches!(
            &error,
            PublishError::Issuance(
                IssuanceError::Denied { .. }
                    | IssuanceError::Failed { .. }
                    | IssuanceError::Vanished { .. }
                    | IssuanceError::BadCertificate { .. }
            ) | PublishError::Issued(_)
        );
        let _guard = self.locks.lock(volume_id).await;
        if cancel.is_cancelled() || self.shutdown.is_cancelled() {
            return;
        }
        let mut state = match self.current_state(volume_id).await {
            Ok(Some(state)) => state,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(volume_id, error = %e, original = %error, "{RENEWAL_FAILED}");
                self.scheduler
                    .schedule(volume_id, SystemTime::now() + self.config.retry.max);
                return;
            }
        };
        if decided_against
            && let Some(request) = state.request.take_if(|r| r.phase == RequestPhase::Pending)
        {
            if let Err(e) =
                issuance::delete_one(&self.client, &request.namespace, &request.name).await
            {
                tracing::warn!(volume_id, error = %e, "could not delete the failed renewal request");
            }
            let store = self.store.clone();
            let id = volume_id.to_string();
            let _ = blocking(move || match store.existing(&id)? {
                Some(dir) => dir.clear_pending_key(),
                None => Ok(()),
            })
            .await;
        }
        if let Some(reason) = error.metric_reason() {
            self.metrics.renewal_failed(reason);
        }
        self.renewal_event(&state, &error);
        state.renewal_attempts = state.renewal_attempts.saturating_add(1);
        let attempt = state.renewal_attempts;
        let delay = schedule::backoff(
            attempt,
            self.config.retry.base,
            self.config.retry.max,
            rand::random::<f64>(),
        );
        let at = SystemTime::now() + delay;
        state.next_renewal = Some(to_timestamp(at));
        let not_after = state.not_after;
        let store = self.store.clone();
        if let Err(e) = blocking(move || store.save_state(&state)).await {
            tracing::warn!(volume_id, error = %e, "could not record the failed renewal attempt");
        }
        self.scheduler.schedule(volume_id, at);
        tracing::warn!(
            volume_id,
            attempt,
            retry_in = ?delay,
            not_after = ?not_after,
            %error,
            "{RENEWAL_FAILED}"
        );
    }

    /// A `RenewalFailed` Event on the volume's pod. The note holds no
    /// request name or attempt number, so a failing loop stays one series.
    fn renewal_event(&self, state: &VolumeState, error: &PublishError) {
        let field = |key: &str| state.context.get(key).cloned().unwrap_or_default();
        let pod = volume::PodInfo {
            name: field(kubelet::POD_NAME),
            namespace: field(kubelet::POD_NAMESPACE),
            uid: field(kubelet::POD_UID),
            service_account: field(kubelet::SERVICE_ACCOUNT_NAME),
        };
        if pod.name.is_empty() || pod.namespace.is_empty() {
            return;
        }
        let volume = state
            .target_path
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| state.volume_id.clone());
        let cause = match error.issuance_event(&volume) {
            Some((_, note)) => note,
            None => match error.metric_reason() {
                Some(IssueErrorReason::Api) => {
                    "the Kubernetes API refused a call (the node plugin's log has the details)"
                        .to_owned()
                }
                Some(IssueErrorReason::Timeout) => {
                    "the node's issuance limit held the renewal back".to_owned()
                }
                _ => "a local error on the node (the node plugin's log has the details)".to_owned(),
            },
        };
        let until = state
            .not_after
            .map(|t| t.to_string())
            .unwrap_or_else(|| "its notAfter".to_owned());
        self.pod_event(
            &pod,
            EventType::Warning,
            EVENT_RENEWAL_FAILED,
            "Renew",
            format!(
                "renewing the certificate in volume {volume} failed: {cause}. The pod keeps the current certificate (valid until {until}); the renewal is retried with backoff"
            ),
        );
    }

    async fn existing_dir(&self, volume_id: &str) -> Result<VolumeDir, PublishError> {
        let store = self.store.clone();
        let id = volume_id.to_string();
        let root = self.store.root().to_path_buf();
        blocking(move || {
            store.existing(&id)?.ok_or_else(|| StoreError::Conflict {
                op: "renew",
                path: root.join("volumes").join(&id),
                reason: "the volume's tmpfs is not mounted, so the files cannot be renewed in place; the kubelet's next publish sets the volume up again".into(),
            })
        })
        .await
    }

    /// The volume's spec rebuilt from node state, plus the secrets that
    /// state never holds: the keystore password from the volume's tmpfs and
    /// the tokens from memory.
    pub(super) async fn spec_from_state(
        &self,
        state: &VolumeState,
        dir: &VolumeDir,
    ) -> Result<VolumeSpec, PublishError> {
        let mut context: HashMap<String, String> = state
            .context
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if context.contains_key(keys::PKCS12_ENABLE) {
            let dir = dir.clone();
            let password = blocking(move || dir.read_private(PKCS12_PASSWORD_FILE)).await?;
            if let Some(password) = password.as_ref().and_then(|p| p.expose_str()) {
                context.insert(keys::PKCS12_PASSWORD.to_string(), password.to_string());
            }
        }
        if let Some(tokens) = self
            .tokens
            .lock()
            .expect("tokens lock")
            .get(&state.volume_id)
        {
            context.insert(
                kubelet::SERVICE_ACCOUNT_TOKENS.to_string(),
                tokens.expose().to_string(),
            );
        }
        let target = state.target_path.to_string_lossy().into_owned();
        let input = PublishInput {
            volume_id: &state.volume_id,
            target_path: &target,
            readonly: true,
            volume_mount_group: state.volume_mount_group.as_deref(),
            context: &context,
        };
        self.parse_spec(&input)
    }
}

/// The key the pod has now, read back from the volume's tmpfs, for
/// `reuse-private-key`.
async fn current_key(dir: &VolumeDir, spec: &VolumeSpec) -> Result<PrivateKey, PublishError> {
    let path: PathBuf = dir.pod_path().join(DATA_LINK).join(&spec.private_key_file);
    let pem = blocking(move || {
        std::fs::read(&path)
            .map(crate::pki::Secret::new)
            .map_err(|e| StoreError::io("read the current private key", &path, e))
    })
    .await?;
    Ok(PrivateKey::from_pem(pem.expose())?)
}
