//! Authentication and admission in the sandbox, through the real
//! `kube::Client`: ServiceAccount tokens from the TokenRequest API, and
//! admission webhooks served over HTTPS by this test with a certificate
//! made with rcgen.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::{Json, Router, routing::post};
use base64::Engine as _;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube_sandbox::{Sandbox, SandboxConfig};
use serde_json::{Value, json};

const NS: &str = "shop";
const SA: &str = "billing";
const SA_USER: &str = "system:serviceaccount:shop:billing";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// cert-manager's CertificateRequest, reduced to the fields these tests
/// write: the webhooks under test select it the way cert-manager's own
/// webhook does, and its status subresource has webhooks of its own.
fn certificate_request_crd() -> CustomResourceDefinition {
    let strings = json!({"type": "array", "items": {"type": "string"}});
    serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "certificaterequests.cert-manager.io"},
        "spec": {
            "group": "cert-manager.io",
            "scope": "Namespaced",
            "names": {"plural": "certificaterequests", "singular": "certificaterequest", "kind": "CertificateRequest", "shortNames": ["cr"]},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {
                        "request": {"type": "string", "format": "byte"},
                        "issuerRef": {"type": "object", "properties": {
                            "name": {"type": "string"}, "kind": {"type": "string"}, "group": {"type": "string"},
                        }},
                        "username": {"type": "string"},
                        "groups": strings,
                        "usages": strings,
                    }},
                    "status": {"type": "object", "properties": {
                        "conditions": {"type": "array", "items": {"type": "object", "properties": {
                            "type": {"type": "string"}, "status": {"type": "string"},
                            "reason": {"type": "string"}, "message": {"type": "string"},
                        }}},
                    }},
                }}},
            }],
        },
    }))
    .unwrap()
}

async fn start() -> Sandbox {
    let sb = Sandbox::start(SandboxConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        kubeconfig: None,
        crds: vec![certificate_request_crd()],
        watch_window: 1000,
    })
    .await
    .expect("sandbox starts");
    let client = sb.client();
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NS}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": SA}})).unwrap();
    Api::<ServiceAccount>::namespaced(client, NS)
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();
    sb
}

fn api_error(e: kube::Error) -> kube::core::Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn token_request(audiences: &[&str], pod: Option<&str>) -> TokenRequest {
    let mut spec = json!({"audiences": audiences, "expirationSeconds": 900});
    if let Some(p) = pod {
        spec["boundObjectRef"] = json!({"kind": "Pod", "apiVersion": "v1", "name": p});
    }
    serde_json::from_value(json!({"spec": spec})).unwrap()
}

#[tokio::test]
async fn token_requests_need_an_existing_service_account() {
    let sb = start().await;
    let sas: Api<ServiceAccount> = Api::namespaced(sb.client(), NS);
    let tr = sas
        .create_token_request(SA, &PostParams::default(), &token_request(&["vault"], None))
        .await
        .expect("token for an existing ServiceAccount");
    let status = tr.status.expect("status is filled");
    assert_eq!(status.token.split('.').count(), 3, "JWT-shaped");
    assert_eq!(tr.spec.audiences, ["vault"]);
    assert_eq!(tr.spec.expiration_seconds, Some(900));
    let lifetime = status.expiration_timestamp.0.as_second() - jiff::Timestamp::now().as_second();
    assert!((890..=901).contains(&lifetime), "{lifetime}");

    let missing = sas
        .create_token_request("ghost", &PostParams::default(), &token_request(&[], None))
        .await
        .unwrap_err();
    let missing = api_error(missing);
    assert_eq!(missing.code, 404);
    assert_eq!(missing.message, r#"serviceaccounts "ghost" not found"#);

    let too_short: TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 60}}))
            .unwrap();
    let e = api_error(
        sas.create_token_request(SA, &PostParams::default(), &too_short)
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 422);
    assert!(
        e.message.contains("spec.expirationSeconds"),
        "{}",
        e.message
    );
    sb.shutdown().await;
}

#[tokio::test]
async fn requests_are_attributed_to_the_token_and_bad_tokens_get_401() {
    let sb = start().await;
    let sas: Api<ServiceAccount> = Api::namespaced(sb.client(), NS);
    let token = sas
        .create_token_request(SA, &PostParams::default(), &token_request(&[], None))
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    let as_sa = sb.client_for_token(&token);
    Api::<Pod>::namespaced(as_sa.clone(), NS)
        .list(&Default::default())
        .await
        .expect("a valid token is accepted");
    let log = sb.request_log();
    let mine: Vec<_> = log
        .iter()
        .filter(|r| r.verb == "list" && r.resource == "pods")
        .collect();
    assert_eq!(mine.len(), 1, "{log:?}");
    assert_eq!(mine[0].user, SA_USER);
    assert_eq!(
        mine[0].groups,
        [
            "system:serviceaccounts",
            "system:serviceaccounts:shop",
            "system:authenticated"
        ]
    );
    let setup = log.iter().find(|r| r.resource == "namespaces").unwrap();
    assert_eq!(setup.user, "system:anonymous");
    assert_eq!(setup.groups, ["system:unauthenticated"]);
    // The token request itself is a create of serviceaccounts/token.
    assert!(log.iter().any(|r| r.verb == "create"
        && r.resource == "serviceaccounts"
        && r.subresource.as_deref() == Some("token")));

    // Nothing in the log carries the token.
    let served = reqwest_free_get(&sb, "/sandbox/requests").await;
    assert!(!served.contains(&token));

    let forged = sb.client_for_token("eyJhbGciOiJub25lIn0.e30.forged");
    let e = api_error(
        Api::<Pod>::namespaced(forged, NS)
            .list(&Default::default())
            .await
            .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (401, "Unauthorized"));

    let short = sb
        .issue_token_for(NS, SA, Duration::from_millis(300))
        .unwrap();
    let short_client = sb.client_for_token(&short);
    Api::<Pod>::namespaced(short_client.clone(), NS)
        .list(&Default::default())
        .await
        .expect("accepted before expiry");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let e = api_error(
        Api::<Pod>::namespaced(short_client, NS)
            .list(&Default::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 401, "an expired token is refused");
    sb.shutdown().await;
}

async fn reqwest_free_get(sb: &Sandbox, path: &str) -> String {
    let req = http::Request::get(path).body(Vec::new()).unwrap();
    sb.client().request_text(req).await.unwrap()
}

#[tokio::test]
async fn pod_bound_tokens_carry_the_pod_and_die_with_it() {
    let sb = start().await;
    let pods: Api<Pod> = Api::namespaced(sb.client(), NS);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web-1"},
        "spec": {"serviceAccountName": SA, "nodeName": "node-a", "containers": [{"name": "c", "image": "x"}]}
    }))
    .unwrap();
    let pod = pods.create(&PostParams::default(), &pod).await.unwrap();
    let sas: Api<ServiceAccount> = Api::namespaced(sb.client(), NS);
    let tr = sas
        .create_token_request(
            SA,
            &PostParams::default(),
            &token_request(&[], Some("web-1")),
        )
        .await
        .unwrap();
    assert_eq!(
        tr.spec.bound_object_ref.as_ref().unwrap().uid,
        pod.metadata.uid
    );
    let token = tr.status.unwrap().token;
    // The claims name the pod, as a real token's do.
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["kubernetes.io"]["pod"]["name"], "web-1");

    let other_sa = sas
        .create_token_request(
            "default",
            &PostParams::default(),
            &token_request(&[], Some("web-1")),
        )
        .await
        .unwrap_err();
    assert_eq!(api_error(other_sa).code, 400);

    let as_pod = sb.client_for_token(&token);
    Api::<Pod>::namespaced(as_pod.clone(), NS)
        .get("web-1")
        .await
        .expect("valid while the pod lives");
    pods.delete("web-1", &Default::default()).await.unwrap();
    let e = api_error(
        Api::<Pod>::namespaced(as_pod, NS)
            .get("web-1")
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 401, "a bound token dies with its pod");
    sb.shutdown().await;
}

/// A CA and a server certificate for 127.0.0.1 signed by it.
struct Tls {
    ca_pem: String,
    server: Arc<rustls::ServerConfig>,
}

/// A CA of its own; its PEM goes into a webhook's caBundle.
fn ca() -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "webhook test CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap()
}

fn tls() -> Tls {
    let ca = ca();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = params.signed_by(&key, &ca).unwrap();
    let key_der = rustls_pki_types::PrivateKeyDer::Pkcs8(
        rustls_pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()),
    );
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![leaf.der().clone()], key_der)
    .unwrap();
    Tls {
        ca_pem: ca.pem(),
        server: Arc::new(server),
    }
}

/// Accepts TLS connections for axum; failed handshakes are dropped.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// What the test's webhook server saw.
#[derive(Default)]
struct Seen {
    reviews: Mutex<Vec<Value>>,
}

/// The test's webhook server; stopped when dropped.
struct WebhookServer {
    addr: SocketAddr,
    seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WebhookServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer(req: &Value, response: Value) -> Json<Value> {
    let mut response = response;
    response["uid"] = req["uid"].clone();
    Json(
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}),
    )
}

/// Overwrites the requester fields with the authenticated caller, as
/// cert-manager's webhook does.
async fn stamp_requester(State(seen): State<Arc<Seen>>, Json(review): Json<Value>) -> Json<Value> {
    seen.reviews.lock().unwrap().push(review.clone());
    let req = &review["request"];
    let user = &req["userInfo"];
    let patch = json!([
        {"op": "add", "path": "/spec/username", "value": user["username"]},
        {"op": "add", "path": "/spec/groups", "value": user["groups"]},
    ]);
    answer(
        req,
        json!({"allowed": true, "patchType": "JSONPatch", "patch": b64(patch.to_string().as_bytes())}),
    )
}

async fn refuse(State(seen): State<Arc<Seen>>, Json(review): Json<Value>) -> Json<Value> {
    seen.reviews.lock().unwrap().push(review.clone());
    answer(
        &review["request"],
        json!({"allowed": false, "status": {"code": 403, "reason": "Forbidden", "message": "requests labelled deny=yes are refused"}}),
    )
}

async fn observe(State(seen): State<Arc<Seen>>, Json(review): Json<Value>) -> Json<Value> {
    seen.reviews.lock().unwrap().push(review.clone());
    answer(&review["request"], json!({"allowed": true}))
}

async fn webhook_server(tls: &Tls) -> WebhookServer {
    let seen = Arc::new(Seen::default());
    let app = Router::new()
        .route("/mutate", post(stamp_requester))
        .route("/deny", post(refuse))
        .route("/observe", post(observe))
        .with_state(seen.clone());
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let listener = TlsListener {
        tcp,
        acceptor: tokio_rustls::TlsAcceptor::from(tls.server.clone()),
    };
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    WebhookServer { addr, seen, task }
}

fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("admissionregistration.k8s.io", "v1", kind),
        plural,
    )
}

fn certificate_requests() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cert-manager.io", "v1", "CertificateRequest"),
        "certificaterequests",
    )
}

/// Registers one webhook; `kind` is Mutating or Validating.
async fn register(sb: &Sandbox, kind: &str, name: &str, hook: Value) {
    let (k, plural) = match kind {
        "Mutating" => (
            "MutatingWebhookConfiguration",
            "mutatingwebhookconfigurations",
        ),
        _ => (
            "ValidatingWebhookConfiguration",
            "validatingwebhookconfigurations",
        ),
    };
    let ar = resource(k, plural);
    let api: Api<DynamicObject> = Api::all_with(sb.client(), &ar);
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": k,
        "metadata": {"name": name},
        "webhooks": [hook],
    }))
    .unwrap();
    api.create(&PostParams::default(), &obj)
        .await
        .expect("webhook configuration accepted");
}

fn hook(name: &str, url: String, ca_pem: &str, ops: &[&str], resources: &[&str]) -> Value {
    json!({
        "name": name,
        "clientConfig": {"url": url, "caBundle": b64(ca_pem.as_bytes())},
        "rules": [{"operations": ops, "apiGroups": ["cert-manager.io"], "apiVersions": ["v1"], "resources": resources}],
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
        "timeoutSeconds": 5,
    })
}

fn cr(name: &str, labels: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "cert-manager.io/v1",
        "kind": "CertificateRequest",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "request": b64(b"-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----\n"),
            "issuerRef": {"name": "ca", "kind": "Issuer"},
            "username": "system:admin",
            "groups": ["system:masters"],
        },
    }))
    .unwrap()
}

#[tokio::test]
async fn mutating_webhook_stamps_the_authenticated_requester() {
    let sb = start().await;
    let tls = tls();
    let server = webhook_server(&tls).await;
    register(
        &sb,
        "Mutating",
        "cert-manager-webhook",
        hook(
            "requester.cert-csi.io",
            format!("https://{}/mutate", server.addr),
            &tls.ca_pem,
            &["CREATE"],
            &["certificaterequests"],
        ),
    )
    .await;
    let token = sb.issue_token(NS, SA).unwrap();
    let as_sa: Api<DynamicObject> =
        Api::namespaced_with(sb.client_for_token(&token), NS, &certificate_requests());
    let created = as_sa
        .create(&PostParams::default(), &cr("forged", json!({})))
        .await
        .expect("create through the webhook");
    assert_eq!(
        created.data["spec"]["username"], SA_USER,
        "the body's claim is overwritten"
    );
    assert_eq!(
        created.data["spec"]["groups"],
        json!([
            "system:serviceaccounts",
            "system:serviceaccounts:shop",
            "system:authenticated"
        ])
    );
    let stored: Api<DynamicObject> = Api::namespaced_with(sb.client(), NS, &certificate_requests());
    let got = stored.get("forged").await.unwrap();
    assert_eq!(got.data["spec"]["username"], SA_USER);
    assert_eq!(got.metadata.uid, created.metadata.uid);

    let reviews = server.seen.reviews.lock().unwrap().clone();
    assert_eq!(reviews.len(), 1);
    let req = &reviews[0]["request"];
    assert_eq!(reviews[0]["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(req["operation"], "CREATE");
    assert_eq!(req["namespace"], NS);
    assert_eq!(req["resource"]["resource"], "certificaterequests");
    assert_eq!(req["kind"]["kind"], "CertificateRequest");
    assert_eq!(req["userInfo"]["username"], SA_USER);
    assert!(
        req["userInfo"]["uid"]
            .as_str()
            .is_some_and(|u| !u.is_empty())
    );
    assert_eq!(req["object"]["spec"]["username"], "system:admin");
    assert!(req["oldObject"].is_null());
    assert_eq!(req["options"]["kind"], "CreateOptions");
    assert_eq!(req["dryRun"], false);

    // Anonymous callers are stamped too; objects the rules do not select
    // (other resources, or updates) never reach the webhook.
    let anon = stored
        .create(&PostParams::default(), &cr("anon", json!({})))
        .await
        .unwrap();
    assert_eq!(anon.data["spec"]["username"], "system:anonymous");
    stored
        .patch(
            "anon",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .unwrap();
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(sb.client(), NS);
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "c"}})).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(server.seen.reviews.lock().unwrap().len(), 2);
    sb.shutdown().await;
}

#[tokio::test]
async fn validating_webhook_refusal_stores_nothing() {
    let sb = start().await;
    let tls = tls();
    let server = webhook_server(&tls).await;
    let mut h = hook(
        "deny.cert-csi.io",
        format!("https://{}/deny", server.addr),
        &tls.ca_pem,
        &["CREATE", "UPDATE"],
        &["certificaterequests"],
    );
    h["objectSelector"] = json!({"matchLabels": {"deny": "yes"}});
    register(&sb, "Validating", "deny", h).await;
    let crs: Api<DynamicObject> = Api::namespaced_with(sb.client(), NS, &certificate_requests());
    let e = api_error(
        crs.create(
            &PostParams::default(),
            &cr("refused", json!({"deny": "yes"})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(e.code, 403);
    assert_eq!(e.reason, "Forbidden");
    assert_eq!(
        e.message,
        r#"admission webhook "deny.cert-csi.io" denied the request: requests labelled deny=yes are refused"#
    );
    assert_eq!(api_error(crs.get("refused").await.unwrap_err()).code, 404);

    // Not selected: stored without a call.
    crs.create(&PostParams::default(), &cr("fine", json!({})))
        .await
        .unwrap();
    assert_eq!(server.seen.reviews.lock().unwrap().len(), 1);
    // An update that adds the label is refused and leaves the object as it was.
    let e = api_error(
        crs.patch(
            "fine",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"deny": "yes"}}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(e.code, 403);
    let fine = crs.get("fine").await.unwrap();
    let labels = fine.metadata.labels.unwrap_or_default();
    assert!(!labels.contains_key("deny"), "{labels:?}");
    let reviews = server.seen.reviews.lock().unwrap().clone();
    let update = &reviews[1]["request"];
    assert_eq!(update["operation"], "UPDATE");
    assert_eq!(update["oldObject"]["metadata"]["name"], "fine");
    assert_eq!(update["object"]["metadata"]["labels"]["deny"], "yes");
    assert_eq!(update["options"]["kind"], "UpdateOptions");
    sb.shutdown().await;
}

#[tokio::test]
async fn status_subresource_writes_reach_webhooks_that_ask_for_them() {
    let sb = start().await;
    let tls = tls();
    let server = webhook_server(&tls).await;
    register(
        &sb,
        "Validating",
        "observe-status",
        hook(
            "status.cert-csi.io",
            format!("https://{}/observe", server.addr),
            &tls.ca_pem,
            &["UPDATE"],
            &["certificaterequests/status"],
        ),
    )
    .await;
    let crs: Api<DynamicObject> = Api::namespaced_with(sb.client(), NS, &certificate_requests());
    crs.create(&PostParams::default(), &cr("s", json!({})))
        .await
        .unwrap();
    crs.patch(
        "s",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
    )
    .await
    .unwrap();
    assert!(
        server.seen.reviews.lock().unwrap().is_empty(),
        "main resource is not selected"
    );
    crs.patch_status(
        "s",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"conditions": [{"type": "Approved", "status": "True", "reason": "r", "message": "m"}]}})),
    )
    .await
    .unwrap();
    let reviews = server.seen.reviews.lock().unwrap().clone();
    assert_eq!(reviews.len(), 1);
    assert_eq!(reviews[0]["request"]["subResource"], "status");
    assert_eq!(
        reviews[0]["request"]["object"]["status"]["conditions"][0]["type"],
        "Approved"
    );
    assert!(reviews[0]["request"]["oldObject"]["status"]["conditions"].is_null());
    sb.shutdown().await;
}

/// A port with nothing listening on it.
async fn closed_port() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

#[tokio::test]
async fn failure_policy_decides_when_the_webhook_is_down_or_untrusted() {
    let sb = start().await;
    let tls = tls();
    let server = webhook_server(&tls).await;
    let down = closed_port().await;
    let other_ca = ca().pem();
    let crs: Api<DynamicObject> = Api::namespaced_with(sb.client(), NS, &certificate_requests());
    let cases = [
        (
            "down",
            format!("https://{down}/mutate"),
            tls.ca_pem.clone(),
            "dial tcp",
        ),
        (
            "untrusted",
            format!("https://{}/mutate", server.addr),
            other_ca,
            "tls",
        ),
    ];
    for (label, url, ca_pem, detail) in cases {
        let mut h = hook(
            &format!("{label}.cert-csi.io"),
            url,
            &ca_pem,
            &["CREATE"],
            &["certificaterequests"],
        );
        h["objectSelector"] = json!({"matchLabels": {"case": label}});
        h["failurePolicy"] = json!("Fail");
        register(&sb, "Mutating", &format!("{label}-fail"), h.clone()).await;
        let e = api_error(
            crs.create(
                &PostParams::default(),
                &cr(&format!("{label}-a"), json!({"case": label})),
            )
            .await
            .unwrap_err(),
        );
        assert_eq!(e.code, 500, "{label}: {e:?}");
        assert!(
            e.message.starts_with(&format!(
                "Internal error occurred: failed calling webhook \"{label}.cert-csi.io\""
            )),
            "{label}: {}",
            e.message
        );
        assert!(e.message.contains(detail), "{label}: {}", e.message);
        assert_eq!(
            api_error(crs.get(&format!("{label}-a")).await.unwrap_err()).code,
            404
        );

        // Same webhook with Ignore: the create goes through unmutated.
        let dynamic: Api<DynamicObject> = Api::all_with(
            sb.client(),
            &resource(
                "MutatingWebhookConfiguration",
                "mutatingwebhookconfigurations",
            ),
        );
        dynamic
            .patch(
                &format!("{label}-fail"),
                &PatchParams::default(),
                &Patch::Json::<()>(
                    serde_json::from_value(json!([{"op": "replace", "path": "/webhooks/0/failurePolicy", "value": "Ignore"}]))
                        .unwrap(),
                ),
            )
            .await
            .unwrap();
        let ok = crs
            .create(
                &PostParams::default(),
                &cr(&format!("{label}-b"), json!({"case": label})),
            )
            .await
            .unwrap_or_else(|e| panic!("{label} with Ignore: {e}"));
        assert_eq!(
            ok.data["spec"]["username"], "system:admin",
            "{label}: not mutated"
        );
    }
    assert!(
        server.seen.reviews.lock().unwrap().is_empty(),
        "an untrusted server never receives a review"
    );
    sb.shutdown().await;
}

#[tokio::test]
async fn bad_webhook_configurations_are_refused_with_the_field() {
    let sb = start().await;
    let ar = resource(
        "ValidatingWebhookConfiguration",
        "validatingwebhookconfigurations",
    );
    let api: Api<DynamicObject> = Api::all_with(sb.client(), &ar);
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "bad"},
        "webhooks": [{
            "name": "bad.cert-csi.io",
            "clientConfig": {"url": "http://127.0.0.1:1/x"},
            "rules": [],
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
        }],
    }))
    .unwrap();
    let e = api_error(api.create(&PostParams::default(), &obj).await.unwrap_err());
    assert_eq!(e.code, 422);
    assert!(
        e.message.contains("webhooks[0].clientConfig.url"),
        "{}",
        e.message
    );
    assert!(
        e.message.contains("'https' is the only allowed URL scheme"),
        "{}",
        e.message
    );
    sb.shutdown().await;
}
