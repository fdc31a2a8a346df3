//! Node state of one volume: what a restarted node plugin needs to resume
//! without issuing twice. It lives on persistent disk, so it never holds key
//! material or tokens.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::StoreError;

/// The state format this build writes and the newest it reads.
pub const STATE_VERSION: u32 = 1;

/// Volume attribute keys whose values are credentials. The kubelet passes
/// the service account token here when the driver asks for one.
const SECRET_CONTEXT_KEYS: &[&str] = &["csi.storage.k8s.io/serviceAccount.tokens"];

/// The longest [`VolumeState::last_error`] kept.
pub const LAST_ERROR_CHARS: usize = 300;

/// Persistent facts about one published volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeState {
    /// Format version, for migrations; [`STATE_VERSION`] when written.
    pub version: u32,
    pub volume_id: String,
    pub target_path: PathBuf,
    /// The volume context as the kubelet sent it, minus credentials.
    pub context: BTreeMap<String, String>,
    /// A digest of `context`, so a republish with changed attributes is noticed.
    pub context_fingerprint: String,
    #[serde(default)]
    pub node_id: Option<String>,
    /// The CertificateRequest that is pending or was last issued.
    #[serde(default)]
    pub request: Option<RequestRef>,
    /// Validity of the certificate currently published, if any.
    #[serde(default)]
    pub not_before: Option<Timestamp>,
    #[serde(default)]
    pub not_after: Option<Timestamp>,
    /// When the renewal scheduler should act next.
    #[serde(default)]
    pub next_renewal: Option<Timestamp>,
    /// When the current certificate arrived; its usable lifetime counts
    /// from here, not from the issuer's backdated notBefore. Absent in
    /// states written before it was recorded (notBefore is used then).
    #[serde(default)]
    pub received_at: Option<Timestamp>,
    /// Certificates in a row too short to renew normally (see
    /// `renewal::schedule::plan`); the renewal guard's back-off doubles
    /// with each, and a normal certificate resets it.
    #[serde(default)]
    pub short_certificates: u32,
    /// Consecutive failed renewal attempts; 0 after a success.
    #[serde(default)]
    pub renewal_attempts: u32,
    /// Why the last renewal attempt failed (at most [`LAST_ERROR_CHARS`]
    /// characters, never key material); cleared by a success. For
    /// `cert-csi status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// `volume_mount_group` of the publish (the pod's fsGroup as the kubelet
    /// passed it), so a renewal after a restart writes files with the group
    /// the pod was given.
    #[serde(default)]
    pub volume_mount_group: Option<String>,
    /// Mounted before its first certificate (`--continue-on-not-ready`,
    /// the pod's readiness gates not passing yet): the certificate is
    /// issued in the background and its files appear in place.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deferred: bool,
    /// Set when the volume was published by cert-manager's csi-driver and
    /// taken over in place: its files live in csi-driver's tmpfs, not in a
    /// tmpfs of cert-csi's (see `store::csi_driver`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopted: Option<Adopted>,
}

/// Where an adopted volume lives, and since when cert-csi serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adopted {
    /// csi-driver's `--data-root` as found on this node (resolved); the
    /// volume is `<root>/inmemfs/<volume id>`.
    pub csi_driver_data_root: PathBuf,
    pub at: Timestamp,
}

/// Names one CertificateRequest and where it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRef {
    pub namespace: String,
    pub name: String,
    pub phase: RequestPhase,
}

/// Whether the referenced request still awaits its certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestPhase {
    /// Created; its private key waits in the volume's tmpfs.
    Pending,
    /// Its certificate is the one published.
    Issued,
}

impl VolumeState {
    /// A state at the current version with nothing requested yet.
    pub fn new(
        volume_id: impl Into<String>,
        target_path: impl Into<PathBuf>,
        context: BTreeMap<String, String>,
        context_fingerprint: impl Into<String>,
    ) -> Self {
        VolumeState {
            version: STATE_VERSION,
            volume_id: volume_id.into(),
            target_path: target_path.into(),
            context,
            context_fingerprint: context_fingerprint.into(),
            node_id: None,
            request: None,
            not_before: None,
            not_after: None,
            next_renewal: None,
            received_at: None,
            short_certificates: 0,
            renewal_attempts: 0,
            last_error: None,
            deferred: false,
            volume_mount_group: None,
            adopted: None,
        }
    }

    /// Refuses a state that must not be written to `path`.
    pub(crate) fn check_before_save(&self, path: &Path) -> Result<(), StoreError> {
        if let Some(key) = self
            .context
            .keys()
            .find(|k| SECRET_CONTEXT_KEYS.contains(&k.as_str()))
        {
            return Err(StoreError::SecretInState {
                volume_id: self.volume_id.clone(),
                key: key.clone(),
            });
        }
        if let (Some(nb), Some(na)) = (self.not_before, self.not_after)
            && na < nb
        {
            return Err(StoreError::InvalidState {
                path: path.to_owned(),
                field: "not_after",
                reason: format!("({na}) is before not_before ({nb})"),
            });
        }
        Ok(())
    }

    /// Decodes a state file's bytes, checking the version (the state-file
    /// reader; also the entry of the `state_file` fuzz target).
    pub fn decode(path: &Path, bytes: &[u8]) -> Result<Self, StoreError> {
        // Read the version alone first so a newer format gets a version
        // error instead of a confusing field error.
        #[derive(Deserialize)]
        struct Versioned {
            version: u32,
        }
        let versioned: Versioned =
            serde_json::from_slice(bytes).map_err(|source| StoreError::CorruptState {
                path: path.to_owned(),
                source,
            })?;
        if versioned.version > STATE_VERSION {
            return Err(StoreError::UnsupportedStateVersion {
                path: path.to_owned(),
                found: versioned.version,
                supported: STATE_VERSION,
            });
        }
        serde_json::from_slice(bytes).map_err(|source| StoreError::CorruptState {
            path: path.to_owned(),
            source,
        })
    }
}

/// Replaces `path` with `bytes` so that a crash of the process leaves either
/// the old or the new content, never a torn file: write a sibling, rename it
/// over.
///
/// There is deliberately no fsync. Everything this writes lives exactly as
/// long as the volume's tmpfs: keys are inside it, and `state.json` only
/// describes it. The one failure fsync guards against, losing the page cache
/// (power loss, kernel crash), takes the tmpfs with it, so a durable
/// `state.json` would describe a volume that no longer exists; publish treats
/// an unreadable state of a volume without its tmpfs as absent (see
/// `node::volumes::Volumes::current_state`). Measured with `hack/bench`: the four
/// fsyncs of a publish (file and directory, twice) cost about 1.2 ms of a
/// 6 ms P-256 publish on this machine, and tied a burst of publishes to the
/// disk's write-back.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        StoreError::io("write temporary file", &tmp, e)
    })?;
    std::fs::rename(&tmp, path).map_err(|e| StoreError::io("rename into place", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> VolumeState {
        let mut ctx = BTreeMap::new();
        ctx.insert("csi.cert-manager.io/issuer-name".into(), "ca".into());
        let mut s = VolumeState::new("csi-1", "/t", ctx, "fp");
        s.request = Some(RequestRef {
            namespace: "ns".into(),
            name: "cr-1".into(),
            phase: RequestPhase::Pending,
        });
        s.not_before = Some("2025-01-01T00:00:00Z".parse().unwrap());
        s.not_after = Some("2025-01-02T00:00:00Z".parse().unwrap());
        s
    }

    #[test]
    fn json_round_trip_and_readable_times() {
        let s = sample();
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains("\"2025-01-02T00:00:00Z\""), "{json}");
        assert!(json.contains("\"pending\""), "{json}");
        assert_eq!(
            VolumeState::decode(Path::new("/s"), json.as_bytes()).unwrap(),
            s
        );
    }

    #[test]
    fn newer_versions_and_garbage_are_refused_with_the_path() {
        let mut s = sample();
        s.version = STATE_VERSION + 1;
        let json = serde_json::to_vec(&s).unwrap();
        let err = VolumeState::decode(Path::new("/d/state.json"), &json).unwrap_err();
        assert!(matches!(err, StoreError::UnsupportedStateVersion { found, .. } if found == 2));
        let err = VolumeState::decode(Path::new("/d/state.json"), b"{\"version\":1").unwrap_err();
        assert!(err.to_string().contains("/d/state.json"), "{err}");
        assert!(matches!(err, StoreError::CorruptState { .. }));
    }

    #[test]
    fn tokens_and_inverted_validity_are_refused() {
        let mut s = sample();
        s.context.insert(
            "csi.storage.k8s.io/serviceAccount.tokens".into(),
            "{}".into(),
        );
        let err = s.check_before_save(Path::new("/s")).unwrap_err();
        assert!(err.to_string().contains("serviceAccount.tokens"), "{err}");

        let mut s = sample();
        std::mem::swap(&mut s.not_before, &mut s.not_after);
        let err = s.check_before_save(Path::new("/s")).unwrap_err();
        assert!(err.to_string().contains("not_after"), "{err}");
        sample().check_before_save(Path::new("/s")).unwrap();
    }
}
