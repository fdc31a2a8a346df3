//! Kubernetes plumbing every mode shares: the client configuration, the
//! backoff of watches after API errors, and reading a Secret's keys.

use anyhow::Context;
use std::path::PathBuf;

/// A client from `--kubeconfig`, or the in-cluster configuration.
pub async fn kube_client(kubeconfig: Option<&PathBuf>) -> anyhow::Result<kube::Client> {
    let config = kube_config(kubeconfig).await?;
    kube::Client::try_from(config).context("building the Kubernetes client")
}

/// The configuration behind [`kube_client`].
pub async fn kube_config(kubeconfig: Option<&PathBuf>) -> anyhow::Result<kube::Config> {
    Ok(match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading --kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &Default::default())
                .await
                .with_context(|| format!("using --kubeconfig {}", path.display()))?
        }
        None => kube::Config::incluster().context(
            "no --kubeconfig given and not running in a cluster (KUBERNETES_SERVICE_HOST unset)",
        )?,
    })
}

/// Retry delays of the shared watch after an API error: from 1 s doubling
/// to at most 5 s, with jitter. kube's default climbs to 30 s, which after an
/// API outage would leave every renewal waiting up to half a minute for a
/// decision that is already made; one watch per node is cheap to resume.
/// The controller's watches use it too: a watcher without any backoff
/// would retry in a tight loop while the API is down.
#[derive(Debug, Default)]
pub struct WatchBackoff {
    attempt: u32,
}

impl WatchBackoff {
    pub const BASE: std::time::Duration = std::time::Duration::from_secs(1);
    pub const MAX: std::time::Duration = std::time::Duration::from_secs(5);
}

impl Iterator for WatchBackoff {
    type Item = std::time::Duration;

    fn next(&mut self) -> Option<std::time::Duration> {
        self.attempt = self.attempt.saturating_add(1);
        Some(crate::renewal::schedule::backoff(
            self.attempt,
            Self::BASE,
            Self::MAX,
            rand::random::<f64>(),
        ))
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// The non-empty value of `key` in a Secret's `data`. An empty value counts
/// as missing: a key pair Secret with an empty `tls.key` is as unusable as
/// one without it, and cert-manager treats both alike.
pub fn secret_field<'a>(
    secret: &'a k8s_openapi::api::core::v1::Secret,
    key: &str,
) -> Option<&'a [u8]> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.as_slice())
        .filter(|b| !b.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::utils::Backoff;

    #[test]
    fn watch_backoff_is_short_and_resets() {
        let mut backoff = WatchBackoff::default();
        let delays: Vec<_> = (&mut backoff).take(12).collect();
        assert!(
            delays
                .iter()
                .all(|d| *d >= WatchBackoff::BASE / 2 && *d <= WatchBackoff::MAX)
        );
        assert!(delays[0] <= WatchBackoff::BASE);
        assert!(delays[11] >= WatchBackoff::MAX / 2);
        backoff.reset();
        assert!(backoff.next().unwrap() <= WatchBackoff::BASE);
    }
}
