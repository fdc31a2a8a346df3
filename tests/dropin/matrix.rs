//! The volume attribute sets both drivers are given: every attribute of
//! cert-manager's csi-driver and every variable, the edge cases of each
//! (those found by reading upstream's sources, and more), valid and invalid.
//! Each set is published to both drivers as it stands; the issuer attributes
//! are added unless the case is about them.

/// One attribute set.
pub struct Case {
    pub name: &'static str,
    pub attributes: Vec<(&'static str, &'static str)>,
    /// Leave out the default issuer attributes (the case sets its own).
    pub own_issuer: bool,
}

fn case(name: &'static str, attributes: &[(&'static str, &'static str)]) -> Case {
    Case {
        name,
        attributes: attributes.to_vec(),
        own_issuer: false,
    }
}

fn issuer_case(name: &'static str, attributes: &[(&'static str, &'static str)]) -> Case {
    Case {
        own_issuer: true,
        ..case(name, attributes)
    }
}

/// The issuer every other case names: ClusterIssuer `ca` of the harness.
pub const ISSUER: [(&str, &str); 2] = [
    ("csi.cert-manager.io/issuer-name", "ca"),
    ("csi.cert-manager.io/issuer-kind", "ClusterIssuer"),
];

pub fn cases() -> Vec<Case> {
    let mut cases = vec![
        // -- issuer -------------------------------------------------------
        issuer_case(
            "issuer ClusterIssuer",
            &[
                (ISSUER[0].0, "ca"),
                (ISSUER[1].0, "ClusterIssuer"),
                ("csi.cert-manager.io/common-name", "app"),
            ],
        ),
        issuer_case(
            "issuer namespaced Issuer by default kind",
            &[
                (ISSUER[0].0, "ca"),
                ("csi.cert-manager.io/common-name", "app"),
            ],
        ),
        issuer_case(
            "issuer group spelt out",
            &[
                (ISSUER[0].0, "ca"),
                (ISSUER[1].0, "ClusterIssuer"),
                ("csi.cert-manager.io/issuer-group", "cert-manager.io"),
                ("csi.cert-manager.io/common-name", "app"),
            ],
        ),
        issuer_case(
            "issuer name missing",
            &[("csi.cert-manager.io/common-name", "app")],
        ),
        issuer_case(
            "issuer kind unknown",
            &[
                (ISSUER[0].0, "ca"),
                (ISSUER[1].0, "Foo"),
                ("csi.cert-manager.io/common-name", "app"),
            ],
        ),
        // -- subject --------------------------------------------------------
        case(
            "no subject, one DNS name",
            &[("csi.cert-manager.io/dns-names", "app.example.com")],
        ),
        case(
            "common name",
            &[("csi.cert-manager.io/common-name", "app.example.com")],
        ),
        case(
            "common name with variables",
            &[(
                "csi.cert-manager.io/common-name",
                "$POD_NAME.$POD_NAMESPACE.svc",
            )],
        ),
        case(
            "common name with braced variables",
            &[(
                "csi.cert-manager.io/common-name",
                "${POD_NAME}-${SERVICE_ACCOUNT_NAME}",
            )],
        ),
        case(
            "common name with pod uid",
            &[("csi.cert-manager.io/common-name", "$POD_UID")],
        ),
        case(
            "common name with unknown variable",
            &[("csi.cert-manager.io/common-name", "a-$FOO-b")],
        ),
        case(
            "common name with $$",
            &[("csi.cert-manager.io/common-name", "cost$$")],
        ),
        case(
            "common name with lone $",
            &[("csi.cert-manager.io/common-name", "cost$")],
        ),
        case(
            "common name with spaces",
            &[("csi.cert-manager.io/common-name", " app ")],
        ),
        case(
            "common name UTF-8",
            &[("csi.cert-manager.io/common-name", "café")],
        ),
        case(
            "organizations",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/organizations", "Example,Other"),
            ],
        ),
        case(
            "organizations quoted with comma",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                (
                    "csi.cert-manager.io/organizations",
                    "\"Example, Inc\",Other",
                ),
            ],
        ),
        case(
            "organizations with spaces",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/organizations", "Example, Other "),
            ],
        ),
        case(
            "organizations with variables",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/organizations", "$POD_NAMESPACE"),
            ],
        ),
        case(
            "every subject list",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/organizations", "Example"),
                ("csi.cert-manager.io/organizationalunits", "Payments,Ops"),
                ("csi.cert-manager.io/countries", "GB,DE"),
                ("csi.cert-manager.io/provinces", "London"),
                ("csi.cert-manager.io/localities", "Westminster"),
                ("csi.cert-manager.io/streetaddresses", "1 High Street"),
                ("csi.cert-manager.io/postalcodes", "SW1A 1AA"),
            ],
        ),
        case(
            "serial number",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/serialnumber", "1234"),
            ],
        ),
        case(
            "serial number with variable",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/serialnumber", "$POD_NAME"),
            ],
        ),
        case(
            "literal subject",
            &[("csi.cert-manager.io/literal-subject", "CN=app,O=Example")],
        ),
        case(
            "literal subject with spaces",
            &[(
                "csi.cert-manager.io/literal-subject",
                "CN=app, O=Example, C=GB",
            )],
        ),
        case(
            "literal subject escaped comma",
            &[(
                "csi.cert-manager.io/literal-subject",
                "CN=app,O=Example\\, Inc",
            )],
        ),
        case(
            "literal subject multi-valued RDN",
            &[(
                "csi.cert-manager.io/literal-subject",
                "CN=app+OU=Ops,O=Example",
            )],
        ),
        case(
            "literal subject with variables",
            &[(
                "csi.cert-manager.io/literal-subject",
                "CN=$POD_NAME,O=$POD_NAMESPACE",
            )],
        ),
        case(
            "literal subject with UID and serial",
            &[(
                "csi.cert-manager.io/literal-subject",
                "UID=42,SERIALNUMBER=7,CN=app",
            )],
        ),
        case(
            "literal subject and common name",
            &[
                ("csi.cert-manager.io/literal-subject", "CN=app,O=Example"),
                ("csi.cert-manager.io/common-name", "other"),
            ],
        ),
        case(
            "literal subject malformed",
            &[("csi.cert-manager.io/literal-subject", "CN")],
        ),
        // -- SANs -----------------------------------------------------------
        case(
            "DNS names",
            &[(
                "csi.cert-manager.io/dns-names",
                "a.example.com,b.example.com",
            )],
        ),
        case(
            "DNS names with spaces",
            &[(
                "csi.cert-manager.io/dns-names",
                "a.example.com, b.example.com ",
            )],
        ),
        case(
            "DNS names with variables",
            &[(
                "csi.cert-manager.io/dns-names",
                "$POD_NAME.$POD_NAMESPACE.svc.cluster.local",
            )],
        ),
        case(
            "DNS wildcard",
            &[("csi.cert-manager.io/dns-names", "*.example.com")],
        ),
        case(
            "DNS trailing dot",
            &[("csi.cert-manager.io/dns-names", "app.example.com.")],
        ),
        case(
            "DNS underscore",
            &[("csi.cert-manager.io/dns-names", "_service.example.com")],
        ),
        case(
            "DNS upper case",
            &[("csi.cert-manager.io/dns-names", "App.Example.COM")],
        ),
        case(
            "DNS empty entry",
            &[(
                "csi.cert-manager.io/dns-names",
                "a.example.com,,b.example.com",
            )],
        ),
        case(
            "DNS single label",
            &[("csi.cert-manager.io/dns-names", "localhost")],
        ),
        case(
            "IP SANs",
            &[("csi.cert-manager.io/ip-sans", "10.0.0.1,::1")],
        ),
        case(
            "IP SANs with spaces",
            &[("csi.cert-manager.io/ip-sans", "10.0.0.1, 192.168.0.1")],
        ),
        case(
            "IP SAN invalid",
            &[("csi.cert-manager.io/ip-sans", "10.0.0.300")],
        ),
        case(
            "URI SAN SPIFFE with variables",
            &[(
                "csi.cert-manager.io/uri-sans",
                "spiffe://cluster.local/ns/$POD_NAMESPACE/sa/$SERVICE_ACCOUNT_NAME",
            )],
        ),
        case(
            "URI SAN absolute path",
            &[("csi.cert-manager.io/uri-sans", "/just/a/path")],
        ),
        case(
            "URI SAN relative",
            &[("csi.cert-manager.io/uri-sans", "not a uri")],
        ),
        case(
            "every SAN kind",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/dns-names", "app.example.com"),
                ("csi.cert-manager.io/ip-sans", "10.1.2.3"),
                ("csi.cert-manager.io/uri-sans", "https://example.com/app"),
            ],
        ),
        // -- lifetime ---------------------------------------------------------
        case(
            "duration 1h",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/duration", "1h"),
            ],
        ),
        case(
            "duration 1h30m",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/duration", "1h30m"),
            ],
        ),
        case(
            "duration 720h",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/duration", "720h"),
            ],
        ),
        case(
            "duration invalid",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/duration", "a day"),
            ],
        ),
        case(
            "duration negative",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/duration", "-1h"),
            ],
        ),
        case(
            "duration zero",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/duration", "0s"),
            ],
        ),
        case(
            "renew-before inside duration",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/duration", "1h"),
                ("csi.cert-manager.io/renew-before", "10m"),
            ],
        ),
        case(
            "renew-before longer than duration",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/duration", "1h"),
                ("csi.cert-manager.io/renew-before", "2h"),
            ],
        ),
        case(
            "renew-before invalid",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/renew-before", "soon"),
            ],
        ),
        // -- CA and usages ------------------------------------------------------
        case(
            "is-ca true",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/is-ca", "true"),
            ],
        ),
        case(
            "is-ca false",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/is-ca", "false"),
            ],
        ),
        case(
            "is-ca invalid",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/is-ca", "yes"),
            ],
        ),
        case(
            "key usages server and client auth",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/key-usages", "server auth,client auth"),
            ],
        ),
        case(
            "key usages with spaces",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                (
                    "csi.cert-manager.io/key-usages",
                    "digital signature, key encipherment, server auth",
                ),
            ],
        ),
        case(
            "key usages unknown",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/key-usages", "flying"),
            ],
        ),
        // -- keys -----------------------------------------------------------------
        case(
            "ECDSA",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/key-algorithm", "ECDSA"),
            ],
        ),
        case(
            "ECDSA lower case",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/key-algorithm", "ecdsa"),
            ],
        ),
        case(
            "ECDSA 384",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/key-algorithm", "ECDSA"),
                ("csi.cert-manager.io/key-size", "384"),
            ],
        ),
        case(
            "ECDSA 521",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/key-algorithm", "ECDSA"),
                ("csi.cert-manager.io/key-size", "521"),
            ],
        ),
        case(
            "ECDSA 224",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/key-algorithm", "ECDSA"),
                ("csi.cert-manager.io/key-size", "224"),
            ],
        ),
        case(
            "ECDSA PKCS1",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/key-algorithm", "ECDSA"),
                ("csi.cert-manager.io/key-encoding", "PKCS1"),
            ],
        ),
        case(
            "ECDSA PKCS8",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/key-algorithm", "ECDSA"),
                ("csi.cert-manager.io/key-encoding", "PKCS8"),
            ],
        ),
        case(
            "Ed25519",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/key-algorithm", "Ed25519"),
            ],
        ),
        case(
            "Ed25519 with a size",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/key-algorithm", "Ed25519"),
                ("csi.cert-manager.io/key-size", "256"),
            ],
        ),
        case(
            "RSA 3072",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/key-size", "3072"),
            ],
        ),
        case(
            "RSA 4096",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/key-size", "4096"),
            ],
        ),
        case(
            "RSA 2560",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/key-size", "2560"),
            ],
        ),
        case(
            "RSA 1024",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/key-size", "1024"),
            ],
        ),
        case(
            "RSA size not a number",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/key-size", "big"),
            ],
        ),
        case(
            "RSA PKCS8",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/key-encoding", "PKCS8"),
            ],
        ),
        case(
            "key encoding lower case",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/key-encoding", "pkcs8"),
            ],
        ),
        case(
            "key encoding unknown",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/key-encoding", "PEM"),
            ],
        ),
        case(
            "key algorithm unknown",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/key-algorithm", "DSA"),
            ],
        ),
        case(
            "reuse private key",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/reuse-private-key", "true"),
            ],
        ),
        case(
            "reuse private key invalid",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/reuse-private-key", "yes"),
            ],
        ),
        // -- files ------------------------------------------------------------------
        case(
            "file names",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/certificate-file", "cert.pem"),
                ("csi.cert-manager.io/privatekey-file", "key.pem"),
                ("csi.cert-manager.io/ca-file", "root.pem"),
            ],
        ),
        case(
            "file name with a directory",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/certificate-file", "certs/tls.crt"),
            ],
        ),
        case(
            "file names the same",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/certificate-file", "tls.pem"),
                ("csi.cert-manager.io/privatekey-file", "tls.pem"),
            ],
        ),
        case(
            "file name dot-dot",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/ca-file", "../ca.crt"),
            ],
        ),
        case(
            "fs group",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/fs-group", "2000"),
            ],
        ),
        case(
            "fs group invalid",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/fs-group", "abc"),
            ],
        ),
        case(
            "fs group zero",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/fs-group", "0"),
            ],
        ),
        // -- PKCS#12 ------------------------------------------------------------------
        case(
            "PKCS#12",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/pkcs12-enable", "true"),
                ("csi.cert-manager.io/pkcs12-password", "changeit"),
            ],
        ),
        case(
            "PKCS#12 with ECDSA and a file name",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/key-algorithm", "ECDSA"),
                ("csi.cert-manager.io/pkcs12-enable", "true"),
                ("csi.cert-manager.io/pkcs12-filename", "app.p12"),
                ("csi.cert-manager.io/pkcs12-password", "changeit"),
            ],
        ),
        case(
            "PKCS#12 without a password",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/pkcs12-enable", "true"),
            ],
        ),
        case(
            "PKCS#12 off with a password",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/pkcs12-enable", "false"),
                ("csi.cert-manager.io/pkcs12-password", "changeit"),
            ],
        ),
        case(
            "PKCS#12 password without enable",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/pkcs12-password", "changeit"),
            ],
        ),
        case(
            "PKCS#12 file name without enable",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/pkcs12-filename", "app.p12"),
            ],
        ),
        // -- other keys ------------------------------------------------------------------
        case(
            "misspelt key",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("csi.cert-manager.io/dns-name", "app.example.com"),
            ],
        ),
        case(
            "annotation passed on",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("example.com/team", "payments"),
            ],
        ),
        case(
            "plain key ignored",
            &[
                ("csi.cert-manager.io/common-name", "app"),
                ("team", "payments"),
            ],
        ),
    ];
    for case in &mut cases {
        if !case.own_issuer {
            let mut attributes = ISSUER.to_vec();
            attributes.append(&mut case.attributes);
            case.attributes = attributes;
        }
    }
    cases
}
