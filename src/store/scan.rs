//! A check for tests and audits: no private key lies on persistent disk.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::sys::statfs::{TMPFS_MAGIC, statfs};

const MARKER: &[u8] = b"PRIVATE KEY";

/// Walks `data_root` and fails, listing the files, if any file outside a
/// tmpfs mounted below it contains `PRIVATE KEY`. Symlinks are not followed.
pub fn assert_no_key_material_outside_tmpfs(data_root: &Path) -> Result<(), String> {
    let root_dev = fs::metadata(data_root)
        .map_err(|e| format!("inspect {}: {e}", data_root.display()))?
        .dev();
    let mut offenders = Vec::new();
    walk(data_root, root_dev, &mut offenders)?;
    if offenders.is_empty() {
        Ok(())
    } else {
        let list: Vec<String> = offenders.iter().map(|p| p.display().to_string()).collect();
        Err(format!(
            "private key material on persistent disk under {}: {}",
            data_root.display(),
            list.join(", ")
        ))
    }
}

fn walk(dir: &Path, root_dev: u64, offenders: &mut Vec<PathBuf>) -> Result<(), String> {
    let entries = fs::read_dir(dir).map_err(|e| format!("list {}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("list {}: {e}", dir.display()))?;
        let path = entry.path();
        let meta =
            fs::symlink_metadata(&path).map_err(|e| format!("inspect {}: {e}", path.display()))?;
        if meta.is_dir() {
            // A different device that is a tmpfs is a volume's memory-backed
            // mount, where keys belong. A tmpfs data root itself is still
            // scanned, since its device equals the root's.
            let is_tmpfs_mount = meta.dev() != root_dev
                && statfs(&path).is_ok_and(|s| s.filesystem_type() == TMPFS_MAGIC);
            if !is_tmpfs_mount {
                walk(&path, root_dev, offenders)?;
            }
        } else if meta.is_file() {
            let bytes = fs::read(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
            if bytes.windows(MARKER.len()).any(|w| w == MARKER) {
                offenders.push(path);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_key_in_a_nested_plain_directory() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("a/b")).unwrap();
        fs::write(dir.path().join("a/b/state.json"), "{}").unwrap();
        assert_no_key_material_outside_tmpfs(dir.path()).unwrap();
        // A fake PEM header, assembled at run time so the source tree itself
        // never contains something that looks like a committed key.
        let fake = format!("-----BEGIN {}-----\nAAAA\n", "PRIVATE KEY");
        fs::write(dir.path().join("a/b/leak"), fake).unwrap();
        let err = assert_no_key_material_outside_tmpfs(dir.path()).unwrap_err();
        assert!(err.contains("a/b/leak"), "{err}");
    }
}
