//! The kubeconfig the sandbox writes for kubectl and kube::Client.

use std::path::Path;

/// A kubeconfig for `server`: one cluster, a user without credentials (the
/// sandbox treats every request as `system:anonymous`), and a current
/// context whose namespace is `default`.
pub fn render(server: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: sandbox
  cluster:
    server: {server}
users:
- name: sandbox
  user: {{}}
contexts:
- name: sandbox
  context:
    cluster: sandbox
    user: sandbox
    namespace: default
current-context: sandbox
preferences: {{}}
"
    )
}

/// Writes the kubeconfig, creating the parent directory if needed.
pub fn write(path: &Path, server: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, render(server))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_reads_the_kubeconfig() {
        let text = render("http://127.0.0.1:1234");
        let kc: kube::config::Kubeconfig = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(kc.current_context.as_deref(), Some("sandbox"));
        let ctx = kc.contexts[0].context.as_ref().unwrap();
        assert_eq!(ctx.namespace.as_deref(), Some("default"));
        assert_eq!(
            kc.clusters[0].cluster.as_ref().unwrap().server.as_deref(),
            Some("http://127.0.0.1:1234")
        );
    }

    #[test]
    fn writes_into_a_new_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/kubeconfig");
        write(&path, "http://127.0.0.1:1").unwrap();
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .contains("server: http://127.0.0.1:1")
        );
    }
}
