//! The cluster side of the node tests: cert-csi's controller in process
//! with a CA bootstrapped the cert-manager way, and a small policy approver
//! that decides by the test's [`Policy`], as a policy approver would.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cert_csi::api::conditions::{messages, reasons, types};
use cert_csi::api::{
    Certificate, CertificateRequest, CertificateRequestCondition, CertificateRequestStatus,
    ClusterIssuer, ConditionStatus, Issuer,
};
use cert_csi::pki::Usage;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

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

/// Which controller signs the harness's requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Signer {
    /// cert-csi's controller, in process.
    #[default]
    CertCsi,
    /// cert-manager's own controller loops (`.tools/bin/cert-manager-
    /// controller`, see [`crate::peers`]), without its approver: the
    /// harness's approver decides, as with cert-csi's.
    CertManager,
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
    /// cert-manager's controller when it is the signer.
    upstream: Option<crate::peers::CertManagerController>,
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
            upstream: None,
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

    /// Like [`Cluster::start`] with the controller, but cert-manager's own
    /// controller loops sign (and bootstrap the test CA) instead of
    /// cert-csi's: the outside judge of what cert-csi's node plugin asks
    /// for. `kubeconfig` is the API server's admin kubeconfig.
    pub async fn start_with_cert_manager(
        client: Client,
        kubeconfig: &std::path::Path,
        policy: Policy,
    ) -> Cluster {
        let mut cluster = Cluster::start(client.clone(), policy, false).await;
        ensure_namespace(&client, CLUSTER_NS).await;
        cluster.upstream = Some(crate::peers::CertManagerController::start(
            kubeconfig,
            CLUSTER_NS,
            &[
                "certificaterequests-issuer-ca",
                "certificaterequests-issuer-selfsigned",
                "certificates-issuing",
                "certificates-key-manager",
                "certificates-readiness",
                "certificates-request-manager",
                "certificates-revision-manager",
                "certificates-trigger",
                "clusterissuers",
                "issuers",
            ],
        ));
        cluster.ca_pem = Some(bootstrap_ca(&client).await);
        cluster
    }

    /// cert-manager's controller, when it signs.
    pub fn cert_manager(&mut self) -> Option<&mut crate::peers::CertManagerController> {
        self.upstream.as_mut()
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
        if (self.controller.is_none() && self.upstream.is_none()) || namespace == CLUSTER_NS {
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
            self.controller.is_some() || self.upstream.is_some(),
            "short_lived_ca needs a controller"
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
        self.upstream = None;
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
            // The default CA and leaf lives; a short publish grace, since
            // the caller waits for the API server to apply the
            // configuration itself (await_webhook).
            let options = webhook::WebhookOptions {
                listen: listener.local_addr().unwrap(),
                target,
                configure: true,
                rotation: cert_csi::controller::webhook_rotation::Rotation {
                    publish_grace: std::time::Duration::from_millis(200),
                    ..Default::default()
                },
                identity: "test-kit".into(),
            };
            let ready = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            if let Err(e) = webhook::run_on(client, listener, &options, ready, shutdown).await {
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
    ensure_namespace(client, CLUSTER_NS).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let Err(last) = probe_webhook(client).await else {
            return;
        };
        assert!(
            Instant::now() < deadline,
            "the requester-identity webhook was not in effect 30 s after it was registered: {last}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One call of the requester-identity webhook through the API server: a
/// dry-run create (in [`CLUSTER_NS`], which must exist) of a request that
/// claims a made-up `spec.username`. `Ok` when it came back with the
/// caller's; else what happened.
pub async fn probe_webhook(client: &Client) -> Result<(), String> {
    const CLAIMED: &str = "cert-csi-tests:made-up-requester";
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
    match api.create(&params, &probe).await {
        Ok(cr) => match cr.spec.username.as_deref() {
            Some(user) if user != CLAIMED => Ok(()),
            other => Err(format!("spec.username came back as {other:?}")),
        },
        Err(e) => Err(e.to_string()),
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
pub(crate) async fn create_or_keep<K>(api: &Api<K>, object: &K, what: &str)
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
        .backoff(cert_csi::kubernetes::WatchBackoff::default())
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
