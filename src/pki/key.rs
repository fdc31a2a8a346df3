//! Private keys: generation, PEM in and out, and signing.
//!
//! aws-lc-rs does the cryptography. The canonical in-memory form is PKCS#8 v1
//! DER held in a [`Secret`]; PKCS#1 and SEC1 are converted on the way in and
//! out. No error or `Debug` output ever contains key bytes.

use std::fmt;

use aws_lc_rs::encoding::{AsDer, EcPrivateKeyRfc5915Der, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};
use der::asn1::{AnyRef, ObjectIdentifier};
use der::{Decode, Encode};
use pkcs8::PrivateKeyInfoRef;
use thiserror::Error;
use x509_cert::spki::AlgorithmIdentifierOwned;

use super::secret::Secret;
use super::spec::{Curve, KeyAlgorithm, KeyEncoding};

pub(crate) const OID_RSA_ENCRYPTION: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
pub(crate) const OID_EC_PUBLIC_KEY: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
pub(crate) const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
pub(crate) const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
pub(crate) const OID_P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
pub(crate) const OID_P521: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.35");

const OID_SHA256_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
const OID_SHA384_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.12");
const OID_SHA512_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.13");
const OID_ECDSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const OID_ECDSA_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
const OID_ECDSA_SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.4");

/// The RSA sizes cert-csi makes, as cert-manager allows them
/// (`pki.MinRSAKeySize`..=`pki.MaxRSAKeySize`).
pub const RSA_BITS: std::ops::RangeInclusive<u32> = 2048..=8192;

/// The RSA sizes aws-lc-rs generates itself. Others in [`RSA_BITS`] come
/// from the `rsa` crate: aws-lc rounds a size down to a multiple of 128
/// bits, where Go (and so cert-manager) makes a modulus of exactly the
/// size asked for.
const AWS_LC_RSA_SIZES: [(u32, KeySize); 4] = [
    (2048, KeySize::Rsa2048),
    (3072, KeySize::Rsa3072),
    (4096, KeySize::Rsa4096),
    (8192, KeySize::Rsa8192),
];

#[derive(Debug, Error)]
pub enum KeyError {
    #[error("key-size: RSA {bits} is outside 2048 to 8192 bits; use a size in that range")]
    UnsupportedRsaSize { bits: u32 },
    #[error("key generation failed for {algorithm}: the crypto library reported an error")]
    Generate { algorithm: String },
    #[error(
        "key-encoding: PKCS1 is only defined for RSA keys, but this key is {algorithm}; use PKCS8"
    )]
    Pkcs1NotRsa { algorithm: String },
    #[error("SEC1 (EC PRIVATE KEY) is only defined for ECDSA keys, but this key is {algorithm}")]
    Sec1NotEcdsa { algorithm: String },
    #[error(
        "private key PEM: no PEM block found; expected one of RSA PRIVATE KEY, PRIVATE KEY or EC PRIVATE KEY"
    )]
    NoPem,
    #[error(
        "private key PEM: block type {label:?} is not supported; expected RSA PRIVATE KEY (PKCS#1), PRIVATE KEY (PKCS#8) or EC PRIVATE KEY (SEC1)"
    )]
    UnsupportedPemLabel { label: String },
    #[error(
        "private key: the {format} structure is malformed or uses an unsupported algorithm ({reason})"
    )]
    Malformed {
        format: &'static str,
        reason: String,
    },
    #[error("signing failed with the {algorithm} key: the crypto library reported an error")]
    Sign { algorithm: String },
    #[error("converting the {algorithm} key for rcgen failed: {reason}")]
    Rcgen { algorithm: String, reason: String },
}

enum Signer {
    Rsa(aws_lc_rs::rsa::KeyPair),
    Ecdsa(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

/// A private key with its public half, able to sign.
pub struct PrivateKey {
    algorithm: KeyAlgorithm,
    pkcs8: Secret,
    spki: Vec<u8>,
    signer: Signer,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("algorithm", &self.algorithm)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Human-readable algorithm name used in errors and inspection ("RSA 2048",
/// "ECDSA P-256", "Ed25519").
pub fn describe_algorithm(algorithm: KeyAlgorithm) -> String {
    match algorithm {
        KeyAlgorithm::Rsa { bits } => format!("RSA {bits}"),
        KeyAlgorithm::Ecdsa(Curve::P256) => "ECDSA P-256".into(),
        KeyAlgorithm::Ecdsa(Curve::P384) => "ECDSA P-384".into(),
        KeyAlgorithm::Ecdsa(Curve::P521) => "ECDSA P-521".into(),
        KeyAlgorithm::Ed25519 => "Ed25519".into(),
    }
}

fn ecdsa_signing(curve: Curve) -> &'static signature::EcdsaSigningAlgorithm {
    // The digest follows the curve size, as cert-manager and Go do.
    match curve {
        Curve::P256 => &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        Curve::P384 => &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
        Curve::P521 => &signature::ECDSA_P521_SHA512_ASN1_SIGNING,
    }
}

fn malformed(format: &'static str, reason: impl fmt::Display) -> KeyError {
    KeyError::Malformed {
        format,
        reason: reason.to_string(),
    }
}

impl PrivateKey {
    /// Makes a new key. RSA sizes outside [`RSA_BITS`] are refused with an
    /// error naming `key-size`.
    pub fn generate(algorithm: KeyAlgorithm) -> Result<PrivateKey, KeyError> {
        let gen_err = || KeyError::Generate {
            algorithm: describe_algorithm(algorithm),
        };
        let pkcs8 = match algorithm {
            KeyAlgorithm::Rsa { bits } => {
                if !RSA_BITS.contains(&bits) {
                    return Err(KeyError::UnsupportedRsaSize { bits });
                }
                match AWS_LC_RSA_SIZES.iter().find(|(b, _)| *b == bits) {
                    Some((_, size)) => {
                        let pair =
                            aws_lc_rs::rsa::KeyPair::generate(*size).map_err(|_| gen_err())?;
                        let der: Pkcs8V1Der = pair.as_der().map_err(|_| gen_err())?;
                        Secret::new(der.as_ref().to_vec())
                    }
                    None => rsa_of_any_size(bits).ok_or_else(gen_err)?,
                }
            }
            KeyAlgorithm::Ecdsa(curve) => {
                let pair = EcdsaKeyPair::generate(ecdsa_signing(curve)).map_err(|_| gen_err())?;
                let doc = pair.to_pkcs8v1().map_err(|_| gen_err())?;
                Secret::new(doc.as_ref().to_vec())
            }
            KeyAlgorithm::Ed25519 => {
                let pair = Ed25519KeyPair::generate().map_err(|_| gen_err())?;
                // v1 (no embedded public key) is what OpenSSL and Go write,
                // so every consumer of tls.key can read it.
                let doc = pair.to_pkcs8v1().map_err(|_| gen_err())?;
                Secret::new(doc.as_ref().to_vec())
            }
        };
        PrivateKey::from_pkcs8_der(pkcs8.expose())
    }

    /// Loads a PKCS#8 v1 or v2 DER key (RSA, ECDSA P-256/384/521, Ed25519).
    pub fn from_pkcs8_der(der: &[u8]) -> Result<PrivateKey, KeyError> {
        let info = PrivateKeyInfoRef::from_der(der).map_err(|e| malformed("PKCS#8", e))?;
        let oid = info.algorithm.oid;
        if oid == OID_RSA_ENCRYPTION {
            let pair =
                aws_lc_rs::rsa::KeyPair::from_pkcs8(der).map_err(|e| malformed("PKCS#8 RSA", e))?;
            let spki = rsa_spki(&pair)?;
            let bits = rsa_bits(&spki).ok_or_else(|| malformed("PKCS#8 RSA", "no modulus"))?;
            Ok(PrivateKey {
                algorithm: KeyAlgorithm::Rsa { bits },
                pkcs8: Secret::new(der.to_vec()),
                spki,
                signer: Signer::Rsa(pair),
            })
        } else if oid == OID_EC_PUBLIC_KEY {
            let curve_oid: ObjectIdentifier = info
                .algorithm
                .parameters
                .as_ref()
                .ok_or_else(|| malformed("PKCS#8 EC", "no curve parameter"))?
                .decode_as()
                .map_err(|e| malformed("PKCS#8 EC", e))?;
            let curve = curve_from_oid(&curve_oid).ok_or_else(|| {
                malformed(
                    "PKCS#8 EC",
                    format!("curve {curve_oid} is not P-256, P-384 or P-521"),
                )
            })?;
            let pair = EcdsaKeyPair::from_pkcs8(ecdsa_signing(curve), der)
                .map_err(|e| malformed("PKCS#8 EC", e))?;
            let spki = pair
                .public_key()
                .as_der()
                .map(|d: PublicKeyX509Der| d.as_ref().to_vec())
                .map_err(|e| malformed("PKCS#8 EC", e))?;
            // Re-encode so that v2 input and SEC1-with-public-key variants all
            // become the same v1 form.
            let v1 = pair.to_pkcs8v1().map_err(|e| malformed("PKCS#8 EC", e))?;
            Ok(PrivateKey {
                algorithm: KeyAlgorithm::Ecdsa(curve),
                pkcs8: Secret::new(v1.as_ref().to_vec()),
                spki,
                signer: Signer::Ecdsa(pair),
            })
        } else if oid == OID_ED25519 {
            let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                .map_err(|e| malformed("PKCS#8 Ed25519", e))?;
            let spki = pair
                .public_key()
                .as_der()
                .map(|d: PublicKeyX509Der| d.as_ref().to_vec())
                .map_err(|e| malformed("PKCS#8 Ed25519", e))?;
            let v1 = pair
                .to_pkcs8v1()
                .map_err(|e| malformed("PKCS#8 Ed25519", e))?;
            Ok(PrivateKey {
                algorithm: KeyAlgorithm::Ed25519,
                pkcs8: Secret::new(v1.as_ref().to_vec()),
                spki,
                signer: Signer::Ed25519(pair),
            })
        } else {
            Err(malformed(
                "PKCS#8",
                format!("algorithm {oid} is not RSA, ECDSA or Ed25519"),
            ))
        }
    }

    /// Loads a PKCS#1 `RSAPrivateKey` DER.
    pub fn from_pkcs1_der(der: &[u8]) -> Result<PrivateKey, KeyError> {
        let pair =
            aws_lc_rs::rsa::KeyPair::from_der(der).map_err(|e| malformed("PKCS#1 RSA", e))?;
        let pkcs8: Pkcs8V1Der = pair.as_der().map_err(|e| malformed("PKCS#1 RSA", e))?;
        let spki = rsa_spki(&pair)?;
        let bits = rsa_bits(&spki).ok_or_else(|| malformed("PKCS#1 RSA", "no modulus"))?;
        Ok(PrivateKey {
            algorithm: KeyAlgorithm::Rsa { bits },
            pkcs8: Secret::new(pkcs8.as_ref().to_vec()),
            spki,
            signer: Signer::Rsa(pair),
        })
    }

    /// Loads a SEC1 `ECPrivateKey` DER (the `EC PRIVATE KEY` PEM block).
    pub fn from_sec1_der(der: &[u8]) -> Result<PrivateKey, KeyError> {
        // SEC1 names its curve inside; trying each supported curve lets
        // aws-lc do the parsing instead of a hand-written decoder.
        for curve in [Curve::P256, Curve::P384, Curve::P521] {
            if let Ok(pair) = EcdsaKeyPair::from_private_key_der(ecdsa_signing(curve), der) {
                let v1 = pair.to_pkcs8v1().map_err(|e| malformed("SEC1 EC", e))?;
                return PrivateKey::from_pkcs8_der(v1.as_ref());
            }
        }
        Err(malformed(
            "SEC1 EC",
            "not an ECPrivateKey on P-256, P-384 or P-521",
        ))
    }

    /// Loads the first private key PEM block: `RSA PRIVATE KEY` (PKCS#1),
    /// `PRIVATE KEY` (PKCS#8) or `EC PRIVATE KEY` (SEC1). Other blocks (for
    /// example `EC PARAMETERS` that `openssl ecparam` writes first) are skipped.
    pub fn from_pem(pem_bytes: &[u8]) -> Result<PrivateKey, KeyError> {
        let blocks = pem::parse_many(pem_bytes).map_err(|_| KeyError::NoPem)?;
        let mut first_label = None;
        for block in &blocks {
            // Keep the decoded DER in a Secret so it is zeroed when dropped.
            let der = Secret::new(block.contents().to_vec());
            match block.tag() {
                "PRIVATE KEY" => return PrivateKey::from_pkcs8_der(der.expose()),
                "RSA PRIVATE KEY" => return PrivateKey::from_pkcs1_der(der.expose()),
                "EC PRIVATE KEY" => return PrivateKey::from_sec1_der(der.expose()),
                "EC PARAMETERS" => continue,
                other => {
                    first_label.get_or_insert_with(|| other.to_string());
                }
            }
        }
        match first_label {
            Some(label) => Err(KeyError::UnsupportedPemLabel { label }),
            None => Err(KeyError::NoPem),
        }
    }

    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// The SubjectPublicKeyInfo DER of the public half.
    pub fn public_key_der(&self) -> &[u8] {
        &self.spki
    }

    /// The private key as DER in the given encoding.
    pub fn to_der(&self, encoding: KeyEncoding) -> Result<Secret, KeyError> {
        match encoding {
            KeyEncoding::Pkcs8 => Ok(self.pkcs8.clone()),
            KeyEncoding::Pkcs1 => {
                if !matches!(self.algorithm, KeyAlgorithm::Rsa { .. }) {
                    return Err(KeyError::Pkcs1NotRsa {
                        algorithm: describe_algorithm(self.algorithm),
                    });
                }
                // For rsaEncryption the PKCS#8 privateKey OCTET STRING holds
                // exactly the PKCS#1 RSAPrivateKey (RFC 8017 appendix A.1.2).
                let info = PrivateKeyInfoRef::from_der(self.pkcs8.expose())
                    .map_err(|e| malformed("PKCS#8", e))?;
                Ok(Secret::new(info.private_key.as_bytes().to_vec()))
            }
            KeyEncoding::Sec1 => match &self.signer {
                Signer::Ecdsa(pair) => {
                    let der: EcPrivateKeyRfc5915Der = pair
                        .private_key()
                        .as_der()
                        .map_err(|e| malformed("SEC1 EC", e))?;
                    Ok(Secret::new(der.as_ref().to_vec()))
                }
                _ => Err(KeyError::Sec1NotEcdsa {
                    algorithm: describe_algorithm(self.algorithm),
                }),
            },
        }
    }

    /// The private key as PEM: `RSA PRIVATE KEY` for PKCS1 (RSA only),
    /// `PRIVATE KEY` for PKCS8, `EC PRIVATE KEY` for SEC1 (ECDSA only).
    pub fn to_pem(&self, encoding: KeyEncoding) -> Result<Secret, KeyError> {
        let der = self.to_der(encoding)?;
        let label = match encoding {
            KeyEncoding::Pkcs1 => "RSA PRIVATE KEY",
            KeyEncoding::Pkcs8 => "PRIVATE KEY",
            KeyEncoding::Sec1 => "EC PRIVATE KEY",
        };
        let block = pem::Pem::new(label, der.expose().to_vec());
        let text = pem::encode_config(
            &block,
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        );
        // `block` owns a copy of the key; wipe it before it is freed.
        let mut contents = block.into_contents();
        zeroize::Zeroize::zeroize(&mut contents);
        Ok(Secret::from(text))
    }

    /// An rcgen key pair with the signature algorithm this key signs with
    /// (see [`PrivateKey::signature_algorithm_id`]), for code that builds
    /// certificates through rcgen (for example throwaway TLS identities).
    pub fn rcgen_key_pair(&self) -> Result<rcgen::KeyPair, KeyError> {
        let alg: &'static rcgen::SignatureAlgorithm = match self.algorithm {
            KeyAlgorithm::Rsa { bits } if bits >= 4096 => &rcgen::PKCS_RSA_SHA512,
            KeyAlgorithm::Rsa { bits } if bits >= 3072 => &rcgen::PKCS_RSA_SHA384,
            KeyAlgorithm::Rsa { .. } => &rcgen::PKCS_RSA_SHA256,
            KeyAlgorithm::Ecdsa(Curve::P256) => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlgorithm::Ecdsa(Curve::P384) => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyAlgorithm::Ecdsa(Curve::P521) => &rcgen::PKCS_ECDSA_P521_SHA512,
            KeyAlgorithm::Ed25519 => &rcgen::PKCS_ED25519,
        };
        let der = rustls_pki_types::PrivatePkcs8KeyDer::from(self.pkcs8.expose());
        rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, alg).map_err(|e| KeyError::Rcgen {
            algorithm: describe_algorithm(self.algorithm),
            reason: e.to_string(),
        })
    }

    /// The AlgorithmIdentifier of signatures made by [`PrivateKey::sign`].
    /// The digest follows the key, as cert-manager's CA signer does: RSA
    /// ≥ 4096 bits → SHA-512, ≥ 3072 → SHA-384, else SHA-256; ECDSA by curve;
    /// Ed25519 is pure.
    pub fn signature_algorithm_id(&self) -> AlgorithmIdentifierOwned {
        self.signature_algorithm_id_with(RsaDigest::ByKeySize)
    }

    /// Like [`PrivateKey::signature_algorithm_id`], with `rsa` choosing the
    /// digest of RSA signatures.
    pub fn signature_algorithm_id_with(&self, rsa: RsaDigest) -> AlgorithmIdentifierOwned {
        let by_size = rsa == RsaDigest::ByKeySize;
        let (oid, null_params) = match self.algorithm {
            KeyAlgorithm::Rsa { bits } if by_size && bits >= 4096 => (OID_SHA512_WITH_RSA, true),
            KeyAlgorithm::Rsa { bits } if by_size && bits >= 3072 => (OID_SHA384_WITH_RSA, true),
            KeyAlgorithm::Rsa { .. } => (OID_SHA256_WITH_RSA, true),
            KeyAlgorithm::Ecdsa(Curve::P256) => (OID_ECDSA_SHA256, false),
            KeyAlgorithm::Ecdsa(Curve::P384) => (OID_ECDSA_SHA384, false),
            KeyAlgorithm::Ecdsa(Curve::P521) => (OID_ECDSA_SHA512, false),
            KeyAlgorithm::Ed25519 => (OID_ED25519, false),
        };
        AlgorithmIdentifierOwned {
            oid,
            // RFC 4055 requires an explicit NULL for the RSA PKCS#1 v1.5
            // identifiers; RFC 5758 and RFC 8410 require it absent otherwise.
            parameters: null_params.then(|| AnyRef::NULL.into()),
        }
    }

    /// Signs `message` with the algorithm of [`PrivateKey::signature_algorithm_id`].
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.sign_with(message, RsaDigest::ByKeySize)
    }

    /// Signs `message` with the algorithm of
    /// [`PrivateKey::signature_algorithm_id_with`] for `rsa`.
    pub fn sign_with(&self, message: &[u8], rsa: RsaDigest) -> Result<Vec<u8>, KeyError> {
        let by_size = rsa == RsaDigest::ByKeySize;
        let err = || KeyError::Sign {
            algorithm: describe_algorithm(self.algorithm),
        };
        let rng = SystemRandom::new();
        match &self.signer {
            Signer::Rsa(pair) => {
                let padding: &'static dyn signature::RsaEncoding = match self.algorithm {
                    KeyAlgorithm::Rsa { bits } if by_size && bits >= 4096 => {
                        &signature::RSA_PKCS1_SHA512
                    }
                    KeyAlgorithm::Rsa { bits } if by_size && bits >= 3072 => {
                        &signature::RSA_PKCS1_SHA384
                    }
                    _ => &signature::RSA_PKCS1_SHA256,
                };
                let mut sig = vec![0u8; pair.public_modulus_len()];
                pair.sign(padding, &rng, message, &mut sig)
                    .map_err(|_| err())?;
                Ok(sig)
            }
            Signer::Ecdsa(pair) => Ok(pair
                .sign(&rng, message)
                .map_err(|_| err())?
                .as_ref()
                .to_vec()),
            Signer::Ed25519(pair) => Ok(pair.sign(message).as_ref().to_vec()),
        }
    }
}

/// The digest of an RSA signature. ECDSA and Ed25519 always follow the key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RsaDigest {
    /// By key size, as cert-manager signs Certificates' CSRs and
    /// certificates: ≥ 4096 bits → SHA-512, ≥ 3072 → SHA-384, else SHA-256.
    #[default]
    ByKeySize,
    /// SHA-256 whatever the size: Go's `x509.CreateCertificateRequest`
    /// default, and so what csi-driver and csi-driver-spiffe send.
    Sha256,
}

/// An RSA key of a size aws-lc does not make, from the `rsa` crate, whose
/// generator gives a modulus of exactly `bits` bits (two primes, e = 65537,
/// as Go's rsa.GenerateKey). Returns the PKCS#8 DER.
fn rsa_of_any_size(bits: u32) -> Option<Secret> {
    use rsa::pkcs8::EncodePrivateKey;
    let key = rsa::PrivateKey::new(&mut AwsLcRandom, bits as usize).ok()?;
    let der = key.to_pkcs8_der().ok()?;
    Some(Secret::new(der.as_bytes().to_vec()))
}

/// aws-lc's system random generator as a `rand_core` generator, so that the
/// `rsa` crate draws from the same source as every other key cert-csi makes.
struct AwsLcRandom;

impl rsa::rand_core::TryRng for AwsLcRandom {
    type Error = RandomError;

    fn try_next_u32(&mut self) -> Result<u32, RandomError> {
        let mut b = [0u8; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> Result<u64, RandomError> {
        let mut b = [0u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), RandomError> {
        aws_lc_rs::rand::fill(dst).map_err(|_| RandomError)
    }
}

impl rsa::rand_core::TryCryptoRng for AwsLcRandom {}

#[derive(Debug, Error)]
#[error("the system random generator failed")]
struct RandomError;

/// The exact bit length of the modulus of an RSA SubjectPublicKeyInfo (a
/// byte count would call a 2049-bit key 2056 bits).
fn rsa_bits(spki_der: &[u8]) -> Option<u32> {
    use rsa::pkcs8::DecodePublicKey;
    use rsa::traits::PublicKeyParts;
    let key = rsa::PublicKey::from_public_key_der(spki_der).ok()?;
    Some(key.n().bit_width())
}

fn rsa_spki(pair: &aws_lc_rs::rsa::KeyPair) -> Result<Vec<u8>, KeyError> {
    pair.public_key()
        .as_der()
        .map(|d: PublicKeyX509Der| d.as_ref().to_vec())
        .map_err(|e| malformed("RSA public key", e))
}

pub(crate) fn curve_from_oid(oid: &ObjectIdentifier) -> Option<Curve> {
    if *oid == OID_P256 {
        Some(Curve::P256)
    } else if *oid == OID_P384 {
        Some(Curve::P384)
    } else if *oid == OID_P521 {
        Some(Curve::P521)
    } else {
        None
    }
}

/// The key algorithm of a SubjectPublicKeyInfo DER, or `None` when it is not
/// one cert-csi knows.
pub fn algorithm_of_spki(spki_der: &[u8]) -> Option<KeyAlgorithm> {
    let spki = x509_cert::spki::SubjectPublicKeyInfoRef::from_der(spki_der).ok()?;
    let oid = spki.algorithm.oid;
    if oid == OID_RSA_ENCRYPTION {
        aws_lc_rs::rsa::PublicKey::from_der(spki.subject_public_key.raw_bytes()).ok()?;
        Some(KeyAlgorithm::Rsa {
            bits: rsa_bits(spki_der)?,
        })
    } else if oid == OID_EC_PUBLIC_KEY {
        let curve: ObjectIdentifier = spki.algorithm.parameters?.decode_as().ok()?;
        curve_from_oid(&curve).map(KeyAlgorithm::Ecdsa)
    } else if oid == OID_ED25519 {
        Some(KeyAlgorithm::Ed25519)
    } else {
        None
    }
}

/// Whether two SubjectPublicKeyInfo DERs hold the same key. Compares the
/// algorithm OID and key bits rather than raw bytes, so an absent and an
/// explicit NULL parameter (both seen in the wild for RSA) still match.
pub fn same_public_key(a: &[u8], b: &[u8]) -> bool {
    use x509_cert::spki::SubjectPublicKeyInfoRef;
    match (
        SubjectPublicKeyInfoRef::from_der(a),
        SubjectPublicKeyInfoRef::from_der(b),
    ) {
        (Ok(a), Ok(b)) => {
            a.algorithm.oid == b.algorithm.oid
                && a.subject_public_key.raw_bytes() == b.subject_public_key.raw_bytes()
                && (a.algorithm.oid != OID_EC_PUBLIC_KEY
                    || a.algorithm.parameters.map(|p| p.to_der().ok())
                        == b.algorithm.parameters.map(|p| p.to_der().ok()))
        }
        _ => false,
    }
}

/// Verifies `signature` over `message` with the key in `spki_der`, for the
/// signature algorithms cert-csi and cert-manager produce. x509-parser's
/// verifier lacks ECDSA with SHA-512 (P-521), so aws-lc is called directly
/// for these; `Ok(false)` means the algorithm is not one of them.
pub(crate) fn verify_known_signature(
    sig_alg_oid: &ObjectIdentifier,
    spki_der: &[u8],
    message: &[u8],
    signature_bytes: &[u8],
) -> Result<bool, String> {
    use aws_lc_rs::signature::{UnparsedPublicKey, VerificationAlgorithm};
    let spki =
        x509_cert::spki::SubjectPublicKeyInfoRef::from_der(spki_der).map_err(|e| e.to_string())?;
    let curve = if spki.algorithm.oid == OID_EC_PUBLIC_KEY {
        spki.algorithm
            .parameters
            .and_then(|p| p.decode_as::<ObjectIdentifier>().ok())
            .and_then(|o| curve_from_oid(&o))
    } else {
        None
    };
    let alg: &'static dyn VerificationAlgorithm = match (*sig_alg_oid, curve) {
        (o, _) if o == OID_SHA256_WITH_RSA => &signature::RSA_PKCS1_2048_8192_SHA256,
        (o, _) if o == OID_SHA384_WITH_RSA => &signature::RSA_PKCS1_2048_8192_SHA384,
        (o, _) if o == OID_SHA512_WITH_RSA => &signature::RSA_PKCS1_2048_8192_SHA512,
        (o, Some(Curve::P256)) if o == OID_ECDSA_SHA256 => &signature::ECDSA_P256_SHA256_ASN1,
        (o, Some(Curve::P256)) if o == OID_ECDSA_SHA384 => &signature::ECDSA_P256_SHA384_ASN1,
        (o, Some(Curve::P256)) if o == OID_ECDSA_SHA512 => &signature::ECDSA_P256_SHA512_ASN1,
        (o, Some(Curve::P384)) if o == OID_ECDSA_SHA256 => &signature::ECDSA_P384_SHA256_ASN1,
        (o, Some(Curve::P384)) if o == OID_ECDSA_SHA384 => &signature::ECDSA_P384_SHA384_ASN1,
        (o, Some(Curve::P384)) if o == OID_ECDSA_SHA512 => &signature::ECDSA_P384_SHA512_ASN1,
        (o, Some(Curve::P521)) if o == OID_ECDSA_SHA256 => &signature::ECDSA_P521_SHA256_ASN1,
        (o, Some(Curve::P521)) if o == OID_ECDSA_SHA384 => &signature::ECDSA_P521_SHA384_ASN1,
        (o, Some(Curve::P521)) if o == OID_ECDSA_SHA512 => &signature::ECDSA_P521_SHA512_ASN1,
        (o, _) if o == OID_ED25519 => &signature::ED25519,
        _ => return Ok(false),
    };
    UnparsedPublicKey::new(alg, spki.subject_public_key.raw_bytes())
        .verify(message, signature_bytes)
        .map_err(|_| "the signature does not match the key".to_string())?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem_label(secret: &Secret) -> String {
        pem::parse(secret.expose()).unwrap().tag().to_string()
    }

    #[test]
    fn generates_each_ec_and_ed_algorithm_and_round_trips_pkcs8() {
        for alg in [
            KeyAlgorithm::Ecdsa(Curve::P256),
            KeyAlgorithm::Ecdsa(Curve::P384),
            KeyAlgorithm::Ecdsa(Curve::P521),
            KeyAlgorithm::Ed25519,
        ] {
            let key = PrivateKey::generate(alg).unwrap();
            assert_eq!(key.algorithm(), alg);
            assert_eq!(algorithm_of_spki(key.public_key_der()), Some(alg));
            let pem = key.to_pem(KeyEncoding::Pkcs8).unwrap();
            assert_eq!(pem_label(&pem), "PRIVATE KEY");
            let back = PrivateKey::from_pem(pem.expose()).unwrap();
            assert_eq!(back.algorithm(), alg);
            assert_eq!(back.public_key_der(), key.public_key_der());
            let err = key.to_pem(KeyEncoding::Pkcs1).unwrap_err();
            assert!(
                matches!(err, KeyError::Pkcs1NotRsa { .. }),
                "{alg:?}: {err}"
            );
            assert!(err.to_string().contains("key-encoding"));
        }
    }

    #[test]
    fn rsa_2048_round_trips_through_pkcs1_and_pkcs8() {
        let key = PrivateKey::generate(KeyAlgorithm::Rsa { bits: 2048 }).unwrap();
        assert_eq!(key.algorithm(), KeyAlgorithm::Rsa { bits: 2048 });
        let pkcs1 = key.to_pem(KeyEncoding::Pkcs1).unwrap();
        assert_eq!(pem_label(&pkcs1), "RSA PRIVATE KEY");
        let pkcs8 = key.to_pem(KeyEncoding::Pkcs8).unwrap();
        assert_eq!(pem_label(&pkcs8), "PRIVATE KEY");
        let from1 = PrivateKey::from_pem(pkcs1.expose()).unwrap();
        let from8 = PrivateKey::from_pem(pkcs8.expose()).unwrap();
        assert_eq!(from1.public_key_der(), key.public_key_der());
        assert_eq!(from8.public_key_der(), key.public_key_der());
        // The PKCS#1 written from a PKCS#1-loaded key is byte-identical.
        assert_eq!(from1.to_pem(KeyEncoding::Pkcs1).unwrap(), pkcs1);
    }

    #[test]
    fn ecdsa_round_trips_through_sec1_and_only_ecdsa_has_it() {
        for curve in [Curve::P256, Curve::P384, Curve::P521] {
            let key = PrivateKey::generate(KeyAlgorithm::Ecdsa(curve)).unwrap();
            let sec1 = key.to_pem(KeyEncoding::Sec1).unwrap();
            assert_eq!(pem_label(&sec1), "EC PRIVATE KEY");
            let back = PrivateKey::from_pem(sec1.expose()).unwrap();
            assert_eq!(back.public_key_der(), key.public_key_der());
            assert_eq!(back.to_pem(KeyEncoding::Sec1).unwrap(), sec1);
        }
        for alg in [KeyAlgorithm::Ed25519, KeyAlgorithm::Rsa { bits: 2048 }] {
            let key = PrivateKey::generate(alg).unwrap();
            let err = key.to_der(KeyEncoding::Sec1).unwrap_err();
            assert!(matches!(err, KeyError::Sec1NotEcdsa { .. }), "{err}");
        }
    }

    #[test]
    fn rsa_3072_generates_and_signs_with_sha384() {
        let key = PrivateKey::generate(KeyAlgorithm::Rsa { bits: 3072 }).unwrap();
        assert_eq!(key.algorithm(), KeyAlgorithm::Rsa { bits: 3072 });
        assert_eq!(key.signature_algorithm_id().oid, OID_SHA384_WITH_RSA);
        let sig = key.sign(b"hello").unwrap();
        assert_eq!(sig.len(), 384);
    }

    #[test]
    fn rsa_of_any_size_in_range_has_exactly_that_many_bits() {
        // 2049 is odd and not a multiple of 8; aws-lc would round it down.
        let key = PrivateKey::generate(KeyAlgorithm::Rsa { bits: 2049 }).unwrap();
        assert_eq!(key.algorithm(), KeyAlgorithm::Rsa { bits: 2049 });
        let pkcs1 = key.to_pem(KeyEncoding::Pkcs1).unwrap();
        let back = PrivateKey::from_pem(pkcs1.expose()).unwrap();
        assert_eq!(back.algorithm(), KeyAlgorithm::Rsa { bits: 2049 });
        assert_eq!(back.public_key_der(), key.public_key_der());
        assert_eq!(
            algorithm_of_spki(key.public_key_der()),
            Some(KeyAlgorithm::Rsa { bits: 2049 })
        );
        // It signs, and the signature verifies with the public key.
        let sig = key.sign(b"hello").unwrap();
        assert!(
            verify_known_signature(
                &key.signature_algorithm_id().oid,
                key.public_key_der(),
                b"hello",
                &sig
            )
            .unwrap()
        );
    }

    #[test]
    fn unsupported_rsa_sizes_are_refused_with_the_field_name() {
        for bits in [1024, 2047, 8193, 16384] {
            let err = PrivateKey::generate(KeyAlgorithm::Rsa { bits }).unwrap_err();
            assert!(matches!(err, KeyError::UnsupportedRsaSize { bits: b } if b == bits));
            assert!(err.to_string().starts_with("key-size:"), "{err}");
        }
    }

    #[test]
    fn sec1_ec_private_key_is_accepted() {
        // A SEC1 key made by aws-lc itself (what `openssl ecparam -genkey` writes).
        let key = PrivateKey::generate(KeyAlgorithm::Ecdsa(Curve::P384)).unwrap();
        let Signer::Ecdsa(pair) = &key.signer else {
            unreachable!()
        };
        let sec1 =
            AsDer::<aws_lc_rs::encoding::EcPrivateKeyRfc5915Der>::as_der(&pair.private_key())
                .unwrap();
        let pem_text = pem::encode(&pem::Pem::new("EC PRIVATE KEY", sec1.as_ref().to_vec()));
        let with_params = format!(
            "-----BEGIN EC PARAMETERS-----\nBgUrgQQAIg==\n-----END EC PARAMETERS-----\n{pem_text}"
        );
        let back = PrivateKey::from_pem(with_params.as_bytes()).unwrap();
        assert_eq!(back.algorithm(), KeyAlgorithm::Ecdsa(Curve::P384));
        assert_eq!(back.public_key_der(), key.public_key_der());
    }

    #[test]
    fn bad_pem_errors_name_the_problem_without_key_bytes() {
        assert!(matches!(
            PrivateKey::from_pem(b"not pem"),
            Err(KeyError::NoPem)
        ));
        let cert = pem::encode(&pem::Pem::new("CERTIFICATE", vec![1, 2, 3]));
        let err = PrivateKey::from_pem(cert.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("\"CERTIFICATE\""), "{err}");
        let junk = pem::encode(&pem::Pem::new(
            "PRIVATE KEY",
            vec![0x30, 0x03, 0x02, 0x01, 0x00],
        ));
        let err = PrivateKey::from_pem(junk.as_bytes()).unwrap_err();
        assert!(matches!(err, KeyError::Malformed { .. }), "{err}");
    }

    #[test]
    fn debug_output_is_redacted() {
        let key = PrivateKey::generate(KeyAlgorithm::Ed25519).unwrap();
        let dbg = format!("{key:?}");
        assert!(
            dbg.contains("<redacted>") && dbg.contains("Ed25519"),
            "{dbg}"
        );
        let pem = key.to_pem(KeyEncoding::Pkcs8).unwrap();
        let body: String = pem
            .expose_str()
            .unwrap()
            .lines()
            .nth(1)
            .unwrap()
            .to_string();
        assert!(!dbg.contains(&body));
    }

    #[test]
    fn signatures_verify_with_the_public_key() {
        use aws_lc_rs::signature::{UnparsedPublicKey, VerificationAlgorithm};
        let cases: [(KeyAlgorithm, &'static dyn VerificationAlgorithm); 3] = [
            (
                KeyAlgorithm::Ecdsa(Curve::P256),
                &signature::ECDSA_P256_SHA256_ASN1,
            ),
            (
                KeyAlgorithm::Ecdsa(Curve::P521),
                &signature::ECDSA_P521_SHA512_ASN1,
            ),
            (KeyAlgorithm::Ed25519, &signature::ED25519),
        ];
        for (alg, verify) in cases {
            let key = PrivateKey::generate(alg).unwrap();
            let sig = key.sign(b"message").unwrap();
            let spki =
                x509_cert::spki::SubjectPublicKeyInfoRef::from_der(key.public_key_der()).unwrap();
            let pk = UnparsedPublicKey::new(verify, spki.subject_public_key.raw_bytes());
            pk.verify(b"message", &sig).unwrap();
            assert!(pk.verify(b"other", &sig).is_err());
        }
    }

    #[test]
    fn rcgen_key_pair_has_the_same_public_key() {
        use rcgen::PublicKeyData;
        let key = PrivateKey::generate(KeyAlgorithm::Ecdsa(Curve::P256)).unwrap();
        let kp = key.rcgen_key_pair().unwrap();
        assert_eq!(kp.subject_public_key_info(), key.public_key_der());
    }

    #[test]
    fn same_public_key_distinguishes_keys() {
        let a = PrivateKey::generate(KeyAlgorithm::Ecdsa(Curve::P256)).unwrap();
        let b = PrivateKey::generate(KeyAlgorithm::Ecdsa(Curve::P256)).unwrap();
        assert!(same_public_key(a.public_key_der(), a.public_key_der()));
        assert!(!same_public_key(a.public_key_der(), b.public_key_der()));
        assert!(!same_public_key(a.public_key_der(), b"junk"));
    }
}
