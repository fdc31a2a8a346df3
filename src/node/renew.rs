//! Renewal in place.
//!
//! The scheduler hands a due volume id to [`VolumeManager::drive_renewals`],
//! which starts one task for that renewal only (none exists between
//! renewals). The task queues at the limiter, opens a request as a publish
//! does (a new key, or the current one with `reuse-private-key`), waits for
//! the decision on the shared tracker without a deadline, and swaps the
//! files atomically. The volume lock is held only around the short steps
//! that read or write the volume, never while waiting, so republish and
//! unpublish stay quick.
//!
//! A failed attempt keeps the current certificate, counts the attempt in
//! node state and retries after a jittered, doubling backoff.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use super::deliver::{PKCS12_PASSWORD_FILE, build_files, record_issued, to_timestamp};
use super::error::{EVENT_RENEWAL_FAILED, EVENT_RENEWAL_GUARDED, PublishError};
use super::publish::volume_name;
use super::request::KeySource;
use super::service::VolumeManager;
use crate::issuance;
use crate::pki::CertInfo;
use crate::renewal::limiter::Priority;
use crate::renewal::schedule;
use crate::shutdown::CancellationToken;
use crate::store::{RequestPhase, VolumeDir, VolumeState};
use crate::telemetry::EventType;
use crate::telemetry::metrics::{IssuanceKind, IssueErrorReason};
use crate::volume::{self, PublishInput, VolumeSpec, keys, kubelet};

/// Stable log message of a failed renewal attempt; the hook for metrics and
/// events (count these per volume and reason).
pub const RENEWAL_FAILED: &str =
    "certificate renewal failed; serving the current certificate and retrying after a backoff";
/// Stable log message of a completed renewal.
pub const RENEWED: &str = "certificate renewed";

/// How a renewal attempt ended, when it did not fail.
enum Renewal {
    Done {
        next: SystemTime,
    },
    /// Unpublished, or not a volume with a certificate: nothing to do.
    Gone,
}

impl VolumeManager {
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
        self: &Arc<Self>,
        volume_id: &str,
        cancel: &CancellationToken,
    ) -> Result<Renewal, PublishError> {
        // A first look decides the kind of slot: resuming a request that
        // exists takes no new-request token.
        let Some(state) = self.volumes.current_state(volume_id).await? else {
            return Ok(Renewal::Gone);
        };
        if state.deferred {
            return self.complete_deferred(volume_id, cancel).await;
        }
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

        let (spec, dir, mut open) = {
            let _guard = self.locks.lock(volume_id).await;
            if cancel.is_cancelled() {
                return Ok(Renewal::Gone);
            }
            let Some(state) = self.volumes.current_state(volume_id).await? else {
                return Ok(Renewal::Gone);
            };
            if state.not_after.is_none() {
                return Ok(Renewal::Gone);
            }
            let dir = self.volumes.require(volume_id).await?;
            let spec = self.spec_from_state(&state, &dir).await?;
            let pending = state
                .request
                .clone()
                .filter(|r| r.phase == RequestPhase::Pending);
            // The state keeps the validity of the certificate still served,
            // so a restart sees a published volume with a renewal pending.
            let open = self
                .open_request(
                    &spec,
                    &dir,
                    pending,
                    state,
                    KeySource::renewal(spec.reuse_private_key),
                )
                .await?;
            if open.resumed {
                tracing::info!(volume_id, request = %open.id(), "resuming a pending renewal");
            } else {
                tracing::debug!(volume_id, request = %open.id(), "renewal requested");
            }
            (spec, dir, open)
        };

        let outcome = issuance::wait_for_decision(&mut open.sub).await;
        let received = SystemTime::now();
        let (issued, leaf) = self.close_request(&open, outcome, received)?;
        let next = {
            let _guard = self.locks.lock(volume_id).await;
            if cancel.is_cancelled() {
                return Ok(Renewal::Gone);
            }
            // Built under the lock, so a trust bundle update that ran
            // meanwhile is not overwritten with the bundle before it.
            let issued = self.with_bundle_ca(issued)?;
            let files = build_files(&spec, &open.key, &issued)?;
            let Some(mut state) = self.volumes.current_state(volume_id).await? else {
                return Ok(Renewal::Gone);
            };
            if state.request.as_ref().map(|r| r.name.as_str()) != Some(open.name.as_str()) {
                // A publish replaced this volume's request meanwhile.
                return Ok(Renewal::Gone);
            }
            let plan = self.plan_renewal(&spec, &leaf, received, state.short_certificates);
            record_issued(
                &mut state,
                &open.namespace,
                &open.name,
                &leaf,
                received,
                &plan,
            );
            self.volumes.swap_files(&dir, files, spec.fs_group).await?;
            self.volumes.record_issued(&dir, state).await?;
            plan.at
        };
        drop(permit);
        self.count_issued(IssuanceKind::Renewal, started.elapsed(), &spec, &leaf, next);
        tracing::info!(
            volume_id,
            request = %open.id(),
            serial = %leaf.serial_hex,
            not_after = %to_timestamp(leaf.not_after),
            next_renewal = %to_timestamp(next),
            "{RENEWED}"
        );
        let keep = issuance::Keep::Newest {
            count: self.config.keep_requests,
            current: &open.name,
        };
        if let Err(error) = self
            .delete_requests(&open.namespace, volume_id, Some(&spec.pod.uid), keep)
            .await
        {
            tracing::warn!(volume_id, %error, "could not delete old CertificateRequests");
        }
        Ok(Renewal::Done { next })
    }

    /// A volume mounted before its certificate (`--continue-on-not-ready`):
    /// looks at the pod's readiness gates again and, once they pass, issues
    /// the first certificate as a publish does, into the mounted volume.
    /// Holds the volume's lock throughout, as a publish does.
    async fn complete_deferred(
        self: &Arc<Self>,
        volume_id: &str,
        cancel: &CancellationToken,
    ) -> Result<Renewal, PublishError> {
        let _guard = self.locks.lock(volume_id).await;
        if cancel.is_cancelled() {
            return Ok(Renewal::Gone);
        }
        let Some(mut state) = self.volumes.current_state(volume_id).await? else {
            return Ok(Renewal::Gone);
        };
        if !state.deferred {
            return Ok(Renewal::Gone);
        }
        let dir = self.volumes.require(volume_id).await?;
        let spec = self.spec_from_state(&state, &dir).await?;
        if let Some(reason) = self.unmet_gates(&spec).await {
            let reason: String = reason
                .chars()
                .take(crate::store::LAST_ERROR_CHARS)
                .collect();
            let next = SystemTime::now() + super::config::GATE_RETRY;
            if state.last_error.as_ref() != Some(&reason) {
                tracing::info!(volume_id, %reason, "readiness gates not passed yet");
                state.last_error = Some(reason);
                state.next_renewal = Some(to_timestamp(next));
                self.volumes.save_state(state).await?;
            }
            return Ok(Renewal::Done { next });
        }
        let request = super::publish::PublishRequest {
            volume_id: volume_id.to_owned(),
            target_path: state.target_path.display().to_string(),
            readonly: true,
            volume_mount_group: state.volume_mount_group.clone(),
            context: state.context.clone().into_iter().collect(),
        };
        let fingerprint = state.context_fingerprint.clone();
        self.issue(&spec, &request, &fingerprint, Some(state), true)
            .await?;
        tracing::info!(
            volume_id,
            "readiness gates passed; the volume has its certificate"
        );
        // issue() scheduled the first renewal.
        Ok(Renewal::Gone)
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
        let _guard = self.locks.lock(volume_id).await;
        if cancel.is_cancelled() || self.shutdown.is_cancelled() {
            return;
        }
        let mut state = match self.volumes.current_state(volume_id).await {
            Ok(Some(state)) => state,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(volume_id, error = %e, original = %error, "{RENEWAL_FAILED}");
                self.scheduler
                    .schedule(volume_id, SystemTime::now() + self.config.retry.max);
                return;
            }
        };
        if error.decided_against()
            && let Some(request) = state.request.take_if(|r| r.phase == RequestPhase::Pending)
        {
            if let Err(e) =
                issuance::delete_one(&self.client, &request.namespace, &request.name).await
            {
                tracing::warn!(volume_id, error = %e, "could not delete the failed renewal request");
            }
            let _ = self.volumes.clear_pending_key(volume_id).await;
        }
        if let Some(reason) = error.metric_reason() {
            self.metrics.renewal_failed(reason);
        }
        self.renewal_event(&state, &error);
        state.renewal_attempts = state.renewal_attempts.saturating_add(1);
        state.last_error = Some(
            error
                .to_string()
                .chars()
                .take(crate::store::LAST_ERROR_CHARS)
                .collect(),
        );
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
        if let Err(e) = self.volumes.save_state(state).await {
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
        let volume = volume_name(&state.target_path, &state.volume_id);
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
        let note = match state.not_after {
            Some(until) => format!(
                "renewing the certificate in volume {volume} failed: {cause}. The pod keeps the current certificate (valid until {until}); the renewal is retried with backoff"
            ),
            // Mounted before its first certificate (--continue-on-not-ready).
            None => format!(
                "issuing the first certificate for volume {volume} failed: {cause}. The volume stays mounted without files; issuance is retried with backoff"
            ),
        };
        self.pod_event(
            &pod,
            EventType::Warning,
            EVENT_RENEWAL_FAILED,
            "Renew",
            note,
        );
    }

    /// When to renew `leaf`, which arrived at `received`, after
    /// `short_streak` certificates in a row too short to renew normally
    /// (see [`schedule::plan`]). When the guard has to step in, the pod gets
    /// a Warning Event naming the issuer and the lifetimes, and the guard
    /// metric counts it.
    pub(super) fn plan_renewal(
        &self,
        spec: &VolumeSpec,
        leaf: &CertInfo,
        received: SystemTime,
        short_streak: u32,
    ) -> schedule::Plan {
        let issued = schedule::Issued {
            not_before: leaf.not_before,
            not_after: leaf.not_after,
            received,
        };
        let plan = schedule::plan(
            &issued,
            spec.renew_before,
            &self.config.renewal,
            short_streak,
            rand::random::<f64>(),
        );
        if plan.guarded() {
            self.metrics.renewal_guarded();
            let wait = plan.at.duration_since(received).unwrap_or_default();
            let note = guard_note(spec, &issued, self.config.renewal.min_interval);
            tracing::warn!(volume_id = %spec.volume_id, streak = plan.short_streak, ?wait, "{note}");
            self.pod_event(
                &spec.pod,
                EventType::Warning,
                EVENT_RENEWAL_GUARDED,
                "Renew",
                note,
            );
        }
        plan
    }

    /// The volume's spec rebuilt from node state, plus the secrets that
    /// state never holds: the keystore password from the volume's tmpfs and
    /// the tokens from memory.
    pub(super) async fn spec_from_state(
        &self,
        state: &VolumeState,
        dir: &VolumeDir,
    ) -> Result<VolumeSpec, PublishError> {
        let mut context = state_context(state);
        if context.contains_key(keys::PKCS12_ENABLE) {
            let password = self.volumes.read_private(dir, PKCS12_PASSWORD_FILE).await?;
            if let Some(password) = password.as_ref().and_then(|p| p.expose_str()) {
                context.insert(keys::PKCS12_PASSWORD.to_string(), password.to_string());
            }
        }
        if let Some(tokens) = self.tokens(&state.volume_id) {
            context.insert(
                kubelet::SERVICE_ACCOUNT_TOKENS.to_string(),
                tokens.expose().to_string(),
            );
        }
        Ok(self
            .driver
            .parse(&state_input(state, &context), &self.config.node_id)?)
    }
}

/// A saved volume's attributes, as the kubelet sent them minus the secrets.
pub(super) fn state_context(state: &VolumeState) -> HashMap<String, String> {
    state
        .context
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// A saved volume as the publish request it came from.
pub(super) fn state_input<'a>(
    state: &'a VolumeState,
    context: &'a HashMap<String, String>,
) -> PublishInput<'a> {
    PublishInput {
        volume_id: &state.volume_id,
        target_path: state.target_path.to_str().unwrap_or_default(),
        readonly: true,
        volume_mount_group: state.volume_mount_group.as_deref(),
        context,
    }
}

/// The note of a `RenewalGuarded` Event: which issuer, what was asked, what
/// was given. Whole seconds, and no random wait, so a repeating cause
/// stays one Event series.
fn guard_note(spec: &VolumeSpec, issued: &schedule::Issued, min_interval: Duration) -> String {
    let fmt = |d: Duration| crate::api::duration::format_go(Duration::from_secs(d.as_secs()));
    format!(
        "{} {} issued a certificate with {} of life left, for {} requested; \
         that is too short to renew at least {} after it arrived, so the \
         renewal waits at least that long, doubling while this repeats. \
         Check the issuer: a CA near its own expiry caps every certificate \
         it signs",
        spec.issuer.kind,
        spec.issuer.name,
        fmt(issued.lifetime()),
        fmt(spec.duration),
        fmt(min_interval),
    )
}
