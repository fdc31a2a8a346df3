use cert_csi::cli::{self, Cli};
use clap::Parser;

fn main() -> anyhow::Result<()> {
    let mut args = Cli::parse();
    cert_csi::telemetry::init(args.log_format, args.log_level())?;
    // A user namespace can only be entered while the process has one thread,
    // so the demo's isolation happens before the async runtime starts.
    isolate_demo(&mut args.command);
    // rustls needs exactly one process-wide provider; every TLS user shares it.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        let shutdown = cert_csi::shutdown::on_signals()?;
        cli::run(args.command, shutdown).await
    });
    // Every mode waits for its own work before it returns. What is left is
    // work a mode chose to abandon (a controller that lost its Lease must
    // exit before another replica leads), so it is not waited for.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

#[cfg(feature = "sandbox")]
fn isolate_demo(command: &mut cli::Command) {
    use cert_csi::demo::isolation;
    if let cli::Command::Demo(demo) = command {
        demo.isolation = Some(if demo.no_mounts {
            isolation::Isolation::Unavailable("--no-mounts was given".into())
        } else {
            isolation::enter()
        });
    }
}

/// Without the `sandbox` feature there is no demo to isolate.
#[cfg(not(feature = "sandbox"))]
fn isolate_demo(_: &mut cli::Command) {}
