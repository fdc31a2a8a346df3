//! `Issuer` and `ClusterIssuer`: who signs, sharing one spec.

use std::borrow::Cow;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::{ClusterResourceScope, Resource};
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::conditions::{self, ConditionStatus, IssuerCondition, types};
use super::{ApiError, CLUSTER_ISSUER_KIND, GROUP, VERSION};

/// The issuer configuration; exactly one of the issuer types is set.
///
/// cert-csi signs with `selfSigned` and `ca` itself. The other types are kept
/// as raw JSON: cert-csi never interprets them but must not lose a field when
/// it reads and writes such objects beside upstream cert-manager.
// The printcolumn entries of #[kube] repeat keys by design.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "cert-manager.io",
    version = "v1",
    kind = "Issuer",
    plural = "issuers",
    namespaced,
    status = "IssuerStatus",
    derive = "PartialEq",
    category = "cert-manager",
    doc = "An Issuer signs CertificateRequests in its own namespace.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
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
pub struct IssuerSpec {
    /// Signs each certificate with its own private key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_signed: Option<SelfSignedIssuer>,
    /// Signs with a CA key pair stored in a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<CaIssuer>,
    /// ACME issuer configuration (kept as written; cert-csi does not run ACME).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::crd::preserve_unknown_object")]
    pub acme: Option<serde_json::Value>,
    /// Vault issuer configuration (kept as written; cert-csi does not call Vault).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::crd::preserve_unknown_object")]
    pub vault: Option<serde_json::Value>,
    /// Venafi issuer configuration (kept as written; cert-csi does not call Venafi).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::crd::preserve_unknown_object")]
    pub venafi: Option<serde_json::Value>,
}

/// The `selfSigned` issuer type.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SelfSignedIssuer {
    /// CRL distribution point URLs written into issued certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl_distribution_points: Option<Vec<String>>,
}

/// The `ca` issuer type.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CaIssuer {
    /// Secret with `tls.crt` and `tls.key` of the signing CA. For a
    /// ClusterIssuer it is read from the cluster resource namespace.
    pub secret_name: String,
    /// CRL distribution point URLs written into issued certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl_distribution_points: Option<Vec<String>>,
    /// OCSP server URLs written into issued certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ocsp_servers: Option<Vec<String>>,
    /// CA issuers URLs (AIA) written into issued certificates.
    #[serde(
        default,
        rename = "issuingCertificateURLs",
        skip_serializing_if = "Option::is_none"
    )]
    pub issuing_certificate_urls: Option<Vec<String>>,
}

/// What the issuers controller reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerStatus {
    /// `Ready`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<IssuerCondition>>,
    /// ACME account status (kept as written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::crd::preserve_unknown_object")]
    pub acme: Option<serde_json::Value>,
}

/// Which issuer type a spec configures, borrowed from it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum IssuerType<'a> {
    SelfSigned(&'a SelfSignedIssuer),
    Ca(&'a CaIssuer),
    Acme(&'a serde_json::Value),
    Vault(&'a serde_json::Value),
    Venafi(&'a serde_json::Value),
}

impl IssuerSpec {
    /// The one configured issuer type. `kind` (`Issuer` or `ClusterIssuer`)
    /// only names the object in the error.
    pub fn issuer_type(&self, kind: &'static str) -> Result<IssuerType<'_>, ApiError> {
        let mut found = Vec::new();
        if let Some(v) = &self.self_signed {
            found.push(("selfSigned", IssuerType::SelfSigned(v)));
        }
        if let Some(v) = &self.ca {
            found.push(("ca", IssuerType::Ca(v)));
        }
        if let Some(v) = &self.acme {
            found.push(("acme", IssuerType::Acme(v)));
        }
        if let Some(v) = &self.vault {
            found.push(("vault", IssuerType::Vault(v)));
        }
        if let Some(v) = &self.venafi {
            found.push(("venafi", IssuerType::Venafi(v)));
        }
        match found.len() {
            0 => Err(ApiError::NoIssuerType { kind }),
            1 => Ok(found.remove(0).1),
            _ => Err(ApiError::MultipleIssuerTypes {
                kind,
                found: found.into_iter().map(|(name, _)| name).collect(),
            }),
        }
    }
}

impl IssuerStatus {
    pub fn conditions(&self) -> &[IssuerCondition] {
        self.conditions.as_deref().unwrap_or_default()
    }

    /// Sets a condition; see [`conditions::set`] for the transition-time rule.
    pub fn set_condition(
        &mut self,
        condition: IssuerCondition,
        now: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    ) {
        conditions::set(self.conditions.get_or_insert_with(Vec::new), condition, now);
    }

    /// Ready=True.
    pub fn is_ready(&self) -> bool {
        conditions::has(self.conditions(), types::READY, ConditionStatus::True)
    }
}

/// The cluster-scoped issuer. It has the shape of [`Issuer`] and the same
/// spec; written by hand because the derive produces one kind per spec type.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ClusterIssuer {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: IssuerSpec,
    #[serde(default)]
    pub status: Option<IssuerStatus>,
}

impl ClusterIssuer {
    pub fn new(name: &str, spec: IssuerSpec) -> Self {
        Self {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..Default::default()
            },
            spec,
            status: None,
        }
    }
}

impl Serialize for ClusterIssuer {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let fields = if self.status.is_some() { 5 } else { 4 };
        let mut object = serializer.serialize_struct("ClusterIssuer", fields)?;
        object.serialize_field("apiVersion", &Self::api_version(&()))?;
        object.serialize_field("kind", CLUSTER_ISSUER_KIND)?;
        object.serialize_field("metadata", &self.metadata)?;
        object.serialize_field("spec", &self.spec)?;
        if let Some(status) = &self.status {
            object.serialize_field("status", status)?;
        }
        object.end()
    }
}

impl Resource for ClusterIssuer {
    type DynamicType = ();
    type Scope = ClusterResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        CLUSTER_ISSUER_KIND.into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        GROUP.into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        VERSION.into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "clusterissuers".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl kube::core::object::HasSpec for ClusterIssuer {
    type Spec = IssuerSpec;
    fn spec(&self) -> &IssuerSpec {
        &self.spec
    }
    fn spec_mut(&mut self) -> &mut IssuerSpec {
        &mut self.spec
    }
}

impl kube::core::object::HasStatus for ClusterIssuer {
    type Status = IssuerStatus;
    fn status(&self) -> Option<&IssuerStatus> {
        self.status.as_ref()
    }
    fn status_mut(&mut self) -> &mut Option<IssuerStatus> {
        &mut self.status
    }
}

const CLUSTER_ISSUER_SHORTNAMES: &[&str] = &["ciss"];

impl CustomResourceExt for ClusterIssuer {
    /// The Issuer CRD re-scoped to the cluster and renamed.
    fn crd() -> CustomResourceDefinition {
        let mut crd = Issuer::crd();
        crd.metadata.name = Some(Self::crd_name().to_owned());
        crd.spec.scope = "Cluster".to_owned();
        let names = &mut crd.spec.names;
        names.kind = CLUSTER_ISSUER_KIND.to_owned();
        names.list_kind = Some(format!("{CLUSTER_ISSUER_KIND}List"));
        names.plural = "clusterissuers".to_owned();
        names.singular = Some("clusterissuer".to_owned());
        names.short_names = Some(
            CLUSTER_ISSUER_SHORTNAMES
                .iter()
                .map(|s| s.to_string())
                .collect(),
        );
        for version in &mut crd.spec.versions {
            if let Some(props) = version
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut())
            {
                props.title = Some(CLUSTER_ISSUER_KIND.to_owned());
                props.description = Some(
                    "A ClusterIssuer signs CertificateRequests in every namespace.".to_owned(),
                );
            }
        }
        crd
    }

    fn crd_name() -> &'static str {
        "clusterissuers.cert-manager.io"
    }

    fn api_resource() -> kube::core::ApiResource {
        kube::core::ApiResource::erase::<Self>(&())
    }

    fn shortnames() -> &'static [&'static str] {
        CLUSTER_ISSUER_SHORTNAMES
    }
}

impl Issuer {
    pub fn is_ready(&self) -> bool {
        self.status.as_ref().is_some_and(IssuerStatus::is_ready)
    }
}

impl ClusterIssuer {
    pub fn is_ready(&self) -> bool {
        self.status.as_ref().is_some_and(IssuerStatus::is_ready)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_issuer_type() {
        let none = IssuerSpec::default();
        let err = none.issuer_type("Issuer").unwrap_err().to_string();
        assert!(err.contains("selfSigned, ca, acme"), "{err}");

        let ca = IssuerSpec {
            ca: Some(CaIssuer {
                secret_name: "root".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(
            matches!(ca.issuer_type("Issuer"), Ok(IssuerType::Ca(c)) if c.secret_name == "root")
        );

        let both = IssuerSpec {
            self_signed: Some(SelfSignedIssuer::default()),
            acme: Some(serde_json::json!({})),
            ..ca
        };
        let err = both.issuer_type("ClusterIssuer").unwrap_err();
        assert_eq!(
            err,
            ApiError::MultipleIssuerTypes {
                kind: "ClusterIssuer",
                found: vec!["selfSigned", "ca", "acme"]
            }
        );
    }

    #[test]
    fn cluster_issuer_serializes_with_type_meta() {
        let issuer = ClusterIssuer::new(
            "selfsigned",
            IssuerSpec {
                self_signed: Some(SelfSignedIssuer::default()),
                ..Default::default()
            },
        );
        let value = serde_json::to_value(&issuer).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "apiVersion": "cert-manager.io/v1",
                "kind": "ClusterIssuer",
                "metadata": {"name": "selfsigned"},
                "spec": {"selfSigned": {}},
            })
        );
        let back: ClusterIssuer = serde_json::from_value(value).unwrap();
        assert_eq!(back, issuer);
        assert_eq!(
            ClusterIssuer::url_path(&(), None),
            "/apis/cert-manager.io/v1/clusterissuers"
        );
    }
}
