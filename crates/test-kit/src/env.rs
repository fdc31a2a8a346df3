//! The node environment: an API server (real or sandbox), the cluster
//! side, the real `cert-csi node` binary on a real unix socket, and the
//! simulated kubelet that sends exactly what the kubelet sends.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cert_csi::api::{CertificateRequest, ClusterIssuer, Issuer};
use cert_csi::csi::proto::identity_client::IdentityClient;
use cert_csi::csi::proto::node_client::NodeClient;
use cert_csi::csi::proto::{NodeUnpublishVolumeRequest, ProbeRequest};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use kube_sandbox::{Sandbox, SandboxConfig};
use serde_json::json;
use tonic::Status;
use tonic::transport::Channel;

use crate::real::{self, Backend, RealCluster};

use crate::assertions::*;
use crate::cluster::*;

/// How long the simulated kubelet waits for one CSI call before the test
/// fails. The real kubelet allows about two minutes; tests must not hang.
const CALL_LIMIT: Duration = Duration::from_secs(90);

pub struct Options {
    /// `--publish-timeout` of the node plugin (Go duration).
    pub publish_timeout: &'static str,
    pub policy: Policy,
    /// Run cert-csi's controller in process with the test CA. Off for
    /// tests that run their own controller (e.g. as a ServiceAccount).
    pub controller: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            publish_timeout: "5s",
            policy: Policy::Approve,
            controller: true,
        }
    }
}

/// What [`Env::stop_api`] kept of the API server's objects.
pub struct ApiSnapshot {
    /// With the real backend: the stopped kube-apiserver, to start again
    /// with the same command line. etcd keeps every object, so the fields
    /// below stay empty.
    pub stopped: Option<real::Stopped>,
    pub addr: std::net::SocketAddr,
    /// The resourceVersion when the snapshot was taken.
    pub resource_version: u64,
    pub namespaces: Vec<Namespace>,
    pub pods: Vec<Pod>,
    pub requests: Vec<CertificateRequest>,
    /// The CA Secrets and issuers the controller signs with. Certificates
    /// are not kept: the CA's Secret is, and the CA must not change.
    pub secrets: Vec<k8s_openapi::api::core::v1::Secret>,
    pub issuers: Vec<Issuer>,
    pub cluster_issuers: Vec<ClusterIssuer>,
}

pub use cert_csi::csi::kubelet::{
    Capability, PodRef, Volume as VolumeRequest, volume_id as kubelet_volume_id,
};

/// Reading a volume's files the way the pod does, failing the test with the
/// path when one cannot be read.
pub trait PodFiles {
    fn read(&self, name: &str) -> Vec<u8>;
    fn read_string(&self, name: &str) -> String;
}

impl PodFiles for VolumeRequest {
    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.file(name))
            .unwrap_or_else(|e| panic!("reading {}: {e}", self.file(name).display()))
    }

    fn read_string(&self, name: &str) -> String {
        String::from_utf8(self.read(name)).expect("PEM files are text")
    }
}

pub struct Env {
    /// The canonical temporary directory holding everything below.
    pub base: PathBuf,
    pub kubeconfig: PathBuf,
    pub socket: PathBuf,
    pub data_root: PathBuf,
    pub kubelet_root: PathBuf,
    /// stdout and stderr of the node plugin (`--log-level debug`).
    pub log_path: PathBuf,
    pub node_id: String,
    pub client: Client,
    pub cluster: Cluster,
    node: NodeClient<Channel>,
    plugin: Option<Child>,
    publish_timeout: &'static str,
    /// More `cert-csi node` flags, after the harness's own.
    extra_args: Vec<String>,
    /// The plugin's `--kubeconfig` when not the sandbox's admin one (see
    /// [`Env::restart_plugin_as`]).
    plugin_kubeconfig: Option<PathBuf>,
    sandbox: Option<Sandbox>,
    /// The real control plane when `CERT_CSI_TEST_API=real`.
    real: Option<RealCluster>,
    _dir: tempfile::TempDir,
}

impl Env {
    pub async fn start() -> Env {
        Env::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Env {
        Env::start_with_args(options, &[]).await
    }

    /// Like [`Env::start_with`], passing `extra_args` to `cert-csi node`
    /// (e.g. `--max-request-rate 100`).
    pub async fn start_with_args(options: Options, extra_args: &[&str]) -> Env {
        Env::start_on(Backend::from_env(), options, extra_args, Signer::CertCsi).await
    }

    /// Like [`Env::start_with_args`], with `signer` as the controller that
    /// signs (when `options.controller`).
    pub async fn start_signed_by(options: Options, extra_args: &[&str], signer: Signer) -> Env {
        Env::start_on(Backend::from_env(), options, extra_args, signer).await
    }

    /// Like [`Env::start_with_args`], always on the sandbox: for a test that
    /// cannot run on the real server yet. `why` says why; it is printed, so
    /// a run shows what the real server did not judge.
    pub async fn start_on_sandbox(options: Options, extra_args: &[&str], why: &str) -> Env {
        if Backend::from_env() == Backend::Real {
            eprintln!("on the sandbox, not the real API server: {why}");
        }
        Env::start_on(Backend::Sandbox, options, extra_args, Signer::CertCsi).await
    }

    /// Like [`Env::start_with_args`], without starting the node plugin:
    /// for a test that runs another node plugin first (e.g. cert-manager's
    /// csi-driver, see [`crate::peers::UpstreamDriver`]). [`Env::start_plugin`] starts
    /// it.
    pub async fn start_without_plugin(options: Options, extra_args: &[&str]) -> Env {
        Env::start_idle(Backend::from_env(), options, extra_args, Signer::CertCsi).await
    }

    async fn start_on(
        backend: Backend,
        options: Options,
        extra_args: &[&str],
        signer: Signer,
    ) -> Env {
        let mut env = Env::start_idle(backend, options, extra_args, signer).await;
        env.plugin = Some(env.spawn_plugin());
        env.wait_ready().await;
        env
    }

    async fn start_idle(
        backend: Backend,
        options: Options,
        extra_args: &[&str],
        signer: Signer,
    ) -> Env {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path().canonicalize().expect("canonical tempdir");
        let (server, client, kubeconfig) = real::ApiServer::start_in(backend, &base, 10_000).await;
        let (sandbox, real) = match server {
            real::ApiServer::Sandbox(sandbox) => (Some(sandbox), None),
            real::ApiServer::Real(real, _) => (None, Some(real)),
        };
        let cluster = match (options.controller, signer) {
            (true, Signer::CertManager) => {
                Cluster::start_with_cert_manager(client.clone(), &kubeconfig, options.policy).await
            }
            (controller, _) => Cluster::start(client.clone(), options.policy, controller).await,
        };

        let socket = base.join("plugin").join("csi.sock");
        std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
        let data_root = base.join("data");
        let kubelet_root = base.join("kubelet");
        std::fs::create_dir_all(kubelet_root.join("pods")).unwrap();
        let log_path = test_log_path("node");
        let node_id = "node-e2e-1".to_string();
        File::create(&log_path).expect("log file");
        Env {
            base,
            kubeconfig,
            socket,
            data_root,
            kubelet_root,
            log_path,
            node_id,
            client,
            cluster,
            // Replaced once the socket answers; a lazy channel never
            // connects by itself.
            node: NodeClient::new(
                tonic::transport::Endpoint::from_static("http://[::1]:1").connect_lazy(),
            ),
            plugin: None,
            publish_timeout: options.publish_timeout,
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            plugin_kubeconfig: None,
            sandbox,
            real,
            _dir: dir,
        }
    }

    /// Adds `cert-csi node` flags for every later start of the plugin.
    pub fn add_plugin_args(&mut self, args: &[&str]) {
        self.extra_args.extend(args.iter().map(|a| a.to_string()));
    }

    /// Starts `cert-csi node`, appending its output to the log file.
    fn spawn_plugin(&self) -> Child {
        let log = File::options()
            .append(true)
            .open(&self.log_path)
            .expect("log file");
        Command::new(crate::cert_csi_binary())
            .args(["--log-level", "debug", "node"])
            .arg("--endpoint")
            .arg(format!("unix://{}", self.socket.display()))
            .args(["--node-id", &self.node_id])
            .arg("--data-root")
            .arg(&self.data_root)
            .arg("--kubelet-root-dir")
            .arg(&self.kubelet_root)
            .arg("--kubeconfig")
            .arg(self.plugin_kubeconfig.as_ref().unwrap_or(&self.kubeconfig))
            .args(["--publish-timeout", self.publish_timeout])
            // A free port per plugin: tests run in parallel.
            .args(["--metrics-address", "127.0.0.1:0"])
            // Tests compress certificate lifetimes to seconds; the renewal
            // guard's one-minute default would hold every rotation back.
            // Tests of the guard pass their own interval.
            .args(
                (!self
                    .extra_args
                    .iter()
                    .any(|a| a == "--min-renewal-interval"))
                .then_some(["--min-renewal-interval", "1s"])
                .into_iter()
                .flatten(),
            )
            .args(&self.extra_args)
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn cert-csi node")
    }

    /// Stops the plugin (SIGTERM, as a DaemonSet rollout does) and starts a
    /// new one on the same data root and socket. Mounts stay, as they do
    /// when a real plugin container restarts.
    pub async fn restart_plugin(&mut self) {
        self.stop_plugin();
        self.plugin = Some(self.spawn_plugin());
        self.wait_ready().await;
    }

    /// Restarts the plugin with `kubeconfig` (e.g. a ServiceAccount
    /// token's) instead of the sandbox's admin one.
    pub async fn restart_plugin_as(&mut self, kubeconfig: PathBuf) {
        self.plugin_kubeconfig = Some(kubeconfig);
        self.restart_plugin().await;
    }

    /// `http://<address>` of the running plugin's `/metrics`, `/healthz`
    /// and `/readyz`, from the address its log announced last.
    pub fn metrics_url(&self) -> String {
        let log = self.log();
        let address = log
            .lines()
            .rev()
            .find_map(|line| {
                let rest = line.split("metrics_address").nth(1)?;
                let value = rest.trim_start_matches(['=', '"', ':']);
                let end = value
                    .find(|c: char| c.is_whitespace() || c == '"' || c == ',')
                    .unwrap_or(value.len());
                Some(value[..end].to_owned())
            })
            .unwrap_or_else(|| panic!("the plugin's log names no metrics_address:\n{log}"));
        format!("http://{address}")
    }

    /// Kills the plugin with SIGKILL (by pid), as an OOM kill or a node
    /// crash would, and reaps it. Nothing runs on the way out.
    pub fn kill_plugin(&mut self) {
        let Some(mut child) = self.plugin.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL)
            .expect("SIGKILL the node plugin");
        let _ = child.wait();
    }

    /// Starts the plugin again (after [`Env::kill_plugin`]) and waits for
    /// Probe to report ready; returns how long that took.
    pub async fn start_plugin(&mut self) -> Duration {
        assert!(self.plugin.is_none(), "the plugin is still running");
        let started = Instant::now();
        self.plugin = Some(self.spawn_plugin());
        self.wait_ready().await;
        started.elapsed()
    }

    /// Stops the API server, keeping its namespaces, pods and
    /// CertificateRequests (with status) in a snapshot read through the
    /// real client. The sandbox keeps no state across a stop, so
    /// [`Env::start_api`] re-creates these objects: names, specs and
    /// status survive; uids, resourceVersions and creation times are new,
    /// as after an etcd restore.
    pub async fn stop_api(&mut self) -> ApiSnapshot {
        if let Some(real) = &self.real {
            return ApiSnapshot {
                stopped: Some(real.stop_apiserver()),
                addr: "127.0.0.1:0".parse().unwrap(),
                resource_version: 0,
                namespaces: Vec::new(),
                pods: Vec::new(),
                requests: Vec::new(),
                secrets: Vec::new(),
                issuers: Vec::new(),
                cluster_issuers: Vec::new(),
            };
        }
        let namespaces: Vec<Namespace> = Api::<Namespace>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .expect("snapshot namespaces")
            .items;
        let pods: Vec<Pod> = Api::<Pod>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .expect("snapshot pods")
            .items;
        let requests = Api::<CertificateRequest>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .expect("snapshot requests");
        let resource_version: u64 = requests
            .metadata
            .resource_version
            .as_deref()
            .and_then(|v| v.parse().ok())
            .expect("the list's resourceVersion is a number in the sandbox");
        let requests = requests.items;
        let secrets = Api::<k8s_openapi::api::core::v1::Secret>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .expect("snapshot secrets")
            .items;
        let issuers = Api::<Issuer>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .expect("snapshot issuers")
            .items;
        let cluster_issuers = Api::<ClusterIssuer>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .expect("snapshot cluster issuers")
            .items;
        let sandbox = self.sandbox.take().expect("the API server is running");
        let addr = sandbox.addr();
        sandbox.shutdown().await;
        ApiSnapshot {
            stopped: None,
            addr,
            resource_version,
            namespaces,
            pods,
            requests,
            secrets,
            issuers,
            cluster_issuers,
        }
    }

    /// Starts the API server again on the same address and restores the
    /// snapshot (see [`Env::stop_api`]).
    pub async fn start_api(&mut self, snapshot: ApiSnapshot) {
        if let Some(stopped) = snapshot.stopped {
            self.real
                .as_ref()
                .expect("a real snapshot comes from a real backend")
                .start_apiserver(stopped)
                .await;
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let sandbox = loop {
            match Sandbox::start(SandboxConfig {
                listen: snapshot.addr,
                kubeconfig: Some(self.kubeconfig.clone()),
                crds: cert_csi::api::crds(),
                watch_window: 10_000,
            })
            .await
            {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    eprintln!(
                        "restarting the API server on {}: {e:#}; retrying",
                        snapshot.addr
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("restarting the API server on {}: {e:#}", snapshot.addr),
            }
        };
        let client = sandbox.client();
        fn fresh(meta: &mut kube::api::ObjectMeta) {
            meta.uid = None;
            meta.resource_version = None;
            meta.creation_timestamp = None;
            meta.managed_fields = None;
        }
        for mut ns in snapshot.namespaces {
            fresh(&mut ns.metadata);
            ns.status = None;
            let api: Api<Namespace> = Api::all(client.clone());
            match api.create(&PostParams::default(), &ns).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => panic!("restoring namespace {}: {e}", ns.name_any()),
            }
        }
        // Issuers come back without status: the controller marks them
        // Ready again once it sees their Secrets.
        for mut secret in snapshot.secrets {
            fresh(&mut secret.metadata);
            let api = Api::namespaced(client.clone(), &secret.namespace().unwrap());
            create_or_keep(&api, &secret, "Secret").await;
        }
        for mut issuer in snapshot.issuers {
            fresh(&mut issuer.metadata);
            issuer.status = None;
            let api = Api::namespaced(client.clone(), &issuer.namespace().unwrap());
            create_or_keep(&api, &issuer, "Issuer").await;
        }
        for mut issuer in snapshot.cluster_issuers {
            fresh(&mut issuer.metadata);
            issuer.status = None;
            create_or_keep(&Api::all(client.clone()), &issuer, "ClusterIssuer").await;
        }
        for mut pod in snapshot.pods {
            fresh(&mut pod.metadata);
            let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap());
            api.create(&PostParams::default(), &pod)
                .await
                .unwrap_or_else(|e| panic!("restoring pod {}: {e}", pod.name_any()));
        }
        for mut cr in snapshot.requests {
            fresh(&mut cr.metadata);
            let status = cr.status.take();
            let api: Api<CertificateRequest> =
                Api::namespaced(client.clone(), &cr.namespace().unwrap());
            api.create(&PostParams::default(), &cr)
                .await
                .unwrap_or_else(|e| panic!("restoring request {}: {e}", cr.name_any()));
            if let Some(status) = status {
                api.patch_status(
                    &cr.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&json!({ "status": status })),
                )
                .await
                .unwrap_or_else(|e| panic!("restoring status of {}: {e}", cr.name_any()));
            }
        }
        // A real API server's resourceVersion never goes back (etcd keeps
        // counting). The new sandbox starts from zero, and a watch resuming
        // from the old version would wait for versions it already handed
        // out; advance it past the snapshot as etcd would be.
        let configmaps: Api<k8s_openapi::api::core::v1::ConfigMap> =
            Api::namespaced(client.clone(), "default");
        let _ = Api::<Namespace>::all(client.clone())
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap(),
            )
            .await;
        let mut version = 0u64;
        let mut n = 0u64;
        while version <= snapshot.resource_version {
            n += 1;
            let cm = configmaps
                .patch(
                    "resource-version-filler",
                    &PatchParams::apply("cert-csi-tests").force(),
                    &Patch::Apply(json!({
                        "apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": "resource-version-filler"},
                        "data": {"n": n.to_string()},
                    })),
                )
                .await
                .expect("advancing the resourceVersion");
            version = cm
                .metadata
                .resource_version
                .as_deref()
                .and_then(|v| v.parse().ok())
                .expect("numeric resourceVersion");
        }
        self.sandbox = Some(sandbox);
    }

    /// Waits for the socket, then for Probe to report ready (the plugin
    /// reached the API server).
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let channel = loop {
            self.assert_plugin_running();
            if self.socket.exists()
                && let Ok(channel) = cert_csi::csi::client::connect(&self.socket).await
            {
                break channel;
            }
            assert!(
                Instant::now() < deadline,
                "the node plugin did not open {} within 60s; log:\n{}",
                self.socket.display(),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        let mut identity = IdentityClient::new(channel.clone());
        loop {
            self.assert_plugin_running();
            let ready = identity
                .probe(ProbeRequest {})
                .await
                .ok()
                .and_then(|r| r.into_inner().ready);
            if ready == Some(true) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "Probe did not report ready within 60s; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        self.node = NodeClient::new(channel);
    }

    fn assert_plugin_running(&mut self) {
        if let Some(child) = self.plugin.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            panic!(
                "the node plugin exited early ({status}); log:\n{}",
                self.log()
            );
        }
    }

    /// The plugin's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The plugin's process id (for tests that signal it).
    pub fn plugin_pid(&self) -> Option<u32> {
        self.plugin.as_ref().map(Child::id)
    }

    pub fn sandbox(&self) -> &Sandbox {
        self.sandbox.as_ref().expect(
            "this test reads the sandbox's own records; run it with CERT_CSI_TEST_API=sandbox",
        )
    }

    // -- the simulated kubelet ---------------------------------------------

    /// Creates the namespace if needed and a Pod object, as the API server
    /// stores it (the uid is the server's).
    pub async fn create_pod(&self, namespace: &str, name: &str, service_account: &str) -> PodRef {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let ns: Namespace = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}
        }))
        .unwrap();
        match namespaces.create(&PostParams::default(), &ns).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => panic!("creating namespace {namespace}: {e}"),
        }
        self.cluster.prepare_namespace(namespace).await;
        // The real API server's ServiceAccount admission refuses a pod
        // whose ServiceAccount does not exist.
        self.create_service_account(namespace, service_account)
            .await;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "serviceAccountName": service_account,
                "nodeName": self.node_id,
                "containers": [{"name": "app", "image": "registry.example/app:1"}],
            },
        }))
        .unwrap();
        let created = pods
            .create(&PostParams::default(), &pod)
            .await
            .unwrap_or_else(|e| panic!("creating pod {namespace}/{name}: {e}"));
        PodRef {
            namespace: namespace.to_string(),
            name: created.name_any(),
            uid: created.uid().expect("the API server sets metadata.uid"),
            service_account: service_account.to_string(),
        }
    }

    /// Creates ServiceAccount `namespace/name` (the namespace must exist,
    /// e.g. from [`Env::create_pod`]); an existing one is fine.
    pub async fn create_service_account(&self, namespace: &str, name: &str) {
        let api: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(self.client.clone(), namespace);
        let sa = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": name, "namespace": namespace},
        }))
        .unwrap();
        match api.create(&PostParams::default(), &sa).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => panic!("creating ServiceAccount {namespace}/{name}: {e}"),
        }
    }

    /// The kubelet's `csi.storage.k8s.io/serviceAccount.tokens` value for
    /// `pod`: a token for each audience ("" is the API server's default),
    /// bound to the pod, made through the TokenRequest API as the kubelet
    /// makes it. The ServiceAccount must exist.
    pub async fn kubelet_tokens(&self, pod: &PodRef, audiences: &[&str]) -> String {
        use k8s_openapi::api::authentication::v1::{
            BoundObjectReference, TokenRequest, TokenRequestSpec,
        };
        let api: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(self.client.clone(), &pod.namespace);
        let mut map = serde_json::Map::new();
        for audience in audiences {
            let request = TokenRequest {
                spec: TokenRequestSpec {
                    audiences: if audience.is_empty() {
                        Vec::new()
                    } else {
                        vec![audience.to_string()]
                    },
                    bound_object_ref: Some(BoundObjectReference {
                        api_version: Some("v1".into()),
                        kind: Some("Pod".into()),
                        name: Some(pod.name.clone()),
                        uid: Some(pod.uid.clone()),
                    }),
                    expiration_seconds: Some(3600),
                },
                ..Default::default()
            };
            let answer = api
                .create_token_request(&pod.service_account, &PostParams::default(), &request)
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "TokenRequest for {}/{}: {e}",
                        pod.namespace, pod.service_account
                    )
                });
            let status = answer.status.expect("a TokenRequest answer has a status");
            map.insert(
                audience.to_string(),
                json!({
                    "token": status.token,
                    "expirationTimestamp": status.expiration_timestamp.0.to_string(),
                }),
            );
        }
        serde_json::Value::Object(map).to_string()
    }

    /// A publish request for volume `volume_name` of `pod` with the user's
    /// `attributes`, plus what the kubelet adds. The kubelet creates the
    /// target's parent directory, never `mount` itself.
    pub fn volume(
        &self,
        pod: &PodRef,
        volume_name: &str,
        attributes: &[(&str, &str)],
    ) -> VolumeRequest {
        let volume =
            cert_csi::csi::kubelet::volume(&self.kubelet_root, pod, volume_name, attributes);
        volume
            .create_parent()
            .expect("the kubelet's volume directory");
        volume
    }

    pub async fn publish(&self, volume: &VolumeRequest) -> Result<(), Status> {
        let mut node = self.node.clone();
        let call = node.node_publish_volume(volume.publish_request());
        match tokio::time::timeout(CALL_LIMIT, call).await {
            Ok(result) => result.map(|_| ()),
            Err(_) => panic!(
                "NodePublishVolume of {} did not answer within {CALL_LIMIT:?}; log:\n{}",
                volume.volume_id,
                self.log()
            ),
        }
    }

    /// Publishes and panics, with the plugin's log, on failure.
    pub async fn publish_ok(&self, volume: &VolumeRequest) {
        if let Err(status) = self.publish(volume).await {
            panic!(
                "publish of {} failed: {:?}: {}\nwebhook violations: {:?}\napprover errors: {:?}\nlog:\n{}",
                volume.volume_name,
                status.code(),
                status.message(),
                self.cluster.violations(),
                self.cluster.errors(),
                self.log()
            );
        }
    }

    pub async fn unpublish(&self, volume_id: &str, target_path: &str) -> Result<(), Status> {
        let mut node = self.node.clone();
        let call = node.node_unpublish_volume(NodeUnpublishVolumeRequest {
            volume_id: volume_id.to_string(),
            target_path: target_path.to_string(),
        });
        match tokio::time::timeout(CALL_LIMIT, call).await {
            Ok(result) => result.map(|_| ()),
            Err(_) => {
                panic!("NodeUnpublishVolume of {volume_id} did not answer within {CALL_LIMIT:?}")
            }
        }
    }

    // -- inspection ----------------------------------------------------------

    pub async fn requests(&self, namespace: &str) -> Vec<CertificateRequest> {
        let api: Api<CertificateRequest> = Api::namespaced(self.client.clone(), namespace);
        api.list(&ListParams::default())
            .await
            .unwrap_or_else(|e| panic!("listing CertificateRequests in {namespace}: {e}"))
            .items
    }

    pub async fn count_requests(&self, namespace: &str) -> usize {
        self.requests(namespace).await.len()
    }

    /// The requests labelled with this volume's id hash.
    pub async fn requests_for(&self, volume: &VolumeRequest) -> Vec<CertificateRequest> {
        let hash = cert_csi::store::id_hash(&volume.volume_id);
        self.requests(&volume.pod.namespace)
            .await
            .into_iter()
            .filter(|r| r.labels().get(cert_csi::issuance::VOLUME_LABEL) == Some(&hash))
            .collect()
    }

    /// The one request made for this volume.
    pub async fn only_request(&self, volume: &VolumeRequest) -> CertificateRequest {
        let mut list = self.requests_for(volume).await;
        assert_eq!(
            list.len(),
            1,
            "expected exactly one CertificateRequest for {}, found {:?}",
            volume.volume_name,
            list.iter().map(ResourceExt::name_any).collect::<Vec<_>>()
        );
        list.remove(0)
    }

    /// Volume directories the plugin keeps under `<data_root>/volumes`.
    pub fn volume_dirs(&self) -> Vec<String> {
        match std::fs::read_dir(self.data_root.join("volumes")) {
            Ok(entries) => entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => panic!("listing {}: {e}", self.data_root.display()),
        }
    }

    /// The node state the plugin keeps for a volume, as raw JSON.
    pub fn state_json(&self, volume: &VolumeRequest) -> Option<serde_json::Value> {
        let path = self
            .data_root
            .join("volumes")
            .join(&volume.volume_id)
            .join("state.json");
        match std::fs::read(&path) {
            Ok(bytes) => Some(serde_json::from_slice(&bytes).expect("state.json is JSON")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => panic!("reading {}: {e}", path.display()),
        }
    }

    /// Asserts a volume left nothing behind: no mount at or below its
    /// target, no node state, no CertificateRequest.
    pub async fn assert_no_trace(&self, volume: &VolumeRequest) {
        let parent = volume
            .target()
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let mounts = mounts_under(&parent);
        assert!(
            mounts.is_empty(),
            "{}: still mounted: {mounts:?}",
            volume.volume_name
        );
        let state_dir = self.data_root.join("volumes").join(&volume.volume_id);
        assert!(
            !state_dir.exists(),
            "{}: node state left at {}",
            volume.volume_name,
            state_dir.display()
        );
        let left = self.requests_for(volume).await;
        assert!(
            left.is_empty(),
            "{}: CertificateRequests left: {:?}",
            volume.volume_name,
            left.iter().map(ResourceExt::name_any).collect::<Vec<_>>()
        );
    }

    /// Lines of the plugin's log that contain `PRIVATE KEY`.
    pub fn private_key_lines_in_log(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains("PRIVATE KEY"))
            .map(str::to_string)
            .collect()
    }

    /// The checks every test ends with: no request broke cert-manager's
    /// webhook rules, no key material on persistent disk under the data
    /// root, no private key in the plugin's log. Then shuts down.
    pub async fn finish(mut self) {
        let violations = self.cluster.violations();
        assert!(
            violations.is_empty(),
            "CertificateRequests that cert-manager's webhook would refuse:\n{}",
            violations.join("\n")
        );
        if self.data_root.exists() {
            cert_csi::store::assert_no_key_material_outside_tmpfs(&self.data_root)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let leaked = self.private_key_lines_in_log();
        assert!(
            leaked.is_empty(),
            "PRIVATE KEY in the plugin's log: {leaked:?}"
        );
        assert_no_secrets_in_log(&self.log_path);
        self.stop_plugin();
        self.cluster.stop().await;
        if let Some(sandbox) = self.sandbox.take() {
            sandbox.shutdown().await;
        }
        // Dropping it runs hack/kube down.
        self.real.take();
    }

    /// Which API server this environment runs against.
    pub fn backend(&self) -> Backend {
        if self.real.is_some() {
            Backend::Real
        } else {
            Backend::Sandbox
        }
    }

    /// The real control plane, when this environment runs on one.
    pub fn real(&self) -> Option<&RealCluster> {
        self.real.as_ref()
    }

    /// SIGTERM, a grace period, then SIGKILL; always reaped.
    fn stop_plugin(&mut self) {
        if let Some(mut child) = self.plugin.take() {
            crate::stop_child(&mut child, Duration::from_secs(5));
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            eprintln!(
                "---- last lines of the node plugin's log ({}) ----",
                self.log_path.display()
            );
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        self.stop_plugin();
        // The plugin leaves volumes mounted when it stops (a restart must
        // find them); the test unmounts them so the tempdir can go.
        // Deepest first, so bind mounts go before their tmpfs.
        let mut below: Vec<PathBuf> = mounts_under(&self.base)
            .into_iter()
            .map(|m| m.mount_point)
            .collect();
        below.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for p in below {
            let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}
