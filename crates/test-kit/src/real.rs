//! The real Kubernetes control plane under the tests: `hack/kube up` (etcd,
//! kube-apiserver and kube-controller-manager v1.37, built from Go modules
//! by `hack/build-tools`) in a directory of the test's own, torn down with
//! `hack/kube down` when dropped.
//!
//! `CERT_CSI_TEST_API=real` makes the harness use it; `hack/test` sets
//! that, so CI judges with the real server. `sandbox` (the default for a
//! bare `cargo test`) keeps the in-process sandbox for quick local runs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// Which API server the harness runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The in-process sandbox (`cert-csi sandbox`).
    Sandbox,
    /// The real control plane (`hack/kube`).
    Real,
}

impl Backend {
    /// From `CERT_CSI_TEST_API` (`real` or `sandbox`, default sandbox). Any
    /// other value is a mistake that must not silently pick one.
    pub fn from_env() -> Backend {
        match std::env::var("CERT_CSI_TEST_API").as_deref() {
            Ok("real") => Backend::Real,
            Ok("sandbox") | Ok("") | Err(_) => Backend::Sandbox,
            Ok(other) => panic!(
                "CERT_CSI_TEST_API={other:?}: use real (hack/kube's control plane) or sandbox"
            ),
        }
    }
}

/// The repository root: two levels above this crate (`crates/test-kit`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/test-kit lies two levels below the repository root")
        .to_path_buf()
}

/// A running `hack/kube` control plane. Dropping it stops exactly its
/// processes and removes its directory.
pub struct RealCluster {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    /// `DIR/env` of `hack/kube up`: API URL, CA path, ports, kubectl.
    pub facts: HashMap<String, String>,
}

impl RealCluster {
    /// Starts a control plane in `dir`, which must not exist yet. The tools
    /// must be built already (`hack/build-tools`; `hack/test` does it):
    /// building them inside a test would take minutes and hide the cost.
    pub fn up(dir: &Path) -> RealCluster {
        let started = Instant::now();
        let out = Command::new(repo_root().join("hack/kube"))
            .arg("up")
            .arg(dir)
            .env("CERT_CSI_KUBE_NO_BUILD", "1")
            .output()
            .expect("running hack/kube up");
        assert!(
            out.status.success(),
            "hack/kube up {} failed ({}); build the tools with hack/build-tools.\nstdout:\n{}\nstderr:\n{}",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let facts = std::fs::read_to_string(dir.join("env"))
            .expect("hack/kube up writes DIR/env")
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), unquote(v)))
            .collect();
        eprintln!(
            "real control plane up in {:.1} s at {}",
            started.elapsed().as_secs_f64(),
            dir.display()
        );
        RealCluster {
            dir: dir.to_path_buf(),
            kubeconfig: dir.join("kubeconfig"),
            facts,
        }
    }

    /// A client with the admin kubeconfig (`system:masters`).
    pub async fn client(&self) -> Client {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig).expect("kubeconfig parses");
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("kubeconfig loads");
        Client::try_from(config).expect("client")
    }

    /// A client that authenticates with `token` alone (e.g. a
    /// ServiceAccount's, from TokenRequest), as a pod would.
    pub async fn client_for_token(&self, token: &str) -> Client {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig).expect("kubeconfig parses");
        let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("kubeconfig loads");
        config.auth_info = kube::config::AuthInfo {
            token: Some(token.to_string().into()),
            ..Default::default()
        };
        Client::try_from(config).expect("client")
    }

    /// The kubectl that `hack/build-tools` built, at the server's version.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(
            self.facts
                .get("KUBECTL")
                .cloned()
                .unwrap_or_else(|| repo_root().join(".tools/bin/kubectl").display().to_string()),
        );
        cmd.arg("--kubeconfig").arg(&self.kubeconfig);
        cmd
    }

    /// The server's pid, for tests that stop and restart it.
    pub fn pid_of(&self, name: &str) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("pids").join(format!("{name}.pid")))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }
}

/// A kube-apiserver stopped by [`RealCluster::stop_apiserver`].
pub struct Stopped {
    args: Vec<std::ffi::OsString>,
}

impl RealCluster {
    /// Stops kube-apiserver (SIGTERM, then SIGKILL after 15 s), as an outage
    /// does: clients get connection refused. etcd and the controller
    /// manager keep running, so every object survives.
    pub fn stop_apiserver(&self) -> Stopped {
        let pid = self.pid_of("kube-apiserver").expect("kube-apiserver pid");
        let args: Vec<std::ffi::OsString> = std::fs::read(format!("/proc/{pid}/cmdline"))
            .expect("kube-apiserver's command line")
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| {
                <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(a).to_os_string()
            })
            .collect();
        let target = nix::unistd::Pid::from_raw(pid as i32);
        let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid) {
            if Instant::now() > deadline {
                let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Stopped { args }
    }

    /// Starts kube-apiserver again with the same command line, in its own
    /// session like `hack/kube` starts it, and waits for `/readyz`.
    pub async fn start_apiserver(&self, stopped: Stopped) {
        use std::os::unix::process::CommandExt;
        let log = std::fs::File::options()
            .append(true)
            .open(self.dir.join("logs/kube-apiserver.log"))
            .expect("the apiserver log");
        let mut cmd = Command::new(&stopped.args[0]);
        cmd.args(&stopped.args[1..])
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // SAFETY: setsid is async-signal-safe and touches no memory.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                Ok(())
            });
        }
        let child = cmd.spawn().expect("restart kube-apiserver");
        std::fs::write(
            self.dir.join("pids/kube-apiserver.pid"),
            format!("{}\n", child.id()),
        )
        .unwrap();
        // hack/kube down stops it by pid and waits for it to be gone; as
        // its parent, this process must reap it or it stays a zombie.
        let mut child = child;
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        let client = self.client().await;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let ready = client
                .request_text(http::Request::get("/readyz").body(Vec::new()).unwrap())
                .await;
            if matches!(ready.as_deref(), Ok("ok")) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "kube-apiserver not ready 120 s after a restart: {ready:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(true)
}

impl Drop for RealCluster {
    fn drop(&mut self) {
        let out = Command::new(repo_root().join("hack/kube"))
            .arg("down")
            .arg(&self.dir)
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "hack/kube down {} failed: {}",
                self.dir.display(),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("hack/kube down {}: {e}", self.dir.display()),
        }
    }
}

/// Undoes bash's `printf %q` for the simple values `hack/kube` writes.
fn unquote(v: &str) -> String {
    let v = v.trim();
    if let Some(inner) = v.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) {
        return inner.to_string();
    }
    v.replace('\\', "")
}

/// Creates `crds` on the server (an existing one is replaced by nothing:
/// 409 is fine) and waits until each is Established, as `kubectl wait
/// --for condition=Established` would.
pub async fn install_crds(client: &Client, crds: &[CustomResourceDefinition]) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crds {
        match api.create(&PostParams::default(), crd).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => panic!(
                "the real API server refused CRD {}: {e}",
                crd.metadata.name.as_deref().unwrap_or("?")
            ),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for crd in crds {
        let name = crd.metadata.name.clone().unwrap_or_default();
        loop {
            let current = api.get(&name).await.expect("get CRD");
            let established = current
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                });
            if established {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "CRD {name} not Established within 60 s: {:?}",
                current.status
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The API server of a test that needs no node: the sandbox or the real
/// control plane, by [`Backend::from_env`]. Dropping it stops it.
pub enum ApiServer {
    Sandbox(kube_sandbox::Sandbox),
    /// The control plane, and the temporary directory holding it when
    /// [`ApiServer::start`] made one (callers of `start_in` own theirs).
    Real(RealCluster, Option<tempfile::TempDir>),
}

impl ApiServer {
    /// Starts one with the cert-manager.io CRDs installed, and an admin
    /// client for it. `watch_window` sizes the sandbox's event history.
    pub async fn start(watch_window: usize) -> (ApiServer, Client) {
        let dir = tempfile::tempdir().expect("tempdir");
        let (server, client, _) =
            ApiServer::start_in(Backend::from_env(), dir.path(), watch_window).await;
        let server = match server {
            ApiServer::Real(real, _) => ApiServer::Real(real, Some(dir)),
            sandbox => sandbox,
        };
        (server, client)
    }

    /// Starts `backend` with its files in `dir` (which must outlive it), the
    /// CRDs installed. Returns it, an admin client, and the admin
    /// kubeconfig a subprocess can use.
    pub async fn start_in(
        backend: Backend,
        dir: &Path,
        watch_window: usize,
    ) -> (ApiServer, Client, PathBuf) {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        match backend {
            Backend::Sandbox => {
                let kubeconfig = dir.join("kubeconfig");
                let sandbox = kube_sandbox::Sandbox::start(kube_sandbox::SandboxConfig {
                    listen: "127.0.0.1:0".parse().unwrap(),
                    kubeconfig: Some(kubeconfig.clone()),
                    crds: all_crds(),
                    watch_window,
                })
                .await
                .expect("sandbox starts");
                let client = sandbox.client();
                (ApiServer::Sandbox(sandbox), client, kubeconfig)
            }
            Backend::Real => {
                let real = RealCluster::up(&dir.join("kube"));
                let client = real.client().await;
                install_crds(&client, &all_crds()).await;
                let kubeconfig = real.kubeconfig.clone();
                (ApiServer::Real(real, None), client, kubeconfig)
            }
        }
    }

    /// Stops it: the sandbox gracefully, the real one by `hack/kube down`.
    pub async fn stop(self) {
        match self {
            ApiServer::Sandbox(sandbox) => sandbox.shutdown().await,
            ApiServer::Real(real, _) => drop(real),
        }
    }
}

/// The cert-manager.io CRDs and the policy.cert-manager.io one the policy
/// approver reads.
fn all_crds() -> Vec<CustomResourceDefinition> {
    let mut crds = cert_csi::api::crds();
    crds.extend(cert_csi::api::policy_crds());
    crds
}

/// Lets every ServiceAccount create CertificateRequests, as the chart's
/// `spiffe-requester` ClusterRole does in pod-token mode (the approver, not
/// RBAC, decides what is signed), and waits until the real authorizer
/// agrees. The sandbox authorizes everything and serves no RBAC API.
pub async fn allow_service_accounts_to_request(client: &Client) {
    use k8s_openapi::api::authorization::v1::SubjectAccessReview;
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    let name = "cert-csi-tests-spiffe-requester";
    let role: ClusterRole = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "rules": [{
            "apiGroups": ["cert-manager.io"],
            "resources": ["certificaterequests"],
            "verbs": ["create"],
        }],
    }))
    .unwrap();
    let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{
            "kind": "Group",
            "apiGroup": "rbac.authorization.k8s.io",
            "name": "system:serviceaccounts",
        }],
    }))
    .unwrap();
    for result in [
        Api::<ClusterRole>::all(client.clone())
            .create(&PostParams::default(), &role)
            .await
            .map(|_| ()),
        Api::<ClusterRoleBinding>::all(client.clone())
            .create(&PostParams::default(), &binding)
            .await
            .map(|_| ()),
    ] {
        match result {
            Ok(()) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => panic!("granting ServiceAccounts create on certificaterequests: {e}"),
        }
    }
    let review: SubjectAccessReview = serde_json::from_value(serde_json::json!({
        "spec": {
            "user": "system:serviceaccount:cert-csi-tests:probe",
            "groups": ["system:serviceaccounts", "system:authenticated"],
            "resourceAttributes": {
                "group": "cert-manager.io",
                "resource": "certificaterequests",
                "verb": "create",
                "namespace": "cert-csi-tests",
            },
        },
    }))
    .unwrap();
    let reviews: Api<SubjectAccessReview> = Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = reviews
            .create(&PostParams::default(), &review)
            .await
            .expect("SubjectAccessReview");
        if answer.status.is_some_and(|s| s.allowed) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the authorizer did not let ServiceAccounts create CertificateRequests within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A kubeconfig for the admin kubeconfig's server and CA, authenticating
/// with `token` only.
pub fn write_token_kubeconfig(admin: &Path, token: &str, path: &Path) {
    let config = kube::config::Kubeconfig::read_from(admin).expect("the admin kubeconfig parses");
    let cluster = config
        .clusters
        .first()
        .and_then(|c| c.cluster.clone())
        .expect("the admin kubeconfig names a cluster");
    let ca_data = match (
        &cluster.certificate_authority_data,
        &cluster.certificate_authority,
    ) {
        (Some(data), _) => data.clone(),
        (None, Some(file)) => {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .encode(std::fs::read(file).expect("the cluster CA file"))
        }
        (None, None) => panic!("the admin kubeconfig has no cluster CA"),
    };
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "real", "cluster": {
            "server": cluster.server.expect("the admin kubeconfig names a server"),
            "certificate-authority-data": ca_data,
        }}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "real", "user": "sa"}}],
        "current-context": "sa",
    });
    std::fs::write(path, serde_json::to_vec_pretty(&kubeconfig).unwrap()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}
