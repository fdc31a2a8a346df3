//! `cert-csi-bench`: measures cert-csi against the physical floor and the
//! goals of issue 8, in one run. `hack/bench` builds it in release and runs
//! it; `--quick` runs every measurement at small sizes.
//!
//! The node plugin runs as a subprocess (`cert-csi node`), so its memory
//! and CPU time are read from /proc; the sandbox API server and the
//! controller run in this process. Everything started is stopped by pid and
//! every mount is detached when the run ends, also on failure or Ctrl-C.

mod controller;
mod env;
mod peer;
mod procfs;
mod report;
mod scenarios;
mod stats;
mod svg;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use report::{Outcome, Results};
use scenarios::Sizes;

#[derive(Debug, Parser)]
#[command(
    name = "cert-csi-bench",
    about = "Measure cert-csi against its floor and goals"
)]
struct Args {
    /// Every measurement at small sizes (well under a minute in release).
    #[arg(long)]
    quick: bool,
    /// Where results.json and the SVG plots go.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// The cert-csi binary whose node plugin and controller are measured
    /// [default: `cert-csi` beside this binary].
    #[arg(long)]
    cert_csi: Option<PathBuf>,
    /// Run only these measurements, e.g. `p1,p6` (p3, p4 and p5 run together).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Parent of the scratch directory (sockets, node state, mounts).
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    work_dir: PathBuf,
    /// Keep the scratch directory (node logs) after the run; mounts are
    /// still detached.
    #[arg(long)]
    keep_scratch: bool,
    /// Lifetime of the node measurements' CA (Go duration). The CA issuer
    /// caps every leaf at its CA's expiry, so a CA younger than the
    /// volumes' 90 days is an issuer that shortens lifetimes (issue 13).
    #[arg(long, default_value = "2160h", value_parser = parse_go_duration)]
    ca_duration: Duration,
    /// Instead of P1–P7: cert-csi and cert-manager's csi-driver side by
    /// side on a real control plane (hack/kube; .tools/bin from
    /// hack/build-tools). Writes peer.json.
    #[arg(long)]
    peer: bool,
    /// Run P1–P6 on the real control plane (hack/kube; .tools/bin from
    /// hack/build-tools) instead of the sandbox. P4 then also reports the
    /// API server's request rate.
    #[arg(long)]
    real: bool,
}

fn parse_go_duration(value: &str) -> Result<Duration, String> {
    cert_csi::api::duration::parse_go(value).map_err(|e| e.to_string())
}

const NAMESPACES: [&str; 4] = ["p1", "p2", "scale", "p6"];

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if args.peer {
        return run_peer(&args, runtime);
    }
    let results = runtime.block_on(async {
        tokio::select! {
            r = run(&args) => r,
            // Returning drops every guard of the run: nodes are killed and
            // mounts detached.
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    })?;
    runtime.shutdown_timeout(Duration::from_secs(5));
    print!("{}", report::text(&results));
    let files = report::write(&results, &args.out)?;
    println!();
    for f in files {
        println!("wrote {}", f.display());
    }
    let failed: Vec<&str> = [
        ("P1", failed(&results.p1)),
        ("P2", failed(&results.p2)),
        ("P3", failed(&results.p3)),
        ("P4", failed(&results.p4)),
        ("P5", failed(&results.p5)),
        ("P6", failed(&results.p6)),
        (
            "P7",
            failed(&results.p7.issue) || failed(&results.p7.memory),
        ),
    ]
    .into_iter()
    .filter_map(|(name, f)| f.then_some(name))
    .collect();
    if !failed.is_empty() {
        anyhow::bail!("measurements failed: {}", failed.join(", "));
    }
    Ok(())
}

/// `--peer`: the side-by-side run, its table, and peer.json.
fn run_peer(args: &Args, runtime: tokio::runtime::Runtime) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!("both node plugins mount tmpfs and bind mounts, which needs root");
    }
    let exe = cert_csi_exe(args)?;
    let mut scratch = env::Scratch::create(&args.work_dir)?;
    if args.keep_scratch {
        scratch.keep();
    }
    let results = runtime.block_on(async {
        tokio::select! {
            r = peer::run(&exe, scratch.path(), args.quick) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    drop(scratch);
    let results = results?;
    print!("{}", peer::text(&results));
    std::fs::create_dir_all(&args.out)?;
    let file = args.out.join("peer.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&results)?)?;
    println!("\nwrote {}", file.display());
    Ok(())
}

fn failed<T>(o: &Outcome<T>) -> bool {
    matches!(o, Outcome::Failed { .. })
}

fn cert_csi_exe(args: &Args) -> anyhow::Result<PathBuf> {
    let exe = match &args.cert_csi {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the bench binary has no parent directory")?
            .join("cert-csi"),
    };
    if !exe.is_file() {
        anyhow::bail!(
            "--cert-csi {}: no such file; build it (cargo build --release) or pass its path",
            exe.display()
        );
    }
    Ok(exe)
}

fn skipped<T>(what: &str) -> Outcome<T> {
    Outcome::Skipped {
        skipped: format!("not in --only; run with --only {what}"),
    }
}

async fn run(args: &Args) -> anyhow::Result<Results> {
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!(
            "the node plugin mounts tmpfs and bind mounts like a real node, which needs root; run hack/bench as root"
        );
    }
    let exe = cert_csi_exe(args)?;
    let sizes = if args.quick {
        Sizes::quick()
    } else {
        Sizes::full()
    };
    let only: BTreeSet<String> = args.only.iter().map(|s| s.trim().to_lowercase()).collect();
    let known = ["p1", "p2", "p3", "p4", "p5", "p6", "p7"];
    if let Some(bad) = only.iter().find(|o| !known.contains(&o.as_str())) {
        anyhow::bail!("--only {bad}: unknown measurement; use p1 to p7, comma-separated");
    }
    let wants = |p: &str| only.is_empty() || only.contains(p);
    let mut scratch = env::Scratch::create(&args.work_dir)?;
    if args.keep_scratch {
        scratch.keep();
        eprintln!(
            "cert-csi-bench: scratch directory {}",
            scratch.path().display()
        );
    }

    let mut results = Results {
        date: jiff::Timestamp::now().to_string(),
        machine: report::Machine::this(),
        build: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        command: std::env::args().collect::<Vec<_>>().join(" "),
        sizes: sizes.clone(),
        p1: skipped("p1"),
        p2: skipped("p2"),
        p3: skipped("p3"),
        p4: skipped("p4"),
        p5: skipped("p5"),
        p6: skipped("p6"),
        p7: report::P7 {
            issue: skipped("p7"),
            memory: skipped("p7"),
        },
        goals: Vec::new(),
    };

    if ["p1", "p2", "p3", "p4", "p5", "p6"]
        .iter()
        .any(|p| wants(p))
    {
        let cluster = if args.real {
            eprintln!("cert-csi-bench: starting the real control plane (hack/kube)");
            env::Cluster::start_real(scratch.path(), &NAMESPACES, args.ca_duration).await?
        } else {
            env::Cluster::start(scratch.path(), &NAMESPACES, args.ca_duration).await?
        };
        let ctx = scenarios::Ctx {
            exe: &exe,
            dir: scratch.path(),
            cluster: &cluster,
            sizes: &sizes,
        };
        if wants("p1") {
            eprintln!("cert-csi-bench: P1 publish latency and floor");
            results.p1 = Outcome::from_result(scenarios::p1(&ctx).await);
        }
        if wants("p2") {
            eprintln!("cert-csi-bench: P2 burst of {} pods", sizes.burst);
            results.p2 = Outcome::from_result(scenarios::p2(&ctx).await);
        }
        if wants("p3") || wants("p4") || wants("p5") {
            eprintln!(
                "cert-csi-bench: P3–P5 memory, idle CPU and recovery at up to {} volumes",
                sizes.max_volumes
            );
            match scenarios::p3_p4_p5(&ctx).await {
                Ok((p3, p4, p5)) => {
                    results.p3 = Outcome::Done(p3);
                    results.p4 = Outcome::Done(p4);
                    results.p5 = Outcome::Done(p5);
                }
                Err(e) => {
                    let error = format!("{e:#}");
                    results.p3 = Outcome::Failed {
                        error: error.clone(),
                    };
                    results.p4 = Outcome::Failed {
                        error: error.clone(),
                    };
                    results.p5 = Outcome::Failed { error };
                }
            }
            // The next measurement starts with no mounts of this one.
            scratch.unmount_all();
        }
        if wants("p6") {
            eprintln!(
                "cert-csi-bench: P6 renewal spread of {} volumes",
                sizes.renewal_volumes
            );
            results.p6 = Outcome::from_result(scenarios::p6(&ctx).await);
        }
        cluster.shutdown().await;
    }
    if wants("p7") {
        eprintln!(
            "cert-csi-bench: P7 controller, {} Certificates and {} unrelated Secrets",
            sizes.p7_certificates, sizes.p7_secrets
        );
        results.p7.issue = Outcome::from_result(
            controller::issue_many(sizes.p7_certificates, Duration::from_secs(1800)).await,
        );
        results.p7.memory = Outcome::from_result(
            controller::memory_with_secrets(sizes.p7_secrets, &exe, scratch.path()).await,
        );
    }
    results.goals = report::judge(&results);
    Ok(results)
}
