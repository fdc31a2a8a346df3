//! The HTTP side of telemetry: `/metrics`, `/healthz` and `/readyz`.
//!
//! One listener per process serves all three, so the chart needs one port per
//! component and the kubelet's probes and Prometheus share it.

use std::sync::Arc;

use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

use crate::shutdown::CancellationToken;

/// Something that can say whether the process is ready to do its job, and if
/// not, why. The node answers with the same readiness its CSI Probe reads
/// (`csi::identity::Readiness`), so Probe and `/readyz` never disagree. Any
/// `Fn() -> Result<(), String>` works too, which is how the controller
/// plugs in its own notion (every watch synced).
pub trait ReadinessCheck: Send + Sync + 'static {
    /// `Ok` when ready; otherwise a short reason shown in the 503 body.
    fn check(&self) -> Result<(), String>;
}

impl<F> ReadinessCheck for F
where
    F: Fn() -> Result<(), String> + Send + Sync + 'static,
{
    fn check(&self) -> Result<(), String> {
        self()
    }
}

/// The router behind [`serve`], for callers that add routes or run their own
/// server.
pub fn router(registry: Arc<Registry>, readiness: impl ReadinessCheck) -> axum::Router {
    let readiness: Arc<dyn ReadinessCheck> = Arc::new(readiness);
    axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            super::metrics::OPENMETRICS_CONTENT_TYPE,
                        )],
                        super::metrics::encode(&registry),
                    )
                }
            }),
        )
        // Liveness only says the process answers: restarting a pod because
        // the API server is down would not bring the API server back.
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let readiness = readiness.clone();
                async move {
                    match readiness.check() {
                        Ok(()) => (StatusCode::OK, "ok".to_owned()).into_response(),
                        Err(reason) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready: {reason}"),
                        )
                            .into_response(),
                    }
                }
            }),
        )
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until
/// `shutdown` fires; in-flight scrapes finish first.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    readiness: impl ReadinessCheck,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(registry, readiness))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
