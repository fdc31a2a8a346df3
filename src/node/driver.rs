//! The two drivers one node plugin can serve, and everything that differs
//! between them: how a volume's spec is read, which extensions its CSR
//! carries, which credentials a request needs, and which client creates it.
//! Everything else (publish, renewal, recovery, trust) is the same code.

use std::sync::Arc;
use std::time::SystemTime;

use super::error::PublishError;
use crate::pki::CsrOptions;
use crate::volume::spiffe_attributes::{self, RequestMode, SpiffeConfig, TokenError};
use crate::volume::{self, AttributeError, PublishInput, SecretString, VolumeSpec, kubelet};

/// Which driver this node plugin serves.
#[derive(Clone)]
pub enum Driver {
    /// `csi.cert-manager.io`: the pod describes its certificate in volume
    /// attributes. The node plugin's own identity creates the request, or,
    /// with `token_requests` (csi-driver's `--use-token-request`), the
    /// pod's own ServiceAccount token for the API server's audience (""),
    /// so that `spec.username` names the pod's ServiceAccount and an
    /// approver policy can key on it. `token_requests` holds the API server
    /// settings such clients are built from.
    CertManager {
        token_requests: Option<Arc<kube::Config>>,
    },
    /// `spiffe.csi.cert-manager.io`: the identity comes from the pod's
    /// ServiceAccount.
    Spiffe(Spiffe),
}

/// The SPIFFE driver's settings, and what it needs to act as the pod.
#[derive(Clone)]
pub struct Spiffe {
    pub config: Arc<SpiffeConfig>,
    /// The API server settings that pod-token clients are built from (the
    /// node plugin's own configuration, whose credentials are dropped).
    pub api: Option<Arc<kube::Config>>,
}

impl Default for Driver {
    fn default() -> Self {
        Driver::CertManager {
            token_requests: None,
        }
    }
}

/// The audience of the token csi-driver creates requests with: the API
/// server's own.
const CERT_MANAGER_TOKEN_AUDIENCE: &str = "";

impl Driver {
    /// The cert-manager driver creating requests with the pod's token, as
    /// csi-driver's `--use-token-request` does; `api` is the API server.
    pub fn cert_manager_with_pod_tokens(api: kube::Config) -> Driver {
        Driver::CertManager {
            token_requests: Some(Arc::new(api)),
        }
    }

    /// The SPIFFE driver with `config`; `api` is needed in pod-token mode.
    pub fn spiffe(config: SpiffeConfig, api: Option<kube::Config>) -> Driver {
        Driver::Spiffe(Spiffe {
            config: Arc::new(config),
            api: api.map(Arc::new),
        })
    }

    /// The volume's spec under this driver.
    pub fn parse(
        &self,
        input: &PublishInput<'_>,
        node_id: &str,
    ) -> Result<VolumeSpec, AttributeError> {
        match self {
            Driver::CertManager { .. } => volume::parse(input),
            Driver::Spiffe(s) => spiffe_attributes::parse(input, &s.config, node_id),
        }
    }

    /// Both drivers' CSRs are what Go's `x509.CreateCertificateRequest`
    /// makes of a template, as csi-driver and csi-driver-spiffe send them:
    /// the subject and a non-critical SAN extension, no usage or basic
    /// constraints extensions (csi-driver-spiffe's approver refuses
    /// basicConstraints), and RSA signed with SHA-256 whatever its size.
    /// The differential tests compare them with upstream's byte for byte.
    pub fn csr_options<'a>(&self, _spec: &'a VolumeSpec) -> CsrOptions<'a> {
        CsrOptions {
            rsa_digest: crate::pki::RsaDigest::Sha256,
            ..CsrOptions::default()
        }
    }

    /// Fails before any key or request exists when the request could not
    /// be made anyway: no usable pod token in pod-token mode.
    pub fn check_credentials(&self, spec: &VolumeSpec) -> Result<(), PublishError> {
        if let Driver::Spiffe(s) = self
            && spec.issuer.name.is_empty()
        {
            return Err(PublishError::NoIssuer {
                config_map: s
                    .config
                    .runtime_config_map
                    .as_ref()
                    .map(|(ns, name)| format!("{ns}/{name}"))
                    .unwrap_or_default(),
            });
        }
        self.pod_token(spec).map(drop)
    }

    /// The client that creates this volume's request: the pod's own token
    /// in pod-token mode, else `own` (the node plugin's client). The token
    /// is used for this one call and dropped; it is never stored or logged.
    pub fn request_client(
        &self,
        spec: &VolumeSpec,
        own: &kube::Client,
    ) -> Result<kube::Client, PublishError> {
        let Some(token) = self.pod_token(spec)? else {
            return Ok(own.clone());
        };
        let api = match self {
            Driver::Spiffe(Spiffe { api: Some(api), .. }) => api,
            Driver::CertManager {
                token_requests: Some(api),
            } => api,
            _ => {
                return Err(PublishError::Internal(
                    "pod-token mode needs the API server settings (Driver::spiffe with an api config)"
                        .into(),
                ));
            }
        };
        client_for_token(api, &token).map_err(|e| {
            PublishError::Internal(format!("building a client for the pod's token: {e}"))
        })
    }

    /// The pod's token when this driver creates requests with it.
    fn pod_token(&self, spec: &VolumeSpec) -> Result<Option<SecretString>, PublishError> {
        match self {
            Driver::Spiffe(s) if s.config.mode == RequestMode::PodToken => {
                spiffe_attributes::pod_token(
                    spec.tokens.as_ref(),
                    &s.config.audience,
                    SystemTime::now(),
                )
                .map(Some)
                .map_err(token_error)
            }
            Driver::CertManager {
                token_requests: Some(_),
            } => spiffe_attributes::pod_token(
                spec.tokens.as_ref(),
                CERT_MANAGER_TOKEN_AUDIENCE,
                SystemTime::now(),
            )
            .map(Some)
            .map_err(token_error),
            _ => Ok(None),
        }
    }
}

/// A client that talks to the same API server as `base` but authenticates
/// only with `token`: every other credential of `base` (client certificate,
/// token file, exec plugin) is dropped, so the request is the pod's alone.
pub fn client_for_token(
    base: &kube::Config,
    token: &SecretString,
) -> Result<kube::Client, kube::Error> {
    let mut config = base.clone();
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.expose().to_string().into()),
        ..Default::default()
    };
    kube::Client::try_from(config)
}

fn token_error(e: TokenError) -> PublishError {
    PublishError::Attribute(AttributeError {
        attribute: kubelet::SERVICE_ACCOUNT_TOKENS.to_string(),
        message: e.to_string(),
    })
}
