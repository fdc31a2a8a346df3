//! The one error type of the store, and its coarse category for the CSI layer.

use std::io;
use std::path::PathBuf;

use nix::errno::Errno;

/// What went wrong in the store. Every message names the path or the input
/// at fault, the operation that failed and, where there is one, the fix.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The volume id from the container orchestrator cannot be used as a
    /// single directory name.
    #[error(
        "volume_id {id:?} is not usable as a directory name: {reason}; \
         the kubelet sends ids of the form csi-<64 hex characters>"
    )]
    InvalidVolumeId { id: String, reason: &'static str },

    /// A file name handed to `publish` could escape the volume or collide
    /// with the names the atomic swap reserves.
    #[error(
        "file name {name:?} cannot be published: {reason}; \
         use a plain name such as tls.crt"
    )]
    InvalidFileName { name: String, reason: &'static str },

    /// A store option is out of its allowed range.
    #[error("store option {field} = {value} is invalid: {reason}")]
    InvalidOption {
        field: &'static str,
        value: String,
        reason: &'static str,
    },

    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A mount or unmount system call failed.
    #[error("{op} {path}: {source}")]
    Mount {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: Errno,
    },

    /// The path is occupied by something the store did not put there, so it
    /// refuses to mount over it or delete it.
    #[error("{op} {path}: {reason}")]
    Conflict {
        op: &'static str,
        path: PathBuf,
        reason: String,
    },

    /// The blocking task that ran a store operation panicked or was
    /// cancelled (the async callers run every store call on a thread pool).
    #[error("{op}: the store task failed: {reason}")]
    Task { op: &'static str, reason: String },

    /// The target path cannot be used as it is: a symlink or a file on the
    /// way, or no clean absolute path. `path` is a short quoted prefix.
    #[error("target_path {path}: {reason}")]
    UnsafeTarget { path: String, reason: String },

    /// The directory the kubelet creates before a publish is missing.
    #[error(
        "target_path {path}: its parent directory does not exist; the kubelet creates \
         <kubelet root>/pods/<pod uid>/volumes/kubernetes.io~csi/<volume name> before \
         NodePublishVolume, so pass the target path of a volume the kubelet set up"
    )]
    TargetParentMissing { path: String },

    /// No state file exists for the volume.
    #[error(
        "load state of volume {volume_id}: {path} does not exist; \
         the volume was never published on this node or was already removed"
    )]
    StateNotFound { volume_id: String, path: PathBuf },

    /// The state file exists but cannot be decoded.
    #[error(
        "load state {path}: the file is corrupted ({source}); \
         unpublish the volume (or delete the file) so the kubelet publishes it afresh"
    )]
    CorruptState {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// The state file was written by a newer cert-csi.
    #[error(
        "load state {path}: version {found} is newer than this cert-csi understands \
         (at most {supported}); upgrade cert-csi or remove the file"
    )]
    UnsupportedStateVersion {
        path: PathBuf,
        found: u32,
        supported: u32,
    },

    /// The caller tried to persist something that must stay in memory.
    #[error(
        "save state of volume {volume_id}: context key {key:?} holds a secret and \
         must not reach persistent disk; strip it before saving"
    )]
    SecretInState { volume_id: String, key: String },

    /// Two fields of the state disagree with each other.
    #[error("save state {path}: field {field} {reason}")]
    InvalidState {
        path: PathBuf,
        field: &'static str,
        reason: String,
    },
}

/// The coarse category of a [`StoreError`], which the CSI layer turns into
/// a gRPC status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// Bad input from the caller (InvalidArgument).
    InvalidArgument,
    /// Something that should exist does not (NotFound).
    NotFound,
    /// The node is in a state that prevents the operation (FailedPrecondition).
    FailedPrecondition,
    /// The tmpfs or the disk is full (ResourceExhausted).
    ResourceExhausted,
    /// Anything else (Internal).
    Internal,
}

impl StoreError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        StoreError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn mount(op: &'static str, path: impl Into<PathBuf>, source: Errno) -> Self {
        StoreError::Mount {
            op,
            path: path.into(),
            source,
        }
    }

    /// The category the CSI layer maps to a status code.
    pub fn kind(&self) -> StoreErrorKind {
        match self {
            StoreError::InvalidVolumeId { .. }
            | StoreError::InvalidFileName { .. }
            | StoreError::InvalidOption { .. }
            | StoreError::SecretInState { .. }
            | StoreError::InvalidState { .. }
            | StoreError::UnsafeTarget { .. } => StoreErrorKind::InvalidArgument,
            StoreError::StateNotFound { .. } | StoreError::TargetParentMissing { .. } => {
                StoreErrorKind::NotFound
            }
            StoreError::Conflict { .. }
            | StoreError::CorruptState { .. }
            | StoreError::UnsupportedStateVersion { .. } => StoreErrorKind::FailedPrecondition,
            StoreError::Io { source, .. } => match source.raw_os_error().map(Errno::from_raw) {
                Some(errno) => errno_kind(errno),
                None if source.kind() == io::ErrorKind::NotFound => StoreErrorKind::NotFound,
                None => StoreErrorKind::Internal,
            },
            StoreError::Mount { source, .. } => errno_kind(*source),
            StoreError::Task { .. } => StoreErrorKind::Internal,
        }
    }

    /// Whether the thing the operation needed does not exist.
    pub fn is_not_found(&self) -> bool {
        self.kind() == StoreErrorKind::NotFound
    }

    /// Whether the caller sent something the store cannot accept.
    pub fn is_invalid_argument(&self) -> bool {
        self.kind() == StoreErrorKind::InvalidArgument
    }
}

fn errno_kind(errno: Errno) -> StoreErrorKind {
    match errno {
        Errno::ENOENT => StoreErrorKind::NotFound,
        Errno::ENOSPC | Errno::EDQUOT | Errno::ENOMEM => StoreErrorKind::ResourceExhausted,
        Errno::EBUSY | Errno::EROFS | Errno::EPERM | Errno::EACCES => {
            StoreErrorKind::FailedPrecondition
        }
        _ => StoreErrorKind::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_are_categorised_by_errno() {
        let full = StoreError::io(
            "write file",
            "/x",
            io::Error::from_raw_os_error(Errno::ENOSPC as i32),
        );
        assert_eq!(full.kind(), StoreErrorKind::ResourceExhausted);
        let gone = StoreError::io(
            "open",
            "/x",
            io::Error::from_raw_os_error(Errno::ENOENT as i32),
        );
        assert!(gone.is_not_found());
        let other = StoreError::io("open", "/x", io::Error::other("boom"));
        assert_eq!(other.kind(), StoreErrorKind::Internal);
        let busy = StoreError::mount("unmount", "/x", Errno::EBUSY);
        assert_eq!(busy.kind(), StoreErrorKind::FailedPrecondition);
    }

    #[test]
    fn messages_name_path_and_operation() {
        let e = StoreError::mount("mount tmpfs at", "/data/volumes/v/mnt", Errno::EPERM);
        let msg = e.to_string();
        assert!(msg.contains("mount tmpfs at"), "{msg}");
        assert!(msg.contains("/data/volumes/v/mnt"), "{msg}");
    }
}
