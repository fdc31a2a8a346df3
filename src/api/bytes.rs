//! Byte fields that travel as base64 strings (Go `[]byte` in JSON).

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// PEM data that the API carries base64-encoded: `spec.request` of a
/// CertificateRequest and `status.certificate` / `status.ca`.
///
/// The value held here is the decoded PEM text as bytes, so callers never see
/// the base64 layer; serde adds and removes it. Standard padded base64 is what
/// Go's `encoding/json` writes, so a round trip reproduces the input exactly.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PemBytes(pub Vec<u8>);

impl PemBytes {
    /// The raw (already base64-decoded) bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The PEM text. `field` names the API field for the error message.
    pub fn as_pem_str(&self, field: &'static str) -> Result<&str, super::ApiError> {
        std::str::from_utf8(&self.0).map_err(|err| super::ApiError::PemNotUtf8 {
            field,
            valid_up_to: err.valid_up_to(),
        })
    }
}

impl From<Vec<u8>> for PemBytes {
    fn from(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }
}

impl From<String> for PemBytes {
    fn from(pem: String) -> Self {
        Self(pem.into_bytes())
    }
}

impl From<&str> for PemBytes {
    fn from(pem: &str) -> Self {
        Self(pem.as_bytes().to_vec())
    }
}

// Certificates and CSRs are public, but a multi-kilobyte dump in every Debug
// line of a status makes logs unreadable; the length is what helps debugging.
impl std::fmt::Debug for PemBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PemBytes({} bytes)", self.0.len())
    }
}

impl Serialize for PemBytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for PemBytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let encoded = Cow::<'de, str>::deserialize(deserializer)?;
        // Go's decoder skips line breaks inside base64; accept what it accepts.
        let compact: String = encoded
            .chars()
            .filter(|c| *c != '\n' && *c != '\r')
            .collect();
        STANDARD.decode(compact.as_bytes()).map(PemBytes).map_err(|err| {
            serde::de::Error::custom(format!(
                "expected standard base64 (with padding) of PEM data: {err}; encode the PEM with `base64 -w0`"
            ))
        })
    }
}

impl schemars::JsonSchema for PemBytes {
    fn schema_name() -> Cow<'static, str> {
        "PemBytes".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "format": "byte",
        })
    }

    fn inline_schema() -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_on_the_wire_pem_in_memory() {
        let pem = "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n";
        let bytes = PemBytes::from(pem);
        let wire = serde_json::to_value(&bytes).unwrap();
        assert_eq!(wire, serde_json::Value::String(STANDARD.encode(pem)));
        let back: PemBytes = serde_json::from_value(wire).unwrap();
        assert_eq!(back.as_pem_str("spec.request").unwrap(), pem);
    }

    #[test]
    fn wrapped_base64_is_accepted_and_bad_base64_names_the_fix() {
        let back: PemBytes = serde_json::from_str("\"aGVs\\nbG8=\"").unwrap();
        assert_eq!(back.as_bytes(), b"hello");
        let err = serde_json::from_str::<PemBytes>("\"not base64!\"").unwrap_err();
        assert!(err.to_string().contains("base64"), "{err}");
    }

    #[test]
    fn non_utf8_is_reported_with_the_field() {
        let err = PemBytes(vec![b'a', 0xff])
            .as_pem_str("status.ca")
            .unwrap_err();
        assert!(err.to_string().contains("status.ca"), "{err}");
    }

    #[test]
    fn debug_prints_length_not_content() {
        assert_eq!(format!("{:?}", PemBytes::from("abc")), "PemBytes(3 bytes)");
    }
}
