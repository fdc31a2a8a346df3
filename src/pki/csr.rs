//! Building PKCS#10 certificate signing requests.
//!
//! The request is assembled with x509-cert's DER types and signed with the
//! key's aws-lc signer. rcgen is not used here because its subject type
//! holds one value per attribute type, while cert-manager subjects carry
//! lists (several O, OU, ...) and literal subjects may hold multi-valued
//! RDNs; both must reach the CA byte for byte.

use der::asn1::{Any, BitString, OctetString, SetOfVec};
use der::{Decode, Encode};
use x509_cert::attr::Attribute;
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{BasicConstraints, SubjectAltName};
use x509_cert::name::Name;
use x509_cert::request::{CertReq, CertReqInfo, Version};
use x509_cert::spki::SubjectPublicKeyInfoOwned;

use super::dn;
use super::key::PrivateKey;
use super::key::RsaDigest;
use super::rules::{
    CsrError, EncodedUsages, OID_BC, OID_EKU, OID_EXTENSION_REQUEST, OID_KU, OID_SAN,
};
use super::spec::{SanSpec, SubjectSpec, Usage};

/// Choices that change what a CSR carries beyond subject and SANs.
#[derive(Clone, Copy, Debug, Default)]
pub struct CsrOptions<'a> {
    /// Encode KeyUsage, ExtKeyUsage and BasicConstraints exactly as
    /// cert-manager derives them from `(spec.usages, spec.isCA)`. `None`
    /// leaves all three out, which cert-manager's webhook accepts for any
    /// usages.
    pub encode_usages: Option<(&'a [Usage], bool)>,
    /// Mark the SAN extension critical when the subject is empty, as
    /// RFC 5280 4.2.1.6 requires (SPIFFE identities have no subject).
    pub critical_san_when_subject_empty: bool,
    /// The digest of an RSA key's signature.
    pub rsa_digest: RsaDigest,
}

/// A signed request in both encodings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Csr {
    pub pem: String,
    pub der: Vec<u8>,
}

/// The subject as cert-manager encodes it (see [`super::dn`]): the literal
/// subject parsed as go-ldap reads it, or the fields in Go's
/// `pkix.Name.ToRDNSequence` order, values as PrintableString or
/// UTF8String exactly as Go chooses.
pub fn subject_name(subject: &SubjectSpec) -> Result<Name, CsrError> {
    let rdns = match &subject.literal {
        Some(literal) => {
            dn::parse_literal(literal).map_err(|reason| CsrError::LiteralSubject { reason })?
        }
        None => dn::fields_rdns(subject),
    };
    let der = dn::encode(&rdns).map_err(build_err)?;
    let name = Name::from_der(&der).map_err(build_err)?;
    // x509-cert keeps what it decodes; were it ever to reorder a SET, the
    // request would no longer match upstream's byte for byte.
    debug_assert_eq!(name.to_der().ok().as_deref(), Some(der.as_slice()));
    Ok(name)
}

fn build_err(e: impl std::fmt::Display) -> CsrError {
    CsrError::Build {
        reason: e.to_string(),
    }
}

pub(crate) fn extension<T: Encode>(
    oid: der::asn1::ObjectIdentifier,
    critical: bool,
    value: &T,
) -> Result<Extension, der::Error> {
    Ok(Extension {
        extn_id: oid,
        critical,
        extn_value: OctetString::new(value.to_der()?)?,
    })
}

/// The SANs as X.509 GeneralNames, each checked for what DER can encode
/// (publish encodes them before any key exists, to name a bad attribute).
pub fn san_general_names(sans: &SanSpec) -> Result<Vec<GeneralName>, CsrError> {
    let ia5 = |field: &'static str, v: &str| {
        der::asn1::Ia5String::new(v).map_err(|e| CsrError::Field {
            field,
            value: v.to_string(),
            reason: format!("must be ASCII (IA5String): {e}"),
        })
    };
    let mut names = Vec::new();
    for d in &sans.dns_names {
        names.push(GeneralName::DnsName(ia5("dns-names", d)?));
    }
    for e in &sans.emails {
        names.push(GeneralName::Rfc822Name(ia5("email-sans", e)?));
    }
    for ip in &sans.ip_addresses {
        names.push(GeneralName::from(*ip));
    }
    for u in &sans.uris {
        names.push(GeneralName::UniformResourceIdentifier(ia5("uri-sans", u)?));
    }
    Ok(names)
}

/// Builds and signs a CSR for `key`.
pub fn build_csr(
    key: &PrivateKey,
    subject: &SubjectSpec,
    sans: &SanSpec,
    options: &CsrOptions<'_>,
) -> Result<Csr, CsrError> {
    let name = subject_name(subject)?;
    let mut extensions = Vec::new();
    let general_names = san_general_names(sans)?;
    if !general_names.is_empty() {
        let critical = options.critical_san_when_subject_empty && name.is_empty();
        extensions
            .push(extension(OID_SAN, critical, &SubjectAltName(general_names)).map_err(build_err)?);
    }
    if let Some((usages, is_ca)) = options.encode_usages {
        let encoded = EncodedUsages::derive(usages, is_ca);
        // Criticality as Go's x509 writes it when cert-manager encodes
        // usages: KeyUsage and BasicConstraints critical, ExtKeyUsage not.
        if let Some(ku) = encoded.key_usage() {
            extensions.push(extension(OID_KU, true, &ku).map_err(build_err)?);
        }
        if let Some(eku) = encoded.extended_key_usage() {
            extensions.push(extension(OID_EKU, false, &eku).map_err(build_err)?);
        }
        let bc = BasicConstraints {
            ca: is_ca,
            path_len_constraint: None,
        };
        extensions.push(extension(OID_BC, true, &bc).map_err(build_err)?);
    }
    let mut attributes = SetOfVec::new();
    if !extensions.is_empty() {
        let mut values = SetOfVec::new();
        values
            .insert(Any::encode_from(&extensions).map_err(build_err)?)
            .map_err(build_err)?;
        attributes
            .insert(Attribute {
                oid: OID_EXTENSION_REQUEST,
                values,
            })
            .map_err(build_err)?;
    }
    let info = CertReqInfo {
        version: Version::V1,
        subject: name,
        public_key: SubjectPublicKeyInfoOwned::from_der(key.public_key_der()).map_err(build_err)?,
        attributes,
    };
    let tbs = info.to_der().map_err(build_err)?;
    let signature = key.sign_with(&tbs, options.rsa_digest)?;
    let req = CertReq {
        info,
        algorithm: key.signature_algorithm_id_with(options.rsa_digest),
        signature: BitString::from_bytes(&signature).map_err(build_err)?,
    };
    let der = req.to_der().map_err(build_err)?;
    let pem = pem::encode_config(
        &pem::Pem::new("CERTIFICATE REQUEST", der.clone()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    );
    Ok(Csr { pem, der })
}

#[cfg(test)]
mod tests {
    use super::super::rules::{RequestRuleError, check_request, parse_csr, verify_csr_signature};
    use super::super::spec::{Curve, KeyAlgorithm};
    use super::*;
    use der::Tagged;
    use std::net::IpAddr;

    fn ec_key() -> PrivateKey {
        PrivateKey::generate(KeyAlgorithm::Ecdsa(Curve::P256)).unwrap()
    }

    fn sans() -> SanSpec {
        SanSpec {
            dns_names: vec!["app.ns.svc".into(), "app".into()],
            ip_addresses: vec![
                "10.0.0.7".parse().unwrap(),
                "fd00::1".parse::<IpAddr>().unwrap(),
            ],
            uris: vec!["spiffe://cluster.local/ns/ns/sa/app".into()],
            emails: vec!["ops@example.com".into()],
        }
    }

    #[test]
    fn default_csr_has_subject_and_sans_but_no_usage_extensions() {
        let key = ec_key();
        let subject = SubjectSpec {
            common_name: Some("app".into()),
            organizations: vec!["Org B".into(), "Org A".into()],
            countries: vec!["DE".into()],
            serial_number: Some("1234".into()),
            ..Default::default()
        };
        let csr = build_csr(&key, &subject, &sans(), &CsrOptions::default()).unwrap();
        assert!(csr.pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----\n"));
        verify_csr_signature(csr.pem.as_bytes()).unwrap();
        let p = parse_csr(csr.pem.as_bytes()).unwrap();
        assert_eq!(p.der, csr.der);
        assert_eq!(p.subject_fields.common_name.as_deref(), Some("app"));
        assert_eq!(p.subject_fields.countries, vec!["DE"]);
        let mut orgs = p.subject_fields.organizations.clone();
        orgs.sort();
        assert_eq!(orgs, vec!["Org A", "Org B"], "both organizations survive");
        assert_eq!(p.subject_fields.serial_number.as_deref(), Some("1234"));
        // RFC 4514 lists the last RDN first: serialNumber, CN, O, C.
        assert_eq!(
            p.subject.to_ascii_lowercase(),
            "serialnumber=1234,cn=app,o=org a+o=org b,c=de"
        );
        let mut got = p.sans.clone();
        got.dns_names.sort();
        assert_eq!(got.dns_names, vec!["app", "app.ns.svc"]);
        assert_eq!(p.sans.ip_addresses, sans().ip_addresses);
        assert_eq!(p.sans.uris, sans().uris);
        assert_eq!(p.sans.emails, sans().emails);
        assert_eq!(p.extensions.len(), 1);
        assert_eq!(p.extensions[0].oid, "2.5.29.17");
        assert!(!p.extensions[0].critical);
        assert!(p.key_usages.is_none() && p.ext_key_usages.is_none());
        assert!(p.basic_constraints_ca.is_none());
        assert_eq!(p.key_algorithm, Some(KeyAlgorithm::Ecdsa(Curve::P256)));
        assert_eq!(p.spki_der, key.public_key_der());
        // Accepted whatever the usages, because it carries none.
        check_request(
            csr.pem.as_bytes(),
            &[Usage::ServerAuth, Usage::CodeSigning],
            true,
        )
        .unwrap();
    }

    #[test]
    fn encoded_usages_match_the_webhook_derivation() {
        let key = ec_key();
        let usages = [
            Usage::DigitalSignature,
            Usage::KeyEncipherment,
            Usage::ServerAuth,
        ];
        let opts = CsrOptions {
            encode_usages: Some((&usages, true)),
            critical_san_when_subject_empty: false,
            ..Default::default()
        };
        let csr = build_csr(&key, &SubjectSpec::default(), &sans(), &opts).unwrap();
        let p = parse_csr(&csr.der).unwrap();
        let ku: Vec<_> = p.key_usages.clone().unwrap().into_iter().collect();
        assert_eq!(
            ku,
            vec![
                Usage::DigitalSignature,
                Usage::KeyEncipherment,
                Usage::CertSign
            ]
        );
        let eku: Vec<_> = p.ext_key_usages.clone().unwrap().into_iter().collect();
        assert_eq!(eku, vec![Usage::ServerAuth]);
        assert_eq!(p.basic_constraints_ca, Some(true));
        assert!(p.extension("2.5.29.15").unwrap().critical);
        assert!(p.extension("2.5.29.19").unwrap().critical);
        assert!(!p.extension("2.5.29.37").unwrap().critical);
        check_request(csr.pem.as_bytes(), &usages, true).unwrap();
        // "signing" encodes the same bit as "digital signature".
        check_request(
            csr.pem.as_bytes(),
            &[Usage::Signing, Usage::KeyEncipherment, Usage::ServerAuth],
            true,
        )
        .unwrap();
    }

    #[test]
    fn webhook_rejects_each_mismatch() {
        let key = ec_key();
        let usages = [Usage::ServerAuth];
        let opts = CsrOptions {
            encode_usages: Some((&usages, false)),
            critical_san_when_subject_empty: false,
            ..Default::default()
        };
        let csr = build_csr(&key, &SubjectSpec::default(), &sans(), &opts).unwrap();
        let pem = csr.pem.as_bytes();
        check_request(pem, &usages, false).unwrap();

        let err = check_request(pem, &[Usage::ClientAuth], false).unwrap_err();
        assert!(
            matches!(err, RequestRuleError::UsagesMismatch { .. }),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("CSR has [server auth] but spec.usages asks for [client auth]"),
            "{err}"
        );
        // Empty spec.usages means digital signature + key encipherment.
        let err = check_request(pem, &[], false).unwrap_err();
        assert!(
            err.to_string()
                .contains("but spec.usages asks for [digital signature, key encipherment]"),
            "{err}"
        );
        // isCA adds cert sign to the derived set, so the usages differ too.
        let err = check_request(pem, &usages, true).unwrap_err();
        assert!(
            err.to_string().contains("[cert sign, server auth]"),
            "{err}"
        );

        // BasicConstraints alone: a CSR whose usages match but CA flag differs.
        let ca_usages = [Usage::CertSign, Usage::ServerAuth];
        let opts = CsrOptions {
            encode_usages: Some((&ca_usages, false)),
            critical_san_when_subject_empty: false,
            ..Default::default()
        };
        let csr = build_csr(&key, &SubjectSpec::default(), &sans(), &opts).unwrap();
        let err = check_request(csr.pem.as_bytes(), &[Usage::ServerAuth], true).unwrap_err();
        assert!(
            matches!(
                err,
                RequestRuleError::BasicConstraintsMismatch {
                    csr_ca: false,
                    spec_ca: true
                }
            ),
            "{err}"
        );

        // A tampered CSR fails the signature check.
        let mut der = csr.der.clone();
        let pos = der.windows(10).position(|w| w == b"app.ns.svc").unwrap();
        der[pos] = b'x';
        let tampered = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der));
        let err = check_request(tampered.as_bytes(), &ca_usages, false).unwrap_err();
        assert!(matches!(err, RequestRuleError::Signature { .. }), "{err}");

        let err = check_request(b"garbage", &[], false).unwrap_err();
        assert!(matches!(err, RequestRuleError::Parse(_)), "{err}");
    }

    #[test]
    fn san_is_critical_only_when_asked_and_subject_is_empty() {
        let key = ec_key();
        let spiffe = SanSpec {
            uris: vec!["spiffe://td/ns/a/sa/b".into()],
            ..Default::default()
        };
        let opts = CsrOptions {
            encode_usages: None,
            critical_san_when_subject_empty: true,
            ..Default::default()
        };
        let csr = build_csr(&key, &SubjectSpec::default(), &spiffe, &opts).unwrap();
        let p = parse_csr(&csr.der).unwrap();
        assert_eq!(p.subject, "");
        assert!(p.extension("2.5.29.17").unwrap().critical);

        let named = SubjectSpec {
            common_name: Some("x".into()),
            ..Default::default()
        };
        let csr = build_csr(&key, &named, &spiffe, &opts).unwrap();
        assert!(
            !parse_csr(&csr.der)
                .unwrap()
                .extension("2.5.29.17")
                .unwrap()
                .critical
        );
    }

    #[test]
    fn literal_subject_is_parsed_as_rfc4514() {
        let key = ec_key();
        let subject = SubjectSpec {
            literal: Some("CN=app,OU=a+OU=b,O=Example\\, Inc.,C=US".into()),
            // Ignored when literal is set.
            common_name: Some("ignored".into()),
            ..Default::default()
        };
        let csr = build_csr(&key, &subject, &SanSpec::default(), &CsrOptions::default()).unwrap();
        let p = parse_csr(&csr.der).unwrap();
        assert_eq!(p.subject_fields.common_name.as_deref(), Some("app"));
        assert_eq!(p.subject_fields.organizations, vec!["Example, Inc."]);
        assert_eq!(p.subject_fields.organizational_units.len(), 2);
        assert_eq!(p.subject_fields.countries, vec!["US"]);
        // Encoded order is the reverse of the string: C first.
        let name = Name::from_der(&p.subject_der).unwrap();
        assert_eq!(
            name.iter_rdn().next().unwrap().iter().next().unwrap().oid,
            crate::pki::rules::OID_C
        );
        // The CSR's subject is exactly what the dn module encodes.
        let rdns = dn::parse_literal("CN=app,OU=a+OU=b,O=Example\\, Inc.,C=US").unwrap();
        assert_eq!(p.subject_der, dn::encode(&rdns).unwrap());

        for bad in ["CN", "NOSUCHATTR=x", "CN=a,,O=b"] {
            let s = SubjectSpec {
                literal: Some(bad.into()),
                ..Default::default()
            };
            let err = build_csr(&key, &s, &SanSpec::default(), &CsrOptions::default()).unwrap_err();
            assert!(
                err.to_string().starts_with("literal-subject:"),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn field_errors_name_the_field() {
        let key = ec_key();
        let bad_dns = SanSpec {
            dns_names: vec!["bücher.example".into()],
            ..Default::default()
        };
        let err = build_csr(
            &key,
            &SubjectSpec::default(),
            &bad_dns,
            &CsrOptions::default(),
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("dns-names:"), "{err}");
    }

    #[test]
    fn non_ascii_values_use_utf8string() {
        let key = ec_key();
        let s = SubjectSpec {
            organizations: vec!["Bücher & Co".into()],
            ..Default::default()
        };
        let csr = build_csr(&key, &s, &SanSpec::default(), &CsrOptions::default()).unwrap();
        let p = parse_csr(&csr.der).unwrap();
        assert_eq!(p.subject_fields.organizations, vec!["Bücher & Co"]);
        let name = Name::from_der(&p.subject_der).unwrap();
        assert_eq!(
            name.iter().next().unwrap().value.tag(),
            der::Tag::Utf8String
        );
        // As Go, a country that is not PrintableString is a UTF8String
        // (upstream accepts it), and an empty value an empty PrintableString.
        let s = SubjectSpec {
            countries: vec!["Deutschländ".into(), String::new()],
            ..Default::default()
        };
        let csr = build_csr(&key, &s, &SanSpec::default(), &CsrOptions::default()).unwrap();
        let p = parse_csr(&csr.der).unwrap();
        let tags: Vec<der::Tag> = Name::from_der(&p.subject_der)
            .unwrap()
            .iter()
            .map(|atv| atv.value.tag())
            .collect();
        assert_eq!(tags, [der::Tag::PrintableString, der::Tag::Utf8String]);
    }

    #[test]
    fn csr_for_every_key_type_verifies() {
        for alg in [
            KeyAlgorithm::Rsa { bits: 2048 },
            KeyAlgorithm::Ecdsa(Curve::P384),
            KeyAlgorithm::Ecdsa(Curve::P521),
            KeyAlgorithm::Ed25519,
        ] {
            let key = PrivateKey::generate(alg).unwrap();
            let csr = build_csr(
                &key,
                &SubjectSpec::default(),
                &sans(),
                &CsrOptions::default(),
            )
            .unwrap();
            verify_csr_signature(&csr.der).unwrap_or_else(|e| panic!("{alg:?}: {e}"));
            assert_eq!(parse_csr(&csr.der).unwrap().key_algorithm, Some(alg));
        }
    }
}
