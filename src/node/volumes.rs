//! The node store as the lifecycle uses it: every disk and mount operation
//! of a publish, renewal, recovery or unpublish, each a named async
//! function that runs the store's blocking call on the blocking pool.
//!
//! Keeping them here, rather than inline at each step, lets a reader (or a
//! grep) see every write the node makes in one place.

use std::path::{Path, PathBuf};

use crate::pki::Secret;
use crate::store::csi_driver::{CsiDriverRoot, Metadata};
use crate::store::{DATA_LINK, Store, StoreError, VolumeDir, VolumeState};

/// Store calls running at once. The calls are mounts and small tmpfs
/// writes that the kernel serialises anyway (mounts take the namespace's
/// lock), so more of them at once buy nothing. Without a bound, a burst of
/// 64 publishes started about 90 blocking threads, each with its own stack
/// pages and allocator arena, which stayed resident after the burst.
const STORE_CALLS_AT_ONCE: usize = 8;
static STORE_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(STORE_CALLS_AT_ONCE);

/// Runs one store call off the async threads.
async fn blocking<T: Send + 'static>(
    op: &'static str,
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    // The semaphore is never closed, so acquiring only waits.
    let _slot = STORE_SLOTS.acquire().await;
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Task {
            op,
            reason: e.to_string(),
        })?
}

/// What a first publish puts in place.
pub struct Delivery<'a> {
    /// Secrets only the plugin reads (renewals reuse them).
    pub private: Vec<(&'static str, Secret)>,
    /// The pod's files: name, content, mode.
    pub files: Vec<(String, Secret, u32)>,
    /// The group the files are readable by.
    pub gid: Option<u32>,
    /// Where the pod's files are bind-mounted.
    pub target: &'a Path,
}

/// What recovery finds of one volume on disk.
pub enum Found {
    /// The volume's tmpfs is mounted; whether its bind mount is still at
    /// the recorded target.
    Tmpfs { at_target: Result<bool, StoreError> },
    /// The tmpfs is gone (node reboot, manual unmount).
    NoTmpfs,
    /// The check itself failed.
    Unknown(StoreError),
}

/// The node store, shared by every volume task.
#[derive(Clone)]
pub struct Volumes {
    store: Store,
}

impl Volumes {
    pub fn new(store: Store) -> Self {
        Volumes { store }
    }

    /// The data root, for messages.
    pub fn root(&self) -> &Path {
        self.store.root()
    }

    /// The volume's saved state, as saved; errors as the store reports them.
    pub async fn load_state(&self, volume_id: &str) -> Result<VolumeState, StoreError> {
        let (store, id) = (self.store.clone(), volume_id.to_string());
        blocking("load state", move || store.load_state(&id)).await
    }

    /// The volume's saved state, or `None` for a volume this node does not
    /// have. State is written without fsync, so a power loss may leave it
    /// unreadable; the same loss took the volume's tmpfs, so there is
    /// nothing left to describe and the caller starts afresh. With the tmpfs
    /// still there the file cannot have been torn by us, and the error
    /// stands for an operator to look at.
    pub async fn current_state(&self, volume_id: &str) -> Result<Option<VolumeState>, StoreError> {
        let (store, id) = (self.store.clone(), volume_id.to_string());
        blocking("load state", move || match store.load_state(&id) {
            Ok(state) => Ok(Some(state)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e @ StoreError::CorruptState { .. }) => {
                if store.existing(&id)?.is_some() {
                    return Err(e);
                }
                tracing::warn!(volume_id = %id, error = %e, "unreadable state of a volume whose tmpfs is gone (node power loss?); starting afresh");
                Ok(None)
            }
            Err(e) => Err(e),
        })
        .await
    }

    pub async fn save_state(&self, state: VolumeState) -> Result<(), StoreError> {
        let store = self.store.clone();
        blocking("save state", move || store.save_state(&state)).await
    }

    /// Refuses a target that is reached through a symlink, or that is
    /// neither absent, empty, nor this volume's own mount.
    pub async fn check_target(&self, volume_id: &str, target: &Path) -> Result<(), StoreError> {
        let (store, id, target) = (
            self.store.clone(),
            volume_id.to_string(),
            target.to_path_buf(),
        );
        blocking("check target", move || store.check_target(&id, &target)).await
    }

    /// Whether the volume's tmpfs is mounted and bound at `target`.
    pub async fn is_mounted_at(&self, volume_id: &str, target: &Path) -> Result<bool, StoreError> {
        let (store, id, target) = (
            self.store.clone(),
            volume_id.to_string(),
            target.to_path_buf(),
        );
        blocking("check mount", move || match store.existing(&id)? {
            Some(dir) => dir.is_mounted_at(&target),
            None => Ok(false),
        })
        .await
    }

    /// Creates the volume's directory and tmpfs, or finds them again.
    pub async fn prepare(&self, volume_id: &str) -> Result<VolumeDir, StoreError> {
        let (store, id) = (self.store.clone(), volume_id.to_string());
        blocking("prepare", move || store.prepare(&id)).await
    }

    /// The volume's directory, whose tmpfs must still be mounted: files are
    /// renewed in place and never into a directory the kubelet no longer
    /// sees.
    pub async fn require(&self, volume_id: &str) -> Result<VolumeDir, StoreError> {
        let (store, id) = (self.store.clone(), volume_id.to_string());
        let path = self.store.root().join("volumes").join(volume_id);
        blocking("find volume", move || {
            store.existing(&id)?.ok_or_else(|| StoreError::Conflict {
                op: "renew",
                path,
                reason: "the volume's tmpfs is not mounted, so the files cannot be renewed in place; the kubelet's next publish sets the volume up again".into(),
            })
        })
        .await
    }

    /// The volume's directory, if its tmpfs is mounted.
    pub async fn existing(&self, volume_id: &str) -> Result<Option<VolumeDir>, StoreError> {
        let (store, id) = (self.store.clone(), volume_id.to_string());
        blocking("find volume", move || store.existing(&id)).await
    }

    pub async fn read_pending_key(&self, dir: &VolumeDir) -> Result<Option<Secret>, StoreError> {
        let dir = dir.clone();
        blocking("read pending key", move || dir.read_pending_key()).await
    }

    /// Before a request is created: keeps its key in the tmpfs, so a
    /// restart resumes that request instead of making another, and saves
    /// the state that names it; one trip to the blocking pool.
    pub async fn stage_request(
        &self,
        dir: &VolumeDir,
        pem: Secret,
        state: VolumeState,
    ) -> Result<(), StoreError> {
        let (store, dir) = (self.store.clone(), dir.clone());
        blocking("stage request", move || {
            dir.write_pending_key(&pem)?;
            store.save_state(&state)
        })
        .await
    }

    /// Forgets the pending key of a volume, if its tmpfs is still there.
    pub async fn clear_pending_key(&self, volume_id: &str) -> Result<(), StoreError> {
        let (store, id) = (self.store.clone(), volume_id.to_string());
        blocking("clear pending key", move || match store.existing(&id)? {
            Some(dir) => dir.clear_pending_key(),
            None => Ok(()),
        })
        .await
    }

    /// A secret from the volume's private tmpfs directory.
    pub async fn read_private(
        &self,
        dir: &VolumeDir,
        name: &'static str,
    ) -> Result<Option<Secret>, StoreError> {
        let dir = dir.clone();
        blocking("read private file", move || dir.read_private(name)).await
    }

    /// One file the pod sees now, read back through the current generation.
    pub async fn read_published(&self, dir: &VolumeDir, name: &str) -> Result<Secret, StoreError> {
        let path: PathBuf = dir.pod_path().join(DATA_LINK).join(name);
        blocking("read published file", move || {
            std::fs::read(&path)
                .map(Secret::new)
                .map_err(|e| StoreError::io("read a published file", &path, e))
        })
        .await
    }

    /// A first publish's delivery: the private secrets renewals need, the
    /// pod's files and the read-only bind mount at the target; then `state`
    /// is saved and the pending key, whose request is done, forgotten.
    pub async fn deliver(
        &self,
        dir: &VolumeDir,
        delivery: Delivery<'_>,
        state: VolumeState,
    ) -> Result<(), StoreError> {
        let (store, dir) = (self.store.clone(), dir.clone());
        let Delivery {
            private,
            files,
            gid,
            target,
        } = delivery;
        let target = target.to_path_buf();
        blocking("deliver", move || {
            for (name, secret) in &private {
                dir.write_private(name, secret)?;
            }
            dir.publish(&files, gid)?;
            dir.mount_at(&target)?;
            store.save_state(&state)?;
            dir.clear_pending_key()
        })
        .await
    }

    /// Swaps the pod's files for `files` in one step.
    pub async fn swap_files(
        &self,
        dir: &VolumeDir,
        files: Vec<(String, Secret, u32)>,
        gid: Option<u32>,
    ) -> Result<(), StoreError> {
        let dir = dir.clone();
        blocking("swap files", move || dir.publish(&files, gid)).await
    }

    /// Records an issued certificate: saves the state and forgets the
    /// pending key, whose request is done.
    pub async fn record_issued(
        &self,
        dir: &VolumeDir,
        state: VolumeState,
    ) -> Result<(), StoreError> {
        let (store, dir) = (self.store.clone(), dir.clone());
        blocking("record issued", move || {
            store.save_state(&state)?;
            dir.clear_pending_key()
        })
        .await
    }

    /// Unmounts the volume at `target` and removes everything of it.
    pub async fn remove(&self, volume_id: &str, target: &Path) -> Result<(), StoreError> {
        let (store, id, target) = (
            self.store.clone(),
            volume_id.to_string(),
            target.to_path_buf(),
        );
        blocking("remove", move || store.remove(&id, &target)).await
    }

    /// cert-manager csi-driver's volumes below its data root `configured`,
    /// each with its metadata or why it could not be read; `None` when
    /// there is nothing to adopt (see [`CsiDriverRoot::open`]).
    pub async fn csi_driver_volumes(
        &self,
        configured: &Path,
    ) -> Result<Option<CsiDriverVolumes>, StoreError> {
        let configured = configured.to_path_buf();
        blocking("survey csi-driver volumes", move || {
            let Some(root) = CsiDriverRoot::open(&configured)? else {
                return Ok(None);
            };
            let volumes = root
                .volume_ids()?
                .into_iter()
                .map(|id| {
                    let metadata = root.read_metadata(&id);
                    (id, metadata)
                })
                .collect();
            Ok(Some(CsiDriverVolumes { root, volumes }))
        })
        .await
    }

    /// Whether csi-driver's bind mount of the volume's data is on top at
    /// `target`, by the mount table.
    pub async fn csi_driver_bound(
        &self,
        root: &CsiDriverRoot,
        volume_id: &str,
        target: &Path,
    ) -> Result<bool, StoreError> {
        let (root, id, target) = (root.clone(), volume_id.to_string(), target.to_path_buf());
        blocking("check csi-driver mount", move || {
            root.is_bound_at(&id, &target)
        })
        .await
    }

    /// Takes over an adopted volume (`state.adopted` says where it lives)
    /// and checks, without following a symlink, that `target` shows its
    /// files. The caller saves the state.
    pub async fn adopt(&self, state: VolumeState) -> Result<(VolumeDir, bool), StoreError> {
        let store = self.store.clone();
        blocking("adopt", move || {
            let dir = store.adopt(&state)?;
            let shown = dir.is_mounted_at(&state.target_path)?;
            Ok((dir, shown))
        })
        .await
    }

    /// Unpublishes a csi-driver volume cert-csi did not adopt.
    pub async fn remove_csi_driver_volume(
        &self,
        root: &Path,
        volume_id: &str,
        target: &Path,
    ) -> Result<(), StoreError> {
        let (store, root, id, target) = (
            self.store.clone(),
            root.to_path_buf(),
            volume_id.to_string(),
            target.to_path_buf(),
        );
        blocking("remove csi-driver volume", move || {
            store.remove_csi_driver_volume(&root, &id, &target)
        })
        .await
    }

    /// Keeps a secret the volume needs at renewal in its private tmpfs
    /// directory.
    pub async fn write_private(
        &self,
        dir: &VolumeDir,
        name: &'static str,
        secret: Secret,
    ) -> Result<(), StoreError> {
        let dir = dir.clone();
        blocking("write private file", move || {
            dir.write_private(name, &secret)
        })
        .await
    }

    pub async fn volume_ids(&self) -> Result<Vec<String>, StoreError> {
        let store = self.store.clone();
        blocking("list volumes", move || store.volume_ids()).await
    }

    /// Every volume in node state, with what is left of it on disk.
    pub async fn survey(&self) -> Result<Vec<(VolumeState, Found)>, StoreError> {
        let store = self.store.clone();
        blocking("recover", move || {
            let mut found = Vec::new();
            for state in store.list()? {
                let here = match store.existing(&state.volume_id) {
                    Ok(Some(dir)) => Found::Tmpfs {
                        at_target: dir.is_mounted_at(&state.target_path),
                    },
                    Ok(None) => Found::NoTmpfs,
                    Err(error) => Found::Unknown(error),
                };
                found.push((state, here));
            }
            Ok(found)
        })
        .await
    }
}

/// What [`Volumes::csi_driver_volumes`] found.
pub struct CsiDriverVolumes {
    pub root: CsiDriverRoot,
    pub volumes: Vec<(String, Result<Metadata, StoreError>)>,
}
