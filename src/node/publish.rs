//! Publish: one volume from the kubelet's request to files in the pod.
//!
//! The steps, in order, and nothing touches the node or the API before the
//! whole request has been validated:
//! validate → lock → (republish?) → acquire a slot → request (new or
//! resumed) → wait → deliver → record.
//!
//! A terminal failure leaves nothing behind (no mount, no state, no
//! request); a timeout keeps all three, so the kubelet's retry resumes the
//! same request with the same key.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use super::deliver::{build_files, private_files, record_issued};
use super::driver::Driver;
use super::error::{
    EVENT_ATTRIBUTE_WARNING, EVENT_SLOW, EVENT_UNKNOWN_ATTRIBUTE, PublishError, encoding_error,
};
use super::request::{KeySource, OpenRequest};
use super::service::VolumeManager;
use super::volumes::Delivery;
use crate::issuance::{self, IssuanceError, Issued};
use crate::pki;
use crate::renewal::limiter::{Permit, Priority};
use crate::store::{RequestPhase, VolumeState};
use crate::telemetry::EventType;
use crate::telemetry::metrics::IssuanceKind;
use crate::volume::{self, PublishInput, VolumeSpec};

/// A NodePublishVolume request, in the domain's terms.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    pub volume_id: String,
    pub target_path: String,
    pub readonly: bool,
    /// The group the kubelet wants the files readable by (CSI
    /// `volume_mount_group`), if any.
    pub volume_mount_group: Option<String>,
    pub context: HashMap<String, String>,
}

impl VolumeManager {
    pub async fn publish(self: &Arc<Self>, req: PublishRequest) -> Result<(), PublishError> {
        let _trim = self.trim.on_drop();
        let spec = self.validate(&req)?;
        let fingerprint = volume::context_fingerprint(&req.context);

        let _guard = self.locks.lock(&spec.volume_id).await;
        let state = self.volumes.current_state(&spec.volume_id).await?;
        // A volume id belongs to the one target its first publish named
        // (the kubelet derives both from the pod and the volume). Another
        // target would take over its key and request, or mount its files
        // twice; refuse before anything is touched, and keep the volume.
        if let Some(state) = &state
            && state.target_path != spec.target_path
        {
            return Err(PublishError::PublishedElsewhere {
                volume_id: spec.volume_id.clone(),
                existing: volume::short_quote(&state.target_path.display().to_string()),
            });
        }
        if let Some(state) = &state
            && self.already_published(state, &spec).await?
        {
            if state.context_fingerprint != fingerprint {
                return Err(PublishError::Incompatible {
                    volume_id: spec.volume_id.clone(),
                    existing: state.target_path.display().to_string(),
                });
            }
            // A republish (requiresRepublish): nothing to issue, but the
            // kubelet may have sent fresh tokens.
            self.remember_tokens(&spec);
            return Ok(());
        }
        // Before anything is created: the target is reached without a
        // symlink, and is absent, empty or this volume's own mount.
        self.volumes
            .check_target(&spec.volume_id, &spec.target_path)
            .await?;
        self.report_warnings(&spec);
        self.remember_tokens(&spec);
        if let Some(reason) = self.unmet_gates(&spec).await {
            // Only with --continue-on-not-ready: the flags refuse gates
            // without it, as csi-driver's do.
            let outcome = self
                .publish_deferred(&spec, &req, &fingerprint, reason)
                .await;
            if outcome.is_err() {
                self.discard(&spec).await;
            }
            return outcome;
        }
        let outcome = self.issue(&spec, &req, &fingerprint, state, false).await;
        if let Err(error) = &outcome {
            self.publish_failed(&spec, error);
            if !error.keeps_progress() {
                self.discard(&spec).await;
            }
        }
        outcome
    }

    /// The whole request checked, without side effects: attributes, the
    /// target path, and the subject and SANs encoded for real, so input that
    /// only the DER encoder rejects still fails with InvalidArgument, naming
    /// the attribute, before any key exists. Also fails when the request
    /// could not be made anyway (no pod token, trust bundle not loaded).
    fn validate(&self, req: &PublishRequest) -> Result<VolumeSpec, PublishError> {
        volume::check_context_size(&req.context, &self.config.input)?;
        if self.config.strict_attributes && matches!(self.driver, Driver::CertManager { .. }) {
            volume::check_unknown_attributes(&req.context)?;
        }
        let input = PublishInput {
            volume_id: &req.volume_id,
            target_path: &req.target_path,
            readonly: req.readonly,
            volume_mount_group: req.volume_mount_group.as_deref(),
            context: &req.context,
        };
        let mut spec = self.driver.parse(&input, &self.config.node_id)?;
        // Only the kubelet's own mount directory of this pod's volume, and
        // from here on in its resolved form, which the state records.
        spec.target_path = self
            .kubelet_root
            .check(&req.target_path, Some(&spec.pod.uid))?;
        for warning in &spec.warnings {
            // Accepted for compatibility but worth fixing (e.g. subject
            // attributes that literal-subject overrides).
            tracing::warn!(volume_id = %spec.volume_id, %warning, "volume attribute accepted with a warning");
        }
        volume::check_san_count(&spec.sans, &self.config.input)?;
        pki::csr::subject_name(&spec.subject).map_err(encoding_error)?;
        pki::csr::san_general_names(&spec.sans).map_err(encoding_error)?;
        self.driver.check_credentials(&spec)?;
        self.bundle_ca()?;
        Ok(spec)
    }

    /// Whether the volume already serves a certificate at this target. A
    /// volume with a certificate is published even while a renewal is
    /// pending: the pod keeps being served the current certificate.
    async fn already_published(
        &self,
        state: &VolumeState,
        spec: &VolumeSpec,
    ) -> Result<bool, PublishError> {
        let issued = state.not_after.is_some()
            || state.deferred
            || matches!(&state.request, Some(r) if r.phase == RequestPhase::Issued);
        if !issued || state.target_path != spec.target_path {
            return Ok(false);
        }
        Ok(self
            .volumes
            .is_mounted_at(&spec.volume_id, &spec.target_path)
            .await?)
    }

    /// `None` when the volume may be requested now: no
    /// `--pod-readiness-gate`s, or the pod passes them all. Otherwise why
    /// not (a pod that cannot be read does not pass, as in csi-driver).
    pub(super) async fn unmet_gates(&self, spec: &VolumeSpec) -> Option<String> {
        let gates = &self.config.readiness_gates;
        if gates.is_empty() {
            return None;
        }
        let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
            kube::Api::namespaced(self.client.clone(), &spec.pod.namespace);
        match pods.get(&spec.pod.name).await {
            Ok(pod) => super::readiness_gate::unmet(gates, &pod),
            Err(error) => Some(format!(
                "reading pod {}/{} failed: {error}",
                spec.pod.namespace, spec.pod.name
            )),
        }
    }

    /// `--continue-on-not-ready`: the volume is mounted empty now, and its
    /// first certificate is issued in the background once the gates pass
    /// (see `renew::complete_deferred`).
    async fn publish_deferred(
        &self,
        spec: &VolumeSpec,
        req: &PublishRequest,
        fingerprint: &str,
        reason: String,
    ) -> Result<(), PublishError> {
        let dir = self.volumes.prepare(&spec.volume_id).await?;
        let mut state = self.fresh_state(spec, req, fingerprint);
        state.node_id = Some(self.config.node_id.clone());
        state.deferred = true;
        state.last_error = Some(
            reason
                .chars()
                .take(crate::store::LAST_ERROR_CHARS)
                .collect(),
        );
        let at = SystemTime::now() + super::config::GATE_RETRY;
        state.next_renewal = Some(super::deliver::to_timestamp(at));
        self.volumes
            .deliver(
                &dir,
                Delivery {
                    private: private_files(spec),
                    files: Vec::new(),
                    gid: spec.fs_group,
                    target: &spec.target_path,
                },
                state,
            )
            .await?;
        self.scheduler.schedule(&spec.volume_id, at);
        tracing::info!(
            volume_id = %spec.volume_id,
            %reason,
            "volume mounted before its certificate (--continue-on-not-ready); issuing once the pod passes its readiness gates"
        );
        Ok(())
    }

    /// The steps after validation: a slot, the request, the wait, the files
    /// and the mount, and the record. `deferred` marks a volume already
    /// mounted empty; its record says so until the certificate is in.
    pub(super) async fn issue(
        self: &Arc<Self>,
        spec: &VolumeSpec,
        req: &PublishRequest,
        fingerprint: &str,
        previous: Option<VolumeState>,
        deferred: bool,
    ) -> Result<(), PublishError> {
        let started = tokio::time::Instant::now();
        let deadline = started + self.config.publish_timeout;
        // Resume a pending request when its key survived in the tmpfs;
        // otherwise start over with a fresh key.
        let pending = previous
            .and_then(|s| s.request)
            .filter(|r| r.phase == RequestPhase::Pending);
        let permit = self.acquire(pending.is_none(), started, deadline).await?;
        let dir = self.volumes.prepare(&spec.volume_id).await?;
        let mut fresh = self.fresh_state(spec, req, fingerprint);
        fresh.deferred = deferred;
        let mut open = self
            .open_request(spec, &dir, pending, fresh, KeySource::Pooled)
            .await?;
        let outcome = self.wait(spec, &mut open, started, deadline).await;
        drop(permit);
        let received = SystemTime::now();
        let (issued, leaf) = self.close_request(&open, outcome, received)?;

        let issued = self.with_bundle_ca(issued)?;
        let files = build_files(spec, &open.key, &issued)?;
        let plan = self.plan_renewal(spec, &leaf, received, 0);
        let mut state = self.fresh_state(spec, req, fingerprint);
        state.node_id = Some(self.config.node_id.clone());
        record_issued(
            &mut state,
            &open.namespace,
            &open.name,
            &leaf,
            received,
            &plan,
        );
        // Files, mount, then the record, in that order and in one trip to
        // the blocking pool: a state that says "issued" always describes a
        // mounted volume.
        self.volumes
            .deliver(
                &dir,
                Delivery {
                    private: private_files(spec),
                    files,
                    gid: spec.fs_group,
                    target: &spec.target_path,
                },
                state,
            )
            .await?;
        self.scheduler.schedule(&spec.volume_id, plan.at);
        self.count_issued(IssuanceKind::First, started.elapsed(), spec, &leaf, plan.at);
        self.prune_in_background(spec, &open);
        tracing::info!(volume_id = %spec.volume_id, request = %open.id(), "volume published");
        Ok(())
    }

    /// A slot at the limiter before the deadline. A pod waiting here goes
    /// before every renewal; resuming a request that exists takes a slot
    /// but no new-request token.
    async fn acquire(
        &self,
        new_request: bool,
        started: tokio::time::Instant,
        deadline: tokio::time::Instant,
    ) -> Result<Permit, PublishError> {
        match tokio::time::timeout_at(
            deadline,
            self.limiter.acquire(Priority::Publish, new_request),
        )
        .await
        {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(PublishError::ShuttingDown),
            Err(_) => Err(PublishError::Throttled {
                waited: started.elapsed(),
            }),
        }
    }

    /// Waits for the decision until the deadline; after `--slow-issuance`
    /// the pod is told while it still waits.
    async fn wait(
        &self,
        spec: &VolumeSpec,
        open: &mut OpenRequest,
        started: tokio::time::Instant,
        deadline: tokio::time::Instant,
    ) -> Result<Issued, IssuanceError> {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let wait = issuance::wait(&mut open.sub, remaining);
        tokio::pin!(wait);
        let slow = tokio::time::sleep_until(started + self.config.slow_issuance);
        tokio::pin!(slow);
        tokio::select! {
            outcome = &mut wait => outcome,
            () = &mut slow => {
                self.pod_event(&spec.pod, EventType::Warning, EVENT_SLOW, "Issue", self.slow_note(spec));
                wait.await
            }
        }
    }

    /// The state of a volume before its first certificate.
    fn fresh_state(
        &self,
        spec: &VolumeSpec,
        req: &PublishRequest,
        fingerprint: &str,
    ) -> VolumeState {
        let mut state = VolumeState::new(
            &spec.volume_id,
            &spec.target_path,
            volume::context_without_tokens(&req.context),
            fingerprint,
        );
        state.volume_mount_group = req.volume_mount_group.clone();
        state
    }

    /// Request hygiene: keep the newest `keep_requests`, delete the rest.
    /// It runs after the reply: on a first publish the list almost always
    /// finds only the new request, and waiting for it cost the pod one more
    /// API round trip (hack/bench P1). A failure is not the pod's problem
    /// either; the pod's ownerReference collects leftovers.
    fn prune_in_background(self: &Arc<Self>, spec: &VolumeSpec, open: &OpenRequest) {
        let this = self.clone();
        let volume_id = spec.volume_id.clone();
        let pod_uid = spec.pod.uid.clone();
        let (namespace, name) = (open.namespace.clone(), open.name.clone());
        tokio::spawn(async move {
            let keep = issuance::Keep::Newest {
                count: this.config.keep_requests,
                current: &name,
            };
            if let Err(error) = this
                .delete_requests(&namespace, &volume_id, Some(&pod_uid), keep)
                .await
            {
                tracing::warn!(%volume_id, %error, "could not delete old CertificateRequests");
            }
        });
    }

    /// Tells the pod about each attribute accepted with a warning, once per
    /// first publish (a republish does not repeat it), and counts the
    /// unknown ones: a misspelt attribute no longer fails the mount, so
    /// this is where it shows.
    fn report_warnings(&self, spec: &VolumeSpec) {
        let volume = volume_name(&spec.target_path, &spec.volume_id);
        for warning in &spec.warnings {
            let unknown = spec.unknown_attributes.contains(&warning.attribute);
            if unknown {
                self.metrics.unknown_attribute();
                tracing::warn!(
                    volume_id = %spec.volume_id,
                    attribute = %warning.attribute,
                    nearest = volume::nearest_attribute(&warning.attribute).as_deref().unwrap_or(""),
                    "unknown volume attribute"
                );
            }
            let reason = if unknown {
                EVENT_UNKNOWN_ATTRIBUTE
            } else {
                EVENT_ATTRIBUTE_WARNING
            };
            let note = format!("volume {volume}: {warning}");
            self.pod_event(&spec.pod, EventType::Warning, reason, "Publish", note);
        }
    }

    /// Counts a failed first issuance and tells the pod why, when the
    /// cause is the issuance itself (denied, failed, slow).
    fn publish_failed(&self, spec: &VolumeSpec, error: &PublishError) {
        if let Some(reason) = error.metric_reason() {
            self.metrics.request_failed(reason);
        }
        let event = match error {
            // A timeout is the slow case that outlived the publish deadline:
            // same reason and note as the timer's Event, so one series.
            PublishError::Issuance(IssuanceError::Timeout { .. }) => {
                Some((EVENT_SLOW, self.slow_note(spec)))
            }
            other => other.issuance_event(&volume_name(&spec.target_path, &spec.volume_id)),
        };
        if let Some((reason, note)) = event {
            self.pod_event(&spec.pod, EventType::Warning, reason, "Issue", note);
        }
    }

    /// The note of an `IssuanceSlow` Event. It carries no time that grows
    /// between attempts, so retries of one publish stay one series.
    fn slow_note(&self, spec: &VolumeSpec) -> String {
        format!(
            "no decision on the certificate request for volume {} after {:?}; waiting for the approver and issuer {} {}/{}. The request is kept and the kubelet's retries resume it",
            volume_name(&spec.target_path, &spec.volume_id),
            self.config.slow_issuance,
            spec.issuer.kind,
            spec.pod.namespace,
            spec.issuer.name,
        )
    }

    /// Removes every trace of a volume whose publish failed for good.
    async fn discard(&self, spec: &VolumeSpec) {
        if let Err(error) = self
            .delete_requests(
                &spec.pod.namespace,
                &spec.volume_id,
                Some(&spec.pod.uid),
                issuance::Keep::Nothing,
            )
            .await
        {
            tracing::warn!(volume_id = %spec.volume_id, %error, "could not delete the volume's CertificateRequests; the pod's ownerReference will collect them");
        }
        if let Err(error) = self
            .volumes
            .remove(&spec.volume_id, &spec.target_path)
            .await
        {
            tracing::error!(volume_id = %spec.volume_id, %error, "could not clean up after a failed publish");
        }
    }
}

/// The pod's name for a volume: the directory above `mount` in the
/// kubelet's target path (`…/volumes/kubernetes.io~csi/<name>/mount`).
pub(super) fn volume_name(target: &std::path::Path, volume_id: &str) -> String {
    target
        .parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| volume_id.to_string())
}
