//! Issuing certificates the way cert-manager's CA and SelfSigned issuers do
//! (reference: cert-manager-api.md, "CA signing" and "SelfSigned signing").
//!
//! Subject, SANs and any other extension come from the CSR byte for byte;
//! KeyUsage, ExtKeyUsage and BasicConstraints come from the request's spec;
//! CRL and AIA URLs from the issuer. The TBSCertificate is assembled with
//! x509-cert's DER types (see `csr.rs` for why not rcgen) and signed by the
//! issuer key through aws-lc.

use std::time::{Duration, SystemTime};

use der::asn1::{BitString, Ia5String, OctetString};
use der::{Decode, Encode, Sequence};
use thiserror::Error;
use x509_cert::Version;
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::crl::dp::DistributionPoint;
use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
use x509_cert::ext::pkix::{
    AccessDescription, AuthorityInfoAccessSyntax, AuthorityKeyIdentifier, BasicConstraints,
    CrlDistributionPoints, SubjectKeyIdentifier,
};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::time::{Time, Validity};

use super::csr::extension;
use super::inspect::{CertInfo, InspectError, chain_ders, parse_certificate};
use super::key::{KeyError, PrivateKey, same_public_key};
use super::rules::{
    CsrError, EncodedUsages, OID_AIA, OID_AKI, OID_BC, OID_CRL_DP, OID_EKU, OID_KU, OID_SKI,
    ParsedCsr, RequestRuleError, parse_csr, verify_csr_signature,
};
use super::spec::Usage;

/// cert-manager's default certificate lifetime.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(90 * 24 * 3600);

/// How far notBefore is set before the signing time. Upstream uses no
/// backdate; a certificate handed to a pod is used at once by peers on other
/// nodes, and a peer whose clock runs a little behind the signer's would see
/// it as "not yet valid". NTP keeps nodes within well under a second, so one
/// minute covers real skew while adding almost nothing to the lifetime.
pub const CLOCK_SKEW_BACKDATE: Duration = Duration::from_secs(60);

const OID_OCSP: der::asn1::ObjectIdentifier =
    der::asn1::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1");
const OID_CA_ISSUERS: der::asn1::ObjectIdentifier =
    der::asn1::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.2");

/// What the request's spec and the issuer add to the CSR.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SignParams {
    /// `spec.duration`; `None` = 90 days.
    pub duration: Option<Duration>,
    /// `spec.usages`; empty = digital signature + key encipherment.
    pub usages: Vec<Usage>,
    /// `spec.isCA`: BasicConstraints CA and the cert sign usage.
    pub is_ca: bool,
    /// Issuer `crlDistributionPoints`.
    pub crl_distribution_points: Vec<String>,
    /// CA issuer `ocspServers`.
    pub ocsp_servers: Vec<String>,
    /// CA issuer `issuingCertificateURLs`.
    pub issuing_certificate_urls: Vec<String>,
    /// The signing time; `None` = the system clock. Tests pin it.
    pub now: Option<SystemTime>,
}

/// A signed certificate, split as cert-manager fills `status.certificate`
/// and `status.ca`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signed {
    /// The leaf followed by the CA chain up to, but excluding, a self-signed root.
    pub certificate_pem: String,
    /// The root, or the top-most certificate when the chain has no self-signed root.
    pub ca_pem: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// True when notAfter was cut back to the CA's notAfter.
    pub capped: bool,
}

#[derive(Debug, Error)]
pub enum SignError {
    #[error(transparent)]
    Request(#[from] RequestRuleError),
    #[error("CA certificate chain (tls.crt of the CA secret): {0}")]
    CaChain(#[from] InspectError),
    #[error(
        "CA secret: the certificate {subject:?} is not a CA (BasicConstraints CA is not true); issue it with isCA: true"
    )]
    NotCa { subject: String },
    #[error(
        "CA secret: tls.key does not match the public key of the certificate {subject:?} in tls.crt; store the matching key pair"
    )]
    CaKeyMismatch { subject: String },
    #[error("CA secret: the CA certificate {subject:?} expired; renew the CA before signing")]
    CaExpired { subject: String },
    #[error(
        "private key secret (cert-manager.io/private-key-secret-name): its public key does not match the CSR's; the request was made with another key"
    )]
    SelfSignedKeyMismatch,
    #[error("spec.duration: {reason}")]
    Duration { reason: String },
    #[error("{field}: {value:?} is not a valid URL for a certificate extension: {reason}")]
    Url {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("encoding the certificate failed: {reason}")]
    Encode { reason: String },
    #[error(transparent)]
    Key(#[from] KeyError),
}

fn enc(e: impl std::fmt::Display) -> SignError {
    SignError::Encode {
        reason: e.to_string(),
    }
}

/// RFC 5280 TBSCertificate. x509-cert's own type keeps its fields private
/// (it wants its builder, which needs RustCrypto signer traits), so the
/// same structure is declared here for encoding.
#[derive(Clone, Debug, Sequence)]
struct TbsCertificate {
    #[asn1(context_specific = "0", default = "Default::default")]
    version: Version,
    serial_number: SerialNumber,
    signature: AlgorithmIdentifierOwned,
    issuer: Name,
    validity: Validity,
    subject: Name,
    subject_public_key_info: SubjectPublicKeyInfoOwned,
    #[asn1(context_specific = "3", tag_mode = "EXPLICIT", optional = "true")]
    extensions: Option<Vec<Extension>>,
}

#[derive(Clone, Debug, Sequence)]
struct CertificateDer {
    tbs_certificate: TbsCertificate,
    signature_algorithm: AlgorithmIdentifierOwned,
    signature: BitString,
}

/// A positive random serial of 16 bytes (≥ 120 random bits; CA/B Forum
/// asks for ≥ 64). Clearing the top bit keeps it positive, and forcing the
/// next one keeps the encoding exactly 16 bytes long.
fn random_serial() -> Result<SerialNumber, SignError> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| enc("the system random generator failed"))?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::new(&bytes).map_err(enc)
}

/// RFC 5280 4.2.1.2 method 1: SHA-1 of the subjectPublicKey bits.
fn key_identifier(spki_der: &[u8]) -> Result<Vec<u8>, SignError> {
    let spki = x509_cert::spki::SubjectPublicKeyInfoRef::from_der(spki_der).map_err(enc)?;
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
        spki.subject_public_key.raw_bytes(),
    );
    Ok(digest.as_ref().to_vec())
}

fn uri(field: &'static str, value: &str) -> Result<GeneralName, SignError> {
    let parsed = url::Url::parse(value).map_err(|e| SignError::Url {
        field,
        value: value.into(),
        reason: e.to_string(),
    })?;
    let ia5 = Ia5String::new(parsed.as_str()).map_err(|e| SignError::Url {
        field,
        value: value.into(),
        reason: e.to_string(),
    })?;
    Ok(GeneralName::UniformResourceIdentifier(ia5))
}

/// Extensions the signer sets itself; copies of these in the CSR are dropped.
fn signer_owned(oid: &der::asn1::ObjectIdentifier) -> bool {
    [
        OID_KU, OID_EKU, OID_BC, OID_SKI, OID_AKI, OID_CRL_DP, OID_AIA,
    ]
    .contains(oid)
}

struct Template<'a> {
    csr: &'a ParsedCsr,
    params: &'a SignParams,
    issuer_name: Name,
    authority_key_id: Option<Vec<u8>>,
    not_before: SystemTime,
    not_after: SystemTime,
}

fn build_certificate(t: Template<'_>, signer: &PrivateKey) -> Result<Vec<u8>, SignError> {
    let csr = t.csr;
    let params = t.params;
    let mut extensions: Vec<Extension> = Vec::new();
    for e in &csr.extensions {
        let oid = der::asn1::ObjectIdentifier::new(&e.oid).map_err(enc)?;
        if signer_owned(&oid) {
            continue;
        }
        // As cert-manager's signer: the SAN extension is critical exactly
        // when the subject is empty (RFC 5280 4.2.1.6), whatever the CSR
        // said; other extensions keep the CSR's criticality.
        let critical = if oid == crate::pki::rules::OID_SAN {
            csr.subject.is_empty()
        } else {
            e.critical
        };
        extensions.push(Extension {
            extn_id: oid,
            critical,
            extn_value: OctetString::new(e.value.clone()).map_err(enc)?,
        });
    }
    let usages = EncodedUsages::derive(&params.usages, params.is_ca);
    if let Some(ku) = usages.key_usage() {
        extensions.push(extension(OID_KU, true, &ku).map_err(enc)?);
    }
    if let Some(eku) = usages.extended_key_usage() {
        extensions.push(extension(OID_EKU, false, &eku).map_err(enc)?);
    }
    let bc = BasicConstraints {
        ca: params.is_ca,
        path_len_constraint: None,
    };
    extensions.push(extension(OID_BC, true, &bc).map_err(enc)?);
    let ski = SubjectKeyIdentifier(OctetString::new(key_identifier(&csr.spki_der)?).map_err(enc)?);
    extensions.push(extension(OID_SKI, false, &ski).map_err(enc)?);
    if let Some(aki) = t.authority_key_id {
        let aki = AuthorityKeyIdentifier {
            key_identifier: Some(OctetString::new(aki).map_err(enc)?),
            ..Default::default()
        };
        extensions.push(extension(OID_AKI, false, &aki).map_err(enc)?);
    }
    if !params.crl_distribution_points.is_empty() {
        // One DistributionPoint per URL, as Go's x509 writes them.
        let points = params
            .crl_distribution_points
            .iter()
            .map(|u| {
                Ok(DistributionPoint {
                    distribution_point: Some(DistributionPointName::FullName(vec![uri(
                        "crlDistributionPoints",
                        u,
                    )?])),
                    reasons: None,
                    crl_issuer: None,
                })
            })
            .collect::<Result<Vec<_>, SignError>>()?;
        extensions.push(extension(OID_CRL_DP, false, &CrlDistributionPoints(points)).map_err(enc)?);
    }
    if !params.ocsp_servers.is_empty() || !params.issuing_certificate_urls.is_empty() {
        let mut access = Vec::new();
        for u in &params.ocsp_servers {
            access.push(AccessDescription {
                access_method: OID_OCSP,
                access_location: uri("ocspServers", u)?,
            });
        }
        for u in &params.issuing_certificate_urls {
            access.push(AccessDescription {
                access_method: OID_CA_ISSUERS,
                access_location: uri("issuingCertificateURLs", u)?,
            });
        }
        extensions
            .push(extension(OID_AIA, false, &AuthorityInfoAccessSyntax(access)).map_err(enc)?);
    }
    let tbs = TbsCertificate {
        version: Version::V3,
        serial_number: random_serial()?,
        signature: signer.signature_algorithm_id(),
        issuer: t.issuer_name,
        validity: Validity::new(
            Time::try_from(t.not_before).map_err(enc)?,
            Time::try_from(t.not_after).map_err(enc)?,
        ),
        subject: Name::from_der(&csr.subject_der).map_err(enc)?,
        subject_public_key_info: SubjectPublicKeyInfoOwned::from_der(&csr.spki_der).map_err(enc)?,
        extensions: Some(extensions),
    };
    let tbs_der = tbs.to_der().map_err(enc)?;
    let signature = signer.sign(&tbs_der)?;
    let cert = CertificateDer {
        tbs_certificate: tbs,
        signature_algorithm: signer.signature_algorithm_id(),
        signature: BitString::from_bytes(&signature).map_err(enc)?,
    };
    cert.to_der().map_err(enc)
}

/// Whole seconds: certificate times have second precision, and comparing
/// unrounded values would report a cap that the encoding cannot show.
fn truncate_to_seconds(t: SystemTime) -> SystemTime {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

fn validity(params: &SignParams) -> Result<(SystemTime, SystemTime), SignError> {
    let now = truncate_to_seconds(params.now.unwrap_or_else(SystemTime::now));
    let duration = params.duration.unwrap_or(DEFAULT_DURATION);
    if duration.is_zero() {
        return Err(SignError::Duration {
            reason: "must be greater than zero".into(),
        });
    }
    let not_after = now
        .checked_add(duration)
        .ok_or_else(|| SignError::Duration {
            reason: format!("{}s is too long to represent", duration.as_secs()),
        })?;
    Ok((now - CLOCK_SKEW_BACKDATE, not_after))
}

fn to_pem(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

fn parsed_and_verified(csr_pem_or_der: &[u8]) -> Result<ParsedCsr, SignError> {
    let parsed =
        parse_csr(csr_pem_or_der).map_err(|e| SignError::Request(RequestRuleError::Parse(e)))?;
    verify_csr_signature(&parsed.der)?;
    Ok(parsed)
}

/// Signs `csr` (PEM or DER) with a CA. `ca_chain_pem` is the CA secret's
/// `tls.crt`: the CA certificate first, then its issuers.
pub fn sign_with_ca(
    csr: &[u8],
    ca_chain_pem: &[u8],
    ca_key: &PrivateKey,
    params: &SignParams,
) -> Result<Signed, SignError> {
    let csr = parsed_and_verified(csr)?;
    let chain: Vec<CertInfo> = chain_ders(ca_chain_pem)?
        .iter()
        .map(|d| parse_certificate(d))
        .collect::<Result<_, _>>()?;
    let ca = &chain[0];
    if !ca.is_ca {
        return Err(SignError::NotCa {
            subject: ca.subject.clone(),
        });
    }
    if !same_public_key(ca_key.public_key_der(), &ca.spki_der) {
        return Err(SignError::CaKeyMismatch {
            subject: ca.subject.clone(),
        });
    }
    let (not_before, mut not_after) = validity(params)?;
    if ca.not_after <= not_before + CLOCK_SKEW_BACKDATE {
        return Err(SignError::CaExpired {
            subject: ca.subject.clone(),
        });
    }
    let capped = not_after > ca.not_after;
    if capped {
        not_after = ca.not_after;
    }
    let authority_key_id = match &ca.subject_key_id {
        Some(id) => id.clone(),
        None => key_identifier(&ca.spki_der)?,
    };
    let leaf = build_certificate(
        Template {
            csr: &csr,
            params,
            issuer_name: Name::from_der(&ca.subject_der).map_err(enc)?,
            authority_key_id: Some(authority_key_id),
            not_before,
            not_after,
        },
        ca_key,
    )?;
    let top = chain
        .last()
        .expect("chain_ders never returns an empty list");
    let included = if top.self_signed {
        &chain[..chain.len() - 1]
    } else {
        &chain[..]
    };
    let mut certificate_pem = to_pem(&leaf);
    for c in included {
        certificate_pem.push_str(&to_pem(&c.der));
    }
    Ok(Signed {
        certificate_pem,
        ca_pem: to_pem(&top.der),
        not_before,
        not_after,
        capped,
    })
}

/// Signs `csr` with its own key (cert-manager's SelfSigned issuer). `key` is
/// the one named by `cert-manager.io/private-key-secret-name`; its public key
/// must equal the CSR's.
pub fn sign_self_signed(
    csr: &[u8],
    key: &PrivateKey,
    params: &SignParams,
) -> Result<Signed, SignError> {
    let csr = parsed_and_verified(csr)?;
    if !same_public_key(key.public_key_der(), &csr.spki_der) {
        return Err(SignError::SelfSignedKeyMismatch);
    }
    let (not_before, not_after) = validity(params)?;
    let issuer_name = Name::from_der(&csr.subject_der).map_err(enc)?;
    let der = build_certificate(
        Template {
            csr: &csr,
            params,
            issuer_name,
            // Go omits AKI when issuer and subject are the same certificate.
            authority_key_id: None,
            not_before,
            not_after,
        },
        key,
    )?;
    let pem = to_pem(&der);
    Ok(Signed {
        certificate_pem: pem.clone(),
        ca_pem: pem,
        not_before,
        not_after,
        capped: false,
    })
}

#[derive(Debug, Error)]
pub enum IssuedCheckError {
    #[error("status.certificate: {0}")]
    Parse(#[from] InspectError),
    #[error(
        "status.certificate: the issued certificate's public key differs from the CSR's; the issuer returned a certificate for another key, so it is not stored"
    )]
    KeyMismatch,
    #[error(
        "status.certificate: the issued certificate already expired (notAfter {not_after}); it is not stored"
    )]
    Expired { not_after: String },
}

/// The loop guards cert-manager adopted: never keep a certificate whose
/// public key differs from the CSR's, or one that has already expired.
pub fn check_issued(
    leaf_pem: &[u8],
    expected_spki_der: &[u8],
    now: SystemTime,
) -> Result<CertInfo, IssuedCheckError> {
    let ders = chain_ders(leaf_pem)?;
    let leaf = parse_certificate(&ders[0])?;
    if !same_public_key(&leaf.spki_der, expected_spki_der) {
        return Err(IssuedCheckError::KeyMismatch);
    }
    if leaf.not_after <= now {
        let ts = jiff::Timestamp::try_from(leaf.not_after)
            .map(|t| t.to_string())
            .unwrap_or_else(|_| format!("{:?}", leaf.not_after));
        return Err(IssuedCheckError::Expired { not_after: ts });
    }
    Ok(leaf)
}

impl From<CsrError> for SignError {
    fn from(e: CsrError) -> SignError {
        SignError::Request(RequestRuleError::Parse(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::csr::{CsrOptions, build_csr};
    use crate::pki::inspect::parse_chain;
    use crate::pki::spec::{Curve, KeyAlgorithm, SanSpec, SubjectSpec};

    const HOUR: Duration = Duration::from_secs(3600);

    fn t0() -> SystemTime {
        // A fixed, second-aligned signing time keeps the arithmetic exact.
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn csr_for(key: &PrivateKey, cn: &str) -> String {
        let subject = SubjectSpec {
            common_name: Some(cn.into()),
            ..Default::default()
        };
        let sans = SanSpec {
            dns_names: vec![format!("{cn}.example")],
            ..Default::default()
        };
        build_csr(key, &subject, &sans, &CsrOptions::default())
            .unwrap()
            .pem
    }

    /// A self-signed root CA valid for `lifetime` from t0.
    fn root(alg: KeyAlgorithm, lifetime: Duration) -> (PrivateKey, String) {
        let key = PrivateKey::generate(alg).unwrap();
        let params = SignParams {
            is_ca: true,
            duration: Some(lifetime),
            now: Some(t0()),
            ..Default::default()
        };
        let signed = sign_self_signed(csr_for(&key, "root").as_bytes(), &key, &params).unwrap();
        (key, signed.certificate_pem)
    }

    #[test]
    fn leaf_from_root_has_spec_usages_duration_and_split_chain() {
        let (ca_key, ca_pem) = root(KeyAlgorithm::Ecdsa(Curve::P256), 1000 * HOUR);
        let leaf_key = PrivateKey::generate(KeyAlgorithm::Ecdsa(Curve::P256)).unwrap();
        let params = SignParams {
            duration: Some(2 * HOUR),
            usages: vec![Usage::ServerAuth, Usage::DigitalSignature],
            now: Some(t0()),
            ..Default::default()
        };
        let signed = sign_with_ca(
            csr_for(&leaf_key, "leaf").as_bytes(),
            ca_pem.as_bytes(),
            &ca_key,
            &params,
        )
        .unwrap();
        assert!(!signed.capped);
        let chain = parse_chain(signed.certificate_pem.as_bytes()).unwrap();
        assert_eq!(
            chain.len(),
            1,
            "a self-signed root is left out of status.certificate"
        );
        assert_eq!(
            parse_chain(signed.ca_pem.as_bytes()).unwrap()[0].der,
            parse_chain(ca_pem.as_bytes()).unwrap()[0].der
        );
        let leaf = &chain[0];
        assert_eq!(leaf.not_before, t0() - CLOCK_SKEW_BACKDATE);
        assert_eq!(leaf.not_after, t0() + 2 * HOUR);
        assert_eq!(leaf.subject, "CN=leaf");
        assert_eq!(leaf.issuer, "CN=root");
        assert_eq!(leaf.sans.dns_names, vec!["leaf.example"]);
        assert!(!leaf.is_ca);
        assert_eq!(
            leaf.key_usages.iter().copied().collect::<Vec<_>>(),
            vec![Usage::DigitalSignature]
        );
        assert_eq!(
            leaf.ext_key_usages.iter().copied().collect::<Vec<_>>(),
            vec![Usage::ServerAuth]
        );
        assert_eq!(leaf.spki_der, leaf_key.public_key_der());
        let root_info = &parse_chain(ca_pem.as_bytes()).unwrap()[0];
        assert_eq!(leaf.authority_key_id, root_info.subject_key_id);
        assert!(leaf.subject_key_id.is_some());
        // Serial: positive, 16 bytes, random.
        assert_eq!(leaf.serial_hex.len(), 32);
        let again = sign_with_ca(
            csr_for(&leaf_key, "leaf").as_bytes(),
            ca_pem.as_bytes(),
            &ca_key,
            &params,
        )
        .unwrap();
        assert_ne!(
            parse_chain(again.certificate_pem.as_bytes()).unwrap()[0].serial_hex,
            leaf.serial_hex
        );
        check_issued(
            signed.certificate_pem.as_bytes(),
            leaf_key.public_key_der(),
            t0(),
        )
        .unwrap();
    }

    #[test]
    fn default_duration_is_90_days_and_capped_at_the_ca() {
        let (ca_key, ca_pem) = root(KeyAlgorithm::Ed25519, 24 * HOUR);
        let leaf_key = PrivateKey::generate(KeyAlgorithm::Ed25519).unwrap();
        let params = SignParams {
            now: Some(t0()),
            ..Default::default()
        };
        let signed = sign_with_ca(
            csr_for(&leaf_key, "l").as_bytes(),
            ca_pem.as_bytes(),
            &ca_key,
            &params,
        )
        .unwrap();
        assert!(signed.capped);
        assert_eq!(signed.not_after, t0() + 24 * HOUR);
        // With a long-lived CA the 90-day default applies.
        let (ca_key, ca_pem) = root(KeyAlgorithm::Ed25519, 24 * 365 * HOUR);
        let signed = sign_with_ca(
            csr_for(&leaf_key, "l").as_bytes(),
            ca_pem.as_bytes(),
            &ca_key,
            &params,
        )
        .unwrap();
        assert!(!signed.capped);
        assert_eq!(signed.not_after, t0() + DEFAULT_DURATION);
    }

    #[test]
    fn intermediate_chain_is_split_at_the_root_and_is_ca_adds_cert_sign() {
        let (root_key, root_pem) = root(KeyAlgorithm::Ecdsa(Curve::P384), 1000 * HOUR);
        let int_key = PrivateKey::generate(KeyAlgorithm::Ecdsa(Curve::P256)).unwrap();
        let ca_params = SignParams {
            is_ca: true,
            duration: Some(500 * HOUR),
            now: Some(t0()),
            ..Default::default()
        };
        let int = sign_with_ca(
            csr_for(&int_key, "int").as_bytes(),
            root_pem.as_bytes(),
            &root_key,
            &ca_params,
        )
        .unwrap();
        let int_info = &parse_chain(int.certificate_pem.as_bytes()).unwrap()[0];
        assert!(int_info.is_ca);
        assert!(int_info.key_usages.contains(&Usage::CertSign));
        // The CA secret's tls.crt: intermediate followed by the root.
        let ca_secret_crt = format!("{}{}", int.certificate_pem, root_pem);
        let leaf_key = PrivateKey::generate(KeyAlgorithm::Ecdsa(Curve::P256)).unwrap();
        let params = SignParams {
            now: Some(t0()),
            duration: Some(HOUR),
            ..Default::default()
        };
        let leaf = sign_with_ca(
            csr_for(&leaf_key, "leaf").as_bytes(),
            ca_secret_crt.as_bytes(),
            &int_key,
            &params,
        )
        .unwrap();
        let chain = parse_chain(leaf.certificate_pem.as_bytes()).unwrap();
        assert_eq!(chain.len(), 2, "leaf + intermediate, root left out");
        assert_eq!(chain[1].subject, "CN=int");
        assert_eq!(
            parse_chain(leaf.ca_pem.as_bytes()).unwrap()[0].subject,
            "CN=root"
        );
        // Without the root in tls.crt the intermediate is both chain and ca.
        let leaf = sign_with_ca(
            csr_for(&leaf_key, "leaf").as_bytes(),
            int.certificate_pem.as_bytes(),
            &int_key,
            &params,
        )
        .unwrap();
        assert_eq!(
            parse_chain(leaf.certificate_pem.as_bytes()).unwrap().len(),
            2
        );
        assert_eq!(
            parse_chain(leaf.ca_pem.as_bytes()).unwrap()[0].subject,
            "CN=int"
        );
    }

    #[test]
    fn signature_algorithm_follows_the_ca_key() {
        let cases = [
            (KeyAlgorithm::Rsa { bits: 2048 }, "1.2.840.113549.1.1.11"),
            (KeyAlgorithm::Rsa { bits: 3072 }, "1.2.840.113549.1.1.12"),
            (KeyAlgorithm::Ecdsa(Curve::P256), "1.2.840.10045.4.3.2"),
            (KeyAlgorithm::Ecdsa(Curve::P384), "1.2.840.10045.4.3.3"),
            (KeyAlgorithm::Ecdsa(Curve::P521), "1.2.840.10045.4.3.4"),
            (KeyAlgorithm::Ed25519, "1.3.101.112"),
        ];
        let leaf_key = PrivateKey::generate(KeyAlgorithm::Ecdsa(Curve::P256)).unwrap();
        for (alg, oid) in cases {
            let (ca_key, ca_pem) = root(alg, 1000 * HOUR);
            let params = SignParams {
                now: Some(t0()),
                ..Default::default()
            };
            let signed = sign_with_ca(
                csr_for(&leaf_key, "l").as_bytes(),
                ca_pem.as_bytes(),
                &ca_key,
                &params,
            )
            .unwrap();
            let der = &parse_chain(signed.certificate_pem.as_bytes()).unwrap()[0].der;
            let cert = x509_cert::Certificate::from_der(der).unwrap();
            assert_eq!(cert.signature_algorithm().oid.to_string(), oid, "{alg:?}");
        }
    }

    #[test]
    fn rejects_wrong_keys_non_ca_and_expired_results() {
        let (ca_key, ca_pem) = root(KeyAlgorithm::Ecdsa(Curve::P256), 1000 * HOUR);
        let other = PrivateKey::generate(KeyAlgorithm::Ecdsa(Curve::P256)).unwrap();
        let csr = csr_for(&other, "x");
        let params = SignParams {
            now: Some(t0()),
            duration: Some(HOUR),
            ..Default::default()
        };
        let err = sign_self_signed(csr.as_bytes(), &ca_key, &params).unwrap_err();
        assert!(matches!(err, SignError::SelfSignedKeyMismatch), "{err}");
        let err = sign_with_ca(csr.as_bytes(), ca_pem.as_bytes(), &other, &params).unwrap_err();
        assert!(matches!(err, SignError::CaKeyMismatch { .. }), "{err}");
        // A leaf is not a CA.
        let leaf = sign_with_ca(csr.as_bytes(), ca_pem.as_bytes(), &ca_key, &params).unwrap();
        let err = sign_with_ca(
            csr.as_bytes(),
            leaf.certificate_pem.as_bytes(),
            &other,
            &params,
        )
        .unwrap_err();
        assert!(matches!(err, SignError::NotCa { .. }), "{err}");
        // Loop guards.
        let err = check_issued(
            leaf.certificate_pem.as_bytes(),
            ca_key.public_key_der(),
            t0(),
        )
        .unwrap_err();
        assert!(matches!(err, IssuedCheckError::KeyMismatch), "{err}");
        let err = check_issued(
            leaf.certificate_pem.as_bytes(),
            other.public_key_der(),
            t0() + 2 * HOUR,
        )
        .unwrap_err();
        assert!(matches!(err, IssuedCheckError::Expired { .. }), "{err}");
        // An expired CA signs nothing.
        let late = SignParams {
            now: Some(t0() + 2000 * HOUR),
            ..Default::default()
        };
        let err = sign_with_ca(csr.as_bytes(), ca_pem.as_bytes(), &ca_key, &late).unwrap_err();
        assert!(matches!(err, SignError::CaExpired { .. }), "{err}");
    }

    #[test]
    fn issuer_urls_and_csr_extensions_are_carried() {
        let (ca_key, ca_pem) = root(KeyAlgorithm::Ecdsa(Curve::P256), 1000 * HOUR);
        let leaf_key = PrivateKey::generate(KeyAlgorithm::Ecdsa(Curve::P256)).unwrap();
        let spiffe = SanSpec {
            uris: vec!["spiffe://td/ns/a/sa/b".into()],
            ..Default::default()
        };
        let opts = CsrOptions {
            encode_usages: Some((&[Usage::ClientAuth], false)),
            // A non-critical SAN in the CSR, as Go writes it: the issued
            // certificate's must still be critical, its subject being empty.
            critical_san_when_subject_empty: false,
            ..Default::default()
        };
        let csr = build_csr(&leaf_key, &SubjectSpec::default(), &spiffe, &opts).unwrap();
        let params = SignParams {
            usages: vec![Usage::ServerAuth],
            now: Some(t0()),
            crl_distribution_points: vec!["http://crl.example/ca.crl".into()],
            ocsp_servers: vec!["http://ocsp.example".into()],
            issuing_certificate_urls: vec!["http://ca.example/ca.crt".into()],
            ..Default::default()
        };
        let signed = sign_with_ca(csr.pem.as_bytes(), ca_pem.as_bytes(), &ca_key, &params).unwrap();
        let leaf = &parse_chain(signed.certificate_pem.as_bytes()).unwrap()[0];
        assert_eq!(leaf.subject, "");
        assert_eq!(leaf.sans.uris, spiffe.uris);
        // Usages come from params, not from the CSR.
        assert_eq!(
            leaf.ext_key_usages.iter().copied().collect::<Vec<_>>(),
            vec![Usage::ServerAuth]
        );
        let cert = x509_cert::Certificate::from_der(&leaf.der).unwrap();
        let exts = cert.tbs_certificate().extensions().unwrap();
        let san = exts
            .iter()
            .find(|e| e.extn_id == crate::pki::rules::OID_SAN)
            .unwrap();
        assert!(san.critical, "a SAN with an empty subject is critical");
        for oid in [OID_CRL_DP, OID_AIA] {
            assert!(exts.iter().any(|e| e.extn_id == oid), "{oid}");
        }
        assert_eq!(exts.iter().filter(|e| e.extn_id == OID_EKU).count(), 1);
        let bad = SignParams {
            ocsp_servers: vec!["not a url".into()],
            ..params
        };
        let err = sign_with_ca(csr.pem.as_bytes(), ca_pem.as_bytes(), &ca_key, &bad).unwrap_err();
        assert!(err.to_string().starts_with("ocspServers:"), "{err}");
    }
}
