//! Where the trust bundle comes from: a file, a ConfigMap key or a Secret
//! key, as the `--trust-bundle-*` flags name it, and what counts as a
//! bundle.

use std::path::{Path, PathBuf};

use thiserror::Error;

/// One key of a namespaced object: `<namespace>/<name>:<key>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
    pub key: String,
}

/// Where the trust bundle comes from (one of the `--trust-bundle-*` flags).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrustSource {
    File(PathBuf),
    ConfigMap(ObjectKey),
    Secret(ObjectKey),
}

impl std::fmt::Display for TrustSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrustSource::File(path) => write!(f, "file {}", path.display()),
            TrustSource::ConfigMap(k) => {
                write!(f, "ConfigMap {}/{} key {}", k.namespace, k.name, k.key)
            }
            TrustSource::Secret(k) => write!(f, "Secret {}/{} key {}", k.namespace, k.name, k.key),
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TrustError {
    #[error(
        "{flag}: {value:?} {reason}; write <namespace>/<name>:<key>, e.g. cert-manager/trust:ca.crt"
    )]
    ObjectKey {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error(
        "--trust-bundle-file, --trust-bundle-configmap and --trust-bundle-secret are alternatives; give at most one (got {given})"
    )]
    TooMany { given: String },
    #[error("the trust bundle {problem}; it must hold only PEM CERTIFICATE blocks")]
    Content { problem: String },
}

impl ObjectKey {
    pub fn parse(flag: &'static str, value: &str) -> Result<ObjectKey, TrustError> {
        let bad = |reason: &str| TrustError::ObjectKey {
            flag,
            value: value.to_string(),
            reason: reason.to_string(),
        };
        let (object, key) = value
            .split_once(':')
            .ok_or_else(|| bad("has no ':<key>'"))?;
        let (namespace, name) = object
            .split_once('/')
            .ok_or_else(|| bad("has no '<namespace>/'"))?;
        let dns = |s: &str| {
            !s.is_empty()
                && s.len() <= 253
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        };
        if !dns(namespace) || namespace.contains('.') || namespace.len() > 63 {
            return Err(bad("has a namespace that is not a DNS label"));
        }
        if !dns(name) {
            return Err(bad("has a name that is not a DNS subdomain"));
        }
        // The rule of ConfigMap and Secret data keys.
        let key_ok = !key.is_empty()
            && key.len() <= 253
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !key_ok {
            return Err(bad(
                "has a key that is not a data key (letters, digits, '-', '_', '.')",
            ));
        }
        Ok(ObjectKey {
            namespace: namespace.to_string(),
            name: name.to_string(),
            key: key.to_string(),
        })
    }
}

impl TrustSource {
    /// The source from the three alternative flags; `None` when none is set
    /// (each volume then gets its request's `status.ca`).
    pub fn from_flags(
        file: Option<&Path>,
        configmap: Option<&str>,
        secret: Option<&str>,
    ) -> Result<Option<TrustSource>, TrustError> {
        let given: Vec<&str> = [
            file.map(|_| "--trust-bundle-file"),
            configmap.map(|_| "--trust-bundle-configmap"),
            secret.map(|_| "--trust-bundle-secret"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if given.len() > 1 {
            return Err(TrustError::TooMany {
                given: given.join(", "),
            });
        }
        Ok(if let Some(path) = file {
            Some(TrustSource::File(path.to_path_buf()))
        } else if let Some(v) = configmap {
            Some(TrustSource::ConfigMap(ObjectKey::parse(
                "--trust-bundle-configmap",
                v,
            )?))
        } else if let Some(v) = secret {
            Some(TrustSource::Secret(ObjectKey::parse(
                "--trust-bundle-secret",
                v,
            )?))
        } else {
            None
        })
    }
}

/// Checks a bundle: at least one certificate, every block a certificate
/// that decodes. Returns the text to write.
pub fn validate_bundle(bytes: &[u8]) -> Result<String, TrustError> {
    let bad = |problem: String| TrustError::Content { problem };
    let text = std::str::from_utf8(bytes).map_err(|_| bad("is not text".into()))?;
    let blocks = pem::parse_many(text).map_err(|e| bad(format!("is not PEM: {e}")))?;
    if blocks.is_empty() {
        return Err(bad("holds no PEM block".into()));
    }
    for (i, block) in blocks.iter().enumerate() {
        // The tag only: a private key's contents must never reach a message.
        if block.tag() != "CERTIFICATE" {
            return Err(bad(format!(
                "holds a {:?} block at position {}",
                block.tag(),
                i + 1
            )));
        }
        crate::pki::inspect::parse_certificate(block.contents()).map_err(|e| {
            bad(format!(
                "has certificate {} that does not decode: {e}",
                i + 1
            ))
        })?;
    }
    Ok(text.to_string())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::node::trust) fn ca_pem(cn: &str) -> String {
        let key = crate::pki::PrivateKey::generate(crate::pki::KeyAlgorithm::Ecdsa(
            crate::pki::Curve::P256,
        ))
        .unwrap();
        let subject = crate::pki::SubjectSpec {
            common_name: Some(cn.into()),
            ..Default::default()
        };
        let csr = crate::pki::build_csr(
            &key,
            &subject,
            &crate::pki::SanSpec::default(),
            &crate::pki::CsrOptions::default(),
        )
        .unwrap();
        crate::pki::sign_self_signed(
            csr.pem.as_bytes(),
            &key,
            &crate::pki::SignParams {
                is_ca: true,
                ..Default::default()
            },
        )
        .unwrap()
        .certificate_pem
    }

    #[test]
    fn object_keys() {
        assert_eq!(
            ObjectKey::parse("--trust-bundle-configmap", "cert-manager/trust:ca.crt").unwrap(),
            ObjectKey {
                namespace: "cert-manager".into(),
                name: "trust".into(),
                key: "ca.crt".into()
            }
        );
        for bad in [
            "trust:ca.crt",
            "cert-manager/trust",
            "a.b/trust:ca.crt",
            "ns/Trust:ca.crt",
            "ns/trust:ca/crt",
            "ns/trust:",
            "/trust:ca.crt",
        ] {
            let err = ObjectKey::parse("--trust-bundle-secret", bad).unwrap_err();
            assert!(
                err.to_string().starts_with("--trust-bundle-secret"),
                "{bad}"
            );
        }
    }

    #[test]
    fn flags_are_alternatives() {
        assert_eq!(TrustSource::from_flags(None, None, None), Ok(None));
        assert_eq!(
            TrustSource::from_flags(Some(Path::new("/etc/trust/ca.crt")), None, None),
            Ok(Some(TrustSource::File("/etc/trust/ca.crt".into())))
        );
        assert!(matches!(
            TrustSource::from_flags(None, Some("a/b:c"), Some("a/b:c")),
            Err(TrustError::TooMany { .. })
        ));
    }

    #[test]
    fn bundles_hold_certificates_only() {
        let one = ca_pem("root one");
        let two = format!("{one}{}", ca_pem("root two"));
        assert_eq!(validate_bundle(one.as_bytes()).unwrap(), one);
        assert_eq!(validate_bundle(two.as_bytes()).unwrap(), two);
        assert!(validate_bundle(b"").is_err());
        assert!(validate_bundle(b"not pem").is_err());
        let half = &one[..one.len() / 2];
        assert!(validate_bundle(half.as_bytes()).is_err());
        let key = crate::pki::PrivateKey::generate(crate::pki::KeyAlgorithm::Ed25519)
            .unwrap()
            .to_pem(crate::pki::KeyEncoding::Pkcs8)
            .unwrap();
        let mut with_key = one.clone().into_bytes();
        with_key.extend_from_slice(key.expose());
        let err = validate_bundle(&with_key).unwrap_err().to_string();
        assert!(err.contains("PRIVATE KEY"), "{err}");
        let body: String = String::from_utf8(key.expose().to_vec())
            .unwrap()
            .lines()
            .nth(1)
            .unwrap()
            .to_string();
        assert!(!err.contains(&body), "key material in the error: {err}");
    }
}
