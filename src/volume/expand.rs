//! `$VAR` / `${VAR}` expansion in attribute values, exactly as cert-manager's
//! csi-driver does it: Go's `os.Expand` with a lookup that fails on any name
//! but the four pod variables (`pkg/requestgen/generator.go`, `expand`).
//!
//! What that means, case by case:
//! - `$NAME` takes the longest run of letters, digits and `_`; `${NAME}`
//!   takes everything up to the first `}`;
//! - `$$`, `$1`, `$-`, `$*` and the other shell specials (`*#$@!?-` and the
//!   digits) name a variable of that one character, which does not exist:
//!   an error. So `$$` is not an escape, and there is no way to write a
//!   literal `$` right before a name;
//! - a `$` before anything else (`$.`, `$ `, `$/`, a `$` at the end) stays;
//! - `${}` and a `${` without a closing `}` are dropped silently by Go.
//!   cert-csi drops them too, so the value is what upstream makes of it,
//!   but reports a warning, since they are almost always typos.

use std::fmt;

/// The variables a value may use, in the order they are listed to users.
pub const VARIABLES: [&str; 4] = [
    "POD_NAME",
    "POD_NAMESPACE",
    "POD_UID",
    "SERVICE_ACCOUNT_NAME",
];

/// Values for [`VARIABLES`], taken from the kubelet's pod information.
#[derive(Clone, Copy, Debug)]
pub struct Variables<'a> {
    pub pod_name: &'a str,
    pub pod_namespace: &'a str,
    pub pod_uid: &'a str,
    pub service_account_name: &'a str,
}

impl Variables<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        match name {
            "POD_NAME" => Some(self.pod_name),
            "POD_NAMESPACE" => Some(self.pod_namespace),
            "POD_UID" => Some(self.pod_uid),
            "SERVICE_ACCOUNT_NAME" => Some(self.service_account_name),
            _ => None,
        }
    }
}

/// An expanded value, with what Go dropped from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expanded {
    pub text: String,
    /// Messages about `${}` and unclosed `${`, which were removed.
    pub dropped: Vec<String>,
}

/// A name that is not one of [`VARIABLES`]. The `Display` text is the
/// user-facing message (the attribute name is added by the caller).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpandError {
    pub name: String,
}

impl fmt::Display for ExpandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let known = VARIABLES.map(|v| format!("${v}")).join(", ");
        let name = &self.name;
        if name.len() == 1 && is_shell_special(name.as_bytes()[0]) {
            return write!(
                f,
                "'${name}' names the variable {name:?}, which does not exist (as in cert-manager's csi-driver, '$$' is not an escape); the known variables are {known}, and a '$' is kept as written only before a character that cannot start a name, such as '.', '/' or a space"
            );
        }
        // A name may be long (`${...}` takes anything up to '}'): show a
        // prefix only, so a huge value cannot flood events and logs.
        let shown: String = name.chars().take(64).collect();
        let more = if shown.len() < name.len() { "…" } else { "" };
        write!(
            f,
            "unknown variable ${{{shown}{more}}}; the known variables are {known}"
        )?;
        if let Some(prefix) = VARIABLES
            .iter()
            .filter(|v| name.starts_with(**v))
            .max_by_key(|v| v.len())
        {
            // `$POD_NAMEx` reads as one long name; braces end it.
            let rest: String = name[prefix.len()..].chars().take(16).collect();
            write!(
                f,
                "; to put text right after a variable use braces, e.g. ${{{prefix}}}{rest}"
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for ExpandError {}

/// Go's `isShellSpecialVar`.
fn is_shell_special(c: u8) -> bool {
    matches!(
        c,
        b'*' | b'#' | b'$' | b'@' | b'!' | b'?' | b'-' | b'0'..=b'9'
    )
}

fn is_name_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Go's `getShellName` on the text after a `$`: the name and how many bytes
/// it takes. An empty name with a width is bad syntax that Go drops; an
/// empty name without one leaves the `$` alone.
fn shell_name(s: &str) -> (&str, usize) {
    let b = s.as_bytes();
    if b[0] == b'{' {
        if b.len() > 2 && is_shell_special(b[1]) && b[2] == b'}' {
            return (&s[1..2], 3);
        }
        return match b[1..].iter().position(|&c| c == b'}') {
            Some(0) => ("", 2),
            Some(i) => (&s[1..=i], i + 2),
            None => ("", 1),
        };
    }
    if is_shell_special(b[0]) {
        return (&s[..1], 1);
    }
    let len = b.iter().take_while(|&&c| is_name_byte(c)).count();
    (&s[..len], len)
}

/// Expands the variables in `value`; the first unknown name is the error.
pub fn expand(value: &str, vars: &Variables<'_>) -> Result<Expanded, ExpandError> {
    let mut dropped = Vec::new();
    if !value.contains('$') {
        return Ok(Expanded {
            text: value.to_string(),
            dropped,
        });
    }
    let bytes = value.as_bytes();
    let mut out = String::with_capacity(value.len() + 32);
    // `copied` is where the text not yet copied starts.
    let mut copied = 0;
    let mut j = 0;
    while j < bytes.len() {
        if bytes[j] == b'$' && j + 1 < bytes.len() {
            out.push_str(&value[copied..j]);
            let (name, width) = shell_name(&value[j + 1..]);
            if name.is_empty() && width > 0 {
                let what = if width == 2 {
                    "'${}' names no variable"
                } else {
                    "'${' has no closing '}'"
                };
                dropped.push(format!(
                    "{what} at byte {j}, so it was removed (as cert-manager's csi-driver does); write ${{POD_NAME}} or another known variable"
                ));
            } else if name.is_empty() {
                out.push('$');
            } else {
                let v = vars.get(name).ok_or_else(|| ExpandError {
                    name: name.to_string(),
                })?;
                out.push_str(v);
            }
            j += width;
            copied = j + 1;
        }
        j += 1;
    }
    out.push_str(&value[copied.min(value.len())..]);
    Ok(Expanded { text: out, dropped })
}

#[cfg(test)]
mod tests {
    use super::*;

    const VARS: Variables<'static> = Variables {
        pod_name: "web-0",
        pod_namespace: "shop",
        pod_uid: "0b5e4f1c-3f5a-4c9e-9b1e-2f0d7f1a6c11",
        service_account_name: "frontend",
    };

    fn text(input: &str) -> String {
        expand(input, &VARS)
            .unwrap_or_else(|e| panic!("{input:?}: {e}"))
            .text
    }

    #[test]
    fn expands_every_variable_in_both_forms() {
        let cases = [
            ("$POD_NAME", "web-0"),
            ("${POD_NAME}", "web-0"),
            ("$POD_NAMESPACE", "shop"),
            ("${POD_NAMESPACE}", "shop"),
            ("$POD_UID", "0b5e4f1c-3f5a-4c9e-9b1e-2f0d7f1a6c11"),
            ("${POD_UID}", "0b5e4f1c-3f5a-4c9e-9b1e-2f0d7f1a6c11"),
            ("$SERVICE_ACCOUNT_NAME", "frontend"),
            ("${SERVICE_ACCOUNT_NAME}", "frontend"),
            (
                "${POD_NAME}.${POD_NAMESPACE}.svc.cluster.local",
                "web-0.shop.svc.cluster.local",
            ),
            ("$POD_NAME.$POD_NAMESPACE.svc", "web-0.shop.svc"),
            (
                "spiffe://cluster.local/ns/$POD_NAMESPACE/sa/$SERVICE_ACCOUNT_NAME",
                "spiffe://cluster.local/ns/shop/sa/frontend",
            ),
            ("${POD_NAME}x", "web-0x"),
            ("no variables", "no variables"),
            ("", ""),
            ("µ$POD_NAME µ", "µweb-0 µ"),
        ];
        for (input, want) in cases {
            assert_eq!(text(input), want, "expanding {input:?}");
        }
    }

    #[test]
    fn a_dollar_before_what_cannot_start_a_name_stays() {
        for (input, want) in [
            ("trailing $", "trailing $"),
            ("$", "$"),
            ("a$.b", "a$.b"),
            ("a$ b", "a$ b"),
            ("a$/b", "a$/b"),
            ("a$%b", "a$%b"),
            ("$é", "$é"),
        ] {
            assert_eq!(text(input), want, "{input:?}");
        }
    }

    #[test]
    fn values_are_not_expanded_twice() {
        let vars = Variables {
            pod_name: "$POD_NAMESPACE",
            ..VARS
        };
        assert_eq!(expand("$POD_NAME", &vars).unwrap().text, "$POD_NAMESPACE");
    }

    #[test]
    fn unknown_names_and_shell_specials_are_errors() {
        for (input, name) in [
            ("$HOSTNAME", "HOSTNAME"),
            ("${POD_IP}", "POD_IP"),
            ("x.$NODE_NAME", "NODE_NAME"),
            ("$pod_name", "pod_name"),
            ("${POD NAME}", "POD NAME"),
            // The shell specials are one-character names.
            ("$$", "$"),
            ("price: $$5", "$"),
            ("$$POD_NAME", "$"),
            ("$1", "1"),
            ("$1abc", "1"),
            ("a$-b", "-"),
            ("$*", "*"),
            ("${#}", "#"),
            ("${$}", "$"),
            // The first unknown name is reported.
            ("$POD_NAME.$A.$B", "A"),
        ] {
            let err = expand(input, &VARS).unwrap_err();
            assert_eq!(err.name, name, "{input:?}");
            let msg = err.to_string();
            assert!(
                msg.contains("$POD_NAME, $POD_NAMESPACE, $POD_UID, $SERVICE_ACCOUNT_NAME"),
                "{msg}"
            );
        }
        assert!(
            expand("$$", &VARS)
                .unwrap_err()
                .to_string()
                .contains("'$$' is not an escape")
        );
    }

    #[test]
    fn a_glued_suffix_suggests_braces() {
        let msg = expand("$POD_NAMEsvc", &VARS).unwrap_err().to_string();
        assert!(msg.contains("${POD_NAMEsvc}"), "{msg}");
        assert!(msg.contains("${POD_NAME}svc"), "{msg}");
        let msg = expand("$POD_NAMESPACEx", &VARS).unwrap_err().to_string();
        assert!(msg.contains("${POD_NAMESPACE}x"), "{msg}");
    }

    #[test]
    fn broken_braces_are_dropped_with_a_warning_as_go_drops_them() {
        for (input, want) in [
            ("a.${POD_NAME", "a.POD_NAME"),
            ("${}", ""),
            ("x${}y", "xy"),
            ("${", ""),
            ("a${", "a"),
        ] {
            let got = expand(input, &VARS).unwrap();
            assert_eq!(got.text, want, "{input:?}");
            assert_eq!(got.dropped.len(), 1, "{input:?}");
        }
        let got = expand("a.${POD_NAME", &VARS).unwrap();
        assert!(
            got.dropped[0].contains("no closing '}'"),
            "{:?}",
            got.dropped
        );
        assert!(expand("${}", &VARS).unwrap().dropped[0].contains("names no variable"));
        assert!(expand("$POD_NAME", &VARS).unwrap().dropped.is_empty());
    }
    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2_000))]

            /// Expansion never panics, and text without '$' is unchanged.
            #[test]
            fn expansion_is_total(value in "([${}_A-Z0-9 ]|\\PC){0,30}") {
                let vars = super::VARS;
                match expand(&value, &vars) {
                    Ok(out) if !value.contains('$') => prop_assert_eq!(out.text, value),
                    _ => {}
                }
            }
        }
    }
}
