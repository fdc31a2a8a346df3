//! The controller's approver, issuer status and signer, run in-process
//! against the sandbox API server with a real kube::Client. Issued chains
//! are checked with the openssl CLI.

/// The backend switch (sandbox or the real control plane) of the test kit.
use test_kit::ControllerEnv;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cert_csi::api::conditions::{ConditionStatus, types};
use cert_csi::api::{
    CaIssuer, CertificateRequest, CertificateRequestCondition, CertificateRequestSpec,
    ClusterIssuer, Issuer, IssuerRef, IssuerSpec, PemBytes, SelfSignedIssuer,
};
use cert_csi::controller::EnabledControllers;
use cert_csi::pki::{
    CsrOptions, Curve, KeyAlgorithm, KeyEncoding, PrivateKey, SanSpec, SignParams, SubjectSpec,
    Usage,
};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};

const CLUSTER_NS: &str = "cert-manager";

/// The controller under test on an API server, with the suite's helpers.
struct Env {
    inner: ControllerEnv,
    client: kube::Client,
}

impl Env {
    async fn start(controllers: &str) -> Env {
        let enabled = EnabledControllers::parse(controllers).unwrap();
        let inner = ControllerEnv::start(CLUSTER_NS, &[CLUSTER_NS, "team"], 1, 10_000, |o| {
            o.enabled = enabled.clone();
        })
        .await;
        Env {
            client: inner.client.clone(),
            inner,
        }
    }

    /// Cancels the token and checks that every loop stops promptly.
    async fn stop(self) {
        self.inner.stop().await;
    }

    fn requests(&self, ns: &str) -> Api<CertificateRequest> {
        Api::namespaced(self.client.clone(), ns)
    }

    async fn create_secret(&self, ns: &str, name: &str, ca: &Ca) {
        create_secret(&self.client, ns, name, ca).await;
    }

    async fn create_cluster_issuer(&self, name: &str, spec: IssuerSpec) {
        Api::<ClusterIssuer>::all(self.client.clone())
            .create(&PostParams::default(), &ClusterIssuer::new(name, spec))
            .await
            .expect("cluster issuer created");
    }

    async fn cluster_issuer_ready(
        &self,
        name: &str,
        want: ConditionStatus,
        reason: &str,
    ) -> ClusterIssuer {
        let api = Api::<ClusterIssuer>::all(self.client.clone());
        let reason = reason.to_owned();
        let what = format!("Ready={want}");
        self.inner
            .wait_for(&api, name, &what, move |i: &ClusterIssuer| {
                ready_of(i.status.as_ref().map(|s| s.conditions())) == Some((want, reason.clone()))
            })
            .await
    }

    async fn create_request(&self, ns: &str, request: CertificateRequest) {
        self.requests(ns)
            .create(&PostParams::default(), &request)
            .await
            .expect("request created");
    }

    /// Waits until `done` holds for the request and returns it.
    async fn wait_request(
        &self,
        ns: &str,
        name: &str,
        what: &str,
        done: impl Fn(&CertificateRequest) -> bool + Send + 'static,
    ) -> CertificateRequest {
        self.inner
            .wait_for(&self.requests(ns), name, what, done)
            .await
    }

    async fn wait_ready_reason(
        &self,
        ns: &str,
        name: &str,
        reason: &'static str,
    ) -> CertificateRequest {
        self.wait_request(ns, name, reason, move |r| r.ready_reason() == Some(reason))
            .await
    }

    /// Approves by hand, as an external approver would (approver disabled).
    async fn set_condition(&self, ns: &str, name: &str, type_: &str, reason: &str) {
        let api = self.requests(ns);
        let mut request = api.get(name).await.unwrap();
        request
            .status
            .get_or_insert_with(Default::default)
            .set_condition(
                CertificateRequestCondition::new(
                    type_,
                    ConditionStatus::True,
                    reason,
                    "by the test",
                ),
                k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
            );
        api.replace_status(name, &PostParams::default(), &request)
            .await
            .expect("status written");
    }
}

/// Creates the `kubernetes.io/tls` Secret of `ca` (a CA issuer's).
pub(crate) async fn create_secret(client: &kube::Client, ns: &str, name: &str, ca: &Ca) {
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            (
                "tls.crt".into(),
                ByteString(ca.cert_pem.clone().into_bytes()),
            ),
            (
                "tls.key".into(),
                ByteString(ca.key.to_pem(KeyEncoding::Pkcs8).unwrap().expose().to_vec()),
            ),
        ])),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
        .expect("secret created");
}

fn ready_of(
    conditions: Option<&[cert_csi::api::IssuerCondition]>,
) -> Option<(ConditionStatus, String)> {
    conditions?
        .iter()
        .find(|c| c.type_ == types::READY)
        .map(|c| (c.status, c.reason.clone().unwrap_or_default()))
}

pub(crate) struct Ca {
    pub key: PrivateKey,
    pub cert_pem: String,
}

pub(crate) fn key() -> PrivateKey {
    PrivateKey::generate(KeyAlgorithm::Ecdsa(Curve::P256)).unwrap()
}

pub(crate) fn make_ca(cn: &str, duration: Option<Duration>) -> Ca {
    let key = key();
    let subject = SubjectSpec {
        common_name: Some(cn.into()),
        ..Default::default()
    };
    let csr = cert_csi::pki::build_csr(&key, &subject, &SanSpec::default(), &CsrOptions::default())
        .unwrap();
    let signed = cert_csi::pki::sign_self_signed(
        csr.pem.as_bytes(),
        &key,
        &SignParams {
            is_ca: true,
            duration,
            ..Default::default()
        },
    )
    .unwrap();
    Ca {
        key,
        cert_pem: signed.certificate_pem,
    }
}

pub(crate) fn ca_spec(secret: &str) -> IssuerSpec {
    IssuerSpec {
        ca: Some(CaIssuer {
            secret_name: secret.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A request for `dns` signed by `key`; `csr_usages` are encoded in the CSR
/// when given, `spec_usages` go into spec.usages.
pub(crate) fn request(
    name: &str,
    issuer: IssuerRef,
    key: &PrivateKey,
    csr_usages: Option<(&[Usage], bool)>,
    spec_usages: &[&str],
) -> CertificateRequest {
    let sans = SanSpec {
        dns_names: vec![format!("{name}.example.com")],
        ..Default::default()
    };
    let csr = cert_csi::pki::build_csr(
        key,
        &SubjectSpec::default(),
        &sans,
        &CsrOptions {
            encode_usages: csr_usages,
            critical_san_when_subject_empty: true,
            ..Default::default()
        },
    )
    .unwrap();
    let mut r = CertificateRequest::new(
        name,
        CertificateRequestSpec {
            request: PemBytes::from(csr.pem.as_str()),
            issuer_ref: issuer,
            usages: (!spec_usages.is_empty())
                .then(|| spec_usages.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        },
    );
    r.metadata.namespace = Some("team".into());
    r
}

fn openssl(args: &[&str], dir: &Path) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl CLI runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn certificate(r: &CertificateRequest) -> String {
    r.status
        .as_ref()
        .and_then(|s| s.certificate_pem().unwrap())
        .expect("status.certificate is set")
        .to_owned()
}

/// Lifetime in seconds of the leaf in `pem`.
fn lifetime(pem: &str) -> i64 {
    let info = &cert_csi::pki::parse_chain(pem.as_bytes()).unwrap()[0];
    info.not_after
        .duration_since(info.not_before)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn bootstrap_approve_sign_and_verify() {
    let env = Env::start("approver,issuers,signer").await;
    env.create_cluster_issuer(
        "selfsigned",
        IssuerSpec {
            self_signed: Some(SelfSignedIssuer::default()),
            ..Default::default()
        },
    )
    .await;
    env.cluster_issuer_ready("selfsigned", ConditionStatus::True, "IsReady")
        .await;

    let ca = make_ca("bootstrap-ca", None);
    env.create_secret(CLUSTER_NS, "root-ca", &ca).await;
    env.create_cluster_issuer("ca", ca_spec("root-ca")).await;
    let issuer = env
        .cluster_issuer_ready("ca", ConditionStatus::True, "KeyPairVerified")
        .await;
    let status = issuer.status.clone().unwrap();
    let cond = &status.conditions()[0];
    assert_eq!(cond.message.as_deref(), Some("Signing CA verified"));
    assert_eq!(cond.observed_generation, issuer.metadata.generation);

    let usages = [
        Usage::DigitalSignature,
        Usage::KeyEncipherment,
        Usage::ServerAuth,
    ];
    let mut r = request(
        "web",
        IssuerRef::cluster_issuer("ca"),
        &key(),
        Some((&usages, false)),
        &["digital signature", "key encipherment", "server auth"],
    );
    r.spec.duration = Some("2h".into());
    env.create_request("team", r).await;
    let done = env.wait_ready_reason("team", "web", "Issued").await;
    let approved = done.condition(types::APPROVED).expect("approved");
    assert_eq!(approved.reason.as_deref(), Some("cert-manager.io"));
    assert_eq!(
        done.condition(types::READY).unwrap().message.as_deref(),
        Some("Certificate fetched from issuer successfully")
    );
    let leaf = certificate(&done);
    let status = done.status.as_ref().unwrap();
    assert_eq!(status.ca_pem().unwrap(), Some(ca.cert_pem.as_str()));
    // 2h plus the one-minute backdate for clock skew.
    assert_eq!(lifetime(&leaf), 2 * 3600 + 60);

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.crt"), &ca.cert_pem).unwrap();
    std::fs::write(dir.path().join("leaf.crt"), &leaf).unwrap();
    let (ok, out) = openssl(
        &[
            "verify",
            "-purpose",
            "sslserver",
            "-CAfile",
            "ca.crt",
            "leaf.crt",
        ],
        dir.path(),
    );
    assert!(ok, "openssl verify rejected the leaf: {out}");
    let (_, text) = openssl(&["x509", "-in", "leaf.crt", "-noout", "-text"], dir.path());
    assert!(text.contains("DNS:web.example.com"), "{text}");
    assert!(text.contains("TLS Web Server Authentication"), "{text}");
    env.stop().await;
}

#[tokio::test]
async fn unapproved_is_never_signed_and_denied_is_marked() {
    // The approver is off: only the test approves or denies.
    let env = Env::start("-approver").await;
    let ca = make_ca("ca", None);
    env.create_secret(CLUSTER_NS, "root-ca", &ca).await;
    env.create_cluster_issuer("ca", ca_spec("root-ca")).await;
    env.cluster_issuer_ready("ca", ConditionStatus::True, "KeyPairVerified")
        .await;
    for name in ["waiting", "approved", "denied"] {
        env.create_request(
            "team",
            request(name, IssuerRef::cluster_issuer("ca"), &key(), None, &[]),
        )
        .await;
    }
    env.set_condition("team", "denied", types::DENIED, "TestPolicy")
        .await;
    env.set_condition("team", "approved", types::APPROVED, "test")
        .await;
    let denied = env.wait_ready_reason("team", "denied", "Denied").await;
    assert_eq!(
        denied.condition(types::READY).unwrap().status,
        ConditionStatus::False
    );
    assert!(denied.status.unwrap().certificate.is_none());
    env.wait_ready_reason("team", "approved", "Issued").await;
    // The signer has handled later events; the unapproved one stays untouched.
    let waiting = env.requests("team").get("waiting").await.unwrap();
    assert!(!waiting.is_approved());
    assert!(
        waiting
            .status
            .as_ref()
            .is_none_or(|s| s.certificate.is_none()),
        "an unapproved request was signed"
    );
    assert_eq!(waiting.ready_reason(), None);
    env.stop().await;
}

#[tokio::test]
async fn missing_issuer_and_missing_secret_recover() {
    let env = Env::start("approver,issuers,signer").await;
    env.create_request(
        "team",
        request(
            "early",
            IssuerRef::cluster_issuer("later"),
            &key(),
            None,
            &[],
        ),
    )
    .await;
    let pending = env
        .wait_ready_reason("team", "early", "IssuerNotFound")
        .await;
    assert!(!pending.is_ready());

    // The issuer appears without its Secret: ErrGetKeyPair, request waits.
    env.create_cluster_issuer("later", ca_spec("later-ca"))
        .await;
    let issuer = env
        .cluster_issuer_ready("later", ConditionStatus::False, "ErrGetKeyPair")
        .await;
    let message = issuer.status.unwrap().conditions()[0]
        .message
        .clone()
        .unwrap();
    assert!(message.contains("cert-manager/later-ca"), "{message}");
    env.wait_ready_reason("team", "early", "IssuerNotReady")
        .await;

    // The Secret appears: the issuer becomes Ready and the request is signed.
    let ca = make_ca("later", None);
    env.create_secret(CLUSTER_NS, "later-ca", &ca).await;
    env.cluster_issuer_ready("later", ConditionStatus::True, "KeyPairVerified")
        .await;
    let issued = env.wait_ready_reason("team", "early", "Issued").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.crt"), &ca.cert_pem).unwrap();
    std::fs::write(dir.path().join("leaf.crt"), certificate(&issued)).unwrap();
    let (ok, out) = openssl(&["verify", "-CAfile", "ca.crt", "leaf.crt"], dir.path());
    assert!(ok, "{out}");
    env.stop().await;
}

#[tokio::test]
async fn usage_mismatch_duration_cap_is_ca_and_namespaced_issuer() {
    let env = Env::start("approver,issuers,signer").await;
    // A CA that expires in 3h, in the "team" namespace only.
    let ca = make_ca("short-ca", Some(Duration::from_secs(3 * 3600)));
    env.create_secret("team", "team-ca", &ca).await;
    Api::<Issuer>::namespaced(env.client.clone(), "team")
        .create(
            &PostParams::default(),
            &Issuer::new("ca", ca_spec("team-ca")),
        )
        .await
        .unwrap();

    // Usage mismatch: the CSR says server auth, spec.usages client auth.
    let encoded = [
        Usage::DigitalSignature,
        Usage::KeyEncipherment,
        Usage::ServerAuth,
    ];
    env.create_request(
        "team",
        request(
            "mismatch",
            IssuerRef::issuer("ca"),
            &key(),
            Some((&encoded, false)),
            &["digital signature", "key encipherment", "client auth"],
        ),
    )
    .await;
    // Duration longer than the CA has left: capped.
    let mut long = request("long", IssuerRef::issuer("ca"), &key(), None, &[]);
    long.spec.duration = Some("2160h".into());
    env.create_request("team", long).await;
    // isCA.
    let mut sub = request("sub-ca", IssuerRef::issuer("ca"), &key(), None, &[]);
    sub.spec.is_ca = Some(true);
    sub.spec.duration = Some("1h".into());
    env.create_request("team", sub).await;

    let failed = env.wait_ready_reason("team", "mismatch", "Failed").await;
    assert!(failed.is_invalid_request());
    assert!(failed.status.as_ref().unwrap().failure_time.is_some());
    let message = failed
        .condition(types::READY)
        .unwrap()
        .message
        .clone()
        .unwrap();
    assert!(
        message.contains("server auth") && message.contains("client auth"),
        "the message names both usage sets: {message}"
    );
    assert!(failed.status.unwrap().certificate.is_none());

    let long = env.wait_ready_reason("team", "long", "Issued").await;
    let ca_info = &cert_csi::pki::parse_chain(ca.cert_pem.as_bytes()).unwrap()[0];
    let leaf_info = &cert_csi::pki::parse_chain(certificate(&long).as_bytes()).unwrap()[0];
    assert_eq!(
        leaf_info.not_after, ca_info.not_after,
        "capped at the CA's notAfter"
    );
    let message = long
        .condition(types::READY)
        .unwrap()
        .message
        .clone()
        .unwrap();
    assert!(message.contains("capped"), "{message}");

    let sub = env.wait_ready_reason("team", "sub-ca", "Issued").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.crt"), &ca.cert_pem).unwrap();
    std::fs::write(dir.path().join("sub.crt"), certificate(&sub)).unwrap();
    let (ok, out) = openssl(&["verify", "-CAfile", "ca.crt", "sub.crt"], dir.path());
    assert!(ok, "{out}");
    let (_, text) = openssl(&["x509", "-in", "sub.crt", "-noout", "-text"], dir.path());
    assert!(text.contains("CA:TRUE"), "{text}");
    assert!(text.contains("Certificate Sign"), "{text}");
    assert_eq!(lifetime(&certificate(&sub)), 3600 + 60);
    env.stop().await;
}

#[tokio::test]
async fn self_signed_uses_the_annotated_key() {
    let env = Env::start("approver,issuers,signer").await;
    env.create_cluster_issuer(
        "selfsigned",
        IssuerSpec {
            self_signed: Some(SelfSignedIssuer::default()),
            ..Default::default()
        },
    )
    .await;
    env.cluster_issuer_ready("selfsigned", ConditionStatus::True, "IsReady")
        .await;
    let k = key();
    env.create_request(
        "team",
        request(
            "no-annotation",
            IssuerRef::cluster_issuer("selfsigned"),
            &k,
            None,
            &[],
        ),
    )
    .await;
    let mut r = request(
        "annotated",
        IssuerRef::cluster_issuer("selfsigned"),
        &k,
        None,
        &[],
    );
    r.metadata.annotations = Some(BTreeMap::from([(
        "cert-manager.io/private-key-secret-name".to_string(),
        "own-key".to_string(),
    )]));
    env.create_request("team", r).await;

    let failed = env
        .wait_ready_reason("team", "no-annotation", "Failed")
        .await;
    let message = failed
        .condition(types::READY)
        .unwrap()
        .message
        .clone()
        .unwrap();
    assert!(message.contains("private-key-secret-name"), "{message}");
    let pending = env
        .wait_request("team", "annotated", "Pending", |r| {
            r.ready_reason() == Some("Pending")
        })
        .await;
    assert!(!pending.is_ready());

    // The key Secret appears: the watch on Secret metadata retriggers signing.
    let holder = Ca {
        key: k,
        cert_pem: String::new(),
    };
    env.create_secret("team", "own-key", &holder).await;
    let issued = env.wait_ready_reason("team", "annotated", "Issued").await;
    let status = issued.status.as_ref().unwrap();
    assert_eq!(status.certificate_pem().unwrap(), status.ca_pem().unwrap());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("self.crt"), certificate(&issued)).unwrap();
    std::fs::write(
        dir.path().join("self.key"),
        holder.key.to_pem(KeyEncoding::Pkcs8).unwrap().expose(),
    )
    .unwrap();
    let (ok, out) = openssl(
        &["x509", "-in", "self.crt", "-noout", "-pubkey"],
        dir.path(),
    );
    let (ok2, out2) = openssl(&["pkey", "-in", "self.key", "-pubout"], dir.path());
    assert!(ok && ok2, "{out}{out2}");
    assert_eq!(out, out2, "the certificate carries the annotated key");
    env.stop().await;
}

/// Outside probes found a request whose certificate the API server could
/// not store: the status write failed and the signer signed it again every
/// few seconds, forever. Now the request is marked Failed, once.
#[tokio::test]
async fn a_certificate_too_large_to_store_is_failed_not_signed_forever() {
    let env = Env::start("approver,issuers,signer").await;
    let ca = make_ca("big", None);
    env.create_secret(CLUSTER_NS, "big-ca", &ca).await;
    env.create_cluster_issuer("big", ca_spec("big-ca")).await;
    env.cluster_issuer_ready("big", ConditionStatus::True, "KeyPairVerified")
        .await;

    // About 730 KB of CSR: small enough to create (etcd takes 1.5 MiB),
    // but with the certificate the object could not be stored.
    let sans = SanSpec {
        dns_names: (0..20_000)
            .map(|i| format!("n{i:05}.oversized.example"))
            .collect(),
        ..Default::default()
    };
    let csr = cert_csi::pki::build_csr(
        &key(),
        &SubjectSpec::default(),
        &sans,
        &CsrOptions {
            encode_usages: None,
            critical_san_when_subject_empty: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(csr.pem.len() > 600_000, "{} bytes", csr.pem.len());
    let mut big = CertificateRequest::new(
        "oversized",
        CertificateRequestSpec {
            request: PemBytes::from(csr.pem.as_str()),
            issuer_ref: IssuerRef {
                name: "big".into(),
                kind: Some("ClusterIssuer".into()),
                group: Some("cert-manager.io".into()),
            },
            ..Default::default()
        },
    );
    big.metadata.namespace = Some("team".into());
    env.create_request("team", big).await;

    let failed = env.wait_ready_reason("team", "oversized", "Failed").await;
    let status = failed.status.as_ref().unwrap();
    assert!(status.certificate.is_none(), "no certificate was stored");
    assert!(status.failure_time.is_some());
    let message = status
        .conditions()
        .iter()
        .find(|c| c.type_ == types::READY)
        .and_then(|c| c.message.clone())
        .unwrap();
    assert!(message.contains("more than the 1048576"), "{message}");
    // Terminal: a request that is Failed is never evaluated again, so a
    // later, ordinary request on the same issuer is signed normally.
    env.create_request(
        "team",
        request(
            "ordinary",
            IssuerRef {
                name: "big".into(),
                kind: Some("ClusterIssuer".into()),
                group: Some("cert-manager.io".into()),
            },
            &key(),
            None,
            &[],
        ),
    )
    .await;
    env.wait_ready_reason("team", "ordinary", "Issued").await;
    let again = env.requests("team").get("oversized").await.unwrap();
    assert_eq!(
        again.status.as_ref().unwrap().failure_time,
        status.failure_time
    );
    env.stop().await;
}

/// Every version of request `name` in `ns` that the API server stores, as
/// (approved, has a certificate), until one is Ready; read from a watch
/// begun before the request exists, so no stored version is missed.
async fn stored_versions(
    api: Api<CertificateRequest>,
    name: String,
) -> tokio::task::JoinHandle<Vec<(bool, bool)>> {
    use futures::{StreamExt, TryStreamExt};
    use kube::api::{WatchEvent, WatchParams};
    let params = WatchParams::default().fields(&format!("metadata.name={name}"));
    let mut stream = api
        .watch(&params, "0")
        .await
        .expect("watch started")
        .boxed();
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(event) = stream.try_next().await.expect("watch event") {
            let (WatchEvent::Added(r) | WatchEvent::Modified(r)) = event else {
                continue;
            };
            let signed = r.status.as_ref().is_some_and(|s| s.certificate.is_some());
            seen.push((r.is_approved(), signed));
            if r.is_ready() {
                break;
            }
        }
        seen
    })
}

/// Issue 17: when the same controller approves and signs, a request is
/// approved and signed in one status write; no version of it is ever
/// stored approved without its certificate. Without the signer loop the
/// approver writes the approval alone, as before.
#[tokio::test]
async fn approval_and_signature_are_one_write_when_one_controller_does_both() {
    let env = Env::start("approver,issuers,signer").await;
    let ca = make_ca("one-write", None);
    env.create_secret(CLUSTER_NS, "root-ca", &ca).await;
    env.create_cluster_issuer("ca", ca_spec("root-ca")).await;
    env.cluster_issuer_ready("ca", ConditionStatus::True, "KeyPairVerified")
        .await;
    for name in ["one", "two", "three"] {
        let versions = stored_versions(env.requests("team"), name.into()).await;
        env.create_request(
            "team",
            request(name, IssuerRef::cluster_issuer("ca"), &key(), None, &[]),
        )
        .await;
        let versions = tokio::time::timeout(Duration::from_secs(60), versions)
            .await
            .expect("the request became Ready")
            .unwrap();
        assert_eq!(
            versions,
            [(false, false), (true, true)],
            "{name}: created, then approved and signed in one write"
        );
    }
    env.stop().await;

    // The approver alone: it approves, and nobody signs.
    let env = Env::start("approver,issuers").await;
    env.create_secret(CLUSTER_NS, "root-ca", &ca).await;
    env.create_cluster_issuer("ca", ca_spec("root-ca")).await;
    env.create_request(
        "team",
        request("alone", IssuerRef::cluster_issuer("ca"), &key(), None, &[]),
    )
    .await;
    let approved = env
        .wait_request("team", "alone", "Approved", CertificateRequest::is_approved)
        .await;
    assert!(approved.status.unwrap().certificate.is_none());
    env.stop().await;
}

/// The signer keeps CA Secrets it has read in memory, and follows their
/// changes through its Secret watch: after the CA Secret is replaced, the
/// next requests are signed by the new CA (judged by openssl), and once one
/// is, none goes back to the old one.
#[tokio::test]
async fn a_replaced_ca_secret_signs_the_next_requests() {
    let env = Env::start("approver,issuers,signer").await;
    let old = make_ca("old-ca", None);
    env.create_secret(CLUSTER_NS, "root-ca", &old).await;
    env.create_cluster_issuer("ca", ca_spec("root-ca")).await;
    env.cluster_issuer_ready("ca", ConditionStatus::True, "KeyPairVerified")
        .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("old.crt"), &old.cert_pem).unwrap();
    let signed_by = |file: &str, leaf: &str| {
        std::fs::write(dir.path().join("leaf.crt"), leaf).unwrap();
        openssl(&["verify", "-CAfile", file, "leaf.crt"], dir.path()).0
    };
    let issue = |name: String| {
        let env = &env;
        async move {
            env.create_request(
                "team",
                request(&name, IssuerRef::cluster_issuer("ca"), &key(), None, &[]),
            )
            .await;
            certificate(&env.wait_ready_reason("team", &name, "Issued").await)
        }
    };
    // Signed twice by the old CA: the second from the cache.
    for i in 0..2 {
        assert!(signed_by("old.crt", &issue(format!("before-{i}")).await));
    }

    let new = make_ca("new-ca", None);
    std::fs::write(dir.path().join("new.crt"), &new.cert_pem).unwrap();
    let secrets = Api::<Secret>::namespaced(env.client.clone(), CLUSTER_NS);
    let mut secret = secrets.get("root-ca").await.unwrap();
    secret.data = Some(BTreeMap::from([
        (
            "tls.crt".into(),
            ByteString(new.cert_pem.clone().into_bytes()),
        ),
        (
            "tls.key".into(),
            ByteString(
                new.key
                    .to_pem(KeyEncoding::Pkcs8)
                    .unwrap()
                    .expose()
                    .to_vec(),
            ),
        ),
    ]));
    secrets
        .replace("root-ca", &PostParams::default(), &secret)
        .await
        .expect("CA secret replaced");
    // The watch event may trail the next request by a moment; within a
    // deadline a request is signed by the new CA...
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut i = 0;
    loop {
        let leaf = issue(format!("after-{i}")).await;
        i += 1;
        if signed_by("new.crt", &leaf) {
            break;
        }
        assert!(signed_by("old.crt", &leaf), "signed by neither CA");
        assert!(
            std::time::Instant::now() < deadline,
            "still signing with the replaced CA after {i} requests"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // ...and every one after it too.
    for j in 0..3 {
        let leaf = issue(format!("later-{j}")).await;
        assert!(
            signed_by("new.crt", &leaf),
            "later-{j} went back to the old CA"
        );
    }
    env.stop().await;
}
