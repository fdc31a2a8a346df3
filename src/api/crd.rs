//! The CustomResourceDefinitions, generated from the types in this module.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use kube::CustomResourceExt;

use super::{Certificate, CertificateRequest, CertificateRequestPolicy, ClusterIssuer, Issuer};

/// Schema of a block cert-csi keeps as raw JSON (acme, vault, venafi): an
/// object whose fields the API server must keep rather than prune.
pub(crate) fn preserve_unknown_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// The four cert-manager.io/v1 CRDs, always in this order: CertificateRequest,
/// Certificate, Issuer, ClusterIssuer.
pub fn crds() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![
        CertificateRequest::crd(),
        Certificate::crd(),
        Issuer::crd(),
        ClusterIssuer::crd(),
    ];
    for crd in &mut crds {
        declare_type_meta(crd);
    }
    crds
}

/// Declares `apiVersion`, `kind` and `metadata` at the root of each schema, as
/// upstream's CRDs do. The API server would accept them undeclared, but
/// `kubectl explain` and schema-driven tools only show declared fields.
///
/// `metadata` is exactly `{type: object}`: the API server owns its schema
/// and refuses a CRD whose root `metadata` says anything more, a
/// description included ("must not specify anything other than name and
/// generateName").
fn declare_type_meta(crd: &mut CustomResourceDefinition) {
    let typed = |type_: &str, description: &str| JSONSchemaProps {
        type_: Some(type_.to_owned()),
        description: Some(description.to_owned()),
        ..Default::default()
    };
    let group = crd.spec.group.clone();
    for version in &mut crd.spec.versions {
        let api_version = format!(
            "The versioned schema of this object, {group}/{}.",
            version.name
        );
        let Some(root) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        else {
            continue;
        };
        let properties = root.properties.get_or_insert_with(Default::default);
        properties
            .entry("apiVersion".to_owned())
            .or_insert_with(|| typed("string", &api_version));
        properties
            .entry("kind".to_owned())
            .or_insert_with(|| typed("string", "The REST resource this object represents."));
        properties
            .entry("metadata".to_owned())
            .or_insert_with(|| JSONSchemaProps {
                type_: Some("object".to_owned()),
                ..Default::default()
            });
    }
}

/// The policy.cert-manager.io/v1alpha1 CRD (CertificateRequestPolicy), for
/// the policy approver. Kept apart from [`crds`]: it is only needed where
/// the policy approver runs, and a cluster with approver-policy has it already.
pub fn policy_crds() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![CertificateRequestPolicy::crd()];
    for crd in &mut crds {
        declare_type_meta(crd);
    }
    crds
}

/// [`crds`] as one multi-document YAML stream, byte-for-byte stable between
/// runs so the committed copy in `deploy/crds/` can be checked for drift.
pub fn crds_yaml() -> anyhow::Result<String> {
    yaml(crds())
}

/// [`policy_crds`] as YAML, like [`crds_yaml`].
pub fn policy_crds_yaml() -> anyhow::Result<String> {
    yaml(policy_crds())
}

fn yaml(crds: Vec<CustomResourceDefinition>) -> anyhow::Result<String> {
    let mut out = String::new();
    for crd in crds {
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(&crd)?);
    }
    Ok(out)
}
