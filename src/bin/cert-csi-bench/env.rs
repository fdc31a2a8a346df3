//! The parts a benchmark runs against: a scratch directory that unmounts
//! what is left in it, the node plugin as a subprocess, and the in-process
//! sandbox with the controller.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use cert_csi::csi::kubelet::{Kubelet, PodRef, Volume};
use cert_csi::shutdown::CancellationToken;
use futures::{StreamExt, TryStreamExt};
use kube_sandbox::Sandbox;
use nix::mount::{MntFlags, umount2};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::controller;

/// A private working directory. On drop it detaches every mount below it
/// (deepest first) and deletes it, so a failed run leaves nothing mounted.
pub struct Scratch {
    path: PathBuf,
    keep: bool,
}

impl Scratch {
    pub fn create(parent: &Path) -> anyhow::Result<Scratch> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = parent.join(format!("cert-csi-bench.{}.{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        let path = path.canonicalize()?;
        Ok(Scratch { path, keep: false })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Leaves the directory (logs, node state) in place after the run.
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// Mount points below this directory, deepest first.
    pub fn mounts(&self) -> Vec<PathBuf> {
        let mut mounts: Vec<PathBuf> = cert_csi::store::read_mountinfo()
            .unwrap_or_default()
            .into_iter()
            .map(|m| m.mount_point)
            .filter(|p| p.starts_with(&self.path))
            .collect();
        mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        mounts
    }

    /// Detaches everything mounted below; returns how many mounts that was.
    pub fn unmount_all(&self) -> usize {
        let mounts = self.mounts();
        for m in &mounts {
            let _ = umount2(m, MntFlags::MNT_DETACH);
        }
        mounts.len()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let left = self.unmount_all();
        if left > 0 {
            eprintln!(
                "cert-csi-bench: detached {left} mounts left under {}",
                self.path.display()
            );
        }
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Which node plugin a [`NodeProcess`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// `cert-csi node`.
    CertCsi,
    /// cert-manager's csi-driver (`.tools/bin/csi-driver`, built by
    /// `hack/build-tools`), for `--peer`.
    CsiDriver,
}

/// A node plugin as a subprocess, so its memory and CPU time are its own.
/// Killed by pid on drop; `PR_SET_PDEATHSIG` also kills it if the bench
/// itself dies without unwinding.
pub struct NodeProcess {
    flavour: Flavour,
    exe: PathBuf,
    pub socket: PathBuf,
    pub data_root: PathBuf,
    pub node_id: String,
    kubeconfig: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl NodeProcess {
    /// Starts the plugin for node `name` under `dir` with extra flags, and
    /// waits until Probe reports ready.
    pub async fn start(
        exe: &Path,
        dir: &Path,
        name: &str,
        kubeconfig: &Path,
        args: &[String],
    ) -> anyhow::Result<NodeProcess> {
        Self::start_flavour(Flavour::CertCsi, exe, dir, name, kubeconfig, args).await
    }

    pub async fn start_flavour(
        flavour: Flavour,
        exe: &Path,
        dir: &Path,
        name: &str,
        kubeconfig: &Path,
        args: &[String],
    ) -> anyhow::Result<NodeProcess> {
        let base = dir.join(name);
        std::fs::create_dir_all(&base)?;
        let mut node = NodeProcess {
            flavour,
            exe: exe.to_path_buf(),
            socket: base.join("csi.sock"),
            data_root: base.join("data"),
            node_id: format!("bench-{name}"),
            kubeconfig: kubeconfig.to_path_buf(),
            args: args.to_vec(),
            log: base.join("node.log"),
            child: None,
        };
        node.child = Some(node.spawn()?);
        node.wait_ready(Duration::from_secs(60)).await?;
        Ok(node)
    }

    /// The simulated kubelets' root for this plugin's volumes.
    pub fn kubelet_root(&self) -> PathBuf {
        self.data_root.with_file_name("kubelet")
    }

    fn label(&self) -> &'static str {
        match self.flavour {
            Flavour::CertCsi => "cert-csi node",
            Flavour::CsiDriver => "csi-driver",
        }
    }

    fn spawn(&self) -> anyhow::Result<Child> {
        let log = File::options().create(true).append(true).open(&self.log)?;
        let mut command = Command::new(&self.exe);
        match self.flavour {
            Flavour::CertCsi => {
                command
                    .args(["--log-level", "warn", "node"])
                    // A free port: two benches (or a bench beside a
                    // cluster's plugin) must not collide on the default.
                    .args(["--metrics-address", "127.0.0.1:0"])
                    .arg("--data-root")
                    .arg(&self.data_root)
                    .arg("--kubelet-root-dir")
                    .arg(self.kubelet_root());
            }
            Flavour::CsiDriver => {
                // csi-lib reads its data root through os.DirFS("/"), which
                // takes relative paths only: its chart runs it in `/` with
                // `--data-root=csi-data-dir`. The same here.
                let relative = self
                    .data_root
                    .strip_prefix("/")
                    .context("the scratch directory is not absolute")?;
                command
                    .current_dir("/")
                    .arg("--data-root")
                    .arg(relative)
                    .args(["--driver-name", "csi.cert-manager.io"]);
            }
        }
        command
            .arg("--endpoint")
            .arg(format!("unix://{}", self.socket.display()))
            .args(["--node-id", &self.node_id])
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(&self.args)
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        // SAFETY: prctl is async-signal-safe and touches no memory of the
        // parent; nothing else runs between fork and exec.
        unsafe {
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        command
            .spawn()
            .with_context(|| format!("starting {} ({})", self.exe.display(), self.label()))
    }

    /// Polls Probe until it answers ready. Polling is what the kubelet's
    /// livenessprobe does too; 2 ms between tries bounds the error of a
    /// measured start time.
    pub async fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                anyhow::bail!(
                    "{} exited with {status} before it was ready; log tail:\n{}",
                    self.label(),
                    self.log_tail()
                );
            }
            // cert-csi says ready only once its volumes are recovered;
            // csi-lib leaves `ready` unset, which CSI reads as ready.
            if self.socket.exists()
                && let Ok(mut identity) = cert_csi::csi::client::identity(&self.socket).await
                && let Ok(reply) = identity.probe(cert_csi::csi::proto::ProbeRequest {}).await
                && reply.into_inner().ready != Some(false)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "{} not ready within {limit:?}; log tail:\n{}",
                    self.label(),
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// SIGKILL by pid, as an OOM kill would, and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    /// Starts the plugin again with `args` (same socket and data root) and
    /// returns the time until Probe answered ready.
    pub async fn restart_with(&mut self, args: Option<&[String]>) -> anyhow::Result<Duration> {
        self.kill();
        if let Some(args) = args {
            self.args = args.to_vec();
        }
        let started = Instant::now();
        self.child = Some(self.spawn()?);
        self.wait_ready(Duration::from_secs(120)).await?;
        Ok(started.elapsed())
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The sandbox API server with the controller in-process and a CA
/// ClusterIssuer Ready.
pub struct Cluster {
    pub sandbox: Option<Sandbox>,
    pub client: kube::Client,
    pub kubeconfig: PathBuf,
    stop: CancellationToken,
    controller: Option<tokio::task::JoinHandle<()>>,
    /// The real control plane, when not the sandbox.
    real: Option<RealKube>,
}

impl Cluster {
    pub async fn start(
        dir: &Path,
        namespaces: &[&str],
        ca_duration: Duration,
    ) -> anyhow::Result<Cluster> {
        let kubeconfig = dir.join("kubeconfig");
        let sandbox = controller::sandbox(Some(kubeconfig.clone()), namespaces).await?;
        let client = sandbox.client();
        let mut cluster = Cluster::with_controller(client, kubeconfig);
        cluster.sandbox = Some(sandbox);
        cluster.ca_issuer_ready(ca_duration).await?;
        Ok(cluster)
    }

    /// The controller in-process against `client`; nothing else yet.
    fn with_controller(client: kube::Client, kubeconfig: PathBuf) -> Cluster {
        let stop = CancellationToken::new();
        let task = tokio::spawn(cert_csi::controller::run(
            client.clone(),
            cert_csi::controller::ControllerOptions::new(controller::CLUSTER_RESOURCE_NAMESPACE),
            cert_csi::controller::Health::default(),
            stop.clone(),
        ));
        Cluster {
            sandbox: None,
            client,
            kubeconfig,
            stop,
            controller: Some(task),
            real: None,
        }
    }

    /// Creates the CA ClusterIssuer and waits until the controller says
    /// it is Ready.
    async fn ca_issuer_ready(&self, ca_duration: Duration) -> anyhow::Result<()> {
        controller::ca_issuer(&self.client, ca_duration).await?;
        controller::wait_issuer_ready(&self.client, Duration::from_secs(60)).await
    }

    /// A real control plane (`hack/kube up`, from the repository the
    /// bench runs in) with the cert-manager.io CRDs, the namespaces given,
    /// the controller in-process and the CA ClusterIssuer Ready. Stopped
    /// with `hack/kube down` when dropped.
    /// The API server's `apiserver_request_total` for cert-manager.io and
    /// Events, summed by verb; `None` on the sandbox, which does not count.
    pub async fn api_requests_by_verb(
        &self,
    ) -> anyhow::Result<Option<std::collections::BTreeMap<String, f64>>> {
        if self.real.is_none() {
            return Ok(None);
        }
        let text = apiserver_metrics(&self.client).await?;
        Ok(Some(requests_by_verb(&text)))
    }

    pub async fn start_real(
        dir: &Path,
        namespaces: &[&str],
        ca_duration: Duration,
    ) -> anyhow::Result<Cluster> {
        let kube = RealKube::up(&dir.join("kube"))?;
        let kubeconfig = kube.dir.join("kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&kubeconfig)?,
            &kube::config::KubeConfigOptions::default(),
        )
        .await?;
        let client = kube::Client::try_from(config)?;
        install_crds(&client).await?;
        for ns in std::iter::once(&controller::CLUSTER_RESOURCE_NAMESPACE).chain(namespaces) {
            controller::create_namespace(&client, ns).await?;
        }
        let mut cluster = Cluster::with_controller(client, kubeconfig);
        cluster.real = Some(kube);
        cluster.ca_issuer_ready(ca_duration).await?;
        Ok(cluster)
    }

    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(task) = self.controller.take() {
            let _ = task.await;
        }
        if let Some(sandbox) = self.sandbox.take() {
            sandbox.shutdown().await;
        }
        drop(self.real.take());
    }

    /// CertificateRequests that exist in `namespace`.
    pub async fn request_names(&self, namespace: &str) -> anyhow::Result<Vec<String>> {
        let api: kube::Api<cert_csi::api::CertificateRequest> =
            kube::Api::namespaced(self.client.clone(), namespace);
        let mut names: Vec<String> = api
            .list_metadata(&Default::default())
            .await?
            .items
            .into_iter()
            .filter_map(|m| m.metadata.name)
            .collect();
        names.sort();
        Ok(names)
    }
}

/// A control plane started by `hack/kube up DIR`; `hack/kube down DIR`
/// on drop stops exactly its processes.
pub struct RealKube {
    pub dir: PathBuf,
    script: PathBuf,
}

impl RealKube {
    pub fn up(dir: &Path) -> anyhow::Result<RealKube> {
        let script = std::env::current_dir()?.join("hack/kube");
        anyhow::ensure!(
            script.is_file(),
            "{}: not found; run the bench from the repository (hack/bench does)",
            script.display()
        );
        // Built tools only: building the control plane here would take
        // minutes and hide in the measurement (hack/build-tools does it).
        let status = Command::new(&script)
            .arg("up")
            .arg(dir)
            .env("CERT_CSI_KUBE_NO_BUILD", "1")
            .stdin(Stdio::null())
            .status()
            .context("running hack/kube up")?;
        let kube = RealKube {
            dir: dir.to_path_buf(),
            script,
        };
        anyhow::ensure!(
            status.success(),
            "hack/kube up {} failed ({status}); build the tools with hack/build-tools",
            dir.display()
        );
        Ok(kube)
    }
}

/// The API server's own metrics text (`/metrics`).
pub async fn apiserver_metrics(client: &kube::Client) -> anyhow::Result<String> {
    let request = http::Request::get("/metrics").body(Vec::new())?;
    Ok(client.request_text(request).await?)
}

impl Drop for RealKube {
    fn drop(&mut self) {
        let _ = Command::new(&self.script)
            .arg("down")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status();
    }
}

/// Creates the cert-manager.io CRDs and waits until each is Established.
async fn install_crds(client: &kube::Client) -> anyhow::Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: kube::Api<CustomResourceDefinition> = kube::Api::all(client.clone());
    let crds = cert_csi::api::crds();
    for crd in &crds {
        api.create(&Default::default(), crd).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for crd in &crds {
        let name = crd.metadata.name.clone().unwrap_or_default();
        loop {
            let current = api.get(&name).await?;
            let established = current
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "CRD {name} not Established in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The attributes every benchmark volume carries, plus `extra`.
pub fn attributes<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut a = vec![
        ("csi.cert-manager.io/issuer-name", controller::CA_ISSUER),
        ("csi.cert-manager.io/issuer-kind", "ClusterIssuer"),
        (
            "csi.cert-manager.io/dns-names",
            "${POD_NAME}.${POD_NAMESPACE}.svc.cluster.local",
        ),
    ];
    a.extend_from_slice(extra);
    a
}

/// Simulated kubelets on one node: each holds its own connection, so
/// `pool.len()` publishes can be in flight at once.
pub struct Kubelets {
    pub pool: Vec<Kubelet>,
}

impl Kubelets {
    pub async fn connect(
        cluster: &Cluster,
        node: &NodeProcess,
        root: &Path,
        connections: usize,
    ) -> anyhow::Result<Kubelets> {
        let mut pool = Vec::with_capacity(connections);
        for _ in 0..connections.max(1) {
            pool.push(
                Kubelet::connect(cluster.client.clone(), &node.socket, root, &node.node_id).await?,
            );
        }
        Ok(Kubelets { pool })
    }

    /// Creates `count` pods named `{prefix}-{i}` (64 at a time) and one
    /// volume `tls` for each.
    pub async fn pods_with_volume(
        &self,
        namespace: &str,
        prefix: &str,
        range: std::ops::Range<usize>,
        attributes: &[(&str, &str)],
    ) -> anyhow::Result<Vec<Volume>> {
        let kubelet = &self.pool[0];
        let pods: Vec<PodRef> = futures::stream::iter(range)
            .map(|i| async move {
                kubelet
                    .create_pod(namespace, &format!("{prefix}-{i}"), "default")
                    .await
            })
            .buffered(64)
            .try_collect()
            .await?;
        Ok(pods
            .iter()
            .map(|p| kubelet.volume(p, "tls", attributes))
            .collect())
    }

    /// Publishes every volume, as many at once as there are connections.
    /// Returns each call's outcome and latency, in `volumes` order.
    pub async fn publish_all(
        &mut self,
        volumes: &[Volume],
    ) -> Vec<(Result<(), tonic::Status>, Duration)> {
        self.run_all(volumes, true).await
    }

    pub async fn unpublish_all(
        &mut self,
        volumes: &[Volume],
    ) -> Vec<(Result<(), tonic::Status>, Duration)> {
        self.run_all(volumes, false).await
    }

    async fn run_all(
        &mut self,
        volumes: &[Volume],
        publish: bool,
    ) -> Vec<(Result<(), tonic::Status>, Duration)> {
        let next = AtomicUsize::new(0);
        let workers = self.pool.iter_mut().map(|kubelet| {
            let next = &next;
            async move {
                let mut done = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(v) = volumes.get(i) else {
                        return done;
                    };
                    let started = Instant::now();
                    let result = if publish {
                        kubelet.publish(v).await
                    } else {
                        kubelet.unpublish(v).await
                    };
                    done.push((i, result, started.elapsed()));
                }
            }
        });
        let mut all: Vec<_> = futures::future::join_all(workers)
            .await
            .into_iter()
            .flatten()
            .collect();
        all.sort_by_key(|(i, _, _)| *i);
        all.into_iter().map(|(_, r, d)| (r, d)).collect()
    }
}

/// How many of `outcomes` failed, and the first failure's message.
pub fn failures(outcomes: &[(Result<(), tonic::Status>, Duration)]) -> (usize, Option<String>) {
    let mut first = None;
    let mut count = 0;
    for (r, _) in outcomes {
        if let Err(status) = r {
            count += 1;
            first.get_or_insert_with(|| format!("{:?}: {}", status.code(), status.message()));
        }
    }
    (count, first)
}

/// `apiserver_request_total` summed by verb, for cert-manager.io resources
/// and Events (what a CSI node plugin talks to).
pub fn requests_by_verb(metrics: &str) -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{name}=\"")))
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or_default()
                .to_owned()
        };
        if label("group") != "cert-manager.io" && label("resource") != "events" {
            continue;
        }
        if let Ok(v) = value.trim().parse::<f64>() {
            *out.entry(label("verb")).or_insert(0.0) += v;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_summed_by_verb_for_cert_manager_and_events() {
        let text = r#"# HELP apiserver_request_total x
apiserver_request_total{code="201",component="apiserver",dry_run="",group="cert-manager.io",resource="certificaterequests",scope="resource",subresource="",verb="POST",version="v1"} 7
apiserver_request_total{code="200",component="apiserver",dry_run="",group="cert-manager.io",resource="certificaterequests",scope="namespace",subresource="",verb="LIST",version="v1"} 2
apiserver_request_total{code="200",component="apiserver",dry_run="",group="events.k8s.io",resource="events",scope="resource",subresource="",verb="POST",version="v1"} 3
apiserver_request_total{code="200",component="apiserver",dry_run="",group="coordination.k8s.io",resource="leases",scope="resource",subresource="",verb="PUT",version="v1"} 90
"#;
        let by_verb = requests_by_verb(text);
        assert_eq!(
            by_verb,
            std::collections::BTreeMap::from([("LIST".to_owned(), 2.0), ("POST".to_owned(), 10.0)])
        );
    }
}
