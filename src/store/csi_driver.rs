//! The volumes of cert-manager's csi-driver, as csi-lib v0.10 keeps them
//! (`storage/filesystem.go`), read when cert-csi takes a node over in place.
//!
//! csi-lib mounts one tmpfs for all volumes at `<data root>/inmemfs`:
//!
//! ```text
//! <data root>/inmemfs/<volume id>/metadata.json  volumeID, targetPath,
//!     nextIssuanceTime, volumeContext, volumeMountGroup
//! <data root>/inmemfs/<volume id>/data/          the kubelet AtomicWriter's
//!     layout (..data -> ..<time>/, name -> ..data/name), bind-mounted
//!     read-only at targetPath
//! ```
//!
//! For a volume it adopts, cert-csi adds `cert-csi-private/` beside `data/`
//! for its pending key and keystore password: in the same tmpfs, out of the
//! pod's sight (only `data/` is bound into the pod), and removed with the
//! volume's directory by csi-driver's RemoveVolume as by cert-csi.
//!
//! Every directory is reached without following a symlink and must belong
//! to this process's user and be writable by nobody else, so files written
//! by path below it cannot be redirected.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, OFlag, openat};
use nix::sys::stat::{Mode, SFlag, fstat};
use serde::Deserialize;

use super::mountinfo::read_mountinfo;
use super::{StoreError, create_private_dir, mounts, validate_volume_id};

/// The directory below csi-driver's data root where its tmpfs is mounted.
pub const TMPFS_DIR: &str = "inmemfs";
const METADATA_FILE: &str = "metadata.json";
const DATA_DIR: &str = "data";
const PRIVATE_DIR: &str = "cert-csi-private";
/// metadata.json holds a volume's attributes; cert-csi refuses larger
/// attribute sets long before this.
const METADATA_LIMIT: u64 = 1 << 20;

/// A volume's metadata.json (csi-lib `metadata/metadata.go`).
#[derive(Clone, Deserialize)]
pub struct Metadata {
    #[serde(rename = "volumeID")]
    pub volume_id: String,
    #[serde(rename = "targetPath")]
    pub target_path: String,
    /// Absent until the first certificate was written.
    #[serde(rename = "nextIssuanceTime", default)]
    pub next_issuance_time: Option<jiff::Timestamp>,
    /// As the kubelet sent it, service account tokens and keystore
    /// password included: never log it.
    #[serde(rename = "volumeContext", default)]
    pub volume_context: HashMap<String, String>,
    #[serde(rename = "volumeMountGroup", default)]
    pub volume_mount_group: String,
}

impl std::fmt::Debug for Metadata {
    /// The attribute names only: values may be credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut keys: Vec<&String> = self.volume_context.keys().collect();
        keys.sort();
        f.debug_struct("Metadata")
            .field("volume_id", &self.volume_id)
            .field("target_path", &self.target_path)
            .field("next_issuance_time", &self.next_issuance_time)
            .field("volume_context_keys", &keys)
            .field("volume_mount_group", &self.volume_mount_group)
            .finish()
    }
}

impl Metadata {
    /// Parses a metadata.json (also fuzzed: fuzz/fuzz_targets/state_file.rs).
    pub fn decode(path: &Path, bytes: &[u8]) -> Result<Metadata, StoreError> {
        serde_json::from_slice(bytes).map_err(|source| StoreError::CorruptState {
            path: path.to_owned(),
            source,
        })
    }
}

/// csi-driver's data root on this node, with its tmpfs mounted.
#[derive(Debug, Clone)]
pub struct CsiDriverRoot {
    /// Resolved, so it compares equal to what mountinfo shows.
    root: PathBuf,
    tmpfs: PathBuf,
}

impl CsiDriverRoot {
    /// csi-driver's data root at `configured`. `None` when there is nothing
    /// to adopt: no such directory, no `inmemfs` in it, or an empty
    /// `inmemfs` with no tmpfs on it (the node rebooted since csi-driver
    /// ran, which ended its volumes). An error when volumes are there but
    /// cannot be taken over safely.
    pub fn open(configured: &Path) -> Result<Option<CsiDriverRoot>, StoreError> {
        let root = match configured.canonicalize() {
            Ok(root) => root,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io("resolve", configured, e)),
        };
        let Some(fd) = open_dir(AT_FDCWD, &root, &root)? else {
            return Ok(None);
        };
        // Nobody else may swap what lies below it.
        check_owner(&fd, &root, false)?;
        let tmpfs = root.join(TMPFS_DIR);
        let Some(fd) = open_dir(AT_FDCWD, &tmpfs, &tmpfs)? else {
            return Ok(None);
        };
        check_owner(&fd, &tmpfs, false)?;
        if !mounts::is_tmpfs_mount(&tmpfs)? {
            let empty = fs::read_dir(&tmpfs)
                .map_err(|e| StoreError::io("list", &tmpfs, e))?
                .next()
                .is_none();
            if empty {
                return Ok(None);
            }
            return Err(StoreError::Conflict {
                op: "adopt csi-driver volumes from",
                path: tmpfs,
                reason: "it holds files but no tmpfs is mounted there; csi-driver keeps its \
                         volumes only in that tmpfs, so these are not volumes of a running \
                         node, and cert-csi writes no key outside a tmpfs. Nothing was adopted"
                    .into(),
            });
        }
        Ok(Some(CsiDriverRoot { root, tmpfs }))
    }

    /// The resolved data root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The ids of the volume directories in the tmpfs. Names that cannot be
    /// a volume id are left alone and reported in the log.
    pub fn volume_ids(&self) -> Result<Vec<String>, StoreError> {
        let entries =
            fs::read_dir(&self.tmpfs).map_err(|e| StoreError::io("list", &self.tmpfs, e))?;
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io("list", &self.tmpfs, e))?;
            let name = entry.file_name();
            match name.to_str().map(|n| (n, validate_volume_id(n))) {
                Some((id, Ok(()))) => ids.push(id.to_owned()),
                _ => tracing::warn!(
                    path = %entry.path().display(),
                    "not a volume id; left alone"
                ),
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// The volume directory of `volume_id` (only paths; see
    /// [`CsiDriverVolume::check`]).
    pub fn volume(&self, volume_id: &str) -> CsiDriverVolume {
        CsiDriverVolume::new(&self.root, volume_id)
    }

    /// The volume's metadata.json, read without following a symlink.
    pub fn read_metadata(&self, volume_id: &str) -> Result<Metadata, StoreError> {
        let volume = self.volume(volume_id);
        let dir = volume.open()?.ok_or_else(|| StoreError::Conflict {
            op: "read",
            path: volume.dir.clone(),
            reason: "the volume directory is gone".into(),
        })?;
        let path = volume.dir.join(METADATA_FILE);
        let fd = openat(
            &dir,
            METADATA_FILE,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| StoreError::mount("open", &path, e))?;
        let st = fstat(&fd).map_err(|e| StoreError::mount("inspect", &path, e))?;
        if SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFREG {
            return Err(StoreError::Conflict {
                op: "read",
                path,
                reason: "is not a regular file".into(),
            });
        }
        let mut bytes = Vec::new();
        File::from(fd)
            .take(METADATA_LIMIT + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| StoreError::io("read", &path, e))?;
        if bytes.len() as u64 > METADATA_LIMIT {
            return Err(StoreError::Conflict {
                op: "read",
                path,
                reason: format!("is larger than {METADATA_LIMIT} bytes"),
            });
        }
        Metadata::decode(&path, &bytes)
    }

    /// Whether the mount on top at `target` (resolved, as mountinfo shows
    /// it) is a bind of this volume's `data` directory from csi-driver's
    /// tmpfs: the volume is live, in use by its pod.
    pub fn is_bound_at(&self, volume_id: &str, target: &Path) -> Result<bool, StoreError> {
        let table = read_mountinfo()?;
        let Some(tmpfs) = table
            .iter()
            .rev()
            .find(|m| m.mount_point == self.tmpfs && m.fs_type == "tmpfs")
        else {
            return Ok(false);
        };
        let data = Path::new("/").join(volume_id).join(DATA_DIR);
        Ok(table
            .iter()
            .rev()
            .find(|m| m.mount_point == target)
            .is_some_and(|m| m.device == tmpfs.device && m.root == data))
    }
}

/// One csi-driver volume directory, `<root>/inmemfs/<volume id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsiDriverVolume {
    tmpfs: PathBuf,
    dir: PathBuf,
}

impl CsiDriverVolume {
    /// The volume `volume_id` below csi-driver's (resolved) data root.
    pub fn new(root: &Path, volume_id: &str) -> CsiDriverVolume {
        let tmpfs = root.join(TMPFS_DIR);
        CsiDriverVolume {
            dir: tmpfs.join(volume_id),
            tmpfs,
        }
    }

    /// `<root>/inmemfs/<volume id>`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory bound into the pod.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join(DATA_DIR)
    }

    /// cert-csi's private directory beside it.
    pub fn private_dir(&self) -> PathBuf {
        self.dir.join(PRIVATE_DIR)
    }

    /// The volume directory, opened without following a symlink; `None`
    /// when it is gone.
    fn open(&self) -> Result<Option<OwnedFd>, StoreError> {
        let Some(tmpfs) = open_dir(AT_FDCWD, &self.tmpfs, &self.tmpfs)? else {
            return Ok(None);
        };
        let name = self.dir.file_name().unwrap_or_default();
        let Some(dir) = open_dir(&tmpfs, Path::new(name), &self.dir)? else {
            return Ok(None);
        };
        check_owner(&dir, &self.dir, true)?;
        Ok(Some(dir))
    }

    /// Whether the volume is there to be written: csi-driver's tmpfs is
    /// mounted, and the volume and data directories exist, are reached
    /// without a symlink and belong to this user alone. An error when they
    /// exist but cannot be trusted.
    pub fn check(&self) -> Result<bool, StoreError> {
        if !mounts::is_tmpfs_mount(&self.tmpfs)? {
            return Ok(false);
        }
        let Some(dir) = self.open()? else {
            return Ok(false);
        };
        let data = self.data_dir();
        match open_dir(&dir, Path::new(DATA_DIR), &data)? {
            Some(fd) => check_owner(&fd, &data, true).map(|()| true),
            None => Ok(false),
        }
    }

    /// Like [`CsiDriverVolume::check`], as an error naming what is missing,
    /// and with cert-csi's private directory made: called before anything
    /// is written, so a key never lands outside the tmpfs.
    pub fn require(&self, op: &'static str) -> Result<(), StoreError> {
        if !self.check()? {
            return Err(StoreError::Conflict {
                op,
                path: self.dir.clone(),
                reason: "csi-driver's tmpfs or this volume's directory in it is gone; \
                         nothing is written outside a tmpfs"
                    .into(),
            });
        }
        create_private_dir(&self.private_dir())
    }

    /// Removes the volume's directory from csi-driver's tmpfs, as its
    /// RemoveVolume does. Without that tmpfs there is nothing of the
    /// volume left, and nothing on the disk below is touched.
    pub fn remove(&self) -> Result<(), StoreError> {
        if !mounts::is_tmpfs_mount(&self.tmpfs)? || self.open()?.is_none() {
            return Ok(());
        }
        // remove_dir_all does not follow symlinks (and `open` refused one
        // in place of the directory itself).
        match fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(StoreError::io("remove", &self.dir, e))
            }
            _ => Ok(()),
        }
    }
}

/// `name` below `at`, opened as a directory without following a symlink
/// in its last component; `None` if it does not exist. `shown` names it
/// in errors.
fn open_dir<Fd: std::os::fd::AsFd>(
    at: Fd,
    name: &Path,
    shown: &Path,
) -> Result<Option<OwnedFd>, StoreError> {
    match openat(
        at,
        name,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::ENOENT) => Ok(None),
        Err(Errno::ENOTDIR | Errno::ELOOP) => Err(StoreError::Conflict {
            op: "open",
            path: shown.to_owned(),
            reason: "is not a directory (a symbolic link?); csi-driver makes plain \
                     directories here, so it is left alone"
                .into(),
        }),
        Err(e) => Err(StoreError::mount("open", shown, e)),
    }
}

/// Refuses a directory another user owns or may write to (`strict`), or,
/// for the shared tmpfs root that csi-lib mounts world-writable with the
/// sticky bit, one another user owns.
fn check_owner(fd: &OwnedFd, path: &Path, strict: bool) -> Result<(), StoreError> {
    let st = fstat(fd).map_err(|e| StoreError::mount("inspect", path, e))?;
    let me = nix::unistd::geteuid().as_raw();
    let others_write = st.st_mode & 0o022 != 0;
    let sticky = st.st_mode & 0o1000 != 0;
    if st.st_uid != me || (others_write && (strict || !sticky)) {
        return Err(StoreError::Conflict {
            op: "adopt",
            path: path.to_owned(),
            reason: format!(
                "belongs to uid {} with mode {:o}; csi-driver's directories are root's and \
                 writable by root alone, so this is left alone",
                st.st_uid,
                st.st_mode & 0o7777
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_as_csi_lib_writes_it() {
        let json = br#"{"volumeID":"csi-1","targetPath":"/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/tls/mount","nextIssuanceTime":"2026-01-02T03:04:05.123456789+01:00","volumeContext":{"csi.cert-manager.io/issuer-name":"ca","csi.cert-manager.io/pkcs12-password":"hunter2"},"volumeMountGroup":"2000"}"#;
        let meta = Metadata::decode(Path::new("/m"), json).unwrap();
        assert_eq!(meta.volume_id, "csi-1");
        assert_eq!(
            meta.next_issuance_time.unwrap().to_string(),
            "2026-01-02T02:04:05.123456789Z"
        );
        assert_eq!(meta.volume_mount_group, "2000");
        let shown = format!("{meta:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("pkcs12-password"), "{shown}");

        // Never issued: no nextIssuanceTime; continue-on-not-ready: Go's
        // zero time.
        let fresh = Metadata::decode(
            Path::new("/m"),
            br#"{"volumeID":"csi-2","targetPath":"/t"}"#,
        )
        .unwrap();
        assert!(fresh.next_issuance_time.is_none());
        assert!(fresh.volume_context.is_empty());
        let zero = Metadata::decode(
            Path::new("/m"),
            br#"{"volumeID":"csi-3","targetPath":"/t","nextIssuanceTime":"0001-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert!(zero.next_issuance_time.is_some());

        let err = Metadata::decode(Path::new("/m/metadata.json"), b"{").unwrap_err();
        assert!(err.to_string().contains("/m/metadata.json"), "{err}");
    }

    #[test]
    fn a_missing_root_or_an_empty_unmounted_tmpfs_dir_is_nothing_to_adopt() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            CsiDriverRoot::open(&dir.path().join("absent"))
                .unwrap()
                .is_none()
        );
        assert!(CsiDriverRoot::open(dir.path()).unwrap().is_none());
        fs::create_dir(dir.path().join(TMPFS_DIR)).unwrap();
        assert!(CsiDriverRoot::open(dir.path()).unwrap().is_none());
        // Files there without a tmpfs: not csi-driver's live volumes.
        fs::create_dir(dir.path().join(TMPFS_DIR).join("csi-1")).unwrap();
        let err = CsiDriverRoot::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no tmpfs is mounted there"), "{err}");
    }

    #[test]
    fn a_symlink_in_place_of_the_tmpfs_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), dir.path().join(TMPFS_DIR))
            .unwrap();
        let err = CsiDriverRoot::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
    }
}
