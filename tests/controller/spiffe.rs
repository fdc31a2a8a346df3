//! The SPIFFE policy approver and the requester-identity webhook, in
//! process against the harness's API server (the real kube-apiserver under
//! `CERT_CSI_TEST_API=real`, else the sandbox): requests are created with
//! real ServiceAccount tokens, the API server calls the controller's
//! webhook over HTTPS, and the controller approves (and, with a CA
//! ClusterIssuer, signs) or denies. Issued certificates are read with the
//! openssl CLI.
//!
//! The webhook is registered as the controller's `--webhook-configure`
//! writes it: by `clientConfig.url` (`--webhook-url`) on the real loopback
//! control plane, which has no Services or kube-proxy, and by
//! `clientConfig.service` on the sandbox, which routes that Service to the
//! in-process webhook.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use cert_csi::api::conditions::types;
use cert_csi::api::{CertificateRequest, ClusterIssuer};
use cert_csi::controller::spiffe_approver::{SpiffeFlags, SpiffePolicy, reasons};
use cert_csi::controller::webhook::{self, Target};
use cert_csi::controller::{ControllerOptions, EnabledControllers, Health};
use cert_csi::pki::{
    CsrOptions, Curve, KeyAlgorithm, KeyEncoding, PrivateKey, SanSpec, SignParams, SubjectSpec,
    build_csr,
};
use cert_csi::shutdown::CancellationToken;
use cert_csi::spiffe_id as spiffe;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::runtime::wait::await_condition;
use serde_json::json;
use test_kit::real::ApiServer;

const CLUSTER_NS: &str = "cert-manager";
const NODE_NS: &str = "cert-csi";
const NODE_SA: &str = "cert-csi-node";
const TD: &str = "example.org";
const ISSUER: &str = "spiffe-ca";
const BILLING_ID: &str = "spiffe://example.org/ns/shop/sa/billing";
const TIMEOUT: Duration = Duration::from_secs(20);

/// API server, webhook and controller; stopped in `stop` (and aborted on
/// drop).
struct Env {
    server: Option<ApiServer>,
    admin: kube::Client,
    token: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    ca_pem: String,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.token.cancel();
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn from<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap()
}

fn key() -> PrivateKey {
    PrivateKey::generate(KeyAlgorithm::Ecdsa(Curve::P256)).unwrap()
}

impl Env {
    /// API server, webhook and a running controller that has listed what
    /// it watches.
    async fn start() -> Env {
        let mut env = Env::without_controller().await;
        env.start_controller().await;
        env
    }

    /// API server and webhook; the controller is not running yet.
    async fn without_controller() -> Env {
        let (server, admin) = ApiServer::start(10_000).await;
        let pp = PostParams::default();
        for ns in [CLUSTER_NS, NODE_NS, "shop"] {
            test_kit::create_namespace(&admin, ns).await;
        }
        for (ns, sa) in [("shop", "billing"), ("shop", "admin"), (NODE_NS, NODE_SA)] {
            Api::<ServiceAccount>::namespaced(admin.clone(), ns)
                .create(&pp, &from(json!({"metadata": {"name": sa}})))
                .await
                .unwrap();
        }

        // The signing CA, as a CA ClusterIssuer.
        let ca_key = key();
        let subject = SubjectSpec {
            common_name: Some("spiffe test CA".into()),
            ..Default::default()
        };
        let csr = build_csr(
            &ca_key,
            &subject,
            &SanSpec::default(),
            &CsrOptions::default(),
        )
        .unwrap();
        let ca = cert_csi::pki::sign_self_signed(
            csr.pem.as_bytes(),
            &ca_key,
            &SignParams {
                is_ca: true,
                duration: Some(Duration::from_secs(3600 * 24)),
                ..Default::default()
            },
        )
        .unwrap();
        let b64 = |b: &[u8]| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(b)
        };
        let secret: Secret = from(json!({
            "metadata": {"name": "spiffe-ca"},
            "type": "kubernetes.io/tls",
            "data": {
                "tls.crt": b64(ca.certificate_pem.as_bytes()),
                "tls.key": b64(ca_key.to_pem(KeyEncoding::Pkcs8).unwrap().expose()),
            },
        }));
        Api::<Secret>::namespaced(admin.clone(), CLUSTER_NS)
            .create(&pp, &secret)
            .await
            .unwrap();
        let issuer: ClusterIssuer = from(json!({
            "apiVersion": "cert-manager.io/v1", "kind": "ClusterIssuer",
            "metadata": {"name": ISSUER},
            "spec": {"ca": {"secretName": "spiffe-ca"}},
        }));
        Api::<ClusterIssuer>::all(admin.clone())
            .create(&pp, &issuer)
            .await
            .unwrap();

        let token = CancellationToken::new();
        let mut tasks = Vec::new();

        // The webhook: by URL on the real server, through a Service route
        // (as in a cluster) on the sandbox.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = match &server {
            ApiServer::Real(..) => Target::url(&format!(
                "https://{}{}",
                listener.local_addr().unwrap(),
                webhook::PATH
            ))
            .unwrap(),
            ApiServer::Sandbox(sandbox) => {
                sandbox.route_service(
                    NODE_NS,
                    "cert-csi-webhook",
                    443,
                    listener.local_addr().unwrap(),
                );
                Target::Service {
                    namespace: NODE_NS.into(),
                    name: "cert-csi-webhook".into(),
                    port: 443,
                }
            }
        };
        let cert = webhook::serving_cert(&target.names()).unwrap();
        webhook::register(
            admin.clone(),
            &webhook::configuration(&target, &cert.ca_pem),
        )
        .await
        .expect("webhook configuration registered");
        // Registering twice replaces in place (a controller restart).
        webhook::register(
            admin.clone(),
            &webhook::configuration(&target, &cert.ca_pem),
        )
        .await
        .expect("webhook configuration replaced");
        let shutdown = token.clone();
        tasks.push(tokio::spawn(async move {
            webhook::serve(listener, &cert, shutdown)
                .await
                .expect("webhook serves");
        }));
        // A real API server applies a new configuration once its informer
        // has it.
        test_kit::await_webhook(&admin).await;
        if let ApiServer::Real(..) = &server {
            // The chart's pod-token grant, so the ServiceAccounts below may
            // create requests at all; the approver decides.
            test_kit::real::allow_service_accounts_to_request(&admin).await;
        }
        Env {
            server: Some(server),
            admin,
            token,
            tasks,
            ca_pem: ca.certificate_pem,
        }
    }

    /// Starts the controller (SPIFFE approver, issuers, signer) and returns
    /// once every loop has listed its objects.
    async fn start_controller(&mut self) {
        let policy = SpiffePolicy::from_flags(&SpiffeFlags {
            trust_domain: TD,
            id_template: spiffe::DEFAULT_ID_TEMPLATE,
            issuers: &format!("clusterissuers.cert-manager.io/{ISSUER}"),
            duration: Duration::from_secs(3600),
            // The default of --spiffe-key-types.
            key_types: "P-256,P-384,P-521,Ed25519",
            node_accounts: &format!("{NODE_NS}:{NODE_SA}"),
        })
        .unwrap();
        let mut options = ControllerOptions::new(CLUSTER_NS);
        options.enabled = EnabledControllers::parse("approver,issuers,signer").unwrap();
        options.spiffe = Some(Arc::new(policy));
        let health = Health::default();
        self.tasks.push(tokio::spawn(cert_csi::controller::run(
            self.admin(),
            options,
            health.clone(),
            self.token.clone(),
        )));
        // The issuer turning Ready shows the controller runs (so `health`
        // counts its loops); then wait until each loop has listed.
        let issuers: Api<ClusterIssuer> = Api::all(self.admin());
        tokio::time::timeout(
            TIMEOUT,
            await_condition(issuers, ISSUER, |i: Option<&ClusterIssuer>| {
                i.is_some_and(ClusterIssuer::is_ready)
            }),
        )
        .await
        .expect("ClusterIssuer spiffe-ca Ready")
        .unwrap();
        let deadline = std::time::Instant::now() + TIMEOUT;
        while !health.is_ready() {
            assert!(
                std::time::Instant::now() < deadline,
                "the controller's loops had not listed within {TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn admin(&self) -> kube::Client {
        self.admin.clone()
    }

    /// A client acting as ServiceAccount `ns/sa`, optionally pod-bound.
    async fn as_service_account(&self, ns: &str, sa: &str, pod: Option<&str>) -> kube::Client {
        let mut spec = json!({"audiences": [], "expirationSeconds": 900});
        if let Some(p) = pod {
            spec["boundObjectRef"] = json!({"kind": "Pod", "apiVersion": "v1", "name": p});
        }
        let request: TokenRequest = from(json!({ "spec": spec }));
        let token = Api::<ServiceAccount>::namespaced(self.admin(), ns)
            .create_token_request(sa, &PostParams::default(), &request)
            .await
            .unwrap()
            .status
            .unwrap()
            .token;
        match self.server.as_ref().unwrap() {
            ApiServer::Sandbox(sandbox) => sandbox.client_for_token(&token),
            ApiServer::Real(real, _) => real.client_for_token(&token).await,
        }
    }

    async fn create_pod(&self, ns: &str, name: &str, sa: &str, node: &str) -> Pod {
        let pod: Pod = from(json!({
            "metadata": {"name": name},
            "spec": {"serviceAccountName": sa, "nodeName": node,
                     "containers": [{"name": "c", "image": "x"}]},
        }));
        Api::<Pod>::namespaced(self.admin(), ns)
            .create(&PostParams::default(), &pod)
            .await
            .unwrap()
    }

    /// Waits until the request is approved or denied and returns it.
    async fn decided(&self, ns: &str, name: &str) -> CertificateRequest {
        let api: Api<CertificateRequest> = Api::namespaced(self.admin(), ns);
        let decided = tokio::time::timeout(
            TIMEOUT,
            await_condition(api.clone(), name, |r: Option<&CertificateRequest>| {
                r.is_some_and(|r| r.is_denied() || r.is_ready())
            }),
        )
        .await;
        match decided {
            Ok(found) => found.unwrap().unwrap(),
            Err(_) => panic!(
                "{ns}/{name} was not decided and signed within {TIMEOUT:?}: {:?}",
                api.get_opt(name).await
            ),
        }
    }

    async fn stop(mut self) {
        self.token.cancel();
        for t in self.tasks.drain(..) {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("controller and webhook stop within 10s")
                .expect("no task panicked");
        }
        self.server.take().unwrap().stop().await;
    }
}

fn spiffe_csr(key: &PrivateKey, uris: &[&str], dns: &[&str], usages_ca: bool) -> String {
    let sans = SanSpec {
        uris: uris.iter().map(|s| s.to_string()).collect(),
        dns_names: dns.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    build_csr(
        key,
        &SubjectSpec::default(),
        &sans,
        &CsrOptions {
            encode_usages: Some((&spiffe::USAGES[..], usages_ca)),
            critical_san_when_subject_empty: true,
            ..Default::default()
        },
    )
    .unwrap()
    .pem
}

/// A SPIFFE CSR with one more extension (SubjectKeyIdentifier), built with
/// x509-cert directly because `pki::build_csr` never adds one.
fn csr_with_extra_extension(key: &PrivateKey, uri: &str) -> String {
    use der::asn1::{Any, BitString, Ia5String, OctetString, SetOfVec};
    use der::{Decode, Encode};
    use x509_cert::attr::Attribute;
    use x509_cert::ext::Extension;
    use x509_cert::ext::pkix::name::GeneralName;
    use x509_cert::ext::pkix::{SubjectAltName, SubjectKeyIdentifier};
    use x509_cert::request::{CertReq, CertReqInfo, Version};
    use x509_cert::spki::SubjectPublicKeyInfoOwned;
    let ext = |oid: &str, critical: bool, value: Vec<u8>| Extension {
        extn_id: der::oid::ObjectIdentifier::new_unwrap(oid),
        critical,
        extn_value: OctetString::new(value).unwrap(),
    };
    let san = SubjectAltName(vec![GeneralName::UniformResourceIdentifier(
        Ia5String::new(uri).unwrap(),
    )]);
    let ski = SubjectKeyIdentifier(OctetString::new(vec![1, 2, 3, 4]).unwrap());
    let extensions = vec![
        ext("2.5.29.17", true, san.to_der().unwrap()),
        ext("2.5.29.14", false, ski.to_der().unwrap()),
    ];
    let mut values = SetOfVec::new();
    values
        .insert(Any::encode_from(&extensions).unwrap())
        .unwrap();
    let mut attributes = SetOfVec::new();
    attributes
        .insert(Attribute {
            oid: der::oid::ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.14"),
            values,
        })
        .unwrap();
    let info = CertReqInfo {
        version: Version::V1,
        subject: Default::default(),
        public_key: SubjectPublicKeyInfoOwned::from_der(key.public_key_der()).unwrap(),
        attributes,
    };
    let signature = key.sign(&info.to_der().unwrap()).unwrap();
    let req = CertReq {
        info,
        algorithm: key.signature_algorithm_id(),
        signature: BitString::from_bytes(&signature).unwrap(),
    };
    pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", req.to_der().unwrap()))
}

fn request(name: &str, csr: &str) -> serde_json::Value {
    use base64::Engine as _;
    let csr = base64::engine::general_purpose::STANDARD.encode(csr.as_bytes());
    json!({
        "apiVersion": "cert-manager.io/v1",
        "kind": "CertificateRequest",
        "metadata": {"name": name, "annotations": {(spiffe::ANNOTATION_IDENTITY): BILLING_ID}},
        "spec": {
            "request": csr,
            "issuerRef": {"name": ISSUER, "kind": "ClusterIssuer", "group": "cert-manager.io"},
            "duration": "1h0m0s",
            "isCA": false,
            "usages": spiffe::USAGES.map(|u| u.name()),
        },
    })
}

async fn create(client: &kube::Client, ns: &str, body: serde_json::Value) -> CertificateRequest {
    Api::<CertificateRequest>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &from(body))
        .await
        .expect("request created")
}

fn denial(r: &CertificateRequest) -> (String, String) {
    let c = r
        .condition(types::DENIED)
        .unwrap_or_else(|| panic!("{:?} was not denied: {:?}", r.metadata.name, r.status));
    (
        c.reason.clone().unwrap_or_default(),
        c.message.clone().unwrap_or_default(),
    )
}

fn openssl(args: &[&str], input: &str) -> String {
    use std::io::Write as _;
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("openssl runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Checks an issued SPIFFE certificate with openssl: one critical URI SAN,
/// an empty subject, the right usages, and a chain to the CA.
fn check_issued(env: &Env, r: &CertificateRequest, id: &str) {
    let chain = r
        .status
        .as_ref()
        .and_then(|s| s.certificate.as_ref())
        .map(|c| String::from_utf8(c.as_bytes().to_vec()).unwrap())
        .expect("a certificate was issued");
    let text = openssl(&["x509", "-noout", "-text", "-nameopt", "RFC2253"], &chain);
    assert!(
        text.contains("X509v3 Subject Alternative Name: critical"),
        "{text}"
    );
    assert!(text.contains(&format!("URI:{id}")), "{text}");
    assert!(!text.contains("DNS:"), "{text}");
    assert!(
        text.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
        "{text}"
    );
    assert!(text.contains("CA:FALSE"), "{text}");
    let subject = openssl(
        &["x509", "-noout", "-subject", "-nameopt", "RFC2253"],
        &chain,
    );
    assert_eq!(subject.trim(), "subject=", "the subject is empty");
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &env.ca_pem).unwrap();
    let verify = openssl(&["verify", "-CAfile", ca.to_str().unwrap()], &chain);
    assert!(verify.trim().ends_with("OK"), "{verify}");
}

#[tokio::test]
async fn token_mode_requester_is_set_by_the_webhook_and_a_correct_request_is_signed() {
    let env = Env::start().await;
    let billing = env.as_service_account("shop", "billing", None).await;
    // The body claims to be another ServiceAccount, with admin groups.
    let mut body = request("mine", &spiffe_csr(&key(), &[BILLING_ID], &[], false));
    body["spec"]["username"] = json!("system:serviceaccount:shop:admin");
    body["spec"]["groups"] = json!(["system:masters"]);
    body["spec"]["extra"] = json!({"forged": ["yes"]});
    let created = create(&billing, "shop", body).await;
    assert_eq!(
        created.spec.username.as_deref(),
        Some("system:serviceaccount:shop:billing"),
        "the webhook overwrote the claimed username"
    );
    let groups = created.spec.groups.clone().unwrap_or_default();
    assert!(
        groups.contains(&"system:serviceaccounts:shop".to_string()),
        "{groups:?}"
    );
    assert!(
        !groups.contains(&"system:masters".to_string()),
        "{groups:?}"
    );
    assert!(
        created
            .spec
            .extra
            .as_ref()
            .is_none_or(|e| !e.contains_key("forged")),
        "{:?}",
        created.spec.extra
    );

    let done = env.decided("shop", "mine").await;
    let approved = done.condition(types::APPROVED).expect("approved");
    assert_eq!(
        approved.reason.as_deref(),
        Some("spiffe.csi.cert-manager.io")
    );
    check_issued(&env, &done, BILLING_ID);

    // After creation nobody may rewrite the requester, not even an admin.
    let api: Api<CertificateRequest> = Api::namespaced(env.admin(), "shop");
    let mut edited = api.get("mine").await.unwrap();
    edited.spec.username = Some("system:serviceaccount:shop:admin".into());
    let err = api
        .replace("mine", &PostParams::default(), &edited)
        .await
        .expect_err("a spec change is refused");
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 403, "{s:?}");
            assert!(s.message.contains("spec.username"), "{}", s.message);
        }
        other => panic!("expected an API error, got {other:?}"),
    }
    env.stop().await;
}

/// csi-driver-spiffe cannot be built here (the module proxy refuses every
/// version), so its driver's request is made the way it makes it, by
/// OpenSSL rather than by cert-csi: a P-521 key, an empty subject, one
/// non-critical URI SAN and nothing else, signed with ECDSA-SHA512 (Go's
/// x509.CreateCertificateRequest of a template holding only the URI), and
/// the request body as csi-lib writes it (isCA left out, the identity
/// annotation, the four usages, 1h). cert-csi's SPIFFE approver must
/// approve it and the signer sign it.
#[tokio::test]
async fn a_request_made_as_csi_driver_spiffe_makes_it_is_approved_and_signed() {
    let env = Env::start().await;
    let billing = env.as_service_account("shop", "billing", None).await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    let config = dir.path().join("openssl.cnf");
    // No distro defaults: only what -addext adds.
    std::fs::write(&config, "[req]\ndistinguished_name = dn\n[dn]\n").unwrap();
    openssl(
        &[
            "ecparam",
            "-name",
            "secp521r1",
            "-genkey",
            "-noout",
            "-out",
            key.to_str().unwrap(),
        ],
        "",
    );
    let csr = openssl(
        &[
            "req",
            "-new",
            "-config",
            config.to_str().unwrap(),
            "-key",
            key.to_str().unwrap(),
            "-subj",
            "/",
            "-sha512",
            "-addext",
            &format!("subjectAltName=URI:{BILLING_ID}"),
        ],
        "",
    );
    let text = openssl(&["req", "-noout", "-text"], &csr);
    assert!(
        text.contains("X509v3 Subject Alternative Name: \n") && !text.contains("Key Usage"),
        "the CSR is not shaped as csi-driver-spiffe's:\n{text}"
    );
    let mut body = request("from-upstream-driver", &csr);
    body["spec"].as_object_mut().unwrap().remove("isCA");
    create(&billing, "shop", body).await;
    let done = env.decided("shop", "from-upstream-driver").await;
    assert!(
        done.condition(types::APPROVED).is_some(),
        "not approved: {:?}",
        denial(&done)
    );
    check_issued(&env, &done, BILLING_ID);
    env.stop().await;
}

#[tokio::test]
async fn forged_requests_are_denied_naming_the_check() {
    let env = Env::start().await;
    let billing = env.as_service_account("shop", "billing", None).await;
    let k = key();
    let good = spiffe_csr(&k, &[BILLING_ID], &[], false);

    let mut cases: Vec<(&str, serde_json::Value, &str, &str)> = Vec::new();
    cases.push((
        "other-sa",
        request(
            "other-sa",
            &spiffe_csr(&k, &["spiffe://example.org/ns/shop/sa/admin"], &[], false),
        ),
        reasons::ID,
        "entitled only to \"spiffe://example.org/ns/shop/sa/billing\"",
    ));
    cases.push((
        "extra-dns",
        request(
            "extra-dns",
            &spiffe_csr(&k, &[BILLING_ID], &["billing.shop.svc"], false),
        ),
        reasons::SANS,
        "DNS name \"billing.shop.svc\"",
    ));
    let mut wrong_duration = request("wrong-duration", &good);
    wrong_duration["spec"]["duration"] = json!("24h");
    cases.push((
        "wrong-duration",
        wrong_duration,
        reasons::DURATION,
        "exactly 1h0m0s",
    ));
    let mut is_ca = request("is-ca", &spiffe_csr(&k, &[BILLING_ID], &[], true));
    is_ca["spec"]["isCA"] = json!(true);
    cases.push(("is-ca", is_ca, reasons::IS_CA, "spec.isCA is true"));
    cases.push((
        "extra-extension",
        request("extra-extension", &csr_with_extra_extension(&k, BILLING_ID)),
        reasons::EXTENSIONS,
        "2.5.29.14",
    ));
    for (_, body, _, _) in &cases {
        create(&billing, "shop", body.clone()).await;
    }
    for (name, _, reason, needle) in &cases {
        let r = env.decided("shop", name).await;
        let (got_reason, message) = denial(&r);
        assert_eq!(&got_reason, reason, "{name}: {message}");
        assert!(message.contains(needle), "{name}: {message}");
        assert!(
            r.status.as_ref().unwrap().certificate.is_none(),
            "{name} must not be signed"
        );
    }
    env.stop().await;
}

#[tokio::test]
async fn node_account_mode_binds_the_request_to_a_pod_on_the_callers_node() {
    let env = Env::start().await;
    // The node plugin on node-a, with a token bound to its own pod, so the
    // API records node-a as the caller's node.
    env.create_pod(NODE_NS, "cert-csi-node-a", NODE_SA, "node-a")
        .await;
    let plugin = env
        .as_service_account(NODE_NS, NODE_SA, Some("cert-csi-node-a"))
        .await;
    let here = env.create_pod("shop", "web-a", "billing", "node-a").await;
    let there = env.create_pod("shop", "web-b", "billing", "node-b").await;
    let k = key();
    let body = |name: &str, pod: &Pod, node: &str| {
        let mut b = request(name, &spiffe_csr(&k, &[BILLING_ID], &[], false));
        let a = &mut b["metadata"]["annotations"];
        a[spiffe::ANNOTATION_POD_NAME] = json!(pod.metadata.name);
        a[spiffe::ANNOTATION_POD_UID] = json!(pod.metadata.uid);
        a[spiffe::ANNOTATION_NODE] = json!(node);
        b
    };

    let ok = create(&plugin, "shop", body("on-my-node", &here, "node-a")).await;
    assert_eq!(
        ok.spec.username.as_deref(),
        Some("system:serviceaccount:cert-csi:cert-csi-node")
    );
    let extra = ok.spec.extra.clone().unwrap_or_default();
    assert_eq!(
        extra.get(spiffe::EXTRA_NODE_NAME),
        Some(&vec!["node-a".to_string()]),
        "the webhook copied the token's node into spec.extra: {extra:?}"
    );
    // Honest annotations for a pod on another node: the token says node-a.
    create(&plugin, "shop", body("other-node", &there, "node-b")).await;
    // Lying about where web-b runs does not help either.
    create(&plugin, "shop", body("lied-node", &there, "node-a")).await;

    let done = env.decided("shop", "on-my-node").await;
    assert!(done.is_approved(), "{:?}", done.status);
    check_issued(&env, &done, BILLING_ID);

    let (reason, message) = denial(&env.decided("shop", "other-node").await);
    assert_eq!(reason, reasons::POD_BINDING, "{message}");
    assert!(message.contains("its own node"), "{message}");
    let (reason, message) = denial(&env.decided("shop", "lied-node").await);
    assert_eq!(reason, reasons::POD_BINDING, "{message}");
    assert!(
        message.contains("scheduled on node \"node-b\""),
        "{message}"
    );
    env.stop().await;
}

/// A request made while the controller is down (or restarting) must be
/// decided once it is up; it then arrives in the controller's first list,
/// not as a watch event.
///
/// This failed until `controller::runner::watch_all` named the objects of
/// a list only at its end: kube-runtime's reflector buffers the listed
/// objects and moves them into the store at `InitDone`, so a reconcile
/// started on each as it was listed found nothing, took it for deleted and
/// dropped it. Seen on the real API server, where a request created while
/// the controller was listing stayed undecided.
#[tokio::test]
async fn a_request_made_before_the_controller_starts_is_decided() {
    let mut env = Env::without_controller().await;
    let billing = env.as_service_account("shop", "billing", None).await;
    create(
        &billing,
        "shop",
        request("early", &spiffe_csr(&key(), &[BILLING_ID], &[], false)),
    )
    .await;
    env.start_controller().await;
    let done = env.decided("shop", "early").await;
    assert!(done.is_approved(), "{:?}", done.status);
    check_issued(&env, &done, BILLING_ID);
    env.stop().await;
}
