//! A parser for `/proc/self/mountinfo`.
//!
//! `nix` offers no reader for it, and the store needs only a few fields:
//! which filesystem is mounted where, from which device and subtree, and
//! with which per-mount flags.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use super::StoreError;

const MOUNTINFO: &str = "/proc/self/mountinfo";

/// One line of mountinfo (see proc(5)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_id: u32,
    pub parent_id: u32,
    /// `major:minor` of the filesystem's device; equal for a tmpfs and every
    /// bind mount taken from it.
    pub device: (u32, u32),
    /// The directory inside the filesystem that this mount shows.
    pub root: PathBuf,
    pub mount_point: PathBuf,
    /// Per-mount options such as `ro,nosuid,nodev,noexec`.
    pub mount_options: String,
    pub fs_type: String,
    pub source: String,
    /// Per-superblock options such as `size=1024k,mode=700`.
    pub super_options: String,
}

impl MountEntry {
    /// Whether the per-mount options contain `opt` exactly.
    pub fn has_mount_option(&self, opt: &str) -> bool {
        self.mount_options.split(',').any(|o| o == opt)
    }

    /// The value of a per-superblock option such as `size`.
    pub fn super_option(&self, key: &str) -> Option<&str> {
        self.super_options
            .split(',')
            .find_map(|o| o.strip_prefix(key)?.strip_prefix('='))
    }
}

/// Reads and parses the calling process's mount table.
pub fn read_mountinfo() -> Result<Vec<MountEntry>, StoreError> {
    let text = std::fs::read(MOUNTINFO).map_err(|e| StoreError::io("read", MOUNTINFO, e))?;
    parse_mountinfo(&text).map_err(|reason| StoreError::Conflict {
        op: "parse",
        path: MOUNTINFO.into(),
        reason,
    })
}

/// The entries mounted at `path`, in mount order (the last one is on top).
pub fn mounts_at(path: &Path) -> Result<Vec<MountEntry>, StoreError> {
    Ok(read_mountinfo()?
        .into_iter()
        .filter(|m| m.mount_point == path)
        .collect())
}

/// Parses the whole table; an unparseable line is an error naming its number.
pub fn parse_mountinfo(text: &[u8]) -> Result<Vec<MountEntry>, String> {
    text.split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.is_empty())
        .map(|(i, line)| parse_line(line).map_err(|e| format!("line {}: {e}", i + 1)))
        .collect()
}

fn parse_line(line: &[u8]) -> Result<MountEntry, String> {
    let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    // Optional fields (shared:N, master:N …) run until a lone "-".
    let sep = fields
        .iter()
        .position(|f| *f == b"-")
        .ok_or("no '-' separator")?;
    if sep < 6 || fields.len() < sep + 4 {
        return Err(format!("{} fields, expected at least 10", fields.len()));
    }
    let text = |i: usize| String::from_utf8_lossy(&unescape(fields[i])).into_owned();
    let number = |i: usize, what: &str| -> Result<u32, String> {
        std::str::from_utf8(fields[i])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("{what} is not a number"))
    };
    let device = std::str::from_utf8(fields[2])
        .ok()
        .and_then(|s| s.split_once(':'))
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .ok_or("major:minor is malformed")?;
    Ok(MountEntry {
        mount_id: number(0, "mount id")?,
        parent_id: number(1, "parent id")?,
        device,
        root: PathBuf::from(OsString::from_vec(unescape(fields[3]))),
        mount_point: PathBuf::from(OsString::from_vec(unescape(fields[4]))),
        mount_options: text(5),
        fs_type: text(sep + 1),
        source: text(sep + 2),
        super_options: text(sep + 3),
    })
}

/// Undoes the kernel's octal escaping of space, tab, newline and backslash.
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field.get(i + 1..i + 4).and_then(|d| {
            d.iter()
                .all(|c| (b'0'..=b'7').contains(c))
                .then(|| d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0')))
        });
        match (field[i], octal) {
            (b'\\', Some(v)) if v <= 0xff => {
                out.push(v as u8);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
42 27 0:39 / /var/lib/cert-csi/volumes/csi-ab/mnt rw,nosuid,nodev,noexec,relatime - tmpfs cert-csi rw,size=1024k,mode=700
43 27 0:39 /pod /var/lib/kubelet/pods/p\\040q/volumes/kubernetes.io~csi/tls/mount ro,nosuid,nodev,noexec,relatime shared:5 master:2 - tmpfs cert-csi rw,size=1024k,mode=700
";

    #[test]
    fn parses_fields_optional_fields_and_escapes() {
        let entries = parse_mountinfo(SAMPLE.as_bytes()).unwrap();
        assert_eq!(entries.len(), 3);
        let root = &entries[0];
        assert_eq!(root.mount_point, Path::new("/"));
        assert_eq!(root.fs_type, "ext4");
        assert_eq!(root.device, (254, 0));

        let tmpfs = &entries[1];
        assert_eq!(tmpfs.mount_id, 42);
        assert_eq!(tmpfs.parent_id, 27);
        assert_eq!(tmpfs.fs_type, "tmpfs");
        assert_eq!(tmpfs.source, "cert-csi");
        assert!(tmpfs.has_mount_option("noexec"));
        assert!(!tmpfs.has_mount_option("ro"));
        assert_eq!(tmpfs.super_option("size"), Some("1024k"));
        assert_eq!(tmpfs.super_option("mode"), Some("700"));
        assert_eq!(tmpfs.super_option("siz"), None);

        let bind = &entries[2];
        assert_eq!(bind.root, Path::new("/pod"));
        assert_eq!(
            bind.mount_point,
            Path::new("/var/lib/kubelet/pods/p q/volumes/kubernetes.io~csi/tls/mount")
        );
        assert!(bind.has_mount_option("ro"));
        assert_eq!(bind.fs_type, "tmpfs");
        assert_eq!(bind.device, tmpfs.device);
    }

    #[test]
    fn unescapes_every_kernel_escape_and_leaves_others() {
        assert_eq!(unescape(br"a\040b\011c\012d\134e"), b"a b\tc\nd\\e");
        // Not an octal escape: kept byte for byte.
        assert_eq!(unescape(br"x\09y\"), br"x\09y\");
        assert_eq!(unescape(br"\777"), br"\777");
    }

    #[test]
    fn malformed_lines_are_reported_with_their_number() {
        let err = parse_mountinfo(b"27 1 254:0 / / rw\n").unwrap_err();
        assert!(err.starts_with("line 1:"), "{err}");
        let err = parse_mountinfo(b"x 1 254:0 / / rw - ext4 /dev/vda rw\n").unwrap_err();
        assert!(err.contains("mount id"), "{err}");
        let err = parse_mountinfo(b"1 1 2540 / / rw - ext4 /dev/vda rw\n").unwrap_err();
        assert!(err.contains("major:minor"), "{err}");
    }

    #[test]
    fn reads_the_live_table() {
        let entries = read_mountinfo().unwrap();
        assert!(entries.iter().any(|m| m.mount_point == Path::new("/")));
    }
}
