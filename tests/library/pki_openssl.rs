//! Independent checks of cert-csi's PKI output with the `openssl` CLI and
//! Java's `keytool`: what they accept here, real clients accept.
//!
//! When a tool is missing the test fails under CI=true and is skipped
//! (with a message) otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cert_csi::pki::csr::{CsrOptions, build_csr};
use cert_csi::pki::keystore;
use cert_csi::pki::sign::{SignParams, sign_self_signed, sign_with_ca};
use cert_csi::pki::{Curve, KeyAlgorithm, KeyEncoding, PrivateKey, SanSpec, SubjectSpec, Usage};

fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{name} is required in CI but not on PATH"
        );
        eprintln!("skipping: {name} not found on PATH");
    }
    found
}

/// Runs a command, asserting success, and returns stdout.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("tool runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn subject(cn: &str) -> SubjectSpec {
    SubjectSpec {
        common_name: Some(cn.into()),
        organizations: vec!["Example".into(), "Second Org".into()],
        ..Default::default()
    }
}

fn sans(name: &str) -> SanSpec {
    SanSpec {
        dns_names: vec![format!("{name}.ns.svc")],
        ip_addresses: vec!["10.1.2.3".parse().unwrap()],
        uris: vec![format!("spiffe://cluster.local/ns/ns/sa/{name}")],
        emails: vec![],
    }
}

fn ca_params() -> SignParams {
    SignParams {
        is_ca: true,
        duration: Some(Duration::from_secs(3600 * 24 * 365)),
        ..Default::default()
    }
}

#[test]
fn openssl_verifies_csr_signatures_for_every_key_type() {
    let Some(openssl) = tool("openssl") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for alg in [
        KeyAlgorithm::Rsa { bits: 2048 },
        KeyAlgorithm::Ecdsa(Curve::P256),
        KeyAlgorithm::Ecdsa(Curve::P384),
        KeyAlgorithm::Ecdsa(Curve::P521),
        KeyAlgorithm::Ed25519,
    ] {
        let key = PrivateKey::generate(alg).unwrap();
        let usages = [Usage::ServerAuth, Usage::ClientAuth];
        let opts = CsrOptions {
            encode_usages: Some((&usages, false)),
            critical_san_when_subject_empty: false,
            ..Default::default()
        };
        let csr = build_csr(&key, &subject("app"), &sans("app"), &opts).unwrap();
        let f = write(dir.path(), "req.pem", csr.pem.as_bytes());
        let out = Command::new(&openssl)
            .args(["req", "-noout", "-verify", "-text", "-in"])
            .arg(&f)
            .output()
            .unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{alg:?}: {all}");
        assert!(
            all.contains("verify OK")
                || all.contains("Certificate request self-signature verify OK"),
            "{alg:?}: {all}"
        );
        assert!(all.contains("DNS:app.ns.svc"), "{all}");
        assert!(all.contains("IP Address:10.1.2.3"), "{all}");
        assert!(
            all.contains("URI:spiffe://cluster.local/ns/ns/sa/app"),
            "{all}"
        );
        assert!(
            all.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
            "{all}"
        );
        assert!(
            all.contains("O = Example + O = Second Org") || all.contains("O=Example+O=Second Org"),
            "{all}"
        );
    }
}

#[test]
fn openssl_verifies_a_root_intermediate_leaf_chain_and_its_usages() {
    let Some(openssl) = tool("openssl") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root_key = PrivateKey::generate(KeyAlgorithm::Rsa { bits: 2048 }).unwrap();
    let root_csr = build_csr(
        &root_key,
        &subject("root"),
        &SanSpec::default(),
        &CsrOptions::default(),
    )
    .unwrap();
    let root = sign_self_signed(root_csr.pem.as_bytes(), &root_key, &ca_params()).unwrap();

    let int_key = PrivateKey::generate(KeyAlgorithm::Ecdsa(Curve::P384)).unwrap();
    let int_csr = build_csr(
        &int_key,
        &subject("intermediate"),
        &SanSpec::default(),
        &CsrOptions::default(),
    )
    .unwrap();
    let int = sign_with_ca(
        int_csr.pem.as_bytes(),
        root.certificate_pem.as_bytes(),
        &root_key,
        &ca_params(),
    )
    .unwrap();

    let leaf_key = PrivateKey::generate(KeyAlgorithm::Ecdsa(Curve::P256)).unwrap();
    let leaf_csr = build_csr(
        &leaf_key,
        &subject("leaf"),
        &sans("leaf"),
        &CsrOptions::default(),
    )
    .unwrap();
    let ca_crt = format!("{}{}", int.certificate_pem, root.certificate_pem);
    let params = SignParams {
        usages: vec![Usage::DigitalSignature, Usage::ServerAuth],
        duration: Some(Duration::from_secs(7200)),
        ..Default::default()
    };
    let leaf = sign_with_ca(
        leaf_csr.pem.as_bytes(),
        ca_crt.as_bytes(),
        &int_key,
        &params,
    )
    .unwrap();

    let root_f = write(dir.path(), "ca.crt", leaf.ca_pem.as_bytes());
    let chain_f = write(dir.path(), "tls.crt", leaf.certificate_pem.as_bytes());
    // tls.crt = leaf + intermediate; openssl needs the intermediate as untrusted.
    let out = run(Command::new(&openssl)
        .args(["verify", "-purpose", "sslserver", "-CAfile"])
        .arg(&root_f)
        .arg("-untrusted")
        .arg(&chain_f)
        .arg(&chain_f));
    assert!(out.contains(": OK"), "{out}");

    let text = run(Command::new(&openssl)
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&chain_f));
    assert!(text.contains("Digital Signature"), "{text}");
    assert!(
        !text.contains("Key Encipherment"),
        "usages come from the spec: {text}"
    );
    assert!(text.contains("TLS Web Server Authentication"), "{text}");
    assert!(text.contains("CA:FALSE"), "{text}");
    assert!(text.contains("DNS:leaf.ns.svc"), "{text}");
    assert!(
        text.contains("ecdsa-with-SHA384"),
        "signed by the P-384 intermediate: {text}"
    );

    // The root verifies itself and is a CA with cert sign.
    let root_text = run(Command::new(&openssl)
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&root_f));
    assert!(
        root_text.contains("CA:TRUE") && root_text.contains("Certificate Sign"),
        "{root_text}"
    );
    assert!(root_text.contains("sha256WithRSAEncryption"), "{root_text}");

    // A chain checked against the wrong root fails: the check can fail.
    let other_key = PrivateKey::generate(KeyAlgorithm::Ecdsa(Curve::P256)).unwrap();
    let other_csr = build_csr(
        &other_key,
        &subject("root"),
        &SanSpec::default(),
        &CsrOptions::default(),
    )
    .unwrap();
    let other = sign_self_signed(other_csr.pem.as_bytes(), &other_key, &ca_params()).unwrap();
    let other_f = write(dir.path(), "other.crt", other.certificate_pem.as_bytes());
    let status = Command::new(&openssl)
        .args(["verify", "-CAfile"])
        .arg(&other_f)
        .arg("-untrusted")
        .arg(&chain_f)
        .arg(&chain_f)
        .output()
        .unwrap();
    assert!(!status.status.success());
}

#[test]
fn openssl_reads_keys_in_each_encoding_and_they_match_the_certificate() {
    let Some(openssl) = tool("openssl") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for (alg, enc) in [
        (KeyAlgorithm::Rsa { bits: 2048 }, KeyEncoding::Pkcs1),
        (KeyAlgorithm::Rsa { bits: 2048 }, KeyEncoding::Pkcs8),
        (KeyAlgorithm::Ecdsa(Curve::P521), KeyEncoding::Pkcs8),
        (KeyAlgorithm::Ed25519, KeyEncoding::Pkcs8),
    ] {
        let key = PrivateKey::generate(alg).unwrap();
        let csr = build_csr(&key, &subject("k"), &sans("k"), &CsrOptions::default()).unwrap();
        let cert = sign_self_signed(csr.pem.as_bytes(), &key, &SignParams::default()).unwrap();
        let key_f = write(dir.path(), "tls.key", key.to_pem(enc).unwrap().expose());
        let crt_f = write(dir.path(), "tls.crt", cert.certificate_pem.as_bytes());
        let from_key = run(Command::new(&openssl)
            .args(["pkey", "-pubout", "-in"])
            .arg(&key_f));
        let from_crt = run(Command::new(&openssl)
            .args(["x509", "-noout", "-pubkey", "-in"])
            .arg(&crt_f));
        assert_eq!(from_key, from_crt, "{alg:?} {enc:?}");
        // And an openssl-written key loads back with the same public key.
        let reencoded = run(Command::new(&openssl).args(["pkey", "-in"]).arg(&key_f));
        let back = PrivateKey::from_pem(reencoded.as_bytes()).unwrap();
        assert_eq!(back.public_key_der(), key.public_key_der());
    }
    // SEC1 EC keys written by openssl itself.
    let sec1 = run(Command::new(&openssl).args(["ecparam", "-name", "prime256v1", "-genkey"]));
    assert!(sec1.contains("EC PRIVATE KEY"));
    let key = PrivateKey::from_pem(sec1.as_bytes()).unwrap();
    assert_eq!(key.algorithm(), KeyAlgorithm::Ecdsa(Curve::P256));
}

#[test]
fn openssl_opens_the_pkcs12_keystore_without_legacy() {
    let Some(openssl) = tool("openssl") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ca_key = PrivateKey::generate(KeyAlgorithm::Ecdsa(Curve::P256)).unwrap();
    let ca_csr = build_csr(
        &ca_key,
        &subject("ca"),
        &SanSpec::default(),
        &CsrOptions::default(),
    )
    .unwrap();
    let ca = sign_self_signed(ca_csr.pem.as_bytes(), &ca_key, &ca_params()).unwrap();
    let key = PrivateKey::generate(KeyAlgorithm::Rsa { bits: 2048 }).unwrap();
    let csr = build_csr(&key, &subject("p12"), &sans("p12"), &CsrOptions::default()).unwrap();
    let leaf = sign_with_ca(
        csr.pem.as_bytes(),
        ca.certificate_pem.as_bytes(),
        &ca_key,
        &SignParams::default(),
    )
    .unwrap();

    let p12 = keystore::pkcs12(
        &key,
        leaf.certificate_pem.as_bytes(),
        Some(leaf.ca_pem.as_bytes()),
        "s3cret",
    )
    .unwrap();
    let f = write(dir.path(), "keystore.p12", &p12);
    let out = run(Command::new(&openssl)
        .args(["pkcs12", "-nodes", "-passin", "pass:s3cret", "-in"])
        .arg(&f));
    assert!(out.contains("-----BEGIN PRIVATE KEY-----"), "{out}");
    assert_eq!(
        out.matches("-----BEGIN CERTIFICATE-----").count(),
        2,
        "leaf and CA: {out}"
    );
    let back = PrivateKey::from_pem(out.as_bytes()).unwrap();
    assert_eq!(back.public_key_der(), key.public_key_der());
    let wrong = Command::new(&openssl)
        .args(["pkcs12", "-nodes", "-passin", "pass:wrong", "-in"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(!wrong.status.success());

    let trust = keystore::pkcs12_truststore(leaf.ca_pem.as_bytes(), "s3cret").unwrap();
    let tf = write(dir.path(), "truststore.p12", &trust);
    let out = run(Command::new(&openssl)
        .args(["pkcs12", "-nodes", "-passin", "pass:s3cret", "-in"])
        .arg(&tf));
    assert_eq!(
        out.matches("-----BEGIN CERTIFICATE-----").count(),
        1,
        "{out}"
    );
    assert!(!out.contains("PRIVATE KEY"));
}

#[test]
fn keytool_lists_the_jks_stores() {
    let Some(keytool) = tool("keytool") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ca_key = PrivateKey::generate(KeyAlgorithm::Ecdsa(Curve::P256)).unwrap();
    let ca_csr = build_csr(
        &ca_key,
        &subject("ca"),
        &SanSpec::default(),
        &CsrOptions::default(),
    )
    .unwrap();
    let ca = sign_self_signed(ca_csr.pem.as_bytes(), &ca_key, &ca_params()).unwrap();
    let key = PrivateKey::generate(KeyAlgorithm::Ecdsa(Curve::P256)).unwrap();
    let csr = build_csr(&key, &subject("jks"), &sans("jks"), &CsrOptions::default()).unwrap();
    let leaf = sign_with_ca(
        csr.pem.as_bytes(),
        ca.certificate_pem.as_bytes(),
        &ca_key,
        &SignParams::default(),
    )
    .unwrap();

    let jks = keystore::jks_keystore(
        &key,
        leaf.certificate_pem.as_bytes(),
        Some(leaf.ca_pem.as_bytes()),
        "changeit",
    )
    .unwrap();
    let f = write(dir.path(), "keystore.jks", &jks);
    let out = run(Command::new(&keytool)
        .args([
            "-list",
            "-storetype",
            "JKS",
            "-storepass",
            "changeit",
            "-keystore",
        ])
        .arg(&f));
    assert!(
        out.contains("certificate,") && out.contains("PrivateKeyEntry"),
        "{out}"
    );
    assert!(
        out.contains("ca,") && out.contains("trustedCertEntry"),
        "{out}"
    );
    assert!(out.contains("2 entries"), "{out}");
    // The key entry decrypts with the store password (keytool exports its chain).
    let out = run(Command::new(&keytool)
        .args([
            "-list",
            "-v",
            "-alias",
            "certificate",
            "-storetype",
            "JKS",
            "-storepass",
            "changeit",
            "-keystore",
        ])
        .arg(&f));
    assert!(out.contains("Certificate chain length: 2"), "{out}");

    let trust = keystore::jks_truststore(leaf.ca_pem.as_bytes(), "changeit").unwrap();
    let tf = write(dir.path(), "truststore.jks", &trust);
    let out = run(Command::new(&keytool)
        .args([
            "-list",
            "-storetype",
            "JKS",
            "-storepass",
            "changeit",
            "-keystore",
        ])
        .arg(&tf));
    assert!(
        out.contains("1 entry") && out.contains("trustedCertEntry"),
        "{out}"
    );
    let bad = Command::new(&keytool)
        .args([
            "-list",
            "-storetype",
            "JKS",
            "-storepass",
            "wrongpass",
            "-keystore",
        ])
        .arg(&tf)
        .output()
        .unwrap();
    assert!(!bad.status.success());
}
