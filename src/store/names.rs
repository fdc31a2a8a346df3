//! Checks that names from outside can serve as one directory entry.
//!
//! Volume ids come from the kubelet and file names from volume attributes;
//! both are joined onto paths under the data root, so a name that is not a
//! single plain component could reach outside the volume.

use super::StoreError;

/// A short, label-safe hash of an id, exactly as cert-manager's csi-lib
/// computes the `csi.cert-manager.io/{node,volume}-id-hash` labels of its
/// requests, so that tooling (and a csi-driver being replaced) finds one
/// driver's requests with the other's selector. Label values are limited to
/// 63 characters and a kubelet volume id has 68, hence a hash.
///
/// It is the 32-bit FNV-1 hash of the id (multiply, then xor: Go's
/// `hash/fnv.New32`, not FNV-1a), written in decimal, each digit then
/// mapped through Kubernetes' "safe encoding" alphabet (apimachinery's
/// `rand.SafeEncodeString`, which avoids vowels and look-alikes). Two ids
/// may share a hash; whoever deletes by these labels must also check the
/// owner (see `issuance::list_for_volume`). The differential tests compare
/// it with upstream's labels.
pub fn id_hash(id: &str) -> String {
    const SAFE: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let hash = id.bytes().fold(0x811c_9dc5_u32, |h, b| {
        h.wrapping_mul(0x0100_0193) ^ u32::from(b)
    });
    hash.to_string()
        .bytes()
        .map(|d| char::from(SAFE[usize::from(d) % SAFE.len()]))
        .collect()
}

/// Longest name most Linux filesystems accept for one directory entry.
const NAME_MAX: usize = 255;

/// Accepts `id` if it is a single, plain path component.
pub fn validate_volume_id(id: &str) -> Result<(), StoreError> {
    let reason = component_problem(id).or_else(|| {
        // A leading dot would hide the directory and, for "..x", mimic the
        // names the atomic writer reserves; the kubelet never sends one.
        id.starts_with('.')
            .then_some("it starts with '.', which is reserved")
    });
    match reason {
        Some(reason) => Err(StoreError::InvalidVolumeId {
            id: id.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Accepts `name` if it can be published as a file in the pod's directory.
pub fn validate_file_name(name: &str) -> Result<(), StoreError> {
    let reason = component_problem(name).or_else(|| {
        name.starts_with("..")
            .then_some("names starting with '..' are reserved for the atomic swap")
    });
    match reason {
        Some(reason) => Err(StoreError::InvalidFileName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

fn component_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("it is empty")
    } else if name.len() > NAME_MAX {
        Some("it is longer than 255 bytes")
    } else if name.contains('/') {
        Some("it contains '/'")
    } else if name.contains('\0') {
        Some("it contains a NUL byte")
    } else if name == "." || name == ".." {
        Some("it is '.' or '..'")
    } else if name.chars().any(char::is_control) {
        // Control characters would corrupt log lines and /proc/self/mountinfo
        // comparisons without any legitimate use in a volume id.
        Some("it contains a control character")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_volume_ids_are_accepted() {
        let id = format!("csi-{}", "ab12".repeat(16));
        assert_eq!(id.len(), 68);
        validate_volume_id(&id).unwrap();
        validate_volume_id("pvc-1234_abc.x").unwrap();
        validate_volume_id(&"a".repeat(255)).unwrap();
    }

    #[test]
    fn unsafe_volume_ids_are_rejected() {
        for bad in [
            "",
            ".",
            "..",
            "../etc",
            "a/b",
            "/abs",
            "a\0b",
            ".hidden",
            "..data",
            "tab\there",
            "new\nline",
        ] {
            let err = validate_volume_id(bad).unwrap_err();
            assert!(err.is_invalid_argument(), "{bad:?}: {err}");
            assert!(err.to_string().contains("volume_id"), "{err}");
        }
        assert!(validate_volume_id(&"a".repeat(256)).is_err());
    }

    #[test]
    fn file_names() {
        for ok in [
            "tls.crt",
            "tls.key",
            "ca.crt",
            "keystore.p12",
            ".dotfile",
            "a..b",
        ] {
            validate_file_name(ok).unwrap();
        }
        for bad in ["", "..", "..data", "..2024", "a/b", "/x", "a\0", "."] {
            let err = validate_file_name(bad).unwrap_err();
            assert!(err.to_string().contains("file name"), "{err}");
        }
    }
}
