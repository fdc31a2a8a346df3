//! The requester-identity admission webhook: the one mutation of
//! cert-manager's webhook that approval policies depend on, for clusters
//! without cert-manager.
//!
//! On CREATE of a CertificateRequest it overwrites `spec.username`, `uid`,
//! `groups` and `extra` with the caller the API server authenticated
//! (`request.userInfo`), so whatever a client writes there is discarded. On
//! UPDATE it refuses any change to `spec`: a request's identity and CSR are
//! fixed once admitted. That is what lets the SPIFFE approver trust
//! `spec.username`.
//!
//! # Serving certificate
//! With `--webhook-configure` (the chart's way) every replica serves the
//! webhook with its own in-memory CA and leaf, rotated while it runs, and
//! shares only its CA certificate through the configuration's `caBundle`
//! ([`super::webhook_rotation`]). No key is stored anywhere and no
//! cert-manager is needed.
//!
//! Without it, whoever writes the configuration supplies the bundle, and
//! [`serving_cert`] makes one long-lived CA and leaf at start (the CA key
//! is dropped as soon as the leaf is signed); nothing rotates them.
//!
//! `failurePolicy` is `Fail`: if the webhook cannot be reached, creating a
//! request fails and its creator retries, rather than a request being stored
//! with a requester the client made up.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::routing::post;
use base64::Engine as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use thiserror::Error;

use crate::pki::{
    CsrOptions, Curve, KeyAlgorithm, KeyEncoding, PrivateKey, SanSpec, SignParams, SubjectSpec,
    Usage, build_csr, sign_self_signed, sign_with_ca,
};
use crate::shutdown::CancellationToken;

/// The MutatingWebhookConfiguration the controller writes.
pub const CONFIGURATION_NAME: &str = "cert-csi-webhook";
/// The webhook's name inside it (must be a qualified name).
pub const WEBHOOK_NAME: &str = "requester-identity.cert-csi.io";
/// The HTTP path the webhook is served on.
pub const PATH: &str = "/mutate-certificaterequests";
/// The requester fields the webhook owns, as named under `spec`.
pub const REQUESTER_FIELDS: [&str; 4] = ["username", "uid", "groups", "extra"];

/// Life of the in-memory CA and serving certificate. Long, because nothing
/// rotates them while the process lives, and harmless: the CA key is gone
/// once the leaf is signed, and the leaf key never leaves this process.
const SERVING_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// A TLS handshake that takes longer than this is dropped, so one slow
/// client cannot hold a connection slot.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
pub enum WebhookError {
    #[error(
        "--webhook-url {url:?} is not a usable https URL ({reason}); write e.g. https://cert-csi-webhook.cert-csi.svc:443/mutate-certificaterequests"
    )]
    Url { url: String, reason: String },
    #[error(
        "webhook target: set --webhook-service-name and --webhook-service-namespace, or --webhook-url"
    )]
    NoTarget,
    #[error("making the webhook's serving certificate failed: {reason}")]
    Certificate { reason: String },
    #[error("--webhook-address {addr}: cannot listen: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "writing MutatingWebhookConfiguration {name:?} failed: {source}; the controller needs get, create and update on mutatingwebhookconfigurations (admissionregistration.k8s.io)"
    )]
    Configure {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("the webhook server stopped: {0}")]
    Serve(#[source] std::io::Error),
    #[error("webhook certificate rotation: {0}")]
    Rotation(String),
}

/// Where the API server reaches the webhook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `clientConfig.service`: the in-cluster Service in front of the controller.
    Service {
        namespace: String,
        name: String,
        port: u16,
    },
    /// `clientConfig.url`, for API servers outside the cluster network.
    Url(url::Url),
}

impl Target {
    pub fn url(value: &str) -> Result<Target, WebhookError> {
        let bad = |reason: &str| WebhookError::Url {
            url: value.to_owned(),
            reason: reason.to_owned(),
        };
        let url = url::Url::parse(value).map_err(|e| bad(&e.to_string()))?;
        if url.scheme() != "https" {
            return Err(bad("the scheme must be https"));
        }
        if url.host().is_none() {
            return Err(bad("it has no host"));
        }
        if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
            return Err(bad("query, fragment and user info are not allowed"));
        }
        Ok(Target::Url(url))
    }

    /// The names the serving certificate must carry for this target.
    pub fn names(&self) -> SanSpec {
        match self {
            Target::Service {
                namespace, name, ..
            } => SanSpec {
                dns_names: vec![
                    name.clone(),
                    format!("{name}.{namespace}"),
                    format!("{name}.{namespace}.svc"),
                    format!("{name}.{namespace}.svc.cluster.local"),
                ],
                ..Default::default()
            },
            Target::Url(url) => match url.host() {
                Some(url::Host::Ipv4(ip)) => SanSpec {
                    ip_addresses: vec![IpAddr::V4(ip)],
                    ..Default::default()
                },
                Some(url::Host::Ipv6(ip)) => SanSpec {
                    ip_addresses: vec![IpAddr::V6(ip)],
                    ..Default::default()
                },
                Some(url::Host::Domain(d)) => SanSpec {
                    dns_names: vec![d.to_owned()],
                    ..Default::default()
                },
                None => SanSpec::default(),
            },
        }
    }

    fn client_config(&self, ca_pem: &str) -> Value {
        let ca_bundle = base64::engine::general_purpose::STANDARD.encode(ca_pem.as_bytes());
        match self {
            Target::Service {
                namespace,
                name,
                port,
            } => json!({
                "service": {"namespace": namespace, "name": name, "port": port, "path": PATH},
                "caBundle": ca_bundle,
            }),
            Target::Url(url) => json!({"url": url.as_str(), "caBundle": ca_bundle}),
        }
    }
}

/// The webhook's settings (from the `--webhook-*` flags).
#[derive(Clone, Debug)]
pub struct WebhookOptions {
    pub listen: SocketAddr,
    pub target: Target,
    /// Keep the MutatingWebhookConfiguration's bundle, and rotate the
    /// serving certificate ([`super::webhook_rotation`]).
    pub configure: bool,
    pub rotation: super::webhook_rotation::Rotation,
    /// This replica, as its CA's subject names it.
    pub identity: String,
}

/// An in-memory CA and a server configuration using a leaf it signed.
pub struct ServingCert {
    /// The PEM `caBundle` clients verify the server with.
    pub ca_pem: String,
    pub server: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert")
            .field("ca_pem", &self.ca_pem)
            .field("server", &"<key redacted>")
            .finish()
    }
}

/// Makes a fresh CA and a serving certificate for `names`.
pub fn serving_cert(names: &SanSpec) -> Result<ServingCert, WebhookError> {
    let fail = |e: &dyn std::fmt::Display| WebhookError::Certificate {
        reason: e.to_string(),
    };
    let algorithm = KeyAlgorithm::Ecdsa(Curve::P256);
    let ca_key = PrivateKey::generate(algorithm).map_err(|e| fail(&e))?;
    let ca_subject = SubjectSpec {
        common_name: Some("cert-csi webhook CA".into()),
        ..Default::default()
    };
    let ca_csr = build_csr(
        &ca_key,
        &ca_subject,
        &SanSpec::default(),
        &CsrOptions::default(),
    )
    .map_err(|e| fail(&e))?;
    let ca = sign_self_signed(
        ca_csr.pem.as_bytes(),
        &ca_key,
        &SignParams {
            is_ca: true,
            duration: Some(SERVING_LIFETIME),
            ..Default::default()
        },
    )
    .map_err(|e| fail(&e))?;
    let key = PrivateKey::generate(algorithm).map_err(|e| fail(&e))?;
    let csr = build_csr(&key, &SubjectSpec::default(), names, &CsrOptions::default())
        .map_err(|e| fail(&e))?;
    let leaf = sign_with_ca(
        csr.pem.as_bytes(),
        ca.certificate_pem.as_bytes(),
        &ca_key,
        &SignParams {
            usages: vec![Usage::DigitalSignature, Usage::ServerAuth],
            duration: Some(SERVING_LIFETIME),
            ..Default::default()
        },
    )
    .map_err(|e| fail(&e))?;
    drop(ca_key);
    let chain = pem::parse_many(leaf.certificate_pem.as_bytes())
        .map_err(|e| fail(&e))?
        .into_iter()
        .map(|p| rustls_pki_types::CertificateDer::from(p.into_contents()))
        .collect();
    let key_der = key.to_der(KeyEncoding::Pkcs8).map_err(|e| fail(&e))?;
    let key_der = rustls_pki_types::PrivateKeyDer::Pkcs8(
        rustls_pki_types::PrivatePkcs8KeyDer::from(key_der.expose().to_vec()),
    );
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| fail(&e))?
    .with_no_client_auth()
    .with_single_cert(chain, key_der)
    .map_err(|e| fail(&e))?;
    Ok(ServingCert {
        ca_pem: ca.certificate_pem,
        server: Arc::new(server),
    })
}

/// The MutatingWebhookConfiguration that routes CertificateRequest CREATE
/// and UPDATE to this webhook.
pub fn configuration(target: &Target, ca_pem: &str) -> MutatingWebhookConfiguration {
    let value = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {
            "name": CONFIGURATION_NAME,
            "labels": {"app.kubernetes.io/managed-by": "cert-csi"},
        },
        "webhooks": [{
            "name": WEBHOOK_NAME,
            "clientConfig": target.client_config(ca_pem),
            "rules": [{
                "operations": ["CREATE", "UPDATE"],
                "apiGroups": ["cert-manager.io"],
                "apiVersions": ["v1"],
                "resources": ["certificaterequests"],
                "scope": "Namespaced",
            }],
            "failurePolicy": "Fail",
            "matchPolicy": "Equivalent",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 10,
            // Another mutating webhook could touch spec after ours; being
            // called again puts the authenticated requester back.
            "reinvocationPolicy": "IfNeeded",
        }],
    });
    serde_json::from_value(value).expect("the configuration literal matches the API type")
}

/// Creates the configuration, or replaces an existing one in place.
pub async fn register(
    client: kube::Client,
    configuration: &MutatingWebhookConfiguration,
) -> Result<(), WebhookError> {
    let name = configuration.metadata.name.clone().unwrap_or_default();
    let err = |source| WebhookError::Configure {
        name: name.clone(),
        source,
    };
    let api: Api<MutatingWebhookConfiguration> = Api::all(client);
    // A conflict means another writer got in between; two rounds settle it.
    for _ in 0..3 {
        match api.get_opt(&name).await.map_err(err)? {
            None => match api.create(&PostParams::default(), configuration).await {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(err(e)),
            },
            Some(existing) => {
                let mut desired = configuration.clone();
                desired.metadata.resource_version = existing.metadata.resource_version;
                match api.replace(&name, &PostParams::default(), &desired).await {
                    Ok(_) => return Ok(()),
                    Err(kube::Error::Api(s)) if s.code == 409 => continue,
                    Err(e) => return Err(err(e)),
                }
            }
        }
    }
    Err(err(kube::Error::Api(Box::new(kube::core::Status {
        code: 409,
        message: "the configuration kept changing while it was written".into(),
        ..Default::default()
    }))))
}

/// What the webhook decides for one admission request.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Allowed, with these JSON Patch operations (possibly none).
    Allow(Vec<Value>),
    Deny {
        code: u16,
        message: String,
    },
}

/// The decision for an AdmissionReview `request`. Pure.
pub fn admit(request: &Value) -> Verdict {
    let kind = &request["kind"];
    if kind["group"] != "cert-manager.io" || kind["kind"] != "CertificateRequest" {
        // Registered only for CertificateRequests; anything else is not ours
        // to change.
        return Verdict::Allow(Vec::new());
    }
    match request["operation"].as_str() {
        Some("CREATE") => Verdict::Allow(stamp_requester(&request["object"], &request["userInfo"])),
        Some("UPDATE") => {
            let old = &request["oldObject"]["spec"];
            let new = &request["object"]["spec"];
            let changed: Vec<String> = changed_fields(old, new);
            if changed.is_empty() {
                Verdict::Allow(Vec::new())
            } else {
                Verdict::Deny {
                    code: 403,
                    message: format!(
                        "{} of a CertificateRequest cannot change after creation (the requester fields are set by the API from the caller, and the request is signed as admitted); delete it and create a new one",
                        changed.join(", ")
                    ),
                }
            }
        }
        _ => Verdict::Allow(Vec::new()),
    }
}

/// `spec.<field>` names that differ between two specs.
fn changed_fields(old: &Value, new: &Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let old = old.as_object().unwrap_or(&empty);
    let new = new.as_object().unwrap_or(&empty);
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| old.get(*k) != new.get(*k))
        .map(|k| format!("spec.{k}"))
        .collect()
}

/// JSON Patch operations that make the requester fields equal the caller.
/// A field the caller has no value for is removed, so a value the client
/// wrote can never survive.
fn stamp_requester(object: &Value, user: &Value) -> Vec<Value> {
    let spec = &object["spec"];
    let mut ops = Vec::new();
    if !spec.is_object() {
        ops.push(json!({"op": "add", "path": "/spec", "value": {}}));
    }
    for field in REQUESTER_FIELDS {
        let value = &user[field];
        let empty = match value {
            Value::Null => true,
            Value::String(s) => s.is_empty(),
            Value::Array(a) => a.is_empty(),
            Value::Object(o) => o.is_empty(),
            _ => false,
        };
        let path = format!("/spec/{field}");
        if !empty {
            // "add" replaces an existing member, so one op covers both cases.
            ops.push(json!({"op": "add", "path": path, "value": value}));
        } else if spec.get(field).is_some() {
            ops.push(json!({"op": "remove", "path": path}));
        }
    }
    ops
}

/// The AdmissionReview answer for a review. Pure.
pub fn respond(review: &Value) -> Value {
    let request = &review["request"];
    let mut response = json!({"uid": request["uid"].clone()});
    match admit(request) {
        Verdict::Allow(ops) => {
            response["allowed"] = json!(true);
            if !ops.is_empty() {
                response["patchType"] = json!("JSONPatch");
                response["patch"] = json!(
                    base64::engine::general_purpose::STANDARD
                        .encode(Value::Array(ops).to_string().as_bytes())
                );
            }
        }
        Verdict::Deny { code, message } => {
            response["allowed"] = json!(false);
            response["status"] = json!({
                "code": code,
                "reason": "Forbidden",
                "message": message,
            });
        }
    }
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response,
    })
}

/// TLS connections, handshaken in their own tasks so a slow or broken
/// client never blocks the next accept.
struct TlsListener {
    local: SocketAddr,
    ready: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        SocketAddr,
    )>,
    acceptor: tokio::task::JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl TlsListener {
    fn new(tcp: tokio::net::TcpListener, config: Arc<rustls::ServerConfig>) -> TlsListener {
        let local = tcp
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (tx, ready) = tokio::sync::mpsc::channel(64);
        let tls = tokio_rustls::TlsAcceptor::from(config);
        let acceptor = tokio::spawn(async move {
            loop {
                let (stream, peer) = match tcp.accept().await {
                    Ok(pair) => pair,
                    Err(error) => {
                        tracing::debug!(%error, "webhook: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let tls = tls.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(%peer, %error, "webhook: TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "webhook: TLS handshake timed out"),
                    }
                });
            }
        });
        TlsListener {
            local,
            ready,
            acceptor,
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(pair) => pair,
            // The accept task only ends when aborted on drop.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// Serves the webhook over TLS on `listener` until `shutdown` fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    cert: &ServingCert,
    shutdown: CancellationToken,
) -> Result<(), WebhookError> {
    serve_with(listener, cert.server.clone(), shutdown).await
}

/// [`serve`] with any server configuration (a rotating one).
async fn serve_with(
    listener: tokio::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
) -> Result<(), WebhookError> {
    let app = axum::Router::new().route(
        PATH,
        post(|Json(review): Json<Value>| async move { Json(respond(&review)) }),
    );
    let listener = TlsListener::new(listener, config);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .map_err(WebhookError::Serve)
}

/// Listens on `options.listen`, then does what [`run_on`] does.
pub async fn run(
    client: kube::Client,
    options: WebhookOptions,
    ready: Arc<std::sync::atomic::AtomicBool>,
    shutdown: CancellationToken,
) -> Result<(), WebhookError> {
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|source| WebhookError::Listen {
            addr: options.listen,
            source,
        })?;
    run_on(client, listener, &options, ready, shutdown).await
}

/// Serves the webhook on `listener` until `shutdown`, and sets `ready` once
/// it serves. With `options.configure`, the serving certificate rotates
/// and its CA is published in the configuration before the first
/// connection is served. Taking a bound listener lets a caller listen on
/// port 0 and then name the port it got in a `clientConfig.url` target.
pub async fn run_on(
    client: kube::Client,
    listener: tokio::net::TcpListener,
    options: &WebhookOptions,
    ready: Arc<std::sync::atomic::AtomicBool>,
    shutdown: CancellationToken,
) -> Result<(), WebhookError> {
    let address = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let config = if options.configure {
        let mut rotator = super::webhook_rotation::Rotator::new(
            client,
            options.target.clone(),
            options.rotation.clone(),
            &options.identity,
        );
        let config = rotator.server_config()?;
        rotator.until_serving(&shutdown).await?;
        tracing::info!(
            configuration = CONFIGURATION_NAME,
            "registered the requester-identity webhook"
        );
        tokio::spawn(rotator.run(shutdown.clone()));
        config
    } else {
        serving_cert(&options.target.names())?.server
    };
    tracing::info!(%address, path = PATH, "webhook serving");
    ready.store(true, std::sync::atomic::Ordering::SeqCst);
    serve_with(listener, config, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review(operation: &str, object: Value, old: Option<Value>, user: Value) -> Value {
        let mut request = json!({
            "uid": "u-1",
            "kind": {"group": "cert-manager.io", "version": "v1", "kind": "CertificateRequest"},
            "operation": operation,
            "userInfo": user,
            "object": object,
        });
        if let Some(old) = old {
            request["oldObject"] = old;
        }
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})
    }

    fn patched(response: &Value, mut object: Value) -> Value {
        let patch = base64::engine::general_purpose::STANDARD
            .decode(response["response"]["patch"].as_str().unwrap())
            .unwrap();
        let ops: Vec<Value> = serde_json::from_slice(&patch).unwrap();
        for op in ops {
            let path = op["path"].as_str().unwrap().trim_start_matches("/spec/");
            match op["op"].as_str().unwrap() {
                "add" => object["spec"][path] = op["value"].clone(),
                "remove" => {
                    object["spec"].as_object_mut().unwrap().remove(path);
                }
                other => panic!("unexpected op {other}"),
            }
        }
        object
    }

    #[test]
    fn create_overwrites_every_requester_field_with_the_caller() {
        let object = json!({"spec": {
            "request": "x", "username": "system:serviceaccount:shop:admin",
            "uid": "forged", "groups": ["system:masters"], "extra": {"k": ["v"]},
        }});
        let user = json!({
            "username": "system:serviceaccount:shop:billing",
            "uid": "sa-uid",
            "groups": ["system:serviceaccounts", "system:authenticated"],
        });
        let r = respond(&review("CREATE", object.clone(), None, user));
        assert_eq!(r["response"]["uid"], "u-1");
        assert_eq!(r["response"]["allowed"], true);
        assert_eq!(r["response"]["patchType"], "JSONPatch");
        let out = patched(&r, object);
        assert_eq!(
            out["spec"]["username"],
            "system:serviceaccount:shop:billing"
        );
        assert_eq!(out["spec"]["uid"], "sa-uid");
        assert_eq!(
            out["spec"]["groups"],
            json!(["system:serviceaccounts", "system:authenticated"])
        );
        assert!(
            out["spec"].get("extra").is_none(),
            "a forged extra is removed"
        );
        assert_eq!(out["spec"]["request"], "x");
    }

    #[test]
    fn create_by_anonymous_still_sets_the_username() {
        let object = json!({"spec": {"request": "x"}});
        let user = json!({"username": "system:anonymous", "groups": ["system:unauthenticated"]});
        let r = respond(&review("CREATE", object.clone(), None, user));
        let out = patched(&r, object);
        assert_eq!(out["spec"]["username"], "system:anonymous");
        assert!(out["spec"].get("uid").is_none());
    }

    #[test]
    fn update_refuses_spec_changes_and_allows_the_rest() {
        let old = json!({"metadata": {"labels": {}}, "spec": {"request": "x", "username": "a"}});
        let mut relabelled = old.clone();
        relabelled["metadata"]["labels"]["k"] = json!("v");
        let r = respond(&review("UPDATE", relabelled, Some(old.clone()), json!({})));
        assert_eq!(r["response"]["allowed"], true);
        assert!(r["response"].get("patch").is_none());

        let mut forged = old.clone();
        forged["spec"]["username"] = json!("b");
        forged["spec"]["groups"] = json!(["g"]);
        let r = respond(&review("UPDATE", forged, Some(old), json!({})));
        assert_eq!(r["response"]["allowed"], false);
        assert_eq!(r["response"]["status"]["code"], 403);
        let message = r["response"]["status"]["message"].as_str().unwrap();
        assert!(message.contains("spec.groups, spec.username"), "{message}");
    }

    #[test]
    fn other_kinds_pass_untouched() {
        let mut r = review(
            "CREATE",
            json!({"spec": {}}),
            None,
            json!({"username": "x"}),
        );
        r["request"]["kind"]["kind"] = json!("Certificate");
        let out = respond(&r);
        assert_eq!(out["response"]["allowed"], true);
        assert!(out["response"].get("patch").is_none());
    }

    #[test]
    fn targets_and_configuration() {
        let svc = Target::Service {
            namespace: "cert-csi".into(),
            name: "cert-csi-webhook".into(),
            port: 443,
        };
        assert!(
            svc.names()
                .dns_names
                .contains(&"cert-csi-webhook.cert-csi.svc".to_string())
        );
        let c = configuration(&svc, "PEM");
        let hook = &c.webhooks.as_ref().unwrap()[0];
        assert_eq!(hook.failure_policy.as_deref(), Some("Fail"));
        let service = hook.client_config.service.as_ref().unwrap();
        assert_eq!(service.path.as_deref(), Some(PATH));
        assert_eq!(hook.client_config.ca_bundle.as_ref().unwrap().0, b"PEM");
        let rules = hook.rules.as_ref().unwrap();
        assert_eq!(
            rules[0].resources.as_deref(),
            Some(&["certificaterequests".to_string()][..])
        );

        let url = Target::url("https://127.0.0.1:9443/mutate-certificaterequests").unwrap();
        assert_eq!(
            url.names().ip_addresses,
            vec!["127.0.0.1".parse::<IpAddr>().unwrap()]
        );
        assert!(Target::url("http://x/y").is_err());
        assert!(Target::url("https://x/y?q=1").is_err());
    }

    #[test]
    fn serving_cert_names_the_target() {
        let names = SanSpec {
            dns_names: vec!["hook.ns.svc".into()],
            ..Default::default()
        };
        let cert = serving_cert(&names).unwrap();
        let ca = crate::pki::parse_chain(cert.ca_pem.as_bytes()).unwrap();
        assert_eq!(ca.len(), 1);
        assert!(format!("{cert:?}").contains("redacted"));
    }
}
