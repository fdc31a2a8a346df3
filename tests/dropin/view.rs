//! What a driver produced for one volume, as outside judges see it: the
//! CertificateRequest as the API server stored it (its CSR read by
//! `openssl asn1parse` and `openssl req`), and the files as the pod sees
//! them (`stat`, PEM block types, `openssl pkcs12 -info`, `keytool -list`).
//! Each part is a list of named fields, so two views can be compared field
//! by field and every difference reported by name.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use cert_csi::api::CertificateRequest;
use kube::ResourceExt;

/// Field name → value, in a stable order.
pub type Fields = BTreeMap<String, String>;

/// Whether the driver published the volume, and what it made.
#[derive(Debug)]
pub struct Outcome {
    /// `None` when published; else the gRPC code and the start of the message.
    pub refused: Option<String>,
    pub request: Fields,
    pub files: Fields,
}

/// The request's fields that a cert-manager user, an approver or a policy
/// can see. The name is left out on purpose: csi-lib names requests by
/// UUID and cert-csi by pod; nothing keys on it.
pub fn request_fields(cr: &CertificateRequest) -> Fields {
    let mut f = Fields::new();
    for (k, v) in cr.labels() {
        f.insert(format!("label {k}"), v.clone());
    }
    for (k, v) in cr.annotations() {
        f.insert(format!("annotation {k}"), v.clone());
    }
    f.insert(
        "ownerReferences".into(),
        serde_json::to_string(&cr.metadata.owner_references).unwrap(),
    );
    f.insert(
        "spec.duration".into(),
        format!("{:?}", cr.spec.duration.as_ref().map(|d| d.to_string())),
    );
    f.insert("spec.isCA".into(), format!("{:?}", cr.spec.is_ca));
    f.insert("spec.usages".into(), format!("{:?}", cr.spec.usages));
    f.insert(
        "spec.issuerRef".into(),
        serde_json::to_string(&cr.spec.issuer_ref).unwrap(),
    );
    f.insert("spec.username".into(), format!("{:?}", cr.spec.username));
    f.insert("spec.groups".into(), format!("{:?}", cr.spec.groups));
    let dir = tempfile::tempdir().unwrap();
    let csr = dir.path().join("csr.pem");
    std::fs::write(&csr, &cr.spec.request.0).unwrap();
    let csr = csr.to_str().unwrap();
    // The CSR's whole structure with each element's depth, type and value,
    // but without offsets and lengths (a signature's length varies): the
    // subject's string types, every attribute and extension (extension
    // values are dumped in hex), and the algorithms.
    let parsed = test_kit::openssl_ok(&["asn1parse", "-in", csr]);
    f.insert("csr.asn1".into(), normalise_asn1(&parsed));
    f.insert(
        "csr.subject".into(),
        test_kit::openssl_ok(&[
            "req", "-in", csr, "-noout", "-subject", "-nameopt", "RFC2253",
        ])
        .trim()
        .to_string(),
    );
    let text = test_kit::openssl_ok(&["req", "-in", csr, "-noout", "-text"]);
    let key: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| {
            l.starts_with("Public Key Algorithm:")
                || l.starts_with("Public-Key:")
                || l.starts_with("ASN1 OID:")
                || l.starts_with("NIST CURVE:")
                || l.starts_with("Signature Algorithm:")
        })
        .collect();
    f.insert("csr.key".into(), key.join("; "));
    // Readable forms of what asn1parse shows in hex.
    let mut section = None;
    let mut extensions = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("Requested Extensions:") {
            section = Some(line.len() - trimmed.len());
            continue;
        }
        if let Some(indent) = section {
            if line.len() - trimmed.len() <= indent || trimmed.starts_with("Signature Algorithm") {
                break;
            }
            extensions.push(trimmed.to_string());
        }
    }
    f.insert("csr.extensions".into(), extensions.join(" | "));
    f
}

/// `openssl asn1parse` lines as `d=DEPTH KIND: TYPE :VALUE`, offsets and
/// lengths dropped (`0:d=0  hl=4 l= 650 cons: SEQUENCE` → `d=0 cons:
/// SEQUENCE`).
fn normalise_asn1(text: &str) -> String {
    text.lines()
        .filter_map(|line| {
            let (_, rest) = line.split_once(':')?;
            let mut kept = Vec::new();
            let mut after_bare_l = false;
            for word in rest.split_whitespace() {
                let skip = word.starts_with("hl=")
                    || word.starts_with("l=")
                    || (after_bare_l && word.bytes().all(|b| b.is_ascii_digit()));
                after_bare_l = word == "l=";
                if !skip {
                    kept.push(word);
                }
            }
            Some(kept.join(" "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The files a pod sees under `target`: for each, its mode, owner and
/// group, and what outside tools make of its content. `p12_password` opens
/// a PKCS#12 keystore.
pub fn file_fields(target: &Path, p12_password: Option<&str>) -> Fields {
    let mut f = Fields::new();
    let mut names: Vec<String> = std::fs::read_dir(target)
        .unwrap_or_else(|e| panic!("listing {}: {e}", target.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        // The atomic writer's internals (`..data`, `..2026_…`) are not
        // names a pod reads.
        .filter(|n| !n.starts_with(".."))
        .collect();
    names.sort();
    f.insert("files".into(), names.join(","));
    let dir = std::fs::metadata(target).unwrap();
    f.insert(
        "(directory) mode".into(),
        format!("{:o}", dir.mode() & 0o7777),
    );
    f.insert("(directory) group".into(), dir.gid().to_string());
    for name in names {
        let path = target.join(&name);
        let meta = std::fs::metadata(&path).unwrap();
        f.insert(
            format!("{name} mode"),
            format!("{:o}", meta.mode() & 0o7777),
        );
        f.insert(format!("{name} owner"), meta.uid().to_string());
        f.insert(format!("{name} group"), meta.gid().to_string());
        let bytes = std::fs::read(&path).unwrap();
        let pem_types: Vec<String> = String::from_utf8_lossy(&bytes)
            .lines()
            .filter_map(|l| l.strip_prefix("-----BEGIN "))
            .filter_map(|l| l.strip_suffix("-----"))
            .map(str::to_string)
            .collect();
        if !pem_types.is_empty() {
            f.insert(format!("{name} pem"), pem_types.join(","));
            continue;
        }
        let Some(password) = p12_password else {
            f.insert(
                format!("{name} content"),
                format!("{} bytes, not PEM", bytes.len()),
            );
            continue;
        };
        let path = path.to_str().unwrap();
        let pass = format!("pass:{password}");
        let info = test_kit::openssl(&[
            "pkcs12", "-info", "-noout", "-legacy", "-in", path, "-passin", &pass,
        ]);
        let info_text = format!(
            "{}{}",
            String::from_utf8_lossy(&info.stdout),
            String::from_utf8_lossy(&info.stderr)
        );
        f.insert(
            format!("{name} pkcs12"),
            info_text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" | "),
        );
        let list = std::process::Command::new("keytool")
            .args([
                "-list",
                "-storetype",
                "PKCS12",
                "-keystore",
                path,
                "-storepass",
                password,
            ])
            .output()
            .expect("keytool runs (hack/test installs a JRE)");
        let entries: Vec<String> = String::from_utf8_lossy(&list.stdout)
            .lines()
            .filter(|l| l.contains("Entry,") || l.starts_with("Your keystore contains"))
            .map(|l| {
                // `alias, Dec 7, 2026, PrivateKeyEntry,`: keep alias and type.
                let parts: Vec<&str> = l.split(", ").collect();
                match (parts.first(), parts.last()) {
                    (Some(alias), Some(kind)) if parts.len() > 2 => {
                        format!("{alias} {}", kind.trim_end_matches(','))
                    }
                    _ => l.to_string(),
                }
            })
            .collect();
        f.insert(format!("{name} keytool"), entries.join(" | "));
    }
    f
}

/// The differences between two field maps, one line each.
pub fn differences(upstream: &Fields, ours: &Fields) -> Vec<(String, String, String)> {
    let mut keys: Vec<&String> = upstream.keys().chain(ours.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|k| {
            let u = upstream
                .get(k)
                .cloned()
                .unwrap_or_else(|| "<absent>".into());
            let o = ours.get(k).cloned().unwrap_or_else(|| "<absent>".into());
            (u != o).then(|| (k.clone(), u, o))
        })
        .collect()
}
