//! Status conditions of requests, certificates and issuers, with the type and
//! reason names cert-manager uses.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Condition types.
pub mod types {
    pub const READY: &str = "Ready";
    /// Certificate only: an issuance is in progress.
    pub const ISSUING: &str = "Issuing";
    /// CertificateRequest only; set at most once, only to True.
    pub const APPROVED: &str = "Approved";
    /// CertificateRequest only; set at most once, only to True.
    pub const DENIED: &str = "Denied";
    /// CertificateRequest only; True is terminal.
    pub const INVALID_REQUEST: &str = "InvalidRequest";
}

/// Condition reasons.
pub mod reasons {
    /// Request Ready=False: still in progress.
    pub const PENDING: &str = "Pending";
    /// Request Ready=False: terminal, `status.failureTime` is set.
    pub const FAILED: &str = "Failed";
    /// Request Ready=True.
    pub const ISSUED: &str = "Issued";
    /// Request Ready=False after a denial: terminal.
    pub const DENIED: &str = "Denied";
    /// Request Ready=False (Pending) while the referenced issuer is missing.
    pub const ISSUER_NOT_FOUND: &str = "IssuerNotFound";
    /// Request Ready=False (Pending) while the referenced issuer is not Ready.
    pub const ISSUER_NOT_READY: &str = "IssuerNotReady";
    /// CA issuer Ready=True.
    pub const KEY_PAIR_VERIFIED: &str = "KeyPairVerified";
    /// CA issuer Ready=False: the CA Secret could not be read.
    pub const ERR_GET_KEY_PAIR: &str = "ErrGetKeyPair";
    /// CA issuer Ready=False: not a CA, or certificate and key do not match.
    pub const ERR_INVALID_KEY_PAIR: &str = "ErrInvalidKeyPair";
    /// SelfSigned issuer Ready=True.
    pub const IS_READY: &str = "IsReady";
    /// The reason cert-manager's own approver writes on Approved=True.
    pub const CERT_MANAGER_APPROVER: &str = "cert-manager.io";
}

/// Messages whose exact text other tools match on.
pub mod messages {
    pub const ISSUED: &str = "Certificate fetched from issuer successfully";
    pub const APPROVED_BY_CERT_MANAGER: &str =
        "Certificate request has been approved by cert-manager.io";
    pub const SIGNING_CA_VERIFIED: &str = "Signing CA verified";
}

/// `True`, `False` or `Unknown`, as in every Kubernetes condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    pub fn from_bool(value: bool) -> Self {
        if value { Self::True } else { Self::False }
    }

    /// The word written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

impl std::fmt::Display for ConditionStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`find`] and [`set`] need from any of the three condition kinds.
pub trait Condition {
    fn condition_type(&self) -> &str;
    fn condition_status(&self) -> ConditionStatus;
    fn reason(&self) -> Option<&str>;
    fn last_transition_time(&self) -> Option<&Time>;
    fn set_last_transition_time(&mut self, time: Option<Time>);
}

/// The condition of the given type, if present.
pub fn find<'a, C: Condition>(conditions: &'a [C], condition_type: &str) -> Option<&'a C> {
    conditions
        .iter()
        .find(|c| c.condition_type() == condition_type)
}

/// Whether a condition of this type is present with this status.
pub fn has<C: Condition>(conditions: &[C], condition_type: &str, status: ConditionStatus) -> bool {
    find(conditions, condition_type).is_some_and(|c| c.condition_status() == status)
}

/// Inserts or replaces the condition of `condition.type`.
///
/// `lastTransitionTime` records when the *status* last changed, so it is kept
/// from the existing condition when the status stays the same (even if the
/// reason or message change) and set to `now` otherwise. Replacing in place
/// keeps the order of the list, which avoids needless diffs on update.
pub fn set<C: Condition>(conditions: &mut Vec<C>, mut condition: C, now: Time) {
    match conditions
        .iter_mut()
        .find(|c| c.condition_type() == condition.condition_type())
    {
        Some(existing) => {
            let time = if existing.condition_status() == condition.condition_status() {
                existing.last_transition_time().cloned().or(Some(now))
            } else {
                Some(now)
            };
            condition.set_last_transition_time(time);
            *existing = condition;
        }
        None => {
            condition.set_last_transition_time(Some(now));
            conditions.push(condition);
        }
    }
}

/// A condition on a CertificateRequest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateRequestCondition {
    /// Type of the condition: `Ready`, `InvalidRequest`, `Approved` or `Denied`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Status of the condition, one of `True`, `False`, `Unknown`.
    pub status: ConditionStatus,
    /// Machine-readable CamelCase reason for the last transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable details about the last transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the status of the condition last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
}

/// A condition on a Certificate (`Ready`, `Issuing`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateCondition {
    /// Type of the condition: `Ready` or `Issuing`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Status of the condition, one of `True`, `False`, `Unknown`.
    pub status: ConditionStatus,
    /// Machine-readable CamelCase reason for the last transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable details about the last transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the status of the condition last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    /// The `metadata.generation` the condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A condition on an Issuer or ClusterIssuer (`Ready`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerCondition {
    /// Type of the condition: `Ready`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Status of the condition, one of `True`, `False`, `Unknown`.
    pub status: ConditionStatus,
    /// Machine-readable CamelCase reason for the last transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable details about the last transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the status of the condition last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    /// The `metadata.generation` the condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

macro_rules! impl_condition {
    ($ty:ty) => {
        impl Condition for $ty {
            fn condition_type(&self) -> &str {
                &self.type_
            }
            fn condition_status(&self) -> ConditionStatus {
                self.status
            }
            fn reason(&self) -> Option<&str> {
                self.reason.as_deref()
            }
            fn last_transition_time(&self) -> Option<&Time> {
                self.last_transition_time.as_ref()
            }
            fn set_last_transition_time(&mut self, time: Option<Time>) {
                self.last_transition_time = time;
            }
        }
    };
}

impl_condition!(CertificateRequestCondition);
impl_condition!(CertificateCondition);
impl_condition!(IssuerCondition);

impl CertificateRequestCondition {
    /// A condition without a transition time; [`set`] fills it in.
    pub fn new(
        type_: &str,
        status: ConditionStatus,
        reason: &str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_: type_.to_owned(),
            status,
            reason: Some(reason.to_owned()),
            message: Some(message.into()),
            last_transition_time: None,
        }
    }
}

impl CertificateCondition {
    /// A condition without a transition time; [`set`] fills it in.
    pub fn new(
        type_: &str,
        status: ConditionStatus,
        reason: &str,
        message: impl Into<String>,
        observed_generation: Option<i64>,
    ) -> Self {
        Self {
            type_: type_.to_owned(),
            status,
            reason: Some(reason.to_owned()),
            message: Some(message.into()),
            last_transition_time: None,
            observed_generation,
        }
    }
}

impl IssuerCondition {
    /// A condition without a transition time; [`set`] fills it in.
    pub fn new(
        type_: &str,
        status: ConditionStatus,
        reason: &str,
        message: impl Into<String>,
        observed_generation: Option<i64>,
    ) -> Self {
        Self {
            type_: type_.to_owned(),
            status,
            reason: Some(reason.to_owned()),
            message: Some(message.into()),
            last_transition_time: None,
            observed_generation,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Time {
        Time(jiff::Timestamp::from_second(seconds).unwrap())
    }

    #[test]
    fn set_appends_with_now() {
        let mut conditions = Vec::new();
        set(
            &mut conditions,
            CertificateRequestCondition::new(
                types::READY,
                ConditionStatus::False,
                reasons::PENDING,
                "waiting",
            ),
            at(100),
        );
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].last_transition_time, Some(at(100)));
    }

    #[test]
    fn set_keeps_transition_time_when_status_unchanged() {
        let mut conditions = vec![IssuerCondition {
            last_transition_time: Some(at(100)),
            ..IssuerCondition::new(
                types::READY,
                ConditionStatus::False,
                reasons::ERR_GET_KEY_PAIR,
                "missing",
                Some(1),
            )
        }];
        set(
            &mut conditions,
            IssuerCondition::new(
                types::READY,
                ConditionStatus::False,
                reasons::ERR_INVALID_KEY_PAIR,
                "not a CA",
                Some(2),
            ),
            at(200),
        );
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].last_transition_time, Some(at(100)));
        assert_eq!(conditions[0].reason(), Some(reasons::ERR_INVALID_KEY_PAIR));
        assert_eq!(conditions[0].observed_generation, Some(2));
    }

    #[test]
    fn set_moves_transition_time_when_status_changes() {
        let mut conditions = vec![
            CertificateCondition {
                last_transition_time: Some(at(100)),
                ..CertificateCondition::new(
                    types::ISSUING,
                    ConditionStatus::True,
                    "DoesNotExist",
                    "",
                    None,
                )
            },
            CertificateCondition {
                last_transition_time: Some(at(100)),
                ..CertificateCondition::new(
                    types::READY,
                    ConditionStatus::False,
                    "DoesNotExist",
                    "",
                    None,
                )
            },
        ];
        set(
            &mut conditions,
            CertificateCondition::new(
                types::READY,
                ConditionStatus::True,
                "Ready",
                "up to date",
                Some(3),
            ),
            at(300),
        );
        // Order is kept and the other condition is untouched.
        assert_eq!(conditions[0].type_, types::ISSUING);
        assert_eq!(conditions[0].last_transition_time, Some(at(100)));
        assert_eq!(conditions[1].type_, types::READY);
        assert_eq!(conditions[1].status, ConditionStatus::True);
        assert_eq!(conditions[1].last_transition_time, Some(at(300)));
    }

    #[test]
    fn set_fills_a_missing_time_even_without_a_status_change() {
        let mut conditions = vec![CertificateRequestCondition::new(
            types::READY,
            ConditionStatus::False,
            reasons::PENDING,
            "",
        )];
        set(
            &mut conditions,
            CertificateRequestCondition::new(
                types::READY,
                ConditionStatus::False,
                reasons::PENDING,
                "still",
            ),
            at(50),
        );
        assert_eq!(conditions[0].last_transition_time, Some(at(50)));
    }

    #[test]
    fn find_and_has() {
        let conditions = vec![
            CertificateRequestCondition::new(
                types::APPROVED,
                ConditionStatus::True,
                reasons::CERT_MANAGER_APPROVER,
                "",
            ),
            CertificateRequestCondition::new(
                types::READY,
                ConditionStatus::False,
                reasons::PENDING,
                "",
            ),
        ];
        assert_eq!(
            find(&conditions, types::READY).and_then(|c| c.reason()),
            Some(reasons::PENDING)
        );
        assert!(find(&conditions, types::DENIED).is_none());
        assert!(has(&conditions, types::APPROVED, ConditionStatus::True));
        assert!(!has(&conditions, types::READY, ConditionStatus::True));
    }

    #[test]
    fn status_serializes_as_kubernetes_words() {
        assert_eq!(
            serde_json::to_string(&ConditionStatus::Unknown).unwrap(),
            "\"Unknown\""
        );
        assert!(serde_json::from_str::<ConditionStatus>("\"true\"").is_err());
        assert_eq!(ConditionStatus::from_bool(false), ConditionStatus::False);
        for status in [
            ConditionStatus::True,
            ConditionStatus::False,
            ConditionStatus::Unknown,
        ] {
            assert_eq!(serde_json::to_value(status).unwrap(), status.to_string());
        }
    }
}
