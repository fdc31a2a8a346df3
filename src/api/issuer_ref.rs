//! `issuerRef`: which Issuer or ClusterIssuer signs a request.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::GROUP;

/// Kind used when `issuerRef.kind` is missing or empty.
pub const ISSUER_KIND: &str = "Issuer";
/// Kind of the cluster-scoped issuer.
pub const CLUSTER_ISSUER_KIND: &str = "ClusterIssuer";

/// A reference to an issuer (`cmmeta.ObjectReference` upstream).
///
/// `kind` and `group` stay exactly as written, so a round trip preserves the
/// difference between "missing" and "", but every comparison must go through
/// [`IssuerRef::same_issuer`]: upstream once re-issued certificates en masse
/// because "" and `cert-manager.io` compared unequal.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    /// Name of the issuer being referred to.
    pub name: String,
    /// Kind of the issuer being referred to; empty or missing means `Issuer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Group of the issuer being referred to; empty or missing means `cert-manager.io`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

impl IssuerRef {
    /// A reference to a namespaced `Issuer` in the `cert-manager.io` group,
    /// written with explicit kind and group.
    pub fn issuer(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            kind: Some(ISSUER_KIND.to_owned()),
            group: Some(GROUP.to_owned()),
        }
    }

    /// A reference to a `ClusterIssuer` in the `cert-manager.io` group.
    pub fn cluster_issuer(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            kind: Some(CLUSTER_ISSUER_KIND.to_owned()),
            group: Some(GROUP.to_owned()),
        }
    }

    /// The kind, with missing or "" read as `Issuer`.
    pub fn kind_or_default(&self) -> &str {
        non_empty(self.kind.as_deref()).unwrap_or(ISSUER_KIND)
    }

    /// The group, with missing or "" read as `cert-manager.io`.
    pub fn group_or_default(&self) -> &str {
        non_empty(self.group.as_deref()).unwrap_or(GROUP)
    }

    /// The same reference with kind and group spelled out.
    pub fn normalized(&self) -> Self {
        Self {
            name: self.name.clone(),
            kind: Some(self.kind_or_default().to_owned()),
            group: Some(self.group_or_default().to_owned()),
        }
    }

    /// Whether both references name the same issuer once defaults apply.
    pub fn same_issuer(&self, other: &IssuerRef) -> bool {
        self.name == other.name
            && self.kind_or_default() == other.kind_or_default()
            && self.group_or_default() == other.group_or_default()
    }

    /// Whether this refers to an issuer type that cert-manager.io itself
    /// defines (as opposed to an external issuer in another group).
    pub fn is_cert_manager_group(&self) -> bool {
        self.group_or_default() == GROUP
    }

    /// Whether this refers to a cert-manager.io `ClusterIssuer`.
    pub fn is_cluster_issuer(&self) -> bool {
        self.is_cert_manager_group() && self.kind_or_default() == CLUSTER_ISSUER_KIND
    }
}

fn non_empty(value: Option<&str>) -> Option<&str> {
    value.filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str, kind: Option<&str>, group: Option<&str>) -> IssuerRef {
        IssuerRef {
            name: name.into(),
            kind: kind.map(Into::into),
            group: group.map(Into::into),
        }
    }

    #[test]
    fn missing_and_empty_default_alike() {
        for (kind, group) in [
            (None, None),
            (Some(""), Some("")),
            (None, Some("")),
            (Some(""), None),
        ] {
            let reference = r("ca", kind, group);
            assert_eq!(reference.kind_or_default(), "Issuer");
            assert_eq!(reference.group_or_default(), "cert-manager.io");
            assert_eq!(reference.normalized(), IssuerRef::issuer("ca"));
            assert!(!reference.is_cluster_issuer());
        }
    }

    #[test]
    fn explicit_values_are_kept() {
        let reference = r("vault", Some("VaultIssuer"), Some("example.com"));
        assert_eq!(reference.kind_or_default(), "VaultIssuer");
        assert_eq!(reference.group_or_default(), "example.com");
        assert!(!reference.is_cert_manager_group());
        assert_eq!(reference.normalized(), reference);
    }

    #[test]
    fn same_issuer_treats_empty_as_default() {
        let spelled = IssuerRef::issuer("ca");
        for other in [
            r("ca", None, None),
            r("ca", Some(""), Some("")),
            r("ca", Some("Issuer"), None),
        ] {
            assert!(spelled.same_issuer(&other), "{other:?}");
            assert!(other.same_issuer(&spelled), "{other:?}");
        }
    }

    #[test]
    fn same_issuer_sees_real_differences() {
        let base = r("ca", None, None);
        assert!(!base.same_issuer(&r("other", None, None)));
        assert!(!base.same_issuer(&IssuerRef::cluster_issuer("ca")));
        assert!(!base.same_issuer(&r("ca", None, Some("example.com"))));
        // Kinds are case-sensitive in Kubernetes.
        assert!(!base.same_issuer(&r("ca", Some("issuer"), None)));
        assert!(IssuerRef::cluster_issuer("ca").is_cluster_issuer());
        assert!(r("ca", Some("ClusterIssuer"), Some("")).is_cluster_issuer());
        assert!(!r("ca", Some("ClusterIssuer"), Some("example.com")).is_cluster_issuer());
    }

    #[test]
    fn round_trip_keeps_the_written_form() {
        for json in [
            r#"{"name":"ca"}"#,
            r#"{"name":"ca","kind":"","group":""}"#,
            r#"{"name":"ca","kind":"ClusterIssuer","group":"cert-manager.io"}"#,
        ] {
            let parsed: IssuerRef = serde_json::from_str(json).unwrap();
            assert_eq!(serde_json::to_string(&parsed).unwrap(), json);
        }
    }
}
