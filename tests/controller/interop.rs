//! cert-csi's Certificates loop against real cert-manager: the same
//! Certificates, issued by the same CA Issuer, become Secrets once in a
//! control plane run by cert-manager v1.21.2's own controller loops
//! (`.tools/bin/cert-manager-controller`, with cert-manager's CRDs) and
//! once in one run by cert-csi's controller (with cert-csi's CRDs). The two
//! clusters are separate, so neither controller ever sees the other's
//! objects.
//!
//! Outside tools judge what both wrote: the Secret's type, data keys,
//! annotations and labels; the key's PEM block and `openssl pkey` view; the
//! keystores' algorithms (`openssl pkcs12 -info -noout -legacy`), their bags
//! and entries (`openssl pkcs12 -info -nokeys`, `keytool -list -v`); the
//! truststores; `key.der` (`openssl asn1parse`) and the shape of
//! `tls-combined.pem`. Values that differ by nature (keys, serials, dates,
//! salts, fingerprints) are left out; everything else must be equal, unless
//! listed in [`INTENTIONAL`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cert_csi::api::{
    CaIssuer, Certificate, CertificateAdditionalOutputFormat, CertificateKeystores,
    CertificatePrivateKey, CertificateSecretTemplate, CertificateSpec, Issuer, IssuerRef,
    IssuerSpec, JksKeystore, Pkcs12Keystore, SecretKeySelector, X509Subject,
};
use cert_csi::pki::csr::{CsrOptions, build_csr};
use cert_csi::pki::sign::{SignParams, sign_self_signed};
use cert_csi::pki::{Curve, KeyAlgorithm, KeyEncoding, PrivateKey, SanSpec, SubjectSpec};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use test_kit::real::repo_root;
use test_kit::{ControllerEnv, RealCluster};

const CLUSTER_NS: &str = "cert-manager";
const NS: &str = "interop";
const TIMEOUT: Duration = Duration::from_secs(120);

/// Differences that are deliberate, each with why cert-csi is safer that
/// way: `(certificate, check, reason)`. Empty: cert-csi writes what
/// cert-manager writes.
const INTENTIONAL: &[(&str, &str, &str)] = &[];

/// cert-manager's control loops this test needs: the approver, the CA
/// signer, Issuer readiness and the Certificate loops.
const UPSTREAM_LOOPS: &str = "issuers,certificaterequests-approver,\
certificaterequests-issuer-ca,certificates-trigger,certificates-key-manager,\
certificates-request-manager,certificates-issuing,certificates-readiness,\
certificates-revision-manager";

/// The upstream controller process; stopped (SIGTERM, then SIGKILL) by its
/// pid when dropped.
struct UpstreamController {
    child: Child,
    log: PathBuf,
}

impl UpstreamController {
    fn start(kubeconfig: &Path, log: PathBuf) -> UpstreamController {
        let bin = repo_root().join(".tools/bin/cert-manager-controller");
        assert!(
            bin.is_file(),
            "{} is missing; build it with hack/build-tools cert-manager-controller",
            bin.display()
        );
        let out = std::fs::File::create(&log).expect("the controller's log file");
        let child = Command::new(&bin)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--cluster-resource-namespace", CLUSTER_NS])
            .args(["--controllers", UPSTREAM_LOOPS])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start cert-manager-controller");
        UpstreamController { child, log }
    }

    /// The end of its log, for failure messages.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for UpstreamController {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A control plane with cert-manager's CRDs and its controller. Fields drop
/// in order: the controller stops before the cluster goes down.
struct Upstream {
    controller: UpstreamController,
    cluster: RealCluster,
    _dir: tempfile::TempDir,
}

/// cert-manager v1.21.2's own CRDs, from the Go module that
/// `hack/build-tools` builds the controller from.
fn upstream_crd_dir() -> PathBuf {
    let out = Command::new("go")
        .args([
            "list",
            "-m",
            "-f",
            "{{.Dir}}",
            "github.com/cert-manager/cert-manager",
        ])
        .current_dir(repo_root().join("hack/tools/cert-manager"))
        .output()
        .expect("run go list (Go builds the upstream tools; see hack/build-tools)");
    assert!(
        out.status.success(),
        "go list cert-manager: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()).join("deploy/crds")
}

impl Upstream {
    fn start() -> Upstream {
        let dir = tempfile::tempdir().expect("tempdir");
        let cluster = RealCluster::up(&dir.path().join("kube"));
        let crds = upstream_crd_dir();
        let mut names = Vec::new();
        for kind in [
            "certificates",
            "certificaterequests",
            "issuers",
            "clusterissuers",
        ] {
            let file = crds.join(format!("cert-manager.io_{kind}.yaml"));
            kubectl(&cluster, &["apply", "-f", file.to_str().unwrap()]);
            names.push(format!("crd/{kind}.cert-manager.io"));
        }
        let mut args = vec!["wait", "--for", "condition=Established", "--timeout=60s"];
        args.extend(names.iter().map(String::as_str));
        kubectl(&cluster, &args);
        let controller = UpstreamController::start(&cluster.kubeconfig, dir.path().join("cm.log"));
        Upstream {
            controller,
            cluster,
            _dir: dir,
        }
    }
}

fn kubectl(cluster: &RealCluster, args: &[&str]) -> String {
    let out = cluster.kubectl().args(args).output().expect("run kubectl");
    assert!(
        out.status.success(),
        "kubectl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A CA whose subject needs Go's escaping in the truststore names.
fn make_ca() -> (String, String) {
    let key = PrivateKey::generate(KeyAlgorithm::Ecdsa(Curve::P256)).unwrap();
    let subject = SubjectSpec {
        common_name: Some("Interop Root, #1".into()),
        organizations: vec!["Example+Co".into()],
        countries: vec!["GB".into()],
        ..Default::default()
    };
    let csr = build_csr(&key, &subject, &SanSpec::default(), &CsrOptions::default()).unwrap();
    let ca = sign_self_signed(
        csr.pem.as_bytes(),
        &key,
        &SignParams {
            is_ca: true,
            duration: Some(Duration::from_secs(3 * 24 * 3600)),
            ..Default::default()
        },
    )
    .unwrap();
    let key_pem =
        String::from_utf8(key.to_pem(KeyEncoding::Pkcs8).unwrap().expose().to_vec()).unwrap();
    (ca.certificate_pem, key_pem)
}

fn strings(items: &[&str]) -> Option<Vec<String>> {
    Some(items.iter().map(|s| s.to_string()).collect())
}

fn formats() -> Option<Vec<CertificateAdditionalOutputFormat>> {
    Some(
        ["DER", "CombinedPEM"]
            .iter()
            .map(|t| CertificateAdditionalOutputFormat {
                type_: t.to_string(),
            })
            .collect(),
    )
}

fn key(algorithm: &str, size: Option<i32>, encoding: &str) -> Option<CertificatePrivateKey> {
    Some(CertificatePrivateKey {
        algorithm: Some(algorithm.into()),
        size,
        encoding: Some(encoding.into()),
        ..Default::default()
    })
}

fn pkcs12(profile: Option<&str>, password: &str) -> Option<Pkcs12Keystore> {
    Some(Pkcs12Keystore {
        create: true,
        password: Some(password.into()),
        profile: profile.map(Into::into),
        ..Default::default()
    })
}

fn jks(alias: Option<&str>, password: &str) -> Option<JksKeystore> {
    Some(JksKeystore {
        create: true,
        password: Some(password.into()),
        alias: alias.map(Into::into),
        ..Default::default()
    })
}

/// The Certificates both controllers get, with the passwords their
/// keystores use: `(name, spec, pkcs12 password, jks password)`.
fn certificates() -> Vec<(&'static str, CertificateSpec, &'static str, &'static str)> {
    let issuer = IssuerRef::issuer("ca");
    vec![
        (
            "rsa-pkcs1",
            CertificateSpec {
                secret_name: "rsa-pkcs1".into(),
                // Kind and group left out, as most manifests do.
                issuer_ref: IssuerRef {
                    name: "ca".into(),
                    kind: None,
                    group: None,
                },
                common_name: Some("rsa, one".into()),
                dns_names: strings(&["a.example.com", "b.example.com"]),
                ip_addresses: strings(&["10.0.0.1", "::1"]),
                uris: strings(&["spiffe://example.org/a,b"]),
                email_addresses: strings(&["x@example.com", "y@example.com"]),
                subject: Some(X509Subject {
                    organizations: strings(&["Org, Inc.", " spaced", "quo\"te"]),
                    organizational_units: strings(&["u1", "u2"]),
                    countries: strings(&["GB"]),
                    localities: strings(&["London"]),
                    provinces: strings(&["Greater London"]),
                    street_addresses: strings(&["10 Downing Street, Westminster"]),
                    postal_codes: strings(&["SW1A 2AA"]),
                    serial_number: Some("1234".into()),
                }),
                private_key: key("RSA", Some(2048), "PKCS1"),
                keystores: Some(CertificateKeystores {
                    pkcs12: pkcs12(None, "pw-12345"),
                    jks: jks(Some("MyAlias"), "changeit"),
                }),
                additional_output_formats: formats(),
                ..Default::default()
            },
            "pw-12345",
            "changeit",
        ),
        (
            "rsa-pkcs8",
            CertificateSpec {
                secret_name: "rsa-pkcs8".into(),
                issuer_ref: issuer.clone(),
                common_name: Some("rsa-pkcs8".into()),
                dns_names: strings(&["rsa8.example.com"]),
                private_key: key("RSA", Some(3072), "PKCS8"),
                keystores: Some(CertificateKeystores {
                    pkcs12: pkcs12(Some("LegacyDES"), "des-pass"),
                    jks: jks(None, "changeit"),
                }),
                secret_template: Some(CertificateSecretTemplate {
                    annotations: Some(BTreeMap::from([(
                        "example.com/owner".to_string(),
                        "team, a".to_string(),
                    )])),
                    labels: Some(BTreeMap::from([("app".to_string(), "web".to_string())])),
                }),
                additional_output_formats: formats(),
                ..Default::default()
            },
            "des-pass",
            "changeit",
        ),
        (
            "ec-pkcs1",
            CertificateSpec {
                secret_name: "ec-pkcs1".into(),
                issuer_ref: issuer.clone(),
                common_name: Some("ec-pkcs1".into()),
                dns_names: strings(&["ec1.example.com"]),
                subject: Some(X509Subject {
                    organizations: strings(&["Org, Inc."]),
                    ..Default::default()
                }),
                private_key: key("ECDSA", Some(256), "PKCS1"),
                keystores: Some(CertificateKeystores {
                    pkcs12: pkcs12(Some("Modern2023"), "modern"),
                    // Shorter than keytool's minimum for new stores; upstream
                    // accepts it and Java opens such stores.
                    jks: jks(Some("ec"), "abc"),
                }),
                additional_output_formats: formats(),
                ..Default::default()
            },
            "modern",
            "abc",
        ),
        (
            "ec-pkcs8",
            CertificateSpec {
                secret_name: "ec-pkcs8".into(),
                issuer_ref: issuer.clone(),
                common_name: Some("ec-pkcs8".into()),
                ip_addresses: strings(&["192.0.2.7"]),
                private_key: key("ECDSA", Some(384), "PKCS8"),
                keystores: Some(CertificateKeystores {
                    pkcs12: Some(Pkcs12Keystore {
                        create: true,
                        password_secret_ref: Some(SecretKeySelector {
                            name: "keystore-pass".into(),
                            key: Some("password".into()),
                        }),
                        profile: Some("Modern2026".into()),
                        ..Default::default()
                    }),
                    jks: None,
                }),
                additional_output_formats: formats(),
                ..Default::default()
            },
            "from-a-secret",
            "",
        ),
        (
            "ed25519",
            CertificateSpec {
                secret_name: "ed25519".into(),
                issuer_ref: issuer,
                common_name: Some("ed".into()),
                dns_names: strings(&["ed.example.com"]),
                uris: strings(&["urn:example:ed"]),
                private_key: key("Ed25519", None, "PKCS1"),
                keystores: Some(CertificateKeystores {
                    pkcs12: pkcs12(Some("LegacyRC2"), "ed-pass"),
                    jks: jks(Some("Ed"), "changeit"),
                }),
                additional_output_formats: formats(),
                ..Default::default()
            },
            "ed-pass",
            "changeit",
        ),
    ]
}

/// Creates the CA Secret and Issuer, the password Secret and every
/// Certificate in `client`'s cluster.
async fn apply_objects(client: &Client, ca_crt: &str, ca_key: &str) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let secret = |name: &str, type_: Option<&str>, data: &[(&str, &str)]| Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        type_: type_.map(Into::into),
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Default::default()
    };
    for s in [
        secret(
            "ca",
            Some("kubernetes.io/tls"),
            &[("tls.crt", ca_crt), ("tls.key", ca_key)],
        ),
        secret("keystore-pass", None, &[("password", "from-a-secret")]),
    ] {
        secrets.create(&PostParams::default(), &s).await.unwrap();
    }
    Api::<Issuer>::namespaced(client.clone(), NS)
        .create(
            &PostParams::default(),
            &Issuer::new(
                "ca",
                IssuerSpec {
                    ca: Some(CaIssuer {
                        secret_name: "ca".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ),
        )
        .await
        .unwrap();
    let certs: Api<Certificate> = Api::namespaced(client.clone(), NS);
    for (name, spec, _, _) in certificates() {
        certs
            .create(&PostParams::default(), &Certificate::new(name, spec))
            .await
            .unwrap_or_else(|e| panic!("creating Certificate {name}: {e}"));
    }
}

/// Polls until every Certificate is Ready and returns their Secrets.
async fn wait_for_secrets(
    client: &Client,
    side: &str,
    log: impl Fn() -> String,
) -> BTreeMap<String, Secret> {
    let certs: Api<Certificate> = Api::namespaced(client.clone(), NS);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let deadline = Instant::now() + TIMEOUT;
    let mut out = BTreeMap::new();
    for (name, spec, _, _) in certificates() {
        loop {
            let c = certs.get(name).await.unwrap();
            if c.is_ready() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{side}: Certificate {name} never became Ready: {:#?}\n{}",
                c.status,
                log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        out.insert(
            name.to_string(),
            secrets.get(&spec.secret_name).await.unwrap(),
        );
    }
    out
}

fn tool(cmd: &str, args: &[&str], dir: &Path) -> String {
    let out = Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} runs: {e}"));
    // OpenSSL 3 prints pkcs12 -info on stderr; keep both, stdout first.
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd} {args:?} failed: {text}");
    text
}

/// Lines of `text` that match `keep`, in order.
fn keep_lines(text: &str, keep: impl Fn(&str) -> bool) -> Vec<String> {
    text.lines()
        .map(str::trim_end)
        .filter(|l| keep(l))
        .map(str::to_owned)
        .collect()
}

/// `openssl asn1parse` of a file as depth and type only (values,
/// offsets and lengths differ between any two keys).
fn asn1_shape(dir: &Path, inform: &str, file: &str) -> Vec<String> {
    tool(
        "openssl",
        &["asn1parse", "-inform", inform, "-in", file],
        dir,
    )
    .lines()
    .filter_map(|l| {
        let (_, rest) = l.split_once("d=")?;
        let depth = rest.split_whitespace().next()?;
        let kind = rest.split_once(':').map(|(_, k)| k)?;
        let kind = kind.split(':').next().unwrap_or("").trim();
        Some(format!("d={depth} {kind}"))
    })
    .collect()
}

/// The PEM block labels of a file and where blank lines fall between them.
fn pem_shape(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with("-----") || l.trim().is_empty())
        .map(|l| {
            if l.trim().is_empty() {
                "<blank line>".to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect()
}

/// keytool's view of a store: per entry, its alias, type and chain owners,
/// entries sorted by alias (JKS has no stable order).
fn keytool_view(dir: &Path, file: &str, storetype: &str, password: &str) -> Vec<String> {
    let text = tool(
        "keytool",
        &[
            "-list",
            "-v",
            "-storetype",
            storetype,
            "-storepass",
            password,
            "-keystore",
            file,
        ],
        dir,
    );
    let mut entries: Vec<String> = text
        .split("Alias name: ")
        .skip(1)
        .map(|entry| {
            keep_lines(&format!("Alias name: {entry}"), |l| {
                [
                    "Alias name:",
                    "Entry type:",
                    "Certificate chain length:",
                    "Certificate[",
                    "Owner:",
                    "Issuer:",
                ]
                .iter()
                .any(|p| l.starts_with(p))
            })
            .join("\n")
        })
        .collect();
    entries.sort();
    let mut view = keep_lines(&text, |l| {
        l.starts_with("Keystore type:") || l.starts_with("Your keystore contains")
    });
    view.extend(entries);
    view
}

/// `openssl pkcs12 -info` of a store: the algorithm lines, then each bag's
/// attribute names (values only for friendlyName and the Java trust mark)
/// and certificate subject and issuer. No key material is printed.
fn p12_view(dir: &Path, file: &str, password: &str, pbmac1: bool) -> Vec<String> {
    let pass = format!("pass:{password}");
    let mut args = vec!["pkcs12", "-info", "-legacy", "-passin", &pass, "-in", file];
    if pbmac1 {
        // OpenSSL 3.0 cannot check PBMAC1 (tests/library verifies it).
        args.push("-nomacver");
    }
    let mut noout = args.clone();
    noout.push("-noout");
    let mut view = keep_lines(&tool("openssl", &noout, dir), |l| !l.trim().is_empty());
    let mut nokeys = args;
    nokeys.push("-nokeys");
    view.extend(
        tool("openssl", &nokeys, dir)
            .lines()
            .filter(|l| {
                l.starts_with("Bag Attributes")
                    || l.starts_with("    ")
                    || l.starts_with("subject=")
                    || l.starts_with("issuer=")
            })
            .map(|l| match l.trim_start().split_once(": ") {
                Some((name, _)) if l.starts_with("    ") && name == "localKeyID" => {
                    format!("    {name}: <value>")
                }
                _ => l.to_owned(),
            }),
    );
    view
}

fn data<'a>(secret: &'a Secret, key: &str) -> Option<&'a [u8]> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.as_slice())
}

/// Everything the outside tools see in one Secret, by check name.
fn view(
    dir: &Path,
    secret: &Secret,
    pkcs12_password: &str,
    jks_password: &str,
    pbmac1: bool,
) -> BTreeMap<&'static str, Vec<String>> {
    std::fs::create_dir_all(dir).unwrap();
    for (k, v) in secret.data.iter().flatten() {
        std::fs::write(dir.join(k), &v.0).unwrap();
    }
    let mut v: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    v.insert("type", vec![secret.type_.clone().unwrap_or_default()]);
    v.insert(
        "data keys",
        secret
            .data
            .iter()
            .flatten()
            .map(|(k, _)| k.clone())
            .collect(),
    );
    v.insert(
        "annotations",
        secret
            .metadata
            .annotations
            .iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v}"))
            .collect(),
    );
    v.insert(
        "labels",
        secret
            .metadata
            .labels
            .iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v}"))
            .collect(),
    );
    let text = |k: &str| String::from_utf8_lossy(data(secret, k).unwrap_or_default()).into_owned();
    v.insert("tls.key PEM blocks", pem_shape(&text("tls.key")));
    v.insert(
        "tls.key as openssl reads it",
        keep_lines(
            &tool(
                "openssl",
                &["pkey", "-in", "tls.key", "-noout", "-text"],
                dir,
            ),
            |l| l.contains("Private-Key") || l.starts_with("ASN1 OID") || l.starts_with("NIST"),
        ),
    );
    v.insert("tls.key structure", asn1_shape(dir, "PEM", "tls.key"));
    v.insert(
        "tls.crt certificates",
        vec![
            text("tls.crt")
                .matches("BEGIN CERTIFICATE")
                .count()
                .to_string(),
        ],
    );
    v.insert("ca.crt", vec![text("ca.crt")]);
    if data(secret, "key.der").is_some() {
        v.insert("key.der structure", asn1_shape(dir, "DER", "key.der"));
        // The same key as tls.key, read by openssl.
        let from_der = tool(
            "openssl",
            &["pkey", "-inform", "DER", "-in", "key.der", "-pubout"],
            dir,
        );
        let from_pem = tool("openssl", &["pkey", "-in", "tls.key", "-pubout"], dir);
        v.insert(
            "key.der is tls.key",
            vec![(from_der == from_pem).to_string()],
        );
    }
    if data(secret, "tls-combined.pem").is_some() {
        v.insert(
            "tls-combined.pem blocks",
            pem_shape(&text("tls-combined.pem")),
        );
    }
    if data(secret, "keystore.p12").is_some() {
        v.insert(
            "keystore.p12",
            p12_view(dir, "keystore.p12", pkcs12_password, pbmac1),
        );
        if !pbmac1 {
            // Java 17 reads every profile but PBMAC1's.
            v.insert(
                "keystore.p12 in keytool",
                keytool_view(dir, "keystore.p12", "PKCS12", pkcs12_password),
            );
        }
    }
    if data(secret, "truststore.p12").is_some() {
        v.insert(
            "truststore.p12",
            p12_view(dir, "truststore.p12", pkcs12_password, pbmac1),
        );
        if !pbmac1 {
            v.insert(
                "truststore.p12 in keytool",
                keytool_view(dir, "truststore.p12", "PKCS12", pkcs12_password),
            );
        }
    }
    for store in ["keystore.jks", "truststore.jks"] {
        if data(secret, store).is_some() {
            v.insert(
                if store == "keystore.jks" {
                    "keystore.jks in keytool"
                } else {
                    "truststore.jks in keytool"
                },
                keytool_view(dir, store, "JKS", jks_password),
            );
        }
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn certificates_become_the_secrets_cert_manager_writes() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let (ca_crt, ca_key) = make_ca();

    // Real cert-manager first, in its own cluster.
    let upstream = Upstream::start();
    let up_client = upstream.cluster.client().await;
    for ns in [CLUSTER_NS, NS] {
        test_kit::create_namespace(&up_client, ns).await;
    }
    apply_objects(&up_client, &ca_crt, &ca_key).await;
    let theirs = wait_for_secrets(&up_client, "cert-manager", || {
        upstream.controller.log_tail()
    })
    .await;

    // cert-csi's controller in another.
    let env = ControllerEnv::start(CLUSTER_NS, &[CLUSTER_NS, NS], 1, 100_000, |_| {}).await;
    apply_objects(&env.client, &ca_crt, &ca_key).await;
    let ours = wait_for_secrets(&env.client, "cert-csi", String::new).await;

    let dir = tempfile::tempdir().unwrap();
    let mut differences = Vec::new();
    let mut allowed_used = BTreeSet::new();
    for (name, spec, p12_pass, jks_pass) in certificates() {
        let pbmac1 = spec
            .keystores
            .as_ref()
            .and_then(|k| k.pkcs12.as_ref())
            .and_then(|p| p.profile.as_deref())
            == Some("Modern2026");
        let want = view(
            &dir.path().join("cert-manager").join(name),
            &theirs[name],
            p12_pass,
            jks_pass,
            pbmac1,
        );
        let have = view(
            &dir.path().join("cert-csi").join(name),
            &ours[name],
            p12_pass,
            jks_pass,
            pbmac1,
        );
        let checks: BTreeSet<&str> = want.keys().chain(have.keys()).copied().collect();
        for check in checks {
            let (w, h) = (want.get(check), have.get(check));
            if w == h {
                continue;
            }
            if let Some((_, _, _)) = INTENTIONAL
                .iter()
                .find(|(c, k, _)| *c == name && *k == check)
            {
                allowed_used.insert((name, check));
                continue;
            }
            differences.push(format!(
                "{name}: {check}\n  cert-manager: {w:#?}\n  cert-csi:     {h:#?}"
            ));
        }
    }
    env.stop().await;
    drop(upstream);
    // An allow-list entry that no longer matches anything is stale.
    for (c, k, reason) in INTENTIONAL {
        assert!(
            allowed_used.contains(&(*c, *k)),
            "INTENTIONAL lists {c}: {k} ({reason}), but the outputs agree there now"
        );
    }
    assert!(
        differences.is_empty(),
        "{} difference(s) from cert-manager:\n{}",
        differences.len(),
        differences.join("\n")
    );
}
