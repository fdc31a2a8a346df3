//! Keys, CSRs, certificate inspection, signing and keystores.
//!
//! - [`key`]: generate and load private keys, PEM in and out, signing.
//! - [`csr`]: build PKCS#10 requests from a subject and SANs.
//! - [`dn`]: subjects encoded byte for byte as cert-manager encodes them.
//! - [`rules`]: parse requests and apply cert-manager's webhook checks.
//! - [`sign`]: the CA and SelfSigned signers' certificate templates.
//! - [`inspect`]: read certificate chains (serial, names, validity, keys).
//! - [`keystore`]: PKCS#12, JKS, combined PEM and DER outputs.
//! - [`pkcs12`]: the PKCS#12 encoder in cert-manager's four profiles.

pub mod csr;
pub mod dn;
pub mod inspect;
pub mod key;
pub mod keystore;
pub mod pkcs12;
pub mod rules;
pub mod secret;
pub mod sign;
pub mod spec;

pub use csr::{Csr, CsrOptions, build_csr};
pub use inspect::{CertInfo, InspectError, key_matches_certificate, parse_chain};
pub use key::{KeyError, PrivateKey, RsaDigest};
pub use rules::{
    CsrError, EncodedUsages, ParsedCsr, RequestRuleError, check_request, parse_csr,
    verify_csr_signature,
};
pub use secret::Secret;
pub use sign::{
    IssuedCheckError, SignError, SignParams, Signed, check_issued, sign_self_signed, sign_with_ca,
};
pub use spec::{Curve, KeyAlgorithm, KeyEncoding, KeySpec, SanSpec, SubjectSpec, Usage};
