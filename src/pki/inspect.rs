//! Reading certificates: what the store writes into metadata, what the
//! renewal schedule needs (validity), and what the signer needs from a CA.
//!
//! Times are `std::time::SystemTime` throughout this module and in
//! [`super::sign`].

use std::collections::BTreeSet;
use std::time::SystemTime;

use der::{Decode, Encode};
use thiserror::Error;
use x509_cert::Certificate;

use super::key::{
    PrivateKey, algorithm_of_spki, describe_algorithm, same_public_key, verify_known_signature,
};
use super::rules::{OID_AKI, OID_SAN, OID_SKI, sans_from_extension, usage_extensions};
use super::spec::{KeyAlgorithm, SanSpec, Usage};

#[derive(Debug, Error)]
pub enum InspectError {
    #[error(
        "certificate chain: no PEM CERTIFICATE block found; expected one or more \"-----BEGIN CERTIFICATE-----\" blocks"
    )]
    Empty,
    #[error("certificate chain: the PEM is malformed ({reason})")]
    Pem { reason: String },
    #[error("certificate #{index} in the chain cannot be decoded: {reason}")]
    Decode { index: usize, reason: String },
}

/// What cert-csi needs to know about one certificate.
#[derive(Clone, Debug)]
pub struct CertInfo {
    pub der: Vec<u8>,
    /// Upper-case hex without separators, as `openssl x509 -serial` prints it.
    pub serial_hex: String,
    /// RFC 4514 strings (last RDN first).
    pub subject: String,
    pub issuer: String,
    pub subject_der: Vec<u8>,
    pub issuer_der: Vec<u8>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub sans: SanSpec,
    /// BasicConstraints CA flag (false when the extension is absent).
    pub is_ca: bool,
    /// KeyUsage bits as canonical usage names.
    pub key_usages: BTreeSet<Usage>,
    /// ExtKeyUsage OIDs that map to a cert-manager usage.
    pub ext_key_usages: BTreeSet<Usage>,
    pub spki_der: Vec<u8>,
    pub key_algorithm: Option<KeyAlgorithm>,
    /// "ECDSA P-256", "RSA 2048", "Ed25519", or the algorithm OID.
    pub key_type: String,
    /// SHA-256 of the DER, upper-case hex pairs joined by colons.
    pub sha256_fingerprint: String,
    pub subject_key_id: Option<Vec<u8>>,
    pub authority_key_id: Option<Vec<u8>>,
    /// Subject equals issuer and the signature verifies with its own key.
    pub self_signed: bool,
}

impl CertInfo {
    pub fn pem(&self) -> String {
        pem::encode_config(
            &pem::Pem::new("CERTIFICATE", self.der.clone()),
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        )
    }

    /// Whether `now` lies within notBefore..=notAfter.
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        self.not_before <= now && now <= self.not_after
    }
}

/// Splits a PEM bundle into certificate DERs, ignoring other block types.
pub fn chain_ders(pem_text: &[u8]) -> Result<Vec<Vec<u8>>, InspectError> {
    let blocks = pem::parse_many(pem_text).map_err(|e| InspectError::Pem {
        reason: e.to_string(),
    })?;
    let ders: Vec<Vec<u8>> = blocks
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(|b| b.into_contents())
        .collect();
    if ders.is_empty() {
        return Err(InspectError::Empty);
    }
    Ok(ders)
}

/// Hex with a separator (empty for none), upper case.
pub(crate) fn hex_upper(bytes: &[u8], sep: &str) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(sep)
}

/// Decodes one DER certificate.
pub fn parse_certificate(der: &[u8]) -> Result<CertInfo, InspectError> {
    parse_one(0, der)
}

fn parse_one(index: usize, der: &[u8]) -> Result<CertInfo, InspectError> {
    let bad = |reason: String| InspectError::Decode { index, reason };
    let cert = Certificate::from_der(der).map_err(|e| bad(e.to_string()))?;
    let tbs = cert.tbs_certificate();
    let exts: Vec<x509_cert::ext::Extension> = tbs.extensions().cloned().unwrap_or_default();
    let usage = usage_extensions(&exts).map_err(|e| bad(e.to_string()))?;
    let sans = match exts.iter().find(|e| e.extn_id == OID_SAN) {
        Some(e) => sans_from_extension(e.extn_value.as_bytes()).map_err(|e| bad(e.to_string()))?,
        None => SanSpec::default(),
    };
    let subject_key_id = exts
        .iter()
        .find(|e| e.extn_id == OID_SKI)
        .and_then(|e| der::asn1::OctetString::from_der(e.extn_value.as_bytes()).ok())
        .map(|o| o.as_bytes().to_vec());
    let authority_key_id = exts
        .iter()
        .find(|e| e.extn_id == OID_AKI)
        .and_then(|e| {
            x509_cert::ext::pkix::AuthorityKeyIdentifier::from_der(e.extn_value.as_bytes()).ok()
        })
        .and_then(|a| a.key_identifier.map(|k| k.as_bytes().to_vec()));
    let spki_der = tbs
        .subject_public_key_info()
        .to_der()
        .map_err(|e| bad(e.to_string()))?;
    let key_algorithm = algorithm_of_spki(&spki_der);
    let key_type = match key_algorithm {
        Some(a) => describe_algorithm(a),
        None => tbs.subject_public_key_info().algorithm.oid.to_string(),
    };
    let subject_der = tbs.subject().to_der().map_err(|e| bad(e.to_string()))?;
    let issuer_der = tbs.issuer().to_der().map_err(|e| bad(e.to_string()))?;
    let self_signed = subject_der == issuer_der && {
        use x509_parser::prelude::FromDer;
        x509_parser::certificate::X509Certificate::from_der(der)
            .map(|(_, c)| {
                let oid = der::asn1::ObjectIdentifier::new(
                    &c.signature_algorithm.algorithm.to_id_string(),
                );
                match oid.map(|o| {
                    verify_known_signature(
                        &o,
                        c.public_key().raw,
                        c.tbs_certificate.as_ref(),
                        &c.signature_value.data,
                    )
                }) {
                    Ok(Ok(true)) => true,
                    Ok(Ok(false)) => c.verify_signature(None).is_ok(),
                    _ => false,
                }
            })
            .unwrap_or(false)
    };
    let fingerprint = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    Ok(CertInfo {
        der: der.to_vec(),
        serial_hex: hex_upper(tbs.serial_number().as_bytes(), ""),
        subject: tbs.subject().to_string(),
        issuer: tbs.issuer().to_string(),
        subject_der,
        issuer_der,
        not_before: tbs.validity().not_before.to_system_time(),
        not_after: tbs.validity().not_after.to_system_time(),
        sans,
        is_ca: usage.basic_constraints_ca.unwrap_or(false),
        key_usages: usage.key_usages.unwrap_or_default(),
        ext_key_usages: usage.ext_key_usages.unwrap_or_default(),
        spki_der,
        key_algorithm,
        key_type,
        sha256_fingerprint: hex_upper(fingerprint.as_ref(), ":"),
        subject_key_id,
        authority_key_id,
        self_signed,
    })
}

/// Decodes every certificate of a PEM chain, in order.
pub fn parse_chain(pem_text: &[u8]) -> Result<Vec<CertInfo>, InspectError> {
    chain_ders(pem_text)?
        .iter()
        .enumerate()
        .map(|(i, der)| parse_one(i, der))
        .collect()
}

/// Whether `key` is the private half of `leaf`'s public key.
pub fn key_matches_certificate(key: &PrivateKey, leaf: &CertInfo) -> bool {
    same_public_key(key.public_key_der(), &leaf.spki_der)
}
