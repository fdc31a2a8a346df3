//! What the Secret for a Certificate contains: the data keys, the upstream
//! annotations and label, and the merge into a Secret that may already hold
//! keys of its own (which are never removed).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use thiserror::Error;

use super::policy::Desired;
use crate::api::well_known as wk;
use crate::api::{Certificate, CertificateSpec};
use crate::pki::keystore::{self, KeystoreError, Pkcs12Profile};
use crate::pki::{CertInfo, PrivateKey};

pub const TLS_CRT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";
pub const CA_CRT: &str = "ca.crt";
pub const KEYSTORE_P12: &str = "keystore.p12";
pub const TRUSTSTORE_P12: &str = "truststore.p12";
pub const KEYSTORE_JKS: &str = "keystore.jks";
pub const TRUSTSTORE_JKS: &str = "truststore.jks";
pub const KEY_DER: &str = "key.der";
pub const COMBINED_PEM: &str = "tls-combined.pem";
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";

/// Keys the controller owns beyond tls.crt/tls.key/ca.crt; removed again
/// when the spec stops asking for them.
const OPTIONAL_KEYS: [&str; 6] = [
    KEYSTORE_P12,
    TRUSTSTORE_P12,
    KEYSTORE_JKS,
    TRUSTSTORE_JKS,
    KEY_DER,
    COMBINED_PEM,
];

#[derive(Debug, Error)]
pub enum OutputError {
    #[error("{field}: {source}")]
    Keystore {
        field: &'static str,
        #[source]
        source: KeystoreError,
    },
    #[error("{field}: {source}")]
    Key {
        field: &'static str,
        #[source]
        source: crate::pki::KeyError,
    },
    #[error("{field}: set either password or passwordSecretRef so the keystore can be encrypted")]
    NoPassword { field: &'static str },
    #[error(
        "spec.additionalOutputFormats: {value:?} is not an output format; use DER or CombinedPEM"
    )]
    UnknownFormat { value: String },
    #[error(
        "spec.keystores.pkcs12.profile: {value} is not a PKCS#12 profile; use LegacyRC2 (the default), LegacyDES, Modern2023 or Modern2026"
    )]
    UnknownProfile { value: String },
}

/// Passwords for the keystores, already read from their Secrets.
#[derive(Default)]
pub struct Passwords {
    pub pkcs12: Option<crate::pki::Secret>,
    pub jks: Option<crate::pki::Secret>,
}

impl std::fmt::Debug for Passwords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passwords(<redacted>)")
    }
}

/// Where a keystore's password comes from: inline or a Secret key.
pub enum PasswordSource<'a> {
    Inline(&'a str),
    SecretRef { name: &'a str, key: &'a str },
}

/// The password source of each keystore the spec asks for.
pub fn password_sources(
    spec: &CertificateSpec,
) -> Result<(Option<PasswordSource<'_>>, Option<PasswordSource<'_>>), OutputError> {
    let ks = spec.keystores.as_ref();
    let p12 = match ks.and_then(|k| k.pkcs12.as_ref()).filter(|p| p.create) {
        None => None,
        Some(p) => Some(source(
            "spec.keystores.pkcs12",
            p.password.as_deref(),
            p.password_secret_ref.as_ref(),
        )?),
    };
    let jks = match ks.and_then(|k| k.jks.as_ref()).filter(|j| j.create) {
        None => None,
        Some(j) => Some(source(
            "spec.keystores.jks",
            j.password.as_deref(),
            j.password_secret_ref.as_ref(),
        )?),
    };
    Ok((p12, jks))
}

fn source<'a>(
    field: &'static str,
    inline: Option<&'a str>,
    reference: Option<&'a crate::api::SecretKeySelector>,
) -> Result<PasswordSource<'a>, OutputError> {
    match (reference, inline) {
        (Some(r), _) => Ok(PasswordSource::SecretRef {
            name: &r.name,
            key: r.key.as_deref().unwrap_or("password"),
        }),
        (None, Some(p)) => Ok(PasswordSource::Inline(p)),
        (None, None) => Err(OutputError::NoPassword { field }),
    }
}

fn wants_format(spec: &CertificateSpec, name: &str) -> bool {
    spec.additional_output_formats
        .iter()
        .flatten()
        .any(|f| f.type_ == name)
}

/// Checks `spec.additionalOutputFormats` names and the PKCS#12 profile.
pub fn check_formats(spec: &CertificateSpec) -> Result<(), OutputError> {
    for f in spec.additional_output_formats.iter().flatten() {
        if f.type_ != "DER" && f.type_ != "CombinedPEM" {
            return Err(OutputError::UnknownFormat {
                value: f.type_.clone(),
            });
        }
    }
    pkcs12_profile(spec)?;
    Ok(())
}

/// `spec.keystores.pkcs12.profile`: unset or empty means LegacyRC2, as
/// upstream's encoder defaults; other values must be one of the upstream
/// CRD's enum (which cert-csi's CRD also declares).
pub fn pkcs12_profile(spec: &CertificateSpec) -> Result<Pkcs12Profile, OutputError> {
    let profile = spec
        .keystores
        .as_ref()
        .and_then(|k| k.pkcs12.as_ref())
        .and_then(|p| p.profile.as_deref())
        .unwrap_or("");
    if profile.is_empty() {
        return Ok(Pkcs12Profile::default());
    }
    Pkcs12Profile::from_name(profile).ok_or_else(|| OutputError::UnknownProfile {
        value: crate::volume::short_quote(profile),
    })
}

/// `spec.keystores.jks.alias`, or "certificate" when unset.
fn jks_alias(spec: &CertificateSpec) -> &str {
    spec.keystores
        .as_ref()
        .and_then(|k| k.jks.as_ref())
        .and_then(|j| j.alias.as_deref())
        .unwrap_or(keystore::DEFAULT_JKS_ALIAS)
}

/// Every data key the controller writes for this issuance.
pub fn secret_data(
    cert: &Certificate,
    desired: &Desired,
    key: &PrivateKey,
    chain_pem: &[u8],
    ca_pem: Option<&[u8]>,
    passwords: &Passwords,
) -> Result<BTreeMap<String, Vec<u8>>, OutputError> {
    let spec = &cert.spec;
    let mut data = BTreeMap::new();
    let key_pem = key
        .to_pem(desired.key_encoding)
        .map_err(|source| OutputError::Key {
            field: "spec.privateKey.encoding",
            source,
        })?;
    data.insert(TLS_CRT.to_owned(), chain_pem.to_vec());
    data.insert(TLS_KEY.to_owned(), key_pem.expose().to_vec());
    let ca = ca_pem.filter(|c| !c.iter().all(u8::is_ascii_whitespace));
    if let Some(ca) = ca {
        data.insert(CA_CRT.to_owned(), ca.to_vec());
    }
    let ks = |field| move |source| OutputError::Keystore { field, source };
    if let Some(pw) = &passwords.pkcs12 {
        let pw = pw.expose_str().unwrap_or_default();
        let field = "spec.keystores.pkcs12";
        let profile = pkcs12_profile(spec)?;
        data.insert(
            KEYSTORE_P12.to_owned(),
            keystore::pkcs12(key, chain_pem, ca, pw, profile).map_err(ks(field))?,
        );
        if let Some(ca) = ca {
            data.insert(
                TRUSTSTORE_P12.to_owned(),
                keystore::pkcs12_truststore(ca, pw, profile).map_err(ks(field))?,
            );
        }
    }
    if let Some(pw) = &passwords.jks {
        let pw = pw.expose_str().unwrap_or_default();
        let field = "spec.keystores.jks";
        data.insert(
            KEYSTORE_JKS.to_owned(),
            keystore::jks_keystore(key, chain_pem, ca, pw, jks_alias(spec)).map_err(ks(field))?,
        );
        if let Some(ca) = ca {
            data.insert(
                TRUSTSTORE_JKS.to_owned(),
                keystore::jks_truststore(ca, pw).map_err(ks(field))?,
            );
        }
    }
    let field = "spec.additionalOutputFormats";
    if wants_format(spec, "DER") {
        data.insert(
            KEY_DER.to_owned(),
            keystore::key_der(key, desired.key_encoding)
                .map_err(ks(field))?
                .expose()
                .to_vec(),
        );
    }
    if wants_format(spec, "CombinedPEM") {
        data.insert(
            COMBINED_PEM.to_owned(),
            keystore::combined_pem(key, desired.key_encoding, chain_pem)
                .map_err(ks(field))?
                .expose()
                .to_vec(),
        );
    }
    Ok(data)
}

/// One CSV record, as cert-manager's `JoinWithEscapeCSV` writes lists into
/// annotations (Go's encoding/csv without the line end): a field is quoted
/// when it holds a comma, a quote, CR or LF, starts with white space, or is
/// `\.`; quotes inside are doubled. Readers split it back with a CSV parser.
fn join(items: impl IntoIterator<Item = String>) -> String {
    let fields: Vec<String> = items
        .into_iter()
        .map(|f| {
            let quote = !f.is_empty()
                && (f == "\\."
                    || f.contains([',', '"', '\r', '\n'])
                    || f.chars().next().is_some_and(char::is_whitespace));
            if quote {
                format!("\"{}\"", f.replace('"', "\"\""))
            } else {
                f
            }
        })
        .collect();
    fields.join(",")
}

/// An IP SAN as Go's `net.IP.String` prints it: IPv4-mapped IPv6 addresses
/// in dotted form.
fn go_ip(ip: &std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => v6.to_string(),
        },
        v4 => v4.to_string(),
    }
}

/// The upstream annotations, from the Certificate and the issued leaf.
pub fn secret_annotations(cert: &Certificate, leaf: &CertInfo) -> BTreeMap<String, String> {
    let r = &cert.spec.issuer_ref;
    let subject = der::Decode::from_der(&leaf.subject_der)
        .map(|n: x509_cert::name::Name| crate::pki::rules::subject_fields(&n))
        .unwrap_or_default();
    let mut a = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        a.insert(k.to_owned(), v);
    };
    put(
        wk::CERTIFICATE_NAME,
        cert.metadata.name.clone().unwrap_or_default(),
    );
    // As written in the request's issuerRef (upstream copies it, so an
    // unset group is "", not cert-manager.io).
    put(wk::ISSUER_NAME, r.name.clone());
    put(wk::ISSUER_KIND, r.kind.clone().unwrap_or_default());
    put(wk::ISSUER_GROUP, r.group.clone().unwrap_or_default());
    put(
        wk::COMMON_NAME,
        subject.common_name.clone().unwrap_or_default(),
    );
    put(wk::ALT_NAMES, join(leaf.sans.dns_names.iter().cloned()));
    put(wk::IP_SANS, join(leaf.sans.ip_addresses.iter().map(go_ip)));
    put(wk::URI_SANS, join(leaf.sans.uris.iter().cloned()));
    let optional: [(&str, &Vec<String>); 8] = [
        (wk::EMAIL_SANS, &leaf.sans.emails),
        (wk::SUBJECT_ORGANIZATIONS, &subject.organizations),
        (
            wk::SUBJECT_ORGANIZATIONAL_UNITS,
            &subject.organizational_units,
        ),
        (wk::SUBJECT_COUNTRIES, &subject.countries),
        (wk::SUBJECT_PROVINCES, &subject.provinces),
        (wk::SUBJECT_LOCALITIES, &subject.localities),
        (wk::SUBJECT_POSTAL_CODES, &subject.postal_codes),
        (wk::SUBJECT_STREET_ADDRESSES, &subject.street_addresses),
    ];
    for (k, v) in optional {
        if !v.is_empty() {
            put(k, join(v.iter().cloned()));
        }
    }
    if let Some(sn) = subject.serial_number.filter(|s| !s.is_empty()) {
        put(wk::SUBJECT_SERIAL_NUMBER, sn);
    }
    // secretTemplate annotations never override the controller's own.
    if let Some(t) = cert
        .spec
        .secret_template
        .as_ref()
        .and_then(|t| t.annotations.as_ref())
    {
        for (k, v) in t {
            a.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    a
}

/// The labels: the fao label plus secretTemplate labels.
pub fn secret_labels(cert: &Certificate) -> BTreeMap<String, String> {
    let mut l = BTreeMap::new();
    if let Some(t) = cert
        .spec
        .secret_template
        .as_ref()
        .and_then(|t| t.labels.as_ref())
    {
        l.extend(t.clone());
    }
    l.insert(wk::FAO_LABEL.to_owned(), wk::FAO_LABEL_VALUE.to_owned());
    l
}

/// `existing` (or a new Secret) with the controller's data, annotations and
/// labels applied. Keys, labels and annotations the controller does not
/// manage are kept; optional outputs the spec no longer asks for are removed.
pub fn merge(
    existing: Option<Secret>,
    namespace: &str,
    name: &str,
    data: BTreeMap<String, Vec<u8>>,
    annotations: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
) -> Secret {
    let mut secret = existing.unwrap_or_else(|| Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..Default::default()
        },
        ..Default::default()
    });
    // A new Secret is kubernetes.io/tls; an existing one keeps its type, as
    // upstream does (the type is immutable, so changing it would fail).
    if secret.type_.as_deref().is_none_or(str::is_empty) {
        secret.type_ = Some(TLS_SECRET_TYPE.to_owned());
    }
    let d = secret.data.get_or_insert_with(BTreeMap::new);
    for k in OPTIONAL_KEYS {
        if !data.contains_key(k) {
            d.remove(k);
        }
    }
    if !data.contains_key(CA_CRT) {
        d.remove(CA_CRT);
    }
    for (k, v) in data {
        d.insert(k, ByteString(v));
    }
    // string_data would override data on the server; it is never ours.
    secret.string_data = None;
    secret
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .extend(annotations);
    secret
        .metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .extend(labels);
    secret
}

/// Whether `secret` already carries the metadata and the outputs the spec
/// asks for, so a Secret edited by hand (a label removed, a keystore
/// deleted) is repaired without a new certificate. Keystores are compared
/// by presence only: they are salted, so bytes differ on every write.
pub fn up_to_date(
    secret: &Secret,
    annotations: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
    want: &BTreeMap<String, Vec<u8>>,
) -> bool {
    let have_a = secret.metadata.annotations.clone().unwrap_or_default();
    let have_l = secret.metadata.labels.clone().unwrap_or_default();
    let data = secret.data.clone().unwrap_or_default();
    let meta_ok = annotations.iter().all(|(k, v)| have_a.get(k) == Some(v))
        && labels.iter().all(|(k, v)| have_l.get(k) == Some(v));
    let type_ok = secret.type_.as_deref().is_some_and(|t| !t.is_empty());
    let keys_ok = OPTIONAL_KEYS
        .iter()
        .all(|k| data.contains_key(*k) == want.contains_key(*k))
        && [KEY_DER, COMBINED_PEM, CA_CRT]
            .iter()
            .all(|k| match want.get(*k) {
                Some(v) => data.get(*k).map(|b| &b.0) == Some(v),
                None => true,
            });
    meta_ok && type_ok && keys_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_foreign_keys_and_drops_stale_outputs() {
        let existing = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some("s".into()),
                annotations: Some(BTreeMap::from([("user".into(), "x".into())])),
                ..Default::default()
            },
            data: Some(BTreeMap::from([
                ("extra".into(), ByteString(b"keep".to_vec())),
                (KEY_DER.into(), ByteString(b"old".to_vec())),
                (CA_CRT.into(), ByteString(b"old ca".to_vec())),
            ])),
            type_: Some("Opaque".into()),
            ..Default::default()
        };
        let data = BTreeMap::from([
            (TLS_CRT.to_owned(), b"crt".to_vec()),
            (TLS_KEY.to_owned(), b"key".to_vec()),
        ]);
        let merged = merge(
            Some(existing),
            "ns",
            "s",
            data.clone(),
            BTreeMap::from([(wk::ISSUER_NAME.into(), "ca".into())]),
            BTreeMap::from([(wk::FAO_LABEL.into(), "true".into())]),
        );
        let d = merged.data.clone().unwrap();
        assert_eq!(d["extra"].0, b"keep");
        assert!(!d.contains_key(KEY_DER));
        assert!(!d.contains_key(CA_CRT));
        assert_eq!(d[TLS_KEY].0, b"key");
        assert_eq!(
            merged.type_.as_deref(),
            Some("Opaque"),
            "an existing Secret keeps its (immutable) type"
        );
        let fresh = merge(
            None,
            "ns",
            "s",
            data.clone(),
            BTreeMap::new(),
            BTreeMap::new(),
        );
        assert_eq!(fresh.type_.as_deref(), Some(TLS_SECRET_TYPE));
        let a = merged.metadata.annotations.clone().unwrap();
        assert_eq!(a["user"], "x");
        assert_eq!(a[wk::ISSUER_NAME], "ca");
        let ann = BTreeMap::from([(wk::ISSUER_NAME.to_owned(), "ca".to_owned())]);
        let lab = BTreeMap::from([(wk::FAO_LABEL.to_owned(), "true".to_owned())]);
        assert!(up_to_date(&merged, &ann, &lab, &data));
        let mut want_der = data.clone();
        want_der.insert(KEY_DER.into(), b"der".to_vec());
        assert!(!up_to_date(&merged, &ann, &lab, &want_der));
        let other = BTreeMap::from([(wk::ISSUER_NAME.to_owned(), "other".to_owned())]);
        assert!(!up_to_date(&merged, &other, &lab, &data));
    }

    #[test]
    fn lists_are_joined_as_go_csv_records() {
        let j = |v: &[&str]| join(v.iter().map(|s| s.to_string()));
        assert_eq!(j(&["a", "b"]), "a,b");
        assert_eq!(j(&[]), "");
        assert_eq!(j(&["", "x"]), ",x");
        assert_eq!(
            j(&["Org, Inc.", " spaced", "quo\"te", "\\.", "tab\there"]),
            "\"Org, Inc.\",\" spaced\",\"quo\"\"te\",\"\\.\",tab\there"
        );
        assert_eq!(
            go_ip(&"::ffff:10.0.0.1".parse().unwrap()),
            "10.0.0.1",
            "Go prints IPv4-mapped addresses dotted"
        );
        assert_eq!(go_ip(&"2001:db8::1".parse().unwrap()), "2001:db8::1");
    }

    #[test]
    fn password_sources_need_a_password() {
        let mut spec = CertificateSpec {
            keystores: Some(crate::api::CertificateKeystores {
                jks: Some(crate::api::JksKeystore {
                    create: true,
                    ..Default::default()
                }),
                pkcs12: Some(crate::api::Pkcs12Keystore {
                    create: false,
                    ..Default::default()
                }),
            }),
            ..Default::default()
        };
        let err = password_sources(&spec).err().unwrap().to_string();
        assert!(err.contains("spec.keystores.jks"), "{err}");
        spec.additional_output_formats =
            Some(vec![crate::api::CertificateAdditionalOutputFormat {
                type_: "PEM".into(),
            }]);
        assert!(
            check_formats(&spec)
                .unwrap_err()
                .to_string()
                .contains("\"PEM\"")
        );
    }
}
