//! The SPIFFE driver's volumes (`spiffe.csi.cert-manager.io`), node side:
//! its flags, its one attribute, and the pod token it may create requests
//! with.
//!
//! Unlike `csi.cert-manager.io`, a pod chooses nothing about its identity:
//! the ID comes from the pod's namespace and ServiceAccount (as the kubelet
//! reports them) and the node plugin's flags, and everything else is fixed.
//! The result is an ordinary [`VolumeSpec`], so publish, renewal, recovery
//! and the trust bundle work exactly as for the other driver. What else
//! differs (the CSR's extensions, which client creates the request) is
//! decided in `node::driver`; the ID rules both sides share are in
//! `spiffe_id`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use thiserror::Error;

use crate::pki::{KeyAlgorithm, KeyEncoding, KeySpec, SanSpec, SubjectSpec};
use crate::spiffe_id::{self as spiffe, IdTemplate, SpiffeError, TrustDomain};
use crate::volume::{
    self, AttributeError, AttributeWarning, IssuerRef, PublishInput, SecretString, VolumeSpec,
    kubelet,
};

/// The prefix of the SPIFFE driver's attributes.
pub const PREFIX: &str = "spiffe.csi.cert-manager.io/";
/// The one attribute: the group that may read the files.
pub const FS_GROUP: &str = "spiffe.csi.cert-manager.io/fs-group";

/// Which identity creates the CertificateRequest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestMode {
    /// The pod's own ServiceAccount token (from the kubelet's
    /// `tokenRequests`): the API server records the pod's ServiceAccount as
    /// the requester. Every workload ServiceAccount needs RBAC to create
    /// CertificateRequests.
    PodToken,
    /// The node plugin's own identity; the request names the pod and the
    /// node, and the approver checks that binding against the API.
    NodeAccount,
}

impl RequestMode {
    pub const NAMES: [&'static str; 2] = ["pod-token", "node-account"];

    pub fn parse(value: &str) -> Result<RequestMode, String> {
        match value {
            "pod-token" => Ok(RequestMode::PodToken),
            "node-account" => Ok(RequestMode::NodeAccount),
            other => Err(format!(
                "{other:?} is not a request mode; use pod-token (the pod's ServiceAccount token creates the request) or node-account (the node plugin's own identity creates it)"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            RequestMode::PodToken => "pod-token",
            RequestMode::NodeAccount => "node-account",
        }
    }
}

/// The SPIFFE driver's settings, all from flags: a pod cannot change them.
#[derive(Clone, Debug)]
pub struct SpiffeConfig {
    pub trust_domain: TrustDomain,
    pub template: IdTemplate,
    pub key: KeyAlgorithm,
    pub duration: Duration,
    /// The issuer requests go to now: the flags' (`--spiffe-issuer-*`), or
    /// the runtime issuance ConfigMap's while it holds a valid one.
    pub issuer: IssuerSlot,
    /// csi-driver-spiffe's `--runtime-issuance-config-map-{namespace,name}`.
    pub runtime_config_map: Option<(String, String)>,
    pub mode: RequestMode,
    /// The audience whose token (from `serviceAccount.tokens`) creates the
    /// request in pod-token mode; "" is the API server's default audience.
    pub audience: String,
    /// csi-driver-spiffe's `--file-name-certificate`, `--file-name-key` and
    /// `--file-name-ca`.
    pub files: SpiffeFiles,
    /// csi-driver-spiffe's `--extra-certificate-request-annotations`, added
    /// to every request beside the driver's own (which they cannot replace).
    pub extra_annotations: BTreeMap<String, String>,
}

/// The issuer of new SPIFFE requests, switched at run time by the runtime
/// issuance ConfigMap (see `node::runtime_issuer`): its issuer while it has
/// a valid one, else the flags' (which may be absent). Clones share it.
#[derive(Clone, Debug, Default)]
pub struct IssuerSlot {
    fallback: Option<IssuerRef>,
    runtime: Arc<RwLock<Option<IssuerRef>>>,
}

impl IssuerSlot {
    pub fn fixed(issuer: Option<IssuerRef>) -> IssuerSlot {
        IssuerSlot {
            fallback: issuer,
            runtime: Arc::default(),
        }
    }

    /// The issuer a request made now goes to; `None` when neither the
    /// ConfigMap nor the flags name one.
    pub fn current(&self) -> Option<IssuerRef> {
        self.runtime
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .or_else(|| self.fallback.clone())
    }

    /// The ConfigMap's issuer from now on; `None` falls back to the flags'.
    pub fn set_runtime(&self, issuer: Option<IssuerRef>) {
        *self.runtime.write().unwrap_or_else(|p| p.into_inner()) = issuer;
    }
}

/// Checks an issuer reference as the API would accept it.
pub fn checked_issuer(
    name: &str,
    kind: &str,
    group: &str,
) -> Result<IssuerRef, (&'static str, String, &'static str)> {
    let is_name = |v: &str| {
        !v.is_empty()
            && v.len() <= 253
            && v.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    for (field, value) in [("name", name), ("group", group)] {
        if !is_name(value) {
            return Err((
                field,
                value.to_string(),
                "is not a DNS subdomain (lowercase letters, digits, '-' and '.')",
            ));
        }
    }
    if !kind.starts_with(|c: char| c.is_ascii_alphabetic())
        || !kind.chars().all(|c| c.is_ascii_alphanumeric())
    {
        return Err((
            "kind",
            kind.to_string(),
            "is not a Kubernetes kind (a letter followed by letters and digits, e.g. ClusterIssuer)",
        ));
    }
    Ok(IssuerRef {
        name: name.to_string(),
        kind: kind.to_string(),
        group: group.to_string(),
    })
}

/// The names of a SPIFFE volume's files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpiffeFiles {
    pub certificate: String,
    pub key: String,
    pub ca: String,
}

impl Default for SpiffeFiles {
    fn default() -> Self {
        SpiffeFiles {
            certificate: volume::DEFAULT_CERTIFICATE_FILE.to_owned(),
            key: volume::DEFAULT_PRIVATE_KEY_FILE.to_owned(),
            ca: volume::DEFAULT_CA_FILE.to_owned(),
        }
    }
}

/// A rejected `--spiffe-*` flag.
#[derive(Debug, Error)]
pub enum SpiffeConfigError {
    #[error("--spiffe-trust-domain: {0}")]
    TrustDomain(SpiffeError),
    #[error("--spiffe-id-template: {0}")]
    Template(SpiffeError),
    #[error("--spiffe-key-algorithm: {0}")]
    Key(SpiffeError),
    #[error(
        "--spiffe-duration: {0:?} is shorter than 10s; SPIFFE certificates renew at two thirds of their lifetime, so a shorter one would renew almost continuously (csi-driver-spiffe uses 1h)"
    )]
    Duration(Duration),
    #[error(
        "--spiffe-issuer-name: is required with --driver-name {driver}; set it to the Issuer or ClusterIssuer that signs SPIFFE certificates"
    )]
    IssuerMissing { driver: &'static str },
    #[error("--file-name-{flag}: {reason}")]
    FileName { flag: &'static str, reason: String },
    #[error(
        "--extra-certificate-request-annotations: {detail}; write key=value pairs separated by commas, e.g. team=payments,cost-center=42"
    )]
    Annotation { detail: String },
    #[error("--spiffe-issuer-{field}: {value:?} {reason}")]
    Issuer {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
}

/// The flags of the SPIFFE driver, as given.
#[derive(Clone, Debug)]
pub struct SpiffeFlags<'a> {
    pub trust_domain: &'a str,
    pub template: &'a str,
    pub key: &'a str,
    pub duration: Duration,
    pub issuer_name: Option<&'a str>,
    pub issuer_kind: &'a str,
    pub issuer_group: &'a str,
    pub mode: RequestMode,
    pub audience: &'a str,
    pub files: SpiffeFiles,
    /// `key=value,key=value`, as the flag is written.
    pub extra_annotations: &'a str,
    /// The runtime issuance ConfigMap, `(namespace, name)`.
    pub runtime_config_map: Option<(&'a str, &'a str)>,
}

/// Parses `--extra-certificate-request-annotations` (pflag's
/// StringToString: comma-separated `key=value` pairs). Keys must be
/// annotation keys, and none may be one the driver or the approver reads.
pub fn parse_extra_annotations(text: &str) -> Result<BTreeMap<String, String>, SpiffeConfigError> {
    let mut out = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let fail = |detail: String| SpiffeConfigError::Annotation { detail };
        let Some((key, value)) = pair.split_once('=') else {
            return Err(fail(format!("{} has no '='", volume::short_quote(pair))));
        };
        let (key, value) = (key.trim(), value.trim());
        // A key may go without a prefix; its name part follows the same
        // rules either way.
        let qualified = if key.contains('/') {
            key.to_owned()
        } else {
            format!("prefix.example/{key}")
        };
        if let Err(message) = crate::volume::rules::check_annotation_key(&qualified) {
            return Err(fail(message));
        }
        let domain = key.split_once('/').map(|(d, _)| d).unwrap_or("");
        if domain.ends_with("cert-manager.io") {
            return Err(fail(format!(
                "{} is in a cert-manager.io domain, whose annotations the driver and approvers set and read; use a key of your own domain",
                volume::short_quote(key)
            )));
        }
        if out.insert(key.to_owned(), value.to_owned()).is_some() {
            return Err(fail(format!("{} is given twice", volume::short_quote(key))));
        }
    }
    Ok(out)
}

impl SpiffeConfig {
    /// Validates the flags once, at start, so a bad flag stops the plugin
    /// instead of failing every pod.
    pub fn from_flags(flags: &SpiffeFlags<'_>) -> Result<SpiffeConfig, SpiffeConfigError> {
        let trust_domain =
            TrustDomain::parse(flags.trust_domain).map_err(SpiffeConfigError::TrustDomain)?;
        let template = IdTemplate::parse(flags.template).map_err(SpiffeConfigError::Template)?;
        let key = spiffe::parse_key_type(flags.key).map_err(SpiffeConfigError::Key)?;
        if flags.duration < Duration::from_secs(10) {
            return Err(SpiffeConfigError::Duration(flags.duration));
        }
        // With a runtime issuance ConfigMap the flags' issuer is only the
        // fallback, and may be left out (csi-driver-spiffe allows that too).
        let fallback = match flags.issuer_name.filter(|n| !n.is_empty()) {
            Some(name) => Some(
                checked_issuer(name, flags.issuer_kind, flags.issuer_group).map_err(
                    |(field, value, reason)| SpiffeConfigError::Issuer {
                        field,
                        value,
                        reason,
                    },
                )?,
            ),
            None if flags.runtime_config_map.is_some() => None,
            None => {
                return Err(SpiffeConfigError::IssuerMissing {
                    driver: spiffe::DRIVER_NAME,
                });
            }
        };
        for (flag, name) in [
            ("certificate", &flags.files.certificate),
            ("key", &flags.files.key),
            ("ca", &flags.files.ca),
        ] {
            crate::volume::rules::check_file_name(name)
                .map_err(|reason| SpiffeConfigError::FileName { flag, reason })?;
        }
        let names = [&flags.files.certificate, &flags.files.key, &flags.files.ca];
        if names
            .iter()
            .enumerate()
            .any(|(i, n)| names[..i].contains(n))
        {
            return Err(SpiffeConfigError::FileName {
                flag: "certificate",
                reason: format!(
                    "the certificate, key and CA files need three different names; got {}, {} and {}",
                    names[0], names[1], names[2]
                ),
            });
        }
        let extra_annotations = parse_extra_annotations(flags.extra_annotations)?;
        Ok(SpiffeConfig {
            trust_domain,
            template,
            key,
            duration: flags.duration,
            issuer: IssuerSlot::fixed(fallback),
            runtime_config_map: flags
                .runtime_config_map
                .map(|(ns, name)| (ns.to_owned(), name.to_owned())),
            mode: flags.mode,
            audience: flags.audience.to_string(),
            files: flags.files.clone(),
            extra_annotations,
        })
    }
}

fn error(attribute: &str, message: impl Into<String>) -> AttributeError {
    AttributeError {
        attribute: attribute.to_string(),
        message: message.into(),
    }
}

/// Validates a publish request to the SPIFFE driver and builds its spec.
/// `node_id` is recorded on the request, so the approver can check that the
/// pod runs where the request came from.
pub fn parse(
    input: &PublishInput<'_>,
    config: &SpiffeConfig,
    node_id: &str,
) -> Result<VolumeSpec, AttributeError> {
    let ctx = input.context;
    let pod = volume::parse_kubelet_fields(input)?;
    let warnings = check_keys(ctx)?;

    let id = spiffe::id_for(
        &config.trust_domain,
        &config.template,
        &pod.namespace,
        &pod.service_account,
    )
    .map_err(|e| {
        let attribute = match &e {
            SpiffeError::PathValue {
                field: "namespace", ..
            } => kubelet::POD_NAMESPACE,
            _ => kubelet::SERVICE_ACCOUNT_NAME,
        };
        error(attribute, e.to_string())
    })?;
    let fs_group = volume::fs_group_for(ctx, FS_GROUP, input.volume_mount_group)?;
    let credential_bundle_file = volume::credential_bundle_file(ctx)?;
    let mut files = vec![
        ("--file-name-certificate", config.files.certificate.as_str()),
        ("--file-name-key", config.files.key.as_str()),
        ("--file-name-ca", config.files.ca.as_str()),
    ];
    if let Some(name) = &credential_bundle_file {
        files.push((volume::CREDENTIAL_BUNDLE_FILE, name.as_str()));
    }
    volume::check_distinct_files(&files)?;

    let tokens = ctx
        .get(kubelet::SERVICE_ACCOUNT_TOKENS)
        .filter(|t| !t.is_empty())
        .map(|t| SecretString::new(t.clone()));
    // The operator's extra annotations first, so the driver's own win.
    let mut annotations = config.extra_annotations.clone();
    annotations.extend(request_annotations(&id, &pod.name, &pod.uid, node_id));

    Ok(VolumeSpec {
        volume_id: input.volume_id.to_string(),
        target_path: PathBuf::from(input.target_path),
        // Empty when no issuer is configured yet; the publish then fails
        // as Unavailable, naming the ConfigMap (Driver::check_credentials).
        issuer: config.issuer.current().unwrap_or_default(),
        subject: SubjectSpec::default(),
        sans: SanSpec {
            uris: vec![id],
            ..SanSpec::default()
        },
        pod,
        duration: config.duration,
        // Renew at two thirds of the lifetime the issuer actually gave, as
        // csi-driver-spiffe does (the schedule's default when unset).
        renew_before: None,
        is_ca: false,
        usages: spiffe::USAGES.to_vec(),
        key: KeySpec {
            algorithm: config.key,
            encoding: KeyEncoding::Pkcs8,
        },
        certificate_file: config.files.certificate.clone(),
        private_key_file: config.files.key.clone(),
        ca_file: config.files.ca.clone(),
        pkcs12: None,
        fs_group,
        reuse_private_key: false,
        credential_bundle_file,
        annotations,
        tokens,
        warnings,
        unknown_attributes: Vec::new(),
    })
}

/// What the request says about itself: the ID asked for, and the pod and
/// node it is for. In both modes: the approver needs the pod and node in
/// node-account mode, and in pod-token mode they let an operator see which
/// volume a request belongs to. Nothing here is secret.
pub fn request_annotations(
    id: &str,
    pod_name: &str,
    pod_uid: &str,
    node_id: &str,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (spiffe::ANNOTATION_IDENTITY.to_string(), id.to_string()),
        (
            spiffe::ANNOTATION_POD_NAME.to_string(),
            pod_name.to_string(),
        ),
        (spiffe::ANNOTATION_POD_UID.to_string(), pod_uid.to_string()),
        (spiffe::ANNOTATION_NODE.to_string(), node_id.to_string()),
    ])
}

/// Sorts the context's keys. Only `fs-group` and cert-csi's own
/// credential-bundle key are attributes; the other driver's attributes are
/// refused (they would not change anything here, and silently ignoring them
/// would mislead); other keys are ignored with a warning and, unlike with
/// `csi.cert-manager.io`, never copied as annotations: the approver reads
/// this driver's requests, and a pod must not be able to add to them.
fn check_keys(ctx: &HashMap<String, String>) -> Result<Vec<AttributeWarning>, AttributeError> {
    let mut keys: Vec<&String> = ctx.keys().collect();
    keys.sort();
    let mut warnings = Vec::new();
    for key in keys {
        if key == FS_GROUP {
            continue;
        }
        if let Some(suffix) = key.strip_prefix(PREFIX) {
            let hint = if volume::attributes::edit_distance(suffix, "fs-group") <= 3 {
                format!("did you mean {FS_GROUP}? ")
            } else {
                String::new()
            };
            return Err(error(
                key,
                format!(
                    "unknown attribute; {hint}the SPIFFE driver derives the identity from the pod's ServiceAccount, and its only attribute is {FS_GROUP}"
                ),
            ));
        }
        if key.starts_with(volume::attributes::PREFIX) {
            return Err(error(
                key,
                format!(
                    "is an attribute of the csi.cert-manager.io driver, but this volume uses {}, whose identity comes from the pod's ServiceAccount; remove it, or use driver csi.cert-manager.io for a certificate you describe yourself",
                    spiffe::DRIVER_NAME
                ),
            ));
        }
        match key.split_once('/') {
            Some((volume::attributes::KUBELET_GROUP, _)) => {}
            Some((volume::attributes::RESERVED_GROUP, _)) => volume::check_reserved_key(key)?,
            _ => warnings.push(AttributeWarning {
                attribute: key.clone(),
                message: format!(
                    "is not an attribute of {}, so it is ignored (this driver copies no annotations)",
                    spiffe::DRIVER_NAME
                ),
            }),
        }
    }
    Ok(warnings)
}

/// A token from `serviceAccount.tokens` that cannot be used. No variant
/// holds the token, and nothing here prints the JSON it came in.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TokenError {
    #[error(
        "is missing; the SPIFFE driver in pod-token mode creates the request with the pod's token, so its CSIDriver object must set tokenRequests: [{{audience: \"\"}}] (and requiresRepublish: true)"
    )]
    Missing,
    #[error(
        "is not the kubelet's JSON map of audience to {{token, expirationTimestamp}}: {reason}"
    )]
    Malformed { reason: String },
    #[error(
        "has no token for the audience {audience:?} (it has {available:?}); make the CSIDriver's tokenRequests include that audience, or change --spiffe-token-audience"
    )]
    NoAudience {
        audience: String,
        available: Vec<String>,
    },
    #[error(
        "holds a token for audience {audience:?} that expired at {expired}; the kubelet sends a fresh one on its next republish (requiresRepublish: true)"
    )]
    Expired { audience: String, expired: String },
}

/// The pod's token for `audience` from the kubelet's
/// `csi.storage.k8s.io/serviceAccount.tokens` JSON
/// (`{"<audience>": {"token": "...", "expirationTimestamp": "..."}}`).
pub fn pod_token(
    tokens: Option<&SecretString>,
    audience: &str,
    now: SystemTime,
) -> Result<SecretString, TokenError> {
    #[derive(serde::Deserialize)]
    struct Entry {
        token: String,
        #[serde(rename = "expirationTimestamp")]
        expiration: Option<String>,
    }
    let tokens = tokens.ok_or(TokenError::Missing)?;
    // serde_json's messages quote no input for type errors, but a syntax
    // error can; only its position is reported.
    let map: BTreeMap<String, Entry> =
        serde_json::from_str(tokens.expose()).map_err(|e| TokenError::Malformed {
            reason: format!(
                "{} at line {} column {}",
                match e.classify() {
                    serde_json::error::Category::Syntax | serde_json::error::Category::Eof =>
                        "invalid JSON",
                    _ => "unexpected shape",
                },
                e.line(),
                e.column()
            ),
        })?;
    let entry = map.get(audience).ok_or_else(|| TokenError::NoAudience {
        audience: audience.to_string(),
        available: map.keys().cloned().collect(),
    })?;
    if entry.token.is_empty() {
        return Err(TokenError::Malformed {
            reason: format!("the token for audience {audience:?} is empty"),
        });
    }
    if let Some(at) = &entry.expiration {
        let expires: jiff::Timestamp = at.parse().map_err(|_| TokenError::Malformed {
            reason: format!("expirationTimestamp {at:?} is not an RFC 3339 time"),
        })?;
        let now = jiff::Timestamp::try_from(now).unwrap_or(jiff::Timestamp::MAX);
        if expires <= now {
            return Err(TokenError::Expired {
                audience: audience.to_string(),
                expired: at.clone(),
            });
        }
    }
    Ok(SecretString::new(entry.token.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::Curve;

    fn config(mode: RequestMode) -> SpiffeConfig {
        SpiffeConfig::from_flags(&SpiffeFlags {
            trust_domain: "example.org",
            template: spiffe::DEFAULT_ID_TEMPLATE,
            key: "P-256",
            duration: Duration::from_secs(3600),
            issuer_name: Some("spiffe-ca"),
            issuer_kind: "ClusterIssuer",
            issuer_group: "cert-manager.io",
            mode,
            audience: "",
            files: SpiffeFiles::default(),
            extra_annotations: "",
            runtime_config_map: None,
        })
        .unwrap()
    }

    fn context(extra: &[(&str, &str)]) -> HashMap<String, String> {
        let mut ctx: HashMap<String, String> = [
            (kubelet::POD_NAME, "web-1"),
            (kubelet::POD_NAMESPACE, "shop"),
            (kubelet::POD_UID, "8f0d4c1e-0000-4000-8000-000000000001"),
            (kubelet::SERVICE_ACCOUNT_NAME, "billing"),
            (kubelet::EPHEMERAL, "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in extra {
            ctx.insert(k.to_string(), v.to_string());
        }
        ctx
    }

    fn parse_ctx(
        ctx: &HashMap<String, String>,
        readonly: bool,
        group: Option<&str>,
    ) -> Result<VolumeSpec, AttributeError> {
        let input = PublishInput {
            volume_id: "csi-0123",
            target_path: "/var/lib/kubelet/pods/x/volumes/kubernetes.io~csi/id/mount",
            readonly,
            volume_mount_group: group,
            context: ctx,
        };
        parse(&input, &config(RequestMode::NodeAccount), "node-a")
    }

    #[test]
    fn the_identity_comes_from_the_service_account_only() {
        let spec = parse_ctx(&context(&[]), true, None).unwrap();
        assert_eq!(spec.sans.uris, ["spiffe://example.org/ns/shop/sa/billing"]);
        assert!(spec.sans.dns_names.is_empty() && spec.sans.ip_addresses.is_empty());
        assert_eq!(spec.subject, SubjectSpec::default());
        assert_eq!(spec.usages, spiffe::USAGES);
        assert!(!spec.is_ca);
        assert_eq!(spec.key.algorithm, KeyAlgorithm::Ecdsa(Curve::P256));
        assert_eq!(spec.key.encoding, KeyEncoding::Pkcs8);
        assert_eq!(spec.duration, Duration::from_secs(3600));
        assert_eq!(spec.renew_before, None, "a third of the issued lifetime");
        assert_eq!(spec.issuer.name, "spiffe-ca");
        assert_eq!(
            (
                spec.certificate_file.as_str(),
                spec.private_key_file.as_str(),
                spec.ca_file.as_str()
            ),
            ("tls.crt", "tls.key", "ca.crt")
        );
        let a = &spec.annotations;
        assert_eq!(
            a[spiffe::ANNOTATION_IDENTITY],
            "spiffe://example.org/ns/shop/sa/billing"
        );
        assert_eq!(a[spiffe::ANNOTATION_POD_NAME], "web-1");
        assert_eq!(
            a[spiffe::ANNOTATION_POD_UID],
            "8f0d4c1e-0000-4000-8000-000000000001"
        );
        assert_eq!(a[spiffe::ANNOTATION_NODE], "node-a");
        assert_eq!(a.len(), 4);
    }

    #[test]
    fn fs_group_is_the_only_attribute() {
        let spec = parse_ctx(&context(&[(FS_GROUP, "2000")]), true, Some("1000")).unwrap();
        assert_eq!(spec.fs_group, Some(2000));
        let spec = parse_ctx(&context(&[]), true, Some("1000")).unwrap();
        assert_eq!(spec.fs_group, Some(1000));
        let err = parse_ctx(&context(&[(FS_GROUP, "x")]), true, None).unwrap_err();
        assert_eq!(err.attribute, FS_GROUP);

        let err = parse_ctx(
            &context(&[("spiffe.csi.cert-manager.io/fsgroup", "1")]),
            true,
            None,
        )
        .unwrap_err();
        assert!(err.message.contains("did you mean"), "{err}");
        let err = parse_ctx(
            &context(&[("spiffe.csi.cert-manager.io/identity", "spiffe://evil/x")]),
            true,
            None,
        )
        .unwrap_err();
        assert_eq!(err.attribute, "spiffe.csi.cert-manager.io/identity");
        let err = parse_ctx(
            &context(&[(volume::keys::DNS_NAMES, "admin.example")]),
            true,
            None,
        )
        .unwrap_err();
        assert!(err.message.contains("csi.cert-manager.io driver"), "{err}");
        let err = parse_ctx(&context(&[("cert-csi.io/mode", "x")]), true, None).unwrap_err();
        assert!(err.message.contains("reserved"), "{err}");
    }

    #[test]
    fn other_keys_are_ignored_and_never_annotations() {
        let spec = parse_ctx(&context(&[("example.com/team", "payments")]), true, None).unwrap();
        assert!(!spec.annotations.contains_key("example.com/team"));
        assert_eq!(spec.warnings.len(), 1);
        assert_eq!(spec.warnings[0].attribute, "example.com/team");
    }

    #[test]
    fn read_only_is_required() {
        let err = parse_ctx(&context(&[]), false, None).unwrap_err();
        assert_eq!(err.attribute, "readonly");
    }

    #[test]
    fn credential_bundle_file_is_checked() {
        let spec = parse_ctx(
            &context(&[(volume::CREDENTIAL_BUNDLE_FILE, "credentials.pem")]),
            true,
            None,
        )
        .unwrap();
        assert_eq!(
            spec.credential_bundle_file.as_deref(),
            Some("credentials.pem")
        );
        for bad in ["tls.key", "../x", "a/b"] {
            let err = parse_ctx(
                &context(&[(volume::CREDENTIAL_BUNDLE_FILE, bad)]),
                true,
                None,
            )
            .unwrap_err();
            assert_eq!(err.attribute, volume::CREDENTIAL_BUNDLE_FILE, "{bad}");
        }
    }

    #[test]
    fn a_service_account_that_cannot_be_a_path_segment_is_refused() {
        let err = parse_ctx(
            &context(&[(kubelet::SERVICE_ACCOUNT_NAME, "a/../b")]),
            true,
            None,
        )
        .unwrap_err();
        assert_eq!(err.attribute, kubelet::SERVICE_ACCOUNT_NAME);
    }

    #[test]
    fn flags_are_validated() {
        let mut flags = SpiffeFlags {
            trust_domain: "example.org",
            template: "/w/{namespace}/{serviceaccount}",
            key: "Ed25519",
            duration: Duration::from_secs(600),
            issuer_name: Some("ca"),
            issuer_kind: "Issuer",
            issuer_group: "cert-manager.io",
            mode: RequestMode::PodToken,
            audience: "",
            files: SpiffeFiles::default(),
            extra_annotations: "",
            runtime_config_map: None,
        };
        let c = SpiffeConfig::from_flags(&flags).unwrap();
        assert_eq!(c.key, KeyAlgorithm::Ed25519);
        assert_eq!(c.template.render("a", "b").unwrap(), "/w/a/b");
        flags.key = "RSA";
        assert!(matches!(
            SpiffeConfig::from_flags(&flags),
            Err(SpiffeConfigError::Key(_))
        ));
        flags.key = "P-384";
        flags.issuer_name = None;
        let err = SpiffeConfig::from_flags(&flags).unwrap_err().to_string();
        assert!(err.contains("--spiffe-issuer-name"), "{err}");
        flags.issuer_name = Some("ca");
        flags.template = "/ns/{namespace}/pod/{pod}";
        assert!(matches!(
            SpiffeConfig::from_flags(&flags),
            Err(SpiffeConfigError::Template(_))
        ));
        flags.template = spiffe::DEFAULT_ID_TEMPLATE;
        flags.trust_domain = "Example.org";
        assert!(matches!(
            SpiffeConfig::from_flags(&flags),
            Err(SpiffeConfigError::TrustDomain(_))
        ));
        flags.trust_domain = "example.org";
        flags.duration = Duration::from_secs(9);
        assert!(matches!(
            SpiffeConfig::from_flags(&flags),
            Err(SpiffeConfigError::Duration(_))
        ));
        assert_eq!(RequestMode::parse("pod-token"), Ok(RequestMode::PodToken));
        assert!(RequestMode::parse("pod").is_err());
    }

    #[test]
    fn pod_tokens_are_read_by_audience_and_never_echoed() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let json = r#"{"": {"token": "s3cr3t-a", "expirationTimestamp": "2027-01-15T08:00:00Z"},
                       "vault": {"token": "s3cr3t-b", "expirationTimestamp": "2027-01-15T08:00:00Z"}}"#;
        let tokens = SecretString::new(json);
        assert_eq!(
            pod_token(Some(&tokens), "", now).unwrap().expose(),
            "s3cr3t-a"
        );
        assert_eq!(
            pod_token(Some(&tokens), "vault", now).unwrap().expose(),
            "s3cr3t-b"
        );
        let err = pod_token(Some(&tokens), "other", now).unwrap_err();
        assert!(matches!(&err, TokenError::NoAudience { available, .. } if available.len() == 2));
        assert_eq!(pod_token(None, "", now), Err(TokenError::Missing));

        let later = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        assert!(matches!(
            pod_token(Some(&tokens), "", later),
            Err(TokenError::Expired { .. })
        ));
        for bad in [
            r#"{"": {"token": "s3cr3t-c""#,
            r#"{"": "s3cr3t-d"}"#,
            r#"["s3cr3t-e"]"#,
            r#"{"": {"token": ""}}"#,
        ] {
            let err = pod_token(Some(&SecretString::new(bad)), "", now).unwrap_err();
            let text = format!("{err} {err:?}");
            assert!(matches!(err, TokenError::Malformed { .. }), "{text}");
            assert!(!text.contains("s3cr3t"), "the token leaked: {text}");
        }
    }

    #[test]
    fn file_names_and_extra_annotations_follow_csi_driver_spiffe_flags() {
        let mut c = config(RequestMode::PodToken);
        c.files = SpiffeFiles {
            certificate: "svid.pem".into(),
            key: "svid_key.pem".into(),
            ca: "bundle.pem".into(),
        };
        c.extra_annotations = parse_extra_annotations("team=payments, cost-center=42").unwrap();
        let ctx = context(&[]);
        let input = PublishInput {
            volume_id: "csi-0123",
            target_path: "/var/lib/kubelet/pods/x/volumes/kubernetes.io~csi/id/mount",
            readonly: true,
            volume_mount_group: None,
            context: &ctx,
        };
        let spec = parse(&input, &c, "node-1").unwrap();
        assert_eq!(
            (
                spec.certificate_file.as_str(),
                spec.private_key_file.as_str(),
                spec.ca_file.as_str()
            ),
            ("svid.pem", "svid_key.pem", "bundle.pem")
        );
        assert_eq!(spec.annotations["team"], "payments");
        assert_eq!(spec.annotations["cost-center"], "42");
        assert!(spec.annotations.contains_key(spiffe::ANNOTATION_IDENTITY));

        for (bad, why) in [
            ("team", "has no '='"),
            (
                "spiffe.csi.cert-manager.io/identity=x",
                "cert-manager.io domain",
            ),
            ("a=1,a=2", "given twice"),
            ("bad key=1", ""),
        ] {
            let err = parse_extra_annotations(bad).unwrap_err().to_string();
            assert!(
                err.starts_with("--extra-certificate-request-annotations") && err.contains(why),
                "{bad}: {err}"
            );
        }
        assert!(parse_extra_annotations("").unwrap().is_empty());
    }
}
