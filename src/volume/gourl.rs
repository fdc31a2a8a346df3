//! URI SANs as cert-manager's csi-driver writes them.
//!
//! csi-driver reads each `uri-sans` entry with Go's `url.ParseRequestURI`
//! and the CSR carries `url.String()` of the result (Go's x509 marshals
//! `*url.URL` values that way), so the bytes in the request are Go's
//! re-serialisation, not the text the pod gave: the scheme is lower-cased,
//! characters a path may not hold are percent-encoded, and so on. This
//! module does the same parse and re-serialisation (Go 1.26's `net/url`),
//! so the request matches upstream's byte for byte. The `url` crate follows
//! the WHATWG URL standard instead, whose normalisation differs (it
//! resolves dot segments, adds `/` after a host, lower-cases hosts), so it
//! cannot be used here.
//!
//! `ParseRequestURI` accepts an absolute URI (`scheme:...`) or an absolute
//! path (`/foo`), and does not split off a `#fragment`: a `#` in the path
//! is encoded as `%23`.

use std::net::Ipv6Addr;

/// What `url.String()` gives for the entry, or why Go refuses it.
pub fn request_uri_string(raw: &str) -> Result<String, String> {
    Ok(parse_request_uri(raw)?.to_string())
}

/// Go's `url.URL`, with the fields `ParseRequestURI` can set.
#[derive(Debug, Default)]
struct Url {
    scheme: String,
    opaque: String,
    // Go strings hold bytes: escapes may decode to anything, and
    // String() escapes those bytes again.
    user: Option<(Vec<u8>, Option<Vec<u8>>)>,
    host: Vec<u8>,
    path: Vec<u8>,
    raw_path: String,
    raw_query: String,
    force_query: bool,
    omit_host: bool,
}

// Go's encoding modes (net/url), the ones used here.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Path,
    Host,
    Zone,
    UserPassword,
}

/// RFC 3986's sub-delims, which Go's URL code lets through in several
/// places.
fn is_sub_delim(c: u8) -> bool {
    matches!(
        c,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
    )
}

/// Go's `shouldEscape`.
fn should_escape(c: u8, mode: Mode) -> bool {
    if c.is_ascii_alphanumeric() {
        return false;
    }
    if (mode == Mode::Host || mode == Mode::Zone)
        && (is_sub_delim(c) || matches!(c, b':' | b'[' | b']' | b'<' | b'>' | b'"'))
    {
        return false;
    }
    match c {
        b'-' | b'_' | b'.' | b'~' => false,
        b'$' | b'&' | b'+' | b',' | b'/' | b':' | b';' | b'=' | b'?' | b'@' => match mode {
            Mode::Path => c == b'?',
            Mode::UserPassword => matches!(c, b'@' | b'/' | b'?' | b':'),
            // Host and zone: everything left here is escaped.
            Mode::Host | Mode::Zone => true,
        },
        _ => true,
    }
}

fn unhex(c: u8) -> u8 {
    (c as char).to_digit(16).expect("checked hex digit") as u8
}

/// Go's `unescape` for the modes used here (none of them reads `+`).
fn unescape(s: &str, mode: Mode) -> Result<Vec<u8>, String> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                if i + 2 >= b.len()
                    || !b[i + 1].is_ascii_hexdigit()
                    || !b[i + 2].is_ascii_hexdigit()
                {
                    let end = (i + 3).min(b.len());
                    return Err(format!(
                        "invalid escape {:?}: a '%' must be followed by two hex digits (write %25 for a literal '%')",
                        String::from_utf8_lossy(&b[i..end])
                    ));
                }
                let escape = &s[i..i + 3];
                if mode == Mode::Host && unhex(b[i + 1]) < 8 && escape != "%25" {
                    return Err(format!(
                        "invalid escape {escape:?} in the host: a host may percent-encode only non-ASCII bytes"
                    ));
                }
                if mode == Mode::Zone {
                    let v = (unhex(b[i + 1]) << 4) | unhex(b[i + 2]);
                    if escape != "%25" && v != b' ' && should_escape(v, Mode::Host) {
                        return Err(format!("invalid escape {escape:?} in the IPv6 zone"));
                    }
                }
                i += 3;
            }
            c => {
                if (mode == Mode::Host || mode == Mode::Zone) && c < 0x80 && should_escape(c, mode)
                {
                    return Err(format!("invalid character {:?} in the host", c as char));
                }
                i += 1;
            }
        }
    }
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push((unhex(b[i + 1]) << 4) | unhex(b[i + 2]));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// Go's `escape` for the modes used here.
fn escape(s: &[u8], mode: Mode) -> String {
    let mut out = String::with_capacity(s.len());
    for &c in s {
        if should_escape(c, mode) {
            out.push_str(&format!("%{c:02X}"));
        } else {
            out.push(c as char);
        }
    }
    out
}

/// Go's `validEncoded` for paths.
fn valid_encoded_path(s: &str) -> bool {
    s.bytes().all(|c| {
        is_sub_delim(c)
            || matches!(c, b':' | b'@' | b'[' | b']' | b'%')
            || !should_escape(c, Mode::Path)
    })
}

fn valid_optional_port(port: &str) -> bool {
    match port.strip_prefix(':') {
        None => port.is_empty(),
        Some(digits) => digits.bytes().all(|b| b.is_ascii_digit()),
    }
}

/// Go's `validUserinfo`.
fn valid_userinfo(s: &str) -> bool {
    s.chars().all(|c| {
        c.is_ascii_alphanumeric()
            || matches!(
                c,
                '-' | '.'
                    | '_'
                    | ':'
                    | '~'
                    | '!'
                    | '$'
                    | '&'
                    | '\''
                    | '('
                    | ')'
                    | '*'
                    | '+'
                    | ','
                    | ';'
                    | '='
                    | '%'
                    | '@'
            )
    })
}

/// Go's `getScheme`.
fn get_scheme(raw: &str) -> Result<(&str, &str), String> {
    for (i, c) in raw.bytes().enumerate() {
        match c {
            b'a'..=b'z' | b'A'..=b'Z' => {}
            b'0'..=b'9' | b'+' | b'-' | b'.' if i > 0 => {}
            b':' if i == 0 => return Err("missing protocol scheme".into()),
            b':' => return Ok((&raw[..i], &raw[i + 1..])),
            _ => return Ok(("", raw)),
        }
    }
    Ok(("", raw))
}

/// Go's `netip.ParseAddr` for what may stand in brackets: an IPv6 address,
/// optionally with a zone. `Ok(true)` when it is an IPv4 address instead.
fn parse_bracketed(addr: &str) -> Result<bool, String> {
    if addr.parse::<std::net::Ipv4Addr>().is_ok() {
        return Ok(true);
    }
    let (ip, zone) = match addr.split_once('%') {
        Some((ip, zone)) => (ip, Some(zone)),
        None => (addr, None),
    };
    if zone == Some("") {
        return Err(format!("invalid host {addr:?}: the zone is empty"));
    }
    ip.parse::<Ipv6Addr>()
        .map(|_| false)
        .map_err(|_| format!("invalid host {addr:?}: not an IPv6 address"))
}

/// Go's `parseHost`.
fn parse_host(scheme: &str, host: &str) -> Result<Vec<u8>, String> {
    if let Some(open) = host.rfind('[') {
        if open > 0 {
            return Err("invalid IP-literal: '[' inside the host".into());
        }
        let close = host.rfind(']').ok_or("missing ']' in host")?;
        let colon_port = &host[close + 1..];
        if !valid_optional_port(colon_port) {
            return Err(format!("invalid port {colon_port:?} after host"));
        }
        let colon_port = unescape(colon_port, Mode::Host)?;
        let hostname = &host[1..close];
        let mut unescaped = match hostname.find("%25") {
            Some(zone) => {
                let mut both = unescape(&hostname[..zone], Mode::Host)?;
                both.extend(unescape(&hostname[zone..], Mode::Zone)?);
                both
            }
            None => unescape(hostname, Mode::Host)?,
        };
        let text = String::from_utf8(unescaped.clone())
            .map_err(|_| "invalid host: not an IPv6 address".to_string())?;
        if parse_bracketed(&text)? {
            return Err("invalid IP-literal: an IPv4 address in brackets".into());
        }
        unescaped.insert(0, b'[');
        unescaped.push(b']');
        unescaped.extend(colon_port);
        return Ok(unescaped);
    }
    if let Some(first) = host.find(':') {
        // Go 1.26 (urlstrictcolons): http and https may have one colon in
        // the host; other schemes take the last colon as the port's.
        let last = host.rfind(':').expect("found one");
        let colon = if scheme == "http" || scheme == "https" {
            first
        } else {
            last
        };
        let colon_port = &host[colon..];
        if !valid_optional_port(colon_port) {
            return Err(format!("invalid port {colon_port:?} after host"));
        }
    }
    unescape(host, Mode::Host)
}

/// Go's `parseAuthority`.
type User = Option<(Vec<u8>, Option<Vec<u8>>)>;

fn parse_authority(scheme: &str, authority: &str) -> Result<(User, Vec<u8>), String> {
    let at = authority.rfind('@');
    let host = parse_host(
        scheme,
        match at {
            Some(i) => &authority[i + 1..],
            None => authority,
        },
    )?;
    let Some(i) = at else {
        return Ok((None, host));
    };
    let userinfo = &authority[..i];
    if !valid_userinfo(userinfo) {
        return Err("invalid userinfo".into());
    }
    let user = match userinfo.split_once(':') {
        None => (unescape(userinfo, Mode::UserPassword)?, None),
        Some((name, password)) => (
            unescape(name, Mode::UserPassword)?,
            Some(unescape(password, Mode::UserPassword)?),
        ),
    };
    Ok((Some(user), host))
}

/// Go's `parse(rawURL, viaRequest = true)`.
fn parse_request_uri(raw: &str) -> Result<Url, String> {
    if raw.bytes().any(|b| b < b' ' || b == 0x7f) {
        return Err("invalid control character in URL".into());
    }
    if raw.is_empty() {
        return Err("empty url".into());
    }
    let mut url = Url::default();
    if raw == "*" {
        url.path = b"*".to_vec();
        return Ok(url);
    }
    let (scheme, mut rest) = get_scheme(raw)?;
    url.scheme = scheme.to_ascii_lowercase();
    if rest.ends_with('?') && rest.matches('?').count() == 1 {
        url.force_query = true;
        rest = &rest[..rest.len() - 1];
    } else if let Some((before, query)) = rest.split_once('?') {
        url.raw_query = query.to_string();
        rest = before;
    }
    if !rest.starts_with('/') {
        if !url.scheme.is_empty() {
            // A rootless path after a scheme is opaque (RFC 3986).
            url.opaque = rest.to_string();
            return Ok(url);
        }
        return Err("invalid URI for request: it is neither an absolute URI (scheme:...) nor an absolute path (/...)".into());
    }
    if !url.scheme.is_empty() && rest.starts_with("//") {
        let (authority, path) = match rest[2..].find('/') {
            Some(i) => (&rest[2..2 + i], &rest[2 + i..]),
            None => (&rest[2..], ""),
        };
        let (user, host) = parse_authority(&url.scheme, authority)?;
        url.user = user;
        url.host = host;
        rest = path;
    } else if !url.scheme.is_empty() {
        url.omit_host = true;
    }
    // Go's setPath: RawPath only when the given form differs from the
    // default encoding.
    url.path = unescape(rest, Mode::Path)?;
    url.raw_path = if escape(&url.path, Mode::Path) == rest {
        String::new()
    } else {
        rest.to_string()
    };
    Ok(url)
}

impl Url {
    /// Go's `EscapedPath`.
    fn escaped_path(&self) -> String {
        if !self.raw_path.is_empty()
            && valid_encoded_path(&self.raw_path)
            && unescape(&self.raw_path, Mode::Path).as_deref() == Ok(self.path.as_slice())
        {
            return self.raw_path.clone();
        }
        if self.path == b"*" {
            return "*".into();
        }
        escape(&self.path, Mode::Path)
    }
}

/// Go's `URL.String` (no fragment: `ParseRequestURI` never sets one).
impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut buf = String::new();
        if !self.scheme.is_empty() {
            buf.push_str(&self.scheme);
            buf.push(':');
        }
        if !self.opaque.is_empty() {
            buf.push_str(&self.opaque);
        } else {
            let has_authority =
                !self.scheme.is_empty() || !self.host.is_empty() || self.user.is_some();
            let host_omitted = self.omit_host && self.host.is_empty() && self.user.is_none();
            if has_authority && !host_omitted {
                if !self.host.is_empty() || !self.path.is_empty() || self.user.is_some() {
                    buf.push_str("//");
                }
                if let Some((name, password)) = &self.user {
                    buf.push_str(&escape(name, Mode::UserPassword));
                    if let Some(password) = password {
                        buf.push(':');
                        buf.push_str(&escape(password, Mode::UserPassword));
                    }
                    buf.push('@');
                }
                buf.push_str(&escape(&self.host, Mode::Host));
            }
            let path = self.escaped_path();
            if !path.is_empty() && !path.starts_with('/') && !self.host.is_empty() {
                buf.push('/');
            }
            if buf.is_empty() {
                // RFC 3986 4.2: a first segment with a colon is written
                // behind "./" so that it does not read as a scheme.
                let segment = path.split('/').next().unwrap_or("");
                if segment.contains(':') {
                    buf.push_str("./");
                }
            }
            buf.push_str(&path);
        }
        if self.force_query || !self.raw_query.is_empty() {
            buf.push('?');
            buf.push_str(&self.raw_query);
        }
        f.write_str(&buf)
    }
}

/// Go's `domainNameValid(host, false)`, which cert-manager's webhook (Go's
/// x509 parser) applies to the host of every URI SAN: no trailing dot, no
/// empty label, only the bytes 33 to 126.
pub fn host_valid_for_x509(uri: &str) -> Result<(), String> {
    // The host as Go's url.Parse finds it in the CSR's text.
    let Ok(url) = parse_request_uri(uri) else {
        return Ok(());
    };
    let host = String::from_utf8_lossy(&url.host).into_owned();
    if host.is_empty() {
        return Ok(());
    }
    if host.ends_with('.') {
        return Err(format!(
            "its host {host:?} ends with '.', which Go's x509 parser (and so cert-manager's webhook) refuses"
        ));
    }
    if host.split('.').any(str::is_empty) {
        return Err(format!(
            "its host {host:?} has an empty label, which Go's x509 parser (and so cert-manager's webhook) refuses"
        ));
    }
    if let Some(c) = host.bytes().find(|b| !(33..=126).contains(b)) {
        return Err(format!(
            "its host {host:?} holds the byte {c:#04x}, which Go's x509 parser (and so cert-manager's webhook) refuses"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Outputs of Go's `url.ParseRequestURI(s).String()` (Go 1.26), as
    /// checked against Go itself.
    #[test]
    fn re_serialises_as_go_does() {
        for (input, want) in [
            (
                "spiffe://cluster.local/ns/a/sa/b",
                "spiffe://cluster.local/ns/a/sa/b",
            ),
            ("SPIFFE://cluster.local/x", "spiffe://cluster.local/x"),
            ("/foo", "/foo"),
            ("/foo bar", "/foo%20bar"),
            ("/a#b", "/a%23b"),
            ("urn:uuid:123", "urn:uuid:123"),
            ("mailto:a@b.example", "mailto:a@b.example"),
            ("https://example.com", "https://example.com"),
            ("https://Example.COM/", "https://Example.COM/"),
            ("https://example.com/a/../b", "https://example.com/a/../b"),
            ("https://example.com/%41", "https://example.com/%41"),
            // An escape of a byte that is no UTF-8 on its own survives.
            ("https://example.com/%FF", "https://example.com/%FF"),
            ("mongodb://a:1,b:2/db", "mongodb://a:1,b:2/db"),
            ("https://example.com/ü", "https://example.com/%C3%BC"),
            ("https://example.com/a?b c", "https://example.com/a?b c"),
            ("https://example.com/a?", "https://example.com/a?"),
            ("https://u:p@example.com/", "https://u:p@example.com/"),
            ("https://[::1]:8443/x", "https://[::1]:8443/x"),
            ("file:///etc/x", "file:///etc/x"),
            ("spiffe://td/a#frag", "spiffe://td/a%23frag"),
            ("x:/a", "x:/a"),
            ("*", "*"),
        ] {
            assert_eq!(request_uri_string(input).as_deref(), Ok(want), "{input:?}");
        }
    }

    #[test]
    fn refuses_what_go_refuses() {
        for (input, fragment) in [
            ("", "empty"),
            ("relative/path", "neither an absolute URI"),
            ("foo", "neither an absolute URI"),
            (":x", "missing protocol scheme"),
            ("https://exa\tmple.com", "control character"),
            ("https://example.com:port/", "invalid port"),
            ("https://a:1:2/", "invalid port"),
            ("https://[::1/", "missing ']'"),
            ("https://[1.2.3.4]/", "IPv4"),
            ("https://exa mple.com/", "invalid character ' '"),
            ("https://example.com/%zz", "invalid escape"),
            ("https://a b@example.com/", "invalid userinfo"),
        ] {
            let err = request_uri_string(input).expect_err(input);
            assert!(err.contains(fragment), "{input:?}: {err}");
        }
        // Other schemes take the last colon for the port.
        assert_eq!(
            request_uri_string("mongodb://a:1,b:2/db").as_deref(),
            Ok("mongodb://a:1,b:2/db")
        );
    }

    #[test]
    fn hosts_go_x509_refuses() {
        assert!(host_valid_for_x509("spiffe://cluster.local/x").is_ok());
        assert!(host_valid_for_x509("/no/host").is_ok());
        assert!(host_valid_for_x509("urn:x").is_ok());
        for bad in ["https://example.com./", "https://a..b/"] {
            assert!(host_valid_for_x509(bad).is_err(), "{bad}");
        }
    }
    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2_000))]

            #[test]
            fn uris_parse_or_fail_cleanly(
                uri in "([a-zA-Z0-9:/?#@%\\[\\]. *+-]|\\PC){0,30}"
            ) {
                if let Ok(text) = request_uri_string(&uri) {
                    let _ = host_valid_for_x509(&text);
                }
            }
        }
    }
}
