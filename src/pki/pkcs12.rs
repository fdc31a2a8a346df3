//! PKCS#12 (PFX) files in the four profiles cert-manager offers, laid out
//! the way its encoder (go-pkcs12, used by cert-manager and csi-driver)
//! lays them out, so a Java or OpenSSL reader sees the same file from
//! cert-csi as from upstream.
//!
//! | profile | certificates | private key | MAC |
//! |---|---|---|---|
//! | LegacyRC2 (default) | PBE-SHA1-RC2-40 | PBE-SHA1-3DES | HMAC-SHA1, 1 iteration |
//! | LegacyDES | PBE-SHA1-3DES | PBE-SHA1-3DES | HMAC-SHA1, 1 iteration |
//! | Modern2023 | PBES2 (PBKDF2-SHA256, AES-256-CBC) | the same | HMAC-SHA256, 2048 iterations |
//! | Modern2026 | PBES2 (PBKDF2-SHA256, AES-256-CBC) | the same | PBMAC1 (PBKDF2-SHA256, HMAC-SHA256) |
//!
//! Encryption always uses 2048 iterations; salts are 8 bytes for the legacy
//! profiles and 16 for the modern ones.
//!
//! A keystore holds two safes: the certificates (encrypted), then the
//! shrouded key (in plain data). The key bag and the leaf's certificate bag
//! carry only a localKeyId (the leaf's SHA-1 fingerprint); CA bags carry an
//! empty attribute set. No friendlyName is written, so Java names the entry
//! "1", as it does for upstream's files. A truststore holds one encrypted
//! safe of certificate bags marked trusted for Java, each named by its
//! subject.
//!
//! p12-keystore, the high-level crate, applies one algorithm to both safes
//! and always writes friendly names, so it cannot express these profiles.
//! This module therefore assembles the file from RustCrypto's typed PKCS#12,
//! CMS and X.509 structures, with RustCrypto's PKCS#12 key derivation and
//! block ciphers and aws-lc-rs for PBKDF2, HMAC and randomness.

use std::num::NonZeroU32;

use aws_lc_rs::{digest, hmac, pbkdf2, rand as aws_rand};
use cbc::cipher::{BlockModeEncrypt, KeyIvInit, block_padding::Pkcs7};
use cms::content_info::{CmsVersion, ContentInfo};
use cms::encrypted_data::EncryptedData;
use cms::enveloped_data::EncryptedContentInfo;
use der::asn1::{BmpString, ObjectIdentifier, OctetString, SetOfVec};
use der::{Any, Decode, Encode};
use pkcs12::pbe_params::{EncryptedPrivateKeyInfo, Pbes2Params, Pbkdf2Params, Pkcs12PbeParams};
use pkcs12::{CertBag, DigestInfo, MacData, Pfx, SafeBag, kdf};
use thiserror::Error;
use x509_cert::attr::{Attribute, Attributes};
use x509_cert::spki::AlgorithmIdentifierOwned;

const OID_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1");
const OID_ENCRYPTED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.6");
const OID_SHROUDED_KEY_BAG: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.12.10.1.2");
const OID_CERT_BAG: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.12.10.1.3");
const OID_X509_CERTIFICATE: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.22.1");
const OID_FRIENDLY_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.20");
const OID_LOCAL_KEY_ID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.21");
/// Oracle's "trusted key usage" bag attribute: Java 8+ reads a certificate
/// bag carrying it as a trustedCertEntry.
const OID_JAVA_TRUSTED_USAGE: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("2.16.840.1.113894.746875.1.1");
const OID_ANY_EXTENDED_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37.0");
const OID_PBE_SHA1_3DES: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.12.1.3");
const OID_PBE_SHA1_RC2_40: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.12.1.6");
const OID_PBES2: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.5.13");
const OID_PBKDF2: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.5.12");
const OID_PBMAC1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.5.14");
const OID_HMAC_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.2.9");
const OID_AES_256_CBC: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.1.42");
const OID_SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
const OID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");

const ITERATIONS: u32 = 2048;

/// cert-manager's `spec.keystores.pkcs12.profile`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Pkcs12Profile {
    /// RC2-40 for certificates, 3DES for the key, SHA-1 MAC: what
    /// cert-manager writes when no profile is set and what csi-driver
    /// always writes.
    #[default]
    LegacyRc2,
    LegacyDes,
    Modern2023,
    Modern2026,
}

impl Pkcs12Profile {
    /// Every profile with its API name.
    pub const ALL: [(Pkcs12Profile, &'static str); 4] = [
        (Pkcs12Profile::LegacyRc2, "LegacyRC2"),
        (Pkcs12Profile::LegacyDes, "LegacyDES"),
        (Pkcs12Profile::Modern2023, "Modern2023"),
        (Pkcs12Profile::Modern2026, "Modern2026"),
    ];

    /// The profile for an API name; names are case-sensitive, as the
    /// upstream CRD's enum is.
    pub fn from_name(name: &str) -> Option<Pkcs12Profile> {
        Self::ALL.iter().find(|(_, n)| *n == name).map(|(p, _)| *p)
    }

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(p, _)| *p == self)
            .map(|(_, n)| *n)
            .unwrap_or("LegacyRC2")
    }

    fn cert_cipher(self) -> Cipher {
        match self {
            Pkcs12Profile::LegacyRc2 => Cipher::Rc2_40,
            Pkcs12Profile::LegacyDes => Cipher::TripleDes,
            Pkcs12Profile::Modern2023 | Pkcs12Profile::Modern2026 => Cipher::Aes256,
        }
    }

    fn key_cipher(self) -> Cipher {
        match self {
            Pkcs12Profile::LegacyRc2 | Pkcs12Profile::LegacyDes => Cipher::TripleDes,
            Pkcs12Profile::Modern2023 | Pkcs12Profile::Modern2026 => Cipher::Aes256,
        }
    }

    fn salt_len(self) -> usize {
        match self {
            Pkcs12Profile::LegacyRc2 | Pkcs12Profile::LegacyDes => 8,
            Pkcs12Profile::Modern2023 | Pkcs12Profile::Modern2026 => 16,
        }
    }
}

#[derive(Debug, Error)]
pub enum Pkcs12Error {
    #[error(
        "the password has a character outside Unicode's Basic Multilingual Plane, which PKCS#12 cannot encode"
    )]
    Password,
    #[error("encoding the PKCS#12 structure failed: {0}")]
    Der(#[from] der::Error),
    #[error("the crypto library reported an error while {0}")]
    Crypto(&'static str),
}

#[derive(Clone, Copy)]
enum Cipher {
    Rc2_40,
    TripleDes,
    Aes256,
}

fn random(len: usize) -> Result<Vec<u8>, Pkcs12Error> {
    let mut out = vec![0u8; len];
    aws_rand::fill(&mut out).map_err(|_| Pkcs12Error::Crypto("drawing a salt"))?;
    Ok(out)
}

fn any(value: &impl Encode) -> Result<Any, Pkcs12Error> {
    Ok(Any::from_der(&value.to_der()?)?)
}

fn algorithm(oid: ObjectIdentifier, params: Option<Any>) -> AlgorithmIdentifierOwned {
    AlgorithmIdentifierOwned {
        oid,
        parameters: params,
    }
}

/// PKCS#12's own key derivation (RFC 7292 appendix B) over the password as
/// a NUL-terminated BMPString, with SHA-1 as every PBE-SHA1 scheme uses.
fn pkcs12_kdf(
    password: &str,
    salt: &[u8],
    id: kdf::Pkcs12KeyType,
    len: usize,
) -> Result<zeroize::Zeroizing<Vec<u8>>, Pkcs12Error> {
    let out = kdf::derive_key_utf8::<sha1::Sha1>(password, salt, id, ITERATIONS as i32, len)
        .map_err(|_| Pkcs12Error::Password)?;
    Ok(zeroize::Zeroizing::new(out))
}

/// Encrypts `data` with `cipher` under a fresh salt; returns the algorithm
/// identifier (with its parameters) and the ciphertext.
fn encrypt(
    cipher: Cipher,
    salt_len: usize,
    password: &str,
    data: &[u8],
) -> Result<(AlgorithmIdentifierOwned, Vec<u8>), Pkcs12Error> {
    let salt = random(salt_len)?;
    match cipher {
        Cipher::Rc2_40 | Cipher::TripleDes => {
            let key_len = if matches!(cipher, Cipher::Rc2_40) {
                5
            } else {
                24
            };
            let key = pkcs12_kdf(password, &salt, kdf::Pkcs12KeyType::EncryptionKey, key_len)?;
            let iv = pkcs12_kdf(password, &salt, kdf::Pkcs12KeyType::Iv, 8)?;
            let bad = |_| Pkcs12Error::Crypto("setting up the PBE cipher");
            let out = match cipher {
                Cipher::Rc2_40 => cbc::Encryptor::<rc2::Rc2>::new_from_slices(&key, &iv)
                    .map_err(bad)?
                    .encrypt_padded_vec::<Pkcs7>(data),
                _ => cbc::Encryptor::<des::TdesEde3>::new_from_slices(&key, &iv)
                    .map_err(bad)?
                    .encrypt_padded_vec::<Pkcs7>(data),
            };
            let oid = if matches!(cipher, Cipher::Rc2_40) {
                OID_PBE_SHA1_RC2_40
            } else {
                OID_PBE_SHA1_3DES
            };
            let params = Pkcs12PbeParams {
                salt: OctetString::new(salt)?,
                iterations: ITERATIONS as i32,
            };
            Ok((algorithm(oid, Some(any(&params)?)), out))
        }
        Cipher::Aes256 => {
            let iv = random(16)?;
            // PBES2 takes the password as UTF-8 bytes, not as a BMPString.
            let mut key = zeroize::Zeroizing::new([0u8; 32]);
            pbkdf2::derive(
                pbkdf2::PBKDF2_HMAC_SHA256,
                NonZeroU32::new(ITERATIONS).expect("non-zero"),
                &salt,
                password.as_bytes(),
                key.as_mut(),
            );
            let out = cbc::Encryptor::<aes::Aes256>::new_from_slices(key.as_ref(), &iv)
                .map_err(|_| Pkcs12Error::Crypto("setting up AES-256-CBC"))?
                .encrypt_padded_vec::<Pkcs7>(data);
            let params = Pbes2Params {
                kdf: algorithm(OID_PBKDF2, Some(any(&pbkdf2_params(salt, None)?)?)),
                encryption: algorithm(OID_AES_256_CBC, Some(any(&OctetString::new(iv)?)?)),
            };
            Ok((algorithm(OID_PBES2, Some(any(&params)?)), out))
        }
    }
}

/// PBKDF2 with HMAC-SHA256; the PRF identifier has no parameters, as
/// go-pkcs12 writes it.
fn pbkdf2_params(salt: Vec<u8>, key_length: Option<u16>) -> Result<Pbkdf2Params, Pkcs12Error> {
    Ok(Pbkdf2Params {
        salt: OctetString::new(salt)?,
        iteration_count: ITERATIONS,
        key_length,
        prf: algorithm(OID_HMAC_SHA256, None),
    })
}

fn attribute(oid: ObjectIdentifier, value: Any) -> Result<Attribute, Pkcs12Error> {
    Ok(Attribute {
        oid,
        values: SetOfVec::try_from(vec![value])?,
    })
}

fn cert_bag(der: &[u8], attributes: Attributes) -> Result<SafeBag, Pkcs12Error> {
    let bag = CertBag {
        cert_id: OID_X509_CERTIFICATE,
        cert_value: OctetString::new(der)?,
    };
    Ok(SafeBag {
        bag_id: OID_CERT_BAG,
        bag_value: bag.to_der()?,
        bag_attributes: Some(attributes),
    })
}

fn encrypted_safe(
    profile: Pkcs12Profile,
    password: &str,
    bags: &Vec<SafeBag>,
) -> Result<ContentInfo, Pkcs12Error> {
    let (alg, ciphertext) = encrypt(
        profile.cert_cipher(),
        profile.salt_len(),
        password,
        &bags.to_der()?,
    )?;
    let data = EncryptedData {
        version: CmsVersion::V0,
        enc_content_info: EncryptedContentInfo {
            content_type: OID_DATA,
            content_enc_alg: alg,
            encrypted_content: Some(OctetString::new(ciphertext)?),
        },
        unprotected_attrs: None,
    };
    Ok(ContentInfo {
        content_type: OID_ENCRYPTED_DATA,
        content: any(&data)?,
    })
}

fn data_content(bytes: Vec<u8>) -> Result<ContentInfo, Pkcs12Error> {
    Ok(ContentInfo {
        content_type: OID_DATA,
        content: any(&OctetString::new(bytes)?)?,
    })
}

fn hmac_sign(alg: hmac::Algorithm, key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(alg, key), data)
        .as_ref()
        .to_vec()
}

/// The MacData over the DER of the AuthenticatedSafe.
fn mac(profile: Pkcs12Profile, password: &str, data: &[u8]) -> Result<MacData, Pkcs12Error> {
    let salt = random(profile.salt_len())?;
    match profile {
        Pkcs12Profile::LegacyRc2 | Pkcs12Profile::LegacyDes => {
            // The legacy profiles MAC with a single KDF iteration, as
            // go-pkcs12 (and OpenSSL's PKCS12_create of old) do.
            let key =
                kdf::derive_key_utf8::<sha1::Sha1>(password, &salt, kdf::Pkcs12KeyType::Mac, 1, 20)
                    .map_err(|_| Pkcs12Error::Password)?;
            let key = zeroize::Zeroizing::new(key);
            Ok(MacData {
                mac: DigestInfo {
                    algorithm: algorithm(OID_SHA1, None),
                    digest: OctetString::new(hmac_sign(
                        hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
                        &key,
                        data,
                    ))?,
                },
                mac_salt: OctetString::new(salt)?,
                iterations: 1,
            })
        }
        Pkcs12Profile::Modern2023 => {
            let key = kdf::derive_key_utf8::<sha2::Sha256>(
                password,
                &salt,
                kdf::Pkcs12KeyType::Mac,
                ITERATIONS as i32,
                32,
            )
            .map_err(|_| Pkcs12Error::Password)?;
            let key = zeroize::Zeroizing::new(key);
            Ok(MacData {
                mac: DigestInfo {
                    algorithm: algorithm(OID_SHA256, None),
                    digest: OctetString::new(hmac_sign(hmac::HMAC_SHA256, &key, data))?,
                },
                mac_salt: OctetString::new(salt)?,
                iterations: ITERATIONS as i32,
            })
        }
        Pkcs12Profile::Modern2026 => {
            // PBMAC1 (RFC 9579): PBKDF2-HMAC-SHA256 over the UTF-8 password
            // gives a 32-byte HMAC-SHA256 key. Its salt and count live in
            // the algorithm parameters; MacData's own fields stay empty and
            // zero, as go-pkcs12 leaves them.
            let mut key = zeroize::Zeroizing::new([0u8; 32]);
            pbkdf2::derive(
                pbkdf2::PBKDF2_HMAC_SHA256,
                NonZeroU32::new(ITERATIONS).expect("non-zero"),
                &salt,
                password.as_bytes(),
                key.as_mut(),
            );
            let params = Pbes2Params {
                kdf: algorithm(OID_PBKDF2, Some(any(&pbkdf2_params(salt, Some(32))?)?)),
                encryption: algorithm(OID_HMAC_SHA256, None),
            };
            Ok(MacData {
                mac: DigestInfo {
                    algorithm: algorithm(OID_PBMAC1, Some(any(&params)?)),
                    digest: OctetString::new(hmac_sign(hmac::HMAC_SHA256, key.as_ref(), data))?,
                },
                mac_salt: OctetString::new(Vec::new())?,
                iterations: 0,
            })
        }
    }
}

fn pfx(
    profile: Pkcs12Profile,
    password: &str,
    safes: Vec<ContentInfo>,
) -> Result<Vec<u8>, Pkcs12Error> {
    let auth_safe = safes.to_der()?;
    let mac_data = mac(profile, password, &auth_safe)?;
    let pfx = Pfx {
        version: pkcs12::pfx::Version::V3,
        auth_safe: data_content(auth_safe)?,
        mac_data: Some(mac_data),
    };
    Ok(pfx.to_der()?)
}

/// A keystore: the PKCS#8 `key_pkcs8` paired with `leaf_der`, and `cas` as
/// further certificate bags, in that order.
pub fn keystore(
    profile: Pkcs12Profile,
    key_pkcs8: &[u8],
    leaf_der: &[u8],
    cas: &[Vec<u8>],
    password: &str,
) -> Result<Vec<u8>, Pkcs12Error> {
    if BmpString::from_utf8(password).is_err() {
        return Err(Pkcs12Error::Password);
    }
    let fingerprint = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, leaf_der);
    let local_key_id = || -> Result<Attributes, Pkcs12Error> {
        Ok(SetOfVec::try_from(vec![attribute(
            OID_LOCAL_KEY_ID,
            any(&OctetString::new(fingerprint.as_ref())?)?,
        )?])?)
    };
    let mut cert_bags = vec![cert_bag(leaf_der, local_key_id()?)?];
    for ca in cas {
        cert_bags.push(cert_bag(ca, Attributes::new())?);
    }
    let (alg, ciphertext) = encrypt(
        profile.key_cipher(),
        profile.salt_len(),
        password,
        key_pkcs8,
    )?;
    let shrouded = EncryptedPrivateKeyInfo {
        encryption_algorithm: alg,
        encrypted_data: OctetString::new(ciphertext)?,
    };
    let key_bag = SafeBag {
        bag_id: OID_SHROUDED_KEY_BAG,
        bag_value: shrouded.to_der()?,
        bag_attributes: Some(local_key_id()?),
    };
    let safes = vec![
        encrypted_safe(profile, password, &cert_bags)?,
        data_content(vec![key_bag].to_der()?)?,
    ];
    pfx(profile, password, safes)
}

/// A truststore: each certificate as a bag Java reads as a trusted entry,
/// named `friendly_name` (Java lower-cases it into the alias).
pub fn truststore(
    profile: Pkcs12Profile,
    certs: &[(Vec<u8>, String)],
    password: &str,
) -> Result<Vec<u8>, Pkcs12Error> {
    if BmpString::from_utf8(password).is_err() {
        return Err(Pkcs12Error::Password);
    }
    let mut bags = Vec::with_capacity(certs.len());
    for (der, name) in certs {
        // A name that BMPString cannot hold is left out rather than
        // failing the store; Java then numbers the entry.
        let mut attrs = vec![attribute(
            OID_JAVA_TRUSTED_USAGE,
            any(&OID_ANY_EXTENDED_KEY_USAGE)?,
        )?];
        if let Ok(bmp) = BmpString::from_utf8(name) {
            attrs.push(attribute(OID_FRIENDLY_NAME, any(&bmp)?)?);
        }
        bags.push(cert_bag(der, SetOfVec::try_from(attrs)?)?);
    }
    pfx(
        profile,
        password,
        vec![encrypted_safe(profile, password, &bags)?],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_names_round_trip_and_are_case_sensitive() {
        for (p, n) in Pkcs12Profile::ALL {
            assert_eq!(Pkcs12Profile::from_name(n), Some(p));
            assert_eq!(p.name(), n);
        }
        assert_eq!(Pkcs12Profile::from_name("legacyrc2"), None);
        assert_eq!(Pkcs12Profile::default(), Pkcs12Profile::LegacyRc2);
    }

    #[test]
    fn passwords_outside_the_bmp_are_refused() {
        let err = keystore(Pkcs12Profile::Modern2023, b"k", b"c", &[], "pw\u{1F600}").unwrap_err();
        assert!(matches!(err, Pkcs12Error::Password), "{err}");
    }
}
