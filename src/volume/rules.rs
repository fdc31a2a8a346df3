//! Pure syntax checks for single values. Each returns the user-facing reason
//! as a `String`; the caller adds the attribute name.

use std::net::IpAddr;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// Splits a subject list as cert-manager's `SplitWithEscapeCSV` does (which
/// csi-driver calls for every subject list): the value is one record of
/// RFC 4180 CSV as Go's `encoding/csv` reads it. An entry in double quotes
/// may hold commas and newlines, and `""` inside it is one quote; a quote
/// anywhere else is an error; nothing is trimmed, so `a, b` has the entry
/// ` b`; empty entries stay; a value that reads as several lines of CSV is
/// refused. No CSV crate reads exactly Go's dialect (bare-quote errors,
/// line handling), so the reader is written out here.
pub fn split_csv(value: &str) -> Result<Vec<String>, String> {
    let mut lines = GoLines::new(value.as_bytes());
    let mut records: Vec<Vec<Vec<u8>>> = Vec::new();
    // Go's ReadAll: records until the input ends; empty lines are skipped.
    while let Some(line) = lines.next_non_empty() {
        records.push(read_record(line, &mut lines)?);
    }
    match records.len() {
        0 => Err(format!(
            "{value_q} holds no value; remove the attribute or give a value",
            value_q = short_quote(value)
        )),
        1 => Ok(records
            .remove(0)
            .into_iter()
            // Only split at ASCII bytes, so every entry is still UTF-8.
            .map(|entry| String::from_utf8(entry).expect("split at ASCII bytes"))
            .collect()),
        _ => Err(format!(
            "{value_q} reads as several lines of CSV; write the entries on one line separated by commas, or put an entry that holds a line break in double quotes",
            value_q = short_quote(value)
        )),
    }
}

/// Lines as Go's `csv.Reader.readLine` yields them: each with its `\n`, a
/// `\r\n` ending normalised to `\n`, and a `\r` just before the end dropped.
struct GoLines<'a> {
    rest: &'a [u8],
}

impl<'a> GoLines<'a> {
    fn new(input: &'a [u8]) -> Self {
        GoLines { rest: input }
    }

    fn next(&mut self) -> Option<Vec<u8>> {
        if self.rest.is_empty() {
            return None;
        }
        let end = self
            .rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(self.rest.len(), |i| i + 1);
        let mut line = self.rest[..end].to_vec();
        self.rest = &self.rest[end..];
        if !line.ends_with(b"\n") && line.ends_with(b"\r") {
            line.pop();
        }
        if line.ends_with(b"\r\n") {
            line.truncate(line.len() - 2);
            line.push(b'\n');
        }
        Some(line)
    }

    fn next_non_empty(&mut self) -> Option<Vec<u8>> {
        loop {
            let line = self.next()?;
            if !(line.is_empty() || line == b"\n") {
                return Some(line);
            }
        }
    }
}

fn without_newline(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\n").unwrap_or(line)
}

/// Go's `csv.Reader.readRecord` with the default settings (comma `,`, no
/// comment character, no lazy quotes, no trimming).
fn read_record(first: Vec<u8>, lines: &mut GoLines<'_>) -> Result<Vec<Vec<u8>>, String> {
    let mut fields = Vec::new();
    let mut line = first;
    let mut pos = 0;
    loop {
        if line.get(pos) != Some(&b'"') {
            // An unquoted entry: up to the next comma or the line's end.
            let rest = &line[pos..];
            let comma = rest.iter().position(|&b| b == b',');
            let field = match comma {
                Some(i) => &rest[..i],
                None => without_newline(rest),
            };
            if let Some(j) = field.iter().position(|&b| b == b'"') {
                return Err(format!(
                    "has a '\"' inside an entry that does not start with one (column {}); put the whole entry in double quotes and double each quote inside, e.g. \"Example \"\"Inc\"\"\"",
                    pos + j + 1
                ));
            }
            fields.push(field.to_vec());
            match comma {
                Some(i) => pos += i + 1,
                None => return Ok(fields),
            }
            continue;
        }
        // A quoted entry, which may continue over several lines.
        pos += 1;
        let mut field = Vec::new();
        loop {
            let rest = &line[pos..];
            if let Some(i) = rest.iter().position(|&b| b == b'"') {
                field.extend_from_slice(&rest[..i]);
                pos += i + 1;
                match line.get(pos) {
                    Some(b'"') => {
                        field.push(b'"');
                        pos += 1;
                    }
                    Some(b',') => {
                        pos += 1;
                        fields.push(field);
                        break;
                    }
                    None | Some(b'\n') if line.len() - pos <= 1 => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    _ => {
                        return Err(format!(
                            "has a closing '\"' followed by more text (column {}); a quoted entry ends at its closing quote, so put a comma after it, and double each quote inside it",
                            pos
                        ));
                    }
                }
            } else if !rest.is_empty() {
                field.extend_from_slice(rest);
                match lines.next() {
                    Some(next) => {
                        line = next;
                        pos = 0;
                    }
                    None => {
                        line = Vec::new();
                        pos = 0;
                    }
                }
            } else {
                return Err(
                    "has a '\"' that opens an entry but never closes it; close the quote, or double it (\"\") for a literal quote inside a quoted entry".to_string(),
                );
            }
        }
    }
}

/// Splits a plain list as csi-driver's `splitList` does: at every comma,
/// each entry trimmed of Unicode white space (Go's `strings.TrimSpace` and
/// Rust's `trim` agree on it), empty entries kept.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// Outputs of cert-manager's `SplitWithEscapeCSV` (v1.20.2).
    #[test]
    fn subject_lists_split_as_go_csv() {
        let cases: &[(&str, &[&str])] = &[
            ("a,b", &["a", "b"]),
            ("\"Example, Inc\",Other", &["Example, Inc", "Other"]),
            (" a , b ", &[" a ", " b "]),
            ("a,,b", &["a", "", "b"]),
            ("a,", &["a", ""]),
            (",", &["", ""]),
            ("\"a\"\"b\"", &["a\"b"]),
            ("\"a\nb\"", &["a\nb"]),
            ("\"a\r\nb\"", &["a\nb"]),
            ("\na", &["a"]),
            ("a\n", &["a"]),
            ("a\r", &["a"]),
            ("a\r\n", &["a"]),
            ("a\rb", &["a\rb"]),
            ("C:\\dir", &["C:\\dir"]),
            ("Foo\\, Inc", &["Foo\\", " Inc"]),
            ("\"\",x", &["", "x"]),
        ];
        for (input, want) in cases {
            assert_eq!(
                split_csv(input).as_deref(),
                Ok(strings(want).as_slice()),
                "{input:?}"
            );
        }
        for (input, fragment) in [
            ("Example \"Inc\"", "does not start with one"),
            (" \"a\"", "does not start with one"),
            ("\"a\"b", "followed by more text"),
            ("\"unterminated", "never closes"),
            ("a\nb", "several lines"),
            ("\n", "holds no value"),
        ] {
            let err = split_csv(input).expect_err(input);
            assert!(err.contains(fragment), "{input:?}: {err}");
        }
    }

    #[test]
    fn plain_lists_split_and_trim() {
        assert_eq!(split_plain(" a , b ,,c"), strings(&["a", "b", "", "c"]));
        assert_eq!(split_plain(""), strings(&[""]));
        assert_eq!(first_empty(&split_plain("a,,b")), Some(2));
        assert_eq!(first_empty(&split_plain("a,b")), None);
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
    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2_000))]

            #[test]
            fn csv_never_panics(value in "([a,\" \\r\\n]|\\PC){0,30}") {
                let _ = split_csv(&value);
            }

            /// Entries without quotes, commas or line breaks come back as
            /// they were joined.
            #[test]
            fn plain_entries_round_trip(
                entries in proptest::collection::vec("[^\",\\r\\n]{0,8}", 1..5)
            ) {
                let joined = entries.join(",");
                prop_assume!(!joined.is_empty());
                prop_assert_eq!(split_csv(&joined).unwrap(), entries);
            }
        }
    }
}
