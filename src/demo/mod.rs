//! `cert-csi demo`: the whole system on one machine, in one process.
//!
//! It starts the sandbox API server, the controller and the node plugin,
//! plays the kubelet (`csi::kubelet`), bootstraps a CA the way cert-manager users do, gives
//! two pods identities, runs mutual TLS between them with only their mounted
//! files, waits for an in-place rotation while traffic keeps flowing, and
//! cleans up.

pub mod isolation;
pub mod mtls;
mod report;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::PostParams;
use kube::runtime::wait::await_condition;
use kube::{Api, Client};
use kube_sandbox::{Sandbox, SandboxConfig};

use crate::api::{Certificate, ClusterIssuer};
use crate::csi::kubelet::{Kubelet, Volume};
use crate::pki::inspect::parse_chain;
use crate::shutdown::CancellationToken;
use crate::store::{MountMode, StoreOptions};
use report::Report;

/// Where ClusterIssuer Secrets live in the demo (the chart uses the release
/// namespace the same way).
const CLUSTER_RESOURCE_NAMESPACE: &str = "cert-csi";
const NODE_NAME: &str = "demo-node";
const POD_NAMESPACE: &str = "demo";

/// The CA bootstrap exactly as a cert-manager user writes it.
const BOOTSTRAP: &str = r#"
apiVersion: cert-manager.io/v1
kind: ClusterIssuer
metadata:
  name: selfsigned
spec:
  selfSigned: {}
---
apiVersion: cert-manager.io/v1
kind: Certificate
metadata:
  name: demo-ca
  namespace: cert-csi
spec:
  isCA: true
  commonName: cert-csi demo CA
  secretName: demo-ca
  duration: 2160h
  privateKey:
    algorithm: ECDSA
    size: 256
  issuerRef:
    name: selfsigned
    kind: ClusterIssuer
    group: cert-manager.io
---
apiVersion: cert-manager.io/v1
kind: ClusterIssuer
metadata:
  name: demo-ca
spec:
  ca:
    secretName: demo-ca
"#;

pub struct DemoOptions {
    /// Working directory for sockets, node state and the fake kubelet root.
    pub dir: PathBuf,
    /// Leave everything running until interrupted.
    pub keep: bool,
    /// Lifetime of the pods' certificates; short, so a rotation happens.
    pub duration: Duration,
    /// How the process got the right to mount (see [`isolation::enter`]).
    pub isolation: isolation::Isolation,
}

pub async fn run(options: DemoOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut report = Report::new();
    // Without the right to mount, the demo still shows the whole flow with
    // plain files, and says plainly what that leaves out.
    let mounts = match &options.isolation {
        isolation::Isolation::Unavailable(_) => MountMode::Files,
        _ => MountMode::Kernel,
    };
    report.step(&options.isolation.to_string());
    let dir = match mounts {
        MountMode::Kernel => prepare_dir(&options.dir)?,
        MountMode::Files => {
            let dir = fallback_dir(&options.dir);
            report.step(&format!(
                "falling back to plain files without mounting: no per-volume tmpfs and no read-only bind mounts; volumes are symlinks under {} ({})",
                dir.display(),
                if dir.starts_with("/dev/shm") { "memory-backed, so keys still stay off disk" } else { "on disk: /dev/shm was not usable" }
            ));
            prepare_dir(&dir)?
        }
    };
    let stop = shutdown.child_token();

    let kubeconfig = dir.join("kubeconfig");
    let sandbox = Sandbox::start(SandboxConfig {
        listen: "127.0.0.1:0".parse()?,
        kubeconfig: Some(kubeconfig.clone()),
        crds: crate::api::crds(),
        watch_window: 10_000,
    })
    .await?;
    let client = sandbox.client();
    report.step(&format!(
        "Kubernetes API sandbox serving at {}",
        sandbox.url()
    ));

    create_namespace(&client, CLUSTER_RESOURCE_NAMESPACE).await?;
    create_namespace(&client, POD_NAMESPACE).await?;
    let controller = tokio::spawn(crate::controller::run(
        client.clone(),
        crate::controller::ControllerOptions::new(CLUSTER_RESOURCE_NAMESPACE),
        crate::controller::Health::default(),
        stop.clone(),
    ));
    report.step("controller running: approver, issuers, signer, certificates");

    let socket = dir.join("csi.sock");
    let node = tokio::spawn(crate::csi::run::run(
        node_options(&socket, &dir, &kubeconfig, mounts),
        stop.clone(),
    ));
    wait_for_probe(&socket).await?;
    report.step(&format!("node plugin ready on {}", socket.display()));

    bootstrap_ca(&client).await?;
    report.step("CA bootstrapped: SelfSigned ClusterIssuer → CA Certificate → CA ClusterIssuer");

    let mut kubelet =
        Kubelet::connect(client.clone(), &socket, dir.join("kubelet"), NODE_NAME).await?;
    let duration = crate::api::duration::format_go(options.duration);
    let renew_before = crate::api::duration::format_go(options.duration * 2 / 3);
    let attributes = [
        ("csi.cert-manager.io/issuer-name", "demo-ca"),
        ("csi.cert-manager.io/issuer-kind", "ClusterIssuer"),
        (
            "csi.cert-manager.io/dns-names",
            "${POD_NAME}.${POD_NAMESPACE}.svc",
        ),
        ("csi.cert-manager.io/key-algorithm", "ECDSA"),
        (
            "csi.cert-manager.io/key-usages",
            "digital signature,key encipherment,server auth,client auth",
        ),
        ("csi.cert-manager.io/duration", duration.as_str()),
        ("csi.cert-manager.io/renew-before", renew_before.as_str()),
    ];
    let mut volumes = Vec::new();
    for name in ["alice", "bob"] {
        let pod = kubelet.create_pod(POD_NAMESPACE, name, name).await?;
        let volume = kubelet.volume(&pod, "tls", &attributes);
        let started = Instant::now();
        kubelet
            .publish(&volume)
            .await
            .map_err(|s| anyhow::anyhow!("publishing {name}'s volume: {}", s.message()))?;
        report.step(&format!(
            "pod {POD_NAMESPACE}/{name} got its identity in {} ms",
            started.elapsed().as_millis()
        ));
        report.certificate(name, &volume.target())?;
        volumes.push(volume);
    }

    let (alice, bob) = (&volumes[0], &volumes[1]);
    let first = handshake(alice, bob).await?;
    report.handshake(&first);

    let rotation = watch_rotation(alice, bob, options.duration * 2, &mut report).await?;
    report.step(&format!(
        "rotated in place: alice serial {} → {} while {} handshakes kept succeeding",
        rotation.0, rotation.1, rotation.2
    ));

    if options.keep {
        report.keep(&kubeconfig);
        shutdown.cancelled().await;
    }

    for volume in &volumes {
        kubelet
            .unpublish(volume)
            .await
            .map_err(|s| anyhow::anyhow!("unpublishing: {}", s.message()))?;
    }
    stop.cancel();
    node.await??;
    controller.await?;
    sandbox.shutdown().await;
    let leftovers = mounts_below(&dir)?;
    if !leftovers.is_empty() {
        bail!(
            "{} mounts were left under {}",
            leftovers.len(),
            dir.display()
        );
    }
    std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    report.step("unpublished, stopped and cleaned up: nothing left mounted or running");
    Ok(())
}

/// Where the no-mount fallback keeps its files: memory-backed /dev/shm when
/// it is usable, so keys stay off persistent disk even without a tmpfs of
/// our own.
fn fallback_dir(requested: &Path) -> PathBuf {
    let shm = Path::new("/dev/shm");
    let probe = shm.join(format!("cert-csi-demo-{}", nix::unistd::geteuid()));
    if shm.is_dir() && (probe.is_dir() || std::fs::create_dir(&probe).is_ok()) {
        probe
    } else {
        requested.to_path_buf()
    }
}

fn prepare_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    if dir.exists() {
        let stale = mounts_below(dir)?;
        if !stale.is_empty() {
            bail!(
                "{} still has {} mounts from an earlier demo; unmount them (umount -R {}) or pick another --dir",
                dir.display(),
                stale.len(),
                dir.display()
            );
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    dir.canonicalize().context("resolving the demo directory")
}

fn node_options(
    socket: &Path,
    dir: &Path,
    kubeconfig: &Path,
    mounts: MountMode,
) -> crate::csi::run::NodeOptions {
    crate::csi::run::NodeOptions {
        api_rate: None,
        store: StoreOptions {
            mount_mode: mounts,
            ..StoreOptions::default()
        },
        endpoint: format!("unix://{}", socket.display()),
        driver_name: "csi.cert-manager.io".to_string(),
        data_root: dir.join("node"),
        kubeconfig: Some(kubeconfig.to_path_buf()),
        node: crate::node::NodeConfig {
            // The demo squeezes a rotation into seconds; the guard's
            // one-minute default would hold it back.
            renewal: crate::renewal::schedule::RenewalPolicy {
                min_interval: Duration::from_secs(1),
                ..Default::default()
            },
            // The simulated kubelet's root (see `Kubelet::connect`).
            kubelet_root_dir: dir.join("kubelet"),
            ..crate::node::NodeConfig::new(NODE_NAME)
        },
    }
}

async fn create_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
    }))?;
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating namespace {name}")),
    }
}

async fn wait_for_probe(socket: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if socket.exists()
            && let Ok(mut identity) = crate::csi::client::identity(socket).await
            && let Ok(reply) = identity.probe(crate::csi::proto::ProbeRequest {}).await
            && reply.into_inner().ready == Some(true)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the node plugin did not become ready within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn bootstrap_ca(client: &Client) -> anyhow::Result<()> {
    let post = PostParams::default();
    for document in BOOTSTRAP.split("\n---\n") {
        let value: serde_json::Value = serde_yaml_ng::from_str(document)?;
        match value["kind"].as_str() {
            Some("ClusterIssuer") => {
                let issuer: ClusterIssuer = serde_json::from_value(value)?;
                Api::<ClusterIssuer>::all(client.clone())
                    .create(&post, &issuer)
                    .await?;
            }
            Some("Certificate") => {
                let cert: Certificate = serde_json::from_value(value)?;
                Api::<Certificate>::namespaced(client.clone(), CLUSTER_RESOURCE_NAMESPACE)
                    .create(&post, &cert)
                    .await?;
            }
            other => bail!("unexpected kind {other:?} in the bootstrap manifest"),
        }
    }
    let issuers: Api<ClusterIssuer> = Api::all(client.clone());
    let ready = await_condition(issuers, "demo-ca", |issuer: Option<&ClusterIssuer>| {
        issuer.is_some_and(|i| i.is_ready())
    });
    tokio::time::timeout(Duration::from_secs(30), ready)
        .await
        .context("the CA ClusterIssuer did not become Ready within 30 s")??;
    Ok(())
}

async fn handshake(client: &Volume, server: &Volume) -> anyhow::Result<mtls::Exchange> {
    let client_id = mtls::Identity::load(&client.target())?;
    let server_id = mtls::Identity::load(&server.target())?;
    let name = format!("{}.{}.svc", server.pod.name, server.pod.namespace);
    mtls::exchange(&server_id, &client_id, &name).await
}

fn serial(volume: &Volume) -> anyhow::Result<String> {
    let pem = std::fs::read(volume.file("tls.crt"))?;
    let chain = parse_chain(&pem)?;
    Ok(chain
        .first()
        .map(|c| c.serial_hex.clone())
        .unwrap_or_default())
}

/// Keeps handshaking until alice's certificate is replaced in place.
/// Returns the old and new serials and how many handshakes succeeded.
async fn watch_rotation(
    alice: &Volume,
    bob: &Volume,
    limit: Duration,
    report: &mut Report,
) -> anyhow::Result<(String, String, u32)> {
    let before = serial(alice)?;
    let deadline = Instant::now() + limit;
    let mut handshakes = 0;
    report.step(&format!(
        "waiting for rotation (alice's serial {before}), handshaking every 250 ms"
    ));
    loop {
        handshake(alice, bob)
            .await
            .context("a handshake failed during rotation")?;
        handshakes += 1;
        let now = serial(alice)?;
        if now != before {
            return Ok((before, now, handshakes));
        }
        if Instant::now() > deadline {
            bail!("no rotation within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn mounts_below(dir: &Path) -> anyhow::Result<Vec<crate::store::MountEntry>> {
    Ok(crate::store::read_mountinfo()?
        .into_iter()
        .filter(|m| m.mount_point.starts_with(dir))
        .collect())
}
