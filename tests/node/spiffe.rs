//! The SPIFFE driver end to end (issue 9): the real `cert-csi node` binary
//! under `--driver-name spiffe.csi.cert-manager.io`, driven over its socket
//! by the simulated kubelet, against the harness's API server (the real
//! kube-apiserver under `CERT_CSI_TEST_API=real`, else the sandbox).
//!
//! The test signer approves everything; the approver's policy is tested on
//! the controller side. What is checked here is what the node plugin
//! controls: the identity it asks for, the CSR's shape, who creates the
//! request, the files, and that the pod's token leaks nowhere.
//!
//! Who created a request is judged from outside the plugin: the controller's
//! requester-identity webhook runs in process, registered by URL, and sets
//! each request's `spec.username` and `groups` from the caller the API
//! server authenticated. On the sandbox its request log is checked too.

use std::path::Path;
use std::sync::Arc;

use cert_csi::pki::inspect::parse_certificate;
use cert_csi::spiffe_id as spiffe;
use cert_csi::volume::{CREDENTIAL_BUNDLE_FILE, kubelet};
use k8s_openapi::api::authentication::v1::{SelfSubjectReview, TokenRequest};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore,
    ServerConfig, SignatureScheme,
};
use test_kit::{Backend, Env, Options, PodFiles, PodRef, VolumeRequest, assert_status, openssl_ok};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TRUST_DOMAIN: &str = "example.org";

fn spiffe_args(mode: &str) -> Vec<&str> {
    vec![
        "--driver-name",
        spiffe::DRIVER_NAME,
        "--spiffe-trust-domain",
        TRUST_DOMAIN,
        "--spiffe-issuer-name",
        "spiffe-ca",
        "--spiffe-request-mode",
        mode,
    ]
}

/// The harness with the SPIFFE driver and what a cluster running it has:
/// the controller's requester-identity webhook, and, on the real server in
/// pod-token mode, RBAC letting every ServiceAccount create requests (the
/// chart's `spiffe-requester` role; the sandbox authorizes everything).
async fn start(args: &[&str]) -> Env {
    let mut env = Env::start_with_args(Options::default(), args).await;
    env.cluster.serve_webhook().await;
    if env.backend() == Backend::Real && args.contains(&"pod-token") {
        test_kit::real::allow_service_accounts_to_request(&env.client).await;
    }
    env
}

/// Who the node plugin is to the API server: its kubeconfig's user, the
/// admin certificate of `hack/kube` (CN=admin) or the sandbox's anonymous
/// caller.
fn plugin_user(env: &Env) -> &'static str {
    match env.backend() {
        Backend::Real => "admin",
        Backend::Sandbox => "system:anonymous",
    }
}

/// Users the sandbox logged creating requests outside the harness's own
/// namespace, in order; `None` on the real server, which keeps no such log.
fn sandbox_creators(env: &Env) -> Option<Vec<String>> {
    (env.backend() == Backend::Sandbox).then(|| {
        env.sandbox()
            .request_log()
            .into_iter()
            // The harness's CA bootstrap made one in its own namespace.
            .filter(|r| r.namespace.as_deref() != Some(test_kit::CLUSTER_NS))
            .filter(|r| r.verb == "create" && r.resource == "certificaterequests")
            .map(|r| r.user)
            .collect()
    })
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// A pod in `namespace` running as `service_account` (which exists), and
/// its SPIFFE volume as the kubelet sends it: in pod-token mode with the
/// pod's bound token for the default audience.
async fn spiffe_pod(
    env: &Env,
    namespace: &str,
    name: &str,
    service_account: &str,
    with_token: bool,
    attributes: &[(&str, &str)],
) -> (PodRef, VolumeRequest, Option<String>) {
    let pod = env.create_pod(namespace, name, service_account).await;
    env.create_service_account(namespace, service_account).await;
    let mut volume = env.volume(&pod, "spiffe", attributes);
    let mut tokens = None;
    if with_token {
        let json = env.kubelet_tokens(&pod, &[""]).await;
        volume.set(kubelet::SERVICE_ACCOUNT_TOKENS, &json);
        tokens = Some(json);
    }
    (pod, volume, tokens)
}

/// The bearer token inside the kubelet's JSON.
fn token_of(json: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    v[""]["token"].as_str().unwrap().to_string()
}

/// Checks the served identity with openssl: exactly the SPIFFE ID as a
/// critical URI SAN, an empty subject, the four usages, not a CA, and a
/// PKCS#8 P-521 key that matches.
fn assert_spiffe_identity(volume: &VolumeRequest, want_id: &str) {
    let cert = volume.file("tls.crt");
    let text = openssl_ok(&["x509", "-noout", "-text", "-in", path_str(&cert)]);
    assert!(
        text.contains("X509v3 Subject Alternative Name: critical"),
        "the SAN extension is not critical:\n{text}"
    );
    let san_line = text
        .lines()
        .skip_while(|l| !l.contains("X509v3 Subject Alternative Name"))
        .nth(1)
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(san_line, format!("URI:{want_id}"), "{text}");
    let subject = openssl_ok(&["x509", "-noout", "-subject", "-in", path_str(&cert)]);
    assert_eq!(subject.trim(), "subject=", "the subject is not empty");
    assert!(text.contains("CA:FALSE"), "{text}");
    assert!(
        text.contains("Digital Signature, Key Encipherment"),
        "{text}"
    );
    assert!(
        text.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
        "{text}"
    );

    let leaf =
        parse_certificate(&cert_csi::pki::inspect::chain_ders(&volume.read("tls.crt")).unwrap()[0])
            .unwrap();
    assert_eq!(leaf.sans.uris, [want_id]);
    assert!(leaf.sans.dns_names.is_empty() && leaf.sans.ip_addresses.is_empty());
    // P-521 by default, as csi-driver-spiffe makes.
    assert_eq!(leaf.key_type, "ECDSA P-521");
    let lifetime = leaf.not_after.duration_since(leaf.not_before).unwrap();
    assert!(
        lifetime.as_secs() >= 3600 && lifetime.as_secs() < 3600 + 600,
        "lifetime {lifetime:?}, want 1h"
    );

    let key = volume.read_string("tls.key");
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "not PKCS#8");
    let from_key = openssl_ok(&["pkey", "-pubout", "-in", path_str(&volume.file("tls.key"))]);
    let from_cert = openssl_ok(&["x509", "-noout", "-pubkey", "-in", path_str(&cert)]);
    assert_eq!(from_key, from_cert, "key and certificate differ");
    let verified = openssl_ok(&[
        "verify",
        "-CAfile",
        path_str(&volume.file("ca.crt")),
        path_str(&cert),
    ]);
    assert!(verified.contains(": OK"), "{verified}");
}

/// No file under `dir` contains `needle` (node state, logs, anything).
fn assert_not_on_disk(dir: &Path, needle: &str) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file()
                && let Ok(bytes) = std::fs::read(&path)
            {
                assert!(
                    !String::from_utf8_lossy(&bytes).contains(needle),
                    "the pod's token is in {}",
                    path.display()
                );
            }
        }
    }
}

/// The token appears nowhere: not in the plugin's log, node state, any
/// request's metadata or spec, nor anywhere under the data root.
async fn assert_token_leaks_nowhere(env: &Env, namespace: &str, token: &str) {
    assert!(!env.log().contains(token), "the pod's token is in the log");
    assert_not_on_disk(&env.data_root, token);
    for request in env.requests(namespace).await {
        let text = serde_json::to_string(&request).unwrap();
        assert!(!text.contains(token), "the pod's token is in a request");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_token_mode_gives_billing_its_spiffe_id_and_creates_as_the_pod() {
    if !test_kit::require_root("pod_token_mode_gives_billing_its_spiffe_id_and_creates_as_the_pod")
    {
        return;
    }
    let env = start(&spiffe_args("pod-token")).await;
    let (pod, volume, tokens) = spiffe_pod(
        &env,
        "shop",
        "billing-0",
        "billing",
        true,
        &[(CREDENTIAL_BUNDLE_FILE, "credentials.pem")],
    )
    .await;
    env.publish_ok(&volume).await;

    let want = format!("spiffe://{TRUST_DOMAIN}/ns/shop/sa/billing");
    assert_spiffe_identity(&volume, &want);
    assert_eq!(volume.read_string("ca.crt"), env.cluster.ca_pem());

    // The request: created with the pod's token, so the API server
    // authenticated the pod's ServiceAccount, bound to the pod, as its
    // creator, and the webhook wrote that into the requester fields.
    let request = env.only_request(&volume).await;
    assert_eq!(
        request.spec.username.as_deref(),
        Some("system:serviceaccount:shop:billing"),
        "the request was not created with the pod's token"
    );
    let groups = request.spec.groups.clone().unwrap_or_default();
    assert!(
        groups.iter().any(|g| g == "system:serviceaccounts:shop"),
        "{groups:?}"
    );
    let extra = request.spec.extra.clone().unwrap_or_default();
    assert_eq!(
        extra.get("authentication.kubernetes.io/pod-name"),
        Some(&vec![pod.name.clone()]),
        "the token is bound to the pod: {extra:?}"
    );
    assert_eq!(
        extra.get("authentication.kubernetes.io/pod-uid"),
        Some(&vec![pod.uid.clone()]),
        "{extra:?}"
    );
    if let Some(logged) = sandbox_creators(&env) {
        assert_eq!(logged, ["system:serviceaccount:shop:billing"]);
    }
    let annotations = test_kit::annotations(&request);
    assert_eq!(annotations[spiffe::ANNOTATION_IDENTITY], want);
    assert_eq!(annotations[spiffe::ANNOTATION_POD_NAME], pod.name);
    assert_eq!(annotations[spiffe::ANNOTATION_POD_UID], pod.uid);
    assert_eq!(annotations[spiffe::ANNOTATION_NODE], env.node_id);
    assert_eq!(request.spec.duration.as_deref(), Some("1h0m0s"));
    // Left out when false, as csi-lib does.
    assert_eq!(request.spec.is_ca, None);
    assert_eq!(
        request.spec.usages.clone().unwrap_or_default(),
        [
            "digital signature",
            "key encipherment",
            "server auth",
            "client auth"
        ]
    );
    assert_eq!(request.spec.issuer_ref.name, "spiffe-ca");

    // The credential bundle: the PKCS#8 key, then the chain, and the key
    // belongs to the leaf.
    let bundle = volume.read("credentials.pem");
    let blocks = pem::parse_many(&bundle).unwrap();
    assert_eq!(blocks[0].tag(), "PRIVATE KEY");
    assert!(blocks.len() >= 2);
    assert!(blocks[1..].iter().all(|b| b.tag() == "CERTIFICATE"));
    let key = cert_csi::pki::PrivateKey::from_pem(&bundle).unwrap();
    let leaf = parse_certificate(blocks[1].contents()).unwrap();
    assert!(cert_csi::pki::key_matches_certificate(&key, &leaf));
    assert_eq!(
        pem::encode_many(&blocks[1..]).replace("\r\n", "\n"),
        volume.read_string("tls.crt").replace("\r\n", "\n"),
        "the bundle's chain is the chain in tls.crt"
    );
    assert_eq!(
        pem::parse(volume.read("tls.key")).unwrap().contents(),
        blocks[0].contents(),
        "the bundle's key is the key in tls.key"
    );

    // A republish with a fresh token changes nothing on disk or in the API.
    let mut again = volume.clone();
    let fresh = env.kubelet_tokens(&pod, &[""]).await;
    again.set(kubelet::SERVICE_ACCOUNT_TOKENS, &fresh);
    let before = volume.read("tls.crt");
    env.publish_ok(&again).await;
    assert_eq!(volume.read("tls.crt"), before);
    assert_eq!(env.requests_for(&volume).await.len(), 1);

    let state = env.state_json(&volume).expect("node state");
    let state_text = state.to_string();
    for token in [token_of(tokens.as_ref().unwrap()), token_of(&fresh)] {
        assert!(!state_text.contains(&token), "the token is in node state");
        assert_token_leaks_nowhere(&env, "shop", &token).await;
    }

    env.unpublish(&volume.volume_id, &volume.target_path)
        .await
        .unwrap();
    env.assert_no_trace(&volume).await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_account_mode_gives_the_same_id_and_names_pod_and_node() {
    if !test_kit::require_root("node_account_mode_gives_the_same_id_and_names_pod_and_node") {
        return;
    }
    let env = start(&spiffe_args("node-account")).await;
    // No token: the kubelet need not request one in this mode.
    let (pod, volume, _) = spiffe_pod(&env, "shop", "billing-1", "billing", false, &[]).await;
    env.publish_ok(&volume).await;
    let want = format!("spiffe://{TRUST_DOMAIN}/ns/shop/sa/billing");
    assert_spiffe_identity(&volume, &want);

    let request = env.only_request(&volume).await;
    let annotations = test_kit::annotations(&request);
    assert_eq!(annotations[spiffe::ANNOTATION_IDENTITY], want);
    assert_eq!(annotations[spiffe::ANNOTATION_POD_NAME], pod.name);
    assert_eq!(annotations[spiffe::ANNOTATION_POD_UID], pod.uid);
    assert_eq!(annotations[spiffe::ANNOTATION_NODE], env.node_id);
    // Created with the plugin's own identity, not the pod's.
    assert_eq!(request.spec.username.as_deref(), Some(plugin_user(&env)));
    assert_eq!(env.cluster.creators("shop").await, [plugin_user(&env)]);
    if let Some(logged) = sandbox_creators(&env) {
        assert_eq!(logged, ["system:anonymous"]);
    }
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spiffe_driver_refuses_what_a_pod_may_not_choose() {
    if !test_kit::require_root("the_spiffe_driver_refuses_what_a_pod_may_not_choose") {
        return;
    }
    let env = start(&spiffe_args("pod-token")).await;
    let (_pod, volume, _) = spiffe_pod(&env, "shop", "billing-2", "billing", true, &[]).await;

    let mut no_token = volume.clone();
    no_token.remove(kubelet::SERVICE_ACCOUNT_TOKENS);
    let status = assert_status(
        env.publish(&no_token).await,
        tonic::Code::InvalidArgument,
        kubelet::SERVICE_ACCOUNT_TOKENS,
        "no token",
    );
    assert!(status.message().contains("tokenRequests"), "{status:?}");

    let mut forged = volume.clone();
    forged.set(
        "spiffe.csi.cert-manager.io/identity",
        "spiffe://example.org/ns/kube-system/sa/admin",
    );
    assert_status(
        env.publish(&forged).await,
        tonic::Code::InvalidArgument,
        "spiffe.csi.cert-manager.io/identity",
        "an identity attribute",
    );

    let mut dns = volume.clone();
    dns.set(cert_csi::volume::keys::DNS_NAMES, "admin.example.org");
    assert_status(
        env.publish(&dns).await,
        tonic::Code::InvalidArgument,
        cert_csi::volume::keys::DNS_NAMES,
        "a DNS name",
    );

    let mut writable = volume.clone();
    writable.readonly = false;
    assert_status(
        env.publish(&writable).await,
        tonic::Code::InvalidArgument,
        "readOnly",
        "a writable volume",
    );

    assert_eq!(env.count_requests("shop").await, 0, "no request was made");
    env.assert_no_trace(&volume).await;
    env.finish().await;
}

// ---------------------------------------------------------------------------
// mTLS with nothing but the mounted files
// ---------------------------------------------------------------------------

/// The one `spiffe://` URI SAN of a leaf.
fn spiffe_id_of(cert: &CertificateDer<'_>) -> Result<String, rustls::Error> {
    let info = parse_certificate(cert.as_ref())
        .map_err(|e| rustls::Error::General(format!("peer certificate: {e}")))?;
    match info.sans.uris.as_slice() {
        [id] if id.starts_with("spiffe://") => Ok(id.clone()),
        other => Err(rustls::Error::General(format!(
            "the peer has no single SPIFFE ID: {other:?}"
        ))),
    }
}

fn refuse() -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
}

/// Verifies a server's chain with webpki against the volume's ca.crt, then
/// its SPIFFE ID. SPIFFE certificates carry no DNS name, so the one
/// failure accepted from webpki is the name check, which webpki runs only
/// after the chain verified.
#[derive(Debug)]
struct SpiffeServerVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    expect: String,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Ok(_)
            | Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => {}
            Err(e) => return Err(e),
        }
        if spiffe_id_of(end_entity)? != self.expect {
            return Err(refuse());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Verifies a client's chain with webpki, then lets in only `allow`.
#[derive(Debug)]
struct SpiffeClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    allow: Vec<String>,
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if !self.allow.contains(&spiffe_id_of(end_entity)?) {
            return Err(refuse());
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// What a pod reads from its volume.
struct Files {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<RootCertStore>,
}

fn load(volume: &VolumeRequest) -> Files {
    let chain = CertificateDer::pem_slice_iter(&volume.read("tls.crt"))
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(&volume.read("tls.key")).unwrap();
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(&volume.read("ca.crt")) {
        roots.add(ca.unwrap()).unwrap();
    }
    Files {
        chain,
        key,
        roots: Arc::new(roots),
    }
}

/// One exchange: the server (allowing `allow`) and the client (expecting
/// the server to be `server_id`). Returns the ID each side saw, or the
/// client's error.
async fn mtls(
    server: &Files,
    allow: &[String],
    client: &Files,
    server_id: &str,
) -> Result<(String, String), String> {
    let inner = WebPkiClientVerifier::builder(server.roots.clone())
        .build()
        .unwrap();
    let server_config = ServerConfig::builder()
        .with_client_cert_verifier(Arc::new(SpiffeClientVerifier {
            inner,
            allow: allow.to_vec(),
        }))
        .with_single_cert(server.chain.clone(), server.key.clone_key())
        .unwrap();
    let inner = rustls::client::WebPkiServerVerifier::builder(client.roots.clone())
        .build()
        .unwrap();
    let client_config = ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier {
            inner,
            expect: server_id.to_string(),
        }))
        .with_client_auth_cert(client.chain.clone(), client.key.clone_key())
        .unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let serve = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let peer = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        let id = spiffe_id_of(&peer).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        tls.write_all(b"pong").await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())?;
        Ok::<String, String>(id)
    });
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
    let call = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        // Any name: the verifier checks the SPIFFE ID, not a DNS name.
        let name = ServerName::try_from("spiffe-peer").unwrap();
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let peer = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        let id = spiffe_id_of(&peer).map_err(|e| e.to_string())?;
        tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
        let mut reply = Vec::new();
        tls.read_to_end(&mut reply)
            .await
            .map_err(|e| e.to_string())?;
        if reply != b"pong" {
            return Err(format!("unexpected reply {reply:?}"));
        }
        Ok::<String, String>(id)
    };
    let client_result = call.await;
    let server_result = tokio::time::timeout(std::time::Duration::from_secs(10), serve)
        .await
        .map_err(|_| "the server did not finish".to_string())?
        .unwrap();
    match (server_result, client_result) {
        (Ok(server_saw), Ok(client_saw)) => Ok((server_saw, client_saw)),
        (Err(server), Ok(_)) => Err(format!("server: {server}")),
        (Ok(_), Err(client)) => Err(format!("client: {client}")),
        (Err(server), Err(client)) => Err(format!("server: {server}; client: {client}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spiffe_pods_talk_mutual_tls_and_a_server_admits_only_billing() {
    if !test_kit::require_root("spiffe_pods_talk_mutual_tls_and_a_server_admits_only_billing") {
        return;
    }
    let env = start(&spiffe_args("node-account")).await;
    let (_, ledger, _) = spiffe_pod(&env, "shop", "ledger-0", "ledger", false, &[]).await;
    let (_, billing, _) = spiffe_pod(&env, "shop", "billing-0", "billing", false, &[]).await;
    let (_, intruder, _) = spiffe_pod(&env, "shop", "web-0", "web", false, &[]).await;
    for volume in [&ledger, &billing, &intruder] {
        env.publish_ok(volume).await;
    }
    let id = |sa: &str| format!("spiffe://{TRUST_DOMAIN}/ns/shop/sa/{sa}");
    let allow = [id("billing")];

    // billing calls ledger: both sides verify the other's SPIFFE ID.
    let (server_saw, client_saw) = mtls(&load(&ledger), &allow, &load(&billing), &id("ledger"))
        .await
        .expect("billing and ledger complete mutual TLS");
    assert_eq!(server_saw, id("billing"));
    assert_eq!(client_saw, id("ledger"));

    // web is refused by ledger, which admits only billing.
    let refused = mtls(&load(&ledger), &allow, &load(&intruder), &id("ledger"))
        .await
        .expect_err("ledger must refuse web");
    assert!(
        refused.contains("ApplicationVerificationFailure") || refused.contains("alert"),
        "{refused}"
    );

    // And billing refuses a server that is not the ledger it expects.
    let wrong = mtls(&load(&intruder), &allow, &load(&billing), &id("ledger"))
        .await
        .expect_err("billing must refuse a server that is not ledger");
    assert!(wrong.contains("client"), "{wrong}");
    env.finish().await;
}

/// The kubelet's tokens JSON for one token of the default audience.
fn tokens_json(token: &str, lifetime: std::time::Duration) -> String {
    let expires = jiff::Timestamp::now() + jiff::SignedDuration::try_from(lifetime).unwrap();
    serde_json::json!({"": {"token": token, "expirationTimestamp": expires.to_string()}})
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_uses_the_token_of_the_latest_republish() {
    if !test_kit::require_root("a_renewal_uses_the_token_of_the_latest_republish") {
        return;
    }
    // The renewal, at two thirds of the lifetime, must fall after the first
    // token stopped working. On the sandbox that token simply expires after
    // 4 s. A real API server issues nothing below 10 minutes, so there the
    // first token is bound to a Secret that is deleted once it was used,
    // which revokes it; and as the API server remembers a token that
    // authenticated for 10 s (its token cache), the lifetime is longer.
    let backend = Backend::from_env();
    let lifetime = match backend {
        Backend::Real => "30s",
        Backend::Sandbox => "12s",
    };
    let mut args = spiffe_args("pod-token");
    args.extend(["--spiffe-duration", lifetime, "--renewal-jitter", "0"]);
    let env = start(&args).await;
    let (pod, mut volume, _) = spiffe_pod(&env, "shop", "billing-3", "billing", false, &[]).await;
    let (first_token, first_json) = match backend {
        Backend::Sandbox => {
            let short = env
                .sandbox()
                .issue_token_for("shop", "billing", std::time::Duration::from_secs(4))
                .unwrap();
            let json = tokens_json(&short, std::time::Duration::from_secs(4));
            (short, json)
        }
        Backend::Real => revocable_token(&env, "shop", "billing", FIRST_TOKEN_SECRET).await,
    };
    volume.set(kubelet::SERVICE_ACCOUNT_TOKENS, &first_json);
    env.publish_ok(&volume).await;
    let first = test_kit::served_leaf(&volume, "tls.crt").serial_hex;
    if backend == Backend::Real {
        Api::<Secret>::namespaced(env.client.clone(), "shop")
            .delete(FIRST_TOKEN_SECRET, &DeleteParams::default())
            .await
            .expect("revoking the first token");
    }

    // The kubelet's periodic republish brings a fresh token, which only
    // memory keeps.
    let fresh = env.kubelet_tokens(&pod, &[""]).await;
    let mut again = volume.clone();
    again.set(kubelet::SERVICE_ACCOUNT_TOKENS, &fresh);
    env.publish_ok(&again).await;

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while test_kit::served_leaf(&volume, "tls.crt").serial_hex == first {
        assert!(
            std::time::Instant::now() < deadline,
            "no renewal within 60s; log:\n{}",
            env.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_spiffe_identity_id(
        &volume,
        &format!("spiffe://{TRUST_DOMAIN}/ns/shop/sa/billing"),
    );
    // Both requests were created as the pod's ServiceAccount: the renewal
    // with the fresh token, since the first one no longer authenticates.
    let billing = [
        "system:serviceaccount:shop:billing",
        "system:serviceaccount:shop:billing",
    ];
    assert_eq!(env.cluster.creators("shop").await, billing);
    if let Some(logged) = sandbox_creators(&env) {
        assert_eq!(logged, billing);
    }
    if let Some(real) = env.real() {
        let revoked = real.client_for_token(&first_token).await;
        match Api::<SelfSubjectReview>::all(revoked)
            .create(&PostParams::default(), &SelfSubjectReview::default())
            .await
        {
            Err(kube::Error::Api(s)) if s.code == 401 => {}
            other => panic!("the first token still authenticates: {other:?}"),
        }
    }
    for token in [first_token, token_of(&fresh)] {
        assert_token_leaks_nowhere(&env, "shop", &token).await;
    }
    env.finish().await;
}

/// The Secret the real server's first token in
/// [`a_renewal_uses_the_token_of_the_latest_republish`] is bound to.
const FIRST_TOKEN_SECRET: &str = "first-token-binding";

/// A token of `namespace/service_account` bound to a new Secret `secret`,
/// so deleting the Secret revokes it, as the kubelet's JSON carries it.
async fn revocable_token(
    env: &Env,
    namespace: &str,
    service_account: &str,
    secret: &str,
) -> (String, String) {
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), namespace);
    let bound = secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": secret}})).unwrap(),
        )
        .await
        .expect("the Secret a token is bound to");
    let request: TokenRequest = serde_json::from_value(serde_json::json!({
        "spec": {
            "audiences": [],
            "expirationSeconds": 600,
            "boundObjectRef": {
                "apiVersion": "v1", "kind": "Secret",
                "name": secret, "uid": kube::ResourceExt::uid(&bound),
            },
        },
    }))
    .unwrap();
    let status = Api::<ServiceAccount>::namespaced(env.client.clone(), namespace)
        .create_token_request(service_account, &PostParams::default(), &request)
        .await
        .expect("TokenRequest bound to a Secret")
        .status
        .expect("a TokenRequest answer has a status");
    let json = serde_json::json!({"": {
        "token": status.token,
        "expirationTimestamp": status.expiration_timestamp.0.to_string(),
    }})
    .to_string();
    (status.token, json)
}

/// The leaf's only URI SAN.
fn assert_spiffe_identity_id(volume: &VolumeRequest, want: &str) {
    let leaf = test_kit::served_leaf(volume, "tls.crt");
    assert_eq!(leaf.sans.uris, [want]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csi_driver_spiffe_file_names_annotations_and_source_ca_bundle() {
    if !test_kit::require_root("csi_driver_spiffe_file_names_annotations_and_source_ca_bundle") {
        return;
    }
    // The bundle file the driver reads, as csi-driver-spiffe's
    // --source-ca-bundle: here the CA that signs, so the pod can verify.
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("ca.pem");
    let mut args = spiffe_args("node-account");
    let bundle_flag = format!("--source-ca-bundle={}", path_str(&bundle));
    args.extend([
        "--file-name-certificate=svid.pem",
        "--file-name-key=svid_key.pem",
        "--file-name-ca=bundle.pem",
        "--extra-certificate-request-annotations=team=payments,example.com/cost-center=42",
        bundle_flag.as_str(),
    ]);
    // The file must exist before the plugin starts, as a mounted ConfigMap
    // does; the harness's CA is known once the environment runs, so the
    // plugin is restarted after writing it.
    std::fs::write(&bundle, "").unwrap();
    let mut env = start(&args).await;
    std::fs::write(&bundle, env.cluster.ca_pem()).unwrap();
    env.restart_plugin().await;
    let (_, volume, _) = spiffe_pod(&env, "shop", "billing-2", "billing", false, &[]).await;
    env.publish_ok(&volume).await;

    for name in ["svid.pem", "svid_key.pem", "bundle.pem"] {
        assert!(volume.file(name).exists(), "{name} missing");
    }
    assert!(!volume.file("tls.crt").exists());
    assert_eq!(
        std::fs::read_to_string(volume.file("bundle.pem")).unwrap(),
        env.cluster.ca_pem()
    );
    openssl_ok(&[
        "verify",
        "-CAfile",
        path_str(&volume.file("bundle.pem")),
        path_str(&volume.file("svid.pem")),
    ]);
    let request = env.only_request(&volume).await;
    let annotations = test_kit::annotations(&request);
    assert_eq!(annotations["team"], "payments");
    assert_eq!(annotations["example.com/cost-center"], "42");
    assert_eq!(
        annotations[spiffe::ANNOTATION_IDENTITY],
        format!("spiffe://{TRUST_DOMAIN}/ns/shop/sa/billing")
    );

    // A new bundle (another CA beside the first) reaches the volume.
    let extra = dir.path().join("extra.pem");
    openssl_ok(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=next root",
        "-days",
        "1",
        "-keyout",
        "/dev/null",
        "-out",
        path_str(&extra),
    ]);
    let next = format!(
        "{}{}",
        env.cluster.ca_pem(),
        std::fs::read_to_string(&extra).unwrap()
    );
    std::fs::write(dir.path().join("ca.pem.tmp"), &next).unwrap();
    std::fs::rename(dir.path().join("ca.pem.tmp"), &bundle).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::fs::read_to_string(volume.file("bundle.pem")).unwrap() != next {
        assert!(
            std::time::Instant::now() < deadline,
            "the volume's bundle.pem never took the new bundle"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    env.finish().await;
}

#[test]
fn csi_driver_spiffe_flags_are_refused_for_the_other_driver_and_checked() {
    for (args, want) in [
        (
            vec!["--file-name-key=k.pem"],
            "--file-name-key is a flag of the SPIFFE driver",
        ),
        (
            vec!["--source-ca-bundle=/etc/ca.pem"],
            "--source-ca-bundle is a flag of the SPIFFE driver",
        ),
        (
            vec![
                "--driver-name=spiffe.csi.cert-manager.io",
                "--spiffe-issuer-name=ca",
                "--file-name-ca=tls.crt",
            ],
            "three different names",
        ),
        (
            vec![
                "--driver-name=spiffe.csi.cert-manager.io",
                "--spiffe-issuer-name=ca",
                "--extra-certificate-request-annotations=csi.cert-manager.io/x=1",
            ],
            "cert-manager.io domain",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cert-csi"))
            .args(["node", "--node-id", "n", "--kubeconfig", "/nonexistent"])
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(want),
            "{args:?}: {stderr}"
        );
    }
}

/// Polls the node plugin's log until it holds `phrase` `count` times.
async fn await_node_log(env: &Env, phrase: &str, count: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while env.log().matches(phrase).count() < count {
        assert!(
            std::time::Instant::now() < deadline,
            "the node never logged {phrase:?} {count} time(s)"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_issuance_configmap_switches_the_issuer_without_a_restart() {
    if !test_kit::require_root(
        "the_runtime_issuance_configmap_switches_the_issuer_without_a_restart",
    ) {
        return;
    }
    let mut args = spiffe_args("node-account");
    args.extend([
        "--runtime-issuance-config-map-name=spiffe-issuance",
        "--runtime-issuance-config-map-namespace=cert-manager",
    ]);
    let env = start(&args).await;
    let runtime_ca = env.cluster.short_lived_ca("runtime-ca", "2h").await;
    let issuer_of = |r: &cert_csi::api::CertificateRequest| r.spec.issuer_ref.name.clone();

    // No ConfigMap: the flags' issuer.
    await_node_log(&env, "no runtime issuance ConfigMap", 1).await;
    let (_, first, _) = spiffe_pod(&env, "shop", "billing-a", "billing", false, &[]).await;
    env.publish_ok(&first).await;
    assert_eq!(issuer_of(&env.only_request(&first).await), "spiffe-ca");

    // The ConfigMap names another issuer: the next volume's request goes
    // there, and its certificate chains to that CA (openssl).
    let maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(env.client.clone(), test_kit::CLUSTER_NS);
    let cm: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "spiffe-issuance"},
        "data": {"issuer-name": "runtime-ca", "issuer-kind": "ClusterIssuer", "issuer-group": "cert-manager.io"},
    }))
    .unwrap();
    maps.create(&Default::default(), &cm).await.unwrap();
    await_node_log(&env, "go to the runtime issuance ConfigMap's issuer", 1).await;
    let (_, second, _) = spiffe_pod(&env, "shop", "billing-b", "billing", false, &[]).await;
    env.publish_ok(&second).await;
    assert_eq!(issuer_of(&env.only_request(&second).await), "runtime-ca");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("runtime-ca.pem");
    std::fs::write(&ca_file, &runtime_ca).unwrap();
    openssl_ok(&[
        "verify",
        "-CAfile",
        path_str(&ca_file),
        path_str(&second.file("tls.crt")),
    ]);

    // A change that drops a key is refused; the issuer stays.
    let mut broken = cm.clone();
    broken.data.as_mut().unwrap().remove("issuer-group");
    maps.replace("spiffe-issuance", &Default::default(), &broken)
        .await
        .unwrap();
    await_node_log(&env, "names no usable issuer; keeping the current one", 1).await;

    // Deleted: back to the flags' issuer.
    maps.delete("spiffe-issuance", &Default::default())
        .await
        .unwrap();
    await_node_log(&env, "no runtime issuance ConfigMap", 2).await;
    let (_, third, _) = spiffe_pod(&env, "shop", "billing-c", "billing", false, &[]).await;
    env.publish_ok(&third).await;
    assert_eq!(issuer_of(&env.only_request(&third).await), "spiffe-ca");
    env.finish().await;
}

#[test]
fn csi_driver_spiffe_flag_names_are_accepted_as_aliases() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cert-csi"))
            .args(args)
            .env_remove("KUBECONFIG")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} should stop before running");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let node = [
        "node",
        "--node-id=n",
        "--kubeconfig=/nonexistent",
        "--driver-name=spiffe.csi.cert-manager.io",
    ];
    // Each alias reaches the flag it stands for: a bad value is refused
    // under cert-csi's name.
    for (alias, value, flag) in [
        ("--trust-domain", "Not A Domain", "--spiffe-trust-domain"),
        ("--certificate-request-duration", "5s", "--spiffe-duration"),
        ("--issuer-kind", "Cluster-Issuer", "--spiffe-issuer-kind"),
        ("--issuer-group", "Example.COM", "--spiffe-issuer-group"),
    ] {
        let mut args = node.to_vec();
        let set = format!("{alias}={value}");
        args.extend(["--issuer-name=spiffe-ca", set.as_str()]);
        let stderr = run(&args);
        assert!(stderr.contains(flag), "{alias}: {stderr}");
    }
    // All of them valid: the node gets past its flags, to the kubeconfig.
    let mut args = node.to_vec();
    args.extend([
        "--trust-domain=example.org",
        "--issuer-name=spiffe-ca",
        "--issuer-kind=Issuer",
        "--issuer-group=cert-manager.io",
        "--certificate-request-duration=30m",
    ]);
    let stderr = run(&args);
    assert!(stderr.contains("/nonexistent"), "{stderr}");
    // The approver's: --trust-domain switches the SPIFFE approver on.
    let stderr = run(&["controller", "--trust-domain=example.org"]);
    assert!(stderr.contains("--spiffe-issuer is not"), "{stderr}");
}
