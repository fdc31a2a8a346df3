//! `$VAR` / `${VAR}` expansion in attribute values.
//!
//! The grammar follows Go's `os.Expand`, which cert-manager's csi-driver uses,
//! so pod specs behave the same, with three deliberate differences:
//! - `$$` is a literal `$`. Upstream reads it as the special variable `$` and
//!   fails, so no working upstream pod spec contains it; giving it a meaning
//!   lets a value carry a literal `$VAR`-looking text.
//! - `${` without a closing `}` and `${}` are errors. Upstream silently drops
//!   them, which hides typos.
//! - A `$` followed by anything other than a name, `{` or `$` stays literal,
//!   as in Go (`a$-b` is `a$-b`).

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

/// Why a value could not be expanded. The `Display` text is the user-facing
/// message (the attribute name is added by the caller).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExpandError {
    Unknown { name: String },
    Unterminated { position: usize },
    EmptyBraces { position: usize },
}

impl fmt::Display for ExpandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let known = VARIABLES.map(|v| format!("${v}")).join(", ");
        match self {
            ExpandError::Unknown { name } => {
                // A name is letters, digits and '_' of any length: show a
                // prefix only, so a huge value cannot flood events and logs.
                let shown: String = name.chars().take(64).collect();
                let more = if shown.len() < name.len() { "…" } else { "" };
                write!(
                    f,
                    "unknown variable ${shown}{more}; the known variables are {known}"
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
                write!(f, "; write $$ for a literal '$'")
            }
            ExpandError::Unterminated { position } => write!(
                f,
                "'${{' at byte {position} has no closing '}}'; write ${{POD_NAME}} (known variables: {known}) or $$ for a literal '$'"
            ),
            ExpandError::EmptyBraces { position } => write!(
                f,
                "'${{}}' at byte {position} names no variable; the known variables are {known}"
            ),
        }
    }
}

impl std::error::Error for ExpandError {}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Expands the variables in `value`.
pub fn expand(value: &str, vars: &Variables<'_>) -> Result<String, ExpandError> {
    if !value.contains('$') {
        return Ok(value.to_string());
    }
    let mut out = String::with_capacity(value.len() + 32);
    let mut rest = value;
    let mut offset = 0;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let position = offset + dollar;
        let after = &rest[dollar + 1..];
        let (consumed, replacement): (usize, &str) = if let Some(braced) = after.strip_prefix('{') {
            let close = braced
                .find('}')
                .ok_or(ExpandError::Unterminated { position })?;
            let name = &braced[..close];
            if name.is_empty() {
                return Err(ExpandError::EmptyBraces { position });
            }
            let v = vars.get(name).ok_or_else(|| ExpandError::Unknown {
                name: name.to_string(),
            })?;
            (close + 2, v)
        } else if after.starts_with('$') {
            (1, "$")
        } else {
            let len = after
                .find(|c: char| !is_name_char(c))
                .unwrap_or(after.len());
            if len == 0 {
                (0, "$")
            } else {
                let name = &after[..len];
                let v = vars.get(name).ok_or_else(|| ExpandError::Unknown {
                    name: name.to_string(),
                })?;
                (len, v)
            }
        };
        out.push_str(replacement);
        let next = dollar + 1 + consumed;
        offset += next;
        rest = &rest[next..];
    }
    out.push_str(rest);
    Ok(out)
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
            ("price: $$5", "price: $5"),
            ("$$POD_NAME", "$POD_NAME"),
            ("$$$POD_NAME", "$web-0"),
            ("trailing $", "trailing $"),
            ("a$-b", "a$-b"),
            ("a$.b", "a$.b"),
            ("µ$POD_NAME µ", "µweb-0 µ"),
        ];
        for (input, want) in cases {
            assert_eq!(
                expand(input, &VARS).as_deref(),
                Ok(want),
                "expanding {input:?}"
            );
        }
    }

    #[test]
    fn values_are_not_expanded_twice() {
        let vars = Variables {
            pod_name: "$POD_NAMESPACE",
            ..VARS
        };
        assert_eq!(expand("$POD_NAME", &vars).unwrap(), "$POD_NAMESPACE");
    }

    #[test]
    fn unknown_variables_list_the_known_ones() {
        for input in ["$HOSTNAME", "${POD_IP}", "x.$NODE_NAME", "$1", "$pod_name"] {
            let err = expand(input, &VARS).unwrap_err();
            assert!(
                matches!(err, ExpandError::Unknown { .. }),
                "{input}: {err:?}"
            );
            let msg = err.to_string();
            assert!(
                msg.contains("$POD_NAME, $POD_NAMESPACE, $POD_UID, $SERVICE_ACCOUNT_NAME"),
                "{msg}"
            );
        }
    }

    #[test]
    fn a_glued_suffix_suggests_braces() {
        let msg = expand("$POD_NAMEsvc", &VARS).unwrap_err().to_string();
        assert!(msg.contains("$POD_NAMEsvc"), "{msg}");
        assert!(msg.contains("${POD_NAME}svc"), "{msg}");
        let msg = expand("$POD_NAMESPACEx", &VARS).unwrap_err().to_string();
        assert!(msg.contains("${POD_NAMESPACE}x"), "{msg}");
    }

    #[test]
    fn broken_braces_are_errors() {
        assert_eq!(
            expand("a.${POD_NAME", &VARS),
            Err(ExpandError::Unterminated { position: 2 })
        );
        assert_eq!(
            expand("${}", &VARS),
            Err(ExpandError::EmptyBraces { position: 0 })
        );
        assert!(
            expand("${POD_NAME", &VARS)
                .unwrap_err()
                .to_string()
                .contains("no closing '}'")
        );
    }
}
