//! Reaching a pod's target path without following a symlink.
//!
//! The parent of the kubelet's target path is opened with `openat2` and
//! `RESOLVE_NO_SYMLINKS` or, where that fails, walked from `/` one
//! component at a time with `O_PATH | O_DIRECTORY | O_NOFOLLOW`: a symlink
//! anywhere in it is refused, never followed. Mounts and unmounts then go
//! through the opened directories (`/proc/self/fd/<fd>`), so a directory
//! swapped for a symlink after the check cannot redirect them.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag, OpenHow, ResolveFlag, openat, openat2, readlinkat};
use nix::sys::stat::{Mode, SFlag, fstat, fstatat, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};

use super::StoreError;

fn dir_flags() -> OFlag {
    OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// `path` quoted, cut to a short prefix (see `volume::short_quote`).
pub(crate) fn quote(path: &OsStr) -> String {
    crate::volume::short_quote(&path.to_string_lossy())
}

/// The directory holding a target path, opened without following symlinks,
/// and the target's own name in it.
pub(crate) struct TargetParent {
    fd: OwnedFd,
    name: OsString,
    /// The whole target path, for messages.
    path: PathBuf,
}

/// What is at the target's name, looked at without following a symlink.
pub(crate) enum Entry {
    Absent,
    /// A directory, opened as the path resolves now: the root of whatever
    /// is mounted on top of it.
    Dir(OwnedFd),
    Symlink(PathBuf),
    Other,
}

/// Device and inode behind an open file.
pub(crate) fn fd_identity(fd: impl AsFd) -> Result<(u64, u64), Errno> {
    let st = fstat(fd)?;
    Ok((st.st_dev, st.st_ino))
}

/// The magic link naming an open file: mounting on it reaches exactly that
/// directory, whatever the path now holds.
pub(crate) fn fd_path(fd: &impl AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn unsafe_target(path: &Path, prefix: &Path, reason: &str) -> StoreError {
    StoreError::UnsafeTarget {
        path: quote(path.as_os_str()),
        reason: format!("{} {reason}", quote(prefix.as_os_str())),
    }
}

/// Opens the parent directory of `target` from `/`, refusing every symlink
/// on the way. `None` when a directory on the way does not exist.
pub(crate) fn open_parent(target: &Path) -> Result<Option<TargetParent>, StoreError> {
    let mut components = target.components();
    if components.next() != Some(Component::RootDir) {
        return Err(unsafe_target(target, target, "is not an absolute path"));
    }
    let parts: Vec<&OsStr> = components
        .map(|c| match c {
            Component::Normal(name) => Ok(name),
            _ => Err(unsafe_target(
                target,
                target,
                "contains '.' or '..'; pass a clean path",
            )),
        })
        .collect::<Result<_, _>>()?;
    let Some((name, dirs)) = parts.split_last() else {
        return Err(unsafe_target(target, target, "cannot be a mount target"));
    };
    // One openat2 call resolves the whole parent while refusing every
    // symlink, where the walk below costs two syscalls per component (24
    // for a kubelet target, twice per publish in strace). Anything it
    // cannot open, or a kernel or seccomp profile without openat2, takes
    // the walk, which says which component failed and why.
    if let Some(parent) = target.parent()
        && let Ok(fd) = openat2(
            AT_FDCWD,
            parent,
            OpenHow::new()
                .flags(dir_flags())
                .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS),
        )
    {
        return Ok(Some(TargetParent {
            fd,
            name: name.to_os_string(),
            path: target.to_path_buf(),
        }));
    }
    let mut fd = openat(AT_FDCWD, "/", dir_flags(), Mode::empty())
        .map_err(|e| StoreError::mount("open", "/", e))?;
    let mut walked = PathBuf::from("/");
    for part in dirs {
        walked.push(part);
        fd = match openat(&fd, *part, dir_flags(), Mode::empty()) {
            Ok(next) => next,
            Err(Errno::ENOENT) => return Ok(None),
            Err(Errno::ENOTDIR | Errno::ELOOP) => {
                let symlink = fstatat(&fd, *part, AtFlags::AT_SYMLINK_NOFOLLOW)
                    .is_ok_and(|st| SFlag::from_bits_truncate(st.st_mode) == SFlag::S_IFLNK);
                return Err(unsafe_target(
                    target,
                    &walked,
                    if symlink {
                        "is a symbolic link; cert-csi follows no symlink in a target path: \
                         pass the real path the kubelet uses"
                    } else {
                        "is not a directory"
                    },
                ));
            }
            Err(e) => return Err(StoreError::mount("open", walked, e)),
        };
    }
    Ok(Some(TargetParent {
        fd,
        name: name.to_os_string(),
        path: target.to_path_buf(),
    }))
}

impl TargetParent {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// `/proc/self/fd/<parent>/<name>`: resolves the target's name inside
    /// the opened parent (the final component follows nothing when the
    /// caller asks for no-follow).
    pub(crate) fn name_path(&self) -> PathBuf {
        fd_path(&self.fd).join(&self.name)
    }

    pub(crate) fn identity(&self) -> Result<(u64, u64), StoreError> {
        fd_identity(&self.fd).map_err(|e| StoreError::mount("inspect", self.parent_path(), e))
    }

    fn parent_path(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("/"))
    }

    /// What the target's name holds now.
    pub(crate) fn entry(&self) -> Result<Entry, StoreError> {
        let st = match fstatat(
            &self.fd,
            self.name.as_os_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Ok(Entry::Absent),
            Err(e) => return Err(StoreError::mount("inspect", &self.path, e)),
        };
        match SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) {
            SFlag::S_IFLNK => match readlinkat(&self.fd, self.name.as_os_str()) {
                Ok(link) => Ok(Entry::Symlink(PathBuf::from(link))),
                Err(Errno::ENOENT) => Ok(Entry::Absent),
                Err(e) => Err(StoreError::mount("read link", &self.path, e)),
            },
            SFlag::S_IFDIR => self.open_dir(),
            _ => Ok(Entry::Other),
        }
    }

    fn open_dir(&self) -> Result<Entry, StoreError> {
        match openat(&self.fd, self.name.as_os_str(), dir_flags(), Mode::empty()) {
            Ok(fd) => Ok(Entry::Dir(fd)),
            Err(Errno::ENOENT) => Ok(Entry::Absent),
            Err(Errno::ENOTDIR | Errno::ELOOP) => Ok(Entry::Other),
            Err(e) => Err(StoreError::mount("open", &self.path, e)),
        }
    }

    /// Creates the target directory; an existing one is fine.
    pub(crate) fn mkdir(&self, mode: u32) -> Result<(), StoreError> {
        match mkdirat(
            &self.fd,
            self.name.as_os_str(),
            Mode::from_bits_truncate(mode),
        ) {
            Ok(()) | Err(Errno::EEXIST) => Ok(()),
            Err(e) => Err(StoreError::mount("create target directory", &self.path, e)),
        }
    }

    /// Removes the (empty, unmounted) target directory; absent is fine.
    pub(crate) fn rmdir(&self) -> Result<(), StoreError> {
        match unlinkat(&self.fd, self.name.as_os_str(), UnlinkatFlags::RemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(Errno::ENOTEMPTY | Errno::EEXIST) => Err(StoreError::Conflict {
                op: "remove target",
                path: self.path.clone(),
                reason: "the directory holds files cert-csi did not put there; \
                         it was left in place"
                    .into(),
            }),
            Err(e) => Err(StoreError::mount("remove target", &self.path, e)),
        }
    }

    /// Removes the target when it is a symlink.
    pub(crate) fn unlink(&self) -> Result<(), StoreError> {
        match unlinkat(&self.fd, self.name.as_os_str(), UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(StoreError::mount("remove target link", &self.path, e)),
        }
    }

    /// Creates the target as a symlink to `to`.
    pub(crate) fn symlink(&self, to: &Path) -> Result<(), StoreError> {
        nix::unistd::symlinkat(to, &self.fd, self.name.as_os_str())
            .map_err(|e| StoreError::mount("link target", &self.path, e))
    }
}

/// Whether the directory open as `fd` has no entries.
pub(crate) fn is_empty_dir(fd: &OwnedFd, path: &Path) -> Result<bool, StoreError> {
    let mut entries =
        std::fs::read_dir(fd_path(fd)).map_err(|e| StoreError::io("list", path, e))?;
    Ok(entries.next().is_none())
}
