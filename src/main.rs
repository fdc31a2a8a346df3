use cert_csi::cli::{self, Cli};
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Cli::parse();
    cert_csi::telemetry::init(args.log_format, args.log_level())?;
    // rustls needs exactly one process-wide provider; every TLS user shares it.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let shutdown = cert_csi::shutdown::on_signals()?;
    cli::run(args.command, shutdown).await
}
