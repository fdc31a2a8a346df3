//! Pure syntax checks for single values. Each returns the user-facing reason
//! as a `String`; the caller adds the attribute name.

use std::net::IpAddr;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// Splits a subject list on commas that are not escaped. `\,` is a comma
/// inside an entry and `\\` a backslash; any other backslash is kept as is,
/// so values such as `C:\dir` need no escaping. Entries are trimmed, because
/// `O1, O2` means `O2`, not ` O2`, to everyone who writes it.
pub fn split_escaped(value: &str) -> Vec<String> {
    let mut entries = Vec::new();
    let mut current = String::new();
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.peek() {
                Some(',') | Some('\\') => current.push(chars.next().expect("peeked")),
                _ => current.push('\\'),
            },
            ',' => entries.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    entries.push(current);
    entries.into_iter().map(|e| e.trim().to_string()).collect()
}

/// Splits a plain comma-separated list and trims each entry.
pub fn split_plain(value: &str) -> Vec<String> {
    value.split(',').map(|e| e.trim().to_string()).collect()
}

/// The 1-based position of the first empty entry, if any.
pub fn first_empty(entries: &[String]) -> Option<usize> {
    entries.iter().position(|e| e.is_empty()).map(|i| i + 1)
}

/// A DNS name for a certificate SAN: labels of letters, digits and `-`,
/// optionally behind one leading `*.` wildcard label.
pub fn check_dns_name(name: &str) -> Result<(), String> {
    if name.parse::<IpAddr>().is_ok() {
        return Err(format!(
            "{name_q} is an IP address, not a DNS name; move it to csi.cert-manager.io/ip-sans",
            name_q = short_quote(name)
        ));
    }
    if name.len() > 253 {
        return Err(format!(
            "{name_q} is {} bytes long; a DNS name may be at most 253",
            name.len(),
            name_q = short_quote(name)
        ));
    }
    if name.ends_with('.') {
        return Err(format!(
            "{name_q} ends with '.'; certificate DNS names are written without the trailing dot",
            name_q = short_quote(name)
        ));
    }
    // "*." itself was caught by the trailing-dot check, so `rest` is never empty here.
    let rest = name.strip_prefix("*.").unwrap_or(name);
    if name.is_empty() {
        return Err("an empty DNS name".to_string());
    }
    for label in rest.split('.') {
        if label.is_empty() {
            return Err(format!(
                "{name_q} has an empty label (two dots in a row or a leading dot)",
                name_q = short_quote(name)
            ));
        }
        if label.contains('*') {
            return Err(format!(
                "{name_q} has '*' in the wrong place; a wildcard must be the whole first label, as in *.example.com",
                name_q = short_quote(name)
            ));
        }
        if label.len() > 63 {
            return Err(format!(
                "{name_q} has the label {label_q} of {} bytes; a label may be at most 63",
                label.len(),
                name_q = short_quote(name),
                label_q = short_quote(label)
            ));
        }
        if let Some(bad) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(format!(
                "{name_q} contains {bad:?}; a DNS name may contain only letters, digits, '-' and '.'",
                name_q = short_quote(name)
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "{name_q} has the label {label_q}, which starts or ends with '-'; labels must start and end with a letter or digit",
                name_q = short_quote(name),
                label_q = short_quote(label)
            ));
        }
    }
    Ok(())
}

/// An output file name inside the volume.
pub fn check_file_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the file name is empty; give a name such as tls.crt or remove the attribute to use the default".to_string());
    }
    if name.starts_with('/') {
        return Err(format!(
            "{name_q} is an absolute path; give a plain file name such as tls.crt (files are written at the volume's root)",
            name_q = short_quote(name)
        ));
    }
    if name.starts_with("..") {
        return Err(format!(
            "{name_q} starts with '..'; such names are reserved for the volume's atomic-update bookkeeping, choose another name",
            name_q = short_quote(name)
        ));
    }
    if name.contains('/') {
        return Err(format!(
            "{name_q} contains '/'; subdirectories are not supported, give a plain file name",
            name_q = short_quote(name)
        ));
    }
    if name == "." {
        return Err("\".\" is the volume directory itself; give a file name".to_string());
    }
    if name.len() > 255 {
        return Err(format!(
            "the file name is {} bytes long; the limit is 255",
            name.len()
        ));
    }
    if name.trim() != name {
        return Err(format!(
            "{name_q} has leading or trailing whitespace; remove it",
            name_q = short_quote(name)
        ));
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(format!(
            "{name_q} contains the control character {c:?}; remove it",
            name_q = short_quote(name)
        ));
    }
    // Format characters (Unicode category Cf: bidi overrides such as
    // U+202E, zero-width spaces and joiners) are invisible or reorder what
    // a listing shows, so `tls.key` could be displayed for another file.
    if let Some(c) = name
        .chars()
        .find(|c| c.general_category() == GeneralCategory::Format)
    {
        return Err(format!(
            "the file name contains the invisible formatting character U+{:04X} (such as a right-to-left override or a zero-width space), which would make it look like another name; use a plain name such as tls.crt",
            c as u32
        ));
    }
    Ok(())
}

/// A kubelet target path: absolute and already clean, so that what is
/// mounted is exactly the path the kubelet will look at.
pub fn check_target_path(path: &str) -> Result<(), String> {
    // The path is the caller's: quote only a short prefix of it.
    let shown = short_quote(path);
    if path.is_empty() {
        return Err("is empty; the kubelet must pass the mount path".to_string());
    }
    if path.contains('\0') {
        return Err("contains a NUL byte".to_string());
    }
    if !path.starts_with('/') {
        return Err(format!("{shown} is not an absolute path"));
    }
    if path == "/" {
        return Err("\"/\" cannot be a mount target".to_string());
    }
    if path.ends_with('/') {
        return Err(format!("{shown} ends with '/'; pass the path without it"));
    }
    if path.contains("//") {
        return Err(format!("{shown} contains '//'; pass a clean path"));
    }
    if path.split('/').any(|c| c == "." || c == "..") {
        return Err(format!(
            "{shown} contains a '.' or '..' component; pass a clean path"
        ));
    }
    if path.len() > 4096 {
        return Err(format!("is {} bytes long; the limit is 4096", path.len()));
    }
    Ok(())
}

/// `text` quoted, cut to its first 64 bytes: what an error message or log
/// line may repeat of a value it was given.
pub fn short_quote(text: &str) -> String {
    const LIMIT: usize = 64;
    if text.len() <= LIMIT {
        return format!("{text:?}");
    }
    let mut end = LIMIT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}…", &text[..end])
}

/// A CSI volume id. The node plugin uses it as a directory name for the
/// volume's state, so it must be a safe single path component; the kubelet's
/// ids (`csi-` and 64 hex digits) always are.
pub fn check_volume_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("is empty; the kubelet must pass a volume id".to_string());
    }
    if id.len() > 128 {
        return Err(format!("is {} bytes long; the CSI limit is 128", id.len()));
    }
    if id.starts_with('.') {
        return Err(format!("{id_q} starts with '.'", id_q = short_quote(id)));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "{id_q} contains {c:?}; only letters, digits, '-', '_' and '.' are accepted",
            id_q = short_quote(id)
        ));
    }
    Ok(())
}

/// A Kubernetes DNS-1123 subdomain (object names, API groups, annotation prefixes).
pub fn check_dns1123_subdomain(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("is empty".to_string());
    }
    if value.len() > 253 {
        return Err(format!(
            "{value_q} is longer than 253 characters",
            value_q = short_quote(value)
        ));
    }
    for label in value.split('.') {
        let ok = !label.is_empty()
            && label
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "{value_q} is not a valid Kubernetes name: use lowercase letters, digits, '-' and '.', starting and ending with a letter or digit",
                value_q = short_quote(value)
            ));
        }
    }
    Ok(())
}

/// A Kubernetes annotation key `prefix/name`.
pub fn check_annotation_key(key: &str) -> Result<(), String> {
    let Some((prefix, name)) = key.split_once('/') else {
        return Err(format!("{key_q} has no '/'", key_q = short_quote(key)));
    };
    check_dns1123_subdomain(prefix).map_err(|e| format!("the prefix {e}"))?;
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !name_ok {
        return Err(format!(
            "the name part {name_q} must be 1 to 63 characters of letters, digits, '-', '_' and '.', starting and ending with a letter or digit",
            name_q = short_quote(name)
        ));
    }
    Ok(())
}

/// A light RFC 4514 syntax check: `type=value` pairs joined by `,` (RDNs)
/// and `+` (multi-valued RDNs), types as keywords or dotted OIDs, values
/// with RFC 4514 escapes or as `#` hex strings. Spaces around separators are
/// tolerated because cert-manager's parser tolerates them. The pki module
/// does the full parse and maps keywords to OIDs.
pub fn check_rfc4514(dn: &str) -> Result<(), String> {
    if dn.trim().is_empty() {
        return Err("is empty; write a distinguished name such as CN=app,O=Example".to_string());
    }
    let chars: Vec<char> = dn.chars().collect();
    let mut i = 0;
    loop {
        // Attribute type.
        let type_start = i;
        while i < chars.len() && chars[i] != '=' && chars[i] != ',' && chars[i] != '+' {
            i += 1;
        }
        let attr_type: String = chars[type_start..i].iter().collect::<String>();
        let attr_type = attr_type.trim();
        if i >= chars.len() || chars[i] != '=' {
            return Err(format!(
                "{attr_type_q} (at character {type_start}) has no '='; every part must be type=value, e.g. CN=app",
                attr_type_q = short_quote(attr_type)
            ));
        }
        check_attribute_type(attr_type)?;
        i += 1; // '='

        // Attribute value.
        while i < chars.len() && chars[i] == ' ' {
            i += 1;
        }
        if i < chars.len() && chars[i] == '#' {
            let hex_start = i + 1;
            i += 1;
            while i < chars.len() && chars[i].is_ascii_hexdigit() {
                i += 1;
            }
            let digits = i - hex_start;
            if digits == 0 || digits % 2 != 0 {
                return Err(format!(
                    "the value of {attr_type} starts with '#' but is not an even number of hex digits; escape a literal '#' as \\#"
                ));
            }
            while i < chars.len() && chars[i] == ' ' {
                i += 1;
            }
        } else {
            while i < chars.len() && chars[i] != ',' && chars[i] != '+' {
                match chars[i] {
                    '\\' => {
                        let next = chars.get(i + 1).copied();
                        match next {
                            Some(c) if "\"+,;<>\\ #=".contains(c) => i += 2,
                            Some(c)
                                if c.is_ascii_hexdigit()
                                    && chars.get(i + 2).is_some_and(|d| d.is_ascii_hexdigit()) =>
                            {
                                i += 3
                            }
                            _ => {
                                return Err(format!(
                                    "the value of {attr_type} has a '\\' at character {i} that escapes nothing; escape only special characters (\\, \\+ \\\" \\\\ \\< \\> \\; \\#) or write \\XX hex pairs"
                                ));
                            }
                        }
                    }
                    c @ ('"' | ';' | '<' | '>' | '\0') => {
                        return Err(format!(
                            "the value of {attr_type} contains an unescaped {c:?} at character {i}; escape it with a backslash"
                        ));
                    }
                    _ => i += 1,
                }
            }
        }
        if i >= chars.len() {
            return Ok(());
        }
        if chars[i] != ',' && chars[i] != '+' {
            return Err(format!(
                "the hex value of {attr_type} is followed by {:?} at character {i}; a '#' value is only hex digits",
                chars[i]
            ));
        }
        // ',' or '+': another attribute must follow.
        i += 1;
        if chars[i..].iter().all(|c| *c == ' ') {
            return Err(format!(
                "ends with '{}' and nothing after it; remove it or add type=value",
                chars[i - 1]
            ));
        }
    }
}

fn check_attribute_type(attr_type: &str) -> Result<(), String> {
    if attr_type.is_empty() {
        return Err("has an '=' with no attribute type before it; write e.g. CN=app".to_string());
    }
    let is_keyword = attr_type.starts_with(|c: char| c.is_ascii_alphabetic())
        && attr_type
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-');
    let is_oid = attr_type.contains('.')
        && attr_type
            .split('.')
            .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_digit()));
    if is_keyword || is_oid {
        Ok(())
    } else {
        Err(format!(
            "{attr_type_q} is not an attribute type; use a keyword such as CN, O, OU, C, L, ST, or a dotted OID such as 2.5.4.3",
            attr_type_q = short_quote(attr_type)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn escaped_lists_split_on_unescaped_commas_only() {
        assert_eq!(split_escaped("a,b"), strings(&["a", "b"]));
        assert_eq!(split_escaped(" a , b "), strings(&["a", "b"]));
        assert_eq!(
            split_escaped("Foo\\, Inc,Bar"),
            strings(&["Foo, Inc", "Bar"])
        );
        assert_eq!(
            split_escaped("back\\\\,slash"),
            strings(&["back\\", "slash"])
        );
        assert_eq!(split_escaped("C:\\dir"), strings(&["C:\\dir"]));
        assert_eq!(split_escaped("end\\"), strings(&["end\\"]));
        assert_eq!(split_escaped("a,,b"), strings(&["a", "", "b"]));
        assert_eq!(split_escaped(""), strings(&[""]));
        assert_eq!(first_empty(&split_escaped("a,,b")), Some(2));
        assert_eq!(first_empty(&split_escaped("a,b,")), Some(3));
        assert_eq!(first_empty(&split_escaped("a,b")), None);
    }

    #[test]
    fn dns_names() {
        for ok in [
            "example.com",
            "a",
            "localhost",
            "web-0.shop.svc.cluster.local",
            "*.example.com",
            "*.svc",
            "Example.COM",
            "123.example.com",
            "xn--bcher-kva.example",
            &format!("{}.com", "a".repeat(63)),
        ] {
            assert_eq!(check_dns_name(ok), Ok(()), "{ok}");
        }
        let bad: &[(&str, &str)] = &[
            ("10.0.0.1", "ip-sans"),
            ("::1", "ip-sans"),
            ("example.com.", "trailing dot"),
            ("*", "whole first label"),
            ("*.", "ends with '.'"),
            ("", "empty DNS name"),
            ("a..b", "empty label"),
            (".a", "empty label"),
            ("foo*.example.com", "whole first label"),
            ("a.*.example.com", "whole first label"),
            ("**.example.com", "whole first label"),
            ("under_score.com", "'_'"),
            ("sp ace.com", "' '"),
            ("-lead.com", "starts or ends with '-'"),
            ("trail-.com", "starts or ends with '-'"),
            ("ünï.com", "'ü'"),
        ];
        for (name, fragment) in bad {
            let err = check_dns_name(name).expect_err(name);
            assert!(err.contains(fragment), "{name}: {err}");
        }
        let long_label = format!("{}.com", "a".repeat(64));
        assert!(
            check_dns_name(&long_label)
                .unwrap_err()
                .contains("at most 63")
        );
        let long_name = vec!["abcdefghi"; 26].join(".");
        assert!(
            check_dns_name(&long_name)
                .unwrap_err()
                .contains("at most 253")
        );
    }

    #[test]
    fn file_names() {
        for ok in [
            "tls.crt",
            "a",
            ".hidden",
            "key.pem",
            "a..b",
            "keystore.p12",
            // Letters of any script are fine; only invisible ones are not.
            "clé.pem",
            "証明書.crt",
            &"x".repeat(255),
        ] {
            assert_eq!(check_file_name(ok), Ok(()), "{ok}");
        }
        let bad: &[(&str, &str)] = &[
            ("", "empty"),
            ("/etc/passwd", "absolute"),
            ("..", "'..'"),
            ("..data", "'..'"),
            ("a/b", "'/'"),
            (".", "volume directory"),
            (" tls.crt", "whitespace"),
            ("tls.crt ", "whitespace"),
            ("tls\t.crt", "control"),
            // "tls.key" followed by a right-to-left override and "crt.":
            // a listing shows it reversed, as something else.
            ("tls.key\u{202E}crt.", "U+202E"),
            ("tls\u{200B}.crt", "U+200B"),
            ("\u{FEFF}tls.crt", "U+FEFF"),
            ("tls.crt\u{2066}", "U+2066"),
        ];
        for (name, fragment) in bad {
            let err = check_file_name(name).expect_err(name);
            assert!(err.contains(fragment), "{name:?}: {err}");
        }
        assert!(
            check_file_name(&"x".repeat(256))
                .unwrap_err()
                .contains("255")
        );
    }

    #[test]
    fn target_paths() {
        assert_eq!(
            check_target_path("/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/tls/mount"),
            Ok(())
        );
        assert_eq!(check_target_path("/tmp/x"), Ok(()));
        let bad: &[(&str, &str)] = &[
            ("", "empty"),
            ("relative/path", "absolute"),
            ("/", "cannot be a mount target"),
            ("/a/b/", "ends with '/'"),
            ("/a//b", "'//'"),
            ("/a/./b", "'.'"),
            ("/a/../b", "'..'"),
            ("/a/..", "'..'"),
            ("/a\0b", "NUL"),
        ];
        for (path, fragment) in bad {
            let err = check_target_path(path).expect_err(path);
            assert!(err.contains(fragment), "{path:?}: {err}");
        }
    }

    #[test]
    fn volume_ids() {
        let kubelet = format!("csi-{}", "ab12".repeat(16));
        assert_eq!(check_volume_id(&kubelet), Ok(()));
        assert_eq!(check_volume_id("vol_1.test"), Ok(()));
        for bad in ["", "../x", "a/b", ".hidden", "with space", &"a".repeat(129)] {
            assert!(check_volume_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn kubernetes_names_and_annotation_keys() {
        assert_eq!(check_dns1123_subdomain("ca-issuer"), Ok(()));
        assert_eq!(check_dns1123_subdomain("awspca.cert-manager.io"), Ok(()));
        for bad in ["", "CA", "a_b", "-a", "a-", "a..b", "a b"] {
            assert!(check_dns1123_subdomain(bad).is_err(), "{bad:?}");
        }
        assert_eq!(check_annotation_key("example.com/team"), Ok(()));
        assert_eq!(check_annotation_key("example.com/Team_Name.v1"), Ok(()));
        for bad in [
            "example.com/",
            "Example.com/x",
            "example.com/-x",
            "example.com/a b",
            "nope",
        ] {
            assert!(check_annotation_key(bad).is_err(), "{bad:?}");
        }
        assert!(check_annotation_key(&format!("example.com/{}", "a".repeat(64))).is_err());
    }

    #[test]
    fn rfc4514_accepts_valid_names() {
        for ok in [
            "CN=app",
            "CN=app,O=Example",
            "CN=app, O=Example, C=DE",
            "CN=app+UID=42,O=Example",
            "CN=Foo\\, Inc,O=x",
            "CN=\\#hash",
            "CN=quote\\\"d",
            "CN=caf\\C3\\A9",
            "2.5.4.3=app",
            "1.3.6.1.4.1.1466.0=#04024869",
            "CN=",
            "CN=a=b",
            "CN=web-0.shop.svc,OU=pods,O=cert-csi",
            "serialNumber=1234,CN=x",
        ] {
            assert_eq!(check_rfc4514(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn rfc4514_rejects_invalid_names() {
        let bad: &[(&str, &str)] = &[
            ("", "is empty"),
            ("   ", "is empty"),
            ("app", "has no '='"),
            ("CN=app,", "nothing after it"),
            ("CN=app+", "nothing after it"),
            ("CN=app,O", "has no '='"),
            ("=app", "no attribute type"),
            ("C N=app", "not an attribute type"),
            ("1.2.=x", "not an attribute type"),
            ("CN=a;b", "unescaped ';'"),
            ("CN=a<b", "unescaped '<'"),
            ("CN=\"quoted\"", "unescaped '\"'"),
            ("CN=bad\\escape", "escapes nothing"),
            ("CN=#zz", "hex digits"),
            ("CN=#123", "hex digits"),
            ("CN=#0402xyz", "only hex digits"),
        ];
        for (dn, fragment) in bad {
            let err = check_rfc4514(dn).expect_err(dn);
            assert!(err.contains(fragment), "{dn:?}: {err}");
        }
    }
}
