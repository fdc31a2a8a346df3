//! The deliver and record steps: the files a pod sees (certificate, key,
//! CA, keystores, the credential bundle), and what node state and the
//! metrics record once a certificate is in place.

use std::time::{Duration, SystemTime};

use super::error::PublishError;
use super::service::VolumeManager;
use crate::issuance::Issued;
use crate::pki::{self, CertInfo, KeyEncoding, PrivateKey, Secret};
use crate::renewal::schedule::Plan;
use crate::store::{RequestPhase, RequestRef, VolumeState};
use crate::telemetry::metrics::{IssuanceKind, VolumeRef};
use crate::volume::VolumeSpec;

/// The file in a volume's private tmpfs directory that keeps the PKCS#12
/// password for renewals (node state on disk never holds it).
pub(super) const PKCS12_PASSWORD_FILE: &str = "pkcs12-password";

/// A time as node state and the metrics write it.
pub(super) fn to_timestamp(time: SystemTime) -> jiff::Timestamp {
    jiff::Timestamp::try_from(time).unwrap_or(jiff::Timestamp::MAX)
}

/// The files a pod sees, in the names it asked for: `(name, contents, mode)`.
pub(super) fn build_files(
    spec: &VolumeSpec,
    key: &PrivateKey,
    issued: &Issued,
) -> Result<Vec<(String, Secret, u32)>, PublishError> {
    let mode = crate::store::default_file_mode(spec.fs_group);
    let mut files = vec![
        (
            spec.certificate_file.clone(),
            Secret::new(issued.chain_pem.as_bytes().to_vec()),
            mode,
        ),
        (
            spec.private_key_file.clone(),
            key.to_pem(spec.key.encoding)?,
            mode,
        ),
        (
            spec.ca_file.clone(),
            Secret::new(issued.ca_pem.as_bytes().to_vec()),
            mode,
        ),
    ];
    if let Some(p12) = &spec.pkcs12 {
        // As csi-driver's pkg/keystore/pkcs12: LegacyRC2, and the chain
        // alone (its CA certificates after the leaf; ca.crt is not added).
        let bytes = pki::keystore::pkcs12(
            key,
            issued.chain_pem.as_bytes(),
            None,
            p12.password.expose(),
            pki::keystore::Pkcs12Profile::LegacyRc2,
        )
        .map_err(|e| PublishError::Internal(format!("building the PKCS#12 keystore: {e}")))?;
        files.push((p12.filename.clone(), Secret::new(bytes), mode));
    }
    if let Some(name) = &spec.credential_bundle_file {
        files.push((
            name.clone(),
            credential_bundle(key, &issued.chain_pem)?,
            mode,
        ));
    }
    Ok(files)
}

/// The single-file credential bundle: the PKCS#8 key, then the chain, as
/// Kubernetes pod certificates write it. It is one of the files of the
/// atomic swap, so a reader never sees a key and a chain that disagree.
pub fn credential_bundle(key: &PrivateKey, chain_pem: &str) -> Result<Secret, PublishError> {
    let key_pem = key.to_pem(KeyEncoding::Pkcs8)?;
    let mut bytes = Vec::with_capacity(key_pem.len() + chain_pem.len() + 1);
    bytes.extend_from_slice(key_pem.expose());
    if !bytes.ends_with(b"\n") {
        bytes.push(b'\n');
    }
    bytes.extend_from_slice(chain_pem.as_bytes());
    Ok(Secret::new(bytes))
}

/// The private secrets a volume keeps in its tmpfs for later renewals.
pub(super) fn private_files(spec: &VolumeSpec) -> Vec<(&'static str, Secret)> {
    spec.pkcs12
        .iter()
        .map(|p| {
            (
                PKCS12_PASSWORD_FILE,
                Secret::new(p.password.expose().as_bytes().to_vec()),
            )
        })
        .collect()
}

/// Writes into `state` that request `namespace/name` was issued `leaf`,
/// received at `received`, and renews as `plan` says. One place for first
/// issuance and renewal, so a restart reads the same fields from both.
pub(super) fn record_issued(
    state: &mut VolumeState,
    namespace: &str,
    name: &str,
    leaf: &CertInfo,
    received: SystemTime,
    plan: &Plan,
) {
    state.request = Some(RequestRef {
        namespace: namespace.to_string(),
        name: name.to_string(),
        phase: RequestPhase::Issued,
    });
    state.not_before = Some(to_timestamp(leaf.not_before));
    state.not_after = Some(to_timestamp(leaf.not_after));
    state.next_renewal = Some(to_timestamp(plan.at));
    state.received_at = Some(to_timestamp(received));
    state.short_certificates = plan.short_streak;
    state.renewal_attempts = 0;
    state.last_error = None;
}

impl VolumeManager {
    /// `issued` with the trust bundle as its CA, when one is configured.
    pub(super) fn with_bundle_ca(&self, issued: Issued) -> Result<Issued, PublishError> {
        Ok(match self.bundle_ca()? {
            Some(bundle) => Issued {
                chain_pem: issued.chain_pem,
                ca_pem: bundle.to_string(),
            },
            None => issued,
        })
    }

    /// Counts an issuance that reached the pod, and sets the volume's
    /// expiry and renewal series.
    pub(super) fn count_issued(
        &self,
        kind: IssuanceKind,
        took: Duration,
        spec: &VolumeSpec,
        leaf: &CertInfo,
        next: SystemTime,
    ) {
        self.metrics.observe_issuance(kind, took);
        self.metrics.volume_published(
            &VolumeRef {
                volume_id: &spec.volume_id,
                pod_namespace: &spec.pod.namespace,
                pod_name: &spec.pod.name,
            },
            to_timestamp(leaf.not_after),
            to_timestamp(next),
        );
    }
}
