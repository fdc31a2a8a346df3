//! The certificates loop end to end: the whole controller (approver, issuer
//! status, signer, certificates) runs in-process against the sandbox with a
//! real kube::Client; the Secrets it writes are checked with openssl and
//! keytool.

/// The backend switch (sandbox or the real control plane) of the test kit.
use test_kit::ControllerEnv;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cert_csi::api::conditions::{ConditionStatus, types};
use cert_csi::api::{
    CaIssuer, Certificate, CertificateAdditionalOutputFormat, CertificateKeystores,
    CertificatePrivateKey, CertificateRequest, CertificateRequestCondition, CertificateSpec,
    ClusterIssuer, IssuerRef, IssuerSpec, JksKeystore, PemBytes, Pkcs12Keystore, SecretKeySelector,
    SelfSignedIssuer,
};
use cert_csi::controller::certificates::CertificatesOptions;
use cert_csi::pki::{KeyEncoding, PrivateKey, Usage};
use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use kube::runtime::{WatchStreamExt, watcher};

const CLUSTER_NS: &str = "cert-manager";
const NS: &str = "team";
// Generous: on the real control plane under a loaded 2-core machine a
// backoff cycle can take tens of seconds; passing tests never wait it out.
const TIMEOUT: Duration = Duration::from_secs(90);

/// Every CertificateRequest ever seen, and every distinct certificate each
/// one carried in its status.
#[derive(Default)]
struct Seen {
    requests: HashMap<String, CertificateRequest>,
    certificates: HashMap<String, BTreeSet<String>>,
    /// Watch errors, shown if the suite-wide checks find nothing.
    errors: Vec<String>,
}

struct Env {
    inner: ControllerEnv,
    client: kube::Client,
    seen: Arc<Mutex<Seen>>,
    watcher: tokio::task::JoinHandle<()>,
}

impl Env {
    async fn start(instances: usize) -> Env {
        let inner = ControllerEnv::start(CLUSTER_NS, &[CLUSTER_NS, NS], instances, 100_000, |o| {
            o.certificates = CertificatesOptions {
                backoff_base: Duration::from_secs(2),
                backoff_max: Duration::from_secs(8),
                ..Default::default()
            };
        })
        .await;
        let client = inner.client.clone();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let record = seen.clone();
        let stream = watcher(
            Api::<CertificateRequest>::all(client.clone()),
            Default::default(),
        )
        .default_backoff()
        .applied_objects();
        let watcher = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            // A watch error (a list before the CRD is served, a dropped
            // connection) is retried by the watcher; ending here on the
            // first one would leave `seen` empty and fail `finish`.
            while let Some(item) = stream.next().await {
                let r = match item {
                    Ok(r) => r,
                    Err(e) => {
                        record.lock().unwrap().errors.push(e.to_string());
                        continue;
                    }
                };
                let key = format!(
                    "{}/{}",
                    r.metadata.namespace.clone().unwrap_or_default(),
                    r.metadata.name.clone().unwrap_or_default()
                );
                let mut seen = record.lock().unwrap();
                if let Some(c) = r.status.as_ref().and_then(|s| s.certificate.as_ref()) {
                    let text = String::from_utf8_lossy(c.as_bytes()).into_owned();
                    // Keyed by uid: a deleted and recreated request is another request.
                    let id = format!("{key}/{}", r.metadata.uid.clone().unwrap_or_default());
                    seen.certificates.entry(id).or_default().insert(text);
                }
                seen.requests.insert(
                    format!("{key}/{}", r.metadata.uid.clone().unwrap_or_default()),
                    r,
                );
            }
        });
        Env {
            inner,
            client,
            seen,
            watcher,
        }
    }

    /// Checks the suite-wide promises, then stops every loop.
    async fn finish(self) {
        {
            let seen = self.seen.lock().unwrap();
            assert!(
                !seen.requests.is_empty(),
                "no CertificateRequest was seen; watch errors: {:?}",
                seen.errors
            );
            for (name, r) in &seen.requests {
                let usages: Vec<Usage> = r
                    .spec
                    .usages
                    .iter()
                    .flatten()
                    .map(|u| Usage::from_name(u).unwrap())
                    .collect();
                cert_csi::pki::check_request(
                    r.spec.request.as_bytes(),
                    &usages,
                    r.spec.is_ca.unwrap_or(false),
                )
                .unwrap_or_else(|e| panic!("request {name} fails the webhook rules: {e}"));
                let annotations = r.metadata.annotations.clone().unwrap_or_default();
                for a in [
                    "cert-manager.io/certificate-name",
                    "cert-manager.io/certificate-revision",
                    "cert-manager.io/private-key-secret-name",
                ] {
                    assert!(annotations.contains_key(a), "request {name} lacks {a}");
                }
            }
            for (name, certs) in &seen.certificates {
                assert_eq!(
                    certs.len(),
                    1,
                    "request {name} carried {} different certificates",
                    certs.len()
                );
            }
        }
        self.watcher.abort();
        self.inner.stop().await;
    }

    fn certs(&self, ns: &str) -> Api<Certificate> {
        Api::namespaced(self.client.clone(), ns)
    }

    fn secrets(&self, ns: &str) -> Api<Secret> {
        Api::namespaced(self.client.clone(), ns)
    }

    async fn cluster_issuer(&self, name: &str, spec: IssuerSpec) {
        Api::<ClusterIssuer>::all(self.client.clone())
            .create(&PostParams::default(), &ClusterIssuer::new(name, spec))
            .await
            .unwrap();
    }

    async fn create(&self, ns: &str, name: &str, spec: CertificateSpec) -> Certificate {
        self.certs(ns)
            .create(&PostParams::default(), &Certificate::new(name, spec))
            .await
            .unwrap()
    }

    /// Polls (test side only) until `done` holds for the Certificate.
    async fn wait(
        &self,
        ns: &str,
        name: &str,
        what: &str,
        done: impl Fn(&Certificate) -> bool,
    ) -> Certificate {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let c = self.certs(ns).get(name).await.unwrap();
            if done(&c) {
                return c;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "Certificate {ns}/{name} never became {what}: {:#?}",
                    c.status
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_revision(&self, ns: &str, name: &str, revision: i32) -> Certificate {
        self.wait(ns, name, &format!("ready at revision {revision}"), |c| {
            c.is_ready()
                && !c.is_issuing()
                && c.status.as_ref().and_then(|s| s.revision) == Some(revision)
        })
        .await
    }

    async fn secret(&self, ns: &str, name: &str) -> Secret {
        self.secrets(ns).get(name).await.unwrap()
    }

    async fn owned_requests(&self, ns: &str, cert: &Certificate) -> Vec<CertificateRequest> {
        let uid = cert.metadata.uid.clone();
        Api::<CertificateRequest>::namespaced(self.client.clone(), ns)
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|r| {
                r.metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|o| Some(&o.uid) == uid.as_ref())
            })
            .collect()
    }
}

fn data(secret: &Secret, key: &str) -> Vec<u8> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .unwrap_or_else(|| panic!("Secret lacks {key}"))
        .0
        .clone()
}

fn leaf(secret: &Secret) -> cert_csi::pki::CertInfo {
    cert_csi::pki::parse_chain(&data(secret, "tls.crt"))
        .unwrap()
        .remove(0)
}

fn write_files(dir: &Path, secret: &Secret) {
    for (k, v) in secret.data.as_ref().unwrap() {
        std::fs::write(dir.join(k), &v.0).unwrap();
    }
}

fn run(cmd: &str, args: &[&str], dir: &Path) -> String {
    let out = Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} runs: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd} {args:?} failed: {text}");
    text
}

fn leaf_spec(issuer: IssuerRef, secret: &str, dns: &[&str]) -> CertificateSpec {
    CertificateSpec {
        secret_name: secret.into(),
        issuer_ref: issuer,
        common_name: Some("app".into()),
        dns_names: Some(dns.iter().map(|s| s.to_string()).collect()),
        private_key: Some(CertificatePrivateKey {
            algorithm: Some("ECDSA".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// SelfSigned ClusterIssuer → CA Certificate → CA ClusterIssuer → leaf.
async fn bootstrap(env: &Env) {
    env.cluster_issuer(
        "selfsigned",
        IssuerSpec {
            self_signed: Some(SelfSignedIssuer::default()),
            ..Default::default()
        },
    )
    .await;
    env.create(
        CLUSTER_NS,
        "root",
        CertificateSpec {
            secret_name: "root-ca".into(),
            issuer_ref: IssuerRef::cluster_issuer("selfsigned"),
            common_name: Some("cert-csi test root".into()),
            is_ca: Some(true),
            private_key: Some(CertificatePrivateKey {
                algorithm: Some("ECDSA".into()),
                size: Some(384),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;
    env.wait_revision(CLUSTER_NS, "root", 1).await;
    env.cluster_issuer(
        "ca",
        IssuerSpec {
            ca: Some(CaIssuer {
                secret_name: "root-ca".into(),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bootstrap_outputs_and_reissue_triggers() {
    let env = Env::start(1).await;
    bootstrap(&env).await;
    let root = env.secret(CLUSTER_NS, "root-ca").await;
    assert!(leaf(&root).is_ca, "the CA Certificate is a CA");
    assert_eq!(leaf(&root).key_type, "ECDSA P-384");

    // The keystore password comes from a Secret, as most users set it.
    env.secrets(NS)
        .create(
            &PostParams::default(),
            &Secret {
                metadata: ObjectMeta {
                    name: Some("keystore-pass".into()),
                    ..Default::default()
                },
                string_data: Some(BTreeMap::from([("password".into(), "changeit-123".into())])),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let reference = SecretKeySelector {
        name: "keystore-pass".into(),
        key: Some("password".into()),
    };
    let mut spec = leaf_spec(IssuerRef::cluster_issuer("ca"), "app-tls", &["app.example"]);
    spec.keystores = Some(CertificateKeystores {
        jks: Some(JksKeystore {
            create: true,
            password_secret_ref: Some(reference.clone()),
            ..Default::default()
        }),
        pkcs12: Some(Pkcs12Keystore {
            create: true,
            password_secret_ref: Some(reference),
            ..Default::default()
        }),
    });
    spec.additional_output_formats = Some(vec![
        CertificateAdditionalOutputFormat {
            type_: "DER".into(),
        },
        CertificateAdditionalOutputFormat {
            type_: "CombinedPEM".into(),
        },
    ]);
    spec.secret_template = Some(cert_csi::api::CertificateSecretTemplate {
        labels: Some(BTreeMap::from([("team".into(), "payments".into())])),
        annotations: Some(BTreeMap::from([("example.com/owner".into(), "me".into())])),
    });
    env.create(NS, "app", spec).await;
    let cert = env.wait_revision(NS, "app", 1).await;

    // Conditions as upstream writes them.
    let ready = cert.condition(types::READY).unwrap();
    assert_eq!(ready.status, ConditionStatus::True);
    assert_eq!(ready.reason.as_deref(), Some("Ready"));
    assert_eq!(
        ready.message.as_deref(),
        Some("Certificate is up to date and has not expired")
    );
    assert_eq!(ready.observed_generation, cert.metadata.generation);
    assert!(
        cert.condition(types::ISSUING).is_none(),
        "Issuing is removed after success"
    );
    let status = cert.status.clone().unwrap();
    assert!(
        status.not_before.is_some() && status.not_after.is_some() && status.renewal_time.is_some()
    );
    assert!(status.next_private_key_secret_name.is_none());
    assert!(status.failed_issuance_attempts.is_none());

    let secret = env.secret(NS, "app-tls").await;
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    let labels = secret.metadata.labels.clone().unwrap();
    assert_eq!(labels["controller.cert-manager.io/fao"], "true");
    assert_eq!(labels["team"], "payments");
    let a = secret.metadata.annotations.clone().unwrap();
    assert_eq!(a["cert-manager.io/certificate-name"], "app");
    assert_eq!(a["cert-manager.io/issuer-name"], "ca");
    assert_eq!(a["cert-manager.io/issuer-kind"], "ClusterIssuer");
    assert_eq!(a["cert-manager.io/issuer-group"], "cert-manager.io");
    assert_eq!(a["cert-manager.io/common-name"], "app");
    assert_eq!(a["cert-manager.io/alt-names"], "app.example");
    assert_eq!(a["cert-manager.io/ip-sans"], "");
    assert_eq!(a["cert-manager.io/uri-sans"], "");
    assert!(
        !a.contains_key("cert-manager.io/email-sans"),
        "empty email-sans is left out"
    );
    assert_eq!(a["example.com/owner"], "me");
    let info = leaf(&secret);
    assert_eq!(
        status.not_after.as_ref().unwrap().0,
        jiff::Timestamp::try_from(info.not_after).unwrap()
    );

    // The independent verifier.
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path(), &secret);
    let out = run(
        "openssl",
        &["verify", "-CAfile", "ca.crt", "tls.crt"],
        dir.path(),
    );
    assert!(out.contains("tls.crt: OK"), "{out}");
    run("openssl", &["pkey", "-in", "tls.key", "-noout"], dir.path());
    run(
        "openssl",
        &["pkey", "-inform", "DER", "-in", "key.der", "-noout"],
        dir.path(),
    );
    run(
        "openssl",
        &["x509", "-in", "tls-combined.pem", "-noout"],
        dir.path(),
    );
    run(
        "openssl",
        &["pkey", "-in", "tls-combined.pem", "-noout"],
        dir.path(),
    );
    let p12 = run(
        "openssl",
        &[
            "pkcs12",
            "-in",
            "keystore.p12",
            "-passin",
            "pass:changeit-123",
            "-nokeys",
            "-info",
            "-legacy",
        ],
        dir.path(),
    );
    assert!(p12.contains("BEGIN CERTIFICATE"), "{p12}");
    // No profile means LegacyRC2, as upstream (OpenSSL 3 needs -legacy).
    assert!(
        p12.contains("PKCS7 Encrypted data: pbeWithSHA1And40BitRC2-CBC"),
        "{p12}"
    );
    // ECDSA with the default encoding (PKCS1) is SEC1, as upstream.
    assert!(
        String::from_utf8_lossy(&data(&secret, "tls.key"))
            .starts_with("-----BEGIN EC PRIVATE KEY-----")
    );
    run(
        "openssl",
        &[
            "pkcs12",
            "-in",
            "truststore.p12",
            "-passin",
            "pass:changeit-123",
            "-nokeys",
            "-legacy",
        ],
        dir.path(),
    );
    let jks = run(
        "keytool",
        &[
            "-list",
            "-keystore",
            "keystore.jks",
            "-storepass",
            "changeit-123",
            "-storetype",
            "JKS",
        ],
        dir.path(),
    );
    assert!(jks.contains("PrivateKeyEntry"), "{jks}");
    let trust = run(
        "keytool",
        &[
            "-list",
            "-keystore",
            "truststore.jks",
            "-storepass",
            "changeit-123",
            "-storetype",
            "JKS",
        ],
        dir.path(),
    );
    assert!(trust.contains("trustedCertEntry"), "{trust}");

    // A user's own key in the Secret survives every re-issuance.
    let mut s = env.secret(NS, "app-tls").await;
    s.data
        .as_mut()
        .unwrap()
        .insert("user.txt".into(), ByteString(b"mine".to_vec()));
    env.secrets(NS)
        .replace("app-tls", &PostParams::default(), &s)
        .await
        .unwrap();

    // 1. A spec change re-issues with the new SAN.
    let mut c = env.certs(NS).get("app").await.unwrap();
    c.spec.dns_names = Some(vec!["app.example".into(), "new.example".into()]);
    env.certs(NS)
        .replace("app", &PostParams::default(), &c)
        .await
        .unwrap();
    env.wait_revision(NS, "app", 2).await;
    let s2 = env.secret(NS, "app-tls").await;
    let names: BTreeSet<_> = leaf(&s2).sans.dns_names.into_iter().collect();
    assert!(names.contains("new.example"), "{names:?}");
    assert_eq!(data(&s2, "user.txt"), b"mine");

    // 2. Deleting the Secret re-issues.
    env.secrets(NS)
        .delete("app-tls", &DeleteParams::default())
        .await
        .unwrap();
    env.wait_revision(NS, "app", 3).await;
    let s3 = env.secret(NS, "app-tls").await;
    assert_ne!(leaf(&s3).serial_hex, leaf(&s2).serial_hex);

    // 3. Replacing tls.key with another key re-issues.
    let mut s = s3.clone();
    let other = PrivateKey::generate(cert_csi::pki::KeyAlgorithm::Ecdsa(
        cert_csi::pki::Curve::P256,
    ))
    .unwrap();
    s.data.as_mut().unwrap().insert(
        "tls.key".into(),
        ByteString(other.to_pem(KeyEncoding::Pkcs8).unwrap().expose().to_vec()),
    );
    env.secrets(NS)
        .replace("app-tls", &PostParams::default(), &s)
        .await
        .unwrap();
    let c4 = env.wait_revision(NS, "app", 4).await;
    let s4 = env.secret(NS, "app-tls").await;
    let key4 = PrivateKey::from_pem(&data(&s4, "tls.key")).unwrap();
    assert!(cert_csi::pki::key_matches_certificate(&key4, &leaf(&s4)));
    assert!(!cert_csi::pki::key_matches_certificate(&other, &leaf(&s4)));
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path(), &s4);
    run(
        "openssl",
        &["verify", "-CAfile", "ca.crt", "tls.crt"],
        dir.path(),
    );

    // revisionHistoryLimit (default 1): only the current request is kept.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let owned = env.owned_requests(NS, &c4).await;
        if owned.len() == 1 {
            assert_eq!(owned[0].metadata.name.as_deref(), Some("app-4"));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "old requests kept: {}",
            owned.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The temporary next-key Secrets are gone.
    let leftovers: Vec<_> = env
        .secrets(NS)
        .list(&kube::api::ListParams::default().labels("cert-manager.io/next-private-key=true"))
        .await
        .unwrap()
        .items;
    assert!(
        leftovers.is_empty(),
        "next-key Secrets left: {}",
        leftovers.len()
    );
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn renews_in_place_at_renewal_time_and_keeps_history_limit() {
    let env = Env::start(1).await;
    bootstrap(&env).await;
    let mut spec = leaf_spec(
        IssuerRef::cluster_issuer("ca"),
        "short-tls",
        &["short.example"],
    );
    // 1h is the API minimum; renewing 5s after issuance (the signer
    // backdates notBefore by a minute, which the schedule ignores).
    spec.duration = Some("1h".into());
    spec.renew_before = Some("59m55s".into());
    spec.revision_history_limit = Some(2);
    spec.private_key.as_mut().unwrap().rotation_policy = Some("Never".into());
    env.create(NS, "short", spec).await;
    let first = env.wait_revision(NS, "short", 1).await;
    let s1 = env.secret(NS, "short-tls").await;
    let renewal = first
        .status
        .as_ref()
        .unwrap()
        .renewal_time
        .clone()
        .unwrap()
        .0;
    let not_after = first.status.as_ref().unwrap().not_after.clone().unwrap().0;
    assert_eq!(
        not_after.duration_since(renewal).as_secs(),
        59 * 60 + 55,
        "renewal time is notAfter − renewBefore"
    );
    let second = env.wait_revision(NS, "short", 2).await;
    let s2 = env.secret(NS, "short-tls").await;
    let renewed_at = jiff::Timestamp::now();
    assert!(renewed_at >= renewal, "renewed before renewalTime");
    assert_eq!(s1.metadata.uid, s2.metadata.uid, "renewed in place");
    assert_ne!(leaf(&s1).serial_hex, leaf(&s2).serial_hex);
    // rotationPolicy Never keeps the key.
    assert_eq!(data(&s1, "tls.key"), data(&s2, "tls.key"));
    env.wait_revision(NS, "short", 3).await;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let mut revs: Vec<String> = env
            .owned_requests(NS, &second)
            .await
            .into_iter()
            .map(|r| r.metadata.name.unwrap())
            .collect();
        revs.sort();
        if revs.len() <= 2 && !revs.contains(&"short-1".to_string()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "history not pruned: {revs:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.finish().await;
}

/// Issue 13's cases on the Certificate path: a CA with 30 days left caps
/// 90-day Certificates, one with the default renewBefore and one whose
/// renewBefore is the CA's whole remaining life. Each is issued once and
/// renews at two thirds of what it got, not at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ca_that_caps_lifetimes_causes_no_reissue_loop() {
    let env = Env::start(1).await;
    bootstrap(&env).await;
    let mut ca = leaf_spec(IssuerRef::cluster_issuer("selfsigned"), "ca-30d", &[]);
    ca.is_ca = Some(true);
    ca.duration = Some("720h".into());
    env.create(CLUSTER_NS, "ca-30d", ca).await;
    env.wait_revision(CLUSTER_NS, "ca-30d", 1).await;
    env.cluster_issuer(
        "ca-30d",
        IssuerSpec {
            ca: Some(CaIssuer {
                secret_name: "ca-30d".into(),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;
    let names = ["capped-default", "capped-renew-before"];
    for name in names {
        let mut spec = leaf_spec(
            IssuerRef::cluster_issuer("ca-30d"),
            name,
            &["capped.example"],
        );
        spec.duration = Some("2160h".into());
        if name == "capped-renew-before" {
            spec.renew_before = Some("720h".into());
        }
        env.create(NS, name, spec).await;
    }
    for name in names {
        let cert = env.wait_revision(NS, name, 1).await;
        let status = cert.status.as_ref().unwrap();
        let (nb, na) = (
            status.not_before.clone().unwrap().0,
            status.not_after.clone().unwrap().0,
        );
        let renewal = status.renewal_time.clone().unwrap().0;
        let life = na.duration_since(nb).as_secs();
        assert!(life < 31 * 86_400, "{name}: not capped ({life} s)");
        // Two thirds in, to the second (no jitter by default).
        let into = renewal.duration_since(nb).as_secs();
        assert!(
            into.abs_diff(life * 2 / 3) <= 1,
            "{name}: renewal {into} s into a {life} s lifetime"
        );
    }
    // A reissue loop would show within milliseconds; watch five seconds.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        for name in names {
            let cert = env.certs(NS).get(name).await.unwrap();
            let revision = cert.status.as_ref().and_then(|s| s.revision);
            assert_eq!(revision, Some(1), "{name} was reissued");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    env.finish().await;
}

/// Plays an issuer of another API group: marks each new request Failed, or
/// answers with a certificate for a different key.
async fn external_issuer(client: kube::Client, mode: &'static str, ca_key: PrivateKey) {
    let api = Api::<CertificateRequest>::namespaced(client, NS);
    let stream = watcher(api.clone(), Default::default())
        .default_backoff()
        .applied_objects();
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
        let Ok(r) = item else { continue };
        if r.is_finished() || r.spec.issuer_ref.group.as_deref() != Some("example.com") {
            continue;
        }
        let mut r = r;
        let status = r.status.get_or_insert_with(Default::default);
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now());
        match mode {
            "fail" => {
                status.set_condition(
                    CertificateRequestCondition::new(
                        types::READY,
                        ConditionStatus::False,
                        "Failed",
                        "upstream CA is down",
                    ),
                    now.clone(),
                );
                status.failure_time = Some(now);
            }
            _ => {
                // A certificate for the wrong key: the loop guard must refuse it.
                let csr = cert_csi::pki::build_csr(
                    &ca_key,
                    &cert_csi::pki::SubjectSpec {
                        common_name: Some("wrong".into()),
                        ..Default::default()
                    },
                    &Default::default(),
                    &Default::default(),
                )
                .unwrap();
                let signed = cert_csi::pki::sign_self_signed(
                    csr.pem.as_bytes(),
                    &ca_key,
                    &Default::default(),
                )
                .unwrap();
                status.set_condition(
                    CertificateRequestCondition::new(
                        types::READY,
                        ConditionStatus::True,
                        "Issued",
                        "ok",
                    ),
                    now,
                );
                status.certificate = Some(PemBytes::from(signed.certificate_pem.as_str()));
            }
        }
        let name = r.metadata.name.clone().unwrap();
        let _ = api.replace_status(&name, &PostParams::default(), &r).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failures_back_off_and_loop_guard_refuses_foreign_keys() {
    let env = Env::start(1).await;
    let key = PrivateKey::generate(cert_csi::pki::KeyAlgorithm::Ecdsa(
        cert_csi::pki::Curve::P256,
    ))
    .unwrap();
    let failing = tokio::spawn(external_issuer(env.client.clone(), "fail", key));
    let issuer = IssuerRef {
        name: "remote".into(),
        kind: Some("RemoteIssuer".into()),
        group: Some("example.com".into()),
    };
    env.create(
        NS,
        "flaky",
        leaf_spec(issuer.clone(), "flaky-tls", &["flaky.example"]),
    )
    .await;
    let first = env
        .wait(NS, "flaky", "failed once", |c| {
            c.status.as_ref().and_then(|s| s.failed_issuance_attempts) == Some(1)
        })
        .await;
    let status = first.status.clone().unwrap();
    assert!(status.last_failure_time.is_some());
    let issuing = first.condition(types::ISSUING).unwrap();
    assert_eq!(issuing.status, ConditionStatus::False);
    assert_eq!(issuing.reason.as_deref(), Some("Failed"));
    assert!(
        issuing
            .message
            .as_deref()
            .unwrap()
            .contains("upstream CA is down"),
        "{issuing:?}"
    );
    let ready = first.condition(types::READY).unwrap();
    assert_eq!(
        (ready.status, ready.reason.as_deref()),
        (ConditionStatus::False, Some("DoesNotExist"))
    );
    // Backoff: 2s after the first failure, 4s after the second.
    let t1 = status.last_failure_time.unwrap().0;
    let second = env
        .wait(NS, "flaky", "failed twice", |c| {
            c.status.as_ref().and_then(|s| s.failed_issuance_attempts) == Some(2)
        })
        .await;
    let t2 = second.status.clone().unwrap().last_failure_time.unwrap().0;
    assert!(
        t2.duration_since(t1).as_secs_f64() >= 1.0,
        "second attempt came too soon"
    );
    let third = env
        .wait(NS, "flaky", "failed three times", |c| {
            c.status.as_ref().and_then(|s| s.failed_issuance_attempts) == Some(3)
        })
        .await;
    let t3 = third.status.clone().unwrap().last_failure_time.unwrap().0;
    assert!(
        t3.duration_since(t2).as_secs_f64() >= 3.0,
        "backoff did not double: {t2} → {t3}"
    );
    assert_eq!(third.status.unwrap().revision, None);
    failing.abort();

    // The loop guard: a certificate for another key is refused, no Secret.
    let key = PrivateKey::generate(cert_csi::pki::KeyAlgorithm::Ecdsa(
        cert_csi::pki::Curve::P256,
    ))
    .unwrap();
    let wrong = tokio::spawn(external_issuer(env.client.clone(), "wrong-key", key));
    env.create(
        NS,
        "guarded",
        leaf_spec(issuer, "guarded-tls", &["guarded.example"]),
    )
    .await;
    let c = env
        .wait(NS, "guarded", "refused", |c| {
            c.status.as_ref().and_then(|s| s.failed_issuance_attempts) == Some(1)
        })
        .await;
    let message = c
        .condition(types::ISSUING)
        .unwrap()
        .message
        .clone()
        .unwrap();
    assert!(message.contains("public key differs"), "{message}");
    assert!(
        env.secrets(NS)
            .get_opt("guarded-tls")
            .await
            .unwrap()
            .is_none()
    );
    wrong.abort();
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_controllers_never_sign_twice() {
    let env = Env::start(3).await;
    bootstrap(&env).await;
    const N: usize = 12;
    for i in 0..N {
        let spec = leaf_spec(
            IssuerRef::cluster_issuer("ca"),
            &format!("race-{i}-tls"),
            &[&format!("race-{i}.example")],
        );
        env.create(NS, &format!("race-{i}"), spec).await;
    }
    // A racing writer bumps every Certificate's resourceVersion meanwhile.
    let client = env.client.clone();
    let racer = tokio::spawn(async move {
        let api = Api::<Certificate>::namespaced(client, NS);
        for round in 0..20 {
            for i in 0..N {
                if let Ok(mut c) = api.get(&format!("race-{i}")).await {
                    c.metadata
                        .annotations
                        .get_or_insert_with(Default::default)
                        .insert("example.com/round".into(), round.to_string());
                    let _ = api
                        .replace(&format!("race-{i}"), &PostParams::default(), &c)
                        .await;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    for i in 0..N {
        let c = env.wait_revision(NS, &format!("race-{i}"), 1).await;
        let s = env.secret(NS, &format!("race-{i}-tls")).await;
        let owned = env.owned_requests(NS, &c).await;
        assert_eq!(owned.len(), 1);
        let issued = owned[0]
            .status
            .as_ref()
            .unwrap()
            .certificate
            .as_ref()
            .unwrap();
        assert_eq!(
            cert_csi::pki::parse_chain(issued.as_bytes()).unwrap()[0].serial_hex,
            leaf(&s).serial_hex,
            "the Secret holds the request's certificate"
        );
    }
    racer.await.unwrap();
    // Steady state: no further revisions appear.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..N {
        let c = env.certs(NS).get(&format!("race-{i}")).await.unwrap();
        assert_eq!(
            c.status.unwrap().revision,
            Some(1),
            "race-{i} was issued more than once"
        );
    }
    env.finish().await;
}
