//! Extra output formats cert-manager offers beside `tls.crt`/`tls.key`:
//! PKCS#12 and JKS key and trust stores, `tls-combined.pem` and `key.der`.
//!
//! Contents follow cert-manager's issuing controller
//! (`pkg/controller/certificates/issuing/internal/keystore.go`) and
//! csi-driver (`pkg/keystore/pkcs12`):
//! - keystore.p12: the key and leaf, then the rest of `tls.crt` and every
//!   certificate of `ca.crt` (csi-driver passes no CA), in the profile asked
//!   for; no entry name, so Java calls the entry "1".
//! - truststore.p12: each CA certificate, trusted, named by its subject as
//!   Go prints it.
//! - keystore.jks: the key entry (default alias "certificate", lower-cased
//!   like every JKS alias) with the `tls.crt` chain, and the CAs as trusted
//!   entries "ca", "ca-1", ...; truststore.jks: those CA entries alone.

use std::time::SystemTime;

use der::asn1::{Any, PrintableStringRef, Utf8StringRef};
use der::{Decode, Encode};
use thiserror::Error;

use super::inspect::{InspectError, chain_ders};
use super::key::{KeyError, PrivateKey};
use super::pkcs12::{self as p12, Pkcs12Error};
use super::rules;
use super::secret::Secret;
use super::spec::KeyEncoding;

pub use super::pkcs12::Pkcs12Profile;

/// The JKS key entry's alias when `spec.keystores.jks.alias` is unset.
pub const DEFAULT_JKS_ALIAS: &str = "certificate";
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
    #[error("pkcs12: building the keystore failed: {0}")]
    Pkcs12(#[from] Pkcs12Error),
    #[error("jks: building the keystore failed: {reason}")]
    Jks { reason: String },
}

fn certs(field: &'static str, pem_text: &[u8]) -> Result<Vec<Vec<u8>>, KeystoreError> {
    chain_ders(pem_text).map_err(|source| KeystoreError::Chain { field, source })
}

/// The CA certificates, or none when `ca_pem` is absent or blank.
fn ca_certs(ca_pem: Option<&[u8]>) -> Result<Vec<Vec<u8>>, KeystoreError> {
    match ca_pem.filter(|c| !c.iter().all(u8::is_ascii_whitespace)) {
        Some(ca) => certs("ca.crt", ca),
        None => Ok(Vec::new()),
    }
}

/// keystore.p12: the private key with the leaf, then the chain's other
/// certificates and those of `ca_pem`, as they come (upstream does not
/// drop a CA that is also in the chain).
pub fn pkcs12(
    key: &PrivateKey,
    chain_pem: &[u8],
    ca_pem: Option<&[u8]>,
    password: &str,
    profile: Pkcs12Profile,
) -> Result<Vec<u8>, KeystoreError> {
    let chain = certs("tls.crt", chain_pem)?;
    let (leaf, rest) = chain.split_first().ok_or(KeystoreError::Chain {
        field: "tls.crt",
        source: InspectError::Empty,
    })?;
    let mut cas = rest.to_vec();
    cas.extend(ca_certs(ca_pem)?);
    let pkcs8 = key.to_der(KeyEncoding::Pkcs8)?;
    Ok(p12::keystore(
        profile,
        pkcs8.expose(),
        leaf,
        &cas,
        password,
    )?)
}

/// truststore.p12: the CA certificates as trusted entries.
pub fn pkcs12_truststore(
    ca_pem: &[u8],
    password: &str,
    profile: Pkcs12Profile,
) -> Result<Vec<u8>, KeystoreError> {
    let entries: Vec<(Vec<u8>, String)> = certs("ca.crt", ca_pem)?
        .into_iter()
        .map(|der| {
            let name = go_subject_string(&der);
            (der, name)
        })
        .collect();
    Ok(p12::truststore(profile, &entries, password)?)
}

/// ASN.1 PrintableString's characters as Go's encoder decides between
/// PrintableString and UTF8String (no `*`, no `&`).
fn go_printable(s: &str) -> bool {
    s.bytes().all(|b| {
        b.is_ascii_alphanumeric()
            || (b'\''..=b')').contains(&b)
            || (b'+'..=b'/').contains(&b)
            || matches!(b, b' ' | b':' | b'=' | b'?')
    })
}

/// An attribute value of a type Go has no name for: `#` and the hex of its
/// DER as Go re-encodes it (strings as PrintableString where they fit,
/// otherwise UTF8String; anything else as it was).
fn go_hex_value(value: &Any) -> String {
    let der = match rules::any_to_string(value) {
        Some(s) if go_printable(&s) => PrintableStringRef::new(&s).and_then(|p| p.to_der()),
        Some(s) => Utf8StringRef::new(&s).and_then(|u| u.to_der()),
        None => value.to_der(),
    };
    format!("#{}", hex::encode(der.unwrap_or_default()))
}

/// RFC 2253-style escaping as Go's `pkix.RDNSequence.String` does it.
fn go_escape(value: &str) -> String {
    let last = value.chars().count().saturating_sub(1);
    let mut out = String::with_capacity(value.len());
    for (i, c) in value.chars().enumerate() {
        let escape = match c {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' => true,
            ' ' => i == 0 || i == last,
            '#' => i == 0,
            _ => false,
        };
        if escape {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A certificate's subject as Go's `pkix.Name.String` prints it, which is
/// the friendlyName go-pkcs12 gives truststore entries: the parsed fields in
/// Go's fixed order (reversed on output, values of one type joined by `+`),
/// then attributes of other types as `OID=#hex`.
pub fn go_subject_string(cert_der: &[u8]) -> String {
    let Ok(cert) = x509_cert::Certificate::from_der(cert_der) else {
        return String::new();
    };
    let name = &cert.tbs_certificate().subject();
    let f = rules::subject_fields(name);
    let known = [
        rules::OID_CN,
        rules::OID_SERIAL,
        rules::OID_C,
        rules::OID_L,
        rules::OID_ST,
        rules::OID_STREET,
        rules::OID_O,
        rules::OID_OU,
        rules::OID_POSTAL,
    ];
    // Go's sequence, first to last; printing walks it backwards.
    let mut rdns: Vec<String> = name
        .iter()
        .filter(|atv| !known.contains(&atv.oid))
        .map(|atv| format!("{}={}", atv.oid, go_hex_value(&atv.value)))
        .collect();
    let mut add = |label: &str, values: &[String]| {
        if !values.is_empty() {
            let joined: Vec<String> = values
                .iter()
                .map(|v| format!("{label}={}", go_escape(v)))
                .collect();
            rdns.push(joined.join("+"));
        }
    };
    add("C", &f.countries);
    add("ST", &f.provinces);
    add("L", &f.localities);
    add("STREET", &f.street_addresses);
    add("POSTALCODE", &f.postal_codes);
    add("O", &f.organizations);
    add("OU", &f.organizational_units);
    let single = |v: Option<String>| v.filter(|s| !s.is_empty()).into_iter().collect::<Vec<_>>();
    add("CN", &single(f.common_name));
    add("SERIALNUMBER", &single(f.serial_number));
    rdns.reverse();
    rdns.join(",")
}

fn jks_err(e: impl std::fmt::Display) -> KeystoreError {
    KeystoreError::Jks {
        reason: e.to_string(),
    }
}

fn jks_cert(der: &[u8]) -> jks::Certificate {
    // keystore-go, which cert-manager writes JKS with, names the type "X509".
    jks::Certificate {
        cert_type: "X509".into(),
        content: der.to_vec(),
    }
}

fn jks_store() -> jks::KeyStore {
    jks::KeyStore::with_options(jks::KeyStoreOptions {
        // keytool lists aliases in file order; sorting makes output stable.
        ordered_aliases: true,
        // Upstream sets no minimum, and Java opens stores with any password.
        min_password_len: 0,
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

fn jks_bytes(store: &jks::KeyStore, password: &str) -> Result<Vec<u8>, KeystoreError> {
    let mut out = Vec::new();
    store
        .store(&mut out, password.as_bytes())
        .map_err(jks_err)?;
    Ok(out)
}

/// keystore.jks: the key entry `alias` with the `tls.crt` chain, plus the
/// CA certificates as trusted entries "ca", "ca-1", ... when given. The key
/// is protected with the store password.
pub fn jks_keystore(
    key: &PrivateKey,
    chain_pem: &[u8],
    ca_pem: Option<&[u8]>,
    password: &str,
    alias: &str,
) -> Result<Vec<u8>, KeystoreError> {
    let chain = certs("tls.crt", chain_pem)?;
    let pkcs8 = key.to_der(KeyEncoding::Pkcs8)?;
    let mut store = jks_store();
    store
        .set_private_key_entry(
            alias,
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
    let mut store = jks_store();
    add_trusted(&mut store, ca_pem)?;
    jks_bytes(&store, password)
}

/// tls-combined.pem: the private key PEM, a newline, then the chain, as
/// cert-manager's CombinedPEM output joins them (so a blank line follows
/// the key).
pub fn combined_pem(
    key: &PrivateKey,
    encoding: KeyEncoding,
    chain_pem: &[u8],
) -> Result<Secret, KeystoreError> {
    let key_pem = key.to_pem(encoding)?;
    let mut out = Vec::with_capacity(key_pem.len() + chain_pem.len() + 1);
    out.extend_from_slice(key_pem.expose());
    out.push(b'\n');
    out.extend_from_slice(chain_pem);
    Ok(Secret::new(out))
}

/// key.der: the DER inside tls.key, so in the same `encoding` (PKCS#1 for
/// RSA with PKCS1, SEC1 for ECDSA with PKCS1, PKCS#8 otherwise).
pub fn key_der(key: &PrivateKey, encoding: KeyEncoding) -> Result<Secret, KeystoreError> {
    Ok(key.to_der(encoding)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::csr::{CsrOptions, build_csr};
    use crate::pki::sign::{SignParams, sign_self_signed};
    use crate::pki::spec::{Curve, KeyAlgorithm, SanSpec, SubjectSpec};

    fn self_signed_with(key: &PrivateKey, subject: SubjectSpec) -> String {
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

    fn self_signed(key: &PrivateKey) -> String {
        self_signed_with(
            key,
            SubjectSpec {
                common_name: Some("ks".into()),
                ..Default::default()
            },
        )
    }

    #[test]
    fn jks_round_trips_through_the_reader_with_any_alias_and_short_passwords() {
        let key = PrivateKey::generate(KeyAlgorithm::Ecdsa(Curve::P256)).unwrap();
        let cert = self_signed(&key);
        let bytes =
            jks_keystore(&key, cert.as_bytes(), Some(cert.as_bytes()), "abc", "MyKey").unwrap();
        let mut store = jks::KeyStore::new();
        store.load(&bytes[..], b"abc").unwrap();
        let mut aliases = store.aliases();
        aliases.sort();
        // Aliases are lower-cased, as keystore-go (and Java) store them.
        assert_eq!(aliases, vec!["ca", "mykey"]);
        let entry = store.get_private_key_entry("mykey", b"abc").unwrap();
        assert_eq!(entry.certificate_chain.len(), 1, "tls.crt only");
        let back = PrivateKey::from_pkcs8_der(&entry.private_key).unwrap();
        assert_eq!(back.public_key_der(), key.public_key_der());
        let mut wrong = jks::KeyStore::new();
        assert!(wrong.load(&bytes[..], b"nottheone").is_err());
    }

    #[test]
    fn combined_pem_is_key_blank_line_then_chain() {
        let key = PrivateKey::generate(KeyAlgorithm::Ed25519).unwrap();
        let cert = self_signed(&key);
        let combined = combined_pem(&key, KeyEncoding::Pkcs8, cert.as_bytes()).unwrap();
        let key_pem = key.to_pem(KeyEncoding::Pkcs8).unwrap();
        let mut want = key_pem.expose().to_vec();
        want.push(b'\n');
        want.extend_from_slice(cert.as_bytes());
        assert_eq!(combined.expose(), want.as_slice());
    }

    #[test]
    fn key_der_is_the_der_of_tls_key_in_its_encoding() {
        let cases = [
            (KeyAlgorithm::Rsa { bits: 2048 }, KeyEncoding::Pkcs1),
            (KeyAlgorithm::Rsa { bits: 2048 }, KeyEncoding::Pkcs8),
            (KeyAlgorithm::Ecdsa(Curve::P256), KeyEncoding::Sec1),
            (KeyAlgorithm::Ecdsa(Curve::P256), KeyEncoding::Pkcs8),
            (KeyAlgorithm::Ed25519, KeyEncoding::Pkcs8),
        ];
        for (alg, enc) in cases {
            let key = PrivateKey::generate(alg).unwrap();
            let pem_text = key.to_pem(enc).unwrap();
            let block = pem::parse(pem_text.expose()).unwrap();
            assert_eq!(
                key_der(&key, enc).unwrap().expose(),
                block.contents(),
                "{alg:?} {enc:?}"
            );
        }
    }

    #[test]
    fn subjects_print_as_go_prints_them() {
        let key = PrivateKey::generate(KeyAlgorithm::Ecdsa(Curve::P256)).unwrap();
        let cert = self_signed_with(
            &key,
            SubjectSpec {
                common_name: Some(" Root, #1 ".into()),
                organizations: vec!["B+C".into(), "A".into()],
                countries: vec!["GB".into()],
                serial_number: Some("7".into()),
                ..Default::default()
            },
        );
        let der = &certs("t", cert.as_bytes()).unwrap()[0];
        // Go's order reversed: serial, CN, O (both values, as the
        // certificate's SET holds them: DER-sorted, "A" first), C.
        assert_eq!(
            go_subject_string(der),
            "SERIALNUMBER=7,CN=\\ Root\\, #1\\ ,O=A+O=B\\+C,C=GB"
        );
        assert_eq!(go_escape("#x#"), "\\#x#");
    }
}
