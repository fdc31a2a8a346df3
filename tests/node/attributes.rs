//! Volume attributes reach the key, the CertificateRequest and the issued
//! certificate, checked independently with the openssl CLI.

use std::path::Path;
use std::time::Duration;

use cert_csi::volume::keys;
use kube::ResourceExt;
use test_kit::{Env, PodFiles, PodRef, VolumeRequest, annotations, cert_text, openssl, openssl_ok};

fn path_str(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

fn key_text(volume: &VolumeRequest, name: &str) -> String {
    openssl_ok(&[
        "pkey",
        "-noout",
        "-text",
        "-in",
        path_str(&volume.file(name)),
    ])
}

fn ext(volume: &VolumeRequest, cert: &str, which: &str) -> String {
    openssl_ok(&[
        "x509",
        "-noout",
        "-ext",
        which,
        "-in",
        path_str(&volume.file(cert)),
    ])
}

fn assert_chain_and_key(volume: &VolumeRequest, cert: &str, key: &str, ca: &str) {
    let out = openssl_ok(&[
        "verify",
        "-CAfile",
        path_str(&volume.file(ca)),
        path_str(&volume.file(cert)),
    ]);
    assert!(out.contains(": OK"), "{}: {out}", volume.volume_name);
    let from_key = openssl_ok(&["pkey", "-pubout", "-in", path_str(&volume.file(key))]);
    let from_cert = openssl_ok(&[
        "x509",
        "-noout",
        "-pubkey",
        "-in",
        path_str(&volume.file(cert)),
    ]);
    assert_eq!(
        from_key, from_cert,
        "{}: key and certificate differ",
        volume.volume_name
    );
}

/// Whether the certificate is still valid `seconds` from now
/// (`openssl x509 -checkend`).
fn valid_for(volume: &VolumeRequest, cert: &str, seconds: u64) -> bool {
    let out = openssl(&[
        "x509",
        "-noout",
        "-checkend",
        &seconds.to_string(),
        "-in",
        path_str(&volume.file(cert)),
    ]);
    out.status.success()
}

async fn publish_all(env: &Env, volumes: &[&VolumeRequest]) {
    for v in volumes {
        env.publish_ok(v).await;
    }
}

fn vol(env: &Env, pod: &PodRef, name: &str, extra: &[(&str, &str)]) -> VolumeRequest {
    let mut attrs = vec![(keys::ISSUER_NAME, "ca")];
    attrs.extend_from_slice(extra);
    env.volume(pod, name, &attrs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_algorithms_sizes_and_encodings() {
    if !test_kit::require_root("key_algorithms_sizes_and_encodings") {
        return;
    }
    let env = Env::start().await;
    let pod = env.create_pod("keys", "keys-0", "default").await;
    let rsa_default = vol(&env, &pod, "rsa-default", &[]);
    let rsa_pkcs8 = vol(&env, &pod, "rsa-pkcs8", &[(keys::KEY_ENCODING, "PKCS8")]);
    // The one RSA-4096 case of the suite (slow in debug builds).
    let rsa_4096 = vol(
        &env,
        &pod,
        "rsa-4096",
        &[(keys::KEY_ALGORITHM, "rsa"), (keys::KEY_SIZE, "4096")],
    );
    let ec_256 = vol(&env, &pod, "ec-256", &[(keys::KEY_ALGORITHM, "ECDSA")]);
    let ec_384 = vol(
        &env,
        &pod,
        "ec-384",
        &[(keys::KEY_ALGORITHM, "ECDSA"), (keys::KEY_SIZE, "384")],
    );
    let ec_521 = vol(
        &env,
        &pod,
        "ec-521",
        &[(keys::KEY_ALGORITHM, "ecdsa"), (keys::KEY_SIZE, "521")],
    );
    let ed = vol(&env, &pod, "ed25519", &[(keys::KEY_ALGORITHM, "Ed25519")]);
    publish_all(
        &env,
        &[
            &rsa_default,
            &rsa_pkcs8,
            &rsa_4096,
            &ec_256,
            &ec_384,
            &ec_521,
            &ed,
        ],
    )
    .await;

    for v in [
        &rsa_default,
        &rsa_pkcs8,
        &rsa_4096,
        &ec_256,
        &ec_384,
        &ec_521,
        &ed,
    ] {
        assert_chain_and_key(v, "tls.crt", "tls.key", "ca.crt");
    }
    // RSA: 2048 and PKCS#1 by default; PKCS#8 on request.
    assert!(
        rsa_default
            .read_string("tls.key")
            .starts_with("-----BEGIN RSA PRIVATE KEY-----")
    );
    assert!(key_text(&rsa_default, "tls.key").contains("(2048 bit"));
    assert!(cert_text(&rsa_default.file("tls.crt")).contains("rsaEncryption"));
    assert!(
        rsa_pkcs8
            .read_string("tls.key")
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );
    assert!(key_text(&rsa_pkcs8, "tls.key").contains("(2048 bit"));
    assert!(
        rsa_4096
            .read_string("tls.key")
            .starts_with("-----BEGIN RSA PRIVATE KEY-----")
    );
    assert!(cert_text(&rsa_4096.file("tls.crt")).contains("Public-Key: (4096 bit)"));
    // ECDSA: the curve follows key-size; keys are PKCS#8.
    for (v, bits, curve) in [
        (&ec_256, 256, "prime256v1"),
        (&ec_384, 384, "secp384r1"),
        (&ec_521, 521, "secp521r1"),
    ] {
        assert!(
            v.read_string("tls.key")
                .starts_with("-----BEGIN PRIVATE KEY-----"),
            "{}",
            v.volume_name
        );
        let text = key_text(v, "tls.key");
        assert!(
            text.contains(&format!("({bits} bit)")),
            "{}: {text}",
            v.volume_name
        );
        assert!(text.contains(curve), "{}: {text}", v.volume_name);
        assert!(cert_text(&v.file("tls.crt")).contains("id-ecPublicKey"));
    }
    assert!(
        ed.read_string("tls.key")
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );
    assert!(key_text(&ed, "tls.key").contains("ED25519 Private-Key"));
    assert!(cert_text(&ed.file("tls.crt")).contains("Public Key Algorithm: ED25519"));
    assert_eq!(env.count_requests("keys").await, 7);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subject_names_usages_and_ca_reach_request_and_certificate() {
    if !test_kit::require_root("subject_names_usages_and_ca_reach_request_and_certificate") {
        return;
    }
    let env = Env::start().await;
    let pod = env.create_pod("names", "names-0", "frontend").await;
    let defaults = vol(&env, &pod, "defaults", &[]);
    let literal = vol(
        &env,
        &pod,
        "literal",
        &[(keys::LITERAL_SUBJECT, "CN=${POD_NAME},O=Acme Corp,C=DE")],
    );
    let ca = vol(
        &env,
        &pod,
        "is-ca",
        &[(keys::IS_CA, "true"), (keys::KEY_ALGORITHM, "ECDSA")],
    );
    let usages = vol(
        &env,
        &pod,
        "usages",
        &[
            (
                keys::KEY_USAGES,
                "digital signature, key encipherment, server auth, client auth",
            ),
            (keys::KEY_ALGORITHM, "ECDSA"),
        ],
    );
    let sans = vol(
        &env,
        &pod,
        "sans",
        &[
            (keys::COMMON_NAME, "${POD_NAME}"),
            (keys::DNS_NAMES, "a.example, ${POD_NAME}.${POD_NAMESPACE}"),
            (keys::IP_SANS, "10.1.2.3,fd00::1"),
            (
                keys::URI_SANS,
                "spiffe://cluster.local/ns/${POD_NAMESPACE}/sa/${SERVICE_ACCOUNT_NAME}",
            ),
            (keys::KEY_ALGORITHM, "ECDSA"),
        ],
    );
    publish_all(&env, &[&defaults, &literal, &ca, &usages, &sans]).await;
    for v in [&defaults, &literal, &ca, &usages, &sans] {
        assert_chain_and_key(v, "tls.crt", "tls.key", "ca.crt");
    }

    // Defaults: issuer kind and group, 2160h, the two default usages, not a CA.
    let cr = env.only_request(&defaults).await;
    assert_eq!(cr.spec.issuer_ref.name, "ca");
    assert_eq!(cr.spec.issuer_ref.kind.as_deref(), Some("Issuer"));
    assert_eq!(cr.spec.issuer_ref.group.as_deref(), Some("cert-manager.io"));
    let duration = cert_csi::api::duration::parse_go(cr.spec.duration.as_deref().unwrap()).unwrap();
    assert_eq!(duration, Duration::from_secs(2160 * 3600));
    assert_eq!(
        cr.spec.usages.as_deref(),
        Some(
            &[
                "digital signature".to_string(),
                "key encipherment".to_string()
            ][..]
        )
    );
    assert_ne!(cr.spec.is_ca, Some(true));
    assert!(
        cr.owner_references()
            .iter()
            .any(|o| o.kind == "Pod" && o.uid == pod.uid),
        "no ownerReference to the pod"
    );
    let ku = ext(&defaults, "tls.crt", "keyUsage");
    assert!(ku.contains("Digital Signature, Key Encipherment"), "{ku}");
    assert!(!ku.contains("Certificate Sign"), "{ku}");
    assert!(!ext(&defaults, "tls.crt", "basicConstraints").contains("CA:TRUE"));
    assert!(
        valid_for(&defaults, "tls.crt", 89 * 24 * 3600),
        "default lifetime shorter than 90 days"
    );
    assert!(
        !valid_for(&defaults, "tls.crt", 91 * 24 * 3600),
        "default lifetime longer than 90 days"
    );

    // Literal subject, byte for byte in RFC 4514 order, variables expanded.
    let subject = openssl_ok(&[
        "x509",
        "-noout",
        "-subject",
        "-nameopt",
        "RFC2253",
        "-in",
        path_str(&literal.file("tls.crt")),
    ]);
    assert_eq!(subject.trim(), "subject=CN=names-0,O=Acme Corp,C=DE");

    // is-ca: the request asks for it and the certificate is a CA.
    assert_eq!(env.only_request(&ca).await.spec.is_ca, Some(true));
    let bc = ext(&ca, "tls.crt", "basicConstraints");
    assert!(bc.contains("CA:TRUE"), "{bc}");
    assert!(ext(&ca, "tls.crt", "keyUsage").contains("Certificate Sign"));

    // key-usages: the request's spec.usages and the certificate's extensions.
    let cr = env.only_request(&usages).await;
    assert_eq!(
        cr.spec.usages.clone().unwrap(),
        [
            "digital signature",
            "key encipherment",
            "server auth",
            "client auth"
        ]
    );
    let text = ext(&usages, "tls.crt", "keyUsage,extendedKeyUsage");
    assert!(
        text.contains("Digital Signature, Key Encipherment"),
        "{text}"
    );
    assert!(
        text.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
        "{text}"
    );

    // SANs of every kind, with variables expanded.
    let san = ext(&sans, "tls.crt", "subjectAltName").to_ascii_lowercase();
    for want in [
        "dns:a.example",
        "dns:names-0.names",
        "ip address:10.1.2.3",
        "ip address:fd00:0:0:0:0:0:0:1",
        "uri:spiffe://cluster.local/ns/names/sa/frontend",
    ] {
        assert!(san.contains(want), "missing {want}: {san}");
    }
    let subject = openssl_ok(&[
        "x509",
        "-noout",
        "-subject",
        "-nameopt",
        "RFC2253",
        "-in",
        path_str(&sans.file("tls.crt")),
    ]);
    assert_eq!(subject.trim(), "subject=CN=names-0");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_keystore_lifetime_and_annotations() {
    if !test_kit::require_root("files_keystore_lifetime_and_annotations") {
        return;
    }
    let env = Env::start().await;
    let pod = env.create_pod("files", "files-0", "default").await;
    let names = vol(
        &env,
        &pod,
        "names",
        &[
            (keys::CERTIFICATE_FILE, "cert.pem"),
            (keys::PRIVATE_KEY_FILE, "key.pem"),
            (keys::CA_FILE, "root.pem"),
            (keys::KEY_ALGORITHM, "ECDSA"),
        ],
    );
    let p12 = vol(
        &env,
        &pod,
        "p12",
        &[
            (keys::PKCS12_ENABLE, "true"),
            (keys::PKCS12_PASSWORD, "s3cret-pass"),
        ],
    );
    let lifetime = vol(
        &env,
        &pod,
        "lifetime",
        &[
            (keys::DURATION, "1h"),
            (keys::RENEW_BEFORE, "30m"),
            (keys::KEY_ALGORITHM, "ECDSA"),
        ],
    );
    let lifetime_default_renew = vol(
        &env,
        &pod,
        "lifetime-default",
        &[(keys::DURATION, "1h"), (keys::KEY_ALGORITHM, "ECDSA")],
    );
    let annotated = vol(
        &env,
        &pod,
        "annotated",
        &[
            ("example.com/team", "x"),
            ("example.com/cost-center", "42"),
            (keys::KEY_ALGORITHM, "ECDSA"),
        ],
    );
    publish_all(
        &env,
        &[&names, &p12, &lifetime, &lifetime_default_renew, &annotated],
    )
    .await;

    // Custom file names replace the defaults.
    assert_chain_and_key(&names, "cert.pem", "key.pem", "root.pem");
    for default in ["tls.crt", "tls.key", "ca.crt"] {
        assert!(
            !names.file(default).exists(),
            "{default} written despite a custom name"
        );
    }

    // PKCS#12 opens with the password (and not without it), holding the leaf.
    assert_chain_and_key(&p12, "tls.crt", "tls.key", "ca.crt");
    let store = path_str(&p12.file("keystore.p12")).to_string();
    // csi-driver writes go-pkcs12's LegacyRC2 profile, which OpenSSL 3
    // reads only with its legacy provider.
    let opened = openssl_ok(&[
        "pkcs12",
        "-in",
        &store,
        "-passin",
        "pass:s3cret-pass",
        "-nodes",
        "-legacy",
    ]);
    assert!(opened.contains("PRIVATE KEY"), "no key in the keystore");
    let info = openssl(&[
        "pkcs12",
        "-in",
        &store,
        "-passin",
        "pass:s3cret-pass",
        "-info",
        "-noout",
        "-legacy",
    ]);
    assert!(info.status.success(), "openssl pkcs12 -info failed");
    let info = String::from_utf8_lossy(&info.stderr);
    for line in [
        "MAC: sha1, Iteration 1",
        "PKCS7 Encrypted data: pbeWithSHA1And40BitRC2-CBC, Iteration 2048",
        "Shrouded Keybag: pbeWithSHA1And3-KeyTripleDES-CBC, Iteration 2048",
    ] {
        assert!(info.contains(line), "not LegacyRC2 ({line}): {info}");
    }
    // The chain alone: ca.crt is not added, as csi-driver passes chain[1:].
    assert_eq!(
        opened.matches("BEGIN CERTIFICATE").count(),
        p12.read_string("tls.crt")
            .matches("BEGIN CERTIFICATE")
            .count(),
        "the keystore holds other certificates than tls.crt's"
    );
    let leaf_b64: String = p12
        .read_string("tls.crt")
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    let opened_b64: String = opened.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(
        opened_b64.contains(&leaf_b64),
        "the keystore does not hold the issued leaf"
    );
    assert!(
        !openssl(&[
            "pkcs12",
            "-in",
            &store,
            "-passin",
            "pass:wrong",
            "-nodes",
            "-legacy"
        ])
        .status
        .success(),
        "the keystore opened with a wrong password"
    );

    // duration: on the request and in the certificate's validity.
    let cr = env.only_request(&lifetime).await;
    let duration = cert_csi::api::duration::parse_go(cr.spec.duration.as_deref().unwrap()).unwrap();
    assert_eq!(duration, Duration::from_secs(3600));
    assert!(
        valid_for(&lifetime, "tls.crt", 50 * 60),
        "a 1h certificate expires within 50m"
    );
    assert!(
        !valid_for(&lifetime, "tls.crt", 70 * 60),
        "a 1h certificate outlives 70m"
    );
    // renew-before: accepted and used for the renewal time (30m, which is
    // half the lifetime: jitter may not reach earlier than half), unlike
    // the default of a third of the lifetime received (which is a moment
    // short of the hour asked for), plus up to 10% jitter.
    let renew_gap = |v: &VolumeRequest| -> Duration {
        let state = env.state_json(v).expect("node state");
        let ts = |k: &str| -> jiff::Timestamp { state[k].as_str().unwrap().parse().unwrap() };
        let gap = ts("not_after").duration_since(ts("next_renewal"));
        Duration::try_from(gap).unwrap()
    };
    let gap = renew_gap(&lifetime);
    assert!(
        gap == Duration::from_secs(30 * 60),
        "renew-before 30m gave a renewal {gap:?} before expiry"
    );
    let gap = renew_gap(&lifetime_default_renew);
    assert!(
        gap >= Duration::from_secs(20 * 60 - 5) && gap <= Duration::from_secs(22 * 60),
        "the default renew-before gave {gap:?} before expiry"
    );

    // Annotation pass-through: other prefixes are copied, the kubelet's and
    // cert-manager's attribute keys never.
    let cr = env.only_request(&annotated).await;
    let notes = annotations(&cr);
    assert_eq!(notes.get("example.com/team").map(String::as_str), Some("x"));
    assert_eq!(
        notes.get("example.com/cost-center").map(String::as_str),
        Some("42")
    );
    for r in env.requests("files").await {
        for key in annotations(&r).keys() {
            assert!(
                !key.starts_with("csi.storage.k8s.io/") && !key.starts_with("csi.cert-manager.io/"),
                "{} carries {key}",
                r.name_any()
            );
        }
    }
    assert!(annotations(&env.only_request(&names).await).is_empty());
    env.finish().await;
}

/// The CSR of a volume's only request, written to a file for openssl.
async fn request_file(env: &Env, volume: &VolumeRequest) -> tempfile::NamedTempFile {
    let cr = env.only_request(volume).await;
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), cr.spec.request.as_bytes()).expect("write the CSR");
    file
}

/// The DER of a PEM CSR file, decoded by openssl (not the crate).
fn request_der(csr: &Path) -> Vec<u8> {
    let out = test_kit::openssl(&["req", "-in", path_str(csr), "-outform", "DER"]);
    assert!(out.status.success(), "openssl req: {out:?}");
    out.stdout
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// The pod's Events with `reason`, polled until one is there or 15 s passed
/// (the node records them in the background).
async fn pod_events(env: &Env, namespace: &str, pod: &str, reason: &str) -> Vec<String> {
    use k8s_openapi::api::events::v1::Event;
    let api: kube::Api<Event> = kube::Api::namespaced(env.client.clone(), namespace);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let notes: Vec<String> = api
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(pod)
            })
            .filter_map(|e| e.note)
            .collect();
        if !notes.is_empty() || std::time::Instant::now() > deadline {
            return notes;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What cert-manager's csi-driver accepts is accepted here, and the
/// request carries it as upstream would write it: the subject DER byte for
/// byte (derived by hand from go-ldap's and Go's encoding rules), SANs as
/// Go writes them, RSA keys of any size in range; unknown attributes pass
/// with a Warning Event. openssl judges the request and the certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_inputs_reach_the_request_as_upstream_writes_them() {
    if !test_kit::require_root("upstream_inputs_reach_the_request_as_upstream_writes_them") {
        return;
    }
    let env = Env::start().await;
    let pod = env.create_pod("upstream", "up-0", "default").await;
    let literal = vol(
        &env,
        &pod,
        "literal",
        &[
            // Spaces after separators, ';' between RDNs, unescaped quotes.
            (
                keys::LITERAL_SUBJECT,
                "CN=${POD_NAME}, OU=b+OU=a; O=Example \"Q\", C=DE",
            ),
            (keys::KEY_ALGORITHM, "ECDSA"),
        ],
    );
    let fields = vol(
        &env,
        &pod,
        "fields",
        &[
            (keys::COMMON_NAME, "$POD_NAME"),
            // CSV: quotes group, nothing trimmed.
            (keys::ORGANIZATIONS, "\"Example, Inc\",Other"),
            (keys::LOCALITIES, " spaced"),
            // Never expanded upstream.
            (keys::SERIAL_NUMBER, "$POD_UID"),
            (keys::KEY_ALGORITHM, "ECDSA"),
        ],
    );
    let sans = vol(
        &env,
        &pod,
        "sans",
        &[
            (
                keys::DNS_NAMES,
                "a.example, trailing.example., _srv.example, 10.9.9.9,",
            ),
            (keys::URI_SANS, "/app, SPIFFE://td/ns/${POD_NAMESPACE}"),
            (keys::IP_SANS, "::ffff:10.1.2.3"),
            (keys::KEY_USAGES, "server auth, server auth"),
            (keys::KEY_ALGORITHM, "ECDSA"),
        ],
    );
    let rsa_odd = vol(&env, &pod, "rsa-2049", &[(keys::KEY_SIZE, "2049")]);
    let p12_off = vol(
        &env,
        &pod,
        "p12-off",
        &[
            (keys::PKCS12_ENABLE, "false"),
            (keys::PKCS12_PASSWORD, "unused-pass"),
            (keys::KEY_ALGORITHM, "ECDSA"),
        ],
    );
    let typo = vol(
        &env,
        &pod,
        "typo",
        &[
            ("csi.cert-manager.io/dns-name", "typo.example"),
            (keys::KEY_ALGORITHM, "ECDSA"),
        ],
    );
    publish_all(&env, &[&literal, &fields, &sans, &rsa_odd, &p12_off, &typo]).await;
    for v in [&literal, &fields, &sans, &rsa_odd, &p12_off, &typo] {
        assert_chain_and_key(v, "tls.crt", "tls.key", "ca.crt");
    }

    // The literal subject: reversed, OU members sorted by their DER,
    // `Example "Q"` a UTF8String (a quote is not PrintableString), the
    // rest PrintableStrings.
    let want = hex_bytes(concat!(
        "3048",
        "310b",
        "3009",
        "0603550406",
        "1302",
        "4445",
        "3114",
        "3012",
        "060355040a",
        "0c0b",
        "4578616d706c6520225122",
        "3114",
        "3008",
        "060355040b",
        "1301",
        "61",
        "3008",
        "060355040b",
        "1301",
        "62",
        "310d",
        "300b",
        "0603550403",
        "1304",
        "75702d30",
    ));
    let csr = request_file(&env, &literal).await;
    let der = request_der(csr.path());
    assert!(
        der.windows(want.len()).any(|w| w == want.as_slice()),
        "the request's subject is not upstream's bytes"
    );
    let parsed = openssl_ok(&["asn1parse", "-in", path_str(csr.path())]);
    assert!(
        parsed.contains("UTF8STRING        :Example \"Q\""),
        "{parsed}"
    );
    assert!(parsed.contains("PRINTABLESTRING   :up-0"), "{parsed}");
    // The certificate carries the same subject (openssl's RFC 2253 form
    // reverses the order, within a multi-valued RDN too).
    let subject = openssl_ok(&[
        "x509",
        "-noout",
        "-subject",
        "-nameopt",
        "RFC2253",
        "-in",
        path_str(&literal.file("tls.crt")),
    ]);
    assert_eq!(
        subject.trim(),
        "subject=CN=up-0,OU=b+OU=a,O=Example \\\"Q\\\",C=DE"
    );

    // Subject fields: L, O, CN, serialNumber in Go's order; "Other" sorts
    // before "Example, Inc" (shorter); " spaced" keeps its space;
    // "$POD_UID" is text (a UTF8String, as '$' is not PrintableString).
    let want = hex_bytes(concat!(
        "3059",
        "3110",
        "300e",
        "0603550407",
        "1307",
        "20737061636564",
        "3123",
        "300c",
        "060355040a",
        "1305",
        "4f74686572",
        "3013",
        "060355040a",
        "130c",
        "4578616d706c652c20496e63",
        "310d",
        "300b",
        "0603550403",
        "1304",
        "75702d30",
        "3111",
        "300f",
        "0603550405",
        "0c08",
        "24504f445f554944",
    ));
    let csr = request_file(&env, &fields).await;
    let der = request_der(csr.path());
    assert!(
        der.windows(want.len()).any(|w| w == want.as_slice()),
        "the request's subject is not upstream's bytes"
    );

    // SANs as upstream requests them: DNS names as given, the URI scheme
    // lower-cased and the absolute path kept, the IPv4-mapped address as
    // IPv4; usages with their repeat.
    let csr = request_file(&env, &sans).await;
    let text = openssl_ok(&["req", "-noout", "-text", "-in", path_str(csr.path())]);
    for want in [
        "DNS:a.example",
        "DNS:trailing.example.",
        "DNS:_srv.example",
        // The empty entry is an empty dNSName, as upstream requests it.
        "DNS:10.9.9.9, DNS:,",
        "URI:/app",
        "URI:spiffe://td/ns/upstream",
        "IP Address:10.1.2.3",
    ] {
        assert!(text.contains(want), "the request lacks {want}: {text}");
    }
    let san = ext(&sans, "tls.crt", "subjectAltName");
    assert!(san.contains("DNS:trailing.example."), "{san}");
    assert!(san.contains("URI:/app"), "{san}");
    assert_eq!(
        env.only_request(&sans).await.spec.usages.unwrap(),
        ["server auth", "server auth"]
    );

    // RSA 2049: a key of exactly that size, consistent, and certified.
    assert!(key_text(&rsa_odd, "tls.key").contains("(2049 bit"));
    let check = openssl_ok(&[
        "rsa",
        "-check",
        "-noout",
        "-in",
        path_str(&rsa_odd.file("tls.key")),
    ]);
    assert!(check.contains("RSA key ok"), "{check}");
    assert!(cert_text(&rsa_odd.file("tls.crt")).contains("Public-Key: (2049 bit)"));

    // pkcs12-enable "false" with a password: published, no keystore.
    assert!(!p12_off.file("keystore.p12").exists());

    // The misspelt attribute is ignored (no SAN from it), as upstream; the
    // pod gets an Event naming it and the attribute it was meant to be,
    // and the node counts it.
    let text = cert_text(&typo.file("tls.crt"));
    assert!(!text.contains("typo.example"), "{text}");
    let notes = pod_events(&env, "upstream", "up-0", "UnknownAttribute").await;
    assert!(
        notes
            .iter()
            .any(|n| n.contains("csi.cert-manager.io/dns-name:")
                && n.contains("did you mean csi.cert-manager.io/dns-names?")),
        "{notes:?}"
    );
    let (_, scrape) = test_kit::http_get(&env.metrics_url(), "/metrics").await;
    assert_eq!(
        test_kit::sample(&scrape, "cert_csi_unknown_attributes_total", &[]),
        1.0
    );
    assert!(env.log().contains("unknown volume attribute"));
    env.finish().await;
}

/// `--strict-attributes` refuses what the default accepts with a warning,
/// naming the attribute meant, before anything is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_attributes_refuse_unknown_keys_before_anything_is_created() {
    if !test_kit::require_root("strict_attributes_refuse_unknown_keys_before_anything_is_created") {
        return;
    }
    let env = Env::start_with_args(test_kit::Options::default(), &["--strict-attributes"]).await;
    let pod = env.create_pod("strict", "strict-0", "default").await;
    let mut typo = vol(&env, &pod, "typo", &[(keys::KEY_ALGORITHM, "ECDSA")]);
    typo.set("csi.cert-manager.io/dns-name", "a.example");
    let status = test_kit::assert_status(
        env.publish(&typo).await,
        tonic::Code::InvalidArgument,
        "did you mean csi.cert-manager.io/dns-names?",
        "typo",
    );
    assert!(
        status.message().contains("csi.cert-manager.io/dns-name:"),
        "{}",
        status.message()
    );
    env.assert_no_trace(&typo).await;
    // A volume without strays publishes as usual.
    let clean = vol(&env, &pod, "clean", &[(keys::KEY_ALGORITHM, "ECDSA")]);
    env.publish_ok(&clean).await;
    assert_eq!(env.count_requests("strict").await, 1);
    env.finish().await;
}
