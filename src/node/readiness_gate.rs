//! csi-driver's `--pod-readiness-gate`: conditions on the pod that must all
//! hold before the first CertificateRequest of a volume is made, so a
//! certificate can wait for what arrives after the sandbox (an IP address
//! from the CNI, a condition or annotation another controller sets). With
//! `--continue-on-not-ready` the volume is mounted empty at once and the
//! certificate arrives when the gates pass.
//!
//! The specs and their meaning are csi-driver's (v0.15):
//! - `pod-ip:<any|ipv4|ipv6>`: `status.podIPs` holds an address of that
//!   family;
//! - `pod-condition:<Type>[=<Status>]`: the condition has that status
//!   (`True` when not given; case does not matter);
//! - `pod-annotation:<key>`: the annotation is present and not empty.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "--pod-readiness-gate {spec:?}: {reason}; use pod-ip:<any|ipv4|ipv6>, pod-condition:<Type>[=<Status>] or pod-annotation:<key>"
)]
pub struct GateError {
    pub spec: String,
    pub reason: String,
}

/// One gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    PodIp(IpFamily),
    Condition { type_: String, status: String },
    Annotation(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpFamily {
    Any,
    V4,
    V6,
}

impl Gate {
    pub fn parse(spec: &str) -> Result<Gate, GateError> {
        let fail = |reason: &str| GateError {
            spec: spec.chars().take(80).collect(),
            reason: reason.to_owned(),
        };
        let Some((kind, value)) = spec.split_once(':').filter(|(_, v)| !v.is_empty()) else {
            return Err(fail("expected <type>:<value>"));
        };
        match kind {
            "pod-ip" => Ok(Gate::PodIp(match value {
                "any" => IpFamily::Any,
                "ipv4" => IpFamily::V4,
                "ipv6" => IpFamily::V6,
                _ => return Err(fail("pod-ip takes any, ipv4 or ipv6")),
            })),
            "pod-condition" => {
                let (type_, status) = value.split_once('=').unwrap_or((value, "True"));
                if type_.is_empty() {
                    return Err(fail("the condition type is empty"));
                }
                let status = match status.to_ascii_lowercase().as_str() {
                    "true" => "True",
                    "false" => "False",
                    "unknown" => "Unknown",
                    _ => return Err(fail("the status must be True, False or Unknown")),
                };
                Ok(Gate::Condition {
                    type_: type_.to_owned(),
                    status: status.to_owned(),
                })
            }
            "pod-annotation" => Ok(Gate::Annotation(value.to_owned())),
            _ => Err(fail(
                "unknown type; the types are pod-ip, pod-condition and pod-annotation",
            )),
        }
    }

    /// `None` when `pod` passes; else why not.
    pub fn check(&self, pod: &Pod) -> Option<String> {
        let status = pod.status.as_ref();
        match self {
            Gate::PodIp(family) => {
                let found = status
                    .and_then(|s| s.pod_ips.as_ref())
                    .into_iter()
                    .flatten()
                    .filter_map(|ip| ip.ip.parse::<IpAddr>().ok())
                    .any(|ip| match family {
                        IpFamily::Any => true,
                        IpFamily::V4 => ip.is_ipv4(),
                        IpFamily::V6 => ip.is_ipv6(),
                    });
                let name = match family {
                    IpFamily::Any => "any",
                    IpFamily::V4 => "ipv4",
                    IpFamily::V6 => "ipv6",
                };
                (!found).then(|| format!("pod has no {name} address yet"))
            }
            Gate::Condition {
                type_,
                status: want,
            } => {
                let found = status
                    .and_then(|s| s.conditions.as_ref())
                    .into_iter()
                    .flatten()
                    .find(|c| &c.type_ == type_);
                match found {
                    Some(c) if &c.status == want => None,
                    Some(c) => Some(format!(
                        "pod condition {type_} is {:?}, want {want:?}",
                        c.status
                    )),
                    None => Some(format!("pod condition {type_:?} not yet present")),
                }
            }
            Gate::Annotation(key) => {
                let present = pod
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(key))
                    .is_some_and(|v| !v.is_empty());
                (!present).then(|| {
                    format!("pod does not yet have annotation {key:?} with a non-empty value")
                })
            }
        }
    }
}

/// Every gate that `pod` fails, joined; `None` when all pass.
pub fn unmet(gates: &[Gate], pod: &Pod) -> Option<String> {
    let reasons: Vec<String> = gates.iter().filter_map(|g| g.check(pod)).collect();
    (!reasons.is_empty()).then(|| reasons.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn specs_parse_as_csi_driver_reads_them() {
        assert_eq!(
            Gate::parse("pod-ip:ipv6").unwrap(),
            Gate::PodIp(IpFamily::V6)
        );
        assert_eq!(
            Gate::parse("pod-condition:NetworkAttached").unwrap(),
            Gate::Condition {
                type_: "NetworkAttached".into(),
                status: "True".into()
            }
        );
        assert_eq!(
            Gate::parse("pod-condition:Ready=false").unwrap(),
            Gate::Condition {
                type_: "Ready".into(),
                status: "False".into()
            }
        );
        assert_eq!(
            Gate::parse("pod-annotation:k8s.v1.cni.cncf.io/networks-status").unwrap(),
            Gate::Annotation("k8s.v1.cni.cncf.io/networks-status".into())
        );
        for bad in [
            "pod-ip:ipv5",
            "pod-ip:",
            "pod-condition:=True",
            "pod-condition:X=maybe",
            "node-ip:any",
            "pod-annotation",
        ] {
            let err = Gate::parse(bad).unwrap_err().to_string();
            assert!(err.starts_with("--pod-readiness-gate"), "{bad}: {err}");
        }
    }

    #[test]
    fn gates_pass_only_when_the_pod_has_what_they_ask() {
        let gates = [
            Gate::parse("pod-ip:ipv4").unwrap(),
            Gate::parse("pod-condition:NetworkAttached").unwrap(),
            Gate::parse("pod-annotation:ready").unwrap(),
        ];
        let bare = pod(json!({"metadata": {"name": "p"}}));
        let why = unmet(&gates, &bare).unwrap();
        assert!(
            why.contains("no ipv4 address")
                && why.contains("not yet present")
                && why.contains("\"ready\""),
            "{why}"
        );
        let v6_only = pod(json!({
            "metadata": {"name": "p", "annotations": {"ready": "yes"}},
            "status": {"podIPs": [{"ip": "fd00::1"}], "conditions": [{"type": "NetworkAttached", "status": "False"}]}
        }));
        let why = unmet(&gates, &v6_only).unwrap();
        assert!(
            why.contains("no ipv4") && why.contains("is \"False\", want \"True\""),
            "{why}"
        );
        let ready = pod(json!({
            "metadata": {"name": "p", "annotations": {"ready": "yes"}},
            "status": {"podIPs": [{"ip": "fd00::1"}, {"ip": "10.0.0.7"}], "conditions": [{"type": "NetworkAttached", "status": "True"}]}
        }));
        assert_eq!(unmet(&gates, &ready), None);
        assert_eq!(unmet(&[], &bare), None);
    }
}
