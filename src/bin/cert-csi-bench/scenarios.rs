//! P1–P6: the node plugin driven through its socket, against the sandbox and
//! the in-process controller.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cert_csi::pki::{
    CsrOptions, Curve, KeyAlgorithm, PrivateKey, SanSpec, SignParams, SubjectSpec,
};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::{Api, ObjectMeta, PostParams, WatchEvent, WatchParams};
use serde::Serialize;

use crate::env::{Cluster, Kubelets, NodeProcess, attributes, failures};
use crate::procfs;
use crate::stats::{self, Summary};

/// Sizes of one run: full, or `--quick`.
#[derive(Debug, Clone, Serialize)]
pub struct Sizes {
    pub quick: bool,
    pub p1_samples: usize,
    pub p1_rsa_samples: usize,
    /// The gap before each RSA publish (see `p1`).
    pub rsa_pacing: Duration,
    pub floor_samples: usize,
    pub burst: usize,
    pub mid_volumes: usize,
    pub max_volumes: usize,
    pub idle_cpu_seconds: u64,
    pub renewal_volumes: usize,
    pub renewal_duration_seconds: u64,
    pub renewal_rate: f64,
    pub p7_certificates: usize,
    pub p7_secrets: usize,
}

impl Sizes {
    pub fn full() -> Sizes {
        Sizes {
            quick: false,
            p1_samples: 200,
            p1_rsa_samples: 50,
            rsa_pacing: Duration::from_secs(1),
            floor_samples: 100,
            burst: 1000,
            mid_volumes: 1000,
            max_volumes: 10_000,
            idle_cpu_seconds: 60,
            renewal_volumes: 1000,
            renewal_duration_seconds: 120,
            renewal_rate: 50.0,
            p7_certificates: 10_000,
            p7_secrets: 100_000,
        }
    }

    pub fn quick() -> Sizes {
        Sizes {
            quick: true,
            p1_samples: 20,
            p1_rsa_samples: 5,
            rsa_pacing: Duration::from_millis(250),
            floor_samples: 10,
            burst: 50,
            mid_volumes: 50,
            max_volumes: 200,
            idle_cpu_seconds: 3,
            renewal_volumes: 50,
            renewal_duration_seconds: 16,
            renewal_rate: 25.0,
            p7_certificates: 100,
            p7_secrets: 2000,
        }
    }
}

/// Flags that lift the node's issuance limits (default 10/s and 32 in
/// flight) so a benchmark measures the plugin, not the limiter.
pub fn unlimited() -> Vec<String> {
    [
        "--max-request-rate",
        "100000",
        "--max-inflight-requests",
        "5000",
    ]
    .map(String::from)
    .to_vec()
}

pub struct Ctx<'a> {
    pub exe: &'a Path,
    pub dir: &'a Path,
    pub cluster: &'a Cluster,
    pub sizes: &'a Sizes,
}

impl Ctx<'_> {
    async fn node(&self, name: &str, args: &[String]) -> anyhow::Result<NodeProcess> {
        NodeProcess::start(self.exe, self.dir, name, &self.cluster.kubeconfig, args).await
    }

    fn kubelet_root(&self, name: &str) -> PathBuf {
        self.dir.join(name).join("kubelet")
    }
}

// ---------------------------------------------------------------------------
// P1
// ---------------------------------------------------------------------------

/// The physical floor of one publish, each part the median of its samples.
#[derive(Debug, Clone, Serialize)]
pub struct Floor {
    pub keygen_ms: f64,
    pub csr_ms: f64,
    pub sign_ms: f64,
    pub api_create_watch_ms: f64,
    pub mount_unmount_ms: f64,
    pub total_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct P1Algorithm {
    pub algorithm: &'static str,
    pub publish: Summary,
    /// CPU per publish and unpublish pair, in milliseconds, of the node
    /// plugin and of this process (sandbox API server, controller and the
    /// simulated kubelet): where a publish's time is spent, not waited.
    pub cpu: CpuPerPublish,
    pub floor: Floor,
    /// p50 publish latency ÷ floor total.
    pub ratio: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct P1 {
    pub node_flags: Vec<String>,
    pub algorithms: Vec<P1Algorithm>,
}

/// Mean CPU milliseconds per timed publish (with its unpublish).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CpuPerPublish {
    pub node_ms: f64,
    pub bench_ms: f64,
}

pub const ALGORITHMS: [(&str, KeyAlgorithm, &str, &str); 4] = [
    ("P-256", KeyAlgorithm::Ecdsa(Curve::P256), "ECDSA", "256"),
    ("P-384", KeyAlgorithm::Ecdsa(Curve::P384), "ECDSA", "384"),
    ("Ed25519", KeyAlgorithm::Ed25519, "Ed25519", ""),
    ("RSA-2048", KeyAlgorithm::Rsa { bits: 2048 }, "RSA", "2048"),
];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    stats::percentile(&v, 50.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn time_each(n: usize, mut f: impl FnMut(usize) -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        f(i)?;
        samples.push(ms(t.elapsed()));
    }
    Ok(median(samples))
}

fn sans() -> SanSpec {
    SanSpec {
        dns_names: vec!["app-0.p1.svc.cluster.local".into()],
        ..Default::default()
    }
}

/// Key generation, CSR and CA signature for one algorithm, in this process
/// (the same release build as the plugin and controller).
fn crypto_floor(
    algorithm: KeyAlgorithm,
    n: usize,
    ca_pem: &str,
    ca_key: &PrivateKey,
) -> anyhow::Result<(f64, f64, f64)> {
    let keygen = time_each(n, |_| {
        PrivateKey::generate(algorithm)
            .map(drop)
            .map_err(Into::into)
    })?;
    let key = PrivateKey::generate(algorithm)?;
    let subject = SubjectSpec::default();
    let csr_ms = time_each(n, |_| {
        cert_csi::pki::build_csr(&key, &subject, &sans(), &CsrOptions::default())
            .map(drop)
            .map_err(Into::into)
    })?;
    let csr = cert_csi::pki::build_csr(&key, &subject, &sans(), &CsrOptions::default())?;
    let sign = time_each(n, |_| {
        cert_csi::pki::sign_with_ca(
            csr.pem.as_bytes(),
            ca_pem.as_bytes(),
            ca_key,
            &SignParams::default(),
        )
        .map(drop)
        .map_err(Into::into)
    })?;
    Ok((keygen, csr_ms, sign))
}

/// One create and its ADDED event on an open watch. The object is a
/// ConfigMap holding a CSR, as large as a CertificateRequest but not acted
/// on by the controller, so nothing else competes for the CPU.
async fn api_floor(cluster: &Cluster, n: usize) -> anyhow::Result<f64> {
    crate::controller::create_namespace(&cluster.client, "floor").await?;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), "floor");
    let rv = api
        .list_metadata(&Default::default())
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let mut events = api.watch(&WatchParams::default(), &rv).await?.boxed();
    let key = PrivateKey::generate(KeyAlgorithm::Ecdsa(Curve::P256))?;
    let csr = cert_csi::pki::build_csr(
        &key,
        &SubjectSpec::default(),
        &sans(),
        &CsrOptions::default(),
    )?;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("floor-{i}");
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            data: Some(BTreeMap::from([("request".into(), csr.pem.clone())])),
            ..Default::default()
        };
        let t = Instant::now();
        api.create(&PostParams::default(), &cm).await?;
        loop {
            match tokio::time::timeout(Duration::from_secs(10), events.next()).await {
                Ok(Some(Ok(WatchEvent::Added(o)))) if o.name_any() == name => break,
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => anyhow::bail!("floor watch failed: {e}"),
                Ok(None) | Err(_) => anyhow::bail!("no ADDED event for {name} within 10 s"),
            }
        }
        samples.push(ms(t.elapsed()));
    }
    Ok(median(samples))
}

/// A volume's tmpfs mounted, its files written atomically, bind-mounted
/// read-only at a target, then both unmounted: the store's own calls.
fn mount_floor(dir: &Path, n: usize) -> anyhow::Result<f64> {
    let store = cert_csi::store::Store::open(dir.join("floor-store"))?;
    let targets = dir.join("floor-targets");
    std::fs::create_dir_all(&targets)?;
    let files = [
        ("tls.crt", vec![b'c'; 1200], cert_csi::store::FILE_MODE),
        ("tls.key", vec![b'k'; 250], cert_csi::store::FILE_MODE),
        ("ca.crt", vec![b'a'; 600], cert_csi::store::FILE_MODE),
    ];
    time_each(n, |i| {
        let id = format!("csi-floor-{i:05}");
        let target = targets.join(&id);
        let volume = store.prepare(&id)?;
        volume.publish(&files, None)?;
        volume.mount_at(&target)?;
        store.remove(&id, &target)?;
        Ok(())
    })
}

pub async fn p1(ctx: &Ctx<'_>) -> anyhow::Result<P1> {
    let flags = unlimited();
    let mut node = ctx.node("p1", &flags).await?;
    let mut kubelets = Kubelets::connect(ctx.cluster, &node, &ctx.kubelet_root("p1"), 1).await?;
    let (ca_pem, ca_key) = local_ca()?;
    let api_ms = api_floor(ctx.cluster, ctx.sizes.floor_samples).await?;
    let mount_ms = mount_floor(ctx.dir, ctx.sizes.floor_samples)?;
    let mut out = Vec::new();
    let mut rsa_floor = None;
    for (i, (label, algorithm, name, size)) in ALGORITHMS.iter().enumerate() {
        let rsa = matches!(algorithm, KeyAlgorithm::Rsa { .. });
        let extra = [
            ("csi.cert-manager.io/key-algorithm", *name),
            ("csi.cert-manager.io/key-size", *size),
        ];
        let samples = if rsa {
            ctx.sizes.p1_rsa_samples
        } else {
            ctx.sizes.p1_samples
        };
        // RSA publishes are paced (`Sizes::rsa_pacing`), as pods arriving
        // one a second would be: the node's RSA key pool refills in the
        // gap, so each publish measures a pod that finds a key ready. Back
        // to back, a burst longer than the pool makes its own keys.
        let pacing = rsa.then_some(ctx.sizes.rsa_pacing);
        let (publish, cpu) = timed_publishes(
            &mut kubelets,
            node.pid(),
            &format!("a{i}"),
            &extra,
            samples,
            pacing,
        )
        .await
        .map_err(|e| anyhow::anyhow!("P1 {label}: {e}"))?;
        let n = ctx.sizes.floor_samples.min(samples.max(5));
        let (keygen, csr, sign) = crypto_floor(*algorithm, n, &ca_pem, &ca_key)?;
        let total = keygen + csr + sign + api_ms + mount_ms;
        let floor = Floor {
            keygen_ms: keygen,
            csr_ms: csr,
            sign_ms: sign,
            api_create_watch_ms: api_ms,
            mount_unmount_ms: mount_ms,
            total_ms: total,
        };
        if rsa {
            rsa_floor = Some(floor.clone());
        }
        out.push(P1Algorithm {
            algorithm: label,
            ratio: publish.p50_ms / total,
            publish,
            cpu,
            floor,
        });
    }
    node.kill();
    if let Some(floor) = rsa_floor {
        let samples = ctx.sizes.p1_rsa_samples;
        // The same RSA publishes on a node without the key pool: each
        // makes its key while the pod waits.
        let (publish, cpu) = rsa_on_own_node(
            ctx,
            &flags,
            "p1-no-pool",
            0,
            false,
            Some(ctx.sizes.rsa_pacing),
        )
        .await
        .map_err(|e| anyhow::anyhow!("P1 RSA-2048 without the key pool: {e}"))?;
        out.push(P1Algorithm {
            algorithm: "RSA-2048, --rsa-key-pool-size 0",
            ratio: publish.p50_ms / floor.total_ms,
            publish,
            cpu,
            floor: floor.clone(),
        });
        // And back to back, as the other algorithms run, on a node whose
        // pool holds a key for every publish: what the pool costs a pod.
        let (publish, cpu) = rsa_on_own_node(ctx, &flags, "p1-big-pool", samples + 3, true, None)
            .await
            .map_err(|e| anyhow::anyhow!("P1 RSA-2048 back to back: {e}"))?;
        out.push(P1Algorithm {
            algorithm: "RSA-2048, pool of n+3, back to back",
            ratio: publish.p50_ms / floor.total_ms,
            publish,
            cpu,
            floor,
        });
    }
    Ok(P1 {
        node_flags: flags,
        algorithms: out,
    })
}

/// RSA-2048 publishes on a node of its own named `name`, started with
/// `flags` and `--rsa-key-pool-size pool`. With `fill`, two unmeasured
/// publishes start the pool first, and the measurement waits until its
/// thread stops using CPU, which it does once every key is made.
async fn rsa_on_own_node(
    ctx: &Ctx<'_>,
    flags: &[String],
    name: &str,
    pool: usize,
    fill: bool,
    pacing: Option<Duration>,
) -> anyhow::Result<(Summary, CpuPerPublish)> {
    let mut args = flags.to_vec();
    args.extend(["--rsa-key-pool-size".to_string(), pool.to_string()]);
    let mut node = ctx.node(name, &args).await?;
    let mut kubelets = Kubelets::connect(ctx.cluster, &node, &ctx.kubelet_root(name), 1).await?;
    let extra = [
        ("csi.cert-manager.io/key-algorithm", "RSA"),
        ("csi.cert-manager.io/key-size", "2048"),
    ];
    if fill {
        timed_publishes(&mut kubelets, node.pid(), "fill", &extra, 0, None).await?;
        wait_until_thread_idle(node.pid(), "rsa-key-pool").await?;
    }
    let publish = timed_publishes(
        &mut kubelets,
        node.pid(),
        name,
        &extra,
        ctx.sizes.p1_rsa_samples,
        pacing,
    )
    .await;
    node.kill();
    publish
}

/// Waits until the threads named `name` of `pid` have used no CPU for a
/// second (at most two minutes).
async fn wait_until_thread_idle(pid: u32, name: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = None;
    let mut still_since = Instant::now();
    loop {
        let now = procfs::thread_cpu_seconds(pid, name);
        if now.is_some() && now == last {
            if still_since.elapsed() >= Duration::from_secs(1) {
                return Ok(());
            }
        } else {
            still_since = Instant::now();
            last = now;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "thread {name} of process {pid} kept working (or never started) for two minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `samples` publishes, one at a time, each of a new pod's volume and
/// unpublished at once (not timed) so the mount count stays flat; two
/// more before them, unmeasured, warm connections, caches and the watch.
async fn timed_publishes(
    kubelets: &mut Kubelets,
    node_pid: u32,
    prefix: &str,
    extra: &[(&str, &str)],
    samples: usize,
    pacing: Option<Duration>,
) -> anyhow::Result<(Summary, CpuPerPublish)> {
    let attrs = attributes(extra);
    let volumes = kubelets
        .pods_with_volume("p1", prefix, 0..samples + 2, &attrs)
        .await?;
    let kubelet = &mut kubelets.pool[0];
    let mut latencies = Vec::with_capacity(samples);
    let (mut node_ns, mut bench_ns) = (0u64, 0u64);
    for (j, v) in volumes.iter().enumerate() {
        if let Some(gap) = pacing {
            tokio::time::sleep(gap).await;
        }
        // The first two publishes warm up and are not measured.
        let measured = j >= 2;
        let cpu_before = if measured {
            (
                procfs::cpu_nanos(node_pid)?,
                procfs::cpu_nanos(std::process::id())?,
            )
        } else {
            (0, 0)
        };
        let t = Instant::now();
        kubelet
            .publish(v)
            .await
            .map_err(|s| anyhow::anyhow!("publish: {}", s.message()))?;
        if measured {
            latencies.push(ms(t.elapsed()));
        }
        kubelet
            .unpublish(v)
            .await
            .map_err(|s| anyhow::anyhow!("unpublish: {}", s.message()))?;
        if measured {
            node_ns += procfs::cpu_nanos(node_pid)?.saturating_sub(cpu_before.0);
            bench_ns += procfs::cpu_nanos(std::process::id())?.saturating_sub(cpu_before.1);
        }
    }
    let per = |ns: u64| ns as f64 / 1e6 / samples.max(1) as f64;
    Ok((
        Summary::of(&latencies),
        CpuPerPublish {
            node_ms: per(node_ns),
            bench_ms: per(bench_ns),
        },
    ))
}

fn local_ca() -> anyhow::Result<(String, PrivateKey)> {
    let key = PrivateKey::generate(KeyAlgorithm::Ecdsa(Curve::P256))?;
    let csr = cert_csi::pki::build_csr(
        &key,
        &SubjectSpec {
            common_name: Some("floor CA".into()),
            ..Default::default()
        },
        &SanSpec::default(),
        &CsrOptions::default(),
    )?;
    let ca = cert_csi::pki::sign_self_signed(
        csr.pem.as_bytes(),
        &key,
        &SignParams {
            is_ca: true,
            ..Default::default()
        },
    )?;
    Ok((ca.certificate_pem, key))
}

// ---------------------------------------------------------------------------
// P2
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize)]
pub struct P2 {
    pub pods: usize,
    pub node_flags: Vec<String>,
    pub wall_seconds: f64,
    pub requests_created: usize,
    pub errors: usize,
    pub first_error: Option<String>,
    pub latency: Summary,
}

pub async fn p2(ctx: &Ctx<'_>) -> anyhow::Result<P2> {
    let flags = unlimited();
    let node = ctx.node("p2", &flags).await?;
    let n = ctx.sizes.burst;
    let mut kubelets = Kubelets::connect(ctx.cluster, &node, &ctx.kubelet_root("p2"), n).await?;
    let attrs = attributes(&[("csi.cert-manager.io/key-algorithm", "ECDSA")]);
    let volumes = kubelets
        .pods_with_volume("p2", "burst", 0..n, &attrs)
        .await?;
    let before = ctx.cluster.request_names("p2").await?.len();
    let started = Instant::now();
    let outcomes = kubelets.publish_all(&volumes).await;
    let wall = started.elapsed();
    let (errors, first_error) = failures(&outcomes);
    let created = ctx.cluster.request_names("p2").await?.len() - before;
    let latencies: Vec<f64> = outcomes.iter().map(|(_, d)| ms(*d)).collect();
    let mut kubelets = Kubelets {
        pool: kubelets.pool.into_iter().take(64).collect(),
    };
    let (unpublish_errors, first) = failures(&kubelets.unpublish_all(&volumes).await);
    if unpublish_errors > 0 {
        anyhow::bail!("P2: {unpublish_errors} unpublishes failed, first: {first:?}");
    }
    drop(node);
    Ok(P2 {
        pods: n,
        node_flags: flags,
        wall_seconds: wall.as_secs_f64(),
        requests_created: created,
        errors,
        first_error,
        latency: Summary::of(&latencies),
    })
}

// ---------------------------------------------------------------------------
// P3, P4, P5
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize)]
pub struct MemoryAt {
    pub volumes: usize,
    pub rss_mib: f64,
    /// Of `rss_mib`: anonymous memory (heap, stacks), the part that grows
    /// with volumes.
    pub anon_mib: f64,
    /// Of `rss_mib`: pages of the mapped binary and libraries, shared and
    /// clean (the kernel can drop them and read them again).
    pub file_mib: f64,
}

/// Resident memory of `pid` now, split as /proc/PID/status reports it.
fn resident(pid: u32, volumes: usize) -> anyhow::Result<MemoryAt> {
    let mib =
        |field| -> anyhow::Result<f64> { Ok(procfs::status_kib(pid, field)? as f64 / 1024.0) };
    Ok(MemoryAt {
        volumes,
        rss_mib: mib("VmRSS:")?,
        anon_mib: mib("RssAnon:")?,
        file_mib: mib("RssFile:")?,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct P3 {
    pub idle: MemoryAt,
    pub mid: MemoryAt,
    pub max: MemoryAt,
    /// Resident memory added per volume between idle and the largest count.
    pub per_volume_kib: f64,
    /// Why the largest count is what it is.
    pub max_volumes_note: String,
    pub publish_seconds_to_max: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct P4 {
    pub volumes: usize,
    pub seconds: f64,
    pub cpu_seconds: f64,
    pub percent_of_core: f64,
    /// On the real control plane (`--real`): the API server's own count of
    /// requests per second by verb (cert-manager.io and Events) over the
    /// same window; the sandbox does not count.
    pub api_requests_per_s: Option<BTreeMap<String, f64>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct P5 {
    pub volumes: usize,
    pub ready_seconds: f64,
    pub requests_created: usize,
    pub rss_after_mib: f64,
}

/// The most volumes this mount namespace can take: two mounts each, under
/// `fs.mount-max` minus the mounts that exist and a margin for the rest of
/// the system.
pub fn volume_capacity(mount_max: usize, mounts_now: usize) -> usize {
    mount_max.saturating_sub(mounts_now + 1000) / 2
}

fn max_volumes(requested: usize) -> (usize, String) {
    let mount_max: usize = std::fs::read_to_string("/proc/sys/fs/mount-max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100_000);
    let now = cert_csi::store::read_mountinfo()
        .map(|m| m.len())
        .unwrap_or(0);
    let capacity = volume_capacity(mount_max, now);
    if requested <= capacity {
        (
            requested,
            format!(
                "{requested} volumes as asked ({} mounts; the kernel allows {mount_max} per mount namespace, {now} in use)",
                requested * 2
            ),
        )
    } else {
        (
            capacity,
            format!(
                "{capacity} volumes, the most fs.mount-max = {mount_max} allows here (2 mounts each, {now} in use)"
            ),
        )
    }
}

async fn settle_rss(pid: u32, volumes: usize) -> anyhow::Result<MemoryAt> {
    // Let freed buffers return and background tasks finish before reading.
    tokio::time::sleep(Duration::from_secs(2)).await;
    resident(pid, volumes)
}

pub async fn p3_p4_p5(ctx: &Ctx<'_>) -> anyhow::Result<(P3, P4, P5)> {
    let (max, note) = max_volumes(ctx.sizes.max_volumes);
    let mid = ctx.sizes.mid_volumes.min(max);
    let mut node = ctx.node("scale", &unlimited()).await?;
    let root = ctx.kubelet_root("scale");
    let attrs = attributes(&[("csi.cert-manager.io/key-algorithm", "ECDSA")]);
    let idle = settle_rss(node.pid(), 0).await?;

    let mut publishing = Duration::ZERO;
    let mut volumes = Vec::with_capacity(max);
    let mut rss_mid = idle.clone();
    for (from, to) in [(0, mid), (mid, max)] {
        if from == to {
            continue;
        }
        // The kubelet dials the plugin's socket for each call and closes
        // the connection after it (pkg/volume/csi/csi_client.go), so memory
        // is read with the burst's 64 connections closed, as on a node.
        let mut kubelets = Kubelets::connect(ctx.cluster, &node, &root, 64).await?;
        let batch = kubelets
            .pods_with_volume("scale", "s", from..to, &attrs)
            .await?;
        let t = Instant::now();
        let outcomes = kubelets.publish_all(&batch).await;
        publishing += t.elapsed();
        let (errors, first) = failures(&outcomes);
        if errors > 0 {
            anyhow::bail!(
                "P3: {errors} of {} publishes failed, first: {first:?}",
                batch.len()
            );
        }
        volumes.extend(batch);
        drop(kubelets);
        if to == mid {
            rss_mid = settle_rss(node.pid(), mid).await?;
        }
    }
    let publish_seconds = publishing.as_secs_f64();
    let rss_max = if mid == max {
        rss_mid.clone()
    } else {
        settle_rss(node.pid(), max).await?
    };

    let pid = node.pid();
    let api0 = ctx.cluster.api_requests_by_verb().await?;
    let cpu0 = procfs::cpu_seconds(pid)?;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(ctx.sizes.idle_cpu_seconds)).await;
    let cpu = procfs::cpu_seconds(pid)? - cpu0;
    let seconds = t0.elapsed().as_secs_f64();
    let api1 = ctx.cluster.api_requests_by_verb().await?;
    let api_requests_per_s = api0.zip(api1).map(|(before, after)| {
        after
            .iter()
            .map(|(verb, n)| {
                let rate = (n - before.get(verb).copied().unwrap_or(0.0)) / seconds;
                (verb.clone(), rate)
            })
            .collect()
    });

    let before: HashSet<String> = ctx
        .cluster
        .request_names("scale")
        .await?
        .into_iter()
        .collect();
    let ready = node.restart_with(None).await?;
    // Anything the recovery would request shows up well within this.
    tokio::time::sleep(Duration::from_secs(if ctx.sizes.quick { 1 } else { 3 })).await;
    let after = ctx.cluster.request_names("scale").await?;
    let created = after.iter().filter(|n| !before.contains(*n)).count();
    let rss_after = settle_rss(node.pid(), max).await?.rss_mib;

    let mut kubelets = Kubelets::connect(ctx.cluster, &node, &root, 64).await?;
    let (errors, first) = failures(&kubelets.unpublish_all(&volumes).await);
    if errors > 0 {
        anyhow::bail!("P3: {errors} unpublishes failed, first: {first:?}");
    }
    node.kill();
    Ok((
        P3 {
            per_volume_kib: (rss_max.rss_mib - idle.rss_mib) * 1024.0 / max.max(1) as f64,
            idle,
            mid: rss_mid,
            max: rss_max,
            max_volumes_note: note,
            publish_seconds_to_max: publish_seconds,
        },
        P4 {
            volumes: max,
            seconds,
            cpu_seconds: cpu,
            percent_of_core: cpu / seconds * 100.0,
            api_requests_per_s,
        },
        P5 {
            volumes: max,
            ready_seconds: ready.as_secs_f64(),
            requests_created: created,
            rss_after_mib: rss_after,
        },
    ))
}

// ---------------------------------------------------------------------------
// P6
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize)]
pub struct P6 {
    pub volumes: usize,
    pub duration_seconds: u64,
    pub renew_before_seconds: u64,
    pub jitter: f64,
    pub rate_limit_per_second: f64,
    pub node_flags: Vec<String>,
    /// From the first publish to the last publish answered.
    pub issuance_seconds: f64,
    pub renewals: usize,
    /// Renewals per one-second bin, from the first publish.
    pub per_second: Vec<u32>,
    pub max_per_second: u32,
    /// The most renewals in any sliding one-second window (as seen on the
    /// watch, so delivery bunching can add to it).
    pub max_in_any_second: usize,
    /// Where renewals may fall: from the first issuance + (1 − jitter) ×
    /// renew-before ... to the last issuance + renew-before, in seconds
    /// from the first publish.
    pub window: (f64, f64),
    /// Share of the window's one-second bins holding a renewal.
    pub coverage: f64,
}

pub async fn p6(ctx: &Ctx<'_>) -> anyhow::Result<P6> {
    let d = ctx.sizes.renewal_duration_seconds;
    // A third, with half of it as jitter: the window then runs from half
    // the lifetime (the earliest jitter may reach) to two thirds.
    let rb = d / 3;
    let jitter = 0.5;
    let rate = ctx.sizes.renewal_rate;
    let n = ctx.sizes.renewal_volumes;
    // The lifetimes here are seconds; the guard's one-minute minimum
    // interval would hold every renewal back.
    let jitter_flag = [
        "--renewal-jitter".to_string(),
        jitter.to_string(),
        "--min-renewal-interval".to_string(),
        "1s".to_string(),
    ];
    let burst_flags: Vec<String> = unlimited().into_iter().chain(jitter_flag.clone()).collect();
    let limited: Vec<String> = [
        "--max-request-rate".to_string(),
        rate.to_string(),
        "--max-inflight-requests".into(),
        "5000".into(),
    ]
    .into_iter()
    .chain(jitter_flag)
    .collect();
    let mut node = ctx.node("p6", &burst_flags).await?;
    let root = ctx.kubelet_root("p6");
    let mut kubelets = Kubelets::connect(ctx.cluster, &node, &root, 64).await?;
    let (duration, renew_before) = (format!("{d}s"), format!("{rb}s"));
    let attrs = attributes(&[
        ("csi.cert-manager.io/key-algorithm", "ECDSA"),
        ("csi.cert-manager.io/duration", &duration),
        ("csi.cert-manager.io/renew-before", &renew_before),
    ]);
    let volumes = kubelets.pods_with_volume("p6", "r", 0..n, &attrs).await?;

    // Every request created from here on is seen on this watch.
    let api: Api<cert_csi::api::CertificateRequest> =
        Api::namespaced(ctx.cluster.client.clone(), "p6");
    let rv = api
        .list_metadata(&Default::default())
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let mut events = api
        .watch(&WatchParams::default().timeout(290), &rv)
        .await?
        .boxed();
    let started = Instant::now();
    let (errors, first) = failures(&kubelets.publish_all(&volumes).await);
    let issuance = started.elapsed();
    if errors > 0 {
        anyhow::bail!("P6: {errors} of {n} publishes failed, first: {first:?}");
    }
    let initial: HashSet<String> = ctx.cluster.request_names("p6").await?.into_iter().collect();
    // The rate limit applies from here, to renewals only: the pods above
    // were issued at once, as the measure asks.
    node.restart_with(Some(&limited)).await?;

    let mut times = Vec::with_capacity(n);
    let mut seen = HashSet::new();
    let deadline = started + issuance + Duration::from_secs(rb + 30);
    while times.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.next()).await {
            Ok(Some(Ok(WatchEvent::Added(cr)))) => {
                let name = cr.name_any();
                if !initial.contains(&name) && seen.insert(name) {
                    times.push(started.elapsed().as_secs_f64());
                }
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => anyhow::bail!("P6: request watch failed: {e}"),
            Ok(None) => anyhow::bail!("P6: the request watch ended early"),
            Err(_) => break,
        }
    }
    let per_second = stats::per_second(&times);
    let window = (
        (d - rb) as f64 - jitter * rb as f64,
        issuance.as_secs_f64() + (d - rb) as f64,
    );
    let coverage = stats::coverage(&per_second, window.0, window.1);
    let mut kubelets = Kubelets::connect(ctx.cluster, &node, &root, 64).await?;
    let (errors, first) = failures(&kubelets.unpublish_all(&volumes).await);
    if errors > 0 {
        anyhow::bail!("P6: {errors} unpublishes failed, first: {first:?}");
    }
    node.kill();
    Ok(P6 {
        volumes: n,
        duration_seconds: d,
        renew_before_seconds: rb,
        jitter,
        rate_limit_per_second: rate,
        node_flags: limited,
        issuance_seconds: issuance.as_secs_f64(),
        renewals: times.len(),
        max_per_second: per_second.iter().copied().max().unwrap_or(0),
        max_in_any_second: stats::max_in_any_second(&times),
        per_second,
        window,
        coverage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_leaves_a_margin_and_counts_two_mounts_per_volume() {
        assert_eq!(volume_capacity(100_000, 20), 49_490);
        assert_eq!(volume_capacity(1000, 20), 0);
        assert_eq!(volume_capacity(3000, 0), 1000);
    }

    #[test]
    fn quick_is_smaller_than_full_everywhere() {
        let (q, f) = (Sizes::quick(), Sizes::full());
        assert!(q.burst < f.burst && q.max_volumes < f.max_volumes);
        assert!(q.idle_cpu_seconds < f.idle_cpu_seconds);
        assert!(q.renewal_volumes < f.renewal_volumes);
        assert!(q.p7_certificates < f.p7_certificates && q.p7_secrets < f.p7_secrets);
        assert_eq!(f.burst, 1000);
        assert_eq!(f.max_volumes, 10_000);
        assert!(f.renewal_volumes >= 1000);
    }
}
