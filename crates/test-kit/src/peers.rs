//! The upstream programs cert-csi is compared with, run as subprocesses
//! beside it: cert-manager's csi-driver (`.tools/bin/csi-driver`) and
//! cert-manager's controller loops (`.tools/bin/cert-manager-controller`),
//! both built by `hack/build-tools` from the modules pinned in `hack/tools/`.
//!
//! Their logs go to `target/tmp/peer-logs/`, not to the directory whose
//! logs `hack/test` scans for key material: that scan judges cert-csi, not
//! upstream.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cert_csi::csi::kubelet::Volume;
use cert_csi::csi::proto::ProbeRequest;
use cert_csi::csi::proto::identity_client::IdentityClient;
use cert_csi::csi::proto::node_client::NodeClient;
use tonic::transport::Channel;

/// `.tools/bin/<name>`, which must exist: building a tool inside a test
/// would take minutes and hide the cost (`hack/test` builds them first).
pub fn tool(name: &str) -> PathBuf {
    let path = crate::real::repo_root().join(".tools/bin").join(name);
    assert!(
        path.is_file(),
        "{} is missing; run hack/build-tools {name} (hack/test does)",
        path.display()
    );
    path
}

/// A log file for an upstream process, outside the scanned test logs.
fn peer_log(label: &str) -> (PathBuf, File) {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = crate::target_tmp_dir().join("peer-logs");
    std::fs::create_dir_all(&dir).expect("peer log dir");
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let path = dir.join(format!("{}-{n}-{label}.log", std::process::id()));
    let file = File::create(&path).expect("peer log file");
    (path, file)
}

/// cert-manager v1.21's controller loops (see hack/tools/cert-manager),
/// against the API server of `kubeconfig`.
pub struct CertManagerController {
    child: Child,
    pub log_path: PathBuf,
}

impl CertManagerController {
    /// Runs the loops named in `controllers` (all the binary has when
    /// empty), with ClusterIssuer Secrets in `cluster_namespace`.
    pub fn start(kubeconfig: &Path, cluster_namespace: &str, controllers: &[&str]) -> Self {
        let (log_path, log) = peer_log("cert-manager-controller");
        let mut command = Command::new(tool("cert-manager-controller"));
        command
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--cluster-resource-namespace", cluster_namespace])
            .args(["--v", "2"]);
        if !controllers.is_empty() {
            command.arg("--controllers").arg(controllers.join(","));
        }
        let child = command
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn cert-manager-controller");
        CertManagerController { child, log_path }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Panics with the log when the process has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "cert-manager-controller exited ({status}); log:\n{}",
                self.log()
            );
        }
    }
}

impl Drop for CertManagerController {
    fn drop(&mut self) {
        crate::stop_child(&mut self.child, Duration::from_secs(5));
    }
}

/// cert-manager's csi-driver (v0.15), on a socket and data root of its own.
/// It mounts one tmpfs at `<data_root>/inmemfs` and bind-mounts each
/// volume's directory from there onto the target path.
pub struct UpstreamDriver {
    child: Option<Child>,
    pub socket: PathBuf,
    pub data_root: PathBuf,
    pub log_path: PathBuf,
    node: NodeClient<Channel>,
    /// Target paths it was asked to publish, unmounted on drop if still
    /// mounted (upstream leaves its mounts behind when it stops).
    targets: std::sync::Mutex<Vec<PathBuf>>,
    kubeconfig: PathBuf,
    node_id: String,
    extra_args: Vec<String>,
}

impl UpstreamDriver {
    /// Starts it under `dir` (socket and data root inside), as node
    /// `node_id`, and waits until Probe answers.
    pub async fn start(dir: &Path, kubeconfig: &Path, node_id: &str, extra_args: &[&str]) -> Self {
        std::fs::create_dir_all(dir).expect("upstream dir");
        let mut driver = UpstreamDriver {
            child: None,
            socket: dir.join("csi.sock"),
            data_root: dir.join("data"),
            log_path: PathBuf::new(),
            node: NodeClient::new(
                tonic::transport::Endpoint::from_static("http://[::1]:1").connect_lazy(),
            ),
            targets: Default::default(),
            kubeconfig: kubeconfig.to_path_buf(),
            node_id: node_id.to_string(),
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
        };
        driver.spawn().await;
        driver
    }

    async fn spawn(&mut self) {
        let (log_path, log) = peer_log("csi-driver");
        let _ = std::fs::remove_file(&self.socket);
        let child = Command::new(tool("csi-driver"))
            .arg("--endpoint")
            .arg(format!("unix://{}", self.socket.display()))
            .args(["--node-id", &self.node_id])
            // csi-lib reads its data root through os.DirFS("/"), which
            // takes only relative paths: its chart passes `csi-data-dir`
            // and runs in `/`. Do the same.
            .current_dir("/")
            .arg("--data-root")
            .arg(
                self.data_root
                    .strip_prefix("/")
                    .expect("an absolute data root"),
            )
            .args(["--driver-name", "csi.cert-manager.io"])
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(&self.extra_args)
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn csi-driver");
        self.child = Some(child);
        self.log_path = log_path;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.assert_running();
            if self.socket.exists()
                && let Ok(channel) = cert_csi::csi::client::connect(&self.socket).await
            {
                let mut identity = IdentityClient::new(channel.clone());
                if let Ok(reply) = identity.probe(ProbeRequest {}).await
                    && reply.into_inner().ready != Some(false)
                {
                    self.node = NodeClient::new(channel);
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "csi-driver did not answer Probe on {} within 60 s; log:\n{}",
                self.socket.display(),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Beside `env`'s cert-csi on the same node, for a side-by-side
    /// comparison: the same API server (admin kubeconfig) and node name,
    /// its socket and data root in `<env.base>/upstream`, and its own
    /// kubelet root ([`UpstreamDriver::kubelet_root_beside`]), since cert-csi
    /// only mounts under its own.
    pub async fn beside(env: &crate::Env, extra_args: &[&str]) -> Self {
        Self::start(
            &env.base.join("upstream"),
            &env.kubeconfig,
            &env.node_id,
            extra_args,
        )
        .await
    }

    /// The kubelet root of a driver started with [`UpstreamDriver::beside`].
    pub fn kubelet_root_beside(env: &crate::Env) -> PathBuf {
        env.base.join("kubelet-upstream")
    }

    /// The volume `volume_name` of `pod` as the kubelet would publish it to
    /// a driver started with [`UpstreamDriver::beside`].
    pub fn volume_beside(
        env: &crate::Env,
        pod: &cert_csi::csi::kubelet::PodRef,
        volume_name: &str,
        attributes: &[(&str, &str)],
    ) -> Volume {
        cert_csi::csi::kubelet::volume(
            &Self::kubelet_root_beside(env),
            pod,
            volume_name,
            attributes,
        )
    }

    /// As the node plugin of `env`'s node before cert-csi takes it over:
    /// the same API server (admin kubeconfig), node name and kubelet root,
    /// with its socket and data root in `<env.base>/csi-driver`.
    pub async fn start_for(env: &crate::Env) -> Self {
        Self::start(
            &env.base.join("csi-driver"),
            &env.kubeconfig,
            &env.node_id,
            &[],
        )
        .await
    }

    /// The tmpfs csi-driver keeps every volume in.
    pub fn tmpfs(&self) -> PathBuf {
        self.data_root.join("inmemfs")
    }

    /// A volume's directory in that tmpfs.
    pub fn volume_dir(&self, volume: &Volume) -> PathBuf {
        self.tmpfs().join(&volume.volume_id)
    }

    /// Publishes with the kubelet's two-minute deadline and panics, with
    /// csi-driver's log, on failure.
    pub async fn publish_ok(&self, volume: &Volume) {
        if let Err(status) = self.publish(volume, Duration::from_secs(120)).await {
            panic!(
                "csi-driver's publish of {} failed: {:?}: {}\nlog:\n{}",
                volume.volume_name,
                status.code(),
                status.message(),
                self.log()
            );
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn assert_running(&mut self) {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            panic!("csi-driver exited ({status}); log:\n{}", self.log());
        }
    }

    /// NodePublishVolume with the kubelet's deadline of `deadline` (sent as
    /// `grpc-timeout`, as the kubelet does), after creating the target's
    /// parent as the kubelet does. Upstream creates the target directory
    /// itself, and waits for issuance until the deadline.
    pub async fn publish(&self, volume: &Volume, deadline: Duration) -> Result<(), tonic::Status> {
        volume
            .create_parent()
            .map_err(|e| tonic::Status::internal(format!("kubelet: {e}")))?;
        self.targets.lock().unwrap().push(volume.target());
        let mut request = tonic::Request::new(volume.publish_request());
        request.set_timeout(deadline);
        let mut node = self.node.clone();
        let call = node.node_publish_volume(request);
        match tokio::time::timeout(deadline + Duration::from_secs(30), call).await {
            Ok(reply) => reply.map(|_| ()),
            Err(_) => panic!(
                "csi-driver: NodePublishVolume ignored its deadline; log:\n{}",
                self.log()
            ),
        }
    }

    pub async fn unpublish(&self, volume: &Volume) -> Result<(), tonic::Status> {
        self.node
            .clone()
            .node_unpublish_volume(volume.unpublish_request())
            .await
            .map(|_| ())
    }

    /// Stops the process (SIGTERM, as a DaemonSet rollout does); its mounts
    /// and data stay, as they do in a cluster.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            crate::stop_child(&mut child, Duration::from_secs(5));
        }
    }
}

impl Drop for UpstreamDriver {
    fn drop(&mut self) {
        self.stop();
        // Upstream leaves its bind mounts and its tmpfs when it stops;
        // detach what is still there so the test's directory can go.
        let mut paths: Vec<PathBuf> = self.targets.lock().unwrap().clone();
        paths.push(self.data_root.join("inmemfs"));
        for path in paths {
            while !crate::mounts_at(&path).is_empty() {
                if nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH).is_err() {
                    break;
                }
            }
        }
    }
}
