//! Following the trust bundle's source as it changes.
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
use tokio::sync::watch;

use super::source::{TrustSource, validate_bundle};
use crate::shutdown::CancellationToken;

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
        .backoff(crate::kubernetes::WatchBackoff::default())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::trust::source::tests::ca_pem;

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
