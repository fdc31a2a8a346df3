//! The trust bundle: one CA file content for every volume, from a file, a
//! ConfigMap key or a Secret key, followed as it changes.
//!
//! A source is watched, never polled:
//! - ConfigMap and Secret: a watch on that one object (a field selector on
//!   its name), so an update arrives within the API's watch latency;
//! - a file: inotify on its directory (not on the file: the kubelet updates
//!   a mounted ConfigMap by swapping the `..data` symlink in the directory,
//!   which a watch on the old file would never see). Every event in the
//!   directory re-reads the file, and an unchanged content is dropped.
//!
//! The latest good bundle is published on a `watch` channel. A content that
//! is not a PEM list of certificates (a half-written file, a wrong key) is
//! refused and logged, and the previous bundle stays: a broken source must
//! not blank the CA file of every pod on the node.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use thiserror::Error;
use tokio::sync::watch;

use super::{NodeService, PublishError, blocking, build_files};
use crate::issuance::Issued;
use crate::pki::{KeyEncoding, PrivateKey, Secret as PkiSecret};
use crate::shutdown::CancellationToken;
use crate::store::{DATA_LINK, StoreError};

/// One key of a namespaced object: `<namespace>/<name>:<key>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
    pub key: String,
}

/// Where the trust bundle comes from (one of the `--trust-bundle-*` flags).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrustSource {
    File(PathBuf),
    ConfigMap(ObjectKey),
    Secret(ObjectKey),
}

impl std::fmt::Display for TrustSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrustSource::File(path) => write!(f, "file {}", path.display()),
            TrustSource::ConfigMap(k) => {
                write!(f, "ConfigMap {}/{} key {}", k.namespace, k.name, k.key)
            }
            TrustSource::Secret(k) => write!(f, "Secret {}/{} key {}", k.namespace, k.name, k.key),
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TrustError {
    #[error(
        "{flag}: {value:?} {reason}; write <namespace>/<name>:<key>, e.g. cert-manager/trust:ca.crt"
    )]
    ObjectKey {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error(
        "--trust-bundle-file, --trust-bundle-configmap and --trust-bundle-secret are alternatives; give at most one (got {given})"
    )]
    TooMany { given: String },
    #[error("the trust bundle {problem}; it must hold only PEM CERTIFICATE blocks")]
    Content { problem: String },
}

impl ObjectKey {
    pub fn parse(flag: &'static str, value: &str) -> Result<ObjectKey, TrustError> {
        let bad = |reason: &str| TrustError::ObjectKey {
            flag,
            value: value.to_string(),
            reason: reason.to_string(),
        };
        let (object, key) = value
            .split_once(':')
            .ok_or_else(|| bad("has no ':<key>'"))?;
        let (namespace, name) = object
            .split_once('/')
            .ok_or_else(|| bad("has no '<namespace>/'"))?;
        let dns = |s: &str| {
            !s.is_empty()
                && s.len() <= 253
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        };
        if !dns(namespace) || namespace.contains('.') || namespace.len() > 63 {
            return Err(bad("has a namespace that is not a DNS label"));
        }
        if !dns(name) {
            return Err(bad("has a name that is not a DNS subdomain"));
        }
        // The rule of ConfigMap and Secret data keys.
        let key_ok = !key.is_empty()
            && key.len() <= 253
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !key_ok {
            return Err(bad(
                "has a key that is not a data key (letters, digits, '-', '_', '.')",
            ));
        }
        Ok(ObjectKey {
            namespace: namespace.to_string(),
            name: name.to_string(),
            key: key.to_string(),
        })
    }
}

impl TrustSource {
    /// The source from the three alternative flags; `None` when none is set
    /// (each volume then gets its request's `status.ca`).
    pub fn from_flags(
        file: Option<&Path>,
        configmap: Option<&str>,
        secret: Option<&str>,
    ) -> Result<Option<TrustSource>, TrustError> {
        let given: Vec<&str> = [
            file.map(|_| "--trust-bundle-file"),
            configmap.map(|_| "--trust-bundle-configmap"),
            secret.map(|_| "--trust-bundle-secret"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if given.len() > 1 {
            return Err(TrustError::TooMany {
                given: given.join(", "),
            });
        }
        Ok(if let Some(path) = file {
            Some(TrustSource::File(path.to_path_buf()))
        } else if let Some(v) = configmap {
            Some(TrustSource::ConfigMap(ObjectKey::parse(
                "--trust-bundle-configmap",
                v,
            )?))
        } else if let Some(v) = secret {
            Some(TrustSource::Secret(ObjectKey::parse(
                "--trust-bundle-secret",
                v,
            )?))
        } else {
            None
        })
    }
}

/// Checks a bundle: at least one certificate, every block a certificate
/// that decodes. Returns the text to write.
pub fn validate_bundle(bytes: &[u8]) -> Result<String, TrustError> {
    let bad = |problem: String| TrustError::Content { problem };
    let text = std::str::from_utf8(bytes).map_err(|_| bad("is not text".into()))?;
    let blocks = pem::parse_many(text).map_err(|e| bad(format!("is not PEM: {e}")))?;
    if blocks.is_empty() {
        return Err(bad("holds no PEM block".into()));
    }
    for (i, block) in blocks.iter().enumerate() {
        // The tag only: a private key's contents must never reach a message.
        if block.tag() != "CERTIFICATE" {
            return Err(bad(format!(
                "holds a {:?} block at position {}",
                block.tag(),
                i + 1
            )));
        }
        crate::pki::inspect::parse_certificate(block.contents()).map_err(|e| {
            bad(format!(
                "has certificate {} that does not decode: {e}",
                i + 1
            ))
        })?;
    }
    Ok(text.to_string())
}

/// The latest trust bundle, shared by everything that writes volumes.
#[derive(Clone, Debug)]
pub struct TrustBundle {
    source: Arc<TrustSource>,
    rx: watch::Receiver<Option<Arc<str>>>,
}

impl TrustBundle {
    /// The bundle now, or `None` before the source was first read.
    pub fn current(&self) -> Option<Arc<str>> {
        self.rx.borrow().clone()
    }

    pub fn source(&self) -> &TrustSource {
        &self.source
    }

    /// A receiver that sees every new bundle.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<str>>> {
        self.rx.clone()
    }

    /// Follows `source` until `shutdown`.
    pub fn spawn(source: TrustSource, client: Client, shutdown: CancellationToken) -> TrustBundle {
        let (tx, rx) = watch::channel(None);
        let source = Arc::new(source);
        let bundle = TrustBundle {
            source: source.clone(),
            rx,
        };
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = follow(&source, client, &tx) => {}
            }
        });
        bundle
    }

    /// A fixed bundle (for tests of the writers).
    pub fn fixed(bundle: &str) -> TrustBundle {
        let (_tx, rx) = watch::channel(Some(Arc::from(bundle)));
        TrustBundle {
            source: Arc::new(TrustSource::File(PathBuf::new())),
            rx,
        }
    }
}

/// Offers `bytes` as the new bundle; refused content keeps the old one.
fn offer(source: &TrustSource, tx: &watch::Sender<Option<Arc<str>>>, bytes: Option<&[u8]>) {
    let Some(bytes) = bytes else {
        tracing::warn!(%source, "trust bundle source is missing; keeping the current bundle");
        return;
    };
    match validate_bundle(bytes) {
        Ok(text) => {
            tx.send_if_modified(|current| {
                if current.as_deref() == Some(text.as_str()) {
                    return false;
                }
                tracing::info!(%source, bytes = text.len(), "trust bundle loaded");
                *current = Some(Arc::from(text));
                true
            });
        }
        Err(error) => {
            tracing::error!(%source, %error, "trust bundle refused; keeping the current bundle")
        }
    }
}

async fn follow(source: &TrustSource, client: Client, tx: &watch::Sender<Option<Arc<str>>>) {
    match source {
        TrustSource::File(path) => follow_file(source, path, tx).await,
        TrustSource::ConfigMap(key) => {
            let api: Api<ConfigMap> = Api::namespaced(client, &key.namespace);
            follow_object(source, api, &key.name, tx, |cm: &ConfigMap| {
                cm.data
                    .as_ref()
                    .and_then(|d| d.get(&key.key))
                    .map(|v| v.as_bytes().to_vec())
                    .or_else(|| binary(cm.binary_data.as_ref(), &key.key))
            })
            .await
        }
        TrustSource::Secret(key) => {
            let api: Api<Secret> = Api::namespaced(client, &key.namespace);
            follow_object(source, api, &key.name, tx, |s: &Secret| {
                binary(s.data.as_ref(), &key.key).or_else(|| {
                    s.string_data
                        .as_ref()
                        .and_then(|d| d.get(&key.key))
                        .map(|v| v.as_bytes().to_vec())
                })
            })
            .await
        }
    }
}

fn binary(map: Option<&BTreeMap<String, k8s_openapi::ByteString>>, key: &str) -> Option<Vec<u8>> {
    map.and_then(|d| d.get(key)).map(|v| v.0.clone())
}

async fn follow_object<K>(
    source: &TrustSource,
    api: Api<K>,
    name: &str,
    tx: &watch::Sender<Option<Arc<str>>>,
    value: impl Fn(&K) -> Option<Vec<u8>>,
) where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = watcher::watcher(api, config)
        .backoff(crate::issuance::tracker::WatchBackoff::default())
        .boxed();
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Apply(object) | Event::InitApply(object)) => {
                offer(source, tx, value(&object).as_deref())
            }
            Ok(Event::Delete(_)) => offer(source, tx, None),
            Ok(Event::Init | Event::InitDone) => {}
            Err(error) => {
                tracing::warn!(%source, %error, "trust bundle watch failed; retrying")
            }
        }
    }
}

/// tokio's `AsyncFd` wants `AsRawFd`, which nix's `Inotify` does not offer.
struct InotifyFd(nix::sys::inotify::Inotify);

impl std::os::fd::AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd;
        self.0.as_fd().as_raw_fd()
    }
}

async fn follow_file(source: &TrustSource, path: &Path, tx: &watch::Sender<Option<Arc<str>>>) {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    use tokio::io::unix::AsyncFd;

    let read = |path: &Path| match std::fs::read(path) {
        Ok(bytes) => Some(bytes),
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "cannot read the trust bundle file");
            None
        }
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut delay = std::time::Duration::from_millis(200);
    loop {
        // The watch is set up before the first read, so a change between
        // the two is not lost.
        let watcher = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .and_then(|i| {
                i.add_watch(
                    &dir,
                    AddWatchFlags::IN_CREATE
                        | AddWatchFlags::IN_MOVED_TO
                        | AddWatchFlags::IN_CLOSE_WRITE
                        | AddWatchFlags::IN_MODIFY
                        | AddWatchFlags::IN_DELETE
                        | AddWatchFlags::IN_ATTRIB
                        | AddWatchFlags::IN_DELETE_SELF
                        | AddWatchFlags::IN_MOVE_SELF,
                )
                .map(|_| i)
            })
            .map_err(std::io::Error::from)
            .and_then(|i| {
                // SAFETY: the descriptor is owned by the `Inotify` inside
                // the `AsyncFd`, so it stays open and the same for the
                // `AsyncFd`'s whole life, and `as_raw_fd` always returns it.
                unsafe { AsyncFd::register(InotifyFd(i)) }.map_err(std::io::Error::from)
            });
        let watcher = match watcher {
            Ok(w) => w,
            Err(error) => {
                // The directory may not exist yet (a volume still mounting).
                tracing::warn!(dir = %dir.display(), %error, "cannot watch the trust bundle's directory; retrying");
                offer(source, tx, read(path).as_deref());
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(5));
                continue;
            }
        };
        delay = std::time::Duration::from_millis(200);
        offer(source, tx, read(path).as_deref());
        loop {
            let mut guard = match watcher.readable().await {
                Ok(g) => g,
                Err(error) => {
                    tracing::warn!(%error, "trust bundle watch failed; starting it again");
                    break;
                }
            };
            let events = match guard.try_io(|inner| {
                inner
                    .get_ref()
                    .0
                    .read_events()
                    .map_err(std::io::Error::from)
            }) {
                Ok(Ok(events)) => events,
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Ok(Err(error)) => {
                    tracing::warn!(%error, "reading inotify events failed; starting the watch again");
                    break;
                }
                Err(_would_block) => continue,
            };
            let gone = events.iter().any(|e| {
                e.mask.intersects(
                    AddWatchFlags::IN_IGNORED
                        | AddWatchFlags::IN_DELETE_SELF
                        | AddWatchFlags::IN_MOVE_SELF,
                )
            });
            offer(source, tx, read(path).as_deref());
            if gone {
                // The directory itself went away: watch it anew.
                break;
            }
        }
    }
}

/// The single-file credential bundle: the PKCS#8 key, then the chain, as
/// Kubernetes pod certificates write it. It is one of the files of the
/// atomic swap, so a reader never sees a key and a chain that disagree.
pub fn credential_bundle(key: &PrivateKey, chain_pem: &str) -> Result<PkiSecret, PublishError> {
    let key_pem = key.to_pem(KeyEncoding::Pkcs8)?;
    let mut bytes = Vec::with_capacity(key_pem.len() + chain_pem.len() + 1);
    bytes.extend_from_slice(key_pem.expose());
    if !bytes.ends_with(b"\n") {
        bytes.push(b'\n');
    }
    bytes.extend_from_slice(chain_pem.as_bytes());
    Ok(PkiSecret::new(bytes))
}

impl NodeService {
    /// Writes `bundle` as the CA file of every volume, now and whenever it
    /// changes.
    pub fn with_trust_bundle(mut self, bundle: TrustBundle) -> Self {
        self.trust = Some(bundle);
        self
    }

    /// The trust bundle to write, if one is configured: an error while a
    /// configured bundle has not been loaded, so no volume goes out with
    /// a CA file the operator did not choose.
    pub(super) fn bundle_ca(&self) -> Result<Option<Arc<str>>, PublishError> {
        let Some(trust) = &self.trust else {
            return Ok(None);
        };
        match trust.current() {
            Some(bundle) => Ok(Some(bundle)),
            None => Err(PublishError::Internal(format!(
                "the trust bundle from {} has not been loaded yet (the node plugin's log says why); the kubelet retries the mount",
                trust.source()
            ))),
        }
    }

    /// `issued` with the trust bundle as its CA, when one is configured.
    pub(super) fn with_bundle_ca(&self, issued: Issued) -> Result<Issued, PublishError> {
        Ok(match self.bundle_ca()? {
            Some(bundle) => Issued {
                chain_pem: issued.chain_pem,
                ca_pem: bundle.to_string(),
            },
            None => issued,
        })
    }

    /// Rewrites every volume's CA file whenever the bundle changes, and once
    /// at start (the bundle may have changed while the plugin was down).
    pub fn drive_trust_updates(self: &Arc<Self>) {
        let Some(trust) = &self.trust else { return };
        let mut rx = trust.subscribe();
        rx.mark_changed();
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = this.shutdown.cancelled() => return,
                    changed = rx.changed() => if changed.is_err() { return },
                }
                let Some(bundle) = rx.borrow_and_update().clone() else {
                    continue;
                };
                let started = std::time::Instant::now();
                let (updated, failed) = this.apply_trust_bundle(&bundle).await;
                tracing::info!(updated, failed, took = ?started.elapsed(), "trust bundle written to the volumes");
            }
        });
    }

    /// Writes `bundle` into every published volume whose CA file differs.
    /// Returns how many volumes were updated and how many failed.
    pub async fn apply_trust_bundle(&self, bundle: &Arc<str>) -> (usize, usize) {
        let store = self.store.clone();
        let ids = match blocking(move || store.volume_ids()).await {
            Ok(ids) => ids,
            Err(error) => {
                tracing::error!(%error, "cannot list the volumes to update their trust bundle");
                return (0, 0);
            }
        };
        // A few at a time: each is a handful of small file operations, and
        // a node with thousands of volumes should not open them all at once.
        let mut results: Vec<Result<bool, PublishError>> = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(8) {
            let batch = chunk.iter().map(|id| self.update_volume_ca(id, bundle));
            results.extend(futures::future::join_all(batch).await);
        }
        let mut updated = 0;
        let mut failed = 0;
        for (id, result) in ids.iter().zip(&results) {
            match result {
                Ok(true) => updated += 1,
                Ok(false) => {}
                Err(error) => {
                    failed += 1;
                    tracing::warn!(volume_id = %id, %error, "could not write the new trust bundle");
                }
            }
        }
        (updated, failed)
    }

    /// Swaps in the files of one volume with the same certificate and key
    /// and the new CA. Volumes not yet issued are left alone: their publish
    /// writes the bundle current at that time.
    async fn update_volume_ca(
        &self,
        volume_id: &str,
        bundle: &Arc<str>,
    ) -> Result<bool, PublishError> {
        let _guard = self.locks.lock(volume_id).await;
        let Some(state) = self.current_state(volume_id).await? else {
            return Ok(false);
        };
        if state.not_after.is_none() {
            return Ok(false);
        }
        let dir = {
            let store = self.store.clone();
            let id = volume_id.to_string();
            match blocking(move || store.existing(&id)).await? {
                Some(dir) => dir,
                None => return Ok(false),
            }
        };
        let spec = self.spec_from_state(&state, &dir).await?;
        let data = dir.pod_path().join(DATA_LINK);
        let (ca, chain, key_pem) = {
            let read = |name: &str| {
                let path = data.join(name);
                move || {
                    std::fs::read(&path)
                        .map(PkiSecret::new)
                        .map_err(|e| StoreError::io("read a published file", &path, e))
                }
            };
            let ca = blocking(read(&spec.ca_file)).await?;
            let chain = blocking(read(&spec.certificate_file)).await?;
            let key = blocking(read(&spec.private_key_file)).await?;
            (ca, chain, key)
        };
        if ca.expose() == bundle.as_bytes() {
            return Ok(false);
        }
        let key = PrivateKey::from_pem(key_pem.expose())?;
        let chain_pem = chain
            .expose_str()
            .ok_or_else(|| {
                PublishError::Internal(format!("{} is not text", spec.certificate_file))
            })?
            .to_string();
        let issued = Issued {
            chain_pem,
            ca_pem: bundle.to_string(),
        };
        let files = build_files(&spec, &key, &issued)?;
        let gid = spec.fs_group;
        blocking(move || dir.publish(&files, gid)).await?;
        tracing::debug!(volume_id, "trust bundle updated");
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem(cn: &str) -> String {
        let key = crate::pki::PrivateKey::generate(crate::pki::KeyAlgorithm::Ecdsa(
            crate::pki::Curve::P256,
        ))
        .unwrap();
        let subject = crate::pki::SubjectSpec {
            common_name: Some(cn.into()),
            ..Default::default()
        };
        let csr = crate::pki::build_csr(
            &key,
            &subject,
            &crate::pki::SanSpec::default(),
            &crate::pki::CsrOptions::default(),
        )
        .unwrap();
        crate::pki::sign_self_signed(
            csr.pem.as_bytes(),
            &key,
            &crate::pki::SignParams {
                is_ca: true,
                ..Default::default()
            },
        )
        .unwrap()
        .certificate_pem
    }

    #[test]
    fn object_keys() {
        assert_eq!(
            ObjectKey::parse("--trust-bundle-configmap", "cert-manager/trust:ca.crt").unwrap(),
            ObjectKey {
                namespace: "cert-manager".into(),
                name: "trust".into(),
                key: "ca.crt".into()
            }
        );
        for bad in [
            "trust:ca.crt",
            "cert-manager/trust",
            "a.b/trust:ca.crt",
            "ns/Trust:ca.crt",
            "ns/trust:ca/crt",
            "ns/trust:",
            "/trust:ca.crt",
        ] {
            let err = ObjectKey::parse("--trust-bundle-secret", bad).unwrap_err();
            assert!(
                err.to_string().starts_with("--trust-bundle-secret"),
                "{bad}"
            );
        }
    }

    #[test]
    fn flags_are_alternatives() {
        assert_eq!(TrustSource::from_flags(None, None, None), Ok(None));
        assert_eq!(
            TrustSource::from_flags(Some(Path::new("/etc/trust/ca.crt")), None, None),
            Ok(Some(TrustSource::File("/etc/trust/ca.crt".into())))
        );
        assert!(matches!(
            TrustSource::from_flags(None, Some("a/b:c"), Some("a/b:c")),
            Err(TrustError::TooMany { .. })
        ));
    }

    #[test]
    fn bundles_hold_certificates_only() {
        let one = ca_pem("root one");
        let two = format!("{one}{}", ca_pem("root two"));
        assert_eq!(validate_bundle(one.as_bytes()).unwrap(), one);
        assert_eq!(validate_bundle(two.as_bytes()).unwrap(), two);
        assert!(validate_bundle(b"").is_err());
        assert!(validate_bundle(b"not pem").is_err());
        let half = &one[..one.len() / 2];
        assert!(validate_bundle(half.as_bytes()).is_err());
        let key = crate::pki::PrivateKey::generate(crate::pki::KeyAlgorithm::Ed25519)
            .unwrap()
            .to_pem(crate::pki::KeyEncoding::Pkcs8)
            .unwrap();
        let mut with_key = one.clone().into_bytes();
        with_key.extend_from_slice(key.expose());
        let err = validate_bundle(&with_key).unwrap_err().to_string();
        assert!(err.contains("PRIVATE KEY"), "{err}");
        let body: String = String::from_utf8(key.expose().to_vec())
            .unwrap()
            .lines()
            .nth(1)
            .unwrap()
            .to_string();
        assert!(!err.contains(&body), "key material in the error: {err}");
    }

    #[tokio::test]
    async fn a_file_is_followed_through_a_symlink_swap() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        // The kubelet's layout of a ConfigMap volume.
        let first = ca_pem("first");
        let second = ca_pem("second");
        std::fs::create_dir(base.join("..v1")).unwrap();
        std::fs::write(base.join("..v1/ca.crt"), &first).unwrap();
        std::os::unix::fs::symlink("..v1", base.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/ca.crt", base.join("ca.crt")).unwrap();

        let shutdown = CancellationToken::new();
        // A client is not used for files; any will do.
        let client =
            kube::Client::try_from(kube::Config::new("http://127.0.0.1:1".parse().unwrap()))
                .unwrap();
        let bundle = TrustBundle::spawn(
            TrustSource::File(base.join("ca.crt")),
            client,
            shutdown.clone(),
        );
        let mut rx = bundle.subscribe();
        let wait = |rx: &mut watch::Receiver<Option<Arc<str>>>, want: String| {
            let mut rx = rx.clone();
            async move {
                tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    rx.wait_for(|b| b.as_deref() == Some(want.as_str())),
                )
                .await
                .expect("the bundle changes within 5s")
                .unwrap();
            }
        };
        wait(&mut rx, first.clone()).await;

        // A broken write is refused and the old bundle stays.
        std::fs::create_dir(base.join("..v2")).unwrap();
        std::fs::write(base.join("..v2/ca.crt"), "garbage").unwrap();
        std::os::unix::fs::symlink("..v2", base.join("..data_tmp")).unwrap();
        std::fs::rename(base.join("..data_tmp"), base.join("..data")).unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert_eq!(bundle.current().as_deref(), Some(first.as_str()));

        std::fs::create_dir(base.join("..v3")).unwrap();
        std::fs::write(base.join("..v3/ca.crt"), &second).unwrap();
        std::os::unix::fs::symlink("..v3", base.join("..data_tmp")).unwrap();
        std::fs::rename(base.join("..data_tmp"), base.join("..data")).unwrap();
        wait(&mut rx, second.clone()).await;
        shutdown.cancel();
    }
}
