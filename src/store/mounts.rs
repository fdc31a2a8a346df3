//! Mount and unmount system calls the store makes.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::statfs::{TMPFS_MAGIC, statfs};
use nix::sys::statvfs::{FsFlags, statvfs};

use super::StoreError;
use super::mountinfo::{MountEntry, mounts_at};

/// The mount source shown in mountinfo, so an operator can tell cert-csi's
/// tmpfs mounts apart from others.
pub const TMPFS_SOURCE: &str = "cert-csi";

/// Flags of every mount the pod can reach.
fn hardening() -> MsFlags {
    MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_NOSUID
}

pub(crate) fn mount_tmpfs(mnt: &Path, size_bytes: u64, max_inodes: u64) -> Result<(), StoreError> {
    let data = format!("size={size_bytes},nr_inodes={max_inodes},mode=0700");
    mount(
        Some(TMPFS_SOURCE),
        mnt,
        Some("tmpfs"),
        hardening(),
        Some(data.as_str()),
    )
    .map_err(|e| StoreError::mount("mount tmpfs at", mnt, e))
}

/// Bind-mounts `src` at `target` (a `/proc/self/fd/<fd>` path of the
/// opened target directory; `shown` names it in errors). The caller makes
/// it read-only with [`remount_read_only`] on the new mount.
pub(crate) fn bind(src: &Path, target: &Path, shown: &Path) -> Result<(), StoreError> {
    mount(
        Some(src),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| StoreError::mount("bind mount at", shown, e))
}

/// Unmounts the mount on top at `path` without following a symlink in its
/// last component; a busy mount is detached lazily, which frees it once
/// the last user goes. `shown` names it in errors.
pub(crate) fn unmount_nofollow(path: &Path, shown: &Path) -> Result<(), StoreError> {
    match umount2(path, MntFlags::UMOUNT_NOFOLLOW) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => Ok(()),
        Err(Errno::EBUSY) => {
            match umount2(path, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
                Ok(()) | Err(Errno::EINVAL) => Ok(()),
                Err(e) => Err(StoreError::mount("detach", shown, e)),
            }
        }
        Err(e) => Err(StoreError::mount("unmount", shown, e)),
    }
}

pub(crate) fn remount_read_only(target: &Path) -> Result<(), StoreError> {
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | hardening(),
        None::<&str>,
    )
    .map_err(|e| StoreError::mount("remount read-only", target, e))
}

/// Unmounts every mount stacked at `path`; nothing mounted is success.
/// A busy mount is detached lazily, which frees it once the last user goes.
///
/// This asks the kernel (EINVAL means "not a mount point") rather than
/// /proc/self/mountinfo, which costs milliseconds per read once a node has
/// thousands of mounts (two per volume).
pub(crate) fn unmount_all(path: &Path) -> Result<(), StoreError> {
    // Bounded, in case the kernel keeps reporting a mount it will not drop.
    for _ in 0..16 {
        match umount2(path, MntFlags::empty()) {
            Ok(()) => {}
            Err(Errno::EINVAL) | Err(Errno::ENOENT) => return Ok(()),
            Err(Errno::EBUSY) => umount2(path, MntFlags::MNT_DETACH)
                .map_err(|e| StoreError::mount("detach", path, e))?,
            Err(e) => return Err(StoreError::mount("unmount", path, e)),
        }
    }
    Err(StoreError::Conflict {
        op: "unmount",
        path: path.to_owned(),
        reason: "still mounted after 16 unmounts; inspect /proc/self/mountinfo".into(),
    })
}

/// The mount on top at `path`, if any.
pub(crate) fn top_mount(path: &Path) -> Result<Option<MountEntry>, StoreError> {
    Ok(mounts_at(path)?.pop())
}

/// Device and inode of `path` (following symlinks); `None` if it is absent.
/// A bind mount shows the very inode of its source, so equal identities
/// mean "this is that directory".
pub(crate) fn identity(path: &Path) -> Result<Option<(u64, u64)>, StoreError> {
    match fs::metadata(path) {
        Ok(m) => Ok(Some((m.dev(), m.ino()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io("inspect", path, e)),
    }
}

/// Whether another filesystem is mounted at `path`: its device differs
/// from its parent directory's. (A bind mount from the same filesystem is
/// not detected; the store never makes one.)
pub(crate) fn is_foreign_device(path: &Path) -> Result<bool, StoreError> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    match (identity(path)?, identity(parent)?) {
        (Some((dev, _)), Some((parent_dev, _))) => Ok(dev != parent_dev),
        _ => Ok(false),
    }
}

/// Whether `path` is the root of a tmpfs mounted over its parent's device.
pub(crate) fn is_tmpfs_mount(path: &Path) -> Result<bool, StoreError> {
    Ok(is_foreign_device(path)?
        && statfs(path)
            .map_err(|e| StoreError::mount("statfs", path, e))?
            .filesystem_type()
            == TMPFS_MAGIC)
}

/// Whether the mount showing `path` is read-only.
pub(crate) fn is_read_only(path: &Path) -> Result<bool, StoreError> {
    Ok(statvfs(path)
        .map_err(|e| StoreError::mount("statvfs", path, e))?
        .flags()
        .contains(FsFlags::ST_RDONLY))
}
