//! Reading the Kubernetes protobuf encoding for the few built-in kinds that
//! kubectl's typed clients send that way (`kubectl create namespace`,
//! `create secret`, `create configmap`, `create serviceaccount`,
//! `create token`).
//! kubectl accepts JSON answers, so only decoding is needed.
//!
//! The wire form is the magic `k8s\0` followed by a `runtime.Unknown`
//! (1: typeMeta {1: apiVersion, 2: kind}, 2: raw object bytes). The object
//! messages are described below by field number, as in Kubernetes'
//! `generated.proto` files, and turned into the same JSON a JSON client sends.

use base64::Engine as _;
use serde_json::{Map, Value, json};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    #[error("the protobuf body does not start with the Kubernetes magic bytes k8s\\0")]
    NoMagic,
    #[error("the protobuf body is truncated or malformed at byte {0}")]
    Malformed(usize),
    #[error("kind {0:?} cannot be sent as protobuf to the sandbox; send application/json")]
    UnsupportedKind(String),
}

/// How one field turns into JSON.
#[derive(Clone, Copy)]
enum F {
    Str,
    /// `bytes`, shown base64 in JSON.
    Bytes,
    Int,
    Bool,
    /// `metav1.Time` {1: seconds, 2: nanos} as RFC 3339.
    Time,
    Msg(&'static [(u32, &'static str, F, bool)]),
    MapStr,
    MapBytes,
}

/// (field number, JSON name, type, repeated)
type Schema = &'static [(u32, &'static str, F, bool)];

const OWNER_REF: Schema = &[
    (1, "kind", F::Str, false),
    (3, "name", F::Str, false),
    (4, "uid", F::Str, false),
    (5, "apiVersion", F::Str, false),
    (6, "controller", F::Bool, false),
    (7, "blockOwnerDeletion", F::Bool, false),
];

const OBJECT_META: Schema = &[
    (1, "name", F::Str, false),
    (2, "generateName", F::Str, false),
    (3, "namespace", F::Str, false),
    (5, "uid", F::Str, false),
    (6, "resourceVersion", F::Str, false),
    (7, "generation", F::Int, false),
    (8, "creationTimestamp", F::Time, false),
    (9, "deletionTimestamp", F::Time, false),
    (10, "deletionGracePeriodSeconds", F::Int, false),
    (11, "labels", F::MapStr, false),
    (12, "annotations", F::MapStr, false),
    (13, "ownerReferences", F::Msg(OWNER_REF), true),
    (14, "finalizers", F::Str, true),
];

const OBJECT_REF: Schema = &[
    (1, "kind", F::Str, false),
    (2, "namespace", F::Str, false),
    (3, "name", F::Str, false),
    (4, "uid", F::Str, false),
    (5, "apiVersion", F::Str, false),
    (6, "resourceVersion", F::Str, false),
    (7, "fieldPath", F::Str, false),
];

const LOCAL_REF: Schema = &[(1, "name", F::Str, false)];

const NAMESPACE: Schema = &[
    (1, "metadata", F::Msg(OBJECT_META), false),
    (2, "spec", F::Msg(&[(1, "finalizers", F::Str, true)]), false),
];

const SECRET: Schema = &[
    (1, "metadata", F::Msg(OBJECT_META), false),
    (2, "data", F::MapBytes, false),
    (3, "type", F::Str, false),
    (4, "stringData", F::MapStr, false),
    (5, "immutable", F::Bool, false),
];

const CONFIG_MAP: Schema = &[
    (1, "metadata", F::Msg(OBJECT_META), false),
    (2, "data", F::MapStr, false),
    (3, "binaryData", F::MapBytes, false),
    (4, "immutable", F::Bool, false),
];

const SERVICE_ACCOUNT: Schema = &[
    (1, "metadata", F::Msg(OBJECT_META), false),
    (2, "secrets", F::Msg(OBJECT_REF), true),
    (3, "imagePullSecrets", F::Msg(LOCAL_REF), true),
    (4, "automountServiceAccountToken", F::Bool, false),
];

const BOUND_OBJECT_REF: Schema = &[
    (1, "kind", F::Str, false),
    (2, "apiVersion", F::Str, false),
    (3, "name", F::Str, false),
    (4, "uid", F::Str, false),
];

const TOKEN_REQUEST_SPEC: Schema = &[
    (1, "audiences", F::Str, true),
    (3, "boundObjectRef", F::Msg(BOUND_OBJECT_REF), false),
    (4, "expirationSeconds", F::Int, false),
];

/// `kubectl create token` sends this one as protobuf.
const TOKEN_REQUEST: Schema = &[
    (1, "metadata", F::Msg(OBJECT_META), false),
    (2, "spec", F::Msg(TOKEN_REQUEST_SPEC), false),
];

/// One raw field: number and either a varint or the bytes it carries.
enum Raw<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, ProtoError> {
        let mut out = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or(ProtoError::Malformed(self.base + self.pos))?;
            self.pos += 1;
            out |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(out);
            }
        }
        Err(ProtoError::Malformed(self.base + self.pos))
    }

    fn next(&mut self) -> Option<Result<(u32, Raw<'a>), ProtoError>> {
        if self.pos >= self.buf.len() {
            return None;
        }
        Some(self.field())
    }

    fn field(&mut self) -> Result<(u32, Raw<'a>), ProtoError> {
        let key = self.varint()?;
        let number = (key >> 3) as u32;
        let raw = match key & 7 {
            0 => Raw::Varint(self.varint()?),
            1 => {
                self.skip(8)?;
                Raw::Fixed
            }
            2 => {
                let len = self.varint()? as usize;
                let start = self.pos;
                self.skip(len)?;
                Raw::Bytes(&self.buf[start..start + len])
            }
            5 => {
                self.skip(4)?;
                Raw::Fixed
            }
            _ => return Err(ProtoError::Malformed(self.base + self.pos)),
        };
        Ok((number, raw))
    }

    fn skip(&mut self, n: usize) -> Result<(), ProtoError> {
        if self.pos + n > self.buf.len() {
            return Err(ProtoError::Malformed(self.base + self.pos));
        }
        self.pos += n;
        Ok(())
    }
}

fn fields(buf: &[u8]) -> Result<Vec<(u32, Raw<'_>)>, ProtoError> {
    let mut r = Reader {
        buf,
        pos: 0,
        base: 0,
    };
    let mut out = Vec::new();
    while let Some(f) = r.next() {
        out.push(f?);
    }
    Ok(out)
}

fn as_str(raw: &Raw<'_>) -> Result<String, ProtoError> {
    match raw {
        Raw::Bytes(b) => String::from_utf8(b.to_vec()).map_err(|_| ProtoError::Malformed(0)),
        _ => Err(ProtoError::Malformed(0)),
    }
}

fn convert(f: F, raw: &Raw<'_>) -> Result<Value, ProtoError> {
    Ok(match (f, raw) {
        (F::Str, _) => json!(as_str(raw)?),
        (F::Bytes, Raw::Bytes(b)) => json!(base64::engine::general_purpose::STANDARD.encode(b)),
        (F::Int, Raw::Varint(v)) => json!(*v as i64),
        (F::Bool, Raw::Varint(v)) => json!(*v != 0),
        (F::Time, Raw::Bytes(b)) => {
            let mut secs = 0i64;
            // Go's zero time is year 1; anything before 1970 counts as unset.
            for (n, r) in fields(b)? {
                if let (1, Raw::Varint(v)) = (n, r) {
                    secs = v as i64;
                }
            }
            let ts =
                jiff::Timestamp::from_second(secs.max(0)).map_err(|_| ProtoError::Malformed(0))?;
            json!(ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        }
        (F::Msg(schema), Raw::Bytes(b)) => message(b, schema)?,
        _ => return Err(ProtoError::Malformed(0)),
    })
}

fn message(buf: &[u8], schema: Schema) -> Result<Value, ProtoError> {
    let mut out = Map::new();
    for (number, raw) in fields(buf)? {
        // Fields the sandbox does not know are skipped, as proto3 readers do.
        let Some(&(_, name, f, repeated)) = schema.iter().find(|(n, ..)| *n == number) else {
            continue;
        };
        match f {
            F::MapStr | F::MapBytes => {
                let Raw::Bytes(entry) = raw else {
                    return Err(ProtoError::Malformed(0));
                };
                let mut key = String::new();
                let mut value = Value::String(String::new());
                for (n, r) in fields(entry)? {
                    match n {
                        1 => key = as_str(&r)?,
                        2 => {
                            value = convert(
                                if matches!(f, F::MapStr) {
                                    F::Str
                                } else {
                                    F::Bytes
                                },
                                &r,
                            )?
                        }
                        _ => {}
                    }
                }
                let m = out.entry(name).or_insert_with(|| json!({}));
                m[key.as_str()] = value;
            }
            _ if repeated => {
                let v = convert(f, &raw)?;
                out.entry(name)
                    .or_insert_with(|| json!([]))
                    .as_array_mut()
                    .expect("made an array")
                    .push(v);
            }
            _ => {
                // Go's encoder writes empty strings, zero ints and zero times
                // that its JSON form leaves out (omitempty); match the JSON.
                let v = convert(f, &raw)?;
                let empty = v == json!("")
                    || v == json!(0)
                    || (matches!(f, F::Time)
                        && v.as_str()
                            .is_some_and(|t| t.starts_with("1970-01-01T00:00:00")));
                if !empty {
                    out.insert(name.to_string(), v);
                }
            }
        }
    }
    Ok(Value::Object(out))
}

/// Decodes a `k8s\0`-prefixed protobuf body into the JSON object it stands for.
pub fn decode(body: &[u8]) -> Result<Value, ProtoError> {
    let rest = body.strip_prefix(b"k8s\0").ok_or(ProtoError::NoMagic)?;
    let mut api_version = String::new();
    let mut kind = String::new();
    let mut raw: &[u8] = &[];
    for (n, r) in fields(rest)? {
        match (n, r) {
            (1, Raw::Bytes(tm)) => {
                for (m, x) in fields(tm)? {
                    match m {
                        1 => api_version = as_str(&x)?,
                        2 => kind = as_str(&x)?,
                        _ => {}
                    }
                }
            }
            (2, Raw::Bytes(b)) => raw = b,
            _ => {}
        }
    }
    let schema = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => NAMESPACE,
        ("v1", "Secret") => SECRET,
        ("v1", "ConfigMap") => CONFIG_MAP,
        ("v1", "ServiceAccount") => SERVICE_ACCOUNT,
        ("authentication.k8s.io/v1", "TokenRequest") => TOKEN_REQUEST,
        _ => return Err(ProtoError::UnsupportedKind(format!("{api_version}/{kind}"))),
    };
    let mut v = message(raw, schema)?;
    v["apiVersion"] = json!(api_version);
    v["kind"] = json!(kind);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn bytes_field(n: u32, b: &[u8], out: &mut Vec<u8>) {
        varint(u64::from(n << 3 | 2), out);
        varint(b.len() as u64, out);
        out.extend_from_slice(b);
    }

    fn map_entry(n: u32, k: &str, v: &[u8], out: &mut Vec<u8>) {
        let mut e = Vec::new();
        bytes_field(1, k.as_bytes(), &mut e);
        bytes_field(2, v, &mut e);
        bytes_field(n, &e, out);
    }

    #[test]
    fn decodes_a_secret() {
        let mut meta = Vec::new();
        bytes_field(1, b"s1", &mut meta);
        bytes_field(3, b"ns", &mut meta);
        map_entry(11, "app", b"web", &mut meta);
        bytes_field(14, b"example.com/f", &mut meta);
        varint(7 << 3, &mut meta);
        varint(3, &mut meta);
        let mut secret = Vec::new();
        bytes_field(1, &meta, &mut secret);
        map_entry(2, "k", b"\x00\x01", &mut secret);
        bytes_field(3, b"Opaque", &mut secret);
        bytes_field(99, b"ignored", &mut secret);
        varint(5 << 3, &mut secret);
        varint(1, &mut secret);
        let mut tm = Vec::new();
        bytes_field(1, b"v1", &mut tm);
        bytes_field(2, b"Secret", &mut tm);
        let mut body = b"k8s\0".to_vec();
        bytes_field(1, &tm, &mut body);
        bytes_field(2, &secret, &mut body);
        bytes_field(4, b"application/vnd.kubernetes.protobuf", &mut body);
        let v = decode(&body).unwrap();
        assert_eq!(
            v,
            json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "s1", "namespace": "ns", "labels": {"app": "web"}, "finalizers": ["example.com/f"], "generation": 3},
                "data": {"k": "AAE="}, "type": "Opaque", "immutable": true
            })
        );
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(decode(b"{}"), Err(ProtoError::NoMagic));
        assert!(matches!(
            decode(b"k8s\0\x0a\x05ab"),
            Err(ProtoError::Malformed(_))
        ));
        let mut tm = Vec::new();
        bytes_field(1, b"v1", &mut tm);
        bytes_field(2, b"Pod", &mut tm);
        let mut body = b"k8s\0".to_vec();
        bytes_field(1, &tm, &mut body);
        assert_eq!(
            decode(&body),
            Err(ProtoError::UnsupportedKind("v1/Pod".into()))
        );
    }
}
