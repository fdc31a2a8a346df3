//! `--peer`: cert-csi's node plugin and cert-manager's csi-driver side by
//! side, in one run, on one real control plane (`hack/kube`), signed by the
//! same controller and CA ClusterIssuer, driven by the same simulated
//! kubelet over each plugin's own socket.
//!
//! Each plugin runs as users get it: cert-csi with its default flags (its
//! request limiter on) and once more with the limiter lifted, csi-driver
//! with its chart's flags. For each:
//! - P1: one publish at a time, paced below cert-csi's default request
//!   rate so that it measures what one pod waits for, P-256 and RSA-2048;
//! - P2: a burst of pods at once, and how many requests it made;
//! - P3: the plugin's resident memory idle and with the burst's volumes;
//! - API load: the API server's own `apiserver_request_total` for
//!   cert-manager.io and Event requests, by verb, over a window in which
//!   every volume is published and none is due for renewal;
//! - P5: SIGKILL and restart with those volumes: time until Probe answers,
//!   and the CertificateRequests made in the window after it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::env::{self, Cluster, Flavour, Kubelets, NodeProcess};
use crate::procfs;
use crate::report::Machine;
use crate::stats::Summary;

/// How much each measurement does.
#[derive(Debug, Clone, Serialize)]
pub struct PeerSizes {
    pub p1_p256: usize,
    pub p1_rsa: usize,
    /// Time between two P1 publishes: below cert-csi's default 10 per
    /// second, so P1 is latency, not the limiter.
    pub p1_pace_ms: u64,
    pub burst: usize,
    pub connections: usize,
    pub load_window_s: u64,
    pub restart_window_s: u64,
}

impl PeerSizes {
    pub fn full() -> Self {
        PeerSizes {
            p1_p256: 100,
            p1_rsa: 20,
            p1_pace_ms: 120,
            burst: 1000,
            connections: 16,
            load_window_s: 30,
            restart_window_s: 10,
        }
    }

    pub fn quick() -> Self {
        PeerSizes {
            p1_p256: 8,
            p1_rsa: 2,
            p1_pace_ms: 120,
            burst: 24,
            connections: 8,
            load_window_s: 3,
            restart_window_s: 2,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Burst {
    pub volumes: usize,
    pub seconds: f64,
    pub failures: usize,
    pub first_failure: Option<String>,
    /// CertificateRequests created for the burst.
    pub requests: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    /// VmRSS, RssFile and RssAnon in MiB.
    pub rss_mib: f64,
    pub file_mib: f64,
    pub anon_mib: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Restart {
    pub ready_s: f64,
    /// CertificateRequests created in the window after the restart.
    pub new_requests: usize,
    pub window_s: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DriverResult {
    pub driver: String,
    pub flags: Vec<String>,
    pub p1_p256: Summary,
    pub p1_rsa2048: Summary,
    pub burst: Burst,
    pub idle: Memory,
    pub with_volumes: Memory,
    /// Requests per second by verb (cert-manager.io and Events) with every
    /// volume published and none due.
    pub load_per_s: BTreeMap<String, f64>,
    /// P4: the plugin's CPU time over the same steady window, as a
    /// percentage of one core.
    pub idle_cpu_percent: f64,
    pub restart: Restart,
}

#[derive(Debug, Clone, Serialize)]
pub struct PeerResults {
    pub date: String,
    pub machine: Machine,
    pub command: String,
    pub sizes: PeerSizes,
    pub drivers: Vec<DriverResult>,
}

/// One plugin under test.
struct Contender {
    label: &'static str,
    flavour: Flavour,
    flags: Vec<String>,
}

/// Runs the comparison in `dir`. `cert_csi` is the cert-csi binary; the
/// upstream one is `.tools/bin/csi-driver`.
pub async fn run(cert_csi: &Path, dir: &Path, quick: bool) -> anyhow::Result<PeerResults> {
    let upstream = std::env::current_dir()?.join(".tools/bin/csi-driver");
    anyhow::ensure!(
        upstream.is_file(),
        "{}: not found; build it with hack/build-tools csi-driver",
        upstream.display()
    );
    let sizes = if quick {
        PeerSizes::quick()
    } else {
        PeerSizes::full()
    };
    let lifted = [
        "--max-request-rate",
        "100000",
        "--max-request-burst",
        "100000",
    ];
    let contenders = [
        Contender {
            label: "cert-csi",
            flavour: Flavour::CertCsi,
            flags: Vec::new(),
        },
        Contender {
            label: "cert-csi, limiter lifted",
            flavour: Flavour::CertCsi,
            flags: lifted.iter().map(|s| s.to_string()).collect(),
        },
        Contender {
            label: "csi-driver v0.15.0",
            flavour: Flavour::CsiDriver,
            flags: Vec::new(),
        },
    ];
    let namespaces: Vec<String> = (0..contenders.len()).map(|i| format!("peer-{i}")).collect();
    let ns_refs: Vec<&str> = namespaces.iter().map(String::as_str).collect();
    eprintln!("cert-csi-bench: --peer: starting the real control plane (hack/kube)");
    let cluster =
        Cluster::start_real(dir, &ns_refs, crate::controller::DEFAULT_CA_DURATION).await?;
    let mut drivers = Vec::new();
    for (i, c) in contenders.iter().enumerate() {
        eprintln!("cert-csi-bench: --peer: {}", c.label);
        let exe = match c.flavour {
            Flavour::CertCsi => cert_csi,
            Flavour::CsiDriver => upstream.as_path(),
        };
        let result = measure(&cluster, exe, dir, c, &namespaces[i], &sizes)
            .await
            .with_context(|| c.label.to_string())?;
        drivers.push(result);
    }
    cluster.shutdown().await;
    Ok(PeerResults {
        date: jiff::Timestamp::now().to_string(),
        machine: Machine::this(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        sizes,
        drivers,
    })
}

fn memory(pid: u32) -> anyhow::Result<Memory> {
    let mib = |field| procfs::status_kib(pid, field).map(|k| k as f64 / 1024.0);
    Ok(Memory {
        rss_mib: mib("VmRSS:")?,
        file_mib: mib("RssFile:")?,
        anon_mib: mib("RssAnon:")?,
    })
}

/// P1: `n` publishes one at a time, `pace_ms` apart, after a warm-up
/// that is not counted; every volume is unpublished after.
async fn p1(
    kubelets: &mut Kubelets,
    namespace: &str,
    extra: &[(&str, &str)],
    n: usize,
    prefix: &str,
    pace_ms: u64,
) -> anyhow::Result<Summary> {
    let attrs = env::attributes(extra);
    let volumes = kubelets
        .pods_with_volume(namespace, prefix, 0..n + 1, &attrs)
        .await?;
    let mut samples = Vec::new();
    for (i, v) in volumes.iter().enumerate() {
        let started = Instant::now();
        kubelets.pool[0]
            .publish(v)
            .await
            .map_err(|s| anyhow::anyhow!("P1 publish: {:?}: {}", s.code(), s.message()))?;
        let took = started.elapsed();
        if i > 0 {
            samples.push(took.as_secs_f64() * 1000.0);
        }
        tokio::time::sleep(Duration::from_millis(pace_ms).saturating_sub(took)).await;
    }
    let (failed, first) = env::failures(&kubelets.unpublish_all(&volumes).await);
    anyhow::ensure!(failed == 0, "P1 unpublish: {first:?}");
    Ok(Summary::of(&samples))
}

async fn measure(
    cluster: &Cluster,
    exe: &Path,
    dir: &Path,
    contender: &Contender,
    namespace: &str,
    sizes: &PeerSizes,
) -> anyhow::Result<DriverResult> {
    let mut node = NodeProcess::start_flavour(
        contender.flavour,
        exe,
        dir,
        namespace,
        &cluster.kubeconfig,
        &contender.flags,
    )
    .await?;
    let root = node.kubelet_root();
    let mut kubelets = Kubelets::connect(cluster, &node, &root, sizes.connections).await?;
    // Idle: started, nothing published yet.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = memory(node.pid())?;

    let p1_p256 = p1(
        &mut kubelets,
        namespace,
        &[("csi.cert-manager.io/key-algorithm", "ECDSA")],
        sizes.p1_p256,
        "p256",
        sizes.p1_pace_ms,
    )
    .await?;
    let p1_rsa2048 = p1(
        &mut kubelets,
        namespace,
        &[
            ("csi.cert-manager.io/key-algorithm", "RSA"),
            ("csi.cert-manager.io/key-size", "2048"),
        ],
        sizes.p1_rsa,
        "rsa",
        sizes.p1_pace_ms,
    )
    .await?;

    // P2: a burst of pods, all at once (as many as there are connections).
    let attrs = env::attributes(&[("csi.cert-manager.io/key-algorithm", "ECDSA")]);
    let volumes = kubelets
        .pods_with_volume(namespace, "burst", 0..sizes.burst, &attrs)
        .await?;
    let before: BTreeSet<String> = cluster
        .request_names(namespace)
        .await?
        .into_iter()
        .collect();
    let started = Instant::now();
    let outcomes = kubelets.publish_all(&volumes).await;
    let seconds = started.elapsed().as_secs_f64();
    let (failures, first_failure) = env::failures(&outcomes);
    let after: BTreeSet<String> = cluster
        .request_names(namespace)
        .await?
        .into_iter()
        .collect();
    let burst = Burst {
        volumes: volumes.len(),
        seconds,
        failures,
        first_failure,
        requests: after.difference(&before).count(),
    };

    // Steady state: every volume published, 90-day certificates, nothing
    // due. Memory, then the API server's count of requests by verb.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let with_volumes = memory(node.pid())?;
    let first = env::requests_by_verb(&env::apiserver_metrics(&cluster.client).await?);
    let cpu_before = procfs::cpu_seconds(node.pid())?;
    let window = Duration::from_secs(sizes.load_window_s);
    tokio::time::sleep(window).await;
    let cpu_after = procfs::cpu_seconds(node.pid())?;
    let idle_cpu_percent = 100.0 * (cpu_after - cpu_before) / window.as_secs_f64();
    let second = env::requests_by_verb(&env::apiserver_metrics(&cluster.client).await?);
    let load_per_s = second
        .iter()
        .map(|(verb, n)| {
            let rate = (n - first.get(verb).copied().unwrap_or(0.0)) / window.as_secs_f64();
            (verb.clone(), rate)
        })
        .collect();

    // P5: SIGKILL, restart, and what it asks the API server for.
    let before: BTreeSet<String> = cluster
        .request_names(namespace)
        .await?
        .into_iter()
        .collect();
    let ready = node.restart_with(None).await?;
    tokio::time::sleep(Duration::from_secs(sizes.restart_window_s)).await;
    let after: BTreeSet<String> = cluster
        .request_names(namespace)
        .await?
        .into_iter()
        .collect();
    let restart = Restart {
        ready_s: ready.as_secs_f64(),
        new_requests: after.difference(&before).count(),
        window_s: sizes.restart_window_s,
    };

    // Unpublish through the restarted plugin with fresh connections.
    let mut kubelets = Kubelets::connect(cluster, &node, &root, sizes.connections).await?;
    let (failed, first) = env::failures(&kubelets.unpublish_all(&volumes).await);
    if failed > 0 {
        eprintln!(
            "cert-csi-bench: --peer: {}: {failed} unpublishes failed after the restart: {first:?}",
            contender.label
        );
    }
    drop(node);
    Ok(DriverResult {
        driver: contender.label.to_string(),
        flags: contender.flags.clone(),
        p1_p256,
        p1_rsa2048,
        burst,
        idle,
        with_volumes,
        load_per_s,
        idle_cpu_percent,
        restart,
    })
}

/// The side-by-side table: one column per plugin, and csi-driver's value
/// divided by cert-csi's (defaults) where lower is better.
pub fn text(r: &PeerResults) -> String {
    let mut out = String::new();
    let names: Vec<&str> = r.drivers.iter().map(|d| d.driver.as_str()).collect();
    out.push_str(&format!(
        "side by side on one real control plane, {} ({} cores), {}\n",
        r.machine.cpu, r.machine.cores, r.date
    ));
    out.push_str(&format!(
        "| measure | {} | csi-driver ÷ cert-csi |\n",
        names.join(" | ")
    ));
    out.push_str(&format!("|---|{}---|\n", "---|".repeat(names.len())));
    let row = |out: &mut String, what: &str, f: &dyn Fn(&DriverResult) -> f64, unit: &str| {
        let values: Vec<f64> = r.drivers.iter().map(f).collect();
        let cells: Vec<String> = values.iter().map(|v| format!("{v:.2}{unit}")).collect();
        let ratio = match (values.first(), values.last()) {
            (Some(a), Some(b)) if *a > 0.0 => format!("{:.1}×", b / a),
            _ => "—".into(),
        };
        out.push_str(&format!("| {what} | {} | {ratio} |\n", cells.join(" | ")));
    };
    row(&mut out, "P1 P-256 p50", &|d| d.p1_p256.p50_ms, " ms");
    row(&mut out, "P1 P-256 p99", &|d| d.p1_p256.p99_ms, " ms");
    row(&mut out, "P1 RSA-2048 p50", &|d| d.p1_rsa2048.p50_ms, " ms");
    let burst = r.drivers.first().map_or(0, |d| d.burst.volumes);
    row(
        &mut out,
        &format!("P2 {burst} pods at once"),
        &|d| d.burst.seconds,
        " s",
    );
    row(
        &mut out,
        "P2 requests made",
        &|d| d.burst.requests as f64,
        "",
    );
    row(&mut out, "P3 RSS idle", &|d| d.idle.rss_mib, " MiB");
    row(
        &mut out,
        &format!("P3 RSS with {burst} volumes"),
        &|d| d.with_volumes.rss_mib,
        " MiB",
    );
    row(
        &mut out,
        "  of it anonymous",
        &|d| d.with_volumes.anon_mib,
        " MiB",
    );
    let verbs: BTreeSet<&String> = r.drivers.iter().flat_map(|d| d.load_per_s.keys()).collect();
    for verb in verbs {
        row(
            &mut out,
            &format!("API {verb} per s, steady"),
            &|d| d.load_per_s.get(verb).copied().unwrap_or(0.0),
            "",
        );
    }
    row(
        &mut out,
        &format!("P4 CPU with {burst} volumes, steady"),
        &|d| d.idle_cpu_percent,
        " % of a core",
    );
    row(
        &mut out,
        "P5 ready after SIGKILL",
        &|d| d.restart.ready_s,
        " s",
    );
    row(
        &mut out,
        "P5 requests after restart",
        &|d| d.restart.new_requests as f64,
        "",
    );
    for d in &r.drivers {
        if d.burst.failures > 0 {
            out.push_str(&format!(
                "{}: {} of the burst's publishes failed, first: {}\n",
                d.driver,
                d.burst.failures,
                d.burst.first_failure.as_deref().unwrap_or("?")
            ));
        }
    }
    out
}
