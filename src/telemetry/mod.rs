//! Logging, metrics, health endpoints and Kubernetes Events, shared by every
//! mode.
//!
//! - [`metrics`]: [`NodeMetrics`] and [`ControllerMetrics`] (prometheus-client).
//! - [`health`]: one HTTP listener for `/metrics`, `/healthz` and `/readyz`.
//! - [`events`]: deduplicated, rate-capped `events.k8s.io/v1` Events.
//! - [`process`]: the standard `process_*` metrics, from `/proc/self`.
//!
//! Logs go to stderr so that commands such as `cert-csi crds` keep stdout for
//! their output. Key material and tokens are never passed to the logger: the
//! types that hold them print `<redacted>` (see [`crate::pki::Secret`]).

pub mod events;
pub mod health;
pub mod issuer_status;
pub mod metrics;
pub mod process;
mod series;

use std::io::IsTerminal;

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

pub use events::{EventLimits, EventRecorder, EventType, Recorded};
pub use health::{ReadinessCheck, serve};
pub use metrics::{ControllerMetrics, NodeMetrics};
pub use prometheus_client::registry::Registry;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Installs the global subscriber. `level` is an `EnvFilter` directive such as
/// `info` or `cert_csi=debug,kube=warn`.
pub fn init(format: LogFormat, level: &str) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(level)
        .map_err(|e| anyhow::anyhow!("--log-level {level:?} is not a valid filter: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: log files and container logs
        // must stay plain text that tools can search.
        .with_ansi(std::io::stderr().is_terminal());
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))
}
