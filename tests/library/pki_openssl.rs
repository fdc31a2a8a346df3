//! Independent checks of cert-csi's PKI output with the `openssl` CLI and
//! Java's `keytool`: what they accept here, real clients accept.
//!
//! When a tool is missing the test fails under CI=true and is skipped
//! (with a message) otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cert_csi::pki::csr::{CsrOptions, build_csr};
use cert_csi::pki::keystore::{self, Pkcs12Profile};
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

/// A CA and a leaf it signed, for the keystore tests.
struct Issued {
    key: PrivateKey,
    leaf_pem: String,
    ca_pem: String,
}

fn issue(cn: &str, algorithm: KeyAlgorithm) -> Issued {
    let ca_key = PrivateKey::generate(KeyAlgorithm::Ecdsa(Curve::P256)).unwrap();
    let ca_csr = build_csr(
        &ca_key,
        &subject("ca"),
        &SanSpec::default(),
        &CsrOptions::default(),
    )
    .unwrap();
    let ca = sign_self_signed(ca_csr.pem.as_bytes(), &ca_key, &ca_params()).unwrap();
    let key = PrivateKey::generate(algorithm).unwrap();
    let csr = build_csr(&key, &subject(cn), &sans(cn), &CsrOptions::default()).unwrap();
    let leaf = sign_with_ca(
        csr.pem.as_bytes(),
        ca.certificate_pem.as_bytes(),
        &ca_key,
        &SignParams::default(),
    )
    .unwrap();
    Issued {
        key,
        leaf_pem: leaf.certificate_pem,
        ca_pem: leaf.ca_pem,
    }
}

/// The algorithm lines of `openssl pkcs12 -info -noout -legacy`, which is
/// how OpenSSL describes a file's MAC and encryption.
fn p12_info(openssl: &Path, file: &Path, password: &str, verify_mac: bool) -> Vec<String> {
    let mut cmd = Command::new(openssl);
    cmd.args(["pkcs12", "-info", "-noout", "-legacy", "-passin"])
        .arg(format!("pass:{password}"))
        .arg("-in")
        .arg(file);
    if !verify_mac {
        cmd.arg("-nomacver");
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "openssl pkcs12 -info {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    // OpenSSL 3 prints the info lines on stderr.
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .chain(String::from_utf8_lossy(&out.stdout).lines())
        .map(str::to_owned)
        .filter(|l| !l.trim().is_empty())
        .collect()
}

/// What go-pkcs12 (cert-manager v1.21, csi-driver v0.15) writes for each
/// profile, as `openssl pkcs12 -info -noout -legacy` shows a keystore with
/// two certificates.
fn expected_keystore_info(profile: Pkcs12Profile) -> Vec<&'static str> {
    const PBES2: &str = "PBES2, PBKDF2, AES-256-CBC, Iteration 2048, PRF hmacWithSHA256";
    let (mac, salt, certs, key) = match profile {
        Pkcs12Profile::LegacyRc2 => (
            "MAC: sha1, Iteration 1",
            "MAC length: 20, salt length: 8",
            "pbeWithSHA1And40BitRC2-CBC, Iteration 2048",
            "pbeWithSHA1And3-KeyTripleDES-CBC, Iteration 2048",
        ),
        Pkcs12Profile::LegacyDes => (
            "MAC: sha1, Iteration 1",
            "MAC length: 20, salt length: 8",
            "pbeWithSHA1And3-KeyTripleDES-CBC, Iteration 2048",
            "pbeWithSHA1And3-KeyTripleDES-CBC, Iteration 2048",
        ),
        Pkcs12Profile::Modern2023 => (
            "MAC: sha256, Iteration 2048",
            "MAC length: 32, salt length: 16",
            PBES2,
            PBES2,
        ),
        Pkcs12Profile::Modern2026 => (
            "MAC: PBMAC1, Iteration 0",
            "MAC length: 32, salt length: 0",
            PBES2,
            PBES2,
        ),
    };
    let certs = Box::leak(format!("PKCS7 Encrypted data: {certs}").into_boxed_str());
    let key = Box::leak(format!("Shrouded Keybag: {key}").into_boxed_str());
    vec![
        mac,
        salt,
        certs,
        "Certificate bag",
        "Certificate bag",
        "PKCS7 Data",
        key,
    ]
}

/// Verifies a PBMAC1 MAC (RFC 9579) with OpenSSL's own PBKDF2 and HMAC, for
/// OpenSSL 3.0 cannot verify PBMAC1 itself: the salt and count come from
/// `asn1parse`, the key from `openssl kdf`, the MAC from `openssl mac`.
fn verify_pbmac1(openssl: &Path, dir: &Path, file: &Path, password: &str) {
    let parsed = run(Command::new(openssl)
        .args(["asn1parse", "-inform", "DER", "-in"])
        .arg(file));
    let lines: Vec<&str> = parsed.lines().collect();
    let pbmac1 = lines
        .iter()
        .position(|l| l.contains(":PBMAC1"))
        .unwrap_or_else(|| panic!("no PBMAC1 in {parsed}"));
    let hex_of = |l: &str| l.rsplit(':').next().unwrap().trim().to_owned();
    // After the OID: the PBKDF2 salt (an OCTET STRING), its iteration count
    // and key length (INTEGERs), then the MAC itself (an OCTET STRING).
    let after = &lines[pbmac1..];
    let octets: Vec<String> = after
        .iter()
        .filter(|l| l.contains("OCTET STRING"))
        .map(|l| hex_of(l))
        .collect();
    let ints: Vec<u32> = after
        .iter()
        .filter(|l| l.contains("INTEGER"))
        .map(|l| u32::from_str_radix(&hex_of(l), 16).unwrap())
        .collect();
    assert_eq!(&ints[..2], &[2048, 32], "{parsed}");
    let (salt, digest) = (octets[0].clone(), octets[1].clone());
    // The authenticated safe: the OCTET STRING inside the outer data ContentInfo.
    let auth_offset = lines
        .iter()
        .find(|l| l.contains("OCTET STRING"))
        .and_then(|l| l.split(':').next())
        .unwrap()
        .trim()
        .to_owned();
    let auth = dir.join("authsafe.der");
    run(Command::new(openssl)
        .args([
            "asn1parse",
            "-inform",
            "DER",
            "-noout",
            "-strparse",
            &auth_offset,
        ])
        .arg("-in")
        .arg(file)
        .arg("-out")
        .arg(&auth));
    let key = run(Command::new(openssl).args([
        "kdf",
        "-keylen",
        "32",
        "-kdfopt",
        "digest:SHA256",
        "-kdfopt",
        &format!("pass:{password}"),
        "-kdfopt",
        &format!("hexsalt:{salt}"),
        "-kdfopt",
        "iter:2048",
        "PBKDF2",
    ]))
    .trim()
    .replace(':', "");
    let mac = run(Command::new(openssl)
        .args([
            "mac",
            "-digest",
            "SHA256",
            "-macopt",
            &format!("hexkey:{key}"),
            "-in",
        ])
        .arg(&auth)
        .arg("HMAC"))
    .trim()
    .to_owned();
    assert_eq!(mac, digest, "the PBMAC1 MAC does not verify");
}

#[test]
fn openssl_reads_each_pkcs12_profile_as_go_pkcs12_writes_it() {
    let Some(openssl) = tool("openssl") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let issued = issue("p12", KeyAlgorithm::Rsa { bits: 2048 });
    for (profile, name) in Pkcs12Profile::ALL {
        let p12 = keystore::pkcs12(
            &issued.key,
            issued.leaf_pem.as_bytes(),
            Some(issued.ca_pem.as_bytes()),
            "s3cret",
            profile,
        )
        .unwrap();
        let f = write(dir.path(), &format!("{name}.p12"), &p12);
        // OpenSSL 3.0 cannot check PBMAC1; that MAC is checked below.
        let pbmac1 = profile == Pkcs12Profile::Modern2026;
        assert_eq!(
            p12_info(&openssl, &f, "s3cret", !pbmac1),
            expected_keystore_info(profile),
            "{name}"
        );
        if pbmac1 {
            verify_pbmac1(&openssl, dir.path(), &f, "s3cret");
        }
        let mut open = Command::new(&openssl);
        open.args([
            "pkcs12",
            "-nodes",
            "-legacy",
            "-passin",
            "pass:s3cret",
            "-in",
        ])
        .arg(&f);
        if pbmac1 {
            open.arg("-nomacver");
        }
        let out = run(&mut open);
        assert!(out.contains("-----BEGIN PRIVATE KEY-----"), "{out}");
        assert_eq!(
            out.matches("-----BEGIN CERTIFICATE-----").count(),
            2,
            "leaf and CA: {out}"
        );
        // No friendlyName: only the leaf and key carry a localKeyID, and the
        // CA's bag has an empty attribute set, as go-pkcs12 writes them.
        assert!(!out.contains("friendlyName"), "{out}");
        assert_eq!(out.matches("localKeyID").count(), 2, "{out}");
        assert!(out.contains("Bag Attributes: <Empty Attributes>"), "{out}");
        let back = PrivateKey::from_pem(out.as_bytes()).unwrap();
        assert_eq!(back.public_key_der(), issued.key.public_key_der());
        if !pbmac1 {
            let wrong = Command::new(&openssl)
                .args([
                    "pkcs12",
                    "-nodes",
                    "-legacy",
                    "-passin",
                    "pass:wrong",
                    "-in",
                ])
                .arg(&f)
                .output()
                .unwrap();
            assert!(
                !wrong.status.success(),
                "{name} opened with a wrong password"
            );
        }

        let trust =
            keystore::pkcs12_truststore(issued.ca_pem.as_bytes(), "s3cret", profile).unwrap();
        let tf = write(dir.path(), &format!("{name}-trust.p12"), &trust);
        let mut open = Command::new(&openssl);
        open.args([
            "pkcs12",
            "-nodes",
            "-legacy",
            "-passin",
            "pass:s3cret",
            "-in",
        ])
        .arg(&tf);
        if pbmac1 {
            open.arg("-nomacver");
            verify_pbmac1(&openssl, dir.path(), &tf, "s3cret");
        }
        let out = run(&mut open);
        assert_eq!(
            out.matches("-----BEGIN CERTIFICATE-----").count(),
            1,
            "{out}"
        );
        assert!(!out.contains("PRIVATE KEY"));
        // Java's trust marker and Go's rendering of the subject as the name.
        assert!(out.contains("2.16.840.1.113894.746875.1.1"), "{out}");
        assert!(
            out.contains("friendlyName: CN=ca,O=Example+O=Second Org"),
            "{out}"
        );
    }
}

#[test]
fn keytool_reads_the_pkcs12_stores_as_upstream_entries() {
    let Some(keytool) = tool("keytool") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let issued = issue("p12", KeyAlgorithm::Ecdsa(Curve::P384));
    // Java 17 reads every profile but Modern2026 (PBMAC1 needs Java 26).
    for profile in [
        Pkcs12Profile::LegacyRc2,
        Pkcs12Profile::LegacyDes,
        Pkcs12Profile::Modern2023,
    ] {
        let p12 = keystore::pkcs12(
            &issued.key,
            issued.leaf_pem.as_bytes(),
            Some(issued.ca_pem.as_bytes()),
            "s3cret",
            profile,
        )
        .unwrap();
        let f = write(dir.path(), "keystore.p12", &p12);
        let out = run(Command::new(&keytool)
            .args([
                "-list",
                "-v",
                "-storetype",
                "PKCS12",
                "-storepass",
                "s3cret",
                "-keystore",
            ])
            .arg(&f));
        // Without a friendlyName Java numbers the entry, as for upstream's.
        assert!(out.contains("Alias name: 1\n"), "{profile:?}: {out}");
        assert!(out.contains("Entry type: PrivateKeyEntry"), "{out}");
        assert!(out.contains("Certificate chain length: 2"), "{out}");
        let trust =
            keystore::pkcs12_truststore(issued.ca_pem.as_bytes(), "s3cret", profile).unwrap();
        let tf = write(dir.path(), "truststore.p12", &trust);
        let out = run(Command::new(&keytool)
            .args([
                "-list",
                "-v",
                "-storetype",
                "PKCS12",
                "-storepass",
                "s3cret",
                "-keystore",
            ])
            .arg(&tf));
        assert!(
            out.contains("Alias name: cn=ca,o=example+o=second org\n"),
            "{out}"
        );
        assert!(out.contains("Entry type: trustedCertEntry"), "{out}");
    }
}

#[test]
fn key_der_and_combined_pem_follow_tls_key() {
    let Some(openssl) = tool("openssl") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for (algorithm, encoding, label) in [
        (
            KeyAlgorithm::Rsa { bits: 2048 },
            KeyEncoding::Pkcs1,
            "RSA PRIVATE KEY",
        ),
        (
            KeyAlgorithm::Ecdsa(Curve::P256),
            KeyEncoding::Sec1,
            "EC PRIVATE KEY",
        ),
        (KeyAlgorithm::Ed25519, KeyEncoding::Pkcs8, "PRIVATE KEY"),
    ] {
        let issued = issue("der", algorithm);
        let der = keystore::key_der(&issued.key, encoding).unwrap();
        let f = write(dir.path(), "key.der", der.expose());
        // openssl converts the DER to the same PEM block as tls.key.
        let kind = match encoding {
            KeyEncoding::Pkcs1 => "RSA",
            KeyEncoding::Sec1 => "EC",
            KeyEncoding::Pkcs8 => "PKEY",
        };
        let args: Vec<&str> = match encoding {
            KeyEncoding::Pkcs1 => vec!["rsa", "-inform", "DER", "-traditional", "-in"],
            KeyEncoding::Sec1 => vec!["ec", "-inform", "DER", "-in"],
            KeyEncoding::Pkcs8 => vec!["pkey", "-inform", "DER", "-in"],
        };
        let pem_out = run(Command::new(&openssl).args(&args).arg(&f));
        assert!(
            pem_out.contains(&format!("BEGIN {label}")),
            "{kind}: {pem_out}"
        );
        assert_eq!(
            pem_out,
            String::from_utf8(issued.key.to_pem(encoding).unwrap().expose().to_vec()).unwrap()
        );
        let combined =
            keystore::combined_pem(&issued.key, encoding, issued.leaf_pem.as_bytes()).unwrap();
        let text = String::from_utf8(combined.expose().to_vec()).unwrap();
        assert!(
            text.contains(&format!(
                "-----END {label}-----\n\n-----BEGIN CERTIFICATE-----"
            )),
            "{text}"
        );
    }
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
        "certificate",
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
    // The chain is tls.crt's alone; the CA is the separate "ca" entry.
    assert!(out.contains("Certificate chain length: 1"), "{out}");

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
