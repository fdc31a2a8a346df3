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
            (None, Command::Demo(_)) => "warn",
            (None, _) => "info",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run an in-memory Kubernetes API server on loopback (for demos and tests).
    Sandbox(SandboxArgs),
    /// Print the cert-manager.io/v1 CustomResourceDefinitions as YAML.
    Crds,
    /// Run the CSI node plugin (one per node, as a DaemonSet).
    Node(NodeArgs),
    /// Show the whole system on this machine: API sandbox, controller, node
    /// plugin and a simulated kubelet; two pods get identities, talk mutual
    /// TLS, and rotate in place.
    Demo(DemoArgs),
    /// Run the controller: approver, issuer status and SelfSigned/CA signer.
    Controller(ControllerArgs),
}

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
    /// Where `/healthz` and `/readyz` are served.
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
    /// CertificateRequests this node may have undecided at once (first
    /// issuance and renewals together).
    #[arg(long, env = "MAX_INFLIGHT_REQUESTS", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_inflight_requests: u32,
    /// New CertificateRequests this node may create per second (a fraction
    /// such as 0.5 is allowed); waiting pods go before renewals.
    #[arg(long, env = "MAX_REQUEST_RATE", default_value = "10", value_parser = parse_rate)]
    pub max_request_rate: crate::renewal::limiter::RequestRate,
    /// First wait after a failed renewal; doubles per failure, with jitter
    /// (Go duration).
    #[arg(long, env = "RENEWAL_RETRY_BASE", default_value = "30s", value_parser = parse_duration)]
    pub renewal_retry_base: std::time::Duration,
    /// Longest wait between failed renewals (Go duration).
    #[arg(long, env = "RENEWAL_RETRY_MAX", default_value = "5m", value_parser = parse_duration)]
    pub renewal_retry_max: std::time::Duration,
}

fn parse_rate(value: &str) -> Result<crate::renewal::limiter::RequestRate, String> {
    let number: f64 = value
        .parse()
        .map_err(|_| format!("{value:?} is not a number; use requests per second such as 10"))?;
    crate::renewal::limiter::RequestRate::new(number).map_err(|e| e.to_string())
}

fn parse_duration(value: &str) -> Result<std::time::Duration, String> {
    crate::volume::duration::parse_go(value)
        .map_err(|e| format!("{e} (use a Go duration such as 60s or 2m)"))
}

fn parse_jitter(value: &str) -> Result<crate::renewal::schedule::JitterPolicy, String> {
    let number: f64 = value
        .parse()
        .map_err(|_| format!("{value:?} is not a number; use a fraction such as 0.1"))?;
    crate::renewal::schedule::JitterPolicy::new(number).map_err(|e| e.to_string())
}

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
}

/// Runs the chosen mode until it finishes or `shutdown` fires.
pub async fn run(command: Command, shutdown: CancellationToken) -> anyhow::Result<()> {
    match command {
        Command::Crds => {
            print!("{}", crate::api::crds_yaml()?);
            Ok(())
        }
        Command::Sandbox(args) => run_sandbox(args, shutdown).await,
        Command::Node(args) => run_node(args, shutdown).await,
        Command::Demo(args) => {
            let options = crate::demo::DemoOptions {
                dir: args.dir,
                keep: args.keep,
                duration: args.duration,
            };
            crate::demo::run(options, shutdown).await
        }
        Command::Controller(args) => run_controller(args, shutdown).await,
    }
}

async fn run_sandbox(args: SandboxArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let crds = if args.no_cert_manager_crds {
        Vec::new()
    } else {
        crate::api::crds()
    };
    let config = crate::sandbox::SandboxConfig {
        listen: args.listen,
        kubeconfig: args.kubeconfig.clone(),
        crds,
        watch_window: args.watch_window,
    };
    let sandbox = crate::sandbox::Sandbox::start(config).await?;
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
    let options = crate::csi::run::NodeOptions {
        endpoint: args.endpoint,
        driver_name: args.driver_name,
        data_root: args.data_root,
        kubeconfig: args.kubeconfig,
        node: crate::csi::node::NodeConfig {
            node_id: args.node_id,
            publish_timeout: args.publish_timeout,
            keep_requests: args.keep_requests as usize,
            jitter: args.renewal_jitter,
            retry: crate::csi::node::RetryPolicy {
                base: args.renewal_retry_base,
                max: args.renewal_retry_max.max(args.renewal_retry_base),
            },
            limits: crate::renewal::limiter::LimiterConfig {
                max_inflight: args.max_inflight_requests as usize,
                rate: args.max_request_rate,
            },
        },
    };
    crate::csi::run::run(options, shutdown).await
}

/// Parses the controller flags, serves health, and runs the loops until
/// `shutdown` fires.
pub async fn run_controller(
    args: ControllerArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    use crate::controller::{ApproveScope, ControllerOptions, EnabledControllers, Health};
    let mut options = ControllerOptions::new(args.cluster_resource_namespace);
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
    let client = crate::csi::run::kube_client(args.kubeconfig.as_ref()).await?;
    let listener = tokio::net::TcpListener::bind(args.metrics_address)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "--metrics-address {}: cannot listen: {e}",
                args.metrics_address
            )
        })?;
    let health = Health::default();
    let server = tokio::spawn(crate::controller::serve_health(
        listener,
        health.clone(),
        shutdown.clone(),
    ));
    crate::controller::run(client, options, health, shutdown.clone()).await;
    shutdown.cancel();
    server.await??;
    Ok(())
}
