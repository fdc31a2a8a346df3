//! P7: the certificates controller at scale. Shared by `hack/bench` (the
//! `cert-csi-bench` binary) and `cargo bench --bench controller`, which
//! includes this file with `#[path]`, so both measure the same way.
//!
//! 1. Time to issue N Certificates through a CA ClusterIssuer, with the
//!    whole controller in-process on the sandbox.
//! 2. Resident memory of `cert-csi controller` (a subprocess) while S
//!    unrelated Secrets exist: VmRSS and VmHWM from /proc/PID/status after
//!    its watches have synced.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use cert_csi::api::{
    CaIssuer, Certificate, CertificatePrivateKey, CertificateSpec, ClusterIssuer, IssuerRef,
    IssuerSpec,
};
use cert_csi::controller::{ControllerOptions, Health};
use cert_csi::pki::{KeyAlgorithm, KeyEncoding, PrivateKey, SignParams};
use cert_csi::shutdown::CancellationToken;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::ResourceExt;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::watcher;
use kube_sandbox::{Sandbox, SandboxConfig};

/// Namespace that ClusterIssuer Secrets are read from.
pub const CLUSTER_RESOURCE_NAMESPACE: &str = "cert-manager";
/// The CA ClusterIssuer every benchmark signs with.
pub const CA_ISSUER: &str = "bench-ca";

/// Starts a sandbox with the cert-manager CRDs and the namespaces given
/// (plus the cluster resource namespace). `watch_window` is large so slow
/// watchers never see 410 Gone while hundreds of thousands of writes pass.
pub async fn sandbox(
    kubeconfig: Option<std::path::PathBuf>,
    namespaces: &[&str],
) -> anyhow::Result<Sandbox> {
    let sandbox = Sandbox::start(SandboxConfig {
        listen: "127.0.0.1:0".parse()?,
        kubeconfig,
        crds: cert_csi::api::crds(),
        watch_window: 200_000,
    })
    .await?;
    for ns in std::iter::once(&CLUSTER_RESOURCE_NAMESPACE).chain(namespaces) {
        create_namespace(&sandbox.client(), ns).await?;
    }
    Ok(sandbox)
}

pub async fn create_namespace(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(anyhow::anyhow!("creating namespace {name}: {e}")),
    }
}

/// The bench CA's lifetime unless `--ca-duration` says otherwise: 90 days,
/// the same as the volumes ask for.
pub const DEFAULT_CA_DURATION: Duration = Duration::from_secs(90 * 24 * 3600);

/// A P-256 CA made with cert-csi's pki, stored as a Secret, and a CA
/// ClusterIssuer [`CA_ISSUER`] pointing at it.
pub async fn ca_issuer(client: &kube::Client, duration: Duration) -> anyhow::Result<()> {
    let key = PrivateKey::generate(KeyAlgorithm::Ecdsa(cert_csi::pki::Curve::P256))?;
    let csr = cert_csi::pki::build_csr(
        &key,
        &cert_csi::pki::SubjectSpec {
            common_name: Some("bench CA".into()),
            ..Default::default()
        },
        &Default::default(),
        &Default::default(),
    )?;
    let ca = cert_csi::pki::sign_self_signed(
        csr.pem.as_bytes(),
        &key,
        &SignParams {
            is_ca: true,
            duration: Some(duration),
            ..Default::default()
        },
    )?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(CA_ISSUER.into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            (
                "tls.crt".into(),
                ByteString(ca.certificate_pem.into_bytes()),
            ),
            (
                "tls.key".into(),
                ByteString(key.to_pem(KeyEncoding::Pkcs8)?.expose().to_vec()),
            ),
        ])),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), CLUSTER_RESOURCE_NAMESPACE)
        .create(&PostParams::default(), &secret)
        .await?;
    Api::<ClusterIssuer>::all(client.clone())
        .create(
            &PostParams::default(),
            &ClusterIssuer::new(
                CA_ISSUER,
                IssuerSpec {
                    ca: Some(CaIssuer {
                        secret_name: CA_ISSUER.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ),
        )
        .await?;
    Ok(())
}

/// Waits (on a watch) until the CA ClusterIssuer reports Ready.
pub async fn wait_issuer_ready(client: &kube::Client, limit: Duration) -> anyhow::Result<()> {
    let issuers: Api<ClusterIssuer> = Api::all(client.clone());
    let ready =
        kube::runtime::wait::await_condition(issuers, CA_ISSUER, |i: Option<&ClusterIssuer>| {
            i.is_some_and(|i| i.is_ready())
        });
    tokio::time::timeout(limit, ready)
        .await
        .map_err(|_| anyhow::anyhow!("ClusterIssuer {CA_ISSUER} not Ready within {limit:?}"))??;
    Ok(())
}

fn certificate(i: usize) -> Certificate {
    let spec = CertificateSpec {
        secret_name: format!("c{i}-tls"),
        issuer_ref: IssuerRef::cluster_issuer(CA_ISSUER),
        dns_names: Some(vec![format!("c{i}.bench.example")]),
        private_key: Some(CertificatePrivateKey {
            algorithm: Some("ECDSA".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    Certificate::new(&format!("c{i}"), spec)
}

/// What [`issue_many`] measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IssueResult {
    pub certificates: usize,
    /// From the first create to the last Certificate Ready (revision 1).
    pub seconds: f64,
    /// How long creating the Certificates alone took.
    pub create_seconds: f64,
}

/// Creates `n` Certificates (32 at a time) in namespace `bench` against a
/// fresh sandbox with the controller in-process, and times until all are
/// Ready at revision 1, seen on a watch (no polling).
pub async fn issue_many(n: usize, limit: Duration) -> anyhow::Result<IssueResult> {
    let sandbox = sandbox(None, &["bench"]).await?;
    let client = sandbox.client();
    ca_issuer(&client, DEFAULT_CA_DURATION).await?;
    let token = CancellationToken::new();
    let controller = tokio::spawn(cert_csi::controller::run(
        client.clone(),
        ControllerOptions::new(CLUSTER_RESOURCE_NAMESPACE),
        Health::default(),
        token.clone(),
    ));
    let _stop = token.clone().drop_guard();
    let api = Api::<Certificate>::namespaced(client.clone(), "bench");
    // The watch is open before the first create, so no transition is missed.
    let mut events = watcher::watcher(api.clone(), watcher::Config::default()).boxed();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let counter = tokio::spawn(async move {
        let mut ready = HashSet::new();
        while let Some(event) = events.try_next().await? {
            if let watcher::Event::Apply(c) | watcher::Event::InitApply(c) = event
                && c.is_ready()
                && c.status.as_ref().and_then(|s| s.revision) == Some(1)
            {
                ready.insert(c.name_any());
                if ready.len() == n {
                    let _ = ready_tx.send(Instant::now());
                    return Ok(());
                }
            }
        }
        anyhow::Ok(())
    });
    let start = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move { api.create(&PostParams::default(), &certificate(i)).await }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await?;
    let created = start.elapsed();
    let done = tokio::time::timeout(limit, ready_rx).await;
    counter.abort();
    let done = match done {
        Ok(Ok(at)) => at,
        _ => anyhow::bail!("{n} Certificates were not all Ready within {limit:?}"),
    };
    token.cancel();
    let _ = controller.await;
    sandbox.shutdown().await;
    Ok(IssueResult {
        certificates: n,
        seconds: (done - start).as_secs_f64(),
        create_seconds: created.as_secs_f64(),
    })
}

/// Kills a subprocess by pid when dropped.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What [`memory_with_secrets`] measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MemoryResult {
    pub secrets: usize,
    pub rss_mib: f64,
    /// Peak resident memory (VmHWM) of the controller process.
    pub peak_mib: f64,
    /// A managed Certificate became Ready this long after creation, proving
    /// the loops worked while the Secrets existed.
    pub probe_ready_seconds: f64,
}

/// Starts `cert-csi controller` (`exe`, a subprocess) against a sandbox
/// holding `count` unrelated Secrets of 1 KiB, lets its watches sync, and
/// reads its resident memory. `dir` receives the kubeconfig.
pub async fn memory_with_secrets(
    count: usize,
    exe: &Path,
    dir: &Path,
) -> anyhow::Result<MemoryResult> {
    let kubeconfig = dir.join("controller-kubeconfig");
    let sandbox = sandbox(Some(kubeconfig.clone()), &["bench"]).await?;
    let client = sandbox.client();
    let api = Api::<Secret>::namespaced(client.clone(), "bench");
    // ~1 KiB of data each, like a small TLS Secret someone else manages.
    let payload = vec![b'x'; 1024];
    futures::stream::iter(0..count)
        .map(|i| {
            let api = api.clone();
            let s = Secret {
                metadata: ObjectMeta {
                    name: Some(format!("unrelated-{i}")),
                    ..Default::default()
                },
                data: Some(BTreeMap::from([(
                    "blob".into(),
                    ByteString(payload.clone()),
                )])),
                ..Default::default()
            };
            async move { api.create(&PostParams::default(), &s).await }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await?;
    ca_issuer(&client, DEFAULT_CA_DURATION).await?;
    let child = KillOnDrop(
        std::process::Command::new(exe)
            .args(["--log-level", "warn", "controller", "--kubeconfig"])
            .arg(&kubeconfig)
            .args(["--metrics-address", "127.0.0.1:0"])
            .env_remove("KUBECONFIG")
            .stdin(std::process::Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {} controller: {e}", exe.display()))?,
    );
    let pid = child.0.id();
    let certs = Api::<Certificate>::namespaced(client.clone(), "bench");
    let t0 = Instant::now();
    certs
        .create(&PostParams::default(), &certificate(0))
        .await?;
    let ready = kube::runtime::wait::await_condition(certs, "c0", |c: Option<&Certificate>| {
        c.is_some_and(|c| c.is_ready())
    });
    tokio::time::timeout(Duration::from_secs(300), ready)
        .await
        .map_err(|_| anyhow::anyhow!("the probe Certificate was not Ready within 300 s"))??;
    let ready_after = t0.elapsed();
    // Let the metadata watch finish its initial list and settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss = crate::procfs::status_kib(pid, "VmRSS:")?;
    let hwm = crate::procfs::status_kib(pid, "VmHWM:")?;
    drop(child);
    sandbox.shutdown().await;
    Ok(MemoryResult {
        secrets: count,
        rss_mib: rss as f64 / 1024.0,
        peak_mib: hwm as f64 / 1024.0,
        probe_ready_seconds: ready_after.as_secs_f64(),
    })
}
