//! The trust bundle: one CA file content for every volume, written at
//! publish and rewritten in every published volume whenever the source
//! changes (see [`source`] for where it comes from and [`follow`] for how
//! it is watched).

mod follow;
mod source;

use std::sync::Arc;

pub use follow::TrustBundle;
pub use source::{ObjectKey, TrustError, TrustSource, validate_bundle};

use super::deliver::build_files;
use super::error::PublishError;
use super::service::VolumeManager;
use crate::issuance::Issued;
use crate::pki::PrivateKey;

impl VolumeManager {
    /// The trust bundle to write, if one is configured: an error while a
    /// configured bundle has not been loaded, so no volume goes out with
    /// a CA file the operator did not choose.
    pub(super) fn bundle_ca(&self) -> Result<Option<Arc<str>>, PublishError> {
        let Some(trust) = &self.trust else {
            return Ok(None);
        };
        match trust.current() {
            Some(bundle) => Ok(Some(bundle)),
            None => Err(PublishError::Internal(format!(
                "the trust bundle from {} has not been loaded yet (the node plugin's log says why); the kubelet retries the mount",
                trust.source()
            ))),
        }
    }

    /// Rewrites every volume's CA file whenever the bundle changes, and once
    /// at start (the bundle may have changed while the plugin was down).
    pub fn drive_trust_updates(self: &Arc<Self>) {
        let Some(trust) = &self.trust else { return };
        let mut rx = trust.subscribe();
        rx.mark_changed();
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = this.shutdown.cancelled() => return,
                    changed = rx.changed() => if changed.is_err() { return },
                }
                let Some(bundle) = rx.borrow_and_update().clone() else {
                    continue;
                };
                let started = std::time::Instant::now();
                let (updated, failed) = this.apply_trust_bundle(&bundle).await;
                tracing::info!(updated, failed, took = ?started.elapsed(), "trust bundle written to the volumes");
            }
        });
    }

    /// Writes `bundle` into every published volume whose CA file differs.
    /// Returns how many volumes were updated and how many failed.
    pub async fn apply_trust_bundle(&self, bundle: &Arc<str>) -> (usize, usize) {
        let ids = match self.volumes.volume_ids().await {
            Ok(ids) => ids,
            Err(error) => {
                tracing::error!(%error, "cannot list the volumes to update their trust bundle");
                return (0, 0);
            }
        };
        // A few at a time: each is a handful of small file operations, and
        // a node with thousands of volumes should not open them all at once.
        let mut results: Vec<Result<bool, PublishError>> = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(8) {
            let batch = chunk.iter().map(|id| self.update_volume_ca(id, bundle));
            results.extend(futures::future::join_all(batch).await);
        }
        let mut updated = 0;
        let mut failed = 0;
        for (id, result) in ids.iter().zip(&results) {
            match result {
                Ok(true) => updated += 1,
                Ok(false) => {}
                Err(error) => {
                    failed += 1;
                    tracing::warn!(volume_id = %id, %error, "could not write the new trust bundle");
                }
            }
        }
        (updated, failed)
    }

    /// Swaps in the files of one volume with the same certificate and key
    /// and the new CA. Volumes not yet issued are left alone: their publish
    /// writes the bundle current at that time.
    async fn update_volume_ca(
        &self,
        volume_id: &str,
        bundle: &Arc<str>,
    ) -> Result<bool, PublishError> {
        let _guard = self.locks.lock(volume_id).await;
        let Some(state) = self.volumes.current_state(volume_id).await? else {
            return Ok(false);
        };
        if state.not_after.is_none() {
            return Ok(false);
        }
        let Some(dir) = self.volumes.existing(volume_id).await? else {
            return Ok(false);
        };
        let spec = self.spec_from_state(&state, &dir).await?;
        let ca = self.volumes.read_published(&dir, &spec.ca_file).await?;
        if ca.expose() == bundle.as_bytes() {
            return Ok(false);
        }
        let chain = self
            .volumes
            .read_published(&dir, &spec.certificate_file)
            .await?;
        let key_pem = self
            .volumes
            .read_published(&dir, &spec.private_key_file)
            .await?;
        let key = PrivateKey::from_pem(key_pem.expose())?;
        let chain_pem = chain
            .expose_str()
            .ok_or_else(|| {
                PublishError::Internal(format!("{} is not text", spec.certificate_file))
            })?
            .to_string();
        let issued = Issued {
            chain_pem,
            ca_pem: bundle.to_string(),
        };
        let files = build_files(&spec, &key, &issued)?;
        self.volumes.swap_files(&dir, files, spec.fs_group).await?;
        tracing::debug!(volume_id, "trust bundle updated");
        Ok(true)
    }
}
