//! `cert-csi inspect`: a readable summary of the certificates in a Secret
//! (`secret/<namespace>/<name>`), a CertificateRequest
//! (`certificaterequest/<namespace>/<name>`, or `cr/...`), or a volume
//! directory or file on this machine.
//!
//! For each certificate: subject, issuer, serial, validity, key type, SANs,
//! usages and fingerprint; for each chain, whether each certificate is
//! signed by the next and whether the leaf verifies against the CA file; for
//! a private key, only whether it belongs to the leaf. In a volume
//! directory only links that stay inside it (the atomic writer's
//! `tls.crt -> ..data/tls.crt`) are followed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use thiserror::Error;

use crate::api::CertificateRequest;
use crate::pki::{CertInfo, PrivateKey, key_matches_certificate, parse_chain};

#[derive(Debug, Error)]
pub enum InspectError {
    #[error(
        "{target:?}: not a target; use secret/<namespace>/<name>, certificaterequest/<namespace>/<name> (or cr/...), or a path"
    )]
    BadTarget { target: String },
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: no certificate in it")]
    Empty { what: String },
}

/// What to inspect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Secret { namespace: String, name: String },
    Request { namespace: String, name: String },
    Path(PathBuf),
}

impl Target {
    pub fn parse(text: &str) -> Result<Target, InspectError> {
        let bad = || InspectError::BadTarget {
            target: text.chars().take(80).collect(),
        };
        let parts: Vec<&str> = text.split('/').collect();
        let named = |kind: &str| -> Option<(String, String)> {
            match parts.as_slice() {
                [k, ns, name] if *k == kind && !ns.is_empty() && !name.is_empty() => {
                    Some((ns.to_string(), name.to_string()))
                }
                _ => None,
            }
        };
        for kind in ["secret", "secrets"] {
            if let Some((namespace, name)) = named(kind) {
                return Ok(Target::Secret { namespace, name });
            }
        }
        for kind in ["certificaterequest", "certificaterequests", "cr"] {
            if let Some((namespace, name)) = named(kind) {
                return Ok(Target::Request { namespace, name });
            }
        }
        if text.starts_with('/') || text.starts_with('.') || Path::new(text).exists() {
            return Ok(Target::Path(PathBuf::from(text)));
        }
        Err(bad())
    }

    pub fn needs_api(&self) -> bool {
        !matches!(self, Target::Path(_))
    }
}

/// Named PEM files, as a Secret's keys or a directory's entries.
pub type Files = BTreeMap<String, Vec<u8>>;

/// Reads what `target` holds.
pub async fn fetch(client: Option<kube::Client>, target: &Target) -> Result<Files, InspectError> {
    let api_err = |what: String| move |source| InspectError::Api { what, source };
    match target {
        Target::Secret { namespace, name } => {
            let client = client.expect("needs_api targets get a client");
            let secret = Api::<Secret>::namespaced(client, namespace)
                .get(name)
                .await
                .map_err(api_err(format!("secret {namespace}/{name}")))?;
            Ok(secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect())
        }
        Target::Request { namespace, name } => {
            let client = client.expect("needs_api targets get a client");
            let request = Api::<CertificateRequest>::namespaced(client, namespace)
                .get(name)
                .await
                .map_err(api_err(format!("certificaterequest {namespace}/{name}")))?;
            let mut files = Files::new();
            if let Some(status) = request.status {
                if let Ok(Some(pem)) = status.certificate_pem() {
                    files.insert("status.certificate".into(), pem.as_bytes().to_vec());
                }
                if let Ok(Some(pem)) = status.ca_pem() {
                    files.insert("status.ca".into(), pem.as_bytes().to_vec());
                }
            }
            Ok(files)
        }
        Target::Path(path) => read_path(path),
    }
}

/// A file, or the files directly in a directory (through links only when
/// they stay inside it).
fn read_path(path: &Path) -> Result<Files, InspectError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| InspectError::Io { path, source }
    };
    let meta = std::fs::symlink_metadata(path).map_err(io(path))?;
    let mut files = Files::new();
    let read = |p: &Path| -> Result<Vec<u8>, InspectError> {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(p)
            .map_err(io(p))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).map_err(io(p))?;
        Ok(buf)
    };
    if meta.is_file() {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        files.insert(name, read(path)?);
    } else if meta.is_dir() {
        let inside = path.canonicalize().map_err(io(path))?;
        for entry in std::fs::read_dir(path).map_err(io(path))? {
            let entry = entry.map_err(io(path))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // `..data` and the generations it names: reached through the
            // per-file links below.
            if name.starts_with("..") {
                continue;
            }
            let kind = entry.file_type().map_err(io(&entry.path()))?;
            let real = if kind.is_symlink() {
                // A volume's own link (`tls.crt -> ..data/tls.crt`) stays
                // inside the directory; anything else is not read.
                match entry.path().canonicalize() {
                    Ok(real) if real.starts_with(&inside) && real.is_file() => real,
                    _ => continue,
                }
            } else if kind.is_file() {
                entry.path()
            } else {
                continue;
            };
            files.insert(name, read(&real)?);
        }
    } else {
        return Err(InspectError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other("neither a regular file nor a directory"),
        });
    }
    Ok(files)
}

/// The summary of `files` as text. `what` names the source in errors.
pub fn summarize(what: &str, files: &Files, now: SystemTime) -> Result<String, InspectError> {
    let mut out = String::new();
    let mut chains: Vec<(&str, Vec<CertInfo>)> = Vec::new();
    for (name, bytes) in files {
        if let Ok(chain) = parse_chain(bytes)
            && !chain.is_empty()
        {
            chains.push((name, chain));
        }
    }
    if chains.is_empty() {
        return Err(InspectError::Empty {
            what: what.to_owned(),
        });
    }
    // The leaf's file: tls.crt, status.certificate, or the first chain
    // whose first certificate is not a CA.
    let leaf_file = chains
        .iter()
        .find(|(n, _)| ["tls.crt", "status.certificate"].contains(n))
        .or_else(|| chains.iter().find(|(_, c)| !c[0].is_ca))
        .map(|(n, _)| *n);
    for (name, chain) in &chains {
        out.push_str(&format!("{name}: {} certificate(s)\n", chain.len()));
        for (i, cert) in chain.iter().enumerate() {
            out.push_str(&describe(i, cert, now));
        }
        for pair in chain.windows(2) {
            let verdict = if signed_by(&pair[0], &pair[1]) {
                "is signed by"
            } else {
                "is NOT signed by"
            };
            out.push_str(&format!(
                "  chain: {} {verdict} {}\n",
                pair[0].subject, pair[1].subject
            ));
        }
    }
    if let Some(leaf_file) = leaf_file {
        let leaf_chain = &chains.iter().find(|(n, _)| *n == leaf_file).unwrap().1;
        let leaf = &leaf_chain[0];
        for (name, chain) in chains.iter().filter(|(n, _)| *n != leaf_file) {
            // The issuer of the chain's last certificate must be in the CA file.
            let top = leaf_chain.last().unwrap();
            let anchored = chain
                .iter()
                .any(|ca| ca.der == top.der || signed_by(top, ca));
            out.push_str(&format!(
                "{leaf_file} {} against {name}\n",
                if anchored {
                    "verifies"
                } else {
                    "does NOT verify"
                }
            ));
        }
        for (name, bytes) in files {
            if !String::from_utf8_lossy(bytes).contains("PRIVATE KEY-----") {
                continue;
            }
            let verdict = match PrivateKey::from_pem(bytes) {
                Ok(key) if key_matches_certificate(&key, leaf) => "matches".to_owned(),
                Ok(_) => "does NOT match".to_owned(),
                Err(e) => format!("cannot be read ({e}); it is not checked against"),
            };
            out.push_str(&format!(
                "{name}: private key (not shown) {verdict} the leaf of {leaf_file}\n"
            ));
        }
    }
    Ok(out)
}

fn describe(index: usize, cert: &CertInfo, now: SystemTime) -> String {
    let mut sans: Vec<String> = Vec::new();
    sans.extend(cert.sans.dns_names.iter().map(|d| format!("DNS:{d}")));
    sans.extend(cert.sans.ip_addresses.iter().map(|i| format!("IP:{i}")));
    sans.extend(cert.sans.uris.iter().map(|u| format!("URI:{u}")));
    sans.extend(cert.sans.emails.iter().map(|e| format!("email:{e}")));
    let usages: Vec<&str> = cert
        .key_usages
        .iter()
        .chain(&cert.ext_key_usages)
        .map(|u| u.name())
        .collect();
    let state = if now > cert.not_after {
        format!("EXPIRED {}", super::relative(cert.not_after, now))
    } else if now < cert.not_before {
        format!(
            "not valid yet, starts {}",
            super::relative(cert.not_before, now)
        )
    } else {
        format!("expires {}", super::relative(cert.not_after, now))
    };
    let mut text = format!(
        "  [{index}] subject: {}\n      issuer: {}\n      serial: {}\n      valid: {} to {} ({state})\n      key: {}{}\n",
        or_dash(&cert.subject),
        or_dash(&cert.issuer),
        cert.serial_hex,
        super::rfc3339(cert.not_before),
        super::rfc3339(cert.not_after),
        cert.key_type,
        if cert.is_ca { ", CA" } else { "" },
    );
    if !sans.is_empty() {
        text.push_str(&format!("      SANs: {}\n", sans.join(", ")));
    }
    if !usages.is_empty() {
        text.push_str(&format!("      usages: {}\n", usages.join(", ")));
    }
    text.push_str(&format!("      sha256: {}\n", cert.sha256_fingerprint));
    text
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// Whether `issuer`'s key made `cert`'s signature (names and signature).
fn signed_by(cert: &CertInfo, issuer: &CertInfo) -> bool {
    let (Ok((_, c)), Ok((_, i))) = (
        x509_parser::parse_x509_certificate(&cert.der),
        x509_parser::parse_x509_certificate(&issuer.der),
    ) else {
        return false;
    };
    cert.issuer_der == issuer.subject_der && c.verify_signature(Some(i.public_key())).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_bad_ones_say_what_is_accepted() {
        assert_eq!(
            Target::parse("secret/shop/web-tls").unwrap(),
            Target::Secret {
                namespace: "shop".into(),
                name: "web-tls".into()
            }
        );
        assert_eq!(
            Target::parse("cr/shop/web-1").unwrap(),
            Target::Request {
                namespace: "shop".into(),
                name: "web-1".into()
            }
        );
        assert_eq!(
            Target::parse("/var/run/x").unwrap(),
            Target::Path("/var/run/x".into())
        );
        let err = Target::parse("secret/only-a-name").unwrap_err().to_string();
        assert!(err.contains("secret/<namespace>/<name>"), "{err}");
    }
}
