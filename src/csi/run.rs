//! Wiring of `cert-csi node`: API client, node store, request watcher, and
//! the gRPC server on the kubelet's socket.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tonic::transport::Server;

use super::identity::{IdentityService, Readiness};
use super::node::{NodeConfig, NodeService};
use super::proto::identity_server::IdentityServer;
use super::proto::node_server::NodeServer;
use crate::issuance::{self, RequestTracker};
use crate::renewal::limiter::Limiter;
use crate::renewal::scheduler::Scheduler;
use crate::shutdown::CancellationToken;
use crate::store::Store;

pub struct NodeOptions {
    pub endpoint: String,
    pub driver_name: String,
    pub data_root: PathBuf,
    pub kubeconfig: Option<PathBuf>,
    pub node: NodeConfig,
}

/// A client from `--kubeconfig`, or the in-cluster configuration.
pub async fn kube_client(kubeconfig: Option<&PathBuf>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading --kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &Default::default())
                .await
                .with_context(|| format!("using --kubeconfig {}", path.display()))?
        }
        None => kube::Config::incluster().context(
            "no --kubeconfig given and not running in a cluster (KUBERNETES_SERVICE_HOST unset)",
        )?,
    };
    kube::Client::try_from(config).context("building the Kubernetes client")
}

pub async fn run(options: NodeOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let socket = super::server::socket_path(&options.endpoint)?;
    let client = kube_client(options.kubeconfig.as_ref()).await?;
    let store = Store::open(&options.data_root)
        .with_context(|| format!("opening --data-root {}", options.data_root.display()))?;
    let tracker = RequestTracker::spawn(
        client.clone(),
        issuance::node_selector(&options.node.node_id),
        shutdown.clone(),
    );
    let node_id = options.node.node_id.clone();
    let limiter = Limiter::spawn(options.node.limits, shutdown.clone());
    let (scheduler, due) = Scheduler::spawn(shutdown.clone());
    let node = Arc::new(NodeService::new(
        options.node,
        client.clone(),
        store,
        tracker,
        limiter,
        scheduler,
        shutdown.clone(),
    ));
    let readiness = Readiness::default();
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
        .add_service(NodeServer::from_arc(node));
    super::server::serve(router, listener, shutdown).await?;
    let _ = std::fs::remove_file(&socket);
    tracing::info!("node plugin stopped");
    Ok(())
}

/// Recovers node state, starts renewals, then waits for the API. Probe
/// reports ready only after both, so a kubelet never publishes into a
/// plugin that has not re-adopted its volumes.
async fn recover_then_ready(
    node: Arc<NodeService>,
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
