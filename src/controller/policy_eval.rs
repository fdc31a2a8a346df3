//! Evaluation of `CertificateRequestPolicy` objects against one request:
//! pure functions, so every rule is unit-tested without an API server. The
//! loop in `policy_approver` fetches what these need (policies, namespace
//! labels, the requester's RBAC) and writes the outcome.
//!
//! Semantics follow approver-policy's documentation:
//! - an attribute absent from `allowed` must be absent from the request;
//! - `value`/`values` may hold `*`, matching any run of characters
//!   (`*.foo` matches `a.foo`, not `afoo`);
//! - lists are allowed when every requested entry matches some value;
//! - `required` means the request must carry the attribute;
//! - `validations` are CEL rules with `self` (the requested value) and
//!   `cr` (a map with the request's `namespace` and `name`, and cert-csi's
//!   addition `serviceAccountName`, see [`RequestFacts::service_account`]);
//! - constraints left out allow everything.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use crate::api::duration::parse_go;
use crate::api::{
    AllowedString, AllowedStringSlice, CertificateRequest, CertificateRequestPolicy, PolicyAllowed,
    PolicyConstraints, PolicySelector, ValidationRule,
};
use crate::pki::{Curve, KeyAlgorithm};

/// cert-manager's duration when a request leaves `spec.duration` out (90 days).
pub const DEFAULT_DURATION: Duration = Duration::from_secs(90 * 24 * 3600);

/// What a policy is judged against, read from the request and its CSR.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestFacts {
    pub namespace: String,
    pub name: String,
    /// The ServiceAccount the request speaks for, `cr.serviceAccountName`
    /// in CEL (cert-csi's addition to approver-policy's `cr`); empty when
    /// none is known. Filled in by the approver loop with
    /// [`service_account_of`], which needs the owner Pod.
    pub service_account: String,
    pub common_name: Option<String>,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<String>,
    pub uris: Vec<String>,
    pub email_addresses: Vec<String>,
    pub organizations: Vec<String>,
    pub countries: Vec<String>,
    pub organizational_units: Vec<String>,
    pub localities: Vec<String>,
    pub provinces: Vec<String>,
    pub street_addresses: Vec<String>,
    pub postal_codes: Vec<String>,
    pub serial_number: Option<String>,
    pub is_ca: bool,
    pub usages: Vec<String>,
    pub duration: Duration,
    /// `None` for a key type cert-csi does not know.
    pub key: Option<KeyAlgorithm>,
}

impl RequestFacts {
    /// Reads the facts of `request`; the error says why the CSR or the
    /// duration cannot be read (such a request is denied by every policy).
    pub fn of(request: &CertificateRequest) -> Result<RequestFacts, String> {
        let csr = crate::pki::parse_csr(request.spec.request.as_bytes())
            .map_err(|e| format!("spec.request: {e}"))?;
        let duration = match &request.spec.duration {
            None => DEFAULT_DURATION,
            Some(text) => parse_go(text).map_err(|e| {
                format!(
                    "spec.duration: {} is not a duration: {e}",
                    crate::volume::short_quote(text)
                )
            })?,
        };
        // isCA and usages count when asked for either in the spec or in the
        // CSR's own extensions: a signer that honoured either would
        // otherwise issue what no policy allowed.
        let mut usages: BTreeSet<String> = request.spec.usages.iter().flatten().cloned().collect();
        for usage in csr
            .key_usages
            .iter()
            .chain(csr.ext_key_usages.iter())
            .flatten()
        {
            usages.insert(usage.name().to_owned());
        }
        let subject = csr.subject_fields;
        let non_empty = |v: Option<String>| v.filter(|s| !s.is_empty());
        Ok(RequestFacts {
            namespace: request.metadata.namespace.clone().unwrap_or_default(),
            name: request.metadata.name.clone().unwrap_or_default(),
            service_account: String::new(),
            common_name: non_empty(subject.common_name),
            dns_names: csr.sans.dns_names,
            ip_addresses: csr
                .sans
                .ip_addresses
                .iter()
                .map(|ip| ip.to_string())
                .collect(),
            uris: csr.sans.uris,
            email_addresses: csr.sans.emails,
            organizations: subject.organizations,
            countries: subject.countries,
            organizational_units: subject.organizational_units,
            localities: subject.localities,
            provinces: subject.provinces,
            street_addresses: subject.street_addresses,
            postal_codes: subject.postal_codes,
            serial_number: non_empty(subject.serial_number),
            is_ca: request.spec.is_ca == Some(true) || csr.basic_constraints_ca == Some(true),
            usages: usages.into_iter().collect(),
            duration,
            key: csr.key_algorithm,
        })
    }
}

/// What keeps `policy` from being evaluated as written, in the words of
/// its `Ready=False` condition: a selector that selects nothing, a CEL rule
/// that does not compile, a duration that does not parse or bounds that
/// cross, an unknown key algorithm. Empty when it is ready.
pub fn problems(policy: &CertificateRequestPolicy) -> Vec<String> {
    let spec = &policy.spec;
    let mut out = Vec::new();
    if spec.selector.issuer_ref.is_none() && spec.selector.namespace.is_none() {
        out.push(
            "spec.selector: Required value: set issuerRef or namespace (an empty issuerRef selects every issuer)"
                .to_owned(),
        );
    }
    let rules = validation_rules(spec.allowed.as_ref());
    for (path, rule) in rules {
        if let Err(e) = CEL_ENV.compile(&rule.rule) {
            out.push(format!(
                "{path}.rule: Invalid value: {}: does not compile: {e}",
                quote(&rule.rule)
            ));
        }
    }
    if let Some(c) = &spec.constraints {
        let parse = |path: &str, text: &Option<String>, out: &mut Vec<String>| {
            text.as_deref().and_then(|t| match parse_go(t) {
                Ok(d) => Some(d),
                Err(e) => {
                    out.push(format!(
                        "spec.constraints.{path}: Invalid value: {}: not a duration: {e}",
                        quote(t)
                    ));
                    None
                }
            })
        };
        let min = parse("minDuration", &c.min_duration, &mut out);
        let max = parse("maxDuration", &c.max_duration, &mut out);
        if let (Some(min), Some(max)) = (min, max)
            && min > max
        {
            out.push(
                "spec.constraints: Invalid value: minDuration is longer than maxDuration"
                    .to_owned(),
            );
        }
        if let Some(k) = &c.private_key {
            if let Some(alg) = k.algorithm.as_deref()
                && !["RSA", "ECDSA", "Ed25519"].contains(&alg)
            {
                out.push(format!(
                    "spec.constraints.privateKey.algorithm: Unsupported value: {}: use RSA, ECDSA or Ed25519",
                    quote(alg)
                ));
            }
            if let (Some(min), Some(max)) = (k.min_size, k.max_size)
                && min > max
            {
                out.push(
                    "spec.constraints.privateKey: Invalid value: minSize is larger than maxSize"
                        .to_owned(),
                );
            }
        }
    }
    out
}

/// Every CEL rule of `allowed`, with its field path
/// (`spec.allowed.<field>.validations[i]`).
fn validation_rules(allowed: Option<&PolicyAllowed>) -> Vec<(String, &ValidationRule)> {
    let Some(a) = allowed else {
        return Vec::new();
    };
    fn slice(s: &Option<AllowedStringSlice>) -> Option<&Vec<ValidationRule>> {
        s.as_ref().and_then(|s| s.validations.as_ref())
    }
    fn string(s: &Option<AllowedString>) -> Option<&Vec<ValidationRule>> {
        s.as_ref().and_then(|s| s.validations.as_ref())
    }
    let sub = a.subject.as_ref();
    let fields: [(&str, Option<&Vec<ValidationRule>>); 13] = [
        ("commonName", string(&a.common_name)),
        ("dnsNames", slice(&a.dns_names)),
        ("ipAddresses", slice(&a.ip_addresses)),
        ("uris", slice(&a.uris)),
        ("emailAddresses", slice(&a.email_addresses)),
        (
            "subject.organizations",
            sub.and_then(|s| slice(&s.organizations)),
        ),
        ("subject.countries", sub.and_then(|s| slice(&s.countries))),
        (
            "subject.organizationalUnits",
            sub.and_then(|s| slice(&s.organizational_units)),
        ),
        ("subject.localities", sub.and_then(|s| slice(&s.localities))),
        ("subject.provinces", sub.and_then(|s| slice(&s.provinces))),
        (
            "subject.streetAddresses",
            sub.and_then(|s| slice(&s.street_addresses)),
        ),
        (
            "subject.postalCodes",
            sub.and_then(|s| slice(&s.postal_codes)),
        ),
        (
            "subject.serialNumber",
            sub.and_then(|s| string(&s.serial_number)),
        ),
    ];
    fields
        .into_iter()
        .flat_map(|(path, rules)| {
            rules
                .into_iter()
                .flatten()
                .enumerate()
                .map(move |(i, r)| (format!("spec.allowed.{path}.validations[{i}]"), r))
        })
        .collect()
}

/// Whether a CEL rule of `policy` reads `cr.serviceAccountName`, so that
/// the approver must look up the request's owner Pod before judging it.
pub fn reads_service_account(policy: &CertificateRequestPolicy) -> bool {
    validation_rules(policy.spec.allowed.as_ref())
        .iter()
        .any(|(_, r)| r.rule.contains("serviceAccountName"))
}

/// `cr.serviceAccountName`: the ServiceAccount a request speaks for.
///
/// - `owner_pod_sa` is the `spec.serviceAccountName` of the Pod named by the
///   request's Pod ownerReference, read from the request's namespace with
///   the same uid (what a CSI driver sets for the pod it mounts for).
/// - A requester that is itself a ServiceAccount of the request's namespace
///   (a pod's own token, as with csi-driver's `--use-token-request`)
///   speaks only for itself: if it names an owner Pod of another
///   ServiceAccount, the answer is empty, so a pod cannot borrow a
///   neighbour's identity by pointing its ownerReference at it.
/// - Any other requester (the node plugin's ServiceAccount) speaks for the
///   owner Pod; who may make such requests is what the `use` RBAC check on
///   the policy decides.
pub fn service_account_of(
    namespace: &str,
    username: Option<&str>,
    owner_pod_sa: Option<&str>,
) -> String {
    let own = username
        .and_then(|u| u.strip_prefix("system:serviceaccount:"))
        .and_then(|rest| rest.split_once(':'))
        .filter(|(ns, name)| *ns == namespace && !name.is_empty())
        .map(|(_, name)| name);
    match (own, owner_pod_sa) {
        (Some(own), Some(pod)) if own != pod => String::new(),
        (Some(own), _) => own.to_owned(),
        (None, pod) => pod.unwrap_or_default().to_owned(),
    }
}

/// Whether `value` matches `pattern`, where each `*` stands for any run of
/// characters (empty included) and everything else matches itself.
pub fn wildcard_match(pattern: &str, value: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = value.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        // No `*` at all: an exact match.
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// Whether the policy's selector picks a request for `issuer` in
/// `namespace`. `labels` are the namespace's labels, `None` when not
/// fetched (then a `matchLabels` selector does not match).
pub fn selects(
    selector: &PolicySelector,
    issuer: &crate::api::IssuerRef,
    namespace: &str,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    // A selector with neither part is invalid in approver-policy and selects
    // nothing (it never becomes Ready).
    if selector.issuer_ref.is_none() && selector.namespace.is_none() {
        return false;
    }
    if let Some(sel) = &selector.issuer_ref {
        let kind = issuer.kind_or_default();
        let group = issuer.group_or_default();
        let field = |pattern: &Option<String>, value: &str| {
            pattern.as_deref().is_none_or(|p| wildcard_match(p, value))
        };
        if !(field(&sel.name, &issuer.name) && field(&sel.kind, kind) && field(&sel.group, group)) {
            return false;
        }
    }
    if let Some(sel) = &selector.namespace {
        if let Some(names) = &sel.match_names
            && !names.iter().any(|p| wildcard_match(p, namespace))
        {
            return false;
        }
        if let Some(wanted) = sel.match_labels.as_ref().filter(|m| !m.is_empty()) {
            let Some(labels) = labels else { return false };
            if !wanted.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                return false;
            }
        }
    }
    true
}

/// Whether a selector needs the namespace's labels.
pub fn needs_labels(selector: &PolicySelector) -> bool {
    selector
        .namespace
        .as_ref()
        .and_then(|n| n.match_labels.as_ref())
        .is_some_and(|m| !m.is_empty())
}

static CEL_ENV: LazyLock<Arc<cel::Env>> = LazyLock::new(|| {
    let mut env = cel::Env::stdlib();
    // approver-policy's rules may use the CEL strings extension
    // (lowerAscii, split, ...), as cel-go's ext.Strings offers.
    env.add_extension(cel::extensions::strings)
        .expect("the strings extension declares cleanly");
    Arc::new(env)
});

/// Runs one CEL rule; `Err` says why it failed, in the rule's own message
/// when it has one.
fn run_rule(rule: &ValidationRule, value: &str, facts: &RequestFacts) -> Result<(), String> {
    let program = CEL_ENV
        .compile(&rule.rule)
        .map_err(|e| format!("the rule {:?} does not compile: {e}", rule.rule))?;
    let mut context = cel::Context::with_env(CEL_ENV.clone());
    context.add_variable_from_value("self", value.to_owned());
    context.add_variable_from_value(
        "cr",
        HashMap::from([
            ("namespace".to_owned(), facts.namespace.clone()),
            ("name".to_owned(), facts.name.clone()),
            (
                "serviceAccountName".to_owned(),
                facts.service_account.clone(),
            ),
        ]),
    );
    let failed = || {
        rule.message
            .clone()
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| format!("failed rule: {}", rule.rule))
    };
    match program.execute(&context) {
        Ok(cel::Value::Bool(true)) => Ok(()),
        Ok(cel::Value::Bool(false)) => Err(failed()),
        Ok(other) => Err(format!(
            "the rule {:?} gave {other:?}, not a boolean",
            rule.rule
        )),
        Err(e) => Err(format!("the rule {:?} failed to run: {e}", rule.rule)),
    }
}

fn quote(value: &str) -> String {
    crate::volume::short_quote(value)
}

fn validations(
    path: &str,
    rules: Option<&Vec<ValidationRule>>,
    value: &str,
    facts: &RequestFacts,
    errors: &mut Vec<String>,
) {
    for (i, rule) in rules.into_iter().flatten().enumerate() {
        if let Err(why) = run_rule(rule, value, facts) {
            errors.push(format!(
                "{path}.validations[{i}]: Invalid value: {}: {why}",
                quote(value)
            ));
        }
    }
}

fn check_string(
    path: &str,
    allowed: Option<&AllowedString>,
    requested: Option<&str>,
    facts: &RequestFacts,
    errors: &mut Vec<String>,
) {
    let requested = requested.filter(|v| !v.is_empty());
    let Some(allowed) = allowed else {
        if let Some(value) = requested {
            errors.push(format!(
                "{path}: Invalid value: {}: the policy allows no value here",
                quote(value)
            ));
        }
        return;
    };
    let Some(value) = requested else {
        if allowed.required == Some(true) {
            errors.push(format!(
                "{path}.required: Required value: the request must set it"
            ));
        }
        return;
    };
    match allowed.value.as_deref() {
        Some(pattern) if wildcard_match(pattern, value) => {}
        pattern => errors.push(format!(
            "{path}.value: Invalid value: {}: not allowed by {}",
            quote(value),
            pattern.map_or("no value".to_owned(), |p| format!("{p:?}"))
        )),
    }
    validations(path, allowed.validations.as_ref(), value, facts, errors);
}

fn check_list(
    path: &str,
    allowed: Option<&AllowedStringSlice>,
    requested: &[String],
    facts: &RequestFacts,
    errors: &mut Vec<String>,
) {
    let Some(allowed) = allowed else {
        if !requested.is_empty() {
            errors.push(format!(
                "{path}: Invalid value: {}: the policy allows no value here",
                quote(&requested.join(","))
            ));
        }
        return;
    };
    if requested.is_empty() {
        if allowed.required == Some(true) {
            errors.push(format!(
                "{path}.required: Required value: the request must set at least one"
            ));
        }
        return;
    }
    let values = allowed.values.as_deref().unwrap_or_default();
    let refused: Vec<&String> = requested
        .iter()
        .filter(|v| !values.iter().any(|p| wildcard_match(p, v)))
        .collect();
    if !refused.is_empty() {
        let refused: Vec<String> = refused.iter().map(|v| quote(v)).collect();
        errors.push(format!(
            "{path}.values: Invalid value: [{}]: not allowed by {values:?}",
            refused.join(", ")
        ));
    }
    for value in requested {
        validations(path, allowed.validations.as_ref(), value, facts, errors);
    }
}

fn key_name(key: KeyAlgorithm) -> (&'static str, Option<i64>) {
    match key {
        KeyAlgorithm::Rsa { bits } => ("RSA", Some(i64::from(bits))),
        KeyAlgorithm::Ecdsa(curve) => (
            "ECDSA",
            Some(match curve {
                Curve::P256 => 256,
                Curve::P384 => 384,
                Curve::P521 => 521,
            }),
        ),
        // Ed25519 has one size; size limits do not apply to it.
        KeyAlgorithm::Ed25519 => ("Ed25519", None),
    }
}

fn check_constraints(c: &PolicyConstraints, facts: &RequestFacts, errors: &mut Vec<String>) {
    let go = crate::api::duration::format_go;
    for (path, bound, too) in [
        ("spec.constraints.minDuration", &c.min_duration, true),
        ("spec.constraints.maxDuration", &c.max_duration, false),
    ] {
        let Some(text) = bound else { continue };
        match parse_go(text) {
            Err(e) => errors.push(format!(
                "{path}: the policy's value {} is not a duration: {e}",
                quote(text)
            )),
            Ok(limit) if too && facts.duration < limit => errors.push(format!(
                "{path}: Invalid value: {:?}: shorter than the minimum {:?}",
                go(facts.duration),
                go(limit)
            )),
            Ok(limit) if !too && facts.duration > limit => errors.push(format!(
                "{path}: Invalid value: {:?}: longer than the maximum {:?}",
                go(facts.duration),
                go(limit)
            )),
            Ok(_) => {}
        }
    }
    let Some(pk) = &c.private_key else { return };
    let Some(key) = facts.key else {
        errors.push(
            "spec.constraints.privateKey: Invalid value: the CSR's key type is not one of RSA, ECDSA, Ed25519".into(),
        );
        return;
    };
    let (algorithm, size) = key_name(key);
    if let Some(want) = pk.algorithm.as_deref()
        && !want.eq_ignore_ascii_case(algorithm)
    {
        errors.push(format!(
            "spec.constraints.privateKey.algorithm: Invalid value: {algorithm:?}: the policy requires {want:?}"
        ));
    }
    if let Some(size) = size {
        if let Some(min) = pk.min_size
            && size < min
        {
            errors.push(format!(
                "spec.constraints.privateKey.minSize: Invalid value: {size}: smaller than {min}"
            ));
        }
        if let Some(max) = pk.max_size
            && size > max
        {
            errors.push(format!(
                "spec.constraints.privateKey.maxSize: Invalid value: {size}: larger than {max}"
            ));
        }
    }
}

/// Everything in `facts` that `policy` does not allow, each naming its
/// field; empty when the policy permits the request.
pub fn violations(policy: &CertificateRequestPolicy, facts: &RequestFacts) -> Vec<String> {
    let mut errors = Vec::new();
    let none = Default::default();
    let allowed = policy.spec.allowed.as_ref().unwrap_or(&none);
    let e = &mut errors;
    let a = "spec.allowed";
    check_string(
        &format!("{a}.commonName"),
        allowed.common_name.as_ref(),
        facts.common_name.as_deref(),
        facts,
        e,
    );
    check_list(
        &format!("{a}.dnsNames"),
        allowed.dns_names.as_ref(),
        &facts.dns_names,
        facts,
        e,
    );
    check_list(
        &format!("{a}.ipAddresses"),
        allowed.ip_addresses.as_ref(),
        &facts.ip_addresses,
        facts,
        e,
    );
    check_list(
        &format!("{a}.uris"),
        allowed.uris.as_ref(),
        &facts.uris,
        facts,
        e,
    );
    check_list(
        &format!("{a}.emailAddresses"),
        allowed.email_addresses.as_ref(),
        &facts.email_addresses,
        facts,
        e,
    );
    let none_subject = Default::default();
    let subject = allowed.subject.as_ref().unwrap_or(&none_subject);
    let s = "spec.allowed.subject";
    for (field, allow, requested) in [
        (
            "organizations",
            &subject.organizations,
            &facts.organizations,
        ),
        ("countries", &subject.countries, &facts.countries),
        (
            "organizationalUnits",
            &subject.organizational_units,
            &facts.organizational_units,
        ),
        ("localities", &subject.localities, &facts.localities),
        ("provinces", &subject.provinces, &facts.provinces),
        (
            "streetAddresses",
            &subject.street_addresses,
            &facts.street_addresses,
        ),
        ("postalCodes", &subject.postal_codes, &facts.postal_codes),
    ] {
        check_list(&format!("{s}.{field}"), allow.as_ref(), requested, facts, e);
    }
    check_string(
        &format!("{s}.serialNumber"),
        subject.serial_number.as_ref(),
        facts.serial_number.as_deref(),
        facts,
        e,
    );
    if facts.is_ca && allowed.is_ca != Some(true) {
        e.push(format!(
            "{a}.isCA: Invalid value: true: the policy does not allow CA certificates"
        ));
    }
    let usages = allowed.usages.as_deref().unwrap_or_default();
    let refused: Vec<&String> = facts
        .usages
        .iter()
        .filter(|u| !usages.contains(u))
        .collect();
    if !refused.is_empty() {
        e.push(format!(
            "{a}.usages: Invalid value: {refused:?}: not allowed by {usages:?}"
        ));
    }
    if let Some(c) = &policy.spec.constraints {
        check_constraints(c, facts, e);
    }
    errors
}

/// The approver's verdict over the policies that apply to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No policy selects the request for its requester: leave it alone.
    NoPolicy,
    Approved {
        policy: String,
    },
    Denied {
        message: String,
    },
}

/// Approved when any of `applicable` permits the request, denied (naming
/// every policy and what it refused) when none does. `facts` is `Err` when
/// the request could not be read at all.
pub fn verdict(
    applicable: &[&CertificateRequestPolicy],
    facts: &Result<RequestFacts, String>,
) -> Verdict {
    if applicable.is_empty() {
        return Verdict::NoPolicy;
    }
    let facts = match facts {
        Ok(facts) => facts,
        Err(why) => {
            return Verdict::Denied {
                message: format!(
                    "No policy approved this request: the request cannot be read: {why}"
                ),
            };
        }
    };
    let mut sorted: Vec<&CertificateRequestPolicy> = applicable.to_vec();
    sorted.sort_by_key(|p| p.metadata.name.clone());
    let mut reports = Vec::new();
    for policy in sorted {
        let name = policy.metadata.name.clone().unwrap_or_default();
        let errors = violations(policy, facts);
        if errors.is_empty() {
            return Verdict::Approved { policy: name };
        }
        reports.push(format!("[{name}: {}]", errors.join(", ")));
    }
    Verdict::Denied {
        message: format!("No policy approved this request: {}", reports.join(" ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        AllowedSubject, CertificateRequestPolicySpec, IssuerRef, IssuerRefSelector,
        NamespaceSelector, PolicyAllowed, PrivateKeyConstraints,
    };

    fn policy(name: &str, allowed: PolicyAllowed) -> CertificateRequestPolicy {
        CertificateRequestPolicy::new(
            name,
            CertificateRequestPolicySpec {
                allowed: Some(allowed),
                selector: PolicySelector {
                    issuer_ref: Some(Default::default()),
                    namespace: None,
                },
                ..Default::default()
            },
        )
    }

    fn list(values: &[&str]) -> Option<AllowedStringSlice> {
        Some(AllowedStringSlice {
            values: Some(values.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        })
    }

    fn facts() -> RequestFacts {
        RequestFacts {
            namespace: "team".into(),
            name: "r".into(),
            duration: Duration::from_secs(3600),
            key: Some(KeyAlgorithm::Ecdsa(Curve::P256)),
            ..Default::default()
        }
    }

    #[test]
    fn wildcards() {
        assert!(wildcard_match("*", ""));
        assert!(wildcard_match("*", "anything"));
        assert!(wildcard_match("*foo", "foo"));
        assert!(wildcard_match("*foo", "bar-foo"));
        assert!(wildcard_match("*.foo", "bar-123.foo"));
        assert!(!wildcard_match("*.foo", "barfoo"));
        assert!(wildcard_match("a*b*c", "a-b-c"));
        assert!(wildcard_match("a*b*c", "abc"));
        assert!(!wildcard_match("a*b*c", "acb"));
        assert!(!wildcard_match("ab*ba", "aba"));
        assert!(wildcard_match("exact", "exact"));
        assert!(!wildcard_match("exact", "exact2"));
        assert!(wildcard_match("10.0.1.*", "10.0.1.7"));
        assert!(!wildcard_match("10.0.1.*", "10.0.2.7"));
    }

    #[test]
    fn absent_attributes_must_be_absent_and_lists_are_subsets() {
        let p = policy(
            "p",
            PolicyAllowed {
                dns_names: list(&["example.com", "*.example.com"]),
                ..Default::default()
            },
        );
        let mut f = facts();
        assert!(violations(&p, &f).is_empty());
        f.dns_names = vec!["a.example.com".into(), "example.com".into()];
        assert!(violations(&p, &f).is_empty());
        f.dns_names.push("evil.org".into());
        let errors = violations(&p, &f);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("spec.allowed.dnsNames.values"),
            "{errors:?}"
        );
        assert!(errors[0].contains("evil.org"), "{errors:?}");
        f.dns_names.pop();
        f.common_name = Some("cn".into());
        let errors = violations(&p, &f);
        assert!(
            errors[0].starts_with("spec.allowed.commonName:"),
            "{errors:?}"
        );
        f.common_name = None;
        f.is_ca = true;
        assert!(violations(&p, &f)[0].starts_with("spec.allowed.isCA"));
        f.is_ca = false;
        f.usages = vec!["server auth".into()];
        assert!(violations(&p, &f)[0].starts_with("spec.allowed.usages"));
    }

    #[test]
    fn required_and_subject() {
        let p = policy(
            "p",
            PolicyAllowed {
                common_name: Some(AllowedString {
                    value: Some("*.com".into()),
                    required: Some(true),
                    validations: None,
                }),
                subject: Some(AllowedSubject {
                    organizations: list(&["hello-world"]),
                    ..Default::default()
                }),
                usages: Some(vec!["server auth".into(), "client auth".into()]),
                is_ca: Some(true),
                ..Default::default()
            },
        );
        let mut f = facts();
        let errors = violations(&p, &f);
        assert_eq!(
            errors,
            ["spec.allowed.commonName.required: Required value: the request must set it"]
        );
        f.common_name = Some("x.com".into());
        f.organizations = vec!["hello-world".into()];
        f.usages = vec!["server auth".into()];
        f.is_ca = true;
        assert!(violations(&p, &f).is_empty());
        f.organizations = vec!["other".into()];
        f.usages = vec!["server auth".into(), "cert sign".into()];
        let errors = violations(&p, &f);
        assert!(errors[0].starts_with("spec.allowed.subject.organizations.values"));
        assert!(errors[1].starts_with("spec.allowed.usages") && errors[1].contains("cert sign"));
    }

    #[test]
    fn problems_name_what_keeps_a_policy_from_being_ready() {
        let mut p = policy("p", PolicyAllowed::default());
        assert!(problems(&p).is_empty(), "{:?}", problems(&p));
        p.spec.selector = PolicySelector::default();
        p.spec.allowed = Some(PolicyAllowed {
            dns_names: Some(AllowedStringSlice {
                values: Some(vec!["*".into()]),
                required: None,
                validations: Some(vec![ValidationRule {
                    rule: "self.endsWith(".into(),
                    message: None,
                }]),
            }),
            ..Default::default()
        });
        p.spec.constraints = Some(PolicyConstraints {
            min_duration: Some("2h".into()),
            max_duration: Some("1h".into()),
            private_key: Some(PrivateKeyConstraints {
                algorithm: Some("DSA".into()),
                min_size: Some(4096),
                max_size: Some(2048),
            }),
        });
        let found = problems(&p);
        assert_eq!(found.len(), 5, "{found:#?}");
        for (problem, want) in found.iter().zip([
            "spec.selector: Required value",
            "spec.allowed.dnsNames.validations[0].rule: Invalid value",
            "spec.constraints: Invalid value: minDuration",
            "spec.constraints.privateKey.algorithm: Unsupported value",
            "spec.constraints.privateKey: Invalid value: minSize",
        ]) {
            assert!(
                problem.starts_with(want),
                "{problem} should start with {want}"
            );
        }
        p.spec.constraints.as_mut().unwrap().max_duration = Some("soon".into());
        assert!(
            problems(&p)
                .iter()
                .any(|e| e.starts_with("spec.constraints.maxDuration"))
        );
    }

    #[test]
    fn service_accounts_a_request_speaks_for() {
        // The node plugin speaks for the owner Pod.
        let node = Some("system:serviceaccount:cert-csi:cert-manager-csi-driver");
        assert_eq!(service_account_of("team", node, Some("app")), "app");
        assert_eq!(service_account_of("team", node, None), "");
        assert_eq!(service_account_of("team", None, Some("app")), "app");
        // A pod's own token speaks for itself, never for a neighbour.
        let own = Some("system:serviceaccount:team:app");
        assert_eq!(service_account_of("team", own, None), "app");
        assert_eq!(service_account_of("team", own, Some("app")), "app");
        assert_eq!(service_account_of("team", own, Some("admin")), "");
        // A ServiceAccount of another namespace is not the request's own.
        let other = Some("system:serviceaccount:other:app");
        assert_eq!(service_account_of("team", other, Some("db")), "db");
        assert_eq!(
            service_account_of("team", Some("system:serviceaccount:team:"), None),
            ""
        );
    }

    #[test]
    fn cel_sees_the_service_account() {
        let p = policy(
            "p",
            PolicyAllowed {
                uris: Some(AllowedStringSlice {
                    values: Some(vec!["spiffe://cluster.local/ns/*/sa/*".into()]),
                    required: None,
                    validations: Some(vec![ValidationRule {
                        rule: "cr.serviceAccountName != '' && self == 'spiffe://cluster.local/ns/' + cr.namespace + '/sa/' + cr.serviceAccountName".into(),
                        message: Some("only the pod's own identity".into()),
                    }]),
                }),
                ..Default::default()
            },
        );
        assert!(reads_service_account(&p));
        assert!(!reads_service_account(&policy(
            "q",
            PolicyAllowed::default()
        )));
        let mut f = facts();
        f.uris = vec!["spiffe://cluster.local/ns/team/sa/app".into()];
        let errors = violations(&p, &f);
        assert_eq!(errors.len(), 1, "no ServiceAccount known: {errors:?}");
        f.service_account = "app".into();
        assert!(violations(&p, &f).is_empty(), "{:?}", violations(&p, &f));
        f.service_account = "db".into();
        assert!(violations(&p, &f)[0].ends_with("only the pod's own identity"));
    }

    #[test]
    fn cel_validations_see_self_and_cr() {
        let rule = |rule: &str, message: Option<&str>| ValidationRule {
            rule: rule.into(),
            message: message.map(Into::into),
        };
        let p = policy(
            "p",
            PolicyAllowed {
                dns_names: Some(AllowedStringSlice {
                    values: Some(vec!["*".into()]),
                    required: None,
                    validations: Some(vec![rule(
                        "self.endsWith(cr.namespace + '.svc.cluster.local')",
                        Some("must be a service of the request's namespace"),
                    )]),
                }),
                uris: Some(AllowedStringSlice {
                    values: Some(vec!["*".into()]),
                    required: None,
                    validations: Some(vec![rule("self.lowerAscii() == self", None)]),
                }),
                ..Default::default()
            },
        );
        let mut f = facts();
        f.dns_names = vec!["app.team.svc.cluster.local".into()];
        f.uris = vec!["spiffe://x/y".into()];
        assert!(violations(&p, &f).is_empty(), "{:?}", violations(&p, &f));
        f.dns_names = vec!["app.other.svc.cluster.local".into()];
        f.uris = vec!["spiffe://X/y".into()];
        let errors = violations(&p, &f);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].starts_with("spec.allowed.dnsNames.validations[0]")
                && errors[0].ends_with("must be a service of the request's namespace"),
            "{errors:?}"
        );
        assert!(
            errors[1].contains("failed rule: self.lowerAscii() == self"),
            "{errors:?}"
        );
        // A rule that does not compile, or gives no boolean, fails closed.
        let mut bad = p.clone();
        bad.spec
            .allowed
            .as_mut()
            .unwrap()
            .uris
            .as_mut()
            .unwrap()
            .validations = Some(vec![rule("self ==", None), rule("size(self)", None)]);
        f.dns_names.clear();
        let errors = violations(&bad, &f);
        assert!(errors[0].contains("does not compile"), "{errors:?}");
        assert!(errors[1].contains("not a boolean"), "{errors:?}");
    }

    #[test]
    fn constraints() {
        let mut p = policy("p", PolicyAllowed::default());
        p.spec.constraints = Some(PolicyConstraints {
            min_duration: Some("1h".into()),
            max_duration: Some("24h".into()),
            private_key: Some(PrivateKeyConstraints {
                algorithm: Some("RSA".into()),
                min_size: Some(2048),
                max_size: Some(4096),
            }),
        });
        let mut f = facts();
        f.key = Some(KeyAlgorithm::Rsa { bits: 2048 });
        assert!(violations(&p, &f).is_empty());
        f.duration = Duration::from_secs(60);
        f.key = Some(KeyAlgorithm::Rsa { bits: 8192 });
        let errors = violations(&p, &f);
        assert!(
            errors[0].starts_with("spec.constraints.minDuration"),
            "{errors:?}"
        );
        assert!(
            errors[1].starts_with("spec.constraints.privateKey.maxSize"),
            "{errors:?}"
        );
        f.duration = DEFAULT_DURATION;
        f.key = Some(KeyAlgorithm::Ecdsa(Curve::P256));
        let errors = violations(&p, &f);
        assert!(
            errors[0].starts_with("spec.constraints.maxDuration"),
            "{errors:?}"
        );
        assert!(
            errors[1].starts_with("spec.constraints.privateKey.algorithm"),
            "{errors:?}"
        );
        assert!(
            errors[2].starts_with("spec.constraints.privateKey.minSize"),
            "{errors:?}"
        );
    }

    #[test]
    fn selectors() {
        let ca = IssuerRef::cluster_issuer("my-ca");
        let sel =
            |issuer: Option<IssuerRefSelector>, ns: Option<NamespaceSelector>| PolicySelector {
                issuer_ref: issuer,
                namespace: ns,
            };
        assert!(!selects(&sel(None, None), &ca, "team", None));
        assert!(selects(
            &sel(Some(Default::default()), None),
            &ca,
            "team",
            None
        ));
        assert!(selects(
            &sel(None, Some(Default::default())),
            &ca,
            "team",
            None
        ));
        let by_kind = IssuerRefSelector {
            name: Some("my-*".into()),
            kind: Some("*Issuer".into()),
            group: Some("cert-manager.io".into()),
        };
        assert!(selects(
            &sel(Some(by_kind.clone()), None),
            &ca,
            "team",
            None
        ));
        assert!(!selects(
            &sel(Some(by_kind), None),
            &IssuerRef::issuer("other"),
            "team",
            None
        ));
        let names = NamespaceSelector {
            match_names: Some(vec!["app-team-*".into()]),
            match_labels: None,
        };
        assert!(selects(
            &sel(None, Some(names.clone())),
            &ca,
            "app-team-1",
            None
        ));
        assert!(!selects(&sel(None, Some(names)), &ca, "team", None));
        let labels = NamespaceSelector {
            match_names: None,
            match_labels: Some(BTreeMap::from([("team".into(), "dev".into())])),
        };
        let s = sel(None, Some(labels));
        assert!(needs_labels(&s));
        let dev = BTreeMap::from([("team".into(), "dev".into()), ("x".into(), "y".into())]);
        assert!(selects(&s, &ca, "team", Some(&dev)));
        assert!(!selects(&s, &ca, "team", Some(&BTreeMap::new())));
        assert!(!selects(&s, &ca, "team", None));
    }

    #[test]
    fn verdicts_name_every_policy() {
        let narrow = policy(
            "narrow",
            PolicyAllowed {
                dns_names: list(&["a.example.com"]),
                ..Default::default()
            },
        );
        let wide = policy(
            "wide",
            PolicyAllowed {
                dns_names: list(&["*.example.com"]),
                ..Default::default()
            },
        );
        let mut f = facts();
        f.dns_names = vec!["b.example.com".into()];
        assert_eq!(verdict(&[], &Ok(f.clone())), Verdict::NoPolicy);
        assert_eq!(
            verdict(&[&narrow, &wide], &Ok(f.clone())),
            Verdict::Approved {
                policy: "wide".into()
            }
        );
        f.dns_names = vec!["b.example.org".into()];
        let Verdict::Denied { message } = verdict(&[&wide, &narrow], &Ok(f)) else {
            panic!("not denied")
        };
        assert!(
            message.starts_with(
                "No policy approved this request: [narrow: spec.allowed.dnsNames.values"
            ),
            "{message}"
        );
        assert!(
            message.contains("[wide: spec.allowed.dnsNames.values"),
            "{message}"
        );
        let Verdict::Denied { message } = verdict(&[&wide], &Err("spec.request: bad".into()))
        else {
            panic!("not denied")
        };
        assert!(message.contains("spec.request: bad"), "{message}");
    }
}
