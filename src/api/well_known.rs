//! Annotation and label names cert-manager writes and reads. Using the same
//! names lets tools built for cert-manager (cmctl, dashboards, policies)
//! understand what cert-csi writes.

/// On a CertificateRequest and a Secret: the Certificate they belong to.
pub const CERTIFICATE_NAME: &str = "cert-manager.io/certificate-name";
/// On a CertificateRequest: the Certificate revision it was made for.
pub const CERTIFICATE_REVISION: &str = "cert-manager.io/certificate-revision";
/// On a CertificateRequest: the Secret with the private key (SelfSigned needs it).
pub const PRIVATE_KEY_SECRET_NAME: &str = "cert-manager.io/private-key-secret-name";

/// On a Secret: `issuerRef.name` of the signing issuer.
pub const ISSUER_NAME: &str = "cert-manager.io/issuer-name";
/// On a Secret: `issuerRef.kind` of the signing issuer.
pub const ISSUER_KIND: &str = "cert-manager.io/issuer-kind";
/// On a Secret: `issuerRef.group` of the signing issuer.
pub const ISSUER_GROUP: &str = "cert-manager.io/issuer-group";

/// On a Secret: the certificate's common name.
pub const COMMON_NAME: &str = "cert-manager.io/common-name";
/// On a Secret: DNS SANs, comma separated.
pub const ALT_NAMES: &str = "cert-manager.io/alt-names";
/// On a Secret: IP SANs, comma separated.
pub const IP_SANS: &str = "cert-manager.io/ip-sans";
/// On a Secret: URI SANs, comma separated.
pub const URI_SANS: &str = "cert-manager.io/uri-sans";
/// On a Secret, only when non-empty: email SANs, comma separated.
pub const EMAIL_SANS: &str = "cert-manager.io/email-sans";

/// On a Secret, only when non-empty: subject fields, comma separated.
pub const SUBJECT_ORGANIZATIONS: &str = "cert-manager.io/subject-organizations";
pub const SUBJECT_ORGANIZATIONAL_UNITS: &str = "cert-manager.io/subject-organizationalunits";
pub const SUBJECT_COUNTRIES: &str = "cert-manager.io/subject-countries";
pub const SUBJECT_PROVINCES: &str = "cert-manager.io/subject-provinces";
pub const SUBJECT_LOCALITIES: &str = "cert-manager.io/subject-localities";
pub const SUBJECT_POSTAL_CODES: &str = "cert-manager.io/subject-postalcodes";
pub const SUBJECT_STREET_ADDRESSES: &str = "cert-manager.io/subject-streetaddresses";
pub const SUBJECT_SERIAL_NUMBER: &str = "cert-manager.io/subject-serialnumber";

/// Label on Secrets that the controller caches in full ("for attention of").
pub const FAO_LABEL: &str = "controller.cert-manager.io/fao";
/// The value of [`FAO_LABEL`].
pub const FAO_LABEL_VALUE: &str = "true";
