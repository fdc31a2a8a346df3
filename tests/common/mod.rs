//! Shared harness for end-to-end tests of the node plugin.
//!
//! Every piece is real except the signer: an in-process sandbox API server,
//! the real `cert-csi node` binary as a subprocess on a real unix socket,
//! real tmpfs and bind mounts, and a simulated kubelet that sends exactly
//! what the kubelet sends (reference/csi-driver-compat.md §1). The signer
//! is a test double for the cluster controller, which a later issue adds.
//!
//! Each test file includes this module, and not every file uses every
//! helper.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cert_csi::api::conditions::{messages, reasons, types};
use cert_csi::api::{
    CertificateRequest, CertificateRequestCondition, CertificateRequestStatus, ConditionStatus,
    PemBytes,
};
use cert_csi::csi::proto::identity_client::IdentityClient;
use cert_csi::csi::proto::node_client::NodeClient;
use cert_csi::csi::proto::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
use cert_csi::csi::proto::{
    NodePublishVolumeRequest, NodeUnpublishVolumeRequest, ProbeRequest, VolumeCapability,
    volume_capability,
};
use cert_csi::pki::{
    CsrOptions, Curve, KeyAlgorithm, PrivateKey, SanSpec, SignParams, SubjectSpec, Usage,
};
use cert_csi::sandbox::{Sandbox, SandboxConfig};
use cert_csi::store::MountEntry;
use cert_csi::volume::kubelet;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tonic::Status;
use tonic::transport::Channel;

/// How long the simulated kubelet waits for one CSI call before the test
/// fails. The real kubelet allows about two minutes; tests must not hang.
const CALL_LIMIT: Duration = Duration::from_secs(90);

/// True when the test may run. Mount tests need root: under `CI=true` a
/// missing root fails the test (a skipped suite would hide a broken
/// runner); elsewhere it skips with a message.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test} needs root for tmpfs and bind mounts, and CI=true");
    }
    eprintln!("skipping {test}: not root (the node plugin's mounts need CAP_SYS_ADMIN)");
    false
}

// ---------------------------------------------------------------------------
// The signer (a test double for the cluster controller)
// ---------------------------------------------------------------------------

/// What the test signer does with each new CertificateRequest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Approve (reason cert-manager.io), then sign with the test CA.
    Approve,
    /// Approve this many seconds after first seeing the request, then sign.
    ApproveAfter(Duration),
    /// Denied=True with this reason and message; Ready=False reason Denied.
    Deny { reason: String, message: String },
    /// Approve, then Ready=False reason Failed with this message.
    Fail { message: String },
    /// Leave requests alone, as when no approver runs.
    Ignore,
}

struct SignerShared {
    client: Client,
    policy: Mutex<Policy>,
    /// Re-examines every request, e.g. after a policy change; the watch
    /// alone only reacts to changes.
    wake: tokio::sync::Notify,
    ca_pem: String,
    ca_key: PrivateKey,
    /// Webhook-rule violations, one line each, by request.
    violations: Mutex<Vec<String>>,
    /// uid → whether the request passed the webhook rules.
    checked: Mutex<HashMap<String, bool>>,
    /// uids whose delayed approval is already scheduled.
    delayed: Mutex<HashSet<String>>,
    /// uids already signed; a request is signed at most once.
    signed: Mutex<HashSet<String>>,
    errors: Mutex<Vec<String>>,
}

/// A stand-in for the cert-manager approver and CA issuer, driven by a
/// watch on CertificateRequests in every namespace. The real controller
/// comes with a later issue; until then this plays its part, checks every
/// request against cert-manager's webhook rules, and records violations.
pub struct Signer {
    shared: Arc<SignerShared>,
    task: tokio::task::JoinHandle<()>,
}

impl Signer {
    pub fn start(client: Client, policy: Policy) -> Signer {
        let (ca_pem, ca_key) = make_ca();
        let shared = Arc::new(SignerShared {
            client,
            policy: Mutex::new(policy),
            wake: tokio::sync::Notify::new(),
            ca_pem,
            ca_key,
            violations: Mutex::default(),
            checked: Mutex::default(),
            delayed: Mutex::default(),
            signed: Mutex::default(),
            errors: Mutex::default(),
        });
        let task = tokio::spawn(run_signer(shared.clone()));
        Signer { shared, task }
    }

    pub fn set_policy(&self, policy: Policy) {
        *self.shared.policy.lock().unwrap() = policy;
        self.shared.wake.notify_one();
    }

    /// The test CA's certificate (PEM), which signs every leaf.
    pub fn ca_pem(&self) -> &str {
        &self.shared.ca_pem
    }

    pub fn violations(&self) -> Vec<String> {
        self.shared.violations.lock().unwrap().clone()
    }

    /// How many distinct requests were checked against the webhook rules.
    pub fn checked(&self) -> usize {
        self.shared.checked.lock().unwrap().len()
    }

    /// How many distinct requests were signed.
    pub fn signed(&self) -> usize {
        self.shared.signed.lock().unwrap().len()
    }

    /// Stops watching; call before the API server goes away.
    pub fn stop(&self) {
        self.task.abort();
    }

    /// API errors the signer hit (other than a request deleted under it).
    pub fn errors(&self) -> Vec<String> {
        self.shared.errors.lock().unwrap().clone()
    }
}

impl Drop for Signer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A self-signed ECDSA root made with cert-csi's own pki module.
fn make_ca() -> (String, PrivateKey) {
    let key = PrivateKey::generate(KeyAlgorithm::Ecdsa(Curve::P256)).expect("CA key");
    let subject = SubjectSpec {
        common_name: Some("cert-csi test root CA".into()),
        organizations: vec!["cert-csi tests".into()],
        ..Default::default()
    };
    let csr = cert_csi::pki::build_csr(&key, &subject, &SanSpec::default(), &CsrOptions::default())
        .expect("CA CSR");
    let signed = cert_csi::pki::sign_self_signed(
        csr.pem.as_bytes(),
        &key,
        &SignParams {
            is_ca: true,
            duration: Some(Duration::from_secs(365 * 24 * 3600)),
            ..Default::default()
        },
    )
    .expect("self-signed CA");
    (signed.certificate_pem, key)
}

async fn run_signer(shared: Arc<SignerShared>) {
    let api: Api<CertificateRequest> = Api::all(shared.client.clone());
    // The node plugin's watch backoff (1 s to 5 s), so after an API
    // outage the signer is back as soon as the plugin is.
    let mut stream = watcher::watcher(api.clone(), watcher::Config::default())
        .backoff(cert_csi::issuance::tracker::WatchBackoff::default())
        .boxed();
    loop {
        tokio::select! {
            event = stream.next() => match event {
                Some(Ok(Event::Apply(cr) | Event::InitApply(cr))) => handle(&shared, cr).await,
                Some(Ok(_)) => {}
                Some(Err(e)) => eprintln!("test signer: watch error: {e}"),
                None => return,
            },
            _ = shared.wake.notified() => match api.list(&ListParams::default()).await {
                Ok(list) => {
                    for cr in list.items {
                        handle(&shared, cr).await;
                    }
                }
                Err(e) => shared.errors.lock().unwrap().push(format!("list: {e}")),
            },
        }
    }
}

fn usages_of(cr: &CertificateRequest) -> Result<Vec<Usage>, String> {
    cr.spec
        .usages
        .iter()
        .flatten()
        .map(|n| Usage::from_name(n).ok_or_else(|| format!("spec.usages: unknown usage {n:?}")))
        .collect()
}

/// cert-manager's webhook rules, run once per request.
fn passes_webhook(shared: &SignerShared, cr: &CertificateRequest) -> bool {
    let uid = cr.uid().unwrap_or_default();
    if let Some(ok) = shared.checked.lock().unwrap().get(&uid) {
        return *ok;
    }
    let id = format!("{}/{}", cr.namespace().unwrap_or_default(), cr.name_any());
    let result = usages_of(cr).and_then(|usages| {
        cert_csi::pki::check_request(
            cr.spec.request.as_bytes(),
            &usages,
            cr.spec.is_ca.unwrap_or(false),
        )
        .map_err(|e| e.to_string())
    });
    let ok = match result {
        Ok(()) => true,
        Err(e) => {
            shared.violations.lock().unwrap().push(format!("{id}: {e}"));
            false
        }
    };
    shared.checked.lock().unwrap().insert(uid, ok);
    ok
}

async fn handle(shared: &Arc<SignerShared>, cr: CertificateRequest) {
    if cr.is_finished() || cr.metadata.deletion_timestamp.is_some() {
        return;
    }
    // A request the webhook would refuse is never acted on: a real API
    // server would not have stored it.
    if !passes_webhook(shared, &cr) {
        return;
    }
    let policy = shared.policy.lock().unwrap().clone();
    let result = match policy {
        Policy::Ignore => Ok(()),
        Policy::Deny { reason, message } if !cr.is_denied() => {
            set_conditions(
                shared,
                &cr,
                vec![
                    CertificateRequestCondition::new(
                        types::DENIED,
                        ConditionStatus::True,
                        &reason,
                        message,
                    ),
                    CertificateRequestCondition::new(
                        types::READY,
                        ConditionStatus::False,
                        reasons::DENIED,
                        "The CertificateRequest was denied by an approval controller",
                    ),
                ],
                None,
                false,
            )
            .await
        }
        Policy::Deny { .. } => Ok(()),
        Policy::Fail { message } => {
            set_conditions(
                shared,
                &cr,
                vec![
                    approved(),
                    CertificateRequestCondition::new(
                        types::READY,
                        ConditionStatus::False,
                        reasons::FAILED,
                        message,
                    ),
                ],
                None,
                true,
            )
            .await
        }
        Policy::Approve | Policy::ApproveAfter(_) if cr.is_approved() => sign(shared, &cr).await,
        Policy::Approve => set_conditions(shared, &cr, vec![approved()], None, false).await,
        Policy::ApproveAfter(delay) => {
            let uid = cr.uid().unwrap_or_default();
            if shared.delayed.lock().unwrap().insert(uid) {
                let shared = shared.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    if let Err(e) =
                        set_conditions(&shared, &cr, vec![approved()], None, false).await
                    {
                        shared.errors.lock().unwrap().push(e);
                    }
                });
            }
            Ok(())
        }
    };
    if let Err(e) = result {
        shared.errors.lock().unwrap().push(e);
    }
}

fn approved() -> CertificateRequestCondition {
    CertificateRequestCondition::new(
        types::APPROVED,
        ConditionStatus::True,
        reasons::CERT_MANAGER_APPROVER,
        messages::APPROVED_BY_CERT_MANAGER,
    )
}

async fn sign(shared: &SignerShared, cr: &CertificateRequest) -> Result<(), String> {
    let uid = cr.uid().unwrap_or_default();
    if !shared.signed.lock().unwrap().insert(uid) {
        return Ok(());
    }
    let id = format!("{}/{}", cr.namespace().unwrap_or_default(), cr.name_any());
    let usages = usages_of(cr)?;
    let duration = match &cr.spec.duration {
        Some(d) => Some(
            cert_csi::volume::duration::parse_go(d)
                .map_err(|e| format!("{id}: spec.duration {d:?}: {e}"))?,
        ),
        None => None,
    };
    let params = SignParams {
        duration,
        usages,
        is_ca: cr.spec.is_ca.unwrap_or(false),
        ..Default::default()
    };
    let signed = cert_csi::pki::sign_with_ca(
        cr.spec.request.as_bytes(),
        shared.ca_pem.as_bytes(),
        &shared.ca_key,
        &params,
    )
    .map_err(|e| format!("{id}: signing: {e}"))?;
    let certs = Some((signed.certificate_pem, signed.ca_pem));
    let issued = CertificateRequestCondition::new(
        types::READY,
        ConditionStatus::True,
        reasons::ISSUED,
        messages::ISSUED,
    );
    set_conditions(shared, cr, vec![issued], certs, false).await
}

/// Writes conditions (and optionally the chain) through the status
/// subresource, as cert-manager's controllers do.
async fn set_conditions(
    shared: &SignerShared,
    cr: &CertificateRequest,
    conditions: Vec<CertificateRequestCondition>,
    certificates: Option<(String, String)>,
    failed: bool,
) -> Result<(), String> {
    let namespace = cr.namespace().unwrap_or_default();
    let name = cr.name_any();
    let api: Api<CertificateRequest> = Api::namespaced(shared.client.clone(), &namespace);
    // Read the latest status: a delayed approval may run long after the
    // event that scheduled it.
    let current = match api.get_opt(&name).await {
        Ok(Some(c)) => c,
        Ok(None) => return Ok(()),
        Err(e) => return Err(format!("{namespace}/{name}: get: {e}")),
    };
    if current.is_finished() {
        return Ok(());
    }
    let now = Time(jiff::Timestamp::now());
    let mut status: CertificateRequestStatus = current.status.clone().unwrap_or_default();
    for c in conditions {
        status.set_condition(c, now.clone());
    }
    if let Some((chain, ca)) = certificates {
        status.certificate = Some(PemBytes(chain.into_bytes()));
        status.ca = Some(PemBytes(ca.into_bytes()));
    }
    if failed {
        status.failure_time = Some(now);
    }
    let patch = json!({ "status": status });
    match api
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(format!("{namespace}/{name}: patch status: {e}")),
    }
}

// ---------------------------------------------------------------------------
// The environment: sandbox, node plugin, simulated kubelet
// ---------------------------------------------------------------------------

pub struct Options {
    /// `--publish-timeout` of the node plugin (Go duration).
    pub publish_timeout: &'static str,
    pub policy: Policy,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            publish_timeout: "5s",
            policy: Policy::Approve,
        }
    }
}

/// What [`Env::stop_api`] kept of the API server's objects.
pub struct ApiSnapshot {
    pub addr: std::net::SocketAddr,
    /// The resourceVersion when the snapshot was taken.
    pub resource_version: u64,
    pub namespaces: Vec<Namespace>,
    pub pods: Vec<Pod>,
    pub requests: Vec<CertificateRequest>,
}

/// A pod as the API server stored it.
#[derive(Clone, Debug)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub service_account: String,
}

/// The access type the simulated kubelet sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Capability {
    /// A mount capability; `mount_group` is the pod's fsGroup when set.
    Mount {
        mount_group: Option<u32>,
    },
    Block,
    Missing,
}

/// One NodePublishVolume call, built like the kubelet builds it. Fields are
/// public so tests can break one thing at a time.
#[derive(Clone, Debug)]
pub struct VolumeRequest {
    pub pod: PodRef,
    pub volume_name: String,
    pub volume_id: String,
    pub target_path: String,
    pub readonly: bool,
    pub capability: Capability,
    pub context: HashMap<String, String>,
}

impl VolumeRequest {
    pub fn target(&self) -> PathBuf {
        PathBuf::from(&self.target_path)
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.target().join(name)
    }

    /// Reads a file through the pod's view of the volume.
    pub fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.file(name))
            .unwrap_or_else(|e| panic!("reading {}: {e}", self.file(name).display()))
    }

    pub fn read_string(&self, name: &str) -> String {
        String::from_utf8(self.read(name)).expect("PEM files are text")
    }

    pub fn set(&mut self, key: &str, value: &str) -> &mut Self {
        self.context.insert(key.to_string(), value.to_string());
        self
    }

    pub fn remove(&mut self, key: &str) -> &mut Self {
        self.context.remove(key);
        self
    }

    fn to_proto(&self) -> NodePublishVolumeRequest {
        let access_type = match &self.capability {
            Capability::Mount { mount_group } => Some(AccessType::Mount(MountVolume {
                fs_type: String::new(),
                mount_flags: Vec::new(),
                volume_mount_group: mount_group.map(|g| g.to_string()).unwrap_or_default(),
            })),
            Capability::Block => Some(AccessType::Block(BlockVolume {})),
            Capability::Missing => None,
        };
        NodePublishVolumeRequest {
            volume_id: self.volume_id.clone(),
            publish_context: HashMap::new(),
            staging_target_path: String::new(),
            target_path: self.target_path.clone(),
            volume_capability: access_type.map(|a| VolumeCapability {
                access_type: Some(a),
                access_mode: Some(AccessMode {
                    mode: volume_capability::access_mode::Mode::SingleNodeWriter as i32,
                }),
            }),
            readonly: self.readonly,
            secrets: HashMap::new(),
            volume_context: self.context.clone(),
        }
    }
}

/// The kubelet's volume id for an inline volume: `csi-` and the hex
/// SHA-256 of the pod uid followed by the volume name.
pub fn kubelet_volume_id(pod_uid: &str, volume_name: &str) -> String {
    let input = format!("{pod_uid}{volume_name}");
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, input.as_bytes());
    format!("csi-{}", hex::encode(digest.as_ref()))
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
    pub signer: Signer,
    node: NodeClient<Channel>,
    plugin: Option<Child>,
    publish_timeout: &'static str,
    /// More `cert-csi node` flags, after the harness's own.
    extra_args: Vec<String>,
    sandbox: Option<Sandbox>,
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
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path().canonicalize().expect("canonical tempdir");
        let kubeconfig = base.join("kubeconfig");
        let sandbox = Sandbox::start(SandboxConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            kubeconfig: Some(kubeconfig.clone()),
            crds: cert_csi::api::crds(),
            watch_window: 10_000,
        })
        .await
        .expect("sandbox starts");
        let client = sandbox.client();
        let signer = Signer::start(client.clone(), options.policy);

        let socket = base.join("plugin").join("csi.sock");
        std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
        let data_root = base.join("data");
        let kubelet_root = base.join("kubelet");
        std::fs::create_dir_all(kubelet_root.join("pods")).unwrap();
        let log_path = base.join("node.log");
        let node_id = "node-e2e-1".to_string();
        File::create(&log_path).expect("log file");
        let mut env = Env {
            base,
            kubeconfig,
            socket,
            data_root,
            kubelet_root,
            log_path,
            node_id,
            client,
            signer,
            // Replaced once the socket answers; a lazy channel never
            // connects by itself.
            node: NodeClient::new(
                tonic::transport::Endpoint::from_static("http://[::1]:1").connect_lazy(),
            ),
            plugin: None,
            publish_timeout: options.publish_timeout,
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            sandbox: Some(sandbox),
            _dir: dir,
        };
        env.plugin = Some(env.spawn_plugin());
        env.wait_ready().await;
        env
    }

    /// Starts `cert-csi node`, appending its output to the log file.
    fn spawn_plugin(&self) -> Child {
        let log = File::options()
            .append(true)
            .open(&self.log_path)
            .expect("log file");
        Command::new(env!("CARGO_BIN_EXE_cert-csi"))
            .args(["--log-level", "debug", "node"])
            .arg("--endpoint")
            .arg(format!("unix://{}", self.socket.display()))
            .args(["--node-id", &self.node_id])
            .arg("--data-root")
            .arg(&self.data_root)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["--publish-timeout", self.publish_timeout])
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
        let sandbox = self.sandbox.take().expect("the API server is running");
        let addr = sandbox.addr();
        sandbox.shutdown().await;
        ApiSnapshot {
            addr,
            resource_version,
            namespaces,
            pods,
            requests,
        }
    }

    /// Starts the API server again on the same address and restores the
    /// snapshot (see [`Env::stop_api`]).
    pub async fn start_api(&mut self, snapshot: ApiSnapshot) {
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
        self.sandbox.as_ref().expect("sandbox runs until finish")
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

    /// A publish request for volume `volume_name` of `pod` with the user's
    /// `attributes`, plus what the kubelet adds. The kubelet creates the
    /// target's parent directory, never `mount` itself.
    pub fn volume(
        &self,
        pod: &PodRef,
        volume_name: &str,
        attributes: &[(&str, &str)],
    ) -> VolumeRequest {
        let parent = self
            .kubelet_root
            .join("pods")
            .join(&pod.uid)
            .join("volumes")
            .join("kubernetes.io~csi")
            .join(volume_name);
        std::fs::create_dir_all(&parent).unwrap();
        let mut context: HashMap<String, String> = attributes
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for (k, v) in [
            (kubelet::POD_NAME, pod.name.as_str()),
            (kubelet::POD_NAMESPACE, pod.namespace.as_str()),
            (kubelet::POD_UID, pod.uid.as_str()),
            (kubelet::SERVICE_ACCOUNT_NAME, pod.service_account.as_str()),
            (kubelet::EPHEMERAL, "true"),
        ] {
            context.insert(k.to_string(), v.to_string());
        }
        VolumeRequest {
            pod: pod.clone(),
            volume_name: volume_name.to_string(),
            volume_id: kubelet_volume_id(&pod.uid, volume_name),
            target_path: parent.join("mount").display().to_string(),
            readonly: true,
            capability: Capability::Mount { mount_group: None },
            context,
        }
    }

    pub async fn publish(&self, volume: &VolumeRequest) -> Result<(), Status> {
        let mut node = self.node.clone();
        let call = node.node_publish_volume(volume.to_proto());
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
                "publish of {} failed: {:?}: {}\nsigner violations: {:?}\nsigner errors: {:?}\nlog:\n{}",
                volume.volume_name,
                status.code(),
                status.message(),
                self.signer.violations(),
                self.signer.errors(),
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
        let hash = cert_csi::issuance::id_hash(&volume.volume_id);
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
        let violations = self.signer.violations();
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
        self.stop_plugin();
        self.signer.stop();
        if let Some(sandbox) = self.sandbox.take() {
            sandbox.shutdown().await;
        }
    }

    /// SIGTERM, a grace period, then SIGKILL; always reaped.
    fn stop_plugin(&mut self) {
        let Some(mut child) = self.plugin.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
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

// ---------------------------------------------------------------------------
// Free helpers
// ---------------------------------------------------------------------------

/// Mounts at or below `path`, from this process's mount table (the plugin
/// shares the test's mount namespace).
pub fn mounts_under(path: &Path) -> Vec<MountEntry> {
    cert_csi::store::read_mountinfo()
        .expect("reading /proc/self/mountinfo")
        .into_iter()
        .filter(|m| m.mount_point.starts_with(path))
        .collect()
}

/// The mounts exactly at `path`, bottom first.
pub fn mounts_at(path: &Path) -> Vec<MountEntry> {
    cert_csi::store::read_mountinfo()
        .expect("reading /proc/self/mountinfo")
        .into_iter()
        .filter(|m| m.mount_point == path)
        .collect()
}

pub fn openssl(args: &[&str]) -> Output {
    Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is on PATH")
}

/// Runs openssl, asserts success, and returns stdout and stderr together.
pub fn openssl_ok(args: &[&str]) -> String {
    let out = openssl(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "openssl {args:?} failed: {text}");
    text
}

/// `openssl x509 -noout -text` of the first certificate in `path`.
pub fn cert_text(path: &Path) -> String {
    openssl_ok(&["x509", "-noout", "-text", "-in", path.to_str().unwrap()])
}

/// Annotations of a request, for pass-through checks.
pub fn annotations(cr: &CertificateRequest) -> BTreeMap<String, String> {
    cr.metadata.annotations.clone().unwrap_or_default()
}

/// Asserts a CSI error: the code, and that the message contains `needle`.
pub fn assert_status(
    result: Result<(), Status>,
    code: tonic::Code,
    needle: &str,
    what: &str,
) -> Status {
    match result {
        Ok(()) => panic!("{what}: expected {code:?} mentioning {needle:?}, but the call succeeded"),
        Err(status) => {
            assert_eq!(
                status.code(),
                code,
                "{what}: wrong code; message: {}",
                status.message()
            );
            assert!(
                status.message().contains(needle),
                "{what}: message does not mention {needle:?}: {}",
                status.message()
            );
            status
        }
    }
}

// ---------------------------------------------------------------------------
// Reading a volume the way a pod does, during rotation
// ---------------------------------------------------------------------------

/// What a [`PodReader`] saw.
#[derive(Debug, Default)]
pub struct ReaderReport {
    /// Complete reads of key and certificate.
    pub reads: u64,
    /// Torn reads: a missing file, a key that does not match its
    /// certificate, an unparsable file, or an expired certificate.
    pub problems: Vec<String>,
    /// Leaf serials in the order first seen.
    pub serials: Vec<String>,
    /// Leaf public keys (DER) in the order first seen.
    pub public_keys: Vec<Vec<u8>>,
}

/// A thread that reads key and certificate in a tight loop, as an
/// application in the pod would: it opens `..data` once per iteration and
/// reads both files relative to that directory, then checks they belong
/// together and that the certificate has not expired.
pub struct PodReader {
    stop: Arc<std::sync::atomic::AtomicBool>,
    report: Arc<Mutex<ReaderReport>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl PodReader {
    pub fn start(volume: &VolumeRequest, cert_file: &str, key_file: &str) -> PodReader {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let report = Arc::new(Mutex::new(ReaderReport::default()));
        let data = volume.target().join("..data");
        let (cert_file, key_file) = (cert_file.to_string(), key_file.to_string());
        let handle = std::thread::spawn({
            let stop = stop.clone();
            let report = report.clone();
            move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let result = read_pair(&data, &cert_file, &key_file);
                    let mut report = report.lock().unwrap();
                    match result {
                        Ok((serial, spki, expired)) => {
                            report.reads += 1;
                            if expired {
                                report
                                    .problems
                                    .push(format!("expired certificate {serial} served"));
                            }
                            if report.serials.last() != Some(&serial) {
                                report.serials.push(serial);
                            }
                            if !report.public_keys.contains(&spki) {
                                report.public_keys.push(spki);
                            }
                        }
                        Err(problem) => {
                            if report.problems.len() < 100 {
                                report.problems.push(problem);
                            }
                        }
                    }
                }
            }
        });
        PodReader {
            stop,
            report,
            handle: Some(handle),
        }
    }

    /// A copy of the report so far.
    pub fn serials(&self) -> Vec<String> {
        self.report.lock().unwrap().serials.clone()
    }

    pub fn finish(mut self) -> ReaderReport {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join().expect("reader thread");
        }
        std::mem::take(&mut *self.report.lock().unwrap())
    }
}

impl Drop for PodReader {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn read_pair(
    data: &Path,
    cert_file: &str,
    key_file: &str,
) -> Result<(String, Vec<u8>, bool), String> {
    use nix::fcntl::{OFlag, open, openat};
    use nix::sys::stat::Mode;
    use std::io::Read;
    let dir = open(data, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty())
        .map_err(|e| format!("open {}: {e}", data.display()))?;
    let read = |name: &str| -> Result<Vec<u8>, String> {
        let fd = openat(&dir, name, OFlag::O_RDONLY, Mode::empty())
            .map_err(|e| format!("open {name} in ..data: {e}"))?;
        let mut bytes = Vec::new();
        File::from(fd)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("read {name}: {e}"))?;
        Ok(bytes)
    };
    let cert = read(cert_file)?;
    let key = read(key_file)?;
    let chain = cert_csi::pki::parse_chain(&cert).map_err(|e| format!("{cert_file}: {e}"))?;
    let leaf = chain.first().ok_or_else(|| format!("{cert_file}: empty"))?;
    let key = PrivateKey::from_pem(&key).map_err(|e| format!("{key_file}: {e}"))?;
    if !cert_csi::pki::key_matches_certificate(&key, leaf) {
        return Err(format!(
            "{key_file} does not match {cert_file} (serial {})",
            leaf.serial_hex
        ));
    }
    let expired = !leaf.is_valid_at(std::time::SystemTime::now());
    Ok((leaf.serial_hex.clone(), leaf.spki_der.clone(), expired))
}

/// The leaf certificate a volume serves now.
pub fn served_leaf(volume: &VolumeRequest, cert_file: &str) -> cert_csi::pki::CertInfo {
    let chain = cert_csi::pki::parse_chain(&volume.read(cert_file)).expect("a PEM chain");
    chain.into_iter().next().expect("a leaf")
}

/// The node state of a volume, typed.
pub fn volume_state(
    data_root: &Path,
    volume: &VolumeRequest,
) -> Option<cert_csi::store::VolumeState> {
    let path = data_root
        .join("volumes")
        .join(&volume.volume_id)
        .join("state.json");
    match std::fs::read(&path) {
        Ok(bytes) => Some(serde_json::from_slice(&bytes).expect("state.json decodes")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("reading {}: {e}", path.display()),
    }
}
