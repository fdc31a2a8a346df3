//! Per-volume tmpfs mounts, the atomic swap of a pod's files, and the node
//! state that lets a restarted node plugin resume.
//!
//! Layout under the data root (persistent disk):
//!
//! ```text
//! <data_root>/volumes/<volume_id>/state.json   node state, never key material
//! <data_root>/volumes/<volume_id>/mnt/         a tmpfs of the volume's own
//!     pod/       bind-mounted read-only at the pod's target path
//!     private/   a pending private key; never visible to the pod
//! ```
//!
//! Each volume has its own small tmpfs so one volume cannot fill another's
//! memory, and so removing a volume is one unmount.
//!
//! A volume taken over from cert-manager's csi-driver (see `node::adopt`)
//! keeps only `state.json` here, marked `adopted`: its files stay in
//! csi-driver's shared tmpfs ([`csi_driver`]), and [`VolumeDir`] writes
//! them there in csi-lib's layout.

mod atomic;
pub mod csi_driver;
mod error;
mod mountinfo;
mod mounts;
mod names;
mod scan;
mod state;
mod target;

use std::fs::{self, DirBuilder, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

pub use atomic::{
    DATA_LINK, DIR_MODE, DIR_MODE_WITH_GROUP, FILE_MODE, FILE_MODE_WITH_GROUP, current_generation,
    default_file_mode,
};
pub use error::{StoreError, StoreErrorKind};
pub use mountinfo::{MountEntry, mounts_at, parse_mountinfo, read_mountinfo};
pub use mounts::TMPFS_SOURCE;
pub use names::{id_hash, validate_file_name, validate_volume_id};
pub use scan::assert_no_key_material_outside_tmpfs;
pub use state::{Adopted, LAST_ERROR_CHARS, RequestPhase, RequestRef, STATE_VERSION, VolumeState};

use crate::pki::Secret;
use csi_driver::CsiDriverVolume;

const VOLUMES_DIR: &str = "volumes";
const STATE_FILE: &str = "state.json";
const MNT_DIR: &str = "mnt";
const POD_DIR: &str = "pod";
const PRIVATE_DIR: &str = "private";
const PENDING_KEY: &str = "pending.key";

/// Limits of each volume's tmpfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// Bytes of memory the tmpfs may hold (certificates, keys, keystores,
    /// up to three generations while a swap runs: new, current, previous).
    pub tmpfs_size_bytes: u64,
    /// Files, directories and symlinks the tmpfs may hold; caps a runaway
    /// publish long before memory does.
    pub tmpfs_max_inodes: u64,
    /// Real mounts, or plain files for where mounting is impossible.
    pub mount_mode: MountMode,
}

/// How volumes reach pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MountMode {
    /// A tmpfs per volume, bind-mounted read-only at the target: what a node
    /// always uses.
    #[default]
    Kernel,
    /// No mounts at all: plain directories, and the target is a symlink to
    /// the pod directory. Only for the demo on a machine where a normal user
    /// may not mount; keys are then as safe as the filesystem under the data
    /// root, so the demo puts that in /dev/shm.
    Files,
}

impl StoreOptions {
    pub const MIN_SIZE_BYTES: u64 = 64 * 1024;
    pub const MAX_SIZE_BYTES: u64 = 64 * 1024 * 1024;

    fn validate(&self) -> Result<(), StoreError> {
        if !(Self::MIN_SIZE_BYTES..=Self::MAX_SIZE_BYTES).contains(&self.tmpfs_size_bytes) {
            return Err(StoreError::InvalidOption {
                field: "tmpfs_size_bytes",
                value: self.tmpfs_size_bytes.to_string(),
                reason: "must be between 64 KiB and 64 MiB",
            });
        }
        if !(16..=65536).contains(&self.tmpfs_max_inodes) {
            return Err(StoreError::InvalidOption {
                field: "tmpfs_max_inodes",
                value: self.tmpfs_max_inodes.to_string(),
                reason: "must be between 16 and 65536",
            });
        }
        Ok(())
    }
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            tmpfs_size_bytes: 2 * 1024 * 1024,
            tmpfs_max_inodes: 1024,
            mount_mode: MountMode::Kernel,
        }
    }
}

/// The node's volume store under one data root.
#[derive(Debug, Clone)]
pub struct Store {
    /// Canonical, so paths compare equal to those in mountinfo.
    root: PathBuf,
    options: StoreOptions,
    /// Serialises mount, publish and removal. Without it two concurrent
    /// publishes of one volume could stack two tmpfs mounts and hide the
    /// first one's files (cert-manager/csi-driver#636). These operations
    /// take micro- to milliseconds, so one lock for the node is enough.
    lock: Arc<Mutex<()>>,
}

impl Store {
    /// Opens (creating, mode 0700) the store under `data_root`.
    pub fn open(data_root: impl AsRef<Path>) -> Result<Store, StoreError> {
        Store::open_with(data_root, StoreOptions::default())
    }

    /// Like [`Store::open`], with explicit tmpfs limits.
    pub fn open_with(
        data_root: impl AsRef<Path>,
        options: StoreOptions,
    ) -> Result<Store, StoreError> {
        options.validate()?;
        let data_root = data_root.as_ref();
        create_private_dir_all(data_root)?;
        let root = data_root
            .canonicalize()
            .map_err(|e| StoreError::io("resolve data root", data_root, e))?;
        let volumes = root.join(VOLUMES_DIR);
        create_private_dir_all(&volumes)?;
        fs::set_permissions(&volumes, Permissions::from_mode(0o700))
            .map_err(|e| StoreError::io("change mode of", &volumes, e))?;
        Ok(Store {
            root,
            options,
            lock: Arc::new(Mutex::new(())),
        })
    }

    /// The canonical data root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn volume_path(&self, volume_id: &str) -> Result<PathBuf, StoreError> {
        validate_volume_id(volume_id)?;
        Ok(self.root.join(VOLUMES_DIR).join(volume_id))
    }

    fn guard(&self) -> MutexGuard<'_, ()> {
        // A panic while holding the lock leaves no in-memory invariant
        // broken (all state is on disk), so poisoning is ignored.
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates the volume's directory and mounts its tmpfs. An existing
    /// tmpfs is reused with its contents, which is how a restarted plugin
    /// finds a pending key again.
    pub fn prepare(&self, volume_id: &str) -> Result<VolumeDir, StoreError> {
        let dir = self.volume_path(volume_id)?;
        let _guard = self.guard();
        create_private_dir(&dir)?;
        let mnt = dir.join(MNT_DIR);
        create_private_dir(&mnt)?;
        // Only cert-csi mounts below its 0700 data root, so a tmpfs found
        // here is the one an earlier run mounted.
        if self.options.mount_mode == MountMode::Kernel && !mounts::is_tmpfs_mount(&mnt)? {
            if mounts::is_foreign_device(&mnt)? {
                return Err(StoreError::Conflict {
                    op: "prepare",
                    path: mnt,
                    reason: "a filesystem other than tmpfs is mounted there; unmount it".into(),
                });
            }
            mounts::mount_tmpfs(
                &mnt,
                self.options.tmpfs_size_bytes,
                self.options.tmpfs_max_inodes,
            )?;
        }
        create_dir_with_mode(
            &mnt.join(POD_DIR),
            if self.options.mount_mode == MountMode::Files {
                0o700
            } else {
                DIR_MODE
            },
        )?;
        create_private_dir(&mnt.join(PRIVATE_DIR))?;
        Ok(self.volume_dir(volume_id, dir, None))
    }

    /// Unmounts this volume's mount at `target_path`, then the volume's
    /// tmpfs, and deletes what the store created. Whatever is already gone
    /// counts as done, so the kubelet may retry freely.
    ///
    /// The target is reached without following a symlink (see
    /// `target::open_parent`), and only what this volume put there is
    /// touched: a bind mount of its own pod directory (or, in
    /// [`MountMode::Files`], its own symlink), and then the empty directory
    /// under it. A volume the store does not know leaves the target alone;
    /// a mount of anyone else's stays, and so does a path with a symlink.
    pub fn remove(&self, volume_id: &str, target_path: &Path) -> Result<(), StoreError> {
        let dir = self.volume_path(volume_id)?;
        let _guard = self.guard();

        // An adopted volume: csi-driver's bind mount of its data directory
        // goes from the target, then the volume's directory from
        // csi-driver's tmpfs, as csi-driver's unpublish does. The state
        // goes last, below, so a retry still knows where the volume was.
        if let Some(csi) = self.adopted_volume(volume_id) {
            self.release_target(&csi.data_dir(), target_path)?;
            csi.remove()?;
        }

        if fs::symlink_metadata(&dir).is_ok() {
            self.release_target(&dir.join(MNT_DIR).join(POD_DIR), target_path)?;
        }

        if self.options.mount_mode == MountMode::Files {
            return match fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    Err(StoreError::io("remove", &dir, e))
                }
                _ => Ok(()),
            };
        }
        mounts::unmount_all(&dir.join(MNT_DIR))?;
        match fs::metadata(&dir) {
            Ok(meta) => remove_tree_on_device(&dir, meta.dev()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io("inspect", &dir, e)),
        }
    }

    /// Unpublishes a volume of cert-manager's csi-driver that cert-csi did
    /// not adopt (see `node::adopt`), as csi-driver's unpublish would: its
    /// bind mount goes from `target_path`, its directory from csi-driver's
    /// tmpfs below `csi_driver_root`. Whatever is gone counts as done.
    pub fn remove_csi_driver_volume(
        &self,
        csi_driver_root: &Path,
        volume_id: &str,
        target_path: &Path,
    ) -> Result<(), StoreError> {
        validate_volume_id(volume_id)?;
        let root = match csi_driver_root.canonicalize() {
            Ok(root) => root,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StoreError::io("resolve", csi_driver_root, e)),
        };
        let csi = CsiDriverVolume::new(&root, volume_id);
        if !csi.check()? {
            return Ok(());
        }
        let _guard = self.guard();
        self.release_target(&csi.data_dir(), target_path)?;
        csi.remove()
    }

    /// Takes the volume whose pod directory is `pod` away from `target_path`
    /// (see [`Store::remove`]).
    fn release_target(&self, pod: &Path, target_path: &Path) -> Result<(), StoreError> {
        let parent = match target::open_parent(target_path) {
            Ok(Some(parent)) => parent,
            Ok(None) => return Ok(()),
            Err(error) => {
                // Nothing of ours can be there: the store never mounts
                // through a symlink.
                tracing::warn!(%error, "target path not usable; left untouched");
                return Ok(());
            }
        };
        if self.options.mount_mode == MountMode::Files {
            if let target::Entry::Symlink(link) = parent.entry()?
                && link == pod
            {
                parent.unlink()?;
            }
            return Ok(());
        }
        let ours = mounts::identity(pod)?;
        let parent_dev = parent.identity()?.0;
        let mut unmounted = false;
        // Bounded, in case the kernel keeps reporting a mount it will not drop.
        for _ in 0..16 {
            let fd = match parent.entry()? {
                target::Entry::Dir(fd) => fd,
                // Gone, a symlink or a file: nothing of ours.
                _ => return Ok(()),
            };
            let shown = target::fd_identity(&fd)
                .map_err(|e| StoreError::mount("inspect", parent.path(), e))?;
            drop(fd);
            if shown.0 == parent_dev {
                // A plain directory: ours to remove only once our mount is
                // off it or if nothing was ever mounted (a publish that
                // failed between creating it and mounting).
                return parent.rmdir();
            }
            if Some(shown) != ours {
                if unmounted {
                    return Err(StoreError::Conflict {
                        op: "unmount",
                        path: parent.path().to_owned(),
                        reason: "another filesystem is mounted over the volume's \
                                 target; unmount it first"
                            .into(),
                    });
                }
                tracing::warn!(target = %parent.path().display(), "a mount cert-csi did not make for this volume is at the target; left in place");
                return Ok(());
            }
            mounts::unmount_nofollow(&parent.name_path(), parent.path())?;
            unmounted = true;
        }
        Err(StoreError::Conflict {
            op: "unmount",
            path: parent.path().to_owned(),
            reason: "still mounted after 16 unmounts; inspect /proc/self/mountinfo".into(),
        })
    }

    /// Checks, before a publish creates anything, that `target_path` can
    /// take this volume: its parent exists and is reached without a
    /// symlink, and the target is absent, an empty directory, or this
    /// volume's own mount already.
    pub fn check_target(&self, volume_id: &str, target_path: &Path) -> Result<(), StoreError> {
        let dir = self.volume_path(volume_id)?;
        let parent =
            target::open_parent(target_path)?.ok_or_else(|| StoreError::TargetParentMissing {
                path: target::quote(target_path.as_os_str()),
            })?;
        let pod = dir.join(MNT_DIR).join(POD_DIR);
        check_target_entry(&parent, &pod, self.options.mount_mode).map(drop)
    }

    /// Writes the volume's state atomically (see `state::write_atomically`).
    pub fn save_state(&self, state: &VolumeState) -> Result<(), StoreError> {
        let dir = self.volume_path(&state.volume_id)?;
        let path = dir.join(STATE_FILE);
        state.check_before_save(&path)?;
        let mut state = state.clone();
        state.version = STATE_VERSION;
        let json = serde_json::to_vec_pretty(&state).map_err(|e| StoreError::InvalidState {
            path: path.clone(),
            field: "(all)",
            reason: format!("cannot be encoded: {e}"),
        })?;
        state::write_atomically(&path, &json, 0o600)
    }

    /// Reads the volume's state.
    pub fn load_state(&self, volume_id: &str) -> Result<VolumeState, StoreError> {
        let path = self.volume_path(volume_id)?.join(STATE_FILE);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::StateNotFound {
                    volume_id: volume_id.to_owned(),
                    path,
                });
            }
            Err(e) => return Err(StoreError::io("read state", &path, e)),
        };
        let state = VolumeState::decode(&path, &bytes)?;
        if state.volume_id != volume_id {
            return Err(StoreError::InvalidState {
                path,
                field: "volume_id",
                reason: format!(
                    "is {:?} but the file belongs to {volume_id:?}",
                    state.volume_id
                ),
            });
        }
        Ok(state)
    }

    /// The ids of all volume directories, including those without state
    /// (a crash between `prepare` and the first `save_state`).
    pub fn volume_ids(&self) -> Result<Vec<String>, StoreError> {
        let volumes = self.root.join(VOLUMES_DIR);
        let entries = fs::read_dir(&volumes).map_err(|e| StoreError::io("list", &volumes, e))?;
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io("list", &volumes, e))?;
            if let Some(id) = entry.file_name().to_str()
                && validate_volume_id(id).is_ok()
                && entry.file_type().is_ok_and(|t| t.is_dir())
            {
                ids.push(id.to_owned());
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// The state of every volume, for recovery after a restart. Volumes
    /// without state are skipped; unreadable state is logged and skipped so
    /// one bad file does not stop the others from resuming.
    pub fn list(&self) -> Result<Vec<VolumeState>, StoreError> {
        let mut states = Vec::new();
        for id in self.volume_ids()? {
            match self.load_state(&id) {
                Ok(s) => states.push(s),
                Err(e) if e.is_not_found() => {}
                Err(e) => tracing::warn!(volume_id = %id, error = %e, "skipping volume state"),
            }
        }
        Ok(states)
    }

    /// A handle on a volume that `prepare` already set up, without touching
    /// mounts; `None` if its tmpfs is not mounted.
    pub fn existing(&self, volume_id: &str) -> Result<Option<VolumeDir>, StoreError> {
        let dir = self.volume_path(volume_id)?;
        let mounted = match self.options.mount_mode {
            MountMode::Kernel => mounts::is_tmpfs_mount(&dir.join(MNT_DIR))?,
            MountMode::Files => dir.join(MNT_DIR).is_dir(),
        };
        if mounted {
            return Ok(Some(self.volume_dir(volume_id, dir, None)));
        }
        match self.adopted_volume(volume_id) {
            Some(csi) if csi.check()? => Ok(Some(self.volume_dir(volume_id, dir, Some(csi)))),
            _ => Ok(None),
        }
    }

    /// Takes over a volume cert-manager's csi-driver published, whose
    /// `state` says where it lives ([`VolumeState::adopted`]): makes the
    /// volume's directory here for its state, and cert-csi's private
    /// directory in csi-driver's tmpfs after checking that tmpfs. The
    /// caller saves the state.
    pub fn adopt(&self, state: &VolumeState) -> Result<VolumeDir, StoreError> {
        let dir = self.volume_path(&state.volume_id)?;
        let adopted = state
            .adopted
            .as_ref()
            .ok_or_else(|| StoreError::InvalidState {
                path: dir.join(STATE_FILE),
                field: "adopted",
                reason: "is empty, but only an adopted volume can be adopted".into(),
            })?;
        let csi = CsiDriverVolume::new(&adopted.csi_driver_data_root, &state.volume_id);
        let _guard = self.guard();
        csi.require("adopt")?;
        create_private_dir(&dir)?;
        Ok(self.volume_dir(&state.volume_id, dir, Some(csi)))
    }

    /// Where an adopted volume lives in csi-driver's tmpfs; `None` for
    /// every other volume (and when its state cannot be read).
    fn adopted_volume(&self, volume_id: &str) -> Option<CsiDriverVolume> {
        let state = self.load_state(volume_id).ok()?;
        let adopted = state.adopted?;
        Some(CsiDriverVolume::new(
            &adopted.csi_driver_data_root,
            volume_id,
        ))
    }

    fn volume_dir(
        &self,
        volume_id: &str,
        dir: PathBuf,
        csi_driver: Option<CsiDriverVolume>,
    ) -> VolumeDir {
        VolumeDir {
            volume_id: volume_id.to_owned(),
            dir,
            lock: Arc::clone(&self.lock),
            mode: self.options.mount_mode,
            csi_driver,
        }
    }
}

/// One prepared volume: its tmpfs is mounted.
#[derive(Debug, Clone)]
pub struct VolumeDir {
    volume_id: String,
    dir: PathBuf,
    lock: Arc<Mutex<()>>,
    mode: MountMode,
    /// For a volume adopted from cert-manager's csi-driver: where its
    /// files are, in csi-driver's tmpfs (its state stays in `dir`).
    csi_driver: Option<CsiDriverVolume>,
}

impl VolumeDir {
    pub fn volume_id(&self) -> &str {
        &self.volume_id
    }

    /// `<data_root>/volumes/<volume_id>`.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The volume's own tmpfs mount point (of an adopted volume: its
    /// directory in csi-driver's tmpfs).
    pub fn tmpfs_path(&self) -> PathBuf {
        match &self.csi_driver {
            Some(csi) => csi.dir().to_path_buf(),
            None => self.dir.join(MNT_DIR),
        }
    }

    /// The directory the pod sees.
    pub fn pod_path(&self) -> PathBuf {
        match &self.csi_driver {
            Some(csi) => csi.data_dir(),
            None => self.tmpfs_path().join(POD_DIR),
        }
    }

    /// Secrets the pod never sees, in the tmpfs.
    fn private_dir(&self) -> PathBuf {
        match &self.csi_driver {
            Some(csi) => csi.private_dir(),
            None => self.tmpfs_path().join(PRIVATE_DIR),
        }
    }

    fn pending_key_path(&self) -> PathBuf {
        self.private_dir().join(PENDING_KEY)
    }

    fn guard(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps the private key of a request in flight (mode 0600, tmpfs only),
    /// so a restarted plugin can finish that request instead of making another.
    pub fn write_pending_key(&self, key: &Secret) -> Result<(), StoreError> {
        self.ensure_tmpfs("write pending key")?;
        state::write_atomically(&self.pending_key_path(), &key.0, 0o600)
    }

    /// The pending private key, if one was written and not cleared.
    pub fn read_pending_key(&self) -> Result<Option<Secret>, StoreError> {
        let path = self.pending_key_path();
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(Secret(bytes))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io("read pending key", &path, e)),
        }
    }

    /// Keeps a small secret the volume needs again at renewal (e.g. the
    /// keystore password) in the tmpfs's private directory, mode 0600, never
    /// visible to the pod and never on persistent disk.
    pub fn write_private(&self, name: &str, secret: &Secret) -> Result<(), StoreError> {
        validate_file_name(name)?;
        if name == PENDING_KEY {
            return Err(StoreError::InvalidFileName {
                name: name.to_owned(),
                reason: "it is reserved for the pending key",
            });
        }
        self.ensure_tmpfs("write private file")?;
        state::write_atomically(&self.private_dir().join(name), &secret.0, 0o600)
    }

    /// A secret written by [`VolumeDir::write_private`], if present.
    pub fn read_private(&self, name: &str) -> Result<Option<Secret>, StoreError> {
        validate_file_name(name)?;
        let path = self.private_dir().join(name);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(Secret(bytes))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io("read private file", &path, e)),
        }
    }

    /// Forgets the pending key; absent is fine.
    pub fn clear_pending_key(&self) -> Result<(), StoreError> {
        let path = self.pending_key_path();
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(StoreError::io("remove pending key", &path, e))
            }
            _ => Ok(()),
        }
    }

    /// Atomically replaces the pod's files with `files`: `(name, contents,
    /// mode)`, mode usually [`default_file_mode`]. With `gid`, files and
    /// directories are group-owned by it (the pod's fsGroup).
    pub fn publish<N: AsRef<str>, B: AsRef<[u8]>>(
        &self,
        files: &[(N, B, u32)],
        gid: Option<u32>,
    ) -> Result<(), StoreError> {
        let _guard = self.guard();
        self.ensure_tmpfs("publish")?;
        let modes = if self.csi_driver.is_some() {
            atomic::Modes::CsiLib
        } else if self.mode == MountMode::Files {
            atomic::Modes::Unprivileged
        } else {
            atomic::Modes::Own
        };
        atomic::publish(&self.pod_path(), files, gid, modes)
    }

    /// Bind-mounts the pod directory read-only (and nodev, noexec, nosuid)
    /// at `target`, creating the directory. Does nothing if this volume is
    /// already mounted there. No symlink in `target` is followed, and a
    /// directory that is not empty or has another mount is refused.
    pub fn mount_at(&self, target: &Path) -> Result<(), StoreError> {
        if self.csi_driver.is_some() {
            // csi-driver mounted it; cert-csi only keeps it.
            return if self.is_mounted_at(target)? {
                Ok(())
            } else {
                Err(StoreError::Conflict {
                    op: "mount",
                    path: target.to_owned(),
                    reason: "the volume was adopted from csi-driver and is no longer \
                             mounted there; unpublish it so the kubelet publishes it afresh"
                        .into(),
                })
            };
        }
        let _guard = self.guard();
        self.ensure_tmpfs("mount")?;
        let parent =
            target::open_parent(target)?.ok_or_else(|| StoreError::TargetParentMissing {
                path: target::quote(target.as_os_str()),
            })?;
        let pod = self.pod_path();
        match check_target_entry(&parent, &pod, self.mode)? {
            TargetFound::Ours(None) => return Ok(()),
            TargetFound::Ours(Some(fd)) => {
                // A crash between the two mount calls leaves a writable bind.
                let shown = target::fd_path(&fd);
                return if mounts::is_read_only(&shown)? {
                    Ok(())
                } else {
                    mounts::remount_read_only(&shown)
                };
            }
            TargetFound::EmptyDir if self.mode == MountMode::Files => {
                // The target becomes a symlink to the pod directory.
                parent.rmdir()?;
                return parent.symlink(&pod);
            }
            TargetFound::Absent if self.mode == MountMode::Files => {
                return parent.symlink(&pod);
            }
            TargetFound::Absent => parent.mkdir(0o750)?,
            TargetFound::EmptyDir => {}
        }
        let target::Entry::Dir(fd) = parent.entry()? else {
            return Err(StoreError::Conflict {
                op: "mount",
                path: target.to_owned(),
                reason: "the directory changed while it was being mounted; retry".into(),
            });
        };
        mounts::bind(&pod, &target::fd_path(&fd), target)?;
        drop(fd);
        // Reopened: the path now shows the new mount's root.
        let bound = match parent.entry()? {
            target::Entry::Dir(fd) => fd,
            _ => {
                return Err(StoreError::Conflict {
                    op: "mount",
                    path: target.to_owned(),
                    reason: "the target vanished right after the mount".into(),
                });
            }
        };
        mounts::remount_read_only(&target::fd_path(&bound)).inspect_err(|_| {
            // A writable bind must not stay behind for the pod to see.
            drop(bound);
            let _ = mounts::unmount_nofollow(&parent.name_path(), target);
        })
    }

    /// Whether `target` currently shows this volume's pod directory. A
    /// path with a symlink never does.
    pub fn is_mounted_at(&self, target: &Path) -> Result<bool, StoreError> {
        let parent = match target::open_parent(target) {
            Ok(Some(parent)) => parent,
            Ok(None) | Err(StoreError::UnsafeTarget { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        let pod = self.pod_path();
        if self.mode == MountMode::Files {
            return Ok(matches!(parent.entry()?, target::Entry::Symlink(link) if link == pod));
        }
        let target::Entry::Dir(fd) = parent.entry()? else {
            return Ok(false);
        };
        let Some(ours) = mounts::identity(&pod)? else {
            return Ok(false);
        };
        let shown =
            target::fd_identity(&fd).map_err(|e| StoreError::mount("inspect", target, e))?;
        // Equal inodes on another device than the parent's: a bind mount
        // of ours.
        Ok(shown == ours && shown.0 != parent.identity()?.0)
    }

    /// An error if the tmpfs vanished (node reboot, someone unmounted it):
    /// writing then would land on persistent disk.
    fn ensure_tmpfs(&self, op: &'static str) -> Result<(), StoreError> {
        if let Some(csi) = &self.csi_driver {
            return csi.require(op);
        }
        let mnt = self.tmpfs_path();
        if self.mode == MountMode::Files {
            return if mnt.is_dir() {
                Ok(())
            } else {
                Err(StoreError::Conflict {
                    op,
                    path: mnt,
                    reason: "the volume's directory is gone; prepare the volume again".into(),
                })
            };
        }
        if mounts::is_tmpfs_mount(&mnt)? {
            Ok(())
        } else {
            Err(StoreError::Conflict {
                op,
                path: mnt,
                reason: "the volume's tmpfs is not mounted; prepare the volume again".into(),
            })
        }
    }
}

/// What a publish finds at its target.
enum TargetFound {
    Absent,
    EmptyDir,
    /// This volume's own mount, open (`None`: its own symlink).
    Ours(Option<std::os::fd::OwnedFd>),
}

/// Sorts out the target's current entry for the volume whose pod
/// directory is `pod`; anything that is neither absent, empty nor ours is
/// an error naming what is there.
fn check_target_entry(
    parent: &target::TargetParent,
    pod: &Path,
    mode: MountMode,
) -> Result<TargetFound, StoreError> {
    let path = parent.path();
    let unusable = |what: &str| StoreError::UnsafeTarget {
        path: target::quote(path.as_os_str()),
        reason: format!(
            "is {what}; cert-csi mounts only on a directory it creates or on an empty one"
        ),
    };
    match parent.entry()? {
        target::Entry::Absent => Ok(TargetFound::Absent),
        target::Entry::Other => Err(unusable("not a directory")),
        target::Entry::Symlink(link) => {
            if mode == MountMode::Files && link == pod {
                Ok(TargetFound::Ours(None))
            } else {
                Err(unusable("a symbolic link"))
            }
        }
        target::Entry::Dir(fd) => {
            let shown =
                target::fd_identity(&fd).map_err(|e| StoreError::mount("inspect", path, e))?;
            if mode == MountMode::Kernel && Some(shown) == mounts::identity(pod)? {
                return Ok(TargetFound::Ours(Some(fd)));
            }
            if shown.0 != parent.identity()?.0 {
                return Err(StoreError::Conflict {
                    op: "mount",
                    path: path.to_owned(),
                    reason: "another filesystem is already mounted there; \
                             unpublish the volume that owns it first"
                        .into(),
                });
            }
            if !target::is_empty_dir(&fd, path)? {
                return Err(StoreError::Conflict {
                    op: "mount",
                    path: path.to_owned(),
                    reason: "the directory is not empty; cert-csi mounts only over an \
                             empty directory so that nothing there is hidden"
                        .into(),
                });
            }
            Ok(TargetFound::EmptyDir)
        }
    }
}

/// Whether anything is mounted at `path` (compared after resolving
/// symlinks). Reads /proc/self/mountinfo, so it is meant for checks and
/// tests, not for every request.
pub fn is_mounted(path: &Path) -> Result<bool, StoreError> {
    let path = match path.canonicalize() {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(StoreError::io("resolve", path, e)),
    };
    Ok(mounts::top_mount(&path)?.is_some())
}

/// `rm -r` that refuses to cross into another filesystem, so a mount left
/// below the volume directory is reported instead of emptied.
fn remove_tree_on_device(path: &Path, dev: u64) -> Result<(), StoreError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::io("inspect", path, e)),
    };
    if meta.dev() != dev {
        return Err(StoreError::Conflict {
            op: "remove volume",
            path: path.to_owned(),
            reason: "another filesystem is still mounted there; unmount it".into(),
        });
    }
    let result = if meta.is_dir() {
        let entries = fs::read_dir(path).map_err(|e| StoreError::io("list", path, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io("list", path, e))?;
            remove_tree_on_device(&entry.path(), dev)?;
        }
        fs::remove_dir(path)
    } else {
        fs::remove_file(path)
    };
    match result {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StoreError::io("remove", path, e)),
        _ => Ok(()),
    }
}

fn create_private_dir(path: &Path) -> Result<(), StoreError> {
    create_dir_with_mode(path, 0o700)
}

fn create_dir_with_mode(path: &Path, mode: u32) -> Result<(), StoreError> {
    match DirBuilder::new().mode(mode).create(path) {
        Ok(()) => fs::set_permissions(path, Permissions::from_mode(mode))
            .map_err(|e| StoreError::io("change mode of", path, e)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::io("create directory", path, e)),
    }
}

fn create_private_dir_all(path: &Path) -> Result<(), StoreError> {
    DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(path)
        .map_err(|e| StoreError::io("create directory", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_range_checked() {
        StoreOptions::default().validate().unwrap();
        let tiny = StoreOptions {
            tmpfs_size_bytes: 1024,
            ..StoreOptions::default()
        };
        let err = tiny.validate().unwrap_err();
        assert!(err.to_string().contains("tmpfs_size_bytes"), "{err}");
        let few = StoreOptions {
            tmpfs_max_inodes: 1,
            ..StoreOptions::default()
        };
        assert!(
            few.validate()
                .unwrap_err()
                .to_string()
                .contains("tmpfs_max_inodes")
        );
    }

    #[test]
    fn state_round_trip_without_mounts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("root")).unwrap();
        let id = "csi-abc";
        fs::create_dir(store.root().join(VOLUMES_DIR).join(id)).unwrap();
        let state = VolumeState::new(id, "/target", Default::default(), "fp");
        store.save_state(&state).unwrap();
        assert_eq!(store.load_state(id).unwrap(), state);
        assert_eq!(store.list().unwrap(), vec![state]);
        assert!(store.load_state("csi-other").unwrap_err().is_not_found());
        assert!(store.load_state("../x").unwrap_err().is_invalid_argument());
    }
}
