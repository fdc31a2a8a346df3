//! Errors from interpreting cert-manager.io/v1 objects.

/// Something in a cert-manager.io/v1 object that cert-csi cannot use as is.
/// Each message names the field, what was wrong and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error(
        "{field} is not UTF-8 PEM text (invalid byte after {valid_up_to} bytes); it must be the base64 of a PEM document"
    )]
    PemNotUtf8 {
        field: &'static str,
        valid_up_to: usize,
    },

    #[error(
        "spec of {kind} sets no issuer type; set exactly one of selfSigned, ca, acme, vault or venafi"
    )]
    NoIssuerType { kind: &'static str },

    #[error(
        "spec of {kind} sets several issuer types ({}); keep exactly one of them",
        found.join(", ")
    )]
    MultipleIssuerTypes {
        kind: &'static str,
        found: Vec<&'static str>,
    },

    #[error(
        "{field} is {value:?}, which is not one of {allowed}; use one of those values or leave the field unset"
    )]
    UnsupportedValue {
        field: &'static str,
        value: String,
        allowed: &'static str,
    },
}
