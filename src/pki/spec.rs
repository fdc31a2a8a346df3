//! The vocabulary shared by volume attributes, Certificates and the signer:
//! what key to make, which usages to ask for, and what names to put in a CSR.
//! These are plain data; parsing lives in `volume` and `api`, crypto in `pki`.

use std::fmt;
use std::net::IpAddr;

/// Key algorithm and size, already validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyAlgorithm {
    /// RSA with a modulus of `bits` (2048..=8192).
    Rsa {
        bits: u32,
    },
    Ecdsa(Curve),
    Ed25519,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Curve {
    P256,
    P384,
    P521,
}

/// PEM encoding of the private key file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyEncoding {
    /// `RSA PRIVATE KEY` (RFC 8017). Only valid for RSA.
    Pkcs1,
    /// `PRIVATE KEY` (RFC 5208).
    Pkcs8,
    /// `EC PRIVATE KEY` (SEC1, RFC 5915). Only valid for ECDSA; it is what
    /// cert-manager writes for an ECDSA Certificate with `encoding: PKCS1`.
    Sec1,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeySpec {
    pub algorithm: KeyAlgorithm,
    pub encoding: KeyEncoding,
}

/// A cert-manager key usage, by its API name (`spec.usages[]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Usage {
    Signing,
    DigitalSignature,
    ContentCommitment,
    KeyEncipherment,
    KeyAgreement,
    DataEncipherment,
    CertSign,
    CrlSign,
    EncipherOnly,
    DecipherOnly,
    Any,
    ServerAuth,
    ClientAuth,
    CodeSigning,
    EmailProtection,
    SMime,
    IpsecEndSystem,
    IpsecTunnel,
    IpsecUser,
    Timestamping,
    OcspSigning,
    MicrosoftSgc,
    NetscapeSgc,
}

impl Usage {
    /// Every usage with its cert-manager API name.
    pub const ALL: [(Usage, &'static str); 23] = [
        (Usage::Signing, "signing"),
        (Usage::DigitalSignature, "digital signature"),
        (Usage::ContentCommitment, "content commitment"),
        (Usage::KeyEncipherment, "key encipherment"),
        (Usage::KeyAgreement, "key agreement"),
        (Usage::DataEncipherment, "data encipherment"),
        (Usage::CertSign, "cert sign"),
        (Usage::CrlSign, "crl sign"),
        (Usage::EncipherOnly, "encipher only"),
        (Usage::DecipherOnly, "decipher only"),
        (Usage::Any, "any"),
        (Usage::ServerAuth, "server auth"),
        (Usage::ClientAuth, "client auth"),
        (Usage::CodeSigning, "code signing"),
        (Usage::EmailProtection, "email protection"),
        (Usage::SMime, "s/mime"),
        (Usage::IpsecEndSystem, "ipsec end system"),
        (Usage::IpsecTunnel, "ipsec tunnel"),
        (Usage::IpsecUser, "ipsec user"),
        (Usage::Timestamping, "timestamping"),
        (Usage::OcspSigning, "ocsp signing"),
        (Usage::MicrosoftSgc, "microsoft sgc"),
        (Usage::NetscapeSgc, "netscape sgc"),
    ];

    /// Parses an API name exactly as cert-manager spells it.
    pub fn from_name(name: &str) -> Option<Usage> {
        Self::ALL.iter().find(|(_, n)| *n == name).map(|(u, _)| *u)
    }

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(u, _)| *u == self)
            .map(|(_, n)| *n)
            .expect("every usage is listed in ALL")
    }

    /// cert-manager's default when `spec.usages` is empty.
    pub fn defaults() -> Vec<Usage> {
        vec![Usage::DigitalSignature, Usage::KeyEncipherment]
    }
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The subject of a CSR: either an RFC 4514 string taken as is, or fields.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubjectSpec {
    /// When set, every other field is ignored (cert-manager's literalSubject).
    pub literal: Option<String>,
    pub common_name: Option<String>,
    pub organizations: Vec<String>,
    pub organizational_units: Vec<String>,
    pub countries: Vec<String>,
    pub provinces: Vec<String>,
    pub localities: Vec<String>,
    pub street_addresses: Vec<String>,
    pub postal_codes: Vec<String>,
    pub serial_number: Option<String>,
}

/// Subject alternative names, already validated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SanSpec {
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    pub uris: Vec<String>,
    pub emails: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_names_round_trip_and_are_unique() {
        for (usage, name) in Usage::ALL {
            assert_eq!(Usage::from_name(name), Some(usage));
            assert_eq!(usage.name(), name);
        }
        let mut names: Vec<_> = Usage::ALL.iter().map(|(_, n)| *n).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Usage::ALL.len());
        assert_eq!(
            Usage::from_name("Server Auth"),
            None,
            "names are case-sensitive upstream"
        );
    }
}
