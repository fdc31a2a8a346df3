//! `Certificate`: a desired certificate kept in a `kubernetes.io/tls` Secret.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::conditions::{self, CertificateCondition, ConditionStatus, types};
use super::{ApiError, IssuerRef};

/// The desired state of a Certificate.
// The printcolumn entries of #[kube] repeat keys by design.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "cert-manager.io",
    version = "v1",
    kind = "Certificate",
    plural = "certificates",
    namespaced,
    status = "CertificateStatus",
    derive = "PartialEq",
    shortname = "cert",
    shortname = "certs",
    category = "cert-manager",
    doc = "A Certificate keeps an up-to-date signed X.509 certificate in the Secret named by spec.secretName.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(name = "Secret", type_ = "string", json_path = ".spec.secretName"),
    printcolumn(
        name = "Issuer",
        type_ = "string",
        json_path = ".spec.issuerRef.name",
        priority = 1
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].message"#,
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp",
        description = "CreationTimestamp is a timestamp representing the server time when this object was created."
    )
)]
#[serde(rename_all = "camelCase")]
pub struct CertificateSpec {
    /// Name of the Secret that receives the key and the signed certificate.
    pub secret_name: String,
    /// The issuer that signs this certificate.
    pub issuer_ref: IssuerRef,
    /// Common name; 64 characters at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub common_name: Option<String>,
    /// DNS subject alternative names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_names: Option<Vec<String>>,
    /// IP address subject alternative names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_addresses: Option<Vec<String>>,
    /// URI subject alternative names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uris: Option<Vec<String>>,
    /// Email subject alternative names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_addresses: Option<Vec<String>>,
    /// otherName subject alternative names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other_names: Option<Vec<OtherName>>,
    /// Distinguished name fields beyond the common name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<X509Subject>,
    /// The whole subject as an RFC 4514 string; excludes commonName and subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub literal_subject: Option<String>,
    /// Requested lifetime as a Go duration string; default 90 days, minimum 1 hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// How long before expiry to renew, as a Go duration string; at least 5 minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_before: Option<String>,
    /// Renew when this percentage of the lifetime remains; alternative to renewBefore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_before_percentage: Option<i32>,
    /// Request a CA certificate; adds the `cert sign` usage.
    #[serde(default, rename = "isCA", skip_serializing_if = "Option::is_none")]
    pub is_ca: Option<bool>,
    /// Key usages; empty means `digital signature` + `key encipherment`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usages: Option<Vec<String>>,
    /// How the private key is made and rotated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<CertificatePrivateKey>,
    /// Signature algorithm requested from the issuer (e.g. `SHA256WithRSA`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_algorithm: Option<String>,
    /// Annotations and labels copied onto the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_template: Option<CertificateSecretTemplate>,
    /// Extra keystore files in the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keystores: Option<CertificateKeystores>,
    /// Extra output formats in the Secret (`DER`, `CombinedPEM`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub additional_output_formats: Option<Vec<CertificateAdditionalOutputFormat>>,
    /// How many CertificateRequests to keep; default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_history_limit: Option<i32>,
    /// Whether key usages are encoded in the CSR; default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encode_usages_in_request: Option<bool>,
    /// X.509 name constraints (only meaningful with isCA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_constraints: Option<NameConstraints>,
}

/// An otherName SAN with a UTF-8 string value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OtherName {
    /// Object identifier of the name type, dotted (e.g. `1.3.6.1.4.1.311.20.2.3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oid: Option<String>,
    /// The value, encoded as a UTF8String.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utf8_value: Option<String>,
}

/// Subject fields of the certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct X509Subject {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organizations: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub countries: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organizational_units: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub localities: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provinces: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub street_addresses: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postal_codes: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
}

/// Private key settings. The values are kept as written so that objects from
/// newer cert-manager versions still load; the typed accessors validate them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificatePrivateKey {
    /// `RSA` (default), `ECDSA` or `Ed25519`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
    /// Key size in bits: RSA 2048/4096/8192, ECDSA 256/384/521; ignored for Ed25519.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<i32>,
    /// `PKCS1` (default) or `PKCS8`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<String>,
    /// `Always` (default) makes a new key on every issuance; `Never` reuses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_policy: Option<String>,
}

/// Metadata copied onto the Secret.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateSecretTemplate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
}

/// Keystore outputs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateKeystores {
    /// `keystore.jks` and `truststore.jks`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jks: Option<JksKeystore>,
    /// `keystore.p12` and `truststore.p12`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pkcs12: Option<Pkcs12Keystore>,
}

/// JKS keystore settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JksKeystore {
    /// Whether to write the keystore.
    pub create: bool,
    /// Secret key holding the keystore password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeySelector>,
    /// Literal keystore password; alternative to passwordSecretRef.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Alias of the key entry; default `certificate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
}

/// PKCS#12 keystore settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Pkcs12Keystore {
    /// Whether to write the keystore.
    pub create: bool,
    /// Secret key holding the keystore password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeySelector>,
    /// Literal keystore password; alternative to passwordSecretRef.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Encryption profile: `LegacyRC2` (default), `LegacyDES`, `Modern2023`
    /// or `Modern2026`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["LegacyRC2", "LegacyDES", "Modern2023", "Modern2026"]))]
    pub profile: Option<String>,
}

/// A key in a Secret in the same namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeySelector {
    /// Name of the Secret.
    pub name: String,
    /// Key within the Secret; some consumers have a default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// One extra output format.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateAdditionalOutputFormat {
    /// `DER` (writes `key.der`) or `CombinedPEM` (writes `tls-combined.pem`).
    #[serde(rename = "type")]
    pub type_: String,
}

/// X.509 name constraints.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NameConstraints {
    /// Whether the extension is marked critical.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub critical: Option<bool>,
    /// Names the subordinate certificates may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permitted: Option<NameConstraintItem>,
    /// Names the subordinate certificates must not use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub excluded: Option<NameConstraintItem>,
}

/// One side of a name constraint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NameConstraintItem {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_domains: Option<Vec<String>>,
    /// CIDR ranges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_ranges: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_addresses: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri_domains: Option<Vec<String>>,
}

/// What the certificates controller reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateStatus {
    /// `Ready` and `Issuing`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<CertificateCondition>>,
    /// Start of validity of the certificate in the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<Time>,
    /// End of validity of the certificate in the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<Time>,
    /// When the next renewal is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_time: Option<Time>,
    /// Revision of the issued certificate; requests carry revision + 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i32>,
    /// Secret holding the private key for the issuance in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_private_key_secret_name: Option<String>,
    /// Consecutive failed issuances, for backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_issuance_attempts: Option<i32>,
    /// When the last issuance failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_time: Option<Time>,
}

/// `spec.privateKey.algorithm`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrivateKeyAlgorithm {
    Rsa,
    Ecdsa,
    Ed25519,
}

/// `spec.privateKey.encoding`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrivateKeyEncoding {
    Pkcs1,
    Pkcs8,
}

/// `spec.privateKey.rotationPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RotationPolicy {
    Never,
    Always,
}

impl CertificatePrivateKey {
    /// The algorithm, defaulting to RSA.
    pub fn algorithm(&self) -> Result<PrivateKeyAlgorithm, ApiError> {
        match self.algorithm.as_deref().unwrap_or_default() {
            "" | "RSA" => Ok(PrivateKeyAlgorithm::Rsa),
            "ECDSA" => Ok(PrivateKeyAlgorithm::Ecdsa),
            "Ed25519" => Ok(PrivateKeyAlgorithm::Ed25519),
            other => Err(unsupported(
                "spec.privateKey.algorithm",
                other,
                "RSA, ECDSA, Ed25519",
            )),
        }
    }

    /// The encoding, defaulting to PKCS#1.
    pub fn encoding(&self) -> Result<PrivateKeyEncoding, ApiError> {
        match self.encoding.as_deref().unwrap_or_default() {
            "" | "PKCS1" => Ok(PrivateKeyEncoding::Pkcs1),
            "PKCS8" => Ok(PrivateKeyEncoding::Pkcs8),
            other => Err(unsupported(
                "spec.privateKey.encoding",
                other,
                "PKCS1, PKCS8",
            )),
        }
    }

    /// The rotation policy, defaulting to Always.
    pub fn rotation_policy(&self) -> Result<RotationPolicy, ApiError> {
        match self.rotation_policy.as_deref().unwrap_or_default() {
            "" | "Always" => Ok(RotationPolicy::Always),
            "Never" => Ok(RotationPolicy::Never),
            other => Err(unsupported(
                "spec.privateKey.rotationPolicy",
                other,
                "Never, Always",
            )),
        }
    }
}

fn unsupported(field: &'static str, value: &str, allowed: &'static str) -> ApiError {
    ApiError::UnsupportedValue {
        field,
        value: value.to_owned(),
        allowed,
    }
}

impl CertificateStatus {
    pub fn conditions(&self) -> &[CertificateCondition] {
        self.conditions.as_deref().unwrap_or_default()
    }

    /// Sets a condition; see [`conditions::set`] for the transition-time rule.
    pub fn set_condition(&mut self, condition: CertificateCondition, now: Time) {
        conditions::set(self.conditions.get_or_insert_with(Vec::new), condition, now);
    }
}

impl Certificate {
    pub fn conditions(&self) -> &[CertificateCondition] {
        self.status
            .as_ref()
            .map(|s| s.conditions())
            .unwrap_or_default()
    }

    pub fn condition(&self, condition_type: &str) -> Option<&CertificateCondition> {
        conditions::find(self.conditions(), condition_type)
    }

    /// Ready=True.
    pub fn is_ready(&self) -> bool {
        conditions::has(self.conditions(), types::READY, ConditionStatus::True)
    }

    /// Issuing=True.
    pub fn is_issuing(&self) -> bool {
        conditions::has(self.conditions(), types::ISSUING, ConditionStatus::True)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_key_defaults_and_values() {
        let empty = CertificatePrivateKey::default();
        assert_eq!(empty.algorithm().unwrap(), PrivateKeyAlgorithm::Rsa);
        assert_eq!(empty.encoding().unwrap(), PrivateKeyEncoding::Pkcs1);
        assert_eq!(empty.rotation_policy().unwrap(), RotationPolicy::Always);

        let set = CertificatePrivateKey {
            algorithm: Some("Ed25519".into()),
            size: None,
            encoding: Some("PKCS8".into()),
            rotation_policy: Some("Never".into()),
        };
        assert_eq!(set.algorithm().unwrap(), PrivateKeyAlgorithm::Ed25519);
        assert_eq!(set.encoding().unwrap(), PrivateKeyEncoding::Pkcs8);
        assert_eq!(set.rotation_policy().unwrap(), RotationPolicy::Never);
    }

    #[test]
    fn unknown_private_key_values_name_the_field() {
        let key = CertificatePrivateKey {
            algorithm: Some("rsa".into()),
            ..Default::default()
        };
        let err = key.algorithm().unwrap_err().to_string();
        assert!(
            err.contains("spec.privateKey.algorithm") && err.contains("\"rsa\""),
            "{err}"
        );
    }

    #[test]
    fn ready_and_issuing() {
        let mut cert = Certificate::new("c", CertificateSpec::default());
        assert!(!cert.is_ready());
        let now = Time(jiff::Timestamp::from_second(1).unwrap());
        let status = cert.status.get_or_insert_with(Default::default);
        status.set_condition(
            CertificateCondition::new(types::READY, ConditionStatus::True, "Ready", "ok", Some(1)),
            now.clone(),
        );
        status.set_condition(
            CertificateCondition::new(types::ISSUING, ConditionStatus::False, "Done", "", Some(1)),
            now,
        );
        assert!(cert.is_ready());
        assert!(!cert.is_issuing());
    }
}
