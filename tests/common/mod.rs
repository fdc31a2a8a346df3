//! Shared harness for end-to-end tests of the node plugin.
//!
//! Every piece is real: an in-process sandbox API server, cert-csi's
//! controller in process (issuers, signer, certificates) with a CA
//! bootstrapped the cert-manager way, the real `cert-csi node` binary as a
//! subprocess on a real unix socket, real tmpfs and bind mounts, and a
//! simulated kubelet that sends exactly what the kubelet sends
//! (reference/csi-driver-compat.md §1). Only approval is the test's: a
//! small approver decides by the test's [`Policy`], as a policy approver
//! would.
//!
//! Each test file includes this module, and not every file uses every
//! helper.
#![allow(dead_code)]

pub mod real;
pub use real::{Backend, RealCluster};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cert_csi::api::conditions::{messages, reasons, types};
use cert_csi::api::{
    Certificate, CertificateRequest, CertificateRequestCondition, CertificateRequestStatus,
    ClusterIssuer, ConditionStatus, Issuer,
};
use cert_csi::csi::proto::identity_client::IdentityClient;
use cert_csi::csi::proto::node_client::NodeClient;
use cert_csi::csi::proto::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
use cert_csi::csi::proto::{
    NodePublishVolumeRequest, NodeUnpublishVolumeRequest, ProbeRequest, VolumeCapability,
    volume_capability,
};
use cert_csi::pki::{PrivateKey, Usage};
use cert_csi::store::MountEntry;
use cert_csi::volume::kubelet;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use kube_sandbox::{Sandbox, SandboxConfig};
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
// The cluster side: the real controller, and a policy approver
// ---------------------------------------------------------------------------

/// Where the harness's ClusterIssuers keep their Secrets
/// (`--cluster-resource-namespace`).
pub const CLUSTER_NS: &str = "cert-manager";
/// The Secret holding the test CA, in [`CLUSTER_NS`] and copied into every
/// namespace [`Env::create_pod`] creates, for the namespaced Issuer `ca`.
pub const CA_SECRET: &str = "ca-key-pair";
/// An issuer group cert-csi's controller does not serve, so requests for it
/// are left to an external issuer; the harness plays that issuer under
/// [`Policy::Fail`].
pub const EXTERNAL_GROUP: &str = "example.com";

/// What the harness's approver does with each new CertificateRequest from
/// a volume. Signing is always the real controller's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Approve (reason cert-manager.io); the real signer then signs.
    Approve,
    /// Approve this long after first seeing the request.
    ApproveAfter(Duration),
    /// Denied=True with this reason and message; Ready=False reason Denied.
    Deny { reason: String, message: String },
    /// Approve every request. Requests for an external issuer group (e.g.
    /// [`EXTERNAL_GROUP`]), which cert-csi's controller ignores by design,
    /// are failed (Ready=False reason Failed, this message) by the harness
    /// standing in for that external issuer.
    Fail { message: String },
    /// Leave requests alone, as when no approver runs.
    Ignore,
}

/// What [`Cluster::creators`] keeps of a request.
struct Seen {
    namespace: String,
    created: Option<jiff::Timestamp>,
    name: String,
    username: Option<String>,
}

struct ClusterShared {
    client: Client,
    policy: Mutex<Policy>,
    /// Re-examines every request, e.g. after a policy change; the watch
    /// alone only reacts to changes.
    wake: tokio::sync::Notify,
    /// Webhook-rule violations, one line each, by request.
    violations: Mutex<Vec<String>>,
    /// uid → whether the request passed the webhook rules.
    checked: Mutex<HashMap<String, bool>>,
    /// uids whose delayed approval is already scheduled.
    delayed: Mutex<HashSet<String>>,
    /// uids seen with Ready=True reason Issued (signed by the controller).
    issued: Mutex<HashSet<String>>,
    /// uid → a request outside [`CLUSTER_NS`] as first seen: where, when,
    /// and who the API server recorded as its creator (see
    /// [`Cluster::creators`]).
    seen: Mutex<HashMap<String, Seen>>,
    errors: Mutex<Vec<String>>,
}

/// The cluster around the node plugin: cert-csi's real controller in
/// process (issuers, signer, certificates; its approver is off), a CA made
/// the cert-manager way (SelfSigned ClusterIssuer → CA Certificate → CA
/// ClusterIssuer `ca`), and a small approver that decides by the test's
/// [`Policy`], as a policy approver beside cert-manager would. A watch on
/// every CertificateRequest checks each against cert-manager's webhook
/// rules and records violations.
pub struct Cluster {
    shared: Arc<ClusterShared>,
    /// The CA certificate (PEM) from the CA Certificate's Secret; `None`
    /// when the controller does not run in process.
    ca_pem: Option<String>,
    watch: tokio::task::JoinHandle<()>,
    controller: Option<tokio::task::JoinHandle<()>>,
    /// The requester-identity webhook, once [`Cluster::serve_webhook`] ran.
    webhook: Option<tokio::task::JoinHandle<()>>,
    token: cert_csi::shutdown::CancellationToken,
}

impl Cluster {
    /// Starts the approver watch and, when `controller`, the real
    /// controller with its CA bootstrap (returns once ClusterIssuer `ca`
    /// is Ready).
    pub async fn start(client: Client, policy: Policy, controller: bool) -> Cluster {
        let shared = Arc::new(ClusterShared {
            client: client.clone(),
            policy: Mutex::new(policy),
            wake: tokio::sync::Notify::new(),
            violations: Mutex::default(),
            checked: Mutex::default(),
            delayed: Mutex::default(),
            issued: Mutex::default(),
            seen: Mutex::default(),
            errors: Mutex::default(),
        });
        let watch = tokio::spawn(run_approver(shared.clone(), controller));
        let token = cert_csi::shutdown::CancellationToken::new();
        let mut cluster = Cluster {
            shared,
            ca_pem: None,
            watch,
            controller: None,
            webhook: None,
            token,
        };
        if controller {
            ensure_namespace(&client, CLUSTER_NS).await;
            let mut options = cert_csi::controller::ControllerOptions::new(CLUSTER_NS);
            options.enabled = cert_csi::controller::EnabledControllers::parse("-approver")
                .expect("a valid --controllers list");
            cluster.controller = Some(tokio::spawn(cert_csi::controller::run(
                client.clone(),
                options,
                cert_csi::controller::Health::default(),
                cluster.token.clone(),
            )));
            cluster.ca_pem = Some(bootstrap_ca(&client).await);
        }
        cluster
    }

    /// Serves cert-csi's requester-identity webhook in process and
    /// registers it by URL (see [`start_webhook`]), on either backend:
    /// from then on every new request's `spec.username`, `uid`, `groups`
    /// and `extra` are the API server's record of its creator. Stopped
    /// with the controller.
    pub async fn serve_webhook(&mut self) {
        assert!(self.webhook.is_none(), "the webhook is already served");
        self.webhook = Some(start_webhook(&self.shared.client, self.token.clone()).await);
    }

    /// `spec.username` of every request created in `namespace` that the
    /// approver's watch saw, deleted ones included, oldest first: with
    /// [`Cluster::serve_webhook`], the creator as the API server
    /// authenticated it (`-` for a request without one). Lists first, so
    /// none the watch has not delivered yet is missed.
    pub async fn creators(&self, namespace: &str) -> Vec<String> {
        for cr in self.list().await {
            note_seen(&self.shared, &cr);
        }
        let seen = self.shared.seen.lock().unwrap();
        let mut found: Vec<&Seen> = seen.values().filter(|s| s.namespace == namespace).collect();
        found.sort_by_key(|s| (s.created, s.name.clone()));
        found
            .into_iter()
            .map(|s| s.username.clone().unwrap_or_else(|| "-".into()))
            .collect()
    }

    pub fn set_policy(&self, policy: Policy) {
        *self.shared.policy.lock().unwrap() = policy;
        self.shared.wake.notify_one();
    }

    /// The test CA's certificate (PEM), which signs every leaf.
    pub fn ca_pem(&self) -> &str {
        self.ca_pem
            .as_deref()
            .expect("the harness runs no controller in this test, so there is no test CA")
    }

    pub fn violations(&self) -> Vec<String> {
        self.shared.violations.lock().unwrap().clone()
    }

    /// How many distinct requests were checked against the webhook rules.
    /// Lists the requests first, so none the watch has not delivered yet
    /// is missed.
    pub async fn checked(&self) -> usize {
        for cr in self.list().await {
            passes_webhook(&self.shared, &cr);
        }
        self.shared.checked.lock().unwrap().len()
    }

    /// How many distinct requests the controller issued: those the watch
    /// saw issued (including ones deleted since) and those issued now.
    pub async fn signed(&self) -> usize {
        for cr in self.list().await {
            note_issued(&self.shared, &cr);
        }
        self.shared.issued.lock().unwrap().len()
    }

    async fn list(&self) -> Vec<CertificateRequest> {
        Api::<CertificateRequest>::all(self.shared.client.clone())
            .list(&ListParams::default())
            .await
            .expect("listing CertificateRequests")
            .items
            .into_iter()
            .filter(|cr| cr.namespace().as_deref() != Some(CLUSTER_NS))
            .collect()
    }

    /// Gives `namespace` an Issuer `ca` that signs with the test CA (a CA
    /// Issuer reads its Secret from its own namespace), and waits until the
    /// controller reports it Ready. Nothing without the controller.
    pub async fn prepare_namespace(&self, namespace: &str) {
        if self.controller.is_none() || namespace == CLUSTER_NS {
            return;
        }
        let client = &self.shared.client;
        let secrets: Api<k8s_openapi::api::core::v1::Secret> =
            Api::namespaced(client.clone(), CLUSTER_NS);
        let mut secret = secrets.get(CA_SECRET).await.expect("the CA Secret");
        secret.metadata = kube::api::ObjectMeta {
            name: Some(CA_SECRET.into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        };
        create_or_keep(
            &Api::namespaced(client.clone(), namespace),
            &secret,
            "CA Secret",
        )
        .await;
        let issuer: Issuer = serde_json::from_value(json!({
            "apiVersion": "cert-manager.io/v1", "kind": "Issuer",
            "metadata": {"name": "ca", "namespace": namespace},
            "spec": {"ca": {"secretName": CA_SECRET}},
        }))
        .unwrap();
        let issuers: Api<Issuer> = Api::namespaced(client.clone(), namespace);
        create_or_keep(&issuers, &issuer, "Issuer ca").await;
        wait_ready(&issuers, "ca", Issuer::is_ready).await;
    }

    /// A CA ClusterIssuer `name` whose CA, issued the cert-manager way by
    /// the `selfsigned` ClusterIssuer, lives `duration` (a Go duration, at
    /// least 1h) from now. The CA issuer caps every certificate at its CA's
    /// notAfter, so this is an issuer that shortens lifetimes. Returns the
    /// CA's PEM. Needs the in-process controller.
    pub async fn short_lived_ca(&self, name: &str, duration: &str) -> String {
        assert!(
            self.controller.is_some(),
            "short_lived_ca needs the controller"
        );
        let client = &self.shared.client;
        let certificate: Certificate = serde_json::from_value(json!({
            "apiVersion": "cert-manager.io/v1", "kind": "Certificate",
            "metadata": {"name": name, "namespace": CLUSTER_NS},
            "spec": {
                "isCA": true,
                "commonName": format!("cert-csi test CA {name}"),
                "duration": duration,
                "secretName": name,
                "privateKey": {"algorithm": "ECDSA", "size": 256},
                "issuerRef": {"name": "selfsigned", "kind": "ClusterIssuer", "group": "cert-manager.io"},
            },
        }))
        .unwrap();
        let certificates: Api<Certificate> = Api::namespaced(client.clone(), CLUSTER_NS);
        create_or_keep(&certificates, &certificate, "Certificate").await;
        wait_ready(&certificates, name, Certificate::is_ready).await;
        ca_cluster_issuer(client, name, name).await;
        let secret =
            Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), CLUSTER_NS)
                .get(name)
                .await
                .expect("the CA Certificate's Secret");
        let crt = secret
            .data
            .as_ref()
            .and_then(|d| d.get("tls.crt"))
            .expect("tls.crt");
        String::from_utf8(crt.0.clone()).expect("tls.crt is PEM text")
    }

    /// Stops the approver and the controller; call before the API server
    /// goes away.
    pub async fn stop(&mut self) {
        self.watch.abort();
        self.token.cancel();
        if let Some(controller) = self.controller.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), controller).await;
        }
        if let Some(webhook) = self.webhook.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), webhook).await;
        }
    }

    /// API errors the approver hit (other than a request deleted under it).
    pub fn errors(&self) -> Vec<String> {
        self.shared.errors.lock().unwrap().clone()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.watch.abort();
        self.token.cancel();
        if let Some(controller) = self.controller.take() {
            controller.abort();
        }
        if let Some(webhook) = self.webhook.take() {
            webhook.abort();
        }
    }
}

/// cert-csi's requester-identity webhook, as `cert-csi controller --webhook
/// --webhook-configure --webhook-url https://127.0.0.1:PORT/...` runs it:
/// served in process on a free loopback port and registered by URL with
/// its CA bundle, since a loopback API server has no Services to route
/// through. Returns once the API server applies it ([`await_webhook`]);
/// serves until `shutdown`.
pub async fn start_webhook(
    client: &Client,
    shutdown: cert_csi::shutdown::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    use cert_csi::controller::webhook;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port for the webhook");
    let url = format!(
        "https://{}{}",
        listener.local_addr().unwrap(),
        webhook::PATH
    );
    let target = webhook::Target::url(&url).expect("a loopback https URL");
    let task = tokio::spawn({
        let client = client.clone();
        async move {
            if let Err(e) = webhook::run_on(client, listener, &target, true, shutdown).await {
                panic!("the requester-identity webhook at {url} stopped: {e}");
            }
        }
    });
    let settled = await_webhook(client);
    tokio::pin!(settled);
    let mut task = task;
    tokio::select! {
        () = &mut settled => task,
        ended = &mut task => match ended {
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            other => panic!("the webhook task ended before it was in effect: {other:?}"),
        },
    }
}

/// Waits until the API server applies the requester-identity webhook: a
/// dry-run create of a request claiming a made-up `spec.username` (in
/// [`CLUSTER_NS`], which this creates if needed) comes back with the
/// caller's instead. A real API server picks a new configuration up from
/// its informer, so the first creates after registering may miss it.
pub async fn await_webhook(client: &Client) {
    const CLAIMED: &str = "cert-csi-tests:made-up-requester";
    ensure_namespace(client, CLUSTER_NS).await;
    let api: Api<CertificateRequest> = Api::namespaced(client.clone(), CLUSTER_NS);
    let probe: CertificateRequest = serde_json::from_value(json!({
        "apiVersion": "cert-manager.io/v1", "kind": "CertificateRequest",
        "metadata": {"name": "webhook-probe"},
        "spec": {
            // Any bytes: a dry run stores nothing and signs nothing.
            "request": "cHJvYmU=",
            "issuerRef": {"name": "webhook-probe"},
            "username": CLAIMED,
        },
    }))
    .unwrap();
    let params = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let last = match api.create(&params, &probe).await {
            Ok(cr) => match cr.spec.username.as_deref() {
                Some(user) if user != CLAIMED => return,
                other => format!("spec.username came back as {other:?}"),
            },
            Err(e) => e.to_string(),
        };
        assert!(
            Instant::now() < deadline,
            "the requester-identity webhook was not in effect 30 s after it was registered: {last}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn ensure_namespace(client: &Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
    }))
    .unwrap();
    create_or_keep(&Api::all(client.clone()), &ns, "namespace").await;
}

/// Creates `object`; one that exists already is fine.
async fn create_or_keep<K>(api: &Api<K>, object: &K, what: &str)
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.create(&PostParams::default(), object).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!(
            "creating {what} {}: {e}",
            object.meta().name.as_deref().unwrap_or("")
        ),
    }
}

/// Waits (on a watch) until `name` satisfies `ready`.
async fn wait_ready<K>(api: &Api<K>, name: &str, ready: fn(&K) -> bool)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = watcher::watcher(api.clone(), config)
        .applied_objects()
        .boxed();
    let wait = async {
        while let Some(event) = stream.next().await {
            if let Ok(object) = event
                && ready(&object)
            {
                return;
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .is_err()
    {
        let now = api.get_opt(name).await;
        panic!("{name} was not Ready within 30s: {now:?}");
    }
}

/// The cert-manager bootstrap of a CA: a SelfSigned ClusterIssuer signs a
/// CA Certificate, whose Secret backs ClusterIssuer `ca` (and `spiffe-ca`,
/// the issuer the SPIFFE tests name). Returns the CA certificate's PEM.
async fn bootstrap_ca(client: &Client) -> String {
    let cluster_issuers: Api<ClusterIssuer> = Api::all(client.clone());
    let self_signed: ClusterIssuer = serde_json::from_value(json!({
        "apiVersion": "cert-manager.io/v1", "kind": "ClusterIssuer",
        "metadata": {"name": "selfsigned"},
        "spec": {"selfSigned": {}},
    }))
    .unwrap();
    create_or_keep(&cluster_issuers, &self_signed, "ClusterIssuer").await;
    let certificate: Certificate = serde_json::from_value(json!({
        "apiVersion": "cert-manager.io/v1", "kind": "Certificate",
        "metadata": {"name": "test-ca", "namespace": CLUSTER_NS},
        "spec": {
            "isCA": true,
            "commonName": "cert-csi test root CA",
            "subject": {"organizations": ["cert-csi tests"]},
            "duration": "8760h",
            "secretName": CA_SECRET,
            "privateKey": {"algorithm": "ECDSA", "size": 256},
            "issuerRef": {"name": "selfsigned", "kind": "ClusterIssuer", "group": "cert-manager.io"},
        },
    }))
    .unwrap();
    let certificates: Api<Certificate> = Api::namespaced(client.clone(), CLUSTER_NS);
    create_or_keep(&certificates, &certificate, "Certificate").await;
    for name in ["ca", "spiffe-ca"] {
        ca_cluster_issuer(client, name, CA_SECRET).await;
    }
    let secret = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), CLUSTER_NS)
        .get(CA_SECRET)
        .await
        .expect("the CA Certificate's Secret");
    let pem = secret
        .data
        .as_ref()
        .and_then(|d| d.get("tls.crt"))
        .map(|b| String::from_utf8(b.0.clone()).expect("tls.crt is PEM text"))
        .expect("the CA Secret has tls.crt");
    // The CA issuer serves the root in status.ca; for a self-signed CA the
    // Secret's certificate is that root.
    let chain = cert_csi::pki::parse_chain(pem.as_bytes()).expect("tls.crt parses");
    assert_eq!(chain.len(), 1, "the test CA is one self-signed certificate");
    pem
}

/// Creates CA ClusterIssuer `name` over the CA in Secret `secret` (in
/// [`CLUSTER_NS`]) and waits until the controller reports it Ready.
async fn ca_cluster_issuer(client: &Client, name: &str, secret: &str) {
    let cluster_issuers: Api<ClusterIssuer> = Api::all(client.clone());
    let issuer: ClusterIssuer = serde_json::from_value(json!({
        "apiVersion": "cert-manager.io/v1", "kind": "ClusterIssuer",
        "metadata": {"name": name},
        "spec": {"ca": {"secretName": secret}},
    }))
    .unwrap();
    create_or_keep(&cluster_issuers, &issuer, "ClusterIssuer").await;
    wait_ready(&cluster_issuers, name, ClusterIssuer::is_ready).await;
}

async fn run_approver(shared: Arc<ClusterShared>, bootstrap: bool) {
    let api: Api<CertificateRequest> = Api::all(shared.client.clone());
    // The node plugin's watch backoff (1 s to 5 s), so after an API
    // outage the approver is back as soon as the plugin is.
    let mut stream = watcher::watcher(api.clone(), watcher::Config::default())
        .backoff(cert_csi::issuance::tracker::WatchBackoff::default())
        .boxed();
    loop {
        tokio::select! {
            event = stream.next() => match event {
                Some(Ok(Event::Apply(cr) | Event::InitApply(cr))) => handle(&shared, cr, bootstrap).await,
                Some(Ok(_)) => {}
                Some(Err(e)) => eprintln!("test approver: watch error: {e}"),
                None => return,
            },
            _ = shared.wake.notified() => match api.list(&ListParams::default()).await {
                Ok(list) => {
                    for cr in list.items {
                        handle(&shared, cr, bootstrap).await;
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
fn passes_webhook(shared: &ClusterShared, cr: &CertificateRequest) -> bool {
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

fn note_issued(shared: &ClusterShared, cr: &CertificateRequest) {
    if cr.is_issued() {
        shared
            .issued
            .lock()
            .unwrap()
            .insert(cr.uid().unwrap_or_default());
    }
}

fn is_external(cr: &CertificateRequest) -> bool {
    cr.spec
        .issuer_ref
        .group
        .as_deref()
        .is_some_and(|g| !g.is_empty() && g != "cert-manager.io")
}

fn note_seen(shared: &ClusterShared, cr: &CertificateRequest) {
    if cr.namespace().as_deref() == Some(CLUSTER_NS) {
        return;
    }
    if let Some(uid) = cr.uid() {
        shared
            .seen
            .lock()
            .unwrap()
            .entry(uid)
            .or_insert_with(|| Seen {
                namespace: cr.namespace().unwrap_or_default(),
                created: cr.creation_timestamp().map(|t| t.0),
                name: cr.name_any(),
                username: cr.spec.username.clone(),
            });
    }
}

async fn handle(shared: &Arc<ClusterShared>, cr: CertificateRequest, bootstrap: bool) {
    note_seen(shared, &cr);
    // The harness's own CA bootstrap is approved whatever the test's
    // policy: it stands for a cluster set up before the test.
    if bootstrap && cr.namespace().as_deref() == Some(CLUSTER_NS) {
        if !cr.is_finished() && !cr.is_approved() && !cr.is_denied() {
            let result = set_conditions(shared, &cr, vec![approved()], false).await;
            if let Err(e) = result {
                shared.errors.lock().unwrap().push(e);
            }
        }
        return;
    }
    // A request the webhook would refuse is never acted on: a real API
    // server would not have stored it.
    if !passes_webhook(shared, &cr) {
        return;
    }
    note_issued(shared, &cr);
    if cr.is_finished() || cr.metadata.deletion_timestamp.is_some() {
        return;
    }
    let policy = shared.policy.lock().unwrap().clone();
    let decided = cr.is_approved() || cr.is_denied();
    let result = match policy {
        Policy::Ignore => Ok(()),
        _ if decided && !is_external(&cr) => Ok(()),
        Policy::Deny { reason, message } => {
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
                false,
            )
            .await
        }
        // The external issuer's part: approval and failure land together,
        // as the two controllers would leave them.
        Policy::Fail { message } if is_external(&cr) => {
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
                true,
            )
            .await
        }
        _ if decided => Ok(()),
        Policy::Approve | Policy::Fail { .. } => {
            set_conditions(shared, &cr, vec![approved()], false).await
        }
        Policy::ApproveAfter(delay) => {
            let uid = cr.uid().unwrap_or_default();
            if shared.delayed.lock().unwrap().insert(uid) {
                let shared = shared.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    if let Err(e) = set_conditions(&shared, &cr, vec![approved()], false).await {
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

/// Writes conditions through the status subresource, as an approver does.
async fn set_conditions(
    shared: &ClusterShared,
    cr: &CertificateRequest,
    conditions: Vec<CertificateRequestCondition>,
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
    if current.is_finished() || current.is_approved() || current.is_denied() {
        return Ok(());
    }
    let now = Time(jiff::Timestamp::now());
    let mut status: CertificateRequestStatus = current.status.clone().unwrap_or_default();
    for c in conditions {
        status.set_condition(c, now.clone());
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
        Env::start_on(Backend::from_env(), options, extra_args).await
    }

    /// Like [`Env::start_with_args`], always on the sandbox: for a test that
    /// cannot run on the real server yet. `why` says why; it is printed, so
    /// a run shows what the real server did not judge.
    pub async fn start_on_sandbox(options: Options, extra_args: &[&str], why: &str) -> Env {
        if Backend::from_env() == Backend::Real {
            eprintln!("on the sandbox, not the real API server: {why}");
        }
        Env::start_on(Backend::Sandbox, options, extra_args).await
    }

    async fn start_on(backend: Backend, options: Options, extra_args: &[&str]) -> Env {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path().canonicalize().expect("canonical tempdir");
        let (server, client, kubeconfig) = real::ApiServer::start_in(backend, &base, 10_000).await;
        let (sandbox, real) = match server {
            real::ApiServer::Sandbox(sandbox) => (Some(sandbox), None),
            real::ApiServer::Real(real, _) => (None, Some(real)),
        };
        let cluster = Cluster::start(client.clone(), options.policy, options.controller).await;

        let socket = base.join("plugin").join("csi.sock");
        std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
        let data_root = base.join("data");
        let kubelet_root = base.join("kubelet");
        std::fs::create_dir_all(kubelet_root.join("pods")).unwrap();
        let log_path = test_log_path("node");
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

/// Where every test's plugin and controller logs go, so one scan covers
/// the whole suite's logs: `target/tmp/test-logs/`.
pub fn test_log_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("test-logs");
    std::fs::create_dir_all(&dir).expect("create target/tmp/test-logs");
    dir
}

/// A fresh log file in [`test_log_dir`], named after the test binary, the
/// process and `label`, so parallel tests never share one.
pub fn test_log_path(label: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "test".into());
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let path = test_log_dir().join(format!("{binary}-{}-{n}-{label}.log", std::process::id()));
    File::create(&path).expect("log file");
    path
}

/// Lines of `text` that hold key material or a token: a PEM private key
/// header, or a JWT (service account tokens are JWTs, and every JWT starts
/// with the base64 of `{"`, which is `eyJ`).
pub fn secret_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.contains("PRIVATE KEY") || l.contains("eyJ"))
        .map(|l| l.chars().take(200).collect())
        .collect()
}

/// Panics, naming the lines, when the log at `path` holds a private key or
/// a token.
pub fn assert_no_secrets_in_log(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let found = secret_lines(&text);
    assert!(
        found.is_empty(),
        "{} holds key material or a token:\n{}",
        path.display(),
        found.join("\n")
    );
}

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

// ---------------------------------------------------------------------------
// Metrics over plain HTTP
// ---------------------------------------------------------------------------

/// `GET path` over plain HTTP/1.0; the status code and the body.
pub async fn http_get(base: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .unwrap_or_else(|e| panic!("connecting to {address}: {e}"));
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP header end in {response:?}"));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status code in {head:?}"));
    (code, body.to_owned())
}

/// The value of the one sample named `name` whose labels include every
/// `label="value"` in `labels`; panics when there is none or several.
pub fn sample(scrape: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no value in {l:?}"))
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one sample {name}{labels:?}, found {found:?} in:\n{scrape}"
    );
    found[0]
}
