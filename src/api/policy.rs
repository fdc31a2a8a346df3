//! `CertificateRequestPolicy` (`policy.cert-manager.io/v1alpha1`), the
//! resource of cert-manager's approver-policy, read by cert-csi's policy
//! approver (`controller::policy_approver`). The field names and meanings
//! follow approver-policy's API reference, so a policy written for
//! approver-policy means the same here.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of the policy resource.
pub const POLICY_GROUP: &str = "policy.cert-manager.io";
/// The plural resource name, as RBAC names it (verb `use`).
pub const POLICY_RESOURCE: &str = "certificaterequestpolicies";

/// A policy profile: which requests it selects, and what those requests may
/// ask for. Cluster-scoped; a requester may only be judged by a policy it is
/// bound to with the RBAC verb `use`.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "policy.cert-manager.io",
    version = "v1alpha1",
    kind = "CertificateRequestPolicy",
    plural = "certificaterequestpolicies",
    shortname = "crp",
    status = "CertificateRequestPolicyStatus",
    derive = "PartialEq",
    category = "cert-manager",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    doc = "A CertificateRequestPolicy says which CertificateRequests it applies to and what they may request."
)]
#[serde(rename_all = "camelCase")]
pub struct CertificateRequestPolicySpec {
    /// What a selected request may ask for. An attribute left out here must
    /// be absent from the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed: Option<PolicyAllowed>,
    /// Limits on duration and private key; a constraint left out allows all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraints: Option<PolicyConstraints>,
    /// Which requests the policy is for.
    pub selector: PolicySelector,
    /// approver-policy plugin configuration; kept as written, not evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::crd::preserve_unknown_object")]
    pub plugins: Option<serde_json::Value>,
}

/// What the policy approver reports about a policy (kept as written).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateRequestPolicyStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserved_objects")]
    pub conditions: Option<Vec<serde_json::Value>>,
}

/// The allowed attributes of a request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyAllowed {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub common_name: Option<AllowedString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_names: Option<AllowedStringSlice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_addresses: Option<AllowedStringSlice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uris: Option<AllowedStringSlice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_addresses: Option<AllowedStringSlice>,
    /// Whether a request may ask for a CA certificate.
    #[serde(default, rename = "isCA", skip_serializing_if = "Option::is_none")]
    pub is_ca: Option<bool>,
    /// The usages a request may ask for (cert-manager names, e.g. `server auth`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usages: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<AllowedSubject>,
}

/// Allowed values of the subject's attributes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AllowedSubject {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organizations: Option<AllowedStringSlice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub countries: Option<AllowedStringSlice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organizational_units: Option<AllowedStringSlice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub localities: Option<AllowedStringSlice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provinces: Option<AllowedStringSlice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub street_addresses: Option<AllowedStringSlice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postal_codes: Option<AllowedStringSlice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<AllowedString>,
}

/// One allowed string attribute: `value` may hold `*` wildcards.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AllowedString {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The request must carry the attribute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required: Option<bool>,
    /// CEL rules the requested value must pass (`self` is the value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validations: Option<Vec<ValidationRule>>,
}

/// One allowed list attribute: each requested entry must match one of
/// `values` (which may hold `*` wildcards) and pass every validation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AllowedStringSlice {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<String>>,
    /// The request must carry at least one entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validations: Option<Vec<ValidationRule>>,
}

/// A CEL rule. `self` is the requested value; `cr` is a map with the
/// request's `namespace` and `name`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ValidationRule {
    pub rule: String,
    /// Said when the rule fails; defaults to the rule itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Limits on what a request may ask for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyConstraints {
    /// Shortest allowed `spec.duration` (Go duration, e.g. `1h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_duration: Option<String>,
    /// Longest allowed `spec.duration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duration: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<PrivateKeyConstraints>,
}

/// Limits on the request's public key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrivateKeyConstraints {
    /// `RSA`, `ECDSA` or `Ed25519`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
    /// Smallest key size in bits (RSA modulus, ECDSA curve size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_size: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<i64>,
}

/// Which requests a policy is for. At least one of the two must be set
/// (an empty object selects everything); when both are, both must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicySelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_ref: Option<IssuerRefSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<NamespaceSelector>,
}

/// Matches the request's issuerRef; each field may hold `*` wildcards, and
/// a field left out matches anything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRefSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// Matches the request's namespace by name (with `*` wildcards) and labels.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_names: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_labels: Option<BTreeMap<String, String>>,
}

/// An array of objects whose fields the API server keeps as written.
fn preserved_objects(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
    })
}
