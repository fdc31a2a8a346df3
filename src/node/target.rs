//! Which target paths the node plugin acts on: only a CSI volume's mount
//! directory in the kubelet's own tree,
//! `<kubelet root>/pods/<pod uid>/volumes/kubernetes.io~csi/<name>/mount`.
//!
//! This is a check of the path's text. The store then reaches the path
//! without following a symlink (`store::target`), so a symlink placed in
//! the tree cannot lead a mount or an unmount out of it.

use std::path::{Component, Path, PathBuf};

use thiserror::Error;

/// The kubelet's root directory (`--kubelet-root-dir`).
#[derive(Debug, Clone)]
pub struct KubeletRoot {
    /// As configured: the kubelet names targets with its own `--root-dir`.
    configured: PathBuf,
    /// Resolved once at start; the store walks below it. A root that is
    /// itself a symlink (some distributions) is accepted, nothing below it.
    canonical: PathBuf,
}

/// A target path outside the kubelet's volume tree, or not its pod's.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("target_path {given}: {reason}")]
pub struct TargetError {
    /// A short quoted prefix of the given path.
    given: String,
    reason: String,
}

use crate::volume::short_quote as quote;

/// The longest pod uid or volume name accepted in a target path (pod uids
/// are 36-character UUIDs, volume names DNS labels of at most 63).
const COMPONENT_LIMIT: usize = 253;

impl KubeletRoot {
    pub fn new(configured: impl Into<PathBuf>) -> Self {
        let configured = configured.into();
        let canonical = configured
            .canonicalize()
            .unwrap_or_else(|_| configured.clone());
        KubeletRoot {
            configured,
            canonical,
        }
    }

    pub fn path(&self) -> &Path {
        &self.configured
    }

    /// Checks that `target` is
    /// `<root>/pods/<uid>/volumes/kubernetes.io~csi/<name>/mount`, with
    /// `<uid>` equal to `pod_uid` when one is given, and returns it below
    /// the resolved root. Call after `volume::rules::check_target_path`
    /// (absolute, clean).
    pub fn check(&self, target: &str, pod_uid: Option<&str>) -> Result<PathBuf, TargetError> {
        let fail = |reason: String| TargetError {
            given: quote(target),
            reason,
        };
        let expected = format!(
            "cert-csi publishes only at {}/pods/<pod uid>/volumes/kubernetes.io~csi/<volume name>/mount, where the kubelet puts a CSI volume",
            self.configured.display()
        );
        let path = Path::new(target);
        let rest = path
            .strip_prefix(&self.configured)
            .or_else(|_| path.strip_prefix(&self.canonical))
            .map_err(|_| {
                fail(format!(
                    "is not below the kubelet root {}; {expected}. If the kubelet runs with another --root-dir, start cert-csi node with --kubelet-root-dir set to it (chart value app.kubeletRootDir)",
                    self.configured.display()
                ))
            })?;
        let parts: Vec<&str> = rest
            .components()
            .map(|c| match c {
                Component::Normal(p) => p.to_str().unwrap_or("\u{fffd}"),
                _ => "\u{fffd}",
            })
            .collect();
        let ["pods", uid, "volumes", "kubernetes.io~csi", name, "mount"] = parts.as_slice() else {
            return Err(fail(format!(
                "is below the kubelet root but not a CSI volume's mount directory; {expected}"
            )));
        };
        for (what, value) in [("pod uid", uid), ("volume name", name)] {
            if value.len() > COMPONENT_LIMIT || value.contains('\u{fffd}') {
                return Err(fail(format!(
                    "its {what} component is not valid UTF-8 of at most {COMPONENT_LIMIT} bytes; {expected}"
                )));
            }
        }
        if let Some(pod_uid) = pod_uid.filter(|u| !u.is_empty())
            && pod_uid != *uid
        {
            return Err(fail(format!(
                "is in the directory of pod {}, but csi.storage.k8s.io/pod.uid is {}; the kubelet publishes a pod's volume only in that pod's own directory",
                quote(uid),
                quote(pod_uid)
            )));
        }
        Ok(self.canonical.join(rest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0b5e4f1c-3f5a-4c9e-9b1e-2f0d7f1a6c11";

    fn target(root: &str, uid: &str, name: &str) -> String {
        format!("{root}/pods/{uid}/volumes/kubernetes.io~csi/{name}/mount")
    }

    #[test]
    fn accepts_only_a_volume_mount_of_the_pod() {
        let root = KubeletRoot::new("/nonexistent/kubelet");
        let good = target("/nonexistent/kubelet", UID, "tls");
        assert_eq!(root.check(&good, Some(UID)).unwrap(), PathBuf::from(&good));
        assert!(root.check(&good, None).is_ok());

        let bad: &[(String, &str)] = &[
            ("/tmp/x".into(), "is not below the kubelet root"),
            (
                "/nonexistent/kubeletx/pods/u/volumes/kubernetes.io~csi/n/mount".into(),
                "is not below the kubelet root",
            ),
            (
                "/nonexistent/kubelet/pods/u/volumes".into(),
                "not a CSI volume's mount directory",
            ),
            (
                "/nonexistent/kubelet/plugins/x/volumes/kubernetes.io~csi/n/mount".into(),
                "not a CSI volume's mount directory",
            ),
            (
                target("/nonexistent/kubelet", UID, "tls") + "/deeper",
                "not a CSI volume's mount directory",
            ),
            (
                target("/nonexistent/kubelet", "other-uid", "tls"),
                "csi.storage.k8s.io/pod.uid",
            ),
            (
                target("/nonexistent/kubelet", UID, &"n".repeat(300)),
                "volume name",
            ),
        ];
        for (path, fragment) in bad {
            let err = root.check(path, Some(UID)).expect_err(path).to_string();
            assert!(err.contains(fragment), "{path}: {err}");
            assert!(err.starts_with("target_path "), "{err}");
            assert!(
                err.contains("/nonexistent/kubelet/pods/<pod uid>") || err.contains("pod.uid"),
                "{err}"
            );
        }
    }

    #[test]
    fn quotes_a_short_prefix_only() {
        let root = KubeletRoot::new("/var/lib/kubelet");
        let long = format!("/elsewhere/{}", "a".repeat(4000));
        let err = root.check(&long, None).unwrap_err().to_string();
        assert!(err.len() < 600, "{err}");
        assert!(err.contains("…"), "{err}");
        assert!(err.contains("--kubelet-root-dir"), "{err}");
    }
}
