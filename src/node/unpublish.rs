//! Unpublish: stop the volume's renewal, delete its requests, and take its
//! mount and files away, only at the target it was published at.

use std::path::Path;

use super::error::UnpublishError;
use super::service::VolumeManager;
use crate::issuance::Keep;
use crate::store::VolumeState;
use crate::volume::{self, kubelet};

impl VolumeManager {
    pub async fn unpublish(
        &self,
        volume_id: &str,
        target_path: &str,
    ) -> Result<(), UnpublishError> {
        let _trim = self.trim.on_drop();
        if volume_id.is_empty() {
            return Err(UnpublishError::MissingVolumeId);
        }
        if target_path.is_empty() {
            return Err(UnpublishError::MissingTargetPath);
        }
        crate::store::validate_volume_id(volume_id)?;
        volume::check_target_path(target_path).map_err(UnpublishError::BadTargetPath)?;
        let target = self.kubelet_root.check(target_path, None)?;
        // A known volume is unpublished only from the target it was
        // published at; nothing is stopped or touched otherwise.
        if let Ok(state) = self.volumes.load_state(volume_id).await {
            check_same_target(&state, &target)?;
        }
        // Stop the renewal first, then take the lock, so a renewal that is
        // about to record a failure sees the cancellation and writes nothing.
        self.stop_renewal(volume_id);
        self.forget_tokens(volume_id);
        let _guard = self.locks.lock(volume_id).await;
        let state = match self.volumes.load_state(volume_id).await {
            Ok(state) => Some(state),
            Err(e) if e.is_not_found() => None,
            Err(e) if e.is_invalid_argument() => return Err(e.into()),
            Err(e) => {
                tracing::warn!(volume_id, error = %e, "unreadable node state; removing the volume anyway");
                None
            }
        };
        if let Some(state) = &state {
            if let Some(namespace) = request_namespace(state)
                && let Err(error) = self
                    .delete_requests(&namespace, volume_id, pod_uid(state), Keep::Nothing)
                    .await
            {
                // Unpublish must not hang a pod's deletion on the API: the
                // pod's ownerReference collects the requests anyway.
                tracing::warn!(volume_id, %error, "could not delete CertificateRequests on unpublish");
            }
            check_same_target(state, &target)?;
        } else {
            self.unpublish_csi_driver_volume(volume_id, &target).await?;
        }
        self.volumes.remove(volume_id, &target).await?;
        self.metrics.volume_unpublished(volume_id);
        tracing::info!(volume_id, "volume unpublished");
        Ok(())
    }

    /// Cancels the volume's timer and any renewal running now.
    fn stop_renewal(&self, volume_id: &str) {
        self.scheduler.cancel(volume_id);
        if let Some(running) = self
            .renewals
            .lock()
            .expect("renewals lock")
            .remove(volume_id)
        {
            running.cancel();
        }
    }
}

fn check_same_target(state: &VolumeState, target: &Path) -> Result<(), UnpublishError> {
    if state.target_path != target {
        return Err(UnpublishError::OtherTarget {
            volume_id: state.volume_id.clone(),
        });
    }
    Ok(())
}

/// The namespace of the volume's requests: the pod's, as the kubelet gave
/// it, or the recorded request's.
/// The uid of the pod a volume belongs to, as the kubelet sent it.
pub(super) fn pod_uid(state: &VolumeState) -> Option<&str> {
    state.context.get(kubelet::POD_UID).map(String::as_str)
}

pub(super) fn request_namespace(state: &VolumeState) -> Option<String> {
    state
        .context
        .get(kubelet::POD_NAMESPACE)
        .cloned()
        .or_else(|| state.request.as_ref().map(|r| r.namespace.clone()))
}
