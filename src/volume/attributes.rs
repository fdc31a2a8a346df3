//! The attribute reference: every `csi.cert-manager.io/*` key cert-csi knows,
//! its default and its rule. This table is the single source for the README's
//! attribute reference and for the known-key list behind the unknown-key check.

/// The prefix of every cert-manager csi-driver attribute.
pub const PREFIX: &str = "csi.cert-manager.io/";
/// The group (prefix without the slash) of the kubelet's own keys.
pub const KUBELET_GROUP: &str = "csi.storage.k8s.io";
/// The group reserved for cert-csi's own attributes (beyond cert-manager's).
pub const RESERVED_GROUP: &str = "cert-csi.io";
/// cert-csi's own attribute, for both drivers: also write the key and the
/// chain into this one file (a PKCS#8 key, then the chain), as Kubernetes
/// pod certificates do. The only key defined under [`RESERVED_GROUP`].
pub const CREDENTIAL_BUNDLE_FILE: &str = "cert-csi.io/credential-bundle-file";

/// Keys the kubelet adds to `volume_context` (podInfoOnMount, tokenRequests).
pub mod kubelet {
    pub const POD_NAME: &str = "csi.storage.k8s.io/pod.name";
    pub const POD_NAMESPACE: &str = "csi.storage.k8s.io/pod.namespace";
    pub const POD_UID: &str = "csi.storage.k8s.io/pod.uid";
    pub const SERVICE_ACCOUNT_NAME: &str = "csi.storage.k8s.io/serviceAccount.name";
    pub const SERVICE_ACCOUNT_TOKENS: &str = "csi.storage.k8s.io/serviceAccount.tokens";
    pub const EPHEMERAL: &str = "csi.storage.k8s.io/ephemeral";
}

/// Full keys of the 31 attributes, for code that builds volume contexts.
pub mod keys {
    pub const ISSUER_NAME: &str = "csi.cert-manager.io/issuer-name";
    pub const ISSUER_KIND: &str = "csi.cert-manager.io/issuer-kind";
    pub const ISSUER_GROUP: &str = "csi.cert-manager.io/issuer-group";
    pub const LITERAL_SUBJECT: &str = "csi.cert-manager.io/literal-subject";
    pub const COMMON_NAME: &str = "csi.cert-manager.io/common-name";
    pub const ORGANIZATIONS: &str = "csi.cert-manager.io/organizations";
    pub const ORGANIZATIONAL_UNITS: &str = "csi.cert-manager.io/organizationalunits";
    pub const COUNTRIES: &str = "csi.cert-manager.io/countries";
    pub const PROVINCES: &str = "csi.cert-manager.io/provinces";
    pub const LOCALITIES: &str = "csi.cert-manager.io/localities";
    pub const STREET_ADDRESSES: &str = "csi.cert-manager.io/streetaddresses";
    pub const POSTAL_CODES: &str = "csi.cert-manager.io/postalcodes";
    pub const SERIAL_NUMBER: &str = "csi.cert-manager.io/serialnumber";
    pub const DNS_NAMES: &str = "csi.cert-manager.io/dns-names";
    pub const IP_SANS: &str = "csi.cert-manager.io/ip-sans";
    pub const URI_SANS: &str = "csi.cert-manager.io/uri-sans";
    pub const DURATION: &str = "csi.cert-manager.io/duration";
    pub const IS_CA: &str = "csi.cert-manager.io/is-ca";
    pub const KEY_USAGES: &str = "csi.cert-manager.io/key-usages";
    pub const KEY_ALGORITHM: &str = "csi.cert-manager.io/key-algorithm";
    pub const KEY_SIZE: &str = "csi.cert-manager.io/key-size";
    pub const KEY_ENCODING: &str = "csi.cert-manager.io/key-encoding";
    pub const CERTIFICATE_FILE: &str = "csi.cert-manager.io/certificate-file";
    pub const PRIVATE_KEY_FILE: &str = "csi.cert-manager.io/privatekey-file";
    pub const CA_FILE: &str = "csi.cert-manager.io/ca-file";
    pub const FS_GROUP: &str = "csi.cert-manager.io/fs-group";
    pub const RENEW_BEFORE: &str = "csi.cert-manager.io/renew-before";
    pub const REUSE_PRIVATE_KEY: &str = "csi.cert-manager.io/reuse-private-key";
    pub const PKCS12_ENABLE: &str = "csi.cert-manager.io/pkcs12-enable";
    pub const PKCS12_FILENAME: &str = "csi.cert-manager.io/pkcs12-filename";
    pub const PKCS12_PASSWORD: &str = "csi.cert-manager.io/pkcs12-password";
}

/// One row of the attribute reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttributeDoc {
    /// The key without [`PREFIX`], e.g. `dns-names`.
    pub key: &'static str,
    /// The default in words; empty when there is none.
    pub default: &'static str,
    /// What is accepted, in words a user can act on.
    pub rule: &'static str,
}

impl AttributeDoc {
    /// The full key, e.g. `csi.cert-manager.io/dns-names`.
    pub fn full_key(&self) -> String {
        format!("{PREFIX}{}", self.key)
    }
}

const LIST_RULE: &str = "one line of CSV, as cert-manager reads it: comma-separated, an entry in double quotes may hold commas (\"Example, Inc\",Other) and \"\" is a quote in it; entries are not trimmed and empty ones are kept (both with a warning); variables expanded first; ignored when literal-subject is set";

/// Every attribute, in the order of the reference table.
pub const ATTRIBUTES: &[AttributeDoc] = &[
    AttributeDoc {
        key: "issuer-name",
        default: "",
        rule: "required; the name of the Issuer or ClusterIssuer that signs the certificate",
    },
    AttributeDoc {
        key: "issuer-kind",
        default: "Issuer",
        rule: "Issuer or ClusterIssuer when issuer-group is cert-manager.io; any kind for other groups",
    },
    AttributeDoc {
        key: "issuer-group",
        default: "cert-manager.io",
        rule: "the API group of the issuer, e.g. an external issuer's group",
    },
    AttributeDoc {
        key: "literal-subject",
        default: "",
        rule: "a distinguished name as cert-manager reads it, such as CN=app, O=Example: spaces around separators are ignored, ',' or ';' separate RDNs and '+' joins attributes of one; types C, O, OU, CN, SERIALNUMBER, L, ST, STREET, DC, UID (any case) or dotted OIDs; values are PrintableString where possible, else UTF8String; variables expanded; the other subject attributes are then ignored (with a warning)",
    },
    AttributeDoc {
        key: "common-name",
        default: "",
        rule: "the subject common name; variables expanded; over 64 characters (RFC 5280) is accepted with a warning",
    },
    AttributeDoc {
        key: "organizations",
        default: "",
        rule: LIST_RULE,
    },
    AttributeDoc {
        key: "organizationalunits",
        default: "",
        rule: LIST_RULE,
    },
    AttributeDoc {
        key: "countries",
        default: "",
        rule: LIST_RULE,
    },
    AttributeDoc {
        key: "provinces",
        default: "",
        rule: LIST_RULE,
    },
    AttributeDoc {
        key: "localities",
        default: "",
        rule: LIST_RULE,
    },
    AttributeDoc {
        key: "streetaddresses",
        default: "",
        rule: LIST_RULE,
    },
    AttributeDoc {
        key: "postalcodes",
        default: "",
        rule: LIST_RULE,
    },
    AttributeDoc {
        key: "serialnumber",
        default: "",
        rule: "the subject serialNumber attribute (not the certificate serial), as written: variables are not expanded, as upstream",
    },
    AttributeDoc {
        key: "dns-names",
        default: "",
        rule: "comma-separated, variables expanded, entries trimmed and requested as given (ASCII only), as upstream; empty entries and names that are no valid DNS name (a trailing dot, '_', an IP address) are kept with a warning",
    },
    AttributeDoc {
        key: "ip-sans",
        default: "",
        rule: "comma-separated, trimmed; each an IPv4 or IPv6 address; no variables",
    },
    AttributeDoc {
        key: "uri-sans",
        default: "",
        rule: "comma-separated, variables expanded, trimmed; each an absolute URI (spiffe://cluster.local/ns/$POD_NAMESPACE/sa/$SERVICE_ACCOUNT_NAME) or an absolute path (/app), read by Go's url.ParseRequestURI and requested in the form Go writes it back (a warning says when that differs)",
    },
    AttributeDoc {
        key: "duration",
        default: "2160h",
        rule: "a Go duration (e.g. 1h30m, 720h) greater than zero; no minimum",
    },
    AttributeDoc {
        key: "is-ca",
        default: "false",
        rule: "exactly true or false",
    },
    AttributeDoc {
        key: "key-usages",
        default: "digital signature,key encipherment",
        rule: "comma-separated cert-manager usage names (e.g. server auth, client auth), trimmed, none empty; goes into the CertificateRequest's spec.usages as given, repeats included",
    },
    AttributeDoc {
        key: "key-algorithm",
        default: "RSA",
        rule: "RSA, ECDSA or Ed25519 (case-insensitive)",
    },
    AttributeDoc {
        key: "key-size",
        default: "2048 for RSA, 256 for ECDSA",
        rule: "RSA: any size from 2048 to 8192; ECDSA: 256, 384 or 521; must be empty for Ed25519",
    },
    AttributeDoc {
        key: "key-encoding",
        default: "PKCS1 for RSA, PKCS8 otherwise",
        rule: "PKCS1 or PKCS8 (case-insensitive); PKCS1 only for RSA",
    },
    AttributeDoc {
        key: "certificate-file",
        default: "tls.crt",
        rule: "a file name: not empty, not absolute, no '/', not starting with '..', at most 255 bytes, no leading or trailing space; all output file names distinct",
    },
    AttributeDoc {
        key: "privatekey-file",
        default: "tls.key",
        rule: "a file name, same rules as certificate-file",
    },
    AttributeDoc {
        key: "ca-file",
        default: "ca.crt",
        rule: "a file name, same rules as certificate-file",
    },
    AttributeDoc {
        key: "fs-group",
        default: "the pod's fsGroup, when the kubelet passes it",
        rule: "an integer 1..4294967295; the group that may read the files; overrides the pod's fsGroup",
    },
    AttributeDoc {
        key: "renew-before",
        default: "one third of the lifetime issued",
        rule: "a Go duration, not negative; ignored (with a warning) when zero or not less than the duration, and in favour of the default when more than three quarters of the lifetime the issuer actually gave (see When volumes renew)",
    },
    AttributeDoc {
        key: "reuse-private-key",
        default: "false",
        rule: "true or false; keep the same private key across renewals",
    },
    AttributeDoc {
        key: "pkcs12-enable",
        default: "false",
        rule: "true or false; true also writes a PKCS#12 keystore and requires pkcs12-password; false writes none (the other pkcs12 attributes are then accepted and unused)",
    },
    AttributeDoc {
        key: "pkcs12-filename",
        default: "keystore.p12",
        rule: "a file name, same rules as certificate-file; not allowed without pkcs12-enable",
    },
    AttributeDoc {
        key: "pkcs12-password",
        default: "",
        rule: "the keystore password; required with pkcs12-enable set to true, not allowed without pkcs12-enable",
    },
];

/// Looks up a full key (`csi.cert-manager.io/...`) in [`ATTRIBUTES`].
pub fn find(full_key: &str) -> Option<&'static AttributeDoc> {
    let suffix = full_key.strip_prefix(PREFIX)?;
    ATTRIBUTES.iter().find(|a| a.key == suffix)
}

/// The attribute reference as a Markdown table, for the README.
pub fn reference_markdown() -> String {
    let mut out = String::from("| attribute | default | rule |\n|---|---|---|\n");
    for a in ATTRIBUTES {
        let default = if a.default.is_empty() {
            "—"
        } else {
            a.default
        };
        out.push_str(&format!(
            "| `{}` | {} | {} |\n",
            a.full_key(),
            default,
            a.rule.replace('|', "\\|")
        ));
    }
    out
}

/// The known attribute nearest to an unknown one, when it is near enough to
/// be a plausible typo: within a third of its length in edits (at least two),
/// or a truncation of a known key (`pkcs12-file` for `pkcs12-filename`).
/// Ties go to the earlier row of [`ATTRIBUTES`].
pub fn suggest(unknown_suffix: &str) -> Option<&'static AttributeDoc> {
    let typed = unknown_suffix.to_ascii_lowercase();
    let limit = (typed.chars().count() / 3).max(2);
    ATTRIBUTES
        .iter()
        .filter_map(|a| {
            let d = edit_distance(&typed, a.key);
            let truncated = typed.len() >= 5 && a.key.starts_with(typed.as_str());
            (d <= limit || truncated).then_some((d, a))
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

/// Levenshtein distance over chars.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = substitution.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn there_are_31_distinct_attributes() {
        assert_eq!(ATTRIBUTES.len(), 31);
        let mut keys: Vec<_> = ATTRIBUTES.iter().map(|a| a.key).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), 31);
    }

    #[test]
    fn key_constants_are_all_in_the_table() {
        let all = [
            keys::ISSUER_NAME,
            keys::ISSUER_KIND,
            keys::ISSUER_GROUP,
            keys::LITERAL_SUBJECT,
            keys::COMMON_NAME,
            keys::ORGANIZATIONS,
            keys::ORGANIZATIONAL_UNITS,
            keys::COUNTRIES,
            keys::PROVINCES,
            keys::LOCALITIES,
            keys::STREET_ADDRESSES,
            keys::POSTAL_CODES,
            keys::SERIAL_NUMBER,
            keys::DNS_NAMES,
            keys::IP_SANS,
            keys::URI_SANS,
            keys::DURATION,
            keys::IS_CA,
            keys::KEY_USAGES,
            keys::KEY_ALGORITHM,
            keys::KEY_SIZE,
            keys::KEY_ENCODING,
            keys::CERTIFICATE_FILE,
            keys::PRIVATE_KEY_FILE,
            keys::CA_FILE,
            keys::FS_GROUP,
            keys::RENEW_BEFORE,
            keys::REUSE_PRIVATE_KEY,
            keys::PKCS12_ENABLE,
            keys::PKCS12_FILENAME,
            keys::PKCS12_PASSWORD,
        ];
        for key in all {
            assert!(find(key).is_some(), "{key} is missing from ATTRIBUTES");
        }
        let mut sorted = all.to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), ATTRIBUTES.len());
    }

    #[test]
    fn edit_distance_is_levenshtein() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("dns-name", "dns-names"), 1);
        assert_eq!(edit_distance("flaw", "lawn"), 2);
        assert_eq!(edit_distance("µs", "us"), 1);
    }

    #[test]
    fn suggestions_find_typos_and_not_noise() {
        let cases = [
            ("dns-name", Some("dns-names")),
            ("dnsnames", Some("dns-names")),
            ("DNS-Names", Some("dns-names")),
            ("ip-san", Some("ip-sans")),
            ("issuer", Some("issuer-name")),
            ("issuer-nme", Some("issuer-name")),
            ("organization", Some("organizations")),
            ("organisations", Some("organizations")),
            ("private-key-file", Some("privatekey-file")),
            ("key-usage", Some("key-usages")),
            ("pkcs12-file", Some("pkcs12-filename")),
            ("renewbefore", Some("renew-before")),
            ("completely-unrelated-thing", None),
            ("x", None),
        ];
        for (typo, want) in cases {
            assert_eq!(suggest(typo).map(|a| a.key), want, "suggestion for {typo}");
        }
    }

    #[test]
    fn markdown_lists_every_attribute_once() {
        let md = reference_markdown();
        for a in ATTRIBUTES {
            let needle = format!("| `{}` |", a.full_key());
            assert_eq!(md.matches(&needle).count(), 1, "{needle}");
        }
        assert_eq!(md.lines().count(), ATTRIBUTES.len() + 2);
    }
}
