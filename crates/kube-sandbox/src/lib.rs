//! An in-memory Kubernetes API server on loopback, faithful enough that the
//! real `kube::Client` and the real `kubectl` work against it unchanged.
//!
//! Layout: [`store`] keeps objects and changes, [`ops`] implements the verbs
//! on it, [`http`] routes and streams, and the pure pieces ([`selector`],
//! [`validation`], [`schema`], [`patch`], [`jsonpath`], [`table`],
//! [`discovery`]) are tested on their own. [`auth`] attributes each request
//! to a user (ServiceAccount tokens from the TokenRequest API, or
//! anonymous) and [`admission`] calls the configured admission webhooks
//! before a write is stored.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{Value, json};

pub mod admission;
pub mod auth;
pub mod discovery;
pub mod error;
mod http;
mod json;
pub mod jsonpath;
pub mod kubeconfig;
pub mod openapi;
pub mod ops;
pub mod patch;
pub mod protobuf;
pub mod resources;
pub mod schema;
pub mod selector;
pub mod store;
pub mod table;
pub mod validation;

pub struct SandboxConfig {
    /// Where to listen; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Where to write a kubeconfig, if anywhere.
    pub kubeconfig: Option<PathBuf>,
    /// CustomResourceDefinitions served from the start.
    pub crds: Vec<CustomResourceDefinition>,
    /// How many recent changes are kept for watches that resume from a
    /// resourceVersion; older ones answer 410 Gone.
    pub watch_window: usize,
}

/// One API request, as the sandbox saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub user_agent: String,
    /// The authenticated user: `system:serviceaccount:<ns>:<name>` for a
    /// token the sandbox issued, `system:anonymous` without a token.
    pub user: String,
    /// The user's groups, e.g. `system:serviceaccounts:<ns>`.
    pub groups: Vec<String>,
    /// get, list, watch, create, update, patch, delete or deletecollection.
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl RequestRecord {
    pub fn to_json(&self) -> Value {
        json!({
            "userAgent": self.user_agent,
            "user": self.user,
            "groups": self.groups,
            "verb": self.verb,
            "group": self.group,
            "resource": self.resource,
            "subresource": self.subresource,
            "namespace": self.namespace,
            "name": self.name,
        })
    }

    /// Reads what `GET /sandbox/requests` serves.
    pub fn from_json(v: &Value) -> Option<RequestRecord> {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        Some(RequestRecord {
            user_agent: s("userAgent")?,
            user: s("user")?,
            groups: json::string_list(v.get("groups")),
            verb: s("verb")?,
            group: s("group")?,
            resource: s("resource")?,
            subresource: s("subresource"),
            namespace: s("namespace"),
            name: s("name"),
        })
    }
}

pub struct Sandbox {
    addr: SocketAddr,
    shared: Arc<http::Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Sandbox {
    /// Binds, writes the kubeconfig if asked, and serves in a spawned task.
    /// Returns once the socket accepts connections.
    pub async fn start(config: SandboxConfig) -> anyhow::Result<Sandbox> {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding the sandbox API server to {}", config.listen))?;
        let addr = listener
            .local_addr()
            .context("reading the sandbox's bound address")?;
        let store = ops::Store::new(config.watch_window);
        for crd in &config.crds {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let body =
                serde_json::to_value(crd).with_context(|| format!("serializing CRD {name}"))?;
            let def = store
                .lookup("apiextensions.k8s.io", "v1", "customresourcedefinitions")
                .expect("built in");
            store
                .create(&def, "v1", None, body, ops::WriteOpts::default())
                .map_err(|e| {
                    anyhow::anyhow!("serving CRD {name:?} from the sandbox config: {e}")
                })?;
        }
        let url = format!("http://{addr}");
        if let Some(path) = &config.kubeconfig {
            kubeconfig::write(path, &url)
                .with_context(|| format!("writing the sandbox kubeconfig to {}", path.display()))?;
        }
        let shared = Arc::new(http::Shared::new(store, addr.to_string()));
        let app = axum::Router::new()
            .fallback(http::handle)
            .with_state(shared.clone());
        let cancel = shared.cancel.clone();
        let server = tokio::spawn(async move {
            let result = axum::serve(listener, app)
                .with_graceful_shutdown(async move { cancel.cancelled().await })
                .await;
            if let Err(e) = result {
                tracing::error!(error = %e, "sandbox API server stopped");
            }
        });
        tracing::info!(%url, "sandbox API server listening");
        Ok(Sandbox {
            addr,
            shared,
            server,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A client configuration for in-process clients, default namespace `default`.
    pub fn kube_config(&self) -> kube::Config {
        let uri: ::http::Uri = self
            .url()
            .parse()
            .expect("a socket address makes a valid URI");
        let mut c = kube::Config::new(uri);
        c.default_namespace = "default".into();
        c
    }

    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(self.kube_config())
            .expect("a plain-HTTP kube config always builds a client")
    }

    /// A token for ServiceAccount `namespace/service_account`, as a
    /// TokenRequest with default audience and lifetime (one hour) gives.
    /// Fails if the ServiceAccount does not exist.
    pub fn issue_token(
        &self,
        namespace: &str,
        service_account: &str,
    ) -> Result<String, error::ApiError> {
        let v = auth::token_request(
            &self.shared.store,
            &self.shared.tokens,
            namespace,
            service_account,
            &json!({}),
            SystemTime::now(),
        )?;
        Ok(v["status"]["token"]
            .as_str()
            .expect("a TokenRequest answer carries status.token")
            .to_string())
    }

    /// Like [`Sandbox::issue_token`], with any lifetime: tests of expiry
    /// need lifetimes below the API's ten-minute floor.
    pub fn issue_token_for(
        &self,
        namespace: &str,
        service_account: &str,
        lifetime: Duration,
    ) -> Result<String, error::ApiError> {
        let def = self
            .shared
            .store
            .lookup("", "v1", "serviceaccounts")
            .expect("serviceaccounts are a built-in resource");
        let sa = self
            .shared
            .store
            .get(&def, Some(namespace), service_account)?
            .value();
        Ok(self
            .shared
            .tokens
            .issue(
                &sa,
                &[auth::DEFAULT_AUDIENCE.to_string()],
                lifetime,
                None,
                SystemTime::now(),
            )
            .token)
    }

    /// A client configuration that authenticates with `token`.
    pub fn kube_config_for_token(&self, token: &str) -> kube::Config {
        let mut c = self.kube_config();
        c.auth_info.token = Some(token.to_string().into());
        c
    }

    /// A client that authenticates with `token`.
    pub fn client_for_token(&self, token: &str) -> kube::Client {
        kube::Client::try_from(self.kube_config_for_token(token))
            .expect("a plain-HTTP kube config always builds a client")
    }

    /// Writes a kubeconfig (mode 0600, since it holds the token) for
    /// kubectl to act as the token's user.
    pub fn write_kubeconfig_for_token(&self, path: &Path, token: &str) -> std::io::Result<()> {
        kubeconfig::write_with_token(path, &self.url(), token)
    }

    /// Makes `clientConfig.service` `namespace/name:port` of a webhook
    /// reach `addr`; the sandbox has no Services of its own. TLS still
    /// checks the name `<name>.<namespace>.svc`.
    pub fn route_service(&self, namespace: &str, name: &str, port: u16, addr: SocketAddr) {
        self.shared
            .services
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((namespace.to_string(), name.to_string(), port), addr);
    }

    pub fn request_log(&self) -> Vec<RequestRecord> {
        self.shared
            .log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Stops accepting, ends open watches, and returns when the server is done.
    pub async fn shutdown(self) {
        self.shared.cancel.cancel();
        if let Err(e) = self.server.await {
            tracing::error!(error = %e, "sandbox API server task failed");
        }
    }
}
