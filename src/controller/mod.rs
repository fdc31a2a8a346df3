//! `cert-csi controller`: the loops that run beside (or instead of)
//! cert-manager's own controller.
//!
//! - [`approver`]: sets Approved (or Denied) on CertificateRequests by policy.
//! - [`issuers`]: keeps the Ready condition of Issuers and ClusterIssuers.
//! - [`signer`]: signs approved requests for SelfSigned and CA issuers.
//! - [`certificates`]: turns Certificates into `kubernetes.io/tls` Secrets and renews them.
//!
//! Every loop is a kube-runtime `Controller` fed by watches; nothing polls.
//! All loops share one shutdown token and stop together.

pub mod approver;
pub mod certificates;
pub mod issuers;
pub mod signer;
mod status;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use thiserror::Error;

use crate::shutdown::CancellationToken;

pub use approver::{ApproveAll, ApproveScope, Decision, Policy};

/// The loops `--controllers` can switch on and off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ControllerName {
    Approver,
    Issuers,
    Signer,
    Certificates,
}

impl ControllerName {
    pub const ALL: [ControllerName; 4] = [
        Self::Approver,
        Self::Issuers,
        Self::Signer,
        Self::Certificates,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Approver => "approver",
            Self::Issuers => "issuers",
            Self::Signer => "signer",
            Self::Certificates => "certificates",
        }
    }
}

/// Names accepted by `--controllers` that are not built yet.
const RESERVED: &[&str] = &[];

/// Errors in the controller's flags.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ControllerConfigError {
    #[error(
        "--controllers: {name:?} is not a controller; use a comma list of approver, issuers, signer, certificates, optionally `*` for all, and `-name` to switch one off"
    )]
    UnknownController { name: String },
    #[error(
        "--controllers: {name:?} is not available yet (reserved for a later release); remove it from the list"
    )]
    ReservedController { name: String },
    #[error(
        "--approve-issuers: {entry:?} is not a signer name; use `<resource>.<group>/*`, `issuers.cert-manager.io/<namespace>.<name>` or `clusterissuers.cert-manager.io/<name>`"
    )]
    BadSignerName { entry: String },
    #[error(
        "--approve-issuers is empty; name at least one signer such as `issuers.cert-manager.io/*`, or switch the approver off with --controllers=-approver"
    )]
    EmptyApproveList,
}

/// Which loops run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnabledControllers(std::collections::BTreeSet<ControllerName>);

impl EnabledControllers {
    pub fn defaults() -> Self {
        Self(ControllerName::ALL.into_iter().collect())
    }

    /// Parses `--controllers`, cert-manager style: names add a controller,
    /// `*` adds the defaults, `-name` removes one. A list made only of
    /// removals starts from the defaults, so `-approver` means "all but the
    /// approver" (the usual choice beside upstream's approver).
    pub fn parse(list: &str) -> Result<Self, ControllerConfigError> {
        let items: Vec<&str> = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let only_removals = items.iter().all(|i| i.starts_with('-'));
        let mut enabled = if only_removals {
            Self::defaults().0
        } else {
            Default::default()
        };
        for item in items {
            if item == "*" {
                enabled.extend(ControllerName::ALL);
                continue;
            }
            let (remove, name) = match item.strip_prefix('-') {
                Some(rest) => (true, rest),
                None => (false, item),
            };
            let controller = lookup(name)?;
            if remove {
                enabled.remove(&controller);
            } else {
                enabled.insert(controller);
            }
        }
        Ok(Self(enabled))
    }

    pub fn contains(&self, name: ControllerName) -> bool {
        self.0.contains(&name)
    }

    pub fn iter(&self) -> impl Iterator<Item = ControllerName> + '_ {
        self.0.iter().copied()
    }
}

fn lookup(name: &str) -> Result<ControllerName, ControllerConfigError> {
    if RESERVED.contains(&name) {
        return Err(ControllerConfigError::ReservedController {
            name: name.to_owned(),
        });
    }
    ControllerName::ALL
        .into_iter()
        .find(|c| c.name() == name)
        .ok_or_else(|| ControllerConfigError::UnknownController {
            name: name.to_owned(),
        })
}

/// Everything the loops need besides a client and the shutdown token.
#[derive(Clone)]
pub struct ControllerOptions {
    /// Where ClusterIssuer secrets live (`--cluster-resource-namespace`).
    pub cluster_resource_namespace: String,
    pub enabled: EnabledControllers,
    /// Which issuer references the approver approves.
    pub approve: ApproveScope,
    /// The approval policy; [`ApproveAll`] by default.
    pub policy: Arc<dyn Policy>,
    /// Backoff and renewal jitter of the certificates loop.
    pub certificates: certificates::CertificatesOptions,
}

impl ControllerOptions {
    pub fn new(cluster_resource_namespace: impl Into<String>) -> Self {
        Self {
            cluster_resource_namespace: cluster_resource_namespace.into(),
            enabled: EnabledControllers::defaults(),
            approve: ApproveScope::all_cert_manager(),
            policy: Arc::new(ApproveAll),
            certificates: certificates::CertificatesOptions::default(),
        }
    }
}

/// Readiness shared with `/readyz`: ready once every enabled loop has listed
/// its objects once.
#[derive(Clone, Debug, Default)]
pub struct Health {
    waiting: Arc<AtomicUsize>,
}

impl Health {
    fn expect(&self, loops: usize) {
        self.waiting.store(loops, Ordering::SeqCst);
    }

    fn loop_ready(&self) {
        let _ = self
            .waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }

    pub fn is_ready(&self) -> bool {
        self.waiting.load(Ordering::SeqCst) == 0
    }
}

/// Runs the enabled loops until `shutdown` fires. Loops never give up on API
/// errors (they retry with backoff and log), so this only returns on shutdown.
pub async fn run(
    client: kube::Client,
    options: ControllerOptions,
    health: Health,
    shutdown: CancellationToken,
) {
    let enabled: Vec<ControllerName> = options.enabled.iter().collect();
    tracing::info!(
        controllers = ?enabled.iter().map(|c| c.name()).collect::<Vec<_>>(),
        cluster_resource_namespace = %options.cluster_resource_namespace,
        "controller starting"
    );
    // The issuers controller runs two loops (Issuer and ClusterIssuer).
    let loops = enabled
        .iter()
        .map(|c| if *c == ControllerName::Issuers { 2 } else { 1 })
        .sum();
    health.expect(loops);
    let mut tasks = tokio::task::JoinSet::new();
    for controller in enabled {
        let client = client.clone();
        let options = options.clone();
        let health = health.clone();
        let shutdown = shutdown.clone();
        match controller {
            ControllerName::Approver => {
                tasks.spawn(approver::run(client, options, health, shutdown));
            }
            ControllerName::Issuers => {
                tasks.spawn(issuers::run(client, options, health, shutdown));
            }
            ControllerName::Signer => {
                tasks.spawn(signer::run(client, options, health, shutdown));
            }
            ControllerName::Certificates => {
                tasks.spawn(certificates::run(client, options, health, shutdown));
            }
        }
    }
    while let Some(result) = tasks.join_next().await {
        if let Err(e) = result {
            tracing::error!(error = %e, "a controller loop panicked");
        }
    }
    tracing::info!("controller stopped");
}

/// Serves `/healthz` (the process is up) and `/readyz` (every loop has synced
/// its watches) until `shutdown` fires.
pub async fn serve_health(
    listener: tokio::net::TcpListener,
    health: Health,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use axum::http::StatusCode;
    use axum::routing::get;
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let health = health.clone();
                async move {
                    if health.is_ready() {
                        (StatusCode::OK, "ok")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "watches not synced yet")
                    }
                }
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(list: &str) -> Vec<&'static str> {
        EnabledControllers::parse(list)
            .unwrap()
            .iter()
            .map(|c| c.name())
            .collect()
    }

    #[test]
    fn controllers_list() {
        assert_eq!(
            set("approver,issuers,signer"),
            ["approver", "issuers", "signer"]
        );
        assert_eq!(set("-approver"), ["issuers", "signer", "certificates"]);
        assert_eq!(set("signer"), ["signer"]);
        assert_eq!(set("*,-signer"), ["approver", "issuers", "certificates"]);
        assert_eq!(set(" issuers , signer "), ["issuers", "signer"]);
        assert_eq!(
            set("-approver,-signer,-issuers,-certificates"),
            Vec::<&str>::new()
        );
        assert_eq!(set("certificates"), ["certificates"]);
    }

    #[test]
    fn controllers_list_errors_name_the_entry() {
        let err = EnabledControllers::parse("-sigher").unwrap_err();
        assert!(err.to_string().contains("\"sigher\""), "{err}");
    }

    #[test]
    fn health_counts_down() {
        let health = Health::default();
        health.expect(2);
        assert!(!health.is_ready());
        health.loop_ready();
        assert!(!health.is_ready());
        health.loop_ready();
        health.loop_ready();
        assert!(health.is_ready());
    }
}
