//! Tests of `parse` as the kubelet would drive it.

use super::*;
use crate::pki::{Curve, KeyAlgorithm, KeyEncoding, Usage};

const POD_UID: &str = "0b5e4f1c-3f5a-4c9e-9b1e-2f0d7f1a6c11";
const TARGET: &str = "/var/lib/kubelet/pods/0b5e4f1c-3f5a-4c9e-9b1e-2f0d7f1a6c11/volumes/kubernetes.io~csi/tls/mount";

fn volume_id() -> String {
    format!("csi-{}", "0123456789abcdef".repeat(4))
}

/// What the kubelet sends for the smallest valid pod spec.
fn base() -> HashMap<String, String> {
    [
        (kubelet::POD_NAME, "web-0"),
        (kubelet::POD_NAMESPACE, "shop"),
        (kubelet::POD_UID, POD_UID),
        (kubelet::SERVICE_ACCOUNT_NAME, "frontend"),
        (kubelet::EPHEMERAL, "true"),
        (keys::ISSUER_NAME, "ca-issuer"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn with(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    let mut ctx = base();
    for (k, v) in pairs {
        ctx.insert(k.to_string(), v.to_string());
    }
    ctx
}

fn parse_ctx(ctx: &HashMap<String, String>) -> Result<VolumeSpec, AttributeError> {
    let id = volume_id();
    parse(&PublishInput {
        volume_id: &id,
        target_path: TARGET,
        readonly: true,
        volume_mount_group: None,
        context: ctx,
    })
}

fn ok(pairs: &[(&str, &str)]) -> VolumeSpec {
    let ctx = with(pairs);
    match parse_ctx(&ctx) {
        Ok(spec) => spec,
        Err(e) => panic!("{pairs:?} was rejected: {e}"),
    }
}

fn rejected(pairs: &[(&str, &str)]) -> AttributeError {
    match parse_ctx(&with(pairs)) {
        Ok(_) => {
            let keys: Vec<&str> = pairs.iter().map(|(k, _)| *k).collect();
            panic!("{keys:?} with these values should be rejected")
        }
        Err(e) => e,
    }
}

#[test]
fn defaults_match_the_reference_table() {
    let spec = ok(&[]);
    assert_eq!(spec.volume_id, volume_id());
    assert_eq!(spec.target_path, PathBuf::from(TARGET));
    assert_eq!(
        spec.pod,
        PodInfo {
            name: "web-0".into(),
            namespace: "shop".into(),
            uid: POD_UID.into(),
            service_account: "frontend".into(),
        }
    );
    assert_eq!(
        spec.issuer,
        IssuerRef {
            name: "ca-issuer".into(),
            kind: "Issuer".into(),
            group: "cert-manager.io".into(),
        }
    );
    assert_eq!(spec.subject, SubjectSpec::default());
    assert_eq!(spec.sans, SanSpec::default());
    assert_eq!(spec.duration, Duration::from_secs(2160 * 3600));
    assert_eq!(duration::format_go(spec.duration), "2160h0m0s");
    assert_eq!(spec.renew_before, None);
    assert!(!spec.is_ca);
    assert_eq!(
        spec.usages,
        vec![Usage::DigitalSignature, Usage::KeyEncipherment]
    );
    assert_eq!(
        spec.key,
        KeySpec {
            algorithm: KeyAlgorithm::Rsa { bits: 2048 },
            encoding: KeyEncoding::Pkcs1,
        }
    );
    assert_eq!(spec.certificate_file, "tls.crt");
    assert_eq!(spec.private_key_file, "tls.key");
    assert_eq!(spec.ca_file, "ca.crt");
    assert_eq!(spec.pkcs12, None);
    assert_eq!(spec.fs_group, None);
    assert!(!spec.reuse_private_key);
    assert!(spec.annotations.is_empty());
    assert_eq!(spec.tokens, None);
    assert!(spec.warnings.is_empty(), "{:?}", spec.warnings);
}

#[test]
fn the_table_defaults_are_what_parse_applies() {
    // The reference table is prose; this ties its simple defaults to the code.
    let spec = ok(&[]);
    let by_key = |k: &str| ATTRIBUTES.iter().find(|a| a.key == k).unwrap().default;
    assert_eq!(by_key("issuer-kind"), spec.issuer.kind);
    assert_eq!(by_key("issuer-group"), spec.issuer.group);
    assert_eq!(by_key("duration"), "2160h");
    assert_eq!(
        duration::parse_go(by_key("duration")).unwrap(),
        spec.duration
    );
    assert_eq!(by_key("is-ca"), spec.is_ca.to_string());
    let usages: Vec<&str> = spec.usages.iter().map(|u| u.name()).collect();
    assert_eq!(by_key("key-usages"), usages.join(","));
    assert_eq!(by_key("certificate-file"), spec.certificate_file);
    assert_eq!(by_key("privatekey-file"), spec.private_key_file);
    assert_eq!(by_key("ca-file"), spec.ca_file);
    assert_eq!(
        by_key("reuse-private-key"),
        spec.reuse_private_key.to_string()
    );
    assert_eq!(by_key("pkcs12-filename"), DEFAULT_PKCS12_FILE);
}

#[test]
fn every_documented_attribute_is_accepted_with_a_valid_value() {
    for doc in ATTRIBUTES {
        let key = doc.full_key();
        let companions: Vec<(&str, &str)> = match doc.key {
            "pkcs12-filename" | "pkcs12-password" => vec![
                (keys::PKCS12_ENABLE, "true"),
                (keys::PKCS12_PASSWORD, "changeit"),
            ],
            "pkcs12-enable" => vec![(keys::PKCS12_PASSWORD, "changeit")],
            _ => vec![],
        };
        let value = match doc.key {
            "issuer-name" => "other-issuer",
            "issuer-kind" => "ClusterIssuer",
            "issuer-group" => "cert-manager.io",
            "literal-subject" => "CN=$POD_NAME,O=Example",
            "countries" => "DE,FR",
            "dns-names" => "${POD_NAME}.example.com",
            "ip-sans" => "10.0.0.1",
            "uri-sans" => "spiffe://cluster.local/ns/$POD_NAMESPACE",
            "duration" => "1h",
            "is-ca" | "reuse-private-key" | "pkcs12-enable" => "true",
            "key-usages" => "server auth",
            "key-algorithm" => "ECDSA",
            "key-size" => "4096",
            "key-encoding" => "PKCS8",
            "certificate-file" | "privatekey-file" | "ca-file" | "pkcs12-filename" => "out.pem",
            "fs-group" => "2000",
            "renew-before" => "1h",
            "pkcs12-password" => "changeit",
            _ => "Some Value",
        };
        let mut pairs = companions;
        pairs.push((key.as_str(), value));
        let ctx = with(&pairs);
        if let Err(e) = parse_ctx(&ctx) {
            panic!("{key}={value:?} was rejected: {e}");
        }
    }
}

#[test]
fn issuer_attributes() {
    let spec = ok(&[(keys::ISSUER_KIND, "ClusterIssuer")]);
    assert_eq!(spec.issuer.kind, "ClusterIssuer");
    let spec = ok(&[
        (keys::ISSUER_GROUP, "awspca.cert-manager.io"),
        (keys::ISSUER_KIND, "AWSPCAClusterIssuer"),
        (keys::ISSUER_NAME, "pca"),
    ]);
    assert_eq!(
        spec.issuer,
        IssuerRef {
            name: "pca".into(),
            kind: "AWSPCAClusterIssuer".into(),
            group: "awspca.cert-manager.io".into(),
        }
    );
    // An external group keeps the default kind when none is given, as upstream.
    let spec = ok(&[(keys::ISSUER_GROUP, "example.com")]);
    assert_eq!(spec.issuer.kind, "Issuer");
}

#[test]
fn subject_attributes_are_csv_and_expanded() {
    let spec = ok(&[
        (keys::COMMON_NAME, "${POD_NAME}.${POD_NAMESPACE}"),
        (keys::ORGANIZATIONS, "\"Example, Inc\",$POD_NAMESPACE"),
        (keys::ORGANIZATIONAL_UNITS, "pods"),
        (keys::COUNTRIES, "DE,FR"),
        (keys::PROVINCES, "Berlin"),
        (keys::LOCALITIES, "Berlin,Paris"),
        (keys::STREET_ADDRESSES, "\"1 Main St, Floor 2\""),
        (keys::POSTAL_CODES, "10115"),
        (keys::SERIAL_NUMBER, "1234"),
    ]);
    assert_eq!(
        spec.subject,
        SubjectSpec {
            literal: None,
            common_name: Some("web-0.shop".into()),
            organizations: vec!["Example, Inc".into(), "shop".into()],
            organizational_units: vec!["pods".into()],
            countries: vec!["DE".into(), "FR".into()],
            provinces: vec!["Berlin".into()],
            localities: vec!["Berlin".into(), "Paris".into()],
            street_addresses: vec!["1 Main St, Floor 2".into()],
            postal_codes: vec!["10115".into()],
            serial_number: Some("1234".into()),
        }
    );
    assert!(spec.warnings.is_empty(), "{:?}", spec.warnings);
}

#[test]
fn subject_lists_keep_what_upstream_keeps_with_warnings() {
    // Not trimmed, empty entries kept: upstream's CSV reader does the same.
    let spec = ok(&[(keys::ORGANIZATIONS, "Example, Other,,")]);
    assert_eq!(
        spec.subject.organizations,
        vec!["Example", " Other", "", ""]
    );
    let messages: Vec<String> = spec.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(messages[0].contains("entry 3 is empty"), "{messages:?}");
    assert!(messages[1].contains("\" Other\""), "{messages:?}");
    assert!(
        spec.warnings
            .iter()
            .all(|w| w.attribute == keys::ORGANIZATIONS),
        "{messages:?}"
    );
    // Variables are expanded before the value is split.
    let spec = ok(&[(keys::LOCALITIES, "$POD_NAMESPACE,\"$POD_NAME, x\"")]);
    assert_eq!(spec.subject.localities, vec!["shop", "web-0, x"]);
    // A backslash is no escape in CSV.
    let spec = ok(&[(keys::ORGANIZATIONS, "Foo\\, Inc")]);
    assert_eq!(spec.subject.organizations, vec!["Foo\\", " Inc"]);
}

#[test]
fn serialnumber_is_not_expanded() {
    let spec = ok(&[(keys::SERIAL_NUMBER, "$POD_UID")]);
    assert_eq!(spec.subject.serial_number.as_deref(), Some("$POD_UID"));
    assert_eq!(spec.warnings.len(), 1);
    assert_eq!(spec.warnings[0].attribute, keys::SERIAL_NUMBER);
    assert!(spec.warnings[0].message.contains("not expanded"));
    // Even a name upstream would fail on elsewhere.
    let spec = ok(&[(keys::SERIAL_NUMBER, "$$NOPE")]);
    assert_eq!(spec.subject.serial_number.as_deref(), Some("$$NOPE"));
}

#[test]
fn variables_follow_go_os_expand() {
    // '$$' names the special variable '$' upstream, which does not exist.
    for key in [
        keys::COMMON_NAME,
        keys::ORGANIZATIONS,
        keys::DNS_NAMES,
        keys::URI_SANS,
        keys::LITERAL_SUBJECT,
    ] {
        let err = rejected(&[(key, "a$$b")]);
        assert_eq!(err.attribute, key);
        assert!(err.message.contains("'$$' is not an escape"), "{err}");
        let err = rejected(&[(key, "$NODE_NAME")]);
        assert!(
            err.message.contains("unknown variable ${NODE_NAME}"),
            "{err}"
        );
    }
    // A broken "${" is dropped as Go drops it, with a warning.
    let spec = ok(&[(keys::COMMON_NAME, "x${POD_NAME")]);
    assert_eq!(spec.subject.common_name.as_deref(), Some("xPOD_NAME"));
    assert_eq!(spec.warnings.len(), 1);
    assert!(spec.warnings[0].message.contains("no closing '}'"));
    // A '$' before what cannot start a name stays.
    let spec = ok(&[(keys::COMMON_NAME, "a$.b")]);
    assert_eq!(spec.subject.common_name.as_deref(), Some("a$.b"));
    // ip-sans and key-usages are never expanded; a '$' there is just bad.
    let err = rejected(&[(keys::IP_SANS, "$POD_NAME")]);
    assert!(err.message.contains("not an IPv4 or IPv6 address"), "{err}");
    // Only the chosen subject is expanded: with literal-subject set, the
    // other subject attributes are not read at all (as upstream).
    let spec = ok(&[
        (keys::LITERAL_SUBJECT, "CN=x"),
        (keys::COMMON_NAME, "$NOPE"),
        (keys::ORGANIZATIONS, "\"unclosed"),
    ]);
    assert_eq!(spec.subject.literal.as_deref(), Some("CN=x"));
}

#[test]
fn literal_subject_wins_with_a_warning() {
    let spec = ok(&[
        (keys::LITERAL_SUBJECT, "CN=${POD_NAME},O=Example\\, Inc"),
        (keys::COMMON_NAME, "ignored"),
        (keys::ORGANIZATIONS, "ignored"),
    ]);
    assert_eq!(
        spec.subject,
        SubjectSpec {
            literal: Some("CN=web-0,O=Example\\, Inc".into()),
            ..SubjectSpec::default()
        }
    );
    assert_eq!(spec.warnings.len(), 1);
    let w = &spec.warnings[0];
    assert_eq!(w.attribute, keys::LITERAL_SUBJECT);
    assert!(w.message.contains(keys::COMMON_NAME), "{w}");
    assert!(w.message.contains(keys::ORGANIZATIONS), "{w}");
    assert!(w.message.contains("are ignored"), "{w}");

    let alone = ok(&[(keys::LITERAL_SUBJECT, "CN=a")]);
    assert!(alone.warnings.is_empty());

    // Spaces after separators, ';' and unescaped quotes: as go-ldap reads them.
    for literal in [
        "CN=app, O=Example",
        "CN = app ; O = \"Ex\"",
        "cn=app,2.5.4.10=x",
    ] {
        let spec = ok(&[(keys::LITERAL_SUBJECT, literal)]);
        assert_eq!(spec.subject.literal.as_deref(), Some(literal));
        assert!(spec.warnings.is_empty(), "{literal}: {:?}", spec.warnings);
    }
    // Blank: an empty subject, with a warning.
    let spec = ok(&[(keys::LITERAL_SUBJECT, "   ")]);
    assert_eq!(spec.subject.literal.as_deref(), Some("   "));
    assert!(spec.warnings[0].message.contains("subject is empty"));
}

#[test]
fn san_attributes() {
    let spec = ok(&[
        (
            keys::DNS_NAMES,
            " ${POD_NAME}.${POD_NAMESPACE}.svc.cluster.local , *.example.com,localhost,localhost",
        ),
        (keys::IP_SANS, "10.0.0.1, ::1,fd00::2, 10.0.0.1"),
        (
            keys::URI_SANS,
            "spiffe://cluster.local/ns/$POD_NAMESPACE/sa/$SERVICE_ACCOUNT_NAME, urn:uuid:$POD_UID",
        ),
    ]);
    // Kept as given, repeats included, as upstream's request has them.
    assert_eq!(
        spec.sans.dns_names,
        vec![
            "web-0.shop.svc.cluster.local",
            "*.example.com",
            "localhost",
            "localhost"
        ]
    );
    assert_eq!(
        spec.sans.ip_addresses,
        vec![
            "10.0.0.1".parse::<IpAddr>().unwrap(),
            "::1".parse().unwrap(),
            "fd00::2".parse().unwrap(),
            "10.0.0.1".parse::<IpAddr>().unwrap(),
        ]
    );
    assert_eq!(
        spec.sans.uris,
        vec![
            "spiffe://cluster.local/ns/shop/sa/frontend".to_string(),
            format!("urn:uuid:{POD_UID}"),
        ]
    );
    assert!(spec.sans.emails.is_empty());
    assert!(spec.warnings.is_empty(), "{:?}", spec.warnings);
}

#[test]
fn dns_names_are_split_and_trimmed_only() {
    // What upstream accepts: trailing dots, '_', IP-like names, a lone
    // wildcard, empty entries. Each kind is kept, with a warning.
    for (value, want, warning) in [
        ("example.com.", vec!["example.com."], "trailing dot"),
        ("_srv.example.com", vec!["_srv.example.com"], "'_'"),
        ("10.1.2.3", vec!["10.1.2.3"], "ip-sans"),
        ("a.*.example.com", vec!["a.*.example.com"], "wildcard"),
        (
            "a.example,,b.example",
            vec!["a.example", "", "b.example"],
            "entry 2 is empty",
        ),
        ("a.example,", vec!["a.example", ""], "entry 2 is empty"),
    ] {
        let spec = ok(&[(keys::DNS_NAMES, value)]);
        assert_eq!(spec.sans.dns_names, want, "{value}");
        assert!(
            spec.warnings
                .iter()
                .any(|w| w.attribute == keys::DNS_NAMES && w.message.contains(warning)),
            "{value}: {:?}",
            spec.warnings
        );
    }
    // Go encodes only ASCII (IA5String): upstream fails the request.
    let err = rejected(&[(keys::DNS_NAMES, "bücher.example")]);
    assert_eq!(err.attribute, keys::DNS_NAMES);
    assert!(err.message.contains("punycode"), "{err}");
}

#[test]
fn ip_sans_follow_go() {
    // An IPv4-mapped IPv6 address is written as the IPv4 address (Go's To4).
    let spec = ok(&[(keys::IP_SANS, "::ffff:10.0.0.1")]);
    assert_eq!(
        spec.sans.ip_addresses,
        vec!["10.0.0.1".parse::<IpAddr>().unwrap()]
    );
    // An empty entry is no address (net.ParseIP("") fails upstream too).
    let err = rejected(&[(keys::IP_SANS, "10.0.0.1,")]);
    assert_eq!(err.attribute, keys::IP_SANS);
    assert!(err.message.contains("\"\" is not an IPv4"), "{err}");
}

#[test]
fn uri_sans_take_absolute_paths_and_go_s_form() {
    let spec = ok(&[(keys::URI_SANS, "/app, urn:x:$POD_NAME, SPIFFE://td/ns/a")]);
    assert_eq!(
        spec.sans.uris,
        vec!["/app", "urn:x:web-0", "spiffe://td/ns/a"]
    );
    // The lower-cased scheme differs from what was written: a warning says so.
    assert_eq!(spec.warnings.len(), 1, "{:?}", spec.warnings);
    assert!(spec.warnings[0].message.contains("\"spiffe://td/ns/a\""));
    let spec = ok(&[(keys::URI_SANS, "/a b#c")]);
    assert_eq!(spec.sans.uris, vec!["/a%20b%23c"]);
    for (value, fragment) in [
        ("relative/path", "neither an absolute URI"),
        ("/a,", "empty url"),
        ("https://exa mple.com/", "invalid character ' '"),
        ("https://example.com./", "ends with '.'"),
        ("urn:ü", "non-ASCII"),
    ] {
        let err = rejected(&[(keys::URI_SANS, value)]);
        assert_eq!(err.attribute, keys::URI_SANS, "{value}");
        assert!(err.message.contains(fragment), "{value}: {err}");
    }
}

#[test]
fn durations() {
    let spec = ok(&[(keys::DURATION, "1h30m"), (keys::RENEW_BEFORE, "30m")]);
    assert_eq!(spec.duration, Duration::from_secs(5400));
    assert_eq!(spec.renew_before, Some(Duration::from_secs(1800)));
    assert!(spec.warnings.is_empty());

    let spec = ok(&[(keys::DURATION, "1.5h")]);
    assert_eq!(spec.duration, Duration::from_secs(5400));
    let spec = ok(&[(keys::DURATION, "90s")]);
    assert_eq!(spec.duration, Duration::from_secs(90));
    let spec = ok(&[(keys::DURATION, "300ms")]);
    assert_eq!(spec.duration, Duration::from_millis(300));

    for renew in ["1h", "2h"] {
        let spec = ok(&[(keys::DURATION, "1h"), (keys::RENEW_BEFORE, renew)]);
        assert_eq!(
            spec.renew_before, None,
            "renew-before {renew} with duration 1h"
        );
        assert_eq!(spec.warnings.len(), 1);
        assert_eq!(spec.warnings[0].attribute, keys::RENEW_BEFORE);
        assert!(
            spec.warnings[0].message.contains("1h0m0s"),
            "{}",
            spec.warnings[0]
        );
    }
    // Against the default duration.
    let spec = ok(&[(keys::RENEW_BEFORE, "2159h")]);
    assert_eq!(spec.renew_before, Some(Duration::from_secs(2159 * 3600)));
}

#[test]
fn booleans() {
    for (v, want) in [("true", true), ("false", false)] {
        let spec = ok(&[(keys::IS_CA, v), (keys::REUSE_PRIVATE_KEY, v)]);
        assert_eq!(spec.is_ca, want);
        assert_eq!(spec.reuse_private_key, want);
    }
}

#[test]
fn key_usages() {
    let spec = ok(&[(
        keys::KEY_USAGES,
        "server auth, client auth ,digital signature",
    )]);
    assert_eq!(
        spec.usages,
        vec![
            Usage::ServerAuth,
            Usage::ClientAuth,
            Usage::DigitalSignature
        ]
    );
    let all: Vec<&str> = Usage::ALL.iter().map(|(_, n)| *n).collect();
    let spec = ok(&[(keys::KEY_USAGES, &all.join(","))]);
    assert_eq!(spec.usages.len(), Usage::ALL.len());
    // Repeats stay: upstream puts the list into spec.usages as given.
    let spec = ok(&[(keys::KEY_USAGES, "server auth,server auth")]);
    assert_eq!(spec.usages, vec![Usage::ServerAuth, Usage::ServerAuth]);
}

#[test]
fn key_algorithms_sizes_and_encodings() {
    type Pairs<'a> = &'a [(&'a str, &'a str)];
    let cases: &[(Pairs, KeyAlgorithm, KeyEncoding)] = &[
        (&[], KeyAlgorithm::Rsa { bits: 2048 }, KeyEncoding::Pkcs1),
        (
            &[(keys::KEY_ALGORITHM, "rsa")],
            KeyAlgorithm::Rsa { bits: 2048 },
            KeyEncoding::Pkcs1,
        ),
        (
            &[(keys::KEY_SIZE, "3072")],
            KeyAlgorithm::Rsa { bits: 3072 },
            KeyEncoding::Pkcs1,
        ),
        (
            &[(keys::KEY_SIZE, "4096")],
            KeyAlgorithm::Rsa { bits: 4096 },
            KeyEncoding::Pkcs1,
        ),
        (
            &[(keys::KEY_SIZE, "8192")],
            KeyAlgorithm::Rsa { bits: 8192 },
            KeyEncoding::Pkcs1,
        ),
        // Any RSA size in 2048..=8192, as upstream; strconv.Atoi allows '+'.
        (
            &[(keys::KEY_SIZE, "2049")],
            KeyAlgorithm::Rsa { bits: 2049 },
            KeyEncoding::Pkcs1,
        ),
        (
            &[(keys::KEY_SIZE, "3000")],
            KeyAlgorithm::Rsa { bits: 3000 },
            KeyEncoding::Pkcs1,
        ),
        (
            &[(keys::KEY_SIZE, "+4096")],
            KeyAlgorithm::Rsa { bits: 4096 },
            KeyEncoding::Pkcs1,
        ),
        (
            &[(keys::KEY_ALGORITHM, "ECDSA"), (keys::KEY_SIZE, "+384")],
            KeyAlgorithm::Ecdsa(Curve::P384),
            KeyEncoding::Pkcs8,
        ),
        (
            &[(keys::KEY_ENCODING, "PKCS8")],
            KeyAlgorithm::Rsa { bits: 2048 },
            KeyEncoding::Pkcs8,
        ),
        (
            &[(keys::KEY_ENCODING, "pkcs1")],
            KeyAlgorithm::Rsa { bits: 2048 },
            KeyEncoding::Pkcs1,
        ),
        (
            &[(keys::KEY_ALGORITHM, "ECDSA")],
            KeyAlgorithm::Ecdsa(Curve::P256),
            KeyEncoding::Pkcs8,
        ),
        (
            &[(keys::KEY_ALGORITHM, "ecdsa"), (keys::KEY_SIZE, "384")],
            KeyAlgorithm::Ecdsa(Curve::P384),
            KeyEncoding::Pkcs8,
        ),
        (
            &[
                (keys::KEY_ALGORITHM, "EcDsA"),
                (keys::KEY_SIZE, "521"),
                (keys::KEY_ENCODING, "PKCS8"),
            ],
            KeyAlgorithm::Ecdsa(Curve::P521),
            KeyEncoding::Pkcs8,
        ),
        (
            &[(keys::KEY_ALGORITHM, "Ed25519")],
            KeyAlgorithm::Ed25519,
            KeyEncoding::Pkcs8,
        ),
        (
            &[(keys::KEY_ALGORITHM, "ED25519")],
            KeyAlgorithm::Ed25519,
            KeyEncoding::Pkcs8,
        ),
        // An empty key-size means "unset" for Ed25519 too.
        (
            &[(keys::KEY_ALGORITHM, "ed25519"), (keys::KEY_SIZE, "")],
            KeyAlgorithm::Ed25519,
            KeyEncoding::Pkcs8,
        ),
    ];
    for (pairs, algorithm, encoding) in cases {
        let spec = ok(pairs);
        assert_eq!(spec.key.algorithm, *algorithm, "{pairs:?}");
        assert_eq!(spec.key.encoding, *encoding, "{pairs:?}");
    }
}

#[test]
fn file_names_and_pkcs12() {
    let spec = ok(&[
        (keys::CERTIFICATE_FILE, "cert.pem"),
        (keys::PRIVATE_KEY_FILE, "key.pem"),
        (keys::CA_FILE, "root.pem"),
    ]);
    assert_eq!(
        (
            spec.certificate_file.as_str(),
            spec.private_key_file.as_str(),
            spec.ca_file.as_str()
        ),
        ("cert.pem", "key.pem", "root.pem")
    );
    // Empty means default, as upstream.
    let spec = ok(&[(keys::CA_FILE, "")]);
    assert_eq!(spec.ca_file, "ca.crt");

    let spec = ok(&[
        (keys::PKCS12_ENABLE, "true"),
        (keys::PKCS12_PASSWORD, "s3cret"),
    ]);
    let p12 = spec.pkcs12.expect("pkcs12 enabled");
    assert_eq!(p12.filename, "keystore.p12");
    assert_eq!(p12.password.expose(), "s3cret");

    let spec = ok(&[
        (keys::PKCS12_ENABLE, "true"),
        (keys::PKCS12_PASSWORD, "s3cret"),
        (keys::PKCS12_FILENAME, "app.p12"),
    ]);
    assert_eq!(spec.pkcs12.unwrap().filename, "app.p12");

    let spec = ok(&[(keys::PKCS12_ENABLE, "false")]);
    assert_eq!(spec.pkcs12, None);
    // "false" with a password and a file name: accepted, nothing written
    // (upstream's validation accepts it and its writer skips the keystore).
    let spec = ok(&[
        (keys::PKCS12_ENABLE, "false"),
        (keys::PKCS12_PASSWORD, "s3cret"),
        (keys::PKCS12_FILENAME, "app.p12"),
    ]);
    assert_eq!(spec.pkcs12, None);
    // An empty value means unset, for these too.
    let spec = ok(&[(keys::PKCS12_PASSWORD, ""), (keys::PKCS12_FILENAME, "")]);
    assert_eq!(spec.pkcs12, None);
    // Without pkcs12 the keystore name does not collide with anything.
    let spec = ok(&[(keys::CA_FILE, "keystore.p12")]);
    assert_eq!(spec.ca_file, "keystore.p12");
}

#[test]
fn fs_group_and_volume_mount_group() {
    let id = volume_id();
    let run = |ctx: &HashMap<String, String>, vmg: Option<&str>| {
        parse(&PublishInput {
            volume_id: &id,
            target_path: TARGET,
            readonly: true,
            volume_mount_group: vmg,
            context: ctx,
        })
    };
    assert_eq!(run(&base(), None).unwrap().fs_group, None);
    assert_eq!(run(&base(), Some("")).unwrap().fs_group, None);
    assert_eq!(run(&base(), Some("3000")).unwrap().fs_group, Some(3000));
    assert_eq!(run(&base(), Some("0")).unwrap().fs_group, Some(0));
    let attr = with(&[(keys::FS_GROUP, "2000")]);
    assert_eq!(run(&attr, None).unwrap().fs_group, Some(2000));
    assert_eq!(
        run(&attr, Some("3000")).unwrap().fs_group,
        Some(2000),
        "the attribute wins"
    );
    let max = with(&[(keys::FS_GROUP, "4294967295")]);
    assert_eq!(run(&max, None).unwrap().fs_group, Some(u32::MAX));
    let one = with(&[(keys::FS_GROUP, "1")]);
    assert_eq!(run(&one, None).unwrap().fs_group, Some(1));
    // strconv.ParseInt, as csi-lib reads it, takes a '+'.
    let plus = with(&[(keys::FS_GROUP, "+5")]);
    assert_eq!(run(&plus, None).unwrap().fs_group, Some(5));

    for bad in ["abc", "-1", "3000 ", "1e3", "4294967296"] {
        let err = run(&base(), Some(bad)).expect_err(bad);
        assert_eq!(err.attribute, "volume_mount_group", "{bad}");
        assert!(err.message.contains("fsGroup"), "{err}");
    }
}

#[test]
fn annotations_pass_through() {
    let spec = ok(&[
        ("example.com/team", "payments"),
        ("app.kubernetes.io/name", "web"),
        (
            kubelet::SERVICE_ACCOUNT_TOKENS,
            "{\"aud\":{\"token\":\"t0k3n\"}}",
        ),
        ("csi.storage.k8s.io/some.future.key", "x"),
    ]);
    let want: BTreeMap<String, String> = [
        ("app.kubernetes.io/name".to_string(), "web".to_string()),
        ("example.com/team".to_string(), "payments".to_string()),
    ]
    .into_iter()
    .collect();
    assert_eq!(spec.annotations, want);
    assert_eq!(
        spec.tokens.as_ref().map(|t| t.expose()),
        Some("{\"aud\":{\"token\":\"t0k3n\"}}")
    );
}

#[test]
fn unprefixed_keys_are_ignored_with_a_warning() {
    let spec = ok(&[("foo", "bar")]);
    assert_eq!(spec.warnings.len(), 1);
    assert_eq!(spec.warnings[0].attribute, "foo");
    assert!(spec.warnings[0].message.contains("ignored"));
    assert!(spec.unknown_attributes.is_empty());

    // One that looks like an attribute is a stray: reported, and refused
    // in strict mode.
    let spec = ok(&[("dns-names", "a.example.com")]);
    assert_eq!(spec.unknown_attributes, vec!["dns-names"]);
    assert!(spec.sans.dns_names.is_empty());
    assert!(
        spec.warnings[0]
            .message
            .contains("did you mean csi.cert-manager.io/dns-names?"),
        "{:?}",
        spec.warnings
    );
    let err = check_unknown_attributes(&with(&[("dns-names", "a.example.com")])).unwrap_err();
    assert_eq!(err.attribute, "dns-names");
    assert!(
        err.message
            .contains("did you mean csi.cert-manager.io/dns-names?"),
        "{err}"
    );
}

const STRAYS: [(&str, &str); 10] = [
    (
        "csi.cert-manager.io/dns-name",
        "csi.cert-manager.io/dns-names",
    ),
    ("csi.cert-manager.io/ip-san", "csi.cert-manager.io/ip-sans"),
    (
        "csi.cert-manager.io/issuer-nme",
        "csi.cert-manager.io/issuer-name",
    ),
    (
        "csi.cert-manager.io/private-key-file",
        "csi.cert-manager.io/privatekey-file",
    ),
    (
        "csi.cert-manager.io/DNS-Names",
        "csi.cert-manager.io/dns-names",
    ),
    (
        "csi.cert-manager.io/organisations",
        "csi.cert-manager.io/organizations",
    ),
    (
        "csi.cert-manager.io/pkcs12-file",
        "csi.cert-manager.io/pkcs12-filename",
    ),
    // A near-miss prefix: upstream copies it as an annotation.
    ("cert-manager.io/dns-names", "csi.cert-manager.io/dns-names"),
    (
        "csi.certmanager.io/duration",
        "csi.cert-manager.io/duration",
    ),
    ("csi.cert-manager.com/is-ca", "csi.cert-manager.io/is-ca"),
];

#[test]
fn unknown_attributes_are_ignored_as_upstream_with_the_nearest_key() {
    for (key, nearest) in STRAYS {
        let spec = ok(&[(key, "x")]);
        assert_eq!(spec.unknown_attributes, vec![key.to_string()]);
        assert_eq!(nearest_attribute(key).as_deref(), Some(nearest), "{key}");
        let warning = spec
            .warnings
            .iter()
            .find(|w| w.attribute == key)
            .unwrap_or_else(|| panic!("no warning for {key}: {:?}", spec.warnings));
        assert!(
            warning
                .message
                .contains(&format!("did you mean {nearest}?")),
            "{warning}"
        );
        assert!(warning.message.contains("--strict-attributes"), "{warning}");
        // Only keys of other prefixes become annotations, as upstream.
        assert_eq!(
            spec.annotations.contains_key(key),
            !key.starts_with(attributes::PREFIX),
            "{key}"
        );
    }
    let spec = ok(&[("csi.cert-manager.io/frobnicate", "x")]);
    assert_eq!(
        spec.unknown_attributes,
        vec!["csi.cert-manager.io/frobnicate"]
    );
    assert_eq!(nearest_attribute("csi.cert-manager.io/frobnicate"), None);
    assert!(spec.warnings[0].message.contains("check the spelling"));
}

#[test]
fn strict_mode_refuses_unknown_attributes_with_the_nearest_key() {
    for (key, nearest) in STRAYS {
        let err = check_unknown_attributes(&with(&[(key, "x")])).unwrap_err();
        assert_eq!(err.attribute, key);
        assert!(
            err.message.contains(&format!("did you mean {nearest}?")),
            "{key}: {err}"
        );
    }
    let err =
        check_unknown_attributes(&with(&[("csi.cert-manager.io/frobnicate", "x")])).unwrap_err();
    assert!(err.message.contains("unknown attribute"), "{err}");
    assert!(err.message.contains("--strict-attributes"), "{err}");
    for doc in ATTRIBUTES {
        assert!(
            err.message.contains(doc.key),
            "the list lacks {}: {err}",
            doc.key
        );
    }
    // Known keys, the kubelet's, annotations and cert-csi's own pass.
    check_unknown_attributes(&with(&[
        (keys::DNS_NAMES, "a"),
        ("example.com/team", "x"),
        (CREDENTIAL_BUNDLE_FILE, "b.pem"),
        ("foo", "bar"),
    ]))
    .unwrap();
}

#[test]
fn an_unknown_key_is_reported_before_what_it_causes() {
    // The typo leaves issuer-name unset; in strict mode the typo is the
    // message (it is checked first), otherwise the warning names it.
    let mut ctx = base();
    ctx.remove(keys::ISSUER_NAME);
    ctx.insert("csi.cert-manager.io/issuer-nam".into(), "ca".into());
    let err = check_unknown_attributes(&ctx).unwrap_err();
    assert_eq!(err.attribute, "csi.cert-manager.io/issuer-nam");
    assert!(err.message.contains("issuer-name"));
    assert_eq!(parse_ctx(&ctx).unwrap_err().attribute, keys::ISSUER_NAME);
}

#[test]
fn the_first_error_is_deterministic() {
    let ctx = with(&[
        ("csi.cert-manager.io/zzz-unknown", "x"),
        ("csi.cert-manager.io/aaa-unknown", "x"),
        (keys::DURATION, "bad"),
        (keys::RENEW_BEFORE, "bad"),
    ]);
    for _ in 0..20 {
        // HashMap iteration order varies between maps; the answer must not.
        let copy: HashMap<String, String> = ctx.clone().into_iter().collect();
        assert_eq!(
            check_unknown_attributes(&copy).unwrap_err().attribute,
            "csi.cert-manager.io/aaa-unknown"
        );
        assert_eq!(parse_ctx(&copy).unwrap_err().attribute, keys::DURATION);
        let spec_keys = parse_ctx(&with(&[
            ("csi.cert-manager.io/zzz-unknown", "x"),
            ("csi.cert-manager.io/aaa-unknown", "x"),
        ]))
        .unwrap()
        .unknown_attributes;
        assert_eq!(
            spec_keys,
            [
                "csi.cert-manager.io/aaa-unknown",
                "csi.cert-manager.io/zzz-unknown"
            ]
        );
    }
}

enum Change<'a> {
    Set(&'a str, &'a str),
    Remove(&'a str),
    NotReadOnly,
    Target(&'a str),
    VolumeId(&'a str),
}

use Change::*;

#[test]
fn bad_inputs_name_the_attribute_and_say_why() {
    let long_name = "n".repeat(256);
    let cases: Vec<(Vec<Change>, &str, &str)> = vec![
        // The kubelet's fields.
        (vec![VolumeId("")], "volume_id", "empty"),
        (vec![VolumeId("pods/../etc")], "volume_id", "'/'"),
        (
            vec![Target("relative/mount")],
            "target_path",
            "not an absolute path",
        ),
        (vec![Target("/a/../b")], "target_path", "'..'"),
        (vec![Target("/a//b")], "target_path", "'//'"),
        (vec![Target("/a/b/")], "target_path", "ends with '/'"),
        (
            vec![Remove(kubelet::EPHEMERAL)],
            kubelet::EPHEMERAL,
            "only CSI inline ephemeral volumes",
        ),
        (
            vec![Set(kubelet::EPHEMERAL, "false")],
            kubelet::EPHEMERAL,
            "is \"false\"",
        ),
        (
            vec![NotReadOnly],
            "readonly",
            "pod.spec.volumes[].csi.readOnly must be set to 'true'",
        ),
        (
            vec![Remove(kubelet::POD_NAME)],
            kubelet::POD_NAME,
            "podInfoOnMount: true",
        ),
        (
            vec![Remove(kubelet::POD_NAMESPACE)],
            kubelet::POD_NAMESPACE,
            "podInfoOnMount",
        ),
        (vec![Set(kubelet::POD_UID, "")], kubelet::POD_UID, "missing"),
        (
            vec![Remove(kubelet::SERVICE_ACCOUNT_NAME)],
            kubelet::SERVICE_ACCOUNT_NAME,
            "missing",
        ),
        // Keys.
        (
            vec![Set("cert-csi.io/anything", "a")],
            "cert-csi.io/anything",
            "reserved",
        ),
        (
            vec![Set("Example.com/x", "a")],
            "Example.com/x",
            "not a valid annotation key",
        ),
        // Issuer.
        (
            vec![Remove(keys::ISSUER_NAME)],
            keys::ISSUER_NAME,
            "is required",
        ),
        (
            vec![Set(keys::ISSUER_NAME, "")],
            keys::ISSUER_NAME,
            "is required",
        ),
        (
            vec![Set(keys::ISSUER_NAME, "CA_Issuer")],
            keys::ISSUER_NAME,
            "not a valid Kubernetes name",
        ),
        (
            vec![Set(keys::ISSUER_KIND, "CertificateIssuer")],
            keys::ISSUER_KIND,
            "use Issuer or ClusterIssuer",
        ),
        (
            vec![Set(keys::ISSUER_KIND, "clusterissuer")],
            keys::ISSUER_KIND,
            "did you mean ClusterIssuer?",
        ),
        (
            vec![
                Set(keys::ISSUER_GROUP, "example.com"),
                Set(keys::ISSUER_KIND, "My Issuer"),
            ],
            keys::ISSUER_KIND,
            "not a Kubernetes kind",
        ),
        (
            vec![Set(keys::ISSUER_GROUP, "Example.com")],
            keys::ISSUER_GROUP,
            "API group",
        ),
        // Subject.
        (
            vec![Set(keys::LITERAL_SUBJECT, "app")],
            keys::LITERAL_SUBJECT,
            "type=value",
        ),
        (
            vec![Set(keys::LITERAL_SUBJECT, "CN=a;b")],
            keys::LITERAL_SUBJECT,
            "type=value",
        ),
        (
            vec![Set(keys::LITERAL_SUBJECT, "CN=a,EMAIL=b")],
            keys::LITERAL_SUBJECT,
            "not an attribute type",
        ),
        (
            vec![Set(keys::LITERAL_SUBJECT, "CN=bad\\escape")],
            keys::LITERAL_SUBJECT,
            "escapes nothing",
        ),
        (
            vec![Set(keys::LITERAL_SUBJECT, "CN=$NODE_NAME")],
            keys::LITERAL_SUBJECT,
            "unknown variable ${NODE_NAME}",
        ),
        (
            vec![Set(keys::COMMON_NAME, "$HOSTNAME")],
            keys::COMMON_NAME,
            "$POD_NAME, $POD_NAMESPACE, $POD_UID, $SERVICE_ACCOUNT_NAME",
        ),
        (
            vec![Set(keys::COMMON_NAME, "$$")],
            keys::COMMON_NAME,
            "'$$' is not an escape",
        ),
        (
            vec![Set(keys::ORGANIZATIONS, "Example \"Inc\"")],
            keys::ORGANIZATIONS,
            "does not start with one",
        ),
        (
            vec![Set(keys::COUNTRIES, "\"DE")],
            keys::COUNTRIES,
            "never closes",
        ),
        (
            vec![Set(keys::PROVINCES, "a\nb")],
            keys::PROVINCES,
            "several lines",
        ),
        (
            vec![Set(keys::LOCALITIES, "$1")],
            keys::LOCALITIES,
            "names the variable \"1\"",
        ),
        // SANs.
        (
            vec![Set(keys::DNS_NAMES, "bücher.example")],
            keys::DNS_NAMES,
            "not ASCII",
        ),
        (
            vec![Set(keys::DNS_NAMES, "$POD_NAME.$NODE")],
            keys::DNS_NAMES,
            "unknown variable ${NODE}",
        ),
        (
            vec![Set(keys::IP_SANS, "10.0.0.0/8")],
            keys::IP_SANS,
            "\"10.0.0.0/8\" is not an IPv4 or IPv6 address",
        ),
        (
            vec![Set(keys::IP_SANS, "localhost")],
            keys::IP_SANS,
            "not an IPv4 or IPv6",
        ),
        (
            vec![Set(keys::URI_SANS, "relative/path")],
            keys::URI_SANS,
            "or an absolute path such as /app",
        ),
        (
            vec![Set(keys::URI_SANS, "https://exa mple.com")],
            keys::URI_SANS,
            "invalid character ' ' in the host",
        ),
        (
            vec![Set(keys::URI_SANS, "http://[::1")],
            keys::URI_SANS,
            "missing ']'",
        ),
        // Durations and booleans.
        (
            vec![Set(keys::DURATION, "30d")],
            keys::DURATION,
            "720h is 30 days",
        ),
        (vec![Set(keys::DURATION, "90")], keys::DURATION, "no unit"),
        (vec![Set(keys::DURATION, "-1h")], keys::DURATION, "negative"),
        (
            vec![Set(keys::DURATION, "0s")],
            keys::DURATION,
            "greater than zero",
        ),
        (
            vec![Set(keys::RENEW_BEFORE, "-1m")],
            keys::RENEW_BEFORE,
            "negative",
        ),
        (
            vec![Set(keys::RENEW_BEFORE, "soon")],
            keys::RENEW_BEFORE,
            "expected a number",
        ),
        (
            vec![Set(keys::IS_CA, "yes")],
            keys::IS_CA,
            "exactly true or false",
        ),
        (
            vec![Set(keys::IS_CA, "True")],
            keys::IS_CA,
            "\"True\" is not allowed",
        ),
        (
            vec![Set(keys::REUSE_PRIVATE_KEY, "1")],
            keys::REUSE_PRIVATE_KEY,
            "true or false",
        ),
        // Usages.
        (
            vec![Set(keys::KEY_USAGES, "server-auth")],
            keys::KEY_USAGES,
            "\"server-auth\" is not a cert-manager key usage",
        ),
        (
            vec![Set(keys::KEY_USAGES, "Server Auth")],
            keys::KEY_USAGES,
            "did you mean \"server auth\"?",
        ),
        (
            vec![Set(keys::KEY_USAGES, "server auth,")],
            keys::KEY_USAGES,
            "entry 2",
        ),
        // Keys.
        (
            vec![Set(keys::KEY_ALGORITHM, "DSA")],
            keys::KEY_ALGORITHM,
            "use RSA, ECDSA or Ed25519",
        ),
        (
            vec![Set(keys::KEY_SIZE, "1024")],
            keys::KEY_SIZE,
            "at least 2048",
        ),
        (
            vec![Set(keys::KEY_SIZE, "16384")],
            keys::KEY_SIZE,
            "at most 8192",
        ),
        (
            vec![Set(keys::KEY_SIZE, "8193")],
            keys::KEY_SIZE,
            "at most 8192",
        ),
        (
            vec![Set(keys::KEY_SIZE, "-2048")],
            keys::KEY_SIZE,
            "not a number",
        ),
        (
            vec![Set(keys::KEY_SIZE, "big")],
            keys::KEY_SIZE,
            "not a number",
        ),
        (
            vec![Set(keys::KEY_SIZE, "99999999999")],
            keys::KEY_SIZE,
            "too large",
        ),
        (
            vec![
                Set(keys::KEY_ALGORITHM, "ECDSA"),
                Set(keys::KEY_SIZE, "2048"),
            ],
            keys::KEY_SIZE,
            "256, 384 or 521",
        ),
        (
            vec![
                Set(keys::KEY_ALGORITHM, "Ed25519"),
                Set(keys::KEY_SIZE, "256"),
            ],
            keys::KEY_SIZE,
            "fixed size",
        ),
        (
            vec![Set(keys::KEY_ENCODING, "PEM")],
            keys::KEY_ENCODING,
            "PKCS1 (RSA only) or PKCS8",
        ),
        (
            vec![
                Set(keys::KEY_ALGORITHM, "ECDSA"),
                Set(keys::KEY_ENCODING, "PKCS1"),
            ],
            keys::KEY_ENCODING,
            "only RSA",
        ),
        (
            vec![
                Set(keys::KEY_ALGORITHM, "Ed25519"),
                Set(keys::KEY_ENCODING, "pkcs1"),
            ],
            keys::KEY_ENCODING,
            "only RSA",
        ),
        // Files.
        (
            vec![Set(keys::CERTIFICATE_FILE, "/etc/tls.crt")],
            keys::CERTIFICATE_FILE,
            "absolute",
        ),
        (
            vec![Set(keys::PRIVATE_KEY_FILE, "..data")],
            keys::PRIVATE_KEY_FILE,
            "starts with '..'",
        ),
        (
            vec![Set(keys::CA_FILE, "certs/ca.crt")],
            keys::CA_FILE,
            "contains '/'",
        ),
        (
            vec![Set(keys::CA_FILE, " ca.crt")],
            keys::CA_FILE,
            "whitespace",
        ),
        (vec![Set(keys::CA_FILE, &long_name)], keys::CA_FILE, "255"),
        (
            vec![Set(keys::CA_FILE, "tls.crt")],
            keys::CA_FILE,
            "also used by csi.cert-manager.io/certificate-file",
        ),
        (
            vec![Set(keys::PRIVATE_KEY_FILE, "tls.crt")],
            keys::PRIVATE_KEY_FILE,
            "also used by csi.cert-manager.io/certificate-file",
        ),
        (
            vec![
                Set(keys::PKCS12_ENABLE, "true"),
                Set(keys::PKCS12_PASSWORD, "pw"),
                Set(keys::PKCS12_FILENAME, "tls.key"),
            ],
            keys::PKCS12_FILENAME,
            "also used by csi.cert-manager.io/privatekey-file",
        ),
        // PKCS#12.
        (
            vec![Set(keys::PKCS12_ENABLE, "yes")],
            keys::PKCS12_ENABLE,
            "exactly true or false",
        ),
        (
            vec![Set(keys::PKCS12_ENABLE, "true")],
            keys::PKCS12_PASSWORD,
            "is required because",
        ),
        (
            vec![Set(keys::PKCS12_PASSWORD, "pw")],
            keys::PKCS12_PASSWORD,
            "is not set",
        ),
        (
            vec![Set(keys::PKCS12_FILENAME, "a.p12")],
            keys::PKCS12_FILENAME,
            "only used together with csi.cert-manager.io/pkcs12-enable, which is not set",
        ),
        (
            vec![
                Set(keys::PKCS12_ENABLE, "false"),
                Set(keys::PKCS12_FILENAME, "/abs.p12"),
            ],
            keys::PKCS12_FILENAME,
            "absolute",
        ),
        (
            vec![
                Set(keys::PKCS12_ENABLE, "true"),
                Set(keys::PKCS12_PASSWORD, "pw"),
                Set(keys::PKCS12_FILENAME, "../a.p12"),
            ],
            keys::PKCS12_FILENAME,
            "'..'",
        ),
        // fs-group.
        (
            vec![Set(keys::FS_GROUP, "0")],
            keys::FS_GROUP,
            "1 to 4294967295",
        ),
        (
            vec![Set(keys::FS_GROUP, "4294967296")],
            keys::FS_GROUP,
            "1 to 4294967295",
        ),
        (
            vec![Set(keys::FS_GROUP, "-5")],
            keys::FS_GROUP,
            "\"-5\" is not a group id",
        ),
        (
            vec![Set(keys::FS_GROUP, "+")],
            keys::FS_GROUP,
            "not a group id",
        ),
        (
            vec![Set(keys::FS_GROUP, "+-5")],
            keys::FS_GROUP,
            "not a group id",
        ),
        (
            vec![Set(keys::FS_GROUP, "wheel")],
            keys::FS_GROUP,
            "not a group id",
        ),
    ];
    assert!(cases.len() >= 40, "only {} cases", cases.len());

    for (changes, attribute, fragment) in &cases {
        let mut ctx = base();
        let mut readonly = true;
        let mut target = TARGET.to_string();
        let mut id = volume_id();
        for change in changes {
            match change {
                Set(k, v) => {
                    ctx.insert(k.to_string(), v.to_string());
                }
                Remove(k) => {
                    ctx.remove(*k);
                }
                NotReadOnly => readonly = false,
                Target(t) => target = t.to_string(),
                VolumeId(v) => id = v.to_string(),
            }
        }
        let result = parse(&PublishInput {
            volume_id: &id,
            target_path: &target,
            readonly,
            volume_mount_group: None,
            context: &ctx,
        });
        let err = match result {
            Ok(_) => panic!("expected an error on {attribute} containing {fragment:?}"),
            Err(e) => e,
        };
        assert_eq!(
            err.attribute, *attribute,
            "wrong attribute for {fragment:?}: {err}"
        );
        assert!(
            err.message.contains(fragment),
            "message for {attribute} lacks {fragment:?}: {err}"
        );
        assert_eq!(
            err.to_string(),
            format!("{}: {}", err.attribute, err.message)
        );
    }
}

#[test]
fn messages_never_echo_the_pkcs12_password() {
    // Every pkcs12 error path, with a password that must not be printed.
    let password = "hunter2-very-secret";
    let cases: &[&[(&str, &str)]] = &[
        &[(keys::PKCS12_PASSWORD, password)],
        &[
            (keys::PKCS12_ENABLE, "yes"),
            (keys::PKCS12_PASSWORD, password),
        ],
        &[
            (keys::PKCS12_ENABLE, "true"),
            (keys::PKCS12_PASSWORD, password),
            (keys::PKCS12_FILENAME, "/abs"),
        ],
    ];
    for pairs in cases {
        let err = rejected(pairs);
        assert!(!err.to_string().contains(password), "{err}");
    }
}

#[test]
fn debug_output_hides_secrets() {
    let tokens = r#"{"vault":{"token":"eyJhbGciOiJSUzI1NiIsImtpZCI6IkFCQyJ9.secret-token","expirationTimestamp":"2030-01-01T00:00:00Z"}}"#;
    let spec = ok(&[
        (keys::PKCS12_ENABLE, "true"),
        (keys::PKCS12_PASSWORD, "hunter2-very-secret"),
        (kubelet::SERVICE_ACCOUNT_TOKENS, tokens),
    ]);
    let debug = format!("{spec:?}");
    let pretty = format!("{spec:#?}");
    for text in [&debug, &pretty] {
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains("secret-token"), "{text}");
        assert!(!text.contains("eyJhbGci"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
    }
    // The values are still there for the code that needs them.
    assert_eq!(
        spec.pkcs12.unwrap().password.expose(),
        "hunter2-very-secret"
    );
    assert_eq!(spec.tokens.unwrap().expose(), tokens);
}

#[test]
fn fingerprint_ignores_tokens_and_sees_everything_else() {
    let a = base();
    let mut with_tokens = a.clone();
    with_tokens.insert(
        kubelet::SERVICE_ACCOUNT_TOKENS.into(),
        "{\"a\":{\"token\":\"one\"}}".into(),
    );
    let mut other_tokens = a.clone();
    other_tokens.insert(
        kubelet::SERVICE_ACCOUNT_TOKENS.into(),
        "{\"a\":{\"token\":\"two\"}}".into(),
    );

    let fp = context_fingerprint(&a);
    assert_eq!(fp.len(), 64);
    assert!(fp.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(context_fingerprint(&with_tokens), fp);
    assert_eq!(context_fingerprint(&other_tokens), fp);

    // The same context in a BTreeMap (as kept in node state) hashes the same.
    assert_eq!(
        context_fingerprint(&context_without_tokens(&with_tokens)),
        fp
    );

    let mut changed = a.clone();
    changed.insert(keys::DNS_NAMES.into(), "a.example.com".into());
    assert_ne!(context_fingerprint(&changed), fp);
    let mut changed_value = a.clone();
    changed_value.insert(keys::ISSUER_NAME.into(), "other".into());
    assert_ne!(context_fingerprint(&changed_value), fp);

    // Length prefixes keep key/value boundaries: these two must differ.
    let x: HashMap<String, String> = [("ab".to_string(), "c".to_string())].into_iter().collect();
    let y: HashMap<String, String> = [("a".to_string(), "bc".to_string())].into_iter().collect();
    assert_ne!(context_fingerprint(&x), context_fingerprint(&y));
}

#[test]
fn context_without_tokens_keeps_everything_else() {
    let mut ctx = base();
    ctx.insert(kubelet::SERVICE_ACCOUNT_TOKENS.into(), "secret".into());
    let kept = context_without_tokens(&ctx);
    assert!(!kept.contains_key(kubelet::SERVICE_ACCOUNT_TOKENS));
    assert_eq!(kept.len(), base().len());
    for (k, v) in base() {
        assert_eq!(kept.get(&k), Some(&v));
    }
}

#[test]
fn upstream_readme_example_parses() {
    // The example from cert-manager's csi-driver documentation, unchanged.
    let spec = ok(&[
        (keys::ISSUER_NAME, "ca-issuer"),
        (
            keys::DNS_NAMES,
            "${POD_NAME}.${POD_NAMESPACE}.svc.cluster.local",
        ),
        (
            keys::URI_SANS,
            "spiffe://cluster.local/ns/${POD_NAMESPACE}/pod/${POD_NAME}/${POD_UID}",
        ),
        (
            keys::COMMON_NAME,
            "${SERVICE_ACCOUNT_NAME}.${POD_NAMESPACE}",
        ),
        (keys::DURATION, "72h"),
        (keys::RENEW_BEFORE, "24h"),
        (keys::KEY_USAGES, "server auth, client auth"),
        (keys::IS_CA, "false"),
    ]);
    assert_eq!(spec.sans.dns_names, vec!["web-0.shop.svc.cluster.local"]);
    assert_eq!(
        spec.sans.uris,
        vec![format!(
            "spiffe://cluster.local/ns/shop/pod/web-0/{POD_UID}"
        )]
    );
    assert_eq!(spec.subject.common_name.as_deref(), Some("frontend.shop"));
    assert_eq!(spec.duration, Duration::from_secs(72 * 3600));
    assert_eq!(spec.renew_before, Some(Duration::from_secs(24 * 3600)));
    assert_eq!(spec.usages, vec![Usage::ServerAuth, Usage::ClientAuth]);
}

#[test]
fn publish_input_debug_shows_keys_not_values() {
    let ctx = with(&[
        (keys::PKCS12_ENABLE, "true"),
        (keys::PKCS12_PASSWORD, "hunter2-very-secret"),
        (kubelet::SERVICE_ACCOUNT_TOKENS, "secret-token-value"),
    ]);
    let input = PublishInput {
        volume_id: "v",
        target_path: TARGET,
        readonly: true,
        volume_mount_group: None,
        context: &ctx,
    };
    let debug = format!("{input:?}");
    assert!(debug.contains(keys::PKCS12_PASSWORD), "{debug}");
    assert!(
        !debug.contains("hunter2") && !debug.contains("secret-token"),
        "{debug}"
    );
}

#[test]
fn other_prefixes_near_ours_are_typos_only_for_attribute_names() {
    // A cert-manager annotation that is not one of our attribute names passes through.
    let spec = ok(&[("cert-manager.io/certificate-name", "web")]);
    assert_eq!(
        spec.annotations
            .get("cert-manager.io/certificate-name")
            .map(String::as_str),
        Some("web")
    );
    assert!(spec.unknown_attributes.is_empty());
    // One that is an attribute name is a stray: passed on as upstream
    // does, with a warning; refused in strict mode.
    let spec = ok(&[("cert-manager.io/issuer-name", "ca")]);
    assert_eq!(spec.unknown_attributes, ["cert-manager.io/issuer-name"]);
    let err =
        check_unknown_attributes(&with(&[("cert-manager.io/issuer-name", "ca")])).unwrap_err();
    assert!(
        err.message
            .contains("did you mean csi.cert-manager.io/issuer-name?"),
        "{err}"
    );
}

#[test]
fn credentials_never_reach_node_state_or_fingerprints() {
    let mut context: HashMap<String, String> = HashMap::from([
        (keys::ISSUER_NAME.to_string(), "ca".to_string()),
        (
            keys::PKCS12_PASSWORD.to_string(),
            "hunter2-secret".to_string(),
        ),
        (
            kubelet::SERVICE_ACCOUNT_TOKENS.to_string(),
            "{\"\":{\"token\":\"t\"}}".to_string(),
        ),
    ]);
    let stored = context_without_tokens(&context);
    assert_eq!(stored.keys().collect::<Vec<_>>(), vec![keys::ISSUER_NAME]);
    let before = context_fingerprint(&context);
    context.insert(keys::PKCS12_PASSWORD.to_string(), "other".to_string());
    assert_eq!(
        before,
        context_fingerprint(&context),
        "the password is not hashed"
    );
    context.insert(keys::ISSUER_NAME.to_string(), "other-ca".to_string());
    assert_ne!(
        before,
        context_fingerprint(&context),
        "other attributes are"
    );
}

#[test]
fn the_credential_bundle_is_cert_csis_only_own_attribute() {
    let spec = ok(&[(CREDENTIAL_BUNDLE_FILE, "credentials.pem")]);
    assert_eq!(
        spec.credential_bundle_file.as_deref(),
        Some("credentials.pem")
    );
    // Never an annotation: the prefix stays out of the request.
    assert!(
        spec.annotations
            .keys()
            .all(|k| !k.starts_with("cert-csi.io/")),
        "{:?}",
        spec.annotations
    );
    assert_eq!(ok(&[]).credential_bundle_file, None);
    assert_eq!(
        ok(&[(CREDENTIAL_BUNDLE_FILE, "")]).credential_bundle_file,
        None
    );

    let e = rejected(&[(CREDENTIAL_BUNDLE_FILE, "ca.crt")]);
    assert_eq!(e.attribute, CREDENTIAL_BUNDLE_FILE);
    assert!(e.message.contains("also used by"), "{e}");
    let e = rejected(&[(CREDENTIAL_BUNDLE_FILE, "../x.pem")]);
    assert_eq!(e.attribute, CREDENTIAL_BUNDLE_FILE);
    let e = rejected(&[("cert-csi.io/credential-bundle", "x.pem")]);
    assert_eq!(e.attribute, "cert-csi.io/credential-bundle");
    assert!(e.message.contains(CREDENTIAL_BUNDLE_FILE), "{e}");
}

#[test]
fn values_past_rfc_5280_bounds_are_accepted_with_a_warning() {
    // At the bound no warning; one character over, a warning (upstream
    // does not check, and Go signs longer values).
    let cn64 = "a".repeat(64);
    assert!(ok(&[(keys::COMMON_NAME, &cn64)]).warnings.is_empty());
    let spec = ok(&[(keys::COMMON_NAME, &"a".repeat(65))]);
    assert_eq!(spec.subject.common_name, Some("a".repeat(65)));
    assert_eq!(spec.warnings.len(), 1);
    assert_eq!(spec.warnings[0].attribute, keys::COMMON_NAME);
    assert!(
        spec.warnings[0].message.contains("more than the 64"),
        "{}",
        spec.warnings[0]
    );
    // Counted in characters, not bytes.
    assert!(
        ok(&[(keys::COMMON_NAME, &"é".repeat(64))])
            .warnings
            .is_empty()
    );
    for (key, bound) in [
        (keys::ORGANIZATIONS, 64),
        (keys::ORGANIZATIONAL_UNITS, 64),
        (keys::COUNTRIES, 2),
        (keys::PROVINCES, 128),
        (keys::LOCALITIES, 128),
        (keys::STREET_ADDRESSES, 128),
        (keys::POSTAL_CODES, 40),
        (keys::SERIAL_NUMBER, 64),
    ] {
        assert!(
            ok(&[(key, &"b".repeat(bound))]).warnings.is_empty(),
            "{key}"
        );
        let spec = ok(&[(key, &format!("ok,{}", "b".repeat(bound + 1)))]);
        assert_eq!(spec.warnings.len(), 1, "{key}: {:?}", spec.warnings);
        assert_eq!(spec.warnings[0].attribute, key);
        assert!(
            spec.warnings[0]
                .message
                .contains(&format!("more than the {bound}"))
        );
    }
    // Expansion counts: a long pod UID pushes a CN over the bound.
    assert_eq!(
        ok(&[(keys::COMMON_NAME, "$POD_UID.$POD_UID")])
            .warnings
            .len(),
        1
    );
    // In a literal subject, by attribute type.
    let spec = ok(&[(keys::LITERAL_SUBJECT, "C=DEU,CN=app")]);
    assert_eq!(spec.warnings.len(), 1);
    assert_eq!(spec.warnings[0].attribute, keys::LITERAL_SUBJECT);
    assert!(spec.warnings[0].message.contains("more than the 2"));
}

#[test]
fn errors_quote_only_a_short_prefix_of_a_huge_value() {
    let huge = format!("{}!", "x".repeat(1 << 20));
    for key in [
        keys::URI_SANS,
        keys::IP_SANS,
        keys::KEY_SIZE,
        keys::LITERAL_SUBJECT,
        keys::DURATION,
        keys::KEY_ALGORITHM,
        keys::CERTIFICATE_FILE,
        keys::ISSUER_KIND,
    ] {
        let err = rejected(&[(key, &huge)]);
        assert!(
            err.to_string().len() < 1024,
            "{key}: a {} byte message",
            err.to_string().len()
        );
    }
    // Warnings quote a prefix too.
    for key in [keys::DNS_NAMES, keys::COMMON_NAME, keys::ORGANIZATIONS] {
        let spec = ok(&[(key, &huge)]);
        assert!(!spec.warnings.is_empty(), "{key}");
        for w in &spec.warnings {
            assert!(
                w.to_string().len() < 1024,
                "{key}: {} bytes",
                w.to_string().len()
            );
        }
    }
    let err = rejected(&[(
        keys::DNS_NAMES,
        &format!("$POD_NAME{}", "Y".repeat(1 << 20)),
    )]);
    assert!(
        err.to_string().len() < 1024,
        "{} bytes",
        err.to_string().len()
    );
}

#[test]
fn context_size_and_san_count_are_capped() {
    let limits = InputLimits {
        max_context_bytes: 2048,
        max_sans: 3,
    };
    let mut ctx = with(&[(keys::DNS_NAMES, "a.example,b.example")]);
    check_context_size(&ctx, &limits).unwrap();
    // The kubelet's own keys (tokens can be large) are not counted.
    ctx.insert(kubelet::SERVICE_ACCOUNT_TOKENS.into(), "t".repeat(10_000));
    check_context_size(&ctx, &limits).unwrap();
    ctx.insert("example.com/note".into(), "n".repeat(2048));
    let err = check_context_size(&ctx, &limits).unwrap_err();
    assert_eq!(err.attribute, VOLUME_CONTEXT);
    assert!(
        err.message.contains("--max-volume-context-bytes (2048)"),
        "{err}"
    );

    let spec = ok(&[
        (keys::DNS_NAMES, "a.example,b.example"),
        (keys::IP_SANS, "10.0.0.1"),
    ]);
    check_san_count(&spec.sans, &limits).unwrap();
    let spec = ok(&[
        (keys::DNS_NAMES, "a.example,b.example,c.example"),
        (keys::IP_SANS, "10.0.0.1"),
    ]);
    let err = check_san_count(&spec.sans, &limits).unwrap_err();
    assert_eq!(err.attribute, keys::DNS_NAMES);
    assert!(err.message.contains("4 subject alternative names"), "{err}");
    let defaults = InputLimits::default();
    assert_eq!(
        (defaults.max_context_bytes, defaults.max_sans),
        (65536, 256)
    );
}
