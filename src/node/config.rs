//! The node lifecycle's settings, as `cert-csi node` fills them from flags.

use std::path::PathBuf;
use std::time::Duration;

use crate::renewal::limiter::LimiterConfig;
use crate::renewal::schedule::RenewalPolicy;

/// The kubelet's default `--root-dir`.
pub const DEFAULT_KUBELET_ROOT_DIR: &str = "/var/lib/kubelet";

/// Settings of the node service.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub node_id: String,
    /// How long NodePublishVolume waits for a decision on its request before
    /// answering DeadlineExceeded (the kubelet allows about two minutes).
    pub publish_timeout: Duration,
    /// Requests kept per volume after issuance; older ones are deleted.
    pub keep_requests: usize,
    /// When renewals happen: jitter, the minimum interval between two
    /// certificates of a volume, and the guard's longest back-off.
    pub renewal: RenewalPolicy,
    /// How long to wait before retrying a failed renewal.
    pub retry: RetryPolicy,
    /// The node-wide issuance limit (in flight, and new requests per second).
    pub limits: LimiterConfig,
    /// RSA keys made ahead of first publishes (`--rsa-key-pool-*`).
    pub key_pool: super::keypool::KeyPoolConfig,
    /// Where `/metrics`, `/healthz` and `/readyz` are served (see
    /// `csi::run`); `None` serves none of them.
    pub metrics_address: Option<std::net::SocketAddr>,
    /// After this long without a decision, a publish records an
    /// `IssuanceSlow` Event on the pod (it keeps waiting).
    pub slow_issuance: Duration,
    /// The kubelet's root directory: publish and unpublish act only on
    /// `<root>/pods/<uid>/volumes/kubernetes.io~csi/<name>/mount`.
    pub kubelet_root_dir: PathBuf,
    /// Caps on one volume's attributes and SANs.
    pub input: crate::volume::InputLimits,
    /// cert-manager csi-driver's `--data-root` on this node: at start, the
    /// volumes it left mounted there are taken over (see `node::adopt`).
    pub adopt_csi_driver_data_root: Option<PathBuf>,
    /// Refuse volumes with unknown attributes (`--strict-attributes`)
    /// instead of warning about them.
    pub strict_attributes: bool,
    /// csi-driver's `--pod-readiness-gate`s: all must pass before a
    /// volume's first request is made.
    pub readiness_gates: Vec<super::readiness_gate::Gate>,
    /// csi-driver's `--continue-on-not-ready`: a volume whose gates do not
    /// pass yet is mounted empty at once; its certificate follows.
    pub continue_on_not_ready: bool,
}

impl NodeConfig {
    /// The defaults of `cert-csi node` for `node_id`.
    pub fn new(node_id: impl Into<String>) -> Self {
        NodeConfig {
            node_id: node_id.into(),
            publish_timeout: Duration::from_secs(60),
            keep_requests: 1,
            renewal: RenewalPolicy::default(),
            retry: RetryPolicy::default(),
            limits: LimiterConfig::default(),
            key_pool: super::keypool::KeyPoolConfig::default(),
            // Off unless asked for: in-process users (the demo, tests) must
            // not fight over a fixed port.
            metrics_address: None,
            slow_issuance: Duration::from_secs(10),
            kubelet_root_dir: PathBuf::from(DEFAULT_KUBELET_ROOT_DIR),
            input: crate::volume::InputLimits::default(),
            adopt_csi_driver_data_root: None,
            strict_attributes: false,
            readiness_gates: Vec::new(),
            continue_on_not_ready: false,
        }
    }
}

/// Delay before retrying a failed renewal: doubling from `base` to `max`,
/// with jitter (see [`crate::renewal::schedule::backoff`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max: Duration,
}

/// How often a volume mounted before its gates passed looks at its pod
/// again (csi-driver's manager looks every second too).
pub const GATE_RETRY: Duration = Duration::from_secs(1);

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_secs(30),
            max: Duration::from_secs(300),
        }
    }
}
