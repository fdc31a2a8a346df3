//! CSR parsing and the checks cert-manager's admission webhook applies to a
//! CertificateRequest (reference: cert-manager-api.md, "Validation a real
//! cert-manager applies").
//!
//! Usages are compared on what is encoded (KeyUsage bits and ExtKeyUsage
//! OIDs), not on names: cert-manager maps both "signing" and "digital
//! signature" to the same bit, and "s/mime" and "email protection" to the
//! same OID, so a name comparison would reject requests upstream accepts.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use der::asn1::{Any, ObjectIdentifier};
use der::{Decode, Encode, Tag, Tagged};
use thiserror::Error;
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAltName};
use x509_cert::name::Name;
use x509_cert::request::CertReq;

use super::key::algorithm_of_spki;
use super::spec::{KeyAlgorithm, SanSpec, SubjectSpec, Usage};

pub(crate) const OID_EXTENSION_REQUEST: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.14");
pub(crate) const OID_SAN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.17");
pub(crate) const OID_KU: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");
pub(crate) const OID_EKU: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37");
pub(crate) const OID_BC: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
pub(crate) const OID_SKI: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.14");
pub(crate) const OID_AKI: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.35");
pub(crate) const OID_CRL_DP: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.31");
pub(crate) const OID_AIA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.1.1");

pub(crate) const OID_CN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
pub(crate) const OID_SERIAL: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.5");
pub(crate) const OID_C: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.6");
pub(crate) const OID_L: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.7");
pub(crate) const OID_ST: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.8");
pub(crate) const OID_STREET: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.9");
pub(crate) const OID_O: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.10");
pub(crate) const OID_OU: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.11");
pub(crate) const OID_POSTAL: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.17");

/// KeyUsage bit positions (RFC 5280 4.2.1.3) per cert-manager usage name.
fn key_usage_bit(usage: Usage) -> Option<u16> {
    Some(match usage {
        Usage::Signing | Usage::DigitalSignature => 0,
        Usage::ContentCommitment => 1,
        Usage::KeyEncipherment => 2,
        Usage::DataEncipherment => 3,
        Usage::KeyAgreement => 4,
        Usage::CertSign => 5,
        Usage::CrlSign => 6,
        Usage::EncipherOnly => 7,
        Usage::DecipherOnly => 8,
        _ => return None,
    })
}

/// The canonical usage name for each KeyUsage bit, used when reading back.
const KU_BITS: [(u16, Usage); 9] = [
    (0, Usage::DigitalSignature),
    (1, Usage::ContentCommitment),
    (2, Usage::KeyEncipherment),
    (3, Usage::DataEncipherment),
    (4, Usage::KeyAgreement),
    (5, Usage::CertSign),
    (6, Usage::CrlSign),
    (7, Usage::EncipherOnly),
    (8, Usage::DecipherOnly),
];

/// ExtKeyUsage OIDs per usage; the first usage listed for an OID is the
/// canonical one when reading back.
const EKU_OIDS: [(Usage, &str); 13] = [
    (Usage::Any, "2.5.29.37.0"),
    (Usage::ServerAuth, "1.3.6.1.5.5.7.3.1"),
    (Usage::ClientAuth, "1.3.6.1.5.5.7.3.2"),
    (Usage::CodeSigning, "1.3.6.1.5.5.7.3.3"),
    (Usage::EmailProtection, "1.3.6.1.5.5.7.3.4"),
    (Usage::SMime, "1.3.6.1.5.5.7.3.4"),
    (Usage::IpsecEndSystem, "1.3.6.1.5.5.7.3.5"),
    (Usage::IpsecTunnel, "1.3.6.1.5.5.7.3.6"),
    (Usage::IpsecUser, "1.3.6.1.5.5.7.3.7"),
    (Usage::Timestamping, "1.3.6.1.5.5.7.3.8"),
    (Usage::OcspSigning, "1.3.6.1.5.5.7.3.9"),
    (Usage::MicrosoftSgc, "1.3.6.1.4.1.311.10.3.3"),
    (Usage::NetscapeSgc, "2.16.840.1.113730.4.1"),
];

fn eku_oid(usage: Usage) -> Option<ObjectIdentifier> {
    EKU_OIDS
        .iter()
        .find(|(u, _)| *u == usage)
        .map(|(_, o)| ObjectIdentifier::new_unwrap(o))
}

fn usage_of_eku(oid: &ObjectIdentifier) -> Option<Usage> {
    EKU_OIDS
        .iter()
        .find(|(_, o)| ObjectIdentifier::new_unwrap(o) == *oid)
        .map(|(u, _)| *u)
}

/// What a certificate or request carries for a list of usages: the KeyUsage
/// bits and the ExtKeyUsage OIDs, derived exactly as cert-manager does
/// (empty list = digital signature + key encipherment; isCA adds cert sign).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct EncodedUsages {
    /// Bit `n` set = KeyUsage bit `n` (RFC 5280 numbering).
    pub key_usage_bits: u16,
    /// Sorted and de-duplicated.
    pub ext_key_usages: Vec<ObjectIdentifier>,
}

impl EncodedUsages {
    pub fn derive(usages: &[Usage], is_ca: bool) -> EncodedUsages {
        let defaults;
        let usages = if usages.is_empty() {
            defaults = Usage::defaults();
            &defaults[..]
        } else {
            usages
        };
        let mut bits = 0u16;
        let mut ekus = BTreeSet::new();
        if is_ca {
            bits |= 1 << 5;
        }
        for u in usages {
            if let Some(b) = key_usage_bit(*u) {
                bits |= 1 << b;
            } else if let Some(oid) = eku_oid(*u) {
                ekus.insert(oid);
            }
        }
        EncodedUsages {
            key_usage_bits: bits,
            ext_key_usages: ekus.into_iter().collect(),
        }
    }

    /// The usages as canonical names, KeyUsage first.
    pub fn names(&self) -> Vec<Usage> {
        let mut out: Vec<Usage> = KU_BITS
            .iter()
            .filter(|(b, _)| self.key_usage_bits & (1 << b) != 0)
            .map(|(_, u)| *u)
            .collect();
        out.extend(self.ext_key_usages.iter().filter_map(usage_of_eku));
        out
    }

    /// The x509-cert KeyUsage value, or `None` when no bit is set.
    pub(crate) fn key_usage(&self) -> Option<KeyUsage> {
        use x509_cert::ext::pkix::KeyUsages;
        if self.key_usage_bits == 0 {
            return None;
        }
        let flags = der::flagset::FlagSet::<KeyUsages>::new_truncated(self.key_usage_bits);
        Some(KeyUsage(flags))
    }

    pub(crate) fn extended_key_usage(&self) -> Option<ExtendedKeyUsage> {
        (!self.ext_key_usages.is_empty()).then(|| ExtendedKeyUsage(self.ext_key_usages.clone()))
    }
}

impl fmt::Display for EncodedUsages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.names().iter().map(|u| u.name().to_string()).collect();
        let mut unknown: Vec<String> = self
            .ext_key_usages
            .iter()
            .filter(|o| usage_of_eku(o).is_none())
            .map(|o| o.to_string())
            .collect();
        let mut all = names;
        all.append(&mut unknown);
        write!(f, "[{}]", all.join(", "))
    }
}

#[derive(Debug, Error)]
pub enum CsrError {
    #[error("literal-subject: {reason}; write an RFC 4514 string such as \"CN=app,O=example\"")]
    LiteralSubject { reason: String },
    #[error("{field}: {value:?} cannot be encoded in a CSR: {reason}")]
    Field {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("request: not a PEM \"CERTIFICATE REQUEST\" block or DER CSR: {reason}")]
    Decode { reason: String },
    #[error("request: the CSR extension {oid} is malformed: {reason}")]
    Extension { oid: String, reason: String },
    #[error("building the CSR failed: {reason}")]
    Build { reason: String },
    #[error(transparent)]
    Key(#[from] super::key::KeyError),
}

/// One extension as found in a CSR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CsrExtension {
    pub oid: String,
    pub critical: bool,
    /// The extnValue contents (the DER inside the OCTET STRING).
    pub value: Vec<u8>,
}

/// A decoded PKCS#10 request.
#[derive(Clone, Debug)]
pub struct ParsedCsr {
    pub der: Vec<u8>,
    /// RFC 4514 form (last RDN first), e.g. `CN=app,O=example`.
    pub subject: String,
    /// The subject Name exactly as encoded, for copying into certificates.
    pub subject_der: Vec<u8>,
    /// The well-known subject attributes (other attributes are only in `subject`).
    pub subject_fields: SubjectSpec,
    pub sans: SanSpec,
    pub spki_der: Vec<u8>,
    /// `None` for key types cert-csi does not issue for.
    pub key_algorithm: Option<KeyAlgorithm>,
    pub extensions: Vec<CsrExtension>,
    /// `None` when the CSR has no KeyUsage extension.
    pub key_usages: Option<BTreeSet<Usage>>,
    /// `None` when the CSR has no ExtKeyUsage extension.
    pub ext_key_usages: Option<BTreeSet<Usage>>,
    /// The encoded form of both usage extensions (absent = nothing set).
    pub encoded_usages: EncodedUsages,
    /// `None` when the CSR has no BasicConstraints extension.
    pub basic_constraints_ca: Option<bool>,
}

impl ParsedCsr {
    pub fn extension(&self, oid: &str) -> Option<&CsrExtension> {
        self.extensions.iter().find(|e| e.oid == oid)
    }

    pub fn pem(&self) -> String {
        pem::encode_config(
            &pem::Pem::new("CERTIFICATE REQUEST", self.der.clone()),
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        )
    }
}

/// Accepts a PEM `CERTIFICATE REQUEST` (or `NEW CERTIFICATE REQUEST`) or raw DER.
pub(crate) fn csr_der(pem_or_der: &[u8]) -> Result<Vec<u8>, CsrError> {
    if pem_or_der.first() == Some(&0x30) {
        return Ok(pem_or_der.to_vec());
    }
    let block = pem::parse(pem_or_der).map_err(|e| CsrError::Decode {
        reason: e.to_string(),
    })?;
    match block.tag() {
        "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST" => Ok(block.into_contents()),
        other => Err(CsrError::Decode {
            reason: format!("found a {other:?} block"),
        }),
    }
}

/// Reads a string attribute or GeneralName value whatever its string type.
pub(crate) fn any_to_string(value: &Any) -> Option<String> {
    match value.tag() {
        Tag::Utf8String
        | Tag::PrintableString
        | Tag::Ia5String
        | Tag::TeletexString
        | Tag::VisibleString => std::str::from_utf8(value.value()).ok().map(str::to_string),
        Tag::BmpString => {
            let units: Vec<u16> = value
                .value()
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        _ => None,
    }
}

pub(crate) fn subject_fields(name: &Name) -> SubjectSpec {
    let mut s = SubjectSpec::default();
    for atv in name.iter() {
        let Some(v) = any_to_string(&atv.value) else {
            continue;
        };
        let oid = atv.oid;
        if oid == OID_CN {
            s.common_name = Some(v);
        } else if oid == OID_SERIAL {
            s.serial_number = Some(v);
        } else if oid == OID_C {
            s.countries.push(v);
        } else if oid == OID_L {
            s.localities.push(v);
        } else if oid == OID_ST {
            s.provinces.push(v);
        } else if oid == OID_STREET {
            s.street_addresses.push(v);
        } else if oid == OID_O {
            s.organizations.push(v);
        } else if oid == OID_OU {
            s.organizational_units.push(v);
        } else if oid == OID_POSTAL {
            s.postal_codes.push(v);
        }
    }
    s
}

pub(crate) fn sans_from_extension(value: &[u8]) -> Result<SanSpec, CsrError> {
    let san = SubjectAltName::from_der(value).map_err(|e| CsrError::Extension {
        oid: OID_SAN.to_string(),
        reason: e.to_string(),
    })?;
    let mut out = SanSpec::default();
    for name in san.0 {
        match name {
            GeneralName::DnsName(s) => out.dns_names.push(s.to_string()),
            GeneralName::Rfc822Name(s) => out.emails.push(s.to_string()),
            GeneralName::UniformResourceIdentifier(s) => out.uris.push(s.to_string()),
            GeneralName::IpAddress(o) => match o.as_bytes().len() {
                4 => {
                    let b: [u8; 4] = o.as_bytes().try_into().expect("length checked");
                    out.ip_addresses.push(IpAddr::from(b));
                }
                16 => {
                    let b: [u8; 16] = o.as_bytes().try_into().expect("length checked");
                    out.ip_addresses.push(IpAddr::from(b));
                }
                _ => {}
            },
            _ => {}
        }
    }
    Ok(out)
}

/// KeyUsage, ExtKeyUsage and BasicConstraints as found in a list of extensions.
pub(crate) struct UsageExtensions {
    pub key_usages: Option<BTreeSet<Usage>>,
    pub ext_key_usages: Option<BTreeSet<Usage>>,
    pub encoded: EncodedUsages,
    pub basic_constraints_ca: Option<bool>,
}

pub(crate) fn usage_extensions(exts: &[Extension]) -> Result<UsageExtensions, CsrError> {
    let bad = |oid: &ObjectIdentifier, e: der::Error| CsrError::Extension {
        oid: oid.to_string(),
        reason: e.to_string(),
    };
    let mut out = UsageExtensions {
        key_usages: None,
        ext_key_usages: None,
        encoded: EncodedUsages::default(),
        basic_constraints_ca: None,
    };
    for ext in exts {
        let value = ext.extn_value.as_bytes();
        if ext.extn_id == OID_KU {
            let ku = KeyUsage::from_der(value).map_err(|e| bad(&ext.extn_id, e))?;
            let bits = ku.0.bits();
            out.encoded.key_usage_bits = bits;
            out.key_usages = Some(
                KU_BITS
                    .iter()
                    .filter(|(b, _)| bits & (1 << b) != 0)
                    .map(|(_, u)| *u)
                    .collect(),
            );
        } else if ext.extn_id == OID_EKU {
            let eku = ExtendedKeyUsage::from_der(value).map_err(|e| bad(&ext.extn_id, e))?;
            let set: BTreeSet<ObjectIdentifier> = eku.0.iter().copied().collect();
            out.ext_key_usages = Some(set.iter().filter_map(usage_of_eku).collect());
            out.encoded.ext_key_usages = set.into_iter().collect();
        } else if ext.extn_id == OID_BC {
            let bc = BasicConstraints::from_der(value).map_err(|e| bad(&ext.extn_id, e))?;
            out.basic_constraints_ca = Some(bc.ca);
        }
    }
    Ok(out)
}

/// Decodes a CSR (PEM or DER). Does not verify its signature; see
/// [`verify_csr_signature`].
pub fn parse_csr(pem_or_der: &[u8]) -> Result<ParsedCsr, CsrError> {
    let der = csr_der(pem_or_der)?;
    let req = CertReq::from_der(&der).map_err(|e| CsrError::Decode {
        reason: e.to_string(),
    })?;
    let info = &req.info;
    let mut exts: Vec<Extension> = Vec::new();
    for attr in info.attributes.iter() {
        if attr.oid != OID_EXTENSION_REQUEST {
            continue;
        }
        for value in attr.values.iter() {
            let list: Vec<Extension> =
                value
                    .decode_as()
                    .map_err(|e: der::Error| CsrError::Extension {
                        oid: OID_EXTENSION_REQUEST.to_string(),
                        reason: e.to_string(),
                    })?;
            exts.extend(list);
        }
    }
    let sans = match exts.iter().find(|e| e.extn_id == OID_SAN) {
        Some(e) => sans_from_extension(e.extn_value.as_bytes())?,
        None => SanSpec::default(),
    };
    let usage = usage_extensions(&exts)?;
    let spki_der = info.public_key.to_der().map_err(|e| CsrError::Decode {
        reason: e.to_string(),
    })?;
    let subject_der = info.subject.to_der().map_err(|e| CsrError::Decode {
        reason: e.to_string(),
    })?;
    Ok(ParsedCsr {
        subject: info.subject.to_string(),
        subject_fields: subject_fields(&info.subject),
        subject_der,
        sans,
        key_algorithm: algorithm_of_spki(&spki_der),
        spki_der,
        extensions: exts
            .iter()
            .map(|e| CsrExtension {
                oid: e.extn_id.to_string(),
                critical: e.critical,
                value: e.extn_value.as_bytes().to_vec(),
            })
            .collect(),
        key_usages: usage.key_usages,
        ext_key_usages: usage.ext_key_usages,
        encoded_usages: usage.encoded,
        basic_constraints_ca: usage.basic_constraints_ca,
        der,
    })
}

#[derive(Debug, Error)]
pub enum RequestRuleError {
    #[error("spec.request: {0}")]
    Parse(#[from] CsrError),
    #[error(
        "spec.request: the CSR signature does not verify against its own public key ({reason}); the CSR was altered or signed with a different key"
    )]
    Signature { reason: String },
    #[error(
        "spec.request: CSR has {csr} but spec.usages asks for {spec}; encode exactly the usages of spec.usages (+ cert sign when isCA) in the CSR, or leave the KeyUsage/ExtKeyUsage extensions out"
    )]
    UsagesMismatch { csr: String, spec: String },
    #[error(
        "spec.request: CSR BasicConstraints has CA={csr_ca} but spec.isCA is {spec_ca}; make them equal or leave BasicConstraints out of the CSR"
    )]
    BasicConstraintsMismatch { csr_ca: bool, spec_ca: bool },
}

/// Verifies the CSR's self-signature: with aws-lc directly for the
/// algorithms cert-csi and cert-manager use, else with x509-parser.
pub fn verify_csr_signature(pem_or_der: &[u8]) -> Result<(), RequestRuleError> {
    use x509_parser::prelude::FromDer;
    let der = csr_der(pem_or_der)?;
    let (_, req) = x509_parser::certification_request::X509CertificationRequest::from_der(&der)
        .map_err(|e| {
            RequestRuleError::Parse(CsrError::Decode {
                reason: e.to_string(),
            })
        })?;
    let sig_err = |reason: String| RequestRuleError::Signature { reason };
    let oid = ObjectIdentifier::new(&req.signature_algorithm.algorithm.to_id_string())
        .map_err(|e| sig_err(e.to_string()))?;
    let info = &req.certification_request_info;
    let known = super::key::verify_known_signature(
        &oid,
        info.subject_pki.raw,
        info.raw,
        &req.signature_value.data,
    )
    .map_err(sig_err)?;
    if known {
        return Ok(());
    }
    req.verify_signature().map_err(|e| sig_err(e.to_string()))
}

/// The checks a real cert-manager applies to `spec.request` against
/// `spec.usages` and `spec.isCA`. Returns the parsed CSR on success so that
/// callers (the signer) need not parse it twice.
pub fn check_request_parsed(
    csr_pem: &[u8],
    usages: &[Usage],
    is_ca: bool,
) -> Result<ParsedCsr, RequestRuleError> {
    let parsed = parse_csr(csr_pem)?;
    verify_csr_signature(&parsed.der)?;
    if parsed.key_usages.is_some() || parsed.ext_key_usages.is_some() {
        let wanted = EncodedUsages::derive(usages, is_ca);
        if parsed.encoded_usages != wanted {
            return Err(RequestRuleError::UsagesMismatch {
                csr: parsed.encoded_usages.to_string(),
                spec: wanted.to_string(),
            });
        }
    }
    if let Some(csr_ca) = parsed.basic_constraints_ca
        && csr_ca != is_ca
    {
        return Err(RequestRuleError::BasicConstraintsMismatch {
            csr_ca,
            spec_ca: is_ca,
        });
    }
    Ok(parsed)
}

/// [`check_request_parsed`] without the parsed result.
pub fn check_request(
    csr_pem: &[u8],
    usages: &[Usage],
    is_ca: bool,
) -> Result<(), RequestRuleError> {
    check_request_parsed(csr_pem, usages, is_ca).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_usages_follow_cert_manager() {
        let d = EncodedUsages::derive(&[], false);
        assert_eq!(
            d.names(),
            vec![Usage::DigitalSignature, Usage::KeyEncipherment]
        );
        assert!(d.ext_key_usages.is_empty());
        let ca = EncodedUsages::derive(&[], true);
        assert_eq!(
            ca.names(),
            vec![
                Usage::DigitalSignature,
                Usage::KeyEncipherment,
                Usage::CertSign
            ]
        );
        // "signing" and "digital signature" encode the same bit; "s/mime"
        // and "email protection" the same OID.
        assert_eq!(
            EncodedUsages::derive(&[Usage::Signing, Usage::SMime], false),
            EncodedUsages::derive(&[Usage::DigitalSignature, Usage::EmailProtection], false)
        );
        let server = EncodedUsages::derive(&[Usage::ServerAuth], false);
        assert_eq!(server.key_usage_bits, 0);
        assert_eq!(server.to_string(), "[server auth]");
    }

    #[test]
    fn every_usage_maps_to_a_bit_or_an_oid() {
        for (u, _) in Usage::ALL {
            assert!(key_usage_bit(u).is_some() ^ eku_oid(u).is_some(), "{u}");
        }
    }
}
