//! The command line: one subcommand per mode. Every flag can also be set from
//! an environment variable, as DaemonSets and Deployments prefer.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::shutdown::CancellationToken;
use crate::telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "cert-csi",
    version,
    about = "Per-pod X.509 identities via CSI and cert-manager.io/v1"
)]
// Someone who read the README and types `cert-csi demo` into the image's
// binary should learn why it is missing, not only that it is.
#[cfg_attr(
    not(feature = "sandbox"),
    command(
        after_help = "This binary was built without the `sandbox` cargo feature (as the image is), \
                      so it has no `demo` or `sandbox` subcommand; build with default features for them."
    )
)]
pub struct Cli {
    /// Log output format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// Log filter, e.g. `info` or `cert_csi=debug,kube=warn` [default: info;
    /// warn for the demo, whose own output tells the story].
    #[arg(long, env = "LOG_LEVEL", global = true)]
    pub log_level: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The log filter in force: the flag, or the mode's default.
    pub fn log_level(&self) -> &str {
        match (&self.log_level, &self.command) {
            (Some(level), _) => level,
            #[cfg(feature = "sandbox")]
            (None, Command::Demo(_)) => "warn",
            (None, _) => "info",
        }
    }
}

#[derive(Debug, Args)]
pub struct CrdsArgs {
    /// Print the policy.cert-manager.io/v1alpha1 CRD (CertificateRequestPolicy,
    /// read by `controller --policy-approver`) instead.
    #[arg(long)]
    pub policy: bool,
}

// Parsed once at start and matched once; the node's many flags make its
// variant the largest, which costs nothing here.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run an in-memory Kubernetes API server on loopback (for demos and tests).
    #[cfg(feature = "sandbox")]
    Sandbox(SandboxArgs),
    /// Print the cert-manager.io/v1 CustomResourceDefinitions as YAML.
    Crds(CrdsArgs),
    /// Run the CSI node plugin (one per node, as a DaemonSet).
    Node(NodeArgs),
    /// Show the whole system on this machine: API sandbox, controller, node
    /// plugin and a simulated kubelet; two pods get identities, talk mutual
    /// TLS, and rotate in place.
    #[cfg(feature = "sandbox")]
    Demo(DemoArgs),
    /// Run the controller: approver, issuer status and SelfSigned/CA signer.
    Controller(ControllerArgs),
    /// List this node's volumes: pod, request, expiry, next renewal and
    /// last error, from the node plugin's own state (no API call, no key).
    Status(crate::operator::StatusArgs),
    /// Summarize the certificate chain of a Secret, a CertificateRequest,
    /// or a volume directory (keys are only checked, never shown).
    Inspect(crate::operator::InspectArgs),
    /// Approve a CertificateRequest, as cmctl approve does.
    Approve(crate::operator::DecisionArgs),
    /// Deny a CertificateRequest, as cmctl deny does.
    Deny(crate::operator::DecisionArgs),
    /// Re-issue Certificates now, as cmctl renew does.
    Renew(crate::operator::RenewArgs),
}

#[cfg(feature = "sandbox")]
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Leave everything running until Ctrl-C, to look around with kubectl.
    #[arg(long)]
    pub keep: bool,
    /// Working directory for the socket, node state and kubelet root.
    #[arg(long, default_value = ".cert-csi-demo")]
    pub dir: PathBuf,
    /// Lifetime of the pods' certificates; short, so a rotation shows.
    #[arg(long, default_value = "24s", value_parser = parse_duration)]
    pub duration: std::time::Duration,
    /// Do not mount: write plain files and link them at the pods' paths
    /// (what the demo falls back to where a normal user may not mount).
    #[arg(long)]
    pub no_mounts: bool,
    /// Where the demo runs, decided by `main` before the async runtime
    /// starts (a user namespace can only be entered by a single-threaded
    /// process); entered on the spot when absent.
    #[arg(skip)]
    pub isolation: Option<crate::demo::isolation::Isolation>,
}

#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// kubeconfig to use; in-cluster configuration when absent.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Namespace that ClusterIssuer secrets are read from.
    #[arg(
        long,
        env = "CLUSTER_RESOURCE_NAMESPACE",
        default_value = "cert-manager"
    )]
    pub cluster_resource_namespace: String,
    /// Loops to run: a comma list of approver, issuers, signer, certificates;
    /// `-name` switches one off from the default set (e.g. `-approver`).
    #[arg(
        long,
        env = "CONTROLLERS",
        default_value = "approver,issuers,signer,certificates",
        allow_hyphen_values = true
    )]
    pub controllers: String,
    /// Issuer references the approver approves, in cert-manager's signer-name
    /// syntax (`issuers.cert-manager.io/<namespace>.<name>`,
    /// `clusterissuers.cert-manager.io/<name>`, `<resource>.<group>/*`).
    #[arg(long, env = "APPROVE_ISSUERS", default_value = crate::controller::approver::DEFAULT_APPROVE_ISSUERS)]
    pub approve_issuers: String,
    /// The approver approves or denies by CertificateRequestPolicy objects
    /// (policy.cert-manager.io/v1alpha1, as cert-manager's approver-policy)
    /// instead of approving everything; requests no policy applies to are
    /// left alone. Install the policy CRD with `cert-csi crds --policy`.
    #[arg(long, env = "POLICY_APPROVER")]
    pub policy_approver: bool,
    /// Where `/metrics`, `/healthz` and `/readyz` are served. Port 0 picks
    /// a free port, which the log names.
    #[arg(long, env = "METRICS_ADDRESS", default_value = "0.0.0.0:9402")]
    pub metrics_address: SocketAddr,
    /// Wait after a Certificate's first failed issuance; doubles per
    /// failure (Go duration; upstream: 1h).
    #[arg(long, env = "CERTIFICATE_BACKOFF_BASE", default_value = "1h", value_parser = parse_duration)]
    pub certificate_backoff_base: std::time::Duration,
    /// Longest wait between failed issuances (Go duration; upstream: 32h).
    #[arg(long, env = "CERTIFICATE_BACKOFF_MAX", default_value = "32h", value_parser = parse_duration)]
    pub certificate_backoff_max: std::time::Duration,
    /// Certificate renewal jitter: renew up to this fraction of renewBefore
    /// early, so Certificates issued together do not renew together
    /// (0, the default, renews exactly when upstream would).
    #[arg(long = "certificate-renewal-jitter", env = "CERTIFICATE_RENEWAL_JITTER", default_value = "0", value_parser = parse_jitter)]
    pub certificate_renewal_jitter: crate::renewal::schedule::JitterPolicy,
    /// SPIFFE approver: the trust domain of the identities it approves.
    /// Setting it switches the SPIFFE approver on (it also needs
    /// --spiffe-issuer).
    #[arg(long, visible_alias = "trust-domain", env = "SPIFFE_TRUST_DOMAIN")]
    pub spiffe_trust_domain: Option<String>,
    /// SPIFFE approver: the issuers SPIFFE requests go to, in signer-name
    /// syntax (e.g. `clusterissuers.cert-manager.io/spiffe-ca`); every
    /// request to them must pass the SPIFFE policy.
    #[arg(long, env = "SPIFFE_ISSUER")]
    pub spiffe_issuer: Option<String>,
    /// SPIFFE approver: the exact spec.duration a request must carry.
    #[arg(long, visible_alias = "certificate-request-duration", env = "SPIFFE_DURATION", default_value = "1h", value_parser = parse_duration)]
    pub spiffe_duration: std::time::Duration,
    /// SPIFFE approver: the ID path; only `{namespace}` and
    /// `{serviceaccount}` may appear.
    #[arg(long, env = "SPIFFE_ID_TEMPLATE", default_value = crate::spiffe_id::DEFAULT_ID_TEMPLATE)]
    pub spiffe_id_template: String,
    /// SPIFFE approver: key types allowed, a comma list of P-256, P-384,
    /// P-521, Ed25519 (csi-driver-spiffe's driver makes P-521 keys).
    #[arg(
        long,
        env = "SPIFFE_KEY_TYPES",
        default_value = "P-256,P-384,P-521,Ed25519"
    )]
    pub spiffe_key_types: String,
    /// SPIFFE approver: node plugin ServiceAccounts (`<namespace>:<name>`,
    /// comma list) that may request for a pod on their node (node-account mode).
    #[arg(long, env = "SPIFFE_NODE_ACCOUNTS", default_value = "")]
    pub spiffe_node_accounts: String,
    /// Serve the requester-identity admission webhook (needed where
    /// cert-manager's webhook is absent, so spec.username can be trusted).
    #[arg(long, env = "WEBHOOK")]
    pub webhook: bool,
    /// Where the webhook listens (HTTPS).
    #[arg(long, env = "WEBHOOK_ADDRESS", default_value = "0.0.0.0:9443")]
    pub webhook_address: SocketAddr,
    /// Create or update the MutatingWebhookConfiguration `cert-csi-webhook`
    /// with this process's CA bundle at start.
    #[arg(long, env = "WEBHOOK_CONFIGURE")]
    pub webhook_configure: bool,
    /// The Service in front of the webhook (its serving certificate names it).
    #[arg(long, env = "WEBHOOK_SERVICE_NAME")]
    pub webhook_service_name: Option<String>,
    /// The namespace of that Service.
    #[arg(long, env = "WEBHOOK_SERVICE_NAMESPACE")]
    pub webhook_service_namespace: Option<String>,
    /// The Service's port.
    #[arg(long, env = "WEBHOOK_SERVICE_PORT", default_value_t = 443)]
    pub webhook_service_port: u16,
    /// Instead of a Service: the https URL the API server calls.
    #[arg(long, env = "WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// With --webhook-configure: the life of each replica's in-memory
    /// webhook CA, replaced after two thirds of it (Go duration).
    #[arg(long, env = "WEBHOOK_CA_DURATION", default_value = "168h", value_parser = parse_duration)]
    pub webhook_ca_duration: std::time::Duration,
    /// With --webhook-configure: the life of the webhook's serving
    /// certificate, replaced after two thirds of it; at most a third of
    /// the CA's (Go duration).
    #[arg(long, env = "WEBHOOK_LEAF_DURATION", default_value = "24h", value_parser = parse_duration)]
    pub webhook_leaf_duration: std::time::Duration,
    /// Run the loops only while holding the leader Lease, so that several
    /// replicas can run and one of them acts (cert-manager's flag; default
    /// true, `--leader-elect=false` to act without a Lease).
    #[arg(
        long,
        env = "LEADER_ELECT",
        default_value_t = true,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    pub leader_elect: bool,
    /// This pod's name (the chart passes the Downward API's metadata.name):
    /// it starts the Lease's holder identity and names the Events'
    /// reporting instance. The hostname when unset.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// Namespace of the leader Lease (cert-manager's default; the chart
    /// uses the release's namespace).
    #[arg(long, env = "LEADER_ELECTION_NAMESPACE", default_value = "kube-system")]
    pub leader_election_namespace: String,
    /// How long a standby waits on an unchanged Lease before it takes over
    /// (Go duration).
    #[arg(long, env = "LEADER_ELECTION_LEASE_DURATION", default_value = "60s", value_parser = parse_duration)]
    pub leader_election_lease_duration: std::time::Duration,
    /// How long the leader keeps acting without renewing the Lease; shorter
    /// than the lease duration (Go duration).
    #[arg(long, env = "LEADER_ELECTION_RENEW_DEADLINE", default_value = "40s", value_parser = parse_duration)]
    pub leader_election_renew_deadline: std::time::Duration,
    /// How often the leader renews and a standby looks (Go duration).
    #[arg(long, env = "LEADER_ELECTION_RETRY_PERIOD", default_value = "15s", value_parser = parse_duration)]
    pub leader_election_retry_period: std::time::Duration,
}

impl ControllerArgs {
    /// The SPIFFE approver's policy, or `None` when it is off.
    pub fn spiffe_policy(
        &self,
    ) -> anyhow::Result<Option<std::sync::Arc<crate::controller::spiffe_approver::SpiffePolicy>>>
    {
        use crate::controller::spiffe_approver::{SpiffeFlags, SpiffePolicy};
        let Some(trust_domain) = &self.spiffe_trust_domain else {
            return Ok(None);
        };
        let Some(issuers) = &self.spiffe_issuer else {
            anyhow::bail!(
                "--spiffe-trust-domain is set but --spiffe-issuer is not; name the issuer SPIFFE requests go to, e.g. clusterissuers.cert-manager.io/spiffe-ca"
            );
        };
        let policy = SpiffePolicy::from_flags(&SpiffeFlags {
            trust_domain,
            id_template: &self.spiffe_id_template,
            issuers,
            duration: self.spiffe_duration,
            key_types: &self.spiffe_key_types,
            node_accounts: &self.spiffe_node_accounts,
        })?;
        Ok(Some(std::sync::Arc::new(policy)))
    }

    /// The leader election, or `None` with `--leader-elect=false`.
    pub fn election(
        &self,
    ) -> Result<
        Option<crate::controller::leader::ElectionConfig>,
        crate::controller::leader::ElectionConfigError,
    > {
        use crate::controller::leader::{ElectionConfig, LEASE_NAME, identity_for};
        if !self.leader_elect {
            return Ok(None);
        }
        let config = ElectionConfig {
            namespace: self.leader_election_namespace.clone(),
            name: LEASE_NAME.to_owned(),
            identity: identity_for(self.pod_name.as_deref()),
            lease_duration: self.leader_election_lease_duration,
            renew_deadline: self.leader_election_renew_deadline,
            retry_period: self.leader_election_retry_period,
        };
        config.validate()?;
        Ok(Some(config))
    }

    /// The webhook's settings, or `None` when it is off.
    pub fn webhook_options(
        &self,
    ) -> anyhow::Result<Option<crate::controller::webhook::WebhookOptions>> {
        use crate::controller::webhook::{Target, WebhookError, WebhookOptions};
        if !self.webhook {
            return Ok(None);
        }
        let target = match (
            &self.webhook_url,
            &self.webhook_service_name,
            &self.webhook_service_namespace,
        ) {
            (Some(url), None, None) => Target::url(url)?,
            (None, Some(name), Some(namespace)) => Target::Service {
                namespace: namespace.clone(),
                name: name.clone(),
                port: self.webhook_service_port,
            },
            _ => return Err(WebhookError::NoTarget.into()),
        };
        Ok(Some(WebhookOptions {
            listen: self.webhook_address,
            target,
            configure: self.webhook_configure,
            rotation: crate::controller::webhook_rotation::Rotation::new(
                self.webhook_ca_duration,
                self.webhook_leaf_duration,
            )?,
            identity: self
                .pod_name
                .clone()
                .unwrap_or_else(|| crate::controller::leader::identity_for(None)),
        }))
    }
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// The CSI socket the kubelet calls, e.g. unix:///csi/csi.sock.
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix:///csi/csi.sock")]
    pub endpoint: String,
    /// This node's name, as the kubelet knows it (spec.nodeName).
    #[arg(long, env = "NODE_ID")]
    pub node_id: String,
    /// The CSI driver name; pods name it in `csi.driver`.
    #[arg(long, env = "DRIVER_NAME", default_value = "csi.cert-manager.io")]
    pub driver_name: String,
    /// Node state directory on persistent disk. Private keys never go here:
    /// each volume's keys live in a tmpfs mounted below it.
    #[arg(long, env = "DATA_ROOT", default_value = "/var/lib/cert-csi")]
    pub data_root: PathBuf,
    /// The kubelet's root directory (its --root-dir). Publish and unpublish
    /// act only on `<dir>/pods/<uid>/volumes/kubernetes.io~csi/<name>/mount`,
    /// following no symlink below it.
    #[arg(long, env = "KUBELET_ROOT_DIR", default_value = crate::node::DEFAULT_KUBELET_ROOT_DIR)]
    pub kubelet_root_dir: PathBuf,
    /// cert-manager csi-driver's data root on this node (its --data-root;
    /// the csi-driver chart's app.driver.csiDataDir, by default
    /// /tmp/cert-manager-csi-driver). At start, before Probe reports
    /// ready, every volume csi-driver left mounted there is taken over and
    /// renewed in place. Stop csi-driver first. Unset (the default)
    /// adopts nothing; a directory that does not exist adopts nothing.
    #[arg(long, env = "ADOPT_CSI_DRIVER_DATA_ROOT", value_parser = parse_absolute_path)]
    pub adopt_csi_driver_data_root: Option<PathBuf>,
    /// kubeconfig to use; in-cluster configuration when absent.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// How long NodePublishVolume waits for the request to be issued before
    /// answering DeadlineExceeded (Go duration; the kubelet allows ~2m).
    #[arg(long, env = "PUBLISH_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub publish_timeout: std::time::Duration,
    /// CertificateRequests kept per volume after issuance; older are deleted.
    #[arg(long, env = "KEEP_REQUESTS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_requests: u32,
    /// Renewal jitter: renew up to this fraction of renew-before early, so
    /// pods started together do not renew together (0 disables).
    #[arg(long, env = "RENEWAL_JITTER", default_value = "0.1", value_parser = parse_jitter)]
    pub renewal_jitter: crate::renewal::schedule::JitterPolicy,
    /// No volume renews sooner than this after its certificate arrived. A
    /// certificate too short for that (an issuer capping lifetimes at a
    /// CA about to expire, say) is renewed after this wait instead,
    /// doubling per such certificate in a row, with a Warning Event on the
    /// pod (Go duration, at least 1s).
    #[arg(long, env = "MIN_RENEWAL_INTERVAL", default_value = "1m", value_parser = parse_min_interval)]
    pub min_renewal_interval: std::time::Duration,
    /// The longest wait the renewal guard doubles up to (Go duration).
    #[arg(long, env = "MAX_GUARD_BACKOFF", default_value = "30m", value_parser = parse_duration)]
    pub max_guard_backoff: std::time::Duration,
    /// CertificateRequests this node may have undecided at once (first
    /// issuance and renewals together).
    #[arg(long, env = "MAX_INFLIGHT_REQUESTS", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_inflight_requests: u32,
    /// New CertificateRequests this node may create per second (a fraction
    /// such as 0.5 is allowed); waiting pods go before renewals.
    #[arg(long, env = "MAX_REQUEST_RATE", default_value = "10", value_parser = parse_rate)]
    pub max_request_rate: crate::renewal::limiter::RequestRate,
    /// New CertificateRequests pods may make at once beyond the rate (pods
    /// starting together are not held back); renewals never use the burst.
    #[arg(long, env = "MAX_REQUEST_BURST", default_value_t = crate::renewal::limiter::DEFAULT_BURST, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_request_burst: u32,
    /// Requests per second this node may send to the API server, as
    /// csi-driver's flag; 0 (the default) sets no client-side limit, where
    /// csi-driver falls back to client-go's 5 per second.
    #[arg(long, env = "KUBE_API_QPS", default_value = "0", value_parser = crate::api_rate::parse_qps)]
    pub kube_api_qps: f32,
    /// Requests beyond --kube-api-qps the node may send at once, as
    /// csi-driver's flag; used only with a QPS above 0 (then at least 1).
    #[arg(long, env = "KUBE_API_BURST", default_value_t = 0)]
    pub kube_api_burst: u32,
    /// csi-driver's flag: when a volume's --pod-readiness-gate does not
    /// pass yet, mount it empty at once and write its files when the
    /// certificate is issued (pods must cope with the files appearing
    /// later, e.g. wait in an init container).
    #[arg(
        long,
        env = "CONTINUE_ON_NOT_READY",
        default_value_t = false,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    pub continue_on_not_ready: bool,
    /// csi-driver's flag, repeatable: defer a volume's certificate until
    /// its pod passes every gate: pod-ip:<any|ipv4|ipv6>,
    /// pod-condition:<Type>[=<Status>] or pod-annotation:<key>. Needs
    /// --continue-on-not-ready, and `get` on pods.
    #[arg(long = "pod-readiness-gate", value_parser = parse_gate)]
    pub pod_readiness_gates: Vec<crate::node::readiness_gate::Gate>,
    /// RSA keys kept ready per RSA size that pods use (2048, 3072 and
    /// 4096 bits), so a first publish need not wait for key generation;
    /// 0 turns the pool off. Renewals always make a fresh key.
    #[arg(long, env = "RSA_KEY_POOL_SIZE", default_value_t = 8, value_parser = clap::value_parser!(u32).range(0..=1024))]
    pub rsa_key_pool_size: u32,
    /// The longest an RSA key waits in the pool before it is dropped
    /// unused; also how long a size stays pooled after the last publish
    /// that asked for it (Go duration).
    #[arg(long, env = "RSA_KEY_POOL_MAX_AGE", default_value = "1h", value_parser = parse_key_pool_max_age)]
    pub rsa_key_pool_max_age: std::time::Duration,
    /// The most bytes of attributes (keys and values) one volume may set;
    /// the kubelet's own keys are not counted. Larger volumes are refused.
    #[arg(long, env = "MAX_VOLUME_CONTEXT_BYTES", default_value_t = 65536, value_parser = clap::value_parser!(u32).range(1024..))]
    pub max_volume_context_bytes: u32,
    /// The most subject alternative names (DNS, IP and URI together) one
    /// volume may ask for.
    #[arg(long, env = "MAX_SANS", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_sans: u32,
    /// Refuse a volume whose attributes hold an unknown
    /// `csi.cert-manager.io/*` key (or an attribute's name without a prefix
    /// or under a misspelt one), naming the nearest attribute. Without it
    /// such keys are handled as cert-manager's csi-driver handles them
    /// (ignored, or copied as annotations), with a Warning Event on the pod.
    #[arg(long, env = "STRICT_ATTRIBUTES")]
    pub strict_attributes: bool,
    /// First wait after a failed renewal; doubles per failure, with jitter
    /// (Go duration).
    #[arg(long, env = "RENEWAL_RETRY_BASE", default_value = "30s", value_parser = parse_duration)]
    pub renewal_retry_base: std::time::Duration,
    /// Longest wait between failed renewals (Go duration).
    #[arg(long, env = "RENEWAL_RETRY_MAX", default_value = "5m", value_parser = parse_duration)]
    pub renewal_retry_max: std::time::Duration,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; `off` (or an
    /// empty value) serves none. Port 0 picks a free port, which the log
    /// names.
    #[arg(long, env = "METRICS_ADDRESS", default_value = "0.0.0.0:9402", value_parser = parse_listen_address)]
    pub metrics_address: ListenAddress,
    /// How long a publish waits for its certificate before an
    /// `IssuanceSlow` Event tells the pod (it keeps waiting; Go duration).
    #[arg(long, env = "SLOW_ISSUANCE_THRESHOLD", default_value = "10s", value_parser = parse_duration)]
    pub slow_issuance_threshold: std::time::Duration,
    /// SPIFFE driver (`--driver-name spiffe.csi.cert-manager.io`): the trust
    /// domain of every identity.
    #[arg(
        long,
        visible_alias = "trust-domain",
        env = "SPIFFE_TRUST_DOMAIN",
        default_value = "cluster.local"
    )]
    pub spiffe_trust_domain: String,
    /// SPIFFE driver: the ID path; only `{namespace}` and `{serviceaccount}`
    /// may appear.
    #[arg(long, env = "SPIFFE_ID_TEMPLATE", default_value = crate::spiffe_id::DEFAULT_ID_TEMPLATE)]
    pub spiffe_id_template: String,
    /// SPIFFE driver: the key type, P-256, P-384, P-521 or Ed25519. P-521
    /// by default, as csi-driver-spiffe makes.
    #[arg(long, env = "SPIFFE_KEY_ALGORITHM", default_value = "P-521")]
    pub spiffe_key_algorithm: String,
    /// SPIFFE driver: the certificates' lifetime (renewed at two thirds).
    #[arg(long, visible_alias = "certificate-request-duration", env = "SPIFFE_DURATION", default_value = "1h", value_parser = parse_duration)]
    pub spiffe_duration: std::time::Duration,
    /// SPIFFE driver: the issuer that signs the identities (required).
    #[arg(long, visible_alias = "issuer-name", env = "SPIFFE_ISSUER_NAME")]
    pub spiffe_issuer_name: Option<String>,
    /// SPIFFE driver: the issuer's kind.
    #[arg(
        long,
        visible_alias = "issuer-kind",
        env = "SPIFFE_ISSUER_KIND",
        default_value = "ClusterIssuer"
    )]
    pub spiffe_issuer_kind: String,
    /// SPIFFE driver: the issuer's API group.
    #[arg(
        long,
        visible_alias = "issuer-group",
        env = "SPIFFE_ISSUER_GROUP",
        default_value = "cert-manager.io"
    )]
    pub spiffe_issuer_group: String,
    /// SPIFFE driver: who creates the CertificateRequest: `pod-token` (the
    /// pod's ServiceAccount token from the kubelet) or `node-account` (this
    /// plugin, naming the pod and node for the approver to check).
    #[arg(long, env = "SPIFFE_REQUEST_MODE", default_value = "pod-token", value_parser = crate::volume::spiffe_attributes::RequestMode::parse)]
    pub spiffe_request_mode: crate::volume::spiffe_attributes::RequestMode,
    /// SPIFFE driver, pod-token mode: the token audience to use from the
    /// CSIDriver's tokenRequests ("" is the API server's default).
    #[arg(long, env = "SPIFFE_TOKEN_AUDIENCE", default_value = "")]
    pub spiffe_token_audience: String,
    /// SPIFFE driver (csi-driver-spiffe's flag): the certificate's file name
    /// in each volume.
    #[arg(long, env = "FILE_NAME_CERTIFICATE", default_value = crate::volume::DEFAULT_CERTIFICATE_FILE)]
    pub file_name_certificate: String,
    /// SPIFFE driver (csi-driver-spiffe's flag): the private key's file name.
    #[arg(long, env = "FILE_NAME_KEY", default_value = crate::volume::DEFAULT_PRIVATE_KEY_FILE)]
    pub file_name_key: String,
    /// SPIFFE driver (csi-driver-spiffe's flag): the CA file's name.
    #[arg(long, env = "FILE_NAME_CA", default_value = crate::volume::DEFAULT_CA_FILE)]
    pub file_name_ca: String,
    /// SPIFFE driver (csi-driver-spiffe's flag): extra annotations on every
    /// CertificateRequest, `key=value` pairs separated by commas. Keys of a
    /// cert-manager.io domain are refused: the driver and approvers own them.
    #[arg(
        long,
        env = "EXTRA_CERTIFICATE_REQUEST_ANNOTATIONS",
        default_value = ""
    )]
    pub extra_certificate_request_annotations: String,
    /// SPIFFE driver (csi-driver-spiffe's flag): a ConfigMap whose
    /// issuer-name, issuer-kind and issuer-group keys, when all set, name
    /// the issuer of new requests instead of --spiffe-issuer-*; watched, so
    /// the issuer changes without a restart, and deleting it falls back.
    /// With it, --spiffe-issuer-name may be left out.
    #[arg(long, env = "RUNTIME_ISSUANCE_CONFIG_MAP_NAME")]
    pub runtime_issuance_config_map_name: Option<String>,
    /// SPIFFE driver (csi-driver-spiffe's flag): that ConfigMap's namespace.
    #[arg(long, env = "RUNTIME_ISSUANCE_CONFIG_MAP_NAMESPACE")]
    pub runtime_issuance_config_map_namespace: Option<String>,
    /// SPIFFE driver (csi-driver-spiffe's flag): a PEM bundle file written
    /// to every volume as its CA file, and again whenever the file changes;
    /// the same as --trust-bundle-file.
    #[arg(long, env = "SOURCE_CA_BUNDLE")]
    pub source_ca_bundle: Option<PathBuf>,
    /// csi.cert-manager.io: create each CertificateRequest with the pod's
    /// own ServiceAccount token for the API server's audience, from the
    /// kubelet's serviceAccount.tokens, so spec.username is the pod's
    /// ServiceAccount (csi-driver's flag of the same name). The CSIDriver
    /// must ask for that token (the chart does with
    /// app.driver.useTokenRequest).
    #[arg(long, env = "USE_TOKEN_REQUEST")]
    pub use_token_request: bool,
    /// A trust bundle file written as every volume's CA file, re-read when
    /// its directory changes (inotify; a mounted ConfigMap works).
    #[arg(long, env = "TRUST_BUNDLE_FILE")]
    pub trust_bundle_file: Option<PathBuf>,
    /// A trust bundle in a ConfigMap, `<namespace>/<name>:<key>`, watched.
    #[arg(long, env = "TRUST_BUNDLE_CONFIGMAP")]
    pub trust_bundle_configmap: Option<String>,
    /// A trust bundle in a Secret, `<namespace>/<name>:<key>`, watched.
    #[arg(long, env = "TRUST_BUNDLE_SECRET")]
    pub trust_bundle_secret: Option<String>,
}

/// A listen address that can be switched off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenAddress(pub Option<SocketAddr>);

fn parse_listen_address(value: &str) -> Result<ListenAddress, String> {
    match value.trim() {
        "" | "off" => Ok(ListenAddress(None)),
        text => text.parse().map(|a| ListenAddress(Some(a))).map_err(|_| {
            format!("{value:?} is not an address; use host:port such as 0.0.0.0:9402, or off")
        }),
    }
}

fn parse_absolute_path(value: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(value);
    if path.is_absolute() {
        Ok(path)
    } else {
        Err(format!(
            "{} is not an absolute path; give csi-driver's data root as this container sees it (the csi-driver chart mounts app.driver.csiDataDir, by default /tmp/cert-manager-csi-driver, and passes a relative --data-root inside its own container)",
            crate::volume::short_quote(value)
        ))
    }
}

fn parse_rate(value: &str) -> Result<crate::renewal::limiter::RequestRate, String> {
    let number: f64 = value
        .parse()
        .map_err(|_| format!("{value:?} is not a number; use requests per second such as 10"))?;
    crate::renewal::limiter::RequestRate::new(number).map_err(|e| e.to_string())
}

fn parse_gate(value: &str) -> Result<crate::node::readiness_gate::Gate, String> {
    crate::node::readiness_gate::Gate::parse(value).map_err(|e| e.to_string())
}

fn parse_duration(value: &str) -> Result<std::time::Duration, String> {
    crate::api::duration::parse_go(value)
        .map_err(|e| format!("{e} (use a Go duration such as 60s or 2m)"))
}

/// A Go duration of at least one second; `why` ends the error for a
/// shorter one, saying what it would break and what to write instead.
fn parse_at_least_1s(value: &str, why: &str) -> Result<std::time::Duration, String> {
    let d = parse_duration(value)?;
    if d < std::time::Duration::from_secs(1) {
        return Err(format!(
            "{} is shorter than 1s: {why}",
            crate::volume::short_quote(value)
        ));
    }
    Ok(d)
}

fn parse_min_interval(value: &str) -> Result<std::time::Duration, String> {
    parse_at_least_1s(
        value,
        "a volume could renew the moment its certificate arrives; use 1s or more (the default is 1m)",
    )
}

fn parse_key_pool_max_age(value: &str) -> Result<std::time::Duration, String> {
    parse_at_least_1s(
        value,
        "every pooled key would be dropped before use; use 1s or more (the default is 1h), or --rsa-key-pool-size 0 to turn the pool off",
    )
}

fn parse_jitter(value: &str) -> Result<crate::renewal::schedule::JitterPolicy, String> {
    let number: f64 = value
        .parse()
        .map_err(|_| format!("{value:?} is not a number; use a fraction such as 0.1"))?;
    crate::renewal::schedule::JitterPolicy::new(number).map_err(|e| e.to_string())
}

#[cfg(feature = "sandbox")]
#[derive(Debug, Args)]
pub struct SandboxArgs {
    /// Address to listen on. Port 0 picks a free port; the ready line says which.
    #[arg(long, env = "SANDBOX_LISTEN", default_value = "127.0.0.1:6443")]
    pub listen: SocketAddr,
    /// Where to write a kubeconfig that kubectl and kube::Client accept.
    #[arg(long, env = "SANDBOX_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Do not serve the cert-manager.io CRDs from start (apply them yourself).
    #[arg(long, env = "SANDBOX_NO_CERT_MANAGER_CRDS")]
    pub no_cert_manager_crds: bool,
    /// How many recent changes are kept for watches that resume from a
    /// resourceVersion; older versions answer 410 Gone.
    #[arg(long, env = "SANDBOX_WATCH_WINDOW", default_value_t = 10_000)]
    pub watch_window: usize,
    /// Listen on an address other machines can reach. The sandbox is a
    /// development server without authorization: anyone who reaches it may
    /// read every Secret, CA keys included.
    #[arg(long, env = "SANDBOX_ALLOW_REMOTE")]
    pub allow_remote: bool,
}

/// Refuses a `--listen` address outside loopback unless `allow_remote`.
#[cfg(feature = "sandbox")]
pub fn check_sandbox_listen(listen: SocketAddr, allow_remote: bool) -> Result<(), String> {
    if listen.ip().is_loopback() || allow_remote {
        return Ok(());
    }
    Err(format!(
        "--listen {listen}: the sandbox is a development server without authorization, \
         so anyone who can reach it may read every Secret, CA keys included; \
         listen on loopback (e.g. 127.0.0.1:6443), or pass --allow-remote if that is really meant"
    ))
}

/// Runs the chosen mode until it finishes or `shutdown` fires.
pub async fn run(command: Command, shutdown: CancellationToken) -> anyhow::Result<()> {
    match command {
        Command::Crds(args) => {
            if args.policy {
                print!("{}", crate::api::policy_crds_yaml()?);
            } else {
                print!("{}", crate::api::crds_yaml()?);
            }
            Ok(())
        }
        #[cfg(feature = "sandbox")]
        Command::Sandbox(args) => run_sandbox(args, shutdown).await,
        Command::Node(args) => run_node(args, shutdown).await,
        #[cfg(feature = "sandbox")]
        Command::Demo(args) => {
            let options = crate::demo::DemoOptions {
                dir: args.dir,
                keep: args.keep,
                duration: args.duration,
                isolation: args.isolation.unwrap_or_else(crate::demo::isolation::enter),
            };
            crate::demo::run(options, shutdown).await
        }
        Command::Controller(args) => run_controller(args, shutdown).await,
        Command::Status(args) => crate::operator::run_status(args),
        Command::Inspect(args) => crate::operator::run_inspect(args).await,
        Command::Approve(args) => crate::operator::run_decision(args, true).await,
        Command::Deny(args) => crate::operator::run_decision(args, false).await,
        Command::Renew(args) => crate::operator::run_renew(args).await,
    }
}

#[cfg(feature = "sandbox")]
async fn run_sandbox(args: SandboxArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    check_sandbox_listen(args.listen, args.allow_remote).map_err(anyhow::Error::msg)?;
    if !args.listen.ip().is_loopback() {
        tracing::warn!(listen = %args.listen, "the sandbox listens beyond loopback, without authorization (--allow-remote)");
    }
    let crds = if args.no_cert_manager_crds {
        Vec::new()
    } else {
        crate::api::crds()
    };
    let config = kube_sandbox::SandboxConfig {
        listen: args.listen,
        kubeconfig: args.kubeconfig.clone(),
        crds,
        watch_window: args.watch_window,
    };
    let sandbox = kube_sandbox::Sandbox::start(config).await?;
    // One line, on stdout, that scripts and tests wait for.
    match &args.kubeconfig {
        Some(path) => println!(
            "sandbox ready: {} (kubeconfig {})",
            sandbox.url(),
            path.display()
        ),
        None => println!("sandbox ready: {}", sandbox.url()),
    }
    shutdown.cancelled().await;
    sandbox.shutdown().await;
    Ok(())
}

async fn run_node(args: NodeArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let spiffe = if args.driver_name == crate::spiffe_id::DRIVER_NAME {
        use crate::volume::spiffe_attributes::{SpiffeConfig, SpiffeFlags};
        Some(SpiffeConfig::from_flags(&SpiffeFlags {
            trust_domain: &args.spiffe_trust_domain,
            template: &args.spiffe_id_template,
            key: &args.spiffe_key_algorithm,
            duration: args.spiffe_duration,
            issuer_name: args.spiffe_issuer_name.as_deref(),
            issuer_kind: &args.spiffe_issuer_kind,
            issuer_group: &args.spiffe_issuer_group,
            mode: args.spiffe_request_mode,
            audience: &args.spiffe_token_audience,
            files: crate::volume::spiffe_attributes::SpiffeFiles {
                certificate: args.file_name_certificate.clone(),
                key: args.file_name_key.clone(),
                ca: args.file_name_ca.clone(),
            },
            extra_annotations: &args.extra_certificate_request_annotations,
            runtime_config_map: match (
                args.runtime_issuance_config_map_namespace.as_deref(),
                args.runtime_issuance_config_map_name.as_deref(),
            ) {
                (Some(ns), Some(name)) if !ns.is_empty() && !name.is_empty() => Some((ns, name)),
                (None, None) => None,
                _ => anyhow::bail!(
                    "--runtime-issuance-config-map-name and --runtime-issuance-config-map-namespace go together; give both (the chart passes its release namespace)"
                ),
            },
        })?)
    } else {
        None
    };
    if spiffe.is_none() {
        let spiffe_only = [
            (
                "--file-name-certificate",
                args.file_name_certificate != crate::volume::DEFAULT_CERTIFICATE_FILE,
            ),
            (
                "--file-name-key",
                args.file_name_key != crate::volume::DEFAULT_PRIVATE_KEY_FILE,
            ),
            (
                "--file-name-ca",
                args.file_name_ca != crate::volume::DEFAULT_CA_FILE,
            ),
            (
                "--extra-certificate-request-annotations",
                !args.extra_certificate_request_annotations.is_empty(),
            ),
            ("--source-ca-bundle", args.source_ca_bundle.is_some()),
            (
                "--runtime-issuance-config-map-name",
                args.runtime_issuance_config_map_name.is_some(),
            ),
        ];
        if let Some((flag, _)) = spiffe_only.iter().find(|(_, set)| *set) {
            anyhow::bail!(
                "{flag} is a flag of the SPIFFE driver ({}); csi.cert-manager.io volumes name their files and annotations with volume attributes",
                crate::spiffe_id::DRIVER_NAME
            );
        }
    }
    let trust_file = match (&args.source_ca_bundle, &args.trust_bundle_file) {
        (Some(a), Some(b)) if a != b => anyhow::bail!(
            "--source-ca-bundle and --trust-bundle-file name different files; they are the same setting, give one"
        ),
        (Some(a), _) => Some(a.clone()),
        (None, b) => b.clone(),
    };
    let trust = crate::node::trust::TrustSource::from_flags(
        trust_file.as_deref(),
        args.trust_bundle_configmap.as_deref(),
        args.trust_bundle_secret.as_deref(),
    )?;
    if args.use_token_request && spiffe.is_some() {
        anyhow::bail!(
            "--use-token-request is for the csi.cert-manager.io driver; the SPIFFE driver chooses with --spiffe-request-mode"
        );
    }
    if !args.pod_readiness_gates.is_empty() && !args.continue_on_not_ready {
        anyhow::bail!(
            "--pod-readiness-gate needs --continue-on-not-ready=true (as in csi-driver): without it a publish would wait for the gates and time out"
        );
    }
    let extras = crate::csi::run::NodeExtras {
        spiffe,
        trust,
        use_token_request: args.use_token_request,
    };
    let options = crate::csi::run::NodeOptions {
        endpoint: args.endpoint,
        driver_name: args.driver_name,
        data_root: args.data_root,
        kubeconfig: args.kubeconfig,
        store: crate::store::StoreOptions::default(),
        api_rate: crate::api_rate::ApiRate::from_flags(args.kube_api_qps, args.kube_api_burst),
        node: crate::node::NodeConfig {
            node_id: args.node_id,
            publish_timeout: args.publish_timeout,
            keep_requests: args.keep_requests as usize,
            renewal: crate::renewal::schedule::RenewalPolicy {
                jitter: args.renewal_jitter,
                min_interval: args.min_renewal_interval,
                max_guard_backoff: args.max_guard_backoff,
            },
            retry: crate::node::RetryPolicy {
                base: args.renewal_retry_base,
                max: args.renewal_retry_max.max(args.renewal_retry_base),
            },
            limits: crate::renewal::limiter::LimiterConfig {
                max_inflight: args.max_inflight_requests as usize,
                rate: args.max_request_rate,
                burst: args.max_request_burst,
            },
            metrics_address: args.metrics_address.0,
            key_pool: crate::node::keypool::KeyPoolConfig {
                size: args.rsa_key_pool_size as usize,
                max_age: args.rsa_key_pool_max_age,
            },
            slow_issuance: args.slow_issuance_threshold,
            kubelet_root_dir: args.kubelet_root_dir,
            adopt_csi_driver_data_root: args.adopt_csi_driver_data_root,
            input: crate::volume::InputLimits {
                max_context_bytes: args.max_volume_context_bytes as usize,
                max_sans: args.max_sans as usize,
            },
            strict_attributes: args.strict_attributes,
            readiness_gates: args.pod_readiness_gates,
            continue_on_not_ready: args.continue_on_not_ready,
        },
    };
    crate::csi::run::run_with(options, extras, shutdown).await
}

/// Parses the controller flags, serves health, and runs the loops until
/// `shutdown` fires.
pub async fn run_controller(
    args: ControllerArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    use crate::controller::leader::{ElectionObserver, LEASE_NAME};
    use crate::controller::{
        ApproveScope, ControllerName, ControllerOptions, EnabledControllers, Health,
    };
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut options = ControllerOptions::new(args.cluster_resource_namespace.clone());
    options.enabled = EnabledControllers::parse(&args.controllers)?;
    options.approve = ApproveScope::parse(&args.approve_issuers)?;
    if args.certificate_backoff_max < args.certificate_backoff_base {
        anyhow::bail!(
            "--certificate-backoff-max ({:?}) is shorter than --certificate-backoff-base ({:?}); make the maximum at least the base",
            args.certificate_backoff_max,
            args.certificate_backoff_base
        );
    }
    options.certificates = crate::controller::certificates::CertificatesOptions {
        backoff_base: args.certificate_backoff_base,
        backoff_max: args.certificate_backoff_max,
        jitter: args.certificate_renewal_jitter,
    };
    options.spiffe = args.spiffe_policy()?;
    options.policy_approver = args.policy_approver;
    if options.policy_approver && !options.enabled.contains(ControllerName::Approver) {
        anyhow::bail!(
            "--policy-approver needs the approver loop, but --controllers {:?} switches it off; add approver to --controllers or drop --policy-approver",
            args.controllers
        );
    }
    let webhook_options = args.webhook_options()?;
    let election = args.election()?;
    let client = crate::kubernetes::kube_client(args.kubeconfig.as_ref()).await?;
    // A webhook that cannot start stops the whole controller: running
    // without it would leave spec.username untrustworthy.
    // Ready to be routed to only once the webhook (when on) serves.
    let webhook_ready = Arc::new(AtomicBool::new(webhook_options.is_none()));
    let webhook = webhook_options.map(|w| {
        let (client, shutdown) = (client.clone(), shutdown.clone());
        let ready = webhook_ready.clone();
        tokio::spawn(async move {
            let result = crate::controller::webhook::run(client, w, ready, shutdown.clone()).await;
            if let Err(error) = &result {
                tracing::error!(%error, "the admission webhook stopped; shutting down");
                shutdown.cancel();
            }
            result
        })
    });
    let listener = tokio::net::TcpListener::bind(args.metrics_address)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "--metrics-address {}: cannot listen: {e}",
                args.metrics_address
            )
        })?;
    let bound = listener.local_addr()?;
    tracing::info!(metrics_address = %bound, "serving /metrics, /healthz and /readyz");
    let mut registry = crate::telemetry::Registry::default();
    options.metrics = crate::telemetry::ControllerMetrics::register(&mut registry);
    crate::telemetry::process::register(&mut registry);
    let leading = crate::controller::leader::LeaderGauge::register(&mut registry, LEASE_NAME);
    let health = Health::default();
    let readiness = {
        let (health, webhook_ready) = (health.clone(), webhook_ready.clone());
        move || {
            use crate::telemetry::ReadinessCheck;
            if !webhook_ready.load(Ordering::SeqCst) {
                return Err("the webhook does not serve yet".to_owned());
            }
            health.check()
        }
    };
    let server = tokio::spawn(crate::telemetry::serve(
        listener,
        Arc::new(registry),
        readiness,
        shutdown.clone(),
    ));
    let outcome = match election {
        Some(election) => {
            // A client of its own, so renewals never queue behind the
            // loops' requests on a busy connection pool.
            let lease_client = crate::kubernetes::kube_client(args.kubeconfig.as_ref()).await?;
            let lead = move |token| crate::controller::run(client, options, health, token);
            crate::controller::leader::run(lease_client, election, &leading, shutdown.clone(), lead)
                .await
        }
        None => {
            leading.leading(true);
            crate::controller::run(client, options, health, shutdown.clone()).await;
            Ok(())
        }
    };
    shutdown.cancel();
    server.await??;
    if let Some(webhook) = webhook {
        webhook.await??;
    }
    Ok(outcome?)
}

#[cfg(all(test, feature = "sandbox"))]
mod tests {
    use super::check_sandbox_listen;

    #[test]
    fn the_sandbox_listens_beyond_loopback_only_when_told() {
        for ok in ["127.0.0.1:6443", "127.0.0.2:0", "[::1]:6443"] {
            check_sandbox_listen(ok.parse().unwrap(), false).unwrap();
        }
        for remote in ["0.0.0.0:6443", "[::]:6443", "10.1.2.3:6443"] {
            let addr = remote.parse().unwrap();
            let err = check_sandbox_listen(addr, false).unwrap_err();
            assert!(
                err.contains("--allow-remote") && err.contains("without authorization"),
                "{err}"
            );
            check_sandbox_listen(addr, true).unwrap();
        }
    }
}
