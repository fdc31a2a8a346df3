//! `cert-csi controller`: the loops that run beside (or instead of)
//! cert-manager's own controller.
//!
//! - [`approver`]: sets Approved (or Denied) on CertificateRequests by policy;
//!   with `--policy-approver`, [`policy_approver`] does it by
//!   CertificateRequestPolicy objects instead.
//! - [`issuers`]: keeps the Ready condition of Issuers and ClusterIssuers.
//! - [`signer`]: signs approved requests for SelfSigned and CA issuers.
//! - [`certificates`]: turns Certificates into `kubernetes.io/tls` Secrets and renews them.
//!
//! Every loop is a kube-runtime `Controller` fed by watches; nothing polls.
//! All loops share one shutdown token and stop together.

pub mod approver;
mod ca_cache;
pub mod certificates;
pub mod issuers;
pub mod leader;
pub mod policy_approver;
pub mod policy_eval;
mod runner;
pub mod signer;
pub mod spiffe_approver;
mod status;
pub mod webhook;
pub mod webhook_rotation;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use thiserror::Error;

use crate::shutdown::CancellationToken;
use crate::telemetry::events::{CONTROLLER_REPORTER, EventLimits};
use crate::telemetry::{ControllerMetrics, EventRecorder, EventType, Registry};

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
    /// Where the loops count; [`ControllerOptions::new`] registers them in
    /// a registry nobody serves (replace it to serve them).
    pub metrics: ControllerMetrics,
    /// Events on CertificateRequests and Certificates; `None` makes
    /// [`run`] start one for its client.
    pub events: Option<EventRecorder>,
    /// The SPIFFE policy approver, run beside the approver when set.
    pub spiffe: Option<Arc<spiffe_approver::SpiffePolicy>>,
    /// The approver decides by CertificateRequestPolicy objects
    /// ([`policy_approver`]) instead of [`Self::policy`].
    pub policy_approver: bool,
    /// This process's signer, for the approvers (set by the signer loop).
    pub signer: signer::SignerSlot,
}

impl ControllerOptions {
    pub fn new(cluster_resource_namespace: impl Into<String>) -> Self {
        Self {
            cluster_resource_namespace: cluster_resource_namespace.into(),
            enabled: EnabledControllers::defaults(),
            approve: ApproveScope::all_cert_manager(),
            policy: Arc::new(ApproveAll),
            certificates: certificates::CertificatesOptions::default(),
            metrics: ControllerMetrics::register(&mut Registry::default()),
            events: None,
            spiffe: None,
            policy_approver: false,
            signer: signer::SignerSlot::default(),
        }
    }

    /// What a loop keeps to count and to record Events.
    pub(crate) fn telemetry(&self) -> Telemetry {
        Telemetry {
            metrics: self.metrics.clone(),
            events: self.events.clone(),
        }
    }
}

/// Metrics and Events, as each loop holds them.
#[derive(Clone)]
pub(crate) struct Telemetry {
    pub metrics: ControllerMetrics,
    events: Option<EventRecorder>,
}

impl Telemetry {
    /// Records an Event about `object` in the background; a loop never
    /// waits on the Events API.
    pub fn event<K>(
        &self,
        object: &K,
        type_: EventType,
        reason: &'static str,
        action: &'static str,
        note: String,
    ) where
        K: kube::Resource<DynamicType = ()>,
    {
        if let Some(events) = &self.events {
            events.emit(object.object_ref(&()), type_, reason, action, note);
        }
    }
}

/// The `reportingInstance` of the controller's Events: the pod's name,
/// which is its hostname in a cluster.
fn instance_name() -> String {
    std::env::var("POD_NAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| CONTROLLER_REPORTER.to_owned())
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
        let before = self
            .waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        tracing::debug!(
            waiting = before.map_or(0, |n| n - 1),
            "a controller loop listed its objects"
        );
    }

    pub fn is_ready(&self) -> bool {
        self.waiting.load(Ordering::SeqCst) == 0
    }
}

/// Runs the enabled loops until `shutdown` fires. Loops never give up on API
/// errors (they retry with backoff and log), so this only returns on shutdown.
pub async fn run(
    client: kube::Client,
    mut options: ControllerOptions,
    health: Health,
    shutdown: CancellationToken,
) {
    let events = options
        .events
        .get_or_insert_with(|| {
            EventRecorder::new(
                client.clone(),
                CONTROLLER_REPORTER,
                instance_name(),
                EventLimits::default(),
            )
        })
        .clone();
    let enabled: Vec<ControllerName> = options.enabled.iter().collect();
    tracing::info!(
        controllers = ?enabled.iter().map(|c| c.name()).collect::<Vec<_>>(),
        cluster_resource_namespace = %options.cluster_resource_namespace,
        "controller starting"
    );
    // The issuers controller runs two loops (Issuer and ClusterIssuer).
    let loops = enabled
        .iter()
        .map(|c| match c {
            ControllerName::Issuers => 2,
            ControllerName::Approver if options.policy_approver => policy_approver::LOOPS,
            _ => 1,
        })
        .sum::<usize>();
    // The SPIFFE approver is one more loop, and the generic approver must
    // leave SPIFFE requests to it (see spiffe_approver::ExceptSpiffe).
    let loops = loops + usize::from(options.spiffe.is_some());
    options.policy = Arc::new(spiffe_approver::ExceptSpiffe {
        inner: options.policy.clone(),
        spiffe: options.spiffe.clone(),
    });
    health.expect(loops);
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(policy) = options.spiffe.clone() {
        tasks.spawn(spiffe_approver::run(
            client.clone(),
            policy,
            options.signer.clone(),
            health.clone(),
            shutdown.clone(),
        ));
    }
    for controller in enabled {
        let client = client.clone();
        let options = options.clone();
        let health = health.clone();
        let shutdown = shutdown.clone();
        match controller {
            ControllerName::Approver if options.policy_approver => {
                tasks.spawn(policy_approver::run(client, options, health, shutdown));
            }
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
    // Repeats held back by the rate cap still reach their Events' counts.
    match tokio::time::timeout(std::time::Duration::from_secs(2), events.flush()).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => tracing::warn!(%error, "could not write the last Event counts"),
        Err(_) => tracing::warn!("gave up writing the last Event counts after 2s"),
    }
    tracing::info!("controller stopped");
}

/// Marks one loop ready once `store` has listed its objects.
///
/// kube-runtime's `Store::wait_until_ready` wakes only the waiter that
/// polled last (its readiness is a oneshot channel, which keeps one waker),
/// and the controller itself waits on the same store, so a second waiter
/// can sleep forever. Re-polling at a short interval until the first list
/// is done avoids that; it only runs at startup.
pub(crate) fn mark_ready_when_synced<K>(store: kube::runtime::reflector::Store<K>, health: Health)
where
    K: kube::Resource + Clone + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
{
    tokio::spawn(async move {
        loop {
            tokio::select! {
                result = store.wait_until_ready() => {
                    if result.is_ok() {
                        health.loop_ready();
                    }
                    return;
                }
                () = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
            }
        }
    });
}

impl crate::telemetry::ReadinessCheck for Health {
    fn check(&self) -> Result<(), String> {
        if self.is_ready() {
            Ok(())
        } else {
            Err("controller watches not synced yet".into())
        }
    }
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
