//! The cert-manager.io/v1 API as cert-csi reads and writes it: typed
//! CertificateRequest, Certificate, Issuer and ClusterIssuer, their
//! conditions, the well-known annotation names, and the CRDs generated from
//! the types.
//!
//! Every optional upstream field is an `Option` that is skipped when `None`,
//! so an object written by cert-manager survives a read-modify-write here
//! without a field lost or added. Base64 `[]byte` fields are [`PemBytes`],
//! which hold the decoded PEM.

mod bytes;
mod certificate;
mod certificaterequest;
pub mod conditions;
mod crd;
pub mod duration;
mod error;
mod issuer;
mod issuer_ref;
mod policy;
pub mod well_known;

pub use bytes::PemBytes;
pub use certificate::{
    Certificate, CertificateAdditionalOutputFormat, CertificateKeystores, CertificatePrivateKey,
    CertificateSecretTemplate, CertificateSpec, CertificateStatus, JksKeystore, NameConstraintItem,
    NameConstraints, OtherName, Pkcs12Keystore, PrivateKeyAlgorithm, PrivateKeyEncoding,
    RotationPolicy, SecretKeySelector, X509Subject,
};
pub use certificaterequest::{
    CertificateRequest, CertificateRequestSpec, CertificateRequestStatus,
};
pub use conditions::{
    CertificateCondition, CertificateRequestCondition, Condition, ConditionStatus, IssuerCondition,
};
pub use crd::{crds, crds_yaml, policy_crds, policy_crds_yaml};
pub use error::ApiError;
pub use issuer::{
    CaIssuer, ClusterIssuer, Issuer, IssuerSpec, IssuerStatus, IssuerType, SelfSignedIssuer,
};
pub use issuer_ref::{CLUSTER_ISSUER_KIND, ISSUER_KIND, IssuerRef};
pub use policy::{
    AllowedString, AllowedStringSlice, AllowedSubject, CertificateRequestPolicy,
    CertificateRequestPolicySpec, CertificateRequestPolicyStatus, IssuerRefSelector,
    NamespaceSelector, POLICY_GROUP, POLICY_RESOURCE, PolicyAllowed, PolicyConstraints,
    PolicySelector, PrivateKeyConstraints, ValidationRule,
};

/// The API group of every type here.
pub const GROUP: &str = "cert-manager.io";
/// The only version cert-csi speaks.
pub const VERSION: &str = "v1";
/// `apiVersion` of every type here.
pub const API_VERSION: &str = "cert-manager.io/v1";
