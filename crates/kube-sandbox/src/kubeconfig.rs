//! The kubeconfig the sandbox writes for kubectl and kube::Client.

use std::path::Path;

/// A kubeconfig for `server`: one cluster, a user without credentials (the
/// sandbox attributes such requests to `system:anonymous` and authorizes
/// everything, so this is the admin's kubeconfig), and a current context
/// whose namespace is `default`.
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

/// A kubeconfig like [`render`] whose user authenticates with a bearer token.
pub fn render_with_token(server: &str, token: &str) -> String {
    render(server).replace(
        "- name: sandbox\n  user: {}\n",
        &format!("- name: sandbox\n  user:\n    token: {token}\n"),
    )
}

/// Writes a token kubeconfig readable only by its owner.
pub fn write_with_token(path: &Path, server: &str, token: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(render_with_token(server, token).as_bytes())
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
    fn token_kubeconfig_carries_the_token() {
        let text = render_with_token("http://127.0.0.1:1234", "abc.def.ghi");
        let kc: kube::config::Kubeconfig = serde_yaml_ng::from_str(&text).unwrap();
        let auth = kc.auth_infos[0].auth_info.as_ref().unwrap();
        assert!(auth.token.is_some());
        assert!(text.contains("    token: abc.def.ghi\n"), "{text}");
        // The admin kubeconfig stays credential-free.
        assert!(!render("http://127.0.0.1:1234").contains("token"));
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
