//! An in-memory Kubernetes API server on loopback, faithful enough that the
//! real `kube::Client` and the real `kubectl` work against it unchanged.
//!
//! Layout: [`store`] keeps objects and changes, [`ops`] implements the verbs
//! on it, [`http`] routes and streams, and the pure pieces ([`selector`],
//! [`validation`], [`schema`], [`patch`], [`jsonpath`], [`table`],
//! [`discovery`]) are tested on their own.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub mod discovery;
pub mod error;
mod http;
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
    /// `system:anonymous` until authentication exists.
    pub user: String,
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
        let shared = Arc::new(http::Shared {
            store,
            log: Mutex::new(VecDeque::new()),
            cancel: CancellationToken::new(),
            addr: addr.to_string(),
        });
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
