//! The signer's cache of CA Secrets: a CA issuer's certificate and parsed
//! key, so that signing a request needs no GET and no key parsing.
//!
//! Only Secrets that a CA issuer named are ever read or held; nothing else
//! is cached. Freshness comes from the signer's metadata-only watch of
//! Secrets, which reports every Secret's resourceVersion: an entry is used
//! only while the watch has seen no other version of its Secret. The key
//! stays in memory, as cert-manager's own informer cache holds it.
//!
//! The race a cache like this must not lose: a Secret changes after a read
//! and its watch event arrives before the read is stored. So a slot is
//! opened before the read, and any event for the Secret while the read is
//! in flight keeps the result out of the cache (it is used once, then read
//! again next time).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::pki::PrivateKey;

/// A CA Secret as the signer uses it.
pub struct CaMaterial {
    pub certificate_pem: Vec<u8>,
    pub key: PrivateKey,
}

type Key = (String, String);

#[derive(Default)]
struct Slot {
    /// The newest resourceVersion the watch reported while the slot was open.
    watched: Option<String>,
    /// Whether the watch reported anything since the read began.
    touched: bool,
    /// What was read, at which resourceVersion.
    cached: Option<(String, Arc<CaMaterial>)>,
}

/// Shared between the signer's reconciles and its Secret watch.
#[derive(Clone, Default)]
pub struct CaCache {
    slots: Arc<Mutex<HashMap<Key, Slot>>>,
}

fn key(namespace: &str, name: &str) -> Key {
    (namespace.to_owned(), name.to_owned())
}

impl CaCache {
    fn slots(&self) -> MutexGuard<'_, HashMap<Key, Slot>> {
        crate::sync::lock(&self.slots)
    }

    /// The cached material of `namespace/name`, if the watch has reported
    /// no other version of it since it was read.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<CaMaterial>> {
        let slots = self.slots();
        let slot = slots.get(&key(namespace, name))?;
        let (version, material) = slot.cached.as_ref()?;
        (slot.watched.as_deref() == Some(version.as_str())).then(|| material.clone())
    }

    /// Call before reading the Secret: from here on its watch events are
    /// noted, so a change during the read is not missed.
    pub fn begin_read(&self, namespace: &str, name: &str) {
        let mut slots = self.slots();
        let slot = slots.entry(key(namespace, name)).or_default();
        slot.touched = false;
        slot.cached = None;
    }

    /// Stores what a read begun with [`Self::begin_read`] returned, unless
    /// the watch reported the Secret meanwhile (or the cache was reset).
    pub fn finish_read(
        &self,
        namespace: &str,
        name: &str,
        resource_version: Option<&str>,
        material: Arc<CaMaterial>,
    ) {
        let Some(version) = resource_version else {
            return;
        };
        let mut slots = self.slots();
        let Some(slot) = slots.get_mut(&key(namespace, name)) else {
            return;
        };
        if slot.touched && slot.watched.as_deref() != Some(version) {
            return;
        }
        slot.watched = Some(version.to_owned());
        slot.cached = Some((version.to_owned(), material));
    }

    /// The watch saw `namespace/name` at `resource_version` (`None`:
    /// deleted). Secrets the signer never read are not kept.
    pub fn observed(&self, namespace: &str, name: &str, resource_version: Option<&str>) {
        let mut slots = self.slots();
        if let Some(slot) = slots.get_mut(&key(namespace, name)) {
            slot.touched = true;
            slot.watched = resource_version.map(str::to_owned);
            if resource_version.is_none() {
                slot.cached = None;
            }
        }
    }

    /// The watch started over (a re-list): forget everything, since a
    /// deletion during the gap would never be reported.
    pub fn reset(&self) {
        self.slots().clear();
    }

    /// How many Secrets are held (for tests).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.slots().values().filter(|s| s.cached.is_some()).count()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn material() -> Arc<CaMaterial> {
        Arc::new(CaMaterial {
            certificate_pem: b"crt".to_vec(),
            key: PrivateKey::generate(crate::pki::KeyAlgorithm::Ed25519).unwrap(),
        })
    }

    #[test]
    fn a_read_is_used_until_the_watch_reports_another_version() {
        let cache = CaCache::default();
        assert!(cache.get("ns", "ca").is_none());
        cache.begin_read("ns", "ca");
        cache.finish_read("ns", "ca", Some("5"), material());
        assert!(cache.get("ns", "ca").is_some());
        // The watch confirms the same version: still good.
        cache.observed("ns", "ca", Some("5"));
        assert!(cache.get("ns", "ca").is_some());
        // A new version: stale until read again.
        cache.observed("ns", "ca", Some("6"));
        assert!(cache.get("ns", "ca").is_none());
        cache.begin_read("ns", "ca");
        cache.finish_read("ns", "ca", Some("6"), material());
        assert!(cache.get("ns", "ca").is_some());
        // Deleted.
        cache.observed("ns", "ca", None);
        assert!(cache.get("ns", "ca").is_none());
    }

    #[test]
    fn a_change_during_the_read_keeps_the_result_out() {
        let cache = CaCache::default();
        cache.begin_read("ns", "ca");
        // The Secret changed after the server answered the read with 5.
        cache.observed("ns", "ca", Some("6"));
        cache.finish_read("ns", "ca", Some("5"), material());
        assert!(cache.get("ns", "ca").is_none());
        // The event for the version that was read is harmless.
        cache.begin_read("ns", "ca");
        cache.observed("ns", "ca", Some("6"));
        cache.finish_read("ns", "ca", Some("6"), material());
        assert!(cache.get("ns", "ca").is_some());
    }

    #[test]
    fn only_secrets_that_were_read_are_kept_and_a_relist_forgets_all() {
        let cache = CaCache::default();
        cache.observed("ns", "other", Some("1"));
        assert!(cache.is_empty());
        cache.begin_read("ns", "ca");
        cache.finish_read("ns", "ca", Some("1"), material());
        assert_eq!(cache.len(), 1);
        cache.begin_read("ns", "ca2");
        cache.reset();
        // A read that began before the reset is not stored.
        cache.finish_read("ns", "ca2", Some("1"), material());
        assert!(cache.is_empty());
    }
}
