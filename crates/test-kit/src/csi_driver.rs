//! cert-manager's csi-driver itself (v0.15.0, which `hack/build-tools`
//! builds into `.tools/bin/csi-driver`), run as the node plugin of an
//! [`Env`] before cert-csi takes the node over: same API server, same node
//! name, same kubelet root, its own socket and data root. The simulated
//! kubelet publishes through its socket exactly as through cert-csi's.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cert_csi::csi::kubelet::{Kubelet, Volume};
use cert_csi::csi::proto::ProbeRequest;
use cert_csi::csi::proto::identity_client::IdentityClient;

use crate::assertions::{mounts_at, test_log_path};
use crate::env::Env;
use crate::real::repo_root;

/// The binary, relative to the repository root.
pub const CSI_DRIVER_BINARY: &str = ".tools/bin/csi-driver";

/// How long one CSI call to csi-driver may take before the test fails.
const CALL_LIMIT: Duration = Duration::from_secs(90);

/// A running csi-driver node plugin. Dropping it stops the process (by
/// pid) and unmounts the tmpfs it mounted.
pub struct CsiDriver {
    /// Its `--data-root`; its tmpfs is `<data_root>/inmemfs`.
    pub data_root: PathBuf,
    pub socket: PathBuf,
    pub log_path: PathBuf,
    /// The simulated kubelet on csi-driver's socket, once it answers.
    kubelet: Option<Kubelet>,
    child: Option<Child>,
}

impl CsiDriver {
    /// Starts csi-driver for `env`'s node with the admin kubeconfig and
    /// data root `<env.base>/csi-driver/data`, and waits until Probe
    /// answers on its socket.
    pub async fn start(env: &Env) -> CsiDriver {
        let binary = repo_root().join(CSI_DRIVER_BINARY);
        assert!(
            binary.is_file(),
            "{} is missing; build it with hack/build-tools csi-driver",
            binary.display()
        );
        let dir = env.base.join("csi-driver");
        let data_root = dir.join("data");
        let socket = dir.join("csi.sock");
        std::fs::create_dir_all(&data_root).expect("csi-driver's data root");
        let log_path = test_log_path("csi-driver");
        let log = File::create(&log_path).expect("csi-driver log file");
        let child = Command::new(&binary)
            .arg("--endpoint")
            .arg(format!("unix://{}", socket.display()))
            .args(["--node-id", &env.node_id])
            // csi-lib reads its data root through os.DirFS("/"), which
            // takes only paths without a leading slash: csi-driver's chart
            // passes a relative --data-root and runs from "/", and so does
            // this.
            .arg("--data-root")
            .arg(data_root.strip_prefix("/").expect("an absolute data root"))
            .current_dir("/")
            .args(["--driver-name", "csi.cert-manager.io"])
            .arg("--kubeconfig")
            .arg(&env.kubeconfig)
            .args(["--log-level", "2"])
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn csi-driver");
        let mut driver = CsiDriver {
            data_root,
            socket: socket.clone(),
            log_path,
            kubelet: None,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            driver.assert_running();
            if socket.exists()
                && let Ok(channel) = cert_csi::csi::client::connect(&socket).await
                && IdentityClient::new(channel)
                    .probe(ProbeRequest {})
                    .await
                    .is_ok()
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "csi-driver did not answer Probe on {} within 60s; log:\n{}",
                socket.display(),
                driver.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        driver.kubelet = Some(
            Kubelet::connect(env.client.clone(), &socket, &env.kubelet_root, &env.node_id)
                .await
                .expect("connect to csi-driver's socket"),
        );
        driver
    }

    /// The tmpfs csi-driver keeps every volume in.
    pub fn tmpfs(&self) -> PathBuf {
        self.data_root.join("inmemfs")
    }

    /// A volume's directory in that tmpfs.
    pub fn volume_dir(&self, volume: &Volume) -> PathBuf {
        self.tmpfs().join(&volume.volume_id)
    }

    /// NodePublishVolume through csi-driver's socket, as the kubelet sends
    /// it; panics with csi-driver's log on failure.
    pub async fn publish_ok(&mut self, volume: &Volume) {
        let kubelet = self.kubelet.as_mut().expect("csi-driver answered Probe");
        let outcome = tokio::time::timeout(CALL_LIMIT, kubelet.publish(volume)).await;
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(status)) => panic!(
                "csi-driver's publish of {} failed: {:?}: {}\nlog:\n{}",
                volume.volume_name,
                status.code(),
                status.message(),
                self.log()
            ),
            Err(_) => panic!(
                "csi-driver's publish of {} did not answer within {CALL_LIMIT:?}; log:\n{}",
                volume.volume_name,
                self.log()
            ),
        }
    }

    /// Stops csi-driver with SIGTERM (by pid), as a DaemonSet deletion
    /// does, and reaps it; SIGKILL after 10 s. Its mounts stay, as they do
    /// when its pod goes.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => break,
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn assert_running(&mut self) {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            panic!("csi-driver exited early ({status}); log:\n{}", self.log());
        }
    }
}

impl Drop for CsiDriver {
    fn drop(&mut self) {
        self.stop();
        // csi-driver never unmounts its tmpfs; the bind mounts taken from
        // it at target paths are the Env's to remove (it unmounts everything
        // below its base, deepest first).
        let tmpfs = self.tmpfs();
        if !mounts_at(&tmpfs).is_empty() {
            let _ = nix::mount::umount2(&tmpfs, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}
