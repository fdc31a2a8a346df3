//! Errors the sandbox answers with, rendered as Kubernetes `Status` objects.
//!
//! Reasons, codes and messages follow the real kube-apiserver closely, because
//! clients (kube's `ErrorResponse`, kubectl) branch on `reason` and `code`, and
//! people compare the messages with what they saw on a real cluster.

use std::fmt;

use serde_json::{Value, json};

/// One invalid field, as the real server lists it under `details.causes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// JSON path of the field, e.g. `metadata.labels`.
    pub field: String,
    pub kind: FieldErrorKind,
    /// The offending value, quoted in the message when present.
    pub value: Option<String>,
    /// Why it is wrong and what would be accepted.
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldErrorKind {
    Invalid,
    Required,
    Forbidden,
    TooLong,
    Unsupported,
}

impl FieldErrorKind {
    fn reason(self) -> &'static str {
        match self {
            FieldErrorKind::Invalid => "FieldValueInvalid",
            FieldErrorKind::Required => "FieldValueRequired",
            FieldErrorKind::Forbidden => "FieldValueForbidden",
            FieldErrorKind::TooLong => "FieldValueTooLong",
            FieldErrorKind::Unsupported => "FieldValueNotSupported",
        }
    }
}

impl FieldError {
    pub fn invalid(
        field: impl Into<String>,
        value: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        FieldError {
            field: field.into(),
            kind: FieldErrorKind::Invalid,
            value: Some(value.into()),
            detail: detail.into(),
        }
    }
    pub fn required(field: impl Into<String>, detail: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            kind: FieldErrorKind::Required,
            value: None,
            detail: detail.into(),
        }
    }
    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            kind: FieldErrorKind::Forbidden,
            value: None,
            detail: detail.into(),
        }
    }
    pub fn too_long(field: impl Into<String>, max: usize) -> Self {
        FieldError {
            field: field.into(),
            kind: FieldErrorKind::TooLong,
            value: None,
            detail: format!("must have at most {max} bytes"),
        }
    }
    pub fn unsupported(
        field: impl Into<String>,
        value: impl Into<String>,
        allowed: &[String],
    ) -> Self {
        let quoted: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
        FieldError {
            field: field.into(),
            kind: FieldErrorKind::Unsupported,
            value: Some(value.into()),
            detail: format!("supported values: {}", quoted.join(", ")),
        }
    }

    /// The message without the field path, as in `details.causes[].message`.
    fn cause_message(&self) -> String {
        let head = match self.kind {
            FieldErrorKind::Invalid => "Invalid value",
            FieldErrorKind::Required => "Required value",
            FieldErrorKind::Forbidden => "Forbidden",
            FieldErrorKind::TooLong => "Too long",
            FieldErrorKind::Unsupported => "Unsupported value",
        };
        match (&self.value, self.detail.is_empty()) {
            (Some(v), false) => format!("{head}: {v:?}: {}", self.detail),
            (Some(v), true) => format!("{head}: {v:?}"),
            (None, false) => format!("{head}: {}", self.detail),
            (None, true) => head.to_string(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.cause_message())
    }
}

/// Names the resource in messages: `secrets` or `certificaterequests.cert-manager.io`.
fn qualified(group: &str, resource: &str) -> String {
    if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    }
}

/// Every failure the sandbox reports to a client.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("{} {name:?} not found", qualified(group, resource))]
    NotFound {
        group: String,
        resource: String,
        name: String,
    },
    #[error("{} {name:?} already exists", qualified(group, resource))]
    AlreadyExists {
        group: String,
        resource: String,
        name: String,
    },
    #[error(
        "Operation cannot be fulfilled on {} {name:?}: the object has been modified; please apply your changes to the latest version and try again",
        qualified(group, resource)
    )]
    Conflict {
        group: String,
        resource: String,
        name: String,
    },
    #[error("{kind} {name:?} is invalid: {}", join_causes(causes))]
    Invalid {
        group: String,
        kind: String,
        name: String,
        causes: Vec<FieldError>,
    },
    /// A delete precondition (uid or resourceVersion) that does not hold.
    #[error("{message}")]
    PreconditionFailed {
        group: String,
        resource: String,
        name: String,
        message: String,
    },
    #[error("{0}")]
    BadRequest(String),
    #[error("{message}")]
    Forbidden {
        group: String,
        resource: String,
        name: String,
        message: String,
    },
    /// A resourceVersion or continue token older than the retained window.
    #[error("{0}")]
    Expired(String),
    #[error("the server could not find the requested resource")]
    NoRoute,
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Internal(String),
    /// A missing, unknown or expired bearer token.
    #[error("Unauthorized")]
    Unauthorized,
    /// An admission webhook's refusal, with the code and reason it chose.
    #[error("{message}")]
    Rejected {
        code: u16,
        reason: String,
        message: String,
    },
}

fn join_causes(causes: &[FieldError]) -> String {
    match causes {
        [one] => one.to_string(),
        many => format!(
            "[{}]",
            many.iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

impl ApiError {
    pub fn code(&self) -> u16 {
        match self {
            ApiError::NotFound { .. } | ApiError::NoRoute => 404,
            ApiError::AlreadyExists { .. }
            | ApiError::Conflict { .. }
            | ApiError::PreconditionFailed { .. } => 409,
            ApiError::Invalid { .. } => 422,
            ApiError::BadRequest(_) => 400,
            ApiError::Forbidden { .. } => 403,
            ApiError::Expired(_) => 410,
            ApiError::MethodNotAllowed(_) => 405,
            ApiError::UnsupportedMediaType(_) => 415,
            ApiError::Internal(_) => 500,
            ApiError::Unauthorized => 401,
            ApiError::Rejected { code, .. } => *code,
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            ApiError::NotFound { .. } | ApiError::NoRoute => "NotFound",
            ApiError::AlreadyExists { .. } => "AlreadyExists",
            ApiError::Conflict { .. } | ApiError::PreconditionFailed { .. } => "Conflict",
            ApiError::Invalid { .. } => "Invalid",
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::Forbidden { .. } => "Forbidden",
            ApiError::Expired(_) => "Expired",
            ApiError::MethodNotAllowed(_) => "MethodNotAllowed",
            ApiError::UnsupportedMediaType(_) => "UnsupportedMediaType",
            ApiError::Internal(_) => "InternalError",
            ApiError::Unauthorized => "Unauthorized",
            ApiError::Rejected { reason, .. } => reason,
        }
    }

    /// The `Status` object, as the real server writes it.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.code(),
        });
        let details = match self {
            ApiError::NotFound {
                group,
                resource,
                name,
            }
            | ApiError::AlreadyExists {
                group,
                resource,
                name,
            }
            | ApiError::Conflict {
                group,
                resource,
                name,
            }
            | ApiError::Forbidden {
                group,
                resource,
                name,
                ..
            }
            | ApiError::PreconditionFailed {
                group,
                resource,
                name,
                ..
            } => Some(details(group, resource, name)),
            ApiError::Invalid {
                group,
                kind,
                name,
                causes,
            } => {
                let mut d = details(group, kind, name);
                d["causes"] = causes
                    .iter()
                    .map(|c| json!({"reason": c.kind.reason(), "message": c.cause_message(), "field": c.field}))
                    .collect();
                Some(d)
            }
            _ => None,
        };
        if let Some(d) = details {
            status["details"] = d;
        }
        if self.reason().is_empty()
            && let Some(m) = status.as_object_mut()
        {
            // A webhook may refuse without a reason; the real server then omits it.
            m.remove("reason");
        }
        status
    }
}

fn details(group: &str, kind: &str, name: &str) -> Value {
    let mut d = json!({ "kind": kind });
    if !name.is_empty() {
        d["name"] = json!(name);
    }
    if !group.is_empty() {
        d["group"] = json!(group);
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_names_group_qualified_resource() {
        let e = ApiError::NotFound {
            group: "cert-manager.io".into(),
            resource: "certificaterequests".into(),
            name: "x".into(),
        };
        assert_eq!(
            e.to_string(),
            r#"certificaterequests.cert-manager.io "x" not found"#
        );
        let s = e.to_status();
        assert_eq!(s["code"], 404);
        assert_eq!(s["reason"], "NotFound");
        assert_eq!(s["details"]["group"], "cert-manager.io");
        assert_eq!(s["details"]["kind"], "certificaterequests");
    }

    #[test]
    fn core_resources_are_not_qualified() {
        let e = ApiError::AlreadyExists {
            group: String::new(),
            resource: "secrets".into(),
            name: "a".into(),
        };
        assert_eq!(e.to_string(), r#"secrets "a" already exists"#);
        assert!(e.to_status()["details"].get("group").is_none());
    }

    #[test]
    fn conflict_message_matches_real_server() {
        let e = ApiError::Conflict {
            group: String::new(),
            resource: "configmaps".into(),
            name: "c".into(),
        };
        assert_eq!(
            e.to_string(),
            r#"Operation cannot be fulfilled on configmaps "c": the object has been modified; please apply your changes to the latest version and try again"#
        );
        assert_eq!(e.code(), 409);
    }

    #[test]
    fn invalid_lists_every_cause() {
        let one = ApiError::Invalid {
            group: String::new(),
            kind: "Secret".into(),
            name: "Bad".into(),
            causes: vec![FieldError::invalid(
                "metadata.name",
                "Bad",
                "must be lower case",
            )],
        };
        assert_eq!(
            one.to_string(),
            r#"Secret "Bad" is invalid: metadata.name: Invalid value: "Bad": must be lower case"#
        );
        let two = ApiError::Invalid {
            group: String::new(),
            kind: "Secret".into(),
            name: "b".into(),
            causes: vec![
                FieldError::required("metadata.name", "name or generateName is required"),
                FieldError::too_long("metadata.annotations", 262144),
            ],
        };
        let msg = two.to_string();
        assert!(
            msg.starts_with(r#"Secret "b" is invalid: [metadata.name: Required value"#),
            "{msg}"
        );
        let s = two.to_status();
        assert_eq!(s["code"], 422);
        assert_eq!(s["details"]["causes"].as_array().unwrap().len(), 2);
        assert_eq!(s["details"]["causes"][1]["reason"], "FieldValueTooLong");
    }
}
