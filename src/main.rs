use cert_csi::cli::{self, Cli, Command};
use clap::Parser;

fn main() -> anyhow::Result<()> {
    let args = Cli::parse();
    cert_csi::telemetry::init(args.log_format, args.log_level())?;
    // A user namespace can only be entered while the process has one thread,
    // so the demo's isolation happens before the async runtime starts.
    let isolation = match &args.command {
        Command::Demo(demo) if demo.no_mounts => Some(
            cert_csi::demo::isolation::Isolation::Unavailable("--no-mounts was given".into()),
        ),
        Command::Demo(_) => Some(cert_csi::demo::isolation::enter()),
        _ => None,
    };
    // rustls needs exactly one process-wide provider; every TLS user shares it.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let shutdown = cert_csi::shutdown::on_signals()?;
            cli::run(args.command, isolation, shutdown).await
        })
}
