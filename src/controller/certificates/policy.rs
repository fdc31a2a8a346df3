//! Pure decisions for the certificates loop: what a Certificate's spec asks
//! for, whether the Secret it names still delivers that (and if not, why),
//! when to renew, and how long to back off after a failure.
//!
//! Nothing here reads a clock or the network; callers pass `now`, so every
//! branch has an exact unit test.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use der::Decode;
use thiserror::Error;

use crate::api::duration::{format_go, parse_go};
use crate::api::{CertificateSpec, IssuerRef, PrivateKeyAlgorithm, RotationPolicy};
use crate::pki::rules::EncodedUsages;
use crate::pki::sign::CLOCK_SKEW_BACKDATE;
use crate::pki::{
    CertInfo, Curve, KeyAlgorithm, KeyEncoding, PrivateKey, SanSpec, SubjectSpec, Usage,
};
use crate::renewal::schedule::{self, JitterPolicy};

/// cert-manager's default `spec.duration`.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(90 * 24 * 3600);
/// The shortest `spec.duration` cert-manager's webhook admits.
pub const MIN_DURATION: Duration = Duration::from_secs(3600);
/// The shortest `spec.renewBefore` cert-manager's webhook admits.
pub const MIN_RENEW_BEFORE: Duration = Duration::from_secs(5 * 60);
/// cert-manager's default `spec.revisionHistoryLimit` as the reference gives it.
pub const DEFAULT_REVISION_HISTORY_LIMIT: usize = 1;
/// Upstream's backoff after a failed issuance: 1h × 2^(failures−1) …
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_secs(3600);
/// … capped at 32h.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(32 * 3600);

/// Trigger reasons, as cert-manager's trigger and readiness controllers
/// write them into the Issuing and Ready conditions.
pub mod reasons {
    pub const DOES_NOT_EXIST: &str = "DoesNotExist";
    pub const MISSING_DATA: &str = "MissingData";
    pub const INVALID_KEY_PAIR: &str = "InvalidKeyPair";
    pub const INVALID_CERTIFICATE: &str = "InvalidCertificate";
    pub const SECRET_MISMATCH: &str = "SecretMismatch";
    pub const INCORRECT_ISSUER: &str = "IncorrectIssuer";
    pub const EXPIRED: &str = "Expired";
    pub const RENEWING: &str = "Renewing";
    /// Ready=True.
    pub const READY: &str = "Ready";
    /// Issuing=False after a request failed (or its result was refused).
    pub const FAILED: &str = "Failed";
    /// Issuing=False after the request was denied.
    pub const DENIED: &str = "Denied";
    /// Ready=False when the spec cannot be acted on (upstream's webhook
    /// would have refused it; cert-csi reports it instead).
    pub const INVALID_SPEC: &str = "InvalidSpec";
}

/// Ready=True's message, as upstream writes it.
pub const READY_MESSAGE: &str = "Certificate is up to date and has not expired";

/// A spec the controller cannot act on.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SpecError {
    #[error("{field}: {value:?} is invalid: {reason}")]
    Invalid {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error(
        "spec: no name to certify; set at least one of commonName, dnsNames, ipAddresses, uris, emailAddresses (or literalSubject)"
    )]
    NoNames,
    #[error("spec.secretName is empty; name the Secret that should hold the certificate")]
    NoSecretName,
}

fn invalid(field: &'static str, value: impl ToString, reason: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        field,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// A Certificate spec, parsed, validated and with upstream's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    pub secret_name: String,
    pub issuer_ref: IssuerRef,
    pub key_algorithm: KeyAlgorithm,
    /// How `tls.key` is written. `encoding: PKCS1` (the default) means
    /// PKCS#1 for RSA and SEC1 for ECDSA; Ed25519 is always PKCS#8.
    pub key_encoding: KeyEncoding,
    pub rotation: RotationPolicy,
    pub subject: SubjectSpec,
    pub sans: SanSpec,
    pub duration: Duration,
    pub renew_before: Option<Duration>,
    pub renew_before_percentage: Option<u32>,
    pub is_ca: bool,
    /// As written in spec.usages (empty = the defaults when encoded).
    pub usages: Vec<Usage>,
    pub usage_names: Vec<String>,
    pub encode_usages_in_request: bool,
    pub revision_history_limit: usize,
}

impl Desired {
    /// `spec.duration` as a CertificateRequest carries it.
    pub fn duration_string(&self) -> String {
        format_go(self.duration)
    }
}

fn opt_list(list: &Option<Vec<String>>) -> Vec<String> {
    list.clone().unwrap_or_default()
}

fn parse_duration_field(field: &'static str, text: &str) -> Result<Duration, SpecError> {
    parse_go(text).map_err(|e| {
        invalid(
            field,
            text,
            format!("{e}; write a Go duration such as 2160h"),
        )
    })
}

/// Parses and validates `spec` the way cert-manager's webhook would.
pub fn parse_spec(spec: &CertificateSpec) -> Result<Desired, SpecError> {
    if spec.secret_name.is_empty() {
        return Err(SpecError::NoSecretName);
    }
    if spec.issuer_ref.name.is_empty() {
        return Err(invalid(
            "spec.issuerRef.name",
            "",
            "name the Issuer or ClusterIssuer that signs this Certificate",
        ));
    }
    let pk = spec.private_key.clone().unwrap_or_default();
    let field_err =
        |field: &'static str| move |e: crate::api::ApiError| invalid(field, "", e.to_string());
    let algorithm = pk
        .algorithm()
        .map_err(field_err("spec.privateKey.algorithm"))?;
    let encoding = pk
        .encoding()
        .map_err(field_err("spec.privateKey.encoding"))?;
    let rotation = pk
        .rotation_policy()
        .map_err(field_err("spec.privateKey.rotationPolicy"))?;
    let size = pk.size.filter(|s| *s != 0);
    let key_algorithm = match algorithm {
        PrivateKeyAlgorithm::Rsa => {
            let bits = size.unwrap_or(2048);
            if bits < 0 || !crate::pki::key::RSA_BITS.contains(&(bits as u32)) {
                return Err(invalid(
                    "spec.privateKey.size",
                    bits,
                    "RSA keys must be between 2048 and 8192 bits",
                ));
            }
            KeyAlgorithm::Rsa { bits: bits as u32 }
        }
        PrivateKeyAlgorithm::Ecdsa => KeyAlgorithm::Ecdsa(match size.unwrap_or(256) {
            256 => Curve::P256,
            384 => Curve::P384,
            521 => Curve::P521,
            other => {
                return Err(invalid(
                    "spec.privateKey.size",
                    other,
                    "ECDSA keys use 256, 384 or 521 (the curve size)",
                ));
            }
        }),
        PrivateKeyAlgorithm::Ed25519 => KeyAlgorithm::Ed25519,
    };
    let key_encoding = match (encoding, key_algorithm) {
        // As cert-manager's pki.EncodePrivateKey: "PKCS1" is the
        // algorithm's own format, PKCS#1 for RSA and SEC1 ("EC PRIVATE
        // KEY") for ECDSA; Ed25519 has none, so it is PKCS#8.
        (crate::api::PrivateKeyEncoding::Pkcs1, KeyAlgorithm::Rsa { .. }) => KeyEncoding::Pkcs1,
        (crate::api::PrivateKeyEncoding::Pkcs1, KeyAlgorithm::Ecdsa(_)) => KeyEncoding::Sec1,
        _ => KeyEncoding::Pkcs8,
    };

    let duration = match spec.duration.as_deref().filter(|d| !d.is_empty()) {
        None => DEFAULT_DURATION,
        Some(text) => parse_duration_field("spec.duration", text)?,
    };
    if duration < MIN_DURATION {
        return Err(invalid(
            "spec.duration",
            spec.duration.as_deref().unwrap_or_default(),
            "a Certificate must last at least 1h (cert-manager's minimum)",
        ));
    }
    let renew_before = match spec.renew_before.as_deref().filter(|d| !d.is_empty()) {
        None => None,
        Some(text) => {
            let rb = parse_duration_field("spec.renewBefore", text)?;
            if rb < MIN_RENEW_BEFORE {
                return Err(invalid(
                    "spec.renewBefore",
                    text,
                    "renewBefore must be at least 5m (cert-manager's minimum)",
                ));
            }
            if rb >= duration {
                return Err(invalid(
                    "spec.renewBefore",
                    text,
                    format!(
                        "renewBefore must be shorter than spec.duration ({})",
                        format_go(duration)
                    ),
                ));
            }
            Some(rb)
        }
    };
    let renew_before_percentage = match spec.renew_before_percentage {
        None => None,
        Some(p) if (1..=99).contains(&p) => Some(p as u32),
        Some(p) => {
            return Err(invalid(
                "spec.renewBeforePercentage",
                p,
                "use a whole percentage of the lifetime from 1 to 99",
            ));
        }
    };
    if renew_before.is_some() && renew_before_percentage.is_some() {
        return Err(invalid(
            "spec.renewBeforePercentage",
            renew_before_percentage.unwrap_or_default(),
            "set renewBefore or renewBeforePercentage, not both",
        ));
    }

    let mut usages = Vec::new();
    for name in spec.usages.iter().flatten() {
        usages.push(Usage::from_name(name).ok_or_else(|| {
            invalid(
                "spec.usages",
                name,
                "not a key usage; use names such as \"digital signature\", \"key encipherment\", \"server auth\", \"client auth\"",
            )
        })?);
    }

    let mut ip_addresses = Vec::new();
    for ip in spec.ip_addresses.iter().flatten() {
        ip_addresses.push(ip.parse::<IpAddr>().map_err(|_| {
            invalid(
                "spec.ipAddresses",
                ip,
                "not an IP address; write e.g. 10.0.0.1 or ::1",
            )
        })?);
    }
    let sans = SanSpec {
        dns_names: opt_list(&spec.dns_names),
        ip_addresses,
        uris: opt_list(&spec.uris),
        emails: opt_list(&spec.email_addresses),
    };
    let literal = spec.literal_subject.clone().filter(|s| !s.is_empty());
    let common_name = spec.common_name.clone().filter(|s| !s.is_empty());
    if let Some(cn) = &common_name
        && cn.chars().count() > 64
    {
        return Err(invalid(
            "spec.commonName",
            cn,
            "a common name has at most 64 characters; put long names in dnsNames",
        ));
    }
    let s = spec.subject.clone().unwrap_or_default();
    let subject = SubjectSpec {
        literal: literal.clone(),
        common_name: if literal.is_some() {
            None
        } else {
            common_name.clone()
        },
        organizations: opt_list(&s.organizations),
        organizational_units: opt_list(&s.organizational_units),
        countries: opt_list(&s.countries),
        provinces: opt_list(&s.provinces),
        localities: opt_list(&s.localities),
        street_addresses: opt_list(&s.street_addresses),
        postal_codes: opt_list(&s.postal_codes),
        serial_number: s.serial_number.clone().filter(|v| !v.is_empty()),
    };
    if common_name.is_none()
        && literal.is_none()
        && sans.dns_names.is_empty()
        && sans.ip_addresses.is_empty()
        && sans.uris.is_empty()
        && sans.emails.is_empty()
    {
        return Err(SpecError::NoNames);
    }
    let revision_history_limit = match spec.revision_history_limit {
        None => DEFAULT_REVISION_HISTORY_LIMIT,
        Some(n) if n >= 1 => n as usize,
        Some(n) => {
            return Err(invalid(
                "spec.revisionHistoryLimit",
                n,
                "keep at least 1 CertificateRequest (the current one)",
            ));
        }
    };
    Ok(Desired {
        secret_name: spec.secret_name.clone(),
        issuer_ref: spec.issuer_ref.clone(),
        key_algorithm,
        key_encoding,
        rotation,
        subject,
        sans,
        duration,
        renew_before,
        renew_before_percentage,
        is_ca: spec.is_ca.unwrap_or(false),
        usages,
        usage_names: opt_list(&spec.usages),
        encode_usages_in_request: spec.encode_usages_in_request.unwrap_or(true),
        revision_history_limit,
    })
}

/// Why a Certificate needs a (new) certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trigger {
    pub reason: &'static str,
    pub message: String,
}

impl Trigger {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Trigger {
            reason,
            message: message.into(),
        }
    }
}

/// What the Secret currently holds, as far as the decision needs it.
#[derive(Clone, Debug, Default)]
pub struct SecretView<'a> {
    pub tls_crt: Option<&'a [u8]>,
    pub tls_key: Option<&'a [u8]>,
    /// The `cert-manager.io/issuer-*` annotations.
    pub issuer_name: Option<&'a str>,
    pub issuer_kind: Option<&'a str>,
    pub issuer_group: Option<&'a str>,
}

/// What the current revision's CertificateRequest asked for; usages, isCA
/// and duration are compared with this rather than with the certificate,
/// because issuers may legitimately cap a lifetime (CA notAfter) or add usages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requested {
    pub duration: Option<Duration>,
    pub is_ca: bool,
    pub usages: BTreeSet<Usage>,
}

/// A Secret that still delivers the spec.
#[derive(Debug)]
pub struct Current {
    pub leaf: CertInfo,
    pub key: PrivateKey,
}

/// The result of [`evaluate`].
#[derive(Debug)]
pub enum Evaluation {
    Issue(Trigger),
    Valid(Box<Current>),
}

fn ts(t: SystemTime) -> String {
    jiff::Timestamp::try_from(t)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| format!("{t:?}"))
}

fn set<T: Ord + Clone>(items: &[T]) -> BTreeSet<T> {
    items.iter().cloned().collect()
}

/// The usage set a request derives from `usages` and `is_ca`.
pub fn usage_set(usages: &[Usage], is_ca: bool) -> BTreeSet<Usage> {
    EncodedUsages::derive(usages, is_ca)
        .names()
        .into_iter()
        .collect()
}

/// Fields of `desired` the certificate in the Secret no longer matches, by
/// spec field name. Names and subject fields compare as unordered sets.
pub fn spec_violations(
    desired: &Desired,
    leaf: &CertInfo,
    requested: Option<&Requested>,
) -> Vec<&'static str> {
    let mut out = Vec::new();
    let want = &desired.sans;
    let have = &leaf.sans;
    if set(&want.dns_names) != set(&have.dns_names) {
        out.push("spec.dnsNames");
    }
    if set(&want.ip_addresses) != set(&have.ip_addresses) {
        out.push("spec.ipAddresses");
    }
    if set(&want.uris) != set(&have.uris) {
        out.push("spec.uris");
    }
    if set(&want.emails) != set(&have.emails) {
        out.push("spec.emailAddresses");
    }
    match &desired.subject.literal {
        Some(_) => {
            let wanted = crate::pki::csr::subject_name(&desired.subject)
                .ok()
                .and_then(|n| der::Encode::to_der(&n).ok());
            if wanted.as_deref() != Some(leaf.subject_der.as_slice()) {
                out.push("spec.literalSubject");
            }
        }
        None => {
            let got = x509_cert::name::Name::from_der(&leaf.subject_der)
                .map(|n| crate::pki::rules::subject_fields(&n))
                .unwrap_or_default();
            let w = &desired.subject;
            if w.common_name != got.common_name {
                out.push("spec.commonName");
            }
            let pairs: [(&'static str, &Vec<String>, &Vec<String>); 7] = [
                (
                    "spec.subject.organizations",
                    &w.organizations,
                    &got.organizations,
                ),
                (
                    "spec.subject.organizationalUnits",
                    &w.organizational_units,
                    &got.organizational_units,
                ),
                ("spec.subject.countries", &w.countries, &got.countries),
                ("spec.subject.provinces", &w.provinces, &got.provinces),
                ("spec.subject.localities", &w.localities, &got.localities),
                (
                    "spec.subject.streetAddresses",
                    &w.street_addresses,
                    &got.street_addresses,
                ),
                (
                    "spec.subject.postalCodes",
                    &w.postal_codes,
                    &got.postal_codes,
                ),
            ];
            for (field, a, b) in pairs {
                if set(a) != set(b) {
                    out.push(field);
                }
            }
            if w.serial_number != got.serial_number {
                out.push("spec.subject.serialNumber");
            }
        }
    }
    if desired.is_ca != leaf.is_ca {
        out.push("spec.isCA");
    }
    if let Some(req) = requested {
        if req.is_ca != desired.is_ca && !out.contains(&"spec.isCA") {
            out.push("spec.isCA");
        }
        if req.usages != usage_set(&desired.usages, desired.is_ca) {
            out.push("spec.usages");
        }
        if req.duration.unwrap_or(DEFAULT_DURATION) != desired.duration {
            out.push("spec.duration");
        }
    }
    out
}

/// cert-manager's trigger policy chain, in upstream's order: the first
/// reason that applies wins. Renewal time is not checked here (it needs the
/// jittered schedule; see [`renewal_time`]); expiry is.
pub fn evaluate(
    desired: &Desired,
    secret: Option<&SecretView<'_>>,
    requested: Option<&Requested>,
    now: SystemTime,
) -> Evaluation {
    use reasons::*;
    let Some(secret) = secret else {
        return Evaluation::Issue(Trigger::new(
            DOES_NOT_EXIST,
            "Issuing certificate as Secret does not exist",
        ));
    };
    let (Some(key_pem), Some(crt_pem)) = (secret.tls_key, secret.tls_crt) else {
        let what = if secret.tls_key.is_none() {
            "a private key"
        } else {
            "a certificate"
        };
        return Evaluation::Issue(Trigger::new(
            MISSING_DATA,
            format!("Issuing certificate as Secret does not contain {what}"),
        ));
    };
    let key = match PrivateKey::from_pem(key_pem) {
        Ok(k) => k,
        Err(e) => {
            return Evaluation::Issue(Trigger::new(
                INVALID_KEY_PAIR,
                format!("Issuing certificate as Secret contains invalid private key data: {e}"),
            ));
        }
    };
    let leaf = match crate::pki::parse_chain(crt_pem) {
        Ok(mut chain) if !chain.is_empty() => chain.swap_remove(0),
        Ok(_) => {
            return Evaluation::Issue(Trigger::new(
                INVALID_CERTIFICATE,
                "Issuing certificate as Secret contains an invalid certificate: tls.crt holds no certificate",
            ));
        }
        Err(e) => {
            return Evaluation::Issue(Trigger::new(
                INVALID_CERTIFICATE,
                format!("Issuing certificate as Secret contains an invalid certificate: {e}"),
            ));
        }
    };
    if !crate::pki::key_matches_certificate(&key, &leaf) {
        return Evaluation::Issue(Trigger::new(
            SECRET_MISMATCH,
            "Issuing certificate as Secret contains a private key that does not match the certificate",
        ));
    }
    if !same_key_kind(key.algorithm(), desired.key_algorithm) {
        let field = match (key.algorithm(), desired.key_algorithm) {
            (KeyAlgorithm::Rsa { .. }, KeyAlgorithm::Rsa { .. })
            | (KeyAlgorithm::Ecdsa(_), KeyAlgorithm::Ecdsa(_)) => "spec.privateKey.size",
            _ => "spec.privateKey.algorithm",
        };
        return Evaluation::Issue(Trigger::new(
            SECRET_MISMATCH,
            format!(
                "Issuing certificate as Secret's private key is not up to date for spec: [{field}]"
            ),
        ));
    }
    let annotated = crate::api::IssuerRef {
        name: secret.issuer_name.unwrap_or_default().to_owned(),
        kind: secret.issuer_kind.map(str::to_owned),
        group: secret.issuer_group.map(str::to_owned),
    };
    // Absent annotations (a Secret made by hand) count as "unknown issuer",
    // not as a mismatch, like upstream; "" and the defaults are equal.
    if secret.issuer_name.is_some() && !annotated.same_issuer(&desired.issuer_ref) {
        return Evaluation::Issue(Trigger::new(
            INCORRECT_ISSUER,
            format!(
                "Issuing certificate as Secret was previously issued by \"{}.{}/{}\"",
                annotated.kind_or_default(),
                annotated.group_or_default(),
                annotated.name
            ),
        ));
    }
    let violations = spec_violations(desired, &leaf, requested);
    if !violations.is_empty() {
        return Evaluation::Issue(Trigger::new(
            SECRET_MISMATCH,
            format!(
                "Issuing certificate as Secret is not up to date for spec: [{}]",
                violations.join(", ")
            ),
        ));
    }
    if leaf.not_after <= now {
        return Evaluation::Issue(Trigger::new(
            EXPIRED,
            format!("Certificate expired on {}", ts(leaf.not_after)),
        ));
    }
    Evaluation::Valid(Box::new(Current { leaf, key }))
}

/// The Renewing trigger, for a renewal time that has passed.
pub fn renewing(at: SystemTime) -> Trigger {
    Trigger::new(
        reasons::RENEWING,
        format!(
            "Renewing certificate as renewal was scheduled at {}",
            ts(at)
        ),
    )
}

fn same_key_kind(have: KeyAlgorithm, want: KeyAlgorithm) -> bool {
    have == want
}

/// How long before notAfter to renew, upstream's order of preference:
/// renewBefore when positive; else lifetime × percentage; else a third of
/// the lifetime; each only when shorter than the lifetime. The lifetime
/// compared with excludes the signer's clock-skew backdate: upstream's CA
/// signer does not backdate, and with it a renewBefore equal to what a CA
/// near its own expiry can still give (issue 13) would be "shorter than the
/// lifetime" and reissue at once, again and again.
pub fn renew_before(
    lifetime: Duration,
    renew_before: Option<Duration>,
    percentage: Option<u32>,
) -> Duration {
    let asked = match (renew_before, percentage) {
        (Some(rb), _) if !rb.is_zero() => Some(rb),
        (_, Some(p)) if (1..100).contains(&p) => Some(lifetime * p / 100),
        _ => None,
    };
    match asked {
        Some(rb) if rb.saturating_add(CLOCK_SKEW_BACKDATE) < lifetime => rb,
        _ => lifetime / 3,
    }
}

/// When to renew: notAfter − renew_before, moved earlier by up to
/// `jitter.fraction() × renew_before` (`unit_random` in [0, 1) picks where),
/// never later than upstream's time, and jitter never reaches before half
/// the lifetime (see [`schedule::jittered`]).
pub fn renewal_time(
    not_before: SystemTime,
    not_after: SystemTime,
    requested_renew_before: Option<Duration>,
    percentage: Option<u32>,
    jitter: JitterPolicy,
    unit_random: f64,
) -> SystemTime {
    let Ok(lifetime) = not_after.duration_since(not_before) else {
        return not_after;
    };
    let before = renew_before(lifetime, requested_renew_before, percentage);
    schedule::jittered(not_before, not_after, before, jitter, unit_random)
}

/// A stable number in [0, 1) for one certificate, so every reconcile of
/// the same certificate picks the same jittered time (a fresh random number
/// per reconcile would move the schedule each time it is computed).
pub fn stable_unit(seed: &[u8]) -> f64 {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, seed);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    (u64::from_be_bytes(first) >> 11) as f64 / (1u64 << 53) as f64
}

/// Upstream's delay after `failures` failed issuances: base × 2^(failures−1),
/// capped at `max`; no delay before any failure.
pub fn backoff_delay(failures: u32, base: Duration, max: Duration) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let factor = 1u32.checked_shl((failures - 1).min(31)).unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(max)
}

/// When the next attempt may start, or `None` when no backoff applies:
/// no failure recorded, or the spec changed since the failure (upstream
/// skips the wait then, so fixing a spec takes effect at once).
pub fn retry_not_before(
    failures: u32,
    last_failure: Option<SystemTime>,
    failed_generation: Option<i64>,
    generation: Option<i64>,
    base: Duration,
    max: Duration,
) -> Option<SystemTime> {
    let last = last_failure?;
    if failures == 0 || (failed_generation.is_some() && failed_generation != generation) {
        return None;
    }
    Some(last + backoff_delay(failures, base, max))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{CertificatePrivateKey, X509Subject};
    use crate::pki::{SignParams, sign_self_signed};

    const HOUR: Duration = Duration::from_secs(3600);

    fn spec() -> CertificateSpec {
        CertificateSpec {
            secret_name: "tls".into(),
            issuer_ref: IssuerRef::issuer("ca"),
            common_name: Some("app".into()),
            dns_names: Some(vec!["a.example".into(), "b.example".into()]),
            private_key: Some(CertificatePrivateKey {
                algorithm: Some("ECDSA".into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn issue(desired: &Desired, key: &PrivateKey, params: &SignParams) -> String {
        let csr = crate::pki::build_csr(
            key,
            &desired.subject,
            &desired.sans,
            &crate::pki::CsrOptions {
                encode_usages: Some((&desired.usages, desired.is_ca)),
                critical_san_when_subject_empty: true,
                ..Default::default()
            },
        )
        .unwrap();
        sign_self_signed(csr.pem.as_bytes(), key, params)
            .unwrap()
            .certificate_pem
    }

    struct Fixture {
        desired: Desired,
        key_pem: Vec<u8>,
        crt: Vec<u8>,
    }

    fn fixture(spec: &CertificateSpec) -> Fixture {
        let desired = parse_spec(spec).unwrap();
        let key = PrivateKey::generate(desired.key_algorithm).unwrap();
        let crt = issue(
            &desired,
            &key,
            &SignParams {
                duration: Some(desired.duration),
                usages: desired.usages.clone(),
                is_ca: desired.is_ca,
                ..Default::default()
            },
        );
        let key_pem = key.to_pem(KeyEncoding::Pkcs8).unwrap().expose().to_vec();
        Fixture {
            desired,
            key_pem,
            crt: crt.into_bytes(),
        }
    }

    fn view<'a>(f: &'a Fixture) -> SecretView<'a> {
        SecretView {
            tls_crt: Some(&f.crt),
            tls_key: Some(&f.key_pem),
            issuer_name: Some("ca"),
            issuer_kind: Some("Issuer"),
            issuer_group: Some("cert-manager.io"),
        }
    }

    fn reason(e: Evaluation) -> &'static str {
        match &e {
            Evaluation::Issue(t) => t.reason,
            Evaluation::Valid(_) => "valid",
        }
    }

    fn message(e: &Evaluation) -> String {
        match e {
            Evaluation::Issue(t) => t.message.clone(),
            Evaluation::Valid(_) => "valid".into(),
        }
    }

    #[test]
    fn spec_defaults_follow_upstream() {
        let d = parse_spec(&CertificateSpec {
            secret_name: "s".into(),
            issuer_ref: IssuerRef::issuer("ca"),
            dns_names: Some(vec!["x".into()]),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(d.key_algorithm, KeyAlgorithm::Rsa { bits: 2048 });
        assert_eq!(d.key_encoding, KeyEncoding::Pkcs1);
        assert_eq!(d.rotation, RotationPolicy::Always);
        assert_eq!(d.duration, DEFAULT_DURATION);
        assert_eq!(d.revision_history_limit, 1);
        assert!(d.encode_usages_in_request);
        assert_eq!(d.duration_string(), "2160h0m0s");
        let ed = parse_spec(&CertificateSpec {
            private_key: Some(CertificatePrivateKey {
                algorithm: Some("Ed25519".into()),
                encoding: Some("PKCS1".into()),
                ..Default::default()
            }),
            ..spec()
        })
        .unwrap();
        assert_eq!(
            ed.key_encoding,
            KeyEncoding::Pkcs8,
            "Ed25519 is always PKCS#8"
        );
        for (encoding, want) in [
            (None, KeyEncoding::Sec1),
            (Some("PKCS1"), KeyEncoding::Sec1),
            (Some("PKCS8"), KeyEncoding::Pkcs8),
        ] {
            let ec = parse_spec(&CertificateSpec {
                private_key: Some(CertificatePrivateKey {
                    algorithm: Some("ECDSA".into()),
                    encoding: encoding.map(Into::into),
                    ..Default::default()
                }),
                ..spec()
            })
            .unwrap();
            assert_eq!(ec.key_encoding, want, "ECDSA with {encoding:?}");
        }
    }

    #[test]
    fn spec_errors_name_the_field() {
        let cases: Vec<(CertificateSpec, &str)> = vec![
            (
                CertificateSpec {
                    duration: Some("30m".into()),
                    ..spec()
                },
                "spec.duration",
            ),
            (
                CertificateSpec {
                    duration: Some("soon".into()),
                    ..spec()
                },
                "spec.duration",
            ),
            (
                CertificateSpec {
                    renew_before: Some("1m".into()),
                    ..spec()
                },
                "spec.renewBefore",
            ),
            (
                CertificateSpec {
                    duration: Some("1h".into()),
                    renew_before: Some("2h".into()),
                    ..spec()
                },
                "spec.renewBefore",
            ),
            (
                CertificateSpec {
                    renew_before_percentage: Some(100),
                    ..spec()
                },
                "spec.renewBeforePercentage",
            ),
            (
                CertificateSpec {
                    usages: Some(vec!["Server Auth".into()]),
                    ..spec()
                },
                "spec.usages",
            ),
            (
                CertificateSpec {
                    ip_addresses: Some(vec!["10.0.0".into()]),
                    ..spec()
                },
                "spec.ipAddresses",
            ),
            (
                CertificateSpec {
                    common_name: Some("x".repeat(65)),
                    ..spec()
                },
                "spec.commonName",
            ),
            (
                CertificateSpec {
                    revision_history_limit: Some(0),
                    ..spec()
                },
                "spec.revisionHistoryLimit",
            ),
            (
                CertificateSpec {
                    private_key: Some(CertificatePrivateKey {
                        size: Some(1024),
                        ..Default::default()
                    }),
                    ..spec()
                },
                "spec.privateKey.size",
            ),
            (
                CertificateSpec {
                    private_key: Some(CertificatePrivateKey {
                        algorithm: Some("ECDSA".into()),
                        size: Some(255),
                        ..Default::default()
                    }),
                    ..spec()
                },
                "spec.privateKey.size",
            ),
            (
                CertificateSpec {
                    private_key: Some(CertificatePrivateKey {
                        algorithm: Some("DSA".into()),
                        ..Default::default()
                    }),
                    ..spec()
                },
                "spec.privateKey.algorithm",
            ),
        ];
        for (s, field) in cases {
            let err = parse_spec(&s).unwrap_err().to_string();
            assert!(err.contains(field), "{field}: {err}");
        }
        let none = CertificateSpec {
            common_name: None,
            dns_names: None,
            ..spec()
        };
        assert_eq!(parse_spec(&none).unwrap_err(), SpecError::NoNames);
        let no_secret = CertificateSpec {
            secret_name: String::new(),
            ..spec()
        };
        assert_eq!(parse_spec(&no_secret).unwrap_err(), SpecError::NoSecretName);
    }

    #[test]
    fn trigger_chain_in_upstream_order() {
        let f = fixture(&spec());
        let now = SystemTime::now();
        let d = &f.desired;
        assert_eq!(
            reason(evaluate(d, None, None, now)),
            reasons::DOES_NOT_EXIST
        );
        let mut v = view(&f);
        v.tls_key = None;
        assert_eq!(
            reason(evaluate(d, Some(&v), None, now)),
            reasons::MISSING_DATA
        );
        let mut v = view(&f);
        v.tls_crt = None;
        assert!(message(&evaluate(d, Some(&v), None, now)).contains("a certificate"));
        let mut v = view(&f);
        // A fake key, split so the source never holds a PEM key header.
        v.tls_key = Some(
            concat!(
                "-----BEGIN PRIVATE",
                " KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
            )
            .as_bytes(),
        );
        assert_eq!(
            reason(evaluate(d, Some(&v), None, now)),
            reasons::INVALID_KEY_PAIR
        );
        let mut v = view(&f);
        v.tls_crt = Some(b"not a pem");
        assert_eq!(
            reason(evaluate(d, Some(&v), None, now)),
            reasons::INVALID_CERTIFICATE
        );

        // Another key of the same kind: key and certificate differ.
        let other = PrivateKey::generate(d.key_algorithm).unwrap();
        let other_pem = other.to_pem(KeyEncoding::Pkcs8).unwrap().expose().to_vec();
        let mut v = view(&f);
        v.tls_key = Some(&other_pem);
        let e = evaluate(d, Some(&v), None, now);
        assert!(message(&e).contains("does not match the certificate"));
        assert_eq!(reason(e), reasons::SECRET_MISMATCH);

        // Issuer annotations: "" and absent kind/group equal the defaults.
        let mut v = view(&f);
        v.issuer_kind = Some("");
        v.issuer_group = None;
        assert_eq!(reason(evaluate(d, Some(&v), None, now)), "valid");
        let mut v = view(&f);
        v.issuer_kind = Some("ClusterIssuer");
        let e = evaluate(d, Some(&v), None, now);
        assert!(
            message(&e).contains("ClusterIssuer.cert-manager.io/ca"),
            "{}",
            message(&e)
        );
        assert_eq!(reason(e), reasons::INCORRECT_ISSUER);
        let mut v = view(&f);
        v.issuer_name = None;
        v.issuer_kind = None;
        v.issuer_group = None;
        assert_eq!(
            reason(evaluate(d, Some(&v), None, now)),
            "valid",
            "unannotated Secrets are adopted"
        );

        assert_eq!(reason(evaluate(d, Some(&view(&f)), None, now)), "valid");
        let later = now + d.duration + HOUR;
        let e = evaluate(d, Some(&view(&f)), None, later);
        assert!(message(&e).starts_with("Certificate expired on "));
        assert_eq!(reason(e), reasons::EXPIRED);
    }

    #[test]
    fn key_spec_changes_trigger() {
        let f = fixture(&spec());
        let now = SystemTime::now();
        for (algorithm, size, field) in [
            ("ECDSA", Some(384), "spec.privateKey.size"),
            ("Ed25519", None, "spec.privateKey.algorithm"),
        ] {
            let changed = parse_spec(&CertificateSpec {
                private_key: Some(CertificatePrivateKey {
                    algorithm: Some(algorithm.into()),
                    size,
                    ..Default::default()
                }),
                ..spec()
            })
            .unwrap();
            let e = evaluate(&changed, Some(&view(&f)), None, now);
            assert!(message(&e).contains(field), "{}", message(&e));
            assert_eq!(reason(e), reasons::SECRET_MISMATCH);
        }
    }

    #[test]
    fn names_and_subject_compare_as_sets() {
        let base = CertificateSpec {
            subject: Some(X509Subject {
                organizations: Some(vec!["o1".into(), "o2".into()]),
                ..Default::default()
            }),
            ip_addresses: Some(vec!["10.0.0.1".into(), "::1".into()]),
            ..spec()
        };
        let f = fixture(&base);
        let now = SystemTime::now();
        let reordered = parse_spec(&CertificateSpec {
            dns_names: Some(vec!["b.example".into(), "a.example".into()]),
            ip_addresses: Some(vec!["::1".into(), "10.0.0.1".into()]),
            subject: Some(X509Subject {
                organizations: Some(vec!["o2".into(), "o1".into()]),
                ..Default::default()
            }),
            ..base.clone()
        })
        .unwrap();
        assert_eq!(
            reason(evaluate(&reordered, Some(&view(&f)), None, now)),
            "valid"
        );

        let cases: Vec<(CertificateSpec, &str)> = vec![
            (
                CertificateSpec {
                    dns_names: Some(vec!["a.example".into()]),
                    ..base.clone()
                },
                "spec.dnsNames",
            ),
            (
                CertificateSpec {
                    common_name: Some("other".into()),
                    ..base.clone()
                },
                "spec.commonName",
            ),
            (
                CertificateSpec {
                    ip_addresses: None,
                    ..base.clone()
                },
                "spec.ipAddresses",
            ),
            (
                CertificateSpec {
                    uris: Some(vec!["spiffe://x/y".into()]),
                    ..base.clone()
                },
                "spec.uris",
            ),
            (
                CertificateSpec {
                    email_addresses: Some(vec!["a@example.com".into()]),
                    ..base.clone()
                },
                "spec.emailAddresses",
            ),
            (
                CertificateSpec {
                    subject: Some(X509Subject {
                        organizations: Some(vec!["o1".into()]),
                        ..Default::default()
                    }),
                    ..base.clone()
                },
                "spec.subject.organizations",
            ),
            (
                CertificateSpec {
                    subject: Some(X509Subject {
                        organizations: Some(vec!["o1".into(), "o2".into()]),
                        countries: Some(vec!["DE".into()]),
                        ..Default::default()
                    }),
                    ..base.clone()
                },
                "spec.subject.countries",
            ),
            (
                CertificateSpec {
                    is_ca: Some(true),
                    ..base.clone()
                },
                "spec.isCA",
            ),
            (
                CertificateSpec {
                    literal_subject: Some("CN=app,O=o1".into()),
                    ..base.clone()
                },
                "spec.literalSubject",
            ),
        ];
        for (s, field) in cases {
            let d = parse_spec(&s).unwrap();
            let e = evaluate(&d, Some(&view(&f)), None, now);
            let m = message(&e);
            assert!(m.contains(field), "{field}: {m}");
            assert_eq!(reason(e), reasons::SECRET_MISMATCH, "{field}");
        }
    }

    #[test]
    fn literal_subject_matches_itself() {
        let s = CertificateSpec {
            common_name: None,
            literal_subject: Some("CN=app,O=example,C=DE".into()),
            ..spec()
        };
        let f = fixture(&s);
        assert_eq!(
            reason(evaluate(
                &f.desired,
                Some(&view(&f)),
                None,
                SystemTime::now()
            )),
            "valid"
        );
    }

    #[test]
    fn usages_and_duration_compare_with_the_request() {
        let f = fixture(&spec());
        let now = SystemTime::now();
        let d = &f.desired;
        let asked = Requested {
            duration: Some(d.duration),
            is_ca: false,
            usages: usage_set(&[], false),
        };
        assert_eq!(
            reason(evaluate(d, Some(&view(&f)), Some(&asked), now)),
            "valid"
        );
        let server = parse_spec(&CertificateSpec {
            usages: Some(vec!["server auth".into()]),
            ..spec()
        })
        .unwrap();
        assert!(
            message(&evaluate(&server, Some(&view(&f)), Some(&asked), now)).contains("spec.usages")
        );
        let longer = parse_spec(&CertificateSpec {
            duration: Some("4000h".into()),
            ..spec()
        })
        .unwrap();
        assert!(
            message(&evaluate(&longer, Some(&view(&f)), Some(&asked), now))
                .contains("spec.duration")
        );
        // Without the request nothing is known about what was asked.
        assert_eq!(
            reason(evaluate(&longer, Some(&view(&f)), None, now)),
            "valid"
        );
    }

    #[test]
    fn renew_before_preference() {
        let life = 90 * 24 * HOUR;
        assert_eq!(renew_before(life, Some(HOUR), Some(50)), HOUR);
        assert_eq!(renew_before(life, Some(Duration::ZERO), Some(50)), life / 2);
        assert_eq!(renew_before(life, Some(life), None), life / 3);
        assert_eq!(renew_before(life, None, Some(25)), life / 4);
        assert_eq!(renew_before(life, None, Some(0)), life / 3);
        assert_eq!(renew_before(life, None, None), life / 3);
    }

    #[test]
    fn renewal_time_and_bounded_jitter() {
        let nb = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let na = nb + 3 * HOUR;
        let upstream = na - HOUR;
        assert_eq!(
            renewal_time(nb, na, None, None, JitterPolicy::none(), 0.7),
            upstream
        );
        let j = JitterPolicy::new(0.5).unwrap();
        assert_eq!(renewal_time(nb, na, None, None, j, 0.0), upstream);
        assert_eq!(
            renewal_time(nb, na, None, None, j, 1.0),
            upstream - HOUR / 2
        );
        for u in [0.1, 0.5, 0.99, f64::NAN, -3.0, 7.0] {
            let t = renewal_time(nb, na, None, None, j, u);
            assert!(t <= upstream && t >= upstream - HOUR / 2, "{u}");
        }
        // Full jitter stops at half the lifetime.
        let full = JitterPolicy::new(1.0).unwrap();
        assert_eq!(
            renewal_time(nb, na, None, None, full, 0.99),
            nb + 3 * HOUR / 2
        );
        // A renewBefore within the backdate of the lifetime falls back to a
        // third rather than renewing at once.
        let rb = 3 * HOUR - Duration::from_secs(5);
        assert_eq!(
            renewal_time(nb, na, Some(rb), None, JitterPolicy::none(), 0.0),
            upstream
        );
        // One that leaves more than the backdate is upstream's, and jitter
        // cannot move it earlier than asked when that is before half.
        let rb = 3 * HOUR - Duration::from_secs(65);
        assert_eq!(
            renewal_time(nb, na, Some(rb), None, full, 0.99),
            nb + Duration::from_secs(65)
        );
        // Issue 13's case: 90 days asked, renewBefore 30 days, a CA with 30
        // days left caps the leaf, which the signer backdates a minute:
        // renewal at two thirds, not at once.
        let capped_nb = nb - Duration::from_secs(60);
        let capped_na = nb + 30 * 24 * HOUR;
        assert_eq!(
            renewal_time(
                capped_nb,
                capped_na,
                Some(30 * 24 * HOUR),
                None,
                JitterPolicy::none(),
                0.0
            ),
            capped_na - (capped_na.duration_since(capped_nb).unwrap() / 3)
        );
        // Inverted validity: renew now.
        assert_eq!(renewal_time(na, nb, None, None, j, 0.5), nb);
    }

    #[test]
    fn stable_unit_is_stable_and_in_range() {
        let a = stable_unit(b"uid-1/serial");
        assert_eq!(a, stable_unit(b"uid-1/serial"));
        assert_ne!(a, stable_unit(b"uid-2/serial"));
        for i in 0..1000u32 {
            let u = stable_unit(&i.to_be_bytes());
            assert!((0.0..1.0).contains(&u));
        }
    }

    #[test]
    fn backoff_doubles_to_the_cap() {
        let base = DEFAULT_BACKOFF_BASE;
        let max = DEFAULT_BACKOFF_MAX;
        assert_eq!(backoff_delay(0, base, max), Duration::ZERO);
        assert_eq!(backoff_delay(1, base, max), HOUR);
        assert_eq!(backoff_delay(2, base, max), 2 * HOUR);
        assert_eq!(backoff_delay(6, base, max), 32 * HOUR);
        assert_eq!(backoff_delay(7, base, max), 32 * HOUR);
        assert_eq!(backoff_delay(u32::MAX, base, max), 32 * HOUR);
    }

    #[test]
    fn backoff_skipped_when_spec_changed() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        let (b, m) = (DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_MAX);
        assert_eq!(
            retry_not_before(2, Some(t), Some(3), Some(3), b, m),
            Some(t + 2 * HOUR)
        );
        assert_eq!(retry_not_before(2, Some(t), Some(3), Some(4), b, m), None);
        assert_eq!(retry_not_before(0, Some(t), Some(3), Some(3), b, m), None);
        assert_eq!(retry_not_before(1, None, Some(3), Some(3), b, m), None);
    }
}
