//! The command line: one subcommand per mode. Every flag can also be set from
//! an environment variable, as DaemonSets and Deployments prefer.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::shutdown::CancellationToken;
use crate::telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(name = "cert-csi", version, about = "Per-pod X.509 identities via CSI and cert-manager.io/v1")]
pub struct Cli {
    /// Log output format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// Log filter, e.g. `info` or `cert_csi=debug,kube=warn`.
    #[arg(long, env = "LOG_LEVEL", default_value = "info", global = true)]
    pub log_level: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run an in-memory Kubernetes API server on loopback (for demos and tests).
    Sandbox(SandboxArgs),
    /// Print the cert-manager.io/v1 CustomResourceDefinitions as YAML.
    Crds,
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
