//! The kubelet-AtomicWriter-style swap of a pod's files.
//!
//! Layout of the pod directory after a publish of `tls.crt` and `tls.key`:
//!
//! ```text
//! ..2025_01_01_00_00_00.123456789/  tls.crt  tls.key   (one generation)
//! ..data -> ..2025_01_01_00_00_00.123456789
//! tls.crt -> ..data/tls.crt
//! tls.key -> ..data/tls.key
//! ```
//!
//! A new generation is written in full before one `rename` points `..data`
//! at it, so a reader that resolves `..data` once sees one complete
//! generation. The per-name symlinks never change while a name stays, so a
//! path such as `tls.key` never disappears.
//!
//! Unlike the kubelet, the generation just replaced is kept until the next
//! publish. A reader that resolved `..data` to it an instant before the
//! swap (or that holds the directory open to read several files) would
//! otherwise find its files deleted under it; keeping it costs one more
//! copy of files the pod has already read, in the volume's own tmpfs.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::{self, DirBuilder, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::StoreError;
use super::names::validate_file_name;

/// The symlink that names the current generation.
pub const DATA_LINK: &str = "..data";
const DATA_LINK_TMP: &str = "..data_tmp";

/// File mode without a group: only the owner (root) reads.
pub const FILE_MODE: u32 = 0o440;
/// File mode with a group (the pod's fsGroup): the group reads too, and
/// nobody writes, as csi-lib writes them (0440 with the group set).
pub const FILE_MODE_WITH_GROUP: u32 = 0o440;
/// Directory mode without a group.
pub const DIR_MODE: u32 = 0o550;
/// Directory mode with a group: as csi-lib's data directory, 0550.
pub const DIR_MODE_WITH_GROUP: u32 = 0o550;

/// The file mode the design prescribes for `gid`.
pub fn default_file_mode(gid: Option<u32>) -> u32 {
    if gid.is_some() {
        FILE_MODE_WITH_GROUP
    } else {
        FILE_MODE
    }
}

fn dir_mode(gid: Option<u32>) -> u32 {
    if gid.is_some() {
        DIR_MODE_WITH_GROUP
    } else {
        DIR_MODE
    }
}

/// Checks names and modes before anything touches the disk.
fn validate_files<N: AsRef<str>, B: AsRef<[u8]>>(
    files: &[(N, B, u32)],
) -> Result<BTreeSet<&str>, StoreError> {
    let mut names = BTreeSet::new();
    for (name, _, mode) in files {
        let name = name.as_ref();
        validate_file_name(name)?;
        if !names.insert(name) {
            return Err(StoreError::InvalidFileName {
                name: name.to_owned(),
                reason: "it appears twice in one publish",
            });
        }
        // Execute and set-id bits mean nothing on a noexec mount and only
        // hint at a caller bug.
        if mode & !0o666 != 0 {
            return Err(StoreError::InvalidOption {
                field: "mode",
                value: format!("{mode:#o} (for {name})"),
                reason: "only read and write bits (0o666) are allowed",
            });
        }
    }
    Ok(names)
}

/// Whose modes and owners a publish gives the pod directory, its
/// generations and their files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Modes {
    /// cert-csi's own volumes: the modes the caller gives, directories
    /// [`DIR_MODE`] (or [`DIR_MODE_WITH_GROUP`]), group-owned by `gid` or
    /// root.
    Own,
    /// The demo's no-mount fallback, run by a normal user: directories keep
    /// their owner-only modes and groups are left alone (a normal user can
    /// neither chown to root's group nor write into a 0550 directory it
    /// owns).
    Unprivileged,
    /// A volume adopted from cert-manager's csi-driver, written as csi-lib
    /// writes it (storage/filesystem.go, the kubelet's AtomicWriter): every
    /// file [`CSI_LIB_FILE_MODE`] whatever the caller asks, group `gid`
    /// when set; generation directories 0755; the data directory keeps its
    /// mode and only takes `gid` as its group.
    CsiLib,
}

/// The mode csi-lib gives every file of a volume, with or without a group.
pub const CSI_LIB_FILE_MODE: u32 = 0o440;
/// The mode of the kubelet AtomicWriter's generation directories.
const CSI_LIB_GENERATION_MODE: u32 = 0o755;

/// Writes `files` as a new generation in `pod` and swaps it in, with the
/// modes and owners `modes` says.
pub(crate) fn publish<N: AsRef<str>, B: AsRef<[u8]>>(
    pod: &Path,
    files: &[(N, B, u32)],
    gid: Option<u32>,
    modes: Modes,
) -> Result<(), StoreError> {
    let names = validate_files(files)?;

    let generation = create_generation_dir(pod)?;
    let gen_path = pod.join(&generation);
    if let Err(e) = write_generation(&gen_path, files, gid, modes) {
        let _ = fs::remove_dir_all(&gen_path);
        return Err(e);
    }
    match modes {
        Modes::Own => set_owner_and_mode(pod, gid, dir_mode(gid))?,
        Modes::Unprivileged => {}
        Modes::CsiLib => {
            if let Some(gid) = gid {
                std::os::unix::fs::chown(pod, None, Some(gid))
                    .map_err(|e| StoreError::io("change group of", pod, e))?;
            }
        }
    }

    // The swap itself: a symlink under a temporary name renamed over
    // `..data`, which rename(2) replaces atomically.
    let tmp_link = pod.join(DATA_LINK_TMP);
    remove_if_exists(&tmp_link)?;
    std::os::unix::fs::symlink(&generation, &tmp_link)
        .map_err(|e| StoreError::io("create symlink", &tmp_link, e))?;
    let data_link = pod.join(DATA_LINK);
    let previous = fs::read_link(&data_link)
        .ok()
        .and_then(|p| p.into_os_string().into_string().ok());
    fs::rename(&tmp_link, &data_link).map_err(|e| StoreError::io("swap", &data_link, e))?;

    for name in &names {
        ensure_name_link(pod, name)?;
    }
    remove_stale(pod, &names, &generation, previous.as_deref())
}

/// Makes `..<timestamp>`, unique even when two publishes share a nanosecond.
fn create_generation_dir(pod: &Path) -> Result<String, StoreError> {
    let now = jiff::Timestamp::now();
    let base = format!(
        "..{}.{:09}",
        now.strftime("%Y_%m_%d_%H_%M_%S"),
        now.subsec_nanosecond()
    );
    for n in 0u32.. {
        let name = if n == 0 {
            base.clone()
        } else {
            format!("{base}_{n}")
        };
        let path = pod.join(&name);
        // 0700 while it fills; opened up only once complete.
        match DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => return Ok(name),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(StoreError::io("create directory", &path, e)),
        }
    }
    unreachable!("u32 range exhausted while naming a generation directory")
}

fn write_generation<N: AsRef<str>, B: AsRef<[u8]>>(
    dir: &Path,
    files: &[(N, B, u32)],
    gid: Option<u32>,
    modes: Modes,
) -> Result<(), StoreError> {
    for (name, contents, mode) in files {
        let path = dir.join(name.as_ref());
        let mode = match modes {
            Modes::CsiLib => &CSI_LIB_FILE_MODE,
            Modes::Own | Modes::Unprivileged => mode,
        };
        let write = || -> io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            f.write_all(contents.as_ref())?;
            if gid.is_some() {
                std::os::unix::fs::fchown(&f, None, gid)?;
            }
            // Explicitly, because the process umask must not decide this.
            f.set_permissions(Permissions::from_mode(*mode))
        };
        write().map_err(|e| StoreError::io("write file", &path, e))?;
    }
    match modes {
        Modes::Own => set_owner_and_mode(dir, gid, dir_mode(gid)),
        Modes::Unprivileged => Ok(()),
        Modes::CsiLib => fs::set_permissions(dir, Permissions::from_mode(CSI_LIB_GENERATION_MODE))
            .map_err(|e| StoreError::io("change mode of", dir, e)),
    }
}

fn set_owner_and_mode(path: &Path, gid: Option<u32>, mode: u32) -> Result<(), StoreError> {
    // Without a gid the group goes back to root's, so a volume that loses
    // its fsGroup does not keep granting the old group access.
    std::os::unix::fs::chown(path, None, Some(gid.unwrap_or(0)))
        .map_err(|e| StoreError::io("change group of", path, e))?;
    fs::set_permissions(path, Permissions::from_mode(mode))
        .map_err(|e| StoreError::io("change mode of", path, e))
}

/// Creates `name -> ..data/name` unless it is already exactly that.
fn ensure_name_link(pod: &Path, name: &str) -> Result<(), StoreError> {
    let link = pod.join(name);
    let want = Path::new(DATA_LINK).join(name);
    match fs::read_link(&link) {
        Ok(target) if target == want => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return std::os::unix::fs::symlink(&want, &link)
                .map_err(|e| StoreError::io("create symlink", &link, e));
        }
        // Something else sits there (a wrong link, or a file from an older
        // layout): replace it atomically so the name never vanishes.
        _ => {}
    }
    if fs::symlink_metadata(&link).is_ok_and(|m| m.is_dir()) {
        return Err(StoreError::Conflict {
            op: "publish",
            path: link,
            reason: "a directory occupies a published file name; remove it".into(),
        });
    }
    let tmp = pod.join(format!("..tmp_{name}"));
    remove_if_exists(&tmp)?;
    std::os::unix::fs::symlink(&want, &tmp)
        .map_err(|e| StoreError::io("create symlink", &tmp, e))?;
    fs::rename(&tmp, &link).map_err(|e| StoreError::io("replace", &link, e))
}

/// Drops names no longer published, temporary links and every generation
/// but the current and the previous one.
fn remove_stale(
    pod: &Path,
    names: &BTreeSet<&str>,
    current: &str,
    previous: Option<&str>,
) -> Result<(), StoreError> {
    let entries = fs::read_dir(pod).map_err(|e| StoreError::io("list", pod, e))?;
    let mut old_generations = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io("list", pod, e))?;
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str() else {
            // Nothing here was written with a non-UTF-8 name by us.
            remove_entry(&entry.path())?;
            continue;
        };
        if let Some(rest) = name.strip_prefix("..") {
            let keep = name == DATA_LINK || name == current || Some(name) == previous;
            if !keep && !rest.is_empty() {
                old_generations.push(entry.path());
            }
        } else if !names.contains(name) {
            remove_entry(&entry.path())?;
        }
    }
    for path in old_generations {
        remove_entry(&path)?;
    }
    Ok(())
}

fn remove_entry(path: &Path) -> Result<(), StoreError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::io("inspect", path, e)),
    };
    let result = if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match result {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StoreError::io("remove", path, e)),
        _ => Ok(()),
    }
}

fn remove_if_exists(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StoreError::io("remove", path, e)),
        _ => Ok(()),
    }
}

/// The generation directory `..data` points at, if any.
pub fn current_generation(pod: &Path) -> Option<PathBuf> {
    let target = fs::read_link(pod.join(DATA_LINK)).ok()?;
    (target.parent() == Some(Path::new("")) && target != OsStr::new("")).then(|| pod.join(target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_names_and_exec_bits_are_refused_before_writing() {
        let dup: &[(&str, &[u8], u32)] = &[("a", b"1", 0o440), ("a", b"2", 0o440)];
        assert!(
            validate_files(dup)
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
        let exec: &[(&str, &[u8], u32)] = &[("a", b"1", 0o550)];
        assert!(
            validate_files(exec)
                .unwrap_err()
                .to_string()
                .contains("mode")
        );
        let reserved: &[(&str, &[u8], u32)] = &[("..data", b"1", 0o440)];
        assert!(validate_files(reserved).is_err());
    }

    #[test]
    fn publish_in_a_plain_directory() {
        // The swap needs no mount; root is only needed for chown to a gid,
        // so this test passes None.
        let dir = tempfile::tempdir().unwrap();
        let pod = dir.path();
        publish(
            pod,
            &[("a", "one", 0o440), ("b", "one", 0o440)],
            None,
            Modes::Own,
        )
        .unwrap();
        let first = current_generation(pod).unwrap();
        assert_eq!(fs::read_to_string(pod.join("a")).unwrap(), "one");
        publish(pod, &[("a", "two", 0o440)], None, Modes::Own).unwrap();
        let second = current_generation(pod).unwrap();
        assert_ne!(first, second);
        assert!(first.exists(), "the previous generation is kept once");
        assert_eq!(fs::read_to_string(pod.join("a")).unwrap(), "two");
        assert!(
            fs::symlink_metadata(pod.join("b")).is_err(),
            "stale name removed"
        );
        publish(pod, &[("a", "three", 0o440)], None, Modes::Own).unwrap();
        assert!(!first.exists(), "older generations are removed");
        assert!(second.exists());
        let names: Vec<_> = fs::read_dir(pod)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 4, "{names:?}");
    }

    #[test]
    fn a_foreign_file_under_a_published_name_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let pod = dir.path();
        fs::write(pod.join("tls.crt"), "left over").unwrap();
        publish(pod, &[("tls.crt", "new", 0o440)], None, Modes::Own).unwrap();
        assert_eq!(
            fs::read_link(pod.join("tls.crt")).unwrap(),
            Path::new("..data/tls.crt")
        );
        assert_eq!(fs::read_to_string(pod.join("tls.crt")).unwrap(), "new");
    }

    #[test]
    fn csi_lib_modes_are_csi_libs_whatever_the_caller_asks() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let pod = dir.path().join("data");
        // csi-lib makes it 0550; 0750 lets a test run by a normal user
        // write into it, and any mode must stay as it is.
        DirBuilder::new().mode(0o750).create(&pod).unwrap();
        fs::set_permissions(&pod, Permissions::from_mode(0o750)).unwrap();
        publish(&pod, &[("tls.crt", "one", 0o640)], None, Modes::CsiLib).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        let generation = current_generation(&pod).unwrap();
        assert_eq!(mode(&generation.join("tls.crt")), CSI_LIB_FILE_MODE);
        assert_eq!(mode(&generation), CSI_LIB_GENERATION_MODE);
        assert_eq!(mode(&pod), 0o750, "the data directory keeps its mode");
        assert_eq!(fs::read_to_string(pod.join("tls.crt")).unwrap(), "one");
    }
}
