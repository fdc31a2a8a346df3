//! Recovery after a restart: every volume in node state is adopted again
//! before Probe reports ready, without an API call for volumes whose
//! certificate is still good.

use std::sync::Arc;
use std::time::SystemTime;

use super::deliver::to_timestamp;
use super::renew::{state_context, state_input};
use super::service::VolumeManager;
use super::unpublish::{pod_uid, request_namespace};
use super::volumes::Found;
use crate::issuance::Keep;
use crate::renewal::schedule;
use crate::store::{RequestPhase, StoreError, VolumeState};
use crate::telemetry::metrics::{ReadyCondition, RequestKey, VolumeRef};
use crate::volume::kubelet;

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
    /// cert-manager csi-driver's volumes taken over (with
    /// `--adopt-csi-driver-data-root`).
    pub adoption: super::adopt::Adoption,
}

/// What to do with one volume found in node state.
enum Verdict {
    Keep,
    AwaitingPublish,
    Gone,
}

/// Decides from what is left on disk. When unsure, the volume is kept: a
/// renewal reports what is wrong, and nothing a pod uses is removed.
fn verdict(state: &VolumeState, found: Found) -> Verdict {
    match found {
        // Mounted empty with --continue-on-not-ready: issued in the
        // background, so resumed like a pending renewal.
        Found::Tmpfs {
            at_target: Ok(true),
        } if state.deferred => Verdict::Keep,
        Found::Tmpfs { .. } if state.not_after.is_none() => Verdict::AwaitingPublish,
        Found::Tmpfs {
            at_target: Ok(true),
        } => Verdict::Keep,
        Found::Tmpfs {
            at_target: Ok(false),
        }
        | Found::NoTmpfs => Verdict::Gone,
        Found::Tmpfs {
            at_target: Err(error),
        } => {
            tracing::warn!(volume_id = %state.volume_id, %error, "cannot check the target mount; keeping the volume");
            Verdict::Keep
        }
        Found::Unknown(error) => {
            tracing::warn!(volume_id = %state.volume_id, %error, "cannot check the volume's tmpfs; keeping the volume");
            Verdict::Keep
        }
    }
}

impl VolumeManager {
    /// Re-adopts every volume in node state. Runs before Probe reports
    /// ready. Volumes with a valid certificate are only scheduled: no API
    /// call is made for them.
    pub async fn recover(self: &Arc<Self>) -> Result<Recovery, StoreError> {
        let _trim = self.trim.on_drop();
        let found = self.volumes.survey().await?;
        let mut report = Recovery::default();
        let now = SystemTime::now();
        let mut gone = Vec::new();
        for (mut state, found) in found {
            match verdict(&state, found) {
                Verdict::AwaitingPublish => report.awaiting_publish += 1,
                Verdict::Gone => gone.push(state),
                Verdict::Keep => {
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
                            if let Err(error) = self.volumes.save_state(state.clone()).await {
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
        // After cert-csi's own volumes, so those adopted by an earlier start
        // are recovered above and only counted as known here.
        report.adoption = self.adopt_csi_driver_volumes().await;
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
    pub(super) fn recovered_renewal(&self, state: &VolumeState) -> SystemTime {
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
        let context = state_context(state);
        let requested = self
            .driver
            .parse(&state_input(state, &context), &self.config.node_id)
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
    pub(super) fn adopt_metrics(&self, state: &VolumeState) {
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
        if let Err(error) = self
            .volumes
            .remove(&state.volume_id, &state.target_path)
            .await
        {
            tracing::error!(volume_id = %state.volume_id, %error, "could not remove a lost volume");
        }
        if let Some(namespace) = request_namespace(&state) {
            let this = self.clone();
            tokio::spawn(async move {
                if let Err(error) = this
                    .delete_requests(&namespace, &state.volume_id, pod_uid(&state), Keep::Nothing)
                    .await
                {
                    tracing::warn!(volume_id = %state.volume_id, %error, "could not delete a lost volume's CertificateRequests; the pod's ownerReference will collect them");
                }
            });
        }
    }
}
