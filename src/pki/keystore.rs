//! Extra output formats cert-manager offers beside `tls.crt`/`tls.key`:
//! PKCS#12 and JKS key and trust stores, `tls-combined.pem` and `key.der`.
//!
//! Aliases follow cert-manager: the key entry is "certificate" and the CA
//! trust entry is "ca".

use std::time::SystemTime;

use thiserror::Error;

use super::inspect::{InspectError, chain_ders};
use super::key::{KeyError, PrivateKey};
use super::secret::Secret;
use super::spec::KeyEncoding;

pub const KEY_ALIAS: &str = "certificate";
pub const CA_ALIAS: &str = "ca";

#[derive(Debug, Error)]
pub enum KeystoreError {
    #[error("{field}: {source}")]
    Chain {
        field: &'static str,
        #[source]
        source: InspectError,
    },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("pkcs12: building the keystore failed: {reason}")]
    Pkcs12 { reason: String },
    #[error("jks: building the keystore failed: {reason}")]
    Jks { reason: String },
    #[error(
        "{field}: the password has {len} characters but JKS (and keytool) need at least 6; use a longer one (cert-manager's default is \"changeit\")"
    )]
    PasswordTooShort { field: &'static str, len: usize },
}

fn certs(field: &'static str, pem_text: &[u8]) -> Result<Vec<Vec<u8>>, KeystoreError> {
    chain_ders(pem_text).map_err(|source| KeystoreError::Chain { field, source })
}

/// The chain plus CA certificates not already in it, leaf first, as
/// cert-manager puts both into keystore.p12 / keystore.jks.
fn chain_with_ca(chain_pem: &[u8], ca_pem: Option<&[u8]>) -> Result<Vec<Vec<u8>>, KeystoreError> {
    let mut all = certs("tls.crt", chain_pem)?;
    if let Some(ca) = ca_pem.filter(|c| !c.iter().all(u8::is_ascii_whitespace)) {
        for c in certs("ca.crt", ca)? {
            if !all.contains(&c) {
                all.push(c);
            }
        }
    }
    Ok(all)
}

fn p12_err(e: impl std::fmt::Display) -> KeystoreError {
    KeystoreError::Pkcs12 {
        reason: e.to_string(),
    }
}

fn p12_writer_bytes(
    store: &p12_keystore::KeyStore,
    password: &str,
) -> Result<Vec<u8>, KeystoreError> {
    // AES-256-CBC with PBKDF2 and an HMAC-SHA256 MAC (cert-manager's
    // "Modern2023" profile): OpenSSL 3 opens it without `-legacy`, unlike
    // the RC2 default of older tools.
    store
        .writer(password)
        .encryption_algorithm(p12_keystore::EncryptionAlgorithm::PbeWithHmacSha256AndAes256)
        .mac_algorithm(p12_keystore::MacAlgorithm::HmacSha256)
        .write()
        .map_err(p12_err)
}

/// keystore.p12: the private key with the chain (and the CA when given).
pub fn pkcs12(
    key: &PrivateKey,
    chain_pem: &[u8],
    ca_pem: Option<&[u8]>,
    password: &str,
) -> Result<Vec<u8>, KeystoreError> {
    let chain = chain_with_ca(chain_pem, ca_pem)?;
    let certs = chain
        .iter()
        .map(|d| p12_keystore::Certificate::from_der(d).map_err(p12_err))
        .collect::<Result<Vec<_>, _>>()?;
    let pkcs8 = key.to_der(KeyEncoding::Pkcs8)?;
    let p12_key = p12_keystore::PrivateKey::from_der(pkcs8.expose()).map_err(p12_err)?;
    // The localKeyId ties the key bag to its certificate; the leaf's
    // SHA-1 fingerprint is what OpenSSL and keytool use.
    let key_id = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &chain[0]);
    let chain_entry = p12_keystore::PrivateKeyChain::new(key_id.as_ref().to_vec(), p12_key, certs);
    let mut store = p12_keystore::KeyStore::new();
    store.add_entry(
        KEY_ALIAS,
        p12_keystore::KeyStoreEntry::PrivateKeyChain(chain_entry),
    );
    p12_writer_bytes(&store, password)
}

/// truststore.p12: the CA certificates as trusted entries.
pub fn pkcs12_truststore(ca_pem: &[u8], password: &str) -> Result<Vec<u8>, KeystoreError> {
    let mut store = p12_keystore::KeyStore::new();
    for (i, der) in certs("ca.crt", ca_pem)?.iter().enumerate() {
        let cert = p12_keystore::Certificate::from_der(der).map_err(p12_err)?;
        let alias = if i == 0 {
            CA_ALIAS.to_string()
        } else {
            format!("{CA_ALIAS}-{i}")
        };
        store.add_entry(&alias, p12_keystore::KeyStoreEntry::Certificate(cert));
    }
    p12_writer_bytes(&store, password)
}

fn jks_err(e: impl std::fmt::Display) -> KeystoreError {
    KeystoreError::Jks {
        reason: e.to_string(),
    }
}

fn jks_cert(der: &[u8]) -> jks::Certificate {
    jks::Certificate {
        cert_type: "X.509".into(),
        content: der.to_vec(),
    }
}

fn jks_store() -> jks::KeyStore {
    jks::KeyStore::with_options(jks::KeyStoreOptions {
        // keytool lists aliases in file order; sorting makes output stable.
        ordered_aliases: true,
        ..Default::default()
    })
}

fn add_trusted(store: &mut jks::KeyStore, ca_pem: &[u8]) -> Result<(), KeystoreError> {
    for (i, der) in certs("ca.crt", ca_pem)?.iter().enumerate() {
        let alias = if i == 0 {
            CA_ALIAS.to_string()
        } else {
            format!("{CA_ALIAS}-{i}")
        };
        store
            .set_trusted_certificate_entry(
                &alias,
                jks::TrustedCertificateEntry {
                    creation_time: SystemTime::now(),
                    certificate: jks_cert(der),
                },
            )
            .map_err(jks_err)?;
    }
    Ok(())
}

fn check_jks_password(password: &str) -> Result<(), KeystoreError> {
    let len = password.chars().count();
    if len < 6 {
        return Err(KeystoreError::PasswordTooShort {
            field: "jks password",
            len,
        });
    }
    Ok(())
}

fn jks_bytes(store: &jks::KeyStore, password: &str) -> Result<Vec<u8>, KeystoreError> {
    let mut out = Vec::new();
    store
        .store(&mut out, password.as_bytes())
        .map_err(jks_err)?;
    Ok(out)
}

/// keystore.jks: the key entry "certificate" with the chain, plus the CA as
/// trusted entry "ca" when given. The key is protected with the store password.
pub fn jks_keystore(
    key: &PrivateKey,
    chain_pem: &[u8],
    ca_pem: Option<&[u8]>,
    password: &str,
) -> Result<Vec<u8>, KeystoreError> {
    check_jks_password(password)?;
    let chain = chain_with_ca(chain_pem, ca_pem)?;
    let pkcs8 = key.to_der(KeyEncoding::Pkcs8)?;
    let mut store = jks_store();
    store
        .set_private_key_entry(
            KEY_ALIAS,
            jks::PrivateKeyEntry {
                creation_time: SystemTime::now(),
                private_key: pkcs8.expose().to_vec(),
                certificate_chain: chain.iter().map(|d| jks_cert(d)).collect(),
            },
            password.as_bytes(),
        )
        .map_err(jks_err)?;
    if let Some(ca) = ca_pem.filter(|c| !c.iter().all(u8::is_ascii_whitespace)) {
        add_trusted(&mut store, ca)?;
    }
    jks_bytes(&store, password)
}

/// truststore.jks: the CA certificates as trusted entries.
pub fn jks_truststore(ca_pem: &[u8], password: &str) -> Result<Vec<u8>, KeystoreError> {
    check_jks_password(password)?;
    let mut store = jks_store();
    add_trusted(&mut store, ca_pem)?;
    jks_bytes(&store, password)
}

/// tls-combined.pem: the private key PEM followed by the chain, as
/// cert-manager's CombinedPEM output format writes it.
pub fn combined_pem(
    key: &PrivateKey,
    encoding: KeyEncoding,
    chain_pem: &[u8],
) -> Result<Secret, KeystoreError> {
    let key_pem = key.to_pem(encoding)?;
    let mut out = Vec::with_capacity(key_pem.len() + chain_pem.len() + 1);
    out.extend_from_slice(key_pem.expose());
    if !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    out.extend_from_slice(chain_pem);
    Ok(Secret::new(out))
}

/// key.der: the private key as PKCS#8 DER (cert-manager's DER output format).
pub fn key_der(key: &PrivateKey) -> Result<Secret, KeystoreError> {
    Ok(key.to_der(KeyEncoding::Pkcs8)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::csr::{CsrOptions, build_csr};
    use crate::pki::sign::{SignParams, sign_self_signed};
    use crate::pki::spec::{Curve, KeyAlgorithm, SanSpec, SubjectSpec};

    fn self_signed(key: &PrivateKey) -> String {
        let subject = SubjectSpec {
            common_name: Some("ks".into()),
            ..Default::default()
        };
        let csr = build_csr(key, &subject, &SanSpec::default(), &CsrOptions::default()).unwrap();
        sign_self_signed(
            csr.pem.as_bytes(),
            key,
            &SignParams {
                is_ca: true,
                ..Default::default()
            },
        )
        .unwrap()
        .certificate_pem
    }

    #[test]
    fn pkcs12_round_trips_through_the_reader() {
        let key = PrivateKey::generate(KeyAlgorithm::Ecdsa(Curve::P256)).unwrap();
        let cert = self_signed(&key);
        let p12 = pkcs12(&key, cert.as_bytes(), Some(cert.as_bytes()), "pw").unwrap();
        let store = p12_keystore::KeyStore::from_pkcs12(
            &p12,
            "pw",
            p12_keystore::Pkcs12ImportPolicy::Relaxed,
        )
        .unwrap();
        let (_, chain) = store.private_key_chain().unwrap();
        assert_eq!(
            chain.certs().len(),
            1,
            "the CA equal to the leaf is not duplicated"
        );
        let back = PrivateKey::from_pkcs8_der(chain.key().as_der()).unwrap();
        assert_eq!(back.public_key_der(), key.public_key_der());
        assert!(
            p12_keystore::KeyStore::from_pkcs12(
                &p12,
                "wrong",
                p12_keystore::Pkcs12ImportPolicy::Relaxed
            )
            .is_err()
        );
    }

    #[test]
    fn jks_round_trips_through_the_reader() {
        let key = PrivateKey::generate(KeyAlgorithm::Ecdsa(Curve::P256)).unwrap();
        let cert = self_signed(&key);
        let bytes = jks_keystore(&key, cert.as_bytes(), Some(cert.as_bytes()), "changeit").unwrap();
        let mut store = jks::KeyStore::new();
        store.load(&bytes[..], b"changeit").unwrap();
        let mut aliases = store.aliases();
        aliases.sort();
        assert_eq!(aliases, vec!["ca", "certificate"]);
        let entry = store.get_private_key_entry(KEY_ALIAS, b"changeit").unwrap();
        let back = PrivateKey::from_pkcs8_der(&entry.private_key).unwrap();
        assert_eq!(back.public_key_der(), key.public_key_der());
        let mut wrong = jks::KeyStore::new();
        assert!(wrong.load(&bytes[..], b"nottheone").is_err());
        assert!(matches!(
            jks_truststore(cert.as_bytes(), "short"),
            Err(KeystoreError::PasswordTooShort { len: 5, .. })
        ));
    }

    #[test]
    fn combined_pem_is_key_then_chain() {
        let key = PrivateKey::generate(KeyAlgorithm::Ed25519).unwrap();
        let cert = self_signed(&key);
        let combined = combined_pem(&key, KeyEncoding::Pkcs8, cert.as_bytes()).unwrap();
        let blocks = pem::parse_many(combined.expose()).unwrap();
        let tags: Vec<_> = blocks.iter().map(|b| b.tag().to_string()).collect();
        assert_eq!(tags, vec!["PRIVATE KEY", "CERTIFICATE"]);
        let der = key_der(&key).unwrap();
        assert_eq!(
            PrivateKey::from_pkcs8_der(der.expose())
                .unwrap()
                .public_key_der(),
            key.public_key_der()
        );
    }
}
