//! Switching a node from cert-manager's csi-driver to cert-csi in place:
//! the volumes csi-driver published and left mounted are taken over, so
//! their pods keep getting renewed certificates without a restart.
//!
//! With `--adopt-csi-driver-data-root`, recovery (before Probe reports
//! ready) reads csi-driver's volumes (`store::csi_driver`). A volume is
//! taken over when csi-driver issued its certificate, csi-driver's bind
//! mount of its data is still on top at the kubelet's target path (by
//! `/proc/self/mountinfo`, and by device and inode reached without a
//! symlink), and its attributes pass the same checks as a publish. Its
//! spec comes from the volume context csi-driver recorded, its renewal
//! time from the certificate in place (csi-driver's own next issuance time
//! is kept when it obeys cert-csi's renewal rules). It is then recorded in
//! node state like any other volume, so a restart recovers it instead of
//! adopting it again, and from there on it renews, rotates the trust
//! bundle and unpublishes through the same code as cert-csi's own volumes;
//! only its files stay where csi-driver put them (`store::VolumeDir`
//! knows the layout).
//!
//! A volume that cannot be taken over is left as it is, and the pod gets a
//! Warning Event saying why; its certificate is served until it expires.

use std::sync::Arc;
use std::time::SystemTime;

use super::deliver::{private_files, to_timestamp};
use super::driver::Driver;
use super::error::{PublishError, encoding_error};
use super::publish::volume_name;
use super::service::VolumeManager;
use crate::pki::{self, PrivateKey};
use crate::store::csi_driver::{CsiDriverRoot, Metadata};
use crate::store::{Adopted, VolumeState};
use crate::telemetry::EventType;
use crate::volume::{self, PodInfo, PublishInput, VolumeSpec, kubelet, short_quote};

/// Reason of the Event on a pod whose csi-driver volume was not taken over.
pub const EVENT_ADOPTION_REFUSED: &str = "AdoptionRefused";

/// What adoption did at start.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Adoption {
    /// Taken over: in node state and scheduled for renewal.
    pub adopted: usize,
    /// Already in node state, from an earlier start.
    pub known: usize,
    /// Not in use, so left to the kubelet: never issued (the kubelet's
    /// retry of the publish comes to cert-csi), or no longer mounted at its
    /// target.
    pub idle: usize,
    /// Refused (unsafe, unreadable, or attributes cert-csi does not
    /// accept); the pod keeps its certificate until it expires.
    pub refused: usize,
}

/// How one volume went.
enum Outcome {
    Adopted,
    Known,
    Idle(&'static str),
    Refused(String),
}

impl VolumeManager {
    /// Takes over csi-driver's live volumes below
    /// `--adopt-csi-driver-data-root`, if set. Runs in recovery, after
    /// cert-csi's own volumes were recovered, so those are known here.
    pub async fn adopt_csi_driver_volumes(self: &Arc<Self>) -> Adoption {
        let mut report = Adoption::default();
        let Some(configured) = self.config.adopt_csi_driver_data_root.clone() else {
            return report;
        };
        if matches!(self.driver, Driver::Spiffe(_)) {
            tracing::warn!(
                path = %configured.display(),
                "--adopt-csi-driver-data-root takes over csi.cert-manager.io volumes, and this plugin serves the SPIFFE driver; nothing adopted"
            );
            return report;
        }
        let found = match self.volumes.csi_driver_volumes(&configured).await {
            Ok(Some(found)) => found,
            Ok(None) => {
                tracing::info!(path = %configured.display(), "no csi-driver volumes to adopt");
                return report;
            }
            Err(error) => {
                tracing::error!(path = %configured.display(), %error, "cannot adopt csi-driver's volumes; their certificates are not renewed until their pods restart");
                return report;
            }
        };
        for (volume_id, metadata) in found.volumes {
            match self.adopt_one(&found.root, &volume_id, metadata).await {
                Outcome::Adopted => report.adopted += 1,
                Outcome::Known => report.known += 1,
                Outcome::Idle(why) => {
                    tracing::info!(%volume_id, "csi-driver volume not adopted: {why}");
                    report.idle += 1;
                }
                Outcome::Refused(why) => {
                    tracing::warn!(%volume_id, reason = %why, "csi-driver volume not adopted; its pod keeps its certificate until it expires");
                    report.refused += 1;
                }
            }
        }
        tracing::info!(
            path = %found.root.root().display(),
            adopted = report.adopted,
            known = report.known,
            idle = report.idle,
            refused = report.refused,
            "csi-driver volumes adopted"
        );
        report
    }

    async fn adopt_one(
        self: &Arc<Self>,
        root: &CsiDriverRoot,
        volume_id: &str,
        metadata: Result<Metadata, crate::store::StoreError>,
    ) -> Outcome {
        // A kubelet call for this volume waits until it is recorded.
        let _guard = self.locks.lock(volume_id).await;
        match self.volumes.current_state(volume_id).await {
            Ok(Some(_)) => return Outcome::Known,
            Ok(None) => {}
            Err(e) => return Outcome::Refused(format!("cert-csi's own state of it: {e}")),
        }
        let meta = match metadata {
            Ok(meta) => meta,
            Err(e) => return Outcome::Refused(e.to_string()),
        };
        if meta.volume_id != volume_id {
            return Outcome::Refused(format!(
                "its metadata.json names volume {}",
                short_quote(&meta.volume_id)
            ));
        }
        if meta.next_issuance_time.is_none() {
            return Outcome::Idle(
                "csi-driver never issued its certificate; the kubelet's retry of the publish comes to cert-csi",
            );
        }
        let spec = match self.adopted_spec(&meta) {
            Ok(spec) => spec,
            Err(error) => return self.refuse(&meta, error.to_string()),
        };
        match self
            .volumes
            .csi_driver_bound(root, volume_id, &spec.target_path)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                return Outcome::Idle(
                    "csi-driver's bind mount is not at its target (unpublished, or its pod is gone)",
                );
            }
            Err(e) => return Outcome::Refused(e.to_string()),
        }
        match self.take_over(root, &meta, &spec).await {
            Ok(()) => Outcome::Adopted,
            Err(error) => self.refuse(&meta, error.to_string()),
        }
    }

    /// The volume's spec from the attributes csi-driver recorded, checked
    /// as a publish checks them (except for the credentials and the trust
    /// bundle, which a renewal checks when it runs).
    fn adopted_spec(&self, meta: &Metadata) -> Result<VolumeSpec, PublishError> {
        volume::check_context_size(&meta.volume_context, &self.config.input)?;
        let input = PublishInput {
            volume_id: &meta.volume_id,
            target_path: &meta.target_path,
            readonly: true,
            volume_mount_group: Some(meta.volume_mount_group.as_str()).filter(|g| !g.is_empty()),
            context: &meta.volume_context,
        };
        let mut spec = self.driver.parse(&input, &self.config.node_id)?;
        spec.target_path = self
            .kubelet_root
            .check(&meta.target_path, Some(&spec.pod.uid))?;
        volume::check_san_count(&spec.sans, &self.config.input)?;
        pki::csr::subject_name(&spec.subject).map_err(encoding_error)?;
        pki::csr::san_general_names(&spec.sans).map_err(encoding_error)?;
        Ok(spec)
    }

    /// Records the volume in node state with the certificate it serves,
    /// keeps the secrets renewals need in csi-driver's tmpfs, and
    /// schedules the renewal.
    async fn take_over(
        &self,
        root: &CsiDriverRoot,
        meta: &Metadata,
        spec: &VolumeSpec,
    ) -> Result<(), PublishError> {
        let mut state = VolumeState::new(
            &spec.volume_id,
            &spec.target_path,
            volume::context_without_tokens(&meta.volume_context),
            volume::context_fingerprint(&meta.volume_context),
        );
        state.node_id = Some(self.config.node_id.clone());
        state.volume_mount_group = Some(meta.volume_mount_group.clone()).filter(|g| !g.is_empty());
        state.adopted = Some(Adopted {
            csi_driver_data_root: root.root().to_path_buf(),
            at: to_timestamp(SystemTime::now()),
        });
        let (dir, shown) = self.volumes.adopt(state.clone()).await?;
        if !shown {
            return Err(PublishError::Internal(format!(
                "{} does not show the volume's data directory when reached without following a symlink",
                spec.target_path.display()
            )));
        }
        let chain = self
            .volumes
            .read_published(&dir, &spec.certificate_file)
            .await?;
        let leaf = pki::parse_chain(chain.expose())
            .ok()
            .and_then(|chain| chain.into_iter().next())
            .ok_or_else(|| {
                PublishError::Issued(format!(
                    "{} in the volume holds no certificate",
                    short_quote(&spec.certificate_file)
                ))
            })?;
        if spec.reuse_private_key {
            // Renewals sign with the key the pod has; it must be there
            // and belong to the certificate.
            let pem = self
                .volumes
                .read_published(&dir, &spec.private_key_file)
                .await?;
            let key = PrivateKey::from_pem(pem.expose())?;
            if !pki::key_matches_certificate(&key, &leaf) {
                return Err(PublishError::Issued(format!(
                    "csi.cert-manager.io/reuse-private-key is set, but {} does not hold the key of {}",
                    short_quote(&spec.private_key_file),
                    short_quote(&spec.certificate_file)
                )));
            }
        }
        for (name, secret) in private_files(spec) {
            self.volumes.write_private(&dir, name, secret).await?;
        }
        state.not_before = Some(to_timestamp(leaf.not_before));
        state.not_after = Some(to_timestamp(leaf.not_after));
        state.next_renewal = meta.next_issuance_time;
        let at = self.recovered_renewal(&state);
        state.next_renewal = Some(to_timestamp(at));
        self.volumes.save_state(state.clone()).await?;
        self.scheduler.schedule(&spec.volume_id, at);
        self.adopt_metrics(&state);
        tracing::info!(
            volume_id = %spec.volume_id,
            pod = %format!("{}/{}", spec.pod.namespace, spec.pod.name),
            target = %spec.target_path.display(),
            serial = %leaf.serial_hex,
            not_after = %to_timestamp(leaf.not_after),
            next_renewal = %to_timestamp(at),
            "adopted a csi-driver volume"
        );
        Ok(())
    }

    /// A refusal, told to the pod.
    fn refuse(&self, meta: &Metadata, why: String) -> Outcome {
        let field = |key: &str| meta.volume_context.get(key).cloned().unwrap_or_default();
        let pod = PodInfo {
            name: field(kubelet::POD_NAME),
            namespace: field(kubelet::POD_NAMESPACE),
            uid: field(kubelet::POD_UID),
            service_account: field(kubelet::SERVICE_ACCOUNT_NAME),
        };
        if !pod.name.is_empty() && !pod.namespace.is_empty() {
            let volume = volume_name(std::path::Path::new(&meta.target_path), &meta.volume_id);
            self.pod_event(
                &pod,
                EventType::Warning,
                EVENT_ADOPTION_REFUSED,
                "Adopt",
                format!(
                    "cert-csi replaced csi-driver on this node but cannot take over volume {volume}: {why}. The pod keeps its current certificate until it expires; recreate the pod (with attributes cert-csi accepts) so the volume is published afresh"
                ),
            );
        }
        Outcome::Refused(why)
    }

    /// NodeUnpublishVolume of a volume cert-csi has no state for: when it
    /// is a csi-driver volume that was not adopted (refused, or never
    /// issued), it is unpublished as csi-driver would, so the kubelet can
    /// remove the target and the pod.
    pub(super) async fn unpublish_csi_driver_volume(
        &self,
        volume_id: &str,
        target: &std::path::Path,
    ) -> Result<(), crate::store::StoreError> {
        let Some(root) = &self.config.adopt_csi_driver_data_root else {
            return Ok(());
        };
        self.volumes
            .remove_csi_driver_volume(root, volume_id, target)
            .await
    }
}
