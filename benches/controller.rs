//! Benchmarks of the certificates loop (not a timed test; prints numbers).
//! The measuring code is P7 of `hack/bench`, shared with this file through
//! `#[path]`, so both report the same thing:
//!
//! 1. Time to issue N Certificates (env `N`, default 10,000) through a CA
//!    ClusterIssuer, with the whole controller in-process on the sandbox.
//! 2. Resident memory of `cert-csi controller` (a subprocess) while S
//!    unrelated Secrets exist (env `SECRETS`, default 100,000).
//!
//! Run: `cargo bench --bench controller` (add `N=500 SECRETS=5000` for a quick run).

// Both are shared with the bench binary, which uses more of them than this.
#[allow(dead_code)]
#[path = "../src/bin/cert-csi-bench/controller.rs"]
mod controller;
#[allow(dead_code)]
#[path = "../src/bin/cert-csi-bench/procfs.rs"]
mod procfs;

use std::path::Path;
use std::time::Duration;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let n = env_usize("N", 10_000);
    let secrets = env_usize("SECRETS", 100_000);
    runtime.block_on(async {
        if n > 0 {
            let r = controller::issue_many(n, Duration::from_secs(1800)).await?;
            println!(
                "issue: {} Certificates Ready in {:.1} s ({:.0}/s; creating them took {:.1} s); goal ≤ 60 s for 10,000",
                r.certificates,
                r.seconds,
                r.certificates as f64 / r.seconds,
                r.create_seconds
            );
        }
        if secrets > 0 {
            let dir = tempfile::tempdir()?;
            let exe = Path::new(env!("CARGO_BIN_EXE_cert-csi"));
            let m = controller::memory_with_secrets(secrets, exe, dir.path()).await?;
            println!(
                "memory: cert-csi controller (subprocess) with {} unrelated Secrets: VmRSS {:.1} MiB, VmHWM (peak) {:.1} MiB; probe Certificate Ready after {:.1} s; goal ≤ 64 MiB",
                m.secrets, m.rss_mib, m.peak_mib, m.probe_ready_seconds
            );
        }
        anyhow::Ok(())
    })
}
