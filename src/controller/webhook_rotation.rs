//! The webhook's serving certificate on every replica, rotated while it
//! runs, with the MutatingWebhookConfiguration's `caBundle` as the only
//! shared state.
//!
//! Each replica keeps its own CA and leaf in memory; no key is ever written
//! anywhere. The `caBundle` holds every replica's CA that has not expired,
//! so the API server trusts whichever replica the Service picks:
//! - a replica adds a new CA to the bundle (a replace guarded by
//!   `resourceVersion`, keeping every other CA that has not expired), then
//!   waits [`Rotation::publish_grace`] for the API server to load the new
//!   bundle, and only then serves a leaf the new CA signed;
//! - its old CA stays in the bundle until it expires, so connections that
//!   still hold a leaf of the old CA keep verifying;
//! - a CA is replaced once two thirds of its life have passed, a leaf the
//!   same way, and a leaf never outlives its CA;
//! - expired CAs are dropped from the bundle by whichever replica writes
//!   next.
//!
//! So there is no moment where a replica serves a leaf whose CA the API
//! server has not had for the grace period. The bundle holds one CA per
//! replica start and per rotation within one CA lifetime (a week by
//! default), which stays small. The first round runs before the listener
//! serves, so a replica is never reachable without a published CA.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::api::{Api, PostParams};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::webhook::{CONFIGURATION_NAME, Target, WEBHOOK_NAME, WebhookError, configuration};
use crate::pki::{
    CertInfo, CsrOptions, Curve, KeyAlgorithm, KeyEncoding, PrivateKey, SanSpec, SignParams,
    SubjectSpec, Usage, build_csr, parse_chain, sign_self_signed, sign_with_ca,
};
use crate::shutdown::CancellationToken;

/// How long CAs and leaves live, and how long a new CA sits in the bundle
/// before it signs what is served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rotation {
    pub ca_duration: Duration,
    pub leaf_duration: Duration,
    pub publish_grace: Duration,
}

impl Rotation {
    pub const DEFAULT_CA_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);
    pub const DEFAULT_LEAF_DURATION: Duration = Duration::from_secs(24 * 3600);

    /// The grace is a tenth of the CA's life, at most 10 s: the API server
    /// loads a changed configuration from its informer within a second.
    pub fn new(ca_duration: Duration, leaf_duration: Duration) -> Result<Rotation, WebhookError> {
        if ca_duration < Duration::from_secs(30) {
            return Err(WebhookError::Rotation(format!(
                "--webhook-ca-duration {ca_duration:?} is below 30s; a CA must outlive a few rounds of rotation"
            )));
        }
        if leaf_duration < Duration::from_secs(3) || leaf_duration > ca_duration / 3 {
            return Err(WebhookError::Rotation(format!(
                "--webhook-leaf-duration {leaf_duration:?} must be at least 3s and at most a third of --webhook-ca-duration ({ca_duration:?}), so a leaf is renewed several times per CA"
            )));
        }
        Ok(Rotation {
            ca_duration,
            leaf_duration,
            publish_grace: (ca_duration / 10).min(Duration::from_secs(10)),
        })
    }
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation::new(Self::DEFAULT_CA_DURATION, Self::DEFAULT_LEAF_DURATION)
            .expect("the defaults are valid")
    }
}

/// When something made at `not_after` with a life of `life` is replaced:
/// once two thirds of the life have passed.
fn renew_at(not_after: SystemTime, life: Duration) -> SystemTime {
    not_after - life / 3
}

/// A certificate with the key that made it.
struct Keyed {
    pem: String,
    info: CertInfo,
    key: PrivateKey,
}

/// A new CA of ours, and since when the API server has it in the bundle.
struct Staged {
    ca: Keyed,
    published: Option<tokio::time::Instant>,
}

/// The server certificate rustls hands out, swapped in place.
#[derive(Debug, Default)]
struct Swap(RwLock<Option<Arc<CertifiedKey>>>);

impl ResolvesServerCert for Swap {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().ok().and_then(|c| c.clone())
    }
}

/// One replica's CA, leaf and share of the bundle.
pub struct Rotator {
    api: Api<MutatingWebhookConfiguration>,
    target: Target,
    names: SanSpec,
    rotation: Rotation,
    /// What the CA's subject names (this replica), to tell CAs apart.
    identity: String,
    current: Option<Keyed>,
    next: Option<Staged>,
    leaf: Option<CertInfo>,
    swap: Arc<Swap>,
}

impl Rotator {
    pub fn new(client: kube::Client, target: Target, rotation: Rotation, identity: &str) -> Self {
        Rotator {
            api: Api::all(client),
            names: target.names(),
            target,
            rotation,
            identity: identity.to_owned(),
            current: None,
            next: None,
            leaf: None,
            swap: Arc::default(),
        }
    }

    /// A server configuration that always serves the newest leaf.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, WebhookError> {
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(&e))?
        .with_no_client_auth()
        .with_cert_resolver(self.swap.clone());
        Ok(Arc::new(config))
    }

    /// Rounds until a leaf is served: the first CA is published, and after
    /// the grace it signs the first leaf.
    pub async fn until_serving(
        &mut self,
        shutdown: &CancellationToken,
    ) -> Result<(), WebhookError> {
        let mut failures = 0u32;
        loop {
            let wait = match self.round().await {
                Ok(_) if self.leaf.is_some() => return Ok(()),
                Ok(next) => next,
                Err(error) => {
                    failures += 1;
                    // A missing permission will not fix itself: say so.
                    if failures >= 5 {
                        return Err(error);
                    }
                    tracing::warn!(%error, "webhook: publishing the CA failed; retrying");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Rounds until `shutdown`; errors are logged and retried, while the
    /// leaf already served keeps working.
    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let wait = match self.round().await {
                Ok(next) => next,
                Err(error) => {
                    tracing::warn!(%error, "webhook: certificate rotation failed; retrying in 5s");
                    Duration::from_secs(5)
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One round: stage a CA when due, publish the bundle, promote a CA the
    /// API server has had for the grace, renew the leaf when due. Returns
    /// how long to sleep before the next round.
    async fn round(&mut self) -> Result<Duration, WebhookError> {
        let now = SystemTime::now();
        let due = self
            .current
            .as_ref()
            .is_none_or(|ca| now >= renew_at(ca.info.not_after, self.rotation.ca_duration));
        if due && self.next.is_none() {
            self.next = Some(Staged {
                ca: make_ca(&self.identity, self.rotation.ca_duration)?,
                published: None,
            });
            tracing::info!("webhook: made a new CA; publishing it before use");
        }
        self.publish(now).await?;
        if let Some(staged) = &self.next
            && staged
                .published
                .is_some_and(|at| at.elapsed() >= self.rotation.publish_grace)
        {
            self.current = self.next.take().map(|s| s.ca);
            self.leaf = None;
            tracing::info!("webhook: serving from the new CA");
        }
        let leaf_due = self
            .leaf
            .as_ref()
            .is_none_or(|leaf| now >= renew_at(leaf.not_after, self.rotation.leaf_duration));
        if leaf_due && self.current.is_some() {
            self.issue_leaf()?;
        }
        Ok(self.next_round(SystemTime::now()))
    }

    /// Writes the bundle: every CA in it that has not expired, plus ours.
    async fn publish(&mut self, now: SystemTime) -> Result<(), WebhookError> {
        let ours: Vec<&Keyed> = self
            .current
            .iter()
            .chain(self.next.as_ref().map(|s| &s.ca))
            .collect();
        for _ in 0..5 {
            let existing = self
                .api
                .get_opt(CONFIGURATION_NAME)
                .await
                .map_err(configure_err)?;
            let old_pem = existing.as_ref().map(bundle_of).unwrap_or_default();
            let mut cas: Vec<(String, CertInfo)> = split_bundle(&old_pem)
                .into_iter()
                .filter(|(_, info)| info.not_after > now)
                .collect();
            for ca in &ours {
                if !cas.iter().any(|(_, info)| info.der == ca.info.der) {
                    cas.push((ca.pem.clone(), ca.info.clone()));
                }
            }
            let new_pem: String = cas.iter().map(|(pem, _)| pem.as_str()).collect();
            let mut desired = configuration(&self.target, &new_pem);
            let result = match existing {
                // Unchanged (and still pointing here): nothing to write.
                Some(found) if old_pem == new_pem && same_client(&found, &desired) => Ok(()),
                Some(found) => {
                    desired.metadata.resource_version = found.metadata.resource_version;
                    self.api
                        .replace(CONFIGURATION_NAME, &PostParams::default(), &desired)
                        .await
                        .map(drop)
                }
                None => self
                    .api
                    .create(&PostParams::default(), &desired)
                    .await
                    .map(drop),
            };
            match result {
                Ok(()) => {
                    if let Some(staged) = &mut self.next
                        && staged.published.is_none()
                    {
                        staged.published = Some(tokio::time::Instant::now());
                    }
                    return Ok(());
                }
                // Another replica wrote in between: read again.
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(configure_err(e)),
            }
        }
        Err(WebhookError::Rotation(
            "the webhook configuration kept changing while the CA bundle was written".into(),
        ))
    }

    /// Signs a new leaf with the current CA and serves it from now on.
    fn issue_leaf(&mut self) -> Result<(), WebhookError> {
        let ca = self.current.as_ref().expect("checked by the caller");
        let key = PrivateKey::generate(KeyAlgorithm::Ecdsa(Curve::P256)).map_err(|e| fail(&e))?;
        let csr = build_csr(
            &key,
            &SubjectSpec::default(),
            &self.names,
            &CsrOptions::default(),
        )
        .map_err(|e| fail(&e))?;
        let leaf = sign_with_ca(
            csr.pem.as_bytes(),
            ca.pem.as_bytes(),
            &ca.key,
            &SignParams {
                usages: vec![Usage::DigitalSignature, Usage::ServerAuth],
                duration: Some(self.rotation.leaf_duration),
                ..Default::default()
            },
        )
        .map_err(|e| fail(&e))?;
        let info = first_cert(&leaf.certificate_pem)?;
        let chain = vec![rustls_pki_types::CertificateDer::from(info.der.clone())];
        let key_der = key.to_der(KeyEncoding::Pkcs8).map_err(|e| fail(&e))?;
        let key_der = rustls_pki_types::PrivateKeyDer::Pkcs8(
            rustls_pki_types::PrivatePkcs8KeyDer::from(key_der.expose().to_vec()),
        );
        let signing =
            rustls::crypto::aws_lc_rs::sign::any_supported_type(&key_der).map_err(|e| fail(&e))?;
        *self.swap.0.write().unwrap_or_else(|p| p.into_inner()) =
            Some(Arc::new(CertifiedKey::new(chain, signing)));
        tracing::info!(serial = %info.serial_hex, "webhook: serving a new certificate");
        self.leaf = Some(info);
        Ok(())
    }

    /// The next moment anything is due, capped at a minute (so a bundle
    /// someone else rewrote is repaired within one).
    fn next_round(&self, now: SystemTime) -> Duration {
        let mut at = now + Duration::from_secs(60);
        if let Some(ca) = &self.current {
            at = at.min(renew_at(ca.info.not_after, self.rotation.ca_duration));
        }
        if let Some(leaf) = &self.leaf {
            at = at.min(renew_at(leaf.not_after, self.rotation.leaf_duration));
        }
        let mut wait = at.duration_since(now).unwrap_or_default();
        if let Some(staged) = &self.next {
            let grace = match staged.published {
                Some(published) => self
                    .rotation
                    .publish_grace
                    .saturating_sub(published.elapsed()),
                // Not yet written: try again soon.
                None => Duration::from_secs(1),
            };
            wait = wait.min(grace);
        }
        wait.max(Duration::from_millis(100))
    }
}

/// A new CA, its subject naming `identity`.
fn make_ca(identity: &str, duration: Duration) -> Result<Keyed, WebhookError> {
    let key = PrivateKey::generate(KeyAlgorithm::Ecdsa(Curve::P256)).map_err(|e| fail(&e))?;
    let subject = SubjectSpec {
        // The time tells one replica's successive CAs apart.
        common_name: Some(format!(
            "cert-csi webhook CA {identity} {}",
            jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ")
        )),
        ..Default::default()
    };
    let csr = build_csr(&key, &subject, &SanSpec::default(), &CsrOptions::default())
        .map_err(|e| fail(&e))?;
    let signed = sign_self_signed(
        csr.pem.as_bytes(),
        &key,
        &SignParams {
            is_ca: true,
            duration: Some(duration),
            ..Default::default()
        },
    )
    .map_err(|e| fail(&e))?;
    let info = first_cert(&signed.certificate_pem)?;
    Ok(Keyed {
        pem: signed.certificate_pem,
        info,
        key,
    })
}

fn fail(e: &dyn std::fmt::Display) -> WebhookError {
    WebhookError::Certificate {
        reason: e.to_string(),
    }
}

fn configure_err(source: kube::Error) -> WebhookError {
    WebhookError::Configure {
        name: CONFIGURATION_NAME.to_owned(),
        source,
    }
}

fn first_cert(pem: &str) -> Result<CertInfo, WebhookError> {
    parse_chain(pem.as_bytes())
        .map_err(|e| fail(&e))?
        .into_iter()
        .next()
        .ok_or_else(|| fail(&"no certificate was made"))
}

/// The PEM `caBundle` of our webhook in `configuration` (empty when absent).
fn bundle_of(configuration: &MutatingWebhookConfiguration) -> String {
    configuration
        .webhooks
        .iter()
        .flatten()
        .find(|w| w.name == WEBHOOK_NAME)
        .and_then(|w| w.client_config.ca_bundle.as_ref())
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .unwrap_or_default()
}

/// Whether `found` sends our webhook where `desired` does.
fn same_client(
    found: &MutatingWebhookConfiguration,
    desired: &MutatingWebhookConfiguration,
) -> bool {
    let client = |c: &MutatingWebhookConfiguration| {
        c.webhooks
            .iter()
            .flatten()
            .find(|w| w.name == WEBHOOK_NAME)
            .map(|w| (w.client_config.url.clone(), w.client_config.service.clone()))
    };
    client(found).is_some() && client(found) == client(desired)
}

/// The certificates of a PEM bundle, each with its own PEM text; anything
/// unreadable is dropped (the next write leaves it out).
fn split_bundle(pem_text: &str) -> Vec<(String, CertInfo)> {
    let Ok(blocks) = pem::parse_many(pem_text.as_bytes()) else {
        return Vec::new();
    };
    blocks
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .filter_map(|b| {
            let text = pem::encode_config(
                &b,
                pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
            );
            let info = first_cert(&text).ok()?;
            Some((text, info))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_checked_and_the_grace_follows_the_ca() {
        let r = Rotation::default();
        assert_eq!(r.publish_grace, Duration::from_secs(10));
        let short = Rotation::new(Duration::from_secs(30), Duration::from_secs(9)).unwrap();
        assert_eq!(short.publish_grace, Duration::from_secs(3));
        let err = Rotation::new(Duration::from_secs(60), Duration::from_secs(30)).unwrap_err();
        assert!(err.to_string().contains("--webhook-leaf-duration"), "{err}");
        let err = Rotation::new(Duration::from_secs(10), Duration::from_secs(3)).unwrap_err();
        assert!(err.to_string().contains("--webhook-ca-duration"), "{err}");
    }

    #[test]
    fn things_are_renewed_after_two_thirds_of_their_life() {
        let end = SystemTime::UNIX_EPOCH + Duration::from_secs(90);
        assert_eq!(
            renew_at(end, Duration::from_secs(90)),
            SystemTime::UNIX_EPOCH + Duration::from_secs(60)
        );
    }

    #[test]
    fn a_bundle_splits_into_its_certificates_and_drops_junk() {
        let a = make_ca("t", Duration::from_secs(60)).unwrap();
        let b = make_ca("t", Duration::from_secs(60)).unwrap();
        let text = format!("{}junk\n{}", a.pem, b.pem);
        let split = split_bundle(&text);
        assert_eq!(split.len(), 2);
        assert_eq!(split[0].1.der, a.info.der);
        assert_eq!(split[1].1.der, b.info.der);
        assert!(split[0].1.subject.contains("cert-csi webhook CA t"));
    }
}
