//! Wiring of `cert-csi node`: API client, node store, request watcher, the
//! gRPC server on the kubelet's socket, and the telemetry listener
//! (`/metrics`, `/healthz`, `/readyz`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tonic::transport::Server;

use super::identity::{IdentityService, Readiness};
use super::node::NodeService;
use super::proto::identity_server::IdentityServer;
use super::proto::node_server::NodeServer;
use crate::issuance::{self, RequestTracker};
use crate::node::{Driver, NodeConfig, VolumeManager};
use crate::renewal::limiter::Limiter;
use crate::renewal::scheduler::Scheduler;
use crate::shutdown::CancellationToken;
use crate::store::Store;
use crate::telemetry::events::{EventLimits, EventRecorder, NODE_REPORTER};
use crate::telemetry::{NodeMetrics, Registry};

pub struct NodeOptions {
    pub endpoint: String,
    pub driver_name: String,
    pub data_root: PathBuf,
    pub kubeconfig: Option<PathBuf>,
    pub node: NodeConfig,
    /// Per-volume tmpfs limits, and whether to mount at all (the demo's
    /// fallback on machines where it may not).
    pub store: crate::store::StoreOptions,
    /// `--kube-api-qps` and `--kube-api-burst`; `None`: no client-side limit.
    pub api_rate: Option<crate::api_rate::ApiRate>,
}

/// What `cert-csi node` serves beyond the csi.cert-manager.io defaults.
#[derive(Debug, Default)]
pub struct NodeExtras {
    /// Serve the SPIFFE driver with these settings.
    pub spiffe: Option<crate::volume::spiffe_attributes::SpiffeConfig>,
    /// Write this trust bundle as every volume's CA file.
    pub trust: Option<crate::node::trust::TrustSource>,
    /// csi.cert-manager.io: create requests with the pod's token.
    pub use_token_request: bool,
}

pub async fn run(options: NodeOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_with(options, NodeExtras::default(), shutdown).await
}

pub async fn run_with(
    options: NodeOptions,
    extras: NodeExtras,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let socket = super::server::socket_path(&options.endpoint)?;
    let config = crate::kubernetes::kube_config(options.kubeconfig.as_ref()).await?;
    let client = crate::api_rate::client(config.clone(), options.api_rate)?;
    let store = Store::open_with(&options.data_root, options.store)
        .with_context(|| format!("opening --data-root {}", options.data_root.display()))?;
    let tracker = RequestTracker::spawn(
        client.clone(),
        issuance::node_selector(&options.node.node_id),
        shutdown.clone(),
    );
    let node_id = options.node.node_id.clone();
    let metrics_address = options.node.metrics_address;
    let limiter = Limiter::spawn(options.node.limits, shutdown.clone());
    let (scheduler, due) = Scheduler::spawn(shutdown.clone());
    let mut registry = Registry::default();
    let metrics = NodeMetrics::register(&mut registry);
    crate::telemetry::process::register(&mut registry);
    let events = EventRecorder::new(
        client.clone(),
        NODE_REPORTER,
        node_id.clone(),
        EventLimits::default(),
    );
    let node = Arc::new(with_extras(
        VolumeManager::new(
            options.node,
            client.clone(),
            store,
            tracker,
            limiter.clone(),
            scheduler,
            shutdown.clone(),
        )
        .with_telemetry(metrics.clone(), events.clone()),
        extras,
        config,
        &client,
        &shutdown,
    ));
    let readiness = Readiness::default();
    let telemetry = match metrics_address {
        Some(address) => Some(
            serve_telemetry(
                address,
                registry,
                metrics,
                limiter,
                readiness.clone(),
                shutdown.clone(),
            )
            .await?,
        ),
        None => None,
    };
    let listener = super::server::bind(&socket)?;
    tracing::info!(socket = %socket.display(), driver = %options.driver_name, node_id = %node_id, "serving CSI");

    tokio::spawn(recover_then_ready(
        node.clone(),
        due,
        client,
        readiness.clone(),
        shutdown.clone(),
    ));

    let router = Server::builder()
        .add_service(IdentityServer::new(IdentityService::new(
            options.driver_name.clone(),
            readiness,
        )))
        .add_service(NodeServer::new(NodeService::new(node)));
    super::server::serve(router, listener, shutdown.clone()).await?;
    let _ = std::fs::remove_file(&socket);
    // Repeats held back by the rate cap still reach their Events' counts.
    match tokio::time::timeout(Duration::from_secs(2), events.flush()).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => tracing::warn!(%error, "could not write the last Event counts"),
        Err(_) => tracing::warn!("gave up writing the last Event counts after 2s"),
    }
    if let Some(server) = telemetry {
        shutdown.cancel();
        match server.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "the metrics listener failed"),
            Err(error) => tracing::warn!(%error, "the metrics task failed"),
        }
    }
    tracing::info!("node plugin stopped");
    Ok(())
}

/// Binds `address` and serves `/metrics`, `/healthz` and `/readyz` until
/// `shutdown`. `/readyz` reads the same [`Readiness`] as the Probe RPC. The
/// limiter's queue depth is read at each scrape, so the gauge is exact
/// when it is looked at and nothing samples it in between.
async fn serve_telemetry(
    address: std::net::SocketAddr,
    registry: Registry,
    metrics: NodeMetrics,
    limiter: Limiter,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| {
            format!("--metrics-address {address}: cannot listen (use another address, or off)")
        })?;
    let bound = listener
        .local_addr()
        .context("--metrics-address: reading the bound address")?;
    tracing::info!(metrics_address = %bound, "serving /metrics, /healthz and /readyz");
    let router = crate::telemetry::health::router(Arc::new(registry), readiness).layer(
        axum::middleware::map_request(move |request: axum::extract::Request| {
            metrics.set_queue_depth(limiter.load().0);
            async move { request }
        }),
    );
    Ok(tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
    }))
}

/// The SPIFFE driver and the trust bundle, when asked for.
fn with_extras(
    mut service: VolumeManager,
    extras: NodeExtras,
    api: kube::Config,
    client: &kube::Client,
    shutdown: &CancellationToken,
) -> VolumeManager {
    if let Some(spiffe) = extras.spiffe {
        tracing::info!(
            trust_domain = %spiffe.trust_domain,
            template = spiffe.template.as_str(),
            mode = spiffe.mode.name(),
            issuer = %spiffe.issuer.current().map(|i| i.name).unwrap_or_default(),
            runtime_issuance = ?spiffe.runtime_config_map,
            "serving SPIFFE identities"
        );
        if let Some((namespace, name)) = spiffe.runtime_config_map.clone() {
            crate::node::runtime_issuer::spawn(
                client.clone(),
                namespace,
                name,
                spiffe.issuer.clone(),
                shutdown.clone(),
            );
        }
        service = service.with_driver(Driver::spiffe(spiffe, Some(api)));
    } else if extras.use_token_request {
        tracing::info!(
            "creating requests with each pod's ServiceAccount token (--use-token-request)"
        );
        service = service.with_driver(Driver::cert_manager_with_pod_tokens(api));
    }
    if let Some(source) = extras.trust {
        tracing::info!(%source, "following the trust bundle");
        service = service.with_trust_bundle(crate::node::trust::TrustBundle::spawn(
            source,
            client.clone(),
            shutdown.clone(),
        ));
    }
    service
}

/// Recovers node state, starts renewals, then waits for the API. Probe
/// reports ready only after both, so a kubelet never publishes into a
/// plugin that has not re-adopted its volumes.
async fn recover_then_ready(
    node: Arc<VolumeManager>,
    due: tokio::sync::mpsc::UnboundedReceiver<String>,
    client: kube::Client,
    readiness: Readiness,
    shutdown: CancellationToken,
) {
    let started = std::time::Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        match node.recover().await {
            Ok(report) => {
                tracing::info!(took = ?started.elapsed(), volumes = report.scheduled + report.overdue + report.resumed + report.awaiting_publish, "recovery finished");
                break;
            }
            Err(error) => tracing::error!(%error, "cannot read node state; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
    node.drive_renewals(due);
    node.drive_trust_updates();
    become_ready(client, readiness, shutdown).await;
}

/// Probe turns ready once the API answers; until then the livenessprobe
/// sidecar and the kubelet see a plugin that is up but not yet able to
/// publish.
async fn become_ready(client: kube::Client, readiness: Readiness, shutdown: CancellationToken) {
    let mut delay = Duration::from_millis(100);
    loop {
        match client.apiserver_version().await {
            Ok(_) => {
                readiness.set_ready(true);
                tracing::info!("Kubernetes API reachable; ready");
                return;
            }
            Err(error) => tracing::warn!(%error, "Kubernetes API not reachable yet"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
