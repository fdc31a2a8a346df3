//! Subject names, encoded byte for byte as cert-manager encodes them.
//!
//! Two inputs reach a CSR's subject:
//! - a literal subject string (`csi.cert-manager.io/literal-subject`, a
//!   Certificate's `spec.literalSubject`). cert-manager reads it with
//!   go-ldap's `ParseDN`, maps the attribute types through its own keyword
//!   table (`pkg/util/pki/subject.go`), reverses the RDNs and marshals them
//!   with Go's `encoding/asn1`;
//! - subject fields (common name, organizations, ...), which go through Go's
//!   `pkix.Name.ToRDNSequence` and the same marshalling.
//!
//! Go's marshalling writes each value as a PrintableString when every
//! character is in PrintableString's set (without `*` and `&`), and as a
//! UTF8String otherwise, and sorts the members of each RDN by their DER
//! bytes. This module follows those rules so that the subject DER of a
//! request equals the one upstream would send for the same input: issuers,
//! approvers and policies that compare subjects see no difference.
//!
//! The literal parser follows go-ldap v3.4's `ParseDN` (the version
//! cert-manager v1.20 and v1.21 build with), including its leniencies:
//! spaces around `=`, `,` and `+` are trimmed, `;` separates RDNs like `,`,
//! and `"`, `<` and `>` need no escape. cert-csi differs in one place only:
//! attribute type keywords are matched regardless of case (`cn=app`), where
//! upstream knows them in upper case only and fails to encode anything else.

use der::asn1::{Any, ObjectIdentifier};
use der::{Encode, Tag};
use x509_cert::attr::AttributeTypeAndValue;

use super::spec::SubjectSpec;

/// One attribute of a subject: its type and its text, as Go holds a
/// `pkix.AttributeTypeAndValue` with a string value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attribute {
    pub oid: ObjectIdentifier,
    pub value: String,
}

/// A relative distinguished name: the attributes of one SET.
pub type Rdn = Vec<Attribute>;

/// cert-manager's keyword table (`attributeTypeNames` in
/// `pkg/util/pki/subject.go`): the only names it maps to types.
const KEYWORDS: [(&str, &str); 10] = [
    ("C", "2.5.4.6"),
    ("O", "2.5.4.10"),
    ("OU", "2.5.4.11"),
    ("CN", "2.5.4.3"),
    ("SERIALNUMBER", "2.5.4.5"),
    ("L", "2.5.4.7"),
    ("ST", "2.5.4.8"),
    ("STREET", "2.5.4.9"),
    ("DC", "0.9.2342.19200300.100.1.25"),
    ("UID", "0.9.2342.19200300.100.1.1"),
];

/// The keywords, for messages.
pub fn keyword_list() -> String {
    KEYWORDS.map(|(k, _)| k).join(", ")
}

/// The RDNs of a literal subject, in encoding order (the reverse of the
/// string, whose last RDN is the most significant). A blank string is an
/// empty subject, as upstream.
pub fn parse_literal(dn: &str) -> Result<Vec<Rdn>, String> {
    let mut rdns = Vec::new();
    for rdn in parse_dn(dn)?.into_iter().rev() {
        let mut attributes = Vec::with_capacity(rdn.len());
        for (kind, value) in rdn {
            let oid = attribute_type(&kind)?;
            let value = String::from_utf8(value).map_err(|_| {
                format!(
                    "the value of {} is not valid UTF-8 after its \\XX escapes are decoded; escape whole UTF-8 sequences or write the characters themselves",
                    shown(&kind)
                )
            })?;
            attributes.push(Attribute { oid, value });
        }
        rdns.push(attributes);
    }
    Ok(rdns)
}

/// The RDNs of subject fields in Go's `pkix.Name.ToRDNSequence` order: C,
/// ST, L, street, postalCode, O, OU, CN, serialNumber. The values of one
/// field share one RDN; empty and repeated values are kept, and an empty
/// common name or serial number is left out, all as Go does.
pub fn fields_rdns(subject: &SubjectSpec) -> Vec<Rdn> {
    let single = |v: &Option<String>| -> Vec<String> {
        v.iter().filter(|s| !s.is_empty()).cloned().collect()
    };
    let groups: [(&str, Vec<String>); 9] = [
        ("2.5.4.6", subject.countries.clone()),
        ("2.5.4.8", subject.provinces.clone()),
        ("2.5.4.7", subject.localities.clone()),
        ("2.5.4.9", subject.street_addresses.clone()),
        ("2.5.4.17", subject.postal_codes.clone()),
        ("2.5.4.10", subject.organizations.clone()),
        ("2.5.4.11", subject.organizational_units.clone()),
        ("2.5.4.3", single(&subject.common_name)),
        ("2.5.4.5", single(&subject.serial_number)),
    ];
    groups
        .into_iter()
        .filter(|(_, values)| !values.is_empty())
        .map(|(oid, values)| {
            let oid = ObjectIdentifier::new_unwrap(oid);
            values
                .into_iter()
                .map(|value| Attribute { oid, value })
                .collect()
        })
        .collect()
}

/// Whether Go's `encoding/asn1` writes `value` as a PrintableString: every
/// byte is a letter, a digit or one of ` '()+,-./:=?`. (Go reads `*` and `&`
/// in PrintableStrings but never writes them there.)
pub fn is_printable(value: &str) -> bool {
    value.bytes().all(|b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b' ' | b'\'' | b'(' | b')' | b'+' | b',' | b'-' | b'.' | b'/' | b':' | b'=' | b'?'
            )
    })
}

/// The DER of a subject (an RDNSequence), as Go's `asn1.Marshal` writes it.
pub fn encode(rdns: &[Rdn]) -> Result<Vec<u8>, der::Error> {
    let mut sets = Vec::new();
    for rdn in rdns {
        let mut members = Vec::with_capacity(rdn.len());
        for attribute in rdn {
            let tag = if is_printable(&attribute.value) {
                Tag::PrintableString
            } else {
                Tag::Utf8String
            };
            let atv = AttributeTypeAndValue {
                oid: attribute.oid,
                value: Any::new(tag, attribute.value.as_bytes())?,
            };
            members.push(atv.to_der()?);
        }
        // DER orders a SET OF by the members' encodings; Go sorts with
        // bytes.Compare, which is what Vec<u8>'s ordering is. Equal
        // members stay, as Go keeps them.
        members.sort();
        sets.extend(Any::new(Tag::Set, members.concat())?.to_der()?);
    }
    Any::new(Tag::Sequence, sets)?.to_der()
}

/// go-ldap's `ParseDN`: RDNs in string order, each a list of (type, value)
/// with escapes decoded. Values are bytes, since `\XX` escapes may spell
/// anything.
type RawRdn = Vec<(Vec<u8>, Vec<u8>)>;

fn parse_dn(dn: &str) -> Result<Vec<RawRdn>, String> {
    let mut rdns = Vec::new();
    if dn.trim().is_empty() {
        return Ok(rdns);
    }
    let bytes = dn.as_bytes();
    let mut rdn: RawRdn = Vec::new();
    // An empty type means "not seen yet", exactly as go-ldap tests it: a
    // type that decodes to nothing lets a later '=' set it again.
    let mut kind: Vec<u8> = Vec::new();
    let mut escaping = false;
    let mut start = 0;
    for (i, &c) in bytes.iter().enumerate() {
        if escaping {
            escaping = false;
        } else if c == b'\\' {
            escaping = true;
        } else if c == b'=' && kind.is_empty() {
            kind = decode_string(&dn[start..i])?;
            start = i + 1;
        } else if matches!(c, b',' | b'+' | b';') {
            if kind.is_empty() {
                return Err(format!(
                    "the part before the {:?} at byte {i} has no type=value pair; every part must be type=value, e.g. CN=app",
                    c as char
                ));
            }
            let value = decode_value(&dn[start..i], &kind)?;
            start = i + 1;
            rdn.push((std::mem::take(&mut kind), value));
            if c != b'+' {
                rdns.push(std::mem::take(&mut rdn));
            }
        }
    }
    if kind.is_empty() {
        return Err(
            "ends without a complete type=value pair (a trailing ',', '+' or ';', or a part without '='); every part must be type=value, e.g. CN=app".to_string(),
        );
    }
    let value = decode_value(&dn[start..], &kind)?;
    rdn.push((kind, value));
    rdns.push(rdn);
    Ok(rdns)
}

/// A value: `#` and hex digits is the BER encoding of the value, anything
/// else a string with RFC 4514 escapes.
fn decode_value(raw: &str, kind: &[u8]) -> Result<Vec<u8>, String> {
    match raw.strip_prefix('#') {
        Some(hex_digits) => decode_ber_string(hex_digits).map_err(|why| {
            format!(
                "the value of {} starts with '#', so it must be hex digits of a BER-encoded string, but {why}; escape a literal '#' as \\#",
                shown(kind)
            )
        }),
        None => decode_string(raw),
    }
}

/// Trims spaces around a type or value (an escaped trailing space stays)
/// and decodes `\c` and `\XX` escapes.
fn decode_string(raw: &str) -> Result<Vec<u8>, String> {
    let mut trimmed = raw.trim_matches(' ').to_string();
    if trimmed.ends_with('\\') && raw.ends_with(' ') {
        trimmed.push(' ');
    }
    let chars: Vec<char> = trimmed.chars().collect();
    let mut out = Vec::with_capacity(trimmed.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c != '\\' {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            i += 1;
            continue;
        }
        let bad = || {
            format!(
                "{} has a '\\' that escapes nothing; escape only , + ; \" \\ < > = # or a space, or write \\XX hex pairs",
                crate::volume::short_quote(&trimmed)
            )
        };
        match chars.get(i + 1) {
            None => return Err(bad()),
            Some(&e @ (' ' | '"' | '#' | '+' | ',' | ';' | '<' | '=' | '>' | '\\')) => {
                out.push(e as u8);
                i += 2;
            }
            Some(&high) => {
                let low = chars.get(i + 2).copied();
                match (high.to_digit(16), low.and_then(|l| l.to_digit(16))) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                    }
                    _ => return Err(bad()),
                }
            }
        }
    }
    Ok(out)
}

/// The contents of a `#`-value: one BER TLV read from the hex digits. As
/// go-asn1-ber does, the tag is read past and only the contents are kept
/// (they are then encoded like any other string); a string type's contents
/// must be valid for that type, and bytes after the TLV are ignored.
/// Constructed encodings, REAL and GeneralizedTime are refused: go-asn1-ber
/// re-encodes or parses those, and no subject attribute uses them.
fn decode_ber_string(hex_digits: &str) -> Result<Vec<u8>, String> {
    let bytes = hex::decode(hex_digits).map_err(|e| {
        format!(
            "{} is not hex ({e})",
            crate::volume::short_quote(hex_digits)
        )
    })?;
    let mut pos = 0;
    let mut next = || -> Result<u8, String> {
        let b = *bytes
            .get(pos)
            .ok_or("the encoding ends too early (a truncated tag or length)")?;
        pos += 1;
        Ok(b)
    };
    let first = next()?;
    let class = first >> 6;
    let constructed = first & 0x20 != 0;
    let mut tag = u64::from(first & 0x1f);
    if tag == 0x1f {
        tag = 0;
        for count in 1.. {
            let b = next()?;
            tag = (tag << 7) | u64::from(b & 0x7f);
            if count == 1 && tag == 0 {
                return Err("the tag number is malformed".into());
            }
            if count > 9 {
                return Err("the tag number is too large".into());
            }
            if b & 0x80 == 0 {
                break;
            }
        }
    }
    let length_byte = next()?;
    let length = match length_byte {
        0xff => return Err("the length byte 0xff is invalid".into()),
        0x80 => None,
        b if b & 0x80 == 0 => Some(usize::from(b)),
        b => {
            let count = usize::from(b & 0x7f);
            if count > 8 {
                return Err("the length is too large".into());
            }
            let mut length: u64 = 0;
            for _ in 0..count {
                length = (length << 8) | u64::from(next()?);
            }
            Some(usize::try_from(length).map_err(|_| "the length is too large".to_string())?)
        }
    };
    if constructed {
        return Err("it is a constructed encoding, which cert-csi does not read; write the value as text instead".into());
    }
    let length = length.ok_or("a primitive value cannot have an indefinite length")?;
    let contents = bytes
        .get(pos..)
        .and_then(|rest| rest.get(..length))
        .ok_or("the contents are shorter than the length says")?
        .to_vec();
    if class == 0 {
        match tag {
            9 | 24 => {
                return Err(
                    "REAL and GeneralizedTime values are not supported; write the value as text instead".into(),
                );
            }
            12 if std::str::from_utf8(&contents).is_err() => {
                return Err("the UTF8String is not valid UTF-8".into());
            }
            19 if !contents
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b" '()+,-.=/:?".contains(&b)) =>
            {
                return Err(
                    "the PrintableString holds a character PrintableString does not allow".into(),
                );
            }
            22 if contents.iter().any(|&b| b >= 0x7f) => {
                return Err("the IA5String holds a non-ASCII character".into());
            }
            _ => {}
        }
    }
    Ok(contents)
}

/// The type of an attribute: a keyword of cert-manager's table (in any
/// case), or a dotted OID.
fn attribute_type(kind: &[u8]) -> Result<ObjectIdentifier, String> {
    let text = String::from_utf8_lossy(kind);
    if let Some((_, oid)) = KEYWORDS.iter().find(|(k, _)| k.eq_ignore_ascii_case(&text)) {
        return Ok(ObjectIdentifier::new_unwrap(oid));
    }
    let not_a_type = || {
        format!(
            "{} is not an attribute type; use one of {} (as cert-manager does) or a dotted OID such as 2.5.4.3",
            shown(kind),
            keyword_list()
        )
    };
    // cert-manager reads each arc with strconv.Atoi, which allows a '+'.
    // A negative arc is refused: Go would write an empty OID, which its
    // own parser (and so cert-manager's webhook) then refuses.
    let mut arcs = Vec::new();
    for part in text.split('.') {
        let digits = part.strip_prefix('+').unwrap_or(part);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(not_a_type());
        }
        let arc: u32 = digits.parse().map_err(|_| {
            format!(
                "{} has an arc larger than {}, which cert-csi cannot encode",
                shown(kind),
                u32::MAX
            )
        })?;
        arcs.push(arc);
    }
    if arcs.len() < 2 {
        return Err(not_a_type());
    }
    ObjectIdentifier::from_arcs(arcs).map_err(|e| {
        format!(
            "{} is not a valid OID ({e}); the first arc is 0, 1 or 2, and the second below 40 unless the first is 2",
            shown(kind)
        )
    })
}

fn shown(bytes: &[u8]) -> String {
    crate::volume::short_quote(&String::from_utf8_lossy(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der_of(dn: &str) -> Vec<u8> {
        encode(&parse_literal(dn).unwrap_or_else(|e| panic!("{dn:?}: {e}"))).unwrap()
    }

    fn hex(dn: &str) -> String {
        hex::encode(der_of(dn))
    }

    /// DER written out by hand from the rules above, so that a change to the
    /// encoder cannot silently change the expected bytes.
    #[test]
    fn literal_subjects_encode_as_go_marshals_them() {
        // O=Example then CN=app (the string reversed), both PrintableString.
        let want = concat!(
            "3020",
            "3110",
            "300e",
            "060355040a",
            "1307",
            "4578616d706c65",
            "310c",
            "300a",
            "0603550403",
            "1303",
            "617070",
        );
        assert_eq!(hex("CN=app,O=Example"), want);
        // Spaces around separators are trimmed (go-ldap): the same bytes.
        assert_eq!(hex("CN=app, O=Example"), want);
        assert_eq!(hex("  CN = app ,  O = Example  "), want);
        // ';' separates RDNs like ','.
        assert_eq!(hex("CN=app;O=Example"), want);
    }

    #[test]
    fn string_types_follow_go() {
        // '*' and '&' are outside PrintableString for Go's writer: UTF8String (0c).
        assert_eq!(
            hex("CN=*.example"),
            concat!(
                "3014",
                "3112",
                "3010",
                "0603550403",
                "0c09",
                "2a2e6578616d706c65"
            )
        );
        assert_eq!(
            hex("O=A&B"),
            concat!("300e", "310c", "300a", "060355040a", "0c03", "412642")
        );
        // Non-ASCII: UTF8String with the UTF-8 bytes.
        assert_eq!(
            hex("O=Bücher"),
            concat!(
                "3012",
                "3110",
                "300e",
                "060355040a",
                "0c07",
                "42c3bc63686572"
            )
        );
        // Empty value: an empty PrintableString.
        assert_eq!(
            hex("CN="),
            concat!("300b", "3109", "3007", "0603550403", "1300")
        );
        // Quotes need no escape in go-ldap, and are not PrintableString.
        assert_eq!(
            hex("CN=\"q\""),
            concat!("300e", "310c", "300a", "0603550403", "0c03", "227122")
        );
    }

    #[test]
    fn members_of_an_rdn_are_sorted_by_their_encoding() {
        let a_then_b = concat!(
            "3016",
            "3114",
            "3008",
            "060355040b",
            "1301",
            "61",
            "3008",
            "060355040b",
            "1301",
            "62",
        );
        assert_eq!(hex("OU=a+OU=b"), a_then_b);
        assert_eq!(hex("OU=b+OU=a"), a_then_b);
        // CN (2.5.4.3) sorts before O (2.5.4.10) whatever the string order.
        assert_eq!(hex("O=a+CN=z"), hex("CN=z+O=a"));
        // Duplicates stay, as Go keeps them.
        assert_eq!(
            hex("OU=a+OU=a"),
            concat!(
                "3016",
                "3114",
                "3008",
                "060355040b",
                "1301",
                "61",
                "3008",
                "060355040b",
                "1301",
                "61",
            )
        );
        // A shorter member sorts first: its length byte is smaller.
        assert_eq!(
            hex("CN=bb+CN=a"),
            concat!(
                "3017",
                "3115",
                "3008",
                "0603550403",
                "1301",
                "61",
                "3009",
                "0603550403",
                "1302",
                "6262",
            )
        );
    }

    #[test]
    fn escapes_and_hex_values_decode_as_go_ldap_does() {
        assert_eq!(hex("CN=Foo\\, Inc"), hex("CN=#1308466f6f2c20496e63"));
        // \XX pairs build UTF-8: é is C3 A9.
        assert_eq!(hex("CN=caf\\C3\\A9"), hex("CN=café"));
        // An escaped trailing space is kept; a plain one is trimmed.
        assert_eq!(
            parse_literal("CN=a\\ ").unwrap()[0][0].value,
            "a ".to_string()
        );
        assert_eq!(parse_literal("CN=a ").unwrap()[0][0].value, "a");
        // A #-value keeps only its contents: an OCTET STRING "Hi" becomes
        // the PrintableString "Hi".
        assert_eq!(
            hex("1.3.6.1.4.1.1466.0=#04024869"),
            concat!(
                "3012",
                "3110",
                "300e",
                "06082b060104018b3a00",
                "1302",
                "4869"
            )
        );
        // Lower-case keywords are cert-csi's leniency; the OID is the same.
        assert_eq!(hex("cn=app"), hex("CN=app"));
        assert_eq!(hex("2.5.4.3=app"), hex("CN=app"));
        // An arc may carry a '+' (strconv.Atoi); the '+' must be escaped,
        // as a bare one separates attributes.
        assert_eq!(hex("\\+2.5.4.3=app"), hex("CN=app"));
        assert!(parse_literal("+2.5.4.3=app").is_err());
        // The value may hold '=' after the type is known.
        assert_eq!(parse_literal("CN=a=b").unwrap()[0][0].value, "a=b");
        // Blank is the empty subject.
        assert_eq!(hex("   "), "3000");
    }

    /// go-ldap's corner cases, with the DER cert-manager v1.20 produces for
    /// them (checked against its `UnmarshalSubjectStringToRDNSequence` and
    /// `MarshalRDNSequenceToRawDERBytes`).
    #[test]
    fn go_ldap_corner_cases() {
        for (dn, want) in [
            // A type that decodes to nothing lets the next '=' set it.
            ("=CN=x", "300c310a30080603550403130178"),
            // ';' ends an RDN.
            (
                "CN=a;O=b",
                "3018310a3008060355040a130162310a30080603550403130161",
            ),
            // An escaped trailing space is kept.
            ("CN=a\\ ", "300d310b3009060355040313026120"),
            ("CN=caf\\C3\\A9", "3010310e300c06035504030c05636166c3a9"),
            // The remaining keywords, multi-valued and in several RDNs.
            (
                "SERIALNUMBER=1+UID=x,DC=a",
                concat!(
                    "3030",
                    "3111",
                    "300f",
                    "060a0992268993f22c640119",
                    "1301",
                    "61",
                    "311b",
                    "3008",
                    "0603550405",
                    "1301",
                    "31",
                    "300f",
                    "060a0992268993f22c640101",
                    "1301",
                    "78",
                ),
            ),
        ] {
            assert_eq!(hex(dn), want, "{dn:?}");
        }
    }

    #[test]
    fn malformed_literal_subjects_are_refused() {
        for (bad, fragment) in [
            ("app", "type=value"),
            ("CN=app,", "type=value"),
            ("CN=a,,O=b", "type=value"),
            ("CN=app+", "type=value"),
            ("=app", "type=value"),
            ("NOSUCH=x", "not an attribute type"),
            ("C N=x", "not an attribute type"),
            ("1=x", "not an attribute type"),
            ("1.2.=x", "not an attribute type"),
            ("-1.2=x", "not an attribute type"),
            ("1.40=x", "not a valid OID"),
            ("2.5.4.99999999999=x", "larger than"),
            ("CN=bad\\escape", "escapes nothing"),
            ("CN=end\\", "escapes nothing"),
            ("CN=#zz", "not hex"),
            ("CN=#123", "not hex"),
            ("CN=#0402", "shorter than the length"),
            ("CN=#3000", "constructed"),
            ("CN=#0c02ffff", "not valid UTF-8"),
            ("CN=#1301", "shorter"),
            ("CN=#130126", "PrintableString"),
            ("CN=\\ff", "not valid UTF-8"),
        ] {
            let err = parse_literal(bad).expect_err(bad);
            assert!(err.contains(fragment), "{bad:?}: {err}");
        }
    }

    #[test]
    fn fields_follow_to_rdn_sequence() {
        let subject = SubjectSpec {
            common_name: Some("app".into()),
            organizations: vec!["B".into(), "A".into(), "A".into()],
            countries: vec!["DE".into()],
            serial_number: Some(String::new()),
            ..Default::default()
        };
        let rdns = fields_rdns(&subject);
        let oids: Vec<String> = rdns.iter().map(|r| r[0].oid.to_string()).collect();
        assert_eq!(oids, ["2.5.4.6", "2.5.4.10", "2.5.4.3"]);
        assert_eq!(rdns[1].len(), 3, "repeated values stay");
        assert_eq!(
            hex::encode(encode(&rdns).unwrap()),
            concat!(
                "303b",
                "310b",
                "3009",
                "0603550406",
                "1302",
                "4445",
                "311e",
                "3008",
                "060355040a",
                "1301",
                "41",
                "3008",
                "060355040a",
                "1301",
                "41",
                "3008",
                "060355040a",
                "1301",
                "42",
                "310c",
                "300a",
                "0603550403",
                "1303",
                "617070",
            )
        );
    }
    mod properties {
        use super::super::*;
        use der::{Decode, Encode};
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2_000))]

            /// Any text either fails with a message or encodes to a Name
            /// that x509-cert reads and writes back byte for byte (so the
            /// request carries exactly what was encoded).
            #[test]
            fn literal_subjects_parse_or_fail_cleanly(
                dn in "([A-Za-z0-9 .+,;=#\\\\\"<>]|\\PC){0,40}"
            ) {
                if let Ok(rdns) = parse_literal(&dn) {
                    let der = encode(&rdns).unwrap();
                    let name = x509_cert::name::Name::from_der(&der).unwrap();
                    prop_assert_eq!(name.to_der().unwrap(), der);
                }
            }
        }
    }
}
