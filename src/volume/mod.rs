//! Volume attributes → a validated [`VolumeSpec`], without side effects.
//!
//! This is the user interface of the node plugin: a pod's `volumeAttributes`
//! arrive here through the kubelet's `volume_context`, and every mistake must
//! come back as one message that names the attribute, says what was given and
//! what is allowed, and how to fix it. The kubelet shows it in the pod's
//! events as `rpc error: code = InvalidArgument desc = <attribute>: <message>`.
//!
//! [`parse`] checks everything before anything happens (no I/O, no keys, no
//! API objects) and returns the **first** error in a fixed order: the
//! kubelet's fields, then the keys, then the attributes group by group
//! (issuer, subject, SANs, lifetime, usages, key, files and PKCS#12,
//! fs-group, reuse-private-key). One clear message beats a list, and fixing
//! one error at a time converges because the order is fixed.
//!
//! What upstream (cert-manager's csi-driver) accepts is accepted, and reaches
//! the CertificateRequest as upstream would write it: variables as Go's
//! `os.Expand` reads them (the `expand` module), subject lists as CSV, SANs
//! split and trimmed, literal subjects and URIs parsed and written back as
//! Go does (`pki::dn`, the `gourl` module). Input upstream keeps but that is
//! most likely a mistake (an unknown `csi.cert-manager.io/*` key, an empty
//! list entry, a value past RFC 5280's bounds) is accepted with a warning,
//! which the node plugin logs and shows on the pod.
//!
//! Where cert-csi still differs, on purpose:
//! - an issuer name or group that no Kubernetes object can have, a zero or
//!   negative duration, a negative renew-before, and file names with
//!   control or invisible formatting characters are refused (upstream
//!   accepts them and then never issues, or misbehaves);
//! - an empty value means "unset" for every attribute, where upstream
//!   refuses an empty `pkcs12-filename`/`pkcs12-password` without
//!   `pkcs12-enable`, and `pkcs12-enable: "false"` needs no password;
//! - a zero renew-before renews at the default point, not at expiry;
//! - literal subject keywords are matched in any case (`cn=app`).

pub mod attributes;
pub mod expand;
pub mod gourl;
mod rules;
pub mod spiffe_attributes;
pub use rules::short_quote;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

use crate::api::duration;
use crate::pki;
use crate::pki::{Curve, KeyAlgorithm, KeyEncoding, KeySpec, SanSpec, SubjectSpec, Usage};
pub use attributes::{ATTRIBUTES, AttributeDoc, CREDENTIAL_BUNDLE_FILE, keys, kubelet};
use attributes::{KUBELET_GROUP, PREFIX, RESERVED_GROUP};
use expand::{Variables, expand};
pub(crate) use rules::check_target_path;

/// The parts of a NodePublishVolumeRequest that decide what is issued.
/// `Debug` shows the context's keys only: its values include the keystore
/// password and the service account tokens.
#[derive(Clone, Copy)]
pub struct PublishInput<'a> {
    pub volume_id: &'a str,
    pub target_path: &'a str,
    pub readonly: bool,
    /// `volume_capability.mount.volume_mount_group`: the pod's fsGroup, when
    /// the plugin advertises VOLUME_MOUNT_GROUP. Empty means unset.
    pub volume_mount_group: Option<&'a str>,
    pub context: &'a HashMap<String, String>,
}

impl fmt::Debug for PublishInput<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut keys: Vec<&String> = self.context.keys().collect();
        keys.sort();
        f.debug_struct("PublishInput")
            .field("volume_id", &self.volume_id)
            .field("target_path", &self.target_path)
            .field("readonly", &self.readonly)
            .field("volume_mount_group", &self.volume_mount_group)
            .field("context_keys", &keys)
            .finish()
    }
}

/// A rejected input. `attribute` is the full context key (e.g.
/// `csi.cert-manager.io/key-size`) or a request field (e.g. `target_path`).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("{attribute}: {message}")]
pub struct AttributeError {
    pub attribute: String,
    pub message: String,
}

/// Something accepted but worth telling the user (e.g. an attribute that has
/// no effect). The node plugin logs these and puts each on the pod as a
/// Warning Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttributeWarning {
    pub attribute: String,
    pub message: String,
}

impl fmt::Display for AttributeWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.attribute, self.message)
    }
}

fn error(attribute: &str, message: impl Into<String>) -> AttributeError {
    AttributeError {
        attribute: attribute.to_string(),
        message: message.into(),
    }
}

/// A secret string (a keystore password, service account tokens). `Debug`
/// prints `<redacted>` and there is no `Display`, so it cannot reach a log
/// line or an error message by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(value: impl Into<String>) -> Self {
        SecretString(value.into())
    }

    /// The secret itself; call only where it is used, never to log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The pod the volume belongs to (from the kubelet's podInfoOnMount keys).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub service_account: String,
}

/// `spec.issuerRef` of the CertificateRequest, defaults applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IssuerRef {
    pub name: String,
    pub kind: String,
    pub group: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pkcs12Spec {
    pub filename: String,
    pub password: SecretString,
}

/// Everything needed to issue, write and renew one volume's certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeSpec {
    pub volume_id: String,
    pub target_path: PathBuf,
    pub pod: PodInfo,
    pub issuer: IssuerRef,
    pub subject: SubjectSpec,
    pub sans: SanSpec,
    pub duration: Duration,
    /// `None`: renew at the default point (a third of the lifetime before expiry).
    pub renew_before: Option<Duration>,
    pub is_ca: bool,
    pub usages: Vec<Usage>,
    pub key: KeySpec,
    pub certificate_file: String,
    pub private_key_file: String,
    pub ca_file: String,
    pub pkcs12: Option<Pkcs12Spec>,
    /// The group that may read the files: `fs-group`, else the pod's fsGroup.
    pub fs_group: Option<u32>,
    pub reuse_private_key: bool,
    /// `cert-csi.io/credential-bundle-file`: one more file holding the
    /// PKCS#8 key followed by the chain, written in the same atomic swap.
    pub credential_bundle_file: Option<String>,
    /// Copied onto the CertificateRequest.
    pub annotations: BTreeMap<String, String>,
    /// The kubelet's `serviceAccount.tokens` JSON; never stored or logged.
    pub tokens: Option<SecretString>,
    pub warnings: Vec<AttributeWarning>,
    /// Keys that are most likely misspelt attributes, sorted: unknown
    /// `csi.cert-manager.io/*` keys, attribute names without a prefix or
    /// under a prefix close to ours. They are handled as upstream handles
    /// them (ignored, or copied as annotations), each with a warning; the
    /// node plugin reports them, or refuses the volume with
    /// `--strict-attributes` (see [`check_unknown_attributes`]).
    pub unknown_attributes: Vec<String>,
}

pub const DEFAULT_DURATION: Duration = Duration::from_secs(2160 * 3600);
pub const DEFAULT_CERTIFICATE_FILE: &str = "tls.crt";
pub const DEFAULT_PRIVATE_KEY_FILE: &str = "tls.key";
pub const DEFAULT_CA_FILE: &str = "ca.crt";
pub const DEFAULT_PKCS12_FILE: &str = "keystore.p12";
const CERT_MANAGER_GROUP: &str = "cert-manager.io";

/// A value, with an empty string read as absent (as upstream does).
fn get<'a>(context: &'a HashMap<String, String>, key: &str) -> Option<&'a str> {
    debug_assert!(
        !key.starts_with(PREFIX) || attributes::find(key).is_some(),
        "{key} is read but missing from ATTRIBUTES"
    );
    context
        .get(key)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

/// Validates a publish request and builds the volume's spec.
pub fn parse(input: &PublishInput<'_>) -> Result<VolumeSpec, AttributeError> {
    let ctx = input.context;
    let mut warnings = Vec::new();
    let pod = parse_kubelet_fields(input)?;
    let vars = Variables {
        pod_name: &pod.name,
        pod_namespace: &pod.namespace,
        pod_uid: &pod.uid,
        service_account_name: &pod.service_account,
    };

    let (annotations, unknown_attributes) = check_keys(ctx, &mut warnings)?;
    let issuer = parse_issuer(ctx)?;
    let subject = parse_subject(ctx, &vars, &mut warnings)?;
    let sans = parse_sans(ctx, &vars, &mut warnings)?;
    let mut spec = parse_rest(input, pod, annotations, issuer, subject, sans, warnings)?;
    spec.unknown_attributes = unknown_attributes;
    Ok(spec)
}

/// The checks every driver shares, in this order: volume id, target path,
/// ephemeral, readOnly, and the pod fields of podInfoOnMount.
pub fn parse_kubelet_fields(input: &PublishInput<'_>) -> Result<PodInfo, AttributeError> {
    let ctx = input.context;
    rules::check_volume_id(input.volume_id).map_err(|m| error("volume_id", m))?;
    rules::check_target_path(input.target_path).map_err(|m| error("target_path", m))?;
    match ctx.get(kubelet::EPHEMERAL).map(String::as_str) {
        Some("true") => {}
        other => {
            let given = match other {
                Some(v) => format!("is {v_q}", v_q = short_quote(v)),
                None => "is missing".to_string(),
            };
            return Err(error(
                kubelet::EPHEMERAL,
                format!(
                    "{given}, but cert-csi supports only CSI inline ephemeral volumes: declare the volume in the pod under spec.volumes[].csi (not through a PersistentVolume), and make sure the CSIDriver object lists volumeLifecycleModes: [Ephemeral]"
                ),
            ));
        }
    }
    if !input.readonly {
        return Err(error(
            "readonly",
            "pod.spec.volumes[].csi.readOnly must be set to 'true'; the certificate files are served read-only",
        ));
    }
    Ok(PodInfo {
        name: required_pod_field(ctx, kubelet::POD_NAME)?,
        namespace: required_pod_field(ctx, kubelet::POD_NAMESPACE)?,
        uid: required_pod_field(ctx, kubelet::POD_UID)?,
        service_account: required_pod_field(ctx, kubelet::SERVICE_ACCOUNT_NAME)?,
    })
}

fn parse_rest(
    input: &PublishInput<'_>,
    pod: PodInfo,
    annotations: BTreeMap<String, String>,
    issuer: IssuerRef,
    subject: SubjectSpec,
    sans: SanSpec,
    mut warnings: Vec<AttributeWarning>,
) -> Result<VolumeSpec, AttributeError> {
    let ctx = input.context;
    let duration = match get(ctx, keys::DURATION) {
        Some(v) => positive_duration(keys::DURATION, v)?,
        None => DEFAULT_DURATION,
    };
    let renew_before = match get(ctx, keys::RENEW_BEFORE) {
        Some(v) => {
            let renew = go_duration(keys::RENEW_BEFORE, v)?;
            if renew.is_zero() {
                // Upstream renews such a volume only at expiry, leaving the
                // pod an expired certificate until the new one arrives.
                warnings.push(AttributeWarning {
                    attribute: keys::RENEW_BEFORE.to_string(),
                    message: "is zero, which would renew only at expiry; the certificate renews a third of its lifetime before expiry instead".to_string(),
                });
                None
            } else if renew >= duration {
                warnings.push(AttributeWarning {
                    attribute: keys::RENEW_BEFORE.to_string(),
                    message: format!(
                        "{v_q} is not less than the duration {}, so it is ignored and the certificate renews a third of its lifetime before expiry",
                        duration::format_go(duration), v_q = short_quote(v)
                    ),
                });
                None
            } else {
                Some(renew)
            }
        }
        None => None,
    };
    let is_ca = boolean(ctx, keys::IS_CA)?.unwrap_or(false);
    let usages = parse_usages(ctx)?;
    let key = parse_key(ctx)?;

    let certificate_file = file_name(ctx, keys::CERTIFICATE_FILE, DEFAULT_CERTIFICATE_FILE)?;
    let private_key_file = file_name(ctx, keys::PRIVATE_KEY_FILE, DEFAULT_PRIVATE_KEY_FILE)?;
    let ca_file = file_name(ctx, keys::CA_FILE, DEFAULT_CA_FILE)?;
    let pkcs12 = parse_pkcs12(ctx)?;
    let mut files = vec![
        (keys::CERTIFICATE_FILE, certificate_file.as_str()),
        (keys::PRIVATE_KEY_FILE, private_key_file.as_str()),
        (keys::CA_FILE, ca_file.as_str()),
    ];
    if let Some(p) = &pkcs12 {
        files.push((keys::PKCS12_FILENAME, p.filename.as_str()));
    }
    let credential_bundle_file = credential_bundle_file(ctx)?;
    if let Some(name) = &credential_bundle_file {
        files.push((CREDENTIAL_BUNDLE_FILE, name.as_str()));
    }
    check_distinct_files(&files)?;

    let fs_group = parse_fs_group(ctx, input.volume_mount_group)?;
    let reuse_private_key = boolean(ctx, keys::REUSE_PRIVATE_KEY)?.unwrap_or(false);
    let tokens = ctx
        .get(kubelet::SERVICE_ACCOUNT_TOKENS)
        .filter(|t| !t.is_empty())
        .map(|t| SecretString::new(t.clone()));

    Ok(VolumeSpec {
        volume_id: input.volume_id.to_string(),
        target_path: PathBuf::from(input.target_path),
        pod,
        issuer,
        subject,
        sans,
        duration,
        renew_before,
        is_ca,
        usages,
        key,
        certificate_file,
        private_key_file,
        ca_file,
        pkcs12,
        fs_group,
        reuse_private_key,
        credential_bundle_file,
        annotations,
        tokens,
        warnings,
        unknown_attributes: Vec::new(),
    })
}

/// Every output file needs its own name: `files` are `(attribute, name)`,
/// and the later of two equal names is the one reported.
pub fn check_distinct_files(files: &[(&str, &str)]) -> Result<(), AttributeError> {
    for (i, (key, name)) in files.iter().enumerate() {
        if let Some((earlier, _)) = files[..i].iter().find(|(_, n)| n == name) {
            return Err(error(
                key,
                format!(
                    "the file name {name_q} is also used by {earlier}; every output file needs its own name, so change one of them",
                    name_q = short_quote(name)
                ),
            ));
        }
    }
    Ok(())
}

/// `cert-csi.io/credential-bundle-file`: absent (or empty) means no bundle;
/// a name follows the rules of the other file attributes.
pub fn credential_bundle_file(
    ctx: &HashMap<String, String>,
) -> Result<Option<String>, AttributeError> {
    match ctx
        .get(CREDENTIAL_BUNDLE_FILE)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
    {
        None => Ok(None),
        Some(name) => {
            rules::check_file_name(name).map_err(|m| error(CREDENTIAL_BUNDLE_FILE, m))?;
            Ok(Some(name.to_string()))
        }
    }
}

/// Checks a key under cert-csi's own prefix `cert-csi.io/`: only
/// [`CREDENTIAL_BUNDLE_FILE`] exists; every other key is refused, never
/// passed through as an annotation.
pub fn check_reserved_key(key: &str) -> Result<(), AttributeError> {
    if key == CREDENTIAL_BUNDLE_FILE {
        return Ok(());
    }
    Err(error(
        key,
        format!(
            "the prefix {RESERVED_GROUP}/ is reserved for cert-csi's own attributes, and the only one is {CREDENTIAL_BUNDLE_FILE}; use the {PREFIX} attributes, or a prefix of your own for annotations"
        ),
    ))
}

/// A group id attribute (`fs-group` of either driver) combined with the
/// pod's fsGroup from the kubelet: the attribute wins.
pub fn fs_group_for(
    ctx: &HashMap<String, String>,
    key: &str,
    volume_mount_group: Option<&str>,
) -> Result<Option<u32>, AttributeError> {
    parse_fs_group_key(ctx, key, volume_mount_group)
}

fn required_pod_field(ctx: &HashMap<String, String>, key: &str) -> Result<String, AttributeError> {
    match ctx.get(key).filter(|v| !v.is_empty()) {
        Some(v) => Ok(v.clone()),
        None => Err(error(
            key,
            "is missing from the volume context; the kubelet adds it only when the CSIDriver object sets podInfoOnMount: true, so set that and recreate the pod",
        )),
    }
}

/// Sorts every key into: our attribute, a stray key (see [`stray_key`]:
/// ignored or passed on as upstream does, with a warning), a kubelet key,
/// an annotation to pass through, or an error. Returns the annotations and
/// the stray keys.
fn check_keys(
    ctx: &HashMap<String, String>,
    warnings: &mut Vec<AttributeWarning>,
) -> Result<(BTreeMap<String, String>, Vec<String>), AttributeError> {
    let mut sorted: Vec<(&String, &String)> = ctx.iter().collect();
    sorted.sort();
    let mut annotations = BTreeMap::new();
    let mut strays = Vec::new();
    for (key, value) in sorted {
        let stray = stray_key(key);
        if let Some((kind, doc)) = stray {
            warn(warnings, key, stray_warning(kind, doc));
            strays.push(key.clone());
        }
        if key.starts_with(PREFIX) {
            continue;
        }
        let Some((group, _)) = key.split_once('/') else {
            if stray.is_none() {
                warn(
                    warnings,
                    key,
                    "has no prefix and is not a cert-csi attribute, so it is ignored",
                );
            }
            continue;
        };
        if group == KUBELET_GROUP {
            // The kubelet may add keys in future versions.
            continue;
        }
        if group == RESERVED_GROUP {
            // Our own attribute is read elsewhere and is never an annotation.
            check_reserved_key(key)?;
            continue;
        }
        // Upstream copies every other key onto the request; one the API
        // server would refuse fails there, so it is refused here first.
        if let Err(reason) = rules::check_annotation_key(key) {
            return Err(error(
                key,
                format!(
                    "is copied to the CertificateRequest as an annotation, but it is not a valid annotation key: {reason}; fix the key or remove it"
                ),
            ));
        }
        annotations.insert(key.clone(), value.clone());
    }
    Ok((annotations, strays))
}

/// How a key strays from the attributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stray {
    /// Under `csi.cert-manager.io/` but no attribute: upstream ignores it.
    Unknown,
    /// An attribute's name without a prefix: upstream ignores it.
    Unprefixed,
    /// An attribute's name under a prefix close to ours: upstream copies
    /// it onto the request as an annotation, where it changes nothing.
    OtherPrefix,
}

/// Whether `key` is most likely a misspelt attribute, and which one.
fn stray_key(key: &str) -> Option<(Stray, Option<&'static AttributeDoc>)> {
    if let Some(suffix) = key.strip_prefix(PREFIX) {
        return attributes::find(key)
            .is_none()
            .then(|| (Stray::Unknown, attributes::suggest(suffix)));
    }
    let Some((group, name)) = key.split_once('/') else {
        return attributes::suggest(key).map(|doc| (Stray::Unprefixed, Some(doc)));
    };
    if group == KUBELET_GROUP || group == RESERVED_GROUP {
        return None;
    }
    let target = PREFIX.trim_end_matches('/');
    let lowered = name.to_ascii_lowercase();
    if attributes::edit_distance(&group.to_ascii_lowercase(), target) > 4 {
        return None;
    }
    ATTRIBUTES
        .iter()
        .find(|a| attributes::edit_distance(&lowered, a.key) <= 1)
        .map(|doc| (Stray::OtherPrefix, Some(doc)))
}

const STRICT_HINT: &str = "(the node plugin's --strict-attributes refuses such volumes)";

fn stray_warning(kind: Stray, doc: Option<&AttributeDoc>) -> String {
    let fix = match doc {
        Some(doc) => format!("did you mean {}?", doc.full_key()),
        None => "check the spelling against the attribute list".to_string(),
    };
    let what = match kind {
        Stray::Unknown => {
            "is not a csi.cert-manager.io attribute and is ignored, as cert-manager's csi-driver ignores it"
        }
        Stray::Unprefixed => {
            "has no prefix, so it is ignored, as cert-manager's csi-driver ignores it"
        }
        Stray::OtherPrefix => {
            "is copied to the CertificateRequest as an annotation, as cert-manager's csi-driver copies it, and does not change the certificate"
        }
    };
    format!("{what}; {fix} {STRICT_HINT}")
}

/// With `--strict-attributes`: the first stray key (in sorted order) as an
/// error naming the attribute it was most likely meant to be. Checked
/// before anything else, because a typo explains the errors it causes.
pub fn check_unknown_attributes(ctx: &HashMap<String, String>) -> Result<(), AttributeError> {
    let Some((key, (kind, doc))) = ctx
        .keys()
        .filter_map(|k| stray_key(k).map(|s| (k, s)))
        .min_by(|a, b| a.0.cmp(b.0))
    else {
        return Ok(());
    };
    let message = match (kind, doc) {
        (Stray::Unknown, _) => unknown_attribute_message(&key[PREFIX.len()..]),
        (Stray::Unprefixed, Some(doc)) => format!(
            "has no prefix, so it means nothing to cert-csi; did you mean {}?",
            doc.full_key()
        ),
        (_, doc) => format!(
            "did you mean {}? Keys with other prefixes are copied to the CertificateRequest as annotations and do not change the certificate",
            doc.map(|d| d.full_key()).unwrap_or_default()
        ),
    };
    Err(error(key, message))
}

/// The attribute a stray key (see [`VolumeSpec::unknown_attributes`]) was
/// most likely meant to be.
pub fn nearest_attribute(key: &str) -> Option<String> {
    stray_key(key)
        .and_then(|(_, doc)| doc)
        .map(|doc| doc.full_key())
}

fn unknown_attribute_message(suffix: &str) -> String {
    let why = "this node plugin runs with --strict-attributes, which refuses unknown attributes so that a typo cannot silently change the certificate";
    match attributes::suggest(suffix) {
        Some(doc) => format!(
            "unknown attribute; did you mean {}? ({why})",
            doc.full_key()
        ),
        None => {
            let known: Vec<&str> = ATTRIBUTES.iter().map(|a| a.key).collect();
            format!(
                "unknown attribute ({why}); the known attributes are {PREFIX} followed by one of: {}",
                known.join(", ")
            )
        }
    }
}

fn parse_issuer(ctx: &HashMap<String, String>) -> Result<IssuerRef, AttributeError> {
    let name = get(ctx, keys::ISSUER_NAME).ok_or_else(|| {
        error(
            keys::ISSUER_NAME,
            "is required; set it to the name of the Issuer (in the pod's namespace) or ClusterIssuer that signs the certificate",
        )
    })?;
    rules::check_dns1123_subdomain(name).map_err(|m| {
        error(
            keys::ISSUER_NAME,
            format!("{m}; it must be the metadata.name of an issuer"),
        )
    })?;
    let group = get(ctx, keys::ISSUER_GROUP).unwrap_or(CERT_MANAGER_GROUP);
    rules::check_dns1123_subdomain(group).map_err(|m| {
        error(
            keys::ISSUER_GROUP,
            format!("{m}; it must be an API group such as cert-manager.io"),
        )
    })?;
    let kind = get(ctx, keys::ISSUER_KIND).unwrap_or("Issuer");
    if group == CERT_MANAGER_GROUP {
        if kind != "Issuer" && kind != "ClusterIssuer" {
            let hint = ["Issuer", "ClusterIssuer"]
                .into_iter()
                .find(|k| k.eq_ignore_ascii_case(kind))
                .map(|k| format!(" (did you mean {k}? kinds are case-sensitive)"))
                .unwrap_or_default();
            return Err(error(
                keys::ISSUER_KIND,
                format!(
                    "{kind_q} is not a cert-manager.io issuer kind{hint}; use Issuer or ClusterIssuer, or set csi.cert-manager.io/issuer-group to the group of an external issuer",
                    kind_q = short_quote(kind)
                ),
            ));
        }
    } else {
        let valid = kind.starts_with(|c: char| c.is_ascii_alphabetic())
            && kind.chars().all(|c| c.is_ascii_alphanumeric());
        if !valid {
            return Err(error(
                keys::ISSUER_KIND,
                format!(
                    "{kind_q} is not a Kubernetes kind; a kind is a letter followed by letters and digits, e.g. AWSPCAClusterIssuer",
                    kind_q = short_quote(kind)
                ),
            ));
        }
    }
    Ok(IssuerRef {
        name: name.to_string(),
        kind: kind.to_string(),
        group: group.to_string(),
    })
}

/// A value with its variables expanded as upstream expands them; what Go
/// silently drops (`${}`, an unclosed `${`) becomes a warning.
fn expanded(
    key: &str,
    value: &str,
    vars: &Variables<'_>,
    warnings: &mut Vec<AttributeWarning>,
) -> Result<String, AttributeError> {
    let out = expand(value, vars).map_err(|e| error(key, e.to_string()))?;
    for message in out.dropped {
        warn(warnings, key, message);
    }
    Ok(out.text)
}

fn warn(warnings: &mut Vec<AttributeWarning>, key: &str, message: impl Into<String>) {
    warnings.push(AttributeWarning {
        attribute: key.to_string(),
        message: message.into(),
    });
}

/// Warns about list entries that upstream keeps but are most likely
/// mistakes: empty ones, and ones with white space at either end.
fn warn_about_entries(warnings: &mut Vec<AttributeWarning>, key: &str, entries: &[String]) {
    if let Some(n) = rules::first_empty(entries) {
        warn(
            warnings,
            key,
            format!(
                "entry {n} is empty and is kept as an empty value, as cert-manager's csi-driver keeps it; remove the extra comma"
            ),
        );
    }
    if let Some(entry) = entries.iter().find(|e| e.trim() != e.as_str()) {
        warn(
            warnings,
            key,
            format!(
                "the entry {} starts or ends with white space, which is kept in the certificate as cert-manager's csi-driver keeps it (entries are CSV, not trimmed); remove the space after the comma",
                short_quote(entry)
            ),
        );
    }
}

/// A subject list: the value expanded, then read as one CSV record, as
/// csi-driver does (`SplitWithEscapeCSV`).
fn subject_list(
    ctx: &HashMap<String, String>,
    key: &str,
    vars: &Variables<'_>,
    warnings: &mut Vec<AttributeWarning>,
) -> Result<Vec<String>, AttributeError> {
    let Some(value) = get(ctx, key) else {
        return Ok(Vec::new());
    };
    let value = expanded(key, value, vars, warnings)?;
    let entries = rules::split_csv(&value).map_err(|m| {
        let shown = short_quote(&value);
        error(
            key,
            format!("{shown} is not a comma-separated list as cert-manager reads it (CSV): {m}"),
        )
    })?;
    warn_about_entries(warnings, key, &entries);
    Ok(entries)
}

fn parse_subject(
    ctx: &HashMap<String, String>,
    vars: &Variables<'_>,
    warnings: &mut Vec<AttributeWarning>,
) -> Result<SubjectSpec, AttributeError> {
    const FIELDS: [&str; 9] = [
        keys::COMMON_NAME,
        keys::ORGANIZATIONS,
        keys::ORGANIZATIONAL_UNITS,
        keys::COUNTRIES,
        keys::PROVINCES,
        keys::LOCALITIES,
        keys::STREET_ADDRESSES,
        keys::POSTAL_CODES,
        keys::SERIAL_NUMBER,
    ];
    if let Some(literal) = get(ctx, keys::LITERAL_SUBJECT) {
        // Upstream silently ignores the other subject attributes here (it
        // does not even expand them). A pod spec written for upstream must
        // keep working, so this is not an error, but it is not silent
        // either: the warning reaches the logs and the pod's events.
        let ignored: Vec<&str> = FIELDS
            .into_iter()
            .filter(|k| get(ctx, k).is_some())
            .collect();
        if !ignored.is_empty() {
            warn(
                warnings,
                keys::LITERAL_SUBJECT,
                format!(
                    "is set, so {} {} ignored; put those values into the literal subject or remove them",
                    ignored.join(", "),
                    if ignored.len() == 1 { "is" } else { "are" }
                ),
            );
        }
        // Expanded like upstream, so CN=$POD_NAME works in a literal subject.
        let literal = expanded(keys::LITERAL_SUBJECT, literal, vars, warnings)?;
        let rdns = pki::dn::parse_literal(&literal).map_err(|m| {
            error(
                keys::LITERAL_SUBJECT,
                format!(
                    "{literal_q} is not a distinguished name cert-manager can encode: {m}",
                    literal_q = short_quote(&literal)
                ),
            )
        })?;
        if rdns.is_empty() {
            warn(
                warnings,
                keys::LITERAL_SUBJECT,
                "is blank, so the certificate's subject is empty (as upstream); remove the attribute or write a distinguished name such as CN=app",
            );
        }
        warn_about_bounds(
            warnings,
            rdns.iter()
                .flatten()
                .map(|a| (a.oid, a.value.as_str(), keys::LITERAL_SUBJECT)),
        );
        return Ok(SubjectSpec {
            literal: Some(literal),
            ..SubjectSpec::default()
        });
    }
    let serial_number = get(ctx, keys::SERIAL_NUMBER).map(|v| {
        if v.contains('$') {
            warn(
                warnings,
                keys::SERIAL_NUMBER,
                "is not expanded (cert-manager's csi-driver expands variables in the other subject attributes, not in this one), so its '$' is kept as written",
            );
        }
        v.to_string()
    });
    let subject = SubjectSpec {
        literal: None,
        common_name: get(ctx, keys::COMMON_NAME)
            .map(|v| expanded(keys::COMMON_NAME, v, vars, warnings))
            .transpose()?,
        organizations: subject_list(ctx, keys::ORGANIZATIONS, vars, warnings)?,
        organizational_units: subject_list(ctx, keys::ORGANIZATIONAL_UNITS, vars, warnings)?,
        countries: subject_list(ctx, keys::COUNTRIES, vars, warnings)?,
        provinces: subject_list(ctx, keys::PROVINCES, vars, warnings)?,
        localities: subject_list(ctx, keys::LOCALITIES, vars, warnings)?,
        street_addresses: subject_list(ctx, keys::STREET_ADDRESSES, vars, warnings)?,
        postal_codes: subject_list(ctx, keys::POSTAL_CODES, vars, warnings)?,
        serial_number,
    };
    let fields: [(&str, &str, Vec<&String>); 9] = [
        (
            keys::COMMON_NAME,
            "2.5.4.3",
            subject.common_name.iter().collect(),
        ),
        (
            keys::ORGANIZATIONS,
            "2.5.4.10",
            subject.organizations.iter().collect(),
        ),
        (
            keys::ORGANIZATIONAL_UNITS,
            "2.5.4.11",
            subject.organizational_units.iter().collect(),
        ),
        (
            keys::COUNTRIES,
            "2.5.4.6",
            subject.countries.iter().collect(),
        ),
        (
            keys::PROVINCES,
            "2.5.4.8",
            subject.provinces.iter().collect(),
        ),
        (
            keys::LOCALITIES,
            "2.5.4.7",
            subject.localities.iter().collect(),
        ),
        (
            keys::STREET_ADDRESSES,
            "2.5.4.9",
            subject.street_addresses.iter().collect(),
        ),
        (
            keys::POSTAL_CODES,
            "2.5.4.17",
            subject.postal_codes.iter().collect(),
        ),
        (
            keys::SERIAL_NUMBER,
            "2.5.4.5",
            subject.serial_number.iter().collect(),
        ),
    ];
    let all = fields.iter().flat_map(|(key, oid, values)| {
        let oid = der::asn1::ObjectIdentifier::new_unwrap(oid);
        values.iter().map(move |v| (oid, v.as_str(), *key))
    });
    warn_about_bounds(warnings, all);
    Ok(subject)
}

/// RFC 5280's upper bounds on subject attribute values (Appendix A.1,
/// `ub-*`), in characters, by attribute type. Upstream does not check them
/// and Go signs longer values, so a longer value is accepted with a
/// warning: strict parsers may refuse the certificate.
const SUBJECT_BOUNDS: [(&str, usize); 9] = [
    ("2.5.4.3", 64),
    ("2.5.4.10", 64),
    ("2.5.4.11", 64),
    ("2.5.4.6", 2),
    ("2.5.4.8", 128),
    ("2.5.4.7", 128),
    ("2.5.4.9", 128),
    ("2.5.4.17", 40),
    ("2.5.4.5", 64),
];

fn warn_about_bounds<'a>(
    warnings: &mut Vec<AttributeWarning>,
    values: impl IntoIterator<Item = (der::asn1::ObjectIdentifier, &'a str, &'a str)>,
) {
    let mut warned: Vec<&str> = Vec::new();
    for (oid, value, key) in values {
        if warned.contains(&key) {
            continue;
        }
        let Some((_, bound)) = SUBJECT_BOUNDS
            .iter()
            .find(|(o, _)| der::asn1::ObjectIdentifier::new_unwrap(o) == oid)
        else {
            continue;
        };
        let length = value.chars().count();
        if length > *bound {
            warn(
                warnings,
                key,
                format!(
                    "{} is {length} characters long, more than the {bound} RFC 5280 allows for this attribute; it is requested as given (as upstream does), but strict TLS clients may refuse the certificate",
                    short_quote(value)
                ),
            );
            // One warning per attribute is enough to act on.
            warned.push(key);
        }
    }
}

fn parse_sans(
    ctx: &HashMap<String, String>,
    vars: &Variables<'_>,
    warnings: &mut Vec<AttributeWarning>,
) -> Result<SanSpec, AttributeError> {
    // dns-names: expanded, split and trimmed, nothing else (upstream). Go
    // can only encode ASCII (IA5String) and fails the request otherwise.
    let mut dns_names = Vec::new();
    if let Some(value) = get(ctx, keys::DNS_NAMES) {
        let value = expanded(keys::DNS_NAMES, value, vars, warnings)?;
        dns_names = rules::split_plain(&value);
        if let Some(name) = dns_names.iter().find(|n| !n.is_ascii()) {
            return Err(error(
                keys::DNS_NAMES,
                format!(
                    "{name_q} is not ASCII, and a DNS name in a certificate must be; write internationalised names in their xn-- (punycode) form",
                    name_q = short_quote(name)
                ),
            ));
        }
        warn_about_entries(warnings, keys::DNS_NAMES, &dns_names);
        if let Some(why) = dns_names
            .iter()
            .filter(|n| !n.is_empty())
            .find_map(|n| rules::check_dns_name(n).err())
        {
            warn(
                warnings,
                keys::DNS_NAMES,
                format!(
                    "{why}; it is requested as given, as cert-manager's csi-driver does, but TLS clients may not match it"
                ),
            );
        }
    }
    // ip-sans: split and trimmed, never expanded; each must be an address.
    let mut ip_addresses = Vec::new();
    if let Some(value) = get(ctx, keys::IP_SANS) {
        for entry in rules::split_plain(value) {
            let ip: IpAddr = entry.parse().map_err(|_| {
                error(
                    keys::IP_SANS,
                    format!(
                        "{entry_q} is not an IPv4 or IPv6 address; write addresses such as 10.0.0.1 or fd00::1 (no ranges, ports, zone ids or empty entries)",
                        entry_q = short_quote(&entry)
                    ),
                )
            })?;
            // Go writes an IPv4-mapped IPv6 address as the 4-byte IPv4
            // address (net.IP.To4), and so does upstream's CSR.
            let ip = match ip {
                IpAddr::V6(v6) => v6
                    .to_ipv4_mapped()
                    .map(IpAddr::V4)
                    .unwrap_or(IpAddr::V6(v6)),
                v4 => v4,
            };
            ip_addresses.push(ip);
        }
    }
    // uri-sans: expanded, split and trimmed, each read by Go's
    // url.ParseRequestURI and written back as Go writes it.
    let mut uris = Vec::new();
    if let Some(value) = get(ctx, keys::URI_SANS) {
        let value = expanded(keys::URI_SANS, value, vars, warnings)?;
        for entry in rules::split_plain(&value) {
            let fail = |why: String| {
                error(
                    keys::URI_SANS,
                    format!("{entry_q} {why}", entry_q = short_quote(&entry)),
                )
            };
            let uri = gourl::request_uri_string(&entry).map_err(|e| {
                fail(format!(
                    "is not a URI cert-manager's csi-driver accepts ({e}); write an absolute URI such as spiffe://cluster.local/ns/$POD_NAMESPACE/sa/$SERVICE_ACCOUNT_NAME, or an absolute path such as /app"
                ))
            })?;
            if !uri.is_ascii() {
                return Err(fail(
                    "holds non-ASCII characters in its query or opaque part, which a certificate cannot carry (IA5String); percent-encode them".to_string(),
                ));
            }
            gourl::host_valid_for_x509(&uri).map_err(fail)?;
            if uri != entry {
                warn(
                    warnings,
                    keys::URI_SANS,
                    format!(
                        "{} is requested as {}, the form Go's URL parser writes it in (as upstream requests it)",
                        short_quote(&entry),
                        short_quote(&uri)
                    ),
                );
            }
            uris.push(uri);
        }
    }
    // Kept as given, repeats included: upstream's request has them all.
    Ok(SanSpec {
        dns_names,
        ip_addresses,
        uris,
        emails: Vec::new(),
    })
}

fn positive_duration(key: &str, value: &str) -> Result<Duration, AttributeError> {
    let parsed = go_duration(key, value)?;
    if parsed.is_zero() {
        return Err(error(
            key,
            format!(
                "{value_q} is zero; give a duration greater than zero, e.g. 1h",
                value_q = short_quote(value)
            ),
        ));
    }
    Ok(parsed)
}

/// A Go duration that is not negative.
fn go_duration(key: &str, value: &str) -> Result<Duration, AttributeError> {
    duration::parse_go(value).map_err(|e| {
        let days_hint = match &e {
            duration::DurationError::UnknownUnit { unit, .. } if unit == "d" => {
                "; there is no day unit, write hours (720h is 30 days)"
            }
            _ => "",
        };
        error(key, format!("{e}{days_hint}"))
    })
}

fn boolean(ctx: &HashMap<String, String>, key: &str) -> Result<Option<bool>, AttributeError> {
    match get(ctx, key) {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(other) => Err(error(
            key,
            format!(
                "{other_q} is not allowed; write exactly true or false (lowercase, unquoted in the value)",
                other_q = short_quote(other)
            ),
        )),
    }
}

/// key-usages: split and trimmed, each a cert-manager usage name, in the
/// order given and with repeats, as upstream puts them into `spec.usages`.
fn parse_usages(ctx: &HashMap<String, String>) -> Result<Vec<Usage>, AttributeError> {
    let Some(value) = get(ctx, keys::KEY_USAGES) else {
        return Ok(Usage::defaults());
    };
    let names = rules::split_plain(value);
    if let Some(n) = rules::first_empty(&names) {
        return Err(error(
            keys::KEY_USAGES,
            format!(
                "entry {n} of {value_q} is empty; remove the extra comma",
                value_q = short_quote(value)
            ),
        ));
    }
    let mut usages = Vec::with_capacity(names.len());
    for name in names {
        let usage = Usage::from_name(&name).ok_or_else(|| {
            let hint = Usage::from_name(&name.to_ascii_lowercase())
                .map(|u| format!(" (did you mean {:?}? usage names are lowercase)", u.name()))
                .unwrap_or_default();
            let valid: Vec<&str> = Usage::ALL.iter().map(|(_, n)| *n).collect();
            error(
                keys::KEY_USAGES,
                format!(
                    "{name_q} is not a cert-manager key usage{hint}; use a comma-separated list of: {}",
                    valid.join(", "), name_q = short_quote(&name)
                ),
            )
        })?;
        usages.push(usage);
    }
    Ok(usages)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Algorithm {
    Rsa,
    Ecdsa,
    Ed25519,
}

fn parse_key(ctx: &HashMap<String, String>) -> Result<KeySpec, AttributeError> {
    let algorithm = match get(ctx, keys::KEY_ALGORITHM) {
        None => Algorithm::Rsa,
        Some(v) if v.eq_ignore_ascii_case("rsa") => Algorithm::Rsa,
        Some(v) if v.eq_ignore_ascii_case("ecdsa") => Algorithm::Ecdsa,
        Some(v) if v.eq_ignore_ascii_case("ed25519") => Algorithm::Ed25519,
        Some(v) => {
            return Err(error(
                keys::KEY_ALGORITHM,
                format!(
                    "{v_q} is not supported; use RSA, ECDSA or Ed25519",
                    v_q = short_quote(v)
                ),
            ));
        }
    };
    let size = get(ctx, keys::KEY_SIZE);
    // Read as Go's strconv.Atoi reads it (upstream), so a leading '+' is
    // fine; a '-' can only give a size that is too small anyway.
    let number = |v: &str| -> Result<u32, AttributeError> {
        let digits = v.strip_prefix('+').unwrap_or(v);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(error(
                keys::KEY_SIZE,
                format!(
                    "{v_q} is not a number; write the size in bits, e.g. 2048 for RSA or 256 for ECDSA",
                    v_q = short_quote(v)
                ),
            ));
        }
        // Digits only, so the one failure left is a number too large for u32.
        Ok(digits.parse().unwrap_or(u32::MAX))
    };
    let key_algorithm = match algorithm {
        Algorithm::Rsa => {
            let bits = match size {
                None => 2048,
                Some(v) => number(v)?,
            };
            // Any size from 2048 to 8192 bits, as upstream
            // (pki.MinRSAKeySize and pki.MaxRSAKeySize).
            if bits < 2048 {
                return Err(error(
                    keys::KEY_SIZE,
                    format!(
                        "{bits} is too small; RSA keys must be at least 2048 bits (e.g. 2048, 3072 or 4096)"
                    ),
                ));
            }
            if bits > 8192 {
                return Err(error(
                    keys::KEY_SIZE,
                    format!(
                        "{bits} is too large; RSA keys can be at most 8192 bits (e.g. 4096 or 8192)"
                    ),
                ));
            }
            KeyAlgorithm::Rsa { bits }
        }
        Algorithm::Ecdsa => {
            let curve = match size.map(number).transpose()? {
                None | Some(256) => Curve::P256,
                Some(384) => Curve::P384,
                Some(521) => Curve::P521,
                Some(other) => {
                    return Err(error(
                        keys::KEY_SIZE,
                        format!(
                            "{other} is not an ECDSA size; use 256, 384 or 521 (the curves P-256, P-384 and P-521)"
                        ),
                    ));
                }
            };
            KeyAlgorithm::Ecdsa(curve)
        }
        Algorithm::Ed25519 => {
            if let Some(v) = size {
                return Err(error(
                    keys::KEY_SIZE,
                    format!(
                        "{v_q} is set, but Ed25519 keys have a fixed size; remove csi.cert-manager.io/key-size",
                        v_q = short_quote(v)
                    ),
                ));
            }
            KeyAlgorithm::Ed25519
        }
    };
    let encoding = match get(ctx, keys::KEY_ENCODING) {
        None if algorithm == Algorithm::Rsa => KeyEncoding::Pkcs1,
        None => KeyEncoding::Pkcs8,
        Some(v) if v.eq_ignore_ascii_case("pkcs8") => KeyEncoding::Pkcs8,
        Some(v) if v.eq_ignore_ascii_case("pkcs1") => {
            if algorithm != Algorithm::Rsa {
                return Err(error(
                    keys::KEY_ENCODING,
                    format!(
                        "{v_q} holds only RSA keys, and the key algorithm is not RSA; use PKCS8 or remove the attribute",
                        v_q = short_quote(v)
                    ),
                ));
            }
            KeyEncoding::Pkcs1
        }
        Some(v) => {
            return Err(error(
                keys::KEY_ENCODING,
                format!(
                    "{v_q} is not supported; use PKCS1 (RSA only) or PKCS8",
                    v_q = short_quote(v)
                ),
            ));
        }
    };
    Ok(KeySpec {
        algorithm: key_algorithm,
        encoding,
    })
}

fn file_name(
    ctx: &HashMap<String, String>,
    key: &str,
    default: &str,
) -> Result<String, AttributeError> {
    // An empty value means the default, as upstream.
    let name = get(ctx, key).unwrap_or(default);
    rules::check_file_name(name).map_err(|m| error(key, m))?;
    Ok(name.to_string())
}

/// The keystore attributes, by upstream's rules (`pkcs12Values` and the
/// writer): only "true" writes a keystore; "false" accepts a file name and
/// a password and writes nothing; with `pkcs12-enable` unset, a file name
/// or password is refused.
fn parse_pkcs12(ctx: &HashMap<String, String>) -> Result<Option<Pkcs12Spec>, AttributeError> {
    match boolean(ctx, keys::PKCS12_ENABLE)? {
        Some(true) => {}
        Some(false) => {
            // Checked as upstream checks it, though nothing is written.
            if get(ctx, keys::PKCS12_FILENAME).is_some() {
                file_name(ctx, keys::PKCS12_FILENAME, DEFAULT_PKCS12_FILE)?;
            }
            return Ok(None);
        }
        None => {
            for key in [keys::PKCS12_FILENAME, keys::PKCS12_PASSWORD] {
                if get(ctx, key).is_some() {
                    return Err(error(
                        key,
                        format!(
                            "is only used together with {}, which is not set; set pkcs12-enable to \"true\" to write a keystore, or remove this attribute",
                            keys::PKCS12_ENABLE
                        ),
                    ));
                }
            }
            return Ok(None);
        }
    }
    let filename = file_name(ctx, keys::PKCS12_FILENAME, DEFAULT_PKCS12_FILE)?;
    // The password is never echoed, not even in an error.
    let password = get(ctx, keys::PKCS12_PASSWORD).ok_or_else(|| {
        error(
            keys::PKCS12_PASSWORD,
            format!(
                "is required because {} is \"true\"; set the keystore password",
                keys::PKCS12_ENABLE
            ),
        )
    })?;
    Ok(Some(Pkcs12Spec {
        filename,
        password: SecretString::new(password),
    }))
}

fn parse_fs_group(
    ctx: &HashMap<String, String>,
    volume_mount_group: Option<&str>,
) -> Result<Option<u32>, AttributeError> {
    parse_fs_group_key(ctx, keys::FS_GROUP, volume_mount_group)
}

fn parse_fs_group_key(
    ctx: &HashMap<String, String>,
    key: &str,
    volume_mount_group: Option<&str>,
) -> Result<Option<u32>, AttributeError> {
    let from_attribute = match get(ctx, key) {
        None => None,
        Some(v) => {
            // Read as csi-lib reads it (strconv.ParseInt), so a leading
            // '+' is fine.
            let digits = v.strip_prefix('+').unwrap_or(v);
            let gid = (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
                .then(|| digits.parse::<u64>().ok())
                .flatten()
                .filter(|g| (1..=u64::from(u32::MAX)).contains(g));
            match gid {
                Some(g) => Some(g as u32),
                None => {
                    return Err(error(
                        key,
                        format!(
                            "{v_q} is not a group id; write an integer from 1 to 4294967295 (the pod's fsGroup is used when this is unset)",
                            v_q = short_quote(v)
                        ),
                    ));
                }
            }
        }
    };
    // The kubelet passes the pod's fsGroup here. 0 is accepted: a pod that
    // runs with fsGroup 0 asked for the root group, and refusing it would
    // break a valid pod; only the attribute is limited to 1..=4294967295.
    let from_kubelet = match volume_mount_group.filter(|v| !v.is_empty()) {
        None => None,
        Some(v) => match v
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| v.parse::<u32>().ok())
        {
            Some(Some(g)) => Some(g),
            _ => {
                return Err(error(
                    "volume_mount_group",
                    format!(
                        "{v_q} from the kubelet is not a group id (an integer from 0 to 4294967295); check the pod's securityContext.fsGroup",
                        v_q = short_quote(v)
                    ),
                ));
            }
        },
    };
    Ok(from_attribute.or(from_kubelet))
}

/// Context keys whose values are credentials: the service account tokens
/// (which also change on every republish) and the keystore password. They
/// are neither hashed into fingerprints nor kept in node state on disk.
pub const SECRET_CONTEXT_KEYS: &[&str] = &[kubelet::SERVICE_ACCOUNT_TOKENS, keys::PKCS12_PASSWORD];

fn is_secret_key(key: &str) -> bool {
    SECRET_CONTEXT_KEYS.contains(&key)
}

/// A stable fingerprint of a volume context, leaving out the credentials in
/// [`SECRET_CONTEXT_KEYS`] (an unsalted hash of a password on disk would
/// invite guessing). Equal fingerprints mean an unchanged volume; the hash is
/// SHA-256 over the sorted, length-prefixed keys and values.
pub fn context_fingerprint<'a, I>(context: I) -> String
where
    I: IntoIterator<Item = (&'a String, &'a String)>,
{
    let mut entries: Vec<(&String, &String)> = context
        .into_iter()
        .filter(|(k, _)| !is_secret_key(k))
        .collect();
    entries.sort();
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for (k, v) in entries {
        for part in [k, v] {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part.as_bytes());
        }
    }
    hex::encode(ctx.finish().as_ref())
}

/// The context as it may be kept in node state: everything except the
/// credentials in [`SECRET_CONTEXT_KEYS`], which are never stored on disk.
pub fn context_without_tokens(context: &HashMap<String, String>) -> BTreeMap<String, String> {
    context
        .iter()
        .filter(|(k, _)| !is_secret_key(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Caps on what one volume may ask for, from the node plugin's flags.
/// Upstream has none; these keep one pod from making the node, the API
/// server and the signer carry megabytes, with defaults far above any real
/// pod's needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InputLimits {
    /// Bytes of the attributes a pod sets (keys and values; what the kubelet
    /// adds, such as service account tokens, is not counted).
    pub max_context_bytes: usize,
    /// Subject alternative names of all kinds together.
    pub max_sans: usize,
}

impl Default for InputLimits {
    fn default() -> Self {
        InputLimits {
            max_context_bytes: 64 * 1024,
            max_sans: 256,
        }
    }
}

/// The attribute the size check reports under: the whole context, not one
/// key, since the sum is what is too large.
pub const VOLUME_CONTEXT: &str = "volume_context";

/// Refuses a context whose pod-set attributes exceed the limit, before any
/// of them is parsed.
pub fn check_context_size(
    ctx: &HashMap<String, String>,
    limits: &InputLimits,
) -> Result<(), AttributeError> {
    let size: usize = ctx
        .iter()
        .filter(|(k, _)| k.split_once('/').map(|(group, _)| group) != Some(KUBELET_GROUP))
        .map(|(k, v)| k.len() + v.len())
        .sum();
    if size > limits.max_context_bytes {
        return Err(error(
            VOLUME_CONTEXT,
            format!(
                "the volume's attributes take {size} bytes, more than --max-volume-context-bytes ({}); a certificate's description needs far less, so look for a value pasted by mistake",
                limits.max_context_bytes
            ),
        ));
    }
    Ok(())
}

/// Refuses more SANs than the limit, naming the attribute with the most.
pub fn check_san_count(sans: &SanSpec, limits: &InputLimits) -> Result<(), AttributeError> {
    let counts = [
        (keys::DNS_NAMES, sans.dns_names.len()),
        (keys::IP_SANS, sans.ip_addresses.len()),
        (keys::URI_SANS, sans.uris.len()),
    ];
    let total: usize = counts.iter().map(|(_, n)| n).sum();
    if total > limits.max_sans {
        let (key, _) = counts
            .iter()
            .max_by_key(|(_, n)| *n)
            .expect("three kinds of SAN");
        return Err(error(
            key,
            format!(
                "the volume asks for {total} subject alternative names, more than --max-sans ({}); split the names over several volumes, or raise the limit on the node plugin",
                limits.max_sans
            ),
        ));
    }
    Ok(())
}
