//! The request step of a publish or a renewal: resume the volume's pending
//! CertificateRequest, or make a key, a CSR and a new request; then take
//! the decision and check what the issuer returned.

use super::error::{PublishError, encoding_error};
use super::service::VolumeManager;
use crate::api::IssuerRef;
use crate::issuance::{self, IssuanceError, Issued, RequestParams, Subscription};
use crate::pki::{self, CertInfo, KeyAlgorithm, KeyEncoding, PrivateKey};
use crate::store::{RequestPhase, RequestRef, VolumeDir, VolumeState};
use crate::telemetry::metrics::RequestKey;
use crate::volume::VolumeSpec;

/// A request being waited on, with the key it was made for.
pub(super) struct OpenRequest {
    pub key: PrivateKey,
    pub namespace: String,
    pub name: String,
    pub sub: Subscription,
    /// Whether this is a request that existed before (a timed-out publish,
    /// a restart), not a new one.
    pub resumed: bool,
}

impl OpenRequest {
    /// `namespace/name`, for logs.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Where a new request's key comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum KeySource {
    /// A first publish: a ready key from the RSA pool when there is one,
    /// else a fresh key.
    Pooled,
    /// A renewal: a fresh key (renewals leave the pool to pods).
    Fresh,
    /// A renewal with `reuse-private-key`: the key the pod already has.
    Reuse,
}

impl KeySource {
    /// The source of a renewal's key.
    pub fn renewal(reuse_private_key: bool) -> KeySource {
        if reuse_private_key {
            KeySource::Reuse
        } else {
            KeySource::Fresh
        }
    }
}

impl VolumeManager {
    /// Resumes `pending` when its key survived in `dir`: same key, same
    /// request, no second CertificateRequest. Otherwise takes a key from
    /// `source`, keeps it as the pending key, records the request as
    /// pending in `state` and creates it.
    pub(super) async fn open_request(
        &self,
        spec: &VolumeSpec,
        dir: &VolumeDir,
        pending: Option<RequestRef>,
        state: VolumeState,
        source: KeySource,
    ) -> Result<OpenRequest, PublishError> {
        if let Some(request) = pending
            && let Some(open) = self.resume(dir, request).await?
        {
            return Ok(open);
        }
        let key = match source {
            KeySource::Reuse => {
                let pem = self
                    .volumes
                    .read_published(dir, &spec.private_key_file)
                    .await?;
                PrivateKey::from_pem(pem.expose())?
            }
            KeySource::Pooled => match self.key_pool.take(spec.key.algorithm) {
                Some(key) => key,
                None => new_key(spec).await?,
            },
            KeySource::Fresh => new_key(spec).await?,
        };
        let csr = pki::build_csr(
            &key,
            &spec.subject,
            &spec.sans,
            &self.driver.csr_options(spec),
        )
        .map_err(encoding_error)?;
        let pending_key = key.to_pem(KeyEncoding::Pkcs8)?;
        let namespace = spec.pod.namespace.clone();
        let name = issuance::new_request_name(&spec.pod.name);
        let sub = self.tracker.subscribe(&namespace, &name);
        if let Err(e) = self
            .create_request(spec, dir, pending_key, &csr.pem, &name, state)
            .await
        {
            self.tracker.forget(&namespace, &name);
            return Err(e);
        }
        Ok(OpenRequest {
            key,
            namespace,
            name,
            sub,
            resumed: false,
        })
    }

    /// Picks up a request left pending. `None` when there is nothing usable
    /// to resume (the key or the request is gone).
    async fn resume(
        &self,
        dir: &VolumeDir,
        request: RequestRef,
    ) -> Result<Option<OpenRequest>, PublishError> {
        let Some(pem) = self.volumes.read_pending_key(dir).await? else {
            return Ok(None);
        };
        let key = PrivateKey::from_pem(pem.expose())?;
        let RequestRef {
            namespace, name, ..
        } = request;
        let sub = self.tracker.subscribe(&namespace, &name);
        match issuance::get(&self.client, &namespace, &name).await {
            Ok(Some(existing)) => {
                self.tracker.seed(existing);
                Ok(Some(OpenRequest {
                    key,
                    namespace,
                    name,
                    sub,
                    resumed: true,
                }))
            }
            Ok(None) => {
                // Deleted meanwhile (by hand, or collected): start afresh.
                self.tracker.forget(&namespace, &name);
                Ok(None)
            }
            Err(e) => {
                self.tracker.forget(&namespace, &name);
                Err(e.into())
            }
        }
    }

    /// Keeps the request's key in the tmpfs and saves `state` with this
    /// request as pending, then creates it: a crash right after the create
    /// then resumes this request, with this key, instead of making a second.
    async fn create_request(
        &self,
        spec: &VolumeSpec,
        dir: &VolumeDir,
        pending_key: pki::Secret,
        csr_pem: &str,
        name: &str,
        mut state: VolumeState,
    ) -> Result<(), PublishError> {
        let params = RequestParams {
            node_id: &self.config.node_id,
            volume_id: &spec.volume_id,
            pod_namespace: &spec.pod.namespace,
            pod_name: &spec.pod.name,
            pod_uid: &spec.pod.uid,
            csr_pem,
            issuer_ref: IssuerRef {
                name: spec.issuer.name.clone(),
                kind: Some(spec.issuer.kind.clone()),
                group: Some(spec.issuer.group.clone()),
            },
            duration: spec.duration,
            is_ca: spec.is_ca,
            usages: &spec.usages,
            annotations: &spec.annotations,
        };
        let request = issuance::build_request(name, &params);
        state.node_id = Some(self.config.node_id.clone());
        state.request = Some(RequestRef {
            namespace: spec.pod.namespace.clone(),
            name: name.to_string(),
            phase: RequestPhase::Pending,
        });
        self.volumes.stage_request(dir, pending_key, state).await?;
        let client = self.driver.request_client(spec, &self.client)?;
        issuance::create(&client, &request).await?;
        self.metrics
            .request_created(&RequestKey::new(&spec.pod.namespace, name));
        Ok(())
    }

    /// Ends the wait on `open`: stops following it, counts the decision,
    /// and checks that the certificate belongs to the key and is valid now.
    pub(super) fn close_request(
        &self,
        open: &OpenRequest,
        outcome: Result<Issued, IssuanceError>,
        received: std::time::SystemTime,
    ) -> Result<(Issued, CertInfo), PublishError> {
        self.tracker.forget(&open.namespace, &open.name);
        self.request_decided(&open.namespace, &open.name, &outcome);
        let issued = outcome?;
        let leaf = pki::check_issued(
            issued.chain_pem.as_bytes(),
            open.key.public_key_der(),
            received,
        )
        .map_err(|e| PublishError::Issued(e.to_string()))?;
        Ok((issued, leaf))
    }
}

/// A fresh key of the volume's algorithm. RSA generation takes tens of
/// milliseconds and runs off the async threads; an elliptic-curve key takes
/// about 20 µs, less than handing it to another thread, so it is made here.
/// (Handing every key over started a blocking thread per publish in flight:
/// 50 threads after a burst of 64, each keeping its stack and arena pages.)
async fn new_key(spec: &VolumeSpec) -> Result<PrivateKey, PublishError> {
    let algorithm = spec.key.algorithm;
    if !matches!(algorithm, KeyAlgorithm::Rsa { .. }) {
        return PrivateKey::generate(algorithm).map_err(PublishError::from);
    }
    tokio::task::spawn_blocking(move || PrivateKey::generate(algorithm))
        .await
        .map_err(|e| PublishError::Internal(format!("key generation task failed: {e}")))?
        .map_err(PublishError::from)
}
