//! SPIFFE identity rules shared by the node plugin (which asks for an
//! identity) and the controller's policy approver (which checks it).
//!
//! Both sides must derive the same ID from the same inputs, and mark a
//! request the same way, so everything they have to agree on lives here and
//! nowhere else. The module is pure: no I/O, no clock, no Kubernetes client.
//!
//! # API (kept small and stable; the node side imports it)
//! - [`TrustDomain::parse`]: a SPIFFE trust domain (`example.org`).
//! - [`IdTemplate::parse`] / [`IdTemplate::render`]: the path template,
//!   default [`DEFAULT_ID_TEMPLATE`]; only `{namespace}` and
//!   `{serviceaccount}` may appear.
//! - [`spiffe_id`]: `spiffe://<trust domain><rendered path>` in one call.
//! - [`parse_spiffe_id`]: splits an ID back into trust domain and path, for
//!   peers that verify a presented identity.
//! - [`service_account_username`] / [`parse_service_account_username`]:
//!   the `system:serviceaccount:<ns>:<sa>` form the API server writes into
//!   `spec.username`.
//! - [`parse_key_type`] / [`key_type_name`]: the key type names used by
//!   flags (`P-256`, `P-384`, `P-521`, `Ed25519`).
//! - Constants: the driver name, the annotations a SPIFFE request carries,
//!   the default duration and the exact usages.
//!
//! # How a request is marked
//! A CertificateRequest is a SPIFFE request when it carries
//! [`ANNOTATION_IDENTITY`] (value: the SPIFFE ID the node side derived).
//! The value is informational: the approver re-derives the ID from the
//! requester and never trusts the annotation.
//!
//! In node-account mode (b) the request is created with the node plugin's own
//! ServiceAccount, so the requester says nothing about the pod. The node side
//! then also sets [`ANNOTATION_POD_NAME`], [`ANNOTATION_POD_UID`] and
//! [`ANNOTATION_NODE`]; the request lives in the pod's namespace. The
//! approver looks the pod up and checks uid, node and ServiceAccount.

use std::time::Duration;

use thiserror::Error;

use crate::pki::{Curve, KeyAlgorithm, Usage};

/// The CSI driver name of the SPIFFE mode (same as csi-driver-spiffe).
pub const DRIVER_NAME: &str = "spiffe.csi.cert-manager.io";

/// Marks a CertificateRequest as a SPIFFE request; value = the requested ID.
pub const ANNOTATION_IDENTITY: &str = "spiffe.csi.cert-manager.io/identity";
/// Mode (b): the name of the pod the request is for (namespace = the request's).
pub const ANNOTATION_POD_NAME: &str = "spiffe.csi.cert-manager.io/pod-name";
/// Mode (b): the uid of that pod, so a recreated pod of the same name does
/// not inherit a request made for its predecessor.
pub const ANNOTATION_POD_UID: &str = "spiffe.csi.cert-manager.io/pod-uid";
/// Mode (b): the node the pod runs on, as the node plugin knows it.
pub const ANNOTATION_NODE: &str = "spiffe.csi.cert-manager.io/node";

/// The `spec.extra` key a pod-bound ServiceAccount token carries with the
/// name of the node the bound pod runs on (set by the API server, not the
/// caller, so the approver may trust it).
pub const EXTRA_NODE_NAME: &str = "authentication.kubernetes.io/node-name";

/// The path template csi-driver-spiffe hard-codes.
pub const DEFAULT_ID_TEMPLATE: &str = "/ns/{namespace}/sa/{serviceaccount}";
/// csi-driver-spiffe's default certificate lifetime.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(3600);

/// The usages every SPIFFE certificate has, no more and no fewer.
pub const USAGES: [Usage; 4] = [
    Usage::DigitalSignature,
    Usage::KeyEncipherment,
    Usage::ServerAuth,
    Usage::ClientAuth,
];

/// Key types a SPIFFE identity may use.
pub const KEY_TYPES: [KeyAlgorithm; 4] = [
    KeyAlgorithm::Ecdsa(Curve::P256),
    KeyAlgorithm::Ecdsa(Curve::P384),
    KeyAlgorithm::Ecdsa(Curve::P521),
    KeyAlgorithm::Ed25519,
];

/// The SPIFFE spec caps an ID (as a URI) at 2048 bytes.
const MAX_ID_LEN: usize = 2048;
/// A trust domain is a DNS-like host name; 255 keeps it usable as one.
const MAX_TRUST_DOMAIN_LEN: usize = 255;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SpiffeError {
    #[error(
        "trust domain {value:?}: {reason}; use lowercase letters, digits, '.', '-' and '_' only, e.g. \"cluster.local\""
    )]
    TrustDomain { value: String, reason: String },
    #[error(
        "ID template {value:?}: {reason}; write a path such as \"/ns/{{namespace}}/sa/{{serviceaccount}}\" using only those two variables"
    )]
    Template { value: String, reason: String },
    #[error(
        "{field} {value:?} cannot be part of a SPIFFE ID path: {reason}; Kubernetes names (lowercase letters, digits, '-', '.') always fit"
    )]
    PathValue {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error(
        "SPIFFE ID {value:?}: {reason}; an ID looks like \"spiffe://example.org/ns/shop/sa/billing\""
    )]
    Id { value: String, reason: String },
    #[error(
        "key type {value:?} is not allowed for SPIFFE identities; choose one of P-256, P-384, P-521, Ed25519"
    )]
    KeyType { value: String },
}

/// A validated trust domain.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Validates a trust domain name as the SPIFFE-ID spec (section 2.1)
    /// defines it: non-empty, lowercase `[a-z0-9._-]`. A `spiffe://` prefix
    /// is refused rather than stripped, so a flag cannot hold two forms.
    pub fn parse(value: &str) -> Result<TrustDomain, SpiffeError> {
        let bad = |reason: &str| SpiffeError::TrustDomain {
            value: value.to_string(),
            reason: reason.to_string(),
        };
        if value.is_empty() {
            return Err(bad("it is empty"));
        }
        if value.contains("://") {
            return Err(bad("give the bare name without a scheme"));
        }
        if value.len() > MAX_TRUST_DOMAIN_LEN {
            return Err(bad("it is longer than 255 bytes"));
        }
        if let Some(c) = value
            .chars()
            .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
        {
            return Err(bad(&format!("character {c:?} is not allowed")));
        }
        Ok(TrustDomain(value.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One piece of a parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    Namespace,
    ServiceAccount,
}

/// A validated path template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdTemplate {
    source: String,
    parts: Vec<Part>,
}

/// The SPIFFE path segment alphabet (SPIFFE-ID spec section 2.2).
fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

/// Checks a rendered path: it starts with '/', its segments are non-empty,
/// not "." or "..", and use only the path alphabet.
fn check_path(path: &str) -> Result<(), String> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err("the path must start with '/'".into());
    };
    for segment in rest.split('/') {
        if segment.is_empty() {
            return Err("the path has an empty segment (\"//\" or a trailing '/')".into());
        }
        if segment == "." || segment == ".." {
            return Err(format!("the segment {segment:?} is not allowed"));
        }
        if let Some(c) = segment.chars().find(|c| !is_path_char(*c)) {
            return Err(format!(
                "character {c:?} is not allowed (only letters, digits, '.', '-', '_')"
            ));
        }
    }
    Ok(())
}

impl IdTemplate {
    /// Parses a template. It must be a valid SPIFFE path once each variable
    /// is replaced by a name, and must use `{serviceaccount}`: without it
    /// every workload of a namespace would share one identity, which is a
    /// configuration mistake, not a policy.
    pub fn parse(value: &str) -> Result<IdTemplate, SpiffeError> {
        let bad = |reason: String| SpiffeError::Template {
            value: value.to_string(),
            reason,
        };
        let mut parts = Vec::new();
        let mut rest = value;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('{') {
                let end = after
                    .find('}')
                    .ok_or_else(|| bad("a '{' has no closing '}'".into()))?;
                match &after[..end] {
                    "namespace" => parts.push(Part::Namespace),
                    "serviceaccount" => parts.push(Part::ServiceAccount),
                    other => {
                        return Err(bad(format!(
                            "the variable {{{other}}} is unknown (only {{namespace}} and {{serviceaccount}} exist)"
                        )));
                    }
                }
                rest = &after[end + 1..];
            } else {
                let end = rest.find('{').unwrap_or(rest.len());
                let literal = &rest[..end];
                if literal.contains('}') {
                    return Err(bad("a '}' has no opening '{'".into()));
                }
                parts.push(Part::Literal(literal.to_string()));
                rest = &rest[end..];
            }
        }
        if !parts.contains(&Part::ServiceAccount) {
            return Err(bad("it does not contain {serviceaccount}".into()));
        }
        let template = IdTemplate {
            source: value.to_string(),
            parts,
        };
        // A sample rendering proves the literal parts form a valid path.
        let sample = template.render_unchecked("ns", "sa");
        check_path(&sample).map_err(bad)?;
        Ok(template)
    }

    fn render_unchecked(&self, namespace: &str, service_account: &str) -> String {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Literal(s) => s.as_str(),
                Part::Namespace => namespace,
                Part::ServiceAccount => service_account,
            })
            .collect()
    }

    /// The path for one workload. Each value must be a single non-empty path
    /// segment, so a name cannot smuggle in a '/' and take over another ID.
    pub fn render(&self, namespace: &str, service_account: &str) -> Result<String, SpiffeError> {
        for (field, value) in [
            ("namespace", namespace),
            ("serviceaccount", service_account),
        ] {
            let bad = |reason: String| SpiffeError::PathValue {
                field,
                value: value.to_string(),
                reason,
            };
            check_path(&format!("/{value}")).map_err(bad)?;
        }
        Ok(self.render_unchecked(namespace, service_account))
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl Default for IdTemplate {
    fn default() -> Self {
        IdTemplate::parse(DEFAULT_ID_TEMPLATE).expect("the default template is valid")
    }
}

/// `spiffe://<trust domain><path>` for a workload; validates every input.
pub fn spiffe_id(
    trust_domain: &str,
    template: &str,
    namespace: &str,
    service_account: &str,
) -> Result<String, SpiffeError> {
    let td = TrustDomain::parse(trust_domain)?;
    let template = IdTemplate::parse(template)?;
    id_for(&td, &template, namespace, service_account)
}

/// [`spiffe_id`] with already parsed parts (no re-parsing per request).
pub fn id_for(
    trust_domain: &TrustDomain,
    template: &IdTemplate,
    namespace: &str,
    service_account: &str,
) -> Result<String, SpiffeError> {
    let path = template.render(namespace, service_account)?;
    let id = format!("spiffe://{}{path}", trust_domain.as_str());
    if id.len() > MAX_ID_LEN {
        return Err(SpiffeError::Id {
            value: id,
            reason: "it is longer than 2048 bytes".into(),
        });
    }
    Ok(id)
}

/// Splits a SPIFFE ID into trust domain and path (path may be empty).
pub fn parse_spiffe_id(id: &str) -> Result<(TrustDomain, String), SpiffeError> {
    let bad = |reason: String| SpiffeError::Id {
        value: id.to_string(),
        reason,
    };
    let rest = id
        .strip_prefix("spiffe://")
        .ok_or_else(|| bad("the scheme is not \"spiffe://\"".into()))?;
    if id.len() > MAX_ID_LEN {
        return Err(bad("it is longer than 2048 bytes".into()));
    }
    let (td, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let td = TrustDomain::parse(td).map_err(|e| bad(e.to_string()))?;
    if !path.is_empty() {
        check_path(path).map_err(bad)?;
    }
    Ok((td, path.to_string()))
}

/// The user name the API server gives a ServiceAccount.
pub fn service_account_username(namespace: &str, service_account: &str) -> String {
    format!("system:serviceaccount:{namespace}:{service_account}")
}

/// `(namespace, name)` from `system:serviceaccount:<ns>:<name>`, or `None`
/// for any other user (including malformed ones with extra colons).
pub fn parse_service_account_username(username: &str) -> Option<(&str, &str)> {
    let rest = username.strip_prefix("system:serviceaccount:")?;
    let (ns, sa) = rest.split_once(':')?;
    if ns.is_empty() || sa.is_empty() || sa.contains(':') {
        return None;
    }
    Some((ns, sa))
}

/// Parses a key type name (`P-256`, `P-384`, `P-521`, `Ed25519`; case-insensitive,
/// `ecdsa-p256` style accepted too).
pub fn parse_key_type(value: &str) -> Result<KeyAlgorithm, SpiffeError> {
    let normal: String = value
        .chars()
        .filter(|c| *c != '-' && *c != '_')
        .collect::<String>()
        .to_ascii_lowercase();
    match normal.as_str() {
        "p256" | "ecdsap256" => Ok(KeyAlgorithm::Ecdsa(Curve::P256)),
        "p384" | "ecdsap384" => Ok(KeyAlgorithm::Ecdsa(Curve::P384)),
        "p521" | "ecdsap521" => Ok(KeyAlgorithm::Ecdsa(Curve::P521)),
        "ed25519" => Ok(KeyAlgorithm::Ed25519),
        _ => Err(SpiffeError::KeyType {
            value: value.to_string(),
        }),
    }
}

/// The flag name of an allowed key type; `None` for types SPIFFE refuses.
pub fn key_type_name(algorithm: KeyAlgorithm) -> Option<&'static str> {
    match algorithm {
        KeyAlgorithm::Ecdsa(Curve::P256) => Some("P-256"),
        KeyAlgorithm::Ecdsa(Curve::P384) => Some("P-384"),
        KeyAlgorithm::Ecdsa(Curve::P521) => Some("P-521"),
        KeyAlgorithm::Ed25519 => Some("Ed25519"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_template_gives_the_csi_driver_spiffe_id() {
        assert_eq!(
            spiffe_id("cluster.local", DEFAULT_ID_TEMPLATE, "shop", "billing").unwrap(),
            "spiffe://cluster.local/ns/shop/sa/billing"
        );
        assert_eq!(IdTemplate::default().as_str(), DEFAULT_ID_TEMPLATE);
    }

    #[test]
    fn custom_templates_use_only_the_two_variables() {
        let t = IdTemplate::parse("/k8s/{serviceaccount}.{namespace}").unwrap();
        assert_eq!(t.render("shop", "billing").unwrap(), "/k8s/billing.shop");
        for (bad, needle) in [
            ("/ns/{namespace}/pod/{podname}", "{podname}"),
            ("/ns/{namespace}", "does not contain {serviceaccount}"),
            ("ns/{serviceaccount}", "start with '/'"),
            ("/a//{serviceaccount}", "empty segment"),
            ("/{serviceaccount}/", "empty segment"),
            ("/../{serviceaccount}", "\"..\""),
            ("/a b/{serviceaccount}", "' '"),
            ("/{serviceaccount", "no closing"),
            ("/x}/{serviceaccount}", "no opening"),
        ] {
            let err = IdTemplate::parse(bad).unwrap_err().to_string();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn names_cannot_escape_their_segment() {
        let t = IdTemplate::default();
        let err = t.render("shop", "billing/../admin").unwrap_err();
        assert!(
            matches!(
                err,
                SpiffeError::PathValue {
                    field: "serviceaccount",
                    ..
                }
            ),
            "{err}"
        );
        assert!(t.render("", "a").is_err());
        assert!(t.render("..", "a").is_err());
    }

    #[test]
    fn trust_domains_follow_the_spiffe_alphabet() {
        for ok in ["example.org", "cluster.local", "td_1-x"] {
            assert_eq!(TrustDomain::parse(ok).unwrap().as_str(), ok);
        }
        for bad in ["", "Example.org", "spiffe://example.org", "a/b", "a:1"] {
            assert!(TrustDomain::parse(bad).is_err(), "{bad}");
        }
        assert!(TrustDomain::parse(&"a".repeat(256)).is_err());
    }

    #[test]
    fn ids_round_trip_and_bad_ids_are_refused() {
        let id = spiffe_id("example.org", DEFAULT_ID_TEMPLATE, "shop", "billing").unwrap();
        let (td, path) = parse_spiffe_id(&id).unwrap();
        assert_eq!(td.as_str(), "example.org");
        assert_eq!(path, "/ns/shop/sa/billing");
        assert_eq!(parse_spiffe_id("spiffe://example.org").unwrap().1, "");
        for bad in [
            "https://example.org/x",
            "spiffe://Example.org/x",
            "spiffe://example.org/x/",
            "spiffe://example.org//x",
            "spiffe:///x",
        ] {
            assert!(parse_spiffe_id(bad).is_err(), "{bad}");
        }
        let long = format!("/{}/{{serviceaccount}}", "a".repeat(2100));
        let err = spiffe_id("example.org", &long, "shop", "billing").unwrap_err();
        assert!(err.to_string().contains("2048"), "{err}");
    }

    #[test]
    fn service_account_usernames() {
        let u = service_account_username("shop", "billing");
        assert_eq!(u, "system:serviceaccount:shop:billing");
        assert_eq!(
            parse_service_account_username(&u),
            Some(("shop", "billing"))
        );
        for bad in [
            "system:serviceaccount:shop",
            "system:serviceaccount::billing",
            "system:serviceaccount:shop:",
            "system:serviceaccount:shop:a:b",
            "alice",
            "system:node:n1",
        ] {
            assert_eq!(parse_service_account_username(bad), None, "{bad}");
        }
    }

    #[test]
    fn key_types() {
        for k in KEY_TYPES {
            let name = key_type_name(k).unwrap();
            assert_eq!(parse_key_type(name).unwrap(), k);
        }
        assert_eq!(
            parse_key_type("ecdsa-p384").unwrap(),
            KeyAlgorithm::Ecdsa(Curve::P384)
        );
        assert!(parse_key_type("RSA").is_err());
        assert_eq!(
            parse_key_type("P-521").unwrap(),
            KeyAlgorithm::Ecdsa(Curve::P521)
        );
        assert_eq!(key_type_name(KeyAlgorithm::Rsa { bits: 2048 }), None);
    }
}
