//! Admission webhooks: `admissionregistration.k8s.io/v1`
//! MutatingWebhookConfiguration and ValidatingWebhookConfiguration objects,
//! checked and defaulted when stored, matched against each write, and called
//! over HTTPS with an `admission.k8s.io/v1` AdmissionReview before the write
//! is committed.
//!
//! The pure parts (defaults and validation of a configuration, rule and
//! selector matching, the review body, reading the answer) are plain
//! functions tested on their own; [`call`] is the only I/O.
//!
//! What the sandbox supports, and what it does not:
//! - `clientConfig.url` (https only). `clientConfig.service` is accepted and
//!   stored, but the sandbox has no Services: a call reaches one only if the
//!   test registered its address (`Sandbox::route_service`); otherwise the
//!   call fails and `failurePolicy` decides. The TLS server name for a
//!   Service is `<name>.<namespace>.svc`, as on a real cluster.
//! - `caBundle` is the only trust: an empty bundle trusts nothing (a real
//!   server would fall back to the system roots).
//! - `admissionReviewVersions` must include `v1`; only v1 is sent.
//! - `matchPolicy` is stored but each resource is served in one version, so
//!   Exact and Equivalent mean the same. `matchConditions` (CEL) are refused.
//! - `reinvocationPolicy: IfNeeded` is stored; webhooks are called once.
//! - Configurations themselves, TokenRequests and deletecollection are never
//!   sent to webhooks.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Map, Value, json};

use super::auth::UserInfo;
use super::error::{ApiError, FieldError};
use super::json::string_list;
use super::patch;
use super::selector::LabelSelector;
use super::validation;

pub const GROUP: &str = "admissionregistration.k8s.io";
/// The real server's default and ceiling for `timeoutSeconds`.
const DEFAULT_TIMEOUT_SECS: i64 = 10;
const MAX_TIMEOUT_SECS: i64 = 30;
/// Largest AdmissionReview answer read from a webhook.
const MAX_RESPONSE: usize = 3 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    Mutating,
    Validating,
}

impl HookKind {
    pub fn from_plural(plural: &str) -> Option<HookKind> {
        match plural {
            "mutatingwebhookconfigurations" => Some(HookKind::Mutating),
            "validatingwebhookconfigurations" => Some(HookKind::Validating),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
    Delete,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    Fail,
    Ignore,
}

/// One entry of `webhooks[].rules`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub operations: Vec<String>,
    pub api_groups: Vec<String>,
    pub api_versions: Vec<String>,
    pub resources: Vec<String>,
    /// `*`, `Cluster` or `Namespaced`.
    pub scope: String,
}

/// Where a webhook is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Url(url::Url),
    Service {
        namespace: String,
        name: String,
        port: u16,
        path: String,
    },
}

/// One webhook of a stored configuration, ready to match and call.
pub struct Webhook {
    pub configuration: String,
    pub name: String,
    pub kind: HookKind,
    pub rules: Vec<Rule>,
    pub namespace_selector: LabelSelector,
    pub object_selector: LabelSelector,
    pub failure_policy: FailurePolicy,
    pub timeout: Duration,
    pub endpoint: Endpoint,
    /// Built once per configuration change; `Err` says why the caBundle is
    /// unusable, reported (per failurePolicy) on each call.
    pub tls: Result<Arc<rustls::ClientConfig>, String>,
}

/// What a write looks like to rule matching.
#[derive(Debug, Clone, Copy)]
pub struct Attributes<'a> {
    pub group: &'a str,
    pub version: &'a str,
    pub resource: &'a str,
    pub subresource: Option<&'a str>,
    pub operation: Operation,
    pub namespaced: bool,
}

/// Whether a `resources` entry covers `resource[/sub]`, with the real
/// server's matcher: `*` is every resource but no subresource, and a `*`
/// subresource also covers the resource itself, so `*/*` is everything and
/// `pods/*` is pods with all its subresources.
pub fn resource_matches(pattern: &str, resource: &str, sub: Option<&str>) -> bool {
    let (p_res, p_sub) = pattern.split_once('/').unwrap_or((pattern, ""));
    (p_res == "*" || p_res == resource) && (p_sub == "*" || p_sub == sub.unwrap_or(""))
}

fn listed(list: &[String], v: &str) -> bool {
    list.iter().any(|x| x == "*" || x == v)
}

pub fn rule_matches(rule: &Rule, a: &Attributes<'_>) -> bool {
    listed(&rule.operations, a.operation.as_str())
        && listed(&rule.api_groups, a.group)
        && listed(&rule.api_versions, a.version)
        && rule
            .resources
            .iter()
            .any(|p| resource_matches(p, a.resource, a.subresource))
        && match rule.scope.as_str() {
            "Cluster" => !a.namespaced,
            "Namespaced" => a.namespaced,
            _ => true,
        }
}

/// The configurations are never sent to webhooks, as on a real server,
/// so a broken webhook cannot lock its own configuration in place.
pub fn exempt(group: &str, resource: &str) -> bool {
    group == GROUP && HookKind::from_plural(resource).is_some()
}

impl Webhook {
    pub fn rules_match(&self, a: &Attributes<'_>) -> bool {
        !exempt(a.group, a.resource) && self.rules.iter().any(|r| rule_matches(r, a))
    }

    /// Whether the selectors admit this write. `ns_labels` is `None` for
    /// cluster-scoped objects other than Namespaces, which the namespace
    /// selector does not apply to.
    pub fn selectors_match(
        &self,
        object: Option<&Value>,
        old: Option<&Value>,
        ns_labels: Option<&BTreeMap<String, String>>,
    ) -> bool {
        let ns_ok = match ns_labels {
            None => true,
            Some(l) => self.namespace_selector.matches(l),
        };
        let obj_ok = self.object_selector.is_empty()
            || [object, old]
                .into_iter()
                .flatten()
                .any(|o| self.object_selector.matches(&labels_of(o)));
        ns_ok && obj_ok
    }
}

pub fn labels_of(v: &Value) -> BTreeMap<String, String> {
    v.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn set_default(m: &mut Map<String, Value>, k: &str, v: Value) {
    if m.get(k).is_none_or(Value::is_null) {
        m.insert(k.into(), v);
    }
}

fn one_of(
    causes: &mut Vec<FieldError>,
    field: String,
    v: Option<&Value>,
    allowed: &[&str],
    required: bool,
) {
    match v.and_then(Value::as_str) {
        Some(s) if allowed.contains(&s) => {}
        None if !required => {}
        None => causes.push(FieldError::required(
            field,
            format!("must specify one of {}", allowed.join(", ")),
        )),
        Some(s) => causes.push(FieldError::unsupported(
            field,
            s,
            &allowed.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        )),
    }
}

fn check_client_config(f: &str, cc: Option<&Value>, causes: &mut Vec<FieldError>) {
    let cc = cc.cloned().unwrap_or(json!({}));
    let url = cc.get("url").and_then(Value::as_str);
    let service = cc.get("service").filter(|s| !s.is_null());
    match (url, service) {
        (Some(_), Some(_)) | (None, None) => causes.push(FieldError::required(
            f,
            "exactly one of url or service is required",
        )),
        (Some(u), None) => match url::Url::parse(u) {
            Err(e) => causes.push(FieldError::invalid(
                format!("{f}.url"),
                u,
                format!("url must be a valid https URL: {e}"),
            )),
            Ok(parsed) => {
                if parsed.scheme() != "https" {
                    causes.push(FieldError::invalid(
                        format!("{f}.url"),
                        u,
                        "'https' is the only allowed URL scheme",
                    ));
                }
                if parsed.host().is_none() {
                    causes.push(FieldError::invalid(
                        format!("{f}.url"),
                        u,
                        "host must be specified",
                    ));
                }
                if !parsed.username().is_empty() || parsed.password().is_some() {
                    causes.push(FieldError::invalid(
                        format!("{f}.url"),
                        u,
                        "user information is not permitted in the URL",
                    ));
                }
                if parsed.fragment().is_some() {
                    causes.push(FieldError::invalid(
                        format!("{f}.url"),
                        u,
                        "fragments are not permitted in the URL",
                    ));
                }
                if parsed.query().is_some() {
                    causes.push(FieldError::invalid(
                        format!("{f}.url"),
                        u,
                        "query parameters are not permitted in the URL",
                    ));
                }
            }
        },
        (None, Some(s)) => {
            for k in ["namespace", "name"] {
                if s.get(k).and_then(Value::as_str).is_none_or(str::is_empty) {
                    causes.push(FieldError::required(
                        format!("{f}.service.{k}"),
                        "the Service's namespace and name are both required",
                    ));
                }
            }
            if let Some(p) = s.get("port")
                && !p.as_u64().is_some_and(|p| (1..=65535).contains(&p))
            {
                causes.push(FieldError::invalid(
                    format!("{f}.service.port"),
                    p.to_string(),
                    "port is not valid: must be between 1 and 65535, inclusive",
                ));
            }
            if let Some(p) = s.get("path").and_then(Value::as_str)
                && !p.starts_with('/')
            {
                causes.push(FieldError::invalid(
                    format!("{f}.service.path"),
                    p,
                    "must start with a '/'",
                ));
            }
        }
    }
    if let Some(ca) = cc.get("caBundle").filter(|v| !v.is_null()) {
        let ok = ca
            .as_str()
            .is_some_and(|s| base64::engine::general_purpose::STANDARD.decode(s).is_ok());
        if !ok {
            causes.push(FieldError::invalid(
                format!("{f}.caBundle"),
                "<bytes>",
                "must be the base64 encoding of PEM certificates",
            ));
        }
    }
}

fn check_rules(f: &str, rules: Option<&Value>, causes: &mut Vec<FieldError>) {
    let Some(rules) = rules.and_then(Value::as_array) else {
        return;
    };
    for (j, r) in rules.iter().enumerate() {
        let rf = format!("{f}.rules[{j}]");
        let ops = string_list(r.get("operations"));
        if ops.is_empty() {
            causes.push(FieldError::required(
                format!("{rf}.operations"),
                "list at least one of CREATE, UPDATE, DELETE, CONNECT or *",
            ));
        }
        for (k, op) in ops.iter().enumerate() {
            if !["CREATE", "UPDATE", "DELETE", "CONNECT", "*"].contains(&op.as_str()) {
                causes.push(FieldError::unsupported(
                    format!("{rf}.operations[{k}]"),
                    op,
                    &["*", "CONNECT", "CREATE", "DELETE", "UPDATE"].map(String::from),
                ));
            }
        }
        for k in ["apiGroups", "apiVersions", "resources"] {
            if string_list(r.get(k)).is_empty() {
                causes.push(FieldError::required(
                    format!("{rf}.{k}"),
                    "list at least one entry, or \"*\"",
                ));
            }
        }
        for (k, res) in string_list(r.get("resources")).iter().enumerate() {
            if res.is_empty() || res.matches('/').count() > 1 {
                causes.push(FieldError::invalid(
                    format!("{rf}.resources[{k}]"),
                    res,
                    "must be resource or resource/subresource",
                ));
            }
        }
        one_of(
            causes,
            format!("{rf}.scope"),
            r.get("scope"),
            &["*", "Cluster", "Namespaced"],
            false,
        );
    }
}

/// Fills the defaults the real server stores and lists every field a real
/// server would reject, with the reason and what would be accepted.
pub fn prepare_configuration(kind: HookKind, body: &mut Value) -> Vec<FieldError> {
    let mut causes = Vec::new();
    let Some(hooks) = body.get_mut("webhooks").and_then(Value::as_array_mut) else {
        return causes;
    };
    let mut seen = Vec::new();
    for (i, h) in hooks.iter_mut().enumerate() {
        let f = format!("webhooks[{i}]");
        let Some(m) = h.as_object_mut() else {
            causes.push(FieldError::invalid(
                f,
                "<value>",
                "each webhook must be an object",
            ));
            continue;
        };
        set_default(m, "failurePolicy", json!("Fail"));
        set_default(m, "matchPolicy", json!("Equivalent"));
        set_default(m, "timeoutSeconds", json!(DEFAULT_TIMEOUT_SECS));
        set_default(m, "namespaceSelector", json!({}));
        set_default(m, "objectSelector", json!({}));
        if kind == HookKind::Mutating {
            set_default(m, "reinvocationPolicy", json!("Never"));
        }
        if let Some(rules) = m.get_mut("rules").and_then(Value::as_array_mut) {
            for r in rules.iter_mut().filter_map(Value::as_object_mut) {
                set_default(r, "scope", json!("*"));
            }
        }
        if let Some(s) = m
            .get_mut("clientConfig")
            .and_then(|c| c.get_mut("service"))
            .and_then(Value::as_object_mut)
        {
            set_default(s, "port", json!(443));
        }
        let name = m.get("name").and_then(Value::as_str).unwrap_or("");
        if name.is_empty() {
            causes.push(FieldError::required(
                format!("{f}.name"),
                "name the webhook",
            ));
        } else {
            let mut errs = validation::name_errors(validation::NameRule::Subdomain, name);
            if name.split('.').count() < 3 {
                errs.push(
                    "should be a domain with at least three segments separated by dots".into(),
                );
            }
            for e in errs {
                causes.push(FieldError::invalid(format!("{f}.name"), name, e));
            }
            if seen.contains(&name.to_string()) {
                causes.push(FieldError::invalid(
                    format!("{f}.name"),
                    name,
                    "Duplicate value: webhook names must be unique within a configuration",
                ));
            }
            seen.push(name.to_string());
        }
        check_client_config(
            &format!("{f}.clientConfig"),
            m.get("clientConfig"),
            &mut causes,
        );
        check_rules(&f, m.get("rules"), &mut causes);
        one_of(
            &mut causes,
            format!("{f}.failurePolicy"),
            m.get("failurePolicy"),
            &["Fail", "Ignore"],
            true,
        );
        one_of(
            &mut causes,
            format!("{f}.matchPolicy"),
            m.get("matchPolicy"),
            &["Exact", "Equivalent"],
            true,
        );
        one_of(
            &mut causes,
            format!("{f}.sideEffects"),
            m.get("sideEffects"),
            &["None", "NoneOnDryRun"],
            true,
        );
        if kind == HookKind::Mutating {
            one_of(
                &mut causes,
                format!("{f}.reinvocationPolicy"),
                m.get("reinvocationPolicy"),
                &["Never", "IfNeeded"],
                true,
            );
        }
        match m.get("timeoutSeconds").and_then(Value::as_i64) {
            Some(t) if (1..=MAX_TIMEOUT_SECS).contains(&t) => {}
            _ => causes.push(FieldError::invalid(
                format!("{f}.timeoutSeconds"),
                m.get("timeoutSeconds")
                    .map(Value::to_string)
                    .unwrap_or_default(),
                "the timeout value must be between 1 and 30 seconds",
            )),
        }
        let versions = string_list(m.get("admissionReviewVersions"));
        if versions.is_empty() {
            causes.push(FieldError::required(
                format!("{f}.admissionReviewVersions"),
                "must specify one of v1, v1beta1",
            ));
        } else if !versions.iter().any(|v| v == "v1") {
            causes.push(FieldError::invalid(
                format!("{f}.admissionReviewVersions"),
                versions.join(","),
                "the sandbox sends only admission.k8s.io/v1 AdmissionReviews; include v1",
            ));
        }
        for sel in ["namespaceSelector", "objectSelector"] {
            if let Err(e) = LabelSelector::from_json(m.get(sel)) {
                causes.push(FieldError::invalid(
                    format!("{f}.{sel}"),
                    m.get(sel).map(Value::to_string).unwrap_or_default(),
                    e.to_string(),
                ));
            }
        }
        if m.get("matchConditions")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
        {
            causes.push(FieldError::forbidden(
                format!("{f}.matchConditions"),
                "CEL match conditions are not supported by the sandbox; use rules and selectors",
            ));
        }
    }
    causes
}

/// A rustls client configuration that trusts exactly the certificates of
/// `ca_bundle` (the base64 of PEM text, as the JSON `caBundle` field holds).
pub fn client_config(ca_bundle: Option<&str>) -> Result<Arc<rustls::ClientConfig>, String> {
    let pem_text = base64::engine::general_purpose::STANDARD
        .decode(ca_bundle.unwrap_or(""))
        .map_err(|e| format!("caBundle is not valid base64: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    let blocks =
        pem::parse_many(&pem_text).map_err(|e| format!("caBundle is not PEM text: {e}"))?;
    for b in blocks.iter().filter(|b| b.tag() == "CERTIFICATE") {
        roots
            .add(rustls_pki_types::CertificateDer::from(
                b.contents().to_vec(),
            ))
            .map_err(|e| format!("caBundle holds a certificate rustls cannot use: {e}"))?;
    }
    if roots.is_empty() {
        return Err(
            "caBundle holds no CERTIFICATE block; the sandbox trusts no system roots, so set caBundle to the webhook's CA".into(),
        );
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("building the TLS client: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Reads the webhooks out of a stored (already validated) configuration.
pub fn webhooks_of(kind: HookKind, config: &Value) -> Vec<Webhook> {
    let cfg_name = config
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let Some(hooks) = config.get("webhooks").and_then(Value::as_array) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for h in hooks {
        let s = |k: &str| h.get(k).and_then(Value::as_str).unwrap_or_default();
        let rules = h
            .get("rules")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|r| Rule {
                        operations: string_list(r.get("operations")),
                        api_groups: string_list(r.get("apiGroups")),
                        api_versions: string_list(r.get("apiVersions")),
                        resources: string_list(r.get("resources")),
                        scope: r
                            .get("scope")
                            .and_then(Value::as_str)
                            .unwrap_or("*")
                            .to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let cc = h.get("clientConfig").cloned().unwrap_or(json!({}));
        let endpoint = match (cc.get("url").and_then(Value::as_str), cc.get("service")) {
            (Some(u), _) => match url::Url::parse(u) {
                Ok(u) => Endpoint::Url(u),
                Err(_) => continue,
            },
            (None, Some(svc)) => Endpoint::Service {
                namespace: svc["namespace"].as_str().unwrap_or_default().to_string(),
                name: svc["name"].as_str().unwrap_or_default().to_string(),
                port: svc
                    .get("port")
                    .and_then(Value::as_u64)
                    .and_then(|p| u16::try_from(p).ok())
                    .unwrap_or(443),
                path: svc
                    .get("path")
                    .and_then(Value::as_str)
                    .unwrap_or("/")
                    .to_string(),
            },
            (None, None) => continue,
        };
        // Validation refused bad selectors when the object was stored; one
        // that still fails to read matches nothing rather than everything.
        let selector = |k: &str| {
            LabelSelector::from_json(h.get(k)).unwrap_or_else(|_| {
                LabelSelector(vec![super::selector::Requirement::Exists(
                    "\u{0}unreadable".into(),
                )])
            })
        };
        out.push(Webhook {
            configuration: cfg_name.to_string(),
            name: s("name").to_string(),
            kind,
            rules,
            namespace_selector: selector("namespaceSelector"),
            object_selector: selector("objectSelector"),
            failure_policy: if s("failurePolicy") == "Ignore" {
                FailurePolicy::Ignore
            } else {
                FailurePolicy::Fail
            },
            timeout: Duration::from_secs(
                h.get("timeoutSeconds")
                    .and_then(Value::as_u64)
                    .unwrap_or(DEFAULT_TIMEOUT_SECS as u64)
                    .clamp(1, MAX_TIMEOUT_SECS as u64),
            ),
            endpoint,
            tls: client_config(cc.get("caBundle").and_then(Value::as_str)),
        });
    }
    out
}

/// Everything an AdmissionReview says about one write, except the object,
/// which mutating webhooks change as they go.
pub struct Review<'a> {
    pub group: &'a str,
    pub version: &'a str,
    pub kind: &'a str,
    pub resource: &'a str,
    pub subresource: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub name: &'a str,
    pub operation: Operation,
    pub user: &'a UserInfo,
    pub old_object: Option<&'a Value>,
    pub dry_run: bool,
    /// CreateOptions, UpdateOptions or DeleteOptions.
    pub options: Value,
}

/// The `admission.k8s.io/v1` AdmissionReview sent to a webhook.
pub fn review_body(r: &Review<'_>, object: Option<&Value>, uid: &str) -> Value {
    let kind = json!({"group": r.group, "version": r.version, "kind": r.kind});
    let resource = json!({"group": r.group, "version": r.version, "resource": r.resource});
    let mut req = json!({
        "uid": uid,
        "kind": kind,
        "resource": resource,
        "requestKind": kind,
        "requestResource": resource,
        "name": r.name,
        "operation": r.operation.as_str(),
        "userInfo": r.user.to_json(),
        "object": object.cloned().unwrap_or(Value::Null),
        "oldObject": r.old_object.cloned().unwrap_or(Value::Null),
        "dryRun": r.dry_run,
        "options": r.options,
    });
    if let Some(s) = r.subresource {
        req["subResource"] = json!(s);
        req["requestSubResource"] = json!(s);
    }
    if let Some(ns) = r.namespace {
        req["namespace"] = json!(ns);
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req})
}

/// What a webhook answered.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Allowed, with the JSONPatch to apply (mutating webhooks only).
    Allowed {
        patch: Option<Value>,
    },
    Denied(ApiError),
}

/// Reads an AdmissionReview answer. An answer that is not a well-formed
/// review for this request is a call failure, as on the real server.
pub fn interpret(hook: &str, kind: HookKind, uid: &str, body: &[u8]) -> Result<Verdict, CallError> {
    let bad = |m: String| CallError::Response(m);
    let v: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("the response is not JSON: {e}")))?;
    if v.get("apiVersion").and_then(Value::as_str) != Some("admission.k8s.io/v1")
        || v.get("kind").and_then(Value::as_str) != Some("AdmissionReview")
    {
        return Err(bad(format!(
            "expected webhook response of admission.k8s.io/v1, Kind=AdmissionReview, got {}, Kind={}",
            v.get("apiVersion").and_then(Value::as_str).unwrap_or(""),
            v.get("kind").and_then(Value::as_str).unwrap_or("")
        )));
    }
    let resp = v
        .get("response")
        .filter(|r| r.is_object())
        .ok_or_else(|| bad("webhook response was absent".into()))?;
    let got_uid = resp.get("uid").and_then(Value::as_str).unwrap_or("");
    if got_uid != uid {
        return Err(bad(format!(
            "expected response.uid={uid:?}, got {got_uid:?}"
        )));
    }
    let allowed = resp
        .get("allowed")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if !allowed {
        let status = resp.get("status").cloned().unwrap_or(json!({}));
        let code = status
            .get("code")
            .and_then(Value::as_u64)
            .and_then(|c| u16::try_from(c).ok())
            .filter(|c| (400..600).contains(c))
            .unwrap_or(400);
        let reason = status
            .get("reason")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let message = status.get("message").and_then(Value::as_str).unwrap_or("");
        let denied = format!("admission webhook {hook:?} denied the request");
        let message = if !message.is_empty() {
            format!("{denied}: {message}")
        } else if !reason.is_empty() {
            format!("{denied}: {reason}")
        } else {
            format!("{denied} without explanation")
        };
        return Ok(Verdict::Denied(ApiError::Rejected {
            code,
            reason,
            message,
        }));
    }
    let patch = match resp.get("patch").and_then(Value::as_str) {
        Some(p) if kind == HookKind::Mutating => {
            match resp.get("patchType").and_then(Value::as_str) {
                Some("JSONPatch") => {}
                other => {
                    return Err(bad(format!(
                        "unsupported patch type {:?}; only JSONPatch is defined",
                        other.unwrap_or("")
                    )));
                }
            }
            let raw = base64::engine::general_purpose::STANDARD
                .decode(p)
                .map_err(|e| bad(format!("response.patch is not base64: {e}")))?;
            Some(
                serde_json::from_slice(&raw)
                    .map_err(|e| bad(format!("response.patch is not a JSON document: {e}")))?,
            )
        }
        _ => None,
    };
    Ok(Verdict::Allowed { patch })
}

/// Applies a mutating webhook's JSONPatch.
pub fn apply_patch(object: &mut Value, patch_doc: &Value) -> Result<(), String> {
    let mut candidate = object.clone();
    patch::json_patch(&mut candidate, patch_doc).map_err(|e| e.to_string())?;
    if !candidate.is_object() {
        return Err("the patched object is not a JSON object".into());
    }
    *object = candidate;
    Ok(())
}

/// Why a webhook could not be asked, or answered nonsense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("clientConfig.caBundle: {0}")]
    Tls(String),
    #[error(
        "clientConfig.service {namespace}/{name}:{port}: the sandbox has no Services; register an address with Sandbox::route_service or use clientConfig.url"
    )]
    NoService {
        namespace: String,
        name: String,
        port: u16,
    },
    #[error("failed to call webhook: Post {url:?}: {detail}")]
    Transport { url: String, detail: String },
    #[error(
        "failed to call webhook: Post {url:?}: context deadline exceeded (timeoutSeconds is {secs})"
    )]
    Timeout { url: String, secs: u64 },
    #[error("the server responded with status {code}: {body}")]
    Status { code: u16, body: String },
    #[error("received invalid webhook response: {0}")]
    Response(String),
    #[error("applying the webhook's JSONPatch: {0}")]
    Patch(String),
}

/// Finds the address of a Service that a test registered.
pub type Resolver<'a> = &'a (dyn Fn(&str, &str, u16) -> Option<SocketAddr> + Sync);

/// POSTs the review to the webhook over HTTPS and returns the answer's body.
pub async fn call(
    hook: &Webhook,
    review: &Value,
    resolve: Resolver<'_>,
) -> Result<Vec<u8>, CallError> {
    let secs = hook.timeout.as_secs();
    let (target, server_name, authority, path, shown) = match &hook.endpoint {
        Endpoint::Url(u) => {
            let port = u.port_or_known_default().unwrap_or(443);
            let (host, name) = match u.host() {
                Some(url::Host::Domain(d)) => (d.to_string(), d.to_string()),
                Some(url::Host::Ipv4(ip)) => (ip.to_string(), ip.to_string()),
                Some(url::Host::Ipv6(ip)) => (ip.to_string(), ip.to_string()),
                None => {
                    return Err(CallError::Transport {
                        url: u.to_string(),
                        detail: "the URL has no host".into(),
                    });
                }
            };
            let authority = u[url::Position::BeforeHost..url::Position::AfterPort].to_string();
            (
                Target::HostPort(host, port),
                name,
                authority,
                u.path().to_string(),
                u.to_string(),
            )
        }
        Endpoint::Service {
            namespace,
            name,
            port,
            path,
        } => {
            let addr = resolve(namespace, name, *port).ok_or_else(|| CallError::NoService {
                namespace: namespace.clone(),
                name: name.clone(),
                port: *port,
            })?;
            let host = format!("{name}.{namespace}.svc");
            (
                Target::Addr(addr),
                host.clone(),
                format!("{host}:{port}"),
                path.clone(),
                format!("https://{host}:{port}{path}"),
            )
        }
    };
    let url = format!("{shown}?timeout={secs}s");
    let tls = hook.tls.clone().map_err(CallError::Tls)?;
    let body = serde_json::to_vec(review).expect("JSON values serialize");
    let transport = |detail: String| CallError::Transport {
        url: url.clone(),
        detail,
    };
    let exchange = async {
        let tcp = match &target {
            Target::HostPort(h, p) => tokio::net::TcpStream::connect((h.as_str(), *p)).await,
            Target::Addr(a) => tokio::net::TcpStream::connect(a).await,
        }
        .map_err(|e| transport(format!("dial tcp: {e}")))?;
        let name = rustls_pki_types::ServerName::try_from(server_name.clone())
            .map_err(|_| transport(format!("{server_name:?} is not a valid TLS server name")))?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| transport(format!("tls: {e}")))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| transport(e.to_string()))?;
        let driver = tokio::spawn(conn);
        let req = http::Request::post(format!("{path}?timeout={secs}s"))
            .header(http::header::HOST, &authority)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json")
            .body(axum::body::Body::from(body))
            .map_err(|e| transport(e.to_string()))?;
        let result = async {
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| transport(e.to_string()))?;
            let status = resp.status();
            let bytes = axum::body::to_bytes(axum::body::Body::new(resp.into_body()), MAX_RESPONSE)
                .await
                .map_err(|e| transport(format!("reading the response: {e}")))?;
            if !status.is_success() {
                return Err(CallError::Status {
                    code: status.as_u16(),
                    body: String::from_utf8_lossy(&bytes).chars().take(512).collect(),
                });
            }
            Ok(bytes.to_vec())
        }
        .await;
        driver.abort();
        result
    };
    match tokio::time::timeout(hook.timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(CallError::Timeout { url, secs }),
    }
}

enum Target {
    HostPort(String, u16),
    Addr(SocketAddr),
}

/// A call failure as the client sees it when `failurePolicy` is Fail.
fn failed(hook: &Webhook, e: &CallError) -> ApiError {
    ApiError::Internal(format!(
        "Internal error occurred: failed calling webhook {:?}: {e}",
        hook.name
    ))
}

/// Asks one webhook; `Ok(None)` means "ignored after a failure".
async fn ask(
    hook: &Webhook,
    review: &Review<'_>,
    object: Option<&Value>,
    resolve: Resolver<'_>,
) -> Result<Option<Verdict>, ApiError> {
    let uid = super::ops::new_uid();
    let body = review_body(review, object, &uid);
    let answer = call(hook, &body, resolve)
        .await
        .and_then(|b| interpret(&hook.name, hook.kind, &uid, &b));
    match answer {
        Ok(v) => Ok(Some(v)),
        Err(e) => match hook.failure_policy {
            FailurePolicy::Fail => Err(failed(hook, &e)),
            FailurePolicy::Ignore => {
                tracing::warn!(webhook = %hook.name, error = %e, "admission webhook failed; failurePolicy is Ignore, so the request continues");
                Ok(None)
            }
        },
    }
}

/// Runs mutating webhooks one after another, each seeing the previous
/// one's changes, and applies their patches to `object`.
pub async fn mutate(
    hooks: &[&Webhook],
    review: &Review<'_>,
    object: &mut Value,
    resolve: Resolver<'_>,
) -> Result<(), ApiError> {
    for hook in hooks {
        match ask(hook, review, Some(object), resolve).await? {
            None => {}
            Some(Verdict::Denied(e)) => return Err(e),
            Some(Verdict::Allowed { patch: None }) => {}
            Some(Verdict::Allowed { patch: Some(p) }) => {
                if let Err(e) = apply_patch(object, &p) {
                    let e = CallError::Patch(e);
                    match hook.failure_policy {
                        FailurePolicy::Fail => return Err(failed(hook, &e)),
                        FailurePolicy::Ignore => {
                            tracing::warn!(webhook = %hook.name, error = %e, "admission webhook patch not applied; failurePolicy is Ignore");
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// Runs validating webhooks in parallel, as the real server does; the first
/// refusal (in configuration order) wins.
pub async fn validate(
    hooks: &[&Webhook],
    review: &Review<'_>,
    object: Option<&Value>,
    resolve: Resolver<'_>,
) -> Result<(), ApiError> {
    let answers =
        futures::future::join_all(hooks.iter().map(|h| ask(h, review, object, resolve))).await;
    for a in answers {
        if let Some(Verdict::Denied(e)) = a? {
            return Err(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(res: &str, sub: Option<&'static str>, op: Operation) -> Attributes<'static> {
        let res: &'static str = Box::leak(res.to_string().into_boxed_str());
        Attributes {
            group: "cert-manager.io",
            version: "v1",
            resource: res,
            subresource: sub,
            operation: op,
            namespaced: true,
        }
    }

    fn rule(ops: &[&str], resources: &[&str], scope: &str) -> Rule {
        Rule {
            operations: ops.iter().map(|s| s.to_string()).collect(),
            api_groups: vec!["cert-manager.io".into()],
            api_versions: vec!["*".into()],
            resources: resources.iter().map(|s| s.to_string()).collect(),
            scope: scope.into(),
        }
    }

    #[test]
    fn resource_patterns_follow_the_real_server() {
        let cases = [
            ("*", "pods", None, true),
            ("*", "pods", Some("status"), false),
            ("*/*", "pods", Some("status"), true),
            ("*/*", "pods", None, true),
            ("pods", "pods", None, true),
            ("pods", "pods", Some("status"), false),
            ("pods/*", "pods", Some("status"), true),
            ("pods/*", "pods", None, true),
            ("*/status", "secrets", Some("status"), true),
            ("*/status", "secrets", Some("scale"), false),
            ("pods/status", "pods", Some("status"), true),
            ("pods/status", "nodes", Some("status"), false),
            ("pods", "secrets", None, false),
        ];
        for (pattern, res, sub, want) in cases {
            assert_eq!(
                resource_matches(pattern, res, sub),
                want,
                "{pattern} vs {res}/{sub:?}"
            );
        }
    }

    #[test]
    fn rules_match_operation_group_version_and_scope() {
        let create = rule(&["CREATE"], &["certificaterequests"], "*");
        assert!(rule_matches(
            &create,
            &attrs("certificaterequests", None, Operation::Create)
        ));
        assert!(!rule_matches(
            &create,
            &attrs("certificaterequests", None, Operation::Update)
        ));
        assert!(!rule_matches(
            &create,
            &attrs("certificates", None, Operation::Create)
        ));
        let mut other_group = attrs("certificaterequests", None, Operation::Create);
        other_group.group = "";
        assert!(!rule_matches(&create, &other_group));
        let any = rule(&["*"], &["*"], "*");
        assert!(rule_matches(&any, &attrs("x", None, Operation::Delete)));
        let cluster = rule(&["*"], &["*"], "Cluster");
        assert!(!rule_matches(
            &cluster,
            &attrs("x", None, Operation::Create)
        ));
        let mut cluster_attrs = attrs("x", None, Operation::Create);
        cluster_attrs.namespaced = false;
        assert!(rule_matches(&cluster, &cluster_attrs));
        let status = rule(&["UPDATE"], &["certificaterequests/status"], "Namespaced");
        assert!(rule_matches(
            &status,
            &attrs("certificaterequests", Some("status"), Operation::Update)
        ));
        assert!(!rule_matches(
            &status,
            &attrs("certificaterequests", None, Operation::Update)
        ));
    }

    fn config(hook: Value) -> Value {
        json!({"metadata": {"name": "cfg"}, "webhooks": [hook]})
    }

    fn good_hook() -> Value {
        json!({
            "name": "cr.cert-csi.io",
            "clientConfig": {"url": "https://127.0.0.1:8443/mutate", "caBundle": ""},
            "rules": [{"operations": ["CREATE"], "apiGroups": ["cert-manager.io"], "apiVersions": ["v1"], "resources": ["certificaterequests"]}],
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
        })
    }

    #[test]
    fn configurations_get_the_real_defaults() {
        let mut c = config(good_hook());
        let causes = prepare_configuration(HookKind::Mutating, &mut c);
        assert!(causes.is_empty(), "{causes:?}");
        let h = &c["webhooks"][0];
        assert_eq!(h["failurePolicy"], "Fail");
        assert_eq!(h["matchPolicy"], "Equivalent");
        assert_eq!(h["timeoutSeconds"], 10);
        assert_eq!(h["reinvocationPolicy"], "Never");
        assert_eq!(h["namespaceSelector"], json!({}));
        assert_eq!(h["rules"][0]["scope"], "*");
        let mut v = config(good_hook());
        prepare_configuration(HookKind::Validating, &mut v);
        assert!(v["webhooks"][0].get("reinvocationPolicy").is_none());
    }

    #[test]
    fn configurations_with_mistakes_name_each_field() {
        type Edit = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(Edit, &str)> = vec![
            (
                Box::new(|h| h["name"] = json!("short.name")),
                "webhooks[0].name",
            ),
            (
                Box::new(|h| h["clientConfig"]["url"] = json!("http://127.0.0.1/x")),
                "webhooks[0].clientConfig.url",
            ),
            (
                Box::new(|h| h["clientConfig"]["url"] = json!("https://127.0.0.1/x?a=b")),
                "webhooks[0].clientConfig.url",
            ),
            (
                Box::new(|h| h["clientConfig"]["service"] = json!({"namespace": "a", "name": "b"})),
                "webhooks[0].clientConfig",
            ),
            (
                Box::new(|h| h["clientConfig"]["caBundle"] = json!("not base64!")),
                "webhooks[0].clientConfig.caBundle",
            ),
            (
                Box::new(|h| h["sideEffects"] = json!("Some")),
                "webhooks[0].sideEffects",
            ),
            (
                Box::new(|h| {
                    h.as_object_mut().unwrap().remove("sideEffects");
                }),
                "webhooks[0].sideEffects",
            ),
            (
                Box::new(|h| h["timeoutSeconds"] = json!(31)),
                "webhooks[0].timeoutSeconds",
            ),
            (
                Box::new(|h| h["failurePolicy"] = json!("Maybe")),
                "webhooks[0].failurePolicy",
            ),
            (
                Box::new(|h| h["admissionReviewVersions"] = json!(["v1beta1"])),
                "webhooks[0].admissionReviewVersions",
            ),
            (
                Box::new(|h| h["rules"][0]["operations"] = json!(["PATCH"])),
                "webhooks[0].rules[0].operations[0]",
            ),
            (
                Box::new(|h| h["rules"][0]["resources"] = json!([])),
                "webhooks[0].rules[0].resources",
            ),
            (
                Box::new(|h| h["rules"][0]["scope"] = json!("Global")),
                "webhooks[0].rules[0].scope",
            ),
            (
                Box::new(|h| {
                    h["objectSelector"] =
                        json!({"matchExpressions": [{"key": "a", "operator": "In"}]})
                }),
                "webhooks[0].objectSelector",
            ),
        ];
        for (mutate_hook, field) in cases {
            let mut h = good_hook();
            mutate_hook(&mut h);
            let mut c = config(h);
            let causes = prepare_configuration(HookKind::Mutating, &mut c);
            assert!(
                causes.iter().any(|c| c.field == field),
                "{field}: {causes:?}"
            );
        }
        let mut dup = json!({"metadata": {"name": "cfg"}, "webhooks": [good_hook(), good_hook()]});
        let causes = prepare_configuration(HookKind::Validating, &mut dup);
        assert!(
            causes.iter().any(|c| c.field == "webhooks[1].name"),
            "{causes:?}"
        );
    }

    #[test]
    fn selectors_use_object_old_object_and_namespace_labels() {
        let mut c = config(good_hook());
        c["webhooks"][0]["objectSelector"] = json!({"matchLabels": {"app": "web"}});
        c["webhooks"][0]["namespaceSelector"] =
            json!({"matchExpressions": [{"key": "team", "operator": "In", "values": ["a"]}]});
        prepare_configuration(HookKind::Mutating, &mut c);
        let hook = webhooks_of(HookKind::Mutating, &c).remove(0);
        let web = json!({"metadata": {"labels": {"app": "web"}}});
        let db = json!({"metadata": {"labels": {"app": "db"}}});
        let team_a: BTreeMap<String, String> = [("team".to_string(), "a".to_string())].into();
        let team_b: BTreeMap<String, String> = [("team".to_string(), "b".to_string())].into();
        assert!(hook.selectors_match(Some(&web), None, Some(&team_a)));
        assert!(!hook.selectors_match(Some(&web), None, Some(&team_b)));
        assert!(!hook.selectors_match(Some(&db), None, Some(&team_a)));
        // An update that removes the label is still seen (old object matches).
        assert!(hook.selectors_match(Some(&db), Some(&web), Some(&team_a)));
        // Cluster-scoped objects ignore the namespace selector.
        assert!(hook.selectors_match(Some(&web), None, None));
    }

    #[test]
    fn configurations_are_never_sent_to_webhooks() {
        let mut c = config(good_hook());
        c["webhooks"][0]["rules"] = json!([{"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*"]}]);
        prepare_configuration(HookKind::Validating, &mut c);
        let hook = webhooks_of(HookKind::Validating, &c).remove(0);
        let mut a = attrs("validatingwebhookconfigurations", None, Operation::Delete);
        a.group = GROUP;
        a.namespaced = false;
        assert!(!hook.rules_match(&a));
        a.resource = "configmaps";
        a.group = "";
        assert!(hook.rules_match(&a));
    }

    fn user() -> UserInfo {
        UserInfo {
            username: "system:serviceaccount:shop:billing".into(),
            uid: "u1".into(),
            groups: vec!["system:serviceaccounts".into()],
            extra: BTreeMap::new(),
        }
    }

    #[test]
    fn review_carries_every_field_a_webhook_reads() {
        let u = user();
        let old = json!({"spec": {"a": 1}});
        let r = Review {
            group: "cert-manager.io",
            version: "v1",
            kind: "CertificateRequest",
            resource: "certificaterequests",
            subresource: Some("status"),
            namespace: Some("shop"),
            name: "cr-1",
            operation: Operation::Update,
            user: &u,
            old_object: Some(&old),
            dry_run: true,
            options: json!({"kind": "UpdateOptions", "apiVersion": "meta.k8s.io/v1"}),
        };
        let obj = json!({"spec": {"a": 2}});
        let v = review_body(&r, Some(&obj), "uid-1");
        let q = &v["request"];
        assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(q["uid"], "uid-1");
        assert_eq!(
            q["kind"],
            json!({"group": "cert-manager.io", "version": "v1", "kind": "CertificateRequest"})
        );
        assert_eq!(q["resource"]["resource"], "certificaterequests");
        assert_eq!(q["subResource"], "status");
        assert_eq!(q["requestKind"], q["kind"]);
        assert_eq!(q["namespace"], "shop");
        assert_eq!(q["name"], "cr-1");
        assert_eq!(q["operation"], "UPDATE");
        assert_eq!(
            q["userInfo"]["username"],
            "system:serviceaccount:shop:billing"
        );
        assert_eq!(q["userInfo"]["uid"], "u1");
        assert_eq!(q["object"], obj);
        assert_eq!(q["oldObject"], old);
        assert_eq!(q["dryRun"], true);
        assert_eq!(q["options"]["kind"], "UpdateOptions");
    }

    fn answer(resp: Value) -> Vec<u8> {
        serde_json::to_vec(
            &json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": resp}),
        )
        .unwrap()
    }

    #[test]
    fn answers_are_read_like_the_real_server() {
        let patch = base64::engine::general_purpose::STANDARD
            .encode(br#"[{"op":"replace","path":"/spec/username","value":"me"}]"#);
        let ok = interpret(
            "h.x.io",
            HookKind::Mutating,
            "u",
            &answer(json!({"uid": "u", "allowed": true, "patchType": "JSONPatch", "patch": patch})),
        )
        .unwrap();
        let Verdict::Allowed { patch: Some(p) } = ok else {
            panic!("{ok:?}")
        };
        let mut obj = json!({"spec": {"username": "forged"}});
        apply_patch(&mut obj, &p).unwrap();
        assert_eq!(obj["spec"]["username"], "me");

        // A validating webhook's patch is ignored.
        let v = interpret(
            "h.x.io",
            HookKind::Validating,
            "u",
            &answer(json!({"uid": "u", "allowed": true, "patchType": "JSONPatch", "patch": patch})),
        )
        .unwrap();
        assert!(matches!(v, Verdict::Allowed { patch: None }), "{v:?}");

        let denied = interpret(
            "h.x.io",
            HookKind::Validating,
            "u",
            &answer(json!({"uid": "u", "allowed": false, "status": {"message": "no forged names", "code": 403, "reason": "Forbidden"}})),
        )
        .unwrap();
        let Verdict::Denied(e) = denied else {
            panic!("{denied:?}")
        };
        assert_eq!(
            e.to_string(),
            r#"admission webhook "h.x.io" denied the request: no forged names"#
        );
        assert_eq!(e.code(), 403);
        assert_eq!(e.to_status()["reason"], "Forbidden");

        let bare = interpret(
            "h.x.io",
            HookKind::Validating,
            "u",
            &answer(json!({"uid": "u", "allowed": false, "status": {"code": 200}})),
        )
        .unwrap();
        let Verdict::Denied(e) = bare else {
            panic!("{bare:?}")
        };
        assert_eq!(e.code(), 400, "codes below 400 become 400");
        assert_eq!(
            e.to_string(),
            r#"admission webhook "h.x.io" denied the request without explanation"#
        );
        assert!(e.to_status().get("reason").is_none());

        for bad in [
            answer(json!({"uid": "other", "allowed": true})),
            b"{}".to_vec(),
            b"not json".to_vec(),
            answer(json!({"uid": "u", "allowed": true, "patchType": "Merge", "patch": patch})),
            answer(json!({"uid": "u", "allowed": true, "patchType": "JSONPatch", "patch": "%%%"})),
        ] {
            assert!(
                interpret("h.x.io", HookKind::Mutating, "u", &bad).is_err(),
                "{}",
                String::from_utf8_lossy(&bad)
            );
        }
    }

    #[test]
    fn a_patch_that_does_not_apply_leaves_the_object_alone() {
        let mut obj = json!({"spec": {"a": 1}});
        let before = obj.clone();
        let err = apply_patch(
            &mut obj,
            &json!([{"op": "test", "path": "/spec/a", "value": 2}, {"op": "remove", "path": "/spec"}]),
        );
        assert!(err.is_err());
        assert_eq!(obj, before);
        assert!(
            apply_patch(
                &mut obj,
                &json!([{"op": "replace", "path": "", "value": 3}])
            )
            .is_err()
        );
    }

    #[test]
    fn ca_bundles_must_hold_certificates() {
        assert!(client_config(None).is_err());
        assert!(client_config(Some("!!")).is_err());
        let junk = base64::engine::general_purpose::STANDARD.encode("hello");
        let e = client_config(Some(&junk)).unwrap_err();
        assert!(e.contains("CERTIFICATE"), "{e}");
    }
}
